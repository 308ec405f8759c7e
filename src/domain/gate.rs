//! The cutover gate (API.md "Confidence"): evidence the target must show before queries switch
//! to it at the threshold and before the migration may complete — enough shadow samples that
//! agree with the source, and/or a labelled evaluation where the target recalls nearly as much
//! as the source. An operator may override it, with a reason that the history keeps.
//!
//! Decided here from the evidence, with no I/O: the coordinator gathers the evidence (the
//! shadow samples every replica recorded, the last evaluation) and asks.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::evaluation::Evaluation;

/// A migration's cutover gate (config `cutover_gate`): each condition that is set must hold.
/// `min_samples` and `min_overlap` come together; at least one condition is set
/// (`ConfigPatch` checks both).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CutoverGate {
    /// Shadow samples needed before `min_overlap` is judged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_samples: Option<u64>,
    /// The least mean overlap@k of the shadow samples.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_overlap: Option<f64>,
    /// The target's recall@k on the last evaluation must be at least this times the source's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_recall_ratio: Option<f64>,
}

/// An operator's explicit cutover past a gate (`POST .../cutover`), kept with the migration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct GateOverride {
    pub at: DateTime<Utc>,
    pub reason: String,
}

/// Where a gate stands (progress `gate.state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum GateState {
    /// No gate is set: the threshold alone decides.
    None,
    /// Some condition does not hold yet.
    Blocked,
    /// Every condition holds.
    Passing,
    /// An operator cut over past the gate.
    Overridden,
}

/// A gate's state and why, in words (progress `gate`).
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct GateStatus {
    pub state: GateState,
    pub reason: String,
}

impl GateStatus {
    /// Whether the gate lets queries switch and the migration complete.
    pub fn lets_through(&self) -> bool {
        self.state != GateState::Blocked
    }
}

/// What the shadow reads showed so far, across every replica.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ShadowEvidence {
    pub samples: u64,
    /// `None` without samples.
    pub mean_overlap: Option<f64>,
}

impl ShadowEvidence {
    /// The evidence of `samples` samples whose overlaps sum to `overlap_sum`: what a
    /// migration's row counts, the sum kept rather than the mean so that every batch of
    /// samples, from any replica, adds to it in one update.
    pub fn from_sum(samples: u64, overlap_sum: f64) -> Self {
        Self {
            samples,
            mean_overlap: (samples > 0).then(|| overlap_sum / samples as f64),
        }
    }
}

/// The gate's status on the evidence: `gate` (none → `None`), an operator's `overridden`,
/// the `shadow` samples and the last `evaluation`.
pub fn check(
    gate: Option<&CutoverGate>,
    overridden: Option<&GateOverride>,
    shadow: ShadowEvidence,
    evaluation: Option<&Evaluation>,
) -> GateStatus {
    let Some(gate) = gate else {
        return status(GateState::None, "no cutover gate is set".to_owned());
    };
    if let Some(by) = overridden {
        return status(
            GateState::Overridden,
            format!("overridden at {}: {}", by.at.to_rfc3339(), by.reason),
        );
    }
    let mut findings = Vec::new();
    if let (Some(min_samples), Some(min_overlap)) = (gate.min_samples, gate.min_overlap) {
        findings.push(overlap_finding(min_samples, min_overlap, shadow));
    }
    if let Some(ratio) = gate.min_recall_ratio {
        findings.push(recall_finding(ratio, evaluation));
    }
    let blocked: Vec<&str> = findings
        .iter()
        .filter(|(holds, _)| !holds)
        .map(|(_, why)| why.as_str())
        .collect();
    if blocked.is_empty() {
        let all: Vec<&str> = findings.iter().map(|(_, why)| why.as_str()).collect();
        return status(GateState::Passing, all.join("; "));
    }
    status(GateState::Blocked, blocked.join("; "))
}

fn status(state: GateState, reason: String) -> GateStatus {
    GateStatus { state, reason }
}

/// Whether the shadow samples meet `min_samples` and `min_overlap`, and why in words.
fn overlap_finding(min_samples: u64, min_overlap: f64, shadow: ShadowEvidence) -> (bool, String) {
    if shadow.samples < min_samples {
        return (
            false,
            format!(
                "{} of {min_samples} shadow samples collected",
                shadow.samples
            ),
        );
    }
    match shadow.mean_overlap {
        Some(mean) if mean >= min_overlap => (
            true,
            format!(
                "mean overlap {mean:.3} ≥ {min_overlap:.3} over {} shadow samples",
                shadow.samples
            ),
        ),
        Some(mean) => (
            false,
            format!(
                "mean overlap {mean:.3} is below {min_overlap:.3} over {} shadow samples",
                shadow.samples
            ),
        ),
        None => (false, "no shadow samples yet".to_owned()),
    }
}

/// How far below the ratio's product a target recall still meets it: rounding, not recall.
const RECALL_TOLERANCE: f64 = 1e-9;

/// Whether the last evaluation's target recall is at least `ratio` times the source's.
fn recall_finding(ratio: f64, evaluation: Option<&Evaluation>) -> (bool, String) {
    let Some(evaluation) = evaluation.filter(|e| e.queries > 0) else {
        return (false, "no labelled evaluation yet".to_owned());
    };
    let (source, target) = (evaluation.source.recall, evaluation.target.recall);
    let needed = ratio * source;
    // 0.9 × 0.8 is 0.7200000000000001 in f64: a recall of exactly 0.72 meets it.
    if target + RECALL_TOLERANCE >= needed {
        (
            true,
            format!("target recall {target:.3} ≥ {ratio} × source recall {source:.3}"),
        )
    } else {
        (
            false,
            format!(
                "target recall {target:.3} is below {ratio} × source recall {source:.3} \
                 ({needed:.3})"
            ),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::evaluation::{ModelScores, Scores};

    fn overlap_gate() -> CutoverGate {
        CutoverGate {
            min_samples: Some(100),
            min_overlap: Some(0.8),
            min_recall_ratio: None,
        }
    }

    fn recall_gate(ratio: f64) -> CutoverGate {
        CutoverGate {
            min_samples: None,
            min_overlap: None,
            min_recall_ratio: Some(ratio),
        }
    }

    fn shadow(samples: u64, mean: f64) -> ShadowEvidence {
        ShadowEvidence {
            samples,
            mean_overlap: (samples > 0).then_some(mean),
        }
    }

    fn evaluation(source: f64, target: f64) -> Evaluation {
        let side = |model: &str, recall: f64| {
            ModelScores::new(
                model,
                Scores {
                    recall,
                    ..Scores::default()
                },
            )
        };
        Evaluation {
            at: Utc::now(),
            k: 10,
            queries: 5,
            excluded_relevant: 0,
            source: side("hash-v1", source),
            target: side("hash-v2", target),
        }
    }

    #[test]
    fn the_row_sum_gives_the_mean_and_no_samples_give_none() {
        assert_eq!(ShadowEvidence::from_sum(0, 0.0), ShadowEvidence::default());
        let evidence = ShadowEvidence::from_sum(4, 3.0);
        assert_eq!((evidence.samples, evidence.mean_overlap), (4, Some(0.75)));
    }

    #[test]
    fn without_a_gate_nothing_is_blocked() {
        let status = check(None, None, ShadowEvidence::default(), None);
        assert_eq!(status.state, GateState::None);
        assert!(status.lets_through());
    }

    #[test]
    fn the_overlap_condition_waits_for_its_samples_then_judges_the_mean() {
        let gate = overlap_gate();
        let few = check(Some(&gate), None, shadow(99, 1.0), None);
        assert_eq!(few.state, GateState::Blocked);
        assert_eq!(few.reason, "99 of 100 shadow samples collected");
        let low = check(Some(&gate), None, shadow(150, 0.42), None);
        assert_eq!(low.state, GateState::Blocked);
        assert_eq!(
            low.reason,
            "mean overlap 0.420 is below 0.800 over 150 shadow samples"
        );
        let good = check(Some(&gate), None, shadow(100, 0.8), None);
        assert_eq!(good.state, GateState::Passing, "{good:?}");
        assert!(good.lets_through());
    }

    #[test]
    fn the_recall_condition_compares_the_last_evaluation() {
        let gate = recall_gate(0.9);
        let none = check(Some(&gate), None, ShadowEvidence::default(), None);
        assert_eq!(
            (none.state, none.reason.as_str()),
            (GateState::Blocked, "no labelled evaluation yet")
        );
        let worse = check(
            Some(&gate),
            None,
            ShadowEvidence::default(),
            Some(&evaluation(0.8, 0.6)),
        );
        assert_eq!(worse.state, GateState::Blocked);
        assert!(
            worse.reason.contains("below 0.9 × source recall 0.800"),
            "{worse:?}"
        );
        let near = check(
            Some(&gate),
            None,
            ShadowEvidence::default(),
            Some(&evaluation(0.8, 0.72)),
        );
        assert_eq!(near.state, GateState::Passing, "{near:?}");
    }

    #[test]
    fn every_condition_set_must_hold_and_each_failing_one_is_named() {
        let gate = CutoverGate {
            min_recall_ratio: Some(1.0),
            ..overlap_gate()
        };
        let both_fail = check(
            Some(&gate),
            None,
            shadow(10, 0.9),
            Some(&evaluation(0.8, 0.4)),
        );
        assert_eq!(both_fail.state, GateState::Blocked);
        assert!(both_fail.reason.contains("10 of 100") && both_fail.reason.contains("recall"));
        let one_fails = check(
            Some(&gate),
            None,
            shadow(200, 0.9),
            Some(&evaluation(0.8, 0.4)),
        );
        assert_eq!(one_fails.state, GateState::Blocked);
        assert!(!one_fails.reason.contains("overlap"), "{one_fails:?}");
        let pass = check(
            Some(&gate),
            None,
            shadow(200, 0.9),
            Some(&evaluation(0.8, 0.8)),
        );
        assert_eq!(pass.state, GateState::Passing);
    }

    #[test]
    fn an_override_lets_a_blocked_gate_through_and_says_why() {
        let by = GateOverride {
            at: Utc::now(),
            reason: "checked by hand".to_owned(),
        };
        let status = check(Some(&overlap_gate()), Some(&by), shadow(0, 0.0), None);
        assert_eq!(status.state, GateState::Overridden);
        assert!(status.reason.ends_with(": checked by hand"));
        assert!(status.lets_through());
    }
}
