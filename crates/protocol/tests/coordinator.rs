//! The round state machine, driven by hand with virtual time: no sockets,
//! no sleeps. Each test states the behaviour a user relies on.

use crowdtrain_data::rng::{RngKey, keyed_rng, uniform_below};
use crowdtrain_protocol::coordinator::{RoundSnapshot, RoundState};
use crowdtrain_protocol::wire::{ErrorCode, Phase, SubmissionStatus};
use crowdtrain_protocol::{
    Action, AssignmentTemplate, Coordinator, Digest, Identity, PublicKey, RunConfig, Settings, Snapshot,
    SubmissionOutcome, WorkerId,
};

const T0: u64 = 1_800_000_000_000;

fn settings() -> Settings {
    Settings {
        rounds: 3,
        min_workers: 2,
        quorum: 2,
        deadline_ms: 10_000,
        extension_ms: 5_000,
        max_extensions: 1,
        worker_timeout_ms: 60_000,
        max_workers: 8,
    }
}

fn key(index: u8) -> PublicKey {
    Identity::from_seed([index + 1; 32]).public_key()
}

fn model(index: u64) -> Digest {
    Digest::of(&index.to_le_bytes())
}

fn template() -> AssignmentTemplate {
    AssignmentTemplate::from_config(&RunConfig::parse("seed = 9\nrounds = 3\n").unwrap())
}

fn drain(machine: &mut Coordinator) -> Vec<Action> {
    std::iter::from_fn(|| machine.poll_action()).collect()
}

/// Settings where round 0 waits for `count` workers.
fn settings_for(count: u8) -> Settings {
    Settings { min_workers: u32::from(count), ..settings() }
}

/// A machine with `count` registered workers and round 0 open with all of them.
fn running(count: u8) -> (Coordinator, Vec<WorkerId>) {
    let mut machine = Coordinator::new(settings_for(count), Digest::of(b"run"), model(0));
    let workers = (0..count).map(|index| machine.register(T0, key(index)).unwrap().0).collect();
    drain(&mut machine);
    (machine, workers)
}

fn submit(
    machine: &mut Coordinator,
    now: u64,
    worker: WorkerId,
    round: u64,
    payload: u8,
) -> Result<SubmissionOutcome, ErrorCode> {
    let base = machine.open_round().map_or(model(0), |open| open.base_model);
    machine
        .submit(now, worker, now * 1000, round, base, Digest::of(&[payload]))
        .map_err(|refusal| refusal.code)
}

#[test]
fn a_round_opens_once_enough_workers_are_active_with_sorted_slots() {
    let mut machine = Coordinator::new(settings(), Digest::of(b"run"), model(0));
    let (first, new) = machine.register(T0, key(0)).unwrap();
    assert!(new);
    assert_eq!(machine.phase(), Phase::Waiting);
    assert!(matches!(drain(&mut machine)[..], [Action::PersistWorker { .. }]));
    let (second, _) = machine.register(T0 + 5, key(1)).unwrap();
    let actions = drain(&mut machine);
    assert!(matches!(&actions[1], Action::OpenRound { round: 0, participants, deadline_unix_ms, .. }
        if participants == &vec![first, second] && *deadline_unix_ms == T0 + 5 + 10_000));
    assert_eq!(machine.phase(), Phase::Training);
    let assignment = machine.assignment(second, &template()).unwrap();
    assert_eq!((assignment.slot, assignment.slots, assignment.round, assignment.seed), (1, 2, 0, 9));
    assert_eq!(assignment.base_model, model(0));
    // Registering again is idempotent.
    assert_eq!(machine.register(T0 + 6, key(1)).unwrap(), (second, false));
    assert!(drain(&mut machine).is_empty());
}

#[test]
fn a_round_closes_when_every_participant_has_submitted_and_the_next_one_opens() {
    let (mut machine, workers) = running(3);
    for (index, &worker) in workers.iter().enumerate() {
        assert_eq!(
            submit(&mut machine, T0 + 100, worker, 0, index as u8),
            Ok(SubmissionOutcome::Recorded(SubmissionStatus::Accepted))
        );
    }
    let actions = drain(&mut machine);
    assert_eq!(actions.iter().filter(|action| matches!(action, Action::RecordSubmission { .. })).count(), 3);
    assert!(
        matches!(actions.last(), Some(Action::CloseRound { round: 0, accepted, .. }) if accepted == &workers)
    );
    machine.handle_aggregated(T0 + 120, 0, model(1));
    let actions = drain(&mut machine);
    assert!(
        matches!(&actions[0], Action::CommitRound { round: 0, result_model, .. } if *result_model == model(1))
    );
    assert!(matches!(&actions[1], Action::OpenRound { round: 1, base_model, participants, .. }
        if *base_model == model(1) && participants == &workers));
    assert_eq!(machine.completed_rounds(), 1);
}

#[test]
fn at_the_deadline_with_quorum_the_round_closes_and_the_absent_worker_sits_out_until_seen() {
    // Round 0 opens with workers 0 and 1; worker 2 registers during it.
    let mut machine = Coordinator::new(Settings { quorum: 1, ..settings() }, Digest::of(b"run"), model(0));
    let workers: Vec<WorkerId> = (0..3).map(|index| machine.register(T0, key(index)).unwrap().0).collect();
    drain(&mut machine);
    assert_eq!(machine.open_round().unwrap().participants, vec![workers[0], workers[1]]);
    submit(&mut machine, T0 + 100, workers[0], 0, 0).unwrap();
    drain(&mut machine);
    assert_eq!(machine.poll_timeout(), Some(T0 + 10_000));
    machine.handle_timeout(T0 + 9_999);
    assert!(drain(&mut machine).is_empty(), "nothing happens before the deadline");
    machine.handle_timeout(T0 + 10_000);
    let actions = drain(&mut machine);
    assert!(matches!(&actions[..], [Action::CloseRound { accepted, .. }] if accepted == &vec![workers[0]]));
    machine.handle_aggregated(T0 + 10_010, 0, model(1));
    let actions = drain(&mut machine);
    assert!(
        matches!(&actions[1], Action::OpenRound { participants, .. } if participants == &vec![workers[0], workers[2]]),
        "the worker that missed round 0 is not waited for in round 1; the newcomer joins"
    );
    assert!(!machine.is_active(workers[1]));
    machine.seen(T0 + 11_000, workers[1]);
    assert!(machine.is_active(workers[1]), "seen again, it joins the next round");
    assert_eq!(submit(&mut machine, T0 + 11_000, workers[1], 1, 1), Err(ErrorCode::NotAssigned));
}

#[test]
fn without_quorum_the_deadline_is_extended_then_the_round_fails_and_is_retried() {
    let (mut machine, workers) = running(2);
    submit(&mut machine, T0 + 100, workers[0], 0, 0).unwrap();
    drain(&mut machine);
    machine.handle_timeout(T0 + 10_000);
    assert!(
        matches!(drain(&mut machine)[..], [Action::ExtendRound { round: 0, deadline_unix_ms, extensions: 1 }]
        if deadline_unix_ms == T0 + 15_000)
    );
    machine.handle_timeout(T0 + 15_000);
    let actions = drain(&mut machine);
    assert!(matches!(actions[0], Action::FailRound { round: 0, .. }));
    // Only worker 0 is still active (worker 1 missed round 0): below min_workers.
    assert_eq!(actions.len(), 1);
    assert_eq!(machine.phase(), Phase::Waiting);
    machine.seen(T0 + 16_000, workers[1]);
    let actions = drain(&mut machine);
    assert!(
        matches!(&actions[..], [Action::OpenRound { round: 1, base_model, .. }] if *base_model == model(0)),
        "the retry trains from the same model under a new round number"
    );
    assert_eq!(machine.completed_rounds(), 0);
}

#[test]
fn late_duplicate_wrong_round_and_stale_submissions_are_judged() {
    let (mut machine, workers) = running(2);
    submit(&mut machine, T0 + 1, workers[0], 0, 7).unwrap();
    drain(&mut machine);
    // Identical retry: same receipt, nothing persisted.
    assert_eq!(
        submit(&mut machine, T0 + 2, workers[0], 0, 7),
        Ok(SubmissionOutcome::AlreadyRecorded(SubmissionStatus::Accepted))
    );
    assert_eq!(submit(&mut machine, T0 + 3, workers[0], 0, 8), Err(ErrorCode::Duplicate));
    assert_eq!(submit(&mut machine, T0 + 3, workers[0], 5, 8), Err(ErrorCode::WrongRound));
    let wrong_base = machine.submit(T0 + 3, workers[1], 1, 0, model(99), Digest::of(b"x")).unwrap_err();
    assert_eq!(wrong_base.code, ErrorCode::StaleModel);
    assert!(drain(&mut machine).is_empty(), "refusals change nothing");
    machine.handle_timeout(T0 + 10_000);
    machine.handle_timeout(T0 + 15_000);
    drain(&mut machine);
    // Round 0 failed; worker 1's submission for it arrives now: late, kept.
    assert_eq!(
        submit(&mut machine, T0 + 16_000, workers[1], 0, 1),
        Ok(SubmissionOutcome::Recorded(SubmissionStatus::Late))
    );
    assert!(matches!(
        drain(&mut machine)[0],
        Action::RecordSubmission { status: SubmissionStatus::Late, round: 0, .. }
    ));
    assert_eq!(
        submit(&mut machine, T0 + 16_001, workers[1], 0, 1),
        Ok(SubmissionOutcome::AlreadyRecorded(SubmissionStatus::Late))
    );
}

#[test]
fn authentication_refuses_unknown_keys_replays_and_stale_nonces() {
    let (machine, workers) = running(2);
    let now = T0 + 1000;
    assert_eq!(machine.authenticate(now, &key(0), now * 1000, true), Ok(workers[0]));
    assert_eq!(
        machine.authenticate(now, &key(7), now * 1000, true).unwrap_err().code,
        ErrorCode::UnknownWorker
    );
    let stale = (now - 11 * 60 * 1000) * 1000;
    assert_eq!(machine.authenticate(now, &key(0), stale, false).unwrap_err().code, ErrorCode::Replayed);
    let (mut machine, workers) = running(2);
    let nonce = (T0 + 5) * 1000;
    machine.submit(T0 + 5, workers[0], nonce, 0, model(0), Digest::of(b"a")).unwrap();
    assert_eq!(machine.authenticate(T0 + 6, &key(0), nonce, true).unwrap_err().code, ErrorCode::Replayed);
    assert_eq!(
        machine.authenticate(T0 + 6, &key(0), nonce, false),
        Ok(workers[0]),
        "reads need no fresh nonce"
    );
    assert_eq!(machine.authenticate(T0 + 6, &key(0), nonce + 1, true), Ok(workers[0]));
}

#[test]
fn registration_beyond_the_limit_is_refused() {
    let mut machine =
        Coordinator::new(Settings { max_workers: 2, ..settings() }, Digest::of(b"run"), model(0));
    machine.register(T0, key(0)).unwrap();
    machine.register(T0, key(1)).unwrap();
    drain(&mut machine);
    assert_eq!(machine.register(T0, key(2)).unwrap_err().code, ErrorCode::Full);
    assert!(drain(&mut machine).is_empty());
    assert_eq!(machine.worker_count(), 2);
}

#[test]
fn the_run_finishes_after_its_rounds_and_opens_no_more() {
    let (mut machine, workers) = running(2);
    for round in 0..3 {
        for &worker in &workers {
            submit(&mut machine, T0 + round * 100 + 1, worker, round, worker.0 as u8).unwrap();
        }
        drain(&mut machine);
        machine.handle_aggregated(T0 + round * 100 + 2, round, model(round + 1));
    }
    let actions = drain(&mut machine);
    assert!(matches!(actions.last(), Some(Action::Finish { final_model }) if *final_model == model(3)));
    assert_eq!(machine.phase(), Phase::Finished);
    machine.handle_timeout(T0 + 1_000_000);
    machine.seen(T0 + 1_000_000, workers[0]);
    assert!(drain(&mut machine).is_empty());
}

/// Turns the actions of a run into what a driver would have persisted.
#[derive(Default)]
struct Persisted {
    workers: Vec<(WorkerId, PublicKey, u64)>,
    rounds: Vec<RoundSnapshot>,
}

impl Persisted {
    fn apply(&mut self, action: &Action) {
        match action {
            Action::PersistWorker { worker, key, .. } => self.workers.push((*worker, *key, 0)),
            Action::OpenRound { round, base_model, participants, opened_unix_ms, deadline_unix_ms } => {
                self.rounds.push(RoundSnapshot {
                    id: *round,
                    state: RoundState::Open,
                    base_model: *base_model,
                    participants: participants.clone(),
                    opened_unix_ms: *opened_unix_ms,
                    deadline_unix_ms: *deadline_unix_ms,
                    extensions: 0,
                    submissions: Vec::new(),
                    result_model: None,
                })
            }
            Action::ExtendRound { round, deadline_unix_ms, extensions } => {
                let persisted = self.round(*round);
                persisted.deadline_unix_ms = *deadline_unix_ms;
                persisted.extensions = *extensions;
            }
            Action::RecordSubmission { round, worker, status, payload, nonce, .. } => {
                self.round(*round).submissions.push((*worker, *status, *payload));
                let entry = self.workers.iter_mut().find(|(id, _, _)| id == worker).unwrap();
                entry.2 = entry.2.max(*nonce);
            }
            Action::CloseRound { .. } | Action::Finish { .. } => {}
            Action::CommitRound { round, result_model, .. } => {
                let persisted = self.round(*round);
                persisted.state = RoundState::Closed;
                persisted.result_model = Some(*result_model);
            }
            Action::FailRound { round, .. } => self.round(*round).state = RoundState::Failed,
        }
    }

    fn round(&mut self, id: u64) -> &mut RoundSnapshot {
        self.rounds.iter_mut().find(|round| round.id == id).unwrap()
    }

    fn snapshot(&self) -> Snapshot {
        Snapshot { initial_model: model(0), workers: self.workers.clone(), rounds: self.rounds.clone() }
    }
}

#[test]
fn a_restored_machine_continues_where_the_persisted_one_stopped() {
    let mut machine = Coordinator::new(settings_for(3), Digest::of(b"run"), model(0));
    let mut persisted = Persisted::default();
    let step = |machine: &mut Coordinator, persisted: &mut Persisted| {
        for action in drain(machine) {
            persisted.apply(&action);
        }
    };
    let workers: Vec<WorkerId> = (0..3).map(|index| machine.register(T0, key(index)).unwrap().0).collect();
    step(&mut machine, &mut persisted);
    submit(&mut machine, T0 + 10, workers[0], 0, 0).unwrap();
    step(&mut machine, &mut persisted);

    // The coordinator dies here; a new one restores from what was persisted.
    let mut restored =
        Coordinator::restore(settings_for(3), Digest::of(b"run"), persisted.snapshot(), T0 + 50);
    assert!(drain(&mut restored).is_empty(), "round 0 is still open with one of three submissions");
    assert_eq!(restored.open_round(), machine.open_round());
    assert_eq!(restored.view(Some(workers[1]), &template()), machine.view(Some(workers[1]), &template()));
    assert_eq!(
        submit(&mut restored, T0 + 60, workers[0], 0, 0),
        Ok(SubmissionOutcome::AlreadyRecorded(SubmissionStatus::Accepted)),
        "the accepted submission survived"
    );
    assert_eq!(
        restored.authenticate(T0 + 60, &key(0), (T0 + 10) * 1000, true).unwrap_err().code,
        ErrorCode::Replayed,
        "so did the nonce"
    );

    // The other two submissions arrive at the restored coordinator.
    submit(&mut restored, T0 + 70, workers[1], 0, 1).unwrap();
    submit(&mut restored, T0 + 71, workers[2], 0, 2).unwrap();
    let actions = drain(&mut restored);
    assert!(matches!(actions.last(), Some(Action::CloseRound { accepted, .. }) if accepted == &workers));
}

#[test]
fn a_machine_restored_with_all_submissions_in_closes_the_round_at_once() {
    let (mut machine, workers) = running(2);
    let mut persisted = Persisted::default();
    for (index, &worker) in workers.iter().enumerate() {
        persisted.workers.push((worker, key(index as u8), 0));
    }
    let open = machine.open_round().unwrap().clone();
    persisted.apply(&Action::OpenRound {
        round: 0,
        base_model: open.base_model,
        participants: open.participants.clone(),
        opened_unix_ms: open.opened_ms,
        deadline_unix_ms: open.deadline_ms,
    });
    for &worker in &workers {
        submit(&mut machine, T0 + 5, worker, 0, 1).unwrap();
    }
    for action in drain(&mut machine) {
        persisted.apply(&action); // CloseRound is emitted but nothing durable says "closed"
    }
    let mut restored = Coordinator::restore(settings(), Digest::of(b"run"), persisted.snapshot(), T0 + 100);
    assert!(matches!(drain(&mut restored)[..], [Action::CloseRound { round: 0, .. }]));
}

/// Swarm test: random registrations, submissions (good, duplicate, late,
/// wrong round) and clock jumps from many seeds. After every step the
/// invariants a user relies on must hold.
#[test]
fn random_event_sequences_keep_the_invariants() {
    for seed in 0..200 {
        let mut rng = keyed_rng("coordinator-swarm", RngKey::new(seed, 0, 0, 0));
        let mut machine =
            Coordinator::new(Settings { rounds: 5, ..settings() }, Digest::of(b"run"), model(0));
        let mut now = T0;
        let mut last_round_opened = None;
        let mut committed = 0u64;
        let mut counted = std::collections::BTreeSet::new();
        for step in 0..400 {
            now += uniform_below(&mut rng, 3000);
            match uniform_below(&mut rng, 6) {
                0 => {
                    let _ = machine.register(now, key(uniform_below(&mut rng, 5) as u8));
                }
                1 | 2 => {
                    let worker = WorkerId(uniform_below(&mut rng, 5));
                    if machine.worker_count() as u64 > worker.0 {
                        let round =
                            machine.open_round().map_or(0, |open| open.id) + uniform_below(&mut rng, 2);
                        let round = round.saturating_sub(uniform_below(&mut rng, 2));
                        let base = machine.open_round().map_or(model(0), |open| open.base_model);
                        let payload = Digest::of(&[uniform_below(&mut rng, 3) as u8]);
                        let _ = machine.submit(now, worker, now * 1000 + step, round, base, payload);
                    }
                }
                3 => machine.seen(now, WorkerId(uniform_below(&mut rng, 5))),
                _ => machine.handle_timeout(now),
            }
            while let Some(action) = machine.poll_action() {
                match action {
                    Action::OpenRound { round, participants, .. } => {
                        assert!(
                            last_round_opened.is_none_or(|last| round > last),
                            "seed {seed}: rounds never go back"
                        );
                        assert!(
                            participants.windows(2).all(|pair| pair[0] < pair[1]),
                            "sorted, distinct participants"
                        );
                        assert!(participants.len() >= 2, "a round opens with min_workers");
                        last_round_opened = Some(round);
                    }
                    Action::CloseRound { round, accepted, .. } => {
                        assert!(accepted.len() >= 2, "seed {seed}: a round closes only with quorum");
                        for worker in &accepted {
                            assert!(counted.insert((round, *worker)), "each update counts at most once");
                        }
                        machine.handle_aggregated(now, round, model(round + 100));
                    }
                    Action::CommitRound { .. } => committed += 1,
                    Action::Finish { .. } => assert_eq!(committed, 5),
                    _ => {}
                }
            }
            assert!(machine.completed_rounds() <= 5);
            if let Some(deadline) = machine.poll_timeout() {
                assert!(deadline > now || machine.open_round().is_some());
            }
        }
    }
}
