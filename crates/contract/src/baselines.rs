//! The two benchmarks the optimal contract is measured against.
//!
//! * **Complete information**: the coordinator sees every type and solves
//!   per realised coalition n. Everyone gets the same best model and every
//!   present type's IR binds, so the total M* is the largest root of
//!   M = sum_{n_i > 0} n_i (v(a(M)) - f_i) / c_i. Its expected value minus the
//!   contract's is the *information cost* (<= 0); the contract's utilities
//!   minus f_i are the *information rents* (complete information leaves none).
//! * **No contract (free riding)**: everyone receives the model trained on
//!   all contributions and picks its own contribution, seeing the others'
//!   costs (Karimireddy, Guo and Jordan's naive scheme). In equilibrium only
//!   the most efficient present type contributes, exactly its standalone
//!   amount m*, split among its members; the others free-ride. Which type
//!   is the most efficient present one has a closed-form law, so this
//!   baseline needs no enumeration at any N.

use crate::accuracy::Accuracy;
use crate::expectation::{ENUMERATION_OUTCOMES_HARD_MAX, enumeration_preferred};
use crate::outcomes::{Enumeration, log_factorials};
use crate::reservation::Reservation;
use crate::scenario::Scenario;

/// Samples for the Monte Carlo estimate when enumeration is too large.
pub const MONTE_CARLO_SAMPLES: usize = 4000;

/// The complete-information benchmark.
#[derive(Debug, Clone, PartialEq)]
pub struct CompleteInformation {
    /// E[v(a(M*(n)))].
    pub expected_value: f64,
    /// "enumeration" (exact) or "monte-carlo".
    pub method: &'static str,
    /// Standard error of the estimate (0 when enumerated).
    pub standard_error: f64,
}

/// The free-riding equilibrium without a contract.
#[derive(Debug, Clone, PartialEq)]
pub struct NoContract {
    /// E[v(a)] of the model everyone receives.
    pub expected_value: f64,
    /// Per type: E[v(a) | n_i >= 1] minus its expected cost.
    pub utility: Vec<f64>,
}

/// M*(n) given S = sum n_i / c_i and T = sum n_i f_i / c_i over present types:
/// the largest root of h(M) = S v(a(M)) - T - M, or 0 if there is none.
pub fn complete_information_total(accuracy: &Accuracy, scale: f64, s: f64, t: f64) -> f64 {
    let h = |x: f64| s * scale * accuracy.value(x) - t - x;
    // h <= 0 beyond an upper bound: a <= a_opt for the bounded kinds; for sqrt,
    // S v sqrt(M) <= M once M >= (S v)^2.
    let mut hi = match accuracy.supremum() {
        Some(a_max) => (s * scale * a_max).max(1.0),
        None => (s * scale).powi(2).max(1.0),
    };
    if h(hi) > 0.0 {
        hi *= 2.0;
    }
    // Walk down geometrically to the last point where h > 0, then bisect.
    let mut lo = hi;
    let floor = accuracy.zero_threshold().max(1e-12);
    loop {
        let next = lo / 1.02;
        if next < floor {
            return tangent_or_zero(&h, floor, hi);
        }
        if h(next) > 0.0 {
            let (mut a, mut b) = (next, lo);
            // The bracket is 2% wide; 64 halvings reach machine precision.
            for _ in 0..64 {
                let mid = 0.5 * (a + b);
                if h(mid) > 0.0 { a = mid } else { b = mid }
            }
            return a;
        }
        lo = next;
    }
}

/// When h never exceeds 0 its maximum may still touch 0 (one participant:
/// the standalone point), which is then the only feasible total.
fn tangent_or_zero(h: &impl Fn(f64) -> f64, lo: f64, hi: f64) -> f64 {
    let (mut a, mut b) = (lo.ln(), hi.ln());
    for _ in 0..300 {
        let m1 = a + (b - a) / 3.0;
        let m2 = b - (b - a) / 3.0;
        if h(m1.exp()) < h(m2.exp()) { a = m1 } else { b = m2 }
    }
    let x = (0.5 * (a + b)).exp();
    if h(x) >= -1e-9 * x.max(1.0) { x } else { 0.0 }
}

fn statistics(outcome: &[u32], costs: &[f64], f: &[f64]) -> (f64, f64) {
    outcome
        .iter()
        .zip(costs.iter().zip(f))
        .fold((0.0, 0.0), |(s, t), (&k, (&c, &fi))| (s + k as f64 / c, t + k as f64 * fi / c))
}

/// The complete-information benchmark, exact by enumeration when the solver
/// would enumerate too ([`enumeration_preferred`]), else by seeded Monte Carlo.
pub fn complete_information(scenario: &Scenario, reservations: &[Reservation]) -> CompleteInformation {
    let costs = scenario.costs();
    let f: Vec<f64> = reservations.iter().map(|r| r.utility).collect();
    let value_of = |outcome: &[u32]| {
        let (s, t) = statistics(outcome, &costs, &f);
        let total = complete_information_total(&scenario.accuracy, scenario.valuation_scale, s, t);
        scenario.value(scenario.accuracy.value(total))
    };
    let p = scenario.probabilities();
    if enumeration_preferred(scenario.participants, p.len()) {
        let outcomes =
            Enumeration::new(scenario.participants, &p, ENUMERATION_OUTCOMES_HARD_MAX).expect("size checked");
        let expected_value = (0..outcomes.len())
            .map(|k| {
                let (n, prob) = outcomes.outcome(k);
                prob * value_of(n)
            })
            .sum();
        return CompleteInformation { expected_value, method: "enumeration", standard_error: 0.0 };
    }
    let mut rng = SplitMix64(0x5eed_c0de_2025);
    let cumulative: Vec<f64> = p
        .iter()
        .scan(0.0, |acc, &pi| {
            *acc += pi;
            Some(*acc)
        })
        .collect();
    let mut outcome = vec![0u32; p.len()];
    let (mut sum, mut sum_sq) = (0.0, 0.0);
    for _ in 0..MONTE_CARLO_SAMPLES {
        outcome.iter_mut().for_each(|k| *k = 0);
        for _ in 0..scenario.participants {
            let u = rng.unit();
            let j = cumulative.iter().position(|&c| u < c).unwrap_or(p.len() - 1);
            outcome[j] += 1;
        }
        let v = value_of(&outcome);
        sum += v;
        sum_sq += v * v;
    }
    let k = MONTE_CARLO_SAMPLES as f64;
    let mean = sum / k;
    let variance = (sum_sq / k - mean * mean).max(0.0) * k / (k - 1.0);
    CompleteInformation { expected_value: mean, method: "monte-carlo", standard_error: (variance / k).sqrt() }
}

/// The free-riding equilibrium, in closed form.
pub fn no_contract(scenario: &Scenario, reservations: &[Reservation]) -> NoContract {
    let nn = scenario.participants;
    let n = nn as i32;
    let p = scenario.probabilities();
    let costs = scenario.costs();
    let types = p.len();
    // below[j] = P(a draw is of type <= j - 1), i.e. less efficient than j.
    let mut below = vec![0.0; types + 1];
    for j in 0..types {
        below[j + 1] = below[j] + p[j];
    }
    let value: Vec<f64> =
        reservations.iter().map(|r| scenario.value(scenario.accuracy.value(r.contribution))).collect();
    // P(most efficient present type = j) = P(all <= j) - P(all <= j - 1).
    let top = |j: usize| below[j + 1].powi(n) - below[j].powi(n);
    let expected_value = (0..types).map(|j| top(j) * value[j]).sum();
    let log_fact = log_factorials(nn);
    let utility = (0..types)
        .map(|i| {
            let present = 1.0 - (1.0 - p[i]).powi(n);
            let mut v = top(i) * value[i];
            for j in i + 1..types {
                let without_i = (below[j + 1] - p[i]).max(0.0).powi(n) - (below[j] - p[i]).max(0.0).powi(n);
                v += (top(j) - without_i) * value[j];
            }
            // E[1/n_i ; n_i >= 1, no more efficient type present]: the
            // members of the top type split its standalone contribution.
            let share: f64 = (1..=nn)
                .map(|k| {
                    let lp = log_fact[nn as usize] - log_fact[k as usize] - log_fact[(nn - k) as usize]
                        + k as f64 * p[i].ln()
                        + if nn > k { (nn - k) as f64 * below[i].ln() } else { 0.0 };
                    lp.exp() / k as f64
                })
                .sum();
            (v - costs[i] * reservations[i].contribution * share) / present
        })
        .collect();
    NoContract { expected_value, utility }
}

/// A tiny deterministic generator, so the Monte Carlo estimate is
/// reproducible without a dependency.
struct SplitMix64(u64);

impl SplitMix64 {
    fn unit(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}
