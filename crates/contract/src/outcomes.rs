//! The multinomial law of the type counts n ~ Multinomial(N, p), and exact
//! expectations by enumerating its C(N+I-1, I-1) outcomes.
//!
//! This is the paper's method and the reference for everything else: it is
//! exact but its cost grows combinatorially, which is why
//! [`crate::convolution`] exists.

use crate::accuracy::Accuracy;
use crate::error::{ContractError, Result};
use crate::expectation::{Evaluation, HessianWeights};

/// C(N+I-1, I-1), the number of outcomes, as a float (it overflows integers
/// long before it matters).
pub fn outcome_count(participants: u32, types: usize) -> f64 {
    (1..types).fold(1.0, |acc, j| acc * (participants as f64 + j as f64) / j as f64)
}

/// ln k! for k = 0..=n, by summing logarithms (exact enough for the N at
/// which enumeration is feasible; std has no stable lgamma).
pub fn log_factorials(n: u32) -> Vec<f64> {
    let mut table = Vec::with_capacity(n as usize + 1);
    let mut acc = 0.0;
    table.push(0.0);
    for k in 1..=n {
        acc += (k as f64).ln();
        table.push(acc);
    }
    table
}

/// Calls `visit` on every n in N^I with sum N, first coordinate slowest,
/// starting from (0, ..., 0, N) as the authors' code does.
pub fn for_each_outcome(participants: u32, types: usize, mut visit: impl FnMut(&[u32])) {
    assert!(types >= 1);
    let mut n = vec![0u32; types];
    n[types - 1] = participants;
    loop {
        visit(&n);
        // Next composition: find the rightmost position j < I-1 that can be
        // incremented (the tail holds the remainder), increment it, and
        // move the whole remainder to the last slot.
        let mut j = types - 1;
        loop {
            if j == 0 {
                return;
            }
            j -= 1;
            let tail: u32 = n[j + 1..].iter().sum();
            if tail > 0 {
                n[j] += 1;
                for slot in &mut n[j + 1..] {
                    *slot = 0;
                }
                n[types - 1] = tail - 1;
                break;
            }
        }
    }
}

/// log P(n) under Multinomial(N, p).
pub fn log_pmf(n: &[u32], p: &[f64], log_fact: &[f64]) -> f64 {
    let total: u32 = n.iter().sum();
    let mut lp = log_fact[total as usize];
    for (&k, &pi) in n.iter().zip(p) {
        lp -= log_fact[k as usize];
        if k > 0 {
            lp += k as f64 * pi.ln();
        }
    }
    lp
}

/// All outcomes with their probabilities, stored once and swept on every
/// evaluation.
#[derive(Debug, Clone)]
pub struct Enumeration {
    types: usize,
    counts: Vec<u32>,
    probability: Vec<f64>,
    present_mask: Vec<u64>,
    /// P(n_i >= 1), summed over the enumerated outcomes.
    present_mass: Vec<f64>,
}

impl Enumeration {
    /// Enumerates the outcomes, refusing more than `limit` of them.
    pub fn new(participants: u32, p: &[f64], limit: usize) -> Result<Self> {
        let types = p.len();
        let count = outcome_count(participants, types);
        if count > limit as f64 {
            return Err(ContractError::TooBig(format!(
                "exact enumeration needs {count:.3e} outcomes (N={participants}, I={types}), more than the limit of {limit}"
            )));
        }
        let log_fact = log_factorials(participants);
        let count = count.round() as usize;
        let mut counts = Vec::with_capacity(count * types);
        let mut probability = Vec::with_capacity(count);
        let mut present_mask = Vec::with_capacity(count);
        let mut present_mass = vec![0.0; types];
        for_each_outcome(participants, types, |n| {
            let prob = log_pmf(n, p, &log_fact).exp();
            let mut mask = 0u64;
            for (i, &k) in n.iter().enumerate() {
                if k > 0 {
                    mask |= 1 << i;
                    present_mass[i] += prob;
                }
            }
            counts.extend_from_slice(n);
            probability.push(prob);
            present_mask.push(mask);
        });
        Ok(Enumeration { types, counts, probability, present_mask, present_mass })
    }

    /// Number of outcomes.
    pub fn len(&self) -> usize {
        self.probability.len()
    }

    /// Whether there are no outcomes (never, for a valid scenario).
    pub fn is_empty(&self) -> bool {
        self.probability.is_empty()
    }

    /// The k-th outcome and its probability.
    pub fn outcome(&self, k: usize) -> (&[u32], f64) {
        (&self.counts[k * self.types..(k + 1) * self.types], self.probability[k])
    }

    /// P(n_i >= 1).
    pub fn present_mass(&self) -> &[f64] {
        &self.present_mass
    }

    /// Expectations of a(n.m) and their derivatives, exactly.
    pub fn evaluate(&self, accuracy: &Accuracy, m: &[f64], weights: Option<&HessianWeights>) -> Evaluation {
        let types = self.types;
        let mut eval = Evaluation::zeros(types, weights.is_some());
        let present_weight: Vec<f64> = match weights {
            Some(w) => w.present.iter().zip(&self.present_mass).map(|(l, q)| l / q).collect(),
            None => Vec::new(),
        };
        let mut nonzero = Vec::with_capacity(types);
        for k in 0..self.len() {
            let n = &self.counts[k * types..(k + 1) * types];
            let prob = self.probability[k];
            let mask = self.present_mask[k];
            nonzero.clear();
            nonzero.extend((0..types).filter(|&j| n[j] > 0));
            let x: f64 = nonzero.iter().map(|&j| n[j] as f64 * m[j]).sum();
            let d = accuracy.derivatives(x);
            eval.total += prob * d.value;
            let g = prob * d.first;
            for &j in &nonzero {
                eval.total_gradient[j] += g * n[j] as f64;
            }
            for &i in &nonzero {
                debug_assert!(mask & (1 << i) != 0);
                eval.present[i] += prob * d.value;
                let row = &mut eval.present_gradient[i * types..(i + 1) * types];
                for &j in &nonzero {
                    row[j] += g * n[j] as f64;
                }
            }
            if let (Some(w), Some(h)) = (weights, eval.hessian.as_mut()) {
                let mut omega = w.total;
                for &i in &nonzero {
                    omega += present_weight[i];
                }
                let coef = prob * omega * d.second;
                if coef != 0.0 {
                    for &j in &nonzero {
                        let cj = coef * n[j] as f64;
                        for &l in &nonzero {
                            h[j * types + l] += cj * n[l] as f64;
                        }
                    }
                }
            }
        }
        for i in 0..types {
            let q = self.present_mass[i];
            eval.present[i] /= q;
            for v in &mut eval.present_gradient[i * types..(i + 1) * types] {
                *v /= q;
            }
        }
        eval
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multinomial_checks_of_the_spec() {
        // Spec 7.3: P(2,2,2,2,2) = 0.01161216, P(n_i >= 1) = 1 - 0.8^10,
        // P(10,0,0,0,0) = 1.024e-7, and 1001 outcomes for N=10, I=5.
        let e = Enumeration::new(10, &[0.2; 5], 10_000).expect("small");
        assert_eq!(e.len(), 1001);
        assert_eq!(outcome_count(10, 5), 1001.0);
        let mut seen = 0;
        for k in 0..e.len() {
            let (n, p) = e.outcome(k);
            if n == [2, 2, 2, 2, 2] {
                assert!((p - 0.01161216).abs() < 1e-10);
                seen += 1;
            }
            if n == [10, 0, 0, 0, 0] {
                assert!((p - 1.024e-7).abs() < 1e-18);
                seen += 1;
            }
        }
        assert_eq!(seen, 2);
        for q in e.present_mass() {
            assert!((q - (1.0 - 0.8f64.powi(10))).abs() < 1e-14);
        }
        let total: f64 = (0..e.len()).map(|k| e.outcome(k).1).sum();
        assert!((total - 1.0).abs() < 1e-13);
        assert!(Enumeration::new(10, &[0.2; 5], 1000).is_err());
    }
}
