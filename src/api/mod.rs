//! The HTTP face of reembed: thin handlers grouped by resource, registered together with
//! their OpenAPI description (utoipa-axum), so the served spec cannot drift from the routes.

pub mod auth;
pub mod confidence;
pub mod cost;
pub mod documents;
pub mod error;
pub mod events;
pub mod health;
pub mod limits;
pub mod metrics;
pub mod migrations;
pub mod page;
pub mod query;
pub mod spec;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::extract::State;
use axum::http::{HeaderName, Request};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use tokio_util::sync::CancellationToken;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use utoipa_swagger_ui::SwaggerUi;

use crate::config::{Limits, Tokens};
use crate::coordinator::Coordinator;
use crate::documents::Documents;
use crate::embed::ModelRegistry;
use crate::index::IndexSet;
use crate::load::RequestCount;
use crate::store::Store;
use error::ApiError;

/// What every handler can reach; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub coordinator: Arc<Coordinator>,
    pub documents: Arc<Documents>,
    pub store: Arc<dyn Store>,
    /// The in-memory indexes, read for their sizes in `/metrics` (queries reach them through
    /// `documents`); `None` when the store searches its own (PostgreSQL).
    pub indexes: Option<Arc<IndexSet>>,
    pub models: ModelRegistry,
    pub limits: Limits,
    /// Counts every request, so the backfill can yield CPU to them.
    pub requests: Arc<RequestCount>,
    /// Fires when shutdown begins: open event feeds end, so they do not hold the drain.
    pub stopping: CancellationToken,
}

#[derive(OpenApi)]
#[openapi(
    info(title = "reembed", description = "Change embedding models with zero downtime."),
    tags(
        (name = "documents", description = "Documents and their vectors"),
        (name = "query", description = "Queries and the routing policy"),
        (name = "migrations", description = "Model migrations and their backfill"),
        (name = "operations", description = "Health checks"),
    )
)]
struct ApiDoc;

/// Every route with its OpenAPI operation.
fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(
            documents::put_document,
            documents::get_document,
            documents::delete_document
        ))
        .routes(routes!(documents::bulk_upsert, documents::list_documents))
        .routes(routes!(query::query))
        .routes(routes!(query::get_routing))
        .routes(routes!(query::list_models))
        .routes(routes!(
            migrations::create_migration,
            migrations::list_migrations
        ))
        .routes(routes!(migrations::get_migration))
        .routes(routes!(migrations::get_progress))
        .routes(routes!(events::migration_events))
        .routes(routes!(migrations::start_migration))
        .routes(routes!(migrations::pause_migration))
        .routes(routes!(migrations::resume_migration))
        .routes(routes!(migrations::cancel_migration))
        .routes(routes!(migrations::rollback_migration))
        .routes(routes!(migrations::finalize_migration))
        .routes(routes!(migrations::patch_config))
        .routes(routes!(migrations::list_skips))
        .routes(routes!(migrations::retry_skips))
        .routes(routes!(confidence::get_history))
        .routes(routes!(confidence::get_comparison))
        .routes(routes!(confidence::evaluate_migration))
        .routes(routes!(confidence::cutover_migration))
        .routes(routes!(health::healthz))
        .routes(routes!(health::readyz))
        .routes(routes!(metrics::get_metrics))
}

/// The OpenAPI document, as served at `/openapi.json` and checked in at `openapi/openapi.json`.
pub fn openapi() -> utoipa::openapi::OpenApi {
    spec::complete(routes().split_for_parts().1)
}

/// The application: routes, `/openapi.json`, `/docs`, problem+json for unknown routes, a body
/// limit, and a request id on every request's log lines and response.
pub fn app(state: AppState, tokens: Option<Tokens>) -> Router {
    let (router, spec) = routes().split_for_parts();
    let spec = spec::complete(spec);
    let request_id = HeaderName::from_static("x-request-id");
    let limits = state.limits;
    let requests = state.requests.clone();
    router
        .route_layer(middleware::from_fn(metrics::track_requests))
        .merge(page::routes())
        .merge(SwaggerUi::new("/docs").url("/openapi.json", spec))
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(unknown_route)
        .with_state(state)
        .layer(middleware::from_fn_with_state(
            limits.request_timeout,
            limits::answer_within,
        ))
        .layer(DefaultBodyLimit::max(limits.max_body_bytes))
        .layer(middleware::from_fn_with_state(limits, limits::refuse_oversized))
        .layer(middleware::from_fn_with_state(tokens.map(Arc::new), auth::require_token))
        .layer(PropagateRequestIdLayer::new(request_id.clone()))
        .layer(TraceLayer::new_for_http().make_span_with(|request: &Request<_>| {
            let id = request
                .headers()
                .get("x-request-id")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-");
            tracing::info_span!("request", id, method = %request.method(), path = %request.uri().path())
        }))
        .layer(SetRequestIdLayer::new(request_id, MakeRequestUuid))
        .layer(middleware::from_fn_with_state(requests, count_request))
        .layer(CatchPanicLayer::custom(answer_panic))
}

/// A handler that panicked answers a 500 problem document; the panic goes to the log once.
fn answer_panic(panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let message = crate::supervise::panic_message(panic.as_ref());
    tracing::error!(panic = message, "a request handler panicked");
    ApiError::Internal("the server failed to answer this request; the log has the cause".to_owned())
        .into_response()
}

/// Middleware: counts the request.
async fn count_request(
    State(requests): State<Arc<RequestCount>>,
    request: axum::extract::Request,
    next: Next,
) -> Response {
    requests.add_one();
    next.run(request).await
}

async fn unknown_route() -> ApiError {
    ApiError::NotFound("no such route".to_owned())
}

/// A known route called with another method; the router adds `Allow`.
async fn method_not_allowed(method: axum::http::Method) -> ApiError {
    ApiError::MethodNotAllowed(format!(
        "{method} is not allowed here; the Allow header lists what is"
    ))
}
