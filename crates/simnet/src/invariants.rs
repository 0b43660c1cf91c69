//! What every simulated run must satisfy, checked against the real
//! ledger and store.
//!
//! The checkers take the records (and what the simulator knows that the
//! coordinator does not: who is honest, what was acknowledged, who was
//! down) and return the first [`Violation`]. They are plain functions over
//! data so that a test can feed them a tampered ledger or a forged event
//! and see them fail: a checker that cannot fail proves nothing.

use std::collections::{BTreeMap, BTreeSet};

use crowdtrain_protocol::ledger::{self, Event, Sealed};
use crowdtrain_protocol::{Commitment, Digest, PublicKey, Recorded, RoundId, Verdict, WorkerId};

use crowdtrain_defense::aggregate::aggregate;
use crowdtrain_defense::{Aggregator, AggregatorState};

use crate::model::{self, AGGREGATOR, Behaviour};

/// A broken invariant: what and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Violation(pub String);

fn violation<T>(message: impl Into<String>) -> Result<T, Violation> {
    Err(Violation(message.into()))
}

/// What the coordinator acknowledged (answered with success) to a worker:
/// each must be in the store from the moment it was answered.
#[derive(Debug, Clone, Default)]
pub struct Acked {
    pub registrations: BTreeSet<PublicKey>,
    /// `(round, worker)` → the commitment and how it was recorded.
    pub commitments: BTreeMap<(RoundId, WorkerId), (Commitment, Recorded)>,
    /// `(round, worker)` → the revealed payload's digest.
    pub reveals: BTreeMap<(RoundId, WorkerId), Digest>,
    /// `(round, worker)` of acknowledged audit answers.
    pub answers: BTreeSet<(RoundId, WorkerId)>,
    /// `(round, audited)` of audits whose verdict a delegated auditor's
    /// acknowledged report decided.
    pub verdicts: BTreeSet<(RoundId, WorkerId)>,
}

impl Acked {
    /// How many acknowledgements there are to check.
    pub fn len(&self) -> usize {
        self.registrations.len()
            + self.commitments.len()
            + self.reveals.len()
            + self.answers.len()
            + self.verdicts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The ledger verifies: indices, links, hashes and signatures under
/// `coordinator`'s key, and it starts the run with that key. Returns the
/// events.
pub fn check_ledger(sealed: &[Sealed], coordinator: &PublicKey) -> Result<Vec<Event>, Violation> {
    let entries = ledger::verify(sealed, coordinator)
        .map_err(|broken| Violation(format!("the ledger does not verify: {broken}")))?;
    match entries.first().map(|entry| &entry.event) {
        Some(Event::RunStarted { coordinator: key, .. }) if key == coordinator => {}
        _ => return violation("the ledger does not start with the run, signed by its coordinator"),
    }
    Ok(entries.into_iter().map(|entry| entry.event).collect())
}

/// Nothing acknowledged is lost: every acknowledged registration,
/// commitment, reveal and audit answer is in `events` as it was
/// acknowledged.
pub fn check_acked(events: &[Event], acked: &Acked) -> Result<(), Violation> {
    let mut keys = BTreeSet::new();
    let mut commitments = BTreeMap::new();
    let mut reveals = BTreeMap::new();
    let mut answers = BTreeSet::new();
    let mut verdicts = BTreeSet::new();
    for event in events {
        match event {
            Event::WorkerRegistered { key, .. } => {
                keys.insert(*key);
            }
            Event::Commitment { round, worker, commitment, status, .. } => {
                commitments.insert((*round, *worker), (*commitment, *status));
            }
            Event::Reveal { round, worker, payload, .. } => {
                reveals.insert((*round, *worker), *payload);
            }
            Event::AuditAnswered { round, worker, .. } => {
                answers.insert((*round, *worker));
            }
            Event::Audit { round, worker, .. } => {
                verdicts.insert((*round, *worker));
            }
            _ => {}
        }
    }
    if let Some(key) = acked.registrations.iter().find(|key| !keys.contains(key)) {
        return violation(format!(
            "lost: the registration of key {key} was acknowledged but is not recorded"
        ));
    }
    for (&(round, worker), acknowledged) in &acked.commitments {
        if commitments.get(&(round, worker)) != Some(acknowledged) {
            return violation(format!(
                "lost: {worker}'s commitment for round {round} was acknowledged as {:?} but the store has {:?}",
                acknowledged.1,
                commitments.get(&(round, worker)).map(|(_, status)| status)
            ));
        }
    }
    for (&(round, worker), payload) in &acked.reveals {
        if reveals.get(&(round, worker)) != Some(payload) {
            return violation(format!(
                "lost: {worker}'s reveal for round {round} was acknowledged but is not recorded"
            ));
        }
    }
    if let Some((round, worker)) = acked.answers.iter().find(|answer| !answers.contains(answer)) {
        return violation(format!(
            "lost: {worker}'s audit answer for round {round} was acknowledged but is not recorded"
        ));
    }
    if let Some((round, worker)) = acked.verdicts.iter().find(|verdict| !verdicts.contains(verdict)) {
        return violation(format!(
            "lost: the verdict on {worker}'s audit in round {round} was acknowledged to its auditor but is not \
             recorded"
        ));
    }
    Ok(())
}

/// What the rules check learned from the ledger: the counting half of a
/// run's [`crate::Summary`] (flattened into it, so its JSON names are
/// these), and what `sim network --seeds` and the seed tests add up.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Tally {
    pub rounds_closed: u64,
    pub rounds_failed: u64,
    /// Submissions credited (`work-accepted`).
    pub submissions_accepted: u64,
    /// Commitments and reveals recorded as late.
    pub late: u64,
    pub slashings: u64,
    pub attackers_slashed: u64,
    /// Slashes of honest workers for an audit they could not answer
    /// because they were down (the protocol's rule, not a violation).
    pub honest_slashes_excused: u64,
    /// Of those, slashes of honest workers that were up, for an audit whose
    /// answer window a coordinator outage ate: the protocol keeps a reveal
    /// deadline that passed (or nearly) while the coordinator was down.
    pub honest_slashes_after_outage: u64,
    pub updates_refused: u64,
    /// Audits judged by a worker's report that agreed with the commitment.
    pub delegated_verdicts: u64,
    /// Auditors slashed because the coordinator's own replay contradicted
    /// their report.
    pub auditors_slashed: u64,
    /// Work units slashes drew from bonds.
    pub drawn_from_bond: u64,
    /// Workers whose bond fell below a stake: they get no more work.
    pub bonds_exhausted: u64,
    /// Ledger events the rules checked.
    pub events: u64,
}

impl Tally {
    /// Adds `other`'s counts to these (runs of many seeds).
    pub fn add(&mut self, other: &Tally) {
        let Tally {
            rounds_closed,
            rounds_failed,
            submissions_accepted,
            late,
            slashings,
            attackers_slashed,
            honest_slashes_excused,
            honest_slashes_after_outage,
            updates_refused,
            delegated_verdicts,
            auditors_slashed,
            drawn_from_bond,
            bonds_exhausted,
            events,
        } = *other;
        self.rounds_closed += rounds_closed;
        self.rounds_failed += rounds_failed;
        self.submissions_accepted += submissions_accepted;
        self.late += late;
        self.slashings += slashings;
        self.attackers_slashed += attackers_slashed;
        self.honest_slashes_excused += honest_slashes_excused;
        self.honest_slashes_after_outage += honest_slashes_after_outage;
        self.updates_refused += updates_refused;
        self.delegated_verdicts += delegated_verdicts;
        self.auditors_slashed += auditors_slashed;
        self.drawn_from_bond += drawn_from_bond;
        self.bonds_exhausted += bonds_exhausted;
        self.events += events;
    }
}

/// A live round as the rules check follows it.
#[derive(Debug, Default)]
struct RoundSeen {
    participants: BTreeSet<WorkerId>,
    commitments: BTreeMap<WorkerId, Commitment>,
    reveals: BTreeSet<WorkerId>,
    mismatched: BTreeSet<WorkerId>,
    audits_failed: BTreeSet<WorkerId>,
    slashed: BTreeSet<WorkerId>,
    refused: BTreeSet<WorkerId>,
}

/// What the simulator knows that the coordinator does not.
#[derive(Debug, Clone, Copy)]
pub struct Knowledge<'a> {
    /// Each worker's behaviour, by key.
    pub behaviour_by_key: &'a BTreeMap<PublicKey, Behaviour>,
    /// `(key, round)`: an honest worker that was down (crashed or gone)
    /// during that round, whose unanswered audit may be slashed.
    pub excused: &'a BTreeSet<(PublicKey, RoundId)>,
    /// Rounds open while the coordinator was down: their audits' answer
    /// window shrank by the outage (the deadline is recorded and stands),
    /// so an honest worker's unanswered audit there may be slashed. A
    /// weakness of the protocol the simulator found, counted apart.
    pub outages: &'a BTreeSet<RoundId>,
    /// Whose update a copier copies.
    pub copies: Copies,
}

/// Where a copier (or near-copier) finds the update it copies: what the
/// rule that a near copy is never paid for needs to name its original.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Copies {
    /// Its neighbour's by id ([`model::victim`]): the stand-in's copiers.
    PreviousWorker,
    /// The round's participant in the next slot: the real worker's `copy`
    /// and `near-copy` ([`crowdtrain_coordinator::behavior::Behavior`]).
    NextSlot,
}

impl Copies {
    /// Whose update `copier` copies in a round of `participants`.
    pub fn victim(self, participants: &BTreeSet<WorkerId>, copier: WorkerId) -> Option<WorkerId> {
        match self {
            Self::PreviousWorker => Some(model::victim(copier)),
            Self::NextSlot => {
                let slot = participants.iter().position(|&worker| worker == copier)?;
                participants.iter().cycle().nth(slot + 1).copied()
            }
        }
    }
}

/// Every round closes or fails by the rules, no honest worker is slashed
/// or refused, and nothing the protocol always catches ever counts; fed
/// the events one by one, in ledger order.
///
/// Rounds are live from their opening to their close or failure: one at a
/// time, or under a delayed outer update `d` ([`Rules::with_outer_delay`])
/// at most `d + 1`, which end in the order they opened (only the oldest,
/// the open round, closes or fails). Each live round's records are checked
/// against that round alone.
#[derive(Debug)]
pub struct Rules {
    quorum: usize,
    /// Rounds opened ahead of the open one at most (`[outer] delay`).
    outer_delay: usize,
    /// The run's bond (0: none) and the stake a slash takes.
    bond: u64,
    stake: u64,
    /// Each bonded worker's bond left.
    bonds: BTreeMap<WorkerId, u64>,
    /// A slash recorded, `(round, worker, amount)`, whose draw must come
    /// next.
    undrawn: Option<(RoundId, WorkerId, u64)>,
    keys: BTreeMap<WorkerId, PublicKey>,
    /// The live rounds by id (the oldest is the open round).
    live: BTreeMap<RoundId, RoundSeen>,
    last_opened: Option<RoundId>,
    /// The workers credited by the round that closed last.
    credited: (RoundId, BTreeSet<WorkerId>),
    pub tally: Tally,
}

impl Rules {
    /// The rules of a run with this quorum, bond (0: none) and stake.
    pub fn new(quorum: u32, bond: u64, stake: u64) -> Self {
        Self {
            quorum: quorum as usize,
            outer_delay: 0,
            bond,
            stake,
            bonds: BTreeMap::new(),
            undrawn: None,
            keys: BTreeMap::new(),
            live: BTreeMap::new(),
            last_opened: None,
            credited: (0, BTreeSet::new()),
            tally: Tally::default(),
        }
    }

    /// The rules of a run under a delayed outer update `delay`: up to
    /// `delay` rounds opened ahead of the open one.
    pub fn with_outer_delay(self, delay: u32) -> Self {
        Self { outer_delay: delay as usize, ..self }
    }

    /// Checks every event of `events`, in order.
    pub fn feed_all<'e>(
        &mut self,
        events: impl IntoIterator<Item = &'e Event>,
        knowledge: Knowledge<'_>,
    ) -> Result<(), Violation> {
        events.into_iter().try_for_each(|event| self.feed(event, knowledge))
    }

    fn open_round(&mut self, round: RoundId, what: &str) -> Result<&mut RoundSeen, Violation> {
        match self.live.get_mut(&round) {
            Some(open) => Ok(open),
            None => violation(format!("{what} names round {round}, which is not a live round")),
        }
    }

    /// Live round `round`, which ends now: it must be the oldest (rounds
    /// close in the order they opened).
    fn end_round(&mut self, round: RoundId, what: &str) -> Result<RoundSeen, Violation> {
        match self.live.first_key_value().map(|(&oldest, _)| oldest) {
            Some(oldest) if oldest == round => Ok(self.live.remove(&round).expect("live")),
            Some(oldest) if self.live.contains_key(&round) => {
                violation(format!("{what} ends round {round} before round {oldest}, opened before it"))
            }
            _ => violation(format!("{what} names round {round}, which is not a live round")),
        }
    }

    /// Checks one event against the rules and what came before it.
    pub fn feed(&mut self, event: &Event, knowledge: Knowledge<'_>) -> Result<(), Violation> {
        let behaviour = |keys: &BTreeMap<WorkerId, PublicKey>, worker: &WorkerId| {
            keys.get(worker).and_then(|key| knowledge.behaviour_by_key.get(key)).copied()
        };
        let honest = |keys: &BTreeMap<WorkerId, PublicKey>, worker: &WorkerId| {
            behaviour(keys, worker).is_some_and(Behaviour::is_honest)
        };
        self.tally.events += 1;
        if let Some((round, worker, _)) = self.undrawn
            && !matches!(event, Event::SlashDrawn { .. })
        {
            return violation(format!("{worker}'s slash in round {round} is not followed by its draw"));
        }
        match event {
            Event::WorkerRegistered { worker, key, .. } => {
                if self.keys.values().any(|known| known == key) {
                    return violation(format!("key {key} registered twice (as {worker})"));
                }
                if self.keys.insert(*worker, *key).is_some() {
                    return violation(format!("{worker} registered twice"));
                }
            }
            Event::RoundOpened { round, participants, .. } => {
                if self.live.len() > self.outer_delay {
                    let live: Vec<&RoundId> = self.live.keys().collect();
                    return violation(format!(
                        "round {round} opened while rounds {live:?} are live (outer delay {}: at most {} at once)",
                        self.outer_delay,
                        self.outer_delay + 1
                    ));
                }
                if self.last_opened.is_some_and(|last| *round <= last) {
                    return violation(format!("round {round} opened after round {:?}", self.last_opened));
                }
                if !participants.windows(2).all(|pair| pair[0] < pair[1]) {
                    return violation(format!("round {round}'s participants are not sorted and distinct"));
                }
                if participants.iter().any(|worker| !self.keys.contains_key(worker)) {
                    return violation(format!("round {round} has a participant that never registered"));
                }
                // A bonded run gives no work to a worker whose bond cannot
                // cover a slash.
                let short = |worker: &&WorkerId| self.bonds.get(worker).copied().unwrap_or(0) < self.stake;
                if let Some(worker) = participants.iter().find(short).filter(|_| self.bond > 0) {
                    return violation(format!(
                        "round {round} gives work to {worker}, whose bond ({} left) cannot cover a slash of {}",
                        self.bonds.get(worker).copied().unwrap_or(0),
                        self.stake
                    ));
                }
                self.last_opened = Some(*round);
                let seen = RoundSeen {
                    participants: participants.iter().copied().collect(),
                    ..RoundSeen::default()
                };
                self.live.insert(*round, seen);
            }
            Event::Commitment { round, worker, commitment, status, .. } => {
                if *status == Recorded::Late {
                    self.tally.late += 1;
                } else {
                    let open = self.open_round(*round, "an accepted commitment")?;
                    if !open.participants.contains(worker) {
                        return violation(format!(
                            "{worker} committed to round {round} without being assigned"
                        ));
                    }
                    if open.commitments.insert(*worker, *commitment).is_some() {
                        return violation(format!("{worker} has two commitments in round {round}"));
                    }
                }
            }
            Event::Reveal { round, worker, payload, status, .. } => match status {
                Recorded::Late => self.tally.late += 1,
                Recorded::Accepted | Recorded::Mismatch | Recorded::Malformed => {
                    let open = self.open_round(*round, "a reveal")?;
                    let Some(commitment) = open.commitments.get(worker) else {
                        return violation(format!("{worker} revealed in round {round} without a commitment"));
                    };
                    let matches = commitment.payload == *payload;
                    if matches != (*status != Recorded::Mismatch) {
                        return violation(format!(
                            "{worker}'s reveal in round {round} is recorded as {status:?}"
                        ));
                    }
                    match status {
                        Recorded::Accepted => open.reveals.insert(*worker),
                        _ => open.mismatched.insert(*worker),
                    };
                }
            },
            Event::Audit { round, worker, verdict, judged_by, .. } => {
                if judged_by.is_some_and(|auditor| auditor == *worker) {
                    return violation(format!("{worker} judged its own audit in round {round}"));
                }
                let open = self.open_round(*round, "a verdict")?;
                if !open.commitments.contains_key(worker) {
                    return violation(format!("{worker} was judged in round {round} without a commitment"));
                }
                if *verdict != Verdict::Passed {
                    open.audits_failed.insert(*worker);
                }
                if judged_by.is_some() {
                    self.tally.delegated_verdicts += 1;
                }
            }
            Event::AuditorSlashed { round, auditor, amount, reason, .. } => {
                if honest(&self.keys, auditor) {
                    return violation(format!(
                        "honest auditor {auditor} slashed in round {round} ({reason}): its report was its replay"
                    ));
                }
                self.tally.auditors_slashed += 1;
                self.open_round(*round, "an auditor's slash")?;
                self.undrawn = Some((*round, *auditor, *amount));
            }
            Event::BondDeposited { worker, amount } => {
                if !self.keys.contains_key(worker) || *amount != self.bond || self.bonds.contains_key(worker)
                {
                    return violation(format!(
                        "{worker}'s bond of {amount} is not the run's ({}) deposited once by a registered worker",
                        self.bond
                    ));
                }
                self.bonds.insert(*worker, *amount);
            }
            Event::SlashDrawn { round, worker, escrow, bond, uncovered } => {
                let Some((slashed_round, slashed, amount)) = self.undrawn.take() else {
                    return violation(format!("a draw on {worker} in round {round} without a slash"));
                };
                let left = self.bonds.get(worker).copied().unwrap_or(0);
                let adds_up = escrow + bond + uncovered == amount;
                // The bond pays what escrow does not, as far as it goes.
                let bond_as_far_as_it_goes = *bond <= left && (*uncovered == 0 || *bond == left);
                if (slashed_round, slashed) != (*round, *worker) || !adds_up || !bond_as_far_as_it_goes {
                    return violation(format!(
                        "the draw on {worker} in round {round} (escrow {escrow}, bond {bond}, uncovered \
                         {uncovered}) is not {slashed}'s slash of {amount} in round {slashed_round} with {left} \
                         of bond left"
                    ));
                }
                if let Some(account) = self.bonds.get_mut(worker) {
                    *account -= bond;
                    if left >= self.stake && *account < self.stake {
                        self.tally.bonds_exhausted += 1;
                    }
                }
                self.tally.drawn_from_bond += bond;
            }
            Event::Slash { round, worker, amount, reason } => {
                self.tally.slashings += 1;
                if honest(&self.keys, worker) {
                    let key = self.keys[worker];
                    let unanswered = reason == "did not answer its audit in time";
                    let outage = unanswered && knowledge.outages.contains(round);
                    if outage && !knowledge.excused.contains(&(key, *round)) {
                        self.tally.honest_slashes_after_outage += 1;
                    }
                    if !(unanswered && (outage || knowledge.excused.contains(&(key, *round)))) {
                        return violation(format!(
                            "honest {worker} slashed in round {round} ({reason}) while it was up and following the \
                             protocol"
                        ));
                    }
                    self.tally.honest_slashes_excused += 1;
                } else {
                    self.tally.attackers_slashed += 1;
                }
                let open = self.open_round(*round, "a slash")?;
                if !open.slashed.insert(*worker) {
                    return violation(format!("{worker} slashed twice in round {round}"));
                }
                self.undrawn = Some((*round, *worker, *amount));
            }
            Event::UpdateRefused { round, worker, reason } => {
                self.tally.updates_refused += 1;
                let is_honest = honest(&self.keys, worker);
                let open = self.open_round(*round, "a refused update")?;
                open.refused.insert(*worker);
                if is_honest {
                    return violation(format!("honest {worker}'s update refused in round {round}: {reason}"));
                }
            }
            Event::RoundClosed { round, accepted, .. } => {
                let quorum = self.quorum;
                let open = self.end_round(*round, "a close")?;
                if accepted.len() < quorum {
                    return violation(format!(
                        "round {round} closed with {} updates; the quorum is {quorum}",
                        accepted.len()
                    ));
                }
                if !accepted.windows(2).all(|pair| pair[0] < pair[1]) {
                    return violation(format!("round {round} credits workers out of order or twice"));
                }
                for worker in accepted {
                    let counted = open.reveals.contains(worker)
                        && !open.mismatched.contains(worker)
                        && !open.audits_failed.contains(worker)
                        && !open.slashed.contains(worker)
                        && !open.refused.contains(worker);
                    if !counted {
                        return violation(format!(
                            "round {round} counts {worker}, whose submission was not revealed, failed or was refused"
                        ));
                    }
                    if let Some(caught) = behaviour(&self.keys, worker).filter(|kind| kind.never_counts()) {
                        return violation(format!(
                            "round {round} counts {worker}'s {caught:?} update, which must always be caught"
                        ));
                    }
                    // A near copy of an honest update revealed in the same
                    // round is told apart by the challenge, whichever was
                    // committed first: the copier is never paid for it, not
                    // even a forger (a made-up trace) whose colluding
                    // worker auditor passed it (a delegated pass proves
                    // nothing about who copied whom).
                    if matches!(
                        behaviour(&self.keys, worker),
                        Some(Behaviour::NearCopier | Behaviour::Forger)
                    ) && let Some(original) = knowledge.copies.victim(&open.participants, *worker)
                        && honest(&self.keys, &original)
                        && open.reveals.contains(&original)
                        && !open.slashed.contains(&original)
                    {
                        return violation(format!(
                            "round {round} counts {worker}'s near copy of {original}'s update, revealed in the same \
                             round"
                        ));
                    }
                }
                self.credited = (*round, accepted.iter().copied().collect());
                self.tally.rounds_closed += 1;
            }
            Event::RoundFailed { round, .. } => {
                self.end_round(*round, "a failure")?;
                self.tally.rounds_failed += 1;
            }
            Event::WorkAccepted { round, worker, .. } => {
                if self.credited.0 != *round || !self.credited.1.remove(worker) {
                    return violation(format!(
                        "{worker} credited for round {round} without counting in it, or twice"
                    ));
                }
                self.tally.submissions_accepted += 1;
            }
            Event::RunFinished { .. } => {
                if let Some(open) = self.live.keys().next() {
                    return violation(format!("the run finished with round {open} open"));
                }
            }
            _ => {}
        }
        Ok(())
    }
}

/// The final state equals a fault-free run with the same accepted
/// submissions: aggregating each closed round's credited updates
/// (`payloads` gives their bytes), in ledger order from `initial_model`,
/// with a defence that never crashed, restarted, speculated or withdrew,
/// gives every round's recorded model and momentum and the run's final
/// model; and every round opens on the newest model there is then (under a
/// delayed outer update, the model of d rounds before it once the pipeline
/// is full: the outer step goes to the newest model, never to the round's
/// base). Returns how many rounds it reproduced. For the stand-in
/// training; [`check_fault_free_with`] for any.
pub fn check_fault_free(
    events: &[Event],
    initial_model: Digest,
    payloads: impl FnMut(RoundId, &[WorkerId]) -> Result<Vec<Vec<u8>>, Violation>,
) -> Result<u64, Violation> {
    let step = |base: Digest, aggregate: &[f32]| Ok(model::next_model(base, aggregate));
    check_fault_free_with(events, initial_model, &AGGREGATOR, model::decode, step, payloads)
}

/// [`check_fault_free`] for a training whose updates `decode` reads,
/// aggregated by `aggregator`, and whose outer step from the model named
/// by its first argument with an aggregate gives the digests of the next
/// model and momentum (`step`, called once per closed round, in order).
pub fn check_fault_free_with(
    events: &[Event],
    initial_model: Digest,
    aggregator: &Aggregator,
    decode: impl Fn(&[u8]) -> Option<Vec<f32>>,
    mut step: impl FnMut(Digest, &[f32]) -> Result<(Digest, Digest), Violation>,
    mut payloads: impl FnMut(RoundId, &[WorkerId]) -> Result<Vec<Vec<u8>>, Violation>,
) -> Result<u64, Violation> {
    let (mut model, mut state, mut reproduced) = (initial_model, AggregatorState::default(), 0);
    for event in events {
        match event {
            Event::RoundOpened { round, base_model, .. } if *base_model != model => {
                return violation(format!(
                    "round {round} opened on {base_model}, but the newest model a fault-free run had then is {model}"
                ));
            }
            Event::RoundClosed { round, result_model, result_momentum, accepted, .. } => {
                let bytes = payloads(*round, accepted)?;
                if bytes.len() != accepted.len() {
                    return violation(format!("round {round}'s credited updates are not all stored"));
                }
                let values =
                    bytes.iter().map(|bytes| decode(bytes)).collect::<Option<Vec<_>>>().ok_or_else(|| {
                        Violation(format!("a credited update of round {round} does not decode"))
                    })?;
                let updates: Vec<(u64, &[f32])> = accepted
                    .iter()
                    .zip(&values)
                    .map(|(worker, values)| (worker.0, values.as_slice()))
                    .collect();
                if updates.is_empty() {
                    return violation(format!("round {round} closed without an update"));
                }
                let (aggregate, change) = aggregate(aggregator, &state, &updates);
                state.apply(change);
                let (expected, momentum) = step(model, &aggregate)?;
                if (expected, momentum) != (*result_model, *result_momentum) {
                    return violation(format!(
                        "round {round} recorded model {result_model}, but its credited updates aggregated without \
                         faults give {expected}"
                    ));
                }
                model = expected;
                reproduced += 1;
            }
            Event::RunFinished { final_model } if *final_model != model => {
                return violation(format!(
                    "the run finished on {final_model}, but a fault-free run with its accepted submissions ends on \
                     {model}"
                ));
            }
            _ => {}
        }
    }
    Ok(reproduced)
}
