//! Durable storage: documents, one vector per (model, document), migrations with their
//! counts, the backfill queue and the skip list.
//!
//! The `Store` trait is what the rest of the crate sees; `sqlite/` is the embedded default.
//! Every method that acknowledges a change commits it before returning (invariant 5). Storage
//! knows nothing of routing, but it carries out one consistency rule that must be atomic with
//! each write: while a migration is backfilling, a document written without a current target
//! vector is queued for the backfill in the same transaction (API.md, "Every write during a
//! migration leaves the target index consistent"). The rule and its counts are decided by
//! `domain::queue`; a backend only runs what it plans inside its own transaction.

mod batch;
#[cfg(test)]
pub(crate) mod contract;
mod kept;
pub mod postgres;
pub mod sqlite;
mod stored;
mod writes;

use async_trait::async_trait;
use futures_util::stream::BoxStream;
use serde_json::Value;

pub use crate::domain::CountsDelta;
use crate::domain::{
    Cause, ComparisonData, Counts, Evaluation, HistoryEvent, Migration, MigrationState,
    ShadowEvidence, ShadowSample,
};
pub use kept::Kept;

/// A document as stored, with which models hold a vector for it and for which version.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredDocument {
    pub id: String,
    pub text: String,
    pub metadata: Value,
    pub version: u64,
    /// Sorted by model id.
    pub embeddings: Vec<VectorInfo>,
}

/// The vector one model holds for a document (API.md `embeddings` entry).
#[derive(Debug, Clone, PartialEq)]
pub struct VectorInfo {
    pub model: String,
    pub version: u64,
    pub dimensions: usize,
}

/// One document to upsert, already embedded with every model it must be written with that
/// does not keep its stored vector.
#[derive(Debug, Clone)]
pub struct DocumentWrite {
    pub id: String,
    pub text: String,
    pub metadata: Value,
    /// (model id, normalised vector); stored tagged with the document's new version.
    pub vectors: Vec<(String, Vec<f32>)>,
    /// The stored vectors this write keeps, its text being unchanged (see [`Kept`]): they move
    /// to the new version if the document is still as the write read it, or the write
    /// conflicts. `None` when it keeps none.
    pub kept: Option<Kept>,
}

impl DocumentWrite {
    /// Whether the document holds a current vector of `model` once this write commits: one it
    /// carries, or one it keeps.
    pub fn carries(&self, model: &str) -> bool {
        self.vectors.iter().any(|(m, _)| m == model)
            || self.kept.as_ref().is_some_and(|kept| kept.keeps(model))
    }
}

/// What one step of deleting a migration's source vectors did.
#[derive(Debug, Clone, PartialEq)]
pub enum CleanupStep {
    /// These documents' source vectors were deleted; there may be more.
    Deleted(Vec<String>),
    /// None was left: the deletion is done (and recorded).
    Done,
    /// A newer migration exists; nothing was deleted.
    Superseded,
}

/// The version a write produced for one document.
#[derive(Debug, Clone, PartialEq)]
pub struct WriteOutcome {
    pub id: String,
    pub version: u64,
}

/// A stored vector: (document id, document version it was computed from, the vector).
pub type StoredVector = (String, u64, Vec<f32>);

/// A stored document's metadata: (document id, document version, metadata).
pub type StoredMetadata = (String, u64, serde_json::Value);

/// Asked by `Store::write_documents_with` of a write's target vector: whether model (first
/// argument) embedded the text (second) truncated, being longer than its `max_input_tokens`
/// (`ModelRegistry::is_over_input_limit`). Storage asks; the registry decides.
pub type OverInputLimit<'a> = &'a (dyn Fn(&str, &str) -> bool + Send + Sync);

/// The result of a write or delete: per-document versions and the effect on the backfilling
/// migration, if one was affected.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WriteReceipt {
    pub outcomes: Vec<WriteOutcome>,
    pub migration: Option<(String, CountsDelta)>,
}

/// A document claimed by a backfill batch, with the version its text belongs to.
#[derive(Debug, Clone, PartialEq)]
pub struct ClaimedDocument {
    pub id: String,
    pub text: String,
    pub version: u64,
}

/// Who claims backfill work, and for how long a claim holds before another may take it.
#[derive(Debug, Clone, PartialEq)]
pub struct LeaseRequest {
    /// The claiming replica (`--replica-id`), reported in progress.
    pub replica: String,
    /// How long a claim holds unless renewed: a replica that dies mid-batch loses it then.
    pub duration: std::time::Duration,
}

/// A batch of queued documents that one backfill batch holds until its lease expires: no
/// other claim gets them meanwhile, and only this claim may commit them.
#[derive(Debug, Clone, PartialEq)]
pub struct Claim {
    pub migration_id: String,
    /// The model the batch embeds with (the migration's target).
    pub target_model: String,
    /// Unique to this claim; the queued documents and the lease slot it holds carry it.
    pub token: String,
    pub documents: Vec<ClaimedDocument>,
}

/// What a [`Store::claim`] found.
#[derive(Debug, Clone, PartialEq)]
pub enum ClaimOutcome {
    /// A batch to embed.
    Claimed(Claim),
    /// `max_concurrent` claims are held, or every queued document is under a lease: try
    /// again when one is committed or expires.
    Busy,
    /// Nothing is queued: the migration may complete.
    Drained,
    /// The migration takes no claims in its state (planned, paused, failed, ended).
    Closed,
}

/// Whether [`Store::commit_claimed`] releases the claim's lease or keeps it for more parts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterCommit {
    /// The batch goes on in another transaction under the same lease.
    KeepLease,
    /// The batch is done: documents still queued under the claim become claimable again.
    Release,
}

/// One replica's share of a migration's backfill (API.md, progress `replicas`).
#[derive(Debug, Clone, PartialEq)]
pub struct ReplicaProgress {
    pub id: String,
    /// Its claims whose lease has not expired.
    pub in_flight_batches: u32,
    /// Target vectors its batches wrote.
    pub processed: u64,
}

/// What a backfill batch produced for one claimed document.
#[derive(Debug, Clone)]
pub enum BatchItem {
    /// Embedded: write the vector if the document is still at `version` (compare-and-set).
    Embedded {
        id: String,
        version: u64,
        vector: Vec<f32>,
        /// Whether the text was longer than the target's `max_input_tokens`, so the provider
        /// embedded it truncated: the migration counts it as truncated once written.
        truncated: bool,
    },
    /// Permanently rejected by the provider: take it off the queue and list it as skipped.
    Skipped { id: String, reason: String },
}

/// What `commit_batch` wrote: the vectors that passed compare-and-set (for the in-memory
/// index) and the count changes it persisted.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BatchReceipt {
    /// (document id, version) of every target vector written.
    pub written: Vec<(String, u64)>,
    pub delta: CountsDelta,
}

/// A document the backfill gave up on (API.md `GET /v1/migrations/{id}/skips`).
#[derive(Debug, Clone, PartialEq)]
pub struct Skip {
    pub document_id: String,
    pub reason: String,
    pub at: chrono::DateTime<chrono::Utc>,
}

/// Why a store call failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be reached or refused the operation; the caller may retry.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// The write raced a state change (for example, a migration completed while a write that
    /// lacked its target vector was in flight, or another write changed a document whose
    /// vectors this one meant to keep). Nothing was written; re-route and retry.
    #[error("write conflicts with a concurrent migration change: {0}")]
    Conflict(String),
    /// Stored data does not decode (an unknown state name, a wrong-sized vector blob).
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// The disk holding the database is full or failing: nothing was written, and no write
    /// can be until space is freed. Reads still answer.
    #[error("the disk holding the database is full or failing: {0}")]
    Full(String),
}

/// A model's index in a backend that keeps its vector indexes in the database.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelIndex {
    pub model: String,
    /// The length of the model's vectors.
    pub dimensions: usize,
    /// How many candidates an approximate search keeps (the registry's `expansion_search`):
    /// more finds more true neighbours, slower.
    pub expansion_search: usize,
}

/// What a database-side search found: the hits, best first, and whether every candidate
/// vector was scored (as `IndexSet::search` reports it).
#[derive(Debug, Clone, PartialEq)]
pub struct Nearest {
    pub hits: Vec<crate::index::Hit>,
    pub exact: bool,
}

/// Nearest-neighbour search inside the database, for a backend whose vector indexes live
/// there (PostgreSQL with pgvector) rather than in this process's memory: a replica then
/// never loads every vector, and every replica searches the same, current index.
#[async_trait]
pub trait VectorSearch: Send + Sync {
    /// Creates the index of each model if missing; idempotent, and safe when several replicas
    /// start at once.
    async fn prepare_indexes(&self, models: &[ModelIndex]) -> Result<(), StoreError>;
    /// The `top_k` documents nearest to `query` (normalised) by cosine among `model`'s
    /// vectors, restricted to the documents `filter` matches; `exact` scores every candidate
    /// instead of walking the index. Scores are cosines, as the in-memory index reports them.
    async fn nearest(
        &self,
        model: &str,
        query: &[f32],
        top_k: usize,
        filter: &crate::index::filter::Filter,
        exact: bool,
    ) -> Result<Nearest, StoreError>;
    /// The `top_k` documents nearest to `query` among `model`'s vectors of the documents that
    /// also have a vector of `other`, every candidate scored: a labelled evaluation judges two
    /// models on the same documents (`domain::evaluation`).
    /// Drops `model`'s index once its vectors are deleted (`cleanup`), giving its pages back
    /// at once rather than at the next vacuum; start-up creates an empty one again.
    async fn drop_index(&self, model: &str, dimensions: usize) -> Result<(), StoreError>;
    async fn nearest_in_both(
        &self,
        model: &str,
        other: &str,
        query: &[f32],
        top_k: usize,
    ) -> Result<Vec<crate::index::Hit>, StoreError>;
}

/// Durable storage behind the service. Implementations serialise writers so that each method's
/// transaction sees a consistent migration state.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Cheap round trip for `/readyz`.
    async fn ping(&self) -> Result<(), StoreError>;

    /// The model whose index answers when no migration ever ran; `None` on a new store.
    async fn active_model(&self) -> Result<Option<String>, StoreError>;
    /// Records the active model (at first start, and when a rollback window closes).
    async fn set_active_model(&self, model: &str) -> Result<(), StoreError>;

    /// Upserts documents and their vectors in one transaction: each version grows by one, each
    /// given vector is stored at the new version, and each kept vector (`DocumentWrite::kept`)
    /// is re-stamped with it — or, if a document is no longer at the version and text its
    /// keep read, nothing is written and `Conflict` is returned. While the latest migration is
    /// backfilling (`MigrationState::is_backfilling`), a document now lacking a current target
    /// vector is queued (total + 1 if newly queued) and one whose queued entry is satisfied by
    /// a target vector in this write, given or kept, is dequeued (processed + 1). If the
    /// latest migration is `completed` and a document is written without its target vector,
    /// nothing is written and `Conflict` is returned. No text counts as truncated
    /// (`write_documents_with`).
    async fn write_documents(&self, writes: &[DocumentWrite]) -> Result<WriteReceipt, StoreError> {
        self.write_documents_with(writes, &|_, _| false).await
    }
    /// `write_documents`, where a queued entry satisfied by a target vector whose text
    /// `over_input_limit` says the target embedded truncated also counts as truncated
    /// (truncated + 1, with processed + 1).
    async fn write_documents_with(
        &self,
        writes: &[DocumentWrite],
        over_input_limit: OverInputLimit<'_>,
    ) -> Result<WriteReceipt, StoreError>;
    /// Deletes a document and all its vectors; a queued entry leaves the total (total − 1).
    /// `None` when the document did not exist.
    async fn delete_document(&self, id: &str) -> Result<Option<WriteReceipt>, StoreError>;
    async fn get_document(&self, id: &str) -> Result<Option<StoredDocument>, StoreError>;
    /// Documents with id > `after` in id order, at most `limit`.
    async fn list_documents(
        &self,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<StoredDocument>, StoreError>;
    /// The given documents with their embeddings, read before a write embeds, to tell which
    /// stored vectors it may keep (`Kept::read`); missing ids are left out.
    async fn stored_documents(&self, ids: &[String]) -> Result<Vec<StoredDocument>, StoreError>;
    /// The given documents without their embeddings (for query hits); missing ids are left
    /// out.
    async fn hit_documents(&self, ids: &[String]) -> Result<Vec<StoredDocument>, StoreError>;
    /// Every stored vector of `model` as (id, version, vector), streamed in id order: the
    /// in-memory index is rebuilt from it without a second copy of the vectors in memory.
    fn vectors<'a>(&'a self, model: &'a str) -> BoxStream<'a, Result<StoredVector, StoreError>>;
    /// The metadata of every document that has any, streamed: the filters' postings are
    /// rebuilt from it at start-up.
    fn metadata(&self) -> BoxStream<'_, Result<StoredMetadata, StoreError>>;

    /// What a migration to `target_model` would embed now: the documents lacking a current
    /// vector of it, and their total text length in characters (for `dry_run` estimates).
    async fn backfill_estimate(&self, target_model: &str) -> Result<(u64, u64), StoreError>;

    /// Inserts a new planned migration. Every change of a migration below is recorded in its
    /// history by the `noted` entry, in the transaction that makes the change (and not at all
    /// when the change is refused).
    async fn insert_migration(
        &self,
        migration: &Migration,
        noted: &HistoryEvent,
    ) -> Result<(), StoreError>;
    /// Moves a planned migration to `migration` (in progress) and, in the same transaction,
    /// queues every document lacking a current vector of the target model. Returns the counts
    /// it persisted (`total` = documents queued).
    async fn start_migration(
        &self,
        migration: &Migration,
        noted: &HistoryEvent,
    ) -> Result<Counts, StoreError>;
    /// Persists state, timestamps, config, error and pause reason (never counts), only if the
    /// stored state is still `expected`; otherwise `Conflict`. Leaving the backfilling states
    /// for cancelled or rolled back clears the migration's queue.
    async fn update_migration(
        &self,
        migration: &Migration,
        expected: MigrationState,
        noted: &HistoryEvent,
    ) -> Result<(), StoreError>;
    /// Persists `migration` (completed) only if its queue is empty; `false` when documents
    /// were queued meanwhile and the backfill must go on. Records each of `noted` (the gate's
    /// passing, the completion).
    async fn complete_migration(
        &self,
        migration: &Migration,
        noted: &[HistoryEvent],
    ) -> Result<bool, StoreError>;
    /// Deletes up to `limit` vectors of `migration`'s source model (lowest ids first) and counts
    /// them on the migration, in one transaction. Once none is left it marks the deletion done
    /// and records it in the history on behalf of `cause`, once, whichever replica gets there
    /// first. `Superseded` when a newer migration exists: the source's vectors are no longer
    /// this migration's to delete (a migration back to that model may be using them).
    async fn delete_source_vectors(
        &self,
        migration: &Migration,
        limit: u32,
        cause: &Cause,
    ) -> Result<CleanupStep, StoreError>;
    /// The history of a migration, oldest first (empty for an unknown id).
    async fn history(&self, migration_id: &str) -> Result<Vec<HistoryEvent>, StoreError>;
    /// Keeps `evaluation` as the migration's last one and records `noted`, in one transaction;
    /// `Conflict` for an unknown migration.
    async fn record_evaluation(
        &self,
        migration_id: &str,
        evaluation: &Evaluation,
        noted: &HistoryEvent,
    ) -> Result<(), StoreError>;
    /// Records a batch of a migration's shadow samples and `dropped` more shadowed queries
    /// dropped, in one transaction that also prunes to the bounds of `domain::comparison`:
    /// the samples are counted on the migration's row (its `shadow` evidence, which the
    /// cutover gate judges), their figures kept for the newest `SAMPLES_KEPT`, and the texts
    /// and hits of those among the `WORST_KEPT` lowest overlaps (the newer among equals).
    /// Every replica's samples land together. Returns the migration's evidence as committed;
    /// an error, recording nothing, for an unknown migration.
    async fn record_shadow_samples(
        &self,
        migration_id: &str,
        samples: &[ShadowSample],
        dropped: u64,
    ) -> Result<ShadowEvidence, StoreError>;
    /// What is kept of a migration's comparison: its evidence, the newest `SAMPLES_KEPT`
    /// figures, the drops and the `WORST_KEPT` lowest overlaps, lowest first (empty for an
    /// unknown id), as `Comparison::of` summarises it.
    async fn comparison(&self, migration_id: &str) -> Result<ComparisonData, StoreError>;
    /// All migrations, newest first.
    async fn migrations(&self) -> Result<Vec<Migration>, StoreError>;
    async fn migration(&self, id: &str) -> Result<Option<Migration>, StoreError>;

    /// Claims up to `limit` queued documents of the migration for one backfill batch, under a
    /// lease that `lease` says who holds and for how long, in one transaction: the documents
    /// lowest in id order that no unexpired lease holds, with their current text and version.
    /// A migration has at most `config.max_concurrent` unexpired claims at a time, across
    /// every process that shares the store (read from the migration's row, so a PATCH applies
    /// to the next claim everywhere); only a migration in progress, or a completed one with
    /// repairs queued, is claimed from.
    async fn claim(
        &self,
        migration_id: &str,
        limit: u32,
        lease: &LeaseRequest,
    ) -> Result<ClaimOutcome, StoreError>;
    /// Extends an unexpired claim's lease by `lease.duration` from now; `false` when it had
    /// expired or was released (its documents may be claimed by another batch already).
    async fn renew_claim(&self, claim: &Claim, lease: &LeaseRequest) -> Result<bool, StoreError>;
    /// Commits backfill work of a claim in one transaction: each embedded vector is written
    /// only if the document is still queued under this claim's unexpired lease and at the
    /// embedded version (compare-and-set); skips leave the queue for the skip list; the
    /// migration's counts move by exactly what happened (a document whose earlier attempt
    /// failed stops counting as failed; a written item marked `truncated` counts as truncated).
    /// `tokens`, what embedding the items was billed, add to the migration's
    /// `tokens_embedded` in the same transaction, whatever compare-and-set kept: the provider
    /// billed them either way. `after` says whether the claim's lease is released in the same
    /// transaction (its documents not committed become claimable again) or kept for more parts.
    async fn commit_claimed(
        &self,
        claim: &Claim,
        items: &[BatchItem],
        tokens: u64,
        after: AfterCommit,
    ) -> Result<BatchReceipt, StoreError>;
    /// [`Store::commit_claimed`] of a whole batch that counts no tokens, releasing its lease.
    async fn commit_batch(
        &self,
        claim: &Claim,
        items: &[BatchItem],
    ) -> Result<BatchReceipt, StoreError> {
        self.commit_claimed(claim, items, 0, AfterCommit::Release)
            .await
    }
    /// Releases a claim whose attempt failed: its documents still queued under it are marked
    /// failed (they stay queued) and become claimable again after `retry_after`, so that
    /// claims move on to other documents meanwhile and one that always fails cannot hold the
    /// backfill at the head of the queue. `failed` grows by those not marked yet, so a
    /// document counts once however often it fails.
    async fn release_failed(
        &self,
        claim: &Claim,
        retry_after: std::time::Duration,
    ) -> Result<CountsDelta, StoreError>;
    /// Each replica that claimed backfill batches of the migration: its batches under an
    /// unexpired lease now, and the documents its batches wrote.
    async fn backfill_replicas(
        &self,
        migration_id: &str,
    ) -> Result<Vec<ReplicaProgress>, StoreError>;
    async fn skips(&self, migration_id: &str) -> Result<Vec<Skip>, StoreError>;
    /// Puts every skipped document that still exists back on the migration's queue and clears
    /// its skip list, in one transaction: skipped shrinks by the list's length, and total by
    /// the skipped documents deleted since (they have nothing left to embed).
    async fn requeue_skips(
        &self,
        migration_id: &str,
        noted: &HistoryEvent,
    ) -> Result<CountsDelta, StoreError>;

    /// Whether other processes change this store too (replicas sharing a database): then
    /// each process refreshes its view of the migrations from the store (`snapshot`), and
    /// takes the times it records from the store's clock (`clock`).
    fn is_shared(&self) -> bool {
        false
    }
    /// Waits until another process may have changed a migration or the active model (a
    /// notification: a hint, which can be lost), or until `timeout` has passed.
    async fn wait_for_migration_change(&self, timeout: std::time::Duration) {
        tokio::time::sleep(timeout).await;
    }
    /// The store's clock, for a shared store whose processes' clocks may differ: migration
    /// times recorded by any replica then agree. `None` when this process's clock is the one.
    async fn clock(&self) -> Result<Option<chrono::DateTime<chrono::Utc>>, StoreError> {
        Ok(None)
    }
    /// Records `to` as the active model if `from` still is; whether this call changed it, so
    /// that of several replicas closing the same rollback window, exactly one cuts over (and
    /// records `noted`).
    async fn cut_over(
        &self,
        from: &str,
        to: &str,
        noted: &HistoryEvent,
    ) -> Result<bool, StoreError>;

    /// The database's own vector search, for a backend that keeps its indexes there; `None`
    /// (SQLite) when the process keeps them in memory (`IndexSet`).
    fn vector_search(&self) -> Option<&dyn VectorSearch> {
        None
    }

    /// Flushes and closes the database at shutdown.
    async fn close(&self);
}
