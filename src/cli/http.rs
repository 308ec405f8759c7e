//! The client's transport: one `Server` bound to `--url` and `--api-token`, and `CliError`,
//! which tells apart a server that refused (its problem document) from one that could not be
//! reached, because the two call for different exit codes and different fixes.

use std::time::Duration;

use reqwest::{Method, StatusCode, Url};
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::Exit;

/// How long to wait for a TCP connection: a server that is up answers at once.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one request may take: a bulk upsert embeds its documents before answering, which
/// with a remote, rate-limited provider can take minutes.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(300);
/// Longest stretch of a non-JSON error body repeated in a message.
const MAX_SHOWN_BODY: usize = 300;

/// Why a client command could not do what it was asked.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// No connection could be made: the server is down or the URL is wrong.
    #[error("cannot reach the reembed service at {}: {cause}", url.as_str().trim_end_matches('/'))]
    Unreachable { url: Url, cause: String },
    /// A connection was made but no usable answer came back (timeout, dropped connection, or
    /// a body that is not the JSON the contract promises).
    #[error("no usable answer from {url}: {cause}")]
    NoAnswer { url: Url, cause: String },
    /// The server answered with an error status; `detail` is its problem document's.
    #[error("the server refused: {status}{}: {detail}", slug.as_deref().map(|s| format!(" ({s})")).unwrap_or_default())]
    Refused {
        status: StatusCode,
        slug: Option<String>,
        detail: String,
    },
    /// The input file could not be opened or read.
    #[error("cannot read {path}: {source}")]
    Input {
        path: String,
        source: std::io::Error,
    },
    /// A command needing a migration found none on the server.
    #[error("the server has no migration yet; create one with `reembed migrate --to MODEL`")]
    NoMigration,
}

impl CliError {
    /// The exit code this error ends the command with (see `cli`'s module doc).
    pub fn exit(&self) -> Exit {
        match self {
            Self::Refused { .. } | Self::NoMigration => Exit::Incomplete,
            Self::Unreachable { .. } | Self::NoAnswer { .. } | Self::Input { .. } => Exit::Trouble,
        }
    }
}

/// Parses `--url`: an absolute http(s) URL, the service's base (a path prefix is kept).
pub fn parse_base_url(text: &str) -> Result<Url, String> {
    let url = Url::parse(text).map_err(|e| format!("not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") || url.cannot_be_a_base() {
        return Err(format!("expected an http:// or https:// URL, got {text}"));
    }
    Ok(url)
}

/// A running reembed service, as seen from the client.
pub struct Server {
    base: Url,
    token: Option<String>,
    http: reqwest::Client,
}

impl Server {
    /// A client for the service `remote` names.
    pub fn new(remote: &super::Remote) -> Result<Self, CliError> {
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .user_agent(concat!("reembed-cli/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| CliError::NoAnswer {
                url: remote.url.clone(),
                cause: root_cause(&e),
            })?;
        Ok(Self {
            base: remote.url.clone(),
            token: remote.api_token.clone(),
            http,
        })
    }

    /// `GET` the resource at `segments` (each percent-encoded) and decode its JSON as `T`.
    pub async fn get<T: DeserializeOwned>(&self, segments: &[&str]) -> Result<T, CliError> {
        self.call(Method::GET, segments, None).await
    }

    /// `POST` `body` (or nothing) to `segments` and decode the answer as `T`.
    pub async fn post<T: DeserializeOwned>(
        &self,
        segments: &[&str],
        body: Option<&Value>,
    ) -> Result<T, CliError> {
        self.call(Method::POST, segments, body).await
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        segments: &[&str],
        body: Option<&Value>,
    ) -> Result<T, CliError> {
        let url = self.url(segments);
        let mut request = self.http.request(method, url.clone());
        if let Some(body) = body {
            request = request.json(body);
        }
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.map_err(|e| self.transport(e, &url))?;
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .map_err(|e| self.transport(e, &url))?;
        if !status.is_success() {
            return Err(refusal(status, &bytes));
        }
        serde_json::from_slice(&bytes).map_err(|e| garbled(url, &e))
    }

    /// The error for an answer, already fetched, that does not have the expected shape.
    pub fn garbled(&self, error: &serde_json::Error) -> CliError {
        garbled(self.base.clone(), error)
    }

    /// The base URL with `segments` appended, each percent-encoded, so an id cannot escape
    /// its path segment.
    fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        url
    }

    fn transport(&self, error: reqwest::Error, url: &Url) -> CliError {
        let cause = root_cause(&error);
        if error.is_connect() {
            CliError::Unreachable {
                url: self.base.clone(),
                cause,
            }
        } else {
            CliError::NoAnswer {
                url: url.clone(),
                cause,
            }
        }
    }
}

fn garbled(url: Url, error: &serde_json::Error) -> CliError {
    CliError::NoAnswer {
        url,
        cause: format!("the answer is not the JSON the API promises: {error}"),
    }
}

/// The refusal an error answer stands for: its problem document's `detail` and slug, or the
/// start of the body when it is not a problem document (a proxy's error page, say).
fn refusal(status: StatusCode, body: &[u8]) -> CliError {
    let problem: Option<Value> = serde_json::from_slice(body).ok();
    let field = |name: &str| {
        let value = problem.as_ref()?.get(name)?.as_str()?;
        Some(value.to_owned())
    };
    let slug = field("type").map(|t| t.trim_start_matches("urn:reembed:problem:").to_owned());
    let detail = field("detail").unwrap_or_else(|| shown_body(body));
    CliError::Refused {
        status,
        slug,
        detail,
    }
}

fn shown_body(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        return "(no detail given)".to_owned();
    }
    text.chars().take(MAX_SHOWN_BODY).collect()
}

/// The innermost cause of `error` ("Connection refused (os error 111)"), which says more than
/// reqwest's own "error sending request".
fn root_cause(error: &reqwest::Error) -> String {
    let mut cause: &dyn std::error::Error = error;
    while let Some(source) = cause.source() {
        cause = source;
    }
    cause.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_problem_document_gives_its_detail_and_slug() {
        let body = br#"{"type":"urn:reembed:problem:invalid-transition","title":"Invalid transition","status":409,"detail":"cannot pause a migration in state planned"}"#;
        let error = refusal(StatusCode::CONFLICT, body);
        assert_eq!(
            error.to_string(),
            "the server refused: 409 Conflict (invalid-transition): cannot pause a migration in state planned"
        );
        assert_eq!(error.exit(), Exit::Incomplete);
    }

    #[test]
    fn another_body_is_shown_trimmed() {
        let error = refusal(StatusCode::BAD_GATEWAY, b"  upstream down\n");
        assert_eq!(
            error.to_string(),
            "the server refused: 502 Bad Gateway: upstream down"
        );
        let empty = refusal(StatusCode::UNAUTHORIZED, b"");
        assert!(empty.to_string().ends_with("(no detail given)"));
    }

    #[test]
    fn base_urls_must_be_http() {
        assert!(parse_base_url("http://127.0.0.1:8080").is_ok());
        assert!(parse_base_url("https://example.com/reembed/").is_ok());
        assert!(parse_base_url("ftp://example.com").is_err());
        assert!(parse_base_url("127.0.0.1:8080").is_err());
    }

    #[test]
    fn segments_are_appended_and_encoded() {
        let remote = super::super::Remote {
            url: parse_base_url("http://h:1/prefix/").unwrap(),
            api_token: None,
        };
        let server = Server::new(&remote).unwrap();
        let url = server.url(&["v1", "migrations", "a/b?c", "progress"]);
        assert_eq!(
            url.as_str(),
            "http://h:1/prefix/v1/migrations/a%2Fb%3Fc/progress"
        );
    }
}
