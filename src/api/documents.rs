//! `/v1/documents`: upsert, bulk upsert, read, list and delete (API.md "Documents").

use std::collections::BTreeMap;

use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use super::AppState;
use super::error::{ApiError, AppJson, AppPath, AppQuery, Problem, objects};
use crate::config::Limits;
use crate::documents::{NewDocument, Upserted};
use crate::domain::Route;
use crate::embed::ModelRegistry;
use crate::store::StoredDocument;

/// Longest accepted document id, in characters (as JSON Schema's `maxLength` counts).
pub const MAX_ID_CHARS: usize = 512;
/// Page size of `GET /v1/documents` when `limit` is absent, and its largest accepted value.
const DEFAULT_PAGE: u32 = 100;
const MAX_PAGE: u32 = 1000;

/// Body of `PUT /v1/documents/{id}`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PutDocument {
    pub text: String,
    #[serde(default)]
    pub metadata: Option<Value>,
}

/// One document of a bulk upsert.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BulkDocument {
    #[schema(min_length = 1, max_length = 512)]
    pub id: String,
    pub text: String,
    #[serde(default)]
    pub metadata: Option<Value>,
}

/// Body of `POST /v1/documents`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BulkBody {
    /// At most `--max-bulk-documents` (default 1000).
    #[serde(deserialize_with = "objects")]
    #[schema(max_items = 1000)]
    pub documents: Vec<BulkDocument>,
}

/// The result of writing one document.
#[derive(Debug, Serialize, ToSchema)]
pub struct WriteResult {
    pub id: String,
    pub version: u64,
    /// The write models, in routing order, holding a vector of this version once written:
    /// embedded by this write, or kept from the stored version when the text is unchanged.
    pub embedded_with: Vec<String>,
    pub write_route: Route,
}

/// Response of `POST /v1/documents`.
#[derive(Debug, Serialize, ToSchema)]
pub struct BulkResult {
    pub results: Vec<WriteResult>,
}

/// Which version of the document a model's vector belongs to.
#[derive(Debug, Serialize, ToSchema)]
pub struct EmbeddingView {
    pub version: u64,
    pub dimensions: usize,
}

/// A stored document (API.md `GET /v1/documents/{id}`).
#[derive(Debug, Serialize, ToSchema)]
pub struct DocumentView {
    pub id: String,
    pub text: String,
    pub metadata: Value,
    pub version: u64,
    pub embeddings: BTreeMap<String, EmbeddingView>,
    /// Whether the text is longer than the `max_input_tokens` of a model in `embeddings`
    /// (tokens estimated as characters / 4, rounded up): that model's provider embedded it
    /// truncated. False when none of them has a limit.
    pub truncated: bool,
}

/// Query string of `GET /v1/documents`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// Page size, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
    /// Return documents whose id sorts after this one.
    pub after: Option<String>,
}

/// A page of documents.
#[derive(Debug, Serialize, ToSchema)]
pub struct DocumentPage {
    pub documents: Vec<DocumentView>,
    /// Pass as `after` for the next page; null on the last page.
    pub next_after: Option<String>,
}

impl DocumentView {
    /// The view of `doc`, judging truncation by the limits in `models` as they are now.
    fn new(doc: StoredDocument, models: &ModelRegistry) -> Self {
        let truncated = doc
            .embeddings
            .iter()
            .any(|e| models.is_over_input_limit(&e.model, &doc.text));
        let embeddings = doc
            .embeddings
            .into_iter()
            .map(|e| {
                (
                    e.model,
                    EmbeddingView {
                        version: e.version,
                        dimensions: e.dimensions,
                    },
                )
            })
            .collect();
        Self {
            id: doc.id,
            text: doc.text,
            metadata: doc.metadata,
            version: doc.version,
            embeddings,
            truncated,
        }
    }
}

/// Checks one document against the id rule and the configured text cap.
fn validate_document(id: &str, text: &str, limits: &Limits) -> Result<(), ApiError> {
    validate_id(id)?;
    if text.len() > limits.max_text_bytes {
        return Err(ApiError::InvalidValue(format!(
            "text: document {id} has {} bytes; the limit is {} (--max-text-bytes)",
            text.len(),
            limits.max_text_bytes
        )));
    }
    Ok(())
}

fn validate_id(id: &str) -> Result<(), ApiError> {
    let length = id.chars().count();
    if length == 0 || length > MAX_ID_CHARS {
        return Err(ApiError::InvalidValue(format!(
            "id: must be 1 to {MAX_ID_CHARS} characters, got {length}"
        )));
    }
    Ok(())
}

fn write_results(upserted: Upserted) -> Vec<WriteResult> {
    let Upserted {
        outcomes,
        embedded_with,
        routing,
    } = upserted;
    outcomes
        .into_iter()
        .map(|o| WriteResult {
            id: o.id,
            version: o.version,
            embedded_with: embedded_with.clone(),
            write_route: routing.write_route,
        })
        .collect()
}

/// Creates or replaces one document.
#[utoipa::path(put, path = "/v1/documents/{id}", tag = "documents",
    params(("id" = String, Path, description = "Document id, 1 to 512 characters", min_length = 1, max_length = 512)),
    request_body = PutDocument,
    responses((status = 200, body = WriteResult), (status = 400, body = Problem),
              (status = 422, body = Problem), (status = 503, body = Problem)))]
pub async fn put_document(
    State(state): State<AppState>,
    AppPath(id): AppPath<String>,
    AppJson(body): AppJson<PutDocument>,
) -> Result<AppJson<WriteResult>, ApiError> {
    validate_document(&id, &body.text, &state.limits)?;
    let doc = NewDocument {
        id,
        text: body.text,
        metadata: body.metadata.unwrap_or(Value::Null),
    };
    let upserted = state.documents.upsert(std::slice::from_ref(&doc)).await?;
    let result = write_results(upserted).pop();
    result.map(AppJson).ok_or_else(|| {
        tracing::error!(id = %doc.id, "the store acknowledged a write with no outcome");
        ApiError::Internal("the store acknowledged the write with no outcome".to_owned())
    })
}

/// Creates or replaces many documents in one transaction; one invalid document rejects all.
#[utoipa::path(post, path = "/v1/documents", tag = "documents",
    request_body = BulkBody,
    responses((status = 200, body = BulkResult), (status = 400, body = Problem),
              (status = 422, body = Problem), (status = 503, body = Problem)))]
pub async fn bulk_upsert(
    State(state): State<AppState>,
    AppJson(body): AppJson<BulkBody>,
) -> Result<AppJson<BulkResult>, ApiError> {
    let cap = state.limits.max_bulk_documents;
    if body.documents.len() > cap {
        return Err(ApiError::InvalidValue(format!(
            "documents: {} in one request; the limit is {cap} (--max-bulk-documents)",
            body.documents.len()
        )));
    }
    for doc in &body.documents {
        validate_document(&doc.id, &doc.text, &state.limits)?;
    }
    let docs: Vec<NewDocument> = body
        .documents
        .into_iter()
        .map(|d| NewDocument {
            id: d.id,
            text: d.text,
            metadata: d.metadata.unwrap_or(Value::Null),
        })
        .collect();
    if docs.is_empty() {
        return Ok(AppJson(BulkResult {
            results: Vec::new(),
        }));
    }
    let upserted = state.documents.upsert(&docs).await?;
    Ok(AppJson(BulkResult {
        results: write_results(upserted),
    }))
}

/// Reads one document and which models hold a vector for which of its versions.
#[utoipa::path(get, path = "/v1/documents/{id}", tag = "documents",
    params(("id" = String, Path, description = "Document id, 1 to 512 characters", min_length = 1, max_length = 512)),
    responses((status = 200, body = DocumentView), (status = 404, body = Problem)))]
pub async fn get_document(
    State(state): State<AppState>,
    AppPath(id): AppPath<String>,
) -> Result<AppJson<DocumentView>, ApiError> {
    let doc = state.store.get_document(&id).await?;
    doc.map(|d| AppJson(DocumentView::new(d, &state.models)))
        .ok_or_else(|| ApiError::NotFound(format!("document {id} not found")))
}

/// Deletes a document and all its vectors.
#[utoipa::path(delete, path = "/v1/documents/{id}", tag = "documents",
    params(("id" = String, Path, description = "Document id, 1 to 512 characters", min_length = 1, max_length = 512)),
    responses((status = 204), (status = 404, body = Problem)))]
pub async fn delete_document(
    State(state): State<AppState>,
    AppPath(id): AppPath<String>,
) -> Result<StatusCode, ApiError> {
    if state.documents.delete(&id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound(format!("document {id} not found")))
    }
}

/// Lists documents in id order, a page at a time.
#[utoipa::path(get, path = "/v1/documents", tag = "documents", params(ListParams),
    responses((status = 200, body = DocumentPage), (status = 400, body = Problem),
              (status = 422, body = Problem)))]
pub async fn list_documents(
    State(state): State<AppState>,
    AppQuery(params): AppQuery<ListParams>,
) -> Result<AppJson<DocumentPage>, ApiError> {
    let limit = params.limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::InvalidValue(format!(
            "limit: must be 1 to {MAX_PAGE}, got {limit}"
        )));
    }
    let docs = state
        .store
        .list_documents(params.after.as_deref(), limit)
        .await?;
    let next_after = (docs.len() == limit as usize)
        .then(|| docs.last().map(|d| d.id.clone()))
        .flatten();
    let documents = docs
        .into_iter()
        .map(|d| DocumentView::new(d, &state.models))
        .collect();
    Ok(AppJson(DocumentPage {
        documents,
        next_after,
    }))
}
