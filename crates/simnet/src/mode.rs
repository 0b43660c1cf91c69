//! What differs between the simulator's two kinds of training: the hashed
//! stand-in ([`crate::model::HashMode`]), cheap enough for a thousand
//! workers, and real training ([`crate::real::ModelMode`]), where the bits
//! of the model, the commitments and the replays are the real ones. The
//! world ([`crate::world`]) drives either through [`Mode`]: the network,
//! the faults, the churn and the invariants are the same code.

use crowdtrain_coordinator::training::Audited;
use crowdtrain_coordinator::{CoordinatorError, Driver, DriverError, Sent, Shell, Training};
use crowdtrain_protocol::ledger::Event;
use crowdtrain_protocol::{Assignment, Commitment, Digest, Identity, Refusal, RoundId, Verdict, WorkerId};
use crowdtrain_store::RunRecord;
use serde::Serialize;

use crate::invariants::{Copies, Violation};
use crate::model::Behaviour;

/// What the simulated workers and the coordinator's replays compute
/// (`crowdtrain sim network --training`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum TrainingMode {
    /// A hash stands in for training and a replay ([`crate::model`]).
    Hash,
    /// A tiny MLP really trains on the bundled Fashion-MNIST subset; the
    /// coordinator is [`crowdtrain_coordinator::ModelTraining`], replays
    /// are bit-exact ([`crate::real`]).
    Model,
}

impl TrainingMode {
    pub fn parse(text: &str) -> Result<Self, String> {
        match text {
            "hash" => Ok(Self::Hash),
            "model" => Ok(Self::Model),
            _ => Err(format!("`{text}`: the training is `hash` or `model`")),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Hash => "hash",
            Self::Model => "model",
        }
    }
}

/// One kind of training, as the world needs it: the coordinator's
/// [`Training`] and how to open it, what a worker computes for an
/// assignment under each [`Behaviour`], how the coordinator takes an update
/// and an audit answer, how it replays, what a delegated auditor reports,
/// and what a fault-free run with the same credited updates ends on.
pub(crate) trait Mode: Sized {
    type Training: Training<Report = Self::Report>;
    /// A delegated auditor's report.
    type Report: Clone;
    /// What a worker computed for an assignment (kept until it revealed).
    type Work: Clone;
    /// An audit answer, as sent.
    type Answer: Clone;

    /// The run's record for a new store, its initial model and momentum
    /// named as this training names models.
    fn run_record(
        &mut self,
        seed: u64,
        signer: &Identity,
        created_unix_ms: u64,
    ) -> Result<RunRecord, Violation>;

    /// What [`Driver::open`] opens the training from (again at each restart).
    fn setup(&self) -> <Self::Training as Training>::Setup;

    /// Which answered audit a replay the driver asked for is.
    fn replay_of(replay: &<Self::Training as Training>::Replay) -> (RoundId, WorkerId);

    /// Where a copier finds the update it copies.
    fn copies(&self) -> Copies;

    /// What a worker behaving as `behaviour` computes for `assignment`.
    fn work(&mut self, behaviour: Behaviour, assignment: &Assignment) -> Result<Self::Work, Violation>;

    fn commitment(work: &Self::Work) -> Commitment;

    /// The bytes the worker reveals.
    fn reveal(work: &Self::Work) -> Vec<u8>;

    /// Its answer to an audit of `segment`.
    fn answer(work: &Self::Work, segment: u32) -> Self::Answer;

    /// The boundary leaves a commitment of `work` carries under
    /// `audit.replay = "from-start"`.
    fn boundaries(work: &Self::Work) -> Vec<Digest>;

    /// A revealed update's values, as the coordinator checks them.
    fn decode(driver: &Driver<Self::Training>, bytes: &[u8]) -> Result<Vec<f32>, Refusal>;

    /// An audit answer reaching the coordinator: `Some(replayed here)` if
    /// recorded (the coordinator replays it unless an auditor is named),
    /// `None` if its proofs failed it at once.
    fn answered(
        driver: &mut Driver<Self::Training>,
        sent: Sent,
        answer: &Self::Answer,
        shell: &mut impl Shell<Self::Training>,
    ) -> Result<Option<bool>, DriverError>;

    /// The coordinator's own replay of an answered audit, from the stored
    /// answer.
    fn replay(driver: &mut Driver<Self::Training>, audit: &Audited) -> Result<Verdict, CoordinatorError>;

    /// What a delegated auditor (`honest`, or colluding with the cheats and
    /// accusing the honest) reports on `audited`'s `segment` in `round` on
    /// `base`, if it can get the task (the coordinator, `driver`, is up):
    /// `audited_behaviour` is the audited worker's, as the colluders know.
    #[allow(clippy::too_many_arguments)]
    fn report(
        &mut self,
        driver: Option<&mut Driver<Self::Training>>,
        honest: bool,
        audited_behaviour: Option<Behaviour>,
        auditor: WorkerId,
        round: RoundId,
        base: Digest,
        audited: WorkerId,
        segment: u32,
    ) -> Option<<Self::Training as Training>::Report>;

    /// The invariant that the final state equals a fault-free run with the
    /// same accepted submissions ([`crate::invariants::check_fault_free`]).
    fn fault_free(
        &self,
        events: &[Event],
        initial_model: Digest,
        payloads: impl FnMut(RoundId, &[WorkerId]) -> Result<Vec<Vec<u8>>, Violation>,
    ) -> Result<u64, Violation>;
}
