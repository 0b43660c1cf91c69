//! The ledger: an append-only, hash-chained, signed record of everything
//! that decides who earns what.
//!
//! Every entry names the hash of the one before it and is signed by the
//! coordinator, so a reader with the coordinator's public key can check the
//! whole history: that nothing was changed, inserted, reordered or dropped
//! from the middle, and that the coordinator said each thing. The entries
//! are the run's [`Event`]s (registrations, rounds opened, commitments,
//! the audit draw with its secret, reveals, verdicts, slashes, accepted
//! work, refused updates, rewards), the one record of each fact: the
//! coordinator's tables are built from them and a restarted coordinator
//! replays them, so the audit draw and every payment can be recomputed from
//! the ledger alone, and every quality score from the ledger with the run's
//! checkpoints and submissions.
//!
//! The canonical form of an entry is its postcard encoding; its hash is
//! BLAKE3 (derive-key mode) of those bytes; the signature is over the hash.

pub use crowdtrain_recipe::PayGate;
use serde::{Deserialize, Serialize};

use crate::admission::TokenId;
use crate::audit::Commitment;
use crate::contract::{ContractChoice, ContractMenu};
use crate::coordinator::{Recorded, Verdict};
use crate::identity::{Identity, PublicKey, SignatureBytes};
use crate::ids::{Digest, RoundId, WorkerId};
use crate::reward_model::ModelReward;

const ENTRY_CONTEXT: &str = "crowdtrain 2026-12 ledger entry v2";
const SIGNATURE_DOMAIN: &str = "crowdtrain/ledger/v2";

/// What happened: the one record of every fact that decides the run.
///
/// The round state machine emits these ([`crate::Action::Record`]); the
/// store builds its tables from them and appends them, signed, to the
/// ledger in the same transaction; a restarted coordinator replays them
/// into a new machine. Each carries everything those three need, so no
/// fact is written down twice.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Event {
    RunStarted {
        run_id: Digest,
        coordinator: PublicKey,
        config: Digest,
        initial_model: Digest,
        initial_momentum: Digest,
    },
    /// A worker joined, with its determinism class (the kernels its CPU
    /// runs: only a worker of the same class replays its segments).
    WorkerRegistered {
        worker: WorkerId,
        key: PublicKey,
        class: String,
        registered_unix_ms: u64,
        /// The admission token it used, if the run admits by token: a
        /// token admits one key.
        token: Option<TokenId>,
    },
    /// A round opened; `participants` in slot order (ascending id).
    RoundOpened {
        round: RoundId,
        base_model: Digest,
        participants: Vec<WorkerId>,
        opened_unix_ms: u64,
        commit_deadline_unix_ms: u64,
        secret_commitment: Digest,
    },
    DeadlineExtended {
        round: RoundId,
        commit_deadline_unix_ms: u64,
        extensions: u32,
    },
    /// A commitment, with the nonce of the request that carried it and the
    /// segment its draw selected for audit (accepted commitments only).
    Commitment {
        round: RoundId,
        worker: WorkerId,
        commitment: Commitment,
        status: Recorded,
        audit: Option<u32>,
        nonce: u64,
        received_unix_ms: u64,
    },
    /// The commit phase ended: the secret, the beacon, who is audited, and
    /// (when audits are delegated) who replays whom.
    AuditDraw {
        round: RoundId,
        secret: [u8; 32],
        beacon: Digest,
        audits: Vec<(WorkerId, u32)>,
        auditors: Vec<(WorkerId, WorkerId)>,
        reveal_deadline_unix_ms: u64,
    },
    /// An audit answer whose proofs checked, kept (as a content-addressed
    /// file named `answer`) until its verdict and after, as evidence.
    AuditAnswered {
        round: RoundId,
        worker: WorkerId,
        answer: Digest,
        nonce: u64,
        received_unix_ms: u64,
    },
    /// A reveal: the digest of the uploaded update (kept in the store) and
    /// how it was recorded.
    Reveal {
        round: RoundId,
        worker: WorkerId,
        payload: Digest,
        status: Recorded,
        nonce: u64,
        received_unix_ms: u64,
    },
    /// An audit's verdict, who replayed the segment (`None`: the
    /// coordinator), and the request that delivered it (sender and nonce).
    Audit {
        round: RoundId,
        worker: WorkerId,
        segment: u32,
        verdict: Verdict,
        judged_by: Option<WorkerId>,
        sender: Option<(WorkerId, u64)>,
        decided_unix_ms: u64,
    },
    /// A delegated auditor reported a replay that the coordinator's own
    /// replay contradicted.
    AuditorSlashed {
        round: RoundId,
        auditor: WorkerId,
        audited: WorkerId,
        amount: u64,
        reason: String,
    },
    Slash {
        round: RoundId,
        worker: WorkerId,
        amount: u64,
        reason: String,
    },
    /// The checks refused an accepted submission's update: not aggregated,
    /// not credited.
    UpdateRefused {
        round: RoundId,
        worker: WorkerId,
        reason: String,
    },
    /// The round is aggregated: its new model and outer momentum, the
    /// aggregator's snapshot if this round keeps one, and the workers
    /// whose updates made it.
    RoundClosed {
        round: RoundId,
        result_model: Digest,
        result_momentum: Digest,
        result_aggregator: Option<Digest>,
        accepted: Vec<WorkerId>,
        closed_unix_ms: u64,
    },
    /// Verified work: an accepted submission whose update passed the checks
    /// (audited and passed, or not drawn).
    WorkAccepted {
        round: RoundId,
        worker: WorkerId,
        units: u64,
    },
    RoundFailed {
        round: RoundId,
        reason: String,
        closed_unix_ms: u64,
    },
    /// What verified work earned once scored on held-out data.
    Reward(Reward),
    /// Every credited update of the round is scored and rewarded.
    RoundScored {
        round: RoundId,
    },
    RunFinished {
        final_model: Digest,
    },
    /// The run's contract menu, solved from `[contract]` when the run
    /// started, before any worker could choose (issue 15).
    ContractPublished {
        menu: ContractMenu,
    },
    /// A participant chose an option of the menu, signed with its key
    /// ([`ContractChoice::verify`] against its `worker-registered` key). A
    /// later entry for the same worker replaces it; none is accepted after
    /// the run's first round opened.
    OptionChosen {
        worker: WorkerId,
        choice: ContractChoice,
    },
    /// The pay gate denied `worker` in `round`: the credits of its rewards
    /// from `first_round` up to `round` (still in escrow) are taken back.
    PayWithheld {
        round: RoundId,
        worker: WorkerId,
        first_round: RoundId,
        credits: u64,
    },
    /// At the end of a run with a contract: a participant's model reward,
    /// made from the run's checkpoints (its recipe) or withheld (issue 15,
    /// `docs/CONTRACT.md`). One per participant that chose an option.
    ModelRewarded(ModelReward),
    /// `worker` has a bond of `amount` work units that slashes draw on
    /// (`[admission] mode = "bond"`: recorded when the operator's token
    /// admits it, see `crate::collateral`).
    BondDeposited {
        worker: WorkerId,
        amount: u64,
    },
    /// How the slash of `worker` in `round` recorded just before was drawn:
    /// from its escrowed credits, from its bond, and what neither covered.
    SlashDrawn {
        round: RoundId,
        worker: WorkerId,
        escrow: u64,
        bond: u64,
        uncovered: u64,
    },
    /// Escrowed credits of rounds up to `round` vested: each worker's
    /// amount is its to keep.
    Vested {
        round: RoundId,
        credits: Vec<(WorkerId, u64)>,
    },
}

impl Event {
    /// A short name for queries and tables.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::RunStarted { .. } => "run-started",
            Self::WorkerRegistered { .. } => "worker-registered",
            Self::RoundOpened { .. } => "round-opened",
            Self::DeadlineExtended { .. } => "deadline-extended",
            Self::Commitment { .. } => "commitment",
            Self::AuditDraw { .. } => "audit-draw",
            Self::AuditAnswered { .. } => "audit-answered",
            Self::Reveal { .. } => "reveal",
            Self::Audit { .. } => "audit",
            Self::AuditorSlashed { .. } => "auditor-slashed",
            Self::Slash { .. } => "slash",
            Self::WorkAccepted { .. } => "work-accepted",
            Self::UpdateRefused { .. } => "update-refused",
            Self::Reward(_) => "reward",
            Self::RoundScored { .. } => "round-scored",
            Self::RoundClosed { .. } => "round-closed",
            Self::RoundFailed { .. } => "round-failed",
            Self::RunFinished { .. } => "run-finished",
            Self::ContractPublished { .. } => "contract-published",
            Self::OptionChosen { .. } => "option-chosen",
            Self::PayWithheld { .. } => "pay-withheld",
            Self::ModelRewarded(_) => "model-rewarded",
            Self::BondDeposited { .. } => "bond-deposited",
            Self::SlashDrawn { .. } => "slash-drawn",
            Self::Vested { .. } => "vested",
        }
    }
}

/// What a worker's verified work in a round earned:
/// `credits = round(units * multiplier)`, the multiplier 1 unless the pay
/// gate denies (`docs/PAY.md`). Credits stay in escrow for the gate's
/// escrow rounds, and a later [`Event::PayWithheld`] may take them back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reward {
    pub round: RoundId,
    pub worker: WorkerId,
    /// Relative held-out loss improvement of the update alone.
    pub score: f64,
    /// The pay gate's evidence after this round (nats) that the worker's
    /// updates are worse than the round's majority.
    pub quality: f64,
    pub multiplier: f64,
    pub units: u64,
    pub credits: u64,
    /// The update's standardised deviation from the round's median score,
    /// `None` when the round gave the test no power.
    pub deviation: Option<f64>,
    /// The gate's verdict after this round.
    pub gate: PayGate,
}

/// One link of the chain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub index: u64,
    /// The hash of entry `index - 1` (all zeros for the first).
    pub previous: Digest,
    pub unix_ms: u64,
    pub event: Event,
}

impl Entry {
    pub fn to_bytes(&self) -> Vec<u8> {
        postcard::to_allocvec(self).expect("ledger entries always encode")
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, String> {
        postcard::from_bytes(bytes).map_err(|error| format!("undecodable entry: {error}"))
    }
}

/// The hash of an entry's canonical bytes.
pub fn entry_hash(bytes: &[u8]) -> Digest {
    let mut hasher = blake3::Hasher::new_derive_key(ENTRY_CONTEXT);
    hasher.update(bytes);
    Digest(*hasher.finalize().as_bytes())
}

/// An entry as stored: its bytes, hash and the coordinator's signature.
#[derive(Debug, Clone, PartialEq)]
pub struct Sealed {
    pub index: u64,
    pub bytes: Vec<u8>,
    pub hash: Digest,
    pub signature: SignatureBytes,
}

/// Appends entries to a chain whose last hash (and next index) it tracks.
#[derive(Debug, Clone)]
pub struct Chain {
    next_index: u64,
    head: Digest,
}

impl Chain {
    /// A chain continuing after `entries` entries whose last hash is `head`.
    pub fn resume(entries: u64, head: Digest) -> Self {
        Self { next_index: entries, head }
    }

    pub fn empty() -> Self {
        Self::resume(0, Digest([0; 32]))
    }

    /// Seals `event` as the next entry.
    pub fn append(&mut self, identity: &Identity, unix_ms: u64, event: Event) -> Sealed {
        let entry = Entry { index: self.next_index, previous: self.head, unix_ms, event };
        let bytes = entry.to_bytes();
        let hash = entry_hash(&bytes);
        let signature = identity.sign(SIGNATURE_DOMAIN, &hash.0);
        self.next_index += 1;
        self.head = hash;
        Sealed { index: entry.index, bytes, hash, signature }
    }
}

/// Where and why a ledger stops being trustworthy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("ledger entry {index} is broken: {reason}")]
pub struct Break {
    pub index: u64,
    pub reason: String,
}

/// Checks sealed entries, in order, against `coordinator`'s key: indices,
/// links, hashes, signatures and decodability. Returns the decoded entries,
/// or the first broken one.
pub fn verify<'a>(
    sealed: impl IntoIterator<Item = &'a Sealed>,
    coordinator: &PublicKey,
) -> Result<Vec<Entry>, Break> {
    let mut entries = Vec::new();
    let mut previous = Digest([0; 32]);
    let verifier = coordinator.verifier();
    for (position, seal) in sealed.into_iter().enumerate() {
        let position = position as u64;
        let broken = |reason: String| Break { index: position, reason };
        if seal.index != position {
            return Err(broken(format!("stored at index {}, expected {position}", seal.index)));
        }
        if entry_hash(&seal.bytes) != seal.hash {
            return Err(broken("its content does not hash to its recorded hash".into()));
        }
        let signed = verifier
            .as_ref()
            .is_ok_and(|verifier| verifier.verify(SIGNATURE_DOMAIN, &seal.hash.0, &seal.signature).is_ok());
        if !signed {
            return Err(broken("the coordinator's signature does not verify".into()));
        }
        let entry = Entry::from_bytes(&seal.bytes).map_err(broken)?;
        if entry.index != position {
            return Err(broken(format!("says it is entry {}", entry.index)));
        }
        if entry.previous != previous {
            return Err(broken("it does not link to the entry before it".into()));
        }
        previous = seal.hash;
        entries.push(entry);
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(identity: &Identity, count: u64) -> Vec<Sealed> {
        let mut chain = Chain::empty();
        (0..count)
            .map(|round| {
                chain.append(
                    identity,
                    1000 + round,
                    Event::WorkAccepted { round, worker: WorkerId(round % 3), units: 64 },
                )
            })
            .collect()
    }

    #[test]
    fn an_untouched_chain_verifies_and_decodes() {
        let identity = Identity::from_seed([4; 32]);
        let sealed = chain(&identity, 5);
        let entries = verify(&sealed, &identity.public_key()).unwrap();
        assert_eq!(entries.len(), 5);
        assert_eq!(entries[3].event, Event::WorkAccepted { round: 3, worker: WorkerId(0), units: 64 });
        // Resuming continues the same chain.
        let mut resumed = Chain::resume(5, sealed[4].hash);
        let mut longer = sealed.clone();
        longer.push(resumed.append(&identity, 2000, Event::RunFinished { final_model: Digest::of(b"m") }));
        assert!(verify(&longer, &identity.public_key()).is_ok());
    }

    #[test]
    fn every_kind_of_tampering_names_the_first_broken_entry() {
        let identity = Identity::from_seed([4; 32]);
        let key = identity.public_key();
        let sealed = chain(&identity, 6);
        // A flipped bit anywhere in an entry's bytes.
        for byte in 0..sealed[2].bytes.len() {
            let mut tampered = sealed.clone();
            tampered[2].bytes[byte] ^= 0x01;
            assert_eq!(verify(&tampered, &key).unwrap_err().index, 2, "byte {byte}");
        }
        // A forged hash (and a body that matches it) without the key.
        let mut forged = sealed.clone();
        forged[3].bytes[0] ^= 1;
        forged[3].hash = entry_hash(&forged[3].bytes);
        assert_eq!(verify(&forged, &key).unwrap_err().index, 3);
        // A dropped entry in the middle, and swapped entries.
        let mut dropped = sealed.clone();
        dropped.remove(1);
        assert_eq!(verify(&dropped, &key).unwrap_err().index, 1);
        let mut swapped = sealed.clone();
        swapped.swap(4, 5);
        assert_eq!(verify(&swapped, &key).unwrap_err().index, 4);
        // A re-signed chain by another key.
        assert_eq!(verify(&chain(&Identity::from_seed([5; 32]), 6), &key).unwrap_err().index, 0);
        // A corrupted signature.
        let mut unsigned = sealed.clone();
        unsigned[5].signature.0[0] ^= 1;
        assert_eq!(verify(&unsigned, &key).unwrap_err().index, 5);
    }
}
