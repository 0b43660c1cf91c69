//! How often the pay gate denies an honest worker: recorded rounds of real
//! runs resampled through the real [`Gate`].
//!
//! A false denial is rare (the design asks for about one honest worker in
//! a thousand per window), so counting it in whole training runs would
//! take thousands of them. Instead the rounds of a few recorded runs
//! (`crowdtrain battery --json` records every round's scores) are
//! recombined: a window of rounds is built from blocks of consecutive
//! rounds, each block taken whole from a recorded run chosen at random
//! at the same position in training (so each round keeps its phase: early
//! rounds, whose useless-update deviation is large, stay early), with its
//! joint scores intact (each honest deviation is measured against the
//! round's own median and spread, attackers included) and its honest
//! workers' slots shuffled (honest slots are exchangeable: each round
//! draws its slot-to-shard map afresh). Blocks keep a worker's
//! round-to-round persistence up to their length; comparing block lengths
//! shows whether persistence beyond them matters.
//!
//! Two intervals are given: the resampling's own (how precisely the
//! resamples pin the rate of these recordings) and, with an outer
//! bootstrap over the recorded runs, one that includes how much the rate
//! would move with other recordings, which is the honest one.

use crowdtrain_data::rng::{RngKey, keyed_rng, shuffle, uniform_below};
use crowdtrain_recipe::QualityConfig;
use serde::{Deserialize, Serialize};

use crate::quality::{Gate, PayRecord, ScoredRound};

/// One recorded run: its rounds in order from round 0, the first `honest`
/// of `workers` slots honest.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedRun {
    pub workers: usize,
    pub honest: usize,
    pub work_units: u64,
    pub rounds: Vec<ScoredRound>,
}

/// How windows are resampled.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Resampling {
    /// Rounds a window: the unit a false denial is counted in.
    pub window: u64,
    /// Consecutive rounds taken whole from one recorded run.
    pub block: u64,
    /// Windows built.
    pub resamples: u64,
    /// Bootstrap replicates over the recorded runs (0: none).
    pub outer: u64,
    /// Keys the resampling's random draws.
    pub seed: u64,
}

/// Why recordings cannot be resampled.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ResampleError {
    #[error("no recorded runs")]
    NoRuns,
    #[error(
        "recorded runs differ in workers ({0} and {1} slots, {2} and {3} honest): resample each kind apart"
    )]
    MixedRuns(usize, usize, usize, usize),
    #[error("a recorded run has {rounds} rounds, fewer than the window of {window}")]
    TooShort { rounds: usize, window: u64 },
    #[error(
        "round {position} of a recorded run is numbered {round}: runs must be recorded from round 0, every round"
    )]
    Gap { position: usize, round: u64 },
    #[error("a recorded run scores worker {worker}, but has only {workers} slots")]
    UnknownWorker { worker: u64, workers: usize },
    #[error("window, block and resamples must be at least 1")]
    Empty,
}

/// The false-denial rate of honest workers over windows of resampled rounds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FalseDenials {
    pub workers: usize,
    pub honest: usize,
    /// Recorded runs resampled, and their honest judged rounds in all.
    pub runs: usize,
    pub honest_rounds_recorded: u64,
    pub resampling: Resampling,
    /// Honest worker-windows judged, and those denied at least once.
    pub worker_windows: u64,
    pub denied_windows: u64,
    /// `denied_windows / worker_windows`.
    pub rate: f64,
    /// 95% interval of the rate from the resamples alone (windows as
    /// clusters of their workers); rule of three when none was denied.
    pub resampling_interval: (f64, f64),
    /// 95% percentile interval over bootstrap replicates of the recorded
    /// runs (`outer` of them), when asked for.
    pub recordings_interval: Option<(f64, f64)>,
    /// Fraction of honest verified work the gate did not pay (denied
    /// rounds and escrow taken back).
    pub work_lost: f64,
    /// Fraction of honest worker-windows whose evidence reached each
    /// level (nats): how the tail approaches the threshold.
    pub peak_evidence_at_least: Vec<(f64, f64)>,
    /// The recorded runs' own first windows, not resampled: honest
    /// worker-windows and those denied.
    pub recorded_windows: u64,
    pub recorded_denied: u64,
}

/// Resamples `runs` (all of one kind) into windows judged by a fresh
/// [`Gate`] under `config`, and counts honest workers denied.
pub fn false_denials(
    runs: &[RecordedRun],
    resampling: &Resampling,
    config: &QualityConfig,
) -> Result<FalseDenials, ResampleError> {
    check(runs, resampling)?;
    let (workers, honest) = (runs[0].workers, runs[0].honest);
    let all: Vec<usize> = (0..runs.len()).collect();
    let tally = resample(runs, &all, resampling, config, resampling.resamples, resampling.seed);
    let recordings_interval = (resampling.outer > 0).then(|| {
        let mut rates: Vec<f64> = (0..resampling.outer)
            .map(|replicate| {
                let mut rng =
                    keyed_rng("gate-false-denials-outer", RngKey::new(resampling.seed, replicate, 0, 0));
                let chosen: Vec<usize> =
                    (0..runs.len()).map(|_| uniform_below(&mut rng, runs.len() as u64) as usize).collect();
                // Fewer windows a replicate: the spread between replicates
                // dwarfs each one's own resampling error.
                let windows = resampling.resamples.div_ceil(10).max(1);
                let seed = resampling.seed ^ (replicate + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
                resample(runs, &chosen, resampling, config, windows, seed).rate()
            })
            .collect();
        rates.sort_by(f64::total_cmp);
        (quantile(&rates, 0.025), quantile(&rates, 0.975))
    });
    let recorded = runs.iter().fold((0u64, 0u64), |(windows, denied), run| {
        let window = &run.rounds[..resampling.window as usize];
        let record = PayRecord::replay(run.workers, window, run.work_units, config);
        (
            windows + honest as u64,
            denied + record.denied[..honest].iter().filter(|&&denied| denied).count() as u64,
        )
    });
    let honest_rounds_recorded = runs
        .iter()
        .flat_map(|run| &run.rounds)
        .map(|round| round.scores.iter().filter(|(worker, _)| (*worker as usize) < honest).count() as u64)
        .sum();
    Ok(FalseDenials {
        workers,
        honest,
        runs: runs.len(),
        honest_rounds_recorded,
        resampling: *resampling,
        worker_windows: tally.windows,
        denied_windows: tally.denied,
        rate: tally.rate(),
        resampling_interval: tally.interval(honest),
        recordings_interval,
        work_lost: 1.0 - tally.credits as f64 / tally.verified.max(1) as f64,
        peak_evidence_at_least: PEAK_LEVELS
            .iter()
            .zip(&tally.peaks_at_least)
            .map(|(&level, &count)| (level, count as f64 / tally.windows.max(1) as f64))
            .collect(),
        recorded_windows: recorded.0,
        recorded_denied: recorded.1,
    })
}

/// Evidence levels whose crossing frequency is reported, as fractions of
/// the default threshold's 10 nats.
const PEAK_LEVELS: [f64; 5] = [2.5, 5.0, 7.5, 10.0, 15.0];

fn check(runs: &[RecordedRun], resampling: &Resampling) -> Result<(), ResampleError> {
    if resampling.window == 0 || resampling.block == 0 || resampling.resamples == 0 {
        return Err(ResampleError::Empty);
    }
    let first = runs.first().ok_or(ResampleError::NoRuns)?;
    for run in runs {
        if (run.workers, run.honest) != (first.workers, first.honest) {
            return Err(ResampleError::MixedRuns(first.workers, run.workers, first.honest, run.honest));
        }
        if (run.rounds.len() as u64) < resampling.window {
            return Err(ResampleError::TooShort { rounds: run.rounds.len(), window: resampling.window });
        }
        for (position, round) in run.rounds.iter().enumerate() {
            if round.round != position as u64 {
                return Err(ResampleError::Gap { position, round: round.round });
            }
            if let Some(&(worker, _)) =
                round.scores.iter().find(|(worker, _)| *worker as usize >= run.workers)
            {
                return Err(ResampleError::UnknownWorker { worker, workers: run.workers });
            }
        }
    }
    Ok(())
}

/// What a batch of resampled windows gave.
#[derive(Debug, Default)]
struct Tally {
    windows: u64,
    denied: u64,
    /// Honest workers denied in each resampled window.
    per_window: Vec<u64>,
    credits: u64,
    verified: u64,
    peaks_at_least: [u64; PEAK_LEVELS.len()],
}

impl Tally {
    fn rate(&self) -> f64 {
        self.denied as f64 / self.windows.max(1) as f64
    }

    /// A normal interval over windows (each a cluster of `honest` workers
    /// that share their rounds), or the rule of three when none was denied.
    fn interval(&self, honest: usize) -> (f64, f64) {
        let resamples = self.per_window.len() as f64;
        if self.denied == 0 {
            return (0.0, 3.0 / (resamples * honest as f64));
        }
        let rates: Vec<f64> = self.per_window.iter().map(|&denied| denied as f64 / honest as f64).collect();
        let mean = rates.iter().sum::<f64>() / resamples;
        let variance =
            rates.iter().map(|rate| (rate - mean).powi(2)).sum::<f64>() / (resamples - 1.0).max(1.0);
        let half = 1.96 * (variance / resamples).sqrt();
        ((mean - half).max(0.0), mean + half)
    }
}

/// `windows` windows built from the recorded runs `chosen` (indices into
/// `runs`, repeats allowed), keyed by `seed`.
fn resample(
    runs: &[RecordedRun],
    chosen: &[usize],
    resampling: &Resampling,
    config: &QualityConfig,
    windows: u64,
    seed: u64,
) -> Tally {
    let (workers, honest) = (runs[0].workers, runs[0].honest);
    let mut tally = Tally::default();
    for window in 0..windows {
        let mut rng = keyed_rng("gate-false-denials", RngKey::new(seed, window, 0, 0));
        let mut gate = Gate::default();
        let mut record = PayRecord::new(workers);
        let mut start = 0;
        while start < resampling.window {
            let run = &runs[chosen[uniform_below(&mut rng, chosen.len() as u64) as usize]];
            let mut slots: Vec<u64> = (0..workers as u64).collect();
            shuffle(&mut rng, &mut slots[..honest]);
            for position in start..(start + resampling.block).min(resampling.window) {
                let recorded = &run.rounds[position as usize];
                let round = ScoredRound {
                    round: position,
                    examples: recorded.examples,
                    scores: recorded
                        .scores
                        .iter()
                        .map(|&(worker, score)| (slots[worker as usize], score))
                        .collect(),
                };
                record.book(&mut gate, &round, run.work_units, config);
            }
            start += resampling.block;
        }
        let denied = record.denied[..honest].iter().filter(|&&denied| denied).count() as u64;
        tally.windows += honest as u64;
        tally.denied += denied;
        tally.per_window.push(denied);
        tally.credits += record.credits[..honest].iter().sum::<u64>();
        tally.verified += record.verified[..honest].iter().sum::<u64>();
        for (level, count) in PEAK_LEVELS.iter().zip(&mut tally.peaks_at_least) {
            *count += record.peak_evidence[..honest].iter().filter(|&&peak| peak >= *level).count() as u64;
        }
    }
    tally
}

/// The `q` quantile of sorted `values`, by the nearest rank.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A recorded run of 8 honest workers over `rounds` rounds, scores
    /// around 0.01 wobbling from round to round, and worker `laggard` (if
    /// any) far below the majority every round.
    fn recorded(rounds: u64, laggard: Option<u64>) -> RecordedRun {
        let rounds = (0..rounds)
            .map(|round| {
                let pairs: Vec<(u64, f64)> = (0..8u64)
                    .map(|worker| {
                        let wobble = ((worker * 5 + round * 3) % 8) as f64 - 3.5;
                        let score = if Some(worker) == laggard { -0.05 } else { 0.01 + 0.001 * wobble };
                        (worker, score)
                    })
                    .collect();
                ScoredRound::new(round, &pairs, 1500)
            })
            .collect();
        RecordedRun { workers: 8, honest: 8, work_units: 100, rounds }
    }

    fn resampling(window: u64, block: u64) -> Resampling {
        Resampling { window, block, resamples: 2000, outer: 20, seed: 7 }
    }

    #[test]
    fn a_worker_below_the_majority_every_round_is_one_denial_a_window_and_wobbling_workers_none() {
        let config = QualityConfig::default();
        let runs = [recorded(30, Some(3)), recorded(30, None)];
        // Whole windows from one run: half the windows hold the laggard.
        let whole = false_denials(&runs, &resampling(20, 20), &config).unwrap();
        assert_eq!(whole.worker_windows, 2000 * 8);
        assert!((whole.rate - 1.0 / 16.0).abs() < 0.01, "{whole:?}");
        assert!(whole.resampling_interval.0 < whole.rate && whole.rate < whole.resampling_interval.1);
        assert_eq!((whole.recorded_windows, whole.recorded_denied), (16, 1));
        let (low, high) = whole.recordings_interval.unwrap();
        assert!(low <= whole.rate && whole.rate <= high, "{whole:?}");
        // The same settings, the same draws.
        assert_eq!(false_denials(&runs, &resampling(20, 20), &config).unwrap(), whole);
        // Honest workers alone are never denied; the interval is the rule
        // of three over the windows' workers.
        let honest = false_denials(&runs[1..], &resampling(20, 5), &config).unwrap();
        assert_eq!((honest.denied_windows, honest.rate, honest.work_lost), (0, 0.0, 0.0));
        assert_eq!(honest.resampling_interval, (0.0, 3.0 / (2000.0 * 8.0)));
        assert_eq!(honest.peak_evidence_at_least.last(), Some(&(15.0, 0.0)));
    }

    #[test]
    fn recordings_that_cannot_be_resampled_are_refused() {
        let config = QualityConfig::default();
        assert_eq!(false_denials(&[], &resampling(20, 5), &config), Err(ResampleError::NoRuns));
        assert_eq!(
            false_denials(&[recorded(10, None)], &resampling(20, 5), &config),
            Err(ResampleError::TooShort { rounds: 10, window: 20 })
        );
        let mut fewer = recorded(30, None);
        fewer.honest = 7;
        assert!(matches!(
            false_denials(&[recorded(30, None), fewer], &resampling(20, 5), &config),
            Err(ResampleError::MixedRuns(..))
        ));
        let mut gap = recorded(30, None);
        gap.rounds.remove(4);
        assert_eq!(
            false_denials(&[gap], &resampling(20, 5), &config),
            Err(ResampleError::Gap { position: 4, round: 5 })
        );
        assert_eq!(
            false_denials(&[recorded(30, None)], &resampling(0, 5), &config),
            Err(ResampleError::Empty)
        );
    }
}
