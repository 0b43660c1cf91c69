//! `crowdtrain demo`: a whole training network on this machine.
//!
//! Starts a coordinator and N worker processes (this same binary) on
//! 127.0.0.1 with a fresh state directory, shows the run live from the
//! coordinator's status endpoint, and ends with a table per worker and the
//! final accuracy. Everything crosses real HTTP between real processes.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use crowdtrain_data::text::TokenizerSpec;
use crowdtrain_node::files;
use crowdtrain_node::worker::Behavior;
use crowdtrain_protocol::coordinator::RoundState;
use crowdtrain_protocol::wire::{DatasetFingerprint, Phase, RoundRecord, RunInfo, RunStatus, WorkerStatus};
use crowdtrain_protocol::{MAX_OUTER_DELAY, Signed};
use crowdtrain_train::{Codec, Nesterov, TrainingRecipe};
use serde::Serialize;

use crate::model_args::{GptArgs, ModelName};
use crate::output;

/// Run a coordinator and N workers as separate processes on this machine.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Worker processes to start.
    #[arg(long, default_value_t = 4)]
    workers: usize,

    /// The workers' nice level (for benchmarks: on one machine the workers
    /// stand in for other machines, and must not starve the coordinator
    /// and a browser of the CPU).
    #[arg(long, hide = true, default_value_t = 0, value_parser = clap::value_parser!(i32).range(0..=19))]
    pub(crate) worker_nice: i32,

    /// Rounds to run.
    #[arg(long, default_value_t = 20)]
    rounds: u64,

    /// Inner steps per round (H).
    #[arg(long, default_value_t = 50)]
    inner_steps: u64,

    /// Seed of the run.
    #[arg(long, default_value_t = 0)]
    seed: u64,

    /// Model architecture: mlp and cnn on Fashion-MNIST, gpt on text
    /// (--data FILE|DIR, default Shakespeare) with nanoGPT's recipe.
    #[arg(long, value_enum, default_value = "mlp")]
    model: ModelName,

    /// The data: a directory with the Fashion-MNIST IDX files, or for the
    /// GPT a UTF-8 text file or directory (default as for `train`).
    #[arg(long, value_name = "DIR|FILE")]
    data: Option<PathBuf>,

    /// The GPT's tokenizer: `char` or a tokenizer.json.
    #[arg(long, default_value = "char", value_name = "char|FILE")]
    tokenizer: TokenizerSpec,

    #[command(flatten)]
    gpt: GptArgs,

    /// Encoding of the workers' updates (run.toml's `[training] codec`):
    /// int8, f32, q4, q2, or topk:DENSITY with an optional +int8, +q4 or
    /// +q2 (e.g. topk:0.02+q4). The lossy ones (q4, q2, top-k) keep each
    /// worker's error-feedback residual, committed and audited.
    #[arg(long, default_value = "int8")]
    codec: Codec,

    /// Outer Nesterov learning rate (run.toml's `[outer] lr`).
    #[arg(long, default_value_t = Nesterov::default().lr)]
    outer_lr: f32,

    /// Outer Nesterov momentum (run.toml's `[outer] momentum`): top-k
    /// uploads keep their accuracy with less of it (docs/BENCHMARKS.md).
    #[arg(long, default_value_t = Nesterov::default().momentum)]
    outer_momentum: f32,

    /// Delayed outer updates (run.toml's `[outer] delay`): 1 opens round
    /// r + 1, on the model before round r's outer step, as soon as round r
    /// is the open round, so workers train while round r is revealed,
    /// audited and aggregated; d (up to 4) opens rounds r + 1 to r + d
    /// (d + 1 live rounds, for links slower than d - 1 rounds' training).
    /// It costs accuracy at DiLoCo's outer step, more the deeper it goes:
    /// pair it with a gentler one (docs/BENCHMARKS.md).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=i64::from(MAX_OUTER_DELAY)))]
    outer_delay: u32,

    /// Chance that a submission is audited (a replay of one of its 4
    /// segments); 0 turns audits off. The stake is set to the least the
    /// run accepts: just above the work of a submission divided by this.
    #[arg(long, default_value_t = 0.1)]
    audit_probability: f64,

    /// Who replays audited segments: the coordinator, or (workers) another
    /// worker of the same CPU class, re-checked by the coordinator when it
    /// disagrees.
    #[arg(long, default_value = "coordinator", value_parser = ["coordinator", "workers"])]
    auditors: String,

    /// Where audits replay from: `segment` (the audited worker uploads its
    /// segment's start state) or `from-start` (the coordinator replays the
    /// round from its base through the drawn segment: no upload; with
    /// coordinator auditors and a codec without error feedback).
    #[arg(long, default_value = "segment", value_parser = ["segment", "from-start"])]
    audit_replay: String,

    /// Behaviours of the first workers, comma-separated (any of `crowdtrain
    /// worker --behavior`: lazy:F, fabricate, wrong-data, stale, copy,
    /// tamper-reveal, no-answer, sign-flip, noise[:SCALE], label-flip,
    /// alie[:Z], ipm[:EPSILON], nan, inflate-residual[:SCALE]); the rest
    /// are honest. E.g.
    /// `--cheaters lazy:0.5,copy,sign-flip`.
    #[arg(long, value_name = "B,B,...", value_delimiter = ',')]
    cheaters: Vec<Behavior>,

    /// Start this many more workers once a third of the rounds are done:
    /// they join at the next round (their join time is reported).
    #[arg(long, default_value_t = 0)]
    late_workers: usize,

    /// Keep the run's files (state, keys, logs) in this directory instead
    /// of a temporary one.
    #[arg(long, value_name = "DIR")]
    keep: Option<PathBuf>,

    /// Fail if the run takes longer than this many seconds.
    #[arg(long, default_value_t = 1800)]
    timeout: u64,

    /// Write test accuracy per round to this file (.png or .svg).
    #[arg(long, value_name = "FILE")]
    plot: Option<PathBuf>,

    /// Write the run's HTML report (as `crowdtrain report`) to this file
    /// at the end.
    #[arg(long, value_name = "FILE")]
    report: Option<PathBuf>,

    /// Run the whole timeline of a contract (a scenario file, as `contract
    /// solve` reads it): the coordinator publishes its menu, each worker
    /// gets a private cost drawn from its types and chooses by it, the run
    /// holds each to its option's contribution, and every worker fetches
    /// its model reward at the end; the report checks IR and IC as
    /// realised.
    #[arg(long, value_name = "FILE")]
    contract: Option<PathBuf>,

    /// Print one JSON object on stdout instead of a report.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Serialize)]
pub(crate) struct DemoReport {
    dataset: DatasetFingerprint,
    workers_started: usize,
    pub(crate) final_test_accuracy: f64,
    /// For the GPT: the final model's loss per token (nats) on the whole
    /// validation split, as `sim diloco` reports it (rounds' `test_loss`
    /// read 256 of its sequences).
    #[serde(skip_serializing_if = "Option::is_none")]
    final_val_loss: Option<f64>,
    /// The final model's state hash: equal to the `diloco_state_hash` of
    /// `sim diloco --aggregator centered-clip --validation-fraction 0.05`
    /// with the same settings.
    pub(crate) state_hash: String,
    /// The updates the workers revealed, in bytes (not their audit
    /// answers: `bytes_uploaded_audit_answers`).
    bytes_uploaded: u64,
    /// The audit answers the workers uploaded, in bytes (none under
    /// `audit.replay = "from-start"`); with `bytes_uploaded`, all the
    /// workers uploaded but their commitments and reports.
    bytes_uploaded_audit_answers: u64,
    bytes_downloaded: u64,
    pub(crate) seconds: f64,
    /// Median over rounds, from a round's last worker input to the next
    /// round being shown to the workers (provisionally, if it opened ahead
    /// of the round's last audit verdicts).
    coordinator_overhead_ms_median: Option<u64>,
    /// Rounds opened ahead of the previous round's last audit verdicts, and
    /// those withdrawn because one failed.
    opened_ahead: u64,
    withdrawn_ahead: u64,
    pub(crate) round_seconds_median: Option<f64>,
    /// Median over rounds of the overhead as a fraction of the round's
    /// duration.
    coordinator_overhead_fraction_median: Option<f64>,
    pub(crate) workers: Vec<DemoWorker>,
    pub(crate) rounds: Vec<RoundRecord>,
    /// With `--contract`: each participant's outcome under the menu.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) contract: Option<super::demo_contract::ContractReport>,
}

/// A worker as the coordinator saw it, with what the worker itself said.
#[derive(Debug, Serialize)]
pub(crate) struct DemoWorker {
    #[serde(flatten)]
    pub(crate) status: WorkerStatus,
    /// From registration to holding a first assignment and its model.
    join_ms: Option<u64>,
    started_late: bool,
    /// What the demo told this worker to do.
    behavior: String,
    /// Its time training over its time since it first held an assignment
    /// and its model, as the worker reported it (`crowdtrain worker
    /// --json`).
    compute_utilisation: Option<f64>,
    /// Where the rest of its time went (seconds waiting for a round, for
    /// its model, for commitments' receipts, uploading, auditing), as the
    /// worker reported it.
    idle: Option<crowdtrain_node::worker::IdleSeconds>,
}

/// Kills every child still running when dropped, so a failing demo never
/// leaves processes behind.
struct Processes {
    children: Vec<(String, Child)>,
}

impl Drop for Processes {
    fn drop(&mut self) {
        for (_, child) in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub fn run(args: DemoArgs) -> anyhow::Result<()> {
    let report = execute(&args, |_, _, _| Ok(()))?;
    if args.json {
        return output::print_json(&report);
    }
    print_report(&report, &args);
    if let Some(contract) = &report.contract {
        super::demo_contract::print(contract);
    }
    if let Some(dir) = &args.keep {
        println!("files kept in {}", dir.display());
    }
    Ok(())
}

/// A `--json` demo of `workers` workers, `rounds` rounds of `inner_steps`
/// steps, on `data` (else the default data): what benchmarks run.
pub(crate) fn quiet_args(workers: usize, rounds: u64, inner_steps: u64, data: Option<&Path>) -> DemoArgs {
    let mut words: Vec<String> = vec![
        "--workers".into(),
        workers.to_string(),
        "--rounds".into(),
        rounds.to_string(),
        "--inner-steps".into(),
        inner_steps.to_string(),
        "--json".into(),
    ];
    if let Some(data) = data {
        words.push("--data".into());
        words.push(data.display().to_string());
    }
    let words: Vec<&str> = words.iter().map(String::as_str).collect();
    args_from(&words)
}

/// The demo's arguments from its command line (for commands that run a
/// demo of their own, such as `bench hostile`).
pub(crate) fn args_from(words: &[&str]) -> DemoArgs {
    #[derive(clap::Parser)]
    struct Wrapper {
        #[command(flatten)]
        args: DemoArgs,
    }
    <Wrapper as clap::Parser>::parse_from(std::iter::once("demo").chain(words.iter().copied())).args
}

/// Runs the demo and returns its report; `on_start` is called with the
/// coordinator's URL, its process id and the run's directory as soon as it
/// listens, before any worker starts.
pub(crate) fn execute(
    args: &DemoArgs,
    mut on_start: impl FnMut(&str, u32, &Path) -> anyhow::Result<()>,
) -> anyhow::Result<DemoReport> {
    anyhow::ensure!((1..=64).contains(&args.workers), "--workers must be between 1 and 64");
    anyhow::ensure!(args.rounds >= 1, "--rounds must be at least 1");
    anyhow::ensure!(
        (0.0..=1.0).contains(&args.audit_probability),
        "--audit-probability must be between 0 and 1"
    );
    anyhow::ensure!(args.inner_steps >= 4, "--inner-steps must be at least 4 (one per audit segment)");
    anyhow::ensure!(
        args.cheaters.len() <= args.workers,
        "--cheaters names more workers than --workers starts"
    );
    let temporary;
    let dir = match &args.keep {
        Some(dir) => {
            std::fs::create_dir_all(dir).with_context(|| format!("could not create {}", dir.display()))?;
            dir.clone()
        }
        None => {
            temporary = tempfile::tempdir().context("could not create a temporary directory")?;
            temporary.path().to_owned()
        }
    };
    let started = Instant::now();
    let binary = std::env::current_exe().context("could not find this executable")?;
    write_config(&dir, args)?;
    let mut processes = Processes { children: Vec::new() };
    let url = start_coordinator(&binary, &dir, &mut processes)?;
    on_start(&url, processes.children[0].1.id(), &dir)?;
    let run: Signed<RunInfo> = runtime()?
        .block_on(async { reqwest::get(format!("{url}/v1/run")).await?.json().await })
        .context("could not read the run description")?;
    let coordinator = run.body.coordinator;
    // With a contract, each worker's private cost, drawn from the menu's types.
    let types = match &args.contract {
        Some(_) => {
            let menu = super::demo_contract::fetch_menu(&url, &coordinator)?;
            super::demo_contract::draw_types(&menu, args.workers, args.seed)
        }
        None => Vec::new(),
    };
    let cost = |index: usize| types.get(index).map(|(_, cost)| *cost);
    for index in 0..args.workers {
        start_worker(&binary, &dir, &url, index, args, cost(index), &mut processes)?;
    }
    if !args.json {
        eprintln!(
            "data: {} ({} training {}); coordinator at {url}; files in {}",
            run.body.dataset.name,
            run.body.dataset.train_examples,
            if run.body.config.training.model.is_language_model() { "tokens" } else { "images" },
            dir.display()
        );
    }
    let status = watch(&url, args, &mut processes, started, |processes, completed| {
        let late_start = args.rounds.div_ceil(3);
        let already = processes.children.len() - 1 - args.workers;
        if completed >= late_start && already < args.late_workers {
            for index in args.workers..args.workers + args.late_workers {
                start_worker(&binary, &dir, &url, index, args, None, processes)?;
            }
        }
        Ok(())
    })?;
    // The timeline's last step: every participant fetches its model reward.
    let reward_seconds = match args.contract {
        Some(_) => Some(super::demo_contract::fetch_rewards(&url, &dir, args.workers, coordinator)?),
        None => None,
    };
    let mut status = status;
    status.rounds = all_rounds(&url, status.rounds_total)?;
    let mut report = finish(status, run.body.dataset, args, &mut processes, started)?;
    if let Some(seconds) = reward_seconds {
        report.contract = Some(super::demo_contract::report(&dir, &types, seconds)?);
    }
    report.final_val_loss = final_val_loss(&dir, args, &report.rounds)?;
    if let Some(path) = &args.report {
        super::report::write(&dir.join("state"), path, None)?;
    }
    if let Some(path) = &args.plot {
        let points = report
            .rounds
            .iter()
            .filter_map(|round| {
                round.test_accuracy.map(|accuracy| ((round.round + 1) as f64, 100.0 * accuracy))
            })
            .collect();
        crate::plot::line_chart(
            path,
            &format!("crowdtrain demo: {} workers", args.workers),
            "round",
            "test accuracy (%)",
            &[crate::plot::Series { name: "global model".into(), points }],
        )?;
    }
    Ok(report)
}

pub(crate) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread().enable_all().build()?)
}

fn start_worker(
    binary: &Path,
    dir: &Path,
    url: &str,
    index: usize,
    args: &DemoArgs,
    cost: Option<f64>,
    processes: &mut Processes,
) -> anyhow::Result<()> {
    let key = dir.join(format!("worker-{index}.key"));
    files::save_identity(&files::generate_identity()?, &key)?;
    // The demo is the run's operator: it admits each of its workers with a
    // token of its own, as an operator on the internet would.
    let token = dir.join(format!("worker-{index}.token"));
    let issued = crowdtrain_node::coordinator::issue_admission_tokens(&dir.join("state"), 1)?;
    std::fs::write(&token, format!("{}\n", issued[0]))?;
    let log = std::fs::File::create(dir.join(format!("worker-{index}.log")))?;
    let mut command = Command::new(binary);
    command
        .args(["worker", "--coordinator", url, "--threads", "1", "--give-up-after", "60", "--json"])
        .arg("--key")
        .arg(&key)
        .arg("--admission-token-file")
        .arg(&token)
        .arg("--cache")
        .arg(dir.join(format!("cache-{index}")))
        .stdout(Stdio::piped())
        .stderr(log);
    if let Some(data) = &args.data {
        command.arg("--data").arg(data);
    }
    if args.model == ModelName::Gpt {
        command.arg("--tokenizer").arg(args.tokenizer.to_string());
    }
    let behavior = args.cheaters.get(index).copied().unwrap_or(Behavior::Honest);
    command.arg("--behavior").arg(behavior.to_string());
    if let Some(cost) = cost {
        command.arg("--cost").arg(cost.to_string());
    }
    if args.worker_nice > 0 {
        use std::os::unix::process::CommandExt;
        let nice = args.worker_nice;
        // SAFETY: setpriority is async-signal-safe; between fork and exec
        // it only lowers this child's own priority.
        unsafe {
            command.pre_exec(move || {
                if libc::setpriority(libc::PRIO_PROCESS, 0, nice) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    let child = command.spawn().context("could not start a worker")?;
    processes.children.push((format!("worker {index}"), child));
    Ok(())
}

/// The GPT's final model's validation loss on the whole split, read from
/// the coordinator's checkpoints; `None` for the image models.
fn final_val_loss(dir: &Path, args: &DemoArgs, rounds: &[RoundRecord]) -> anyhow::Result<Option<f64>> {
    use crowdtrain_store::{CheckpointKind, Checkpoints, checkpoint};
    if args.model != ModelName::Gpt {
        return Ok(None);
    }
    let digest = rounds
        .iter()
        .rev()
        .find(|round| round.status == RoundState::Closed)
        .and_then(|round| round.result_model)
        .context("no closed round")?;
    let text = output::load_text(args.data.as_deref(), &args.tokenizer, true)?;
    let config = args.gpt.config(text.tokenizer().vocab_size())?;
    let model = crowdtrain_train::build_model(crowdtrain_train::ModelKind::Gpt(config));
    let checkpoints = Checkpoints::open(&dir.join("state").join("checkpoints"))?;
    let params = checkpoint::decode(
        &checkpoints.get(&digest)?,
        CheckpointKind::Params,
        &model.name(),
        model.layout(),
    )?;
    let loss =
        crowdtrain_train::text::validation_loss(model.as_ref(), &params, text.validation(), config.context)?;
    Ok(Some(loss.loss))
}

/// The run's training recipe: the defaults, or for the GPT nanoGPT's
/// recipe for the tokenizer's vocabulary (the text is read to find it).
fn recipe(args: &DemoArgs) -> anyhow::Result<TrainingRecipe> {
    let recipe = match args.model.image_model() {
        Some(model) => {
            TrainingRecipe { model, inner_steps: args.inner_steps, ..TrainingRecipe::with_seed(args.seed) }
        }
        None => {
            let text = output::load_text(args.data.as_deref(), &args.tokenizer, args.json)?;
            let config = args.gpt.config(text.tokenizer().vocab_size())?;
            TrainingRecipe::language_model(args.seed, config, 1e-3, args.inner_steps, args.rounds)
        }
    };
    Ok(TrainingRecipe { codec: args.codec, ..recipe })
}

fn write_config(dir: &Path, args: &DemoArgs) -> anyhow::Result<()> {
    #[derive(Serialize)]
    struct Training {
        training: TrainingRecipe,
    }
    let recipe = recipe(args)?;
    let mut data = String::new();
    if let Some(path) = &args.data {
        data += &format!("dir = {:?}\n", path.canonicalize().unwrap_or(path.clone()));
    }
    if args.model == ModelName::Gpt {
        data += &format!("tokenizer = {:?}\n", args.tokenizer.to_string());
    }
    let stake =
        crowdtrain_protocol::audit::minimum_stake(recipe.work_units(), args.audit_probability).unwrap_or(0);
    let recipe_model = recipe.model;
    let training =
        toml::to_string(&Training { training: recipe }).context("the recipe does not serialise")?;
    let contract = match &args.contract {
        Some(path) => {
            let path =
                path.canonicalize().with_context(|| format!("no contract scenario {}", path.display()))?;
            // A language model is worth its neg-loss value, 1 - L / ln(vocabulary):
            // 0 for guessing uniformly.
            let metric = match recipe_model {
                crowdtrain_train::ModelKind::Gpt(config) => format!(
                    "metric = {{ neg-loss = {{ reference_loss = {:?} }} }}\n",
                    (config.vocab as f64).ln()
                ),
                _ => String::new(),
            };
            format!("\n[contract]\nscenario = {:?}\n{metric}", path.display().to_string())
        }
        None => String::new(),
    };
    let config = format!(
        "rounds = {rounds}\n\n{training}\n[outer]\nlr = {outer_lr:?}\nmomentum = {outer_momentum:?}\ndelay = {outer_delay}\n\n[data]\n{data}\n\
         [round]\ndeadline_ms = 30000\nreveal_ms = 15000\nmin_workers = {workers}\nquorum = 1\n\
         worker_timeout_ms = 60000\n\n[audit]\nprobability = {probability}\nsegments = 4\nstake = {stake}\n\
         auditors = \"{auditors}\"\nreplay = \"{audit_replay}\"\n\n[admission]\nmode = \"token\"\n\n\
         # Every worker of the demo shares 127.0.0.1: each may hold a long poll and an idle pooled\n\
         # connection, and the demo and a browser poll the status.\n\
         [server]\nrequests_per_second_per_address = 100000\nrequests_per_second_per_key = 100000\n\
         connections_per_second_per_address = 100000\n\
         max_connections_per_address = {per_address}\nmax_connections = {connections}\n\
         uploads_in_flight = {uploads}\n{contract}",
        rounds = args.rounds,
        outer_lr = args.outer_lr,
        outer_momentum = args.outer_momentum,
        outer_delay = args.outer_delay,
        workers = args.workers,
        per_address = demo_connections_per_address(args.workers),
        connections = demo_connections_per_address(args.workers).max(2048),
        uploads = args.workers.max(32),
        probability = args.audit_probability,
        auditors = args.auditors,
        audit_replay = args.audit_replay,
    );
    std::fs::write(dir.join("run.toml"), config).context("could not write run.toml")
}

/// The connections one address may hold in a demo of `workers` workers,
/// all on 127.0.0.1: two per worker (a long poll and an idle pooled
/// connection, or a model download) and room for the demo's own polls and
/// a browser. Never below the default, so the demo is no stricter than a
/// deployment.
pub fn demo_connections_per_address(workers: usize) -> usize {
    let default = crowdtrain_protocol::config::ServerSection::default().max_connections_per_address as usize;
    (2 * workers + 32).max(default)
}

/// Starts the coordinator on a free port and returns its URL.
fn start_coordinator(binary: &Path, dir: &Path, processes: &mut Processes) -> anyhow::Result<String> {
    let log_path = dir.join("coordinator.log");
    let mut child = Command::new(binary)
        .args(["coordinator", "--listen", "127.0.0.1:0"])
        .arg("--config")
        .arg(dir.join("run.toml"))
        .arg("--state")
        .arg(dir.join("state"))
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log_path)?)
        .spawn()
        .context("could not start the coordinator")?;
    let stdout = child.stdout.take().expect("stdout is piped");
    processes.children.push(("coordinator".into(), child));
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    match line.trim().strip_prefix("listening on ") {
        Some(url) => Ok(url.to_owned()),
        None => bail!("the coordinator did not start: {}", tail(&log_path)),
    }
}

/// Follows the run until it is finished and its last round evaluated;
/// `on_progress` is called with the completed rounds after each poll.
fn watch(
    url: &str,
    args: &DemoArgs,
    processes: &mut Processes,
    started: Instant,
    mut on_progress: impl FnMut(&mut Processes, u64) -> anyhow::Result<()>,
) -> anyhow::Result<RunStatus> {
    let runtime = runtime()?;
    let client = reqwest::Client::new();
    let progress = output::progress_bar(args.rounds, "rounds");
    let deadline = started + Duration::from_secs(args.timeout);
    loop {
        if Instant::now() > deadline {
            bail!("the run did not finish within {} s", args.timeout);
        }
        for (name, child) in &mut processes.children {
            if let Some(exit) = child.try_wait()?
                && (name == "coordinator" || !exit.success())
            {
                bail!(
                    "{name} exited early ({exit}); see its log in the run directory (use --keep DIR to keep it)"
                );
            }
        }
        let status: Option<RunStatus> = runtime.block_on(async {
            let response = client.get(format!("{url}/v1/status")).send().await.ok()?;
            response.json().await.ok()
        });
        if let Some(status) = status {
            progress.set_position(status.completed_rounds);
            progress.set_message(format!(
                "test accuracy {}, uploaded {}, {} workers active",
                status.test_accuracy.map_or("-".into(), |accuracy| format!("{:.2}%", 100.0 * accuracy)),
                output::bytes(status.bytes_uploaded),
                status.workers.iter().filter(|worker| worker.active).count()
            ));
            let evaluated = status
                .rounds
                .iter()
                .rev()
                .find(|round| round.status == RoundState::Closed)
                .is_some_and(|round| round.test_accuracy.is_some() && round.scored);
            if status.phase == Phase::Finished && evaluated {
                progress.finish_and_clear();
                return Ok(status);
            }
            on_progress(processes, status.completed_rounds)?;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Every round of the run, page by page (`GET /v1/status` pages them).
fn all_rounds(url: &str, total: u64) -> anyhow::Result<Vec<RoundRecord>> {
    const PAGE: u64 = 1000;
    let runtime = runtime()?;
    let client = reqwest::Client::new();
    let mut rounds = Vec::with_capacity(total as usize);
    while (rounds.len() as u64) < total {
        let page: RunStatus = runtime
            .block_on(async {
                let url = format!("{url}/v1/status?rounds_from={}&rounds_limit={PAGE}", rounds.len());
                client.get(url).send().await?.json().await
            })
            .context("could not read the run's rounds")?;
        if page.rounds.is_empty() {
            break;
        }
        rounds.extend(page.rounds);
    }
    Ok(rounds)
}

/// Waits for the workers to leave, stops the coordinator, builds the report.
fn finish(
    status: RunStatus,
    dataset: DatasetFingerprint,
    args: &DemoArgs,
    processes: &mut Processes,
    started: Instant,
) -> anyhow::Result<DemoReport> {
    let patience = Instant::now() + Duration::from_secs(60);
    let mut joins = std::collections::HashMap::new();
    for (name, child) in processes.children.iter_mut().filter(|(name, _)| name != "coordinator") {
        loop {
            match child.try_wait()? {
                Some(exit) if exit.success() => break,
                Some(exit) => bail!("{name} failed ({exit})"),
                None if Instant::now() > patience => bail!("{name} did not exit after the run finished"),
                None => std::thread::sleep(Duration::from_millis(50)),
            }
        }
        let mut summary = String::new();
        if let Some(stdout) = child.stdout.as_mut() {
            stdout.read_to_string(&mut summary)?;
        }
        let summary: serde_json::Value =
            serde_json::from_str(&summary).with_context(|| format!("{name} printed no summary"))?;
        if let Some(key) = summary["public_key"].as_str() {
            let behavior = summary["behavior"].as_str().unwrap_or("honest").to_owned();
            let utilisation = summary["compute_utilisation"].as_f64();
            let idle = serde_json::from_value(summary["idle"].clone()).ok();
            joins.insert(key.to_owned(), (summary["join_ms"].as_u64(), behavior, utilisation, idle));
        }
    }
    if let Some((_, coordinator)) = processes.children.iter_mut().find(|(name, _)| name == "coordinator") {
        // SAFETY: sending a signal to our own child process.
        unsafe { libc::kill(coordinator.id() as libc::pid_t, libc::SIGTERM) };
        coordinator.wait()?;
    }
    let final_test_accuracy = status
        .rounds
        .iter()
        .rev()
        .find(|round| round.status == RoundState::Closed)
        .and_then(|round| round.test_accuracy)
        .context("no evaluated round")?;
    let mut overheads: Vec<u64> =
        status.rounds.iter().filter_map(|round| round.coordinator_overhead_ms).collect();
    let mut durations: Vec<f64> = status
        .rounds
        .iter()
        .filter_map(|round| {
            round.closed_unix_ms.map(|closed| (closed - round.opened_unix_ms) as f64 / 1000.0)
        })
        .collect();
    let mut fractions: Vec<f64> = status
        .rounds
        .iter()
        .filter_map(|round| {
            let duration = round.closed_unix_ms? - round.opened_unix_ms;
            Some(round.coordinator_overhead_ms? as f64 / duration.max(1) as f64)
        })
        .collect();
    let workers = status
        .workers
        .into_iter()
        .enumerate()
        .map(|(index, worker)| {
            let (join_ms, behavior, compute_utilisation, idle) =
                joins.remove(&worker.public_key.to_hex()).unwrap_or((None, "honest".into(), None, None));
            DemoWorker {
                join_ms,
                behavior,
                compute_utilisation,
                idle,
                started_late: index >= args.workers,
                status: worker,
            }
        })
        .collect();
    Ok(DemoReport {
        dataset,
        workers_started: args.workers,
        final_test_accuracy,
        final_val_loss: None,
        state_hash: status.state_hash.clone(),
        bytes_uploaded: status.bytes_uploaded,
        bytes_uploaded_audit_answers: status.audit_answer_bytes,
        bytes_downloaded: status.bytes_downloaded,
        seconds: started.elapsed().as_secs_f64(),
        coordinator_overhead_ms_median: median(&mut overheads),
        opened_ahead: status.opened_ahead,
        withdrawn_ahead: status.withdrawn_ahead,
        round_seconds_median: median(&mut durations),
        coordinator_overhead_fraction_median: median(&mut fractions),
        workers,
        rounds: status.rounds,
        contract: None,
    })
}

fn median<T: Copy + PartialOrd>(values: &mut [T]) -> Option<T> {
    values.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    values.get(values.len() / 2).copied()
}

fn print_report(report: &DemoReport, args: &DemoArgs) {
    let mut table = output::table(&[
        "worker",
        "behavior",
        "rounds",
        "accepted",
        "rejected",
        "refused",
        "audits passed/failed",
        "replayed for others",
        "verified work",
        "gate evidence",
        "credits",
        "joined in",
        "active at end",
    ]);
    for DemoWorker { status: worker, join_ms, started_late, behavior, .. } in &report.workers {
        table.add_row(vec![
            worker.worker.to_string(),
            behavior.clone(),
            worker.rounds_assigned.to_string(),
            worker.submissions_accepted.to_string(),
            worker.submissions_rejected.to_string(),
            worker.submissions_refused.to_string(),
            format!("{}/{}", worker.audits_passed, worker.audits_failed),
            worker.audits_judged.to_string(),
            worker.verified_work.to_string(),
            worker.quality.map_or("-".into(), |quality| format!("{quality:.1}")),
            worker.credits.to_string(),
            join_ms.map_or("-".into(), |ms| format!("{ms} ms{}", if *started_late { " (late)" } else { "" })),
            if worker.active { "yes".into() } else { "no".into() },
        ]);
    }
    println!("{table}");
    let quality = match report.final_val_loss {
        Some(loss) => format!("final validation loss {loss:.4} nats per token"),
        None => format!("final test accuracy {:.2}%", 100.0 * report.final_test_accuracy),
    };
    println!(
        "{} workers, {} rounds in {:.1} s: {quality}; {} of updates and {} of audit answers uploaded, {} \
         downloaded; coordinator overhead {} per round (median{})",
        args.workers,
        report.rounds.iter().filter(|round| round.status == RoundState::Closed).count(),
        report.seconds,
        output::bytes(report.bytes_uploaded),
        output::bytes(report.bytes_uploaded_audit_answers),
        output::bytes(report.bytes_downloaded),
        report.coordinator_overhead_ms_median.map_or("-".into(), |ms| format!("{ms} ms")),
        report
            .coordinator_overhead_fraction_median
            .map_or(String::new(), |fraction| format!(", {:.1}% of a round", 100.0 * fraction)),
    );
}

/// The last lines of a log, for error messages.
fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().rev().take(5).collect();
    lines.into_iter().rev().collect::<Vec<_>>().join(" | ")
}
