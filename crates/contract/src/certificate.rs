//! A KKT certificate for a returned menu, computed without the solver's
//! multipliers: the constraints active at the menu (IR, every pairwise IC,
//! budget, non-negativity) are collected, non-negative multipliers are
//! fitted by non-negative least squares, and what is left over is the KKT
//! residual. The problem is convex, so a small residual at a feasible
//! point certifies a global optimum.

use nalgebra::{DMatrix, DVector};

use crate::expectation::Expectations;
use crate::reservation::reservation;
use crate::scenario::Scenario;

/// Constraints within this many value units (times max(1, v-scale)) of
/// binding count as active.
pub const ACTIVE_TOLERANCE: f64 = 1e-7;

/// The KKT residual at (m, t), scale-free: the larger of the relative
/// stationarity residual and the largest complementarity product (value
/// units over max(1, v-scale)). Variables are (m / max m, t).
pub fn kkt_residual(scenario: &Scenario, expectations: &Expectations, m: &[f64], t: &[f64]) -> f64 {
    let types = m.len();
    let v = scenario.valuation_scale;
    let costs = scenario.costs();
    let f: Vec<f64> = costs.iter().map(|&c| reservation(&scenario.accuracy, v, c).utility).collect();
    let s = m.iter().fold(0.0f64, |a, &b| a.max(b)).max(1e-300);
    let e = expectations.evaluate(m, None);
    let n = 2 * types;
    let mut objective_gradient = DVector::zeros(n);
    for j in 0..types {
        objective_gradient[j] = -v * s * e.total_gradient[j];
    }
    // (value, gradient) of each constraint g >= 0.
    let mut rows: Vec<(f64, Vec<f64>)> = Vec::new();
    for i in 0..types {
        let mut grad = vec![0.0; n];
        grad[i] = -costs[i] * s;
        grad[types + i] = 1.0;
        rows.push((t[i] - costs[i] * m[i] - f[i], grad));
        for j in 0..types {
            if j == i {
                continue;
            }
            let mut grad = vec![0.0; n];
            grad[types + i] = 1.0;
            grad[types + j] = -1.0;
            grad[i] = -costs[i] * s;
            grad[j] = costs[i] * s;
            rows.push(((t[i] - costs[i] * m[i]) - (t[j] - costs[i] * m[j]), grad));
        }
        let mut grad = vec![0.0; n];
        for (g, d) in grad.iter_mut().zip(&e.present_gradient[i * types..(i + 1) * types]) {
            *g = v * s * d;
        }
        grad[types + i] = -1.0;
        rows.push((v * e.present[i] - t[i], grad));
        let mut grad = vec![0.0; n];
        grad[i] = costs[i] * s;
        rows.push((costs[i] * m[i], grad));
        let mut grad = vec![0.0; n];
        grad[types + i] = 1.0;
        rows.push((t[i], grad));
    }
    let threshold = ACTIVE_TOLERANCE * v.max(1.0);
    let active: Vec<&(f64, Vec<f64>)> = rows.iter().filter(|r| r.0 <= threshold).collect();
    let a = DMatrix::from_fn(n, active.len(), |r, c| active[c].1[r]);
    let z = nnls(&a, &objective_gradient);
    let stationarity = (&a * &z - &objective_gradient).amax() / objective_gradient.amax().max(1.0);
    let complementarity =
        active.iter().zip(z.iter()).map(|(r, zk)| zk * r.0.abs()).fold(0.0, f64::max) / v.max(1.0);
    stationarity.max(complementarity)
}

/// Lawson-Hanson non-negative least squares: min |A z - b| s.t. z >= 0.
pub fn nnls(a: &DMatrix<f64>, b: &DVector<f64>) -> DVector<f64> {
    let k = a.ncols();
    let mut z = DVector::zeros(k);
    if k == 0 {
        return z;
    }
    let mut passive = vec![false; k];
    let tol = 1e-14 * (a.amax().max(1.0)) * (b.amax().max(1.0));
    let solve = |passive: &[bool]| -> DVector<f64> {
        let cols: Vec<usize> = (0..k).filter(|&j| passive[j]).collect();
        let sub = DMatrix::from_fn(a.nrows(), cols.len(), |r, c| a[(r, cols[c])]);
        let sol = sub.svd(true, true).solve(b, 1e-13).unwrap_or_else(|_| DVector::zeros(cols.len()));
        let mut full = DVector::zeros(k);
        for (c, &j) in cols.iter().enumerate() {
            full[j] = sol[c];
        }
        full
    };
    for _ in 0..(3 * k + 10) {
        let w = a.transpose() * (b - a * &z);
        let candidate = (0..k).filter(|&j| !passive[j]).max_by(|&i, &j| w[i].total_cmp(&w[j]));
        let Some(j) = candidate else { break };
        if w[j] <= tol {
            break;
        }
        passive[j] = true;
        for _ in 0..(3 * k + 10) {
            let s = solve(&passive);
            if (0..k).filter(|&i| passive[i]).all(|i| s[i] > 0.0) {
                z = s;
                break;
            }
            let alpha = (0..k)
                .filter(|&i| passive[i] && s[i] <= 0.0)
                .map(|i| z[i] / (z[i] - s[i]))
                .fold(f64::INFINITY, f64::min);
            z = &z + alpha * (&s - &z);
            for i in 0..k {
                if passive[i] && z[i] <= 1e-15 {
                    passive[i] = false;
                    z[i] = 0.0;
                }
            }
        }
    }
    z
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nnls_matches_a_hand_solved_case() {
        // min |z1 e1 + z2 (1,1) - (2,-1)|, z >= 0: unconstrained z2 would be
        // negative, so z2 = 0, z1 = 2, residual (0,-1).
        let a = DMatrix::from_row_slice(2, 2, &[1.0, 1.0, 0.0, 1.0]);
        let b = DVector::from_vec(vec![2.0, -1.0]);
        let z = nnls(&a, &b);
        assert!((z[0] - 2.0).abs() < 1e-12 && z[1] == 0.0, "{z}");
    }
}
