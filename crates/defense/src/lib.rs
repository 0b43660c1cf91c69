//! What stands between submitted updates and the model, and what decides
//! pay: cheap checks, robust aggregation, quality scores and credits.
//!
//! # Brief overview
//!
//! - [`checks::screen`] refuses updates no honest worker produces
//!   (non-finite, empty, resubmitted, copied, outsized), each with its
//!   [`Refusal`].
//! - [`aggregate::aggregate`] turns the surviving updates into one under an
//!   [`Aggregator`]: mean, trimmed mean, median, or worker momentum with
//!   centered clipping (the default).
//! - [`ModelDefense`] runs both for a round and carries their state from
//!   round to round. The coordinator, the simulation (through
//!   [`crowdtrain_train::diloco::Aggregate`]) and the battery all use it, so
//!   what the battery measures is what the network does.
//! - [`quality`] scores each surviving update by the held-out loss
//!   improvement it brings alone, and its pay [`Gate`] pays verified work
//!   in full unless a sequential test finds a worker's updates worse than
//!   the round's majority.
//! - [`attack`] builds the model attacks; [`battery`] runs them in one
//!   process against the whole defence, recording every round's scores.
//! - [`false_denials`] resamples recorded honest rounds through the gate to
//!   measure how often it denies an honest worker.
//!
//! Everything is deterministic: the same inputs give the same verdicts,
//! aggregate and scores, bit for bit, on any machine and thread count.

pub mod aggregate;
pub mod attack;
pub mod battery;
pub mod checks;
pub mod false_denials;
pub mod linalg;
pub mod quality;

use std::collections::{HashMap, HashSet, VecDeque};

use crowdtrain_train::diloco::{Aggregate, WorkerUpdate};

pub use aggregate::{AggregatorState, StateChange};
pub use checks::{Refusal, Submission};
pub use crowdtrain_recipe::defense::{
    Aggregator, CheckConfig, DefenseConfig, PayGate, QualityConfig, ScoreMethod,
};
pub use quality::{Gate, Judged};

/// What the defence decided about one round's submissions; nothing is
/// changed until it is [committed](ModelDefense::commit) or
/// [set aside](ModelDefense::set_aside).
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// Submissions refused by the checks, with their reasons.
    pub refused: Vec<(u64, Refusal)>,
    /// Workers whose updates passed, ascending.
    pub passed: Vec<u64>,
    /// The aggregate of the updates that passed; `None` if none did.
    pub aggregate: Option<Vec<f32>>,
    change: Option<StateChange>,
    digests: Vec<[u8; 32]>,
}

/// The checks and the aggregator of a run, with what they remember.
#[derive(Debug, Clone)]
pub struct ModelDefense {
    pub checks: CheckConfig,
    pub aggregator: Aggregator,
    state: AggregatorState,
    /// Digests of the updates submitted in the last
    /// [`RESUBMISSION_WINDOW_ROUNDS`] rounds, with how many of those rounds
    /// hold each, and each round's digests, oldest first.
    earlier: HashMap<[u8; 32], u32>,
    rounds: VecDeque<Vec<[u8; 32]>>,
}

/// How many rounds back an update is remembered for the resubmission
/// check. Bounded so the coordinator's memory is: freshness is first the
/// protocol's binding (a submission names its round and base model in its
/// signed request, and an audit replays it from that model), and an update
/// this old would score as noise and earn nothing.
pub const RESUBMISSION_WINDOW_ROUNDS: usize = 1024;

impl ModelDefense {
    pub fn new(checks: CheckConfig, aggregator: Aggregator) -> Self {
        Self::restore(checks, aggregator, AggregatorState::default(), HashSet::new())
    }

    /// A defence that remembers `state` and the digests of `earlier`
    /// submissions (what a restarted coordinator reads back: those of the
    /// last [`RESUBMISSION_WINDOW_ROUNDS`] rounds, remembered from now on
    /// as one round).
    pub fn restore(
        checks: CheckConfig,
        aggregator: Aggregator,
        state: AggregatorState,
        earlier: HashSet<[u8; 32]>,
    ) -> Self {
        let mut defense =
            Self { checks, aggregator, state, earlier: HashMap::new(), rounds: VecDeque::new() };
        defense.remember(earlier.into_iter().collect());
        defense
    }

    /// Remembers one round's digests, forgetting the oldest round's beyond
    /// the window.
    fn remember(&mut self, digests: Vec<[u8; 32]>) {
        for digest in &digests {
            *self.earlier.entry(*digest).or_default() += 1;
        }
        self.rounds.push_back(digests);
        while self.rounds.len() > RESUBMISSION_WINDOW_ROUNDS {
            for digest in self.rounds.pop_front().expect("non-empty") {
                if let std::collections::hash_map::Entry::Occupied(mut entry) = self.earlier.entry(digest) {
                    *entry.get_mut() -= 1;
                    if *entry.get() == 0 {
                        entry.remove();
                    }
                }
            }
        }
    }

    pub fn state(&self) -> &AggregatorState {
        &self.state
    }

    /// Checks `submissions` (in precedence order, all expected to hold
    /// `len` values) and aggregates the ones that pass in ascending worker
    /// order: which update counts as the original may depend on when it
    /// was committed, but the aggregate's bits never depend on arrival
    /// times.
    pub fn decide(&self, submissions: &[Submission<'_>], len: usize) -> Decision {
        let verdicts =
            checks::screen(submissions, len, &|digest| self.earlier.contains_key(digest), &self.checks);
        let mut refused = Vec::new();
        let mut passing = Vec::new();
        for (submission, verdict) in submissions.iter().zip(verdicts) {
            match verdict {
                Some(refusal) => refused.push((submission.worker, refusal)),
                None => passing.push((submission.worker, submission.values)),
            }
        }
        passing.sort_by_key(|(worker, _)| *worker);
        let (aggregate, change) = if passing.is_empty() {
            (None, None)
        } else {
            let (aggregate, change) = aggregate::aggregate(&self.aggregator, &self.state, &passing);
            (Some(aggregate), Some(change))
        };
        Decision {
            refused,
            passed: passing.iter().map(|(worker, _)| *worker).collect(),
            aggregate,
            change,
            digests: submissions.iter().map(|submission| submission.digest).collect(),
        }
    }

    /// The aggregator state [`commit`](Self::commit)ting `decision` would
    /// leave (what the coordinator checkpoints before it commits).
    pub fn state_after(&self, decision: &Decision) -> AggregatorState {
        let mut state = self.state.clone();
        if let Some(change) = &decision.change {
            state.apply(change.clone());
        }
        state
    }

    /// The round counted: remember its submissions and apply what the
    /// aggregator learned from it.
    pub fn commit(&mut self, decision: Decision) {
        self.remember(decision.digests);
        if let Some(change) = decision.change {
            self.state.apply(change);
        }
    }

    /// The round did not count (too few updates passed): remember its
    /// submissions, so they cannot come back, but learn nothing from them.
    pub fn set_aside(&mut self, decision: Decision) {
        self.remember(decision.digests);
    }
}

impl Aggregate for ModelDefense {
    /// The simulation's round: every worker committed in slot order.
    fn aggregate(&mut self, _round: u64, updates: &[WorkerUpdate<'_>]) -> Option<Vec<f32>> {
        let submissions: Vec<Submission<'_>> = updates
            .iter()
            .map(|update| Submission {
                worker: update.worker,
                values: update.values,
                digest: *blake3::hash(update.encoded).as_bytes(),
                proven: false,
            })
            .collect();
        let len = updates.first()?.values.len();
        let decision = self.decide(&submissions, len);
        let aggregate = decision.aggregate.clone();
        self.commit(decision);
        aggregate
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_decision_changes_nothing_until_committed_and_a_set_aside_round_teaches_nothing() {
        let values = [vec![1.0f32, 0.0, 0.0], vec![0.0, 1.0, 0.0], vec![0.0, 0.0, 1.0]];
        let submissions: Vec<Submission<'_>> = values
            .iter()
            .enumerate()
            .map(|(worker, values)| Submission {
                worker: worker as u64,
                values,
                digest: [worker as u8; 32],
                proven: false,
            })
            .collect();
        let mut defense = ModelDefense::new(CheckConfig::default(), Aggregator::default());
        let decision = defense.decide(&submissions, 3);
        assert_eq!(decision.passed, vec![0, 1, 2]);
        assert_eq!(defense.decide(&submissions, 3), decision, "deciding twice decides the same");
        defense.set_aside(decision.clone());
        assert!(defense.state().momenta.is_empty(), "a set-aside round leaves the aggregator as it was");
        let again = defense.decide(&submissions, 3);
        assert!(again.refused.iter().all(|(_, refusal)| *refusal == Refusal::Resubmitted), "{again:?}");
        assert_eq!(again.aggregate, None);
        let mut fresh = ModelDefense::new(CheckConfig::default(), Aggregator::default());
        fresh.commit(decision);
        assert_eq!(fresh.state().momenta.len(), 3);
        assert_eq!(fresh.state().center.len(), 3);
    }
}
