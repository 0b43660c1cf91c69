//! DiLoCo in one process, beside its baseline.
//!
//! DiLoCo (Douillard et al., 2023): each round, K workers start from the
//! global parameters, run H inner AdamW steps on their own shards, and send
//! their pseudo-gradient (global minus local); the coordinator averages them
//! and takes one outer Nesterov step. The baseline is synchronous data
//! parallelism at the same sample budget: every step, each worker computes a
//! gradient on its own batch and one AdamW step is taken on their mean, so
//! gradients and parameters cross the network H times as often.
//!
//! Each round's inner optimizer starts fresh. That costs DiLoCo little (AdamW
//! warms up within a few steps) and makes every round's work a function of
//! public inputs only: the global parameters and the assignment. That is
//! what lets a worker join at any round, and an auditor replay any segment.
//! The simulation can instead keep each worker slot's AdamW moments (and
//! their step count) from round to round, as DiLoCo's paper does
//! ([`InnerState::Carry`], `sim diloco --inner-state carry`): an experiment
//! measuring what fresh moments cost. The networked run does not support
//! it: there the moments would become committed, audited state
//! (docs/INNER-STATE.md designs how).
//!
//! How a round's pseudo-gradients become the one update the outer step
//! applies is an [`Aggregate`]: the plain [`Mean`] here, the coordinator's
//! checks and robust rules in `crowdtrain-defense`. The simulation and the
//! networked coordinator take the same one, so they agree bit for bit.
//!
//! Under `[outer] delay = 1` a round does not wait for the previous
//! round's outer step: round r trains from the model published before
//! round r - 1's step (optionally moved by an [`Eager`] stand-in for that
//! step, [`round_base`]), and its update is applied to the newest model.
//! The simulation runs that schedule exactly as a networked run would, so
//! its cost in accuracy is measured here (docs/BENCHMARKS.md).
//!
//! Both runs are deterministic: workers run in parallel but their results
//! are combined in worker order, with fixed-order sums.

use std::collections::VecDeque;

use crowdtrain_data::{Dataset, LabeledImages, RngKey, make_shards_of, round_shard_order, split_validation};
pub use crowdtrain_recipe::segment_range;
use crowdtrain_recipe::{Broadcast, Eager, TrainingRecipe};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::TrainError;
use crate::codec::{self, Encode};
use crate::model::{Evaluation, Model, build_model, evaluate};
use crate::optim::{AdamWMoments, Nesterov, NesterovUpdate};
use crate::state::{OuterState, StateHash, TrainState};
use crate::trainer::{BatchSource, ImageShard, InnerOptimizer, StepBatch, Trainer};

/// Settings of a DiLoCo simulation: the recipe every worker follows, and
/// what the coordinator's side adds (how many workers, rounds, the outer
/// step).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DilocoConfig {
    #[serde(flatten)]
    pub recipe: TrainingRecipe,
    pub workers: usize,
    pub rounds: u64,
    pub outer: Nesterov,
    /// DiLoCo's workers' peak inner learning rate, when it differs from the
    /// recipe's (which the synchronous baseline keeps): a simulation
    /// experiment on how noisy each worker's trajectory should be, since a
    /// smaller inner step lowers its noise floor and the outer step can
    /// scale the averaged update back up. `None` (and left out of reports):
    /// the recipe's, as in a networked run. The schedule's shape is the
    /// recipe's either way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inner_lr: Option<f32>,
}

impl DilocoConfig {
    /// The recipe DiLoCo's workers train with: the recipe, at `inner_lr`
    /// when one is set.
    pub fn inner_recipe(&self) -> TrainingRecipe {
        let mut recipe = self.recipe.clone();
        if let Some(lr) = self.inner_lr {
            recipe.optimizer.lr = lr;
        }
        recipe
    }

    /// Samples each run consumes in one round.
    pub fn samples_per_round(&self) -> u64 {
        self.workers as u64 * self.recipe.work_units()
    }
}

/// The shards of `labels` for `workers` participants under `recipe`
/// (shard order: which one a slot trains in a round is
/// [`crowdtrain_data::round_shard`]'s), none holding an example of the
/// validation split: what a networked run with the same recipe assigns.
pub fn shards(recipe: &TrainingRecipe, labels: &[u8], workers: usize) -> Result<Vec<Vec<u32>>, TrainError> {
    let (pool, _) = split_validation(labels.len(), recipe.validation_fraction, recipe.seed);
    Ok(make_shards_of(labels, &pool, workers, recipe.batch(), recipe.sharding, recipe.seed)?)
}

/// The key of the random streams of the worker in `slot` in `round`
/// (the step coordinate is filled in per step).
pub fn round_key(recipe: &TrainingRecipe, round: u64, slot: u32) -> RngKey {
    RngKey::new(recipe.seed, round, u64::from(slot), 0)
}

/// What each worker's inner AdamW starts a round from, in the simulation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InnerState {
    /// Zero moments at step 0 every round: what a networked run does, so a
    /// round is a function of public inputs.
    #[default]
    Fresh,
    /// Each worker slot keeps its moments and AdamW step count from its
    /// previous round (DiLoCo's paper): the bias correction does not
    /// restart, the learning-rate schedule and the batches are as under
    /// `Fresh`. The first round is `Fresh`'s bit for bit.
    Carry,
}

impl InnerState {
    /// Each state with its name on the command line.
    const NAMES: [(Self, &'static str); 2] = [(Self::Fresh, "fresh"), (Self::Carry, "carry")];
}

impl std::fmt::Display for InnerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (_, name) = Self::NAMES.iter().find(|(state, _)| state == self).expect("every state is named");
        f.write_str(name)
    }
}

impl std::str::FromStr for InnerState {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let found = Self::NAMES.iter().find(|(_, name)| *name == text);
        found.map(|(state, _)| *state).ok_or_else(|| format!("unknown inner state {text:?}: fresh or carry"))
    }
}

/// A worker's AdamW state as it left its last round, for the next one
/// under [`InnerState::Carry`].
#[derive(Debug, Clone, PartialEq)]
pub struct CarriedMoments {
    pub moments: AdamWMoments,
    /// AdamW steps these moments took, over all the worker's rounds.
    pub steps: u64,
}

/// One worker's update as the coordinator receives it.
#[derive(Debug, Clone, Copy)]
pub struct WorkerUpdate<'a> {
    /// The worker's id (in the simulation, its slot).
    pub worker: u64,
    /// The decoded pseudo-gradient.
    pub values: &'a [f32],
    /// The bytes it was sent as (what duplicate checks compare).
    pub encoded: &'a [u8],
}

/// Turns a round's updates (in slot order) into the one the outer step
/// applies, or `None` when nothing in them may be applied (the round then
/// leaves the model as it is).
pub trait Aggregate {
    fn aggregate(&mut self, round: u64, updates: &[WorkerUpdate<'_>]) -> Option<Vec<f32>>;
}

/// DiLoCo's own rule: the plain mean, summed in slot order.
#[derive(Debug, Clone, Copy, Default)]
pub struct Mean;

impl Aggregate for Mean {
    fn aggregate(&mut self, _round: u64, updates: &[WorkerUpdate<'_>]) -> Option<Vec<f32>> {
        let views: Vec<&[f32]> = updates.iter().map(|update| update.values).collect();
        (!views.is_empty()).then(|| mean_in_order(&views))
    }
}

/// One round of both runs, after the same number of samples.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoundReport {
    pub round: u64,
    /// Training samples consumed so far by each run.
    pub samples: u64,
    pub diloco_test_accuracy: f64,
    pub diloco_test_loss: f64,
    /// Mean inner-loop loss over the workers this round.
    pub diloco_train_loss: f64,
    /// Bytes that crossed the network so far (model downloads plus encoded
    /// pseudo-gradient uploads).
    pub diloco_bytes: u64,
    /// Of those, the encoded pseudo-gradient uploads (what the codec
    /// decides).
    pub diloco_upload_bytes: u64,
    /// The model-download share of `diloco_bytes`: full models, or the
    /// published changes under a compressed broadcast.
    pub diloco_download_bytes: u64,
    pub baseline_test_accuracy: f64,
    pub baseline_test_loss: f64,
    pub baseline_train_loss: f64,
    /// Bytes that crossed the network so far (a gradient up and the
    /// parameters down, per worker per step, in f32).
    pub baseline_bytes: u64,
}

/// The outcome of both runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DilocoReport {
    pub rounds: Vec<RoundReport>,
    pub diloco_state_hash: StateHash,
    pub baseline_state_hash: StateHash,
    /// The final parameters of each run (not serialised).
    #[serde(skip)]
    pub diloco_params: Vec<f32>,
    #[serde(skip)]
    pub baseline_params: Vec<f32>,
    /// The baseline's side of `rounds` (not serialised).
    #[serde(skip)]
    pub baseline_rounds: Vec<BaselineRound>,
}

impl DilocoReport {
    pub fn last(&self) -> Option<&RoundReport> {
        self.rounds.last()
    }

    /// The baseline's side of the run, to pass back to [`simulate_with`]
    /// by a later run with the same [`baseline_key`].
    pub fn baseline_run(&self) -> BaselineRun {
        BaselineRun {
            rounds: self.baseline_rounds.clone(),
            state_hash: self.baseline_state_hash,
            params: self.baseline_params.clone(),
        }
    }
}

/// The synchronous baseline's side of a run: what [`simulate_with`]
/// trains, or takes back from an earlier run with the same
/// [`baseline_key`] (the baseline is a function of that key alone, so an
/// experiment that varies only DiLoCo's side need not train it again).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BaselineRun {
    pub rounds: Vec<BaselineRound>,
    pub state_hash: StateHash,
    pub params: Vec<f32>,
}

/// The baseline after one round.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct BaselineRound {
    pub evaluation: Evaluation,
    /// Mean training loss over the round's steps.
    pub train_loss: f32,
    /// Bytes that crossed the network so far.
    pub bytes: u64,
}

/// Names everything the synchronous baseline of `config` on data with
/// `data_fingerprint` depends on, as built by `build` (an identity of the
/// code, e.g. the hash of the executable: a baseline is bits, and other
/// code may compute other bits): the recipe but its codec (the baseline
/// sends f32 gradients) and its per-round re-warming (the baseline never
/// restarts its optimizer, so [`Schedule::factor_in_round`] is its
/// [`Schedule::factor`]), the workers and the rounds. Not in it, because
/// the baseline never reads them: the outer step, its delay and stand-in,
/// DiLoCo's own inner learning rate, the inner state and the aggregator.
///
/// [`Schedule::factor_in_round`]: crowdtrain_recipe::Schedule::factor_in_round
/// [`Schedule::factor`]: crowdtrain_recipe::Schedule::factor
pub fn baseline_key(config: &DilocoConfig, data_fingerprint: [u8; 32], build: [u8; 32]) -> [u8; 32] {
    let mut recipe = config.recipe.clone();
    recipe.codec = crowdtrain_recipe::Codec::default();
    if let crowdtrain_recipe::Schedule::WarmupCosineRewarm {
        warmup_steps, total_steps, final_fraction, ..
    } = recipe.schedule
    {
        recipe.schedule =
            crowdtrain_recipe::Schedule::WarmupCosine { warmup_steps, total_steps, final_fraction };
    }
    let mut hasher = blake3::Hasher::new_derive_key("crowdtrain sim diloco synchronous baseline v1");
    hasher.update(&build);
    hasher.update(&data_fingerprint);
    hasher.update(&(config.workers as u64).to_le_bytes());
    hasher.update(&config.rounds.to_le_bytes());
    let recipe = serde_json::to_vec(&recipe).expect("a recipe serialises");
    hasher.update(&recipe);
    *hasher.finalize().as_bytes()
}

/// What a run trains on and is judged by: images with a test set, or a
/// token stream with a validation split.
pub trait RunData: Sync {
    /// Names everything [`RunData::worker_sources`] and
    /// [`RunData::evaluate`] read: equal fingerprints, equal batches and
    /// evaluations (what [`baseline_key`] relies on).
    fn fingerprint(&self) -> [u8; 32];

    /// One batch source per shard, none holding an example of the
    /// validation split: what a networked run with the same settings
    /// assigns. Which one a worker trains in a round is
    /// [`crowdtrain_data::round_shard_order`]'s.
    fn worker_sources(
        &self,
        recipe: &TrainingRecipe,
        workers: usize,
    ) -> Result<Vec<Box<dyn BatchSource + '_>>, TrainError>;

    /// Loss and accuracy of `params` on held-out data.
    fn evaluate(&self, model: &dyn Model, params: &[f32]) -> Result<Evaluation, TrainError>;
}

impl RunData for Dataset {
    fn fingerprint(&self) -> [u8; 32] {
        let mut hasher = blake3::Hasher::new_derive_key("crowdtrain sim diloco image data v1");
        hasher.update(&self.train.digest());
        hasher.update(&self.test.digest());
        *hasher.finalize().as_bytes()
    }

    fn worker_sources(
        &self,
        recipe: &TrainingRecipe,
        workers: usize,
    ) -> Result<Vec<Box<dyn BatchSource + '_>>, TrainError> {
        let shards = shards(recipe, &self.train.labels, workers)?;
        Ok(shards
            .into_iter()
            .map(|indices| Box::new(OwnedImageShard { images: &self.train, indices }) as Box<dyn BatchSource>)
            .collect())
    }

    /// On the test set.
    fn evaluate(&self, model: &dyn Model, params: &[f32]) -> Result<Evaluation, TrainError> {
        evaluate(model, params, &self.test)
    }
}

/// An [`ImageShard`] that owns its indices.
struct OwnedImageShard<'a> {
    images: &'a LabeledImages,
    indices: Vec<u32>,
}

impl BatchSource for OwnedImageShard<'_> {
    fn fill(&self, key: RngKey, batch_size: usize, batch: &mut StepBatch) -> Result<(), TrainError> {
        ImageShard { images: self.images, indices: &self.indices }.fill(key, batch_size, batch)
    }
}

/// Runs DiLoCo (combining updates with `aggregate`) and the baseline side
/// by side for `config.rounds` rounds, calling `on_round` after each.
/// Every round's inner optimizer starts fresh, as in a networked run.
pub fn simulate(
    config: &DilocoConfig,
    data: &dyn RunData,
    aggregate: &mut dyn Aggregate,
    on_round: impl FnMut(&RoundReport),
) -> Result<DilocoReport, TrainError> {
    simulate_with(config, data, aggregate, InnerState::Fresh, None, on_round)
}

/// [`simulate`], with each round's inner optimizer starting from `inner`
/// (the baseline never restarts, so it is the same under either), and the
/// baseline taken from `reuse` when given (an earlier run's
/// [`DilocoReport::baseline_run`] with the same [`baseline_key`]; it must
/// hold `config.rounds` rounds of the model's parameters) instead of
/// trained again.
pub fn simulate_with(
    config: &DilocoConfig,
    data: &dyn RunData,
    aggregate: &mut dyn Aggregate,
    inner: InnerState,
    reuse: Option<BaselineRun>,
    mut on_round: impl FnMut(&RoundReport),
) -> Result<DilocoReport, TrainError> {
    let recipe = &config.recipe;
    let model = build_model(recipe.model);
    let sources = data.worker_sources(recipe, config.workers)?;
    let initial = model.layout().initialize(recipe.seed);
    if let Some(reused) = &reuse {
        check_length("the reused baseline's rounds", reused.rounds.len(), config.rounds as usize)?;
        check_length("the reused baseline's parameters", reused.params.len(), initial.len())?;
    }
    let mut diloco = DilocoRun::new(model.as_ref(), config, initial.clone());
    diloco.inner = inner;
    let mut baseline = reuse.is_none().then(|| SyncBaseline::new(model.as_ref(), config, initial));
    let mut rounds = Vec::with_capacity(config.rounds as usize);
    let mut baseline_rounds = Vec::with_capacity(config.rounds as usize);
    for round in 0..config.rounds {
        let diloco_train_loss = diloco.round(&sources, round, aggregate)?;
        let diloco_eval = data.evaluate(model.as_ref(), &diloco.state.params)?;
        let baseline_round = match (&mut baseline, &reuse) {
            (Some(baseline), _) => {
                let train_loss = baseline.round(&sources, round)?;
                let evaluation = data.evaluate(model.as_ref(), &baseline.state.params)?;
                BaselineRound { evaluation, train_loss, bytes: baseline.bytes }
            }
            (None, Some(reused)) => reused.rounds[round as usize],
            (None, None) => unreachable!("the baseline is trained unless reused"),
        };
        let report = round_report(
            config,
            round,
            (diloco_eval, diloco_train_loss, diloco.bytes, diloco.upload_bytes, diloco.download_bytes),
            baseline_round,
        );
        on_round(&report);
        rounds.push(report);
        baseline_rounds.push(baseline_round);
    }
    let (baseline_state_hash, baseline_params) = match (baseline, reuse) {
        (Some(baseline), _) => (baseline.state.hash(), baseline.state.params),
        (None, Some(reused)) => (reused.state_hash, reused.params),
        (None, None) => unreachable!("the baseline is trained unless reused"),
    };
    Ok(DilocoReport {
        rounds,
        diloco_state_hash: diloco.state.hash(),
        baseline_state_hash,
        diloco_params: diloco.state.params,
        baseline_params,
        baseline_rounds,
    })
}

fn check_length(what: &'static str, found: usize, expected: usize) -> Result<(), TrainError> {
    match found == expected {
        true => Ok(()),
        false => Err(TrainError::WrongLength { what, found, expected }),
    }
}

fn round_report(
    config: &DilocoConfig,
    round: u64,
    (diloco, diloco_train_loss, diloco_bytes, diloco_upload_bytes, diloco_download_bytes): (
        Evaluation,
        f32,
        u64,
        u64,
        u64,
    ),
    baseline: BaselineRound,
) -> RoundReport {
    RoundReport {
        round: round + 1,
        samples: (round + 1) * config.samples_per_round(),
        diloco_test_accuracy: diloco.accuracy,
        diloco_test_loss: diloco.loss,
        diloco_train_loss: f64::from(diloco_train_loss),
        diloco_bytes,
        diloco_upload_bytes,
        diloco_download_bytes,
        baseline_test_accuracy: baseline.evaluation.accuracy,
        baseline_test_loss: baseline.evaluation.loss,
        baseline_train_loss: f64::from(baseline.train_loss),
        baseline_bytes: baseline.bytes,
    }
}

/// The DiLoCo side: the global state and its outer optimizer, and each
/// worker's error-feedback residual (what its codec has not sent yet; empty
/// for codecs without error feedback, see [`codec::encode_with_feedback`]).
struct DilocoRun<'m> {
    model: &'m dyn Model,
    config: &'m DilocoConfig,
    /// What the workers train with: [`DilocoConfig::inner_recipe`].
    recipe: TrainingRecipe,
    state: OuterState,
    residuals: Vec<Vec<f32>>,
    bytes: u64,
    /// The upload share of `bytes`: encoded pseudo-gradients.
    upload_bytes: u64,
    /// The model-download share of `bytes`.
    download_bytes: u64,
    /// What a worker downloads to hold each coming round's base, oldest
    /// first: `None` for the full model (the first round, and every round
    /// under a full broadcast), else the change an outer step published
    /// under a compressed broadcast (empty when nothing changed, and for
    /// the round a delayed schedule trains again from the model the worker
    /// holds).
    downloads: VecDeque<Option<Vec<u8>>>,
    /// The published models of the last `delay + 2` rounds, newest last:
    /// where a delayed round's base and its trend come from.
    published: VecDeque<Vec<f32>>,
    /// Each worker's last update as sent (decoded), for [`Eager::Own`];
    /// empty before its first.
    sent: Vec<Vec<f32>>,
    /// What each worker's inner optimizer starts a round from.
    inner: InnerState,
    /// Under [`InnerState::Carry`], each worker's AdamW state after its
    /// last round (`None` before its first, and always under `Fresh`).
    carried: Vec<Option<CarriedMoments>>,
}

impl<'m> DilocoRun<'m> {
    fn new(model: &'m dyn Model, config: &'m DilocoConfig, params: Vec<f32>) -> Self {
        // A delayed schedule's second round trains from the first round's
        // model again: nothing to download.
        let delay = config.outer.delay as usize;
        let downloads = std::iter::once(None).chain(std::iter::repeat_n(Some(Vec::new()), delay)).collect();
        Self {
            model,
            config,
            recipe: config.inner_recipe(),
            state: OuterState::new(model.name(), params),
            residuals: vec![Vec::new(); config.workers],
            bytes: 0,
            upload_bytes: 0,
            download_bytes: 0,
            downloads,
            published: VecDeque::with_capacity(delay + 2),
            sent: vec![Vec::new(); config.workers],
            inner: InnerState::Fresh,
            carried: vec![None; config.workers],
        }
    }

    /// The base model of the round about to run, for the worker that sent
    /// `sent` last round: see [`round_base`].
    fn base(&self, sent: &[f32]) -> Vec<f32> {
        let delay = self.config.outer.delay as usize;
        // `published` holds θ_{r-delay-1} ..= θ_r once enough rounds ran.
        let seen = self.published.len().saturating_sub(delay + 1);
        let before = seen.checked_sub(1).map(|index| self.published[index].as_slice());
        let own = (!sent.is_empty()).then_some(sent);
        round_base(&self.config.outer, &self.published[seen], before, own)
    }

    /// A model's size as downloaded whole: its parameters in f32 (the
    /// checkpoint adds a small header).
    fn full_model_bytes(&self) -> u64 {
        (self.state.params.len() * 4) as u64
    }

    /// One round; returns the workers' mean inner loss.
    fn round(
        &mut self,
        sources: &[Box<dyn BatchSource + '_>],
        round: u64,
        aggregate: &mut dyn Aggregate,
    ) -> Result<f32, TrainError> {
        let delay = self.config.outer.delay as usize;
        self.published.push_back(self.state.params.clone());
        if self.published.len() > delay + 2 {
            self.published.pop_front();
        }
        // Under `Eager::Own` each worker's base is its own; otherwise one
        // base serves all.
        let shared = (self.config.outer.eager != Eager::Own).then(|| self.base(&[]));
        let bases: Vec<Vec<f32>> = match &shared {
            Some(_) => Vec::new(),
            None => self.sent.iter().map(|sent| self.base(sent)).collect(),
        };
        let (model, recipe) = (self.model, &self.recipe);
        let shard = round_shard_order(recipe.seed, round, self.config.workers as u32);
        let keep = self.inner == InnerState::Carry;
        let results = self
            .residuals
            .par_iter_mut()
            .zip(self.carried.par_iter_mut())
            .enumerate()
            .map(|(worker, (residual, carried))| {
                let key = round_key(recipe, round, worker as u32);
                let global = shared.as_deref().unwrap_or_else(|| bases[worker].as_slice());
                let source = sources[shard[worker] as usize].as_ref();
                let update =
                    inner_round_from(model, recipe, global, carried.as_ref(), source, key, 1, &mut || {})?;
                if keep {
                    let steps = carried.as_ref().map_or(0, |carried| carried.steps) + recipe.inner_steps;
                    *carried = Some(CarriedMoments { moments: update.final_state().moments.clone(), steps });
                }
                let encoded = codec::encode_with_feedback(recipe.codec, &update.pseudo_gradient, residual)?;
                let (_, decoded) = codec::decode(&encoded, update.pseudo_gradient.len())?;
                Ok((decoded, encoded, update.mean_loss))
            })
            .collect::<Result<Vec<_>, TrainError>>()?;
        let workers = self.config.workers as u64;
        // Each worker downloads this round's model: the full one on the
        // first round (every worker joins then) and under a full broadcast,
        // the published change otherwise (a round that changed nothing
        // publishes nothing new).
        let download_bytes = match self.downloads.pop_front().expect("a download per round") {
            None => self.full_model_bytes() * workers,
            Some(change) => change.len() as u64 * workers,
        };
        self.download_bytes += download_bytes;
        let upload_bytes: u64 = results.iter().map(|(_, encoded, _)| encoded.len() as u64).sum();
        self.bytes += download_bytes + upload_bytes;
        self.upload_bytes += upload_bytes;
        let updates: Vec<WorkerUpdate<'_>> = results
            .iter()
            .enumerate()
            .map(|(slot, (values, encoded, _))| WorkerUpdate { worker: slot as u64, values, encoded })
            .collect();
        let published = match aggregate.aggregate(round, &updates) {
            Some(delta) => outer_step(self.config.outer, &mut self.state, &delta)?,
            None if self.config.outer.broadcast.is_full() => None,
            // Nothing changed: workers keep the model they hold.
            None => Some(Vec::new()),
        };
        self.downloads.push_back(published);
        let mean_loss = results.iter().map(|(_, _, loss)| loss).sum::<f32>() / results.len() as f32;
        if self.config.outer.eager == Eager::Own {
            self.sent = results.into_iter().map(|(decoded, _, _)| decoded).collect();
        }
        Ok(mean_loss)
    }
}

/// The model a round trains from under `outer`'s delay and eager
/// stand-in. `seen` is the newest published model the round waits for
/// (with `delay = 1`, the one from before the previous round's outer step),
/// `before` the model published one step before `seen` (`None` in the first
/// rounds), `own` the worker's decoded update of the previous round (`None`
/// if it sent none). The networked coordinator and the simulation must
/// both take their bases from here, element-wise in f32, so they agree bit
/// for bit; with no stand-in the base is `seen` itself, a published,
/// content-addressed model.
pub fn round_base(outer: &Nesterov, seen: &[f32], before: Option<&[f32]>, own: Option<&[f32]>) -> Vec<f32> {
    match (outer.eager, before, own) {
        (Eager::Trend, Some(before), _) => {
            seen.iter().zip(before).map(|(&seen, &before)| seen + (seen - before)).collect()
        }
        (Eager::Own, _, Some(own)) => {
            seen.iter().zip(own).map(|(&seen, &own)| seen - outer.lr * own).collect()
        }
        _ => seen.to_vec(),
    }
}

/// What one worker returns from a round.
#[derive(Debug, Clone, PartialEq)]
pub struct InnerRoundResult {
    /// Global minus local parameters after the inner steps.
    pub pseudo_gradient: Vec<f32>,
    pub mean_loss: f32,
    /// The worker's state at each segment boundary: the start state, then
    /// the state after each segment (see [`segment_range`]).
    pub boundaries: Vec<TrainState>,
}

impl InnerRoundResult {
    pub fn final_state(&self) -> &TrainState {
        self.boundaries.last().expect("a round has a start boundary")
    }
}

/// One worker's round under `recipe` on its image `shard`: see
/// [`inner_round_on`].
pub fn inner_round(
    model: &dyn Model,
    recipe: &TrainingRecipe,
    global: &[f32],
    dataset: &Dataset,
    shard: &[u32],
    key: RngKey,
    segments: u32,
) -> Result<InnerRoundResult, TrainError> {
    let source = ImageShard { images: &dataset.train, indices: shard };
    inner_round_on(model, recipe, global, &source, key, segments, &mut || {})
}

/// One worker's round under `recipe`: its inner steps from `global` on
/// `source`, with batches keyed by `key` (its run, round and slot) and a
/// fresh optimizer, keeping the state at each of `segments` segment
/// boundaries. `on_step` is called after each step (a worker's progress
/// bar counts them).
pub fn inner_round_on(
    model: &dyn Model,
    recipe: &TrainingRecipe,
    global: &[f32],
    source: &dyn BatchSource,
    key: RngKey,
    segments: u32,
    on_step: &mut dyn FnMut(),
) -> Result<InnerRoundResult, TrainError> {
    inner_round_from(model, recipe, global, None, source, key, segments, on_step)
}

/// [`inner_round_on`] with the optimizer continuing from `carried` (the
/// worker's AdamW state after its previous round, see
/// [`InnerState::Carry`]) instead of fresh when given. The start boundary
/// then holds the carried moments; the state's step still counts from 0,
/// so the schedule and the batches are a fresh round's.
#[allow(clippy::too_many_arguments)]
pub fn inner_round_from(
    model: &dyn Model,
    recipe: &TrainingRecipe,
    global: &[f32],
    carried: Option<&CarriedMoments>,
    source: &dyn BatchSource,
    key: RngKey,
    segments: u32,
    on_step: &mut dyn FnMut(),
) -> Result<InnerRoundResult, TrainError> {
    let steps = recipe.inner_steps;
    let mut state = TrainState::new(model.name(), global.to_vec());
    let mut trainer = Trainer::new(model, InnerOptimizer::from(recipe), recipe.batch());
    if let Some(carried) = carried {
        state.moments = carried.moments.clone();
        trainer = trainer.with_prior_steps(carried.steps);
    }
    let mut boundaries = vec![state.clone()];
    let mut loss_sum = 0.0f64;
    for segment in 1..=segments {
        let (start, end) = segment_range(steps, segments, segment);
        let mean = trainer.run_on(&mut state, source, key, end - start, |_, _| on_step())?;
        loss_sum += f64::from(mean) * (end - start) as f64;
        boundaries.push(state.clone());
    }
    let pseudo_gradient = global.iter().zip(&state.params).map(|(g, l)| g - l).collect();
    let mean_loss = if steps == 0 { 0.0 } else { (loss_sum / steps as f64) as f32 };
    Ok(InnerRoundResult { pseudo_gradient, mean_loss, boundaries })
}

/// Replays `steps` steps from `start` on an image `shard`: see
/// [`replay_on`].
pub fn replay(
    model: &dyn Model,
    recipe: &TrainingRecipe,
    dataset: &Dataset,
    shard: &[u32],
    key: RngKey,
    start: TrainState,
    steps: u64,
) -> Result<TrainState, TrainError> {
    let source = ImageShard { images: &dataset.train, indices: shard };
    replay_on(model, recipe, &source, key, start, steps)
}

/// Replays `steps` steps from `start` under `recipe`: what an auditor does
/// with a segment. The batches and the learning rate follow from `key` and
/// the state's own step counter, so the replay is the worker's computation
/// exactly, if the worker was honest.
pub fn replay_on(
    model: &dyn Model,
    recipe: &TrainingRecipe,
    source: &dyn BatchSource,
    key: RngKey,
    start: TrainState,
    steps: u64,
) -> Result<TrainState, TrainError> {
    replay_carried(model, recipe, source, key, start, 0, steps)
}

/// [`replay_on`] for a round whose moments were carried in after
/// `prior_steps` AdamW steps of earlier rounds ([`InnerState::Carry`]):
/// what an audit of such a segment needs besides its start state.
pub fn replay_carried(
    model: &dyn Model,
    recipe: &TrainingRecipe,
    source: &dyn BatchSource,
    key: RngKey,
    start: TrainState,
    prior_steps: u64,
    steps: u64,
) -> Result<TrainState, TrainError> {
    let mut state = start;
    let trainer = Trainer::new(model, InnerOptimizer::from(recipe), recipe.batch());
    trainer.with_prior_steps(prior_steps).run_on(&mut state, source, key, steps, |_, _| {})?;
    Ok(state)
}

/// The coordinator's half of a round: one outer step with the round's
/// aggregated pseudo-gradient, and the publication of its result. The
/// networked coordinator and the simulation both call this (after the same
/// [`Aggregate`]), which is what makes a networked run reproduce the
/// simulation bit for bit.
///
/// Under a full broadcast the step moves the published parameters and
/// returns `None`. Under [`Broadcast::Delta`] it moves the exact parameters
/// θ* (`state.exact`), then publishes the change δ = encode(θ* − θ_pub)
/// and sets θ_pub ← θ_pub + decode(δ) ([`apply_broadcast`], what a worker
/// does with δ): whatever the codec drops stays in θ* − θ_pub and is sent
/// in a later round. Returns the encoded δ.
pub fn outer_step(
    outer: Nesterov,
    state: &mut OuterState,
    delta: &[f32],
) -> Result<Option<Vec<u8>>, codec::CodecError> {
    // The outer learning rate of this step, ramped under `[outer] warmup`.
    let outer = Nesterov { lr: outer.lr_at(state.round + 1), ..outer };
    let published = match outer.broadcast {
        Broadcast::Full => {
            outer.apply(&mut state.params, &mut state.momentum, delta);
            None
        }
        Broadcast::Delta(codec) => {
            let exact = state.exact.get_or_insert_with(|| state.params.clone());
            outer.apply(exact, &mut state.momentum, delta);
            let change: Vec<f32> =
                exact.iter().zip(&state.params).map(|(exact, public)| exact - public).collect();
            let encoded = codec.encode(&change)?;
            state.params = apply_broadcast(&state.params, &encoded)?;
            Some(encoded)
        }
    };
    state.round += 1;
    Ok(published)
}

/// The published model after `base` given the round's encoded change: what
/// the coordinator publishes and a worker holding `base` rebuilds, with the
/// same arithmetic (an element-wise f32 sum). `encoded` is untrusted: it is
/// decoded with every check of [`codec::decode`], and a sum that overflows
/// is refused.
pub fn apply_broadcast(base: &[f32], encoded: &[u8]) -> Result<Vec<f32>, codec::CodecError> {
    let (_, change) = codec::decode(encoded, base.len())?;
    let next: Vec<f32> = base.iter().zip(&change).map(|(base, change)| base + change).collect();
    match next.iter().position(|value| !value.is_finite()) {
        Some(index) => Err(codec::CodecError::NonFinite { index }),
        None => Ok(next),
    }
}

/// The element-wise mean, summing the vectors in the order given.
pub fn mean_in_order(vectors: &[&[f32]]) -> Vec<f32> {
    assert!(!vectors.is_empty(), "the mean of nothing");
    let mut sum = vectors[0].to_vec();
    for vector in &vectors[1..] {
        assert_eq!(vector.len(), sum.len());
        for (total, &value) in sum.iter_mut().zip(*vector) {
            *total += value;
        }
    }
    let count = vectors.len() as f32;
    sum.iter_mut().for_each(|total| *total /= count);
    sum
}

/// The baseline: one global AdamW state; every step averages the workers'
/// gradients, then clips and schedules as the workers do (its step counter
/// is the run's step).
struct SyncBaseline<'m> {
    model: &'m dyn Model,
    config: &'m DilocoConfig,
    state: TrainState,
    trainer: Trainer<'m>,
    grads: Vec<Vec<f32>>,
    batches: Vec<StepBatch>,
    bytes: u64,
}

impl<'m> SyncBaseline<'m> {
    fn new(model: &'m dyn Model, config: &'m DilocoConfig, params: Vec<f32>) -> Self {
        let grads = vec![vec![0.0; params.len()]; config.workers];
        let batches = vec![StepBatch::default(); config.workers];
        let trainer = Trainer::new(model, InnerOptimizer::from(&config.recipe), config.recipe.batch());
        Self {
            model,
            config,
            state: TrainState::new(model.name(), params),
            trainer,
            grads,
            batches,
            bytes: 0,
        }
    }

    /// `inner_steps` synchronous steps; returns their mean loss.
    fn round(&mut self, sources: &[Box<dyn BatchSource + '_>], round: u64) -> Result<f32, TrainError> {
        let mut loss_sum = 0.0f64;
        let per_step_bytes = (self.state.params.len() * 4 * 2 * self.config.workers) as u64;
        let recipe = &self.config.recipe;
        let shard = round_shard_order(recipe.seed, round, self.config.workers as u32);
        for step in 0..recipe.inner_steps {
            let params = &self.state.params;
            let losses = self
                .grads
                .par_iter_mut()
                .zip(self.batches.par_iter_mut())
                .enumerate()
                .map(|(worker, (grads, batch))| {
                    let key = round_key(recipe, round, worker as u32).at_step(step);
                    sources[shard[worker] as usize].fill(key, recipe.batch(), batch)?;
                    self.model.loss_and_grad(params, batch.examples(), grads)
                })
                .collect::<Result<Vec<f32>, TrainError>>()?;
            let views: Vec<&[f32]> = self.grads.iter().map(Vec::as_slice).collect();
            let mut mean = mean_in_order(&views);
            self.trainer.apply_gradient(&mut self.state, &mut mean);
            loss_sum += losses.iter().map(|&loss| f64::from(loss)).sum::<f64>() / losses.len() as f64;
            self.bytes += per_step_bytes;
        }
        Ok((loss_sum / recipe.inner_steps.max(1) as f64) as f32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Codec;

    /// A few outer steps with pseudo-gradients of varied scale.
    fn steps(broadcast: Broadcast, rounds: usize) -> (OuterState, Vec<Option<Vec<u8>>>) {
        let outer = Nesterov { broadcast, ..Nesterov::default() };
        let start: Vec<f32> = (0..1000).map(|i| (i as f32 * 0.13).sin()).collect();
        let mut state = OuterState::new("m".into(), start);
        let published = (0..rounds)
            .map(|round| {
                let delta: Vec<f32> = (0..1000)
                    .map(|i| ((i * 7 + round * 31) as f32 * 0.011).cos() * 0.01 * (1.0 + (i % 13) as f32))
                    .collect();
                outer_step(outer, &mut state, &delta).unwrap()
            })
            .collect();
        (state, published)
    }

    #[test]
    fn a_compressed_broadcast_steps_the_exact_model_and_publishes_what_workers_rebuild() {
        let (full, published) = steps(Broadcast::Full, 6);
        assert!(full.exact.is_none() && published.iter().all(Option::is_none), "full: nothing apart");
        let (state, published) = steps(Broadcast::Delta(Codec::INT8), 6);
        // The exact model is the full broadcast's, bit for bit: the outer
        // step never sees the published one.
        assert_eq!(state.exact.as_deref(), Some(full.params.as_slice()));
        assert_eq!(state.momentum, full.momentum);
        // A worker that held the start and applied every published change
        // holds the published model, bit for bit.
        let mut worker: Vec<f32> = (0..1000).map(|i| (i as f32 * 0.13).sin()).collect();
        for change in &published {
            worker = apply_broadcast(&worker, change.as_ref().unwrap()).unwrap();
        }
        assert_eq!(worker, state.params);
        // Error feedback: what the codec lost is carried, not accumulated.
        // The published model trails the exact one by less than one int8
        // level of the last change, however many rounds ran.
        let (_, last) = codec::decode(published.last().unwrap().as_ref().unwrap(), 1000).unwrap();
        let level = last.iter().fold(0.0f32, |max, value| max.max(value.abs())) / 127.0;
        for (exact, public) in full.params.iter().zip(&state.params) {
            assert!((exact - public).abs() <= level, "{exact} vs {public} (level {level})");
        }
        assert_ne!(state.params, full.params, "int8 is lossy: the published model is not the exact one");
    }

    #[test]
    fn a_round_base_is_the_seen_model_moved_by_its_stand_in() {
        let seen = [1.0f32, -2.0, 0.5];
        let before = [0.5f32, -1.0, 0.5];
        let own = [0.25f32, 0.5, -0.75];
        let outer = |delay, eager| Nesterov { delay, eager, lr: 0.5, ..Nesterov::default() };
        // No stand-in: the published model itself, whatever is known.
        assert_eq!(round_base(&outer(0, Eager::None), &seen, Some(&before), Some(&own)), seen);
        assert_eq!(round_base(&outer(1, Eager::None), &seen, Some(&before), Some(&own)), seen);
        // The trend repeats the last step: seen + (seen - before).
        assert_eq!(round_base(&outer(1, Eager::Trend), &seen, Some(&before), Some(&own)), [1.5, -3.0, 0.5]);
        // The worker's own update through the outer learning rate.
        assert_eq!(
            round_base(&outer(1, Eager::Own), &seen, Some(&before), Some(&own)),
            [0.875, -2.25, 0.875]
        );
        // In the first rounds there is no step to repeat and no update sent.
        assert_eq!(round_base(&outer(1, Eager::Trend), &seen, None, Some(&own)), seen);
        assert_eq!(round_base(&outer(1, Eager::Own), &seen, Some(&before), None), seen);
    }

    #[test]
    fn inner_states_read_back_their_names_and_fresh_is_the_default() {
        for state in [InnerState::Fresh, InnerState::Carry] {
            assert_eq!(state.to_string().parse(), Ok(state));
        }
        assert_eq!(InnerState::Carry.to_string(), "carry");
        assert_eq!(InnerState::default(), InnerState::Fresh);
        assert!("warm".parse::<InnerState>().unwrap_err().contains("fresh or carry"));
    }

    #[test]
    fn a_hostile_change_is_refused() {
        let base = vec![f32::MAX; 4];
        let change = Codec::F32.encode(&[f32::MAX; 4]).unwrap();
        assert!(matches!(apply_broadcast(&base, &change), Err(codec::CodecError::NonFinite { index: 0 })));
        assert!(apply_broadcast(&base, b"junk").is_err());
        assert!(apply_broadcast(&base[..3], &change).is_err(), "another model's size");
    }
}
