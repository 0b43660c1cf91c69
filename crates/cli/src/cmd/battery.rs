//! `crowdtrain battery`: every model attack against the defence, audits off.

use std::path::PathBuf;

use clap::Args;
use crowdtrain_data::text::TokenizerSpec;
use crowdtrain_defense::battery::{Attack, BatteryConfig, BatteryData, BatteryRun, run};
use crowdtrain_defense::{Aggregator, CheckConfig, DefenseConfig, QualityConfig, ScoreMethod};
use crowdtrain_train::text::TextRun;
use crowdtrain_train::{AdamW, ModelKind, Nesterov, TrainingRecipe};
use serde::Serialize;

use crate::model_args::{GptArgs, ModelName};
use crate::output::{self, RuntimeArgs};

/// Run each model attack with a fifth of the workers attacking (IID shards,
/// audits off, so only the checks, robust aggregation and the pay gate
/// defend), beside a clean run with the same seeds, and report accuracy,
/// loss and who earned what. Images by default; `--model gpt` runs the
/// same battery on a language model (every attack but label-flip).
#[derive(Debug, Args)]
pub struct BatteryArgs {
    /// Workers per run.
    #[arg(long, default_value_t = 10)]
    workers: usize,

    /// How many of them attack.
    #[arg(long, default_value_t = 2)]
    attackers: usize,

    /// Rounds per run.
    #[arg(long, default_value_t = 30)]
    rounds: u64,

    /// Inner steps per round (H).
    #[arg(long, default_value_t = 20)]
    inner_steps: u64,

    /// Examples per inner step: images (default 64), or sequences of
    /// --context tokens (default 12).
    #[arg(long)]
    batch: Option<u32>,

    /// Model architecture: mlp and cnn on Fashion-MNIST, gpt on text
    /// (--data FILE|DIR, default Shakespeare).
    #[arg(long, value_enum, default_value = "mlp")]
    model: ModelName,

    /// The GPT's tokenizer: `char` or a tokenizer.json.
    #[arg(long, default_value = "char", value_name = "char|FILE")]
    tokenizer: TokenizerSpec,

    #[command(flatten)]
    gpt: GptArgs,

    /// Seeds to average over (0, 1, ...).
    #[arg(long, default_value_t = 3)]
    seeds: u64,

    /// The aggregation rule: mean, trimmed-mean[:TRIM], median or
    /// centered-clip[:MOMENTUM] (the coordinator's default).
    #[arg(long, default_value_t = Aggregator::default())]
    aggregator: Aggregator,

    /// Only these attacks (comma-separated names, e.g. sign-flip,alie).
    #[arg(long, value_delimiter = ',', value_name = "A,A,...")]
    attacks: Vec<Attack>,

    /// Examples in each round's quality evaluation batch (for text:
    /// predicted tokens, in whole sequences).
    #[arg(long, default_value_t = QualityConfig::default().eval_examples)]
    eval_examples: usize,

    /// How updates are scored: `exact` (a forward pass per update) or
    /// `linear` (one backward pass a round, a dot product per update).
    #[arg(long, default_value_t = QualityConfig::default().score)]
    score: ScoreMethod,

    /// Evidence (nats) at which the pay gate denies a worker's pay.
    #[arg(long, default_value_t = QualityConfig::default().threshold)]
    threshold: f64,

    /// Skip the clean runs with the plain mean (the cost of robustness):
    /// a third fewer runs when only pay and attacks are measured.
    #[arg(long)]
    no_mean_baseline: bool,

    /// Write clean and attacked accuracy per attack to this file (.png or .svg).
    #[arg(long, value_name = "FILE")]
    plot: Option<PathBuf>,

    #[command(flatten)]
    runtime: RuntimeArgs,
}

/// One attack, over every seed.
#[derive(Debug, Serialize)]
struct AttackReport {
    attack: String,
    /// Mean over seeds, with every worker honest.
    clean_accuracy: f64,
    /// Mean over seeds, under attack.
    attacked_accuracy: f64,
    /// Clean minus attacked, in accuracy points (mean over seeds).
    drop_points: f64,
    /// Mean over seeds, every worker honest: test loss (images) or loss
    /// per token on the whole validation split (text).
    clean_loss: f64,
    /// Mean over seeds, under attack.
    attacked_loss: f64,
    /// The largest drop of any one seed.
    worst_drop_points: f64,
    /// The attackers' share of all credits (mean over seeds).
    attacker_credit_share: f64,
    /// An attacker's credits over an honest worker's (mean over seeds).
    attacker_credits_vs_honest: f64,
    /// The largest gap, over seeds and honest workers, between a worker's
    /// share of the honest credits and its share of the honest verified work.
    honest_share_gap: f64,
    /// Any seed diverged (non-finite parameters or loss, chance accuracy).
    diverged: bool,
    refused_attacker: u64,
    refused_honest: u64,
    runs: Vec<BatteryRun>,
}

#[derive(Debug, Serialize)]
struct BatteryReport {
    dataset: serde_json::Value,
    config: BatteryConfig,
    seeds: u64,
    /// Mean clean accuracy with the chosen aggregator.
    clean_accuracy: f64,
    /// Mean clean loss with the chosen aggregator.
    clean_loss: f64,
    /// Mean clean accuracy with the plain mean: the cost of robustness is
    /// the difference (`None` with `--no-mean-baseline`).
    clean_accuracy_mean: Option<f64>,
    clean_runs: Vec<BatteryRun>,
    attacks: Vec<AttackReport>,
}

pub fn run_battery(args: BatteryArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.workers >= 2, "--workers must be at least 2");
    anyhow::ensure!(args.attackers < args.workers, "--attackers must be fewer than --workers");
    anyhow::ensure!(
        args.seeds >= 1 && args.rounds >= 1 && args.inner_steps >= 1 && args.batch != Some(0),
        "--seeds, --rounds, --inner-steps and --batch must be at least 1"
    );
    if args.model == ModelName::Gpt
        && let Some(attack) = args.attacks.iter().find(|attack| **attack == Attack::LabelFlip)
    {
        anyhow::bail!("--attacks {}: text has no labels to flip", attack.name());
    }
    // The sizes are checked before any data is read.
    args.recipe(0, Some(2))?;
    anyhow::ensure!(args.eval_examples >= 1, "--eval-examples must be at least 1");
    args.quality()
        .validate()
        .map_err(|(field, reason)| anyhow::anyhow!("--{}: {reason}", field.replace('_', "-")))?;
    args.runtime.clone().on_thread_pool(|| battery(args))
}

impl BatteryArgs {
    /// The scoring and pay gate settings the flags give.
    fn quality(&self) -> QualityConfig {
        QualityConfig {
            eval_examples: self.eval_examples,
            score: self.score,
            threshold: self.threshold,
            ..QualityConfig::default()
        }
    }

    /// Every worker's recipe in the run of `seed`, for a GPT of `vocab`
    /// tokens when the model is a GPT, validated.
    fn recipe(&self, seed: u64, vocab: Option<usize>) -> anyhow::Result<TrainingRecipe> {
        let recipe = match (self.model.image_model(), vocab) {
            (Some(model), _) => TrainingRecipe {
                model,
                inner_steps: self.inner_steps,
                batch_size: self.batch.unwrap_or(64),
                ..TrainingRecipe::with_seed(seed)
            },
            (None, Some(vocab)) => {
                let config = self.gpt.config(vocab)?;
                let recipe = TrainingRecipe::language_model(
                    seed,
                    config,
                    AdamW::default().lr,
                    self.inner_steps,
                    self.rounds,
                );
                TrainingRecipe { batch_size: self.batch.unwrap_or(recipe.batch_size), ..recipe }
            }
            (None, None) => anyhow::bail!("a gpt needs a tokenizer's vocabulary"),
        };
        recipe.validate().map_err(|error| anyhow::anyhow!("{}: {}", error.field, error.reason))?;
        Ok(recipe)
    }
}

/// A GPT battery judges the final model on the whole validation split.
const WHOLE_SPLIT: usize = 0;

fn battery(args: BatteryArgs) -> anyhow::Result<()> {
    let (images, text) = match args.model {
        ModelName::Gpt => {
            (None, Some(output::load_text(args.runtime.data.as_deref(), &args.tokenizer, args.runtime.json)?))
        }
        _ => (Some(args.runtime.load_data()?), None),
    };
    let vocab = text.as_ref().map(|text| text.tokenizer().vocab_size());
    let (data, dataset) = match (&images, &text) {
        (Some(images), _) => (BatteryData::Images(images), serde_json::to_value(&images.info)?),
        (None, Some(text)) => {
            let context = match args.recipe(0, vocab)?.model {
                ModelKind::Gpt(gpt) => gpt.context,
                _ => unreachable!("text is for the GPT"),
            };
            (
                BatteryData::Text(TextRun { data: text, context, eval_sequences: WHOLE_SPLIT }),
                serde_json::to_value(&text.info)?,
            )
        }
        (None, None) => unreachable!("one kind of data is loaded"),
    };
    let recipes: Vec<TrainingRecipe> =
        (0..args.seeds).map(|seed| args.recipe(seed, vocab)).collect::<anyhow::Result<_>>()?;
    let config = |seed: u64, aggregator: Aggregator| BatteryConfig {
        recipe: recipes[seed as usize].clone(),
        workers: args.workers,
        attackers: args.attackers,
        rounds: args.rounds,
        outer: Nesterov::default(),
        defense: DefenseConfig { checks: CheckConfig::default(), aggregator, quality: args.quality() },
    };
    let attacks = if args.attacks.is_empty() {
        Attack::all().into_iter().filter(|attack| data.supports(*attack)).collect()
    } else {
        args.attacks.clone()
    };
    let progress = output::progress_bar(args.seeds * (attacks.len() as u64 + 2), "runs");
    let mean_of = |runs: &[BatteryRun], pick: fn(&BatteryRun) -> f64| {
        runs.iter().map(pick).sum::<f64>() / runs.len() as f64
    };
    let mut clean = Vec::new();
    let mut clean_mean = Vec::new();
    progress.set_message("clean");
    for seed in 0..args.seeds {
        clean.push(run(&config(seed, args.aggregator), Attack::None, &data)?);
        progress.inc(1);
        if !args.no_mean_baseline {
            clean_mean.push(if args.aggregator == Aggregator::Mean {
                clean[seed as usize].clone()
            } else {
                run(&config(seed, Aggregator::Mean), Attack::None, &data)?
            });
        }
        progress.inc(1);
    }
    let clean_accuracy = mean_of(&clean, |run| run.test_accuracy);
    let clean_loss = mean_of(&clean, |run| run.test_loss);
    let mut reports = Vec::new();
    for attack in attacks {
        progress.set_message(attack.name());
        let runs = (0..args.seeds)
            .map(|seed| {
                let result = run(&config(seed, args.aggregator), attack, &data);
                progress.inc(1);
                result
            })
            .collect::<Result<Vec<_>, _>>()?;
        let attacked_accuracy = mean_of(&runs, |run| run.test_accuracy);
        let worst_drop_points = runs
            .iter()
            .zip(&clean)
            .map(|(attacked, clean)| 100.0 * (clean.test_accuracy - attacked.test_accuracy))
            .fold(f64::MIN, f64::max);
        reports.push(AttackReport {
            attack: attack.name(),
            clean_accuracy,
            attacked_accuracy,
            drop_points: 100.0 * (clean_accuracy - attacked_accuracy),
            clean_loss,
            attacked_loss: mean_of(&runs, |run| run.test_loss),
            worst_drop_points,
            attacker_credit_share: mean_of(&runs, |run| run.attacker_credit_share),
            attacker_credits_vs_honest: mean_of(&runs, |run| run.attacker_credits_vs_honest),
            honest_share_gap: runs.iter().map(|run| run.honest_share_gap).fold(0.0, f64::max),
            diverged: runs.iter().any(|run| run.diverged),
            refused_attacker: runs.iter().map(|run| run.refused_attacker).sum(),
            refused_honest: runs.iter().map(|run| run.refused_honest).sum(),
            runs,
        });
    }
    progress.finish_and_clear();
    let report = BatteryReport {
        dataset,
        config: config(0, args.aggregator),
        seeds: args.seeds,
        clean_accuracy,
        clean_loss,
        clean_accuracy_mean: (!clean_mean.is_empty()).then(|| mean_of(&clean_mean, |run| run.test_accuracy)),
        clean_runs: clean,
        attacks: reports,
    };
    if let Some(path) = &args.plot {
        plot(path, &report, &args)?;
    }
    if args.runtime.json {
        return output::print_json(&report);
    }
    print_table(&report, &args);
    Ok(())
}

fn print_table(report: &BatteryReport, args: &BatteryArgs) {
    let mut table = output::table(&[
        "attack",
        "clean acc",
        "attacked acc",
        "drop (pts)",
        "worst seed (pts)",
        "clean loss",
        "attacked loss",
        "attackers' credit share",
        "attacker pay / honest",
        "honest credit/work gap",
        "refused (attackers/honest)",
        "diverged",
    ]);
    for attack in &report.attacks {
        table.add_row(vec![
            attack.attack.clone(),
            format!("{:.2}%", 100.0 * attack.clean_accuracy),
            format!("{:.2}%", 100.0 * attack.attacked_accuracy),
            format!("{:+.2}", attack.drop_points),
            format!("{:+.2}", attack.worst_drop_points),
            format!("{:.4}", attack.clean_loss),
            format!("{:.4}", attack.attacked_loss),
            format!("{:.2}%", 100.0 * attack.attacker_credit_share),
            format!("{:.3}", attack.attacker_credits_vs_honest),
            format!("{:.1}%", 100.0 * attack.honest_share_gap),
            format!("{}/{}", attack.refused_attacker, attack.refused_honest),
            if attack.diverged { "YES".into() } else { "no".into() },
        ]);
    }
    println!("{table}");
    let clean_gap = report.clean_runs.iter().map(|run| run.honest_share_gap).fold(0.0, f64::max);
    println!(
        "{} workers, {} attacking, {} rounds of {} steps, {} seeds, aggregator {}: clean accuracy {:.2}% (plain mean: \
         {}); honest credit/work gap with no attack {:.1}%",
        args.workers,
        args.attackers,
        args.rounds,
        args.inner_steps,
        args.seeds,
        args.aggregator,
        100.0 * report.clean_accuracy,
        report.clean_accuracy_mean.map_or("not run".into(), |accuracy| format!("{:.2}%", 100.0 * accuracy)),
        100.0 * clean_gap,
    );
    if let Some(path) = &args.plot {
        println!("plot: {}", path.display());
    }
}

/// Clean and attacked accuracy per attack, as two lines over the attacks.
fn plot(path: &std::path::Path, report: &BatteryReport, args: &BatteryArgs) -> anyhow::Result<()> {
    let labels: Vec<String> = report.attacks.iter().map(|attack| attack.attack.clone()).collect();
    let series = |name: &str, pick: fn(&AttackReport) -> f64| crate::plot::Bars {
        name: name.to_owned(),
        values: report.attacks.iter().map(|attack| 100.0 * pick(attack)).collect(),
    };
    crate::plot::bar_chart(
        path,
        &format!("{} of {} workers attacking, aggregator {}", args.attackers, args.workers, args.aggregator),
        &labels,
        "test accuracy (%)",
        &[
            series("clean", |attack| attack.clean_accuracy),
            series("attacked", |attack| attack.attacked_accuracy),
        ],
    )
}
