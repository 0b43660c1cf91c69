//! Text generation: the next token drawn from the model's distribution at
//! a temperature, among the `top_k` most likely, with randomness keyed by
//! the seed and the position, so a seed always gives the same text.

use crowdtrain_data::rng::{RngKey, keyed_rng, unit_f64};

use super::Gpt;
use crate::TrainError;

/// How to draw each next token.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampling {
    /// Logits are divided by this; 0 takes the most likely token.
    pub temperature: f32,
    /// Only the `top_k` most likely tokens may be drawn (0: all).
    pub top_k: usize,
    pub seed: u64,
}

impl Gpt {
    /// `count` tokens after `prompt` (which must not be empty), each from
    /// the logits of the last `context` tokens so far.
    pub fn generate(
        &self,
        params: &[f32],
        prompt: &[u32],
        count: usize,
        sampling: Sampling,
    ) -> Result<Vec<u32>, TrainError> {
        if prompt.is_empty() {
            return Err(TrainError::BadSequences {
                tokens: 0,
                targets: 0,
                sequences: 1,
                context: self.config.context,
            });
        }
        let vocab = self.config.vocab;
        let mut tokens = prompt.to_vec();
        let mut generated = Vec::with_capacity(count);
        for position in 0..count {
            let window = &tokens[tokens.len().saturating_sub(self.config.context)..];
            let logits = self.logits(params, window)?;
            let last = &logits[(window.len() - 1) * vocab..];
            let mut rng = keyed_rng("sample", RngKey::new(sampling.seed, 0, 0, position as u64));
            let next = draw(last, sampling.temperature, sampling.top_k, unit_f64(&mut rng)) as u32;
            tokens.push(next);
            generated.push(next);
        }
        Ok(generated)
    }
}

/// The token `uniform` (in `[0, 1)`) picks from `logits` at `temperature`
/// among the `top_k` largest (ties to the lower id). Probabilities are
/// computed in f64 in id order, so the choice is the same everywhere.
pub fn draw(logits: &[f32], temperature: f32, top_k: usize, uniform: f64) -> usize {
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
    if temperature <= 0.0 {
        return order[0];
    }
    let keep = if top_k == 0 { logits.len() } else { top_k.min(logits.len()) };
    let mut candidates = order[..keep].to_vec();
    candidates.sort_unstable();
    let top = f64::from(logits[order[0]]);
    let weights: Vec<f64> = candidates
        .iter()
        .map(|&id| libm::exp((f64::from(logits[id]) - top) / f64::from(temperature)))
        .collect();
    let total: f64 = weights.iter().sum();
    let mut threshold = uniform * total;
    for (&id, &weight) in candidates.iter().zip(&weights) {
        if threshold < weight {
            return id;
        }
        threshold -= weight;
    }
    *candidates.last().expect("at least one candidate")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{GptConfig, Model};

    #[test]
    fn draws_respect_temperature_and_top_k() {
        let logits = [0.0f32, 3.0, 1.0, 3.0];
        assert_eq!(draw(&logits, 0.0, 0, 0.9), 1, "greedy: the first of the largest");
        for uniform in [0.0, 0.3, 0.7, 0.999] {
            assert!([1, 3].contains(&draw(&logits, 1.0, 2, uniform)), "top 2 only");
        }
        // At temperature 1 the four probabilities are e^(l - 3) / sum.
        let mut counts = [0usize; 4];
        for i in 0..1000 {
            counts[draw(&logits, 1.0, 0, (i as f64 + 0.5) / 1000.0)] += 1;
        }
        let total: f64 = logits.iter().map(|&l| f64::from(l - 3.0).exp()).sum();
        for (id, &count) in counts.iter().enumerate() {
            let expected = 1000.0 * f64::from(logits[id] - 3.0).exp() / total;
            assert!((count as f64 - expected).abs() <= 1.5, "{id}: {count} vs {expected}");
        }
    }

    #[test]
    fn generation_is_deterministic_per_seed() {
        let config = GptConfig { layers: 1, heads: 2, width: 8, context: 4, vocab: 11 };
        let gpt = Gpt::new(config);
        let params = gpt.layout().initialize(1);
        let sampling = Sampling { temperature: 1.0, top_k: 0, seed: 5 };
        let one = gpt.generate(&params, &[1, 2], 12, sampling).unwrap();
        assert_eq!(one.len(), 12);
        assert!(one.iter().all(|&t| (t as usize) < config.vocab));
        assert_eq!(one, gpt.generate(&params, &[1, 2], 12, sampling).unwrap());
        assert_ne!(one, gpt.generate(&params, &[1, 2], 12, Sampling { seed: 6, ..sampling }).unwrap());
        assert!(gpt.generate(&params, &[], 3, sampling).is_err());
    }
}
