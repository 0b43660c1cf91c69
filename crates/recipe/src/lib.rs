//! The training recipe of a crowdtrain run, as plain data.
//!
//! # Brief overview
//!
//! - [`TrainingRecipe`] is everything that decides the bits a worker
//!   computes in a round, given the base model and its slot: the seed, the
//!   model, the inner steps, the batch size, the inner optimizer with its
//!   learning-rate schedule and gradient clipping, the codec
//!   of its update, how the data is sharded and what is held out of every
//!   shard. It is declared once, here, and the run configuration, the
//!   assignments a coordinator hands out, the in-process simulation, the
//!   attack battery and the benchmarks all carry this one type.
//! - [`ModelKind`] (with a GPT's sizes, [`GptConfig`]), [`AdamW`],
//!   [`Schedule`], [`Nesterov`], [`Codec`] and [`Sharding`] are
//!   its parts; the arithmetic behind them lives in `crowdtrain-train`
//!   and `crowdtrain-data`, which read these types.
//! - [`defense`] holds the settings of the coordinator's checks, robust
//!   aggregation and quality scoring, shared the same way by the run
//!   configuration, the simulation and the battery.
//! - [`Metric`] is what a model's quality is on the contract's scale
//!   (test accuracy, or a share of a reference loss removed).
//! - [`segment_range`] says where a round's inner steps are cut into the
//!   segments that commitments cover and audits replay: the worker, the
//!   auditor and the protocol must agree on it exactly.
//!
//! This crate has no I/O and depends on nothing but serde (and `libm`,
//! for a schedule's cosine that every machine computes alike): the protocol
//! crate, which must stay free of training code, can speak of recipes.

pub mod broadcast;
pub mod codec;
pub mod defense;
pub mod metric;
pub mod model;
pub mod optim;
pub mod sharding;

use serde::{Deserialize, Serialize};

pub use broadcast::Broadcast;
pub use codec::{Codec, TOPK_CHUNK, TopK, Values};
pub use defense::{Aggregator, CheckConfig, DefenseConfig, PayGate, QualityConfig, ScoreMethod};
pub use metric::Metric;
pub use model::{GptConfig, ModelKind};
pub use optim::{AdamW, Eager, MAX_OUTER_DELAY, NANOGPT_WARMUP_STEPS, Nesterov, Schedule};
pub use sharding::Sharding;

/// A recipe value that cannot be used, naming its field (relative to the
/// recipe, e.g. `inner_steps`) and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid `{field}`: {reason}")]
pub struct RecipeError {
    pub field: &'static str,
    pub reason: String,
}

impl RecipeError {
    pub fn new(field: &'static str, reason: impl Into<String>) -> Self {
        Self { field, reason: reason.into() }
    }
}

/// What every worker of a run computes in a round, given the base model
/// and its slot (`[training]` in `run.toml`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainingRecipe {
    /// Initialisation, shards and batches all derive from it.
    pub seed: u64,
    #[serde(default)]
    pub model: ModelKind,
    /// Inner optimizer steps per round (DiLoCo's H).
    #[serde(default = "default_inner_steps")]
    pub inner_steps: u64,
    /// Examples per inner step.
    #[serde(default = "default_batch_size")]
    pub batch_size: u32,
    /// The inner optimizer, fresh every round.
    #[serde(default)]
    pub optimizer: AdamW,
    /// How the inner learning rate changes over the run: step `s` (from 1)
    /// of round `r` is step `r * inner_steps + s` of the schedule, so any
    /// segment of any round can be replayed on its own.
    #[serde(default)]
    pub schedule: Schedule,
    /// Clip each inner step's gradient to this global L2 norm (PyTorch's
    /// `clip_grad_norm_`), if set.
    #[serde(default)]
    pub clip_norm: Option<f32>,
    /// How the pseudo-gradient is encoded for the wire.
    #[serde(default)]
    pub codec: Codec,
    /// How the training set is divided among a round's participants.
    #[serde(default)]
    pub sharding: Sharding,
    /// Share of the training set held out of every shard (the coordinator
    /// scores updates on it); 0 shards everything.
    #[serde(default = "default_validation_fraction")]
    pub validation_fraction: f64,
}

fn default_inner_steps() -> u64 {
    50
}

fn default_batch_size() -> u32 {
    64
}

fn default_validation_fraction() -> f64 {
    0.05
}

impl TrainingRecipe {
    /// The documented defaults, with `seed`.
    pub fn with_seed(seed: u64) -> Self {
        Self {
            seed,
            model: ModelKind::default(),
            inner_steps: default_inner_steps(),
            batch_size: default_batch_size(),
            optimizer: AdamW::default(),
            schedule: Schedule::default(),
            clip_norm: None,
            codec: Codec::default(),
            sharding: Sharding::default(),
            validation_fraction: default_validation_fraction(),
        }
    }

    /// Examples per inner step, as an index type.
    pub fn batch(&self) -> usize {
        self.batch_size as usize
    }

    /// Work units of one round's submission: the examples its inner steps
    /// process.
    pub fn work_units(&self) -> u64 {
        self.inner_steps * u64::from(self.batch_size)
    }

    /// nanoGPT's Shakespeare recipe for a GPT of sizes `config`, over a run
    /// of `rounds` rounds of `inner_steps` steps (its cosine decays over
    /// all of them): batches of 12 sequences, [`AdamW::nanogpt`] at peak
    /// rate `lr`, [`Schedule::nanogpt`], gradients clipped to norm 1. Text
    /// is sharded into contiguous ranges with its own validation split, so
    /// nothing more is held out.
    pub fn language_model(seed: u64, config: GptConfig, lr: f32, inner_steps: u64, rounds: u64) -> Self {
        Self {
            model: ModelKind::Gpt(config),
            inner_steps,
            batch_size: 12,
            optimizer: AdamW::nanogpt(lr),
            schedule: Schedule::nanogpt(inner_steps.saturating_mul(rounds)),
            clip_norm: Some(1.0),
            validation_fraction: 0.0,
            ..Self::with_seed(seed)
        }
    }

    /// Checks every value the arithmetic relies on.
    pub fn validate(&self) -> Result<(), RecipeError> {
        check("inner_steps", (1..=1_000_000).contains(&self.inner_steps), "must be between 1 and 1000000")?;
        check("batch_size", (1..=8192).contains(&self.batch_size), "must be between 1 and 8192")?;
        self.model.validate()?;
        self.optimizer.validate()?;
        self.schedule.validate()?;
        check(
            "schedule.round_warmup_steps",
            self.schedule.round_warmup_steps() < self.inner_steps,
            "must be fewer than inner_steps: a round re-warms within itself",
        )?;
        if let Some(norm) = self.clip_norm {
            check_positive("clip_norm", norm)?;
        }
        self.codec.validate()?;
        self.sharding.validate()?;
        if self.model.is_language_model() {
            // Text is cut into contiguous token ranges, and its last tenth
            // is held out already.
            check(
                "sharding",
                self.sharding == Sharding::Iid,
                "a gpt's text is sharded into contiguous ranges: iid",
            )?;
            check(
                "validation_fraction",
                self.validation_fraction == 0.0,
                "must be 0 for a gpt: its text's last tenth is the validation split",
            )?;
        }
        check(
            "validation_fraction",
            (0.0..0.5).contains(&self.validation_fraction),
            "must be in [0, 0.5): this share of the training set is held out of every shard",
        )
    }
}

/// Steps `[start, end)` of segment `segment` (1-based) when `steps` inner
/// steps are cut into `segments` segments at `j * steps / segments`.
pub fn segment_range(steps: u64, segments: u32, segment: u32) -> (u64, u64) {
    assert!((1..=segments).contains(&segment), "segment {segment} of {segments}");
    let boundary = |j: u32| u64::from(j) * steps / u64::from(segments);
    (boundary(segment - 1), boundary(segment))
}

/// The segment (1-based) holding step `step` (0-based) of `steps` inner
/// steps cut into `segments` by [`segment_range`]: the least `j` with
/// `step < j * steps / segments`, i.e. `ceil((step + 1) * segments / steps)`.
pub fn segment_of_step(steps: u64, segments: u32, step: u64) -> u32 {
    assert!(step < steps, "step {step} of {steps}");
    let segments = u128::from(segments);
    ((u128::from(step) + 1) * segments).div_ceil(u128::from(steps)) as u32
}

pub(crate) fn check(field: &'static str, ok: bool, reason: &str) -> Result<(), RecipeError> {
    if ok { Ok(()) } else { Err(RecipeError::new(field, reason)) }
}

pub(crate) fn check_positive(field: &'static str, value: f32) -> Result<(), RecipeError> {
    check(field, value.is_finite() && value > 0.0, "must be a positive finite number")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_language_model_recipe_travels_in_postcard_json_and_toml_unchanged() {
        // Assignments and audit tasks carry the recipe in postcard, which
        // cannot read self-describing layouts (internally tagged enums):
        // every part must be plain.
        let recipe = TrainingRecipe::language_model(5, GptConfig::baby(65), 1e-3, 50, 40);
        let bytes = postcard::to_allocvec(&recipe).unwrap();
        assert_eq!(postcard::from_bytes::<TrainingRecipe>(&bytes).unwrap(), recipe);
        let json = serde_json::to_string(&recipe).unwrap();
        assert_eq!(serde_json::from_str::<TrainingRecipe>(&json).unwrap(), recipe);
        let text = toml::to_string(&recipe).unwrap();
        assert!(text.contains("[schedule.warmup-cosine]"), "{text}");
        assert_eq!(toml::from_str::<TrainingRecipe>(&text).unwrap(), recipe);
        assert_eq!(recipe.validate(), Ok(()));
    }

    #[test]
    fn a_recipe_needs_only_its_seed_and_gets_the_documented_defaults() {
        let recipe: TrainingRecipe = toml::from_str("seed = 7").unwrap();
        assert_eq!(recipe, TrainingRecipe::with_seed(7));
        assert_eq!(recipe.work_units(), 50 * 64);
        assert!(recipe.validate().is_ok());
        let missing = toml::from_str::<TrainingRecipe>("inner_steps = 5").unwrap_err().to_string();
        assert!(missing.contains("seed"), "{missing}");
        let typo = toml::from_str::<TrainingRecipe>("seed = 1\ninner_stpes = 5").unwrap_err().to_string();
        assert!(typo.contains("inner_stpes"), "{typo}");
    }

    #[test]
    fn every_invalid_value_names_its_field() {
        let cases = [
            ("seed = 1\ninner_steps = 0", "inner_steps"),
            ("seed = 1\nbatch_size = 0", "batch_size"),
            ("seed = 1\nvalidation_fraction = 0.5", "validation_fraction"),
            ("seed = 1\nsharding = \"dirichlet:-1\"", "sharding"),
            ("seed = 1\n[optimizer]\nlr = -1.0", "optimizer.lr"),
            ("seed = 1\n[optimizer]\nbeta2 = 1.0", "optimizer.beta2"),
        ];
        for (text, field) in cases {
            let recipe: TrainingRecipe = toml::from_str(text).unwrap();
            assert_eq!(recipe.validate().unwrap_err().field, field, "{text}");
        }
    }

    #[test]
    fn segments_cover_the_steps_in_order() {
        let ranges: Vec<_> = (1..=4).map(|segment| segment_range(50, 4, segment)).collect();
        assert_eq!(ranges, [(0, 12), (12, 25), (25, 37), (37, 50)]);
    }

    #[test]
    fn every_step_lies_in_the_segment_whose_range_holds_it() {
        for steps in 1..=70u64 {
            for segments in 1..=steps.min(9) as u32 {
                for segment in 1..=segments {
                    let (start, end) = segment_range(steps, segments, segment);
                    for step in start..end {
                        assert_eq!(segment_of_step(steps, segments, step), segment, "{steps}/{segments}");
                    }
                }
            }
        }
    }
}
