//! Scoring closed rounds and paying for them, off the request path.
//!
//! One thread takes closed rounds in order, scores each credited update on
//! the round's evaluation batch (fresh from the validation split each
//! round, keyed by the run's seed), puts the scores to the pay gate and writes each
//! worker's reward (and any pay the gate withholds) with its ledger entries
//! in one transaction. Nothing here affects the model, so it never delays a
//! round; the order matters only for the gate, which is why there is one
//! thread. A restarted coordinator rebuilds the gate from the rewards
//! already written and scores the closed rounds that are not.

use std::sync::mpsc::Receiver;
use std::sync::{Arc, Weak};

use crowdtrain_defense::quality;
use crowdtrain_protocol::ledger::{Event, Reward};
use crowdtrain_protocol::{RoundId, WorkerId};
use crowdtrain_store::{CheckpointKind, checkpoint};

use super::Node;
use crate::NodeError;

/// Starts the scoring thread; it ends when the node is gone.
pub(super) fn spawn_scorer(node: Weak<Node>, rounds: Receiver<RoundId>) {
    std::thread::Builder::new()
        .name("crowdtrain-scoring".into())
        .spawn(move || {
            for round in rounds {
                let Some(node) = node.upgrade() else { return };
                if let Err(error) = node.score(round) {
                    tracing::error!(round, %error, "halting: scoring failed");
                    node.fatal.send_replace(Some(format!("scoring round {round} failed: {error}")));
                    return;
                }
            }
        })
        .expect("the scoring thread starts");
}

impl Node {
    /// Scores and rewards the credited updates of closed `round`.
    fn score(self: &Arc<Self>, round: RoundId) -> Result<(), NodeError> {
        let (base, workers, payloads) = {
            let inner = self.lock();
            let (base, workers) = inner.driver.store.scoring_input(round)?;
            let payloads = inner.driver.store.payloads(round, &workers)?;
            (base, workers, payloads)
        };
        let name = self.model.name();
        let parameters = self.model.layout().len();
        let global = checkpoint::decode(
            &self.checkpoints.get(&base)?,
            CheckpointKind::Params,
            &name,
            self.model.layout(),
        )?;
        let updates = payloads
            .iter()
            .map(|bytes| crowdtrain_train::codec::decode(bytes, parameters).map(|(_, values)| values))
            .collect::<Result<Vec<_>, _>>()
            .map_err(crowdtrain_train::TrainError::from)?;
        let views: Vec<&[f32]> = updates.iter().map(Vec::as_slice).collect();
        let config = &self.config.quality;
        // The run's seed keys the round's fresh evaluation batch, as in the
        // battery: the same run scores on the same examples wherever it runs.
        let run = (self.config.training.seed, round);
        let step = quality::score_step(self.config.outer.lr, views.len());
        let scores = self.background.install(|| {
            let model = self.model.as_ref();
            self.dataset.scores(model, &global, &views, step, &self.validation, config, run)
        })?;
        let mut inner = self.lock();
        let pairs: Vec<(u64, f64)> = workers.iter().map(|worker| worker.0).zip(scores).collect();
        let units = self.config.work_units();
        let now = self.now();
        let mut events = Vec::new();
        let examples = self.dataset.scored_examples(config.eval_examples, &self.validation);
        for (worker, judged) in workers.iter().zip(inner.gate.observe(round, &pairs, units, examples, config))
        {
            tracing::debug!(round, %worker, score = judged.score, evidence = judged.evidence, gate = judged.gate.name(), credits = judged.credits, "rewarded");
            if let Some((first_round, credits)) = judged.withheld {
                tracing::info!(round, %worker, first_round, credits, "pay gate denies: escrowed credits withheld");
                events.push(Event::PayWithheld { round, worker: *worker, first_round, credits });
            }
            events.push(Event::Reward(Reward {
                round,
                worker: *worker,
                score: judged.score,
                quality: judged.evidence,
                multiplier: if judged.credits > 0 { 1.0 } else { 0.0 },
                units,
                credits: judged.credits,
                deviation: judged.deviation,
                gate: judged.gate,
            }));
        }
        events.push(Event::RoundScored { round });
        // The machine's collateral sees this round's rewards, then decides
        // what vests; it records nothing until the store has.
        let mut collateral = inner.driver.machine.collateral().clone();
        events.iter().for_each(|event| collateral.apply(event));
        let held = |worker: WorkerId| inner.gate.holds(worker.0, config);
        if let Some(vested) = collateral.vesting(round, self.config.audit.vesting_rounds, held) {
            events.push(vested);
        }
        inner.driver.store.record(now, &events, &[], &self.identity)?;
        inner.driver.machine.note(&events);
        drop(inner);
        self.changes.send_modify(|version| *version += 1);
        Ok(())
    }
}
