//! Backfills against a real OpenAI-compatible server (`fake_openai`) that misbehaves: transient
//! failures, a poisoned input, an outage, 429s, slow answers and a request budget. Each test
//! checks the migration's counts and, from the provider's own log, that every document was
//! embedded exactly once.

use std::time::Duration;

use serde_json::json;

use crate::backfill::follow_to_completion;
use crate::fake_openai::{DIMENSIONS, FakeOpenAi, HELD, MODEL, Outcome, POISON};
use crate::helpers::{Api, PATIENCE, TestApp, corpus, eventually};
use crate::wire::{Migration, Progress};

/// Asserts that every text of `docs` went in exactly one request the fake answered in time,
/// and that nothing else did apart from the preflight probe (one text, outside the corpus).
pub fn assert_embedded_once(fake: &FakeOpenAi, docs: &[(String, String)]) {
    let mut counts = fake.embedded_counts();
    let wrong: Vec<_> = docs
        .iter()
        .filter_map(|(id, text)| match counts.remove(text) {
            Some(1) => None,
            times => Some((id, times.unwrap_or(0))),
        })
        .collect();
    assert!(
        wrong.is_empty(),
        "{} documents were not embedded exactly once, e.g. {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(5)]
    );
    assert!(
        counts.len() <= 1 && counts.values().all(|&n| n == 1),
        "only the preflight probe may be embedded besides the corpus: {counts:?}"
    );
}

/// Asserts every document is current in the fake's model; returns how many there are.
pub async fn assert_all_current_in_fake(api: &Api) -> usize {
    let docs = api.all_documents(1000).await;
    let stale: Vec<_> = docs.iter().filter(|d| !d.is_current_in(MODEL)).collect();
    assert!(
        stale.is_empty(),
        "{} documents lack a current {MODEL} vector, e.g. {:?}",
        stale.len(),
        stale.first()
    );
    docs.len()
}

/// `throttled_secs` of the migration's progress.
async fn throttled_secs(api: &Api, id: &str) -> f64 {
    let reply = api.get(&format!("/v1/migrations/{id}/progress")).await;
    let progress = reply.json();
    progress["throttled_secs"]
        .as_f64()
        .unwrap_or_else(|| panic!("no throttled_secs: {reply}"))
}

/// `n` corpus documents whose texts carry `marker`.
pub fn marked(prefix: &str, n: usize, marker: &str) -> Vec<(String, String)> {
    corpus(prefix, n)
        .into_iter()
        .map(|(id, text)| (id, format!("{text} {marker}")))
        .collect()
}

pub fn counts(p: &Progress) -> (u64, u64, u64, u64) {
    (p.total, p.processed, p.skipped, p.remaining)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_thirty_percent_transient_failures_every_document_is_embedded_exactly_once() {
    let fake = FakeOpenAi::start().await;
    // One batch is one request, so a failed request never leaves half a batch embedded.
    let app = TestApp::with_models(fake.registry("hash-v1", "max_batch = 50")).await;
    let docs = corpus("doc", 2000);
    app.load(&docs, 500).await;
    assert!(
        fake.requests().is_empty(),
        "hash-v1 writes never reach the fake"
    );

    fake.fail_transiently(3);
    let config = json!({ "batch_size": 50, "max_concurrent": 4 });
    let body = json!({ "id": "flaky", "target_model": MODEL, "config": config });
    app.start_migration(&body).await;
    let done = follow_to_completion(&app, "flaky", PATIENCE).await;

    assert_eq!(counts(&done), (2000, 2000, 0, 0), "{done:?}");
    assert_eq!((done.coverage, done.progress), (1.0, 1.0));
    assert!(app.skips("flaky").await.is_empty());
    assert_embedded_once(&fake, &docs);
    assert_eq!(assert_all_current_in_fake(&app).await, 2000);

    let requests = fake.requests();
    let failed: Vec<u16> = requests
        .iter()
        .filter_map(|r| match r.outcome {
            Outcome::Failed(status) => Some(status),
            _ => None,
        })
        .collect();
    assert!(
        failed.contains(&500) && failed.contains(&429),
        "both kinds of transient failure happened: {failed:?}"
    );
    assert!(
        failed.len() >= 3 * (requests.len() / 10),
        "three in every ten requests failed: {} of {}",
        failed.len(),
        requests.len()
    );
    assert!(
        throttled_secs(&app, "flaky").await > 0.0,
        "back-offs after 500s and 429s count as throttled time"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poisoned_document_is_skipped_with_its_reason_and_the_rest_embedded() {
    let fake = FakeOpenAi::start().await;
    let app = TestApp::with_models(fake.registry("hash-v1", "")).await;
    let mut docs = corpus("doc", 200);
    docs[77].1 = format!("{} {POISON}", docs[77].1);
    app.load(&docs, 200).await;
    fake.poison(true);

    let config = json!({ "batch_size": 50, "max_concurrent": 2 });
    let body = json!({ "id": "poisoned", "target_model": MODEL, "config": config });
    app.start_migration(&body).await;
    let done = follow_to_completion(&app, "poisoned", PATIENCE).await;

    assert_eq!(counts(&done), (200, 199, 1, 0), "{done:?}");
    assert_eq!(done.coverage, 1.0, "skips do not count against coverage");
    let skips = app.skips("poisoned").await;
    assert_eq!(skips.len(), 1, "{skips:?}");
    assert_eq!(skips[0].document_id, "doc-000077");
    let reason = &skips[0].reason;
    assert!(
        reason.contains("400") && reason.contains("input 0 is poisoned"),
        "the provider's own reason, for the document alone: {reason}"
    );

    let poisoned = app.get_document("doc-000077").await;
    assert!(poisoned.vector_version(MODEL).is_none(), "{poisoned:?}");
    let (healthy, _) = docs.split_at(77);
    let mut rest: Vec<(String, String)> = healthy.to_vec();
    rest.extend_from_slice(&docs[78..]);
    assert_embedded_once(&fake, &rest);
    let all = app.all_documents(1000).await;
    let stale: Vec<_> = all
        .iter()
        .filter(|d| d.id != "doc-000077" && !d.is_current_in(MODEL))
        .collect();
    assert!(stale.is_empty(), "{stale:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retrying_skips_of_a_paused_migration_embeds_them_once_the_provider_accepts_them() {
    let fake = FakeOpenAi::start().await;
    let app = TestApp::with_models(fake.registry("hash-v1", "")).await;
    // doc-000003 is poisoned in the first batch; the third batch (10..15) is held at the
    // provider, so the migration is still running when the skip is listed.
    let mut docs = corpus("doc", 10);
    docs[3].1 = format!("{} {POISON}", docs[3].1);
    docs.extend(marked("late", 10, HELD));
    app.load(&docs, 100).await;
    fake.poison(true);
    fake.hold();

    let config = json!({ "batch_size": 5, "max_concurrent": 1 });
    let body = json!({ "id": "retry", "target_model": MODEL, "config": config });
    app.start_migration(&body).await;
    eventually(PATIENCE, "a held batch after the skip", || async {
        let skipped = app.skips("retry").await.len();
        match (skipped, fake.held_requests()) {
            (1, 1) => Ok(()),
            seen => Err(format!("skips and held requests: {seen:?}")),
        }
    })
    .await;
    let paused: Migration = app.action("retry", "pause").await.ok();
    assert_eq!(paused.state, "paused");

    fake.poison(false);
    let retried: Migration = app.action("retry", "skips/retry").await.ok();
    assert_eq!(retried.state, "paused", "retrying skips does not resume");
    assert!(app.skips("retry").await.is_empty(), "the skip is re-queued");
    let progress = app.progress("retry").await;
    assert_eq!((progress.total, progress.skipped), (20, 0), "{progress:?}");

    fake.release();
    app.action("retry", "resume").await.ok::<Migration>();
    let done = app.wait_for_state("retry", "completed", PATIENCE).await;
    assert_eq!(counts(&done), (20, 20, 0, 0), "{done:?}");
    assert!(app.get_document("doc-000003").await.is_current_in(MODEL));
    assert_eq!(assert_all_current_in_fake(&app).await, 20);
    assert_embedded_once(&fake, &docs);

    let after = app.action("retry", "skips/retry").await;
    after.problem(409, "invalid-transition");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_dimension_mid_migration_fails_it_at_once_and_stores_nothing() {
    let fake = FakeOpenAi::start().await;
    let app = TestApp::with_models(fake.registry("hash-v1", "")).await;
    let docs = marked("doc", 30, HELD);
    app.load(&docs, 100).await;
    fake.hold();
    let config = json!({ "batch_size": 10, "max_concurrent": 1 });
    let body = json!({ "id": "resized", "target_model": MODEL, "config": config });
    app.start_migration(&body).await;

    // The model behind the URL changed after the preflight: no retry can help.
    fake.answer_dimensions(DIMENSIONS * 2);
    fake.release();
    let failed = app.wait_for_state("resized", "failed", PATIENCE).await;
    assert_eq!(failed.processed, 0, "{failed:?}");
    assert!(
        (1..=10).contains(&failed.failed),
        "one batch failed it at once, without waiting out the patience: {failed:?}"
    );
    let error = app.migration("resized").await.error.unwrap_or_default();
    assert!(
        error.contains("misconfigured") && error.contains(&(DIMENSIONS * 2).to_string()),
        "the error names the misconfiguration: {error}"
    );
    let stored = app.all_documents(100).await;
    assert!(stored.iter().all(|d| d.vector_version(MODEL).is_none()));

    fake.reset();
    app.action("resized", "resume").await.ok::<Migration>();
    let done = follow_to_completion(&app, "resized", PATIENCE).await;
    assert_eq!(counts(&done), (30, 30, 0, 0), "{done:?}");
    assert_embedded_once(&fake, &docs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_with_retry_after_holds_the_whole_model_and_counts_as_throttled() {
    let fake = FakeOpenAi::start().await;
    let app = TestApp::with_models(fake.registry("hash-v1", "")).await;
    let docs = corpus("doc", 40);
    app.load(&docs, 100).await;
    let config = json!({ "batch_size": 10, "max_concurrent": 2 });
    let body = json!({ "id": "busy", "target_model": MODEL, "config": config, "start": false });
    app.start_migration(&body).await;

    fake.throttle_next(1, 1);
    app.action("busy", "start").await.ok::<Migration>();
    let done = follow_to_completion(&app, "busy", PATIENCE).await;
    assert_eq!(counts(&done), (40, 40, 0, 0), "{done:?}");
    assert_embedded_once(&fake, &docs);

    let requests = fake.requests();
    let throttled = requests
        .iter()
        .find(|r| r.outcome == Outcome::Failed(429))
        .expect("the fake answered one 429");
    let retry = requests
        .iter()
        .find(|r| r.outcome == Outcome::Embedded && r.inputs == throttled.inputs)
        .expect("the throttled batch was sent again");
    let waited = retry.at - throttled.at;
    assert!(
        waited >= Duration::from_secs(1),
        "Retry-After: 1 honoured, waited {waited:?}"
    );
    // A request already on its way when the 429 arrived may land just after it; none is
    // sent later until the second is over.
    let early: Vec<_> = requests
        .iter()
        .filter(|r| r.at > throttled.at + Duration::from_millis(100))
        .filter(|r| r.at < throttled.at + Duration::from_secs(1))
        .map(|r| r.number)
        .collect();
    assert!(
        early.is_empty(),
        "requests during the model's pause: {early:?}"
    );
    let throttled_secs = throttled_secs(&app, "busy").await;
    assert!(throttled_secs >= 0.9, "throttled_secs: {throttled_secs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_slower_than_the_timeout_is_abandoned_and_retried() {
    let fake = FakeOpenAi::start().await;
    let app = TestApp::with_models(fake.registry("hash-v1", "timeout_secs = 1")).await;
    let docs = corpus("doc", 20);
    app.load(&docs, 100).await;
    let config = json!({ "batch_size": 10, "max_concurrent": 1 });
    let body = json!({ "id": "slow", "target_model": MODEL, "config": config, "start": false });
    app.start_migration(&body).await;

    fake.slow_next(1, Duration::from_secs(3));
    app.action("slow", "start").await.ok::<Migration>();
    let done = follow_to_completion(&app, "slow", PATIENCE).await;
    assert_eq!(counts(&done), (20, 20, 0, 0), "{done:?}");

    let requests = fake.requests();
    let late: Vec<_> = requests
        .iter()
        .filter(|r| r.outcome == Outcome::Late)
        .collect();
    assert_eq!(late.len(), 1, "{requests:?}");
    let retried = requests
        .iter()
        .filter(|r| r.outcome == Outcome::Embedded && r.inputs == late[0].inputs)
        .count();
    assert_eq!(retried, 1, "the abandoned request was sent again, once");
    assert_embedded_once(&fake, &docs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_per_minute_bounds_the_requests_the_provider_sees() {
    let fake = FakeOpenAi::start().await;
    // 600 requests a minute: a burst of 60, then one every 100 ms. Two texts per request, so
    // 150 documents are 75 requests, plus the preflight's one.
    let fields = "requests_per_minute = 600\nmax_batch = 2";
    let app = TestApp::with_models(fake.registry("hash-v1", fields)).await;
    let docs = corpus("doc", 150);
    app.load(&docs, 150).await;
    let config = json!({ "batch_size": 10, "max_concurrent": 4 });
    let body = json!({ "id": "paced", "target_model": MODEL, "config": config });
    app.start_migration(&body).await;
    let done = follow_to_completion(&app, "paced", PATIENCE).await;
    assert_eq!(counts(&done), (150, 150, 0, 0), "{done:?}");
    assert_embedded_once(&fake, &docs);

    let mut arrivals: Vec<_> = fake.requests().iter().map(|r| r.at).collect();
    arrivals.sort();
    assert_eq!(arrivals.len(), 76);
    // In any window of w seconds the provider may see at most the burst plus the rate's
    // share of the window: 60 + 10·w, plus 2 for the jitter between the client's clock
    // releasing a request and its arrival here.
    for (i, first) in arrivals.iter().enumerate() {
        for (j, last) in arrivals.iter().enumerate().skip(i) {
            let seen = (j - i + 1) as f64;
            let window = (*last - *first).as_secs_f64();
            let allowed = 60.0 + 10.0 * window + 2.0;
            assert!(
                seen <= allowed,
                "{seen} requests within {window:.3} s, at most {allowed:.1} allowed"
            );
        }
    }
    let span = *arrivals.last().unwrap() - arrivals[0];
    assert!(
        span >= Duration::from_millis(1400),
        "76 requests at 60 + 10/s take at least 1.5 s: {span:?}"
    );
    assert!(throttled_secs(&app, "paced").await > 0.0);
}
