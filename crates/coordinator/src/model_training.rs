//! A coordinator's real training ([`ModelTraining`]): the model's
//! parameters and outer optimizer state, updates in the run's codec,
//! checkpoint files (and the bucket), audit answers stored as files and
//! judged by bit-exact replays. `crowdtrain_node::coordinator::Node` drives
//! a [`Driver`](crate::Driver) of it.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use crowdtrain_defense::{Aggregator, AggregatorState};
use crowdtrain_protocol::audit as rules;
use crowdtrain_protocol::coordinator::Settings;
use crowdtrain_protocol::judge::{self, ReportCheck};
use crowdtrain_protocol::wire::{AuditAnswer, AuditReport, AuditTask, ErrorCode};
use crowdtrain_protocol::{Assignment, Commitment, Digest, Refusal, RoundId, RunConfig, Verdict, WorkerId};
use crowdtrain_store::delta::ModelDelta;
use crowdtrain_store::{CheckpointKind, Checkpoints, RunRecord, Store, checkpoint};
use crowdtrain_train::diloco::outer_step;
use crowdtrain_train::{Codec, Model, OuterState, TrainState};

use crate::CoordinatorError;
use crate::bucket::{self, BlobKey, RunBucket};
use crate::data::{RunData, Shards};
use crate::deltas::Deltas;
use crate::driver::{CheckpointWrite, DriverError};
use crate::restore::{
    AGGREGATOR_SNAPSHOT_ROUNDS, encode_global, load_global, max_participants, restore_aggregator,
};
use crate::training::{Audited, Judged, Opened, Stepped, Training};
use crate::{audit, replay};

/// What a real run's training reads and never changes: the run, its model
/// and data, and where its files go.
pub struct ModelRun {
    pub config: RunConfig,
    pub model: Box<dyn Model>,
    /// Training data, for the shards audit replays train on.
    pub dataset: Arc<RunData>,
    pub checkpoints: Checkpoints,
    /// The published model deltas, under a compressed broadcast.
    pub deltas: Deltas,
    /// Audit answers (start states: MBs each), by hash; the database
    /// records which answer is whose.
    pub answers: Checkpoints,
    /// The run's bucket, if it has one (checkpoints and answers are read
    /// back from it, and aggregator snapshots written to it).
    pub bucket: Option<Arc<dyn RunBucket>>,
}

impl ModelRun {
    /// The round state machine's settings for this run: its config's, with
    /// as many participants as its data has shards for.
    pub fn settings(&self) -> Settings {
        let mut settings = Settings::from_config(&self.config);
        settings.max_participants = max_participants(&self.config, &self.dataset);
        settings
    }
}

/// A real run's training: [`ModelRun`] and the global model it has
/// reached.
pub struct ModelTraining {
    pub run: ModelRun,
    /// The latest global parameters and outer momentum.
    pub global: OuterState,
    /// `global`'s state hash, for the status page.
    pub global_hash: String,
    /// The digest of `global.params`' checkpoint.
    pub global_model: Digest,
    /// Under a delayed outer update (`[outer] delay` d), the parameters
    /// before each of the latest d outer steps and their digests, oldest
    /// first: the bases of the rounds still audited (see
    /// [`ModelTraining::base_params`]).
    previous_globals: VecDeque<(Digest, Vec<f32>)>,
    /// Shards by slot count, for audit replays.
    pub shards: HashMap<u32, Arc<Shards>>,
}

/// An answered audit for the coordinator to replay: what the replay needs,
/// taken from the driver.
pub struct PendingReplay {
    pub round: RoundId,
    pub worker: WorkerId,
    pub segment: u32,
    pub commitment: Commitment,
    pub assignment: Assignment,
    pub shards: Arc<Shards>,
    /// The round's base parameters.
    pub base: Vec<f32>,
    /// What the replay starts from and is checked against.
    pub evidence: Evidence,
    /// Signalled once the answer is durable; dropped if it never will be.
    pub recorded: std::sync::mpsc::Receiver<()>,
}

/// What an audit's replay starts from and is checked against.
pub enum Evidence {
    /// The worker's answer (`audit.replay = "segment"`), with the start
    /// state [`audit::check_answer`] made of it.
    /// Boxed: the answer and the state are large beside a list of leaves.
    Answer { answer: Box<AuditAnswer>, start: Box<TrainState> },
    /// The commitment's boundary leaves (`audit.replay = "from-start"`):
    /// the replay starts from the round's base model.
    FromStart { leaves: Vec<Digest> },
}

impl PendingReplay {
    /// Replays the audit (a segment, or the round up to the segment's end)
    /// and judges it by the protocol's rules: what the coordinator's replay
    /// thread runs.
    pub fn verdict(self, model: &dyn Model, data: &RunData) -> Verdict {
        let Self { segment, commitment, assignment, shards, base, evidence, .. } = self;
        let cannot = |error: crowdtrain_train::TrainError| {
            Verdict::Failed(format!("the segment cannot be replayed: {error}"))
        };
        match evidence {
            Evidence::Answer { answer, start } => {
                let replayed = replay::replay_segment(
                    model,
                    data,
                    &shards,
                    &assignment,
                    segment,
                    *start,
                    &base,
                    &answer.residual_in,
                );
                match replayed {
                    Ok(report) => audit::verdict_of(&report, &answer, &commitment, &assignment, segment),
                    Err(error) => cannot(error),
                }
            }
            Evidence::FromStart { leaves } => {
                match replay::replay_from_start(model, data, &shards, &assignment, segment, &base, &leaves) {
                    Ok(report) => judge::from_start_verdict(
                        &report,
                        &leaves,
                        &commitment,
                        assignment.recipe.inner_steps,
                        segment,
                    ),
                    Err(error) => cannot(error),
                }
            }
        }
    }
}

impl Training for ModelTraining {
    type Global = OuterState;
    type Report = AuditReport;
    type Replay = PendingReplay;
    type Setup = ModelRun;

    /// Under a bucket, the checkpoints missing here are fetched from it
    /// first, and what the latest round trains from is published there
    /// again; answers only passed audits name are deleted (see
    /// [`Training::prune_answers`]).
    fn open(
        run: ModelRun,
        store: &Store,
        record: &RunRecord,
        aggregator: &Aggregator,
    ) -> Result<Opened<Self>, CoordinatorError> {
        let (config, model, checkpoints) = (&run.config, run.model.as_ref(), &run.checkpoints);
        if let Some(bucket) = &run.bucket {
            bucket::restore_checkpoints(store, record, checkpoints, bucket.as_ref())?;
        }
        let (global, global_model) = load_global(store, record, config, model, checkpoints)?;
        if let Some(bucket) = &run.bucket {
            // What the latest round trains from, again: the process
            // that wrote it may have been killed before its upload.
            // The delta before the model, as in the writer: a worker
            // that finds the model and no delta downloads it whole.
            if let Some(delta) = run.deltas.get(&global_model) {
                bucket.put(BlobKey::Delta { target: global_model }, delta.to_vec())?;
            }
            bucket.put(BlobKey::Model(global_model), checkpoints.get(&global_model)?)?;
            bucket::publish_optimizer_state(store, record, checkpoints, bucket.as_ref())?;
            tracing::info!(url = bucket.url(), model = %global_model, "models published in the bucket");
        }
        for digest in store.prunable_answer_digests()? {
            run.answers.remove(&digest)?;
        }
        let aggregator = restore_aggregator(store, checkpoints, aggregator, model, RoundId::MAX)?;
        let training = Self {
            run,
            global_hash: global.hash().to_hex(),
            global,
            global_model,
            previous_globals: VecDeque::new(),
            shards: HashMap::new(),
        };
        Ok(Opened { training, aggregator })
    }

    fn parameters(&self) -> usize {
        self.run.model.layout().len()
    }

    fn decode(&self, bytes: &[u8]) -> Result<Vec<f32>, CoordinatorError> {
        let (_, values) = crowdtrain_train::codec::decode(bytes, self.parameters())
            .map_err(crowdtrain_train::TrainError::from)?;
        Ok(values)
    }

    fn model(&self) -> Digest {
        self.global_model
    }

    /// The new checkpoints are encoded and named here but written and
    /// synced in the background ([`crate::Shell::write_behind`]): on this
    /// machine writing and syncing them took as long as the checks and the
    /// aggregation, and stalled now and then behind the file system's
    /// journal. The newest model is served from memory meanwhile. Before
    /// this round commits, the previous round's files must be durable, so a
    /// crash or a power loss can take the checkpoints of the latest closed
    /// round only, which a restart rebuilds from the previous round's and
    /// the stored updates ([`crate::restore`]).
    fn step(
        &mut self,
        aggregate: &[f32],
        aggregator: &dyn Fn() -> Option<AggregatorState>,
    ) -> Result<Stepped<OuterState>, CoordinatorError> {
        let mut state = self.global.clone();
        let change = outer_step(self.run.config.outer, &mut state, aggregate)
            .map_err(crowdtrain_train::TrainError::from)?;
        let (model_bytes, momentum_bytes) = encode_global(self.run.model.as_ref(), &state);
        let (model, momentum) = (Digest::of(&model_bytes), Digest::of(&momentum_bytes));
        let model_bytes = Arc::new(model_bytes);
        // Under a compressed broadcast, the change workers holding the
        // current model download instead (served from memory, its file
        // written with the checkpoints).
        let change = change.map(|change| {
            let delta = ModelDelta { round: state.round, base: self.global_model, target: model, change };
            Arc::new(delta.encode())
        });
        if let Some(bytes) = &change {
            self.run.deltas.insert(state.round, model, Arc::clone(bytes));
        }
        let write = CheckpointWrite {
            checkpoints: self.run.checkpoints.clone(),
            deltas: self.run.deltas.clone(),
            bucket: self.run.bucket.clone(),
            model,
            model_bytes: Arc::clone(&model_bytes),
            momentum,
            momentum_bytes,
            change,
        };
        let after = state.round.is_multiple_of(AGGREGATOR_SNAPSHOT_ROUNDS).then(aggregator).flatten();
        let aggregator = match after {
            Some(after) => {
                let bytes = checkpoint::encode_aggregator(&self.run.model.name(), &after);
                if let Some(bucket) = &self.run.bucket {
                    bucket.put(BlobKey::Checkpoint(Digest::of(&bytes)), bytes.clone())?;
                }
                Some(self.run.checkpoints.put(&bytes)?)
            }
            None => None,
        };
        Ok(Stepped {
            global: state,
            model,
            momentum,
            aggregator,
            serve: Some(model_bytes),
            write: Some(write),
        })
    }

    fn advance(&mut self, next: OuterState, model: Digest) {
        self.global_hash = next.hash().to_hex();
        let before = std::mem::replace(&mut self.global, next);
        let delay = self.run.config.outer.delay as usize;
        if delay > 0 {
            if self.previous_globals.len() == delay {
                self.previous_globals.pop_front();
            }
            self.previous_globals.push_back((self.global_model, before.params));
        }
        self.global_model = model;
    }

    /// The coordinator replays it from the stored answer, in the
    /// background like a fresh answer (the replay returned for the shell),
    /// unless its proofs fail at once.
    fn judge_stored(
        &mut self,
        store: &Store,
        audit: Audited,
    ) -> Result<Judged<PendingReplay>, CoordinatorError> {
        let Audited { round, worker, segment, commitment, assignment } = audit;
        let bytes = self.stored_answer_bytes(store, round, worker)?;
        if let Some(leaves) = rules::decode_boundaries(&bytes) {
            // Checked against the commitment when it arrived; again here,
            // for what the disk held meanwhile.
            if let Err(reason) = judge::check_boundaries(&commitment, &leaves) {
                return Err(CoordinatorError::Corrupt(format!("stored boundary leaves: {reason}")));
            }
            tracing::info!(round, %worker, segment, "replaying a stored audit from the round's start");
            let audit = Audited { round, worker, segment, commitment, assignment };
            return Ok(Judged::Replay(self.replay_from_start(audit, leaves)?));
        }
        let answer = decode_answer(&bytes)?;
        let base = self.base_params(&assignment.base_model)?;
        match audit::check_answer(self.run.model.as_ref(), &base, &assignment, segment, &commitment, &answer)
        {
            Err(reason) => Ok(Judged::Failed(reason)),
            Ok(start) => {
                tracing::info!(round, %worker, segment, "replaying a stored audit answer");
                let audit = Audited { round, worker, segment, commitment, assignment };
                let evidence = Evidence::Answer { answer: Box::new(answer), start: Box::new(start) };
                Ok(Judged::Replay(self.recorded_replay(audit, base, evidence)?))
            }
        }
    }

    fn check_boundaries(&self, commitment: &Commitment, leaves: &[Digest]) -> Result<(), String> {
        judge::check_boundaries(commitment, leaves)
    }

    fn keep_boundaries(&self, leaves: &[Digest]) -> Result<Digest, CoordinatorError> {
        Ok(self.run.answers.put(&rules::encode_boundaries(leaves))?)
    }

    fn replay_from_start(
        &mut self,
        audit: Audited,
        leaves: Vec<Digest>,
    ) -> Result<PendingReplay, CoordinatorError> {
        let base = self.base_params(&audit.assignment.base_model)?;
        // The leaves are durable before the record that names them.
        self.recorded_replay(audit, base, Evidence::FromStart { leaves })
    }

    /// The coordinator's replay runs here, on the caller's thread (a
    /// quarter of a round's training).
    fn recheck(
        &mut self,
        store: &Store,
        audit: &Audited,
        report: &AuditReport,
    ) -> Result<ReportCheck, DriverError> {
        let Audited { round, worker, segment, commitment, assignment } = audit;
        let answer = self.stored_answer(store, *round, *worker)?;
        let steps = assignment.recipe.inner_steps;
        ReportCheck::of(report, &answer, commitment, steps, *segment, || {
            // The auditor says the worker's claim is false: check it.
            let base = self.base_params(&assignment.base_model)?;
            let model = self.run.model.as_ref();
            let start = audit::check_answer(model, &base, assignment, *segment, commitment, &answer)
                .map_err(DriverError::Unjudgeable)?;
            self.replay_report(assignment, *segment, start, &answer.residual_in)?
                .map_err(DriverError::Unjudgeable)
        })
    }

    /// The verdict, the commitment and the ledger are the record of a
    /// passed audit, and an answer is 2.4 MB for the MLP. The answers of
    /// failed audits stay: they are the evidence for the slash (anyone can
    /// replay them against the commitment). So does an answer another
    /// audit names and has not passed: a copier answers with its victim's
    /// very bytes, the same file.
    fn prune_answers(&self, store: &Store, passed: &[(RoundId, WorkerId)]) -> Result<(), CoordinatorError> {
        for &(round, worker) in passed {
            if let Ok(digest) = store.audit_answer_digest(round, worker)
                && store.answer_prunable(&digest)?
            {
                self.run.answers.remove(&digest)?;
            }
        }
        Ok(())
    }
}

impl ModelTraining {
    /// `worker`'s stored answer in `round`, its bytes checked against the
    /// digest `store` holds.
    pub fn stored_answer(
        &self,
        store: &Store,
        round: RoundId,
        worker: WorkerId,
    ) -> Result<AuditAnswer, CoordinatorError> {
        decode_answer(&self.stored_answer_bytes(store, round, worker)?)
    }

    /// The bytes of `worker`'s stored answer in `round` (an answer, or the
    /// boundary leaves kept as one).
    fn stored_answer_bytes(
        &self,
        store: &Store,
        round: RoundId,
        worker: WorkerId,
    ) -> Result<Vec<u8>, CoordinatorError> {
        let digest = store.audit_answer_digest(round, worker)?;
        if let Some(bucket) = &self.run.bucket {
            bucket::restore_answer(
                &self.run.answers,
                bucket.as_ref(),
                worker,
                digest,
                self.run.config.limits.max_upload_bytes,
            )?;
        }
        Ok(self.run.answers.get(&digest)?)
    }

    /// What the delegated auditor of `audited`'s audit in `round` replays
    /// (its `segment`, committed as `commitment`, of `assignment`): the
    /// first segment starts from the round's model; the stored answer holds
    /// any other start, and the residual (checked against the commitment
    /// when the answer arrived) the last segment needs.
    pub fn audit_task(
        &self,
        store: &Store,
        round: RoundId,
        audited: WorkerId,
        segment: u32,
        commitment: &Commitment,
        assignment: Assignment,
    ) -> Result<AuditTask, CoordinatorError> {
        let needs_answer =
            segment != 1 || (segment == commitment.segments && commitment.residual_in.is_some());
        let answer = if needs_answer { Some(self.stored_answer(store, round, audited)?) } else { None };
        let (start_state, residual_in) = match answer {
            Some(answer) if segment != 1 => (answer.start_state, answer.residual_in),
            answer => (
                crowdtrain_train::TrainState::new(
                    self.run.model.name(),
                    self.base_params(&assignment.base_model)?,
                )
                .to_bytes(),
                answer.map(|answer| answer.residual_in).unwrap_or_default(),
            ),
        };
        Ok(AuditTask { assignment, segment, start_state, residual_in })
    }

    /// The replay of `audit` from `evidence` already durable (a stored
    /// answer, or leaves kept before their record): nothing to wait for.
    fn recorded_replay(
        &mut self,
        audit: Audited,
        base: Vec<f32>,
        evidence: Evidence,
    ) -> Result<PendingReplay, CoordinatorError> {
        let Audited { round, worker, segment, commitment, assignment } = audit;
        let shards = self.shards(&assignment)?;
        let (recorded, on_record) = std::sync::mpsc::channel();
        let _ = recorded.send(());
        Ok(PendingReplay {
            round,
            worker,
            segment,
            commitment,
            assignment,
            shards,
            base,
            evidence,
            recorded: on_record,
        })
    }

    /// The parameters of model `base`, a round's base: the newest model, or
    /// under a delayed outer update one of the `delay` before it (kept in
    /// memory, else read from its checkpoint, as after a restart).
    pub fn base_params(&self, base: &Digest) -> Result<Vec<f32>, CoordinatorError> {
        if *base == self.global_model {
            return Ok(self.global.params.clone());
        }
        if let Some((_, params)) = self.previous_globals.iter().find(|(digest, _)| digest == base) {
            return Ok(params.clone());
        }
        let bytes = self.run.checkpoints.get(base)?;
        let model = &self.run.model;
        Ok(checkpoint::decode(&bytes, CheckpointKind::Params, &model.name(), model.layout())?)
    }

    /// The coordinator's own replay of `start` (checked by
    /// [`audit::check_answer`]).
    pub fn replay_report(
        &mut self,
        assignment: &Assignment,
        segment: u32,
        start: TrainState,
        residual_in: &[f32],
    ) -> Result<Result<AuditReport, String>, CoordinatorError> {
        let shards = self.shards(assignment)?;
        let base = self.base_params(&assignment.base_model)?;
        Ok(replay::replay_segment(
            self.run.model.as_ref(),
            &self.run.dataset,
            &shards,
            assignment,
            segment,
            start,
            &base,
            residual_in,
        )
        .map_err(|error| format!("the segment cannot be replayed: {error}")))
    }

    /// The round's shards for `assignment.slots` participants, cached.
    pub fn shards(&mut self, assignment: &Assignment) -> Result<Arc<Shards>, CoordinatorError> {
        if let Some(shards) = self.shards.get(&assignment.slots) {
            return Ok(Arc::clone(shards));
        }
        let shards = Arc::new(self.run.dataset.shards(assignment)?);
        // A few slot counts at most (each is an index of the whole training
        // set): participation changes, and the cache must not grow with it.
        if self.shards.len() >= SHARD_CACHE_MAX {
            self.shards.clear();
        }
        self.shards.insert(assignment.slots, Arc::clone(&shards));
        Ok(shards)
    }
}

/// An uploaded update's values, if it is one this run takes: the model's
/// size, finite values, in the run's `codec` (else the refusal the worker
/// is sent; a committed update that fails here is recorded as malformed).
/// What the node checks on every reveal, and the simulator's real-training
/// mode too.
pub fn check_update(parameters: usize, codec: Codec, payload: &[u8]) -> Result<Vec<f32>, Refusal> {
    let (used, values) = crowdtrain_train::codec::decode(payload, parameters).map_err(|error| {
        let code = match error {
            crowdtrain_train::CodecError::NonFinite { .. }
            | crowdtrain_train::CodecError::BadScale { .. } => ErrorCode::NonFinite,
            _ => ErrorCode::WrongShape,
        };
        Refusal { code, message: format!("the update was refused: {error}") }
    })?;
    if used != codec {
        let message = format!("the run encodes updates as {codec}, not {used}");
        return Err(Refusal { code: ErrorCode::WrongShape, message });
    }
    Ok(values)
}

/// A stored audit answer's bytes, decoded.
fn decode_answer(bytes: &[u8]) -> Result<AuditAnswer, CoordinatorError> {
    postcard::from_bytes(bytes)
        .map_err(|error| CoordinatorError::Corrupt(format!("a stored audit answer does not decode: {error}")))
}

/// Slot counts whose shards are kept for audit replays.
const SHARD_CACHE_MAX: usize = 4;
