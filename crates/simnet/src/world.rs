//! The simulated world: the coordinator driven in-process, the workers,
//! the network between them and the faults, all on one virtual clock.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::time::Instant;

use crowdtrain_data::rng::{RngKey, keyed_rng, uniform_below, unit_f64};
use crowdtrain_defense::checks::Submission;
use crowdtrain_defense::{CheckConfig, ModelDefense};
use crowdtrain_protocol::coordinator::{OpenRound, RoundPhase};
use crowdtrain_protocol::judge::ReportCheck;
use crowdtrain_protocol::ledger::Event;
use crowdtrain_protocol::wire::{ErrorCode, Phase};
use crowdtrain_protocol::{
    Action, Aggregated, Commitment, Coordinator, Digest, Identity, PublicKey, Recorded, Refusal, RoundId,
    RoundResult, RoundView, Settings, TrainingRecipe, Verdict, WorkerId,
};
use crowdtrain_store::{RunRecord, Store};
use rand_chacha::ChaCha8Rng;

use crate::invariants::{self, Acked, Knowledge, Rules, Violation};
use crate::model::{self, Behaviour, SEGMENTS, UPDATE_LEN, Work};
use crate::queue::Queue;
use crate::{Auditors, SimConfig, Summary};

/// The virtual clock starts here (Unix ms), so nonces and deadlines look
/// like the real ones.
const T0: u64 = 1_800_000_000_000;
/// Every simulated worker runs the same kernels.
const CLASS: &str = "sim";
/// How often a worker polls for its round.
const POLL_MS: u64 = 1_000;
/// How long an honest worker trains (plus up to as much again); a slow one
/// takes three times as long, often past the commit deadline.
const TRAIN_MS: u64 = 2_000;
/// How long the coordinator replays an audited segment.
const REPLAY_MS: u64 = 300;
/// How long a crashed coordinator is down.
const RESTART_MS: u64 = 2_000;
/// Write batches per round and worker, about: to turn faults per round
/// into a chance per batch.
const BATCHES_PER_WORKER_ROUND: f64 = 3.0;

/// Something due at a virtual time.
enum Due {
    ToCoordinator {
        from: usize,
        epoch: u32,
        request: Request,
    },
    ToWorker {
        to: usize,
        epoch: u32,
        reply: Reply,
    },
    Wake {
        worker: usize,
        epoch: u32,
    },
    Trained {
        worker: usize,
        epoch: u32,
        round: RoundId,
        base: Digest,
    },
    Timer {
        at: u64,
    },
    Replayed {
        incarnation: u64,
        round: RoundId,
        worker: WorkerId,
    },
    /// A delegated auditor finished replaying.
    AuditReplayed(AuditJob),
    Restart,
    Churn {
        kind: Churn,
    },
    WorkerBack {
        worker: usize,
    },
}

/// A delegated audit a worker (by index, in its `epoch`) replays:
/// `audited`'s `segment` of round `round` on `base`.
struct AuditJob {
    worker: usize,
    epoch: u32,
    round: RoundId,
    base: Digest,
    audited: WorkerId,
    segment: u32,
}

#[derive(Debug, Clone, Copy)]
enum Churn {
    Leave,
    Crash,
    Join,
}

#[derive(Clone)]
enum Request {
    Register,
    Poll {
        nonce: u64,
    },
    // Boxed: it would make every queued event as large as a commitment.
    Commit {
        nonce: u64,
        round: RoundId,
        base: Digest,
        commitment: Box<Commitment>,
    },
    Reveal {
        nonce: u64,
        round: RoundId,
        base: Digest,
        bytes: Vec<u8>,
    },
    Answer {
        nonce: u64,
        round: RoundId,
        answer: Digest,
    },
    /// A delegated auditor's report on `audited`'s segment.
    Report {
        nonce: u64,
        round: RoundId,
        audited: WorkerId,
        report: model::Report,
    },
}

#[derive(Clone)]
enum Reply {
    Registered(WorkerId),
    View(Box<RoundView>),
    Committed(RoundId),
    Answered(RoundId),
    Revealed(RoundId),
    Reported,
    Refused,
}

/// What an answer promises is durable.
enum Ack {
    Registration(PublicKey),
    Commitment(RoundId, WorkerId, Commitment, Recorded),
    Reveal(RoundId, WorkerId, Digest),
    /// An audit answer; `true` if the coordinator replays it itself.
    Answer(RoundId, WorkerId, bool),
    /// The verdict a delegated auditor's report decided.
    Verdict(RoundId, WorkerId),
}

/// What goes wrong at the coordinator's next write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// Dies with the batch not yet durable.
    CrashBeforeWrite,
    /// The write fails (and must change nothing); the node halts.
    WriteFails,
    /// Dies with the batch durable, before answering.
    CrashAfterWrite,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    NotStarted,
    Up,
    Down,
    Gone,
}

struct Task {
    round: RoundId,
    base: Digest,
    work: Option<Work>,
    committed: bool,
    answered: bool,
    revealed: bool,
}

struct SimWorker {
    key: PublicKey,
    behaviour: Behaviour,
    slow: bool,
    status: Status,
    /// Bumped at each crash: timers and answers of the previous life are
    /// ignored.
    epoch: u32,
    id: Option<WorkerId>,
    last_nonce: u64,
    task: Option<Task>,
    /// The delegated audits it started replaying, `(round, audited)`.
    audits: BTreeSet<(RoundId, WorkerId)>,
    done: bool,
}

impl SimWorker {
    /// Its task, if it is for `round`.
    fn task_of(&mut self, round: RoundId) -> Option<&mut Task> {
        self.task.as_mut().filter(|task| task.round == round)
    }
}

/// The coordinator process: the machine (none while down), its store, its
/// defence and what it keeps in memory.
struct Node {
    machine: Option<Coordinator>,
    /// Bumped at each crash: replays of the previous process are lost.
    incarnation: u64,
    store: Store,
    signer: Identity,
    defense: ModelDefense,
    /// When the timer is armed for.
    armed: Option<u64>,
    /// Accepted reveals' bytes not necessarily durable yet.
    updates: HashMap<(RoundId, WorkerId), Vec<u8>>,
    /// The defence's decision on the open round's speculation, kept (as
    /// the node keeps it) until the round closes on the same submissions,
    /// which then reuses it instead of aggregating again, or it is
    /// withdrawn. Lost in a crash.
    speculated: Option<Speculated>,
    /// The fault armed for the next non-empty batch, with the machine as it
    /// was before the input being handled.
    fault: Option<Fault>,
    /// The restored machine must look like this (what the dead one had
    /// made durable).
    expected: Option<Fingerprint>,
}

/// A speculative aggregate: for `round` on `base`, over `accepted`.
struct Speculated {
    round: RoundId,
    base: Digest,
    accepted: Vec<WorkerId>,
    aggregated: Aggregated,
    decision: crowdtrain_defense::Decision,
}

/// The durable part of a machine's state that a restored machine must
/// reproduce: what was recorded, not what is rebuilt on restart (the
/// early end of a commit phase, replays in progress).
#[derive(Debug, Clone, PartialEq)]
struct Fingerprint {
    completed_rounds: u64,
    model: Digest,
    workers: usize,
    open: Option<OpenRound>,
}

fn fingerprint(machine: &Coordinator) -> Fingerprint {
    let open = machine.open_round().cloned().map(|mut round| {
        round.early_close_ms = None;
        // A restore gives a round in its reveal phase a whole reveal window
        // again (workers could not reach the coordinator): not recorded.
        if let RoundPhase::Revealing { deadline_ms } = &mut round.phase {
            *deadline_ms = 0;
        }
        for standing in round.standings.values_mut() {
            standing.judging = false;
        }
        round
    });
    Fingerprint {
        completed_rounds: machine.completed_rounds(),
        model: machine.model(),
        workers: machine.worker_count(),
        open,
    }
}

#[derive(Default)]
struct Counters {
    crashes: u64,
    write_faults: u64,
    restores_compared: u64,
    joined: u64,
    left: u64,
    worker_crashes: u64,
    messages: u64,
    lost: u64,
    duplicated: u64,
    checks: u64,
}

pub(crate) struct World {
    config: SimConfig,
    queue: Queue<Due>,
    rng: ChaCha8Rng,
    settings: Settings,
    run_id: Digest,
    initial_model: Digest,
    master: [u8; 32],
    node: Node,
    workers: Vec<SimWorker>,
    acked: Acked,
    behaviour_by_key: BTreeMap<PublicKey, Behaviour>,
    excused: BTreeSet<(PublicKey, RoundId)>,
    /// Rounds open while the coordinator was down.
    outages: BTreeSet<RoundId>,
    /// The rules check, fed every durable event as it is written.
    rules: Rules,
    /// Every durable event, in order (what the store must hold).
    durable: Vec<Event>,
    /// The round opened last.
    last_opened: RoundId,
    counters: Counters,
    /// `SIMNET_TRACE` is set: every durable event, crash, churn, request
    /// and view goes to stderr with its virtual time (for a failing seed).
    trace: bool,
    /// Chances per write batch.
    crash_chance: f64,
    write_chance: f64,
}

/// A finished run: its summary, and its store with what the checks know,
/// for tests that tamper with them.
pub struct Finished {
    pub summary: Summary,
    pub store: Store,
    pub coordinator: PublicKey,
    pub quorum: u32,
    pub bond: u64,
    pub acked: Acked,
    pub behaviour_by_key: BTreeMap<PublicKey, Behaviour>,
    pub excused: BTreeSet<(PublicKey, RoundId)>,
    pub outages: BTreeSet<RoundId>,
}

fn quorum(workers: u32) -> u32 {
    (workers / 4).max(2)
}

impl World {
    pub(crate) fn new(config: SimConfig) -> Self {
        let seed = config.seed;
        let rng = keyed_rng("simnet", RngKey::new(seed, 0, 0, 0));
        let joins = (config.churn * f64::from(config.workers)).ceil() as u32;
        let total = config.workers + joins;
        let settings = Settings {
            rounds: config.rounds,
            min_workers: config.workers,
            quorum: quorum(config.workers),
            commit_ms: 10_000,
            reveal_ms: 15_000,
            extension_ms: 5_000,
            max_extensions: 2,
            worker_timeout_ms: 30_000,
            max_workers: total,
            max_participants: total,
            audit_probability: 0.2,
            segments: SEGMENTS,
            stake: crate::STAKE,
            delegate_audits: config.auditors == Auditors::Workers,
            bond: config.bond,
            vesting_rounds: 2,
            recipe: TrainingRecipe { inner_steps: 8, batch_size: 4, ..TrainingRecipe::with_seed(seed) },
            contract_extra_rounds: 0,
            outer_delay: 0,
        };
        let run_id = Digest::of(&[&b"simnet run "[..], &seed.to_le_bytes()].concat());
        let initial_model = Digest::of(&[&b"simnet model 0 "[..], &seed.to_le_bytes()].concat());
        let signer =
            Identity::from_seed(Digest::of(&[&b"simnet coordinator "[..], &seed.to_le_bytes()].concat()).0);
        let mut store = Store::open_in_memory().expect("an in-memory store opens");
        let run = RunRecord {
            run_id,
            protocol_version: 0,
            config_json: "{}".into(),
            coordinator_key: signer.public_key(),
            model_name: "simnet".into(),
            initial_model,
            initial_momentum: Digest::of(b"simnet momentum 0"),
            created_unix_ms: T0,
        };
        store.create_run(&run, Digest::of(b"{}"), &signer).expect("the run is created");
        let master = Digest::of(&[&b"simnet audit master "[..], &seed.to_le_bytes()].concat()).0;
        let batches_per_round = BATCHES_PER_WORKER_ROUND * f64::from(config.workers.max(1));
        let crash_chance = (config.faults.crash / batches_per_round).min(1.0);
        let write_chance = (config.faults.write / batches_per_round).min(1.0);
        let node = Node {
            machine: Some(Coordinator::new(settings.clone(), run_id, initial_model, master)),
            incarnation: 0,
            store,
            signer,
            defense: new_defense(HashSet::new()),
            armed: None,
            updates: HashMap::new(),
            speculated: None,
            fault: None,
            expected: None,
        };
        let mut world = Self {
            queue: Queue::new(T0),
            rng,
            settings,
            run_id,
            initial_model,
            master,
            node,
            workers: Vec::new(),
            acked: Acked::default(),
            behaviour_by_key: BTreeMap::new(),
            excused: BTreeSet::new(),
            outages: BTreeSet::new(),
            rules: Rules::new(quorum(config.workers), config.bond, crate::STAKE),
            durable: Vec::new(),
            last_opened: 0,
            counters: Counters::default(),
            trace: std::env::var_os("SIMNET_TRACE").is_some(),
            crash_chance,
            write_chance,
            config,
        };
        world.durable = world.node.store.events().expect("the store reads");
        world.populate(joins);
        world
    }

    fn chance(&mut self, probability: f64) -> bool {
        probability > 0.0 && unit_f64(&mut self.rng) < probability
    }

    fn below(&mut self, bound: u64) -> u64 {
        uniform_below(&mut self.rng, bound.max(1))
    }

    /// Creates the workers (attackers among them, each with one attack in
    /// turn) and schedules the churn.
    fn populate(&mut self, joins: u32) {
        let attackers = (self.config.attackers * f64::from(self.config.workers)).round() as usize;
        for index in 0..self.config.workers as usize {
            // Each seed starts the attacks at another one, so that small runs
            // see every kind over a few seeds.
            let attack = (index + self.config.seed as usize) % Behaviour::ATTACKS.len();
            let behaviour = if index < attackers { Behaviour::ATTACKS[attack] } else { Behaviour::Honest };
            let worker = self.add_worker(behaviour);
            let start = self.below(1_000);
            self.start_worker(worker, start);
        }
        // The run's expected length, over which churn spreads.
        let span = self.config.rounds * 8_000;
        for index in 0..joins {
            let kind = match index % 3 {
                0 => Churn::Leave,
                1 => Churn::Crash,
                _ => Churn::Join,
            };
            let at = 15_000 + self.below(span);
            self.queue.after(at, Due::Churn { kind });
        }
    }

    fn add_worker(&mut self, behaviour: Behaviour) -> usize {
        let index = self.workers.len();
        let seed = Digest::of(
            &[&b"simnet worker "[..], &self.config.seed.to_le_bytes(), &(index as u64).to_le_bytes()]
                .concat(),
        );
        let key = Identity::from_seed(seed.0).public_key();
        let slow = self.chance(0.1);
        self.behaviour_by_key.insert(key, behaviour);
        self.workers.push(SimWorker {
            key,
            behaviour,
            slow,
            status: Status::NotStarted,
            epoch: 0,
            id: None,
            last_nonce: 0,
            task: None,
            audits: BTreeSet::new(),
            done: false,
        });
        index
    }

    fn start_worker(&mut self, worker: usize, delay: u64) {
        let state = &mut self.workers[worker];
        state.status = Status::Up;
        let epoch = state.epoch;
        self.queue.after(delay, Due::Wake { worker, epoch });
    }

    // The network.

    /// Sends `due` (a message) over the network: lost, delayed, or
    /// delivered twice.
    fn send(&mut self, due: impl Fn() -> Due) {
        self.counters.messages += 1;
        if self.chance(self.config.faults.loss) {
            self.counters.lost += 1;
            return;
        }
        let delay = 1 + self.below(self.config.faults.max_delay_ms);
        self.queue.after(delay, due());
        if self.chance(self.config.faults.duplicate) {
            self.counters.duplicated += 1;
            let delay = 1 + self.below(self.config.faults.max_delay_ms);
            self.queue.after(delay, due());
        }
    }

    fn request(&mut self, from: usize, request: Request) {
        let epoch = self.workers[from].epoch;
        self.send(|| Due::ToCoordinator { from, epoch, request: request.clone() });
    }

    fn reply(&mut self, to: usize, epoch: u32, reply: Reply) {
        self.send(|| Due::ToWorker { to, epoch, reply: reply.clone() });
    }

    // The run.

    pub(crate) fn run(mut self) -> Result<Finished, Violation> {
        let started = Instant::now();
        let limit = T0 + self.config.rounds * 60_000 + 120_000;
        // Events handled without the clock moving: a livelock if it grows
        // past what any instant holds.
        let (mut instant, mut at_instant) = (T0, 0u64);
        while let Some(due) = self.queue.pop() {
            if self.queue.now() > limit || self.finished() {
                break;
            }
            if self.queue.now() == instant {
                at_instant += 1;
                if at_instant > 1_000_000 {
                    return Err(Violation(format!(
                        "livelock: a million events at virtual time +{} ms without the clock moving",
                        instant - T0
                    )));
                }
            } else {
                (instant, at_instant) = (self.queue.now(), 0);
            }
            match due {
                Due::ToCoordinator { from, epoch, request } => self.at_coordinator(from, epoch, request)?,
                Due::ToWorker { to, epoch, reply } => self.at_worker(to, epoch, reply),
                Due::Wake { worker, epoch } => self.wake(worker, epoch),
                Due::Trained { worker, epoch, round, base } => self.trained(worker, epoch, round, base),
                Due::Timer { at } => self.timer(at)?,
                Due::Replayed { incarnation, round, worker } => self.replayed(incarnation, round, worker)?,
                Due::AuditReplayed(job) => self.audit_replayed(job),
                Due::Restart => self.restart()?,
                Due::Churn { kind } => self.churn(kind),
                Due::WorkerBack { worker } => {
                    if self.workers[worker].status == Status::Down {
                        self.start_worker(worker, 0);
                    }
                }
            }
        }
        self.finish(started)
    }

    fn finished(&self) -> bool {
        matches!(self.durable.last(), Some(Event::RunFinished { .. }))
    }

    /// The final checks, and the summary.
    fn finish(mut self, started: Instant) -> Result<Finished, Violation> {
        let key = self.node.signer.public_key();
        let sealed = self.node.store.ledger().map_err(store_violation)?;
        let events = invariants::check_ledger(&sealed, &key)?;
        if events != self.durable {
            return Err(Violation("the ledger is not the sequence of batches written".into()));
        }
        // Again from the verified ledger, from the start.
        let mut rules = Rules::new(self.settings.quorum, self.settings.bond, self.settings.stake);
        rules.feed_all(&events, self.knowledge())?;
        invariants::check_acked(&events, &self.acked)?;
        let store = &self.node.store;
        let rounds_reproduced =
            invariants::check_fault_free(&events, self.initial_model, |round, workers| {
                store.payloads(round, workers).map_err(store_violation)
            })?;
        // The ledger alone restores the final state.
        if let Some(machine) = self.node.machine.as_ref().filter(|_| self.finished()) {
            let now = self.queue.now();
            let (settings, run_id, master) = (self.settings.clone(), self.run_id, self.master);
            let restored = Coordinator::restore(settings, run_id, self.initial_model, master, &events, now);
            if fingerprint(&restored) != fingerprint(machine) {
                return Err(Violation("the final state is not what its ledger restores".into()));
            }
        }
        self.node.store.integrity_check().map_err(store_violation)?;
        self.node.store.check_worker_totals().map_err(|error| {
            Violation(format!("the store's totals are not what its records add up to: {error}"))
        })?;
        self.counters.checks += 7;
        let tally = rules.tally;
        // Liveness: with a quorum of honest workers up, rounds keep
        // closing until the run is done.
        let honest_up = self
            .workers
            .iter()
            .filter(|worker| worker.behaviour.is_honest() && worker.status == Status::Up)
            .count();
        if !self.finished() && honest_up >= self.settings.quorum as usize {
            return Err(Violation(format!(
                "liveness: {} of {} rounds closed ({} failed) by virtual time +{} s with {honest_up} honest workers \
                 up (quorum {})",
                tally.rounds_closed,
                self.config.rounds,
                tally.rounds_failed,
                (self.queue.now() - T0) / 1000,
                self.settings.quorum
            )));
        }
        self.counters.checks += 1;
        let counters = &self.counters;
        let mut summary = Summary {
            seed: self.config.seed,
            tally,
            rounds_reproduced,
            crashes: counters.crashes,
            write_faults: counters.write_faults,
            restores_compared: counters.restores_compared,
            workers_joined: counters.joined,
            workers_left: counters.left,
            workers_crashed: counters.worker_crashes,
            messages: counters.messages,
            messages_lost: counters.lost,
            messages_duplicated: counters.duplicated,
            ledger_entries: sealed.len() as u64,
            invariants_checked: counters.checks,
            virtual_ms: self.queue.now() - T0,
            wall_ms: 0,
            hash: String::new(),
        };
        let mut hasher = blake3::Hasher::new_derive_key("crowdtrain simnet summary v1");
        hasher.update(format!("{summary:?}").as_bytes());
        hasher.update(&sealed.last().expect("the run started").hash.0);
        summary.hash = hasher.finalize().to_hex().to_string();
        summary.wall_ms = started.elapsed().as_millis() as u64;
        Ok(Finished {
            summary,
            store: self.node.store,
            coordinator: key,
            quorum: self.settings.quorum,
            bond: self.settings.bond,
            acked: self.acked,
            behaviour_by_key: self.behaviour_by_key,
            excused: self.excused,
            outages: self.outages,
        })
    }

    fn knowledge(&self) -> Knowledge<'_> {
        Knowledge { behaviour_by_key: &self.behaviour_by_key, excused: &self.excused, outages: &self.outages }
    }

    // Workers.

    fn nonce(&mut self, worker: usize) -> u64 {
        let now = self.queue.now();
        let state = &mut self.workers[worker];
        state.last_nonce = (state.last_nonce + 1).max(now * 1000);
        state.last_nonce
    }

    fn wake(&mut self, worker: usize, epoch: u32) {
        let state = &self.workers[worker];
        if state.status != Status::Up || state.epoch != epoch || state.done {
            return;
        }
        let request =
            if state.id.is_some() { Request::Poll { nonce: self.nonce(worker) } } else { Request::Register };
        self.request(worker, request);
        let next = POLL_MS + self.below(200);
        self.queue.after(next, Due::Wake { worker, epoch });
    }

    fn train_ms(&mut self, worker: usize) -> u64 {
        let state = &self.workers[worker];
        let (behaviour, slow) = (state.behaviour, state.slow);
        let base = if behaviour == Behaviour::Lazy { 200 } else { TRAIN_MS + self.below(TRAIN_MS) };
        if slow { base * 3 } else { base }
    }

    fn trained(&mut self, worker: usize, epoch: u32, round: RoundId, base: Digest) {
        let seed = self.config.seed;
        let state = &mut self.workers[worker];
        if state.status != Status::Up || state.epoch != epoch {
            return;
        }
        let Some(id) = state.id else { return };
        let behaviour = state.behaviour;
        let Some(task) = state.task.as_mut().filter(|task| (task.round, task.base) == (round, base)) else {
            return;
        };
        let work = model::work(seed, behaviour, round, id, base, model::victim(id));
        let commitment = work.commitment;
        task.work = Some(work);
        let nonce = self.nonce(worker);
        self.request(worker, Request::Commit { nonce, round, base, commitment: Box::new(commitment) });
    }

    fn at_worker(&mut self, worker: usize, epoch: u32, reply: Reply) {
        let state = &mut self.workers[worker];
        if state.status != Status::Up || state.epoch != epoch {
            return;
        }
        match reply {
            Reply::Registered(id) => state.id = Some(id),
            Reply::Committed(round) => {
                if let Some(task) = state.task_of(round) {
                    task.committed = true;
                }
            }
            Reply::Answered(round) => {
                if let Some(task) = state.task_of(round) {
                    task.answered = true;
                }
            }
            Reply::Revealed(round) => {
                if let Some(task) = state.task_of(round) {
                    task.revealed = true;
                }
            }
            Reply::Reported | Reply::Refused => {}
            Reply::View(view) => self.act_on(worker, *view),
        }
    }

    /// What a worker does with the round it sees: train for a new
    /// assignment, and send what its assignment still needs.
    fn act_on(&mut self, worker: usize, view: RoundView) {
        if view.phase == Phase::Finished {
            self.workers[worker].done = true;
            return;
        }
        let Some(assignment) = view.assignment else { return };
        // A delegated audit to replay (beside its own work, as the real
        // worker's auditing loop does): once per audit.
        if let Some(task) = view.audit_task
            && !view.provisional
            && assignment.round == view.round.unwrap_or(u64::MAX)
            && self.workers[worker].audits.insert((assignment.round, task.worker))
        {
            let epoch = self.workers[worker].epoch;
            let (round, base) = (assignment.round, assignment.base_model);
            let job = AuditJob { worker, epoch, round, base, audited: task.worker, segment: task.segment };
            self.queue.after(REPLAY_MS, Due::AuditReplayed(job));
        }
        let (round, base) = (assignment.round, assignment.base_model);
        let state = &mut self.workers[worker];
        let current = state.task.as_ref().is_some_and(|task| (task.round, task.base) == (round, base));
        if !current {
            state.task =
                Some(Task { round, base, work: None, committed: false, answered: false, revealed: false });
            let delay = self.train_ms(worker);
            let epoch = self.workers[worker].epoch;
            self.queue.after(delay, Due::Trained { worker, epoch, round, base });
            return;
        }
        let task = state.task.as_mut().expect("current");
        let Some(work) = &task.work else { return };
        let work = work.clone();
        task.committed |= view.committed;
        task.answered |= view.audit_answered;
        task.revealed |= view.revealed;
        let (committed, answered, revealed) = (task.committed, task.answered, task.revealed);
        if self.trace {
            eprintln!(
                "{} VIEW {:?} round {:?}/{round} {:?} provisional {} committed {}/{committed} audit {:?} answered {}/{answered}",
                self.queue.now() - T0,
                state.id,
                view.round,
                view.phase,
                view.provisional,
                view.committed,
                view.audit,
                view.audit_answered
            );
        }
        if view.provisional || view.round != Some(round) {
            return;
        }
        if !committed {
            let nonce = self.nonce(worker);
            self.request(
                worker,
                Request::Commit { nonce, round, base, commitment: Box::new(work.commitment) },
            );
            return;
        }
        // One request at a time, as the real worker awaits each: the audit
        // answer first, then the reveal.
        if let (Some(segment), false, true) = (view.audit, answered, view.committed) {
            let nonce = self.nonce(worker);
            self.request(worker, Request::Answer { nonce, round, answer: work.answer(segment) });
            return;
        }
        if view.phase == Phase::Revealing && view.committed && !revealed {
            let nonce = self.nonce(worker);
            self.request(worker, Request::Reveal { nonce, round, base, bytes: work.reveal.clone() });
        }
    }

    /// A delegated auditor's replay is done: it reports. An honest one
    /// reports what its replay gave; an attacker vouches for a cheat (it
    /// echoes the audited worker's claims) and accuses an honest worker
    /// (reports a trace it made up).
    fn audit_replayed(&mut self, job: AuditJob) {
        let AuditJob { worker, epoch, round, base, audited, segment } = job;
        let seed = self.config.seed;
        let state = &self.workers[worker];
        if state.status != Status::Up || state.epoch != epoch {
            return;
        }
        let truth = model::replay(seed, round, audited, base, segment);
        let report = if state.behaviour.is_honest() {
            truth
        } else {
            let accused =
                self.workers.iter().find(|other| other.id == Some(audited)).map(|other| other.behaviour);
            match accused {
                Some(behaviour) if !behaviour.is_honest() => {
                    let claimed = model::work(seed, behaviour, round, audited, base, model::victim(audited));
                    model::Report { root: claimed.commitment.merkle_root, answer: claimed.answer(segment) }
                }
                _ => model::Report { root: Digest::of(&truth.root.0), answer: Digest::of(&truth.answer.0) },
            }
        };
        let nonce = self.nonce(worker);
        self.request(worker, Request::Report { nonce, round, audited, report });
    }

    /// The round a worker that goes down now may miss: its audit there may
    /// go unanswered.
    fn excuse(&mut self, worker: usize) {
        let key = self.workers[worker].key;
        let open = self.last_opened;
        self.excused.insert((key, open));
        self.excused.insert((key, open + 1));
    }

    fn churn(&mut self, kind: Churn) {
        let up: Vec<usize> =
            (0..self.workers.len()).filter(|&worker| self.workers[worker].status == Status::Up).collect();
        match kind {
            Churn::Join => {
                let behaviour = if self.chance(self.config.attackers) {
                    let attack = self.below(Behaviour::ATTACKS.len() as u64) as usize;
                    Behaviour::ATTACKS[attack]
                } else {
                    Behaviour::Honest
                };
                let worker = self.add_worker(behaviour);
                self.start_worker(worker, 0);
                self.counters.joined += 1;
            }
            Churn::Leave | Churn::Crash => {
                if up.is_empty() {
                    return;
                }
                let worker = up[self.below(up.len() as u64) as usize];
                if self.trace {
                    eprintln!("{} CHURN {kind:?} {:?}", self.queue.now() - T0, self.workers[worker].id);
                }
                self.excuse(worker);
                let state = &mut self.workers[worker];
                state.epoch += 1;
                state.task = None;
                if matches!(kind, Churn::Leave) {
                    state.status = Status::Gone;
                    self.counters.left += 1;
                } else {
                    state.status = Status::Down;
                    state.last_nonce = 0;
                    self.counters.worker_crashes += 1;
                    let back = 3_000 + self.below(12_000);
                    self.queue.after(back, Due::WorkerBack { worker });
                }
            }
        }
    }

    // The coordinator.

    /// A request reaches the coordinator: handled, made durable, answered
    /// (unless the coordinator is down, or dies on the way).
    fn at_coordinator(&mut self, from: usize, epoch: u32, request: Request) -> Result<(), Violation> {
        let Some(machine) = self.node.machine.as_mut() else { return Ok(()) };
        let now = self.queue.now();
        let key = self.workers[from].key;
        let before = self.node.fault.map(|_| fingerprint(machine));
        let mut payloads = Vec::new();
        let (reply, ack) = match request {
            Request::Register => match machine.register(now, key, CLASS) {
                Ok((worker, _)) => (Reply::Registered(worker), Some(Ack::Registration(key))),
                Err(_) => (Reply::Refused, None),
            },
            Request::Poll { nonce } => match machine.read(now, &key, nonce) {
                Ok(worker) => (Reply::View(Box::new(machine.view(Some(worker)))), None),
                Err(_) => (Reply::Refused, None),
            },
            Request::Commit { nonce, round, base, commitment } => {
                let outcome = machine.authenticate(now, &key, nonce, true).and_then(|worker| {
                    Ok((worker, machine.commit(now, worker, nonce, round, base, None, *commitment)?))
                });
                match outcome {
                    Ok((worker, outcome)) => (
                        Reply::Committed(round),
                        Some(Ack::Commitment(round, worker, *commitment, outcome.status())),
                    ),
                    Err(_) => (Reply::Refused, None),
                }
            }
            Request::Reveal { nonce, round, base, bytes } => {
                let digest = Digest::of(&bytes);
                let malformed = model::decode(&bytes).is_none().then(|| Refusal {
                    code: ErrorCode::BadRequest,
                    message: format!("not an update of {UPDATE_LEN} finite values"),
                });
                let outcome = machine.authenticate(now, &key, nonce, true).and_then(|worker| {
                    Ok((worker, machine.reveal(now, worker, nonce, round, base, digest, malformed)?))
                });
                match outcome {
                    Ok((worker, _)) => {
                        payloads.push((digest, bytes.clone()));
                        self.node.updates.insert((round, worker), bytes);
                        (Reply::Revealed(round), Some(Ack::Reveal(round, worker, digest)))
                    }
                    Err(_) => (Reply::Refused, None),
                }
            }
            Request::Answer { nonce, round, answer } => {
                let outcome = machine.authenticate(now, &key, nonce, true).and_then(|worker| {
                    Ok((worker, machine.audit_answered(now, worker, nonce, round, answer)?))
                });
                match outcome {
                    // Without an auditor named, the coordinator replays.
                    Ok((worker, auditor)) => {
                        (Reply::Answered(round), Some(Ack::Answer(round, worker, auditor.is_none())))
                    }
                    Err(_) => (Reply::Refused, None),
                }
            }
            Request::Report { nonce, round, audited, report } => {
                let delegated = machine.authenticate(now, &key, nonce, true).and_then(|auditor| {
                    let (segment, commitment) =
                        machine.delegated_audit(auditor, round, audited).ok_or_else(|| Refusal {
                            code: ErrorCode::NotAudited,
                            message: "no such audit to report".into(),
                        })?;
                    Ok((auditor, segment, commitment))
                });
                match delegated {
                    Ok((auditor, segment, commitment)) => {
                        // As the node judges a report (the rule is the
                        // machine's, `audit_reported`): one that agrees with
                        // the commitment decides; one that disagrees is
                        // checked by the coordinator's own replay, and the
                        // auditor is slashed if that contradicts it.
                        let answer =
                            self.node.store.audit_answer_digest(round, audited).map_err(store_violation)?;
                        let check = if report.passes(&commitment, answer) {
                            ReportCheck::Agrees
                        } else {
                            let base = machine
                                .open_round()
                                .expect("a delegated audit is in the open round")
                                .base_model;
                            let own = model::replay(self.config.seed, round, audited, base, segment);
                            ReportCheck::Rechecked {
                                verdict: verdict_of(own.passes(&commitment, answer)),
                                contradicts: own != report,
                            }
                        };
                        machine.audit_reported(now, round, auditor, nonce, audited, check).map_err(
                            |refusal| {
                                Violation(format!(
                                    "the verdict on {audited}'s delegated audit is refused: {refusal}"
                                ))
                            },
                        )?;
                        (Reply::Reported, Some(Ack::Verdict(round, audited)))
                    }
                    Err(_) => (Reply::Refused, None),
                }
            }
        };
        if self.trace {
            let kind = match &reply {
                Reply::Refused => "refused",
                Reply::View(_) => "view",
                _ => "ok",
            };
            eprintln!("{} REQUEST {:?} -> {kind}", now - T0, self.workers[from].id);
        }
        if !self.drive(VecDeque::new(), &payloads, before)? {
            return Ok(());
        }
        match ack {
            Some(Ack::Registration(key)) => {
                self.acked.registrations.insert(key);
            }
            Some(Ack::Commitment(round, worker, commitment, status)) => {
                self.acked.commitments.insert((round, worker), (commitment, status));
            }
            Some(Ack::Reveal(round, worker, digest)) => {
                self.acked.reveals.insert((round, worker), digest);
            }
            Some(Ack::Verdict(round, audited)) => {
                self.acked.verdicts.insert((round, audited));
            }
            Some(Ack::Answer(round, worker, replayed_here)) => {
                let first = self.acked.answers.insert((round, worker));
                if first && replayed_here {
                    let incarnation = self.node.incarnation;
                    self.queue.after(REPLAY_MS, Due::Replayed { incarnation, round, worker });
                }
            }
            None => {}
        }
        self.reply(from, epoch, reply);
        Ok(())
    }

    fn timer(&mut self, at: u64) -> Result<(), Violation> {
        if self.node.armed != Some(at) {
            return Ok(());
        }
        let Some(machine) = self.node.machine.as_mut() else { return Ok(()) };
        self.node.armed = None;
        let before = self.node.fault.map(|_| fingerprint(machine));
        machine.handle_timeout(self.queue.now());
        self.drive(VecDeque::new(), &[], before).map(drop)
    }

    /// The coordinator's replay of an answered audit is done: the verdict.
    fn replayed(&mut self, incarnation: u64, round: RoundId, worker: WorkerId) -> Result<(), Violation> {
        if incarnation != self.node.incarnation {
            return Ok(());
        }
        let Some(machine) = self.node.machine.as_mut() else { return Ok(()) };
        let Some((segment, commitment)) = machine.answered_audit(round, worker) else { return Ok(()) };
        let base = machine.open_round().expect("an answered audit is in the open round").base_model;
        let answer = self.node.store.audit_answer_digest(round, worker).map_err(store_violation)?;
        let verdict = verdict_of(
            model::replay(self.config.seed, round, worker, base, segment).passes(&commitment, answer),
        );
        let before = self.node.fault.map(|_| fingerprint(machine));
        machine.audit_result(self.queue.now(), round, worker, verdict, None, None).map_err(|refusal| {
            Violation(format!("the verdict on {worker} in round {round} is refused: {refusal}"))
        })?;
        self.drive(VecDeque::new(), &[], before).map(drop)
    }

    /// Checks and aggregates `accepted`'s updates of `round` on `base`
    /// with the real defence: the new model is named by the hash of the
    /// aggregate.
    fn aggregate(
        &mut self,
        round: RoundId,
        base: Digest,
        accepted: &[WorkerId],
    ) -> Result<(Aggregated, crowdtrain_defense::Decision), Violation> {
        let mut updates = Vec::with_capacity(accepted.len());
        for &worker in accepted {
            let bytes = match self.node.updates.get(&(round, worker)) {
                Some(bytes) => bytes.clone(),
                None => self.node.store.payloads(round, &[worker]).map_err(store_violation)?.remove(0),
            };
            let values = model::decode(&bytes).ok_or_else(|| {
                Violation(format!("{worker}'s accepted update in round {round} does not decode"))
            })?;
            updates.push((worker, Digest::of(&bytes), values));
        }
        let submissions: Vec<Submission<'_>> = updates
            .iter()
            .map(|(worker, digest, values)| Submission {
                worker: worker.0,
                values,
                digest: digest.0,
                proven: false,
            })
            .collect();
        let decision = self.node.defense.decide(&submissions, UPDATE_LEN);
        let result = decision.aggregate.as_ref().map(|aggregate| {
            let (model, momentum) = model::next_model(base, aggregate);
            RoundResult { model, momentum, aggregator: None }
        });
        let refused = decision
            .refused
            .iter()
            .map(|(worker, refusal)| (WorkerId(*worker), refusal.to_string()))
            .collect();
        Ok((Aggregated { result, refused }, decision))
    }

    /// Carries out the machine's actions (`pending` first), makes the
    /// batch durable (or fails as the armed fault says) and re-arms the
    /// timer. Returns whether the coordinator is still up.
    fn drive(
        &mut self,
        mut pending: VecDeque<Action>,
        payloads: &[(Digest, Vec<u8>)],
        before: Option<Fingerprint>,
    ) -> Result<bool, Violation> {
        let now = self.queue.now();
        let mut batch = Vec::new();
        let mut replays = Vec::new();
        loop {
            let machine = self.node.machine.as_mut().expect("driving a live coordinator");
            let Some(action) = pending.pop_front().or_else(|| machine.poll_action()) else { break };
            match action {
                Action::Record(event) => batch.push(event),
                Action::Close { round, base_model, accepted } => {
                    // The speculation on the same submissions is this
                    // close's aggregate (the defence has not changed since:
                    // it learns only when a round closes or fails).
                    let speculated = self.node.speculated.take().filter(|speculated| {
                        (speculated.round, speculated.base, &speculated.accepted)
                            == (round, base_model, &accepted)
                    });
                    let (aggregated, decision) = match speculated {
                        Some(speculated) => (speculated.aggregated, speculated.decision),
                        None => self.aggregate(round, base_model, &accepted)?,
                    };
                    let machine = self.node.machine.as_mut().expect("live");
                    let closed = machine.completed_rounds();
                    machine.handle_aggregated(now, round, aggregated);
                    if machine.completed_rounds() > closed {
                        self.node.defense.commit(decision);
                    } else {
                        self.node.defense.set_aside(decision);
                    }
                }
                Action::Speculate { round, base_model, accepted } => {
                    let (aggregated, decision) = self.aggregate(round, base_model, &accepted)?;
                    let machine = self.node.machine.as_mut().expect("live");
                    machine.handle_speculated(now, round, aggregated.clone());
                    self.node.speculated =
                        Some(Speculated { round, base: base_model, accepted, aggregated, decision });
                }
                Action::Withdraw { round, .. } => {
                    self.node.speculated.take_if(|speculated| speculated.round == round);
                }
                Action::OpenProvisional { .. } => {}
                Action::JudgeAudit { round, worker, .. } => replays.push((round, worker)),
            }
        }
        let up = if batch.is_empty() {
            true
        } else {
            // A fault strikes an input whose machine state before it was
            // kept (not a restart's own first batch).
            let fault = if before.is_some() { self.node.fault.take() } else { None };
            let payloads: Vec<(Digest, &[u8])> =
                payloads.iter().map(|(digest, bytes)| (*digest, bytes.as_slice())).collect();
            match fault {
                None => {
                    self.write(&batch, &payloads)?;
                    self.arm_fault();
                    true
                }
                Some(Fault::CrashBeforeWrite) => {
                    self.crash(before.expect("taken while a fault is armed"));
                    false
                }
                Some(Fault::WriteFails) => {
                    self.fail_write(&batch, &payloads)?;
                    self.crash(before.expect("taken while a fault is armed"));
                    false
                }
                Some(Fault::CrashAfterWrite) => {
                    self.write(&batch, &payloads)?;
                    let live = fingerprint(self.node.machine.as_ref().expect("live"));
                    self.crash(live);
                    false
                }
            }
        };
        if up {
            let incarnation = self.node.incarnation;
            for (round, worker) in replays {
                self.queue.after(REPLAY_MS, Due::Replayed { incarnation, round, worker });
            }
            // Armed as the node's timer task is, at whatever the machine
            // names: a passed deadline that changes nothing would fire again
            // at the same instant, and the livelock guard would report it.
            let timeout = self.node.machine.as_ref().expect("live").poll_timeout();
            if let Some(at) = timeout.filter(|&at| self.node.armed != Some(at)) {
                self.node.armed = Some(at);
                self.queue.at(at, Due::Timer { at });
            }
        }
        Ok(up)
    }

    /// Maybe arms a fault for the next write.
    fn arm_fault(&mut self) {
        if self.node.fault.is_some() {
            return;
        }
        let (crash, write) = (self.crash_chance, self.write_chance);
        if self.chance(crash) {
            self.node.fault =
                Some(if self.chance(0.5) { Fault::CrashBeforeWrite } else { Fault::CrashAfterWrite });
        } else if self.chance(write) {
            self.node.fault = Some(Fault::WriteFails);
        }
    }

    /// Makes `batch` durable; the store must take every batch the machine
    /// emits (its constraints catch a fact recorded twice or out of
    /// place), and the rules must hold for it.
    fn write(&mut self, batch: &[Event], payloads: &[(Digest, &[u8])]) -> Result<(), Violation> {
        let now = self.queue.now();
        self.node
            .store
            .record(now, batch, payloads, &self.node.signer)
            .map_err(|error| Violation(format!("the store refused a batch the machine emitted: {error}")))?;
        self.durable.extend_from_slice(batch);
        let knowledge = Knowledge {
            behaviour_by_key: &self.behaviour_by_key,
            excused: &self.excused,
            outages: &self.outages,
        };
        for event in batch {
            if self.trace {
                eprintln!("{} {:?}", now - T0, event);
            }
            self.rules.feed(event, knowledge)?;
            if let Event::RoundOpened { round, .. } = event {
                self.last_opened = *round;
            }
        }
        self.counters.checks += 1 + batch.len() as u64;
        Ok(())
    }

    /// A write that fails part-way: the batch with an event the store
    /// cannot take at its end. Nothing of it may stay.
    fn fail_write(&mut self, batch: &[Event], payloads: &[(Digest, &[u8])]) -> Result<(), Violation> {
        let now = self.queue.now();
        let length = self.node.store.ledger_length().map_err(store_violation)?;
        let mut poisoned = batch.to_vec();
        // A reveal whose bytes are missing: refused after the batch's own
        // rows are written in the transaction.
        poisoned.push(Event::Reveal {
            round: 0,
            worker: WorkerId(0),
            payload: Digest::of(b"simnet: bytes that were never sent"),
            status: Recorded::Late,
            nonce: 0,
            received_unix_ms: now,
        });
        if self.node.store.record(now, &poisoned, payloads, &self.node.signer).is_ok() {
            return Err(Violation("the store took a reveal without its bytes".into()));
        }
        let after = self.node.store.ledger_length().map_err(store_violation)?;
        if after != length {
            return Err(Violation(format!(
                "a failed write half-applied: the ledger went from {length} to {after}"
            )));
        }
        self.counters.write_faults += 1;
        self.counters.checks += 1;
        Ok(())
    }

    /// The coordinator dies: everything in memory is gone; it restarts
    /// after [`RESTART_MS`], and must then be `expected`.
    fn crash(&mut self, expected: Fingerprint) {
        if self.trace {
            eprintln!("{} CRASH", self.queue.now() - T0);
        }
        self.node.machine = None;
        self.node.incarnation += 1;
        self.node.armed = None;
        self.node.updates.clear();
        self.node.speculated = None;
        self.node.expected = Some(expected);
        self.outages.insert(self.last_opened);
        self.counters.crashes += 1;
        self.queue.after(RESTART_MS, Due::Restart);
    }

    /// The coordinator restarts from its store: the restored machine must
    /// be the one that died, as far as it was durable, and nothing
    /// acknowledged may be missing.
    fn restart(&mut self) -> Result<(), Violation> {
        let now = self.queue.now();
        let events = self.node.store.events().map_err(store_violation)?;
        if events != self.durable {
            return Err(Violation("after a crash the store holds other events than were written".into()));
        }
        invariants::check_acked(&events, &self.acked)?;
        let mut machine = Coordinator::restore(
            self.settings.clone(),
            self.run_id,
            self.initial_model,
            self.master,
            &events,
            now,
        );
        let actions: VecDeque<Action> = std::iter::from_fn(|| machine.poll_action()).collect();
        let restored = fingerprint(&machine);
        let expected = self.node.expected.take().expect("a crash says what to expect");
        let decided_on_restart = actions.iter().any(|action| matches!(action, Action::Record(_)));
        let same = if decided_on_restart {
            // It opened or finished a round on its own first: what was
            // durable must still be there.
            (restored.completed_rounds, restored.model) == (expected.completed_rounds, expected.model)
        } else {
            self.counters.restores_compared += 1;
            restored == expected
        };
        if !same {
            return Err(Violation(format!(
                "the restored coordinator is not the one that crashed:\n  restored {restored:?}\n  expected {expected:?}"
            )));
        }
        self.counters.checks += 2;
        // As the node restores its defence: the accepted updates of the
        // rounds before the open one (the open round's are not earlier).
        let next_decided = machine.open_round().map_or(i64::MAX as u64, |round| round.id);
        let window = crowdtrain_defense::RESUBMISSION_WINDOW_ROUNDS as u64;
        let earlier = self.node.store.earlier_digests(next_decided, window).map_err(store_violation)?;
        self.node.defense = new_defense(earlier);
        self.node.machine = Some(machine);
        self.drive(actions, &[], None).map(drop)
    }
}

/// The coordinator's verdict on a replay that did or did not reproduce the
/// commitment and the answer.
fn verdict_of(passes: bool) -> Verdict {
    if passes {
        Verdict::Passed
    } else {
        Verdict::Failed("the replay does not reproduce the committed trace".into())
    }
}

fn new_defense(earlier: HashSet<[u8; 32]>) -> ModelDefense {
    ModelDefense::restore(CheckConfig::default(), model::AGGREGATOR, Default::default(), earlier)
}

fn store_violation(error: crowdtrain_store::StoreError) -> Violation {
    Violation(format!("the store failed: {error}"))
}
