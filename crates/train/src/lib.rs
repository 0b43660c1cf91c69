//! The deterministic training core of crowdtrain.
//!
//! # Brief overview
//!
//! - [`Model`] describes an architecture: a [`ParamLayout`] (named tensors
//!   at fixed offsets of one flat `Vec<f32>`) and a loss with its gradient on
//!   [`Examples`]. [`build_model`] builds the one a [`ModelKind`] names: an
//!   MLP and a small CNN (candle graphs over our ops) and a GPT (its own
//!   forward and backward passes over our kernels).
//! - [`ops`] holds the candle operations whose arithmetic is ours (a fused
//!   linear layer, softmax cross-entropy), built on [`kernels`]: matrix
//!   products and reductions with one fixed order of operations, so the bits
//!   do not depend on threads, vector width or the C library.
//! - [`AdamWUpdate`] and [`NesterovUpdate`] are the fused, element-wise
//!   updates of the recipe's optimizers over the flat vector; [`Trainer`]
//!   runs the inner loop on keyed batches.
//! - [`TrainState`] and [`OuterState`] hash to a [`StateHash`], the
//!   fingerprint compared by determinism tests and, later, by audits.
//! - [`diloco`] runs DiLoCo rounds and the synchronous baseline in one
//!   process from a [`TrainingRecipe`]; [`codec`] encodes pseudo-gradients
//!   for the wire.
//! - [`reward`] makes model rewards: a model of a chosen value, between two
//!   consecutive checkpoints of a run, found by measuring.
//!
//! Everything here is deterministic: the same inputs give the same bits at
//! any thread count and on any x86-64 CPU (see `docs/ARCHITECTURE.md` for
//! the one exception, candle's convolutions).

pub mod codec;
pub mod diloco;
pub mod kernels;
pub mod model;
pub mod model_file;
pub mod ops;
pub mod optim;
pub mod reward;
pub mod state;
pub mod text;
pub mod trainer;

pub use codec::{Codec, CodecError, Encode, encode_with_feedback};
pub use crowdtrain_recipe::{Broadcast, Eager, TrainingRecipe};
pub use model::{
    CandleClassifier, Evaluation, Examples, Gpt, GptConfig, Init, LossSum, Model, ModelKind, ParamLayout,
    ParamSpec, Sampling, build_model, evaluate, evaluate_subset, example_losses, gradient_subset,
    loss_and_grad,
};
pub use model_file::{ModelFile, ModelFileError};
pub use optim::{
    AdamW, AdamWMoments, AdamWUpdate, Nesterov, NesterovUpdate, Schedule, clip_grad_norm, global_norm,
};
pub use state::{OuterState, StateError, StateHash, TrainState, params_hash};
pub use trainer::{BatchSource, ImageShard, InnerOptimizer, StepBatch, Trainer};

/// Why training could not proceed.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("tensor operation failed: {0}")]
    Tensor(#[from] candle_core::Error),
    #[error("{what} hold {found} values, the model has {expected}")]
    WrongLength { what: &'static str, found: usize, expected: usize },
    #[error(transparent)]
    Shard(#[from] crowdtrain_data::ShardError),
    #[error("a batch of {batch} does not fit in a shard of {shard} examples")]
    BatchTooLarge { batch: usize, shard: usize },
    #[error(transparent)]
    Codec(#[from] CodecError),
    #[error("{model} cannot train on {found}")]
    WrongExamples { model: String, found: &'static str },
    #[error("token {token} is outside the vocabulary of {vocab}")]
    TokenOutOfRange { token: u32, vocab: usize },
    #[error("{tokens} tokens are not {sequences} sequences of at most {context} (and {targets} targets)")]
    BadSequences { tokens: usize, targets: usize, sequences: usize, context: usize },
    #[error("invalid model configuration: {0}")]
    BadConfig(String),
    #[error(transparent)]
    Text(#[from] crowdtrain_data::text::TextError),
}
