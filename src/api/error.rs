//! One error type for every handler, rendered as an RFC 9457 problem document.
//!
//! Each variant is one row of API.md's status table. Our extractors (`AppJson`, `AppQuery`)
//! turn axum's plain-text rejections into the same shape, so a client never sees two error
//! formats. 5xx bodies stay generic; the cause goes to the log.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

use crate::coordinator::CoordinatorError;
use crate::documents::ServiceError;
use crate::domain::{ConfigError, RoutingKeyTooLong, TransitionError};
use crate::embed::EmbedError;
use crate::store::StoreError;

/// An RFC 9457 problem document (`application/problem+json`).
#[derive(Debug, Serialize, ToSchema)]
pub struct Problem {
    /// `urn:reembed:problem:<slug>`.
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
}

/// Every way a request can fail, each mapped to one status and problem slug.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: the body is not JSON, or a field has the wrong type or is missing.
    #[error("{0}")]
    MalformedBody(String),
    /// 400: a query-string parameter does not parse.
    #[error("{0}")]
    MalformedQuery(String),
    /// 400: a path segment does not decode (percent-encoded bytes that are not UTF-8).
    #[error("{0}")]
    MalformedPath(String),
    /// 400: the request head is not HTTP (a method, target, version or header that does not
    /// parse); sent by the accept loop, as the app never sees such a request.
    #[error("{0}")]
    MalformedRequest(String),
    /// 401: an API token is configured and the request lacks the right one.
    #[error("{0}")]
    Unauthorized(String),
    /// 403: the read-only token tried to change something.
    #[error("{0}")]
    Forbidden(String),
    /// 404: unknown document, migration, model or route.
    #[error("{0}")]
    NotFound(String),
    /// 405: the route exists, but not with this method; the response lists the allowed ones
    /// in `Allow`.
    #[error("{0}")]
    MethodNotAllowed(String),
    /// 408: the request's declared body did not arrive within the time limit.
    #[error("{0}")]
    RequestTimeout(String),
    /// 409: the lifecycle does not allow this call in the current state.
    #[error("{0}")]
    InvalidTransition(String),
    /// 409: another migration is still open.
    #[error("{0}")]
    MigrationOpen(String),
    /// 409: the id is taken.
    #[error("{0}")]
    AlreadyExists(String),
    /// 413: the body is over the configured limit.
    #[error("{0}")]
    PayloadTooLarge(String),
    /// 414: the request target is longer than the server parses; sent by the accept loop.
    #[error("{0}")]
    UriTooLong(String),
    /// 415: the body is not declared as JSON.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// 431: the request head is larger than the server buffers; sent by the accept loop.
    #[error("{0}")]
    HeadersTooLarge(String),
    /// 422: a migration config, model choice or migration id is invalid.
    #[error("{0}")]
    InvalidConfig(String),
    /// 422: another well-formed but invalid value (a document id, a page size, `top_k`).
    #[error("{0}")]
    InvalidValue(String),
    /// 500: a fault of the server, not of the request or the moment (a handler panicked,
    /// stored data does not decode); retrying will not help. The cause goes to the log.
    #[error("{0}")]
    Internal(String),
    /// 503: storage or the embedding provider is unavailable; the detail stays generic.
    #[error("{0}")]
    Unavailable(String),
}

impl ApiError {
    fn parts(&self) -> (StatusCode, &'static str, &'static str) {
        use ApiError::*;
        match self {
            MalformedBody(_) => (
                StatusCode::BAD_REQUEST,
                "malformed-body",
                "Malformed request body",
            ),
            MalformedQuery(_) => (
                StatusCode::BAD_REQUEST,
                "malformed-query",
                "Malformed query string",
            ),
            MalformedPath(_) => (StatusCode::BAD_REQUEST, "malformed-path", "Malformed path"),
            MalformedRequest(_) => (
                StatusCode::BAD_REQUEST,
                "malformed-request",
                "Malformed request",
            ),
            Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized", "Unauthorized"),
            Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden", "Forbidden"),
            NotFound(_) => (StatusCode::NOT_FOUND, "not-found", "Not found"),
            MethodNotAllowed(_) => (
                StatusCode::METHOD_NOT_ALLOWED,
                "method-not-allowed",
                "Method not allowed",
            ),
            RequestTimeout(_) => (
                StatusCode::REQUEST_TIMEOUT,
                "request-timeout",
                "Request timeout",
            ),
            InvalidTransition(_) => (
                StatusCode::CONFLICT,
                "invalid-transition",
                "Invalid transition",
            ),
            MigrationOpen(_) => (
                StatusCode::CONFLICT,
                "migration-open",
                "A migration is open",
            ),
            AlreadyExists(_) => (StatusCode::CONFLICT, "already-exists", "Already exists"),
            PayloadTooLarge(_) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload-too-large",
                "Payload too large",
            ),
            UriTooLong(_) => (StatusCode::URI_TOO_LONG, "uri-too-long", "URI too long"),
            HeadersTooLarge(_) => (
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "headers-too-large",
                "Request header fields too large",
            ),
            UnsupportedMediaType(_) => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported-media-type",
                "Unsupported media type",
            ),
            InvalidConfig(_) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid-config",
                "Invalid configuration",
            ),
            InvalidValue(_) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid-value",
                "Invalid value",
            ),
            Internal(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "Internal server error",
            ),
            Unavailable(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "Service unavailable",
            ),
        }
    }
}

impl ApiError {
    /// The status and problem document this error is answered with, for the accept loop,
    /// which writes answers to unparsable requests itself.
    pub(crate) fn problem(&self) -> (StatusCode, Problem) {
        let (status, slug, title) = self.parts();
        let problem = Problem {
            kind: format!("urn:reembed:problem:{slug}"),
            title: title.to_owned(),
            status: status.as_u16(),
            detail: self.to_string(),
        };
        (status, problem)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, problem) = self.problem();
        let mut response = (status, axum::Json(problem)).into_response();
        let headers = response.headers_mut();
        headers.insert(
            axum::http::header::CONTENT_TYPE,
            axum::http::HeaderValue::from_static("application/problem+json"),
        );
        if status == StatusCode::UNAUTHORIZED {
            headers.insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer realm=\"reembed\""),
            );
        }
        response
    }
}

impl From<ConfigError> for ApiError {
    fn from(error: ConfigError) -> Self {
        Self::InvalidConfig(error.to_string())
    }
}

impl From<RoutingKeyTooLong> for ApiError {
    fn from(error: RoutingKeyTooLong) -> Self {
        Self::InvalidValue(error.to_string())
    }
}

impl From<TransitionError> for ApiError {
    fn from(error: TransitionError) -> Self {
        Self::InvalidTransition(error.to_string())
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Conflict(detail) => Self::InvalidTransition(detail),
            StoreError::Corrupt(detail) => {
                tracing::error!(%detail, "stored data does not decode");
                Self::Internal(
                    "stored data does not decode; the server log has the cause".to_owned(),
                )
            }
            StoreError::Full(detail) => {
                tracing::error!(%detail, "cannot write: the database's disk is full or failing");
                Self::Unavailable(format!(
                    "cannot write: the disk holding the data directory is full or failing; \
                     free space there and retry ({detail})"
                ))
            }
            other => {
                tracing::error!(error = %other, "storage failed");
                Self::Unavailable("storage is unavailable; retry later".to_owned())
            }
        }
    }
}

impl From<ServiceError> for ApiError {
    fn from(error: ServiceError) -> Self {
        match error {
            ServiceError::Store(store) => store.into(),
            ServiceError::Embed {
                model,
                source: EmbedError::Rejected(reason),
            } => Self::InvalidValue(format!("text: the model {model} rejects it: {reason}")),
            ServiceError::Embed { .. } | ServiceError::WrongShape { .. } => {
                tracing::error!(%error, "embedding failed");
                Self::Unavailable("the embedding provider is unavailable; retry later".to_owned())
            }
        }
    }
}

impl From<CoordinatorError> for ApiError {
    fn from(error: CoordinatorError) -> Self {
        match error {
            CoordinatorError::NotFound(_) => Self::NotFound(error.to_string()),
            CoordinatorError::Transition(t) => t.into(),
            CoordinatorError::Config(c) => c.into(),
            CoordinatorError::MigrationOpen { .. } => Self::MigrationOpen(error.to_string()),
            CoordinatorError::DuplicateId(_) => Self::AlreadyExists(error.to_string()),
            CoordinatorError::Store(store) => store.into(),
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        match rejection {
            JsonRejection::MissingJsonContentType(r) => Self::UnsupportedMediaType(r.body_text()),
            JsonRejection::BytesRejection(r) if r.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                Self::PayloadTooLarge(r.body_text())
            }
            other => Self::MalformedBody(other.body_text()),
        }
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        Self::MalformedQuery(rejection.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        Self::MalformedPath(rejection.body_text())
    }
}

/// `axum::Json` whose rejection is our problem document, and which takes only a JSON object:
/// serde's derive would otherwise read `["text"]` as a struct, field by position.
#[derive(Debug, Clone, Copy, Default)]
pub struct AppJson<T>(pub T);

impl<S, T> FromRequest<S> for AppJson<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        let axum::Json(body) = axum::Json::<Value>::from_request(request, state).await?;
        from_object(body).map(AppJson)
    }
}

/// Deserialises `value` as `T` only if it is a JSON object.
fn from_object<T: DeserializeOwned>(value: Value) -> Result<T, ApiError> {
    if !value.is_object() {
        return Err(ApiError::MalformedBody(
            "the body must be a JSON object".to_owned(),
        ));
    }
    serde_json::from_value(value).map_err(|e| ApiError::MalformedBody(e.to_string()))
}

/// `deserialize_with` for a field holding one struct: accepts only a JSON object there, for
/// the same reason as `AppJson`.
pub fn object<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: DeserializeOwned,
{
    let map = Map::<String, Value>::deserialize(deserializer)?;
    serde_json::from_value(Value::Object(map)).map_err(serde::de::Error::custom)
}

/// `deserialize_with` for an optional struct field (use with `#[serde(default)]`); `null` is
/// the same as leaving it out.
pub fn optional_object<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: DeserializeOwned,
{
    match Option::<Map<String, Value>>::deserialize(deserializer)? {
        Some(map) => serde_json::from_value(Value::Object(map))
            .map(Some)
            .map_err(serde::de::Error::custom),
        None => Ok(None),
    }
}

/// `deserialize_with` for a list of structs: every element must be a JSON object.
pub fn objects<'de, D, T>(deserializer: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: DeserializeOwned,
{
    Vec::<Map<String, Value>>::deserialize(deserializer)?
        .into_iter()
        .map(|map| serde_json::from_value(Value::Object(map)).map_err(serde::de::Error::custom))
        .collect()
}

impl<T: Serialize> IntoResponse for AppJson<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

/// `axum::extract::Path` whose rejection is our problem document.
#[derive(Debug, Clone, Copy, Default, FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct AppPath<T>(pub T);

/// `axum::extract::Query` whose rejection is our problem document.
#[derive(Debug, Clone, Copy, Default, FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct AppQuery<T>(pub T);
