//! The simulated world: the real coordinator driver
//! ([`Driver`]`<`[`SimTraining`](crate::model::SimTraining)`>`, or
//! `<`[`ModelTraining`](crowdtrain_coordinator::ModelTraining)`>` in
//! model mode: [`Mode`]) fed the workers' requests, its timer
//! and its replays through its inputs, the workers, the network between
//! them and the faults, all on one virtual clock. The world is the
//! driver's shell ([`SimShell`]): it fails or crashes the batch write as
//! the seed says, and restarts a crashed coordinator through
//! [`Driver::open`] on the store it left.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Instant;

use crowdtrain_coordinator::clock::{Clock, VirtualClock};
use crowdtrain_coordinator::training::Audited;
use crowdtrain_coordinator::{
    CheckpointWrite, CoordinatorError, Driver, DriverError, Run, Sent, Shell, Training,
};
use crowdtrain_data::rng::{RngKey, keyed_rng, uniform_below, unit_f64};
use crowdtrain_defense::CheckConfig;
use crowdtrain_protocol::coordinator::{OpenRound, RoundPhase};
use crowdtrain_protocol::ledger::Event;
use crowdtrain_protocol::wire::{ErrorCode, Phase};
use crowdtrain_protocol::{
    Action, Assignment, Commitment, Coordinator, Digest, Identity, MAX_OUTER_DELAY, Opened, PublicKey,
    Recorded, RoundId, RoundView, Settings, TrainingRecipe, WorkerId,
};
use crowdtrain_store::Store;
use rand_chacha::ChaCha8Rng;

use crate::invariants::{self, Acked, Copies, Knowledge, Rules, Violation};
use crate::mode::Mode;
use crate::model::{self, Behaviour, SEGMENTS};
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

/// Something due at a virtual time (`A`: an audit answer, `R`: an
/// auditor's report, as the training mode has them).
enum Due<A, R> {
    ToCoordinator {
        from: usize,
        epoch: u32,
        request: Request<A, R>,
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
enum Request<A, R> {
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
        /// The boundary leaves, under `audit.replay = "from-start"`.
        leaves: Vec<Digest>,
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
        answer: A,
    },
    /// A delegated auditor's report on `audited`'s segment.
    Report {
        nonce: u64,
        round: RoundId,
        audited: WorkerId,
        report: R,
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

/// A round's work as a worker holds it, from its assignment until the
/// round ends (under a delayed outer update, one per live round it is
/// assigned in).
struct Task<W> {
    base: Digest,
    assignment: Assignment,
    work: Option<W>,
    committed: bool,
    answered: bool,
    revealed: bool,
}

struct SimWorker<W> {
    key: PublicKey,
    behaviour: Behaviour,
    slow: bool,
    status: Status,
    /// Bumped at each crash: timers and answers of the previous life are
    /// ignored.
    epoch: u32,
    id: Option<WorkerId>,
    last_nonce: u64,
    /// Its tasks by round: the live rounds it is assigned in, as its last
    /// view showed them. At most one is training (no work yet); the others
    /// trained and settle (commit, answer the audit, reveal) while it trains
    /// the next, as the real pipelined worker does.
    tasks: BTreeMap<RoundId, Task<W>>,
    /// The assignments its last view showed, oldest round first: what it
    /// trains next the moment a training ends, without another poll (the
    /// real worker keeps the view it came with).
    queued: Vec<Assignment>,
    /// The delegated audits it started replaying, `(round, audited)`.
    audits: BTreeSet<(RoundId, WorkerId)>,
    done: bool,
}

impl<W> SimWorker<W> {
    /// Its task for `round`, if it holds one.
    fn task_of(&mut self, round: RoundId) -> Option<&mut Task<W>> {
        self.tasks.get_mut(&round)
    }

    /// Whether a training is under way (a task without work yet).
    fn training(&self) -> bool {
        self.tasks.values().any(|task| task.work.is_none())
    }

    /// The first assignment it should train now, if any: none while it
    /// trains; else the first of `assignments` (oldest round first) that it
    /// holds no task for, past every round it holds one for (a pipelined
    /// worker never goes back to a round older than one it trained).
    fn due<'a>(&self, assignments: impl IntoIterator<Item = &'a Assignment>) -> Option<&'a Assignment> {
        if self.training() {
            return None;
        }
        let newest = self.tasks.keys().next_back().copied();
        assignments.into_iter().find(|assignment| {
            !self.tasks.contains_key(&assignment.round)
                && newest.is_none_or(|newest| assignment.round > newest)
        })
    }
}

/// The coordinator process: the driver while it is up, the store it left
/// while it is down, and the shell's timer.
struct Node<M: Mode> {
    driver: Option<Driver<M::Training>>,
    /// A crashed driver's store, until the restart opens it again.
    down: Option<Store>,
    /// Bumped at each crash: replays of the previous process are lost.
    incarnation: u64,
    signer: Arc<Identity>,
    /// The driver's clock: set to the virtual time before every input.
    clock: Arc<VirtualClock>,
    /// When the timer is armed for.
    armed: Option<u64>,
    /// The fault armed for the next non-empty batch, with the machine as it
    /// was before the input being handled.
    fault: Option<Fault>,
    /// The restored machine must look like this (what the dead one had
    /// made durable).
    expected: Option<Fingerprint>,
}

impl<M: Mode> Node<M> {
    /// The live driver for an input at `now` (its clock set to it), with a
    /// shell armed with the pending fault and, if one is armed, the
    /// machine as it was before the input; none while it is down.
    fn input(&mut self, now: u64) -> Option<Input<'_, M>> {
        let driver = self.driver.as_mut()?;
        self.clock.advance(now - self.clock.now_unix_ms());
        let before = self.fault.map(|_| fingerprint(&driver.machine));
        Some((driver, SimShell::new(self.fault), before))
    }

    fn store(&self) -> &Store {
        match &self.driver {
            Some(driver) => &driver.store,
            None => self.down.as_ref().expect("a coordinator that is down keeps its store"),
        }
    }
}

/// The live driver for an input, the shell for it, and the machine as it
/// was before it if a fault is armed ([`Node::input`]).
type Input<'a, M> = (&'a mut Driver<<M as Mode>::Training>, SimShell<M>, Option<Fingerprint>);

/// The world as the driver's [`Shell`] during one input: the fault that
/// strikes its batch write, if one is armed, and what the driver asked for.
struct SimShell<M> {
    /// The fault for this input's batch, if one is armed and the batch
    /// records anything.
    fault: Option<Fault>,
    /// The fault that struck.
    struck: Option<Fault>,
    /// A check of the write failed.
    violation: Option<Violation>,
    /// Stored answers the driver asked to replay.
    replays: Vec<(RoundId, WorkerId)>,
    mode: std::marker::PhantomData<M>,
}

impl<M> SimShell<M> {
    fn new(fault: Option<Fault>) -> Self {
        Self { fault, struck: None, violation: None, replays: Vec::new(), mode: std::marker::PhantomData }
    }

    /// A write that fails part-way: the batch with an event the store
    /// cannot take at its end. Nothing of it may stay.
    fn fail_write(
        store: &mut Store,
        now: u64,
        events: &[Event],
        payloads: &[(Digest, &[u8])],
        signer: &Identity,
    ) -> Result<CoordinatorError, Violation> {
        let length = store.ledger_length().map_err(store_violation)?;
        let mut poisoned = events.to_vec();
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
        let Err(error) = store.record(now, &poisoned, payloads, signer) else {
            return Err(Violation("the store took a reveal without its bytes".into()));
        };
        let after = store.ledger_length().map_err(store_violation)?;
        if after != length {
            return Err(Violation(format!(
                "a failed write half-applied: the ledger went from {length} to {after}"
            )));
        }
        Ok(error.into())
    }
}

impl<M: Mode> Shell<M::Training> for SimShell<M> {
    // Workers poll for their rounds and download models from the
    // checkpoints: nothing to show or serve from memory.
    fn show(&mut self, _opened: Opened) {}

    fn serve(&mut self, _model: Digest, _bytes: Arc<Vec<u8>>) {}

    fn opened_ahead(&mut self, _after: RoundId) {}

    fn withdrawn(&mut self, _round: RoundId, _provisional: Option<RoundId>) {}

    /// Written at once (real training's checkpoints; the stand-in has
    /// none): before the round that trains on them opens, as the node's
    /// bucket and files are by the time a worker asks.
    fn write_behind(&mut self, write: CheckpointWrite) {
        if let Err(error) = write.run() {
            self.violation = Some(Violation(format!("a round's checkpoints could not be written: {error}")));
        }
    }

    fn written(&mut self) -> Result<(), CoordinatorError> {
        Ok(())
    }

    fn replay(&mut self, replay: <M::Training as Training>::Replay) {
        self.replays.push(M::replay_of(&replay));
    }

    /// The store must take every batch the machine emits (its constraints
    /// catch a fact recorded twice or out of place), unless the armed
    /// fault strikes.
    fn record(
        &mut self,
        store: &mut Store,
        now: u64,
        events: &[Event],
        payloads: &[(Digest, &[u8])],
        signer: &Identity,
    ) -> Result<(), CoordinatorError> {
        if events.is_empty() {
            return Ok(());
        }
        let fault = self.fault.take();
        self.struck = fault;
        let stopped = || CoordinatorError::Stopped("the coordinator crashed".into());
        match fault {
            Some(Fault::CrashBeforeWrite) => return Err(stopped()),
            Some(Fault::WriteFails) => {
                return Err(match Self::fail_write(store, now, events, payloads, signer) {
                    Ok(error) => error,
                    Err(violation) => {
                        self.violation = Some(violation);
                        stopped()
                    }
                });
            }
            None | Some(Fault::CrashAfterWrite) => {}
        }
        store.record(now, events, payloads, signer).map_err(|error| {
            self.violation =
                Some(Violation(format!("the store refused a batch the machine emitted: {error}")));
            error.into()
        })
    }
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
    /// Under a delayed outer update, the rounds opened ahead of the open
    /// one, oldest first, with their standings.
    ahead: Vec<OpenRound>,
}

fn fingerprint(machine: &Coordinator) -> Fingerprint {
    let durable = |mut round: OpenRound| {
        round.early_close_ms = None;
        // A restore gives a round in its reveal phase a whole reveal window
        // again (workers could not reach the coordinator): not recorded.
        if let RoundPhase::Revealing { deadline_ms } = &mut round.phase {
            *deadline_ms = 0;
        }
        // Nor is the end of a round ahead's reveal phase: a restore ends it
        // if its deadline is no later than the last recorded input (the
        // dead machine's timer may not have fired yet) and reopens it
        // otherwise (the timer may have fired with nothing to record).
        // Always false without a delay.
        round.reveal_over = false;
        for standing in round.standings.values_mut() {
            standing.judging = false;
        }
        round
    };
    Fingerprint {
        completed_rounds: machine.completed_rounds(),
        model: machine.model(),
        workers: machine.worker_count(),
        open: machine.open_round().cloned().map(durable),
        ahead: machine.ahead_rounds().cloned().map(durable).collect(),
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

pub(crate) struct World<M: Mode> {
    config: SimConfig,
    /// The training: what workers compute and the coordinator replays.
    mode: M,
    queue: Queue<Due<M::Answer, M::Report>>,
    rng: ChaCha8Rng,
    settings: Settings,
    run_id: Digest,
    initial_model: Digest,
    master: [u8; 32],
    node: Node<M>,
    workers: Vec<SimWorker<M::Work>>,
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
    /// The run's `[outer] delay` (what [`Rules::with_outer_delay`] takes).
    pub outer_delay: u32,
    pub acked: Acked,
    pub behaviour_by_key: BTreeMap<PublicKey, Behaviour>,
    pub excused: BTreeSet<(PublicKey, RoundId)>,
    pub outages: BTreeSet<RoundId>,
    /// Whose update the run's copiers copy.
    pub copies: Copies,
    /// The model the run finished on (a real checkpoint's digest in model
    /// mode), if it finished.
    pub final_model: Option<Digest>,
}

/// The recipe the simulated rounds train with (tiny: in model mode, an MLP
/// round of 8 steps of 4 examples).
pub(crate) fn recipe(seed: u64) -> TrainingRecipe {
    TrainingRecipe { inner_steps: 8, batch_size: 4, ..TrainingRecipe::with_seed(seed) }
}

fn quorum(workers: u32) -> u32 {
    (workers / 4).max(2)
}

impl<M: Mode> World<M> {
    pub(crate) fn new(config: SimConfig, mut mode: M) -> Result<Self, Violation> {
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
            replay_from_start: config.replay_from_start,
            bond: config.bond,
            vesting_rounds: 2,
            recipe: recipe(seed),
            contract_extra_rounds: 0,
            outer_delay: config.outer_delay,
        };
        let signer = Arc::new(Identity::from_seed(
            Digest::of(&[&b"simnet coordinator "[..], &seed.to_le_bytes()].concat()).0,
        ));
        let mut store = Store::open_in_memory().expect("an in-memory store opens");
        let run = mode.run_record(seed, &signer, T0)?;
        let (run_id, initial_model) = (run.run_id, run.initial_model);
        store.create_run(&run, Digest::of(b"{}"), &signer).expect("the run is created");
        let master = Digest::of(&[&b"simnet audit master "[..], &seed.to_le_bytes()].concat()).0;
        let batches_per_round = BATCHES_PER_WORKER_ROUND * f64::from(config.workers.max(1));
        let crash_chance = (config.faults.crash / batches_per_round).min(1.0);
        let write_chance = (config.faults.write / batches_per_round).min(1.0);
        let node = Node {
            driver: None,
            down: Some(store),
            incarnation: 0,
            signer,
            clock: Arc::new(VirtualClock::new(T0)),
            armed: None,
            fault: None,
            expected: None,
        };
        let mut world = Self {
            mode,
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
            rules: Rules::new(quorum(config.workers), config.bond, crate::STAKE)
                .with_outer_delay(config.outer_delay),
            durable: Vec::new(),
            last_opened: 0,
            counters: Counters::default(),
            trace: std::env::var_os("SIMNET_TRACE").is_some(),
            crash_chance,
            write_chance,
            config,
        };
        world.durable = world.node.store().events().expect("the store reads");
        let store = world.node.down.take().expect("just created");
        let driver = Driver::open(world.driver_run(), world.mode.setup(), store)
            .map_err(|error| Violation(format!("a new run does not open: {error}")))?;
        world.node.driver = Some(driver);
        world.populate(joins);
        Ok(world)
    }

    /// What every driver of this run reads, for an opening.
    fn driver_run(&self) -> Run {
        Run {
            settings: self.settings.clone(),
            checks: CheckConfig::default(),
            aggregator: model::AGGREGATOR,
            audit_master: self.master,
            identity: Arc::clone(&self.node.signer),
            clock: self.node.clock.clone(),
        }
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
        let near_copiers = (self.config.near_copiers * f64::from(self.config.workers)).round() as usize;
        let forgers = (self.config.forgers * f64::from(self.config.workers)).round() as usize;
        for index in 0..self.config.workers as usize {
            // Each seed starts the attacks at another one, so that small runs
            // see every kind over a few seeds.
            let attack = (index + self.config.seed as usize) % Behaviour::ATTACKS.len();
            let behaviour = if index < attackers {
                Behaviour::ATTACKS[attack]
            } else if index < attackers + near_copiers {
                Behaviour::NearCopier
            } else if index < attackers + near_copiers + forgers {
                Behaviour::Forger
            } else {
                Behaviour::Honest
            };
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
            tasks: BTreeMap::new(),
            queued: Vec::new(),
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
    fn send(&mut self, due: impl Fn() -> Due<M::Answer, M::Report>) {
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

    fn request(&mut self, from: usize, request: Request<M::Answer, M::Report>) {
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
                Due::Trained { worker, epoch, round, base } => self.trained(worker, epoch, round, base)?,
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
        let sealed = self.node.store().ledger().map_err(store_violation)?;
        let events = invariants::check_ledger(&sealed, &key)?;
        if events != self.durable {
            return Err(Violation("the ledger is not the sequence of batches written".into()));
        }
        // Again from the verified ledger, from the start.
        let mut rules = Rules::new(self.settings.quorum, self.settings.bond, self.settings.stake)
            .with_outer_delay(self.settings.outer_delay);
        rules.feed_all(&events, self.knowledge())?;
        invariants::check_acked(&events, &self.acked)?;
        let store = self.node.store();
        let rounds_reproduced = self.mode.fault_free(&events, self.initial_model, |round, workers| {
            store.payloads(round, workers).map_err(store_violation)
        })?;
        // The ledger alone restores the final state.
        if let Some(machine) =
            self.node.driver.as_ref().map(|driver| &driver.machine).filter(|_| self.finished())
        {
            let now = self.queue.now();
            let (settings, run_id, master) = (self.settings.clone(), self.run_id, self.master);
            let restored = Coordinator::restore(settings, run_id, self.initial_model, master, &events, now);
            if fingerprint(&restored) != fingerprint(machine) {
                return Err(Violation("the final state is not what its ledger restores".into()));
            }
        }
        self.node.store().integrity_check().map_err(store_violation)?;
        self.node.store().check_worker_totals().map_err(|error| {
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
            store: match self.node.driver {
                Some(driver) => driver.into_store(),
                None => self.node.down.expect("a coordinator that is down keeps its store"),
            },
            coordinator: key,
            quorum: self.settings.quorum,
            bond: self.settings.bond,
            outer_delay: self.settings.outer_delay,
            acked: self.acked,
            behaviour_by_key: self.behaviour_by_key,
            excused: self.excused,
            outages: self.outages,
            copies: self.mode.copies(),
            final_model: events.iter().rev().find_map(|event| match event {
                Event::RunFinished { final_model } => Some(*final_model),
                _ => None,
            }),
        })
    }

    fn knowledge(&self) -> Knowledge<'_> {
        Knowledge {
            behaviour_by_key: &self.behaviour_by_key,
            excused: &self.excused,
            outages: &self.outages,
            copies: self.mode.copies(),
        }
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

    fn trained(&mut self, worker: usize, epoch: u32, round: RoundId, base: Digest) -> Result<(), Violation> {
        let state = &mut self.workers[worker];
        if state.status != Status::Up || state.epoch != epoch || state.id.is_none() {
            return Ok(());
        }
        let behaviour = state.behaviour;
        let Some(task) = state.tasks.get_mut(&round).filter(|task| task.base == base) else {
            return Ok(());
        };
        let work = self.mode.work(behaviour, &task.assignment)?;
        let commitment = M::commitment(&work);
        let leaves = if self.settings.replay_from_start { M::boundaries(&work) } else { Vec::new() };
        task.work = Some(work);
        let nonce = self.nonce(worker);
        self.request(
            worker,
            Request::Commit { nonce, round, base, commitment: Box::new(commitment), leaves },
        );
        // Pipelined (under a delayed outer update): straight on to the next
        // round its last view showed it, while this one settles.
        let state = &self.workers[worker];
        if let Some(next) = state.due(&state.queued).cloned() {
            self.train(worker, next);
        }
        Ok(())
    }

    /// `worker` starts training `assignment` (its task for the round, work
    /// to come).
    fn train(&mut self, worker: usize, assignment: Assignment) {
        let (round, base) = (assignment.round, assignment.base_model);
        let task = Task { base, assignment, work: None, committed: false, answered: false, revealed: false };
        self.workers[worker].tasks.insert(round, task);
        let delay = self.train_ms(worker);
        let epoch = self.workers[worker].epoch;
        self.queue.after(delay, Due::Trained { worker, epoch, round, base });
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

    /// What a worker does with the rounds it sees: the live rounds, the
    /// open one first and under a delayed outer update the rounds opened
    /// ahead of it (the view's `ahead` chain, walked at most
    /// [`MAX_OUTER_DELAY`] + 1 deep whatever it holds, as the real worker
    /// does). It replays the delegated audits they name, drops the tasks of
    /// rounds that ended (or opened again on another base: a withdrawn
    /// provisional round), sends what each task still needs, and trains
    /// the first round it has not trained once no training is under way.
    fn act_on(&mut self, worker: usize, view: RoundView) {
        if view.phase == Phase::Finished {
            self.workers[worker].done = true;
            return;
        }
        let mut chain = Vec::new();
        let mut next = Some(view);
        while let Some(mut level) = next.take()
            && chain.len() <= MAX_OUTER_DELAY as usize
        {
            next = level.ahead.take().map(|ahead| *ahead);
            chain.push(level);
        }
        if chain.iter().all(|level| level.assignment.is_none()) {
            return;
        }
        for level in &chain {
            // A delegated audit to replay (beside its own work, as the real
            // worker's auditing loop does): once per audit.
            if let (Some(task), Some(assignment)) = (level.audit_task, &level.assignment)
                && !level.provisional
                && assignment.round == level.round.unwrap_or(u64::MAX)
                && self.workers[worker].audits.insert((assignment.round, task.worker))
            {
                let epoch = self.workers[worker].epoch;
                let (round, base) = (assignment.round, assignment.base_model);
                let job =
                    AuditJob { worker, epoch, round, base, audited: task.worker, segment: task.segment };
                self.queue.after(REPLAY_MS, Due::AuditReplayed(job));
            }
        }
        let assignments: Vec<Assignment> =
            chain.iter().filter_map(|level| level.assignment.clone()).collect();
        let state = &mut self.workers[worker];
        state.tasks.retain(|&round, task| {
            assignments
                .iter()
                .any(|assignment| (assignment.round, assignment.base_model) == (round, task.base))
        });
        state.queued = assignments;
        for level in &chain {
            let Some(assignment) = &level.assignment else { continue };
            let state = &self.workers[worker];
            if state.tasks.contains_key(&assignment.round) {
                self.settle(worker, level);
            } else if let Some(due) = state.due([assignment]).cloned() {
                self.train(worker, due);
            }
        }
    }

    /// Sends what `worker`'s task in the round `view` shows (a live round
    /// it is assigned in) still needs: its commitment, then its audit
    /// answer, then its reveal (in the reveal phase, or at once under
    /// `early_reveals`), once trained; one request a round and view.
    fn settle(&mut self, worker: usize, view: &RoundView) {
        let Some(round) = view.assignment.as_ref().map(|assignment| assignment.round) else { return };
        let state = &mut self.workers[worker];
        let Some(task) = state.tasks.get_mut(&round) else { return };
        let Some(work) = &task.work else { return };
        let (work, base) = (work.clone(), task.base);
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
            let commitment = Box::new(M::commitment(&work));
            let leaves = if self.settings.replay_from_start { M::boundaries(&work) } else { Vec::new() };
            self.request(worker, Request::Commit { nonce, round, base, commitment, leaves });
            return;
        }
        // One request at a time, as the real worker awaits each: the audit
        // answer first, then the reveal.
        if let (Some(segment), false, true) = (view.audit, answered, view.committed) {
            let nonce = self.nonce(worker);
            self.request(worker, Request::Answer { nonce, round, answer: M::answer(&work, segment) });
            return;
        }
        // Early (in the commit phase) once its commitment is in, if the
        // run's workers reveal early.
        let due = view.phase == Phase::Revealing || self.config.early_reveals;
        if due && view.committed && !revealed {
            let nonce = self.nonce(worker);
            self.request(worker, Request::Reveal { nonce, round, base, bytes: M::reveal(&work) });
        }
    }

    /// A delegated auditor's replay is done: it reports. An honest one
    /// reports what its replay gave; an attacker vouches for a cheat and
    /// accuses an honest worker ([`Mode::report`]).
    fn audit_replayed(&mut self, job: AuditJob) {
        let AuditJob { worker, epoch, round, base, audited, segment } = job;
        let state = &self.workers[worker];
        if state.status != Status::Up || state.epoch != epoch {
            return;
        }
        let (honest, auditor) = (state.behaviour.is_honest(), state.id.expect("an auditor is registered"));
        let accused =
            self.workers.iter().find(|other| other.id == Some(audited)).map(|other| other.behaviour);
        let driver = self.node.driver.as_mut();
        let Some(report) = self.mode.report(driver, honest, accused, auditor, round, base, audited, segment)
        else {
            return;
        };
        let nonce = self.nonce(worker);
        self.request(worker, Request::Report { nonce, round, audited, report });
    }

    /// The rounds a worker that goes down now may miss: its audit there
    /// may go unanswered. The live rounds (the round opened last and,
    /// under a delayed outer update, the `delay` before it) and the next.
    fn excuse(&mut self, worker: usize) {
        let key = self.workers[worker].key;
        for round in self.live_rounds().chain([self.last_opened + 1]) {
            self.excused.insert((key, round));
        }
    }

    /// The rounds that may be live now: the round opened last and, under a
    /// delayed outer update `d`, the `d` before it.
    fn live_rounds(&self) -> std::ops::RangeInclusive<RoundId> {
        let delay = u64::from(self.settings.outer_delay);
        self.last_opened.saturating_sub(delay)..=self.last_opened
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
                state.tasks.clear();
                state.queued.clear();
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

    /// A request reaches the coordinator: handled by the driver, made
    /// durable, answered (unless the coordinator is down, or dies on the
    /// way).
    fn at_coordinator(
        &mut self,
        from: usize,
        epoch: u32,
        request: Request<M::Answer, M::Report>,
    ) -> Result<(), Violation> {
        let now = self.queue.now();
        let key = self.workers[from].key;
        let Some((driver, mut shell, before)) = self.node.input(now) else { return Ok(()) };
        let sent = |worker, nonce, round| Sent { now, worker, nonce, round };
        let authenticate = |driver: &Driver<M::Training>, nonce| {
            driver.machine.authenticate(now, &key, nonce, true).map_err(DriverError::Refused)
        };
        let answer = match request {
            Request::Register => driver
                .register_unsigned(now, key, CLASS, &mut shell)
                .map(|worker| (Reply::Registered(worker), Some(Ack::Registration(key)))),
            Request::Poll { nonce } => driver
                .read(now, &key, nonce, &mut shell)
                .map(|worker| (Reply::View(Box::new(driver.machine.view(Some(worker)))), None)),
            Request::Commit { nonce, round, base, commitment, leaves } => authenticate(driver, nonce)
                .and_then(|worker| {
                    let sent = sent(worker, nonce, round);
                    let (outcome, _) = driver.commit(sent, base, None, *commitment, &leaves, &mut shell)?;
                    Ok((
                        Reply::Committed(round),
                        Some(Ack::Commitment(round, worker, *commitment, outcome.status())),
                    ))
                }),
            Request::Reveal { nonce, round, base, bytes } => authenticate(driver, nonce).and_then(|worker| {
                let digest = Digest::of(&bytes);
                let update = M::decode(driver, &bytes);
                let payloads = [(digest, bytes.as_slice())];
                driver.reveal(sent(worker, nonce, round), base, digest, update, &payloads, &mut shell)?;
                Ok((Reply::Revealed(round), Some(Ack::Reveal(round, worker, digest))))
            }),
            Request::Answer { nonce, round, answer } => authenticate(driver, nonce).and_then(|worker| {
                let recorded = M::answered(driver, sent(worker, nonce, round), &answer, &mut shell)?;
                let ack = recorded.map(|replayed_here| Ack::Answer(round, worker, replayed_here));
                Ok((Reply::Answered(round), ack))
            }),
            Request::Report { nonce, round, audited, report } => {
                authenticate(driver, nonce).and_then(|auditor| {
                    match driver.audit_report(sent(auditor, nonce, round), audited, &report, &mut shell) {
                        Ok(_) => Ok((Reply::Reported, Some(Ack::Verdict(round, audited)))),
                        // Once the audit is the auditor's to report, the
                        // machine takes any report (the rule is
                        // `audit_reported`'s).
                        Err(DriverError::Refused(refusal)) if refusal.code != ErrorCode::NotAudited => {
                            Err(DriverError::Unjudgeable(format!(
                                "the verdict on {audited}'s delegated audit is refused: {refusal}"
                            )))
                        }
                        Err(error) => Err(error),
                    }
                })
            }
        };
        let (reply, ack, halted) = match answer {
            Ok((reply, ack)) => (reply, ack, None),
            Err(DriverError::Refused(_)) => {
                // What the machine decided on the way (a deadline passed)
                // is carried out all the same, as after any input.
                let halted = driver.carry_out(&[], &mut shell).err();
                (Reply::Refused, None, halted)
            }
            Err(error @ DriverError::Halted(_)) => (Reply::Refused, None, Some(error)),
            Err(error) => {
                return Err(Violation(format!("the coordinator could not take a request: {error}")));
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
        if !self.after_input(shell, before, halted)? {
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
        if self.node.driver.is_none() {
            return Ok(());
        }
        self.node.armed = None;
        let Some((driver, mut shell, before)) = self.node.input(self.queue.now()) else { return Ok(()) };
        let halted = driver.tick(self.queue.now(), &mut shell).err();
        self.after_input(shell, before, halted).map(drop)
    }

    /// The coordinator's replay of an answered audit is done: the verdict.
    fn replayed(&mut self, incarnation: u64, round: RoundId, worker: WorkerId) -> Result<(), Violation> {
        if incarnation != self.node.incarnation {
            return Ok(());
        }
        let now = self.queue.now();
        let Some((driver, mut shell, before)) = self.node.input(now) else { return Ok(()) };
        let machine = &driver.machine;
        let Some((segment, commitment)) = machine.answered_audit(round, worker) else { return Ok(()) };
        let assignment = machine.assignment_in(round, worker).expect("audited workers are participants");
        let audit = Audited { round, worker, segment, commitment, assignment };
        let verdict = M::replay(driver, &audit).map_err(|error| {
            Violation(format!("the coordinator could not replay {worker}'s audit in round {round}: {error}"))
        })?;
        let halted = match driver.replay_finished(now, round, worker, verdict, &mut shell) {
            Ok(()) => None,
            Err(DriverError::Refused(refusal)) => {
                return Err(Violation(format!(
                    "the verdict on {worker} in round {round} is refused: {refusal}"
                )));
            }
            Err(error) => Some(error),
        };
        self.after_input(shell, before, halted).map(drop)
    }

    /// What an input to the driver left: the fault that struck its write
    /// (the coordinator dies), or the checks of what it made durable, a
    /// fault armed for a later write, the replays it asked for and the
    /// timer re-armed. Returns whether the coordinator is still up.
    fn after_input(
        &mut self,
        shell: SimShell<M>,
        before: Option<Fingerprint>,
        halted: Option<DriverError>,
    ) -> Result<bool, Violation> {
        if let Some(violation) = shell.violation {
            return Err(violation);
        }
        let driver = self.node.driver.as_mut().expect("an input reached a live driver");
        let events = driver.take_batch().events;
        if let Some(fault) = shell.struck {
            self.node.fault = None;
            match fault {
                Fault::CrashBeforeWrite => self.crash(before.expect("taken while a fault is armed")),
                Fault::WriteFails => {
                    self.counters.write_faults += 1;
                    self.counters.checks += 1;
                    self.crash(before.expect("taken while a fault is armed"));
                }
                Fault::CrashAfterWrite => {
                    self.written(&events)?;
                    let live = fingerprint(&self.node.driver.as_ref().expect("live").machine);
                    self.crash(live);
                }
            }
            return Ok(false);
        }
        if let Some(error) = halted {
            return Err(Violation(format!("the coordinator halted: {error}")));
        }
        if !events.is_empty() {
            self.written(&events)?;
            self.arm_fault();
        }
        let incarnation = self.node.incarnation;
        for (round, worker) in shell.replays {
            self.queue.after(REPLAY_MS, Due::Replayed { incarnation, round, worker });
        }
        // Armed as the node's timer task is, at whatever the machine
        // names: a passed deadline that changes nothing would fire again
        // at the same instant, and the livelock guard would report it.
        let timeout = self.node.driver.as_ref().expect("live").machine.poll_timeout();
        if let Some(at) = timeout.filter(|&at| self.node.armed != Some(at)) {
            self.node.armed = Some(at);
            self.queue.at(at, Due::Timer { at });
        }
        Ok(true)
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

    /// A batch is durable: the rules must hold for it.
    fn written(&mut self, batch: &[Event]) -> Result<(), Violation> {
        let now = self.queue.now();
        self.durable.extend_from_slice(batch);
        let knowledge = Knowledge {
            behaviour_by_key: &self.behaviour_by_key,
            excused: &self.excused,
            outages: &self.outages,
            copies: self.mode.copies(),
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

    /// The coordinator dies: everything in memory is gone; it restarts
    /// after [`RESTART_MS`], and must then be `expected`.
    fn crash(&mut self, expected: Fingerprint) {
        if self.trace {
            eprintln!("{} CRASH", self.queue.now() - T0);
        }
        let driver = self.node.driver.take().expect("a live coordinator crashes");
        self.node.down = Some(driver.into_store());
        self.node.incarnation += 1;
        self.node.armed = None;
        self.node.expected = Some(expected);
        let live: Vec<RoundId> = self.live_rounds().collect();
        self.outages.extend(live);
        self.counters.crashes += 1;
        self.queue.after(RESTART_MS, Due::Restart);
    }

    /// The coordinator restarts from its store ([`Driver::open`]): the
    /// restored machine must be the one that died, as far as it was
    /// durable, and nothing acknowledged may be missing.
    fn restart(&mut self) -> Result<(), Violation> {
        let now = self.queue.now();
        let store = self.node.down.take().expect("a crashed coordinator restarts");
        let events = store.events().map_err(store_violation)?;
        if events != self.durable {
            return Err(Violation("after a crash the store holds other events than were written".into()));
        }
        invariants::check_acked(&events, &self.acked)?;
        self.node.clock.advance(now - self.node.clock.now_unix_ms());
        let driver = Driver::open(self.driver_run(), self.mode.setup(), store)
            .map_err(|error| Violation(format!("the coordinator does not restart: {error}")))?;
        let restored = fingerprint(&driver.machine);
        let expected = self.node.expected.take().expect("a crash says what to expect");
        let decided_on_restart =
            driver.machine.pending_actions().any(|action| matches!(action, Action::Record(_)));
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
        self.node.driver = Some(driver);
        // The machine's first actions; no fault strikes a restart's own
        // first batch.
        let (driver, mut shell, _) = self.node.input(now).expect("just restarted");
        shell.fault = None;
        let halted = driver.carry_out(&[], &mut shell).err();
        self.after_input(shell, None, halted).map(drop)
    }
}

fn store_violation(error: crowdtrain_store::StoreError) -> Violation {
    Violation(format!("the store failed: {error}"))
}
