//! An independent evaluator of a menu: given contributions and expected
//! reward values, it recomputes t-bar from scratch and measures the largest
//! violation of IR, of *every* pairwise IC (the solver imposes only the
//! local ones) and of the budget. Tests and the CLI's `max_violation` use
//! it, so the solver is never trusted to grade itself.

use crate::error::Result;
use crate::expectation::{Expectations, Method};
use crate::reservation::reservation;
use crate::scenario::Scenario;

/// Largest violations, each clamped at 0, in value units.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Violations {
    /// max_i f_i - (t_i - c_i m_i)
    pub individual_rationality: f64,
    /// max_{i != j} (t_j - c_i m_j) - (t_i - c_i m_i)
    pub incentive_compatibility: f64,
    /// max_i t_i - t-bar_i
    pub budget: f64,
    /// max_i -m_i, -t_i
    pub nonnegativity: f64,
}

impl Violations {
    /// The largest of the four.
    pub fn max(&self) -> f64 {
        self.individual_rationality.max(self.incentive_compatibility).max(self.budget).max(self.nonnegativity)
    }
}

/// Measures the violations of menu (m, t) in canonical type order, with
/// expectations computed by `method` (and reservation utilities recomputed).
pub fn check(scenario: &Scenario, m: &[f64], t: &[f64], method: Method) -> Result<Violations> {
    let costs = scenario.costs();
    let f: Vec<f64> =
        costs.iter().map(|&c| reservation(&scenario.accuracy, scenario.valuation_scale, c).utility).collect();
    let tbar: Vec<f64> = if scenario.participants == 1 {
        m.iter().map(|&mi| scenario.value(scenario.accuracy.value(mi))).collect()
    } else {
        let e = Expectations::new(scenario, method)?.evaluate(m, None);
        e.present.iter().map(|v| scenario.value(*v)).collect()
    };
    Ok(violations(&costs, &f, m, t, &tbar))
}

/// The violations for given reservation utilities and t-bar.
pub fn violations(costs: &[f64], f: &[f64], m: &[f64], t: &[f64], tbar: &[f64]) -> Violations {
    let types = costs.len();
    let mut v = Violations {
        individual_rationality: 0.0,
        incentive_compatibility: 0.0,
        budget: 0.0,
        nonnegativity: 0.0,
    };
    for i in 0..types {
        let own = t[i] - costs[i] * m[i];
        v.individual_rationality = v.individual_rationality.max(f[i] - own);
        v.budget = v.budget.max(t[i] - tbar[i]);
        v.nonnegativity = v.nonnegativity.max(-m[i]).max(-t[i]);
        for j in 0..types {
            if j != i {
                v.incentive_compatibility = v.incentive_compatibility.max((t[j] - costs[i] * m[j]) - own);
            }
        }
    }
    v
}
