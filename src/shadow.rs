//! Shadow reads (API.md "Confidence", `shadow_percent`): a share of live queries is also run
//! on the other model's index, off the response path, and each pair is measured for the
//! comparison (`GET /v1/migrations/{id}/comparison`).
//!
//! - **Off the response path.** A shadowed query only offers its request to a bounded queue
//!   (`QUEUE_CAPACITY`) with a non-blocking `try_send` once it has its answer
//!   (`ShadowQueue::offer`); when the queue is full the request is dropped and counted, so an
//!   answer never waits for the shadow side, however slow that is.
//! - **One worker** (`spawn`), supervised like every background task, takes the requests one at
//!   a time: it embeds the text with the other model and searches its index as a live query
//!   would (that time is the other side's latency; the answered side's is the one the query
//!   measured), then ranks both query vectors exactly among the documents that have vectors
//!   in both models (`Documents::rank_vector_in_both`) and takes overlap@k of the two
//!   rankings (`domain::comparison`). So shadow work uses one task at a time; what a slow
//!   provider cannot keep up with is dropped at the queue. The other model's provider is
//!   asked once, without retries: a shadow is a sample, not an answer.
//! - **Which queries** (`domain::shadow`): while the migration is migrating or in its rollback
//!   window, `shadow_percent` of the queries, drawn at random per query, except those with a
//!   `filter` (the exact rankings in both models take none, and a filter would measure itself
//!   more than the models) and those answered by a fallback (the other model's provider has
//!   just failed). `exact` queries are shadowed, the other side searching exactly too.
//! - **Persisted in batches.** Samples and drops are written to the store every `FLUSH_EVERY`
//!   or `FLUSH_AT` samples, in one transaction per migration (`Store::record_shadow_samples`),
//!   so they survive a restart and every replica's count in the comparison. The same
//!   transaction counts them on the migration (its `ShadowEvidence`), which the coordinator
//!   then follows (commit, then publish) for the cutover gate. Samples pending when the store
//!   fails are lost (logged); their drops are kept for the next write.
//! - **Texts are never logged**, at any level: nothing here formats a request or a sample.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use chrono::Utc;
use tokio::sync::mpsc::{self, error::TrySendError};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::coordinator::Coordinator;
use crate::documents::{Documents, ServiceError};
use crate::domain::ShadowPlan;
use crate::domain::comparison::{self, SHADOW_K, ShadowSample};
use crate::store::Store;
use crate::supervise::spawn_supervised;

/// Shadow requests waiting for the worker, at most; more are dropped and counted.
const QUEUE_CAPACITY: usize = 256;
/// How often pending samples and drops are written to the store.
const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// Pending samples that are written at once, without waiting for `FLUSH_EVERY`.
const FLUSH_AT: usize = 100;

/// What a shadowed query hands to the worker: the query, the side that answered it and how.
/// Not `Debug`, so that its text cannot reach a log line by accident.
pub struct ShadowRequest {
    /// The other model, and the migration whose comparison the sample joins.
    pub plan: ShadowPlan,
    /// The query text, whole: the other model embeds what the answered one did.
    pub text: String,
    /// The query's `top_k` and `exact`, so the other side searches as the answer did.
    pub top_k: usize,
    pub exact: bool,
    /// The model that answered, the query's vector in it, and how long the answer took
    /// (embedding and search).
    pub answered_model: String,
    pub answered_vector: Vec<f32>,
    pub answered_latency: Duration,
}

/// Drops not yet written to the store, per migration. Taken by `offer` when the queue is full
/// and by the worker to write them; held only to add or take a count, never across an await.
#[derive(Default)]
struct Drops(Mutex<HashMap<String, u64>>);

impl Drops {
    fn add(&self, migration_id: &str, n: u64) {
        let mut drops = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        *drops.entry(migration_id.to_owned()).or_default() += n;
    }

    fn take(&self) -> HashMap<String, u64> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

/// The query path's end of the shadow queue.
pub struct ShadowQueue {
    sender: mpsc::Sender<ShadowRequest>,
    drops: Arc<Drops>,
}

/// The worker's end of the shadow queue, kept by the `App` until `serve` starts the worker.
pub struct ShadowInbox {
    /// Locked by the running worker for its life; a worker started again after a panic takes
    /// it over, with whatever requests were still queued.
    receiver: Arc<tokio::sync::Mutex<mpsc::Receiver<ShadowRequest>>>,
    drops: Arc<Drops>,
}

/// A new, empty shadow queue.
pub fn channel() -> (ShadowQueue, ShadowInbox) {
    let (sender, receiver) = mpsc::channel(QUEUE_CAPACITY);
    let drops = Arc::new(Drops::default());
    let inbox = ShadowInbox {
        receiver: Arc::new(tokio::sync::Mutex::new(receiver)),
        drops: drops.clone(),
    };
    (ShadowQueue { sender, drops }, inbox)
}

impl ShadowQueue {
    /// Hands `request` to the worker without waiting: when the queue is full (or the worker
    /// has stopped), the request is dropped and counted for its migration.
    pub fn offer(&self, request: ShadowRequest) {
        match self.sender.try_send(request) {
            Ok(()) => {}
            Err(TrySendError::Full(request) | TrySendError::Closed(request)) => {
                let migration = request.plan.migration_id;
                self.drops.add(&migration, 1);
                metrics::counter!("reembed_shadow_dropped_total", "migration" => migration)
                    .increment(1);
            }
        }
    }
}

/// Runs the worker on `tracker` until `shutdown`, started again if it panics.
pub fn spawn(
    inbox: ShadowInbox,
    documents: Arc<Documents>,
    coordinator: Arc<Coordinator>,
    store: Arc<dyn Store>,
    tracker: &TaskTracker,
    shutdown: CancellationToken,
) {
    let inbox = Arc::new(inbox);
    let stop = shutdown.clone();
    spawn_supervised("shadow-reads", tracker, shutdown, move || {
        let worker = Worker {
            inbox: inbox.clone(),
            documents: documents.clone(),
            coordinator: coordinator.clone(),
            store: store.clone(),
            pending: Vec::new(),
        };
        worker.run(stop.clone())
    });
}

/// The worker's state: where requests come from, what it measures with, and the samples
/// measured but not yet written.
struct Worker {
    inbox: Arc<ShadowInbox>,
    documents: Arc<Documents>,
    coordinator: Arc<Coordinator>,
    store: Arc<dyn Store>,
    pending: Vec<(String, ShadowSample)>,
}

/// What one turn of the worker found to do.
enum Step {
    Measure(ShadowRequest),
    Flush,
    Stop,
}

impl Worker {
    async fn run(mut self, shutdown: CancellationToken) {
        let inbox = self.inbox.clone();
        let mut receiver = inbox.receiver.lock().await;
        let mut ticks = tokio::time::interval(FLUSH_EVERY);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let step = tokio::select! {
                _ = shutdown.cancelled() => Step::Stop,
                _ = ticks.tick() => Step::Flush,
                request = receiver.recv() => request.map_or(Step::Stop, Step::Measure),
            };
            match step {
                Step::Measure(request) => {
                    // A slow provider must not hold up the shutdown; a search changes nothing.
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        () = self.measure(request) => {}
                    }
                    if self.pending.len() >= FLUSH_AT {
                        self.flush().await;
                    }
                }
                Step::Flush => self.flush().await,
                Step::Stop => break,
            }
        }
        self.flush().await;
    }

    /// Measures one shadowed query and keeps the sample for the next flush; a pair that
    /// cannot be measured (the other provider fails) or tells nothing is left out.
    async fn measure(&mut self, request: ShadowRequest) {
        let migration = request.plan.migration_id.clone();
        match pair(&self.documents, request).await {
            Ok(Some(sample)) => {
                metrics::counter!("reembed_shadow_samples_total", "migration" => migration.clone())
                    .increment(1);
                self.pending.push((migration, sample));
            }
            Ok(None) => {}
            Err(error) => {
                tracing::debug!(%error, migration, "a shadow read failed; no sample");
            }
        }
    }

    /// Writes the pending samples and drops, one transaction per migration, and has the
    /// coordinator follow the evidence each committed.
    async fn flush(&mut self) {
        let mut batches: HashMap<String, (Vec<ShadowSample>, u64)> = HashMap::new();
        for (migration, sample) in self.pending.drain(..) {
            batches.entry(migration).or_default().0.push(sample);
        }
        for (migration, dropped) in self.inbox.drops.take() {
            batches.entry(migration).or_default().1 += dropped;
        }
        for (migration, (samples, dropped)) in batches {
            let recorded = self
                .store
                .record_shadow_samples(&migration, &samples, dropped)
                .await;
            match recorded {
                Ok(evidence) => self
                    .coordinator
                    .follow_shadow(&migration, evidence, Utc::now()),
                Err(error) => {
                    let lost = samples.len();
                    tracing::warn!(%error, migration, lost, "cannot record shadow samples");
                    self.inbox.drops.add(&migration, dropped);
                }
            }
        }
    }
}

/// The sample of one shadowed query: the other side searched as a live query (timed), both
/// sides ranked exactly among the documents that have vectors in both models, and their
/// overlap@k; `None` when no document has both vectors yet.
async fn pair(
    documents: &Documents,
    request: ShadowRequest,
) -> Result<Option<ShadowSample>, ServiceError> {
    let ShadowRequest {
        plan,
        text,
        top_k,
        exact,
        answered_model,
        answered_vector,
        answered_latency,
    } = request;
    let other = plan.other_model.as_str();
    let started = Instant::now();
    let other_vector = documents
        .search_as_query(other, &text, top_k, exact)
        .await?;
    let other_latency = started.elapsed();
    let answered_hits = documents
        .rank_vector_in_both(&answered_model, other, &answered_vector, SHADOW_K)
        .await?;
    let other_hits = documents
        .rank_vector_in_both(other, &answered_model, &other_vector, SHADOW_K)
        .await?;
    let Some(overlap) = comparison::overlap(&answered_hits, &other_hits) else {
        return Ok(None);
    };
    let answered = (millis(answered_latency), answered_hits);
    let shadow = (millis(other_latency), other_hits);
    let ((source_ms, source_hits), (target_ms, target_hits)) = if plan.answered_by_source {
        (answered, shadow)
    } else {
        (shadow, answered)
    };
    Ok(Some(ShadowSample {
        overlap,
        source_ms,
        target_ms,
        text: comparison::truncate(&text),
        source_hits,
        target_hits,
    }))
}

fn millis(elapsed: Duration) -> f64 {
    elapsed.as_secs_f64() * 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(migration_id: &str) -> ShadowRequest {
        ShadowRequest {
            plan: ShadowPlan {
                migration_id: migration_id.to_owned(),
                other_model: "hash-v2".to_owned(),
                answered_by_source: true,
            },
            text: "a query".to_owned(),
            top_k: 10,
            exact: false,
            answered_model: "hash-v1".to_owned(),
            answered_vector: vec![1.0],
            answered_latency: Duration::from_millis(1),
        }
    }

    #[test]
    fn a_full_queue_drops_and_counts_without_waiting() {
        let (queue, inbox) = channel();
        for _ in 0..QUEUE_CAPACITY + 3 {
            queue.offer(request("m"));
        }
        queue.offer(request("other"));
        let drops = inbox.drops.take();
        assert_eq!(drops, HashMap::from([("m".into(), 3), ("other".into(), 1)]));
        assert!(inbox.drops.take().is_empty(), "taken once");
    }

    #[test]
    fn a_stopped_worker_counts_every_offer_as_dropped() {
        let (queue, inbox) = channel();
        let drops = inbox.drops.clone();
        drop(inbox);
        queue.offer(request("m"));
        assert_eq!(drops.take(), HashMap::from([("m".into(), 1)]));
    }
}
