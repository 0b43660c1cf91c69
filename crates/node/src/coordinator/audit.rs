//! Judging an audit answer: proofs against the commitment, then a bit-exact
//! replay of the drawn segment.
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
//!    run's codec, exactly the committed pseudo-gradient.
//!
//! Because training is bit-for-bit deterministic, an honest worker passes
//! on any machine of its determinism class, and anything else (skipped
//! steps, other data, another start, another update) fails.

use std::sync::Arc;

use crowdtrain_protocol::merkle;
use crowdtrain_protocol::wire::AuditAnswer;
use crowdtrain_protocol::{Assignment, Commitment, Digest, Verdict};
use crowdtrain_train::TrainState;
use crowdtrain_train::diloco::{replay, segment_range};

use super::{Inner, Node};
use crate::NodeError;

impl Node {
    /// The verdict on `answer` to the audit of `segment` of `assignment`'s
    /// work, committed as `commitment`. Errors are the coordinator's own
    /// failures (not the worker's), and halt nothing by themselves.
    pub(super) fn judge(
        &self,
        inner: &mut Inner,
        assignment: &Assignment,
        segment: u32,
        commitment: &Commitment,
        answer: &AuditAnswer,
    ) -> Result<Verdict, NodeError> {
        let failed = |reason: String| Ok(Verdict::Failed(reason));
        if answer.segment != segment {
            return failed(format!("answered segment {}, but segment {segment} was drawn", answer.segment));
        }
        let leaves = u64::from(commitment.segments) + 1;
        let name = self.model.name();
        let parameters = self.model.layout().len();
        let start = if segment == 1 {
            TrainState::new(name.clone(), inner.global.params.clone())
        } else {
            match TrainState::from_bytes(&answer.start_state, &name, parameters) {
                Ok(state) => state,
                Err(error) => return failed(format!("the start state does not parse: {error}")),
            }
        };
        if answer.start_proof.index != u64::from(segment) - 1 || answer.start_proof.leaves != leaves {
            return failed("the start proof is for another position in the commitment".into());
        }
        if !merkle::verify(&commitment.merkle_root, &Digest(start.hash().0), &answer.start_proof) {
            return failed(if segment == 1 {
                "the committed start state is not the round's base model with a fresh optimizer".into()
            } else {
                "the start state is not the one committed".into()
            });
        }
        if answer.end_proof.index != u64::from(segment) || answer.end_proof.leaves != leaves {
            return failed("the end proof is for another position in the commitment".into());
        }
        if !merkle::verify(&commitment.merkle_root, &answer.end_hash, &answer.end_proof) {
            return failed("the end hash is not the one committed".into());
        }
        let (first, last) = segment_range(assignment.inner_steps, commitment.segments, segment);
        if start.step != first {
            return failed(format!(
                "the start state is at step {}, but segment {segment} starts at step {first}",
                start.step
            ));
        }
        let shards = self.shards(inner, assignment)?;
        let key = assignment.rng_key();
        let replayed = replay(
            self.model.as_ref(),
            assignment.optimizer,
            assignment.batch_size as usize,
            &self.dataset,
            &shards[assignment.slot as usize],
            key,
            start,
            last - first,
        );
        let replayed = match replayed {
            Ok(state) => state,
            Err(error) => return failed(format!("the segment cannot be replayed: {error}")),
        };
        let replayed_hash = Digest(replayed.hash().0);
        if replayed_hash != answer.end_hash {
            return failed(format!(
                "replaying steps {first}..{last} gives state {replayed_hash}, not the committed {}",
                answer.end_hash
            ));
        }
        if segment == commitment.segments {
            let update: Vec<f32> =
                inner.global.params.iter().zip(&replayed.params).map(|(g, l)| g - l).collect();
            let encoded = match assignment.codec.encode(&update) {
                Ok(bytes) => bytes,
                Err(error) => return failed(format!("the final state gives an unencodable update: {error}")),
            };
            if Digest::of(&encoded) != commitment.payload {
                return failed(
                    "the replayed final state does not produce the committed pseudo-gradient".into(),
                );
            }
        }
        Ok(Verdict::Passed)
    }

    /// The round's shards for `assignment.slots` participants, cached.
    fn shards(&self, inner: &mut Inner, assignment: &Assignment) -> Result<Arc<Vec<Vec<u32>>>, NodeError> {
        if let Some(shards) = inner.shards.get(&assignment.slots) {
            return Ok(Arc::clone(shards));
        }
        let shards = Arc::new(assignment.shards(&self.dataset.train.labels)?);
        inner.shards.insert(assignment.slots, Arc::clone(&shards));
        Ok(shards)
    }
}
