//! `Probe`: hash-v2 behind instruments, registered in place of the built-in hash-v2.
//!
//! It records how many `embed` calls run at once and how many texts each call carries, and it
//! can hold back, slow down, fail or reject calls, so the tests can see the backfill's bounds and can
//! keep a migration in any state for as long as they look at it.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use reembed::embed::builtin::HashEmbedder;
use reembed::embed::{EmbedError, Embedder, ModelInfo, ModelRegistry};
use tokio::sync::watch;

/// Texts containing this marker wait while the probe is held. Corpus documents carry it;
/// documents written during a test do not, so dual writes and queries pass the gate.
pub const HELD: &str = "held-back";

/// Texts containing this marker are rejected as a provider rejects a bad input, for good.
pub const POISON: &str = "poisoned-input";

/// Texts containing this marker make the probe panic, as a bug in an embedder would.
pub const PANIC: &str = "panicking-input";

/// A shared handle on the instrumented hash-v2.
#[derive(Clone)]
pub struct Probe(Arc<Instruments>);

struct Instruments {
    inner: HashEmbedder,
    /// `true` while calls with `HELD` texts may proceed.
    open: watch::Sender<bool>,
    failing: AtomicBool,
    /// Added to every call of more than one text (a backfill batch or a bulk write).
    batch_delay: Mutex<Duration>,
    /// When set, calls are served one at a time in arrival order, each taking this long per
    /// text: a provider of fixed speed, whatever the concurrency.
    per_text: Mutex<Option<Duration>>,
    /// Taken by each call while `per_text` is set; tokio's mutex is fair, so a FIFO.
    worker: tokio::sync::Mutex<()>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    batch_sizes: Mutex<Vec<usize>>,
    /// Texts with the `HELD` marker embedded so far.
    held_embedded: AtomicUsize,
}

impl Probe {
    /// An open, healthy probe.
    pub fn new() -> Self {
        Self(Arc::new(Instruments {
            inner: HashEmbedder::hash_v2(),
            open: watch::channel(true).0,
            failing: AtomicBool::new(false),
            batch_delay: Mutex::new(Duration::ZERO),
            per_text: Mutex::new(None),
            worker: tokio::sync::Mutex::new(()),
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
            batch_sizes: Mutex::new(Vec::new()),
            held_embedded: AtomicUsize::new(0),
        }))
    }

    /// The built-in registry with hash-v2 replaced by this probe.
    pub fn registry(&self) -> ModelRegistry {
        let mut models = ModelRegistry::builtin();
        let info = ModelInfo {
            id: "hash-v2".into(),
            provider: "builtin".into(),
            dimensions: 384,
        };
        models.insert(info, Arc::new(self.clone()));
        models
    }

    /// Calls with a `HELD` text wait until `release`.
    pub fn hold(&self) {
        self.0.open.send_replace(false);
    }

    pub fn release(&self) {
        self.0.open.send_replace(true);
    }

    /// Every call fails as an unavailable provider would.
    pub fn fail(&self, failing: bool) {
        self.0.failing.store(failing, Ordering::SeqCst);
    }

    pub fn slow_batches(&self, delay: Duration) {
        *self.0.batch_delay.lock().unwrap() = delay;
    }

    /// Serves calls one at a time, `per_text` for each text: `1 / per_text` texts per second
    /// however many batches are in flight.
    pub fn serve_serially(&self, per_text: Duration) {
        *self.0.per_text.lock().unwrap() = Some(per_text);
    }

    /// The most `embed` calls that ever ran at once.
    pub fn max_in_flight(&self) -> usize {
        self.0.max_in_flight.load(Ordering::SeqCst)
    }

    /// How many texts with the `HELD` marker were embedded (passed the gate) so far.
    pub fn held_embedded(&self) -> usize {
        self.0.held_embedded.load(Ordering::SeqCst)
    }

    /// The number of texts of every call so far, in call order.
    pub fn batch_sizes(&self) -> Vec<usize> {
        self.0.batch_sizes.lock().unwrap().clone()
    }
}

/// Counts a call as in flight for as long as it lives.
struct InFlight<'a>(&'a Instruments);

impl<'a> InFlight<'a> {
    fn enter(instruments: &'a Instruments, texts: usize) -> Self {
        instruments.batch_sizes.lock().unwrap().push(texts);
        let now = instruments.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        instruments.max_in_flight.fetch_max(now, Ordering::SeqCst);
        Self(instruments)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

#[async_trait]
impl Embedder for Probe {
    fn dimensions(&self) -> usize {
        self.0.inner.dimensions()
    }

    async fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, EmbedError> {
        let _in_flight = InFlight::enter(&self.0, texts.len());
        let held = texts.iter().filter(|t| t.contains(HELD)).count();
        if held > 0 {
            let mut open = self.0.open.subscribe();
            let _ = open.wait_for(|open| *open).await;
            self.0.held_embedded.fetch_add(held, Ordering::SeqCst);
        }
        let delay = *self.0.batch_delay.lock().unwrap();
        if texts.len() > 1 && !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let per_text = *self.0.per_text.lock().unwrap();
        if let Some(per_text) = per_text {
            let _turn = self.0.worker.lock().await;
            tokio::time::sleep(per_text * texts.len() as u32).await;
        }
        assert!(
            !texts.iter().any(|t| t.contains(PANIC)),
            "probe: a bug in the embedder"
        );
        if texts.iter().any(|t| t.contains(POISON)) {
            return Err(EmbedError::Rejected("probe: poisoned input".into()));
        }
        if self.0.failing.load(Ordering::SeqCst) {
            return Err(EmbedError::Unavailable("probe: provider down".into()));
        }
        self.0.inner.embed(texts).await
    }
}
