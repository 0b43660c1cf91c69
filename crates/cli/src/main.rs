//! The `crowdtrain` binary: argument parsing and glue only.
//!
//! Every subcommand lives in its own module under `cmd/`, parses its flags
//! with clap, calls into the library crates and prints either a human
//! report or, with `--json`, exactly one JSON object on stdout. Progress
//! bars and logs go to stderr so that stdout stays machine-readable.

mod cmd;
mod output;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "crowdtrain", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Optimal contracts with model rewards: solve a scenario, realise rewards, baselines, the paper's experiments.
    Contract(cmd::contract::ContractArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    output::init_logging();
    let result: anyhow::Result<()> = match cli.command {
        Command::Contract(args) => cmd::contract::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
