//! Splitting a training set among workers, and drawing their batches.
//!
//! Both are pure functions of a seed, so the coordinator, every worker and
//! every auditor compute the same shards and the same batches without
//! shipping index lists around.

pub use crowdtrain_recipe::Sharding;

use crate::dataset::{CLASS_COUNT, LabeledImages};
use crate::rng::{RngKey, gamma, keyed_rng, sample_distinct, shuffle};

/// Why a sharding could not be made.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ShardError {
    #[error("cannot split {examples} examples among {workers} workers of at least {minimum} each")]
    TooFewExamples { examples: usize, workers: usize, minimum: usize },
    #[error("Dirichlet alpha must be positive and finite, got {0}")]
    BadAlpha(f64),
    #[error(
        "Dirichlet(alpha={alpha}) left a worker with fewer than {minimum} examples in \
         {attempts} draws; use a larger alpha or fewer workers"
    )]
    Degenerate { alpha: f64, minimum: usize, attempts: u64 },
}

/// Dirichlet draws that leave a worker starved are redrawn at most this often.
const DIRICHLET_ATTEMPTS_MAX: u64 = 64;

/// Splits example indices `0..labels.len()` into `workers` shards, each of
/// at least `minimum` examples, as a function of `run` alone.
pub fn make_shards(
    labels: &[u8],
    workers: usize,
    minimum: usize,
    sharding: Sharding,
    run: u64,
) -> Result<Vec<Vec<u32>>, ShardError> {
    assert!(labels.len() <= u32::MAX as usize, "example indices are u32");
    let everything: Vec<u32> = (0..labels.len() as u32).collect();
    make_shards_of(labels, &everything, workers, minimum, sharding, run)
}

/// Holds out `fraction` of the examples `0..examples` for validation, drawn
/// by `run`: returns (the training pool, the validation split), each in
/// ascending order. No shard ever holds a validation example.
pub fn split_validation(examples: usize, fraction: f64, run: u64) -> (Vec<u32>, Vec<u32>) {
    assert!((0.0..1.0).contains(&fraction), "a validation fraction in [0, 1)");
    let mut order: Vec<u32> = (0..examples as u32).collect();
    let held = (examples as f64 * fraction).round() as usize;
    if held == 0 {
        return (order, Vec::new());
    }
    shuffle(&mut keyed_rng("validation-split", RngKey::new(run, 0, 0, 0)), &mut order);
    let mut validation = order[..held].to_vec();
    let mut pool = order[held..].to_vec();
    validation.sort_unstable();
    pool.sort_unstable();
    (pool, validation)
}

/// [`make_shards`] over the examples in `pool` only.
pub fn make_shards_of(
    labels: &[u8],
    pool: &[u32],
    workers: usize,
    minimum: usize,
    sharding: Sharding,
    run: u64,
) -> Result<Vec<Vec<u32>>, ShardError> {
    if workers == 0 || pool.len() < workers * minimum.max(1) {
        return Err(ShardError::TooFewExamples { examples: pool.len(), workers, minimum });
    }
    match sharding {
        Sharding::Iid => Ok(iid_shards(pool, workers, run)),
        Sharding::Dirichlet { alpha } => {
            if !(alpha > 0.0 && alpha.is_finite()) {
                return Err(ShardError::BadAlpha(alpha));
            }
            for attempt in 0..DIRICHLET_ATTEMPTS_MAX {
                let shards = dirichlet_shards(labels, pool, workers, alpha, run, attempt);
                if shards.iter().all(|shard| shard.len() >= minimum.max(1)) {
                    return Ok(shards);
                }
            }
            Err(ShardError::Degenerate { alpha, minimum, attempts: DIRICHLET_ATTEMPTS_MAX })
        }
    }
}

fn iid_shards(pool: &[u32], workers: usize, run: u64) -> Vec<Vec<u32>> {
    let examples = pool.len();
    let mut order = pool.to_vec();
    shuffle(&mut keyed_rng("shard-iid", RngKey::new(run, 0, 0, 0)), &mut order);
    let (base, extra) = (examples / workers, examples % workers);
    let mut shards = Vec::with_capacity(workers);
    let mut start = 0;
    for worker in 0..workers {
        let size = base + usize::from(worker < extra);
        let mut shard = order[start..start + size].to_vec();
        shard.sort_unstable();
        shards.push(shard);
        start += size;
    }
    shards
}

fn dirichlet_shards(
    labels: &[u8],
    pool: &[u32],
    workers: usize,
    alpha: f64,
    run: u64,
    attempt: u64,
) -> Vec<Vec<u32>> {
    let mut rng = keyed_rng("shard-dirichlet", RngKey::new(run, 0, 0, attempt));
    let mut shards = vec![Vec::new(); workers];
    for class in 0..CLASS_COUNT as u8 {
        let mut members: Vec<u32> =
            pool.iter().copied().filter(|&index| labels[index as usize] == class).collect();
        shuffle(&mut rng, &mut members);
        let weights: Vec<f64> = (0..workers).map(|_| gamma(&mut rng, alpha)).collect();
        let total: f64 = weights.iter().sum();
        // Cut points from cumulative proportions; the last worker takes the rest.
        let mut start = 0usize;
        let mut cumulative = 0.0;
        for (worker, weight) in weights.iter().enumerate() {
            cumulative += weight;
            let end = if worker + 1 == workers {
                members.len()
            } else {
                ((cumulative / total) * members.len() as f64).floor() as usize
            }
            .clamp(start, members.len());
            shards[worker].extend_from_slice(&members[start..end]);
            start = end;
        }
    }
    for shard in &mut shards {
        shard.sort_unstable();
    }
    shards
}

/// Which shard each participant trains in round `round` of run `run`:
/// entry `slot` of the result is the index (into [`make_shards`]' shards
/// for `slots` participants) of the shard slot `slot` trains. The one
/// home of this rule: the coordinator's assignments, the worker, every
/// audit replay, the simulation, its baseline and the attack battery all
/// read a slot's shard from here, so they agree bit for bit.
///
/// Why the mapping moves: a shard is a fixed part of the data, and shards
/// differ a little in how useful their updates are. Were slot `s` to
/// train shard `s` every round, that difference would be a per-worker
/// bias that the pay gate (`crowdtrain_defense::pay`) accumulates round
/// after round, until an honest worker on a weaker shard reads as "worse
/// than the majority" (issue 14: 9.0% of a worker's pay over 60 rounds of
/// 4 workers). Moved every round, it is per-round noise shared by all.
///
/// The rule is balanced, not merely random: rounds are grouped in blocks
/// of `slots` consecutive rounds, each block draws a permutation `order`
/// of the shards (ChaCha, keyed by the run and the block), and in the
/// block's rounds slot `s` trains `order[(s + round) % slots]`. Every
/// round's mapping is a permutation, and within a block every slot trains
/// every shard exactly once, so while participation is steady no worker's
/// record holds more of one shard than another's (a fresh random
/// permutation each round would leave a random walk of imbalance growing
/// as the square root of the rounds). When the number of participants
/// changes, the blocks restart on the new count; the shards themselves
/// depend on `slots` anyway. Data never moves for this: every worker and
/// auditor holds the whole training set (checked by its fingerprint) and
/// cuts the same shards from it.
///
/// Always on, not a recipe option: the pay gate's targets must hold by
/// default; a fixed mapping buys nothing when no data moves (and never
/// held across a change of participants, which re-slots everyone); and an
/// option would be one more recipe field in every assignment, hence in
/// the wire format, and one more way for a worker and its auditors to
/// disagree.
pub fn round_shard_order(run: u64, round: u64, slots: u32) -> Vec<u32> {
    if slots == 0 {
        return Vec::new();
    }
    let width = u64::from(slots);
    let block = round / width;
    let mut order: Vec<u32> = (0..slots).collect();
    shuffle(&mut keyed_rng("shard-rotation", RngKey::new(run, block, width, 0)), &mut order);
    (0..width).map(|slot| order[((slot + round) % width) as usize]).collect()
}

/// The shard slot `slot` of `slots` trains in round `round` of run `run`:
/// entry `slot` of [`round_shard_order`].
pub fn round_shard(run: u64, round: u64, slot: u32, slots: u32) -> usize {
    assert!(slot < slots, "slot {slot} of {slots} participants");
    round_shard_order(run, round, slots)[slot as usize] as usize
}

/// The examples of one step: `batch` distinct members of `shard`, drawn from
/// the stream keyed by `key` (run, round, worker, step).
pub fn batch_indices(shard: &[u32], batch: usize, key: RngKey) -> Vec<u32> {
    assert!(batch <= shard.len(), "a batch of {batch} from a shard of {}", shard.len());
    let mut rng = keyed_rng("batch", key);
    sample_distinct(&mut rng, shard.len() as u64, batch)
        .into_iter()
        .map(|position| shard[position as usize])
        .collect()
}

/// A batch of normalised images and their labels, ready for a model.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Batch {
    /// `targets.len()` rows of `features` values each.
    pub inputs: Vec<f32>,
    pub features: usize,
    pub targets: Vec<u32>,
}

impl Batch {
    pub fn len(&self) -> usize {
        self.targets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.targets.is_empty()
    }

    /// Refills this batch with the given examples, reusing its buffers.
    pub fn fill(&mut self, images: &LabeledImages, indices: &[u32]) {
        self.inputs.clear();
        self.targets.clear();
        self.features = images.pixels_per_image();
        for &index in indices {
            images.push_normalized(index as usize, &mut self.inputs);
            self.targets.push(u32::from(images.labels[index as usize]));
        }
    }

    /// A batch of the given examples.
    pub fn of(images: &LabeledImages, indices: &[u32]) -> Self {
        let mut batch = Self::default();
        batch.fill(images, indices);
        batch
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(count: usize) -> Vec<u8> {
        (0..count).map(|index| (index * 7 % CLASS_COUNT) as u8).collect()
    }

    fn assert_partition(shards: &[Vec<u32>], examples: usize) {
        let mut all: Vec<u32> = shards.iter().flatten().copied().collect();
        all.sort_unstable();
        assert_eq!(all, (0..examples as u32).collect::<Vec<_>>(), "every example in exactly one shard");
    }

    #[test]
    fn iid_shards_partition_the_data_evenly_and_reproducibly() {
        let labels = labels(1003);
        let shards = make_shards(&labels, 8, 1, Sharding::Iid, 7).unwrap();
        assert_partition(&shards, 1003);
        assert!(shards.iter().all(|shard| shard.len() == 125 || shard.len() == 126));
        assert_eq!(shards, make_shards(&labels, 8, 1, Sharding::Iid, 7).unwrap());
        assert_ne!(shards, make_shards(&labels, 8, 1, Sharding::Iid, 8).unwrap());
    }

    #[test]
    fn dirichlet_shards_partition_the_data_with_label_skew() {
        let labels = labels(5000);
        let skewed = make_shards(&labels, 5, 1, Sharding::Dirichlet { alpha: 0.1 }, 3).unwrap();
        assert_partition(&skewed, 5000);
        assert_eq!(skewed, make_shards(&labels, 5, 1, Sharding::Dirichlet { alpha: 0.1 }, 3).unwrap());
        // With alpha = 0.1 a worker's data is dominated by few classes;
        // with alpha = 1000 it looks like the whole set.
        let dominant_share = |shards: &[Vec<u32>]| {
            shards
                .iter()
                .map(|shard| {
                    let mut counts = [0usize; CLASS_COUNT];
                    for &index in shard {
                        counts[usize::from(labels[index as usize])] += 1;
                    }
                    *counts.iter().max().unwrap() as f64 / shard.len() as f64
                })
                .sum::<f64>()
                / shards.len() as f64
        };
        let uniform = make_shards(&labels, 5, 1, Sharding::Dirichlet { alpha: 1000.0 }, 3).unwrap();
        assert!(dominant_share(&skewed) > 0.4, "{}", dominant_share(&skewed));
        assert!(dominant_share(&uniform) < 0.15, "{}", dominant_share(&uniform));
    }

    #[test]
    fn impossible_shardings_are_errors() {
        let labels = labels(10);
        assert!(matches!(
            make_shards(&labels, 4, 3, Sharding::Iid, 0),
            Err(ShardError::TooFewExamples { .. })
        ));
        assert!(matches!(
            make_shards(&labels, 0, 1, Sharding::Iid, 0),
            Err(ShardError::TooFewExamples { .. })
        ));
        assert_eq!(
            make_shards(&labels, 2, 1, Sharding::Dirichlet { alpha: -1.0 }, 0),
            Err(ShardError::BadAlpha(-1.0))
        );
    }

    #[test]
    fn a_validation_split_never_reaches_a_shard() {
        let labels = labels(1000);
        let (pool, validation) = split_validation(1000, 0.05, 3);
        assert_eq!((pool.len(), validation.len()), (950, 50));
        assert_eq!(split_validation(1000, 0.05, 3), (pool.clone(), validation.clone()), "keyed by the run");
        for sharding in [Sharding::Iid, Sharding::Dirichlet { alpha: 1.0 }] {
            let shards = make_shards_of(&labels, &pool, 4, 1, sharding, 3).unwrap();
            let mut all: Vec<u32> = shards.iter().flatten().copied().collect();
            all.sort_unstable();
            assert_eq!(all, pool, "{sharding}: the shards partition the pool exactly");
        }
        assert_eq!(split_validation(10, 0.0, 3), ((0..10).collect(), Vec::new()));
        // With nothing held out, shards are exactly make_shards'.
        let everything: Vec<u32> = (0..1000).collect();
        assert_eq!(
            make_shards_of(&labels, &everything, 4, 1, Sharding::Iid, 3),
            make_shards(&labels, 4, 1, Sharding::Iid, 3)
        );
    }

    #[test]
    fn each_round_maps_slots_to_shards_by_a_permutation_keyed_by_run_and_round() {
        for slots in [1u32, 2, 4, 7, 15] {
            for round in 0..3 * u64::from(slots) {
                let order = round_shard_order(11, round, slots);
                let mut sorted = order.clone();
                sorted.sort_unstable();
                assert_eq!(sorted, (0..slots).collect::<Vec<_>>(), "{slots} slots, round {round}");
                assert_eq!(order, round_shard_order(11, round, slots), "deterministic");
                for slot in 0..slots {
                    assert_eq!(round_shard(11, round, slot, slots), order[slot as usize] as usize);
                }
            }
        }
        assert!(round_shard_order(11, 0, 0).is_empty());
        // Consecutive rounds differ, and so do runs.
        for round in 0..20 {
            assert_ne!(round_shard_order(11, round, 4), round_shard_order(11, round + 1, 4), "round {round}");
        }
        let runs: Vec<Vec<Vec<u32>>> =
            (0..2).map(|run| (0..8).map(|round| round_shard_order(run, round, 8)).collect()).collect();
        assert_ne!(runs[0], runs[1]);
    }

    #[test]
    fn every_slot_trains_every_shard_once_in_each_block_of_rounds() {
        for slots in [2u32, 4, 8, 15] {
            let width = u64::from(slots);
            let mut blocks = Vec::new();
            for block in 0..4 {
                let rounds = block * width..(block + 1) * width;
                let orders: Vec<Vec<u32>> = rounds.map(|round| round_shard_order(5, round, slots)).collect();
                for slot in 0..slots as usize {
                    let mut met: Vec<u32> = orders.iter().map(|order| order[slot]).collect();
                    met.sort_unstable();
                    assert_eq!(
                        met,
                        (0..slots).collect::<Vec<_>>(),
                        "{slots} slots, block {block}, slot {slot}"
                    );
                }
                blocks.push(orders);
            }
            // Each block draws its own order: not one fixed cycle.
            assert!(blocks.windows(2).any(|pair| pair[0] != pair[1]), "{slots} slots");
        }
    }

    #[test]
    fn the_rotation_is_pinned() {
        // Part of the protocol like the batch streams: a change here makes
        // every worker train another shard than its auditors replay.
        let orders: Vec<Vec<u32>> = (0..5).map(|round| round_shard_order(0, round, 4)).collect();
        assert_eq!(orders, PINNED_ROTATION);
    }

    const PINNED_ROTATION: [[u32; 4]; 5] =
        [[3, 0, 1, 2], [0, 1, 2, 3], [1, 2, 3, 0], [2, 3, 0, 1], [3, 1, 0, 2]];

    #[test]
    fn batches_are_distinct_members_of_the_shard_and_keyed_by_step() {
        let shard: Vec<u32> = (100..400).collect();
        let key = RngKey::new(1, 2, 3, 0);
        let batch = batch_indices(&shard, 64, key);
        assert_eq!(batch, batch_indices(&shard, 64, key));
        assert_ne!(batch, batch_indices(&shard, 64, key.at_step(1)));
        let mut sorted = batch.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), 64);
        assert!(batch.iter().all(|index| (100..400).contains(index)));
    }
}
