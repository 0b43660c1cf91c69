//! Judging an audit answer: the coordinator's side of it. The rules (which
//! claims an answer must prove, what a replay must end in, what becomes of
//! a delegated auditor's report) are the protocol's,
//! [`crowdtrain_protocol::judge`], under its seeded tests; this module
//! supplies what they need from training code: the start state, parsed or
//! built from the round's base model, and the bit-exact replay of the drawn
//! segment ([`crate::replay::replay_segment`]).
//!
//! Because training is bit-for-bit deterministic, an honest worker passes
//! on any machine of its determinism class, and anything else (skipped
//! steps, other data, another start, another update) fails.

use crowdtrain_protocol::judge::{self, StartState};
use crowdtrain_protocol::wire::{AuditAnswer, AuditReport};
use crowdtrain_protocol::{Assignment, Commitment, Digest, Verdict};
use crowdtrain_train::{Model, TrainState};

/// Checks 1 to 4 (and 7's digest) of `answer` for `segment` of
/// `assignment`'s work, committed as `commitment` from the round's `base`
/// parameters of `model` ([`judge::check_answer`]): the start state to
/// replay from, or why the answer fails. A plain function: the node runs
/// it off its lock on a fresh answer, the driver on a stored one.
pub fn check_answer(
    model: &dyn Model,
    base: &[f32],
    assignment: &Assignment,
    segment: u32,
    commitment: &Commitment,
    answer: &AuditAnswer,
) -> Result<TrainState, String> {
    let name = model.name();
    let parameters = model.layout().len();
    judge::check_answer(commitment, segment, assignment.recipe.inner_steps, parameters, answer, || {
        let state = if segment == 1 {
            TrainState::new(name, base.to_vec())
        } else {
            TrainState::from_bytes(&answer.start_state, &name, parameters)
                .map_err(|error| format!("the start state does not parse: {error}"))?
        };
        Ok(StartState { hash: Digest(state.hash().0), step: state.step, state })
    })
}

/// What a replay that ended in `report` says of `answer`'s claims
/// ([`judge::replay_verdict`]).
pub fn verdict_of(
    report: &AuditReport,
    answer: &AuditAnswer,
    commitment: &Commitment,
    assignment: &Assignment,
    segment: u32,
) -> Verdict {
    judge::replay_verdict(report, answer, commitment, assignment.recipe.inner_steps, segment)
}
