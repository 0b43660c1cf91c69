//! Cheap checks on every submission of a round, before anything is
//! aggregated: what no honest update looks like.
//!
//! Submissions come in precedence order: the order their commitments
//! arrived in. Where two are the same update, the earlier one stands and
//! the later is the copy. Order alone cannot be trusted for exact copies (a
//! copier can retrain its victim's public assignment and commit first), so
//! the protocol audits both commitments to one update and the copy fails
//! its replay before it gets here; this rule is the safety net, and decides
//! near-copies.
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

use std::collections::BTreeMap;
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
    let mut first_with_digest: BTreeMap<[u8; 32], u64> = BTreeMap::new();
    for (verdict, submission) in verdicts.iter_mut().zip(submissions) {
        if verdict.is_none() {
            match first_with_digest.get(&submission.digest) {
                Some(&of) => *verdict = Some(Refusal::Duplicate { of }),
                None => {
                    first_with_digest.insert(submission.digest, submission.worker);
                }
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
        // The earliest standing submission of another worker it nearly copies.
        let original = alive[..second_position].iter().enumerate().find_map(|(first_position, &first)| {
            if verdicts[first].is_some() || submissions[first].worker == worker {
                return None;
            }
            let cosine =
                gram[first_position * n + second_position] / (norms[first_position] * norms[second_position]);
            (cosine > config.duplicate_cosine).then_some((submissions[first].worker, cosine))
        });
        if let Some((of, cosine)) = original {
            verdicts[second] = Some(Refusal::NearDuplicate { of, cosine });
        }
    }
    verdicts
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
        Submission { worker, values, digest: *blake3::hash(&bytes).as_bytes() }
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
