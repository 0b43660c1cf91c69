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

/// When every test's run starts, by its virtual clock (in 2027).
const T0: u64 = 1_800_000_000_000;

/// A fixed audit master key, so the draws are the same in every run.
const AUDIT_SECRET: &str = "4242424242424242424242424242424242424242424242424242424242424242";

/// The network tests' run (seed 3, batch 32, the default checks and
/// aggregator), with more `[audit]` and `[round]` lines.
fn config(rounds: u64, inner_steps: u64, audit_probability: f64, audit: &str, round: &str) -> RunConfig {
    let stake = crowdtrain_protocol::audit::minimum_stake(inner_steps * 32, audit_probability).unwrap_or(0);
    RunConfig::parse(&format!(
        "rounds = {rounds}\n[training]\nseed = 3\ninner_steps = {inner_steps}\nbatch_size = 32\n\
         [data]\ndir = {SUBSET:?}\n[audit]\nprobability = {audit_probability}\nsegments = 4\nstake = {stake}\n{audit}\n\
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
        // The run id binds the coordinator's key and the run's start, and
        // the audit draws derive from it: both fixed, the draws are the
        // same in every run of a test.
        let coordinator = Identity::from_seed([0xc2; 32]);
        crate::files::save_identity(&coordinator, &dir.path().join("coordinator.key")).unwrap();
        // Virtual time moves only when the test moves it.
        let clock = Arc::new(VirtualClock::new(T0));
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
        assert_eq!(self.answer_segment(submitted, segment).unwrap().body.status, ReceiptStatus::Replaying);
    }

    /// Answers the submission's audit with the proofs of `segment`.
    fn answer_segment(&mut self, submitted: &Submitted, segment: u32) -> Result<Signed<Receipt>, Failure> {
        let answer = submitted.produced.answer(segment).expect("the segment is committed");
        let nonce = self.nonce();
        self.node().answer_audit(submitted.worker, nonce, submitted.round, postcard_bytes(&answer))
    }

    fn reveal(&mut self, submitted: &Submitted) {
        let nonce = self.nonce();
        let (worker, round, base) = (submitted.worker, submitted.round, submitted.base);
        let receipt =
            self.node().reveal(worker, nonce, round, base, submitted.produced.payload.clone()).unwrap();
        assert_eq!(receipt.body.status, ReceiptStatus::Accepted);
    }

    /// What an honest delegated auditor reports on `task`.
    fn replay(&self, task: &AuditTask) -> AuditReport {
        let node = self.node();
        let assignment = &task.assignment;
        let base = node.base_params(&node.lock(), &assignment.base_model).unwrap();
        let start =
            crowdtrain_train::TrainState::from_bytes(&task.start_state, &node.model.name(), base.len())
                .unwrap();
        let shards = node.dataset.shards(assignment).unwrap();
        replay_segment(
            node.model.as_ref(),
            &node.dataset,
            &shards,
            assignment,
            task.segment,
            start,
            &base,
            &task.residual_in,
        )
        .unwrap()
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
    /// Audits answered, their replays killed before any verdict, nothing
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
    if crash == CrashAt::AfterAnswers {
        harness.node().lose_replays.store(true, Ordering::SeqCst);
    }
    for submission in &submitted {
        harness.answer(submission);
    }
    if crash == CrashAt::AfterAnswers {
        for submission in submitted.iter().filter(|submission| submission.audit.is_some()) {
            let unjudged = harness.node().lock().machine.answered_audit(submission.round, submission.worker);
            assert!(unjudged.is_some(), "answered, not judged: the restart must replay the stored answer");
        }
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
    let mut harness = Harness::new(config(3, 12, 0.5, "", "min_workers = 2"), 2);
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
    let mut harness = Harness::new(config(4, 12, 0.5, "", "min_workers = 2"), 2);
    for crash in [CrashAt::AfterCommits, CrashAt::AfterAnswers, CrashAt::AfterOneReveal, CrashAt::Nowhere] {
        let audited = honest_round(&mut harness, crash);
        if crash == CrashAt::AfterAnswers {
            // (The draws are fixed.) The restarted coordinator replayed the
            // stored answer.
            assert!(audited > 0, "the crash comes between an answer and its verdict");
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
    let mut harness = Harness::new(config(1, 12, 0.0, "", "min_workers = 3\nquorum = 2"), 3);
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

#[test]
fn an_answer_whose_proofs_do_not_hold_fails_at_once_and_the_round_closes_without_it() {
    // Every submission audited by the coordinator; a quorum of two.
    let mut harness = Harness::new(config(1, 12, 1.0, "", "min_workers = 3\nquorum = 2"), 3);
    let workers = harness.workers.clone();
    let submitted: Vec<Submitted> = workers.iter().map(|&worker| harness.commit(worker)).collect();
    let cheat = &submitted[0];
    let drawn = cheat.audit.expect("every submission is audited");
    // It answers with another segment's proofs: no replay is needed to
    // refuse that.
    let other = if drawn == 1 { 2 } else { 1 };
    let receipt = harness.answer_segment(cheat, other).unwrap();
    assert_eq!(receipt.body.status, ReceiptStatus::Failed);
    let again = harness.answer_segment(cheat, drawn);
    assert_eq!(again.map(|_| ()).unwrap_err().code, ErrorCode::NotAudited, "judged: no second answer");
    for submission in &submitted[1..] {
        harness.answer(submission);
    }
    for submission in &submitted {
        let nonce = harness.nonce();
        let (worker, round, base) = (submission.worker, submission.round, submission.base);
        // The cheat's reveal is refused or recorded as rejected; either way
        // it does not count.
        let _ = harness.node().reveal(worker, nonce, round, base, submission.produced.payload.clone());
    }
    harness.closed(1);
    let status = harness.status();
    for worker in &status.workers {
        let cheated = worker.worker == cheat.worker;
        assert_eq!(worker.submissions_accepted, u64::from(!cheated), "{worker:?}");
        assert_eq!(worker.slashed > 0, cheated, "{worker:?}");
    }
    let reason = format!("answered segment {other}, but segment {drawn} was drawn");
    let database = harness.dir.path().join("coordinator.sqlite");
    let entries = crowdtrain_store::db::verify_ledger(&database, None).unwrap();
    assert!(
        entries.iter().any(|entry| matches!(&entry.event,
            Event::Audit { worker, verdict: Verdict::Failed(failed), sender: Some((sent, _)), .. }
                if *worker == cheat.worker && *failed == reason && *sent == cheat.worker)),
        "the refutation is recorded with its reason, sent by the worker's own request"
    );
}

#[test]
fn a_delegated_auditor_that_lies_is_slashed_and_the_worker_it_accused_is_cleared() {
    let mut harness = Harness::new(config(1, 12, 1.0, "auditors = \"workers\"", "min_workers = 3"), 3);
    let workers = harness.workers.clone();
    let submitted: Vec<Submitted> = workers.iter().map(|&worker| harness.commit(worker)).collect();
    // The commit phase is over: every audited worker answers, and its
    // auditor is told (all three share a class, so every audit is
    // delegated).
    for submission in &submitted {
        let segment =
            harness.node().view(Some(submission.worker)).body.audit.expect("every submission is audited");
        let receipt = harness.answer_segment(submission, segment).unwrap();
        assert_eq!(receipt.body.status, ReceiptStatus::Delegated);
    }
    // The first auditor with a task lies, about every task it has.
    let mut liar = None;
    let mut accused = None;
    // An auditor sees one task at a time: report until none is left.
    while let Some((auditor, round, task)) = workers.iter().find_map(|&auditor| {
        let view = harness.node().view(Some(auditor)).body;
        Some((auditor, view.round?, view.audit_task?))
    }) {
        let bytes = harness.node().audit_task(auditor, round, task.worker).unwrap();
        let signed: Signed<AuditTask> = postcard::from_bytes(&bytes).unwrap();
        let honest = harness.replay(&signed.body);
        let lying = *liar.get_or_insert(auditor) == auditor;
        let report = if lying {
            accused.get_or_insert(task.worker);
            AuditReport { end_hash: Digest::of(b"a state the segment never reaches"), ..honest }
        } else {
            honest
        };
        let nonce = harness.nonce();
        let receipt = harness
            .node()
            .audit_report(auditor, nonce, round, task.worker, &postcard_bytes(&report))
            .unwrap()
            .body;
        let expected = if lying { ReceiptStatus::Rechecked } else { ReceiptStatus::Agreed };
        assert_eq!(receipt.status, expected, "{auditor} reporting on {}", task.worker);
    }
    let (liar, accused) = (liar.expect("every audit is delegated"), accused.unwrap());
    for submission in &submitted {
        harness.reveal(submission);
    }
    harness.closed(1);
    let status = harness.status();
    for worker in &status.workers {
        assert_eq!(worker.submissions_accepted, 1, "every update was honest: {worker:?}");
        assert_eq!(worker.slashed > 0, worker.worker == liar, "only the liar pays: {worker:?}");
    }
    let database = harness.dir.path().join("coordinator.sqlite");
    let entries = crowdtrain_store::db::verify_ledger(&database, None).unwrap();
    let slashed: Vec<&Event> = entries
        .iter()
        .map(|entry| &entry.event)
        .filter(|event| matches!(event, Event::AuditorSlashed { .. }))
        .collect();
    assert!(
        matches!(slashed[..], [Event::AuditorSlashed { auditor, audited, .. }] if *auditor == liar && *audited == accused),
        "{slashed:?}"
    );
    assert!(
        entries.iter().any(|entry| matches!(&entry.event,
            Event::Audit { worker, verdict: Verdict::Passed, judged_by: None, .. } if *worker == accused)),
        "the accused worker is cleared by the coordinator's own replay"
    );
}
