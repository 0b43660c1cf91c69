//! Model rewards at the end of a run with a contract (issue 15, the
//! paper's timeline step IV): the coordinator makes each participant the
//! model the menu promised it for the coalition that formed, records how
//! (the recipe) in the ledger, and serves it to that participant alone.
//!
//! For the realised coalition n (how many participants chose each option)
//! the trained model is worth a(n·m), measured: the final model's value
//! on the evaluation set. Participant i is promised r_i(n) = ρ_i a(n·m),
//! with ρ_i = t_i / t̄_i the menu's reward ratio: the paper's proportional
//! construction, with the realised value of the model in place of the
//! forecast a(·) the menu was solved with, so the promise never exceeds
//! what the run trained. One who delivered less verified work than its
//! option requires gets no model (`withheld: under-delivered`). The model
//! is made by `crowdtrain_store::reward::RewardBuilder` (interpolation
//! between consecutive checkpoints, calibrated on measured value; the
//! search screens candidates on a fixed tenth of the test set where it is
//! large enough, and measures the one it delivers on all of it) and
//! written, content-addressed, to `reward-models/` in the state directory,
//! a directory `GET /v1/models` never serves.
//!
//! Crash safety: one thread builds the rewards in worker order, writing
//! each file before recording its `model-rewarded` entry in its own
//! transaction, and skipping the workers whose entry is recorded. A
//! coordinator killed while building starts the thread again when it opens
//! a finished run; the construction is deterministic, so it makes the same
//! files, and the store refuses a second reward for a worker.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use crowdtrain_protocol::RoundId;
use crowdtrain_protocol::coordinator::RoundState;
use crowdtrain_protocol::ledger::Event;
use crowdtrain_protocol::reward_model::{ModelReward, RewardOutcome, RunCheckpoint, Withheld};
use crowdtrain_protocol::wire::ErrorCode;
use crowdtrain_store::reward::RewardBuilder;
use crowdtrain_store::{CheckpointKind, checkpoint};

use super::{Failure, Node};
use crate::NodeError;

/// How far a reward's measured value may be from its promise: half a
/// point of accuracy (the bound).
pub const REWARD_TOLERANCE: f64 = 0.005;

/// The search stops once this close to the promise: half the tolerance,
/// usually one or two evaluations.
pub const REWARD_PRECISION: f64 = 0.0025;

impl Node {
    /// Queues the model rewards of a finished run with a contract for the
    /// evaluation thread, behind the evaluation of every round (whose
    /// values the rewards then take instead of measuring the checkpoints
    /// again), unless they are queued or being built already.
    pub(super) fn schedule_model_rewards(&self) {
        if self.contract.is_none() || self.rewarding.swap(true, Ordering::SeqCst) {
            return;
        }
        self.send_evaluation_job(super::EvaluationJob::ModelRewards);
    }

    /// Measures the run's initial model on the test set (the evaluation
    /// thread's job, at idle priority while the run trains), so the model
    /// rewards, which start from it, need not at the end.
    pub(super) fn evaluate_initial_model(&self) -> Result<(), NodeError> {
        if self.initial_value.get().is_some() {
            return Ok(());
        }
        let bytes = self.published_or_stored(&self.run.body.initial_model)?;
        let params =
            checkpoint::decode(&bytes, CheckpointKind::Params, &self.model.name(), self.model.layout())?;
        let model = crowdtrain_train::build_model(self.config.training.model);
        let evaluation = self.background.install(|| self.dataset.evaluate(model.as_ref(), &params))?;
        let _ = self.initial_value.set((evaluation.accuracy, evaluation.loss));
        Ok(())
    }

    /// Builds the missing model rewards on the background pool (the
    /// evaluation thread's job), beside the last rounds' scoring.
    pub(super) fn run_model_rewards(self: &Arc<Self>) {
        match self.background.install(|| self.build_model_rewards()) {
            Ok(_) => {}
            Err(error) => {
                // Nobody's reward is lost: a restart builds the missing
                // ones.
                tracing::error!(%error, "building the model rewards failed");
                self.rewarding.store(false, Ordering::SeqCst);
            }
        }
    }

    /// Builds and records every missing model reward; returns how many it
    /// recorded.
    fn build_model_rewards(self: &Arc<Self>) -> Result<usize, NodeError> {
        let menu = &self.contract.as_ref().expect("scheduled for runs with a contract").body;
        let (choices, done, delivered, rounds) = {
            let inner = self.lock();
            let delivered: BTreeMap<_, _> = inner
                .driver
                .store
                .worker_statuses()?
                .into_iter()
                .map(|status| (status.worker, status.verified_work))
                .collect();
            (
                inner.driver.store.choices()?,
                inner.driver.store.model_rewards()?,
                delivered,
                inner.driver.store.round_records()?,
            )
        };
        let mut coalition = vec![0u32; menu.options.len()];
        for choice in choices.values() {
            coalition[choice.option as usize] += 1;
        }
        // The run's checkpoints in order, with the values the evaluation
        // thread recorded (all of them, since this is its job after the
        // last round's; a value it could not record is measured here).
        let metric = menu.metric;
        let mut run = vec![RunCheckpoint { round: None, model: self.run.body.initial_model }];
        let mut known = vec![self.initial_value.get().map(|&(accuracy, loss)| metric.value(accuracy, loss))];
        for record in rounds.iter().filter(|record| record.status == RoundState::Closed) {
            let model = record.result_model.expect("closed rounds have a result");
            run.push(RunCheckpoint { round: Some(record.round as RoundId), model });
            known.push(match (record.test_accuracy, record.test_loss) {
                (Some(accuracy), Some(loss)) => Some(metric.value(accuracy, loss)),
                _ => None,
            });
        }
        let model = crowdtrain_train::build_model(self.config.training.model);
        let measure = |params: &[f32]| {
            let evaluation = self.dataset.evaluate(model.as_ref(), params)?;
            Ok(metric.value(evaluation.accuracy, evaluation.loss))
        };
        // Searches run on a fixed part of the evaluation set; each reward
        // delivered is measured on all of it.
        let screen = self.dataset.screen();
        let screen_measure = |params: &[f32]| {
            let screen = screen.as_ref().expect("screened only where there is a screen");
            let evaluation = screen.evaluate(model.as_ref(), params)?;
            Ok(metric.value(evaluation.accuracy, evaluation.loss))
        };
        let mut builder = RewardBuilder::new(
            &self.checkpoints,
            model.as_ref(),
            run,
            known,
            metric,
            self.dataset.evaluation_set(),
        )
        .map_err(|error| NodeError::Contract(format!("model rewards: {error}")))?
        // Every value is this node's own evaluation on this set.
        .known_values_are_measured();
        // a(n·m) as realised: the final model's measured value.
        let realised = builder
            .final_value(measure)
            .map_err(|error| NodeError::Contract(format!("measuring the final model: {error}")))?;
        let mut recorded = 0;
        for (&worker, choice) in &choices {
            if done.contains_key(&worker) {
                continue;
            }
            let option = &menu.options[choice.option as usize];
            let promised = option.reward_ratio * realised;
            let delivered_contribution = delivered.get(&worker).copied().unwrap_or(0);
            let outcome = if delivered_contribution < option.required_contribution {
                RewardOutcome::Withheld(Withheld::UnderDelivered)
            } else {
                let built = match screen {
                    Some(_) => builder.build_screened(
                        promised,
                        REWARD_TOLERANCE,
                        REWARD_PRECISION,
                        screen_measure,
                        measure,
                    ),
                    None => builder.build(promised, REWARD_TOLERANCE, REWARD_PRECISION, measure),
                }
                .map_err(|error| NodeError::Contract(format!("{worker}'s model reward: {error}")))?;
                self.reward_models.put(&built.file)?;
                tracing::info!(
                    %worker,
                    evaluations = built.evaluations,
                    screened = built.screened,
                    "model reward built"
                );
                RewardOutcome::Delivered(built.recipe)
            };
            let reward = ModelReward {
                worker,
                option: choice.option,
                coalition: coalition.clone(),
                realised,
                promised,
                required_contribution: option.required_contribution,
                delivered_contribution,
                outcome,
            };
            tracing::info!(%worker, option = choice.option, promised, delivered_contribution, "model reward");
            self.lock().driver.store.record(
                self.now(),
                &[Event::ModelRewarded(reward)],
                &[],
                &self.identity,
            )?;
            recorded += 1;
        }
        tracing::info!(
            recorded,
            checkpoints_measured = builder.checkpoints_measured(),
            "model rewards built"
        );
        Ok(recorded)
    }

    /// `GET /v1/rewards/{worker}`: the reward model's file, for `worker`'s
    /// own key only (`requester`, from the request's signature).
    pub(super) fn reward_model_bytes(
        &self,
        requester: crowdtrain_protocol::WorkerId,
        worker: crowdtrain_protocol::WorkerId,
    ) -> Result<(crowdtrain_protocol::Digest, Vec<u8>), Failure> {
        if requester != worker {
            return Err(Failure::new(
                ErrorCode::Forbidden,
                format!("{worker}'s model reward is served to {worker}'s key only"),
            ));
        }
        if self.contract.is_none() {
            return Err(Failure::new(
                ErrorCode::NotFound,
                "this run offers no contract, so no model rewards",
            ));
        }
        let (finished, reward) = {
            let inner = self.lock();
            let finished = inner.driver.machine.phase() == crowdtrain_protocol::wire::Phase::Finished;
            (finished, inner.driver.store.model_reward(worker).map_err(Failure::internal)?)
        };
        match reward {
            None if !finished => Err(Failure::new(
                ErrorCode::TooEarly,
                "the run has not finished: model rewards come at its end",
            )),
            None => Err(Failure::new(ErrorCode::TooEarly, format!("{worker}'s model reward is being built"))),
            Some(Err(withheld)) => Err(Failure::new(
                ErrorCode::NotFound,
                format!("{worker} receives no model reward (withheld: {withheld})"),
            )),
            Some(Ok(digest)) => {
                let bytes = self.reward_models.get(&digest).map_err(Failure::internal)?;
                Ok((digest, bytes))
            }
        }
    }
}
