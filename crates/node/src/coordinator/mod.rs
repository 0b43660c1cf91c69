//! The coordinator process: the driver around the round state machine.
//!
//! [`Node`] owns the machine, the SQLite store, the checkpoints and the
//! global model. Every input (a request, a timer) goes through the same
//! steps under one lock: feed the machine, drain its actions, write them
//! durably in one transaction, and only then answer. Aggregation happens
//! where the machine asks for it ([`Action::CloseRound`]), on the global
//! model in memory, with the same `outer_step` as the in-process simulation.

mod http;

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crowdtrain_data::{DataSource, LabeledImages};
use crowdtrain_protocol::coordinator::Settings;
use crowdtrain_protocol::wire::{
    DatasetFingerprint, ErrorCode, PROTOCOL_VERSION, Registration, RunInfo, RunStatus, SubmissionReceipt,
};
use crowdtrain_protocol::{
    Action, AssignmentTemplate, Coordinator, Digest, Identity, PublicKey, Refusal, RoundId, RoundView,
    RunConfig, Signed, SubmissionOutcome, WorkerId,
};
use crowdtrain_store::{CheckpointKind, Checkpoints, RunRecord, Store, Write, checkpoint};
use crowdtrain_train::diloco::outer_step;
use crowdtrain_train::{Codec, Model, OuterState, evaluate};
use tokio::sync::watch;

pub use http::serve;

use crate::NodeError;

/// Milliseconds since the Unix epoch, the machine's notion of time.
pub fn now_unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |elapsed| elapsed.as_millis() as u64)
}

/// A refused request: the HTTP status and the JSON body to send.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    pub status: u16,
    pub code: ErrorCode,
    pub message: String,
}

impl Failure {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        let status = match code {
            ErrorCode::Unauthenticated | ErrorCode::BadSignature => 401,
            ErrorCode::UnknownWorker | ErrorCode::NotAssigned => 403,
            ErrorCode::NotFound => 404,
            ErrorCode::Replayed | ErrorCode::WrongRound | ErrorCode::Duplicate | ErrorCode::StaleModel => 409,
            ErrorCode::Late => 409,
            ErrorCode::Finished => 410,
            ErrorCode::TooLarge => 413,
            ErrorCode::WrongShape | ErrorCode::NonFinite => 422,
            ErrorCode::WrongRun | ErrorCode::BadRequest => 400,
            ErrorCode::Full | ErrorCode::Unavailable => 503,
        };
        Self { status, code, message: message.into() }
    }

    fn internal(error: impl std::fmt::Display) -> Self {
        Self { status: 500, code: ErrorCode::Unavailable, message: format!("coordinator error: {error}") }
    }
}

impl From<Refusal> for Failure {
    fn from(refusal: Refusal) -> Self {
        Self::new(refusal.code, refusal.message)
    }
}

/// The coordinator: shared by every request handler and the timer.
pub struct Node {
    /// Lets work that outlives a request (evaluations) reach the node.
    me: std::sync::Weak<Node>,
    run: Signed<RunInfo>,
    run_id: Digest,
    identity: Identity,
    config: RunConfig,
    template: AssignmentTemplate,
    model: Box<dyn Model>,
    test: Arc<LabeledImages>,
    checkpoints: Checkpoints,
    inner: Mutex<Inner>,
    /// Bumped whenever a round view may have changed; long polls and the
    /// timer wait on it.
    changes: watch::Sender<u64>,
    /// Set when a durable write failed: the in-memory machine may be ahead
    /// of the database, so the node must stop and be restarted from it.
    fatal: watch::Sender<Option<String>>,
    bytes_downloaded: AtomicU64,
}

struct Inner {
    machine: Coordinator,
    store: Store,
    /// The latest global parameters and outer momentum.
    global: OuterState,
    /// The digest of `global.params`' checkpoint.
    global_model: Digest,
    /// Set between a round's aggregation and its commit.
    pending_momentum: Option<Digest>,
    /// When the last accepted submission of the round being closed arrived.
    closing_started: Option<(RoundId, Instant)>,
}

impl Node {
    /// Opens (or creates) the run in `state_dir` and restores where it was.
    pub fn open(config: RunConfig, state_dir: &Path) -> Result<Arc<Self>, NodeError> {
        std::fs::create_dir_all(state_dir)
            .map_err(|error| NodeError::io(format!("could not create {}", state_dir.display()), error))?;
        let identity = load_or_create_key(&state_dir.join("coordinator.key"))?;
        let dataset = DataSource::resolve(config.data.dir.as_deref()).load()?;
        let model = config.model.kind.build();
        let checkpoints = Checkpoints::open(&state_dir.join("checkpoints"))?;
        let mut store = Store::open(&state_dir.join("coordinator.sqlite"))?;
        let config_json = canonical_config(&config);
        let record = match store.run()? {
            Some(record)
                if record.config_json == config_json && record.coordinator_key == identity.public_key() =>
            {
                record
            }
            Some(_) => return Err(NodeError::ConfigChanged { state: state_dir.to_owned() }),
            None => {
                let record = create_run(&config, &config_json, &identity, model.as_ref(), &checkpoints)?;
                store.create_run(&record)?;
                record
            }
        };
        let (global, global_model) = load_global(&store, &record, model.as_ref(), &checkpoints)?;
        let settings = Settings::from_config(&config);
        let snapshot = store.snapshot(record.initial_model)?;
        let machine = Coordinator::restore(settings, record.run_id, snapshot, now_unix_ms());
        let run = Signed::sign(
            &identity,
            RunInfo {
                protocol_version: PROTOCOL_VERSION,
                run_id: record.run_id,
                coordinator: identity.public_key(),
                config: public_config(&config),
                model_name: model.name(),
                parameters: model.layout().len() as u64,
                dataset: DatasetFingerprint {
                    name: dataset.info.name.clone(),
                    train_examples: dataset.train.len() as u64,
                    digest: Digest(dataset.train.digest()),
                },
                initial_model: record.initial_model,
            },
        );
        let node = Arc::new_cyclic(|me| Self {
            me: me.clone(),
            run,
            run_id: record.run_id,
            template: AssignmentTemplate::from_config(&config),
            identity,
            config,
            model,
            test: Arc::new(dataset.test),
            checkpoints,
            inner: Mutex::new(Inner {
                machine,
                store,
                global,
                global_model,
                pending_momentum: None,
                closing_started: None,
            }),
            changes: watch::channel(0).0,
            fatal: watch::channel(None).0,
            bytes_downloaded: AtomicU64::new(0),
        });
        let mut inner = node.lock();
        node.drive(&mut inner, None)?;
        drop(inner);
        Ok(node)
    }

    pub fn run_info(&self) -> &Signed<RunInfo> {
        &self.run
    }

    pub fn run_id(&self) -> Digest {
        self.run_id
    }

    pub fn public_key(&self) -> PublicKey {
        self.identity.public_key()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves the state machine in an
        // unknown state; continuing would risk acting on it.
        self.inner.lock().expect("the coordinator state lock is never poisoned")
    }

    /// Checks a request's signature and nonce; marks its worker as seen.
    /// `key` and `nonce` come from the already-verified auth header.
    fn authenticate(&self, key: &PublicKey, nonce: u64, state_changing: bool) -> Result<WorkerId, Failure> {
        let mut inner = self.lock();
        let worker = inner.machine.authenticate(now_unix_ms(), key, nonce, state_changing)?;
        if !state_changing {
            inner.machine.seen(now_unix_ms(), worker);
            self.drive(&mut inner, None).map_err(Failure::internal)?;
        }
        Ok(worker)
    }

    /// `POST /v1/workers`: registration (idempotent per key).
    fn register(&self, key: PublicKey) -> Result<Signed<Registration>, Failure> {
        let mut inner = self.lock();
        let (worker, _) = inner.machine.register(now_unix_ms(), key)?;
        self.drive(&mut inner, None).map_err(Failure::internal)?;
        Ok(Signed::sign(&self.identity, Registration { run_id: self.run_id, worker, public_key: key }))
    }

    /// The round as `worker` sees it, signed.
    fn view(&self, worker: Option<WorkerId>) -> Signed<RoundView> {
        let inner = self.lock();
        Signed::sign(&self.identity, inner.machine.view(worker, &self.template))
    }

    /// `POST /v1/rounds/{round}/submissions`: checks the payload, feeds the
    /// machine, makes the outcome durable and returns a signed receipt.
    fn submit(
        &self,
        worker: WorkerId,
        nonce: u64,
        round: RoundId,
        base_model: Digest,
        payload: Vec<u8>,
    ) -> Result<Signed<SubmissionReceipt>, Failure> {
        let received = Instant::now();
        let expected = self.model.layout().len();
        let (codec, _) = Codec::decode(&payload, expected).map_err(|error| {
            let code = match error {
                crowdtrain_train::CodecError::NonFinite { .. }
                | crowdtrain_train::CodecError::BadScale { .. } => ErrorCode::NonFinite,
                _ => ErrorCode::WrongShape,
            };
            Failure::new(code, format!("the update was refused: {error}"))
        })?;
        if codec != self.config.inner.codec {
            return Err(Failure::new(
                ErrorCode::WrongShape,
                format!(
                    "the run encodes updates as {}, not {}",
                    self.config.inner.codec.as_str(),
                    codec.as_str()
                ),
            ));
        }
        let digest = Digest::of(&payload);
        let now = now_unix_ms();
        let mut inner = self.lock();
        let outcome = inner.machine.submit(now, worker, nonce, round, base_model, digest)?;
        inner.closing_started = Some((round, received));
        let result = self.drive(&mut inner, Some((digest, payload)));
        inner.closing_started = None;
        result.map_err(Failure::internal)?;
        let status = match outcome {
            SubmissionOutcome::Recorded(status) | SubmissionOutcome::AlreadyRecorded(status) => status,
        };
        Ok(Signed::sign(
            &self.identity,
            SubmissionReceipt {
                run_id: self.run_id,
                round,
                worker,
                status,
                payload: digest,
                received_unix_ms: now,
            },
        ))
    }

    /// The timer fired: deadlines may have passed.
    fn tick(self: &Arc<Self>) -> Result<(), NodeError> {
        let mut inner = self.lock();
        inner.machine.handle_timeout(now_unix_ms());
        self.drive(&mut inner, None)
    }

    /// Carries out the machine's actions (see [`Node::apply_actions`]); a
    /// failure halts the node, since the machine may now be ahead of what is
    /// durable.
    fn drive(&self, inner: &mut Inner, payload: Option<(Digest, Vec<u8>)>) -> Result<(), NodeError> {
        let result = self.apply_actions(inner, payload);
        if let Err(error) = &result {
            tracing::error!(%error, "halting: a durable write failed");
            self.fatal.send_replace(Some(error.to_string()));
        }
        result
    }

    /// Carries out the machine's actions in order; writes become durable in
    /// one transaction per batch, before the caller answers anyone.
    /// `payload` is the body of the submission being recorded, if any.
    fn apply_actions(
        &self,
        inner: &mut Inner,
        mut payload: Option<(Digest, Vec<u8>)>,
    ) -> Result<(), NodeError> {
        let mut writes = Vec::new();
        let mut changed = false;
        let mut committed = Vec::new();
        while let Some(action) = inner.machine.poll_action() {
            match action {
                Action::PersistWorker { worker, key, registered_unix_ms } => {
                    writes.push(Write::Worker { worker, key, registered_unix_ms });
                }
                Action::OpenRound { round, base_model, participants, opened_unix_ms, deadline_unix_ms } => {
                    tracing::info!(round, participants = participants.len(), "round open");
                    writes.push(Write::OpenRound {
                        round,
                        base_model,
                        participants,
                        opened_unix_ms,
                        deadline_unix_ms,
                    });
                    changed = true;
                }
                Action::ExtendRound { round, deadline_unix_ms, extensions } => {
                    tracing::info!(round, extensions, "round extended: no quorum yet");
                    writes.push(Write::ExtendRound { round, deadline_unix_ms, extensions });
                    changed = true;
                }
                Action::RecordSubmission {
                    round,
                    worker,
                    status,
                    payload: digest,
                    nonce,
                    received_unix_ms,
                } => {
                    let (carried, bytes) =
                        payload.take().expect("a submission is recorded only while one is handled");
                    assert_eq!(carried, digest, "the machine records the payload it was given");
                    tracing::info!(round, %worker, status = status.as_str(), bytes = bytes.len(), "submission");
                    writes.push(Write::Submission {
                        round,
                        worker,
                        status,
                        digest,
                        payload: bytes,
                        nonce,
                        received_unix_ms,
                    });
                }
                Action::CloseRound { round, base_model, accepted, .. } => {
                    inner.store.apply(&std::mem::take(&mut writes))?;
                    assert_eq!(base_model, inner.global_model, "rounds train from the latest model");
                    let (model, momentum) = self.aggregate(inner, round, &accepted)?;
                    inner.pending_momentum = Some(momentum);
                    inner.machine.handle_aggregated(now_unix_ms(), round, model);
                }
                Action::CommitRound { round, result_model, closed_unix_ms, accepted } => {
                    let result_momentum =
                        inner.pending_momentum.take().expect("aggregation precedes its commit");
                    tracing::info!(round, accepted = accepted.len(), model = %result_model, "round closed");
                    writes.push(Write::CommitRound { round, result_model, result_momentum, closed_unix_ms });
                    committed.push(round);
                    changed = true;
                }
                Action::FailRound { round, closed_unix_ms } => {
                    tracing::warn!(round, "round failed: no quorum after every extension");
                    writes.push(Write::FailRound { round, closed_unix_ms });
                    changed = true;
                }
                Action::Finish { final_model } => {
                    tracing::info!(model = %final_model, "run finished");
                    changed = true;
                }
            }
        }
        inner.store.apply(&writes)?;
        for round in committed {
            if let Some((closing, started)) = inner.closing_started
                && closing == round
            {
                inner.store.set_overhead(round, started.elapsed().as_millis() as u64)?;
            }
            self.schedule_evaluation(round, inner.global.params.clone());
        }
        if changed {
            self.changes.send_modify(|version| *version += 1);
        }
        Ok(())
    }

    /// Averages the accepted updates of `round` into the global model and
    /// writes the new checkpoints. The global state changes only if all of
    /// it succeeds.
    fn aggregate(
        &self,
        inner: &mut Inner,
        round: RoundId,
        accepted: &[WorkerId],
    ) -> Result<(Digest, Digest), NodeError> {
        let started = Instant::now();
        let payloads = inner.store.accepted_payloads(round)?;
        let workers: Vec<WorkerId> = payloads.iter().map(|(worker, _)| *worker).collect();
        assert_eq!(workers, accepted, "the store holds exactly the accepted submissions");
        let parameters = self.model.layout().len();
        let updates = payloads
            .iter()
            .map(|(_, bytes)| Codec::decode(bytes, parameters).map(|(_, values)| values))
            .collect::<Result<Vec<_>, _>>()
            .map_err(crowdtrain_train::TrainError::from)?;
        let views: Vec<&[f32]> = updates.iter().map(Vec::as_slice).collect();
        let decoded = started.elapsed();
        let mut next = inner.global.clone();
        outer_step(self.config.outer_optimizer(), &mut next, &views);
        let stepped = started.elapsed();
        let name = self.model.name();
        let layout = self.model.layout();
        let model =
            self.checkpoints.put(&checkpoint::encode(CheckpointKind::Params, &name, layout, &next.params))?;
        let momentum = self.checkpoints.put(&checkpoint::encode(
            CheckpointKind::OuterMomentum,
            &name,
            layout,
            &next.momentum,
        ))?;
        tracing::debug!(
            round,
            read_and_decode_ms = decoded.as_secs_f64() * 1e3,
            outer_step_ms = (stepped - decoded).as_secs_f64() * 1e3,
            checkpoints_ms = (started.elapsed() - stepped).as_secs_f64() * 1e3,
            "aggregated"
        );
        inner.global = next;
        inner.global_model = model;
        Ok((model, momentum))
    }

    /// Evaluates a round's result on the test set off the request path,
    /// and records it when done.
    fn schedule_evaluation(&self, round: RoundId, params: Vec<f32>) {
        let Some(node) = self.me.upgrade() else { return };
        std::thread::spawn(move || {
            let model = node.config.model.kind.build();
            match evaluate(model.as_ref(), &params, &node.test) {
                Ok(evaluation) => {
                    let mut inner = node.lock();
                    if let Err(error) =
                        inner.store.set_evaluation(round, evaluation.accuracy, evaluation.loss)
                    {
                        tracing::error!(round, %error, "could not record an evaluation");
                    }
                }
                Err(error) => tracing::error!(round, %error, "evaluation failed"),
            }
        });
    }

    /// `GET /v1/status`: the run at a glance.
    fn status(&self) -> Result<RunStatus, Failure> {
        let inner = self.lock();
        let mut workers = inner.store.worker_statuses().map_err(Failure::internal)?;
        for worker in &mut workers {
            worker.active = inner.machine.is_active(worker.worker);
        }
        let rounds = inner.store.round_records().map_err(Failure::internal)?;

        Ok(RunStatus {
            run_id: self.run_id,
            phase: inner.machine.phase(),
            round: inner.machine.open_round().map(|open| open.id),
            completed_rounds: inner.machine.completed_rounds(),
            target_rounds: self.config.rounds,
            model: inner.global_model,
            state_hash: inner.global.hash().to_hex(),
            test_accuracy: rounds.iter().rev().find_map(|round| round.test_accuracy),
            bytes_uploaded: workers.iter().map(|worker| worker.bytes_uploaded).sum(),
            bytes_downloaded: self.bytes_downloaded.load(Ordering::Relaxed),
            workers,
            rounds,
        })
    }

    /// The bytes of a model checkpoint workers may download.
    fn model_bytes(&self, digest: &Digest) -> Result<Vec<u8>, Failure> {
        let bytes = self.checkpoints.get(digest).map_err(|error| match error {
            crowdtrain_store::CheckpointError::Missing(_) => {
                Failure::new(ErrorCode::NotFound, format!("no model {digest} in this run"))
            }
            other => Failure::internal(other),
        })?;
        // Only parameter checkpoints are published, not optimizer state.
        checkpoint::decode(&bytes, CheckpointKind::Params, &self.model.name(), self.model.layout())
            .map_err(|_| Failure::new(ErrorCode::NotFound, format!("no model {digest} in this run")))?;
        Ok(bytes)
    }

    fn count_download(&self, bytes: u64) {
        self.bytes_downloaded.fetch_add(bytes, Ordering::Relaxed);
    }
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

/// The coordinator's key, created on first start.
fn load_or_create_key(path: &Path) -> Result<Identity, NodeError> {
    if path.exists() {
        return Ok(Identity::load(path)?);
    }
    let identity = Identity::generate()?;
    identity.save(path)?;
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
) -> Result<RunRecord, NodeError> {
    let name = model.name();
    let params = model.layout().initialize(config.seed);
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
    hasher.update(&now_unix_ms().to_le_bytes());
    Ok(RunRecord {
        run_id: Digest(*hasher.finalize().as_bytes()),
        protocol_version: PROTOCOL_VERSION,
        config_json: config_json.to_owned(),
        coordinator_key: identity.public_key(),
        model_name: name,
        initial_model,
        initial_momentum,
        created_unix_ms: now_unix_ms(),
    })
}

/// The global state after the latest closed round (or the initial one),
/// read back from its checkpoints.
fn load_global(
    store: &Store,
    record: &RunRecord,
    model: &dyn Model,
    checkpoints: &Checkpoints,
) -> Result<(OuterState, Digest), NodeError> {
    let (model_digest, momentum_digest, rounds) = match store.latest_result()? {
        Some((_, model, momentum, closed)) => (model, momentum, closed),
        None => (record.initial_model, record.initial_momentum, 0),
    };
    let name = model.name();
    let params =
        checkpoint::decode(&checkpoints.get(&model_digest)?, CheckpointKind::Params, &name, model.layout())?;
    let momentum = checkpoint::decode(
        &checkpoints.get(&momentum_digest)?,
        CheckpointKind::OuterMomentum,
        &name,
        model.layout(),
    )?;
    Ok((OuterState { model: name, params, momentum, round: rounds }, model_digest))
}
