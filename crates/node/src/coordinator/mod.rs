//! The coordinator process: the driver around the round state machine.
//!
//! [`Node`] owns the machine, the SQLite store, the checkpoints, the global
//! model and the defence. Every input (a request, a timer) goes through the
//! same steps under one lock: feed the machine, drain its actions, write
//! them durably in one transaction, and only then answer. Aggregation
//! happens where the machine asks for it ([`Action::CloseRound`]): the
//! checks and the robust aggregator (the same [`ModelDefense`] the
//! simulation uses), then the same `outer_step`. Scoring each round's
//! updates on held-out data, and paying for them, happens off the request
//! path on its own thread ([`score`]), round after round in order.

mod admission;
mod audit;
mod background;
mod bucket;
mod clock;
pub mod contract;
mod deltas;
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
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crowdtrain_data::text::TokenizerSpec;
use crowdtrain_defense::{Decision, Gate, ModelDefense, Submission};
use crowdtrain_protocol::contract::{ContractChoice, ContractMenu};
use crowdtrain_protocol::coordinator::Settings;
use crowdtrain_protocol::judge::ReportCheck;
use crowdtrain_protocol::ledger::Event;
use crowdtrain_protocol::wire::{
    AuditAnswer, AuditReport, AuditTask, ErrorCode, LedgerEntryView, LedgerPage, PROTOCOL_VERSION, Phase,
    Receipt, ReceiptStatus, Registration, RunInfo, RunStatus, Stage, WorkerView,
};
use crowdtrain_protocol::{
    Action, Aggregated, Commitment, Coordinator, Digest, Identity, Opened, Outcome, PublicKey, Refusal,
    RoundId, RoundResult, RoundView, RunConfig, Shard, Signed, Verdict, WorkerId,
};
use crowdtrain_store::delta::ModelDelta;
use crowdtrain_store::{CheckpointKind, Checkpoints, LedgerOrder, RunRecord, Store, checkpoint};
use crowdtrain_train::diloco::outer_step;
use crowdtrain_train::{Model, OuterState};
use tokio::sync::watch;

pub use admission::issue_tokens as issue_admission_tokens;
pub use clock::{Clock, SystemClock, VirtualClock};
use http::Failure;
pub use http::serve;
pub use net::raise_descriptor_limit;

use crate::NodeError;
use crate::data::{RunData, Shards};
use crate::replay::replay_segment;
use crate::storage::{BlobKey, Bucket, CoordinatorBucket};

/// Milliseconds since the Unix epoch, the machine's notion of time.
pub fn now_unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |elapsed| elapsed.as_millis() as u64)
}

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
    identity: Identity,
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
    /// `bytes_downloaded` when the last round closed: what a round's
    /// workers downloaded is the difference at its close.
    downloaded_at_close: AtomicU64,
    /// What `GET /metrics` shows.
    metrics: metrics::Metrics,
    /// Provisional rounds opened, and withdrawn, since this process started.
    opened_ahead: AtomicU64,
    withdrawn_ahead: AtomicU64,
    /// The latest global model's checkpoint, served from memory: its file
    /// may still be being written (see [`Node::aggregate`]), and every
    /// worker downloads it as the round opens.
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
    /// Set by an in-process test about to crash the node between an audit
    /// answer and its verdict: replays die unstarted, as with the process.
    #[cfg(test)]
    lose_replays: AtomicBool,
}

struct Inner {
    machine: Coordinator,
    store: Store,
    /// The latest global parameters and outer momentum.
    global: OuterState,
    /// `global`'s state hash, for the status page.
    global_hash: String,
    /// The digest of `global.params`' checkpoint.
    global_model: Digest,
    /// Under a delayed outer update, the parameters before the latest outer
    /// step and their digest: the base of the rounds still audited (see
    /// [`Node::base_params`]).
    previous_global: Option<(Digest, Vec<f32>)>,
    /// The checks and the aggregator, with what they remember.
    defense: ModelDefense,
    /// The pay gate, as of the latest scored round.
    gate: Gate,
    /// Set between a round's aggregation and its commit or failure.
    pending: Option<Pending>,
    /// The open round's accepted reveals, decoded as they arrived (with the
    /// digests of their bytes), so closing the round reads nothing back.
    decoded: std::collections::HashMap<(RoundId, WorkerId), (Digest, Vec<f32>)>,
    /// When the latest worker input for a round (a commitment, reveal,
    /// audit answer or report) arrived: what a close is timed from.
    last_input: Option<(RoundId, Instant)>,
    /// Set while an input, or the verdict of a replay started by one, may
    /// close the round: `last_input` as it was then. Closes at a deadline
    /// are not timed.
    closing_started: Option<(RoundId, Instant)>,
    /// Shards by slot count, for audit replays.
    shards: std::collections::HashMap<u32, Arc<Shards>>,
    /// Audits whose answer is being checked and recorded right now.
    answering: std::collections::HashSet<(RoundId, WorkerId)>,
    /// Writing the checkpoints of the round aggregated last, in the
    /// background (see [`Node::aggregate`]).
    writing: Option<std::thread::JoinHandle<Result<(), NodeError>>>,
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

/// A round's defence decision on `accepted`, and the global state it leads
/// to, until the machine commits the round (or fails it, or withdraws the
/// speculation it was computed for).
struct Pending {
    round: RoundId,
    accepted: Vec<WorkerId>,
    aggregated: Aggregated,
    decision: Decision,
    next: Option<NextGlobal>,
}

/// An answered audit for the coordinator to replay: what the replay needs,
/// taken from under the lock.
struct PendingReplay {
    round: RoundId,
    worker: WorkerId,
    segment: u32,
    commitment: Commitment,
    assignment: crowdtrain_protocol::Assignment,
    shards: Arc<Shards>,
    /// The round's base parameters.
    base: Vec<f32>,
    answer: AuditAnswer,
    start: crowdtrain_train::TrainState,
    /// Signalled once the answer is durable; dropped if it never will be.
    recorded: std::sync::mpsc::Receiver<()>,
}

struct NextGlobal {
    state: OuterState,
    model: Digest,
    /// The encoded checkpoint named `model`, to serve from memory.
    model_bytes: Arc<Vec<u8>>,
    momentum: Digest,
    aggregator: Option<Digest>,
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
                bucket::restore_checkpoints(&store, &record, &checkpoints, &bucket)?;
                Some(bucket)
            }
            None => None,
        };
        let (global, global_model) = load_global(&store, &record, &config, model.as_ref(), &checkpoints)?;
        let bucket = match bucket {
            Some(bucket) => {
                // What the latest round trains from, again: the process
                // that wrote it may have been killed before its upload.
                // The delta before the model, as in the writer: a worker
                // that finds the model and no delta downloads it whole.
                if let Some(delta) = deltas.get(&global_model) {
                    bucket.put_blocking(BlobKey::Delta { target: global_model }, delta.to_vec())?;
                }
                bucket.put_blocking(BlobKey::Model(global_model), checkpoints.get(&global_model)?)?;
                bucket::publish_optimizer_state(&store, &record, &checkpoints, &bucket)?;
                tracing::info!(url = bucket.bucket().url(), model = %global_model, "models published in the bucket");
                Some(Arc::new(bucket))
            }
            None => None,
        };
        let mut settings = Settings::from_config(&config);
        settings.max_participants = max_participants(&config, &dataset);
        let admission = admission::Admission::open(&config.admission, state_dir)?;
        let uploads_dir = state_dir.join("uploads");
        // Uploads in progress when the process stopped are gone with it.
        let _ = std::fs::remove_dir_all(&uploads_dir);
        std::fs::create_dir_all(&uploads_dir)
            .map_err(|error| NodeError::io(format!("could not create {}", uploads_dir.display()), error))?;
        // Answers only passed audits name are not evidence (see `prune_answers`).
        for digest in store.prunable_answer_digests()? {
            answers.remove(&digest)?;
        }
        let machine = Coordinator::restore(
            settings,
            record.run_id,
            record.initial_model,
            audit_master,
            &store.events()?,
            clock.now_unix_ms(),
        );
        // The defence remembers every update of the rounds before the one it
        // decides next (the open one, if any), and the aggregator state the
        // latest closed round left.
        let next_decided = machine.open_round().map_or(i64::MAX as u64, |round| round.id);
        let defense_config = config.defense();
        let aggregator_state = restore_aggregator(
            &store,
            &checkpoints,
            &defense_config.aggregator,
            model.as_ref(),
            RoundId::MAX,
        )?;
        let defense = ModelDefense::restore(
            defense_config.checks,
            defense_config.aggregator,
            aggregator_state,
            store.earlier_digests(next_decided, crowdtrain_defense::RESUBMISSION_WINDOW_ROUNDS as u64)?,
        );
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
        let node = Arc::new_cyclic(|me| Self {
            me: me.clone(),
            clock,
            run,
            contract,
            run_id: record.run_id,
            identity,
            config,
            model,
            dataset: Arc::new(dataset),
            checkpoints,
            deltas,
            answers,
            inner: Mutex::new(Inner {
                machine,
                store,
                global_hash: global.hash().to_hex(),
                global,
                global_model,
                previous_global: None,
                defense,
                gate,
                pending: None,
                decoded: Default::default(),
                last_input: None,
                closing_started: None,
                shards: Default::default(),
                answering: Default::default(),
                writing: None,
                opened_ahead_of: None,
            }),
            changes: watch::channel(0).0,
            fatal: watch::channel(None).0,
            bytes_downloaded: AtomicU64::new(0),
            downloaded_at_close: AtomicU64::new(0),
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
            lose_replays: AtomicBool::new(false),
        });
        score::spawn_scorer(Arc::downgrade(&node), to_score);
        spawn_evaluator(Arc::downgrade(&node), to_evaluate);
        if node.contract.is_some() {
            node.send_evaluation_job(EvaluationJob::InitialModel);
        }
        let mut inner = node.lock();
        // Rounds the previous process closed but did not live to score.
        for round in inner.store.unscored_rounds()? {
            node.schedule_scoring(round);
        }
        node.drive(&mut inner, &[])?;
        // Evaluations the previous process did not live to record.
        for (round, model) in inner.store.unevaluated_rounds()? {
            node.schedule_evaluation(round, model);
        }
        // Model rewards the previous process did not live to record.
        if inner.machine.phase() == Phase::Finished {
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
    /// verified already): the worker it comes from. Changes nothing.
    fn authenticate(&self, key: &PublicKey, nonce: u64) -> Result<WorkerId, Failure> {
        let inner = self.lock();
        Ok(inner.machine.authenticate(self.now(), key, nonce, true)?)
    }

    /// A signed read (its signature verified): single-use, and marks its
    /// worker as seen.
    fn read(&self, key: &PublicKey, nonce: u64) -> Result<WorkerId, Failure> {
        let mut inner = self.lock();
        let worker = inner.machine.read(self.now(), key, nonce)?;
        self.drive(&mut inner, &[]).map_err(Failure::internal)?;
        Ok(worker)
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
        let token = match (admitted, inner.machine.worker_id(&key)) {
            (Ok(token), _) => token,
            // Registered already: registering again only says it is alive.
            (Err(_), Some(_)) => None,
            (Err(failure), None) => return Err(failure),
        };
        inner.machine.check_choice_at_registration(&key, choice.is_some())?;
        let (worker, _) = inner.machine.register_admitted(self.now(), key, class, Some(nonce), token)?;
        if let Some(choice) = choice {
            let chosen = inner.machine.choose(self.now(), key, choice);
            // The registration stands either way; what is recorded is written first.
            self.drive(&mut inner, &[]).map_err(Failure::internal)?;
            chosen?;
        }
        self.drive(&mut inner, &[]).map_err(Failure::internal)?;
        Ok(Signed::sign(&self.identity, Registration { run_id: self.run_id, worker, public_key: key }))
    }

    /// The round as `worker` sees it, signed.
    /// Refuses a worker the run gives no more work (its bond is exhausted).
    fn may_work(&self, worker: WorkerId) -> Result<(), Failure> {
        Ok(self.lock().machine.may_work(worker)?)
    }

    fn view(&self, worker: Option<WorkerId>) -> Signed<RoundView> {
        let opening = self.opening.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone();
        let view = match opening {
            Some(opened) => opened.view(worker),
            None => self.lock().machine.view(worker),
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
    fn publish(&self, inner: &Inner, round: RoundId) -> Option<Instant> {
        let opened = inner.machine.opened().filter(|opened| opened.id() == round)?;
        *self.opening.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(opened);
        self.changes.send_modify(|version| *version += 1);
        Some(Instant::now())
    }

    /// `POST /v1/rounds/{round}/commitments`.
    fn commit(
        &self,
        worker: WorkerId,
        nonce: u64,
        round: RoundId,
        base_model: Digest,
        trained: Option<Shard>,
        commitment: Commitment,
    ) -> Result<Signed<Receipt>, Failure> {
        let now = self.now();
        let received = Instant::now();
        let mut inner = self.lock();
        let outcome = inner.machine.commit(now, worker, nonce, round, base_model, trained, commitment)?;
        self.drive_timed(&mut inner, &[], round, received)?;
        let audit = inner.machine.pending_audit(worker, round).map(|(segment, _)| segment);
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
        let problem = checked
            .as_ref()
            .err()
            .map(|failure| Refusal { code: failure.code, message: failure.message.clone() });
        let outcome = inner.machine.reveal(now, worker, nonce, round, base_model, digest, problem)?;
        let malformed = match checked {
            Ok(values) => {
                if outcome == Outcome::Recorded(crowdtrain_protocol::Recorded::Accepted) {
                    inner.decoded.insert((round, worker), (digest, values));
                }
                None
            }
            Err(failure) => Some(failure),
        };
        self.drive_timed(&mut inner, &[(digest, &payload)], round, received)?;
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
            inner.machine.pending_audit(worker, round).ok_or_else(|| {
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
                .machine
                .assignment_in(round, worker)
                .expect("an audited worker is a participant of the round");
            let shards = self.shards(&mut inner, &assignment).map_err(Failure::internal)?;
            let base = self.base_params(&inner, &assignment.base_model).map_err(Failure::internal)?;
            (segment, commitment, assignment, base, shards)
        };
        let _answering = Answering { node: self, key: (round, worker) };
        let digest = Digest::of(&body);
        let checked = postcard::from_bytes::<AuditAnswer>(&body)
            .map_err(|error| format!("the answer does not decode: {error}"))
            .and_then(|answer| {
                let start = self.check_answer(&base, &assignment, segment, &commitment, &answer)?;
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
            answer: answer.clone(),
            start: start.clone(),
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
            inner.machine.answer_refuted(now, worker, nonce, round, reason)?;
            self.drive_timed(&mut inner, &[], round, received)?;
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
        let auditor = inner.machine.audit_answered(now, worker, nonce, round, digest)?;
        self.drive_timed(&mut inner, &[], round, received)?;
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

    /// Replays an answered audit off the lock and reports the verdict to
    /// the machine, which may close the round with it.
    fn spawn_replay(&self, replay: PendingReplay) {
        let Some(node) = self.me.upgrade() else { return };
        #[cfg(test)]
        if self.lose_replays.load(Ordering::SeqCst) {
            return;
        }
        std::thread::spawn(move || {
            let (round, worker, segment) = (replay.round, replay.worker, replay.segment);
            let replaying = Instant::now();
            let verdict = match replay_segment(
                node.model.as_ref(),
                &node.dataset,
                &replay.shards,
                &replay.assignment,
                segment,
                replay.start,
                &replay.base,
                &replay.answer.residual_in,
            ) {
                Ok(report) => audit::verdict_of(
                    &report,
                    &replay.answer,
                    &replay.commitment,
                    &replay.assignment,
                    segment,
                ),
                Err(error) => Verdict::Failed(format!("the segment cannot be replayed: {error}")),
            };
            let replay_ms = replaying.elapsed().as_secs_f64() * 1e3;
            if replay.recorded.recv().is_err() {
                // The answer was never recorded (refused, or a write
                // failed): there is nothing to decide.
                return;
            }
            let mut inner = node.lock();
            tracing::info!(round, %worker, segment, ?verdict, replay_ms, "audit");
            if let Err(refusal) = inner.machine.audit_result(node.now(), round, worker, verdict, None, None) {
                // Judged meanwhile from the store, at the reveal deadline.
                tracing::debug!(round, %worker, %refusal.message, "replayed verdict not needed");
                return;
            }
            inner.closing_started = inner.last_input.filter(|(held, _)| *held == round);
            let result = node.drive(&mut inner, &[]);
            inner.closing_started = None;
            if let Err(error) = result {
                tracing::error!(%error, "recording an audit verdict failed");
            }
        });
    }

    /// `GET /v1/rounds/{round}/audit-tasks/{audited}`: what the delegated
    /// auditor replays. Only that auditor may fetch it, and only while the
    /// audit waits for its report.
    fn audit_task(&self, auditor: WorkerId, round: RoundId, audited: WorkerId) -> Result<Vec<u8>, Failure> {
        let inner = self.lock();
        let (segment, commitment, assignment) = self.delegated(&inner, auditor, round, audited, "replay")?;
        // The first segment starts from the round's model; the stored
        // answer holds any other start, and the residual (checked against
        // the commitment when the answer arrived) the last segment needs.
        let needs_answer =
            segment != 1 || (segment == commitment.segments && commitment.residual_in.is_some());
        let answer = if needs_answer {
            Some(self.stored_answer(&inner, round, audited).map_err(Failure::internal)?)
        } else {
            None
        };
        let (start_state, residual_in) = match answer {
            Some(answer) if segment != 1 => (answer.start_state, answer.residual_in),
            answer => (
                crowdtrain_train::TrainState::new(
                    self.model.name(),
                    self.base_params(&inner, &assignment.base_model).map_err(Failure::internal)?,
                )
                .to_bytes(),
                answer.map(|answer| answer.residual_in).unwrap_or_default(),
            ),
        };
        let task = Signed::sign(&self.identity, AuditTask { assignment, segment, start_state, residual_in });
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
        let (segment, commitment, assignment) = self.delegated(&inner, auditor, round, audited, "report")?;
        let answer = self.stored_answer(&inner, round, audited).map_err(Failure::internal)?;
        let now = self.now();
        let steps = assignment.recipe.inner_steps;
        let check = ReportCheck::of(&report, &answer, &commitment, steps, segment, || {
            // The auditor says the worker's claim is false: check it.
            let base = self.base_params(&inner, &assignment.base_model).map_err(Failure::internal)?;
            let start = self
                .check_answer(&base, &assignment, segment, &commitment, &answer)
                .map_err(Failure::internal)?;
            self.replay_report(&mut inner, &assignment, segment, start, &answer.residual_in)
                .map_err(Failure::internal)?
                .map_err(Failure::internal)
        })?;
        let status = match &check {
            ReportCheck::Agrees => ReceiptStatus::Agreed,
            ReportCheck::Rechecked { contradicts, .. } => {
                if *contradicts {
                    tracing::warn!(round, %auditor, %audited, "auditor contradicted");
                }
                ReceiptStatus::Rechecked
            }
        };
        tracing::info!(round, worker = %audited, %auditor, segment, ?check, %status, "audit reported");
        inner.machine.audit_reported(now, round, auditor, nonce, audited, check)?;
        self.drive_timed(&mut inner, &[], round, received)?;
        Ok(self.receipt(round, auditor, Stage::AuditReport, status, Digest::of(body), now, None))
    }

    /// [`Action::JudgeAudit`]: an answered audit nobody else will judge
    /// (its auditor did not report by the reveal deadline, or the process
    /// replaying it stopped): the coordinator replays it from the stored
    /// answer, in the background like a fresh answer.
    fn judge_stored(&self, inner: &mut Inner, round: RoundId, worker: WorkerId) -> Result<(), NodeError> {
        let (segment, commitment) =
            inner.machine.answered_audit(round, worker).expect("the machine asked for an answered audit");
        let assignment =
            inner.machine.assignment_in(round, worker).expect("audited workers are participants");
        let answer = self.stored_answer(inner, round, worker)?;
        let base = self.base_params(inner, &assignment.base_model)?;
        match self.check_answer(&base, &assignment, segment, &commitment, &answer) {
            Err(reason) => {
                let verdict = Verdict::Failed(reason);
                tracing::info!(round, %worker, segment, ?verdict, "stored audit answer judged");
                inner
                    .machine
                    .audit_result(self.now(), round, worker, verdict, None, None)
                    .expect("an answered audit is pending");
            }
            Ok(start) => {
                tracing::info!(round, %worker, segment, "replaying a stored audit answer");
                let shards = self.shards(inner, &assignment)?;
                let (recorded, on_record) = std::sync::mpsc::channel();
                let _ = recorded.send(());
                self.spawn_replay(PendingReplay {
                    round,
                    worker,
                    segment,
                    commitment,
                    assignment,
                    shards,
                    base,
                    answer,
                    start,
                    recorded: on_record,
                });
            }
        }
        Ok(())
    }

    /// `worker`'s stored answer in `round`, its bytes checked against the
    /// digest the database holds.
    fn stored_answer(
        &self,
        inner: &Inner,
        round: RoundId,
        worker: WorkerId,
    ) -> Result<AuditAnswer, NodeError> {
        let digest = inner.store.audit_answer_digest(round, worker)?;
        if let Some(bucket) = &self.bucket {
            bucket::restore_answer(
                &self.answers,
                bucket,
                worker,
                digest,
                self.config.limits.max_upload_bytes,
            )?;
        }
        postcard::from_bytes(&self.answers.get(&digest)?)
            .map_err(|error| NodeError::Untrusted(format!("a stored audit answer does not decode: {error}")))
    }

    /// The segment, commitment and assignment of `audited`'s audit in
    /// `round`, if `auditor` is the one to replay it now; `doing` names
    /// the request in the refusal.
    fn delegated(
        &self,
        inner: &Inner,
        auditor: WorkerId,
        round: RoundId,
        audited: WorkerId,
        doing: &str,
    ) -> Result<(u32, Commitment, crowdtrain_protocol::Assignment), Failure> {
        let Some((segment, commitment)) = inner.machine.delegated_audit(auditor, round, audited) else {
            return Err(Failure::new(
                ErrorCode::NotAudited,
                format!("{auditor} has no audit of {audited} to {doing} in round {round}"),
            ));
        };
        let assignment =
            inner.machine.assignment_in(round, audited).expect("audited workers are participants");
        Ok((segment, commitment, assignment))
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
        let expected = self.model.layout().len();
        let (codec, values) = crowdtrain_train::codec::decode(payload, expected).map_err(|error| {
            let code = match error {
                crowdtrain_train::CodecError::NonFinite { .. }
                | crowdtrain_train::CodecError::BadScale { .. } => ErrorCode::NonFinite,
                _ => ErrorCode::WrongShape,
            };
            Failure::new(code, format!("the update was refused: {error}"))
        })?;
        if codec != self.config.training.codec {
            return Err(Failure::new(
                ErrorCode::WrongShape,
                format!("the run encodes updates as {}, not {}", self.config.training.codec, codec),
            ));
        }
        Ok(values)
    }

    /// [`Node::drive`], timing the round's close if this input caused it.
    fn drive_timed(
        &self,
        inner: &mut Inner,
        payloads: &[(Digest, &[u8])],
        round: RoundId,
        received: Instant,
    ) -> Result<(), Failure> {
        inner.last_input = Some((round, received));
        inner.closing_started = inner.last_input;
        let result = self.drive(inner, payloads);
        inner.closing_started = None;
        result.map_err(Failure::internal)
    }

    /// The timer fired: deadlines may have passed.
    fn tick(self: &Arc<Self>) -> Result<(), NodeError> {
        let mut inner = self.lock();
        inner.machine.handle_timeout(self.now());
        self.drive(&mut inner, &[])
    }

    /// Carries out the machine's actions (see [`Node::carry_out`]); a
    /// failure halts the node, since the machine may now be ahead of what is
    /// durable. `payloads` are the bytes of the reveal being recorded, if
    /// any, by digest.
    fn drive(&self, inner: &mut Inner, payloads: &[(Digest, &[u8])]) -> Result<(), NodeError> {
        let result = self.carry_out(inner, payloads);
        if let Err(error) = &result {
            tracing::error!(%error, "halting: a durable write failed");
            self.fatal.send_replace(Some(error.to_string()));
        }
        result
    }

    /// Carries out the machine's actions in order: its records become
    /// durable with their ledger entries in one transaction, before the
    /// caller answers anyone; the work it asks for (aggregating, betting on
    /// audits, judging one) is done on the way.
    fn carry_out(&self, inner: &mut Inner, payloads: &[(Digest, &[u8])]) -> Result<(), NodeError> {
        let mut events = Vec::new();
        let mut changed = false;
        let mut committed = Vec::new();
        let mut opened_ahead: Option<(RoundId, Instant)> = None;
        // When the batch showed a new round to the workers, if it did.
        let mut opened_at: Option<Instant> = None;
        let mut finished = false;
        // Audits that passed in this batch: their answers go once durable.
        let mut passed = Vec::new();
        while let Some(action) = inner.machine.poll_action() {
            match action {
                Action::Record(event) => {
                    match &event {
                        Event::RoundOpened { round, participants, .. } => {
                            tracing::info!(round, participants = participants.len(), "round open");
                            opened_at = self.publish(inner, *round).or(opened_at);
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
                        Event::AuditAnswered { answer, .. } => {
                            // `answer_audit` made the bytes a durable file,
                            // named by this digest, before the machine saw it.
                            debug_assert!(self.answers.path(answer).exists(), "the answer file comes first");
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
                            let pending = inner.pending.take().expect("aggregation precedes its commit");
                            let next = pending.next.expect("a committed round has a result");
                            assert_eq!(
                                (pending.round, next.model, next.momentum, next.aggregator),
                                (*round, *result_model, *result_momentum, *result_aggregator),
                                "the round just aggregated"
                            );
                            *self.published.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) =
                                Some((next.model, next.model_bytes));
                            inner.global_hash = next.state.hash().to_hex();
                            let before = std::mem::replace(&mut inner.global, next.state);
                            if self.config.outer.delay > 0 {
                                inner.previous_global = Some((inner.global_model, before.params));
                            }
                            inner.global_model = next.model;
                            inner.defense.commit(pending.decision);
                            tracing::info!(round, accepted = accepted.len(), model = %result_model, "round closed");
                            committed.push(*round);
                        }
                        Event::RoundFailed { round, reason, .. } => {
                            tracing::warn!(round, %reason, "round failed");
                            if let Some(pending) = inner.pending.take_if(|pending| pending.round == *round) {
                                inner.defense.set_aside(pending.decision);
                            }
                        }
                        Event::RunFinished { final_model } => {
                            tracing::info!(model = %final_model, "run finished");
                            finished = true;
                        }
                        Event::Audit { round, worker, verdict, .. } if verdict.passed() => {
                            passed.push((*round, *worker));
                        }
                        _ => {}
                    }
                    // A commitment may end the commit phase early: the timer
                    // must look at the machine's next deadline again.
                    changed |= !matches!(
                        event,
                        Event::WorkerRegistered { .. }
                            | Event::Reveal { .. }
                            | Event::WorkAccepted { .. }
                            | Event::Slash { .. }
                            | Event::AuditorSlashed { .. }
                            | Event::UpdateRefused { .. }
                    );
                    events.push(event);
                }
                Action::JudgeAudit { round, worker, .. } => self.judge_stored(inner, round, worker)?,
                Action::Speculate { round, base_model, accepted } => {
                    assert_eq!(base_model, inner.global_model, "rounds train from the latest model");
                    let aggregated = self.aggregate(inner, round, &accepted)?;
                    inner.machine.handle_speculated(self.now(), round, aggregated);
                }
                Action::OpenProvisional { round, after, base_model } => {
                    let pending = inner.pending.as_ref().expect("a provisional round follows its aggregate");
                    let next = pending.next.as_ref().expect("a provisional round has a model");
                    assert_eq!(
                        (pending.round, next.model),
                        (after, base_model),
                        "the aggregate just computed"
                    );
                    tracing::info!(round, after, model = %base_model, "round open provisionally");
                    self.opened_ahead.fetch_add(1, Ordering::Relaxed);
                    *self.published.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) =
                        Some((next.model, Arc::clone(&next.model_bytes)));
                    opened_ahead = inner.closing_started.filter(|(closing, _)| *closing == after);
                    inner.opened_ahead_of = Some(after);
                    opened_at = self.publish(inner, round).or(opened_at);
                    changed = true;
                }
                Action::Withdraw { round, provisional } => {
                    if provisional.is_some() {
                        // Its participants train again, on the model that counts.
                        tracing::warn!(round, ?provisional, "round opened ahead withdrawn: an audit failed");
                        self.withdrawn_ahead.fetch_add(1, Ordering::Relaxed);
                    }
                    // Nothing of it was committed: the defence learns
                    // nothing, and the files it wrote are named by their
                    // content and harmless.
                    inner.pending.take_if(|pending| pending.round == round);
                    inner.opened_ahead_of = None;
                    opened_ahead = None;
                    changed = true;
                }
                Action::Close { round, base_model, accepted } => {
                    // The records so far (the input that closed the round)
                    // become durable with the round's result, in one
                    // transaction: nobody has been answered yet, so a crash
                    // in between loses nothing anyone was promised.
                    // A delayed round trained from the model before the
                    // latest outer step; the step goes to the newest state.
                    if self.config.outer.delay == 0 {
                        assert_eq!(base_model, inner.global_model, "rounds train from the latest model");
                    }
                    let speculated = inner
                        .pending
                        .as_ref()
                        .filter(|pending| pending.round == round && pending.accepted == accepted)
                        .map(|pending| pending.aggregated.clone());
                    let aggregated = match speculated {
                        Some(aggregated) => aggregated,
                        None => self.aggregate(inner, round, &accepted)?,
                    };
                    inner.machine.handle_aggregated(self.now(), round, aggregated);
                }
            }
        }
        let writing = Instant::now();
        let written = inner.store.record(self.now(), &events, payloads, &self.identity);
        *self.opening.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = None;
        written?;
        self.metrics.observe(&events, payloads);
        self.prune_answers(inner, &passed)?;
        if !committed.is_empty() {
            tracing::debug!(write_ms = writing.elapsed().as_secs_f64() * 1e3, "committed");
        }
        // A round's overhead runs from its last input to the next round's
        // being shown to the workers: provisionally, if it opened ahead of
        // the round's verdicts.
        let overhead = |started: Instant| opened_at.unwrap_or_else(Instant::now).duration_since(started);
        if let Some((round, started)) = opened_ahead {
            let milliseconds = overhead(started).as_millis() as u64;
            inner.store.set_overhead(round, milliseconds)?;
            self.metrics.overhead(milliseconds);
        }
        for round in committed {
            let timed_ahead = inner.opened_ahead_of.take_if(|after| *after == round).is_some();
            if !timed_ahead
                && let Some((closing, started)) = inner.closing_started
                && closing == round
            {
                let milliseconds = overhead(started).as_millis() as u64;
                inner.store.set_overhead(round, milliseconds)?;
                self.metrics.overhead(milliseconds);
            }
            let downloaded = self.bytes_downloaded.load(Ordering::Relaxed);
            let before = self.downloaded_at_close.swap(downloaded, Ordering::Relaxed);
            inner.store.set_downloads(round, downloaded.saturating_sub(before))?;
            self.schedule_evaluation(round, inner.global_model);
            self.schedule_scoring(round);
        }
        if finished {
            // No round follows to wait for the final model's files.
            Self::finish_writing(inner)?;
            self.background.run_finished();
            self.schedule_model_rewards();
        }
        if changed {
            self.changes.send_modify(|version| *version += 1);
        }
        Ok(())
    }

    /// Checks the accepted updates of `round` (in the order their
    /// commitments arrived), aggregates the ones that pass, takes the outer
    /// step and writes the new checkpoints. Nothing changes in memory until
    /// the machine commits the round ([`Pending`]).
    ///
    /// The new checkpoints are encoded and named here but written and
    /// synced in the background: on this machine writing and syncing them
    /// took as long as the checks and the aggregation, and stalled now and
    /// then behind the file system's journal. The newest model is served
    /// from memory meanwhile. Before this round commits, the previous
    /// round's files must be durable, so a crash or a power loss can take
    /// the checkpoints of the latest closed round only, which a restart
    /// rebuilds from the previous round's and the stored updates
    /// ([`rebuild_latest_global`]).
    fn aggregate(
        &self,
        inner: &mut Inner,
        round: RoundId,
        accepted: &[WorkerId],
    ) -> Result<Aggregated, NodeError> {
        let started = Instant::now();
        Self::finish_writing(inner)?;
        let order = inner.store.commitment_order(round, accepted)?;
        let parameters = self.model.layout().len();
        let mut updates: Vec<(Digest, Vec<f32>)> = Vec::with_capacity(order.len());
        for worker in &order {
            match inner.decoded.remove(&(round, *worker)) {
                Some(decoded) => updates.push(decoded),
                // Not in memory (revealed before a restart): from the database.
                None => {
                    let bytes = inner.store.payloads(round, &[*worker])?.remove(0);
                    let (_, values) = crowdtrain_train::codec::decode(&bytes, parameters)
                        .map_err(crowdtrain_train::TrainError::from)?;
                    updates.push((Digest::of(&bytes), values));
                }
            }
        }
        inner.decoded.retain(|(held, _), _| *held > round);
        let submissions: Vec<Submission<'_>> = order
            .iter()
            .zip(&updates)
            .map(|(worker, (digest, values))| Submission { worker: worker.0, values, digest: digest.0 })
            .collect();
        let decided = started.elapsed();
        let decision = inner.defense.decide(&submissions, parameters);
        let screened = started.elapsed();
        let refused: Vec<(WorkerId, String)> = decision
            .refused
            .iter()
            .map(|(worker, refusal)| (WorkerId(*worker), refusal.to_string()))
            .collect();
        let next = match &decision.aggregate {
            None => None,
            Some(delta) => {
                let mut state = inner.global.clone();
                let change = outer_step(self.config.outer, &mut state, delta)
                    .map_err(crowdtrain_train::TrainError::from)?;
                let (model_bytes, momentum_bytes) = encode_global(self.model.as_ref(), &state);
                let (model, momentum) = (Digest::of(&model_bytes), Digest::of(&momentum_bytes));
                let model_bytes = Arc::new(model_bytes);
                // Under a compressed broadcast, the change workers holding
                // the current model download instead (served from memory,
                // its file written with the checkpoints).
                let change = change.map(|change| {
                    let delta =
                        ModelDelta { round: state.round, base: inner.global_model, target: model, change };
                    Arc::new(delta.encode())
                });
                if let Some(bytes) = &change {
                    self.deltas.insert(state.round, model, Arc::clone(bytes));
                }
                let (checkpoints, deltas) = (self.checkpoints.clone(), self.deltas.clone());
                let bucket = self.bucket.clone();
                let written = Arc::clone(&model_bytes);
                inner.writing = Some(std::thread::spawn(move || {
                    // The bucket first: workers look for the model there as
                    // soon as the next round opens (and wait while it is
                    // not there yet); the delta before the model, as a
                    // worker holding the last model asks for it first.
                    if let Some(bucket) = bucket {
                        if let Some(change) = &change {
                            bucket.put_blocking(BlobKey::Delta { target: model }, change.to_vec())?;
                        }
                        bucket.put_blocking(BlobKey::Model(model), written.to_vec())?;
                        bucket.put_blocking(BlobKey::Checkpoint(momentum), momentum_bytes.clone())?;
                    }
                    checkpoints.put(&written)?;
                    if let Some(change) = change {
                        deltas.write(&change)?;
                    }
                    Ok(checkpoints.put(&momentum_bytes).map(drop)?)
                }));
                let snapshot = inner.defense.aggregator.is_stateful()
                    && state.round.is_multiple_of(AGGREGATOR_SNAPSHOT_ROUNDS);
                let aggregator = if snapshot {
                    let after = inner.defense.state_after(&decision);
                    let bytes = checkpoint::encode_aggregator(&self.model.name(), &after);
                    if let Some(bucket) = &self.bucket {
                        bucket.put_blocking(BlobKey::Checkpoint(Digest::of(&bytes)), bytes.clone())?;
                    }
                    Some(self.checkpoints.put(&bytes)?)
                } else {
                    None
                };
                Some(NextGlobal { state, model, model_bytes, momentum, aggregator })
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
        inner.pending = Some(Pending {
            round,
            accepted: accepted.to_vec(),
            aggregated: aggregated.clone(),
            decision,
            next,
        });
        Ok(aggregated)
    }

    /// Waits until the checkpoints of the round aggregated last are durable.
    fn finish_writing(inner: &mut Inner) -> Result<(), NodeError> {
        match inner.writing.take() {
            Some(writing) => Ok(writing.join().expect("writing a checkpoint does not panic")?),
            None => Ok(()),
        }
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
        self.lock().store.set_evaluation(round, evaluation.accuracy, evaluation.loss)?;
        let maintenance = self.maintenance.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Err(error) = maintenance.checkpoint_wal() {
            tracing::warn!(round, %error, "could not checkpoint the database's WAL");
        }
        Ok(())
    }

    /// The parameters of model `base`, a round's base: the newest model, or
    /// under a delayed outer update the one before it (kept in memory, else
    /// read from its checkpoint, as after a restart).
    fn base_params(&self, inner: &Inner, base: &Digest) -> Result<Vec<f32>, NodeError> {
        if *base == inner.global_model {
            return Ok(inner.global.params.clone());
        }
        if let Some((_, params)) = inner.previous_global.as_ref().filter(|(digest, _)| digest == base) {
            return Ok(params.clone());
        }
        let bytes = self.checkpoints.get(base)?;
        Ok(checkpoint::decode(&bytes, CheckpointKind::Params, &self.model.name(), self.model.layout())?)
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

    /// Deletes the stored answers of audits that passed, once their
    /// verdicts are durable: the verdict, the commitment and the ledger are
    /// the record of a passed audit, and an answer is 2.4 MB for the MLP.
    /// The answers of failed audits stay: they are the evidence for the
    /// slash (anyone can replay them against the commitment). So does an
    /// answer another audit names and has not passed: a copier answers
    /// with its victim's very bytes, the same file.
    fn prune_answers(&self, inner: &Inner, passed: &[(RoundId, WorkerId)]) -> Result<(), NodeError> {
        for &(round, worker) in passed {
            if let Ok(digest) = inner.store.audit_answer_digest(round, worker)
                && inner.store.answer_prunable(&digest)?
            {
                self.answers.remove(&digest)?;
            }
        }
        Ok(())
    }

    /// `GET /v1/status`: the run at a glance, with a page of its rounds
    /// (`limit` of them from round `from`, or the latest `limit`).
    fn status(&self, from: Option<RoundId>, limit: u64) -> Result<RunStatus, Failure> {
        // The machine's view first, then the database's: the database is
        // at least as new, never older, than the view.
        let (phase, round, completed_rounds, model, state_hash, active, last_seen) = {
            let inner = self.lock();
            let active: std::collections::BTreeSet<WorkerId> = (0..inner.machine.worker_count() as u64)
                .map(WorkerId)
                .filter(|&worker| inner.machine.is_active(worker))
                .collect();
            let last_seen: Vec<Option<u64>> = (0..inner.machine.worker_count() as u64)
                .map(|worker| inner.machine.last_seen_ms(WorkerId(worker)))
                .collect();
            (
                inner.machine.phase(),
                inner.machine.open_round().map(|open| open.id),
                inner.machine.completed_rounds(),
                inner.global_model,
                inner.global_hash.clone(),
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
            workers,
            rounds,
            rounds_total,
            max_participants: self.lock().machine.settings().max_participants,
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

    fn count_download(&self, bytes: u64) {
        self.bytes_downloaded.fetch_add(bytes, Ordering::Relaxed);
        self.metrics.served(bytes);
    }

    /// `GET /metrics`: the Prometheus text.
    fn metrics_text(&self) -> String {
        let (registered, active) = {
            let inner = self.lock();
            let registered = inner.machine.worker_count() as u64;
            let active = (0..registered).filter(|&worker| inner.machine.is_active(WorkerId(worker))).count();
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
            let opened =
                inner.machine.open_round().map_or(inner.machine.completed_rounds(), |open| open.id + 1);
            (inner.machine.is_active(worker), inner.machine.last_seen_ms(worker), opened)
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

/// The most participants `config`'s rounds can have with `examples`
/// training examples: each shard needs a whole batch, from what the
/// validation split leaves (the Dirichlet sharding may need more; it says
/// so when a round's shards cannot be drawn).
fn max_participants(config: &RunConfig, data: &RunData) -> u32 {
    let supported = data.participants_supported(&config.training);
    (supported as u64).min(u64::from(config.limits.max_workers)) as u32
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

/// How often (in closed rounds) the aggregator's state is written out.
/// Between snapshots it is rebuilt on restart by replaying the aggregation
/// of the rounds since, from the stored submissions: a snapshot is a
/// worker's momentum per worker (MBs per round for the MLP), and writing it
/// every round would be most of the coordinator's time between rounds.
pub const AGGREGATOR_SNAPSHOT_ROUNDS: u64 = 16;

/// The global state after the latest closed round (or the initial one),
/// read back from its checkpoints, or rebuilt if a power loss took them.
fn load_global(
    store: &Store,
    record: &RunRecord,
    config: &RunConfig,
    model: &dyn Model,
    checkpoints: &Checkpoints,
) -> Result<(OuterState, Digest), NodeError> {
    let Some(latest) = store.latest_result()? else {
        return read_global(checkpoints, model, (record.initial_model, record.initial_momentum), 0);
    };
    match read_global(checkpoints, model, (latest.model, latest.momentum), latest.closed) {
        Err(NodeError::Checkpoint(
            error @ (crowdtrain_store::CheckpointError::Missing(_)
            | crowdtrain_store::CheckpointError::HashMismatch { .. }),
        )) => {
            tracing::warn!(round = latest.round, %error, "the latest round's checkpoints did not survive: rebuilding them");
            rebuild_latest_global(store, record, config, model, checkpoints, &latest)
        }
        result => result,
    }
}

/// The global state in checkpoints `(params, momentum)`, after `rounds`
/// closed rounds.
fn read_global(
    checkpoints: &Checkpoints,
    model: &dyn Model,
    (params, momentum): (Digest, Digest),
    rounds: u64,
) -> Result<(OuterState, Digest), NodeError> {
    let name = model.name();
    let decode = |digest: &Digest, kind| -> Result<Vec<f32>, NodeError> {
        Ok(checkpoint::decode(&checkpoints.get(digest)?, kind, &name, model.layout())?)
    };
    let (momentum, exact) = checkpoint::decode_outer(&checkpoints.get(&momentum)?, &name, model.layout())?;
    let state = OuterState {
        model: name.clone(),
        params: decode(&params, CheckpointKind::Params)?,
        momentum,
        round: rounds,
        exact,
    };
    Ok((state, params))
}

/// `state`'s published parameters and the outer optimizer's own state
/// (its momentum, and its exact parameters under a compressed broadcast),
/// encoded as checkpoints side by side (MBs each, on the path that closes a
/// round).
fn encode_global(model: &dyn Model, state: &OuterState) -> (Vec<u8>, Vec<u8>) {
    let name = model.name();
    rayon::join(
        || checkpoint::encode(CheckpointKind::Params, &name, model.layout(), &state.params),
        || checkpoint::encode_outer(&name, model.layout(), &state.momentum, state.exact.as_deref()),
    )
}

/// Rebuilds the checkpoints of the latest closed round, which are written
/// in the background and so the only ones a crash or a power loss can take
/// (see [`Node::aggregate`]): its outer step is taken again, on the
/// previous round's state, with the aggregate of the updates it credited
/// and the aggregator state before it. Being deterministic, that gives the
/// bits the round recorded, which is checked before they are written.
fn rebuild_latest_global(
    store: &Store,
    record: &RunRecord,
    config: &RunConfig,
    model: &dyn Model,
    checkpoints: &Checkpoints,
    latest: &crowdtrain_store::LatestResult,
) -> Result<(OuterState, Digest), NodeError> {
    let previous = match store.latest_result_before(latest.round)? {
        Some(previous) => (previous.model, previous.momentum),
        None => (record.initial_model, record.initial_momentum),
    };
    let (mut state, _) = read_global(checkpoints, model, previous, latest.closed - 1)?;
    let aggregator = config.defense().aggregator;
    let before = restore_aggregator(store, checkpoints, &aggregator, model, latest.round)?;
    let (aggregate, _) = replay_aggregation(store, &aggregator, &before, model, latest.round)?;
    outer_step(config.outer, &mut state, &aggregate).map_err(crowdtrain_train::TrainError::from)?;
    let (model_bytes, momentum_bytes) = encode_global(model, &state);
    let rebuilt = (checkpoints.put(&model_bytes)?, checkpoints.put(&momentum_bytes)?);
    if rebuilt != (latest.model, latest.momentum) {
        return Err(crowdtrain_store::StoreError::Corrupt(format!(
            "rebuilding round {}'s checkpoints gave model {} and momentum {}, not the recorded {} and {}",
            latest.round, rebuilt.0, rebuilt.1, latest.model, latest.momentum
        ))
        .into());
    }
    Ok((state, rebuilt.0))
}

/// The aggregator's state after the closed rounds before `before` (all of
/// them for [`RoundId::MAX`]): the latest snapshot among them, then the
/// aggregation of every closed round since replayed on the updates it
/// aggregated. Being deterministic, the replay gives the state the live
/// run had, bit for bit.
fn restore_aggregator(
    store: &Store,
    checkpoints: &Checkpoints,
    aggregator: &crowdtrain_defense::Aggregator,
    model: &dyn Model,
    before: RoundId,
) -> Result<crowdtrain_defense::AggregatorState, NodeError> {
    if !aggregator.is_stateful() {
        return Ok(Default::default());
    }
    let parameters = model.layout().len();
    let snapshot = store.latest_aggregator_snapshot_before(before)?;
    let mut state = match snapshot {
        Some((_, digest)) => {
            checkpoint::decode_aggregator(&checkpoints.get(&digest)?, &model.name(), parameters)?
        }
        None => Default::default(),
    };
    for round in store.closed_rounds_after(snapshot.map(|(round, _)| round))? {
        if round >= before {
            break;
        }
        let (_, change) = replay_aggregation(store, aggregator, &state, model, round)?;
        state.apply(change);
    }
    Ok(state)
}

/// The aggregation closed `round` took, again: of the updates it credited
/// (in ascending worker order, as [`ModelDefense::decide`] aggregates
/// them), from aggregator state `state`.
fn replay_aggregation(
    store: &Store,
    aggregator: &crowdtrain_defense::Aggregator,
    state: &crowdtrain_defense::AggregatorState,
    model: &dyn Model,
    round: RoundId,
) -> Result<(Vec<f32>, crowdtrain_defense::StateChange), NodeError> {
    let parameters = model.layout().len();
    let workers = store.credited(round)?;
    if workers.is_empty() {
        let problem = format!("closed round {round} credited no update");
        return Err(crowdtrain_store::StoreError::Corrupt(problem).into());
    }
    let payloads = store.payloads(round, &workers)?;
    let updates = payloads
        .iter()
        .map(|bytes| crowdtrain_train::codec::decode(bytes, parameters).map(|(_, values)| values))
        .collect::<Result<Vec<_>, _>>()
        .map_err(crowdtrain_train::TrainError::from)?;
    let views: Vec<(u64, &[f32])> =
        workers.iter().zip(&updates).map(|(worker, values)| (worker.0, values.as_slice())).collect();
    Ok(crowdtrain_defense::aggregate::aggregate(aggregator, state, &views))
}
