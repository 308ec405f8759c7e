//! The order in which writers commit: one at a time (see `documents`), with document writes
//! ahead of backfill commits.
//!
//! A backfill at full speed always has a commit waiting; in plain FIFO order, a client's `PUT`
//! would queue behind every worker's batch. Here a backfill commit first lets every waiting
//! document write go ahead, for at most `MAX_YIELD`, then takes its turn in FIFO order. So a
//! write waits for at most the one backfill commit in progress (whose transactions are
//! bounded, and smaller while it sees writes waiting, `writes_waiting`), and the backfill still
//! commits at least once per `MAX_YIELD` however busy the writers are.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{Mutex, Notify, OwnedMutexGuard};

/// The longest a backfill commit stands aside for waiting document writes.
const MAX_YIELD: Duration = Duration::from_millis(100);

/// One commit at a time; waiting document writes go before waiting backfill commits.
#[derive(Debug, Default)]
pub(crate) struct CommitOrder {
    turn: Arc<Mutex<()>>,
    /// Document writes waiting for their turn.
    waiting_writes: AtomicUsize,
    /// Signalled when the last waiting document write got its turn (or gave up waiting).
    writes_served: Notify,
}

/// The right to commit, held until the commit is applied to the in-memory indexes.
pub(crate) type Turn = OwnedMutexGuard<()>;

impl CommitOrder {
    /// The turn of a document write or delete: ahead of any backfill commit that is waiting.
    pub(crate) async fn for_write(&self) -> Turn {
        let _waiting = WaitingWrite::new(self);
        self.turn.clone().lock_owned().await
    }

    /// The turn of a backfill commit: after the document writes waiting now, unless they take
    /// longer than `MAX_YIELD`.
    pub(crate) async fn for_backfill(&self) -> Turn {
        let _ = tokio::time::timeout(MAX_YIELD, self.writes_drained()).await;
        self.turn.clone().lock_owned().await
    }

    /// Whether a document write is waiting for its turn: a backfill commit holding the turn
    /// asks, to keep its next transaction small.
    pub(crate) fn writes_waiting(&self) -> bool {
        self.waiting_writes.load(Ordering::SeqCst) > 0
    }

    /// Resolves once no document write is waiting.
    async fn writes_drained(&self) {
        loop {
            // Created before the check, so a write served in between still wakes us.
            let served = self.writes_served.notified();
            if !self.writes_waiting() {
                return;
            }
            served.await;
        }
    }
}

/// Counts a document write as waiting until its turn comes or its request is dropped.
struct WaitingWrite<'a>(&'a CommitOrder);

impl<'a> WaitingWrite<'a> {
    fn new(order: &'a CommitOrder) -> Self {
        order.waiting_writes.fetch_add(1, Ordering::SeqCst);
        Self(order)
    }
}

impl Drop for WaitingWrite<'_> {
    fn drop(&mut self) {
        if self.0.waiting_writes.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.writes_served.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::Mutex as StdMutex;

    use tokio::task::{JoinHandle, yield_now};

    use super::*;

    type Log = Arc<StdMutex<Vec<&'static str>>>;

    /// Spawns a task that takes a turn, records `who`, and gives the turn back; lets it run
    /// until it waits.
    async fn spawn_turn(order: &Arc<CommitOrder>, log: &Log, who: &'static str) -> JoinHandle<()> {
        let (order, log) = (order.clone(), log.clone());
        let task = tokio::spawn(async move {
            let _turn = if who.starts_with("write") {
                order.for_write().await
            } else {
                order.for_backfill().await
            };
            log.lock().unwrap().push(who);
        });
        yield_now().await;
        task
    }

    /// Holds the turn, starts `first` tasks, waits `pause`, starts `then`, releases the turn,
    /// and returns the order in which they committed.
    async fn commits(
        first: &[&'static str],
        pause: Duration,
        then: &[&'static str],
    ) -> Vec<&'static str> {
        let order = Arc::new(CommitOrder::default());
        let log = Log::default();
        let held = order.turn.lock().await;
        let mut tasks = Vec::new();
        for who in first {
            tasks.push(spawn_turn(&order, &log, who).await);
        }
        tokio::time::sleep(pause).await;
        for who in then {
            tasks.push(spawn_turn(&order, &log, who).await);
        }
        drop(held);
        for task in tasks {
            task.await.unwrap();
        }
        log.lock().unwrap().clone()
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_goes_before_a_backfill_commit_that_waited_longer() {
        let order = commits(&["write 1", "backfill"], Duration::ZERO, &["write 2"]).await;
        assert_eq!(order, ["write 1", "write 2", "backfill"]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_backfill_commit_stands_aside_for_at_most_max_yield() {
        let order = commits(&["write 1", "backfill"], MAX_YIELD * 2, &["write 2"]).await;
        assert_eq!(order, ["write 1", "backfill", "write 2"]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_backfill_commit_goes_at_once_when_no_write_waits() {
        let order = commits(&["backfill"], Duration::ZERO, &["write"]).await;
        assert_eq!(order, ["backfill", "write"]);
    }

    #[tokio::test]
    async fn a_dropped_write_stops_waiting() {
        let order = Arc::new(CommitOrder::default());
        let held = order.turn.lock().await;
        let write = tokio::spawn({
            let order = order.clone();
            async move {
                let _turn = order.for_write().await;
            }
        });
        yield_now().await;
        assert_eq!(order.waiting_writes.load(Ordering::SeqCst), 1);
        write.abort();
        let _ = write.await;
        assert_eq!(order.waiting_writes.load(Ordering::SeqCst), 0);
        drop(held);
        let _turn = tokio::time::timeout(MAX_YIELD / 2, order.for_backfill())
            .await
            .expect("a backfill commit does not wait for a write that left");
    }
}
