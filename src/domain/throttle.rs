//! The backfill's adaptive controller: how many batches it keeps in flight and how many
//! documents each holds, so that live traffic barely notices it.
//!
//! An embedding server such as infinity, TEI or Ollama serves its queue in arrival order. A
//! client's request that arrives behind the backfill's requests waits for all of them, so the
//! backfill's in-flight work at the provider is the latency it adds to live traffic. The
//! controller keeps that work within a per-model budget (`interactive_latency_budget_ms`,
//! default 250 ms): one interactive request then waits at most about one backfill request.
//!
//! It observes the latency of every provider request, by lane, and decides with two signals:
//!
//! | signal | when | meaning |
//! |---|---|---|
//! | interactive excess: p90 of small interactive requests' latency over the lowest seen | at least `MIN_SAMPLES` of them in the last `RECENT` | what live traffic actually waits |
//! | the latency of the latest backfill request | otherwise | what a request arriving now would wait at a FIFO provider |
//!
//! Two batches in flight keep a one-worker provider busy while the other batch commits and the
//! next is claimed, so the controller keeps two whenever the bounds allow and sizes the batch
//! for both to fit the budget. Over the budget, it backs off multiplicatively: half the
//! concurrency above two, else a batch shrunk in proportion to the overshoot (and one batch in
//! flight only once a batch is down to one document). Under half the budget it grows back: the
//! second batch in flight, then the batch (doubling while far under, by a quarter near it),
//! then more batches in flight. Between changes it waits for a request sent after the last
//! change to answer.
//! `batch_size` and `max_concurrent` of the migration stay the upper bounds.
//!
//! Pure: the caller passes the clock reading with each observation.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use serde::Serialize;
use utoipa::ToSchema;

/// Extra latency live traffic may see from a backfill when the registry names no budget.
pub const DEFAULT_LATENCY_BUDGET: Duration = Duration::from_millis(250);

/// Interactive requests of at most this many inputs (a write or a query) are the latency
/// signal; a bulk write's latency is mostly its own service time.
const SMALL_REQUEST: usize = 4;
/// How far back the interactive signal looks.
const RECENT: Duration = Duration::from_secs(10);
/// How far back the lowest interactive latency (the provider's own service time) is kept.
const FLOOR_WINDOW: Duration = Duration::from_secs(300);
/// Interactive samples in `RECENT` needed before they outweigh the backfill's own latency.
const MIN_SAMPLES: usize = 3;
/// The least time between two changes, however fast the provider answers.
const MIN_SETTLE: Duration = Duration::from_millis(50);
/// The batch a backfill starts with: small, so the first requests of a migration cannot
/// flood the provider's queue before the controller has seen a latency.
const START_BATCH: u32 = 8;
/// Shrinking aims this far under the budget, so the next sample is not over it again.
const AIM: f64 = 0.8;
/// Batches in flight the controller keeps while it shrinks or grows the batch: one computed
/// at the provider, one queued behind it.
const PIPELINE: u32 = 2;

/// Why the backfill runs below its configured bounds (progress `throttle_reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ThrottleReason {
    /// Growing toward the bounds while latency stays within the budget.
    Probing,
    /// Live requests to the model waited longer than the budget.
    InteractiveLatency,
    /// The backfill's own requests take longer than the budget, so a live request arriving
    /// behind them would wait that long.
    BackfillLatency,
    /// The provider is unreachable; one batch at a time probes it.
    ProviderUnavailable,
    /// Requests keep this process busy: the backfill takes a smaller share of its CPU
    /// (`domain::cpu_share`, metric `reembed_backfill_cpu_share`).
    ServerBusy,
}

/// The configured upper bounds: the migration's `max_concurrent` and `batch_size`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    pub max_concurrent: u32,
    pub batch_size: u32,
}

/// What the backfill may do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackfillLimits {
    /// Batches in flight at most.
    pub concurrency: u32,
    /// Documents per batch at most.
    pub batch_size: u32,
    /// Why these are below the bounds; `None` at the bounds.
    pub reason: Option<ThrottleReason>,
}

impl BackfillLimits {
    /// Running at the configured bounds, unthrottled.
    pub fn at(bounds: Bounds) -> Self {
        Self {
            concurrency: bounds.max_concurrent,
            batch_size: bounds.batch_size,
            reason: None,
        }
    }
}

/// The controller of one model's backfill lane; see the module doc.
#[derive(Debug, Clone)]
pub struct Controller {
    budget: Duration,
    /// Inputs per provider request (`max_batch`): a larger batch makes several requests in a
    /// row, each taking about as long as this many inputs.
    request_inputs: u32,
    concurrency: u32,
    batch_size: u32,
    reason: Option<ThrottleReason>,
    /// The bounds of the last `limits` call; no change is made before one.
    bounds: Option<Bounds>,
    /// The latest backfill request's latency.
    backfill_latency: Option<Duration>,
    /// (when, latency) of recent small interactive requests, oldest first.
    interactive: VecDeque<(Instant, Duration)>,
    /// When the limits last changed: interactive samples from before say nothing of them.
    changed_at: Option<Instant>,
    /// No change before this instant (a request sent after the last change has answered).
    settled_at: Option<Instant>,
}

impl Controller {
    /// A controller aiming at `budget` of extra latency for a provider taking at most
    /// `request_inputs` inputs per request. It starts with one small batch in flight.
    pub fn new(budget: Duration, request_inputs: u32) -> Self {
        Self {
            budget,
            request_inputs: request_inputs.max(1),
            concurrency: 1,
            batch_size: START_BATCH,
            reason: Some(ThrottleReason::Probing),
            bounds: None,
            backfill_latency: None,
            interactive: VecDeque::new(),
            changed_at: None,
            settled_at: None,
        }
    }

    /// The limits within `bounds` (which a PATCH may have changed since the last call); the
    /// controller keeps adjusting within them.
    pub fn limits(&mut self, bounds: Bounds) -> BackfillLimits {
        self.bounds = Some(bounds);
        self.limits_within(bounds)
    }

    fn limits_within(&self, bounds: Bounds) -> BackfillLimits {
        let concurrency = self.concurrency.min(bounds.max_concurrent).max(1);
        let batch_size = self.batch_size.min(bounds.batch_size).max(1);
        let at_bounds = concurrency == bounds.max_concurrent && batch_size == bounds.batch_size;
        BackfillLimits {
            concurrency,
            batch_size,
            reason: if at_bounds { None } else { self.reason },
        }
    }

    /// Records a provider request of the interactive lane with `inputs` inputs.
    pub fn observe_interactive(&mut self, inputs: usize, latency: Duration, now: Instant) {
        if inputs > SMALL_REQUEST {
            return;
        }
        self.interactive.push_back((now, latency));
        while let Some(&(at, _)) = self.interactive.front() {
            if now.duration_since(at) <= FLOOR_WINDOW {
                break;
            }
            self.interactive.pop_front();
        }
    }

    /// Records a backfill request's latency and adjusts the limits.
    pub fn observe_backfill(&mut self, latency: Duration, now: Instant) {
        self.backfill_latency = Some(latency);
        let Some(bounds) = self.bounds else {
            return;
        };
        if self.settled_at.is_some_and(|at| now < at) {
            return;
        }
        let (pressure, reason) = match self.interactive_excess(now) {
            Some(excess) => (excess, ThrottleReason::InteractiveLatency),
            None => (latency, ThrottleReason::BackfillLatency),
        };
        let changed = if pressure > self.budget {
            self.back_off(pressure, reason, bounds)
        } else if pressure < self.budget / 2 {
            self.grow(pressure, bounds)
        } else {
            false
        };
        if changed {
            self.changed_at = Some(now);
            self.settled_at = Some(now + latency.max(MIN_SETTLE));
        }
    }

    /// The p90 of the small interactive latencies since the last change (and within
    /// `RECENT`) over the lowest kept, when there are enough of them.
    fn interactive_excess(&self, now: Instant) -> Option<Duration> {
        let floor = self.interactive.iter().map(|&(_, l)| l).min()?;
        let since = self.changed_at;
        let mut recent: Vec<Duration> = self
            .interactive
            .iter()
            .filter(|&&(at, _)| now.duration_since(at) <= RECENT && since.is_none_or(|c| at > c))
            .map(|&(_, latency)| latency - floor)
            .collect();
        if recent.len() < MIN_SAMPLES {
            return None;
        }
        recent.sort_unstable();
        let p90 = (recent.len() * 9).div_ceil(10) - 1;
        Some(recent[p90])
    }

    /// Halves the concurrency above `PIPELINE`, else shrinks the batch in proportion to the
    /// overshoot, else keeps one batch in flight; `true` when something changed.
    fn back_off(&mut self, pressure: Duration, reason: ThrottleReason, bounds: Bounds) -> bool {
        self.clamp(bounds);
        self.reason = Some(reason);
        if self.concurrency > PIPELINE {
            self.concurrency = (self.concurrency / 2).max(PIPELINE);
            return true;
        }
        if self.batch_size > 1 {
            let per_request = self.batch_size.min(self.request_inputs);
            let ratio = AIM * self.budget.as_secs_f64() / pressure.as_secs_f64();
            self.batch_size = ((f64::from(per_request) * ratio) as u32).clamp(1, per_request);
            return true;
        }
        let single = self.concurrency > 1;
        self.concurrency = 1;
        single
    }

    /// Grows to `PIPELINE` batches in flight, then the batch toward its bound, then the
    /// concurrency; `true` when something changed.
    fn grow(&mut self, pressure: Duration, bounds: Bounds) -> bool {
        self.clamp(bounds);
        if self.concurrency < PIPELINE.min(bounds.max_concurrent) {
            self.concurrency += 1;
            true
        } else if self.batch_size < bounds.batch_size {
            let factor = if pressure < self.budget / 4 {
                2.0
            } else {
                1.25
            };
            let grown = (f64::from(self.batch_size) * factor) as u32;
            self.batch_size = grown.max(self.batch_size + 1).min(bounds.batch_size);
            true
        } else if self.concurrency < bounds.max_concurrent {
            self.concurrency += 1;
            true
        } else {
            false
        }
    }

    fn clamp(&mut self, bounds: Bounds) {
        self.concurrency = self.concurrency.clamp(1, bounds.max_concurrent.max(1));
        self.batch_size = self.batch_size.clamp(1, bounds.batch_size.max(1));
    }
}

#[cfg(test)]
#[path = "throttle_tests.rs"]
mod tests;
