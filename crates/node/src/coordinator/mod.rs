//! The coordinator process: the shell around the coordinator driver.
//!
//! [`driver::Driver`] owns the round state machine, the SQLite store, the
//! global model and the defence, and carries out the machine's actions as
//! plain synchronous code on the time its clock gives: records made
//! durable in one transaction, aggregation where the machine asks for it
//! ([`crowdtrain_protocol::Action::Close`]: the checks and the robust aggregator, the same
//! [`ModelDefense`] the simulation uses, then the same `outer_step`), and
//! stored audit answers judged. [`Node`] is the shell: every input (a
//! request, a timer) goes through the driver under one lock, and is
//! answered only once what it changed is durable; the node owns the HTTP
//! handlers ([`http`], where errors become statuses), the threads (audit
//! replays, the checkpoint writer, evaluation) and the timer. Scoring each
//! round's updates on held-out data, and paying for them, happens off the
//! request path on its own thread ([`score`]), round after round in order.

mod admission;
mod background;
pub mod contract;
mod http;
mod limits;
mod metrics;
mod model_rewards;
mod net;
mod notices;
mod score;
#[cfg(test)]
mod tests;

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use crowdtrain_data::text::TokenizerSpec;
use crowdtrain_defense::Gate;
use crowdtrain_protocol::contract::{ContractChoice, ContractMenu};
use crowdtrain_protocol::judge::ReportCheck;
use crowdtrain_protocol::ledger::Event;
use crowdtrain_protocol::wire::{
    AuditAnswer, AuditReport, ErrorCode, LedgerEntryView, LedgerPage, PROTOCOL_VERSION, Phase, Receipt,
    ReceiptStatus, Registration, RunInfo, RunStatus, Stage, WorkerView,
};
use crowdtrain_protocol::{
    Digest, Identity, Opened, PublicKey, Refusal, RoundId, RoundView, RunConfig, Shard, Signed, WorkerId,
};
use crowdtrain_store::{CheckpointKind, Checkpoints, LedgerOrder, RunRecord, Store, checkpoint};
use crowdtrain_train::Model;
use tokio::sync::watch;

pub use admission::issue_tokens as issue_admission_tokens;
pub use crowdtrain_coordinator::AGGREGATOR_SNAPSHOT_ROUNDS;
pub use crowdtrain_coordinator::clock::{Clock, SystemClock, VirtualClock, now_unix_ms};
use crowdtrain_coordinator::deltas;
use crowdtrain_coordinator::{
    CheckpointWrite, CoordinatorError, Driver, DriverError, Evidence, ModelRun, PendingReplay, Sent, Shell,
    audit, driver,
};
use crowdtrain_protocol::wire::CommitBody;
use http::Failure;
pub use http::serve;
pub use net::raise_descriptor_limit;

use crate::NodeError;
use crate::data::RunData;
use crate::storage::{Bucket, CoordinatorBucket};

/// The coordinator: shared by every request handler and the timer.
pub struct Node {
    /// Lets work that outlives a request (evaluations) reach the node.
    me: std::sync::Weak<Node>,
    /// Where the node's time comes from: the wall clock in a process,
    /// virtual time in the in-process tests.
    clock: Arc<dyn Clock>,
    run: Signed<RunInfo>,
    /// The run's contract menu, if it offers one (`GET /v1/contract`).
    contract: Option<Signed<ContractMenu>>,
    run_id: Digest,
    identity: Arc<Identity>,
    config: RunConfig,
    model: Box<dyn Model>,
    /// Training data for audit replays, test data for evaluation.
    dataset: Arc<RunData>,
    checkpoints: Checkpoints,
    /// The published model deltas, under a compressed broadcast.
    deltas: deltas::Deltas,
    /// Audit answers (start states: MBs each), by hash; the database
    /// records which answer is whose.
    answers: Checkpoints,
    inner: Mutex<Inner>,
    /// Bumped whenever a round view may have changed; long polls and the
    /// timer wait on it.
    changes: watch::Sender<u64>,
    /// Set when a durable write failed: the in-memory machine may be ahead
    /// of the database, so the node must stop and be restarted from it.
    fatal: watch::Sender<Option<String>>,
    bytes_downloaded: AtomicU64,
    /// The models (whole or as deltas) served since the round training from
    /// each last closed: what a round's workers downloaded for it.
    downloads: Mutex<ModelDownloads>,
    /// The audit answers recorded since this process started, in bytes
    /// (`RunStatus::audit_answer_bytes`).
    audit_answer_bytes: AtomicU64,
    /// What `GET /metrics` shows.
    metrics: metrics::Metrics,
    /// Provisional rounds opened, and withdrawn, since this process started.
    opened_ahead: AtomicU64,
    withdrawn_ahead: AtomicU64,
    /// The latest global model's checkpoint, served from memory: its file
    /// may still be being written (see the driver's `aggregate`), and
    /// every worker downloads it as the round opens.
    published: Mutex<Option<(Digest, Arc<Vec<u8>>)>>,
    /// The round that just opened, shown to workers while the batch that
    /// opened it is made durable under the lock (see [`Node::publish`]).
    opening: Mutex<Option<Opened>>,
    /// The training examples held out of every shard, that updates are
    /// scored on.
    validation: Vec<u32>,
    /// Closed rounds to score, in order, for the scoring thread.
    scoring: Mutex<std::sync::mpsc::Sender<RoundId>>,
    /// A read-only connection for the status page, apart from the writer's
    /// lock: looking at the run never delays it.
    reader: Mutex<Store>,
    /// The database's part of the last status page, by the reader's data
    /// version: the dashboards polling twice a second each read the
    /// database once per change, not once per poll.
    status_cache: Mutex<Option<StatusRead>>,
    /// A second writer connection that only checkpoints the WAL, from the
    /// background after each round, so no request ever pays for it.
    maintenance: Mutex<Store>,
    /// Where evaluation, scoring and model rewards compute: threads of
    /// idle priority, apart from the pool aggregation and audits use, so
    /// that work nobody waits for never delays a round.
    background: background::Background,
    /// Work for the evaluation thread, in order: closed rounds to evaluate
    /// (a round and its model's digest, not its parameters, so a backlog
    /// (evaluation runs at idle priority, and falls behind when rounds are
    /// short) costs 40 bytes a round, not a model), then a finished run's
    /// model rewards.
    evaluations: Mutex<std::sync::mpsc::Sender<EvaluationJob>>,
    /// Who may register.
    admission: admission::Admission,
    /// Where large uploads are spilled while they arrive.
    uploads_dir: std::path::PathBuf,
    /// The participants' model rewards, by hash: apart from `checkpoints`,
    /// so `GET /v1/models` never serves one.
    reward_models: Checkpoints,
    /// Set while the model rewards are being built (`model_rewards`).
    rewarding: AtomicBool,
    /// The initial model's test accuracy and loss, measured in the
    /// background in a run with a contract, for its model rewards.
    initial_value: std::sync::OnceLock<(f64, f64)>,
    /// The run's bucket (`[storage]`), if it has one: every model and
    /// delta is published there, workers' updates are read from there, and
    /// `GET /v1/models` serves nothing.
    bucket: Option<Arc<CoordinatorBucket>>,
    /// Set by an in-process test that decides when audit replays run
    /// (to open a round ahead of its verdicts, or to crash the node between
    /// an answer and its verdict): replays are held here, not started.
    #[cfg(test)]
    held_replays: Mutex<Option<Vec<PendingReplay>>>,
}

struct Inner {
    /// The machine, the store and what aggregation keeps: the code that
    /// decides, apart from the shell's locks, threads and timing.
    driver: Driver,
    /// The pay gate, as of the latest scored round.
    gate: Gate,
    /// When the latest worker input for a round (a commitment, reveal,
    /// audit answer or report) arrived: what a close is timed from.
    last_input: Option<(RoundId, Instant)>,
    /// Set while an input, or the verdict of a replay started by one, may
    /// close the round: `last_input` as it was then. Closes at a deadline
    /// are not timed.
    closing_started: Option<(RoundId, Instant)>,
    /// Audits whose answer is being checked and recorded right now.
    answering: std::collections::HashSet<(RoundId, WorkerId)>,
    /// Writing the checkpoints of the round aggregated last, in the
    /// background ([`Shell::write_behind`]).
    writing: Option<std::thread::JoinHandle<Result<(), CoordinatorError>>>,
    /// The round the next round opened provisionally after (its overhead
    /// is timed to that opening), until it commits or its speculation is
    /// withdrawn.
    opened_ahead_of: Option<RoundId>,
}

/// Clears an `Inner::answering` entry when its request ends, however it ends.
struct Answering<'a> {
    node: &'a Node,
    key: (RoundId, WorkerId),
}

impl Drop for Answering<'_> {
    fn drop(&mut self) {
        self.node.lock().answering.remove(&self.key);
    }
}

impl Node {
    /// Opens (or creates) the run in `state_dir` and restores where it was.
    pub fn open(config: RunConfig, state_dir: &Path) -> Result<Arc<Self>, NodeError> {
        Self::open_with_clock(config, state_dir, Arc::new(SystemClock))
    }

    /// [`Node::open`] on the time `clock` gives.
    pub fn open_with_clock(
        config: RunConfig,
        state_dir: &Path,
        clock: Arc<dyn Clock>,
    ) -> Result<Arc<Self>, NodeError> {
        // A contract that is not a scenario touches nothing.
        if let Some(section) = &config.contract {
            contract::scenario(section)?;
        }
        std::fs::create_dir_all(state_dir)
            .map_err(|error| NodeError::io(format!("could not create {}", state_dir.display()), error))?;
        let identity = load_or_create_key(&state_dir.join("coordinator.key"))?;
        let audit_master = load_or_create_secret(&state_dir.join("audit.secret"))?;
        let tokenizer =
            TokenizerSpec::from(config.data.tokenizer.clone().unwrap_or_else(|| "char".to_owned()));
        let dataset = RunData::load(config.data.dir.as_deref(), &config.training, &tokenizer)?;
        let model = crowdtrain_train::build_model(config.training.model);
        let checkpoints = Checkpoints::open(&state_dir.join("checkpoints"))?;
        let answers = Checkpoints::open_with_extension(&state_dir.join("audit-answers"), "answer")?;
        let reward_models = Checkpoints::open(&state_dir.join("reward-models"))?;
        let deltas = deltas::Deltas::open(&state_dir.join("deltas"))?;
        let mut store = Store::open(&state_dir.join("coordinator.sqlite"))?;
        let config_json = canonical_config(&config);
        // The menu is solved before the run is created (an unsolvable
        // `[contract]` creates nothing) and recorded before any worker can
        // register; a process that stopped in between solves it again
        // (deterministically) and records it now.
        let unpublished_menu = match (&config.contract, store.contract_menu()?) {
            (Some(section), None) => Some(contract::solve_menu(section)?),
            _ => None,
        };
        let record = match store.run()? {
            Some(record)
                if record.config_json == config_json && record.coordinator_key == identity.public_key() =>
            {
                record
            }
            Some(_) => return Err(NodeError::ConfigChanged { state: state_dir.to_owned() }),
            None => {
                let now = clock.now_unix_ms();
                let record = create_run(&config, &config_json, &identity, model.as_ref(), &checkpoints, now)?;
                store.create_run(&record, Digest::of(config_json.as_bytes()), &identity)?;
                record
            }
        };
        if let Some(menu) = unpublished_menu {
            store.record(clock.now_unix_ms(), &[Event::ContractPublished { menu }], &[], &identity)?;
        }
        let contract = store.contract_menu()?.map(|menu| Signed::sign(&identity, menu));
        let metrics = metrics::Metrics::default();
        let bucket = match &config.storage {
            Some(section) => {
                let written = metrics.bucket_written_bytes.clone();
                let bucket = CoordinatorBucket::new(Bucket::open(section, &record.run_id)?, written)
                    .map_err(|error| NodeError::io("starting the bucket's client", error))?;
                Some(Arc::new(bucket))
            }
            None => None,
        };
        let admission = admission::Admission::open(&config.admission, state_dir)?;
        let uploads_dir = state_dir.join("uploads");
        // Uploads in progress when the process stopped are gone with it.
        let _ = std::fs::remove_dir_all(&uploads_dir);
        std::fs::create_dir_all(&uploads_dir)
            .map_err(|error| NodeError::io(format!("could not create {}", uploads_dir.display()), error))?;
        let validation = dataset.validation_indices(&config.training);
        // Every round is scored on this many examples, so the gate's power
        // replays as it was.
        let examples = dataset.scored_examples(config.quality.eval_examples, &validation);
        let mut gate = Gate::default();
        for (round, scores) in store.score_history()? {
            let pairs: Vec<(u64, f64)> = scores.iter().map(|(worker, score)| (worker.0, *score)).collect();
            gate.observe(round, &pairs, config.work_units(), examples, &config.quality);
        }
        let (scoring, to_score) = std::sync::mpsc::channel();
        let (evaluations, to_evaluate) = std::sync::mpsc::channel();
        let background = background::Background::start()?;
        let reader = Store::open_reader(&state_dir.join("coordinator.sqlite"))?;
        let maintenance = Store::open(&state_dir.join("coordinator.sqlite"))?;
        store.defer_wal_checkpoints()?;
        let run = Signed::sign(
            &identity,
            RunInfo {
                protocol_version: PROTOCOL_VERSION,
                run_id: record.run_id,
                coordinator: identity.public_key(),
                config: public_config(&config),
                model_name: model.name(),
                parameters: model.layout().len() as u64,
                dataset: dataset.fingerprint(),
                initial_model: record.initial_model,
                admission: config.admission.mode,
            },
        );
        let dataset = Arc::new(dataset);
        let identity = Arc::new(identity);
        let training = ModelRun {
            config: config.clone(),
            model: crowdtrain_train::build_model(config.training.model),
            dataset: Arc::clone(&dataset),
            checkpoints: checkpoints.clone(),
            deltas: deltas.clone(),
            answers: answers.clone(),
            bucket: bucket.clone().map(|bucket| bucket as Arc<dyn crowdtrain_coordinator::bucket::RunBucket>),
        };
        let defense = config.defense();
        let driver_run = driver::Run {
            settings: training.settings(),
            checks: defense.checks,
            aggregator: defense.aggregator,
            audit_master,
            identity: Arc::clone(&identity),
            clock: Arc::clone(&clock),
        };
        let driver = Driver::open(driver_run, training, store)?;
        let node = Arc::new_cyclic(|me| Self {
            me: me.clone(),
            clock,
            run,
            contract,
            run_id: record.run_id,
            identity,
            config,
            model,
            dataset,
            checkpoints,
            deltas,
            answers,
            inner: Mutex::new(Inner {
                driver,
                gate,
                last_input: None,
                closing_started: None,
                answering: Default::default(),
                writing: None,
                opened_ahead_of: None,
            }),
            changes: watch::channel(0).0,
            fatal: watch::channel(None).0,
            bytes_downloaded: AtomicU64::new(0),
            downloads: Mutex::default(),
            audit_answer_bytes: AtomicU64::new(0),
            metrics,
            opened_ahead: AtomicU64::new(0),
            withdrawn_ahead: AtomicU64::new(0),
            published: Mutex::new(None),
            opening: Mutex::new(None),
            validation,
            scoring: Mutex::new(scoring),
            background,
            reader: Mutex::new(reader),
            status_cache: Mutex::new(None),
            maintenance: Mutex::new(maintenance),
            evaluations: Mutex::new(evaluations),
            admission,
            uploads_dir,
            reward_models,
            rewarding: AtomicBool::new(false),
            initial_value: std::sync::OnceLock::new(),
            bucket,
            #[cfg(test)]
            held_replays: Mutex::new(None),
        });
        score::spawn_scorer(Arc::downgrade(&node), to_score);
        spawn_evaluator(Arc::downgrade(&node), to_evaluate);
        if node.contract.is_some() {
            node.send_evaluation_job(EvaluationJob::InitialModel);
        }
        let mut inner = node.lock();
        // Rounds the previous process closed but did not live to score.
        for round in inner.driver.store.unscored_rounds()? {
            node.schedule_scoring(round);
        }
        node.drive(&mut inner, |driver, shell| driver.carry_out(&[], shell))?;
        // Evaluations the previous process did not live to record.
        for (round, model) in inner.driver.store.unevaluated_rounds()? {
            node.schedule_evaluation(round, model);
        }
        // Model rewards the previous process did not live to record.
        if inner.driver.machine.phase() == Phase::Finished {
            node.background.run_finished();
            node.schedule_model_rewards();
        }
        drop(inner);
        Ok(node)
    }

    pub fn run_info(&self) -> &Signed<RunInfo> {
        &self.run
    }

    /// The run's signed contract menu, if it offers one.
    pub fn contract_menu(&self) -> Option<&Signed<ContractMenu>> {
        self.contract.as_ref()
    }

    pub fn run_id(&self) -> Digest {
        self.run_id
    }

    pub fn public_key(&self) -> PublicKey {
        self.identity.public_key()
    }

    /// The time now, by the node's clock.
    fn now(&self) -> u64 {
        self.clock.now_unix_ms()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves the state machine in an
        // unknown state; continuing would risk acting on it, so the node
        // halts (a restart resumes from the database).
        self.inner.lock().unwrap_or_else(|_| {
            self.fatal.send_replace(Some("a request panicked while holding the state lock".into()));
            panic!("the coordinator state lock is poisoned; the node is halting")
        })
    }

    /// Checks a state-changing request's key and nonce (the signature was
    /// verified already; `ordered`: see `Coordinator::authenticate`): the
    /// worker it comes from. Changes nothing.
    fn authenticate(&self, key: &PublicKey, nonce: u64, ordered: bool) -> Result<WorkerId, Failure> {
        let inner = self.lock();
        Ok(inner.driver.machine.authenticate(self.now(), key, nonce, ordered)?)
    }

    /// Refuses an audit answer from `worker` for `round` unless one is
    /// pending (the machine refuses it again, with the same reason, when
    /// it comes to record it). Changes nothing.
    fn expect_answer(&self, worker: WorkerId, round: RoundId) -> Result<(), Failure> {
        let inner = self.lock();
        match inner.driver.machine.pending_audit(worker, round) {
            Some(_) => Ok(()),
            None => Err(Failure::new(
                ErrorCode::NotAudited,
                format!("{worker} has no pending audit in round {round}"),
            )),
        }
    }

    /// A signed read (its signature verified): single-use, and marks its
    /// worker as seen.
    fn read(&self, key: &PublicKey, nonce: u64) -> Result<WorkerId, Failure> {
        let mut inner = self.lock();
        let now = self.now();
        Ok(self.input(&mut inner, |driver, shell| driver.read(now, key, nonce, shell))?)
    }

    /// `POST /v1/workers`: registration (idempotent per key); a new key
    /// must be admitted first.
    fn register(
        &self,
        key: PublicKey,
        nonce: u64,
        class: &str,
        token: Option<&str>,
        choice: Option<ContractChoice>,
    ) -> Result<Signed<Registration>, Failure> {
        let admitted = self.admission.check(&key, token);
        let mut inner = self.lock();
        let token = match (admitted, inner.driver.machine.worker_id(&key)) {
            (Ok(token), _) => token,
            // Registered already: registering again only says it is alive.
            (Err(_), Some(_)) => None,
            (Err(failure), None) => return Err(failure),
        };
        let now = self.now();
        let worker = self.input(&mut inner, |driver, shell| {
            driver.register(now, key, nonce, class, token, choice, shell)
        })?;
        Ok(Signed::sign(&self.identity, Registration { run_id: self.run_id, worker, public_key: key }))
    }

    /// The round as `worker` sees it, signed.
    /// Refuses a worker the run gives no more work (its bond is exhausted).
    fn may_work(&self, worker: WorkerId) -> Result<(), Failure> {
        Ok(self.lock().driver.machine.may_work(worker)?)
    }

    fn view(&self, worker: Option<WorkerId>) -> Signed<RoundView> {
        let opening = self.opening.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone();
        let view = match opening {
            Some(opened) => opened.view(worker),
            None => self.lock().driver.machine.view(worker),
        };
        Signed::sign(&self.identity, view)
    }

    /// Shows the round the machine just opened (provisionally or not) to
    /// the workers waiting for it, before the batch that opened it is
    /// durable: they download and train meanwhile. That is safe because
    /// nothing of theirs is taken for it until it is: a commitment needs the
    /// lock the batch holds (and a provisional round refuses it), and a
    /// crash before the write only means the restarted coordinator opens
    /// the same round again from what is durable (aggregation is
    /// deterministic). Returns when it was shown.
    fn publish(&self, opened: Opened) -> Instant {
        *self.opening.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(opened);
        self.changes.send_modify(|version| *version += 1);
        Instant::now()
    }

    /// `POST /v1/rounds/{round}/commitments`.
    fn commit(
        &self,
        worker: WorkerId,
        nonce: u64,
        round: RoundId,
        base_model: Digest,
        trained: Option<Shard>,
        body: CommitBody,
    ) -> Result<Signed<Receipt>, Failure> {
        let CommitBody { commitment, boundaries: leaves } = body;
        let now = self.now();
        let received = Instant::now();
        let mut inner = self.lock();
        let (outcome, audit) = self.input_timed(&mut inner, round, received, |driver, shell| {
            driver.commit(Sent { now, worker, nonce, round }, base_model, trained, commitment, &leaves, shell)
        })?;
        drop(inner);
        let digest = Digest::of(&postcard_bytes(&commitment));
        Ok(self.receipt(round, worker, Stage::Commitment, outcome.status().into(), digest, now, audit))
    }

    /// `POST /v1/rounds/{round}/reveals`: checks the payload, feeds the
    /// machine, makes the outcome durable and returns a signed receipt. A
    /// reveal that does not match its commitment is recorded (and slashed)
    /// and answered with a refusal.
    fn reveal(
        &self,
        worker: WorkerId,
        nonce: u64,
        round: RoundId,
        base_model: Digest,
        payload: Vec<u8>,
    ) -> Result<Signed<Receipt>, Failure> {
        let received = Instant::now();
        let checked = self.check_payload(&payload);
        let digest = Digest::of(&payload);
        let now = self.now();
        let mut inner = self.lock();
        let malformed = checked.as_ref().err().cloned();
        let update = checked.map_err(|failure| Refusal { code: failure.code, message: failure.message });
        let sent = Sent { now, worker, nonce, round };
        let outcome = self.input_timed(&mut inner, round, received, |driver, shell| {
            driver.reveal(sent, base_model, digest, update, &[(digest, &payload)], shell)
        })?;
        drop(inner);
        if let Some(failure) = malformed {
            // The committed update itself is malformed: recorded, rejected,
            // and the worker told why.
            return Err(Failure {
                message: format!(
                    "{}; it is your committed update, so it is recorded and rejected",
                    failure.message
                ),
                ..failure
            });
        }
        if outcome.status() == crowdtrain_protocol::Recorded::Mismatch {
            return Err(Failure::new(
                ErrorCode::RevealMismatch,
                format!(
                    "the reveal does not hash to the committed payload digest; it is recorded, the submission \
                     rejected and the stake ({} work units) slashed",
                    self.config.audit.stake
                ),
            ));
        }
        Ok(self.receipt(round, worker, Stage::Reveal, outcome.status().into(), digest, now, None))
    }

    /// `POST /v1/rounds/{round}/audits`: checks the answer against the
    /// commitment, then replays the segment in the background, or, when
    /// audits are delegated, keeps the answer for the auditor the draw
    /// named. Decoding and hashing the answer (MBs) and storing it happen
    /// off the lock, so that other workers' commitments and reveals do not
    /// wait for them.
    fn answer_audit(
        &self,
        worker: WorkerId,
        nonce: u64,
        round: RoundId,
        body: Vec<u8>,
    ) -> Result<Signed<Receipt>, Failure> {
        let received = Instant::now();
        let pending = |inner: &Inner| {
            inner.driver.machine.pending_audit(worker, round).ok_or_else(|| {
                Failure::new(ErrorCode::NotAudited, format!("{worker} has no pending audit in round {round}"))
            })
        };
        let (segment, commitment, assignment, base, shards) = {
            let mut inner = self.lock();
            let (segment, commitment) = pending(&inner)?;
            // One answer at a time per audit: copies sent side by side
            // would each cost a replay before all but one are refused.
            if !inner.answering.insert((round, worker)) {
                return Err(Failure::new(
                    ErrorCode::Duplicate,
                    format!("an answer to {worker}'s audit in round {round} is already being handled"),
                ));
            }
            let assignment = inner
                .driver
                .machine
                .assignment_in(round, worker)
                .expect("an audited worker is a participant of the round");
            let shards = inner.driver.training.shards(&assignment).map_err(Failure::internal)?;
            let base =
                inner.driver.training.base_params(&assignment.base_model).map_err(Failure::internal)?;
            (segment, commitment, assignment, base, shards)
        };
        let _answering = Answering { node: self, key: (round, worker) };
        let digest = Digest::of(&body);
        let checked = postcard::from_bytes::<AuditAnswer>(&body)
            .map_err(|error| format!("the answer does not decode: {error}"))
            .and_then(|answer| {
                let start = audit::check_answer(
                    self.model.as_ref(),
                    &base,
                    &assignment,
                    segment,
                    &commitment,
                    &answer,
                )?;
                Ok((answer, start))
            });
        // In coordinator mode the replay starts now, beside storing the
        // answer; its verdict waits until the answer is recorded.
        let (recorded, on_record) = std::sync::mpsc::channel::<()>();
        let mut replay = checked.as_ref().ok().map(|(answer, start)| PendingReplay {
            round,
            worker,
            segment,
            commitment,
            shards,
            base,
            assignment,
            evidence: Evidence::Answer { answer: Box::new(answer.clone()), start: Box::new(start.clone()) },
            recorded: on_record,
        });
        if self.config.audit.auditors == crowdtrain_protocol::config::Auditors::Coordinator
            && let Some(replay) = replay.take()
        {
            self.spawn_replay(replay);
        }
        if checked.is_ok() {
            // Durable before the row that names it (and harmless if that
            // row never comes: it is named by its hash).
            self.answers.put(&body).map_err(Failure::internal)?;
        }
        let now = self.now();
        let mut inner = self.lock();
        // Still pending (else answered or judged meanwhile: refused), and
        // the same: a round's draw never changes.
        let again = pending(&inner)?;
        debug_assert_eq!(again, (segment, commitment));
        // The same bytes may have answered another audit (a copier's answer
        // is its victim's), which passed and pruned the file between our
        // write and this lock: write it again before the record names it.
        if checked.is_ok() && !self.answers.path(&digest).exists() {
            self.answers.put(&body).map_err(Failure::internal)?;
        }
        if let Err(reason) = checked {
            // Proofs that do not hold need no replay: the answer fails.
            tracing::info!(round, %worker, segment, %reason, "audit answer refuted");
            self.input_timed(&mut inner, round, received, |driver, shell| {
                driver.answer_refuted(Sent { now, worker, nonce, round }, reason, shell)
            })?;
            self.audit_answer_bytes.fetch_add(body.len() as u64, Ordering::Relaxed);
            return Ok(self.receipt(
                round,
                worker,
                Stage::AuditAnswer,
                ReceiptStatus::Failed,
                digest,
                now,
                None,
            ));
        }
        let auditor = self.input_timed(&mut inner, round, received, |driver, shell| {
            driver.audit_answered(Sent { now, worker, nonce, round }, digest, shell)
        })?;
        self.audit_answer_bytes.fetch_add(body.len() as u64, Ordering::Relaxed);
        if let Some(auditor) = auditor {
            tracing::info!(round, %worker, segment, %auditor, "audit delegated");
            return Ok(self.receipt(
                round,
                worker,
                Stage::AuditAnswer,
                ReceiptStatus::Delegated,
                digest,
                now,
                None,
            ));
        }
        // Delegated audits with no auditor of the worker's class are the
        // coordinator's to replay, starting now.
        if let Some(replay) = replay {
            self.spawn_replay(replay);
        }
        // The coordinator replays it, in the background: the answer is
        // durable (a restart judges it from the store), the receipt goes out
        // at once, and the replay runs beside the round's other work instead
        // of after it.
        drop(inner);
        let _ = recorded.send(());
        tracing::debug!(round, %worker, answer_ms = received.elapsed().as_secs_f64() * 1e3, "answer recorded");
        Ok(self.receipt(round, worker, Stage::AuditAnswer, ReceiptStatus::Replaying, digest, now, None))
    }

    /// Replays an answered audit on a thread of its own (off the lock).
    fn spawn_replay(&self, replay: PendingReplay) {
        let Some(node) = self.me.upgrade() else { return };
        #[cfg(test)]
        if let Some(held) = self.held_replays.lock().unwrap().as_mut() {
            held.push(replay);
            return;
        }
        std::thread::spawn(move || node.replay(replay));
    }

    /// Replays an answered audit and reports the verdict to the driver,
    /// which may close the round with it.
    fn replay(&self, mut replay: PendingReplay) {
        let (round, worker, segment) = (replay.round, replay.worker, replay.segment);
        let replaying = Instant::now();
        let recorded = std::mem::replace(&mut replay.recorded, std::sync::mpsc::channel().1);
        let verdict = replay.verdict(self.model.as_ref(), &self.dataset);
        let replay_ms = replaying.elapsed().as_secs_f64() * 1e3;
        if recorded.recv().is_err() {
            // The answer was never recorded (refused, or a write
            // failed): there is nothing to decide.
            return;
        }
        let mut inner = self.lock();
        tracing::info!(round, %worker, segment, ?verdict, replay_ms, "audit");
        let now = self.now();
        inner.closing_started = inner.last_input.filter(|(held, _)| *held == round);
        let result = self
            .input(&mut inner, |driver, shell| driver.replay_finished(now, round, worker, verdict, shell));
        inner.closing_started = None;
        match result {
            Ok(()) => {}
            // Judged meanwhile from the store, at the reveal deadline.
            Err(DriverError::Refused(refusal)) => {
                tracing::debug!(round, %worker, %refusal.message, "replayed verdict not needed");
            }
            Err(error) => tracing::error!(%error, "recording an audit verdict failed"),
        }
    }

    /// `GET /v1/rounds/{round}/audit-tasks/{audited}`: what the delegated
    /// auditor replays. Only that auditor may fetch it, and only while the
    /// audit waits for its report.
    fn audit_task(&self, auditor: WorkerId, round: RoundId, audited: WorkerId) -> Result<Vec<u8>, Failure> {
        let inner = self.lock();
        let (segment, commitment, assignment) = inner.driver.delegated(auditor, round, audited, "replay")?;
        let driver = &inner.driver;
        let task = driver
            .training
            .audit_task(&driver.store, round, audited, segment, &commitment, assignment)
            .map_err(Failure::internal)?;
        let task = Signed::sign(&self.identity, task);
        Ok(postcard::to_allocvec(&task).expect("tasks encode"))
    }

    /// `POST /v1/rounds/{round}/audit-tasks/{audited}`: a delegated
    /// auditor's report. Agreeing with the commitment, it decides the
    /// audit; disagreeing, the coordinator replays the segment itself, and
    /// whichever of the two its replay contradicts is slashed.
    fn audit_report(
        &self,
        auditor: WorkerId,
        nonce: u64,
        round: RoundId,
        audited: WorkerId,
        body: &[u8],
    ) -> Result<Signed<Receipt>, Failure> {
        let received = Instant::now();
        let report: AuditReport = postcard::from_bytes(body).map_err(|error| {
            Failure::new(ErrorCode::BadRequest, format!("the report does not decode: {error}"))
        })?;
        let mut inner = self.lock();
        let now = self.now();
        let check = self.input_timed(&mut inner, round, received, |driver, shell| {
            driver.audit_report(Sent { now, worker: auditor, nonce, round }, audited, &report, shell)
        })?;
        drop(inner);
        let status = match &check {
            ReportCheck::Agrees => ReceiptStatus::Agreed,
            ReportCheck::Rechecked { contradicts, .. } => {
                if *contradicts {
                    tracing::warn!(round, %auditor, %audited, "auditor contradicted");
                }
                ReceiptStatus::Rechecked
            }
        };
        tracing::info!(round, worker = %audited, %auditor, ?check, %status, "audit reported");
        Ok(self.receipt(round, auditor, Stage::AuditReport, status, Digest::of(body), now, None))
    }

    /// A signed receipt; `audit` is the segment a commitment drew, for the
    /// worker to answer at once.
    #[allow(clippy::too_many_arguments)]
    fn receipt(
        &self,
        round: RoundId,
        worker: WorkerId,
        stage: Stage,
        status: ReceiptStatus,
        digest: Digest,
        now: u64,
        audit: Option<u32>,
    ) -> Signed<Receipt> {
        let receipt = Receipt {
            run_id: self.run_id,
            round,
            worker,
            stage,
            status,
            digest,
            received_unix_ms: now,
            audit,
        };
        Signed::sign(&self.identity, receipt)
    }

    /// An encoded update must decode to the model's size, with finite
    /// values, in the run's codec; returns the values.
    fn check_payload(&self, payload: &[u8]) -> Result<Vec<f32>, Failure> {
        let parameters = self.model.layout().len();
        Ok(crowdtrain_coordinator::model_training::check_update(
            parameters,
            self.config.training.codec,
            payload,
        )?)
    }

    /// Feeds the driver an input (`input` calls one of its methods, with
    /// this node as its [`Shell`]), then does what the batches it carried
    /// out ask of the shell ([`Node::recorded`]), whatever the input's
    /// answer. A failure to make them durable halts the node, since the
    /// machine may now be ahead of the store.
    fn input<T>(
        &self,
        inner: &mut Inner,
        input: impl FnOnce(&mut Driver, &mut NodeShell<'_>) -> Result<T, DriverError>,
    ) -> Result<T, DriverError> {
        let Inner { driver, writing, closing_started, opened_ahead_of, .. } = inner;
        let mut shell = NodeShell {
            node: self,
            writing,
            closing_started: *closing_started,
            opened_ahead_of,
            opened_ahead: None,
            opened_at: None,
        };
        let answer = input(driver, &mut shell);
        let NodeShell { opened_ahead, opened_at, .. } = shell;
        *self.opening.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = None;
        let batch = inner.driver.take_batch();
        let answer = match answer {
            Err(DriverError::Halted(error)) => Err(DriverError::Halted(error)),
            answer => match self.recorded(inner, batch, opened_ahead, opened_at) {
                Ok(()) => answer,
                Err(error) => Err(DriverError::Halted(error)),
            },
        };
        if let Err(DriverError::Halted(error)) = &answer {
            tracing::error!(%error, "halting: a durable write failed");
            self.fatal.send_replace(Some(error.to_string()));
        }
        answer
    }

    /// [`Node::input`] for a worker's input to `round`, timing the round's
    /// close if this input caused it.
    fn input_timed<T>(
        &self,
        inner: &mut Inner,
        round: RoundId,
        received: Instant,
        input: impl FnOnce(&mut Driver, &mut NodeShell<'_>) -> Result<T, DriverError>,
    ) -> Result<T, DriverError> {
        inner.last_input = Some((round, received));
        inner.closing_started = inner.last_input;
        let answer = self.input(inner, input);
        inner.closing_started = None;
        answer
    }

    /// The timer fired: deadlines may have passed.
    fn tick(self: &Arc<Self>) -> Result<(), NodeError> {
        let mut inner = self.lock();
        let now = self.now();
        self.drive(&mut inner, |driver, shell| driver.tick(now, shell))
    }

    /// [`Node::input`] for an input no worker sent (the timer, a restart),
    /// whose only failure is a halt.
    fn drive(
        &self,
        inner: &mut Inner,
        input: impl FnOnce(&mut Driver, &mut NodeShell<'_>) -> Result<(), DriverError>,
    ) -> Result<(), NodeError> {
        match self.input(inner, input) {
            Ok(()) => Ok(()),
            Err(DriverError::Halted(error) | DriverError::Failed(error)) => Err(error.into()),
            Err(refused) => Err(NodeError::Halted(refused.to_string())),
        }
    }

    /// What a batch of the driver's, now durable, asks of the shell: the
    /// round's close timed (from its last input to the next round's being
    /// shown to the workers, provisionally if it opened ahead of the
    /// round's verdicts), the counters moved, and the closed rounds handed
    /// to evaluation and scoring.
    fn recorded(
        &self,
        inner: &mut Inner,
        batch: driver::Batch,
        opened_ahead: Option<(RoundId, Instant)>,
        opened_at: Option<Instant>,
    ) -> Result<(), CoordinatorError> {
        self.metrics.observe(&batch.events, batch.received_bytes);
        let overhead = |started: Instant| opened_at.unwrap_or_else(Instant::now).duration_since(started);
        if let Some((round, started)) = opened_ahead {
            let milliseconds = overhead(started).as_millis() as u64;
            inner.driver.store.set_overhead(round, milliseconds)?;
            self.metrics.overhead(milliseconds);
        }
        for (round, result_model) in batch.committed {
            let timed_ahead = inner.opened_ahead_of.take_if(|after| *after == round).is_some();
            if !timed_ahead
                && let Some((closing, started)) = inner.closing_started
                && closing == round
            {
                let milliseconds = overhead(started).as_millis() as u64;
                inner.driver.store.set_overhead(round, milliseconds)?;
                self.metrics.overhead(milliseconds);
            }
            let base = inner.driver.store.round_base_model(round)?;
            let downloaded =
                self.downloads.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take(&base);
            inner.driver.store.set_downloads(round, downloaded)?;
            self.schedule_evaluation(round, result_model);
            self.schedule_scoring(round);
        }
        if batch.finished {
            self.background.run_finished();
            self.schedule_model_rewards();
        }
        if batch.changed {
            self.changes.send_modify(|version| *version += 1);
        }
        Ok(())
    }

    /// Hands a closed round to the scoring thread.
    fn schedule_scoring(&self, round: RoundId) {
        let sender = self.scoring.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if sender.send(round).is_err() {
            tracing::error!(round, "the scoring thread is gone");
        }
    }

    /// Hands a closed round's result, `model`, to the evaluation thread.
    fn schedule_evaluation(&self, round: RoundId, model: Digest) {
        self.send_evaluation_job(EvaluationJob::Round(round, model));
    }

    /// Queues `job` for the evaluation thread.
    fn send_evaluation_job(&self, job: EvaluationJob) {
        let sender = self.evaluations.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Err(std::sync::mpsc::SendError(job)) = sender.send(job) {
            tracing::error!(?job, "the evaluation thread is gone");
        }
    }

    /// Evaluates `round`'s result `model` on the test set and records it,
    /// then checkpoints the WAL.
    fn evaluate_round(&self, round: RoundId, model: &Digest) -> Result<(), NodeError> {
        let bytes = self.published_or_stored(model)?;
        let params =
            checkpoint::decode(&bytes, CheckpointKind::Params, &self.model.name(), self.model.layout())?;
        let built = crowdtrain_train::build_model(self.config.training.model);
        let evaluation = self.background.install(|| self.dataset.evaluate(built.as_ref(), &params))?;
        self.lock().driver.store.set_evaluation(round, evaluation.accuracy, evaluation.loss)?;
        let maintenance = self.maintenance.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Err(error) = maintenance.checkpoint_wal() {
            tracing::warn!(round, %error, "could not checkpoint the database's WAL");
        }
        Ok(())
    }

    /// A model checkpoint's bytes: the one served from memory, or its file.
    /// A result's file is written in the background, but before the next
    /// result replaces it in memory (`aggregate` waits for it), so one of
    /// the two always has it.
    fn published_or_stored(&self, model: &Digest) -> Result<Arc<Vec<u8>>, NodeError> {
        let published = self.published.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone();
        if let Some((_, bytes)) = published.filter(|(latest, _)| latest == model) {
            return Ok(bytes);
        }
        Ok(Arc::new(self.checkpoints.get(model)?))
    }

    /// `GET /v1/status`: the run at a glance, with a page of its rounds
    /// (`limit` of them from round `from`, or the latest `limit`).
    fn status(&self, from: Option<RoundId>, limit: u64) -> Result<RunStatus, Failure> {
        // The machine's view first, then the database's: the database is
        // at least as new, never older, than the view.
        let (phase, round, completed_rounds, model, state_hash, active, last_seen) = {
            let inner = self.lock();
            let active: std::collections::BTreeSet<WorkerId> = (0..inner.driver.machine.worker_count()
                as u64)
                .map(WorkerId)
                .filter(|&worker| inner.driver.machine.is_active(worker))
                .collect();
            let last_seen: Vec<Option<u64>> = (0..inner.driver.machine.worker_count() as u64)
                .map(|worker| inner.driver.machine.last_seen_ms(WorkerId(worker)))
                .collect();
            (
                inner.driver.machine.phase(),
                inner.driver.machine.open_round().map(|open| open.id),
                inner.driver.machine.completed_rounds(),
                inner.driver.training.global_model,
                inner.driver.training.global_hash.clone(),
                active,
                last_seen,
            )
        };
        let StatusRead { mut workers, rounds, rounds_total, test_accuracy, .. } =
            self.status_read(from, limit)?;
        for worker in &mut workers {
            worker.active = active.contains(&worker.worker);
            worker.last_seen_unix_ms = usize::try_from(worker.worker.0)
                .ok()
                .and_then(|index| last_seen.get(index).copied().flatten());
        }
        Ok(RunStatus {
            run_id: self.run_id,
            phase,
            round,
            completed_rounds,
            target_rounds: self.config.rounds,
            model,
            state_hash,
            test_accuracy,
            bytes_uploaded: workers.iter().map(|worker| worker.bytes_uploaded).sum(),
            bytes_downloaded: self.bytes_downloaded.load(Ordering::Relaxed),
            audit_answer_bytes: self.audit_answer_bytes.load(Ordering::Relaxed),
            workers,
            rounds,
            rounds_total,
            max_participants: self.lock().driver.machine.settings().max_participants,
            admission: self.admission.mode().as_str().to_owned(),
            opened_ahead: self.opened_ahead.load(Ordering::Relaxed),
            withdrawn_ahead: self.withdrawn_ahead.load(Ordering::Relaxed),
        })
    }

    /// What the status page reads from the database for rounds `from`
    /// (the latest if `None`) on, at most `limit`: read again only once
    /// the database has changed (SQLite's `data_version` of the reader's
    /// connection) or another page is asked for.
    fn status_read(&self, from: Option<RoundId>, limit: u64) -> Result<StatusRead, Failure> {
        let reader = self.reader.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let version = reader.data_version().map_err(Failure::internal)?;
        let mut cache = self.status_cache.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(cached) = cache.as_ref().filter(|cached| cached.key == (version, from, limit)) {
            return Ok(cached.clone());
        }
        let workers = reader.worker_statuses().map_err(Failure::internal)?;
        let rounds_total = reader.round_count().map_err(Failure::internal)?;
        let first = from.unwrap_or(rounds_total.saturating_sub(limit));
        let rounds = reader.round_records_page(first, limit).map_err(Failure::internal)?;
        let test_accuracy = match rounds.iter().rev().find_map(|round| round.test_accuracy) {
            Some(accuracy) => Some(accuracy),
            None => reader.latest_test_accuracy().map_err(Failure::internal)?,
        };
        let read = StatusRead { key: (version, from, limit), workers, rounds, rounds_total, test_accuracy };
        *cache = Some(read.clone());
        Ok(read)
    }

    /// The bytes of a model checkpoint workers may download (the latest
    /// one shared, not copied, however many download it at once).
    fn model_bytes(&self, digest: &Digest) -> Result<Arc<Vec<u8>>, Failure> {
        self.refuse_if_bucket()?;
        let published = self.published.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone();
        if let Some((_, bytes)) = published.filter(|(latest, _)| latest == digest) {
            return Ok(bytes);
        }
        let bytes = self.checkpoints.get(digest).map_err(|error| match error {
            crowdtrain_store::CheckpointError::Missing(_) => {
                Failure::new(ErrorCode::NotFound, format!("no model {digest} in this run"))
            }
            other => Failure::internal(other),
        })?;
        // Only parameter checkpoints are published, not optimizer state.
        checkpoint::decode(&bytes, CheckpointKind::Params, &self.model.name(), self.model.layout())
            .map_err(|_| Failure::new(ErrorCode::NotFound, format!("no model {digest} in this run")))?;
        Ok(Arc::new(bytes))
    }

    /// The delta that makes model `digest` from the one before it, under a
    /// compressed broadcast, if it is among the newest kept.
    fn model_delta(&self, digest: &Digest) -> Result<Arc<Vec<u8>>, Failure> {
        self.refuse_if_bucket()?;
        self.deltas.get(digest).ok_or_else(|| {
            Failure::new(ErrorCode::NotFound, format!("no delta to model {digest}: download it whole"))
        })
    }

    /// With a bucket, models and deltas come from there only: serving
    /// them here too would make the coordinator's egress grow with the
    /// number of workers again.
    fn refuse_if_bucket(&self) -> Result<(), Failure> {
        match &self.bucket {
            Some(bucket) => Err(Failure::new(
                ErrorCode::NotFound,
                format!("this run publishes its models in its bucket, {}", bucket.bucket().url()),
            )),
            None => Ok(()),
        }
    }

    /// The run's bucket, if it has one.
    pub(crate) fn bucket(&self) -> Option<&CoordinatorBucket> {
        self.bucket.as_deref()
    }

    /// `bytes` served; of `model` (whole or as a delta), if it is one a
    /// round trains from.
    fn count_download(&self, bytes: u64, model: Option<&Digest>) {
        self.bytes_downloaded.fetch_add(bytes, Ordering::Relaxed);
        self.metrics.served(bytes);
        if let Some(model) = model {
            self.downloads.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).served(model, bytes);
        }
    }

    /// `GET /metrics`: the Prometheus text.
    fn metrics_text(&self) -> String {
        let (registered, active) = {
            let inner = self.lock();
            let registered = inner.driver.machine.worker_count() as u64;
            let active =
                (0..registered).filter(|&worker| inner.driver.machine.is_active(WorkerId(worker))).count();
            (registered, active as u64)
        };
        self.metrics.render(registered, active)
    }

    /// `GET /v1/ledger`: at most `limit` entries of the given kinds (any
    /// if none), newest first from before `before`, or oldest first from
    /// `from`; decoded for people to read.
    fn ledger_page(&self, kinds: &[&str], order: LedgerOrder, limit: u64) -> Result<LedgerPage, Failure> {
        let reader = self.reader.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let sealed = reader.ledger_page(kinds, order, limit).map_err(Failure::internal)?;
        let length = reader.ledger_length().map_err(Failure::internal)?;
        drop(reader);
        let entries = sealed.iter().map(entry_view).collect::<Result<_, _>>()?;
        Ok(LedgerPage { entries, length })
    }

    /// One worker's totals and at most `limit` of its rounds from `from`
    /// on (the latest ones if `from` is not given).
    fn worker_view(
        &self,
        worker: WorkerId,
        from: Option<RoundId>,
        limit: u64,
    ) -> Result<WorkerView, Failure> {
        let (active, last_seen, opened) = {
            let inner = self.lock();
            let opened = inner
                .driver
                .machine
                .open_round()
                .map_or(inner.driver.machine.completed_rounds(), |open| open.id + 1);
            (inner.driver.machine.is_active(worker), inner.driver.machine.last_seen_ms(worker), opened)
        };
        let reader = self.reader.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut totals = reader
            .worker_status(worker)
            .map_err(Failure::internal)?
            .ok_or_else(|| Failure::new(ErrorCode::NotFound, format!("no worker {worker} in this run")))?;
        let from = from.unwrap_or(opened.saturating_sub(limit));
        let rounds = reader.worker_rounds(worker, from, limit).map_err(Failure::internal)?;
        drop(reader);
        totals.active = active;
        totals.last_seen_unix_ms = last_seen;
        Ok(WorkerView { totals, rounds })
    }

    /// `GET /v1/ledger/{index}`: one entry, decoded.
    fn ledger_entry(&self, index: u64) -> Result<LedgerEntryView, Failure> {
        let reader = self.reader.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let sealed = reader.ledger_entry(index).map_err(Failure::internal)?;
        drop(reader);
        let sealed =
            sealed.ok_or_else(|| Failure::new(ErrorCode::NotFound, format!("no ledger entry {index}")))?;
        entry_view(&sealed)
    }
}

/// The database's part of a status page, and what it was read for: the
/// reader's data version and the page asked for.
#[derive(Clone)]
struct StatusRead {
    key: (i64, Option<RoundId>, u64),
    workers: Vec<crowdtrain_protocol::wire::WorkerStatus>,
    rounds: Vec<crowdtrain_protocol::wire::RoundRecord>,
    rounds_total: u64,
    test_accuracy: Option<f64>,
}

/// The node as its driver's [`Shell`] for one batch: it shows rounds and
/// serves models from memory, writes checkpoints and replays audits on
/// threads of its own, and times a round opened ahead.
struct NodeShell<'a> {
    node: &'a Node,
    writing: &'a mut Option<std::thread::JoinHandle<Result<(), CoordinatorError>>>,
    closing_started: Option<(RoundId, Instant)>,
    opened_ahead_of: &'a mut Option<RoundId>,
    /// The round the batch opened the next round ahead of, if it did, and
    /// when that round's last input came.
    opened_ahead: Option<(RoundId, Instant)>,
    /// When the batch showed a new round to the workers, if it did.
    opened_at: Option<Instant>,
}

impl Shell for NodeShell<'_> {
    fn show(&mut self, opened: Opened) {
        self.opened_at = Some(self.node.publish(opened));
    }

    fn serve(&mut self, model: Digest, bytes: Arc<Vec<u8>>) {
        *self.node.published.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some((model, bytes));
    }

    fn opened_ahead(&mut self, after: RoundId) {
        self.node.opened_ahead.fetch_add(1, Ordering::Relaxed);
        self.opened_ahead = self.closing_started.filter(|(closing, _)| *closing == after);
        *self.opened_ahead_of = Some(after);
    }

    fn withdrawn(&mut self, _round: RoundId, provisional: Option<RoundId>) {
        if provisional.is_some() {
            self.node.withdrawn_ahead.fetch_add(1, Ordering::Relaxed);
        }
        *self.opened_ahead_of = None;
        self.opened_ahead = None;
    }

    fn write_behind(&mut self, write: CheckpointWrite) {
        *self.writing = Some(std::thread::spawn(move || write.run()));
    }

    fn written(&mut self) -> Result<(), CoordinatorError> {
        match self.writing.take() {
            Some(writing) => Ok(writing.join().expect("writing a checkpoint does not panic")?),
            None => Ok(()),
        }
    }

    fn replay(&mut self, replay: PendingReplay) {
        self.node.spawn_replay(replay);
    }
}

/// A stored ledger entry as people read it.
fn entry_view(sealed: &crowdtrain_protocol::ledger::Sealed) -> Result<LedgerEntryView, Failure> {
    let entry = crowdtrain_protocol::ledger::Entry::from_bytes(&sealed.bytes).map_err(Failure::internal)?;
    Ok(LedgerEntryView {
        index: entry.index,
        hash: sealed.hash,
        previous: entry.previous,
        unix_ms: entry.unix_ms,
        kind: entry.event.kind().to_owned(),
        event: entry.event,
    })
}

/// Starts the evaluation thread: closed rounds in order, one at a time;
/// it ends when the node is gone.
/// What the evaluation thread does, in the order it was asked.
#[derive(Debug)]
enum EvaluationJob {
    /// Evaluate a closed round's result on the test set and record it.
    Round(RoundId, Digest),
    /// Measure the initial model, which a contract's model rewards start
    /// from.
    InitialModel,
    /// Build a finished run's model rewards. Queued behind the last
    /// round's evaluation, so every checkpoint's value is recorded by then
    /// and the rewards measure only their own candidates.
    ModelRewards,
}

fn spawn_evaluator(node: std::sync::Weak<Node>, jobs: std::sync::mpsc::Receiver<EvaluationJob>) {
    std::thread::Builder::new()
        .name("crowdtrain-evaluation".into())
        .spawn(move || {
            for job in jobs {
                let Some(node) = node.upgrade() else { return };
                match job {
                    EvaluationJob::Round(round, model) => {
                        if let Err(error) = node.evaluate_round(round, &model) {
                            tracing::error!(round, %error, "evaluation failed");
                        }
                    }
                    EvaluationJob::InitialModel => {
                        if let Err(error) = node.evaluate_initial_model() {
                            tracing::warn!(%error, "could not measure the initial model (the model rewards will)");
                        }
                    }
                    EvaluationJob::ModelRewards => node.run_model_rewards(),
                }
            }
        })
        .expect("the evaluation thread starts");
}

/// The configuration as published to workers and compared across restarts:
/// the data directory is the coordinator's local business.
fn public_config(config: &RunConfig) -> RunConfig {
    let mut public = config.clone();
    public.data.dir = None;
    public
}

fn canonical_config(config: &RunConfig) -> String {
    serde_json::to_string(&public_config(config)).expect("configurations serialise")
}

/// The canonical postcard bytes of a protocol value, for digests.
fn postcard_bytes<T: serde::Serialize>(value: &T) -> Vec<u8> {
    postcard::to_allocvec(value).expect("protocol values always encode")
}

/// A secret key of the run: 32 random bytes created on first use (mode
/// 0600). The audit master key (round secrets derive from it, so it must
/// outlive restarts and never leave the coordinator; tests may place their
/// own to make audit draws reproducible) and the admission secret (tokens
/// are MACs under it).
fn load_or_create_secret(path: &Path) -> Result<[u8; 32], NodeError> {
    let io = |error| NodeError::io(format!("audit secret {}", path.display()), error);
    if path.exists() {
        let text = std::fs::read_to_string(path).map_err(io)?;
        let mut secret = [0u8; 32];
        hex::decode_to_slice(text.trim(), &mut secret).map_err(|_| {
            NodeError::io(
                format!("{} must hold 64 hex digits", path.display()),
                std::io::Error::other("malformed"),
            )
        })?;
        return Ok(secret);
    }
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret).map_err(|error| {
        NodeError::io(
            "the operating system's random number generator",
            std::io::Error::other(error.to_string()),
        )
    })?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = match options.open(path) {
        // Created meanwhile by another process (the coordinator, or
        // `crowdtrain admission token`): use that one.
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {
            return load_or_create_secret(path);
        }
        opened => opened.map_err(io)?,
    };
    std::io::Write::write_all(&mut file, hex::encode(secret).as_bytes()).map_err(io)?;
    file.sync_all().map_err(io)?;
    Ok(secret)
}

/// The coordinator's key, created on first start.
fn load_or_create_key(path: &Path) -> Result<Identity, NodeError> {
    if path.exists() {
        return Ok(crate::files::load_identity(path)?);
    }
    let identity = crate::files::generate_identity()?;
    crate::files::save_identity(&identity, path)?;
    Ok(identity)
}

/// A new run: initial parameters and zero momentum as checkpoints, and the
/// run id, which binds the configuration, the coordinator and the start.
fn create_run(
    config: &RunConfig,
    config_json: &str,
    identity: &Identity,
    model: &dyn Model,
    checkpoints: &Checkpoints,
    now: u64,
) -> Result<RunRecord, NodeError> {
    let name = model.name();
    let params = model.layout().initialize(config.training.seed);
    let zeros = vec![0.0; params.len()];
    let initial_model =
        checkpoints.put(&checkpoint::encode(CheckpointKind::Params, &name, model.layout(), &params))?;
    let initial_momentum =
        checkpoints.put(&checkpoint::encode(CheckpointKind::OuterMomentum, &name, model.layout(), &zeros))?;
    let mut hasher = blake3::Hasher::new_derive_key("crowdtrain 2026-11 run-id v1");
    hasher.update(&(config_json.len() as u64).to_le_bytes());
    hasher.update(config_json.as_bytes());
    hasher.update(&identity.public_key().0);
    hasher.update(&initial_model.0);
    hasher.update(&now.to_le_bytes());
    Ok(RunRecord {
        run_id: Digest(*hasher.finalize().as_bytes()),
        protocol_version: PROTOCOL_VERSION,
        config_json: config_json.to_owned(),
        coordinator_key: identity.public_key(),
        model_name: name,
        initial_model,
        initial_momentum,
        created_unix_ms: now,
    })
}

/// The bytes of each model served (whole or as a delta), until a round that
/// trains from it closes and takes them: so each round carries its own
/// downloads, even when two close in one batch (under a delayed outer
/// update), instead of the first taking all since the last close. Rounds
/// that share a base (the first `delay + 1`, or one that failed and the
/// round after it) are counted once, on the first of them to close: the
/// workers downloaded it once.
#[derive(Debug, Default)]
struct ModelDownloads {
    served: std::collections::HashMap<Digest, u64>,
}

impl ModelDownloads {
    fn served(&mut self, model: &Digest, bytes: u64) {
        *self.served.entry(*model).or_default() += bytes;
    }

    /// The bytes of `base` served since a round training from it last
    /// closed.
    fn take(&mut self, base: &Digest) -> u64 {
        self.served.remove(base).unwrap_or(0)
    }
}

#[cfg(test)]
mod downloads_tests {
    use super::*;

    #[test]
    fn two_rounds_closing_in_one_batch_each_carry_the_downloads_of_their_own_base() {
        let (first, second) = (Digest::of(b"round 4's base"), Digest::of(b"round 5's base"));
        let mut downloads = ModelDownloads::default();
        downloads.served(&first, 100);
        downloads.served(&second, 30);
        downloads.served(&first, 20);
        // Rounds 4 and 5 close in one batch, in that order.
        assert_eq!((downloads.take(&first), downloads.take(&second)), (120, 30));
        assert_eq!(downloads.take(&first), 0, "a round sharing round 4's base downloaded nothing more");
    }
}
