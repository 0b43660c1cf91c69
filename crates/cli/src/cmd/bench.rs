//! `crowdtrain bench ...`: micro-benchmarks whose figures go into
//! `docs/BENCHMARKS.md`, always beside a baseline measured in the same run.

use std::time::Instant;

use clap::{Args, Subcommand};
use crowdtrain_data::Batch;
use crowdtrain_data::rng::{RngKey, keyed_rng, standard_normal, uniform_below};
use crowdtrain_train::kernels::active_path;
use crowdtrain_train::{AdamW, ModelKind, TrainState, Trainer};
use serde::Serialize;

use crate::output;

/// Measure how fast the training core runs.
#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    command: BenchCommand,
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// Training steps per second (forward, backward, AdamW) on fixed
    /// synthetic batches, as bench/pytorch_baseline.py measures PyTorch.
    TrainStep(TrainStepArgs),
}

#[derive(Debug, Args)]
struct TrainStepArgs {
    /// Model architecture: mlp or cnn.
    #[arg(long, default_value = "mlp")]
    model: ModelKind,

    /// Examples per step.
    #[arg(long, default_value_t = 64)]
    batch: usize,

    /// Worker threads (default: RAYON_NUM_THREADS, else one per core).
    #[arg(long, value_name = "T")]
    threads: Option<usize>,

    /// Timed steps per repetition.
    #[arg(long, default_value_t = 2000)]
    steps: u64,

    /// Untimed steps first, to warm caches and the allocator.
    #[arg(long, default_value_t = 200)]
    warmup: u64,

    /// Timed repetitions; the median is reported.
    #[arg(long, default_value_t = 5)]
    repeats: usize,

    /// Print one JSON object on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Serialize)]
struct TrainStepReport {
    model: String,
    batch: usize,
    threads: usize,
    kernels: &'static str,
    steps: u64,
    repeats: usize,
    /// Median over the repetitions.
    samples_per_sec: f64,
    samples_per_sec_min: f64,
    samples_per_sec_max: f64,
    ms_per_step: f64,
}

/// Distinct synthetic batches cycled through, as in the PyTorch script.
const BATCHES: u64 = 16;

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    match args.command {
        BenchCommand::TrainStep(args) => output::on_thread_pool(args.threads, || train_step(args)),
    }
}

fn train_step(args: TrainStepArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.batch >= 1 && args.steps >= 1 && args.repeats >= 1,
        "batch, steps and repeats must be positive"
    );
    let threads = rayon::current_num_threads();
    let model = args.model.build();
    let features = 784;
    let batches: Vec<Batch> = (0..BATCHES)
        .map(|index| {
            let mut rng = keyed_rng("bench", RngKey::new(0, 0, 0, index));
            Batch {
                inputs: (0..args.batch * features).map(|_| standard_normal(&mut rng) as f32).collect(),
                features,
                targets: (0..args.batch).map(|_| uniform_below(&mut rng, 10) as u32).collect(),
            }
        })
        .collect();
    let mut state = TrainState::new(model.name(), model.layout().initialize(0));
    let mut trainer = Trainer::new(model.as_ref(), AdamW::default(), args.batch);
    let mut step = |state: &mut TrainState| -> anyhow::Result<()> {
        let batch = &batches[(state.step % BATCHES) as usize];
        trainer.step_on(state, batch)?;
        Ok(())
    };
    for _ in 0..args.warmup {
        step(&mut state)?;
    }
    let progress = output::progress_bar(args.repeats as u64, "repeats");
    let mut rates = Vec::with_capacity(args.repeats);
    for _ in 0..args.repeats {
        let started = Instant::now();
        for _ in 0..args.steps {
            step(&mut state)?;
        }
        rates.push((args.steps as f64 * args.batch as f64) / started.elapsed().as_secs_f64());
        progress.inc(1);
    }
    progress.finish_and_clear();
    rates.sort_by(f64::total_cmp);
    let median = rates[rates.len() / 2];
    let report = TrainStepReport {
        model: model.name(),
        batch: args.batch,
        threads,
        kernels: active_path().name(),
        steps: args.steps,
        repeats: args.repeats,
        samples_per_sec: median,
        samples_per_sec_min: rates[0],
        samples_per_sec_max: rates[rates.len() - 1],
        ms_per_step: 1000.0 * args.batch as f64 / median,
    };
    if args.json {
        return output::print_json(&report);
    }
    println!(
        "{}: {:.0} samples/s (median of {}; min {:.0}, max {:.0}), {:.3} ms/step, batch {}, {} threads, {} kernels",
        report.model,
        report.samples_per_sec,
        report.repeats,
        report.samples_per_sec_min,
        report.samples_per_sec_max,
        report.ms_per_step,
        report.batch,
        report.threads,
        report.kernels
    );
    Ok(())
}
