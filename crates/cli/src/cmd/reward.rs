//! `crowdtrain reward fetch`: a participant downloads its model reward.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use crowdtrain_protocol::PublicKey;

use crate::output;

/// A participant's model reward from a run with a contract.
#[derive(Debug, Args)]
pub struct RewardArgs {
    #[command(subcommand)]
    command: RewardCommand,
}

#[derive(Debug, Subcommand)]
enum RewardCommand {
    /// Download this participant's model reward once the run has finished:
    /// a request signed by its key (no other key gets it), checked against
    /// the hash the coordinator names, which its ledger entry records.
    Fetch(FetchArgs),
}

#[derive(Debug, Args)]
struct FetchArgs {
    /// The coordinator's URL, e.g. http://127.0.0.1:7070.
    #[arg(long, value_name = "URL")]
    coordinator: String,

    /// The participant's key (the one it trained with).
    #[arg(long, value_name = "FILE")]
    key: PathBuf,

    /// Write the model (safetensors) here.
    #[arg(long, value_name = "FILE")]
    out: PathBuf,

    /// Wait this many seconds for the run to finish and the reward to be built.
    #[arg(long, value_name = "SECONDS", default_value_t = 0)]
    wait: u64,

    /// Trust only this coordinator key (hex); default: the key it presents.
    #[arg(long, value_name = "HEX")]
    coordinator_key: Option<PublicKey>,

    /// Print one JSON object on stdout.
    #[arg(long)]
    json: bool,
}

pub fn run(args: RewardArgs) -> anyhow::Result<()> {
    let RewardCommand::Fetch(args) = args.command;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let fetched = runtime
        .block_on(crowdtrain_node::worker::fetch_reward(
            &args.coordinator,
            &args.key,
            args.coordinator_key,
            Duration::from_secs(args.wait),
            &args.out,
        ))
        .context("no model reward")?;
    if args.json {
        return output::print_json(&fetched);
    }
    println!(
        "{}'s model reward {} ({}) written to {}",
        fetched.worker,
        fetched.reward_model,
        output::bytes(fetched.bytes),
        args.out.display()
    );
    Ok(())
}
