//! With a bucket (`[storage]`): a worker waits for the round's next step
//! on the coordinator's signed round notice in the bucket
//! (`coordinator::notices`) instead of long-polling `GET /v1/round`, and
//! asks the coordinator for its own view only when the notice shows
//! something that may be for it. Its reveal needs no view at all: the
//! notice that its round reveals, with the view it trained from and the
//! receipt of its commitment, says all the reveal needs. So a worker costs
//! the coordinator about one view per round besides its receipts.
//!
//! A notice is untrusted: at most [`NOTICE_BYTES_MAX`] bytes, signed by
//! the coordinator's key, of this run, a view for nobody in particular, and
//! never older than the last one seen (a replayed notice is ignored). A
//! notice that fails any of these is ignored, and a worker that sees no
//! new notice for [`NOTICE_WAIT_MAX`] asks the coordinator anyway, so a
//! missing, stale or forged notice delays a worker at most that long.
//!
//! Runs whose rounds show a worker more than its own round (a delayed
//! outer update's round opened ahead, delegated audits) keep long-polling
//! the coordinator.

use std::time::{Duration, Instant};

use crowdtrain_protocol::wire::Phase;
use crowdtrain_protocol::{Digest, PublicKey, RoundId, RoundView, Signed};

use crate::storage::{BlobKey, Bucket, NoticeState};

/// A notice is at most this long (one round view for nobody: about 600
/// bytes of JSON).
pub(super) const NOTICE_BYTES_MAX: u64 = 16 * 1024;

/// A worker that sees no new notice for this long asks the coordinator
/// (what long-polling the coordinator would cost).
pub(super) const NOTICE_WAIT_MAX: Duration = Duration::from_secs(20);

/// The bucket is read at least this often while waiting, backing off from
/// [`NOTICE_POLL_MIN`].
const NOTICE_POLL_MIN: Duration = Duration::from_millis(25);
const NOTICE_POLL_MAX: Duration = Duration::from_millis(500);

/// What the next notice asks of this worker.
#[derive(Debug)]
pub(super) enum Next {
    /// Its own view, from the coordinator: a round may be for it, or the run
    /// ended, or no notice came in time.
    AskCoordinator,
    /// The view to act on, made from the notice: its round reveals.
    Act(Box<RoundView>),
}

/// The notices a worker reads.
pub(super) struct Notices {
    bucket: Bucket,
    coordinator: PublicKey,
    run: Digest,
    /// The newest state seen, in a notice or in the coordinator's own view.
    seen: Option<NoticeState>,
    /// Why the last notice was ignored: a notice rewritten again and again
    /// (by whoever can write to the bucket) is warned about once.
    ignored: Option<String>,
}

impl Notices {
    pub(super) fn new(bucket: Bucket, coordinator: PublicKey, run: Digest) -> Self {
        Self { bucket, coordinator, run, seen: None, ignored: None }
    }

    /// Notes a view the coordinator showed this worker: notices up to its
    /// state say nothing new.
    pub(super) fn saw(&mut self, view: &RoundView) {
        let state = NoticeState::of(view);
        if self.seen.is_none_or(|seen| !state.older_than(&seen)) {
            self.seen = Some(state);
        }
    }

    /// Waits for a notice that moves the run on from what this worker last
    /// saw and may ask something of it. `shown` is the view it last acted
    /// on; `committed` the round whose commitment the coordinator accepted
    /// from it (its receipt), if any.
    pub(super) async fn next(&mut self, shown: &RoundView, committed: Option<RoundId>) -> Next {
        let started = Instant::now();
        let mut pause = NOTICE_POLL_MIN;
        while started.elapsed() < NOTICE_WAIT_MAX {
            if let Some(notice) = self.read().await {
                let state = NoticeState::of(&notice);
                self.seen = Some(state);
                match what_it_asks(shown, &notice, committed) {
                    Some(next) => return next,
                    None => pause = NOTICE_POLL_MIN,
                }
            }
            tokio::time::sleep(pause.min(NOTICE_WAIT_MAX.saturating_sub(started.elapsed()))).await;
            pause = (pause * 2).min(NOTICE_POLL_MAX);
        }
        Next::AskCoordinator
    }

    /// The bucket's notice if it is a new one to trust; `None` if it is
    /// not there, not new, or not to be trusted (said in the log).
    async fn read(&mut self) -> Option<RoundView> {
        let bytes = match self.bucket.get(&BlobKey::Notice, NOTICE_BYTES_MAX).await {
            Ok(bytes) => bytes,
            Err(error) => {
                tracing::debug!(%error, "no round notice to read");
                return None;
            }
        };
        match check_notice(&bytes, &self.coordinator, &self.run) {
            Ok(notice) => {
                let state = NoticeState::of(&notice);
                let new = self.seen.is_none_or(|seen| state != seen && !state.older_than(&seen));
                new.then_some(notice)
            }
            Err(reason) => {
                if self.ignored.as_ref() != Some(&reason) {
                    tracing::warn!(%reason, "ignoring the bucket's round notice");
                    self.ignored = Some(reason);
                }
                None
            }
        }
    }
}

/// The notice in `bytes`, if it is one: the coordinator's signed round
/// view of run `run` for nobody in particular. Says why not.
pub(super) fn check_notice(bytes: &[u8], coordinator: &PublicKey, run: &Digest) -> Result<RoundView, String> {
    let signed: Signed<RoundView> =
        serde_json::from_slice(bytes).map_err(|error| format!("the notice does not parse: {error}"))?;
    let view =
        signed.verify(coordinator).map_err(|_| "the notice is not signed by the coordinator".to_owned())?;
    if view.run_id != *run {
        return Err(format!("the notice is of run {}, not {run}", view.run_id));
    }
    if view.assignment.is_some() || view.committed || view.audit.is_some() || view.audit_task.is_some() {
        return Err("the notice is a worker's own view, not the round's".into());
    }
    Ok(view.clone())
}

/// What a new notice asks of the worker that last acted on `shown` and had
/// its commitment of round `committed` accepted: nothing (`None`: a round
/// it is not in, or nothing open), its own view, or (its round reveals) the
/// view to reveal with, made from `shown` and the notice.
fn what_it_asks(shown: &RoundView, notice: &RoundView, committed: Option<RoundId>) -> Option<Next> {
    let ours = notice.round.is_some() && notice.round == committed;
    match notice.phase {
        Phase::Waiting => None,
        Phase::Finished => Some(Next::AskCoordinator),
        // A round it committed to, on the model it trained: nothing new.
        Phase::Committing if ours && notice.model == shown.model && !notice.provisional => None,
        Phase::Committing => Some(Next::AskCoordinator),
        // Nothing of its own to reveal.
        Phase::Revealing if !ours => None,
        Phase::Revealing => {
            let trained_for = shown.assignment.as_ref().is_some_and(|assignment| {
                Some(assignment.round) == notice.round && assignment.base_model == notice.model
            });
            if !trained_for || notice.provisional {
                return Some(Next::AskCoordinator);
            }
            Some(Next::Act(Box::new(RoundView {
                phase: Phase::Revealing,
                completed_rounds: notice.completed_rounds,
                deadline_unix_ms: notice.deadline_unix_ms,
                secret_commitment: notice.secret_commitment,
                secret: notice.secret,
                committed: true,
                revealed: false,
                provisional: false,
                ahead: None,
                ..shown.clone()
            })))
        }
    }
}

#[cfg(test)]
mod tests {
    use crowdtrain_protocol::wire::{Assignment, Secret};
    use crowdtrain_protocol::{Identity, WorkerId};

    use super::*;

    fn view(phase: Phase, round: Option<RoundId>, model: Digest) -> RoundView {
        RoundView {
            run_id: Digest::of(b"run"),
            phase,
            round,
            completed_rounds: round.unwrap_or(0),
            model,
            deadline_unix_ms: Some(1000),
            secret_commitment: Some(Digest::of(b"secret")),
            secret: (phase == Phase::Revealing).then_some(Secret([7; 32])),
            assignment: None,
            committed: false,
            revealed: false,
            audit: None,
            audit_answered: false,
            audit_task: None,
            provisional: false,
            ahead: None,
        }
    }

    fn assigned(round: RoundId, model: Digest) -> RoundView {
        let mut shown = view(Phase::Committing, Some(round), model);
        shown.assignment = Some(Assignment {
            run_id: shown.run_id,
            round,
            worker: WorkerId(3),
            slot: 1,
            slots: 4,
            base_model: model,
            recipe: crowdtrain_protocol::TrainingRecipe::with_seed(3),
            segments: 4,
        });
        shown
    }

    #[test]
    fn only_the_coordinators_public_view_of_this_run_is_a_notice() {
        let coordinator = Identity::from_seed([1; 32]);
        let run = Digest::of(b"run");
        let public = view(Phase::Committing, Some(2), Digest::of(b"model"));
        let signed = |view: RoundView, by: &Identity| serde_json::to_vec(&Signed::sign(by, view)).unwrap();
        assert_eq!(
            check_notice(&signed(public.clone(), &coordinator), &coordinator.public_key(), &run),
            Ok(public.clone())
        );
        let forged = signed(public.clone(), &Identity::from_seed([2; 32]));
        assert!(check_notice(&forged, &coordinator.public_key(), &run).unwrap_err().contains("not signed"));
        let mut altered: serde_json::Value =
            serde_json::from_slice(&signed(public.clone(), &coordinator)).unwrap();
        altered["body"]["round"] = 3.into();
        let altered = serde_json::to_vec(&altered).unwrap();
        assert!(check_notice(&altered, &coordinator.public_key(), &run).unwrap_err().contains("not signed"));
        let other_run = RoundView { run_id: Digest::of(b"other"), ..public.clone() };
        let other_run = signed(other_run, &coordinator);
        assert!(check_notice(&other_run, &coordinator.public_key(), &run).unwrap_err().contains("of run"));
        let own = signed(assigned(2, public.model), &coordinator);
        assert!(check_notice(&own, &coordinator.public_key(), &run).unwrap_err().contains("own view"));
        assert!(check_notice(b"{}", &coordinator.public_key(), &run).unwrap_err().contains("parse"));
    }

    #[test]
    fn a_notice_asks_for_the_coordinator_only_when_something_may_be_for_the_worker() {
        let model = Digest::of(b"model");
        let shown = assigned(2, model);
        let ask = |notice: &RoundView, committed| match what_it_asks(&shown, notice, committed) {
            None => "nothing",
            Some(Next::AskCoordinator) => "ask",
            Some(Next::Act(_)) => "act",
        };
        assert_eq!(ask(&view(Phase::Waiting, None, model), Some(2)), "nothing");
        assert_eq!(ask(&view(Phase::Committing, Some(2), model), Some(2)), "nothing", "committed already");
        assert_eq!(ask(&view(Phase::Committing, Some(2), model), None), "ask", "its round to train");
        assert_eq!(
            ask(&view(Phase::Committing, Some(2), Digest::of(b"other")), Some(2)),
            "ask",
            "opened again"
        );
        assert_eq!(ask(&view(Phase::Committing, Some(3), model), Some(2)), "ask", "the next round");
        assert_eq!(ask(&view(Phase::Revealing, Some(2), model), None), "nothing", "nothing to reveal");
        assert_eq!(ask(&view(Phase::Finished, None, model), Some(2)), "ask");
        let revealing = view(Phase::Revealing, Some(2), model);
        let Some(Next::Act(act)) = what_it_asks(&shown, &revealing, Some(2)) else {
            panic!("a reveal is due")
        };
        assert_eq!((act.phase, act.committed, act.revealed), (Phase::Revealing, true, false));
        assert_eq!((act.secret, act.assignment.clone()), (revealing.secret, shown.assignment.clone()));
        // Trained on another model than the one revealing: ask.
        assert_eq!(ask(&view(Phase::Revealing, Some(2), Digest::of(b"other")), Some(2)), "ask");
    }

    #[test]
    fn a_notice_from_the_past_is_older() {
        let model = Digest::of(b"model");
        let state = |phase, round, completed| {
            NoticeState::of(&RoundView { completed_rounds: completed, ..view(phase, round, model) })
        };
        let revealing = state(Phase::Revealing, Some(2), 2);
        assert!(state(Phase::Committing, Some(2), 2).older_than(&revealing));
        assert!(state(Phase::Finished, None, 1).older_than(&revealing), "fewer rounds completed");
        assert!(!state(Phase::Committing, Some(3), 3).older_than(&revealing));
        assert!(!state(Phase::Waiting, None, 3).older_than(&revealing));
        assert!(!revealing.older_than(&revealing));
    }
}
