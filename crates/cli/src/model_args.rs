//! The `--model` flag and the GPT's size flags, shared by the commands that
//! train.

use clap::{Args, ValueEnum};
use crowdtrain_train::{AdamW, GptConfig, InnerOptimizer, ModelKind, Schedule};

/// The architectures a command can train.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ModelName {
    /// 784-256-10 with ReLU, on images.
    Mlp,
    /// Two convolutions and a linear layer, on images.
    Cnn,
    /// A decoder-only transformer, on text.
    Gpt,
}

/// A GPT's sizes; the vocabulary comes from the tokenizer. Defaults:
/// nanoGPT's CPU quick-start model.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "GPT (with --model gpt)")]
pub struct GptArgs {
    /// Transformer blocks.
    #[arg(long, default_value_t = 4)]
    pub layers: usize,

    /// Attention heads per block (a divisor of --width).
    #[arg(long, default_value_t = 4)]
    pub heads: usize,

    /// Embedding width.
    #[arg(long, default_value_t = 128)]
    pub width: usize,

    /// Context length: tokens per training sequence.
    #[arg(long, default_value_t = 64)]
    pub context: usize,
}

impl GptArgs {
    /// The configuration for a vocabulary of `vocab`, validated.
    pub fn config(&self, vocab: usize) -> anyhow::Result<GptConfig> {
        let config = GptConfig {
            layers: self.layers,
            heads: self.heads,
            width: self.width,
            context: self.context,
            vocab,
        };
        config.validate()?;
        Ok(config)
    }
}

impl ModelName {
    /// The image model this names, or `None` for the GPT.
    pub fn image_model(self) -> Option<ModelKind> {
        match self {
            Self::Mlp => Some(ModelKind::Mlp),
            Self::Cnn => Some(ModelKind::Cnn),
            Self::Gpt => None,
        }
    }
}

/// nanoGPT's Shakespeare optimizer (see `TrainingRecipe::language_model`)
/// at peak rate `lr` over `total_steps` steps, in rounds of `round_steps`.
pub fn gpt_recipe(lr: f32, total_steps: u64, round_steps: u64) -> InnerOptimizer {
    InnerOptimizer {
        adamw: AdamW::nanogpt(lr),
        schedule: Schedule::nanogpt(total_steps),
        round_steps,
        clip_norm: Some(1.0),
    }
}
