//! `crowdtrain gate`: the pay gate judged again on recorded rounds.
//!
//! `crowdtrain battery --json` records every round's scores; pay is a
//! function of them alone, and training does not depend on pay, so a
//! recorded battery can be paid again by any gate settings (`replay`) and
//! its honest rounds resampled into many windows to measure how often the
//! gate denies an honest worker (`errors`), without training anything.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};
use crowdtrain_defense::QualityConfig;
use crowdtrain_defense::false_denials::{FalseDenials, RecordedRun, Resampling, false_denials};
use crowdtrain_defense::quality::{PayRecord, ScoredRound, deviations};
use serde::{Deserialize, Serialize};

use crate::output;

/// Judge recorded battery rounds (`crowdtrain battery --json > FILE`) with
/// the pay gate again: pay them with other settings, or measure the gate's
/// false-denial rate by resampling honest rounds.
#[derive(Debug, Args)]
pub struct GateArgs {
    #[command(subcommand)]
    command: GateCommand,
}

#[derive(Debug, Subcommand)]
enum GateCommand {
    /// Pay every recorded run again and report, per attack, what honest
    /// workers and attackers earn and how attackers' scores stand against
    /// the round's majority.
    Replay(ReplayArgs),
    /// Resample recorded rounds into windows and count honest workers the
    /// gate denies: the false-denial rate per worker per window.
    Errors(ErrorsArgs),
}

/// Recordings and the gate's settings, shared by both commands.
#[derive(Debug, Args)]
struct Recordings {
    /// Battery reports (`crowdtrain battery --json`), recorded by this
    /// version or later (each run carries its rounds' scores).
    #[arg(required = true, value_name = "FILE")]
    files: Vec<PathBuf>,

    /// Evidence (nats) at which the gate denies. Default: as recorded.
    #[arg(long)]
    threshold: Option<f64>,

    /// The floor of a round's spread, as a fraction of the recent rounds'
    /// median spread (0: none, the gate before 2026-12-05's session 12).
    /// Default: as recorded (recordings made before the floor existed read
    /// as the default, 0.5).
    #[arg(long)]
    spread_floor: Option<f64>,

    /// Print one JSON object on stdout instead of a report.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct ReplayArgs {
    #[command(flatten)]
    recordings: Recordings,
}

#[derive(Debug, Args)]
struct ErrorsArgs {
    #[command(flatten)]
    recordings: Recordings,

    /// Which recorded runs to resample: `none` (the clean runs, every
    /// worker honest) or an attack's name (its honest workers, judged
    /// beside the attackers).
    #[arg(long, default_value = "none")]
    attack: String,

    /// Rounds a window (counted from round 0).
    #[arg(long, default_value_t = 20)]
    window: u64,

    /// Consecutive rounds taken whole from one recorded run.
    #[arg(long, default_value_t = 5)]
    block: u64,

    /// Windows built.
    #[arg(long, default_value_t = 20_000)]
    resamples: u64,

    /// Bootstrap replicates over the recorded runs, for an interval that
    /// includes the recordings' own variability (0: none).
    #[arg(long, default_value_t = 200)]
    outer: u64,

    /// Keys the resampling.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

pub fn run(args: GateArgs) -> anyhow::Result<()> {
    match args.command {
        GateCommand::Replay(args) => replay(args),
        GateCommand::Errors(args) => errors(args),
    }
}

/// The part of a battery report these commands read.
#[derive(Debug, Deserialize)]
struct Report {
    config: RecordedConfig,
    clean_runs: Vec<Run>,
    attacks: Vec<AttackRuns>,
}

#[derive(Debug, Deserialize)]
struct RecordedConfig {
    workers: usize,
    defense: RecordedDefense,
}

#[derive(Debug, Deserialize)]
struct RecordedDefense {
    quality: QualityConfig,
}

#[derive(Debug, Deserialize)]
struct AttackRuns {
    attack: String,
    runs: Vec<Run>,
}

#[derive(Debug, Clone, Deserialize)]
struct Run {
    attack: String,
    seed: u64,
    test_accuracy: f64,
    credits: Vec<u64>,
    honest_workers: usize,
    work_units: u64,
    rounds: Vec<ScoredRound>,
}

/// Every run of `files`, with the gate settings it was recorded under.
fn load(files: &[PathBuf]) -> anyhow::Result<Vec<(Run, usize, QualityConfig)>> {
    let mut runs = Vec::new();
    for file in files {
        let text = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
        let report: Report = serde_json::from_slice(&text).with_context(|| {
            format!(
                "{} is not a battery report with recorded rounds (crowdtrain battery --json)",
                file.display()
            )
        })?;
        let quality = report.config.defense.quality;
        for run in report.clean_runs.into_iter().chain(report.attacks.into_iter().flat_map(|attack| {
            debug_assert!(attack.runs.iter().all(|run| run.attack == attack.attack));
            attack.runs
        })) {
            anyhow::ensure!(
                run.credits.len() == report.config.workers && run.honest_workers <= run.credits.len(),
                "{}: a run of {} slots in a battery of {} workers",
                file.display(),
                run.credits.len(),
                report.config.workers
            );
            runs.push((run, report.config.workers, quality));
        }
    }
    Ok(runs)
}

impl Recordings {
    fn config(&self, recorded: &QualityConfig) -> anyhow::Result<QualityConfig> {
        let config = QualityConfig {
            threshold: self.threshold.unwrap_or(recorded.threshold),
            spread_floor: self.spread_floor.unwrap_or(recorded.spread_floor),
            ..*recorded
        };
        config
            .validate()
            .map_err(|(field, reason)| anyhow::anyhow!("--{}: {reason}", field.replace('_', "-")))?;
        Ok(config)
    }
}

/// One run paid again.
#[derive(Debug, Serialize)]
struct Replayed {
    seed: u64,
    workers: usize,
    honest: usize,
    rounds: usize,
    test_accuracy: f64,
    credits: Vec<u64>,
    rounds_denied: Vec<u64>,
    peak_evidence: Vec<f64>,
    honest_share_gap: f64,
    attacker_credits_vs_honest: f64,
    /// The replay under the recorded settings paid exactly what the
    /// battery did (the recording is faithful).
    matches_recording: bool,
    /// Of the rounds with power: how often an honest and an attacking
    /// update scored below the round's median, and their median
    /// standardised deviations.
    honest_below_median: f64,
    attackers_below_median: Option<f64>,
    honest_median_deviation: f64,
    attackers_median_deviation: Option<f64>,
}

/// One attack's runs paid again.
#[derive(Debug, Serialize)]
struct AttackReplay {
    attack: String,
    /// Over seeds: the largest honest gap, the mean attacker pay.
    honest_share_gap: f64,
    attacker_credits_vs_honest: f64,
    honest_workers_denied: usize,
    runs: Vec<Replayed>,
}

fn replay(args: ReplayArgs) -> anyhow::Result<()> {
    let runs = load(&args.recordings.files)?;
    let mut by_attack: BTreeMap<(usize, String), Vec<Replayed>> = BTreeMap::new();
    for (run, workers, recorded) in runs {
        let config = args.recordings.config(&recorded)?;
        let pay = PayRecord::replay(workers, &run.rounds, run.work_units, &config);
        let as_recorded = PayRecord::replay(workers, &run.rounds, run.work_units, &recorded);
        let honest = run.honest_workers;
        let standing = standing(&run, &config);
        by_attack.entry((workers, run.attack.clone())).or_default().push(Replayed {
            seed: run.seed,
            workers,
            honest,
            rounds: run.rounds.len(),
            test_accuracy: run.test_accuracy,
            honest_share_gap: pay.honest_share_gap(honest),
            attacker_credits_vs_honest: pay.attacker_credits_vs_honest(honest),
            matches_recording: as_recorded.credits == run.credits,
            credits: pay.credits,
            rounds_denied: pay.rounds_denied,
            peak_evidence: pay.peak_evidence,
            honest_below_median: standing.honest.0,
            attackers_below_median: standing.attackers.map(|(below, _)| below),
            honest_median_deviation: standing.honest.1,
            attackers_median_deviation: standing.attackers.map(|(_, median)| median),
        });
    }
    let attacks: Vec<AttackReplay> = by_attack
        .into_iter()
        .map(|((_, attack), runs)| AttackReplay {
            attack,
            honest_share_gap: runs.iter().map(|run| run.honest_share_gap).fold(0.0, f64::max),
            attacker_credits_vs_honest: runs.iter().map(|run| run.attacker_credits_vs_honest).sum::<f64>()
                / runs.len() as f64,
            honest_workers_denied: runs
                .iter()
                .map(|run| run.rounds_denied[..run.honest].iter().filter(|&&rounds| rounds > 0).count())
                .sum(),
            runs,
        })
        .collect();
    anyhow::ensure!(
        attacks.iter().flat_map(|attack| &attack.runs).all(|run| run.matches_recording),
        "a replay under the recorded settings did not pay what the battery paid: the recording is not faithful"
    );
    if args.recordings.json {
        #[derive(Serialize)]
        struct Out {
            attacks: Vec<AttackReplay>,
        }
        return output::print_json(&Out { attacks });
    }
    let mut table = output::table(&[
        "workers",
        "attack",
        "honest gap (max)",
        "honest denied",
        "attacker pay / honest",
        "below median (honest / attackers)",
        "median deviation (honest / attackers)",
    ]);
    for attack in &attacks {
        let mean = |pick: fn(&Replayed) -> Option<f64>| {
            let values: Vec<f64> = attack.runs.iter().filter_map(pick).collect();
            (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
        };
        let show =
            |value: Option<f64>, digits: usize| value.map_or("-".into(), |value| format!("{value:.digits$}"));
        table.add_row(vec![
            format!("{} ({} honest)", attack.runs[0].workers, attack.runs[0].honest),
            attack.attack.clone(),
            format!("{:.1}%", 100.0 * attack.honest_share_gap),
            attack.honest_workers_denied.to_string(),
            format!("{:.3}", attack.attacker_credits_vs_honest),
            format!(
                "{} / {}",
                show(mean(|run| Some(run.honest_below_median)), 2),
                show(mean(|run| run.attackers_below_median), 2)
            ),
            format!(
                "{} / {}",
                show(mean(|run| Some(run.honest_median_deviation)), 2),
                show(mean(|run| run.attackers_median_deviation), 2)
            ),
        ]);
    }
    println!("{table}");
    println!("every replay under the recorded settings paid exactly what the battery paid");
    Ok(())
}

/// How a run's honest and attacking updates stood against their rounds'
/// medians, over the rounds with power: the fraction below it and the
/// median standardised deviation, for the honest slots and the attackers'
/// (`None` without attackers scored).
struct Standing {
    honest: (f64, f64),
    attackers: Option<(f64, f64)>,
}

fn standing(run: &Run, config: &QualityConfig) -> Standing {
    let (mut honest, mut attackers) = (Vec::new(), Vec::new());
    for round in &run.rounds {
        let pairs = round.pairs();
        let values: Vec<f64> = pairs.iter().map(|&(_, score)| score).collect();
        let Some(round_deviations) = deviations(&values, round.examples, config) else { continue };
        for (&(worker, _), &deviation) in pairs.iter().zip(&round_deviations.deviations) {
            let side = if (worker as usize) < run.honest_workers { &mut honest } else { &mut attackers };
            side.push(deviation);
        }
    }
    let summary = |mut values: Vec<f64>| {
        (!values.is_empty()).then(|| {
            let below =
                values.iter().filter(|&&deviation| deviation < 0.0).count() as f64 / values.len() as f64;
            values.sort_by(f64::total_cmp);
            (below, values[values.len() / 2])
        })
    };
    Standing { honest: summary(honest).unwrap_or((f64::NAN, f64::NAN)), attackers: summary(attackers) }
}

fn errors(args: ErrorsArgs) -> anyhow::Result<()> {
    let runs = load(&args.recordings.files)?;
    let mut groups: BTreeMap<(usize, usize), (Vec<RecordedRun>, QualityConfig)> = BTreeMap::new();
    for (run, workers, recorded) in runs.into_iter().filter(|(run, _, _)| run.attack == args.attack) {
        let config = args.recordings.config(&recorded)?;
        let group = groups.entry((workers, run.honest_workers)).or_insert_with(|| (Vec::new(), config));
        anyhow::ensure!(
            group.1 == config,
            "the recordings of {workers} workers were scored under different settings"
        );
        group.0.push(RecordedRun {
            workers,
            honest: run.honest_workers,
            work_units: run.work_units,
            rounds: run.rounds,
        });
    }
    anyhow::ensure!(!groups.is_empty(), "no recorded runs of attack {:?} in these files", args.attack);
    let resampling = Resampling {
        window: args.window,
        block: args.block,
        resamples: args.resamples,
        outer: args.outer,
        seed: args.seed,
    };
    let estimates: Vec<FalseDenials> = groups
        .values()
        .map(|(runs, config)| false_denials(runs, &resampling, config))
        .collect::<Result<_, _>>()?;
    if args.recordings.json {
        #[derive(Serialize)]
        struct Out<'a> {
            attack: &'a str,
            groups: Vec<FalseDenials>,
        }
        return output::print_json(&Out { attack: &args.attack, groups: estimates });
    }
    let mut table = output::table(&[
        "workers (honest)",
        "runs",
        "worker-windows",
        "denied",
        "rate",
        "95% (resampling)",
        "95% (recordings)",
        "work lost",
        "peak evidence >= 5 / 7.5 / 10",
        "recorded windows denied",
    ]);
    for estimate in &estimates {
        let level = |at: f64| {
            estimate
                .peak_evidence_at_least
                .iter()
                .find(|(level, _)| *level == at)
                .map_or(0.0, |(_, share)| *share)
        };
        table.add_row(vec![
            format!("{} ({})", estimate.workers, estimate.honest),
            estimate.runs.to_string(),
            estimate.worker_windows.to_string(),
            estimate.denied_windows.to_string(),
            format!("{:.2e}", estimate.rate),
            format!("{:.2e} - {:.2e}", estimate.resampling_interval.0, estimate.resampling_interval.1),
            estimate.recordings_interval.map_or("-".into(), |(low, high)| format!("{low:.2e} - {high:.2e}")),
            format!("{:.2e}", estimate.work_lost),
            format!("{:.4} / {:.4} / {:.4}", level(5.0), level(7.5), level(10.0)),
            format!("{} of {}", estimate.recorded_denied, estimate.recorded_windows),
        ]);
    }
    println!("{table}");
    println!(
        "attack {}: windows of {} rounds from round 0, blocks of {}, {} resamples, {} outer replicates",
        args.attack, args.window, args.block, args.resamples, args.outer
    );
    Ok(())
}
