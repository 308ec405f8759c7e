//! What a write does to the backfill queue, and how each queue change moves the counts: the
//! one consistency rule storage must carry out atomically with every write (API.md: "Every
//! write during a migration leaves the target index consistent"), as a pure plan.
//!
//! A store reads the latest migration inside the write's own transaction and describes it as
//! a [`QueueView`]. For each document it asks [`plan`] what to do — nothing, queue it, take it
//! off the queue, or refuse the whole write before anything is written — carries that out in
//! the same transaction, and turns what the database reported into a [`QueueChange`], whose
//! [`delta`](QueueChange::delta) it adds to the migration's counts, still in that transaction.
//! Backfill batches, deletes, failed attempts and re-queued skips report their queue changes
//! the same way, so every backend counts alike (invariant 4) and only the SQL differs.
//!
//! | latest migration | write carries a target vector | write lacks one |
//! |---|---|---|
//! | none, or not backfilling and no window open | leave the queue alone | leave the queue alone |
//! | backfilling (in_progress, paused, failed) | dequeue | enqueue |
//! | completed, rollback window open | dequeue | enqueue (a repair) |
//! | completed, window closed | leave the queue alone | refuse the write |

use chrono::{DateTime, Utc};

use super::migration::{self, Counts, MigrationState};

/// The latest migration as a write's transaction reads it: all the queue rule needs to know.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueView {
    pub id: String,
    pub target_model: String,
    pub state: MigrationState,
    /// Completed and its rollback window still open (`Migration::window_open`): a write
    /// lacking the target vector is queued for repair rather than refused.
    pub window_open: bool,
}

impl QueueView {
    /// The view of a migration stored with `state`, `counts` and `window_ends_at`, at `now`:
    /// a completed migration's window stays open past its end while repairs are pending, as
    /// `Migration::window_open` says.
    pub fn new(
        id: String,
        target_model: String,
        state: MigrationState,
        counts: Counts,
        window_ends_at: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Self {
        Self {
            id,
            target_model,
            state,
            window_open: migration::window_open(state, &counts, window_ends_at, now),
        }
    }

    /// Whether a write's effect on the queue must be followed in its transaction: while the
    /// backfill runs, and in the rollback window, where the queue holds the repairs.
    pub fn follows_writes(&self) -> bool {
        self.state.is_backfilling() || self.window_open
    }

    /// Whether the migration has completed and its window closed: every live document must
    /// keep a current target vector from now on (invariant 2).
    fn closed(&self) -> bool {
        self.state == MigrationState::Completed && !self.window_open
    }
}

/// What a write does to the queue for one document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueStep {
    /// The queue does not follow writes now.
    Leave,
    /// The write lacks a current target vector: queue the document, once however often it is
    /// rewritten, so the backfill embeds its newest version.
    Enqueue,
    /// The write carries the target vector: a queued entry is satisfied.
    Dequeue,
}

/// A write refused before anything was written: the migration has completed, its window has
/// closed, and the document would be left without a target vector.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error(
    "migration {migration} has completed and document {document} lacks a {target_model} vector"
)]
pub struct Refused {
    pub migration: String,
    pub document: String,
    pub target_model: String,
}

/// What a write of `document` does to the queue of the latest migration (`None`: none ever
/// ran), given whether it carries a vector of that migration's target model; see the table in
/// the module doc. A store plans every document of a write before writing any, so a refusal
/// changes nothing.
pub fn plan(
    latest: Option<&QueueView>,
    document: &str,
    carries_target_vector: bool,
) -> Result<QueueStep, Refused> {
    let Some(latest) = latest else {
        return Ok(QueueStep::Leave);
    };
    if latest.closed() && !carries_target_vector {
        return Err(Refused {
            migration: latest.id.clone(),
            document: document.to_owned(),
            target_model: latest.target_model.clone(),
        });
    }
    Ok(match (latest.follows_writes(), carries_target_vector) {
        (false, _) => QueueStep::Leave,
        (true, true) => QueueStep::Dequeue,
        (true, false) => QueueStep::Enqueue,
    })
}

/// How one committed transaction changed the counts of a migration, so the in-memory copy can
/// follow the database without re-reading it. `total` is signed because a delete shrinks it,
/// `skipped` because re-queueing the skipped documents takes them off the skip list, `failed`
/// because a document whose attempt failed stops counting once it succeeds or leaves the queue.
/// `truncated` and `tokens_embedded` (a backfill batch's tokens), like `processed`, only grow.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CountsDelta {
    pub total: i64,
    pub processed: u64,
    pub skipped: i64,
    pub failed: i64,
    pub truncated: u64,
    pub tokens_embedded: u64,
}

impl CountsDelta {
    /// Whether the transaction changed nothing.
    pub fn is_zero(&self) -> bool {
        *self == Self::default()
    }

    /// The effect of this transaction followed by `next`.
    pub fn then(self, next: CountsDelta) -> CountsDelta {
        CountsDelta {
            total: self.total + next.total,
            processed: self.processed + next.processed,
            skipped: self.skipped + next.skipped,
            failed: self.failed + next.failed,
            truncated: self.truncated + next.truncated,
            tokens_embedded: self.tokens_embedded + next.tokens_embedded,
        }
    }

    /// `counts` after this delta.
    pub fn applied_to(&self, counts: Counts) -> Counts {
        Counts {
            total: counts.total.saturating_add_signed(self.total),
            processed: counts.processed + self.processed,
            skipped: counts.skipped.saturating_add_signed(self.skipped),
            failed: counts.failed.saturating_add_signed(self.failed),
            truncated: counts.truncated + self.truncated,
            tokens_embedded: counts.tokens_embedded + self.tokens_embedded,
        }
    }
}

/// A change to one document's queue entry, as the database reported it: what a store turns
/// into counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueChange {
    /// A write lacking a current target vector queued the document; `newly` unless it was
    /// queued already.
    Queued { newly: bool },
    /// A target vector, from a dual write or a backfill batch, took the document off the
    /// queue; `truncated` when the target embedded its text truncated.
    Embedded { had_failed: bool, truncated: bool },
    /// The provider rejected the document for good: off the queue, onto the skip list.
    Skipped { had_failed: bool },
    /// The document was deleted while queued: it has nothing left to embed.
    Deleted { had_failed: bool },
    /// An attempt to embed the queued document failed; `newly` unless it had failed before.
    Failed { newly: bool },
    /// Re-queueing the skip list: `listed` skips cleared, `requeued` of them back on the
    /// queue, `current` of them not, as they hold a current target vector by now (a dual
    /// write gave it): those count as processed, as a dual write before the batch does; the
    /// others were deleted since.
    SkipsRequeued {
        listed: u64,
        requeued: u64,
        current: u64,
    },
}

impl QueueChange {
    /// How the change moves the migration's counts.
    pub fn delta(self) -> CountsDelta {
        let none = CountsDelta::default();
        let unfailed = |had_failed: bool| -i64::from(had_failed);
        match self {
            Self::Queued { newly } => CountsDelta {
                total: i64::from(newly),
                ..none
            },
            Self::Embedded {
                had_failed,
                truncated,
            } => CountsDelta {
                processed: 1,
                failed: unfailed(had_failed),
                truncated: u64::from(truncated),
                ..none
            },
            Self::Skipped { had_failed } => CountsDelta {
                skipped: 1,
                failed: unfailed(had_failed),
                ..none
            },
            Self::Deleted { had_failed } => CountsDelta {
                total: -1,
                failed: unfailed(had_failed),
                ..none
            },
            Self::Failed { newly } => CountsDelta {
                failed: i64::from(newly),
                ..none
            },
            Self::SkipsRequeued {
                listed,
                requeued,
                current,
            } => CountsDelta {
                total: signed(requeued) + signed(current) - signed(listed),
                processed: current,
                skipped: -signed(listed),
                ..none
            },
        }
    }
}

/// The lease slot a new backfill claim takes, given the slots whose leases have not expired:
/// the lowest free one below `max_concurrent`, or `None` when `max_concurrent` are held. Slots
/// held above a lowered `max_concurrent` still count, so the batches in flight never exceed
/// the new bound once the old ones end.
pub fn free_slot(held: &[u32], max_concurrent: u32) -> Option<u32> {
    if held.len() >= max_concurrent as usize {
        return None;
    }
    (0..max_concurrent).find(|slot| !held.contains(slot))
}

/// A count as a signed delta; counts never come near `i64::MAX`.
fn signed(count: u64) -> i64 {
    i64::try_from(count).unwrap_or(i64::MAX)
}

#[cfg(test)]
#[path = "queue_tests.rs"]
mod tests;
