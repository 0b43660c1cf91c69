//! The contract menu of a run: solved from `[contract]` when the run starts
//! (before any worker registers), recorded once in the ledger
//! (`contract-published`), and served signed at `GET /v1/contract`.

use crowdtrain_contract::certificate::kkt_residual;
use crowdtrain_contract::check::check;
use crowdtrain_contract::scenario::accuracy_from_table;
use crowdtrain_contract::{Expectations, Method, Scenario, solve};
use crowdtrain_protocol::contract::{ContractMenu, ContractSection, MenuOption};

use crate::NodeError;

/// The scenario `[contract]` describes, validated by the solver's rules
/// (every error names its field under `contract.`).
pub fn scenario(section: &ContractSection) -> Result<Scenario, NodeError> {
    let invalid = |reason: String| NodeError::Contract(reason);
    let missing = |field: &str| invalid(format!("contract.{field}: missing"));
    let spec = section.accuracy.as_ref().ok_or_else(|| missing("accuracy"))?;
    let mut table = toml::Table::new();
    table.insert("kind".into(), toml::Value::String(spec.kind.clone()));
    for (name, value) in spec.parameters() {
        table.insert(name.into(), toml::Value::Float(value));
    }
    let accuracy = accuracy_from_table(&table).map_err(|error| invalid(format!("contract.{error}")))?;
    let participants = section.participants.ok_or_else(|| missing("participants"))?;
    let scale = section.valuation.ok_or_else(|| missing("valuation"))?.scale;
    let raw: Vec<(f64, f64)> = section.types.iter().map(|t| (t.cost, t.probability)).collect();
    Scenario::new(participants, accuracy, scale, &raw).map_err(|error| invalid(format!("contract.{error}")))
}

/// Solves the menu and certifies it (the independent full-IC checker and
/// the KKT residual), in canonical type order (highest cost first).
pub fn solve_menu(section: &ContractSection) -> Result<ContractMenu, NodeError> {
    let scenario = scenario(section)?;
    let failed =
        |error: crowdtrain_contract::ContractError| NodeError::Contract(format!("solving the menu: {error}"));
    let solution = solve(&scenario, Method::Auto).map_err(failed)?;
    let violations = check(&scenario, &solution.contribution, &solution.expected_reward_value, Method::Auto)
        .map_err(failed)?;
    let kkt = if scenario.participants > 1 {
        let expectations = Expectations::new(&scenario, Method::Auto).map_err(failed)?;
        kkt_residual(&scenario, &expectations, &solution.contribution, &solution.expected_reward_value)
    } else {
        0.0
    };
    let options = scenario
        .types
        .iter()
        .enumerate()
        .map(|(i, agent)| {
            let contribution = solution.contribution[i].max(0.0);
            let ratio = if solution.max_reward_value[i] > 0.0 {
                (solution.expected_reward_value[i] / solution.max_reward_value[i]).clamp(0.0, 1.0)
            } else {
                0.0
            };
            MenuOption {
                cost: agent.cost,
                probability: agent.probability,
                contribution,
                required_contribution: contribution.ceil() as u64,
                expected_reward_value: solution.expected_reward_value[i],
                reward_ratio: ratio,
                reservation_utility: solution.reservations[i].utility,
                utility: solution.utility[i],
            }
        })
        .collect();
    Ok(ContractMenu {
        participants: scenario.participants,
        accuracy: section.accuracy.clone().expect("checked by scenario()"),
        valuation_scale: scenario.valuation_scale,
        metric: section.metric,
        options,
        expected_accuracy: solution.expected_accuracy,
        max_violation: violations.max(),
        kkt_residual: kkt,
    })
}
