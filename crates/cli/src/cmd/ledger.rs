//! `crowdtrain ledger ...`: read and check a run's signed ledger.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};
use crowdtrain_protocol::PublicKey;
use crowdtrain_protocol::ledger::{self, Entry};
use crowdtrain_store::db::{LedgerFailure, verify_ledger};
use crowdtrain_store::reward::rebuild_reward_model;
use crowdtrain_store::trajectory::read_trajectory;
use crowdtrain_store::{Checkpoints, Store};
use serde::Serialize;

use crate::output;

/// Read or check a run's ledger: the signed, hash-chained record of
/// assignments, commitments, audits, slashes and accepted work.
#[derive(Debug, Args)]
pub struct LedgerArgs {
    #[command(subcommand)]
    command: LedgerCommand,
}

#[derive(Debug, Subcommand)]
enum LedgerCommand {
    /// Check every entry's link, hash and signature; report the first broken one.
    Verify(VerifyArgs),
    /// Print the ledger.
    Show(ShowArgs),
}

/// Where a run's ledger is, and whose key it must verify against.
#[derive(Debug, Args)]
pub(crate) struct LedgerSource {
    /// The coordinator's --state directory.
    #[arg(long, value_name = "DIR")]
    pub state: PathBuf,

    /// Verify against this coordinator key (hex) instead of the one the
    /// state names: what an outside auditor should do.
    #[arg(long, value_name = "HEX")]
    pub key: Option<PublicKey>,
}

#[derive(Debug, Args)]
struct VerifyArgs {
    #[command(flatten)]
    source: LedgerSource,

    /// Print one JSON object on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct ShowArgs {
    /// The coordinator's --state directory.
    #[arg(long, value_name = "DIR")]
    state: PathBuf,

    /// Only entries of this kind (e.g. audit, slash, work-accepted).
    #[arg(long)]
    kind: Option<String>,

    /// Print one JSON object on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct VerifyReport {
    ok: bool,
    entries: usize,
    /// Model rewards (runs with a contract) whose files were rebuilt from
    /// their recorded recipes and the run's checkpoints, hash for hash.
    reward_models_rederived: usize,
    first_broken: Option<ledger::Break>,
    problem: Option<String>,
}

#[derive(Serialize)]
struct ShownEntry<'a> {
    index: u64,
    unix_ms: u64,
    kind: &'static str,
    event: &'a ledger::Event,
}

#[derive(Serialize)]
struct ShowReport<'a> {
    verified: bool,
    entries: Vec<ShownEntry<'a>>,
}

pub fn run(args: LedgerArgs) -> anyhow::Result<()> {
    match args.command {
        LedgerCommand::Verify(args) => verify(args),
        LedgerCommand::Show(args) => show(args),
    }
}

pub(crate) fn database(state: &std::path::Path) -> anyhow::Result<PathBuf> {
    let path = state.join("coordinator.sqlite");
    anyhow::ensure!(
        path.is_file(),
        "no coordinator state at {} (expected {})",
        state.display(),
        path.display()
    );
    Ok(path)
}

fn verify(args: VerifyArgs) -> anyhow::Result<()> {
    let path = database(&args.source.state)?;
    let result = verify_ledger(&path, args.source.key).map_err(VerifyFailure::Ledger).and_then(|entries| {
        let rederived = rederive_reward_models(&args.source, &entries).map_err(VerifyFailure::Reward)?;
        Ok((entries.len(), rederived))
    });
    let report = match &result {
        Ok((entries, rederived)) => VerifyReport {
            ok: true,
            entries: *entries,
            reward_models_rederived: *rederived,
            first_broken: None,
            problem: None,
        },
        Err(VerifyFailure::Ledger(LedgerFailure::Broken(broken))) => VerifyReport {
            ok: false,
            entries: 0,
            reward_models_rederived: 0,
            first_broken: Some(broken.clone()),
            problem: Some(broken.to_string()),
        },
        Err(failure) => VerifyReport {
            ok: false,
            entries: 0,
            reward_models_rederived: 0,
            first_broken: None,
            problem: Some(failure.to_string()),
        },
    };
    if args.json {
        output::print_json(&report)?;
    } else if report.ok {
        println!("ledger verified: {} entries, every link, hash and signature intact", report.entries);
        if report.reward_models_rederived > 0 {
            println!(
                "{} model rewards rebuilt from their recipes and the run's checkpoints: every hash matches",
                report.reward_models_rederived
            );
        }
    }
    match result {
        Ok(_) => Ok(()),
        Err(failure) => {
            Err(anyhow::anyhow!(failure)).context(format!("the ledger in {} does not verify", path.display()))
        }
    }
}

#[derive(Debug)]
enum VerifyFailure {
    Ledger(LedgerFailure),
    Reward(String),
}

impl std::fmt::Display for VerifyFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Ledger(failure) => failure.fmt(f),
            Self::Reward(problem) => write!(f, "a model reward does not rebuild: {problem}"),
        }
    }
}

impl std::error::Error for VerifyFailure {}

/// Rebuilds every delivered model reward the ledger records from its
/// recipe and the run's checkpoints (in the state directory), checking its
/// hash: returns how many. Needs no data (nothing is measured; `contract
/// check-reward` re-measures one).
fn rederive_reward_models(source: &LedgerSource, entries: &[Entry]) -> Result<usize, String> {
    let recipes: Vec<_> = entries
        .iter()
        .filter_map(|entry| match &entry.event {
            ledger::Event::ModelRewarded(reward) => {
                reward.outcome.recipe().map(|recipe| (reward.worker, recipe))
            }
            _ => None,
        })
        .collect();
    if recipes.is_empty() {
        return Ok(0);
    }
    let path = database(&source.state).map_err(|error| error.to_string())?;
    let trajectory = read_trajectory(&path, source.key).map_err(|error| error.to_string())?;
    let config: crowdtrain_protocol::RunConfig = serde_json::from_str(&trajectory.config_json)
        .map_err(|error| format!("the run's recorded configuration is unreadable: {error}"))?;
    let model = crowdtrain_train::build_model(config.training.model);
    let checkpoints =
        Checkpoints::open(&source.state.join("checkpoints")).map_err(|error| error.to_string())?;
    let run = trajectory.checkpoints();
    for (worker, recipe) in &recipes {
        rebuild_reward_model(&checkpoints, model.as_ref(), &run, recipe)
            .map_err(|error| format!("{worker}'s model reward: {error}"))?;
    }
    Ok(recipes.len())
}

fn show(args: ShowArgs) -> anyhow::Result<()> {
    let path = database(&args.state)?;
    let verified = verify_ledger(&path, None).is_ok();
    let store = Store::open(&path)?;
    let entries: Vec<Entry> = store
        .ledger()?
        .iter()
        .map(|sealed| {
            Entry::from_bytes(&sealed.bytes)
                .map_err(|reason| anyhow::anyhow!("entry {}: {reason}", sealed.index))
        })
        .collect::<anyhow::Result<_>>()?;
    let shown: Vec<ShownEntry> = entries
        .iter()
        .filter(|entry| args.kind.as_deref().is_none_or(|kind| kind == entry.event.kind()))
        .map(|entry| ShownEntry {
            index: entry.index,
            unix_ms: entry.unix_ms,
            kind: entry.event.kind(),
            event: &entry.event,
        })
        .collect();
    if args.json {
        return output::print_json(&ShowReport { verified, entries: shown });
    }
    if !verified {
        eprintln!(
            "warning: this ledger does not verify; run `crowdtrain ledger verify` for the first broken entry"
        );
    }
    let mut table = output::table(&["#", "time (unix ms)", "kind", "event"]);
    for entry in &shown {
        table.add_row(vec![
            entry.index.to_string(),
            entry.unix_ms.to_string(),
            entry.kind.to_owned(),
            serde_json::to_string(entry.event)?,
        ]);
    }
    println!("{table}");
    Ok(())
}
