//! `crowdtrain sim network`: the deterministic simulator of the whole
//! network (`crowdtrain-simnet`), one seed or a range of them.

use clap::Args;
use crowdtrain_protocol::config::AuditReplay;
use crowdtrain_simnet::{Auditors, Faults, SimConfig, Summary, Tally, TrainingMode};
use serde::Serialize;

use crate::output;

#[derive(Debug, Args)]
pub struct NetworkArgs {
    /// The seed: it decides every message, fault, churn and attack.
    #[arg(long, default_value_t = 0, conflicts_with = "seeds")]
    seed: u64,

    /// Run every seed of `A..B` (B excluded) and report the first that
    /// breaks an invariant.
    #[arg(long, value_parser = parse_seeds)]
    seeds: Option<(u64, u64)>,

    /// Workers at the start.
    #[arg(long, default_value_t = 12)]
    workers: u32,

    /// Rounds the run trains for.
    #[arg(long, default_value_t = 8)]
    rounds: u64,

    /// Churn events (leaves, crashes and restarts, joins) over the run, as
    /// a fraction of the workers.
    #[arg(long, default_value_t = 0.3)]
    churn: f64,

    /// The fraction of workers that attack (lazy, fake reveals, copies,
    /// harmful and malformed updates).
    #[arg(long, default_value_t = 0.2)]
    attackers: f64,

    /// Faults as key=value,...: crash and write (coordinator crashes and
    /// failed writes per round), loss and dup (chance per message), delay
    /// (most ms a message is delayed); `none` for none. Unset keys keep
    /// their defaults: crash=0.05,write=0.05,loss=0.05,dup=0.02,delay=200.
    #[arg(long, default_value = "", value_parser = Faults::parse)]
    faults: Faults,

    /// Who replays audited segments: `coordinator`, or `workers` (each
    /// audit delegated to another committed worker, its report checked
    /// when it disagrees). Unset: odd seeds delegate.
    #[arg(long, value_parser = Auditors::parse)]
    auditors: Option<Auditors>,

    /// Each worker's bond in work units (0: none); a slash takes 100 and
    /// a worker whose bond cannot cover one gets no more work. Unset: 300
    /// for seeds 2 and 3 modulo 4, 0 for the others.
    #[arg(long)]
    bond: Option<u64>,

    /// What the workers compute: `hash` (a hash stands in for training and
    /// replays: cheap, for thousands of workers) or `model` (the tiny MLP
    /// really trains on the bundled Fashion-MNIST subset; real commitments,
    /// answers and bit-exact replays, the coordinator's real model
    /// training; seconds for a few workers and rounds).
    #[arg(long, default_value = "hash", value_parser = TrainingMode::parse)]
    training: TrainingMode,

    /// The fraction of workers that commit a near copy of a neighbour's
    /// update (its values plus noise at 10^-3), on top of --attackers.
    #[arg(long, default_value_t = 0.0)]
    near_copiers: f64,

    /// The fraction of workers that commit a near copy of a neighbour's
    /// update with a made-up trace, on top of --attackers and
    /// --near-copiers: its audit may go to a worker auditor, whom any
    /// attacker passes (stand-in training only).
    #[arg(long, default_value_t = 0.0)]
    forgers: f64,

    /// Where audits replay from: `segment` (the audited worker answers with
    /// its segment's start state) or `from-start` (the coordinator replays
    /// the round from its base through the drawn segment, checking every
    /// boundary the commitment carries; no answer). `from-start` delegates
    /// no audit (unset --auditors is `coordinator` then).
    #[arg(long, default_value = "segment", value_parser = parse_replay)]
    replay: AuditReplay,

    /// The delayed outer update (`[outer] delay`, 0 to 4): round r trains
    /// from the model of round r - D, so up to D + 1 rounds are live at
    /// once and the workers pipeline them (train the next round while the
    /// ones before it commit, answer audits and reveal).
    #[arg(long, default_value_t = 0)]
    outer_delay: u32,

    /// Workers reveal as soon as their commitment is in, in the commit
    /// phase (the real worker's default without a bucket), rather than once
    /// the reveal phase begins.
    #[arg(long)]
    early_reveals: bool,

    /// Print the summary (or, with --seeds, the totals) as JSON.
    #[arg(long)]
    json: bool,
}

fn parse_replay(text: &str) -> Result<AuditReplay, String> {
    match text {
        "segment" => Ok(AuditReplay::Segment),
        "from-start" => Ok(AuditReplay::FromStart),
        _ => Err(format!("`{text}`: audits replay from `segment` or `from-start`")),
    }
}

fn parse_seeds(text: &str) -> Result<(u64, u64), String> {
    let (from, to) = text.split_once("..").ok_or("seeds are a range A..B")?;
    let from: u64 = from.parse().map_err(|_| format!("`{from}` is not a seed"))?;
    let to: u64 = to.parse().map_err(|_| format!("`{to}` is not a seed"))?;
    (from < to).then_some((from, to)).ok_or_else(|| format!("the range {text} is empty"))
}

/// What one seed reports.
#[derive(Debug, Serialize)]
struct SeedReport {
    training: TrainingMode,
    outer_delay: u32,
    #[serde(flatten)]
    summary: Summary,
    /// The digest of the model the run finished on (in model mode, its
    /// real checkpoint's), if it finished.
    final_model: Option<String>,
}

/// What `--seeds` reports.
#[derive(Debug, Serialize)]
struct SeedsReport {
    outer_delay: u32,
    seeds: u64,
    passed: u64,
    /// The first failing seed, its violation and the command reproducing it.
    failure: Option<String>,
    first_failing_seed: Option<u64>,
    /// The passing seeds' tallies, added up.
    #[serde(flatten)]
    tally: Tally,
    crashes: u64,
    write_faults: u64,
    rounds_reproduced: u64,
    wall_ms: u64,
}

pub fn run(args: NetworkArgs) -> anyhow::Result<()> {
    let config = |seed| SimConfig {
        seed,
        workers: args.workers,
        rounds: args.rounds,
        churn: args.churn,
        attackers: args.attackers,
        faults: args.faults,
        auditors: match args.replay {
            AuditReplay::FromStart => args.auditors.unwrap_or(Auditors::Coordinator),
            AuditReplay::Segment => args.auditors.unwrap_or(Auditors::for_seed(seed)),
        },
        bond: args.bond.unwrap_or(crowdtrain_simnet::bond_for_seed(seed)),
        training: args.training,
        near_copiers: args.near_copiers,
        forgers: args.forgers,
        replay_from_start: args.replay == AuditReplay::FromStart,
        outer_delay: args.outer_delay,
        early_reveals: args.early_reveals,
    };
    anyhow::ensure!(
        args.replay == AuditReplay::Segment
            || args.auditors.is_none_or(|auditors| auditors == Auditors::Coordinator),
        "--replay from-start takes --auditors coordinator (a delegated auditor needs an answer to replay)"
    );
    anyhow::ensure!(
        (0.0..=1.0).contains(&args.near_copiers) && args.near_copiers + args.attackers <= 1.0,
        "--near-copiers is a fraction, at most 1 with --attackers"
    );
    anyhow::ensure!(
        (0.0..=1.0).contains(&args.forgers) && args.forgers + args.near_copiers + args.attackers <= 1.0,
        "--forgers is a fraction, at most 1 with --attackers and --near-copiers"
    );
    anyhow::ensure!(
        args.forgers == 0.0 || args.training == TrainingMode::Hash,
        "--forgers takes --training hash (the real worker has no forging cheat)"
    );
    config(args.seed).validate().map_err(anyhow::Error::msg)?;
    let Some((from, to)) = args.seeds else {
        let finished = crowdtrain_simnet::simulate(&config(args.seed))?;
        let final_model = finished.final_model.map(|digest| digest.to_string());
        let report = SeedReport {
            training: args.training,
            outer_delay: args.outer_delay,
            summary: finished.summary,
            final_model,
        };
        if args.json {
            return output::print_json(&report);
        }
        print_summary(&report);
        return Ok(());
    };
    let started = std::time::Instant::now();
    let progress = output::progress_bar(to - from, "seeds");
    let mut report = SeedsReport {
        outer_delay: args.outer_delay,
        seeds: 0,
        passed: 0,
        failure: None,
        first_failing_seed: None,
        tally: Tally::default(),
        crashes: 0,
        write_faults: 0,
        rounds_reproduced: 0,
        wall_ms: 0,
    };
    for seed in from..to {
        report.seeds += 1;
        match crowdtrain_simnet::run(&config(seed)) {
            Ok(summary) => {
                report.passed += 1;
                report.tally.add(&summary.tally);
                report.crashes += summary.crashes;
                report.write_faults += summary.write_faults;
                report.rounds_reproduced += summary.rounds_reproduced;
            }
            Err(failure) => {
                report.first_failing_seed = Some(seed);
                report.failure = Some(failure.to_string());
                break;
            }
        }
        progress.inc(1);
    }
    progress.finish_and_clear();
    report.wall_ms = started.elapsed().as_millis() as u64;
    if args.json {
        output::print_json(&report)?;
    } else {
        println!(
            "{} of {} seeds passed every invariant ({} rounds closed, {} reproduced fault-free, {} coordinator \
             crashes, {} failed writes, {} slashings, {} auditors slashed, {} delegated verdicts, {} bonds \
             exhausted) in {:.1} s",
            report.passed,
            to - from,
            report.tally.rounds_closed,
            report.rounds_reproduced,
            report.crashes,
            report.write_faults,
            report.tally.slashings,
            report.tally.auditors_slashed,
            report.tally.delegated_verdicts,
            report.tally.bonds_exhausted,
            report.wall_ms as f64 / 1000.0
        );
    }
    match report.failure {
        Some(failure) => anyhow::bail!("{failure}"),
        None => Ok(()),
    }
}

fn print_summary(report: &SeedReport) {
    let summary = &report.summary;
    let mut table = output::table(&[]);
    let rows: [(&str, String); 22] = [
        ("seed", summary.seed.to_string()),
        ("training", report.training.as_str().to_owned()),
        ("outer delay", report.outer_delay.to_string()),
        (
            "rounds closed / failed",
            format!("{} / {}", summary.tally.rounds_closed, summary.tally.rounds_failed),
        ),
        ("submissions accepted", summary.tally.submissions_accepted.to_string()),
        ("late commitments and reveals", summary.tally.late.to_string()),
        (
            "slashings (attackers, honest excused, of which after an outage)",
            format!(
                "{} ({}, {}, {})",
                summary.tally.slashings,
                summary.tally.attackers_slashed,
                summary.tally.honest_slashes_excused,
                summary.tally.honest_slashes_after_outage
            ),
        ),
        ("updates refused", summary.tally.updates_refused.to_string()),
        (
            "delegated verdicts / auditors slashed",
            format!("{} / {}", summary.tally.delegated_verdicts, summary.tally.auditors_slashed),
        ),
        (
            "drawn from bonds / bonds exhausted",
            format!("{} / {}", summary.tally.drawn_from_bond, summary.tally.bonds_exhausted),
        ),
        ("rounds reproduced by a fault-free aggregation", summary.rounds_reproduced.to_string()),
        ("final model", report.final_model.clone().unwrap_or_else(|| "(not finished)".into())),
        ("coordinator crashes injected", summary.crashes.to_string()),
        ("failed writes injected", summary.write_faults.to_string()),
        ("restores compared in full", summary.restores_compared.to_string()),
        (
            "workers joined / left / crashed",
            format!("{} / {} / {}", summary.workers_joined, summary.workers_left, summary.workers_crashed),
        ),
        (
            "messages (lost, duplicated)",
            format!("{} ({}, {})", summary.messages, summary.messages_lost, summary.messages_duplicated),
        ),
        ("ledger entries", summary.ledger_entries.to_string()),
        ("invariants checked", summary.invariants_checked.to_string()),
        ("virtual time", format!("{:.1} s", summary.virtual_ms as f64 / 1000.0)),
        ("wall time", format!("{:.2} s", summary.wall_ms as f64 / 1000.0)),
        ("summary hash", summary.hash.clone()),
    ];
    for (name, value) in rows {
        table.add_row(vec![name.to_owned(), value]);
    }
    println!("{table}");
}
