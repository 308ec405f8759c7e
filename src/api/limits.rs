//! The request limits (API.md 408 / 413 / 503): how big a body may be and how long a request
//! may take, each refused as the client's fault or the server's, whichever it is.
//!
//! - A body declared larger than `max_body_bytes` is 413 at once, before any of it is read
//!   (`DefaultBodyLimit` alone would wait for the bytes).
//! - The time limit covers the work before a commit, never the commit
//!   (`run_to_end::within`): a 503 always means nothing changed.
//! - A request whose declared body has not fully arrived when the time is up is 408: the
//!   client stopped sending, not the server answering.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::Response;
use futures_util::StreamExt;

use super::error::ApiError;
use crate::config::Limits;
use crate::run_to_end;

/// Middleware: 413 at once for a body declared over `max_body_bytes`.
pub async fn refuse_oversized(
    State(limits): State<Limits>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    match declared_length(&request) {
        Some(length) if length > limits.max_body_bytes as u64 => {
            Err(ApiError::PayloadTooLarge(format!(
                "the body is declared as {length} bytes; the limit is {} bytes",
                limits.max_body_bytes
            )))
        }
        _ => Ok(next.run(request).await),
    }
}

/// Middleware: a response whose head is not ready within `timeout` becomes a 503, unless the
/// request began committing by then: a commit's result is the answer however long it takes,
/// so a 503 always means nothing changed. A request still waiting for its own body then is
/// 408. The body of a streaming response (the SSE feed) is not limited.
pub async fn answer_within(
    State(timeout): State<Duration>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let (request, body_arrived) = watch_body(request);
    let answer = run_to_end::within(timeout, next.run(request)).await;
    answer.ok_or_else(|| {
        if !body_arrived.load(Ordering::SeqCst) {
            tracing::info!(
                timeout_secs = timeout.as_secs_f64(),
                "request body timed out"
            );
            return ApiError::RequestTimeout(format!(
                "the request body did not arrive within {}s; nothing was changed",
                timeout.as_secs_f64()
            ));
        }
        tracing::warn!(timeout_secs = timeout.as_secs_f64(), "request timed out");
        ApiError::Unavailable(format!(
            "no answer within {}s; nothing was changed; retry later",
            timeout.as_secs_f64()
        ))
    })
}

/// The body's declared length; `None` when it is absent or unreadable.
fn declared_length(request: &Request) -> Option<u64> {
    request
        .headers()
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// Whether the request declares a body: a non-zero length, or chunks.
fn declares_body(request: &Request) -> bool {
    declared_length(request).is_some_and(|length| length > 0)
        || request.headers().contains_key(header::TRANSFER_ENCODING)
}

/// The request with a body that flags its own end, and the flag; a request that declares no
/// body is left as it is, its flag set from the start.
fn watch_body(request: Request) -> (Request, Arc<AtomicBool>) {
    if !declares_body(&request) {
        return (request, Arc::new(AtomicBool::new(true)));
    }
    let arrived = Arc::new(AtomicBool::new(false));
    let (parts, body) = request.into_parts();
    let flag = arrived.clone();
    let end = futures_util::stream::once(async move {
        flag.store(true, Ordering::SeqCst);
    })
    .filter_map(|()| async { None });
    let body = Body::from_stream(body.into_data_stream().chain(end));
    (Request::from_parts(parts, body), arrived)
}
