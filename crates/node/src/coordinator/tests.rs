//! The coordinator driven in process on virtual time: the node's own
//! methods (what the HTTP handlers call), a real SQLite store and real
//! checkpoints in a temporary directory, real training of the workers'
//! updates and real audit replays, but no sockets, no processes and no
//! waiting for deadlines (the [`VirtualClock`] is moved past them). A
//! crash is the node dropped and opened again from the same directory.
//! Where the order of events matters (a round opened ahead of its
//! verdicts), the node's audit replays are held until the test runs them.
//! The last test opens the [`Driver`] alone on the node's state
//! ([`Driver::open`], again after a crash) and drives it with a [`Shell`]
//! that does everything on the test's thread.
//!
//! The network tests (`crates/cli/tests/network.rs`) check the same
//! outcome through real processes: the final state hash of honest workers
//! is the simulation's, whatever was audited and wherever the coordinator
//! stopped.

use std::sync::Weak;
use std::time::Duration;

use crowdtrain_data::DataSource;
use crowdtrain_protocol::wire::AuditTask;
use crowdtrain_protocol::{Assignment, Identity};
use crowdtrain_train::diloco::{DilocoConfig, apply_broadcast, simulate};
use crowdtrain_train::{Broadcast, Codec, Model, Nesterov};

use super::*;
use crate::AssignedWork;
use crate::data::{RunData, Shards};
use crate::replay::replay_segment;
use crate::worker::Behavior;
use crate::worker::Produced;
use crate::worker::behavior::{Work, produce};
use crowdtrain_protocol::Verdict;

/// The bundled Fashion-MNIST subset the network tests train on.
const SUBSET: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../data/assets/fashion-mnist-subset");

/// When every test's run starts, by its virtual clock (in 2027).
const T0: u64 = 1_800_000_000_000;

/// A fixed audit master key, so the draws are the same in every run.
const AUDIT_SECRET: &str = "4242424242424242424242424242424242424242424242424242424242424242";

/// The network tests' run (seed 3, batch 32, the default checks and
/// aggregator), with more `[audit]` and `[round]` lines.
fn config(rounds: u64, inner_steps: u64, audit_probability: f64, audit: &str, round: &str) -> RunConfig {
    config_with(rounds, inner_steps, audit_probability, audit, round, "")
}

/// [`config`] with more sections (`[outer]`) at the end.
fn config_with(
    rounds: u64,
    inner_steps: u64,
    audit_probability: f64,
    audit: &str,
    round: &str,
    sections: &str,
) -> RunConfig {
    let stake = crowdtrain_protocol::audit::minimum_stake(inner_steps * 32, audit_probability).unwrap_or(0);
    RunConfig::parse(&format!(
        "rounds = {rounds}\n[training]\nseed = 3\ninner_steps = {inner_steps}\nbatch_size = 32\n\
         [data]\ndir = {SUBSET:?}\n[audit]\nprobability = {audit_probability}\nsegments = 4\nstake = {stake}\n{audit}\n\
         [round]\ndeadline_ms = 60000\n{round}\n[admission]\nmode = \"open\"\n{sections}"
    ))
    .expect("the test's run configuration is valid")
}

/// What `sim diloco` gives for `workers` honest workers on the same run.
fn simulated_state_hash(workers: usize, rounds: u64, inner_steps: u64) -> String {
    simulated_state_hash_of(workers, rounds, inner_steps, Default::default())
}

/// [`simulated_state_hash`] with the outer optimizer `outer` (a delayed
/// outer update, a compressed broadcast).
fn simulated_state_hash_of(workers: usize, rounds: u64, inner_steps: u64, outer: Nesterov) -> String {
    let config = DilocoConfig {
        recipe: crowdtrain_protocol::TrainingRecipe {
            inner_steps,
            batch_size: 32,
            ..crowdtrain_protocol::TrainingRecipe::with_seed(3)
        },
        workers,
        rounds,
        outer,
        inner_lr: None,
    };
    let dataset = DataSource::Directory(SUBSET.into()).load().unwrap();
    let mut defense = crowdtrain_defense::ModelDefense::new(Default::default(), Default::default());
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

/// One worker's work in a round, trained and not yet sent.
struct Trained {
    round: RoundId,
    assignment: Assignment,
    produced: Produced,
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

    /// The round `worker` sees now, settled (not opened ahead of its
    /// predecessor's verdicts).
    fn settled_view(&self, worker: WorkerId) -> RoundView {
        let view = self.node().view(Some(worker)).body;
        assert!(!view.provisional, "the test trains only on settled rounds here");
        view
    }

    /// `worker` trains its assignment honestly, as a worker process does.
    fn train(&self, worker: WorkerId) -> Trained {
        self.train_view(&self.settled_view(worker), Behavior::Honest)
    }

    /// Trains the assignment `view` shows (as `behavior` does).
    fn train_view(&self, view: &RoundView, behavior: Behavior) -> Trained {
        let round = view.round.expect("a round is open");
        let assignment = view.assignment.clone().expect("the worker is a participant");
        let node = self.node();
        let params = self.base_of(&assignment);
        let produced = train(node.model.as_ref(), &node.dataset, &params, &assignment, behavior);
        Trained { round, assignment, produced }
    }

    /// The parameters `assignment` trains from, downloaded as a worker
    /// does: the newest model (a round opened ahead trains on one not yet
    /// recorded) is served from memory.
    fn base_of(&self, assignment: &Assignment) -> Vec<f32> {
        let node = self.node();
        let bytes = node.model_bytes(&assignment.base_model).unwrap();
        let (name, layout) = (node.model.name(), node.model.layout());
        checkpoint::decode(&bytes, CheckpointKind::Params, &name, layout).unwrap()
    }

    /// `worker` trains and commits: its receipt says whether it is audited.
    fn commit(&mut self, worker: WorkerId) -> Submitted {
        let trained = self.train(worker);
        self.commit_trained(trained).unwrap()
    }

    /// Sends the commitment to `trained`; an accepted one is returned with
    /// whether it is audited.
    fn commit_trained(&mut self, trained: Trained) -> Result<Submitted, Failure> {
        let Trained { round, assignment, produced } = trained;
        let shard = Shard { slot: assignment.slot, slots: assignment.slots };
        let (worker, base, nonce) = (assignment.worker, assignment.base_model, self.nonce());
        let receipt =
            self.node().commit(worker, nonce, round, base, Some(shard), bare(produced.commitment()))?.body;
        assert_eq!(receipt.status, ReceiptStatus::Accepted);
        Ok(Submitted { worker, round, base, produced, audit: receipt.audit })
    }

    /// From now on the node's audit replays wait until the test runs them
    /// ([`Harness::run_held_replays`]), or die with the node.
    fn hold_replays(&self) {
        *self.node().held_replays.lock().unwrap() = Some(Vec::new());
    }

    /// Runs the held replays, in the order they were asked for, on this
    /// thread; returns how many ran.
    fn run_held_replays(&self) -> usize {
        let node = self.node();
        let mut ran = 0;
        loop {
            let held = node.held_replays.lock().unwrap().as_mut().map(std::mem::take).unwrap_or_default();
            if held.is_empty() {
                return ran;
            }
            for replay in held {
                node.replay(replay);
                ran += 1;
            }
        }
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
        let base = node.lock().driver.training.base_params(&assignment.base_model).unwrap();
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
        self.node().lock().driver.machine.completed_rounds()
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

/// `assignment`'s work from `params`, done as a worker that behaves as
/// `behavior` does it.
fn train(
    model: &dyn Model,
    data: &RunData,
    params: &[f32],
    assignment: &Assignment,
    behavior: Behavior,
) -> Produced {
    train_on(model, data, &data.shards(assignment).unwrap(), params, assignment, behavior)
}

/// [`train`] on the round's `shards` as given.
fn train_on(
    model: &dyn Model,
    data: &RunData,
    shards: &Shards,
    params: &[f32],
    assignment: &Assignment,
    behavior: Behavior,
) -> Produced {
    let steps = AtomicU64::new(0);
    let work =
        Work { model, assignment, params, data, shards, flipped: None, steps_done: &steps, residual: &[] };
    produce(behavior, &work, None).unwrap()
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
        harness.hold_replays();
    }
    for submission in &submitted {
        harness.answer(submission);
    }
    if crash == CrashAt::AfterAnswers {
        for submission in submitted.iter().filter(|submission| submission.audit.is_some()) {
            let unjudged =
                harness.node().lock().driver.machine.answered_audit(submission.round, submission.worker);
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
        let recorded = node.lock().driver.store.round_records_page(round, 1).unwrap()[0].audited;
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
    // Every submission audited: whatever the draws, the crash after the
    // answers comes before their verdicts.
    let mut harness = Harness::new(config(4, 12, 1.0, "", "min_workers = 2"), 2);
    for crash in [CrashAt::AfterCommits, CrashAt::AfterAnswers, CrashAt::AfterOneReveal, CrashAt::Nowhere] {
        let audited = honest_round(&mut harness, crash);
        if crash == CrashAt::AfterAnswers {
            // The restarted coordinator replayed the stored answers.
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

/// Every worker answers its audit (if drawn), then reveals.
fn answer_and_reveal(harness: &mut Harness, submitted: &[Submitted]) {
    for submission in submitted {
        harness.answer(submission);
    }
    for submission in submitted {
        harness.wait(100);
        harness.reveal(submission);
    }
}

/// The round closes records of the run's ledger, in order.
fn closed_rounds(harness: &Harness) -> Vec<(RoundId, Vec<WorkerId>, Digest)> {
    let database = harness.dir.path().join("coordinator.sqlite");
    let entries = crowdtrain_store::db::verify_ledger(&database, Some(harness.node().public_key())).unwrap();
    entries
        .into_iter()
        .filter_map(|entry| match entry.event {
            Event::RoundClosed { round, accepted, result_model, .. } => Some((round, accepted, result_model)),
            _ => None,
        })
        .collect()
}

#[test]
fn a_round_opens_ahead_of_its_verdicts_and_is_adopted_unchanged_when_they_pass() {
    // Every submission audited by the coordinator; the replays wait until
    // the test runs them, so the bet is made every time, not when a replay
    // happens to be slow.
    let mut harness = Harness::new(config(2, 12, 1.0, "", "min_workers = 2"), 2);
    harness.hold_replays();
    let workers = harness.workers.clone();
    let submitted: Vec<Submitted> = workers.iter().map(|&worker| harness.commit(worker)).collect();
    answer_and_reveal(&mut harness, &submitted);
    // All round 0 awaits is its verdicts: the next round opens on the model
    // they give if they pass, served from memory.
    let ahead = harness.node().view(Some(workers[0])).body;
    assert!(ahead.provisional, "round 1 is open ahead of round 0's verdicts");
    assert_eq!((ahead.round, harness.completed_rounds()), (Some(1), 0));
    let status = harness.status();
    assert_eq!((status.opened_ahead, status.withdrawn_ahead), (1, 0));
    assert_ne!(ahead.model, status.model, "round 1 trains on the model round 0 gives, not yet recorded");
    assert!(harness.node().model_bytes(&ahead.model).is_ok(), "the bet's model is served");
    // A worker trains on it at once; its commitment waits for the verdicts.
    let early = harness.train_view(&ahead, Behavior::Honest);
    let nonce = harness.nonce();
    let shard = Some(early.assignment.shard());
    let commitment = early.produced.commitment();
    let refused = harness.node().commit(workers[0], nonce, 1, ahead.model, shard, bare(commitment));
    assert_eq!(refused.map(|_| ()).unwrap_err().code, ErrorCode::TooEarly);
    assert_eq!(harness.run_held_replays(), 2);
    // The verdicts passed: round 0 closed with the aggregate computed for
    // the bet, and round 1 is the provisional one, unchanged.
    assert_eq!(harness.completed_rounds(), 1);
    let settled = harness.settled_view(workers[0]);
    assert_eq!((settled.round, settled.model), (Some(1), ahead.model), "adopted unchanged");
    assert_eq!(settled.assignment, ahead.assignment, "the same participants, slots and model");
    assert_eq!(closed_rounds(&harness)[0].2, ahead.model, "the bet's model is the recorded one");
    // What was trained ahead counts.
    let mut submitted = vec![harness.commit_trained(early).unwrap()];
    submitted.push(harness.commit(workers[1]));
    answer_and_reveal(&mut harness, &submitted);
    // The last round opens nothing ahead: its verdicts close the run.
    assert_eq!(harness.run_held_replays(), 2);
    harness.closed(2);
    let status = harness.status();
    assert_eq!((status.phase, status.opened_ahead, status.withdrawn_ahead), (Phase::Finished, 1, 0));
    assert_eq!(status.state_hash, simulated_state_hash(2, 2, 12), "betting changes no bit");
}

/// Round 0 of a run with two honest workers and one that trains on
/// another's shard (its proofs hold; its replay cannot), every submission
/// audited by the coordinator. With `bet` the replays run after every
/// reveal is in, so the next round opens ahead on all three updates first;
/// without, each runs as soon as its answer is in, before the reveals, and
/// nothing is bet. Returns the harness and the update the first honest
/// worker trained on the round opened ahead, if any.
fn first_round_with_a_caught_cheat(bet: bool) -> (Harness, Option<Trained>) {
    let mut harness = Harness::new(config(2, 12, 1.0, "", "min_workers = 3\nquorum = 2"), 3);
    harness.hold_replays();
    let workers = harness.workers.clone();
    let mut submitted: Vec<Submitted> = workers[..2].iter().map(|&worker| harness.commit(worker)).collect();
    let cheat = harness.train_view(&harness.settled_view(workers[2]), Behavior::WrongData);
    submitted.push(harness.commit_trained(cheat).unwrap());
    for submission in &submitted {
        harness.answer(submission);
        if !bet {
            harness.run_held_replays();
        }
    }
    for submission in &submitted {
        let nonce = harness.nonce();
        let (worker, round, base) = (submission.worker, submission.round, submission.base);
        // The cheat's reveal, after its failed verdict, is refused; either
        // way it never counts.
        let _ = harness.node().reveal(worker, nonce, round, base, submission.produced.payload.clone());
    }
    let mut trained_ahead = None;
    if bet {
        let ahead = harness.node().view(Some(workers[0])).body;
        assert!(ahead.provisional, "the next round opened ahead, betting on all three updates");
        trained_ahead = Some(harness.train_view(&ahead, Behavior::Honest));
        assert_eq!(harness.run_held_replays(), 3);
    }
    harness.closed(1);
    (harness, trained_ahead)
}

#[test]
fn a_round_opened_ahead_of_a_failing_audit_is_withdrawn_and_the_run_is_as_if_nothing_was_bet() {
    let (harness, trained_ahead) = first_round_with_a_caught_cheat(true);
    let (waited, _) = first_round_with_a_caught_cheat(false);
    let cheat = harness.workers[2];
    let status = harness.status();
    assert_eq!((status.opened_ahead, status.withdrawn_ahead), (1, 1), "the bet on the cheat was withdrawn");
    assert_eq!(waited.status().opened_ahead, 0, "nothing was bet without the reveals in first");
    // The round closed without the cheat, exactly as if nobody had bet.
    let closed = closed_rounds(&harness);
    assert_eq!(closed, closed_rounds(&waited), "the same round, model and all");
    assert_eq!(closed[0].1, harness.workers[..2].to_vec(), "only the honest updates");
    assert_eq!(status.state_hash, waited.status().state_hash);
    let slashed: Vec<WorkerId> =
        status.workers.iter().filter(|worker| worker.slashed > 0).map(|worker| worker.worker).collect();
    assert_eq!(slashed, vec![cheat], "the cheat, and only the cheat, is slashed");
    // Round 1 opened again on the model that counts; what was trained on
    // the withdrawn one is stale, and the worker trains again.
    let trained_ahead = trained_ahead.expect("a worker trained on the round opened ahead");
    let view = harness.settled_view(harness.workers[0]);
    assert_eq!((view.round, view.model), (Some(1), closed[0].2));
    assert_ne!(
        trained_ahead.assignment.base_model, view.model,
        "the withdrawn model is not the one that counts"
    );
    let mut harness = harness;
    let stale = harness.commit_trained(trained_ahead);
    assert_eq!(stale.map(|_| ()).unwrap_err().code, ErrorCode::StaleModel);
}

/// Each round draws its slot-to-shard mapping afresh
/// (`crowdtrain_data::round_shard`): the worker trains, and the
/// coordinator's audit replays, the shard the slot meets in that round.
/// Every submission audited, three workers: in the first round the
/// rotation moves a slot off its own shard, the worker in that slot trains
/// the slot's shard of the fixed mapping instead (what a build without the
/// rotation would do; its proofs hold) and fails its replay, while the
/// honest workers, moved too, pass theirs.
#[test]
fn a_worker_trains_and_its_audit_replays_the_shard_its_slot_meets_that_round() {
    let mut harness = Harness::new(config(2, 12, 1.0, "", "min_workers = 3\nquorum = 2"), 3);
    harness.hold_replays();
    let workers = harness.workers.clone();
    for round in 0..2 {
        let views: Vec<RoundView> = workers.iter().map(|&worker| harness.settled_view(worker)).collect();
        let assignments: Vec<Assignment> =
            views.iter().map(|view| view.assignment.clone().unwrap()).collect();
        let moved: Vec<usize> = (0..workers.len())
            .filter(|&index| {
                assignments[index].shard_of(assignments[index].slot) != assignments[index].slot as usize
            })
            .collect();
        // Within a block of three rounds each slot meets its own shard once:
        // at most one of two rounds leaves every slot in place.
        let Some(&cheat) = moved.first() else {
            assert_eq!(round, 0, "two rounds in a row without rotation");
            let submitted: Vec<Submitted> = workers.iter().map(|&worker| harness.commit(worker)).collect();
            for submission in &submitted {
                harness.answer(submission);
                harness.run_held_replays();
            }
            for submission in &submitted {
                harness.reveal(submission);
            }
            harness.closed(1);
            continue;
        };
        let mut submitted = Vec::new();
        for (index, view) in views.iter().enumerate() {
            let trained = if index == cheat {
                fixed_mapping(&harness, view)
            } else {
                harness.train_view(view, Behavior::Honest)
            };
            submitted.push(harness.commit_trained(trained).unwrap());
        }
        for submission in &submitted {
            harness.answer(submission);
            harness.run_held_replays();
        }
        for submission in &submitted {
            let nonce = harness.nonce();
            let (worker, round, base) = (submission.worker, submission.round, submission.base);
            let _ = harness.node().reveal(worker, nonce, round, base, submission.produced.payload.clone());
        }
        harness.closed(round + 1);
        let status = harness.status();
        for (index, &worker) in workers.iter().enumerate() {
            let record = status.workers.iter().find(|record| record.worker == worker).unwrap();
            assert_eq!(record.slashed > 0, index == cheat, "{record:?}");
            assert_eq!(record.submissions_accepted, round + u64::from(index != cheat), "{record:?}");
        }
        assert!(moved.len() >= 2, "a permutation that moves one slot moves two");
        let closed = closed_rounds(&harness);
        let honest: Vec<WorkerId> = workers
            .iter()
            .enumerate()
            .filter(|&(index, _)| index != cheat)
            .map(|(_, &worker)| worker)
            .collect();
        assert_eq!(closed[round as usize].1, honest, "only the rotated work counts");
        return;
    }
    panic!("no round moved a slot off its shard");
}

/// `view`'s assignment trained on the shard of the fixed mapping (slot `s`
/// on shard `s`): the round's shards reordered so that the rotation lands
/// the slot on it.
fn fixed_mapping(harness: &Harness, view: &RoundView) -> Trained {
    let round = view.round.expect("a round is open");
    let assignment = view.assignment.clone().expect("the worker is a participant");
    let node = harness.node();
    let Shards::Images(shards) = node.dataset.shards(&assignment).unwrap() else { panic!("images") };
    let mut reordered = shards.clone();
    for slot in 0..assignment.slots {
        reordered[assignment.shard_of(slot)] = shards[slot as usize].clone();
    }
    let params = harness.base_of(&assignment);
    let shards = Shards::Images(reordered);
    let produced =
        train_on(node.model.as_ref(), &node.dataset, &shards, &params, &assignment, Behavior::Honest);
    Trained { round, assignment, produced }
}

#[test]
fn under_a_delayed_outer_update_two_rounds_are_live_and_the_run_ends_on_the_delayed_simulation() {
    // Rounds 0 and 1 train from the initial model, round 2 from round 0's.
    let rounds = 3;
    let delayed = "[outer]\ndelay = 1\n";
    let mut harness = Harness::new(config_with(rounds, 12, 0.5, "", "min_workers = 2", delayed), 2);
    let workers = harness.workers.clone();
    let mut current: Vec<Submitted> = workers.iter().map(|&worker| harness.commit(worker)).collect();
    for round in 0..rounds {
        // Round r's commit phase is over: round r + 1 is open ahead, on the
        // model before round r's outer step, and takes commitments while
        // round r is answered, revealed and aggregated.
        let mut next = Vec::new();
        if round + 1 < rounds {
            let ahead = harness.node().lock().driver.machine.ahead_round().map(|ahead| ahead.id);
            assert_eq!(ahead, Some(round + 1), "two live rounds");
            for &worker in &workers {
                let view = harness.node().view(Some(worker)).body;
                assert_eq!(view.round, Some(round));
                let ahead = view.ahead.expect("the worker is a participant of the round ahead");
                let trained = harness.train_view(&ahead, Behavior::Honest);
                next.push(harness.commit_trained(trained).unwrap());
            }
            assert_eq!(harness.completed_rounds(), round, "committed to round r + 1 before round r closed");
        }
        answer_and_reveal(&mut harness, &current);
        harness.closed(round + 1);
        current = next;
    }
    let status = harness.status();
    assert_eq!((status.phase, status.completed_rounds), (Phase::Finished, rounds));
    let delayed = Nesterov { delay: 1, ..Nesterov::default() };
    assert_eq!(
        status.state_hash,
        simulated_state_hash_of(2, rounds, 12, delayed),
        "the delayed simulation's bits"
    );
    assert_ne!(status.state_hash, simulated_state_hash(2, rounds, 12), "the delay changes the model");
    assert!(status.workers.iter().all(|worker| worker.submissions_accepted == rounds && worker.slashed == 0));
}

#[test]
fn under_a_two_round_delay_three_rounds_are_live_through_a_crash_and_the_run_ends_on_the_delayed_simulation()
{
    // Rounds 0, 1 and 2 train from the initial model, round 3 from round
    // 0's; the coordinator crashes after round 0 closes, with three rounds
    // live and two of them committed to.
    let rounds = 4;
    let delayed = "[outer]\ndelay = 2\n";
    let mut harness = Harness::new(config_with(rounds, 12, 0.5, "", "min_workers = 2", delayed), 2);
    let workers = harness.workers.clone();
    let mut live: std::collections::VecDeque<Vec<Submitted>> = Default::default();
    live.push_back(workers.iter().map(|&worker| harness.commit(worker)).collect());
    for round in 0..rounds {
        // Every round opened ahead of round r is trained and committed to
        // before round r closes, from the view's chain of rounds ahead.
        let ahead: Vec<RoundId> =
            harness.node().lock().driver.machine.ahead_rounds().map(|ahead| ahead.id).collect();
        let expected: Vec<RoundId> = (round + 1..rounds.min(round + 3)).collect();
        assert_eq!(ahead, expected, "round {round}: the rounds live ahead of it");
        let committed_through = round + live.len() as u64 - 1;
        for next in committed_through + 1..round + 1 + ahead.len() as u64 {
            let mut submitted = Vec::new();
            for &worker in &workers {
                let mut view = harness.node().view(Some(worker)).body;
                assert_eq!(view.round, Some(round));
                while view.round != Some(next) {
                    view = *view.ahead.unwrap_or_else(|| panic!("round {next} is shown ahead"));
                }
                let trained = harness.train_view(&view, Behavior::Honest);
                submitted.push(harness.commit_trained(trained).unwrap());
            }
            live.push_back(submitted);
        }
        assert_eq!(harness.completed_rounds(), round, "committed to the rounds ahead before round r closed");
        answer_and_reveal(&mut harness, &live.pop_front().expect("round r was committed to"));
        harness.closed(round + 1);
        if round == 0 {
            harness.crash();
        }
    }
    let status = harness.status();
    assert_eq!((status.phase, status.completed_rounds), (Phase::Finished, rounds));
    let delayed_twice = Nesterov { delay: 2, ..Nesterov::default() };
    assert_eq!(
        status.state_hash,
        simulated_state_hash_of(2, rounds, 12, delayed_twice),
        "the delayed simulation's bits"
    );
    let delayed_once = Nesterov { delay: 1, ..Nesterov::default() };
    assert_ne!(
        status.state_hash,
        simulated_state_hash_of(2, rounds, 12, delayed_once),
        "a second round's delay"
    );
    assert!(status.workers.iter().all(|worker| worker.submissions_accepted == rounds && worker.slashed == 0));
}

#[test]
fn under_a_compressed_broadcast_each_delta_rebuilds_its_model_and_a_crash_keeps_the_exact_model() {
    let rounds = 3;
    let broadcast = "[outer]\nbroadcast = \"int8\"\n";
    let mut harness = Harness::new(config_with(rounds, 12, 0.5, "", "min_workers = 2", broadcast), 2);
    let mut models = vec![harness.status().model];
    for round in 0..rounds {
        honest_round(&mut harness, CrashAt::Nowhere);
        let model = harness.status().model;
        // What a worker holding the last model downloads instead of this
        // one: the encoded change, which rebuilds it bit for bit.
        let node = harness.node();
        let delta = crowdtrain_store::delta::ModelDelta::decode(&node.model_delta(&model).unwrap()).unwrap();
        let previous = *models.last().unwrap();
        assert_eq!((delta.round, delta.base, delta.target), (round + 1, previous, model));
        let layout = node.model.layout();
        let name = node.model.name();
        let base =
            checkpoint::decode(&node.model_bytes(&previous).unwrap(), CheckpointKind::Params, &name, layout)
                .unwrap();
        let rebuilt = apply_broadcast(&base, &delta.change).unwrap();
        let encoded = checkpoint::encode(CheckpointKind::Params, &name, layout, &rebuilt);
        assert_eq!(Digest::of(&encoded), model, "round {round}'s delta rebuilds its model");
        models.push(model);
        // The exact model the coordinator keeps private survives a crash.
        if round == 0 {
            harness.crash();
        }
    }
    let status = harness.status();
    assert_eq!((status.phase, status.completed_rounds), (Phase::Finished, rounds));
    let broadcast = Nesterov { broadcast: Broadcast::Delta(Codec::INT8), ..Nesterov::default() };
    let simulated = simulated_state_hash_of(2, rounds, 12, broadcast);
    assert_eq!(status.state_hash, simulated, "the same bits as the simulation with the same broadcast");
    assert_ne!(status.state_hash, simulated_state_hash(2, rounds, 12), "the broadcast changes the model");
}

/// The driver's shell in a test: everything on the caller's thread, and a
/// record of what the driver asked of it.
#[derive(Default)]
struct CallerThread {
    shown: Vec<RoundId>,
    served: Vec<Digest>,
    writes: usize,
    replays: usize,
    /// The replays the driver handed out, for the test to run.
    held: Vec<PendingReplay>,
}

impl Shell for CallerThread {
    fn show(&mut self, opened: Opened) {
        self.shown.push(opened.id());
    }

    fn serve(&mut self, model: Digest, _bytes: Arc<Vec<u8>>) {
        self.served.push(model);
    }

    fn opened_ahead(&mut self, _after: RoundId) {}

    fn withdrawn(&mut self, _round: RoundId, _provisional: Option<RoundId>) {}

    fn write_behind(&mut self, write: CheckpointWrite) {
        write.run().unwrap();
        self.writes += 1;
    }

    fn written(&mut self) -> Result<(), crowdtrain_coordinator::CoordinatorError> {
        Ok(())
    }

    fn replay(&mut self, replay: PendingReplay) {
        self.replays += 1;
        self.held.push(replay);
    }
}

impl Harness {
    /// A driver opened with [`Driver::open`] on this run's state directory,
    /// as a process restarted on it would open it: the node is closed first
    /// (its threads let go of the store), and only the driver comes back.
    fn open_driver(&mut self) -> Driver {
        if let Some(node) = self.node.take() {
            wait_until("the node's threads let go of it", || Arc::strong_count(&node) == 1);
        }
        let dir = self.dir.path();
        let config = self.config.clone();
        let tokenizer = crowdtrain_data::text::TokenizerSpec::from("char".to_owned());
        let dataset = RunData::load(config.data.dir.as_deref(), &config.training, &tokenizer).unwrap();
        let training = ModelRun {
            model: crowdtrain_train::build_model(config.training.model),
            dataset: Arc::new(dataset),
            checkpoints: Checkpoints::open(&dir.join("checkpoints")).unwrap(),
            deltas: deltas::Deltas::open(&dir.join("deltas")).unwrap(),
            answers: Checkpoints::open_with_extension(&dir.join("audit-answers"), "answer").unwrap(),
            bucket: None,
            config,
        };
        let defense = training.config.defense();
        let run = driver::Run {
            settings: training.settings(),
            checks: defense.checks,
            aggregator: defense.aggregator,
            audit_master: load_or_create_secret(&dir.join("audit.secret")).unwrap(),
            identity: Arc::new(load_or_create_key(&dir.join("coordinator.key")).unwrap()),
            clock: self.clock.clone(),
        };
        let store = Store::open(&dir.join("coordinator.sqlite")).unwrap();
        Driver::open(run, training, store).unwrap()
    }
}

#[test]
fn the_driver_alone_runs_audited_rounds_on_the_callers_thread_to_the_simulations_bits() {
    // Every submission audited; the driver takes every input itself, and
    // the test does the shell's part (storing the answer, the replay) on
    // its own thread: no lock, no thread, no waiting.
    // The node registers the workers and opens round 0; from then on the
    // driver alone, opened with `Driver::open` on the node's state, and
    // opened again on what survives a crash between the rounds.
    let mut harness = Harness::new(config(2, 12, 1.0, "", "min_workers = 2"), 2);
    let workers = harness.workers.clone();
    let mut driver = harness.open_driver();
    let mut shell = CallerThread::default();
    driver.carry_out(&[], &mut shell).unwrap();
    assert!(driver.take_batch().events.is_empty(), "round 0 was open and durable: nothing to do");
    for round in 0..2 {
        if round == 1 {
            let (global, hash) = (driver.training.global_model, driver.training.global_hash.clone());
            drop(driver);
            driver = harness.open_driver();
            driver.carry_out(&[], &mut shell).unwrap();
            let training = &driver.training;
            assert_eq!((training.global_model, &training.global_hash), (global, &hash), "restored exactly");
            assert_eq!(driver.machine.open_round().map(|open| open.id), Some(1), "round 1 is open again");
        }
        let mut submitted = Vec::new();
        for &worker in &workers {
            harness.wait(200);
            let assignment = driver.machine.view(Some(worker)).assignment.expect("a participant");
            let params = driver.training.base_params(&assignment.base_model).unwrap();
            let run = &driver.training.run;
            let produced = train(run.model.as_ref(), &run.dataset, &params, &assignment, Behavior::Honest);
            let (now, nonce, base) = (harness.clock.now_unix_ms(), harness.nonce(), assignment.base_model);
            let commitment = produced.commitment();
            let shard = Some(assignment.shard());
            let sent = Sent { now, worker, nonce, round };
            let (outcome, audit) = driver.commit(sent, base, shard, commitment, &[], &mut shell).unwrap();
            assert_eq!(outcome.status(), crowdtrain_protocol::Recorded::Accepted);
            submitted.push((assignment, produced, audit.expect("every submission is audited")));
        }
        for (assignment, produced, segment) in &submitted {
            let (worker, segment) = (assignment.worker, *segment);
            let answer = produced.answer(segment).unwrap();
            let digest = driver.training.run.answers.put(&postcard_bytes(&answer)).unwrap();
            let (now, nonce) = (harness.clock.now_unix_ms(), harness.nonce());
            let sent = Sent { now, worker, nonce, round };
            let auditor = driver.audit_answered(sent, digest, &mut shell).unwrap();
            assert_eq!(auditor, None, "the coordinator replays it");
            let base = driver.training.base_params(&assignment.base_model).unwrap();
            let (model, data) = (driver.training.run.model.as_ref(), &driver.training.run.dataset);
            let commitment = produced.commitment();
            let start = audit::check_answer(model, &base, assignment, segment, &commitment, &answer).unwrap();
            let shards = data.shards(assignment).unwrap();
            let report =
                replay_segment(model, data, &shards, assignment, segment, start, &base, &[]).unwrap();
            let verdict = audit::verdict_of(&report, &answer, &commitment, assignment, segment);
            assert_eq!(verdict, Verdict::Passed);
            driver.replay_finished(harness.clock.now_unix_ms(), round, worker, verdict, &mut shell).unwrap();
        }
        for (assignment, produced, _) in &submitted {
            let payload = produced.payload.as_slice();
            let digest = Digest::of(payload);
            let parameters = driver.training.run.model.layout().len();
            let (_, values) = crowdtrain_train::codec::decode(payload, parameters).unwrap();
            let (now, nonce) = (harness.clock.now_unix_ms(), harness.nonce());
            let (worker, base) = (assignment.worker, assignment.base_model);
            let payloads = [(digest, payload)];
            let sent = Sent { now, worker, nonce, round };
            driver.reveal(sent, base, digest, Ok(values), &payloads, &mut shell).unwrap();
        }
        let batch = driver.take_batch();
        assert_eq!(
            batch.committed,
            vec![(round, driver.training.global_model)],
            "the last reveal closed the round, on the model now global"
        );
        assert!(driver.take_batch().events.is_empty(), "taken once");
    }
    assert_eq!(driver.machine.phase(), Phase::Finished);
    // Round 0 opened at the second registration, under the node.
    assert_eq!(shell.shown, vec![1], "round 1 shown as it opened");
    assert_eq!((shell.served.len(), shell.writes), (2, 2), "each result served and written");
    assert_eq!(shell.replays, 0, "every replay was the test's, none judged from the store");
    assert_eq!(driver.training.global_hash, simulated_state_hash(2, 2, 12), "the simulation's bits");
    // Refusals are typed, and change nothing.
    let (now, nonce) = (harness.clock.now_unix_ms(), harness.nonce());
    let stranger = Identity::from_seed([0x99; 32]).public_key();
    let read = driver.read(now, &stranger, nonce, &mut shell);
    assert!(
        matches!(&read, Err(DriverError::Refused(refusal)) if refusal.code == ErrorCode::UnknownWorker),
        "{read:?}"
    );
    assert!(driver.take_batch().events.is_empty());
}

/// A commitment's request body without boundary leaves (a `"segment"` run's).
fn bare(commitment: crowdtrain_protocol::Commitment) -> crowdtrain_protocol::wire::CommitBody {
    crowdtrain_protocol::wire::CommitBody { commitment, boundaries: Vec::new() }
}

#[test]
fn replays_from_the_start_need_no_answer_and_catch_every_cheat() {
    // `audit.replay = "from-start"`, every submission audited: the honest
    // worker, a lazy one, a fabricator, one on another shard and a copier
    // of the honest one. Nobody answers: each commitment carries its
    // boundary leaves, the driver records them as the answer and hands out
    // a replay from the round's base at once.
    let config = config(1, 12, 1.0, "replay = \"from-start\"", "min_workers = 5");
    let mut harness = Harness::new(config, 5);
    let workers = harness.workers.clone();
    let mut driver = harness.open_driver();
    let mut shell = CallerThread::default();
    driver.carry_out(&[], &mut shell).unwrap();
    let behaviors =
        [Behavior::Honest, Behavior::Lazy(1.0), Behavior::Fabricate, Behavior::WrongData, Behavior::Copy];
    let mut submitted = Vec::new();
    for (&worker, &behavior) in workers.iter().zip(&behaviors) {
        harness.wait(200);
        let assignment = driver.machine.view(Some(worker)).assignment.expect("a participant");
        let params = driver.training.base_params(&assignment.base_model).unwrap();
        let run = &driver.training.run;
        let produced = train(run.model.as_ref(), &run.dataset, &params, &assignment, behavior);
        let (base, shard, commitment) =
            (assignment.base_model, Some(assignment.shard()), produced.commitment());
        // Without its leaves, or with leaves its root is not over, a
        // commitment is refused and changes nothing.
        let mut forged = produced.hashes.clone();
        forged[1] = Digest::of(b"a state never reached");
        driver.take_batch();
        for leaves in [&[][..], &produced.hashes[1..], &forged] {
            let sent = Sent { now: harness.clock.now_unix_ms(), worker, nonce: harness.nonce(), round: 0 };
            let refused = driver.commit(sent, base, shard, commitment, leaves, &mut shell);
            assert!(
                matches!(&refused, Err(DriverError::Refused(refusal)) if refusal.code == ErrorCode::BadRequest),
                "{refused:?}"
            );
            assert!(driver.take_batch().events.is_empty());
        }
        let sent = Sent { now: harness.clock.now_unix_ms(), worker, nonce: harness.nonce(), round: 0 };
        let (outcome, audit) =
            driver.commit(sent, base, shard, commitment, &produced.hashes, &mut shell).unwrap();
        assert_eq!(outcome.status(), crowdtrain_protocol::Recorded::Accepted);
        assert_eq!(audit, None, "{behavior}: no answer is due");
        let view = driver.machine.view(Some(worker));
        assert!(view.audit.is_some() && view.audit_answered, "{behavior}: drawn, and answered by its leaves");
        submitted.push((assignment, produced, behavior));
    }
    assert_eq!(shell.held.len(), workers.len(), "every drawn audit replays at once");
    for replay in std::mem::take(&mut shell.held) {
        let (round, worker, segment) = (replay.round, replay.worker, replay.segment);
        let behavior = behaviors[workers.iter().position(|&known| known == worker).unwrap()];
        let (model, data) = (driver.training.run.model.as_ref(), &driver.training.run.dataset);
        let verdict = replay.verdict(model, data);
        assert_eq!(
            verdict.passed(),
            behavior == Behavior::Honest,
            "{behavior}, segment {segment}: {verdict:?}"
        );
        driver.replay_finished(harness.clock.now_unix_ms(), round, worker, verdict, &mut shell).unwrap();
    }
    for (assignment, produced, _) in &submitted {
        let payload = produced.payload.as_slice();
        let digest = Digest::of(payload);
        let parameters = driver.training.run.model.layout().len();
        let values = crowdtrain_train::codec::decode(payload, parameters).map(|(_, values)| values);
        let update =
            values.map_err(|error| Refusal { code: ErrorCode::WrongShape, message: error.to_string() });
        let (now, nonce) = (harness.clock.now_unix_ms(), harness.nonce());
        let sent = Sent { now, worker: assignment.worker, nonce, round: 0 };
        let _ = driver.reveal(sent, assignment.base_model, digest, update, &[(digest, payload)], &mut shell);
    }
    let events = driver.store.events().unwrap();
    // Each answer is recorded with its commitment: the same request.
    let answered = |worker| {
        let nonce = |event: &Event| match event {
            Event::Commitment { worker: w, nonce, .. } if *w == worker => Some(("commitment", *nonce)),
            Event::AuditAnswered { worker: w, nonce, .. } if *w == worker => Some(("answer", *nonce)),
            _ => None,
        };
        let nonces: Vec<_> = events.iter().filter_map(nonce).collect();
        matches!(nonces[..], [("commitment", committed), ("answer", answered)] if committed == answered)
    };
    for (&worker, behavior) in workers.iter().zip(&behaviors) {
        assert!(answered(worker), "{behavior}: answered by its leaves, recorded with its commitment");
        let passed = events.iter().any(|event| {
            matches!(event, Event::Audit { round: 0, worker: w, verdict: Verdict::Passed, .. } if *w == worker)
        });
        assert_eq!(passed, *behavior == Behavior::Honest, "{behavior}");
        let slashed =
            events.iter().any(|event| matches!(event, Event::Slash { worker: w, .. } if *w == worker));
        assert_eq!(slashed, *behavior != Behavior::Honest, "{behavior}");
    }
    assert!(
        events.iter().any(|event| matches!(event, Event::RoundClosed { round: 0, .. })),
        "the round closed"
    );
}
