//! The inner loop: steps of AdamW on batches drawn from a shard.

use crowdtrain_data::{Batch, LabeledImages, RngKey, batch_indices};

use crate::TrainError;
use crate::model::{Model, loss_and_grad};
use crate::optim::{AdamW, AdamWUpdate, Schedule};
use crate::state::TrainState;

/// Everything one training step needs besides the state: the model, the
/// optimizer settings, and reusable buffers (so a step allocates nothing of
/// the parameter vector's size beyond what candle does).
pub struct Trainer<'m> {
    model: &'m dyn Model,
    optimizer: AdamW,
    schedule: Schedule,
    batch_size: usize,
    grads: Vec<f32>,
    batch: Batch,
}

impl<'m> Trainer<'m> {
    pub fn new(model: &'m dyn Model, optimizer: AdamW, batch_size: usize) -> Self {
        assert!(batch_size > 0, "batches hold at least one example");
        let grads = vec![0.0; model.layout().len()];
        Self { model, optimizer, schedule: Schedule::Constant, batch_size, grads, batch: Batch::default() }
    }

    /// Scales the learning rate by `schedule` from now on.
    pub fn with_schedule(mut self, schedule: Schedule) -> Self {
        self.schedule = schedule;
        self
    }

    pub fn model(&self) -> &'m dyn Model {
        self.model
    }

    pub fn batch_size(&self) -> usize {
        self.batch_size
    }

    /// One AdamW step of `state` on `batch`; returns the batch's loss
    /// before the step.
    pub fn step_on(&mut self, state: &mut TrainState, batch: &Batch) -> Result<f32, TrainError> {
        let loss = loss_and_grad(self.model, &state.params, batch, &mut self.grads)?;
        state.step += 1;
        let optimizer = AdamW { lr: self.optimizer.lr * self.schedule.factor(state.step), ..self.optimizer };
        optimizer.apply(state.step, &mut state.params, &mut state.moments, &self.grads);
        Ok(loss)
    }

    /// Runs `steps` steps from `state.step` onwards on `shard` of `images`;
    /// the batch of step `s` is drawn from the stream keyed by `key` at step
    /// `s`, so any range of steps can be replayed on its own. Calls
    /// `on_step` after each step with the new state and the step's loss.
    /// Returns the mean loss.
    pub fn run(
        &mut self,
        state: &mut TrainState,
        images: &LabeledImages,
        shard: &[u32],
        key: RngKey,
        steps: u64,
        mut on_step: impl FnMut(&TrainState, f32),
    ) -> Result<f32, TrainError> {
        if shard.len() < self.batch_size {
            return Err(TrainError::BatchTooLarge { batch: self.batch_size, shard: shard.len() });
        }
        let mut loss_sum = 0.0f64;
        let mut batch = std::mem::take(&mut self.batch);
        for _ in 0..steps {
            let indices = batch_indices(shard, self.batch_size, key.at_step(state.step));
            batch.fill(images, &indices);
            let loss = self.step_on(state, &batch)?;
            loss_sum += f64::from(loss);
            on_step(state, loss);
        }
        self.batch = batch;
        Ok(if steps == 0 { 0.0 } else { (loss_sum / steps as f64) as f32 })
    }
}
