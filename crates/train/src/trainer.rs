//! The inner loop: steps of AdamW on batches drawn from a shard.

use std::ops::Range;

use crowdtrain_data::text::TokenBatch;
use crowdtrain_data::{Batch, LabeledImages, RngKey, batch_indices};
use serde::{Deserialize, Serialize};

use crate::TrainError;
use crate::model::{Examples, Model};
use crate::optim::{AdamW, AdamWUpdate, Schedule, clip_grad_norm};
use crate::state::TrainState;

/// How a worker's steps update its state: AdamW, the learning-rate
/// schedule and gradient clipping. Every factor is a function of public
/// inputs (the round and the step), so any segment of any round can be
/// replayed on its own.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InnerOptimizer {
    pub adamw: AdamW,
    /// Scales the learning rate by the step's position in the whole run:
    /// step `s` (from 1) of round `r` is run step `r * round_steps + s`.
    pub schedule: Schedule,
    /// Inner steps per round, to place a round's steps in the schedule
    /// (unused by a constant schedule).
    pub round_steps: u64,
    /// Clip the gradient's global norm to this (PyTorch's
    /// `clip_grad_norm_`), if set.
    pub clip_norm: Option<f32>,
}

impl From<AdamW> for InnerOptimizer {
    /// Plain AdamW at a constant rate, unclipped.
    fn from(adamw: AdamW) -> Self {
        Self { adamw, schedule: Schedule::Constant, round_steps: 0, clip_norm: None }
    }
}

impl From<&crowdtrain_recipe::TrainingRecipe> for InnerOptimizer {
    /// The recipe's optimizer, schedule and clipping, its rounds
    /// `inner_steps` long.
    fn from(recipe: &crowdtrain_recipe::TrainingRecipe) -> Self {
        Self {
            adamw: recipe.optimizer,
            schedule: recipe.schedule,
            round_steps: recipe.inner_steps,
            clip_norm: recipe.clip_norm,
        }
    }
}

/// A training step's examples, owned and reused from step to step.
#[derive(Debug, Clone)]
pub enum StepBatch {
    Images(Batch),
    Tokens(TokenBatch),
}

impl Default for StepBatch {
    fn default() -> Self {
        Self::Images(Batch::default())
    }
}

impl StepBatch {
    pub fn examples(&self) -> Examples<'_> {
        match self {
            Self::Images(batch) => Examples::Images(batch),
            Self::Tokens(batch) => Examples::Tokens {
                inputs: &batch.inputs,
                targets: &batch.targets,
                sequences: batch.sequences,
            },
        }
    }

    /// The image batch inside, made one if it was not.
    pub fn images_mut(&mut self) -> &mut Batch {
        if !matches!(self, Self::Images(_)) {
            *self = Self::Images(Batch::default());
        }
        match self {
            Self::Images(batch) => batch,
            Self::Tokens(_) => unreachable!("just made an image batch"),
        }
    }

    /// The token batch inside, made one if it was not.
    pub fn tokens_mut(&mut self) -> &mut TokenBatch {
        if !matches!(self, Self::Tokens(_)) {
            *self = Self::Tokens(TokenBatch::default());
        }
        match self {
            Self::Tokens(batch) => batch,
            Self::Images(_) => unreachable!("just made a token batch"),
        }
    }
}

/// Where each step's examples come from: one worker's shard of a data set.
/// The batch of a step is a function of the key alone, so any step can be
/// rebuilt on its own.
pub trait BatchSource: Sync {
    /// Fills `batch` with the `batch_size` examples of the step keyed by
    /// `key`.
    fn fill(&self, key: RngKey, batch_size: usize, batch: &mut StepBatch) -> Result<(), TrainError>;
}

/// Images of a shard: each step, `batch_size` distinct examples drawn by
/// `batch_indices`.
#[derive(Debug, Clone, Copy)]
pub struct ImageShard<'a> {
    pub images: &'a LabeledImages,
    pub indices: &'a [u32],
}

impl BatchSource for ImageShard<'_> {
    fn fill(&self, key: RngKey, batch_size: usize, batch: &mut StepBatch) -> Result<(), TrainError> {
        if self.indices.len() < batch_size {
            return Err(TrainError::BatchTooLarge { batch: batch_size, shard: self.indices.len() });
        }
        let indices = batch_indices(self.indices, batch_size, key);
        batch.images_mut().fill(self.images, &indices);
        Ok(())
    }
}

/// Everything one training step needs besides the state: the model, the
/// optimizer settings, and reusable buffers (so a step allocates nothing of
/// the parameter vector's size beyond what the model does).
pub struct Trainer<'m> {
    model: &'m dyn Model,
    optimizer: InnerOptimizer,
    batch_size: usize,
    grads: Vec<f32>,
    decay: Vec<(Range<usize>, bool)>,
    batch: StepBatch,
    /// Run steps before this round's first, for the schedule.
    offset: u64,
    /// AdamW steps the moments in the state took before this round (0 for a
    /// fresh optimizer): they count in the bias correction only, never in
    /// the schedule or the batches, which follow the round's own step. See
    /// [`Trainer::with_prior_steps`].
    prior_steps: u64,
}

impl<'m> Trainer<'m> {
    pub fn new(model: &'m dyn Model, optimizer: impl Into<InnerOptimizer>, batch_size: usize) -> Self {
        assert!(batch_size > 0, "batches hold at least one example");
        let grads = vec![0.0; model.layout().len()];
        let decay = model.layout().decay_segments();
        Self {
            model,
            optimizer: optimizer.into(),
            batch_size,
            grads,
            decay,
            batch: StepBatch::default(),
            offset: 0,
            prior_steps: 0,
        }
    }

    /// Continues moments that already took `steps` AdamW steps (the
    /// simulation's `--inner-state carry`, where a worker keeps its moments
    /// from round to round): step `s` of the round is AdamW step
    /// `steps + s` in the bias correction, so carried moments are not
    /// rescaled as if new. The schedule and the batches still follow the
    /// state's own step, which counts from 0 in every round. With 0 (the
    /// default) a step is what it always was, bit for bit.
    pub fn with_prior_steps(mut self, steps: u64) -> Self {
        self.prior_steps = steps;
        self
    }

    /// Scales the learning rate by `schedule` from now on.
    pub fn with_schedule(mut self, schedule: Schedule) -> Self {
        self.optimizer.schedule = schedule;
        self
    }

    pub fn model(&self) -> &'m dyn Model {
        self.model
    }

    pub fn batch_size(&self) -> usize {
        self.batch_size
    }

    /// One AdamW step of `state` on `examples`; returns their loss before
    /// the step.
    pub fn step_on(&mut self, state: &mut TrainState, examples: Examples<'_>) -> Result<f32, TrainError> {
        let loss = self.model.loss_and_grad(&state.params, examples, &mut self.grads)?;
        let mut grads = std::mem::take(&mut self.grads);
        self.apply_gradient(state, &mut grads);
        self.grads = grads;
        Ok(loss)
    }

    /// One optimizer step of `state` with `grads` (clipped in place if the
    /// recipe clips), at the schedule's rate for the step.
    pub fn apply_gradient(&self, state: &mut TrainState, grads: &mut [f32]) {
        if let Some(max_norm) = self.optimizer.clip_norm {
            clip_grad_norm(grads, max_norm);
        }
        state.step += 1;
        let adamw = self.optimizer.adamw;
        let factor = self.optimizer.schedule.factor_in_round(self.offset, state.step);
        let optimizer = AdamW { lr: adamw.lr * factor, ..adamw };
        let adamw_step = self.prior_steps + state.step;
        optimizer.apply_segments(adamw_step, &mut state.params, &mut state.moments, grads, &self.decay);
    }

    /// Runs `steps` steps from `state.step` onwards on `shard` of `images`;
    /// see [`Trainer::run_on`].
    pub fn run(
        &mut self,
        state: &mut TrainState,
        images: &LabeledImages,
        shard: &[u32],
        key: RngKey,
        steps: u64,
        on_step: impl FnMut(&TrainState, f32),
    ) -> Result<f32, TrainError> {
        self.run_on(state, &ImageShard { images, indices: shard }, key, steps, on_step)
    }

    /// Runs `steps` steps from `state.step` onwards on `source`; the batch
    /// of step `s` is drawn from the stream keyed by `key` at step `s`, and
    /// the schedule places it in round `key.round`, so any range of steps
    /// can be replayed on its own. Calls `on_step` after each step with the
    /// new state and the step's loss. Returns the mean loss.
    pub fn run_on(
        &mut self,
        state: &mut TrainState,
        source: &dyn BatchSource,
        key: RngKey,
        steps: u64,
        mut on_step: impl FnMut(&TrainState, f32),
    ) -> Result<f32, TrainError> {
        self.offset = key.round.saturating_mul(self.optimizer.round_steps);
        let mut loss_sum = 0.0f64;
        let mut batch = std::mem::take(&mut self.batch);
        let result: Result<(), TrainError> = (|| {
            for _ in 0..steps {
                source.fill(key.at_step(state.step), self.batch_size, &mut batch)?;
                let loss = self.step_on(state, batch.examples())?;
                loss_sum += f64::from(loss);
                on_step(state, loss);
            }
            Ok(())
        })();
        self.batch = batch;
        result?;
        Ok(if steps == 0 { 0.0 } else { (loss_sum / steps as f64) as f32 })
    }
}
