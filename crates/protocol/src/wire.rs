//! What crosses the network: request authentication, the objects the
//! coordinator signs, and the JSON of errors and status.
//!
//! Every worker request carries three headers: `x-crowdtrain-run` (the run
//! it is meant for, so a request for another run gets a clear "wrong run"
//! rather than a bare signature failure), `x-crowdtrain-body`:
//! `<length>:<BLAKE3 of the body>` (the body it declares; absent for a
//! request without one), and `x-crowdtrain-auth`:
//! `<public key>:<nonce>:<signature>`. The signature covers the run, the
//! method, the path with its query (so the round and the base model of a
//! submission are bound), the nonce and the declared length and digest of
//! the body, so the coordinator checks who sent a request, and that it may
//! send it, *before* it reads a byte of the body; the body must then be
//! exactly what was declared ([`BodyDeclaration`]). Nonces are
//! microseconds since the epoch; a state-changing request must carry a
//! nonce above the last one accepted from that key, and a signed read one
//! no read from that key was taken with (reads in flight together may
//! arrive in any order), so a captured request cannot be replayed.
//!
//! What the coordinator publishes (run description, round views, receipts)
//! travels as JSON with a signature over the postcard encoding of the same
//! value, which is canonical: the receiver re-encodes what it parsed and
//! checks the signature against the coordinator key it pinned.

use std::fmt;

use crate::contract::ContractChoice;
use crowdtrain_recipe::TrainingRecipe;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::config::{AdmissionMode, RunConfig};
use crate::identity::{BadSignature, Identity, PublicKey, SignatureBytes};
pub use crate::ids::{Digest, RoundId, WorkerId};

/// Bumped on any incompatible change to messages or training semantics.
pub const PROTOCOL_VERSION: u32 = 7;

/// The header naming (by BLAKE3 hex) the model reward a
/// `GET /v1/rewards/{worker}` answer carries: the hash its
/// `model-rewarded` ledger entry records.
pub const REWARD_MODEL_HEADER: &str = "x-crowdtrain-reward-model";

pub const AUTH_HEADER: &str = "x-crowdtrain-auth";
pub const RUN_HEADER: &str = "x-crowdtrain-run";
/// The body a signed request declares: `<length>:<BLAKE3 hex>`.
pub const BODY_HEADER: &str = "x-crowdtrain-body";

const REQUEST_DOMAIN: &str = "crowdtrain/request/v2";

/// The longest the coordinator holds a round long poll open.
pub const LONG_POLL_MS_MAX: u64 = 30_000;

/// The authentication a worker attaches to a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestAuth {
    pub worker: PublicKey,
    pub nonce: u64,
    pub signature: SignatureBytes,
}

/// The length and BLAKE3 digest of a request's body, declared in its
/// headers and covered by its signature, so that a request can be
/// authenticated before its body is read; the reader then checks that
/// the body is exactly this.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyDeclaration {
    pub length: u64,
    pub digest: Digest,
}

impl BodyDeclaration {
    /// The declaration of `body`.
    pub fn of(body: &[u8]) -> Self {
        Self { length: body.len() as u64, digest: Digest::of(body) }
    }

    /// What a request without the header declares: no body.
    pub fn empty() -> Self {
        Self::of(b"")
    }

    pub fn to_header(&self) -> String {
        format!("{}:{}", self.length, self.digest.to_hex())
    }

    pub fn parse_header(text: &str) -> Result<Self, String> {
        let (length, digest) = text
            .split_once(':')
            .ok_or_else(|| format!("{BODY_HEADER} must be <length>:<BLAKE3 hex of the body>"))?;
        Ok(Self {
            length: length
                .parse()
                .map_err(|_| format!("{BODY_HEADER}: the length must be an unsigned integer"))?,
            digest: digest.parse().map_err(|reason| format!("{BODY_HEADER}: {reason}"))?,
        })
    }
}

impl RequestAuth {
    /// Signs a request with `body`.
    pub fn sign(
        identity: &Identity,
        run: &Digest,
        method: &str,
        path_and_query: &str,
        nonce: u64,
        body: &[u8],
    ) -> Self {
        Self::sign_declared(identity, run, method, path_and_query, nonce, &BodyDeclaration::of(body))
    }

    /// Signs a request whose body is declared as `body`.
    pub fn sign_declared(
        identity: &Identity,
        run: &Digest,
        method: &str,
        path_and_query: &str,
        nonce: u64,
        body: &BodyDeclaration,
    ) -> Self {
        let message = request_message(run, method, path_and_query, nonce, body);
        Self { worker: identity.public_key(), nonce, signature: identity.sign(REQUEST_DOMAIN, &message) }
    }

    /// Checks the signature over the request with its declared body (the
    /// body itself is checked against `body` as it is read).
    pub fn verify(
        &self,
        run: &Digest,
        method: &str,
        path_and_query: &str,
        body: &BodyDeclaration,
    ) -> Result<(), BadSignature> {
        let message = request_message(run, method, path_and_query, self.nonce, body);
        self.worker.verify(REQUEST_DOMAIN, &message, &self.signature)
    }

    pub fn to_header(&self) -> String {
        format!("{}:{}:{}", self.worker.to_hex(), self.nonce, String::from(self.signature))
    }

    pub fn parse_header(text: &str) -> Result<Self, String> {
        let mut parts = text.split(':');
        let (Some(worker), Some(nonce), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(format!("{AUTH_HEADER} must be <public key>:<nonce>:<signature>"));
        };
        Ok(Self {
            worker: worker.parse()?,
            nonce: nonce.parse().map_err(|_| "the nonce must be an unsigned integer".to_owned())?,
            signature: signature.parse()?,
        })
    }
}

fn request_message(
    run: &Digest,
    method: &str,
    path_and_query: &str,
    nonce: u64,
    body: &BodyDeclaration,
) -> Vec<u8> {
    let mut message = Vec::with_capacity(136 + path_and_query.len());
    message.extend_from_slice(&run.0);
    for field in [method.as_bytes(), path_and_query.as_bytes()] {
        message.extend_from_slice(&(field.len() as u64).to_le_bytes());
        message.extend_from_slice(field);
    }
    message.extend_from_slice(&nonce.to_le_bytes());
    message.extend_from_slice(&body.length.to_le_bytes());
    message.extend_from_slice(&body.digest.0);
    message
}

/// A value the coordinator publishes, with its signature.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Signed<T> {
    pub body: T,
    pub signature: SignatureBytes,
}

/// Values that travel signed, each in its own signature domain.
pub trait SignedBody: Serialize + DeserializeOwned {
    const DOMAIN: &'static str;
}

impl<T: SignedBody> Signed<T> {
    pub fn sign(identity: &Identity, body: T) -> Self {
        let signature = identity.sign(T::DOMAIN, &canonical(&body));
        Self { body, signature }
    }

    /// The body, if `key` signed it.
    pub fn verify(&self, key: &PublicKey) -> Result<&T, BadSignature> {
        key.verify(T::DOMAIN, &canonical(&self.body), &self.signature)?;
        Ok(&self.body)
    }
}

fn canonical<T: Serialize>(value: &T) -> Vec<u8> {
    postcard::to_allocvec(value).expect("protocol values always encode")
}

/// Identifies the data a run trains on, so a worker with different files
/// finds out before it trains rather than after.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatasetFingerprint {
    pub name: String,
    pub train_examples: u64,
    /// BLAKE3 over the training pixels and labels.
    pub digest: Digest,
}

/// The run, as the coordinator describes it at `GET /v1/run`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunInfo {
    pub protocol_version: u32,
    pub run_id: Digest,
    pub coordinator: PublicKey,
    pub config: RunConfig,
    pub model_name: String,
    pub parameters: u64,
    pub dataset: DatasetFingerprint,
    pub initial_model: Digest,
    /// How the run admits workers (`[admission]` itself is the
    /// coordinator's business), so a worker can say what it lacks.
    pub admission: AdmissionMode,
}

impl SignedBody for RunInfo {
    const DOMAIN: &'static str = "crowdtrain/run-info/v1";
}

/// What one worker must do in one round. Everything that determines its
/// result is here, bound to the round and the base model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Assignment {
    pub run_id: Digest,
    pub round: RoundId,
    pub worker: WorkerId,
    /// The worker's position among the round's participants (sorted by
    /// id): the `worker` coordinate of its random streams, and with the
    /// run's seed and the round what names its shard (the slot-to-shard
    /// permutation is drawn afresh each round:
    /// `crowdtrain_data::round_shard`).
    pub slot: u32,
    /// How many participants, hence how many shards, this round has.
    pub slots: u32,
    pub base_model: Digest,
    /// What to compute: the run's training recipe.
    pub recipe: TrainingRecipe,
    /// Segments the inner steps are cut into for commitments and audits.
    pub segments: u32,
}

impl Assignment {
    /// The part of the round's data this assignment trains.
    pub fn shard(&self) -> Shard {
        Shard { slot: self.slot, slots: self.slots }
    }
}

/// The part of a round's data a worker trains: the shard slot `slot` of
/// `slots` trains in the round (`crowdtrain_data::round_shard`, fixed by
/// the run, the round and these two numbers). With the base model it
/// names the work, so a commitment says which
/// shard it trained: a round can open again on the same model with other
/// participants (a provisional round withdrawn because an audit took a
/// worker out), and work trained for the old shard would then fail its
/// audit instead of being trained again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Shard {
    pub slot: u32,
    pub slots: u32,
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "shard {} of {}", self.slot, self.slots)
    }
}

/// Where the run stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// No round is open: too few active workers.
    Waiting,
    /// A round is open and training: commitments are due.
    Committing,
    /// The commit phase is over: reveals and audit answers are due.
    Revealing,
    /// All rounds are done.
    Finished,
}

/// A round's audit secret, as 64 hex digits once revealed.
#[derive(Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub struct Secret(pub [u8; 32]);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({})", hex::encode(self.0))
    }
}

impl From<Secret> for String {
    fn from(secret: Secret) -> Self {
        hex::encode(secret.0)
    }
}

impl TryFrom<String> for Secret {
    type Error = String;
    fn try_from(text: String) -> Result<Self, Self::Error> {
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(&text, &mut bytes).map_err(|_| "a secret is 64 hex digits".to_owned())?;
        Ok(Self(bytes))
    }
}

/// The current round, as one worker sees it (`GET /v1/round`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoundView {
    pub run_id: Digest,
    pub phase: Phase,
    pub round: Option<RoundId>,
    pub completed_rounds: u64,
    /// The open round's base model, or the latest model otherwise.
    pub model: Digest,
    /// The deadline of the open round's current phase.
    pub deadline_unix_ms: Option<u64>,
    /// The hash of the round's audit secret, published when it opens.
    pub secret_commitment: Option<Digest>,
    /// The secret itself, once the commit phase is over.
    pub secret: Option<Secret>,
    pub assignment: Option<Assignment>,
    /// Whether this worker's commitment for the open round is in.
    pub committed: bool,
    /// Whether this worker's reveal for the open round is in.
    pub revealed: bool,
    /// The segment this worker must answer an audit for, if drawn.
    pub audit: Option<u32>,
    /// Whether that audit has been answered (or judged).
    pub audit_answered: bool,
    /// A delegated audit this worker must replay now, if any.
    pub audit_task: Option<AuditTaskRef>,
    /// Whether the round is open provisionally: on the model the previous
    /// round gives if its last audits pass, which are still being
    /// replayed. Train on it; commitments are refused as too early until
    /// they pass, and if one fails the round is withdrawn and opens again
    /// on the model without that update.
    #[serde(default)]
    pub provisional: bool,
    /// Under a delayed outer update (`[outer] delay` d >= 1), the round
    /// opened ahead after this one, as this worker sees it: train it while
    /// revealing (and answering the audit of) this one. Its base is final:
    /// no verdict of this round withdraws it. Under d = 2 its own `ahead` is
    /// the round after it (the chain is at most d long).
    #[serde(default)]
    pub ahead: Option<Box<RoundView>>,
}

/// A commitment as a worker posts it (`POST /v1/rounds/{round}/commitments`,
/// JSON): the commitment's fields, and under `audit.replay = "from-start"`
/// the boundary leaves its Merkle root is over (start first; checked with
/// [`crate::judge::check_boundaries`]), which an audit replayed from the
/// round's start compares against. Other runs send none, so their bodies
/// are the bare commitment they always were.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommitBody {
    #[serde(flatten)]
    pub commitment: crate::Commitment,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub boundaries: Vec<Digest>,
}

/// An audited worker's segment a delegated auditor must replay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditTaskRef {
    pub worker: WorkerId,
    pub segment: u32,
}

/// What a delegated auditor replays (`GET /v1/rounds/{round}/audit-tasks/{worker}`,
/// postcard, signed by the coordinator): the audited worker's assignment
/// and the state at the start of the drawn segment, checked by the
/// coordinator against the commitment. Not the claimed end: the auditor
/// must compute it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditTask {
    pub assignment: Assignment,
    pub segment: u32,
    /// The canonical bytes of the start state (see `TrainState::to_bytes`).
    pub start_state: Vec<u8>,
    /// For the last segment under error feedback: the residual the audited
    /// worker started the round with (its digest checked against the
    /// commitment), which the update it sent included; empty otherwise.
    pub residual_in: Vec<f32>,
}

impl SignedBody for AuditTask {
    const DOMAIN: &'static str = "crowdtrain/audit-task/v1";
}

/// What a delegated auditor reports (`POST /v1/rounds/{round}/audit-tasks/{worker}`,
/// postcard): the state hash its replay ended at, and for the last segment
/// the digest of the update that state gives and, under error feedback, the
/// digest of the residual that encoding leaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditReport {
    pub end_hash: Digest,
    pub payload: Option<Digest>,
    pub residual_out: Option<Digest>,
}

impl SignedBody for RoundView {
    const DOMAIN: &'static str = "crowdtrain/round-view/v2";
}

/// What a receipt acknowledges.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Stage {
    Commitment,
    Reveal,
    AuditAnswer,
    /// A delegated auditor's report on another worker's segment.
    AuditReport,
}

/// What became of what a receipt acknowledges.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReceiptStatus {
    /// A commitment or reveal in time for its phase.
    Accepted,
    /// A commitment or reveal after its phase: kept, never counted.
    Late,
    /// A reveal that does not hash to its commitment (recorded and slashed).
    Mismatch,
    /// A reveal that is the committed update but not a valid one.
    Malformed,
    /// An audit answer whose proofs hold: the coordinator replays it now.
    Replaying,
    /// An audit answer whose proofs hold, handed to a delegated auditor.
    Delegated,
    /// An audit answer whose proofs do not hold: the audit failed.
    Failed,
    /// A delegated auditor's report that agrees with the commitment.
    Agreed,
    /// A delegated auditor's report that disagrees: the coordinator
    /// replayed the segment itself, and its verdict stands.
    #[serde(rename = "re-checked")]
    Rechecked,
}

impl ReceiptStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Accepted => "accepted",
            Self::Late => "late",
            Self::Mismatch => "mismatch",
            Self::Malformed => "malformed",
            Self::Replaying => "replaying",
            Self::Delegated => "delegated",
            Self::Failed => "failed",
            Self::Agreed => "agreed",
            Self::Rechecked => "re-checked",
        }
    }
}

impl fmt::Display for ReceiptStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<crate::coordinator::Recorded> for ReceiptStatus {
    fn from(recorded: crate::coordinator::Recorded) -> Self {
        use crate::coordinator::Recorded;
        match recorded {
            Recorded::Accepted => Self::Accepted,
            Recorded::Late => Self::Late,
            Recorded::Mismatch => Self::Mismatch,
            Recorded::Malformed => Self::Malformed,
        }
    }
}

/// The coordinator's signed acknowledgement of a commitment, reveal or
/// audit answer: the worker's proof that it delivered, and when.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Receipt {
    pub run_id: Digest,
    pub round: RoundId,
    pub worker: WorkerId,
    pub stage: Stage,
    pub status: ReceiptStatus,
    /// The digest of what was received.
    pub digest: Digest,
    pub received_unix_ms: u64,
    /// On a commitment's receipt: the segment the commitment drew for an
    /// audit the worker answers now (the same draw its round view shows),
    /// so that the answer goes out without another request first.
    pub audit: Option<u32>,
}

impl SignedBody for Receipt {
    const DOMAIN: &'static str = "crowdtrain/receipt/v3";
}

/// The answer to a commitment sent with its reveal
/// (`POST /v1/rounds/{round}/commitments?with_reveal=N`: the body is the
/// commitment's JSON followed by the N bytes of the encoded update), which
/// a round takes early (see docs/ARCHITECTURE.md, step 7): one request
/// where there were two, so the round trip between them no longer stands
/// between a round's last commitment and its close.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommittedAndRevealed {
    pub commitment: Signed<Receipt>,
    /// The reveal's receipt, or why it was refused (a mismatch is recorded
    /// and slashed, as when sent alone); `None` when the commitment was not
    /// accepted (late), and so nothing was revealed.
    pub reveal: Option<Result<Signed<Receipt>, ApiError>>,
}

/// A worker's answer to an audit of segment `segment`: the state at the
/// segment's start and the claimed state hash at its end, each with its
/// Merkle proof against the committed root.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditAnswer {
    pub segment: u32,
    /// The canonical bytes of the start state (see `TrainState::to_bytes`).
    pub start_state: Vec<u8>,
    pub start_proof: crate::merkle::Proof,
    pub end_hash: Digest,
    pub end_proof: crate::merkle::Proof,
    /// For the last segment of a commitment that names a `residual_in`:
    /// that residual (the model's length, checked against the digest), so
    /// the auditor can recompute the update and the residual kept; empty
    /// otherwise.
    pub residual_in: Vec<f32>,
}

/// What a worker registers with (`POST /v1/workers`, JSON, signed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    /// The worker's determinism class (the kernels its CPU runs).
    pub class: String,
    /// An admission token from the run's operator, when the run admits
    /// workers by token (see [`crate::admission`]).
    #[serde(default)]
    pub token: Option<String>,
    /// The option chosen from the run's contract menu, when it offers one
    /// (see [`crate::contract`]).
    #[serde(default)]
    pub choice: Option<ContractChoice>,
}

/// Registration's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Registration {
    pub run_id: Digest,
    pub worker: WorkerId,
    pub public_key: PublicKey,
}

impl SignedBody for Registration {
    const DOMAIN: &'static str = "crowdtrain/registration/v1";
}

/// Machine-readable reasons for a refused request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorCode {
    Unauthenticated,
    BadSignature,
    TooEarly,
    NotCommitted,
    NotAudited,
    RevealMismatch,
    Replayed,
    WrongRun,
    UnknownWorker,
    WrongRound,
    NotAssigned,
    Duplicate,
    StaleModel,
    WrongShape,
    NonFinite,
    TooLarge,
    Late,
    Full,
    Finished,
    NotFound,
    BadRequest,
    Unavailable,
    /// The run admits workers by token or allow-list, and this key is not
    /// (yet) admitted.
    NotAdmitted,
    /// Too many requests, connections or uploads from this address or key
    /// right now: send it again later (the answer's `Retry-After` says
    /// when).
    RateLimited,
    /// The request's body stalled or came too slowly.
    TimedOut,
    /// What was asked for belongs to another participant.
    Forbidden,
    /// In a run that takes bonds, this worker's bond can no longer cover a
    /// slash: it gets no more work.
    BondExhausted,
    /// A commitment's `residual_in` is neither zero nor the `residual_out`
    /// of the worker's last accepted commitment: the worker starts its
    /// error feedback again from zero and commits again.
    ResidualChain,
    /// An update named by its key in the run's bucket (`[storage]`) is
    /// missing, larger than an upload may be, or does not hash to its key:
    /// nothing changed; upload it again and send the reveal again.
    BadObject,
}

/// The JSON body of every 4xx and 5xx answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiError {
    pub error: ErrorCode,
    pub message: String,
}

/// One worker in `GET /v1/status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerStatus {
    pub worker: WorkerId,
    pub public_key: PublicKey,
    pub active: bool,
    pub rounds_assigned: u64,
    /// Submissions aggregated and credited.
    pub submissions_accepted: u64,
    pub submissions_late: u64,
    /// Submissions rejected for a proven fault (each slashed once), or
    /// because the committed update itself was malformed.
    pub submissions_rejected: u64,
    /// Accepted submissions whose updates the checks refused.
    pub submissions_refused: u64,
    pub bytes_uploaded: u64,
    /// Work units of accepted submissions that passed the checks.
    pub verified_work: u64,
    /// Work units lost to slashing.
    pub slashed: u64,
    /// Credits earned so far: verified work the pay gate did not deny, for
    /// the rounds scored so far.
    pub earned: u64,
    /// `earned - slashed`.
    pub credits: i64,
    /// The pay gate's evidence (nats) after the worker's latest scored
    /// round that its updates are worse than the round's majority
    /// (`docs/PAY.md`).
    pub quality: Option<f64>,
    pub audits_passed: u64,
    /// Failed or unanswered audits.
    pub audits_failed: u64,
    /// Other workers' segments this worker replayed as a delegated auditor.
    pub audits_judged: u64,
    /// Times its report as an auditor was contradicted (each slashed).
    pub auditor_slashes: u64,
    /// Its determinism class (the kernels its CPU runs).
    pub class: String,
    /// When the coordinator last heard from it (since the coordinator
    /// process started: a restart counts everyone as just seen).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen_unix_ms: Option<u64>,
}

/// One round in `GET /v1/status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoundRecord {
    pub round: RoundId,
    pub status: crate::coordinator::RoundState,
    pub participants: u32,
    /// Commitments in time.
    pub committed: u32,
    /// Reveals that matched their commitments.
    pub revealed: u32,
    /// Submissions aggregated.
    pub accepted: u32,
    /// Submissions audited.
    pub audited: u32,
    /// Workers slashed.
    pub slashed: u32,
    /// Accepted updates the checks refused.
    pub refused: u32,
    /// Whether the round's updates have been scored and rewarded.
    pub scored: bool,
    pub opened_unix_ms: u64,
    pub closed_unix_ms: Option<u64>,
    /// When the last reveal arrived.
    pub last_submission_unix_ms: Option<u64>,
    /// From the last input the round waited for (a reveal or an audit
    /// answer) to the next round being open: the coordinator's own share of
    /// the round.
    pub coordinator_overhead_ms: Option<u64>,
    pub result_model: Option<Digest>,
    pub test_accuracy: Option<f64>,
    pub test_loss: Option<f64>,
    /// The updates its workers revealed, in bytes.
    #[serde(default)]
    pub bytes_uploaded: u64,
    /// The coordinator's bytes of the model this round trained from (whole
    /// or as deltas) served until it closed, shared with no other round
    /// (a base two rounds trained from counts on the first to close);
    /// `None` where not measured.
    #[serde(default)]
    pub bytes_downloaded: Option<u64>,
}

/// The whole run at a glance (`GET /v1/status`), for the demo and the
/// dashboard. Not signed: it is a view, not something to act on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunStatus {
    pub run_id: Digest,
    pub phase: Phase,
    pub round: Option<RoundId>,
    pub completed_rounds: u64,
    pub target_rounds: u64,
    pub model: Digest,
    /// The latest model's state hash (parameters, outer momentum, rounds).
    pub state_hash: String,
    pub test_accuracy: Option<f64>,
    /// The updates the workers revealed, in bytes (recorded, so the whole
    /// run's): what `crowdtrain_received_bytes_total` counts.
    pub bytes_uploaded: u64,
    pub bytes_downloaded: u64,
    /// The audit answers the workers uploaded (and the coordinator
    /// recorded, refuted or not), in bytes, since this coordinator process
    /// started: apart from `bytes_uploaded`, whose meaning (revealed
    /// updates) the benchmarks compare across runs.
    #[serde(default)]
    pub audit_answer_bytes: u64,
    pub workers: Vec<WorkerStatus>,
    /// A page of the rounds, ascending: the latest ones unless the request
    /// asked for others (`?rounds_from=R&rounds_limit=N`).
    pub rounds: Vec<RoundRecord>,
    /// How many rounds the run has opened so far (all pages).
    #[serde(default)]
    pub rounds_total: u64,
    /// The most participants a round can have: the training examples
    /// (less the validation split) in whole batches, or `limits.max_workers`
    /// if that is smaller.
    #[serde(default)]
    pub max_participants: u32,
    /// How workers are admitted (`open`, `token` or `allow-list`).
    #[serde(default)]
    pub admission: String,
    /// Rounds opened ahead of the previous round's last audit verdicts,
    /// and how many of those were withdrawn because a verdict failed,
    /// since this coordinator process started.
    #[serde(default)]
    pub opened_ahead: u64,
    #[serde(default)]
    pub withdrawn_ahead: u64,
}

/// One worker's part in one round, from the ledger's tables: what
/// `GET /v1/workers/{id}` lists, and what a worker's round summary says.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerRound {
    pub round: RoundId,
    /// The round's state (`open` until it closes or fails).
    pub round_state: crate::coordinator::RoundState,
    /// The commitment's status (`accepted`, `late`), if one arrived.
    pub commitment: Option<String>,
    /// The reveal's status (`accepted`, `late`, `mismatch`, `malformed`),
    /// if one arrived.
    pub reveal: Option<String>,
    /// Aggregated and credited with verified work.
    pub accepted: bool,
    /// The work units credited for it.
    pub work: u64,
    /// Why the checks refused its update, if they did.
    pub refused: Option<String>,
    /// The segment drawn for its audit, if it was audited.
    pub audit_segment: Option<u32>,
    /// The audit's verdict (`passed`, `failed`, `unanswered`), once known.
    pub verdict: Option<String>,
    /// Work units slashed in this round.
    pub slashed: u64,
    /// Credits the round's scoring paid, once scored.
    pub reward: Option<u64>,
    /// Whether the round's updates have been scored (credits follow).
    pub scored: bool,
}

/// One worker's own view (`GET /v1/workers/{id}`): its totals as in
/// `GET /v1/status`, and a page of its rounds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerView {
    pub totals: WorkerStatus,
    /// Its rounds from the request's `rounds_from` on, ascending.
    pub rounds: Vec<WorkerRound>,
}

/// One ledger entry as `GET /v1/ledger` shows it: decoded, with its
/// hash (the next entry's `previous`). The signed bytes are what
/// `crowdtrain ledger verify` checks; this is a view of them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LedgerEntryView {
    pub index: u64,
    pub hash: Digest,
    pub previous: Digest,
    pub unix_ms: u64,
    /// The event's kind ([`crate::ledger::Event::kind`]).
    pub kind: String,
    pub event: crate::ledger::Event,
}

/// A page of the ledger (`GET /v1/ledger`), newest first unless it was
/// asked for from an index on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LedgerPage {
    pub entries: Vec<LedgerEntryView>,
    /// How many entries the whole ledger holds.
    pub length: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_signatures_bind_every_field() {
        let identity = Identity::from_seed([3; 32]);
        let run = Digest::of(b"run");
        let auth = RequestAuth::sign(&identity, &run, "POST", "/v1/rounds/3/submissions", 42, b"body");
        let body = BodyDeclaration::of(b"body");
        assert_eq!(auth.verify(&run, "POST", "/v1/rounds/3/submissions", &body), Ok(()));
        let parsed = RequestAuth::parse_header(&auth.to_header()).unwrap();
        assert_eq!(parsed, auth);
        assert_eq!(BodyDeclaration::parse_header(&body.to_header()), Ok(body));
        assert!(auth.verify(&Digest::of(b"other"), "POST", "/v1/rounds/3/submissions", &body).is_err());
        assert!(auth.verify(&run, "GET", "/v1/rounds/3/submissions", &body).is_err());
        assert!(auth.verify(&run, "POST", "/v1/rounds/4/submissions", &body).is_err());
        let other = BodyDeclaration::of(b"bodz");
        assert!(auth.verify(&run, "POST", "/v1/rounds/3/submissions", &other).is_err());
        let longer = BodyDeclaration { length: 5, ..body };
        assert!(
            auth.verify(&run, "POST", "/v1/rounds/3/submissions", &longer).is_err(),
            "the length is bound"
        );
        let renonced = RequestAuth { nonce: 43, ..auth };
        assert!(renonced.verify(&run, "POST", "/v1/rounds/3/submissions", &body).is_err());
        for header in ["", "4", "x:00", &format!("-1:{}", Digest::of(b"").to_hex())] {
            assert!(BodyDeclaration::parse_header(header).is_err(), "{header}");
        }
    }

    #[test]
    fn malformed_auth_headers_are_refused() {
        for header in ["", "a:b", "a:b:c:d", "00:1:00"] {
            assert!(RequestAuth::parse_header(header).is_err(), "{header}");
        }
    }

    #[test]
    fn signed_values_survive_json_and_detect_tampering() {
        let coordinator = Identity::from_seed([5; 32]);
        let receipt = Receipt {
            run_id: Digest::of(b"run"),
            round: 7,
            worker: WorkerId(2),
            stage: Stage::Reveal,
            status: ReceiptStatus::Accepted,
            digest: Digest::of(b"payload"),
            received_unix_ms: 1_700_000_000_000,
            audit: None,
        };
        let signed = Signed::sign(&coordinator, receipt.clone());
        let json = serde_json::to_string(&signed).unwrap();
        let parsed: Signed<Receipt> = serde_json::from_str(&json).unwrap();
        assert_eq!(parsed.verify(&coordinator.public_key()).unwrap(), &receipt);
        let mut tampered = parsed.clone();
        tampered.body.round = 8;
        assert!(tampered.verify(&coordinator.public_key()).is_err());
        assert!(parsed.verify(&Identity::from_seed([6; 32]).public_key()).is_err());
    }
}
