//! The coordinator's round logic as a pure state machine.
//!
//! No I/O, no clock, no OS randomness: time comes in as an argument (Unix
//! milliseconds), audit randomness from a master key given at construction
//! ([`crate::audit`]), and decisions go out as [`Action`]s. The HTTP
//! server, the tests and any simulator drive the same code.
//!
//! # How to drive it
//!
//! Methods fall into four groups (as in quinn-proto's `Connection`):
//!
//! - (A) getters: [`Coordinator::view`], [`Coordinator::phase`], ...
//! - (B) inputs: [`register`](Coordinator::register),
//!   [`authenticate`](Coordinator::authenticate), [`seen`](Coordinator::seen),
//!   [`commit`](Coordinator::commit), [`reveal`](Coordinator::reveal),
//!   [`audit_result`](Coordinator::audit_result),
//!   [`answer_refuted`](Coordinator::answer_refuted),
//!   [`audit_reported`](Coordinator::audit_reported),
//!   [`handle_timeout`](Coordinator::handle_timeout),
//!   [`handle_aggregated`](Coordinator::handle_aggregated). Each returns an
//!   explicit verdict where a caller is waiting for one; a refusal changes
//!   nothing.
//! - (C) outputs: after every input, drain [`poll_action`](Coordinator::poll_action)
//!   and carry the actions out *in order*, making the records of one input
//!   durable together before answering the request that caused them; then
//!   re-arm one timer at [`poll_timeout`](Coordinator::poll_timeout).
//! - (D) recovery: [`Coordinator::restore`] replays the recorded events
//!   into a new machine.
//!
//! # One record per fact
//!
//! Every durable change of the machine's state is an [`Event`] of the
//! ledger: the machine applies it to itself and emits it as
//! [`Action::Record`]; the store builds its tables from it and appends it
//! to the signed ledger in the same transaction; a restarted coordinator
//! applies the same events to a new machine with the same function. So the
//! tables, the ledger and the machine cannot disagree, and a restored
//! machine is the one that recorded the events. What is not an event is
//! ephemeral by design: when each worker was last seen, the bet on pending
//! audits (below), replays asked for.
//!
//! [`Action::Close`] asks for the round's aggregate: the driver checks and
//! aggregates the accepted updates (in worker order) and reports the new
//! model with `handle_aggregated`, which records [`Event::RoundClosed`]. A
//! round is durable as closed only once its result is: if the driver dies
//! in between, the restored machine closes the round again, and aggregation,
//! being deterministic, gives the same model.
//!
//! # A round
//!
//! 1. **Commit phase.** Participants train and send a [`Commitment`] (the
//!    Merkle root of their segment-boundary state hashes and the hash of the
//!    pseudo-gradient they will reveal). Each accepted commitment is drawn
//!    for audit at once, with probability `audit_probability` and one of its
//!    segments, from the round's secret (whose hash was published at
//!    opening) and that commitment alone; a drawn worker may answer, and
//!    the driver replay, while the others still train. The phase ends when
//!    every participant has committed, or at the commit deadline with
//!    `quorum` commitments (else the deadline is extended up to
//!    `max_extensions` times, then the round fails).
//! 2. **Draw published.** The secret is revealed; the draws are listed, and
//!    with every commitment it makes the beacon, which names the auditors
//!    of delegated audits (announced only now) ([`Event::AuditDraw`]).
//!    Commitments to the same update or trace as another's are audited too,
//!    drawn or not, by the coordinator (`contested_updates`). Updates the
//!    driver's checks find to be copies after the reveals are decided by
//!    the coordinator's own replays only: a delegated auditor's pass
//!    proves nothing about who copied whom ([`Coordinator::handle_contested`]).
//! 3. **Reveal phase.** Workers reveal their pseudo-gradients; one that does
//!    not hash to its commitment is rejected and slashed. Audited workers
//!    answer with the start state of their segment (if not already); the
//!    driver replays it and reports [`Coordinator::audit_result`]. Under
//!    `audit.replay = "from-start"` ([`Settings::replay_from_start`]) no
//!    worker answers: the driver records the boundary leaves the drawn
//!    commitment carried as its answer when it arrives
//!    ([`Coordinator::audit_answered`], with the commitment's nonce) and
//!    replays the round from its base through the drawn segment, so the
//!    verdict can come before the reveal. A failed or unanswered audit
//!    rejects the submission and slashes the stake.
//! 4. **Close.** When every committed worker is settled, or at the reveal
//!    deadline, the accepted submissions (revealed, matching, and passed or
//!    unaudited) are aggregated if there are at least `quorum` of them;
//!    each earns its work units. Otherwise the round fails.
//!
//! Under a delayed outer update several rounds are live, and each runs
//! phases 1 to 3 on its own; only the close stays in round order (see
//! "Delayed outer updates" below).
//!
//! # The next round, opened ahead of the last verdicts
//!
//! A replay re-runs a quarter of the training it checks, and about a third
//! of the rounds have an audit, so waiting for verdicts would idle every
//! worker for a fraction of those rounds. Instead, once all the open round
//! awaits is answered audits the driver replays itself, the machine bets
//! that they pass ([`Action::Speculate`]): the driver aggregates as if they
//! did, and the next round opens *provisionally* on that model
//! ([`Action::OpenProvisional`]; the view shows it, marked provisional).
//! Its participants download and train at once, but commitments for it are
//! refused as too early until the bet is settled:
//!
//! - every audit passes (the usual case): the round closes with the
//!   aggregate already computed, and the [`Event::RoundOpened`] that follows
//!   adopts the provisional round as it was (participants, deadline, the
//!   time it opened);
//! - an audit fails: the provisional round is withdrawn
//!   ([`Action::Withdraw`]), the round closes without the failed update and
//!   the next round opens on that model, as if nobody had bet. Workers that
//!   trained on the withdrawn model are refused and train again; so are
//!   those whose commitment names a shard the round no longer gives them
//!   (it may open on the same model, when the failed update did not count
//!   anyway, with fewer participants: [`Shard`]).
//!
//! Either way the run's models and records are the ones waiting would have
//! given; a provisional round is never persisted, so a restart bets again.
//!
//! # Delayed outer updates: d + 1 live rounds
//!
//! Under `[outer] delay = 1` ([`Settings::outer_delay`]) round r + 1 trains
//! from the model before round r's outer step, which is final once round
//! r - 1 has closed. So round r + 1 opens (on the newest model) as soon as
//! round r is the open round, and two rounds are live: the open round
//! (committing, then revealing, audited and aggregated) and the round
//! opened ahead of it ([`Coordinator::ahead_round`], [`RoundView::ahead`])
//! taking commitments (audits drawn with them, as ever). Both take
//! commitments at once: a worker goes from committing round r straight to
//! training round r + 1, and waits only if round r - 1 has not closed
//! within a whole round of its compute, so training never waits for the
//! network nor for the slowest worker. Round r's verdicts cannot touch
//! round r + 1's base, so nothing is bet or withdrawn (no speculation
//! runs).
//!
//! **Every live round runs its own phases; only the close is ordered.**
//! The round opened ahead ends its commit phase as soon as all its
//! participants have committed, or at its early end or deadline with a
//! quorum, publishes its draw, takes reveals and audit answers and has its
//! verdicts while round r is still open (its participant set was fixed
//! when it opened, and its audits and beacon depend on its own
//! commitments only).
//! Its participants train the live rounds before it first, one after the
//! other, so a round opened ahead of k live rounds is due k + 1 commit
//! windows after it opens (recorded as its deadline): one window would ask
//! for k + 1 rounds of training in the time of one, and cut a slowed-down
//! honest worker out of the round.
//! At its reveal deadline its unanswered audits fail
//! and its answered ones nobody reported on go to the driver, as the open
//! round's do; reveals after it are recorded as late
//! ([`OpenRound::reveal_over`]). Without a quorum at its commit deadline
//! it goes on taking commitments (a quorum's arrival ends the phase);
//! only the open round extends a deadline or fails for want of one, so a
//! round never fails before the rounds before it have ended. The close,
//! the aggregate and the outer step ([`Action::Close`],
//! [`Coordinator::handle_aggregated`]), stays in round order: round r + 1,
//! settled, waits ("ready") until round r has closed or failed, becomes
//! the open round then and closes in the same input (a deadline that
//! passed meanwhile takes effect at the next timeout). So the close
//! cadence is the longest of the rounds' phase latencies, not their sum,
//! and the records of a round ahead (its draw, reveals, verdicts, slashes)
//! come in the ledger before the round before it closes. Round r + 2 never
//! opens before its base, round r's result, exists, and the bookkeeping of
//! a close (work units, missed rounds, who is proven) happens at the
//! close, in round order, as before. Participants of round r that miss it
//! sit out round r + 2 (round r + 1 was open already), and a promoted
//! round still committing waits only for the participants still proven.
//!
//! `delay = d` generalises this (d from 2 up to
//! `crowdtrain_recipe::MAX_OUTER_DELAY`, 4, for links whose chain from a
//! commitment to the next model is longer than a round's training): round r + d trains from the model before round r + d - 1's
//! outer step, that is round r - 1's result, so the d rounds after the open
//! one are open ahead of it ([`Coordinator::ahead_rounds`]; the view's
//! `ahead` chain shows them in order), all taking commitments, and a
//! worker waits only if round r - 1 has not closed within d rounds of its
//! compute after it committed. When the open round ends the oldest round
//! ahead is promoted and one more opens on the new model; the first d + 1
//! rounds all train from the initial model. A worker that misses round r
//! sits out round r + d + 1, the first round opened after it missed.
//! Every live round is rebuilt from its events on a restart, in its own
//! phase (a round in its reveal phase gets a whole reveal window again,
//! as the open round does, and answered audits without a verdict are
//! replayed again).
//!
//! The first round opens when `max(min_workers, quorum)` workers are active,
//! later ones when `quorum` are; participants are the active workers sorted
//! by id (position = slot = shard), at most `max_participants` of them (what
//! the data can be split into: more would leave a shard without a batch).
//! A worker registering mid-round joins at the next round. Commitments and
//! reveals for closed rounds are recorded as late (for the last
//! [`PAST_ROUNDS_KEPT`] rounds; older ones are refused).
//!
//! # Absent workers
//!
//! A worker is active if seen within `worker_timeout_ms` and not sitting
//! out. Anyone admitted can register and then never train, so absence
//! must cost a round little, and only a few times:
//!
//! - A participant that delivers nothing for a round (no commitment; or a
//!   commitment and no reveal) sits out the next round, then twice as many
//!   each time it does so again in a row (up to [`SIT_OUT_ROUNDS_MAX`]).
//!   Being seen (polling for the round, registering again) does not bring it
//!   back sooner: only a commitment shows it works. One that commits late
//!   sits out one round and is waited for after that.
//! - A worker is *proven* once its latest assignment got a commitment from
//!   it (in time or late). The commit phase waits for every proven
//!   participant, up to the deadline; once they (one at least) and a
//!   quorum are in, it waits for the unproven ones (newcomers, workers back
//!   from sitting out) only as long again as the round has lasted, and at
//!   least [`UNPROVEN_GRACE_MIN_MS`]. A round of newcomers only (a run's
//!   first) waits for all of them, up to its deadline. An honest newcomer
//!   trains about as fast as the others and makes it; one that never
//!   commits costs each round it is in a fraction of that round, in fewer
//!   and fewer rounds.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use serde::{Deserialize, Serialize};

use crowdtrain_recipe::TrainingRecipe;

use crate::admission::TokenId;
use crate::audit::{self, Commitment};
use crate::collateral::Collateral;
use crate::config::RunConfig;
use crate::contract::ContractChoice;
use crate::identity::PublicKey;
use crate::ids::{Digest, RoundId, WorkerId};
use crate::ledger::Event;
use crate::read_nonces::{READS_REMEMBERED, ReadNonces, Stale};
use crate::wire::{Assignment, ErrorCode, Phase, RoundView, Shard};

/// Why a malformed committed update does not count.
const MALFORMED: &str = "its committed update is malformed";

/// Why a reveal that is not the committed update does not count.
const MISMATCH: &str = "the reveal does not match the commitment";

/// How far a request's nonce (its time, in microseconds) may be from the
/// coordinator's clock before it is refused as stale.
pub const NONCE_WINDOW_MS: u64 = 10 * 60 * 1000;

/// How far a signed read's (or a registration's) nonce may be from the
/// coordinator's clock. Reads are also single-use (each must carry a nonce
/// no read from its key was taken with: [`ReadNonces`]), so a captured one
/// cannot be replayed to make its worker look alive; the window bounds a
/// replay to a coordinator that restarted meanwhile (and forgot the reads).
pub const READ_WINDOW_MS: u64 = 2 * 60 * 1000;

/// The least an open round waits for its unproven participants once its
/// proven ones and a quorum have committed (see the module docs).
pub const UNPROVEN_GRACE_MIN_MS: u64 = 1_000;

/// The most rounds a participant that keeps delivering nothing sits out in
/// a row.
pub const SIT_OUT_ROUNDS_MAX: u64 = 64;

/// Closed rounds kept in memory to judge late input; late input for older
/// rounds is refused.
pub const PAST_ROUNDS_KEPT: u64 = 64;

/// The protocol-relevant part of the run configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub rounds: u64,
    pub min_workers: u32,
    pub quorum: u32,
    pub commit_ms: u64,
    pub reveal_ms: u64,
    pub extension_ms: u64,
    pub max_extensions: u32,
    pub worker_timeout_ms: u64,
    pub max_workers: u32,
    /// The most participants a round may have: what the training data can
    /// be split into whole batches for (the driver computes it from the
    /// data; [`Settings::from_config`] starts from `max_workers`).
    pub max_participants: u32,
    pub audit_probability: f64,
    pub segments: u32,
    pub stake: u64,
    /// Replays are delegated to workers of the same determinism class.
    pub delegate_audits: bool,
    /// Audits replay from the round's start (`audit.replay =
    /// "from-start"`): the driver judges a drawn commitment from the
    /// boundary leaves it carries, records that as its answer
    /// ([`Coordinator::audit_answered`]) and replays at once, so the worker
    /// uploads nothing. The machine itself is the same either way.
    pub replay_from_start: bool,
    /// Each worker's bond, recorded when it registers; 0: the run takes no
    /// bonds (see [`crate::collateral`]).
    pub bond: u64,
    /// Rounds a round's credits stay escrowed before they vest.
    pub vesting_rounds: u64,
    /// What every participant computes: copied into each assignment.
    pub recipe: TrainingRecipe,
    /// In a run with a contract, the most rounds run past `rounds` while a
    /// live participant has not delivered its option's contribution
    /// (`contract.max_extra_rounds`, default `rounds`; 0 without a contract).
    pub contract_extra_rounds: u64,
    /// Outer steps a round's base lags behind the newest model (`[outer]
    /// delay` d, 0 to `crowdtrain_recipe::MAX_OUTER_DELAY`). Under d >= 1 the
    /// next d rounds open as soon as the open round opens (see "Delayed
    /// outer updates" in the module docs).
    pub outer_delay: u32,
}

impl Settings {
    pub fn from_config(config: &RunConfig) -> Self {
        Self {
            rounds: config.rounds,
            min_workers: config.round.min_workers,
            quorum: config.round.quorum,
            commit_ms: config.round.deadline_ms,
            reveal_ms: config.round.reveal_ms,
            extension_ms: config.round.extension_ms,
            max_extensions: config.round.max_extensions,
            worker_timeout_ms: config.round.worker_timeout_ms,
            max_workers: config.limits.max_workers,
            max_participants: config.limits.max_workers,
            audit_probability: config.audit.probability,
            segments: config.audit.segments,
            stake: config.audit.stake,
            delegate_audits: config.audit.auditors == crate::config::Auditors::Workers,
            replay_from_start: config.audit.replay == crate::config::AuditReplay::FromStart,
            bond: config.audit.bond,
            vesting_rounds: config.audit.vesting_rounds,
            recipe: config.training.clone(),
            contract_extra_rounds: config
                .contract
                .as_ref()
                .map_or(0, |contract| contract.max_extra_rounds.unwrap_or(config.rounds)),
            outer_delay: config.outer.delay,
        }
    }

    /// Credit for one accepted submission: the examples its inner steps
    /// process.
    pub fn work_units(&self) -> u64 {
        self.recipe.work_units()
    }

    /// Active workers needed to open a round: the run starts with
    /// `min_workers`; after that a round needs only enough for its quorum,
    /// so workers leaving cannot stall the run.
    fn workers_to_open(&self, first_round: bool) -> usize {
        if first_round { self.min_workers.max(self.quorum) as usize } else { self.quorum as usize }
    }
}

/// How a commitment or a reveal was recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Recorded {
    /// In time for its round.
    Accepted,
    /// After its phase ended: kept, never counted.
    Late,
    /// A reveal that does not hash to its commitment.
    Mismatch,
    /// A reveal that is the committed update, but not a valid one (it does
    /// not decode to the model's shape, or holds non-finite values): kept
    /// as evidence, never aggregated.
    Malformed,
}

impl Recorded {
    /// The name of the receipt status this outcome is (one list of names).
    pub fn as_str(self) -> &'static str {
        crate::wire::ReceiptStatus::from(self).as_str()
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "accepted" => Some(Self::Accepted),
            "late" => Some(Self::Late),
            "mismatch" => Some(Self::Mismatch),
            "malformed" => Some(Self::Malformed),
            _ => None,
        }
    }
}

/// What a round's aggregation produced: the new model and the state that
/// goes with it, each named by the digest of its checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoundResult {
    pub model: Digest,
    pub momentum: Digest,
    /// A snapshot of the aggregator's state, on the rounds that keep one.
    pub aggregator: Option<Digest>,
}

/// What the driver's defence made of a closed round's accepted updates
/// ([`Coordinator::handle_aggregated`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Aggregated {
    /// The new model, if any update passed the checks.
    pub result: Option<RoundResult>,
    /// Accepted submissions the checks refused, with their reasons.
    pub refused: Vec<(WorkerId, String)>,
}

impl Aggregated {
    /// Every accepted update passed and made `result`.
    pub fn all(result: RoundResult) -> Self {
        Self { result: Some(result), refused: Vec::new() }
    }
}

/// The outcome of an audit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    Passed,
    Failed(String),
    /// No answer before the reveal deadline: counts as failed.
    Unanswered,
}

impl Verdict {
    pub fn passed(&self) -> bool {
        matches!(self, Self::Passed)
    }
}

/// What the driver must do, in order.
///
/// [`Action::Record`] carries every fact the machine decides: the driver
/// makes the records of one input durable together (one transaction, with
/// their ledger entries) before answering the request that caused them.
/// The other actions ask for work the machine cannot do itself.
// Most actions are `Record`s, the large variant: boxing it would allocate
// once per event to shrink the rare ones, in a queue drained per input.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
#[must_use]
pub enum Action {
    /// Make this fact durable.
    Record(Event),
    /// The open round is over: check and aggregate these workers' revealed
    /// updates on `base_model` (in worker order), then call
    /// [`Coordinator::handle_aggregated`]. Nothing is durable until that
    /// records the round as closed or failed: if the driver dies in
    /// between, the restored machine closes the round again, and
    /// aggregation, being deterministic, gives the same model.
    Close { round: RoundId, base_model: Digest, accepted: Vec<WorkerId> },
    /// Every submission of the open round is in and only audits the driver
    /// itself is replaying are outstanding: aggregate `accepted` on
    /// `base_model` as if they pass and call `handle_speculated`, so that
    /// the next round can open on that model while they finish. Nothing is
    /// persisted; a later [`Action::Close`] of the same round with the
    /// same `accepted` is answered with this aggregate.
    Speculate { round: RoundId, base_model: Digest, accepted: Vec<WorkerId> },
    /// Round `round` is open provisionally on `base_model`, the model `after`
    /// gives if its audits pass: publish it, so that its participants
    /// download and train. Not persisted, and no commitment is taken for it,
    /// until a [`Event::RoundOpened`] of the same round adopts it.
    OpenProvisional { round: RoundId, after: RoundId, base_model: Digest },
    /// The speculation on `round` no longer holds (an audit failed, or the
    /// round closed otherwise): forget its aggregate. The provisional round
    /// it opened, if any, is gone.
    Withdraw { round: RoundId, provisional: Option<RoundId> },
    /// The reveal deadline passed with this answered audit not judged (its
    /// auditor did not report): replay it yourself and call
    /// [`Coordinator::audit_result`].
    JudgeAudit { round: RoundId, worker: WorkerId, segment: u32 },
}

/// `(audited, auditor)`: who replays whose segment.
pub type AuditorPair = (WorkerId, WorkerId);

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

/// The outcome of an acceptable commitment or reveal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Newly recorded with this status.
    Recorded(Recorded),
    /// The same value was already recorded with this status (a retry after
    /// a lost answer): nothing changes, the receipt is re-issued.
    AlreadyRecorded(Recorded),
}

impl Outcome {
    pub fn status(self) -> Recorded {
        match self {
            Self::Recorded(status) | Self::AlreadyRecorded(status) => status,
        }
    }
}

#[derive(Debug, Clone)]
struct Worker {
    last_seen_ms: u64,
    last_nonce: u64,
    /// The latest signed reads' nonces (not recorded): reads are
    /// single-use, and may arrive in another order than they were signed.
    reads: ReadNonces,
    /// Its determinism class (the kernels its CPU runs): only a worker of
    /// the same class replays its segments.
    class: String,
    /// It is not assigned rounds before this one (it delivered nothing for
    /// its last `missed_streak` assignments). Not recorded: a restarted
    /// coordinator gives everyone a fresh start.
    sits_out_until: RoundId,
    missed_streak: u32,
    /// When it last missed a round.
    missed_at_ms: u64,
    /// Its latest assignment got a commitment from it (see the module
    /// docs); derived from the recorded events.
    proven: bool,
    /// The round and `residual_out` of its last accepted commitment: the
    /// only error-feedback residual (besides zero) its next one may start
    /// from, until that round's audit of it fails (a residual an audit
    /// contradicts is not carried on: the next commitment starts from
    /// zero). Derived from the recorded events, so it survives a restart.
    residual: Option<(RoundId, Digest)>,
}

impl Worker {
    fn new(now: u64, class: String) -> Self {
        Self {
            last_seen_ms: now,
            last_nonce: 0,
            reads: ReadNonces::default(),
            class,
            sits_out_until: 0,
            missed_streak: 0,
            missed_at_ms: 0,
            proven: false,
            residual: None,
        }
    }
}

/// The phase of the open round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoundPhase {
    Committing { deadline_ms: u64, extensions: u32 },
    Revealing { deadline_ms: u64 },
}

/// One participant's standing in the open round.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Standing {
    pub commitment: Option<Commitment>,
    /// The revealed payload's digest, once it matched the commitment.
    pub revealed: Option<Digest>,
    /// The audited segment, if drawn.
    pub audit: Option<u32>,
    pub verdict: Option<Verdict>,
    /// Why this submission cannot count (a mismatched reveal, a failed or
    /// unanswered audit).
    pub rejected: Option<String>,
    /// A reveal that did not match the commitment, or matched it but was
    /// malformed (kept as evidence).
    pub mismatched: Option<Digest>,
    /// Whether `mismatched` is a malformed committed update.
    pub malformed: bool,
    /// A commitment that arrived after the commit phase.
    pub late_commitment: Option<Commitment>,
    /// A reveal that arrived after the reveal phase of a round opened
    /// ahead, which then waits to close: kept, never counted.
    pub late_reveal: Option<Digest>,
    /// The worker that replays the drawn segment, when delegated.
    pub auditor: Option<WorkerId>,
    /// Whether the audit answer arrived and its proofs checked.
    pub answered: bool,
    /// Whether the driver was asked to replay it itself at the deadline.
    pub judging: bool,
    /// The delegated auditor that judged `verdict` (from
    /// [`Event::Audit`]'s `judged_by`); `None` when the coordinator's own
    /// replay did, or there is no verdict. A delegated pass settles the
    /// submission but proves nothing about who is a copy (see
    /// [`Coordinator::handle_contested`]).
    pub judged_by: Option<WorkerId>,
    /// The delegated auditor whose pass a contest set aside for the
    /// coordinator's own replay: if that replay fails the audit, it
    /// contradicts the auditor's report, which is slashed as any refuted
    /// report ([`Coordinator::auditor_wrong`]).
    pub overruled: Option<WorkerId>,
}

impl Standing {
    /// Whether the coordinator's own replay passed this audit: a pass that
    /// decides which of two copies is the original. A delegated auditor's
    /// pass does not (a copier's colluding auditor would vouch for it).
    pub fn passed_by_coordinator(&self) -> bool {
        self.verdict.as_ref().is_some_and(Verdict::passed) && self.judged_by.is_none()
    }

    fn settled(&self) -> bool {
        self.commitment.is_none()
            || self.rejected.is_some()
            || (self.revealed.is_some() && (self.audit.is_none() || self.verdict.is_some()))
    }

    fn accepted(&self) -> bool {
        self.revealed.is_some()
            && self.rejected.is_none()
            && self.verdict.as_ref().is_none_or(Verdict::passed)
    }
}

/// The open round.
#[derive(Debug, Clone, PartialEq)]
pub struct OpenRound {
    pub id: RoundId,
    pub base_model: Digest,
    pub opened_ms: u64,
    pub phase: RoundPhase,
    /// Ascending worker id; a participant's index is its slot.
    pub participants: Vec<WorkerId>,
    pub standings: BTreeMap<WorkerId, Standing>,
    pub secret_commitment: Digest,
    /// Revealed when the commit phase ends.
    pub secret: Option<[u8; 32]>,
    /// Auditors slashed this round (once each).
    pub auditors_slashed: BTreeSet<WorkerId>,
    /// When the commit phase ends early: set once every proven participant
    /// and a quorum have committed while unproven ones have not (see the
    /// module docs). Not recorded: a restored round sets it again.
    pub early_close_ms: Option<u64>,
    /// The participants that were proven when the round opened: the commit
    /// phase waits for them (up to its deadline).
    pub proven: BTreeSet<WorkerId>,
    /// The reveal deadline of this round passed while it was opened ahead
    /// of the open round: its unanswered audits are judged, it takes no
    /// more reveals (they are late) and closes as soon as it is the open
    /// round. Not recorded: a restored round gets a whole reveal window
    /// again, as the open round does.
    pub reveal_over: bool,
}

impl OpenRound {
    fn commitments(&self) -> BTreeMap<WorkerId, Commitment> {
        self.standings.iter().filter_map(|(&worker, standing)| Some((worker, standing.commitment?))).collect()
    }

    /// The deadline of the current phase.
    pub fn deadline_ms(&self) -> u64 {
        match self.phase {
            RoundPhase::Committing { deadline_ms, .. } | RoundPhase::Revealing { deadline_ms } => deadline_ms,
        }
    }

    /// Whether, at `now`, past the reveal deadline, all the round awaits is
    /// the driver's replays of answered audits ([`Action::JudgeAudit`]):
    /// with none due, or one unanswered, the deadline still has work to do.
    fn awaits_only_replays(&self, now: u64) -> bool {
        let RoundPhase::Revealing { deadline_ms } = self.phase else { return false };
        let mut due = self
            .standings
            .values()
            .filter(|standing| standing.commitment.is_some() && standing.rejected.is_none())
            .filter(|standing| standing.verdict.is_none() && standing.audit.is_some())
            .peekable();
        now >= deadline_ms
            && due.peek().is_some()
            && due.all(|standing| standing.answered && standing.judging)
    }

    /// When the machine next needs the time: the phase's deadline, or the
    /// early end of the commit phase.
    fn next_timeout_ms(&self) -> u64 {
        match (self.phase, self.early_close_ms) {
            (RoundPhase::Committing { deadline_ms, .. }, Some(early)) => early.min(deadline_ms),
            _ => self.deadline_ms(),
        }
    }

    /// When a round opened ahead of the open round next needs the time, if
    /// it does before it is promoted: the end of its commit phase (early,
    /// or at the deadline; once the deadline has passed, only when a
    /// quorum is in: without one the promotion decides), and its reveal
    /// deadline until that has passed.
    fn ahead_timeout_ms(&self, now: u64, quorum: usize) -> Option<u64> {
        match self.phase {
            RoundPhase::Committing { .. } => {
                let next = self.next_timeout_ms();
                (next > now || self.committed() >= quorum).then_some(next)
            }
            RoundPhase::Revealing { deadline_ms } => (!self.reveal_over).then_some(deadline_ms),
        }
    }

    fn committed(&self) -> usize {
        self.standings.values().filter(|standing| standing.commitment.is_some()).count()
    }

    /// The audits still without a verdict of submissions that can count,
    /// as `(worker, segment, answered)`: what the reveal deadline judges.
    fn due_audits(&self) -> Vec<(WorkerId, u32, bool)> {
        self.standings
            .iter()
            .filter(|(_, standing)| standing.commitment.is_some() && standing.rejected.is_none())
            .filter(|(_, standing)| standing.verdict.is_none())
            .filter_map(|(&worker, standing)| Some((worker, standing.audit?, standing.answered)))
            .collect()
    }
}

/// A round just opened, before anyone committed to it: all a worker's view
/// of it depends on ([`Coordinator::opened`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Opened {
    run_id: Digest,
    settings: Settings,
    completed_rounds: u64,
    round: OpenRound,
    provisional: bool,
}

impl Opened {
    pub fn id(&self) -> RoundId {
        self.round.id
    }

    /// What [`Coordinator::view`] shows `worker` of the round.
    pub fn view(&self, worker: Option<WorkerId>) -> RoundView {
        let round = &self.round;
        let assignment = worker.and_then(|worker| assignment(&self.settings, self.run_id, round, worker));
        RoundView {
            run_id: self.run_id,
            phase: Phase::Committing,
            round: Some(round.id),
            completed_rounds: self.completed_rounds,
            model: round.base_model,
            deadline_unix_ms: Some(round.deadline_ms()),
            secret_commitment: Some(round.secret_commitment),
            secret: None,
            assignment,
            committed: false,
            revealed: false,
            audit: None,
            audit_answered: false,
            audit_task: None,
            provisional: self.provisional,
            ahead: None,
        }
    }
}

/// A bet that the open round's pending audits pass (see the module docs).
#[derive(Debug)]
struct Speculation {
    /// The open round, and the submissions it aggregates if they pass.
    round: RoundId,
    accepted: Vec<WorkerId>,
    /// The next round, open provisionally once the driver aggregated them.
    next: Option<OpenRound>,
}

/// What is kept of a round after it closed: enough to judge late input.
#[derive(Debug, Clone)]
struct PastRound {
    base_model: Digest,
    participants: BTreeSet<WorkerId>,
    commitments: BTreeMap<WorkerId, (Recorded, Commitment)>,
    reveals: BTreeMap<WorkerId, (Recorded, Digest)>,
}

/// How a round ended up (or that it has not yet).
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

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "open" => Some(Self::Open),
            "closed" => Some(Self::Closed),
            "failed" => Some(Self::Failed),
            _ => None,
        }
    }
}

/// The coordinator's state.
#[derive(Debug)]
pub struct Coordinator {
    settings: Settings,
    run_id: Digest,
    audit_master: [u8; 32],
    workers: BTreeMap<WorkerId, Worker>,
    keys: BTreeMap<PublicKey, WorkerId>,
    /// Admission tokens used, and by whom: a token admits one key.
    tokens: BTreeMap<TokenId, WorkerId>,
    open: Option<OpenRound>,
    /// Under a delayed outer update (`outer_delay` d), the rounds opened
    /// ahead of the open round, oldest first, at most d of them: they take
    /// commitments while the open round reveals and closes, and the oldest
    /// becomes the open round then.
    ahead: VecDeque<OpenRound>,
    /// The open round, once it is over and waiting for its aggregate,
    /// with the workers whose updates it aggregates.
    closing: Option<(RoundId, Vec<WorkerId>)>,
    past: BTreeMap<RoundId, PastRound>,
    /// The next round, opened ahead while the open round's last audits are
    /// replayed.
    speculation: Option<Speculation>,
    /// The open round whose close became a challenge of copies
    /// ([`Coordinator::handle_contested`]) in this process: its absentees
    /// were marked when it first closed, and are not marked twice.
    /// Deliberately not rebuilt by [`Coordinator::restore`]: the challenge
    /// itself is (its second [`Event::AuditDraw`]), but the marks are not
    /// recorded (a restarted coordinator starts everyone afresh), so a
    /// restored process has marked nobody and marks the absentees once, at
    /// its own close, as the process that died did.
    challenged: Option<RoundId>,
    /// The latest time the recorded events name (a commitment's arrival,
    /// a verdict, a close, ...): the coordinator was up then. A restore
    /// tells from it a reveal window that ended before the crash (kept
    /// closed) from one the outage cut short (opened again whole).
    recorded_until_ms: u64,
    next_round: RoundId,
    completed_rounds: u64,
    model: Digest,
    finished: bool,
    now_ms: u64,
    actions: VecDeque<Action>,
    /// The contribution each option of the run's contract menu requires
    /// (verified work units), once published.
    required: Option<Vec<u64>>,
    /// Each participant's chosen option.
    choices: BTreeMap<WorkerId, u32>,
    /// Each worker's verified work so far (its `work-accepted` units).
    delivered: BTreeMap<WorkerId, u64>,
    /// Escrow, vesting and bonds, folded from every event.
    collateral: Collateral,
}

impl Coordinator {
    /// A new run whose first model is `initial_model`; `audit_master` is the
    /// coordinator's secret audit key (see [`crate::audit`]).
    pub fn new(settings: Settings, run_id: Digest, initial_model: Digest, audit_master: [u8; 32]) -> Self {
        Self {
            settings,
            run_id,
            audit_master,
            workers: BTreeMap::new(),
            keys: BTreeMap::new(),
            tokens: BTreeMap::new(),
            open: None,
            ahead: VecDeque::new(),
            closing: None,
            past: BTreeMap::new(),
            speculation: None,
            challenged: None,
            recorded_until_ms: 0,
            next_round: 0,
            completed_rounds: 0,
            model: initial_model,
            finished: false,
            now_ms: 0,
            actions: VecDeque::new(),
            required: None,
            choices: BTreeMap::new(),
            delivered: BTreeMap::new(),
            collateral: Collateral::default(),
        }
    }

    /// Rebuilds the machine at time `now` from the events it recorded
    /// before (the ledger, in order). Every worker counts as just seen (the
    /// coordinator was away, not them). Whatever the restored round is due
    /// (ending its commit phase, closing) happens at once, and with no open
    /// round a new one opens if enough workers are known.
    pub fn restore<'a>(
        settings: Settings,
        run_id: Digest,
        initial_model: Digest,
        audit_master: [u8; 32],
        events: impl IntoIterator<Item = &'a Event>,
        now: u64,
    ) -> Self {
        let mut machine = Self::new(settings, run_id, initial_model, audit_master);
        machine.now_ms = now;
        for event in events {
            machine.apply(event);
        }
        for worker in machine.workers.values_mut() {
            worker.last_seen_ms = now;
        }
        // A run with a contract may go on past `rounds` (`run_complete`):
        // whether it has is in its ledger, or decided by `maybe_open` now.
        machine.finished |= machine.required.is_none() && machine.completed_rounds >= machine.settings.rounds;
        let ended = machine.reopen_reveal_window(now);
        machine.resume_replays();
        for round in ended {
            machine.end_ahead_reveal(round);
        }
        machine.settle();
        machine.maybe_open();
        machine
    }

    /// Workers cannot reach a coordinator that is down: a round restored in
    /// its reveal phase gives them a whole reveal window again from `now`,
    /// so that an outage never turns into reveals missed and audits left
    /// unanswered (slashed) for honest workers. Not recorded, like
    /// `last_seen_ms`: a restored machine is a function of the events and
    /// the time, and the verdicts the window leads to are recorded.
    ///
    /// A window that had ended before the crash (its deadline no later than
    /// the last time the events name, when the coordinator was up and its
    /// timer had the deadline) is not opened again: no outage cut it, and
    /// reopening it would let a restart change what counts (a round opened
    /// ahead would take as accepted a reveal it had refused as late, the
    /// open round one it would have closed without). It keeps its recorded
    /// deadline, and the rounds opened ahead among them are returned: the
    /// restore ends their reveal phase as their deadline does
    /// ([`Coordinator::end_ahead_reveal`]). The deadline may have passed
    /// without the timer having fired (a request at or after it recorded
    /// before the timeout input): then the unanswered audits were never
    /// judged, and marking the phase over alone would have left them
    /// pending, taking answers the dead machine was about to refuse as
    /// unanswered (found by the network simulator under `--outer-delay`).
    fn reopen_reveal_window(&mut self, now: u64) -> Vec<RoundId> {
        let open_id = self.open.as_ref().map(|open| open.id);
        let mut ended = Vec::new();
        for live in self.open.iter_mut().chain(self.ahead.iter_mut()) {
            if let RoundPhase::Revealing { deadline_ms } = &mut live.phase {
                if *deadline_ms <= self.recorded_until_ms {
                    if Some(live.id) != open_id {
                        ended.push(live.id);
                    }
                    continue;
                }
                *deadline_ms = (*deadline_ms).max(now + self.settings.reveal_ms);
            }
        }
        ended
    }

    /// Answered audits of the restored round that the driver replays itself
    /// and that have no verdict: the previous process was replaying them
    /// when it stopped, so the replays start again at once instead of at
    /// the reveal deadline.
    fn resume_replays(&mut self) {
        let rounds: Vec<RoundId> = self
            .open
            .iter()
            .chain(&self.ahead)
            // Delegated audits get their auditors when the commit phase ends.
            .filter(|live| {
                !(self.settings.delegate_audits && matches!(live.phase, RoundPhase::Committing { .. }))
            })
            .map(|live| live.id)
            .collect();
        for round in rounds {
            self.judge_answered(round);
        }
    }

    /// Records `event`: applies it to the machine's state and hands it to
    /// the driver to make durable. Every durable change of state goes
    /// through here, so a machine restored from the events is the machine
    /// that recorded them.
    fn record(&mut self, event: Event) {
        self.apply(&event);
        self.actions.push_back(Action::Record(event));
    }

    /// What `event` changes in the machine, live or replayed.
    fn apply(&mut self, event: &Event) {
        self.collateral.apply(event);
        if let Some(at) = self.recorded_at(event) {
            self.recorded_until_ms = self.recorded_until_ms.max(at);
        }
        match event {
            Event::RunStarted { .. }
            | Event::BondDeposited { .. }
            | Event::SlashDrawn { .. }
            | Event::Vested { .. }
            | Event::Slash { .. }
            | Event::UpdateRefused { .. }
            | Event::Reward(_)
            | Event::PayWithheld { .. }
            | Event::ModelRewarded(_)
            | Event::RoundScored { .. } => {}
            Event::WorkAccepted { worker, units, .. } => {
                *self.delivered.entry(*worker).or_default() += units;
            }
            Event::ContractPublished { menu } => {
                self.required =
                    Some(menu.options.iter().map(|option| option.required_contribution).collect());
            }
            Event::OptionChosen { worker, choice } => {
                self.choices.insert(*worker, choice.option);
            }
            Event::WorkerRegistered { worker, key, class, token, .. } => {
                self.keys.insert(*key, *worker);
                if let Some(token) = token {
                    self.tokens.insert(*token, *worker);
                }
                self.workers.insert(*worker, Worker::new(self.now_ms, class.clone()));
            }
            Event::RoundOpened {
                round,
                base_model,
                participants,
                opened_unix_ms,
                commit_deadline_unix_ms,
                secret_commitment,
            } => {
                self.next_round = round + 1;
                let proven = self.proven_among(participants);
                let opened = OpenRound {
                    id: *round,
                    base_model: *base_model,
                    opened_ms: *opened_unix_ms,
                    phase: RoundPhase::Committing { deadline_ms: *commit_deadline_unix_ms, extensions: 0 },
                    standings: participants.iter().map(|&worker| (worker, Standing::default())).collect(),
                    participants: participants.clone(),
                    secret_commitment: *secret_commitment,
                    secret: None,
                    auditors_slashed: BTreeSet::new(),
                    early_close_ms: None,
                    proven,
                    reveal_over: false,
                };
                if self.open.is_none() {
                    self.open = Some(opened);
                } else {
                    assert!(
                        self.ahead.len() < self.settings.outer_delay as usize,
                        "round {round} opens while {} rounds are live under an outer delay of {}",
                        self.ahead.len() + 1,
                        self.settings.outer_delay
                    );
                    self.ahead.push_back(opened);
                }
            }
            Event::DeadlineExtended { round, commit_deadline_unix_ms, extensions } => {
                self.open_mut(*round).phase =
                    RoundPhase::Committing { deadline_ms: *commit_deadline_unix_ms, extensions: *extensions };
            }
            Event::Commitment { round, worker, commitment, status, audit, nonce, received_unix_ms } => {
                self.record_nonce(*worker, *nonce, *received_unix_ms);
                // It works: its latest assignment got a commitment.
                let state = self.workers.get_mut(worker).expect("committing workers exist");
                state.proven = true;
                state.missed_streak = 0;
                if *status == Recorded::Accepted {
                    state.residual = commitment.residual_out.map(|residual| (*round, residual));
                }
                match find_live(&mut self.open, &mut self.ahead, *round) {
                    Some(open) => {
                        let standing = open.standings.entry(*worker).or_default();
                        if *status == Recorded::Accepted {
                            standing.commitment = Some(*commitment);
                            standing.audit = *audit;
                        } else {
                            standing.late_commitment = Some(*commitment);
                        }
                    }
                    None => {
                        if let Some(past) = self.past_mut(*round) {
                            past.commitments.insert(*worker, (*status, *commitment));
                        }
                    }
                }
            }
            Event::AuditDraw { round, secret, audits, auditors, reveal_deadline_unix_ms, .. } => {
                let open = self.open_mut(*round);
                open.phase = RoundPhase::Revealing { deadline_ms: *reveal_deadline_unix_ms };
                open.secret = Some(*secret);
                // Mostly drawn with the commitments already; the draw adds
                // the contested ones.
                for &(worker, segment) in audits {
                    let standing = open.standings.get_mut(&worker).expect("audited workers have standings");
                    standing.audit = Some(segment);
                    // A contest re-audits a delegated pass by the
                    // coordinator ([`Coordinator::handle_contested`]): the
                    // auditor's verdict is set aside until that replay's.
                    if let Some(auditor) = standing.judged_by.take() {
                        standing.verdict = None;
                        standing.auditor = None;
                        standing.judging = false;
                        standing.overruled = Some(auditor);
                    }
                }
                for &(audited, auditor) in auditors {
                    open.standings.get_mut(&audited).expect("audited workers have standings").auditor =
                        Some(auditor);
                }
            }
            Event::AuditAnswered { round, worker, nonce, received_unix_ms, .. } => {
                self.record_nonce(*worker, *nonce, *received_unix_ms);
                self.standing_mut(*round, *worker).answered = true;
            }
            Event::Reveal { round, worker, payload, status, nonce, received_unix_ms } => {
                self.record_nonce(*worker, *nonce, *received_unix_ms);
                match find_live(&mut self.open, &mut self.ahead, *round) {
                    Some(open) => {
                        let standing = open.standings.entry(*worker).or_default();
                        match status {
                            Recorded::Accepted => standing.revealed = Some(*payload),
                            Recorded::Mismatch => {
                                standing.mismatched = Some(*payload);
                                standing.rejected.get_or_insert_with(|| MISMATCH.into());
                            }
                            Recorded::Malformed => {
                                standing.mismatched = Some(*payload);
                                standing.malformed = true;
                                standing.rejected.get_or_insert_with(|| MALFORMED.into());
                            }
                            // After the reveal phase of a round opened ahead,
                            // which waits to close.
                            Recorded::Late => standing.late_reveal = Some(*payload),
                        }
                    }
                    None => {
                        if let Some(past) = self.past_mut(*round) {
                            past.reveals.insert(*worker, (*status, *payload));
                        }
                    }
                }
            }
            Event::Audit { round, worker, verdict, judged_by, sender, decided_unix_ms, .. } => {
                if let Some((sender, nonce)) = sender {
                    self.record_nonce(*sender, *nonce, *decided_unix_ms);
                }
                if let Some(state) = self.workers.get_mut(worker)
                    && !verdict.passed()
                    && state.residual.is_some_and(|(chained, _)| chained == *round)
                {
                    state.residual = None;
                }
                let standing = self.standing_mut(*round, *worker);
                standing.verdict = Some(verdict.clone());
                standing.judged_by = *judged_by;
                // Judged: no replay of it is running any more.
                standing.judging = false;
                if !verdict.passed() {
                    standing.rejected.get_or_insert_with(|| failure_reason(verdict));
                }
            }
            Event::AuditorSlashed { round, auditor, .. } => {
                self.open_mut(*round).auditors_slashed.insert(*auditor);
            }
            Event::RoundClosed { round, result_model, .. } => {
                self.end_open_round(*round);
                self.completed_rounds += 1;
                self.model = *result_model;
            }
            Event::RoundFailed { round, .. } => self.end_open_round(*round),
            Event::RunFinished { .. } => self.finished = true,
        }
    }

    /// When `event` was recorded, if it says: the time of the input that
    /// recorded it (a draw's, from the reveal deadline it set).
    fn recorded_at(&self, event: &Event) -> Option<u64> {
        match event {
            Event::WorkerRegistered { registered_unix_ms: at, .. }
            | Event::RoundOpened { opened_unix_ms: at, .. }
            | Event::Commitment { received_unix_ms: at, .. }
            | Event::AuditAnswered { received_unix_ms: at, .. }
            | Event::Reveal { received_unix_ms: at, .. }
            | Event::Audit { decided_unix_ms: at, .. }
            | Event::RoundClosed { closed_unix_ms: at, .. }
            | Event::RoundFailed { closed_unix_ms: at, .. } => Some(*at),
            Event::AuditDraw { reveal_deadline_unix_ms, .. } => {
                Some(reveal_deadline_unix_ms.saturating_sub(self.settings.reveal_ms))
            }
            _ => None,
        }
    }

    /// The live round `round` (the open round, or one opened ahead of it):
    /// events only ever name one.
    fn open_mut(&mut self, round: RoundId) -> &mut OpenRound {
        find_live(&mut self.open, &mut self.ahead, round).expect("events of a live round name it")
    }

    /// The live round `round`, if it is one.
    fn live_round(&self, round: RoundId) -> Option<&OpenRound> {
        self.open.iter().chain(&self.ahead).find(|live| live.id == round)
    }

    fn standing_mut(&mut self, round: RoundId, worker: WorkerId) -> &mut Standing {
        self.open_mut(round).standings.get_mut(&worker).expect("events name the round's participants")
    }

    /// A kept past round; `None` for one forgotten since the event was
    /// recorded (replaying an old ledger).
    fn past_mut(&mut self, round: RoundId) -> Option<&mut PastRound> {
        self.past.get_mut(&round)
    }

    /// The open round `round` closed or failed: it becomes a past round,
    /// kept to judge late input.
    fn end_open_round(&mut self, round: RoundId) {
        let open = self.open.take().filter(|open| open.id == round).expect("the open round ends");
        // Who delivered nothing is no longer proven (one that committed
        // late still is).
        for worker in missed(&open) {
            let late = open.standings.get(&worker).is_some_and(|standing| standing.late_commitment.is_some());
            if !late {
                self.workers.get_mut(&worker).expect("participants are workers").proven = false;
            }
        }
        self.remember(round, past_round(&open));
        self.closing = None;
        // The oldest round opened ahead of it, if any, is the open round
        // now. It opened a round ago or more: it waits only for the
        // participants still proven (one that just missed a round gets the
        // unproven's grace).
        self.open = self.ahead.pop_front();
        if let Some(promoted) = self.open.as_mut() {
            let workers = &self.workers;
            promoted.proven.retain(|worker| workers.get(worker).is_some_and(|state| state.proven));
        }
    }

    /// Keeps closed round `id` to judge late input, forgetting rounds older
    /// than [`PAST_ROUNDS_KEPT`].
    fn remember(&mut self, id: RoundId, round: PastRound) {
        self.past.insert(id, round);
        while let Some((&oldest, _)) = self.past.first_key_value() {
            if oldest + PAST_ROUNDS_KEPT > id {
                break;
            }
            self.past.remove(&oldest);
        }
    }

    // (A) getters

    pub fn phase(&self) -> Phase {
        match (&self.open, &self.closing) {
            _ if self.finished => Phase::Finished,
            (Some(OpenRound { phase: RoundPhase::Committing { .. }, .. }), _) => Phase::Committing,
            (Some(_), _) | (None, Some(_)) => Phase::Revealing,
            (None, None) => Phase::Waiting,
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

    /// Whether the run offers a contract (its menu is published).
    pub fn offers_contract(&self) -> bool {
        self.required.is_some()
    }

    /// Whether the run has done its work: `rounds` rounds closed and, in a
    /// run with a contract, every participant that chose an option and is
    /// still live (seen within `worker_timeout_ms`) has delivered the
    /// contribution its option requires, or `contract_extra_rounds` more
    /// rounds closed. A participant that left (timed out) had its chance:
    /// the run does not wait for it, and it is rewarded on what it
    /// delivered (`docs/CONTRACT.md`).
    pub fn run_complete(&self) -> bool {
        let rounds = self.settings.rounds;
        self.completed_rounds >= rounds
            && (self.completed_rounds >= rounds.saturating_add(self.settings.contract_extra_rounds)
                || self.short_of_contribution().next().is_none())
    }

    /// The live participants that have not delivered their option's
    /// contribution yet and may still be given work (one whose bond is
    /// exhausted never will be: the run does not wait for it).
    fn short_of_contribution(&self) -> impl Iterator<Item = (WorkerId, &Worker)> + '_ {
        let required = self.required.as_deref().unwrap_or(&[]);
        self.choices.iter().filter_map(move |(&worker, &option)| {
            let state = self.workers.get(&worker)?;
            let owed = required.get(option as usize).copied().unwrap_or(0);
            let delivered = self.delivered.get(&worker).copied().unwrap_or(0);
            (delivered < owed && self.live(state) && self.bond_exhausted(worker).is_none())
                .then_some((worker, state))
        })
    }

    /// The option `worker` chose, if any.
    pub fn choice(&self, worker: WorkerId) -> Option<u32> {
        self.choices.get(&worker).copied()
    }

    /// Whether a registration by `key` may go ahead, `choosing` an option
    /// or not: in a run that offers a contract a worker's reward depends on
    /// its option, so a key must choose one when it registers, unless its
    /// worker chose already (registering again only says it is alive).
    /// Refused before anything is recorded.
    pub fn check_choice_at_registration(&self, key: &PublicKey, choosing: bool) -> Result<(), Refusal> {
        let chose = self.keys.get(key).is_some_and(|worker| self.choices.contains_key(worker));
        if self.offers_contract() && !choosing && !chose {
            return Err(Refusal::new(
                ErrorCode::BadRequest,
                "this run offers a contract: choose an option of its menu (GET /v1/contract) when you register \
                 (crowdtrain worker --cost C, or --option K)",
            ));
        }
        Ok(())
    }

    /// Records the option a registered worker (`key`) chose, signed with
    /// its key. Choosing the same option again changes nothing; another
    /// option replaces the first only until the run's first round opens.
    pub fn choose(&mut self, now: u64, key: PublicKey, choice: ContractChoice) -> Result<(), Refusal> {
        self.advance(now);
        let worker = *self
            .keys
            .get(&key)
            .ok_or_else(|| Refusal::new(ErrorCode::UnknownWorker, "register before choosing an option"))?;
        let Some(options) = self.required.as_ref().map(|required| required.len() as u32) else {
            return Err(Refusal::new(ErrorCode::BadRequest, "this run offers no contract to choose from"));
        };
        if choice.option >= options {
            return Err(Refusal::new(
                ErrorCode::BadRequest,
                format!("option {} does not exist: the menu has options 0 to {}", choice.option, options - 1),
            ));
        }
        if choice.verify(&key, self.run_id).is_err() {
            return Err(Refusal::new(
                ErrorCode::BadSignature,
                "the choice is not signed by this worker's key",
            ));
        }
        match self.choices.get(&worker) {
            Some(&chosen) if chosen == choice.option => return Ok(()),
            Some(&chosen) if self.next_round > 0 => {
                return Err(Refusal::new(
                    ErrorCode::Late,
                    format!(
                        "{worker} chose option {chosen}; a choice is final once the run's first round has opened"
                    ),
                ));
            }
            _ => {}
        }
        self.record(Event::OptionChosen { worker, choice });
        Ok(())
    }

    pub fn worker_count(&self) -> usize {
        self.workers.len()
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Whether `worker` would be a participant if a round opened now.
    pub fn is_active(&self, worker: WorkerId) -> bool {
        self.workers.get(&worker).is_some_and(|state| self.active(state))
    }

    /// When the machine last heard from `worker` (its time, in ms), if it
    /// is registered.
    pub fn last_seen_ms(&self, worker: WorkerId) -> Option<u64> {
        self.workers.get(&worker).map(|state| state.last_seen_ms)
    }

    /// The assignment of `worker` in the open round, if it has one.
    pub fn assignment(&self, worker: WorkerId) -> Option<Assignment> {
        assignment(&self.settings, self.run_id, self.open.as_ref()?, worker)
    }

    /// The assignment of `worker` in live round `round` (the open round or,
    /// under a delayed outer update, one opened ahead of it), if it has
    /// one.
    pub fn assignment_in(&self, round: RoundId, worker: WorkerId) -> Option<Assignment> {
        assignment(&self.settings, self.run_id, self.live_round(round)?, worker)
    }

    /// The round open provisionally while the open round's last audits are
    /// replayed, if any.
    pub fn provisional_round(&self) -> Option<&OpenRound> {
        self.speculation.as_ref()?.next.as_ref()
    }

    /// The round that opened last (provisionally or not) while nobody has
    /// committed to it yet, as an [`Opened`] that shows it to workers
    /// without the machine: what a driver serves while it makes the
    /// opening durable.
    pub fn opened(&self) -> Option<Opened> {
        let (round, provisional) = match (self.provisional_round(), &self.open) {
            (Some(next), _) => (next, true),
            (None, Some(open)) if matches!(open.phase, RoundPhase::Committing { .. }) => (open, false),
            _ => return None,
        };
        let untouched = round.standings.values().all(|standing| *standing == Standing::default());
        untouched.then(|| Opened {
            run_id: self.run_id,
            settings: self.settings.clone(),
            completed_rounds: self.completed_rounds,
            round: round.clone(),
            provisional,
        })
    }

    /// The round as `worker` sees it: the provisional round, once there is
    /// one, since all the open round still awaits is the driver's own
    /// replays (no delegated audit task is pending then).
    pub fn view(&self, worker: Option<WorkerId>) -> RoundView {
        if self.provisional_round().is_some() {
            return self.opened().expect("nobody commits to a provisional round").view(worker);
        }
        let open = self.open.as_ref();
        let standing = open.zip(worker).and_then(|(round, worker)| round.standings.get(&worker));
        let revealing = matches!(open.map(|round| round.phase), Some(RoundPhase::Revealing { .. }));
        RoundView {
            run_id: self.run_id,
            phase: self.phase(),
            round: open.map(|round| round.id),
            completed_rounds: self.completed_rounds,
            model: self.model,
            deadline_unix_ms: open.map(OpenRound::deadline_ms),
            secret_commitment: open.map(|round| round.secret_commitment),
            secret: open.and_then(|round| round.secret).map(crate::wire::Secret),
            assignment: worker.and_then(|worker| self.assignment(worker)),
            committed: standing.is_some_and(|standing| standing.commitment.is_some()),
            revealed: standing.is_some_and(|standing| {
                standing.revealed.is_some() || standing.rejected.is_some() || standing.late_reveal.is_some()
            }),
            audit: standing
                .and_then(|standing| standing.audit)
                .filter(|_| revealing || !self.settings.delegate_audits),
            audit_answered: standing.is_some_and(|standing| standing.answered || standing.verdict.is_some()),
            audit_task: worker.and_then(|worker| self.audit_task(worker)),
            provisional: false,
            ahead: self.ahead_view(worker, 0),
        }
    }

    /// The delegated audit `auditor` should replay now, if any: the first
    /// (by audited worker) whose answer is in and which is not yet judged.
    pub fn audit_task(&self, auditor: WorkerId) -> Option<crate::wire::AuditTaskRef> {
        audit_task_in(self.open.as_ref()?, auditor)
    }

    /// The audited segment and commitment of `worker` in the open round, if
    /// it is drawn, its answer not yet in and not judged: what the driver
    /// needs to check an answer.
    pub fn pending_audit(&self, worker: WorkerId, round: RoundId) -> Option<(u32, Commitment)> {
        let open = self.live_round(round)?;
        // Delegated audits are answered once their auditor is named.
        if self.settings.delegate_audits && matches!(open.phase, RoundPhase::Committing { .. }) {
            return None;
        }
        let standing = open.standings.get(&worker)?;
        match (standing.audit, standing.commitment, &standing.verdict, standing.answered) {
            (Some(segment), Some(commitment), None, false) => Some((segment, commitment)),
            _ => None,
        }
    }

    /// The segment and commitment of `audited`'s answered, unjudged audit
    /// in `round`, if `auditor` is the one who must replay it.
    pub fn delegated_audit(
        &self,
        auditor: WorkerId,
        round: RoundId,
        audited: WorkerId,
    ) -> Option<(u32, Commitment)> {
        let open = self.live_round(round)?;
        let standing = open.standings.get(&audited)?;
        let waiting = standing.auditor == Some(auditor) && standing.answered && standing.verdict.is_none();
        waiting.then(|| (standing.audit.expect("drawn"), standing.commitment.expect("committed")))
    }

    /// The segment of `audited`'s answered, unjudged audit in `round`:
    /// what the driver replays when asked to ([`Action::JudgeAudit`]).
    pub fn answered_audit(&self, round: RoundId, audited: WorkerId) -> Option<(u32, Commitment)> {
        let open = self.live_round(round)?;
        let standing = open.standings.get(&audited)?;
        (standing.answered && standing.verdict.is_none())
            .then(|| (standing.audit.expect("drawn"), standing.commitment.expect("committed")))
    }

    // (B) inputs

    /// Registers `key` (idempotent: a known key gets its id back), for a
    /// driver that checked the registration's freshness itself (tests,
    /// simulations). A new worker joins at the next round.
    pub fn register(&mut self, now: u64, key: PublicKey, class: &str) -> Result<(WorkerId, bool), Refusal> {
        self.register_admitted(now, key, class, None, None)
    }

    /// Registers `key` with a signed request's `nonce` (which must be fresh,
    /// and, for a known key, above its last read: registering again is a
    /// read that cannot be replayed) and the admission `token` the driver
    /// checked, if the run admits by token: a token admits one key.
    pub fn register_admitted(
        &mut self,
        now: u64,
        key: PublicKey,
        class: &str,
        nonce: Option<u64>,
        token: Option<TokenId>,
    ) -> Result<(WorkerId, bool), Refusal> {
        self.advance(now);
        if let Some(nonce) = nonce {
            check_read_window(now, nonce)?;
        }
        if class.is_empty() || class.len() > 64 || !class.bytes().all(|byte| byte.is_ascii_graphic()) {
            return Err(Refusal::new(
                ErrorCode::BadRequest,
                "the determinism class must be 1 to 64 printable ASCII characters",
            ));
        }
        if let Some(&worker) = self.keys.get(&key) {
            if let Some(nonce) = nonce {
                self.check_read_nonce(worker, nonce)?;
            }
            let registered = &self.workers[&worker].class;
            if registered != class {
                return Err(Refusal::new(
                    ErrorCode::BadRequest,
                    format!(
                        "{worker} registered with determinism class {registered}, not {class}; a worker on \
                         another kind of CPU needs a key of its own"
                    ),
                ));
            }
            if let Some(nonce) = nonce {
                self.workers.get_mut(&worker).expect("known").reads.take(nonce);
            }
            self.seen(now, worker);
            return Ok((worker, false));
        }
        if let Some(used_by) = token.and_then(|token| self.tokens.get(&token)) {
            return Err(Refusal::new(
                ErrorCode::NotAdmitted,
                format!("this admission token was used by {used_by} already; each token admits one key"),
            ));
        }
        if self.workers.len() >= self.settings.max_workers as usize {
            return Err(Refusal::new(
                ErrorCode::Full,
                format!("the run already has its maximum of {} workers", self.settings.max_workers),
            ));
        }
        let live = self.workers.values().filter(|state| self.live(state)).count();
        if live >= self.settings.max_participants as usize {
            return Err(Refusal::new(
                ErrorCode::Full,
                format!(
                    "the run has room for {} participants (its training data in whole batches) and that many \
                     workers are live; try again later: a place frees up when a worker leaves",
                    self.settings.max_participants
                ),
            ));
        }
        let worker = WorkerId(self.workers.len() as u64);
        self.record(Event::WorkerRegistered {
            worker,
            key,
            class: class.to_owned(),
            registered_unix_ms: now,
            token,
        });
        if self.settings.bond > 0 {
            self.record(Event::BondDeposited { worker, amount: self.settings.bond });
        }
        if let Some(nonce) = nonce {
            self.workers.get_mut(&worker).expect("just registered").reads.take(nonce);
        }
        self.maybe_open();
        Ok((worker, true))
    }

    /// A signed read (`GET /v1/round`, an audit task) from `key` with
    /// `nonce`: the nonce must be one no read from this key was taken with
    /// (see [`ReadNonces`]: reads in flight together are taken in any
    /// order), so a captured read cannot be replayed (and refresh its
    /// worker's liveness). Marks the worker as seen.
    pub fn read(&mut self, now: u64, key: &PublicKey, nonce: u64) -> Result<WorkerId, Refusal> {
        self.advance(now);
        let worker = self.known(key)?;
        check_read_window(now, nonce)?;
        self.check_read_nonce(worker, nonce)?;
        if let Some(refusal) = self.bond_exhausted(worker) {
            return Err(refusal);
        }
        self.workers.get_mut(&worker).expect("known").reads.take(nonce);
        self.seen(now, worker);
        Ok(worker)
    }

    fn check_read_nonce(&self, worker: WorkerId, nonce: u64) -> Result<(), Refusal> {
        self.workers[&worker].reads.check(nonce).map_err(|stale| {
            let message = match stale {
                Stale::Taken => format!("replayed read: a read with nonce {nonce} was taken already"),
                Stale::Forgotten(least) => format!(
                    "replayed read: nonce {nonce} is not above {least}, the oldest of the last \
                     {READS_REMEMBERED} reads' nonces"
                ),
            };
            Refusal::new(ErrorCode::Replayed, message)
        })
    }

    fn known(&self, key: &PublicKey) -> Result<WorkerId, Refusal> {
        self.keys.get(key).copied().ok_or_else(|| {
            Refusal::new(
                ErrorCode::UnknownWorker,
                format!("no worker is registered with key {key}; register first"),
            )
        })
    }

    /// Checks that a request comes from a registered worker with a fresh
    /// nonce. `ordered` requests (every state-changing one whose effect
    /// could depend on its order: commitments, reveals, reports) must also
    /// carry a nonce above the last one accepted from this worker, so a
    /// captured one cannot be replayed. An audit answer is not ordered: it
    /// is taken at most once, for an audit still pending, so a replay
    /// changes nothing, and a worker sends it beside its other posts (a
    /// large upload the small ones must not wait behind), where a post
    /// signed after it may well arrive first. Changes nothing.
    pub fn authenticate(
        &self,
        now: u64,
        key: &PublicKey,
        nonce: u64,
        ordered: bool,
    ) -> Result<WorkerId, Refusal> {
        let worker = self.known(key)?;
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
        if ordered && nonce <= last {
            return Err(Refusal::new(
                ErrorCode::Replayed,
                format!("replayed request: nonce {nonce} is not above the last accepted nonce {last}"),
            ));
        }
        Ok(worker)
    }

    /// Notes that `worker` is alive. (A worker sitting out stays out: being
    /// seen is not working.)
    pub fn seen(&mut self, now: u64, worker: WorkerId) {
        self.advance(now);
        if let Some(state) = self.workers.get_mut(&worker) {
            state.last_seen_ms = state.last_seen_ms.max(now);
        }
        self.maybe_open();
    }

    /// A commitment for `round` on `base_model` from an authenticated
    /// worker, for the shard it says it `trained`, if it says (see
    /// [`Shard`]: one trained for another shard of the round, opened again
    /// on the same model with other participants, is refused as stale).
    #[allow(clippy::too_many_arguments)]
    pub fn commit(
        &mut self,
        now: u64,
        worker: WorkerId,
        nonce: u64,
        round: RoundId,
        base_model: Digest,
        trained: Option<Shard>,
        commitment: Commitment,
    ) -> Result<Outcome, Refusal> {
        self.advance(now);
        if commitment.segments != self.settings.segments {
            return Err(Refusal::new(
                ErrorCode::BadRequest,
                format!(
                    "commitments cover {} segments in this run, not {}",
                    self.settings.segments, commitment.segments
                ),
            ));
        }
        check_residual_shape(&self.settings, &commitment)?;
        if let Some(refusal) = self.bond_exhausted(worker) {
            return Err(refusal);
        }
        if let Some(next) = self.provisional_round().filter(|next| next.id == round) {
            check_participant(&next.participants, next.base_model, worker, round, base_model)?;
            check_shard(&next.participants, worker, round, trained)?;
            let open = self.open.as_ref().map_or(0, |open| open.id);
            return Err(Refusal::new(
                ErrorCode::TooEarly,
                format!(
                    "round {round} is open ahead of round {open}'s last audit verdicts and takes commitments \
                     once they are in; commit again shortly"
                ),
            ));
        }
        if let Some(open) = find_live(&mut self.open, &mut self.ahead, round) {
            check_participant(&open.participants, open.base_model, worker, round, base_model)?;
            check_shard(&open.participants, worker, round, trained)?;
            let committing = matches!(open.phase, RoundPhase::Committing { .. });
            let standing = open.standings.entry(worker).or_default();
            if let Some(existing) = standing.commitment {
                return same_or_duplicate(
                    existing == commitment,
                    Recorded::Accepted,
                    worker,
                    round,
                    "commitment",
                );
            }
            if let Some(existing) = standing.late_commitment {
                return same_or_duplicate(
                    existing == commitment,
                    Recorded::Late,
                    worker,
                    round,
                    "commitment",
                );
            }
            if committing {
                let chained =
                    self.workers.get(&worker).and_then(|state| state.residual).map(|(_, residual)| residual);
                check_residual_chain(&commitment, chained, worker)?;
            }
            let (status, audit) = if committing {
                // Drawn now, so that the worker can answer, and the driver
                // replay, while the others are still training.
                let probability = self.settings.audit_probability;
                let audit = draw_audit(
                    probability,
                    &self.settings,
                    &self.audit_master,
                    &self.run_id,
                    round,
                    worker,
                    &commitment,
                );
                (Recorded::Accepted, audit)
            } else {
                (Recorded::Late, None)
            };
            self.record(Event::Commitment {
                round,
                worker,
                commitment,
                status,
                audit,
                nonce,
                received_unix_ms: now,
            });
            self.settle();
            return Ok(Outcome::Recorded(status));
        }
        let past = self.past_round(round)?;
        check_participant_past(past, worker, round, base_model)?;
        let participants: Vec<WorkerId> = past.participants.iter().copied().collect();
        check_shard(&participants, worker, round, trained)?;
        if let Some(&(status, existing)) = past.commitments.get(&worker) {
            return same_or_duplicate(existing == commitment, status, worker, round, "commitment");
        }
        self.record(Event::Commitment {
            round,
            worker,
            commitment,
            status: Recorded::Late,
            audit: None,
            nonce,
            received_unix_ms: now,
        });
        Ok(Outcome::Recorded(Recorded::Late))
    }

    /// A reveal: the digest of the pseudo-gradient a worker uploads, which
    /// must be the one it committed to. A mismatch is recorded, rejects the
    /// submission and slashes the stake. It is taken as soon as the
    /// worker's commitment is in, in the commit phase too (an early
    /// reveal); the reveal phase then awaits only the others.
    ///
    /// `malformed` is the driver's refusal of a payload that is not a valid
    /// update. If that payload is the committed one, the worker signed up
    /// to garbage: it is recorded as [`Recorded::Malformed`] and the
    /// submission rejected (without a slash: a diverged honest run can
    /// produce it too), so the round need not wait for a reveal that cannot
    /// come. Any other malformed payload is refused with `malformed` and
    /// changes nothing.
    #[allow(clippy::too_many_arguments)]
    pub fn reveal(
        &mut self,
        now: u64,
        worker: WorkerId,
        nonce: u64,
        round: RoundId,
        base_model: Digest,
        payload: Digest,
        malformed: Option<Refusal>,
    ) -> Result<Outcome, Refusal> {
        self.advance(now);
        if let Some(refusal) = malformed {
            return self.reveal_malformed(now, worker, nonce, round, base_model, payload, refusal);
        }
        if let Some(open) = find_live(&mut self.open, &mut self.ahead, round) {
            check_participant(&open.participants, open.base_model, worker, round, base_model)?;
            // Committed is all it takes, in the commit phase too: an early
            // reveal is kept by the coordinator alone (no worker sees an
            // update before its round closes), so it shows nobody anything
            // a commitment did not bind already, and the reveal phase of a
            // round whose workers all revealed early ends as it begins,
            // without a round trip and an upload on every home link.
            let Some(standing) =
                open.standings.get_mut(&worker).filter(|standing| standing.commitment.is_some())
            else {
                return Err(Refusal::new(
                    ErrorCode::NotCommitted,
                    format!(
                        "{worker} has no commitment in round {round}; only committed updates can be revealed"
                    ),
                ));
            };
            let commitment = standing.commitment.expect("committed");
            if let Some(existing) = standing.revealed {
                return same_or_duplicate(existing == payload, Recorded::Accepted, worker, round, "reveal");
            }
            if let Some(existing) = standing.mismatched {
                let status = if standing.malformed { Recorded::Malformed } else { Recorded::Mismatch };
                return same_or_duplicate(existing == payload, status, worker, round, "reveal");
            }
            if let Some(existing) = standing.late_reveal {
                return same_or_duplicate(existing == payload, Recorded::Late, worker, round, "reveal");
            }
            if open.reveal_over {
                // A round opened ahead whose reveal deadline passed: it
                // waits to close, with what was in by then.
                let status = Recorded::Late;
                self.record(Event::Reveal { round, worker, payload, status, nonce, received_unix_ms: now });
                return Ok(Outcome::Recorded(status));
            }
            let already_rejected = standing.rejected.is_some();
            let status = if payload == commitment.payload { Recorded::Accepted } else { Recorded::Mismatch };
            self.record(Event::Reveal { round, worker, payload, status, nonce, received_unix_ms: now });
            // One slash per worker per round, for the first proven fault.
            if status == Recorded::Mismatch && !already_rejected {
                self.slash(round, worker, MISMATCH);
            }
            self.settle();
            return Ok(Outcome::Recorded(status));
        }
        let past = self.past_round(round)?;
        check_participant_past(past, worker, round, base_model)?;
        if let Some(&(status, existing)) = past.reveals.get(&worker) {
            return same_or_duplicate(existing == payload, status, worker, round, "reveal");
        }
        self.record(Event::Reveal {
            round,
            worker,
            payload,
            status: Recorded::Late,
            nonce,
            received_unix_ms: now,
        });
        Ok(Outcome::Recorded(Recorded::Late))
    }

    #[allow(clippy::too_many_arguments)]
    fn reveal_malformed(
        &mut self,
        now: u64,
        worker: WorkerId,
        nonce: u64,
        round: RoundId,
        base_model: Digest,
        payload: Digest,
        refusal: Refusal,
    ) -> Result<Outcome, Refusal> {
        let Some(open) = find_live(&mut self.open, &mut self.ahead, round) else { return Err(refusal) };
        check_participant(&open.participants, open.base_model, worker, round, base_model)?;
        // In the commit phase too, as any reveal (see `reveal`).
        let revealing = !open.reveal_over;
        let Some(standing) = open.standings.get_mut(&worker) else { return Err(refusal) };
        let committed = standing.commitment.is_some_and(|commitment| commitment.payload == payload);
        if !revealing || !committed {
            return Err(refusal);
        }
        if standing.malformed && standing.mismatched == Some(payload) {
            return Ok(Outcome::AlreadyRecorded(Recorded::Malformed));
        }
        if standing.revealed.is_some() || standing.mismatched.is_some() {
            return Err(Refusal::new(
                ErrorCode::Duplicate,
                format!("{worker} already has a different reveal for round {round}"),
            ));
        }
        self.record(Event::Reveal {
            round,
            worker,
            payload,
            status: Recorded::Malformed,
            nonce,
            received_unix_ms: now,
        });
        self.settle();
        Ok(Outcome::Recorded(Recorded::Malformed))
    }

    /// `worker`'s answer to its audit in `round` arrived with its nonce,
    /// and its proofs checked (the driver keeps its bytes). Returns the
    /// worker that must replay it when audits are delegated, or `None`: the
    /// driver replays it now and reports with [`audit_result`](Self::audit_result).
    pub fn audit_answered(
        &mut self,
        now: u64,
        worker: WorkerId,
        nonce: u64,
        round: RoundId,
        answer: Digest,
    ) -> Result<Option<WorkerId>, Refusal> {
        self.advance(now);
        if self.pending_audit(worker, round).is_none() {
            return Err(Refusal::new(
                ErrorCode::NotAudited,
                format!("{worker} has no pending audit in round {round}"),
            ));
        }
        self.record(Event::AuditAnswered { round, worker, answer, nonce, received_unix_ms: now });
        Ok(self.standing_mut(round, worker).auditor)
    }

    /// The verdict on `worker`'s audit in `round`: replayed by `judged_by`
    /// (`None`: the driver itself), delivered by the request of `sender`
    /// (its nonce is recorded), if any. A failure rejects the submission
    /// and slashes the stake.
    pub fn audit_result(
        &mut self,
        now: u64,
        round: RoundId,
        worker: WorkerId,
        verdict: Verdict,
        judged_by: Option<WorkerId>,
        sender: Option<(WorkerId, u64)>,
    ) -> Result<(), Refusal> {
        self.advance(now);
        let segment = self
            .live_round(round)
            .and_then(|open| open.standings.get(&worker))
            .filter(|standing| standing.commitment.is_some() && standing.verdict.is_none())
            .and_then(|standing| standing.audit)
            .ok_or_else(|| {
                Refusal::new(ErrorCode::NotAudited, format!("{worker} has no pending audit in round {round}"))
            })?;
        self.judge(round, worker, segment, verdict, judged_by, sender);
        self.settle();
        Ok(())
    }

    /// `worker`'s answer to its audit in `round`, sent with `nonce`, fails
    /// [`judge::check_answer`](crate::judge::check_answer) for `reason`:
    /// proofs that do not hold need no replay, so the audit fails now (the
    /// submission is rejected and the stake slashed). Refused, changing
    /// nothing, if the worker has no audit waiting for an answer.
    pub fn answer_refuted(
        &mut self,
        now: u64,
        worker: WorkerId,
        nonce: u64,
        round: RoundId,
        reason: String,
    ) -> Result<(), Refusal> {
        if self.pending_audit(worker, round).is_none() {
            return Err(Refusal::new(
                ErrorCode::NotAudited,
                format!("{worker} has no pending audit in round {round}"),
            ));
        }
        self.audit_result(now, round, worker, Verdict::Failed(reason), None, Some((worker, nonce)))
    }

    /// `auditor`'s report on `audited`'s delegated audit in `round`, sent
    /// with `nonce`, as the driver found it ([`ReportCheck`]): a report
    /// that agrees decides the audit, with the auditor as its judge; one
    /// that does not is decided by the coordinator's own replay, and an
    /// auditor whose report that replay contradicts is slashed (once per
    /// round, before the verdict is recorded). Refused, changing nothing,
    /// unless `auditor` is the one the audit waits for.
    ///
    /// [`ReportCheck`]: crate::judge::ReportCheck
    pub fn audit_reported(
        &mut self,
        now: u64,
        round: RoundId,
        auditor: WorkerId,
        nonce: u64,
        audited: WorkerId,
        check: crate::judge::ReportCheck,
    ) -> Result<(), Refusal> {
        let Some((segment, _)) = self.delegated_audit(auditor, round, audited) else {
            return Err(Refusal::new(
                ErrorCode::NotAudited,
                format!("{auditor} has no audit of {audited} to report in round {round}"),
            ));
        };
        let sender = Some((auditor, nonce));
        match check {
            crate::judge::ReportCheck::Agrees => {
                self.audit_result(now, round, audited, Verdict::Passed, Some(auditor), sender)
            }
            crate::judge::ReportCheck::Rechecked { verdict, contradicts } => {
                if contradicts {
                    let reason = crate::judge::auditor_wrong_reason(audited, segment, round);
                    self.auditor_wrong(now, round, auditor, audited, &reason);
                }
                self.audit_result(now, round, audited, verdict, None, sender)
            }
        }
    }

    /// The coordinator's own replay contradicted what `auditor` reported
    /// for `audited`'s segment: it is slashed (once per round). Drivers
    /// report through [`audit_reported`](Self::audit_reported), which
    /// decides when.
    pub fn auditor_wrong(
        &mut self,
        now: u64,
        round: RoundId,
        auditor: WorkerId,
        audited: WorkerId,
        reason: &str,
    ) {
        self.advance(now);
        let Some(open) = self.live_round(round) else { return };
        if !open.auditors_slashed.contains(&auditor) {
            self.record(Event::AuditorSlashed {
                round,
                auditor,
                audited,
                amount: self.settings.stake,
                reason: reason.to_owned(),
            });
            self.record(self.collateral.draw(round, auditor, self.settings.stake));
        }
    }

    /// Time has reached `now`: deadlines may have passed, in the rounds
    /// opened ahead (first) and in the open round.
    pub fn handle_timeout(&mut self, now: u64) {
        self.advance(now);
        self.ahead_timeouts(now);
        let Some(open) = self.open.as_mut() else {
            self.maybe_open();
            return;
        };
        if now < open.next_timeout_ms() {
            return;
        }
        match open.phase {
            RoundPhase::Committing { extensions, deadline_ms } => {
                let committed =
                    open.standings.values().filter(|standing| standing.commitment.is_some()).count();
                if now < deadline_ms {
                    // The early end: the proven participants and a quorum
                    // are in; the unproven ones had their grace.
                    if committed >= self.settings.quorum as usize {
                        let round = open.id;
                        self.begin_reveal(round);
                        self.settle();
                    }
                    return;
                }
                if committed >= self.settings.quorum as usize {
                    let round = open.id;
                    self.begin_reveal(round);
                    // Revealed early, all of them: it closes now.
                    self.settle();
                } else if extensions < self.settings.max_extensions {
                    let round = open.id;
                    self.record(Event::DeadlineExtended {
                        round,
                        commit_deadline_unix_ms: now + self.settings.extension_ms,
                        extensions: extensions + 1,
                    });
                } else {
                    self.fail_open_round("too few commitments for the quorum");
                }
            }
            RoundPhase::Revealing { .. } => {
                let round = open.id;
                let due = open.due_audits();
                // Answered audits whose auditor did not report: the driver
                // replays them itself, and the round closes when it has.
                let mut judging = false;
                for &(worker, segment, answered) in &due {
                    let standing = open.standings.get_mut(&worker).expect("due audits have standings");
                    if answered {
                        judging = true;
                        if !standing.judging {
                            standing.judging = true;
                            self.actions.push_back(Action::JudgeAudit { round, worker, segment });
                        }
                    }
                }
                for (worker, segment, answered) in due {
                    if !answered {
                        self.judge(round, worker, segment, Verdict::Unanswered, None, None);
                    }
                }
                if !judging {
                    self.close_open_round();
                }
            }
        }
    }

    /// The deadlines of the rounds opened ahead of the open round (under a
    /// delayed outer update), each round on its own: a commit phase ends at
    /// its early end or deadline if a quorum committed (without one the
    /// round takes commitments until a quorum is in or it is the open
    /// round, which extends or fails it); a reveal phase ends at its
    /// deadline, judging unanswered audits as the open round's does and
    /// asking the driver to replay answered ones nobody reported on. Only
    /// the close waits for the open round's.
    fn ahead_timeouts(&mut self, now: u64) {
        let due: Vec<RoundId> = self
            .ahead
            .iter()
            .filter(|ahead| {
                ahead.ahead_timeout_ms(now, self.settings.quorum as usize).is_some_and(|at| at <= now)
            })
            .map(|ahead| ahead.id)
            .collect();
        for round in due {
            let quorum = self.settings.quorum as usize;
            let ahead = find_live(&mut self.open, &mut self.ahead, round).expect("a live round");
            match ahead.phase {
                RoundPhase::Committing { .. } => {
                    if ahead.committed() >= quorum {
                        self.begin_reveal(round);
                    }
                }
                RoundPhase::Revealing { .. } => self.end_ahead_reveal(round),
            }
        }
    }

    /// The reveal deadline of `round`, opened ahead of the open round, has
    /// passed: it takes no more reveals ([`OpenRound::reveal_over`]), its
    /// unanswered audits fail, and the driver replays its answered ones
    /// nobody reported on (once each). At the timeout, or on a restore of a
    /// round whose deadline had passed by the last recorded input.
    fn end_ahead_reveal(&mut self, round: RoundId) {
        let ahead = find_live(&mut self.open, &mut self.ahead, round).expect("a live round");
        ahead.reveal_over = true;
        for (worker, segment, answered) in ahead.due_audits() {
            if !answered {
                self.judge(round, worker, segment, Verdict::Unanswered, None, None);
                continue;
            }
            let standing = self.standing_mut(round, worker);
            if !standing.judging {
                standing.judging = true;
                self.actions.push_back(Action::JudgeAudit { round, worker, segment });
            }
        }
    }

    /// The driver checked and aggregated the updates of `round`. The ones
    /// its checks refused are recorded and earn nothing; the round counts if
    /// the rest still make a quorum, and fails otherwise.
    pub fn handle_aggregated(&mut self, now: u64, round: RoundId, aggregated: Aggregated) {
        self.advance(now);
        let (closing, accepted) = self.closing.take().expect("handle_aggregated answers a Close");
        assert_eq!(closing, round, "handle_aggregated answers the Close just emitted");
        let refused: BTreeMap<WorkerId, String> = aggregated.refused.into_iter().collect();
        for (worker, reason) in &refused {
            assert!(accepted.contains(worker), "only accepted updates are checked");
            self.record(Event::UpdateRefused { round, worker: *worker, reason: reason.clone() });
        }
        let credited: Vec<WorkerId> =
            accepted.into_iter().filter(|worker| !refused.contains_key(worker)).collect();
        let result = match aggregated.result {
            Some(result) if credited.len() >= self.settings.quorum as usize => result,
            _ => {
                self.fail_open_round(&format!(
                    "{} updates passed the checks; the quorum is {}",
                    credited.len(),
                    self.settings.quorum
                ));
                return;
            }
        };
        self.record(Event::RoundClosed {
            round,
            result_model: result.model,
            result_momentum: result.momentum,
            result_aggregator: result.aggregator,
            accepted: credited.clone(),
            closed_unix_ms: now,
        });
        for worker in credited {
            self.record(Event::WorkAccepted { round, worker, units: self.settings.work_units() });
        }
        // The run finishes here, or another round opens.
        self.after_round_end();
    }

    /// The driver's checks found copies among the accepted updates of the
    /// round it was asked to close that no replay has told apart
    /// (`contested`: each copy and its original, neither passed by the
    /// coordinator's own replay; [`crowdtrain_defense`'s `unresolved_copies`]).
    /// A delegated auditor's pass does not count: a copier's colluding
    /// auditor would vouch for the copy and have the honest original refused
    /// in its place. Such a member is re-audited by the coordinator on the
    /// segment already drawn: the draw sets the auditor's verdict aside
    /// ([`Standing::overruled`]), and the stored answer is replayed at once
    /// ([`Action::JudgeAudit`]); a failing replay refutes the auditor's
    /// report, which is slashed as any refuted report. Order cannot
    /// decide which is the copy (a copier that retrains its victim's
    /// public assignment commits first as easily as second), so instead of
    /// closing, the round challenges them: each gets an audit of a segment
    /// drawn now, after the reveals (keyed by run, round, worker and
    /// commitment, as every draw), recorded as a second
    /// [`Event::AuditDraw`] that opens a new reveal deadline. The copy
    /// fails its replay (its chain is not its own assignment's training)
    /// and is slashed; an unanswered challenge fails at the deadline, as
    /// any audit; the original passes, is proven, and then stands against
    /// the copy whatever their order. The round closes again once they are
    /// settled, and pays the proven workers their verified work. Every
    /// contested worker is accepted and not proven, so it is unaudited or
    /// holds a delegated pass only: the challenge is never empty.
    pub fn handle_contested(&mut self, now: u64, round: RoundId, contested: &[WorkerId]) {
        self.advance(now);
        let (closing, _) = self.closing.take().expect("handle_contested answers a Close");
        assert_eq!(closing, round, "handle_contested answers the Close just emitted");
        // A bet on the round's close no longer holds.
        self.withdraw();
        let open = self.open.as_ref().expect("the round closing is open");
        let commitments = open.commitments();
        let audits: Vec<(WorkerId, u32)> = contested
            .iter()
            .collect::<BTreeSet<_>>()
            .into_iter()
            // Unaudited, or passed by a delegated auditor only: the
            // coordinator replays it itself.
            .filter(|worker| {
                open.standings
                    .get(worker)
                    .is_some_and(|standing| standing.verdict.is_none() || standing.judged_by.is_some())
            })
            .map(|&worker| {
                // A re-audit replays the segment already drawn (the answer
                // in hand is for it); the draw gives it anyway, being keyed
                // by the commitment alone.
                let segment = open.standings[&worker].audit.unwrap_or_else(|| {
                    draw_audit(
                        1.0,
                        &self.settings,
                        &self.audit_master,
                        &self.run_id,
                        round,
                        worker,
                        &commitments[&worker],
                    )
                    .expect("a draw with probability 1 selects")
                });
                (worker, segment)
            })
            .collect();
        assert!(
            !audits.is_empty(),
            "a challenge names accepted workers the coordinator's replay has not judged (only those go unproven)"
        );
        let secret = open.secret.expect("a revealing round has published its secret");
        let beacon = audit::beacon(&secret, &self.run_id, round, &commitments);
        self.challenged = Some(round);
        let reveal_deadline_unix_ms = now + self.settings.reveal_ms;
        self.record(Event::AuditDraw {
            round,
            secret,
            beacon,
            audits,
            auditors: Vec::new(),
            reveal_deadline_unix_ms,
        });
        // A re-audited delegated pass was answered already: the driver
        // replays the stored answer now (a worker that never answered is
        // asked to, as for any challenge).
        self.judge_answered(round);
        self.settle();
    }

    /// Asks the driver to replay the answered audits of live round `round`
    /// that have no verdict and nobody else replaying them.
    fn judge_answered(&mut self, round: RoundId) {
        let live = find_live(&mut self.open, &mut self.ahead, round).expect("a live round");
        for (&worker, standing) in &mut live.standings {
            let replay = standing.answered
                && standing.verdict.is_none()
                && standing.auditor.is_none()
                && !standing.judging;
            if let (true, Some(segment)) = (replay, standing.audit) {
                standing.judging = true;
                self.actions.push_back(Action::JudgeAudit { round, worker, segment });
            }
        }
    }

    /// The driver aggregated the submissions of a [`Action::Speculate`]:
    /// unless they would fail the round, the next round opens
    /// provisionally on the result.
    pub fn handle_speculated(&mut self, now: u64, round: RoundId, aggregated: Aggregated) {
        self.advance(now);
        let speculation = self.speculation.as_ref().expect("handle_speculated answers a Speculate");
        assert!(
            speculation.round == round && speculation.next.is_none(),
            "handle_speculated answers the Speculate just emitted"
        );
        let credited = speculation
            .accepted
            .iter()
            .filter(|worker| !aggregated.refused.iter().any(|(refused, _)| refused == *worker))
            .count();
        let Some(model) = aggregated
            .result
            .map(|result| result.model)
            .filter(|_| credited >= self.settings.quorum as usize)
        else {
            // The round fails even if every audit passes: nothing to open
            // ahead.
            return;
        };
        let open = self.open.as_ref().expect("speculation is on the open round");
        let missed: BTreeSet<WorkerId> = missed(open).into_iter().collect();
        if let Some(next) = self.round_to_open(model, &missed) {
            self.actions.push_back(Action::OpenProvisional {
                round: next.id,
                after: round,
                base_model: model,
            });
            self.speculation.as_mut().expect("checked").next = Some(next);
        }
    }

    // (C) outputs

    /// The next thing the driver must do.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// The actions waiting for the driver, in order, without taking them:
    /// what a simulator checks a restored machine decided on its own.
    pub fn pending_actions(&self) -> impl Iterator<Item = &Action> {
        self.actions.iter()
    }

    /// When [`handle_timeout`](Self::handle_timeout) must next be called:
    /// for the open round or for one opened ahead of it.
    pub fn poll_timeout(&self) -> Option<u64> {
        let quorum = self.settings.quorum as usize;
        let ahead = self.ahead.iter().filter_map(|ahead| ahead.ahead_timeout_ms(self.now_ms, quorum)).min();
        let open = self.open_timeout();
        open.into_iter().chain(ahead).min()
    }

    /// When the open round (or a run without one) next needs the time.
    fn open_timeout(&self) -> Option<u64> {
        match &self.open {
            // Past the reveal deadline with the driver replaying every audit
            // still due, the clock changes nothing: the verdicts move the
            // round on. (Naming the passed deadline would have a driver's
            // timer fire again at once, for as long as the replays take.)
            Some(open) if open.awaits_only_replays(self.now_ms) => None,
            Some(open) => Some(open.next_timeout_ms()),
            // A run past its rounds waits for participants short of their
            // contribution while they are live: it may finish when the
            // first of them times out.
            None if !self.finished && self.completed_rounds >= self.settings.rounds => self
                .short_of_contribution()
                .map(|(_, state)| state.last_seen_ms + self.settings.worker_timeout_ms + 1)
                .min(),
            None => None,
        }
    }

    // internals

    /// Time never runs backwards inside the machine, whatever the wall
    /// clock does.
    fn advance(&mut self, now: u64) {
        self.now_ms = self.now_ms.max(now);
    }

    /// Seen within `worker_timeout_ms`: it holds a place in the run.
    fn live(&self, worker: &Worker) -> bool {
        worker.last_seen_ms + self.settings.worker_timeout_ms >= self.now_ms
    }

    /// Live, and not sitting out the round that opens next.
    fn active(&self, worker: &Worker) -> bool {
        self.live(worker) && worker.sits_out_until <= self.next_round
    }

    /// Which of `participants` are proven now.
    fn proven_among(&self, participants: &[WorkerId]) -> BTreeSet<WorkerId> {
        participants
            .iter()
            .copied()
            .filter(|worker| self.workers.get(worker).is_some_and(|state| state.proven))
            .collect()
    }

    fn record_nonce(&mut self, worker: WorkerId, nonce: u64, now: u64) {
        let state = self.workers.get_mut(&worker).expect("authenticated workers exist");
        state.last_nonce = state.last_nonce.max(nonce);
        state.last_seen_ms = state.last_seen_ms.max(now);
    }

    fn past_round(&mut self, round: RoundId) -> Result<&mut PastRound, Refusal> {
        let current = self.open.as_ref().map_or("none".to_owned(), |open| open.id.to_string());
        let forgotten = round < self.next_round && !self.past.contains_key(&round);
        self.past.get_mut(&round).ok_or_else(|| {
            let why = if forgotten {
                format!("round {round} is over and too old to record input for (the open round is {current})")
            } else {
                format!("round {round} is not open and has not been run (the open round is {current})")
            };
            Refusal::new(ErrorCode::WrongRound, why)
        })
    }

    fn slash(&mut self, round: RoundId, worker: WorkerId, reason: &str) {
        self.record(Event::Slash { round, worker, amount: self.settings.stake, reason: reason.to_owned() });
        self.record(self.collateral.draw(round, worker, self.settings.stake));
    }

    /// Why `worker` may not work, in a bonded run whose bond it has left
    /// cannot cover another slash.
    fn bond_exhausted(&self, worker: WorkerId) -> Option<Refusal> {
        let left = self.collateral.bond(worker);
        (self.settings.bond > 0 && left < self.settings.stake).then(|| {
            Refusal::new(
                ErrorCode::BondExhausted,
                format!(
                    "{worker}'s bond is exhausted: {left} of its {} work units are left, less than the stake of {} \
                     that a slash takes; this run gives no work to a worker whose bond cannot cover a slash",
                    self.settings.bond, self.settings.stake
                ),
            )
        })
    }

    /// Whether `worker` may still be given work: refused once its bond
    /// cannot cover a slash (a long poll that began before asks again).
    pub fn may_work(&self, worker: WorkerId) -> Result<(), Refusal> {
        self.bond_exhausted(worker).map_or(Ok(()), Err)
    }

    /// Events the driver recorded itself (the scorer's rewards, withheld
    /// pay, vesting and `round-scored`), so that the machine's collateral
    /// is the ledger's, as a restored machine's would be.
    pub fn note(&mut self, events: &[Event]) {
        for event in events {
            assert!(
                matches!(
                    event,
                    Event::Reward(_)
                        | Event::PayWithheld { .. }
                        | Event::Vested { .. }
                        | Event::RoundScored { .. }
                ),
                "the machine records {} itself",
                event.kind()
            );
            self.apply(event);
        }
    }

    /// Escrow, vesting and bonds as of the events applied.
    pub fn collateral(&self) -> &Collateral {
        &self.collateral
    }

    fn judge(
        &mut self,
        round: RoundId,
        worker: WorkerId,
        segment: u32,
        verdict: Verdict,
        judged_by: Option<WorkerId>,
        sender: Option<(WorkerId, u64)>,
    ) {
        let standing = self.standing_mut(round, worker);
        let already_rejected = standing.rejected.is_some();
        let overruled = standing.overruled;
        let failed = !verdict.passed();
        let reason = failure_reason(&verdict);
        // The coordinator's replay fails an audit a delegated auditor had
        // passed: the auditor's report is refuted, as in `audit_reported`.
        if let (Some(auditor), Verdict::Failed(_), None) = (overruled, &verdict, judged_by) {
            let now = self.now_ms;
            self.auditor_wrong(
                now,
                round,
                auditor,
                worker,
                &crate::judge::auditor_wrong_reason(worker, segment, round),
            );
        }
        self.record(Event::Audit {
            round,
            worker,
            segment,
            verdict,
            judged_by,
            sender,
            decided_unix_ms: self.now_ms,
        });
        if failed && !already_rejected {
            self.slash(round, worker, &reason);
        }
    }

    /// Moves every live round on when nothing more is awaited from anyone
    /// in its phase: the rounds opened ahead (their commit phases; their
    /// reveal phases end only at their deadlines or when they close), then
    /// the open round (which closes when all it awaits is in).
    fn settle(&mut self) {
        self.settle_ahead();
        self.settle_open();
    }

    /// Ends the commit phase of each round opened ahead that awaits no
    /// commitment any more: every participant committed (its deadlines are
    /// [`Coordinator::ahead_timeouts`]'s).
    fn settle_ahead(&mut self) {
        let committing: Vec<RoundId> = self
            .ahead
            .iter()
            .filter(|ahead| matches!(ahead.phase, RoundPhase::Committing { .. }))
            .map(|ahead| ahead.id)
            .collect();
        for round in committing {
            if self.commit_phase_over(round) {
                self.begin_reveal(round);
            }
        }
    }

    /// Whether live round `round`, committing, has every participant's
    /// commitment (and a quorum); if not, once every proven participant
    /// and a quorum are in, sets the early end of its commit phase.
    fn commit_phase_over(&mut self, round: RoundId) -> bool {
        let now = self.now_ms;
        let quorum = self.settings.quorum as usize;
        let open = find_live(&mut self.open, &mut self.ahead, round).expect("a live round");
        let RoundPhase::Committing { deadline_ms, .. } = open.phase else { return false };
        let committed = |worker: &WorkerId| {
            open.standings.get(worker).is_some_and(|standing| standing.commitment.is_some())
        };
        let all_committed = open.participants.iter().all(committed);
        if all_committed && open.participants.len() >= quorum {
            return true;
        }
        // Every proven participant (there is one at least: a round of
        // newcomers only, such as a run's first, waits for them) and a
        // quorum are in: the unproven ones get a grace as long as the round
        // so far.
        let proven_in = !open.proven.is_empty() && open.proven.iter().all(committed);
        let enough = open.participants.iter().filter(|worker| committed(worker)).count() >= quorum.max(1);
        if open.early_close_ms.is_none() && proven_in && enough {
            let grace = now.saturating_sub(open.opened_ms).max(UNPROVEN_GRACE_MIN_MS);
            open.early_close_ms = Some((now + grace).min(deadline_ms));
        }
        false
    }

    /// Moves the open round on when nothing more is awaited from anyone in
    /// its phase.
    fn settle_open(&mut self) {
        let Some(open) = &self.open else { return };
        // Closing already: its Close awaits the driver's answer (a restored
        // machine emits it at once, and an input may come before the answer
        // does, settling the same round again).
        if self.closing.is_some() {
            return;
        }
        match open.phase {
            RoundPhase::Committing { .. } => {
                let round = open.id;
                if self.commit_phase_over(round) {
                    self.begin_reveal(round);
                    self.settle();
                }
            }
            RoundPhase::Revealing { .. } => {
                if open.standings.values().all(Standing::settled) {
                    self.close_open_round();
                } else {
                    self.speculate();
                }
            }
        }
    }

    /// Bets on the open round's pending audits once nothing else is awaited
    /// from anyone: honest workers pass, and a replay takes a quarter of the
    /// training it checks, so workers idle for it every audited round
    /// unless the next round opens on the model the round gives if they
    /// pass. A bet that no longer holds is withdrawn, and a new one made if
    /// it can be.
    fn speculate(&mut self) {
        // Under a delayed outer update the next round is open already, on
        // a model that needs no bet.
        if self.settings.outer_delay > 0 {
            return;
        }
        let Some(open) = &self.open else { return };
        let (round, base_model) = (open.id, open.base_model);
        let bet = if_audits_pass(open).filter(|accepted| {
            accepted.len() >= self.settings.quorum as usize
                && self.completed_rounds + 1 < self.settings.rounds
        });
        if let Some(speculation) = &self.speculation {
            if speculation.round == round && Some(&speculation.accepted) == bet.as_ref() {
                return;
            }
            self.withdraw();
        }
        let Some(accepted) = bet else { return };
        self.actions.push_back(Action::Speculate { round, base_model, accepted: accepted.clone() });
        self.speculation = Some(Speculation { round, accepted, next: None });
    }

    fn withdraw(&mut self) {
        if let Some(speculation) = self.speculation.take() {
            self.withdraw_bet(speculation);
        }
    }

    fn withdraw_bet(&mut self, speculation: Speculation) {
        self.actions.push_back(Action::Withdraw {
            round: speculation.round,
            provisional: speculation.next.map(|next| next.id),
        });
    }

    /// Ends the commit phase of live round `round` (the open round, or one
    /// opened ahead of it): publishes its secret and its draw.
    fn begin_reveal(&mut self, round: RoundId) {
        let open = self.live_round(round).expect("a round to reveal");
        let secret = audit::round_secret(&self.audit_master, &self.run_id, round);
        let beacon = audit::beacon(&secret, &self.run_id, round, &open.commitments());
        let (audits, auditors) = self.assign_auditors(open, &beacon);
        let reveal_deadline_unix_ms = self.now_ms + self.settings.reveal_ms;
        self.record(Event::AuditDraw { round, secret, beacon, audits, auditors, reveal_deadline_unix_ms });
        self.open_ahead();
    }

    /// The committed workers' audits (drawn with their commitments, and
    /// every commitment to an update another also committed to: see
    /// [`contested_updates`]) and, when audits are delegated, each one's
    /// auditor, picked with `beacon` among the other committed workers of
    /// the same determinism class.
    /// Returns `(worker, segment)` and `(audited, auditor)` pairs,
    /// ascending.
    fn assign_auditors(&self, open: &OpenRound, beacon: &Digest) -> (Vec<(WorkerId, u32)>, Vec<AuditorPair>) {
        let commitments = open.commitments();
        let committed: Vec<WorkerId> = commitments.keys().copied().collect();
        let contested = contested_updates(&commitments);
        let (mut audits, mut auditors) = (Vec::new(), Vec::new());
        for &worker in &committed {
            let standing = &open.standings[&worker];
            let drawn = standing.audit.or_else(|| {
                contested.contains(&worker).then(|| {
                    let commitment = &commitments[&worker];
                    draw_audit(
                        1.0,
                        &self.settings,
                        &self.audit_master,
                        &self.run_id,
                        open.id,
                        worker,
                        commitment,
                    )
                    .expect("a draw with probability 1 selects")
                })
            });
            let Some(segment) = drawn else { continue };
            audits.push((worker, segment));
            // An answer the driver already replayed (or is replaying) needs
            // no auditor. Nor is a contested update's audit delegated: it
            // decides which of two workers' identical commitments is the
            // copy, and an auditor colluding with a copier that committed
            // first would vouch for it and have the honest original refused
            // as the copy (found by the network simulator, seed 241).
            let delegated = !contested.contains(&worker);
            if self.settings.delegate_audits && delegated && !standing.answered && standing.verdict.is_none()
            {
                let class = &self.workers[&worker].class;
                let candidates: Vec<WorkerId> = committed
                    .iter()
                    .copied()
                    .filter(|&other| other != worker && &self.workers[&other].class == class)
                    .collect();
                if let Some(auditor) = audit::auditor(beacon, worker, &candidates) {
                    auditors.push((worker, auditor));
                }
            }
        }
        (audits, auditors)
    }

    /// Ends the reveal phase: aggregates the accepted submissions if they
    /// make a quorum, fails the round otherwise.
    fn close_open_round(&mut self) {
        let open = self.open.as_ref().expect("an open round to close");
        let accepted: Vec<WorkerId> = open
            .standings
            .iter()
            .filter(|(_, standing)| standing.accepted())
            .map(|(&worker, _)| worker)
            .collect();
        if self.speculation.as_ref().is_some_and(|bet| bet.round != open.id || bet.accepted != accepted) {
            self.withdraw();
        }
        if accepted.len() < self.settings.quorum as usize {
            self.fail_open_round("too few accepted submissions for the quorum");
            return;
        }
        let open = self.open.as_ref().expect("checked");
        let (round, base_model) = (open.id, open.base_model);
        if self.challenged != Some(round) {
            self.mark_missed();
        }
        self.closing = Some((round, accepted.clone()));
        self.actions.push_back(Action::Close { round, base_model, accepted });
    }

    fn fail_open_round(&mut self, reason: &str) {
        let round = self.open.as_ref().expect("an open round to fail").id;
        self.mark_missed();
        self.record(Event::RoundFailed { round, reason: reason.to_owned(), closed_unix_ms: self.now_ms });
        self.after_round_end();
    }

    /// The open round just closed or failed. The round opened ahead of it
    /// (under a delayed outer update), now the open round, moves on if all
    /// it awaited is in (its commitments kept coming while the round before
    /// it closed); without one, the next round opens.
    fn after_round_end(&mut self) {
        if self.open.is_some() {
            self.settle();
        }
        self.maybe_open();
    }

    /// Under a delayed outer update (`outer_delay` d), opens rounds ahead
    /// of the open round until d are, each as soon as its base exists, on
    /// the newest model: round r + d trains from the model before round
    /// r + d - 1's outer step, that is after round r - 1's, final from the
    /// moment round r is the open round. So a worker goes from committing
    /// one round straight to training the next, whatever the slowest
    /// worker and the open round's reveals, audits and aggregation are
    /// doing, and d + 1 rounds take commitments at once. A failed audit in
    /// the open round changes nothing about them. Participants of the open
    /// round that should sit out (they delivered nothing for the round
    /// before, which ended after the rounds ahead opened) are left out of
    /// the round opened now: they sit this one out instead. No round past
    /// the run's last is opened ahead (a run that needs more, after a
    /// failed round or under a contract, opens them as the open round
    /// ends).
    fn open_ahead(&mut self) {
        if self.settings.outer_delay == 0 || self.finished {
            return;
        }
        while self.ahead.len() < self.settings.outer_delay as usize {
            let Some(open) = self.open.as_ref() else { return };
            let live = 1 + self.ahead.len() as u64;
            if self.completed_rounds + live >= self.settings.rounds {
                return;
            }
            let sitting_out: BTreeSet<WorkerId> = open
                .participants
                .iter()
                .copied()
                .filter(|worker| self.workers.get(worker).is_some_and(|state| state.sits_out_until > open.id))
                .collect();
            let Some(mut next) = self.round_to_open(self.model, &sitting_out) else { return };
            // Its participants train the `live` rounds before it first, one
            // after the other: it is due a commit window after each of
            // theirs (a deadline of one window from now would ask a worker
            // for `live + 1` rounds of training in the time of one, and
            // pass before a slowed-down but honest worker could commit).
            let windows = live + 1;
            let deadline_ms = self.now_ms + self.settings.commit_ms.saturating_mul(windows);
            next.phase = RoundPhase::Committing { deadline_ms, extensions: 0 };
            self.record_opening(&next);
            debug_assert_eq!(self.ahead.back(), Some(&next), "the event opens the round as planned");
        }
    }

    /// The oldest round opened ahead of the open one under a delayed outer
    /// update (the next to be the open round), if any.
    pub fn ahead_round(&self) -> Option<&OpenRound> {
        self.ahead.front()
    }

    /// Every round opened ahead of the open one under a delayed outer
    /// update, oldest first (at most `outer_delay` of them).
    pub fn ahead_rounds(&self) -> impl Iterator<Item = &OpenRound> {
        self.ahead.iter()
    }

    /// The round opened ahead `index` rounds after the oldest, as `worker`
    /// sees it: what to train while the rounds before it reveal (see
    /// [`RoundView::ahead`]), then, in its own phases, what to reveal, to
    /// answer or to replay for it; its own `ahead` shows the round after
    /// it.
    fn ahead_view(&self, worker: Option<WorkerId>, index: usize) -> Option<Box<RoundView>> {
        let ahead = self.ahead.get(index)?;
        let standing = worker.and_then(|worker| ahead.standings.get(&worker));
        let revealing = matches!(ahead.phase, RoundPhase::Revealing { .. });
        Some(Box::new(RoundView {
            run_id: self.run_id,
            phase: if revealing { Phase::Revealing } else { Phase::Committing },
            round: Some(ahead.id),
            completed_rounds: self.completed_rounds,
            model: ahead.base_model,
            deadline_unix_ms: Some(ahead.deadline_ms()),
            secret_commitment: Some(ahead.secret_commitment),
            secret: ahead.secret.map(crate::wire::Secret),
            assignment: worker.and_then(|worker| assignment(&self.settings, self.run_id, ahead, worker)),
            committed: standing
                .is_some_and(|standing| standing.commitment.is_some() || standing.late_commitment.is_some()),
            revealed: standing.is_some_and(|standing| {
                standing.revealed.is_some() || standing.rejected.is_some() || standing.late_reveal.is_some()
            }),
            audit: standing
                .and_then(|standing| standing.audit)
                .filter(|_| revealing || !self.settings.delegate_audits),
            audit_answered: standing.is_some_and(|standing| standing.answered || standing.verdict.is_some()),
            audit_task: worker.and_then(|worker| audit_task_in(ahead, worker)),
            provisional: false,
            ahead: self.ahead_view(worker, index + 1),
        }))
    }

    /// Participants of the open round that did not deliver what their
    /// phase asked for (a commitment; then a reveal) sit out the next round,
    /// and twice as many each time they do so again in a row; one that
    /// committed late sits out one round (and stays proven: see
    /// [`Coordinator::end_open_round`]).
    fn mark_missed(&mut self) {
        let open = self.open.as_ref().expect("an open round ends");
        let (round, now) = (open.id, self.now_ms);
        for worker in missed(open) {
            let late = open.standings.get(&worker).is_some_and(|standing| standing.late_commitment.is_some());
            let state = self.workers.get_mut(&worker).expect("participants are workers");
            let rounds = if late {
                1
            } else {
                state.missed_streak = state.missed_streak.saturating_add(1);
                1u64.checked_shl(state.missed_streak - 1).unwrap_or(u64::MAX).min(SIT_OUT_ROUNDS_MAX)
            };
            state.sits_out_until = round + 1 + rounds;
            state.missed_at_ms = now;
        }
    }

    /// Opens the next round on the latest model, if enough workers are
    /// active: the provisional round, if the bet it was opened on held
    /// (with the time it opened: its participants have been training since).
    fn maybe_open(&mut self) {
        if self.open.is_some() {
            self.open_ahead();
            return;
        }
        if self.finished {
            return;
        }
        if self.run_complete() {
            self.record(Event::RunFinished { final_model: self.model });
            return;
        }
        let adopted = match self.speculation.take() {
            Some(Speculation { next: Some(next), .. })
                if next.base_model == self.model && next.id == self.next_round =>
            {
                Some(next)
            }
            Some(speculation) => {
                self.withdraw_bet(speculation);
                None
            }
            None => None,
        };
        let Some(next) = adopted.or_else(|| self.round_to_open(self.model, &BTreeSet::new())) else { return };
        self.record_opening(&next);
        debug_assert_eq!(self.open.as_ref(), Some(&next), "the event opens the round as planned");
        // Under a delayed outer update the round after it has its base too.
        self.open_ahead();
    }

    fn record_opening(&mut self, next: &OpenRound) {
        self.record(Event::RoundOpened {
            round: next.id,
            base_model: next.base_model,
            participants: next.participants.clone(),
            opened_unix_ms: next.opened_ms,
            commit_deadline_unix_ms: next.deadline_ms(),
            secret_commitment: next.secret_commitment,
        });
    }

    /// The round that would open now on `base_model`, with the active
    /// workers but `excluded` as participants, if they are enough.
    fn round_to_open(&self, base_model: Digest, excluded: &BTreeSet<WorkerId>) -> Option<OpenRound> {
        let mut participants: Vec<WorkerId> = self
            .workers
            .iter()
            .filter(|&(worker, state)| {
                self.active(state) && !excluded.contains(worker) && self.bond_exhausted(*worker).is_none()
            })
            .map(|(&worker, _)| worker)
            .collect();
        let needed = self.settings.workers_to_open(self.next_round == 0);
        if participants.len() < needed {
            // Too few to run a round without workers sitting out: those seen
            // since they missed come back early, or the run would stall.
            let mut back: Vec<WorkerId> = self
                .workers
                .iter()
                .filter(|&(worker, state)| {
                    self.live(state)
                        && !self.active(state)
                        && state.last_seen_ms > state.missed_at_ms
                        && !excluded.contains(worker)
                        && self.bond_exhausted(*worker).is_none()
                })
                .map(|(&worker, _)| worker)
                .collect();
            back.truncate(needed - participants.len());
            participants.extend(back);
            participants.sort_unstable();
        }
        // No more than the data supports: proven workers first, then the
        // earliest registered.
        let room = self.settings.max_participants as usize;
        if participants.len() > room {
            participants.sort_by_key(|worker| (!self.workers[worker].proven, *worker));
            participants.truncate(room);
            participants.sort_unstable();
        }
        if participants.len() < needed {
            return None;
        }
        let round = self.next_round;
        let deadline_ms = self.now_ms + self.settings.commit_ms;
        let proven = self.proven_among(&participants);
        Some(OpenRound {
            id: round,
            base_model,
            opened_ms: self.now_ms,
            phase: RoundPhase::Committing { deadline_ms, extensions: 0 },
            standings: participants.iter().map(|&worker| (worker, Standing::default())).collect(),
            participants,
            secret_commitment: audit::secret_commitment(&audit::round_secret(
                &self.audit_master,
                &self.run_id,
                round,
            )),
            secret: None,
            auditors_slashed: BTreeSet::new(),
            early_close_ms: None,
            proven,
            reveal_over: false,
        })
    }
}

/// The live round `round` among the open round and those opened ahead of
/// it (a function of the two fields, so that the rest of the machine stays
/// borrowable).
fn find_live<'a>(
    open: &'a mut Option<OpenRound>,
    ahead: &'a mut VecDeque<OpenRound>,
    round: RoundId,
) -> Option<&'a mut OpenRound> {
    open.iter_mut().chain(ahead.iter_mut()).find(|live| live.id == round)
}

/// A signed read's or registration's nonce must be within
/// [`READ_WINDOW_MS`] of the coordinator's clock.
fn check_read_window(now: u64, nonce: u64) -> Result<(), Refusal> {
    let nonce_ms = nonce / 1000;
    if nonce_ms.abs_diff(now) > READ_WINDOW_MS {
        return Err(Refusal::new(
            ErrorCode::Replayed,
            format!(
                "nonce {nonce} is {} s away from the coordinator's clock; a read's nonce is the time in \
                 microseconds since the epoch, within {} s (check this machine's clock)",
                nonce_ms.abs_diff(now) / 1000,
                READ_WINDOW_MS / 1000
            ),
        ));
    }
    Ok(())
}

/// Participants of `open` that did not deliver what its phase asked for (a
/// commitment; then a reveal): they sit out until they are seen again.
fn missed(open: &OpenRound) -> Vec<WorkerId> {
    let revealing = matches!(open.phase, RoundPhase::Revealing { .. });
    open.participants
        .iter()
        .copied()
        .filter(|worker| {
            !open.standings.get(worker).is_some_and(|standing| {
                standing.commitment.is_some()
                    && (!revealing || standing.revealed.is_some() || standing.rejected.is_some())
            })
        })
        .collect()
}

/// The submissions `open` aggregates if its pending audits pass, when all
/// it awaits is audits the driver replays itself (answered, and not
/// delegated); `None` while anything else is awaited, or nothing is.
fn if_audits_pass(open: &OpenRound) -> Option<Vec<WorkerId>> {
    let mut replaying = false;
    for standing in open.standings.values().filter(|standing| !standing.settled()) {
        let replayed_by_driver = standing.revealed.is_some()
            && standing.rejected.is_none()
            && standing.answered
            && standing.auditor.is_none();
        if !replayed_by_driver {
            return None;
        }
        replaying = true;
    }
    replaying.then(|| {
        open.standings.iter().filter(|(_, standing)| standing.accepted()).map(|(&worker, _)| worker).collect()
    })
}

fn failure_reason(verdict: &Verdict) -> String {
    match verdict {
        Verdict::Passed => String::new(),
        Verdict::Failed(reason) => format!("failed its audit: {reason}"),
        Verdict::Unanswered => "did not answer its audit in time".to_owned(),
    }
}

fn check_participant(
    participants: &[WorkerId],
    base: Digest,
    worker: WorkerId,
    round: RoundId,
    claimed: Digest,
) -> Result<(), Refusal> {
    if !participants.contains(&worker) {
        return Err(Refusal::new(
            ErrorCode::NotAssigned,
            format!("{worker} is not a participant of round {round}; it joins at the next round"),
        ));
    }
    if claimed != base {
        return Err(Refusal::new(
            ErrorCode::StaleModel,
            format!("round {round} trains from model {base}, not {claimed}"),
        ));
    }
    Ok(())
}

/// A participant's commitment that names the shard it trained must name
/// its shard of this round: the round may have opened again on the same
/// model with other participants, and work for the old shard would fail
/// its replay. Refused as stale, so the worker trains again.
fn check_shard(
    participants: &[WorkerId],
    worker: WorkerId,
    round: RoundId,
    trained: Option<Shard>,
) -> Result<(), Refusal> {
    let Some(trained) = trained else { return Ok(()) };
    let slot =
        participants.iter().position(|&participant| participant == worker).expect("checked a participant");
    let assigned = Shard { slot: slot as u32, slots: participants.len() as u32 };
    if trained != assigned {
        return Err(Refusal::new(
            ErrorCode::StaleModel,
            format!(
                "round {round} opened again with other participants: {worker} trains {assigned}, not {trained}"
            ),
        ));
    }
    Ok(())
}

fn check_participant_past(
    past: &PastRound,
    worker: WorkerId,
    round: RoundId,
    claimed: Digest,
) -> Result<(), Refusal> {
    if !past.participants.contains(&worker) {
        return Err(Refusal::new(
            ErrorCode::NotAssigned,
            format!("{worker} was not a participant of round {round}"),
        ));
    }
    if claimed != past.base_model {
        return Err(Refusal::new(
            ErrorCode::StaleModel,
            format!("round {round} trained from model {}, not {claimed}", past.base_model),
        ));
    }
    Ok(())
}

fn same_or_duplicate(
    same: bool,
    status: Recorded,
    worker: WorkerId,
    round: RoundId,
    what: &str,
) -> Result<Outcome, Refusal> {
    if same {
        Ok(Outcome::AlreadyRecorded(status))
    } else {
        Err(Refusal::new(
            ErrorCode::Duplicate,
            format!("{worker} already has a different {what} for round {round}"),
        ))
    }
}

fn past_round(open: &OpenRound) -> PastRound {
    PastRound {
        base_model: open.base_model,
        participants: open.participants.iter().copied().collect(),
        commitments: open
            .standings
            .iter()
            .filter_map(|(&worker, standing)| match (standing.commitment, standing.late_commitment) {
                (Some(commitment), _) => Some((worker, (Recorded::Accepted, commitment))),
                (None, Some(commitment)) => Some((worker, (Recorded::Late, commitment))),
                (None, None) => None,
            })
            .collect(),
        reveals: open
            .standings
            .iter()
            .filter_map(|(&worker, standing)| match (standing.revealed, standing.mismatched) {
                (Some(digest), _) => Some((worker, (Recorded::Accepted, digest))),
                (None, Some(digest)) => {
                    let status = if standing.malformed { Recorded::Malformed } else { Recorded::Mismatch };
                    Some((worker, (status, digest)))
                }
                (None, None) => standing.late_reveal.map(|digest| (worker, (Recorded::Late, digest))),
            })
            .collect(),
    }
}

/// The delegated audit of live round `round` that `auditor` should replay
/// now, if any: the first (by audited worker) whose answer is in and which
/// is not yet judged.
fn audit_task_in(round: &OpenRound, auditor: WorkerId) -> Option<crate::wire::AuditTaskRef> {
    round.standings.iter().find_map(|(&worker, standing)| {
        let waiting = standing.auditor == Some(auditor) && standing.answered && standing.verdict.is_none();
        waiting.then(|| crate::wire::AuditTaskRef { worker, segment: standing.audit.expect("drawn") })
    })
}

/// `worker`'s assignment in `open`, if it is a participant (its position
/// is its slot).
fn assignment(settings: &Settings, run_id: Digest, open: &OpenRound, worker: WorkerId) -> Option<Assignment> {
    let slot = open.participants.iter().position(|&participant| participant == worker)?;
    Some(Assignment {
        run_id,
        round: open.id,
        worker,
        slot: slot as u32,
        slots: open.participants.len() as u32,
        base_model: open.base_model,
        recipe: settings.recipe.clone(),
        segments: settings.segments,
    })
}

/// The segment of `worker`'s round-`round` work its commitment draws for
/// audit with `probability`, if any: [`audit::draw`] on
/// [`audit::commitment_beacon`]. The segment does not depend on the
/// probability, so a forced audit replays the segment a random one would.
fn draw_audit(
    probability: f64,
    settings: &Settings,
    audit_master: &[u8; 32],
    run_id: &Digest,
    round: RoundId,
    worker: WorkerId,
    commitment: &Commitment,
) -> Option<u32> {
    let secret = audit::round_secret(audit_master, run_id, round);
    let beacon = audit::commitment_beacon(&secret, run_id, round, worker, commitment);
    audit::draw(&beacon, worker, probability, settings.recipe.inner_steps, settings.segments)
}

/// A commitment names residual digests exactly when the run's codec keeps
/// error feedback, and then always the one it keeps.
fn check_residual_shape(settings: &Settings, commitment: &Commitment) -> Result<(), Refusal> {
    let codec = settings.recipe.codec;
    if codec.error_feedback() {
        if commitment.residual_out.is_none() {
            return Err(Refusal::new(
                ErrorCode::BadRequest,
                format!("under the {codec} codec a commitment names the residual it keeps (residual_out)"),
            ));
        }
    } else if commitment.residual_in.is_some() || commitment.residual_out.is_some() {
        return Err(Refusal::new(
            ErrorCode::BadRequest,
            format!("the {codec} codec keeps no error-feedback residual: a commitment names none"),
        ));
    }
    Ok(())
}

/// A commitment's error feedback starts from zero or from the residual
/// `chained` (what the worker's last accepted commitment said it kept):
/// anything else would let a worker inject mass it never trained for, or
/// drop an audit's evidence of what it kept.
fn check_residual_chain(
    commitment: &Commitment,
    chained: Option<Digest>,
    worker: WorkerId,
) -> Result<(), Refusal> {
    match commitment.residual_in {
        None => Ok(()),
        Some(residual) if Some(residual) == chained => Ok(()),
        Some(residual) => Err(Refusal::new(
            ErrorCode::ResidualChain,
            format!(
                "{worker}'s commitment starts from residual {residual}, which is not the residual its last accepted \
                 commitment kept ({}): start again from zero",
                chained.map_or_else(|| "none".to_owned(), |digest| digest.to_string())
            ),
        )),
    }
}

/// The workers whose commitment names the same update as another
/// worker's in the round, or the same trace (Merkle root): a copy and its
/// original, which the order of arrival cannot tell apart (a copier that
/// retrains its victim's assignment can commit first). A near copy (the
/// victim's update plus a little noise, so another digest) still commits
/// the victim's segment boundaries, which no other assignment reaches.
/// Both are audited, whatever the audit probability, and by the
/// coordinator: the replay of each under its own assignment tells whose
/// work it is, the copy fails and is slashed, and the original stands, so
/// no honest worker is refused because someone else submitted its update
/// first. (Found for near copies by the network simulator, seed 9 with
/// `--near-copiers 0.2`: an auditor colluding with a near-copier that
/// committed first vouched for it, and the checks then refused the honest
/// original as the copy of a proven update.)
fn contested_updates(commitments: &BTreeMap<WorkerId, Commitment>) -> BTreeSet<WorkerId> {
    let mut by_update: BTreeMap<Digest, Vec<WorkerId>> = BTreeMap::new();
    let mut by_trace: BTreeMap<Digest, Vec<WorkerId>> = BTreeMap::new();
    for (&worker, commitment) in commitments {
        by_update.entry(commitment.payload).or_default().push(worker);
        by_trace.entry(commitment.merkle_root).or_default().push(worker);
    }
    by_update
        .into_values()
        .chain(by_trace.into_values())
        .filter(|workers| workers.len() > 1)
        .flatten()
        .collect()
}
