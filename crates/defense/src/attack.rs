//! The model attacks the defence is tested against, as functions of what
//! the attacker knows.
//!
//! The in-process battery gives them the round's honest updates (the
//! omniscient worst case); a cheating worker process gives them what it can
//! compute itself (its own honest update, or a few of them). Both build the
//! malicious update with the same code.

use crowdtrain_data::rng::{RngKey, keyed_rng, standard_normal};
use crowdtrain_data::{Dataset, LabeledImages};

use crate::linalg;

/// Sign-flip: the reference update, negated.
pub fn sign_flip(reference: &[f32]) -> Vec<f32> {
    reference.iter().map(|value| -value).collect()
}

/// Inner-product manipulation (Xie, Koyejo and Gupta, UAI 2019):
/// `-epsilon` times the reference, so the aggregate's inner product with
/// the true gradient shrinks or turns negative.
pub fn inner_product_manipulation(reference: &[f32], epsilon: f32) -> Vec<f32> {
    reference.iter().map(|value| -epsilon * value).collect()
}

/// Gaussian noise of Euclidean norm `norm` (a disguised free-rider, or at
/// large norms a crude attack), from the stream keyed by `key`.
pub fn noise(key: RngKey, len: usize, norm: f64) -> Vec<f32> {
    let mut rng = keyed_rng("attack-noise", key);
    let raw: Vec<f32> = (0..len).map(|_| standard_normal(&mut rng) as f32).collect();
    let length = linalg::norm(&raw);
    let factor = if length > 0.0 { (norm / length) as f32 } else { 0.0 };
    raw.iter().map(|value| value * factor).collect()
}

/// "A little is enough" (Baruch, Baruch and Goldberg, NeurIPS 2019): the
/// coordinate-wise mean of `samples` plus `z` standard deviations, which
/// stays inside the honest spread in every coordinate yet shifts all of
/// them the same way.
pub fn a_little_is_enough(samples: &[&[f32]], z: f32) -> Vec<f32> {
    assert!(!samples.is_empty(), "ALIE needs at least one sample");
    let count = samples.len() as f32;
    let len = samples[0].len();
    (0..len)
        .map(|index| {
            let mean = samples.iter().fold(0.0f32, |sum, sample| sum + sample[index]) / count;
            let variance =
                samples.iter().fold(0.0f32, |sum, sample| sum + (sample[index] - mean).powi(2)) / count;
            mean + z * variance.sqrt()
        })
        .collect()
}

/// Baruch et al.'s `z` for `attackers` of `workers`: with
/// `s = floor(n / 2 + 1) - f` the workers the attackers need on their side,
/// `z = Phi^-1((n - s) / n)`.
pub fn baruch_z(workers: usize, attackers: usize) -> f32 {
    let n = workers as f64;
    let s = (n / 2.0 + 1.0).floor() - attackers as f64;
    inverse_normal_cdf(((n - s) / n).clamp(0.5, 0.999)) as f32
}

/// The same images with every label `y` replaced by `9 - y`: what a
/// label-flipping worker trains on.
pub fn flipped_labels(dataset: &Dataset) -> Dataset {
    let flip = |images: &LabeledImages| LabeledImages {
        labels: images.labels.iter().map(|&label| 9 - label).collect(),
        ..images.clone()
    };
    Dataset { info: dataset.info.clone(), train: flip(&dataset.train), test: dataset.test.clone() }
}

/// The standard normal quantile, by bisection on `erf`: deterministic,
/// accurate to about 1e-12, and needed once per attack.
fn inverse_normal_cdf(p: f64) -> f64 {
    let cdf = |x: f64| 0.5 * (1.0 + libm::erf(x / std::f64::consts::SQRT_2));
    let (mut low, mut high) = (-10.0, 10.0);
    for _ in 0..100 {
        let middle = 0.5 * (low + high);
        if cdf(middle) < p { low = middle } else { high = middle }
    }
    0.5 * (low + high)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_normal_quantile_and_baruchs_z_are_right() {
        assert!(inverse_normal_cdf(0.5).abs() < 1e-9);
        assert!((inverse_normal_cdf(0.975) - 1.959964).abs() < 1e-5);
        // The calibration's values (research note section 9): n = 20, f = 4
        // gives 0.385; n = 24, f = 8 gives 0.812.
        assert!((baruch_z(20, 4) - 0.385).abs() < 1e-3, "{}", baruch_z(20, 4));
        assert!((baruch_z(24, 8) - 0.812).abs() < 1e-3, "{}", baruch_z(24, 8));
    }

    #[test]
    fn attacks_have_the_shapes_they_promise() {
        let reference = [1.0f32, -2.0, 0.5];
        assert_eq!(sign_flip(&reference), vec![-1.0, 2.0, -0.5]);
        assert_eq!(inner_product_manipulation(&reference, 0.5), vec![-0.5, 1.0, -0.25]);
        let noisy = noise(RngKey::new(1, 2, 3, 4), 10_000, 3.0);
        assert!((linalg::norm(&noisy) - 3.0).abs() < 1e-4);
        assert_eq!(noisy, noise(RngKey::new(1, 2, 3, 4), 10_000, 3.0), "keyed, so reproducible");
        let samples: [&[f32]; 2] = [&[0.0, 1.0], &[2.0, 1.0]];
        assert_eq!(a_little_is_enough(&samples, 1.0), vec![2.0, 1.0], "mean 1 + 1 x std 1; mean 1 + 0");
    }
}
