//! The pool for work no round waits for: evaluating closed rounds on the
//! test set, scoring them, building a finished run's model rewards.
//!
//! While the run trains this work runs at idle priority, so it takes only
//! CPU time nothing else wants (at niceness 10 it still slowed the close
//! of a round on a 2-core demo by milliseconds); rounds that close faster
//! than they can be evaluated leave a backlog. Once the run has finished
//! the backlog and the model rewards are what everyone waits for (the last
//! round's results, each participant's reward), and no round is left to
//! protect, so [`Background::run_finished`] sends the work that follows to
//! a second pool at normal priority. A second pool, not the first one's
//! threads raised: an unprivileged process may not leave `SCHED_IDLE`
//! (`sched(7)`: it needs an `RLIMIT_NICE` that allows nice 0).

use std::sync::OnceLock;

use crate::NodeError;

/// Where background work runs: an idle-priority pool, then, once the run
/// has finished, a normal one; as many threads each as the node computes
/// with.
pub(super) struct Background {
    idle: rayon::ThreadPool,
    finished: OnceLock<rayon::ThreadPool>,
    /// Threads per pool, fixed at the start (wherever `run_finished` is
    /// called from, the second pool matches the first).
    threads: usize,
}

impl Background {
    pub(super) fn start() -> Result<Self, NodeError> {
        // Best effort: where the call is refused the pool runs at normal
        // priority.
        let threads = rayon::current_num_threads();
        let idle = pool("crowdtrain-background", threads)
            .start_handler(|_| set_own_policy(libc::SCHED_IDLE))
            .build()
            .map_err(|error| starting(&error))?;
        Ok(Self { idle, finished: OnceLock::new(), threads })
    }

    /// Runs `work` (its parallel parts too) on the pool of the moment and
    /// waits for it.
    pub(super) fn install<R: Send>(&self, work: impl FnOnce() -> R + Send) -> R {
        match self.finished.get() {
            Some(pool) => pool.install(work),
            None => self.idle.install(work),
        }
    }

    /// The run has finished: work that starts from now on runs at normal
    /// priority (work already running ends where it is).
    pub(super) fn run_finished(&self) {
        if self.finished.get().is_some() {
            return;
        }
        // Threads inherit their creator's policy: normal here (a request's
        // or the timer's thread), made sure of where allowed.
        match pool("crowdtrain-finished", self.threads)
            .start_handler(|_| set_own_policy(libc::SCHED_OTHER))
            .build()
        {
            Ok(pool) => {
                let _ = self.finished.set(pool);
            }
            Err(error) => tracing::warn!(%error, "background work stays at idle priority"),
        }
    }
}

/// Sets the calling thread's scheduling policy, with the static priority
/// 0 both `SCHED_IDLE` and `SCHED_OTHER` take. Best effort.
fn set_own_policy(policy: libc::c_int) {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: changes the calling thread's own scheduling policy (on
    // Linux, pid 0 is the calling thread); `param` outlives the call.
    unsafe { libc::sched_setscheduler(0, policy, &param) };
}

/// A pool of `threads` threads named `name`.
fn pool(name: &'static str, threads: usize) -> rayon::ThreadPoolBuilder {
    rayon::ThreadPoolBuilder::new().num_threads(threads).thread_name(move |_| name.into())
}

fn starting(error: &rayon::ThreadPoolBuildError) -> NodeError {
    NodeError::io("starting the background pool", std::io::Error::other(error.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The scheduling policy of the thread `background` runs work on.
    fn policy(background: &Background) -> libc::c_int {
        // SAFETY: sched_getscheduler only reads the calling thread's policy.
        background.install(|| unsafe { libc::sched_getscheduler(0) })
    }

    #[test]
    fn background_work_idles_while_the_run_trains_and_runs_normally_once_it_has_finished() {
        let background = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap()
            .install(Background::start)
            .unwrap();
        assert_eq!(policy(&background), libc::SCHED_IDLE);
        // Work runs on the pool, in parallel.
        assert_eq!(background.install(rayon::current_num_threads), 2);
        background.run_finished();
        assert_eq!(policy(&background), libc::SCHED_OTHER);
        assert_eq!(background.install(rayon::current_num_threads), 2);
        // Finishing again changes nothing.
        background.run_finished();
        assert_eq!(policy(&background), libc::SCHED_OTHER);
    }
}
