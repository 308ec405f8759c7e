//! `POST /v1/migrations/{id}/evaluate` (API.md "Confidence"): recall@k, MRR and nDCG@k of both
//! models on labelled queries, over the documents that have vectors in both, checked against
//! values computed here by hand.

use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::{PATIENCE, TestApp};
use crate::probe::{HELD, Probe};

/// Bag-of-words documents: both built-in models give texts that share more words a higher
/// cosine, so the rankings below hold in each model's own vector space. The `x` documents
/// share no word (and no trigram) with any query.
const CORPUS: [(&str, &str); 8] = [
    ("a1", "alpha"),
    ("a2", "alpha bravo"),
    ("a3", "alpha bravo charlie"),
    ("a4", "alpha bravo charlie delta"),
    ("x1", "echo foxtrot"),
    ("x2", "golf hotel"),
    ("x3", "kilo mike"),
    ("x4", "november oscar"),
];

/// The gain of a relevant hit at 1-based `rank`.
fn gain(rank: u32) -> f64 {
    1.0 / f64::from(rank + 1).log2()
}

fn close(got: &Value, want: f64) -> bool {
    got.as_f64().is_some_and(|got| (got - want).abs() < 1e-9)
}

/// A server with `CORPUS` on hash-v1 and a migration to hash-v2 that embedded all of it but
/// one held document, `zz-held` ("alpha ..."), which so has no hash-v2 vector.
async fn migrated_but_one() -> (TestApp, Probe) {
    let probe = Probe::new();
    probe.hold();
    let app = TestApp::with_models(probe.registry()).await;
    let mut docs: Vec<(String, String)> = CORPUS
        .iter()
        .map(|(id, text)| ((*id).to_owned(), (*text).to_owned()))
        .collect();
    docs.push(("zz-held".to_owned(), format!("alpha {HELD}")));
    app.bulk(&docs).await;
    let config = json!({ "batch_size": 1, "max_concurrent": 1 });
    app.start_migration(&json!({ "id": "m", "target_model": "hash-v2", "config": config }))
        .await;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while app.progress("m").await.processed < CORPUS.len() as u64 {
        assert!(tokio::time::Instant::now() < deadline, "backfill stuck");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (app, probe)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_models_are_scored_by_hand_over_the_documents_they_share() {
    let (app, probe) = migrated_but_one().await;
    let body = json!({
        "k": 3,
        "queries": [
            // Ranked a1, a2, a3: relevant at ranks 1 and 3.
            { "text": "alpha", "relevant_ids": ["a1", "a3"] },
            // Ranked a1, a2, a3: a4 is 4th, x1 nowhere near; zz-held and "gone" are excluded.
            { "text": "alpha", "relevant_ids": ["a4", "x1", "zz-held", "gone"] },
            // Ranked a4 (3 shared words), a3, a2.
            { "text": "bravo charlie delta", "relevant_ids": ["a4", "a4"] },
            // Nothing both models can be judged on: not scored.
            { "text": "alpha", "relevant_ids": ["zz-held"] },
        ]
    });
    let reply = app
        .send(
            reqwest::Method::POST,
            "/v1/migrations/m/evaluate",
            Some(&body),
        )
        .await;
    let evaluation: Value = reply.expect(200);

    assert_eq!(evaluation["k"], 3);
    assert_eq!(evaluation["queries"], 3, "{evaluation}");
    assert_eq!(
        evaluation["excluded_relevant"], 3,
        "zz-held twice, gone once"
    );
    let recall = (1.0 + 0.0 + 1.0) / 3.0;
    let mrr = (1.0 + 0.0 + 1.0) / 3.0;
    let first_ndcg = (gain(1) + gain(3)) / (gain(1) + gain(2));
    let ndcg = (first_ndcg + 0.0 + 1.0) / 3.0;
    for (side, model) in [("source", "hash-v1"), ("target", "hash-v2")] {
        let scores = &evaluation[side];
        assert_eq!(scores["model"], model);
        assert!(close(&scores["recall"], recall), "{side}: {scores}");
        assert!(close(&scores["mrr"], mrr), "{side}: {scores}");
        assert!(close(&scores["ndcg"], ndcg), "{side}: {scores}");
    }

    let kept: Value = app.get("/v1/migrations/m").await.ok();
    assert_eq!(
        kept["last_evaluation"], evaluation,
        "kept with the migration"
    );
    let history = app.history("m").await.events;
    let evaluated = history
        .iter()
        .find(|e| e.kind == "evaluated")
        .expect("recorded in the history");
    assert!(
        evaluated.detail.contains("3 queries at k 3"),
        "{evaluated:?}"
    );
    probe.release();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_evaluations_are_refused_and_keep_nothing() {
    let app = TestApp::spawn().await;
    app.bulk(&[("a1", "alpha")]).await;
    app.start_migration(&json!({ "id": "m", "target_model": "hash-v2", "start": false }))
        .await;
    let query = json!({ "text": "alpha", "relevant_ids": ["a1"] });
    for body in [
        json!({ "queries": [] }),
        json!({ "queries": [query], "k": 0 }),
        json!({ "queries": [query], "k": 1001 }),
        json!({ "queries": [{ "text": "alpha", "relevant_ids": vec!["a1"; 1001] }] }),
    ] {
        let reply = app
            .send(
                reqwest::Method::POST,
                "/v1/migrations/m/evaluate",
                Some(&body),
            )
            .await;
        reply.problem(422, "invalid-value");
    }
    for body in [
        json!({ "queries": "alpha" }),
        json!({ "queries": [{ "text": "alpha" }] }),
    ] {
        let reply = app
            .send(
                reqwest::Method::POST,
                "/v1/migrations/m/evaluate",
                Some(&body),
            )
            .await;
        reply.problem(400, "malformed-body");
    }
    let unknown = json!({ "queries": [query] });
    app.send(
        reqwest::Method::POST,
        "/v1/migrations/nope/evaluate",
        Some(&unknown),
    )
    .await
    .problem(404, "not-found");

    let kept: Value = app.get("/v1/migrations/m").await.ok();
    assert_eq!(kept["last_evaluation"], Value::Null);
    let kinds: Vec<String> = app
        .history("m")
        .await
        .events
        .into_iter()
        .map(|e| e.kind)
        .collect();
    assert_eq!(kinds, ["created"]);
}
