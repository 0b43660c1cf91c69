//! What a worker tells the person (or program) running it, as it happens:
//! one [`WorkerEvent`] per thing worth knowing. The command line renders
//! them as progress bars and one-line summaries, or with `--json-log` as
//! one JSON object per line; the key names below are that format's, and
//! stay stable.

use std::fmt;

use crowdtrain_protocol::wire::{WorkerRound, WorkerStatus};
use crowdtrain_protocol::{Digest, RoundId, WorkerId};
use serde::Serialize;

/// One thing a worker reports. Serialised with its kind under `"event"`
/// (`registered`, `round_started`, `progress`, `uploading`, `uploaded`,
/// `round_summary`, `note`, `finished`).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum WorkerEvent {
    /// The coordinator admitted this worker.
    Registered { worker: WorkerId, run_id: Digest },
    /// Training for a round begins.
    RoundStarted {
        round: RoundId,
        /// Inner steps to train.
        steps: u64,
        /// Examples (or sequences) per step.
        batch: u64,
        /// Its shard among the round's participants.
        slot: u32,
        participants: u32,
        base_model: Digest,
    },
    /// Inner steps done so far (at most every tenth of a second).
    Progress {
        round: RoundId,
        step: u64,
        steps: u64,
        /// Examples trained per second since the round's training began.
        samples_per_second: f64,
    },
    /// Bytes of an upload sent so far (at most every tenth of a second).
    Uploading { round: RoundId, what: Upload, sent: u64, bytes: u64 },
    /// An upload's answer: the receipt's status, or `refused` with the
    /// coordinator's reason.
    Uploaded { round: RoundId, what: Upload, bytes: u64, status: String, reason: Option<String> },
    /// A round this worker was assigned has closed (or failed): what the
    /// ledger says of its part, and its totals so far.
    RoundSummary(RoundSummary),
    /// Anything else worth a line (registration retries, audits replayed
    /// for others, refusals).
    Note { message: String },
    /// The run has finished; the worker's totals as the coordinator keeps
    /// them (the same as `GET /v1/status` and `crowdtrain rewards`).
    Finished { rounds: u64, model: Digest, totals: Option<Totals> },
}

/// What an upload carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Upload {
    Commitment,
    Reveal,
    AuditAnswer,
}

impl fmt::Display for Upload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Commitment => "commitment",
            Self::Reveal => "reveal",
            Self::AuditAnswer => "audit answer",
        })
    }
}

/// One round's outcome for this worker, with its running totals.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RoundSummary {
    pub round: RoundId,
    /// `closed` or `failed` (or `open`, for a round the run finished
    /// without closing).
    pub round_state: String,
    /// Aggregated and credited with verified work.
    pub accepted: bool,
    /// Work units credited for it.
    pub work: u64,
    /// Why its update was refused or its submission not accepted, if so.
    pub refused: Option<String>,
    /// Drawn for an audit.
    pub audited: bool,
    /// The audit's verdict (`passed`, `failed`, `unanswered`), once known.
    pub verdict: Option<String>,
    /// Work units slashed in this round.
    pub slashed: u64,
    /// Credits paid for this round once it has been scored.
    pub reward: Option<u64>,
    /// Totals so far.
    pub totals: Totals,
}

/// A worker's totals, as the coordinator keeps them.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Totals {
    /// Submissions aggregated and credited (`submissions_accepted` in
    /// `GET /v1/status`).
    pub submissions_accepted: u64,
    pub verified_work: u64,
    pub audits_passed: u64,
    pub audits_failed: u64,
    pub slashed: u64,
    /// Credits earned less slashed (`credits` in `GET /v1/status`).
    pub credits: i64,
}

impl From<&WorkerStatus> for Totals {
    fn from(status: &WorkerStatus) -> Self {
        Self {
            submissions_accepted: status.submissions_accepted,
            verified_work: status.verified_work,
            audits_passed: status.audits_passed,
            audits_failed: status.audits_failed,
            slashed: status.slashed,
            credits: status.credits,
        }
    }
}

impl RoundSummary {
    pub fn new(round: &WorkerRound, totals: &WorkerStatus) -> Self {
        let refused = round.refused.clone().or_else(|| match (&round.commitment, &round.reveal) {
            _ if round.accepted => None,
            _ if round.verdict.as_deref().is_some_and(|verdict| verdict != "passed") => {
                Some(format!("audit {}", round.verdict.as_deref().unwrap_or_default()))
            }
            (None, _) => Some("no commitment".into()),
            (Some(status), _) if status != "accepted" => Some(format!("commitment {status}")),
            (_, None) => Some("no reveal".into()),
            (_, Some(status)) if status != "accepted" => Some(format!("reveal {status}")),
            _ => None,
        });
        Self {
            round: round.round,
            round_state: round.round_state.as_str().to_owned(),
            accepted: round.accepted,
            work: round.work,
            refused,
            audited: round.audit_segment.is_some(),
            verdict: round.verdict.clone(),
            slashed: round.slashed,
            reward: round.reward,
            totals: Totals::from(totals),
        }
    }
}

impl fmt::Display for RoundSummary {
    /// The one line a person reads after each round.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "round {}: ", self.round)?;
        match (&self.refused, self.accepted) {
            (_, true) => write!(f, "accepted ({} work units)", self.work)?,
            (Some(reason), false) => write!(f, "not accepted ({reason})")?,
            (None, false) => write!(f, "not accepted (round {})", self.round_state)?,
        }
        match (self.audited, &self.verdict) {
            (false, _) => f.write_str(", not audited")?,
            (true, Some(verdict)) => write!(f, ", audited: {verdict}")?,
            (true, None) => f.write_str(", audited: verdict pending")?,
        }
        if self.slashed > 0 {
            write!(f, ", {} slashed", self.slashed)?;
        }
        let totals = &self.totals;
        write!(
            f,
            "; so far {} accepted, audits {} passed {} failed, {} credits",
            totals.submissions_accepted, totals.audits_passed, totals.audits_failed, totals.credits
        )
    }
}

impl WorkerEvent {
    /// The line a person reads for this event; `None` for what progress
    /// bars show instead (progress, upload progress).
    pub fn line(&self) -> Option<String> {
        match self {
            Self::Registered { worker, run_id } => {
                Some(format!("registered as {worker} in run {}", &run_id.to_hex()[..16]))
            }
            Self::RoundStarted { .. } | Self::Progress { .. } | Self::Uploading { .. } => None,
            Self::Uploaded { round, what, bytes, status, reason } => Some(match reason {
                Some(reason) => format!("round {round}: {what} refused: {reason}"),
                None => format!("round {round}: {what} sent ({bytes} bytes): {status}"),
            }),
            Self::RoundSummary(summary) => Some(summary.to_string()),
            Self::Note { message } => Some(message.clone()),
            Self::Finished { rounds, model, totals } => Some(match totals {
                Some(totals) => format!(
                    "run finished after {rounds} rounds; final model {model}; this worker: {} submissions \
                     accepted, {} verified work units, {} credits",
                    totals.submissions_accepted, totals.verified_work, totals.credits
                ),
                None => format!("run finished after {rounds} rounds; final model {model}"),
            }),
        }
    }
}
