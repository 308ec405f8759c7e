//! The migration config of `POST /v1/migrations` and `PATCH /v1/migrations/{id}/config`:
//! defaults and limits from API.md (mirroring lattice-embed's `BackfillConfig`).

use serde::{Deserialize, Deserializer, Serialize};
use utoipa::ToSchema;
use utoipa::openapi::schema::{AdditionalProperties, ObjectBuilder, OneOfBuilder, Type};

use super::gate::CutoverGate;

/// Largest accepted `batch_size`: bounds memory per batch and the length of one transaction.
pub const MAX_BATCH_SIZE: i64 = 10_000;
/// Largest accepted `max_concurrent`: more batches in flight only queue on the store's writer.
pub const MAX_CONCURRENT: i64 = 64;
/// Longest accepted rollback window (ten years): keeps deadline arithmetic far from overflow.
pub const MAX_ROLLBACK_WINDOW_SECS: i64 = 10 * 365 * 24 * 3600;

/// A validated migration config.
///
/// Persisted as JSON in the `migrations` table: renaming a field needs a data migration.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct BackfillConfig {
    /// Documents per backfill batch, at most.
    pub batch_size: u32,
    /// Backfill batches in flight at once, at most.
    pub max_concurrent: u32,
    /// Whether writes during the migration embed with both models (else they are queued).
    pub dual_write: bool,
    /// Coverage at which queries switch from the source to the target model.
    pub target_query_threshold: f64,
    /// How long after completion both models keep being written, so rollback is lossless.
    pub rollback_window_secs: u64,
    /// Share of keyed queries, 0 to 100, sent to the target before the threshold (the sticky
    /// canary). Defaulted when decoding, so rows persisted before it existed still read;
    /// always present in responses.
    #[serde(default)]
    #[schema(required = true, minimum = 0.0, maximum = 100.0)]
    pub canary_percent: f64,
    /// Share of live queries, 0 to 100, also run on the other model's index off the response
    /// path, to compare the two (shadow reads). Defaulted when decoding, so rows persisted
    /// before it existed still read; always present in responses.
    #[serde(default)]
    #[schema(required = true, minimum = 0.0, maximum = 100.0)]
    pub shadow_percent: f64,
    /// The evidence queries need before they switch at the threshold, and the migration
    /// before it completes; `None` lets the threshold alone decide. Defaulted when decoding.
    #[serde(default)]
    #[schema(required = true)]
    pub cutover_gate: Option<CutoverGate>,
    /// The most the backfill may cost, in the unit of the target's `price_per_million_tokens`:
    /// the migration pauses before a batch would take its cost past it; null for no budget.
    /// Defaulted when decoding.
    #[serde(default)]
    #[schema(required = true, exclusive_minimum = 0.0)]
    pub max_cost: Option<f64>,
    /// Keep the source model's vectors after the target becomes active; by default they are
    /// deleted in the background. Defaulted when decoding.
    #[serde(default)]
    #[schema(required = true)]
    pub retain_source_vectors: bool,
}

impl Default for BackfillConfig {
    fn default() -> Self {
        Self {
            batch_size: 100,
            max_concurrent: 4,
            dual_write: true,
            target_query_threshold: 0.8,
            rollback_window_secs: 86_400,
            canary_percent: 0.0,
            shadow_percent: 0.0,
            cutover_gate: None,
            max_cost: None,
            retain_source_vectors: false,
        }
    }
}

/// A config as a client sent it: every field optional, numbers not yet range-checked.
///
/// Integers are read as `i64` so that a negative `batch_size` is a 422 naming the field, not
/// a type error; a non-number is still a 400 from the JSON parser.
#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConfigPatch {
    /// 1 to 10000.
    #[serde(default, deserialize_with = "optional_integer")]
    #[schema(minimum = 1, maximum = 10000)]
    pub batch_size: Option<i64>,
    /// 1 to 64.
    #[serde(default, deserialize_with = "optional_integer")]
    #[schema(minimum = 1, maximum = 64)]
    pub max_concurrent: Option<i64>,
    pub dual_write: Option<bool>,
    /// 0.0 to 1.0 inclusive.
    #[schema(minimum = 0.0, maximum = 1.0)]
    pub target_query_threshold: Option<f64>,
    /// 0 to 315360000 (ten years).
    #[serde(default, deserialize_with = "optional_integer")]
    #[schema(minimum = 0, maximum = 315360000)]
    pub rollback_window_secs: Option<i64>,
    /// 0.0 to 100.0 inclusive: the share of queries with a `routing_key` that the target
    /// answers before the threshold.
    #[schema(minimum = 0.0, maximum = 100.0)]
    pub canary_percent: Option<f64>,
    /// 0.0 to 100.0 inclusive: the share of live queries also run on the other model's index
    /// to compare the two (`GET /v1/migrations/{id}/comparison`).
    #[schema(minimum = 0.0, maximum = 100.0)]
    pub shadow_percent: Option<f64>,
    /// A cutover gate: `{"min_samples", "min_overlap"}` and/or `{"min_recall_ratio"}`; null
    /// removes the gate.
    #[serde(default, deserialize_with = "nullable")]
    #[schema(schema_with = gate_patch_schema)]
    pub cutover_gate: Option<Option<GatePatch>>,
    /// A budget above 0 in the unit of the target model's `price_per_million_tokens` (refused
    /// for a target without a price); null removes it.
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<f64>, exclusive_minimum = 0.0)]
    pub max_cost: Option<Option<f64>>,
    /// Keep the source model's vectors after the target becomes active.
    pub retain_source_vectors: Option<bool>,
}

/// A cutover gate as a client sent it, numbers not yet range-checked.
#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatePatch {
    #[serde(default, deserialize_with = "optional_integer")]
    pub min_samples: Option<i64>,
    pub min_overlap: Option<f64>,
    pub min_recall_ratio: Option<f64>,
}

/// Most shadow samples a gate may ask for.
const MAX_GATE_SAMPLES: i64 = 1_000_000_000;
/// Largest `min_recall_ratio`: a target asked to recall ten times the source never passes.
const MAX_RECALL_RATIO: f64 = 10.0;

impl GatePatch {
    /// The gate, or the first of its values out of bounds; `min_samples` and `min_overlap`
    /// come together, and at least one condition is set.
    fn validate(&self) -> Result<CutoverGate, ConfigError> {
        let invalid = |message: &str| ConfigError {
            field: "cutover_gate",
            message: message.to_owned(),
        };
        let overlap = match (self.min_samples, self.min_overlap) {
            (Some(samples), Some(overlap)) => Some((
                in_range("cutover_gate.min_samples", samples, 1, MAX_GATE_SAMPLES)?,
                number_in("cutover_gate.min_overlap", overlap, 0.0, 1.0)?,
            )),
            (None, None) => None,
            _ => return Err(invalid("min_samples and min_overlap go together")),
        };
        let ratio = self
            .min_recall_ratio
            .map(|r| number_in("cutover_gate.min_recall_ratio", r, 0.0, MAX_RECALL_RATIO))
            .transpose()?;
        if overlap.is_none() && ratio.is_none() {
            return Err(invalid(
                "set min_samples with min_overlap, and/or min_recall_ratio",
            ));
        }
        Ok(CutoverGate {
            min_samples: overlap.map(|(samples, _)| u64::from(samples)),
            min_overlap: overlap.map(|(_, min)| min),
            min_recall_ratio: ratio,
        })
    }
}

/// `deserialize_with` for a field where absent (`None`, by `default`) differs from `null`
/// (`Some(None)`).
fn nullable<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    deserializer: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(deserializer).map(Some)
}

/// The schema of `cutover_gate` in a patch: the overlap pair (optionally with the ratio), the
/// ratio alone, or null — exactly what `GatePatch::validate` accepts, bounds included.
fn gate_patch_schema() -> OneOfBuilder {
    let number = |min: f64, max: f64| {
        ObjectBuilder::new()
            .schema_type(Type::Number)
            .minimum(Some(min))
            .maximum(Some(max))
            .build()
    };
    let samples = ObjectBuilder::new()
        .schema_type(Type::Integer)
        .minimum(Some(1.0))
        .maximum(Some(MAX_GATE_SAMPLES as f64))
        .build();
    let ratio = || number(0.0, MAX_RECALL_RATIO);
    let with_overlap = ObjectBuilder::new()
        .schema_type(Type::Object)
        .property("min_samples", samples)
        .property("min_overlap", number(0.0, 1.0))
        .property("min_recall_ratio", ratio())
        .required("min_samples")
        .required("min_overlap")
        .additional_properties(Some(AdditionalProperties::FreeForm(false)))
        .build();
    let ratio_alone = ObjectBuilder::new()
        .schema_type(Type::Object)
        .property("min_recall_ratio", ratio())
        .required("min_recall_ratio")
        .additional_properties(Some(AdditionalProperties::FreeForm(false)))
        .build();
    let null = ObjectBuilder::new().schema_type(Type::Null).build();
    OneOfBuilder::new()
        .description(Some(
            "A cutover gate: min_samples with min_overlap, and/or min_recall_ratio; null \
             removes it.",
        ))
        .item(with_overlap)
        .item(ratio_alone)
        .item(null)
}

/// `deserialize_with` for an optional integer field. JSON Schema counts `5.0` as the integer
/// 5, so it is read as one; `5.5` is not an integer and fails like any wrong type. An integer
/// beyond `i64` saturates, for range validation to refuse it by name.
pub fn optional_integer<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<i64>, D::Error> {
    let Some(number) = Option::<serde_json::Number>::deserialize(deserializer)? else {
        return Ok(None);
    };
    if let Some(integer) = number.as_i64() {
        return Ok(Some(integer));
    }
    match number.as_f64() {
        // `as` saturates at the ends of `i64`, and the value has no fraction to lose.
        Some(value) if value.is_finite() && value.fract() == 0.0 => Ok(Some(value as i64)),
        _ => Err(serde::de::Error::custom(format!(
            "invalid type: {number}, expected an integer"
        ))),
    }
}

/// A config value outside its limits; `field` names the offending JSON field.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ConfigError {
    pub field: &'static str,
    pub message: String,
}

impl ConfigPatch {
    /// Applies the present fields over `base` and validates the result as a whole, so a
    /// rejected patch leaves nothing half-applied.
    pub fn apply_to(&self, base: BackfillConfig) -> Result<BackfillConfig, ConfigError> {
        let mut config = base;
        if let Some(v) = self.batch_size {
            config.batch_size = in_range("batch_size", v, 1, MAX_BATCH_SIZE)?;
        }
        if let Some(v) = self.max_concurrent {
            config.max_concurrent = in_range("max_concurrent", v, 1, MAX_CONCURRENT)?;
        }
        if let Some(v) = self.dual_write {
            config.dual_write = v;
        }
        if let Some(v) = self.target_query_threshold {
            config.target_query_threshold = number_in("target_query_threshold", v, 0.0, 1.0)?;
        }
        if let Some(v) = self.rollback_window_secs {
            config.rollback_window_secs =
                in_range("rollback_window_secs", v, 0, MAX_ROLLBACK_WINDOW_SECS)?.into();
        }
        if let Some(v) = self.canary_percent {
            config.canary_percent = number_in("canary_percent", v, 0.0, 100.0)?;
        }
        if let Some(v) = self.shadow_percent {
            config.shadow_percent = number_in("shadow_percent", v, 0.0, 100.0)?;
        }
        if let Some(v) = self.retain_source_vectors {
            config.retain_source_vectors = v;
        }
        if let Some(gate) = self.cutover_gate {
            config.cutover_gate = gate.map(|g| g.validate()).transpose()?;
        }
        if let Some(max_cost) = self.max_cost {
            config.max_cost = max_cost.map(positive_cost).transpose()?;
        }
        Ok(config)
    }

    /// Whether the patch sets a budget (not merely removes one): only a target with a price
    /// can keep to one.
    pub fn sets_max_cost(&self) -> bool {
        matches!(self.max_cost, Some(Some(_)))
    }
}

/// `max_cost` when it is a finite number above 0.
fn positive_cost(value: f64) -> Result<f64, ConfigError> {
    if value > 0.0 && value.is_finite() {
        Ok(value)
    } else {
        Err(ConfigError {
            field: "max_cost",
            message: format!("must be a number above 0, got {value}"),
        })
    }
}

fn in_range(field: &'static str, value: i64, min: i64, max: i64) -> Result<u32, ConfigError> {
    if (min..=max).contains(&value) {
        Ok(value as u32)
    } else {
        Err(ConfigError {
            field,
            message: format!("must be between {min} and {max}, got {value}"),
        })
    }
}

/// `value` when it lies in [min, max]; NaN and the infinities never do.
fn number_in(field: &'static str, value: f64, min: f64, max: f64) -> Result<f64, ConfigError> {
    if (min..=max).contains(&value) {
        Ok(value)
    } else {
        Err(ConfigError {
            field,
            message: format!("must be a number between {min:?} and {max:?}, got {value}"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn patch(json: &str) -> ConfigPatch {
        serde_json::from_str(json).expect("a well-formed patch")
    }

    #[test]
    fn defaults_are_100_4_true_0_8_86400() {
        let d = BackfillConfig::default();
        assert_eq!(d.batch_size, 100);
        assert_eq!(d.max_concurrent, 4);
        assert!(d.dual_write);
        assert_eq!(d.target_query_threshold, 0.8);
        assert_eq!(d.rollback_window_secs, 86_400);
    }

    #[test]
    fn an_empty_patch_yields_the_base() {
        let base = BackfillConfig::default();
        assert_eq!(patch("{}").apply_to(base), Ok(base));
    }

    /// One case per limit of API.md ("Limits"): each bound and one step past it.
    #[test]
    fn each_limit_is_inclusive_and_the_error_names_the_field() {
        let base = BackfillConfig::default();
        let with = |change: fn(&mut BackfillConfig)| {
            let mut config = base;
            change(&mut config);
            config
        };
        let accepted = [
            (r#"{"batch_size": 1}"#, with(|c| c.batch_size = 1)),
            (r#"{"batch_size": 10000}"#, with(|c| c.batch_size = 10_000)),
            (r#"{"max_concurrent": 1}"#, with(|c| c.max_concurrent = 1)),
            (r#"{"max_concurrent": 64}"#, with(|c| c.max_concurrent = 64)),
            (r#"{"dual_write": false}"#, with(|c| c.dual_write = false)),
            (
                r#"{"target_query_threshold": 0.0}"#,
                with(|c| c.target_query_threshold = 0.0),
            ),
            (
                r#"{"target_query_threshold": 1.0}"#,
                with(|c| c.target_query_threshold = 1.0),
            ),
            (
                r#"{"target_query_threshold": 0.5}"#,
                with(|c| c.target_query_threshold = 0.5),
            ),
            (
                r#"{"rollback_window_secs": 0}"#,
                with(|c| c.rollback_window_secs = 0),
            ),
            (
                r#"{"rollback_window_secs": 3600}"#,
                with(|c| c.rollback_window_secs = 3600),
            ),
            (
                r#"{"rollback_window_secs": 315360000}"#,
                with(|c| c.rollback_window_secs = 315_360_000),
            ),
            (r#"{"canary_percent": 0}"#, with(|c| c.canary_percent = 0.0)),
            (
                r#"{"canary_percent": 0.5}"#,
                with(|c| c.canary_percent = 0.5),
            ),
            (
                r#"{"canary_percent": 100}"#,
                with(|c| c.canary_percent = 100.0),
            ),
            (r#"{"shadow_percent": 0}"#, with(|c| c.shadow_percent = 0.0)),
            (
                r#"{"shadow_percent": 2.5}"#,
                with(|c| c.shadow_percent = 2.5),
            ),
            (
                r#"{"shadow_percent": 100}"#,
                with(|c| c.shadow_percent = 100.0),
            ),
        ];
        for (json, expected) in accepted {
            assert_eq!(patch(json).apply_to(base), Ok(expected), "{json}");
        }

        let rejected = [
            (r#"{"batch_size": 0}"#, "batch_size"),
            (r#"{"batch_size": 10001}"#, "batch_size"),
            (r#"{"batch_size": -1}"#, "batch_size"),
            // 2^32 + 1 would wrap to 1 if it were narrowed before the range check.
            (r#"{"batch_size": 4294967297}"#, "batch_size"),
            (r#"{"max_concurrent": 0}"#, "max_concurrent"),
            (r#"{"max_concurrent": 65}"#, "max_concurrent"),
            (
                r#"{"target_query_threshold": -0.01}"#,
                "target_query_threshold",
            ),
            (
                r#"{"target_query_threshold": 1.01}"#,
                "target_query_threshold",
            ),
            (r#"{"rollback_window_secs": -1}"#, "rollback_window_secs"),
            (
                r#"{"rollback_window_secs": 315360001}"#,
                "rollback_window_secs",
            ),
            (r#"{"canary_percent": -0.01}"#, "canary_percent"),
            (r#"{"canary_percent": 100.01}"#, "canary_percent"),
            (r#"{"canary_percent": 101}"#, "canary_percent"),
            (r#"{"shadow_percent": -1}"#, "shadow_percent"),
            (r#"{"shadow_percent": 100.01}"#, "shadow_percent"),
            (r#"{"shadow_percent": 101}"#, "shadow_percent"),
        ];
        for (json, field) in rejected {
            let err = patch(json).apply_to(base).expect_err(json);
            assert_eq!(err.field, field, "{json}");
            assert!(err.to_string().starts_with(&format!("{field}: ")), "{err}");
        }
    }

    #[test]
    fn a_nan_or_infinite_threshold_or_percentage_is_rejected() {
        // JSON has no NaN literal, so these only arrive through code paths that build patches
        // (or as a number too large for an f64, which reads as infinite).
        for value in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            let threshold = ConfigPatch {
                target_query_threshold: Some(value),
                ..ConfigPatch::default()
            };
            let percent = ConfigPatch {
                canary_percent: Some(value),
                ..ConfigPatch::default()
            };
            let shadow = ConfigPatch {
                shadow_percent: Some(value),
                ..ConfigPatch::default()
            };
            for (p, field) in [
                (threshold, "target_query_threshold"),
                (percent, "canary_percent"),
                (shadow, "shadow_percent"),
            ] {
                let err = p
                    .apply_to(BackfillConfig::default())
                    .expect_err("a non-finite number");
                assert_eq!(err.field, field);
            }
        }
    }

    #[test]
    fn a_patch_with_one_bad_field_changes_nothing() {
        let base = BackfillConfig {
            batch_size: 7,
            ..BackfillConfig::default()
        };
        let p = ConfigPatch {
            batch_size: Some(500),
            max_concurrent: Some(8),
            dual_write: Some(false),
            target_query_threshold: Some(0.5),
            rollback_window_secs: Some(-5),
            canary_percent: Some(20.0),
            shadow_percent: Some(5.0),
            cutover_gate: Some(None),
            max_cost: Some(Some(3.0)),
            retain_source_vectors: Some(true),
        };
        let err = p
            .apply_to(base)
            .expect_err("rollback_window_secs is negative");
        assert_eq!(err.field, "rollback_window_secs");
        assert_eq!(base.batch_size, 7);
        assert_eq!(
            base,
            BackfillConfig {
                batch_size: 7,
                ..BackfillConfig::default()
            }
        );
    }

    #[test]
    fn a_valid_patch_changes_only_the_fields_it_names() {
        let base = BackfillConfig::default();
        let config = patch(r#"{"max_concurrent": 8, "target_query_threshold": 0.9}"#)
            .apply_to(base)
            .unwrap();
        assert_eq!(
            config,
            BackfillConfig {
                max_concurrent: 8,
                target_query_threshold: 0.9,
                ..base
            }
        );
    }

    #[test]
    fn an_unknown_field_is_refused_by_the_parser() {
        let err = serde_json::from_str::<ConfigPatch>(r#"{"batch_size": 5, "batch_sise": 6}"#)
            .expect_err("unknown field");
        assert!(err.to_string().contains("batch_sise"), "{err}");
    }

    #[test]
    fn a_value_of_the_wrong_type_is_a_parse_error_but_a_negative_number_is_not() {
        assert!(serde_json::from_str::<ConfigPatch>(r#"{"batch_size": "many"}"#).is_err());
        assert!(serde_json::from_str::<ConfigPatch>(r#"{"dual_write": 1}"#).is_err());
        assert_eq!(patch(r#"{"batch_size": -3}"#).batch_size, Some(-3));
    }

    #[test]
    fn a_gate_takes_the_overlap_pair_and_or_the_ratio_and_null_lifts_it() {
        let gated = patch(r#"{"cutover_gate": {"min_samples": 50, "min_overlap": 0.7}}"#)
            .apply_to(BackfillConfig::default())
            .expect("valid");
        let gate = gated.cutover_gate.expect("a gate");
        assert_eq!(
            (gate.min_samples, gate.min_overlap, gate.min_recall_ratio),
            (Some(50), Some(0.7), None)
        );
        let both = patch(
            r#"{"cutover_gate": {"min_samples": 1, "min_overlap": 0, "min_recall_ratio": 0.9}}"#,
        )
        .apply_to(gated)
        .expect("valid");
        assert_eq!(
            both.cutover_gate.and_then(|g| g.min_recall_ratio),
            Some(0.9)
        );
        let kept = patch(r#"{"batch_size": 5}"#).apply_to(both).expect("valid");
        assert_eq!(
            kept.cutover_gate, both.cutover_gate,
            "absent keeps the gate"
        );
        let lifted = patch(r#"{"cutover_gate": null}"#)
            .apply_to(kept)
            .expect("valid");
        assert_eq!(lifted.cutover_gate, None);
        for bad in [
            r#"{"cutover_gate": {}}"#,
            r#"{"cutover_gate": {"min_samples": 5}}"#,
            r#"{"cutover_gate": {"min_overlap": 0.5, "min_recall_ratio": 1}}"#,
            r#"{"cutover_gate": {"min_samples": 0, "min_overlap": 0.5}}"#,
            r#"{"cutover_gate": {"min_samples": 5, "min_overlap": -0.1}}"#,
            r#"{"cutover_gate": {"min_recall_ratio": 10.5}}"#,
        ] {
            let err = patch(bad).apply_to(gated).expect_err(bad);
            assert!(err.to_string().starts_with("cutover_gate"), "{bad}: {err}");
        }
    }

    #[test]
    fn a_budget_is_a_number_above_0_and_null_lifts_it() {
        let base = BackfillConfig::default();
        let budgeted = patch(r#"{"max_cost": 12.5}"#)
            .apply_to(base)
            .expect("valid");
        assert_eq!(budgeted.max_cost, Some(12.5));
        assert!(patch(r#"{"max_cost": 0.001}"#).sets_max_cost());
        let kept = patch(r#"{"batch_size": 5}"#)
            .apply_to(budgeted)
            .expect("valid");
        assert_eq!(kept.max_cost, Some(12.5), "absent keeps the budget");
        let lifted = patch(r#"{"max_cost": null}"#)
            .apply_to(kept)
            .expect("valid");
        assert_eq!(lifted.max_cost, None);
        assert!(!patch(r#"{"max_cost": null}"#).sets_max_cost());
        for bad in [r#"{"max_cost": 0}"#, r#"{"max_cost": -1}"#] {
            let err = patch(bad).apply_to(base).expect_err(bad);
            assert_eq!(err.field, "max_cost", "{bad}");
        }
        assert!(serde_json::from_str::<ConfigPatch>(r#"{"max_cost": "ten"}"#).is_err());
    }

    #[test]
    fn the_persisted_form_keeps_its_field_names() {
        let json = serde_json::to_value(BackfillConfig::default()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "batch_size": 100,
                "max_concurrent": 4,
                "cutover_gate": null,
                "dual_write": true,
                "retain_source_vectors": false,
                "target_query_threshold": 0.8,
                "rollback_window_secs": 86400,
                "canary_percent": 0.0,
                "shadow_percent": 0.0,
                "max_cost": null
            })
        );
        let back: BackfillConfig = serde_json::from_value(json).unwrap();
        assert_eq!(back, BackfillConfig::default());
    }

    #[test]
    fn a_config_persisted_before_the_canary_and_shadow_reads_reads_with_neither() {
        let json = serde_json::json!({
            "batch_size": 7,
            "max_concurrent": 4,
            "dual_write": true,
            "target_query_threshold": 0.8,
            "rollback_window_secs": 86400
        });
        let config: BackfillConfig = serde_json::from_value(json).unwrap();
        assert_eq!(
            config,
            BackfillConfig {
                batch_size: 7,
                ..BackfillConfig::default()
            }
        );
    }
}
