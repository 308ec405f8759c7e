//! The client's copies of the response types against the server's OpenAPI document (the one
//! `/openapi.json` serves and `openapi/openapi.json` holds), so the two cannot drift: every
//! field a copy reads is a property of the schema it copies, and the copy reads both the
//! leanest answer the schema allows (only the required properties, nullable ones null) and
//! the fullest (every property set).

use serde::de::value::Error as ShapeError;
use serde::de::{DeserializeOwned, Error as _, Visitor};
use serde::{Deserializer, forward_to_deserialize_any};
use serde_json::{Map, Value, json};

use super::*;

/// A deserializer that answers nothing, but notes the field names a struct asks for.
struct FieldNames<'a>(&'a mut &'static [&'static str]);

impl<'de> Deserializer<'de> for FieldNames<'_> {
    type Error = ShapeError;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, ShapeError> {
        Err(ShapeError::custom("not a struct"))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        _: V,
    ) -> Result<V::Value, ShapeError> {
        *self.0 = fields;
        Err(ShapeError::custom("the names are all it needs"))
    }

    forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
        ignored_any
    }
}

/// The fields `T` reads.
fn fields_of<T: DeserializeOwned>() -> &'static [&'static str] {
    let mut fields: &'static [&'static str] = &[];
    let _ = T::deserialize(FieldNames(&mut fields));
    fields
}

/// The served document's component schemas.
fn schemas() -> Map<String, Value> {
    let document = serde_json::to_value(crate::api::openapi()).expect("the document as JSON");
    document["components"]["schemas"]
        .as_object()
        .expect("component schemas")
        .clone()
}

/// Which answers to build from a schema.
#[derive(Clone, Copy)]
enum Extent {
    /// Only the required properties; a nullable value is null.
    Leanest,
    /// Every property, none null.
    Fullest,
}

/// A value `schema` admits, as lean or as full as `extent` says.
fn instance(schema: &Value, schemas: &Map<String, Value>, extent: Extent) -> Value {
    if let Some(reference) = schema["$ref"].as_str() {
        let name = reference.trim_start_matches("#/components/schemas/");
        return instance(&schemas[name], schemas, extent);
    }
    if let Some(choices) = schema["oneOf"].as_array().or(schema["anyOf"].as_array()) {
        let is_null = |choice: &&Value| choice["type"] == "null";
        return match (extent, choices.iter().find(is_null)) {
            (Extent::Leanest, Some(_)) => Value::Null,
            _ => {
                let choice = choices
                    .iter()
                    .find(|c| !is_null(c))
                    .expect("a non-null choice");
                instance(choice, schemas, extent)
            }
        };
    }
    if let Some(values) = schema["enum"].as_array() {
        return values[0].clone();
    }
    let types: Vec<&str> = match &schema["type"] {
        Value::String(one) => vec![one],
        Value::Array(many) => many.iter().filter_map(Value::as_str).collect(),
        _ => vec!["object"],
    };
    if matches!(extent, Extent::Leanest) && types.contains(&"null") {
        return Value::Null;
    }
    match types.iter().find(|t| **t != "null").copied() {
        Some("string") if schema["format"] == "date-time" => json!("2026-12-02T10:00:00Z"),
        Some("string") => json!("x"),
        Some("integer") => json!(schema["minimum"].as_u64().unwrap_or(0).max(1)),
        Some("number") => json!(0.5),
        Some("boolean") => json!(true),
        Some("array") => json!([instance(&schema["items"], schemas, extent)]),
        _ => object(schema, schemas, extent),
    }
}

fn object(schema: &Value, schemas: &Map<String, Value>, extent: Extent) -> Value {
    let required: Vec<&str> = schema["required"]
        .as_array()
        .map(|names| names.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let properties = schema["properties"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    let object = properties
        .iter()
        .filter(|(name, _)| matches!(extent, Extent::Fullest) || required.contains(&name.as_str()))
        .map(|(name, property)| (name.clone(), instance(property, schemas, extent)))
        .collect();
    Value::Object(object)
}

/// Asserts that `T`, the client's copy of the schema `name`, reads only its properties and
/// reads its leanest and its fullest answer.
fn assert_copies<T: DeserializeOwned>(name: &str) {
    let schemas = schemas();
    let schema = &schemas[name];
    let properties = schema["properties"].as_object().expect("an object schema");
    for field in fields_of::<T>() {
        assert!(
            properties.contains_key(*field),
            "the client reads `{field}` of {name}, which the server's schema does not have"
        );
    }
    for extent in [Extent::Leanest, Extent::Fullest] {
        let answer = object(schema, &schemas, extent);
        if let Err(error) = serde_json::from_value::<T>(answer.clone()) {
            panic!("the client cannot read this {name}: {error}\n{answer:#}");
        }
    }
}

#[test]
fn every_copy_reads_what_the_servers_schema_describes() {
    assert_copies::<Routing>("Routing");
    assert_copies::<Migration>("MigrationView");
    assert_copies::<MigrationConfig>("BackfillConfig");
    assert_copies::<MigrationList>("MigrationList");
    assert_copies::<Progress>("ProgressView");
    assert_copies::<MigrationPlan>("MigrationPlan");
    assert_copies::<BulkResult>("BulkResult");
    assert_copies::<CutoverGate>("CutoverGate");
    assert_copies::<Gate>("GateStatus");
    assert_copies::<SourceCleanup>("SourceCleanupView");
    assert_copies::<History>("HistoryList");
    assert_copies::<HistoryEvent>("HistoryEvent");
}

#[test]
fn a_copy_that_reads_a_field_the_server_lacks_is_caught() {
    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Renamed {
        query_models: Option<Vec<String>>,
    }
    let caught = std::panic::catch_unwind(|| assert_copies::<Renamed>("Routing"));
    assert!(caught.is_err());
    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Insists {
        migration_id: String,
    }
    let caught = std::panic::catch_unwind(|| assert_copies::<Insists>("Routing"));
    assert!(caught.is_err(), "migration_id is nullable and not required");
}
