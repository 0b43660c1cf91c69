//! What a coordinator's training is, apart from the rounds around it: the
//! part of a [`Driver`](crate::Driver) that differs between a run that
//! trains a real model ([`crate::ModelTraining`]: parameters, codecs,
//! checkpoint files, bit-exact replays) and the network simulator's
//! stand-in (`crowdtrain_simnet::model`: sixteen hashed values, a hash for
//! a replay). Everything else the driver does (recording, the defence's
//! checks and aggregation with the speculation's reuse, the audit rules,
//! the timer, restoring from the store) is the same code for both.

use std::sync::Arc;

use crowdtrain_defense::{Aggregator, AggregatorState};
use crowdtrain_protocol::judge::ReportCheck;
use crowdtrain_protocol::{Assignment, Commitment, Digest, RoundId, WorkerId};
use crowdtrain_store::{RunRecord, Store};

use crate::CoordinatorError;
use crate::driver::{CheckpointWrite, DriverError};

/// A run's training, as the driver needs it: decoding updates, the outer
/// step, judging an answered audit, rechecking a delegated report, and
/// the global state, opened from the store and advanced as rounds commit.
pub trait Training: Sized {
    /// The global state an outer step leads to, held until its round
    /// commits ([`Training::advance`]).
    type Global;
    /// A delegated auditor's report, as the shell decoded it.
    type Report;
    /// An answered audit for the shell to replay ([`crate::Shell::replay`]).
    type Replay;
    /// What the training is opened from ([`Training::open`]).
    type Setup;

    /// The training of the run `store` holds (`record`), after its latest
    /// closed round, with the state of `aggregator` that round left.
    fn open(
        setup: Self::Setup,
        store: &Store,
        record: &RunRecord,
        aggregator: &Aggregator,
    ) -> Result<Opened<Self>, CoordinatorError>;

    /// Values in an update.
    fn parameters(&self) -> usize;

    /// An accepted update's values from the bytes the store holds (read
    /// back when a round closes after a restart).
    fn decode(&self, bytes: &[u8]) -> Result<Vec<f32>, CoordinatorError>;

    /// The digest of the latest global model: what rounds train from.
    fn model(&self) -> Digest;

    /// The outer step with `aggregate`: the global state it leads to and
    /// its checkpoints' digests. Nothing changes until the round commits
    /// ([`Training::advance`]). `aggregator` gives the aggregator state
    /// the round would leave, if the aggregator keeps one (to snapshot).
    fn step(
        &mut self,
        aggregate: &[f32],
        aggregator: &dyn Fn() -> Option<AggregatorState>,
    ) -> Result<Stepped<Self::Global>, CoordinatorError>;

    /// The round that stepped to `next` (named `model`) committed.
    fn advance(&mut self, next: Self::Global, model: Digest);

    /// An answered audit nobody else will judge, from its stored answer
    /// (or the boundary leaves kept for it: [`Training::keep_boundaries`]):
    /// failed at once, or a replay for the shell.
    fn judge_stored(
        &mut self,
        store: &Store,
        audit: Audited,
    ) -> Result<Judged<Self::Replay>, CoordinatorError>;

    /// Under `audit.replay = "from-start"`: whether `leaves`, sent with
    /// `commitment`, are what it commits to (for real training,
    /// [`crowdtrain_protocol::judge::check_boundaries`]), else why not.
    fn check_boundaries(&self, commitment: &Commitment, leaves: &[Digest]) -> Result<(), String>;

    /// Under `audit.replay = "from-start"`: keeps a drawn commitment's
    /// boundary `leaves` (checked against it) durably, as its audit's
    /// answer; returns the digest the answer is recorded by.
    fn keep_boundaries(&self, leaves: &[Digest]) -> Result<Digest, CoordinatorError>;

    /// Under `audit.replay = "from-start"`: the replay of `audit` from the
    /// round's start, against the committed boundary `leaves`, for the
    /// shell ([`crate::Shell::replay`]).
    fn replay_from_start(
        &mut self,
        audit: Audited,
        leaves: Vec<Digest>,
    ) -> Result<Self::Replay, CoordinatorError>;

    /// A delegated auditor's `report` on `audit`: agreeing with the
    /// commitment and the stored answer, it decides; disagreeing, the
    /// coordinator's own replay decides, and says whether it contradicts
    /// the auditor ([`ReportCheck`]).
    fn recheck(
        &mut self,
        store: &Store,
        audit: &Audited,
        report: &Self::Report,
    ) -> Result<ReportCheck, DriverError>;

    /// The audits of `passed` passed, durably: what their stored answers
    /// cost may go.
    fn prune_answers(&self, store: &Store, passed: &[(RoundId, WorkerId)]) -> Result<(), CoordinatorError>;
}

/// A training just opened, and the aggregator state its latest closed
/// round left.
pub struct Opened<T> {
    pub training: T,
    pub aggregator: AggregatorState,
}

/// An outer step taken ([`Training::step`]).
pub struct Stepped<G> {
    /// The global state it leads to.
    pub global: G,
    /// The digests of the new model's and outer state's checkpoints, and
    /// of the aggregator state's snapshot if one was taken.
    pub model: Digest,
    pub momentum: Digest,
    pub aggregator: Option<Digest>,
    /// The new model's bytes, for the shell to serve from memory, if the
    /// run serves models.
    pub serve: Option<Arc<Vec<u8>>>,
    /// The new checkpoint files, for the shell to write in the background,
    /// if the run writes any.
    pub write: Option<CheckpointWrite>,
}

/// An answered audit: whose, which segment, and what it answers for.
#[derive(Debug, Clone)]
pub struct Audited {
    pub round: RoundId,
    pub worker: WorkerId,
    pub segment: u32,
    pub commitment: Commitment,
    pub assignment: Assignment,
}

/// What judging a stored answer found ([`Training::judge_stored`]).
pub enum Judged<R> {
    /// Its proofs do not hold: the audit fails for this reason.
    Failed(String),
    /// It needs a replay.
    Replay(R),
}
