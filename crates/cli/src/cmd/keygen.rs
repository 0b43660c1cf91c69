//! `crowdtrain keygen`: a new ed25519 identity for a worker.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use serde::Serialize;

use crate::output;

/// Write a new ed25519 key (mode 0600) and print its public key.
#[derive(Debug, Args)]
pub struct KeygenArgs {
    /// Where to write the key; an existing file is never overwritten.
    #[arg(long, value_name = "FILE")]
    out: PathBuf,

    /// Print one JSON object on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct KeygenReport {
    public_key: String,
    path: PathBuf,
}

pub fn run(args: KeygenArgs) -> anyhow::Result<()> {
    let public_key = crowdtrain_node::worker::keygen(&args.out).context("could not create the key")?;
    if args.json {
        return output::print_json(&KeygenReport { public_key: public_key.to_hex(), path: args.out });
    }
    println!("{public_key}");
    Ok(())
}
