//! `crowdtrain admission`: the operator's side of admitting workers.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};
use serde::Serialize;

use crate::output;

/// Admit workers to a run that admits by token (`[admission] mode =
/// "token"`, the default).
#[derive(Debug, Args)]
pub struct AdmissionArgs {
    #[command(subcommand)]
    command: AdmissionCommand,
}

#[derive(Debug, Subcommand)]
enum AdmissionCommand {
    /// Issue admission tokens, one per line: each admits one worker key, at
    /// its first registration. Tokens are MACs under a secret in the
    /// run's state directory (created if the coordinator has not yet), so
    /// the coordinator checks them without a list; the machine issuing
    /// them must hold that directory.
    Token(TokenArgs),
}

#[derive(Debug, Args)]
struct TokenArgs {
    /// The run's state directory (the coordinator's --state).
    #[arg(long, value_name = "DIR")]
    state: PathBuf,

    /// How many tokens to issue.
    #[arg(long, default_value_t = 1)]
    count: usize,

    /// Print one JSON object on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct TokenReport {
    tokens: Vec<String>,
}

pub fn run(args: AdmissionArgs) -> anyhow::Result<()> {
    match args.command {
        AdmissionCommand::Token(args) => {
            anyhow::ensure!((1..=100_000).contains(&args.count), "--count must be between 1 and 100000");
            let tokens = crowdtrain_node::coordinator::issue_admission_tokens(&args.state, args.count)
                .with_context(|| format!("could not issue tokens for {}", args.state.display()))?;
            let tokens: Vec<String> = tokens.iter().map(ToString::to_string).collect();
            if args.json {
                return output::print_json(&TokenReport { tokens });
            }
            for token in tokens {
                println!("{token}");
            }
            Ok(())
        }
    }
}
