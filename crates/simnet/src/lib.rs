//! A deterministic simulator of the whole crowdtrain network, in the
//! manner of TigerBeetle's VOPR: one seed decides everything.
//!
//! A run puts the real coordinator driver
//! ([`crowdtrain_coordinator::Driver`], with the stand-in training
//! [`model::SimTraining`], or under `--training model` the real
//! [`crowdtrain_coordinator::ModelTraining`] with workers that really train,
//! [`real`]: the real state machine
//! [`crowdtrain_protocol::Coordinator`], the real store, SQLite in memory,
//! and the real defence, checks and robust aggregation) under simulated
//! workers on a virtual clock ([`queue`]):
//!
//! - the network delays, loses, duplicates and so reorders every message;
//! - workers register, poll for their assignment, train (a hash stands in
//!   for training, [`model`]; or a tiny MLP on the bundled Fashion-MNIST
//!   subset, [`real`]), commit, answer audits and reveal; some are slow;
//!   they join, leave, crash and restart during the run; under a delayed
//!   outer update ([`SimConfig::outer_delay`]) up to d + 1 rounds are live
//!   and each worker pipelines them, training the next round while the
//!   ones before it settle, as the real worker does;
//! - attackers are lazy, reveal something else than they committed, copy
//!   others' work (bit for bit, or nearly: `--near-copiers`), send harmful
//!   or malformed updates ([`model::Behaviour`]);
//! - the coordinator crashes before or after a write, and writes fail
//!   (a batch the store cannot take, rolled back whole); after each it
//!   halts, as the node does, and restarts from its store
//!   ([`crowdtrain_coordinator::Driver::open`]).
//!
//! After every write, every restart and at the end the run checks
//! [`invariants`]: the ledger verifies, nothing acknowledged is lost, the
//! restored machine is the one that died (as far as it was durable), every
//! round closes or fails by the rules, no honest worker is slashed or
//! refused, nothing always caught ever counts, the store's totals are what
//! the records add up to, and with a quorum of honest workers up the run
//! finishes. A violation names the seed and the command that reproduces
//! it.

pub mod invariants;
mod mode;
pub mod model;
pub mod queue;
pub mod real;
mod world;

use crowdtrain_protocol::MAX_OUTER_DELAY;
use serde::Serialize;

pub use invariants::{Tally, Violation};
pub use mode::TrainingMode;
pub use world::Finished;

/// How often things go wrong.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Faults {
    /// Coordinator crashes per round, on average (half before a write is
    /// durable, half after it, before the answer).
    pub crash: f64,
    /// Failed writes per round, on average.
    pub write: f64,
    /// The chance that a message is lost.
    pub loss: f64,
    /// The chance that a message is delivered twice.
    pub duplicate: f64,
    /// The most a message is delayed, in milliseconds (the least is 1):
    /// messages overtake each other within this.
    pub max_delay_ms: u64,
}

impl Default for Faults {
    fn default() -> Self {
        Self { crash: 0.05, write: 0.05, loss: 0.05, duplicate: 0.02, max_delay_ms: 200 }
    }
}

impl Faults {
    /// Parses `key=value,...` over the defaults (keys `crash`, `write`,
    /// `loss`, `dup`, `delay`), or `none` for a run without any fault.
    pub fn parse(text: &str) -> Result<Self, String> {
        if text == "none" {
            return Ok(Self { crash: 0.0, write: 0.0, loss: 0.0, duplicate: 0.0, max_delay_ms: 1 });
        }
        let mut faults = Self::default();
        for pair in text.split(',').filter(|pair| !pair.is_empty()) {
            let (key, value) = pair.split_once('=').ok_or_else(|| format!("`{pair}` is not key=value"))?;
            let number = |what: &str| -> Result<f64, String> {
                let value: f64 = value.parse().map_err(|_| format!("{what}: `{value}` is not a number"))?;
                (value.is_finite() && value >= 0.0)
                    .then_some(value)
                    .ok_or_else(|| format!("{what} must be >= 0"))
            };
            let chance = |what: &str| -> Result<f64, String> {
                let value = number(what)?;
                (value <= 1.0).then_some(value).ok_or_else(|| format!("{what} is a chance, at most 1"))
            };
            match key {
                "crash" => faults.crash = number(key)?,
                "write" => faults.write = number(key)?,
                "loss" => faults.loss = chance(key)?,
                "dup" => faults.duplicate = chance(key)?,
                "delay" => faults.max_delay_ms = (number(key)? as u64).max(1),
                _ => return Err(format!("unknown fault `{key}`: crash, write, loss, dup or delay")),
            }
        }
        Ok(faults)
    }
}

/// Who replays audited segments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Auditors {
    /// The coordinator replays every answered audit itself.
    Coordinator,
    /// Each audit is delegated to another committed worker (the protocol's
    /// draw), whose report the coordinator checks when it disagrees; the
    /// coordinator replays what no auditor reported by the reveal deadline.
    Workers,
}

impl Auditors {
    pub fn parse(text: &str) -> Result<Self, String> {
        match text {
            "coordinator" => Ok(Self::Coordinator),
            "workers" => Ok(Self::Workers),
            _ => Err(format!("`{text}`: the auditors are `coordinator` or `workers`")),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Coordinator => "coordinator",
            Self::Workers => "workers",
        }
    }

    /// What a seed runs unless told: odd seeds delegate their audits.
    pub fn for_seed(seed: u64) -> Self {
        if seed % 2 == 1 { Self::Workers } else { Self::Coordinator }
    }
}

/// The stake a slash takes (the run's `audit.stake`, in work units).
pub const STAKE: u64 = 100;

/// The bond a seed's workers deposit unless told: three stakes (so an
/// attacker is shut out at its third slash) for seeds 2 and 3 modulo 4,
/// none for the others.
pub fn bond_for_seed(seed: u64) -> u64 {
    if seed % 4 >= 2 { 3 * STAKE } else { 0 }
}

/// One simulated run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SimConfig {
    pub seed: u64,
    /// Workers at the start.
    pub workers: u32,
    /// Rounds the run trains for.
    pub rounds: u64,
    /// Churn events (a leave, a crash and restart, or a new worker
    /// joining) over the run, as a fraction of `workers`.
    pub churn: f64,
    /// The fraction of workers that attack (each given one of
    /// [`model::Behaviour::ATTACKS`]).
    pub attackers: f64,
    pub faults: Faults,
    pub auditors: Auditors,
    /// Each worker's bond in work units (0: the run takes none). Slashes
    /// draw on it; a worker whose bond cannot cover another slash gets no
    /// more work.
    pub bond: u64,
    /// What the workers and the coordinator's replays compute: hashes, or
    /// real training.
    pub training: TrainingMode,
    /// The fraction of workers (at the start, after the attackers) that
    /// commit a near copy of another's update ([`model::Behaviour::NearCopier`]).
    /// Apart from `attackers` so that a run without them keeps its bits.
    pub near_copiers: f64,
    /// The fraction of workers (at the start, after the near-copiers) that
    /// commit a near copy of another's update with a made-up trace
    /// ([`model::Behaviour::Forger`]), for a colluding worker auditor to
    /// pass. Stand-in training only (the real worker has no such cheat).
    pub forgers: f64,
    /// Audits replay from the round's start (`audit.replay =
    /// "from-start"`): commitments carry their boundary leaves and no
    /// worker answers an audit. Only with coordinator auditors (as the
    /// run's configuration requires).
    pub replay_from_start: bool,
    /// The delayed outer update (`[outer] delay`, 0 to
    /// [`MAX_OUTER_DELAY`]): round r trains from the model of round r - d,
    /// so up to d + 1 rounds are live at once and a worker trains the next
    /// round while the rounds before it are revealed, audited and closed.
    pub outer_delay: u32,
    /// Workers reveal as soon as their commitment is acknowledged, in the
    /// commit phase (the real worker's default without a bucket: an early
    /// reveal), rather than once the round's reveal phase begins. Apart
    /// so that a run without them keeps its bits.
    pub early_reveals: bool,
}

impl SimConfig {
    /// A small run: what CI and `scripts/sim-seeds.sh` run seed after seed.
    pub fn small(seed: u64) -> Self {
        Self {
            seed,
            workers: 12,
            rounds: 8,
            churn: 0.3,
            attackers: 0.2,
            faults: Faults::default(),
            auditors: Auditors::for_seed(seed),
            bond: bond_for_seed(seed),
            training: TrainingMode::Hash,
            near_copiers: 0.0,
            forgers: 0.0,
            replay_from_start: false,
            outer_delay: 0,
            early_reveals: false,
        }
    }

    /// A small run with real training, every fault and a near-copier:
    /// what CI runs in model mode (seconds a seed).
    pub fn small_model(seed: u64) -> Self {
        Self {
            workers: 6,
            rounds: 3,
            attackers: 0.2,
            near_copiers: 0.2,
            training: TrainingMode::Model,
            ..Self::small(seed)
        }
    }

    /// What no run can simulate: a delay deeper than the protocol's bound,
    /// forgers with real training (the real worker has no such cheat).
    pub fn validate(&self) -> Result<(), String> {
        if self.outer_delay > MAX_OUTER_DELAY {
            return Err(format!(
                "--outer-delay {}: a run takes an outer delay of at most {MAX_OUTER_DELAY} (crowdtrain_recipe::MAX_OUTER_DELAY)",
                self.outer_delay
            ));
        }
        if self.forgers > 0.0 && self.training != TrainingMode::Hash {
            return Err("forgers are simulated with the stand-in training only (--training hash)".into());
        }
        Ok(())
    }

    /// The command line that runs this configuration.
    pub fn command(&self) -> String {
        let faults = &self.faults;
        let mut extra = String::new();
        if self.training != TrainingMode::Hash {
            extra += &format!(" --training {}", self.training.as_str());
        }
        if self.near_copiers > 0.0 {
            extra += &format!(" --near-copiers {}", self.near_copiers);
        }
        if self.forgers > 0.0 {
            extra += &format!(" --forgers {}", self.forgers);
        }
        if self.replay_from_start {
            extra += " --replay from-start";
        }
        if self.outer_delay > 0 {
            extra += &format!(" --outer-delay {}", self.outer_delay);
        }
        if self.early_reveals {
            extra += " --early-reveals";
        }
        format!(
            "crowdtrain sim network --seed {} --workers {} --rounds {} --churn {} --attackers {} --faults \
             crash={},write={},loss={},dup={},delay={} --auditors {} --bond {}{extra}",
            self.seed,
            self.workers,
            self.rounds,
            self.churn,
            self.attackers,
            faults.crash,
            faults.write,
            faults.loss,
            faults.duplicate,
            faults.max_delay_ms,
            self.auditors.as_str(),
            self.bond
        )
    }
}

/// What a run did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    pub seed: u64,
    /// What the ledger says happened, as the rules check counted it.
    #[serde(flatten)]
    pub tally: Tally,
    /// Closed rounds whose model a fault-free aggregation of their
    /// credited submissions reproduced.
    pub rounds_reproduced: u64,
    pub crashes: u64,
    pub write_faults: u64,
    /// Restarts whose restored machine was compared in full with the one
    /// that died (the others restored a round on their own first).
    pub restores_compared: u64,
    pub workers_joined: u64,
    pub workers_left: u64,
    pub workers_crashed: u64,
    pub messages: u64,
    pub messages_lost: u64,
    pub messages_duplicated: u64,
    pub ledger_entries: u64,
    pub invariants_checked: u64,
    /// Virtual time the run took.
    pub virtual_ms: u64,
    /// Wall time (not part of the hash).
    pub wall_ms: u64,
    /// BLAKE3 of everything above but the wall time and of the ledger's
    /// last entry: equal for equal seeds, on any machine.
    pub hash: String,
}

/// A run that broke an invariant.
#[derive(Debug, Clone, thiserror::Error)]
#[error("seed {seed}: {violation}\n  reproduce: {command}")]
pub struct Failure {
    pub seed: u64,
    pub violation: Violation,
    pub command: String,
}

/// Runs `config` and checks every invariant; the summary, or the first
/// violation with the command that reproduces it.
pub fn run(config: &SimConfig) -> Result<Summary, Failure> {
    simulate(config).map(|finished| finished.summary)
}

/// [`run`], keeping the store and what the checks need, for tests that
/// look further.
///
/// The simulated coordinator's own log (a slash, a failed round: the
/// driver's `tracing` events) is not shown: a run reports its summary, and
/// `SIMNET_TRACE` every durable event.
pub fn simulate(config: &SimConfig) -> Result<Finished, Failure> {
    if let Err(refused) = config.validate() {
        return Err(Failure { seed: config.seed, violation: Violation(refused), command: config.command() });
    }
    let quiet = tracing::subscriber::NoSubscriber::default();
    tracing::subscriber::with_default(quiet, || match config.training {
        TrainingMode::Hash => world::World::new(config.clone(), model::HashMode::new(config.seed))?.run(),
        TrainingMode::Model => {
            world::World::new(config.clone(), real::ModelMode::new(config.seed, config.outer_delay)?)?.run()
        }
    })
    .map_err(|violation| Failure { seed: config.seed, violation, command: config.command() })
}
