//! `Api`: one typed method per endpoint of API.md, against any running server (in-process or
//! a child process). Typed methods assert the success status and decode the body; `*_reply`
//! variants and `send` return the raw `Reply` for error cases, with `Reply::problem` to assert
//! an RFC 9457 problem document.

use std::time::Duration;

use reqwest::Method;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::helpers::eventually;
use crate::wire::*;

/// A client bound to one running server.
#[derive(Clone)]
pub struct Api {
    pub base: String,
    http: reqwest::Client,
}

/// What the server answered, kept whole so a failed assertion can show it.
#[derive(Debug)]
pub struct Reply {
    pub request: String,
    pub status: u16,
    pub content_type: String,
    pub location: Option<String>,
    pub body: String,
}

impl std::fmt::Display for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (status, ct, body) = (self.status, &self.content_type, &self.body);
        write!(f, "{} answered {status} ({ct}): {body}", self.request)
    }
}

impl Reply {
    /// The body as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {self}"))
    }

    /// Asserts `status` and decodes the body as `T`.
    pub fn expect<T: DeserializeOwned>(&self, status: u16) -> T {
        assert_eq!(self.status, status, "unexpected status: {self}");
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body does not match the contract ({e}): {self}"))
    }

    /// Asserts 200 and decodes the body as `T`.
    pub fn ok<T: DeserializeOwned>(&self) -> T {
        self.expect(200)
    }

    /// Asserts an RFC 9457 problem: the status, `application/problem+json`, and
    /// `type` = `urn:reembed:problem:<slug>`.
    pub fn problem(&self, status: u16, slug: &str) -> Problem {
        let problem = self.any_problem();
        assert_eq!(self.status, status, "unexpected status: {self}");
        assert_eq!(
            problem.kind,
            format!("urn:reembed:problem:{slug}"),
            "{self}"
        );
        problem
    }

    /// Asserts some problem document, whatever its status and slug.
    pub fn any_problem(&self) -> Problem {
        assert!(
            self.content_type.starts_with("application/problem+json"),
            "not a problem document: {self}"
        );
        let problem: Problem = serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("problem document without type/title/status ({e}): {self}"));
        assert!(problem.kind.starts_with("urn:reembed:problem:"), "{self}");
        assert_eq!(
            problem.status, self.status,
            "status in body differs: {self}"
        );
        assert!(!problem.title.is_empty(), "problem without a title: {self}");
        problem
    }
}

impl Api {
    pub fn new(base: String) -> Self {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(120))
            .build()
            .expect("an HTTP client");
        Self { base, http }
    }

    /// Sends `body` as `application/json`.
    pub async fn send(&self, method: Method, path: &str, body: Option<&Value>) -> Reply {
        let body = body.map(|b| ("application/json", b.to_string()));
        self.send_raw(method, path, body).await
    }

    /// Sends an arbitrary body with an arbitrary content type.
    pub async fn send_raw(
        &self,
        method: Method,
        path: &str,
        body: Option<(&str, String)>,
    ) -> Reply {
        let shown = body
            .as_ref()
            .map(|(_, b)| b.chars().take(200).collect::<String>());
        let request = match shown {
            Some(body) => format!("{method} {path} {body}"),
            None => format!("{method} {path}"),
        };
        let mut builder = self.http.request(method, format!("{}{path}", self.base));
        if let Some((content_type, body)) = body {
            builder = builder.header("content-type", content_type).body(body);
        }
        let response = builder
            .send()
            .await
            .unwrap_or_else(|e| panic!("{request}: no answer: {e}"));
        let header = |name| {
            response
                .headers()
                .get(name)
                .map(|v| v.to_str().unwrap_or_default().to_owned())
        };
        let (content_type, location) = (header("content-type"), header("location"));
        Reply {
            status: response.status().as_u16(),
            content_type: content_type.unwrap_or_default(),
            location,
            body: response.text().await.unwrap_or_default(),
            request,
        }
    }

    /// Whether `/healthz` answers 200; never panics, for polling a server that is starting.
    pub async fn is_healthy(&self) -> bool {
        let answer = self.http.get(format!("{}/healthz", self.base)).send().await;
        answer.is_ok_and(|r| r.status() == 200)
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.send(Method::GET, path, None).await
    }

    // Documents

    pub async fn put_document(&self, id: &str, text: &str) -> Written {
        self.put_document_reply(id, &json!({ "text": text }))
            .await
            .ok()
    }

    pub async fn put_document_reply(&self, id: &str, body: &Value) -> Reply {
        let path = format!("/v1/documents/{id}");
        self.send(Method::PUT, &path, Some(body)).await
    }

    /// Bulk-upserts `(id, text)` pairs in one request.
    pub async fn bulk<S: AsRef<str>>(&self, docs: &[(S, S)]) -> Vec<Written> {
        let documents: Vec<Value> = docs
            .iter()
            .map(|(id, text)| json!({ "id": id.as_ref(), "text": text.as_ref() }))
            .collect();
        let reply = self.bulk_reply(&json!({ "documents": documents })).await;
        reply.ok::<BulkResults>().results
    }

    pub async fn bulk_reply(&self, body: &Value) -> Reply {
        self.send(Method::POST, "/v1/documents", Some(body)).await
    }

    /// Bulk-loads a corpus in requests of `chunk` documents.
    pub async fn load(&self, corpus: &[(String, String)], chunk: usize) {
        for part in corpus.chunks(chunk) {
            assert_eq!(self.bulk(part).await.len(), part.len());
        }
    }

    pub async fn get_document(&self, id: &str) -> Document {
        self.document_reply(id).await.ok()
    }

    pub async fn document_reply(&self, id: &str) -> Reply {
        self.get(&format!("/v1/documents/{id}")).await
    }

    pub async fn delete(&self, id: &str) -> Reply {
        let path = format!("/v1/documents/{id}");
        self.send(Method::DELETE, &path, None).await
    }

    pub async fn list_documents(&self, limit: usize, after: Option<&str>) -> DocumentPage {
        let after = after.map(|a| format!("&after={a}")).unwrap_or_default();
        self.get(&format!("/v1/documents?limit={limit}{after}"))
            .await
            .ok()
    }

    /// Every document, following `next_after` page by page.
    pub async fn all_documents(&self, page_size: usize) -> Vec<Document> {
        let mut all: Vec<Document> = Vec::new();
        let mut after = None;
        loop {
            let page = self.list_documents(page_size, after.as_deref()).await;
            assert!(page.documents.len() <= page_size, "page over its limit");
            all.extend(page.documents);
            match page.next_after {
                Some(next) => after = Some(next),
                None => return all,
            }
        }
    }

    // Query, routing, models

    pub async fn query(&self, text: &str, top_k: usize) -> QueryResult {
        let body = json!({ "text": text, "top_k": top_k });
        self.query_reply(&body).await.ok()
    }

    pub async fn query_reply(&self, body: &Value) -> Reply {
        self.send(Method::POST, "/v1/query", Some(body)).await
    }

    pub async fn routing(&self) -> Routing {
        self.get("/v1/routing").await.ok()
    }

    pub async fn models(&self) -> Models {
        self.get("/v1/models").await.ok()
    }

    // Migrations

    pub async fn create_migration(&self, body: &Value) -> Reply {
        self.send(Method::POST, "/v1/migrations", Some(body)).await
    }

    /// Creates a migration and asserts 201 with its `Location`.
    pub async fn start_migration(&self, body: &Value) -> Migration {
        let reply = self.create_migration(body).await;
        let migration: Migration = reply.expect(201);
        let location = format!("/v1/migrations/{}", migration.id);
        assert_eq!(
            reply.location.as_deref(),
            Some(location.as_str()),
            "{reply}"
        );
        migration
    }

    pub async fn migration(&self, id: &str) -> Migration {
        self.get(&format!("/v1/migrations/{id}")).await.ok()
    }

    pub async fn migrations(&self) -> Vec<Migration> {
        let list: MigrationList = self.get("/v1/migrations").await.ok();
        list.migrations
    }

    pub async fn progress(&self, id: &str) -> Progress {
        self.get(&format!("/v1/migrations/{id}/progress"))
            .await
            .ok()
    }

    /// `POST /v1/migrations/{id}/{action}` without a body, as `curl -X POST` sends it.
    pub async fn action(&self, id: &str, action: &str) -> Reply {
        let path = format!("/v1/migrations/{id}/{action}");
        self.send(Method::POST, &path, None).await
    }

    pub async fn patch_config(&self, id: &str, body: &Value) -> Reply {
        let path = format!("/v1/migrations/{id}/config");
        self.send(Method::PATCH, &path, Some(body)).await
    }

    pub async fn history(&self, id: &str) -> History {
        self.get(&format!("/v1/migrations/{id}/history")).await.ok()
    }

    pub async fn comparison(&self, id: &str) -> Comparison {
        self.get(&format!("/v1/migrations/{id}/comparison"))
            .await
            .ok()
    }

    pub async fn skips(&self, id: &str) -> Vec<Skip> {
        let skips: Skips = self.get(&format!("/v1/migrations/{id}/skips")).await.ok();
        skips.skips
    }

    /// Polls progress until the migration is in `state`. Fails at once if it settles in
    /// another final state, and after `timeout` with the last progress seen.
    pub async fn wait_for_state(&self, id: &str, state: &str, timeout: Duration) -> Progress {
        let settled = ["completed", "failed", "cancelled", "rolled_back"];
        eventually(timeout, &format!("migration {id} to reach {state}"), || async {
            let progress = self.progress(id).await;
            if progress.state == state {
                return Ok(progress);
            }
            if settled.contains(&progress.state.as_str()) {
                let migration = self.migration(id).await;
                panic!("migration {id} settled in {} instead of {state}: {progress:?} {migration:?}", progress.state);
            }
            Err(format!("{progress:?}"))
        })
        .await
    }
}
