//! `crowdtrain train`: central training of one model, the reference point
//! for everything distributed.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use crowdtrain_data::RngKey;
use crowdtrain_data::text::{TextDataset, TokenizerSpec};
use crowdtrain_train::kernels::active_path;
use crowdtrain_train::text::{TextShard, spaced_validation_loss, validation_loss};
use crowdtrain_train::{
    AdamW, BatchSource, Evaluation, ImageShard, InnerOptimizer, Model, ModelFile, ModelKind, Schedule,
    TrainState, Trainer, evaluate,
};
use serde::Serialize;

use crate::model_args::{GptArgs, ModelName, gpt_recipe};
use crate::output::{self, RuntimeArgs};
use crate::plot::{self, Series};

/// Train a model centrally on the whole training set (images) or the
/// training split of a text (the GPT).
#[derive(Debug, Args)]
pub struct TrainArgs {
    /// Model architecture: mlp (784-256-10) and cnn on Fashion-MNIST, gpt
    /// on text (--data FILE|DIR, default Shakespeare).
    #[arg(long, value_enum, default_value = "mlp")]
    model: ModelName,

    /// Optimizer steps (default 10,000 for images, 2,000 for the GPT:
    /// nanoGPT's CPU quick-start).
    #[arg(long)]
    steps: Option<u64>,

    /// Seed for initialisation and batch sampling.
    #[arg(long, default_value_t = 0)]
    seed: u64,

    /// Examples per step: images (default 64), or sequences of --context
    /// tokens (default 12).
    #[arg(long)]
    batch: Option<usize>,

    /// AdamW learning rate.
    #[arg(long, default_value_t = AdamW::default().lr)]
    lr: f32,

    /// AdamW decoupled weight decay (default 0.01 for images; 0.1 on the
    /// GPT's matrices and embeddings, none on its biases and LayerNorms).
    #[arg(long)]
    weight_decay: Option<f32>,

    /// Learning-rate schedule for images: cosine (decay to 5% of --lr by
    /// the last step) or constant. The GPT always warms up for 100 steps,
    /// then decays to 10% (nanoGPT's).
    #[arg(long, default_value = "cosine", value_parser = ["cosine", "constant"])]
    schedule: String,

    /// Evaluate this many times during training (for the curve in --plot);
    /// the final evaluation always happens.
    #[arg(long, default_value_t = 10)]
    evaluations: u64,

    /// Write the evaluation curve to this file (.png or .svg).
    #[arg(long, value_name = "FILE")]
    plot: Option<PathBuf>,

    /// Save the trained model, with its configuration and tokenizer, to this
    /// file (for `crowdtrain sample` and `crowdtrain export`).
    #[arg(long, value_name = "FILE")]
    checkpoint_out: Option<PathBuf>,

    /// The GPT's tokenizer: `char` (its characters, from the text) or a
    /// tokenizer.json (see `crowdtrain tokenizer train`).
    #[arg(long, default_value = "char", value_name = "char|FILE")]
    tokenizer: TokenizerSpec,

    #[command(flatten)]
    gpt: GptArgs,

    #[command(flatten)]
    runtime: RuntimeArgs,
}

#[derive(Debug, Serialize)]
struct TrainReport {
    model: String,
    dataset: serde_json::Value,
    steps: u64,
    schedule: Schedule,
    batch_size: usize,
    seed: u64,
    threads: usize,
    kernels: &'static str,
    /// Images: accuracy and loss on the test set.
    #[serde(skip_serializing_if = "Option::is_none")]
    test_accuracy: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    test_loss: Option<f64>,
    /// Text: mean loss per token (nats) on the whole validation split, and
    /// next-token accuracy there.
    #[serde(skip_serializing_if = "Option::is_none")]
    val_loss: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    val_accuracy: Option<f64>,
    /// Mean training loss over the last tenth of the steps.
    train_loss: f64,
    state_hash: String,
    /// Training throughput, evaluation excluded (sequences for the GPT).
    samples_per_sec: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    tokens_per_sec: Option<f64>,
    parameters: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    tokenizer: Option<String>,
    training_seconds: f64,
    curve: Vec<CurvePoint>,
    #[serde(skip_serializing_if = "Option::is_none")]
    checkpoint: Option<String>,
}

#[derive(Debug, Serialize)]
struct CurvePoint {
    step: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    test_accuracy: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    test_loss: Option<f64>,
    /// On evenly spaced validation sequences (the final `val_loss` reads
    /// them all).
    #[serde(skip_serializing_if = "Option::is_none")]
    val_loss: Option<f64>,
}

/// Validation sequences read at each evaluation during training.
const CURVE_SEQUENCES: usize = 256;

pub fn run(args: TrainArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.batch.is_none_or(|batch| batch >= 1), "--batch must be at least 1");
    args.runtime.clone().on_thread_pool(|| train(args))
}

/// What the run trains on.
enum Data {
    Images(crowdtrain_data::Dataset),
    Text(Box<TextDataset>),
}

fn train(args: TrainArgs) -> anyhow::Result<()> {
    let data = match args.model {
        ModelName::Gpt => Data::Text(Box::new(output::load_text(
            args.runtime.data.as_deref(),
            &args.tokenizer,
            args.runtime.json,
        )?)),
        _ => Data::Images(args.runtime.load_data()?),
    };
    let (kind, steps, batch_size, optimizer, schedule) = match (&data, args.model.image_model()) {
        (Data::Images(_), Some(kind)) => {
            let steps = args.steps.unwrap_or(10_000);
            let schedule = match args.schedule.as_str() {
                "cosine" => Schedule::Cosine { total_steps: steps, final_fraction: 0.05 },
                _ => Schedule::Constant,
            };
            let adamw = AdamW {
                lr: args.lr,
                weight_decay: args.weight_decay.unwrap_or(AdamW::default().weight_decay),
                ..AdamW::default()
            };
            (kind, steps, args.batch.unwrap_or(64), InnerOptimizer::from(adamw), schedule)
        }
        (Data::Text(text), None) => {
            let config = args.gpt.config(text.tokenizer().vocab_size())?;
            let steps = args.steps.unwrap_or(2000);
            let mut recipe = gpt_recipe(args.lr, steps, 0);
            if let Some(decay) = args.weight_decay {
                recipe.adamw.weight_decay = decay;
            }
            (ModelKind::Gpt(config), steps, args.batch.unwrap_or(12), recipe, recipe.schedule)
        }
        _ => unreachable!("the data follows the model"),
    };
    let model = crowdtrain_train::build_model(kind);
    let mut state = TrainState::new(model.name(), model.layout().initialize(args.seed));
    let mut trainer = Trainer::new(model.as_ref(), InnerOptimizer { schedule, ..optimizer }, batch_size);
    let everything: Vec<u32> = match &data {
        Data::Images(dataset) => (0..dataset.train.len() as u32).collect(),
        Data::Text(_) => Vec::new(),
    };
    let source: Box<dyn BatchSource + '_> = match (&data, kind) {
        (Data::Images(dataset), _) => Box::new(ImageShard { images: &dataset.train, indices: &everything }),
        (Data::Text(text), ModelKind::Gpt(config)) => {
            let train = text.train();
            anyhow::ensure!(
                train.len() >= batch_size + config.context,
                "{} training tokens hold no batch of {batch_size} sequences of {} tokens",
                train.len(),
                config.context + 1
            );
            Box::new(TextShard::whole(train, config.context))
        }
        _ => unreachable!("the data follows the model"),
    };
    let key = RngKey::new(args.seed, 0, 0, 0);
    let curve_point = |state: &TrainState| -> anyhow::Result<CurvePoint> {
        Ok(match (&data, kind) {
            (Data::Images(dataset), _) => {
                let evaluation = evaluate(model.as_ref(), &state.params, &dataset.test)?;
                CurvePoint {
                    step: state.step,
                    test_accuracy: Some(evaluation.accuracy),
                    test_loss: Some(evaluation.loss),
                    val_loss: None,
                }
            }
            (Data::Text(text), ModelKind::Gpt(config)) => {
                let evaluation = spaced_validation_loss(
                    model.as_ref(),
                    &state.params,
                    text.validation(),
                    config.context,
                    CURVE_SEQUENCES,
                )?;
                CurvePoint {
                    step: state.step,
                    test_accuracy: None,
                    test_loss: None,
                    val_loss: Some(evaluation.loss),
                }
            }
            _ => unreachable!("the data follows the model"),
        })
    };

    let evaluations = args.evaluations.clamp(1, steps.max(1));
    let chunk = steps.div_ceil(evaluations).max(1);
    let progress = output::progress_bar(steps, "training");
    let tail_start = steps - steps / 10;
    let (mut tail_loss, mut tail_count) = (0.0f64, 0u64);
    let mut training_time = Duration::ZERO;
    let mut curve = Vec::new();
    while state.step < steps {
        let count = chunk.min(steps - state.step);
        let started = Instant::now();
        trainer.run_on(&mut state, source.as_ref(), key, count, |state, loss| {
            if state.step > tail_start {
                tail_loss += f64::from(loss);
                tail_count += 1;
            }
            progress.inc(1);
        })?;
        training_time += started.elapsed();
        let point = curve_point(&state)?;
        progress.set_message(match (point.test_accuracy, point.val_loss) {
            (Some(accuracy), _) => format!("test accuracy {:.2}%", 100.0 * accuracy),
            (_, Some(loss)) => format!("validation loss {loss:.4}"),
            _ => String::new(),
        });
        curve.push(point);
    }
    progress.finish_and_clear();
    let seconds = training_time.as_secs_f64();
    let samples_per_sec = if seconds > 0.0 { (state.step as f64 * batch_size as f64) / seconds } else { 0.0 };
    let (test, validation, dataset, tokens_per_sec, tokenizer) = match (&data, kind) {
        (Data::Images(dataset), _) => {
            let last = match curve.last() {
                Some(CurvePoint { test_accuracy: Some(accuracy), test_loss: Some(loss), .. }) => {
                    Evaluation { loss: *loss, accuracy: *accuracy }
                }
                _ => evaluate(model.as_ref(), &state.params, &dataset.test)?,
            };
            (Some(last), None, serde_json::to_value(&dataset.info)?, None, None)
        }
        (Data::Text(text), ModelKind::Gpt(config)) => {
            let validation =
                validation_loss(model.as_ref(), &state.params, text.validation(), config.context)?;
            let tokenizer = format!("{} ({} tokens)", text.info.tokenizer, text.info.vocab_size);
            let rate = samples_per_sec * config.context as f64;
            (None, Some(validation), serde_json::to_value(&text.info)?, Some(rate), Some(tokenizer))
        }
        _ => unreachable!("the data follows the model"),
    };
    let checkpoint = match &args.checkpoint_out {
        Some(path) => {
            let file = ModelFile {
                kind,
                params: state.params.clone(),
                tokenizer: match &data {
                    Data::Text(text) => Some(text.tokenizer().to_json().to_owned()),
                    Data::Images(_) => None,
                },
                steps: state.step,
            };
            file.save(path).with_context(|| format!("could not write {}", path.display()))?;
            Some(path.display().to_string())
        }
        None => None,
    };
    let report = TrainReport {
        model: model.name(),
        dataset,
        steps: state.step,
        schedule,
        batch_size,
        seed: args.seed,
        threads: rayon::current_num_threads(),
        kernels: active_path().name(),
        test_accuracy: test.map(|test| test.accuracy),
        test_loss: test.map(|test| test.loss),
        val_loss: validation.map(|validation| validation.loss),
        val_accuracy: validation.map(|validation| validation.accuracy),
        train_loss: if tail_count == 0 { f64::NAN } else { tail_loss / tail_count as f64 },
        state_hash: state.hash().to_hex(),
        samples_per_sec,
        tokens_per_sec,
        parameters: model.layout().len(),
        tokenizer,
        training_seconds: seconds,
        curve,
        checkpoint,
    };
    if let Some(path) = &args.plot {
        plot_curve(path, &report, model.as_ref())?;
    }
    if args.runtime.json {
        return output::print_json(&report);
    }
    print_report(&report, &args);
    Ok(())
}

fn plot_curve(path: &std::path::Path, report: &TrainReport, model: &dyn Model) -> anyhow::Result<()> {
    let title = format!("{} ({} parameters)", model.name(), report.parameters);
    let (label, points) = if report.val_loss.is_some() {
        (
            "validation loss (nats/token)",
            report.curve.iter().filter_map(|p| Some((p.step as f64, p.val_loss?))).collect(),
        )
    } else {
        (
            "test accuracy (%)",
            report.curve.iter().filter_map(|p| Some((p.step as f64, 100.0 * p.test_accuracy?))).collect(),
        )
    };
    plot::line_chart(path, &title, "step", label, &[Series { name: label.into(), points }])
}

fn print_report(report: &TrainReport, args: &TrainArgs) {
    let mut table = output::table(&[]);
    table.add_row(vec!["model".to_owned(), format!("{} ({} parameters)", report.model, report.parameters)]);
    if let Some(tokenizer) = &report.tokenizer {
        table.add_row(vec!["tokenizer".to_owned(), tokenizer.clone()]);
    }
    table.add_row(vec!["steps x batch".to_owned(), format!("{} x {}", report.steps, report.batch_size)]);
    if let (Some(accuracy), Some(loss)) = (report.test_accuracy, report.test_loss) {
        table.add_row(vec!["test accuracy".to_owned(), format!("{:.2}%", 100.0 * accuracy)]);
        table.add_row(vec!["test loss".to_owned(), format!("{loss:.4}")]);
    }
    if let (Some(loss), Some(accuracy)) = (report.val_loss, report.val_accuracy) {
        table.add_row(vec!["validation loss".to_owned(), format!("{loss:.4} nats/token")]);
        table.add_row(vec!["next-token accuracy".to_owned(), format!("{:.2}%", 100.0 * accuracy)]);
    }
    table.add_row(vec!["train loss (last 10%)".to_owned(), format!("{:.4}", report.train_loss)]);
    let rate = match report.tokens_per_sec {
        Some(tokens) => format!("{tokens:.0} tokens/s"),
        None => format!("{:.0} samples/s", report.samples_per_sec),
    };
    table.add_row(vec![
        "throughput".to_owned(),
        format!("{rate} ({} threads, {} kernels)", report.threads, report.kernels),
    ]);
    table.add_row(vec!["state hash".to_owned(), report.state_hash.clone()]);
    println!("{table}");
    if let Some(path) = &report.checkpoint {
        println!("model: {path}");
    }
    if let Some(path) = &args.plot {
        println!("plot: {}", path.display());
    }
}
