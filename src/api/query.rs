//! `/v1/query`, `/v1/routing` and `/v1/models`: the read side of the routing policy.

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use chrono::Utc;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;
use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, OneOfBuilder, SchemaType, Type};
use utoipa::openapi::{Object, RefOr, Schema};

use super::AppState;
use super::error::{ApiError, AppJson, Problem};
use crate::domain::{Phase, QueryReason, Route, Routing, RoutingKey};
use crate::index::filter::Filter;

/// `top_k` when the query does not say, and the largest accepted.
const DEFAULT_TOP_K: i64 = 10;
const MAX_TOP_K: i64 = 1000;

/// Body of `POST /v1/query`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QueryBody {
    pub text: String,
    /// 1 to 1000, default 10.
    #[serde(default, deserialize_with = "crate::domain::config::optional_integer")]
    #[schema(minimum = 1, maximum = 1000)]
    pub top_k: Option<i64>,
    /// Only documents whose metadata has every field listed here equal to the given scalar
    /// (or to any element of the given array of scalars); a document without the field does
    /// not match. Any other shape is 422.
    #[schema(schema_with = filter_schema)]
    pub filter: Option<Value>,
    /// Score every vector of the model (every one the filter matches) rather than consult the
    /// approximate index: the ground truth for recall. Default false; small models and
    /// selective filters are scanned exactly anyway, and the response's `exact` says which
    /// path answered.
    pub exact: Option<bool>,
    /// A stable key of the caller (a tenant or user id), at most 256 bytes of UTF-8: before
    /// the threshold, the migration's `canary_percent` of keys are answered by the target,
    /// each key always by the same side. Without a key (or with an empty one) a query is
    /// never a canary.
    #[schema(max_length = 256)]
    pub routing_key: Option<String>,
}

/// The schema of `filter`: an object whose values are scalars or non-empty arrays of them, or
/// null.
fn filter_schema() -> Object {
    let scalar = || {
        ObjectBuilder::new()
            .schema_type(SchemaType::from_iter([
                Type::String,
                Type::Number,
                Type::Boolean,
            ]))
            .build()
    };
    let any_of = ArrayBuilder::new()
        .items(scalar())
        .min_items(Some(1))
        .build();
    let value = RefOr::T(Schema::OneOf(
        OneOfBuilder::new().item(scalar()).item(any_of).build(),
    ));
    // Null is accepted as no filter, like every other optional field.
    ObjectBuilder::new()
        .schema_type(SchemaType::from_iter([Type::Object, Type::Null]))
        .additional_properties(Some(value))
        .build()
}

/// One hit of a query.
#[derive(Debug, Serialize, ToSchema)]
pub struct HitView {
    pub id: String,
    pub score: f32,
    pub text: String,
    /// The document's metadata, as written (null when it has none).
    pub metadata: Value,
}

/// Response of `POST /v1/query`: the hits and the routing that chose the index.
#[derive(Debug, Serialize, ToSchema)]
pub struct QueryResponse {
    pub route: Route,
    pub model: String,
    pub phase: Phase,
    pub migration_id: Option<String>,
    /// Why this side answered: `canary` when the query's `routing_key` is in the canary share;
    /// `fallback` when the routed model's provider failed and the other model's index answered.
    pub reason: QueryReason,
    /// Whether every vector of the model (or every one the filter matches) was scored, rather
    /// than the approximate index consulted.
    pub exact: bool,
    pub hits: Vec<HitView>,
}

/// One model of the registry.
#[derive(Debug, Serialize, ToSchema)]
pub struct ModelView {
    pub id: String,
    pub provider: String,
    pub dimensions: usize,
    /// What the model costs per million tokens, in the operator's currency; absent when the
    /// registry gives it no price (the built-in models by default).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 0.0)]
    pub price_per_million_tokens: Option<f64>,
}

/// Response of `GET /v1/models`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ModelsResponse {
    pub active_model: String,
    pub models: Vec<ModelView>,
}

/// Searches the current query model's index.
#[utoipa::path(post, path = "/v1/query", tag = "query", request_body = QueryBody,
    responses((status = 200, body = QueryResponse), (status = 400, body = Problem),
              (status = 422, body = Problem), (status = 503, body = Problem)))]
pub async fn query(
    State(state): State<AppState>,
    AppJson(body): AppJson<QueryBody>,
) -> Result<AppJson<QueryResponse>, ApiError> {
    let top_k = body.top_k.unwrap_or(DEFAULT_TOP_K);
    if !(1..=MAX_TOP_K).contains(&top_k) {
        return Err(ApiError::InvalidValue(format!(
            "top_k: must be 1 to {MAX_TOP_K}, got {top_k}"
        )));
    }
    let filter = match &body.filter {
        Some(filter) => {
            Filter::parse(filter).map_err(|error| ApiError::InvalidValue(error.to_string()))?
        }
        None => Filter::default(),
    };
    let routing_key = body
        .routing_key
        .map(RoutingKey::parse)
        .transpose()?
        .flatten();
    let answer = state
        .documents
        .query(
            &body.text,
            top_k as usize,
            &filter,
            body.exact.unwrap_or(false),
            routing_key.as_ref(),
        )
        .await?;
    let hits = answer
        .hits
        .into_iter()
        .map(|h| HitView {
            id: h.id,
            score: h.score,
            text: h.text,
            metadata: h.metadata,
        })
        .collect();
    Ok(AppJson(QueryResponse {
        route: answer.route,
        model: answer.model,
        phase: answer.routing.phase,
        migration_id: answer.routing.migration_id.clone(),
        reason: answer.reason,
        exact: answer.exact,
        hits,
    }))
}

/// Response of `GET /v1/routing`: the routing decision, and how old this replica's view of
/// the migration is.
#[derive(Debug, Serialize, ToSchema)]
pub struct RoutingView {
    #[serde(flatten)]
    pub routing: Routing,
    /// Milliseconds since this replica last read the migration from a database it shares with
    /// other replicas (PostgreSQL; at most about 1,000 while it can reach the database); 0 on
    /// SQLite, where the process's view is the store's.
    pub snapshot_age_ms: u64,
}

/// The routing decision right now. Never touches storage or an embedder.
#[utoipa::path(get, path = "/v1/routing", tag = "query",
    responses((status = 200, body = RoutingView)))]
pub async fn get_routing(State(state): State<AppState>) -> impl IntoResponse {
    let json = state.coordinator.routing_json(Utc::now());
    let age = state.coordinator.snapshot_age();
    let body = with_snapshot_age(&json, age);
    ([(header::CONTENT_TYPE, "application/json")], body)
}

/// `routing` (a JSON object rendered when it was published) with `snapshot_age_ms` added as
/// its last field, without parsing it again.
fn with_snapshot_age(routing: &[u8], age: std::time::Duration) -> Vec<u8> {
    let age_ms = u64::try_from(age.as_millis()).unwrap_or(u64::MAX);
    let open = routing.strip_suffix(b"}").unwrap_or(routing);
    let mut body = Vec::with_capacity(routing.len() + 32);
    body.extend_from_slice(open);
    body.extend_from_slice(format!(",\"snapshot_age_ms\":{age_ms}}}").as_bytes());
    body
}

/// The model registry and the active model.
#[utoipa::path(get, path = "/v1/models", tag = "query",
    responses((status = 200, body = ModelsResponse)))]
pub async fn list_models(State(state): State<AppState>) -> AppJson<ModelsResponse> {
    let models = state
        .models
        .models()
        .into_iter()
        .map(|m| ModelView {
            id: m.id.clone(),
            provider: m.provider.clone(),
            dimensions: m.dimensions,
            price_per_million_tokens: state.models.price(&m.id),
        })
        .collect();
    AppJson(ModelsResponse {
        active_model: state.coordinator.active_model(Utc::now()),
        models,
    })
}
