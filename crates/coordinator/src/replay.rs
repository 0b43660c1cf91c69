//! Replaying one committed segment of a worker's round: what an auditor
//! does, whether it is the coordinator or a worker it delegated the audit
//! to. One function, so both replay exactly the same computation; and the
//! replay from the round's start that rebuilds the segment's start state
//! itself ([`replay_from_start`], under `audit.replay = "from-start"`).

use crowdtrain_protocol::audit::residual_digest;
use crowdtrain_protocol::judge::FromStartReport;
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

/// Replays `assignment`'s work from the round's start (the `base`
/// parameters with a fresh optimizer) through segment `segment`, segment
/// by segment, for an audit under `audit.replay = "from-start"`: reports
/// the state hash at each boundary it reached, stopping at the first that
/// is not the committed leaf in `leaves` (nothing after it can match), and
/// for the last segment the digest of the update its end gives, encoded as
/// the run encodes updates. [`crowdtrain_protocol::judge::from_start_verdict`]
/// judges it. Each segment is the computation [`replay_segment`] replays
/// from an uploaded start, so both modes judge the same steps alike.
#[allow(clippy::too_many_arguments)]
pub fn replay_from_start(
    model: &dyn Model,
    data: &RunData,
    shards: &Shards,
    assignment: &Assignment,
    segment: u32,
    base: &[f32],
    leaves: &[Digest],
) -> Result<FromStartReport, TrainError> {
    let source = shards.source(data, assignment, assignment.slot)?;
    let mut state = TrainState::new(model.name(), base.to_vec());
    let mut boundaries = vec![Digest(state.hash().0)];
    for boundary in 1..=segment {
        if boundaries.last() != leaves.get(boundary as usize - 1) {
            break;
        }
        let (first, last) = segment_range(assignment.recipe.inner_steps, assignment.segments, boundary);
        state =
            replay_on(model, &assignment.recipe, source.as_ref(), assignment.rng_key(), state, last - first)?;
        boundaries.push(Digest(state.hash().0));
    }
    let reached_the_end = boundaries.len() == segment as usize + 1;
    let payload = if segment == assignment.segments && reached_the_end {
        let update: Vec<f32> = base.iter().zip(&state.params).map(|(g, l)| g - l).collect();
        // No residual: `from-start` runs take codecs without error feedback.
        let encoded = encode_with_feedback(assignment.recipe.codec, &update, &mut Vec::new())?;
        Some(Digest::of(&encoded))
    } else {
        None
    };
    Ok(FromStartReport { boundaries, payload })
}
