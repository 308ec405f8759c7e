//! What a provider model's configuration and health do outside the backfill: the preflight
//! and dry run of `POST /v1/migrations`, writes the provider cannot embed, the start-up rule
//! that a registry file never switches the active model, and what `GET /v1/models` shows.

use serde_json::json;

use crate::fake_openai::{
    DIMENSIONS, FakeOpenAi, HELD, KEY, KEY_VAR, MODEL, Outcome, PROVIDER_MODEL,
};
use crate::helpers::{PATIENCE, TestApp, corpus, eventually};
use crate::providers::{assert_all_current_in_fake, marked};
use crate::wire::{ModelInfo, Models};

/// A provider fault and what `POST /v1/migrations` answers while it lasts.
struct PreflightCase {
    fault: &'static str,
    inflict: fn(&FakeOpenAi),
    status: u16,
    slug: &'static str,
}

const PREFLIGHT_CASES: [PreflightCase; 3] = [
    PreflightCase {
        fault: "vectors of the wrong dimension",
        inflict: |fake| fake.answer_dimensions(DIMENSIONS + 1),
        status: 422,
        slug: "invalid-config",
    },
    PreflightCase {
        fault: "the key refused (401)",
        inflict: |fake| fake.refuse_key(true),
        status: 422,
        slug: "invalid-config",
    },
    PreflightCase {
        fault: "the provider down (503)",
        inflict: |fake| fake.go_down(Some(3600)),
        status: 503,
        slug: "unavailable",
    },
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preflight_refuses_a_migration_to_a_misconfigured_or_absent_provider() {
    let fake = FakeOpenAi::start().await;
    let app = TestApp::with_models(fake.registry("hash-v1", "")).await;
    app.load(&corpus("doc", 5), 10).await;
    // Every case runs before any fails, so one run shows all that differ.
    let mut wrong = Vec::new();
    for case in &PREFLIGHT_CASES {
        fake.reset();
        (case.inflict)(&fake);
        let asked = fake.requests().len();
        for dry_run in [false, true] {
            let body = json!({ "id": "m", "target_model": MODEL, "dry_run": dry_run });
            let reply = app.create_migration(&body).await;
            reply.any_problem();
            if reply.status != case.status {
                wrong.push(format!("{}, dry_run {dry_run}: {reply}", case.fault));
                continue;
            }
            reply.problem(case.status, case.slug);
        }
        assert!(
            fake.requests().len() > asked,
            "{}: no probe sent",
            case.fault
        );
        assert!(app.migrations().await.is_empty(), "{}: created", case.fault);
        assert_eq!(app.routing().await.phase, "stable");
    }
    assert!(
        wrong.is_empty(),
        "unexpected answers:\n{}",
        wrong.join("\n")
    );
    fake.reset();
    let created = app
        .start_migration(&json!({ "id": "m", "target_model": MODEL }))
        .await;
    assert_eq!(created.state, "in_progress", "a healthy provider passes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_plans_from_the_corpus_and_the_pace_and_creates_nothing() {
    let fake = FakeOpenAi::start().await;
    let pace = "max_batch = 4\nrequests_per_minute = 120\ntokens_per_minute = 6000";
    let app = TestApp::with_models(fake.registry("hash-v1", pace)).await;
    let mut docs = corpus("doc", 30);
    docs.push((
        "doc-crème".into(),
        "crème brûlée, déjà vu, naïve café".into(),
    ));
    app.load(&docs, 100).await;

    let config = json!({ "batch_size": 10 });
    let body = json!({ "target_model": MODEL, "config": config, "dry_run": true });
    let plan = app.create_migration(&body).await.json();

    // The server's rule (domain::progress): tokens = ⌈characters / 4⌉ over the corpus;
    // seconds = the slower of requests / rpm and tokens / tpm, a request carrying
    // min(max_batch, batch_size) documents.
    let chars: usize = docs.iter().map(|(_, text)| text.chars().count()).sum();
    let tokens = chars.div_ceil(4);
    let requests = docs.len().div_ceil(4);
    let secs = f64::max(
        requests as f64 * 60.0 / 120.0,
        tokens as f64 * 60.0 / 6000.0,
    );
    assert_eq!(plan["source_model"], "hash-v1", "{plan}");
    assert_eq!(plan["target_model"], MODEL, "{plan}");
    assert_eq!(plan["config"]["batch_size"], 10, "{plan}");
    assert_eq!(
        plan["config"]["max_concurrent"], 4,
        "the defaults fill in: {plan}"
    );
    assert_eq!(plan["documents"], 31, "{plan}");
    assert_eq!(plan["estimated_tokens"], tokens, "{plan}");
    let estimated = plan["estimated_secs"].as_f64().expect("paced: a number");
    assert!(
        (estimated - secs).abs() < 1e-9,
        "{estimated} s, expected {secs} s"
    );

    assert!(
        app.migrations().await.is_empty(),
        "a dry run creates nothing"
    );
    let requests = fake.requests();
    assert_eq!(requests.len(), 1, "only the preflight probe: {requests:?}");
    assert_eq!(requests[0].inputs.len(), 1);
    let real = app.start_migration(&json!({ "target_model": MODEL })).await;
    assert_eq!(real.state, "in_progress", "the plan left the way free");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_its_only_model_cannot_embed_is_refused_and_changes_nothing() {
    let fake = FakeOpenAi::start().await;
    let app = TestApp::with_models(fake.registry(MODEL, "")).await;
    let first = app.put_document("a", "the first version of a").await;
    assert_eq!(first.embedded_with, [MODEL]);

    fake.go_down(Some(3600));
    let body = json!({ "text": "the second version of a" });
    app.put_document_reply("a", &body)
        .await
        .problem(503, "unavailable");
    let kept = app.get_document("a").await;
    assert_eq!(
        (kept.version, kept.text.as_str()),
        (1, "the first version of a")
    );
    assert_eq!(kept.vector_version(MODEL), Some(1));
    let new = json!({ "text": "a document that never was" });
    app.put_document_reply("b", &new)
        .await
        .problem(503, "unavailable");
    app.document_reply("b").await.problem(404, "not-found");
    let bulk = json!({ "documents": [{ "id": "c", "text": "c" }, { "id": "a", "text": "x" }] });
    app.bulk_reply(&bulk).await.problem(503, "unavailable");
    app.document_reply("c").await.problem(404, "not-found");
    assert_eq!(app.get_document("a").await.version, 1);
    let query = json!({ "text": "first version", "top_k": 1 });
    app.query_reply(&query).await.problem(503, "unavailable");

    fake.recover();
    let second = app.put_document("a", "the second version of a").await;
    assert_eq!((second.version, second.embedded_with.len()), (2, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dual_write_the_target_cannot_embed_is_kept_on_the_source_and_backfilled() {
    let fake = FakeOpenAi::start().await;
    let app = TestApp::with_models(fake.registry("hash-v1", "")).await;
    let docs = marked("doc", 10, HELD);
    app.load(&docs, 100).await;
    fake.hold();
    let config = json!({ "batch_size": 10, "max_concurrent": 1, "dual_write": true });
    let body = json!({ "id": "dual", "target_model": MODEL, "config": config });
    app.start_migration(&body).await;
    eventually(PATIENCE, "the first batch held at the provider", || async {
        match fake.held_requests() {
            1 => Ok(()),
            held => Err(format!("{held} held")),
        }
    })
    .await;

    fake.go_down(Some(3600));
    let late_text = "written while the target provider is down";
    let late = app.put_document("late", late_text).await;
    assert_eq!(late.embedded_with, ["hash-v1"], "{late:?}");
    assert_eq!(late.write_route, "dual_write");
    let rewritten = app
        .put_document("doc-000001", "rewritten during the outage")
        .await;
    assert_eq!(
        (rewritten.version, rewritten.embedded_with.clone()),
        (2, vec!["hash-v1".to_owned()])
    );
    assert_eq!(
        app.progress("dual").await.total,
        11,
        "the late write is queued"
    );

    fake.recover();
    fake.release();
    let done = app.wait_for_state("dual", "completed", PATIENCE).await;
    assert_eq!(done.processed + done.skipped, done.total, "{done:?}");
    assert_eq!((done.total, done.skipped), (11, 0), "{done:?}");
    let late = app.get_document("late").await;
    assert!(
        late.is_current_in(MODEL) && late.is_current_in("hash-v1"),
        "{late:?}"
    );
    let rewritten = app.get_document("doc-000001").await;
    assert_eq!(rewritten.vector_version(MODEL), Some(2), "{rewritten:?}");
    assert_eq!(assert_all_current_in_fake(&app).await, 11);
    assert_eq!(fake.embedded_counts().get(late_text), Some(&1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_file_cannot_switch_the_active_model_of_a_store_with_documents() {
    let fake = FakeOpenAi::start().await;
    let names_it = |config: &mut reembed::Config| config.registry_names_active_model = true;
    let app = TestApp::with_config(fake.registry("hash-v1", ""), names_it).await;
    app.load(&corpus("doc", 3), 10).await;
    let dir = app.stop().await;

    // In process: `serve` refuses before it serves.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut config = crate::store::config_in(dir.path()).await;
    names_it(&mut config);
    let models = fake.registry(MODEL, "");
    let served = reembed::serve(listener, config, models, std::future::pending());
    let refused = tokio::time::timeout(PATIENCE, served)
        .await
        .expect("serve returns instead of serving")
        .expect_err("a store of hash-v1 documents with a file naming another model");
    let message = format!("{refused:#}");
    for needle in ["migration", "hash-v1", MODEL] {
        assert!(message.contains(needle), "{needle:?} missing in: {message}");
    }

    // The binary, with the same file given as --config.
    let file = dir.path().join("reembed.toml");
    std::fs::write(&file, fake.registry_toml(MODEL, "")).unwrap();
    let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_reembed"))
        .args(["serve", "--listen", "127.0.0.1:0"])
        .args(crate::store::store_flags(dir.path()).await)
        .arg("--config")
        .arg(&file)
        .env_remove("REEMBED_ACTIVE_MODEL")
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(PATIENCE, run)
        .await
        .expect("the binary exits")
        .expect("the binary runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "it must not serve: {stderr}");
    assert!(stderr.contains("only through a migration"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_store_adopts_the_registry_files_active_model() {
    let fake = FakeOpenAi::start().await;
    let models = fake.registry(MODEL, "");
    let app = TestApp::with_config(models, |config| {
        config.registry_names_active_model = true;
    })
    .await;
    assert_eq!(app.models().await.active_model, MODEL);
    assert_eq!(app.routing().await.write_models, [MODEL]);
    let written = app.put_document("a", "a first document").await;
    assert_eq!(written.embedded_with, [MODEL]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_show_the_provider_model_but_never_its_key_or_address() {
    let fake = FakeOpenAi::start().await;
    let fields = format!(
        "api_key_env = \"{KEY_VAR}\"\nquery_prefix = \"query: \"\ndocument_prefix = \"passage: \""
    );
    let app = TestApp::with_models(fake.registry(MODEL, &fields)).await;

    let reply = app.get("/v1/models").await;
    let models: Models = reply.ok();
    assert_eq!(models.active_model, MODEL);
    let listed = ModelInfo {
        id: MODEL.into(),
        provider: "openai".into(),
        dimensions: DIMENSIONS,
    };
    assert!(models.models.contains(&listed), "{reply}");
    for model in reply.json()["models"].as_array().unwrap() {
        let mut fields: Vec<&str> = model
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        fields.sort_unstable();
        assert_eq!(fields, ["dimensions", "id", "provider"], "{model}");
    }
    let address = fake.base_url.trim_start_matches("http://");
    let metrics = app.get("/metrics").await;
    for secret in [KEY, address] {
        assert!(!reply.body.contains(secret), "{secret:?} in {reply}");
        assert!(!metrics.body.contains(secret), "{secret:?} in /metrics");
    }

    // The key does reach the provider, with the configured model name and prefixes.
    app.put_document("owl", "an owl hunts quietly at night")
        .await;
    app.put_document("tea", "green tea is brewed below boiling")
        .await;
    let hits = app.query("owl at night", 2).await;
    assert_eq!(hits.hit_ids()[0], "owl", "{hits:?}");
    let requests = fake.requests();
    let inputs: Vec<&str> = requests.iter().map(|r| r.inputs[0].as_str()).collect();
    assert_eq!(
        inputs,
        [
            "passage: an owl hunts quietly at night",
            "passage: green tea is brewed below boiling",
            "query: owl at night"
        ]
    );
    let bearer = format!("Bearer {KEY}");
    for request in &requests {
        assert_eq!(request.authorization.as_deref(), Some(bearer.as_str()));
        assert_eq!(
            (request.model.as_str(), request.outcome),
            (PROVIDER_MODEL, Outcome::Embedded)
        );
    }
}
