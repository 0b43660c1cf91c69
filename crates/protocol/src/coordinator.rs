//! The coordinator's round logic as a pure state machine.
//!
//! No I/O, no clock, no randomness: time comes in as an argument (Unix
//! milliseconds), and decisions go out as [`Action`]s. The HTTP server, the
//! tests and any simulator drive the same code.
//!
//! # How to drive it
//!
//! Methods fall into four groups (as in quinn-proto's `Connection`):
//!
//! - (A) getters: [`Coordinator::view`], [`Coordinator::phase`], ...
//! - (B) inputs: [`register`](Coordinator::register),
//!   [`authenticate`](Coordinator::authenticate), [`seen`](Coordinator::seen),
//!   [`submit`](Coordinator::submit), [`handle_timeout`](Coordinator::handle_timeout),
//!   [`handle_aggregated`](Coordinator::handle_aggregated). Each returns an
//!   explicit verdict where a caller is waiting for one.
//! - (C) outputs: after every input, drain [`poll_action`](Coordinator::poll_action)
//!   and carry the actions out *in order*, making them durable before
//!   answering the request that caused them; then re-arm one timer at
//!   [`poll_timeout`](Coordinator::poll_timeout).
//! - (D) recovery: [`Coordinator::restore`] rebuilds the machine from what
//!   the driver persisted.
//!
//! [`Action::CloseRound`] is the one action that asks for work: the driver
//! aggregates the accepted updates (in worker order) and reports the new
//! model with `handle_aggregated`, which emits [`Action::CommitRound`]. A
//! round is only durable as closed once its result is: if the driver dies
//! in between, the restored machine sees an open round with all its
//! submissions and closes it again, and aggregation, being deterministic,
//! gives the same model.
//!
//! # Round policy
//!
//! The first round opens when at least `max(min_workers, quorum)` workers
//! are active, later ones when `quorum` are; a round's participants are the active workers at that moment (sorted by
//! id: position = slot = shard). A worker is active if it was seen within
//! `worker_timeout_ms` and did not miss the previous round it was assigned
//! (a worker that missed one is back as soon as it is seen again, so a crashed
//! worker costs at most one round's deadline). A worker registering during a
//! round joins at the next one. The round closes as soon as every participant
//! has submitted, or at its deadline, provided `quorum` submissions are in;
//! otherwise the deadline is extended up to `max_extensions` times, after
//! which the round fails and a new one opens on the same model.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use serde::{Deserialize, Serialize};

use crate::config::RunConfig;
use crate::identity::PublicKey;
use crate::wire::{Assignment, Digest, ErrorCode, Phase, RoundId, RoundView, SubmissionStatus, WorkerId};

/// How far a request's nonce (its time, in microseconds) may be from the
/// coordinator's clock before it is refused as stale.
pub const NONCE_WINDOW_MS: u64 = 10 * 60 * 1000;

/// The protocol-relevant part of the run configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub rounds: u64,
    pub min_workers: u32,
    pub quorum: u32,
    pub deadline_ms: u64,
    pub extension_ms: u64,
    pub max_extensions: u32,
    pub worker_timeout_ms: u64,
    pub max_workers: u32,
}

impl Settings {
    pub fn from_config(config: &RunConfig) -> Self {
        Self {
            rounds: config.rounds,
            min_workers: config.round.min_workers,
            quorum: config.round.quorum,
            deadline_ms: config.round.deadline_ms,
            extension_ms: config.round.extension_ms,
            max_extensions: config.round.max_extensions,
            worker_timeout_ms: config.round.worker_timeout_ms,
            max_workers: config.limits.max_workers,
        }
    }

    /// Active workers needed to open a round: the run starts with
    /// `min_workers`; after that a round needs only enough for its quorum,
    /// so workers leaving cannot stall the run.
    fn workers_to_open(&self, first_round: bool) -> usize {
        if first_round { self.min_workers.max(self.quorum) as usize } else { self.quorum as usize }
    }
}

/// What the driver must do, in order.
#[derive(Debug, Clone, PartialEq)]
#[must_use]
pub enum Action {
    /// Persist a newly registered worker.
    PersistWorker { worker: WorkerId, key: PublicKey, registered_unix_ms: u64 },
    /// Persist a newly opened round and its participants (slot order).
    OpenRound {
        round: RoundId,
        base_model: Digest,
        participants: Vec<WorkerId>,
        opened_unix_ms: u64,
        deadline_unix_ms: u64,
    },
    /// Persist a later deadline for the open round.
    ExtendRound { round: RoundId, deadline_unix_ms: u64, extensions: u32 },
    /// Persist a submission (its payload is the driver's) and the nonce of
    /// the request that carried it.
    RecordSubmission {
        round: RoundId,
        worker: WorkerId,
        status: SubmissionStatus,
        payload: Digest,
        nonce: u64,
        received_unix_ms: u64,
    },
    /// Aggregate these workers' accepted updates (ascending id, which is
    /// slot order) on `base_model`, then call `handle_aggregated`.
    CloseRound { round: RoundId, base_model: Digest, accepted: Vec<WorkerId>, closed_unix_ms: u64 },
    /// Persist the round as closed with its result.
    CommitRound { round: RoundId, result_model: Digest, accepted: Vec<WorkerId>, closed_unix_ms: u64 },
    /// Persist the round as failed (no quorum); its submissions do not count.
    FailRound { round: RoundId, closed_unix_ms: u64 },
    /// All rounds are done.
    Finish { final_model: Digest },
}

/// A refused input, with the reason the caller gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub code: ErrorCode,
    pub message: String,
}

impl Refusal {
    fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self { code, message: message.into() }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}: {}", self.code, self.message)
    }
}

/// The outcome of an acceptable submission.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubmissionOutcome {
    /// Newly recorded with this status.
    Recorded(SubmissionStatus),
    /// The same payload was already recorded with this status (a retry
    /// after a lost answer): nothing changes, the receipt is re-issued.
    AlreadyRecorded(SubmissionStatus),
}

impl SubmissionOutcome {
    pub fn status(self) -> SubmissionStatus {
        match self {
            Self::Recorded(status) | Self::AlreadyRecorded(status) => status,
        }
    }
}

#[derive(Debug, Clone)]
struct Worker {
    last_seen_ms: u64,
    last_nonce: u64,
    /// Assigned to a round that closed without its submission, and not
    /// seen since.
    missed: bool,
}

/// The open round.
#[derive(Debug, Clone, PartialEq)]
pub struct OpenRound {
    pub id: RoundId,
    pub base_model: Digest,
    pub opened_ms: u64,
    pub deadline_ms: u64,
    pub extensions: u32,
    /// Ascending worker id; a participant's index is its slot.
    pub participants: Vec<WorkerId>,
    pub accepted: BTreeMap<WorkerId, Digest>,
}

/// What is kept of a round after it closed: enough to judge late
/// submissions.
#[derive(Debug, Clone)]
struct PastRound {
    base_model: Digest,
    participants: BTreeSet<WorkerId>,
    recorded: BTreeMap<WorkerId, (SubmissionStatus, Digest)>,
}

/// A persisted round, for [`Coordinator::restore`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoundSnapshot {
    pub id: RoundId,
    pub state: RoundState,
    pub base_model: Digest,
    pub participants: Vec<WorkerId>,
    pub opened_unix_ms: u64,
    pub deadline_unix_ms: u64,
    pub extensions: u32,
    pub submissions: Vec<(WorkerId, SubmissionStatus, Digest)>,
    pub result_model: Option<Digest>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RoundState {
    Open,
    Closed,
    Failed,
}

impl RoundState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::Closed => "closed",
            Self::Failed => "failed",
        }
    }
}

/// Everything the driver persisted, for [`Coordinator::restore`].
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    pub initial_model: Digest,
    /// `(id, key, last accepted nonce)`, any order.
    pub workers: Vec<(WorkerId, PublicKey, u64)>,
    /// Every round, ascending id.
    pub rounds: Vec<RoundSnapshot>,
}

/// The coordinator's state.
#[derive(Debug)]
pub struct Coordinator {
    settings: Settings,
    run_id: Digest,
    workers: BTreeMap<WorkerId, Worker>,
    keys: BTreeMap<PublicKey, WorkerId>,
    open: Option<OpenRound>,
    /// A round closed and waiting for its aggregate.
    aggregating: Option<RoundId>,
    past: BTreeMap<RoundId, PastRound>,
    next_round: RoundId,
    completed_rounds: u64,
    model: Digest,
    finished: bool,
    now_ms: u64,
    actions: VecDeque<Action>,
}

impl Coordinator {
    /// A new run whose first model is `initial_model`.
    pub fn new(settings: Settings, run_id: Digest, initial_model: Digest) -> Self {
        Self {
            settings,
            run_id,
            workers: BTreeMap::new(),
            keys: BTreeMap::new(),
            open: None,
            aggregating: None,
            past: BTreeMap::new(),
            next_round: 0,
            completed_rounds: 0,
            model: initial_model,
            finished: false,
            now_ms: 0,
            actions: VecDeque::new(),
        }
    }

    /// Rebuilds the machine from persisted state at time `now`. Every
    /// worker counts as just seen (the coordinator was away, not them). An
    /// open round whose submissions are all in is closed at once, and with
    /// no open round a new one opens if enough workers are known.
    pub fn restore(settings: Settings, run_id: Digest, snapshot: Snapshot, now: u64) -> Self {
        let mut machine = Self::new(settings, run_id, snapshot.initial_model);
        machine.now_ms = now;
        for (worker, key, last_nonce) in snapshot.workers {
            machine.keys.insert(key, worker);
            machine.workers.insert(worker, Worker { last_seen_ms: now, last_nonce, missed: false });
        }
        for round in snapshot.rounds {
            assert!(round.id >= machine.next_round, "rounds are restored in ascending order");
            machine.next_round = round.id + 1;
            let recorded =
                round.submissions.iter().map(|&(worker, status, digest)| (worker, (status, digest)));
            match round.state {
                RoundState::Open => {
                    let accepted = recorded
                        .filter(|(_, (status, _))| *status == SubmissionStatus::Accepted)
                        .map(|(worker, (_, digest))| (worker, digest))
                        .collect();
                    machine.open = Some(OpenRound {
                        id: round.id,
                        base_model: round.base_model,
                        opened_ms: round.opened_unix_ms,
                        deadline_ms: round.deadline_unix_ms,
                        extensions: round.extensions,
                        participants: round.participants,
                        accepted,
                    });
                }
                RoundState::Closed | RoundState::Failed => {
                    if round.state == RoundState::Closed {
                        machine.completed_rounds += 1;
                        machine.model = round.result_model.expect("a closed round has a result");
                    }
                    machine.past.insert(
                        round.id,
                        PastRound {
                            base_model: round.base_model,
                            participants: round.participants.into_iter().collect(),
                            recorded: recorded.collect(),
                        },
                    );
                }
            }
        }
        if machine.completed_rounds >= machine.settings.rounds {
            machine.finished = true;
        }
        machine.close_if_complete();
        machine.maybe_open();
        machine
    }

    // (A) getters

    pub fn phase(&self) -> Phase {
        if self.finished {
            Phase::Finished
        } else if self.open.is_some() || self.aggregating.is_some() {
            Phase::Training
        } else {
            Phase::Waiting
        }
    }

    pub fn open_round(&self) -> Option<&OpenRound> {
        self.open.as_ref()
    }

    pub fn completed_rounds(&self) -> u64 {
        self.completed_rounds
    }

    /// The latest model: the open round's base, or the final one.
    pub fn model(&self) -> Digest {
        self.model
    }

    pub fn worker_id(&self, key: &PublicKey) -> Option<WorkerId> {
        self.keys.get(key).copied()
    }

    pub fn worker_count(&self) -> usize {
        self.workers.len()
    }

    /// Whether `worker` would be a participant if a round opened now.
    pub fn is_active(&self, worker: WorkerId) -> bool {
        self.workers.get(&worker).is_some_and(|state| self.active(state))
    }

    /// The assignment of `worker` in the open round, if it has one.
    pub fn assignment(&self, worker: WorkerId, template: &AssignmentTemplate) -> Option<Assignment> {
        let open = self.open.as_ref()?;
        let slot = open.participants.iter().position(|&participant| participant == worker)?;
        Some(template.assignment(self.run_id, open, worker, slot))
    }

    /// The round as `worker` sees it.
    pub fn view(&self, worker: Option<WorkerId>, template: &AssignmentTemplate) -> RoundView {
        let open = self.open.as_ref();
        RoundView {
            run_id: self.run_id,
            phase: self.phase(),
            round: open.map(|round| round.id).or(self.aggregating),
            completed_rounds: self.completed_rounds,
            model: self.model,
            deadline_unix_ms: open.map(|round| round.deadline_ms),
            assignment: worker.and_then(|worker| self.assignment(worker, template)),
            submitted: match (open, worker) {
                (Some(round), Some(worker)) => round.accepted.contains_key(&worker),
                _ => false,
            },
        }
    }

    // (B) inputs

    /// Registers `key` (idempotent: a known key gets its id back). A new
    /// worker joins at the next round.
    pub fn register(&mut self, now: u64, key: PublicKey) -> Result<(WorkerId, bool), Refusal> {
        self.advance(now);
        if let Some(&worker) = self.keys.get(&key) {
            self.seen(now, worker);
            return Ok((worker, false));
        }
        if self.workers.len() >= self.settings.max_workers as usize {
            return Err(Refusal::new(
                ErrorCode::Full,
                format!("the run already has its maximum of {} workers", self.settings.max_workers),
            ));
        }
        let worker = WorkerId(self.workers.len() as u64);
        self.keys.insert(key, worker);
        self.workers.insert(worker, Worker { last_seen_ms: now, last_nonce: 0, missed: false });
        self.actions.push_back(Action::PersistWorker { worker, key, registered_unix_ms: now });
        self.maybe_open();
        Ok((worker, true))
    }

    /// Checks that a request comes from a registered worker with a fresh
    /// nonce. `state_changing` requests must also carry a nonce above the
    /// last one accepted from this worker. Changes nothing.
    pub fn authenticate(
        &self,
        now: u64,
        key: &PublicKey,
        nonce: u64,
        state_changing: bool,
    ) -> Result<WorkerId, Refusal> {
        let worker = *self.keys.get(key).ok_or_else(|| {
            Refusal::new(
                ErrorCode::UnknownWorker,
                format!("no worker is registered with key {key}; register first"),
            )
        })?;
        let nonce_ms = nonce / 1000;
        if nonce_ms.abs_diff(now) > NONCE_WINDOW_MS {
            return Err(Refusal::new(
                ErrorCode::Replayed,
                format!(
                    "nonce {nonce} is {} s away from the coordinator's clock; nonces are microseconds since the \
                     epoch, within {} s",
                    nonce_ms.abs_diff(now) / 1000,
                    NONCE_WINDOW_MS / 1000
                ),
            ));
        }
        let last = self.workers[&worker].last_nonce;
        if state_changing && nonce <= last {
            return Err(Refusal::new(
                ErrorCode::Replayed,
                format!("replayed request: nonce {nonce} is not above the last accepted nonce {last}"),
            ));
        }
        Ok(worker)
    }

    /// Notes that `worker` is alive. A worker that missed a round is
    /// eligible again from now on.
    pub fn seen(&mut self, now: u64, worker: WorkerId) {
        self.advance(now);
        if let Some(state) = self.workers.get_mut(&worker) {
            state.last_seen_ms = state.last_seen_ms.max(now);
            state.missed = false;
        }
        self.maybe_open();
    }

    /// A submission for `round` on `base_model` from an authenticated
    /// worker, carrying a payload whose digest is `payload` and checked by
    /// the driver (shape, finiteness, size).
    pub fn submit(
        &mut self,
        now: u64,
        worker: WorkerId,
        nonce: u64,
        round: RoundId,
        base_model: Digest,
        payload: Digest,
    ) -> Result<SubmissionOutcome, Refusal> {
        self.advance(now);
        if let Some(open) = self.open.as_mut()
            && open.id == round
        {
            if !open.participants.contains(&worker) {
                return Err(Refusal::new(
                    ErrorCode::NotAssigned,
                    format!("{worker} is not a participant of round {round}; it joins at the next round"),
                ));
            }
            if base_model != open.base_model {
                return Err(Refusal::new(
                    ErrorCode::StaleModel,
                    format!("round {round} trains from model {}, not {base_model}", open.base_model),
                ));
            }
            if let Some(existing) = open.accepted.get(&worker) {
                return if *existing == payload {
                    Ok(SubmissionOutcome::AlreadyRecorded(SubmissionStatus::Accepted))
                } else {
                    Err(Refusal::new(
                        ErrorCode::Duplicate,
                        format!("{worker} already has a different submission accepted for round {round}"),
                    ))
                };
            }
            open.accepted.insert(worker, payload);
            self.record(worker, nonce, round, payload, SubmissionStatus::Accepted, now);
            self.close_if_complete();
            return Ok(SubmissionOutcome::Recorded(SubmissionStatus::Accepted));
        }
        let Some(past) = self.past.get_mut(&round) else {
            let current = self.open.as_ref().map_or("none".to_owned(), |open| open.id.to_string());
            return Err(Refusal::new(
                ErrorCode::WrongRound,
                format!("round {round} is not open and has not been run (the open round is {current})"),
            ));
        };
        if !past.participants.contains(&worker) {
            return Err(Refusal::new(
                ErrorCode::NotAssigned,
                format!("{worker} was not a participant of round {round}"),
            ));
        }
        if base_model != past.base_model {
            return Err(Refusal::new(
                ErrorCode::StaleModel,
                format!("round {round} trained from model {}, not {base_model}", past.base_model),
            ));
        }
        if let Some(&(status, existing)) = past.recorded.get(&worker) {
            return if existing == payload {
                Ok(SubmissionOutcome::AlreadyRecorded(status))
            } else {
                Err(Refusal::new(
                    ErrorCode::Duplicate,
                    format!("{worker} already has a submission for round {round}"),
                ))
            };
        }
        past.recorded.insert(worker, (SubmissionStatus::Late, payload));
        self.record(worker, nonce, round, payload, SubmissionStatus::Late, now);
        Ok(SubmissionOutcome::Recorded(SubmissionStatus::Late))
    }

    /// Time has reached `now`: deadlines may have passed.
    pub fn handle_timeout(&mut self, now: u64) {
        self.advance(now);
        let Some(open) = self.open.as_mut() else {
            self.maybe_open();
            return;
        };
        if now < open.deadline_ms {
            return;
        }
        if open.accepted.len() >= self.settings.quorum as usize {
            self.close_open_round();
        } else if open.extensions < self.settings.max_extensions {
            open.extensions += 1;
            open.deadline_ms = now + self.settings.extension_ms;
            self.actions.push_back(Action::ExtendRound {
                round: open.id,
                deadline_unix_ms: open.deadline_ms,
                extensions: open.extensions,
            });
        } else {
            let open = self.open.take().expect("checked above");
            self.mark_missed(&open);
            self.actions.push_back(Action::FailRound { round: open.id, closed_unix_ms: now });
            self.past.insert(open.id, past_round(&open, SubmissionStatus::Accepted));
            self.maybe_open();
        }
    }

    /// The driver finished aggregating `round` into `result_model`.
    pub fn handle_aggregated(&mut self, now: u64, round: RoundId, result_model: Digest) {
        self.advance(now);
        assert_eq!(self.aggregating, Some(round), "handle_aggregated answers the CloseRound just emitted");
        self.aggregating = None;
        self.completed_rounds += 1;
        self.model = result_model;
        let accepted: Vec<WorkerId> = self.past[&round]
            .recorded
            .iter()
            .filter(|(_, (status, _))| *status == SubmissionStatus::Accepted)
            .map(|(&worker, _)| worker)
            .collect();
        self.actions.push_back(Action::CommitRound { round, result_model, accepted, closed_unix_ms: now });
        if self.completed_rounds >= self.settings.rounds {
            self.finished = true;
            self.actions.push_back(Action::Finish { final_model: result_model });
        } else {
            self.maybe_open();
        }
    }

    // (C) outputs

    /// The next thing the driver must do.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) must next be called.
    pub fn poll_timeout(&self) -> Option<u64> {
        self.open.as_ref().map(|open| open.deadline_ms)
    }

    // internals

    /// Time never runs backwards inside the machine, whatever the wall
    /// clock does.
    fn advance(&mut self, now: u64) {
        self.now_ms = self.now_ms.max(now);
    }

    fn active(&self, worker: &Worker) -> bool {
        !worker.missed && worker.last_seen_ms + self.settings.worker_timeout_ms >= self.now_ms
    }

    fn record(
        &mut self,
        worker: WorkerId,
        nonce: u64,
        round: RoundId,
        payload: Digest,
        status: SubmissionStatus,
        now: u64,
    ) {
        let state = self.workers.get_mut(&worker).expect("authenticated workers exist");
        state.last_nonce = state.last_nonce.max(nonce);
        state.last_seen_ms = state.last_seen_ms.max(now);
        state.missed = false;
        self.actions.push_back(Action::RecordSubmission {
            round,
            worker,
            status,
            payload,
            nonce,
            received_unix_ms: now,
        });
    }

    fn close_if_complete(&mut self) {
        if let Some(open) = &self.open
            && open.accepted.len() == open.participants.len()
            && open.accepted.len() >= self.settings.quorum as usize
        {
            self.close_open_round();
        }
    }

    fn close_open_round(&mut self) {
        let open = self.open.take().expect("an open round to close");
        self.mark_missed(&open);
        self.actions.push_back(Action::CloseRound {
            round: open.id,
            base_model: open.base_model,
            accepted: open.accepted.keys().copied().collect(),
            closed_unix_ms: self.now_ms,
        });
        self.aggregating = Some(open.id);
        self.past.insert(open.id, past_round(&open, SubmissionStatus::Accepted));
    }

    fn mark_missed(&mut self, open: &OpenRound) {
        for worker in &open.participants {
            if !open.accepted.contains_key(worker) {
                self.workers.get_mut(worker).expect("participants are workers").missed = true;
            }
        }
    }

    fn maybe_open(&mut self) {
        if self.finished || self.open.is_some() || self.aggregating.is_some() {
            return;
        }
        let participants: Vec<WorkerId> =
            self.workers.iter().filter(|(_, state)| self.active(state)).map(|(&worker, _)| worker).collect();
        if participants.len() < self.settings.workers_to_open(self.next_round == 0) {
            return;
        }
        let round = self.next_round;
        self.next_round += 1;
        let deadline_ms = self.now_ms + self.settings.deadline_ms;
        self.actions.push_back(Action::OpenRound {
            round,
            base_model: self.model,
            participants: participants.clone(),
            opened_unix_ms: self.now_ms,
            deadline_unix_ms: deadline_ms,
        });
        self.open = Some(OpenRound {
            id: round,
            base_model: self.model,
            opened_ms: self.now_ms,
            deadline_ms,
            extensions: 0,
            participants,
            accepted: BTreeMap::new(),
        });
    }
}

fn past_round(open: &OpenRound, status: SubmissionStatus) -> PastRound {
    PastRound {
        base_model: open.base_model,
        participants: open.participants.iter().copied().collect(),
        recorded: open.accepted.iter().map(|(&worker, &digest)| (worker, (status, digest))).collect(),
    }
}

/// The parts of an [`Assignment`] that come from the run configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct AssignmentTemplate {
    pub seed: u64,
    pub inner_steps: u64,
    pub batch_size: u64,
    pub optimizer: crowdtrain_train::AdamW,
    pub codec: crowdtrain_train::Codec,
    pub sharding: crate::config::ShardingKind,
    pub dirichlet_alpha: Option<f64>,
}

impl AssignmentTemplate {
    pub fn from_config(config: &RunConfig) -> Self {
        Self {
            seed: config.seed,
            inner_steps: config.inner.steps,
            batch_size: config.inner.batch_size as u64,
            optimizer: config.inner_optimizer(),
            codec: config.inner.codec,
            sharding: config.data.sharding,
            dirichlet_alpha: config.data.dirichlet_alpha,
        }
    }

    fn assignment(&self, run_id: Digest, open: &OpenRound, worker: WorkerId, slot: usize) -> Assignment {
        Assignment {
            run_id,
            round: open.id,
            worker,
            slot: slot as u32,
            slots: open.participants.len() as u32,
            base_model: open.base_model,
            seed: self.seed,
            inner_steps: self.inner_steps,
            batch_size: self.batch_size,
            optimizer: self.optimizer,
            codec: self.codec,
            sharding: self.sharding,
            dirichlet_alpha: self.dirichlet_alpha,
        }
    }
}
