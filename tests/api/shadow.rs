//! Shadow reads and `GET /v1/migrations/{id}/comparison` (API.md "Confidence",
//! `shadow_percent`): a target built to agree with the source, one built to disagree, the
//! worst queries kept for a person, and that the shadow side never slows an answer down.
//!
//! The corpus has `TOPICS` topic words with `PER_TOPIC` documents each (one topic word and a
//! word of its own), so a query of one topic word ranks exactly that topic's documents first
//! in hash-v1. The test models are hash-v1's vectors under another id: the twin reads queries
//! as they are, the contrary reads each topic word of a query as the topic `TOPICS / 2` away,
//! so its top k for a topic is another topic's documents.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use reembed::embed::builtin::HashEmbedder;
use reembed::embed::{EmbedError, Embedder, ModelInfo, ModelRegistry};
use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{PATIENCE, TestApp, eventually};
use crate::probe::{HELD, Probe};
use crate::wire::Comparison;

const TOPICS: [&str; 20] = [
    "river", "mountain", "lantern", "harbor", "orchard", "meadow", "glacier", "canyon", "falcon",
    "willow", "ember", "tide", "copper", "violet", "saffron", "marble", "thistle", "cobalt",
    "juniper", "quartz",
];

/// Documents per topic: more than k, so a topic's top k never reaches another topic.
const PER_TOPIC: usize = 12;

/// The corpus: `t07-03` is the fourth document on topic 7.
fn corpus() -> Vec<(String, String)> {
    let mut docs = Vec::new();
    for (t, topic) in TOPICS.iter().enumerate() {
        for j in 0..PER_TOPIC {
            docs.push((format!("t{t:02}-{j:02}"), format!("{topic} item{t}x{j}")));
        }
    }
    docs
}

/// The document ids of topic `t` that a top 10 holds.
fn top_of(t: usize) -> Vec<String> {
    (0..10).map(|j| format!("t{t:02}-{j:02}")).collect()
}

/// hash-v1's vectors under another model id; queries are read through `read_query`.
struct HashV1As {
    inner: HashEmbedder,
    read_query: fn(&str) -> String,
}

#[async_trait]
impl Embedder for HashV1As {
    fn dimensions(&self) -> usize {
        self.inner.dimensions()
    }

    async fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, EmbedError> {
        self.inner.embed(texts).await
    }

    async fn embed_query(&self, text: &str) -> Result<Vec<f32>, EmbedError> {
        Ok(self.inner.embed_one(&(self.read_query)(text)))
    }
}

/// Each topic word of `text` read as the topic half the list away; other words as they are.
fn contrary(text: &str) -> String {
    text.split_whitespace()
        .map(|word| match TOPICS.iter().position(|t| *t == word) {
            Some(t) => TOPICS[(t + TOPICS.len() / 2) % TOPICS.len()],
            None => word,
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The built-in registry plus `id`, hash-v1's vectors with queries read by `read_query`.
fn registry_with(id: &str, read_query: fn(&str) -> String) -> ModelRegistry {
    let mut models = ModelRegistry::builtin();
    let info = ModelInfo {
        id: id.into(),
        provider: "builtin".into(),
        dimensions: 256,
    };
    let model = HashV1As {
        inner: HashEmbedder::hash_v1(),
        read_query,
    };
    models.insert(info, Arc::new(model));
    models
}

/// A server with the corpus migrated to `target` (completed, inside its rollback window, so
/// the target answers and the source is shadowed) with `shadow_percent` 100.
async fn migrated_to(target: &str, read_query: fn(&str) -> String) -> TestApp {
    let app = TestApp::with_models(registry_with(target, read_query)).await;
    app.load(&corpus(), 100).await;
    let config = json!({ "shadow_percent": 100 });
    app.start_migration(&json!({ "id": "m", "target_model": target, "config": config }))
        .await;
    app.wait_for_state("m", "completed", PATIENCE).await;
    app
}

/// Sends each of `texts` as a query and waits until the comparison holds that many samples.
async fn shadowed(app: &TestApp, texts: &[String]) -> Comparison {
    for text in texts {
        app.query_reply(&json!({ "text": text, "top_k": 5 }))
            .await
            .ok::<Value>();
    }
    let wanted = texts.len() as u64;
    eventually(PATIENCE, "every query sampled", || async {
        let comparison = app.comparison("m").await;
        if comparison.samples >= wanted {
            Ok(comparison)
        } else {
            Err(format!("{comparison:?}"))
        }
    })
    .await
}

fn topic_queries() -> Vec<String> {
    TOPICS.iter().map(|t| (*t).to_owned()).collect()
}

/// Also: the samples survive a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_built_to_agree_overlaps_fully() {
    let app = migrated_to("hash-v1-twin", str::to_owned).await;
    let comparison = shadowed(&app, &topic_queries()).await;
    assert_eq!(comparison.samples, 20);
    assert_eq!(comparison.k, 10);
    assert_eq!(comparison.mean_overlap, Some(1.0), "{comparison:?}");
    assert_eq!(comparison.p10_overlap, Some(1.0), "{comparison:?}");
    assert_eq!(comparison.dropped, 0);
    for side in [&comparison.source_latency_ms, &comparison.target_latency_ms] {
        assert!(side.p50.is_some_and(|p50| p50 > 0.0), "{comparison:?}");
        assert!(side.p99 >= side.p50, "{comparison:?}");
    }
    let first = &comparison.worst[0];
    assert_eq!(first.source_hits, first.target_hits);

    let app = app
        .restart(registry_with("hash-v1-twin", str::to_owned))
        .await;
    let restarted = app.comparison("m").await;
    assert_eq!(
        (
            restarted.samples,
            restarted.mean_overlap,
            restarted.worst.len()
        ),
        (20, Some(1.0), 20),
        "kept across a restart"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_built_to_disagree_overlaps_barely_and_the_comparison_says_so() {
    let app = migrated_to("hash-v1-contrary", contrary).await;
    let comparison = shadowed(&app, &topic_queries()).await;
    assert_eq!(comparison.samples, 20);
    let mean = comparison.mean_overlap.expect("samples");
    assert!(mean < 0.3, "{comparison:?}");
    assert!(comparison.p10_overlap.expect("samples") < 0.3);
    // The target answered "river" with ember's documents; the shadowed source with river's.
    let river = comparison
        .worst
        .iter()
        .find(|w| w.text == "river")
        .expect("river among the worst");
    assert_eq!(river.source_hits, top_of(0));
    assert_eq!(river.target_hits, top_of(10));
}

/// At most 20 worst queries, lowest overlap first, each with its text (cut to 1,000
/// characters) and both hit lists.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worst_queries_are_the_twenty_lowest_with_texts_cut_to_a_thousand_characters() {
    let app = migrated_to("hash-v1-contrary", contrary).await;
    // Twelve single topics disagree (overlap 0); a topic with its contrary agrees (1.0).
    let long = format!("river {}", ".".repeat(1_500));
    let mut texts: Vec<String> = TOPICS[1..12].iter().map(|t| (*t).to_owned()).collect();
    texts.push(long.clone());
    texts.extend((0..10).map(|t| format!("{} {}", TOPICS[t], TOPICS[t + 10])));
    let comparison = shadowed(&app, &texts).await;
    assert_eq!(comparison.samples, 22);
    let overlaps: Vec<f64> = comparison.worst.iter().map(|w| w.overlap).collect();
    let mut expected = vec![0.0; 12];
    expected.extend([1.0; 8]);
    assert_eq!(overlaps, expected, "lowest first, twenty at most");
    let cut = comparison
        .worst
        .iter()
        .find(|w| w.text.starts_with("river"))
        .expect("the long query is among the worst");
    assert_eq!(cut.text.chars().count(), 1_000);
    assert_eq!(cut.text, long.chars().take(1_000).collect::<String>());
    assert_eq!(
        (cut.source_hits.clone(), cut.target_hits.clone()),
        (top_of(0), top_of(10))
    );
}

/// Latency of answering `QUERIES` queries one after the other, in milliseconds, sorted.
async fn answer_times(app: &TestApp, n: usize) -> Vec<f64> {
    let mut times = Vec::with_capacity(n);
    for i in 0..n {
        let started = Instant::now();
        let text = TOPICS[i % TOPICS.len()];
        app.query_reply(&json!({ "text": text, "top_k": 5 }))
            .await
            .ok::<Value>();
        times.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    times.sort_by(f64::total_cmp);
    times
}

/// Answers timed one after the other for each share.
const QUERIES: usize = 30;
/// The shadow side's provider (the probe, hash-v2) takes this long for each text.
const SHADOW_DELAY: Duration = Duration::from_secs(1);

/// Issue 14's "must show": with the shadow side slowed down to `SHADOW_DELAY` a text, answers
/// take as long with every query shadowed as with none, and a flood beyond the queue is
/// dropped and counted without any answer waiting for the shadow side.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_shadow_side_adds_no_latency_and_a_full_queue_drops_and_counts() {
    let probe = Probe::new();
    probe.hold();
    let app = TestApp::with_models(probe.registry()).await;
    let mut docs = corpus();
    docs.push(("zz-held".to_owned(), format!("{HELD} last")));
    app.load(&docs, 100).await;
    // Batches of 40 leave the held document alone in the last one, which keeps the migration
    // under its threshold: the source answers.
    let config = json!({ "batch_size": 40, "target_query_threshold": 1.0 });
    app.start_migration(&json!({ "id": "m", "target_model": "hash-v2", "config": config }))
        .await;
    eventually(PATIENCE, "the corpus backfilled", || async {
        let progress = app.progress("m").await;
        (progress.processed == docs.len() as u64 - 1)
            .then_some(())
            .ok_or(format!("{progress:?}"))
    })
    .await;

    let unshadowed = answer_times(&app, QUERIES).await;
    probe.serve_serially(SHADOW_DELAY);
    app.patch_config("m", &json!({ "shadow_percent": 100 }))
        .await
        .ok::<Value>();
    let shadowed = answer_times(&app, QUERIES).await;
    let (before, after) = (unshadowed[QUERIES / 2], shadowed[QUERIES / 2]);
    assert!(
        after <= 2.0 * before + 10.0,
        "median {after:.1} ms shadowed, {before:.1} ms not: {shadowed:?}"
    );
    let slowest = shadowed[QUERIES - 1];
    assert!(
        slowest < 500.0,
        "an answer took {slowest:.1} ms: {shadowed:?}"
    );

    flood_beyond_the_queue(&app).await;
    let comparison = eventually(PATIENCE, "drops and a sample recorded", || async {
        let comparison = app.comparison("m").await;
        (comparison.dropped > 0 && comparison.samples > 0)
            .then_some(())
            .ok_or(format!("{comparison:?}"))
            .map(|()| comparison)
    })
    .await;
    assert!(comparison.target_latency_ms.p50.expect("a sample") >= 1000.0);
    let metrics = app.get("/metrics").await.body;
    assert!(
        metrics.contains("reembed_shadow_dropped_total"),
        "{metrics}"
    );
    probe.release();
}

/// More queries than the queue holds, eight at a time: every one answered well under the
/// shadow side's delay.
async fn flood_beyond_the_queue(app: &TestApp) {
    let senders: Vec<_> = (0..8)
        .map(|sender| {
            let api = app.api.clone();
            tokio::spawn(async move {
                let mut slowest = Duration::ZERO;
                for i in 0..50 {
                    let started = Instant::now();
                    let text = TOPICS[(sender + i) % TOPICS.len()];
                    api.query_reply(&json!({ "text": text }))
                        .await
                        .ok::<Value>();
                    slowest = slowest.max(started.elapsed());
                }
                slowest
            })
        })
        .collect();
    for sender in senders {
        let slowest = sender.await.expect("a sender");
        assert!(slowest < SHADOW_DELAY / 2, "an answer took {slowest:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_percent_outside_0_to_100_is_422_and_an_unknown_migration_404() {
    let app = TestApp::spawn().await;
    for value in ["101", "-1"] {
        let body =
            format!(r#"{{"target_model": "hash-v2", "config": {{"shadow_percent": {value}}}}}"#);
        let reply = app
            .send_raw(
                Method::POST,
                "/v1/migrations",
                Some(("application/json", body)),
            )
            .await;
        let problem = reply.problem(422, "invalid-config");
        assert!(problem.detail().contains("shadow_percent"), "{reply}");
    }
    assert!(app.migrations().await.is_empty());
    let body = json!({ "id": "m", "target_model": "hash-v2", "start": false,
                       "config": { "shadow_percent": 2.5 } });
    let created = app.start_migration(&body).await;
    assert_eq!(created.config.shadow_percent, 2.5);
    for value in [101, -1] {
        let reply = app
            .patch_config("m", &json!({ "shadow_percent": value }))
            .await;
        let problem = reply.problem(422, "invalid-config");
        assert!(problem.detail().contains("shadow_percent"), "{reply}");
    }
    assert_eq!(app.migration("m").await.config, created.config);

    let empty = app.comparison("m").await;
    assert_eq!((empty.samples, empty.dropped, empty.k), (0, 0, 10));
    assert_eq!((empty.mean_overlap, empty.p10_overlap), (None, None));
    assert_eq!(
        (empty.source_latency_ms.p50, empty.target_latency_ms.p99),
        (None, None)
    );
    assert!(empty.worst.is_empty());
    app.get("/v1/migrations/nope/comparison")
        .await
        .problem(404, "not-found");
}

/// The cutover gate judges the shadow samples: behind `min_samples` 20 and `min_overlap` 0.9,
/// a backfilled migration to a target built to agree stays in progress until twenty shadowed
/// queries agree, then completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agreeing_samples_let_a_gate_on_overlap_pass_and_the_migration_complete() {
    let app = TestApp::with_models(registry_with("hash-v1-twin", str::to_owned)).await;
    app.load(&corpus(), 100).await;
    let gate = json!({ "min_samples": 20, "min_overlap": 0.9 });
    let config = json!({ "shadow_percent": 100, "cutover_gate": gate });
    app.start_migration(&json!({ "id": "m", "target_model": "hash-v1-twin", "config": config }))
        .await;
    let blocked = eventually(PATIENCE, "the backfill done behind the gate", || async {
        let progress = app.progress("m").await;
        (progress.remaining == 0)
            .then_some(())
            .ok_or(format!("{progress:?}"))
            .map(|()| progress)
    })
    .await;
    assert_eq!(blocked.state, "in_progress", "{blocked:?}");
    assert_eq!(blocked.gate.state, "blocked", "{blocked:?}");
    assert!(
        blocked.gate.reason.contains("of 20 shadow samples"),
        "{blocked:?}"
    );

    let comparison = shadowed(&app, &topic_queries()).await;
    assert_eq!(comparison.mean_overlap, Some(1.0), "{comparison:?}");
    app.wait_for_state("m", "completed", PATIENCE).await;
}

/// The same gate behind a target built to disagree: twenty shadowed queries overlap barely, so
/// the gate stays blocked, the migration in progress and queries on the source; an override
/// with a reason lets it complete, and the history keeps the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disagreeing_samples_keep_a_gate_on_overlap_blocked_until_an_override() {
    let app = TestApp::with_models(registry_with("hash-v1-contrary", contrary)).await;
    app.load(&corpus(), 100).await;
    let gate = json!({ "min_samples": 20, "min_overlap": 0.9 });
    let config =
        json!({ "shadow_percent": 100, "cutover_gate": gate, "target_query_threshold": 0.5 });
    app.start_migration(
        &json!({ "id": "m", "target_model": "hash-v1-contrary", "config": config }),
    )
    .await;
    eventually(PATIENCE, "the backfill done behind the gate", || async {
        let progress = app.progress("m").await;
        (progress.remaining == 0)
            .then_some(())
            .ok_or(format!("{progress:?}"))
    })
    .await;

    let comparison = shadowed(&app, &topic_queries()).await;
    assert!(
        comparison.mean_overlap.expect("samples") < 0.3,
        "{comparison:?}"
    );
    let blocked = eventually(PATIENCE, "the gate judging 20 samples", || async {
        let progress = app.progress("m").await;
        progress
            .gate
            .reason
            .contains("is below 0.900 over")
            .then_some(())
            .ok_or(format!("{:?}", progress.gate))
            .map(|()| progress)
    })
    .await;
    assert_eq!(
        (blocked.state.as_str(), blocked.gate.state.as_str()),
        ("in_progress", "blocked")
    );
    let held: Value = app
        .query_reply(&json!({ "text": "river", "top_k": 3 }))
        .await
        .ok();
    assert_eq!(held["reason"], "gate_blocked", "{held}");

    let body = json!({ "reason": "the new model is better on our own judgement" });
    app.send(
        reqwest::Method::POST,
        "/v1/migrations/m/cutover",
        Some(&body),
    )
    .await
    .ok::<Value>();
    app.wait_for_state("m", "completed", PATIENCE).await;
    let history = app.history("m").await.events;
    let overridden = history
        .iter()
        .find(|e| e.kind == "gate_overridden")
        .expect("the override is recorded");
    assert_eq!(
        overridden.detail,
        "the new model is better on our own judgement"
    );
}
