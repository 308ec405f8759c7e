//! Pure migration policy: the lifecycle state machine, the routing table and its sticky
//! canary, progress arithmetic and config validation.
//!
//! Nothing here performs I/O, spawns tasks or reads a clock: every function that depends on
//! time takes `now` as a parameter, so each row of API.md's tables is a plain unit test.
//! The rest of the crate asks this module *what* to do and then does it durably.

pub mod canary;
pub mod comparison;
pub mod config;
pub mod cost;
pub mod cpu_share;
pub mod evaluation;
pub mod gate;
pub mod history;
pub mod migration;
pub mod progress;
pub mod queue;
pub mod retry;
pub mod routing;
pub mod shadow;
pub mod throttle;

#[cfg(test)]
mod proptests;

pub use canary::{RoutingKey, RoutingKeyTooLong};
pub use comparison::{Comparison, ComparisonData, ShadowSample};
pub use config::{BackfillConfig, ConfigError, ConfigPatch};
pub use cost::{Budget, cost_of, estimate_batch_tokens, remaining_tokens};
pub use cpu_share::{CpuShare, LoadSample};
pub use evaluation::{Evaluation, LabelledQuery, ModelScores, Scores};
pub use gate::{CutoverGate, GateOverride, GateState, GateStatus, ShadowEvidence};
pub use history::{Actor, Cause, HistoryEvent, HistoryKind};
pub use migration::{
    CleanupState, Counts, Event, Migration, MigrationState, SourceCleanup, TransitionError,
};
pub use progress::{
    Pace, ProgressSnapshot, ThroughputMeter, Waiting, estimate_secs, estimate_tokens,
};
pub use queue::{CountsDelta, QueueChange, QueueStep, QueueView, Refused, free_slot};
pub use retry::{Permanent, ProviderFailure, RetryDecision, RetryPolicy, parse_retry_after};
pub use routing::{Phase, QueryPlan, QueryReason, Route, Routing, RoutingSnapshot, route};
pub use shadow::{ShadowPlan, ShadowShare};
pub use throttle::{BackfillLimits, Bounds, Controller, ThrottleReason};
