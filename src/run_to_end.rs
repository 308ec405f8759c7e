//! Sections of work that must finish once begun, whoever stops waiting for them.
//!
//! A request's future is dropped wherever it stands when its client hangs up or its time runs
//! out (`api::answer_within`). Dropped between a database commit and the in-memory state that
//! follows it (the indexes, the counts, the published migration), the process would serve the
//! old state until a restart, although the database holds the new one. Such a section runs
//! through `run_to_end`: in a task of its own, which the runtime drives to its end; the caller
//! only waits for the outcome, and may stop waiting without harm.
//!
//! A request's time limit (`within`) therefore covers only the work before its first such
//! section (embedding, waiting its turn to commit): a section that has begun is the answer,
//! since answering "retry later" for a write that then commits would mislead the client, and
//! its retry would write everything twice.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tracing::Instrument;

use crate::store::StoreError;

tokio::task_local! {
    /// Set once the request polled in `within` begins a section.
    static SECTION_BEGUN: Arc<AtomicBool>;
}

/// Runs `request` for at most `limit`, unless it begins a `run_to_end` section by then: then
/// for as long as that takes. `None` when the limit passed first and nothing had begun.
pub async fn within<T>(limit: Duration, request: impl Future<Output = T>) -> Option<T> {
    until(tokio::time::sleep(limit), request).await
}

/// Runs `work` until `stop` resolves, unless it begins a `run_to_end` section by then: then
/// for as long as that takes. `None` when `stop` came first and nothing had begun. Shutdown
/// abandons a backfill batch this way: waiting for its provider is stopped, its commit is not.
pub async fn until<T>(stop: impl Future<Output = ()>, work: impl Future<Output = T>) -> Option<T> {
    let begun = Arc::new(AtomicBool::new(false));
    let work = SECTION_BEGUN.scope(begun.clone(), work);
    tokio::pin!(work);
    tokio::select! {
        biased;
        answer = &mut work => Some(answer),
        () = stop => {
            if begun.load(Ordering::SeqCst) {
                Some(work.await)
            } else {
                None
            }
        }
    }
}

/// Runs `section` in a task of its own and returns its outcome. The task keeps the caller's
/// span, so its log lines still carry the request id.
pub async fn run_to_end<T, E>(
    section: impl Future<Output = Result<T, E>> + Send + 'static,
) -> Result<T, E>
where
    T: Send + 'static,
    E: From<StoreError> + Send + 'static,
{
    let _ = SECTION_BEGUN.try_with(|begun| begun.store(true, Ordering::SeqCst));
    run_to_end_unanswered(section).await
}

/// As [`run_to_end`], for a section that changes nothing (a read transaction's `BEGIN`, which
/// must not be abandoned halfway for its connection's sake): it is not the request's answer,
/// so the request's time limit still applies around it.
pub async fn run_to_end_unanswered<T, E>(
    section: impl Future<Output = Result<T, E>> + Send + 'static,
) -> Result<T, E>
where
    T: Send + 'static,
    E: From<StoreError> + Send + 'static,
{
    match tokio::spawn(section.in_current_span()).await {
        Ok(outcome) => outcome,
        // The section's own bug: let it surface where it would have without the task.
        Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
        // Only a runtime shutting down cancels the task; the caller is going away with it.
        Err(error) => {
            Err(StoreError::Unavailable(format!("interrupted by shutdown: {error}")).into())
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_section_whose_caller_stops_waiting_still_finishes() {
        let finished = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&finished);
        let section = run_to_end(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            flag.store(true, Ordering::SeqCst);
            Ok::<(), StoreError>(())
        });
        let gave_up = tokio::time::timeout(Duration::from_millis(5), section).await;
        assert!(gave_up.is_err(), "the caller stopped waiting first");
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(finished.load(Ordering::SeqCst));
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_that_began_a_section_gets_its_outcome_past_the_limit() {
        let request = async {
            tokio::time::sleep(Duration::from_millis(10)).await;
            run_to_end(async {
                tokio::time::sleep(Duration::from_secs(5)).await;
                Ok::<_, StoreError>("committed")
            })
            .await
        };
        let answer = within(Duration::from_secs(1), request).await;
        assert_eq!(answer.map(Result::ok), Some(Some("committed")));
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_still_waiting_at_the_limit_is_stopped_before_any_section() {
        let began = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&began);
        let request = async move {
            tokio::time::sleep(Duration::from_secs(5)).await;
            run_to_end(async move {
                flag.store(true, Ordering::SeqCst);
                Ok::<_, StoreError>(())
            })
            .await
        };
        assert!(within(Duration::from_secs(1), request).await.is_none());
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert!(
            !began.load(Ordering::SeqCst),
            "nothing began after the limit"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn work_stopped_before_any_section_is_abandoned_and_one_begun_is_finished() {
        let waiting = async {
            tokio::time::sleep(Duration::from_secs(60)).await;
            run_to_end(async { Ok::<_, StoreError>("late") }).await
        };
        let stop = tokio::time::sleep(Duration::from_secs(1));
        assert!(until(stop, waiting).await.is_none());

        let committing = run_to_end(async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            Ok::<_, StoreError>("committed")
        });
        let stop = tokio::time::sleep(Duration::from_secs(1));
        let answer = until(stop, committing).await;
        assert_eq!(answer.map(Result::ok), Some(Some("committed")));
    }

    #[tokio::test]
    async fn the_outcome_reaches_the_caller() {
        let failed = run_to_end(async { Err::<(), _>(StoreError::Conflict("no".into())) }).await;
        assert!(matches!(failed, Err(StoreError::Conflict(reason)) if reason == "no"));
        assert_eq!(
            run_to_end(async { Ok::<_, StoreError>(7) }).await.ok(),
            Some(7)
        );
    }
}
