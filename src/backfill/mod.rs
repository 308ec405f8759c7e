//! Backfill workers: re-embed the queued documents of the running migration in bounded
//! batches, as tokio tasks.
//!
//! One supervisor task claims batches and spawns one task per batch; `step` is the unit of
//! work and returns what happened. The bounds are read live on every claim, so a PATCH applies
//! to the next batch: never more than `batch_size` documents in one, and never more than
//! `max_concurrent` batches in flight — a bound the store keeps across every process that
//! shares it (`Store::claim` reads it from the migration's row), and this process keeps for
//! its own provider's limits too.
//!
//! The durable checkpoint is the store's backfill queue: a document leaves it in the same
//! transaction that writes its vector and counts it, so a restart resumes from the queue
//! without skipping or double-counting. A claim holds its documents under a lease that the
//! batch renews while it runs; a batch whose process dies loses its lease, and another claim
//! takes its documents once it expires.
//!
//! A budget (`max_cost`) is checked on each claim, with the claimed texts in hand: the batch
//! reserves its estimated tokens while it runs, and a claim that would take the committed cost
//! plus the reservations past the budget pauses the migration instead and is released
//! unworked (`domain::cost` states the bound this gives).

mod batch;
mod share;

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::coordinator::Coordinator;
use crate::documents::Documents;
use crate::domain::{
    BackfillLimits, Bounds, Budget, Migration, MigrationState, ThrottleReason,
    estimate_batch_tokens,
};
use crate::load::RequestCount;
use crate::store::{AfterCommit, Claim, ClaimOutcome, LeaseRequest, Store};
use crate::supervise::spawn_supervised;
use share::Share;

/// Pause after the store refused a claim or a completion, so a broken database is not spun on.
const STORE_RETRY_DELAY: Duration = Duration::from_millis(500);

/// How often to claim again while every lease slot or queued document is held, when no change
/// in this process says one came free (another process's batch ended, or a lease expired).
const BUSY_POLL: Duration = Duration::from_millis(250);

/// What one supervisor step did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// A batch was claimed and spawned; claim again at once.
    Claimed,
    /// This process runs as many batches as it may, or the queue is drained but batches are
    /// still committing: wait for a change.
    Saturated,
    /// The store holds `max_concurrent` claims, or every queued document is under a lease
    /// (perhaps of another process): wait for a change or poll.
    Busy,
    /// Nothing is running (no migration in progress, it just completed, or its cutover gate
    /// holds its completion): wait for a change.
    Idle,
    /// The store failed; wait a moment and try again.
    Retry,
}

/// The worker pool of one process; its clones share every handle.
#[derive(Clone)]
pub struct Backfill {
    coordinator: Arc<Coordinator>,
    store: Arc<dyn Store>,
    documents: Arc<Documents>,
    batches: batch::BatchRunner,
    /// The backfill's share of this process's CPU while requests keep it busy.
    share: Arc<Share>,
    requests: Arc<RequestCount>,
    /// Who this process's claims are for, and how long their leases last.
    lease: LeaseRequest,
}

impl Backfill {
    /// Wires the pool; nothing runs until `spawn`. A migration fails once its provider has
    /// been unreachable for longer than `config.provider_patience`; the backfill yields CPU
    /// to the `requests` when they keep the process busy, down to
    /// `config.backfill_min_cpu_share`. Its claims are held under `lease`.
    pub fn new(
        coordinator: Arc<Coordinator>,
        store: Arc<dyn Store>,
        documents: Arc<Documents>,
        requests: Arc<RequestCount>,
        config: &Config,
        lease: LeaseRequest,
    ) -> Self {
        let share = Arc::new(Share::new(config.backfill_min_cpu_share));
        let batches = batch::BatchRunner::new(
            coordinator.clone(),
            documents.clone(),
            share.clone(),
            config.provider_patience,
            store.clone(),
            lease.clone(),
        );
        Self {
            coordinator,
            store,
            documents,
            batches,
            share,
            requests,
            lease,
        }
    }

    /// Starts the supervisor, and the sampler that sets the backfill's CPU share, on
    /// `tracker`. The supervisor stops claiming when `shutdown` fires; batches in flight run to
    /// their commit, skipping the rest after it, and `tracker.wait()` joins them. A supervisor
    /// that panics is logged and started again (`supervise`): the queue is durable, so it
    /// resumes where it stood.
    pub fn spawn(self, tracker: &TaskTracker, shutdown: CancellationToken) {
        self.share.spawn_sampler(
            self.requests.clone(),
            self.coordinator.clone(),
            tracker,
            shutdown.clone(),
        );
        let spawner = tracker.clone();
        let stop = shutdown.clone();
        spawn_supervised("backfill", tracker, shutdown, move || {
            let (backfill, spawner, stop) = (self.clone(), spawner.clone(), stop.clone());
            async move { backfill.supervise(spawner, stop).await }
        });
    }

    async fn supervise(self, tracker: TaskTracker, shutdown: CancellationToken) {
        let mut changes = self.coordinator.subscribe();
        while !shutdown.is_cancelled() {
            changes.borrow_and_update();
            let (wait_for_change, poll) = match self.step(&tracker, &shutdown).await {
                Step::Claimed => continue,
                Step::Saturated | Step::Idle => (true, None),
                Step::Busy => (true, Some(BUSY_POLL)),
                Step::Retry => (false, Some(STORE_RETRY_DELAY)),
            };
            let polled = async {
                match poll {
                    Some(after) => tokio::time::sleep(after).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = changes.changed(), if wait_for_change => {}
                _ = polled => {}
            }
        }
        tracing::info!("backfill supervisor stopped; batches in flight will finish");
    }

    /// Claims and spawns at most one batch of the migration in progress, or of the repairs
    /// a completed migration's rollback window waits for; `shutdown` ends its rest.
    pub async fn step(&self, tracker: &TaskTracker, shutdown: &CancellationToken) -> Step {
        let Some(migration) = self.coordinator.latest().filter(Migration::takes_claims) else {
            return Step::Idle;
        };
        let limits = self.limits(&migration);
        self.coordinator.set_backfill_limits(limits);
        let in_flight = self.coordinator.in_flight_batches();
        if in_flight >= limits.concurrency {
            return Step::Saturated;
        }
        let claimed = self
            .store
            .claim(&migration.id, limits.batch_size, &self.lease)
            .await;
        match claimed {
            Ok(ClaimOutcome::Claimed(claim)) => {
                self.start_batch(&migration, claim, tracker, shutdown).await
            }
            Ok(ClaimOutcome::Busy) => Step::Busy,
            Ok(ClaimOutcome::Drained) => self.drained(&migration, in_flight).await,
            Ok(ClaimOutcome::Closed) => Step::Idle,
            Err(error) => {
                tracing::warn!(%error, "could not claim a backfill batch");
                Step::Retry
            }
        }
    }

    /// Spawns the claimed batch, reserving its estimated tokens, unless they would take the
    /// migration past its budget: then the migration pauses and the claim is released
    /// unworked (`domain::cost`).
    async fn start_batch(
        &self,
        migration: &Migration,
        claim: Claim,
        tracker: &TaskTracker,
        shutdown: &CancellationToken,
    ) -> Step {
        let tokens = estimate_batch_tokens(claim.documents.iter().map(|d| d.text.as_str()));
        match self.over_budget(migration, tokens).await {
            Some(reason) => self.pause_for_budget(migration, &claim, reason).await,
            None => {
                self.batches.spawn(tracker, shutdown, claim, tokens);
                Step::Claimed
            }
        }
    }

    /// The pause reason when a batch of `tokens` would take the cost of `migration`, in
    /// progress, past its `max_cost`; `None` without a budget (no `max_cost`, or a target
    /// without a price). A completed migration's repairs are not budgeted.
    async fn over_budget(&self, migration: &Migration, tokens: u64) -> Option<String> {
        if migration.state != MigrationState::InProgress {
            return None;
        }
        let price = self.documents.price(&migration.target_model);
        let budget = Budget::of(&migration.config, price)?;
        let spent = self.tokens_spent(migration).await;
        budget.refuses(spent, self.batches.reserved_tokens(), tokens)
    }

    /// The tokens the committed batches of `migration` were billed. On a shared store the row
    /// is read again first: other replicas' batches move it, and so do this process's, which
    /// its view only follows at the next refresh.
    async fn tokens_spent(&self, migration: &Migration) -> u64 {
        if self.store.is_shared()
            && let Err(error) = self.coordinator.refresh().await
        {
            tracing::warn!(%error, "could not read the migration's spending; using the last view");
        }
        self.coordinator
            .latest()
            .filter(|latest| latest.id == migration.id)
            .map_or(migration.counts.tokens_embedded, |latest| {
                latest.counts.tokens_embedded
            })
    }

    /// Pauses `migration` for its budget, then releases `claim` untouched (an empty commit):
    /// paused first, so that no claim of this process takes the documents meanwhile.
    async fn pause_for_budget(&self, migration: &Migration, claim: &Claim, reason: String) -> Step {
        tracing::info!(%reason, "pausing the migration for its budget");
        let paused = self
            .coordinator
            .pause_for_budget(&migration.id, reason, Utc::now())
            .await;
        let released = self
            .store
            .commit_claimed(claim, &[], 0, AfterCommit::Release)
            .await;
        if let Err(error) = released {
            tracing::warn!(%error, "could not release a claim; its lease will expire");
        }
        match paused {
            Ok(()) => Step::Idle,
            Err(error) => {
                tracing::warn!(%error, "could not pause the migration for its budget");
                Step::Retry
            }
        }
    }

    /// The concurrency and batch size the target model's controller allows within the
    /// migration's bounds; one batch at a time probes a provider that is unreachable. A
    /// backfill that yields CPU to requests says so when the provider's controller has no
    /// reason of its own.
    fn limits(&self, migration: &Migration) -> BackfillLimits {
        let bounds = Bounds {
            max_concurrent: migration.config.max_concurrent,
            batch_size: migration.config.batch_size,
        };
        let mut limits = self
            .documents
            .backfill_limits(&migration.target_model, bounds);
        if self.share.now().is_throttled() {
            limits.reason = limits.reason.or(Some(ThrottleReason::ServerBusy));
        }
        if !self.coordinator.is_waiting() {
            return limits;
        }
        BackfillLimits {
            concurrency: 1,
            reason: Some(ThrottleReason::ProviderUnavailable),
            ..limits
        }
    }

    /// Nothing is queued: once this process's batches have committed, complete the migration
    /// if it is in progress (the store refuses if documents were queued meanwhile); a
    /// completed migration's repairs are done then, and the counts already say so. A cutover
    /// gate that blocks waits for a change: what can let it through (shadow evidence, an
    /// evaluation, an override, a config patch) is published, by this replica or by the
    /// refresh of a shared store's row.
    async fn drained(&self, migration: &Migration, in_flight: u32) -> Step {
        if in_flight > 0 {
            return Step::Saturated;
        }
        if migration.state != MigrationState::InProgress || migration.gate_blocks() {
            return Step::Idle;
        }
        match self.coordinator.try_complete(Utc::now()).await {
            Ok(true) => Step::Idle,
            Ok(false) => Step::Retry,
            Err(error) => {
                tracing::warn!(%error, "could not complete the migration");
                Step::Retry
            }
        }
    }
}
