//! The stake rule, proved by enumeration: for every segment layout, no lazy
//! pattern (any set of skipped steps, whole segments or parts of them) has
//! a positive expected gain over honest work, at any pay multiplier
//! (including 0) and any audit probability the run accepts. The segment
//! probabilities come from the draw code itself (`audit::drawn_step`, then
//! `audit::segment_of_step`), the selection chance from
//! `audit::selection_threshold`, the stake from `audit::minimum_stake`;
//! every comparison is exact integer arithmetic.

use crowdtrain_protocol::audit::{
    self, drawn_step, minimum_stake, segment_of_step, segment_range, selection_threshold,
};
use crowdtrain_protocol::{Digest, WorkerId};

/// Layouts: (inner steps H, segments n), equal and unequal.
const LAYOUTS: [(u64, u32); 14] = [
    (1, 1),
    (7, 3),
    (8, 4),
    (10, 3),
    (12, 5),
    (12, 12),
    (13, 4),
    (16, 4),
    (50, 4),
    (50, 3),
    (50, 7),
    (64, 8),
    (100, 6),
    (101, 4),
];

/// Audit probabilities: small, round, awkward in binary, and 1.
const PROBABILITIES: [f64; 12] =
    [1e-6, 0.001, 0.01, 0.03, 0.05, 0.1, 0.123_456_7, 0.25, 1.0 / 3.0, 0.5, 0.9, 1.0];

/// Pay multipliers m = k / 10, k = 0..=10.
const MULTIPLIER_TENTHS: std::ops::RangeInclusive<u128> = 0..=10;

/// How many of the `steps` the draw's step falls on lie in each segment
/// (index 0 = segment 1): the draw picks a step uniformly (checked by
/// `the_drawn_step_is_uniform_and_decides_the_segment`), so segment `j` is
/// drawn with probability `weights[j] / steps`.
fn draw_weights(steps: u64, segments: u32) -> Vec<u128> {
    let mut weights = vec![0u128; segments as usize];
    for step in 0..steps {
        weights[segment_of_step(steps, segments, step) as usize - 1] += 1;
    }
    weights
}

/// Whether a lazy pattern that skips `skipped[j]` steps of segment `j + 1`
/// loses in expectation, exactly. Skipping is caught when a segment holding
/// a skipped step is drawn; caught, the worker loses the stake and the
/// round's pay m * W; each skipped step saves `batch` work units, each worth
/// at most one credit. Gain = saved - P(caught) * (stake + m W), with
/// P(caught) = (T / 2^64) * (weights of the touched segments / H); times
/// 10 * H * 2^64 to stay in integers.
fn loses(
    skipped: &[u64],
    weights: &[u128],
    steps: u64,
    batch: u64,
    threshold: u128,
    stake: u64,
    tenths: u128,
) -> bool {
    let saved: u128 = skipped.iter().map(|&count| u128::from(count)).sum::<u128>() * u128::from(batch);
    let touched: u128 =
        skipped.iter().zip(weights).filter(|(count, _)| **count > 0).map(|(_, weight)| weight).sum();
    let work = u128::from(steps * batch);
    let gain_scaled = (10 * saved * u128::from(steps)) << 64;
    let loss_scaled = threshold * touched * (tenths * work + 10 * u128::from(stake));
    gain_scaled < loss_scaled
}

/// Every lazy pattern of a layout, as skipped steps per segment (not all
/// zero): every subset of steps when H <= 12; otherwise every combination
/// of per-segment counts 0..=L_j when there are at most 40,000, and else
/// counts in {0, 1, L_j - 1, L_j}. (The gain of a pattern depends only on
/// how many steps it skips in each segment.)
fn lazy_patterns(steps: u64, segments: u32) -> Vec<Vec<u64>> {
    let lengths: Vec<u64> = (1..=segments)
        .map(|segment| {
            let (start, end) = segment_range(steps, segments, segment);
            end - start
        })
        .collect();
    if steps <= 12 {
        return (1u64..1 << steps)
            .map(|mask| {
                let mut skipped = vec![0; segments as usize];
                for step in (0..steps).filter(|step| mask >> step & 1 == 1) {
                    skipped[segment_of_step(steps, segments, step) as usize - 1] += 1;
                }
                skipped
            })
            .collect();
    }
    let combinations: u64 = lengths.iter().map(|length| length + 1).product();
    let choices: Vec<Vec<u64>> = lengths
        .iter()
        .map(|&length| {
            if combinations <= 40_000 {
                (0..=length).collect()
            } else {
                let mut counts = vec![0, 1, length.saturating_sub(1), length];
                counts.sort_unstable();
                counts.dedup();
                counts
            }
        })
        .collect();
    let mut patterns = vec![Vec::new()];
    for counts in &choices {
        patterns = patterns
            .into_iter()
            .flat_map(|prefix| {
                counts.iter().map(move |&count| {
                    let mut next = prefix.clone();
                    next.push(count);
                    next
                })
            })
            .collect();
    }
    patterns.retain(|pattern| pattern.iter().any(|&count| count > 0));
    patterns
}

#[test]
fn no_lazy_pattern_pays_for_any_layout_multiplier_or_audit_probability() {
    let mut checked = 0u64;
    for (steps, segments) in LAYOUTS {
        let weights = draw_weights(steps, segments);
        let patterns = lazy_patterns(steps, segments);
        for batch in [1, 12, 64] {
            let work = steps * batch;
            for probability in PROBABILITIES {
                let stake = minimum_stake(work, probability).expect("a stake exists");
                let threshold = selection_threshold(probability);
                for tenths in MULTIPLIER_TENTHS {
                    for skipped in &patterns {
                        assert!(
                            loses(skipped, &weights, steps, batch, threshold, stake, tenths),
                            "H = {steps}, {segments} segments, batch {batch}, p = {probability}, \
                             m = {tenths}/10, stake {stake}: skipping {skipped:?} pays"
                        );
                        checked += 1;
                    }
                }
                // The rule is the least that holds: one unit less and
                // skipping everything at multiplier 0 no longer loses.
                let everything: Vec<u64> = (1..=segments)
                    .map(|segment| {
                        let (start, end) = segment_range(steps, segments, segment);
                        end - start
                    })
                    .collect();
                assert!(
                    !loses(&everything, &weights, steps, batch, threshold, stake - 1, 0),
                    "H = {steps}, batch {batch}, p = {probability}: {stake} is not the least stake"
                );
            }
        }
    }
    assert!(checked > 10_000_000, "{checked} patterns checked");
}

#[test]
fn every_probability_the_run_accepts_has_a_stake() {
    // A dense sweep of (0, 1]: the config accepts these, so each must have a
    // minimum stake under which skipping everything or one step loses.
    for index in 1..=10_000u32 {
        let probability = f64::from(index) / 10_000.0;
        for (steps, segments) in [(50, 4), (13, 4), (7, 3)] {
            let weights = draw_weights(steps, segments);
            let stake = minimum_stake(steps * 64, probability).unwrap();
            let threshold = selection_threshold(probability);
            for segment in 0..segments as usize {
                let mut one_step = vec![0; segments as usize];
                one_step[segment] = 1;
                let mut whole = vec![0; segments as usize];
                whole[segment] = weights[segment] as u64;
                for pattern in [one_step, whole] {
                    assert!(loses(&pattern, &weights, steps, 64, threshold, stake, 0), "p = {probability}");
                }
            }
        }
    }
    assert_eq!(minimum_stake(3200, 0.0), None, "no audits: no stake deters laziness");
    assert_eq!(minimum_stake(3200, 1e-30), None, "below one chance in 2^64");
    assert_eq!(minimum_stake(3200, 0.1), Some(32_000), "the default run's stake is still valid");
    assert_eq!(minimum_stake(3200, 0.5), Some(6401));
    assert_eq!(minimum_stake(3200, 1.0), Some(3201));
}

#[test]
fn drawing_segments_uniformly_would_let_the_longest_segment_pay() {
    // The test has teeth: with the old draw (one of the n segments,
    // uniformly) at H = 50 in 12/13/12/13 and the old stake W / p, skipping
    // a 13-step segment at multiplier 0 gains in expectation.
    let (steps, segments, batch, probability) = (50, 4, 64, 0.1);
    let uniform = vec![1u128; segments as usize];
    let threshold = selection_threshold(probability);
    let old_stake = (3200.0 / probability) as u64;
    // Scaled to H = n so that a weight of 1 is a 1/n chance.
    let skip_segment_two = [0, 13, 0, 0];
    let saved = 13 * batch as u128;
    let gain_scaled = (10 * saved * u128::from(segments)) << 64;
    let loss_scaled = threshold * uniform[1] * (10 * u128::from(old_stake));
    assert!(gain_scaled > loss_scaled, "uniform draws: skipping {skip_segment_two:?} pays");
    // Drawn by steps, the same pattern loses.
    let weights = draw_weights(steps, segments);
    assert_eq!(weights, [12, 13, 12, 13]);
    let stake = minimum_stake(steps * batch, probability).unwrap();
    assert!(loses(&skip_segment_two, &weights, steps, batch, threshold, stake, 0));
}

#[test]
fn the_drawn_step_is_uniform_and_decides_the_segment() {
    // `draw` audits the segment holding `drawn_step`; the step is uniform
    // over the round's steps (a chi-square test over 50,000 beacons).
    let (steps, segments, trials) = (50u64, 4u32, 50_000u64);
    let mut counts = vec![0u64; steps as usize];
    for trial in 0..trials {
        let beacon = Digest::of(&trial.to_le_bytes());
        let worker = WorkerId(trial % 7);
        let step = drawn_step(&beacon, worker, steps);
        counts[step as usize] += 1;
        assert_eq!(
            audit::draw(&beacon, worker, 1.0, steps, segments),
            Some(segment_of_step(steps, segments, step))
        );
        assert_eq!(audit::draw(&beacon, worker, 0.0, steps, segments), None);
    }
    let expected = trials as f64 / steps as f64;
    let chi_square: f64 = counts.iter().map(|&count| (count as f64 - expected).powi(2) / expected).sum();
    // 49 degrees of freedom: the 99.99th percentile is about 95.
    assert!(chi_square < 95.0, "chi-square {chi_square} over {counts:?}");
}

#[test]
fn draws_are_pinned_test_vectors() {
    // Anyone replaying a ledger must get the same draws, on any machine and
    // in any later version: these are fixed.
    let beacon = Digest::of(b"crowdtrain audit draw test vector");
    let draws: Vec<Option<u32>> =
        (0..12).map(|worker| audit::draw(&beacon, WorkerId(worker), 0.5, 50, 4)).collect();
    let steps: Vec<u64> = (0..12).map(|worker| drawn_step(&beacon, WorkerId(worker), 50)).collect();
    assert_eq!(draws, PINNED_DRAWS, "steps {steps:?}");
    assert_eq!(steps, PINNED_STEPS);
}

const PINNED_DRAWS: [Option<u32>; 12] =
    [None, None, Some(1), Some(2), Some(3), Some(2), Some(1), Some(3), Some(1), Some(3), Some(1), None];
const PINNED_STEPS: [u64; 12] = [25, 5, 3, 20, 35, 12, 5, 29, 10, 26, 7, 9];
