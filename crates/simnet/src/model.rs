//! The stand-in for training: what a worker computes for an assignment,
//! derived by hashing `(seed, round, worker, base model)`.
//!
//! The protocol never looks inside an update except through the defence's
//! checks and aggregator, and never inside training except through a
//! replay's verdict, so the simulator replaces both with hashes: an honest
//! worker's update is a small vector of pseudo-random values and its trace
//! (Merkle root, audit answer) is a digest nobody can produce without the
//! assignment. A replay recomputes the honest trace and compares. That
//! keeps 1,000 workers cheap while the coordinator driver, the store and
//! the defence are the real ones: [`SimTraining`] is the driver's
//! [`Training`].

use crowdtrain_coordinator::training::{Audited, Judged, Opened, Stepped, Training};
use crowdtrain_coordinator::{CoordinatorError, Driver, DriverError, Sent, Shell};
use crowdtrain_defense::{Aggregator, AggregatorState};
use crowdtrain_protocol::judge::ReportCheck;
use crowdtrain_protocol::ledger::Event;
use crowdtrain_protocol::wire::ErrorCode;
use crowdtrain_protocol::{Assignment, Commitment, Digest, Identity, Refusal, RoundId, Verdict, WorkerId};
use crowdtrain_store::{RunRecord, Store};

use crate::invariants::{self, Copies, Violation};
use crate::mode::Mode;

/// Values in a simulated update: enough for the defence's norm, duplicate
/// and cosine checks to mean something.
pub const UPDATE_LEN: usize = 16;

/// How the defence aggregates the updates that pass its checks.
pub const AGGREGATOR: crowdtrain_defense::Aggregator = crowdtrain_defense::Aggregator::Median;

/// Segments each commitment covers (the run's `audit.segments`).
pub const SEGMENTS: u32 = 4;

/// How a simulated worker behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Behaviour {
    /// Trains, commits, answers its audit and reveals what it committed.
    Honest,
    /// Does not train: commits a made-up trace and a made-up update
    /// (caught when audited).
    Lazy,
    /// Trains, then reveals something other than its commitment (a
    /// mismatch: always caught and slashed).
    FakeReveal,
    /// Commits another participant's update and trace as its own
    /// (contested when the victim commits too: both are audited and the
    /// copy fails its replay).
    Copier,
    /// Trains honestly but sends a huge update (the defence's norm check
    /// refuses it).
    Harmful,
    /// Commits and reveals bytes that are not a valid update (non-finite
    /// values: recorded as malformed).
    Garbage,
    /// Commits another participant's update with a tiny perturbation (so
    /// no digest names the original) and its trace: refused by the checks
    /// as nearly a copy, then told apart from the original by the
    /// challenge's replays, whichever was committed first. Not among
    /// [`Behaviour::ATTACKS`]: `--near-copiers` asks for them, so runs
    /// without keep their bits.
    NearCopier,
    /// Commits a near copy of another's update, as [`Behaviour::NearCopier`],
    /// but with a trace it made up: no other commitment names that trace,
    /// so nothing is contested when the draw is published and its audit
    /// may go to a worker auditor, whom a colluder (any attacking worker)
    /// passes. That delegated pass proves nothing about who copied whom:
    /// the checks find the pair after the reveals and the coordinator
    /// replays the forger itself. `--forgers` asks for them.
    Forger,
}

impl Behaviour {
    /// The attacking behaviours, in the order attackers are given them.
    pub const ATTACKS: [Behaviour; 5] =
        [Behaviour::Lazy, Behaviour::FakeReveal, Behaviour::Copier, Behaviour::Harmful, Behaviour::Garbage];

    pub fn is_honest(self) -> bool {
        self == Behaviour::Honest
    }

    /// Whether this worker's update must never count toward a round: what
    /// the protocol or the defence always catches.
    pub fn never_counts(self) -> bool {
        matches!(self, Behaviour::FakeReveal | Behaviour::Harmful | Behaviour::Garbage)
    }
}

/// The work of one assignment, as a given behaviour produces it.
#[derive(Debug, Clone, PartialEq)]
pub struct Work {
    pub commitment: Commitment,
    /// The bytes revealed.
    pub reveal: Vec<u8>,
    /// The audit answer, whatever the segment (the stand-in answer does not
    /// depend on it beyond the hash).
    answer_key: Digest,
}

impl Work {
    /// The answer sent for `segment`.
    pub fn answer(&self, segment: u32) -> Digest {
        keyed(&[b"answer", &self.answer_key.0, &segment.to_le_bytes()])
    }
}

fn keyed(parts: &[&[u8]]) -> Digest {
    let mut hasher = blake3::Hasher::new_derive_key("crowdtrain simnet stand-in training v1");
    for part in parts {
        hasher.update(&(part.len() as u64).to_le_bytes());
        hasher.update(part);
    }
    Digest(*hasher.finalize().as_bytes())
}

/// What honest training of `worker`'s assignment in `round` on `base`
/// gives: the update's values, its trace's root and the key of its audit
/// answers.
fn honest(seed: u64, round: RoundId, worker: WorkerId, base: Digest) -> (Vec<f32>, Digest, Digest) {
    let id = [&seed.to_le_bytes()[..], &round.to_le_bytes(), &worker.0.to_le_bytes(), &base.0].concat();
    let values = uniform(keyed(&[b"update", &id]));
    (values, keyed(&[b"root", &id]), keyed(&[b"answer-key", &id]))
}

/// [`UPDATE_LEN`] values uniform in [-1, 1) from `stream`: every honest
/// update has about the same norm.
fn uniform(stream: Digest) -> Vec<f32> {
    let mut values = Vec::with_capacity(UPDATE_LEN);
    let mut block = blake3::Hasher::new_keyed(&stream.0).finalize_xof();
    for _ in 0..UPDATE_LEN {
        let mut word = [0u8; 4];
        block.fill(&mut word);
        values.push((u32::from_le_bytes(word) >> 8) as f32 / (1 << 23) as f32 - 1.0);
    }
    values
}

/// The bytes of an update, as sent (little-endian `f32`s).
pub fn encode(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|value| value.to_le_bytes()).collect()
}

/// The values of an update's bytes, if they are a valid update: the
/// model's length and finite (what the coordinator refuses as malformed
/// otherwise).
pub fn decode(bytes: &[u8]) -> Option<Vec<f32>> {
    if bytes.len() != UPDATE_LEN * 4 {
        return None;
    }
    let values: Vec<f32> =
        bytes.chunks_exact(4).map(|word| f32::from_le_bytes(word.try_into().expect("4 bytes"))).collect();
    values.iter().all(|value| value.is_finite()).then_some(values)
}

/// The work `behaviour` produces for `worker`'s assignment in `round` on
/// `base`; `victim` is whose work a copier copies.
pub fn work(
    seed: u64,
    behaviour: Behaviour,
    round: RoundId,
    worker: WorkerId,
    base: Digest,
    victim: WorkerId,
) -> Work {
    let (values, root, answer_key) = honest(seed, round, worker, base);
    let commit = |reveal: Vec<u8>, merkle_root: Digest, answer_key: Digest| Work {
        commitment: Commitment {
            merkle_root,
            payload: Digest::of(&reveal),
            segments: SEGMENTS,
            residual_in: None,
            residual_out: None,
        },
        reveal,
        answer_key,
    };
    match behaviour {
        Behaviour::Honest => commit(encode(&values), root, answer_key),
        Behaviour::Lazy => {
            let made_up: Vec<f32> = values.iter().map(|value| value * 0.5 + 0.25).collect();
            let fake = keyed(&[b"lazy", &root.0]);
            commit(encode(&made_up), fake, fake)
        }
        Behaviour::FakeReveal => {
            let mut work = commit(encode(&values), root, answer_key);
            work.reveal = encode(&values.iter().map(|value| -value).collect::<Vec<_>>());
            work
        }
        Behaviour::Copier => {
            let (stolen, root, answer_key) = honest(seed, round, victim, base);
            commit(encode(&stolen), root, answer_key)
        }
        Behaviour::NearCopier => {
            // Noise at 10^-3 of the values' scale, as the real worker's
            // `near-copy` adds at 10^-3 of the update's norm.
            let (stolen, root, answer_key) = honest(seed, round, victim, base);
            let noise = uniform(keyed(&[b"near copy", &round.to_le_bytes(), &worker.0.to_le_bytes()]));
            let near: Vec<f32> =
                stolen.iter().zip(noise).map(|(value, noise)| value + 1e-3 * noise).collect();
            commit(encode(&near), root, answer_key)
        }
        Behaviour::Forger => {
            let (stolen, _, _) = honest(seed, round, victim, base);
            let noise = uniform(keyed(&[b"forged copy", &round.to_le_bytes(), &worker.0.to_le_bytes()]));
            let near: Vec<f32> =
                stolen.iter().zip(noise).map(|(value, noise)| value + 1e-3 * noise).collect();
            let made_up = keyed(&[b"forged trace", &root.0]);
            commit(encode(&near), made_up, made_up)
        }
        Behaviour::Harmful => {
            commit(encode(&values.iter().map(|value| value * 1000.0).collect::<Vec<_>>()), root, answer_key)
        }
        Behaviour::Garbage => {
            let mut garbage = values.clone();
            garbage[0] = f32::NAN;
            commit(encode(&garbage), root, answer_key)
        }
    }
}

/// Whose work a copier among `worker`'s assignment copies: its neighbour's.
pub fn victim(worker: WorkerId) -> WorkerId {
    WorkerId(if worker.0 == 0 { 1 } else { worker.0 - 1 })
}

/// What a replay of an audited segment gives (or what an auditor claims it
/// gave): the trace's root and the segment's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Report {
    pub root: Digest,
    pub answer: Digest,
}

impl Report {
    /// Whether this replay vouches for `commitment` and the stored
    /// `answer`: both must be what it reproduced.
    pub fn passes(&self, commitment: &Commitment, answer: Digest) -> bool {
        commitment.merkle_root == self.root && answer == self.answer
    }
}

/// An honest replay of `worker`'s `segment` of its assignment in `round`
/// on `base` (the coordinator's, or an honest auditor's).
pub fn replay(seed: u64, round: RoundId, worker: WorkerId, base: Digest, segment: u32) -> Report {
    let honest = work(seed, Behaviour::Honest, round, worker, base, worker);
    Report { root: honest.commitment.merkle_root, answer: honest.answer(segment) }
}

/// The model an aggregate of updates to `base` gives: named by their hash
/// (the stand-in for an outer step), with its momentum.
pub fn next_model(base: Digest, aggregate: &[f32]) -> (Digest, Digest) {
    let model = Digest::of(&[&base.0[..], &encode(aggregate)].concat());
    (model, Digest::of(&[&b"momentum"[..], &model.0].concat()))
}

/// The stand-in training as the coordinator driver runs it
/// ([`crowdtrain_coordinator::Driver`]`<SimTraining>`): updates are
/// [`UPDATE_LEN`] raw values, the outer step is [`next_model`], an answer is
/// a digest recorded in the store (no file) and a replay is [`replay`].
pub struct SimTraining {
    seed: u64,
    /// The latest global model's name: the stand-in's whole global state.
    model: Digest,
}

impl SimTraining {
    /// Whether an honest replay of `audit` reproduces its commitment and
    /// the answer `store` recorded for it.
    pub fn replay_passes(&self, store: &Store, audit: &Audited) -> Result<bool, CoordinatorError> {
        let Audited { round, worker, segment, commitment, assignment } = audit;
        let answer = store.audit_answer_digest(*round, *worker)?;
        let honest = replay(self.seed, *round, *worker, assignment.base_model, *segment);
        if answer == boundaries_answer(commitment) {
            // Replayed from the start: the whole trace must be the honest one.
            return Ok(honest.root == commitment.merkle_root);
        }
        Ok(honest.passes(commitment, answer))
    }
}

impl Training for SimTraining {
    /// The new model is named by its digest alone.
    type Global = ();
    type Report = Report;
    /// The coordinator replays stored answers like fresh ones: after a
    /// while, in the simulated world.
    type Replay = (RoundId, WorkerId);
    /// The run's seed, which keys every worker's stand-in work.
    type Setup = u64;

    /// The [`AGGREGATOR`] keeps no state to restore.
    fn open(
        seed: u64,
        store: &Store,
        record: &RunRecord,
        aggregator: &Aggregator,
    ) -> Result<Opened<Self>, CoordinatorError> {
        debug_assert!(!aggregator.is_stateful(), "the stand-in's aggregator keeps no state");
        let model = store.latest_result()?.map_or(record.initial_model, |latest| latest.model);
        Ok(Opened { training: Self { seed, model }, aggregator: Default::default() })
    }

    fn parameters(&self) -> usize {
        UPDATE_LEN
    }

    fn decode(&self, bytes: &[u8]) -> Result<Vec<f32>, CoordinatorError> {
        decode(bytes).ok_or_else(|| CoordinatorError::Corrupt("an accepted update does not decode".into()))
    }

    fn model(&self) -> Digest {
        self.model
    }

    fn step(
        &mut self,
        aggregate: &[f32],
        _aggregator: &dyn Fn() -> Option<AggregatorState>,
    ) -> Result<Stepped<()>, CoordinatorError> {
        let (model, momentum) = next_model(self.model, aggregate);
        Ok(Stepped { global: (), model, momentum, aggregator: None, serve: None, write: None })
    }

    fn advance(&mut self, _next: (), model: Digest) {
        self.model = model;
    }

    /// A stand-in answer has no proofs to check before its replay.
    fn judge_stored(
        &mut self,
        _store: &Store,
        audit: Audited,
    ) -> Result<Judged<(RoundId, WorkerId)>, CoordinatorError> {
        Ok(Judged::Replay((audit.round, audit.worker)))
    }

    fn recheck(
        &mut self,
        store: &Store,
        audit: &Audited,
        report: &Report,
    ) -> Result<ReportCheck, DriverError> {
        let answer = store.audit_answer_digest(audit.round, audit.worker).map_err(CoordinatorError::from)?;
        if report.passes(&audit.commitment, answer) {
            return Ok(ReportCheck::Agrees);
        }
        let own = replay(self.seed, audit.round, audit.worker, audit.assignment.base_model, audit.segment);
        Ok(ReportCheck::Rechecked {
            verdict: verdict_of(own.passes(&audit.commitment, answer)),
            contradicts: own != *report,
        })
    }

    /// The stand-in's leaves are its commitment's root ([`HashMode`]).
    fn check_boundaries(&self, commitment: &Commitment, leaves: &[Digest]) -> Result<(), String> {
        if leaves != [commitment.merkle_root] {
            return Err("the boundary leaves are not the committed trace's".into());
        }
        Ok(())
    }

    fn keep_boundaries(&self, leaves: &[Digest]) -> Result<Digest, CoordinatorError> {
        Ok(Digest::of(&crowdtrain_protocol::audit::encode_boundaries(leaves)))
    }

    fn replay_from_start(
        &mut self,
        audit: Audited,
        _leaves: Vec<Digest>,
    ) -> Result<(RoundId, WorkerId), CoordinatorError> {
        Ok((audit.round, audit.worker))
    }

    /// Stand-in answers are digests in the store: no file to delete.
    fn prune_answers(&self, _store: &Store, _passed: &[(RoundId, WorkerId)]) -> Result<(), CoordinatorError> {
        Ok(())
    }
}

/// The stand-in training as the world drives it ([`Mode`]).
pub struct HashMode {
    seed: u64,
}

impl HashMode {
    pub fn new(seed: u64) -> Self {
        Self { seed }
    }
}

impl Mode for HashMode {
    type Training = SimTraining;
    type Work = Work;
    type Answer = Digest;
    type Report = Report;

    /// Models are names: the initial one is the seed's.
    fn run_record(
        &mut self,
        seed: u64,
        signer: &Identity,
        created_unix_ms: u64,
    ) -> Result<RunRecord, Violation> {
        Ok(RunRecord {
            run_id: Digest::of(&[&b"simnet run "[..], &seed.to_le_bytes()].concat()),
            protocol_version: 0,
            config_json: "{}".into(),
            coordinator_key: signer.public_key(),
            model_name: "simnet".into(),
            initial_model: Digest::of(&[&b"simnet model 0 "[..], &seed.to_le_bytes()].concat()),
            initial_momentum: Digest::of(b"simnet momentum 0"),
            created_unix_ms,
        })
    }

    fn setup(&self) -> u64 {
        self.seed
    }

    fn replay_of(replay: &(RoundId, WorkerId)) -> (RoundId, WorkerId) {
        *replay
    }

    fn copies(&self) -> Copies {
        Copies::PreviousWorker
    }

    fn work(&mut self, behaviour: Behaviour, assignment: &Assignment) -> Result<Work, Violation> {
        let (round, worker, base) = (assignment.round, assignment.worker, assignment.base_model);
        Ok(work(self.seed, behaviour, round, worker, base, victim(worker)))
    }

    fn commitment(work: &Work) -> Commitment {
        work.commitment
    }

    fn reveal(work: &Work) -> Vec<u8> {
        work.reveal.clone()
    }

    fn answer(work: &Work, segment: u32) -> Digest {
        work.answer(segment)
    }

    /// The stand-in trace has no boundaries of its own: its leaves are
    /// its root, which a replay from the start recomputes whole.
    fn boundaries(work: &Work) -> Vec<Digest> {
        vec![work.commitment.merkle_root]
    }

    fn decode(_driver: &Driver<SimTraining>, bytes: &[u8]) -> Result<Vec<f32>, Refusal> {
        decode(bytes).ok_or_else(|| Refusal {
            code: ErrorCode::BadRequest,
            message: format!("not an update of {UPDATE_LEN} finite values"),
        })
    }

    /// A stand-in answer has no proofs to check: it is recorded.
    fn answered(
        driver: &mut Driver<SimTraining>,
        sent: Sent,
        answer: &Digest,
        shell: &mut impl Shell<SimTraining>,
    ) -> Result<Option<bool>, DriverError> {
        // Without an auditor named, the coordinator replays.
        Ok(Some(driver.audit_answered(sent, *answer, shell)?.is_none()))
    }

    fn replay(driver: &mut Driver<SimTraining>, audit: &Audited) -> Result<Verdict, CoordinatorError> {
        driver.training.replay_passes(&driver.store, audit).map(verdict_of)
    }

    /// An honest auditor reports what its replay gave; a colluding one
    /// vouches for a cheat (it echoes the audited worker's claims) and
    /// accuses an honest worker (reports a trace it made up).
    fn report(
        &mut self,
        _driver: Option<&mut Driver<SimTraining>>,
        honest: bool,
        audited_behaviour: Option<Behaviour>,
        _auditor: WorkerId,
        round: RoundId,
        base: Digest,
        audited: WorkerId,
        segment: u32,
    ) -> Option<Report> {
        let seed = self.seed;
        let truth = replay(seed, round, audited, base, segment);
        Some(match audited_behaviour {
            _ if honest => truth,
            Some(behaviour) if !behaviour.is_honest() => {
                let claimed = work(seed, behaviour, round, audited, base, victim(audited));
                Report { root: claimed.commitment.merkle_root, answer: claimed.answer(segment) }
            }
            _ => Report { root: Digest::of(&truth.root.0), answer: Digest::of(&truth.answer.0) },
        })
    }

    fn fault_free(
        &self,
        events: &[Event],
        initial_model: Digest,
        payloads: impl FnMut(RoundId, &[WorkerId]) -> Result<Vec<Vec<u8>>, Violation>,
    ) -> Result<u64, Violation> {
        invariants::check_fault_free(events, initial_model, payloads)
    }
}

/// The answer the driver records for a stand-in audit replayed from the
/// start: the digest of the leaves it kept ([`Training::keep_boundaries`]).
fn boundaries_answer(commitment: &Commitment) -> Digest {
    Digest::of(&crowdtrain_protocol::audit::encode_boundaries(&[commitment.merkle_root]))
}

/// The coordinator's verdict on a replay that did or did not reproduce the
/// commitment and the answer.
pub fn verdict_of(passes: bool) -> Verdict {
    if passes {
        Verdict::Passed
    } else {
        Verdict::Failed("the replay does not reproduce the committed trace".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_honest_work_passes_its_replay_and_every_update_is_what_its_behaviour_says() {
        let base = Digest::of(b"base");
        let (me, victim) = (WorkerId(3), WorkerId(4));
        for behaviour in [Behaviour::Honest]
            .into_iter()
            .chain(Behaviour::ATTACKS)
            .chain([Behaviour::NearCopier, Behaviour::Forger])
        {
            let work = work(7, behaviour, 2, me, base, victim);
            let passes = replay(7, 2, me, base, 1).passes(&work.commitment, work.answer(1));
            let caught_by_replay = matches!(
                behaviour,
                Behaviour::Lazy | Behaviour::Copier | Behaviour::NearCopier | Behaviour::Forger
            );
            assert_eq!(passes, !caught_by_replay, "{behaviour:?}");
            let decoded = decode(&work.reveal);
            assert_eq!(decoded.is_none(), behaviour == Behaviour::Garbage, "{behaviour:?}");
            let matches_commitment = Digest::of(&work.reveal) == work.commitment.payload;
            assert_eq!(matches_commitment, behaviour != Behaviour::FakeReveal, "{behaviour:?}");
        }
        let honest = work(7, Behaviour::Honest, 2, me, base, me);
        assert_eq!(honest, work(7, Behaviour::Honest, 2, me, base, victim), "deterministic");
        assert_ne!(honest.reveal, work(8, Behaviour::Honest, 2, me, base, me).reveal, "seeded");
        let copy = work(7, Behaviour::Copier, 2, me, base, victim);
        let original = work(7, Behaviour::Honest, 2, victim, base, victim);
        assert_eq!(copy.commitment, original.commitment);
        let near = work(7, Behaviour::NearCopier, 2, me, base, victim);
        assert_eq!(near.commitment.merkle_root, original.commitment.merkle_root, "the original's trace");
        assert_ne!(near.commitment.payload, original.commitment.payload, "another digest");
        let forged = work(7, Behaviour::Forger, 2, me, base, victim);
        assert_ne!(
            forged.commitment.merkle_root, original.commitment.merkle_root,
            "a trace of its own making"
        );
        assert_ne!(forged.commitment.merkle_root, honest.commitment.merkle_root, "not its assignment's");
        use crowdtrain_defense::linalg::{dot, norm};
        let original = decode(&original.reveal).unwrap();
        for near in [near, forged] {
            let near = decode(&near.reveal).unwrap();
            let cosine = dot(&near, &original) / (norm(&near) * norm(&original));
            assert!(
                cosine > crowdtrain_defense::CheckConfig::default().duplicate_cosine,
                "nearly a copy: {cosine}"
            );
        }
    }
}
