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

use std::sync::Arc;

use crowdtrain_protocol::judge::{self, StartState};
use crowdtrain_protocol::wire::{AuditAnswer, AuditReport};
use crowdtrain_protocol::{Assignment, Commitment, Digest, Verdict};
use crowdtrain_train::{Model, TrainState};

use crate::CoordinatorError;
use crate::data::Shards;
use crate::driver::Driver;
use crate::replay::replay_segment;

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

impl Driver {
    /// The coordinator's own replay of `start` (checked by
    /// [`check_answer`]).
    pub fn replay_report(
        &mut self,
        assignment: &Assignment,
        segment: u32,
        start: TrainState,
        residual_in: &[f32],
    ) -> Result<Result<AuditReport, String>, CoordinatorError> {
        let shards = self.shards(assignment)?;
        let base = self.base_params(&assignment.base_model)?;
        Ok(replay_segment(
            self.run.model.as_ref(),
            &self.run.dataset,
            &shards,
            assignment,
            segment,
            start,
            &base,
            residual_in,
        )
        .map_err(|error| format!("the segment cannot be replayed: {error}")))
    }

    /// The round's shards for `assignment.slots` participants, cached.
    pub fn shards(&mut self, assignment: &Assignment) -> Result<Arc<Shards>, CoordinatorError> {
        if let Some(shards) = self.shards.get(&assignment.slots) {
            return Ok(Arc::clone(shards));
        }
        let shards = Arc::new(self.run.dataset.shards(assignment)?);
        // A few slot counts at most (each is an index of the whole training
        // set): participation changes, and the cache must not grow with it.
        if self.shards.len() >= SHARD_CACHE_MAX {
            self.shards.clear();
        }
        self.shards.insert(assignment.slots, Arc::clone(&shards));
        Ok(shards)
    }
}

/// Slot counts whose shards are kept for audit replays.
const SHARD_CACHE_MAX: usize = 4;

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
