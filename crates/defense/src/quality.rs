//! Quality: how much each checked update improves the model, on data no
//! worker is assigned, drawn after every worker has committed; and the
//! gate that decides whether verified work is paid.
//!
//! The score of an update is the relative drop in held-out loss from
//! applying it alone to the global model, at its share of the round's
//! outer step: `(L(g) - L(g - step * update)) / L(g)` with `step` the outer
//! learning rate over the number of updates aggregated. (Applying a whole
//! pseudo-gradient gives the worker's own end state, whose held-out loss is
//! worse than the global model's after the first few rounds for honest and
//! useless updates alike: a fresh AdamW's first steps are large and noisy,
//! and only their average is a good direction.) By default (`[quality]
//! score = "linear"`) the first-order term is taken instead, `step * g .
//! u / L(g)` with `g` the held-out gradient: one backward pass a round and
//! a dot product per update rather than a forward pass per update, for
//! scores that correlate 0.99 with the exact ones (`score = "exact"`).
//!
//! The evaluation batch is drawn from the validation split (held out of
//! every shard), fresh each round: a permutation of the split keyed by the
//! run's seed is walked block by block, reshuffled once used up, so no
//! example is scored twice until the split runs out and no fixed subset
//! of it decides a worker's record. The batch is public in advance; a
//! worker that trained on it would not be replaying its assignment, which
//! audits catch and slash (`docs/PAY.md`, "The evaluation batch").
//!
//! Pay is a gate, not a slope ([`Gate`], `docs/PAY.md`): every checked
//! update earns its full verified work unless a sequential test (a
//! one-sided CUSUM over rounds) finds the worker's updates worse than the
//! round's majority. Honest updates differ from one another by more than
//! their typical improvement late in training, so any pay that follows the
//! score itself pays for evaluation noise and minibatch luck; the test
//! instead weighs the evidence of many rounds and acts only when it is
//! overwhelming. Pay of the last few rounds stays in escrow, so a worker
//! harmful from its first round is denied all of it.

use std::collections::{BTreeMap, VecDeque};

use crowdtrain_data::LabeledImages;
use crowdtrain_recipe::{PayGate, QualityConfig, ScoreMethod};
use crowdtrain_train::{Model, TrainError, evaluate_subset, gradient_subset};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// Round `round`'s evaluation batch: `count` distinct examples of
/// `validation` (all of them if it has fewer), fresh every round for as
/// long as the split allows: each epoch of `validation.len() / count`
/// rounds walks one permutation keyed by `run` (the run's seed), so no
/// example is scored twice within an epoch ([`crowdtrain_data::rng::epoch_block`]).
pub fn round_eval_indices(validation: &[u32], count: usize, run: u64, round: u64) -> Vec<u32> {
    crowdtrain_data::rng::epoch_block("quality-eval-epoch", run, validation.len() as u64, count, round)
        .into_iter()
        .map(|index| validation[index as usize])
        .collect()
}

/// The fraction of an update applied when scoring it: its share of the
/// round's outer step, the outer learning rate over the updates aggregated.
pub fn score_step(outer_lr: f32, updates: usize) -> f32 {
    outer_lr / updates.max(1) as f32
}

/// Each update's score on the image examples `indices`, in update order,
/// by `method`: its relative held-out loss improvement when `step` times
/// it is applied alone to `global` ([`scores_with`]: a forward pass per
/// update), or that improvement's first-order term
/// ([`linear_scores_with`]: one forward and backward pass for the round).
/// An update whose model has a non-finite loss scores `-inf`.
pub fn scores(
    model: &dyn Model,
    global: &[f32],
    updates: &[&[f32]],
    step: f32,
    (images, indices): (&LabeledImages, &[u32]),
    method: ScoreMethod,
) -> Result<Vec<f64>, TrainError> {
    if indices.is_empty() {
        return Ok(vec![0.0; updates.len()]);
    }
    match method {
        ScoreMethod::Exact => scores_with(global, updates, step, &|params| {
            Ok(evaluate_subset(model, params, images, indices)?.loss)
        }),
        ScoreMethod::Linear => linear_scores_with(global, updates, step, &|params, grads| {
            gradient_subset(model, params, images, indices, grads)
        }),
    }
}

/// [`scores`] on round `round`'s evaluation batch of
/// text: `sequences` validation windows, fresh each round
/// ([`crowdtrain_data::text::round_evaluation_batch`], keyed by `run`),
/// the loss per token.
#[allow(clippy::too_many_arguments)]
pub fn text_scores(
    model: &dyn Model,
    global: &[f32],
    updates: &[&[f32]],
    step: f32,
    validation: crowdtrain_data::text::Tokens<'_>,
    context: usize,
    sequences: usize,
    method: ScoreMethod,
    (run, round): (u64, u64),
) -> Result<Vec<f64>, TrainError> {
    let batch = crowdtrain_data::text::round_evaluation_batch(validation, sequences, context, run, round)?;
    let examples = crowdtrain_train::text::token_examples(&batch);
    match method {
        ScoreMethod::Exact => scores_with(global, updates, step, &|params| {
            Ok(model.loss_sum(params, examples)?.evaluation().loss)
        }),
        ScoreMethod::Linear => linear_scores_with(global, updates, step, &|params, grads| {
            Ok(f64::from(model.loss_and_grad(params, examples, grads)?))
        }),
    }
}

/// What a round's updates are scored on: the images held out of every
/// shard, or the text's validation split. The coordinator and the battery
/// both score through here, so an image model and a language model are
/// judged by the same rule on the same kind of batch.
#[derive(Debug, Clone, Copy)]
pub enum HeldOut<'a> {
    /// `validation` indexes `train`'s held-out images.
    Images { train: &'a LabeledImages, validation: &'a [u32] },
    /// Windows of `context` tokens of the validation split.
    Text { validation: crowdtrain_data::text::Tokens<'a>, context: usize },
}

impl HeldOut<'_> {
    /// Each update's score ([`scores`], [`text_scores`],
    /// as `config.score` says) on round `round`'s batch of about
    /// `config.eval_examples` held-out examples, fresh each round and keyed
    /// by `run` (the run's seed): images, or predicted tokens (whole
    /// sequences, at least one). The coordinator and the battery both call
    /// this with the same `(run, round)`, so they score on the same batch.
    #[allow(clippy::too_many_arguments)]
    pub fn scores(
        &self,
        model: &dyn Model,
        global: &[f32],
        updates: &[&[f32]],
        step: f32,
        config: &QualityConfig,
        run: u64,
        round: u64,
    ) -> Result<Vec<f64>, TrainError> {
        match *self {
            Self::Images { train, validation } => {
                let eval = round_eval_indices(validation, config.eval_examples, run, round);
                scores(model, global, updates, step, (train, &eval), config.score)
            }
            Self::Text { validation, context } => {
                let sequences = Self::sequences(config.eval_examples, context);
                text_scores(
                    model,
                    global,
                    updates,
                    step,
                    validation,
                    context,
                    sequences,
                    config.score,
                    (run, round),
                )
            }
        }
    }

    /// How many held-out examples [`Self::scores`] measures on (what the pay
    /// gate's power depends on): `eval_examples` images, at most all of
    /// them; for text, the tokens its whole sequences predict, at most
    /// every window of the split.
    pub fn scored_examples(&self, eval_examples: usize) -> usize {
        match *self {
            Self::Images { validation, .. } => eval_examples.min(validation.len()),
            Self::Text { validation, context } => {
                let windows = crowdtrain_data::text::validation_sequences(validation.len(), context);
                Self::sequences(eval_examples, context).min(windows) * context
            }
        }
    }

    /// Sequences of `context` predictions giving about `eval_examples` of
    /// them, at least one.
    fn sequences(eval_examples: usize, context: usize) -> usize {
        eval_examples.div_ceil(context).max(1)
    }
}

/// The scoring rule, whatever the data: `(L(g) - L(g - step u)) / L(g)`
/// for each update `u`, with `loss` the held-out loss of a parameter
/// vector; `-inf` where that loss is not finite.
pub fn scores_with(
    global: &[f32],
    updates: &[&[f32]],
    step: f32,
    loss: &(dyn Fn(&[f32]) -> Result<f64, TrainError> + Sync),
) -> Result<Vec<f64>, TrainError> {
    let base = loss(global)?;
    updates
        .par_iter()
        .map(|update| {
            let local: Vec<f32> = global.iter().zip(*update).map(|(g, u)| g - step * u).collect();
            let after = loss(&local)?;
            Ok(if after.is_finite() && base > 0.0 { (base - after) / base } else { f64::NEG_INFINITY })
        })
        .collect()
}

/// The held-out loss's gradient at the given parameters, written to the
/// second argument; returns the loss.
pub type Gradient<'a> = dyn Fn(&[f32], &mut [f32]) -> Result<f64, TrainError> + Sync + 'a;

/// The linearised scoring rule: `step * g . u / L(g)` for each update
/// `u`, with `gradient` writing the held-out loss's gradient at `global`
/// to its second argument and returning the loss: the first-order term of
/// [`scores_with`]'s `(L(g) - L(g - step u)) / L(g)`, at the cost of one
/// backward pass for the round and one dot product per update instead of
/// a forward pass per update. The dot products are the deterministic
/// chunked ones of [`crate::linalg::dot`], so scores are bit-identical
/// whatever the thread count. `-inf` where the product is not finite (a
/// non-finite update) or the loss is not positive and finite.
pub fn linear_scores_with(
    global: &[f32],
    updates: &[&[f32]],
    step: f32,
    gradient: &Gradient<'_>,
) -> Result<Vec<f64>, TrainError> {
    let mut grads = vec![0.0f32; global.len()];
    let base = gradient(global, &mut grads)?;
    Ok(updates
        .par_iter()
        .map(|update| {
            let score = f64::from(step) * crate::linalg::dot(&grads, update) / base;
            if score.is_finite() && base.is_finite() && base > 0.0 { score } else { f64::NEG_INFINITY }
        })
        .collect())
}

/// One round's scores, standardised.
#[derive(Debug, Clone, PartialEq)]
pub struct Deviations {
    /// Each update's `(score - median) / spread`; `-inf` for a non-finite
    /// score.
    pub deviations: Vec<f64>,
    /// `median / spread`: how far below the majority a useless update (one
    /// that improves nothing) stands this round.
    pub useless: f64,
    /// The round's own spread, 1.4826 median absolute deviations, before
    /// any floor.
    pub round_spread: f64,
}

/// Each update's standardised deviation from the round's majority:
/// `(score - median) / spread`, the spread being 1.4826 median absolute
/// deviations (the standard deviation, were the scores normal, and blind
/// to a minority of outliers). `None` where the round has no power: fewer
/// than `min_updates` finite scores, an evaluation batch under
/// `min_eval_examples`, or no spread at all. The round alone, with no
/// floor: [`Gate::observe`] floors the spread by the recent rounds'.
pub fn deviations(scores: &[f64], examples: usize, config: &QualityConfig) -> Option<Deviations> {
    deviations_above(scores, examples, config, 0.0)
}

/// [`deviations`] with the spread taken as at least `floor`.
pub fn deviations_above(
    scores: &[f64],
    examples: usize,
    config: &QualityConfig,
    floor: f64,
) -> Option<Deviations> {
    let mut finite: Vec<f64> = scores.iter().copied().filter(|score| score.is_finite()).collect();
    if finite.len() < config.min_updates || examples < config.min_eval_examples {
        return None;
    }
    finite.sort_by(f64::total_cmp);
    let median = crate::checks::median_of_sorted(&finite);
    let mut distances: Vec<f64> = finite.iter().map(|score| (score - median).abs()).collect();
    distances.sort_by(f64::total_cmp);
    let round_spread = 1.4826 * crate::checks::median_of_sorted(&distances);
    if round_spread.is_nan() || round_spread <= 0.0 {
        return None;
    }
    let spread = round_spread.max(floor);
    Some(Deviations {
        deviations: scores
            .iter()
            .map(|score| if score.is_finite() { (score - median) / spread } else { f64::NEG_INFINITY })
            .collect(),
        useless: median / spread,
        round_spread,
    })
}

/// The evidence one round adds against an update at `deviation`: the
/// log-likelihood ratio of "`shift` spreads below the median" against "at
/// it", with the shift raised to the round's useless-update deviation when
/// that is larger (early in training a useless update stands tens of
/// spreads below the median, and one such round is decisive), and bounded
/// by `±max_evidence`, scaled up by `shift / (2 * clamp * config.shift)`
/// where that is above 1: one freak round of an honest worker, whose
/// deviations have heavier tails than a normal's, cannot decide, but one
/// in which a useless update stands over six spreads below the median adds
/// more than 2.5 nats (`docs/PAY.md` has the measurements that set it).
/// Never more than half the threshold, though: no single round decides.
/// A round's spread comes from a handful of scores, and when most of them
/// happen to cluster it collapses (measured: 4 of 7 honest scores within
/// 3·10^-4 of the median, a tenth of the usual spread), so the round's
/// useless-update deviation, and with it the bound, is ten times too large,
/// and an honest worker's ordinary shortfall read as 21 spreads crossed the
/// threshold alone. A useless update still is denied in two such rounds,
/// within the escrow window, and loses its escrow.
pub fn round_evidence(deviation: f64, useless: f64, config: &QualityConfig) -> f64 {
    let shift = config.shift.max(useless);
    let decisive = config.max_evidence() * (shift / (2.0 * config.clamp * config.shift)).max(1.0);
    let bound = decisive.min(config.max_evidence().max(config.threshold / 2.0));
    (-shift * deviation.min(config.clamp) - shift * shift / 2.0).clamp(-bound, bound)
}

/// One worker's judgement in one round.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Judged {
    pub worker: u64,
    /// Relative held-out loss improvement of its update alone.
    pub score: f64,
    /// Its standardised deviation from the round's median, when the round
    /// has power.
    pub deviation: Option<f64>,
    /// The gate's statistic after this round: the evidence, in nats, that
    /// the worker's updates are worse than the majority's.
    pub evidence: f64,
    pub gate: PayGate,
    /// Credits for this round's work: all of it unless the gate denies.
    pub credits: u64,
    /// Credits of earlier rounds still in escrow that this round's denial
    /// takes back: `(first round, credits)`.
    pub withheld: Option<(u64, u64)>,
}

/// A worker's standing with the gate.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Standing {
    /// The CUSUM statistic: evidence of worse-than-majority updates.
    pub evidence: f64,
    /// Rounds in which the test had power.
    pub rounds_with_power: u64,
    pub denied: bool,
    /// `(round, credits)` paid in the last `escrow_rounds` rounds: taken
    /// back if the gate denies before they vest.
    pub escrow: Vec<(u64, u64)>,
}

impl Standing {
    pub fn gate(&self) -> PayGate {
        match (self.denied, self.rounds_with_power) {
            (true, _) => PayGate::Deny,
            (false, 0) => PayGate::NoPower,
            (false, _) => PayGate::Pass,
        }
    }
}

/// The pay gate: per worker, a one-sided CUSUM of the log-likelihood ratio
/// of "its updates sit `shift` spreads below the round's median" against
/// "they sit at it", over its standardised deviations bounded to
/// `±clamp`. Each round with power adds `-shift * deviation - shift² / 2`
/// (at most `shift * clamp - shift² / 2`); the statistic never falls below
/// 0 nor rises above twice the threshold (a worker that mends its ways is
/// paid again after about `2 * threshold / shift²` rounds). While it is at
/// or above `threshold` the worker's work earns nothing; on crossing, the
/// credits of its last `escrow_rounds` rounds are taken back, which is all
/// a worker harmful from its first round could have been paid before the
/// test could decide. Deterministic in the scores alone, so the ledger's
/// rewards rebuild it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Gate {
    pub workers: BTreeMap<u64, Standing>,
    /// The own spreads of the last `spread_rounds` rounds with power, oldest
    /// first: the floor of the next round's spread is a fraction of their
    /// median.
    #[serde(default)]
    pub recent_spreads: VecDeque<f64>,
}

impl Gate {
    /// The least spread the next round is standardised by: `spread_floor`
    /// times the median of the recent rounds' own spreads (0 before any
    /// round with power). Measured: when four of seven honest scores
    /// cluster, a round's spread falls to a tenth of the usual; in
    /// all-honest runs of 7 scored workers over 60 rounds every honest
    /// round that added more than 2.5 nats had a spread below two-thirds of
    /// the recent median, and such rounds made the gate's false denials
    /// (`docs/PAY.md`, "Error rates and power, measured").
    pub fn spread_floor(&self, config: &QualityConfig) -> f64 {
        if self.recent_spreads.is_empty() {
            return 0.0;
        }
        let mut spreads: Vec<f64> = self.recent_spreads.iter().copied().collect();
        spreads.sort_by(f64::total_cmp);
        config.spread_floor * crate::checks::median_of_sorted(&spreads)
    }

    /// Whether `worker`'s escrowed credits are held past the escrow window
    /// ([`QualityConfig::suspicion`]): the ledger's vesting asks this, so
    /// it vests exactly what the gate would no longer take back.
    pub fn holds(&self, worker: u64, config: &QualityConfig) -> bool {
        self.workers.get(&worker).is_some_and(|standing| standing.evidence >= config.suspicion())
    }

    /// Judges round `round`'s `(worker, score)` pairs, each for `units` of
    /// verified work, scored on `examples` held-out examples; returns the
    /// judgements in the order given.
    pub fn observe(
        &mut self,
        round: u64,
        scores: &[(u64, f64)],
        units: u64,
        examples: usize,
        config: &QualityConfig,
    ) -> Vec<Judged> {
        let values: Vec<f64> = scores.iter().map(|&(_, score)| score).collect();
        let round_deviations = deviations_above(&values, examples, config, self.spread_floor(config));
        if let Some(round) = &round_deviations {
            self.recent_spreads.push_back(round.round_spread);
            while self.recent_spreads.len() > config.spread_rounds {
                self.recent_spreads.pop_front();
            }
        }
        let escrow = config.escrow_rounds();
        scores
            .iter()
            .enumerate()
            .map(|(index, &(worker, score))| {
                let deviation =
                    round_deviations.as_ref().map(|round| (round.deviations[index], round.useless));
                let standing = self.workers.entry(worker).or_default();
                let was_denied = standing.denied;
                if let Some((deviation, useless)) = deviation {
                    standing.rounds_with_power += 1;
                    let step = round_evidence(deviation, useless, config);
                    standing.evidence = (standing.evidence + step).clamp(0.0, 2.0 * config.threshold);
                    standing.denied = standing.evidence >= config.threshold;
                }
                // Credits vest after the escrow window, unless the test is
                // still deciding about this worker.
                let held = standing.evidence >= config.suspicion();
                standing.escrow.retain(|&(paid, _)| held || paid + escrow > round);
                let withheld = (standing.denied && !was_denied && !standing.escrow.is_empty()).then(|| {
                    let first = standing.escrow[0].0;
                    let credits = standing.escrow.drain(..).map(|(_, credits)| credits).sum();
                    (first, credits)
                });
                let credits = if standing.denied { 0 } else { units };
                if credits > 0 {
                    standing.escrow.push((round, credits));
                }
                Judged {
                    worker,
                    score,
                    deviation: deviation.map(|(deviation, _)| deviation.max(-f64::MAX)),
                    evidence: standing.evidence,
                    gate: standing.gate(),
                    credits,
                    withheld,
                }
            })
            .collect()
    }
}

/// One round as the gate saw it: each scored update's worker and score,
/// and how many held-out examples scored them. Pay is a function of these
/// alone, so a recorded run can be judged again by any gate
/// ([`PayRecord::book`], `crowdtrain gate`) without training it again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoredRound {
    pub round: u64,
    pub examples: usize,
    /// `(worker, score)`; `None` for a non-finite score (JSON has no
    /// infinities), read back as `-inf`.
    pub scores: Vec<(u64, Option<f64>)>,
}

impl ScoredRound {
    pub fn new(round: u64, pairs: &[(u64, f64)], examples: usize) -> Self {
        let scores =
            pairs.iter().map(|&(worker, score)| (worker, score.is_finite().then_some(score))).collect();
        Self { round, examples, scores }
    }

    /// The gate's input: `(worker, score)`, `-inf` where not finite.
    pub fn pairs(&self) -> Vec<(u64, f64)> {
        self.scores.iter().map(|&(worker, score)| (worker, score.unwrap_or(f64::NEG_INFINITY))).collect()
    }
}

/// What the gate paid over a run, by worker slot: the battery and
/// `crowdtrain gate replay` book every round through here.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PayRecord {
    /// Credits kept: paid less what the gate took back.
    pub credits: Vec<u64>,
    /// Work units of every scored (checked) update.
    pub verified: Vec<u64>,
    /// Whether the gate denied the worker in some round.
    pub denied: Vec<bool>,
    /// Rounds whose work the gate denied.
    pub rounds_denied: Vec<u64>,
    /// The highest evidence the worker reached: how close it came to
    /// being denied.
    pub peak_evidence: Vec<f64>,
    /// Scored updates in rounds where the gate had no power.
    pub no_power_updates: u64,
}

impl PayRecord {
    pub fn new(workers: usize) -> Self {
        Self {
            credits: vec![0; workers],
            verified: vec![0; workers],
            denied: vec![false; workers],
            rounds_denied: vec![0; workers],
            peak_evidence: vec![0.0; workers],
            no_power_updates: 0,
        }
    }

    /// Judges `round` through `gate`, each update worth `units`, and books
    /// what it pays and takes back. Workers are slots below
    /// `self.credits.len()`.
    pub fn book(&mut self, gate: &mut Gate, round: &ScoredRound, units: u64, config: &QualityConfig) {
        for judged in gate.observe(round.round, &round.pairs(), units, round.examples, config) {
            let worker = judged.worker as usize;
            self.credits[worker] += judged.credits;
            self.credits[worker] -= judged.withheld.map_or(0, |(_, withheld)| withheld);
            self.verified[worker] += units;
            self.denied[worker] |= judged.gate == PayGate::Deny;
            self.rounds_denied[worker] += u64::from(judged.gate == PayGate::Deny);
            self.peak_evidence[worker] = self.peak_evidence[worker].max(judged.evidence);
            self.no_power_updates += u64::from(judged.deviation.is_none());
        }
    }

    /// `rounds` judged from the start by a fresh gate.
    pub fn replay(workers: usize, rounds: &[ScoredRound], units: u64, config: &QualityConfig) -> Self {
        let mut gate = Gate::default();
        let mut record = Self::new(workers);
        rounds.iter().for_each(|round| record.book(&mut gate, round, units, config));
        record
    }

    /// The largest relative gap, over the first `honest` slots, between a
    /// worker's share of their credits and its share of their verified
    /// work (0 when the gate paid every one of them its work).
    pub fn honest_share_gap(&self, honest: usize) -> f64 {
        let honest_credits: u64 = self.credits[..honest].iter().sum();
        let honest_work: u64 = self.verified[..honest].iter().sum();
        (0..honest)
            .map(|worker| {
                let credit_share = self.credits[worker] as f64 / honest_credits.max(1) as f64;
                let work_share = self.verified[worker] as f64 / honest_work.max(1) as f64;
                if work_share > 0.0 { (credit_share - work_share).abs() / work_share } else { 1.0 }
            })
            .fold(0.0, f64::max)
    }

    /// An attacker's mean credits (the slots from `honest` on) over an
    /// honest worker's; 0 without attackers.
    pub fn attacker_credits_vs_honest(&self, honest: usize) -> f64 {
        let attackers = self.credits.len() - honest;
        if attackers == 0 {
            return 0.0;
        }
        let honest_credits: u64 = self.credits[..honest].iter().sum();
        let attacker_credits: u64 = self.credits[honest..].iter().sum();
        (attacker_credits as f64 / attackers as f64) / (honest_credits as f64 / honest as f64).max(1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Eight honest-looking scores around 0.01 and, in slot 9, `bad`.
    fn round_with(bad: f64, wobble: f64) -> Vec<(u64, f64)> {
        round_at(0.01, bad, wobble)
    }

    /// Eight honest-looking scores around `center`, 0.001 apart, and `bad`.
    fn round_at(center: f64, bad: f64, wobble: f64) -> Vec<(u64, f64)> {
        let mut pairs: Vec<(u64, f64)> =
            (0..8).map(|worker| (worker, center + wobble * (worker as f64 - 3.5) * 0.001)).collect();
        pairs.push((9, bad));
        pairs
    }

    #[test]
    fn honest_work_is_paid_in_full_and_a_harmful_worker_loses_even_its_escrow() {
        let config = QualityConfig::default();
        let units = 3200;
        let mut gate = Gate::default();
        let mut paid = [0u64; 10];
        let mut withheld_at = None;
        for round in 0..20 {
            // Honest scores wobble from round to round; slot 9 is far below
            // the median every round.
            let wobble = if round % 2 == 0 { 1.0 } else { -1.0 };
            for judged in gate.observe(round, &round_with(-0.05, wobble), units, 512, &config) {
                paid[judged.worker as usize] += judged.credits;
                if let Some((first, credits)) = judged.withheld {
                    assert_eq!(judged.worker, 9);
                    paid[9] -= credits;
                    withheld_at = Some((round, first, credits));
                }
            }
        }
        assert!(paid[..8].iter().all(|&credits| credits == 20 * units), "{paid:?}");
        assert_eq!(paid[9], 0, "denied, its escrow too");
        // Each round adds at least 2.5 nats (more here: a useless update
        // would stand about 4 spreads below the median, and this one stands
        // far below that): the threshold of 10 is crossed within the escrow
        // rounds, and every round before is taken back.
        assert_eq!(config.escrow_rounds(), 4);
        let (round, first, credits) = withheld_at.unwrap();
        assert!(round < config.escrow_rounds(), "{withheld_at:?}");
        assert_eq!((first, credits), (0, round * units));
        let standing = &gate.workers[&9];
        assert_eq!((standing.gate(), standing.evidence), (PayGate::Deny, 2.0 * config.threshold), "capped");
        assert_eq!(gate.workers[&0].gate(), PayGate::Pass);
        assert_eq!(gate.workers[&0].evidence, 0.0, "honest evidence stays at its floor");
    }

    #[test]
    fn pay_does_not_vest_while_the_gate_is_still_deciding() {
        // A worker 2.6 spreads below the median every round, late in
        // training (a useless update stands less than a spread below it):
        // each round adds 2.1 nats, so the gate needs five rounds, one more
        // than the escrow window. Its first round's pay must not vest in
        // the meantime (measured on the network: a sign-flip kept one
        // round's pay that way, `tests/defense.rs`).
        let config = QualityConfig::default();
        let spread = 1.4826 * 0.002;
        let bad = 0.0005 - 2.6 * spread;
        let units = 100;
        let mut gate = Gate::default();
        let mut paid = 0;
        let mut decided = None;
        for round in 0..8 {
            let judged = gate.observe(round, &round_at(0.001, bad, 1.0), units, 512, &config);
            assert!((judged[8].deviation.unwrap() + 2.6).abs() < 1e-9, "{:?}", judged[8]);
            paid += judged[8].credits;
            if let Some((first, credits)) = judged[8].withheld {
                paid -= credits;
                decided = Some((round, first, credits));
            }
            assert!(!gate.holds(0, &config), "honest pay vests on time");
        }
        assert!(config.escrow_rounds() < 5);
        assert_eq!(decided, Some((4, 0, 4 * units)), "every round before the decision taken back");
        assert_eq!(paid, 0);
        assert!(gate.holds(9, &config));
    }

    #[test]
    fn one_round_whose_spread_collapsed_does_not_deny_an_honest_worker() {
        // Round 39 of `battery --workers 8 --attackers 1 --attacks zero
        // --rounds 60`, seed 4 (7 honest scores; the zero update refused by
        // the checks): four scores within 3e-4 of the median make the spread
        // a tenth of the usual, and worker 6, 0.008 below the median (an
        // ordinary shortfall), stood 21 spreads below it. That round alone
        // crossed the threshold and took back its escrow.
        let scores = [
            (0, 0.011435856077020473),
            (1, 0.016569904897866736),
            (2, 0.011148701693090393),
            (3, 0.008011562983866603),
            (4, 0.011578800519138845),
            (5, 0.011313401976734161),
            (6, 0.002999355551850826),
        ];
        let config = QualityConfig::default();
        let mut gate = Gate::default();
        let judged = gate.observe(39, &scores, 1280, 1500, &config);
        assert!(judged[6].deviation.unwrap() < -20.0, "{:?}", judged[6]);
        assert_eq!((judged[6].gate, judged[6].credits, judged[6].withheld), (PayGate::Pass, 1280, None));
        assert_eq!(judged[6].evidence, config.threshold / 2.0, "at most half the threshold a round");
        // The same again in the next round decides: a worker that stands
        // that far below every round is still denied at once.
        let again = gate.observe(40, &scores, 1280, 1500, &config);
        assert_eq!(again[6].gate, PayGate::Deny);
        assert_eq!(again[6].withheld, Some((39, 1280)));
    }

    #[test]
    fn a_round_whose_spread_collapsed_is_standardised_by_the_recent_rounds_spread() {
        // The same run as above (seed 4, zero attack, 8 workers, 60 rounds),
        // rounds 29-39 as `crowdtrain battery --json` recorded them: the
        // gate has seen ten rounds whose own spreads have a median of
        // 0.0048; round 39's is 0.00039, a twelfth of it.
        let rounds: [[f64; 7]; 11] = [
            [
                0.007714974659405005,
                0.001520503234505872,
                0.00954773909634185,
                0.0021193491996464786,
                0.006359802384175732,
                0.00528684817445751,
                0.011072493877090606,
            ],
            [
                0.006699816714268143,
                0.007354417741295127,
                0.0031746515841464817,
                0.010529311991333421,
                0.0065169415266667155,
                0.008427388719751332,
                0.007979271377523555,
            ],
            [
                0.008710533184200597,
                0.005275245847785131,
                0.00819862796825178,
                0.00740087187310541,
                0.015221884855812528,
                0.011965580551079751,
                0.005560040776092813,
            ],
            [
                0.012313796929058578,
                0.008433936790732536,
                0.006420196310891376,
                0.005423634662226918,
                -0.0018300268070866703,
                0.0006656815910235148,
                0.007876979227105283,
            ],
            [
                0.019730962187776226,
                0.024893791729019864,
                0.022401050558996934,
                0.011780957872354255,
                0.023227230890780586,
                0.033332533813822535,
                0.021183079718370967,
            ],
            [
                0.01616373885504253,
                0.014464807563453272,
                0.010581560316677221,
                0.007266717622294919,
                0.009211538852316887,
                0.006120914808327052,
                0.011325593212372883,
            ],
            [
                0.005524467593012864,
                0.000564483061063572,
                0.0011149919911179551,
                0.00930583646033828,
                0.023025849982038146,
                0.015147996889463172,
                0.005848418400364144,
            ],
            [
                0.012987864696066453,
                0.001575135945682873,
                0.0044713771741582125,
                0.012195372259511176,
                0.011006763927350047,
                0.006105479894715459,
                0.008509760848634059,
            ],
            [
                0.007543704743692211,
                0.023372831546394558,
                0.021053923578557766,
                0.0110980213335482,
                0.005091378186325288,
                -0.0023360376762699706,
                0.00590626515969714,
            ],
            [
                0.006057921431479797,
                0.011106085412635759,
                -0.0027586571046519536,
                -0.00027598091270915326,
                0.006359009518066968,
                0.0006032213837855062,
                0.007715862887283765,
            ],
            [
                0.011435856077020473,
                0.016569904897866736,
                0.011148701693090393,
                0.008011562983866603,
                0.011578800519138845,
                0.011313401976734161,
                0.002999355551850826,
            ],
        ];
        let config = QualityConfig::default();
        let mut gate = Gate::default();
        let mut before = 0.0;
        for (offset, scores) in rounds.iter().enumerate() {
            let pairs: Vec<(u64, f64)> =
                scores.iter().enumerate().map(|(worker, &score)| (worker as u64, score)).collect();
            if offset == 10 {
                let floor = gate.spread_floor(&config);
                assert!((floor - 0.5 * 0.0048).abs() < 0.0001, "{floor}");
                before = gate.workers[&6].evidence;
            }
            let judged = gate.observe(29 + offset as u64, &pairs, 1280, 1500, &config);
            assert!(
                judged.iter().all(|judged| judged.gate == PayGate::Pass),
                "round {}: {judged:?}",
                29 + offset
            );
        }
        // Worker 6 stands 3.4 spreads of the floor below the median, not 21
        // of the round's own: one round's worth of ordinary evidence.
        let last = &gate.workers[&6];
        assert_eq!(gate.recent_spreads.len(), config.spread_rounds);
        let deviation = deviations_above(&rounds[10], 1500, &config, 0.5 * 0.00482).unwrap().deviations[6];
        assert!((-3.5..-3.3).contains(&deviation), "{deviation}");
        assert!(last.evidence - before <= config.max_evidence(), "{before} -> {}", last.evidence);
        // Without the floor the same round counts as 21 spreads.
        let alone = deviations(&rounds[10], 1500, &config).unwrap();
        assert!(alone.deviations[6] < -20.0 && alone.round_spread < 0.0004, "{alone:?}");
        let unfloored = QualityConfig { spread_floor: 0.0, ..config };
        assert_eq!(Gate::default().spread_floor(&unfloored), 0.0);
    }

    #[test]
    fn a_worker_that_mends_its_ways_is_paid_again() {
        let config = QualityConfig::default();
        let mut gate = Gate::default();
        for round in 0..8 {
            gate.observe(round, &round_at(0.001, -0.05, 1.0), 1, 512, &config);
        }
        assert_eq!(gate.workers[&9].gate(), PayGate::Deny);
        // Typical from now on, late in training (a useless update stands
        // less than one spread below the median): each round takes back
        // shift² / 2 = 0.5 nats.
        let mut denied_rounds = 0;
        for round in 8..40 {
            let judged = gate.observe(round, &round_at(0.001, 0.001, 1.0), 1, 512, &config)[8];
            denied_rounds += u64::from(judged.gate == PayGate::Deny);
            assert_eq!(judged.withheld, None);
        }
        assert_eq!(denied_rounds, 20, "from 20 nats to 10 at 0.5 a round, denied at 10 itself");
        assert_eq!(gate.workers[&9].gate(), PayGate::Pass);
    }

    #[test]
    fn rounds_without_power_pay_verified_work_and_say_so() {
        let config = QualityConfig::default();
        let mut gate = Gate::default();
        // Too few updates to judge: even a far-off score is paid.
        let judged = gate.observe(0, &[(0, 0.01), (1, 0.011), (2, -0.5)], 7, 512, &config);
        assert!(judged.iter().all(|judged| judged.credits == 7 && judged.deviation.is_none()));
        assert!(judged.iter().all(|judged| judged.gate == PayGate::NoPower));
        // Too few held-out examples (the bundled subset's 100): likewise.
        let judged = gate.observe(1, &round_with(-0.5, 1.0), 7, 100, &config);
        assert!(judged.iter().all(|judged| judged.credits == 7 && judged.gate == PayGate::NoPower));
        // All scores equal: no spread, no power.
        assert_eq!(deviations(&[0.1; 6], 512, &config), None);
        // A non-finite score weighs the most a round can.
        let round = deviations(&[0.01, 0.012, 0.009, 0.011, f64::NEG_INFINITY], 512, &config).unwrap();
        assert!(round.deviations[..4].iter().all(|deviation| deviation.abs() < 2.0), "{round:?}");
        assert_eq!(
            round_evidence(round.deviations[4], round.useless, &config),
            (config.max_evidence() * (round.useless / 6.0).max(1.0)).min(config.threshold / 2.0)
        );
        // A round where a useless update stands 60 spreads below: half the
        // threshold (25 nats unbounded): two such rounds decide, one not.
        assert_eq!(round_evidence(-60.0, 60.0, &config), config.threshold / 2.0);
        // A round where a useless update stands out by far less: the bound
        // is the base one, and a typical update gives evidence back.
        assert_eq!(round_evidence(-10.0, 0.5, &config), config.max_evidence());
        assert_eq!(round_evidence(0.0, 0.5, &config), -0.5);
        assert_eq!(round_evidence(10.0, 0.5, &config), -config.max_evidence());
    }

    #[test]
    fn the_gate_is_rebuilt_bit_for_bit_from_the_scores() {
        let config = QualityConfig::default();
        let rounds: Vec<Vec<(u64, f64)>> = (0..30u64)
            .map(|round| {
                (0..6).map(|worker| (worker, ((round * 7 + worker * 13) % 11) as f64 * 1e-3 - 4e-3)).collect()
            })
            .collect();
        let mut live = Gate::default();
        let judged: Vec<Vec<Judged>> = rounds
            .iter()
            .enumerate()
            .map(|(round, pairs)| live.observe(round as u64, pairs, 5, 512, &config))
            .collect();
        let mut rebuilt = Gate::default();
        for (round, pairs) in rounds.iter().enumerate() {
            assert_eq!(rebuilt.observe(round as u64, pairs, 5, 512, &config), judged[round]);
        }
        assert_eq!(rebuilt, live);
    }

    #[test]
    fn settings_are_checked() {
        assert!(QualityConfig::default().validate().is_ok());
        let bad = [
            (QualityConfig { shift: 0.0, ..QualityConfig::default() }, "shift"),
            (QualityConfig { clamp: 0.5, ..QualityConfig::default() }, "clamp"),
            (QualityConfig { threshold: f64::NAN, ..QualityConfig::default() }, "threshold"),
            (QualityConfig { threshold: 1e9, ..QualityConfig::default() }, "threshold"),
            (QualityConfig { min_updates: 2, ..QualityConfig::default() }, "min_updates"),
            (QualityConfig { eval_examples: 0, ..QualityConfig::default() }, "eval_examples"),
        ];
        for (config, field) in bad {
            assert_eq!(config.validate().unwrap_err().0, field, "{config:?}");
        }
    }

    #[test]
    fn text_updates_that_lower_the_held_out_loss_score_above_those_that_raise_it() {
        use crowdtrain_data::RngKey;
        use crowdtrain_data::text::{TextDataset, TextSource, TokenizerSpec};
        use crowdtrain_train::{Examples, GptConfig, ModelKind};
        let cache = tempfile::tempdir().unwrap();
        let data =
            TextDataset::load(&TextSource::resolve(None), &TokenizerSpec::Char, Some(cache.path()), &|_| {})
                .unwrap();
        let config =
            GptConfig { layers: 1, heads: 2, width: 16, context: 16, vocab: data.tokenizer().vocab_size() };
        let model = crowdtrain_train::build_model(ModelKind::Gpt(config));
        let global = model.layout().initialize(0);
        // A descent direction (the gradient on a validation batch) helps;
        // its negation hurts, by either rule.
        let batch =
            crowdtrain_data::text::evaluation_batch(data.validation(), 8, 16, RngKey::new(1, 0, 0, 0))
                .unwrap();
        let mut grads = vec![0.0; global.len()];
        model
            .loss_and_grad(
                &global,
                Examples::Tokens { inputs: &batch.inputs, targets: &batch.targets, sequences: 8 },
                &mut grads,
            )
            .unwrap();
        let harmful: Vec<f32> = grads.iter().map(|g| -g).collect();
        let held_out = HeldOut::Text { validation: data.validation(), context: 16 };
        for score in [ScoreMethod::Exact, ScoreMethod::Linear] {
            let quality = QualityConfig { eval_examples: 128, score, ..QualityConfig::default() };
            let scores =
                held_out.scores(model.as_ref(), &global, &[&grads, &harmful], 0.05, &quality, 3, 0).unwrap();
            assert!(scores[0] > 0.0 && scores[1] < 0.0, "{score}: {scores:?}");
            let again =
                held_out.scores(model.as_ref(), &global, &[&grads, &harmful], 0.05, &quality, 3, 0).unwrap();
            assert_eq!(scores, again, "{score}: the same run and round, the same batch, the same bits");
        }
        assert_eq!(held_out.scored_examples(128), 128, "8 whole windows of 16");
    }

    #[test]
    fn eval_batches_are_fresh_each_round_until_the_split_runs_out() {
        let validation: Vec<u32> = (1000..1100).collect();
        // 30 a round: 3 rounds an epoch of the split, 10 examples left over.
        let batch = round_eval_indices(&validation, 30, 1, 2);
        assert_eq!(batch.len(), 30);
        assert!(batch.iter().all(|index| validation.contains(index)));
        assert_eq!(
            batch,
            round_eval_indices(&validation, 30, 1, 2),
            "the same run and round, the same batch"
        );
        assert_ne!(batch, round_eval_indices(&validation, 30, 2, 2), "the run keys it");
        let mut epoch: Vec<u32> =
            (3..6).flat_map(|round| round_eval_indices(&validation, 30, 1, round)).collect();
        epoch.sort_unstable();
        epoch.dedup();
        assert_eq!(epoch.len(), 90, "no example twice within an epoch of the split");
        assert_eq!(round_eval_indices(&validation, 500, 1, 7).len(), 100, "at most the whole split");
    }

    /// An MLP a few rounds into training on the bundled subset, and honest
    /// updates: pseudo-gradients of short local runs from it.
    fn trained_images() -> (Box<dyn Model>, crowdtrain_data::Dataset, Vec<f32>, Vec<Vec<f32>>) {
        use crowdtrain_train::diloco::{inner_round, round_key, shards};
        let dataset = crowdtrain_data::DataSource::Bundled.load().unwrap();
        let recipe = crowdtrain_train::TrainingRecipe {
            inner_steps: 10,
            ..crowdtrain_train::TrainingRecipe::with_seed(0)
        };
        let model = crowdtrain_train::build_model(recipe.model);
        let shards = shards(&recipe, &dataset.train.labels, 4).unwrap();
        let mut global = model.layout().initialize(0);
        let mut updates = Vec::new();
        for round in 0..3 {
            updates = (0..4)
                .map(|slot| {
                    let key = round_key(&recipe, round, slot);
                    let result = inner_round(
                        model.as_ref(),
                        &recipe,
                        &global,
                        &dataset,
                        &shards[slot as usize],
                        key,
                        1,
                    )
                    .unwrap();
                    result.pseudo_gradient
                })
                .collect();
            if round < 2 {
                for (param, update) in global.iter_mut().zip(&updates[0]) {
                    *param -= 0.5 * update;
                }
            }
        }
        (model, dataset, global, updates)
    }

    #[test]
    fn the_linear_score_is_the_exact_one_to_first_order_and_ranks_a_sign_flip_last() {
        let (model, dataset, global, honest) = trained_images();
        let indices: Vec<u32> = (0..400).collect();
        let mean: Vec<f32> =
            (0..global.len()).map(|i| honest.iter().map(|update| update[i]).sum::<f32>() / 4.0).collect();
        let flipped: Vec<f32> = mean.iter().map(|value| -value).collect();
        let mut updates: Vec<&[f32]> = honest.iter().map(Vec::as_slice).collect();
        updates.push(&flipped);
        // A small step: the exact score's curvature term is negligible and
        // the two rules agree closely.
        let step = 1e-3;
        let batch = (&dataset.train, indices.as_slice());
        let exact = scores(model.as_ref(), &global, &updates, step, batch, ScoreMethod::Exact).unwrap();
        let linear = scores(model.as_ref(), &global, &updates, step, batch, ScoreMethod::Linear).unwrap();
        for (exact, linear) in exact.iter().zip(&linear) {
            assert!((exact - linear).abs() <= 0.05 * exact.abs() + 1e-6, "exact {exact}, linear {linear}");
        }
        // At the scoring step of a round (outer lr 0.7 over 5 updates) the
        // sign-flip ranks below every honest update by both rules.
        let step = score_step(0.7, updates.len());
        for rule in [ScoreMethod::Exact, ScoreMethod::Linear] {
            let scored = scores(model.as_ref(), &global, &updates, step, batch, rule).unwrap();
            assert!(scored[..4].iter().all(|&score| score > scored[4]), "{scored:?}");
            assert!(scored[..4].iter().all(|&score| score > 0.0), "honest updates help: {scored:?}");
        }
        // A non-finite update scores -inf, as under the exact rule.
        let broken = vec![f32::NAN; global.len()];
        let scored = scores(model.as_ref(), &global, &[&broken], step, batch, ScoreMethod::Linear).unwrap();
        assert_eq!(scored, [f64::NEG_INFINITY]);
    }

    #[test]
    fn linear_scores_are_bit_identical_across_thread_counts() {
        let (model, dataset, global, honest) = trained_images();
        let updates: Vec<&[f32]> = honest.iter().map(Vec::as_slice).collect();
        // More examples than one evaluation chunk, so chunks are combined.
        let indices: Vec<u32> = (0..1500).collect();
        let on = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            let batch = (&dataset.train, indices.as_slice());
            pool.install(|| {
                scores(model.as_ref(), &global, &updates, 0.2, batch, ScoreMethod::Linear).unwrap()
            })
        };
        let one = on(1);
        assert!(one.iter().all(|score| score.is_finite()), "{one:?}");
        for threads in [2, 4] {
            assert_eq!(
                one.iter().map(|score| score.to_bits()).collect::<Vec<_>>(),
                on(threads).iter().map(|score| score.to_bits()).collect::<Vec<_>>(),
                "{threads} threads"
            );
        }
    }
}
