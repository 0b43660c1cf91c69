//! Scenario files: parsing, validation, and the canonical form the solver
//! works on.
//!
//! The file is untrusted input, so it is read with a size limit and parsed
//! by hand from a TOML table rather than through serde derive: that is what
//! lets every error name the exact field (`types[2].probability`) and lets
//! unknown keys be rejected with their full path.
//!
//! The canonical form sorts types by *decreasing* cost (type 1 is the
//! least efficient), the convention under which the local incentive
//! constraints of the solver are stated, and merges types of equal cost:
//! two such types are indistinguishable to the coordinator, so keeping them
//! apart would only create a degenerate pair of identical options.

use std::path::Path;

use crate::accuracy::Accuracy;
use crate::error::{ContractError, Result};

/// Largest scenario file accepted, in bytes. Real scenarios are well under
/// a kilobyte; the limit only keeps a hostile file from exhausting memory.
pub const SCENARIO_BYTES_MAX: u64 = 64 * 1024;
/// Largest number of types (after merging). Beyond this the per-type
/// bookkeeping (bit masks, dense I x I matrices) would need another design.
pub const TYPES_MAX: usize = 64;
/// Largest number of participants. The enumeration-free expectations grow
/// linearly in N; this keeps their grid within memory.
pub const PARTICIPANTS_MAX: u32 = 100_000;
/// Tolerance on the sum of probabilities, as the issue specifies.
pub const PROBABILITY_SUM_TOLERANCE: f64 = 1e-9;

/// One type of participant in canonical form.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AgentType {
    /// Per-unit contribution cost c_i > 0.
    pub cost: f64,
    /// Prior probability p_i > 0 (the canonical probabilities sum to 1).
    pub probability: f64,
}

/// A record that several input types had the same cost and became one.
#[derive(Debug, Clone, PartialEq)]
pub struct Merge {
    /// The shared cost.
    pub cost: f64,
    /// Zero-based positions of the merged entries in the file's `[[types]]`.
    pub input_indices: Vec<usize>,
    /// The merged probability (sum of the entries' probabilities).
    pub probability: f64,
}

/// A validated scenario in canonical form.
#[derive(Debug, Clone, PartialEq)]
pub struct Scenario {
    /// N, the number of participants.
    pub participants: u32,
    /// a(x), the accuracy of a model trained on a total contribution x.
    pub accuracy: Accuracy,
    /// v(a) = scale * a.
    pub valuation_scale: f64,
    /// Types sorted by strictly decreasing cost, equal costs merged.
    pub types: Vec<AgentType>,
    /// Merges that were performed, for the user to see.
    pub merges: Vec<Merge>,
    /// For each `[[types]]` entry of the input, the index of its canonical type.
    pub input_to_type: Vec<usize>,
}

impl Scenario {
    /// Builds and validates a scenario from raw `(cost, probability)` pairs
    /// in any order. Probabilities must sum to 1 within
    /// [`PROBABILITY_SUM_TOLERANCE`]; they are then renormalised exactly.
    pub fn new(
        participants: u32,
        accuracy: Accuracy,
        valuation_scale: f64,
        raw_types: &[(f64, f64)],
    ) -> Result<Self> {
        if participants < 1 {
            return Err(ContractError::field("participants", "must be at least 1"));
        }
        if participants > PARTICIPANTS_MAX {
            return Err(ContractError::field(
                "participants",
                format!("must be at most {PARTICIPANTS_MAX}, got {participants}"),
            ));
        }
        accuracy.validate()?;
        positive_finite("valuation.scale", valuation_scale)?;
        if raw_types.is_empty() {
            return Err(ContractError::field("types", "at least one [[types]] entry is required"));
        }
        for (index, &(cost, probability)) in raw_types.iter().enumerate() {
            positive_finite(&format!("types[{index}].cost"), cost)?;
            positive_finite(&format!("types[{index}].probability"), probability)?;
        }
        let sum: f64 = raw_types.iter().map(|t| t.1).sum();
        if (sum - 1.0).abs() > PROBABILITY_SUM_TOLERANCE {
            return Err(ContractError::field(
                "types[].probability",
                format!(
                    "probabilities must sum to 1 (within {PROBABILITY_SUM_TOLERANCE:e}), they sum to {sum:.12}"
                ),
            ));
        }
        let mut order: Vec<usize> = (0..raw_types.len()).collect();
        order.sort_by(|&a, &b| raw_types[b].0.total_cmp(&raw_types[a].0).then(a.cmp(&b)));
        let mut types: Vec<AgentType> = Vec::new();
        let mut members: Vec<Vec<usize>> = Vec::new();
        let mut input_to_type = vec![0; raw_types.len()];
        for &index in &order {
            let (cost, probability) = raw_types[index];
            match types.last_mut() {
                Some(last) if last.cost == cost => {
                    last.probability += probability;
                    members.last_mut().expect("members parallels types").push(index);
                }
                _ => {
                    types.push(AgentType { cost, probability });
                    members.push(vec![index]);
                }
            }
            input_to_type[index] = types.len() - 1;
        }
        if types.len() > TYPES_MAX {
            return Err(ContractError::field(
                "types",
                format!("at most {TYPES_MAX} distinct costs are supported, got {}", types.len()),
            ));
        }
        for t in &mut types {
            t.probability /= sum;
        }
        let merges = members
            .iter()
            .zip(&types)
            .filter(|(m, _)| m.len() > 1)
            .map(|(m, t)| {
                let mut input_indices = m.clone();
                input_indices.sort_unstable();
                Merge { cost: t.cost, input_indices, probability: t.probability }
            })
            .collect();
        Ok(Scenario { participants, accuracy, valuation_scale, types, merges, input_to_type })
    }

    /// Reads and validates a scenario file (at most [`SCENARIO_BYTES_MAX`] bytes).
    pub fn load(path: &Path) -> Result<Self> {
        let shown = path.display().to_string();
        let io = |source| ContractError::Io { path: shown.clone(), source };
        let size = std::fs::metadata(path).map_err(io)?.len();
        if size > SCENARIO_BYTES_MAX {
            return Err(ContractError::TooLarge { path: shown, size, limit: SCENARIO_BYTES_MAX });
        }
        let text = std::fs::read_to_string(path).map_err(io)?;
        Self::from_toml_str(&text)
    }

    /// Parses and validates the TOML text of a scenario.
    pub fn from_toml_str(text: &str) -> Result<Self> {
        if text.len() as u64 > SCENARIO_BYTES_MAX {
            return Err(ContractError::TooLarge {
                path: "<input>".into(),
                size: text.len() as u64,
                limit: SCENARIO_BYTES_MAX,
            });
        }
        let root: toml::Table =
            text.parse().map_err(|e: toml::de::Error| ContractError::Toml(e.to_string()))?;
        only_keys("", &root, &["participants", "accuracy", "valuation", "types"])?;
        let participants = match root.get("participants") {
            None => return Err(ContractError::field("participants", "missing")),
            Some(toml::Value::Integer(n)) if *n < 1 => {
                return Err(ContractError::field("participants", format!("must be at least 1, got {n}")));
            }
            Some(toml::Value::Integer(n)) if *n > i64::from(PARTICIPANTS_MAX) => {
                return Err(ContractError::field(
                    "participants",
                    format!("must be at most {PARTICIPANTS_MAX}, got {n}"),
                ));
            }
            Some(toml::Value::Integer(n)) => u32::try_from(*n).expect("range checked above"),
            Some(other) => {
                return Err(ContractError::field(
                    "participants",
                    format!("must be an integer, got {}", other.type_str()),
                ));
            }
        };
        let accuracy = accuracy_from_table(table(&root, "accuracy")?)?;
        let valuation = table(&root, "valuation")?;
        only_keys("valuation", valuation, &["scale"])?;
        let scale = number(valuation, "valuation", "scale")?;
        let entries = match root.get("types") {
            Some(toml::Value::Array(entries)) => entries,
            Some(other) => {
                return Err(ContractError::field(
                    "types",
                    format!("must be an array of tables ([[types]]), got {}", other.type_str()),
                ));
            }
            None => return Err(ContractError::field("types", "missing: add at least one [[types]] entry")),
        };
        if entries.len() > TYPES_MAX {
            return Err(ContractError::field(
                "types",
                format!("at most {TYPES_MAX} entries are supported, got {}", entries.len()),
            ));
        }
        let mut raw = Vec::with_capacity(entries.len());
        for (index, entry) in entries.iter().enumerate() {
            let path = format!("types[{index}]");
            let toml::Value::Table(entry) = entry else {
                return Err(ContractError::field(path, "must be a table"));
            };
            only_keys(&path, entry, &["cost", "probability"])?;
            raw.push((number(entry, &path, "cost")?, number(entry, &path, "probability")?));
        }
        Scenario::new(participants, accuracy, scale, &raw)
    }

    /// Number of (canonical) types I.
    pub fn type_count(&self) -> usize {
        self.types.len()
    }

    /// Costs in canonical (decreasing) order.
    pub fn costs(&self) -> Vec<f64> {
        self.types.iter().map(|t| t.cost).collect()
    }

    /// Probabilities in canonical order.
    pub fn probabilities(&self) -> Vec<f64> {
        self.types.iter().map(|t| t.probability).collect()
    }

    /// v(a).
    pub fn value(&self, accuracy: f64) -> f64 {
        self.valuation_scale * accuracy
    }

    /// Human-readable lines describing the merges, empty if none.
    pub fn merge_notes(&self) -> Vec<String> {
        self.merges
            .iter()
            .map(|m| {
                let list: Vec<String> = m.input_indices.iter().map(|i| format!("types[{i}]")).collect();
                format!(
                    "{} have equal cost {} and were merged into one type with probability {}",
                    list.join(", "),
                    m.cost,
                    m.probability
                )
            })
            .collect()
    }
}

/// Parses an `[accuracy]` table (the inverse of [`accuracy_table`]).
pub fn accuracy_from_table(accuracy_table: &toml::Table) -> Result<Accuracy> {
    let kind = match accuracy_table.get("kind") {
        Some(toml::Value::String(s)) => s.as_str(),
        Some(other) => {
            return Err(ContractError::field(
                "accuracy.kind",
                format!("must be a string, got {}", other.type_str()),
            ));
        }
        None => return Err(ContractError::field("accuracy.kind", "missing")),
    };
    let number = |key| number(accuracy_table, "accuracy", key);
    let accuracy = match kind {
        "generalization-bound" => {
            only_keys("accuracy", accuracy_table, &["kind", "a_opt", "k", "unit"])?;
            let unit = if accuracy_table.contains_key("unit") { number("unit")? } else { 1.0 };
            Accuracy::GeneralizationBound { a_opt: number("a_opt")?, k: number("k")?, unit }
        }
        "power-law" => {
            only_keys("accuracy", accuracy_table, &["kind", "a_opt", "b", "c"])?;
            Accuracy::PowerLaw { a_opt: number("a_opt")?, b: number("b")?, c: number("c")? }
        }
        "sqrt" => {
            only_keys("accuracy", accuracy_table, &["kind"])?;
            Accuracy::Sqrt
        }
        other => {
            return Err(ContractError::field(
                "accuracy.kind",
                format!(
                    "unknown kind \"{other}\", expected \"generalization-bound\", \"power-law\" or \"sqrt\""
                ),
            ));
        }
    };
    accuracy.validate()?;
    Ok(accuracy)
}

/// The `[accuracy]` table of a scenario file for `accuracy`: what
/// `crowdtrain contract fit` writes. Parsing it back gives the same value
/// (floats are written in Rust's shortest round-trip form).
pub fn accuracy_table(accuracy: &Accuracy) -> toml::Table {
    let mut table = toml::Table::new();
    table.insert("kind".into(), toml::Value::String(accuracy.kind().into()));
    let mut put = |key: &str, value: f64| {
        table.insert(key.into(), toml::Value::Float(value));
    };
    match *accuracy {
        Accuracy::GeneralizationBound { a_opt, k, unit } => {
            put("a_opt", a_opt);
            put("k", k);
            if unit != 1.0 {
                put("unit", unit);
            }
        }
        Accuracy::PowerLaw { a_opt, b, c } => {
            put("a_opt", a_opt);
            put("b", b);
            put("c", c);
        }
        Accuracy::Sqrt => {}
    }
    table
}

/// The `[accuracy]` section for `accuracy`, as TOML text.
pub fn accuracy_section(accuracy: &Accuracy) -> String {
    // By hand, so `kind` comes first (a table sorts its keys).
    let mut section = format!("[accuracy]\nkind = \"{}\"\n", accuracy.kind());
    for (key, value) in accuracy_table(accuracy) {
        if key != "kind" {
            section.push_str(&format!("{key} = {value}\n"));
        }
    }
    section
}

/// The scenario file `text` with its `[accuracy]` replaced by `accuracy`,
/// validated as a whole. Comments and layout are not kept.
pub fn replace_accuracy(text: &str, accuracy: &Accuracy) -> Result<String> {
    Scenario::from_toml_str(text)?;
    let mut root: toml::Table =
        text.parse().map_err(|e: toml::de::Error| ContractError::Toml(e.to_string()))?;
    root.insert("accuracy".into(), toml::Value::Table(accuracy_table(accuracy)));
    let replaced = toml::to_string(&root).expect("a parsed table serialises");
    Scenario::from_toml_str(&replaced)?;
    Ok(replaced)
}

fn positive_finite(field: &str, value: f64) -> Result<()> {
    if !value.is_finite() {
        return Err(ContractError::field(field, format!("must be a finite number, got {value}")));
    }
    if value <= 0.0 {
        return Err(ContractError::field(field, format!("must be positive, got {value}")));
    }
    Ok(())
}

fn only_keys(path: &str, table: &toml::Table, allowed: &[&str]) -> Result<()> {
    for key in table.keys() {
        if !allowed.contains(&key.as_str()) {
            let field = if path.is_empty() { key.clone() } else { format!("{path}.{key}") };
            return Err(ContractError::field(
                field,
                format!("unknown field (allowed here: {})", allowed.join(", ")),
            ));
        }
    }
    Ok(())
}

fn table<'a>(root: &'a toml::Table, key: &str) -> Result<&'a toml::Table> {
    match root.get(key) {
        Some(toml::Value::Table(t)) => Ok(t),
        Some(other) => Err(ContractError::field(key, format!("must be a table, got {}", other.type_str()))),
        None => Err(ContractError::field(key, format!("missing: add a [{key}] table"))),
    }
}

fn number(table: &toml::Table, path: &str, key: &str) -> Result<f64> {
    let field = format!("{path}.{key}");
    let value = match table.get(key) {
        Some(toml::Value::Float(x)) => *x,
        Some(toml::Value::Integer(n)) => *n as f64,
        Some(other) => {
            return Err(ContractError::field(field, format!("must be a number, got {}", other.type_str())));
        }
        None => return Err(ContractError::field(field, "missing")),
    };
    positive_finite(&field, value)?;
    Ok(value)
}
