//! The optimal contract inside a run (issue 15): `[contract]` in
//! `run.toml`, and the menu the coordinator solves from it when the run
//! starts, records in the ledger ([`crate::ledger::Event::ContractPublished`])
//! and serves signed at `GET /v1/contract`.
//!
//! Plain data only: solving is `crowdtrain-contract`'s business and is done
//! by the coordinator process (`crowdtrain-node`), which also reads a
//! scenario file named by `contract.scenario` into the inline fields, so the
//! run's identity (its configuration digest) covers the whole scenario.
//!
//! ```toml
//! [contract]
//! scenario = "contracts/run_mlp.toml"   # read at start, relative to run.toml
//! # or inline, as in a scenario file:
//! participants = 6
//! [contract.accuracy]
//! kind = "power-law"
//! a_opt = 0.88
//! b = 3.1
//! c = 0.45
//! [contract.valuation]
//! scale = 100.0
//! [[contract.types]]
//! cost = 0.0004
//! probability = 0.5
//! ```
//!
//! Contributions are in **verified work units** (`inner_steps x
//! batch_size` per accepted, unslashed submission), the unit of the
//! ledger's `work-accepted` entries and of `crowdtrain contract fit`.

use std::path::PathBuf;

use crowdtrain_recipe::Metric;
use serde::{Deserialize, Serialize};

use crate::identity::{BadSignature, Identity, PublicKey, SignatureBytes};
use crate::ids::Digest;
use crate::wire::SignedBody;

/// The signature domain of a participant's choice.
pub const CHOICE_DOMAIN: &str = "crowdtrain/contract-choice/v1";

/// A participant's choice of option, signed with its own key over the run
/// and the option: what the ledger keeps (`option-chosen`) so anyone can
/// check that the participant, not the coordinator, chose. Its cost stays
/// private: only the option travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContractChoice {
    /// The option's index in the menu (canonical order, highest cost first).
    pub option: u32,
    pub signature: SignatureBytes,
}

impl ContractChoice {
    pub fn sign(identity: &Identity, run_id: Digest, option: u32) -> Self {
        Self { option, signature: identity.sign(CHOICE_DOMAIN, &choice_message(run_id, option)) }
    }

    pub fn verify(&self, key: &PublicKey, run_id: Digest) -> Result<(), BadSignature> {
        key.verify(CHOICE_DOMAIN, &choice_message(run_id, self.option), &self.signature)
    }
}

fn choice_message(run_id: Digest, option: u32) -> Vec<u8> {
    let mut message = run_id.0.to_vec();
    message.extend_from_slice(&option.to_le_bytes());
    message
}

/// `[contract]` of `run.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContractSection {
    /// A scenario file, relative to `run.toml`; the node reads it into the
    /// fields below when it loads the configuration, so the published
    /// configuration never names one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scenario: Option<PathBuf>,
    /// N, the number of participants the menu is designed for.
    pub participants: Option<u32>,
    /// a(M), the value of a model trained on M verified work units.
    pub accuracy: Option<AccuracySpec>,
    /// v(a) = scale * a.
    pub valuation: Option<ValuationSpec>,
    /// The participants' types: private per-unit costs and their prior.
    #[serde(default)]
    pub types: Vec<TypeSpec>,
    /// What a model's value is measured as (the a of a(M)).
    #[serde(default = "default_metric")]
    pub metric: Metric,
    /// The most rounds the run goes on past `rounds` while a live
    /// participant has not delivered its option's contribution (default:
    /// `rounds`, so a run at most doubles).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_extra_rounds: Option<u64>,
}

fn default_metric() -> Metric {
    Metric::Accuracy
}

/// `[contract.accuracy]`: as a scenario file's `[accuracy]` (the kinds and
/// their parameters are checked by the solver, which names the field).
/// Every field is always written (no `skip_serializing_if`): the menu
/// carries this in the ledger, whose postcard encoding is positional.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccuracySpec {
    pub kind: String,
    #[serde(default)]
    pub a_opt: Option<f64>,
    #[serde(default)]
    pub k: Option<f64>,
    #[serde(default)]
    pub unit: Option<f64>,
    #[serde(default)]
    pub b: Option<f64>,
    #[serde(default)]
    pub c: Option<f64>,
}

impl AccuracySpec {
    /// The parameters that are set, by name, in a fixed order.
    pub fn parameters(&self) -> Vec<(&'static str, f64)> {
        [("a_opt", self.a_opt), ("k", self.k), ("unit", self.unit), ("b", self.b), ("c", self.c)]
            .into_iter()
            .filter_map(|(name, value)| value.map(|value| (name, value)))
            .collect()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValuationSpec {
    pub scale: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TypeSpec {
    pub cost: f64,
    pub probability: f64,
}

/// A scenario file's keys, as `crowdtrain contract solve` reads them.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ScenarioFile {
    participants: u32,
    accuracy: AccuracySpec,
    valuation: ValuationSpec,
    types: Vec<TypeSpec>,
}

impl ContractSection {
    /// This section with the scenario file's text (`scenario = FILE`) read
    /// into the inline fields, the file's name dropped.
    pub fn with_scenario_text(&self, text: &str) -> Result<Self, String> {
        let file: ScenarioFile = toml::from_str(text).map_err(|error| error.to_string())?;
        Ok(Self {
            scenario: None,
            participants: Some(file.participants),
            accuracy: Some(file.accuracy),
            valuation: Some(file.valuation),
            types: file.types,
            metric: self.metric,
            max_extra_rounds: self.max_extra_rounds,
        })
    }

    /// Every number given, by field, for the checks every number of a
    /// configuration passes (finite: a configuration must read back the
    /// same from JSON, which has no NaN or infinity).
    pub fn numbers(&self) -> Vec<(String, f64)> {
        let mut numbers = Vec::new();
        if let Some(accuracy) = &self.accuracy {
            numbers.extend(
                accuracy
                    .parameters()
                    .into_iter()
                    .map(|(name, value)| (format!("contract.accuracy.{name}"), value)),
            );
        }
        if let Some(valuation) = self.valuation {
            numbers.push(("contract.valuation.scale".into(), valuation.scale));
        }
        for (index, entry) in self.types.iter().enumerate() {
            numbers.push((format!("contract.types[{index}].cost"), entry.cost));
            numbers.push((format!("contract.types[{index}].probability"), entry.probability));
        }
        numbers
    }

    /// Whether the scenario is given inline (any of its fields is set).
    pub fn has_inline_scenario(&self) -> bool {
        self.participants.is_some()
            || self.accuracy.is_some()
            || self.valuation.is_some()
            || !self.types.is_empty()
    }
}

/// The menu a run publishes: one option per type, in canonical order
/// (highest cost first), solved from `[contract]` when the run started.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContractMenu {
    /// N.
    pub participants: u32,
    /// a(M), as solved (M in verified work units).
    pub accuracy: AccuracySpec,
    /// v(a) = valuation_scale * a.
    pub valuation_scale: f64,
    /// What a reward model's value is measured as.
    pub metric: Metric,
    pub options: Vec<MenuOption>,
    /// E[a(n·m)] over the coalitions the prior allows: the objective.
    pub expected_accuracy: f64,
    /// The solver's certificate: the largest IR/IC/budget violation
    /// (checked on all pairs) and the KKT residual.
    pub max_violation: f64,
    pub kkt_residual: f64,
}

/// One option of the menu: what a participant of this type must deliver
/// and the model reward it is promised.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct MenuOption {
    /// The type's per-unit cost c_i.
    pub cost: f64,
    /// Its prior probability p_i.
    pub probability: f64,
    /// m_i as solved, in work units.
    pub contribution: f64,
    /// m_i rounded up to whole work units: what must be delivered.
    pub required_contribution: u64,
    /// t_i = E[v(r_i(n)) | n_i >= 1], the expected value of the reward.
    pub expected_reward_value: f64,
    /// t_i / t̄_i: the reward in coalition n is r_i(n) = ratio · a(n·m)
    /// (v linear), never above the trained model's a(n·m).
    pub reward_ratio: f64,
    /// f_i: what this type earns training alone.
    pub reservation_utility: f64,
    /// u_i = t_i - c_i m_i, at least f_i (IR).
    pub utility: f64,
}

impl MenuOption {
    /// The expected utility of taking this option for a party of per-unit
    /// cost `cost`: t_j - c m_j.
    pub fn utility_for(&self, cost: f64) -> f64 {
        self.expected_reward_value - cost * self.contribution
    }
}

/// Why a party cannot take part under a menu.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ChoiceError {
    #[error(
        "a per-unit cost of {cost} is not one of this run's types (costs {known:?}); the menu was designed for \
         those only"
    )]
    UnknownType { cost: f64, known: Vec<f64> },
    #[error("option {option} does not exist: the menu has options 0 to {}", .options - 1)]
    NoSuchOption { option: usize, options: usize },
    #[error("a cost must be positive and finite, got {0}")]
    BadCost(f64),
}

/// Relative tolerance within which a stated cost is a type's cost.
pub const COST_TOLERANCE: f64 = 1e-9;

impl ContractMenu {
    /// The type of a party of per-unit cost `cost`, if the menu has one.
    pub fn type_of(&self, cost: f64) -> Result<usize, ChoiceError> {
        if !(cost.is_finite() && cost > 0.0) {
            return Err(ChoiceError::BadCost(cost));
        }
        self.options
            .iter()
            .position(|option| (option.cost - cost).abs() <= COST_TOLERANCE * option.cost.max(cost))
            .ok_or_else(|| ChoiceError::UnknownType {
                cost,
                known: self.options.iter().map(|option| option.cost).collect(),
            })
    }

    /// The option a party of cost `cost` chooses: the one maximising its
    /// own expected utility (what incentive compatibility says it picks),
    /// ties to the higher contribution. Refuses costs of no type.
    pub fn choose(&self, cost: f64) -> Result<usize, ChoiceError> {
        self.type_of(cost)?;
        let mut best = 0;
        for (index, option) in self.options.iter().enumerate().skip(1) {
            let (here, there) = (option.utility_for(cost), self.options[best].utility_for(cost));
            let tie = (here - there).abs() <= 1e-9 * here.abs().max(there.abs()).max(1.0);
            if (!tie && here > there) || (tie && option.contribution > self.options[best].contribution) {
                best = index;
            }
        }
        Ok(best)
    }

    /// Checks an explicit choice exists.
    pub fn option(&self, option: usize) -> Result<&MenuOption, ChoiceError> {
        self.options.get(option).ok_or(ChoiceError::NoSuchOption { option, options: self.options.len() })
    }
}

impl SignedBody for ContractMenu {
    const DOMAIN: &'static str = "crowdtrain/contract-menu/v1";
}

#[cfg(test)]
mod tests {
    use super::*;

    fn option(cost: f64, contribution: f64, expected_reward_value: f64) -> MenuOption {
        MenuOption {
            cost,
            probability: 0.5,
            contribution,
            required_contribution: contribution.ceil() as u64,
            expected_reward_value,
            reward_ratio: 1.0,
            reservation_utility: 0.0,
            utility: expected_reward_value - cost * contribution,
        }
    }

    fn menu(options: Vec<MenuOption>) -> ContractMenu {
        ContractMenu {
            participants: 2,
            accuracy: AccuracySpec {
                kind: "sqrt".into(),
                a_opt: None,
                k: None,
                unit: None,
                b: None,
                c: None,
            },
            valuation_scale: 100.0,
            metric: Metric::Accuracy,
            options,
            expected_accuracy: 0.9,
            max_violation: 0.0,
            kkt_residual: 0.0,
        }
    }

    #[test]
    fn each_type_chooses_the_option_that_maximises_its_utility() {
        // High cost 0.5: option 0 gives 50 - 0.5*10 = 45, option 1 gives
        // 90 - 0.5*100 = 40. Low cost 0.1: 49 against 80.
        let menu = menu(vec![option(0.5, 10.0, 50.0), option(0.1, 100.0, 90.0)]);
        assert_eq!(menu.choose(0.5).unwrap(), 0);
        assert_eq!(menu.choose(0.1).unwrap(), 1);
    }

    #[test]
    fn ties_go_to_the_higher_contribution() {
        // Cost 0.1: 50 - 1 = 49 and 58 - 9 = 49.
        let menu = menu(vec![option(0.5, 10.0, 50.0), option(0.1, 90.0, 58.0)]);
        assert_eq!(menu.choose(0.1).unwrap(), 1);
        // Identical (pooled) options: the later one, same contribution, is not preferred.
        let pooled = menu_of_pool();
        assert_eq!(pooled.choose(0.5).unwrap(), 0);
    }

    fn menu_of_pool() -> ContractMenu {
        menu(vec![option(0.5, 10.0, 50.0), option(0.4, 10.0, 50.0)])
    }

    #[test]
    fn a_choice_verifies_only_for_its_key_run_and_option() {
        let identity = Identity::from_seed([7; 32]);
        let run = Digest::of(b"run");
        let choice = ContractChoice::sign(&identity, run, 2);
        assert!(choice.verify(&identity.public_key(), run).is_ok());
        assert!(choice.verify(&Identity::from_seed([8; 32]).public_key(), run).is_err());
        assert!(choice.verify(&identity.public_key(), Digest::of(b"other")).is_err());
        assert!(ContractChoice { option: 1, ..choice }.verify(&identity.public_key(), run).is_err());
    }

    #[test]
    fn costs_of_no_type_are_refused_with_the_known_costs() {
        let menu = menu(vec![option(0.5, 10.0, 50.0), option(0.1, 100.0, 90.0)]);
        let error = menu.choose(0.3).unwrap_err();
        assert!(matches!(error, ChoiceError::UnknownType { .. }));
        assert!(error.to_string().contains("0.3") && error.to_string().contains("[0.5, 0.1]"), "{error}");
        assert!(matches!(menu.choose(-1.0), Err(ChoiceError::BadCost(_))));
        assert!(matches!(menu.choose(f64::NAN), Err(ChoiceError::BadCost(_))));
        assert!(matches!(menu.option(2), Err(ChoiceError::NoSuchOption { option: 2, options: 2 })));
    }
}
