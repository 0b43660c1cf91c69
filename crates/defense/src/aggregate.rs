//! Robust aggregation: how a round's checked updates become one.
//!
//! Audits catch cheating in the sampled fraction of submissions and the
//! checks catch what no honest update looks like; what slips past both is
//! bounded here. The rules:
//!
//! - `mean`: the plain average (no defence; DiLoCo's own rule);
//! - `trimmed-mean`: per coordinate, drop the largest and smallest `trim`
//!   fraction (at least one each side from three updates on), average the
//!   rest;
//! - `median`: per coordinate;
//! - `centered-clip` (the default): worker momentum with centered clipping
//!   (Karimireddy, He and Jaggi, ICML 2021). Each worker's update is first
//!   folded into its own momentum across rounds, so an attacker's bias must
//!   persist to matter while honest noise averages out; then, starting from
//!   the previous round's aggregate, the centre moves `iterations` times by
//!   the mean of every worker's difference from it, each clipped to the
//!   median difference length. No worker can pull the result further than
//!   the honest spread.
//!
//! Every rule is a fixed sequence of `f32`/`f64` operations, parallel only
//! over fixed chunks of coordinates, so the same inputs give the same bits
//! on every machine and at any thread count.

use std::collections::BTreeMap;

use rayon::prelude::*;

pub use crowdtrain_recipe::defense::{Aggregator, DEFAULT_ITERATIONS, DEFAULT_MOMENTUM, DEFAULT_TRIM};

use crate::linalg::{self, CHUNK};

/// What an aggregator carries from round to round.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AggregatorState {
    /// The previous round's aggregate (the clipping centre); empty before
    /// the first round.
    pub center: Vec<f32>,
    /// Each worker's momentum, by worker id.
    pub momenta: BTreeMap<u64, Vec<f32>>,
}

/// What a round changes in an [`AggregatorState`]: applied once the round
/// is known to count ([`AggregatorState::apply`]).
#[derive(Debug, Clone, PartialEq)]
pub struct StateChange {
    pub center: Vec<f32>,
    pub momenta: Vec<(u64, Vec<f32>)>,
}

impl AggregatorState {
    /// Applies a round's change. Only the round's contributors keep a
    /// momentum: one who sits a round out starts again from the run's.
    pub fn apply(&mut self, change: StateChange) {
        self.center = change.center;
        self.momenta = change.momenta.into_iter().collect();
    }
}

/// Aggregates `updates` (worker id, values), all of one length, in the
/// order given, under `aggregator`; returns the aggregate and what it
/// changes in `state`.
pub fn aggregate(
    aggregator: &Aggregator,
    state: &AggregatorState,
    updates: &[(u64, &[f32])],
) -> (Vec<f32>, StateChange) {
    assert!(!updates.is_empty(), "aggregating nothing");
    let len = updates[0].1.len();
    assert!(updates.iter().all(|(_, values)| values.len() == len), "updates of one length");
    let views: Vec<&[f32]> = updates.iter().map(|(_, values)| *values).collect();
    let (result, momenta) = match *aggregator {
        // Exactly DiLoCo's mean, so a run with this rule is the plain
        // simulation bit for bit.
        Aggregator::Mean => (crowdtrain_train::diloco::mean_in_order(&views), Vec::new()),
        Aggregator::TrimmedMean { trim } => {
            let n = updates.len();
            let cut = if n >= 3 { ((trim * n as f64).floor() as usize).max(1).min((n - 1) / 2) } else { 0 };
            let result = coordinatewise(&views, move |column| {
                column.sort_by(f32::total_cmp);
                let kept = &column[cut..column.len() - cut];
                kept.iter().fold(0.0f32, |sum, value| sum + value) / kept.len() as f32
            });
            (result, Vec::new())
        }
        Aggregator::Median => (coordinatewise(&views, median_of_column), Vec::new()),
        Aggregator::CenteredClip { momentum, iterations } => {
            let previous = (state.center.len() == len).then_some(state.center.as_slice());
            // Heavy-ball worker momentum: b_i = momentum * b_i + update_i. A
            // worker that did not contribute to the previous round starts
            // from the run's momentum (the previous robust aggregate), as if
            // it had been there all along.
            let momenta: Vec<(u64, Vec<f32>)> = updates
                .par_iter()
                .map(|&(worker, values)| {
                    let history = state
                        .momenta
                        .get(&worker)
                        .map(Vec::as_slice)
                        .filter(|old| old.len() == len)
                        .or(previous);
                    let folded = match history {
                        Some(old) => old.iter().zip(values).map(|(&b, &u)| momentum * b + u).collect(),
                        None => values.to_vec(),
                    };
                    (worker, folded)
                })
                .collect();
            let smoothed: Vec<&[f32]> = momenta.iter().map(|(_, values)| values.as_slice()).collect();
            let start = match previous {
                Some(center) => center.to_vec(),
                // The first round has no previous aggregate: start from the
                // coordinate-wise median, which no minority can move far.
                None => coordinatewise(&smoothed, median_of_column),
            };
            let robust = centered_clip(&smoothed, start, iterations);
            // The update the outer step applies is the robust momentum's
            // change, `B_new - momentum * B_old`: with every worker honest
            // and nothing clipped that is the mean update, so the outer
            // optimizer's own momentum follows B instead of compounding it.
            let delta = match previous {
                Some(old) => robust.iter().zip(old).map(|(&new, &old)| new - momentum * old).collect(),
                None => robust.clone(),
            };
            return (delta, StateChange { center: robust, momenta });
        }
    };
    (result, StateChange { center: Vec::new(), momenta })
}

/// Iterated centered clipping from `center` with an adaptive radius (the
/// median distance to the centre).
fn centered_clip(vectors: &[&[f32]], mut center: Vec<f32>, iterations: u32) -> Vec<f32> {
    let count = vectors.len() as f32;
    for _ in 0..iterations {
        let distances: Vec<f64> =
            vectors.par_iter().map(|vector| linalg::distance(vector, &center)).collect();
        let mut sorted = distances.clone();
        sorted.sort_by(f64::total_cmp);
        let radius = crate::checks::median_of_sorted(&sorted);
        let scales: Vec<f32> = distances
            .iter()
            .map(
                |&distance| {
                    if distance > radius && distance > 0.0 { (radius / distance) as f32 } else { 1.0 }
                },
            )
            .collect();
        center.par_chunks_mut(CHUNK).enumerate().for_each(|(chunk, out)| {
            let range = chunk * CHUNK..chunk * CHUNK + out.len();
            // Per coordinate: 0, plus each vector's clipped difference in
            // vector order; written vector by vector so it vectorises.
            let mut step = vec![0.0f32; out.len()];
            for (vector, &scale) in vectors.iter().zip(&scales) {
                for ((total, &v), &c) in step.iter_mut().zip(&vector[range.clone()]).zip(out.iter()) {
                    *total += (v - c) * scale;
                }
            }
            for (c, total) in out.iter_mut().zip(&step) {
                *c += total / count;
            }
        });
    }
    center
}

/// Applies `reduce` to each coordinate's column of values (in update order).
fn coordinatewise(vectors: &[&[f32]], reduce: impl Fn(&mut [f32]) -> f32 + Sync) -> Vec<f32> {
    let len = vectors[0].len();
    let mut result = vec![0.0f32; len];
    result.par_chunks_mut(CHUNK).enumerate().for_each(|(chunk, out)| {
        let mut column = Vec::with_capacity(vectors.len());
        for (offset, value) in out.iter_mut().enumerate() {
            let index = chunk * CHUNK + offset;
            column.clear();
            column.extend(vectors.iter().map(|values| values[index]));
            *value = reduce(&mut column);
        }
    });
    result
}

fn median_of_column(column: &mut [f32]) -> f32 {
    column.sort_by(f32::total_cmp);
    let middle = column.len() / 2;
    if column.len() % 2 == 1 { column[middle] } else { 0.5 * (column[middle - 1] + column[middle]) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn updates(values: &[Vec<f32>]) -> Vec<(u64, &[f32])> {
        values.iter().enumerate().map(|(worker, values)| (worker as u64, values.as_slice())).collect()
    }

    fn run(aggregator: Aggregator, values: &[Vec<f32>]) -> Vec<f32> {
        aggregate(&aggregator, &AggregatorState::default(), &updates(values)).0
    }

    const ALL: [Aggregator; 4] = [
        Aggregator::Mean,
        Aggregator::Median,
        Aggregator::TrimmedMean { trim: 0.2 },
        Aggregator::CenteredClip { momentum: 0.0, iterations: 3 },
    ];

    #[test]
    fn rules_agree_on_identical_updates_and_the_robust_ones_ignore_an_outlier() {
        let honest = vec![vec![1.0f32, -2.0, 0.5]; 5];
        for aggregator in ALL {
            assert_eq!(run(aggregator, &honest), vec![1.0, -2.0, 0.5], "{aggregator:?}");
        }
        let mut attacked = honest.clone();
        attacked[4] = vec![1000.0, 1000.0, 1000.0];
        assert!(run(Aggregator::Mean, &attacked)[0] > 100.0, "the mean follows an outlier");
        for aggregator in [Aggregator::Median, Aggregator::TrimmedMean { trim: 0.2 }] {
            assert_eq!(
                run(aggregator, &attacked),
                vec![1.0, -2.0, 0.5],
                "{aggregator:?} ignores one outlier of five"
            );
        }
        let clipped = run(Aggregator::CenteredClip { momentum: 0.0, iterations: 3 }, &attacked);
        assert!(clipped.iter().zip([1.0, -2.0, 0.5]).all(|(a, b)| (a - b).abs() < 1e-3), "{clipped:?}");
    }

    #[test]
    fn trimmed_mean_and_median_are_the_textbook_ones() {
        let columns = vec![vec![1.0f32], vec![2.0], vec![3.0], vec![4.0], vec![100.0]];
        assert_eq!(run(Aggregator::Median, &columns), vec![3.0]);
        assert_eq!(run(Aggregator::TrimmedMean { trim: 0.2 }, &columns), vec![3.0], "(2 + 3 + 4) / 3");
        assert_eq!(run(Aggregator::Median, &columns[..4]), vec![2.5]);
        assert_eq!(
            run(Aggregator::TrimmedMean { trim: 0.0 }, &columns[..2]),
            vec![1.5],
            "nothing to trim from two"
        );
    }

    #[test]
    fn centered_clipping_bounds_an_attacker_by_the_honest_spread() {
        let honest: Vec<Vec<f32>> = (0..8)
            .map(|worker| (0..100).map(|i| ((i * 13 + worker * 7) as f32 * 0.1).sin()).collect())
            .collect();
        let mut attacked = honest.clone();
        attacked.push(vec![50.0; 100]);
        attacked.push(vec![-50.0; 100]);
        let aggregator = Aggregator::CenteredClip { momentum: 0.0, iterations: 3 };
        let clean = run(aggregator, &honest);
        let result = run(aggregator, &attacked);
        let moved = linalg::distance(&clean, &result);
        let spread = linalg::distance(&honest[0], &clean);
        assert!(moved < spread, "moved {moved}, honest spread {spread}");
    }

    #[test]
    fn worker_momentum_and_the_centre_carry_over_only_when_applied() {
        let aggregator = Aggregator::CenteredClip { momentum: 0.5, iterations: 1 };
        let mut state = AggregatorState::default();
        let (first, change) = aggregate(&aggregator, &state, &[(7, &[2.0f32][..])]);
        assert_eq!(first, vec![2.0]);
        assert!(state.momenta.is_empty(), "nothing changes until the change is applied");
        state.apply(change);
        let (second, change) = aggregate(&aggregator, &state, &[(7, &[0.0f32][..])]);
        state.apply(change);
        assert_eq!(state.momenta[&7], vec![1.0], "b = 0.5 * 2 + 0");
        assert_eq!(state.center, vec![1.0]);
        assert_eq!(second, vec![0.0], "the outer step gets B_new - 0.5 * B_old = 1 - 1");
        // A newcomer starts from the run's momentum; a worker that sat the
        // round out loses its own.
        let (_, change) = aggregate(&aggregator, &state, &[(8, &[4.0f32][..])]);
        assert_eq!(change.momenta, vec![(8, vec![0.5 * 1.0 + 4.0])]);
        state.apply(change);
        assert!(!state.momenta.contains_key(&7));
        let (_, change) = aggregate(&Aggregator::Median, &state, &[(7, &[0.0f32][..])]);
        assert!(change.momenta.is_empty() && change.center.is_empty(), "stateless rules change nothing");
    }

    #[test]
    fn with_nothing_to_clip_worker_momentum_gives_the_outer_step_the_mean_update() {
        // Every worker sends the same update: no distance to clip, so the
        // robust momentum is the common momentum and the outer step sees
        // the update itself, round after round; the outer optimizer's own
        // momentum then does what it does in plain DiLoCo.
        let aggregator = Aggregator::CenteredClip { momentum: 0.9, iterations: 3 };
        let mut state = AggregatorState::default();
        for round in 0..5 {
            let update: Vec<f32> = (0..10).map(|i| ((i + round) as f32 * 0.3).sin()).collect();
            let updates: Vec<(u64, &[f32])> = (0..4).map(|worker| (worker, update.as_slice())).collect();
            let (delta, change) = aggregate(&aggregator, &state, &updates);
            state.apply(change);
            assert!(delta.iter().zip(&update).all(|(d, u)| (d - u).abs() < 1e-5), "round {round}: {delta:?}");
        }
    }

    #[test]
    fn results_do_not_depend_on_the_thread_count() {
        let values: Vec<Vec<f32>> = (0..7)
            .map(|worker| (0..40_000).map(|i| ((i * 31 + worker * 17) % 1000) as f32 * 1e-3).collect())
            .collect();
        for aggregator in ALL.into_iter().chain([Aggregator::default()]) {
            let on = |threads| {
                let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                pool.install(|| run(aggregator, &values))
            };
            let (one, two) = (on(1), on(2));
            assert!(one.iter().zip(&two).all(|(a, b)| a.to_bits() == b.to_bits()), "{aggregator:?}");
        }
    }

    #[test]
    fn aggregators_parse_from_their_names() {
        assert_eq!("mean".parse::<Aggregator>(), Ok(Aggregator::Mean));
        assert_eq!("trimmed-mean:0.1".parse::<Aggregator>(), Ok(Aggregator::TrimmedMean { trim: 0.1 }));
        assert_eq!("centered-clip".parse::<Aggregator>(), Ok(Aggregator::default()));
        assert!("trimmed-mean:0.7".parse::<Aggregator>().unwrap_err().contains("trim"));
        assert!("median:3".parse::<Aggregator>().is_err());
        assert!("krum".parse::<Aggregator>().unwrap_err().contains("unknown aggregator"));
        for aggregator in ALL {
            assert_eq!(aggregator.to_string().parse::<Aggregator>().unwrap().name(), aggregator.name());
        }
    }
}
