//! Unpredictable, verifiable audit selection.
//!
//! Each round has a secret, derived from the coordinator's audit master key
//! and the round (so it survives restarts without being stored, and the
//! state machine needs no randomness of its own). Its hash is published when
//! the round opens; the secret itself once every commitment is in.
//!
//! A worker's audit is drawn from the hash of the secret with *its own*
//! commitment ([`commitment_beacon`]), the moment that commitment is
//! accepted, and the worker is told at once: it answers, and the
//! coordinator replays, while the other workers are still training, so an
//! audit costs the round nothing unless it is the last worker's. Still:
//!
//! - no worker can predict its draw before committing (it lacks the secret),
//!   nor learn anything of another's (each draw hashes another commitment);
//! - no worker can bias it after (its commitment is fixed: one per round);
//! - the coordinator cannot pick whom to audit (its secret was committed
//!   before it saw any commitment);
//! - anyone can check every draw from the ledger (the secret, revealed at
//!   the end of the commit phase, and the commitments).
//!
//! The round's [`beacon`] (the secret with every commitment) picks the
//! auditors of delegated audits, which are therefore announced only when the
//! commit phase ends.

use std::collections::BTreeMap;

pub use crowdtrain_recipe::{segment_of_step, segment_range};
use serde::{Deserialize, Serialize};

use crate::ids::{Digest, RoundId, WorkerId};

/// What a worker commits to before revealing anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Commitment {
    /// Merkle root over the state hashes at the segment boundaries (the
    /// start state, then the state after each segment).
    pub merkle_root: Digest,
    /// BLAKE3 of the encoded pseudo-gradient it will reveal.
    pub payload: Digest,
    /// How many segments the root covers (leaves = segments + 1).
    pub segments: u32,
    /// Under a codec with error feedback ([`crowdtrain_recipe::Codec::error_feedback`]):
    /// the [`residual_digest`] of the residual the worker started the round
    /// with, which must be the `residual_out` of its last accepted
    /// commitment; `None` for the zero residual (a fresh start, always
    /// allowed: it only drops what the worker had not sent yet). `None`
    /// under other codecs.
    pub residual_in: Option<Digest>,
    /// Under a codec with error feedback: the digest of the residual the
    /// worker keeps (what this round's encoding lost), which its next
    /// commitment starts from. An audit of the last segment recomputes it.
    pub residual_out: Option<Digest>,
}

/// The digest a commitment names an error-feedback residual by: BLAKE3,
/// in its own domain, over the count and the little-endian `f32` bits, so
/// that two residuals share a digest only if they are bit for bit equal.
pub fn residual_digest(residual: &[f32]) -> Digest {
    let mut hasher = blake3::Hasher::new_derive_key("crowdtrain 2026-12 error-feedback residual v1");
    hasher.update(&(residual.len() as u64).to_le_bytes());
    for value in residual {
        hasher.update(&value.to_le_bytes());
    }
    Digest(*hasher.finalize().as_bytes())
}

/// What opens the bytes of a commitment's boundary leaves as the
/// coordinator keeps them ([`encode_boundaries`]): tells them apart from a
/// stored audit answer, which is postcard and starts with its segment.
const BOUNDARIES_MAGIC: &[u8] = b"crowdtrain 2026-12 boundary leaves v1\n";

/// The boundary leaves a commitment carries under `audit.replay =
/// "from-start"` (the state hashes its Merkle root is over), as the
/// coordinator stores them for an audit that replays from the round's
/// start: the magic, the count (`u32`, little-endian), the digests.
pub fn encode_boundaries(leaves: &[Digest]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(BOUNDARIES_MAGIC.len() + 4 + 32 * leaves.len());
    bytes.extend_from_slice(BOUNDARIES_MAGIC);
    bytes.extend_from_slice(&(leaves.len() as u32).to_le_bytes());
    for leaf in leaves {
        bytes.extend_from_slice(&leaf.0);
    }
    bytes
}

/// The leaves [`encode_boundaries`] stored, or `None` if `bytes` are not
/// such a record (an audit answer, or anything malformed: a count that
/// disagrees with the length, or more than a Merkle tree may have).
pub fn decode_boundaries(bytes: &[u8]) -> Option<Vec<Digest>> {
    let rest = bytes.strip_prefix(BOUNDARIES_MAGIC)?;
    let (count, digests) = rest.split_first_chunk::<4>()?;
    let count = u32::from_le_bytes(*count) as usize;
    if count == 0 || count > crate::merkle::LEAVES_MAX || digests.len() != 32 * count {
        return None;
    }
    Some(digests.chunks_exact(32).map(|chunk| Digest(chunk.try_into().expect("32 bytes"))).collect())
}

/// Feeds `commitment` to a draw's hasher. The residual digests only when
/// present, so that runs without error feedback draw as they always did.
fn hash_commitment(hasher: &mut blake3::Hasher, commitment: &Commitment) {
    hasher.update(&commitment.merkle_root.0);
    hasher.update(&commitment.payload.0);
    hasher.update(&commitment.segments.to_le_bytes());
    for (tag, residual) in [(b'i', commitment.residual_in), (b'o', commitment.residual_out)] {
        if let Some(residual) = residual {
            hasher.update(&[tag]);
            hasher.update(&residual.0);
        }
    }
}

/// The round's secret.
pub fn round_secret(master: &[u8; 32], run: &Digest, round: RoundId) -> [u8; 32] {
    let mut hasher = blake3::Hasher::new_keyed(master);
    hasher.update(b"crowdtrain 2026-11 round secret v1");
    hasher.update(&run.0);
    hasher.update(&round.to_le_bytes());
    *hasher.finalize().as_bytes()
}

/// What the coordinator publishes when the round opens.
pub fn secret_commitment(secret: &[u8; 32]) -> Digest {
    let mut hasher = blake3::Hasher::new_derive_key("crowdtrain 2026-11 secret commitment v1");
    hasher.update(secret);
    Digest(*hasher.finalize().as_bytes())
}

/// The round's beacon: the secret with every commitment, in worker order.
pub fn beacon(
    secret: &[u8; 32],
    run: &Digest,
    round: RoundId,
    commitments: &BTreeMap<WorkerId, Commitment>,
) -> Digest {
    let mut hasher = blake3::Hasher::new_derive_key("crowdtrain 2026-11 audit beacon v1");
    hasher.update(secret);
    hasher.update(&run.0);
    hasher.update(&round.to_le_bytes());
    hasher.update(&(commitments.len() as u64).to_le_bytes());
    for (worker, commitment) in commitments {
        hasher.update(&worker.0.to_le_bytes());
        hash_commitment(&mut hasher, commitment);
    }
    Digest(*hasher.finalize().as_bytes())
}

/// What `worker`'s audit in `round` is drawn from: the round's secret with
/// that worker's commitment.
pub fn commitment_beacon(
    secret: &[u8; 32],
    run: &Digest,
    round: RoundId,
    worker: WorkerId,
    commitment: &Commitment,
) -> Digest {
    let mut hasher = blake3::Hasher::new_derive_key("crowdtrain 2026-12 commitment beacon v1");
    hasher.update(secret);
    hasher.update(&run.0);
    hasher.update(&round.to_le_bytes());
    hasher.update(&worker.0.to_le_bytes());
    hash_commitment(&mut hasher, commitment);
    Digest(*hasher.finalize().as_bytes())
}

/// Whether `worker` is audited, and which segment (1-based: segment `j`
/// runs from boundary `j - 1` to boundary `j`) of its `steps` inner steps
/// cut into `segments`.
///
/// Selected with probability [`selection_threshold`]`(probability) / 2^64`.
/// The segment is the one holding a step drawn uniformly from the `steps`
/// ([`drawn_step`]), so **a segment is drawn with probability proportional
/// to its steps**. Segments cannot always be equal (`steps = 50` in four is
/// 12/13/12/13), and with a uniform draw over segments the longer ones
/// would be the better ones to skip: a 13-step segment is 26% of the work
/// but drawn 25% of the time. Drawn by steps, every skipped step is caught
/// with the same chance, `probability / steps`, whatever the layout, and
/// one stake rule ([`minimum_stake`]) holds for every layout.
pub fn draw(beacon: &Digest, worker: WorkerId, probability: f64, steps: u64, segments: u32) -> Option<u32> {
    assert!(segments >= 1 && u64::from(segments) <= steps, "{segments} segments of {steps} steps");
    let mut select = [0; 8];
    draw_words(beacon, worker, b"select").fill(&mut select);
    if u128::from(u64::from_le_bytes(select)) >= selection_threshold(probability) {
        return None;
    }
    Some(segment_of_step(steps, segments, drawn_step(beacon, worker, steps)))
}

/// The step whose segment an audit of `worker` replays: uniform over
/// `0..steps`, exactly, by rejection (64-bit words from the hash's output
/// stream at or above the largest multiple of `steps` are skipped: with
/// fewer than 2^32 steps, fewer than one in 2^32 words).
pub fn drawn_step(beacon: &Digest, worker: WorkerId, steps: u64) -> u64 {
    assert!(steps >= 1, "a round has at least one step");
    let span = 1u128 << 64;
    let zone = span - span % u128::from(steps);
    let mut words = draw_words(beacon, worker, b"step");
    loop {
        let mut word = [0; 8];
        words.fill(&mut word);
        let word = u128::from(u64::from_le_bytes(word));
        if word < zone {
            return (word % u128::from(steps)) as u64;
        }
    }
}

/// A deterministic stream of draw words, keyed by the beacon, the worker
/// and what they decide.
fn draw_words(beacon: &Digest, worker: WorkerId, label: &[u8]) -> blake3::OutputReader {
    let mut hasher = blake3::Hasher::new_derive_key("crowdtrain 2026-11 audit draw v1");
    hasher.update(&beacon.0);
    hasher.update(&worker.0.to_le_bytes());
    hasher.update(label);
    hasher.finalize_xof()
}

/// A submission is selected when a uniform 64-bit word falls below this:
/// `probability * 2^64`, rounded down, computed in integers so that 1
/// always selects and 0 never does. The chance of an audit is exactly this
/// over 2^64 (at most `probability`).
pub fn selection_threshold(probability: f64) -> u128 {
    (probability.clamp(0.0, 1.0) * 2f64.powi(64)) as u128
}

/// The least stake (work units lost when caught) at which skipping any set
/// of a submission's steps loses in expectation, for a submission worth
/// `work_units` audited with `probability`; `None` when no stake can (the
/// probability is 0, or so small that the stake would not fit in 64 bits).
///
/// The rule. A worker that skips (fakes) any steps of segment `j` commits
/// to a state at its end that a replay of `j` contradicts; its other
/// segments can be honest work from the faked state, so skipping is caught
/// exactly when a segment holding a skipped step is drawn. Skipping steps
/// in the segments `J` (any number of steps of each) saves at most
/// `b * L_J` work units (`L_J` their steps, `b` the batch size) and is
/// caught with probability `P = p * L_J / H` (draws by steps, `p` the
/// selection chance, `H` the steps). Caught, the worker loses the stake `S`
/// and the round's pay `m * W` (`W = b * H`, `m` its pay multiplier, which
/// may be 0). Valuing a unit of work at most one credit (what a unit of
/// verified work earns at full pay; a worker whose compute costs more does
/// not take part), the expected gain over honest work is
///
/// ```text
/// b * L_J - p * (L_J / H) * (S + m * W) = (L_J / H) * (W - p * (S + m * W))
/// ```
///
/// negative for every `J`, every partial skip and every `m >= 0` exactly
/// when `p * S > W`. So the minimum is the least integer above `W / p`,
/// `floor(W * 2^64 / T) + 1` with `T` = [`selection_threshold`]: the
/// longest segment needs no more than the shortest, because it is drawn
/// proportionally more often. (With segments drawn uniformly, the longest
/// segment `L_max` would set it: `S > n * b * L_max / p`, e.g. 33,280
/// instead of 32,000 at H = 50, four segments, batch 64, p = 0.1.)
pub fn minimum_stake(work_units: u64, probability: f64) -> Option<u64> {
    let threshold = selection_threshold(probability);
    if threshold == 0 {
        return None;
    }
    let minimum = ((u128::from(work_units) << 64) / threshold).checked_add(1)?;
    u64::try_from(minimum).ok()
}

/// Who replays `worker`'s drawn segment when audits are delegated: one of
/// `candidates` (the round's other committed workers of the same
/// determinism class, in ascending order) picked by the beacon, or `None`
/// if there is none and the coordinator replays it itself. As checkable as
/// the draw, and as unpredictable before the commit phase ends.
pub fn auditor(beacon: &Digest, worker: WorkerId, candidates: &[WorkerId]) -> Option<WorkerId> {
    if candidates.is_empty() {
        return None;
    }
    let mut hasher = blake3::Hasher::new_derive_key("crowdtrain 2026-12 audit delegate v1");
    hasher.update(&beacon.0);
    hasher.update(&worker.0.to_le_bytes());
    let word = u64::from_le_bytes(hasher.finalize().as_bytes()[..8].try_into().expect("8 bytes"));
    Some(candidates[(word % candidates.len() as u64) as usize])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn commitments(count: u64) -> BTreeMap<WorkerId, Commitment> {
        (0..count)
            .map(|worker| {
                let commitment = Commitment {
                    merkle_root: Digest::of(&worker.to_le_bytes()),
                    payload: Digest::of(&[worker as u8; 3]),
                    segments: 4,
                    residual_in: None,
                    residual_out: None,
                };
                (WorkerId(worker), commitment)
            })
            .collect()
    }

    #[test]
    fn the_beacon_depends_on_the_secret_and_every_commitment() {
        let run = Digest::of(b"run");
        let secret = round_secret(&[7; 32], &run, 3);
        let all = commitments(5);
        let reference = beacon(&secret, &run, 3, &all);
        assert_eq!(reference, beacon(&secret, &run, 3, &all.clone()));
        assert_ne!(reference, beacon(&round_secret(&[8; 32], &run, 3), &run, 3, &all), "another master key");
        assert_ne!(reference, beacon(&secret, &run, 4, &all), "another round");
        let mut changed = all.clone();
        changed.get_mut(&WorkerId(2)).unwrap().payload = Digest::of(b"other");
        assert_ne!(reference, beacon(&secret, &run, 3, &changed), "one commitment changed");
        let mut residual = all.clone();
        residual.get_mut(&WorkerId(2)).unwrap().residual_out = Some(residual_digest(&[0.5]));
        assert_ne!(reference, beacon(&secret, &run, 3, &residual), "a residual digest changed");
        let moved = Commitment {
            residual_in: residual[&WorkerId(2)].residual_out,
            residual_out: None,
            ..all[&WorkerId(2)]
        };
        let out = commitment_beacon(&secret, &run, 3, WorkerId(2), &residual[&WorkerId(2)]);
        assert_ne!(
            out,
            commitment_beacon(&secret, &run, 3, WorkerId(2), &moved),
            "in and out are told apart"
        );
        assert_ne!(secret_commitment(&secret), secret_commitment(&round_secret(&[7; 32], &run, 4)));
    }

    #[test]
    fn boundary_records_round_trip_and_refuse_anything_else() {
        let leaves: Vec<Digest> = (0..5u8).map(|index| Digest::of(&[index])).collect();
        let bytes = encode_boundaries(&leaves);
        assert_eq!(decode_boundaries(&bytes), Some(leaves.clone()));
        assert_eq!(decode_boundaries(&bytes[..bytes.len() - 1]), None, "truncated");
        assert_eq!(decode_boundaries(&bytes[1..]), None, "no magic");
        let mut miscounted = bytes.clone();
        miscounted[BOUNDARIES_MAGIC.len()] = 4;
        assert_eq!(decode_boundaries(&miscounted), None, "a count that is not the length");
        assert_eq!(decode_boundaries(&encode_boundaries(&[])), None, "no leaves");
    }

    #[test]
    fn residual_digests_bind_every_bit_and_the_length() {
        let residual = [0.25f32, -1.0, 0.0];
        assert_eq!(residual_digest(&residual), residual_digest(&residual.clone()));
        assert_ne!(residual_digest(&residual), residual_digest(&[0.25, -1.0, -0.0]), "the sign of zero");
        assert_ne!(residual_digest(&residual), residual_digest(&residual[..2]));
        assert_ne!(residual_digest(&[]), residual_digest(&[0.0]));
    }

    #[test]
    fn draws_follow_the_probability_and_cover_every_segment() {
        let run = Digest::of(b"run");
        let all = commitments(3);
        let (mut selected, mut segments_seen, trials) = (0u32, [0u32; 5], 20_000u64);
        for round in 0..trials {
            let beacon = beacon(&round_secret(&[1; 32], &run, round), &run, round, &all);
            if let Some(segment) = draw(&beacon, WorkerId(1), 0.1, 8, 4) {
                selected += 1;
                segments_seen[segment as usize] += 1;
            }
            assert!(draw(&beacon, WorkerId(1), 0.0, 8, 4).is_none());
            assert!(draw(&beacon, WorkerId(1), 1.0, 8, 4).is_some());
        }
        let rate = f64::from(selected) / trials as f64;
        assert!((rate - 0.1).abs() < 0.01, "selection rate {rate}");
        assert_eq!(segments_seen[0], 0);
        assert!(segments_seen[1..].iter().all(|&count| count > 400), "{segments_seen:?}");
    }

    #[test]
    fn segments_tile_the_steps() {
        for (steps, segments) in [(50, 4), (8, 4), (7, 3), (1, 1)] {
            let mut next = 0;
            for segment in 1..=segments {
                let (start, end) = segment_range(steps, segments, segment);
                assert_eq!(start, next);
                assert!(end >= start);
                next = end;
            }
            assert_eq!(next, steps);
        }
    }
}
