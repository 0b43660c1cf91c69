//! `crowdtrain contract reward-model` and `check-reward`: model rewards
//! built from a run's checkpoints, and checked by rebuilding them
//! (`crowdtrain_store::reward`). This module finds the run, its data and
//! its model, and prints.

use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use crowdtrain_data::Dataset;
use crowdtrain_protocol::reward_model::RewardRecipe;
use crowdtrain_protocol::{Digest, PublicKey, RunConfig};
use crowdtrain_store::Checkpoints;
use crowdtrain_store::reward::{RewardBuilder, check_reward_model};
use crowdtrain_store::trajectory::{Trajectory, read_trajectory};
use crowdtrain_train::reward::{Metric, screen_indices};
use crowdtrain_train::{Model, TrainError, evaluate, evaluate_subset};
use serde::Serialize;

use super::MetricArgs;
use crate::output::{self, RuntimeArgs};

/// Build a participant's model reward from a run's checkpoints: the model
/// between two consecutive checkpoints whose measured value is the target,
/// never above the final model's. Prints its recipe, which `check-reward`
/// rebuilds and checks.
#[derive(Debug, Args)]
pub struct RewardModelArgs {
    /// The coordinator's --state directory.
    #[arg(long, value_name = "DIR")]
    state: PathBuf,

    /// The value the reward must have (its test accuracy, or its neg-loss
    /// value with --metric neg-loss): r_i(n) of the contract.
    #[arg(long, visible_alias = "target", value_name = "VALUE")]
    accuracy: f64,

    #[command(flatten)]
    metric: MetricArgs,

    /// How far the reward's value may be from the target (0.005: half a point).
    #[arg(long, default_value_t = 0.005)]
    tolerance: f64,

    /// Stop searching once this close to the target (a quarter of a point:
    /// half the tolerance, usually one or two evaluations).
    #[arg(long, default_value_t = 0.0025)]
    precision: f64,

    /// Write the reward model (safetensors) here.
    #[arg(long, value_name = "FILE")]
    out: PathBuf,

    /// Also write the recipe (JSON) here.
    #[arg(long, value_name = "FILE")]
    recipe: Option<PathBuf>,

    /// Search on the whole test set, without screening candidates on a
    /// fixed tenth of it first (the coordinator screens: the model may
    /// differ, both meet the target).
    #[arg(long)]
    no_screen: bool,

    #[command(flatten)]
    runtime: RuntimeArgs,
}

/// Rebuild a reward model from its recipe and the run's checkpoints, and
/// check every claim: the checkpoints are the run's (from its verified
/// ledger), the rebuilt model's hash, its measured value (bit for bit),
/// the distance to the target, and that it is not worth more than the
/// final model.
#[derive(Debug, Args)]
pub struct CheckRewardArgs {
    /// The coordinator's --state directory.
    #[arg(long, value_name = "DIR")]
    state: PathBuf,

    /// The recipe (JSON, as `reward-model --json` prints it or `--recipe` writes it).
    #[arg(long, value_name = "FILE")]
    recipe: PathBuf,

    /// Also check that this delivered file is the recipe's model.
    #[arg(long, value_name = "FILE")]
    model: Option<PathBuf>,

    /// Verify the ledger against this coordinator key (hex) instead of the
    /// one the state names.
    #[arg(long, value_name = "HEX")]
    key: Option<PublicKey>,

    #[command(flatten)]
    runtime: RuntimeArgs,
}

/// A run opened for rewards: its trajectory, model, checkpoints and test set.
struct Run {
    trajectory: Trajectory,
    model: Box<dyn Model>,
    checkpoints: Checkpoints,
    dataset: Dataset,
    evaluation_set: Digest,
}

fn open_run(state: &Path, key: Option<PublicKey>, runtime: &RuntimeArgs) -> anyhow::Result<Run> {
    let database = crate::cmd::ledger::database(state)?;
    let trajectory =
        read_trajectory(&database, key).with_context(|| format!("reading the run in {}", state.display()))?;
    let config: RunConfig = serde_json::from_str(&trajectory.config_json)
        .context("the run's recorded configuration is unreadable")?;
    let model = crowdtrain_train::build_model(config.training.model);
    anyhow::ensure!(
        model.name() == trajectory.model_name,
        "the run trains {}, its configuration names {}",
        trajectory.model_name,
        model.name()
    );
    let checkpoints = Checkpoints::open(&state.join("checkpoints"))?;
    let dataset = runtime.load_data()?;
    let evaluation_set = Digest(dataset.test.digest());
    Ok(Run { trajectory, model, checkpoints, dataset, evaluation_set })
}

/// Counts evaluations and the time they take.
#[derive(Default)]
struct Meter {
    evaluations: Cell<u32>,
    screened: Cell<u32>,
    seconds: Cell<f64>,
}

impl Run {
    /// The metric on the whole test set.
    fn measure<'a>(
        &'a self,
        metric: Metric,
        meter: &'a Meter,
    ) -> impl FnMut(&[f32]) -> Result<f64, TrainError> + 'a {
        move |params: &[f32]| {
            let start = Instant::now();
            let evaluation = evaluate(self.model.as_ref(), params, &self.dataset.test)?;
            meter.evaluations.set(meter.evaluations.get() + 1);
            meter.seconds.set(meter.seconds.get() + start.elapsed().as_secs_f64());
            Ok(metric.value(evaluation.accuracy, evaluation.loss))
        }
    }

    /// The metric on the screen's part of the test set, as the coordinator
    /// screens (`crowdtrain_train::reward::screen_indices`).
    fn screen<'a>(
        &'a self,
        metric: Metric,
        indices: &'a [u32],
        meter: &'a Meter,
    ) -> impl FnMut(&[f32]) -> Result<f64, TrainError> + 'a {
        move |params: &[f32]| {
            let start = Instant::now();
            let evaluation = evaluate_subset(self.model.as_ref(), params, &self.dataset.test, indices)?;
            meter.screened.set(meter.screened.get() + 1);
            meter.seconds.set(meter.seconds.get() + start.elapsed().as_secs_f64());
            Ok(metric.value(evaluation.accuracy, evaluation.loss))
        }
    }
}

#[derive(Serialize)]
struct RewardModelReport<'a> {
    recipe: &'a RewardRecipe,
    out: &'a Path,
    /// The target's distance from the delivered value: measured - target.
    error: f64,
    /// Models evaluated on the whole test set in all (checkpoints without
    /// a recorded value, the final model's check, and the search).
    evaluations: u32,
    /// Candidates measured on the screen (a fixed tenth of the test set).
    screened: u32,
    /// Time to build (search and encode), excluding loading the data.
    build_seconds: f64,
    /// Of which evaluating.
    evaluation_seconds: f64,
}

pub fn reward_model(args: &RewardModelArgs) -> anyhow::Result<()> {
    let metric = args.metric.metric()?;
    args.runtime.on_thread_pool(|| {
        let run = open_run(&args.state, None, &args.runtime)?;
        let start = Instant::now();
        let known = run
            .trajectory
            .points
            .iter()
            .map(|point| match (point.test_accuracy, point.test_loss) {
                (Some(accuracy), Some(loss)) => Some(metric.value(accuracy, loss)),
                _ => None,
            })
            .collect();
        let mut builder = RewardBuilder::new(
            &run.checkpoints,
            run.model.as_ref(),
            run.trajectory.checkpoints(),
            known,
            metric,
            run.evaluation_set,
        )?;
        let meter = Meter::default();
        let screen = screen_indices(run.dataset.test.len()).filter(|_| !args.no_screen);
        let measure = run.measure(metric, &meter);
        let built = match &screen {
            Some(indices) => builder.build_screened(
                args.accuracy,
                args.tolerance,
                args.precision,
                run.screen(metric, indices, &meter),
                measure,
            ),
            None => builder.build(args.accuracy, args.tolerance, args.precision, measure),
        }
        .context("no reward model")?;
        let build_seconds = start.elapsed().as_secs_f64();
        write_file(&args.out, &built.file)?;
        let recipe_json = serde_json::to_string_pretty(&built.recipe)?;
        if let Some(path) = &args.recipe {
            write_file(path, format!("{recipe_json}\n").as_bytes())?;
        }
        let report = RewardModelReport {
            recipe: &built.recipe,
            out: &args.out,
            error: built.recipe.measured - built.recipe.target,
            evaluations: meter.evaluations.get(),
            screened: meter.screened.get(),
            build_seconds,
            evaluation_seconds: meter.seconds.get(),
        };
        if args.runtime.json {
            return output::print_json(&report);
        }
        let r = &built.recipe;
        println!(
            "reward model {} worth {:.4} ({} {:+.2} pt from the target {:.4}; the final model {:.4})",
            r.reward_model,
            r.measured,
            metric.name(),
            100.0 * report.error,
            r.target,
            r.final_measured
        );
        println!(
            "made from rounds {} and {} at coefficient {} ({} evaluations, {} screened, {:.2} s)",
            round_name(r.lower.round),
            round_name(r.upper.round),
            r.coefficient,
            report.evaluations,
            report.screened,
            build_seconds
        );
        println!("wrote {}", args.out.display());
        match &args.recipe {
            Some(path) => println!("recipe: {}", path.display()),
            None => println!("{recipe_json}"),
        }
        Ok(())
    })
}

fn round_name(round: Option<u64>) -> String {
    round.map_or("initial".into(), |round| round.to_string())
}

fn write_file(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    std::fs::write(path, bytes).with_context(|| format!("cannot write {}", path.display()))
}

/// Largest recipe file read (a recipe is under 2 KB).
const RECIPE_BYTES_MAX: u64 = 64 * 1024;

#[derive(Serialize)]
struct CheckReport {
    ok: bool,
    reward_model: Option<Digest>,
    measured: Option<f64>,
    final_measured: Option<f64>,
    /// The first claim found wrong.
    problem: Option<String>,
    check_seconds: f64,
}

pub fn check_reward(args: &CheckRewardArgs) -> anyhow::Result<()> {
    let size = std::fs::metadata(&args.recipe)
        .with_context(|| format!("cannot read {}", args.recipe.display()))?
        .len();
    anyhow::ensure!(size <= RECIPE_BYTES_MAX, "{} is too large to be a recipe", args.recipe.display());
    let text = std::fs::read_to_string(&args.recipe)?;
    // Accept the recipe alone, or `reward-model --json`'s whole report.
    let value: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", args.recipe.display()))?;
    let recipe: RewardRecipe = serde_json::from_value(value.get("recipe").cloned().unwrap_or(value))
        .with_context(|| format!("{} is not a reward recipe", args.recipe.display()))?;
    args.runtime.on_thread_pool(|| {
        let run = open_run(&args.state, args.key, &args.runtime)?;
        let start = Instant::now();
        let meter = Meter::default();
        let mut result = check_reward_model(
            &run.checkpoints,
            run.model.as_ref(),
            &run.trajectory.checkpoints(),
            &recipe,
            run.evaluation_set,
            run.measure(recipe.metric, &meter),
        )
        .map_err(|error| error.to_string());
        if let (Ok(check), Some(path)) = (&result, &args.model) {
            let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
            let found = Digest::of(&bytes);
            if found != check.reward_model {
                result = Err(format!(
                    "{} hashes to {found}, not the recipe's {}",
                    path.display(),
                    check.reward_model
                ));
            }
        }
        let report = CheckReport {
            ok: result.is_ok(),
            reward_model: result.as_ref().ok().map(|c| c.reward_model),
            measured: result.as_ref().ok().map(|c| c.measured),
            final_measured: result.as_ref().ok().map(|c| c.final_measured),
            problem: result.as_ref().err().cloned(),
            check_seconds: start.elapsed().as_secs_f64(),
        };
        if args.runtime.json {
            output::print_json(&report)?;
        } else {
            match &result {
                Ok(check) => println!(
                    "ok: {} rebuilt, worth {:.4} (target {:.4} +- {}), the final model {:.4}",
                    check.reward_model, check.measured, recipe.target, recipe.tolerance, check.final_measured
                ),
                Err(problem) => println!("FAILED: {problem}"),
            }
        }
        match result {
            Ok(_) => Ok(()),
            Err(problem) => Err(anyhow::anyhow!("the reward model does not check: {problem}")),
        }
    })
}
