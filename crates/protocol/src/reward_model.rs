//! The recipe of a model reward: how a participant's reward model was made
//! from the run's checkpoints, so that anyone holding them can make it
//! again and check it (`crowdtrain_store::reward`).
//!
//! A recipe is what the ledger records for each delivered reward (postcard,
//! like every entry) and what `crowdtrain contract reward-model` prints
//! (JSON). Every model in it is named by the BLAKE3 of its checkpoint file,
//! as the run names its checkpoints, so the reward can be served and
//! verified like any other model of the run.

use crowdtrain_recipe::Metric;
use serde::{Deserialize, Serialize};

use crate::wire::{Digest, RoundId};

/// A checkpoint of the run: the model after `round`, or the initial model
/// (`round: None`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunCheckpoint {
    pub round: Option<RoundId>,
    pub model: Digest,
}

/// How a reward model was made, and what it was measured to be worth.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RewardRecipe {
    /// The architecture (`Model::name`), e.g. `mlp-784-256-10`.
    pub model_name: String,
    /// What "worth" means: the value measured on the evaluation set.
    pub metric: Metric,
    /// The labeled set the values are measured on
    /// (`LabeledImages::digest` of the test split).
    pub evaluation_set: Digest,
    /// The value promised, r_i(n).
    pub target: f64,
    /// How far from `target` the delivered value may be.
    pub tolerance: f64,
    /// The segment's start, worth at most `target`.
    pub lower: RunCheckpoint,
    /// The segment's end: the next checkpoint after `lower`.
    pub upper: RunCheckpoint,
    /// α: the reward is lower + α (upper - lower), element by element in
    /// f32; a multiple of 2^-24.
    pub coefficient: f32,
    /// BLAKE3 of the reward model's checkpoint file.
    pub reward_model: Digest,
    /// The reward model's measured value.
    pub measured: f64,
    /// The model the run trained, which no reward may beat.
    pub final_model: RunCheckpoint,
    /// Its measured value.
    pub final_measured: f64,
}
