//! What a migration's backfill costs (issue 14): tokens turned into money at the target
//! model's `price_per_million_tokens`, the estimate of what is left, and the budget check that
//! pauses a migration before a batch would take its cost past `max_cost`.
//!
//! Tokens are counted per backfill batch: the provider's `usage` when its answer reports it,
//! else `estimate_tokens` of the batch's texts (characters / 4, rounded up). Only the target
//! model's backfill batches count; a dual write's tokens are the cost of serving a client's
//! write, not of the migration, and are left out. A cost is derived where it is reported
//! (tokens × price / 10⁶); only the tokens are persisted.
//!
//! The budget check reserves the estimated tokens of every batch in flight in this process: a
//! batch is claimed only when the cost committed so far, plus the reservations, plus its own
//! estimate stay within `max_cost`. So one process overshoots only by what its providers bill
//! beyond the estimates of its batches in flight; replicas sharing a database do not see each
//! other's reservations, so there the other replicas' batches in flight (at most
//! `max_concurrent − 1`) come on top.

use super::config::BackfillConfig;
use super::migration::Counts;
use super::progress::estimate_tokens;

/// The cost of `tokens` at `price_per_million_tokens`.
pub fn cost_of(tokens: f64, price_per_million_tokens: f64) -> f64 {
    tokens * price_per_million_tokens / 1e6
}

/// Estimated tokens of a batch of `texts`: `estimate_tokens` of each, summed. What a batch
/// counts when its provider reports no `usage`, and what the budget reserves for a batch.
pub fn estimate_batch_tokens<'a>(texts: impl IntoIterator<Item = &'a str>) -> u64 {
    texts
        .into_iter()
        .map(|text| estimate_tokens(text.chars().count() as u64))
        .sum()
}

/// Estimated tokens still to embed: the tokens per processed document so far times the
/// documents remaining when a batch has been counted, else the estimate of `remaining_chars`,
/// the characters of the texts still to embed (`None` when unknown: then so is the estimate).
/// Zero when nothing remains.
pub fn remaining_tokens(counts: Counts, remaining_chars: Option<u64>) -> Option<f64> {
    let remaining = counts.remaining();
    if remaining == 0 {
        return Some(0.0);
    }
    match tokens_per_document(counts) {
        Some(per_document) => Some(per_document * remaining as f64),
        None => remaining_chars.map(|chars| estimate_tokens(chars) as f64),
    }
}

/// Tokens per processed document so far; `None` before any batch has counted tokens.
/// Documents that received their target vector through a dual write count as processed
/// without tokens, so this leans low while dual writes cover many documents.
pub fn tokens_per_document(counts: Counts) -> Option<f64> {
    (counts.processed > 0 && counts.tokens_embedded > 0)
        .then(|| counts.tokens_embedded as f64 / counts.processed as f64)
}

/// A migration's spending limit: `max_cost` at the target's price.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Budget {
    pub max_cost: f64,
    pub price_per_million_tokens: f64,
}

impl Budget {
    /// The budget of `config` at `price_per_million_tokens`; `None` when either is unset.
    pub fn of(config: &BackfillConfig, price_per_million_tokens: Option<f64>) -> Option<Self> {
        Some(Self {
            max_cost: config.max_cost?,
            price_per_million_tokens: price_per_million_tokens?,
        })
    }

    /// Why a batch of `batch_tokens` (estimated) may not be claimed when `spent_tokens` are
    /// committed and `reserved_tokens` are held by the batches in flight: the pause reason,
    /// naming the budget; `None` while the cost stays within `max_cost`.
    pub fn refuses(
        &self,
        spent_tokens: u64,
        reserved_tokens: u64,
        batch_tokens: u64,
    ) -> Option<String> {
        let tokens = spent_tokens
            .saturating_add(reserved_tokens)
            .saturating_add(batch_tokens);
        let cost = cost_of(tokens as f64, self.price_per_million_tokens);
        (cost > self.max_cost).then(|| {
            format!(
                "budget: the next batch would bring the cost to {} over max_cost {}",
                money(cost),
                money(self.max_cost)
            )
        })
    }
}

/// A cost in words: six decimals, without trailing zeros.
fn money(cost: f64) -> String {
    let fixed = format!("{cost:.6}");
    fixed.trim_end_matches('0').trim_end_matches('.').to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(total: u64, processed: u64, skipped: u64, tokens_embedded: u64) -> Counts {
        Counts {
            total,
            processed,
            skipped,
            tokens_embedded,
            ..Counts::default()
        }
    }

    #[test]
    fn a_cost_is_tokens_times_the_price_per_million() {
        assert_eq!(cost_of(1_000_000.0, 0.02), 0.02);
        assert_eq!(cost_of(2_500.0, 4.0), 0.01);
        assert_eq!(cost_of(0.0, 4.0), 0.0);
        assert_eq!(cost_of(123.0, 0.0), 0.0);
    }

    #[test]
    fn a_batch_is_estimated_text_by_text_in_characters() {
        // 1, 2 (rounded up), 0 and 1 (characters, not bytes).
        assert_eq!(estimate_batch_tokens(["abcd", "abcde", "", "éééé"]), 4);
        assert_eq!(estimate_batch_tokens([]), 0);
    }

    #[test]
    fn the_remaining_tokens_come_from_the_sample_else_from_the_texts() {
        // 10 processed for 500 tokens: 50 per document, 30 remain.
        assert_eq!(remaining_tokens(counts(40, 10, 0, 500), None), Some(1500.0));
        assert_eq!(
            remaining_tokens(counts(40, 10, 0, 500), Some(4)),
            Some(1500.0)
        );
        // No tokens counted yet: the characters left, at four a token, rounded up.
        assert_eq!(
            remaining_tokens(counts(40, 0, 0, 0), Some(401)),
            Some(101.0)
        );
        assert_eq!(
            remaining_tokens(counts(40, 5, 0, 0), Some(400)),
            Some(100.0)
        );
        assert_eq!(remaining_tokens(counts(40, 0, 0, 0), None), None);
        // Nothing left: nothing to estimate.
        assert_eq!(remaining_tokens(counts(40, 38, 2, 500), None), Some(0.0));
    }

    fn budget(max_cost: f64, price: f64) -> Budget {
        Budget {
            max_cost,
            price_per_million_tokens: price,
        }
    }

    #[test]
    fn a_budget_needs_both_a_max_cost_and_a_price() {
        let with_max = BackfillConfig {
            max_cost: Some(2.0),
            ..BackfillConfig::default()
        };
        assert_eq!(Budget::of(&with_max, Some(1.0)), Some(budget(2.0, 1.0)));
        assert_eq!(Budget::of(&with_max, None), None);
        assert_eq!(Budget::of(&BackfillConfig::default(), Some(1.0)), None);
    }

    /// (spent, reserved, batch) tokens at 1 per million against max_cost 0.001 (1000 tokens).
    #[test]
    fn a_batch_is_refused_only_when_it_would_exceed_the_budget() {
        let b = budget(0.001, 1.0);
        for (spent, reserved, batch) in [(0, 0, 1000), (500, 250, 250), (1000, 0, 0)] {
            assert_eq!(
                b.refuses(spent, reserved, batch),
                None,
                "{spent} {reserved} {batch}"
            );
        }
        for (spent, reserved, batch) in [(0, 0, 1001), (500, 251, 250), (1001, 0, 0)] {
            assert!(
                b.refuses(spent, reserved, batch).is_some(),
                "{spent} {reserved} {batch}"
            );
        }
        assert_eq!(
            b.refuses(u64::MAX, u64::MAX, 1)
                .map(|r| r.starts_with("budget: ")),
            Some(true)
        );
    }

    #[test]
    fn the_reason_names_the_budget_and_both_costs() {
        let reason = budget(12.0, 1_000_000.0).refuses(12, 0, 1).expect("over");
        assert_eq!(
            reason,
            "budget: the next batch would bring the cost to 13 over max_cost 12"
        );
        let small = budget(0.0012, 2.0).refuses(600, 0, 100).expect("over");
        assert_eq!(
            small,
            "budget: the next batch would bring the cost to 0.0014 over max_cost 0.0012"
        );
    }
}
