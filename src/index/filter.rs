//! Metadata filters of `POST /v1/query` (API.md, Query): which documents a query may return.
//!
//! A filter is an object of top-level metadata fields. A document matches when, for every
//! field, its own value of that field equals the given scalar, or any element of the given
//! array of scalars. A document without the field, or whose field holds an object, an array or
//! null, does not match. `{}` matches every document.
//!
//! Equality is JSON equality of scalars: strings by their text, booleans by value, numbers by
//! value, so `1`, `1.0` and `1e0` are the same number. Numbers are compared as integers when
//! they are whole and within ±2^53 (where `f64` is exact), as `f64` otherwise; numbers beyond
//! `f64`'s range, which metadata keeps digit for digit, are compared by their text.

use serde_json::{Number, Value};

/// The largest whole number an `f64` holds exactly (2^53).
const EXACT_INTEGER_LIMIT: f64 = 9_007_199_254_740_992.0;

/// A metadata value a filter can name, in the canonical form that equality compares.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scalar {
    String(String),
    Bool(bool),
    /// A whole number within ±2^53.
    Integer(i64),
    /// Any other finite number, by the bits of its `f64` (never -0, which is `Integer(0)`).
    Float(u64),
    /// A number beyond `f64`'s range, by its text.
    Digits(String),
}

impl Scalar {
    /// The scalar `value` is, or `None` for an object, an array or null.
    pub fn of(value: &Value) -> Option<Self> {
        match value {
            Value::String(text) => Some(Self::String(text.clone())),
            Value::Bool(flag) => Some(Self::Bool(*flag)),
            Value::Number(number) => Some(Self::of_number(number)),
            Value::Null | Value::Array(_) | Value::Object(_) => None,
        }
    }

    fn of_number(number: &Number) -> Self {
        let text = number.to_string();
        match text.parse::<f64>() {
            Ok(value) if value.is_finite() && value.fract() == 0.0 => {
                if value.abs() <= EXACT_INTEGER_LIMIT {
                    // Exact: a whole f64 within 2^53 converts without loss.
                    Self::Integer(value as i64)
                } else {
                    Self::Digits(text)
                }
            }
            Ok(value) if value.is_finite() => Self::Float(value.to_bits()),
            _ => Self::Digits(text),
        }
    }
}

/// One filter field: the field's name and the values it may hold.
#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    pub field: String,
    /// Never empty: a document matches when its field equals any of them.
    pub any_of: Vec<Scalar>,
}

/// A parsed filter: every condition must hold.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Filter {
    pub conditions: Vec<Condition>,
}

/// Why a filter was refused; the message names the field.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("filter{path}: {problem}")]
pub struct FilterError {
    path: String,
    problem: &'static str,
}

impl FilterError {
    fn at(path: impl Into<String>, problem: &'static str) -> Self {
        Self {
            path: path.into(),
            problem,
        }
    }
}

impl Filter {
    /// Parses the `filter` of a query body, refusing any shape API.md does not allow.
    pub fn parse(value: &Value) -> Result<Self, FilterError> {
        let Value::Object(fields) = value else {
            return Err(FilterError::at("", "must be an object of metadata fields"));
        };
        let conditions = fields
            .iter()
            .map(|(field, wanted)| {
                let any_of = wanted_values(wanted)
                    .map_err(|problem| FilterError::at(format!(".{field}"), problem))?;
                Ok(Condition {
                    field: field.clone(),
                    any_of,
                })
            })
            .collect::<Result<_, FilterError>>()?;
        Ok(Self { conditions })
    }

    /// Whether the filter lets every document through (`{}`).
    pub fn is_empty(&self) -> bool {
        self.conditions.is_empty()
    }

    /// Whether a document with `metadata` matches.
    pub fn matches(&self, metadata: &Value) -> bool {
        self.conditions.iter().all(|condition| {
            metadata
                .get(&condition.field)
                .and_then(Scalar::of)
                .is_some_and(|value| condition.any_of.contains(&value))
        })
    }
}

/// The values one filter field accepts: one scalar, or a non-empty array of scalars.
fn wanted_values(wanted: &Value) -> Result<Vec<Scalar>, &'static str> {
    const SHAPE: &str = "must be a string, number or boolean, or a non-empty array of them";
    match wanted {
        Value::Array(values) if values.is_empty() => Err(SHAPE),
        Value::Array(values) => values.iter().map(|v| Scalar::of(v).ok_or(SHAPE)).collect(),
        scalar => Scalar::of(scalar).map(|s| vec![s]).ok_or(SHAPE),
    }
}

/// The top-level scalar fields of a document's metadata: what a filter can match it by.
pub fn scalar_fields(metadata: &Value) -> Vec<(String, Scalar)> {
    let Value::Object(fields) = metadata else {
        return Vec::new();
    };
    fields
        .iter()
        .filter_map(|(field, value)| Some((field.clone(), Scalar::of(value)?)))
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn parse(value: Value) -> Filter {
        Filter::parse(&value).expect("a valid filter")
    }

    #[test]
    fn every_field_must_equal_one_of_its_values() {
        let filter = parse(json!({"lang": "en", "year": [2024, 2025]}));
        assert!(filter.matches(&json!({"lang": "en", "year": 2025, "other": 1})));
        assert!(!filter.matches(&json!({"lang": "de", "year": 2025})));
        assert!(!filter.matches(&json!({"lang": "en", "year": 2023})));
        assert!(!filter.matches(&json!({"lang": "en"})), "a missing field");
        assert!(
            !filter.matches(&json!({"lang": ["en"], "year": 2024})),
            "an array field"
        );
        assert!(!filter.matches(&json!(null)), "no metadata");
        assert!(
            parse(json!({})).matches(&json!(null)),
            "{{}} lets all through"
        );
    }

    #[test]
    fn scalars_compare_by_json_value() {
        let filter = parse(json!({"n": 1, "flag": true, "s": "1"}));
        assert!(filter.matches(&json!({"n": 1.0, "flag": true, "s": "1"})));
        assert!(!filter.matches(&json!({"n": "1", "flag": true, "s": "1"})));
        assert!(!filter.matches(&json!({"n": 1, "flag": "true", "s": "1"})));
        assert!(!filter.matches(&json!({"n": 1, "flag": true, "s": 1})));
        let half = parse(json!({"x": 0.5}));
        assert!(half.matches(&json!({"x": 5e-1})));
        assert!(!half.matches(&json!({"x": 0.25})));
        assert!(parse(json!({"z": 0})).matches(&json!({"z": -0.0})));
    }

    #[test]
    fn numbers_beyond_exact_floats_keep_their_digits() {
        let big: Value = serde_json::from_str(r#"{"n": 123456789012345678901234567890}"#).unwrap();
        let near: Value = serde_json::from_str(r#"{"n": 123456789012345678901234567891}"#).unwrap();
        let filter = Filter::parse(&big).unwrap();
        assert!(filter.matches(&big));
        assert!(!filter.matches(&near), "f64 would call them equal");
    }

    #[test]
    fn shapes_other_than_scalars_are_refused_naming_the_field() {
        for (filter, path) in [
            (json!({"a": {"b": 1}}), "filter.a"),
            (json!({"a": null}), "filter.a"),
            (json!({"a": []}), "filter.a"),
            (json!({"a": [1, [2]]}), "filter.a"),
            (json!({"a": [null]}), "filter.a"),
            (json!([1]), "filter:"),
            (json!("x"), "filter:"),
        ] {
            let error = Filter::parse(&filter).expect_err("refused").to_string();
            assert!(error.starts_with(path), "{filter}: {error}");
        }
    }

    #[test]
    fn only_top_level_scalars_are_matchable_fields() {
        let fields = scalar_fields(&json!({"a": 1, "b": "x", "c": [1], "d": {"e": 1}, "f": null}));
        assert_eq!(
            fields,
            [
                ("a".to_owned(), Scalar::Integer(1)),
                ("b".to_owned(), Scalar::String("x".into()))
            ]
        );
        assert!(scalar_fields(&json!([1, 2])).is_empty());
    }
}
