//! The command-line client (`reembed import | migrate | status | pause | ...`): the real binary
//! run against an in-process server, checked by its output, its exit code (0 done, 1 refused
//! or incomplete, 2 unreachable or unusable input) and what the server then holds.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::path::Path;
use std::process::Stdio;

use reembed::config::Tokens;
use reembed::embed::ModelRegistry;
use tokio::io::AsyncWriteExt;

use crate::helpers::{PATIENCE, TestApp, corpus, eventually};

/// What one run of the client printed and how it exited.
#[derive(Debug)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    /// The value of the `key: value` line `key` on stdout.
    fn field(&self, key: &str) -> Option<&str> {
        let prefix = format!("{key}: ");
        self.stdout.lines().find_map(|l| l.strip_prefix(&prefix))
    }

    fn assert_field(&self, key: &str, value: &str) {
        assert_eq!(self.field(key), Some(value), "{key} in {self:#?}");
    }
}

/// Runs `reembed ARGS` with `stdin` (empty when `None`), away from any `REEMBED_*` settings
/// of the environment the tests run in.
async fn reembed_with(args: &[&str], env: &[(&str, &str)], stdin: Option<&[u8]>) -> Run {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_reembed"));
    command
        .args(args)
        .env_remove("REEMBED_URL")
        .env_remove("REEMBED_API_TOKEN")
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().expect("the reembed binary starts");
    let mut input = child.stdin.take().expect("piped stdin");
    input.write_all(stdin.unwrap_or_default()).await.unwrap();
    drop(input);
    let output = tokio::time::timeout(PATIENCE, child.wait_with_output())
        .await
        .expect("the client finishes in time")
        .expect("the client's output");
    Run {
        code: output.status.code().expect("an exit code, not a signal"),
        stdout: String::from_utf8(output.stdout).expect("UTF-8 stdout"),
        stderr: String::from_utf8(output.stderr).expect("UTF-8 stderr"),
    }
}

/// Runs `reembed ARGS --url URL`.
async fn reembed(url: &str, args: &[&str]) -> Run {
    let args: Vec<&str> = args.iter().copied().chain(["--url", url]).collect();
    reembed_with(&args, &[], None).await
}

fn good_line(id: &str, n: usize) -> String {
    format!(r#"{{"id": "{id}", "text": "note {n} on the river", "metadata": {{"n": {n}}}}}"#)
}

/// A JSON Lines file of `lines` lines, good except those `malformed` gives.
fn write_jsonl(dir: &Path, lines: usize, malformed: impl Fn(usize) -> Option<String>) -> String {
    let mut text = String::new();
    for n in 1..=lines {
        let line = malformed(n).unwrap_or_else(|| good_line(&format!("doc-{n:05}"), n));
        writeln!(text, "{line}").unwrap();
    }
    let path = dir.join("corpus.jsonl");
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_owned()
}

/// A URL nobody listens on: a port the OS just handed out and took back.
fn unreachable_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    format!("http://127.0.0.1:{port}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_skips_malformed_lines_and_names_them() {
    let app = TestApp::spawn().await;
    let dir = tempfile::tempdir().unwrap();
    let file = write_jsonl(dir.path(), 10_000, |n| match n {
        1234 => Some(r#"{"id": "doc-01234", "text": "cut short"#.to_owned()),
        8765 => Some(r#"{"id": "doc-08765", "metadata": {}}"#.to_owned()),
        _ => None,
    });

    let run = reembed(&app.base, &["import", &file]).await;

    assert_eq!(run.code, 1, "some lines failed: {run:#?}");
    run.assert_field("lines", "10000");
    run.assert_field("imported", "9998");
    run.assert_field("failed", "2");
    assert!(run.field("line 1234").unwrap().starts_with("invalid JSON"));
    run.assert_field("line 8765", "missing \"text\"");
    assert_eq!(run.stderr, "", "no progress bar or error off a terminal");
    let held: HashSet<String> = app
        .all_documents(1000)
        .await
        .into_iter()
        .map(|d| d.id)
        .collect();
    assert_eq!(held.len(), 9998);
    assert!(!held.contains("doc-01234") && !held.contains("doc-08765"));
    assert!(held.contains("doc-01233") && held.contains("doc-10000"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_request_fails_all_its_lines_and_writes_none() {
    let app = TestApp::spawn().await;
    let dir = tempfile::tempdir().unwrap();
    let long_id = "x".repeat(600);
    let file = write_jsonl(dir.path(), 30, |n| {
        (n == 15).then(|| good_line(&long_id, n))
    });

    let run = reembed(&app.base, &["import", &file, "--batch", "10"]).await;

    assert_eq!(run.code, 1, "{run:#?}");
    run.assert_field("imported", "20");
    run.assert_field("failed", "10");
    for line in 11..=20 {
        let why = run.field(&format!("line {line}")).unwrap_or_default();
        assert!(
            why.contains("refused with the 10 documents of its request: 422"),
            "{why}"
        );
        assert!(why.contains("id: must be 1 to 512 characters"), "{why}");
    }
    let held: HashSet<String> = app
        .all_documents(100)
        .await
        .into_iter()
        .map(|d| d.id)
        .collect();
    let expected: HashSet<String> = (1..=10)
        .chain(21..=30)
        .map(|n| format!("doc-{n:05}"))
        .collect();
    assert_eq!(held, expected, "nothing of the refused request was written");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_reads_stdin_and_ignores_blank_lines() {
    let app = TestApp::spawn().await;
    let input = format!("{}\n\n   \n{}\r\n", good_line("a", 1), good_line("b", 2));

    let args = ["import", "-", "--url", &app.base];
    let run = reembed_with(&args, &[], Some(input.as_bytes())).await;

    assert_eq!(run.code, 0, "{run:#?}");
    run.assert_field("lines", "4");
    run.assert_field("imported", "2");
    run.assert_field("failed", "0");
    assert_eq!(app.get_document("b").await.text, "note 2 on the river");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_without_start_is_planned_and_cannot_be_paused() {
    let app = TestApp::spawn().await;
    app.load(&corpus("doc", 20), 20).await;

    let created = reembed(
        &app.base,
        &["migrate", "--to", "hash-v2", "--no-start", "--id", "m1"],
    )
    .await;
    assert_eq!(created.code, 0, "{created:#?}");
    created.assert_field("id", "m1");
    created.assert_field("state", "planned");
    created.assert_field("target_model", "hash-v2");

    let status = reembed(&app.base, &["status"]).await;
    assert_eq!(status.code, 0, "{status:#?}");
    status.assert_field("phase", "stable");
    status.assert_field("query_model", "hash-v1");
    status.assert_field("write_models", "hash-v1");
    status.assert_field("migration", "m1");
    status.assert_field("state", "planned");

    let pause = reembed(&app.base, &["pause", "--reason", "not yet"]).await;
    assert_eq!(pause.code, 1, "{pause:#?}");
    assert_eq!(pause.stdout, "");
    assert!(pause.stderr.contains("409"), "{}", pause.stderr);
    assert!(
        pause
            .stderr
            .contains("cannot pause a migration in state planned"),
        "{}",
        pause.stderr
    );
    assert_eq!(app.migration("m1").await.state, "planned");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_and_json_output() {
    let app = TestApp::spawn().await;
    app.load(&corpus("doc", 7), 7).await;

    let plan = reembed(&app.base, &["migrate", "--to", "hash-v2", "--dry-run"]).await;
    assert_eq!(plan.code, 0, "{plan:#?}");
    plan.assert_field("dry_run", "true");
    plan.assert_field("documents", "7");
    assert!(
        app.migrations().await.is_empty(),
        "a dry run creates nothing"
    );

    let created = reembed(
        &app.base,
        &["migrate", "--to", "hash-v2", "--no-start", "--json"],
    )
    .await;
    let migration: serde_json::Value = serde_json::from_str(&created.stdout).unwrap();
    assert_eq!(migration["state"], "planned");
    let status = reembed(&app.base, &["status", "--json"]).await;
    let status: serde_json::Value = serde_json::from_str(&status.stdout).unwrap();
    assert_eq!(status["migration"]["id"], migration["id"]);
    assert_eq!(status["progress"]["state"], "planned");
    assert_eq!(status["routing"]["phase"], "stable");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_watch_follows_a_migration_to_completion_then_rollback() {
    let app = TestApp::spawn().await;
    app.load(&corpus("doc", 300), 100).await;
    let created = reembed(
        &app.base,
        &["migrate", "--to", "hash-v2", "--batch-size", "50"],
    )
    .await;
    assert_eq!(created.code, 0, "{created:#?}");

    let watched = reembed(&app.base, &["status", "--watch"]).await;

    assert_eq!(watched.code, 0, "{watched:#?}");
    watched.assert_field("state", "completed");
    watched.assert_field("processed", "300/300");
    watched.assert_field("phase", "rollback_window");
    watched.assert_field("query_model", "hash-v2");
    assert_ne!(watched.field("rollback_window_ends_at"), Some("-"));

    let rolled_back = reembed(&app.base, &["rollback"]).await;
    assert_eq!(rolled_back.code, 0, "{rolled_back:#?}");
    rolled_back.assert_field("state", "rolled_back");
    assert_eq!(app.routing().await.query_model, "hash-v1");
    let watched = reembed(&app.base, &["status", "--watch"]).await;
    assert_eq!(
        watched.code, 1,
        "watch ends at once, not completed: {watched:#?}"
    );
    watched.assert_field("state", "rolled_back");
    let finalize = reembed(&app.base, &["finalize"]).await;
    assert_eq!(finalize.code, 1, "{finalize:#?}");
    assert!(
        finalize
            .stderr
            .contains("cannot finalize a migration in state rolled_back")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finalize_makes_the_target_active() {
    let app = TestApp::spawn().await;
    app.load(&corpus("doc", 50), 50).await;
    let created = reembed(&app.base, &["migrate", "--to", "hash-v2", "--id", "to-v2"]).await;
    assert_eq!(created.code, 0, "{created:#?}");
    app.wait_for_state("to-v2", "completed", PATIENCE).await;

    let finalized = reembed(&app.base, &["finalize", "to-v2"]).await;

    assert_eq!(finalized.code, 0, "{finalized:#?}");
    finalized.assert_field("state", "completed");
    assert_eq!(app.models().await.active_model, "hash-v2");
    let status = reembed(&app.base, &["status", "to-v2"]).await;
    status.assert_field("phase", "stable");
    status.assert_field("write_models", "hash-v2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gate_set_by_migrate_is_shown_overridden_by_cutover_and_kept_in_the_history() {
    let app = TestApp::spawn().await;
    app.load(&corpus("doc", 40), 40).await;
    let created = reembed(
        &app.base,
        &[
            "migrate",
            "--to",
            "hash-v2",
            "--id",
            "gated",
            "--gate-min-recall-ratio",
            "0.9",
            "--shadow-percent",
            "10",
        ],
    )
    .await;
    assert_eq!(created.code, 0, "{created:#?}");
    created.assert_field("cutover_gate", "min_recall_ratio 0.9");
    created.assert_field("shadow_percent", "10");
    created.assert_field("retain_source_vectors", "false");
    eventually(PATIENCE, "the backfill to drain", || async {
        let progress = app.progress("gated").await;
        match progress.remaining {
            0 => Ok(()),
            _ => Err(format!("{progress:?}")),
        }
    })
    .await;

    let blocked = reembed(&app.base, &["status"]).await;
    blocked.assert_field("state", "in_progress");
    let gate = blocked.field("gate").expect("a gate line");
    assert!(gate.starts_with("blocked ("), "{gate}");
    assert_eq!(blocked.field("source_cleanup"), Some("waiting (0 deleted)"));
    let no_reason = reembed(&app.base, &["cutover"]).await;
    assert_eq!(no_reason.code, 2, "the reason is required: {no_reason:#?}");

    let cutover = reembed(
        &app.base,
        &["cutover", "--reason", "recall checked by hand"],
    )
    .await;

    assert_eq!(cutover.code, 0, "{cutover:#?}");
    app.wait_for_state("gated", "completed", PATIENCE).await;
    let passed = reembed(&app.base, &["status", "gated"]).await;
    let gate = passed.field("gate").expect("a gate line");
    assert!(gate.starts_with("overridden ("), "{gate}");
    assert!(gate.contains("recall checked by hand"), "{gate}");
    let history = reembed(&app.base, &["history", "gated"]).await;
    assert_eq!(history.code, 0, "{history:#?}");
    let overridden = history
        .stdout
        .lines()
        .find(|line| line.contains(" gate_overridden ("))
        .expect("the override in the history");
    assert!(
        overridden.contains("recall checked by hand"),
        "{overridden}"
    );
    assert!(overridden.contains("(anonymous on "), "{overridden}");
    let kinds: Vec<&str> = history
        .stdout
        .lines()
        .filter_map(|line| line.split(' ').nth(1))
        .collect();
    assert_eq!(
        kinds,
        ["created", "started", "gate_overridden", "completed"],
        "{history:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_server_is_named_and_exits_2() {
    let url = unreachable_url();
    let status = reembed(&url, &["status"]).await;
    assert_eq!(status.code, 2, "{status:#?}");
    let expected = format!("cannot reach the reembed service at {url}");
    assert!(status.stderr.contains(&expected), "{}", status.stderr);

    let dir = tempfile::tempdir().unwrap();
    let file = write_jsonl(dir.path(), 3, |_| None);
    let import = reembed(&url, &["import", &file]).await;
    assert_eq!(import.code, 2, "{import:#?}");
    import.assert_field("imported", "0");
    import.assert_field("stopped_at_line", "1");
    assert!(import.stderr.contains(&expected), "{}", import.stderr);

    let missing = reembed(&url, &["import", "/nonexistent/corpus.jsonl"]).await;
    assert_eq!(missing.code, 2, "{missing:#?}");
    assert!(
        missing
            .stderr
            .contains("cannot read /nonexistent/corpus.jsonl")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_token_is_sent_as_a_bearer_token() {
    let tokens = Tokens {
        write: "s3cret".to_owned(),
        read: None,
    };
    let app = TestApp::with_config(ModelRegistry::builtin(), |c| c.tokens = Some(tokens)).await;

    let refused = reembed(&app.base, &["status"]).await;
    assert_eq!(refused.code, 1, "{refused:#?}");
    assert!(refused.stderr.contains("401"), "{}", refused.stderr);
    let flag = reembed(&app.base, &["status", "--api-token", "s3cret"]).await;
    assert_eq!(flag.code, 0, "{flag:#?}");
    let args = [
        "migrate",
        "--to",
        "hash-v2",
        "--no-start",
        "--url",
        &app.base,
    ];
    let env = reembed_with(&args, &[("REEMBED_API_TOKEN", "s3cret")], None).await;
    assert_eq!(env.code, 0, "{env:#?}");
    env.assert_field("state", "planned");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_options_go_before_or_after_the_subcommand() {
    let tokens = Tokens {
        write: "s3cret".to_owned(),
        read: None,
    };
    let app = TestApp::with_config(ModelRegistry::builtin(), |c| c.tokens = Some(tokens)).await;
    let base = app.base.as_str();

    // `--url` before the subcommand, `--api-token` after it.
    let split = [
        "--url",
        base,
        "migrate",
        "--to",
        "hash-v2",
        "--no-start",
        "--api-token",
        "s3cret",
    ];
    let created = reembed_with(&split, &[], None).await;
    assert_eq!(created.code, 0, "{created:#?}");
    created.assert_field("state", "planned");
    let before = ["--url", base, "--api-token", "s3cret", "status"];
    let after = ["status", "--url", base, "--api-token", "s3cret"];
    for args in [before, after] {
        let status = reembed_with(&args, &[], None).await;
        assert_eq!(status.code, 0, "{args:?}: {status:#?}");
        status.assert_field("migration", created.field("id").unwrap());
    }

    let serve_flag_first = reembed_with(&["--listen", "127.0.0.1:0", "status"], &[], None).await;
    assert_eq!(serve_flag_first.code, 2, "{serve_flag_first:#?}");
    let expected = "--listen is a flag of `reembed serve` and cannot be used with `status`";
    assert!(
        serve_flag_first.stderr.contains(expected),
        "{serve_flag_first:#?}"
    );
    let serve_with_url = reembed_with(&["serve", "--url", base], &[], None).await;
    assert_eq!(
        serve_with_url.code, 2,
        "refused, not served: {serve_with_url:#?}"
    );
    assert!(
        serve_with_url
            .stderr
            .contains("--url is an option of the client subcommands")
    );
}
