//! `crowdtrain sim ...`: whole training networks simulated in one process.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use crowdtrain_data::{DatasetInfo, Sharding};
use crowdtrain_defense::{Aggregator, CheckConfig, ModelDefense};
use crowdtrain_train::diloco::{self, DilocoConfig, RoundReport};
use crowdtrain_train::{AdamW, Codec, ModelKind, Nesterov};
use serde::Serialize;

use crate::output::{self, RuntimeArgs};
use crate::plot::{self, Series};

/// Simulate a training network in one process.
#[derive(Debug, Args)]
pub struct SimArgs {
    #[command(subcommand)]
    command: SimCommand,
}

#[derive(Debug, Subcommand)]
enum SimCommand {
    /// DiLoCo rounds beside synchronous data parallelism at the same sample
    /// budget: accuracy, loss and bytes on the network, round by round.
    Diloco(DilocoArgs),
}

#[derive(Debug, Args)]
struct DilocoArgs {
    /// Number of workers (K).
    #[arg(long, default_value_t = 8)]
    workers: usize,

    /// Inner optimizer steps per round (H).
    #[arg(long, default_value_t = 50)]
    inner_steps: u64,

    /// Rounds (R).
    #[arg(long, default_value_t = 20)]
    rounds: u64,

    /// Seed for initialisation, shards and batches.
    #[arg(long, default_value_t = 0)]
    seed: u64,

    /// Model architecture: mlp or cnn.
    #[arg(long, default_value = "mlp")]
    model: ModelKind,

    /// Examples per inner step per worker.
    #[arg(long, default_value_t = 64)]
    batch: usize,

    /// Split the data with Dirichlet(ALPHA) label skew instead of IID.
    #[arg(long, value_name = "ALPHA")]
    dirichlet: Option<f64>,

    /// Inner AdamW learning rate.
    #[arg(long, default_value_t = AdamW::default().lr)]
    inner_lr: f32,

    /// Outer Nesterov learning rate.
    #[arg(long, default_value_t = Nesterov::default().lr)]
    outer_lr: f32,

    /// Outer Nesterov momentum.
    #[arg(long, default_value_t = Nesterov::default().momentum)]
    outer_momentum: f32,

    /// Encoding of pseudo-gradients on the wire: int8 or f32.
    #[arg(long, default_value = "int8")]
    codec: Codec,

    /// How updates are combined: mean (plain DiLoCo, no checks), or, with
    /// the coordinator's checks first, trimmed-mean[:TRIM], median or
    /// centered-clip[:MOMENTUM[:ITERATIONS]] (the coordinator's default). To
    /// reproduce a networked run of the default run.toml bit for bit, pass
    /// `--aggregator centered-clip --validation-fraction 0.05`.
    #[arg(long, default_value = "mean")]
    aggregator: Aggregator,

    /// Share of the training set held out of every shard (the coordinator
    /// holds out `quality.validation_fraction`, 0.05 by default, to score
    /// updates on).
    #[arg(long, default_value_t = 0.0)]
    validation_fraction: f64,

    /// Write test accuracy per round of both runs to this file (.png or .svg).
    #[arg(long, value_name = "FILE")]
    plot: Option<PathBuf>,

    #[command(flatten)]
    runtime: RuntimeArgs,
}

#[derive(Debug, Serialize)]
struct DilocoOutput {
    dataset: DatasetInfo,
    config: DilocoConfig,
    threads: usize,
    final_test_accuracy: f64,
    baseline_test_accuracy: f64,
    bytes_diloco: u64,
    bytes_baseline: u64,
    /// How many times fewer bytes DiLoCo moved.
    bytes_ratio: f64,
    diloco_state_hash: String,
    baseline_state_hash: String,
    aggregator: String,
    rounds: Vec<RoundReport>,
}

pub fn run(args: SimArgs) -> anyhow::Result<()> {
    match args.command {
        SimCommand::Diloco(args) => run_diloco(args),
    }
}

fn run_diloco(args: DilocoArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.workers >= 1, "--workers must be at least 1");
    anyhow::ensure!(args.inner_steps >= 1, "--inner-steps must be at least 1");
    anyhow::ensure!(args.rounds >= 1, "--rounds must be at least 1");
    anyhow::ensure!(args.batch >= 1, "--batch must be at least 1");
    anyhow::ensure!(
        (0.0..0.5).contains(&args.validation_fraction),
        "--validation-fraction must be in [0, 0.5)"
    );
    args.runtime.clone().on_thread_pool(|| simulate_diloco(args))
}

fn simulate_diloco(args: DilocoArgs) -> anyhow::Result<()> {
    let dataset = args.runtime.load_data()?;
    let config = DilocoConfig {
        model: args.model,
        workers: args.workers,
        inner_steps: args.inner_steps,
        rounds: args.rounds,
        batch_size: args.batch,
        seed: args.seed,
        sharding: args.dirichlet.map_or(Sharding::Iid, |alpha| Sharding::Dirichlet { alpha }),
        inner: AdamW { lr: args.inner_lr, ..AdamW::default() },
        outer: Nesterov { lr: args.outer_lr, momentum: args.outer_momentum },
        codec: args.codec,
        validation_fraction: args.validation_fraction,
        inner_schedule: crowdtrain_train::Schedule::Constant,
        clip_norm: None,
    };
    let mut aggregate: Box<dyn diloco::Aggregate> = match args.aggregator {
        Aggregator::Mean => Box::new(diloco::Mean),
        robust => Box::new(ModelDefense::new(CheckConfig::default(), robust)),
    };
    let human = !args.runtime.json;
    let progress = output::progress_bar(config.rounds, "rounds");
    let mut table = output::table(&[
        "round",
        "samples",
        "DiLoCo acc",
        "DiLoCo loss",
        "DiLoCo bytes",
        "baseline acc",
        "baseline loss",
        "baseline bytes",
    ]);
    let report = diloco::simulate(&config, &dataset, aggregate.as_mut(), |round| {
        progress.inc(1);
        progress.set_message(format!(
            "DiLoCo {:.2}%, baseline {:.2}%",
            100.0 * round.diloco_test_accuracy,
            100.0 * round.baseline_test_accuracy
        ));
        table.add_row(vec![
            round.round.to_string(),
            round.samples.to_string(),
            format!("{:.2}%", 100.0 * round.diloco_test_accuracy),
            format!("{:.4}", round.diloco_test_loss),
            output::bytes(round.diloco_bytes),
            format!("{:.2}%", 100.0 * round.baseline_test_accuracy),
            format!("{:.4}", round.baseline_test_loss),
            output::bytes(round.baseline_bytes),
        ]);
    })?;
    progress.finish_and_clear();
    let last = report.last().expect("at least one round ran");
    let output = DilocoOutput {
        dataset: dataset.info.clone(),
        threads: rayon::current_num_threads(),
        final_test_accuracy: last.diloco_test_accuracy,
        baseline_test_accuracy: last.baseline_test_accuracy,
        bytes_diloco: last.diloco_bytes,
        bytes_baseline: last.baseline_bytes,
        bytes_ratio: last.baseline_bytes as f64 / last.diloco_bytes.max(1) as f64,
        diloco_state_hash: report.diloco_state_hash.to_hex(),
        baseline_state_hash: report.baseline_state_hash.to_hex(),
        aggregator: args.aggregator.to_string(),
        rounds: report.rounds.clone(),
        config,
    };
    if let Some(path) = &args.plot {
        let curve = |pick: fn(&RoundReport) -> f64| {
            report.rounds.iter().map(|round| (round.samples as f64, 100.0 * pick(round))).collect()
        };
        plot::line_chart(
            path,
            &format!(
                "DiLoCo (K={}, H={}) vs synchronous data parallel",
                output.config.workers, output.config.inner_steps
            ),
            "training samples",
            "test accuracy (%)",
            &[
                Series { name: "DiLoCo".into(), points: curve(|round| round.diloco_test_accuracy) },
                Series {
                    name: "synchronous baseline".into(),
                    points: curve(|round| round.baseline_test_accuracy),
                },
            ],
        )?;
    }
    if !human {
        return output::print_json(&output);
    }
    println!("{table}");
    println!(
        "DiLoCo: {:.2}% test accuracy with {}; baseline: {:.2}% with {} ({:.1}x more).",
        100.0 * output.final_test_accuracy,
        output::bytes(output.bytes_diloco),
        100.0 * output.baseline_test_accuracy,
        output::bytes(output.bytes_baseline),
        output.bytes_ratio,
    );
    if let Some(path) = &args.plot {
        println!("plot: {}", path.display());
    }
    Ok(())
}
