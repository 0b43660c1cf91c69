//! The attack battery: DiLoCo rounds in one process with some workers
//! attacking the model, defended only by the checks, robust aggregation
//! and the pay gate (no audits), through the same [`ModelDefense`] and
//! [`Gate`] the coordinator uses.
//!
//! Attackers are omniscient where the attack needs it: they see the round's
//! honest updates, which is the worst case the defence must bound. They
//! commit after the honest workers (they need the honest updates first), so
//! a copy is always the later of two identical updates.

use crowdtrain_data::{Dataset, round_shard_order, split_validation};
use crowdtrain_train::codec::{self, Codec, Encode};
use crowdtrain_train::diloco::{RunData, inner_round_on, mean_in_order, outer_step, round_key};
use crowdtrain_train::text::TextRun;
use crowdtrain_train::trainer::BatchSource;
use crowdtrain_train::{
    Evaluation, ModelKind, Nesterov, OuterState, TrainError, TrainingRecipe, build_model,
};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::quality::{self, Gate, PayRecord, ScoredRound};
use crate::{DefenseConfig, ModelDefense, Submission, attack, linalg};

/// What the attacking workers send.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Attack {
    /// No attackers: every worker honest (the clean run).
    None,
    /// The negated mean of the honest updates.
    SignFlip,
    /// Gaussian noise at `scale` times the mean honest norm.
    Noise { scale: f32 },
    /// Honest training on labels mapped y -> 9 - y.
    LabelFlip,
    /// The honest mean plus Baruch et al.'s z honest standard deviations,
    /// per coordinate.
    Alie,
    /// `-epsilon` times the honest mean.
    Ipm { epsilon: f32 },
    /// A bit-for-bit copy of an honest worker's update.
    Copy,
    /// A near copy of an honest worker's update (plus noise at 10^-3 of its
    /// norm), committed before it: order would make the original the copy.
    CopyFirst,
    /// An honest worker's update of the previous round, again (nothing in
    /// the first round, when there is nothing to replay).
    Stale,
    /// An all-zero update: a free-rider.
    Zero,
    /// Not-a-number everywhere.
    Nan,
}

impl Attack {
    pub fn name(&self) -> String {
        match self {
            Self::None => "none".into(),
            Self::SignFlip => "sign-flip".into(),
            Self::Noise { scale } if *scale == 1.0 => "noise".into(),
            Self::Noise { scale } => format!("noise:{scale}"),
            Self::LabelFlip => "label-flip".into(),
            Self::Alie => "alie".into(),
            Self::Ipm { epsilon } => format!("ipm:{epsilon}"),
            Self::Copy => "copy".into(),
            Self::CopyFirst => "copy-first".into(),
            Self::Stale => "stale".into(),
            Self::Zero => "zero".into(),
            Self::Nan => "nan".into(),
        }
    }

    /// The battery's attacks, in report order.
    pub fn all() -> Vec<Self> {
        vec![
            Self::SignFlip,
            Self::Noise { scale: 1.0 },
            Self::Noise { scale: 100.0 },
            Self::LabelFlip,
            Self::Alie,
            Self::Ipm { epsilon: 0.5 },
            Self::Copy,
            Self::CopyFirst,
            Self::Stale,
            Self::Zero,
            Self::Nan,
        ]
    }
}

impl std::str::FromStr for Attack {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        std::iter::once(Self::None).chain(Self::all()).find(|attack| attack.name() == text).ok_or_else(|| {
            let names: Vec<String> = Self::all().iter().map(Self::name).collect();
            format!("unknown attack {text:?}; expected one of {}", names.join(", "))
        })
    }
}

/// What a battery trains on: images (an image model) or a text (the GPT).
#[derive(Clone, Copy)]
pub enum BatteryData<'a> {
    /// Shards of the training images; the updates are scored on a held-out
    /// fraction of them, the final model judged on the test set.
    Images(&'a Dataset),
    /// Contiguous token ranges of the training split; scored and judged on
    /// the validation split.
    Text(TextRun<'a>),
}

impl BatteryData<'_> {
    fn run_data(&self) -> &dyn RunData {
        match self {
            Self::Images(dataset) => *dataset,
            Self::Text(text) => text,
        }
    }

    /// Whether `attack` can be run on this data (label flipping needs
    /// labels).
    pub fn supports(&self, attack: Attack) -> bool {
        !(attack == Attack::LabelFlip && matches!(self, Self::Text(_)))
    }

    /// The model learnt nothing or worse: chance accuracy on images, or a
    /// loss no better than guessing uniformly over `model`'s vocabulary.
    fn collapsed(&self, model: ModelKind, evaluation: &Evaluation) -> bool {
        match (self, model) {
            (Self::Text(_), ModelKind::Gpt(gpt)) => evaluation.loss >= (gpt.vocab as f64).ln(),
            _ => evaluation.accuracy < 0.2,
        }
    }
}

/// One battery run's settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatteryConfig {
    /// What every worker, honest or not, is assigned (attackers train or
    /// craft their update from it).
    pub recipe: TrainingRecipe,
    pub workers: usize,
    /// How many of the workers attack (the last slots).
    pub attackers: usize,
    pub rounds: u64,
    pub outer: Nesterov,
    pub defense: DefenseConfig,
}

/// What one run gave.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatteryRun {
    pub attack: String,
    pub seed: u64,
    pub test_accuracy: f64,
    pub test_loss: f64,
    /// The model went non-finite, or collapsed to chance accuracy.
    pub diverged: bool,
    /// Credits per worker, by slot (the attackers last).
    pub credits: Vec<u64>,
    /// Verified work units per worker: submissions that passed the checks.
    pub verified_work: Vec<u64>,
    /// The attackers' share of all credits.
    pub attacker_credit_share: f64,
    /// An attacker's mean credits over an honest worker's mean credits.
    pub attacker_credits_vs_honest: f64,
    /// The largest relative gap, over honest workers, between a worker's
    /// share of the honest workers' credits and its share of their verified
    /// work.
    pub honest_share_gap: f64,
    /// Workers the pay gate denied at some round, by slot.
    pub denied: Vec<bool>,
    /// Rounds whose work the gate denied, by slot.
    pub rounds_denied: Vec<u64>,
    /// The highest evidence (nats) the gate held against each slot: the
    /// threshold's margin.
    pub peak_evidence: Vec<f64>,
    /// Scored updates in rounds where the gate had no power (paid as
    /// verified work).
    pub no_power_updates: u64,
    /// Submissions the checks refused, attackers' and honest workers'.
    pub refused_attacker: u64,
    pub refused_honest: u64,
    /// The final global state's hash (parameters, outer momentum, round).
    pub state_hash: String,
    /// Honest workers: the first slots.
    pub honest_workers: usize,
    /// Verified work units of one accepted update.
    pub work_units: u64,
    /// Every round's scores as the gate saw them: `crowdtrain gate` judges
    /// them again with other settings, or resamples them.
    pub rounds: Vec<ScoredRound>,
}

/// Runs `config` with `attack` on `data`.
pub fn run(config: &BatteryConfig, attack: Attack, data: &BatteryData<'_>) -> Result<BatteryRun, TrainError> {
    assert!(config.attackers < config.workers, "someone must be honest");
    if !data.supports(attack) {
        return Err(TrainError::BadConfig(format!("the {} attack needs labelled images", attack.name())));
    }
    let recipe = &config.recipe;
    let model = build_model(recipe.model);
    let attackers = if attack == Attack::None { 0 } else { config.attackers };
    let honest_count = config.workers - attackers;
    let quality_config = config.defense.quality;
    let validation = match data {
        BatteryData::Images(dataset) => {
            split_validation(dataset.train.len(), recipe.validation_fraction, recipe.seed).1
        }
        BatteryData::Text(_) => Vec::new(),
    };
    let held_out = match data {
        BatteryData::Images(dataset) => {
            quality::HeldOut::Images { train: &dataset.train, validation: &validation }
        }
        BatteryData::Text(text) => {
            quality::HeldOut::Text { validation: text.data.validation(), context: text.context }
        }
    };
    let sources = data.run_data().worker_sources(recipe, config.workers)?;
    let flipped = match data {
        BatteryData::Images(dataset) if attack == Attack::LabelFlip => Some(attack::flipped_labels(dataset)),
        _ => None,
    };
    let flipped_sources = match &flipped {
        Some(flipped) => flipped.worker_sources(recipe, config.workers)?,
        None => Vec::new(),
    };
    let mut global = OuterState::new(model.name(), model.layout().initialize(recipe.seed));
    let mut defense = ModelDefense::new(config.defense.checks, config.defense.aggregator);
    let mut gate = Gate::default();
    let work_units = recipe.work_units();
    let mut pay = PayRecord::new(config.workers);
    let mut scored_rounds = Vec::new();
    let (mut refused_attacker, mut refused_honest) = (0u64, 0u64);
    let mut previous_honest: Vec<Vec<f32>> = Vec::new();
    for round in 0..config.rounds {
        let shard = round_shard_order(recipe.seed, round, config.workers as u32);
        let train = |slot: usize, sources: &[Box<dyn BatchSource + '_>]| -> Result<Wire, TrainError> {
            let key = round_key(recipe, round, slot as u32);
            let result = inner_round_on(
                model.as_ref(),
                recipe,
                &global.params,
                sources[shard[slot] as usize].as_ref(),
                key,
                1,
                &mut || {},
            )?;
            Wire::encode(recipe.codec, &result.pseudo_gradient)
        };
        let honest: Vec<Wire> =
            (0..honest_count).into_par_iter().map(|slot| train(slot, &sources)).collect::<Result<_, _>>()?;
        let honest_values: Vec<&[f32]> = honest.iter().map(|wire| wire.values.as_slice()).collect();
        let reference = mean_in_order(&honest_values);
        let mut malicious: Vec<(usize, Wire)> = Vec::new();
        for slot in honest_count..config.workers {
            let victim = slot % honest_count;
            let crafted = match attack {
                Attack::None => unreachable!("no attackers in a clean run"),
                Attack::SignFlip => attack::sign_flip(&reference),
                Attack::Noise { scale } => {
                    let honest_norm = honest_values.iter().map(|values| linalg::norm(values)).sum::<f64>()
                        / honest_count as f64;
                    let key = round_key(recipe, round, slot as u32);
                    attack::noise(key, reference.len(), f64::from(scale) * honest_norm)
                }
                Attack::LabelFlip => {
                    malicious.push((slot, train(slot, &flipped_sources)?));
                    continue;
                }
                Attack::Alie => {
                    attack::a_little_is_enough(&honest_values, attack::baruch_z(config.workers, attackers))
                }
                Attack::Ipm { epsilon } => attack::inner_product_manipulation(&reference, epsilon),
                Attack::Copy => {
                    malicious.push((slot, honest[victim].clone()));
                    continue;
                }
                Attack::CopyFirst => {
                    let values = &honest[victim].values;
                    let key = round_key(recipe, round, slot as u32);
                    let noise = attack::noise(key, values.len(), 1e-3 * linalg::norm(values));
                    values.iter().zip(noise).map(|(value, noise)| value + noise).collect()
                }
                Attack::Stale => match previous_honest.get(victim) {
                    Some(old) => old.clone(),
                    None => continue,
                },
                Attack::Zero => vec![0.0; reference.len()],
                Attack::Nan => {
                    malicious.push((slot, Wire::raw(vec![f32::NAN; reference.len()])));
                    continue;
                }
            };
            malicious.push((slot, Wire::encode(recipe.codec, &crafted)?));
        }
        // The network challenges a pair of copies that no replay has told
        // apart yet: each replays a segment drawn after the reveals, which
        // an honest worker passes and a copier fails. The battery has no
        // audits, so it takes that outcome as given: honest updates are
        // proven (pairs of attackers' updates fall back on order).
        let honest_first = honest.iter().enumerate();
        let attackers = malicious.iter().map(|(slot, wire)| (*slot, wire));
        let ordered: Vec<(usize, &Wire)> = if attack == Attack::CopyFirst {
            attackers.chain(honest_first).collect()
        } else {
            honest_first.chain(attackers).collect()
        };
        let submissions: Vec<Submission<'_>> = ordered
            .into_iter()
            .map(|(slot, wire)| Submission {
                worker: slot as u64,
                values: &wire.values,
                digest: wire.digest,
                proven: slot < honest_count,
            })
            .collect();
        let decision = defense.decide(&submissions, reference.len());
        for (worker, _) in &decision.refused {
            if (*worker as usize) < honest_count {
                refused_honest += 1;
            } else {
                refused_attacker += 1;
            }
        }
        // In worker order, as `decision.passed` (the scores pair with it).
        let passed: Vec<&[f32]> = decision
            .passed
            .iter()
            .filter_map(|worker| submissions.iter().find(|submission| submission.worker == *worker))
            .map(|submission| submission.values)
            .collect();
        let step = quality::score_step(config.outer.lr, passed.len());
        let scores = held_out.scores(
            model.as_ref(),
            &global.params,
            &passed,
            step,
            &quality_config,
            recipe.seed,
            round,
        )?;
        let pairs: Vec<(u64, f64)> = decision.passed.iter().copied().zip(scores).collect();
        let examples = held_out.scored_examples(quality_config.eval_examples);
        let scored = ScoredRound::new(round, &pairs, examples);
        pay.book(&mut gate, &scored, work_units, &quality_config);
        scored_rounds.push(scored);
        match decision.aggregate.clone() {
            Some(aggregate) => {
                outer_step(config.outer, &mut global, &aggregate).map_err(TrainError::from)?;
                defense.commit(decision);
            }
            None => defense.set_aside(decision),
        }
        previous_honest = honest.into_iter().map(|wire| wire.values).collect();
    }
    let evaluation = data.run_data().evaluate(model.as_ref(), &global.params)?;
    let collapsed = data.collapsed(recipe.model, &evaluation);
    Ok(summarize(
        config,
        attack,
        honest_count,
        &global,
        (evaluation, collapsed),
        (pay, scored_rounds, work_units),
        (refused_attacker, refused_honest),
    ))
}

/// An update as it crosses the network: decoded values and the digest of
/// the bytes that carried them.
#[derive(Debug, Clone)]
struct Wire {
    values: Vec<f32>,
    digest: [u8; 32],
}

impl Wire {
    fn encode(codec: Codec, values: &[f32]) -> Result<Self, TrainError> {
        let bytes = codec.encode(values)?;
        let (_, values) = codec::decode(&bytes, values.len())?;
        Ok(Self { values, digest: *blake3::hash(&bytes).as_bytes() })
    }

    /// Values no codec carries (non-finite ones), hashed as raw bytes.
    fn raw(values: Vec<f32>) -> Self {
        let mut hasher = blake3::Hasher::new();
        values.iter().for_each(|value| {
            hasher.update(&value.to_le_bytes());
        });
        Self { values, digest: *hasher.finalize().as_bytes() }
    }
}

fn summarize(
    config: &BatteryConfig,
    attack: Attack,
    honest_count: usize,
    global: &OuterState,
    (evaluation, collapsed): (Evaluation, bool),
    (pay, rounds, work_units): (PayRecord, Vec<ScoredRound>, u64),
    (refused_attacker, refused_honest): (u64, u64),
) -> BatteryRun {
    let total_credits: u64 = pay.credits.iter().sum();
    let attacker_credits: u64 = pay.credits[honest_count..].iter().sum();
    let finite = global.params.iter().all(|value| value.is_finite());
    BatteryRun {
        attack: attack.name(),
        seed: config.recipe.seed,
        test_accuracy: evaluation.accuracy,
        test_loss: evaluation.loss,
        diverged: !finite || !evaluation.loss.is_finite() || collapsed,
        attacker_credit_share: attacker_credits as f64 / total_credits.max(1) as f64,
        attacker_credits_vs_honest: pay.attacker_credits_vs_honest(honest_count),
        honest_share_gap: pay.honest_share_gap(honest_count),
        no_power_updates: pay.no_power_updates,
        credits: pay.credits,
        verified_work: pay.verified,
        denied: pay.denied,
        rounds_denied: pay.rounds_denied,
        peak_evidence: pay.peak_evidence,
        refused_attacker,
        refused_honest,
        state_hash: global.hash().to_hex(),
        honest_workers: honest_count,
        work_units,
        rounds,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attacks_parse_from_their_names() {
        for attack in Attack::all() {
            assert_eq!(attack.name().parse::<Attack>(), Ok(attack));
        }
        assert!("krum".parse::<Attack>().unwrap_err().contains("sign-flip"));
    }

    #[test]
    fn a_run_is_reproducible_bit_for_bit() {
        let dataset = crowdtrain_data::DataSource::Bundled.load().unwrap();
        let config = BatteryConfig {
            recipe: TrainingRecipe { inner_steps: 3, batch_size: 32, ..TrainingRecipe::with_seed(1) },
            workers: 5,
            attackers: 1,
            rounds: 2,
            outer: Nesterov::default(),
            defense: DefenseConfig::default(),
        };
        let data = BatteryData::Images(&dataset);
        let one = run(&config, Attack::SignFlip, &data).unwrap();
        let two = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap()
            .install(|| run(&config, Attack::SignFlip, &data).unwrap());
        assert_eq!(one, two);
        // Pay is a function of the recorded scores: judged again, they pay
        // the same (what `crowdtrain gate replay` relies on).
        assert_eq!(one.rounds.len(), 2);
        let paid_again =
            PayRecord::replay(config.workers, &one.rounds, one.work_units, &config.defense.quality);
        assert_eq!((&paid_again.credits, &paid_again.denied), (&one.credits, &one.denied));
        let copied = run(&config, Attack::Copy, &data).unwrap();
        assert_eq!(copied.refused_attacker, 2, "the copy is refused in both rounds");
        assert_eq!(copied.credits[4], 0);
        // A near copy committed before its victim: still the copy, and the
        // victim (worker 0) is paid as every other honest worker.
        let first = run(&config, Attack::CopyFirst, &data).unwrap();
        assert_eq!((first.refused_attacker, first.refused_honest), (2, 0), "the copy, not its victim");
        assert_eq!(first.credits[4], 0);
        assert_eq!(first.credits[0], first.credits[1]);
        assert_eq!(first.credits[0], first.verified_work[0]);
    }
}
