//! The `crowdtrain` binary: argument parsing and glue only.
//!
//! Every subcommand lives in its own module under `cmd/`, parses its flags
//! with clap, calls into the library crates and prints either a human
//! report or, with `--json`, exactly one JSON object on stdout. Progress
//! bars and logs go to stderr so that stdout stays machine-readable.

mod baseline_cache;
mod browser;
mod cmd;
mod model_args;
mod output;
mod plot;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// mimalloc instead of the system allocator: a training step frees and
/// reallocates buffers of the model's size, and glibc returns those to the
/// kernel and faults them back in every step (a third of a step's time on
/// the MLP before this change; see docs/BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(name = "crowdtrain", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Train a model centrally (the reference for distributed runs).
    Train(cmd::train::TrainArgs),
    /// Generate text from a trained language model.
    Sample(cmd::sample::SampleArgs),
    /// Write a trained language model for PyTorch: safetensors, config.json, tokenizer.json.
    Export(cmd::export::ExportArgs),
    /// Simulate a training network in one process.
    Sim(cmd::sim::SimArgs),
    /// Measure the training core's speed.
    Bench(cmd::bench::BenchArgs),
    /// Run a whole network on this machine: a coordinator and N workers.
    Demo(cmd::demo::DemoArgs),
    /// Serve a training run to workers over HTTP.
    Coordinator(cmd::coordinator::CoordinatorArgs),
    /// Join a training run as a worker.
    Worker(cmd::worker::WorkerArgs),
    /// Create a worker identity (an ed25519 key).
    Keygen(cmd::keygen::KeygenArgs),
    /// Admit workers to a run: issue admission tokens.
    Admission(cmd::admission::AdmissionArgs),
    /// Read or verify a run's signed ledger.
    Ledger(cmd::ledger::LedgerArgs),
    /// A run's self-contained HTML report (plots inline), from its --state directory.
    Report(cmd::report::ReportArgs),
    /// Per-worker verified work, quality, slashes and credits, from the signed ledger.
    Rewards(cmd::rewards::RewardsArgs),
    /// A participant's model reward (runs with a contract): `reward fetch`.
    Reward(cmd::reward::RewardArgs),
    /// Run every model attack against the checks, robust aggregation and pay.
    Battery(cmd::battery::BatteryArgs),
    /// The pay gate judged again on recorded battery rounds: replay pay, measure false denials.
    Gate(cmd::gate::GateArgs),
    /// Optimal contracts with model rewards: solve a scenario, realise rewards, baselines, the paper's experiments.
    Contract(cmd::contract::ContractArgs),
    /// Tokenizers for language models: train byte-level BPE, encode a text into tokens, decode.
    Tokenizer(cmd::tokenizer::TokenizerArgs),
}

fn main() -> ExitCode {
    // candle keeps its own pool of spinning threads for element-wise ops.
    // Our kernels do the heavy work on rayon, and two pools on two cores
    // fight; candle gets one thread unless the user says otherwise. Set
    // before any thread exists, so no one reads the environment meanwhile.
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        // SAFETY: the process is still single-threaded here.
        unsafe { std::env::set_var("CANDLE_NUM_THREADS", "1") };
    }
    let cli = Cli::parse();
    output::init_logging();
    let result = match cli.command {
        Command::Train(args) => cmd::train::run(args),
        Command::Sample(args) => cmd::sample::run(args),
        Command::Export(args) => cmd::export::run(args),
        Command::Sim(args) => cmd::sim::run(args),
        Command::Bench(args) => cmd::bench::run(args),
        Command::Demo(args) => cmd::demo::run(args),
        Command::Coordinator(args) => cmd::coordinator::run(args),
        Command::Worker(args) => cmd::worker::run(args),
        Command::Keygen(args) => cmd::keygen::run(args),
        Command::Admission(args) => cmd::admission::run(args),
        Command::Ledger(args) => cmd::ledger::run(args),
        Command::Rewards(args) => cmd::rewards::run(args),
        Command::Reward(args) => cmd::reward::run(args),
        Command::Report(args) => cmd::report::run(args),
        Command::Battery(args) => cmd::battery::run_battery(args),
        Command::Gate(args) => cmd::gate::run(args),
        Command::Contract(args) => cmd::contract::run(args),
        Command::Tokenizer(args) => cmd::tokenizer::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
