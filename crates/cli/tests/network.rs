//! The network as a user runs it: a coordinator and workers as separate
//! processes of the real binary, talking HTTP on loopback, killed with real
//! signals. Each test states what the user relies on.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crowdtrain_data::{DataSource, Sharding};
use crowdtrain_protocol::wire::{
    AUTH_HEADER, ApiError, ErrorCode, Phase, RUN_HEADER, RoundView, RunInfo, RunStatus, SubmissionReceipt,
    SubmissionStatus,
};
use crowdtrain_protocol::{Digest, Identity, RequestAuth, Signed};
use crowdtrain_train::diloco::{DilocoConfig, simulate};
use crowdtrain_train::{AdamW, Codec, ModelKind, Nesterov};

fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_crowdtrain")
}

fn subset() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../data/assets/fashion-mnist-subset")
        .canonicalize()
        .unwrap()
}

/// A free port on loopback (bound and released: good enough for tests that
/// must restart a coordinator on the same address).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A coordinator and its workers in one temporary directory; every process
/// is killed when the value is dropped.
struct Network {
    dir: tempfile::TempDir,
    port: u16,
    coordinator: Option<Child>,
    workers: Vec<Child>,
}

impl Network {
    fn new(rounds: u64, inner_steps: u64, round_section: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = format!(
            "seed = 3\nrounds = {rounds}\n[data]\ndir = {:?}\n[inner]\nsteps = {inner_steps}\nbatch_size = 32\n[round]\n{round_section}\n",
            subset()
        );
        std::fs::write(dir.path().join("run.toml"), config).unwrap();
        Self { dir, port: free_port(), coordinator: None, workers: Vec::new() }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn start_coordinator(&mut self) {
        let log =
            std::fs::OpenOptions::new().create(true).append(true).open(self.path("coordinator.log")).unwrap();
        let mut child = Command::new(binary())
            .args(["coordinator", "--listen", &format!("127.0.0.1:{}", self.port)])
            .arg("--config")
            .arg(self.path("run.toml"))
            .arg("--state")
            .arg(self.path("state"))
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        assert!(
            line.starts_with("listening on"),
            "coordinator did not start: {}",
            self.log("coordinator.log")
        );
        self.coordinator = Some(child);
    }

    fn kill_coordinator(&mut self) {
        let mut child = self.coordinator.take().unwrap();
        child.kill().unwrap(); // SIGKILL: no chance to clean up
        child.wait().unwrap();
    }

    fn start_worker(&mut self, index: usize) {
        let key = self.path(&format!("worker-{index}.key"));
        if !key.exists() {
            Identity::generate().unwrap().save(&key).unwrap();
        }
        let log = std::fs::File::create(self.path(&format!("worker-{index}.log"))).unwrap();
        let child = Command::new(binary())
            .args([
                "worker",
                "--coordinator",
                &self.url(),
                "--threads",
                "1",
                "--give-up-after",
                "60",
                "--json",
            ])
            .arg("--key")
            .arg(&key)
            .arg("--data")
            .arg(subset())
            .arg("--cache")
            .arg(self.path(&format!("cache-{index}")))
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap();
        self.workers.push(child);
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.path(name)).unwrap_or_default()
    }

    fn status(&self) -> Option<RunStatus> {
        get_json(&format!("{}/v1/status", self.url()))
    }

    /// Polls the status until `done` holds, or fails after `seconds`.
    fn wait_for(&self, seconds: u64, what: &str, done: impl Fn(&RunStatus) -> bool) -> RunStatus {
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

    /// Waits for every worker to exit and returns their outputs.
    fn join_workers(&mut self) -> Vec<Output> {
        self.workers.drain(..).map(|child| child.wait_with_output().unwrap()).collect()
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        for child in self.coordinator.iter_mut().chain(self.workers.iter_mut()) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

fn get_json<T: serde::de::DeserializeOwned>(url: &str) -> Option<T> {
    runtime().block_on(async { reqwest::get(url).await.ok()?.json().await.ok() })
}

fn finished_and_evaluated(status: &RunStatus) -> bool {
    status.phase == Phase::Finished
        && status
            .rounds
            .iter()
            .filter(|round| round.status == "closed")
            .all(|round| round.test_accuracy.is_some())
}

/// The in-process simulation of the same run (3 shards of the subset, seed
/// 3, batch 32): what the network must reproduce bit for bit.
fn simulated_state_hash(workers: usize, rounds: u64, inner_steps: u64) -> String {
    let config = DilocoConfig {
        model: ModelKind::Mlp,
        workers,
        inner_steps,
        rounds,
        batch_size: 32,
        seed: 3,
        sharding: Sharding::Iid,
        inner: AdamW::default(),
        outer: Nesterov::default(),
        codec: Codec::Int8,
    };
    let dataset = DataSource::Directory(subset()).load().unwrap();
    simulate(&config, &dataset, |_| {}).unwrap().diloco_state_hash.to_hex()
}

#[test]
fn a_networked_run_reproduces_the_simulation_bit_for_bit() {
    let mut network = Network::new(3, 10, "min_workers = 3\ndeadline_ms = 60000");
    network.start_coordinator();
    for index in 0..3 {
        network.start_worker(index);
    }
    let status = network.wait_for(120, "the run to finish", finished_and_evaluated);
    assert_eq!(status.completed_rounds, 3);
    assert_eq!(status.state_hash, simulated_state_hash(3, 3, 10));
    for output in network.join_workers() {
        assert!(output.status.success());
        let summary: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        assert_eq!(summary["submissions_accepted"], 3);
        assert_eq!(summary["finished"], true);
    }
    assert!(status.workers.iter().all(|worker| worker.submissions_accepted == 3));
}

#[test]
fn a_worker_killed_mid_round_does_not_stall_the_run() {
    // Rounds long enough (400 steps) to kill a worker while it trains; a
    // short deadline so the round closes without it.
    let mut network = Network::new(4, 400, "min_workers = 3\nquorum = 2\ndeadline_ms = 4000");
    network.start_coordinator();
    for index in 0..3 {
        network.start_worker(index);
    }
    network.wait_for(60, "round 1 to open", |status| status.completed_rounds >= 1);
    std::thread::sleep(Duration::from_millis(100));
    let mut victim = network.workers.remove(2);
    victim.kill().unwrap();
    victim.wait().unwrap();
    let status = network.wait_for(120, "the run to finish", finished_and_evaluated);
    assert_eq!(status.completed_rounds, 4);
    let victim_status = &status.workers[2];
    assert!(victim_status.submissions_accepted < 4, "{victim_status:?}");
    assert!(!victim_status.active, "a worker that missed its round is not waited for again");
    let round_without_victim =
        status.rounds.iter().find(|round| round.accepted == 2 && round.participants == 3);
    assert!(
        round_without_victim.is_some(),
        "one round closed at its deadline with the quorum: {:?}",
        status.rounds
    );
    for output in network.join_workers() {
        assert!(output.status.success(), "the survivors finish normally");
    }
}

#[test]
fn a_coordinator_killed_mid_round_resumes_and_ends_bit_identical() {
    let mut network = Network::new(4, 150, "min_workers = 2\ndeadline_ms = 60000");
    network.start_coordinator();
    network.start_worker(0);
    network.start_worker(1);
    // Mid-round: round 1 open with one of its two submissions accepted.
    let before = network.wait_for(60, "a half-submitted round", |status| {
        status.rounds.iter().any(|round| round.status == "open" && round.accepted == 1 && round.round >= 1)
    });
    network.kill_coordinator();
    let accepted_before: u64 = before.workers.iter().map(|worker| worker.submissions_accepted).sum();
    std::thread::sleep(Duration::from_millis(500));
    network.start_coordinator();
    let after = network.wait_for(5, "the restarted coordinator", |_| true);
    let accepted_after: u64 = after.workers.iter().map(|worker| worker.submissions_accepted).sum();
    assert!(
        accepted_after >= accepted_before,
        "no accepted submission was lost: {accepted_before} -> {accepted_after}"
    );
    let status = network.wait_for(120, "the run to finish", finished_and_evaluated);
    assert_eq!(status.completed_rounds, 4);
    assert!(status.workers.iter().all(|worker| worker.submissions_accepted == 4), "{:?}", status.workers);
    assert_eq!(
        status.state_hash,
        simulated_state_hash(2, 4, 150),
        "same membership, same bits as an uninterrupted run"
    );
    for output in network.join_workers() {
        assert!(output.status.success());
    }
}

/// A hand-driven worker, to send exactly the requests a test needs.
struct HandWorker {
    identity: Identity,
    url: String,
    run: RunInfo,
}

impl HandWorker {
    fn join(network: &Network, seed: u8) -> Self {
        let signed: Signed<RunInfo> = get_json(&format!("{}/v1/run", network.url())).unwrap();
        let worker = Self { identity: Identity::from_seed([seed; 32]), url: network.url(), run: signed.body };
        let (status, body) =
            worker.send("POST", "/v1/workers", Vec::new(), worker.nonce(), worker.run.run_id);
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        worker
    }

    fn nonce(&self) -> u64 {
        std::thread::sleep(Duration::from_micros(2));
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_micros() as u64
    }

    /// Sends a request signed by this worker for `run`.
    fn send(&self, method: &str, path: &str, body: Vec<u8>, nonce: u64, run: Digest) -> (u16, Vec<u8>) {
        let auth = RequestAuth::sign(&self.identity, &run, method, path, nonce, &body);
        self.send_raw(method, path, body, Some(auth.to_header()), Some(run.to_hex()))
    }

    fn send_raw(
        &self,
        method: &str,
        path: &str,
        body: Vec<u8>,
        auth: Option<String>,
        run: Option<String>,
    ) -> (u16, Vec<u8>) {
        runtime().block_on(async {
            let client = reqwest::Client::new();
            let mut request =
                client.request(method.parse().unwrap(), format!("{}{path}", self.url)).body(body);
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

    /// The round view, waiting up to 10 s for an assignment.
    fn view(&self) -> RoundView {
        let (status, body) =
            self.send("GET", "/v1/round?wait_ms=10000", Vec::new(), self.nonce(), self.run.run_id);
        assert_eq!(status, 200);
        serde_json::from_slice::<Signed<RoundView>>(&body).unwrap().body
    }

    fn submission_path(&self, round: u64, base: &Digest) -> String {
        format!("/v1/rounds/{round}/submissions?base_model={}", base.to_hex())
    }

    fn update(&self, value: f32) -> Vec<u8> {
        Codec::Int8.encode(&vec![value; self.run.parameters as usize]).unwrap()
    }
}

fn refusal(response: &(u16, Vec<u8>)) -> (u16, ErrorCode, String) {
    let error: ApiError = serde_json::from_slice(&response.1)
        .unwrap_or_else(|_| panic!("not an ApiError: {}", String::from_utf8_lossy(&response.1)));
    (response.0, error.error, error.message)
}

#[test]
fn every_kind_of_bad_submission_is_refused_with_its_reason_and_changes_nothing() {
    // An upload limit of 1 MiB (an int8 MLP update is 0.2 MB), so that the
    // oversized case fits in loopback socket buffers and the client reads
    // the refusal instead of a broken pipe.
    let mut network = Network::new(
        2,
        10,
        "min_workers = 1\ndeadline_ms = 60000\nquorum = 1\n[limits]\nmax_upload_bytes = 1048576",
    );
    network.start_coordinator();
    let worker = HandWorker::join(&network, 7);
    let view = worker.view();
    let assignment = view.assignment.clone().expect("the only worker is assigned round 0");
    let (round, base, run) = (assignment.round, assignment.base_model, worker.run.run_id);
    let path = worker.submission_path(round, &base);
    let before = network.status().unwrap();

    let good = worker.update(1e-3);
    let nonce = worker.nonce();
    let auth = RequestAuth::sign(&worker.identity, &run, "POST", &path, nonce, &good).to_header();
    type Case<'a> = (&'a str, (u16, Vec<u8>), u16, ErrorCode);
    let cases: Vec<Case> = vec![
        (
            "unsigned",
            worker.send_raw("POST", &path, good.clone(), None, Some(run.to_hex())),
            401,
            ErrorCode::Unauthenticated,
        ),
        (
            "signed by another key",
            {
                let impostor = HandWorker {
                    identity: Identity::from_seed([8; 32]),
                    url: worker.url.clone(),
                    run: worker.run.clone(),
                };
                let forged = RequestAuth::sign(&impostor.identity, &run, "POST", &path, nonce, &good);
                let claimed = RequestAuth { worker: worker.identity.public_key(), ..forged }.to_header();
                worker.send_raw("POST", &path, good.clone(), Some(claimed), Some(run.to_hex()))
            },
            401,
            ErrorCode::BadSignature,
        ),
        (
            "signature over another body",
            worker.send_raw("POST", &path, worker.update(2e-3), Some(auth.clone()), Some(run.to_hex())),
            401,
            ErrorCode::BadSignature,
        ),
        (
            "wrong run",
            worker.send("POST", &path, good.clone(), worker.nonce(), Digest::of(b"another run")),
            400,
            ErrorCode::WrongRun,
        ),
        (
            "wrong round",
            worker.send("POST", &worker.submission_path(round + 5, &base), good.clone(), worker.nonce(), run),
            409,
            ErrorCode::WrongRound,
        ),
        (
            "stale base model",
            worker.send(
                "POST",
                &worker.submission_path(round, &Digest::of(b"old")),
                good.clone(),
                worker.nonce(),
                run,
            ),
            409,
            ErrorCode::StaleModel,
        ),
        (
            "wrong shape",
            worker.send("POST", &path, Codec::Int8.encode(&[0.0; 10]).unwrap(), worker.nonce(), run),
            422,
            ErrorCode::WrongShape,
        ),
        (
            "non-finite",
            {
                let mut poisoned = Codec::F32.encode(&vec![0.0; worker.run.parameters as usize]).unwrap();
                let last = poisoned.len() - 4;
                poisoned[last..].copy_from_slice(&f32::NAN.to_le_bytes());
                worker.send("POST", &path, poisoned, worker.nonce(), run)
            },
            422,
            ErrorCode::NonFinite,
        ),
        (
            "oversized",
            worker.send("POST", &path, vec![0u8; 2 * 1024 * 1024], worker.nonce(), run),
            413,
            ErrorCode::TooLarge,
        ),
        (
            "garbage body",
            worker.send("POST", &path, b"not an update".to_vec(), worker.nonce(), run),
            422,
            ErrorCode::WrongShape,
        ),
    ];
    for (name, response, status, code) in &cases {
        let (found_status, found_code, message) = refusal(response);
        assert_eq!((found_status, found_code), (*status, *code), "{name}: {message}");
        assert!(!message.is_empty(), "{name}: the refusal says why");
    }
    let unchanged = network.status().unwrap();
    assert_eq!(unchanged.workers, before.workers, "no refused submission changed any state");
    assert_eq!(unchanged.rounds, before.rounds);

    // The genuine submission still goes through, once; its replay does not.
    let accepted = worker.send_raw("POST", &path, good.clone(), Some(auth.clone()), Some(run.to_hex()));
    assert_eq!(accepted.0, 200, "{}", String::from_utf8_lossy(&accepted.1));
    let receipt: Signed<SubmissionReceipt> = serde_json::from_slice(&accepted.1).unwrap();
    assert!(receipt.verify(&worker.run.coordinator).is_ok(), "receipts are signed by the coordinator");
    assert_eq!(receipt.body.status, SubmissionStatus::Accepted);
    let replayed = refusal(&worker.send_raw("POST", &path, good.clone(), Some(auth), Some(run.to_hex())));
    assert_eq!((replayed.0, replayed.1), (409, ErrorCode::Replayed), "{}", replayed.2);
}

#[test]
fn a_submission_after_its_round_closed_is_recorded_as_late() {
    let mut network = Network::new(3, 10, "min_workers = 2\nquorum = 1\ndeadline_ms = 1500");
    network.start_coordinator();
    network.start_worker(0);
    let late = HandWorker::join(&network, 9);
    let view = late.view();
    let assignment = view.assignment.expect("round 0 includes the hand worker");
    // The real worker submits; the hand worker waits out the deadline.
    network.wait_for(30, "round 0 to close", |status| status.completed_rounds >= 1);
    let response = late.send(
        "POST",
        &late.submission_path(assignment.round, &assignment.base_model),
        late.update(1e-3),
        late.nonce(),
        late.run.run_id,
    );
    assert_eq!(response.0, 202, "{}", String::from_utf8_lossy(&response.1));
    let receipt: Signed<SubmissionReceipt> = serde_json::from_slice(&response.1).unwrap();
    assert_eq!(receipt.body.status, SubmissionStatus::Late);
    let status = network.status().unwrap();
    let me = status.workers.iter().find(|worker| worker.public_key == late.identity.public_key()).unwrap();
    assert_eq!((me.submissions_late, me.submissions_accepted), (1, 0), "kept, and not counted");
    assert_eq!(status.rounds[0].accepted, 1, "the late update was not aggregated");
}

#[test]
fn keygen_writes_a_private_key_and_prints_the_public_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("worker.key");
    let output = Command::new(binary()).args(["keygen", "--out"]).arg(&path).output().unwrap();
    assert!(output.status.success());
    let printed = String::from_utf8(output.stdout).unwrap();
    assert_eq!(printed.trim(), Identity::load(&path).unwrap().public_key().to_hex());
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    let again = Command::new(binary()).args(["keygen", "--out"]).arg(&path).output().unwrap();
    assert!(!again.status.success(), "an existing key is never overwritten");
}

#[test]
fn a_bad_config_is_refused_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("run.toml");
    std::fs::write(&config, "seed = 1\nrounds = 5\n[round]\nquorum = 0\n").unwrap();
    let output = run_coordinator_once(&config, dir.path());
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("round.quorum"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

fn run_coordinator_once(config: &Path, dir: &Path) -> Output {
    Command::new(binary())
        .args(["coordinator", "--listen", "127.0.0.1:0", "--config"])
        .arg(config)
        .arg("--state")
        .arg(dir.join("state"))
        .output()
        .unwrap()
}

#[test]
fn a_worker_gives_up_with_the_reason_when_the_coordinator_stays_away() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("worker.key");
    Identity::generate().unwrap().save(&key).unwrap();
    let url = format!("http://127.0.0.1:{}", free_port());
    let started = Instant::now();
    let output = Command::new(binary())
        .args(["worker", "--coordinator", &url, "--give-up-after", "2", "--key"])
        .arg(&key)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("gave up") && stderr.contains(&url), "{stderr}");
    assert!(stderr.contains("onnect"), "the last error is named: {stderr}");
    assert!(started.elapsed() < Duration::from_secs(30));
}
