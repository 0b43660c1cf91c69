//! Replaying one committed segment of a worker's round: what an auditor
//! does, whether it is the coordinator or a worker it delegated the audit
//! to. One function, so both replay exactly the same computation.

use crowdtrain_protocol::audit::residual_digest;
use crowdtrain_protocol::wire::AuditReport;
use crowdtrain_protocol::{Assignment, Digest};
use crowdtrain_train::diloco::{replay_on, segment_range};
use crowdtrain_train::{Model, TrainError, TrainState, encode_with_feedback};

use crate::AssignedWork;
use crate::data::{RunData, Shards};

/// Replays segment `segment` of `assignment`'s work from `start` on
/// the assigned shard (`shards` are the round's, in shard order) and reports
/// the state hash it ends at; for the last segment also the digest of the
/// update that end state gives against the round's `base` parameters,
/// encoded as the run encodes updates, and under error feedback the digest
/// of the residual that encoding leaves. `residual_in` is the residual the
/// worker started the round from (empty: zero), which its update includes.
#[allow(clippy::too_many_arguments)]
pub fn replay_segment(
    model: &dyn Model,
    data: &RunData,
    shards: &Shards,
    assignment: &Assignment,
    segment: u32,
    start: TrainState,
    base: &[f32],
    residual_in: &[f32],
) -> Result<AuditReport, TrainError> {
    let (first, last) = segment_range(assignment.recipe.inner_steps, assignment.segments, segment);
    let source = shards.source(data, assignment, assignment.slot)?;
    let end =
        replay_on(model, &assignment.recipe, source.as_ref(), assignment.rng_key(), start, last - first)?;
    let (payload, residual_out) = if segment == assignment.segments {
        let update: Vec<f32> = base.iter().zip(&end.params).map(|(g, l)| g - l).collect();
        // The worker's own encoder, so the replay keeps exactly what it kept.
        let codec = assignment.recipe.codec;
        let mut residual = residual_in.to_vec();
        let encoded = encode_with_feedback(codec, &update, &mut residual)?;
        (Some(Digest::of(&encoded)), codec.error_feedback().then(|| residual_digest(&residual)))
    } else {
        (None, None)
    };
    Ok(AuditReport { end_hash: Digest(end.hash().0), payload, residual_out })
}
