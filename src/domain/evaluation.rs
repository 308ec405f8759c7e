//! Labelled evaluation (`POST /v1/migrations/{id}/evaluate`): how well each model ranks the
//! documents a person marked relevant, by recall@k, MRR and nDCG@k.
//!
//! Both models are judged on the same ground: only documents that have vectors in both count,
//! so a target that has not yet embedded half the corpus is not blamed (or praised) for what
//! it cannot see. A relevant id outside that ground is excluded from its query and counted; a
//! query left with no relevant id is not scored.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// One model's scores over the scored queries, each the mean of the per-query values.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Scores {
    /// The share of each query's relevant documents found in its top k.
    pub recall: f64,
    /// The reciprocal rank of each query's first relevant document in its top k (0 if none).
    pub mrr: f64,
    /// Discounted cumulative gain of the top k with binary relevance, over the ideal ranking's.
    pub ndcg: f64,
}

/// The scores of one ranking against one query's relevant set.
pub fn score_one(ranked: &[String], relevant: &HashSet<String>, k: usize) -> Scores {
    if relevant.is_empty() {
        return Scores::default();
    }
    let top = &ranked[..ranked.len().min(k)];
    let hits: Vec<usize> = top
        .iter()
        .enumerate()
        .filter(|(_, id)| relevant.contains(*id))
        .map(|(rank, _)| rank)
        .collect();
    let dcg: f64 = hits.iter().map(|&rank| gain_at(rank)).sum();
    let ideal: f64 = (0..relevant.len().min(k)).map(gain_at).sum();
    Scores {
        recall: hits.len() as f64 / relevant.len() as f64,
        mrr: hits.first().map_or(0.0, |&rank| 1.0 / (rank + 1) as f64),
        ndcg: dcg / ideal,
    }
}

/// The gain of a relevant document at 0-based `rank`: 1 / log2(rank + 2).
fn gain_at(rank: usize) -> f64 {
    1.0 / ((rank + 2) as f64).log2()
}

/// The mean of `scores` field by field; zeros for none.
pub fn mean(scores: &[Scores]) -> Scores {
    if scores.is_empty() {
        return Scores::default();
    }
    let n = scores.len() as f64;
    let sum = |field: fn(&Scores) -> f64| scores.iter().map(field).sum::<f64>() / n;
    Scores {
        recall: sum(|s| s.recall),
        mrr: sum(|s| s.mrr),
        ndcg: sum(|s| s.ndcg),
    }
}

/// One labelled query as a client sent it.
#[derive(Debug, Clone, PartialEq)]
pub struct LabelledQuery {
    pub text: String,
    pub relevant_ids: Vec<String>,
}

/// A query's relevant ids split by whether both models can be judged on them.
#[derive(Debug, Clone, PartialEq)]
pub struct Judged {
    /// The relevant ids that have vectors in both models.
    pub relevant: HashSet<String>,
    /// How many relevant ids (counted once each) lack a vector in either model.
    pub excluded: usize,
}

/// Splits `relevant_ids` by `in_both` (which ids have vectors in both models); repeated ids
/// count once.
pub fn judge(relevant_ids: &[String], in_both: &HashSet<String>) -> Judged {
    let unique: HashSet<&String> = relevant_ids.iter().collect();
    let relevant: HashSet<String> = unique
        .iter()
        .filter(|id| in_both.contains(**id))
        .map(|id| (*id).clone())
        .collect();
    Judged {
        excluded: unique.len() - relevant.len(),
        relevant,
    }
}

/// One model's side of an evaluation: its [`Scores`] beside its id. (Not `#[serde(flatten)]`:
/// with serde_json's `arbitrary_precision`, a flattened f64 does not read back.)
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ModelScores {
    pub model: String,
    pub recall: f64,
    pub mrr: f64,
    pub ndcg: f64,
}

impl ModelScores {
    /// `scores` of `model`.
    pub fn new(model: &str, scores: Scores) -> Self {
        Self {
            model: model.to_owned(),
            recall: scores.recall,
            mrr: scores.mrr,
            ndcg: scores.ndcg,
        }
    }
}

/// The answer of an evaluation, kept with the migration (the last one) for the cutover gate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Evaluation {
    pub at: DateTime<Utc>,
    pub k: usize,
    /// The queries scored: those with at least one relevant id that both models can see.
    pub queries: usize,
    /// Relevant ids left out for lacking a vector in either model, over all queries.
    pub excluded_relevant: usize,
    pub source: ModelScores,
    pub target: ModelScores,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    fn set(list: &[&str]) -> HashSet<String> {
        ids(list).into_iter().collect()
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn a_ranking_is_scored_by_hand() {
        // Relevant: a, b, c. Top 4: x a y b → hits at ranks 2 and 4.
        let scores = score_one(&ids(&["x", "a", "y", "b", "c"]), &set(&["a", "b", "c"]), 4);
        assert!(close(scores.recall, 2.0 / 3.0));
        assert!(close(scores.mrr, 0.5));
        let dcg = 1.0 / 3f64.log2() + 1.0 / 5f64.log2();
        let ideal = 1.0 + 1.0 / 3f64.log2() + 1.0 / 4f64.log2();
        assert!(close(scores.ndcg, dcg / ideal), "{scores:?}");
    }

    #[test]
    fn a_perfect_ranking_scores_one_and_a_miss_zero() {
        let perfect = score_one(&ids(&["a", "b", "z"]), &set(&["a", "b"]), 3);
        assert_eq!(
            perfect,
            Scores {
                recall: 1.0,
                mrr: 1.0,
                ndcg: 1.0
            }
        );
        let miss = score_one(&ids(&["x", "y"]), &set(&["a"]), 2);
        assert_eq!(miss, Scores::default());
    }

    #[test]
    fn only_the_top_k_count() {
        let scores = score_one(&ids(&["x", "y", "a"]), &set(&["a"]), 2);
        assert_eq!(scores, Scores::default());
    }

    #[test]
    fn relevant_ids_outside_both_models_are_excluded_once() {
        let judged = judge(&ids(&["a", "b", "b", "c"]), &set(&["a", "c", "d"]));
        assert_eq!(judged.relevant, set(&["a", "c"]));
        assert_eq!(judged.excluded, 1);
    }

    #[test]
    fn an_evaluation_reads_back_as_it_was_written() {
        let evaluation = Evaluation {
            at: Utc::now(),
            k: 10,
            queries: 3,
            excluded_relevant: 1,
            source: ModelScores::new(
                "hash-v1",
                Scores {
                    recall: 0.5,
                    mrr: 1.0 / 3.0,
                    ndcg: 0.1,
                },
            ),
            target: ModelScores::new("hash-v2", Scores::default()),
        };
        let json = serde_json::to_string(&evaluation).expect("serializes");
        let read: Evaluation = serde_json::from_str(&json).expect("reads back");
        assert_eq!(read, evaluation);
    }

    #[test]
    fn the_mean_is_taken_field_by_field() {
        let mean = mean(&[
            Scores {
                recall: 1.0,
                mrr: 0.5,
                ndcg: 0.25,
            },
            Scores {
                recall: 0.0,
                mrr: 0.5,
                ndcg: 0.75,
            },
        ]);
        assert_eq!(
            mean,
            Scores {
                recall: 0.5,
                mrr: 0.5,
                ndcg: 0.5
            }
        );
        assert_eq!(super::mean(&[]), Scores::default());
    }
}
