//! The comparison of a migration's two models on live queries (`GET
//! /v1/migrations/{id}/comparison`): overlap@k of each shadowed pair, its percentiles, the
//! latency of each side, and the queries on which the models agree least.
//!
//! Both sides of a pair are ranked exactly among the documents that have vectors in both
//! models, so overlap@k measures the models, not the target's coverage: a target that has
//! embedded a tenth of the corpus is not blamed for the rest. overlap@k is |A ∩ B| / max(|A|,
//! |B|) of the two top-k id lists; a pair whose lists are both empty (no document has both
//! vectors yet) tells nothing and is not a sample. `samples` and `mean_overlap` count every
//! sample ever recorded (kept on the migration as its `ShadowEvidence`, which the cutover gate
//! judges, so the gate and the comparison read the same numbers); the percentiles are taken
//! over the newest `SAMPLES_KEPT`, and are nearest-rank, so each is a value that was observed.
//! Everything kept is bounded: the newest `SAMPLES_KEPT` figures per migration, the
//! `WORST_KEPT` lowest-overlap queries with their texts cut to `TEXT_CHARS`.

use std::collections::HashSet;

use serde::Serialize;
use utoipa::ToSchema;

use super::gate::ShadowEvidence;

/// The k of overlap@k, whatever a shadowed query's own `top_k`: one k makes the samples of a
/// migration comparable (and is the `k` of the comparison).
pub const SHADOW_K: usize = 10;
/// The lowest-overlap queries kept per migration, with their texts and hits.
pub const WORST_KEPT: usize = 20;
/// The newest samples per migration whose figures are kept and summarised.
pub const SAMPLES_KEPT: usize = 10_000;
/// The characters of a query text kept with a worst query.
pub const TEXT_CHARS: usize = 1_000;

/// overlap@k of two top-k id lists: the share of the longer list found in the other; `None`
/// when both are empty.
pub fn overlap(a: &[String], b: &[String]) -> Option<f64> {
    let longer = a.len().max(b.len());
    if longer == 0 {
        return None;
    }
    let in_a: HashSet<&String> = a.iter().collect();
    let shared = b.iter().collect::<HashSet<_>>().intersection(&in_a).count();
    Some(shared as f64 / longer as f64)
}

/// `text` cut to its first `TEXT_CHARS` characters (never inside a character).
pub fn truncate(text: &str) -> String {
    match text.char_indices().nth(TEXT_CHARS) {
        Some((end, _)) => text[..end].to_owned(),
        None => text.to_owned(),
    }
}

/// The nearest-rank `p`-th percentile (0 < p ≤ 100) of `sorted` (ascending); `None` when empty.
pub fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len().max(1)) - 1).copied()
}

/// One shadowed query, measured: the overlap of the two models' rankings and the latency of
/// each side as a live query would see it (embedding and search).
///
/// Persisted (figures, and for the lowest overlaps the rest): renaming needs a data migration.
#[derive(Debug, Clone, PartialEq)]
pub struct ShadowSample {
    /// overlap@`SHADOW_K` of `source_hits` and `target_hits`.
    pub overlap: f64,
    /// Each side's latency in milliseconds: embedding and search, as a live query.
    pub source_ms: f64,
    pub target_ms: f64,
    /// The query text, already cut to `TEXT_CHARS`. Never logged.
    pub text: String,
    /// Each model's top `SHADOW_K` among the documents both models have, best first.
    pub source_hits: Vec<String>,
    pub target_hits: Vec<String>,
}

impl ShadowSample {
    /// The figures kept of every sample.
    pub fn figures(&self) -> SampleFigures {
        SampleFigures {
            overlap: self.overlap,
            source_ms: self.source_ms,
            target_ms: self.target_ms,
        }
    }

    /// What a worst query keeps of the sample.
    pub fn worst(&self) -> WorstQuery {
        WorstQuery {
            text: self.text.clone(),
            overlap: self.overlap,
            source_hits: self.source_hits.clone(),
            target_hits: self.target_hits.clone(),
        }
    }
}

/// The figures of one sample, kept for the newest `SAMPLES_KEPT`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SampleFigures {
    /// As in `ShadowSample`.
    pub overlap: f64,
    pub source_ms: f64,
    pub target_ms: f64,
}

/// One of the queries on which the models agree least (API.md comparison `worst`).
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct WorstQuery {
    /// The query text, cut to its first 1,000 characters.
    pub text: String,
    /// overlap@k of the two hit lists.
    pub overlap: f64,
    /// The source's top k among the documents both models have, best first.
    pub source_hits: Vec<String>,
    /// The target's top k among the documents both models have, best first.
    pub target_hits: Vec<String>,
}

/// The `n` samples of `samples` with the lowest overlap (the later among equals), in the order
/// of `samples`: a batch's candidates for the worst list, recorded in the order they were
/// taken so that a store's order of insertion stays the order of recency.
pub fn lowest(samples: &[ShadowSample], n: usize) -> Vec<&ShadowSample> {
    let mut ranked: Vec<usize> = (0..samples.len()).collect();
    ranked.sort_by(|&i, &j| {
        samples[i]
            .overlap
            .total_cmp(&samples[j].overlap)
            .then(j.cmp(&i))
    });
    ranked.truncate(n);
    ranked.sort_unstable();
    ranked.into_iter().map(|i| &samples[i]).collect()
}

/// What a store keeps of a migration's comparison.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ComparisonData {
    /// Every sample recorded: how many, and their mean overlap.
    pub evidence: ShadowEvidence,
    /// The newest `SAMPLES_KEPT` samples' figures, in any order.
    pub figures: Vec<SampleFigures>,
    /// Samples dropped because the shadow queue was full, on every replica.
    pub dropped: u64,
    /// The `WORST_KEPT` lowest overlaps, lowest first.
    pub worst: Vec<WorstQuery>,
}

/// The 50th and 99th percentile of one side's latency, in milliseconds; null without samples.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, ToSchema)]
pub struct Latency {
    /// The median.
    #[schema(required = true)]
    pub p50: Option<f64>,
    /// The 99th percentile.
    #[schema(required = true)]
    pub p99: Option<f64>,
}

impl Latency {
    fn of(mut values: Vec<f64>) -> Self {
        values.sort_by(f64::total_cmp);
        Self {
            p50: percentile(&values, 50.0),
            p99: percentile(&values, 99.0),
        }
    }
}

/// Response of `GET /v1/migrations/{id}/comparison` (API.md "Confidence"), and what the
/// cutover gate reads (`samples`, `mean_overlap`).
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Comparison {
    /// Every sample recorded, on every replica.
    pub samples: u64,
    /// Shadowed queries dropped because the shadow queue was full.
    pub dropped: u64,
    /// The k of overlap@k.
    pub k: usize,
    /// Mean overlap@k of every sample; null without samples.
    #[schema(required = true)]
    pub mean_overlap: Option<f64>,
    /// 10th percentile of overlap@k over the newest 10,000 samples; null without samples.
    #[schema(required = true)]
    pub p10_overlap: Option<f64>,
    /// The source's side (its answers, or its shadow reads), over the newest 10,000 samples.
    pub source_latency_ms: Latency,
    /// The target's side (its answers, or its shadow reads), over the newest 10,000 samples.
    pub target_latency_ms: Latency,
    /// At most 20 queries, lowest overlap first.
    pub worst: Vec<WorstQuery>,
}

impl Comparison {
    /// The summary of what a store kept.
    pub fn of(data: ComparisonData) -> Self {
        let figures = &data.figures;
        let mut overlaps: Vec<f64> = figures.iter().map(|f| f.overlap).collect();
        overlaps.sort_by(f64::total_cmp);
        Self {
            samples: data.evidence.samples,
            dropped: data.dropped,
            k: SHADOW_K,
            mean_overlap: data.evidence.mean_overlap,
            p10_overlap: percentile(&overlaps, 10.0),
            source_latency_ms: Latency::of(figures.iter().map(|f| f.source_ms).collect()),
            target_latency_ms: Latency::of(figures.iter().map(|f| f.target_ms).collect()),
            worst: data.worst,
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn ids(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    fn sample(overlap: f64, text: &str) -> ShadowSample {
        ShadowSample {
            overlap,
            source_ms: 1.0,
            target_ms: 2.0,
            text: text.to_owned(),
            source_hits: ids(&["a"]),
            target_hits: ids(&["b"]),
        }
    }

    #[test]
    fn overlap_is_the_shared_share_of_the_longer_list() {
        assert_eq!(overlap(&ids(&["a", "b"]), &ids(&["b", "a"])), Some(1.0));
        assert_eq!(
            overlap(&ids(&["a", "b", "c", "d"]), &ids(&["d", "x"])),
            Some(0.25)
        );
        assert_eq!(overlap(&ids(&["a"]), &ids(&["x"])), Some(0.0));
        assert_eq!(overlap(&ids(&[]), &ids(&["x"])), Some(0.0));
        assert_eq!(overlap(&ids(&[]), &ids(&[])), None, "not a sample");
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let sorted: Vec<f64> = (1..=10).map(f64::from).collect();
        assert_eq!(percentile(&sorted, 10.0), Some(1.0));
        assert_eq!(percentile(&sorted, 50.0), Some(5.0));
        assert_eq!(percentile(&sorted, 99.0), Some(10.0));
        assert_eq!(percentile(&[7.0], 10.0), Some(7.0));
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn a_long_text_is_cut_at_a_character_boundary() {
        let long = "é".repeat(TEXT_CHARS + 5);
        assert_eq!(truncate(&long).chars().count(), TEXT_CHARS);
        assert_eq!(truncate("short"), "short");
    }

    #[test]
    fn the_lowest_are_kept_in_their_order_and_later_ones_win_ties() {
        let samples = [
            sample(0.5, "first"),
            sample(0.0, "second"),
            sample(0.5, "third"),
            sample(0.9, "fourth"),
        ];
        let texts: Vec<&str> = lowest(&samples, 2)
            .iter()
            .map(|s| s.text.as_str())
            .collect();
        assert_eq!(texts, ["second", "third"]);
    }

    #[test]
    fn no_samples_give_nulls_and_the_constant_k() {
        let empty = Comparison::of(ComparisonData {
            dropped: 3,
            ..ComparisonData::default()
        });
        assert_eq!((empty.samples, empty.dropped, empty.k), (0, 3, SHADOW_K));
        assert_eq!((empty.mean_overlap, empty.p10_overlap), (None, None));
        assert_eq!(empty.source_latency_ms, Latency::default());
        let json = serde_json::to_value(&empty).expect("serializes");
        assert_eq!(
            json["target_latency_ms"],
            serde_json::json!({"p50": null, "p99": null})
        );
    }

    #[test]
    fn the_summary_counts_every_sample_and_takes_percentiles_of_the_newest() {
        let figures = (1..=10)
            .map(|i| SampleFigures {
                overlap: f64::from(i) / 10.0,
                source_ms: f64::from(i),
                target_ms: f64::from(100 - i),
            })
            .collect();
        let evidence = ShadowEvidence {
            samples: 12_000,
            mean_overlap: Some(0.5),
        };
        let summary = Comparison::of(ComparisonData {
            evidence,
            figures,
            ..ComparisonData::default()
        });
        assert_eq!(summary.samples, 12_000, "every sample counts");
        assert_eq!(summary.mean_overlap, Some(0.5), "over every sample");
        assert_eq!(summary.p10_overlap, Some(0.1));
        assert_eq!(
            summary.source_latency_ms,
            Latency {
                p50: Some(5.0),
                p99: Some(10.0)
            }
        );
        assert_eq!(
            summary.target_latency_ms,
            Latency {
                p50: Some(94.0),
                p99: Some(99.0)
            }
        );
    }

    proptest! {
        #[test]
        fn overlap_is_symmetric_and_within_0_and_1(
            a in proptest::collection::hash_set("[a-f]", 0..6),
            b in proptest::collection::hash_set("[a-f]", 0..6),
        ) {
            let (a, b): (Vec<String>, Vec<String>) = (a.into_iter().collect(), b.into_iter().collect());
            let forth = overlap(&a, &b);
            prop_assert_eq!(forth, overlap(&b, &a));
            if let Some(value) = forth {
                prop_assert!((0.0..=1.0).contains(&value));
                prop_assert_eq!(value == 1.0, a.len() == b.len() && a.iter().all(|id| b.contains(id)));
            }
        }

        #[test]
        fn percentiles_are_observed_values_in_order(
            mut values in proptest::collection::vec(0.0..1000.0f64, 1..50),
        ) {
            values.sort_by(f64::total_cmp);
            let p10 = percentile(&values, 10.0).unwrap();
            let p50 = percentile(&values, 50.0).unwrap();
            let p99 = percentile(&values, 99.0).unwrap();
            prop_assert!(values.contains(&p10) && values.contains(&p50) && values.contains(&p99));
            prop_assert!(p10 <= p50 && p50 <= p99);
        }

        #[test]
        fn the_lowest_are_no_higher_than_any_left_out(
            overlaps in proptest::collection::vec(0.0..=1.0f64, 0..40),
        ) {
            let samples: Vec<ShadowSample> = overlaps.iter().map(|&o| sample(o, "q")).collect();
            let kept = lowest(&samples, WORST_KEPT);
            prop_assert_eq!(kept.len(), samples.len().min(WORST_KEPT));
            let highest_kept = kept.iter().map(|s| s.overlap).fold(f64::MIN, f64::max);
            let left_out = samples.len() - kept.len();
            let mut sorted = overlaps.clone();
            sorted.sort_by(f64::total_cmp);
            if left_out > 0 {
                prop_assert!(highest_kept <= sorted[kept.len()]);
            }
        }
    }
}
