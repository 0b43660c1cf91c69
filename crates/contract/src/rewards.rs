//! From a first-moment menu back to model rewards.
//!
//! The proportional construction v(r_i(n)) = (t_i / t-bar_i) v(a(n.m))
//! gives every type a fixed fraction of the trained model's value in every
//! outcome. Because t_i <= t-bar_i, the fraction is at most 1, so no reward
//! ever beats the trained model, and its conditional expectation is exactly
//! t_i, so IR and IC carry over unchanged. With v linear the fraction
//! applies to accuracy directly: r_i(n) = (t_i / t-bar_i) a(n.m).

use crate::error::{ContractError, Result};
use crate::outcomes::Enumeration;
use crate::scenario::Scenario;
use crate::solver::Solution;

/// The reward each type receives in one realised outcome.
#[derive(Debug, Clone, PartialEq)]
pub struct Realization {
    /// n in canonical type order.
    pub outcome: Vec<u32>,
    /// n.m.
    pub total_contribution: f64,
    /// a(n.m), the best model trained.
    pub trained_accuracy: f64,
    /// Per canonical type.
    pub types: Vec<TypeReward>,
}

/// One type's realised reward.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TypeReward {
    /// t_i / t-bar_i, in [0, 1].
    pub ratio: f64,
    /// r_i(n), an accuracy never above a(n.m).
    pub reward_accuracy: f64,
    /// v(r_i(n)).
    pub reward_value: f64,
    /// Whether any participant of this type is in the coalition (if not,
    /// the reward is defined but nobody receives it).
    pub present: bool,
}

/// t_i / t-bar_i, clamped into [0, 1] (0 when t-bar_i = 0, where t_i must be 0).
pub fn ratios(solution: &Solution) -> Vec<f64> {
    solution
        .expected_reward_value
        .iter()
        .zip(&solution.max_reward_value)
        .map(|(&t, &tb)| if tb > 0.0 { (t / tb).clamp(0.0, 1.0) } else { 0.0 })
        .collect()
}

/// Parses `--outcome` counts given in the file's `[[types]]` order and
/// maps them to canonical types (counts of merged entries add up).
pub fn parse_outcome(scenario: &Scenario, text: &str) -> Result<Vec<u32>> {
    let counts: Vec<u32> = text
        .split(',')
        .map(|s| {
            s.trim()
                .parse::<u32>()
                .map_err(|_| ContractError::Outcome(format!("\"{}\" is not a count", s.trim())))
        })
        .collect::<Result<_>>()?;
    if counts.len() != scenario.input_to_type.len() {
        return Err(ContractError::Outcome(format!(
            "{} counts given, the file has {} [[types]] entries",
            counts.len(),
            scenario.input_to_type.len()
        )));
    }
    let total: u64 = counts.iter().map(|&c| u64::from(c)).sum();
    if total != u64::from(scenario.participants) {
        return Err(ContractError::Outcome(format!(
            "counts sum to {total}, participants = {}",
            scenario.participants
        )));
    }
    let mut canonical = vec![0u32; scenario.type_count()];
    for (entry, &c) in counts.iter().enumerate() {
        canonical[scenario.input_to_type[entry]] += c;
    }
    Ok(canonical)
}

/// Realises the proportional rewards for outcome n (canonical order).
pub fn realize(scenario: &Scenario, solution: &Solution, outcome: &[u32]) -> Realization {
    let total: f64 = outcome.iter().zip(&solution.contribution).map(|(&k, &m)| k as f64 * m).sum();
    let trained = scenario.accuracy.value(total);
    let types = ratios(solution)
        .into_iter()
        .zip(outcome)
        .map(|(ratio, &k)| {
            let reward_accuracy = ratio * trained;
            assert!(reward_accuracy <= trained, "a reward never beats the trained model");
            TypeReward {
                ratio,
                reward_accuracy,
                reward_value: scenario.value(reward_accuracy),
                present: k > 0,
            }
        })
        .collect();
    Realization { outcome: outcome.to_vec(), total_contribution: total, trained_accuracy: trained, types }
}

/// The law of v(r_i(n)) given n_i >= 1, as (value, probability) pairs
/// sorted by value, from enumerated outcomes (for the paper's figures).
pub fn reward_value_distribution(
    scenario: &Scenario,
    solution: &Solution,
    outcomes: &Enumeration,
    type_index: usize,
) -> Vec<(f64, f64)> {
    let ratio = ratios(solution)[type_index];
    let q = outcomes.present_mass()[type_index];
    let mut law: Vec<(f64, f64)> = (0..outcomes.len())
        .filter_map(|k| {
            let (n, p) = outcomes.outcome(k);
            (n[type_index] > 0).then(|| {
                let total: f64 = n.iter().zip(&solution.contribution).map(|(&c, &m)| c as f64 * m).sum();
                (scenario.value(ratio * scenario.accuracy.value(total)), p / q)
            })
        })
        .collect();
    law.sort_by(|a, b| a.0.total_cmp(&b.0));
    law
}
