//! Shadow reads (API.md "Confidence", `shadow_percent`): which live queries are also run on the
//! other model's index, so that the two models can be compared (`comparison`).
//!
//! A migration shadows while both models are written and searchable: `in_progress` or
//! `paused`, and `completed` inside its rollback window. A query is shadowed when a uniform
//! draw in [0, 1), made per query by the caller (so this stays pure), falls under
//! `shadow_percent / 100`; the shadow runs on the model that did not answer it, whichever
//! side answered (source under the threshold, target past it, for a canary or in the window).

use super::migration::Migration;

/// The shadow share of a migration that shadows (routing carries it; API.md `shadow_percent`).
#[derive(Debug, Clone, PartialEq)]
pub struct ShadowShare {
    migration_id: String,
    source_model: String,
    target_model: String,
    percent: f64,
}

/// How one answered query is shadowed: on which model, and for which migration's comparison.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShadowPlan {
    pub migration_id: String,
    /// The model that did not answer, whose index the shadow searches.
    pub other_model: String,
    /// Whether the source answered (so the shadow is the target's side), or the target.
    pub answered_by_source: bool,
}

impl ShadowShare {
    /// The share of `migration`, whose routing is migrating or in its rollback window (the
    /// caller's routing table decides that); `None` when `shadow_percent` is 0.
    pub fn of(migration: &Migration) -> Option<Self> {
        (migration.config.shadow_percent > 0.0).then(|| Self {
            migration_id: migration.id.clone(),
            source_model: migration.source_model.clone(),
            target_model: migration.target_model.clone(),
            percent: migration.config.shadow_percent,
        })
    }

    /// The plan for a query `answered` by that model, given the query's uniform `draw` in
    /// [0, 1): `None` when the draw falls outside the share or `answered` is neither model.
    pub fn plan(&self, answered: &str, draw: f64) -> Option<ShadowPlan> {
        if draw >= self.percent / 100.0 {
            return None;
        }
        let (other, answered_by_source) = if answered == self.source_model {
            (&self.target_model, true)
        } else if answered == self.target_model {
            (&self.source_model, false)
        } else {
            return None;
        };
        Some(ShadowPlan {
            migration_id: self.migration_id.clone(),
            other_model: other.clone(),
            answered_by_source,
        })
    }
}

#[cfg(test)]
mod tests {
    use chrono::Utc;

    use super::*;
    use crate::domain::BackfillConfig;

    fn share(percent: f64) -> Option<ShadowShare> {
        let config = BackfillConfig {
            shadow_percent: percent,
            ..BackfillConfig::default()
        };
        let m = Migration::plan(
            "m".into(),
            "hash-v1".into(),
            "hash-v2".into(),
            config,
            Utc::now(),
        );
        ShadowShare::of(&m)
    }

    #[test]
    fn no_share_at_zero_percent() {
        assert_eq!(share(0.0), None);
    }

    #[test]
    fn the_other_model_shadows_whichever_side_answered() {
        let share = share(100.0).expect("a share");
        let on_target = share.plan("hash-v1", 0.0).expect("shadowed");
        assert_eq!(
            (on_target.other_model.as_str(), on_target.answered_by_source),
            ("hash-v2", true)
        );
        let on_source = share.plan("hash-v2", 0.999).expect("shadowed");
        assert_eq!(
            (on_source.other_model.as_str(), on_source.answered_by_source),
            ("hash-v1", false)
        );
        assert_eq!(on_source.migration_id, "m");
        assert_eq!(share.plan("hash-v3", 0.0), None, "neither model answered");
    }

    #[test]
    fn a_draw_is_shadowed_only_under_the_share() {
        let share = share(25.0).expect("a share");
        assert!(share.plan("hash-v1", 0.0).is_some());
        assert!(share.plan("hash-v1", 0.2499).is_some());
        assert!(share.plan("hash-v1", 0.25).is_none());
        assert!(share.plan("hash-v1", 0.9).is_none());
    }
}
