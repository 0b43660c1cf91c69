//! The recipe of a model reward: how a participant's reward model was made
//! from the run's checkpoints, so that anyone holding them can make it
//! again and check it (`crowdtrain_store::reward`).
//!
//! A recipe is what the ledger records for each delivered reward (postcard,
//! like every entry) and what `crowdtrain contract reward-model` prints
//! (JSON). Every model in it is named by the BLAKE3 of its checkpoint file,
//! as the run names its checkpoints, so the reward can be served and
//! verified like any other model of the run.

pub use crowdtrain_recipe::Metric;
use serde::{Deserialize, Serialize};

use crate::ids::WorkerId;
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

/// A participant's model reward at the end of a run with a contract: what
/// the menu promised it for the coalition that formed, what it delivered,
/// and the model it gets or why it gets none. The ledger records one per
/// participant that chose an option ([`crate::ledger::Event::ModelRewarded`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelReward {
    pub worker: WorkerId,
    /// The option it chose (its signed `option-chosen` entry).
    pub option: u32,
    /// n, the realised coalition: how many participants chose each option.
    pub coalition: Vec<u32>,
    /// a(n·m) as realised: the measured value of the model the run trained.
    pub realised: f64,
    /// r_i(n) = reward_ratio_i · a(n·m): the value it was promised.
    pub promised: f64,
    /// m_i, in verified work units.
    pub required_contribution: u64,
    /// Its verified, unslashed work when the run finished.
    pub delivered_contribution: u64,
    pub outcome: RewardOutcome,
}

/// A model reward's outcome.
// Delivered is the usual outcome and the large one: boxing it would only
// add an allocation to the common case.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RewardOutcome {
    /// The model was made; its recipe says how, and what it is worth.
    Delivered(RewardRecipe),
    /// No model: the reason.
    Withheld(Withheld),
}

impl RewardOutcome {
    pub fn recipe(&self) -> Option<&RewardRecipe> {
        match self {
            Self::Delivered(recipe) => Some(recipe),
            Self::Withheld(_) => None,
        }
    }
}

/// Why a participant receives no model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Withheld {
    /// It delivered less verified work than its option requires by the time
    /// the run finished (what it did deliver is still in the trained model).
    UnderDelivered,
}

impl Withheld {
    pub fn name(self) -> &'static str {
        match self {
            Self::UnderDelivered => "under-delivered",
        }
    }
}
