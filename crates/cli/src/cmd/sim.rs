//! `crowdtrain sim ...`: whole training networks simulated in one process.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use crowdtrain_data::Sharding;
use crowdtrain_data::text::TokenizerSpec;
use crowdtrain_defense::{Aggregator, CheckConfig, ModelDefense};
use crowdtrain_train::diloco::{self, DilocoConfig, RoundReport, RunData};
use crowdtrain_train::text::{TextRun, validation_loss};
use crowdtrain_train::{AdamW, Codec, ModelKind, Nesterov, Schedule};
use serde::Serialize;

use crate::model_args::{GptArgs, ModelName, gpt_recipe};
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

    /// Model architecture: mlp and cnn on Fashion-MNIST, gpt on text
    /// (--data FILE|DIR, default Shakespeare).
    #[arg(long, value_enum, default_value = "mlp")]
    model: ModelName,

    /// Examples per inner step per worker: images (default 64), or
    /// sequences of --context tokens (default 12).
    #[arg(long)]
    batch: Option<usize>,

    /// The GPT's tokenizer: `char` or a tokenizer.json.
    #[arg(long, default_value = "char", value_name = "char|FILE")]
    tokenizer: TokenizerSpec,

    #[command(flatten)]
    gpt: GptArgs,

    /// Split the data with Dirichlet(ALPHA) label skew instead of IID.
    #[arg(long, value_name = "ALPHA")]
    dirichlet: Option<f64>,

    /// Inner AdamW learning rate (for the GPT, the peak of nanoGPT's
    /// warmup and cosine decay over the run's inner steps, with its betas,
    /// weight decay and clipping).
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
    dataset: serde_json::Value,
    config: DilocoConfig,
    threads: usize,
    /// Images: on the test set. Text: next-token accuracy on the
    /// validation sequences each round reads.
    final_test_accuracy: f64,
    baseline_test_accuracy: f64,
    /// Text: mean loss per token (nats) on the whole validation split.
    #[serde(skip_serializing_if = "Option::is_none")]
    final_val_loss: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    baseline_val_loss: Option<f64>,
    /// Text: tokens each run trained on.
    #[serde(skip_serializing_if = "Option::is_none")]
    tokens: Option<u64>,
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
    anyhow::ensure!(args.batch.is_none_or(|batch| batch >= 1), "--batch must be at least 1");
    anyhow::ensure!(
        (0.0..0.5).contains(&args.validation_fraction),
        "--validation-fraction must be in [0, 0.5)"
    );
    args.runtime.clone().on_thread_pool(|| simulate_diloco(args))
}

/// Rounds a GPT run evaluates on this many evenly spaced validation
/// sequences; the final losses read the whole split.
const ROUND_EVAL_SEQUENCES: usize = 256;

fn simulate_diloco(args: DilocoArgs) -> anyhow::Result<()> {
    let sharding = args.dirichlet.map_or(Sharding::Iid, |alpha| Sharding::Dirichlet { alpha });
    let text = match args.model {
        ModelName::Gpt => Some(output::load_text(args.runtime.data.as_deref(), &args.tokenizer, args.runtime.json)?),
        _ => None,
    };
    let images = match text {
        None => Some(args.runtime.load_data()?),
        Some(_) => None,
    };
    let (model, batch_size, inner_schedule, clip_norm, inner) = match (&text, args.model.image_model()) {
        (None, Some(kind)) => {
            (kind, args.batch.unwrap_or(64), Schedule::Constant, None, AdamW { lr: args.inner_lr, ..AdamW::default() })
        }
        (Some(text), None) => {
            let config = args.gpt.config(text.tokenizer().vocab_size())?;
            let recipe = gpt_recipe(args.inner_lr, args.rounds * args.inner_steps, args.inner_steps);
            (ModelKind::Gpt(config), args.batch.unwrap_or(12), recipe.schedule, recipe.clip_norm, recipe.adamw)
        }
        _ => unreachable!("the data follows the model"),
    };
    let config = DilocoConfig {
        model,
        workers: args.workers,
        inner_steps: args.inner_steps,
        rounds: args.rounds,
        batch_size,
        seed: args.seed,
        sharding,
        inner,
        outer: Nesterov { lr: args.outer_lr, momentum: args.outer_momentum },
        codec: args.codec,
        validation_fraction: args.validation_fraction,
        inner_schedule,
        clip_norm,
    };
    let text_run = match (&text, model) {
        (Some(data), ModelKind::Gpt(gpt)) => {
            Some(TextRun { data, context: gpt.context, eval_sequences: ROUND_EVAL_SEQUENCES })
        }
        _ => None,
    };
    let data: &dyn RunData = match (&images, &text_run) {
        (Some(images), _) => images,
        (None, Some(text_run)) => text_run,
        (None, None) => unreachable!("one kind of data is loaded"),
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
    let report = diloco::simulate(&config, data, aggregate.as_mut(), |round| {
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
    let (dataset, final_val_loss, baseline_val_loss, tokens) = match (&images, &text_run) {
        (Some(images), _) => (serde_json::to_value(&images.info)?, None, None, None),
        (None, Some(run)) => {
            let model = config.model.build();
            let loss = |params: &[f32]| {
                validation_loss(model.as_ref(), params, run.data.validation(), run.context).map(|e| e.loss)
            };
            (
                serde_json::to_value(&run.data.info)?,
                Some(loss(&report.diloco_params)?),
                Some(loss(&report.baseline_params)?),
                Some(last.samples * run.context as u64),
            )
        }
        (None, None) => unreachable!("one kind of data is loaded"),
    };
    let output = DilocoOutput {
        dataset,
        threads: rayon::current_num_threads(),
        final_test_accuracy: last.diloco_test_accuracy,
        baseline_test_accuracy: last.baseline_test_accuracy,
        final_val_loss,
        baseline_val_loss,
        tokens,
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
    if let (Some(diloco), Some(baseline)) = (output.final_val_loss, output.baseline_val_loss) {
        println!(
            "DiLoCo: validation loss {diloco:.4} with {}; baseline: {baseline:.4} with {} ({:.1}x more).",
            output::bytes(output.bytes_diloco),
            output::bytes(output.bytes_baseline),
            output.bytes_ratio,
        );
        return Ok(());
    }
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
