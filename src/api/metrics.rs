//! `GET /metrics` (Prometheus text format) and the request metrics middleware.
//!
//! Request counters and latencies are recorded as requests happen; migration figures are
//! gauges refreshed from the coordinator at scrape time, so the backfill's hot path pays
//! nothing for them.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use metrics::{counter, gauge, histogram};

use super::AppState;
use crate::domain::MigrationState;
use crate::index::IndexSet;
use crate::telemetry;

/// Middleware (as a route layer, so the matched route template is known): counts requests
/// and records their latency by method, route and status.
pub async fn track_requests(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().to_string();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let response = next.run(request).await;
    let labels = [
        ("method", method),
        ("route", route),
        ("status", response.status().as_u16().to_string()),
    ];
    counter!("reembed_http_requests_total", &labels).increment(1);
    histogram!("reembed_http_request_duration_seconds", &labels)
        .record(started.elapsed().as_secs_f64());
    response
}

/// Prometheus metrics of this process.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain")))]
pub async fn get_metrics(State(state): State<AppState>) -> impl IntoResponse {
    refresh_gauges(&state).await;
    let handle = telemetry::metrics();
    handle.run_upkeep();
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        handle.render(),
    )
}

/// Sets the gauges of the in-memory indexes (a store that searches its own has none here).
fn refresh_index_gauges(state: &AppState, indexes: &IndexSet) {
    for model in state.models.models() {
        gauge!("reembed_index_lag", "model" => model.id.clone())
            .set(indexes.unsynced(&model.id) as f64);
    }
    for size in indexes.sizes() {
        let labels = [("model", size.model), ("kind", size.kind.to_owned())];
        gauge!("reembed_index_vectors", &labels).set(size.vectors as f64);
        gauge!("reembed_index_bytes", &labels).set(size.bytes as f64);
    }
    gauge!("reembed_index_filterable_documents").set(indexes.filterable_documents() as f64);
}

/// Sets the per-migration, per-model and per-index gauges from live state.
async fn refresh_gauges(state: &AppState) {
    for model in state.models.models() {
        gauge!("reembed_embed_throttled_seconds", "model" => model.id.clone())
            .set(state.models.throttled(&model.id).as_secs_f64());
    }
    if let Some(indexes) = &state.indexes {
        refresh_index_gauges(state, indexes);
    }
    let Some(latest) = state.coordinator.latest() else {
        return;
    };
    let Ok(progress) = state.coordinator.progress(&latest.id, Utc::now()).await else {
        return;
    };
    let id = latest.id.clone();
    let counts = progress.migration.counts;
    let figures = [
        ("reembed_migration_total", counts.total as f64),
        ("reembed_migration_processed", counts.processed as f64),
        ("reembed_migration_skipped", counts.skipped as f64),
        ("reembed_migration_failed", counts.failed as f64),
        ("reembed_migration_truncated", counts.truncated as f64),
        (
            "reembed_migration_in_flight_batches",
            f64::from(progress.in_flight_batches),
        ),
        (
            "reembed_migration_throughput_per_sec",
            progress.snapshot.throughput_per_sec.unwrap_or(0.0),
        ),
        ("reembed_migration_coverage", progress.snapshot.coverage),
        (
            "reembed_migration_throttled_seconds",
            state.models.throttled(&latest.target_model).as_secs_f64(),
        ),
    ];
    for (name, value) in figures {
        gauge!(name, "migration" => id.clone()).set(value);
    }
    for candidate in MigrationState::ALL {
        let current = f64::from(u8::from(candidate == progress.migration.state));
        gauge!("reembed_migration_state", "migration" => id.clone(), "state" => candidate.as_str())
            .set(current);
    }
}
