//! All randomness in crowdtrain comes from here: ChaCha8 streams keyed by
//! what they are for and by (run, round, worker, step).
//!
//! Keying every draw by its coordinates, rather than threading one generator
//! through the program, is what makes training replayable: an auditor can
//! rebuild the batch of step 37 of worker 5 in round 12 without replaying
//! anything before it, and no thread schedule can change which numbers a
//! computation sees.
//!
//! The sampling helpers are written out here instead of taken from `rand`'s
//! distributions, whose algorithms may change between versions; ours are
//! part of the protocol and may not. Transcendentals come from the pure-Rust
//! `libm` crate, so the results do not depend on the platform's C library.

use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

/// Domain separation for seed derivation; changing it changes every stream.
const SEED_CONTEXT: &str = "crowdtrain 2026-11 keyed rng v1";

/// The coordinates of one random stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub struct RngKey {
    pub run: u64,
    pub round: u64,
    pub worker: u64,
    pub step: u64,
}

impl RngKey {
    pub fn new(run: u64, round: u64, worker: u64, step: u64) -> Self {
        Self { run, round, worker, step }
    }

    /// The same key at another step.
    pub fn at_step(self, step: u64) -> Self {
        Self { step, ..self }
    }
}

/// A ChaCha8 generator for `purpose` at `key`. Different purposes at the
/// same key give independent streams.
pub fn keyed_rng(purpose: &str, key: RngKey) -> ChaCha8Rng {
    let mut hasher = blake3::Hasher::new_derive_key(SEED_CONTEXT);
    hasher.update(&(purpose.len() as u64).to_le_bytes());
    hasher.update(purpose.as_bytes());
    for word in [key.run, key.round, key.worker, key.step] {
        hasher.update(&word.to_le_bytes());
    }
    ChaCha8Rng::from_seed(*hasher.finalize().as_bytes())
}

/// A uniform integer in `0..bound` (Lemire's multiply-and-reject), unbiased.
pub fn uniform_below(rng: &mut impl Rng, bound: u64) -> u64 {
    assert!(bound > 0, "uniform_below needs a non-empty range");
    let threshold = bound.wrapping_neg() % bound;
    loop {
        let product = u128::from(rng.next_u64()) * u128::from(bound);
        if (product as u64) >= threshold {
            return (product >> 64) as u64;
        }
    }
}

/// A uniform `f64` in `[0, 1)` with 53 random bits.
pub fn unit_f64(rng: &mut impl Rng) -> f64 {
    (rng.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// A standard normal sample (Box-Muller; the second value is discarded so
/// that each call consumes a fixed number of words).
pub fn standard_normal(rng: &mut impl Rng) -> f64 {
    let u1 = 1.0 - unit_f64(rng); // in (0, 1], so the log is finite
    let u2 = unit_f64(rng);
    libm::sqrt(-2.0 * libm::log(u1)) * libm::cos(2.0 * std::f64::consts::PI * u2)
}

/// A Gamma(shape, 1) sample (Marsaglia and Tsang), for Dirichlet draws.
pub fn gamma(rng: &mut impl Rng, shape: f64) -> f64 {
    assert!(shape > 0.0 && shape.is_finite(), "gamma shape must be positive");
    if shape < 1.0 {
        // Gamma(a) = Gamma(a + 1) * U^(1/a).
        let boost = libm::pow(unit_f64(rng), 1.0 / shape);
        return gamma(rng, shape + 1.0) * boost;
    }
    let d = shape - 1.0 / 3.0;
    let c = 1.0 / libm::sqrt(9.0 * d);
    loop {
        let x = standard_normal(rng);
        let v = 1.0 + c * x;
        if v <= 0.0 {
            continue;
        }
        let v = v * v * v;
        let u = unit_f64(rng);
        if u < 1.0 - 0.0331 * x * x * x * x || libm::log(u) < 0.5 * x * x + d * (1.0 - v + libm::log(v)) {
            return d * v;
        }
    }
}

/// `count` distinct indices from `0..population`, in a random order
/// (Floyd's algorithm: `count` draws, no `population`-sized buffer).
pub fn sample_distinct(rng: &mut impl Rng, population: u64, count: usize) -> Vec<u64> {
    assert!(count as u64 <= population, "cannot draw {count} distinct from {population}");
    let mut chosen: Vec<u64> = Vec::with_capacity(count);
    for upper in (population - count as u64)..population {
        let candidate = uniform_below(rng, upper + 1);
        if chosen.contains(&candidate) {
            chosen.push(upper);
        } else {
            chosen.push(candidate);
        }
    }
    // Floyd's order is biased towards large values at the end; a keyed
    // Fisher-Yates pass makes the order uniform too.
    shuffle(rng, &mut chosen);
    chosen
}

/// Fisher-Yates shuffle driven by [`uniform_below`].
pub fn shuffle<T>(rng: &mut impl Rng, items: &mut [T]) {
    for upper in (1..items.len()).rev() {
        let other = uniform_below(rng, upper as u64 + 1) as usize;
        items.swap(upper, other);
    }
}

/// Round `round`'s block of `count` indices of `0..population`, fresh until
/// the population runs out: each epoch of `population / count` rounds
/// walks one permutation (keyed by `purpose`, `run` and the epoch) block
/// by block, so no index repeats within an epoch and every index is used
/// equally often over whole epochs; the `population % count` left over
/// each epoch differ from epoch to epoch. `count` above `population` is
/// the whole population. This is how each round's evaluation batch is
/// drawn (`crowdtrain_defense::quality`): scores of different rounds are
/// measured on different examples for as long as the split allows, so no
/// fixed subset of it can bias a worker's record round after round.
pub fn epoch_block(purpose: &str, run: u64, population: u64, count: usize, round: u64) -> Vec<u64> {
    let count = (count as u64).min(population);
    if count == 0 {
        return Vec::new();
    }
    let per_epoch = population / count;
    let (epoch, position) = (round / per_epoch, round % per_epoch);
    let mut order: Vec<u64> = (0..population).collect();
    shuffle(&mut keyed_rng(purpose, RngKey::new(run, epoch, 0, 0)), &mut order);
    order[(position * count) as usize..((position + 1) * count) as usize].to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_reproducible_and_separated_by_every_coordinate() {
        let key = RngKey::new(1, 2, 3, 4);
        let first = keyed_rng("batch", key).next_u64();
        assert_eq!(first, keyed_rng("batch", key).next_u64());
        let variants = [
            keyed_rng("init", key).next_u64(),
            keyed_rng("batch", RngKey { run: 9, ..key }).next_u64(),
            keyed_rng("batch", RngKey { round: 9, ..key }).next_u64(),
            keyed_rng("batch", RngKey { worker: 9, ..key }).next_u64(),
            keyed_rng("batch", key.at_step(9)).next_u64(),
        ];
        for value in variants {
            assert_ne!(value, first);
        }
    }

    #[test]
    fn pinned_stream_values_do_not_change() {
        // The streams are part of the protocol: a change here breaks replay
        // against every peer running an older build.
        let mut rng = keyed_rng("batch", RngKey::new(0, 0, 0, 0));
        let values: Vec<u64> = (0..3).map(|_| rng.next_u64()).collect();
        assert_eq!(values, PINNED_BATCH_STREAM);
    }

    const PINNED_BATCH_STREAM: [u64; 3] = [14891912304088775285, 15456563965665051326, 9877450900309418710];

    #[test]
    fn uniform_below_stays_in_range_and_covers_it() {
        let mut rng = keyed_rng("test", RngKey::default());
        let mut seen = [0u32; 7];
        for _ in 0..7000 {
            seen[uniform_below(&mut rng, 7) as usize] += 1;
        }
        assert!(seen.iter().all(|&count| (800..1200).contains(&count)), "{seen:?}");
    }

    #[test]
    fn sample_distinct_gives_distinct_indices_in_range() {
        let mut rng = keyed_rng("test", RngKey::default());
        for (population, count) in [(10, 10), (1000, 64), (64, 1), (5, 0)] {
            let mut drawn = sample_distinct(&mut rng, population, count);
            assert_eq!(drawn.len(), count);
            assert!(drawn.iter().all(|&index| index < population));
            drawn.sort_unstable();
            drawn.dedup();
            assert_eq!(drawn.len(), count);
        }
    }

    #[test]
    fn gamma_and_normal_have_the_right_moments() {
        let mut rng = keyed_rng("test", RngKey::default());
        let samples = 20_000;
        for shape in [0.3, 1.0, 4.0] {
            let mean = (0..samples).map(|_| gamma(&mut rng, shape)).sum::<f64>() / samples as f64;
            assert!((mean - shape).abs() < 0.05 * shape.max(1.0), "shape {shape}: mean {mean}");
        }
        let normals: Vec<f64> = (0..samples).map(|_| standard_normal(&mut rng)).collect();
        let mean = normals.iter().sum::<f64>() / samples as f64;
        let variance = normals.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / samples as f64;
        assert!(mean.abs() < 0.03 && (variance - 1.0).abs() < 0.05, "{mean} {variance}");
    }

    #[test]
    fn epoch_blocks_never_repeat_within_an_epoch_and_are_keyed() {
        // 1,000 indices in blocks of 300: 3 rounds an epoch, 100 left over.
        let block = |run, round| epoch_block("test-eval", run, 1000, 300, round);
        for epoch in 0..3 {
            let mut seen: Vec<u64> = (0..3).flat_map(|position| block(7, 3 * epoch + position)).collect();
            assert_eq!(seen.len(), 900);
            seen.sort_unstable();
            seen.dedup();
            assert_eq!(seen.len(), 900, "no index twice within epoch {epoch}");
            assert!(seen.iter().all(|&index| index < 1000));
        }
        assert_eq!(block(7, 4), block(7, 4), "the same key, the same block");
        assert_ne!(block(7, 4), block(8, 4), "the run keys it");
        assert_ne!(block(7, 0), block(7, 3), "each epoch is a new permutation");
        assert_eq!(epoch_block("test-eval", 1, 50, 300, 9).len(), 50, "at most the whole population");
        assert!(epoch_block("test-eval", 1, 0, 300, 9).is_empty());
        // Pinned: the draw is part of the protocol (pay is recomputed from it).
        assert_eq!(epoch_block("test-eval", 1, 10, 3, 4), [1, 0, 7]);
    }
}
