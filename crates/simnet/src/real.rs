//! Real training where bits matter (`crowdtrain sim network --training
//! model`): the coordinator driver runs the real
//! [`ModelTraining`] (the one the networked coordinator runs: parameters,
//! the outer optimizer, checkpoint files, audit answers as files, bit-exact
//! replays), and every simulated worker really trains the tiny MLP recipe
//! on the bundled Fashion-MNIST subset with the real worker's code
//! ([`crowdtrain_coordinator::behavior::produce`]): real Merkle roots over
//! its segment boundaries, real audit answers, real updates in the run's
//! codec. The attackers are the real worker's cheats: the lazy one skips
//! half its steps (a replay of a later segment catches it), the copier
//! commits its neighbour's real work bit for bit, the near-copier the same
//! plus noise at 10^-3 of its norm, the harmful one noise at a thousand
//! times its norm (the norm check refuses it), the fake reveal a doubled
//! update, the garbage one a not-a-number. A delegated auditor fetches its
//! task as the node serves it
//! ([`ModelTraining::audit_task`]) and replays it with the coordinator's
//! own replay code.
//!
//! The files (checkpoints, deltas, answers) live in a temporary directory
//! that goes with the run; the store stays SQLite in memory, so a crash
//! loses what the real node's would (files are named by their content and
//! written before the records that name them).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use crowdtrain_coordinator::behavior::{Behavior, Produced, Work, produce, tampered};
use crowdtrain_coordinator::deltas::Deltas;
use crowdtrain_coordinator::model_training::check_update;
use crowdtrain_coordinator::replay::replay_segment;
use crowdtrain_coordinator::training::{Audited, Judged, Training};
use crowdtrain_coordinator::{
    CoordinatorError, Driver, DriverError, ModelRun, ModelTraining, PendingReplay, RunData, Sent, Shards,
    Shell, audit, encode_global,
};
use crowdtrain_data::text::TokenizerSpec;
use crowdtrain_protocol::ledger::Event;
use crowdtrain_protocol::wire::{AuditAnswer, AuditReport, ErrorCode};
use crowdtrain_protocol::{
    Assignment, Commitment, Digest, Identity, Refusal, RoundId, RunConfig, TrainingRecipe, Verdict, WorkerId,
};
use crowdtrain_store::{CheckpointKind, Checkpoints, RunRecord, checkpoint};
use crowdtrain_train::diloco::outer_step;
use crowdtrain_train::{Model, OuterState, TrainState};

use crate::invariants::{self, Copies, Violation};
use crate::mode::Mode;
use crate::model::{AGGREGATOR, Behaviour};

/// How a simulated behaviour is played by the real worker's code.
fn behavior(behaviour: Behaviour) -> Behavior {
    match behaviour {
        // A fake reveal trains honestly; it reveals [`tampered`] bytes.
        Behaviour::Honest | Behaviour::FakeReveal => Behavior::Honest,
        Behaviour::Lazy => Behavior::Lazy(0.5),
        Behaviour::Copier => Behavior::Copy,
        Behaviour::NearCopier => Behavior::NearCopy,
        // The real worker has no such cheat: `simulate` refuses forgers
        // with real training.
        Behaviour::Forger => unreachable!("forgers are simulated with the stand-in training only"),
        Behaviour::Harmful => Behavior::Noise(1000.0),
        Behaviour::Garbage => Behavior::Nan,
    }
}

fn violation(what: &str) -> impl Fn(&dyn std::fmt::Display) -> Violation + '_ {
    move |error| Violation(format!("{what}: {error}"))
}

/// Real training, as the world drives it ([`Mode`]).
pub struct ModelMode {
    /// The run's files; removed with the run.
    _dir: tempfile::TempDir,
    config: RunConfig,
    model: Box<dyn Model>,
    dataset: Arc<RunData>,
    checkpoints: Checkpoints,
    deltas: Deltas,
    answers: Checkpoints,
    /// Models the workers downloaded, by digest.
    models: HashMap<Digest, Arc<Vec<f32>>>,
    /// Shards by participant count.
    shards: HashMap<u32, Arc<Shards>>,
}

impl ModelMode {
    /// The run of `seed`: the MLP on the bundled subset, the world's recipe
    /// ([`crate::world::recipe`]) under `[outer] delay = outer_delay` (the
    /// outer step keeps the models the rounds ahead train from), files in a
    /// new temporary directory.
    pub fn new(seed: u64, outer_delay: u32) -> Result<Self, Violation> {
        let recipe: TrainingRecipe = crate::world::recipe(seed);
        let mut config = RunConfig::parse(&format!("rounds = 1\n[training]\nseed = {seed}\n"))
            .map_err(|error| violation("the model run's configuration")(&error))?;
        config.training = recipe.clone();
        config.outer.delay = outer_delay;
        let dir =
            tempfile::tempdir().map_err(|error| violation("a directory for the run's files")(&error))?;
        let files = |name: &str| dir.path().join(name);
        let opened = violation("the run's files do not open");
        let checkpoints = Checkpoints::open(&files("checkpoints")).map_err(|error| opened(&error))?;
        let answers = Checkpoints::open_with_extension(&files("audit-answers"), "answer")
            .map_err(|error| opened(&error))?;
        let deltas = Deltas::open(&files("deltas")).map_err(|error| opened(&error))?;
        let dataset = RunData::load(None, &recipe, &TokenizerSpec::from("char".to_owned()))
            .map_err(|error| violation("the bundled data set")(&error))?;
        Ok(Self {
            _dir: dir,
            model: crowdtrain_train::build_model(recipe.model),
            config,
            dataset: Arc::new(dataset),
            checkpoints,
            deltas,
            answers,
            models: HashMap::new(),
            shards: HashMap::new(),
        })
    }

    /// The parameters of model `digest`, downloaded as a worker does (from
    /// the coordinator's checkpoint, written before any round trains on it).
    fn params(&mut self, digest: &Digest) -> Result<Arc<Vec<f32>>, Violation> {
        if let Some(params) = self.models.get(digest) {
            return Ok(Arc::clone(params));
        }
        let bytes = self.checkpoints.get(digest).map_err(|error| violation("a round's model")(&error))?;
        let (name, layout) = (self.model.name(), self.model.layout());
        let params = checkpoint::decode(&bytes, CheckpointKind::Params, &name, layout)
            .map_err(|error| violation("a round's model does not decode")(&error))?;
        // The workers of a few rounds at a time hold a model (under a
        // delayed outer update, one per live round): keep it small.
        if self.models.len() >= 4 + crowdtrain_protocol::MAX_OUTER_DELAY as usize {
            self.models.clear();
        }
        Ok(Arc::clone(self.models.entry(*digest).or_insert_with(|| Arc::new(params))))
    }

    fn shards(&mut self, assignment: &Assignment) -> Result<Arc<Shards>, Violation> {
        if let Some(shards) = self.shards.get(&assignment.slots) {
            return Ok(Arc::clone(shards));
        }
        let shards =
            Arc::new(self.dataset.shards(assignment).map_err(|error| violation("the shards")(&error))?);
        Ok(Arc::clone(self.shards.entry(assignment.slots).or_insert(shards)))
    }
}

/// A worker's real work: what it produced, and what it reveals.
#[derive(Clone)]
pub struct RealWork {
    produced: Arc<Produced>,
    reveal: Arc<Vec<u8>>,
}

impl Mode for ModelMode {
    type Training = ModelTraining;
    type Work = RealWork;
    /// The answer's bytes, as the worker uploads them (postcard).
    type Answer = Arc<Vec<u8>>;
    type Report = AuditReport;

    /// The model's initial parameters and zero momentum, as checkpoint
    /// files (as a new node writes them).
    fn run_record(
        &mut self,
        seed: u64,
        signer: &Identity,
        created_unix_ms: u64,
    ) -> Result<RunRecord, Violation> {
        let (name, layout) = (self.model.name(), self.model.layout());
        let params = layout.initialize(self.config.training.seed);
        let zeros = vec![0.0; params.len()];
        let written = violation("the initial checkpoints");
        let initial_model = self
            .checkpoints
            .put(&checkpoint::encode(CheckpointKind::Params, &name, layout, &params))
            .map_err(|error| written(&error))?;
        let initial_momentum = self
            .checkpoints
            .put(&checkpoint::encode(CheckpointKind::OuterMomentum, &name, layout, &zeros))
            .map_err(|error| written(&error))?;
        Ok(RunRecord {
            run_id: Digest::of(&[&b"simnet model run "[..], &seed.to_le_bytes()].concat()),
            protocol_version: 0,
            config_json: "{}".into(),
            coordinator_key: signer.public_key(),
            model_name: name,
            initial_model,
            initial_momentum,
            created_unix_ms,
        })
    }

    fn setup(&self) -> ModelRun {
        ModelRun {
            config: self.config.clone(),
            model: crowdtrain_train::build_model(self.config.training.model),
            dataset: Arc::clone(&self.dataset),
            checkpoints: self.checkpoints.clone(),
            deltas: self.deltas.clone(),
            answers: self.answers.clone(),
            bucket: None,
        }
    }

    fn replay_of(replay: &PendingReplay) -> (RoundId, WorkerId) {
        (replay.round, replay.worker)
    }

    fn copies(&self) -> Copies {
        Copies::NextSlot
    }

    fn work(&mut self, behaviour: Behaviour, assignment: &Assignment) -> Result<RealWork, Violation> {
        let params = self.params(&assignment.base_model)?;
        let shards = self.shards(assignment)?;
        let steps = AtomicU64::new(0);
        let work = Work {
            model: self.model.as_ref(),
            assignment,
            params: &params,
            data: &self.dataset,
            shards: &shards,
            flipped: None,
            steps_done: &steps,
            residual: &[],
        };
        let produced =
            produce(behavior(behaviour), &work, None).map_err(|error| violation("training")(&error))?;
        let reveal = if behaviour == Behaviour::FakeReveal {
            tampered(&produced.payload, assignment, params.len())
                .map_err(|error| violation("tampering")(&error))?
        } else {
            produced.payload.clone()
        };
        Ok(RealWork { produced: Arc::new(produced), reveal: Arc::new(reveal) })
    }

    fn commitment(work: &RealWork) -> Commitment {
        work.produced.commitment()
    }

    fn reveal(work: &RealWork) -> Vec<u8> {
        work.reveal.to_vec()
    }

    /// A segment the commitment does not have is answered with nothing
    /// (which does not decode).
    fn answer(work: &RealWork, segment: u32) -> Arc<Vec<u8>> {
        let answer = work.produced.answer(segment);
        Arc::new(
            answer.map(|answer| postcard::to_allocvec(&answer).expect("answers encode")).unwrap_or_default(),
        )
    }

    fn boundaries(work: &RealWork) -> Vec<Digest> {
        work.produced.hashes.clone()
    }

    fn decode(driver: &Driver<ModelTraining>, bytes: &[u8]) -> Result<Vec<f32>, Refusal> {
        let training = &driver.training;
        check_update(training.run.model.layout().len(), training.run.config.training.codec, bytes)
    }

    /// As the node takes one: its proofs checked against the commitment
    /// first (failing at once if they do not hold), then stored as a file
    /// named by its hash, which the record names.
    fn answered(
        driver: &mut Driver<ModelTraining>,
        sent: Sent,
        answer: &Arc<Vec<u8>>,
        shell: &mut impl Shell<ModelTraining>,
    ) -> Result<Option<bool>, DriverError> {
        let Some((segment, commitment)) = driver.machine.pending_audit(sent.worker, sent.round) else {
            let message = format!("{} has no pending audit in round {}", sent.worker, sent.round);
            return Err(DriverError::Refused(Refusal { code: ErrorCode::NotAudited, message }));
        };
        let assignment = driver
            .machine
            .assignment_in(sent.round, sent.worker)
            .expect("an audited worker is a participant");
        let training = &driver.training;
        let base = training.base_params(&assignment.base_model)?;
        let checked = postcard::from_bytes::<AuditAnswer>(answer)
            .map_err(|error| format!("the answer does not decode: {error}"))
            .and_then(|decoded| {
                let model = training.run.model.as_ref();
                audit::check_answer(model, &base, &assignment, segment, &commitment, &decoded)
            });
        if let Err(reason) = checked {
            driver.answer_refuted(sent, reason, shell)?;
            return Ok(None);
        }
        let digest = training.run.answers.put(answer).map_err(CoordinatorError::from)?;
        Ok(Some(driver.audit_answered(sent, digest, shell)?.is_none()))
    }

    /// The replay the node runs: the stored answer's proofs, then the
    /// drawn segment replayed bit for bit (or, under `audit.replay =
    /// "from-start"`, the round up to the segment's end against the kept
    /// boundary leaves), judged by the protocol's rules.
    fn replay(driver: &mut Driver<ModelTraining>, audit: &Audited) -> Result<Verdict, CoordinatorError> {
        let training = &mut driver.training;
        Ok(match training.judge_stored(&driver.store, audit.clone())? {
            Judged::Failed(reason) => Verdict::Failed(reason),
            Judged::Replay(replay) => replay.verdict(training.run.model.as_ref(), &training.run.dataset),
        })
    }

    /// The task as the node serves it, replayed with the coordinator's own
    /// code on the auditor's copy of the model. A colluding auditor vouches
    /// for a cheat (reports the end its stored answer claims) and accuses
    /// an honest worker (reports an end it made up).
    fn report(
        &mut self,
        driver: Option<&mut Driver<ModelTraining>>,
        honest: bool,
        audited_behaviour: Option<Behaviour>,
        auditor: WorkerId,
        round: RoundId,
        _base: Digest,
        audited: WorkerId,
        segment: u32,
    ) -> Option<AuditReport> {
        let driver = driver?;
        let (drawn, commitment, assignment) = driver.delegated(auditor, round, audited, "replay").ok()?;
        debug_assert_eq!(drawn, segment);
        let task =
            driver.training.audit_task(&driver.store, round, audited, drawn, &commitment, assignment).ok()?;
        let params = self.params(&task.assignment.base_model).ok()?;
        let shards = self.shards(&task.assignment).ok()?;
        let model = self.model.as_ref();
        let start = TrainState::from_bytes(&task.start_state, &model.name(), params.len()).ok()?;
        let (assignment, residual_in) = (&task.assignment, &task.residual_in);
        let truth =
            replay_segment(model, &self.dataset, &shards, assignment, drawn, start, &params, residual_in)
                .ok()?;
        Some(match audited_behaviour {
            _ if honest => truth,
            Some(behaviour) if !behaviour.is_honest() => {
                let claimed = driver.training.stored_answer(&driver.store, round, audited).ok()?;
                let last = drawn == commitment.segments;
                AuditReport {
                    end_hash: claimed.end_hash,
                    payload: last.then_some(commitment.payload),
                    residual_out: commitment.residual_out.filter(|_| last),
                }
            }
            _ => AuditReport { end_hash: Digest::of(&truth.end_hash.0), ..truth },
        })
    }

    /// The outer steps taken again from the initial checkpoint with the
    /// credited updates alone: every round's model and momentum checkpoint
    /// must be what it names, bit for bit.
    fn fault_free(
        &self,
        events: &[Event],
        initial_model: Digest,
        payloads: impl FnMut(RoundId, &[WorkerId]) -> Result<Vec<Vec<u8>>, Violation>,
    ) -> Result<u64, Violation> {
        let (model, outer) = (self.model.as_ref(), self.config.outer);
        let read = violation("the initial model");
        let bytes = self.checkpoints.get(&initial_model).map_err(|error| read(&error))?;
        let params = checkpoint::decode(&bytes, CheckpointKind::Params, &model.name(), model.layout())
            .map_err(|error| read(&error))?;
        let parameters = params.len();
        let mut state = OuterState::new(model.name(), params);
        let step = |_base: Digest, aggregate: &[f32]| {
            outer_step(outer, &mut state, aggregate).map_err(|error| violation("an outer step")(&error))?;
            let (model_bytes, momentum_bytes) = encode_global(model, &state);
            Ok((Digest::of(&model_bytes), Digest::of(&momentum_bytes)))
        };
        let decode =
            |bytes: &[u8]| crowdtrain_train::codec::decode(bytes, parameters).ok().map(|(_, values)| values);
        invariants::check_fault_free_with(events, initial_model, &AGGREGATOR, decode, step, payloads)
    }
}
