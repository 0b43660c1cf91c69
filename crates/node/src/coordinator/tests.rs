//! The coordinator driven in process on virtual time: the node's own
//! methods (what the HTTP handlers call), a real SQLite store and real
//! checkpoints in a temporary directory, real training of the workers'
//! updates and real audit replays, but no sockets, no processes and no
//! waiting for deadlines (the [`VirtualClock`] is moved past them). A
//! crash is the node dropped and opened again from the same directory.
//!
//! The network tests (`crates/cli/tests/network.rs`) check the same
//! outcome through real processes: the final state hash of honest workers
//! is the simulation's, whatever was audited and wherever the coordinator
//! stopped.

use std::sync::Weak;
use std::time::Duration;

use crowdtrain_data::DataSource;
use crowdtrain_protocol::{Assignment, Identity};
use crowdtrain_train::diloco::{DilocoConfig, simulate};

use super::*;
use crate::worker::Produced;
use crate::worker::behavior::{Work, produce};

/// The bundled Fashion-MNIST subset the network tests train on.
const SUBSET: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../data/assets/fashion-mnist-subset");

/// A fixed audit master key, so the draws are the same in every run.
const AUDIT_SECRET: &str = "4242424242424242424242424242424242424242424242424242424242424242";

/// The network tests' run (seed 3, batch 32, the default checks and
/// aggregator), with `extra` `[round]` lines.
fn config(rounds: u64, inner_steps: u64, audit_probability: f64, round: &str) -> RunConfig {
    let stake = crowdtrain_protocol::audit::minimum_stake(inner_steps * 32, audit_probability).unwrap_or(0);
    RunConfig::parse(&format!(
        "rounds = {rounds}\n[training]\nseed = 3\ninner_steps = {inner_steps}\nbatch_size = 32\n\
         [data]\ndir = {SUBSET:?}\n[audit]\nprobability = {audit_probability}\nsegments = 4\nstake = {stake}\n\
         [round]\ndeadline_ms = 60000\n{round}\n[admission]\nmode = \"open\"\n"
    ))
    .expect("the test's run configuration is valid")
}

/// What `sim diloco` gives for `workers` honest workers on the same run.
fn simulated_state_hash(workers: usize, rounds: u64, inner_steps: u64) -> String {
    let config = DilocoConfig {
        recipe: crowdtrain_protocol::TrainingRecipe {
            inner_steps,
            batch_size: 32,
            ..crowdtrain_protocol::TrainingRecipe::with_seed(3)
        },
        workers,
        rounds,
        outer: Default::default(),
    };
    let dataset = DataSource::Directory(SUBSET.into()).load().unwrap();
    let mut defense = ModelDefense::new(Default::default(), Default::default());
    simulate(&config, &dataset, &mut defense, |_| {}).unwrap().diloco_state_hash.to_hex()
}

/// A coordinator's state directory, its virtual clock and the node open
/// on it, with the workers' keys.
struct Harness {
    dir: tempfile::TempDir,
    config: RunConfig,
    clock: Arc<VirtualClock>,
    node: Option<Arc<Node>>,
    keys: Vec<Identity>,
    workers: Vec<WorkerId>,
    /// The last nonce sent (microseconds, like a worker's), by any key.
    nonce: u64,
}

/// One worker's work in a round, from its assignment to its receipt.
struct Submitted {
    worker: WorkerId,
    round: RoundId,
    base: Digest,
    produced: Produced,
    audit: Option<u32>,
}

impl Harness {
    fn new(config: RunConfig, workers: u8) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("audit.secret"), AUDIT_SECRET).unwrap();
        // Virtual time starts at the wall clock's (reads are checked to be
        // within minutes of it), then moves only when the test moves it.
        let clock = Arc::new(VirtualClock::new(now_unix_ms()));
        let keys = (0..workers).map(|index| Identity::from_seed([index + 1; 32])).collect();
        let mut harness = Self { dir, config, clock, node: None, keys, workers: Vec::new(), nonce: 0 };
        harness.open();
        for index in 0..harness.keys.len() {
            let (key, nonce) = (harness.keys[index].public_key(), harness.nonce());
            let registered = harness.node().register(key, nonce, "avx2-fma", None, None).unwrap();
            harness.workers.push(registered.body.worker);
        }
        harness
    }

    fn open(&mut self) {
        let clock: Arc<dyn Clock> = self.clock.clone();
        self.node = Some(Node::open_with_clock(self.config.clone(), self.dir.path(), clock).unwrap());
    }

    fn node(&self) -> &Arc<Node> {
        self.node.as_ref().expect("the node is open")
    }

    /// A fresh nonce by the virtual clock, above every one sent before.
    fn nonce(&mut self) -> u64 {
        self.nonce = (self.clock.now_unix_ms() * 1000).max(self.nonce + 1);
        self.nonce
    }

    /// Moves virtual time on.
    fn wait(&self, milliseconds: u64) {
        self.clock.advance(milliseconds);
    }

    /// The coordinator dies: every thread of the node ends and nothing in
    /// memory survives; it is opened again from its directory.
    fn crash(&mut self) {
        let node: Weak<Node> = Arc::downgrade(&self.node.take().expect("the node is open"));
        // Threads of the node (a replay, an evaluation) hold it only while
        // they work; they never outlive it.
        wait_until("the node's threads let go of it", || node.strong_count() == 0);
        self.open();
    }

    /// The round `worker` is assigned now, and its assignment.
    fn assignment(&self, worker: WorkerId) -> (RoundId, Assignment) {
        let view = self.node().view(Some(worker)).body;
        assert!(!view.provisional, "the test trains only on settled rounds");
        (view.round.expect("a round is open"), view.assignment.expect("the worker is a participant"))
    }

    /// `worker` trains its assignment honestly, as a worker process does.
    fn train(&self, worker: WorkerId) -> (RoundId, Assignment, Produced) {
        let (round, assignment) = self.assignment(worker);
        let node = self.node();
        let params = node.base_params(&node.lock(), &assignment.base_model).unwrap();
        let shards = node.dataset.shards(&assignment).unwrap();
        let steps = AtomicU64::new(0);
        let work = Work {
            model: node.model.as_ref(),
            assignment: &assignment,
            params: &params,
            data: &node.dataset,
            shards: &shards,
            flipped: None,
            steps_done: &steps,
            residual: &[],
        };
        let produced = produce(crate::worker::Behavior::Honest, &work, None).unwrap();
        (round, assignment, produced)
    }

    /// `worker` trains and commits: its receipt says whether it is audited.
    fn commit(&mut self, worker: WorkerId) -> Submitted {
        let (round, assignment, produced) = self.train(worker);
        let shard = Shard { slot: assignment.slot, slots: assignment.slots };
        let (base, nonce) = (assignment.base_model, self.nonce());
        let receipt =
            self.node().commit(worker, nonce, round, base, Some(shard), produced.commitment()).unwrap().body;
        assert_eq!(receipt.status, ReceiptStatus::Accepted);
        Submitted { worker, round, base, produced, audit: receipt.audit }
    }

    /// The submission's audit answer, if drawn: the coordinator replays it
    /// on a thread of its own.
    fn answer(&mut self, submitted: &Submitted) {
        let Some(segment) = submitted.audit else { return };
        let answer = submitted.produced.answer(segment).expect("a drawn segment is committed");
        let nonce = self.nonce();
        let receipt = self
            .node()
            .answer_audit(submitted.worker, nonce, submitted.round, postcard_bytes(&answer))
            .unwrap()
            .body;
        assert_eq!(receipt.status, ReceiptStatus::Replaying);
    }

    fn reveal(&mut self, submitted: &Submitted) {
        let nonce = self.nonce();
        let (worker, round, base) = (submitted.worker, submitted.round, submitted.base);
        let receipt =
            self.node().reveal(worker, nonce, round, base, submitted.produced.payload.clone()).unwrap();
        assert_eq!(receipt.body.status, ReceiptStatus::Accepted);
    }

    fn completed_rounds(&self) -> u64 {
        self.node().lock().machine.completed_rounds()
    }

    /// Waits (in real time: replays run on threads) until `rounds` rounds
    /// have closed.
    fn closed(&self, rounds: u64) {
        wait_until("the round to close", || self.completed_rounds() >= rounds);
    }

    fn status(&self) -> RunStatus {
        self.node().status(None, 100).unwrap()
    }
}

/// Polls `done` every 5 ms of real time, for at most a minute.
fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < Duration::from_secs(60), "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Where a round of honest work is interrupted by a crash of the
/// coordinator.
#[derive(Debug, Clone, Copy, PartialEq)]
enum CrashAt {
    Nowhere,
    /// Every commitment in, nothing revealed.
    AfterCommits,
    /// Audits answered (their replays perhaps still running), nothing
    /// revealed.
    AfterAnswers,
    /// One reveal in, the other not.
    AfterOneReveal,
}

/// One round of every worker's honest work, with a crash at `crash`;
/// returns how many of its submissions were audited.
fn honest_round(harness: &mut Harness, crash: CrashAt) -> usize {
    let before = harness.completed_rounds();
    let workers = harness.workers.clone();
    let submitted: Vec<Submitted> = workers
        .iter()
        .map(|&worker| {
            harness.wait(200);
            harness.commit(worker)
        })
        .collect();
    if crash == CrashAt::AfterCommits {
        harness.crash();
    }
    for submission in &submitted {
        harness.answer(submission);
    }
    if crash == CrashAt::AfterAnswers {
        harness.crash();
    }
    for (index, submission) in submitted.iter().enumerate() {
        harness.wait(100);
        harness.reveal(submission);
        if index == 0 && crash == CrashAt::AfterOneReveal {
            harness.crash();
        }
    }
    harness.closed(before + 1);
    submitted.iter().filter(|submission| submission.audit.is_some()).count()
}

#[test]
fn honest_workers_in_process_reproduce_the_simulation_bit_for_bit_with_audits() {
    let mut harness = Harness::new(config(3, 12, 0.5, "min_workers = 2"), 2);
    let mut audited = 0;
    for _ in 0..3 {
        let round = harness.completed_rounds();
        let drawn = honest_round(&mut harness, CrashAt::Nowhere);
        let node = harness.node();
        let recorded = node.lock().store.round_records_page(round, 1).unwrap()[0].audited;
        assert_eq!(recorded as usize, drawn, "round {round}: every drawn audit is recorded");
        audited += drawn;
    }
    let status = harness.status();
    assert_eq!(status.phase, Phase::Finished);
    assert_eq!(status.completed_rounds, 3);
    assert_eq!(status.state_hash, simulated_state_hash(2, 3, 12), "audits change nothing for honest workers");
    assert!(audited > 0, "some submissions were audited (the draws are fixed by the test's secret)");
    assert!(status.workers.iter().all(|worker| worker.submissions_accepted == 3 && worker.slashed == 0));
}

#[test]
fn a_coordinator_that_crashes_anywhere_in_a_round_resumes_and_ends_bit_identical() {
    let mut harness = Harness::new(config(4, 12, 0.5, "min_workers = 2"), 2);
    for crash in [CrashAt::AfterCommits, CrashAt::AfterAnswers, CrashAt::AfterOneReveal, CrashAt::Nowhere] {
        let audited = honest_round(&mut harness, crash);
        if crash == CrashAt::AfterAnswers {
            // (Fixed by the test's secret.) The restarted coordinator
            // replays the stored answer, unless the replay finished first.
            assert_eq!(audited, 1, "the crash comes between an answer and its verdict");
        }
        if crash == CrashAt::Nowhere {
            // Between rounds too.
            harness.crash();
        }
    }
    let status = harness.status();
    assert_eq!(status.phase, Phase::Finished);
    assert_eq!(status.completed_rounds, 4);
    assert_eq!(status.state_hash, simulated_state_hash(2, 4, 12), "same membership, same bits");
    assert!(status.workers.iter().all(|worker| worker.submissions_accepted == 4 && worker.slashed == 0));
    let database = harness.dir.path().join("coordinator.sqlite");
    let entries = crowdtrain_store::db::verify_ledger(&database, Some(harness.node().public_key()))
        .expect("the ledger survives every crash");
    let closed = entries.iter().filter(|entry| matches!(entry.event, Event::RoundClosed { .. })).count();
    assert_eq!(closed, 4, "each round closed once, whatever was replayed after a crash");
}

#[test]
fn deadlines_pass_on_virtual_time_and_a_silent_worker_is_left_out() {
    // Three participants, a quorum of two: the third never commits.
    let mut harness = Harness::new(config(1, 12, 0.0, "min_workers = 3\nquorum = 2"), 3);
    let (silent, honest) = (harness.workers[2], harness.workers[..2].to_vec());
    let submitted: Vec<Submitted> = honest.iter().map(|&worker| harness.commit(worker)).collect();
    assert_eq!(harness.status().phase, Phase::Committing, "the third participant has not committed");
    harness.node().tick().unwrap();
    assert_eq!(harness.status().phase, Phase::Committing, "no time has passed: no deadline");
    // Past the minute's deadline, by the virtual clock only.
    harness.wait(60_001);
    harness.node().tick().unwrap();
    assert_eq!(harness.status().phase, Phase::Revealing, "the commit deadline passed with a quorum");
    for submission in &submitted {
        harness.reveal(submission);
    }
    harness.closed(1);
    let status = harness.status();
    assert_eq!(status.phase, Phase::Finished, "the round closed on the two honest updates");
    for worker in &status.workers {
        let expected = if worker.worker == silent { 0 } else { 1 };
        assert_eq!(worker.submissions_accepted, expected, "{worker:?}");
        assert_eq!(worker.slashed, 0, "missing a round is not cheating: {worker:?}");
    }
}
