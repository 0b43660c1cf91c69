//! `crowdtrain train`: central training of one model, the reference point
//! for everything distributed.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Args;
use crowdtrain_data::{DatasetInfo, RngKey};
use crowdtrain_train::kernels::active_path;
use crowdtrain_train::{AdamW, ModelKind, Schedule, TrainState, Trainer, evaluate};
use serde::Serialize;

use crate::output::{self, RuntimeArgs};
use crate::plot::{self, Series};

/// Train a model centrally on the whole training set.
#[derive(Debug, Args)]
pub struct TrainArgs {
    /// Model architecture: mlp (784-256-10) or cnn.
    #[arg(long, default_value = "mlp")]
    model: ModelKind,

    /// Optimizer steps.
    #[arg(long, default_value_t = 10_000)]
    steps: u64,

    /// Seed for initialisation and batch sampling.
    #[arg(long, default_value_t = 0)]
    seed: u64,

    /// Examples per step.
    #[arg(long, default_value_t = 64)]
    batch: usize,

    /// AdamW learning rate.
    #[arg(long, default_value_t = AdamW::default().lr)]
    lr: f32,

    /// AdamW decoupled weight decay.
    #[arg(long, default_value_t = AdamW::default().weight_decay)]
    weight_decay: f32,

    /// Learning-rate schedule: cosine (decay to 5% of --lr by the last
    /// step) or constant.
    #[arg(long, default_value = "cosine", value_parser = ["cosine", "constant"])]
    schedule: String,

    /// Evaluate on the test set this many times during training (for the
    /// curve in --plot); the final evaluation always happens.
    #[arg(long, default_value_t = 10)]
    evaluations: u64,

    /// Write the test-accuracy curve to this file (.png or .svg).
    #[arg(long, value_name = "FILE")]
    plot: Option<PathBuf>,

    #[command(flatten)]
    runtime: RuntimeArgs,
}

#[derive(Debug, Serialize)]
struct TrainReport {
    model: String,
    dataset: DatasetInfo,
    steps: u64,
    schedule: Schedule,
    batch_size: usize,
    seed: u64,
    threads: usize,
    kernels: &'static str,
    test_accuracy: f64,
    test_loss: f64,
    /// Mean training loss over the last tenth of the steps.
    train_loss: f64,
    state_hash: String,
    /// Training throughput, evaluation excluded.
    samples_per_sec: f64,
    training_seconds: f64,
    curve: Vec<CurvePoint>,
}

#[derive(Debug, Serialize)]
struct CurvePoint {
    step: u64,
    test_accuracy: f64,
    test_loss: f64,
}

pub fn run(args: TrainArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.batch >= 1, "--batch must be at least 1");
    args.runtime.clone().on_thread_pool(|| train(args))
}

fn train(args: TrainArgs) -> anyhow::Result<()> {
    let dataset = args.runtime.load_data()?;
    let model = crowdtrain_train::build_model(args.model);
    let optimizer = AdamW { lr: args.lr, weight_decay: args.weight_decay, ..AdamW::default() };
    let mut state = TrainState::new(model.name(), model.layout().initialize(args.seed));
    let schedule = match args.schedule.as_str() {
        "cosine" => Schedule::Cosine { total_steps: args.steps, final_fraction: 0.05 },
        _ => Schedule::Constant,
    };
    let mut trainer = Trainer::new(model.as_ref(), optimizer, args.batch).with_schedule(schedule);
    let everything: Vec<u32> = (0..dataset.train.len() as u32).collect();
    let key = RngKey::new(args.seed, 0, 0, 0);

    let evaluations = args.evaluations.clamp(1, args.steps.max(1));
    let chunk = args.steps.div_ceil(evaluations).max(1);
    let progress = output::progress_bar(args.steps, "training");
    let tail_start = args.steps - args.steps / 10;
    let (mut tail_loss, mut tail_count) = (0.0f64, 0u64);
    let mut training_time = Duration::ZERO;
    let mut curve = Vec::new();
    while state.step < args.steps {
        let steps = chunk.min(args.steps - state.step);
        let started = Instant::now();
        trainer.run(&mut state, &dataset.train, &everything, key, steps, |state, loss| {
            if state.step > tail_start {
                tail_loss += f64::from(loss);
                tail_count += 1;
            }
            progress.inc(1);
        })?;
        training_time += started.elapsed();
        let evaluation = evaluate(model.as_ref(), &state.params, &dataset.test)?;
        progress.set_message(format!("test accuracy {:.2}%", 100.0 * evaluation.accuracy));
        curve.push(CurvePoint {
            step: state.step,
            test_accuracy: evaluation.accuracy,
            test_loss: evaluation.loss,
        });
    }
    progress.finish_and_clear();
    let last = curve.last().map_or_else(
        || evaluate(model.as_ref(), &state.params, &dataset.test),
        |point| Ok(crowdtrain_train::Evaluation { loss: point.test_loss, accuracy: point.test_accuracy }),
    )?;
    let seconds = training_time.as_secs_f64();
    let report = TrainReport {
        model: model.name(),
        dataset: dataset.info.clone(),
        steps: state.step,
        schedule,
        batch_size: args.batch,
        seed: args.seed,
        threads: rayon::current_num_threads(),
        kernels: active_path().name(),
        test_accuracy: last.accuracy,
        test_loss: last.loss,
        train_loss: if tail_count == 0 { f64::NAN } else { tail_loss / tail_count as f64 },
        state_hash: state.hash().to_hex(),
        samples_per_sec: if seconds > 0.0 { (state.step as f64 * args.batch as f64) / seconds } else { 0.0 },
        training_seconds: seconds,
        curve,
    };
    if let Some(path) = &args.plot {
        let points =
            report.curve.iter().map(|point| (point.step as f64, 100.0 * point.test_accuracy)).collect();
        plot::line_chart(
            path,
            &format!("{} on {}", report.model, report.dataset.name),
            "step",
            "test accuracy (%)",
            &[Series { name: "test accuracy".into(), points }],
        )?;
    }
    if args.runtime.json {
        return output::print_json(&report);
    }
    let mut table = output::table(&[]);
    table.add_row(vec!["model".to_owned(), report.model.clone()]);
    table.add_row(vec!["steps x batch".to_owned(), format!("{} x {}", report.steps, report.batch_size)]);
    table.add_row(vec!["test accuracy".to_owned(), format!("{:.2}%", 100.0 * report.test_accuracy)]);
    table.add_row(vec!["test loss".to_owned(), format!("{:.4}", report.test_loss)]);
    table.add_row(vec!["train loss (last 10%)".to_owned(), format!("{:.4}", report.train_loss)]);
    table.add_row(vec![
        "throughput".to_owned(),
        format!(
            "{:.0} samples/s ({} threads, {} kernels)",
            report.samples_per_sec, report.threads, report.kernels
        ),
    ]);
    table.add_row(vec!["state hash".to_owned(), report.state_hash.clone()]);
    println!("{table}");
    if let Some(path) = &args.plot {
        println!("plot: {}", path.display());
    }
    Ok(())
}
