//! What an [`Assignment`] means for training: its shards and its random
//! streams. The protocol crate carries assignments without knowing how to
//! train; the worker and every auditor compute from them here, with the
//! same functions the simulation uses, so they all agree bit for bit.

use crowdtrain_data::{RngKey, round_shard};
use crowdtrain_protocol::Assignment;
use crowdtrain_train::TrainError;
use crowdtrain_train::diloco::{round_key, shards};

/// Training-side reading of an [`Assignment`].
pub trait AssignedWork {
    /// Every shard of `labels` for this round's participants (shard
    /// order): exactly what the simulation with the same recipe uses.
    fn shards(&self, labels: &[u8]) -> Result<Vec<Vec<u32>>, TrainError>;

    /// Which of those shards the participant in `slot` (`< slots`) trains
    /// in this round: [`round_shard`], the rule the simulation uses too.
    /// The worker trains, and every auditor replays, `shard_of(slot)`.
    fn shard_of(&self, slot: u32) -> usize;

    /// The key of this assignment's random streams (the step coordinate is
    /// filled in per step).
    fn rng_key(&self) -> RngKey;
}

impl AssignedWork for Assignment {
    fn shards(&self, labels: &[u8]) -> Result<Vec<Vec<u32>>, TrainError> {
        shards(&self.recipe, labels, self.slots as usize)
    }

    fn shard_of(&self, slot: u32) -> usize {
        round_shard(self.recipe.seed, self.round, slot, self.slots)
    }

    fn rng_key(&self) -> RngKey {
        round_key(&self.recipe, self.round, self.slot)
    }
}
