//! `crowdtrain rewards`: who earned what, from the signed ledger alone.

use std::collections::BTreeMap;

use anyhow::Context;
use clap::Args;
use crowdtrain_protocol::collateral::Collateral;
use crowdtrain_protocol::ledger::{Event, PayGate, Reward};
use crowdtrain_protocol::reward_model::RewardOutcome;
use crowdtrain_protocol::{Digest, PublicKey, WorkerId};
use crowdtrain_store::db::verify_ledger;
use serde::Serialize;

use crate::output;

/// Per-worker verified work, pay gate, slashes and credits of a run, added
/// up from its ledger after checking every entry's link, hash and
/// signature: the same figures anyone with the ledger and the
/// coordinator's key can recompute.
#[derive(Debug, Args)]
pub struct RewardsArgs {
    #[command(flatten)]
    source: crate::cmd::ledger::LedgerSource,

    /// Print one JSON object on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Serialize)]
struct WorkerRewards {
    worker: WorkerId,
    public_key: Option<PublicKey>,
    /// Work units of accepted submissions whose updates passed the checks.
    verified_work: u64,
    /// The pay gate's verdict after its latest scored round: `no-power`
    /// (no round of its could be judged: verified work is paid), `pass` or
    /// `deny` (docs/PAY.md).
    gate: Option<PayGate>,
    /// The gate's evidence (nats) after its latest scored round that its
    /// updates are worse than the round's majority.
    evidence: Option<f64>,
    /// Scored rounds in which the gate had power.
    rounds_judged: u64,
    /// Scored rounds whose work the gate denied.
    rounds_denied: u64,
    /// Escrowed credits the gate took back when it denied.
    withheld: u64,
    /// Credits earned: verified work the gate did not deny, less what it
    /// withheld.
    earned: u64,
    /// Work units lost to slashing (for its own submissions, and as an
    /// auditor whose report was contradicted).
    slashed: u64,
    /// `earned - slashed`.
    credits: i64,
    /// Credits that vested: paid, past the vesting window, no longer
    /// takeable by a slash or the gate (docs/PAY.md, "Escrow and bonds").
    vested: u64,
    /// Credits paid and not vested yet: what a slash takes first.
    escrowed: u64,
    /// Bond left, in a bonded run (0 otherwise): what a slash takes once
    /// the escrow is gone.
    bond: u64,
    /// Accepted submissions whose updates the checks refused.
    refused_updates: u64,
    /// This worker's share of all verified work.
    work_share: f64,
    /// This worker's share of all positive credits.
    credit_share: f64,
    /// In a run that offers a contract: the option it chose (signed by its
    /// key, checked here), ...
    #[serde(skip_serializing_if = "Option::is_none")]
    option: Option<u32>,
    /// ... the contribution that option requires, in verified work units, ...
    #[serde(skip_serializing_if = "Option::is_none")]
    required_contribution: Option<u64>,
    /// ... and what it delivered so far: its verified work (accepted
    /// submissions whose updates passed the checks; slashed and refused
    /// work never counts).
    #[serde(skip_serializing_if = "Option::is_none")]
    delivered_contribution: Option<u64>,
    /// Once the run has finished: r_i(n), the value its option promises
    /// for the coalition that formed (test accuracy, or the neg-loss value
    /// for a language model) ...
    #[serde(skip_serializing_if = "Option::is_none")]
    promised_accuracy: Option<f64>,
    /// ... its reward model's measured value (`None` if withheld) ...
    #[serde(skip_serializing_if = "Option::is_none")]
    delivered_accuracy: Option<f64>,
    /// ... v(r) - c·m: the value of the model it received less the cost of
    /// its required contribution, at the cost of the type its option is
    /// designed for (what its choice reveals, by IC; its true cost stays
    /// private). Withheld: -c times what it delivered ...
    #[serde(skip_serializing_if = "Option::is_none")]
    utility: Option<f64>,
    /// ... f_i, what that type earns training alone ...
    #[serde(skip_serializing_if = "Option::is_none")]
    reservation_utility: Option<f64>,
    /// ... and the BLAKE3 of its reward model's file.
    #[serde(skip_serializing_if = "Option::is_none")]
    reward_model_hash: Option<Digest>,
    /// Why it receives no model (`under-delivered`), if so.
    #[serde(skip_serializing_if = "Option::is_none")]
    model_withheld: Option<&'static str>,
}

impl WorkerRewards {
    fn new(worker: WorkerId) -> Self {
        Self {
            worker,
            public_key: None,
            verified_work: 0,
            gate: None,
            evidence: None,
            rounds_judged: 0,
            rounds_denied: 0,
            withheld: 0,
            earned: 0,
            slashed: 0,
            credits: 0,
            vested: 0,
            escrowed: 0,
            bond: 0,
            refused_updates: 0,
            work_share: 0.0,
            credit_share: 0.0,
            option: None,
            required_contribution: None,
            delivered_contribution: None,
            promised_accuracy: None,
            delivered_accuracy: None,
            utility: None,
            reservation_utility: None,
            reward_model_hash: None,
            model_withheld: None,
        }
    }
}

#[derive(Debug, Serialize)]
struct RewardsReport {
    /// The ledger verified (always true: a broken one is an error).
    verified: bool,
    ledger_entries: usize,
    rounds_closed: u64,
    /// Closed rounds whose updates have been scored and rewarded.
    rounds_scored: u64,
    workers: Vec<WorkerRewards>,
}

/// The run's id, from its first entry.
fn run_id(entries: &[crowdtrain_protocol::ledger::Entry]) -> anyhow::Result<crowdtrain_protocol::Digest> {
    match entries.first().map(|entry| &entry.event) {
        Some(Event::RunStarted { run_id, .. }) => Ok(*run_id),
        _ => anyhow::bail!("the ledger does not begin with run-started"),
    }
}

pub fn run(args: RewardsArgs) -> anyhow::Result<()> {
    let path = crate::cmd::ledger::database(&args.source.state)?;
    let entries =
        verify_ledger(&path, args.source.key).map_err(|failure| anyhow::anyhow!(failure)).with_context(
            || format!("the ledger in {} does not verify; nothing in it can be trusted", path.display()),
        )?;
    let mut workers: BTreeMap<WorkerId, WorkerRewards> = BTreeMap::new();
    let mut rounds_closed = 0;
    let mut scored_rounds = std::collections::BTreeSet::new();
    let mut menu = None;
    let mut model_rewards = Vec::new();
    fn worker(workers: &mut BTreeMap<WorkerId, WorkerRewards>, id: WorkerId) -> &mut WorkerRewards {
        workers.entry(id).or_insert_with(|| WorkerRewards::new(id))
    }
    let mut collateral = Collateral::default();
    for entry in &entries {
        collateral.apply(&entry.event);
        match &entry.event {
            Event::WorkerRegistered { worker: id, key, .. } => {
                worker(&mut workers, *id).public_key = Some(*key)
            }
            Event::WorkAccepted { worker: id, units, .. } => worker(&mut workers, *id).verified_work += units,
            Event::UpdateRefused { worker: id, .. } => worker(&mut workers, *id).refused_updates += 1,
            Event::Slash { worker: id, amount, .. } | Event::AuditorSlashed { auditor: id, amount, .. } => {
                worker(&mut workers, *id).slashed += amount
            }
            Event::Reward(Reward { round, worker: id, quality, credits, deviation, gate, .. }) => {
                let rewards = worker(&mut workers, *id);
                rewards.earned += credits;
                rewards.evidence = Some(*quality);
                rewards.gate = Some(*gate);
                rewards.rounds_judged += u64::from(deviation.is_some());
                rewards.rounds_denied += u64::from(*gate == PayGate::Deny);
                scored_rounds.insert(*round);
            }
            Event::PayWithheld { worker: id, credits, .. } => {
                let rewards = worker(&mut workers, *id);
                rewards.withheld += credits;
                rewards.earned -= credits;
            }
            Event::RoundClosed { .. } => rounds_closed += 1,
            Event::ContractPublished { menu: published } => menu = Some(published.clone()),
            Event::ModelRewarded(reward) => model_rewards.push(reward.clone()),
            Event::OptionChosen { worker: id, choice } => {
                let rewards = worker(&mut workers, *id);
                let key = rewards.public_key.context("a choice by a worker that never registered")?;
                choice.verify(&key, run_id(&entries)?).map_err(|_| {
                    anyhow::anyhow!("ledger entry {}: {id}'s choice is not signed by its key", entry.index)
                })?;
                rewards.option = Some(choice.option);
            }
            _ => {}
        }
    }
    if let Some(menu) = &menu {
        for rewards in workers.values_mut() {
            rewards.required_contribution = rewards
                .option
                .and_then(|option| menu.options.get(option as usize))
                .map(|option| option.required_contribution);
            rewards.delivered_contribution = Some(rewards.verified_work);
        }
        for reward in &model_rewards {
            let rewards = worker(&mut workers, reward.worker);
            let option =
                menu.options.get(reward.option as usize).context("a reward for an option of no menu")?;
            rewards.promised_accuracy = Some(reward.promised);
            rewards.reservation_utility = Some(option.reservation_utility);
            match &reward.outcome {
                RewardOutcome::Delivered(recipe) => {
                    rewards.delivered_accuracy = Some(recipe.measured);
                    rewards.reward_model_hash = Some(recipe.reward_model);
                    rewards.utility = Some(
                        menu.valuation_scale * recipe.measured
                            - option.cost * reward.required_contribution as f64,
                    );
                }
                RewardOutcome::Withheld(reason) => {
                    rewards.model_withheld = Some(reason.name());
                    rewards.utility = Some(-option.cost * reward.delivered_contribution as f64);
                }
            }
        }
    }
    let total_work: u64 = workers.values().map(|worker| worker.verified_work).sum();
    for worker in workers.values_mut() {
        worker.credits = worker.earned as i64 - worker.slashed as i64;
        if let Some(account) = collateral.account(worker.worker) {
            (worker.vested, worker.escrowed, worker.bond) =
                (account.vested, account.escrowed(), account.bond);
        }
    }
    let total_credits: i64 = workers.values().map(|worker| worker.credits.max(0)).sum();
    for worker in workers.values_mut() {
        worker.work_share = worker.verified_work as f64 / total_work.max(1) as f64;
        worker.credit_share = worker.credits.max(0) as f64 / total_credits.max(1) as f64;
    }
    let report = RewardsReport {
        verified: true,
        ledger_entries: entries.len(),
        rounds_closed,
        rounds_scored: scored_rounds.len() as u64,
        workers: workers.into_values().collect(),
    };
    if args.json {
        return output::print_json(&report);
    }
    let contract_columns = menu.is_some();
    let mut headers = vec![
        "worker",
        "verified work",
        "gate",
        "evidence",
        "judged",
        "denied",
        "withheld",
        "earned",
        "slashed",
        "credits",
        "vested",
        "escrowed",
        "bond",
        "refused",
        "work share",
        "credit share",
    ];
    if contract_columns {
        headers.extend([
            "option",
            "required",
            "delivered",
            "promised",
            "reward model",
            "utility",
            "reservation",
        ]);
    }
    let mut table = output::table(&headers);
    for worker in &report.workers {
        let mut row = vec![
            worker.worker.to_string(),
            worker.verified_work.to_string(),
            worker.gate.map_or("-", |gate| gate.name()).to_string(),
            worker.evidence.map_or("-".into(), |evidence| format!("{evidence:.1}")),
            worker.rounds_judged.to_string(),
            worker.rounds_denied.to_string(),
            worker.withheld.to_string(),
            worker.earned.to_string(),
            worker.slashed.to_string(),
            worker.credits.to_string(),
            worker.vested.to_string(),
            worker.escrowed.to_string(),
            worker.bond.to_string(),
            worker.refused_updates.to_string(),
            format!("{:.1}%", 100.0 * worker.work_share),
            format!("{:.1}%", 100.0 * worker.credit_share),
        ];
        if contract_columns {
            let shown = |value: Option<u64>| value.map_or("-".into(), |value| value.to_string());
            row.push(worker.option.map_or("-".into(), |option| option.to_string()));
            row.push(shown(worker.required_contribution));
            row.push(shown(worker.delivered_contribution));
            let value =
                |value: Option<f64>, digits: usize| value.map_or("-".into(), |v| format!("{v:.digits$}"));
            row.push(value(worker.promised_accuracy, 4));
            row.push(match (worker.model_withheld, worker.delivered_accuracy, worker.reward_model_hash) {
                (Some(reason), _, _) => format!("withheld: {reason}"),
                (None, Some(measured), Some(hash)) => format!("{measured:.4} ({})", &hash.to_hex()[..12]),
                _ => "-".into(),
            });
            row.push(value(worker.utility, 2));
            row.push(value(worker.reservation_utility, 2));
        }
        table.add_row(row);
    }
    println!("{table}");
    println!(
        "ledger verified ({} entries); {} of {} closed rounds scored",
        report.ledger_entries, report.rounds_scored, report.rounds_closed
    );
    Ok(())
}
