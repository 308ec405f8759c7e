//! Measures how busy requests keep this process, and sets the backfill's share of its CPU from
//! that (`domain::cpu_share`) while batches are in flight.
//!
//! Every `WINDOW` the sampler reads how long the request runtime's workers were busy (tokio's
//! runtime metrics) and how many requests arrived, and feeds both to the controller. With no
//! batch in flight it only checks, every `WINDOW`, whether one started, and the share is whole
//! again.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::runtime::{Handle, RuntimeMetrics};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::coordinator::Coordinator;
use crate::domain::{CpuShare, LoadSample};
use crate::load::RequestCount;
use crate::supervise::spawn_supervised;

/// How often the controller may change the share.
const WINDOW: Duration = Duration::from_millis(250);

/// The backfill's current CPU share, set by the sampler and read by every batch.
#[derive(Debug)]
pub struct Share {
    current: Mutex<CpuShare>,
}

impl Share {
    /// The whole CPU, yielding down to `min` while requests keep the process busy.
    pub fn new(min: f64) -> Self {
        Self {
            current: Mutex::new(CpuShare::new(min)),
        }
    }

    /// The controller as it stands.
    pub fn now(&self) -> CpuShare {
        *self.current.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn set(&self, share: CpuShare) {
        *self.current.lock().unwrap_or_else(PoisonError::into_inner) = share;
    }

    /// Starts the sampler on `tracker`, measuring the runtime it is called on; it stops when
    /// `shutdown` fires, and starts again if it panics (a dead sampler would leave the share
    /// where it stood).
    pub fn spawn_sampler(
        self: &Arc<Self>,
        requests: Arc<RequestCount>,
        coordinator: Arc<Coordinator>,
        tracker: &TaskTracker,
        shutdown: CancellationToken,
    ) {
        let sampler = Sampler {
            share: self.clone(),
            requests,
            coordinator,
            runtime: Handle::current().metrics(),
        };
        let stop = shutdown.clone();
        spawn_supervised("backfill-share", tracker, shutdown, move || {
            let (sampler, stop) = (sampler.clone(), stop.clone());
            async move {
                tokio::select! {
                    _ = stop.cancelled() => {}
                    _ = sampler.run() => {}
                }
            }
        });
    }
}

#[derive(Clone)]
struct Sampler {
    share: Arc<Share>,
    requests: Arc<RequestCount>,
    coordinator: Arc<Coordinator>,
    runtime: RuntimeMetrics,
}

impl Sampler {
    async fn run(self) {
        loop {
            if self.coordinator.in_flight_batches() == 0 {
                let mut share = self.share.now();
                if share.is_throttled() {
                    share.reset();
                    self.publish(share);
                }
                tokio::time::sleep(WINDOW).await;
                continue;
            }
            let sample = self.measure_window().await;
            let before = self.share.now();
            let mut share = before;
            share.observe(sample);
            if share != before {
                tracing::debug!(
                    share = share.share(),
                    runtime_busy = sample.runtime_busy,
                    requests = sample.requests,
                    "backfill CPU share changed"
                );
            }
            self.publish(share);
        }
    }

    /// Sets the share for the batches, and its gauge for the migration they belong to.
    fn publish(&self, share: CpuShare) {
        self.share.set(share);
        if let Some(migration) = self.coordinator.latest() {
            metrics::gauge!("reembed_backfill_cpu_share", "migration" => migration.id)
                .set(share.share());
        }
    }

    async fn measure_window(&self) -> LoadSample {
        let (started, busy_before) = (Instant::now(), self.busy());
        let requests_before = self.requests.total();
        tokio::time::sleep(WINDOW).await;
        let capacity = started.elapsed().as_secs_f64() * self.runtime.num_workers() as f64;
        let busy = self.busy().saturating_sub(busy_before).as_secs_f64();
        LoadSample {
            runtime_busy: (busy / capacity).min(1.0),
            requests: self.requests.total() - requests_before,
        }
    }

    /// The request runtime's workers' busy time since it started, summed.
    fn busy(&self) -> Duration {
        (0..self.runtime.num_workers())
            .map(|worker| self.runtime.worker_total_busy_duration(worker))
            .sum()
    }
}
