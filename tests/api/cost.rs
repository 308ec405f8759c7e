//! Cost and budget (issue 14): a priced model's migration counts the tokens its provider
//! reports in `usage` and turns them into money; `max_cost` pauses it, recorded as
//! `budget_paused`, before a batch would take the cost past the budget. One process reserves
//! the estimate of every batch it has in flight, so with usage equal to the estimate (as the
//! fake reports it for ASCII texts) the cost never passes `max_cost`: the overshoot bound is 0.

use std::time::Duration;

use serde_json::{Value, json};

use crate::backfill::follow_to_completion;
use crate::fake_openai::{FakeOpenAi, MODEL};
use crate::helpers::{PATIENCE, TestApp, eventually};
use crate::providers::assert_embedded_once;
use crate::wire::Progress;

/// The fake's price: half a unit per token, so that every cost here is exact in binary.
const PRICE: &str = "price_per_million_tokens = 500000";
const PER_TOKEN: f64 = 0.5;

/// The tokens the fake billed for backfill batches: its `usage` (bytes / 4, rounded up, per
/// input) of every request but the preflight probe.
fn billed_tokens(fake: &FakeOpenAi) -> u64 {
    fake.requests()
        .iter()
        .filter(|request| {
            !request
                .inputs
                .iter()
                .any(|i| i.starts_with("reembed preflight"))
        })
        .flat_map(|request| request.inputs.iter())
        .map(|input| input.len().div_ceil(4) as u64)
        .sum()
}

/// `n` documents of exactly 40 ASCII characters: 10 tokens each, by `usage` and by estimate.
fn ten_token_docs(n: usize) -> Vec<(String, String)> {
    (0..n)
        .map(|i| {
            let text = format!("ten-token document number {i:04} padded...");
            assert_eq!(text.len(), 40);
            (format!("doc-{i:04}"), text)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_reports_the_tokens_the_provider_billed_and_their_cost() {
    let fake = FakeOpenAi::start().await;
    let app = TestApp::with_models(fake.registry("hash-v1", PRICE)).await;
    // Accented letters take two bytes: the fake's usage (bytes / 4) differs from the
    // estimate (characters / 4), so the count below can only have come from `usage`.
    let docs: Vec<(String, String)> = (0..30)
        .map(|i| {
            (
                format!("d-{i:03}"),
                format!("déjà vu, café crème number {i}"),
            )
        })
        .collect();
    app.load(&docs, 100).await;
    let plan = app
        .create_migration(&json!({ "target_model": MODEL, "dry_run": true }))
        .await
        .json();
    let chars: usize = docs.iter().map(|(_, text)| text.chars().count()).sum();
    let estimated = chars.div_ceil(4) as u64;
    assert_eq!(plan["estimated_tokens"], json!(estimated), "{plan}");
    assert_eq!(
        plan["estimated_cost"],
        json!(estimated as f64 * PER_TOKEN),
        "{plan}"
    );

    let config = json!({ "batch_size": 7, "max_concurrent": 2 });
    let body = json!({ "id": "priced", "target_model": MODEL, "config": config });
    app.start_migration(&body).await;
    let done = follow_to_completion(&app, "priced", PATIENCE).await;

    // Each document once (the preflight probes of the dry run and the start aside).
    let billed = billed_tokens(&fake);
    let usage: u64 = docs.iter().map(|(_, t)| t.len().div_ceil(4) as u64).sum();
    assert_eq!(billed, usage);
    assert_ne!(
        billed, estimated,
        "the texts must tell usage from the estimate"
    );
    assert_eq!(done.tokens_embedded, billed, "{done:?}");
    assert_eq!(done.cost_so_far, Some(billed as f64 * PER_TOKEN));
    assert_eq!(done.cost_remaining_estimate, Some(0.0));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_budget_pauses_the_migration_before_it_is_exceeded_until_raised() {
    let fake = FakeOpenAi::start().await;
    let app = TestApp::with_models(fake.registry("hash-v1", PRICE)).await;
    let docs = ten_token_docs(40);
    app.load(&docs, 100).await;
    // 40 documents of 10 tokens cost 200; batches of 5 cost 25 each: at most 4 fit in 110.
    let (max_cost, batch_cost) = (110.0, 25.0);
    let config = json!({ "batch_size": 5, "max_concurrent": 2, "max_cost": max_cost });
    let body = json!({ "id": "budget", "target_model": MODEL, "config": config });
    app.start_migration(&body).await;

    let paused = settled_paused(&app, "budget").await;
    let reason = app.get("/v1/migrations/budget").await.json()["pause_reason"].clone();
    let reason = reason.as_str().unwrap_or_default().to_owned();
    assert!(reason.starts_with("budget: "), "{reason}");
    assert!(reason.contains("over max_cost 110"), "{reason}");
    let spent = paused.cost_so_far.expect("a priced target");
    // The bound of one process whose provider bills what it estimates: none over the budget.
    assert!(spent <= max_cost, "{spent} over {max_cost}: {paused:?}");
    assert!(
        spent + batch_cost > max_cost,
        "stopped a batch early: {paused:?}"
    );
    assert!(paused.remaining > 0, "{paused:?}");
    assert_eq!(paused.tokens_embedded, billed_tokens(&fake), "{paused:?}");
    assert!(billed_tokens(&fake) as f64 * PER_TOKEN <= max_cost);
    assert_eq!(
        paused.cost_remaining_estimate,
        Some(paused.remaining as f64 * 10.0 * PER_TOKEN)
    );
    let entry = budget_entries(&app, "budget").await;
    assert_eq!(entry.len(), 1, "{entry:?}");
    assert_eq!(entry[0]["actor"], "service", "{entry:?}");

    // Resumed without more budget, it pauses again at once, spending nothing.
    app.action("budget", "resume").await.expect::<Value>(200);
    let again = settled_paused(&app, "budget").await;
    assert_eq!(again.tokens_embedded, paused.tokens_embedded, "{again:?}");
    assert_eq!(budget_entries(&app, "budget").await.len(), 2);

    let raised = app
        .patch_config("budget", &json!({ "max_cost": 1000 }))
        .await;
    assert_eq!(
        raised.json()["config"]["max_cost"],
        json!(1000.0),
        "{raised}"
    );
    app.action("budget", "resume").await.expect::<Value>(200);
    let done = follow_to_completion(&app, "budget", PATIENCE).await;
    assert_embedded_once(&fake, &docs);
    assert_eq!(done.tokens_embedded, 400, "{done:?}");
    assert_eq!(done.tokens_embedded, billed_tokens(&fake));
    assert_eq!(done.cost_so_far, Some(200.0));
    app.stop().await;
}

/// Waits until the migration is paused with no batch in flight (those in flight when it
/// paused finish and count).
async fn settled_paused(app: &TestApp, id: &str) -> Progress {
    eventually(
        Duration::from_secs(60),
        "a settled budget pause",
        || async {
            let progress = app.progress(id).await;
            match (progress.state.as_str(), progress.in_flight_batches) {
                ("paused", 0) => Ok(progress),
                _ => Err(format!("{progress:?}")),
            }
        },
    )
    .await
}

/// The migration's `budget_paused` history entries.
async fn budget_entries(app: &TestApp, id: &str) -> Vec<Value> {
    let history = app
        .get(&format!("/v1/migrations/{id}/history"))
        .await
        .json();
    history["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter(|event| event["kind"] == "budget_paused")
        .cloned()
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_price_costs_are_null_and_a_budget_is_refused() {
    let app = TestApp::spawn().await;
    let docs = ten_token_docs(12);
    app.load(&docs, 100).await;
    let budgeted = json!({ "target_model": "hash-v2", "config": { "max_cost": 5 } });
    let refused = app.create_migration(&budgeted).await;
    let problem = refused.problem(422, "invalid-config");
    assert!(problem.detail().contains("max_cost"), "{problem:?}");
    let plan = app
        .create_migration(&json!({ "target_model": "hash-v2", "dry_run": true }))
        .await
        .json();
    assert_eq!(plan["estimated_cost"], Value::Null, "{plan}");

    let body = json!({ "id": "free", "target_model": "hash-v2", "start": false });
    app.start_migration(&body).await;
    let patch = app.patch_config("free", &json!({ "max_cost": 5 })).await;
    patch.problem(422, "invalid-config");
    let lifted = app.patch_config("free", &json!({ "max_cost": null })).await;
    assert_eq!(lifted.json()["config"]["max_cost"], Value::Null, "{lifted}");
    app.action("free", "start").await.expect::<Value>(200);
    let done = follow_to_completion(&app, "free", PATIENCE).await;
    // The built-in model reports no usage: its tokens are estimated, 10 per document.
    assert_eq!(done.tokens_embedded, 120, "{done:?}");
    assert_eq!(
        (done.cost_so_far, done.cost_remaining_estimate),
        (None, None)
    );
    app.stop().await;
}

#[tokio::test]
async fn the_model_list_shows_a_configured_price_only() {
    let fake = FakeOpenAi::start().await;
    let app = TestApp::with_models(fake.registry("hash-v1", PRICE)).await;
    let models = app.get("/v1/models").await.json();
    let listed = models["models"].as_array().expect("models");
    let price = |id: &str| {
        let model = listed.iter().find(|m| m["id"] == id).expect(id);
        model.get("price_per_million_tokens").cloned()
    };
    assert_eq!(price(MODEL), Some(json!(500000.0)), "{models}");
    assert_eq!(price("hash-v1"), None, "{models}");
    app.stop().await;
}
