//! `crowdtrain worker`: train for a coordinator.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use crowdtrain_node::worker::{Behavior, Choose, WorkerOptions, run_worker};
use crowdtrain_protocol::PublicKey;

use crate::output;

/// Join a training run: register, then train each round's assignment and
/// upload the result, until the run ends.
#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// The coordinator's URL, e.g. http://127.0.0.1:7070.
    #[arg(long, value_name = "URL")]
    coordinator: String,

    /// This worker's key (from `crowdtrain keygen`).
    #[arg(long, value_name = "FILE")]
    key: PathBuf,

    /// The run's data: a directory with the Fashion-MNIST IDX files, or for
    /// a language model a UTF-8 text file or directory (default: as for
    /// every command). Its fingerprint must be the run's.
    #[arg(long, value_name = "DIR|FILE")]
    data: Option<PathBuf>,

    /// For a language model, the run's tokenizer: `char` or a
    /// tokenizer.json (the data fingerprint covers it).
    #[arg(long, default_value = "char", value_name = "char|FILE")]
    tokenizer: crowdtrain_data::text::TokenizerSpec,

    /// Where downloaded models are cached (default: ~/.cache/crowdtrain/models).
    #[arg(long, value_name = "DIR")]
    cache: Option<PathBuf>,

    /// Threads for training (default: RAYON_NUM_THREADS, else one per core).
    #[arg(long, value_name = "T")]
    threads: Option<usize>,

    /// Give up after the coordinator has been unreachable this many seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 120)]
    give_up_after: u64,

    /// Trust only this coordinator key (hex); default: the key it presents.
    #[arg(long, value_name = "HEX")]
    coordinator_key: Option<PublicKey>,

    /// How to behave: honest, or a cheater for tests and demos. Against the
    /// audits: lazy:F, fabricate, wrong-data, stale, copy, tamper-reveal,
    /// no-answer. Against the model (the checks, robust aggregation and
    /// quality scoring): sign-flip, noise[:SCALE] (Gaussian at SCALE x its
    /// honest norm), label-flip, alie[:Z], ipm[:EPSILON], nan.
    #[arg(long, default_value = "honest")]
    behavior: Behavior,

    /// The admission token the run's operator gave this worker (runs that
    /// admit by token; see `crowdtrain admission token`).
    #[arg(long, value_name = "TOKEN", conflicts_with = "admission_token_file")]
    admission_token: Option<String>,

    /// Read the admission token from this file (keeps it out of `ps`).
    #[arg(long, value_name = "FILE")]
    admission_token_file: Option<PathBuf>,

    /// Your private per-unit cost of contribution, in runs that offer a
    /// contract: the worker takes the option of the signed menu that
    /// maximises your expected utility (ties to the higher contribution).
    /// The cost never leaves this machine; a cost of none of the menu's
    /// types is refused.
    #[arg(long, value_name = "C", conflicts_with = "option")]
    cost: Option<f64>,

    /// Take option K of the run's contract menu (0 is the highest-cost
    /// type's), whatever it is worth to you.
    #[arg(long, value_name = "K")]
    option: Option<u32>,

    /// Print a JSON summary on stdout when the run ends.
    #[arg(long)]
    json: bool,
}

pub fn run(args: WorkerArgs) -> anyhow::Result<()> {
    let cache = args.cache.clone().unwrap_or_else(default_cache);
    let admission_token = match &args.admission_token_file {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .map_err(|error| anyhow::anyhow!("could not read {}: {error}", path.display()))?
                .trim()
                .to_owned(),
        ),
        None => args.admission_token.clone(),
    };
    let options = WorkerOptions {
        coordinator: args.coordinator.clone(),
        key: args.key.clone(),
        data: args.data.clone(),
        tokenizer: args.tokenizer.clone(),
        cache,
        give_up_after: Duration::from_secs(args.give_up_after),
        coordinator_key: args.coordinator_key,
        threads: args.threads,
        behavior: args.behavior,
        admission_token,
        choose: match (args.cost, args.option) {
            (Some(cost), _) => Some(Choose::Cost(cost)),
            (None, Some(option)) => Some(Choose::Option(option)),
            (None, None) => None,
        },
    };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let summary = runtime.block_on(run_worker(options, |news| eprintln!("{news}")))?;
    if args.json {
        return output::print_json(&summary);
    }
    println!(
        "{} rounds trained; {} commitments, {} reveals accepted; audits: {} answered and replayed by the \
         coordinator, {} delegated (verdicts in the ledger), {} failed on receipt; {} replayed for others; {} \
         refused; {} uploaded, {} downloaded",
        summary.rounds_trained,
        summary.commitments,
        summary.reveals_accepted,
        summary.audits_answered,
        summary.audits_delegated,
        summary.audits_failed,
        summary.audits_judged,
        summary.refused,
        output::bytes(summary.bytes_uploaded),
        output::bytes(summary.bytes_downloaded)
    );
    Ok(())
}

fn default_cache() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("crowdtrain").join("models")
}
