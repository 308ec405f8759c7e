//! The evidence for switching models (API.md "Confidence"): a migration's history, labelled
//! evaluations of its two models, their comparison on live queries (shadow reads), and the
//! operator's cutover past a gate.

use axum::extract::State;
use chrono::Utc;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::AppState;
use super::auth::Requester;
use super::error::{ApiError, AppJson, AppPath, Problem};
use super::migrations::MigrationView;
use crate::domain::config::optional_integer;
use crate::domain::{Comparison, Evaluation, Event, HistoryEvent, LabelledQuery};
use crate::evaluation::evaluate;

/// `k` when the body does not say, and the largest accepted (as `top_k` of a query).
const DEFAULT_K: i64 = 10;
const MAX_K: i64 = 1000;
/// The most labelled queries and relevant ids per query one evaluation takes: it embeds every
/// query with both models and answers when all are scored.
const MAX_QUERIES: usize = 1000;
const MAX_RELEVANT_IDS: usize = 1000;

/// Longest `reason` of a cutover, in characters.
const MAX_REASON_CHARS: usize = 1000;

/// Response of `GET /v1/migrations/{id}/history`.
#[derive(Debug, Serialize, ToSchema)]
pub struct HistoryList {
    /// Oldest first.
    pub events: Vec<HistoryEvent>,
}

/// What happened to a migration, oldest first: every transition, config change, evaluation
/// and automatic step, with its time, the replica that made it and on whose behalf.
#[utoipa::path(get, path = "/v1/migrations/{id}/history", tag = "migrations",
    params(("id" = String, Path, description = "Migration id")),
    responses((status = 200, body = HistoryList), (status = 404, body = Problem),
              (status = 503, body = Problem)))]
pub async fn get_history(
    State(state): State<AppState>,
    AppPath(id): AppPath<String>,
) -> Result<AppJson<HistoryList>, ApiError> {
    state.coordinator.migration(&id).await?;
    let events = state.store.history(&id).await?;
    Ok(AppJson(HistoryList { events }))
}

/// How the two models agree on live queries (shadow reads, `shadow_percent`), from every
/// replica's samples: overlap@k of each shadowed query's two rankings over the documents that
/// have vectors in both models, its mean over every sample (what a cutover gate's
/// `min_overlap` judges), its 10th percentile and each side's latency over the newest 10,000,
/// and the 20 queries on which the models agree least. Without samples, `samples` is 0 and the
/// overlaps and latencies are null.
#[utoipa::path(get, path = "/v1/migrations/{id}/comparison", tag = "migrations",
    params(("id" = String, Path, description = "Migration id")),
    responses((status = 200, body = Comparison), (status = 404, body = Problem),
              (status = 503, body = Problem)))]
pub async fn get_comparison(
    State(state): State<AppState>,
    AppPath(id): AppPath<String>,
) -> Result<AppJson<Comparison>, ApiError> {
    state.coordinator.migration(&id).await?;
    let kept = state.store.comparison(&id).await?;
    Ok(AppJson(Comparison::of(kept)))
}

/// Body of `POST /v1/migrations/{id}/evaluate`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EvaluateBody {
    /// 1 to 1000 queries, each with the ids of the documents a person judged relevant.
    #[schema(min_items = 1, max_items = 1000)]
    pub queries: Vec<LabelledQueryBody>,
    /// How many hits of each model are judged: 1 to 1000, default 10.
    #[serde(default, deserialize_with = "optional_integer")]
    #[schema(minimum = 1, maximum = 1000)]
    pub k: Option<i64>,
}

/// One labelled query.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LabelledQueryBody {
    pub text: String,
    /// At most 1000; repeated ids count once.
    #[schema(max_items = 1000)]
    pub relevant_ids: Vec<String>,
}

impl EvaluateBody {
    /// The queries and `k`, or 422 naming what is out of bounds.
    fn validate(self) -> Result<(Vec<LabelledQuery>, usize), ApiError> {
        let k = self.k.unwrap_or(DEFAULT_K);
        if !(1..=MAX_K).contains(&k) {
            return Err(ApiError::InvalidValue(format!(
                "k must be between 1 and {MAX_K}, got {k}"
            )));
        }
        if !(1..=MAX_QUERIES).contains(&self.queries.len()) {
            return Err(ApiError::InvalidValue(format!(
                "queries must hold 1 to {MAX_QUERIES} queries, got {}",
                self.queries.len()
            )));
        }
        if let Some(long) = self
            .queries
            .iter()
            .find(|q| q.relevant_ids.len() > MAX_RELEVANT_IDS)
        {
            return Err(ApiError::InvalidValue(format!(
                "relevant_ids may hold at most {MAX_RELEVANT_IDS} ids, got {}",
                long.relevant_ids.len()
            )));
        }
        let queries = self
            .queries
            .into_iter()
            .map(|q| LabelledQuery {
                text: q.text,
                relevant_ids: q.relevant_ids,
            })
            .collect();
        // In range by the check above.
        Ok((queries, k as usize))
    }
}

/// Scores the source and the target model on the same labelled queries — recall@k, MRR and
/// nDCG@k — over the documents that have vectors in both, and keeps the result with the
/// migration (its `last_evaluation`, read by the cutover gate's `min_recall_ratio`).
#[utoipa::path(post, path = "/v1/migrations/{id}/evaluate", tag = "migrations",
    params(("id" = String, Path, description = "Migration id")),
    request_body = EvaluateBody,
    responses((status = 200, body = Evaluation), (status = 400, body = Problem),
              (status = 404, body = Problem), (status = 422, body = Problem),
              (status = 503, body = Problem)))]
pub async fn evaluate_migration(
    State(state): State<AppState>,
    AppPath(id): AppPath<String>,
    Requester(actor): Requester,
    AppJson(body): AppJson<EvaluateBody>,
) -> Result<AppJson<Evaluation>, ApiError> {
    let (queries, k) = body.validate()?;
    let migration = state.coordinator.migration(&id).await?;
    let documents = state.documents.as_ref();
    let store = state.store.as_ref();
    let evaluation = evaluate(documents, store, &migration, &queries, k, Utc::now()).await?;
    state
        .coordinator
        .record_evaluation(&id, evaluation.clone(), actor)
        .await?;
    Ok(AppJson(evaluation))
}

/// Body of `POST /v1/migrations/{id}/cutover`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CutoverBody {
    /// Why the gate is overridden, for the history: 1 to 1000 characters.
    #[schema(min_length = 1, max_length = 1000)]
    pub reason: String,
}

/// Overrides the cutover gate of a migration in progress: queries switch to the target at
/// the threshold, and the migration completes, whatever the evidence says. The reason is kept
/// in the history. 409 when the migration has no gate or is not in progress.
#[utoipa::path(post, path = "/v1/migrations/{id}/cutover", tag = "migrations",
    params(("id" = String, Path, description = "Migration id")),
    request_body = CutoverBody,
    responses((status = 200, body = MigrationView), (status = 400, body = Problem),
              (status = 404, body = Problem), (status = 409, body = Problem),
              (status = 422, body = Problem), (status = 503, body = Problem)))]
pub async fn cutover_migration(
    State(state): State<AppState>,
    AppPath(id): AppPath<String>,
    Requester(actor): Requester,
    AppJson(body): AppJson<CutoverBody>,
) -> Result<AppJson<MigrationView>, ApiError> {
    let length = body.reason.chars().count();
    if !(1..=MAX_REASON_CHARS).contains(&length) {
        return Err(ApiError::InvalidValue(format!(
            "reason must be 1 to {MAX_REASON_CHARS} characters, got {length}"
        )));
    }
    let event = Event::OverrideGate {
        reason: body.reason,
    };
    let migration = state
        .coordinator
        .transition(&id, event, Utc::now(), actor)
        .await?;
    Ok(AppJson(migration.into()))
}
