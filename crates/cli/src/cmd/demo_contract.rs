//! `crowdtrain demo --contract FILE`: the whole timeline of "Paid with
//! Models" on this machine. The coordinator publishes the menu solved from
//! the scenario; each worker gets a private cost drawn from the scenario's
//! types and chooses by it; the run holds each to its option's
//! contribution; at the end every worker fetches its model reward, and the
//! demo checks the outcome against the menu: each participant's type, cost,
//! option, required and delivered contribution, promised and delivered
//! value, and its utility v(r) - c·m against its reservation utility (IR
//! as realised), and whether another option would have served it better
//! (IC, against the menu).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use crowdtrain_data::rng::{RngKey, keyed_rng, uniform_below};
use crowdtrain_protocol::contract::ContractMenu;
use crowdtrain_protocol::ledger::Event;
use crowdtrain_protocol::reward_model::RewardOutcome;
use crowdtrain_protocol::{Digest, PublicKey, Signed, WorkerId};
use serde::Serialize;

use crate::output;

/// Each worker's type (an option index of the menu, canonical order) and
/// private cost: a systematic draw from the prior (the types' shares of
/// the workers follow their probabilities, every type with probability at
/// least 1/workers appears), at an offset drawn with the run's seed.
pub(crate) fn draw_types(menu: &ContractMenu, workers: usize, seed: u64) -> Vec<(usize, f64)> {
    let mut rng = keyed_rng("demo-contract-types", RngKey { run: seed, round: 0, worker: 0, step: 0 });
    let offset = uniform_below(&mut rng, 1 << 53) as f64 / (1u64 << 53) as f64;
    (0..workers)
        .map(|index| {
            let point = (index as f64 + offset) / workers as f64;
            let mut cumulative = 0.0;
            let chosen = menu
                .options
                .iter()
                .position(|option| {
                    cumulative += option.probability;
                    point < cumulative
                })
                .unwrap_or(menu.options.len() - 1);
            (chosen, menu.options[chosen].cost)
        })
        .collect()
}

/// The run's signed menu, checked against the coordinator's key.
pub(crate) fn fetch_menu(url: &str, coordinator: &PublicKey) -> anyhow::Result<ContractMenu> {
    let bytes = super::demo::runtime()?
        .block_on(async {
            reqwest::get(format!("{url}/v1/contract")).await?.error_for_status()?.bytes().await
        })
        .context("could not read the contract menu")?;
    let signed: Signed<ContractMenu> = postcard::from_bytes(&bytes).context("the menu does not decode")?;
    Ok(signed
        .verify(coordinator)
        .map_err(|_| anyhow::anyhow!("the menu is not signed by the coordinator"))?
        .clone())
}

/// Every worker fetches its model reward (as `crowdtrain reward fetch`),
/// all at once, waiting while the coordinator builds them; returns the
/// time taken.
pub(crate) fn fetch_rewards(
    url: &str,
    dir: &Path,
    workers: usize,
    coordinator: PublicKey,
) -> anyhow::Result<f64> {
    let started = Instant::now();
    let runtime = super::demo::runtime()?;
    runtime.block_on(async {
        let mut fetches = tokio::task::JoinSet::new();
        for index in 0..workers {
            let (url, out) = (url.to_owned(), dir.join(format!("reward-{index}.safetensors")));
            let key = dir.join(format!("worker-{index}.key"));
            fetches.spawn(async move {
                let wait = Duration::from_secs(600);
                let fetched =
                    crowdtrain_node::worker::fetch_reward(&url, &key, Some(coordinator), wait, &out).await;
                (index, fetched)
            });
        }
        while let Some(joined) = fetches.join_next().await {
            let (index, fetched) = joined.context("a reward fetch panicked")?;
            match fetched {
                Ok(_) => {}
                // A withheld reward is an outcome, reported from the ledger.
                Err(crowdtrain_node::NodeError::Refused(reason)) if reason.contains("withheld") => {}
                Err(error) => return Err(error).with_context(|| format!("worker {index}'s model reward")),
            }
        }
        anyhow::Ok(())
    })?;
    Ok(started.elapsed().as_secs_f64())
}

/// One participant at the end of the timeline.
#[derive(Debug, Serialize)]
pub(crate) struct Participant {
    pub(crate) worker: WorkerId,
    /// Its type: the index of its cost among the menu's types (highest cost first).
    #[serde(rename = "type")]
    pub(crate) kind: usize,
    /// Its private per-unit cost.
    pub(crate) cost: f64,
    pub(crate) option: u32,
    pub(crate) required_contribution: u64,
    pub(crate) delivered_contribution: u64,
    /// r_i(n), promised for the coalition that formed.
    pub(crate) promised_accuracy: f64,
    /// The reward model's measured value (`None`: withheld).
    pub(crate) delivered_accuracy: Option<f64>,
    /// v(r) - c·m_i, at its own cost (withheld: -c times what it delivered).
    pub(crate) utility: f64,
    /// f_i of its type: what it earns training alone.
    pub(crate) reservation_utility: f64,
    pub(crate) reward_model_hash: Option<Digest>,
    /// Why it has no model, if so.
    pub(crate) withheld: Option<&'static str>,
    /// IR as realised: it delivered its contribution, and its utility is at
    /// least its reservation utility.
    pub(crate) individually_rational: bool,
    /// IC against the menu: no option gives its cost a higher expected
    /// utility than the one it chose.
    pub(crate) incentive_compatible: bool,
}

#[derive(Debug, Serialize)]
pub(crate) struct ContractReport {
    /// n: participants per option.
    pub(crate) coalition: Vec<u32>,
    /// a(n·m) as realised: the final model's measured value.
    pub(crate) realised_accuracy: f64,
    /// E[a(n·m)] the menu was solved for.
    pub(crate) expected_accuracy: f64,
    pub(crate) participants: Vec<Participant>,
    /// From the run's end (last round evaluated and scored) to every
    /// reward fetched.
    pub(crate) reward_seconds: f64,
}

/// The timeline's outcome, from the run's verified ledger; `types` is each
/// worker's (type, cost) as the demo drew it.
pub(crate) fn report(
    dir: &Path,
    types: &[(usize, f64)],
    reward_seconds: f64,
) -> anyhow::Result<ContractReport> {
    let entries = crowdtrain_store::db::verify_ledger(&dir.join("state").join("coordinator.sqlite"), None)
        .map_err(|failure| anyhow::anyhow!(failure))?;
    let keys: Vec<PublicKey> = (0..types.len())
        .map(|index| {
            Ok(crowdtrain_node::files::load_identity(&dir.join(format!("worker-{index}.key")))?.public_key())
        })
        .collect::<anyhow::Result<_>>()?;
    let mut menu = None;
    let mut workers = std::collections::BTreeMap::new();
    let mut rewards = Vec::new();
    for entry in &entries {
        match &entry.event {
            Event::ContractPublished { menu: published } => menu = Some(published.clone()),
            Event::WorkerRegistered { worker, key, .. } => {
                workers.insert(*worker, *key);
            }
            Event::ModelRewarded(reward) => rewards.push(reward.clone()),
            _ => {}
        }
    }
    let menu = menu.context("the run published no menu")?;
    anyhow::ensure!(
        rewards.len() == types.len(),
        "{} model rewards for {} workers",
        rewards.len(),
        types.len()
    );
    let mut participants = Vec::new();
    for reward in &rewards {
        let key = workers.get(&reward.worker).context("a reward for a worker that never registered")?;
        let index =
            keys.iter().position(|known| known == key).context("a reward for no worker of the demo")?;
        let (kind, cost) = types[index];
        let option = &menu.options[reward.option as usize];
        let (delivered_accuracy, hash, withheld) = match &reward.outcome {
            RewardOutcome::Delivered(recipe) => (Some(recipe.measured), Some(recipe.reward_model), None),
            RewardOutcome::Withheld(reason) => (None, None, Some(reason.name())),
        };
        let utility = match delivered_accuracy {
            Some(value) => menu.valuation_scale * value - cost * reward.required_contribution as f64,
            None => -cost * reward.delivered_contribution as f64,
        };
        let reservation_utility = menu.options[kind].reservation_utility;
        let chosen = option.utility_for(cost);
        let best = menu.options.iter().map(|other| other.utility_for(cost)).fold(f64::MIN, f64::max);
        participants.push(Participant {
            worker: reward.worker,
            kind,
            cost,
            option: reward.option,
            required_contribution: reward.required_contribution,
            delivered_contribution: reward.delivered_contribution,
            promised_accuracy: reward.promised,
            delivered_accuracy,
            utility,
            reservation_utility,
            reward_model_hash: hash,
            withheld,
            individually_rational: withheld.is_none() && utility >= reservation_utility,
            incentive_compatible: chosen >= best - 1e-9 * best.abs().max(1.0),
        });
    }
    participants.sort_by_key(|participant| participant.worker);
    Ok(ContractReport {
        coalition: rewards[0].coalition.clone(),
        realised_accuracy: rewards[0].realised,
        expected_accuracy: menu.expected_accuracy,
        participants,
        reward_seconds,
    })
}

pub(crate) fn print(report: &ContractReport) {
    let mut table = output::table(&[
        "worker",
        "type",
        "cost",
        "option",
        "required",
        "delivered",
        "promised",
        "reward model",
        "utility v(r)-c·m",
        "reservation",
        "IR",
        "IC",
    ]);
    for p in &report.participants {
        table.add_row(vec![
            p.worker.to_string(),
            p.kind.to_string(),
            p.cost.to_string(),
            p.option.to_string(),
            p.required_contribution.to_string(),
            p.delivered_contribution.to_string(),
            format!("{:.4}", p.promised_accuracy),
            match (p.withheld, p.delivered_accuracy) {
                (Some(reason), _) => format!("withheld: {reason}"),
                (None, Some(value)) => format!("{value:.4}"),
                _ => "-".into(),
            },
            format!("{:.2}", p.utility),
            format!("{:.2}", p.reservation_utility),
            if p.individually_rational { "yes" } else { "no" }.into(),
            if p.incentive_compatible { "yes" } else { "no" }.into(),
        ]);
    }
    println!("{table}");
    println!(
        "coalition n = {:?}; the trained model is worth {:.4} (the menu expected {:.4}); rewards built and fetched \
         in {:.1} s",
        report.coalition, report.realised_accuracy, report.expected_accuracy, report.reward_seconds
    );
}
