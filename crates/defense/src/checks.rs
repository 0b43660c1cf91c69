//! Cheap checks on every submission of a round, before anything is
//! aggregated: what no honest update looks like.
//!
//! Submissions come in precedence order: the order their commitments
//! arrived in. Where two are the same (or nearly the same) update, proof
//! decides before order does: a submission whose replay audit passed this
//! round ([`Submission::proven`]) is its worker's own work, so of a pair
//! with one proven, the other is the copy, whichever committed first; of a
//! pair with both proven (an honest coincidence) both stand. Only where
//! neither is proven does the earlier one stand, and the protocol does not
//! let that verdict stand: it challenges both ([`unresolved_copies`]) with a
//! replay drawn after the reveals, so the copy fails its replay and the
//! original is proven before the round closes. Order alone cannot be
//! trusted (a copier can retrain its victim's public assignment and commit
//! first).
//!
//! An update is refused, with its reason, when it
//!
//! 1. has the wrong number of values, or a non-finite one;
//! 2. is all zeros: no work;
//! 3. is bit for bit an update submitted in an earlier round: a stale
//!    resubmission (honest training never repeats itself, since every round
//!    starts from a new model with new batches). Freshness is first a matter
//!    of binding: a submission names its round and base model in its signed
//!    request, and the protocol refuses the wrong ones before they get here;
//! 4. is bit for bit an earlier submission of this round (a copy);
//! 5. is longer than `norm_factor` times the median norm of the round's
//!    remaining submissions (needs three of them: with two, there is no
//!    telling which is the outlier);
//! 6. is nearly a copy (cosine similarity above `duplicate_cosine`) of an
//!    earlier submission of another worker this round. Never against a
//!    worker's own earlier updates: consecutive honest updates of one worker
//!    are alike by nature.
//!
//! Every number is computed in a fixed order ([`crate::linalg`]), so the
//! verdicts are the same on every machine.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};

use crowdtrain_recipe::CheckConfig;

use crate::linalg;

/// One submission to check.
#[derive(Debug, Clone, Copy)]
pub struct Submission<'a> {
    pub worker: u64,
    /// The decoded update.
    pub values: &'a [f32],
    /// BLAKE3 of the update as it was sent.
    pub digest: [u8; 32],
    /// Whether a replay audit of this round's work passed: it is the
    /// worker's own training, so it is never the copy of a pair.
    pub proven: bool,
}

/// Why a submission was refused.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "check")]
pub enum Refusal {
    WrongLength { found: usize, expected: usize },
    NonFinite { index: usize },
    Empty,
    Resubmitted,
    Duplicate { of: u64 },
    Outsized { norm: f64, median: f64, factor: f64 },
    NearDuplicate { of: u64, cosine: f64 },
}

impl Refusal {
    /// A short name for tables and queries.
    pub fn code(&self) -> &'static str {
        match self {
            Self::WrongLength { .. } => "wrong-length",
            Self::NonFinite { .. } => "non-finite",
            Self::Empty => "empty",
            Self::Resubmitted => "resubmitted",
            Self::Duplicate { .. } => "duplicate",
            Self::Outsized { .. } => "outsized",
            Self::NearDuplicate { .. } => "near-duplicate",
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::WrongLength { found, expected } => {
                write!(f, "{found} values where the model has {expected}")
            }
            Self::NonFinite { index } => write!(f, "value {index} is not finite"),
            Self::Empty => f.write_str("an empty update (all zeros): no work"),
            Self::Resubmitted => f.write_str("a bit-for-bit resubmission of an update from an earlier round"),
            Self::Duplicate { of } => write!(f, "a bit-for-bit copy of w{of}'s update, committed earlier"),
            Self::Outsized { norm, median, factor } => {
                write!(f, "norm {norm:.4e} is above {factor} x the round's median norm {median:.4e}")
            }
            Self::NearDuplicate { of, cosine } => {
                write!(f, "nearly a copy of w{of}'s update, committed earlier (cosine {cosine:.5})")
            }
        }
    }
}

/// The verdict on each submission, in submission order: `None` passes.
pub fn screen(
    submissions: &[Submission<'_>],
    expected_len: usize,
    earlier: &dyn Fn(&[u8; 32]) -> bool,
    config: &CheckConfig,
) -> Vec<Option<Refusal>> {
    let mut verdicts: Vec<Option<Refusal>> = submissions
        .iter()
        .map(|submission| {
            if submission.values.len() != expected_len {
                return Some(Refusal::WrongLength { found: submission.values.len(), expected: expected_len });
            }
            if let Some(index) = submission.values.iter().position(|value| !value.is_finite()) {
                return Some(Refusal::NonFinite { index });
            }
            if submission.values.iter().all(|&value| value == 0.0) {
                return Some(Refusal::Empty);
            }
            earlier(&submission.digest).then_some(Refusal::Resubmitted)
        })
        .collect();
    // Of each set of identical updates, the proven ones stand (the first
    // of them is the original the others copied); with none proven, the
    // earliest stands.
    let mut original_with_digest: BTreeMap<[u8; 32], (u64, bool)> = BTreeMap::new();
    for (verdict, submission) in verdicts.iter().zip(submissions) {
        if verdict.is_none() {
            let entry = original_with_digest.entry(submission.digest).or_insert((submission.worker, false));
            if submission.proven && !entry.1 {
                *entry = (submission.worker, true);
            }
        }
    }
    for (verdict, submission) in verdicts.iter_mut().zip(submissions) {
        if verdict.is_none() {
            let (of, proven) = original_with_digest[&submission.digest];
            if of != submission.worker && !(proven && submission.proven) {
                *verdict = Some(Refusal::Duplicate { of });
            }
        }
    }
    let standing = |verdicts: &[Option<Refusal>]| -> Vec<usize> {
        (0..submissions.len()).filter(|&index| verdicts[index].is_none()).collect()
    };
    let alive = standing(&verdicts);
    let views: Vec<&[f32]> = alive.iter().map(|&index| submissions[index].values).collect();
    let gram = linalg::gram(&views);
    let n = alive.len();
    let norms: Vec<f64> = (0..n).map(|i| gram[i * n + i].sqrt()).collect();
    if n >= 3 {
        let mut sorted = norms.clone();
        sorted.sort_by(f64::total_cmp);
        let median = median_of_sorted(&sorted);
        for (position, &index) in alive.iter().enumerate() {
            if norms[position] > config.norm_factor * median {
                verdicts[index] =
                    Some(Refusal::Outsized { norm: norms[position], median, factor: config.norm_factor });
            }
        }
    }
    for (second_position, &second) in alive.iter().enumerate() {
        if verdicts[second].is_some() {
            continue;
        }
        let worker = submissions[second].worker;
        // The earliest standing submissions of other workers it nearly
        // copies: an unproven one is the copy of a proven later one; of
        // two proven, both stand; otherwise the later one is the copy.
        for (first_position, &first) in alive[..second_position].iter().enumerate() {
            if verdicts[first].is_some() || submissions[first].worker == worker {
                continue;
            }
            let cosine =
                gram[first_position * n + second_position] / (norms[first_position] * norms[second_position]);
            if cosine <= config.duplicate_cosine {
                continue;
            }
            match (submissions[first].proven, submissions[second].proven) {
                (true, true) => {}
                (false, true) => verdicts[first] = Some(Refusal::NearDuplicate { of: worker, cosine }),
                (_, false) => {
                    verdicts[second] = Some(Refusal::NearDuplicate { of: submissions[first].worker, cosine });
                    break;
                }
            }
        }
    }
    verdicts
}

/// The workers of the copy refusals in `refused` that proof has not
/// decided: the refused submission and the one it copies, neither proven
/// by a replay. Order made the verdict, and order can be bought (a copier
/// that retrains its victim's public assignment can commit first), so the
/// protocol challenges both instead of closing on it: each answers an
/// audit drawn after the reveals, the copy fails its replay (it is not
/// its worker's training) and is slashed, and the original, proven, then
/// stands ([`screen`]).
pub fn unresolved_copies(refused: &[(u64, Refusal)], proven: &dyn Fn(u64) -> bool) -> BTreeSet<u64> {
    refused
        .iter()
        .filter_map(|(worker, refusal)| match refusal {
            Refusal::Duplicate { of } | Refusal::NearDuplicate { of, .. } => Some((*worker, *of)),
            _ => None,
        })
        .filter(|&(worker, of)| !proven(worker) && !proven(of))
        .flat_map(|(worker, of)| [worker, of])
        .collect()
}

pub(crate) fn median_of_sorted(sorted: &[f64]) -> f64 {
    let middle = sorted.len() / 2;
    if sorted.len() % 2 == 1 { sorted[middle] } else { 0.5 * (sorted[middle - 1] + sorted[middle]) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn submission(worker: u64, values: &[f32]) -> Submission<'_> {
        let bytes: Vec<u8> = values.iter().flat_map(|value| value.to_le_bytes()).collect();
        Submission { worker, values, digest: *blake3::hash(&bytes).as_bytes(), proven: false }
    }

    fn proven(worker: u64, values: &[f32]) -> Submission<'_> {
        Submission { proven: true, ..submission(worker, values) }
    }

    /// Mutually dissimilar vectors of comparable norm.
    fn honest(seed: u32) -> Vec<f32> {
        (0..1000).map(|i| ((i * 7 + seed * 131) as f32 * 0.37).sin() * 0.01).collect()
    }

    fn reasons(verdicts: &[Option<Refusal>]) -> Vec<&'static str> {
        verdicts.iter().map(|verdict| verdict.as_ref().map_or("pass", Refusal::code)).collect()
    }

    #[test]
    fn honest_updates_pass_and_each_fault_is_named() {
        let (a, b, c, d) = (honest(1), honest(2), honest(3), honest(4));
        let huge: Vec<f32> = honest(5).iter().map(|value| value * 100.0).collect();
        let zero = vec![0.0f32; 1000];
        let mut near = a.clone();
        near[0] += 1e-4;
        let mut nan = honest(6);
        nan[3] = f32::NAN;
        let old = honest(7);
        let earlier: std::collections::HashSet<[u8; 32]> =
            [submission(99, &old).digest].into_iter().collect();
        let submissions = [
            submission(0, &a),
            submission(1, &b),
            submission(2, &c),
            submission(3, &d),
            submission(4, &huge),
            submission(5, &zero),
            submission(6, &near),
            submission(7, &nan),
            submission(8, &old),
            submission(9, &b),
            submission(10, &[1.0; 7]),
        ];
        let verdicts =
            screen(&submissions, 1000, &|digest| earlier.contains(digest), &CheckConfig::default());
        assert_eq!(
            reasons(&verdicts),
            [
                "pass",
                "pass",
                "pass",
                "pass",
                "outsized",
                "empty",
                "near-duplicate",
                "non-finite",
                "resubmitted",
                "duplicate",
                "wrong-length"
            ]
        );
        assert_eq!(verdicts[9], Some(Refusal::Duplicate { of: 1 }), "the earlier committer stands");
        assert!(matches!(verdicts[6], Some(Refusal::NearDuplicate { of: 0, .. })));
        assert_eq!(verdicts[7], Some(Refusal::NonFinite { index: 3 }));
        let message = verdicts[4].as_ref().unwrap().to_string();
        assert!(message.contains("median norm"), "{message}");
    }

    #[test]
    fn a_proven_original_stands_against_a_copy_committed_before_it() {
        let (a, b, c) = (honest(1), honest(2), honest(3));
        let mut near = a.clone();
        near[0] += 1e-4;
        let config = CheckConfig::default();
        // An exact copy and a near copy of w0's update, each committed before
        // it; w0's replay passed.
        for copy in [&a, &near] {
            let submissions = [submission(7, copy), submission(1, &b), proven(0, &a), submission(2, &c)];
            let verdicts = screen(&submissions, 1000, &|_| false, &config);
            assert_eq!(reasons(&verdicts)[1..], ["pass", "pass", "pass"], "the original stands");
            assert!(
                matches!(
                    verdicts[0],
                    Some(Refusal::Duplicate { of: 0 } | Refusal::NearDuplicate { of: 0, .. })
                ),
                "{:?}",
                verdicts[0]
            );
            let refused: Vec<(u64, Refusal)> = vec![(7, verdicts[0].clone().unwrap())];
            assert!(unresolved_copies(&refused, &|worker| worker == 0).is_empty(), "proof decided it");
        }
        // Both proven (an honest coincidence): both stand, both are paid.
        let both = screen(&[proven(0, &a), proven(5, &near), proven(1, &b)], 1000, &|_| false, &config);
        assert_eq!(reasons(&both), ["pass", "pass", "pass"]);
        let exact = screen(&[proven(0, &a), proven(5, &a), proven(1, &b)], 1000, &|_| false, &config);
        assert_eq!(reasons(&exact), ["pass", "pass", "pass"]);
        // Neither proven: order made the verdict, so both are to be challenged.
        let unproven = [submission(7, &near), submission(0, &a), submission(1, &b), submission(2, &c)];
        let verdicts = screen(&unproven, 1000, &|_| false, &config);
        assert_eq!(reasons(&verdicts), ["pass", "near-duplicate", "pass", "pass"], "order alone");
        let refused: Vec<(u64, Refusal)> = vec![(0, verdicts[1].clone().unwrap())];
        assert_eq!(unresolved_copies(&refused, &|_| false), BTreeSet::from([0, 7]));
        let outsized = vec![(3, Refusal::Empty)];
        assert!(unresolved_copies(&outsized, &|_| false).is_empty(), "only copies are challenged");
    }

    #[test]
    fn a_worker_is_never_compared_with_itself_and_two_cannot_be_told_apart_by_norm() {
        let a = honest(1);
        let again = a.iter().map(|value| value * 1.000_01).collect::<Vec<_>>();
        // The same worker twice (never happens within a round, but the rule
        // is: no comparison against one's own updates).
        let verdicts =
            screen(&[submission(3, &a), submission(3, &again)], 1000, &|_| false, &CheckConfig::default());
        assert_eq!(reasons(&verdicts), ["pass", "pass"]);
        let huge: Vec<f32> = a.iter().map(|value| value * 1000.0).collect();
        let two = screen(
            &[submission(0, &honest(2)), submission(1, &huge)],
            1000,
            &|_| false,
            &CheckConfig::default(),
        );
        assert_eq!(reasons(&two), ["pass", "pass"], "a median of two is no reference");
    }

    #[test]
    fn verdicts_do_not_depend_on_the_thread_count() {
        let vectors: Vec<Vec<f32>> =
            (0..6).map(|seed| (0..70_000).map(|i| ((i * 13 + seed * 7) as f32).sin()).collect()).collect();
        let mut near = vectors[0].clone();
        near[5] += 1e-3;
        let mut all: Vec<&[f32]> = vectors.iter().map(Vec::as_slice).collect();
        all.push(&near);
        let submissions: Vec<Submission<'_>> =
            all.iter().enumerate().map(|(worker, values)| submission(worker as u64, values)).collect();
        let run = |threads| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| screen(&submissions, 70_000, &|_| false, &CheckConfig::default()))
        };
        let one = run(1);
        assert!(matches!(one[6], Some(Refusal::NearDuplicate { of: 0, .. })));
        assert_eq!(format!("{one:?}"), format!("{:?}", run(2)));
    }
}
