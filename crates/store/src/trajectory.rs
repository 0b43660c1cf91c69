//! A run's trajectory: its checkpoints in order, the verified work behind
//! each, and the coordinator's evaluation of each on the test set.
//!
//! This is what fitting the accuracy function a(M) reads (contribution
//! against value) and what reward models are built from (checkpoints
//! against value). The checkpoints and the work come from the ledger,
//! verified link by link against the coordinator's key, so nothing here can
//! name a model or a contribution the coordinator did not sign; the
//! evaluations come from the rounds table, which the coordinator fills in
//! off the round's path, and are cross-checked to belong to the same
//! models.

use std::collections::BTreeMap;
use std::path::Path;

use crowdtrain_protocol::ledger::Event;
use crowdtrain_protocol::reward_model::RunCheckpoint;
use crowdtrain_protocol::{PublicKey, RoundId};

use crate::db::{LedgerFailure, Store, StoreError, verify_ledger};

/// One checkpoint of the run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrajectoryPoint {
    pub checkpoint: RunCheckpoint,
    /// Verified work units credited in this round and every one before:
    /// the total contribution M behind this model (0 for the initial model).
    pub contribution: u64,
    /// The coordinator's evaluation on the test set, once done (never for
    /// the initial model).
    pub test_accuracy: Option<f64>,
    pub test_loss: Option<f64>,
}

/// The run's checkpoints, initial model first, then each closed round's
/// result in round order.
#[derive(Debug, Clone, PartialEq)]
pub struct Trajectory {
    /// The architecture's name, as the run record gives it.
    pub model_name: String,
    /// The run's configuration, canonical JSON (`run.toml` as the
    /// coordinator read it).
    pub config_json: String,
    pub points: Vec<TrajectoryPoint>,
}

impl Trajectory {
    /// The checkpoints alone, in order.
    pub fn checkpoints(&self) -> Vec<RunCheckpoint> {
        self.points.iter().map(|point| point.checkpoint).collect()
    }
}

/// Why a trajectory could not be read.
#[derive(Debug, thiserror::Error)]
pub enum TrajectoryError {
    #[error("the ledger does not verify ({0}); nothing in it can be trusted")]
    Ledger(#[from] LedgerFailure),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the state is inconsistent: {0}")]
    Inconsistent(String),
}

/// Reads the trajectory of the run whose coordinator database is `path`,
/// verifying its ledger against `key` (default: the key the state names).
pub fn read_trajectory(path: &Path, key: Option<PublicKey>) -> Result<Trajectory, TrajectoryError> {
    let entries = verify_ledger(path, key)?;
    let reader = Store::open_reader(path)?;
    let run = reader.run()?.ok_or_else(|| TrajectoryError::Inconsistent("the state holds no run".into()))?;
    let mut work: BTreeMap<RoundId, u64> = BTreeMap::new();
    let mut closed = Vec::new();
    let mut initial = None;
    for entry in &entries {
        match &entry.event {
            Event::RunStarted { initial_model, .. } => initial = Some(*initial_model),
            Event::WorkAccepted { round, units, .. } => {
                let total = work.entry(*round).or_default();
                *total = total.checked_add(*units).ok_or_else(|| {
                    TrajectoryError::Inconsistent(format!("round {round}'s verified work overflows"))
                })?;
            }
            Event::RoundClosed { round, result_model, .. } => closed.push((*round, *result_model)),
            _ => {}
        }
    }
    let initial =
        initial.ok_or_else(|| TrajectoryError::Inconsistent("the ledger has no run-started entry".into()))?;
    if initial != run.initial_model {
        return Err(TrajectoryError::Inconsistent(
            "the ledger's initial model is not the run record's".into(),
        ));
    }
    let evaluations: BTreeMap<RoundId, _> =
        reader.round_records()?.into_iter().map(|record| (record.round, record)).collect();
    let mut points = vec![TrajectoryPoint {
        checkpoint: RunCheckpoint { round: None, model: initial },
        contribution: 0,
        test_accuracy: None,
        test_loss: None,
    }];
    let mut contribution = 0u64;
    let mut previous: Option<RoundId> = None;
    for (round, model) in closed {
        if previous.is_some_and(|previous| round <= previous) {
            return Err(TrajectoryError::Inconsistent(format!("round {round} closes after a later round")));
        }
        previous = Some(round);
        contribution += work.get(&round).copied().unwrap_or(0);
        let record = evaluations.get(&round);
        if record.and_then(|record| record.result_model) != Some(model) {
            return Err(TrajectoryError::Inconsistent(format!(
                "the ledger says round {round} produced {model}, the rounds table does not"
            )));
        }
        points.push(TrajectoryPoint {
            checkpoint: RunCheckpoint { round: Some(round), model },
            contribution,
            test_accuracy: record.and_then(|record| record.test_accuracy),
            test_loss: record.and_then(|record| record.test_loss),
        });
    }
    Ok(Trajectory { model_name: run.model_name, config_json: run.config_json, points })
}
