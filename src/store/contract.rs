//! The contract every `Store` backend keeps, as one suite of tests that each backend runs
//! against a real database of its own (`contract_tests!`): the write path's queue rule, the
//! backfill's compare-and-set, lifecycle conflicts, counts under concurrency, and what survives
//! a reopen — invariants 2 to 5 of DESIGN.md. What only one backend has (its pragmas, its
//! files, how it reports corrupt rows) is tested beside that backend.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, TimeZone, Utc};
use futures_util::{FutureExt, TryStreamExt};
use serde_json::json;

use crate::domain::comparison::{SAMPLES_KEPT, WORST_KEPT};
use crate::domain::{
    Actor, BackfillConfig, Cause, ComparisonData, Counts, Event, HistoryEvent, HistoryKind,
    Migration, MigrationState, ShadowEvidence, ShadowSample,
};
use crate::store::{
    AfterCommit, BatchItem, Claim, ClaimOutcome, CleanupStep, CountsDelta, DocumentWrite, Kept,
    LeaseRequest, ReplicaProgress, Store, StoreError, StoredVector, VectorInfo,
};

/// A backend under test, with a database of its own.
#[async_trait]
pub(crate) trait Backend: Send + Sync {
    /// Opens the backend's database: empty the first time, and afterwards as the previous
    /// handle left it when it was closed, as a restarted process finds it.
    async fn open(&self) -> Arc<dyn Store>;
    /// The migration's backfill queue as (document id, document version) in id order, read
    /// straight from the database: leased or not, whatever the migration's state.
    async fn queued(&self, migration_id: &str) -> Vec<(String, u64)>;
}

/// Runs each contract test named after `=>` against the backend that `$backend` (a future of a
/// [`Backend`]) makes, as one `#[tokio::test]` per name. A contract test left out of the list
/// is dead code, which the lints refuse.
macro_rules! contract_tests {
    ($backend:expr => $($name:ident),+ $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let backend = $backend.await;
                $crate::store::contract::$name(&backend).await;
            }
        )+
    };
}
pub(crate) use contract_tests;

pub(crate) const SOURCE: &str = "hash-v1";

const TARGET: &str = "hash-v2";

/// The target of a second migration, after `SOURCE` → `TARGET` completed.
const THIRD: &str = "hash-v3";

/// Every vector of `model`, as the index loads them.
pub(crate) async fn all_vectors(
    store: &dyn Store,
    model: &str,
) -> Result<Vec<StoredVector>, StoreError> {
    store.vectors(model).try_collect().await
}

/// A write of `id` with the given text, embedded with `models`.
pub(crate) fn write_text(id: &str, text: &str, models: &[&str]) -> DocumentWrite {
    DocumentWrite {
        id: id.to_owned(),
        text: text.to_owned(),
        metadata: json!({ "source": "test" }),
        vectors: models
            .iter()
            .map(|m| ((*m).to_owned(), vector_of(m, text)))
            .collect(),
        kept: None,
    }
}

pub(crate) fn write(id: &str, models: &[&str]) -> DocumentWrite {
    write_text(id, &format!("text of {id}"), models)
}

/// A write of `id` with `text` and `metadata` that embeds nothing and keeps the vectors of
/// `models` stored at `version`.
fn keeping(id: &str, text: &str, version: u64, models: &[&str]) -> DocumentWrite {
    DocumentWrite {
        metadata: json!({ "source": "kept", "round": version + 1 }),
        kept: Some(Kept {
            version,
            models: models.iter().map(|m| (*m).to_owned()).collect(),
        }),
        ..write_text(id, text, &[])
    }
}

/// What a write of `text` over the stored document `id` may keep, as `Documents` reads it.
async fn keep_read(store: &dyn Store, id: &str, text: &str) -> Option<Kept> {
    let stored = store.stored_documents(&[id.to_owned()]).await.unwrap();
    Kept::read_all(&stored, [(id, text)]).remove(0)
}

/// A vector that differs by model and text, so tests can tell which write produced it.
fn vector_of(model: &str, text: &str) -> Vec<f32> {
    let seed = (model.len() * 31 + text.len()) as f32;
    vec![seed, -seed / 3.0, 0.25]
}

pub(crate) async fn put(store: &dyn Store, writes: Vec<DocumentWrite>) {
    store.write_documents(&writes).await.expect("write");
}

/// A timestamp with nanoseconds, to show they survive storage.
fn at(secs: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(1_700_000_000 + secs, 123_456_789)
        .single()
        .expect("valid time")
}

pub(crate) fn planned(id: &str) -> Migration {
    Migration::plan(
        id.to_owned(),
        SOURCE.to_owned(),
        TARGET.to_owned(),
        BackfillConfig::default(),
        at(0),
    )
}

/// Who makes the contract tests' changes.
pub(crate) fn test_cause() -> Cause {
    Cause {
        replica: "contract".to_owned(),
        actor: Actor::Service,
    }
}

/// A history entry for a change of `migration` the test makes without an event of its own.
pub(crate) fn noted(migration: &Migration) -> HistoryEvent {
    HistoryEvent::new(
        &migration.id,
        HistoryKind::ConfigChanged,
        "a contract test's change".to_owned(),
        at(5),
        &test_cause(),
    )
}

/// Inserts and starts a migration, recording both in its history; returns it as the store
/// now holds it.
pub(crate) async fn started(store: &dyn Store, id: &str) -> Migration {
    let plan = planned(id);
    let created = HistoryEvent::created(&plan, at(0), &test_cause());
    store
        .insert_migration(&plan, &created)
        .await
        .expect("insert");
    let running = plan.apply(Event::Start, at(1)).expect("start");
    let start = HistoryEvent::of(&Event::Start, &plan, &running, at(1), &test_cause());
    let counts = store
        .start_migration(&running, &start)
        .await
        .expect("start");
    Migration { counts, ..running }
}

async fn stored(store: &dyn Store, id: &str) -> Migration {
    store.migration(id).await.expect("read").expect("exists")
}

/// A lease held by `replica` for `duration`.
fn lease_for(replica: &str, duration: Duration) -> LeaseRequest {
    LeaseRequest {
        replica: replica.to_owned(),
        duration,
    }
}

/// The lease of most tests' claims: long enough never to expire during a test.
fn lease() -> LeaseRequest {
    lease_for("replica-a", Duration::from_secs(600))
}

/// Claims up to `limit` queued documents under `lease`; panics unless it gets a batch.
async fn claim_under(
    store: &dyn Store,
    migration_id: &str,
    limit: u32,
    lease: &LeaseRequest,
) -> Claim {
    match store
        .claim(migration_id, limit, lease)
        .await
        .expect("claim")
    {
        ClaimOutcome::Claimed(claim) => claim,
        other => panic!("expected a batch to claim, got {other:?}"),
    }
}

/// Claims every queued document of the migration that no lease holds.
pub(crate) async fn claim_all(store: &dyn Store, migration_id: &str) -> Claim {
    claim_under(store, migration_id, 1000, &lease()).await
}

/// The ids a claim holds, in its order.
fn claimed_ids(claim: &Claim) -> Vec<&str> {
    claim.documents.iter().map(|d| d.id.as_str()).collect()
}

fn embedded(id: &str, version: u64) -> BatchItem {
    embedded_from(id, version, false)
}

/// `embedded`, from a text longer than the target's `max_input_tokens`.
fn embedded_truncated(id: &str, version: u64) -> BatchItem {
    embedded_from(id, version, true)
}

fn embedded_from(id: &str, version: u64, truncated: bool) -> BatchItem {
    BatchItem::Embedded {
        id: id.to_owned(),
        version,
        vector: vector_of(TARGET, "from the backfill"),
        truncated,
    }
}

/// Counts with no truncated document and no tokens.
fn counts(total: u64, processed: u64, skipped: u64, failed: u64) -> Counts {
    Counts {
        total,
        processed,
        skipped,
        failed,
        truncated: 0,
        tokens_embedded: 0,
    }
}

/// Texts over this many characters count as over the target's input limit in these tests.
const TARGET_LIMIT_CHARS: usize = 32;

/// The `over_input_limit` of `write_documents_with`: only the target has a limit.
fn target_limit(model: &str, text: &str) -> bool {
    model == TARGET && text.chars().count() > TARGET_LIMIT_CHARS
}

async fn version_of(store: &dyn Store, id: &str) -> Option<u64> {
    let document = store.get_document(id).await.expect("read");
    document.map(|d| d.version)
}

/// A client that hangs up drops its request's future wherever it stands, also inside `BEGIN`.
/// Whatever point that is, the write is rolled back and the next write finds the store as
/// writable as before.
pub(crate) async fn a_write_dropped_at_any_await_leaves_the_store_writable(backend: &dyn Backend) {
    let store = backend.open().await;
    for polls in 1..=12 {
        for pause_micros in [0, 20, 50, 100, 200, 500] {
            let dropped = [write(&format!("dropped-{polls}-{pause_micros}"), &[SOURCE])];
            let mut pending = Box::pin(store.write_documents(&dropped));
            for _ in 0..polls {
                if (&mut pending).now_or_never().is_some() {
                    break;
                }
                // The connection's worker is a thread of its own: let it get ahead.
                std::thread::sleep(std::time::Duration::from_micros(pause_micros));
                tokio::task::yield_now().await;
            }
            drop(pending);
            let next = format!("next-{polls}-{pause_micros}");
            store
                .write_documents(&[write(&next, &[SOURCE])])
                .await
                .unwrap_or_else(|e| panic!("write after a drop at poll {polls}: {e}"));
        }
    }
}

// ---- Opening ------------------------------------------------------------------------------

pub(crate) async fn active_model_starts_unset_and_can_be_replaced(backend: &dyn Backend) {
    let store = backend.open().await;
    assert_eq!(store.active_model().await.unwrap(), None);
    store.set_active_model(SOURCE).await.unwrap();
    store.set_active_model(TARGET).await.unwrap();
    assert_eq!(store.active_model().await.unwrap().as_deref(), Some(TARGET));
}

// ---- Documents ----------------------------------------------------------------------------

/// Of several replicas closing the same rollback window, exactly one records the cut-over.
pub(crate) async fn a_cut_over_happens_once_and_only_from_the_recorded_model(
    backend: &dyn Backend,
) {
    let store = backend.open().await;
    store.set_active_model(SOURCE).await.unwrap();
    let m = started(store.as_ref(), "m").await;
    let closed = HistoryEvent::window_closed(&m, at(9), &test_cause());
    assert!(
        !store.cut_over(TARGET, THIRD, &closed).await.unwrap(),
        "not from {TARGET}"
    );
    assert!(store.cut_over(SOURCE, TARGET, &closed).await.unwrap());
    assert!(
        !store.cut_over(SOURCE, TARGET, &closed).await.unwrap(),
        "already done"
    );
    assert_eq!(store.active_model().await.unwrap().as_deref(), Some(TARGET));
    let kinds: Vec<HistoryKind> = store
        .history("m")
        .await
        .unwrap()
        .iter()
        .map(|e| e.kind)
        .collect();
    assert_eq!(
        kinds,
        [
            HistoryKind::Created,
            HistoryKind::Started,
            HistoryKind::WindowClosed
        ],
        "the cut-over is recorded once, by the call that made it"
    );
}

pub(crate) async fn each_write_of_an_id_grows_its_version_by_one(backend: &dyn Backend) {
    let store = backend.open().await;
    for expected in 1..=3 {
        let receipt = store.write_documents(&[write("a", &[SOURCE])]).await;
        let receipt = receipt.unwrap();
        assert_eq!(receipt.outcomes[0].version, expected);
        assert_eq!(receipt.migration, None);
    }
    assert_eq!(version_of(&*store, "a").await, Some(3));
}

pub(crate) async fn a_bulk_write_applies_a_repeated_id_in_order(backend: &dyn Backend) {
    let store = backend.open().await;
    let writes = vec![
        write_text("a", "first", &[SOURCE]),
        write("b", &[SOURCE]),
        write_text("a", "second", &[SOURCE]),
    ];
    let receipt = store.write_documents(&writes).await.unwrap();
    let versions: Vec<(&str, u64)> = receipt
        .outcomes
        .iter()
        .map(|o| (o.id.as_str(), o.version))
        .collect();
    assert_eq!(versions, [("a", 1), ("b", 1), ("a", 2)]);
    let a = store.get_document("a").await.unwrap().unwrap();
    assert_eq!((a.text.as_str(), a.version), ("second", 2));
}

/// Every finite value, subnormals and -0 included (normalised vectors hold nothing else;
/// what a backend does with NaN and infinities is its own).
pub(crate) async fn vectors_round_trip_bit_exactly(backend: &dyn Backend) {
    let store = backend.open().await;
    let values = vec![
        0.0,
        -0.0,
        f32::MIN_POSITIVE,
        f32::from_bits(1),
        f32::MAX,
        f32::MIN,
        0.1,
        -1.0 / 3.0,
    ];
    let doc = DocumentWrite {
        vectors: vec![(SOURCE.to_owned(), values.clone())],
        ..write("a", &[])
    };
    put(&*store, vec![doc]).await;
    let stored = all_vectors(&*store, SOURCE).await.unwrap();
    assert_eq!(stored.len(), 1);
    let (id, version, vector) = &stored[0];
    assert_eq!((id.as_str(), *version), ("a", 1));
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(vector), bits(&values));
    assert!(all_vectors(&*store, TARGET).await.unwrap().is_empty());
}

pub(crate) async fn a_document_lists_its_embeddings_by_model_with_their_versions(
    backend: &dyn Backend,
) {
    let store = backend.open().await;
    put(&*store, vec![write("a", &[TARGET, SOURCE])]).await;
    put(&*store, vec![write("a", &[SOURCE])]).await;
    let a = store.get_document("a").await.unwrap().unwrap();
    assert_eq!(a.metadata, json!({ "source": "test" }));
    let info = |model: &str, version| VectorInfo {
        model: model.to_owned(),
        version,
        dimensions: 3,
    };
    assert_eq!(a.embeddings, [info(SOURCE, 2), info(TARGET, 1)]);
    assert_eq!(store.get_document("missing").await.unwrap(), None);
}

pub(crate) async fn documents_are_listed_in_pages_of_id_order(backend: &dyn Backend) {
    let store = backend.open().await;
    put(
        &*store,
        ["c", "a", "d", "b"].map(|id| write(id, &[SOURCE])).to_vec(),
    )
    .await;
    let first = store.list_documents(None, 3).await.unwrap();
    let ids: Vec<&str> = first.iter().map(|d| d.id.as_str()).collect();
    assert_eq!(ids, ["a", "b", "c"]);
    assert_eq!(first[0].embeddings.len(), 1);
    let rest = store.list_documents(Some("c"), 3).await.unwrap();
    assert_eq!(rest.len(), 1);
    assert_eq!((rest[0].id.as_str(), rest[0].embeddings.len()), ("d", 1));
}

pub(crate) async fn hit_documents_leave_out_missing_ids(backend: &dyn Backend) {
    let store = backend.open().await;
    put(&*store, vec![write_text("a", "alpha", &[SOURCE])]).await;
    let ids = vec!["a".to_owned(), "zzz".to_owned()];
    let hits = store.hit_documents(&ids).await.unwrap();
    let found: Vec<_> = hits
        .iter()
        .map(|d| (d.id.as_str(), d.text.as_str()))
        .collect();
    assert_eq!(found, [("a", "alpha")]);
    assert_eq!(hits[0].metadata, json!({ "source": "test" }));
}

pub(crate) async fn metadata_streams_the_documents_that_have_any_at_their_version(
    backend: &dyn Backend,
) {
    let store = backend.open().await;
    let mut bare = write("bare", &[SOURCE]);
    bare.metadata = json!({});
    put(&*store, vec![write("a", &[SOURCE]), bare]).await;
    put(&*store, vec![write("a", &[SOURCE])]).await;
    let streamed: Vec<_> = store.metadata().try_collect().await.unwrap();
    assert_eq!(streamed, [("a".to_owned(), 2, json!({ "source": "test" }))]);
}

pub(crate) async fn delete_removes_the_document_and_its_vectors(backend: &dyn Backend) {
    let store = backend.open().await;
    put(&*store, vec![write("a", &[SOURCE, TARGET])]).await;
    let receipt = store.delete_document("a").await.unwrap();
    assert_eq!(receipt.map(|r| r.migration), Some(None));
    assert_eq!(store.get_document("a").await.unwrap(), None);
    assert!(all_vectors(&*store, SOURCE).await.unwrap().is_empty());
    assert!(store.delete_document("a").await.unwrap().is_none());
}

pub(crate) async fn a_recreated_document_continues_its_version_so_an_old_claim_fails(
    backend: &dyn Backend,
) {
    let store = backend.open().await;
    put(&*store, vec![write("a", &[SOURCE])]).await;
    let m = started(&*store, "m1").await;
    let claim = claim_all(&*store, &m.id).await;
    store.delete_document("a").await.unwrap();
    let receipt = store.write_documents(&[write("a", &[SOURCE])]).await;
    assert_eq!(receipt.unwrap().outcomes[0].version, 2);
    let batch = vec![embedded("a", claim.documents[0].version)];
    let receipt = store.commit_batch(&claim, &batch).await.unwrap();
    assert!(receipt.written.is_empty());
    assert_eq!(backend.queued("m1").await, [("a".to_owned(), 2)]);
}

// ---- Kept vectors (no wasted embeddings) ---------------------------------------------------

pub(crate) async fn stored_documents_list_the_given_ids_with_their_embeddings(
    backend: &dyn Backend,
) {
    let store = backend.open().await;
    put(
        &*store,
        vec![
            write("a", &[SOURCE, TARGET]),
            write("b", &[SOURCE]),
            write("c", &[]),
        ],
    )
    .await;
    put(&*store, vec![write("a", &[SOURCE])]).await;
    let ids = ["c", "b", "missing", "a"].map(str::to_owned);
    let mut stored = store.stored_documents(&ids).await.unwrap();
    stored.sort_by(|x, y| x.id.cmp(&y.id));
    let found: Vec<_> = stored.iter().map(|d| (d.id.as_str(), d.version)).collect();
    assert_eq!(found, [("a", 2), ("b", 1), ("c", 1)]);
    for document in &stored {
        let alone = store.get_document(&document.id).await.unwrap();
        assert_eq!(Some(document), alone.as_ref(), "as read one by one");
    }
    assert_eq!(
        stored[0].embeddings.len(),
        2,
        "a stale vector is listed too"
    );
    assert!(stored[2].embeddings.is_empty());
    assert!(store.stored_documents(&[]).await.unwrap().is_empty());
}

/// An unchanged text keeps every current vector: the version and the metadata move, the
/// vectors follow the version without changing by a bit, and a stale vector stays stale.
pub(crate) async fn an_unchanged_text_keeps_its_current_vectors_at_the_new_version(
    backend: &dyn Backend,
) {
    let store = backend.open().await;
    put(&*store, vec![write_text("a", "same", &[SOURCE, TARGET])]).await;
    put(&*store, vec![write_text("a", "same", &[SOURCE])]).await;
    let before = all_vectors(&*store, SOURCE).await.unwrap();
    let kept = keep_read(&*store, "a", "same").await;
    assert_eq!(
        kept,
        Some(Kept {
            version: 2,
            models: vec![SOURCE.to_owned()]
        })
    );
    let receipt = store
        .write_documents(&[keeping("a", "same", 2, &[SOURCE])])
        .await;
    assert_eq!(receipt.unwrap().outcomes[0].version, 3);
    let a = store.get_document("a").await.unwrap().unwrap();
    assert_eq!(
        (a.version, &a.metadata),
        (3, &json!({ "source": "kept", "round": 3 }))
    );
    let versions: Vec<_> = a
        .embeddings
        .iter()
        .map(|e| (e.model.as_str(), e.version))
        .collect();
    assert_eq!(
        versions,
        [(SOURCE, 3), (TARGET, 1)],
        "the stale target stays stale"
    );
    let after = all_vectors(&*store, SOURCE).await.unwrap();
    assert_eq!(after, [("a".to_owned(), 3, before[0].2.clone())]);
}

/// A changed text keeps nothing: the write embeds again and its vectors replace the old ones.
pub(crate) async fn a_changed_text_keeps_nothing_and_its_new_vectors_replace_the_old(
    backend: &dyn Backend,
) {
    let store = backend.open().await;
    put(&*store, vec![write_text("a", "old", &[SOURCE])]).await;
    assert_eq!(keep_read(&*store, "a", "a new text").await, None);
    put(&*store, vec![write_text("a", "a new text", &[SOURCE])]).await;
    let fresh = write_text("a", "a new text", &[SOURCE]).vectors.remove(0).1;
    let after = all_vectors(&*store, SOURCE).await.unwrap();
    assert_eq!(after, [("a".to_owned(), 2, fresh)]);
}

/// A keep read before another write changed the document (its text, or only its version, or
/// deleted it) no longer holds: the write conflicts and changes nothing, and the other write's
/// vectors stand.
pub(crate) async fn a_keep_conflicts_when_the_document_changed_since_it_was_read(
    backend: &dyn Backend,
) {
    let store = backend.open().await;
    put(
        &*store,
        vec![
            write_text("a", "same", &[SOURCE]),
            write_text("b", "same", &[SOURCE]),
        ],
    )
    .await;
    let stale = keep_read(&*store, "a", "same").await.expect("a keep");
    put(
        &*store,
        vec![write_text("a", "changed meanwhile", &[SOURCE])],
    )
    .await;
    let refused = store
        .write_documents(&[
            write("b", &[SOURCE]),
            keeping("a", "same", stale.version, &[SOURCE]),
        ])
        .await;
    assert!(
        matches!(refused, Err(StoreError::Conflict(_))),
        "{refused:?}"
    );
    let a = store.get_document("a").await.unwrap().unwrap();
    assert_eq!((a.text.as_str(), a.version), ("changed meanwhile", 2));
    assert_eq!(
        version_of(&*store, "b").await,
        Some(1),
        "nothing of the write"
    );
    let fresh = write_text("a", "changed meanwhile", &[SOURCE])
        .vectors
        .remove(0)
        .1;
    assert!(
        all_vectors(&*store, SOURCE)
            .await
            .unwrap()
            .contains(&("a".to_owned(), 2, fresh))
    );
    put(&*store, vec![write_text("b", "same", &[SOURCE])]).await;
    let moved = store
        .write_documents(&[keeping("b", "same", 1, &[SOURCE])])
        .await;
    assert!(
        matches!(moved, Err(StoreError::Conflict(_))),
        "same text, newer version: {moved:?}"
    );
    store.delete_document("b").await.unwrap();
    let gone = store
        .write_documents(&[keeping("b", "same", 2, &[SOURCE])])
        .await;
    assert!(
        matches!(gone, Err(StoreError::Conflict(_))),
        "deleted: {gone:?}"
    );
    assert_eq!(version_of(&*store, "b").await, None);
}

// ---- Writes during a migration ------------------------------------------------------------

pub(crate) async fn start_queues_exactly_the_documents_lacking_a_current_target_vector(
    backend: &dyn Backend,
) {
    let store = backend.open().await;
    put(&*store, vec![write("missing", &[SOURCE])]).await;
    put(&*store, vec![write("stale", &[SOURCE, TARGET])]).await;
    put(&*store, vec![write("stale", &[SOURCE])]).await;
    put(&*store, vec![write("current", &[SOURCE, TARGET])]).await;
    let m = started(&*store, "m1").await;
    assert_eq!(m.counts, counts(2, 0, 0, 0));
    let expected = [("missing".to_owned(), 1), ("stale".to_owned(), 2)];
    assert_eq!(backend.queued("m1").await, expected);
    assert_eq!(stored(&*store, "m1").await, m);
}

pub(crate) async fn start_is_refused_unless_the_migration_is_planned(backend: &dyn Backend) {
    let store = backend.open().await;
    let m = started(&*store, "m1").await;
    let again = store.start_migration(&m, &noted(&m)).await;
    assert!(matches!(again, Err(StoreError::Conflict(_))), "{again:?}");
}

pub(crate) async fn a_write_with_the_target_vector_dequeues_and_counts_processed(
    backend: &dyn Backend,
) {
    let store = backend.open().await;
    put(&*store, vec![write("a", &[SOURCE])]).await;
    started(&*store, "m1").await;
    let receipt = store
        .write_documents(&[write("a", &[SOURCE, TARGET])])
        .await;
    let processed = CountsDelta {
        processed: 1,
        ..CountsDelta::default()
    };
    assert_eq!(
        receipt.unwrap().migration,
        Some(("m1".to_owned(), processed))
    );
    assert!(backend.queued("m1").await.is_empty());
    let again = store
        .write_documents(&[write("a", &[SOURCE, TARGET])])
        .await;
    assert_eq!(again.unwrap().migration, None, "no longer queued");
    assert_eq!(stored(&*store, "m1").await.counts, counts(1, 1, 0, 0));
}

pub(crate) async fn a_write_without_the_target_vector_queues_and_counts_total_once(
    backend: &dyn Backend,
) {
    let store = backend.open().await;
    started(&*store, "m1").await;
    let receipt = store.write_documents(&[write("new", &[SOURCE])]).await;
    let one_more = CountsDelta {
        total: 1,
        ..CountsDelta::default()
    };
    assert_eq!(
        receipt.unwrap().migration,
        Some(("m1".to_owned(), one_more))
    );
    let again = store.write_documents(&[write("new", &[SOURCE])]).await;
    assert_eq!(again.unwrap().migration, None, "already queued");
    assert_eq!(backend.queued("m1").await, [("new".to_owned(), 2)]);
    assert_eq!(stored(&*store, "m1").await.counts, counts(1, 0, 0, 0));
}

pub(crate) async fn a_paused_or_failed_migration_still_follows_writes(backend: &dyn Backend) {
    let store = backend.open().await;
    let m = started(&*store, "m1").await;
    let paused = m.apply(Event::Pause { reason: None }, at(2)).unwrap();
    store
        .update_migration(&paused, MigrationState::InProgress, &noted(&paused))
        .await
        .unwrap();
    put(&*store, vec![write("a", &[SOURCE])]).await;
    assert_eq!(stored(&*store, "m1").await.counts.total, 1);
}

pub(crate) async fn deleting_a_queued_document_shrinks_the_total(backend: &dyn Backend) {
    let store = backend.open().await;
    put(
        &*store,
        vec![write("a", &[SOURCE]), write("b", &[SOURCE, TARGET])],
    )
    .await;
    started(&*store, "m1").await;
    let receipt = store.delete_document("a").await.unwrap().unwrap();
    let one_less = CountsDelta {
        total: -1,
        ..CountsDelta::default()
    };
    assert_eq!(receipt.migration, Some(("m1".to_owned(), one_less)));
    let unqueued = store.delete_document("b").await.unwrap().unwrap();
    assert_eq!(unqueued.migration, None);
    assert_eq!(stored(&*store, "m1").await.counts, counts(0, 0, 0, 0));
    assert!(backend.queued("m1").await.is_empty());
}

pub(crate) async fn after_completion_a_write_lacking_the_target_conflicts_and_changes_nothing(
    backend: &dyn Backend,
) {
    let store = backend.open().await;
    put(&*store, vec![write("a", &[SOURCE, TARGET])]).await;
    let m = started(&*store, "m1").await;
    let done = m.apply(Event::Complete, at(5)).unwrap();
    assert!(
        store
            .complete_migration(&done, &[noted(&done)])
            .await
            .unwrap()
    );
    let writes = vec![write("a", &[SOURCE, TARGET]), write("b", &[SOURCE])];
    let refused = store.write_documents(&writes).await;
    assert!(
        matches!(refused, Err(StoreError::Conflict(_))),
        "{refused:?}"
    );
    assert_eq!(version_of(&*store, "a").await, Some(1));
    assert_eq!(version_of(&*store, "b").await, None);
    let accepted = store
        .write_documents(&[write("b", &[SOURCE, TARGET])])
        .await;
    assert_eq!(accepted.unwrap().outcomes[0].version, 1);
}

pub(crate) async fn a_dual_write_satisfying_a_queued_long_document_counts_it_truncated(
    backend: &dyn Backend,
) {
    let store = backend.open().await;
    let long = "a long text ".repeat(10);
    put(
        &*store,
        vec![
            write_text("long", &long, &[SOURCE]),
            write("short", &[SOURCE]),
        ],
    )
    .await;
    started(&*store, "m1").await;
    let writes = [
        write_text("long", &long, &[SOURCE, TARGET]),
        write("short", &[SOURCE, TARGET]),
    ];
    let receipt = store.write_documents_with(&writes, &target_limit).await;
    let processed = CountsDelta {
        processed: 2,
        truncated: 1,
        ..CountsDelta::default()
    };
    assert_eq!(
        receipt.unwrap().migration,
        Some(("m1".to_owned(), processed))
    );
    let again = store
        .write_documents_with(&writes[..1], &target_limit)
        .await;
    assert_eq!(
        again.unwrap().migration,
        None,
        "no longer queued, not recounted"
    );
    let expected = Counts {
        truncated: 1,
        ..counts(2, 2, 0, 0)
    };
    assert_eq!(stored(&*store, "m1").await.counts, expected);
}

pub(crate) async fn a_long_write_counts_truncated_only_when_it_satisfies_a_queued_target_entry(
    backend: &dyn Backend,
) {
    let store = backend.open().await;
    let long = "a long text ".repeat(10);
    put(&*store, vec![write_text("queued", &long, &[SOURCE])]).await;
    started(&*store, "m1").await;
    // Over the source's limit only: the target embedded it whole.
    let source_limit = |model: &str, text: &str| model == SOURCE && !text.is_empty();
    let source_only = [write_text("queued", &long, &[SOURCE, TARGET])];
    let receipt = store
        .write_documents_with(&source_only, &source_limit)
        .await;
    assert_eq!(receipt.unwrap().migration.unwrap().1.truncated, 0);
    // Not queued, or queued by a write without the target vector: nothing is processed.
    let fresh = [write_text("fresh", &long, &[SOURCE, TARGET])];
    let receipt = store.write_documents_with(&fresh, &target_limit).await;
    assert_eq!(receipt.unwrap().migration, None);
    let unembedded = [write_text("later", &long, &[SOURCE])];
    let receipt = store.write_documents_with(&unembedded, &target_limit).await;
    assert_eq!(receipt.unwrap().migration.unwrap().1.truncated, 0);
    assert_eq!(stored(&*store, "m1").await.counts, counts(2, 1, 0, 0));
}

/// A kept target vector counts for the queue exactly as a dual-written one: the document is
/// taken off the queue (processed + 1) once and never queued again by a rewrite that keeps it,
/// so no claim hands it out; and after completion a write keeping the target is not refused.
pub(crate) async fn a_kept_target_vector_dequeues_like_a_dual_write_and_is_never_claimed(
    backend: &dyn Backend,
) {
    let store = backend.open().await;
    put(
        &*store,
        vec![write("a", &[SOURCE, TARGET]), write("b", &[SOURCE])],
    )
    .await;
    started(&*store, "m1").await;
    assert_eq!(backend.queued("m1").await, [("b".to_owned(), 1)]);
    put(&*store, vec![write("b", &[SOURCE, TARGET])]).await;
    assert_eq!(stored(&*store, "m1").await.counts, counts(1, 1, 0, 0));
    let rewrites = [
        keeping("a", "text of a", 1, &[SOURCE, TARGET]),
        keeping("b", "text of b", 2, &[SOURCE, TARGET]),
    ];
    let receipt = store.write_documents(&rewrites).await.unwrap();
    assert_eq!(receipt.migration, None, "nothing queued, nothing counted");
    let only_source = [keeping("a", "text of a", 2, &[SOURCE])];
    let receipt = store.write_documents(&only_source).await.unwrap();
    assert_eq!(
        receipt.migration.map(|(_, d)| d.total),
        Some(1),
        "the target left behind: queued"
    );
    let keep_both = keep_read(&*store, "b", "text of b").await.unwrap();
    assert_eq!(
        keep_both.models,
        [SOURCE, TARGET],
        "a rewrite without the target keeps it too"
    );
    let rewrite = DocumentWrite {
        kept: Some(keep_both),
        ..write("b", &[])
    };
    store.write_documents(&[rewrite]).await.unwrap();
    assert_eq!(backend.queued("m1").await, [("a".to_owned(), 3)]);
    let claim = claim_all(&*store, "m1").await;
    assert_eq!(claimed_ids(&claim), ["a"]);
    store
        .commit_batch(&claim, &[embedded("a", 3)])
        .await
        .unwrap();
    let done = stored(&*store, "m1").await.apply(Event::Complete, at(5));
    let done = done.unwrap();
    assert!(
        store
            .complete_migration(&done, &[noted(&done)])
            .await
            .unwrap()
    );
    let accepted = store
        .write_documents(&[keeping("b", "text of b", 4, &[SOURCE, TARGET])])
        .await;
    assert_eq!(accepted.unwrap().outcomes[0].version, 5);
}

// ---- Backfill batches ---------------------------------------------------------------------

pub(crate) async fn a_batch_writes_vectors_of_unchanged_documents_and_counts_them(
    backend: &dyn Backend,
) {
    let store = backend.open().await;
    put(&*store, vec![write("a", &[SOURCE]), write("b", &[SOURCE])]).await;
    let m = started(&*store, "m1").await;
    let claim = claim_all(&*store, &m.id).await;
    assert_eq!(claimed_ids(&claim), ["a", "b"]);
    let batch = vec![embedded("a", 1), embedded("b", 1), embedded("b", 1)];
    let receipt = store.commit_batch(&claim, &batch).await.unwrap();
    assert_eq!(receipt.written, [("a".to_owned(), 1), ("b".to_owned(), 1)]);
    assert_eq!(receipt.delta.processed, 2);
    assert_eq!(stored(&*store, "m1").await.counts, counts(2, 2, 0, 0));
    let target = all_vectors(&*store, TARGET).await.unwrap();
    assert_eq!(target[0].2, vector_of(TARGET, "from the backfill"));
}

pub(crate) async fn a_batch_item_marked_truncated_counts_once_when_written(backend: &dyn Backend) {
    let store = backend.open().await;
    let docs = ["a", "b", "c"].map(|id| write(id, &[SOURCE])).to_vec();
    put(&*store, docs).await;
    let m = started(&*store, "m1").await;
    let claim = claim_all(&*store, &m.id).await;
    // c moves on before its batch commits: its truncated vector fails compare-and-set.
    put(&*store, vec![write_text("c", "rewritten", &[SOURCE])]).await;
    let batch = vec![
        embedded_truncated("a", 1),
        embedded("b", 1),
        embedded_truncated("a", 1),
        embedded_truncated("c", 1),
    ];
    let receipt = store.commit_batch(&claim, &batch).await.unwrap();
    assert_eq!((receipt.delta.processed, receipt.delta.truncated), (2, 1));
    let expected = Counts {
        truncated: 1,
        ..counts(3, 2, 0, 0)
    };
    assert_eq!(stored(&*store, "m1").await.counts, expected);
    let claim = claim_all(&*store, &m.id).await;
    let retry = store
        .commit_batch(&claim, &[embedded_truncated("c", 2)])
        .await
        .unwrap();
    assert_eq!(retry.delta.truncated, 1, "the current version counts");
    assert_eq!(stored(&*store, "m1").await.counts.truncated, 2);
}

pub(crate) async fn a_part_commit_keeps_the_lease_and_the_release_frees_the_rest(
    backend: &dyn Backend,
) {
    let store = backend.open().await;
    let docs = ["a", "b", "c"].map(|id| write(id, &[SOURCE])).to_vec();
    put(&*store, docs).await;
    let m = started(&*store, "m1").await;
    let claim = claim_all(&*store, &m.id).await;
    let receipt = store
        .commit_claimed(&claim, &[embedded("a", 1)], 0, AfterCommit::KeepLease)
        .await
        .unwrap();
    assert_eq!(receipt.written, [("a".to_owned(), 1)]);
    let held = store.claim(&m.id, 10, &lease()).await.unwrap();
    assert_eq!(held, ClaimOutcome::Busy, "b and c stay under the lease");
    let receipt = store
        .commit_claimed(&claim, &[embedded("b", 1)], 0, AfterCommit::Release)
        .await
        .unwrap();
    assert_eq!(receipt.written, [("b".to_owned(), 1)]);
    assert_eq!(stored(&*store, "m1").await.counts, counts(3, 2, 0, 0));
    let rest = claim_all(&*store, &m.id).await;
    assert_eq!(claimed_ids(&rest), ["c"], "released with the last part");
}

pub(crate) async fn a_batch_counts_its_tokens_in_the_commit_of_its_vectors(backend: &dyn Backend) {
    let store = backend.open().await;
    let docs = ["a", "b", "c"].map(|id| write(id, &[SOURCE])).to_vec();
    put(&*store, docs).await;
    let m = started(&*store, "m1").await;
    let claim = claim_all(&*store, &m.id).await;
    let receipt = store
        .commit_claimed(&claim, &[embedded("a", 1)], 120, AfterCommit::KeepLease)
        .await
        .unwrap();
    assert_eq!(receipt.delta.tokens_embedded, 120);
    let after_part = stored(&*store, "m1").await.counts;
    assert_eq!((after_part.processed, after_part.tokens_embedded), (1, 120));
    store
        .commit_claimed(&claim, &[embedded("b", 1)], 0, AfterCommit::Release)
        .await
        .unwrap();
    let expected = Counts {
        tokens_embedded: 120,
        ..counts(3, 2, 0, 0)
    };
    assert_eq!(stored(&*store, "m1").await.counts, expected);
    // A batch whose compare-and-set keeps nothing was billed all the same.
    let claim = claim_all(&*store, &m.id).await;
    put(&*store, vec![write("c", &[SOURCE])]).await;
    let receipt = store
        .commit_claimed(&claim, &[embedded("c", 1)], 30, AfterCommit::Release)
        .await
        .unwrap();
    assert!(receipt.written.is_empty());
    assert_eq!(stored(&*store, "m1").await.counts.tokens_embedded, 150);
}

pub(crate) async fn an_empty_commit_releases_the_claim_and_counts_nothing(backend: &dyn Backend) {
    let store = backend.open().await;
    let docs = ["a", "b"].map(|id| write(id, &[SOURCE])).to_vec();
    put(&*store, docs).await;
    let m = started(&*store, "m1").await;
    let claim = claim_all(&*store, &m.id).await;
    let receipt = store
        .commit_claimed(&claim, &[], 0, AfterCommit::Release)
        .await
        .unwrap();
    assert!(receipt.delta.is_zero());
    assert_eq!(stored(&*store, "m1").await.counts, counts(2, 0, 0, 0));
    let again = claim_all(&*store, &m.id).await;
    assert_eq!(claimed_ids(&again), ["a", "b"], "claimable again at once");
}

pub(crate) async fn a_batch_does_not_overwrite_a_document_rewritten_without_the_target(
    backend: &dyn Backend,
) {
    let store = backend.open().await;
    put(&*store, vec![write("a", &[SOURCE])]).await;
    let m = started(&*store, "m1").await;
    let claim = claim_all(&*store, &m.id).await;
    put(&*store, vec![write("a", &[SOURCE])]).await;
    let batch = vec![embedded("a", claim.documents[0].version)];
    let receipt = store.commit_batch(&claim, &batch).await.unwrap();
    assert!(receipt.written.is_empty());
    assert!(receipt.delta.is_zero());
    assert!(all_vectors(&*store, TARGET).await.unwrap().is_empty());
    assert_eq!(backend.queued("m1").await, [("a".to_owned(), 2)]);
    assert_eq!(stored(&*store, "m1").await.counts, counts(1, 0, 0, 0));
}

pub(crate) async fn a_batch_does_not_overwrite_or_recount_a_dual_written_document(
    backend: &dyn Backend,
) {
    let store = backend.open().await;
    put(&*store, vec![write("a", &[SOURCE])]).await;
    let m = started(&*store, "m1").await;
    let claim = claim_all(&*store, &m.id).await;
    put(&*store, vec![write_text("a", "newer", &[SOURCE, TARGET])]).await;
    let batch = vec![embedded("a", claim.documents[0].version)];
    let receipt = store.commit_batch(&claim, &batch).await.unwrap();
    assert!(receipt.written.is_empty());
    let target = all_vectors(&*store, TARGET).await.unwrap();
    assert_eq!(target, [("a".to_owned(), 2, vector_of(TARGET, "newer"))]);
    assert_eq!(stored(&*store, "m1").await.counts, counts(1, 1, 0, 0));
}

pub(crate) async fn a_skip_leaves_the_queue_for_the_skip_list_once(backend: &dyn Backend) {
    let store = backend.open().await;
    put(&*store, vec![write("a", &[SOURCE])]).await;
    let m = started(&*store, "m1").await;
    let skip = || BatchItem::Skipped {
        id: "a".to_owned(),
        reason: "input too long".to_owned(),
    };
    let claim = claim_all(&*store, &m.id).await;
    let receipt = store.commit_batch(&claim, &[skip(), skip()]).await;
    let delta = receipt.unwrap().delta;
    assert_eq!((delta.processed, delta.skipped, delta.failed), (0, 1, 0));
    let skips = store.skips(&m.id).await.unwrap();
    assert_eq!(skips.len(), 1);
    assert_eq!(
        (skips[0].document_id.as_str(), skips[0].reason.as_str()),
        ("a", "input too long")
    );
    assert!(backend.queued("m1").await.is_empty());
    assert_eq!(stored(&*store, "m1").await.counts, counts(1, 0, 1, 0));
}

/// Retrying the skips puts back the skipped documents still lacking a current target vector;
/// one that a dual write gave its target vector since is not queued again (no claim hands it
/// out to be embedded twice) and counts as processed, as a dual write before its batch does.
pub(crate) async fn retried_skips_leave_out_documents_dual_written_since(backend: &dyn Backend) {
    let store = backend.open().await;
    let ids = ["a", "b", "gone"];
    put(&*store, ids.iter().map(|id| write(id, &[SOURCE])).collect()).await;
    let m = started(&*store, "m1").await;
    let claim = claim_all(&*store, &m.id).await;
    let skips: Vec<BatchItem> = ids
        .iter()
        .map(|id| BatchItem::Skipped {
            id: (*id).to_owned(),
            reason: "rejected".to_owned(),
        })
        .collect();
    store.commit_batch(&claim, &skips).await.unwrap();
    let dual = store
        .write_documents(&[write("b", &[SOURCE, TARGET])])
        .await;
    assert_eq!(dual.unwrap().migration, None, "not queued: nothing counted");
    store.delete_document("gone").await.unwrap();
    let delta = store.requeue_skips(&m.id, &noted(&m)).await.unwrap();
    let moved = (delta.total, delta.processed, delta.skipped);
    assert_eq!(moved, (-1, 1, -3), "a requeued, b processed, gone left");
    assert_eq!(backend.queued("m1").await, [("a".to_owned(), 1)]);
    assert_eq!(stored(&*store, "m1").await.counts, counts(2, 1, 0, 0));
    let claim = claim_all(&*store, &m.id).await;
    assert_eq!(claimed_ids(&claim), ["a"]);
}

pub(crate) async fn a_failed_attempt_counts_each_queued_document_once(backend: &dyn Backend) {
    let store = backend.open().await;
    put(&*store, vec![write("a", &[SOURCE]), write("b", &[SOURCE])]).await;
    let m = started(&*store, "m1").await;
    let claim = claim_all(&*store, &m.id).await;
    let delta = store.release_failed(&claim, Duration::ZERO).await.unwrap();
    assert_eq!(delta.failed, 2);
    let claim = claim_all(&*store, &m.id).await;
    assert_eq!(claimed_ids(&claim), ["a", "b"], "released, claimable again");
    store.delete_document("b").await.unwrap();
    let again = store.release_failed(&claim, Duration::ZERO).await.unwrap();
    assert!(
        again.is_zero(),
        "a fails again, b is no longer queued: {again:?}"
    );
    assert_eq!(
        backend.queued("m1").await,
        [("a".to_owned(), 1)],
        "failed documents stay queued"
    );
    assert_eq!(stored(&*store, "m1").await.counts, counts(1, 0, 0, 1));
}

pub(crate) async fn failed_goes_down_as_documents_leave_the_queue_by_any_way(
    backend: &dyn Backend,
) {
    let store = backend.open().await;
    let docs = ["embedded", "skipped", "deleted", "rewritten", "waiting"];
    put(
        &*store,
        docs.iter().map(|id| write(id, &[SOURCE])).collect(),
    )
    .await;
    let m = started(&*store, "m1").await;
    let claim = claim_all(&*store, &m.id).await;
    store.release_failed(&claim, Duration::ZERO).await.unwrap();
    assert_eq!(stored(&*store, "m1").await.counts, counts(5, 0, 0, 5));

    let skip = BatchItem::Skipped {
        id: "skipped".to_owned(),
        reason: "too long".to_owned(),
    };
    let claim = claim_all(&*store, &m.id).await;
    let receipt = store
        .commit_batch(&claim, &[embedded("embedded", 1), skip])
        .await
        .unwrap();
    assert_eq!(receipt.delta.failed, -2);
    let deleted = store.delete_document("deleted").await.unwrap().unwrap();
    assert_eq!(deleted.migration.unwrap().1.failed, -1);
    let rewritten = store
        .write_documents(&[write("rewritten", &[SOURCE, TARGET])])
        .await
        .unwrap();
    let delta = rewritten.migration.unwrap().1;
    assert_eq!((delta.processed, delta.failed), (1, -1));
    assert_eq!(stored(&*store, "m1").await.counts, counts(4, 2, 1, 1));
}

// ---- Claims and leases --------------------------------------------------------------------

pub(crate) async fn claims_never_overlap_and_take_the_lowest_ids_first(backend: &dyn Backend) {
    let store = backend.open().await;
    let docs = ["e", "d", "c", "b", "a"]
        .map(|id| write(id, &[SOURCE]))
        .to_vec();
    put(&*store, docs).await;
    let m = started(&*store, "m1").await;
    let first = claim_under(&*store, &m.id, 2, &lease()).await;
    let second = claim_under(
        &*store,
        &m.id,
        2,
        &lease_for("replica-b", Duration::from_secs(600)),
    )
    .await;
    let third = claim_under(&*store, &m.id, 2, &lease()).await;
    assert_eq!(claimed_ids(&first), ["a", "b"]);
    assert_eq!(claimed_ids(&second), ["c", "d"]);
    assert_eq!(claimed_ids(&third), ["e"]);
    assert_ne!(first.token, second.token);
    let none_left = store.claim(&m.id, 2, &lease()).await.unwrap();
    assert_eq!(none_left, ClaimOutcome::Busy, "all queued, all leased");
    let items = ["a", "b"].map(|id| embedded(id, 1)).to_vec();
    store.commit_batch(&first, &items).await.unwrap();
    for claim in [&second, &third] {
        store.commit_batch(claim, &[]).await.unwrap();
    }
    let again = claim_all(&*store, &m.id).await;
    assert_eq!(
        claimed_ids(&again),
        ["c", "d", "e"],
        "released, not written"
    );
    store.commit_batch(&again, &[]).await.unwrap();
    assert_eq!(stored(&*store, "m1").await.counts, counts(5, 2, 0, 0));
}

pub(crate) async fn at_most_max_concurrent_claims_are_held_and_a_lowered_bound_applies_next(
    backend: &dyn Backend,
) {
    let store = backend.open().await;
    put(
        &*store,
        (0..6).map(|i| write(&format!("d{i}"), &[SOURCE])).collect(),
    )
    .await;
    let m = started(&*store, "m1").await;
    assert_eq!(m.config.max_concurrent, 4);
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(claim_under(&*store, &m.id, 1, &lease()).await);
    }
    let fifth = store.claim(&m.id, 1, &lease()).await.unwrap();
    assert_eq!(fifth, ClaimOutcome::Busy, "four slots held");
    let mut lowered = m.clone();
    lowered.config.max_concurrent = 2;
    store
        .update_migration(&lowered, MigrationState::InProgress, &noted(&lowered))
        .await
        .unwrap();
    for claim in held.drain(..2) {
        store.commit_batch(&claim, &[]).await.unwrap();
    }
    let third = store.claim(&m.id, 1, &lease()).await.unwrap();
    assert_eq!(third, ClaimOutcome::Busy, "two still held, two allowed");
    store.commit_batch(&held.remove(0), &[]).await.unwrap();
    claim_under(&*store, &m.id, 1, &lease()).await;
}

pub(crate) async fn an_expired_lease_is_claimed_again_and_its_holder_commits_nothing(
    backend: &dyn Backend,
) {
    let store = backend.open().await;
    put(&*store, vec![write("a", &[SOURCE])]).await;
    let m = started(&*store, "m1").await;
    let short = lease_for("replica-a", Duration::from_millis(300));
    let lost = claim_under(&*store, &m.id, 10, &short).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let taken = claim_under(
        &*store,
        &m.id,
        10,
        &lease_for("replica-b", Duration::from_secs(600)),
    )
    .await;
    assert_eq!(claimed_ids(&taken), ["a"], "the expired claim's document");
    assert!(!store.renew_claim(&lost, &short).await.unwrap());
    let late = store
        .commit_batch(&lost, &[embedded("a", 1)])
        .await
        .unwrap();
    assert!(late.written.is_empty() && late.delta.is_zero(), "{late:?}");
    let failed = store.release_failed(&lost, Duration::ZERO).await.unwrap();
    assert!(failed.is_zero(), "an expired claim marks nothing failed");
    assert_eq!(backend.queued("m1").await, [("a".to_owned(), 1)]);
    let receipt = store
        .commit_batch(&taken, &[embedded("a", 1)])
        .await
        .unwrap();
    assert_eq!(receipt.written, [("a".to_owned(), 1)]);
    assert_eq!(stored(&*store, "m1").await.counts, counts(1, 1, 0, 0));
}

pub(crate) async fn a_failed_document_waits_its_retry_while_claims_move_on(backend: &dyn Backend) {
    let store = backend.open().await;
    let docs = ["a", "b", "c"].map(|id| write(id, &[SOURCE])).to_vec();
    put(&*store, docs).await;
    let m = started(&*store, "m1").await;
    let poisoned = claim_under(&*store, &m.id, 1, &lease()).await;
    let retry_after = Duration::from_millis(500);
    let delta = store.release_failed(&poisoned, retry_after).await.unwrap();
    assert_eq!(delta.failed, 1);
    let next = claim_all(&*store, &m.id).await;
    assert_eq!(claimed_ids(&next), ["b", "c"], "a waits for its retry");
    let items = ["b", "c"].map(|id| embedded(id, 1)).to_vec();
    store.commit_batch(&next, &items).await.unwrap();
    let waiting = store.claim(&m.id, 10, &lease()).await.unwrap();
    assert_eq!(waiting, ClaimOutcome::Busy, "queued, not claimable yet");
    tokio::time::sleep(Duration::from_millis(600)).await;
    let retried = claim_all(&*store, &m.id).await;
    assert_eq!(claimed_ids(&retried), ["a"]);
}

pub(crate) async fn a_renewed_lease_holds_past_its_first_end(backend: &dyn Backend) {
    let store = backend.open().await;
    put(&*store, vec![write("a", &[SOURCE])]).await;
    let m = started(&*store, "m1").await;
    let short = lease_for("replica-a", Duration::from_millis(600));
    let claim = claim_under(&*store, &m.id, 10, &short).await;
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert!(store.renew_claim(&claim, &short).await.unwrap());
    }
    let other = store.claim(&m.id, 10, &lease()).await.unwrap();
    assert_eq!(other, ClaimOutcome::Busy, "still held after 750 ms");
    let receipt = store
        .commit_batch(&claim, &[embedded("a", 1)])
        .await
        .unwrap();
    assert_eq!(receipt.written.len(), 1);
}

pub(crate) async fn only_a_running_migration_or_its_repairs_take_claims(backend: &dyn Backend) {
    let store = backend.open().await;
    put(&*store, vec![write("a", &[SOURCE])]).await;
    let plan = planned("m1");
    store.insert_migration(&plan, &noted(&plan)).await.unwrap();
    assert_eq!(
        store.claim("m1", 10, &lease()).await.unwrap(),
        ClaimOutcome::Closed
    );
    assert_eq!(
        store.claim("nope", 10, &lease()).await.unwrap(),
        ClaimOutcome::Closed
    );
    let running = plan.apply(Event::Start, at(1)).unwrap();
    let counts = store
        .start_migration(&running, &noted(&running))
        .await
        .unwrap();
    let m = Migration { counts, ..running };
    let paused = m.apply(Event::Pause { reason: None }, at(2)).unwrap();
    store
        .update_migration(&paused, MigrationState::InProgress, &noted(&paused))
        .await
        .unwrap();
    assert_eq!(
        store.claim("m1", 10, &lease()).await.unwrap(),
        ClaimOutcome::Closed
    );
    let resumed = paused.apply(Event::Resume, at(3)).unwrap();
    store
        .update_migration(&resumed, MigrationState::Paused, &noted(&resumed))
        .await
        .unwrap();
    let claim = claim_all(&*store, "m1").await;
    store
        .commit_batch(&claim, &[embedded("a", 1)])
        .await
        .unwrap();
    assert_eq!(
        store.claim("m1", 10, &lease()).await.unwrap(),
        ClaimOutcome::Drained
    );
}

pub(crate) async fn replicas_report_their_leases_and_what_they_wrote(backend: &dyn Backend) {
    let store = backend.open().await;
    let docs = ["a", "b", "c"].map(|id| write(id, &[SOURCE])).to_vec();
    put(&*store, docs).await;
    let m = started(&*store, "m1").await;
    let b_lease = lease_for("replica-b", Duration::from_secs(600));
    let by_a = claim_under(&*store, &m.id, 2, &lease()).await;
    let by_b = claim_under(&*store, &m.id, 2, &b_lease).await;
    let replica = |id: &str, in_flight_batches, processed| ReplicaProgress {
        id: id.to_owned(),
        in_flight_batches,
        processed,
    };
    assert_eq!(
        store.backfill_replicas(&m.id).await.unwrap(),
        [replica("replica-a", 1, 0), replica("replica-b", 1, 0)]
    );
    let items = ["a", "b"].map(|id| embedded(id, 1)).to_vec();
    store.commit_batch(&by_a, &items).await.unwrap();
    store.release_failed(&by_b, Duration::ZERO).await.unwrap();
    assert_eq!(
        store.backfill_replicas(&m.id).await.unwrap(),
        [replica("replica-a", 0, 2), replica("replica-b", 0, 0)]
    );
}

// ---- Lifecycle ----------------------------------------------------------------------------

pub(crate) async fn completion_is_refused_while_documents_are_queued(backend: &dyn Backend) {
    let store = backend.open().await;
    put(&*store, vec![write("a", &[SOURCE])]).await;
    let m = started(&*store, "m1").await;
    let mut done = m.clone();
    done.state = MigrationState::Completed;
    done.completed_at = Some(at(5));
    assert!(
        !store
            .complete_migration(&done, &[noted(&done)])
            .await
            .unwrap()
    );
    assert_eq!(
        stored(&*store, "m1").await.state,
        MigrationState::InProgress
    );
    let claim = claim_all(&*store, &m.id).await;
    store
        .commit_batch(&claim, &[embedded("a", 1)])
        .await
        .unwrap();
    assert!(
        store
            .complete_migration(&done, &[noted(&done)])
            .await
            .unwrap()
    );
    let completed = stored(&*store, "m1").await;
    assert_eq!(completed.state, MigrationState::Completed);
    assert_eq!(completed.completed_at, Some(at(5)));
}

pub(crate) async fn an_update_from_the_wrong_state_conflicts_and_changes_nothing(
    backend: &dyn Backend,
) {
    let store = backend.open().await;
    let m = started(&*store, "m1").await;
    let paused = m
        .apply(
            Event::Pause {
                reason: Some("slow down".to_owned()),
            },
            at(2),
        )
        .unwrap();
    let wrong = store
        .update_migration(&paused, MigrationState::Planned, &noted(&paused))
        .await;
    assert!(matches!(wrong, Err(StoreError::Conflict(_))), "{wrong:?}");
    assert_eq!(stored(&*store, "m1").await, m);
    let unknown = Migration {
        id: "nope".to_owned(),
        ..paused.clone()
    };
    let missing = store
        .update_migration(&unknown, MigrationState::InProgress, &noted(&unknown))
        .await;
    assert!(
        matches!(missing, Err(StoreError::Conflict(_))),
        "{missing:?}"
    );
    store
        .update_migration(&paused, MigrationState::InProgress, &noted(&paused))
        .await
        .unwrap();
    assert_eq!(stored(&*store, "m1").await, paused);
}

pub(crate) async fn cancel_clears_the_queue_and_later_writes_are_not_queued(backend: &dyn Backend) {
    let store = backend.open().await;
    put(&*store, vec![write("a", &[SOURCE])]).await;
    let m = started(&*store, "m1").await;
    let cancelled = m.apply(Event::Cancel, at(3)).unwrap();
    store
        .update_migration(&cancelled, MigrationState::InProgress, &noted(&cancelled))
        .await
        .unwrap();
    assert!(backend.queued("m1").await.is_empty());
    let receipt = store.write_documents(&[write("b", &[SOURCE])]).await;
    assert_eq!(receipt.unwrap().migration, None);
    assert_eq!(stored(&*store, "m1").await.counts, counts(1, 0, 0, 0));
}

pub(crate) async fn a_duplicate_migration_id_conflicts(backend: &dyn Backend) {
    let store = backend.open().await;
    store
        .insert_migration(&planned("m1"), &noted(&planned("m1")))
        .await
        .unwrap();
    let again = store
        .insert_migration(&planned("m1"), &noted(&planned("m1")))
        .await;
    assert!(matches!(again, Err(StoreError::Conflict(_))), "{again:?}");
}

/// A migration that was cancelled before it started: no longer open, so another may follow.
fn cancelled(id: &str) -> Migration {
    Migration {
        state: MigrationState::Cancelled,
        ..planned(id)
    }
}

pub(crate) async fn a_second_open_migration_is_refused_until_the_first_closes(
    backend: &dyn Backend,
) {
    let store = backend.open().await;
    let first = started(&*store, "m1").await;
    let second = store
        .insert_migration(&planned("m2"), &noted(&planned("m2")))
        .await;
    assert!(matches!(second, Err(StoreError::Conflict(_))), "{second:?}");
    let cancelled = first.apply(Event::Cancel, at(3)).unwrap();
    store
        .update_migration(&cancelled, MigrationState::InProgress, &noted(&cancelled))
        .await
        .unwrap();
    store
        .insert_migration(&planned("m2"), &noted(&planned("m2")))
        .await
        .unwrap();
    let third = store
        .insert_migration(&planned("m3"), &noted(&planned("m3")))
        .await;
    assert!(
        matches!(third, Err(StoreError::Conflict(_))),
        "a planned one is open: {third:?}"
    );
    assert_eq!(store.migrations().await.unwrap().len(), 2);
}

pub(crate) async fn migrations_are_listed_newest_first(backend: &dyn Backend) {
    let store = backend.open().await;
    for id in ["m1", "m2", "m3"] {
        store
            .insert_migration(&cancelled(id), &noted(&cancelled(id)))
            .await
            .unwrap();
    }
    let ids: Vec<String> = store
        .migrations()
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.id)
        .collect();
    assert_eq!(ids, ["m3", "m2", "m1"]);
}

pub(crate) async fn timestamps_round_trip_exactly(backend: &dyn Backend) {
    let store = backend.open().await;
    let times = [
        Utc.timestamp_opt(0, 0).unwrap(),
        Utc.timestamp_opt(-86_400 * 365, 1).unwrap(),
        Utc.timestamp_opt(1_700_000_000, 999_999_999).unwrap(),
        Utc.with_ymd_and_hms(9999, 12, 31, 23, 59, 59).unwrap(),
    ];
    for (i, time) in times.into_iter().enumerate() {
        let m = Migration {
            started_at: Some(time),
            completed_at: Some(time),
            rollback_window_ends_at: Some(time),
            ..Migration::plan(
                format!("m{i}"),
                SOURCE.into(),
                TARGET.into(),
                BackfillConfig::default(),
                time,
            )
        };
        let m = Migration {
            state: MigrationState::Cancelled,
            ..m
        };
        store.insert_migration(&m, &noted(&m)).await.unwrap();
        assert_eq!(stored(&*store, &m.id).await, m);
    }
}

/// Each change a store makes is in the history, in order, with what the caller said of it;
/// a change the store refuses leaves no entry.
pub(crate) async fn history_records_each_change_in_order_and_nothing_refused(
    backend: &dyn Backend,
) {
    let store = backend.open().await;
    put(&*store, vec![write("d1", &[SOURCE])]).await;
    let running = started(&*store, "m").await;

    let paused = running
        .apply(
            Event::Pause {
                reason: Some("night".into()),
            },
            at(2),
        )
        .unwrap();
    let pause = HistoryEvent::of(
        &Event::Pause {
            reason: Some("night".into()),
        },
        &running,
        &paused,
        at(2),
        &test_cause(),
    );
    let stale = store
        .update_migration(&paused, MigrationState::Planned, &pause)
        .await;
    assert!(matches!(stale, Err(StoreError::Conflict(_))), "{stale:?}");
    let done = Migration {
        state: MigrationState::Completed,
        ..running.clone()
    };
    let early = HistoryEvent::of(&Event::Complete, &running, &done, at(3), &test_cause());
    assert!(
        !store.complete_migration(&done, &[early]).await.unwrap(),
        "d1 is still queued"
    );
    store
        .update_migration(&paused, MigrationState::InProgress, &pause)
        .await
        .unwrap();

    let history = store.history("m").await.unwrap();
    let entries: Vec<(HistoryKind, DateTime<Utc>, &str)> = history
        .iter()
        .map(|e| (e.kind, e.at, e.detail.as_str()))
        .collect();
    assert_eq!(
        entries,
        [
            (HistoryKind::Created, at(0), history[0].detail.as_str()),
            (HistoryKind::Started, at(1), history[1].detail.as_str()),
            (HistoryKind::Paused, at(2), "night"),
        ]
    );
    assert!(
        history
            .iter()
            .all(|e| e.migration_id == "m" && e.replica == "contract" && e.actor == Actor::Service)
    );
    assert_eq!(store.history("unknown").await.unwrap(), []);
}

// ---- Shadow samples -------------------------------------------------------------------------

/// A shadow sample of `overlap`, whose text and hits say which one it is.
fn shadow_sample(overlap: f64, n: usize) -> ShadowSample {
    ShadowSample {
        overlap,
        source_ms: n as f64,
        target_ms: 2.0 * n as f64,
        text: format!("query {n} ✓"),
        source_hits: vec![format!("s{n}"), "shared".to_owned()],
        target_hits: vec![format!("t{n}")],
    }
}

/// Every handle's samples and drops land together and survive a reopen, counted on the
/// migration (its shadow evidence, which each record returns as committed); the worst list
/// keeps the `WORST_KEPT` lowest overlaps, lowest first and the newer among equals, with their
/// texts and hits as recorded. A batch for an unknown migration is refused whole.
pub(crate) async fn shadow_samples_of_every_handle_are_kept_with_the_lowest_overlaps(
    backend: &dyn Backend,
) {
    let (one, other) = (backend.open().await, backend.open().await);
    started(&*one, "m").await;
    let first: Vec<ShadowSample> = (0..25)
        .map(|n| shadow_sample((n % 5) as f64 / 4.0, n))
        .collect();
    let second: Vec<ShadowSample> = (25..30).map(|n| shadow_sample(0.0, n)).collect();
    let evidence = one.record_shadow_samples("m", &first, 3).await.unwrap();
    assert_eq!(evidence, ShadowEvidence::from_sum(25, 12.5));
    let evidence = other.record_shadow_samples("m", &second, 4).await.unwrap();
    assert_eq!(
        evidence,
        ShadowEvidence::from_sum(30, 12.5),
        "both handles count"
    );
    other.record_shadow_samples("m", &[], 1).await.unwrap();
    let unknown = one.record_shadow_samples("unknown", &second, 1).await;
    assert!(unknown.is_err(), "{unknown:?}");
    one.close().await;
    other.close().await;

    let store = backend.open().await;
    let kept = store.comparison("m").await.unwrap();
    assert_eq!(kept.dropped, 8);
    assert_eq!(kept.evidence, ShadowEvidence::from_sum(30, 12.5));
    assert_eq!(
        stored(&*store, "m").await.shadow,
        kept.evidence,
        "on the row"
    );
    let mut figures: Vec<f64> = kept.figures.iter().map(|f| f.source_ms).collect();
    figures.sort_by(f64::total_cmp);
    assert_eq!(figures, (0..30).map(|n| n as f64).collect::<Vec<_>>());
    assert!(
        kept.figures
            .iter()
            .all(|f| f.target_ms == 2.0 * f.source_ms)
    );
    // Overlap 0.0: 29..25 (recorded later), then 20, 15, ..., 0; then 0.25: 21, 16, ...
    let mut expected: Vec<usize> = (25..30).rev().collect();
    expected.extend([20, 15, 10, 5, 0, 21, 16, 11, 6, 1, 22, 17, 12, 7, 2]);
    let worst: Vec<usize> = kept
        .worst
        .iter()
        .map(|w| w.source_hits[0][1..].parse().unwrap())
        .collect();
    assert_eq!(worst, expected);
    let all: Vec<&ShadowSample> = first.iter().chain(&second).collect();
    for (kept, n) in kept.worst.iter().zip(&expected) {
        assert_eq!(*kept, all[*n].worst());
    }
    assert_eq!(
        store.comparison("unknown").await.unwrap(),
        ComparisonData::default()
    );
    store.close().await;
}

/// Only the newest `SAMPLES_KEPT` figures of a migration are kept, and another migration's
/// samples are its own.
pub(crate) async fn only_the_newest_shadow_figures_are_kept(backend: &dyn Backend) {
    let store = backend.open().await;
    let other = cancelled("other");
    store
        .insert_migration(&other, &noted(&other))
        .await
        .unwrap();
    started(&*store, "m").await;
    let oldest: Vec<ShadowSample> = (0..5).map(|n| shadow_sample(0.0, n)).collect();
    store.record_shadow_samples("m", &oldest, 0).await.unwrap();
    let newer: Vec<ShadowSample> = (0..SAMPLES_KEPT).map(|n| shadow_sample(1.0, n)).collect();
    for batch in newer.chunks(2_500) {
        store.record_shadow_samples("m", batch, 0).await.unwrap();
    }
    let kept = store.comparison("m").await.unwrap();
    assert_eq!(kept.figures.len(), SAMPLES_KEPT);
    let every = SAMPLES_KEPT as u64 + 5;
    assert_eq!(
        kept.evidence,
        ShadowEvidence::from_sum(every, SAMPLES_KEPT as f64),
        "every sample counts"
    );
    assert!(
        kept.figures.iter().all(|f| f.overlap == 1.0),
        "the oldest went"
    );
    assert_eq!(kept.worst.len(), WORST_KEPT);
    assert_eq!(kept.worst[0].overlap, 0.0, "the worst are kept apart");

    let own = [shadow_sample(0.5, 1)];
    store.record_shadow_samples("other", &own, 2).await.unwrap();
    let kept = store.comparison("other").await.unwrap();
    assert_eq!((kept.figures.len(), kept.dropped), (1, 2));
    assert_eq!(kept.worst, [own[0].worst()]);
}

/// The source model's vectors go in batches, each counted on the migration, the target's
/// stay, and the end is recorded once however often it is reached.
pub(crate) async fn source_vectors_are_deleted_in_counted_batches_and_the_end_recorded_once(
    backend: &dyn Backend,
) {
    let store = backend.open().await;
    let ids = ["d1", "d2", "d3", "d4", "d5"];
    put(
        &*store,
        ids.iter().map(|id| write(id, &[SOURCE, TARGET])).collect(),
    )
    .await;
    let m = started(&*store, "m").await;
    let mut steps = Vec::new();
    loop {
        let step = store
            .delete_source_vectors(&m, 2, &test_cause())
            .await
            .unwrap();
        let done = step == CleanupStep::Done;
        steps.push(step);
        if done {
            break;
        }
    }
    let deleted =
        |list: &[&str]| CleanupStep::Deleted(list.iter().map(|s| (*s).to_owned()).collect());
    assert_eq!(
        steps,
        [
            deleted(&["d1", "d2"]),
            deleted(&["d3", "d4"]),
            deleted(&["d5"]),
            CleanupStep::Done
        ]
    );
    assert_eq!(
        store
            .delete_source_vectors(&m, 2, &test_cause())
            .await
            .unwrap(),
        CleanupStep::Done
    );
    assert!(all_vectors(&*store, SOURCE).await.unwrap().is_empty());
    assert_eq!(all_vectors(&*store, TARGET).await.unwrap().len(), 5);
    let cleanup = stored(&*store, "m").await.cleanup;
    assert_eq!(cleanup.deleted, 5);
    assert!(cleanup.done_at.is_some());
    let ends: Vec<String> = store
        .history("m")
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.kind == HistoryKind::SourceVectorsDeleted)
        .map(|e| e.detail)
        .collect();
    assert_eq!(ends, ["5 vectors of hash-v1 deleted; its index is freed"]);
}

/// A newer migration stops the deletion: the vectors may be its to use.
pub(crate) async fn a_newer_migration_supersedes_the_deletion(backend: &dyn Backend) {
    let store = backend.open().await;
    put(&*store, vec![write("d1", &[SOURCE, TARGET])]).await;
    let m = started(&*store, "m").await;
    let stopped = Migration {
        state: MigrationState::Cancelled,
        ..m.clone()
    };
    store
        .update_migration(&stopped, MigrationState::InProgress, &noted(&stopped))
        .await
        .unwrap();
    store
        .insert_migration(&planned("m2"), &noted(&planned("m2")))
        .await
        .unwrap();
    assert_eq!(
        store
            .delete_source_vectors(&m, 10, &test_cause())
            .await
            .unwrap(),
        CleanupStep::Superseded
    );
    assert_eq!(all_vectors(&*store, SOURCE).await.unwrap().len(), 1);
}

// ---- Durability ---------------------------------------------------------------------------

/// A completed migration with every timestamp set, then a running one with a queue, a skip,
/// a processed document embedded truncated, a failure and a pause reason.
async fn populate(store: &dyn Store) -> (Migration, Migration) {
    store.set_active_model(SOURCE).await.unwrap();
    put(
        store,
        vec![
            write("a", &[SOURCE]),
            write("b", &[SOURCE]),
            write("c", &[SOURCE]),
        ],
    )
    .await;
    let first = started(store, "m1").await;
    let items = ["a", "b", "c"].map(|id| embedded(id, 1)).to_vec();
    let claim = claim_all(store, "m1").await;
    let receipt = store.commit_batch(&claim, &items).await.unwrap();
    let first = Migration {
        counts: receipt.delta.applied_to(first.counts),
        ..first
    };
    let first = first.apply(Event::Complete, at(4)).unwrap();
    assert!(
        store
            .complete_migration(&first, &[noted(&first)])
            .await
            .unwrap()
    );
    let second = Migration {
        source_model: TARGET.to_owned(),
        target_model: THIRD.to_owned(),
        ..planned("m2")
    };
    store
        .insert_migration(&second, &noted(&second))
        .await
        .unwrap();
    let second = second.apply(Event::Start, at(10)).unwrap();
    let second = Migration {
        counts: store
            .start_migration(&second, &noted(&second))
            .await
            .unwrap(),
        ..second
    };
    let skip = BatchItem::Skipped {
        id: "a".to_owned(),
        reason: "rejected".to_owned(),
    };
    let batch = vec![
        skip,
        BatchItem::Embedded {
            id: "b".to_owned(),
            version: 1,
            vector: vec![1.0],
            truncated: true,
        },
    ];
    let claim = claim_all(store, "m2").await;
    let receipt = store
        .commit_claimed(&claim, &batch, 0, AfterCommit::KeepLease)
        .await
        .unwrap();
    let failures = store.release_failed(&claim, Duration::ZERO).await.unwrap();
    let second = Migration {
        counts: receipt.delta.then(failures).applied_to(second.counts),
        ..second
    };
    let paused = second
        .apply(
            Event::Pause {
                reason: Some("night".to_owned()),
            },
            at(11),
        )
        .unwrap();
    store
        .update_migration(&paused, MigrationState::InProgress, &noted(&paused))
        .await
        .unwrap();
    (first, paused)
}

pub(crate) async fn everything_survives_a_reopen(backend: &dyn Backend) {
    let store = backend.open().await;
    let (first, second) = populate(&*store).await;
    let with_truncated = Counts {
        truncated: 1,
        ..counts(3, 1, 1, 1)
    };
    assert_eq!(second.counts, with_truncated);
    let skips = store.skips("m2").await.unwrap();
    let documents = store.list_documents(None, 10).await.unwrap();
    store.close().await;

    let store = backend.open().await;
    assert_eq!(store.migrations().await.unwrap(), [second, first]);
    assert_eq!(
        stored(&*store, "m2").await.counts.truncated,
        1,
        "truncated is durable"
    );
    assert_eq!(store.active_model().await.unwrap().as_deref(), Some(SOURCE));
    assert_eq!(backend.queued("m2").await, [("c".to_owned(), 1)]);
    assert_eq!(store.skips("m2").await.unwrap(), skips);
    assert_eq!(store.list_documents(None, 10).await.unwrap(), documents);
    assert_eq!(all_vectors(&*store, TARGET).await.unwrap().len(), 3);
    store.close().await;
}

/// Claims up to seven queued documents and commits each embedded at its claimed version.
async fn embed_one_batch(store: &dyn Store, migration_id: &str) {
    let ClaimOutcome::Claimed(claim) = store.claim(migration_id, 7, &lease()).await.unwrap() else {
        return;
    };
    let items: Vec<BatchItem> = claim
        .documents
        .iter()
        .map(|d| embedded(&d.id, d.version))
        .collect();
    store.commit_batch(&claim, &items).await.unwrap();
}

// ---- Concurrency --------------------------------------------------------------------------

/// Every document off the queue has a target vector for its current version, and the counts
/// balance: total = processed + skipped + still queued.
async fn assert_consistent(backend: &dyn Backend, store: &dyn Store, migration_id: &str) {
    let queue = backend.queued(migration_id).await;
    let c = stored(store, migration_id).await.counts;
    assert_eq!(
        c.total,
        c.processed + c.skipped + queue.len() as u64,
        "{c:?}"
    );
    let target = all_vectors(store, TARGET).await.unwrap();
    for document in store.list_documents(None, 1000).await.unwrap() {
        if queue.iter().any(|(id, _)| *id == document.id) {
            continue;
        }
        let vector = target.iter().find(|(id, ..)| *id == document.id);
        assert_eq!(
            vector.map(|v| v.1),
            Some(document.version),
            "{}",
            document.id
        );
    }
}

pub(crate) async fn concurrent_writes_and_batches_keep_counts_and_vectors_consistent(
    backend: &dyn Backend,
) {
    let store = backend.open().await;
    let ids: Vec<String> = (0..40).map(|i| format!("doc-{i:02}")).collect();
    put(&*store, ids.iter().map(|id| write(id, &[SOURCE])).collect()).await;
    started(&*store, "m1").await;
    let writer = {
        let store = store.clone();
        tokio::spawn(async move {
            for (i, id) in ids.iter().cycle().take(120).enumerate() {
                let models: &[&str] = if i % 3 == 0 {
                    &[SOURCE, TARGET]
                } else {
                    &[SOURCE]
                };
                put(&*store, vec![write_text(id, &format!("edit {i}"), models)]).await;
            }
        })
    };
    for _ in 0..60 {
        embed_one_batch(&*store, "m1").await;
    }
    writer.await.unwrap();
    assert_consistent(backend, &*store, "m1").await;
    while !backend.queued("m1").await.is_empty() {
        embed_one_batch(&*store, "m1").await;
    }
    assert_consistent(backend, &*store, "m1").await;
}
