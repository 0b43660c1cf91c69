//! The pool for work no round waits for: evaluating closed rounds on the
//! test set, scoring them, building a finished run's model rewards.
//!
//! Its threads run at idle priority while the run trains, so they take
//! only CPU time nothing else wants (at niceness 10 they still slowed the
//! close of a round on a 2-core demo by milliseconds); rounds that close
//! faster than they can be evaluated leave a backlog. Once the run has
//! finished the backlog and the model rewards are what everyone waits for
//! (the last round's results, each participant's reward), and no round is
//! left to protect, so [`Background::run_finished`] puts the threads back
//! at normal priority.

use std::sync::{Arc, Mutex};

use crate::NodeError;

/// A rayon pool at idle priority, as many threads as the node computes
/// with, which can be raised to normal priority.
pub(super) struct Background {
    pool: rayon::ThreadPool,
    threads: Arc<Mutex<Threads>>,
}

/// The pool's threads' kernel ids, for changing their priority, and
/// whether the run has finished: one lock, so a thread that starts while
/// the run finishes ends at normal priority either way.
#[derive(Default)]
struct Threads {
    ids: Vec<libc::pid_t>,
    run_finished: bool,
}

impl Background {
    pub(super) fn start() -> Result<Self, NodeError> {
        let threads = Arc::new(Mutex::new(Threads::default()));
        let started = threads.clone();
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(rayon::current_num_threads())
            .thread_name(|_| "crowdtrain-background".into())
            .start_handler(move |_| {
                // SAFETY: gettid has no preconditions.
                let tid = unsafe { libc::gettid() };
                let mut threads = started.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                threads.ids.push(tid);
                if !threads.run_finished {
                    // Best effort: where the call is refused the pool runs
                    // at normal priority.
                    set_policy(0, libc::SCHED_IDLE);
                }
            })
            .build()
            .map_err(|error| {
                NodeError::io("starting the background pool", std::io::Error::other(error.to_string()))
            })?;
        Ok(Self { pool, threads })
    }

    /// Runs `work` on the pool (its parallel parts too) and waits for it.
    pub(super) fn install<R: Send>(&self, work: impl FnOnce() -> R + Send) -> R {
        self.pool.install(work)
    }

    /// The run has finished: the pool's threads run at normal priority
    /// from now on.
    pub(super) fn run_finished(&self) {
        let mut threads = self.threads.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        threads.run_finished = true;
        for &tid in &threads.ids {
            set_policy(tid, libc::SCHED_OTHER);
        }
    }
}

/// Sets thread `tid`'s (0: the calling thread's) scheduling policy, with
/// the static priority 0 both SCHED_IDLE and SCHED_OTHER take. Best effort.
fn set_policy(tid: libc::pid_t, policy: libc::c_int) {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: changes a thread's scheduling policy (on Linux a pid names a
    // thread); `param` outlives the call.
    if unsafe { libc::sched_setscheduler(tid, policy, &param) } != 0 {
        tracing::debug!(tid, policy, error = %std::io::Error::last_os_error(), "could not set a background thread's priority");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every thread's policy, as the kernel reports it.
    fn policies(background: &Background) -> Vec<libc::c_int> {
        // Every thread has run its start handler once it has run a job.
        background.pool.broadcast(|_| ());
        let threads = background.threads.lock().unwrap();
        // SAFETY: sched_getscheduler only reads a thread's policy.
        threads.ids.iter().map(|&tid| unsafe { libc::sched_getscheduler(tid) }).collect()
    }

    #[test]
    fn background_threads_idle_while_the_run_trains_and_run_normally_once_it_has_finished() {
        let background = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap()
            .install(Background::start)
            .unwrap();
        assert_eq!(policies(&background), vec![libc::SCHED_IDLE; 2]);
        // Work runs on the pool, in parallel.
        assert_eq!(background.install(rayon::current_num_threads), 2);
        background.run_finished();
        assert_eq!(policies(&background), vec![libc::SCHED_OTHER; 2]);
    }
}
