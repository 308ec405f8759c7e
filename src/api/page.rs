//! `GET /`: the live status page — routing, migrations, progress with a throughput chart, the
//! lifecycle buttons, the evidence for a cutover (gate with its override, canary, shadow
//! comparison, evaluation, cost) and the history. One static HTML file (`static/status.html`)
//! compiled into the binary, so the service needs no asset directory; the page itself calls
//! the JSON API and follows `GET /v1/migrations/{id}/events`. It is not part of the JSON API,
//! so it stays out of the OpenAPI document, like `/docs`.

use axum::Router;
use axum::http::header;
use axum::response::{Html, IntoResponse};
use axum::routing::get;

use super::AppState;

/// The page, HTML, CSS and script in one file.
const STATUS_PAGE: &str = include_str!("../../static/status.html");

/// Only inline script and style, and requests to this origin. `no-referrer` because the page
/// may carry an `access_token` in its URL (RFC 6750 §2.3 asks clients to keep it from leaking).
const SECURITY_HEADERS: [(header::HeaderName, &str); 4] = [
    (
        header::CONTENT_SECURITY_POLICY,
        "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
         connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; \
         frame-ancestors 'none'",
    ),
    (header::REFERRER_POLICY, "no-referrer"),
    (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
    (header::CACHE_CONTROL, "no-cache"),
];

/// The route of the page, merged into the application beside `/docs`.
pub fn routes() -> Router<AppState> {
    Router::new().route("/", get(status_page))
}

/// The status page (`text/html; charset=utf-8`).
pub async fn status_page() -> impl IntoResponse {
    (SECURITY_HEADERS, Html(STATUS_PAGE))
}

#[cfg(test)]
mod tests {
    use super::STATUS_PAGE;

    /// The ids the browser test and operators' scripts rely on.
    const STABLE_IDS: [&str; 26] = [
        "phase",
        "query-model",
        "write-models",
        "migration-id",
        "state",
        "progress-bar",
        "throughput",
        "eta",
        "window-countdown",
        "chart",
        "pause",
        "resume",
        "rollback",
        "finalize",
        "error",
        "migrations",
        "canary",
        "gate",
        "gate-reason",
        "override",
        "override-reason",
        "override-error",
        "comparison-note",
        "comparison-samples",
        "cost",
        "history",
    ];

    #[test]
    fn the_page_keeps_its_stable_ids() {
        for id in STABLE_IDS {
            let attribute = format!("id=\"{id}\"");
            assert_eq!(STATUS_PAGE.matches(&attribute).count(), 1, "{attribute}");
        }
    }

    #[test]
    fn the_page_loads_nothing_from_elsewhere() {
        for needle in ["http://", "https://", "src=", "@import", "url("] {
            assert!(!STATUS_PAGE.contains(needle), "{needle} in status.html");
        }
    }
}
