//! The solver of the first-moment problem.
//!
//! # Formulation
//! Types are in canonical order (decreasing cost). The variables are the
//! contributions m and the utilities u_i = t_i - c_i m_i (information-rent
//! coordinates, in which incentive constraints are differences). The
//! problem is
//!
//! max E[a(n.m)]  s.t.  u_i >= f_i (IR),  local downward and upward IC,
//! m_1 >= 0,  u_i + c_i m_i <= v-scale * F_i(m) (budget),
//!
//! with F_i(m) = E[a(n.m) | n_i >= 1]. Only the 2(I-1) *local* IC
//! constraints are imposed: adding the two local constraints between i and
//! i+1 gives (c_i - c_{i+1})(m_{i+1} - m_i) >= 0, so they imply monotone
//! contributions, and with monotone contributions single crossing makes the
//! local constraints imply every pairwise one (see docs/CONTRACT.md). This
//! is exact, not a relaxation; [`crate::check`] verifies all I(I-1) pairs
//! on the result.
//!
//! # Method
//! The problem is convex (concave objective, linear IR/IC, concave budget)
//! with only 2I variables and 4I-1 constraints, but its budget constraints
//! are expectations of a non-conic function, which no cone of a conic
//! solver represents exactly. So the solver is a dense primal-dual
//! interior-point method with exact Hessians (Mehrotra's centering rule, a
//! residual-norm line search, slack variables so the start need not be
//! feasible), started from the paper's pooling contract. Convexity makes
//! its KKT point the global optimum; [`crate::certificate`] re-derives the
//! multipliers independently and reports the KKT residual.
//!
//! The optimum is not unique in t; the solver returns the canonical one
//! with least information rents: u = the least solution of IR and all
//! pairwise IC for the optimal m (a longest-path computation), which makes
//! the binding IR and local downward IC hold with equality. Pools (types
//! with equal options, the rule rather than the exception) are detected and
//! made exactly equal when doing so keeps every constraint.

use std::time::Instant;

use nalgebra::{DMatrix, DVector};

use crate::accuracy::Accuracy;
use crate::error::{ContractError, Result};
use crate::expectation::{Expectations, HessianWeights, Method};
use crate::reservation::{Reservation, reservation};
use crate::scenario::Scenario;

/// Iteration limit of the interior-point method (it needs 10-40).
pub const ITERATIONS_MAX: usize = 300;
/// Neighbours whose contributions differ by less than one of these
/// (relative) are tried as one pool.
pub const POOL_DETECTION_TOLERANCES: [f64; 3] = [1e-4, 1e-3, 1e-2];
/// KKT residual below which a pooled re-solve is accepted.
pub const POOL_ACCEPT_RESIDUAL: f64 = 1e-9;

/// Group index per type: consecutive types whose contributions are within
/// `tolerance` (relative to the larger) share a group.
pub fn detect_pools(m: &[f64], tolerance: f64) -> Vec<usize> {
    let mut groups = Vec::with_capacity(m.len());
    let mut g = 0;
    for i in 0..m.len() {
        if i > 0 && (m[i] - m[i - 1]).abs() > tolerance * m[i].abs().max(m[i - 1].abs()) {
            g += 1;
        }
        groups.push(g);
    }
    groups
}

/// The optimal contract in canonical type order, with its diagnostics.
#[derive(Debug, Clone)]
pub struct Solution {
    /// f_i and m*_i per type.
    pub reservations: Vec<Reservation>,
    /// m_i, the required contribution.
    pub contribution: Vec<f64>,
    /// t_i = E[v(r_i(n)) | n_i >= 1].
    pub expected_reward_value: Vec<f64>,
    /// t-bar_i = E[v(a(n.m)) | n_i >= 1].
    pub max_reward_value: Vec<f64>,
    /// u_i = t_i - c_i m_i.
    pub utility: Vec<f64>,
    /// E[a(n.m)].
    pub expected_accuracy: f64,
    /// E[v(a(n.m))].
    pub expected_value: f64,
    /// Bound on the error of `expected_accuracy` (0 when enumerated).
    pub accuracy_error_bound: f64,
    /// Bound on the error of each t-bar_i, in value units (0 when enumerated).
    pub max_reward_value_error_bound: Vec<f64>,
    /// Groups of consecutive types given identical options.
    pub pools: Vec<Vec<usize>>,
    /// Interior-point iterations.
    pub iterations: usize,
    /// "enumeration", "convolution" or "standalone" (N = 1).
    pub method: &'static str,
    /// Number of enumerated outcomes, if enumerated.
    pub outcomes: Option<usize>,
    /// Wall-clock time of the solve (expectation set-up included).
    pub solve_seconds: f64,
}

/// Solves a scenario with the given expectation method.
pub fn solve(scenario: &Scenario, method: Method) -> Result<Solution> {
    let start = Instant::now();
    let costs = scenario.costs();
    let reservations: Vec<Reservation> =
        costs.iter().map(|&c| reservation(&scenario.accuracy, scenario.valuation_scale, c)).collect();
    if scenario.participants == 1 {
        return Ok(standalone(scenario, reservations, start));
    }
    let expectations = Expectations::new(scenario, method)?;
    let problem = Problem::new(scenario, &expectations, &reservations);
    let types = problem.types;
    let separate = problem.reduction(&(0..types).collect::<Vec<_>>());
    let (x, mut iterations) = problem.interior_point(&separate)?;
    let mut m: Vec<f64> = x[..types].iter().map(|y| y * problem.scale_m).collect();
    // Pools whose IC multipliers vanish converge only like sqrt(mu), and
    // the objective is flat along them, so neighbours that are close are
    // re-solved as exact pools at a few closeness levels. A pooled menu
    // replaces the plain one only if it is feasible, at least as good, and
    // the independent KKT certificate accepts it.
    let mut best_accuracy = problem.finish(m.clone(), iterations)?.expected_accuracy;
    let mut tried: Vec<Vec<usize>> = Vec::new();
    let plain = m.clone();
    for tolerance in POOL_DETECTION_TOLERANCES {
        let groups = detect_pools(&plain, tolerance);
        if tried.contains(&groups) || groups.last() == Some(&(types - 1)) {
            continue;
        }
        tried.push(groups.clone());
        let pooled = problem.reduction(&groups);
        let Ok((x_pooled, more)) = problem.interior_point(&pooled) else { continue };
        iterations += more;
        let m_pooled: Vec<f64> = x_pooled[..types].iter().map(|y| y * problem.scale_m).collect();
        let candidate = problem.finish(m_pooled.clone(), iterations)?;
        let residual = crate::certificate::kkt_residual(
            scenario,
            &expectations,
            &candidate.contribution,
            &candidate.expected_reward_value,
        );
        let feasible = (0..types).all(|i| {
            candidate.expected_reward_value[i]
                <= candidate.max_reward_value[i] + 1e-12 * scenario.valuation_scale.max(1.0)
        });
        if feasible
            && residual <= POOL_ACCEPT_RESIDUAL
            && candidate.expected_accuracy >= best_accuracy - 1e-13
        {
            best_accuracy = candidate.expected_accuracy;
            m = m_pooled;
        }
    }
    let mut solution = problem.finish(m, iterations)?;
    solution.method = expectations.method_name();
    solution.outcomes = expectations.outcome_count();
    solution.solve_seconds = start.elapsed().as_secs_f64();
    Ok(solution)
}

/// With one participant there is no collaboration: F_i(m) = a(m_i), so
/// budget and IR together force m_i = m*_i and u_i = f_i. The feasible set is
/// a single point, which an interior-point method cannot approach from
/// inside; it is written down instead.
fn standalone(scenario: &Scenario, reservations: Vec<Reservation>, start: Instant) -> Solution {
    let v = scenario.valuation_scale;
    let m: Vec<f64> = reservations.iter().map(|r| r.contribution).collect();
    let tbar: Vec<f64> = m.iter().map(|&mi| v * scenario.accuracy.value(mi)).collect();
    let expected_accuracy: f64 =
        scenario.types.iter().zip(&m).map(|(t, &mi)| t.probability * scenario.accuracy.value(mi)).sum();
    let utility: Vec<f64> = reservations.iter().map(|r| r.utility).collect();
    let types = m.len();
    Solution {
        pools: pools_of(&m, &tbar),
        expected_reward_value: tbar.clone(),
        max_reward_value: tbar,
        utility,
        reservations,
        contribution: m,
        expected_accuracy,
        expected_value: v * expected_accuracy,
        accuracy_error_bound: 0.0,
        max_reward_value_error_bound: vec![0.0; types],
        iterations: 0,
        method: "standalone",
        outcomes: Some(types),
        solve_seconds: start.elapsed().as_secs_f64(),
    }
}

/// Consecutive types whose options (m, t) coincide.
pub fn pools_of(m: &[f64], t: &[f64]) -> Vec<Vec<usize>> {
    let mut pools: Vec<Vec<usize>> = Vec::new();
    for i in 0..m.len() {
        match pools.last_mut() {
            Some(pool) if m[i] == m[i - 1] && (t[i] - t[i - 1]).abs() <= 1e-12 * t[i].abs().max(1.0) => {
                pool.push(i)
            }
            _ => pools.push(vec![i]),
        }
    }
    pools
}

/// The least u satisfying IR and every pairwise IC for contributions m:
/// u_i = max(f_i, max_j u_j + (c_j - c_i) m_j), a longest-path problem on
/// the complete graph, solved by Bellman-Ford sweeps (at most I rounds;
/// monotone m has no positive cycle).
pub fn least_rents(costs: &[f64], f: &[f64], m: &[f64]) -> Vec<f64> {
    let types = costs.len();
    let mut u = f.to_vec();
    for _ in 0..=types {
        let mut changed = false;
        for i in 0..types {
            for j in 0..types {
                let candidate = u[j] + (costs[j] - costs[i]) * m[j];
                if j != i && candidate > u[i] {
                    u[i] = candidate;
                    changed = true;
                }
            }
        }
        if !changed {
            break;
        }
    }
    u
}

/// Evaluated problem functions at one point (scaled variables).
struct Point {
    /// Error bound of the expectations in value units (0 when enumerated):
    /// the engine's noise floor, below which no tolerance is meaningful.
    noise: f64,
    gradient: DVector<f64>,
    constraints: DVector<f64>,
    jacobian: DMatrix<f64>,
    hessian: DMatrix<f64>,
}

/// A linear change of variables that makes pools exact: one m and one u
/// per group (the u of its first type); within a group the local IC hold
/// with equality, so u_i = u_first + (c_first - c_i) m, and those IC rows are
/// dropped.
struct Reduction {
    /// Full x (y, u) = map * reduced x.
    map: DMatrix<f64>,
    /// Constraint rows of the full problem that remain.
    kept: Vec<usize>,
    /// Position of each type's budget row among the kept rows.
    budget_rows: Vec<usize>,
    /// Group of each type.
    group_of: Vec<usize>,
}

struct Problem<'a> {
    expectations: &'a Expectations,
    accuracy: Accuracy,
    participants: u32,
    costs: Vec<f64>,
    f: Vec<f64>,
    v: f64,
    types: usize,
    /// m = scale_m * y keeps the variables near 1.
    scale_m: f64,
}

impl<'a> Problem<'a> {
    fn new(scenario: &Scenario, expectations: &'a Expectations, reservations: &[Reservation]) -> Self {
        let costs = scenario.costs();
        let f: Vec<f64> = reservations.iter().map(|r| r.utility).collect();
        let mut problem = Problem {
            expectations,
            accuracy: scenario.accuracy,
            participants: scenario.participants,
            types: costs.len(),
            costs,
            f,
            v: scenario.valuation_scale,
            scale_m: 1.0,
        };
        problem.scale_m = problem.pooling_level().max(1e-9);
        problem
    }

    fn constraint_count(&self) -> usize {
        4 * self.types - 1
    }
    fn ir(&self, i: usize) -> usize {
        i
    }
    fn down(&self, i: usize) -> usize {
        self.types + i
    }
    fn up(&self, i: usize) -> usize {
        2 * self.types - 1 + i
    }
    fn lower(&self) -> usize {
        3 * self.types - 2
    }
    fn budget(&self, i: usize) -> usize {
        3 * self.types - 1 + i
    }

    /// The paper's pooling start: the largest common m with
    /// v(a(N m)) = c_1 m + f_1; if type 1 can never be paid that way, the
    /// same for the most efficient type.
    fn pooling_level(&self) -> f64 {
        let n = self.participants as f64;
        for &i in &[0, self.types - 1] {
            let gap = |m: f64| self.v * self.accuracy.value(n * m) - self.costs[i] * m - self.f[i];
            let grid: Vec<f64> = (0..=2400).map(|k| 10f64.powf(-6.0 + 18.0 * k as f64 / 2400.0)).collect();
            if let Some(last) = (0..grid.len() - 1).rev().find(|&k| gap(grid[k]) > 0.0) {
                let (mut lo, mut hi) = (grid[last], grid[last + 1]);
                for _ in 0..200 {
                    let mid = 0.5 * (lo + hi);
                    if gap(mid) > 0.0 { lo = mid } else { hi = mid }
                }
                return lo;
            }
        }
        // No pooled level pays anyone: start where the most efficient
        // type's standalone training would.
        reservation(&self.accuracy, self.v, self.costs[self.types - 1]).contribution.max(1.0)
    }

    fn evaluate(&self, x: &[f64], budget_multipliers: &[f64]) -> Option<Point> {
        let (types, s) = (self.types, self.scale_m);
        let n = 2 * types;
        let p = self.constraint_count();
        let m: Vec<f64> = x[..types].iter().map(|y| y * s).collect();
        if m.iter().any(|v| !v.is_finite() || *v < 0.0) {
            return None;
        }
        let u = &x[types..];
        let weights = HessianWeights { total: 1.0, present: budget_multipliers.to_vec() };
        let e = self.expectations.evaluate(&m, Some(&weights));
        if !e.is_finite() {
            return None;
        }
        let mut gradient = DVector::zeros(n);
        for j in 0..types {
            gradient[j] = -self.v * s * e.total_gradient[j];
        }
        let mut g = DVector::zeros(p);
        let mut jac = DMatrix::zeros(p, n);
        for i in 0..types {
            g[self.ir(i)] = u[i] - self.f[i];
            jac[(self.ir(i), types + i)] = 1.0;
        }
        for i in 0..types.saturating_sub(1) {
            let dc = self.costs[i] - self.costs[i + 1];
            let (d, up) = (self.down(i), self.up(i));
            g[d] = u[i + 1] - u[i] - dc * m[i];
            jac[(d, types + i + 1)] = 1.0;
            jac[(d, types + i)] = -1.0;
            jac[(d, i)] = -dc * s;
            g[up] = u[i] - u[i + 1] + dc * m[i + 1];
            jac[(up, types + i)] = 1.0;
            jac[(up, types + i + 1)] = -1.0;
            jac[(up, i + 1)] = dc * s;
        }
        g[self.lower()] = self.costs[0] * m[0];
        jac[(self.lower(), 0)] = self.costs[0] * s;
        for i in 0..types {
            let b = self.budget(i);
            // The budget is imposed against t-bar minus its error bound, so
            // a menu from the convolution engine is feasible for the exact
            // expectations too.
            g[b] = self.v * (e.present[i] - e.present_error_bound[i]) - self.costs[i] * m[i] - u[i];
            for j in 0..types {
                jac[(b, j)] = self.v * s * e.present_gradient[i * types + j];
            }
            jac[(b, i)] -= self.costs[i] * s;
            jac[(b, types + i)] = -1.0;
        }
        let mut hessian = DMatrix::zeros(n, n);
        let weighted = e.hessian.as_ref().expect("weights were given");
        for j in 0..types {
            for l in 0..types {
                hessian[(j, l)] = -self.v * s * s * weighted[j * types + l];
            }
        }
        let noise = self.v * e.present_error_bound.iter().fold(e.total_error_bound, |a, &b| a.max(b));
        Some(Point { noise, gradient, constraints: g, jacobian: jac, hessian })
    }

    fn reduction(&self, group_of: &[usize]) -> Reduction {
        let types = self.types;
        let groups = group_of.last().map_or(0, |g| g + 1);
        let mut first = vec![usize::MAX; groups];
        for (i, &g) in group_of.iter().enumerate() {
            first[g] = first[g].min(i);
        }
        let mut map = DMatrix::zeros(2 * types, 2 * groups);
        for (i, &g) in group_of.iter().enumerate() {
            map[(i, g)] = 1.0;
            map[(types + i, groups + g)] = 1.0;
            map[(types + i, g)] = self.scale_m * (self.costs[first[g]] - self.costs[i]);
        }
        let mut kept = Vec::new();
        for k in 0..self.constraint_count() {
            let inside = (0..types.saturating_sub(1))
                .any(|i| group_of[i] == group_of[i + 1] && (k == self.down(i) || k == self.up(i)));
            if !inside {
                kept.push(k);
            }
        }
        let budget_rows = (0..types)
            .map(|i| kept.iter().position(|&k| k == self.budget(i)).expect("budgets are kept"))
            .collect();
        Reduction { map, kept, budget_rows, group_of: group_of.to_vec() }
    }

    fn evaluate_reduced(&self, red: &Reduction, xr: &[f64], z: &DVector<f64>) -> Option<Point> {
        let x = &red.map * DVector::from_column_slice(xr);
        let budget: Vec<f64> = red.budget_rows.iter().map(|&r| z[r]).collect();
        let full = self.evaluate(x.as_slice(), &budget)?;
        let jacobian =
            DMatrix::from_fn(red.kept.len(), full.jacobian.ncols(), |r, c| full.jacobian[(red.kept[r], c)]);
        Some(Point {
            noise: full.noise,
            gradient: red.map.transpose() * &full.gradient,
            constraints: DVector::from_fn(red.kept.len(), |r, _| full.constraints[red.kept[r]]),
            jacobian: &jacobian * &red.map,
            hessian: red.map.transpose() * &full.hessian * &red.map,
        })
    }

    fn start(&self) -> Vec<f64> {
        let types = self.types;
        let mut x = vec![0.0; 2 * types];
        // Slightly increasing contributions around the pooling level, so the
        // local IC pairs start with room on both sides.
        for (j, xj) in x[..types].iter_mut().enumerate() {
            *xj = 0.9 * (1.0 + 0.02 * j as f64 / types as f64);
        }
        let margin = 1e-2 * self.v.max(1e-12);
        let mut u = self.f[0] + margin;
        x[types] = u;
        for i in 1..types {
            let dc = self.costs[i - 1] - self.costs[i];
            u += dc * self.scale_m * 0.5 * (x[i - 1] + x[i]);
            u = u.max(self.f[i] + margin);
            x[types + i] = u;
        }
        x
    }

    /// Primal-dual interior point in the variables of `red`; returns the
    /// full scaled x and the iteration count.
    fn interior_point(&self, red: &Reduction) -> Result<(Vec<f64>, usize)> {
        let full_start = self.start();
        let groups = red.map.ncols() / 2;
        let mut start = vec![0.0; 2 * groups];
        let mut members = vec![0usize; groups];
        for (i, &g) in red.group_of.iter().enumerate() {
            start[g] += full_start[i];
            members[g] += 1;
            if members[g] == 1 {
                start[groups + g] = full_start[self.types + i];
            }
        }
        for g in 0..groups {
            start[g] /= members[g] as f64;
        }
        let n = 2 * groups;
        let p = red.kept.len();
        let value_scale = self.v.max(1e-12);
        let mut x = DVector::from_vec(start);
        let mut z = DVector::from_element(p, 1.0);
        let mut point = self
            .evaluate_reduced(red, x.as_slice(), &z)
            .ok_or_else(|| ContractError::Solver("the starting point is outside the domain".into()))?;
        let kappa = 1e-2 * value_scale;
        let mut s = point.constraints.map(|g| g.max(kappa));
        let tol_primal = 1e-12 * value_scale.max(1.0);
        let tol_dual = 1e-11;
        let tol_mu = 1e-14 * value_scale.max(1.0);
        for iteration in 0..ITERATIONS_MAX {
            let r_d = &point.gradient - point.jacobian.transpose() * &z;
            let r_p = &point.constraints - &s;
            let mu = s.dot(&z) / p as f64;
            let dual_scale = point.gradient.amax().max(1.0);
            let tol_primal = tol_primal.max(10.0 * point.noise);
            let tol_mu = tol_mu.max(point.noise);
            if r_p.amax() <= tol_primal
                && r_d.amax() <= (tol_dual * dual_scale).max(10.0 * point.noise)
                && mu <= tol_mu
            {
                return Ok(((&red.map * &x).as_slice().to_vec(), iteration));
            }
            // The full (unreduced) Newton system, solved by LU with partial
            // pivoting: eliminating s and z first would multiply solve errors
            // by z/s, which reaches 1e12 near the optimum and ruins the step.
            let size = n + 2 * p;
            let mut kkt = DMatrix::zeros(size, size);
            kkt.view_mut((0, 0), (n, n)).copy_from(&point.hessian);
            kkt.view_mut((0, n + p), (n, p)).copy_from(&(-point.jacobian.transpose()));
            kkt.view_mut((n, 0), (p, n)).copy_from(&point.jacobian);
            for k in 0..p {
                kkt[(n + k, n + k)] = -1.0;
                kkt[(n + p + k, n + k)] = z[k];
                kkt[(n + p + k, n + p + k)] = s[k];
            }
            let lu = kkt.lu();
            let direction = |r_c: &DVector<f64>| {
                let mut rhs = DVector::zeros(size);
                rhs.rows_mut(0, n).copy_from(&(-&r_d));
                rhs.rows_mut(n, p).copy_from(&(-&r_p));
                rhs.rows_mut(n + p, p).copy_from(&(-r_c));
                let sol = lu.solve(&rhs).unwrap_or_else(|| DVector::from_element(size, f64::NAN));
                (sol.rows(0, n).into_owned(), sol.rows(n, p).into_owned(), sol.rows(n + p, p).into_owned())
            };
            // Predictor: pure Newton towards complementarity 0, to pick sigma.
            let (_, ds_aff, dz_aff) = direction(&s.component_mul(&z));
            let a_s = max_step(&s, &ds_aff);
            let a_z = max_step(&z, &dz_aff);
            let mu_aff = (&s + a_s * &ds_aff).dot(&(&z + a_z * &dz_aff)) / p as f64;
            let sigma = (mu_aff / mu).powi(3).clamp(0.0, 1.0);
            let mu_target = sigma * mu;
            let r_c = s.component_mul(&z).add_scalar(-mu_target);
            let (dx, ds, dz) = direction(&r_c);
            let tau = (1.0 - mu / value_scale).clamp(0.99, 1.0 - 1e-12).min(0.999_999);
            let mut alpha_p = (tau * max_step(&s, &ds)).min(1.0);
            for j in 0..groups {
                if dx[j] < 0.0 {
                    alpha_p = alpha_p.min(tau * x[j] / -dx[j]);
                }
            }
            let alpha_d = (tau * max_step(&z, &dz)).min(1.0);
            let merit = |pt: &Point, s: &DVector<f64>, z: &DVector<f64>| -> f64 {
                let rd = &pt.gradient - pt.jacobian.transpose() * z;
                let rp = &pt.constraints - s;
                let rc = s.component_mul(z).add_scalar(-mu_target);
                rd.norm_squared() + rp.norm_squared() + rc.norm_squared()
            };
            let current = merit(&point, &s, &z);
            let mut beta = 1.0;
            let mut accepted = None;
            for _ in 0..40 {
                let x_new = &x + beta * alpha_p * &dx;
                let s_new = &s + beta * alpha_p * &ds;
                let z_new = &z + beta * alpha_d * &dz;
                if let Some(pt) = self.evaluate_reduced(red, x_new.as_slice(), &z_new) {
                    let trial = merit(&pt, &s_new, &z_new);
                    if trial.is_finite() && trial <= (1.0 - 1e-4 * beta * alpha_p.min(alpha_d)) * current {
                        accepted = Some((x_new, s_new, z_new, pt));
                        break;
                    }
                }
                beta *= 0.5;
            }
            match accepted {
                Some((x_new, s_new, z_new, pt)) => {
                    x = x_new;
                    s = s_new;
                    z = z_new;
                    point = pt;
                }
                None => {
                    // No decrease is possible at this precision: the point is
                    // as good as the arithmetic allows; the certificate says how good.
                    if r_p.amax() <= 1e3 * tol_primal && mu <= 1e6 * tol_mu {
                        return Ok(((&red.map * &x).as_slice().to_vec(), iteration));
                    }
                    return Err(ContractError::Solver(format!(
                        "line search failed at iteration {iteration} (mu {mu:.2e}, primal residual {:.2e})",
                        r_p.amax()
                    )));
                }
            }
        }
        Err(ContractError::Solver(format!("no convergence in {ITERATIONS_MAX} iterations")))
    }

    /// From optimal contributions to the canonical menu: exact pools,
    /// least rents, t and t-bar at the final m.
    fn finish(&self, mut m: Vec<f64>, iterations: usize) -> Result<Solution> {
        let types = self.types;
        // Monotone within rounding: a later type never contributes less.
        for i in 1..types {
            if m[i] < m[i - 1] {
                m[i] = m[i - 1];
            }
        }
        let build = |m: &[f64]| {
            let e = self.expectations.evaluate(m, None);
            let u = least_rents(&self.costs, &self.f, m);
            let t: Vec<f64> = (0..types).map(|i| u[i] + self.costs[i] * m[i]).collect();
            (e, u, t)
        };
        let feasible = |e: &crate::expectation::Evaluation, t: &[f64]| {
            (0..types).all(|i| t[i] <= self.v * e.present[i] + 1e-12 * self.v.max(1.0))
        };
        // Snap near-equal neighbours into exact pools, if that keeps the budget.
        let scale = m.iter().fold(0.0f64, |a, &b| a.max(b)).max(1e-300);
        let mut snapped = m.clone();
        let mut i = 0;
        while i < types {
            let mut j = i;
            while j + 1 < types && snapped[j + 1] - snapped[j] <= 1e-8 * scale {
                j += 1;
            }
            if j > i {
                let mean = snapped[i..=j].iter().sum::<f64>() / (j - i + 1) as f64;
                snapped[i..=j].iter_mut().for_each(|v| *v = mean);
            }
            i = j + 1;
        }
        let (mut e, mut u, mut t) = build(&snapped);
        if snapped != m && !feasible(&e, &t) {
            (e, u, t) = build(&m);
        } else {
            m = snapped;
        }
        let tbar: Vec<f64> = e.present.iter().map(|v| self.v * v).collect();
        let t_final = t;
        let reservations = self.costs.iter().map(|&c| reservation(&self.accuracy, self.v, c)).collect();
        Ok(Solution {
            reservations,
            pools: pools_of(&m, &t_final),
            contribution: m,
            expected_reward_value: t_final,
            max_reward_value_error_bound: e.present_error_bound.iter().map(|b| self.v * b).collect(),
            max_reward_value: tbar,
            utility: u,
            expected_accuracy: e.total,
            expected_value: self.v * e.total,
            accuracy_error_bound: e.total_error_bound,
            iterations,
            method: "",
            outcomes: None,
            solve_seconds: 0.0,
        })
    }
}

/// Largest step in [0, inf) keeping v + step * dv >= 0.
fn max_step(v: &DVector<f64>, dv: &DVector<f64>) -> f64 {
    v.iter().zip(dv.iter()).filter(|(_, d)| **d < 0.0).map(|(a, d)| -a / d).fold(f64::INFINITY, f64::min)
}
