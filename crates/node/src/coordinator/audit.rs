//! Judging an audit answer: proofs against the commitment, then a bit-exact
//! replay of the drawn segment, by the coordinator or by the worker it
//! delegated the replay to.
//!
//! A segment passes only if every one of these holds:
//!
//! 1. the answer is for the drawn segment;
//! 2. its start state hashes to leaf `segment - 1` of the committed Merkle
//!    root (for the first segment the auditor builds the start state itself
//!    from the round's base model, so a worker that trained from anything
//!    else fails here);
//! 3. the start state is at the segment's first step;
//! 4. its claimed end hash is leaf `segment` of the committed root;
//! 5. replaying the segment's steps on the worker's assigned shard, with the
//!    assigned seed and hyperparameters, gives exactly that end hash;
//! 6. for the last segment, the replayed final state yields, through the
//!    run's codec, exactly the committed pseudo-gradient;
//! 7. under a codec with error feedback, for the last segment: the answer
//!    carries the residual the worker started from, which hashes to the
//!    commitment's `residual_in` (or is absent when that is zero), and
//!    encoding the replayed update plus that residual leaves exactly the
//!    committed `residual_out`.
//!
//! A worker that keeps, or starts from, a residual other than the one its
//! encoder leaves (to inject mass it never trained for) fails 6 or 7 when
//! its last segment is drawn, like a worker that fakes its update; and the
//! coordinator refuses a commitment whose `residual_in` is not the last
//! accepted `residual_out` (see `crowdtrain_protocol::coordinator`).
//!
//! The coordinator checks 1 to 4, and 7's digest, itself when the answer arrives; 5 and 6
//! are the replay ([`crate::replay::replay_segment`]). Because training is
//! bit-for-bit deterministic, an honest worker passes on any machine of its
//! determinism class, and anything else (skipped steps, other data,
//! another start, another update) fails.

use std::sync::Arc;

use crowdtrain_protocol::audit::residual_digest;
use crowdtrain_protocol::merkle;
use crowdtrain_protocol::wire::{AuditAnswer, AuditReport};
use crowdtrain_protocol::{Assignment, Commitment, Digest, Verdict};
use crowdtrain_train::TrainState;
use crowdtrain_train::diloco::segment_range;

use super::{Inner, Node};
use crate::NodeError;
use crate::data::Shards;
use crate::replay::replay_segment;

impl Node {
    /// Checks 1 to 4 of `answer` for `segment` of `assignment`'s work,
    /// committed as `commitment` from the round's `base` parameters: the
    /// start state to replay from, or why the answer fails.
    pub(super) fn check_answer(
        &self,
        base: &[f32],
        assignment: &Assignment,
        segment: u32,
        commitment: &Commitment,
        answer: &AuditAnswer,
    ) -> Result<TrainState, String> {
        if answer.segment != segment {
            return Err(format!("answered segment {}, but segment {segment} was drawn", answer.segment));
        }
        let leaves = u64::from(commitment.segments) + 1;
        let name = self.model.name();
        let parameters = self.model.layout().len();
        let start = if segment == 1 {
            TrainState::new(name.clone(), base.to_vec())
        } else {
            TrainState::from_bytes(&answer.start_state, &name, parameters)
                .map_err(|error| format!("the start state does not parse: {error}"))?
        };
        if answer.start_proof.index != u64::from(segment) - 1 || answer.start_proof.leaves != leaves {
            return Err("the start proof is for another position in the commitment".into());
        }
        if !merkle::verify(&commitment.merkle_root, &Digest(start.hash().0), &answer.start_proof) {
            return Err(if segment == 1 {
                "the committed start state is not the round's base model with a fresh optimizer".into()
            } else {
                "the start state is not the one committed".into()
            });
        }
        if answer.end_proof.index != u64::from(segment) || answer.end_proof.leaves != leaves {
            return Err("the end proof is for another position in the commitment".into());
        }
        if !merkle::verify(&commitment.merkle_root, &answer.end_hash, &answer.end_proof) {
            return Err("the end hash is not the one committed".into());
        }
        check_residual_in(commitment, segment, parameters, &answer.residual_in)?;
        let (first, _) = segment_range(assignment.recipe.inner_steps, commitment.segments, segment);
        if start.step != first {
            return Err(format!(
                "the start state is at step {}, but segment {segment} starts at step {first}",
                start.step
            ));
        }
        Ok(start)
    }

    /// The coordinator's own replay of `start` (checked by
    /// [`check_answer`](Self::check_answer)).
    pub(super) fn replay_report(
        &self,
        inner: &mut Inner,
        assignment: &Assignment,
        segment: u32,
        start: TrainState,
        residual_in: &[f32],
    ) -> Result<Result<AuditReport, String>, NodeError> {
        let shards = self.shards(inner, assignment)?;
        let base = self.base_params(inner, &assignment.base_model)?;
        Ok(replay_segment(
            self.model.as_ref(),
            &self.dataset,
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
    pub(super) fn shards(
        &self,
        inner: &mut Inner,
        assignment: &Assignment,
    ) -> Result<Arc<Shards>, NodeError> {
        if let Some(shards) = inner.shards.get(&assignment.slots) {
            return Ok(Arc::clone(shards));
        }
        let shards = Arc::new(self.dataset.shards(assignment)?);
        // A few slot counts at most (each is an index of the whole training
        // set): participation changes, and the cache must not grow with it.
        if inner.shards.len() >= SHARD_CACHE_MAX {
            inner.shards.clear();
        }
        inner.shards.insert(assignment.slots, Arc::clone(&shards));
        Ok(shards)
    }
}

/// Slot counts whose shards are kept for audit replays.
const SHARD_CACHE_MAX: usize = 4;

/// Check 7's first half: the residual an answer carries is the committed
/// `residual_in`, with the model's length, when the drawn segment is the
/// last and the commitment names one; otherwise the answer carries none
/// (so an answer's size stays what the audit needs).
fn check_residual_in(
    commitment: &Commitment,
    segment: u32,
    parameters: usize,
    residual: &[f32],
) -> Result<(), String> {
    match commitment.residual_in.filter(|_| segment == commitment.segments) {
        None if residual.is_empty() => Ok(()),
        None => Err("the answer carries a residual this audit does not use".into()),
        Some(_) if residual.len() != parameters => {
            Err(format!("the residual has {} values, the model {parameters}", residual.len()))
        }
        Some(committed) if residual_digest(residual) != committed => {
            Err("the residual is not the one committed (residual_in)".into())
        }
        Some(_) => Ok(()),
    }
}

/// What a replay that ended in `report` says of `answer`'s claims: the
/// replayed end must be the committed end, and for the last segment the
/// update, and the error-feedback residual kept, must be the committed ones.
pub(super) fn verdict_of(
    report: &AuditReport,
    answer: &AuditAnswer,
    commitment: &Commitment,
    assignment: &Assignment,
    segment: u32,
) -> Verdict {
    let (first, last) = segment_range(assignment.recipe.inner_steps, commitment.segments, segment);
    if report.end_hash != answer.end_hash {
        return Verdict::Failed(format!(
            "replaying steps {first}..{last} gives state {}, not the committed {}",
            report.end_hash, answer.end_hash
        ));
    }
    if segment == commitment.segments && report.payload != Some(commitment.payload) {
        return Verdict::Failed(
            "the replayed final state does not produce the committed pseudo-gradient".into(),
        );
    }
    if segment == commitment.segments && report.residual_out != commitment.residual_out {
        return Verdict::Failed(
            "encoding the replayed update leaves another error-feedback residual than the committed one"
                .into(),
        );
    }
    Verdict::Passed
}
