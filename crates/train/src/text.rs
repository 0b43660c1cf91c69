//! Training on text: a worker's stripes of the training tokens as a
//! batch source, a text data set as a run's data, and the validation loss.
//!
//! The data side (`crowdtrain_data::text`) owns the corpus, the tokenizer,
//! the split, the shards and the keyed batch sampling; this module plugs
//! them into the trainer, DiLoCo and evaluation, so a GPT's round, its
//! replay and its scoring are the image models' code paths.

use crowdtrain_data::text::{
    TextDataset, TokenBatch, TokenShard, Tokens, evaluation_batch, sample_shard_batch, text_shards,
    validation_batches,
};
use crowdtrain_data::{RngKey, Sharding};
use crowdtrain_recipe::TrainingRecipe;

use crate::TrainError;
use crate::diloco::RunData;
use crate::model::{Evaluation, Examples, LossSum, Model};
use crate::trainer::{BatchSource, StepBatch};

/// Sequences per forward pass when evaluating: bounds the workspace.
pub const EVALUATION_SEQUENCES: usize = 64;

/// A worker's training tokens: each step, `batch_size` windows of
/// `context + 1` tokens inside the stripes of its `shard` of `tokens`, at
/// offsets keyed by the step.
#[derive(Debug, Clone)]
pub struct TextShard<'a> {
    pub tokens: Tokens<'a>,
    pub shard: TokenShard,
    pub context: usize,
}

impl<'a> TextShard<'a> {
    /// All of `tokens` as one shard (a single trainer's).
    pub fn whole(tokens: Tokens<'a>, context: usize) -> Self {
        Self { tokens, shard: TokenShard::contiguous(0..tokens.len()), context }
    }
}

impl BatchSource for TextShard<'_> {
    fn fill(&self, key: RngKey, batch_size: usize, batch: &mut StepBatch) -> Result<(), TrainError> {
        Ok(sample_shard_batch(self.tokens, &self.shard, batch_size, self.context, key, batch.tokens_mut())?)
    }
}

/// A text data set trained on sequences of `context` tokens. Its held-out
/// data is the validation split (the last tenth); per-round evaluations
/// read `eval_sequences` evenly spaced validation sequences (all of them
/// if 0), [`validation_loss`] the whole split.
#[derive(Debug, Clone, Copy)]
pub struct TextRun<'a> {
    pub data: &'a TextDataset,
    pub context: usize,
    pub eval_sequences: usize,
}

impl RunData for TextRun<'_> {
    /// The text's fingerprint (tokenizer, tokens, split), and the context
    /// and evaluation sequences the run cuts from it.
    fn fingerprint(&self) -> [u8; 32] {
        let mut hasher = blake3::Hasher::new_derive_key("crowdtrain sim diloco text data v1");
        hasher.update(&self.data.fingerprint());
        hasher.update(&(self.context as u64).to_le_bytes());
        hasher.update(&(self.eval_sequences as u64).to_le_bytes());
        *hasher.finalize().as_bytes()
    }

    /// Stripes of the training tokens, one shard per worker
    /// (`text_shards`): text has no labels to skew, and its validation
    /// split is already apart, so only IID sharding and no extra held-out
    /// fraction are accepted.
    fn worker_sources(
        &self,
        recipe: &TrainingRecipe,
        workers: usize,
    ) -> Result<Vec<Box<dyn BatchSource + '_>>, TrainError> {
        if recipe.sharding != Sharding::Iid || recipe.validation_fraction != 0.0 {
            return Err(TrainError::BadConfig(
                "text is sharded into contiguous ranges, with the last tenth held out for validation: \
                 no Dirichlet sharding or validation fraction"
                    .into(),
            ));
        }
        let train = self.data.train();
        let shards = text_shards(train.len(), workers, recipe.batch(), self.context, recipe.seed)?;
        Ok(shards
            .into_iter()
            .map(|shard| {
                Box::new(TextShard { tokens: train, shard, context: self.context }) as Box<dyn BatchSource>
            })
            .collect())
    }

    fn evaluate(&self, model: &dyn Model, params: &[f32]) -> Result<Evaluation, TrainError> {
        if self.eval_sequences == 0 {
            return validation_loss(model, params, self.data.validation(), self.context);
        }
        spaced_validation_loss(model, params, self.data.validation(), self.context, self.eval_sequences)
    }
}

/// Mean loss per token (nats) and next-token accuracy on every validation
/// sequence, in order.
pub fn validation_loss(
    model: &dyn Model,
    params: &[f32],
    validation: Tokens<'_>,
    context: usize,
) -> Result<Evaluation, TrainError> {
    let mut sum = LossSum::default();
    for batch in validation_batches(validation, EVALUATION_SEQUENCES, context)? {
        sum.add(model.loss_sum(params, token_examples(&batch))?);
    }
    Ok(sum.evaluation())
}

/// [`validation_loss`] on `count` validation sequences spread evenly over
/// the split (the same ones every time): a cheaper, fixed yardstick for
/// per-round curves.
pub fn spaced_validation_loss(
    model: &dyn Model,
    params: &[f32],
    validation: Tokens<'_>,
    context: usize,
    count: usize,
) -> Result<Evaluation, TrainError> {
    let available = crowdtrain_data::text::validation_sequences(validation.len(), context);
    if available == 0 {
        return Err(crowdtrain_data::text::TextError::TooShort { tokens: validation.len(), context }.into());
    }
    let count = count.min(available);
    let offsets: Vec<usize> = (0..count).map(|index| index * available / count * context).collect();
    let mut sum = LossSum::default();
    let mut batch = TokenBatch::default();
    for chunk in offsets.chunks(EVALUATION_SEQUENCES) {
        batch.fill(validation, chunk, context);
        sum.add(model.loss_sum(params, token_examples(&batch))?);
    }
    Ok(sum.evaluation())
}

/// The mean loss of `params` on the round's evaluation batch of
/// `sequences` validation windows drawn with `key` (the beacon's), for
/// scoring updates.
pub fn evaluation_loss(
    model: &dyn Model,
    params: &[f32],
    validation: Tokens<'_>,
    context: usize,
    sequences: usize,
    key: RngKey,
) -> Result<f64, TrainError> {
    let batch = evaluation_batch(validation, sequences, context, key)?;
    let sum = model.loss_sum(params, token_examples(&batch))?;
    Ok(sum.evaluation().loss)
}

/// A token batch as a model reads it.
pub fn token_examples(batch: &TokenBatch) -> Examples<'_> {
    Examples::Tokens { inputs: &batch.inputs, targets: &batch.targets, sequences: batch.sequences }
}
