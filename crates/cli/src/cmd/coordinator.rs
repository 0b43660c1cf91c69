//! `crowdtrain coordinator`: serve a training run.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use crowdtrain_node::coordinator::{Node, serve};
use crowdtrain_node::files;

/// Run the coordinator of a training run: an HTTP API for workers, durable
/// state in --state. Restarted with the same --state, it resumes the run.
#[derive(Debug, Args)]
pub struct CoordinatorArgs {
    /// The run configuration (see docs/ARCHITECTURE.md for every field).
    #[arg(long, value_name = "FILE")]
    config: PathBuf,

    /// Address to listen on; port 0 picks a free port.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7070")]
    listen: SocketAddr,

    /// Directory for the state database, checkpoints and the coordinator key.
    #[arg(long, value_name = "DIR", default_value = "crowdtrain-state")]
    state: PathBuf,

    /// Threads for aggregation and evaluation (default: one per core).
    #[arg(long, value_name = "T")]
    threads: Option<usize>,
}

pub fn run(args: CoordinatorArgs) -> anyhow::Result<()> {
    let config = files::load_config(&args.config)?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    if let Some(threads) = args.threads {
        rayon::ThreadPoolBuilder::new().num_threads(threads).build_global()?;
    }
    runtime.block_on(async move {
        let state = args.state.clone();
        let node = tokio::task::spawn_blocking(move || Node::open(config, &state))
            .await?
            .with_context(|| format!("could not open the run in {}", args.state.display()))?;
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("could not listen on {}", args.listen))?;
        let address = listener.local_addr()?;
        // The first line of stdout is for whoever started us (the demo, tests).
        println!("listening on http://{address}");
        eprintln!(
            "run {} (coordinator key {}), state in {}",
            node.run_id(),
            node.public_key(),
            args.state.display()
        );
        serve(node, listener, shutdown_signal()).await?;
        eprintln!("coordinator stopped");
        Ok(())
    })
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate()).expect("a SIGTERM handler can be installed");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
}
