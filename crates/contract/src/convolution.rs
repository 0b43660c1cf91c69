//! Enumeration-free expectations: the law of the total contribution is
//! built by convolution over participants instead of by listing the
//! C(N+I-1, I-1) outcomes of the multinomial.
//!
//! # Method
//! The total M = n.m is a sum of N independent draws X_k, each equal to m_j
//! with probability p_j. Each X_k is placed on a grid of step h by
//! splitting its mass between the two neighbouring grid points so that its
//! mean is kept (X~ = X + e, E[e | X] = 0). The N-fold sum of the gridded
//! draws is a power of one characteristic function, computed with a real
//! FFT. Every quantity the solver needs comes from three correlations of
//! that (N-2)-fold law with a, a' and a'' on the grid:
//!
//! * E[a(M)] = sum_jl p_j p_l E[a(m_j + m_l + M_{N-2})],
//! * E[n_j a'(M)] = N p_j sum_l p_l E[a'(m_j + m_l + M_{N-2})],
//! * E[n_j n_l a''(M)] = N(N-1) p_j p_l E[a''(m_j + m_l + M_{N-2})]
//!   + [j = l] N p_j E[a''(m_j + M_{N-1})].
//!
//! Conditioning on n_i >= 1 uses the same machinery for the prior with type
//! i removed: E[g; n_i = 0] = (1-p_i)^N E^{(-i)}[g]. When (1-p_i)^N is
//! negligible (large N) that term is dropped and its size is added to the
//! bound instead, which is what makes N = 1000 cheap.
//!
//! # Error bound
//! With E = M~ - M, E[g'(M) E] = 0 and E[E^2] = N h^2 sum_j p_j f_j (1-f_j)
//! <= N h^2 / 4 (f_j the fractional grid position of m_j), so a second-order
//! Taylor expansion gives
//!
//! |E[g(M~)] - E[g(M)]| <= 1/2 sup |g''| E[E^2],
//!
//! the sup taken over [x_c, N max m]. x_c is pushed up into the bulk of M by
//! a Chernoff bound on the lower tail: outside the event M >= x_c + N h the
//! remainder is at most R = osc(a) + sup|a'| N h, which adds R P(M < x_c + N h).
//! If the interval reaches the kink of the clipped accuracy, the bound falls
//! back to Lipschitz form sup|a'| sqrt(E[E^2]). A floating-point allowance of
//! 8 eps (N + log2 L) for the FFT and the power is added; that term is the
//! standard FFT error estimate, not a proof. The step h is chosen so the
//! bound meets a target (1e-10 in accuracy units by default).

use std::sync::Mutex;

use realfft::RealFftPlanner;
use realfft::num_complex::Complex;

use crate::accuracy::Accuracy;
use crate::expectation::{Evaluation, HessianWeights};

/// Largest FFT length. 2^22 doubles are 32 MiB per array.
pub const GRID_POINTS_MAX: usize = 1 << 22;

/// The grid chosen for one evaluation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GridPlan {
    /// Grid step h, in contribution units.
    pub step: f64,
    /// Grid cells spanning one participant's range, K = (max m - min m) / h.
    pub cells: usize,
    /// FFT length L >= N K + 1.
    pub length: usize,
}

/// The enumeration-free engine for one scenario.
pub struct Convolution {
    accuracy: Accuracy,
    participants: u32,
    p: Vec<f64>,
    target: f64,
    planner: Mutex<RealFftPlanner<f64>>,
}

impl std::fmt::Debug for Convolution {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Convolution")
            .field("participants", &self.participants)
            .field("p", &self.p)
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

/// Where one type's draw lands on the grid: offset z with weight 1-f, z+1 with weight f.
#[derive(Debug, Clone, Copy)]
struct Split {
    offset: usize,
    fraction: f64,
}

struct Correlations {
    value: Vec<f64>,
    first: Vec<f64>,
    second: Option<Vec<f64>>,
}

struct PriorResult {
    value: f64,
    gradient: Vec<f64>,
    hessian: Option<Vec<f64>>,
    bound: f64,
}

impl Convolution {
    /// `target` is the error bound aimed for, in accuracy units.
    pub fn new(accuracy: Accuracy, participants: u32, p: Vec<f64>, target: f64) -> Self {
        assert!(participants >= 3, "the convolution engine needs N >= 3");
        Convolution { accuracy, participants, p, target, planner: Mutex::new(RealFftPlanner::new()) }
    }

    /// The grid the next evaluation at m would use.
    pub fn plan(&self, m: &[f64]) -> GridPlan {
        let n = self.participants as f64;
        let (lo, hi) = range(m);
        let delta = hi - lo;
        if delta <= 0.0 {
            return GridPlan { step: 1.0, cells: 1, length: fast_length(self.participants as usize + 1) };
        }
        let (x_tail, _) = lower_tail(&self.p, m, self.participants, (self.target * 1e-3).ln());
        let step_for = |x_c: f64| -> f64 {
            let x_c = x_c.max(n * lo);
            match self.accuracy.abs_second_derivative_sup(x_c, n * hi) {
                Some(s2) if s2 > 0.0 => (8.0 * 0.5 * self.target / (n * s2)).sqrt(),
                Some(_) => delta,
                None => {
                    let lip = self.accuracy.abs_first_derivative_sup(n * lo, n * hi).unwrap_or(f64::INFINITY);
                    0.5 * self.target / (0.5 * n.sqrt() * lip)
                }
            }
        };
        let h1 = step_for(x_tail);
        let h2 = step_for(x_tail - n * h1.min(delta));
        let h = h1.min(h2).min(delta);
        let mut cells = (delta / h).ceil().max(1.0);
        let cap = ((GRID_POINTS_MAX - 1) / self.participants as usize) as f64;
        if cells > cap {
            cells = cap.max(1.0);
        }
        let cells = cells as usize;
        GridPlan {
            step: delta / cells as f64,
            cells,
            length: fast_length(self.participants as usize * cells + 1),
        }
    }

    /// Values, gradients, optional weighted Hessian and error bounds at m.
    pub fn evaluate(&self, m: &[f64], weights: Option<&HessianWeights>) -> Evaluation {
        let types = self.p.len();
        let mut eval = Evaluation::zeros(types, weights.is_some());
        if m.len() != types || m.iter().any(|v| !v.is_finite() || *v < 0.0) {
            eval.total = f64::NAN;
            return eval;
        }
        let nn = self.participants;
        let n = nn as f64;
        let (lo, hi) = range(m);
        let plan = self.plan(m);
        let splits: Vec<Split> = m
            .iter()
            .map(|&mj| {
                let y = if hi > lo { (mj - lo) / plan.step } else { 0.0 };
                let offset = (y.floor().max(0.0) as usize).min(plan.cells - 1);
                Split { offset, fraction: (y - offset as f64).clamp(0.0, 1.0) }
            })
            .collect();
        let with_hessian = weights.is_some();
        let grid = self.grid_values(lo, &plan, with_hessian);
        let osc = self.accuracy.value(n * hi) - self.accuracy.value(n * lo);
        let removal: Vec<f64> = self.p.iter().map(|pi| (1.0 - pi).powi(nn as i32)).collect();

        let full = self.prior(&self.p, m, &splits, &plan, &grid, lo, hi);
        eval.total = full.value;
        eval.total_gradient.clone_from(&full.gradient);
        eval.total_error_bound = full.bound;
        let mut hessian = weights.map(|w| scaled(full.hessian.as_ref().expect("asked for"), w.total));
        for i in 0..types {
            let q = removal[i];
            let row = i * types..(i + 1) * types;
            let lambda = weights.map(|w| w.present[i]).unwrap_or(0.0);
            if q * osc / (1.0 - q) <= self.target * 1e-3 {
                // E[g | n_i >= 1] - E[g] = q (E[g] - E[g | n_i = 0]) / (1 - q).
                eval.present[i] = full.value;
                eval.present_gradient[row].copy_from_slice(&full.gradient);
                eval.present_error_bound[i] = full.bound + q * osc / (1.0 - q);
                if let (Some(h), Some(hf)) = (hessian.as_mut(), full.hessian.as_ref()) {
                    add_scaled(h, hf, lambda);
                }
                continue;
            }
            let mut removed = self.p.clone();
            removed[i] = 0.0;
            let rest: f64 = removed.iter().sum();
            removed.iter_mut().for_each(|v| *v /= rest);
            let part = self.prior(&removed, m, &splits, &plan, &grid, lo, hi);
            eval.present[i] = (full.value - q * part.value) / (1.0 - q);
            for j in 0..types {
                eval.present_gradient[i * types + j] = (full.gradient[j] - q * part.gradient[j]) / (1.0 - q);
            }
            eval.present_error_bound[i] = (full.bound + q * part.bound) / (1.0 - q);
            if let (Some(h), Some(hf), Some(hp)) =
                (hessian.as_mut(), full.hessian.as_ref(), part.hessian.as_ref())
            {
                add_scaled(h, hf, lambda / (1.0 - q));
                add_scaled(h, hp, -lambda * q / (1.0 - q));
            }
        }
        eval.hessian = hessian;
        eval
    }

    /// a, a' (and a'') on the grid x_t = N lo + t h, t < L, transformed.
    fn grid_values(&self, lo: f64, plan: &GridPlan, with_hessian: bool) -> [Option<Vec<Complex<f64>>>; 3] {
        let n = self.participants as f64;
        let used = self.participants as usize * plan.cells + 1;
        let mut value = vec![0.0; plan.length];
        let mut first = vec![0.0; plan.length];
        let mut second = if with_hessian { vec![0.0; plan.length] } else { Vec::new() };
        for t in 0..used {
            let d = self.accuracy.derivatives(n * lo + t as f64 * plan.step);
            value[t] = d.value;
            first[t] = d.first;
            if with_hessian {
                second[t] = d.second;
            }
        }
        let forward = |mut data: Vec<f64>| {
            let fft = self.planner.lock().expect("planner lock").plan_fft_forward(plan.length);
            let mut spectrum = fft.make_output_vec();
            fft.process(&mut data, &mut spectrum).expect("lengths match the plan");
            spectrum
        };
        [Some(forward(value)), Some(forward(first)), with_hessian.then(|| forward(second))]
    }

    #[allow(clippy::too_many_arguments)]
    fn prior(
        &self,
        prior: &[f64],
        m: &[f64],
        splits: &[Split],
        plan: &GridPlan,
        grid: &[Option<Vec<Complex<f64>>>; 3],
        lo: f64,
        hi: f64,
    ) -> PriorResult {
        let types = prior.len();
        let nn = self.participants;
        let n = nn as f64;
        let length = plan.length;
        let mut single = vec![0.0; length];
        for (s, &pj) in splits.iter().zip(prior) {
            single[s.offset] += pj * (1.0 - s.fraction);
            single[s.offset + 1] += pj * s.fraction;
        }
        let (forward, inverse) = {
            let mut planner = self.planner.lock().expect("planner lock");
            (planner.plan_fft_forward(length), planner.plan_fft_inverse(length))
        };
        let mut spectrum = forward.make_output_vec();
        forward.process(&mut single, &mut spectrum).expect("lengths match the plan");
        for c in &mut spectrum {
            *c = c.powu(nn - 2).conj();
        }
        let correlate = |g: &Vec<Complex<f64>>| -> Vec<f64> {
            let mut product: Vec<Complex<f64>> = spectrum.iter().zip(g).map(|(a, b)| a * b).collect();
            product[0].im = 0.0;
            if length.is_multiple_of(2) {
                product[length / 2].im = 0.0;
            }
            let mut out = inverse.make_output_vec();
            inverse.process(&mut product, &mut out).expect("lengths match the plan");
            let scale = 1.0 / length as f64;
            out.truncate(2 * plan.cells + 3);
            out.iter_mut().for_each(|v| *v *= scale);
            out
        };
        let corr = Correlations {
            value: correlate(grid[0].as_ref().expect("always computed")),
            first: correlate(grid[1].as_ref().expect("always computed")),
            second: grid[2].as_ref().map(correlate),
        };
        let pair = |c: &[f64], j: usize, l: usize| -> f64 {
            let (a, b) = (splits[j], splits[l]);
            let base = a.offset + b.offset;
            (1.0 - a.fraction) * (1.0 - b.fraction) * c[base]
                + ((1.0 - a.fraction) * b.fraction + a.fraction * (1.0 - b.fraction)) * c[base + 1]
                + a.fraction * b.fraction * c[base + 2]
        };
        let mut value = 0.0;
        let mut gradient = vec![0.0; types];
        for j in 0..types {
            if prior[j] == 0.0 {
                continue;
            }
            let mut inner = 0.0;
            for l in 0..types {
                if prior[l] == 0.0 {
                    continue;
                }
                value += prior[j] * prior[l] * pair(&corr.value, j, l);
                inner += prior[l] * pair(&corr.first, j, l);
            }
            gradient[j] = n * prior[j] * inner;
        }
        let hessian = corr.second.as_ref().map(|c2| {
            let mut h = vec![0.0; types * types];
            for j in 0..types {
                if prior[j] == 0.0 {
                    continue;
                }
                let mut diagonal = 0.0;
                for l in 0..types {
                    if prior[l] == 0.0 {
                        continue;
                    }
                    let e = pair(c2, j, l);
                    h[j * types + l] += n * (n - 1.0) * prior[j] * prior[l] * e;
                    diagonal += prior[l] * e;
                }
                h[j * types + j] += n * prior[j] * diagonal;
            }
            h
        });
        let bound = self.bound(prior, m, splits, plan, lo, hi);
        PriorResult { value, gradient, hessian, bound }
    }

    /// The error bound of one prior's expectation of a (module docs).
    fn bound(&self, prior: &[f64], m: &[f64], splits: &[Split], plan: &GridPlan, lo: f64, hi: f64) -> f64 {
        let n = self.participants as f64;
        let h = plan.step;
        let variance: f64 = if hi > lo {
            n * h
                * h
                * prior.iter().zip(splits).map(|(p, s)| p * s.fraction * (1.0 - s.fraction)).sum::<f64>()
        } else {
            0.0
        };
        let roundoff =
            8.0 * f64::EPSILON * (n + (plan.length as f64).log2()) * self.accuracy.value(n * hi).max(1.0);
        if variance == 0.0 {
            return roundoff;
        }
        let (x_tail, ln_tail) = lower_tail(prior, m, self.participants, (self.target * 1e-3).ln());
        let lipschitz = || {
            self.accuracy
                .abs_first_derivative_sup(n * lo, n * hi)
                .map_or(f64::INFINITY, |l| l * variance.sqrt())
        };
        let x_c = x_tail - n * h;
        let discretization = if x_c <= n * lo {
            match self.accuracy.abs_second_derivative_sup(n * lo, n * hi) {
                Some(s2) => 0.5 * s2 * variance,
                None => lipschitz(),
            }
        } else {
            match self.accuracy.abs_second_derivative_sup(x_c, n * hi) {
                Some(s2) => {
                    let osc = self.accuracy.value(n * hi) - self.accuracy.value(n * lo);
                    let slope =
                        self.accuracy.abs_first_derivative_sup(n * lo, n * hi).unwrap_or(f64::INFINITY);
                    0.5 * s2 * variance + (osc + slope * n * h) * ln_tail.exp()
                }
                None => lipschitz(),
            }
        };
        discretization + roundoff
    }
}

fn range(m: &[f64]) -> (f64, f64) {
    m.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| (a.min(v), b.max(v)))
}

fn scaled(h: &[f64], s: f64) -> Vec<f64> {
    h.iter().map(|v| v * s).collect()
}

fn add_scaled(acc: &mut [f64], h: &[f64], s: f64) {
    if s != 0.0 {
        acc.iter_mut().zip(h).for_each(|(a, b)| *a += s * b);
    }
}

/// Smallest 2^a 3^b >= n with a >= 1 (sizes rustfft handles fastest).
fn fast_length(n: usize) -> usize {
    let mut best = usize::MAX;
    let mut p3 = 1usize;
    while p3 < 2 * n.max(2) {
        let mut v = p3 * 2;
        while v < n {
            v *= 2;
        }
        best = best.min(v);
        p3 *= 3;
    }
    best
}

/// A point x with P(M < x) <= exp(ln_bound) by the Chernoff bound, and
/// ln_bound, where ln_bound is at most `ln_delta` whenever such a point
/// above N min(m) exists (otherwise x = N min m and the bound is 0: no mass
/// lies below).
///
/// ln P(M <= N y) <= -N R(y), R(y) = theta E_theta[d] + ln E[e^{-theta d}],
/// with d = m - min m and y - min m = E_theta[d] the tilted mean; R grows
/// with theta, so bisecting on theta finds the level.
pub fn lower_tail(prior: &[f64], m: &[f64], participants: u32, ln_delta: f64) -> (f64, f64) {
    let n = participants as f64;
    let support: Vec<(f64, f64)> =
        prior.iter().zip(m).filter(|(p, _)| **p > 0.0).map(|(p, v)| (*p, *v)).collect();
    let lo = support.iter().map(|s| s.1).fold(f64::INFINITY, f64::min);
    let spread = support.iter().map(|s| s.1 - lo).fold(0.0, f64::max);
    if spread <= 0.0 {
        return (n * lo, f64::NEG_INFINITY);
    }
    let rate = |theta: f64| -> (f64, f64) {
        let mut z = 0.0;
        let mut zd = 0.0;
        for &(p, v) in &support {
            let w = p * (-theta * (v - lo)).exp();
            z += w;
            zd += w * (v - lo);
        }
        let tilted = zd / z;
        (-(theta * tilted + z.ln()), tilted)
    };
    let need = -ln_delta / n;
    let at_bottom: f64 = support.iter().filter(|s| s.1 == lo).map(|s| s.0).sum();
    if -at_bottom.ln() <= need {
        return (n * lo, f64::NEG_INFINITY);
    }
    let (mut a, mut b) = ((1e-12 / spread).ln(), (1e12 / spread).ln());
    if rate(b.exp()).0 < need {
        return (n * lo, f64::NEG_INFINITY);
    }
    for _ in 0..200 {
        let mid = 0.5 * (a + b);
        if rate(mid.exp()).0 < need { a = mid } else { b = mid }
    }
    let (r, tilted) = rate(b.exp());
    (n * (lo + tilted), -n * r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chernoff_point_is_below_the_mean_and_valid() {
        // Goal: the tail point must sit below the mean and carry a bound at
        // or below the requested level; checked against the exact binomial tail.
        let p = [0.5, 0.5];
        let m = [0.0, 1.0];
        let (x, ln_b) = lower_tail(&p, &m, 100, (1e-6f64).ln());
        assert!(x < 50.0 && ln_b <= (1e-6f64).ln() + 1e-9, "{x} {ln_b}");
        // Exact P(Bin(100, .5) < x).
        let lf = crate::outcomes::log_factorials(100);
        let exact: f64 = (0..100u32)
            .filter(|&k| (k as f64) < x)
            .map(|k| (lf[100] - lf[k as usize] - lf[100 - k as usize] + 100.0 * 0.5f64.ln()).exp())
            .sum();
        assert!(exact <= ln_b.exp(), "exact {exact} bound {}", ln_b.exp());
    }

    #[test]
    fn fast_lengths() {
        assert_eq!(fast_length(5), 6);
        assert_eq!(fast_length(1000), 1024);
        assert_eq!(fast_length(1025), 1152);
    }
}
