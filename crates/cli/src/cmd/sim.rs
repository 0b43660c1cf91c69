//! `crowdtrain sim ...`: whole training networks simulated in one process.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use crowdtrain_data::Sharding;
use crowdtrain_data::text::TokenizerSpec;
use crowdtrain_defense::{Aggregator, CheckConfig, ModelDefense};
use crowdtrain_train::diloco::{self, DilocoConfig, InnerState, RoundReport, RunData};
use crowdtrain_train::text::{TextRun, validation_loss};
use crowdtrain_train::{AdamW, Broadcast, Codec, Eager, ModelKind, Nesterov, Schedule, TrainingRecipe};
use serde::Serialize;

use crate::baseline_cache::{BaselineCache, CacheUse};
use crate::model_args::{GptArgs, ModelName};
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
    /// Bytes against accuracy, one point per finished `sim diloco --json`
    /// run (one series per codec): how much each codec saves, and what it
    /// costs.
    Codecs(CodecsArgs),
    /// The whole network, deterministically from one seed: the real
    /// coordinator, store and defence under simulated workers, attackers,
    /// churn, message faults, failed writes and crashes, with every
    /// invariant checked. A violation prints the command that reproduces it.
    Network(super::simnet::NetworkArgs),
}

#[derive(Debug, Args)]
struct CodecsArgs {
    /// The JSON reports of `sim diloco --json` runs.
    #[arg(required = true)]
    reports: Vec<PathBuf>,

    /// Draw final test accuracy against upload bytes (log scale) to this
    /// .png or .svg.
    #[arg(long)]
    plot: Option<PathBuf>,

    /// Print the table as JSON.
    #[arg(long)]
    json: bool,
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
    batch: Option<u32>,

    /// The GPT's tokenizer: `char` or a tokenizer.json.
    #[arg(long, default_value = "char", value_name = "char|FILE")]
    tokenizer: TokenizerSpec,

    #[command(flatten)]
    gpt: GptArgs,

    /// How the data is split among workers: iid, or dirichlet:ALPHA for
    /// Dirichlet(ALPHA) label skew.
    #[arg(long, default_value = "iid")]
    sharding: Sharding,

    /// AdamW learning rate of the synchronous baseline, and of DiLoCo's
    /// workers unless --inner-lr is given (for the GPT, the peak of
    /// nanoGPT's warmup and cosine decay over the run's inner steps, with
    /// its betas, weight decay and clipping).
    #[arg(long, default_value_t = AdamW::default().lr)]
    lr: f32,

    /// DiLoCo's workers' peak inner AdamW learning rate, where it should
    /// differ from the baseline's --lr (the schedule's shape is the same):
    /// an experiment, since a networked run's workers and a simulation's
    /// baseline train with one recipe. The baseline, and so a
    /// --baseline-cache entry, does not depend on it.
    #[arg(long, value_name = "LR")]
    inner_lr: Option<f32>,

    /// Outer Nesterov learning rate.
    #[arg(long, default_value_t = Nesterov::default().lr)]
    outer_lr: f32,

    /// Outer Nesterov momentum.
    #[arg(long, default_value_t = Nesterov::default().momentum)]
    outer_momentum: f32,

    /// Outer steps over which the outer learning rate ramps up linearly
    /// (run.toml's `[outer] warmup`; 0: none).
    #[arg(long, default_value_t = 0)]
    outer_warmup: u32,

    /// GPT: steps over which every round after the first warms its fresh
    /// AdamW up again (the schedule `warmup-cosine-rewarm`; 0: none).
    #[arg(long, default_value_t = 0)]
    round_warmup: u64,

    /// What each worker's inner AdamW starts a round from: fresh (zero
    /// moments, as a networked run does, so any segment replays from
    /// public inputs) or carry (each worker slot keeps its moments and
    /// AdamW step count from its previous round, as DiLoCo's paper does;
    /// simulation only, an experiment).
    #[arg(long, default_value = "fresh", value_name = "fresh|carry")]
    inner_state: InnerState,

    /// Encoding of pseudo-gradients on the wire: int8, f32, q4, q2, or
    /// topk:DENSITY with an optional +int8, +q4 or +q2 (e.g. topk:0.02+q4).
    #[arg(long, default_value = "int8")]
    codec: Codec,

    /// How each new model reaches the workers (run.toml's `[outer]
    /// broadcast`): full (the whole f32 model every round), or a codec such
    /// as int8 (the coordinator keeps the exact model and publishes the
    /// encoded change; workers download the full model once).
    #[arg(long, default_value = "full")]
    broadcast: Broadcast,

    /// Outer steps a round's base model lags behind (run.toml's `[outer]
    /// delay`): 0 is plain DiLoCo, every round waits for the previous
    /// round's outer step; 1 trains round r from the model before round
    /// r - 1's step, so a networked worker never waits for the network, and
    /// applies its update to the newest model; d (up to 4) trains round r
    /// from the model before round r - d's step, hiding d rounds of
    /// compute.
    #[arg(long, default_value_t = 0)]
    outer_delay: u32,

    /// With --outer-delay 1 or more, what stands in for the outer step a round does
    /// not wait for: none, trend (the last published step repeated) or own
    /// (the worker's own last update, times the outer learning rate).
    #[arg(long, default_value = "none")]
    eager: Eager,

    /// How updates are combined: mean (plain DiLoCo, no checks), or, with
    /// the coordinator's checks first, trimmed-mean[:TRIM], median or
    /// centered-clip[:MOMENTUM[:ITERATIONS]] (the coordinator's default). To
    /// reproduce a networked run of the default run.toml bit for bit, pass
    /// `--aggregator centered-clip --validation-fraction 0.05`.
    #[arg(long, default_value = "mean")]
    aggregator: Aggregator,

    /// Share of the training set held out of every shard (the coordinator
    /// holds out `training.validation_fraction`, 0.05 by default, to score
    /// updates on).
    #[arg(long, default_value_t = 0.0)]
    validation_fraction: f64,

    /// Write test accuracy per round of both runs to this file (.png or .svg).
    #[arg(long, value_name = "FILE")]
    plot: Option<PathBuf>,

    /// Keep the synchronous baseline's results in DIR and reuse them in
    /// any later run of this same executable whose baseline is the same
    /// (same data, recipe, workers and rounds; the outer step, its delay,
    /// --inner-lr, the inner state, the codec and the aggregator may differ): an
    /// experiment on DiLoCo's side then costs about half.
    #[arg(long, value_name = "DIR")]
    baseline_cache: Option<PathBuf>,

    #[command(flatten)]
    runtime: RuntimeArgs,
}

#[derive(Debug, Serialize)]
struct DilocoOutput {
    dataset: serde_json::Value,
    config: DilocoConfig,
    /// `--inner-state`: left out when fresh, so such reports read as before.
    #[serde(skip_serializing_if = "is_fresh")]
    inner_state: InnerState,
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
    /// The model-download share of `bytes_diloco` (see `--broadcast`).
    bytes_diloco_download: u64,
    bytes_baseline: u64,
    /// How many times fewer bytes DiLoCo moved.
    bytes_ratio: f64,
    /// DiLoCo's encoded pseudo-gradient uploads alone (its model downloads
    /// are f32), and how many times fewer bytes they are than the
    /// baseline's gradient uploads (half its bytes).
    bytes_diloco_upload: u64,
    upload_bytes_ratio: f64,
    diloco_state_hash: String,
    baseline_state_hash: String,
    aggregator: String,
    /// With `--baseline-cache`: the entry, and whether the baseline was
    /// read from it rather than trained.
    #[serde(skip_serializing_if = "Option::is_none")]
    baseline_cache: Option<CacheUse>,
    rounds: Vec<RoundReport>,
}

fn is_fresh(inner: &InnerState) -> bool {
    *inner == InnerState::Fresh
}

pub fn run(args: SimArgs) -> anyhow::Result<()> {
    match args.command {
        SimCommand::Diloco(args) => run_diloco(args),
        SimCommand::Codecs(args) => codecs(args),
        SimCommand::Network(args) => super::simnet::run(args),
    }
}

/// One run of `sim codecs`'s table.
#[derive(Debug, Serialize)]
struct CodecPoint {
    codec: String,
    seed: u64,
    /// The outer Nesterov step's learning rate and momentum.
    outer_lr: f64,
    outer_momentum: f64,
    /// `[outer] delay` and `eager` (0 and none when the report has none).
    outer_delay: u64,
    eager: String,
    final_test_accuracy: f64,
    bytes_diloco_upload: u64,
    bytes_diloco: u64,
    upload_bytes_ratio: f64,
    bytes_ratio: f64,
    diloco_state_hash: String,
}

fn codecs(args: CodecsArgs) -> anyhow::Result<()> {
    use anyhow::Context;
    let mut points = Vec::with_capacity(args.reports.len());
    for path in &args.reports {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("could not read {}", path.display()))?;
        let report: serde_json::Value =
            serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))?;
        let field = |name: &str| {
            report
                .get(name)
                .cloned()
                .with_context(|| format!("{} has no {name}: not a sim diloco --json report", path.display()))
        };
        let number = |name: &str| -> anyhow::Result<f64> {
            field(name)?.as_f64().with_context(|| format!("{name} in {} is not a number", path.display()))
        };
        let config = field("config")?;
        points.push(CodecPoint {
            codec: config["codec"].as_str().context("the report names no codec")?.to_owned(),
            seed: config["seed"].as_u64().context("the report names no seed")?,
            outer_lr: config["outer"]["lr"].as_f64().context("the report names no outer step")?,
            outer_momentum: config["outer"]["momentum"].as_f64().context("the report names no outer step")?,
            // Left out of reports (and configurations) when 0 and none.
            outer_delay: config["outer"]["delay"].as_u64().unwrap_or(0),
            eager: config["outer"]["eager"].as_str().unwrap_or("none").to_owned(),
            final_test_accuracy: number("final_test_accuracy")?,
            bytes_diloco_upload: number("bytes_diloco_upload")? as u64,
            bytes_diloco: number("bytes_diloco")? as u64,
            upload_bytes_ratio: number("upload_bytes_ratio")?,
            bytes_ratio: number("bytes_ratio")?,
            diloco_state_hash: field("diloco_state_hash")?.as_str().unwrap_or_default().to_owned(),
        });
    }
    if let Some(path) = &args.plot {
        let mut series: Vec<Series> = Vec::new();
        let default = Nesterov::default();
        for point in &points {
            let xy = (point.bytes_diloco_upload as f64, 100.0 * point.final_test_accuracy);
            // Runs of one codec with another outer step are another series.
            // (The report writes the f32 settings as their shortest decimals.)
            let mut name = if (point.outer_lr as f32, point.outer_momentum as f32)
                == (default.lr, default.momentum)
            {
                point.codec.clone()
            } else {
                format!("{} (outer lr {}, momentum {})", point.codec, point.outer_lr, point.outer_momentum)
            };
            if point.outer_delay > 0 {
                name += &format!(", delay {} ({})", point.outer_delay, point.eager);
            }
            match series.iter_mut().find(|series| series.name == name) {
                Some(series) => series.points.push(xy),
                None => series.push(Series { name, points: vec![xy] }),
            }
        }
        plot::chart(
            path,
            &plot::Chart {
                title: "DiLoCo: final test accuracy against pseudo-gradient upload bytes, by codec",
                x_label: "bytes uploaded in the run (log scale)",
                y_label: "final test accuracy (%)",
                lines: &[],
                markers: &series,
                log_x: true,
            },
        )?;
    }
    if args.json {
        return output::print_json(&points);
    }
    let mut table = output::table(&[
        "codec",
        "seed",
        "outer lr, momentum",
        "delay",
        "test acc",
        "uploads",
        "all bytes",
        "upload ratio",
        "ratio",
    ]);
    for point in &points {
        table.add_row(vec![
            point.codec.clone(),
            point.seed.to_string(),
            format!("{}, {}", point.outer_lr, point.outer_momentum),
            match point.outer_delay {
                0 => "0".to_owned(),
                delay => format!("{delay} ({})", point.eager),
            },
            format!("{:.2}%", 100.0 * point.final_test_accuracy),
            output::bytes(point.bytes_diloco_upload),
            output::bytes(point.bytes_diloco),
            format!("{:.0}x", point.upload_bytes_ratio),
            format!("{:.1}x", point.bytes_ratio),
        ]);
    }
    println!("{table}");
    if let Some(path) = &args.plot {
        println!("plot: {}", path.display());
    }
    Ok(())
}

impl DilocoArgs {
    /// The simulation the flags describe for a GPT of `vocab` tokens (when
    /// the model is a GPT), checked as a run's would be.
    fn config(&self, vocab: Option<usize>) -> anyhow::Result<DilocoConfig> {
        anyhow::ensure!(self.workers >= 1, "--workers must be at least 1");
        anyhow::ensure!(self.rounds >= 1, "--rounds must be at least 1");
        let recipe = match (self.model.image_model(), vocab) {
            (Some(model), _) => TrainingRecipe {
                seed: self.seed,
                model,
                inner_steps: self.inner_steps,
                batch_size: self.batch.unwrap_or(64),
                optimizer: AdamW { lr: self.lr, ..AdamW::default() },
                codec: self.codec,
                sharding: self.sharding,
                validation_fraction: self.validation_fraction,
                ..TrainingRecipe::with_seed(self.seed)
            },
            (None, Some(vocab)) => {
                let config = self.gpt.config(vocab)?;
                let recipe =
                    TrainingRecipe::language_model(self.seed, config, self.lr, self.inner_steps, self.rounds);
                let schedule = match self.round_warmup {
                    0 => recipe.schedule,
                    steps => Schedule::nanogpt_rewarm(self.inner_steps.saturating_mul(self.rounds), steps),
                };
                TrainingRecipe {
                    batch_size: self.batch.unwrap_or(recipe.batch_size),
                    schedule,
                    codec: self.codec,
                    sharding: self.sharding,
                    validation_fraction: self.validation_fraction,
                    ..recipe
                }
            }
            (None, None) => anyhow::bail!("a gpt needs a tokenizer's vocabulary"),
        };
        // The recipe's field names, as this command's flags.
        let flag = |field: &str| match field {
            "batch_size" => "--batch".to_owned(),
            "optimizer.lr" => "--lr".to_owned(),
            "outer.eager" => "--eager".to_owned(),
            "schedule.round_warmup_steps" => "--round-warmup".to_owned(),
            other => format!("--{}", other.replace(['_', '.'], "-")),
        };
        recipe.validate().map_err(|error| anyhow::anyhow!("{}: {}", flag(error.field), error.reason))?;
        if let Some(lr) = self.inner_lr {
            // DiLoCo's workers' optimizer, checked as the baseline's is.
            AdamW { lr, ..recipe.optimizer }.validate().map_err(|error| match error.field {
                "optimizer.lr" => anyhow::anyhow!("--inner-lr: {}", error.reason),
                field => anyhow::anyhow!("with --inner-lr {lr}, {field} {}", error.reason),
            })?;
        }
        let outer = Nesterov {
            lr: self.outer_lr,
            momentum: self.outer_momentum,
            broadcast: self.broadcast,
            delay: self.outer_delay,
            eager: self.eager,
            warmup: self.outer_warmup,
        };
        outer.validate().map_err(|error| anyhow::anyhow!("{}: {}", flag(error.field), error.reason))?;
        Ok(DilocoConfig {
            recipe,
            workers: self.workers,
            rounds: self.rounds,
            outer,
            inner_lr: self.inner_lr,
        })
    }
}

fn run_diloco(args: DilocoArgs) -> anyhow::Result<()> {
    // Flags are checked before any data is read.
    args.config(matches!(args.model, ModelName::Gpt).then_some(2))?;
    args.runtime.clone().on_thread_pool(|| simulate_diloco(args))
}

/// Rounds a GPT run evaluates on this many evenly spaced validation
/// sequences; the final losses read the whole split.
const ROUND_EVAL_SEQUENCES: usize = 256;

fn simulate_diloco(args: DilocoArgs) -> anyhow::Result<()> {
    let text = match args.model {
        ModelName::Gpt => {
            Some(output::load_text(args.runtime.data.as_deref(), &args.tokenizer, args.runtime.json)?)
        }
        _ => None,
    };
    let images = match text {
        None => Some(args.runtime.load_data()?),
        Some(_) => None,
    };
    let config = args.config(text.as_ref().map(|text| text.tokenizer().vocab_size()))?;
    let text_run = match (&text, config.recipe.model) {
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
    let cache = match &args.baseline_cache {
        Some(dir) => {
            let cache = BaselineCache::open(dir)?;
            let (key, path) = cache.entry(&config, data.fingerprint());
            let reuse = cache.load(key, &path);
            Some((cache, key, path, reuse))
        }
        None => None,
    };
    let reuse = cache.as_ref().and_then(|(.., reuse)| reuse.clone());
    let human = !args.runtime.json;
    let progress = output::progress_bar(config.rounds, "rounds");
    // Without a terminal there is no bar: a line per round instead, so a
    // long run's log shows how far it got (and its curve so far) before the
    // final report.
    let log_rounds = !std::io::IsTerminal::is_terminal(&std::io::stderr());
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
    let report = diloco::simulate_with(
        &config,
        data,
        aggregate.as_mut(),
        args.inner_state,
        reuse,
        |round| {
            progress.inc(1);
            progress.set_message(format!(
                "DiLoCo {:.2}%, baseline {:.2}%",
                100.0 * round.diloco_test_accuracy,
                100.0 * round.baseline_test_accuracy
            ));
            if log_rounds {
                eprintln!(
                    "round {}/{}: DiLoCo loss {:.4} (accuracy {:.2}%, inner {:.4}), baseline loss {:.4} (accuracy {:.2}%)",
                    round.round,
                    config.rounds,
                    round.diloco_test_loss,
                    100.0 * round.diloco_test_accuracy,
                    round.diloco_train_loss,
                    round.baseline_test_loss,
                    100.0 * round.baseline_test_accuracy,
                );
            }
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
        },
    )?;
    progress.finish_and_clear();
    let baseline_cache = match cache {
        Some((cache, key, path, reuse)) => {
            let reused = reuse.is_some();
            if !reused {
                cache.store(key, &path, report.baseline_run())?;
            }
            Some(CacheUse { path, reused })
        }
        None => None,
    };
    let last = report.last().expect("at least one round ran");
    let (dataset, final_val_loss, baseline_val_loss, tokens) = match (&images, &text_run) {
        (Some(images), _) => (serde_json::to_value(&images.info)?, None, None, None),
        (None, Some(run)) => {
            let model = crowdtrain_train::build_model(config.recipe.model);
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
        bytes_diloco_download: last.diloco_download_bytes,
        bytes_baseline: last.baseline_bytes,
        bytes_ratio: last.baseline_bytes as f64 / last.diloco_bytes.max(1) as f64,
        bytes_diloco_upload: last.diloco_upload_bytes,
        upload_bytes_ratio: (last.baseline_bytes / 2) as f64 / last.diloco_upload_bytes.max(1) as f64,
        diloco_state_hash: report.diloco_state_hash.to_hex(),
        baseline_state_hash: report.baseline_state_hash.to_hex(),
        aggregator: args.aggregator.to_string(),
        baseline_cache,
        rounds: report.rounds.clone(),
        config,
        inner_state: args.inner_state,
    };
    if let Some(path) = &args.plot {
        // Images: test accuracy; text: validation loss, what a language
        // model is judged by.
        let text = text_run.is_some();
        let pick = |round: &RoundReport, diloco: bool| match (text, diloco) {
            (false, true) => 100.0 * round.diloco_test_accuracy,
            (false, false) => 100.0 * round.baseline_test_accuracy,
            (true, true) => round.diloco_test_loss,
            (true, false) => round.baseline_test_loss,
        };
        let curve = |diloco: bool| {
            report.rounds.iter().map(|round| (round.samples as f64, pick(round, diloco))).collect()
        };
        plot::line_chart(
            path,
            &format!(
                "DiLoCo (K={}, H={}) vs synchronous data parallel",
                output.config.workers, output.config.recipe.inner_steps
            ),
            "training samples",
            if text { "validation loss (nats per token)" } else { "test accuracy (%)" },
            &[
                Series { name: "DiLoCo".into(), points: curve(true) },
                Series { name: "synchronous baseline".into(), points: curve(false) },
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
    } else {
        println!(
            "DiLoCo: {:.2}% test accuracy with {}; baseline: {:.2}% with {} ({:.1}x more).",
            100.0 * output.final_test_accuracy,
            output::bytes(output.bytes_diloco),
            100.0 * output.baseline_test_accuracy,
            output::bytes(output.bytes_baseline),
            output.bytes_ratio,
        );
    }
    if let Some(path) = &args.plot {
        println!("plot: {}", path.display());
    }
    Ok(())
}
