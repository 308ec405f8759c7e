//! Runs a labelled evaluation of a migration's two models (`POST /v1/migrations/{id}/evaluate`)
//! and keeps it with the migration: which relevant ids both models can be judged on, each
//! query ranked by each model among the documents both have, and the scores of
//! `domain::evaluation`.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use futures_util::{StreamExt, TryStreamExt, stream};

use crate::documents::{Documents, ServiceError};
use crate::domain::evaluation::{self, LabelledQuery, ModelScores, Scores};
use crate::domain::{Evaluation, Migration};
use crate::store::Store;

/// Documents looked up at once to learn which relevant ids have vectors in both models.
const LOOKUPS_IN_FLIGHT: usize = 16;

/// Scores `migration`'s source and target models on `queries` at `k`, as of `now`.
pub async fn evaluate(
    documents: &Documents,
    store: &dyn Store,
    migration: &Migration,
    queries: &[LabelledQuery],
    k: usize,
    now: DateTime<Utc>,
) -> Result<Evaluation, ServiceError> {
    let (source, target) = (&migration.source_model, &migration.target_model);
    let in_both = ids_in_both(store, source, target, queries).await?;
    let mut excluded_relevant = 0;
    let (mut on_source, mut on_target) = (Vec::new(), Vec::new());
    for query in queries {
        let judged = evaluation::judge(&query.relevant_ids, &in_both);
        excluded_relevant += judged.excluded;
        if judged.relevant.is_empty() {
            continue;
        }
        on_source.push(score(documents, source, target, &query.text, &judged.relevant, k).await?);
        on_target.push(score(documents, target, source, &query.text, &judged.relevant, k).await?);
    }
    Ok(Evaluation {
        at: now,
        k,
        queries: on_source.len(),
        excluded_relevant,
        source: side(source, &on_source),
        target: side(target, &on_target),
    })
}

/// One model's scores on one query: its ranking among the documents both models have.
async fn score(
    documents: &Documents,
    model: &str,
    other: &str,
    text: &str,
    relevant: &HashSet<String>,
    k: usize,
) -> Result<Scores, ServiceError> {
    let ranked = documents.rank_in_both(model, other, text, k).await?;
    Ok(evaluation::score_one(&ranked, relevant, k))
}

fn side(model: &str, scores: &[Scores]) -> ModelScores {
    ModelScores::new(model, evaluation::mean(scores))
}

/// The relevant ids of `queries` that have a vector of both `source` and `target`.
async fn ids_in_both(
    store: &dyn Store,
    source: &str,
    target: &str,
    queries: &[LabelledQuery],
) -> Result<HashSet<String>, ServiceError> {
    let ids: HashSet<String> = queries
        .iter()
        .flat_map(|q| q.relevant_ids.iter().cloned())
        .collect();
    let found: Vec<Option<String>> = stream::iter(ids)
        .map(|id| async move {
            let document = store.get_document(&id).await?;
            let in_both = document.is_some_and(|d| {
                let has = |model: &str| d.embeddings.iter().any(|e| e.model == model);
                has(source) && has(target)
            });
            Ok::<_, ServiceError>(in_both.then_some(id))
        })
        .buffer_unordered(LOOKUPS_IN_FLIGHT)
        .try_collect()
        .await?;
    Ok(found.into_iter().flatten().collect())
}
