//! What a run trains on: Fashion-MNIST images for the image models, a
//! tokenised text for the GPT. Everything the node does with data (the
//! fingerprint workers must match, the shards of a round, a slot's batch
//! source, the evaluation of a round's model, the scoring of updates) goes
//! through here, so a language model takes the same path as an image model
//! through training, audits, scoring and rewards: none of them has a
//! special case for it.

use std::path::Path;

use crowdtrain_data::text::{TextDataset, TextSource, TokenShard, TokenizerSpec, text_shards};
use crowdtrain_data::{DataSource, Dataset};
use crowdtrain_defense::quality;
use crowdtrain_protocol::wire::DatasetFingerprint;
use crowdtrain_protocol::{Assignment, Digest};
use crowdtrain_train::text::{TextRun, TextShard};
use crowdtrain_train::trainer::{BatchSource, ImageShard};
use crowdtrain_train::{Evaluation, Model, TrainError, evaluate};
use crowdtrain_train::{ModelKind, TrainingRecipe};

use crate::{AssignedWork, CoordinatorError};

/// Validation sequences a round's model is evaluated on (evenly spaced over
/// the validation split, the same every round): the per-round curve.
pub const ROUND_EVAL_SEQUENCES: usize = 256;

/// A fixed part of the evaluation set: [`RunData::screen`].
pub enum Screen<'a> {
    Images { dataset: &'a Dataset, indices: Vec<u32> },
    Text(TextRun<'a>),
}

impl Screen<'_> {
    /// Loss and accuracy of `params` on the screen's examples.
    pub fn evaluate(&self, model: &dyn Model, params: &[f32]) -> Result<Evaluation, TrainError> {
        match self {
            Self::Images { dataset, indices } => {
                crowdtrain_train::evaluate_subset(model, params, &dataset.test, indices)
            }
            Self::Text(run) => crowdtrain_train::diloco::RunData::evaluate(run, model, params),
        }
    }
}

/// A run's data, loaded once per process.
#[derive(Debug)]
pub enum RunData {
    Images(Dataset),
    /// A text and the context length of the GPT that reads it.
    Text {
        text: Box<TextDataset>,
        context: usize,
    },
}

impl RunData {
    /// The data `recipe`'s model trains on: images from `dir` (or the
    /// Debian package, or the bundled subset), or text from `dir` (or the
    /// installed Shakespeare, or the bundled subset) tokenised by
    /// `tokenizer`, whose vocabulary must be the GPT's.
    pub fn load(
        dir: Option<&Path>,
        recipe: &TrainingRecipe,
        tokenizer: &TokenizerSpec,
    ) -> Result<Self, CoordinatorError> {
        match recipe.model {
            ModelKind::Mlp | ModelKind::Cnn => Ok(Self::Images(DataSource::resolve(dir).load()?)),
            ModelKind::Gpt(config) => {
                let source = TextSource::resolve(dir);
                let cache =
                    matches!(source, TextSource::Path(_)).then(crowdtrain_data::text::default_cache_dir);
                let text =
                    TextDataset::load(&source, tokenizer, cache.as_deref(), &|_| {}).map_err(|error| {
                        CoordinatorError::Data(format!(
                            "could not load the text {}: {error}",
                            source.describe()
                        ))
                    })?;
                let tokens = text.tokenizer().vocab_size();
                if tokens != config.vocab {
                    return Err(CoordinatorError::Data(format!(
                        "the {tokenizer} tokenizer has {tokens} tokens, the model's vocabulary is {}: \
                         set `vocab = {tokens}` under [training.model.gpt] in run.toml",
                        config.vocab
                    )));
                }
                Ok(Self::Text { text: Box::new(text), context: config.context })
            }
        }
    }

    /// What a worker's data must equal: the name, the size of the training
    /// part (images, or tokens) and a digest of all of it (for text, of the
    /// tokenizer, every token and the split).
    pub fn fingerprint(&self) -> DatasetFingerprint {
        match self {
            Self::Images(dataset) => DatasetFingerprint {
                name: dataset.info.name.clone(),
                train_examples: dataset.train.len() as u64,
                digest: Digest(dataset.train.digest()),
            },
            Self::Text { text, .. } => DatasetFingerprint {
                name: text.info.name.clone(),
                train_examples: text.train().len() as u64,
                digest: Digest(text.fingerprint()),
            },
        }
    }

    /// Names the data [`RunData::evaluate`] measures on: the test split's
    /// digest for images; for text the text's fingerprint (it covers the
    /// split the validation sequences come from).
    pub fn evaluation_set(&self) -> Digest {
        match self {
            Self::Images(dataset) => Digest(dataset.test.digest()),
            Self::Text { text, .. } => Digest(text.fingerprint()),
        }
    }

    /// One line for logs and errors.
    pub fn describe(&self) -> String {
        match self {
            Self::Images(dataset) => dataset.info.to_string(),
            Self::Text { text, .. } => text.info.to_string(),
        }
    }

    /// How many participants a round can give a shard of at least one
    /// batch each.
    pub fn participants_supported(&self, recipe: &TrainingRecipe) -> usize {
        match self {
            Self::Images(dataset) => {
                let examples = dataset.train.len();
                let held = (examples as f64 * recipe.validation_fraction).round() as usize;
                (examples.saturating_sub(held) / recipe.batch().max(1)).max(1)
            }
            Self::Text { text, context } => {
                crowdtrain_data::text::participants_supported(text.train().len(), recipe.batch(), *context)
                    .max(1)
            }
        }
    }

    /// Every shard of a round with `assignment.slots` participants (shard
    /// order; which one a slot trains in a round is
    /// [`AssignedWork::shard_of`]'s): exactly what the simulation with the
    /// same recipe uses. The same for every round with as many
    /// participants, hence cached by the count.
    pub fn shards(&self, assignment: &Assignment) -> Result<Shards, TrainError> {
        match self {
            Self::Images(dataset) => Ok(Shards::Images(assignment.shards(&dataset.train.labels)?)),
            Self::Text { text, context } => {
                let recipe = &assignment.recipe;
                let shards = text_shards(
                    text.train().len(),
                    assignment.slots as usize,
                    recipe.batch(),
                    *context,
                    recipe.seed,
                )?;
                Ok(Shards::Text(shards))
            }
        }
    }

    /// Loss and accuracy of `params`: on the test set for images; for text
    /// the loss per token and next-token accuracy on
    /// [`ROUND_EVAL_SEQUENCES`] validation sequences.
    pub fn evaluate(&self, model: &dyn Model, params: &[f32]) -> Result<Evaluation, TrainError> {
        match self {
            Self::Images(dataset) => evaluate(model, params, &dataset.test),
            Self::Text { text, context } => {
                crowdtrain_train::diloco::RunData::evaluate(&self.text_run(text, *context), model, params)
            }
        }
    }

    /// A cheap estimate of [`RunData::evaluate`] for searches that
    /// measure many candidates (reward models:
    /// `crowdtrain_train::reward::calibrate_screened`): a fixed tenth of
    /// the test set for images, a quarter of the round-evaluation
    /// sequences for text. `None` where the evaluation set is too small for
    /// a screen to save anything (the bundled subsets' test sets).
    pub fn screen(&self) -> Option<Screen<'_>> {
        match self {
            Self::Images(dataset) => {
                let indices = crowdtrain_train::reward::screen_indices(dataset.test.len())?;
                Some(Screen::Images { dataset, indices })
            }
            Self::Text { text, context } => Some(Screen::Text(TextRun {
                data: text,
                context: *context,
                eval_sequences: ROUND_EVAL_SEQUENCES / 4,
            })),
        }
    }

    fn text_run<'a>(&self, text: &'a TextDataset, context: usize) -> TextRun<'a> {
        TextRun { data: text, context, eval_sequences: ROUND_EVAL_SEQUENCES }
    }

    /// The quality scores of round `round`'s `updates` against `global`
    /// (see `crowdtrain_defense::quality`): on the round's fresh batch of
    /// `config.eval_examples` examples of the held-out split, keyed by
    /// `run` (images: of `validation`, the indices held out of every shard;
    /// text: windows of the validation split), by `config.score`'s rule.
    #[allow(clippy::too_many_arguments)]
    pub fn scores(
        &self,
        model: &dyn Model,
        global: &[f32],
        updates: &[&[f32]],
        step: f32,
        validation: &[u32],
        config: &crowdtrain_defense::QualityConfig,
        (run, round): (u64, u64),
    ) -> Result<Vec<f64>, TrainError> {
        self.held_out(validation).scores(model, global, updates, step, config, run, round)
    }

    /// How many held-out examples each round's scores are measured on
    /// (what the pay gate's power depends on): see
    /// [`quality::HeldOut::scored_examples`].
    pub fn scored_examples(&self, eval_examples: usize, validation: &[u32]) -> usize {
        self.held_out(validation).scored_examples(eval_examples)
    }

    /// What updates are scored on: the `validation` images, or the text's
    /// own validation split.
    fn held_out<'a>(&'a self, validation: &'a [u32]) -> quality::HeldOut<'a> {
        match self {
            Self::Images(dataset) => quality::HeldOut::Images { train: &dataset.train, validation },
            Self::Text { text, context } => {
                quality::HeldOut::Text { validation: text.validation(), context: *context }
            }
        }
    }

    /// The indices held out of every shard for scoring (images), or
    /// nothing (text keeps its own validation split).
    pub fn validation_indices(&self, recipe: &TrainingRecipe) -> Vec<u32> {
        match self {
            Self::Images(dataset) => {
                crowdtrain_data::split_validation(
                    dataset.train.len(),
                    recipe.validation_fraction,
                    recipe.seed,
                )
                .1
            }
            Self::Text { .. } => Vec::new(),
        }
    }

    /// The same images with every label replaced (the `label-flip`
    /// attack's data); `None` for text.
    pub fn flipped_labels(&self) -> Option<Self> {
        match self {
            Self::Images(dataset) => Some(Self::Images(crowdtrain_defense::attack::flipped_labels(dataset))),
            Self::Text { .. } => None,
        }
    }
}

/// A round's shards, in shard order (see [`AssignedWork::shard_of`]).
#[derive(Debug, Clone, PartialEq)]
pub enum Shards {
    /// Indices of training images.
    Images(Vec<Vec<u32>>),
    /// Stripes of the training tokens, one shard per participant.
    Text(Vec<TokenShard>),
}

impl Shards {
    pub fn len(&self) -> usize {
        match self {
            Self::Images(shards) => shards.len(),
            Self::Text(shards) => shards.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The batches of the shard that slot `slot` (normally
    /// `assignment.slot`) trains in `assignment`'s round, of `data` (which
    /// must be the data the shards were cut from, or its label-flipped
    /// twin). These must be the round's shards: one per participant.
    pub fn source<'a>(
        &'a self,
        data: &'a RunData,
        assignment: &Assignment,
        slot: u32,
    ) -> Result<Box<dyn BatchSource + 'a>, TrainError> {
        if self.len() != assignment.slots as usize || slot >= assignment.slots {
            return Err(TrainError::WrongLength {
                what: "shards",
                found: self.len(),
                expected: assignment.slots.max(slot + 1) as usize,
            });
        }
        let shard = assignment.shard_of(slot);
        match (self, data) {
            (Self::Images(shards), RunData::Images(dataset)) => {
                Ok(Box::new(ImageShard { images: &dataset.train, indices: &shards[shard] }))
            }
            (Self::Text(shards), RunData::Text { text, context }) => Ok(Box::new(TextShard {
                tokens: text.train(),
                shard: shards[shard].clone(),
                context: *context,
            })),
            _ => Err(TrainError::BadConfig(
                "shards of images cannot be read from text, nor the reverse".into(),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crowdtrain_train::GptConfig;

    /// A run.toml whose GPT does not match its tokenizer is refused before
    /// anything trains, and the error names the number to write.
    #[test]
    fn a_vocabulary_other_than_the_tokenizers_is_refused_with_the_number_to_set() {
        let tokenizer = TokenizerSpec::from("char".to_owned());
        let refused = |vocab| {
            let recipe = TrainingRecipe::language_model(1, GptConfig::baby(vocab), 1e-3, 2, 1);
            RunData::load(None, &recipe, &tokenizer).unwrap_err().to_string()
        };
        let error = refused(3);
        let tokens = error
            .split("set `vocab = ")
            .nth(1)
            .and_then(|rest| rest.split('`').next())
            .and_then(|n| n.parse::<usize>().ok())
            .unwrap_or_else(|| panic!("no vocabulary to set in: {error}"));
        assert!(error.contains("the model's vocabulary is 3"), "{error}");
        assert!(error.contains("[training.model.gpt]"), "{error}");
        let recipe = TrainingRecipe::language_model(1, GptConfig::baby(tokens), 1e-3, 2, 1);
        let loaded = RunData::load(None, &recipe, &tokenizer).expect("the number it names is accepted");
        assert!(matches!(loaded, RunData::Text { context: 64, .. }));
    }
}
