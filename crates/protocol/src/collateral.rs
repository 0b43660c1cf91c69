//! Escrow, vesting and bonds: what a slash can take (issue 14).
//!
//! A round's credits are **escrowed** when they are paid ([`Event::Reward`])
//! and **vest** once `audit.vesting_rounds` later rounds are scored
//! ([`Event::Vested`]): vested credits are the worker's to keep. The pay
//! gate takes back escrowed credits when it denies ([`Event::PayWithheld`]).
//! A worker in a bonded run (`[admission] mode = "bond"`) is registered
//! with a **bond** of `audit.bond` work units ([`Event::BondDeposited`]). A
//! slash ([`Event::Slash`], [`Event::AuditorSlashed`]) is drawn first from
//! the worker's escrowed credits, oldest first, then from its bond, and
//! what neither covers is recorded as uncovered ([`Event::SlashDrawn`]).
//!
//! [`Collateral`] is the one account of all this: the coordinator's state
//! machine folds every event through it (live and on restore), decides
//! each draw and each vesting from it, and `crowdtrain rewards` folds the
//! ledger through it to show `vested`, `escrowed` and `bond`. Draws and
//! vestings are recorded, so a reader never has to re-decide them.

use std::collections::BTreeMap;

use crate::ids::{RoundId, WorkerId};
use crate::ledger::Event;

/// One worker's collateral.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Account {
    /// Bond deposited in all.
    pub deposited: u64,
    /// Bond left: deposited less what slashes drew from it.
    pub bond: u64,
    /// Escrowed credits by the round that earned them.
    pub escrow: BTreeMap<RoundId, u64>,
    /// Credits that vested.
    pub vested: u64,
    /// What slashes drew from escrow, from the bond, and could not cover.
    pub drawn_from_escrow: u64,
    pub drawn_from_bond: u64,
    pub uncovered: u64,
}

impl Account {
    /// Credits earned and not yet vested: what a slash takes first.
    pub fn escrowed(&self) -> u64 {
        self.escrow.values().sum()
    }
}

/// Every worker's collateral, folded from the ledger's events.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Collateral {
    accounts: BTreeMap<WorkerId, Account>,
}

impl Collateral {
    pub fn account(&self, worker: WorkerId) -> Option<&Account> {
        self.accounts.get(&worker)
    }

    /// The bond `worker` has left (0 if it never deposited one).
    pub fn bond(&self, worker: WorkerId) -> u64 {
        self.accounts.get(&worker).map_or(0, |account| account.bond)
    }

    /// How a slash of `amount` on `worker` in `round` is drawn: escrowed
    /// credits first, then the bond, the rest uncovered.
    pub fn draw(&self, round: RoundId, worker: WorkerId, amount: u64) -> Event {
        let account = self.accounts.get(&worker).cloned().unwrap_or_default();
        let escrow = amount.min(account.escrowed());
        let bond = (amount - escrow).min(account.bond);
        Event::SlashDrawn { round, worker, escrow, bond, uncovered: amount - escrow - bond }
    }

    /// The vesting due once `round` is scored with a window of `window`
    /// rounds: every worker's escrowed credits of rounds `<= round - window`,
    /// except those of the workers `held` names (the pay gate is still
    /// deciding about them: their credits vest at the first round it no
    /// longer holds them). `None` when nothing vests.
    pub fn vesting(&self, round: RoundId, window: u64, held: impl Fn(WorkerId) -> bool) -> Option<Event> {
        let last = round.checked_sub(window)?;
        let credits: Vec<(WorkerId, u64)> = self
            .accounts
            .iter()
            .filter(|&(&worker, _)| !held(worker))
            .map(|(&worker, account)| {
                (worker, account.escrow.range(..=last).map(|(_, credits)| credits).sum())
            })
            .filter(|&(_, credits)| credits > 0)
            .collect();
        (!credits.is_empty()).then_some(Event::Vested { round: last, credits })
    }

    /// Folds one event in. Events that do not touch collateral change nothing.
    pub fn apply(&mut self, event: &Event) {
        match event {
            Event::BondDeposited { worker, amount } => {
                let account = self.accounts.entry(*worker).or_default();
                account.deposited += amount;
                account.bond += amount;
            }
            Event::Reward(reward) if reward.credits > 0 => {
                *self.accounts.entry(reward.worker).or_default().escrow.entry(reward.round).or_default() +=
                    reward.credits;
            }
            Event::PayWithheld { round, worker, first_round, .. } => {
                // The gate takes back the rewards of rounds [first_round, round).
                if let Some(account) = self.accounts.get_mut(worker) {
                    account.escrow.retain(|&paid, _| paid < *first_round || paid >= *round);
                }
            }
            Event::SlashDrawn { worker, escrow, bond, uncovered, .. } => {
                let account = self.accounts.entry(*worker).or_default();
                let mut left = *escrow;
                // Oldest first: what remains vests last.
                while left > 0 {
                    let Some(mut entry) = account.escrow.first_entry() else { break };
                    let taken = left.min(*entry.get());
                    *entry.get_mut() -= taken;
                    left -= taken;
                    if *entry.get() == 0 {
                        entry.remove();
                    }
                }
                account.bond = account.bond.saturating_sub(*bond);
                account.drawn_from_escrow += escrow;
                account.drawn_from_bond += bond;
                account.uncovered += uncovered;
            }
            Event::Vested { round, credits } => {
                for (worker, amount) in credits {
                    let account = self.accounts.entry(*worker).or_default();
                    account.escrow.retain(|&paid, _| paid > *round);
                    account.vested += amount;
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::{PayGate, Reward};

    fn reward(round: RoundId, worker: u64, credits: u64) -> Event {
        Event::Reward(Reward {
            round,
            worker: WorkerId(worker),
            score: 0.0,
            quality: 0.0,
            multiplier: 1.0,
            units: credits,
            credits,
            deviation: None,
            gate: PayGate::NoPower,
        })
    }

    #[test]
    fn a_slash_takes_escrow_oldest_first_then_the_bond_then_records_the_rest() {
        let mut collateral = Collateral::default();
        let worker = WorkerId(1);
        for event in [Event::BondDeposited { worker, amount: 500 }, reward(0, 1, 100), reward(1, 1, 100)] {
            collateral.apply(&event);
        }
        let draw = collateral.draw(2, worker, 150);
        assert_eq!(draw, Event::SlashDrawn { round: 2, worker, escrow: 150, bond: 0, uncovered: 0 });
        collateral.apply(&draw);
        let account = collateral.account(worker).unwrap();
        assert_eq!(account.escrow, BTreeMap::from([(1, 50)]), "round 0 went first");
        let draw = collateral.draw(3, worker, 600);
        assert_eq!(draw, Event::SlashDrawn { round: 3, worker, escrow: 50, bond: 500, uncovered: 50 });
        collateral.apply(&draw);
        let account = collateral.account(worker).unwrap();
        assert_eq!((account.bond, account.escrowed(), account.uncovered), (0, 0, 50));
        assert_eq!((account.drawn_from_escrow, account.drawn_from_bond, account.deposited), (200, 500, 500));
    }

    #[test]
    fn credits_vest_after_the_window_and_a_slash_cannot_take_them_then() {
        let mut collateral = Collateral::default();
        let worker = WorkerId(0);
        collateral.apply(&Event::BondDeposited { worker, amount: 1000 });
        for round in 0..6 {
            collateral.apply(&reward(round, 0, 10));
            if let Some(vested) = collateral.vesting(round, 4, |_| false) {
                collateral.apply(&vested);
            }
        }
        let account = collateral.account(worker).unwrap();
        assert_eq!((account.vested, account.escrowed()), (20, 40), "rounds 0 and 1 vested");
        assert_eq!(collateral.vesting(3, 4, |_| false), None);
        let draw = collateral.draw(6, worker, 100);
        assert_eq!(draw, Event::SlashDrawn { round: 6, worker, escrow: 40, bond: 60, uncovered: 0 });
        // A worker the gate is still deciding about vests nothing, however
        // old its escrow; once released, all of it vests at once.
        assert_eq!(collateral.vesting(9, 4, |held| held == worker), None);
        let released = collateral.vesting(9, 4, |_| false).unwrap();
        assert_eq!(released, Event::Vested { round: 5, credits: vec![(worker, 40)] });
        // The gate withholds rounds [3, 5): what is left of them goes.
        let mut withheld = collateral.clone();
        withheld.apply(&Event::PayWithheld { round: 5, worker, first_round: 3, credits: 20 });
        assert_eq!(withheld.account(worker).unwrap().escrow, BTreeMap::from([(2, 10), (5, 10)]));
    }
}
