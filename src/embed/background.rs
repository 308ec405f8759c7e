//! Threads for CPU-bound embedding done for the backfill, at a lower scheduling priority
//! (nice `BACKGROUND_NICE`) than the threads that serve requests.
//!
//! A backfill at full speed would otherwise take an equal share of every core from the
//! requests it is meant to stay out of the way of. At nice 10 the kernel gives these threads
//! about a tenth of a contended core, and all of an idle one: the backfill uses what requests
//! leave, and still always moves forward.

use std::sync::OnceLock;

use tokio::runtime::{Builder, Runtime};
use tokio::task::JoinHandle;

/// The nice value of background threads: far enough below requests to yield to them, not so
/// far that a steady load stalls the backfill.
const BACKGROUND_NICE: libc::c_int = 10;

/// Runs `work` on a background thread; on the caller's blocking pool if the background
/// runtime could not be built.
pub fn spawn<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> JoinHandle<T> {
    match runtime() {
        Some(runtime) => runtime.spawn_blocking(work),
        None => tokio::task::spawn_blocking(work),
    }
}

/// A runtime used only for its blocking pool: one thread per core, each lowering its own
/// priority as it starts. Built on first use and kept for the life of the process.
fn runtime() -> Option<&'static Runtime> {
    static RUNTIME: OnceLock<Option<Runtime>> = OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            let built = Builder::new_current_thread()
                .max_blocking_threads(cores)
                .thread_name("reembed-background")
                .on_thread_start(lower_this_threads_priority)
                .build();
            match built {
                Ok(runtime) => Some(runtime),
                Err(error) => {
                    tracing::warn!(%error, "no background threads; the backfill embeds at normal priority");
                    None
                }
            }
        })
        .as_ref()
}

fn lower_this_threads_priority() {
    lower_this_threads_priority_to(BACKGROUND_NICE);
}

/// Gives the calling thread the nice value `nice`. On Linux a nice value belongs to a thread,
/// so this leaves the rest of the process alone; elsewhere it may lower the whole process.
pub(crate) fn lower_this_threads_priority_to(nice: libc::c_int) {
    // SAFETY: setpriority only reads its integer arguments; `0` names the calling thread.
    let failed = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, nice) } != 0;
    if failed {
        tracing::debug!(
            error = %std::io::Error::last_os_error(),
            "cannot lower the priority of a background thread"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn own_nice() -> libc::c_int {
        // SAFETY: as above; getpriority reads its integer arguments only.
        unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) }
    }

    #[tokio::test]
    async fn work_runs_at_background_priority_and_the_caller_keeps_its_own() {
        let before = own_nice();
        let nice = spawn(own_nice).await.unwrap();
        assert!(
            nice >= BACKGROUND_NICE,
            "background nice {nice}, caller {before}"
        );
        assert_eq!(own_nice(), before);
    }
}
