//! The live migration: the one place that applies lifecycle events, persists them and
//! publishes the routing every request reads.
//!
//! Two locks, with different jobs:
//! - `live` is a `std::sync::Mutex` over in-memory state only. Count updates and progress
//!   reads take it for microseconds; it is never held across an `.await`.
//! - `transitions` is a `tokio::sync::Mutex` that serialises lifecycle changes, which must
//!   compute the next state, persist it and only then publish it. It is held across the
//!   store call, which is why it is async and separate from `live`.
//!
//! Routing calls take neither: every change of `live` publishes a `RoutingSnapshot` through an
//! `ArcSwap`, and a routing call loads that pointer, so it never waits on a worker, embedding
//! or storage (invariant 7), however busy the backfill is. Each published decision carries its
//! JSON too, rendered once per change rather than once per `GET /v1/routing`.
//!
//! Counts move through `apply_delta` after the store has committed them (commit, then
//! publish), so the in-memory copy may trail the database by one transaction but never leads it.

use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use tokio::sync::watch;

use crate::domain::{
    Actor, BackfillLimits, Cause, ConfigError, ConfigPatch, Evaluation, Event, GateState,
    HistoryEvent, HistoryKind, Migration, MigrationState, ProgressSnapshot, Routing,
    RoutingSnapshot, ShadowEvidence, ThroughputMeter, TransitionError, Waiting, route,
};
use crate::run_to_end::run_to_end;
use crate::store::{CountsDelta, ReplicaProgress, Store, StoreError};

/// Why a lifecycle request was refused.
#[derive(Debug, thiserror::Error)]
pub enum CoordinatorError {
    #[error("migration {0} not found")]
    NotFound(String),
    #[error(transparent)]
    Transition(#[from] TransitionError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("migration {id} is {state}; finish, cancel or roll it back first")]
    MigrationOpen { id: String, state: MigrationState },
    #[error("a migration with id {0} already exists")]
    DuplicateId(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// In-memory state behind `Coordinator::live`.
struct Live {
    /// The active model as recorded in the store; answers when no migration ever ran.
    recorded_active: String,
    /// The newest migration, with counts as of the last committed transaction.
    latest: Option<Migration>,
    /// Processed-count samples of `latest`, for throughput and ETA.
    meter: ThroughputMeter,
    /// Backfill batches claimed and not yet committed.
    in_flight_batches: u32,
    /// The provider the running backfill waits for, while it is unreachable.
    waiting: Option<Waiting>,
    /// What the backfill's controller allowed at the supervisor's latest claim.
    limits: Option<BackfillLimits>,
    /// When `latest` last changed (state or counts).
    updated_at: DateTime<Utc>,
}

impl Live {
    fn routing(&self) -> RoutingSnapshot<Published> {
        RoutingSnapshot::new(&self.recorded_active, self.latest.as_ref()).map(Published::new)
    }
}

/// A progress report: the migration, its derived figures and live worker state.
#[derive(Debug, Clone)]
pub struct Progress {
    pub migration: Migration,
    pub snapshot: ProgressSnapshot,
    /// Batches under an unexpired lease, across every replica.
    pub in_flight_batches: u32,
    /// Each replica's share of the backfill, as the store records it.
    pub replicas: Vec<ReplicaProgress>,
    /// The provider the backfill waits for, while it is unreachable.
    pub waiting: Option<Waiting>,
    /// The backfill's current concurrency and batch size, while it runs.
    pub limits: Option<BackfillLimits>,
    pub routing: Routing,
    /// When the migration last changed state or counts.
    pub updated_at: DateTime<Utc>,
}

/// A published routing decision and its JSON rendering.
#[derive(Debug)]
struct Published {
    routing: Arc<Routing>,
    json: Bytes,
}

impl Published {
    fn new(routing: &Arc<Routing>) -> Self {
        let json = serde_json::to_vec(&**routing)
            .expect("a Routing is plain data: strings, numbers and unit enums always serialize");
        Self {
            routing: Arc::clone(routing),
            json: Bytes::from(json),
        }
    }
}

/// Owns the live migration; shared by the API, the backfill workers and the window timer.
pub struct Coordinator {
    live: Mutex<Live>,
    /// The routing of `live` as last published; replaced under `live`, read without it.
    routing: ArcSwap<RoutingSnapshot<Published>>,
    transitions: tokio::sync::Mutex<()>,
    store: Arc<dyn Store>,
    /// Bumped after every published change, so workers and the window timer can wait for one
    /// without polling. Arm (`borrow_and_update`) before checking state, then await `changed`.
    changes: watch::Sender<u64>,
    /// When the live view was last read from a store other processes share (`refresh`);
    /// `None` while this process's view is the store's by construction (SQLite).
    refreshed_at: Mutex<Option<Instant>>,
    /// Whether other processes share the store: then the live counts come only from the
    /// store (`refresh`), since a count this process committed may already be in what a
    /// refresh read, and adding it again would count it twice.
    shared: bool,
    /// Signalled when this process committed a count change to a shared store, so the
    /// snapshot refreshes soon rather than at its next poll.
    counts_moved: tokio::sync::Notify,
    /// This process's replica id, named in the history of every change it makes; set once the
    /// process knows the address it listens on (`name_replica`).
    replica: OnceLock<String>,
}

/// Replaces `live`'s newest migration by the one stored, keeping the throughput samples while
/// it is the same migration in the same state (every replica's batches move its count).
fn follow_stored(live: &mut Live, stored: Option<Migration>, now: DateTime<Utc>) {
    let same_run = match (&live.latest, &stored) {
        (Some(current), Some(next)) => current.id == next.id && current.state == next.state,
        _ => false,
    };
    match &stored {
        Some(next) if same_run => live.meter.record(now, next.counts.processed),
        _ => {
            live.meter = meter_for(stored.as_ref(), now);
            live.waiting = None;
        }
    }
    live.latest = stored;
    live.updated_at = now;
}

/// A throughput meter for `migration` as of `now`: running from its current count when it is
/// in progress, so the window never reaches back into a pause; idle otherwise.
fn meter_for(migration: Option<&Migration>, now: DateTime<Utc>) -> ThroughputMeter {
    match migration {
        Some(m) if m.state == MigrationState::InProgress => {
            ThroughputMeter::starting(now, m.counts.processed)
        }
        _ => ThroughputMeter::default(),
    }
}

/// The measured rate of `migration`, only while its backfill runs.
fn running_rate(migration: &Migration, meter: &ThroughputMeter, now: DateTime<Utc>) -> Option<f64> {
    (migration.state == MigrationState::InProgress)
        .then(|| meter.rate(now))
        .flatten()
}

impl Coordinator {
    /// Builds the coordinator from what the store holds: the newest migration and the active
    /// model (`initial_model` on a new store).
    pub async fn load(store: Arc<dyn Store>, initial_model: &str) -> Result<Self, StoreError> {
        let initial_model = match store.active_model().await? {
            Some(model) => model,
            None => {
                store.set_active_model(initial_model).await?;
                initial_model.to_owned()
            }
        };
        let latest = store.migrations().await?.into_iter().next();
        let live = Live {
            recorded_active: initial_model,
            meter: meter_for(latest.as_ref(), Utc::now()),
            latest,
            in_flight_batches: 0,
            waiting: None,
            limits: None,
            updated_at: Utc::now(),
        };
        let routing = ArcSwap::from_pointee(live.routing());
        Ok(Self {
            live: Mutex::new(live),
            routing,
            transitions: tokio::sync::Mutex::new(()),
            shared: store.is_shared(),
            store,
            changes: watch::channel(0).0,
            refreshed_at: Mutex::new(None),
            counts_moved: tokio::sync::Notify::new(),
            replica: OnceLock::new(),
        })
    }

    /// Names this process among the replicas in the history of the changes it makes; the
    /// first name given holds.
    pub fn name_replica(&self, replica: String) {
        let _ = self.replica.set(replica);
    }

    /// Who causes a change made by this process on behalf of `actor`.
    fn cause(&self, actor: Actor) -> Cause {
        let replica = self.replica.get().map_or("unnamed", String::as_str);
        Cause {
            replica: replica.to_owned(),
            actor,
        }
    }

    fn live(&self) -> MutexGuard<'_, Live> {
        // A panic while holding this lock leaves only plain data behind; keep serving it.
        self.live
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Publishes the routing of `live`, taken by the caller for its change, so snapshots are
    /// replaced in the order of the changes they follow.
    fn publish_routing(&self, live: &Live) {
        self.routing.store(Arc::new(live.routing()));
    }

    fn publish(&self) {
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Reads the newest migration and the active model from a store other processes change
    /// too (replicas sharing a database), and publishes them if they differ from the live
    /// view: a transition made on another replica reaches this one's routing. Counts come
    /// with it (every replica's batches move them). Under the transitions lock, so it never
    /// undoes a transition of this process.
    pub async fn refresh(&self) -> Result<(), StoreError> {
        let _serial = self.transitions.lock().await;
        self.refresh_locked().await
    }

    /// Before a transition on a shared store: the live view, read again, so the transition
    /// starts from what other replicas did (it is checked again by the store either way).
    async fn refresh_if_shared(&self) -> Result<(), StoreError> {
        if self.store.is_shared() {
            self.refresh_locked().await?;
        }
        Ok(())
    }

    async fn refresh_locked(&self) -> Result<(), StoreError> {
        let stored = self.store.migrations().await?.into_iter().next();
        let active = self.store.active_model().await?;
        let now = Utc::now();
        let mut live = self.live();
        let recorded_active = active.unwrap_or_else(|| live.recorded_active.clone());
        let changed = live.latest != stored || live.recorded_active != recorded_active;
        if changed {
            follow_stored(&mut live, stored, now);
            live.recorded_active = recorded_active;
            self.publish_routing(&live);
        }
        drop(live);
        *self
            .refreshed_at
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(Instant::now());
        if changed {
            self.publish();
        }
        Ok(())
    }

    /// Resolves when this process has committed a count change to a shared store since the
    /// last call (see `counts_moved`).
    pub async fn counts_moved(&self) {
        self.counts_moved.notified().await;
    }

    /// How old the live view is: the time since `refresh` last read it from a shared store,
    /// and zero when the view is the store's by construction (one process on SQLite).
    pub fn snapshot_age(&self) -> Duration {
        self.refreshed_at
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .map_or(Duration::ZERO, |at| at.elapsed())
    }

    /// The time to record for a change made at `now` by this process: the shared store's
    /// clock when it has one, so that replicas agree on when a migration completed and when
    /// its window ends; `now` otherwise, or if the store cannot tell.
    async fn clock(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        match self.store.clock().await {
            Ok(Some(stored)) => stored,
            Ok(None) => now,
            Err(error) => {
                tracing::warn!(%error, "cannot read the database clock; using this process's");
                now
            }
        }
    }

    /// A receiver that wakes on every published change.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// The routing decision at `now`: one pointer load, no lock, no storage.
    pub fn routing(&self, now: DateTime<Utc>) -> Arc<Routing> {
        Arc::clone(&self.routing.load().at(now).routing)
    }

    /// The routing decision at `now` as the JSON body of `GET /v1/routing`, rendered when it
    /// was published.
    pub fn routing_json(&self, now: DateTime<Utc>) -> Bytes {
        self.routing.load().at(now).json.clone()
    }

    /// The active model at `now`: the source of an unsettled migration, the target once its
    /// window has closed, the initial model when none ever ran.
    pub fn active_model(&self, now: DateTime<Utc>) -> String {
        let live = self.live();
        match &live.latest {
            Some(m) => m.settled_model(now).to_owned(),
            None => live.recorded_active.clone(),
        }
    }

    /// The newest migration as currently published.
    pub fn latest(&self) -> Option<Migration> {
        self.live().latest.clone()
    }

    /// A migration by id: the live copy for the newest one, the stored one otherwise.
    pub async fn migration(&self, id: &str) -> Result<Migration, CoordinatorError> {
        if let Some(m) = self.latest().filter(|m| m.id == id) {
            return Ok(m);
        }
        self.store
            .migration(id)
            .await?
            .ok_or_else(|| CoordinatorError::NotFound(id.to_owned()))
    }

    /// Progress of a migration at `now` (on a shared store, read afresh with every replica's
    /// counts).
    pub async fn progress(
        &self,
        id: &str,
        now: DateTime<Utc>,
    ) -> Result<Progress, CoordinatorError> {
        if self.shared {
            // Every replica's counts as of now, not as of the last refresh.
            self.refresh().await?;
        }
        let replicas = self.store.backfill_replicas(id).await?;
        let in_flight_batches = replicas.iter().map(|r| r.in_flight_batches).sum();
        let live_report = {
            let live = self.live();
            live.latest
                .as_ref()
                .filter(|m| m.id == id)
                .map(|m| Progress {
                    migration: m.clone(),
                    snapshot: ProgressSnapshot::new(m.counts, running_rate(m, &live.meter, now)),
                    in_flight_batches,
                    replicas: replicas.clone(),
                    waiting: live.waiting.clone(),
                    limits: live
                        .limits
                        .filter(|_| m.state == MigrationState::InProgress),
                    routing: route(&live.recorded_active, Some(m), now),
                    updated_at: live.updated_at,
                })
        };
        if let Some(report) = live_report {
            return Ok(report);
        }
        let migration = self.migration(id).await?;
        Ok(Progress {
            snapshot: ProgressSnapshot::new(migration.counts, None),
            in_flight_batches,
            replicas,
            waiting: None,
            limits: None,
            routing: route(&migration.source_model, Some(&migration), now),
            updated_at: migration
                .completed_at
                .or(migration.started_at)
                .unwrap_or(migration.created_at),
            migration,
        })
    }

    /// Refuses while a migration is open (API.md: 409 `migration-open`). A cheap in-memory
    /// check callers can make before expensive work; `create` repeats it under the lock.
    pub fn ensure_none_open(&self, now: DateTime<Utc>) -> Result<(), CoordinatorError> {
        match self.latest().filter(|m| m.is_open(now)) {
            Some(open) => Err(CoordinatorError::MigrationOpen {
                id: open.id,
                state: open.state,
            }),
            None => Ok(()),
        }
    }

    /// Records a new migration (started unless `start` is false). Refused while another
    /// migration is open. Like every lifecycle change, it runs to its end once begun, even if
    /// the caller is dropped: the state it persists is the state it publishes (`run_to_end`).
    pub async fn create(
        self: &Arc<Self>,
        migration: Migration,
        start: bool,
        now: DateTime<Utc>,
        actor: Actor,
    ) -> Result<Migration, CoordinatorError> {
        let this = Arc::clone(self);
        run_to_end(async move { this.create_now(migration, start, now, actor).await }).await
    }

    async fn create_now(
        &self,
        migration: Migration,
        start: bool,
        now: DateTime<Utc>,
        actor: Actor,
    ) -> Result<Migration, CoordinatorError> {
        let _serial = self.transitions.lock().await;
        self.refresh_if_shared().await?;
        let now = self.clock(now).await;
        self.ensure_none_open(now)?;
        if self.store.migration(&migration.id).await?.is_some() {
            return Err(CoordinatorError::DuplicateId(migration.id));
        }
        let cause = self.cause(actor);
        let noted = HistoryEvent::created(&migration, now, &cause);
        self.store.insert_migration(&migration, &noted).await?;
        self.install(migration.clone());
        if !start {
            return Ok(migration);
        }
        let started = self.start_locked(&migration, now, &cause).await?;
        Ok(self.complete_if_empty_locked(started, now).await)
    }

    /// Applies an operator event (start, pause, resume, cancel, rollback, finalize), to the
    /// end once begun.
    pub async fn transition(
        self: &Arc<Self>,
        id: &str,
        event: Event,
        now: DateTime<Utc>,
        actor: Actor,
    ) -> Result<Migration, CoordinatorError> {
        let (this, id) = (Arc::clone(self), id.to_owned());
        run_to_end(async move { this.transition_now(&id, event, now, actor).await }).await
    }

    async fn transition_now(
        &self,
        id: &str,
        event: Event,
        now: DateTime<Utc>,
        actor: Actor,
    ) -> Result<Migration, CoordinatorError> {
        let _serial = self.transitions.lock().await;
        self.refresh_if_shared().await?;
        let now = self.clock(now).await;
        let current = self.migration(id).await?;
        let next = self.apply_to_latest(&current, event.clone(), now)?;
        let cause = self.cause(actor);
        let published = if event == Event::Start {
            self.start_locked(&current, now, &cause).await?
        } else {
            let noted = HistoryEvent::of(&event, &current, &next, now, &cause);
            self.store
                .update_migration(&next, current.state, &noted)
                .await?;
            self.publish_state(next)
        };
        if matches!(event, Event::Start | Event::Resume) {
            return Ok(self.complete_if_empty_locked(published, now).await);
        }
        Ok(published)
    }

    /// `current` after `event`, if the state table allows it and `current` is the newest
    /// migration: older migrations are settled, and no event moves them (apply agrees; this
    /// guards it).
    fn apply_to_latest(
        &self,
        current: &Migration,
        event: Event,
        now: DateTime<Utc>,
    ) -> Result<Migration, CoordinatorError> {
        let name = event.name();
        let next = current.apply(event, now)?;
        if !self.is_latest(&current.id) {
            return Err(TransitionError {
                event: name,
                state: current.state,
                unmet: None,
            }
            .into());
        }
        Ok(next)
    }

    /// Applies a config patch to the newest migration (PATCH), persisting it first. Under the
    /// transitions lock, so concurrent patches cannot lose each other's fields; to the end once
    /// begun.
    pub async fn update_config(
        self: &Arc<Self>,
        id: &str,
        patch: ConfigPatch,
        actor: Actor,
    ) -> Result<Migration, CoordinatorError> {
        let (this, id) = (Arc::clone(self), id.to_owned());
        run_to_end(async move { this.update_config_now(&id, patch, actor).await }).await
    }

    async fn update_config_now(
        &self,
        id: &str,
        patch: ConfigPatch,
        actor: Actor,
    ) -> Result<Migration, CoordinatorError> {
        let _serial = self.transitions.lock().await;
        self.refresh_if_shared().await?;
        let now = self.clock(Utc::now()).await;
        let current = self.migration(id).await?;
        let config = patch.apply_to(current.config)?;
        let event = Event::Reconfigure { config };
        let next = self.apply_to_latest(&current, event.clone(), now)?;
        let noted = HistoryEvent::of(&event, &current, &next, now, &self.cause(actor));
        self.store
            .update_migration(&next, current.state, &noted)
            .await?;
        Ok(self.publish_state(next))
    }

    /// Puts the skipped documents of the newest migration back on its queue; only while it
    /// is backfilling, since a completed migration's queue is closed; to the end once begun.
    pub async fn retry_skips(
        self: &Arc<Self>,
        id: &str,
        now: DateTime<Utc>,
        actor: Actor,
    ) -> Result<Migration, CoordinatorError> {
        let (this, id) = (Arc::clone(self), id.to_owned());
        run_to_end(async move { this.retry_skips_now(&id, now, actor).await }).await
    }

    async fn retry_skips_now(
        &self,
        id: &str,
        now: DateTime<Utc>,
        actor: Actor,
    ) -> Result<Migration, CoordinatorError> {
        let _serial = self.transitions.lock().await;
        self.refresh_if_shared().await?;
        let now = self.clock(now).await;
        let current = self.migration(id).await?;
        let next = self.apply_to_latest(&current, Event::RetrySkips, now)?;
        let noted = HistoryEvent::of(&Event::RetrySkips, &current, &next, now, &self.cause(actor));
        let delta = self.store.requeue_skips(id, &noted).await?;
        self.apply_delta(id, delta, now);
        self.refresh_if_shared().await?;
        Ok(self.latest().unwrap_or(current))
    }

    /// Keeps `evaluation` as the last of migration `id` (in its history too), on behalf of
    /// `actor`; to the end once begun.
    pub async fn record_evaluation(
        self: &Arc<Self>,
        id: &str,
        evaluation: Evaluation,
        actor: Actor,
    ) -> Result<Migration, CoordinatorError> {
        let (this, id) = (Arc::clone(self), id.to_owned());
        run_to_end(async move { this.record_evaluation_now(&id, evaluation, actor).await }).await
    }

    async fn record_evaluation_now(
        &self,
        id: &str,
        evaluation: Evaluation,
        actor: Actor,
    ) -> Result<Migration, CoordinatorError> {
        let _serial = self.transitions.lock().await;
        self.refresh_if_shared().await?;
        let current = self.migration(id).await?;
        let noted = HistoryEvent::evaluated(id, &evaluation, &self.cause(actor));
        self.store
            .record_evaluation(id, &evaluation, &noted)
            .await?;
        Ok(self.publish_state(Migration {
            evaluation: Some(evaluation),
            ..current
        }))
    }

    /// Completes the newest migration if its queue is empty; `true` when it did.
    pub async fn try_complete(&self, now: DateTime<Utc>) -> Result<bool, StoreError> {
        let _serial = self.transitions.lock().await;
        self.refresh_if_shared().await?;
        let Some(current) = self.latest() else {
            return Ok(false);
        };
        let now = self.clock(now).await;
        self.complete_locked(&current, now).await
    }

    /// Marks the newest migration failed (the provider keeps failing).
    pub async fn fail(
        self: &Arc<Self>,
        id: &str,
        error: String,
        now: DateTime<Utc>,
    ) -> Result<(), CoordinatorError> {
        self.transition(id, Event::Fail { error }, now, Actor::Service)
            .await
            .map(drop)
    }

    /// Pauses the newest migration because its next batch would take its cost past
    /// `max_cost` (`Event::PauseForBudget`); recorded as `budget_paused`, by the service.
    pub async fn pause_for_budget(
        self: &Arc<Self>,
        id: &str,
        reason: String,
        now: DateTime<Utc>,
    ) -> Result<(), CoordinatorError> {
        let event = Event::PauseForBudget { reason };
        self.transition(id, event, now, Actor::Service)
            .await
            .map(drop)
    }

    fn is_latest(&self, id: &str) -> bool {
        self.live().latest.as_ref().is_some_and(|m| m.id == id)
    }

    async fn start_locked(
        &self,
        planned: &Migration,
        now: DateTime<Utc>,
        cause: &Cause,
    ) -> Result<Migration, CoordinatorError> {
        let mut started = planned.apply(Event::Start, now)?;
        let noted = HistoryEvent::of(&Event::Start, planned, &started, now, cause);
        started.counts = self.store.start_migration(&started, &noted).await?;
        self.install(started.clone());
        Ok(started)
    }

    /// An empty corpus (or a resumed migration whose queue drained) completes at once.
    async fn complete_if_empty_locked(
        &self,
        migration: Migration,
        now: DateTime<Utc>,
    ) -> Migration {
        match self.complete_locked(&migration, now).await {
            Ok(true) => self.latest().unwrap_or(migration),
            Ok(false) => migration,
            Err(error) => {
                tracing::warn!(%error, "could not complete migration; the backfill will retry");
                migration
            }
        }
    }

    async fn complete_locked(
        &self,
        current: &Migration,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let Ok(next) = current.apply(Event::Complete, now) else {
            return Ok(false);
        };
        let cause = self.cause(Actor::Service);
        let mut noted = vec![HistoryEvent::of(
            &Event::Complete,
            current,
            &next,
            now,
            &cause,
        )];
        let gate = current.gate();
        if gate.state == GateState::Passing {
            let passed =
                HistoryEvent::new(&next.id, HistoryKind::GatePassed, gate.reason, now, &cause);
            noted.insert(0, passed);
        }
        if !self.store.complete_migration(&next, &noted).await? {
            return Ok(false);
        }
        tracing::info!(migration = %next.id, "migration completed; rollback window open");
        self.publish_state(next);
        Ok(true)
    }

    /// Installs a new newest migration (create, start) with fresh throughput samples.
    fn install(&self, migration: Migration) {
        let mut live = self.live();
        live.meter = meter_for(Some(&migration), Utc::now());
        live.waiting = None;
        live.limits = None;
        live.latest = Some(migration);
        live.updated_at = Utc::now();
        self.publish_routing(&live);
        drop(live);
        self.publish();
    }

    /// Publishes the non-count fields of `next`; counts and shadow evidence stay as the live
    /// copy has them, since batches and shadow samples may have committed while the transition
    /// was being persisted.
    fn publish_state(&self, mut next: Migration) -> Migration {
        let mut live = self.live();
        let Live {
            latest,
            meter,
            waiting,
            updated_at,
            ..
        } = &mut *live;
        if let Some(current) = latest.as_mut().filter(|m| m.id == next.id) {
            next.counts = current.counts;
            next.shadow = current.shadow;
            if current.state != next.state {
                // A new state starts over: a resumed backfill probes the provider afresh.
                *waiting = None;
            }
            let resumed = current.state != MigrationState::InProgress
                && next.state == MigrationState::InProgress;
            *current = next.clone();
            *updated_at = Utc::now();
            if resumed {
                *meter = meter_for(Some(current), *updated_at);
            }
        }
        self.publish_routing(&live);
        drop(live);
        self.publish();
        next
    }

    /// Follows a committed count change of `migration_id`: at once in this process's view, or,
    /// on a shared store, by asking for a refresh (`counts_moved`).
    pub fn apply_delta(&self, migration_id: &str, delta: CountsDelta, now: DateTime<Utc>) {
        if delta.is_zero() {
            return;
        }
        if self.shared {
            self.counts_moved.notify_one();
            return;
        }
        let mut live = self.live();
        let Live {
            latest,
            meter,
            updated_at,
            ..
        } = &mut *live;
        if let Some(m) = latest.as_mut().filter(|m| m.id == migration_id) {
            m.counts = delta.applied_to(m.counts);
            meter.record(now, m.counts.processed);
            *updated_at = now;
        }
        self.publish_routing(&live);
        drop(live);
        self.publish();
    }

    /// Follows the shadow evidence of `migration_id` as a committed batch of samples left it
    /// (`Store::record_shadow_samples`): at once in this process's view, where the cutover
    /// gate judges it, or, on a shared store, by asking for a refresh (`counts_moved`), since
    /// other replicas' samples count too. A gate it lets through moves routing and lets the
    /// backfill complete, so the change is published.
    pub fn follow_shadow(&self, migration_id: &str, evidence: ShadowEvidence, now: DateTime<Utc>) {
        if self.shared {
            self.counts_moved.notify_one();
            return;
        }
        let mut live = self.live();
        let Live {
            latest, updated_at, ..
        } = &mut *live;
        if let Some(m) = latest.as_mut().filter(|m| m.id == migration_id) {
            m.shadow = evidence;
            *updated_at = now;
        }
        self.publish_routing(&live);
        drop(live);
        self.publish();
    }

    /// Records that the backfill could not reach `model` (a transient failure) and returns
    /// since when it has been unreachable: the first failure since it last answered.
    pub fn provider_unreachable(
        &self,
        model: &str,
        error: &str,
        now: DateTime<Utc>,
    ) -> DateTime<Utc> {
        let mut live = self.live();
        let waiting = match live.waiting.take() {
            Some(w) if w.model == model => Waiting {
                last_error: error.to_owned(),
                ..w
            },
            _ => Waiting {
                model: model.to_owned(),
                since: now,
                last_error: error.to_owned(),
            },
        };
        let since = waiting.since;
        live.waiting = Some(waiting);
        drop(live);
        self.publish();
        since
    }

    /// Records that `model` answered the backfill again: nothing is waited for any more.
    pub fn provider_reachable(&self, model: &str) {
        let mut live = self.live();
        if live.waiting.as_ref().is_none_or(|w| w.model != model) {
            return;
        }
        live.waiting = None;
        drop(live);
        self.publish();
    }

    /// Records what the backfill's controller allows now, for progress reports. Publishes
    /// nothing: the supervisor calls it at every claim, and a change notice would wake it.
    pub fn set_backfill_limits(&self, limits: BackfillLimits) {
        self.live().limits = Some(limits);
    }

    /// Whether the backfill is waiting for an unreachable provider.
    pub fn is_waiting(&self) -> bool {
        self.live().waiting.is_some()
    }

    /// Backfill batches claimed and not yet committed.
    pub fn in_flight_batches(&self) -> u32 {
        self.live().in_flight_batches
    }

    /// Adjusts the number of batches in flight (+1 on claim, −1 on commit).
    pub fn batch_in_flight(&self, started: bool) {
        let mut live = self.live();
        if started {
            live.in_flight_batches += 1;
        } else {
            live.in_flight_batches = live.in_flight_batches.saturating_sub(1);
        }
        drop(live);
        self.publish();
    }

    /// The migration whose source vectors are due for deletion now (`Migration::needs_cleanup`),
    /// once its target is recorded as the active model.
    pub fn due_for_cleanup(&self, now: DateTime<Utc>) -> Option<Migration> {
        let live = self.live();
        live.latest
            .as_ref()
            .filter(|m| m.needs_cleanup(now) && live.recorded_active == m.target_model)
            .cloned()
    }

    /// Follows a step of the deletion of migration `id`'s source vectors: `deleted` more are
    /// gone, and `done` when none is left. On a shared store the counts come from a refresh.
    pub async fn cleanup_progressed(&self, id: &str, deleted: u64, done: bool) {
        if self.shared {
            if let Err(error) = self.refresh().await {
                tracing::warn!(%error, "could not refresh after a cleanup step");
            }
            return;
        }
        let mut live = self.live();
        let Some(latest) = live.latest.as_mut().filter(|m| m.id == id) else {
            return;
        };
        latest.cleanup.deleted += deleted;
        if done && latest.cleanup.done_at.is_none() {
            latest.cleanup.done_at = Some(Utc::now());
        }
        live.updated_at = Utc::now();
        drop(live);
        self.publish();
    }

    /// Makes `model` the active model of a store that never ran a migration (a registry file
    /// changed before anything was indexed). Refused once a migration exists.
    pub async fn adopt_initial_model(&self, model: &str) -> Result<bool, StoreError> {
        if self.live().latest.is_some() {
            return Ok(false);
        }
        self.store.set_active_model(model).await?;
        let mut live = self.live();
        live.recorded_active = model.to_owned();
        self.publish_routing(&live);
        drop(live);
        self.publish();
        Ok(true)
    }

    /// Records in the store that the target of a cut-over migration is now the active model,
    /// then in memory: a store that fails leaves the change unrecorded in both, so the next
    /// call tries again.
    pub async fn settle_active_model(&self, now: DateTime<Utc>) -> Result<(), StoreError> {
        let active = self.active_model(now);
        let (recorded, latest) = {
            let live = self.live();
            (live.recorded_active.clone(), live.latest.clone())
        };
        if let Some(migration) = latest.filter(|_| recorded != active) {
            let noted = HistoryEvent::window_closed(&migration, now, &self.cause(Actor::Service));
            if self.store.cut_over(&recorded, &active, &noted).await? {
                tracing::info!(model = %active, "rollback window closed; active model changed");
            }
        }
        let mut live = self.live();
        live.recorded_active = active;
        self.publish_routing(&live);
        Ok(())
    }
}
