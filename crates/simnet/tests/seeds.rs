//! The simulator as CI runs it: a fixed set of seeds must keep every
//! invariant, the same seed must give the same run, and the checkers must
//! catch a broken ledger, a lost acknowledgement and a broken rule.

use crowdtrain_protocol::Identity;
use crowdtrain_protocol::ledger::{Chain, Event};
use crowdtrain_simnet::invariants::{self, Knowledge, Rules};
use crowdtrain_simnet::model::Behaviour;
use crowdtrain_simnet::{Faults, Finished, SimConfig, Summary, simulate};

/// The seeds CI runs (each a small network with every kind of fault).
const CI_SEEDS: u64 = 40;

fn events(finished: &Finished) -> Vec<Event> {
    let sealed = finished.store.ledger().unwrap();
    invariants::check_ledger(&sealed, &finished.coordinator).unwrap()
}

fn knowledge(finished: &Finished) -> Knowledge<'_> {
    Knowledge {
        behaviour_by_key: &finished.behaviour_by_key,
        excused: &finished.excused,
        outages: &finished.outages,
    }
}

fn rules(finished: &Finished, events: &[Event]) -> Result<(), invariants::Violation> {
    Rules::new(finished.quorum).feed_all(events, knowledge(finished))
}

#[test]
fn a_fixed_set_of_seeds_keeps_every_invariant_under_every_kind_of_fault() {
    let mut total = Summary { hash: String::new(), ..crowdtrain_simnet::run(&SimConfig::small(0)).unwrap() };
    for seed in 1..CI_SEEDS {
        let summary =
            crowdtrain_simnet::run(&SimConfig::small(seed)).unwrap_or_else(|failure| panic!("{failure}"));
        assert_eq!(summary.rounds_closed, 8, "seed {seed}: the run finishes: {summary:?}");
        total.rounds_failed += summary.rounds_failed;
        total.late += summary.late;
        total.attackers_slashed += summary.attackers_slashed;
        total.updates_refused += summary.updates_refused;
        total.crashes += summary.crashes;
        total.write_faults += summary.write_faults;
        total.restores_compared += summary.restores_compared;
        total.workers_joined += summary.workers_joined;
        total.workers_left += summary.workers_left;
        total.workers_crashed += summary.workers_crashed;
        total.messages_lost += summary.messages_lost;
        total.messages_duplicated += summary.messages_duplicated;
    }
    // Every fault and attack happened somewhere in the set, or the seeds
    // test less than they claim.
    let exercised = [
        ("late submissions", total.late),
        ("attackers slashed", total.attackers_slashed),
        ("updates refused", total.updates_refused),
        ("coordinator crashes", total.crashes),
        ("failed writes", total.write_faults),
        ("restores compared in full", total.restores_compared),
        ("workers joined", total.workers_joined),
        ("workers left", total.workers_left),
        ("workers crashed", total.workers_crashed),
        ("messages lost", total.messages_lost),
        ("messages duplicated", total.messages_duplicated),
    ];
    for (what, count) in exercised {
        assert!(count > 0, "no {what} over {CI_SEEDS} seeds: {total:?}");
    }
}

#[test]
fn the_same_seed_gives_the_same_run_and_another_seed_another() {
    let config = SimConfig::small(5);
    let first = crowdtrain_simnet::run(&config).unwrap();
    let again = crowdtrain_simnet::run(&config).unwrap();
    assert_eq!(Summary { wall_ms: 0, ..first.clone() }, Summary { wall_ms: 0, ..again });
    let other = crowdtrain_simnet::run(&SimConfig::small(6)).unwrap();
    assert_ne!(first.hash, other.hash);
    // Without faults the hash changes too: faults are part of the run.
    let calm =
        crowdtrain_simnet::run(&SimConfig { faults: Faults::parse("none").unwrap(), ..config }).unwrap();
    assert_ne!(first.hash, calm.hash);
    assert_eq!((calm.crashes, calm.write_faults, calm.messages_lost), (0, 0, 0));
}

#[test]
fn a_tampered_or_forged_ledger_is_reported_at_the_entry_it_breaks() {
    let finished = simulate(&SimConfig::small(1)).unwrap();
    let sealed = finished.store.ledger().unwrap();
    assert!(invariants::check_ledger(&sealed, &finished.coordinator).is_ok());
    let mut tampered = sealed.clone();
    tampered[7].bytes[3] ^= 1;
    let violation = invariants::check_ledger(&tampered, &finished.coordinator).unwrap_err();
    assert!(violation.0.contains("entry 7"), "{violation}");
    // The same events, sealed by another key.
    let forger = Identity::from_seed([9; 32]);
    let mut chain = Chain::empty();
    let forged: Vec<_> = events(&finished).into_iter().map(|event| chain.append(&forger, 0, event)).collect();
    let violation = invariants::check_ledger(&forged, &finished.coordinator).unwrap_err();
    assert!(violation.0.contains("entry 0"), "{violation}");
}

#[test]
fn a_lost_acknowledged_commitment_or_reveal_is_reported() {
    let finished = simulate(&SimConfig::small(2)).unwrap();
    let events = events(&finished);
    invariants::check_acked(&events, &finished.acked).unwrap();
    let (&(round, worker), _) = finished.acked.commitments.iter().nth(3).unwrap();
    let without: Vec<Event> = events
        .iter()
        .filter(|event| !matches!(event, Event::Commitment { round: r, worker: w, .. } if (*r, *w) == (round, worker)))
        .cloned()
        .collect();
    let violation = invariants::check_acked(&without, &finished.acked).unwrap_err();
    assert!(violation.0.contains(&format!("{worker}'s commitment for round {round}")), "{violation}");
    let (&(round, worker), _) = finished.acked.reveals.iter().next().unwrap();
    let without: Vec<Event> = events
        .iter()
        .filter(|event| !matches!(event, Event::Reveal { round: r, worker: w, .. } if (*r, *w) == (round, worker)))
        .cloned()
        .collect();
    assert!(invariants::check_acked(&without, &finished.acked).unwrap_err().0.contains("reveal"));
}

#[test]
fn a_slashed_honest_worker_a_round_below_quorum_and_a_counted_cheat_are_reported() {
    let finished = simulate(&SimConfig::small(3)).unwrap();
    let events = events(&finished);
    rules(&finished, &events).unwrap();
    let honest = |worker| {
        events.iter().any(|event| {
            matches!(event, Event::WorkerRegistered { worker: w, key, .. }
                if *w == worker && finished.behaviour_by_key[key] == Behaviour::Honest)
        })
    };
    // A slash of an honest participant, right after it committed.
    let (at, round, worker) = events
        .iter()
        .enumerate()
        .find_map(|(index, event)| match event {
            Event::Commitment { round, worker, .. } if honest(*worker) => Some((index, *round, *worker)),
            _ => None,
        })
        .unwrap();
    let mut slashed = events.clone();
    let reason = "failed its audit: made up".to_owned();
    slashed.insert(at + 1, Event::Slash { round, worker, amount: 100, reason });
    let violation = rules(&finished, &slashed).unwrap_err();
    assert!(violation.0.contains(&format!("honest {worker} slashed")), "{violation}");
    // A round closed with one update.
    let mut thin = events.clone();
    let closed = thin.iter().position(|event| matches!(event, Event::RoundClosed { .. })).unwrap();
    let Event::RoundClosed { accepted, .. } = &mut thin[closed] else { unreachable!() };
    accepted.truncate(1);
    assert!(rules(&finished, &thin).unwrap_err().0.contains("quorum"));
    // A round that counts a worker whose reveal was never recorded.
    let mut unrevealed = events.clone();
    let closed = unrevealed.iter().position(|event| matches!(event, Event::RoundClosed { .. })).unwrap();
    let Event::RoundClosed { round, accepted, .. } = unrevealed[closed].clone() else { unreachable!() };
    unrevealed.retain(|event| {
        !matches!(event, Event::Reveal { round: r, worker: w, .. } if *r == round && *w == accepted[0])
    });
    assert!(rules(&finished, &unrevealed).unwrap_err().0.contains(&format!("counts {}", accepted[0])));
}

/// The target network (1,000 workers, 100 rounds, 30% churn, 10%
/// attackers, storage faults): every invariant holds and the run is the
/// one recorded in docs/BENCHMARKS.md, bit for bit. A minute of CPU, so
/// not in CI: `cargo test --release -p crowdtrain-simnet --test seeds --
/// --ignored`.
#[test]
#[ignore = "a minute of CPU; run by hand with --ignored"]
fn a_thousand_workers_for_a_hundred_rounds_keep_every_invariant_and_their_hash() {
    let config = SimConfig { workers: 1000, rounds: 100, churn: 0.3, attackers: 0.1, ..SimConfig::small(1) };
    let summary = crowdtrain_simnet::run(&config).unwrap_or_else(|failure| panic!("{failure}"));
    eprintln!("{summary:?}");
    assert_eq!((summary.rounds_closed, summary.rounds_failed), (100, 0));
    assert_eq!(summary.hash, "ced1f91924371782fab28d32b7091fd364ef80c009802ddddeda361834fb5584");
}
