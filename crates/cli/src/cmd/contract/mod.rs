//! `crowdtrain contract ...`: optimal contracts with model rewards
//! (crate `crowdtrain-contract`). This module only parses flags, calls the
//! library and prints; every number comes from the library.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use clap::{Args, Subcommand};
use comfy_table::Table;
use crowdtrain_contract::baselines::{complete_information, no_contract};
use crowdtrain_contract::certificate::kkt_residual;
use crowdtrain_contract::check::check;
use crowdtrain_contract::paper;
use crowdtrain_contract::rewards::{parse_outcome, ratios, realize};
use crowdtrain_contract::{Expectations, Method, Scenario, Solution, solve};
use crowdtrain_train::reward::Metric;
use serde_json::{Value, json};

use crate::output;

mod fit;
mod reward;

/// What a model is worth, for `fit`, `reward-model` and `check-reward`.
#[derive(Debug, Clone, Args)]
struct MetricArgs {
    /// What a model is worth: accuracy on the test set, or neg-loss = 1 -
    /// loss / reference loss (for a language model's held-out loss).
    #[arg(long, default_value = "accuracy", value_parser = ["accuracy", "neg-loss"])]
    metric: String,

    /// The loss worth 0 for neg-loss. Default: ln 10, the loss of guessing
    /// uniformly among Fashion-MNIST's 10 classes; for a language model, ln
    /// of its vocabulary size.
    #[arg(long, value_name = "LOSS")]
    reference_loss: Option<f64>,
}

impl MetricArgs {
    fn metric(&self) -> anyhow::Result<Metric> {
        let metric = match self.metric.as_str() {
            "neg-loss" => {
                Metric::NegLoss { reference_loss: self.reference_loss.unwrap_or(std::f64::consts::LN_10) }
            }
            _ => {
                anyhow::ensure!(self.reference_loss.is_none(), "--reference-loss is for --metric neg-loss");
                Metric::Accuracy
            }
        };
        metric.validate()?;
        Ok(metric)
    }
}

/// Arguments of `crowdtrain contract`.
#[derive(Debug, Args)]
pub struct ContractArgs {
    #[command(subcommand)]
    command: ContractCommand,
}

#[derive(Debug, Subcommand)]
enum ContractCommand {
    /// Solve a scenario file: the optimal menu per type, with the baselines.
    Solve(SolveArgs),
    /// Realise the model rewards of the optimal menu for one outcome n.
    Rewards(RewardsArgs),
    /// Compare the optimal contract with complete information and with no contract.
    Baselines(SolveArgs),
    /// Reproduce the paper's section 6 experiments as tables and PNG figures.
    Paper(PaperArgs),
    /// Time the solver: S1+S2+S3 together, and N=1000 participants with I=10 types.
    Bench(BenchArgs),
    /// Fit the accuracy function a(M) to measured learning curves (sim or run).
    Fit(fit::FitArgs),
    /// Build a model reward of a given value from a run's checkpoints.
    RewardModel(reward::RewardModelArgs),
    /// Rebuild a model reward from its recipe and check it.
    CheckReward(reward::CheckRewardArgs),
}

#[derive(Debug, Args)]
struct SolveArgs {
    /// Scenario file (TOML; see docs/CONTRACT.md).
    file: PathBuf,
    /// Print one JSON object instead of tables.
    #[arg(long)]
    json: bool,
    /// How expectations are computed: auto, enumerate or convolution.
    #[arg(long, default_value = "auto")]
    method: Method,
}

#[derive(Debug, Args)]
struct RewardsArgs {
    /// Scenario file (TOML).
    file: PathBuf,
    /// Count of participants of each [[types]] entry, in file order, e.g. 2,2,2,2,2.
    #[arg(long)]
    outcome: String,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    /// How expectations are computed: auto, enumerate or convolution.
    #[arg(long, default_value = "auto")]
    method: Method,
}

#[derive(Debug, Args)]
struct PaperArgs {
    /// Directory for the CSV tables and PNG figures.
    #[arg(long, default_value = "contract-paper")]
    out: PathBuf,
}

#[derive(Debug, Args)]
struct BenchArgs {
    /// Timed repetitions; the median is reported.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Scenario for the large case (default: the built-in N=1000, I=10
    /// scenario, identical to examples/contracts/large_n1000_i10.toml).
    #[arg(long)]
    large: Option<PathBuf>,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

/// Runs a `contract` subcommand.
pub fn run(args: ContractArgs) -> anyhow::Result<()> {
    match args.command {
        ContractCommand::Solve(a) => solve_command(&a, true),
        ContractCommand::Baselines(a) => solve_command(&a, false),
        ContractCommand::Rewards(a) => rewards_command(&a),
        ContractCommand::Paper(a) => paper_command(&a),
        ContractCommand::Bench(a) => bench_command(&a),
        ContractCommand::Fit(a) => fit::run(&a),
        ContractCommand::RewardModel(a) => reward::reward_model(&a),
        ContractCommand::CheckReward(a) => reward::check_reward(&a),
    }
}

fn load(path: &Path) -> anyhow::Result<Scenario> {
    Scenario::load(path).with_context(|| format!("invalid scenario {}", path.display()))
}

/// Everything `solve` and `baselines` report, as JSON.
fn report(scenario: &Scenario, solution: &Solution) -> anyhow::Result<Value> {
    let check_method = Method::Auto;
    let violations = check(scenario, &solution.contribution, &solution.expected_reward_value, check_method)?;
    let kkt = if scenario.participants > 1 {
        let expectations = Expectations::new(scenario, check_method)?;
        kkt_residual(scenario, &expectations, &solution.contribution, &solution.expected_reward_value)
    } else {
        0.0
    };
    let complete = complete_information(scenario, &solution.reservations);
    let naive = no_contract(scenario, &solution.reservations);
    let ratio = ratios(solution);
    let types: Vec<Value> = (0..scenario.type_count())
        .map(|i| {
            let f = solution.reservations[i].utility;
            let pool = solution.pools.iter().position(|p| p.contains(&i)).unwrap_or(i);
            let inputs: Vec<usize> =
                (0..scenario.input_to_type.len()).filter(|&k| scenario.input_to_type[k] == i).collect();
            json!({
                "cost": scenario.types[i].cost,
                "probability": scenario.types[i].probability,
                "reservation_utility": f,
                "contribution": solution.contribution[i],
                "expected_reward_value": solution.expected_reward_value[i],
                "max_reward_value": solution.max_reward_value[i],
                "utility": solution.utility[i],
                "information_rent": solution.utility[i] - f,
                "reservation_contribution": solution.reservations[i].contribution,
                "reward_ratio": ratio[i],
                "pool": pool,
                "input_entries": inputs,
                "no_contract_utility": naive.utility[i],
                "rent_over_no_contract": solution.utility[i] - naive.utility[i],
            })
        })
        .collect();
    Ok(json!({
        "types": types,
        "expected_accuracy": solution.expected_accuracy,
        "expected_value": solution.expected_value,
        "max_violation": violations.max(),
        "kkt_residual": kkt,
        "solve_seconds": solution.solve_seconds,
        "violations": {
            "individual_rationality": violations.individual_rationality,
            "incentive_compatibility": violations.incentive_compatibility,
            "budget": violations.budget,
            "nonnegativity": violations.nonnegativity,
        },
        "method": solution.method,
        "outcomes": solution.outcomes,
        "expectation_error_bound": solution.accuracy_error_bound,
        "max_reward_value_error_bound": solution.max_reward_value_error_bound.iter().fold(0.0f64, |a, &b| a.max(b)),
        "iterations": solution.iterations,
        "participants": scenario.participants,
        "pools": solution.pools.iter().map(|p| p.iter().map(|i| i + 1).collect::<Vec<_>>()).collect::<Vec<_>>(),
        "merged_types": scenario.merge_notes(),
        "baselines": {
            "complete_information": {
                "expected_value": complete.expected_value,
                "method": complete.method,
                "standard_error": complete.standard_error,
                "information_cost": solution.expected_value - complete.expected_value,
            },
            "no_contract": {
                "expected_value": naive.expected_value,
                "gain_of_contract": solution.expected_value - naive.expected_value,
            },
        },
    }))
}

fn solve_command(args: &SolveArgs, full: bool) -> anyhow::Result<()> {
    let scenario = load(&args.file)?;
    let solution = solve(&scenario, args.method)?;
    let report = report(&scenario, &solution)?;
    if args.json {
        return output::print_json(&report);
    }
    for note in scenario.merge_notes() {
        println!("note: {note}");
    }
    let mut table = Table::new();
    if full {
        table.set_header(vec!["type", "cost", "p", "f", "m", "t", "t-bar", "u", "rent", "m* alone"]);
        for (i, t) in report["types"].as_array().expect("built above").iter().enumerate() {
            table.add_row(vec![
                format!("{}", i + 1),
                format!("{}", t["cost"]),
                format!("{:.4}", num(t, "probability")),
                format!("{:.6}", num(t, "reservation_utility")),
                format!("{:.6}", num(t, "contribution")),
                format!("{:.6}", num(t, "expected_reward_value")),
                format!("{:.6}", num(t, "max_reward_value")),
                format!("{:.6}", num(t, "utility")),
                format!("{:.6}", num(t, "information_rent")),
                format!("{:.3}", num(t, "reservation_contribution")),
            ]);
        }
        println!("{table}");
        println!(
            "E[a] = {:.10}   E[v(a)] = {:.8}   max violation = {:.2e}   KKT residual = {:.2e}",
            solution.expected_accuracy,
            solution.expected_value,
            num(&report, "max_violation"),
            num(&report, "kkt_residual")
        );
        let bound = match solution.method {
            "convolution" => format!(", error bound {:.1e} on E[a]", solution.accuracy_error_bound),
            _ => String::new(),
        };
        println!(
            "method: {}{}{}   {} iterations in {:.3} s   pools: {}",
            solution.method,
            solution.outcomes.map(|n| format!(" ({n} outcomes)")).unwrap_or_default(),
            bound,
            solution.iterations,
            solution.solve_seconds,
            pools_text(&solution.pools)
        );
    }
    let b = &report["baselines"];
    let ci = &b["complete_information"];
    let se = num(ci, "standard_error");
    println!(
        "complete information: E[v(a)] = {:.6}{} ({})   information cost = {:.6}",
        num(ci, "expected_value"),
        if se > 0.0 { format!(" +- {se:.1e}") } else { String::new() },
        ci["method"].as_str().unwrap_or(""),
        num(ci, "information_cost")
    );
    println!(
        "no contract (free riding): E[v(a)] = {:.6}   gain of the contract = {:.6}",
        num(&b["no_contract"], "expected_value"),
        num(&b["no_contract"], "gain_of_contract")
    );
    if !full {
        let mut table = Table::new();
        table.set_header(vec![
            "type",
            "cost",
            "utility u",
            "rent vs complete info (u - f)",
            "no-contract utility",
            "u - no-contract",
        ]);
        for (i, t) in report["types"].as_array().expect("built above").iter().enumerate() {
            table.add_row(vec![
                format!("{}", i + 1),
                format!("{}", t["cost"]),
                format!("{:.6}", num(t, "utility")),
                format!("{:.6}", num(t, "information_rent")),
                format!("{:.6}", num(t, "no_contract_utility")),
                format!("{:.6}", num(t, "rent_over_no_contract")),
            ]);
        }
        println!("{table}");
    }
    Ok(())
}

fn num(v: &Value, key: &str) -> f64 {
    v[key].as_f64().unwrap_or(f64::NAN)
}

fn pools_text(pools: &[Vec<usize>]) -> String {
    pools
        .iter()
        .map(|p| format!("{{{}}}", p.iter().map(|i| (i + 1).to_string()).collect::<Vec<_>>().join(",")))
        .collect::<Vec<_>>()
        .join(" ")
}

fn rewards_command(args: &RewardsArgs) -> anyhow::Result<()> {
    let scenario = load(&args.file)?;
    let outcome = parse_outcome(&scenario, &args.outcome).context("--outcome")?;
    let solution = solve(&scenario, args.method)?;
    let r = realize(&scenario, &solution, &outcome);
    let types: Vec<Value> = r
        .types
        .iter()
        .enumerate()
        .map(|(i, t)| {
            json!({
                "cost": scenario.types[i].cost,
                "count": outcome[i],
                "present": t.present,
                "reward_accuracy": t.reward_accuracy,
                "reward_value": t.reward_value,
                "ratio": t.ratio,
                "contribution": solution.contribution[i],
            })
        })
        .collect();
    if args.json {
        return output::print_json(&json!({
            "outcome": outcome,
            "total_contribution": r.total_contribution,
            "trained_accuracy": r.trained_accuracy,
            "types": types,
        }));
    }
    for note in scenario.merge_notes() {
        println!("note: {note}");
    }
    println!(
        "outcome n = {:?} (canonical order, highest cost first): total contribution n.m = {:.6}, trained model a(n.m) = {:.10}",
        outcome, r.total_contribution, r.trained_accuracy
    );
    let mut table = Table::new();
    table.set_header(vec!["type", "cost", "count", "r_i(n) accuracy", "v(r_i(n))", "t_i / t-bar_i"]);
    for (i, t) in r.types.iter().enumerate() {
        table.add_row(vec![
            format!("{}", i + 1),
            format!("{}", scenario.types[i].cost),
            format!("{}{}", outcome[i], if t.present { "" } else { " (nobody receives it)" }),
            format!("{:.10}", t.reward_accuracy),
            format!("{:.8}", t.reward_value),
            format!("{:.10}", t.ratio),
        ]);
    }
    println!("{table}");
    Ok(())
}

fn paper_command(args: &PaperArgs) -> anyhow::Result<()> {
    let start = Instant::now();
    let multi = paper::run_multitype()?;
    println!("Section 6.2 (N = 10, p = 0.2 each): our optimum beside the published contract");
    print!("{}", paper::multitype_table(&multi));
    let grid_spec = paper::two_type_grid();
    let bar = output::progress_bar(grid_spec.len() as u64, "6.1 grid");
    let mut grid = Vec::with_capacity(grid_spec.len());
    for &(n, p1) in &grid_spec {
        grid.push(paper::solve_grid_point(n, p1)?);
        bar.inc(1);
    }
    bar.finish_and_clear();
    let (worst, worst_at) = grid
        .iter()
        .map(|g| (g.information_cost(), (g.participants, g.p1)))
        .fold((f64::INFINITY, (0, 0.0)), |a, b| if b.0 < a.0 { b } else { a });
    let max_rent = grid.iter().map(|g| g.information_rents()[1]).fold(f64::NEG_INFINITY, f64::max);
    println!("Section 6.1 (c = 0.02, 0.01; {} grid points):", grid.len());
    println!(
        "  largest information cost: ours {worst:.6} at N = {}, p1 = {:.6}; published -1.623505 (figure floor -1.62) at N = 2, p1 = 0.483103",
        worst_at.0, worst_at.1
    );
    println!(
        "  largest information rent of the low-cost type: ours {max_rent:.4}; published figure ceiling 15"
    );
    let written = paper::write_outputs(&args.out, &grid, &multi)?;
    for path in written {
        println!("wrote {}", path.display());
    }
    println!("done in {:.1} s", start.elapsed().as_secs_f64());
    Ok(())
}

/// The built-in large benchmark: N = 1000, ten types with costs 0.2 down to
/// 0.02, uniform prior (the same as examples/contracts/large_n1000_i10.toml).
fn large_scenario() -> Scenario {
    let raw: Vec<(f64, f64)> = (0..10).map(|k| (0.2 - 0.02 * k as f64, 0.1)).collect();
    Scenario::new(1000, paper::PAPER_ACCURACY, paper::PAPER_VALUATION_SCALE, &raw).expect("valid")
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let k = v.len();
    if k % 2 == 1 { v[k / 2] } else { 0.5 * (v[k / 2 - 1] + v[k / 2]) }
}

fn bench_command(args: &BenchArgs) -> anyhow::Result<()> {
    let runs = args.runs.max(1);
    let scenarios: Vec<Scenario> =
        paper::MULTITYPE.iter().map(|s| paper::multitype_scenario(&s.costs)).collect();
    let large = match &args.large {
        Some(path) => load(path)?,
        None => large_scenario(),
    };
    let mut paper_times = Vec::with_capacity(runs);
    let mut large_times = Vec::with_capacity(runs);
    let mut values = Vec::new();
    let mut large_value = 0.0;
    let mut large_method = "";
    for _ in 0..runs {
        let start = Instant::now();
        values.clear();
        for s in &scenarios {
            values.push(solve(s, Method::Auto)?.expected_value);
        }
        paper_times.push(start.elapsed().as_secs_f64());
        let start = Instant::now();
        let solution = solve(&large, Method::Auto)?;
        large_times.push(start.elapsed().as_secs_f64());
        large_value = solution.expected_value;
        large_method = solution.method;
    }
    let report = json!({
        "runs": runs,
        "s1_s2_s3_seconds_median": median(paper_times.clone()),
        "s1_s2_s3_seconds": paper_times,
        "s1_s2_s3_expected_values": values,
        "large_participants": large.participants,
        "large_types": large.type_count(),
        "large_method": large_method,
        "large_seconds_median": median(large_times.clone()),
        "large_seconds": large_times,
        "large_expected_value": large_value,
    });
    if args.json {
        return output::print_json(&report);
    }
    println!(
        "S1+S2+S3: median {:.4} s over {runs} runs (E[v(a)] = {:?})",
        num(&report, "s1_s2_s3_seconds_median"),
        values
    );
    println!(
        "N={} I={} ({large_method}): median {:.3} s over {runs} runs (E[v(a)] = {large_value:.8})",
        large.participants,
        large.type_count(),
        num(&report, "large_seconds_median")
    );
    Ok(())
}
