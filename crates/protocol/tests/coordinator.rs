//! The round state machine, driven by hand with virtual time: no sockets,
//! no sleeps. Each test states the behaviour a user relies on.

use std::collections::BTreeMap;

use crowdtrain_data::rng::{RngKey, keyed_rng, uniform_below};
use crowdtrain_protocol::Aggregated;
use crowdtrain_protocol::audit::{self, Commitment};
use crowdtrain_protocol::contract::{AccuracySpec, ContractChoice, ContractMenu, MenuOption};
use crowdtrain_protocol::coordinator::{OpenRound, RoundPhase};
use crowdtrain_protocol::judge::ReportCheck;
use crowdtrain_protocol::ledger::Event;
use crowdtrain_protocol::wire::{ErrorCode, Phase};
use crowdtrain_protocol::{
    Action, Coordinator, Digest, Identity, Outcome, PublicKey, Recorded, RoundResult, Settings, Shard,
    TrainingRecipe, Verdict, WorkerId,
};
use crowdtrain_store::{RunRecord, Store};

const T0: u64 = 1_800_000_000_000;
const MASTER: [u8; 32] = [42; 32];

fn settings() -> Settings {
    Settings {
        rounds: 3,
        min_workers: 2,
        quorum: 2,
        commit_ms: 10_000,
        reveal_ms: 5_000,
        extension_ms: 5_000,
        max_extensions: 1,
        worker_timeout_ms: 60_000,
        max_workers: 8,
        max_participants: 8,
        audit_probability: 0.0,
        segments: 4,
        stake: 1000,
        delegate_audits: false,
        replay_from_start: false,
        bond: 0,
        vesting_rounds: 4,
        // 4 steps of 16 examples: 64 work units a submission.
        recipe: TrainingRecipe { inner_steps: 4, batch_size: 16, ..TrainingRecipe::with_seed(9) },
        contract_extra_rounds: 0,
        outer_delay: 0,
    }
}

fn key(index: u8) -> PublicKey {
    Identity::from_seed([index + 1; 32]).public_key()
}

fn model(index: u64) -> Digest {
    Digest::of(&index.to_le_bytes())
}

/// What aggregation gives in these tests: model `index`, with made-up
/// momentum and no aggregator snapshot.
fn result(index: u64) -> RoundResult {
    RoundResult {
        model: model(index),
        momentum: Digest::of(&((index + 1) << 32).to_le_bytes()),
        aggregator: None,
    }
}

fn drain(machine: &mut Coordinator) -> Vec<Action> {
    std::iter::from_fn(|| machine.poll_action()).collect()
}

fn commitment(worker: WorkerId, round: u64) -> Commitment {
    Commitment {
        merkle_root: Digest::of(&[worker.0 as u8, round as u8, 1]),
        payload: payload(worker, round),
        segments: 4,
        residual_in: None,
        residual_out: None,
    }
}

fn payload(worker: WorkerId, round: u64) -> Digest {
    Digest::of(&[worker.0 as u8, round as u8, 2])
}

/// A machine with `count` registered workers and round 0 open with all of
/// them.
fn running(count: u8, settings: Settings) -> (Coordinator, Vec<WorkerId>) {
    let settings = Settings { min_workers: u32::from(count), ..settings };
    let mut machine = Coordinator::new(settings, Digest::of(b"run"), model(0), MASTER);
    let workers = (0..count).map(|index| machine.register(T0, key(index), "avx2-fma").unwrap().0).collect();
    drain(&mut machine);
    (machine, workers)
}

fn base(machine: &Coordinator) -> Digest {
    machine.open_round().map_or(model(0), |open| open.base_model)
}

fn commit(machine: &mut Coordinator, now: u64, worker: WorkerId, round: u64) -> Result<Outcome, ErrorCode> {
    let base = base(machine);
    machine
        .commit(now, worker, now * 1000, round, base, None, commitment(worker, round))
        .map_err(|refusal| refusal.code)
}

fn reveal(machine: &mut Coordinator, now: u64, worker: WorkerId, round: u64) -> Result<Outcome, ErrorCode> {
    let base = base(machine);
    machine
        .reveal(now, worker, now * 1000 + 1, round, base, payload(worker, round), None)
        .map_err(|refusal| refusal.code)
}

/// Commits and reveals for every worker in `workers`; returns the actions.
fn deliver(machine: &mut Coordinator, now: u64, workers: &[WorkerId], round: u64) -> Vec<Action> {
    for &worker in workers {
        commit(machine, now, worker, round).unwrap();
    }
    for &worker in workers {
        reveal(machine, now + 1, worker, round).unwrap();
    }
    drain(machine)
}

#[test]
fn a_round_opens_once_enough_workers_are_active_with_sorted_slots_and_a_sealed_secret() {
    let mut machine = Coordinator::new(settings(), Digest::of(b"run"), model(0), MASTER);
    let (first, new) = machine.register(T0, key(0), "avx2-fma").unwrap();
    assert!(new);
    assert_eq!(machine.phase(), Phase::Waiting);
    assert!(matches!(drain(&mut machine)[..], [Action::Record(Event::WorkerRegistered { .. })]));
    let (second, _) = machine.register(T0 + 5, key(1), "avx2-fma").unwrap();
    let actions = drain(&mut machine);
    let Action::Record(Event::RoundOpened {
        round: 0,
        participants,
        commit_deadline_unix_ms,
        secret_commitment,
        ..
    }) = &actions[1]
    else {
        panic!("{actions:?}")
    };
    assert_eq!(participants, &vec![first, second]);
    assert_eq!(*commit_deadline_unix_ms, T0 + 5 + 10_000);
    let secret = audit::round_secret(&MASTER, &Digest::of(b"run"), 0);
    assert_eq!(*secret_commitment, audit::secret_commitment(&secret));
    assert_eq!(machine.phase(), Phase::Committing);
    let view = machine.view(Some(second));
    assert_eq!(view.secret, None, "the secret stays hidden until every commitment is in");
    let assignment = view.assignment.unwrap();
    assert_eq!((assignment.slot, assignment.slots, assignment.round, assignment.recipe.seed), (1, 2, 0, 9));
    assert_eq!(
        machine.register(T0 + 6, key(1), "avx2-fma").unwrap(),
        (second, false),
        "registration is idempotent"
    );
    assert!(drain(&mut machine).is_empty());
}

#[test]
fn a_full_round_commits_reveals_aggregates_credits_and_opens_the_next() {
    let (mut machine, workers) = running(3, settings());
    for &worker in &workers[..2] {
        assert_eq!(commit(&mut machine, T0 + 100, worker, 0), Ok(Outcome::Recorded(Recorded::Accepted)));
    }
    // A committed worker may reveal at once (an early reveal, kept until
    // the round closes); one that has not committed may not.
    assert_eq!(
        reveal(&mut machine, T0 + 101, workers[0], 0),
        Ok(Outcome::Recorded(Recorded::Accepted)),
        "an early reveal"
    );
    assert_eq!(reveal(&mut machine, T0 + 101, workers[2], 0), Err(ErrorCode::NotCommitted));
    assert_eq!(machine.phase(), Phase::Committing, "the early reveal ends nothing");
    commit(&mut machine, T0 + 102, workers[2], 0).unwrap();
    let actions = drain(&mut machine);
    let Some(Action::Record(Event::AuditDraw { secret, beacon, audits, .. })) = actions.last() else {
        panic!("{actions:?}")
    };
    let open = machine.open_round().unwrap();
    let commitments: BTreeMap<WorkerId, Commitment> =
        workers.iter().map(|&worker| (worker, commitment(worker, 0))).collect();
    assert_eq!(
        *beacon,
        audit::beacon(secret, &Digest::of(b"run"), 0, &commitments),
        "anyone can recompute the draw"
    );
    assert_eq!(
        audit::secret_commitment(secret),
        open.secret_commitment,
        "the secret matches what was published"
    );
    assert!(audits.is_empty(), "audits are off in these settings");
    assert_eq!(machine.phase(), Phase::Revealing);
    assert_eq!(
        reveal(&mut machine, T0 + 200, workers[0], 0),
        Ok(Outcome::AlreadyRecorded(Recorded::Accepted)),
        "revealed early: the same reveal again changes nothing"
    );
    for &worker in &workers[1..] {
        assert_eq!(reveal(&mut machine, T0 + 200, worker, 0), Ok(Outcome::Recorded(Recorded::Accepted)));
    }
    let actions = drain(&mut machine);
    assert!(matches!(actions.last(), Some(Action::Close { round: 0, accepted, .. }) if accepted == &workers));
    machine.handle_aggregated(T0 + 220, 0, Aggregated::all(result(1)));
    let actions = drain(&mut machine);
    assert!(
        matches!(&actions[0], Action::Record(Event::RoundClosed { round: 0, result_model, .. }) if *result_model == model(1))
    );
    let credits: Vec<&Action> = actions
        .iter()
        .filter(|action| matches!(action, Action::Record(Event::WorkAccepted { .. })))
        .collect();
    assert_eq!(credits.len(), 3, "each accepted submission earns its work units");
    assert!(matches!(credits[0], Action::Record(Event::WorkAccepted { units: 64, .. })));
    assert!(
        matches!(actions.last(), Some(Action::Record(Event::RoundOpened { round: 1, base_model, participants, .. }))
        if *base_model == model(1) && participants == &workers)
    );
    assert_eq!(machine.completed_rounds(), 1);
}

#[test]
fn reveals_sent_with_their_commitments_let_a_round_close_as_its_commit_phase_ends() {
    // Goal: a committed worker may reveal at once, in the commit phase (an
    // early reveal: the coordinator keeps it until the round closes, so it
    // shows nobody anything), and a round whose committed workers all did
    // closes the moment its commit phase ends, with no reveal phase to wait
    // out. A mismatching early reveal is a proven fault like any other.
    // Method: round 1 (all proven) with worker 2 absent: workers 0 and 1
    // commit and reveal early; the commit deadline ends the phase and the
    // same input closes the round. Then round 2, where worker 0 reveals
    // early what it did not commit to.
    let (mut machine, workers) = running(3, settings());
    deliver(&mut machine, T0 + 10, &workers, 0);
    machine.handle_aggregated(T0 + 20, 0, Aggregated::all(result(1)));
    drain(&mut machine);
    let opened = T0 + 20;
    for (offset, &worker) in workers[..2].iter().enumerate() {
        let at = T0 + 100 + offset as u64;
        commit(&mut machine, at, worker, 1).unwrap();
        assert_eq!(reveal(&mut machine, at, worker, 1), Ok(Outcome::Recorded(Recorded::Accepted)));
    }
    assert_eq!(machine.phase(), Phase::Committing, "a proven participant is waited for");
    assert!(machine.view(Some(workers[0])).revealed, "the worker sees its early reveal taken");
    drain(&mut machine);
    machine.handle_timeout(opened + 10_000);
    let actions = drain(&mut machine);
    assert!(
        matches!(actions.first(), Some(Action::Record(Event::AuditDraw { round: 1, .. }))),
        "{actions:?}"
    );
    assert!(
        matches!(actions.last(), Some(Action::Close { round: 1, accepted, .. }) if accepted == &workers[..2]),
        "closed at the end of the commit phase: {actions:?}"
    );
    machine.handle_aggregated(opened + 10_001, 1, Aggregated::all(result(2)));
    drain(&mut machine);

    commit(&mut machine, opened + 10_100, workers[0], 2).unwrap();
    let tampered = machine.reveal(
        opened + 10_101,
        workers[0],
        (opened + 10_101) * 1000,
        2,
        model(2),
        Digest::of(b"tampered"),
        None,
    );
    assert_eq!(tampered, Ok(Outcome::Recorded(Recorded::Mismatch)));
    assert!(
        drain(&mut machine)
            .iter()
            .any(|action| matches!(action, Action::Record(Event::Slash { round: 2, worker, .. }) if *worker == workers[0])),
        "an early mismatch is slashed"
    );
}

#[test]
fn a_coordinator_that_crashes_anywhere_among_early_reveals_resumes_exactly() {
    // Goal: early reveals are durable records like any other: a machine
    // restored after any step of a round revealed early (in its commit
    // phase, the last commitment ending it) behaves as the live one did.
    let settings = Settings { min_workers: 3, audit_probability: 0.6, ..settings() };
    let steps: Vec<Step> = (0..3)
        .flat_map(|index: usize| -> [Step; 2] {
            let at = T0 + 10 + 2 * index as u64;
            [
                Box::new(move |m, w| {
                    commit(m, at, w[index], 0).unwrap();
                }),
                Box::new(move |m, w| {
                    let _ = reveal(m, at + 1, w[index], 0);
                }),
            ]
        })
        .chain(std::iter::once(Box::new(|m: &mut Coordinator, w: &[WorkerId]| {
            for &worker in w {
                if m.pending_audit(worker, 0).is_some() {
                    m.audit_result(T0 + 30, 0, worker, Verdict::Passed, None, None).unwrap();
                }
            }
        }) as Step))
        .collect();
    restored_machines_behave_like_the_live_one(&settings, &steps, T0 + 12);
}

#[test]
fn at_the_commit_deadline_with_quorum_the_round_goes_on_without_the_absent_worker() {
    let (mut machine, workers) = running(3, settings());
    // Round 0 proves all three: round 1 waits for each up to its deadline.
    deliver(&mut machine, T0 + 10, &workers, 0);
    machine.handle_aggregated(T0 + 20, 0, Aggregated::all(result(1)));
    drain(&mut machine);
    let opened = T0 + 20;
    commit(&mut machine, T0 + 100, workers[0], 1).unwrap();
    commit(&mut machine, T0 + 200, workers[2], 1).unwrap();
    drain(&mut machine);
    assert_eq!(machine.poll_timeout(), Some(opened + 10_000), "a proven participant is waited for");
    machine.handle_timeout(opened + 9_999);
    assert!(drain(&mut machine).is_empty(), "nothing happens before the deadline");
    machine.handle_timeout(opened + 10_000);
    assert!(matches!(drain(&mut machine)[..], [Action::Record(Event::AuditDraw { .. })]));
    assert_eq!(
        commit(&mut machine, opened + 10_001, workers[1], 1),
        Ok(Outcome::Recorded(Recorded::Late)),
        "a commitment after the phase is kept, as late"
    );
    assert_eq!(reveal(&mut machine, opened + 10_002, workers[1], 1), Err(ErrorCode::NotCommitted));
    drain(&mut machine);
    reveal(&mut machine, opened + 10_003, workers[0], 1).unwrap();
    reveal(&mut machine, opened + 10_004, workers[2], 1).unwrap();
    let actions = drain(&mut machine);
    assert!(
        matches!(actions.last(), Some(Action::Close { accepted, .. }) if accepted == &vec![workers[0], workers[2]])
    );
    machine.handle_aggregated(opened + 10_010, 1, Aggregated::all(result(2)));
    let actions = drain(&mut machine);
    assert!(
        matches!(actions.last(), Some(Action::Record(Event::RoundOpened { participants, .. })) if participants == &vec![workers[0], workers[2]]),
        "the worker that was late in round 1 sits out round 2"
    );
    machine.seen(opened + 11_000, workers[1]);
    assert!(machine.is_active(workers[1]), "having committed late, it joins round 3 and is waited for");
}

#[test]
fn absent_workers_cost_a_round_a_short_grace_and_sit_out_longer_each_time() {
    // Goal: anyone admitted can register and never train; rounds must not
    // wait their deadline for such workers, and polling must not bring
    // them back. Method: two proven workers and one that never commits.
    let settings = Settings { rounds: 20, quorum: 2, ..settings() };
    let (mut machine, workers) = running(2, settings);
    let idle = machine.register(T0, key(7), "avx2-fma").unwrap().0;
    deliver(&mut machine, T0 + 10, &workers, 0);
    machine.handle_aggregated(T0 + 20, 0, Aggregated::all(result(1)));
    let mut now = T0 + 20;
    let mut assigned = Vec::new();
    for round in 1..12u64 {
        let actions = drain(&mut machine);
        let Some(Action::Record(Event::RoundOpened { participants, opened_unix_ms, .. })) = actions.last()
        else {
            panic!("round {round} opens: {actions:?}")
        };
        let opened = *opened_unix_ms;
        if participants.contains(&idle) {
            assigned.push(round);
        }
        // The idle worker polls all the time: it is seen, never working.
        machine.seen(now + 1, idle);
        now = opened + 300;
        for &worker in &workers {
            commit(&mut machine, now, worker, round).unwrap();
        }
        if participants.contains(&idle) {
            assert_eq!(
                machine.poll_timeout(),
                Some(now + 1_000),
                "round {round}: an unproven participant gets a grace of the round so far (at least 1 s)"
            );
            now += 1_000;
            machine.handle_timeout(now);
        }
        for &worker in &workers {
            reveal(&mut machine, now + 1, worker, round).unwrap();
        }
        now += 2;
        drain(&mut machine);
        machine.handle_aggregated(now, round, Aggregated::all(result(round + 1)));
    }
    assert_eq!(assigned, vec![1, 3, 6, 11], "it joins at round 1, then sits out 1, 2 and 4 rounds");
}

#[test]
fn without_quorum_the_commit_deadline_is_extended_then_the_round_fails_and_is_retried() {
    let (mut machine, workers) = running(2, settings());
    commit(&mut machine, T0 + 100, workers[0], 0).unwrap();
    drain(&mut machine);
    machine.handle_timeout(T0 + 10_000);
    assert!(
        matches!(drain(&mut machine)[..], [Action::Record(Event::DeadlineExtended { round: 0, commit_deadline_unix_ms, extensions: 1 })]
        if commit_deadline_unix_ms == T0 + 15_000)
    );
    machine.handle_timeout(T0 + 15_000);
    let actions = drain(&mut machine);
    assert!(matches!(actions[0], Action::Record(Event::RoundFailed { round: 0, .. })));
    assert_eq!(actions.len(), 1, "worker 1 missed round 0: below quorum, so no new round yet");
    machine.seen(T0 + 16_000, workers[1]);
    assert!(
        matches!(&drain(&mut machine)[..], [Action::Record(Event::RoundOpened { round: 1, base_model, .. })] if *base_model == model(0))
    );
    assert_eq!(machine.completed_rounds(), 0);
}

#[test]
fn a_reveal_that_does_not_match_its_commitment_is_rejected_and_slashed() {
    let (mut machine, workers) = running(3, settings());
    for &worker in &workers {
        commit(&mut machine, T0 + 1, worker, 0).unwrap();
    }
    drain(&mut machine);
    let cheat = machine
        .reveal(T0 + 2, workers[1], (T0 + 2) * 1000, 0, model(0), Digest::of(b"something else"), None)
        .unwrap();
    assert_eq!(cheat, Outcome::Recorded(Recorded::Mismatch));
    let actions = drain(&mut machine);
    assert!(matches!(actions[0], Action::Record(Event::Reveal { status: Recorded::Mismatch, .. })));
    assert!(
        matches!(&actions[1], Action::Record(Event::Slash { worker, amount: 1000, .. }) if *worker == workers[1])
    );
    reveal(&mut machine, T0 + 3, workers[0], 0).unwrap();
    reveal(&mut machine, T0 + 4, workers[2], 0).unwrap();
    let actions = drain(&mut machine);
    assert!(
        matches!(actions.last(), Some(Action::Close { accepted, .. }) if accepted == &vec![workers[0], workers[2]])
    );
}

#[test]
fn audits_are_drawn_with_each_commitment_and_can_be_judged_before_the_others_commit() {
    let (mut machine, workers) = running(3, Settings { audit_probability: 0.5, ..settings() });
    commit(&mut machine, T0 + 1, workers[0], 0).unwrap();
    let recorded = drain(&mut machine);
    let Some(&Action::Record(Event::Commitment { audit, .. })) = recorded.first() else {
        panic!("{recorded:?}")
    };
    assert_eq!(machine.phase(), Phase::Committing, "the others have not committed");
    assert_eq!(machine.view(Some(workers[0])).audit, audit, "the worker is told at once");
    // Whatever the first draw, find a committed worker with an audit.
    commit(&mut machine, T0 + 2, workers[1], 0).unwrap();
    let drawn: Vec<(WorkerId, u32)> = workers[..2]
        .iter()
        .filter_map(|&worker| machine.view(Some(worker)).audit.map(|segment| (worker, segment)))
        .collect();
    drain(&mut machine);
    // (The draws are fixed by the test's master key: one of the two is audited.)
    assert!(!drawn.is_empty(), "no audit drawn with this key; pick another round");
    if let Some(&(worker, segment)) = drawn.first() {
        assert_eq!(machine.pending_audit(worker, 0).map(|(segment, _)| segment), Some(segment));
        machine
            .audit_result(T0 + 3, 0, worker, Verdict::Failed("replayed to another state".into()), None, None)
            .unwrap();
        let actions = drain(&mut machine);
        assert!(
            actions
                .iter()
                .any(|action| matches!(action, Action::Record(Event::Slash { worker: slashed, .. }) if *slashed == worker))
        );
        assert_eq!(machine.phase(), Phase::Committing, "a verdict does not end the commit phase");
    }
    commit(&mut machine, T0 + 4, workers[2], 0).unwrap();
    let actions = drain(&mut machine);
    let Some(Action::Record(Event::AuditDraw { secret, audits, .. })) = actions.last() else {
        panic!("{actions:?}")
    };
    // Anyone can recompute every draw from the revealed secret.
    let recomputed: Vec<(WorkerId, u32)> = workers
        .iter()
        .filter_map(|&worker| {
            let beacon =
                audit::commitment_beacon(secret, &Digest::of(b"run"), 0, worker, &commitment(worker, 0));
            audit::draw(&beacon, worker, 0.5, settings().recipe.inner_steps, 4)
                .map(|segment| (worker, segment))
        })
        .collect();
    assert_eq!(audits, &recomputed);
    assert!(drawn.iter().all(|pair| audits.contains(pair)), "the draw never changes");
}

#[test]
fn delegated_audits_are_announced_when_their_auditors_are_named() {
    let settings = Settings { audit_probability: 1.0, delegate_audits: true, ..settings() };
    let (mut machine, workers) = running(3, settings);
    commit(&mut machine, T0 + 1, workers[0], 0).unwrap();
    assert_eq!(machine.view(Some(workers[0])).audit, None);
    assert_eq!(machine.pending_audit(workers[0], 0), None, "no answer before the auditor is named");
    for &worker in &workers[1..] {
        commit(&mut machine, T0 + 2, worker, 0).unwrap();
    }
    assert!(machine.view(Some(workers[0])).audit.is_some());
    assert!(machine.pending_audit(workers[0], 0).is_some());
}

#[test]
fn a_copy_committed_before_its_original_is_caught_by_replay_and_the_original_stands() {
    // Goal: an honest worker is never refused because someone else
    // submitted its update first. A copier that retrains its victim's
    // assignment holds the victim's very update and can commit it first;
    // arrival order cannot tell them apart, the replay of each under its
    // own assignment can. Audits are off here, so only the contested pair
    // is audited; everything goes through the real store and a restore.
    let settings = Settings { min_workers: 3, ..settings() };
    let (mut machine, mut durable, workers) = durable_running(3, &settings);
    let (copier, victim, other) = (workers[0], workers[1], workers[2]);
    let base = base(&machine);
    machine.commit(T0 + 1, copier, 1, 0, base, None, commitment(victim, 0)).unwrap();
    commit(&mut machine, T0 + 2, victim, 0).unwrap();
    commit(&mut machine, T0 + 3, other, 0).unwrap();
    let actions = durable.record(drain(&mut machine));
    let Some(Action::Record(Event::AuditDraw { audits, .. })) = actions.last() else { panic!("{actions:?}") };
    let audited: Vec<WorkerId> = audits.iter().map(|&(worker, _)| worker).collect();
    assert_eq!(audited, [copier, victim], "both commitments to one update are audited, audits or not");
    let restored = durable.restore(settings.clone(), T0 + 4);
    assert_eq!(
        restored.open_round().unwrap().standings,
        machine.open_round().unwrap().standings,
        "the forced audits are durable"
    );
    for (step, worker) in [copier, victim, other].into_iter().enumerate() {
        let owner = if worker == copier { victim } else { worker };
        machine.reveal(T0 + 5, worker, 100 + step as u64, 0, base, payload(owner, 0), None).unwrap();
        assert!(machine.view(Some(worker)).audit.is_some() == (worker != other), "{worker} sees its audit");
    }
    durable.record(drain(&mut machine));
    machine
        .audit_result(T0 + 6, 0, copier, Verdict::Failed("replayed to another state".into()), None, None)
        .unwrap();
    machine.audit_result(T0 + 7, 0, victim, Verdict::Passed, None, None).unwrap();
    let actions = durable.record(drain(&mut machine));
    let slashed: Vec<WorkerId> = actions
        .iter()
        .filter_map(|action| match action {
            Action::Record(Event::Slash { worker, .. }) => Some(*worker),
            _ => None,
        })
        .collect();
    assert_eq!(slashed, [copier], "the copy is slashed, its original is not");
    let Some(Action::Close { accepted, .. }) = actions.last() else { panic!("{actions:?}") };
    assert_eq!(accepted, &[victim, other], "the original counts though its copy came first");
}

#[test]
fn a_contested_update_is_never_audited_by_another_worker() {
    // Goal: a copier cannot have a colluding auditor vouch for its copy
    // (and the honest original refused as the copy). Method: audits
    // delegated, every commitment audited, three workers of one class, the
    // copier first; the draw names auditors for the uncontested update
    // only, and the contested pair's answers go to the coordinator.
    let settings = Settings { min_workers: 3, audit_probability: 1.0, delegate_audits: true, ..settings() };
    let (mut machine, _, workers) = durable_running(3, &settings);
    let (copier, victim, other) = (workers[0], workers[1], workers[2]);
    let base = base(&machine);
    machine.commit(T0 + 1, copier, 1, 0, base, None, commitment(victim, 0)).unwrap();
    commit(&mut machine, T0 + 2, victim, 0).unwrap();
    commit(&mut machine, T0 + 3, other, 0).unwrap();
    let actions = drain(&mut machine);
    let Some(Action::Record(Event::AuditDraw { audits, auditors, .. })) =
        actions.iter().find(|action| matches!(action, Action::Record(Event::AuditDraw { .. })))
    else {
        panic!("{actions:?}")
    };
    assert_eq!(audits.len(), 3, "{audits:?}");
    let audited_by_workers: Vec<WorkerId> = auditors.iter().map(|pair| pair.0).collect();
    assert_eq!(audited_by_workers, [other], "only the uncontested update goes to a worker: {auditors:?}");
    for worker in [copier, victim] {
        let auditor =
            machine.audit_answered(T0 + 4, worker, (T0 + 4) * 1000 + worker.0, 0, Digest::of(b"an answer"));
        assert_eq!(auditor, Ok(None), "the coordinator replays {worker}'s contested answer itself");
    }
}

#[test]
fn audits_decide_acceptance_and_failures_or_silence_are_slashed() {
    let (mut machine, workers) = running(3, Settings { audit_probability: 1.0, ..settings() });
    for &worker in &workers {
        commit(&mut machine, T0 + 1, worker, 0).unwrap();
    }
    let actions = drain(&mut machine);
    let Some(Action::Record(Event::AuditDraw { audits, .. })) = actions.last() else { panic!() };
    assert_eq!(audits.len(), 3, "with probability 1 every committed worker is audited");
    assert!(audits.iter().all(|&(_, segment)| (1..=4).contains(&segment)));
    for &worker in &workers {
        reveal(&mut machine, T0 + 2, worker, 0).unwrap();
    }
    assert!(
        !drain(&mut machine).iter().any(|action| matches!(action, Action::Close { .. })),
        "audits pending"
    );
    let (segment, committed) = machine.pending_audit(workers[0], 0).unwrap();
    assert_eq!(committed, commitment(workers[0], 0));
    assert!(audits.contains(&(workers[0], segment)));
    machine
        .audit_result(T0 + 3, 0, workers[0], Verdict::Passed, None, Some((workers[0], (T0 + 3) * 1000)))
        .unwrap();
    machine
        .audit_result(
            T0 + 4,
            0,
            workers[1],
            Verdict::Failed("hash mismatch".into()),
            None,
            Some((workers[1], (T0 + 4) * 1000)),
        )
        .unwrap();
    let refusal = machine
        .audit_result(T0 + 5, 0, workers[1], Verdict::Passed, None, Some((workers[1], (T0 + 5) * 1000)))
        .unwrap_err();
    assert_eq!(refusal.code, ErrorCode::NotAudited, "a verdict is final");
    let actions = drain(&mut machine);
    assert!(actions.iter().any(
        |action| matches!(action, Action::Record(Event::Slash { worker, .. }) if *worker == workers[1])
    ));
    // Worker 2 never answers: at the reveal deadline it fails and is slashed.
    machine.handle_timeout(T0 + 1 + 5_000);
    let actions = drain(&mut machine);
    assert!(
        matches!(&actions[0], Action::Record(Event::Audit { worker, verdict: Verdict::Unanswered, .. }) if *worker == workers[2])
    );
    assert!(matches!(&actions[1], Action::Record(Event::Slash { worker, .. }) if *worker == workers[2]));
    // With no escrow and no bond, the whole stake is uncovered.
    assert!(
        matches!(&actions[2], Action::Record(Event::SlashDrawn { worker, escrow: 0, bond: 0, uncovered: 1000, .. }) if *worker == workers[2])
    );
    // Only the passed audit counts, which is below the quorum of 2.
    assert!(matches!(actions[3], Action::Record(Event::RoundFailed { round: 0, .. })), "{actions:?}");
    assert!(!actions.iter().any(|action| matches!(action, Action::Close { .. })));
}

#[test]
fn late_duplicate_wrong_round_and_stale_submissions_are_judged() {
    let (mut machine, workers) = running(2, Settings { quorum: 1, ..settings() });
    commit(&mut machine, T0 + 1, workers[0], 0).unwrap();
    drain(&mut machine);
    assert_eq!(commit(&mut machine, T0 + 2, workers[0], 0), Ok(Outcome::AlreadyRecorded(Recorded::Accepted)));
    let different = Commitment { payload: Digest::of(b"x"), ..commitment(workers[0], 0) };
    assert_eq!(
        machine.commit(T0 + 3, workers[0], 1, 0, model(0), None, different).unwrap_err().code,
        ErrorCode::Duplicate
    );
    assert_eq!(commit(&mut machine, T0 + 3, workers[0], 5), Err(ErrorCode::WrongRound));
    let stale =
        machine.commit(T0 + 3, workers[1], 1, 0, model(99), None, commitment(workers[1], 0)).unwrap_err();
    assert_eq!(stale.code, ErrorCode::StaleModel);
    let wrong_segments = Commitment { segments: 3, ..commitment(workers[1], 0) };
    assert_eq!(
        machine.commit(T0 + 3, workers[1], 1, 0, model(0), None, wrong_segments).unwrap_err().code,
        ErrorCode::BadRequest
    );
    assert!(drain(&mut machine).is_empty(), "refusals change nothing");
    machine.handle_timeout(T0 + 10_000);
    reveal(&mut machine, T0 + 10_001, workers[0], 0).unwrap();
    drain(&mut machine);
    machine.handle_aggregated(T0 + 10_002, 0, Aggregated::all(result(1)));
    drain(&mut machine);
    // Round 0 is closed; worker 1's commitment and reveal for it come now
    // (on round 0's model, model 0).
    let late_commit = machine.commit(
        T0 + 10_003,
        workers[1],
        (T0 + 10_003) * 1000,
        0,
        model(0),
        None,
        commitment(workers[1], 0),
    );
    assert_eq!(late_commit, Ok(Outcome::Recorded(Recorded::Late)));
    let late_reveal = machine.reveal(
        T0 + 10_004,
        workers[1],
        (T0 + 10_004) * 1000,
        0,
        model(0),
        payload(workers[1], 0),
        None,
    );
    assert_eq!(late_reveal, Ok(Outcome::Recorded(Recorded::Late)));
    let actions = drain(&mut machine);
    assert!(matches!(actions[0], Action::Record(Event::Commitment { status: Recorded::Late, round: 0, .. })));
    assert!(matches!(actions[1], Action::Record(Event::Reveal { status: Recorded::Late, round: 0, .. })));
    let again = machine.reveal(
        T0 + 10_005,
        workers[1],
        (T0 + 10_005) * 1000,
        0,
        model(0),
        payload(workers[1], 0),
        None,
    );
    assert_eq!(again, Ok(Outcome::AlreadyRecorded(Recorded::Late)));
}

#[test]
fn authentication_refuses_unknown_keys_replays_and_stale_nonces() {
    let (machine, workers) = running(2, settings());
    let now = T0 + 1000;
    assert_eq!(machine.authenticate(now, &key(0), now * 1000, true), Ok(workers[0]));
    assert_eq!(
        machine.authenticate(now, &key(7), now * 1000, true).unwrap_err().code,
        ErrorCode::UnknownWorker
    );
    let stale = (now - 11 * 60 * 1000) * 1000;
    assert_eq!(machine.authenticate(now, &key(0), stale, false).unwrap_err().code, ErrorCode::Replayed);
    let (mut machine, workers) = running(2, settings());
    let nonce = (T0 + 5) * 1000;
    machine.commit(T0 + 5, workers[0], nonce, 0, model(0), None, commitment(workers[0], 0)).unwrap();
    assert_eq!(machine.authenticate(T0 + 6, &key(0), nonce, true).unwrap_err().code, ErrorCode::Replayed);
    assert_eq!(
        machine.authenticate(T0 + 6, &key(0), nonce, false),
        Ok(workers[0]),
        "reads need no fresh nonce"
    );
    assert_eq!(machine.authenticate(T0 + 6, &key(0), nonce + 1, true), Ok(workers[0]));
}

#[test]
fn reads_in_flight_together_are_taken_in_any_order_and_none_twice() {
    // A pipelined worker's long poll, a reveal's wait and its work loop's
    // read are answered together by a round's close, and their retries may
    // arrive in the other order than they were signed.
    let (mut machine, workers) = running(2, settings());
    let now = T0 + 1000;
    let signed: Vec<u64> = (0..3).map(|i| now * 1000 + i).collect();
    for &nonce in signed.iter().rev() {
        assert_eq!(machine.read(now, &key(0), nonce), Ok(workers[0]), "nonce {nonce}");
    }
    for &nonce in &signed {
        let refused = machine.read(now, &key(0), nonce).unwrap_err();
        assert_eq!(refused.code, ErrorCode::Replayed, "a captured read is refused: {}", refused.message);
    }
    // Many reads later, one signed before all of them may have been taken
    // and forgotten: refused, though this one never was.
    for i in 0..40 {
        machine.read(now, &key(0), now * 1000 + 100 + i).unwrap();
    }
    let refused = machine.read(now, &key(0), now * 1000 + 50).unwrap_err();
    assert_eq!(refused.code, ErrorCode::Replayed, "{}", refused.message);
    assert_eq!(machine.read(now, &key(1), now * 1000), Ok(workers[1]), "each key has its own reads");
}

#[test]
fn registration_beyond_the_limit_is_refused() {
    let mut machine =
        Coordinator::new(Settings { max_workers: 2, ..settings() }, Digest::of(b"run"), model(0), MASTER);
    machine.register(T0, key(0), "avx2-fma").unwrap();
    machine.register(T0, key(1), "avx2-fma").unwrap();
    drain(&mut machine);
    assert_eq!(machine.register(T0, key(2), "avx2-fma").unwrap_err().code, ErrorCode::Full);
    assert!(drain(&mut machine).is_empty());
    assert_eq!(machine.worker_count(), 2);
}

#[test]
fn the_run_finishes_after_its_rounds_and_opens_no_more() {
    let (mut machine, workers) = running(2, settings());
    for round in 0..3 {
        deliver(&mut machine, T0 + round * 100 + 1, &workers, round);
        machine.handle_aggregated(T0 + round * 100 + 3, round, Aggregated::all(result(round + 1)));
    }
    let actions = drain(&mut machine);
    assert!(
        matches!(actions.last(), Some(Action::Record(Event::RunFinished { final_model })) if *final_model == model(3))
    );
    assert_eq!(machine.phase(), Phase::Finished);
    machine.handle_timeout(T0 + 1_000_000);
    machine.seen(T0 + 1_000_000, workers[0]);
    assert!(drain(&mut machine).is_empty());
}

/// What a driver makes durable: a real store (SQLite in memory), fed the
/// machine's records exactly as the coordinator feeds them, from which a
/// machine is restored as a restarted coordinator restores it.
struct Durable {
    store: Store,
    signer: Identity,
}

impl Durable {
    fn new() -> Self {
        let signer = Identity::from_seed([77; 32]);
        let mut store = Store::open_in_memory().unwrap();
        let run = RunRecord {
            run_id: Digest::of(b"run"),
            protocol_version: 0,
            config_json: "{}".into(),
            coordinator_key: signer.public_key(),
            model_name: "test".into(),
            initial_model: model(0),
            initial_momentum: model(1000),
            created_unix_ms: T0,
        };
        store.create_run(&run, Digest::of(b"{}"), &signer).unwrap();
        Self { store, signer }
    }

    /// Makes the records among `actions` durable in one transaction, as the
    /// driver does for one input (a reveal's bytes are made up: the store
    /// keeps them by digest). Returns the actions.
    fn record(&mut self, actions: Vec<Action>) -> Vec<Action> {
        let events: Vec<Event> = actions
            .iter()
            .filter_map(|action| match action {
                Action::Record(event) => Some(event.clone()),
                _ => None,
            })
            .collect();
        let payloads: Vec<(Digest, &[u8])> = events
            .iter()
            .filter_map(|event| match event {
                Event::Reveal { payload, .. } => Some((*payload, &b"an update"[..])),
                _ => None,
            })
            .collect();
        self.store.record(T0, &events, &payloads, &self.signer).expect("the store takes every record");
        actions
    }

    /// A machine restored from what is durable, at `now`.
    fn restore(&self, settings: Settings, now: u64) -> Coordinator {
        let events = self.store.events().unwrap();
        Coordinator::restore(settings, Digest::of(b"run"), model(0), MASTER, &events, now)
    }
}

/// A machine with `count` registered workers, each record durable in a
/// real store, and the workers.
fn durable_running(count: u8, settings: &Settings) -> (Coordinator, Durable, Vec<WorkerId>) {
    let mut machine = Coordinator::new(settings.clone(), Digest::of(b"run"), model(0), MASTER);
    let mut durable = Durable::new();
    let workers = (0..count).map(|index| machine.register(T0, key(index), "avx2-fma").unwrap().0).collect();
    durable.record(drain(&mut machine));
    (machine, durable, workers)
}

type Step = Box<dyn Fn(&mut Coordinator, &[WorkerId])>;

/// Runs `steps` on a live machine with 3 workers and, after every step, on a
/// machine restored (at `restored_at`) from what the live one persisted so
/// far: both must then hold the same live rounds, show every worker the
/// same, and emit the same actions for the same remaining inputs. The only
/// thing a restored machine does at once is ask again for the replays the
/// live one asked the driver for and has no verdict on ([`Action::JudgeAudit`]),
/// then for an aggregate the live one was waiting for.
fn restored_machines_behave_like_the_live_one(settings: &Settings, steps: &[Step], restored_at: u64) {
    restored_machines_of_workers_behave_like_the_live_one(3, settings, steps, restored_at);
}

/// [`restored_machines_behave_like_the_live_one`] with `count` workers.
fn restored_machines_of_workers_behave_like_the_live_one(
    count: u8,
    settings: &Settings,
    steps: &[Step],
    restored_at: u64,
) {
    for crash_after in 0..steps.len() {
        let (mut live, mut durable, workers) = durable_running(count, settings);
        let mut awaited = None;
        let mut replaying = BTreeMap::new();
        for step in &steps[..crash_after] {
            step(&mut live, &workers);
            let actions = durable.record(drain(&mut live));
            for action in &actions {
                match action {
                    Action::JudgeAudit { round, worker, .. } => {
                        replaying.insert((*round, *worker), action.clone());
                    }
                    Action::Record(Event::Audit { round, worker, .. }) => {
                        replaying.remove(&(*round, *worker));
                    }
                    Action::Close { .. } => awaited = Some(action.clone()),
                    // The close became a challenge of copies: no aggregate
                    // is awaited until the round closes again.
                    Action::Record(Event::AuditDraw { round, .. }) if matches!(&awaited, Some(Action::Close { round: closing, .. }) if closing == round) => {
                        awaited = None
                    }
                    Action::Record(Event::RoundClosed { .. } | Event::RoundFailed { .. }) => awaited = None,
                    _ => {}
                }
            }
        }
        let mut restored = durable.restore(settings.clone(), restored_at);
        let undone: Vec<Action> = replaying.into_values().chain(awaited).collect();
        assert_eq!(drain(&mut restored), undone, "after {crash_after} steps nothing else was left undone");
        // The early end of a commit phase is not recorded: a restored
        // round sets it again, from its own clock. Nor is the end of the
        // reveal phase of a round opened ahead: a restored one gets its
        // window again, and its next timeout ends it.
        let without_early_end = |round: Option<&OpenRound>| {
            round.cloned().map(|round| OpenRound { early_close_ms: None, reveal_over: false, ..round })
        };
        assert_eq!(
            without_early_end(restored.open_round()),
            without_early_end(live.open_round()),
            "after {crash_after} steps"
        );
        let ahead = |machine: &Coordinator| -> Vec<Option<OpenRound>> {
            machine.ahead_rounds().map(|round| without_early_end(Some(round))).collect()
        };
        assert_eq!(ahead(&restored), ahead(&live), "after {crash_after} steps");
        for &worker in &workers {
            assert_eq!(restored.view(Some(worker)), live.view(Some(worker)));
        }
        for step in &steps[crash_after..] {
            step(&mut live, &workers);
            step(&mut restored, &workers);
            assert_eq!(drain(&mut restored), drain(&mut live), "after a crash after step {crash_after}");
        }
    }
}

/// The steps in which three workers commit to round 0, one after the
/// other (the last ends its commit phase).
fn round_0_commitments() -> Vec<Step> {
    (0..3)
        .map(|index: usize| -> Step {
            Box::new(move |m, w| {
                let _ = commit(m, T0 + 10 + index as u64, w[index], 0);
            })
        })
        .collect()
}

#[test]
fn a_restored_machine_behaves_exactly_like_the_one_that_died() {
    let settings = Settings { min_workers: 3, audit_probability: 0.6, ..settings() };
    let mut steps = round_0_commitments();
    steps.extend::<Vec<Step>>(vec![
        Box::new(|m, w| {
            let _ = reveal(m, T0 + 20, w[0], 0);
        }),
        Box::new(|m, w| {
            if m.pending_audit(w[0], 0).is_some() {
                m.audit_result(T0 + 21, 0, w[0], Verdict::Passed, None, Some((w[0], (T0 + 21) * 1000 + 5)))
                    .unwrap();
            }
        }),
        Box::new(|m, w| {
            let _ = reveal(m, T0 + 22, w[1], 0);
        }),
        Box::new(|m, w| {
            let _ = reveal(m, T0 + 23, w[2], 0);
        }),
        Box::new(|m, _| m.handle_timeout(T0 + 12 + 5_000)),
    ]);
    restored_machines_behave_like_the_live_one(&settings, &steps, T0 + 12);
}

/// Round 0 delivered by three workers, its close turned into a challenge
/// of w0 (a copier that committed first) and w2 (its victim), as the
/// driver's checks report two copies no replay has told apart.
fn challenged_round() -> Vec<Step> {
    let mut steps = round_0_commitments();
    for index in 0..3 {
        steps.push(Box::new(move |m, w| {
            let _ = reveal(m, T0 + 20 + index as u64, w[index], 0);
        }));
    }
    steps.push(Box::new(|m, w| m.handle_contested(T0 + 30, 0, &[w[2], w[0]])));
    steps
}

#[test]
fn copies_no_replay_told_apart_are_challenged_and_only_the_copy_is_refused_and_slashed() {
    let (mut machine, workers) = running(3, settings());
    let actions = deliver(&mut machine, T0 + 10, &workers, 0);
    assert!(matches!(actions.last(), Some(Action::Close { accepted, .. }) if accepted == &workers));
    // The checks found w0 (committed first) and w2 to be copies.
    machine.handle_contested(T0 + 20, 0, &[workers[2], workers[0]]);
    let actions = drain(&mut machine);
    let [Action::Record(Event::AuditDraw { round: 0, audits, auditors, reveal_deadline_unix_ms, .. })] =
        &actions[..]
    else {
        panic!("a challenge draws audits and nothing else: {actions:?}");
    };
    assert_eq!(audits.iter().map(|(worker, _)| *worker).collect::<Vec<_>>(), [workers[0], workers[2]]);
    assert!(audits.iter().all(|&(_, segment)| (1..=4).contains(&segment)));
    assert!(auditors.is_empty(), "a challenge is never delegated");
    assert_eq!(*reveal_deadline_unix_ms, T0 + 20 + 5_000, "a new reveal deadline from the challenge");
    assert_eq!(machine.pending_audit(workers[2], 0).map(|(segment, _)| segment), Some(audits[1].1));
    assert_eq!(machine.view(Some(workers[2])).audit, Some(audits[1].1), "the view asks for the answer");
    // The victim's replay passes; the copier's fails (it is not its own
    // assignment's training).
    machine.audit_result(T0 + 30, 0, workers[2], Verdict::Passed, None, None).unwrap();
    assert!(
        drain(&mut machine).iter().all(|action| !matches!(action, Action::Close { .. })),
        "w0 is awaited"
    );
    machine
        .audit_result(T0 + 31, 0, workers[0], Verdict::Failed("the replay ends elsewhere".into()), None, None)
        .unwrap();
    let actions = drain(&mut machine);
    assert!(actions.iter().any(
        |action| matches!(action, Action::Record(Event::Slash { worker, .. }) if *worker == workers[0])
    ));
    let Some(Action::Close { accepted, .. }) = actions.last() else { panic!("closes again: {actions:?}") };
    assert_eq!(accepted, &workers[1..], "the copy is out, its victim in");
    machine.handle_aggregated(T0 + 32, 0, Aggregated::all(result(1)));
    let credited: Vec<WorkerId> = drain(&mut machine)
        .iter()
        .filter_map(|action| match action {
            Action::Record(Event::WorkAccepted { worker, units, .. }) => {
                assert_eq!(*units, 64, "its full verified work");
                Some(*worker)
            }
            _ => None,
        })
        .collect();
    assert_eq!(credited, workers[1..], "the victim is paid, the copier not");
    assert_eq!(machine.completed_rounds(), 1);

    // A challenge left unanswered fails at the deadline, as any audit;
    // the answered one passes and is paid.
    deliver(&mut machine, T0 + 100, &workers, 1);
    machine.handle_contested(T0 + 110, 1, &[workers[0], workers[1]]);
    drain(&mut machine);
    machine.audit_result(T0 + 120, 1, workers[1], Verdict::Passed, None, None).unwrap();
    machine.handle_timeout(T0 + 110 + 5_000);
    let actions = drain(&mut machine);
    assert!(actions.iter().any(
        |action| matches!(action, Action::Record(Event::Slash { worker, .. }) if *worker == workers[0])
    ));
    assert!(matches!(actions.last(), Some(Action::Close { accepted, .. }) if accepted == &workers[1..]));
}

#[test]
fn a_coordinator_that_crashes_anywhere_in_a_challenge_resumes_exactly() {
    let settings = Settings { min_workers: 3, ..settings() };
    let mut steps = challenged_round();
    steps.extend::<Vec<Step>>(vec![
        Box::new(|m, w| {
            m.audit_result(T0 + 40, 0, w[2], Verdict::Passed, None, Some((w[2], (T0 + 40) * 1000 + 5)))
                .unwrap()
        }),
        Box::new(|m, w| {
            let failed = Verdict::Failed("the replay ends elsewhere".into());
            m.audit_result(T0 + 41, 0, w[0], failed, None, Some((w[0], (T0 + 41) * 1000 + 5))).unwrap();
        }),
        Box::new(|m, _| m.handle_aggregated(T0 + 42, 0, Aggregated::all(result(1)))),
    ]);
    restored_machines_behave_like_the_live_one(&settings, &steps, T0 + 12);
    // And when the copier never answers: its challenge fails at the deadline.
    let mut steps = challenged_round();
    steps.extend::<Vec<Step>>(vec![
        Box::new(|m, w| {
            m.audit_result(T0 + 40, 0, w[2], Verdict::Passed, None, Some((w[2], (T0 + 40) * 1000 + 5)))
                .unwrap()
        }),
        Box::new(|m, _| m.handle_timeout(T0 + 30 + 5_000)),
        Box::new(|m, _| m.handle_aggregated(T0 + 30 + 5_001, 0, Aggregated::all(result(1)))),
    ]);
    restored_machines_behave_like_the_live_one(&settings, &steps, T0 + 12);
}

#[test]
fn a_challenge_restored_at_any_step_leaves_its_absentee_sitting_out_as_without_the_crash() {
    // Goal: a restart mid-challenge forgets nothing. The challenge itself
    // is recorded (its second draw); what is not is `challenged`, which
    // keeps a process from marking the round's absentees twice (once at
    // the close that became the challenge, once at the close after it).
    // A restored process has marked nobody (sitting out is not recorded:
    // a restart starts everyone afresh), so it marks them once, at its
    // own close: w3, which never committed to round 0, sits round 1 out
    // whether the coordinator crashed before, during or after the
    // challenge, and w0, the copy, is slashed and w2 paid either way.
    let settings = Settings { min_workers: 4, ..settings() };
    let mut steps: Vec<Step> = (0..3)
        .map(|index: usize| -> Step {
            Box::new(move |m, w| {
                let _ = commit(m, T0 + 10 + index as u64, w[index], 0);
            })
        })
        .collect();
    steps.push(Box::new(|m, _| m.handle_timeout(T0 + 10_000)));
    for index in 0..3 {
        steps.push(Box::new(move |m, w| {
            let _ = reveal(m, T0 + 10_001 + index as u64, w[index], 0);
        }));
    }
    steps.extend::<Vec<Step>>(vec![
        Box::new(|m, w| m.handle_contested(T0 + 10_010, 0, &[w[2], w[0]])),
        Box::new(|m, w| {
            m.audit_result(
                T0 + 10_020,
                0,
                w[2],
                Verdict::Passed,
                None,
                Some((w[2], (T0 + 10_020) * 1000 + 5)),
            )
            .unwrap()
        }),
        Box::new(|m, w| {
            let failed = Verdict::Failed("the replay ends elsewhere".into());
            m.audit_result(T0 + 10_021, 0, w[0], failed, None, Some((w[0], (T0 + 10_021) * 1000 + 5)))
                .unwrap();
        }),
        Box::new(|m, w| {
            m.handle_aggregated(T0 + 10_022, 0, Aggregated::all(result(1)));
            assert_eq!(
                m.open_round().map(|open| (open.id, open.participants.clone())),
                Some((1, w[..3].to_vec())),
                "w3 sits round 1 out"
            );
        }),
    ]);
    restored_machines_of_workers_behave_like_the_live_one(4, &settings, &steps, T0 + 12);
}

/// Settings under which, of three workers delegating audits, `copier` is
/// drawn for audit (and so has an auditor, `auditor`) and `original` is
/// not: the copy of a colluding pair and the honest update it copies.
/// One round, so no bet on audits runs alongside.
fn collusion() -> (Settings, usize, usize, usize) {
    [0.3, 0.4, 0.5, 0.6, 0.7]
        .into_iter()
        .find_map(|audit_probability| {
            let settings = Settings {
                rounds: 1,
                min_workers: 3,
                audit_probability,
                delegate_audits: true,
                ..settings()
            };
            let (mut machine, workers) = running(3, settings.clone());
            for &worker in &workers {
                commit(&mut machine, T0 + 10, worker, 0).unwrap();
            }
            let open = machine.open_round().unwrap();
            let index = |wanted: WorkerId| workers.iter().position(|&worker| worker == wanted).unwrap();
            let copier = workers.iter().copied().find(|worker| open.standings[worker].auditor.is_some())?;
            let original = workers.iter().copied().find(|worker| open.standings[worker].audit.is_none())?;
            let auditor = open.standings[&copier].auditor.unwrap();
            Some((settings, index(copier), index(original), index(auditor)))
        })
        .expect("one of the probabilities draws one worker and not another")
}

/// Round 0 of [`collusion`]: every drawn worker answers and its auditor
/// agrees (the copier's auditor colludes), every worker reveals, and the
/// driver's checks find the copier's update a near copy of the original's.
/// The copier holds a delegated pass only, which proves nothing, so the
/// pair is contested.
fn colluded_round(copier: usize, original: usize) -> Vec<Step> {
    let mut steps = round_0_commitments();
    for index in 0..3 {
        steps.push(Box::new(move |m, w| {
            let now = T0 + 20 + index as u64;
            if m.pending_audit(w[index], 0).is_some() {
                let auditor =
                    m.audit_answered(now, w[index], now * 1000 + 2, 0, Digest::of(&[index as u8])).unwrap();
                let auditor = auditor.expect("every audit of this class is delegated");
                m.audit_reported(now, 0, auditor, now * 1000 + 3, w[index], ReportCheck::Agrees).unwrap();
            }
        }));
    }
    for index in 0..3 {
        steps.push(Box::new(move |m, w| {
            let _ = reveal(m, T0 + 30 + index as u64, w[index], 0);
        }));
    }
    steps.push(Box::new(move |m, w| m.handle_contested(T0 + 40, 0, &[w[original], w[copier]])));
    steps
}

#[test]
fn a_copy_vouched_for_by_a_colluding_delegated_auditor_is_replayed_by_the_coordinator_and_refused() {
    let (settings, copier, original, auditor) = collusion();
    let (mut machine, workers) = running(3, settings);
    let steps = colluded_round(copier, original);
    let (contest, before) = steps.split_last().unwrap();
    for step in before {
        step(&mut machine, &workers);
    }
    let actions = drain(&mut machine);
    assert!(
        matches!(actions.last(), Some(Action::Close { accepted, .. }) if accepted == &workers),
        "{actions:?}"
    );
    let open = machine.open_round().unwrap();
    let vouched = &open.standings[&workers[copier]];
    assert_eq!(vouched.verdict, Some(Verdict::Passed));
    assert_eq!(vouched.judged_by, Some(workers[auditor]), "the pass is the auditor's");
    // The driver counts only the coordinator's own passes as proof: the
    // copy is not proven, so neither is, and order cannot decide.
    assert!(!vouched.passed_by_coordinator(), "a delegated pass proves nothing about copies");
    assert!(!open.standings[&workers[original]].passed_by_coordinator());
    let segment = vouched.audit.unwrap();

    contest(&mut machine, &workers);
    let actions = drain(&mut machine);
    let [
        Action::Record(Event::AuditDraw { round: 0, audits, auditors, .. }),
        Action::JudgeAudit { round: 0, worker: replayed, segment: replayed_segment },
    ] = &actions[..]
    else {
        panic!("both are challenged, and the answered copy replayed by the coordinator: {actions:?}");
    };
    let challenged: Vec<WorkerId> = audits.iter().map(|(worker, _)| *worker).collect();
    let mut expected = vec![workers[copier], workers[original]];
    expected.sort();
    assert_eq!(challenged, expected, "the delegated pass is audited again");
    assert!(audits.contains(&(workers[copier], segment)), "on the segment its answer is for");
    assert!(auditors.is_empty(), "a challenge is never delegated");
    assert_eq!((*replayed, *replayed_segment), (workers[copier], segment));
    let open = machine.open_round().unwrap();
    assert_eq!(open.standings[&workers[copier]].verdict, None, "the auditor's pass is set aside");
    assert!(
        machine.delegated_audit(workers[auditor], 0, workers[copier]).is_none(),
        "the colluding auditor cannot report again"
    );
    assert_eq!(machine.answered_audit(0, workers[copier]).map(|(segment, _)| segment), Some(segment));

    // The original answers its challenge and the coordinator's replay
    // passes it; the copy's stored answer fails the coordinator's replay.
    let now = T0 + 50;
    assert_eq!(
        machine.audit_answered(now, workers[original], now * 1000, 0, Digest::of(b"original")),
        Ok(None)
    );
    machine.audit_result(now, 0, workers[original], Verdict::Passed, None, None).unwrap();
    assert!(machine.open_round().unwrap().standings[&workers[original]].passed_by_coordinator());
    assert!(
        !drain(&mut machine).iter().any(|action| matches!(action, Action::Close { .. })),
        "the copy's replay is awaited"
    );
    let failed = Verdict::Failed("the replay ends elsewhere".into());
    machine.audit_result(now + 1, 0, workers[copier], failed, None, None).unwrap();
    let actions = drain(&mut machine);
    assert!(
        actions.iter().any(
            |action| matches!(action, Action::Record(Event::AuditorSlashed { auditor: by, audited, .. })
            if *by == workers[auditor] && *audited == workers[copier])
        ),
        "the refuted report costs the colluding auditor its stake: {actions:?}"
    );
    assert!(actions.iter().any(
        |action| matches!(action, Action::Record(Event::Slash { worker, .. }) if *worker == workers[copier])
    ));
    let Some(Action::Close { accepted, .. }) = actions.last() else { panic!("closes again: {actions:?}") };
    assert!(accepted.contains(&workers[original]), "the original stands");
    assert!(!accepted.contains(&workers[copier]), "the copy is refused");
    machine.handle_aggregated(now + 2, 0, Aggregated::all(result(1)));
    assert_eq!(machine.completed_rounds(), 1);
}

#[test]
fn a_coordinator_that_crashes_anywhere_in_a_re_audit_of_a_delegated_pass_resumes_exactly() {
    let (settings, copier, original, _) = collusion();
    let mut steps = colluded_round(copier, original);
    steps.extend::<Vec<Step>>(vec![
        Box::new(move |m, w| {
            let now = T0 + 50;
            m.audit_answered(now, w[original], now * 1000, 0, Digest::of(b"original")).unwrap();
            m.audit_result(now, 0, w[original], Verdict::Passed, None, None).unwrap();
        }),
        Box::new(move |m, w| {
            let failed = Verdict::Failed("the replay ends elsewhere".into());
            m.audit_result(T0 + 51, 0, w[copier], failed, None, None).unwrap();
        }),
        Box::new(|m, _| m.handle_aggregated(T0 + 52, 0, Aggregated::all(result(1)))),
    ]);
    restored_machines_behave_like_the_live_one(&settings, &steps, T0 + 12);
}

/// Settings of a run with one-step-delayed outer updates.
fn delayed() -> Settings {
    Settings { outer_delay: 1, rounds: 4, ..settings() }
}

/// A commitment for `round`, trained from `base` (the round opened ahead
/// trains from another model than the open one).
fn commit_on(
    machine: &mut Coordinator,
    now: u64,
    worker: WorkerId,
    round: u64,
    base: Digest,
) -> Result<Outcome, ErrorCode> {
    machine
        .commit(now, worker, now * 1000, round, base, None, commitment(worker, round))
        .map_err(|refusal| refusal.code)
}

/// The verdict on `worker`'s audit in `round` at `now`, if it was drawn.
fn judge(m: &mut Coordinator, now: u64, round: u64, worker: WorkerId, verdict: Verdict) {
    if m.pending_audit(worker, round).is_some() || m.answered_audit(round, worker).is_some() {
        m.audit_result(now, round, worker, verdict, None, Some((worker, now * 1000 + 5))).unwrap();
    }
}

/// The steps in which round 1 is revealed by all three workers, judged, and
/// fails: the driver's checks refuse two of its updates.
fn round_1_revealed_and_refused() -> Vec<Step> {
    vec![
        Box::new(|m, w| {
            for (index, &worker) in w.iter().enumerate() {
                let _ = reveal(m, T0 + 27 + index as u64, worker, 1);
            }
        }),
        Box::new(|m, w| {
            for &worker in w {
                judge(m, T0 + 30, 1, worker, Verdict::Passed);
            }
        }),
        Box::new(|m, w| {
            let refused = vec![(w[0], "not finite".to_owned()), (w[1], "not finite".to_owned())];
            m.handle_aggregated(T0 + 31, 1, Aggregated { refused, ..Aggregated::all(result(2)) });
        }),
    ]
}

#[test]
fn under_a_delayed_outer_update_a_restored_machine_rebuilds_both_live_rounds() {
    let settings = Settings { min_workers: 3, audit_probability: 0.6, ..delayed() };
    // Round 1 opened with round 0 (its base, the first model, exists): a
    // worker commits it before round 0, then round 0's commitments come
    // in, with two rounds taking commitments between every two of them.
    let mut steps: Vec<Step> = vec![Box::new(|m, w| {
        let _ = commit_on(m, T0 + 5, w[2], 1, model(0));
    })];
    steps.extend(round_0_commitments());
    steps.extend::<Vec<Step>>(vec![
        Box::new(|m, w| {
            let _ = commit_on(m, T0 + 13, w[0], 1, model(0));
        }),
        Box::new(|m, w| {
            let _ = reveal(m, T0 + 20, w[0], 0);
        }),
        Box::new(|m, w| judge(m, T0 + 21, 0, w[0], Verdict::Passed)),
        Box::new(|m, w| {
            let _ = commit_on(m, T0 + 21, w[1], 1, model(0));
        }),
        Box::new(|m, w| {
            let _ = reveal(m, T0 + 22, w[1], 0);
        }),
        Box::new(|m, w| {
            let _ = reveal(m, T0 + 23, w[2], 0);
        }),
        Box::new(|m, w| judge(m, T0 + 24, 0, w[1], Verdict::Failed("diverged".into()))),
        Box::new(|m, w| judge(m, T0 + 24, 0, w[2], Verdict::Passed)),
        // Round 0 closes (whatever was drawn is judged by now): round 1,
        // fully committed, is the open round and reveals at once, and
        // round 2 opens ahead on round 0's model.
        Box::new(|m, _| m.handle_aggregated(T0 + 25, 0, Aggregated::all(result(1)))),
        Box::new(|m, w| {
            let _ = commit_on(m, T0 + 26, w[0], 2, model(1));
        }),
        // Round 1 is revealed (and judged), and fails while round 2 is
        // ahead: the driver's checks refuse two of its updates. Round 2 is
        // the open round and round 3 opens ahead, on the same model.
    ]);
    steps.extend(round_1_revealed_and_refused());
    steps.extend::<Vec<Step>>(vec![
        Box::new(|m, w| {
            let _ = commit_on(m, T0 + 5_030, w[1], 3, model(1));
        }),
        Box::new(|m, w| {
            let _ = commit_on(m, T0 + 5_031, w[2], 2, model(1));
        }),
        // Round 2's deadline (two windows: it opened ahead of round 1):
        // its quorum is in, it reveals.
        Box::new(|m, _| m.handle_timeout(T0 + 25 + 2 * 10_000)),
    ]);
    restored_machines_behave_like_the_live_one(&settings, &steps, T0 + 12);
}

/// The steps of a run under a delayed outer update in which the rounds
/// opened ahead (`ahead`: 1 or 2 of them, all on the first model) are
/// committed to in full before round 0, so that each ends its commit
/// phase, is revealed and judged while round 0 is still committing or
/// revealing, and reaches its reveal deadline (worker 0's audit, drawn in
/// each, unanswered) before round 0 closes; then round 0 closes, and
/// round 1, settled, is asked to close in the same input.
fn rounds_ahead_settled_before_the_open_one(ahead: u64) -> Vec<Step> {
    let mut steps: Vec<Step> = Vec::new();
    for round in (1..=ahead).rev() {
        steps.push(Box::new(move |m, w| {
            for (index, &worker) in w.iter().enumerate() {
                let _ = commit_on(m, T0 + 5 + index as u64, worker, round, model(0));
            }
        }));
    }
    steps.extend(round_0_commitments());
    for round in (1..=ahead).rev() {
        steps.push(Box::new(move |m, w| {
            for &worker in w {
                let _ = reveal_on(m, T0 + 13, worker, round, model(0));
            }
        }));
        steps.push(Box::new(move |m, w| {
            for &worker in &w[1..] {
                judge(m, T0 + 14, round, worker, Verdict::Passed);
            }
        }));
    }
    steps.extend::<Vec<Step>>(vec![
        Box::new(|m, w| {
            for &worker in &w[..2] {
                let _ = reveal(m, T0 + 20, worker, 0);
            }
        }),
        // The reveal deadline of the rounds ahead (they began at T0 + 7):
        // worker 0's audits are unanswered; round 0 is still revealing.
        Box::new(|m, _| m.handle_timeout(T0 + 7 + 5_000)),
        Box::new(|m, w| {
            let _ = reveal(m, T0 + 7 + 5_001, w[2], 0);
            for &worker in w {
                judge(m, T0 + 7 + 5_001, 0, worker, Verdict::Passed);
            }
        }),
        Box::new(|m, _| m.handle_aggregated(T0 + 7 + 5_002, 0, Aggregated::all(result(1)))),
    ]);
    steps
}

/// Aggregates the open round, which asked to close, into model
/// `round + 1`.
fn aggregate_open(m: &mut Coordinator, now: u64) {
    let round = m.open_round().expect("a round closing").id;
    m.handle_aggregated(now, round, Aggregated::all(result(round + 1)));
}

#[test]
fn under_any_delay_a_restored_machine_rebuilds_rounds_ahead_in_their_reveal_phases() {
    for ahead in [1, 2, 4] {
        let settings = Settings {
            min_workers: 3,
            audit_probability: 0.6,
            outer_delay: ahead as u32,
            rounds: ahead + 3,
            ..settings()
        };
        let mut steps = rounds_ahead_settled_before_the_open_one(ahead);
        // The rounds ahead close, one per input; then the round opened on
        // round 0's model is committed to.
        for index in 0..ahead {
            steps.push(Box::new(move |m, _| aggregate_open(m, T0 + 7 + 5_003 + index)));
        }
        // (After the last of those closes: the clock never goes back.)
        steps.push(Box::new(move |m, w| {
            for &worker in w {
                let _ = commit_on(m, T0 + 7 + 5_003 + ahead, worker, ahead + 1, model(1));
            }
        }));
        restored_machines_behave_like_the_live_one(&settings, &steps, T0 + 5);
    }
}

#[test]
fn rounds_ahead_settled_before_the_open_one_close_in_order_as_soon_as_they_may() {
    for ahead in [1, 2, 3, 4] {
        // Every submission audited, so that worker 0's audit is drawn in
        // every round ahead (at 0.6 the draws of rounds 3 and 4 pass it by).
        let settings = Settings {
            min_workers: 3,
            audit_probability: 1.0,
            outer_delay: ahead as u32,
            rounds: ahead + 3,
            ..settings()
        };
        let (mut machine, workers) = running(3, settings);
        let (mut closes, mut ended, mut ahead_draws, mut ahead_unanswered) = (Vec::new(), Vec::new(), 0, 0);
        let mut steps = rounds_ahead_settled_before_the_open_one(ahead);
        for index in 0..ahead {
            steps.push(Box::new(move |m, _| aggregate_open(m, T0 + 7 + 5_003 + index)));
        }
        for step in steps {
            step(&mut machine, &workers);
            let (closes_before, ended_before) = (closes.len(), ended.len());
            while let Some(action) = machine.poll_action() {
                let ahead_of_open = |round| machine.open_round().is_some_and(|open| open.id < round);
                match action {
                    Action::Record(Event::AuditDraw { round, .. }) if ahead_of_open(round) => {
                        ahead_draws += 1
                    }
                    Action::Record(Event::Audit { round, verdict: Verdict::Unanswered, .. })
                        if ahead_of_open(round) =>
                    {
                        ahead_unanswered += 1
                    }
                    Action::Close { round, .. } => closes.push(round),
                    Action::Record(Event::RoundClosed { round, .. }) => ended.push(round),
                    Action::Record(Event::RoundFailed { round, .. }) => panic!("round {round} failed"),
                    _ => {}
                }
            }
            // Each round ahead, settled, is asked to close in the input
            // that closed the round before it.
            for &round in &ended[ended_before..] {
                if round < ahead {
                    assert!(
                        closes[closes_before..].contains(&(round + 1)),
                        "delay {ahead}: round {round} closed"
                    );
                }
            }
        }
        assert_eq!(ahead_draws, ahead, "delay {ahead}: each round ahead drew before round 0 closed");
        assert_eq!(ahead_unanswered, ahead, "delay {ahead}: judged at each round's own deadline");
        let expected: Vec<u64> = (0..=ahead).collect();
        assert_eq!((&closes, &ended), (&expected, &expected), "delay {ahead}");
    }
}

/// Commits every worker of `workers` to round `round` on `base`; returns
/// the actions.
fn commit_all(
    machine: &mut Coordinator,
    now: u64,
    workers: &[WorkerId],
    round: u64,
    base: Digest,
) -> Vec<Action> {
    for &worker in workers {
        assert_eq!(commit_on(machine, now, worker, round, base), Ok(Outcome::Recorded(Recorded::Accepted)));
    }
    drain(machine)
}

fn opened(actions: &[Action]) -> Vec<(u64, Digest)> {
    actions
        .iter()
        .filter_map(|action| match action {
            Action::Record(Event::RoundOpened { round, base_model, .. }) => Some((*round, *base_model)),
            _ => None,
        })
        .collect()
}

#[test]
fn under_a_delayed_outer_update_the_next_round_opens_with_its_base_and_two_rounds_take_commitments() {
    let (mut machine, workers) = running(3, Settings { audit_probability: 1.0, ..delayed() });
    // Round 1 trains from the model round 0 trains from (no round has
    // closed yet): it opens with round 0.
    assert_eq!(machine.open_round().map(|open| open.id), Some(0));
    assert_eq!(
        machine.ahead_round().map(|ahead| (ahead.id, ahead.base_model, &ahead.participants)),
        Some((1, model(0), &workers))
    );
    // A worker sees round 0 to commit and round 1 to train next.
    let view = machine.view(Some(workers[1]));
    assert_eq!((view.phase, view.round), (Phase::Committing, Some(0)));
    let ahead = view.ahead.expect("round 1 is shown to train");
    let assignment = ahead.assignment.expect("participants are assigned at once");
    assert_eq!(
        (ahead.phase, assignment.round, assignment.base_model, assignment.slot),
        (Phase::Committing, 1, model(0), 1)
    );

    // Both rounds take commitments, in any order: worker 0 commits round 1
    // before round 0 (audits drawn with them).
    assert_eq!(
        commit_on(&mut machine, T0 + 1, workers[0], 1, model(0)),
        Ok(Outcome::Recorded(Recorded::Accepted))
    );
    commit_all(&mut machine, T0 + 2, &workers[..2], 0, model(0));
    assert_eq!(machine.phase(), Phase::Committing, "round 0 waits for its third participant");
    assert_eq!(
        commit_on(&mut machine, T0 + 2, workers[1], 1, model(0)),
        Ok(Outcome::Recorded(Recorded::Accepted))
    );
    assert!(machine.view(Some(workers[0])).ahead.unwrap().committed);
    assert_eq!(
        commit_on(&mut machine, T0 + 2, workers[0], 1, model(0)),
        Ok(Outcome::AlreadyRecorded(Recorded::Accepted))
    );
    // Committed to both: it may reveal both at once (early reveals, in
    // each round's commit phase).
    for round in [0, 1] {
        let early = machine.reveal(
            T0 + 3,
            workers[0],
            (T0 + 3) * 1000,
            round,
            model(0),
            payload(workers[0], round),
            None,
        );
        assert_eq!(early, Ok(Outcome::Recorded(Recorded::Accepted)), "round {round}");
    }
    assert_eq!(machine.phase(), Phase::Committing, "round 0 still waits for its third participant");
    assert_eq!(commit_on(&mut machine, T0 + 3, workers[2], 1, model(1)), Err(ErrorCode::StaleModel));

    // The last commitment to round 0 ends its commit phase: nothing opens
    // (round 2 trains from round 0's result) and nothing is bet.
    let actions = commit_all(&mut machine, T0 + 3, &workers[2..], 0, model(0));
    assert!(opened(&actions).is_empty(), "{actions:?}");
    assert!(
        !actions
            .iter()
            .any(|action| matches!(action, Action::Speculate { .. } | Action::OpenProvisional { .. }))
    );
    assert_eq!(machine.phase(), Phase::Revealing);

    // Round 0's audits: one fails. Round 1 stands (its base is final), and
    // round 0 closes without the failed update.
    for &worker in &workers {
        reveal(&mut machine, T0 + 4, worker, 0).unwrap();
    }
    machine.audit_result(T0 + 5, 0, workers[0], Verdict::Passed, None, None).unwrap();
    machine.audit_result(T0 + 5, 0, workers[1], Verdict::Failed("diverged".into()), None, None).unwrap();
    machine.audit_result(T0 + 5, 0, workers[2], Verdict::Passed, None, None).unwrap();
    let actions = drain(&mut machine);
    assert!(!actions.iter().any(|action| matches!(action, Action::Withdraw { .. })), "{actions:?}");
    let Some(Action::Close { round: 0, base_model, accepted }) = actions.last() else {
        panic!("{actions:?}")
    };
    assert_eq!((*base_model, accepted), (model(0), &vec![workers[0], workers[2]]));
    assert_eq!(machine.ahead_round().map(|ahead| ahead.id), Some(1), "round 1 is still live");

    // Round 0 closes: round 1 is the open round, still committing (its
    // third participant has not committed yet), and round 2 opens at once
    // on round 0's model: two rounds take commitments again.
    machine.handle_aggregated(T0 + 6, 0, Aggregated::all(result(1)));
    let actions = drain(&mut machine);
    assert_eq!(opened(&actions), vec![(2, model(1))]);
    assert_eq!(machine.open_round().map(|open| (open.id, open.base_model)), Some((1, model(0))));
    assert_eq!(machine.phase(), Phase::Committing);
    assert!(matches!(machine.view(Some(workers[2])).ahead.as_deref(), Some(view) if view.round == Some(2)));
    assert_eq!(
        commit_on(&mut machine, T0 + 7, workers[2], 2, model(1)),
        Ok(Outcome::Recorded(Recorded::Accepted))
    );
    let actions = commit_all(&mut machine, T0 + 7, &workers[2..], 1, model(0));
    assert!(opened(&actions).is_empty(), "{actions:?}");
    assert!(matches!(actions.last(), Some(Action::Record(Event::AuditDraw { round: 1, .. }))), "{actions:?}");
}

/// A reveal of `round` trained from `base` at `now`.
fn reveal_on(
    machine: &mut Coordinator,
    now: u64,
    worker: WorkerId,
    round: u64,
    base: Digest,
) -> Result<Outcome, ErrorCode> {
    machine
        .reveal(now, worker, now * 1000 + 1, round, base, payload(worker, round), None)
        .map_err(|refusal| refusal.code)
}

fn closes(actions: &[Action]) -> Vec<u64> {
    actions
        .iter()
        .filter_map(|action| match action {
            Action::Close { round, .. } => Some(*round),
            _ => None,
        })
        .collect()
}

#[test]
fn under_a_delayed_outer_update_a_round_opened_ahead_reveals_and_is_judged_before_the_open_round_closes() {
    let settings = Settings { reveal_ms: 30_000, audit_probability: 1.0, ..delayed() };
    let (mut machine, workers) = running(2, settings);
    commit_all(&mut machine, T0 + 1, &workers, 0, model(0));
    // Round 1 is fully committed before round 0 is revealed: its commit
    // phase ends at once and its draw is published, while round 2 (which
    // trains from round 0's result) does not open.
    let actions = commit_all(&mut machine, T0 + 2, &workers, 1, model(0));
    assert!(matches!(actions.last(), Some(Action::Record(Event::AuditDraw { round: 1, .. }))), "{actions:?}");
    assert!(opened(&actions).is_empty(), "{actions:?}");
    let view = machine.view(Some(workers[0]));
    assert_eq!((view.round, view.phase), (Some(0), Phase::Revealing));
    let ahead = view.ahead.expect("round 1 is shown");
    assert_eq!((ahead.round, ahead.phase, ahead.secret.is_some()), (Some(1), Phase::Revealing, true));
    assert_eq!((ahead.committed, ahead.revealed, ahead.audit.is_some()), (true, false, true));

    // Round 1 is revealed and judged while round 0 still waits for its
    // reveals: nothing closes (round 1 closes after round 0).
    for &worker in &workers {
        assert_eq!(
            reveal_on(&mut machine, T0 + 3, worker, 1, model(0)),
            Ok(Outcome::Recorded(Recorded::Accepted))
        );
        machine.audit_result(T0 + 4, 1, worker, Verdict::Passed, None, None).unwrap();
    }
    let actions = drain(&mut machine);
    assert!(closes(&actions).is_empty(), "{actions:?}");
    assert!(machine.view(Some(workers[1])).ahead.expect("round 1 is shown").revealed);
    assert_eq!(machine.poll_timeout(), Some(T0 + 1 + 30_000), "only round 0's reveal deadline is left");

    // Round 0 is revealed and judged, and closes; round 1, settled, closes
    // as soon as it is the open round, in the same input, and round 2
    // opens on round 0's model.
    for &worker in &workers {
        reveal(&mut machine, T0 + 5, worker, 0).unwrap();
        machine.audit_result(T0 + 6, 0, worker, Verdict::Passed, None, None).unwrap();
    }
    assert_eq!(closes(&drain(&mut machine)), [0]);
    machine.handle_aggregated(T0 + 7, 0, Aggregated::all(result(1)));
    let actions = drain(&mut machine);
    assert_eq!(closes(&actions), [1], "{actions:?}");
    assert_eq!(opened(&actions), [(2, model(1))]);
    let Some(Action::Close { accepted, base_model, .. }) =
        actions.iter().find(|action| matches!(action, Action::Close { .. }))
    else {
        unreachable!()
    };
    assert_eq!((base_model, accepted), (&model(0), &workers));
    machine.handle_aggregated(T0 + 7, 1, Aggregated::all(result(2)));
    let actions = drain(&mut machine);
    assert!(matches!(actions[0], Action::Record(Event::RoundClosed { round: 1, .. })), "{actions:?}");
    assert_eq!(opened(&actions), [(3, model(2))]);
    assert_eq!(machine.completed_rounds(), 2);
}

#[test]
fn under_a_delayed_outer_update_a_round_opened_ahead_ends_its_reveal_phase_at_its_deadline_and_closes_when_promoted()
 {
    let settings = Settings { reveal_ms: 5_000, audit_probability: 1.0, ..delayed() };
    let (mut machine, workers) = running(3, settings);
    commit_all(&mut machine, T0 + 1, &workers, 0, model(0));
    commit_all(&mut machine, T0 + 2, &workers, 1, model(0));
    // Round 1: worker 0 reveals and answers, worker 1 reveals and answers
    // nothing, worker 2 does neither; its reveal deadline passes while
    // round 0 is still open (its own deadline was extended by nothing:
    // round 0 waits for its reveals too).
    for &worker in &workers[..2] {
        reveal_on(&mut machine, T0 + 3, worker, 1, model(0)).unwrap();
    }
    machine.audit_answered(T0 + 3, workers[0], (T0 + 3) * 1000 + 2, 1, Digest::of(b"answer")).unwrap();
    drain(&mut machine);
    assert_eq!(machine.poll_timeout(), Some(T0 + 1 + 5_000), "round 0's reveal deadline comes first");
    // Round 0's reveals are in and its audits pass, but for worker 2's,
    // which it answers: round 0 waits for the verdict.
    for &worker in &workers {
        reveal(&mut machine, T0 + 4, worker, 0).unwrap();
    }
    for &worker in &workers[..2] {
        machine.audit_result(T0 + 4, 0, worker, Verdict::Passed, None, None).unwrap();
    }
    machine.audit_answered(T0 + 4, workers[2], (T0 + 4) * 1000 + 3, 0, Digest::of(b"answer")).unwrap();
    drain(&mut machine);
    // Round 1's deadline: worker 1's audit is unanswered (it fails, and is
    // slashed), worker 0's answer is replayed by the driver, and worker 2
    // missed the reveal. Nothing closes: round 0 is open.
    machine.handle_timeout(T0 + 2 + 5_000);
    let actions = drain(&mut machine);
    assert!(closes(&actions).is_empty(), "{actions:?}");
    assert!(
        actions.iter().any(
            |action| matches!(action, Action::JudgeAudit { round: 1, worker, .. } if *worker == workers[0])
        ),
        "{actions:?}"
    );
    assert!(actions.iter().any(|action| matches!(
        action,
        Action::Record(Event::Audit { round: 1, worker, verdict: Verdict::Unanswered, .. }) if *worker == workers[1]
    )));
    assert!(actions.iter().any(|action| matches!(
        action,
        Action::Record(Event::Slash { round: 1, worker, .. }) if *worker == workers[1]
    )));
    // A reveal after the deadline is late, and never counts.
    assert_eq!(
        reveal_on(&mut machine, T0 + 2 + 5_001, workers[2], 1, model(0)),
        Ok(Outcome::Recorded(Recorded::Late))
    );
    assert_eq!(
        reveal_on(&mut machine, T0 + 2 + 5_002, workers[2], 1, model(0)),
        Ok(Outcome::AlreadyRecorded(Recorded::Late))
    );
    machine.audit_result(T0 + 2 + 5_003, 1, workers[0], Verdict::Passed, None, None).unwrap();
    assert!(closes(&drain(&mut machine)).is_empty(), "round 1 closes after round 0");
    // Round 0 closes on its last verdict; round 1, settled (worker 2's
    // audit went unanswered too), ends as soon as it is the open round,
    // in the same input: with one submission that counts, too few for the
    // quorum, it fails. Round 2, opened on round 0's model when round 0
    // closed, is the open round, and round 3 opens ahead of it on the same
    // model (round 1 failed).
    machine.audit_result(T0 + 2 + 5_004, 0, workers[2], Verdict::Passed, None, None).unwrap();
    assert_eq!(closes(&drain(&mut machine)), [0]);
    machine.handle_aggregated(T0 + 2 + 5_005, 0, Aggregated::all(result(1)));
    let actions = drain(&mut machine);
    assert!(closes(&actions).is_empty(), "{actions:?}");
    assert!(
        actions.iter().any(|action| matches!(action, Action::Record(Event::RoundFailed { round: 1, .. }))),
        "{actions:?}"
    );
    assert_eq!(opened(&actions), [(2, model(1)), (3, model(1))]);
    assert_eq!(machine.open_round().map(|open| (open.id, open.base_model)), Some((2, model(1))));
}

/// Under a delay of one (reveal window 5 s, every commitment audited),
/// rounds 0 and 1 committed by all three workers; round 1 revealed by
/// workers 0 and 1, and worker 0's audit answered: the live machine, what
/// it made durable so far, and the workers.
fn round_1_revealed_by_two_and_answered_by_one() -> (Settings, Coordinator, Durable, Vec<WorkerId>) {
    let settings = Settings { min_workers: 3, reveal_ms: 5_000, audit_probability: 1.0, ..delayed() };
    let (mut live, mut durable, workers) = durable_running(3, &settings);
    durable.record(commit_all(&mut live, T0 + 1, &workers, 0, model(0)));
    durable.record(commit_all(&mut live, T0 + 2, &workers, 1, model(0)));
    for &worker in &workers[..2] {
        reveal_on(&mut live, T0 + 3, worker, 1, model(0)).unwrap();
    }
    live.audit_answered(T0 + 3, workers[0], (T0 + 3) * 1000 + 2, 1, Digest::of(b"answer")).unwrap();
    (settings, live, durable, workers)
}

#[test]
fn a_round_opened_ahead_whose_reveal_phase_ended_before_a_crash_stays_ended_after_the_restore() {
    // Goal: a restart changes nothing that counts. Round 1, opened ahead
    // of round 0, passes its reveal deadline while the coordinator is up
    // (worker 2 has not revealed); the coordinator then dies and is back
    // a second later. A restore used to give round 1 a whole reveal window
    // again, so worker 2's reveal, late without the crash, was accepted
    // after it. Now it is late either way, and only round 0's replay is
    // left to do.
    let (settings, mut live, mut durable, workers) = round_1_revealed_by_two_and_answered_by_one();
    for &worker in &workers {
        reveal(&mut live, T0 + 4, worker, 0).unwrap();
    }
    for &worker in &workers[..2] {
        live.audit_result(T0 + 4, 0, worker, Verdict::Passed, None, None).unwrap();
    }
    live.audit_answered(T0 + 4, workers[2], (T0 + 4) * 1000 + 3, 0, Digest::of(b"answer")).unwrap();
    durable.record(drain(&mut live));
    let deadline = T0 + 2 + 5_000;
    live.handle_timeout(deadline);
    durable.record(drain(&mut live));
    live.audit_result(deadline + 3, 1, workers[0], Verdict::Passed, None, None).unwrap();
    durable.record(drain(&mut live));

    let back = deadline + 1_000;
    let mut restored = durable.restore(settings.clone(), back);
    let replays: Vec<(u64, WorkerId)> = drain(&mut restored)
        .iter()
        .map(|action| match action {
            Action::JudgeAudit { round, worker, .. } => (*round, *worker),
            other => panic!("a restore only asks again for replays in progress: {other:?}"),
        })
        .collect();
    assert_eq!(replays, [(0, workers[2])]);
    assert!(restored.ahead_rounds().all(|round| round.reveal_over), "round 1's reveal phase is over");
    for machine in [&mut live, &mut restored] {
        assert_eq!(
            reveal_on(machine, back + 1, workers[2], 1, model(0)),
            Ok(Outcome::Recorded(Recorded::Late)),
            "a reveal after round 1's deadline is late, crash or not"
        );
    }
    // The rest goes as without the crash: round 0 closes on its verdict,
    // round 1 (one update that counts, below the quorum) fails when it is
    // promoted.
    for machine in [&mut live, &mut restored] {
        drain(machine);
        machine.audit_result(back + 2, 0, workers[2], Verdict::Passed, None, None).unwrap();
        assert_eq!(closes(&drain(machine)), [0]);
        machine.handle_aggregated(back + 3, 0, Aggregated::all(result(1)));
    }
    assert_eq!(drain(&mut restored), drain(&mut live));
}

/// Found by the network simulator at `--outer-delay 1` (seed 174 of
/// `sim network --auditors workers --bond 300`): round 1, opened ahead of
/// round 0, reaches its reveal deadline and a reveal is recorded at that
/// instant, before the timeout input; the coordinator dies before the
/// timer fires. The restore saw the deadline passed by a recorded input
/// and marked round 1's reveal phase over, but nothing judged its
/// unanswered audits: they stayed pending and took answers that the dead
/// machine's timeout, due at once, would have failed as unanswered. Now the
/// restore ends the phase as the timeout does.
#[test]
fn a_round_ahead_whose_reveal_deadline_passed_unfired_before_a_crash_is_judged_as_its_timeout_would() {
    // Worker 2 reveals round 1 at its deadline itself, before the timeout.
    let (settings, mut live, mut durable, workers) = round_1_revealed_by_two_and_answered_by_one();
    durable.record(drain(&mut live));
    let deadline = T0 + 2 + 5_000;
    assert_eq!(
        reveal_on(&mut live, deadline, workers[2], 1, model(0)),
        Ok(Outcome::Recorded(Recorded::Accepted)),
        "the timeout has not fired"
    );
    durable.record(drain(&mut live));

    // Back a second later: the restored machine fails the unanswered audits
    // of round 1 (workers 1 and 2) and asks for worker 0's replay, as the
    // live machine's timeout does.
    let back = deadline + 1_000;
    let mut restored = durable.restore(settings.clone(), back);
    live.handle_timeout(back);
    let verdicts = |actions: &[Action]| -> Vec<(u64, WorkerId, String)> {
        actions
            .iter()
            .filter_map(|action| match action {
                Action::Record(Event::Audit { round: 1, worker, verdict, .. }) => {
                    Some((1, *worker, format!("{verdict:?}")))
                }
                Action::Record(Event::Slash { round: 1, worker, .. }) => Some((1, *worker, "slash".into())),
                Action::JudgeAudit { round: 1, worker, .. } => Some((1, *worker, "replay".into())),
                _ => None,
            })
            .collect()
    };
    let (from_restore, from_timeout) = (verdicts(&drain(&mut restored)), verdicts(&drain(&mut live)));
    assert!(
        from_restore.contains(&(1, workers[1], "slash".into()))
            && from_restore.contains(&(1, workers[2], "slash".into()))
            && from_restore.contains(&(1, workers[0], "replay".into())),
        "{from_restore:?}"
    );
    assert_eq!(from_restore, from_timeout);
    assert!(restored.ahead_rounds().all(|round| round.reveal_over));
    // An answer after the deadline is refused, crash or not.
    for machine in [&mut live, &mut restored] {
        let answer = machine.audit_answered(back + 1, workers[1], (back + 1) * 1000, 1, Digest::of(b"late"));
        assert_eq!(answer.map_err(|refusal| refusal.code), Err(ErrorCode::NotAudited));
    }
}

#[test]
fn under_a_delayed_outer_update_a_worker_that_misses_a_round_sits_out_the_round_after_the_one_open_ahead() {
    let (mut machine, workers) = running(3, delayed());
    // Worker 2 delivers nothing for round 0; it is in round 1 already
    // (opened with round 0), so it sits out round 2, which opens when
    // round 0 closes.
    commit_all(&mut machine, T0 + 1, &workers[..2], 0, model(0));
    machine.handle_timeout(T0 + 10_000);
    for &worker in &workers[..2] {
        reveal(&mut machine, T0 + 10_001, worker, 0).unwrap();
    }
    assert!(matches!(drain(&mut machine).last(), Some(Action::Close { round: 0, .. })));
    machine.handle_aggregated(T0 + 10_002, 0, Aggregated::all(result(1)));
    drain(&mut machine);
    let open = machine.open_round().expect("round 1 is open");
    assert_eq!((open.id, &open.participants), (1, &workers));
    let ahead = machine.ahead_round().expect("round 2 opened ahead");
    assert_eq!((ahead.id, &ahead.participants), (2, &workers[..2].to_vec()));
}

/// Settings of a run whose outer update is delayed by two rounds.
fn delayed_twice() -> Settings {
    Settings { outer_delay: 2, rounds: 5, ..settings() }
}

/// The live rounds: the open one and those opened ahead, with their bases.
fn live_rounds(machine: &Coordinator) -> Vec<(u64, Digest)> {
    machine
        .open_round()
        .into_iter()
        .chain(machine.ahead_rounds())
        .map(|live| (live.id, live.base_model))
        .collect()
}

/// Reveals round `round` for every worker of `workers` and aggregates it
/// into model `round + 1`; returns the actions after the aggregate.
fn reveal_and_close(machine: &mut Coordinator, now: u64, workers: &[WorkerId], round: u64) -> Vec<Action> {
    for &worker in workers {
        let base = machine.open_round().expect("the round revealing is open").base_model;
        let revealed = machine.reveal(now, worker, now * 1000 + 1, round, base, payload(worker, round), None);
        assert_eq!(revealed, Ok(Outcome::Recorded(Recorded::Accepted)), "round {round}");
    }
    let closing = drain(machine);
    assert!(matches!(closing.last(), Some(Action::Close { round: id, .. }) if *id == round), "{closing:?}");
    machine.handle_aggregated(now, round, Aggregated::all(result(round + 1)));
    drain(machine)
}

#[test]
fn under_a_two_round_delay_three_rounds_take_commitments_and_each_opens_on_the_model_two_steps_back() {
    let (mut machine, workers) = running(3, delayed_twice());
    // Rounds 1 and 2 train from the model round 0 trains from (no round
    // has closed yet): they open with round 0.
    assert_eq!(live_rounds(&machine), [(0, model(0)), (1, model(0)), (2, model(0))]);
    assert!(machine.ahead_rounds().all(|ahead| ahead.participants == workers));
    assert_eq!(machine.ahead_round().map(|ahead| ahead.id), Some(1), "the next to be the open round");
    // A worker sees round 0 to commit, then the chain of rounds ahead.
    let view = machine.view(Some(workers[1]));
    let chain: Vec<(Option<u64>, Phase, Option<u64>)> =
        std::iter::successors(Some(&view), |view| view.ahead.as_deref())
            .map(|view| (view.round, view.phase, view.assignment.as_ref().map(|assignment| assignment.round)))
            .collect();
    assert_eq!(
        chain,
        [
            (Some(0), Phase::Committing, Some(0)),
            (Some(1), Phase::Committing, Some(1)),
            (Some(2), Phase::Committing, Some(2))
        ]
    );

    // All three take commitments, in any order: round 2 first.
    commit_all(&mut machine, T0 + 1, &workers, 2, model(0));
    commit_all(&mut machine, T0 + 2, &workers, 1, model(0));
    let view = machine.view(Some(workers[0]));
    let ahead = view.ahead.expect("round 1 is shown");
    assert!(ahead.committed && ahead.ahead.expect("round 2 is shown").committed);
    assert_eq!(commit_on(&mut machine, T0 + 2, workers[0], 2, model(1)), Err(ErrorCode::StaleModel));
    // The last commitment to round 0 ends its commit phase: nothing opens
    // (round 3 trains from round 0's result).
    let actions = commit_all(&mut machine, T0 + 3, &workers, 0, model(0));
    assert!(opened(&actions).is_empty(), "{actions:?}");
    assert_eq!(machine.phase(), Phase::Revealing);

    // Each close promotes the oldest round ahead (round 1: fully committed,
    // it reveals at once) and opens one on the newest model; the run's
    // last round (4) opens when round 1 closes, and nothing after it.
    let actions = reveal_and_close(&mut machine, T0 + 4, &workers, 0);
    assert_eq!(opened(&actions), [(3, model(1))]);
    assert_eq!(live_rounds(&machine), [(1, model(0)), (2, model(0)), (3, model(1))]);
    assert_eq!(machine.phase(), Phase::Revealing, "round 1 was committed to already");
    commit_all(&mut machine, T0 + 5, &workers, 3, model(1));
    let actions = reveal_and_close(&mut machine, T0 + 6, &workers, 1);
    assert_eq!(opened(&actions), [(4, model(2))]);
    assert_eq!(live_rounds(&machine), [(2, model(0)), (3, model(1)), (4, model(2))]);
    commit_all(&mut machine, T0 + 7, &workers, 4, model(2));
    let actions = reveal_and_close(&mut machine, T0 + 8, &workers, 2);
    assert!(opened(&actions).is_empty(), "{actions:?}");
    assert_eq!(live_rounds(&machine), [(3, model(1)), (4, model(2))]);
    reveal_and_close(&mut machine, T0 + 9, &workers, 3);
    let actions = reveal_and_close(&mut machine, T0 + 10, &workers, 4);
    assert!(matches!(actions.last(), Some(Action::Record(Event::RunFinished { .. }))), "{actions:?}");
    assert_eq!(machine.completed_rounds(), 5);
}

#[test]
fn under_a_delay_of_three_or_four_every_live_round_takes_commitments_and_opens_on_the_model_delay_steps_back()
{
    for delay in [3, 4] {
        let settings = Settings { outer_delay: delay as u32, rounds: delay + 3, ..settings() };
        let (window, rounds) = (settings.commit_ms, settings.rounds);
        let (mut machine, workers) = running(3, settings);
        // Round k trains from the model before round k - delay's outer
        // step, that is round k - delay - 1's result.
        let live_from = |first: u64| -> Vec<(u64, Digest)> {
            (first..rounds.min(first + delay + 1))
                .map(|round| (round, model(round.saturating_sub(delay))))
                .collect()
        };
        // The first delay + 1 rounds open at once, on the initial model,
        // each due a window after the one before (its workers train the
        // rounds before it first), and a worker's view shows them in order.
        assert_eq!(live_rounds(&machine), live_from(0), "delay {delay}");
        let deadlines: Vec<u64> = machine
            .open_round()
            .into_iter()
            .chain(machine.ahead_rounds())
            .map(|live| live.deadline_ms())
            .collect();
        let windows: Vec<u64> = (1..=delay + 1).map(|windows| T0 + windows * window).collect();
        assert_eq!(deadlines, windows, "delay {delay}");
        let view = machine.view(Some(workers[2]));
        let chain: Vec<Option<u64>> =
            std::iter::successors(Some(&view), |view| view.ahead.as_deref()).map(|view| view.round).collect();
        assert_eq!(chain, (0..=delay).map(Some).collect::<Vec<_>>(), "delay {delay}");
        // All take commitments, the newest first; round 0's last one opens
        // nothing (round delay + 1 trains from round 0's result).
        for round in (1..=delay).rev() {
            commit_all(&mut machine, T0 + 1, &workers, round, model(0));
        }
        let actions = commit_all(&mut machine, T0 + 2, &workers, 0, model(0));
        assert!(opened(&actions).is_empty(), "delay {delay}: {actions:?}");
        // Each close promotes the oldest round ahead and opens the one
        // delay + 1 after it on the new model, until the run's last round.
        for round in 0..rounds {
            let now = T0 + 3 + round;
            let actions = reveal_and_close(&mut machine, now, &workers, round);
            let next = round + delay + 1;
            if next < rounds {
                assert_eq!(opened(&actions), [(next, model(round + 1))], "delay {delay}");
                commit_all(&mut machine, now, &workers, next, model(round + 1));
            } else {
                assert!(opened(&actions).is_empty(), "delay {delay}: {actions:?}");
            }
            assert_eq!(live_rounds(&machine), live_from(round + 1), "delay {delay}, round {round} closed");
        }
        assert_eq!(machine.completed_rounds(), rounds, "delay {delay}");
    }
}

#[test]
fn under_a_two_round_delay_a_worker_that_misses_a_round_sits_out_the_first_round_opened_after() {
    let (mut machine, workers) = running(3, delayed_twice());
    // Worker 2 delivers nothing for round 0; it is in rounds 1 and 2
    // already (opened with round 0), so it sits out round 3, which opens
    // when round 0 closes, and is back in round 4.
    commit_all(&mut machine, T0 + 1, &workers[..2], 0, model(0));
    machine.handle_timeout(T0 + 10_000);
    reveal_and_close(&mut machine, T0 + 10_001, &workers[..2], 0);
    let participants: Vec<(u64, Vec<WorkerId>)> = machine
        .open_round()
        .into_iter()
        .chain(machine.ahead_rounds())
        .map(|live| (live.id, live.participants.clone()))
        .collect();
    assert_eq!(participants, [(1, workers.clone()), (2, workers.clone()), (3, workers[..2].to_vec())]);
    commit_all(&mut machine, T0 + 10_002, &workers, 1, model(0));
    reveal_and_close(&mut machine, T0 + 10_003, &workers, 1);
    let newest = machine.ahead_rounds().last().expect("round 4 opened ahead");
    assert_eq!((newest.id, &newest.participants), (4, &workers));
}

#[test]
fn under_a_two_round_delay_a_round_opened_ahead_gives_a_commit_window_for_each_round_trained_before_it() {
    // Goal: a worker trains the live rounds one after the other, so a
    // round opened ahead of k others is due k + 1 commit windows after it
    // opens, and an honest worker that takes most of a window for each
    // round is never cut out of one. (With one window, round 2, opened
    // with round 0, was due when round 0 was: under load the network run
    // ended off the simulation's bits, issue 18.)
    let (mut machine, workers) = running(3, delayed_twice());
    let window = delayed_twice().commit_ms;
    let deadlines: Vec<(u64, u64)> = machine
        .open_round()
        .into_iter()
        .chain(machine.ahead_rounds())
        .map(|live| (live.id, live.deadline_ms()))
        .collect();
    assert_eq!(deadlines, [(0, T0 + window), (1, T0 + 2 * window), (2, T0 + 3 * window)]);
    // Every worker takes 90% of a window for each round; the last one is
    // slower still and commits each round just before its window ends.
    let (fast, slow) = (&workers[..2], workers[2]);
    let lap = window * 9 / 10;
    commit_all(&mut machine, T0 + lap, fast, 0, model(0));
    commit_all(&mut machine, T0 + window - 1, &[slow], 0, model(0));
    commit_all(&mut machine, T0 + 2 * lap, fast, 1, model(0));
    // Round 0 closes after its reveals: round 1 (its slow worker still
    // training) is the open round, round 3 opens ahead of two rounds.
    let actions = reveal_and_close(&mut machine, T0 + 2 * lap + 1, &workers, 0);
    assert_eq!(opened(&actions), [(3, model(1))]);
    let round_3 = machine.ahead_rounds().last().expect("round 3 opened ahead");
    assert_eq!(round_3.deadline_ms(), T0 + 2 * lap + 1 + 3 * window);
    commit_all(&mut machine, T0 + 2 * window - 1, &[slow], 1, model(0));
    commit_all(&mut machine, T0 + 3 * lap, fast, 2, model(0));
    // Round 1 closes past one window after round 2 opened: round 2 is the
    // open round, and waits for its slow worker, still in its window.
    reveal_and_close(&mut machine, T0 + 2 * window + 1, &workers, 1);
    machine.handle_timeout(T0 + 2 * window + 2);
    drain(&mut machine);
    let open = machine.open_round().expect("round 2 is open");
    assert_eq!((open.id, machine.phase()), (2, Phase::Committing), "round 2 still waits for {slow}");
    // Its commitment ends the commit phase: everyone is in round 2.
    commit_all(&mut machine, T0 + 3 * window - 1, &[slow], 2, model(0));
    assert_eq!(machine.phase(), Phase::Revealing);
    let open = machine.open_round().expect("round 2 reveals");
    assert!(workers.iter().all(|worker| open.standings[worker].commitment.is_some()), "{open:?}");
}

#[test]
fn under_a_two_round_delay_a_restored_machine_rebuilds_all_three_live_rounds() {
    let settings = Settings { min_workers: 3, audit_probability: 0.6, ..delayed_twice() };
    // Rounds 1 and 2 opened with round 0: workers commit them before and
    // between round 0's commitments, three rounds taking commitments.
    let mut steps: Vec<Step> = vec![
        Box::new(|m, w| {
            let _ = commit_on(m, T0 + 5, w[2], 2, model(0));
        }),
        Box::new(|m, w| {
            let _ = commit_on(m, T0 + 6, w[2], 1, model(0));
        }),
    ];
    steps.extend(round_0_commitments());
    steps.extend::<Vec<Step>>(vec![
        Box::new(|m, w| {
            for &worker in &w[..2] {
                let _ = commit_on(m, T0 + 13, worker, 1, model(0));
            }
        }),
        Box::new(|m, w| {
            let _ = reveal(m, T0 + 20, w[0], 0);
        }),
        Box::new(|m, w| judge(m, T0 + 21, 0, w[0], Verdict::Passed)),
        Box::new(|m, w| {
            let _ = commit_on(m, T0 + 21, w[1], 2, model(0));
        }),
        Box::new(|m, w| {
            let _ = reveal(m, T0 + 22, w[1], 0);
            let _ = reveal(m, T0 + 23, w[2], 0);
        }),
        Box::new(|m, w| judge(m, T0 + 24, 0, w[1], Verdict::Failed("diverged".into()))),
        Box::new(|m, w| judge(m, T0 + 24, 0, w[2], Verdict::Passed)),
        // Round 0 closes: round 1, fully committed, is the open round and
        // reveals at once; round 3 opens ahead on round 0's model.
        Box::new(|m, _| m.handle_aggregated(T0 + 25, 0, Aggregated::all(result(1)))),
        Box::new(|m, w| {
            let _ = commit_on(m, T0 + 26, w[0], 3, model(1));
        }),
        // Round 1 is revealed and judged, and fails: the driver's checks
        // refuse two of its updates. Round 2 is the open round and round 4
        // opens ahead, on the same model as round 3.
    ]);
    steps.extend(round_1_revealed_and_refused());
    steps.extend::<Vec<Step>>(vec![
        Box::new(|m, w| {
            let _ = commit_on(m, T0 + 5_030, w[1], 4, model(1));
        }),
        Box::new(|m, w| {
            let _ = commit_on(m, T0 + 5_031, w[0], 2, model(0));
        }),
        // Round 2's deadline (two windows: it opened ahead of round 1):
        // its quorum is in, it reveals.
        Box::new(|m, _| m.handle_timeout(T0 + 25 + 2 * 10_000)),
    ]);
    restored_machines_behave_like_the_live_one(&settings, &steps, T0 + 12);
    // And the steps do reach three live rounds, then a failed round.
    let (mut machine, _, workers) = durable_running(3, &settings);
    for step in &steps[..13] {
        step(&mut machine, &workers);
    }
    assert_eq!(live_rounds(&machine), [(1, model(0)), (2, model(0)), (3, model(1))]);
    for step in &steps[13..17] {
        step(&mut machine, &workers);
    }
    assert_eq!(live_rounds(&machine), [(2, model(0)), (3, model(1)), (4, model(1))]);
}

#[test]
fn a_coordinator_down_past_the_reveal_deadline_gives_a_whole_reveal_window_again() {
    // Goal: an outage does not turn into an honest worker's unanswered
    // audit. Method: both audited, w1 has not answered (nor revealed) when
    // the coordinator dies; it comes back after the reveal deadline.
    let settings = Settings { audit_probability: 1.0, ..settings() };
    let (mut machine, mut durable, workers) = durable_running(2, &settings);
    for &worker in &workers {
        commit(&mut machine, T0 + 1, worker, 0).unwrap();
    }
    machine.audit_answered(T0 + 2, workers[0], (T0 + 2) * 1000, 0, Digest::of(b"an answer")).unwrap();
    reveal(&mut machine, T0 + 3, workers[0], 0).unwrap();
    durable.record(drain(&mut machine));
    let deadline = machine.open_round().unwrap().deadline_ms();
    let back = deadline + 60_000;
    let mut restored = durable.restore(settings.clone(), back);
    assert!(
        !drain(&mut restored).iter().any(|action| matches!(action, Action::Record(Event::Audit { .. }))),
        "nobody is judged unanswered for the time the coordinator was down"
    );
    assert_eq!(restored.open_round().unwrap().deadline_ms(), back + settings.reveal_ms);
    assert_eq!(restored.poll_timeout(), Some(back + settings.reveal_ms));
    restored.audit_answered(back + 10, workers[1], (back + 10) * 1000, 0, Digest::of(b"an answer")).unwrap();
    reveal(&mut restored, back + 11, workers[1], 0).unwrap();
    restored.audit_result(back + 12, 0, workers[0], Verdict::Passed, None, None).unwrap();
    restored.audit_result(back + 13, 0, workers[1], Verdict::Passed, None, None).unwrap();
    let actions = drain(&mut restored);
    assert!(
        !actions.iter().any(|action| matches!(action, Action::Record(Event::Slash { .. }))),
        "{actions:?}"
    );
    assert!(
        matches!(actions.last(), Some(Action::Close { round: 0, accepted, .. }) if accepted == &workers),
        "{actions:?}"
    );
    // A worker that stays away after the restart is judged at the new
    // deadline, as any other.
    let mut restored = durable.restore(settings.clone(), back);
    drain(&mut restored);
    restored.handle_timeout(back + settings.reveal_ms);
    let actions = drain(&mut restored);
    assert!(actions.iter().any(|action| matches!(
        action,
        Action::Record(Event::Audit { worker, verdict: Verdict::Unanswered, .. }) if *worker == workers[1]
    )));
}

#[test]
fn a_machine_restored_with_everything_delivered_closes_the_round_at_once() {
    let settings = Settings { min_workers: 2, ..settings() };
    let (mut machine, mut durable, workers) = durable_running(2, &settings);
    // Close is asked for, but nothing durable says "closed".
    let actions = durable.record(deliver(&mut machine, T0 + 5, &workers, 0));
    assert!(matches!(actions.last(), Some(Action::Close { round: 0, .. })));
    let mut restored = durable.restore(settings, T0 + 100);
    assert!(matches!(drain(&mut restored)[..], [Action::Close { round: 0, .. }]));
}

/// Swarm test: random registrations, commitments and reveals (right,
/// wrong, duplicate, late, for other rounds), audit verdicts, clock jumps
/// and crashes, from many seeds. Every record goes into a real store, which
/// must take it (its constraints catch a fact recorded twice or out of
/// place), and a crash replaces the machine with one restored from that
/// store. After every step the invariants a user relies on must hold.
#[test]
fn random_event_sequences_keep_the_invariants() {
    let Swarm { opened_ahead, adopted, withdrawn_rounds, crashes, contested, .. } = swarm(0);
    assert!(
        opened_ahead > 0 && adopted > 0 && withdrawn_rounds > 0 && crashes > 1000 && contested > 0,
        "{opened_ahead} {adopted} {withdrawn_rounds} {crashes} {contested}"
    );
}

/// The swarm test under one-step-delayed outer updates: two rounds are
/// live at times, both taking commitments (the one opened ahead since the
/// open round opened), the one ahead revealing and judged while the open
/// round is still live, and every invariant above holds.
#[test]
fn random_event_sequences_keep_the_invariants_under_a_delayed_outer_update() {
    let counts = swarm(1);
    assert!(
        counts.two_live > 1000
            && counts.two_committing > 500
            && counts.ahead_commitments > 100
            && counts.ahead_revealing > 1000
            && counts.ahead_reveals > 50
            && counts.ahead_verdicts > 100
            && counts.crashes > 1000
            && counts.contested > 0,
        "{counts:?}"
    );
}

/// The swarm test under two-round-delayed outer updates: up to three
/// rounds are live, all taking commitments, those ahead revealing and
/// judged on their own, and every invariant above holds.
#[test]
fn random_event_sequences_keep_the_invariants_under_a_two_round_delay() {
    let counts = swarm(2);
    assert!(
        counts.three_live > 500
            && counts.two_committing > 500
            && counts.ahead_commitments > 100
            && counts.ahead_revealing > 1000
            && counts.ahead_reveals > 50
            && counts.ahead_verdicts > 100
            && counts.crashes > 1000
            && counts.contested > 0,
        "{counts:?}"
    );
}

/// The swarm test at the deepest delay a run takes: up to five rounds
/// live, all of them at times, and every invariant above holds.
#[test]
fn random_event_sequences_keep_the_invariants_under_a_four_round_delay() {
    let counts = swarm(4);
    assert!(
        counts.all_live > 100
            && counts.ahead_commitments > 100
            && counts.ahead_revealing > 1000
            && counts.ahead_reveals > 50
            && counts.ahead_verdicts > 100
            && counts.crashes > 1000,
        "{counts:?}"
    );
}

/// What a swarm run went through, over all seeds.
#[derive(Debug, Default)]
struct Swarm {
    /// Provisional rounds opened, adopted and withdrawn.
    opened_ahead: u32,
    adopted: u32,
    withdrawn_rounds: u32,
    crashes: u32,
    /// Commitments to an update another worker committed to as well.
    contested: u32,
    /// Steps after which two rounds were live (delayed outer updates).
    two_live: u32,
    /// Steps after which three rounds were live (a two-round delay).
    three_live: u32,
    /// Steps after which `delay + 1` rounds were live: as deep as the
    /// pipeline goes.
    all_live: u32,
    /// Commitments accepted for the round opened ahead.
    ahead_commitments: u32,
    /// Steps after which both live rounds took commitments.
    two_committing: u32,
    /// Steps after which a round opened ahead was in its reveal phase.
    ahead_revealing: u32,
    /// Reveals and verdicts recorded for a round opened ahead.
    ahead_reveals: u32,
    ahead_verdicts: u32,
}

fn swarm(outer_delay: u32) -> Swarm {
    let mut counts = Swarm::default();
    let Swarm {
        opened_ahead,
        adopted,
        withdrawn_rounds,
        crashes,
        contested,
        two_live,
        three_live,
        all_live,
        ahead_commitments,
        two_committing,
        ahead_revealing,
        ahead_reveals,
        ahead_verdicts,
    } = &mut counts;
    for seed in 0..200 {
        let mut rng = keyed_rng("coordinator-swarm", RngKey::new(seed, 0, 0, 0));
        // Five rounds, or enough for a round to open ahead of a full
        // pipeline after the first ones close.
        let rounds = 5.max(u64::from(outer_delay) + 3);
        let settings = Settings { rounds, audit_probability: 0.5, outer_delay, ..settings() };
        let mut machine = Coordinator::new(settings.clone(), Digest::of(b"run"), model(0), MASTER);
        let mut durable = Durable::new();
        let mut now = T0;
        let mut last_round_opened = None;
        let mut committed_rounds = 0u64;
        let mut counted = std::collections::BTreeSet::new();
        let mut slashed = std::collections::BTreeSet::new();
        let mut provisional: Option<u64> = None;
        // Per round, the accepted commitments' updates and who made them.
        let mut committed_updates: BTreeMap<u64, Vec<(Digest, WorkerId)>> = BTreeMap::new();
        let (mut latest_model, mut last_ended) = (model(0), None);
        for step in 0..500 {
            now += uniform_below(&mut rng, 2500);
            let worker = WorkerId(uniform_below(&mut rng, 5));
            let known = (machine.worker_count() as u64) > worker.0;
            // Up to the newest round opened ahead (the same draws as ever
            // without a delay or with one round's).
            let reach = u64::from(outer_delay.max(1)) + 1;
            let round = machine.open_round().map_or(0, |open| open.id) + uniform_below(&mut rng, reach);
            let round = round.saturating_sub(uniform_below(&mut rng, 2));
            if uniform_below(&mut rng, 25) == 0 {
                // A crash: what was not durable is gone, and the restored
                // machine's own first actions follow below.
                let completed = machine.completed_rounds();
                machine = durable.restore(settings.clone(), now);
                assert_eq!(machine.completed_rounds(), completed, "seed {seed}: nothing durable is lost");
                provisional = None;
                *crashes += 1;
            }
            let ahead = machine.ahead_rounds().find(|ahead| ahead.id == round).map(|ahead| ahead.base_model);
            let base = ahead.unwrap_or_else(|| base(&machine));
            let nonce = now * 1000 + step;
            match uniform_below(&mut rng, 8) {
                0 => drop(machine.register(now, key(uniform_below(&mut rng, 5) as u8), "avx2-fma")),
                1 | 2 if known => {
                    let honest = uniform_below(&mut rng, 4) > 0;
                    let value = if honest {
                        commitment(worker, round)
                    } else if uniform_below(&mut rng, 2) == 0 {
                        Commitment { merkle_root: Digest::of(&[9]), ..commitment(worker, round) }
                    } else {
                        // A copy of another worker's work.
                        commitment(WorkerId((worker.0 + 1) % 5), round)
                    };
                    let outcome = machine.commit(now, worker, nonce, round, base, None, value);
                    if outcome == Ok(Outcome::Recorded(Recorded::Accepted)) && ahead.is_some() {
                        *ahead_commitments += 1;
                    }
                }
                3 | 4 if known => {
                    let honest = uniform_below(&mut rng, 5) > 0;
                    let digest = if honest { payload(worker, round) } else { Digest::of(b"tampered") };
                    let _ = machine.reveal(now, worker, nonce, round, base, digest, None);
                }
                5 if known => {
                    // Answered first (then judged by a later event), or
                    // judged at once.
                    let answering = uniform_below(&mut rng, 2) == 0;
                    if answering && machine.pending_audit(worker, round).is_some() {
                        machine.audit_answered(now, worker, nonce, round, Digest::of(b"an answer")).unwrap();
                    } else if machine.pending_audit(worker, round).is_some()
                        || machine.answered_audit(round, worker).is_some()
                    {
                        let verdict = if uniform_below(&mut rng, 3) > 0 {
                            Verdict::Passed
                        } else {
                            Verdict::Failed("x".into())
                        };
                        machine
                            .audit_result(now, round, worker, verdict, None, Some((worker, nonce)))
                            .unwrap();
                    }
                }
                6 => machine.seen(now, worker),
                _ => machine.handle_timeout(now),
            }
            let mut done = Vec::new();
            while let Some(action) = machine.poll_action() {
                done.push(action.clone());
                let ahead_round = |round: u64| machine.ahead_rounds().any(|ahead| ahead.id == round);
                match &action {
                    Action::Record(Event::Reveal { round, status: Recorded::Accepted, .. })
                        if ahead_round(*round) =>
                    {
                        *ahead_reveals += 1
                    }
                    Action::Record(Event::Audit { round, .. }) if ahead_round(*round) => *ahead_verdicts += 1,
                    _ => {}
                }
                match action {
                    Action::Record(Event::RoundOpened { round, participants, base_model, .. }) => {
                        assert_eq!(
                            base_model, latest_model,
                            "seed {seed}: a round opens on the newest model"
                        );
                        assert!(
                            last_round_opened.is_none_or(|last| round > last),
                            "seed {seed}: rounds never go back"
                        );
                        assert!(
                            participants.windows(2).all(|pair| pair[0] < pair[1]),
                            "sorted, distinct participants"
                        );
                        assert!(participants.len() >= 2, "a round opens with a quorum of workers");
                        if let Some(provisional) = provisional.take() {
                            assert_eq!(
                                provisional, round,
                                "seed {seed}: a provisional round is adopted or withdrawn"
                            );
                            *adopted += 1;
                        }
                        last_round_opened = Some(round);
                    }
                    Action::Record(Event::Slash { round, worker, .. }) => {
                        assert!(
                            slashed.insert((round, worker)),
                            "seed {seed}: one slash per worker per round"
                        );
                    }
                    Action::Close { round, accepted, .. } => {
                        assert!(accepted.len() >= 2, "seed {seed}: a round closes only with quorum");
                        assert_eq!(
                            machine.open_round().map(|open| open.id),
                            Some(round),
                            "seed {seed}: only the open round closes, whatever the rounds ahead of it did"
                        );
                        for worker in &accepted {
                            assert!(
                                !slashed.contains(&(round, *worker)),
                                "seed {seed}: a slashed update never counts"
                            );
                            assert!(counted.insert((round, *worker)), "each update counts at most once");
                        }
                        machine.handle_aggregated(now, round, Aggregated::all(result(round + 100)));
                    }
                    Action::Speculate { round, .. } => {
                        assert_eq!(
                            machine.open_round().map(|open| open.id),
                            Some(round),
                            "bets are on the open round"
                        );
                        machine.handle_speculated(now, round, Aggregated::all(result(round + 100)));
                    }
                    Action::OpenProvisional { round, after, .. } => {
                        assert_eq!(
                            Some(after),
                            last_round_opened,
                            "seed {seed}: opened ahead of the open round"
                        );
                        assert_eq!(round, after + 1);
                        assert_eq!(outer_delay, 0, "a delayed run opens ahead without a bet");
                        provisional = Some(round);
                        *opened_ahead += 1;
                    }
                    Action::Withdraw { provisional: withdrawn, .. } => {
                        assert_eq!(
                            withdrawn,
                            provisional.take(),
                            "seed {seed}: what is withdrawn was opened"
                        );
                        *withdrawn_rounds += u32::from(withdrawn.is_some());
                    }
                    Action::Record(Event::Commitment {
                        round,
                        worker,
                        commitment,
                        status: Recorded::Accepted,
                        ..
                    }) => {
                        assert!(
                            Some(round) <= last_round_opened,
                            "seed {seed}: commitments only for opened rounds"
                        );
                        committed_updates.entry(round).or_default().push((commitment.payload, worker));
                    }
                    Action::Record(Event::AuditDraw { round, audits, .. }) => {
                        let updates = committed_updates.remove(&round).unwrap_or_default();
                        for &(update, worker) in &updates {
                            let copies = updates.iter().filter(|(other, _)| *other == update).count();
                            if copies > 1 {
                                *contested += 1;
                                assert!(
                                    audits.iter().any(|&(audited, _)| audited == worker),
                                    "seed {seed}: round {round}: {worker} committed an update another did too \
                                     and is not audited"
                                );
                            }
                        }
                    }
                    Action::Record(Event::RoundClosed { round, result_model, .. }) => {
                        assert!(last_ended < Some(round), "seed {seed}: rounds end in order");
                        (latest_model, last_ended) = (result_model, Some(round));
                        committed_rounds += 1;
                    }
                    Action::Record(Event::RoundFailed { round, .. }) => {
                        assert!(last_ended < Some(round), "seed {seed}: rounds end in order");
                        last_ended = Some(round);
                    }
                    Action::Record(Event::RunFinished { .. }) => assert_eq!(committed_rounds, rounds),
                    _ => {}
                }
            }
            durable.record(done);
            assert!(machine.completed_rounds() <= rounds);
            let ahead: Vec<&OpenRound> = machine.ahead_rounds().collect();
            assert!(ahead.len() <= outer_delay as usize, "seed {seed}: at most `delay` rounds ahead");
            if let Some(newest) = ahead.last() {
                let open = machine.open_round().expect("a round opens ahead of the open one");
                for (index, ahead) in ahead.iter().enumerate() {
                    assert_eq!(ahead.id, open.id + 1 + index as u64, "seed {seed}");
                    // Each round ahead runs its own phases: its reveal
                    // phase may have begun, and a late one's may be over.
                    match ahead.phase {
                        RoundPhase::Committing { .. } => assert!(!ahead.reveal_over, "seed {seed}"),
                        RoundPhase::Revealing { .. } => {
                            assert!(
                                ahead.secret.is_some(),
                                "seed {seed}: a revealing round published its draw"
                            );
                            *ahead_revealing += 1;
                        }
                    }
                }
                // Each opened on the newest model of its time (checked as
                // it opens, above): under one round's delay that is still
                // the newest, since only the open round's close makes one.
                if outer_delay == 1 {
                    assert_eq!(
                        newest.base_model, latest_model,
                        "seed {seed}: opened ahead on the newest model"
                    );
                }
                *two_live += 1;
                *three_live += u32::from(ahead.len() == 2);
                *all_live += u32::from(ahead.len() == outer_delay as usize);
                *two_committing += u32::from(matches!(open.phase, RoundPhase::Committing { .. }));
            }
        }
        // The per-worker totals the status page reads, kept event by event,
        // are what the recorded facts add up to.
        durable.store.check_worker_totals().unwrap_or_else(|error| panic!("seed {seed}: {error}"));
    }
    counts
}

#[test]
fn updates_the_checks_refuse_are_recorded_and_earn_nothing_but_the_round_counts_with_a_quorum() {
    let (mut machine, workers) = running(3, settings());
    let actions = deliver(&mut machine, T0 + 10, &workers, 0);
    assert!(matches!(actions.last(), Some(Action::Close { accepted, .. }) if accepted == &workers));
    let refused = vec![(workers[2], "a bit-for-bit copy of w0's update, committed earlier".to_owned())];
    machine.handle_aggregated(T0 + 20, 0, Aggregated { result: Some(result(1)), refused });
    let actions = drain(&mut machine);
    assert!(
        matches!(&actions[0], Action::Record(Event::UpdateRefused { round: 0, worker, .. }) if *worker == workers[2])
    );
    assert!(
        matches!(&actions[1], Action::Record(Event::RoundClosed { accepted, .. }) if accepted == &workers[..2])
    );
    let credited: Vec<WorkerId> = actions
        .iter()
        .filter_map(|action| match action {
            Action::Record(Event::WorkAccepted { worker, .. }) => Some(*worker),
            _ => None,
        })
        .collect();
    assert_eq!(credited, workers[..2], "a refused update earns no work");
    assert!(
        !actions.iter().any(|action| matches!(action, Action::Record(Event::Slash { .. }))),
        "refusals are not slashes"
    );
    assert_eq!(machine.completed_rounds(), 1);
    assert!(machine.is_active(workers[2]), "a refused worker delivered: it stays in the run");
}

#[test]
fn a_round_whose_passing_updates_miss_the_quorum_fails_and_a_new_one_opens_on_the_same_model() {
    let (mut machine, workers) = running(3, settings());
    deliver(&mut machine, T0 + 10, &workers, 0);
    let refused = workers[1..].iter().map(|&worker| (worker, "outsized".to_owned())).collect();
    machine.handle_aggregated(T0 + 20, 0, Aggregated { result: Some(result(1)), refused });
    let actions = drain(&mut machine);
    assert_eq!(
        actions.iter().filter(|action| matches!(action, Action::Record(Event::UpdateRefused { .. }))).count(),
        2
    );
    assert!(actions.iter().any(
        |action| matches!(action, Action::Record(Event::RoundFailed { round: 0, reason, .. }) if reason.contains("quorum"))
    ));
    assert!(!actions.iter().any(|action| matches!(
        action,
        Action::Record(Event::WorkAccepted { .. }) | Action::Record(Event::RoundClosed { .. })
    )));
    assert!(
        actions.iter().any(|action| matches!(action, Action::Record(Event::RoundOpened { round: 1, base_model, .. }) if *base_model == model(0))),
        "{actions:?}"
    );
    assert_eq!(machine.completed_rounds(), 0);
    // Nothing passed at all: also a failed round.
    deliver(&mut machine, T0 + 30, &workers, 1);
    machine.handle_aggregated(T0 + 40, 1, Aggregated { result: None, refused: Vec::new() });
    assert!(
        drain(&mut machine)
            .iter()
            .any(|action| matches!(action, Action::Record(Event::RoundFailed { round: 1, .. })))
    );
}

#[test]
fn a_malformed_committed_update_is_recorded_and_rejected_without_waiting_or_slashing() {
    let (mut machine, workers) = running(2, Settings { quorum: 1, ..settings() });
    for &worker in &workers {
        commit(&mut machine, T0 + 10, worker, 0).unwrap();
    }
    drain(&mut machine);
    let problem =
        crowdtrain_protocol::Refusal { code: ErrorCode::NonFinite, message: "value 3 is NaN".into() };
    let base = base(&machine);
    // A malformed payload that is not the committed one changes nothing.
    let other = machine.reveal(
        T0 + 11,
        workers[0],
        (T0 + 11) * 1000,
        0,
        base,
        Digest::of(b"x"),
        Some(problem.clone()),
    );
    assert_eq!(other.unwrap_err().code, ErrorCode::NonFinite);
    assert!(drain(&mut machine).is_empty());
    // The committed payload, malformed: recorded and settled.
    let outcome = machine.reveal(
        T0 + 12,
        workers[0],
        (T0 + 12) * 1000,
        0,
        base,
        payload(workers[0], 0),
        Some(problem.clone()),
    );
    assert_eq!(outcome, Ok(Outcome::Recorded(Recorded::Malformed)));
    let actions = drain(&mut machine);
    assert!(
        matches!(actions[..], [Action::Record(Event::Reveal { status: Recorded::Malformed, .. })]),
        "{actions:?}"
    );
    let again =
        machine.reveal(T0 + 13, workers[0], (T0 + 13) * 1000, 0, base, payload(workers[0], 0), Some(problem));
    assert_eq!(again, Ok(Outcome::AlreadyRecorded(Recorded::Malformed)), "a retry gets the same answer");
    reveal(&mut machine, T0 + 14, workers[1], 0).unwrap();
    let actions = drain(&mut machine);
    assert!(
        matches!(actions.last(), Some(Action::Close { accepted, .. }) if accepted == &workers[1..]),
        "the round closes as soon as the honest reveal is in, without the malformed one: {actions:?}"
    );
    assert!(!actions.iter().any(|action| matches!(action, Action::Record(Event::Slash { .. }))));
}

/// A machine delegating audits, every submission audited, with workers of
/// the given determinism classes; round 0 in its reveal phase.
fn delegating(classes: &[&str]) -> (Coordinator, Vec<WorkerId>) {
    let settings = Settings {
        min_workers: classes.len() as u32,
        quorum: 1,
        audit_probability: 1.0,
        delegate_audits: true,
        ..settings()
    };
    let mut machine = Coordinator::new(settings, Digest::of(b"run"), model(0), MASTER);
    let workers: Vec<WorkerId> = classes
        .iter()
        .enumerate()
        .map(|(index, class)| machine.register(T0, key(index as u8), class).unwrap().0)
        .collect();
    for &worker in &workers {
        commit(&mut machine, T0 + 10, worker, 0).unwrap();
    }
    drain(&mut machine);
    (machine, workers)
}

#[test]
fn delegated_audits_go_to_another_worker_of_the_same_class_once_the_answer_is_in() {
    let (mut machine, workers) = delegating(&["avx2-fma", "avx2-fma", "avx2-fma", "portable"]);
    let open = machine.open_round().unwrap();
    for &worker in &workers[..3] {
        let auditor = open.standings[&worker].auditor.expect("two candidates of its class");
        assert!(auditor != worker && workers[..3].contains(&auditor), "{worker} audited by {auditor}");
    }
    assert_eq!(
        open.standings[&workers[3]].auditor, None,
        "nobody shares its class: the coordinator audits it"
    );
    let audited = workers[0];
    let auditor = open.standings[&audited].auditor.unwrap();
    assert!(machine.view(Some(auditor)).audit_task.is_none(), "no task before the answer");
    assert_eq!(
        machine.audit_answered(T0 + 11, audited, (T0 + 11) * 1000, 0, Digest::of(b"an answer")),
        Ok(Some(auditor))
    );
    assert!(matches!(drain(&mut machine)[..], [Action::Record(Event::AuditAnswered { .. })]));
    let task = machine.view(Some(auditor)).audit_task.expect("the auditor has a task");
    assert_eq!(task.worker, audited);
    assert!(machine.view(Some(audited)).audit_answered, "the audited worker need not answer again");
    assert!(machine.delegated_audit(auditor, 0, audited).is_some());
    let other = workers.iter().copied().find(|&worker| worker != auditor && worker != audited).unwrap();
    assert!(machine.delegated_audit(other, 0, audited).is_none(), "only the named auditor may report");
    machine
        .audit_result(T0 + 12, 0, audited, Verdict::Passed, Some(auditor), Some((auditor, (T0 + 12) * 1000)))
        .unwrap();
    let actions = drain(&mut machine);
    assert!(
        matches!(&actions[0], Action::Record(Event::Audit { judged_by: Some(by), verdict: Verdict::Passed, .. }) if *by == auditor),
        "{actions:?}"
    );
    assert!(machine.view(Some(auditor)).audit_task.is_none(), "reported: the task is gone");
    // A report the coordinator's replay contradicts costs the auditor its
    // stake, once per round.
    machine.auditor_wrong(T0 + 13, 0, auditor, audited, "wrong end state");
    machine.auditor_wrong(T0 + 13, 0, auditor, workers[1], "wrong again");
    let slashes = drain(&mut machine);
    assert!(
        matches!(
            slashes[..],
            [
                Action::Record(Event::AuditorSlashed { amount: 1000, .. }),
                Action::Record(Event::SlashDrawn { uncovered: 1000, .. })
            ]
        ),
        "{slashes:?}"
    );
}

#[test]
fn a_delegated_report_is_judged_by_the_machine_and_only_an_auditor_its_replay_contradicts_is_slashed() {
    let (mut machine, workers) = delegating(&["avx2-fma", "avx2-fma", "avx2-fma"]);
    let open = machine.open_round().unwrap();
    let auditor_of = |worker: WorkerId| open.standings[&worker].auditor.expect("two others of its class");
    let (auditors, segments): (Vec<WorkerId>, Vec<u32>) =
        workers.iter().map(|&worker| (auditor_of(worker), open.standings[&worker].audit.unwrap())).unzip();
    for (index, &worker) in workers.iter().enumerate() {
        let now = T0 + 11 + index as u64;
        machine.audit_answered(now, worker, now * 1000, 0, Digest::of(&[index as u8])).unwrap();
    }
    drain(&mut machine);
    let now = T0 + 20;
    let nonce = |index: u64| (now + index) * 1000;

    // Only the named auditor may report, and a refusal changes nothing.
    let stranger =
        workers.iter().copied().find(|&worker| worker != auditors[0] && worker != workers[0]).unwrap();
    let refused = machine.audit_reported(now, 0, stranger, nonce(0), workers[0], ReportCheck::Agrees);
    assert_eq!(refused.map_err(|refusal| refusal.code), Err(ErrorCode::NotAudited));
    assert!(drain(&mut machine).is_empty(), "a refused report records nothing");

    // A report that agrees decides the audit, judged by the auditor.
    machine.audit_reported(now, 0, auditors[0], nonce(1), workers[0], ReportCheck::Agrees).unwrap();
    let actions = drain(&mut machine);
    assert!(
        matches!(&actions[..], [Action::Record(Event::Audit { worker, verdict: Verdict::Passed, judged_by: Some(by), sender: Some((sent, _)), .. })]
            if *worker == workers[0] && *by == auditors[0] && *sent == auditors[0]),
        "{actions:?}"
    );

    // The auditor lies about an honest worker: the coordinator's replay
    // clears the worker, and the auditor is slashed, with the reason
    // naming what it got wrong, before the verdict is recorded.
    let cleared = ReportCheck::Rechecked { verdict: Verdict::Passed, contradicts: true };
    machine.audit_reported(now, 0, auditors[1], nonce(2), workers[1], cleared).unwrap();
    let actions = drain(&mut machine);
    let reason = format!("its replay of {}'s segment {} in round 0 was wrong", workers[1], segments[1]);
    assert!(
        matches!(&actions[..], [
            Action::Record(Event::AuditorSlashed { auditor, audited, amount: 1000, reason: recorded, .. }),
            Action::Record(Event::SlashDrawn { worker: drawn, .. }),
            Action::Record(Event::Audit { worker, verdict: Verdict::Passed, judged_by: None, .. }),
        ] if *auditor == auditors[1] && *audited == workers[1] && *recorded == reason && *drawn == auditors[1]
            && *worker == workers[1]),
        "{actions:?}"
    );

    // The auditor tells the truth about a cheat: the worker fails and is
    // slashed, the auditor is not.
    let confirmed =
        ReportCheck::Rechecked { verdict: Verdict::Failed("diverged".into()), contradicts: false };
    machine.audit_reported(now, 0, auditors[2], nonce(3), workers[2], confirmed).unwrap();
    let actions = drain(&mut machine);
    assert!(
        actions.iter().any(|action| matches!(action,
            Action::Record(Event::Audit { worker, verdict: Verdict::Failed(_), judged_by: None, .. }) if *worker == workers[2])),
        "{actions:?}"
    );
    assert!(
        actions.iter().any(
            |action| matches!(action, Action::Record(Event::Slash { worker, .. }) if *worker == workers[2])
        ),
        "{actions:?}"
    );
    assert!(
        !actions.iter().any(|action| matches!(action, Action::Record(Event::AuditorSlashed { .. }))),
        "{actions:?}"
    );
    // Judged: a second report is refused.
    let again = machine.audit_reported(now, 0, auditors[2], nonce(4), workers[2], ReportCheck::Agrees);
    assert_eq!(again.map_err(|refusal| refusal.code), Err(ErrorCode::NotAudited));
}

#[test]
fn an_answer_whose_proofs_do_not_hold_fails_its_audit_at_once_and_only_while_it_is_pending() {
    let (mut machine, workers) = running(2, Settings { audit_probability: 1.0, ..settings() });
    commit(&mut machine, T0 + 1, workers[0], 0).unwrap();
    drain(&mut machine);
    let refuted = |machine: &mut Coordinator, now: u64, worker: WorkerId| {
        machine.answer_refuted(now, worker, now * 1000, 0, "the end hash is not the one committed".into())
    };
    assert_eq!(
        refuted(&mut machine, T0 + 2, workers[1]).map_err(|refusal| refusal.code),
        Err(ErrorCode::NotAudited),
        "not committed, so not audited"
    );
    assert!(drain(&mut machine).is_empty());
    refuted(&mut machine, T0 + 3, workers[0]).unwrap();
    let actions = drain(&mut machine);
    assert!(
        matches!(&actions[..2], [
            Action::Record(Event::Audit { worker, verdict: Verdict::Failed(reason), sender: Some((sent, nonce)), .. }),
            Action::Record(Event::Slash { worker: slashed, amount: 1000, .. }),
        ] if *worker == workers[0] && reason == "the end hash is not the one committed"
            && *sent == workers[0] && *nonce == (T0 + 3) * 1000 && *slashed == workers[0]),
        "{actions:?}"
    );
    assert!(machine.pending_audit(workers[0], 0).is_none(), "judged");
    assert_eq!(
        refuted(&mut machine, T0 + 4, workers[0]).map_err(|refusal| refusal.code),
        Err(ErrorCode::NotAudited),
        "judged already"
    );
}

#[test]
fn at_the_reveal_deadline_an_unreported_answer_is_judged_by_the_coordinator_and_a_missing_one_fails() {
    let (mut machine, workers) = delegating(&["avx2-fma", "avx2-fma"]);
    for &worker in &workers {
        reveal(&mut machine, T0 + 11, worker, 0).unwrap();
    }
    // w0 answers (its auditor never reports); w1 never answers.
    machine.audit_answered(T0 + 12, workers[0], (T0 + 12) * 1000, 0, Digest::of(b"an answer")).unwrap();
    drain(&mut machine);
    let deadline = machine.poll_timeout().unwrap();
    machine.handle_timeout(deadline);
    let actions = drain(&mut machine);
    assert!(
        actions
            .iter()
            .any(|action| matches!(action, Action::JudgeAudit { worker, .. } if *worker == workers[0]))
    );
    assert!(actions.iter().any(
        |action| matches!(action, Action::Record(Event::Audit { worker, verdict: Verdict::Unanswered, .. }) if *worker == workers[1])
    ));
    assert!(
        !actions.iter().any(|action| matches!(action, Action::Close { .. })),
        "the round waits for the replay"
    );
    assert_eq!(
        machine.poll_timeout(),
        None,
        "past the deadline the round waits for the replay, not the clock (a driver's timer would spin)"
    );
    machine.handle_timeout(deadline + 1);
    assert!(
        !drain(&mut machine).iter().any(|action| matches!(action, Action::JudgeAudit { .. })),
        "asked once"
    );
    assert!(machine.answered_audit(0, workers[0]).is_some());
    machine.audit_result(deadline + 2, 0, workers[0], Verdict::Passed, None, None).unwrap();
    let actions = drain(&mut machine);
    assert!(
        matches!(actions.last(), Some(Action::Close { accepted, .. }) if accepted == &workers[..1]),
        "{actions:?}"
    );
}

#[test]
fn past_the_reveal_deadline_the_verdicts_hand_the_round_back_to_the_clock() {
    // Goal: a round past its reveal deadline waits for the driver's replays
    // without naming the passed deadline (a driver's timer would fire again
    // and again), and once the verdicts are in, the deadline closes it even
    // though a participant committed and never revealed (no verdict closes
    // that round: only the clock does).
    let settings = Settings { audit_probability: 0.5, quorum: 1, ..settings() };
    let (mut machine, workers) = running(6, settings);
    for &worker in &workers {
        commit(&mut machine, T0 + 1, worker, 0).unwrap();
    }
    drain(&mut machine);
    let (audited, unaudited): (Vec<WorkerId>, Vec<WorkerId>) =
        workers.iter().partition(|&&worker| machine.pending_audit(worker, 0).is_some());
    assert!(!audited.is_empty() && unaudited.len() >= 2, "{audited:?} {unaudited:?}");
    for &worker in &audited {
        machine.audit_answered(T0 + 2, worker, (T0 + 2) * 1000, 0, Digest::of(b"an answer")).unwrap();
        reveal(&mut machine, T0 + 3, worker, 0).unwrap();
    }
    let silent = unaudited[0];
    for &worker in &unaudited[1..] {
        reveal(&mut machine, T0 + 3, worker, 0).unwrap();
    }
    drain(&mut machine);
    let deadline = machine.poll_timeout().expect("the reveal deadline");
    machine.handle_timeout(deadline);
    assert!(!drain(&mut machine).iter().any(|action| matches!(action, Action::Close { .. })));
    assert_eq!(machine.poll_timeout(), None, "nothing for the clock to do while the replays run");
    for (index, &worker) in audited.iter().enumerate() {
        machine.audit_result(deadline + 1 + index as u64, 0, worker, Verdict::Passed, None, None).unwrap();
    }
    assert!(
        !drain(&mut machine).iter().any(|action| matches!(action, Action::Close { .. })),
        "{silent} never revealed"
    );
    let again = machine.poll_timeout().expect("the verdicts are in: the deadline has work again");
    assert!(again <= deadline + 1 + audited.len() as u64, "a deadline already passed: {again}");
    machine.handle_timeout(deadline + 100);
    let actions = drain(&mut machine);
    let Some(Action::Close { round: 0, accepted, .. }) = actions.last() else { panic!("{actions:?}") };
    assert!(!accepted.contains(&silent) && accepted.len() == workers.len() - 1, "{accepted:?}");
}

#[test]
fn a_worker_keeps_its_determinism_class() {
    let mut machine = Coordinator::new(settings(), Digest::of(b"run"), model(0), MASTER);
    machine.register(T0, key(0), "avx2-fma").unwrap();
    assert_eq!(machine.register(T0, key(0), "portable").unwrap_err().code, ErrorCode::BadRequest);
    assert_eq!(machine.register(T0, key(1), "").unwrap_err().code, ErrorCode::BadRequest);
    assert_eq!(machine.register(T0, key(1), "a b").unwrap_err().code, ErrorCode::BadRequest);
}

/// Round 0 of three workers, every one audited, committed, answered and
/// revealed: all that is left is the driver's replays. Returns the
/// actions of the reveals, after those of the commitments and answers.
fn awaiting_replays(machine: &mut Coordinator, workers: &[WorkerId]) -> (Vec<Action>, Vec<Action>) {
    for &worker in workers {
        commit(machine, T0 + 1, worker, 0).unwrap();
        machine
            .audit_answered(T0 + 2, worker, (T0 + 2) * 1000 + worker.0, 0, Digest::of(b"an answer"))
            .unwrap();
    }
    let committed = drain(machine);
    for &worker in workers {
        reveal(machine, T0 + 3, worker, 0).unwrap();
    }
    (committed, drain(machine))
}

fn pass(machine: &mut Coordinator, now: u64, worker: WorkerId) {
    machine.audit_result(now, 0, worker, Verdict::Passed, None, None).unwrap();
}

#[test]
fn the_next_round_opens_ahead_of_the_last_verdicts_and_is_adopted_as_it_was_when_they_pass() {
    let (mut machine, workers) = running(3, Settings { audit_probability: 1.0, ..settings() });
    let (_, actions) = awaiting_replays(&mut machine, &workers);
    let Some(Action::Speculate { round: 0, base_model, accepted }) = actions.last() else {
        panic!("{actions:?}")
    };
    assert_eq!((*base_model, accepted), (model(0), &workers));
    assert!(!actions.iter().any(|action| matches!(action, Action::Close { .. })), "verdicts pending");

    machine.handle_speculated(T0 + 10, 0, Aggregated::all(result(1)));
    let actions = drain(&mut machine);
    assert_eq!(actions, vec![Action::OpenProvisional { round: 1, after: 0, base_model: model(1) }]);
    let view = machine.view(Some(workers[1]));
    assert!(view.provisional);
    assert_eq!((view.phase, view.round, view.model), (Phase::Committing, Some(1), model(1)));
    let assignment = view.assignment.expect("participants are assigned at once");
    assert_eq!((assignment.round, assignment.base_model, assignment.slot), (1, model(1), 1));
    // Trained already: too early to commit, and nothing changes.
    let refusal =
        machine.commit(T0 + 20, workers[1], (T0 + 20) * 1000, 1, model(1), None, commitment(workers[1], 1));
    assert_eq!(refusal.unwrap_err().code, ErrorCode::TooEarly);
    assert!(drain(&mut machine).is_empty());
    assert_eq!(machine.open_round().unwrap().id, 0, "round 0 is still the open round");

    pass(&mut machine, T0 + 30, workers[0]);
    pass(&mut machine, T0 + 31, workers[1]);
    assert!(!drain(&mut machine).iter().any(|action| matches!(action, Action::Close { .. })));
    pass(&mut machine, T0 + 40, workers[2]);
    let actions = drain(&mut machine);
    assert!(
        matches!(actions.last(), Some(Action::Close { round: 0, accepted, .. }) if accepted == &workers),
        "{actions:?}"
    );
    machine.handle_aggregated(T0 + 41, 0, Aggregated::all(result(1)));
    let actions = drain(&mut machine);
    let Some(Action::Record(Event::RoundOpened {
        round: 1,
        base_model,
        participants,
        opened_unix_ms,
        commit_deadline_unix_ms,
        ..
    })) = actions.last()
    else {
        panic!("{actions:?}")
    };
    assert_eq!((*base_model, participants), (model(1), &workers));
    assert_eq!(
        (*opened_unix_ms, *commit_deadline_unix_ms),
        (T0 + 10, T0 + 10 + 10_000),
        "the adopted round opened when it was published"
    );
    assert!(!machine.view(Some(workers[1])).provisional);
    assert_eq!(commit(&mut machine, T0 + 50, workers[1], 1), Ok(Outcome::Recorded(Recorded::Accepted)));
}

#[test]
fn a_failed_verdict_withdraws_the_provisional_round_and_the_next_opens_without_the_update() {
    let (mut machine, workers) = running(3, Settings { audit_probability: 1.0, ..settings() });
    awaiting_replays(&mut machine, &workers);
    machine.handle_speculated(T0 + 10, 0, Aggregated::all(result(1)));
    drain(&mut machine);
    pass(&mut machine, T0 + 20, workers[0]);
    machine
        .audit_result(T0 + 21, 0, workers[1], Verdict::Failed("replayed to another state".into()), None, None)
        .unwrap();
    let actions = drain(&mut machine);
    assert!(actions.iter().any(
        |action| matches!(action, Action::Record(Event::Slash { worker, .. }) if *worker == workers[1])
    ));
    let withdrawn =
        actions.iter().position(|action| action == &Action::Withdraw { round: 0, provisional: Some(1) });
    let respeculated = actions.iter().position(|action| {
        matches!(action, Action::Speculate { round: 0, accepted, .. } if accepted == &vec![workers[0], workers[2]])
    });
    assert!(withdrawn.is_some() && respeculated > withdrawn, "a new bet on what is left: {actions:?}");
    assert!(
        !machine.view(Some(workers[0])).provisional,
        "no provisional round until the new bet is aggregated"
    );
    // Someone who trained on the withdrawn model is refused as stale.
    machine.handle_speculated(T0 + 30, 0, Aggregated::all(result(7)));
    assert_eq!(
        drain(&mut machine),
        vec![Action::OpenProvisional { round: 1, after: 0, base_model: model(7) }]
    );
    let stale =
        machine.commit(T0 + 31, workers[0], (T0 + 31) * 1000, 1, model(1), None, commitment(workers[0], 1));
    assert_eq!(stale.unwrap_err().code, ErrorCode::StaleModel);

    pass(&mut machine, T0 + 40, workers[2]);
    let actions = drain(&mut machine);
    assert!(
        matches!(actions.last(), Some(Action::Close { round: 0, accepted, .. }) if accepted == &vec![workers[0], workers[2]]),
        "{actions:?}"
    );
    machine.handle_aggregated(T0 + 41, 0, Aggregated::all(result(7)));
    let actions = drain(&mut machine);
    assert!(
        matches!(actions.last(), Some(Action::Record(Event::RoundOpened { round: 1, base_model, opened_unix_ms, .. })) if *base_model == model(7) && *opened_unix_ms == T0 + 30),
        "{actions:?}"
    );
}

#[test]
fn a_round_opened_again_on_the_same_model_with_other_participants_refuses_work_for_the_old_shards() {
    // Goal: no honest worker fails an audit for following its assignment.
    // A provisional round withdrawn because an audit failed can open again
    // on the *same* model (the failed update did not count: the checks had
    // refused it) with fewer participants (the failed worker's bond is
    // exhausted), so every shard moves; work trained for the old shard
    // would fail its replay. Method: bond = stake, three workers audited,
    // the driver's aggregate the same with and without the cheat.
    let settings = Settings { audit_probability: 1.0, bond: 1000, ..settings() };
    let (mut machine, workers) = running(3, settings);
    awaiting_replays(&mut machine, &workers);
    machine.handle_speculated(T0 + 10, 0, Aggregated::all(result(1)));
    drain(&mut machine);
    let old = machine.view(Some(workers[2])).assignment.expect("assigned the provisional round");
    assert_eq!((old.base_model, old.shard()), (model(1), Shard { slot: 2, slots: 3 }));
    pass(&mut machine, T0 + 20, workers[0]);
    machine
        .audit_result(T0 + 21, 0, workers[1], Verdict::Failed("replayed to another state".into()), None, None)
        .unwrap();
    drain(&mut machine);
    machine.handle_speculated(T0 + 30, 0, Aggregated::all(result(1)));
    assert_eq!(
        drain(&mut machine),
        vec![Action::OpenProvisional { round: 1, after: 0, base_model: model(1) }],
        "the same model again"
    );
    let new = machine.view(Some(workers[2])).assignment.expect("still a participant");
    assert_eq!((new.base_model, new.shard()), (model(1), Shard { slot: 1, slots: 2 }), "w1 is out");
    let commit_shard = |machine: &mut Coordinator, now: u64, worker: WorkerId, shard: Shard| {
        machine
            .commit(now, worker, now * 1000, 1, model(1), Some(shard), commitment(worker, 1))
            .map_err(|refusal| refusal.code)
    };
    // Trained for the withdrawn round: stale, whatever the phase.
    assert_eq!(commit_shard(&mut machine, T0 + 31, workers[2], old.shard()), Err(ErrorCode::StaleModel));
    assert_eq!(commit_shard(&mut machine, T0 + 32, workers[2], new.shard()), Err(ErrorCode::TooEarly));
    pass(&mut machine, T0 + 40, workers[2]);
    let Some(Action::Close { round: 0, accepted, .. }) = drain(&mut machine).last().cloned() else {
        panic!("round 0 closes")
    };
    assert_eq!(accepted, vec![workers[0], workers[2]]);
    machine.handle_aggregated(T0 + 41, 0, Aggregated::all(result(1)));
    drain(&mut machine);
    assert_eq!(machine.open_round().unwrap().participants, vec![workers[0], workers[2]]);
    let refused = machine
        .commit(
            T0 + 50,
            workers[2],
            (T0 + 50) * 1000,
            1,
            model(1),
            Some(old.shard()),
            commitment(workers[2], 1),
        )
        .unwrap_err();
    assert_eq!(refused.code, ErrorCode::StaleModel);
    assert!(refused.message.contains("trains shard 1 of 2, not shard 2 of 3"), "{}", refused.message);
    assert!(drain(&mut machine).is_empty(), "a refusal records nothing");
    assert_eq!(
        commit_shard(&mut machine, T0 + 51, workers[2], new.shard()),
        Ok(Outcome::Recorded(Recorded::Accepted)),
        "trained again for its new shard"
    );
    assert_eq!(
        commit(&mut machine, T0 + 52, workers[0], 1),
        Ok(Outcome::Recorded(Recorded::Accepted)),
        "a commitment that names no shard is checked as before"
    );
}

#[test]
fn a_bet_that_would_fail_the_round_opens_nothing_and_a_close_without_it_is_the_usual_one() {
    // Quorum 3 of 3: losing one update fails the round.
    let (mut machine, workers) = running(3, Settings { audit_probability: 1.0, quorum: 3, ..settings() });
    awaiting_replays(&mut machine, &workers);
    // The checks would refuse one update: the round would fail, so nothing opens ahead.
    let refused = Aggregated { result: Some(result(1)), refused: vec![(workers[2], "outsized".into())] };
    machine.handle_speculated(T0 + 10, 0, refused);
    assert!(drain(&mut machine).is_empty());
    assert_eq!(machine.provisional_round(), None);
    machine.audit_result(T0 + 20, 0, workers[0], Verdict::Failed("no".into()), None, None).unwrap();
    let actions = drain(&mut machine);
    assert!(actions.contains(&Action::Withdraw { round: 0, provisional: None }), "{actions:?}");
    assert!(
        !actions.iter().any(|action| matches!(action, Action::Speculate { .. })),
        "below the quorum: no bet"
    );
    pass(&mut machine, T0 + 21, workers[1]);
    pass(&mut machine, T0 + 22, workers[2]);
    let actions = drain(&mut machine);
    assert!(
        actions.iter().any(|action| matches!(action, Action::Record(Event::RoundFailed { round: 0, .. }))),
        "{actions:?}"
    );
    assert!(!actions.iter().any(|action| matches!(action, Action::Withdraw { .. })));
}

#[test]
fn the_last_round_is_not_bet_on_and_a_restart_bets_again_on_what_was_persisted() {
    let settings = Settings { audit_probability: 1.0, rounds: 1, ..settings() };
    let (mut machine, workers) = running(3, settings.clone());
    let (_, actions) = awaiting_replays(&mut machine, &workers);
    assert!(!actions.iter().any(|action| matches!(action, Action::Speculate { .. })), "no round follows");

    // Two rounds: a restart while the bet is out forgets it and bets again.
    let settings = Settings { rounds: 2, min_workers: 3, ..settings };
    let mut machine = Coordinator::new(settings.clone(), Digest::of(b"run"), model(0), MASTER);
    let mut durable = Durable::new();
    for index in 0..3 {
        machine.register(T0, key(index), "avx2-fma").unwrap();
    }
    durable.record(drain(&mut machine));
    let (committed, revealed) = awaiting_replays(&mut machine, &workers);
    durable.record(committed);
    durable.record(revealed);
    machine.handle_speculated(T0 + 10, 0, Aggregated::all(result(1)));
    let provisional = durable.record(drain(&mut machine));
    assert!(matches!(provisional[..], [Action::OpenProvisional { round: 1, .. }]));
    let opened = durable.store.events().unwrap();
    let opened = opened.iter().filter(|event| matches!(event, Event::RoundOpened { .. })).count();
    assert_eq!(opened, 1, "a provisional round is not durable");
    let mut restored = durable.restore(settings, T0 + 100);
    let actions = drain(&mut restored);
    let replays: Vec<Action> = workers
        .iter()
        .map(|&worker| {
            let (segment, _) = restored.answered_audit(0, worker).expect("answered, unjudged");
            Action::JudgeAudit { round: 0, worker, segment }
        })
        .collect();
    assert_eq!(
        actions,
        [replays, vec![Action::Speculate { round: 0, base_model: model(0), accepted: workers.clone() }]]
            .concat(),
        "the replays the dead process was running start again at once"
    );
}

#[test]
fn a_just_opened_round_is_shown_without_the_machine_exactly_as_the_machine_shows_it() {
    // The driver serves `opened()` while it makes the opening durable.
    let (mut machine, workers) = running(3, Settings { audit_probability: 1.0, ..settings() });
    let stranger = WorkerId(99);
    let opened = machine.opened().expect("round 0 just opened");
    for worker in workers.iter().copied().chain([stranger]).map(Some).chain([None]) {
        assert_eq!(opened.view(worker), machine.view(worker));
    }
    commit(&mut machine, T0 + 1, workers[0], 0).unwrap();
    assert_eq!(machine.opened(), None, "once someone committed, only the machine knows the round");
    drain(&mut machine);
    for &worker in &workers[1..] {
        commit(&mut machine, T0 + 1, worker, 0).unwrap();
    }
    for &worker in &workers {
        machine
            .audit_answered(T0 + 2, worker, (T0 + 2) * 1000 + worker.0, 0, Digest::of(b"an answer"))
            .unwrap();
        reveal(&mut machine, T0 + 3, worker, 0).unwrap();
    }
    drain(&mut machine);
    machine.handle_speculated(T0 + 10, 0, Aggregated::all(result(1)));
    let opened = machine.opened().expect("the provisional round");
    assert_eq!(opened.id(), 1);
    for worker in workers.iter().copied().chain([stranger]).map(Some).chain([None]) {
        let view = opened.view(worker);
        assert!(view.provisional);
        assert_eq!(view, machine.view(worker));
    }
}

#[test]
fn a_late_commitment_sent_again_after_its_round_closed_is_the_same_late_commitment() {
    // Method: a commitment arrives in round 0's reveal phase (late), the
    // round closes, and the worker, whose answer was lost, sends it again.
    // Before the past round remembered late commitments, the second copy
    // was recorded a second time, which the store refuses (and the
    // coordinator halted on).
    let settings = Settings { min_workers: 3, ..settings() };
    let (mut machine, mut durable, workers) = durable_running(3, &settings);
    for &worker in &workers[..2] {
        commit(&mut machine, T0 + 10, worker, 0).unwrap();
    }
    machine.handle_timeout(T0 + 10_000);
    assert_eq!(commit(&mut machine, T0 + 10_001, workers[2], 0), Ok(Outcome::Recorded(Recorded::Late)));
    for &worker in &workers[..2] {
        reveal(&mut machine, T0 + 10_002, worker, 0).unwrap();
    }
    let actions = drain(&mut machine);
    assert!(matches!(actions.last(), Some(Action::Close { round: 0, .. })));
    machine.handle_aggregated(T0 + 10_003, 0, Aggregated::all(result(1)));
    durable.record(actions);
    durable.record(drain(&mut machine));
    assert_eq!(machine.completed_rounds(), 1);
    let again = |machine: &mut Coordinator, now: u64| {
        machine
            .commit(now, workers[2], now * 1000, 0, model(0), None, commitment(workers[2], 0))
            .map_err(|refusal| refusal.code)
    };
    assert_eq!(
        again(&mut machine, T0 + 10_004),
        Ok(Outcome::AlreadyRecorded(Recorded::Late)),
        "the same, again"
    );
    assert!(durable.record(drain(&mut machine)).is_empty(), "nothing new to record");
    let mut restored = durable.restore(settings, T0 + 10_005);
    assert_eq!(
        again(&mut restored, T0 + 10_006),
        Ok(Outcome::AlreadyRecorded(Recorded::Late)),
        "and a restored coordinator says the same"
    );
}

fn three_option_menu() -> ContractMenu {
    let option = |cost: f64, contribution: f64| MenuOption {
        cost,
        probability: 1.0 / 3.0,
        contribution,
        required_contribution: contribution.ceil() as u64,
        expected_reward_value: 50.0 + contribution / 10.0,
        reward_ratio: 0.9,
        reservation_utility: 0.0,
        utility: 1.0,
    };
    ContractMenu {
        participants: 3,
        accuracy: AccuracySpec {
            kind: "power-law".into(),
            a_opt: Some(0.85),
            k: None,
            unit: None,
            b: Some(4.7),
            c: Some(0.5),
        },
        valuation_scale: 100.0,
        metric: crowdtrain_recipe::Metric::Accuracy,
        options: vec![option(0.004, 64.0), option(0.001, 128.0), option(0.0005, 256.0)],
        expected_accuracy: 0.8,
        max_violation: 0.0,
        kkt_residual: 0.0,
    }
}

/// A participant's choice is its own (signed), checked against the menu,
/// recorded, replayable, and final once the first round opens.
#[test]
fn choices_are_signed_checked_recorded_and_final_after_the_first_round() {
    let settings = Settings { min_workers: 3, ..settings() };
    let run = Digest::of(b"run");
    let identity = |index: u8| Identity::from_seed([index + 1; 32]);
    let mut durable = Durable::new();
    durable
        .store
        .record(T0, &[Event::ContractPublished { menu: three_option_menu() }], &[], &durable.signer)
        .unwrap();
    let mut machine = durable.restore(settings.clone(), T0);
    assert!(machine.offers_contract());
    let w0 = machine.register(T0, key(0), "avx2-fma").unwrap().0;
    let w1 = machine.register(T0, key(1), "avx2-fma").unwrap().0;
    durable.record(drain(&mut machine));

    let refused = |result: Result<(), crowdtrain_protocol::Refusal>| result.unwrap_err().code;
    // Registering needs a choice until the worker has made one; the check
    // records nothing.
    assert_eq!(refused(machine.check_choice_at_registration(&key(0), false)), ErrorCode::BadRequest);
    assert_eq!(refused(machine.check_choice_at_registration(&key(7), false)), ErrorCode::BadRequest);
    assert_eq!(machine.check_choice_at_registration(&key(7), true), Ok(()));
    assert!(drain(&mut machine).is_empty());
    // Someone else's signature, a choice for another run, an option the menu lacks.
    assert_eq!(
        refused(machine.choose(T0, key(0), ContractChoice::sign(&identity(1), run, 1))),
        ErrorCode::BadSignature
    );
    assert_eq!(
        refused(machine.choose(T0, key(0), ContractChoice::sign(&identity(0), Digest::of(b"x"), 1))),
        ErrorCode::BadSignature
    );
    assert_eq!(
        refused(machine.choose(T0, key(0), ContractChoice::sign(&identity(0), run, 3))),
        ErrorCode::BadRequest
    );
    assert_eq!(
        refused(machine.choose(T0, key(9), ContractChoice::sign(&identity(9), run, 0))),
        ErrorCode::UnknownWorker
    );
    assert!(drain(&mut machine).is_empty(), "a refused choice records nothing");

    // Before the first round a choice may change; the same choice again records nothing.
    machine.choose(T0, key(0), ContractChoice::sign(&identity(0), run, 0)).unwrap();
    machine.choose(T0, key(0), ContractChoice::sign(&identity(0), run, 2)).unwrap();
    machine.choose(T0, key(1), ContractChoice::sign(&identity(1), run, 1)).unwrap();
    let recorded = durable.record(drain(&mut machine));
    assert_eq!(recorded.len(), 3);
    machine.choose(T0, key(0), ContractChoice::sign(&identity(0), run, 2)).unwrap();
    assert!(drain(&mut machine).is_empty());
    assert_eq!((machine.choice(w0), machine.choice(w1)), (Some(2), Some(1)));
    assert_eq!(
        machine.check_choice_at_registration(&key(0), false),
        Ok(()),
        "registering again after choosing only says the worker is alive"
    );

    // The third worker opens round 0: choices are final from now on.
    let w2 = machine.register(T0 + 1, key(2), "avx2-fma").unwrap().0;
    durable.record(drain(&mut machine));
    assert!(machine.open_round().is_some());
    assert_eq!(
        refused(machine.choose(T0 + 2, key(0), ContractChoice::sign(&identity(0), run, 1))),
        ErrorCode::Late
    );
    machine.choose(T0 + 2, key(0), ContractChoice::sign(&identity(0), run, 2)).unwrap();
    // A first choice is still taken (a participant who joins late).
    machine.choose(T0 + 2, key(2), ContractChoice::sign(&identity(2), run, 0)).unwrap();
    durable.record(drain(&mut machine));

    // What the ledger holds restores the same choices, equally final.
    let mut restored = durable.restore(settings, T0 + 3);
    assert_eq!((restored.choice(w0), restored.choice(w1), restored.choice(w2)), (Some(2), Some(1), Some(0)));
    assert_eq!(
        refused(restored.choose(T0 + 3, key(1), ContractChoice::sign(&identity(1), run, 2))),
        ErrorCode::Late
    );
    let chosen = durable.store.choices().unwrap();
    assert_eq!(chosen.len(), 3);
    assert_eq!(chosen[&w0].option, 2);
    assert!(chosen[&w0].verify(&key(0), run).is_ok(), "anyone can check a choice against the worker's key");
    assert_eq!(durable.store.contract_menu().unwrap(), Some(three_option_menu()));
}

/// Two participants of a run with the three-option menu (64, 128 and 256
/// work units; a submission is 64), round 0 open: `w0` chose option 0 and
/// `w1` option 2.
fn contract_run(settings: Settings) -> (Durable, Coordinator, [WorkerId; 2]) {
    let run = Digest::of(b"run");
    let mut durable = Durable::new();
    durable
        .store
        .record(T0, &[Event::ContractPublished { menu: three_option_menu() }], &[], &durable.signer)
        .unwrap();
    let mut machine = durable.restore(Settings { min_workers: 2, quorum: 1, ..settings }, T0);
    let w0 = machine.register(T0, key(0), "avx2-fma").unwrap().0;
    machine.choose(T0, key(0), ContractChoice::sign(&Identity::from_seed([1; 32]), run, 0)).unwrap();
    let w1 = machine.register(T0, key(1), "avx2-fma").unwrap().0;
    machine.choose(T0, key(1), ContractChoice::sign(&Identity::from_seed([2; 32]), run, 2)).unwrap();
    durable.record(drain(&mut machine));
    assert!(machine.open_round().is_some());
    (durable, machine, [w0, w1])
}

fn finished(actions: &[Action]) -> bool {
    actions.iter().any(|action| matches!(action, Action::Record(Event::RunFinished { .. })))
}

/// A run with a contract goes on past its rounds while a live participant
/// has not delivered its option's contribution, and finishes the round it
/// has; a restarted machine decides the same; the extension is bounded.
#[test]
fn rounds_go_on_until_every_live_chooser_delivered_its_contribution_within_the_bound() {
    let extended = Settings { rounds: 2, contract_extra_rounds: 3, ..settings() };
    let (mut durable, mut machine, workers) = contract_run(extended.clone());
    for round in 0..4 {
        let now = T0 + round * 100 + 1;
        let mut actions = durable.record(deliver(&mut machine, now, &workers, round));
        machine.handle_aggregated(now + 2, round, Aggregated::all(result(round + 1)));
        actions.extend(durable.record(drain(&mut machine)));
        // w1 owes 256 units: four rounds of 64, two more than the run's rounds.
        assert_eq!(finished(&actions), round == 3, "round {round}");
        assert_eq!(machine.run_complete(), round == 3);
        if round < 3 {
            assert_eq!(machine.open_round().map(|open| open.id), Some(round + 1), "an extra round opens");
            let restored = durable.restore(extended.clone(), now + 3);
            assert_eq!(restored.open_round().map(|open| open.id), Some(round + 1), "restored the same");
        }
    }
    assert_eq!(machine.phase(), Phase::Finished);
    assert_eq!(durable.restore(extended, T0 + 1_000).phase(), Phase::Finished);

    // At most `contract_extra_rounds` more: with one, the run ends after three.
    let bounded = Settings { rounds: 2, contract_extra_rounds: 1, ..settings() };
    let (mut durable, mut machine, workers) = contract_run(bounded);
    let mut ends = Vec::new();
    for round in 0..3 {
        let now = T0 + round * 100 + 1;
        durable.record(deliver(&mut machine, now, &workers, round));
        machine.handle_aggregated(now + 2, round, Aggregated::all(result(round + 1)));
        ends.push(finished(&durable.record(drain(&mut machine))));
    }
    assert_eq!(ends, [false, false, true]);
}

/// A participant short of its contribution that left (timed out) had its
/// chance: the run does not wait for it, and a machine with nothing open
/// asks to be woken when the last short participant times out.
#[test]
fn a_chooser_that_left_short_of_its_contribution_does_not_hold_the_run() {
    let waiting = Settings { rounds: 1, contract_extra_rounds: 5, ..settings() };
    let (mut durable, mut machine, [w0, _]) = contract_run(waiting.clone());
    // Only w0 delivers; w1 was last seen at T0 and is gone after 60 s.
    commit(&mut machine, T0 + 1, w0, 0).unwrap();
    machine.handle_timeout(T0 + 10_001);
    reveal(&mut machine, T0 + 10_002, w0, 0).unwrap();
    durable.record(drain(&mut machine));
    machine.handle_aggregated(T0 + 70_001, 0, Aggregated::all(result(1)));
    assert!(finished(&durable.record(drain(&mut machine))));

    // The same round closed while w1 is still live: the run waits for it,
    // with a wake-up when it would time out, and finishes then.
    let (mut durable, mut machine, [w0, _]) = contract_run(waiting);
    commit(&mut machine, T0 + 1, w0, 0).unwrap();
    machine.handle_timeout(T0 + 10_001);
    reveal(&mut machine, T0 + 10_002, w0, 0).unwrap();
    durable.record(drain(&mut machine));
    machine.handle_aggregated(T0 + 10_003, 0, Aggregated::all(result(1)));
    assert!(!finished(&durable.record(drain(&mut machine))));
    // Round 1 opened with both; it fails for want of a quorum once w0 stops too.
    assert!(machine.open_round().is_some());
    let wake = loop {
        match machine.poll_timeout() {
            Some(deadline) if machine.open_round().is_some() => {
                machine.handle_timeout(deadline);
                durable.record(drain(&mut machine));
            }
            other => break other,
        }
    };
    if machine.phase() != Phase::Finished {
        let wake = wake.expect("a short, live participant sets a wake-up");
        machine.handle_timeout(wake);
        assert!(finished(&durable.record(drain(&mut machine))));
    }
    assert_eq!(machine.phase(), Phase::Finished);
}

/// What the coordinator's scorer does after round `round` closes: pays
/// every credited worker `credits`, then vests what the window releases;
/// records it all, as the driver does, and notes it to the machine.
fn score(machine: &mut Coordinator, durable: &mut Durable, round: u64, credited: &[WorkerId], credits: u64) {
    let mut events: Vec<Event> = credited
        .iter()
        .map(|&worker| {
            Event::Reward(crowdtrain_protocol::ledger::Reward {
                round,
                worker,
                score: 0.1,
                quality: 0.0,
                multiplier: 1.0,
                units: credits,
                credits,
                deviation: None,
                gate: crowdtrain_protocol::ledger::PayGate::NoPower,
            })
        })
        .collect();
    events.push(Event::RoundScored { round });
    let mut collateral = machine.collateral().clone();
    events.iter().for_each(|event| collateral.apply(event));
    events.extend(collateral.vesting(round, machine.settings().vesting_rounds, |_| false));
    durable.store.record(T0, &events, &[], &durable.signer).unwrap();
    machine.note(&events);
}

#[test]
fn slashes_draw_escrowed_credits_then_the_bond_and_an_exhausted_bond_gets_no_work_even_after_a_restart() {
    // Stake 1000, bond 2000: a worker's first slash takes its escrowed
    // credits and the rest from its bond; the second leaves less than a
    // stake of bond, and it gets no more work.
    let settings = Settings { rounds: 12, quorum: 1, bond: 2000, vesting_rounds: 4, ..settings() };
    let mut machine = Coordinator::new(settings.clone(), Digest::of(b"run"), model(0), MASTER);
    let mut durable = Durable::new();
    let workers: Vec<WorkerId> =
        (0..3).map(|index| machine.register(T0, key(index), "avx2-fma").unwrap().0).collect();
    let registered = durable.record(drain(&mut machine));
    let deposits = registered
        .iter()
        .filter(|action| matches!(action, Action::Record(Event::BondDeposited { amount: 2000, .. })))
        .count();
    assert_eq!(deposits, 3, "each worker registers with its bond");
    let cheat = workers[1];
    let mut now = T0 + 10;
    let mut draws = Vec::new();
    for round in 0..8u64 {
        let participants = machine.open_round().unwrap().participants.clone();
        // The cheat is honest in rounds 0 to 2, then reveals something else
        // than it committed in rounds 3 and 4.
        let cheating = round >= 3 && participants.contains(&cheat);
        for &worker in &participants {
            commit(&mut machine, now, worker, round).unwrap();
        }
        for &worker in &participants {
            if worker == cheat && cheating {
                let base = base(&machine);
                let outcome = machine
                    .reveal(now + 1, worker, (now + 1) * 1000 + 1, round, base, Digest::of(b"not it"), None)
                    .unwrap();
                assert_eq!(outcome, Outcome::Recorded(Recorded::Mismatch));
            } else {
                reveal(&mut machine, now + 1, worker, round).unwrap();
            }
        }
        let actions = durable.record(drain(&mut machine));
        draws.extend(actions.iter().filter_map(|action| match action {
            Action::Record(event @ Event::SlashDrawn { .. }) => Some(event.clone()),
            _ => None,
        }));
        let Some(Action::Close { accepted, .. }) = actions.last().cloned() else { panic!("{actions:?}") };
        machine.handle_aggregated(now + 2, round, Aggregated::all(result(round + 1)));
        durable.record(drain(&mut machine));
        score(&mut machine, &mut durable, round, &accepted, 64);
        now += 100;
        if round == 4 {
            assert!(!machine.open_round().unwrap().participants.contains(&cheat), "no work for it");
        }
    }
    assert_eq!(
        draws,
        [
            // Round 3: its escrow holds rounds 0 to 2 (nothing vested yet
            // with a window of 4), then the bond pays the rest.
            Event::SlashDrawn { round: 3, worker: cheat, escrow: 192, bond: 808, uncovered: 0 },
            // Round 4: no escrow left (round 3 earned nothing); the bond
            // pays all, leaving 192: less than a stake.
            Event::SlashDrawn { round: 4, worker: cheat, escrow: 0, bond: 1000, uncovered: 0 },
        ]
    );
    let account = machine.collateral().account(cheat).unwrap().clone();
    assert_eq!((account.bond, account.escrowed(), account.vested), (192, 0, 0));
    let honest = machine.collateral().account(workers[0]).unwrap().clone();
    assert_eq!((honest.bond, honest.vested, honest.escrowed()), (2000, 4 * 64, 4 * 64), "rounds 0-3 vested");
    // Refused with a clear error, at reads and commitments alike.
    let refused = machine.read(now, &key(1), now * 1000).unwrap_err();
    assert_eq!(refused.code, ErrorCode::BondExhausted);
    assert!(
        refused.message.contains("bond is exhausted") && refused.message.contains("1000"),
        "{}",
        refused.message
    );
    assert_eq!(commit(&mut machine, now, cheat, 8), Err(ErrorCode::BondExhausted));
    // A restarted coordinator replays bonds, draws and vesting from the
    // ledger: the same accounts, the same refusal.
    let mut restored = durable.restore(settings, now);
    assert_eq!(restored.collateral(), machine.collateral());
    assert_eq!(restored.read(now + 1, &key(1), (now + 1) * 1000).unwrap_err().code, ErrorCode::BondExhausted);
    assert!(restored.read(now + 1, &key(0), (now + 1) * 1000).is_ok(), "an honest worker still works");
    let totals = durable.store.collateral().unwrap();
    assert_eq!(totals[&cheat].deposited, 2000);
    assert_eq!(totals[&cheat].drawn_from_bond, 1808);
    assert_eq!(totals[&cheat].drawn_from_escrow, 192);
    assert_eq!(totals[&cheat].uncovered, 0);
    assert_eq!(totals[&workers[0]].vested, 4 * 64);
}

/// A commitment of `worker` in `round` under a codec with error feedback:
/// residual number `residual_in` (`None`: zero) in, `residual_out` out.
fn chained(worker: WorkerId, round: u64, residual_in: Option<u8>, residual_out: u8) -> Commitment {
    let residual = |index: u8| audit::residual_digest(&[f32::from(index); 3]);
    Commitment {
        residual_in: residual_in.map(residual),
        residual_out: Some(residual(residual_out)),
        ..commitment(worker, round)
    }
}

/// Commits `commitment` for `worker` in `round` and makes the records durable.
fn commit_durably(
    machine: &mut Coordinator,
    durable: &mut Durable,
    now: u64,
    worker: WorkerId,
    round: u64,
    commitment: Commitment,
) -> Result<Outcome, ErrorCode> {
    let base = base(machine);
    let outcome = machine.commit(now, worker, now * 1000, round, base, None, commitment);
    durable.record(drain(machine));
    outcome.map_err(|refusal| refusal.code)
}

/// Judges every audit of `round` (all drawn: probability 1), `failed` ones
/// failed, reveals every update, and closes the round, durably.
fn finish_round(
    machine: &mut Coordinator,
    durable: &mut Durable,
    now: u64,
    workers: &[WorkerId],
    round: u64,
    failed: Option<WorkerId>,
) {
    for &worker in workers {
        let verdict =
            if Some(worker) == failed { Verdict::Failed("another residual".into()) } else { Verdict::Passed };
        machine.audit_result(now, round, worker, verdict, None, None).unwrap();
        durable.record(drain(machine));
    }
    let mut actions = Vec::new();
    for &worker in workers {
        let _ = reveal(machine, now + 1, worker, round);
        actions.extend(durable.record(drain(machine)));
    }
    assert!(
        actions.iter().any(|action| matches!(action, Action::Close { .. })),
        "round {round}: {actions:?}"
    );
    machine.handle_aggregated(now + 2, round, Aggregated::all(result(round + 1)));
    durable.record(drain(machine));
    assert_eq!(machine.open_round().map(|open| open.id), Some(round + 1), "round {round} closed");
}

#[test]
fn error_feedback_residuals_chain_from_commitment_to_commitment_across_a_restart_until_an_audit_fails() {
    let recipe = TrainingRecipe { codec: "topk:0.02+q4".parse().unwrap(), ..settings().recipe };
    let settings = Settings { min_workers: 2, quorum: 1, audit_probability: 1.0, recipe, ..settings() };
    let (mut machine, mut durable, workers) = durable_running(2, &settings);
    let (a, b) = (workers[0], workers[1]);
    let accepted = Ok(Outcome::Recorded(Recorded::Accepted));

    // Round 0: what a commitment must name under error feedback.
    let bare = commitment(a, 0);
    let refused = commit_durably(&mut machine, &mut durable, T0 + 10, a, 0, bare);
    assert_eq!(refused, Err(ErrorCode::BadRequest), "a lossy codec's commitment names the residual it keeps");
    let unknown = commit_durably(&mut machine, &mut durable, T0 + 11, a, 0, chained(a, 0, Some(7), 1));
    assert_eq!(unknown, Err(ErrorCode::ResidualChain), "a first commitment starts from zero");
    assert_eq!(commit_durably(&mut machine, &mut durable, T0 + 12, a, 0, chained(a, 0, None, 1)), accepted);
    assert_eq!(commit_durably(&mut machine, &mut durable, T0 + 13, b, 0, chained(b, 0, None, 2)), accepted);
    assert_eq!(
        commit_durably(&mut machine, &mut durable, T0 + 14, a, 0, chained(a, 0, None, 1)),
        Ok(Outcome::AlreadyRecorded(Recorded::Accepted)),
        "the same commitment again gets the same answer, chain or not"
    );
    finish_round(&mut machine, &mut durable, T0 + 20, &workers, 0, None);

    // Round 1: a goes on from what it kept; b starts again from zero
    // (always allowed); neither may start from anything else.
    let forged = commit_durably(&mut machine, &mut durable, T0 + 30, a, 1, chained(a, 1, Some(2), 3));
    assert_eq!(forged, Err(ErrorCode::ResidualChain), "another worker's residual");
    assert_eq!(
        commit_durably(&mut machine, &mut durable, T0 + 31, a, 1, chained(a, 1, Some(1), 3)),
        accepted
    );
    assert_eq!(commit_durably(&mut machine, &mut durable, T0 + 32, b, 1, chained(b, 1, None, 4)), accepted);

    // The coordinator restarts: the chain is in its ledger.
    let mut machine = durable.restore(settings.clone(), T0 + 40);
    drain(&mut machine);
    finish_round(&mut machine, &mut durable, T0 + 41, &workers, 1, Some(b));

    // Round 2: a's chain survived the restart; b's residual was in the
    // round its audit failed, so b starts from zero.
    let stale = commit_durably(&mut machine, &mut durable, T0 + 50, a, 2, chained(a, 2, Some(1), 5));
    assert_eq!(stale, Err(ErrorCode::ResidualChain), "a residual the chain has moved past");
    assert_eq!(
        commit_durably(&mut machine, &mut durable, T0 + 51, a, 2, chained(a, 2, Some(3), 5)),
        accepted
    );
    let contradicted = commit_durably(&mut machine, &mut durable, T0 + 52, b, 2, chained(b, 2, Some(4), 6));
    assert_eq!(contradicted, Err(ErrorCode::ResidualChain), "a residual its audit contradicted");
    assert_eq!(commit_durably(&mut machine, &mut durable, T0 + 53, b, 2, chained(b, 2, None, 6)), accepted);
}

#[test]
fn without_error_feedback_a_commitment_names_no_residual() {
    let (mut machine, workers) = running(2, settings());
    let base = base(&machine);
    let named = chained(workers[0], 0, None, 1);
    let refused = machine.commit(T0 + 1, workers[0], T0 * 1000, 0, base, None, named).unwrap_err();
    assert_eq!(refused.code, ErrorCode::BadRequest);
    assert!(refused.message.contains("keeps no error-feedback residual"), "{}", refused.message);
}

#[test]
fn a_run_without_a_contract_registers_without_a_choice() {
    let (machine, _) = running(2, settings());
    assert!(!machine.offers_contract());
    assert_eq!(machine.check_choice_at_registration(&key(5), false), Ok(()));
}
