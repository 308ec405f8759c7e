//! Running reembed in production: bearer tokens, the refusal to listen publicly without one,
//! request limits, `GET /metrics` and the SSE progress feed.

use std::time::{Duration, Instant};

use reembed::config::{Limits, Tokens};
use reembed::embed::ModelRegistry;
use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{TestApp, corpus, eventually};
use crate::probe::{HELD, Probe};

const WRITE_TOKEN: &str = "write-secret";
const READ_TOKEN: &str = "read-secret";

/// One row of the auth table: request, token, then the expected status and problem slug.
type AuthCase = (
    Method,
    &'static str,
    Option<&'static str>,
    Option<Value>,
    u16,
    &'static str,
);

async fn with_tokens() -> TestApp {
    TestApp::with_config(ModelRegistry::builtin(), |config| {
        config.tokens = Some(Tokens {
            write: WRITE_TOKEN.into(),
            read: Some(READ_TOKEN.into()),
        });
    })
    .await
}

/// Sends a request with an optional bearer token; returns status, headers and body.
async fn call(
    app: &TestApp,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, reqwest::header::HeaderMap, String) {
    let mut request = reqwest::Client::new().request(method, format!("{}{path}", app.base));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.expect("an answer");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    (status, headers, response.text().await.unwrap_or_default())
}

fn problem_type(body: &str) -> String {
    let problem: Value = serde_json::from_str(body).expect("a problem document");
    problem["type"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test]
async fn every_auth_rule() {
    let app = with_tokens().await;
    let doc = json!({"text": "a guarded document"});
    let cases: [AuthCase; 10] = [
        (Method::GET, "/v1/routing", None, None, 401, "unauthorized"),
        (
            Method::GET,
            "/v1/routing",
            Some("wrong"),
            None,
            401,
            "unauthorized",
        ),
        (Method::GET, "/v1/routing", Some(READ_TOKEN), None, 200, ""),
        (
            Method::PUT,
            "/v1/documents/guarded",
            Some(READ_TOKEN),
            Some(doc.clone()),
            403,
            "forbidden",
        ),
        (
            Method::PUT,
            "/v1/documents/guarded",
            None,
            Some(doc.clone()),
            401,
            "unauthorized",
        ),
        (Method::GET, "/metrics", None, None, 401, "unauthorized"),
        (Method::GET, "/metrics", Some(READ_TOKEN), None, 200, ""),
        (Method::GET, "/healthz", None, None, 200, ""),
        (Method::GET, "/readyz", None, None, 200, ""),
        (
            Method::GET,
            "/v1/documents/guarded",
            Some(WRITE_TOKEN),
            None,
            404,
            "not-found",
        ),
    ];
    for (method, path, token, body, status, slug) in cases {
        let (got, headers, text) = call(&app, method.clone(), path, token, body).await;
        assert_eq!(got, status, "{method} {path} with {token:?}: {text}");
        if !slug.is_empty() {
            assert_eq!(problem_type(&text), format!("urn:reembed:problem:{slug}"));
        }
        if status == 401 {
            assert!(
                headers.contains_key("www-authenticate"),
                "401 names the scheme"
            );
        }
    }
    let (status, _, _) = call(
        &app,
        Method::PUT,
        "/v1/documents/guarded",
        Some(WRITE_TOKEN),
        Some(doc),
    )
    .await;
    assert_eq!(status, 200, "the write token may write");
    let (status, _, _) = call(
        &app,
        Method::GET,
        "/v1/routing?access_token=read-secret",
        None,
        None,
    )
    .await;
    assert_eq!(
        status, 200,
        "a browser's EventSource passes the token as access_token"
    );
    app.stop().await;
}

/// RFC 9110 makes the scheme name case-insensitive; the token itself is compared exactly.
#[tokio::test]
async fn the_bearer_scheme_is_case_insensitive() {
    let app = with_tokens().await;
    let routing = format!("{}/v1/routing", app.base);
    let client = reqwest::Client::new();
    for (authorization, status) in [
        (format!("bearer {READ_TOKEN}"), 200),
        (format!("BEARER {READ_TOKEN}"), 200),
        (format!("Bearer   {READ_TOKEN}"), 200),
        (format!("Bearer {}", READ_TOKEN.to_uppercase()), 401),
        (format!("Basic {READ_TOKEN}"), 401),
        ("Bearer".to_owned(), 401),
    ] {
        let reply = client
            .get(&routing)
            .header("authorization", &authorization)
            .send()
            .await
            .expect("an answer");
        assert_eq!(reply.status().as_u16(), status, "{authorization:?}");
    }
    app.stop().await;
}

/// Runs the binary with `args` (and `token` as the only token) for at most `patience`; returns
/// its exit code and stderr, or `None` and its stdout when it was still running.
fn run_binary(args: &[&str], token: Option<&str>, patience: Duration) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().expect("a data directory");
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_reembed"));
    command
        .args(args)
        .arg("--data-dir")
        .arg(dir.path())
        .env_remove("REEMBED_API_TOKEN")
        .env_remove("REEMBED_READ_TOKEN")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    if let Some(token) = token {
        command.env("REEMBED_API_TOKEN", token);
    }
    let mut child = command.spawn().expect("the binary starts");
    let deadline = Instant::now() + patience;
    loop {
        if let Some(status) = child.try_wait().expect("a status") {
            let output = child.wait_with_output().expect("its output");
            return (
                status.code(),
                String::from_utf8_lossy(&output.stderr).into_owned(),
            );
        }
        if Instant::now() > deadline {
            child.kill().expect("stopped");
            let output = child.wait_with_output().expect("its output");
            return (None, String::from_utf8_lossy(&output.stdout).into_owned());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test]
async fn listening_publicly_needs_a_token_or_insecure() {
    let (code, stderr) = run_binary(
        &["serve", "--listen", "0.0.0.0:0"],
        None,
        Duration::from_secs(30),
    );
    assert_ne!(code, Some(0), "refused: {stderr}");
    assert!(code.is_some(), "it exits rather than serving");
    assert!(
        stderr.contains("without an API token"),
        "says why: {stderr}"
    );
    assert!(
        stderr.contains("--insecure"),
        "says how to override: {stderr}"
    );

    let (code, stdout) = run_binary(
        &["serve", "--listen", "0.0.0.0:0"],
        Some("a-token"),
        Duration::from_secs(4),
    );
    assert_eq!(code, None, "with a token it serves until stopped");
    assert!(stdout.contains("reembed listening on"), "{stdout}");
}

/// A server that cannot start says why in one line naming what to fix, with no backtrace,
/// and exits non-zero.
#[tokio::test]
async fn a_start_up_error_is_one_clear_line_and_a_non_zero_exit() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("a port");
    let taken = taken.local_addr().unwrap().to_string();
    let files = tempfile::tempdir().expect("a directory");
    let write = |name: &str, text: &str| {
        let path = files.path().join(name);
        std::fs::write(&path, text).expect("written");
        path.to_string_lossy().into_owned()
    };
    let not_toml = write("not.toml", "this is = = not toml");
    let unknown = write(
        "unknown.toml",
        "active_model = \"hash-v9\"\n[[models]]\nid = \"hash-v1\"\nprovider = \"builtin\"\ndimensions = 256\n",
    );
    let cases = [
        (vec!["--listen", taken.as_str()], taken.clone()),
        (
            vec!["--config", "/nonexistent/reembed.toml"],
            "/nonexistent/reembed.toml".to_owned(),
        ),
        (vec!["--config", not_toml.as_str()], "line 1".to_owned()),
        (vec!["--config", unknown.as_str()], "hash-v9".to_owned()),
    ];
    for (args, named) in cases {
        let (code, stderr) = run_binary(&args, None, Duration::from_secs(20));
        assert!(
            code.is_some_and(|code| code != 0),
            "{args:?} exited with {code:?}"
        );
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{args:?}: one line, got {stderr}");
        assert!(lines[0].starts_with("reembed: "), "{args:?}: {stderr}");
        assert!(
            lines[0].contains(&named),
            "{args:?} names {named}: {stderr}"
        );
        for noise in ["panicked", "backtrace", "Caused by"] {
            assert!(!stderr.contains(noise), "{args:?}: {stderr}");
        }
    }
}

#[tokio::test]
async fn limits_answer_413_and_422_and_change_nothing() {
    let limits = Limits {
        max_body_bytes: 4096,
        max_bulk_documents: 3,
        max_text_bytes: 100,
        ..Limits::default()
    };
    let app = TestApp::with_config(ModelRegistry::builtin(), |c| c.limits = limits).await;

    let huge = json!({"text": "x".repeat(5000)});
    app.put_document_reply("big", &huge)
        .await
        .problem(413, "payload-too-large");

    let long = json!({"text": "y".repeat(101)});
    let problem = app
        .put_document_reply("long", &long)
        .await
        .problem(422, "invalid-value");
    assert!(
        problem
            .detail
            .as_deref()
            .unwrap_or_default()
            .contains("100"),
        "names the cap: {:?}",
        problem.detail
    );

    let four: Vec<Value> = (0..4)
        .map(|i| json!({"id": format!("d{i}"), "text": "short"}))
        .collect();
    let problem = app
        .bulk_reply(&json!({"documents": four}))
        .await
        .problem(422, "invalid-value");
    assert!(
        problem.detail.as_deref().unwrap_or_default().contains('3'),
        "names the cap: {:?}",
        problem.detail
    );

    for id in ["big", "long", "d0", "d3"] {
        app.document_reply(id).await.problem(404, "not-found");
    }
    app.stop().await;
}

#[tokio::test]
async fn a_request_that_cannot_answer_in_time_is_503_and_writes_nothing() {
    let probe = Probe::new();
    let app = TestApp::with_config(probe.registry(), |c| {
        c.limits.request_timeout = Duration::from_millis(500);
    })
    .await;
    app.bulk(&[("seed", "a seed document")]).await;
    app.start_migration(&json!({"id": "slow", "target_model": "hash-v2"}))
        .await;
    app.wait_for_state("slow", "completed", Duration::from_secs(30))
        .await;

    probe.hold();
    let stuck = json!({"text": format!("a {HELD} write")});
    app.put_document_reply("stuck", &stuck)
        .await
        .problem(503, "unavailable");
    probe.release();
    app.document_reply("stuck").await.problem(404, "not-found");
    app.stop().await;
}

/// Sends `head` (and `body`) on a raw connection that stays open; returns the status line
/// and the rest of the answer, or `None` when none came within `patience`.
async fn raw_exchange(
    app: &TestApp,
    head: &str,
    body: &[u8],
    patience: Duration,
) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let address = app.base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(address)
        .await
        .expect("connected");
    stream.write_all(head.as_bytes()).await.expect("head sent");
    stream.write_all(body).await.expect("body sent");
    let mut answer = vec![0u8; 4096];
    let read = tokio::time::timeout(patience, stream.read(&mut answer))
        .await
        .ok()?;
    let read = read.expect("an answer");
    Some(String::from_utf8_lossy(&answer[..read]).into_owned())
}

#[tokio::test]
async fn a_body_declared_over_the_limit_is_413_at_once() {
    let app = TestApp::spawn().await;
    let head = "PUT /v1/documents/huge HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
                content-length: 1000000000000\r\n\r\n";
    let started = Instant::now();
    let answer = raw_exchange(&app, head, b"", Duration::from_secs(5))
        .await
        .expect("an answer before any of the body");
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("application/problem+json"), "{answer}");
    assert!(started.elapsed() < Duration::from_secs(5));
    app.document_reply("huge").await.problem(404, "not-found");
    app.stop().await;
}

#[tokio::test]
async fn a_body_that_stops_short_is_408_and_writes_nothing() {
    let app = TestApp::with_config(ModelRegistry::builtin(), |c| {
        c.limits.request_timeout = Duration::from_millis(500);
    })
    .await;
    let head = "PUT /v1/documents/short HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
                content-length: 100\r\n\r\n";
    let answer = raw_exchange(&app, head, br#"{"text": "#, Duration::from_secs(10))
        .await
        .expect("an answer once the time is up");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(
        answer.contains("urn:reembed:problem:request-timeout"),
        "{answer}"
    );
    app.document_reply("short").await.problem(404, "not-found");
    app.stop().await;
}

/// The value of the first sample of `name` whose labels contain every `label`.
pub fn sample(metrics: &str, name: &str, labels: &[&str]) -> Option<f64> {
    metrics
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter(|line| {
            line.starts_with(&format!("{name}{{")) || line.starts_with(&format!("{name} "))
        })
        .find(|line| labels.iter().all(|label| line.contains(label)))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
}

#[tokio::test]
async fn metrics_cover_requests_migrations_embedders_and_routing() {
    let app = TestApp::spawn().await;
    app.load(&corpus("m", 300), 100).await;
    app.start_migration(&json!({"id": "metrics-run", "target_model": "hash-v2",
                                "config": {"batch_size": 20}}))
        .await;
    app.wait_for_state("metrics-run", "completed", Duration::from_secs(60))
        .await;
    app.query("document", 5).await;

    let metrics = app.get("/metrics").await;
    assert_eq!(metrics.status, 200);
    assert!(
        metrics.content_type.starts_with("text/plain"),
        "{}",
        metrics.content_type
    );
    let text = metrics.body;
    let mig = "migration=\"metrics-run\"";
    let expect = |name: &str, labels: &[&str]| {
        sample(&text, name, labels).unwrap_or_else(|| panic!("no {name} {labels:?} in:\n{text}"))
    };
    assert_eq!(expect("reembed_migration_processed", &[mig]), 300.0);
    assert_eq!(expect("reembed_migration_total", &[mig]), 300.0);
    assert_eq!(expect("reembed_migration_skipped", &[mig]), 0.0);
    assert_eq!(expect("reembed_migration_failed", &[mig]), 0.0);
    assert_eq!(expect("reembed_migration_in_flight_batches", &[mig]), 0.0);
    // A completed migration moves nothing (the rate while running: backfill::honest_progress).
    assert_eq!(expect("reembed_migration_throughput_per_sec", &[mig]), 0.0);
    assert_eq!(expect("reembed_migration_throttled_seconds", &[mig]), 0.0);
    assert_eq!(
        expect("reembed_migration_state", &[mig, "state=\"completed\""]),
        1.0
    );
    assert_eq!(
        expect("reembed_migration_state", &[mig, "state=\"in_progress\""]),
        0.0
    );
    let bulk = [
        "route=\"/v1/documents\"",
        "method=\"POST\"",
        "status=\"200\"",
    ];
    assert!(expect("reembed_http_requests_total", &bulk) >= 3.0);
    assert!(expect("reembed_http_request_duration_seconds_count", &bulk) >= 3.0);
    let ok_v2 = ["model=\"hash-v2\"", "outcome=\"ok\""];
    assert!(
        expect("reembed_embed_requests_total", &ok_v2) >= 15.0,
        "one call per batch at least"
    );
    assert!(
        expect(
            "reembed_embed_duration_seconds_count",
            &["model=\"hash-v2\""]
        ) >= 15.0
    );
    if !crate::store::on_postgres() {
        // The in-memory indexes' gauges; PostgreSQL keeps its indexes in the database.
        assert_index_gauges(&app, &text).await;
    }
    let routed = ["operation=\"query\"", "route=\"target\""];
    assert!(expect("reembed_routing_decisions_total", &routed) >= 1.0);
    assert!(
        sample(
            &text,
            "reembed_embed_throttled_seconds",
            &["model=\"hash-v1\""]
        )
        .is_some()
    );
    app.stop().await;
}

/// One Server-Sent Event: its name, its data as JSON, and when it arrived.
struct Received {
    event: String,
    data: Value,
    at: Instant,
}

/// Reads the SSE feed at `path` until the server ends it.
async fn read_feed(app: &TestApp, path: &str) -> Vec<Received> {
    let mut response = reqwest::get(format!("{}{path}", app.base))
        .await
        .expect("the feed");
    assert_eq!(response.status(), 200);
    let mut events = Vec::new();
    let mut buffer = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while let Some(chunk) = tokio::time::timeout_at(deadline, response.chunk())
        .await
        .expect("the feed ends by itself")
        .expect("a readable feed")
    {
        buffer.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            let field = |name: &str| {
                block
                    .lines()
                    .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_owned()))
            };
            if let (Some(event), Some(data)) = (field("event:"), field("data:")) {
                let data = serde_json::from_str(&data).expect("JSON data");
                events.push(Received {
                    event,
                    data,
                    at: Instant::now(),
                });
            }
        }
    }
    events
}

#[tokio::test]
async fn the_event_feed_sends_ordered_snapshots_then_the_final_transition() {
    let probe = Probe::new();
    let app = TestApp::with_models(probe.registry()).await;
    app.load(&corpus("w", 400), 200).await;
    probe.slow_batches(Duration::from_millis(60));
    app.start_migration(&json!({"id": "watched", "target_model": "hash-v2",
                                "config": {"batch_size": 10, "max_concurrent": 1}}))
        .await;
    let events = read_feed(&app, "/v1/migrations/watched/events").await;

    let (first, last) = (
        events.first().expect("events"),
        events.last().expect("events"),
    );
    assert_eq!(first.event, "progress", "a snapshot on connect");
    assert_eq!(last.event, "state", "the feed ends with the transition");
    assert_eq!(last.data["state"], "completed");
    let snapshots: Vec<&Received> = events.iter().filter(|e| e.event == "progress").collect();
    assert!(
        snapshots.len() >= 3,
        "progress while it runs: {}",
        snapshots.len()
    );
    for pair in snapshots.windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        let (pa, pb) = (
            a.data["processed"].as_u64().unwrap(),
            b.data["processed"].as_u64().unwrap(),
        );
        assert!(pa <= pb, "ordered snapshots: {pa} then {pb}");
        if b.data["state"] == "in_progress" {
            // Sent a second apart; a quarter second of slack for delivery on a busy machine.
            // Unthrottled, snapshots would follow every batch (~60 ms).
            let gap = b.at.duration_since(a.at);
            assert!(
                gap >= Duration::from_millis(750),
                "at most one a second, got {gap:?}"
            );
        }
    }
    let final_counts = &snapshots.last().unwrap().data;
    assert_eq!(
        final_counts["processed"], 400,
        "the final counts precede the transition"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_feed_opened_after_completion_sends_the_outcome_and_ends() {
    let app = TestApp::spawn().await;
    app.load(&corpus("f", 50), 50).await;
    app.start_migration(&json!({"id": "done", "target_model": "hash-v2"}))
        .await;
    app.wait_for_state("done", "completed", Duration::from_secs(30))
        .await;
    let events = read_feed(&app, "/v1/migrations/done/events").await;
    let names: Vec<&str> = events.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(names, ["progress", "state"]);
    assert_eq!(events[0].data["processed"], 50);
    assert_eq!(events[1].data["state"], "completed");
    app.get("/v1/migrations/unknown/events")
        .await
        .problem(404, "not-found");
    app.stop().await;
}

/// The gauges of the in-memory indexes after 300 documents were embedded with both models.
async fn assert_index_gauges(app: &TestApp, text: &str) {
    let expect = |name: &str, labels: &[&str]| {
        sample(text, name, labels).unwrap_or_else(|| panic!("no {name} {labels:?} in:\n{text}"))
    };
    let v2_index = ["model=\"hash-v2\"", "kind=\"exact\""];
    assert_eq!(expect("reembed_index_vectors", &v2_index), 300.0);
    assert_eq!(
        expect("reembed_index_bytes", &v2_index),
        300.0 * 384.0 * 4.0
    );
    let v1_index = ["model=\"hash-v1\"", "kind=\"exact\""];
    assert_eq!(expect("reembed_index_vectors", &v1_index), 300.0);
    assert_eq!(expect("reembed_index_filterable_documents", &[]), 0.0);
    let v2 = ["model=\"hash-v2\""];
    assert!(expect("reembed_index_lag", &v2) <= 300.0);
    let what = "the hash-v2 graph to catch up with its 300 documents";
    eventually(Duration::from_secs(30), what, || async {
        match sample(&app.get("/metrics").await.body, "reembed_index_lag", &v2) {
            Some(0.0) => Ok(()),
            other => Err(format!("lag {other:?}")),
        }
    })
    .await;
}
