//! What a backfill batch's commit does with each item, the same on every backend: an embedded
//! document whose claim still holds it at the embedded version gets its target vector and
//! counts as processed; a skipped one whose claim still holds it goes to the skip list. Each
//! backend supplies the three operations on its own transaction ([`ClaimedQueue`]); the
//! counts come from `domain::queue`.

use async_trait::async_trait;

use super::{BatchItem, BatchReceipt, StoreError};
use crate::domain::QueueChange;

/// A backend's transaction, as one claim's batch commit sees it.
#[async_trait]
pub(crate) trait ClaimedQueue: Send {
    /// Takes the document off the queue if the claim still holds it (its lease unexpired) and,
    /// with a `version`, the document is still at it — the compare-and-set of invariant 3.
    /// Whether its latest attempt had failed, or `None` when nothing was taken.
    async fn dequeue_claimed(
        &mut self,
        doc_id: &str,
        version: Option<u64>,
    ) -> Result<Option<bool>, StoreError>;
    /// Stores the claim's target-model vector of the document at `version`.
    async fn write_target_vector(
        &mut self,
        doc_id: &str,
        version: u64,
        vector: &[f32],
    ) -> Result<(), StoreError>;
    /// Lists the document as skipped, with the provider's reason.
    async fn list_skip(&mut self, doc_id: &str, reason: &str) -> Result<(), StoreError>;
}

/// Commits `items` through `queue`: what was written and how the counts move, `tokens` (what
/// embedding them was billed) included.
pub(crate) async fn commit_items<Q: ClaimedQueue>(
    queue: &mut Q,
    items: &[BatchItem],
    tokens: u64,
) -> Result<BatchReceipt, StoreError> {
    let mut receipt = BatchReceipt::default();
    receipt.delta.tokens_embedded = tokens;
    for item in items {
        let change = match item {
            BatchItem::Embedded {
                id,
                version,
                vector,
                truncated,
            } => {
                let Some(had_failed) = queue.dequeue_claimed(id, Some(*version)).await? else {
                    continue;
                };
                queue.write_target_vector(id, *version, vector).await?;
                receipt.written.push((id.clone(), *version));
                QueueChange::Embedded {
                    had_failed,
                    truncated: *truncated,
                }
            }
            BatchItem::Skipped { id, reason } => {
                let Some(had_failed) = queue.dequeue_claimed(id, None).await? else {
                    continue;
                };
                queue.list_skip(id, reason).await?;
                QueueChange::Skipped { had_failed }
            }
        };
        receipt.delta = receipt.delta.then(change.delta());
    }
    Ok(receipt)
}
