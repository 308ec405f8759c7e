//! The README walkthrough, request for request: one test takes the rollback branch, one the
//! finalize branch, and one checks that README.md shows exactly these requests, in order.

use std::collections::BTreeSet;

use reqwest::Method;
use serde_json::Value;

use crate::helpers::{PATIENCE, Reply, TestApp, eventually};
use crate::wire::{Migration, Models, Progress, QueryResult, Routing, Written};

/// One curl command of the README: method, path, and the JSON body if any.
#[derive(Debug, Clone, PartialEq)]
struct Call {
    method: &'static str,
    path: &'static str,
    body: Option<&'static str>,
}

const fn call(method: &'static str, path: &'static str, body: Option<&'static str>) -> Call {
    Call { method, path, body }
}

const LOAD: Call = call(
    "POST",
    "/v1/documents",
    Some(
        r#"{"documents": [
        {"id": "fox", "text": "the quick brown fox jumps over the lazy dog"},
        {"id": "tea", "text": "green tea is brewed with water just below boiling"},
        {"id": "rust", "text": "rust makes systems programming safe and fast"},
        {"id": "river", "text": "the river runs past the old mill toward the sea"}]}"#,
    ),
);
const MODELS: Call = call("GET", "/v1/models", None);
const PLAN: Call = call(
    "POST",
    "/v1/migrations",
    Some(
        r#"{"id": "to-v2", "target_model": "hash-v2", "config": {"batch_size": 2}, "start": false}"#,
    ),
);
const ROUTING: Call = call("GET", "/v1/routing", None);
const QUERY: Call = call(
    "POST",
    "/v1/query",
    Some(r#"{"text": "a quick brown fox", "top_k": 2}"#),
);
const START: Call = call("POST", "/v1/migrations/to-v2/start", None);
const PROGRESS: Call = call("GET", "/v1/migrations/to-v2/progress", None);
const ROLLBACK: Call = call("POST", "/v1/migrations/to-v2/rollback", None);
const WRITE: Call = call(
    "PUT",
    "/v1/documents/owl",
    Some(r#"{"text": "an owl hunts quietly at night"}"#),
);
const FINALIZE: Call = call("POST", "/v1/migrations/to-v2/finalize", None);

/// The README's walkthrough in its order: the common part, then each branch.
const COMMON: [Call; 9] = [
    LOAD, MODELS, PLAN, ROUTING, QUERY, START, PROGRESS, QUERY, ROUTING,
];
const ROLLBACK_BRANCH: [Call; 4] = [ROLLBACK, ROUTING, WRITE, QUERY];
const FINALIZE_BRANCH: [Call; 5] = [FINALIZE, MODELS, ROUTING, WRITE, QUERY];

impl TestApp {
    async fn call(&self, call: &Call) -> Reply {
        let body: Option<Value> = call.body.map(|b| serde_json::from_str(b).unwrap());
        self.send(call.method.parse().unwrap(), call.path, body.as_ref())
            .await
    }
}

fn pair<'a>(a: &'a str, b: &'a str) -> (&'a str, &'a str) {
    (a, b)
}

/// Everything up to the fork, with what the README tells the reader to look for.
async fn walk_the_common_part(app: &TestApp) {
    let loaded = app.call(&LOAD).await.json();
    assert_eq!(
        loaded["results"].as_array().map(Vec::len),
        Some(4),
        "{loaded}"
    );
    assert_eq!(loaded["results"][0]["write_route"], "legacy");
    assert_eq!(
        app.call(&MODELS).await.ok::<Models>().active_model,
        "hash-v1"
    );
    let planned: Migration = app.call(&PLAN).await.expect(201);
    assert_eq!(planned.state, "planned");
    let routing: Routing = app.call(&ROUTING).await.ok();
    assert_eq!(
        pair(&routing.query_route, &routing.query_model),
        ("legacy", "hash-v1")
    );
    let before: QueryResult = app.call(&QUERY).await.ok();
    assert_eq!(pair(&before.route, &before.model), ("legacy", "hash-v1"));
    assert_eq!(before.hits[0].id, "fox");

    assert_eq!(app.call(&START).await.ok::<Migration>().id, "to-v2");
    let done = eventually(PATIENCE, "the README migration to complete", || async {
        let progress: Progress = app.call(&PROGRESS).await.ok();
        (progress.state == "completed")
            .then_some(progress.clone())
            .ok_or(format!("{progress:?}"))
    })
    .await;
    assert_eq!((done.processed + done.skipped, done.total), (4, 4));

    let after: QueryResult = app.call(&QUERY).await.ok();
    assert_eq!(pair(&after.route, &after.model), ("target", "hash-v2"));
    assert_eq!(after.hits[0].id, "fox");
    let routing: Routing = app.call(&ROUTING).await.ok();
    assert_eq!(
        pair(&routing.phase, &routing.query_model),
        ("rollback_window", "hash-v2")
    );
    assert_eq!(routing.write_models.len(), 2, "{routing:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readme_walkthrough_then_rollback() {
    let app = TestApp::spawn().await;
    walk_the_common_part(&app).await;
    assert_eq!(
        app.call(&ROLLBACK).await.ok::<Migration>().state,
        "rolled_back"
    );
    let routing: Routing = app.call(&ROUTING).await.ok();
    assert_eq!(
        pair(&routing.phase, &routing.query_model),
        ("stable", "hash-v1")
    );
    assert_eq!(
        pair(&routing.query_route, &routing.write_route),
        ("legacy", "legacy")
    );
    assert_eq!(routing.write_models, ["hash-v1"]);
    let written: Written = app.call(&WRITE).await.ok();
    assert_eq!(
        (written.embedded_with, written.write_route.as_str()),
        (vec!["hash-v1".to_owned()], "legacy")
    );
    let query: QueryResult = app.call(&QUERY).await.ok();
    assert_eq!(pair(&query.route, &query.model), ("legacy", "hash-v1"));
    assert_eq!(query.hits[0].id, "fox");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readme_walkthrough_then_finalize() {
    let app = TestApp::spawn().await;
    walk_the_common_part(&app).await;
    app.call(&FINALIZE).await.ok::<Migration>();
    assert_eq!(
        app.call(&MODELS).await.ok::<Models>().active_model,
        "hash-v2"
    );
    let routing: Routing = app.call(&ROUTING).await.ok();
    assert_eq!(
        pair(&routing.phase, &routing.query_model),
        ("stable", "hash-v2")
    );
    assert_eq!(
        pair(&routing.query_route, &routing.write_route),
        ("target", "target")
    );
    assert_eq!(routing.write_models, ["hash-v2"]);
    let written: Written = app.call(&WRITE).await.ok();
    assert_eq!(
        (written.embedded_with, written.write_route.as_str()),
        (vec!["hash-v2".to_owned()], "target")
    );
    let query: QueryResult = app.call(&QUERY).await.ok();
    assert_eq!(pair(&query.route, &query.model), ("target", "hash-v2"));
    assert_eq!(query.hits[0].id, "fox");
}

#[test]
fn readme_shows_exactly_the_walkthrough_the_tests_run() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let start = readme
        .find("\n## Walkthrough")
        .expect("a Walkthrough section in README.md");
    let section = &readme[start + 1..];
    let section = &section[..section[3..]
        .find("\n## ")
        .map_or(section.len(), |end| end + 3)];
    let shown: Vec<Shown> = shell_words(section)
        .iter()
        .map(|words| parse_curl(words))
        .collect();
    let tested: Vec<Shown> = COMMON
        .iter()
        .chain(&ROLLBACK_BRANCH)
        .chain(&FINALIZE_BRANCH)
        .map(Shown::from)
        .collect();
    assert_eq!(
        shown, tested,
        "README.md's walkthrough and tests/api/walkthrough.rs differ"
    );
}

/// A request as the README shows it: bodies compared as JSON, not as text.
#[derive(Debug, PartialEq)]
struct Shown {
    method: Method,
    path: String,
    body: Option<Value>,
}

impl From<&Call> for Shown {
    fn from(call: &Call) -> Self {
        Shown {
            method: call.method.parse().unwrap(),
            path: call.path.to_owned(),
            body: call.body.map(|b| serde_json::from_str(b).unwrap()),
        }
    }
}

fn parse_curl(words: &[String]) -> Shown {
    assert_eq!(
        words[0], "curl",
        "only curl commands in the walkthrough: {words:?}"
    );
    let after = |flag: &str| {
        words
            .iter()
            .position(|w| w == flag)
            .map(|i| words[i + 1].clone())
    };
    let url = words.iter().find(|w| w.starts_with("http")).expect("a URL");
    let path = url
        .strip_prefix("http://127.0.0.1:8080")
        .expect("against http://127.0.0.1:8080");
    let body = after("-d").map(|b| serde_json::from_str(&b).unwrap_or_else(|e| panic!("{b}: {e}")));
    let headers: BTreeSet<String> = words
        .windows(2)
        .filter(|w| w[0] == "-H")
        .map(|w| w[1].to_lowercase())
        .collect();
    if body.is_some() {
        assert!(
            headers.contains("content-type: application/json"),
            "a JSON body needs its content type: {words:?}"
        );
    }
    let method = after("-X").unwrap_or_else(|| "GET".to_owned());
    Shown {
        method: method.parse().unwrap(),
        path: path.to_owned(),
        body,
    }
}

/// The commands of the ```sh blocks in `markdown`, split into words as a POSIX shell would
/// for the subset the README uses: single quotes, backslash-newline, comments.
fn shell_words(markdown: &str) -> Vec<Vec<String>> {
    let mut commands = Vec::new();
    for block in markdown.split("```sh\n").skip(1) {
        let script = block.split("```").next().unwrap();
        let (mut words, mut word, mut chars) =
            (Vec::new(), None::<String>, script.chars().peekable());
        while let Some(c) = chars.next() {
            match c {
                '\'' => {
                    let quoted: String = chars.by_ref().take_while(|&q| q != '\'').collect();
                    word.get_or_insert_with(String::new).push_str(&quoted);
                }
                '\\' if chars.peek() == Some(&'\n') => {
                    chars.next();
                }
                '#' if word.is_none() => while chars.next_if(|&n| n != '\n').is_some() {},
                ' ' | '\t' | '\n' => {
                    words.extend(word.take());
                    if c == '\n' && !words.is_empty() {
                        commands.push(std::mem::take(&mut words));
                    }
                }
                _ => word.get_or_insert_with(String::new).push(c),
            }
        }
        words.extend(word.take());
        if !words.is_empty() {
            commands.push(words);
        }
    }
    commands
}
