//! Bearer-token authentication (API.md 401): with a token configured, every request but the
//! health probes and the API description needs `Authorization: Bearer <token>`, or the same
//! token as an `access_token` query parameter (RFC 6750 §2.3) for browsers' `EventSource`,
//! which cannot set headers. The read-only token may only GET and HEAD (else 403). Each
//! request carries its [`Actor`] on to the handlers, which name it in the history of a
//! migration they change.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{FromRequestParts, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{Method, header};
use axum::middleware::Next;
use axum::response::Response;
use subtle::ConstantTimeEq;

use super::error::ApiError;
use crate::config::Tokens;
use crate::domain::Actor;

/// Paths that stay open whatever the tokens: probes for orchestrators, and the API's
/// description (it holds no data).
const OPEN_PATHS: [&str; 3] = ["/healthz", "/readyz", "/openapi.json"];

/// What a presented token allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    Write,
    Read,
}

/// Middleware: lets the request through if its token allows it.
pub async fn require_token(
    State(tokens): State<Option<Arc<Tokens>>>,
    mut request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let Some(tokens) = tokens else {
        request.extensions_mut().insert(Actor::Anonymous);
        return Ok(next.run(request).await);
    };
    let path = request.uri().path();
    if OPEN_PATHS.contains(&path) || path.starts_with("/docs") {
        return Ok(next.run(request).await);
    }
    let access = presented_token(&request).and_then(|token| access(&tokens, &token));
    match access {
        Some(Access::Write) => {
            request.extensions_mut().insert(Actor::WriteToken);
            Ok(next.run(request).await)
        }
        Some(Access::Read) if is_read(request.method()) => Ok(next.run(request).await),
        Some(Access::Read) => Err(ApiError::Forbidden(
            "the read-only token cannot change anything".to_owned(),
        )),
        None => Err(ApiError::Unauthorized(
            "a valid bearer token is required".to_owned(),
        )),
    }
}

/// On whose behalf a request changes something, for a handler to name in a migration's
/// history: what `require_token` found, and anonymous for a request it never saw.
#[derive(Debug, Clone, Copy)]
pub struct Requester(pub Actor);

impl<S: Send + Sync> FromRequestParts<S> for Requester {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let actor = parts.extensions.get::<Actor>().copied();
        Ok(Self(actor.unwrap_or(Actor::Anonymous)))
    }
}

fn is_read(method: &Method) -> bool {
    method == Method::GET || method == Method::HEAD
}

/// The bearer token of the `Authorization` header, else of the `access_token` parameter.
fn presented_token(request: &Request) -> Option<String> {
    let from_header = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(bearer_token)
        .map(str::to_owned);
    from_header.or_else(|| {
        let Query(params) = Query::<HashMap<String, String>>::try_from_uri(request.uri()).ok()?;
        params.get("access_token").cloned()
    })
}

/// The token of an `Authorization` value in the `Bearer` scheme, whose name is
/// case-insensitive (RFC 9110, 11.1) and separated from the token by one or more spaces.
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Compares in constant time, so response timing does not reveal how much of a guess matched.
fn access(tokens: &Tokens, presented: &str) -> Option<Access> {
    let matches = |expected: &str| bool::from(expected.as_bytes().ct_eq(presented.as_bytes()));
    if matches(&tokens.write) {
        Some(Access::Write)
    } else if tokens.read.as_deref().is_some_and(matches) {
        Some(Access::Read)
    } else {
        None
    }
}
