//! What an [`Assignment`] means for training: its shards and its random
//! streams. The protocol crate carries assignments without knowing how to
//! train; the worker and every auditor compute from them here, with the
//! same functions the simulation uses, so they all agree bit for bit.

use crowdtrain_data::RngKey;
use crowdtrain_protocol::Assignment;
use crowdtrain_train::TrainError;
use crowdtrain_train::diloco::{round_key, shards};

/// Training-side reading of an [`Assignment`].
pub trait AssignedWork {
    /// Every participant's shard of `labels` for this round (slot order):
    /// exactly what the simulation with the same recipe uses.
    fn shards(&self, labels: &[u8]) -> Result<Vec<Vec<u32>>, TrainError>;

    /// The key of this assignment's random streams (the step coordinate is
    /// filled in per step).
    fn rng_key(&self) -> RngKey;
}

impl AssignedWork for Assignment {
    fn shards(&self, labels: &[u8]) -> Result<Vec<Vec<u32>>, TrainError> {
        shards(&self.recipe, labels, self.slots as usize)
    }

    fn rng_key(&self) -> RngKey {
        round_key(&self.recipe, self.round, self.slot)
    }
}
