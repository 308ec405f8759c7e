//! No wasted embeddings (issue 14): a write whose text is unchanged keeps its vectors and
//! embeds nothing — only the version moves, and the vectors follow it. Embedding requests are
//! counted where they arrive: at the fake OpenAI provider, and at the probe standing in for
//! hash-v2.

use std::sync::Arc;

use reembed::embed::{ModelInfo, ModelRegistry};
use serde_json::{Value, json};

use crate::fake_openai::{FakeOpenAi, MODEL};
use crate::helpers::{PATIENCE, TestApp, corpus, eventually};
use crate::probe::{HELD, Probe};
use crate::wire::{QueryResult, Written};

/// A server whose active model is the fake provider's.
async fn served_by_the_fake() -> (FakeOpenAi, TestApp) {
    let fake = FakeOpenAi::start().await;
    let app = TestApp::with_models(fake.registry(MODEL, "")).await;
    (fake, app)
}

/// Bulk-writes `docs` in one request, each with the metadata of `round`.
async fn write_round(app: &TestApp, docs: &[(String, String)], round: u64) -> Vec<Written> {
    let documents: Vec<Value> = docs
        .iter()
        .map(|(id, text)| json!({ "id": id, "text": text, "metadata": { "round": round } }))
        .collect();
    let reply = app.bulk_reply(&json!({ "documents": documents })).await;
    reply.ok::<Value>()["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|result| serde_json::from_value(result.clone()).expect("a written result"))
        .collect()
}

/// Every input the fake was sent since its request number `since`.
fn inputs_since(fake: &FakeOpenAi, since: usize) -> Vec<String> {
    let requests = fake.requests().into_iter().skip(since);
    requests.flat_map(|request| request.inputs).collect()
}

/// The exact top hit for the text of `doc` among the documents `filter` matches.
async fn top_hit(app: &TestApp, (id, text): &(String, String), filter: Value) -> QueryResult {
    let body = json!({ "text": text, "top_k": 1, "exact": true, "filter": filter });
    let answer: QueryResult = app.query_reply(&body).await.ok();
    assert!(
        answer.hits.iter().all(|hit| &hit.id == id),
        "{id}: {answer:?}"
    );
    answer
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_metadata_only_rewrite_of_1000_documents_makes_no_embedding_request() {
    let (fake, app) = served_by_the_fake().await;
    let docs = corpus("doc", 1000);
    write_round(&app, &docs, 1).await;
    let requests = fake.requests().len();
    assert!(requests > 0, "the first write embeds");

    let written = write_round(&app, &docs, 2).await;
    assert_eq!(fake.requests().len(), requests, "no embedding request");
    assert!(
        written
            .iter()
            .all(|w| w.version == 2 && w.embedded_with == [MODEL]),
        "versions move to 2 and every document holds a current {MODEL} vector"
    );
    for document in app.all_documents(500).await {
        assert_eq!(document.version, 2, "{}", document.id);
        assert_eq!(document.embeddings[MODEL].version, 2, "{}", document.id);
        assert_eq!(document.metadata, json!({ "round": 2 }));
    }
    for doc in [&docs[0], &docs[499], &docs[999]] {
        let answer = top_hit(&app, doc, json!({ "round": 2 })).await;
        assert_eq!(answer.hits.len(), 1, "found at its new version: {answer:?}");
        let stale = top_hit(&app, doc, json!({ "round": 1 })).await;
        assert!(stale.hits.is_empty(), "the old metadata is gone: {stale:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rewrite_changing_half_the_texts_embeds_exactly_those() {
    let (fake, app) = served_by_the_fake().await;
    let docs = corpus("doc", 200);
    write_round(&app, &docs, 1).await;
    let requests = fake.requests().len();

    let rewritten: Vec<(String, String)> = docs
        .iter()
        .enumerate()
        .map(|(i, (id, text))| match i % 2 {
            0 => (id.clone(), format!("{text}, revised")),
            _ => (id.clone(), text.clone()),
        })
        .collect();
    let written = write_round(&app, &rewritten, 2).await;
    let mut embedded = inputs_since(&fake, requests);
    embedded.sort();
    let mut changed: Vec<String> = rewritten
        .iter()
        .step_by(2)
        .map(|(_, text)| text.clone())
        .collect();
    changed.sort();
    assert_eq!(
        embedded, changed,
        "the changed texts, each once, and no other"
    );
    assert!(written.iter().all(|w| w.version == 2));
    for doc in [&rewritten[0], &rewritten[1]] {
        let document = app.get_document(&doc.0).await;
        assert_eq!(
            (document.text.as_str(), document.embeddings[MODEL].version),
            (doc.1.as_str(), 2)
        );
        top_hit(&app, doc, json!({ "round": 2 })).await;
    }
}

/// The fake provider as the active model and the probe as hash-v2, the migration's target:
/// both counted.
fn fake_and_probe(fake: &FakeOpenAi, probe: &Probe) -> ModelRegistry {
    let mut models = fake.registry(MODEL, "");
    let info = ModelInfo {
        id: "hash-v2".into(),
        provider: "builtin".into(),
        dimensions: 384,
    };
    models.insert(info, Arc::new(probe.clone()));
    models
}

/// During a dual-writing migration, a rewrite of documents the backfill has reached keeps both
/// vectors: nothing is embedded by either model, the counts do not move, the backfill does not
/// embed them again, and the migration completes with processed + skipped = total.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rewrite_during_a_dual_writing_migration_keeps_both_vectors() {
    let (fake, probe) = (FakeOpenAi::start().await, Probe::new());
    let app = TestApp::with_models(fake_and_probe(&fake, &probe)).await;
    let reached = corpus("a", 200);
    // Last in id order, and held back: the migration stays in progress while they wait.
    let held: Vec<(String, String)> = corpus("z", 3)
        .into_iter()
        .map(|(id, text)| (id, format!("{text} {HELD}")))
        .collect();
    write_round(&app, &[reached.clone(), held].concat(), 1).await;
    probe.hold();
    let config = json!({ "batch_size": 50, "dual_write": true });
    app.start_migration(&json!({ "id": "m", "target_model": "hash-v2", "config": config }))
        .await;
    let before = eventually(
        PATIENCE,
        "the backfill reaches the held documents",
        || async {
            let progress = app.progress("m").await;
            match progress.processed {
                200 => Ok(progress),
                _ => Err(format!("{progress:?}")),
            }
        },
    )
    .await;
    let (requests, calls) = (fake.requests().len(), probe.batch_sizes().len());

    let written = write_round(&app, &reached, 2).await;
    assert_eq!(
        fake.requests().len(),
        requests,
        "nothing embedded by the source"
    );
    assert_eq!(
        probe.batch_sizes().len(),
        calls,
        "nothing embedded by the target"
    );
    let both = vec![MODEL.to_owned(), "hash-v2".to_owned()];
    assert!(
        written
            .iter()
            .all(|w| w.version == 2 && w.embedded_with == both)
    );
    let after = app.progress("m").await;
    assert_eq!(
        (after.total, after.processed, after.skipped),
        (before.total, before.processed, before.skipped),
        "counts unchanged"
    );
    let document = app.get_document(&reached[7].0).await;
    assert_eq!(document.embeddings[MODEL].version, 2);
    assert_eq!(document.embeddings["hash-v2"].version, 2);

    probe.release();
    let done = app.wait_for_state("m", "completed", PATIENCE).await;
    assert_eq!(done.processed + done.skipped, done.total);
    assert_eq!(done.total, 203);
    // The one text the migration's creation embeds to check the target, then each document
    // once: none of the rewritten ones again.
    let embedded: usize = probe.batch_sizes().iter().sum();
    assert_eq!(embedded, 1 + 203, "{:?}", probe.batch_sizes());
    let answer: QueryResult = app
        .query_reply(&json!({ "text": reached[7].1, "top_k": 1, "exact": true }))
        .await
        .ok();
    assert_eq!(
        (answer.model.as_str(), answer.hits[0].id.as_str()),
        ("hash-v2", reached[7].0.as_str())
    );
}

/// Many rewrites of one id at once, all with its unchanged text: each keep races the others,
/// and a write whose keep keeps conflicting embeds on its last attempt rather than failing
/// with 503, so a contended id cannot starve.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_rewrites_of_one_id_all_succeed() {
    let (_fake, app) = served_by_the_fake().await;
    let text = "a much rewritten document";
    app.put_document("hot", text).await;
    let rewrites = (0..16).map(|round| {
        let body = json!({ "text": text, "metadata": { "round": round } });
        let app = &app;
        async move { app.put_document_reply("hot", &body).await }
    });
    let replies = futures_util::future::join_all(rewrites).await;
    let mut versions: Vec<u64> = replies.iter().map(|r| r.ok::<Written>().version).collect();
    versions.sort_unstable();
    assert_eq!(versions, (2..=17).collect::<Vec<u64>>());
    let document = app.get_document("hot").await;
    assert_eq!(
        (document.version, document.embeddings[MODEL].version),
        (17, 17)
    );
}
