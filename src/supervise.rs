//! Background tasks that outlive a panic: the backfill supervisor and the rollback-window
//! timer run for the life of the process, and HTTP keeps serving whatever they do, so one that
//! died silently would stop migrations while everything looked healthy.
//!
//! `spawn_supervised` runs such a task in its own span and, when it panics, logs the panic and
//! starts it again after `RESTART_DELAY`; both tasks keep their state in the store, so a fresh
//! start resumes where the last one stood.

use std::any::Any;
use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

/// Pause before a panicked task starts again: a task that panics at once is not spun on.
const RESTART_DELAY: Duration = Duration::from_secs(1);

/// Runs the task `start` makes on `tracker` until it returns or `shutdown` fires, starting a
/// new one whenever it panics.
pub fn spawn_supervised<F, Fut>(
    name: &'static str,
    tracker: &TaskTracker,
    shutdown: CancellationToken,
    start: F,
) where
    F: Fn() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    tracker.spawn(async move {
        loop {
            let run = tokio::spawn(start().instrument(tracing::info_span!("task", name)));
            match run.await {
                Err(error) if error.is_panic() => {
                    let panic = error.into_panic();
                    let message = panic_message(panic.as_ref());
                    tracing::error!(
                        task = name,
                        panic = message,
                        "background task panicked; restarting it"
                    );
                }
                // It returned (shutdown), or the runtime is going away.
                Ok(()) | Err(_) => return,
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(RESTART_DELAY) => {}
            }
        }
    });
}

/// The message a panic carries, for its log line.
pub fn panic_message(panic: &(dyn Any + Send)) -> &str {
    panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("a panic without a message")
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_task_that_panics_is_started_again_until_it_returns() {
        let runs = Arc::new(AtomicUsize::new(0));
        let tracker = TaskTracker::new();
        let counted = runs.clone();
        spawn_supervised("flaky", &tracker, CancellationToken::new(), move || {
            let counted = counted.clone();
            async move {
                let run = counted.fetch_add(1, Ordering::SeqCst) + 1;
                assert!(run >= 3, "run {run} panics");
            }
        });
        tracker.close();
        tracker.wait().await;
        assert_eq!(runs.load(Ordering::SeqCst), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_ends_the_restarts() {
        let runs = Arc::new(AtomicUsize::new(0));
        let (tracker, shutdown) = (TaskTracker::new(), CancellationToken::new());
        let counted = runs.clone();
        spawn_supervised("broken", &tracker, shutdown.clone(), move || {
            counted.fetch_add(1, Ordering::SeqCst);
            async { panic!("always") }
        });
        tokio::time::sleep(RESTART_DELAY / 2).await;
        shutdown.cancel();
        tracker.close();
        tracker.wait().await;
        assert_eq!(runs.load(Ordering::SeqCst), 1);
    }
}
