//! Liveness and readiness probes.

use axum::extract::State;
use axum::http::StatusCode;

use super::AppState;
use super::error::{ApiError, Problem};

/// 200 while the process runs.
#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200, description = "Alive")))]
pub async fn healthz() -> StatusCode {
    StatusCode::OK
}

/// 200 when storage answers, 503 otherwise.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses((status = 200, description = "Ready"), (status = 503, body = Problem)))]
pub async fn readyz(State(state): State<AppState>) -> Result<StatusCode, ApiError> {
    state.store.ping().await?;
    Ok(StatusCode::OK)
}
