//! `/v1/migrations`: create, inspect and steer migrations (API.md "Migrations").

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::AppState;
use super::auth::Requester;
use super::cost::{Spending, check_budget_priced, spending};
use super::error::{ApiError, AppJson, AppPath, Problem, optional_object};
use crate::coordinator::Progress;
use crate::documents::ServiceError;
use crate::domain::{
    Actor, BackfillConfig, BackfillLimits, Bounds, CleanupState, ConfigPatch, Evaluation, Event,
    GateStatus, Migration, MigrationState, Phase, Route, ThrottleReason, cost_of, estimate_secs,
    estimate_tokens,
};
use crate::embed::{EmbedError, Lane, ModelRegistry};

/// The text the preflight check embeds with the target model.
const PREFLIGHT_PROBE: &str = "reembed preflight: is this model reachable and the right size?";

/// Longest accepted migration id.
const MAX_MIGRATION_ID: usize = 128;

/// Body of `POST /v1/migrations`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateMigration {
    /// Letters, digits, `.`, `_` and `-`; generated when absent.
    #[schema(min_length = 1, max_length = 128, pattern = "^[A-Za-z0-9._-]+$")]
    pub id: Option<String>,
    /// A configured model other than the source (`GET /v1/models`).
    #[schema(example = "hash-v2")]
    pub target_model: String,
    /// Must equal the active model (the default).
    #[schema(example = "hash-v1")]
    pub source_model: Option<String>,
    #[serde(default, deserialize_with = "optional_object")]
    pub config: Option<ConfigPatch>,
    /// Start the backfill at once (default true).
    pub start: Option<bool>,
    /// Plan only: answer with what the migration would do, create nothing (default false).
    pub dry_run: Option<bool>,
}

/// Response of `POST /v1/migrations` with `"dry_run": true`: what the migration would embed.
#[derive(Debug, Serialize, ToSchema)]
pub struct MigrationPlan {
    pub source_model: String,
    pub target_model: String,
    pub config: BackfillConfig,
    /// Documents lacking a current target vector now.
    pub documents: u64,
    /// Their estimated tokens (characters / 4).
    pub estimated_tokens: u64,
    /// What those tokens cost at the target's `price_per_million_tokens`; null when the
    /// target has no price.
    #[schema(minimum = 0.0)]
    pub estimated_cost: Option<f64>,
    /// Seconds at the target's configured requests/tokens per minute; null when unpaced.
    pub estimated_secs: Option<f64>,
}

/// A migration as API.md shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct MigrationView {
    pub id: String,
    pub source_model: String,
    pub target_model: String,
    pub config: BackfillConfig,
    pub state: MigrationState,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
    pub rollback_window_ends_at: Option<DateTime<Utc>>,
    pub error: Option<String>,
    /// The reason given to the current pause, if any.
    pub pause_reason: Option<String>,
    /// The last labelled evaluation of the two models (`POST .../evaluate`), if any.
    pub last_evaluation: Option<Evaluation>,
}

/// Response of `GET /v1/migrations`, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct MigrationList {
    pub migrations: Vec<MigrationView>,
}

/// Response of `GET /v1/migrations/{id}/progress`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ProgressView {
    pub id: String,
    pub state: MigrationState,
    pub phase: Phase,
    pub total: u64,
    pub processed: u64,
    pub skipped: u64,
    pub failed: u64,
    /// Processed documents whose text is longer than the target model's `max_input_tokens`
    /// (tokens estimated as characters / 4): embedded all the same, the provider truncating
    /// them. Counted when their target vector is written; 0 for a target without a limit.
    pub truncated: u64,
    pub remaining: u64,
    /// processed / total.
    pub progress: f64,
    /// processed / (total − skipped): what the query threshold compares.
    pub coverage: f64,
    /// Documents per second over the last 60 s of wall-clock time (or since the backfill last
    /// started, when shorter), embedding time included; null until a second has passed and a
    /// document was processed, and whenever the migration is not in progress.
    pub throughput_per_sec: Option<f64>,
    /// Seconds left at that rate; 0 when nothing remains, null while the rate is unknown or 0.
    pub eta_secs: Option<f64>,
    /// Batches claimed and not yet committed, across every replica sharing the store; never
    /// more than the config's `max_concurrent`.
    pub in_flight_batches: u32,
    /// Each replica that claimed batches of this migration (one entry on SQLite).
    pub replicas: Vec<ReplicaView>,
    pub query_route: Route,
    /// Where the cutover gate stands and why, in words (`none` without a gate).
    pub gate: GateStatus,
    /// The deletion of the source model's vectors after the switch.
    pub source_cleanup: SourceCleanupView,
    /// Seconds callers of the target model have spent held back by its pacing and back-offs
    /// in this process (summed over concurrent batches).
    pub throttled_secs: f64,
    /// Null, or the provider the backfill waits for while it is unreachable: the migration
    /// stays `in_progress` and continues by itself when the provider answers again, unless it
    /// stays away for longer than `--provider-patience-secs`.
    pub waiting: Option<WaitingView>,
    /// Batches the backfill keeps in flight now, as its controller sets them; at most the
    /// config's `max_concurrent` (which it reports while the backfill does not run).
    pub concurrency: u32,
    /// Documents per batch now, as the controller sets them; at most the config's
    /// `batch_size`.
    pub batch_size: u32,
    /// Why `concurrency` or `batch_size` is below the configured bounds; null at the bounds.
    pub throttle_reason: Option<ThrottleReason>,
    /// Tokens the migration's backfill batches were billed: the provider's `usage` when its
    /// answers report it, else estimated (characters / 4, rounded up, per text). A dual
    /// write's tokens are not counted; they serve a client's write.
    pub tokens_embedded: u64,
    /// tokens_embedded × the target's `price_per_million_tokens` / 10⁶; null when the target
    /// has no price.
    #[schema(minimum = 0.0)]
    pub cost_so_far: Option<f64>,
    /// What the remaining documents will cost: the tokens per processed document so far
    /// times the documents remaining, or, before any batch counted tokens, the estimated
    /// tokens of their texts (in the `events` feed, null until a batch has counted tokens);
    /// null when the target has no price.
    #[schema(minimum = 0.0)]
    pub cost_remaining_estimate: Option<f64>,
    pub updated_at: DateTime<Utc>,
}

/// Progress `source_cleanup`: where the deletion of the source model's vectors stands, and
/// how many are deleted.
#[derive(Debug, Serialize, ToSchema)]
pub struct SourceCleanupView {
    pub state: CleanupState,
    pub deleted: u64,
}

/// One replica's share of a migration's backfill (progress `replicas`).
#[derive(Debug, Serialize, ToSchema)]
pub struct ReplicaView {
    /// The replica's `--replica-id` (by default its host name and port).
    pub id: String,
    /// Its batches claimed under a lease that has not expired.
    pub in_flight_batches: u32,
    /// Target vectors its batches wrote.
    pub processed: u64,
}

/// A provider the backfill waits for (progress `waiting`).
#[derive(Debug, Serialize, ToSchema)]
pub struct WaitingView {
    /// The registry id of the unreachable model.
    pub model: String,
    /// When its first failure since it last answered happened.
    pub since: DateTime<Utc>,
    /// The error of its latest failed attempt.
    pub last_error: String,
}

/// Optional body of `POST /v1/migrations/{id}/pause`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PauseBody {
    pub reason: Option<String>,
}

/// One skipped document.
#[derive(Debug, Serialize, ToSchema)]
pub struct SkipView {
    pub document_id: String,
    pub reason: String,
    pub at: DateTime<Utc>,
}

/// Response of `GET /v1/migrations/{id}/skips`.
#[derive(Debug, Serialize, ToSchema)]
pub struct SkipList {
    pub skips: Vec<SkipView>,
}

impl From<Migration> for MigrationView {
    fn from(m: Migration) -> Self {
        Self {
            id: m.id,
            source_model: m.source_model,
            target_model: m.target_model,
            config: m.config,
            state: m.state,
            created_at: m.created_at,
            started_at: m.started_at,
            completed_at: m.completed_at,
            rollback_window_ends_at: m.rollback_window_ends_at,
            error: m.error,
            pause_reason: m.pause_reason,
            last_evaluation: m.evaluation,
        }
    }
}

impl ProgressView {
    /// The report of `p`, with the target model's throttled time from `models`, and its
    /// `spending`.
    pub fn new(p: Progress, models: &ModelRegistry, spending: Spending) -> Self {
        let throttled_secs = models.throttled(&p.migration.target_model).as_secs_f64();
        let m = p.migration;
        let gate = m.gate();
        let source_cleanup = SourceCleanupView {
            state: m.cleanup_state(Utc::now()),
            deleted: m.cleanup.deleted,
        };
        let limits = p.limits.unwrap_or(BackfillLimits::at(Bounds {
            max_concurrent: m.config.max_concurrent,
            batch_size: m.config.batch_size,
        }));
        Self {
            id: m.id,
            state: m.state,
            phase: p.routing.phase,
            total: m.counts.total,
            processed: m.counts.processed,
            skipped: m.counts.skipped,
            failed: m.counts.failed,
            truncated: m.counts.truncated,
            remaining: p.snapshot.remaining,
            progress: p.snapshot.progress,
            coverage: p.snapshot.coverage,
            throughput_per_sec: p.snapshot.throughput_per_sec,
            eta_secs: p.snapshot.eta_secs,
            in_flight_batches: p.in_flight_batches,
            replicas: p
                .replicas
                .into_iter()
                .map(|r| ReplicaView {
                    id: r.id,
                    in_flight_batches: r.in_flight_batches,
                    processed: r.processed,
                })
                .collect(),
            query_route: p.routing.query_route,
            gate,
            source_cleanup,
            throttled_secs,
            waiting: p.waiting.map(|w| WaitingView {
                model: w.model,
                since: w.since,
                last_error: w.last_error,
            }),
            concurrency: limits.concurrency,
            batch_size: limits.batch_size,
            throttle_reason: limits.reason,
            tokens_embedded: spending.tokens_embedded,
            cost_so_far: spending.cost_so_far,
            cost_remaining_estimate: spending.cost_remaining_estimate,
            updated_at: p.updated_at,
        }
    }
}

/// Checks the request against the registry and builds the planned migration.
fn plan(
    state: &AppState,
    body: CreateMigration,
    now: DateTime<Utc>,
) -> Result<Migration, ApiError> {
    let active = state.coordinator.active_model(now);
    let source = body.source_model.unwrap_or_else(|| active.clone());
    let invalid = |detail: String| Err(ApiError::InvalidConfig(detail));
    if source != active {
        return invalid(format!(
            "source_model: must be the active model {active}, got {source}"
        ));
    }
    if state.models.info(&body.target_model).is_none() {
        return invalid(format!("target_model: unknown model {}", body.target_model));
    }
    if body.target_model == source {
        return invalid(format!(
            "target_model: must differ from the source model {source}"
        ));
    }
    let config = body
        .config
        .unwrap_or_default()
        .apply_to(BackfillConfig::default())?;
    if config.max_cost.is_some() {
        check_budget_priced(&state.models, &body.target_model)?;
    }
    let id = match body.id {
        Some(id) => valid_migration_id(id)?,
        None => format!("mig-{}", uuid::Uuid::new_v4().simple()),
    };
    Ok(Migration::plan(id, source, body.target_model, config, now))
}

fn valid_migration_id(id: String) -> Result<String, ApiError> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if id.is_empty() || id.len() > MAX_MIGRATION_ID || !id.chars().all(allowed) {
        return Err(ApiError::InvalidConfig(format!(
            "id: 1 to {MAX_MIGRATION_ID} letters, digits, '.', '_' or '-', got {id:?}"
        )));
    }
    Ok(id)
}

/// Embeds one probe text with the target model before anything starts, so a wrong dimension
/// or a misconfigured provider is a 422 on creation rather than a failed migration later.
async fn preflight(state: &AppState, target: &str) -> Result<(), ApiError> {
    let probe = [PREFLIGHT_PROBE.to_owned()];
    match state
        .documents
        .embed(target, &probe, Lane::Interactive)
        .await
    {
        Ok(_) => Ok(()),
        Err(
            error @ (ServiceError::WrongShape { .. }
            | ServiceError::Embed {
                source: EmbedError::Rejected(_) | EmbedError::Misconfigured(_),
                ..
            }),
        ) => Err(ApiError::InvalidConfig(format!(
            "target_model: preflight failed: {error}"
        ))),
        Err(error) => Err(error.into()),
    }
}

/// Plans a migration and, unless `"start": false`, starts its backfill.
#[utoipa::path(post, path = "/v1/migrations", tag = "migrations", request_body = CreateMigration,
    responses((status = 201, body = MigrationView, headers(("location" = String))),
              (status = 200, body = MigrationPlan, description = "The plan, for `\"dry_run\": true`"),
              (status = 400, body = Problem), (status = 409, body = Problem),
              (status = 422, body = Problem), (status = 503, body = Problem)))]
pub async fn create_migration(
    State(state): State<AppState>,
    Requester(actor): Requester,
    AppJson(body): AppJson<CreateMigration>,
) -> Result<Response, ApiError> {
    let now = Utc::now();
    let start = body.start.unwrap_or(true);
    let dry_run = body.dry_run.unwrap_or(false);
    let planned = plan(&state, body, now)?;
    state.coordinator.ensure_none_open(now)?;
    preflight(&state, &planned.target_model).await?;
    if dry_run {
        return Ok(AppJson(estimate(&state, planned).await?).into_response());
    }
    let migration = state.coordinator.create(planned, start, now, actor).await?;
    let location = format!("/v1/migrations/{}", migration.id);
    let view = AppJson(MigrationView::from(migration));
    Ok((StatusCode::CREATED, [(header::LOCATION, location)], view).into_response())
}

/// The dry-run answer: what `planned` would embed now and how long its pace allows.
async fn estimate(state: &AppState, planned: Migration) -> Result<MigrationPlan, ApiError> {
    let (documents, chars) = state.store.backfill_estimate(&planned.target_model).await?;
    let estimated_tokens = estimate_tokens(chars);
    let estimated_cost = state
        .models
        .price(&planned.target_model)
        .map(|price| cost_of(estimated_tokens as f64, price));
    let pace = state
        .models
        .get(&planned.target_model)
        .map(|e| e.pace())
        .unwrap_or_default();
    Ok(MigrationPlan {
        estimated_secs: estimate_secs(documents, estimated_tokens, planned.config.batch_size, pace),
        source_model: planned.source_model,
        target_model: planned.target_model,
        config: planned.config,
        documents,
        estimated_tokens,
        estimated_cost,
    })
}

/// Every migration, newest first.
#[utoipa::path(get, path = "/v1/migrations", tag = "migrations",
    responses((status = 200, body = MigrationList), (status = 503, body = Problem)))]
pub async fn list_migrations(
    State(state): State<AppState>,
) -> Result<AppJson<MigrationList>, ApiError> {
    let latest = state.coordinator.latest();
    let migrations = state
        .store
        .migrations()
        .await?
        .into_iter()
        .map(|stored| match &latest {
            Some(live) if live.id == stored.id => live.clone().into(),
            _ => stored.into(),
        })
        .collect();
    Ok(AppJson(MigrationList { migrations }))
}

/// One migration.
#[utoipa::path(get, path = "/v1/migrations/{id}", tag = "migrations",
    params(("id" = String, Path, description = "Migration id")),
    responses((status = 200, body = MigrationView), (status = 404, body = Problem)))]
pub async fn get_migration(
    State(state): State<AppState>,
    AppPath(id): AppPath<String>,
) -> Result<AppJson<MigrationView>, ApiError> {
    Ok(AppJson(state.coordinator.migration(&id).await?.into()))
}

/// Counts, coverage, throughput and ETA of a migration.
#[utoipa::path(get, path = "/v1/migrations/{id}/progress", tag = "migrations",
    params(("id" = String, Path, description = "Migration id")),
    responses((status = 200, body = ProgressView), (status = 404, body = Problem)))]
pub async fn get_progress(
    State(state): State<AppState>,
    AppPath(id): AppPath<String>,
) -> Result<AppJson<ProgressView>, ApiError> {
    let progress = state.coordinator.progress(&id, Utc::now()).await?;
    let spending = spending(&state, &progress.migration).await?;
    Ok(AppJson(ProgressView::new(
        progress,
        &state.models,
        spending,
    )))
}

async fn apply(
    state: &AppState,
    id: &str,
    event: Event,
    actor: Actor,
) -> Result<AppJson<MigrationView>, ApiError> {
    let migration = state
        .coordinator
        .transition(id, event, Utc::now(), actor)
        .await?;
    Ok(AppJson(migration.into()))
}

/// planned → in_progress.
#[utoipa::path(post, path = "/v1/migrations/{id}/start", tag = "migrations",
    params(("id" = String, Path, description = "Migration id")),
    responses((status = 200, body = MigrationView), (status = 404, body = Problem), (status = 409, body = Problem)))]
pub async fn start_migration(
    State(state): State<AppState>,
    AppPath(id): AppPath<String>,
    Requester(actor): Requester,
) -> Result<AppJson<MigrationView>, ApiError> {
    apply(&state, &id, Event::Start, actor).await
}

/// in_progress → paused: workers stop taking batches; routing stays where it was.
#[utoipa::path(post, path = "/v1/migrations/{id}/pause", tag = "migrations",
    params(("id" = String, Path, description = "Migration id")),
    request_body(content = Option<PauseBody>, description = "Optional reason"),
    responses((status = 200, body = MigrationView), (status = 400, body = Problem),
              (status = 404, body = Problem), (status = 409, body = Problem)))]
pub async fn pause_migration(
    State(state): State<AppState>,
    AppPath(id): AppPath<String>,
    Requester(actor): Requester,
    body: Bytes,
) -> Result<AppJson<MigrationView>, ApiError> {
    let body: PauseBody = if body.iter().all(u8::is_ascii_whitespace) {
        PauseBody::default()
    } else {
        serde_json::from_slice::<Option<PauseBody>>(&body)
            .map_err(|e| ApiError::MalformedBody(e.to_string()))?
            .unwrap_or_default()
    };
    apply(
        &state,
        &id,
        Event::Pause {
            reason: body.reason,
        },
        actor,
    )
    .await
}

/// paused or failed → in_progress.
#[utoipa::path(post, path = "/v1/migrations/{id}/resume", tag = "migrations",
    params(("id" = String, Path, description = "Migration id")),
    responses((status = 200, body = MigrationView), (status = 404, body = Problem), (status = 409, body = Problem)))]
pub async fn resume_migration(
    State(state): State<AppState>,
    AppPath(id): AppPath<String>,
    Requester(actor): Requester,
) -> Result<AppJson<MigrationView>, ApiError> {
    apply(&state, &id, Event::Resume, actor).await
}

/// Stops a migration that has not completed; routing returns to the source.
#[utoipa::path(post, path = "/v1/migrations/{id}/cancel", tag = "migrations",
    params(("id" = String, Path, description = "Migration id")),
    responses((status = 200, body = MigrationView), (status = 404, body = Problem), (status = 409, body = Problem)))]
pub async fn cancel_migration(
    State(state): State<AppState>,
    AppPath(id): AppPath<String>,
    Requester(actor): Requester,
) -> Result<AppJson<MigrationView>, ApiError> {
    apply(&state, &id, Event::Cancel, actor).await
}

/// Returns queries and writes to the source model; allowed until the rollback window ends.
#[utoipa::path(post, path = "/v1/migrations/{id}/rollback", tag = "migrations",
    params(("id" = String, Path, description = "Migration id")),
    responses((status = 200, body = MigrationView), (status = 404, body = Problem), (status = 409, body = Problem)))]
pub async fn rollback_migration(
    State(state): State<AppState>,
    AppPath(id): AppPath<String>,
    Requester(actor): Requester,
) -> Result<AppJson<MigrationView>, ApiError> {
    apply(&state, &id, Event::Rollback, actor).await
}

/// Ends the rollback window now: the target becomes the active model.
#[utoipa::path(post, path = "/v1/migrations/{id}/finalize", tag = "migrations",
    params(("id" = String, Path, description = "Migration id")),
    responses((status = 200, body = MigrationView), (status = 404, body = Problem), (status = 409, body = Problem)))]
pub async fn finalize_migration(
    State(state): State<AppState>,
    AppPath(id): AppPath<String>,
    Requester(actor): Requester,
) -> Result<AppJson<MigrationView>, ApiError> {
    apply(&state, &id, Event::Finalize, actor).await
}

/// Changes config fields of a planned or running migration; applies from the next batch.
#[utoipa::path(patch, path = "/v1/migrations/{id}/config", tag = "migrations",
    params(("id" = String, Path, description = "Migration id")),
    request_body = ConfigPatch,
    responses((status = 200, body = MigrationView), (status = 400, body = Problem),
              (status = 404, body = Problem), (status = 409, body = Problem), (status = 422, body = Problem)))]
pub async fn patch_config(
    State(state): State<AppState>,
    AppPath(id): AppPath<String>,
    Requester(actor): Requester,
    AppJson(patch): AppJson<ConfigPatch>,
) -> Result<AppJson<MigrationView>, ApiError> {
    if patch.sets_max_cost() {
        let current = state.coordinator.migration(&id).await?;
        check_budget_priced(&state.models, &current.target_model)?;
    }
    let migration = state.coordinator.update_config(&id, patch, actor).await?;
    Ok(AppJson(migration.into()))
}

/// Documents the backfill gave up on, with the provider's reason.
#[utoipa::path(get, path = "/v1/migrations/{id}/skips", tag = "migrations",
    params(("id" = String, Path, description = "Migration id")),
    responses((status = 200, body = SkipList), (status = 404, body = Problem)))]
pub async fn list_skips(
    State(state): State<AppState>,
    AppPath(id): AppPath<String>,
) -> Result<AppJson<SkipList>, ApiError> {
    state.coordinator.migration(&id).await?;
    let skips = state
        .store
        .skips(&id)
        .await?
        .into_iter()
        .map(|s| SkipView {
            document_id: s.document_id,
            reason: s.reason,
            at: s.at,
        })
        .collect();
    Ok(AppJson(SkipList { skips }))
}

/// Puts the skipped documents back on the queue of a running, paused or failed migration.
#[utoipa::path(post, path = "/v1/migrations/{id}/skips/retry", tag = "migrations",
    params(("id" = String, Path, description = "Migration id")),
    responses((status = 200, body = MigrationView), (status = 404, body = Problem), (status = 409, body = Problem)))]
pub async fn retry_skips(
    State(state): State<AppState>,
    AppPath(id): AppPath<String>,
    Requester(actor): Requester,
) -> Result<AppJson<MigrationView>, ApiError> {
    let migration = state
        .coordinator
        .retry_skips(&id, Utc::now(), actor)
        .await?;
    Ok(AppJson(migration.into()))
}
