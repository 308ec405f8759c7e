//! The PostgreSQL store against a real server: the contract suite (`store::contract`), each
//! test in a database of its own, and what only PostgreSQL has — the pgvector check, schema
//! migrations from replicas starting together, the database refusing a second backfilling
//! migration, and writes racing a start made through another replica's pool.
//!
//! `REEMBED_TEST_DATABASE_URL` names a server where databases may be created, with pgvector
//! installed; `scripts/test.sh` starts one (`scripts/postgres.sh`) and sets it.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::Utc;
use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection};

use super::{PostgresStore, pgvector_supported, prepare_schema};
use crate::domain::{BackfillConfig, Event, Migration, MigrationState};
use crate::store::contract::{Backend, SOURCE, contract_tests, noted, planned, put, write};
use crate::store::{BatchItem, ClaimOutcome, DocumentWrite, LeaseRequest, Store, StoreError};

/// A lease that outlasts any test.
fn lease() -> LeaseRequest {
    LeaseRequest {
        replica: "replica-a".to_owned(),
        duration: std::time::Duration::from_secs(600),
    }
}

/// Connections per store in tests: two stores (two "replicas") per test stay well within the
/// server's limit while tests run side by side.
const CONNECTIONS: u32 = 4;

/// A database of its own on the test server, dropped with the backend.
struct PostgresBackend {
    server: String,
    name: String,
    options: PgConnectOptions,
}

#[async_trait]
impl Backend for PostgresBackend {
    async fn open(&self) -> Arc<dyn Store> {
        Arc::new(self.connect().await)
    }

    async fn queued(&self, migration_id: &str) -> Vec<(String, u64)> {
        let mut connection = PgConnection::connect_with(&self.options)
            .await
            .expect("connect");
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT q.doc_id, d.version FROM backfill_queue q JOIN documents d ON d.id = q.doc_id
             WHERE q.migration_id = $1 ORDER BY q.doc_id",
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

impl PostgresBackend {
    /// A new store on this backend's database, as a restarted process or another replica
    /// connects.
    async fn connect(&self) -> PostgresStore {
        PostgresStore::connect_with(self.options.clone(), CONNECTIONS)
            .await
            .expect("connect to the test database")
    }
}

impl Drop for PostgresBackend {
    /// Drops the database, on a thread of its own since `drop` cannot await; `FORCE` closes
    /// the connections of stores the test left open.
    fn drop(&mut self) {
        let (server, name) = (self.server.clone(), self.name.clone());
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async {
                let mut admin = PgConnection::connect(&server).await?;
                let sql = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
                sqlx::raw_sql(&sql).execute(&mut admin).await.map(drop)
            })
        });
        if let Ok(Err(error)) = dropped.join() {
            eprintln!("could not drop test database {}: {error}", self.name);
        }
    }
}

/// A backend on a new, empty database of the server at `REEMBED_TEST_DATABASE_URL`.
async fn backend() -> PostgresBackend {
    let server = std::env::var("REEMBED_TEST_DATABASE_URL").expect(
        "REEMBED_TEST_DATABASE_URL must name a PostgreSQL server with pgvector for the \
         PostgreSQL store's tests; scripts/test.sh starts one and sets it \
         (see scripts/postgres.sh)",
    );
    let name = format!("reembed_{}", uuid::Uuid::new_v4().simple());
    let mut admin = PgConnection::connect(&server)
        .await
        .expect("connect to REEMBED_TEST_DATABASE_URL");
    sqlx::raw_sql(&format!("CREATE DATABASE {name}"))
        .execute(&mut admin)
        .await
        .expect("create a test database");
    let options: PgConnectOptions = server.parse().expect("a PostgreSQL URL");
    PostgresBackend {
        options: options.database(&name),
        server,
        name,
    }
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

#[test]
fn pgvector_from_0_8_0_is_accepted_and_older_or_unreadable_versions_are_not() {
    for accepted in ["0.8.0", "0.8.2", "0.8.4", "0.9", "1.0.0", "0.10.1"] {
        assert!(pgvector_supported(accepted), "{accepted}");
    }
    for refused in ["0.7.4", "0.5", "0", "", "0.8.0-rc1", "latest"] {
        assert!(!pgvector_supported(refused), "{refused}");
    }
}

/// Replicas starting at once on a new database take turns on the schema lock: each finds the
/// extension and the schema ready or makes them, and none fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_migrating_a_new_database_at_once_all_succeed() {
    let backend = backend().await;
    let starts: Vec<_> = (0..3)
        .map(|_| {
            let options = backend.options.clone();
            tokio::spawn(async move { prepare_schema(&options).await })
        })
        .collect();
    for start in starts {
        start.await.unwrap().expect("schema prepared");
    }
    let store = backend.connect().await;
    store.ping().await.unwrap();
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_itself_refuses_a_second_backfilling_migration() {
    let backend = backend().await;
    let store = backend.connect().await;
    let first = planned("m1");
    store
        .insert_migration(&first, &noted(&first))
        .await
        .unwrap();
    let running = first.apply(Event::Start, Utc::now()).unwrap();
    store
        .start_migration(&running, &noted(&running))
        .await
        .unwrap();
    let raw = sqlx::query(
        "INSERT INTO migrations (id, source_model, target_model, config, state, created_at)
         VALUES ('m2', 'a', 'b', '{}', 'paused', now())",
    )
    .execute(&store.pool)
    .await;
    let error = raw.expect_err("a second backfilling migration");
    assert_eq!(
        error.as_database_error().and_then(|e| e.constraint()),
        Some("migrations_one_backfilling")
    );
    // Through the store: a second migration is not even stored while the first is open.
    let refused = store
        .insert_migration(&planned("m3"), &noted(&planned("m3")))
        .await;
    assert!(
        matches!(refused, Err(StoreError::Conflict(_))),
        "{refused:?}"
    );
    assert_eq!(store.migration("m3").await.unwrap(), None);
}

/// Two replicas (two stores, two pools): one writes a document without the target vector
/// while the other starts a migration. Whichever commits first, the document ends up queued
/// and counted once: the write's transaction reads the migration row, never a snapshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_racing_a_start_on_another_replica_is_always_queued() {
    let backend = backend().await;
    let writer = Arc::new(backend.connect().await);
    let starter = Arc::new(backend.connect().await);
    for round in 0..50 {
        let plan = Migration::plan(
            format!("m{round}"),
            SOURCE.to_owned(),
            format!("target-{round}"),
            BackfillConfig::default(),
            Utc::now(),
        );
        starter
            .insert_migration(&plan, &noted(&plan))
            .await
            .unwrap();
        let running = plan.apply(Event::Start, Utc::now()).unwrap();
        let document = format!("doc-{round:02}");
        let write = {
            let (writer, writes) = (writer.clone(), vec![write(&document, &[SOURCE])]);
            tokio::spawn(async move { writer.write_documents(&writes).await })
        };
        let start = {
            let (starter, running) = (starter.clone(), running.clone());
            tokio::spawn(async move { starter.start_migration(&running, &noted(&running)).await })
        };
        write.await.unwrap().expect("write");
        start.await.unwrap().expect("start");
        let queue = backend.queued(&running.id).await;
        assert!(
            queue.iter().any(|(id, _)| *id == document),
            "round {round}: {document} neither has a target vector nor is queued"
        );
        let counts = writer.migration(&running.id).await.unwrap().unwrap().counts;
        assert_eq!(counts.total, queue.len() as u64, "round {round}");
        let cancelled = running.apply(Event::Cancel, Utc::now()).unwrap();
        starter
            .update_migration(&cancelled, MigrationState::InProgress, &noted(&cancelled))
            .await
            .unwrap();
    }
}

/// pgvector refuses NaN and infinities, and the store says so before writing anything (the
/// contract's round trip covers every finite value).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vector_with_a_non_finite_value_is_refused_and_nothing_is_written() {
    let backend = backend().await;
    let store = backend.connect().await;
    let infinite = DocumentWrite {
        vectors: vec![(SOURCE.to_owned(), vec![1.0, f32::INFINITY])],
        ..write("b", &[])
    };
    let refused = store.write_documents(&[infinite]).await;
    assert!(
        matches!(refused, Err(StoreError::Corrupt(_))),
        "{refused:?}"
    );
    assert_eq!(store.get_document("b").await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_stored_state_is_reported_as_corrupt() {
    let backend = backend().await;
    let store = backend.connect().await;
    store
        .insert_migration(&planned("m1"), &noted(&planned("m1")))
        .await
        .unwrap();
    sqlx::query("UPDATE migrations SET state = 'bogus'")
        .execute(&store.pool)
        .await
        .unwrap();
    let read = store.migration("m1").await;
    assert!(matches!(read, Err(StoreError::Corrupt(_))), "{read:?}");
}

/// Two replicas: one commits a backfill batch for a document's version 1 while the other
/// rewrites it without the target vector. Whichever commits first, the document ends up
/// either queued or with a target vector of its current version (compare-and-set under the
/// document's row lock), and the counts balance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_racing_a_rewrite_on_another_replica_never_leaves_a_stale_vector() {
    let backend = backend().await;
    let backfill = Arc::new(backend.connect().await);
    let writer = Arc::new(backend.connect().await);
    let ids: Vec<String> = (0..50).map(|n| format!("doc-{n:02}")).collect();
    put(
        &*writer,
        ids.iter().map(|id| write(id, &[SOURCE])).collect(),
    )
    .await;
    let plan = planned("m1");
    backfill
        .insert_migration(&plan, &noted(&plan))
        .await
        .unwrap();
    let running = plan.apply(Event::Start, Utc::now()).unwrap();
    backfill
        .start_migration(&running, &noted(&running))
        .await
        .unwrap();
    let target = running.target_model.clone();
    for id in &ids {
        let batch = {
            let backfill = backfill.clone();
            let item = BatchItem::Embedded {
                id: id.clone(),
                version: 1,
                vector: vec![1.0, 2.0],
                truncated: false,
            };
            tokio::spawn(async move {
                let ClaimOutcome::Claimed(claim) =
                    backfill.claim("m1", 1000, &lease()).await.unwrap()
                else {
                    panic!("a document is queued");
                };
                backfill.commit_batch(&claim, &[item]).await
            })
        };
        let rewrite = {
            let (writer, writes) = (writer.clone(), vec![write(id, &[SOURCE])]);
            tokio::spawn(async move { writer.write_documents(&writes).await })
        };
        batch.await.unwrap().expect("batch");
        rewrite.await.unwrap().expect("rewrite");
        let document = writer.get_document(id).await.unwrap().unwrap();
        let vector = document.embeddings.iter().find(|e| e.model == target);
        let queued = backend.queued("m1").await.iter().any(|(q, _)| q == id);
        assert!(
            queued || vector.map(|v| v.version) == Some(document.version),
            "{id}: a stale target vector {vector:?} and not queued"
        );
    }
    let queue = backend.queued("m1").await;
    let counts = writer.migration("m1").await.unwrap().unwrap().counts;
    assert_eq!(counts.total, counts.processed + queue.len() as u64);
}

/// The database's own vector search (`search.rs`).
#[path = "search_tests.rs"]
mod search;
