//! A harness for tests that run the network as a user does: a coordinator
//! and workers as separate processes of the real binary, on loopback.

#![allow(dead_code)] // each test file uses part of the harness

/// The same DevTools client `crowdtrain bench dashboard` uses.
#[path = "../../src/browser.rs"]
pub mod browser;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crowdtrain_data::DataSource;
pub use crowdtrain_node::files;
pub use crowdtrain_protocol::coordinator::RoundState;
use crowdtrain_protocol::wire::{
    AUTH_HEADER, ApiError, BODY_HEADER, BodyDeclaration, ErrorCode, Phase, RUN_HEADER, RegisterRequest,
    RoundView, RunInfo, RunStatus,
};
use crowdtrain_protocol::{Commitment, Digest, Identity, RequestAuth, Signed};
use crowdtrain_train::diloco::{DilocoConfig, simulate};
use crowdtrain_train::{Codec, Encode, Nesterov, TrainingRecipe};

pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_crowdtrain")
}

pub fn subset() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../data/assets/fashion-mnist-subset")
        .canonicalize()
        .unwrap()
}

/// A free port on loopback for a coordinator, which tests restart on the
/// same address. Bound and released, so it is taken below the kernel's
/// ephemeral range: a port the kernel hands out for port 0 is also the
/// local port it gives outgoing connections, so a worker's connection in
/// another test could take it between release and the coordinator's bind
/// (seen in CI: "Address already in use"). Below that range only explicit
/// binds compete, and a per-process counter from a random start keeps this
/// process's tests apart.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32768);
    let (low, high) = (10_000u32, ephemeral_low.min(65_536));
    if high <= low + 1_000 {
        // An unusual range: fall back to the kernel's choice.
        return std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    }
    let span = high - low;
    let start = std::process::id().wrapping_mul(2_654_435_761) % span;
    for _ in 0..span {
        let offset = (start + NEXT.fetch_add(1, Ordering::Relaxed)) % span;
        let port = (low + offset) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port on loopback in {low}..{high}");
}

/// The audit master key tests give the coordinator, so audit draws are
/// the same on every run.
pub const TEST_AUDIT_SECRET: &str = "4242424242424242424242424242424242424242424242424242424242424242";

/// A coordinator and its workers in one temporary directory; every process
/// is killed when the value is dropped.
pub struct Network {
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub coordinator: Option<Child>,
    pub workers: Vec<Child>,
    /// Environment variables every process of the run gets (a bucket's
    /// endpoint and credentials: [`S3Server::env`]).
    pub env: Vec<(String, String)>,
}

impl Network {
    /// A run of `rounds` rounds of `inner_steps` steps (batch 32, seed 3),
    /// audited with `audit_probability` in 4 segments (the stake the least
    /// allowed), with extra `[round]` settings.
    pub fn new(rounds: u64, inner_steps: u64, audit_probability: f64, round_section: &str) -> Self {
        Self::with_extra(rounds, inner_steps, audit_probability, round_section, "")
    }

    /// [`Network::new`] with more TOML appended (new sections only).
    pub fn with_extra(
        rounds: u64,
        inner_steps: u64,
        audit_probability: f64,
        round_section: &str,
        extra: &str,
    ) -> Self {
        Self::with_training(rounds, inner_steps, audit_probability, round_section, "", 4, extra)
    }

    /// [`Network::with_extra`] with more `[training]` lines (e.g. a
    /// codec) and the audits' `segments`.
    pub fn with_training(
        rounds: u64,
        inner_steps: u64,
        audit_probability: f64,
        round_section: &str,
        training: &str,
        segments: u32,
        extra: &str,
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let stake =
            crowdtrain_protocol::audit::minimum_stake(inner_steps * 32, audit_probability).unwrap_or(0);
        // Every process of a test shares 127.0.0.1: no per-address limit,
        // unless the test is about it.
        let server = if extra.contains("[server]") {
            ""
        } else {
            "[server]\nrequests_per_second_per_address = 100000\nrequests_per_second_per_key = 100000\n\
             connections_per_second_per_address = 100000\n"
        };
        let config = format!(
            "rounds = {rounds}\n[training]\nseed = 3\ninner_steps = {inner_steps}\nbatch_size = 32\n{training}\n\
             [data]\ndir = {:?}\n[audit]\nprobability = {audit_probability}\nsegments = {segments}\nstake = {stake}\n[round]\n{round_section}\n{extra}\n{server}",
            subset()
        );
        std::fs::write(dir.path().join("run.toml"), config).unwrap();
        std::fs::create_dir_all(dir.path().join("state")).unwrap();
        std::fs::write(dir.path().join("state/audit.secret"), TEST_AUDIT_SECRET).unwrap();
        Self { dir, port: free_port(), coordinator: None, workers: Vec::new(), env: Vec::new() }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn start_coordinator(&mut self) {
        self.start_coordinator_with_open_files(None);
    }

    /// Starts the coordinator with at most `open_files` descriptors (soft
    /// and hard limit), if given.
    pub fn start_coordinator_with_open_files(&mut self, open_files: impl Into<Option<u64>>) {
        let log =
            std::fs::OpenOptions::new().create(true).append(true).open(self.path("coordinator.log")).unwrap();
        let mut command = Command::new(binary());
        command
            .args(["coordinator", "--listen", &format!("127.0.0.1:{}", self.port)])
            .arg("--config")
            .arg(self.path("run.toml"))
            .arg("--state")
            .arg(self.path("state"))
            .envs(self.env.iter().map(|(name, value)| (name, value)))
            .stdout(Stdio::piped())
            .stderr(log);
        if let Some(limit) = open_files.into() {
            use std::os::unix::process::CommandExt;
            // SAFETY: setrlimit is async-signal-safe; it only lowers this
            // child's own limit between fork and exec.
            unsafe {
                command.pre_exec(move || {
                    let limit = libc::rlimit { rlim_cur: limit, rlim_max: limit };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let mut child = command.spawn().unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        assert!(
            line.starts_with("listening on"),
            "coordinator did not start: {}",
            self.log("coordinator.log")
        );
        self.coordinator = Some(child);
    }

    pub fn kill_coordinator(&mut self) {
        let mut child = self.coordinator.take().unwrap();
        child.kill().unwrap(); // SIGKILL: no chance to clean up
        child.wait().unwrap();
    }

    /// Starts worker `index` (its key is made on first use) with
    /// `behavior` and `threads` training threads.
    pub fn start_worker_as(&mut self, index: usize, behavior: &str, threads: usize) {
        self.start_worker_with(index, behavior, threads, &[]);
    }

    /// [`Network::start_worker_as`] with extra environment variables (for
    /// example `CROWDTRAIN_KERNELS=portable`: another determinism class).
    pub fn start_worker_with(&mut self, index: usize, behavior: &str, threads: usize, env: &[(&str, &str)]) {
        self.start_worker_full(index, behavior, threads, env, &[]);
    }

    /// An honest worker on one thread, with more `crowdtrain worker`
    /// arguments (for example `--cost 0.001`).
    pub fn start_worker_args(&mut self, index: usize, args: &[&str]) {
        self.start_worker_full(index, "honest", 1, &[], args);
    }

    /// Worker `index` with `behavior` on one thread, logging JSON lines
    /// (`--json-log`) on its stdout, with more arguments.
    pub fn start_worker_logged(&mut self, index: usize, behavior: &str, args: &[&str]) {
        let args: Vec<&str> = ["--json-log"].into_iter().chain(args.iter().copied()).collect();
        self.start_worker_full(index, behavior, 1, &[], &args);
    }

    fn start_worker_full(
        &mut self,
        index: usize,
        behavior: &str,
        threads: usize,
        env: &[(&str, &str)],
        args: &[&str],
    ) {
        let key = self.path(&format!("worker-{index}.key"));
        if !key.exists() {
            files::save_identity(&files::generate_identity().unwrap(), &key).unwrap();
        }
        let token = self.path(&format!("worker-{index}.token"));
        if !token.exists() {
            std::fs::write(&token, self.admission_token()).unwrap();
        }
        let log = std::fs::File::create(self.path(&format!("worker-{index}.log"))).unwrap();
        // `--json` for its summary at the end, unless it logs JSON lines.
        let summary = (!args.contains(&"--json-log")).then_some("--json");
        let child = Command::new(binary())
            .args(["worker", "--coordinator", &self.url(), "--give-up-after", "60"])
            .args(summary)
            .args(["--threads", &threads.to_string(), "--behavior", behavior])
            .arg("--key")
            .arg(&key)
            .arg("--admission-token-file")
            .arg(&token)
            .arg("--data")
            .arg(subset())
            .arg("--cache")
            .arg(self.path(&format!("cache-{index}")))
            .args(args)
            .envs(self.env.iter().map(|(name, value)| (name.as_str(), value.as_str())))
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap();
        self.workers.push(child);
    }

    pub fn start_worker(&mut self, index: usize) {
        self.start_worker_as(index, "honest", 1);
    }

    /// A fresh admission token for this run (the default admission is by
    /// token), as its operator issues them.
    pub fn admission_token(&self) -> String {
        crowdtrain_node::coordinator::issue_admission_tokens(&self.path("state"), 1).unwrap()[0].to_string()
    }

    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.path(name)).unwrap_or_default()
    }

    pub fn status(&self) -> Option<RunStatus> {
        get_json(&format!("{}/v1/status", self.url()))
    }

    /// Polls the status until `done` holds, or fails after `seconds`.
    pub fn wait_for(&self, seconds: u64, what: &str, done: impl Fn(&RunStatus) -> bool) -> RunStatus {
        let deadline = Instant::now() + Duration::from_secs(seconds);
        loop {
            if let Some(status) = self.status()
                && done(&status)
            {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; coordinator log:\n{}",
                self.log("coordinator.log")
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts the coordinator and honest workers `0..workers`, waits for
    /// the run to finish and be evaluated, and returns its status and each
    /// worker's `--json` summary (each must have exited successfully).
    pub fn run_honest_workers(&mut self, workers: usize) -> (RunStatus, Vec<serde_json::Value>) {
        self.start_coordinator();
        for index in 0..workers {
            self.start_worker(index);
        }
        let status = self.wait_for(120, "the run to finish", finished_and_evaluated);
        let summaries = self
            .join_workers()
            .into_iter()
            .map(|output| {
                assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
                serde_json::from_slice(&output.stdout).unwrap()
            })
            .collect();
        (status, summaries)
    }

    /// With the coordinator and its workers running: SIGKILLs the
    /// coordinator once a round after the first is open, calls `meanwhile`
    /// with the status before the kill, restarts it, and checks that no
    /// accepted submission was lost; returns the statuses before the kill
    /// and just after the restart.
    pub fn kill_coordinator_mid_round(
        &mut self,
        meanwhile: impl FnOnce(&RunStatus),
    ) -> (RunStatus, RunStatus) {
        let before = self.wait_for(60, "round 1 or later to open", |status| {
            status.rounds.iter().any(|round| round.status == RoundState::Open && round.round >= 1)
        });
        self.kill_coordinator();
        meanwhile(&before);
        std::thread::sleep(Duration::from_millis(500));
        self.start_coordinator();
        let after = self.wait_for(5, "the restarted coordinator", |_| true);
        let accepted = |status: &RunStatus| -> u64 {
            status.workers.iter().map(|worker| worker.submissions_accepted).sum()
        };
        assert!(
            accepted(&after) >= accepted(&before),
            "no accepted submission was lost: {} -> {}",
            accepted(&before),
            accepted(&after)
        );
        (before, after)
    }

    /// Waits for every worker to exit and returns their outputs.
    pub fn join_workers(&mut self) -> Vec<Output> {
        self.workers.drain(..).map(|child| child.wait_with_output().unwrap()).collect()
    }

    /// `crowdtrain rewards --state <state> --json`, parsed.
    pub fn rewards(&self) -> serde_json::Value {
        let output = Command::new(binary())
            .args(["rewards", "--json", "--state"])
            .arg(self.path("state"))
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        serde_json::from_slice(&output.stdout).unwrap()
    }

    /// Runs the coordinator on this network's files to its end (for
    /// configurations it must refuse).
    pub fn run_coordinator_to_exit(&self) -> Output {
        Command::new(binary())
            .args(["coordinator", "--listen", "127.0.0.1:0", "--config"])
            .arg(self.path("run.toml"))
            .arg("--state")
            .arg(self.path("state"))
            .output()
            .unwrap()
    }

    /// Runs `crowdtrain ledger ARGS --state <state>`.
    pub fn ledger(&self, args: &[&str]) -> Output {
        Command::new(binary())
            .arg("ledger")
            .args(args)
            .arg("--state")
            .arg(self.path("state"))
            .output()
            .unwrap()
    }
}

/// Set to keep the directory of a network test that failed (the
/// coordinator's ledger and log, the workers' logs and caches), to read
/// what happened; its path is printed.
pub const KEEP_FAILED_ENV: &str = "CROWDTRAIN_KEEP_FAILED_NETWORK";

impl Drop for Network {
    fn drop(&mut self) {
        for child in self.coordinator.iter_mut().chain(self.workers.iter_mut()) {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking()
            && std::env::var_os(KEEP_FAILED_ENV).is_some()
            && let Ok(empty) = tempfile::tempdir()
        {
            let kept = std::mem::replace(&mut self.dir, empty).keep();
            eprintln!("{KEEP_FAILED_ENV}: the failed run's directory is kept in {}", kept.display());
        }
    }
}

/// A real S3-compatible server (`s3s-fs`, which
/// `scripts/install-prerequisites.sh` installs) on a free loopback port,
/// serving bucket [`S3Server::BUCKET`] from a temporary directory, with
/// credentials; killed when dropped.
pub struct S3Server {
    child: Child,
    pub root: tempfile::TempDir,
    pub port: u16,
}

impl S3Server {
    pub const BUCKET: &'static str = "crowdtrain-test";
    const ACCESS_KEY: &'static str = "crowdtrain-test-access";
    const SECRET_KEY: &'static str = "crowdtrain-test-secret-key";

    pub fn start() -> Self {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join(Self::BUCKET)).unwrap();
        let port = free_port();
        let binary = s3s_fs_binary();
        let log = std::fs::File::create(root.path().join("s3s-fs.log")).unwrap();
        let child = Command::new(&binary)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", Self::ACCESS_KEY, "--secret-key", Self::SECRET_KEY])
            .arg(root.path())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|error| panic!("could not start {}: {error}", binary.display()));
        let server = Self { child, root, port };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "s3s-fs did not listen on port {port}");
            std::thread::sleep(Duration::from_millis(20));
        }
        server
    }

    /// What a coordinator or worker needs in its environment to reach the
    /// bucket.
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("AWS_ACCESS_KEY_ID", Self::ACCESS_KEY.to_owned()),
            ("AWS_SECRET_ACCESS_KEY", Self::SECRET_KEY.to_owned()),
            ("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{}", self.port)),
            ("AWS_REGION", "us-east-1".to_owned()),
        ]
        .into_iter()
        .map(|(name, value)| (name.to_owned(), value))
        .collect()
    }

    /// The `[storage]` section of a run in this bucket under `prefix`.
    pub fn storage_section(prefix: &str) -> String {
        format!("[storage]\nurl = \"s3://{}/{prefix}\"\n", Self::BUCKET)
    }

    /// The files of the objects under `relative` (a path in the bucket),
    /// as the server keeps them: one file per object.
    pub fn objects(&self, relative: &str) -> Vec<PathBuf> {
        let mut found = Vec::new();
        let mut pending = vec![self.root.path().join(Self::BUCKET).join(relative)];
        while let Some(dir) = pending.pop() {
            for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                let path = entry.path();
                if path.is_dir() {
                    pending.push(path);
                } else if !path.file_name().is_some_and(|name| name.to_string_lossy().starts_with('.')) {
                    found.push(path);
                }
            }
        }
        found
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `s3s-fs`: `$S3S_FS`, else on the `PATH`, else in cargo's bin directory.
fn s3s_fs_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("S3S_FS") {
        return PathBuf::from(path);
    }
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cargo")));
    let candidates = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .chain(cargo_home.map(|home| home.join("bin")))
        .map(|dir| dir.join("s3s-fs"));
    candidates.into_iter().find(|path| path.is_file()).unwrap_or_else(|| {
        panic!(
            "s3s-fs (the S3-compatible server the bucket tests start) is not installed: run \
             scripts/install-prerequisites.sh, or `cargo install s3s-fs@0.14.1 --features binary --locked`"
        )
    })
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

/// The status code and text of a GET.
pub fn get_text(url: &str) -> (u16, String) {
    runtime().block_on(async {
        let response = reqwest::get(url).await.unwrap();
        (response.status().as_u16(), response.text().await.unwrap())
    })
}

pub fn get_json<T: serde::de::DeserializeOwned>(url: &str) -> Option<T> {
    runtime().block_on(async { reqwest::get(url).await.ok()?.json().await.ok() })
}

/// The run is over and every closed round is evaluated and scored.
pub fn finished_and_evaluated(status: &RunStatus) -> bool {
    status.phase == Phase::Finished
        && status
            .rounds
            .iter()
            .filter(|round| round.status == RoundState::Closed)
            .all(|round| round.test_accuracy.is_some() && round.scored)
}

/// The in-process simulation of the same run (the subset, seed 3, batch
/// 32, the coordinator's default checks, aggregator and validation split):
/// what the network must reproduce bit for bit.
pub fn simulated_state_hash(workers: usize, rounds: u64, inner_steps: u64) -> String {
    simulated_state_hash_with(workers, rounds, inner_steps, crowdtrain_defense::Aggregator::default())
}

/// [`simulated_state_hash`] with another aggregation rule.
pub fn simulated_state_hash_with(
    workers: usize,
    rounds: u64,
    inner_steps: u64,
    aggregator: crowdtrain_defense::Aggregator,
) -> String {
    simulated_state_hash_of(workers, rounds, inner_steps, aggregator, Nesterov::default())
}

/// [`simulated_state_hash_with`] with another outer step (e.g. its
/// `broadcast`).
pub fn simulated_state_hash_of(
    workers: usize,
    rounds: u64,
    inner_steps: u64,
    aggregator: crowdtrain_defense::Aggregator,
    outer: Nesterov,
) -> String {
    simulated_state_hash_coded(workers, rounds, inner_steps, aggregator, outer, Codec::INT8)
}

/// [`simulated_state_hash_of`] with another codec for the updates (with
/// each worker's error-feedback residual under a lossy one).
pub fn simulated_state_hash_coded(
    workers: usize,
    rounds: u64,
    inner_steps: u64,
    aggregator: crowdtrain_defense::Aggregator,
    outer: Nesterov,
    codec: Codec,
) -> String {
    simulated_run(workers, rounds, inner_steps, aggregator, outer, codec).state_hash
}

/// The simulation of a networked run, round by round: what a run that
/// ends off its bits is compared with to name the first round it left
/// them.
pub struct SimulatedRun {
    pub state_hash: String,
    /// The test accuracy and loss of the model each round made, as the
    /// coordinator's status reports them for its closed rounds.
    pub evaluations: Vec<(f64, f64)>,
}

/// [`simulated_state_hash_coded`], with each round's evaluation.
pub fn simulated_run(
    workers: usize,
    rounds: u64,
    inner_steps: u64,
    aggregator: crowdtrain_defense::Aggregator,
    outer: Nesterov,
    codec: Codec,
) -> SimulatedRun {
    let config = DilocoConfig {
        recipe: TrainingRecipe { inner_steps, batch_size: 32, codec, ..TrainingRecipe::with_seed(3) },
        workers,
        rounds,
        outer,
        inner_lr: None,
    };
    let dataset = DataSource::Directory(subset()).load().unwrap();
    let mut evaluations = Vec::new();
    let report = simulate(
        &config,
        &dataset,
        &mut crowdtrain_defense::ModelDefense::new(Default::default(), aggregator),
        |round| evaluations.push((round.diloco_test_accuracy, round.diloco_test_loss)),
    )
    .unwrap();
    SimulatedRun { state_hash: report.diloco_state_hash.to_hex(), evaluations }
}

/// Asserts, before a networked run's bits are compared with its
/// simulation's, what would explain a difference: every round closed with
/// all `workers` participating, committing in time, revealing and
/// aggregated, and nobody slashed; then that each round's model evaluates
/// as the simulation's did, naming the first round that left its bits.
pub fn assert_every_round_counted_everyone_as_simulated(
    status: &RunStatus,
    workers: u32,
    simulated: &SimulatedRun,
) {
    assert_eq!(status.rounds.len(), simulated.evaluations.len(), "the status lists every round");
    for round in &status.rounds {
        assert_eq!(
            (
                round.status,
                round.participants,
                round.committed,
                round.revealed,
                round.accepted,
                round.slashed
            ),
            (RoundState::Closed, workers, workers, workers, workers, 0),
            "round {} closed with every worker (status, participants, committed, revealed, accepted,              slashed): {round:?}",
            round.round
        );
    }
    for (round, &(accuracy, loss)) in status.rounds.iter().zip(&simulated.evaluations) {
        assert_eq!(
            (round.test_accuracy, round.test_loss),
            (Some(accuracy), Some(loss)),
            "round {} is the first whose model is not the simulation's: {round:?}",
            round.round
        );
    }
}

/// A hand-driven worker, to send exactly the requests a test needs.
pub struct HandWorker {
    pub identity: Identity,
    pub url: String,
    pub run: RunInfo,
}

impl HandWorker {
    pub fn join(network: &Network, seed: u8) -> Self {
        let worker = Self::unregistered(network, seed);
        let (status, body) = worker.register(Some(network.admission_token()));
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        worker
    }

    /// Joins a run that admits anyone (`[admission] mode = "open"`).
    pub fn join_open(network: &Network, seed: u8) -> Self {
        let worker = Self::unregistered(network, seed);
        let (status, body) = worker.register(None);
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        worker
    }

    /// A worker with key `seed` that has not registered.
    pub fn unregistered(network: &Network, seed: u8) -> Self {
        let signed: Signed<RunInfo> = get_json(&format!("{}/v1/run", network.url())).unwrap();
        Self { identity: Identity::from_seed([seed; 32]), url: network.url(), run: signed.body }
    }

    /// Registers (class avx2-fma) with `token`.
    pub fn register(&self, token: Option<String>) -> (u16, Vec<u8>) {
        let body =
            serde_json::to_vec(&RegisterRequest { class: "avx2-fma".into(), token, choice: None }).unwrap();
        self.send("POST", "/v1/workers", body, self.nonce(), self.run.run_id)
    }

    pub fn nonce(&self) -> u64 {
        std::thread::sleep(Duration::from_micros(2));
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_micros() as u64
    }

    /// Sends a request signed by this worker for `run`.
    pub fn send(&self, method: &str, path: &str, body: Vec<u8>, nonce: u64, run: Digest) -> (u16, Vec<u8>) {
        let auth = RequestAuth::sign(&self.identity, &run, method, path, nonce, &body);
        self.send_raw(method, path, body, Some(auth.to_header()), Some(run.to_hex()))
    }

    /// Sends a signed request without a body; `None` if it got no answer.
    pub fn send_raw_signed(&self, method: &str, path: &str) -> Option<u16> {
        let auth = RequestAuth::sign(&self.identity, &self.run.run_id, method, path, self.nonce(), b"");
        runtime().block_on(async {
            let request = reqwest::Client::new()
                .request(method.parse().unwrap(), format!("{}{path}", self.url))
                .header(AUTH_HEADER, auth.to_header())
                .header(RUN_HEADER, self.run.run_id.to_hex());
            Some(request.send().await.ok()?.status().as_u16())
        })
    }

    /// The `x-crowdtrain-body` header of `body`.
    pub fn declare(body: &[u8]) -> String {
        BodyDeclaration::of(body).to_header()
    }

    pub fn send_raw(
        &self,
        method: &str,
        path: &str,
        body: Vec<u8>,
        auth: Option<String>,
        run: Option<String>,
    ) -> (u16, Vec<u8>) {
        runtime().block_on(async {
            let client = reqwest::Client::new();
            let declared = Self::declare(&body);
            let mut request =
                client.request(method.parse().unwrap(), format!("{}{path}", self.url)).body(body);
            request = request.header(BODY_HEADER, declared);
            if let Some(auth) = auth {
                request = request.header(AUTH_HEADER, auth);
            }
            if let Some(run) = run {
                request = request.header(RUN_HEADER, run);
            }
            let response = request.send().await.unwrap();
            (response.status().as_u16(), response.bytes().await.unwrap().to_vec())
        })
    }

    /// The round view, waiting up to 10 s for something to do.
    pub fn view(&self) -> RoundView {
        let (status, body) =
            self.send("GET", "/v1/round?wait_ms=10000", Vec::new(), self.nonce(), self.run.run_id);
        assert_eq!(status, 200);
        serde_json::from_slice::<Signed<RoundView>>(&body).unwrap().body
    }

    pub fn path(&self, stage: &str, round: u64, base: &Digest) -> String {
        format!("/v1/rounds/{round}/{stage}?base_model={}", base.to_hex())
    }

    /// An encoded update of the run's size with every value `value`.
    pub fn update(&self, value: f32) -> Vec<u8> {
        Codec::INT8.encode(&vec![value; self.run.parameters as usize]).unwrap()
    }

    /// A commitment to `payload` (the state root is made up: fine for
    /// tests that never audit).
    /// A commitment to `payload` with a made-up trace of this worker's own:
    /// two commitments to one trace are contested (audited whatever the
    /// audit probability), so hand-driven workers must not share one.
    pub fn commitment(&self, payload: &[u8]) -> Commitment {
        Commitment {
            merkle_root: Digest::of(format!("states of {}", self.identity.public_key()).as_bytes()),
            payload: Digest::of(payload),
            segments: 4,
            residual_in: None,
            residual_out: None,
        }
    }

    pub fn commit(&self, round: u64, base: &Digest, payload: &[u8]) -> (u16, Vec<u8>) {
        let body = serde_json::to_vec(&self.commitment(payload)).unwrap();
        self.send("POST", &self.path("commitments", round, base), body, self.nonce(), self.run.run_id)
    }
}

/// The status, code and message of a refusal.
pub fn refusal(response: &(u16, Vec<u8>)) -> (u16, ErrorCode, String) {
    let error: ApiError = serde_json::from_slice(&response.1)
        .unwrap_or_else(|_| panic!("not an ApiError: {}", String::from_utf8_lossy(&response.1)));
    (response.0, error.error, error.message)
}

impl Network {
    /// Waits for every worker to exit successfully; returns each one's
    /// behaviour by worker id (from their `--json` summaries).
    pub fn behaviors_by_id(&mut self) -> std::collections::BTreeMap<u64, String> {
        self.join_workers()
            .into_iter()
            .map(|output| {
                assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
                let summary: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
                (summary["worker"].as_u64().unwrap(), summary["behavior"].as_str().unwrap().to_owned())
            })
            .collect()
    }

    /// Sets `audit.replay = "from-start"` in the run's configuration.
    pub fn replay_from_start(&self) {
        self.set_audit("replay = \"from-start\"");
    }

    /// Sets `audit.auditors = "workers"` in the run's configuration.
    pub fn delegate_audits(&self) {
        self.set_audit("auditors = \"workers\"");
    }

    /// Adds `line` to the `[audit]` section of the run's configuration.
    fn set_audit(&self, line: &str) {
        let config = std::fs::read_to_string(self.path("run.toml")).unwrap();
        std::fs::write(self.path("run.toml"), config.replace("[audit]\n", &format!("[audit]\n{line}\n")))
            .unwrap();
    }
}
