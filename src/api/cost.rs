//! The cost side of `/v1/migrations` (issue 14): what progress and dry runs report of a
//! migration's spending, and the rule that a budget needs a priced target. The arithmetic is
//! `domain::cost`'s; this module only gathers its inputs (the registry's price, and the
//! characters still to embed when no batch has counted tokens yet).

use super::AppState;
use super::error::ApiError;
use crate::domain::{Counts, Migration, cost, cost_of, remaining_tokens};
use crate::embed::ModelRegistry;

/// A migration's spending as progress reports it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spending {
    pub tokens_embedded: u64,
    /// `None` when the target has no price.
    pub cost_so_far: Option<f64>,
    /// `None` when the target has no price.
    pub cost_remaining_estimate: Option<f64>,
}

impl Spending {
    /// The spending of `counts` at `price` (per million tokens), with `remaining_chars` the
    /// characters still to embed when known (`cost::remaining_tokens`).
    pub fn new(counts: Counts, price: Option<f64>, remaining_chars: Option<u64>) -> Self {
        let remaining = remaining_tokens(counts, remaining_chars);
        Self {
            tokens_embedded: counts.tokens_embedded,
            cost_so_far: price.map(|p| cost_of(counts.tokens_embedded as f64, p)),
            cost_remaining_estimate: price.zip(remaining).map(|(p, tokens)| cost_of(tokens, p)),
        }
    }
}

/// The spending of `migration` now. Reads the characters still to embed from the store only
/// when the remaining estimate needs them: a priced target, documents remaining, and no batch
/// that counted tokens to extrapolate from.
pub async fn spending(state: &AppState, migration: &Migration) -> Result<Spending, ApiError> {
    let price = state.models.price(&migration.target_model);
    let counts = migration.counts;
    let needs_chars =
        price.is_some() && counts.remaining() > 0 && cost::tokens_per_document(counts).is_none();
    let remaining_chars = if needs_chars {
        let (_, chars) = state
            .store
            .backfill_estimate(&migration.target_model)
            .await?;
        Some(chars)
    } else {
        None
    };
    Ok(Spending::new(counts, price, remaining_chars))
}

/// Refuses a `max_cost` for a target without a price (422 `invalid-config`): its cost is
/// never counted, so the budget could never pause it.
pub fn check_budget_priced(models: &ModelRegistry, target_model: &str) -> Result<(), ApiError> {
    if models.price(target_model).is_some() {
        return Ok(());
    }
    Err(ApiError::InvalidConfig(format!(
        "max_cost: the target model {target_model} has no price_per_million_tokens in the \
         model registry, so its cost is not counted"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_a_price_only_the_tokens_are_reported() {
        let counts = Counts {
            total: 10,
            processed: 4,
            tokens_embedded: 400,
            ..Counts::default()
        };
        let priced = Spending::new(counts, Some(2.0), None);
        assert_eq!(priced.tokens_embedded, 400);
        assert_eq!(priced.cost_so_far, Some(0.0008));
        assert_eq!(priced.cost_remaining_estimate, Some(0.0012));
        let free = Spending::new(counts, None, Some(1000));
        assert_eq!(
            (free.cost_so_far, free.cost_remaining_estimate),
            (None, None)
        );
    }
}
