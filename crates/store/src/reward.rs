//! Reward models made from, and checked against, a run's checkpoints.
//!
//! [`RewardBuilder::build`] makes the model a participant is owed (a point
//! between two consecutive checkpoints, found by measuring:
//! `crowdtrain_train::reward`), writes nothing, and returns the file and
//! its [`RewardRecipe`]. [`check_reward_model`] takes a recipe and the
//! run's checkpoints and re-derives everything in it: the file's hash, the
//! measured value (bit for bit: evaluation is deterministic), the distance
//! to the target and the bound by the final model. Both take `measure`, a
//! metric evaluated on a held-out set, so they work for any model the
//! flat parameter vector can hold.

use crowdtrain_protocol::Digest;
use crowdtrain_protocol::reward_model::{RewardRecipe, RunCheckpoint};
use crowdtrain_train::reward::{self, COEFFICIENT_BITS, Metric, RewardError, Target};
use crowdtrain_train::{Model, TrainError};

use crate::checkpoint::{self, CheckpointError, CheckpointKind, Checkpoints};

/// Why a reward model could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Reward(#[from] RewardError),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error(
        "the run recorded {recorded} for its final model, but it measures {measured} here: is this the \
         run's evaluation set?"
    )]
    FinalMismatch { recorded: f64, measured: f64 },
}

/// A metric evaluated on a held-out set, borrowed.
type Measure<'m> = &'m mut dyn FnMut(&[f32]) -> Result<f64, TrainError>;

/// A reward model, ready to deliver.
#[derive(Debug, Clone, PartialEq)]
pub struct RewardModel {
    pub recipe: RewardRecipe,
    /// The checkpoint file (safetensors, as the run's models), named by
    /// `recipe.reward_model`.
    pub file: Vec<u8>,
    /// Models measured to find it (the segment's search only).
    pub evaluations: u32,
    /// Models screened to find it (see [`RewardBuilder::build_screened`]).
    pub screened: u32,
}

/// Builds reward models for one run. It remembers the value of every
/// checkpoint it has measured and every reward it has built, so building
/// for many participants measures each checkpoint at most once, and
/// participants promised the same value (a pooled menu gives several types
/// one option) cost one search.
pub struct RewardBuilder<'a> {
    checkpoints: &'a Checkpoints,
    model: &'a dyn Model,
    run: Vec<RunCheckpoint>,
    values: Vec<Option<f64>>,
    metric: Metric,
    evaluation_set: Digest,
    final_checked: bool,
    /// Checkpoints measured so far (values that were not known).
    measured: u32,
    /// Built rewards by (target, tolerance, precision) bits.
    built: Vec<([u64; 3], RewardModel)>,
}

impl<'a> RewardBuilder<'a> {
    /// `run` is the run's checkpoints in order (initial model first, final
    /// last), `known` their values if already measured with `metric` on the
    /// set `evaluation_set` (the coordinator's own evaluations: hints that
    /// only choose the segment; the final model is always measured again).
    pub fn new(
        checkpoints: &'a Checkpoints,
        model: &'a dyn Model,
        run: Vec<RunCheckpoint>,
        known: Vec<Option<f64>>,
        metric: Metric,
        evaluation_set: Digest,
    ) -> Result<Self, BuildError> {
        metric.validate().map_err(RewardError::from)?;
        if run.len() < 2 || known.len() != run.len() {
            return Err(RewardError::Invalid(format!(
                "a reward needs the initial model and at least one round's ({} checkpoints, {} values)",
                run.len(),
                known.len()
            ))
            .into());
        }
        Ok(Self {
            checkpoints,
            model,
            run,
            values: known,
            metric,
            evaluation_set,
            final_checked: false,
            measured: 0,
            built: Vec::new(),
        })
    }

    fn params(&self, index: usize) -> Result<Vec<f32>, CheckpointError> {
        load(self.checkpoints, self.model, &self.run[index].model)
    }

    /// Checkpoint `index`'s value, measured if not known yet. The final
    /// model is measured once whatever is known, to check the run's record
    /// of it: it bounds every reward.
    fn value(
        &mut self,
        index: usize,
        measure: &mut impl FnMut(&[f32]) -> Result<f64, TrainError>,
    ) -> Result<f64, BuildError> {
        let last = self.run.len() - 1;
        if index == last && !self.final_checked {
            let measured = measure(&self.params(last)?).map_err(RewardError::Measure)?;
            self.measured += 1;
            if let Some(recorded) = self.values[last].filter(|recorded| *recorded != measured) {
                return Err(BuildError::FinalMismatch { recorded, measured });
            }
            self.values[last] = Some(measured);
            self.final_checked = true;
        }
        match self.values[index] {
            Some(value) => Ok(value),
            None => {
                let value = measure(&self.params(index)?).map_err(RewardError::Measure)?;
                self.measured += 1;
                self.values[index] = Some(value);
                Ok(value)
            }
        }
    }

    /// Takes the known values as measurements with this builder's metric
    /// on its evaluation set, the final one included: the coordinator's
    /// own records, made by the same deterministic evaluation, so
    /// measuring the final model again would give the same bits. Without
    /// it (a value from elsewhere, such as `contract reward --state`), the
    /// final model is measured again and checked against its record.
    pub fn known_values_are_measured(mut self) -> Self {
        let last = self.run.len() - 1;
        self.final_checked = self.values[last].is_some();
        self
    }

    /// How many checkpoints this builder has measured (the final model's
    /// check included): those whose values were not known.
    pub fn checkpoints_measured(&self) -> u32 {
        self.measured
    }

    /// The final model's value, measured (once: every reward is bounded by
    /// it and checked against the run's record of it).
    pub fn final_value(
        &mut self,
        mut measure: impl FnMut(&[f32]) -> Result<f64, TrainError>,
    ) -> Result<f64, BuildError> {
        self.value(self.run.len() - 1, &mut measure)
    }

    /// The reward model worth `target` (within `tolerance`, searching to
    /// `precision`), never worth more than the final model.
    pub fn build(
        &mut self,
        target: f64,
        tolerance: f64,
        precision: f64,
        measure: impl FnMut(&[f32]) -> Result<f64, TrainError>,
    ) -> Result<RewardModel, BuildError> {
        self.build_with(target, tolerance, precision, None, measure)
    }

    /// [`RewardBuilder::build`], searching mostly on `screen`, a cheap
    /// estimate of `measure` (the metric on a fixed part of the evaluation
    /// set: [`reward::calibrate_screened`]); every candidate it delivers is
    /// measured in full, so the guarantees are the same. The model may
    /// differ from [`RewardBuilder::build`]'s (another coefficient that
    /// meets the target), and is as deterministic.
    pub fn build_screened(
        &mut self,
        target: f64,
        tolerance: f64,
        precision: f64,
        mut screen: impl FnMut(&[f32]) -> Result<f64, TrainError>,
        measure: impl FnMut(&[f32]) -> Result<f64, TrainError>,
    ) -> Result<RewardModel, BuildError> {
        self.build_with(target, tolerance, precision, Some(&mut screen), measure)
    }

    fn build_with(
        &mut self,
        target: f64,
        tolerance: f64,
        precision: f64,
        screen: Option<Measure<'_>>,
        mut measure: impl FnMut(&[f32]) -> Result<f64, TrainError>,
    ) -> Result<RewardModel, BuildError> {
        let key = [target.to_bits(), tolerance.to_bits(), precision.to_bits()];
        if let Some((_, reward)) = self.built.iter().find(|(built, _)| *built == key) {
            return Ok(RewardModel { evaluations: 0, screened: 0, ..reward.clone() });
        }
        let last = self.run.len() - 1;
        let j = reward::bracket(self.run.len(), target, |index| self.value(index, &mut measure))?;
        let ceiling = self.value(last, &mut measure)?;
        let (lower_value, upper_value) = (self.value(j, &mut measure)?, self.value(j + 1, &mut measure)?);
        let (lower, upper) = (self.params(j)?, self.params(j + 1)?);
        let goal = Target { value: target, tolerance, precision, ceiling };
        let found = match screen {
            Some(screen) => {
                reward::calibrate_screened(&lower, lower_value, &upper, upper_value, &goal, screen, measure)?
            }
            None => reward::calibrate(&lower, lower_value, &upper, upper_value, &goal, measure)?,
        };
        let file = checkpoint::encode(
            CheckpointKind::Params,
            &self.model.name(),
            self.model.layout(),
            &found.params,
        );
        let recipe = RewardRecipe {
            model_name: self.model.name(),
            metric: self.metric,
            evaluation_set: self.evaluation_set,
            target,
            tolerance,
            lower: self.run[j],
            upper: self.run[j + 1],
            coefficient: found.coefficient,
            reward_model: Digest::of(&file),
            measured: found.measured,
            final_model: self.run[last],
            final_measured: ceiling,
        };
        let reward = RewardModel { recipe, file, evaluations: found.evaluations, screened: found.screened };
        self.built.push((key, reward.clone()));
        Ok(reward)
    }
}

fn load(checkpoints: &Checkpoints, model: &dyn Model, digest: &Digest) -> Result<Vec<f32>, CheckpointError> {
    let bytes = checkpoints.get(digest)?;
    checkpoint::decode(&bytes, CheckpointKind::Params, &model.name(), model.layout())
}

/// What a successful check re-derived.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RewardCheck {
    pub reward_model: Digest,
    pub measured: f64,
    pub final_measured: f64,
}

/// Why a recipe does not check. Each names the first thing found wrong.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("the recipe is for model {recipe}, the run trains {run}")]
    WrongModel { recipe: String, run: String },
    #[error("the recipe was measured on evaluation set {recipe}, this one is {here}")]
    WrongEvaluationSet { recipe: Digest, here: Digest },
    #[error("the recipe's {which} checkpoint (round {round:?}, {model}) is not a checkpoint of this run")]
    NotInRun { which: &'static str, round: Option<u64>, model: Digest },
    #[error("the recipe's upper checkpoint is not the one right after its lower checkpoint")]
    NotConsecutive,
    #[error("the recipe's final model comes before its upper checkpoint")]
    FinalTooEarly,
    #[error("the coefficient {0} is not a multiple of 2^-24 in [0, 1]")]
    Coefficient(f32),
    #[error("the rebuilt model hashes to {rebuilt}, the recipe says {recipe}")]
    HashMismatch { recipe: Digest, rebuilt: Digest },
    #[error("the {which} measures {measured}, the recipe says {recipe}")]
    Measured { which: &'static str, recipe: f64, measured: f64 },
    #[error("the reward is worth {measured}, more than {tolerance} from its target {target}")]
    OffTarget { target: f64, tolerance: f64, measured: f64 },
    #[error("the reward is worth {measured}, more than the final model's {final_measured}")]
    AboveFinal { measured: f64, final_measured: f64 },
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error("measuring failed: {0}")]
    Measure(#[from] TrainError),
}

/// Rebuilds the reward model of `recipe` from the run's checkpoints (`run`,
/// in order, from the run's verified ledger) without measuring it: checks
/// that its checkpoints are consecutive checkpoints of the run, its
/// coefficient a multiple of 2^-24 in [0, 1], and that the rebuilt file
/// hashes to the recipe's model. Returns the parameters. What `crowdtrain
/// ledger verify` checks for every reward the ledger records (it needs the
/// checkpoints, not the data).
pub fn rebuild_reward_model(
    checkpoints: &Checkpoints,
    model: &dyn Model,
    run: &[RunCheckpoint],
    recipe: &RewardRecipe,
) -> Result<Vec<f32>, CheckError> {
    if recipe.model_name != model.name() {
        return Err(CheckError::WrongModel { recipe: recipe.model_name.clone(), run: model.name() });
    }
    let position = |which, checkpoint: &RunCheckpoint| {
        run.iter().position(|c| c == checkpoint).ok_or(CheckError::NotInRun {
            which,
            round: checkpoint.round,
            model: checkpoint.model,
        })
    };
    let lower = position("lower", &recipe.lower)?;
    let upper = position("upper", &recipe.upper)?;
    let last = position("final", &recipe.final_model)?;
    if upper != lower + 1 {
        return Err(CheckError::NotConsecutive);
    }
    if last < upper {
        return Err(CheckError::FinalTooEarly);
    }
    let scale = f64::from(1u32 << COEFFICIENT_BITS);
    let scaled = f64::from(recipe.coefficient) * scale;
    if !(0.0..=scale).contains(&scaled) || scaled.fract() != 0.0 {
        return Err(CheckError::Coefficient(recipe.coefficient));
    }
    let params = reward::interpolate(
        &load(checkpoints, model, &recipe.lower.model)?,
        &load(checkpoints, model, &recipe.upper.model)?,
        recipe.coefficient,
    );
    let file = checkpoint::encode(CheckpointKind::Params, &model.name(), model.layout(), &params);
    let rebuilt = Digest::of(&file);
    if rebuilt != recipe.reward_model {
        return Err(CheckError::HashMismatch { recipe: recipe.reward_model, rebuilt });
    }
    Ok(params)
}

/// Rebuilds the reward model of `recipe` from the run's checkpoints (`run`,
/// in order, from the run's verified ledger) and checks every claim the
/// recipe makes. `evaluation_set` names the set `measure` evaluates on.
pub fn check_reward_model(
    checkpoints: &Checkpoints,
    model: &dyn Model,
    run: &[RunCheckpoint],
    recipe: &RewardRecipe,
    evaluation_set: Digest,
    mut measure: impl FnMut(&[f32]) -> Result<f64, TrainError>,
) -> Result<RewardCheck, CheckError> {
    if recipe.evaluation_set != evaluation_set {
        return Err(CheckError::WrongEvaluationSet { recipe: recipe.evaluation_set, here: evaluation_set });
    }
    let params = rebuild_reward_model(checkpoints, model, run, recipe)?;
    let rebuilt = recipe.reward_model;
    let measured = measure(&params)?;
    if measured != recipe.measured {
        return Err(CheckError::Measured { which: "reward model", recipe: recipe.measured, measured });
    }
    let final_measured = measure(&load(checkpoints, model, &recipe.final_model.model)?)?;
    if final_measured != recipe.final_measured {
        return Err(CheckError::Measured {
            which: "final model",
            recipe: recipe.final_measured,
            measured: final_measured,
        });
    }
    if (measured - recipe.target).abs() > recipe.tolerance {
        return Err(CheckError::OffTarget { target: recipe.target, tolerance: recipe.tolerance, measured });
    }
    if measured > final_measured {
        return Err(CheckError::AboveFinal { measured, final_measured });
    }
    Ok(RewardCheck { reward_model: rebuilt, measured, final_measured })
}
