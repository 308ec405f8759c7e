//! The backfill at scale: bounded batches and concurrency, routing before and after, counts
//! that never run backwards, and writes racing the backfill (DESIGN.md invariants 2–4).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::helpers::{Api, PATIENCE, POLL, TestApp, corpus};
use crate::probe::Probe;
use crate::wire::{Migration, Progress, QueryResult, Written};

/// Polls progress until `completed`, asserting on every sample that processed and skipped
/// never decrease (invariant 4) and that the counts stay consistent.
pub async fn follow_to_completion(api: &Api, id: &str, timeout: Duration) -> Progress {
    let deadline = Instant::now() + timeout;
    let mut last: Option<Progress> = None;
    loop {
        let now = api.progress(id).await;
        if let Some(prev) = &last {
            assert!(
                now.processed >= prev.processed,
                "processed ran backwards: {prev:?} -> {now:?}"
            );
            assert!(
                now.skipped >= prev.skipped,
                "skipped ran backwards: {prev:?} -> {now:?}"
            );
        }
        assert!(
            now.processed + now.skipped <= now.total,
            "counted past the total: {now:?}"
        );
        match now.state.as_str() {
            "completed" => return now,
            "in_progress" | "planned" => {}
            other => panic!("migration {id} became {other}: {now:?}"),
        }
        assert!(
            Instant::now() < deadline,
            "not completed within {timeout:?}: {now:?}"
        );
        last = Some(now);
        tokio::time::sleep(POLL).await;
    }
}

/// Asserts every listed document has a hash-v2 vector for its newest version; returns them.
pub async fn assert_all_current_in_target(api: &Api) -> Vec<crate::wire::Document> {
    let docs = api.all_documents(1000).await;
    let stale: Vec<_> = docs
        .iter()
        .filter(|d| !d.is_current_in("hash-v2"))
        .collect();
    assert!(
        stale.is_empty(),
        "{} documents lack a current hash-v2 vector, e.g. {:?}",
        stale.len(),
        stale.first()
    );
    docs
}

/// The 3 documents nearest to `text`, every vector scored.
async fn exact_query(app: &TestApp, text: &str) -> QueryResult {
    let body = json!({ "text": text, "top_k": 3, "exact": true });
    app.query_reply(&body).await.ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_thousand_documents_migrate_within_the_batch_and_concurrency_bounds() {
    let probe = Probe::new();
    let app = TestApp::with_models(probe.registry()).await;
    let docs = corpus("doc", 5000);
    app.load(&docs, 500).await;
    let config = json!({ "batch_size": 50, "max_concurrent": 4 });
    let body = json!({ "id": "big", "target_model": "hash-v2", "config": config, "start": false });
    app.start_migration(&body).await;

    // Exact: on PostgreSQL an HNSW walk among the many near-duplicates of this corpus may miss
    // the document itself (its graph differs with every build); routing is what is tested here.
    let before = exact_query(&app, &docs[4321].1).await;
    assert_eq!(
        (before.route.as_str(), before.model.as_str()),
        ("legacy", "hash-v1")
    );
    assert_eq!(before.hits[0].id, docs[4321].0);

    app.action("big", "start").await.ok::<Migration>();
    let done = follow_to_completion(&app, "big", PATIENCE * 2).await;
    assert_eq!(
        (done.total, done.processed, done.skipped, done.remaining),
        (5000, 5000, 0, 0)
    );
    assert_eq!(done.processed + done.skipped, done.total);
    assert_eq!((done.coverage, done.progress), (1.0, 1.0));

    let after = exact_query(&app, &docs[4321].1).await;
    assert_eq!(
        (after.route.as_str(), after.model.as_str()),
        ("target", "hash-v2")
    );
    assert_eq!(after.hits[0].id, docs[4321].0);

    let sizes = probe.batch_sizes();
    assert!(
        probe.max_in_flight() <= 4,
        "{} embed calls at once, max_concurrent 4",
        probe.max_in_flight()
    );
    assert!(
        sizes.iter().all(|&n| n <= 50),
        "a batch over 50: {:?}",
        sizes.iter().max()
    );
    assert!(
        sizes.iter().sum::<usize>() >= 5000,
        "every document was embedded"
    );

    let all = assert_all_current_in_target(&app).await;
    assert_eq!(all.len(), 5000);
    for (id, _) in docs.iter().step_by(500) {
        let doc = app.get_document(id).await;
        assert_eq!(doc.embeddings["hash-v2"].dimensions, 384);
        assert!(
            doc.is_current_in("hash-v2") && doc.is_current_in("hash-v1"),
            "{doc:?}"
        );
    }
}

/// What the writer task got acknowledged.
struct Writes {
    /// The last acknowledgement per document id (one writer, so it holds the newest version).
    acked: BTreeMap<String, Written>,
    /// Writes acknowledged while the migration was still `in_progress`.
    during_backfill: usize,
    /// New documents written while writes went to the source only (so they were queued).
    queued_inserts: u64,
}

/// Writes acknowledged while the migration runs before the writer stops. With `dual_write`
/// false every write queues its document, and the migration can only complete once the
/// queue drains, so the writer must stop at some point; 400 writes span the backfill.
const WRITES_DURING: usize = 400;

/// Updates existing documents and inserts new ones while the backfill runs: stops after
/// `WRITES_DURING` writes during the backfill, or after 20 more once it has completed.
async fn write_throughout(api: Api, existing: usize) -> Writes {
    let mut writes = Writes {
        acked: BTreeMap::new(),
        during_backfill: 0,
        queued_inserts: 0,
    };
    let mut after_completion = 0;
    for i in 0.. {
        let insert = i % 3 == 0;
        let id = if insert {
            format!("new-{i:05}")
        } else {
            format!("doc-{:06}", (i * 7919) % existing)
        };
        let written = api
            .put_document(&id, &format!("written {i} while the backfill runs"))
            .await;
        assert_routes_consistently(&written);
        if insert && written.write_route == "legacy" {
            writes.queued_inserts += 1;
        }
        writes.acked.insert(id, written);
        if api.progress("m").await.state == "in_progress" {
            writes.during_backfill += 1;
        } else {
            after_completion += 1;
        }
        if writes.during_backfill == WRITES_DURING || after_completion == 20 {
            break;
        }
    }
    writes
}

/// A write's `embedded_with` matches its `write_route`.
fn assert_routes_consistently(written: &Written) {
    let models: BTreeSet<&str> = written.embedded_with.iter().map(String::as_str).collect();
    let expected = match written.write_route.as_str() {
        "dual_write" => BTreeSet::from(["hash-v1", "hash-v2"]),
        "legacy" => BTreeSet::from(["hash-v1"]),
        other => panic!("write_route {other} during a migration: {written:?}"),
    };
    assert_eq!(models, expected, "{written:?}");
}

async fn writes_during_the_backfill_leave_no_stale_target_vector(dual_write: bool) {
    let probe = Probe::new();
    probe.slow_batches(Duration::from_millis(20));
    let app = TestApp::with_models(probe.registry()).await;
    let docs = corpus("doc", 2000);
    app.load(&docs, 500).await;
    let config = json!({ "batch_size": 20, "max_concurrent": 2, "dual_write": dual_write });
    app.start_migration(&json!({ "id": "m", "target_model": "hash-v2", "config": config }))
        .await;
    let writer = tokio::spawn(write_throughout(app.api.clone(), docs.len()));
    let done = follow_to_completion(&app, "m", PATIENCE * 2).await;
    let writes = writer.await.expect("the writer task");
    assert!(
        writes.during_backfill >= 10,
        "only {} writes overlapped the backfill",
        writes.during_backfill
    );

    for (id, written) in &writes.acked {
        let doc = app.get_document(id).await;
        assert_eq!(doc.version, written.version, "acknowledged version of {id}");
        assert!(doc.text.starts_with("written "), "{doc:?}");
        assert!(
            doc.is_current_in("hash-v2"),
            "stale or missing target vector: {doc:?}"
        );
        assert!(
            doc.is_current_in("hash-v1"),
            "stale or missing source vector: {doc:?}"
        );
    }
    let all = assert_all_current_in_target(&app).await;
    let inserted = writes
        .acked
        .keys()
        .filter(|id| id.starts_with("new-"))
        .count();
    assert_eq!(all.len(), docs.len() + inserted);

    let final_counts = app.progress("m").await;
    assert_eq!(
        (final_counts.skipped, final_counts.remaining),
        (0, 0),
        "{final_counts:?}"
    );
    assert_eq!(
        final_counts.processed + final_counts.skipped,
        final_counts.total,
        "{final_counts:?}"
    );
    if dual_write {
        assert_eq!(done.total, 2000, "dual writes queue nothing: {done:?}");
    } else {
        assert!(
            writes.queued_inserts > 0,
            "no insert was queued during the backfill"
        );
        assert!(
            done.total >= 2000 + writes.queued_inserts,
            "queued inserts count: {done:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_during_a_dual_write_backfill_leave_no_stale_target_vector() {
    writes_during_the_backfill_leave_no_stale_target_vector(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_during_a_queued_backfill_leave_no_stale_target_vector() {
    writes_during_the_backfill_leave_no_stale_target_vector(false).await;
}
