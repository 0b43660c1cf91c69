//! Optimal contract design with model rewards: "Paid with Models" (Wang,
//! Wu, Liu, Low, AAAI 2025), solved exactly and at scale.
//!
//! A coordinator who cannot see the participants' per-unit costs publishes
//! a menu: for each type a required contribution m_i and a distribution of
//! model rewards r_i(n) (models of some accuracy, depending on the realised
//! coalition n). Participants pick options; the coordinator maximises the
//! expected accuracy of the jointly trained model subject to individual
//! rationality, incentive compatibility and the rule that no reward beats
//! the trained model.
//!
//! # Brief overview
//! * [`Scenario`] is a validated problem (from a TOML file or built in
//!   code), in canonical order: decreasing cost, equal costs merged.
//! * [`solve`] returns a [`Solution`]: the optimal first-moment menu
//!   (m_i, t_i) with t-bar, utilities, pools and error bounds.
//! * [`Expectations`] computes E[a(n.m)] and E[a(n.m) | n_i >= 1] with
//!   their derivatives, either by enumerating the multinomial (exact, the
//!   paper's method) or by convolving the law of the total contribution
//!   ([`convolution`], enumeration-free, with an error bound), chosen
//!   automatically by size.
//! * [`rewards`] maps a menu back to reward distributions (the proportional
//!   construction) and realises them for one outcome.
//! * [`baselines`] computes the complete-information contract and the
//!   free-riding equilibrium without a contract.
//! * [`check`] and [`certificate`] grade a menu independently of the solver.
//! * [`paper`] reproduces the paper's experiments as tables and figures.
//! * [`fit`] fits a(M) (a saturating power law, or the paper's bound) to a
//!   measured learning curve, so a scenario can use a(M) from data.
//!
//! # Why the solver looks the way it does
//! The first-moment problem is convex but its budget constraints are
//! expectations of a non-conic function, so a conic solver could only
//! approximate it. It has just 2I variables, so the solver is a dense
//! primal-dual interior-point method with exact Hessians, run on the
//! structure the theory gives: utilities as variables (so IC constraints are
//! differences), only local IC constraints (they imply monotone
//! contributions and all pairwise IC), the pooling contract as the start,
//! and a canonical least-rent menu with exact pools at the end. All the
//! cost is in the expectations, which is where enumeration-free convolution
//! removes the paper's combinatorial bottleneck.

pub mod accuracy;
pub mod baselines;
pub mod certificate;
pub mod check;
pub mod convolution;
pub mod error;
pub mod expectation;
pub mod fit;
pub mod outcomes;
pub mod paper;
pub mod reservation;
pub mod rewards;
pub mod scenario;
pub mod solver;

pub use accuracy::Accuracy;
pub use error::{ContractError, Result};
pub use expectation::{Expectations, Method};
pub use scenario::Scenario;
pub use solver::{Solution, solve};
