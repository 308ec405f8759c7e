//! Bad input (API.md status table): each case asserts the status, the problem type, and that
//! the rejected request changed nothing. Never a 500 for bad input.

use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{Api, TestApp};
use crate::wire::Migration;

/// What a rejected request must leave as it was: the documents and the migrations.
#[derive(Debug, PartialEq)]
struct Snapshot {
    documents: Vec<(String, u64, String)>,
    migrations: Vec<Migration>,
}

async fn snapshot(api: &Api) -> Snapshot {
    let docs = api.all_documents(1000).await;
    Snapshot {
        documents: docs
            .into_iter()
            .map(|d| (d.id, d.version, d.text))
            .collect(),
        migrations: api.migrations().await,
    }
}

/// A server with one document (`kept`, version 1) and a planned migration `mig-1`.
async fn app_with_state() -> TestApp {
    let app = TestApp::spawn().await;
    app.put_document("kept", "the original text").await;
    let body = json!({ "id": "mig-1", "target_model": "hash-v2", "start": false });
    app.start_migration(&body).await;
    app
}

/// Sends `body` as JSON text and asserts `status`/`slug` and that nothing changed.
async fn assert_rejected(
    app: &TestApp,
    method: Method,
    path: &str,
    body: &str,
    status: u16,
    slug: &str,
) {
    let before = snapshot(app).await;
    let reply = app
        .send_raw(method, path, Some(("application/json", body.to_owned())))
        .await;
    reply.problem(status, slug);
    assert_eq!(
        snapshot(app).await,
        before,
        "rejected {body} changed something: {reply}"
    );
}

/// Every endpoint that takes a JSON body.
const JSON_ENDPOINTS: [(&str, &str); 6] = [
    ("PUT", "/v1/documents/kept"),
    ("PUT", "/v1/documents/fresh"),
    ("POST", "/v1/documents"),
    ("POST", "/v1/migrations"),
    ("PATCH", "/v1/migrations/mig-1/config"),
    ("POST", "/v1/query"),
];

fn method(name: &str) -> Method {
    name.parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_json_is_400_malformed_body_everywhere() {
    let app = app_with_state().await;
    for (verb, path) in JSON_ENDPOINTS {
        for body in [
            r#"{"text": "cut off"#,
            "not json at all",
            r#"{"text": "x",}"#,
            "",
        ] {
            assert_rejected(&app, method(verb), path, body, 400, "malformed-body").await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_field_types_and_missing_required_fields_are_400() {
    let app = app_with_state().await;
    let cases: [(&str, &str, Value); 13] = [
        ("PUT", "/v1/documents/kept", json!({ "text": 5 })),
        ("PUT", "/v1/documents/kept", json!({ "text": ["a"] })),
        ("PUT", "/v1/documents/fresh", json!({})),
        ("PUT", "/v1/documents/fresh", json!(["text"])),
        (
            "POST",
            "/v1/documents",
            json!({ "documents": { "id": "a", "text": "b" } }),
        ),
        (
            "POST",
            "/v1/documents",
            json!({ "documents": [{ "id": "a" }] }),
        ),
        ("POST", "/v1/migrations", json!({ "target_model": 2 })),
        (
            "POST",
            "/v1/migrations",
            json!({ "target_model": "hash-v2", "config": { "batch_size": "ten" } }),
        ),
        (
            "POST",
            "/v1/migrations",
            json!({ "target_model": "hash-v2", "start": "yes" }),
        ),
        ("POST", "/v1/migrations", json!({ "config": {} })),
        (
            "PATCH",
            "/v1/migrations/mig-1/config",
            json!({ "dual_write": "no" }),
        ),
        ("POST", "/v1/query", json!({ "text": "x", "top_k": "ten" })),
        ("POST", "/v1/query", json!({ "top_k": 3 })),
    ];
    for (verb, path, body) in cases {
        assert_rejected(
            &app,
            method(verb),
            path,
            &body.to_string(),
            400,
            "malformed-body",
        )
        .await;
    }
}

/// Each out-of-range value is refused with 422 naming the field, on create and on PATCH.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_range_config_is_422_invalid_config_naming_the_field() {
    let cases = [
        ("target_query_threshold", json!(1.5)),
        ("target_query_threshold", json!(-0.1)),
        ("batch_size", json!(0)),
        ("batch_size", json!(10_001)),
        ("batch_size", json!(-5)),
        ("max_concurrent", json!(0)),
        ("max_concurrent", json!(65)),
        ("rollback_window_secs", json!(-1)),
    ];
    let app = TestApp::spawn().await;
    for (field, value) in &cases {
        let body = json!({ "target_model": "hash-v2", "config": { *field: value } });
        let reply = app.create_migration(&body).await;
        let problem = reply.problem(422, "invalid-config");
        assert!(
            problem.detail().contains(field),
            "detail must name {field}: {reply}"
        );
        assert!(
            app.migrations().await.is_empty(),
            "a refused migration was recorded"
        );
    }
    let body = json!({ "id": "m", "target_model": "hash-v2", "start": false });
    let config = app.start_migration(&body).await.config;
    for (field, value) in &cases {
        let reply = app.patch_config("m", &json!({ *field: value })).await;
        let problem = reply.problem(422, "invalid-config");
        assert!(
            problem.detail().contains(field),
            "detail must name {field}: {reply}"
        );
        assert_eq!(
            app.migration("m").await.config,
            config,
            "a refused PATCH changed the config"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusable_models_are_422() {
    let app = TestApp::spawn().await;
    let cases = [
        json!({ "target_model": "hash-v9" }),
        json!({ "target_model": "hash-v1" }),
        json!({ "source_model": "hash-v1", "target_model": "hash-v1" }),
        json!({ "source_model": "hash-v2", "target_model": "hash-v1" }),
        json!({ "source_model": "hash-v9", "target_model": "hash-v2" }),
    ];
    for body in cases {
        let reply = app.create_migration(&body).await;
        reply.problem(422, "invalid-config");
        assert!(
            app.migrations().await.is_empty(),
            "{body} was recorded: {reply}"
        );
    }
    assert_eq!(app.routing().await.phase, "stable");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_documents_and_migrations_are_404() {
    let app = app_with_state().await;
    let before = snapshot(&app).await;
    let mut replies = vec![
        app.document_reply("missing").await,
        app.delete("missing").await,
        app.get("/v1/migrations/missing").await,
        app.get("/v1/migrations/missing/progress").await,
        app.get("/v1/migrations/missing/skips").await,
        app.patch_config("missing", &json!({ "batch_size": 5 }))
            .await,
    ];
    for action in ["start", "pause", "resume", "cancel", "rollback", "finalize"] {
        replies.push(app.action("missing", action).await);
    }
    for reply in replies {
        reply.problem(404, "not-found");
    }
    assert_eq!(snapshot(&app).await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_with_one_invalid_document_writes_none() {
    let app = app_with_state().await;
    let invalid = [
        json!({ "id": "bad", "text": 5 }),
        json!({ "id": "bad" }),
        json!({ "id": "", "text": "no id" }),
    ];
    for bad in invalid {
        let before = snapshot(&app).await;
        let good = [
            json!({ "id": "good", "text": "fine" }),
            json!({ "id": "kept", "text": "changed" }),
        ];
        let body = json!({ "documents": [good[0], bad, good[1]] });
        let reply = app.bulk_reply(&body).await;
        let problem = reply.any_problem();
        assert!(matches!(problem.status, 400 | 422), "{reply}");
        assert_eq!(
            snapshot(&app).await,
            before,
            "a rejected bulk wrote something: {reply}"
        );
        app.document_reply("good").await.problem(404, "not-found");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_not_declared_as_json_gets_a_problem_document() {
    let app = app_with_state().await;
    let body = r#"{"text": "valid JSON, wrong content type"}"#;
    for content_type in [
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        None,
    ] {
        let before = snapshot(&app).await;
        let sent = content_type.map(|ct| (ct, body.to_owned()));
        let reply = app.send_raw(Method::PUT, "/v1/documents/fresh", sent).await;
        let problem = reply.any_problem();
        assert!((400..500).contains(&problem.status), "{reply}");
        assert_eq!(snapshot(&app).await, before);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_parameters_of_the_wrong_type_are_400_problem_documents() {
    let app = app_with_state().await;
    for query in ["limit=abc", "limit=-1", "limit=1.5"] {
        let reply = app.get(&format!("/v1/documents?{query}")).await;
        assert_eq!(reply.status, 400, "{reply}");
        reply.any_problem();
    }
}

/// A known route with the wrong method: 405 problem+json naming the allowed methods in
/// `Allow`; nothing changes.
#[tokio::test]
async fn a_wrong_method_is_405_with_allow() {
    let app = app_with_state().await;
    let before = snapshot(&app).await;
    let client = reqwest::Client::new();
    let cases = [
        (Method::DELETE, "/v1/routing", "GET"),
        (Method::POST, "/v1/documents/kept", "PUT"),
        (Method::PUT, "/v1/migrations", "POST"),
        (Method::TRACE, "/v1/routing", "GET"),
        (Method::PATCH, "/v1/migrations/mig-1", "GET"),
    ];
    for (method, path, allowed) in cases {
        let response = client
            .request(method.clone(), format!("{}{path}", app.base))
            .send()
            .await
            .expect("an answer");
        assert_eq!(response.status().as_u16(), 405, "{method} {path}");
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .map(|v| v.to_str().unwrap().to_owned())
        };
        let allow = header("allow").unwrap_or_default();
        assert!(
            allow.split(',').any(|m| m.trim() == allowed),
            "{method} {path}: Allow {allow:?}"
        );
        assert_eq!(
            header("content-type").as_deref(),
            Some("application/problem+json")
        );
        let problem: Value = response.json().await.expect("a problem document");
        assert_eq!(problem["type"], "urn:reembed:problem:method-not-allowed");
        assert_eq!(problem["status"], 405);
    }
    assert_eq!(snapshot(&app).await, before);
}

/// Percent-encoded bytes that are not UTF-8 cannot name anything: 400 problem+json.
#[tokio::test]
async fn a_path_that_does_not_decode_is_400() {
    let app = app_with_state().await;
    let before = snapshot(&app).await;
    for (method, path) in [
        (Method::GET, "/v1/documents/%FF%FE"),
        (Method::DELETE, "/v1/documents/%FF%FE"),
        (Method::GET, "/v1/migrations/%C3%28/progress"),
    ] {
        app.send_raw(method, path, None)
            .await
            .problem(400, "malformed-path");
    }
    assert_eq!(snapshot(&app).await, before);
}

/// A head hyper refuses before the app sees it (a target over 64 KiB, a head over 128 KiB,
/// bytes that are not HTTP) is answered with a problem document, not hyper's empty body,
/// and the answer reaches a client that is still sending; nothing changes.
#[tokio::test]
async fn a_head_that_does_not_parse_gets_a_problem_document() {
    let app = app_with_state().await;
    let before = snapshot(&app).await;
    let long_target = format!("/v1/documents/{}", "a".repeat(100_000));
    let cases = [
        (
            format!("GET {long_target} HTTP/1.1\r\nhost: x\r\n\r\n"),
            414,
            "uri-too-long",
        ),
        (
            format!(
                "PUT /v1/documents/kept HTTP/1.1\r\nhost: x\r\nx-padding: {}\r\n\r\n",
                "p".repeat(300_000)
            ),
            431,
            "headers-too-large",
        ),
        (
            "GET /v1/routing HTTP/1.1\r\nhost: x\r\nbad header: x\r\n\r\n".to_owned(),
            400,
            "malformed-request",
        ),
        (
            "G\u{1}T /v1/routing HTTP/1.1\r\nhost: x\r\n\r\n".to_owned(),
            400,
            "malformed-request",
        ),
    ];
    for (head, status, slug) in cases {
        let (status_line, headers, body) = raw_answer(&app, &head).await;
        let what = format!("{slug}: {status_line}");
        assert!(
            status_line.starts_with(&format!("HTTP/1.1 {status} ")),
            "{what}"
        );
        assert!(
            headers.contains("content-type: application/problem+json"),
            "{what}"
        );
        let problem: Value = serde_json::from_str(&body).expect("a problem document");
        assert_eq!(
            problem["type"],
            format!("urn:reembed:problem:{slug}"),
            "{what}"
        );
        assert_eq!(problem["status"], status, "{what}");
    }
    assert_eq!(snapshot(&app).await, before);
}

/// Sends `head` on a raw connection without closing the sending side, as a client does, and
/// reads the answer until the server closes: its status line, its lower-cased headers and
/// its body.
async fn raw_answer(app: &TestApp, head: &str) -> (String, String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let address = app.base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(address)
        .await
        .expect("connected");
    stream.write_all(head.as_bytes()).await.expect("head sent");
    let mut answer = Vec::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        stream.read_to_end(&mut answer),
    )
    .await
    .expect("the server closes after answering")
    .expect("an answer, not a reset");
    let answer = String::from_utf8(answer).expect("a text answer");
    let (head, body) = answer.split_once("\r\n\r\n").expect("a whole head");
    let (status_line, headers) = head.split_once("\r\n").unwrap_or((head, ""));
    (
        status_line.to_owned(),
        headers.to_ascii_lowercase(),
        body.to_owned(),
    )
}

/// A bug that panics in a handler answers a 500 problem document, changes nothing, and the
/// server keeps serving.
#[tokio::test]
async fn a_panicking_handler_answers_500_problem_json() {
    let arrived = crate::states::arrive(crate::states::Reached::InProgress, json!({})).await;
    let app = &arrived.app;
    let before = app.all_documents(1000).await.len();
    let text = format!("a dual write hitting a {}", crate::probe::PANIC);
    let reply = app
        .put_document_reply("bug", &json!({ "text": text }))
        .await;
    reply.problem(500, "internal");
    assert_eq!(
        app.all_documents(1000).await.len(),
        before,
        "nothing was written"
    );
    assert_eq!(
        app.put_document_reply("fine", &json!({"text": "a write after it"}))
            .await
            .status,
        200
    );
    arrived.probe.release();
}

/// Stored data that does not decode is the server's fault, and retrying cannot help: 500, not
/// a "retry later" 503.
#[tokio::test]
async fn stored_data_that_does_not_decode_is_500() {
    if crate::store::on_postgres() {
        // PostgreSQL's `json` column refuses text that is not JSON: no row can be damaged so.
        return;
    }
    let app = TestApp::spawn().await;
    app.put_document("broken", "its metadata will not decode")
        .await;
    let dir = app.stop().await;
    let options = sqlx::sqlite::SqliteConnectOptions::new().filename(dir.path().join("reembed.db"));
    let pool = sqlx::SqlitePool::connect_with(options)
        .await
        .expect("the database");
    sqlx::query("UPDATE documents SET metadata = '{not json' WHERE id = 'broken'")
        .execute(&pool)
        .await
        .expect("corrupted");
    pool.close().await;
    let app = TestApp::spawn_in(dir, reembed::embed::ModelRegistry::builtin()).await;
    app.document_reply("broken").await.problem(500, "internal");
    assert_eq!(app.get("/readyz").await.status, 200, "the rest still works");
    app.query_reply(&json!({"text": "its metadata will not decode"}))
        .await
        .problem(500, "internal");
}
