//! One backfill batch: embed the claimed documents with the target model, isolate inputs the
//! provider rejects, commit with compare-and-set, and report to the coordinator.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono::Utc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::coordinator::Coordinator;
use crate::documents::{Documents, ServiceError};
use crate::domain::estimate_batch_tokens;
use crate::embed::{EmbedError, Lane};
use crate::store::{BatchItem, Claim, ClaimedDocument, LeaseRequest, Store};

use super::share::Share;
use crate::run_to_end::until;

/// First back-off after a failed batch; doubles per consecutive failure.
const BASE_BACKOFF: Duration = Duration::from_millis(200);
/// Longest back-off between failed batches: a provider back from a restart is noticed within
/// this long.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// What `embed_isolating` returns: boxed, since it recurses; the batch's items and the tokens
/// they were billed.
type Isolating<'a> =
    Pin<Box<dyn Future<Output = Result<(Vec<BatchItem>, u64), ServiceError>> + Send + 'a>>;

/// Runs batches and remembers how many failed in a row; its clones share that count.
#[derive(Clone)]
pub struct BatchRunner {
    coordinator: Arc<Coordinator>,
    documents: Arc<Documents>,
    /// Failed batches since the last successful one, across all batch tasks: the back-off.
    consecutive_failures: Arc<AtomicU32>,
    /// How long a provider may stay unreachable before the migration moves to `failed`.
    patience: Duration,
    /// How much of this process's CPU the backfill may use; a batch rests after its work.
    share: Arc<Share>,
    /// Renews the leases of the batches in flight.
    store: Arc<dyn Store>,
    /// Who this process's claims are for, and how long their leases last.
    lease: LeaseRequest,
    /// The estimated tokens of this process's batches in flight (`Reservation`), which the
    /// budget check counts as spent. An atomic: batch tasks release theirs as they end while
    /// the supervisor reads the sum.
    reserved_tokens: Arc<AtomicU64>,
}

/// What a batch did, for its log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchOutcome {
    /// Committed; `written` vectors passed compare-and-set, `skipped` inputs were rejected.
    /// `local_work` is the time the batch spent on this machine's CPU: committing, and
    /// embedding for a model that computes here.
    Committed {
        written: usize,
        skipped: u64,
        local_work: Duration,
    },
    /// The provider or the store failed; the documents stay queued, and the batch's slot
    /// rests for `back_off`.
    Failed { back_off: Duration },
}

/// Holds a batch's estimated tokens against the migration's budget until the batch has
/// committed (its tokens counted) or failed, so that batches claimed meanwhile see them
/// (`domain::cost`); dropped with the batch, so an abandoned or panicking batch frees them.
struct Reservation {
    reserved: Arc<AtomicU64>,
    tokens: u64,
}

impl Reservation {
    fn hold(reserved: &Arc<AtomicU64>, tokens: u64) -> Self {
        reserved.fetch_add(tokens, Ordering::Relaxed);
        Self {
            reserved: reserved.clone(),
            tokens,
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.reserved.fetch_sub(self.tokens, Ordering::Relaxed);
    }
}

/// Marks a batch in flight for as long as it lives, so a panicking batch still frees its slot.
struct InFlight(Arc<Coordinator>);

impl InFlight {
    fn enter(coordinator: &Arc<Coordinator>) -> Self {
        coordinator.batch_in_flight(true);
        Self(coordinator.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.batch_in_flight(false);
    }
}

impl BatchRunner {
    /// A runner with no failures recorded, failing a migration once its provider has been
    /// unreachable for longer than `patience`, keeping to its `share` of the CPU, and renewing
    /// each batch's `lease` in `store` while the batch runs.
    pub fn new(
        coordinator: Arc<Coordinator>,
        documents: Arc<Documents>,
        share: Arc<Share>,
        patience: Duration,
        store: Arc<dyn Store>,
        lease: LeaseRequest,
    ) -> Self {
        Self {
            coordinator,
            documents,
            consecutive_failures: Arc::new(AtomicU32::new(0)),
            patience,
            share,
            store,
            lease,
            reserved_tokens: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The estimated tokens of this process's batches in flight.
    pub fn reserved_tokens(&self) -> u64 {
        self.reserved_tokens.load(Ordering::Relaxed)
    }

    /// Marks the batch in flight now and runs it as a task on `tracker`, renewing its lease
    /// until it commits. After its commit the batch keeps its slot for the rest its CPU share
    /// asks for, after a failure for the back-off. `shutdown` abandons the batch wherever it
    /// waits (for the provider, its retries, its rest or back-off): its documents stay queued
    /// in the store, claimable again when the lease expires (at once after a restart on
    /// SQLite). A commit that has begun finishes first (`run_to_end::until`). The batch
    /// reserves its `estimated_tokens` against the budget until it has committed or failed.
    pub fn spawn(
        &self,
        tracker: &TaskTracker,
        shutdown: &CancellationToken,
        claim: Claim,
        estimated_tokens: u64,
    ) {
        let in_flight = InFlight::enter(&self.coordinator);
        let reservation = Reservation::hold(&self.reserved_tokens, estimated_tokens);
        let runner = self.clone();
        let shutdown = shutdown.clone();
        let span = tracing::info_span!(
            "batch",
            migration = %claim.migration_id,
            size = claim.documents.len()
        );
        tracker.spawn(
            async move {
                let lease = lease_of(&claim);
                let batch = async {
                    tokio::select! {
                        outcome = runner.run(claim) => outcome,
                        never = runner.keep_leased(&lease) => match never {},
                    }
                };
                let Some(outcome) = until(shutdown.cancelled(), batch).await else {
                    tracing::debug!("batch abandoned at shutdown; its documents stay queued");
                    return;
                };
                drop(reservation);
                tracing::debug!(?outcome, "batch done");
                let pause = match outcome {
                    BatchOutcome::Committed { local_work, .. } => runner.rest_after(local_work),
                    BatchOutcome::Failed { back_off } => back_off,
                };
                tokio::select! {
                    _ = shutdown.cancelled() => {}
                    _ = tokio::time::sleep(pause) => {}
                }
                drop(in_flight);
            }
            .instrument(span),
        );
    }

    /// Renews `claim`'s lease every third of its duration, for as long as it is polled; stops
    /// renewing (and waits forever) once the lease is lost, when the batch's commit will write
    /// nothing and another batch may take its documents.
    async fn keep_leased(&self, claim: &Claim) -> std::convert::Infallible {
        let period = self.lease.duration / 3;
        loop {
            tokio::time::sleep(period).await;
            match self.store.renew_claim(claim, &self.lease).await {
                Ok(true) => {}
                Ok(false) => {
                    tracing::warn!(
                        "a backfill batch lost its lease; its commit will write nothing"
                    );
                    return std::future::pending().await;
                }
                Err(error) => tracing::warn!(%error, "could not renew a backfill lease"),
            }
        }
    }

    /// The rest after `local_work` that the backfill's CPU share asks for (none at the whole
    /// share).
    fn rest_after(&self, local_work: Duration) -> Duration {
        self.share.now().rest_after(local_work)
    }

    /// The back-off of one more consecutive failure.
    fn back_off(&self) -> Duration {
        let failures = self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        backoff(failures)
    }

    /// Embeds and commits one claimed batch.
    pub async fn run(&self, claim: Claim) -> BatchOutcome {
        let started = Instant::now();
        let target = claim.target_model.clone();
        let (items, tokens) = match self.embed_isolating(&target, &claim.documents).await {
            Ok(embedded) => embedded,
            Err(error) => return self.embedding_failed(claim, error).await,
        };
        self.coordinator.provider_reachable(&target);
        let embedded = started.elapsed();
        let skipped = items
            .iter()
            .filter(|i| matches!(i, BatchItem::Skipped { .. }))
            .count() as u64;
        match self.documents.commit_batch(claim, items, tokens).await {
            Ok(receipt) => {
                self.consecutive_failures.store(0, Ordering::Relaxed);
                let local_work = if self.documents.embeds_on_this_machine(&target) {
                    started.elapsed()
                } else {
                    started.elapsed() - embedded
                };
                BatchOutcome::Committed {
                    written: receipt.written.len(),
                    skipped,
                    local_work,
                }
            }
            Err(error) => {
                // The documents stay queued; a later claim takes them once the lease expires.
                // A store that stays broken shows on /readyz, not as a provider failure.
                tracing::warn!(%error, "could not commit a backfill batch; its documents stay queued");
                BatchOutcome::Failed {
                    back_off: self.back_off(),
                }
            }
        }
    }

    /// Embeds `docs`; an input the provider rejects is split off until it stands alone and is
    /// skipped with the provider's reason, so one poisoned document never blocks its batch.
    /// A text over the target's `max_input_tokens` is embedded (the provider truncates it) and
    /// marked `truncated`. Also returns the tokens the successful requests were billed: as
    /// the provider reported them, else estimated (`domain::cost`); a rejected request is
    /// not billed.
    fn embed_isolating<'a>(
        &'a self,
        target: &'a str,
        docs: &'a [ClaimedDocument],
    ) -> Isolating<'a> {
        Box::pin(async move {
            let texts: Vec<String> = docs.iter().map(|d| d.text.clone()).collect();
            match self
                .documents
                .embed_counted(target, &texts, Lane::Backfill)
                .await
            {
                Ok(embedded) => {
                    let tokens = embedded
                        .tokens
                        .unwrap_or_else(|| estimate_batch_tokens(texts.iter().map(String::as_str)));
                    Ok((self.embedded_items(target, docs, embedded.vectors), tokens))
                }
                Err(ServiceError::Embed {
                    source: EmbedError::Rejected(reason),
                    ..
                }) if docs.len() == 1 => Ok((
                    vec![BatchItem::Skipped {
                        id: docs[0].id.clone(),
                        reason,
                    }],
                    0,
                )),
                Err(ServiceError::Embed {
                    source: EmbedError::Rejected(_),
                    ..
                }) => {
                    let (left, right) = docs.split_at(docs.len() / 2);
                    let (mut items, left_tokens) = self.embed_isolating(target, left).await?;
                    let (right_items, right_tokens) = self.embed_isolating(target, right).await?;
                    items.extend(right_items);
                    Ok((items, left_tokens + right_tokens))
                }
                Err(error) => Err(error),
            }
        })
    }

    /// The items of `docs` embedded as `vectors`, in order.
    fn embedded_items(
        &self,
        target: &str,
        docs: &[ClaimedDocument],
        vectors: Vec<Vec<f32>>,
    ) -> Vec<BatchItem> {
        docs.iter()
            .zip(vectors)
            .map(|(doc, vector)| BatchItem::Embedded {
                id: doc.id.clone(),
                version: doc.version,
                vector,
                truncated: self.documents.is_over_input_limit(target, &doc.text),
            })
            .collect()
    }

    /// Records a batch the provider could not embed: its documents stay queued and count as
    /// failed until they succeed. A misconfiguration fails the migration at once; a transient
    /// failure waits the provider out (`Coordinator::provider_unreachable`) and fails the
    /// migration only once it has been unreachable for longer than the patience.
    async fn embedding_failed(&self, claim: Claim, error: ServiceError) -> BatchOutcome {
        let error_text = error.to_string();
        tracing::warn!(error = %error_text, "backfill batch failed; its documents stay queued");
        let migration_id = claim.migration_id.clone();
        let target = claim.target_model.clone();
        metrics::counter!("reembed_backfill_failed_attempts_total", "migration" => migration_id.clone())
            .increment(claim.documents.len() as u64);
        let back_off = self.back_off();
        // Longer than the slot's rest, so that the next claim moves on to other documents: one
        // that always fails cannot hold the backfill at the head of the queue.
        let retry_after = back_off.saturating_mul(2);
        if let Err(store_error) = self.documents.release_failed(claim, retry_after).await {
            tracing::warn!(%store_error, "could not record the failed attempts");
        }
        let now = Utc::now();
        let reason = if is_misconfiguration(&error) {
            Some(format!("the target model is misconfigured: {error_text}"))
        } else {
            let since = self
                .coordinator
                .provider_unreachable(&target, &error_text, now);
            let waited = (now - since).to_std().unwrap_or_default();
            (waited > self.patience).then(|| {
                format!(
                    "{target} unreachable for {}s, longer than the patience of {}s; last error: \
                     {error_text}",
                    waited.as_secs(),
                    self.patience.as_secs()
                )
            })
        };
        if let Some(reason) = reason {
            if let Err(fail_error) = self.coordinator.fail(&migration_id, reason, now).await {
                tracing::debug!(%fail_error, "migration already left in_progress");
            }
            self.consecutive_failures.store(0, Ordering::Relaxed);
        }
        BatchOutcome::Failed { back_off }
    }
}

/// Whether `error` blames the provider's configuration rather than the moment: a wrong key,
/// URL or model name, or vectors of the wrong size.
fn is_misconfiguration(error: &ServiceError) -> bool {
    matches!(
        error,
        ServiceError::WrongShape { .. }
            | ServiceError::Embed {
                source: EmbedError::Misconfigured(_),
                ..
            }
    )
}

/// What renewing `claim`'s lease needs of it: its identity, not its documents' texts.
fn lease_of(claim: &Claim) -> Claim {
    Claim {
        migration_id: claim.migration_id.clone(),
        target_model: claim.target_model.clone(),
        token: claim.token.clone(),
        documents: Vec::new(),
    }
}

/// Exponential back-off for the `failures`-th consecutive failure, capped.
fn backoff(failures: u32) -> Duration {
    BASE_BACKOFF
        .saturating_mul(1 << failures.saturating_sub(1).min(16))
        .min(MAX_BACKOFF)
}
