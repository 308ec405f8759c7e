//! The SQLite store on real database files in a temporary directory: the contract suite
//! (`store::contract`), and what only SQLite has — its pragmas, its files, and damage done to
//! them from outside.

use std::sync::Arc;

use async_trait::async_trait;
use tempfile::TempDir;

use sqlx::Connection;
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};

use super::{DB_FILE, SqliteStore};
use crate::store::contract::{
    Backend, SOURCE, all_vectors, claim_all, contract_tests, noted, planned, put, started, write,
    write_text,
};
use crate::store::{DocumentWrite, Store, StoreError};

/// A database file in a temporary directory of its own, removed with it.
struct SqliteBackend(TempDir);

#[async_trait]
impl Backend for SqliteBackend {
    async fn open(&self) -> Arc<dyn Store> {
        Arc::new(SqliteStore::open(self.0.path()).await.expect("open store"))
    }

    async fn queued(&self, migration_id: &str) -> Vec<(String, u64)> {
        let options = SqliteConnectOptions::new()
            .filename(self.0.path().join(DB_FILE))
            .read_only(true);
        let mut connection = SqliteConnection::connect_with(&options)
            .await
            .expect("connect");
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT q.doc_id, d.version FROM backfill_queue q JOIN documents d ON d.id = q.doc_id
             WHERE q.migration_id = ?1 ORDER BY q.doc_id",
        )
        .bind(migration_id)
        .fetch_all(&mut connection)
        .await
        .expect("read the queue");
        rows.into_iter()
            .map(|(id, version)| (id, u64::try_from(version).expect("version")))
            .collect()
    }
}

async fn backend() -> SqliteBackend {
    SqliteBackend(TempDir::new().expect("temp dir"))
}

contract_tests!(backend() =>
    a_write_dropped_at_any_await_leaves_the_store_writable,
    active_model_starts_unset_and_can_be_replaced,
    a_cut_over_happens_once_and_only_from_the_recorded_model,
    each_write_of_an_id_grows_its_version_by_one,
    a_bulk_write_applies_a_repeated_id_in_order,
    vectors_round_trip_bit_exactly,
    a_document_lists_its_embeddings_by_model_with_their_versions,
    documents_are_listed_in_pages_of_id_order,
    hit_documents_leave_out_missing_ids,
    metadata_streams_the_documents_that_have_any_at_their_version,
    delete_removes_the_document_and_its_vectors,
    stored_documents_list_the_given_ids_with_their_embeddings,
    an_unchanged_text_keeps_its_current_vectors_at_the_new_version,
    a_changed_text_keeps_nothing_and_its_new_vectors_replace_the_old,
    a_keep_conflicts_when_the_document_changed_since_it_was_read,
    a_kept_target_vector_dequeues_like_a_dual_write_and_is_never_claimed,
    a_recreated_document_continues_its_version_so_an_old_claim_fails,
    start_queues_exactly_the_documents_lacking_a_current_target_vector,
    start_is_refused_unless_the_migration_is_planned,
    a_write_with_the_target_vector_dequeues_and_counts_processed,
    a_write_without_the_target_vector_queues_and_counts_total_once,
    a_paused_or_failed_migration_still_follows_writes,
    deleting_a_queued_document_shrinks_the_total,
    after_completion_a_write_lacking_the_target_conflicts_and_changes_nothing,
    a_dual_write_satisfying_a_queued_long_document_counts_it_truncated,
    a_long_write_counts_truncated_only_when_it_satisfies_a_queued_target_entry,
    a_batch_writes_vectors_of_unchanged_documents_and_counts_them,
    a_batch_item_marked_truncated_counts_once_when_written,
    a_batch_counts_its_tokens_in_the_commit_of_its_vectors,
    an_empty_commit_releases_the_claim_and_counts_nothing,
    a_part_commit_keeps_the_lease_and_the_release_frees_the_rest,
    claims_never_overlap_and_take_the_lowest_ids_first,
    at_most_max_concurrent_claims_are_held_and_a_lowered_bound_applies_next,
    an_expired_lease_is_claimed_again_and_its_holder_commits_nothing,
    a_failed_document_waits_its_retry_while_claims_move_on,
    a_renewed_lease_holds_past_its_first_end,
    only_a_running_migration_or_its_repairs_take_claims,
    replicas_report_their_leases_and_what_they_wrote,
    a_batch_does_not_overwrite_a_document_rewritten_without_the_target,
    a_batch_does_not_overwrite_or_recount_a_dual_written_document,
    a_skip_leaves_the_queue_for_the_skip_list_once,
    retried_skips_leave_out_documents_dual_written_since,
    a_failed_attempt_counts_each_queued_document_once,
    failed_goes_down_as_documents_leave_the_queue_by_any_way,
    completion_is_refused_while_documents_are_queued,
    an_update_from_the_wrong_state_conflicts_and_changes_nothing,
    cancel_clears_the_queue_and_later_writes_are_not_queued,
    a_duplicate_migration_id_conflicts,
    a_second_open_migration_is_refused_until_the_first_closes,
    migrations_are_listed_newest_first,
    timestamps_round_trip_exactly,
    history_records_each_change_in_order_and_nothing_refused,
    shadow_samples_of_every_handle_are_kept_with_the_lowest_overlaps,
    only_the_newest_shadow_figures_are_kept,
    source_vectors_are_deleted_in_counted_batches_and_the_end_recorded_once,
    a_newer_migration_supersedes_the_deletion,
    everything_survives_a_reopen,
    concurrent_writes_and_batches_keep_counts_and_vectors_consistent,
);

async fn open() -> (TempDir, SqliteStore) {
    let dir = TempDir::new().expect("temp dir");
    let store = SqliteStore::open(dir.path()).await.expect("open store");
    (dir, store)
}

#[tokio::test]
async fn open_sets_wal_full_sync_and_foreign_keys() {
    let (dir, store) = open().await;
    let setting = |name: &'static str| sqlx::query_scalar::<_, i64>(name);
    let mode = sqlx::query_scalar::<_, String>("PRAGMA journal_mode");
    let mode = mode.fetch_one(&store.writer).await;
    let sync = setting("PRAGMA synchronous").fetch_one(&store.writer).await;
    let keys = setting("PRAGMA foreign_keys")
        .fetch_one(&store.writer)
        .await;
    assert_eq!(mode.unwrap(), "wal");
    assert_eq!(sync.unwrap(), 2, "2 is FULL");
    assert_eq!(keys.unwrap(), 1);
    assert!(dir.path().join("reembed.db").exists());
    store.ping().await.expect("ping");
}

#[tokio::test]
async fn open_creates_a_missing_data_dir() {
    let dir = TempDir::new().unwrap();
    let nested = dir.path().join("a/b");
    let store = SqliteStore::open(&nested).await.expect("open");
    assert!(nested.join("reembed.db").exists());
    store.close().await;
}

/// Start-up streams every vector in pages (see `bulk`): more than a page arrive whole, once
/// each, in id order, and a corrupt one is an error, never a silent gap.
#[tokio::test]
async fn many_vectors_stream_whole_in_id_order_and_a_corrupt_one_is_an_error() {
    let (_dir, store) = open().await;
    let id = |n: usize| format!("d{n:05}");
    let writes = (0..2_500).rev().map(|n| write(&id(n), &[SOURCE])).collect();
    put(&store, writes).await;
    let streamed = all_vectors(&store, SOURCE).await.unwrap();
    let ids: Vec<String> = streamed.into_iter().map(|(id, ..)| id).collect();
    assert_eq!(ids, (0..2_500).map(id).collect::<Vec<_>>());
    // Damage the schema's checks would refuse, as a bad disk or another program could do.
    for sql in [
        "PRAGMA ignore_check_constraints = ON",
        "UPDATE vectors SET data = x'00' WHERE doc_id = 'd01234'",
        "PRAGMA ignore_check_constraints = OFF",
    ] {
        sqlx::query(sql).execute(&store.writer).await.unwrap();
    }
    let error = all_vectors(&store, SOURCE).await.unwrap_err();
    assert!(matches!(error, StoreError::Corrupt(_)), "{error:?}");
}

#[tokio::test]
async fn hit_documents_of_no_ids_are_none_and_none_are_read_once_closed() {
    let dir = TempDir::new().unwrap();
    let store = SqliteStore::open(dir.path()).await.unwrap();
    put(&store, vec![write_text("a", "alpha", &[SOURCE])]).await;
    assert!(store.hit_documents(&[]).await.unwrap().is_empty());
    let ids = vec!["a".to_owned()];
    let reads = (0..8).map(|_| store.hit_documents(&ids));
    for hits in futures_util::future::join_all(reads).await {
        assert_eq!(hits.unwrap().len(), 1);
    }
    store.close().await;
    assert!(
        !dir.path().join("reembed.db-wal").exists(),
        "the connections kept for lookups are closed before the writer checkpoints"
    );
    assert!(matches!(
        store.hit_documents(&ids).await,
        Err(StoreError::Unavailable(_))
    ));
}

#[tokio::test]
async fn an_unknown_stored_state_is_reported_as_corrupt() {
    let (_dir, store) = open().await;
    store
        .insert_migration(&planned("m1"), &noted(&planned("m1")))
        .await
        .unwrap();
    sqlx::query("UPDATE migrations SET state = 'bogus'")
        .execute(&store.writer)
        .await
        .unwrap();
    let read = store.migration("m1").await;
    assert!(matches!(read, Err(StoreError::Corrupt(_))), "{read:?}");
}

/// One process uses a SQLite database, so a batch claimed before a restart is not running:
/// its documents are claimable at once, not after its lease.
#[tokio::test]
async fn opening_releases_the_leases_of_a_previous_process() {
    let backend = backend().await;
    let store = backend.open().await;
    put(&*store, vec![write("a", &[SOURCE])]).await;
    let m = started(&*store, "m1").await;
    let before = claim_all(&*store, &m.id).await;
    store.close().await;
    let store = backend.open().await;
    let after = claim_all(&*store, &m.id).await;
    assert_eq!(after.documents, before.documents);
    assert_ne!(after.token, before.token);
}

/// SQLite stores vectors as blobs, so even NaN payloads and infinities come back bit for bit.
#[tokio::test]
async fn non_finite_values_round_trip_bit_exactly() {
    let backend = backend().await;
    let store = backend.open().await;
    let values = vec![
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::from_bits(0x7fc0_0001),
    ];
    let doc = DocumentWrite {
        vectors: vec![(SOURCE.to_owned(), values.clone())],
        ..write("a", &[])
    };
    put(&*store, vec![doc]).await;
    let stored = all_vectors(&*store, SOURCE).await.unwrap();
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&stored[0].2), bits(&values));
}
