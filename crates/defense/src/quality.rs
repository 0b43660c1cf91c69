//! Quality: how much each checked update improves the model, on data no
//! worker is assigned, drawn after every worker has committed; and the
//! multiplier that turns verified work into credits.
//!
//! The score of an update is the relative drop in held-out loss from
//! applying it alone to the global model, at its share of the round's
//! outer step: `(L(g) - L(g - step * update)) / L(g)` with `step` the outer
//! learning rate over the number of updates aggregated. (Applying a whole
//! pseudo-gradient gives the worker's own end state, whose held-out loss is
//! worse than the global model's after the first few rounds for honest and
//! useless updates alike: a fresh AdamW's first steps are large and noisy,
//! and only their average is a good direction.) The evaluation batch is
//! drawn from the validation split (held out of every shard) with
//! randomness keyed by the round's beacon, which exists only once the
//! commitments are in: no worker can know the batch while it trains.
//!
//! Scores are measured in typical updates of their round
//! ([`reference_score`]) and smoothed per worker over rounds; negative
//! scores count, so a harmful update drags its worker's quality down for
//! rounds to come. The multiplier rises linearly from 0 at `zero_credit_at`
//! to 1 at `full_credit_at`: credit never exceeds verified work. Honest
//! updates differ from one another by more than their typical
//! improvement late in training, so ranking honest workers would pay for
//! noise; the multiplier instead separates useful work (full credit) from
//! useless or harmful work (none), with the thresholds set where the
//! battery measured no honest worker falling and no noise update rising.

use std::collections::BTreeMap;

use crowdtrain_data::LabeledImages;
use crowdtrain_data::rng::{RngKey, keyed_rng, sample_distinct};
use crowdtrain_recipe::QualityConfig;
use crowdtrain_train::{Model, TrainError, evaluate_subset};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// The stream the round's evaluation batch is drawn from: keyed by the
/// round's beacon (known only after the commit phase) and the round.
pub fn eval_key(beacon: &[u8; 32], round: u64) -> RngKey {
    let word = u64::from_le_bytes(beacon[..8].try_into().expect("8 bytes"));
    RngKey::new(word, round, 0, 0)
}

/// The round's evaluation batch: `count` distinct examples of `validation`
/// (all of them if it has fewer), in draw order.
pub fn eval_indices(validation: &[u32], count: usize, key: RngKey) -> Vec<u32> {
    let count = count.min(validation.len());
    let mut rng = keyed_rng("quality-eval", key);
    sample_distinct(&mut rng, validation.len() as u64, count)
        .into_iter()
        .map(|index| validation[index as usize])
        .collect()
}

/// The fraction of an update applied when scoring it: its share of the
/// round's outer step, the outer learning rate over the updates aggregated.
pub fn score_step(outer_lr: f32, updates: usize) -> f32 {
    outer_lr / updates.max(1) as f32
}

/// Each update's relative held-out loss improvement when `step` times it
/// is applied alone to `global`, in update order, on the image examples
/// `indices`. An update whose model has a non-finite loss scores `-inf`.
pub fn scores(
    model: &dyn Model,
    global: &[f32],
    updates: &[&[f32]],
    step: f32,
    images: &LabeledImages,
    indices: &[u32],
) -> Result<Vec<f64>, TrainError> {
    if indices.is_empty() {
        return Ok(vec![0.0; updates.len()]);
    }
    scores_with(global, updates, step, &|params| Ok(evaluate_subset(model, params, images, indices)?.loss))
}

/// [`scores`] on the round's evaluation batch of text: `sequences`
/// validation windows drawn with `key` (the beacon's, [`eval_key`]), the
/// loss per token.
#[allow(clippy::too_many_arguments)]
pub fn text_scores(
    model: &dyn Model,
    global: &[f32],
    updates: &[&[f32]],
    step: f32,
    validation: crowdtrain_data::text::Tokens<'_>,
    context: usize,
    sequences: usize,
    key: RngKey,
) -> Result<Vec<f64>, TrainError> {
    let batch = crowdtrain_data::text::evaluation_batch(validation, sequences, context, key)?;
    scores_with(global, updates, step, &|params| {
        Ok(model.loss_sum(params, crowdtrain_train::text::token_examples(&batch))?.evaluation().loss)
    })
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

/// One worker's quality in one round.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Scored {
    pub worker: u64,
    /// Relative held-out loss improvement of its update alone.
    pub score: f64,
    /// The score in typical updates of the round ([`reference_score`]),
    /// bounded to `[NORMALIZED_MIN, NORMALIZED_MAX]`.
    pub normalized: f64,
    /// Its smoothed quality after this round.
    pub smoothed: f64,
    /// What its work units are multiplied by this round.
    pub multiplier: f64,
}

/// The fewest and the most typical updates one round's score can count
/// for: a single lucky or unlucky round moves the smoothed quality only so
/// far. The floor is nearer: an honest update that hurt the held-out loss
/// in one round (they do, late in training) must not cost its worker many
/// rounds of credit, and an update that hurts round after round reaches
/// zero credit all the same.
pub const NORMALIZED_MIN: f64 = -1.0;
pub const NORMALIZED_MAX: f64 = 2.0;

/// A worker's quality so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Standing {
    pub smoothed: f64,
    /// Rounds scored.
    pub rounds: u64,
}

/// Each worker's smoothed quality, carried from round to round.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Quality {
    pub workers: BTreeMap<u64, Standing>,
}

impl Quality {
    /// Folds in one round's `(worker, score)` pairs; returns each worker's
    /// standing, in the order given.
    ///
    /// A worker's smoothed quality is the mean of its normalised scores
    /// over its first `1 / smoothing` rounds, then an exponential average
    /// with weight `smoothing`: a newcomer is judged on all it has done so
    /// far, not on a prior, and an old hand on its recent past.
    pub fn observe(&mut self, scores: &[(u64, f64)], config: &QualityConfig) -> Vec<Scored> {
        let reference = reference_score(scores.iter().map(|&(_, score)| score));
        scores
            .iter()
            .map(|&(worker, score)| {
                let normalized = match (reference > 0.0, score.is_finite()) {
                    (_, false) => NORMALIZED_MIN,
                    (true, true) => (score / reference).clamp(NORMALIZED_MIN, NORMALIZED_MAX),
                    (false, true) => 0.0,
                };
                let standing = self.workers.entry(worker).or_default();
                standing.rounds += 1;
                let weight = config.smoothing.max(1.0 / standing.rounds as f64);
                standing.smoothed = (1.0 - weight) * standing.smoothed + weight * normalized;
                let smoothed = standing.smoothed;
                Scored { worker, score, normalized, smoothed, multiplier: config.multiplier(smoothed) }
            })
            .collect()
    }
}

/// What one typical update of the round scores: the median score, or the
/// spread of the scores (1.4826 median absolute deviations) when that is
/// larger. Late in training an honest update's held-out improvement is
/// small beside the differences between honest updates, and the median can
/// come close to zero; measuring in units of the spread then keeps every
/// score's weight bounded, so a noise update scoring near zero stays near
/// zero instead of being divided by almost nothing. Non-finite scores are
/// left out; 0 if nothing is left.
pub fn reference_score(scores: impl IntoIterator<Item = f64>) -> f64 {
    let mut finite: Vec<f64> = scores.into_iter().filter(|score| score.is_finite()).collect();
    if finite.is_empty() {
        return 0.0;
    }
    finite.sort_by(f64::total_cmp);
    let median = crate::checks::median_of_sorted(&finite);
    let mut deviations: Vec<f64> = finite.iter().map(|score| (score - median).abs()).collect();
    deviations.sort_by(f64::total_cmp);
    let spread = 1.4826 * crate::checks::median_of_sorted(&deviations);
    median.max(spread).max(0.0)
}

/// Credits for `units` of verified work at `multiplier`, rounded to the
/// nearest unit.
pub fn credits(units: u64, multiplier: f64) -> u64 {
    (units as f64 * multiplier).round() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typical_updates_earn_full_credit_and_harmful_ones_none() {
        let config = QualityConfig::default();
        let mut quality = Quality::default();
        let round = quality.observe(&[(0, 0.10), (1, 0.11), (2, 0.09), (3, -0.2), (4, 0.0)], &config);
        let multipliers: Vec<f64> = round.iter().map(|scored| scored.multiplier).collect();
        assert_eq!(multipliers, vec![1.0, 1.0, 1.0, 0.0, 0.0], "{round:?}");
        assert_eq!(round[3].normalized, NORMALIZED_MIN, "bounded");
        // Negative scores count: a good round does not erase a harmful one.
        let again = quality.observe(&[(0, 0.10), (1, 0.10), (2, 0.10), (3, 0.10), (4, 0.10)], &config);
        assert_eq!(again[3].multiplier, 0.0, "smoothed {}", again[3].smoothed);
        assert_eq!(again[3].smoothed, (NORMALIZED_MIN + 1.0) / 2.0, "the mean of its first rounds");
        assert_eq!(quality.workers[&4].rounds, 2);
    }

    #[test]
    fn the_reference_is_the_median_or_the_spread_and_credit_rises_linearly() {
        assert_eq!(reference_score([0.1, 0.1, 0.1, f64::NAN]), 0.1);
        // A round whose median update barely helps: the spread is the unit.
        let reference = reference_score([-0.02, 0.0, 0.001, 0.02, 0.03]);
        assert!((reference - 1.4826 * 0.019).abs() < 1e-12, "{reference}");
        assert_eq!(reference_score([-1.0, -1.0]), 0.0, "nothing helped: no reference");
        assert_eq!(reference_score([]), 0.0);
        let config = QualityConfig::default();
        assert_eq!(config.multiplier(config.zero_credit_at), 0.0);
        assert_eq!(config.multiplier(config.full_credit_at), 1.0);
        assert_eq!(config.multiplier(5.0), 1.0, "credit never exceeds the work");
        let middle = 0.5 * (config.zero_credit_at + config.full_credit_at);
        assert!((config.multiplier(middle) - 0.5).abs() < 1e-12);
        assert_eq!(credits(3200, 1.0), 3200);
        assert_eq!(credits(3200, 0.5), 1600);
    }

    #[test]
    fn a_newcomer_is_judged_on_all_its_rounds_then_on_its_recent_ones() {
        let config = QualityConfig { smoothing: 0.25, ..QualityConfig::default() };
        let mut quality = Quality::default();
        let mut last = 0.0;
        for round in 0..8 {
            let score = if round < 4 { 0.2 } else { -0.1 };
            let scored = quality.observe(&[(0, 0.1), (1, 0.1), (2, 0.1), (9, score)], &config);
            last = scored[3].smoothed;
            if round == 3 {
                assert_eq!(last, NORMALIZED_MAX, "four rounds at the bound");
            }
        }
        // Four rounds of -1 typical update at weight 0.25 from 2.0.
        let expected = (0..4).fold(NORMALIZED_MAX, |smoothed, _| 0.75 * smoothed - 0.25);
        assert!((last - expected).abs() < 1e-12, "{last} vs {expected}");
        assert!(quality.observe(&[(9, f64::NEG_INFINITY)], &config)[0].normalized < 0.0);
    }

    #[test]
    fn text_updates_that_lower_the_held_out_loss_score_above_those_that_raise_it() {
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
        // its negation hurts.
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
        let key = eval_key(&[3u8; 32], 0);
        let scores =
            text_scores(model.as_ref(), &global, &[&grads, &harmful], 0.05, data.validation(), 16, 8, key)
                .unwrap();
        assert!(scores[0] > 0.0 && scores[1] < 0.0, "{scores:?}");
        let again =
            text_scores(model.as_ref(), &global, &[&grads, &harmful], 0.05, data.validation(), 16, 8, key)
                .unwrap();
        assert_eq!(scores, again, "the same beacon, the same batch, the same bits");
    }

    #[test]
    fn eval_batches_are_keyed_and_drawn_from_the_validation_split() {
        let validation: Vec<u32> = (1000..1100).collect();
        let batch = eval_indices(&validation, 30, RngKey::new(1, 2, 3, 0));
        assert_eq!(batch.len(), 30);
        assert!(batch.iter().all(|index| validation.contains(index)));
        assert_eq!(batch, eval_indices(&validation, 30, RngKey::new(1, 2, 3, 0)));
        assert_ne!(batch, eval_indices(&validation, 30, RngKey::new(1, 2, 4, 0)));
        assert_eq!(eval_indices(&validation, 500, RngKey::default()).len(), 100);
        let beacon = [7u8; 32];
        assert_ne!(eval_key(&beacon, 1), eval_key(&[8u8; 32], 1), "the beacon decides the batch");
    }
}
