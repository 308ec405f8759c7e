//! Operations and discovery (API.md "Operations", "Models"): probes, the OpenAPI document and
//! its checked-in copy, the docs page, and the model registry.

use std::process::Command;

use serde_json::Value;

use crate::helpers::TestApp;
use crate::wire::ModelInfo;

const REGENERATE: &str = "openapi/openapi.json is stale; regenerate it with \
                          `cargo run -- openapi > openapi/openapi.json` and commit it";

fn checked_in_spec() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/openapi/openapi.json");
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}. {REGENERATE}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path} is not JSON ({e}). {REGENERATE}"))
}

/// Panics unless `actual` equals the checked-in spec, naming the JSON paths that differ.
fn assert_is_checked_in_spec(actual: &Value, source: &str) {
    let expected = checked_in_spec();
    let mut differences = Vec::new();
    differ(&expected, actual, String::new(), &mut differences);
    assert!(
        differences.is_empty(),
        "{source} differs from the repository copy at {differences:?}. {REGENERATE}"
    );
}

/// Collects the JSON pointers where `a` and `b` differ.
fn differ(a: &Value, b: &Value, at: String, out: &mut Vec<String>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            for key in x.keys().chain(y.keys().filter(|k| !x.contains_key(*k))) {
                let (u, v) = (
                    x.get(key).unwrap_or(&Value::Null),
                    y.get(key).unwrap_or(&Value::Null),
                );
                differ(
                    u,
                    v,
                    format!("{at}/{}", key.replace('~', "~0").replace('/', "~1")),
                    out,
                );
            }
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            for (i, (u, v)) in x.iter().zip(y).enumerate() {
                differ(u, v, format!("{at}/{i}"), out);
            }
        }
        _ if a != b => out.push(at),
        _ => {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_and_readyz_answer_200() {
    let app = TestApp::spawn().await;
    for probe in ["/healthz", "/readyz"] {
        let reply = app.get(probe).await;
        assert_eq!(reply.status, 200, "{reply}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_served_openapi_document_is_the_checked_in_one() {
    let app = TestApp::spawn().await;
    let reply = app.get("/openapi.json").await;
    assert_eq!(reply.status, 200, "{reply}");
    let served = reply.json();
    assert_is_checked_in_spec(&served, "GET /openapi.json");
    let version = served["openapi"].as_str().unwrap_or_default();
    assert!(
        version.starts_with("3.1"),
        "OpenAPI 3.1 expected, got {version:?}"
    );
    let paths = served["paths"].as_object().expect("paths");
    let documented = [
        "/v1/documents",
        "/v1/documents/{id}",
        "/v1/query",
        "/v1/routing",
        "/v1/models",
        "/v1/migrations",
        "/v1/migrations/{id}",
        "/v1/migrations/{id}/progress",
        "/v1/migrations/{id}/config",
        "/v1/migrations/{id}/skips",
        "/healthz",
        "/readyz",
    ];
    for path in documented {
        assert!(
            paths.contains_key(path),
            "{path} is missing from the OpenAPI document"
        );
    }
    for action in ["start", "pause", "resume", "cancel", "rollback", "finalize"] {
        let path = format!("/v1/migrations/{{id}}/{action}");
        assert!(
            paths.contains_key(&path),
            "{path} is missing from the OpenAPI document"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_command_prints_the_checked_in_document() {
    let output = tokio::task::spawn_blocking(|| {
        Command::new(env!("CARGO_BIN_EXE_reembed"))
            .arg("openapi")
            .output()
            .expect("reembed openapi runs")
    })
    .await
    .unwrap();
    assert!(
        output.status.success(),
        "reembed openapi failed: {output:?}"
    );
    let printed: Value = serde_json::from_slice(&output.stdout).expect("JSON on stdout");
    assert_is_checked_in_spec(&printed, "`reembed openapi`");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docs_serves_an_html_page() {
    let app = TestApp::spawn().await;
    let reply = app.get("/docs").await;
    assert_eq!(reply.status, 200, "{reply}");
    assert!(reply.content_type.starts_with("text/html"), "{reply}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_lists_the_builtin_registry_with_hash_v1_active() {
    let app = TestApp::spawn().await;
    let models = app.models().await;
    assert_eq!(models.active_model, "hash-v1");
    let builtin = |id: &str, dimensions| ModelInfo {
        id: id.into(),
        provider: "builtin".into(),
        dimensions,
    };
    for expected in [builtin("hash-v1", 256), builtin("hash-v2", 384)] {
        assert!(
            models.models.contains(&expected),
            "{expected:?} missing from {models:?}"
        );
    }
}

#[test]
fn cargo_run_starts_the_service_binary() {
    // The README's first command is `cargo run --release -- serve`; with two binaries in the
    // package, cargo needs to be told which one that is.
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
    let manifest: toml::Table = std::fs::read_to_string(path).unwrap().parse().unwrap();
    assert_eq!(
        manifest["package"]
            .get("default-run")
            .and_then(|v| v.as_str()),
        Some("reembed"),
        "Cargo.toml needs `default-run = \"reembed\"`"
    );
}
