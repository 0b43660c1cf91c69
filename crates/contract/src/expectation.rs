//! The expectations the contract problem is made of, behind one interface
//! with two engines: exact enumeration of the multinomial outcomes
//! ([`crate::outcomes`]) and the enumeration-free convolution of the total
//! contribution ([`crate::convolution`]).
//!
//! Everything the solver and the checks need is F(m) = E[a(n.m)], the
//! conditional expectations F_i(m) = E[a(n.m) | n_i >= 1], their
//! gradients, and one weighted Hessian sigma * F'' + sum_i lambda_i F_i''
//! (the Hessian of the Lagrangian, so the engines never have to build I+1
//! separate matrices).

use crate::accuracy::Accuracy;
use crate::convolution::Convolution;
use crate::error::{ContractError, Result};
use crate::outcomes::{Enumeration, outcome_count};
use crate::scenario::Scenario;

/// Largest enumeration work (outcomes x I^2, the flops of one sweep with
/// its Hessian) chosen automatically: 1,000,000 outcomes at I = 5 (S3 with
/// N = 60), 250,000 at I = 10 (N = 11). An evaluation then stays near 20 ms,
/// while the convolution engine's cost depends on the spread of the
/// contributions and can be far higher at such moderate N.
pub const ENUMERATION_WORK_MAX: f64 = 25_000_000.0;

/// Whether `Method::Auto` enumerates N participants of I types.
pub fn enumeration_preferred(participants: u32, types: usize) -> bool {
    outcome_count(participants, types) * (types * types) as f64 <= ENUMERATION_WORK_MAX
}
/// Hard limit even when enumeration is requested explicitly (memory).
pub const ENUMERATION_OUTCOMES_HARD_MAX: usize = 20_000_000;
/// Default target for the error bound of every enumeration-free
/// expectation, in accuracy units (value units are this times v's scale).
pub const CONVOLUTION_TARGET_ERROR: f64 = 1e-10;

/// How expectations are computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// Enumerate when [`enumeration_preferred`], convolve otherwise.
    Auto,
    /// Always enumerate (refused above [`ENUMERATION_OUTCOMES_HARD_MAX`]).
    Enumerate,
    /// Always convolve (needs N >= 3).
    Convolution,
}

impl std::str::FromStr for Method {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "auto" => Ok(Method::Auto),
            "enumerate" | "exact" => Ok(Method::Enumerate),
            "convolution" | "fft" => Ok(Method::Convolution),
            other => Err(format!("unknown method \"{other}\" (auto, enumerate, convolution)")),
        }
    }
}

/// Weights of the Hessian of the Lagrangian: sigma for F, lambda_i for F_i.
#[derive(Debug, Clone, PartialEq)]
pub struct HessianWeights {
    /// Weight of F''.
    pub total: f64,
    /// Weight of each F_i''.
    pub present: Vec<f64>,
}

/// Values, gradients, an optional weighted Hessian, and error bounds.
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluation {
    /// F(m) = E[a(n.m)].
    pub total: f64,
    /// F_i(m) = E[a(n.m) | n_i >= 1].
    pub present: Vec<f64>,
    /// dF/dm.
    pub total_gradient: Vec<f64>,
    /// dF_i/dm_j at row i, column j (I x I, row-major).
    pub present_gradient: Vec<f64>,
    /// sigma F'' + sum_i lambda_i F_i'' (I x I, row-major), if asked for.
    pub hessian: Option<Vec<f64>>,
    /// Bound on |F computed - F exact| (0 when enumerated).
    pub total_error_bound: f64,
    /// Bound on |F_i computed - F_i exact| (0 when enumerated).
    pub present_error_bound: Vec<f64>,
}

impl Evaluation {
    pub(crate) fn zeros(types: usize, with_hessian: bool) -> Self {
        Evaluation {
            total: 0.0,
            present: vec![0.0; types],
            total_gradient: vec![0.0; types],
            present_gradient: vec![0.0; types * types],
            hessian: with_hessian.then(|| vec![0.0; types * types]),
            total_error_bound: 0.0,
            present_error_bound: vec![0.0; types],
        }
    }

    /// Whether every number is finite (the solver's domain test).
    pub fn is_finite(&self) -> bool {
        self.total.is_finite()
            && self.present.iter().all(|v| v.is_finite())
            && self.total_gradient.iter().all(|v| v.is_finite())
            && self.present_gradient.iter().all(|v| v.is_finite())
            && self.hessian.as_ref().is_none_or(|h| h.iter().all(|v| v.is_finite()))
    }
}

/// An expectation engine bound to one scenario.
#[derive(Debug)]
pub enum Expectations {
    /// Exact sweep over all outcomes.
    Enumerated {
        /// The scenario's accuracy function.
        accuracy: Accuracy,
        /// The outcomes.
        outcomes: Enumeration,
    },
    /// Enumeration-free, with an error bound.
    Convolution(Box<Convolution>),
}

impl Expectations {
    /// Chooses and prepares the engine for a scenario.
    pub fn new(scenario: &Scenario, method: Method) -> Result<Self> {
        let p = scenario.probabilities();
        let enumerate = match method {
            Method::Enumerate => true,
            Method::Convolution => false,
            Method::Auto => {
                enumeration_preferred(scenario.participants, p.len()) || scenario.participants < 3
            }
        };
        if enumerate {
            let outcomes = Enumeration::new(scenario.participants, &p, ENUMERATION_OUTCOMES_HARD_MAX)?;
            Ok(Expectations::Enumerated { accuracy: scenario.accuracy, outcomes })
        } else {
            if scenario.participants < 3 {
                return Err(ContractError::TooBig(
                    "the convolution method needs at least 3 participants; use enumeration".into(),
                ));
            }
            Ok(Expectations::Convolution(Box::new(Convolution::new(
                scenario.accuracy,
                scenario.participants,
                p,
                CONVOLUTION_TARGET_ERROR,
            ))))
        }
    }

    /// "enumeration" or "convolution".
    pub fn method_name(&self) -> &'static str {
        match self {
            Expectations::Enumerated { .. } => "enumeration",
            Expectations::Convolution(_) => "convolution",
        }
    }

    /// Number of enumerated outcomes, if enumerating.
    pub fn outcome_count(&self) -> Option<usize> {
        match self {
            Expectations::Enumerated { outcomes, .. } => Some(outcomes.len()),
            Expectations::Convolution(_) => None,
        }
    }

    /// Evaluates at contributions m (canonical type order).
    pub fn evaluate(&self, m: &[f64], weights: Option<&HessianWeights>) -> Evaluation {
        match self {
            Expectations::Enumerated { accuracy, outcomes } => outcomes.evaluate(accuracy, m, weights),
            Expectations::Convolution(c) => c.evaluate(m, weights),
        }
    }
}
