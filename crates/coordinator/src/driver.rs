//! The coordinator driver: the round state machine, the store it records
//! to, and the work the machine asks for, as plain synchronous code.
//!
//! [`Driver`] owns the protocol [`Coordinator`], the [`Store`], the run's
//! [`Training`] (for a real run, [`crate::ModelTraining`]: the global model,
//! the outer optimizer's state, checkpoints and replays), the defence
//! (checks and aggregator) and a round's aggregate until the machine
//! commits it. It carries out the machine's
//! actions ([`Driver::carry_out`]): records made durable in one
//! transaction, `Close` and `Speculate` aggregated, `JudgeAudit` checked
//! and handed out for replay. It reads the time from the [`Clock`] it is
//! given, and never spawns, sleeps or waits on the network: what needs a
//! thread or another party (showing a round to the workers, serving a
//! model, writing checkpoints in the background, replaying an audit) it
//! asks of its [`Shell`], and a replay's verdict comes back as an input
//! ([`Driver::replay_finished`]). `crowdtrain_node::coordinator::Node` is
//! the shell of a coordinator process (locks, HTTP, threads, the timer);
//! the node's in-process tests drive the same code on virtual time, and
//! the network simulator (`crowdtrain-simnet`) drives it with its stand-in
//! training, injecting faults at the batch write ([`Shell::record`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use crowdtrain_defense::checks::unresolved_copies;
use crowdtrain_defense::{Aggregator, CheckConfig, Decision, ModelDefense, Submission};
use crowdtrain_protocol::admission::TokenId;
use crowdtrain_protocol::contract::ContractChoice;
use crowdtrain_protocol::coordinator::Settings;
use crowdtrain_protocol::judge::ReportCheck;
use crowdtrain_protocol::ledger::Event;
use crowdtrain_protocol::wire::ErrorCode;
use crowdtrain_protocol::{
    Action, Aggregated, Commitment, Coordinator, Digest, Identity, Opened, Outcome, PublicKey, Recorded,
    Refusal, RoundId, RoundResult, Shard, Verdict, WorkerId,
};
use crowdtrain_store::{Checkpoints, Store};

use crate::CoordinatorError;
use crate::bucket::{BlobKey, RunBucket};
use crate::clock::Clock;
use crate::deltas::Deltas;
use crate::model_training::ModelTraining;
use crate::training::{Audited, Judged, Training};

/// What every driver reads and never changes, whatever its training: the
/// round state machine's settings, the defence's, the audit secret, the
/// key that signs the ledger and the clock. (The run id and the initial
/// model are the store's run record's.)
pub struct Run {
    pub settings: Settings,
    pub checks: CheckConfig,
    pub aggregator: Aggregator,
    /// Keys the audit draws: secret, so workers cannot tell in advance
    /// which submissions are audited.
    pub audit_master: [u8; 32],
    /// Signs the ledger entries the store appends.
    pub identity: Arc<Identity>,
    pub clock: Arc<dyn Clock>,
}

/// The coordinator's state and its synchronous logic (see the module's
/// documentation), for a run training with `T` (a real model unless said
/// otherwise).
pub struct Driver<T: Training = ModelTraining> {
    pub run: Run,
    /// The global model and what judging audits needs of it.
    pub training: T,
    pub machine: Coordinator,
    pub store: Store,
    /// The checks and the aggregator, with what they remember.
    defense: ModelDefense,
    /// Set between a round's aggregation and its commit or failure.
    pending: Option<Pending<T::Global>>,
    /// The live rounds' accepted reveals, decoded as they arrived (with the
    /// digests of their bytes), so closing a round reads nothing back; kept
    /// until the round closes or fails, since it may be aggregated more
    /// than once before its reveals are durable.
    decoded: HashMap<(RoundId, WorkerId), (Digest, Vec<f32>)>,
    /// Audits of live rounds that a delegated auditor passed: their answers
    /// stay until the round ends, for the coordinator to replay if a
    /// contest re-audits them ([`Self::proven`]); pruned then (and, after
    /// a restart, by [`Training::open`]'s sweep).
    delegated_passes: Vec<(RoundId, WorkerId)>,
    /// What the batches carried out since the shell last looked did
    /// ([`Driver::take_batch`]).
    batch: Batch,
}

/// A worker's signed input to a round: who sent it (with the nonce it
/// signed), the round, and when it arrived.
#[derive(Debug, Clone, Copy)]
pub struct Sent {
    pub now: u64,
    pub worker: WorkerId,
    pub nonce: u64,
    pub round: RoundId,
}

/// Why the driver did not take an input. The shell decides what each
/// means to its caller (`http.rs` maps them to HTTP statuses).
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// The input is refused and changed nothing: the protocol says why.
    #[error("{0}")]
    Refused(Refusal),
    /// The input could not be handled (a file or the bucket could not be
    /// read, a recheck could not run) and changed nothing; it may be sent
    /// again.
    #[error(transparent)]
    Failed(#[from] CoordinatorError),
    /// A delegated audit's recheck found the stored answer unusable.
    #[error("{0}")]
    Unjudgeable(String),
    /// Making what the input changed durable failed: the machine may be
    /// ahead of the store, so the coordinator must stop (a restart resumes
    /// from the store).
    #[error("{0}")]
    Halted(CoordinatorError),
}

impl From<Refusal> for DriverError {
    fn from(refusal: Refusal) -> Self {
        Self::Refused(refusal)
    }
}

/// What the driver asks of the process around it, in the middle of a batch
/// of the machine's actions (so before the batch is durable): the parts of
/// carrying out an action that need another thread or another party.
pub trait Shell<T: Training = ModelTraining> {
    /// The machine just opened `opened` (provisionally or not): show it to
    /// the workers now, before the batch that opened it is durable (the
    /// node's `Node::publish` says why that is safe).
    fn show(&mut self, opened: Opened);
    /// `model` is the newest model (its checkpoint file may still be being
    /// written): serve `bytes` from memory.
    fn serve(&mut self, model: Digest, bytes: Arc<Vec<u8>>);
    /// The machine opened the round after `after` provisionally, ahead of
    /// `after`'s last verdicts.
    fn opened_ahead(&mut self, after: RoundId);
    /// The machine withdrew its bet on `round`'s audits, and with it the
    /// round it opened ahead (`provisional`), if it had opened one.
    fn withdrawn(&mut self, round: RoundId, provisional: Option<RoundId>);
    /// Writes a round's new checkpoints in the background
    /// ([`CheckpointWrite::run`]), while the next round runs.
    fn write_behind(&mut self, write: CheckpointWrite);
    /// Waits until the last [`Shell::write_behind`] is durable.
    fn written(&mut self) -> Result<(), CoordinatorError>;
    /// Replays an answered audit off the driver; its verdict comes back as
    /// [`Driver::replay_finished`].
    fn replay(&mut self, replay: T::Replay);
    /// Makes a batch of records durable in one transaction, before anyone
    /// is answered ([`Store::record`]). A shell that simulates a storage
    /// fault fails or crashes here instead; an error halts the driver.
    fn record(
        &mut self,
        store: &mut Store,
        now: u64,
        events: &[Event],
        payloads: &[(Digest, &[u8])],
        identity: &Identity,
    ) -> Result<(), CoordinatorError> {
        Ok(store.record(now, events, payloads, identity)?)
    }
}

/// What batches of the machine's actions did, now durable: what the shell
/// times, counts and schedules from them.
#[derive(Debug, Default)]
pub struct Batch {
    /// The events recorded, in order.
    pub events: Vec<Event>,
    /// The bytes of the uploads recorded with them.
    pub received_bytes: u64,
    /// Rounds that closed with a result, with that result (the model each
    /// closed on: two rounds can close in one batch, when a round opened
    /// ahead was settled before the round before it closed).
    pub committed: Vec<(RoundId, Digest)>,
    /// The run finished.
    pub finished: bool,
    /// A round or phase changed (the timer must look at the machine's next
    /// deadline again, and long polls wake).
    pub changed: bool,
}

impl Batch {
    /// Adds what a later batch did.
    fn absorb(&mut self, later: Batch) {
        self.events.extend(later.events);
        self.received_bytes += later.received_bytes;
        self.committed.extend(later.committed);
        self.finished |= later.finished;
        self.changed |= later.changed;
    }
}

/// A round's defence decision on `accepted`, and the global state it leads
/// to, until the machine commits the round (or fails it, or withdraws the
/// speculation it was computed for).
struct Pending<G> {
    round: RoundId,
    accepted: Vec<WorkerId>,
    aggregated: Aggregated,
    decision: Decision,
    next: Option<NextGlobal<G>>,
    /// Copies among `accepted` that no replay has told apart: the machine
    /// challenges them instead of closing
    /// ([`crowdtrain_protocol::Coordinator::handle_contested`]).
    contested: Vec<WorkerId>,
}

struct NextGlobal<G> {
    global: G,
    model: Digest,
    /// The encoded checkpoint named `model`, to serve from memory.
    model_bytes: Option<Arc<Vec<u8>>>,
    momentum: Digest,
    aggregator: Option<Digest>,
}

/// The files of a round just aggregated, to write while the next round
/// runs (see [`Driver::aggregate`]).
pub struct CheckpointWrite {
    pub(crate) checkpoints: Checkpoints,
    pub(crate) deltas: Deltas,
    pub(crate) bucket: Option<Arc<dyn RunBucket>>,
    pub(crate) model: Digest,
    pub(crate) model_bytes: Arc<Vec<u8>>,
    pub(crate) momentum: Digest,
    pub(crate) momentum_bytes: Vec<u8>,
    /// The encoded delta to `model`, under a compressed broadcast.
    pub(crate) change: Option<Arc<Vec<u8>>>,
}

impl CheckpointWrite {
    /// Writes (and syncs) the files, the bucket first: workers look for the
    /// model there as soon as the next round opens (and wait while it is
    /// not there yet); the delta before the model, as a worker holding the
    /// last model asks for it first.
    pub fn run(self) -> Result<(), CoordinatorError> {
        let Self { checkpoints, deltas, bucket, model, model_bytes, momentum, momentum_bytes, change } = self;
        if let Some(bucket) = bucket {
            if let Some(change) = &change {
                bucket.put(BlobKey::Delta { target: model }, change.to_vec())?;
            }
            bucket.put(BlobKey::Model(model), model_bytes.to_vec())?;
            bucket.put(BlobKey::Checkpoint(momentum), momentum_bytes.clone())?;
        }
        checkpoints.put(&model_bytes)?;
        if let Some(change) = change {
            deltas.write(&change)?;
        }
        Ok(checkpoints.put(&momentum_bytes).map(drop)?)
    }
}

impl<T: Training> Driver<T> {
    /// A driver of `machine` (restored from `store`'s events), with the
    /// training and the defence the store's records restore
    /// ([`Driver::open`]).
    pub(crate) fn new(
        run: Run,
        training: T,
        machine: Coordinator,
        store: Store,
        defense: ModelDefense,
    ) -> Self {
        Self {
            run,
            training,
            machine,
            store,
            defense,
            pending: None,
            decoded: Default::default(),
            delegated_passes: Vec::new(),
            batch: Batch::default(),
        }
    }

    /// The driver's store, for a driver that died (in a simulation) or was
    /// dropped: what a restart opens again ([`Driver::open`]).
    pub fn into_store(self) -> Store {
        self.store
    }

    /// The time now, by the run's clock: for the steps of a batch after
    /// its input (an aggregation done, the batch written).
    fn now(&self) -> u64 {
        self.run.clock.now_unix_ms()
    }

    /// What the batches carried out since the last call did (the shell
    /// takes it after every input, whatever the input's answer).
    pub fn take_batch(&mut self) -> Batch {
        std::mem::take(&mut self.batch)
    }

    /// The timer fired: deadlines may have passed.
    pub fn tick(&mut self, now: u64, shell: &mut impl Shell<T>) -> Result<(), DriverError> {
        self.machine.handle_timeout(now);
        self.carry_out(&[], shell)
    }

    /// A signed read from `key` (its signature verified): single-use, and
    /// marks its worker as seen.
    pub fn read(
        &mut self,
        now: u64,
        key: &PublicKey,
        nonce: u64,
        shell: &mut impl Shell<T>,
    ) -> Result<WorkerId, DriverError> {
        let worker = self.machine.read(now, key, nonce)?;
        self.carry_out(&[], shell)?;
        Ok(worker)
    }

    /// A registration of `key`, admitted by the shell (with the admission
    /// `token` it used, if new), choosing contract option `choice`.
    /// Registering again only says the worker is alive.
    #[allow(clippy::too_many_arguments)]
    pub fn register(
        &mut self,
        now: u64,
        key: PublicKey,
        nonce: u64,
        class: &str,
        token: Option<TokenId>,
        choice: Option<ContractChoice>,
        shell: &mut impl Shell<T>,
    ) -> Result<WorkerId, DriverError> {
        self.machine.check_choice_at_registration(&key, choice.is_some())?;
        let (worker, _) = self.machine.register_admitted(now, key, class, Some(nonce), token)?;
        if let Some(choice) = choice {
            let chosen = self.machine.choose(now, key, choice);
            // The registration stands either way; what is recorded is written first.
            self.carry_out(&[], shell)?;
            chosen?;
        }
        self.carry_out(&[], shell)?;
        Ok(worker)
    }

    /// A registration of `key` whose freshness the caller vouches for (a
    /// simulation, whose requests are not signed): no nonce, no admission
    /// token, no contract choice. A coordinator reachable by anyone
    /// registers through [`Driver::register`].
    pub fn register_unsigned(
        &mut self,
        now: u64,
        key: PublicKey,
        class: &str,
        shell: &mut impl Shell<T>,
    ) -> Result<WorkerId, DriverError> {
        let (worker, _) = self.machine.register(now, key, class)?;
        self.carry_out(&[], shell)?;
        Ok(worker)
    }

    /// A commitment to the work on `base_model` (and shard `trained`),
    /// with its boundary `leaves` (empty unless the run replays audits from
    /// the round's start): its outcome, and the segment it drew for audit
    /// if the worker must answer it.
    ///
    /// Under `audit.replay = "from-start"` the leaves must be the ones the
    /// commitment's root is over (else it is refused, changing nothing). A
    /// drawn commitment is answered here: its leaves are kept as the
    /// answer, recorded with the commitment, and the replay from the
    /// round's start begins at once, so the worker is told no audit is due.
    /// Should keeping them fail, the audit waits for the worker's answer,
    /// as in a `"segment"` run.
    pub fn commit(
        &mut self,
        sent: Sent,
        base_model: Digest,
        trained: Option<Shard>,
        commitment: Commitment,
        leaves: &[Digest],
        shell: &mut impl Shell<T>,
    ) -> Result<(Outcome, Option<u32>), DriverError> {
        let Sent { now, worker, nonce, round } = sent;
        let from_start = self.run.settings.replay_from_start;
        if from_start {
            self.training
                .check_boundaries(&commitment, leaves)
                .map_err(|message| Refusal { code: ErrorCode::BadRequest, message })?;
        }
        let outcome = self.machine.commit(now, worker, nonce, round, base_model, trained, commitment)?;
        let mut replay = None;
        if from_start && let Some((segment, commitment)) = self.machine.pending_audit(worker, round) {
            match self.training.keep_boundaries(leaves) {
                Ok(evidence) => {
                    self.machine.audit_answered(now, worker, nonce, round, evidence)?;
                    let assignment =
                        self.machine.assignment_in(round, worker).expect("audited workers are participants");
                    let audit = Audited { round, worker, segment, commitment, assignment };
                    replay = Some(self.training.replay_from_start(audit, leaves.to_vec()));
                }
                Err(error) => {
                    tracing::warn!(round, %worker, %error, "boundary leaves not kept: the worker answers")
                }
            }
        }
        self.carry_out(&[], shell)?;
        match replay {
            Some(Ok(replay)) => shell.replay(replay),
            // Answered, durably, but not replayed now: the reveal deadline
            // judges it from the store (Action::JudgeAudit).
            Some(Err(error)) => {
                tracing::warn!(round, %worker, %error, "a replay from the start did not start")
            }
            None => {}
        }
        let audit = self.machine.pending_audit(worker, round).map(|(segment, _)| segment);
        Ok((outcome, audit))
    }

    /// A reveal of the payload named `digest`: its values as the shell
    /// decoded them, or why they are not a valid update (then, if it is
    /// the committed update, it is recorded as malformed). `payloads` holds
    /// its bytes, recorded with it.
    pub fn reveal(
        &mut self,
        sent: Sent,
        base_model: Digest,
        digest: Digest,
        update: Result<Vec<f32>, Refusal>,
        payloads: &[(Digest, &[u8])],
        shell: &mut impl Shell<T>,
    ) -> Result<Outcome, DriverError> {
        let Sent { now, worker, nonce, round } = sent;
        let problem = update.as_ref().err().cloned();
        let outcome = self.machine.reveal(now, worker, nonce, round, base_model, digest, problem)?;
        if let Ok(values) = update
            && outcome == Outcome::Recorded(Recorded::Accepted)
        {
            self.decoded.insert((round, worker), (digest, values));
        }
        self.carry_out(payloads, shell)?;
        Ok(outcome)
    }

    /// An audit answer whose proofs do not hold, for `reason`: it fails at
    /// once.
    pub fn answer_refuted(
        &mut self,
        sent: Sent,
        reason: String,
        shell: &mut impl Shell<T>,
    ) -> Result<(), DriverError> {
        let Sent { now, worker, nonce, round } = sent;
        self.machine.answer_refuted(now, worker, nonce, round, reason)?;
        self.carry_out(&[], shell)
    }

    /// An audit answer whose proofs hold, stored as the file named
    /// `answer`: the auditor it is delegated to, if any (else the
    /// coordinator replays it).
    pub fn audit_answered(
        &mut self,
        sent: Sent,
        answer: Digest,
        shell: &mut impl Shell<T>,
    ) -> Result<Option<WorkerId>, DriverError> {
        let Sent { now, worker, nonce, round } = sent;
        let auditor = self.machine.audit_answered(now, worker, nonce, round, answer)?;
        self.carry_out(&[], shell)?;
        Ok(auditor)
    }

    /// A delegated auditor's (`sent.worker`'s) report on `audited`'s
    /// segment: agreeing with
    /// the commitment, it decides the audit; disagreeing, the coordinator
    /// replays the segment itself, here (a quarter of a round's training,
    /// on the caller's thread), and whichever of the two its replay
    /// contradicts is slashed ([`ReportCheck`]).
    pub fn audit_report(
        &mut self,
        sent: Sent,
        audited: WorkerId,
        report: &T::Report,
        shell: &mut impl Shell<T>,
    ) -> Result<ReportCheck, DriverError> {
        let Sent { now, worker: auditor, nonce, round } = sent;
        let (segment, commitment, assignment) = self.delegated(auditor, round, audited, "report")?;
        let audit = Audited { round, worker: audited, segment, commitment, assignment };
        let check = self.training.recheck(&self.store, &audit, report)?;
        self.machine.audit_reported(now, round, auditor, nonce, audited, check.clone())?;
        self.carry_out(&[], shell)?;
        Ok(check)
    }

    /// The segment, commitment and assignment of `audited`'s audit in
    /// `round`, if `auditor` is the one to replay it now; `doing` names
    /// the request in the refusal.
    pub fn delegated(
        &self,
        auditor: WorkerId,
        round: RoundId,
        audited: WorkerId,
        doing: &str,
    ) -> Result<(u32, Commitment, crowdtrain_protocol::Assignment), DriverError> {
        let Some((segment, commitment)) = self.machine.delegated_audit(auditor, round, audited) else {
            let message = format!("{auditor} has no audit of {audited} to {doing} in round {round}");
            return Err(DriverError::Refused(Refusal { code: ErrorCode::NotAudited, message }));
        };
        let assignment =
            self.machine.assignment_in(round, audited).expect("audited workers are participants");
        Ok((segment, commitment, assignment))
    }

    /// The replay of an answered audit (started by the shell for
    /// [`Shell::replay`]) ended in `verdict`: the machine judges the audit,
    /// unless it was judged meanwhile (from the store, at the reveal
    /// deadline: then it is refused, and nothing changes).
    pub fn replay_finished(
        &mut self,
        now: u64,
        round: RoundId,
        worker: WorkerId,
        verdict: Verdict,
        shell: &mut impl Shell<T>,
    ) -> Result<(), DriverError> {
        self.machine.audit_result(now, round, worker, verdict, None, None)?;
        self.carry_out(&[], shell)
    }

    /// Carries out the machine's actions in order: its records become
    /// durable with their ledger entries in one transaction, before the
    /// caller answers anyone; the work it asks for (aggregating, betting on
    /// audits, judging one) is done on the way. `payloads` are the bytes of
    /// the reveal being recorded, if any, by digest. An error leaves the
    /// machine ahead of what is durable: the shell must stop.
    pub fn carry_out(
        &mut self,
        payloads: &[(Digest, &[u8])],
        shell: &mut impl Shell<T>,
    ) -> Result<(), DriverError> {
        self.carry_out_actions(payloads, shell).map_err(DriverError::Halted)
    }

    fn carry_out_actions(
        &mut self,
        payloads: &[(Digest, &[u8])],
        shell: &mut impl Shell<T>,
    ) -> Result<(), CoordinatorError> {
        let mut batch = Batch::default();
        // Audits that passed in this batch: their answers go once durable.
        let mut passed = Vec::new();
        while let Some(action) = self.machine.poll_action() {
            match action {
                Action::Record(event) => {
                    match &event {
                        Event::RoundOpened { round, participants, .. } => {
                            tracing::info!(round, participants = participants.len(), "round open");
                            self.show(*round, shell);
                        }
                        Event::DeadlineExtended { round, extensions, .. } => {
                            tracing::info!(round, extensions, "commit deadline extended: no quorum yet");
                        }
                        Event::AuditDraw { round, audits, auditors, .. } => {
                            tracing::info!(
                                round,
                                audits = audits.len(),
                                delegated = auditors.len(),
                                "commit phase over"
                            );
                        }
                        Event::Reveal { round, worker, status, payload, .. } => {
                            tracing::info!(round, %worker, status = status.as_str(), %payload, "reveal");
                        }
                        Event::AuditorSlashed { round, auditor, audited, amount, reason } => {
                            tracing::warn!(round, %auditor, %audited, amount, %reason, "auditor slashed");
                        }
                        Event::Slash { round, worker, amount, reason } => {
                            tracing::warn!(round, %worker, amount, %reason, "slashed");
                        }
                        Event::UpdateRefused { round, worker, reason } => {
                            tracing::warn!(round, %worker, %reason, "update refused by the checks");
                        }
                        Event::RoundClosed {
                            round,
                            result_model,
                            result_momentum,
                            result_aggregator,
                            accepted,
                            ..
                        } => {
                            let pending = self.pending.take().expect("aggregation precedes its commit");
                            let next = pending.next.expect("a committed round has a result");
                            assert_eq!(
                                (pending.round, next.model, next.momentum, next.aggregator),
                                (*round, *result_model, *result_momentum, *result_aggregator),
                                "the round just aggregated"
                            );
                            if let Some(bytes) = next.model_bytes {
                                shell.serve(next.model, bytes);
                            }
                            self.training.advance(next.global, next.model);
                            self.defense.commit(pending.decision);
                            tracing::info!(round, accepted = accepted.len(), model = %result_model, "round closed");
                            batch.committed.push((*round, *result_model));
                        }
                        Event::RoundFailed { round, reason, .. } => {
                            tracing::warn!(round, %reason, "round failed");
                            if let Some(pending) = self.pending.take_if(|pending| pending.round == *round) {
                                self.defense.set_aside(pending.decision);
                            }
                        }
                        Event::RunFinished { final_model } => {
                            tracing::info!(model = %final_model, "run finished");
                            batch.finished = true;
                        }
                        Event::Audit { round, worker, verdict, judged_by, .. } if verdict.passed() => {
                            match judged_by {
                                None => passed.push((*round, *worker)),
                                Some(_) => self.delegated_passes.push((*round, *worker)),
                            }
                        }
                        _ => {}
                    }
                    if let Event::RoundClosed { round, .. } | Event::RoundFailed { round, .. } = &event {
                        // No contest re-audits them any more, and no close
                        // aggregates their updates again.
                        let ended = *round;
                        passed.extend(self.delegated_passes.extract_if(.., |(held, _)| *held <= ended));
                        self.decoded.retain(|(held, _), _| *held > ended);
                    }
                    // A commitment may end the commit phase early: the timer
                    // must look at the machine's next deadline again.
                    batch.changed |= !matches!(
                        event,
                        Event::WorkerRegistered { .. }
                            | Event::Reveal { .. }
                            | Event::WorkAccepted { .. }
                            | Event::Slash { .. }
                            | Event::AuditorSlashed { .. }
                            | Event::UpdateRefused { .. }
                    );
                    batch.events.push(event);
                }
                Action::JudgeAudit { round, worker, .. } => self.judge_stored(round, worker, shell)?,
                Action::Speculate { round, base_model, accepted } => {
                    assert_eq!(base_model, self.training.model(), "rounds train from the latest model");
                    let mut aggregated = self.aggregate(round, &accepted, true, shell)?;
                    if self.unresolved_copies(round).is_some() {
                        // The round will challenge them, not close: no bet.
                        self.pending = None;
                        aggregated.result = None;
                    }
                    let now = self.now();
                    self.machine.handle_speculated(now, round, aggregated);
                }
                Action::OpenProvisional { round, after, base_model } => {
                    let pending = self.pending.as_ref().expect("a provisional round follows its aggregate");
                    let next = pending.next.as_ref().expect("a provisional round has a model");
                    assert_eq!(
                        (pending.round, next.model),
                        (after, base_model),
                        "the aggregate just computed"
                    );
                    tracing::info!(round, after, model = %base_model, "round open provisionally");
                    if let Some(bytes) = &next.model_bytes {
                        shell.serve(next.model, Arc::clone(bytes));
                    }
                    shell.opened_ahead(after);
                    self.show(round, shell);
                    batch.changed = true;
                }
                Action::Withdraw { round, provisional } => {
                    if provisional.is_some() {
                        // Its participants train again, on the model that counts.
                        tracing::warn!(round, ?provisional, "round opened ahead withdrawn: an audit failed");
                    }
                    // Nothing of it was committed: the defence learns
                    // nothing, and the files it wrote are named by their
                    // content and harmless.
                    self.pending.take_if(|pending| pending.round == round);
                    shell.withdrawn(round, provisional);
                    batch.changed = true;
                }
                Action::Close { round, base_model, accepted } => {
                    // The records so far (the input that closed the round)
                    // become durable with the round's result, in one
                    // transaction: nobody has been answered yet, so a crash
                    // in between loses nothing anyone was promised.
                    // A delayed round trained from the model before the
                    // latest outer step; the step goes to the newest state.
                    if self.run.settings.outer_delay == 0 {
                        assert_eq!(base_model, self.training.model(), "rounds train from the latest model");
                    }
                    let speculated = self
                        .pending
                        .as_ref()
                        .filter(|pending| pending.round == round && pending.accepted == accepted)
                        .map(|pending| pending.aggregated.clone());
                    let aggregated = match speculated {
                        Some(aggregated) => aggregated,
                        None => self.aggregate(round, &accepted, false, shell)?,
                    };
                    let now = self.now();
                    match self.unresolved_copies(round) {
                        Some(contested) => {
                            tracing::warn!(round, ?contested, "copies no replay has told apart: challenged");
                            self.pending = None;
                            self.machine.handle_contested(now, round, &contested);
                        }
                        None => self.machine.handle_aggregated(now, round, aggregated),
                    }
                }
            }
        }
        let writing = Instant::now();
        let now = self.now();
        shell.record(&mut self.store, now, &batch.events, payloads, &self.run.identity)?;
        batch.received_bytes = payloads.iter().map(|(_, bytes)| bytes.len() as u64).sum();
        self.training.prune_answers(&self.store, &passed)?;
        if !batch.committed.is_empty() {
            tracing::debug!(write_ms = writing.elapsed().as_secs_f64() * 1e3, "committed");
        }
        if batch.finished {
            // No round follows to wait for the final model's files.
            shell.written()?;
        }
        self.batch.absorb(batch);
        Ok(())
    }

    /// Shows `round` to the workers if the machine has just opened it.
    fn show(&self, round: RoundId, shell: &mut impl Shell<T>) {
        if let Some(opened) = self.machine.opened().filter(|opened| opened.id() == round) {
            shell.show(opened);
        }
    }

    /// The copies [`Self::aggregate`] found in `round` that no replay has
    /// told apart, if any.
    fn unresolved_copies(&self, round: RoundId) -> Option<Vec<WorkerId>> {
        self.pending
            .as_ref()
            .filter(|pending| pending.round == round && !pending.contested.is_empty())
            .map(|pending| pending.contested.clone())
    }

    /// The workers of the open round `round` whose audit the coordinator's
    /// own replay passed (and, for a `bet` on pending audits, whose answer
    /// the driver is replaying itself: the bet is that it passes): their
    /// updates are their own work, which decides a pair of copies
    /// ([`crowdtrain_defense::checks`]). A delegated auditor's pass does
    /// not count: a copier's colluding auditor would vouch for the copy and
    /// have the honest original refused; such a pair is contested instead,
    /// and the coordinator replays both ([`Coordinator::handle_contested`]).
    ///
    /// [`Coordinator::handle_contested`]: crowdtrain_protocol::coordinator::Coordinator::handle_contested
    fn proven(&self, round: RoundId, bet: bool) -> std::collections::BTreeSet<WorkerId> {
        let Some(open) = self.machine.open_round().filter(|open| open.id == round) else {
            return Default::default();
        };
        open.standings
            .iter()
            .filter(|(_, standing)| match &standing.verdict {
                Some(_) => standing.passed_by_coordinator(),
                None => bet && standing.audit.is_some() && standing.answered && standing.auditor.is_none(),
            })
            .map(|(&worker, _)| worker)
            .collect()
    }

    /// Checks the accepted updates of `round` (in the order their
    /// commitments arrived; those the coordinator's replay proved decide copies, see
    /// [`Self::proven`]), aggregates the ones that pass and takes the outer
    /// step ([`Training::step`]). Nothing changes in memory until the
    /// machine commits the round ([`Pending`]).
    ///
    /// The new checkpoints are written in the background
    /// ([`Shell::write_behind`]); before this round commits, the previous
    /// round's must be durable ([`Shell::written`]).
    fn aggregate(
        &mut self,
        round: RoundId,
        accepted: &[WorkerId],
        bet: bool,
        shell: &mut impl Shell<T>,
    ) -> Result<Aggregated, CoordinatorError> {
        let started = Instant::now();
        let proven = self.proven(round, bet);
        shell.written()?;
        let order = self.store.commitment_order(round, accepted)?;
        let parameters = self.training.parameters();
        // Read in place, not taken: a round's decoded updates are kept
        // until it ends, since it may be aggregated again before its
        // reveals are durable (a bet, then the close; a close that becomes
        // a challenge settled in the same input), when the database does
        // not hold them yet. Only those revealed before a restart are
        // read back from the database.
        let mut loaded: HashMap<WorkerId, (Digest, Vec<f32>)> = HashMap::new();
        for worker in order.iter().filter(|worker| !self.decoded.contains_key(&(round, **worker))) {
            let bytes = self.store.payloads(round, &[*worker])?.remove(0);
            let values = self.training.decode(&bytes)?;
            loaded.insert(*worker, (Digest::of(&bytes), values));
        }
        let submissions: Vec<Submission<'_>> = order
            .iter()
            .map(|worker| {
                let (digest, values) = self
                    .decoded
                    .get(&(round, *worker))
                    .or_else(|| loaded.get(worker))
                    .expect("in memory or read back above");
                Submission { worker: worker.0, values, digest: digest.0, proven: proven.contains(worker) }
            })
            .collect();
        let decided = started.elapsed();
        let decision = self.defense.decide(&submissions, parameters);
        let contested: Vec<WorkerId> =
            unresolved_copies(&decision.refused, &|worker| proven.contains(&WorkerId(worker)))
                .into_iter()
                .map(WorkerId)
                .collect();
        let screened = started.elapsed();
        let refused: Vec<(WorkerId, String)> = decision
            .refused
            .iter()
            .map(|(worker, refusal)| (WorkerId(*worker), refusal.to_string()))
            .collect();
        let next = match &decision.aggregate {
            None => None,
            Some(delta) => {
                let defense = &self.defense;
                let after = || defense.aggregator.is_stateful().then(|| defense.state_after(&decision));
                let stepped = self.training.step(delta, &after)?;
                if let Some(write) = stepped.write {
                    shell.write_behind(write);
                }
                Some(NextGlobal {
                    global: stepped.global,
                    model: stepped.model,
                    model_bytes: stepped.serve,
                    momentum: stepped.momentum,
                    aggregator: stepped.aggregator,
                })
            }
        };
        tracing::debug!(
            round,
            read_and_decode_ms = decided.as_secs_f64() * 1e3,
            checks_and_aggregation_ms = (screened - decided).as_secs_f64() * 1e3,
            outer_step_and_checkpoints_ms = (started.elapsed() - screened).as_secs_f64() * 1e3,
            refused = refused.len(),
            "aggregated"
        );
        let result = next.as_ref().map(|next| RoundResult {
            model: next.model,
            momentum: next.momentum,
            aggregator: next.aggregator,
        });
        let aggregated = Aggregated { result, refused };
        self.pending = Some(Pending {
            round,
            accepted: accepted.to_vec(),
            aggregated: aggregated.clone(),
            decision,
            next,
            contested,
        });
        Ok(aggregated)
    }

    /// [`Action::JudgeAudit`]: an answered audit nobody else will judge
    /// (its auditor did not report by the reveal deadline, or the process
    /// replaying it stopped): judged from the stored answer
    /// ([`Training::judge_stored`]), failed at once if its proofs do not
    /// hold, else replayed by the shell like a fresh answer.
    fn judge_stored(
        &mut self,
        round: RoundId,
        worker: WorkerId,
        shell: &mut impl Shell<T>,
    ) -> Result<(), CoordinatorError> {
        let (segment, commitment) =
            self.machine.answered_audit(round, worker).expect("the machine asked for an answered audit");
        let assignment = self.machine.assignment_in(round, worker).expect("audited workers are participants");
        let audit = Audited { round, worker, segment, commitment, assignment };
        match self.training.judge_stored(&self.store, audit)? {
            Judged::Failed(reason) => {
                let verdict = Verdict::Failed(reason);
                tracing::info!(round, %worker, segment, ?verdict, "stored audit answer judged");
                let now = self.now();
                self.machine
                    .audit_result(now, round, worker, verdict, None, None)
                    .expect("an answered audit is pending");
            }
            Judged::Replay(replay) => shell.replay(replay),
        }
        Ok(())
    }
}
