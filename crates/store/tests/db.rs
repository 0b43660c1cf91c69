//! The coordinator database on real SQLite files: every table is built
//! from the recorded events, in one transaction per batch.

use crowdtrain_protocol::coordinator::RoundState;
use crowdtrain_protocol::ledger::{Event, PayGate, Reward};
use crowdtrain_protocol::{Commitment, Digest, Identity, PublicKey, Recorded, Verdict, WorkerId};
use crowdtrain_store::db::{LedgerFailure, verify_ledger};
use crowdtrain_store::{RunRecord, Store, StoreError};

fn key(index: u8) -> PublicKey {
    Identity::from_seed([index; 32]).public_key()
}

fn coordinator() -> Identity {
    Identity::from_seed([9; 32])
}

fn record() -> RunRecord {
    RunRecord {
        run_id: Digest::of(b"run"),
        protocol_version: 1,
        config_json: "{}".into(),
        coordinator_key: coordinator().public_key(),
        model_name: "mlp-784-256-10".into(),
        initial_model: Digest::of(b"m0"),
        initial_momentum: Digest::of(b"z0"),
        created_unix_ms: 5,
    }
}

fn commitment(worker: u64) -> Commitment {
    Commitment {
        merkle_root: Digest::of(&[worker as u8]),
        payload: Digest::of(&[worker as u8, 1]),
        segments: 4,
        residual_in: None,
        residual_out: None,
    }
}

fn registered(worker: u64, class: &str) -> Event {
    Event::WorkerRegistered {
        worker: WorkerId(worker),
        key: key(worker as u8),
        class: class.into(),
        registered_unix_ms: 10 + worker,
        // Worker 1 came with an admission token.
        token: (worker == 1).then_some(crowdtrain_protocol::admission::TokenId([5; 16])),
    }
}

/// A run with two workers in round 0, both committed, worker 1 drawn for
/// an audit that worker 0 replays.
/// A store with the run created, nothing else recorded.
fn started(path: &std::path::Path) -> Store {
    let mut store = Store::open(path).unwrap();
    store.create_run(&record(), Digest::of(b"{}"), &coordinator()).unwrap();
    store
}

fn populated(path: &std::path::Path) -> Store {
    let mut store = started(path);
    let events = [
        registered(0, "avx2-fma"),
        registered(1, "portable"),
        round_0_opened(&[0, 1]),
        Event::Commitment {
            round: 0,
            worker: WorkerId(0),
            commitment: commitment(0),
            status: Recorded::Accepted,
            audit: None,
            nonce: 300,
            received_unix_ms: 13,
        },
        Event::Commitment {
            round: 0,
            worker: WorkerId(1),
            commitment: commitment(1),
            status: Recorded::Accepted,
            audit: Some(2),
            nonce: 301,
            received_unix_ms: 14,
        },
        Event::AuditDraw {
            round: 0,
            secret: [1; 32],
            beacon: Digest::of(b"b"),
            audits: vec![(WorkerId(1), 2)],
            auditors: vec![(WorkerId(1), WorkerId(0))],
            reveal_deadline_unix_ms: 200,
        },
    ];
    store.record(15, &events, &[], &coordinator()).unwrap();
    store
}

fn reveal(worker: u64, payload: &[u8], nonce: u64) -> Event {
    Event::Reveal {
        round: 0,
        worker: WorkerId(worker),
        payload: Digest::of(payload),
        status: Recorded::Accepted,
        nonce,
        received_unix_ms: 20,
    }
}

#[test]
fn state_and_events_survive_reopening_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.sqlite");
    let recorded = {
        let mut store = populated(&path);
        let answer = Event::AuditAnswered {
            round: 0,
            worker: WorkerId(1),
            answer: Digest::of(b"an answer"),
            nonce: 800,
            received_unix_ms: 20,
        };
        let verdict = Event::Audit {
            round: 0,
            worker: WorkerId(1),
            segment: 2,
            verdict: Verdict::Passed,
            judged_by: Some(WorkerId(0)),
            sender: Some((WorkerId(0), 900)),
            decided_unix_ms: 21,
        };
        let events = [reveal(1, b"second", 700), reveal(0, b"first", 500), answer, verdict];
        let payloads: [(Digest, &[u8]); 2] =
            [(Digest::of(b"first"), b"first"), (Digest::of(b"second"), b"second")];
        store.record(22, &events, &payloads, &coordinator()).unwrap();
        store.events().unwrap()
    };
    let store = Store::open(&path).unwrap();
    assert_eq!(store.run().unwrap(), Some(record()));
    assert_eq!(store.events().unwrap(), recorded, "every event comes back, in order");
    assert_eq!(recorded.len(), 11, "the run's start, six, then four");
    assert!(
        matches!(recorded[0], Event::RunStarted { initial_momentum, .. } if initial_momentum == Digest::of(b"z0"))
    );
    assert_eq!(store.audit_answer_digest(0, WorkerId(1)).unwrap(), Digest::of(b"an answer"));
    assert_eq!(
        store.payloads(0, &[WorkerId(0), WorkerId(1)]).unwrap(),
        vec![b"first".to_vec(), b"second".to_vec()],
        "payloads come back in the order asked for"
    );
    let records = store.round_records().unwrap();
    assert_eq!((records[0].status, records[0].participants, records[0].committed), (RoundState::Open, 2, 2));
    assert_eq!((records[0].revealed, records[0].audited), (2, 1));
    let workers = store.worker_statuses().unwrap();
    assert_eq!((workers[0].class.as_str(), workers[1].class.as_str()), ("avx2-fma", "portable"));
    assert_eq!((workers[0].audits_judged, workers[1].audits_passed), (1, 1));
    assert_eq!((workers[0].bytes_uploaded, workers[1].bytes_uploaded), (5, 6), "the bytes each revealed");
    assert_eq!(records[0].bytes_uploaded, 11);
    store.check_worker_totals().unwrap();
}

#[test]
fn a_batch_with_a_failing_event_changes_nothing_not_even_the_ledger() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.sqlite");
    let mut store = populated(&path);
    let entries_before = store.ledger().unwrap().len();
    // The last event names a round that does not exist.
    let mut bad = reveal(1, b"x", 1);
    if let Event::Reveal { round, .. } = &mut bad {
        *round = 7;
    }
    let batch = [reveal(0, b"ok", 1), Event::RunFinished { final_model: Digest::of(b"m") }, bad];
    let payloads: [(Digest, &[u8]); 2] = [(Digest::of(b"ok"), b"ok"), (Digest::of(b"x"), b"x")];
    assert!(store.record(30, &batch, &payloads, &coordinator()).is_err());
    assert!(store.payloads(0, &[WorkerId(0)]).is_err(), "the first event was rolled back too");
    assert_eq!(store.ledger().unwrap().len(), entries_before, "and so was its ledger entry");
    // A reveal without its bytes is refused the same way.
    assert!(matches!(
        store.record(31, &[reveal(0, b"ok", 1)], &[], &coordinator()),
        Err(StoreError::Corrupt(_))
    ));
    // The chain continues cleanly after the failed batches.
    store.record(32, &[Event::RunFinished { final_model: Digest::of(b"m") }], &[], &coordinator()).unwrap();
    assert_eq!(verify_ledger(&path, None).unwrap().len(), entries_before + 1);
}

#[test]
fn closing_a_round_records_its_result_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = populated(&dir.path().join("state.sqlite"));
    store.record(20, &[reveal(0, b"a", 1)], &[(Digest::of(b"a"), b"a")], &coordinator()).unwrap();
    let closed = Event::RoundClosed {
        round: 0,
        result_model: Digest::of(b"m1"),
        result_momentum: Digest::of(b"z1"),
        result_aggregator: Some(Digest::of(b"a1")),
        accepted: vec![WorkerId(0)],
        closed_unix_ms: 30,
    };
    let credit = Event::WorkAccepted { round: 0, worker: WorkerId(0), units: 64 };
    store.record(30, &[closed.clone(), credit], &[], &coordinator()).unwrap();
    assert!(
        matches!(store.record(31, &[closed], &[], &coordinator()), Err(StoreError::Corrupt(_))),
        "a closed round cannot close again"
    );
    let latest = store.latest_result().unwrap().unwrap();
    assert_eq!(
        (latest.round, latest.model, latest.momentum, latest.aggregator, latest.closed),
        (0, Digest::of(b"m1"), Digest::of(b"z1"), Some(Digest::of(b"a1")), 1)
    );
    assert_eq!(store.latest_result_before(0).unwrap(), None, "nothing closed before round 0");
    assert_eq!(store.latest_result_before(1).unwrap(), Some(latest));
    assert_eq!(store.latest_aggregator_snapshot_before(0).unwrap(), None);
    assert_eq!(store.latest_aggregator_snapshot_before(1).unwrap(), Some((0, Digest::of(b"a1"))));
    let records = store.round_records().unwrap();
    assert_eq!(records[0].status, RoundState::Closed);
    assert_eq!((records[0].participants, records[0].accepted, records[0].audited), (2, 1, 1));
    assert!(!records[0].scored);
    let workers = store.worker_statuses().unwrap();
    assert_eq!(
        (workers[0].verified_work, workers[0].earned, workers[0].credits),
        (64, 0, 0),
        "not yet scored"
    );
    assert_eq!(store.earlier_digests(1, 1).unwrap(), [Digest::of(b"a").0].into_iter().collect());
    assert!(store.earlier_digests(0, 1).unwrap().is_empty());
    assert!(store.earlier_digests(2, 1).unwrap().is_empty(), "only the last rounds asked for");
    assert_eq!(store.round_count().unwrap(), records.len() as u64);
    assert_eq!(store.round_records_page(1, 5).unwrap(), records[1..].to_vec(), "a page of the rounds");
    let tokens: Vec<_> = store
        .events()
        .unwrap()
        .into_iter()
        .filter_map(|event| match event {
            Event::WorkerRegistered { token, .. } => Some(token),
            _ => None,
        })
        .collect();
    assert_eq!(
        tokens,
        vec![None, Some(crowdtrain_protocol::admission::TokenId([5; 16]))],
        "the admission token each registered with"
    );
    assert_eq!(
        store.commitment_order(0, &[WorkerId(1), WorkerId(0)]).unwrap(),
        vec![WorkerId(0), WorkerId(1)]
    );

    // Scoring: what it reads, what it writes, and only once.
    assert_eq!(store.unscored_rounds().unwrap(), vec![0]);
    assert_eq!(store.scoring_input(0).unwrap(), (Digest::of(b"m0"), vec![WorkerId(0)]));
    let reward = Event::Reward(Reward {
        round: 0,
        worker: WorkerId(0),
        score: 0.01,
        quality: 0.8,
        multiplier: 1.0,
        units: 64,
        credits: 64,
        deviation: Some(-0.5),
        gate: PayGate::Pass,
    });
    let scored = Event::RoundScored { round: 0 };
    store.record(40, &[reward, scored.clone()], &[], &coordinator()).unwrap();
    assert!(store.unscored_rounds().unwrap().is_empty());
    assert!(
        matches!(store.record(41, &[scored], &[], &coordinator()), Err(StoreError::Corrupt(_))),
        "scored once"
    );
    assert_eq!(store.score_history().unwrap(), vec![(0, vec![(WorkerId(0), 0.01)])]);
    let workers = store.worker_statuses().unwrap();
    assert_eq!((workers[0].earned, workers[0].credits, workers[0].quality), (64, 64, Some(0.8)));
    // The pay gate denies later: the escrowed credit of round 0 is taken back.
    let withheld = Event::PayWithheld { round: 1, worker: WorkerId(0), first_round: 0, credits: 64 };
    store.record(41, &[withheld], &[], &coordinator()).unwrap();
    assert_eq!((store.worker_statuses().unwrap()[0].earned), 0);
    assert_eq!(store.score_history().unwrap(), vec![(0, vec![(WorkerId(0), 0.01)])], "scores stay");
    let refused = Event::UpdateRefused { round: 0, worker: WorkerId(1), reason: "outsized".into() };
    store.record(42, &[refused], &[], &coordinator()).unwrap();
    assert_eq!(store.worker_statuses().unwrap()[1].submissions_refused, 1);
    assert_eq!(store.round_records().unwrap()[0].refused, 1);
    assert!(store.round_records().unwrap()[0].scored);
    assert_eq!(store.worker_status(WorkerId(1)).unwrap().as_ref(), store.worker_statuses().unwrap().get(1));
    assert_eq!(store.worker_status(WorkerId(7)).unwrap(), None);
    store.check_worker_totals().unwrap();

    // A worker's own rounds, as its summaries read them.
    let mine = store.worker_rounds(WorkerId(0), 0, 10).unwrap();
    assert_eq!(mine.len(), 1);
    let round = &mine[0];
    assert_eq!(
        (round.round, round.round_state, round.accepted, round.work),
        (0, RoundState::Closed, true, 64)
    );
    assert_eq!(
        (round.reveal.as_deref(), round.reward, round.scored, round.slashed),
        (Some("accepted"), Some(0), true, 0)
    );
    let theirs = store.worker_rounds(WorkerId(1), 0, 10).unwrap();
    assert_eq!((theirs[0].accepted, theirs[0].refused.as_deref()), (false, Some("outsized")));
    assert!(store.worker_rounds(WorkerId(0), 1, 10).unwrap().is_empty(), "from round 1 on");
    assert!(store.worker_rounds(WorkerId(0), 0, 0).unwrap().is_empty(), "a page of none");
}

#[test]
fn a_reader_sees_the_database_change_by_its_data_version() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.sqlite");
    let mut store = populated(&path);
    let reader = Store::open_reader(&path).unwrap();
    let before = reader.data_version().unwrap();
    assert_eq!(reader.data_version().unwrap(), before, "nothing written");
    store.record(20, &[reveal(0, b"a", 1)], &[(Digest::of(b"a"), b"a")], &coordinator()).unwrap();
    assert_ne!(reader.data_version().unwrap(), before, "a commit by the writer");
}

#[test]
fn a_run_starts_once() {
    let mut store = Store::open_in_memory().unwrap();
    store.create_run(&record(), Digest::of(b"{}"), &coordinator()).unwrap();
    assert!(store.create_run(&record(), Digest::of(b"{}"), &coordinator()).is_err());
    let started = store.events().unwrap().remove(0);
    assert!(matches!(store.record(6, &[started], &[], &coordinator()), Err(StoreError::Corrupt(_))));
    assert_eq!(store.events().unwrap().len(), 1);
}

#[test]
fn tampering_with_the_ledger_in_the_file_is_detected_at_the_entry() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.sqlite");
    drop(populated(&path));
    let entries = verify_ledger(&path, None).unwrap();
    assert_eq!(entries.len(), 7);
    assert!(matches!(entries[0].event, Event::RunStarted { .. }));
    // Another coordinator key does not verify it.
    assert!(
        matches!(verify_ledger(&path, Some(key(3))), Err(LedgerFailure::Broken(broken)) if broken.index == 0)
    );
    // Change one byte of entry 1's stored body through SQL.
    let connection = rusqlite::Connection::open(&path).unwrap();
    let body: Vec<u8> =
        connection.query_row("SELECT body FROM ledger WHERE idx = 1", [], |row| row.get(0)).unwrap();
    let mut tampered = body.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 0x40;
    connection.execute("UPDATE ledger SET body = ?1 WHERE idx = 1", [&tampered]).unwrap();
    drop(connection);
    match verify_ledger(&path, None) {
        Err(LedgerFailure::Broken(broken)) => assert_eq!(broken.index, 1, "{broken}"),
        other => panic!("tampering went unnoticed: {other:?}"),
    }
}

#[test]
fn a_database_from_another_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.sqlite");
    drop(Store::open(&path).unwrap());
    rusqlite::Connection::open(&path).unwrap().pragma_update(None, "user_version", 99).unwrap();
    assert!(matches!(Store::open(&path), Err(StoreError::Schema { found: 99, .. })));
}

/// A run with a slash, a late and a malformed reveal, an auditor slashed,
/// and rewards recorded out of round order: every kind of event that
/// moves a worker's totals.
fn eventful(path: &std::path::Path) -> Store {
    let mut store = populated(path);
    let reveals = [
        reveal(0, b"zero", 40),
        Event::Reveal {
            round: 0,
            worker: WorkerId(1),
            payload: Digest::of(b"bad"),
            status: Recorded::Malformed,
            nonce: 41,
            received_unix_ms: 21,
        },
    ];
    let payloads: [(Digest, &[u8]); 2] = [(Digest::of(b"zero"), b"zero"), (Digest::of(b"bad"), b"bad")];
    store.record(21, &reveals, &payloads, &coordinator()).unwrap();
    let closing = [
        Event::Audit {
            round: 0,
            worker: WorkerId(1),
            segment: 2,
            verdict: Verdict::Failed("the end hash differs".into()),
            judged_by: Some(WorkerId(0)),
            sender: None,
            decided_unix_ms: 22,
        },
        Event::Slash { round: 0, worker: WorkerId(1), amount: 500, reason: "audit failed".into() },
        Event::AuditorSlashed {
            round: 0,
            auditor: WorkerId(0),
            audited: WorkerId(1),
            amount: 70,
            reason: "contradicted".into(),
        },
        Event::RoundClosed {
            round: 0,
            result_model: Digest::of(b"m1"),
            result_momentum: Digest::of(b"z1"),
            result_aggregator: None,
            accepted: vec![WorkerId(0)],
            closed_unix_ms: 23,
        },
        Event::WorkAccepted { round: 0, worker: WorkerId(0), units: 64 },
        Event::RoundOpened {
            round: 1,
            base_model: Digest::of(b"m1"),
            participants: vec![WorkerId(0)],
            opened_unix_ms: 24,
            commit_deadline_unix_ms: 99,
            secret_commitment: Digest::of(b"s1"),
        },
    ];
    store.record(23, &closing, &[], &coordinator()).unwrap();
    let late = Event::Reveal {
        round: 1,
        worker: WorkerId(0),
        payload: Digest::of(b"late"),
        status: Recorded::Late,
        nonce: 42,
        received_unix_ms: 30,
    };
    store.record(30, &[late], &[(Digest::of(b"late"), b"late")], &coordinator()).unwrap();
    let reward = |round, quality, credits| {
        Event::Reward(Reward {
            round,
            worker: WorkerId(0),
            score: 0.1,
            quality,
            multiplier: 1.0,
            units: 64,
            credits,
            deviation: None,
            gate: PayGate::NoPower,
        })
    };
    // Round 1's reward is recorded before round 0's: the quality shown is
    // still the latest round's.
    store.record(31, &[reward(1, 0.9, 60)], &[], &coordinator()).unwrap();
    store.record(32, &[reward(0, 0.2, 10)], &[], &coordinator()).unwrap();
    store
}

#[test]
fn worker_totals_are_kept_event_by_event_and_add_up_to_the_records() {
    let dir = tempfile::tempdir().unwrap();
    let store = eventful(&dir.path().join("state.sqlite"));
    store.check_worker_totals().unwrap();
    let workers = store.worker_statuses().unwrap();
    let (zero, one) = (&workers[0], &workers[1]);
    assert_eq!((zero.rounds_assigned, zero.submissions_accepted, zero.verified_work), (2, 1, 64));
    assert_eq!((zero.submissions_late, zero.bytes_uploaded), (1, 8), "\"zero\" and \"late\"");
    assert_eq!((zero.slashed, zero.auditor_slashes, zero.audits_judged), (70, 1, 1));
    assert_eq!((zero.earned, zero.credits, zero.quality), (70, 0, Some(0.9)), "latest round's quality");
    assert_eq!(
        (one.submissions_rejected, one.slashed, one.credits),
        (2, 500, -500),
        "slashed, and malformed"
    );
    assert_eq!((one.audits_passed, one.audits_failed, one.bytes_uploaded), (0, 1, 3));
    // A total that disagrees with the records is named.
    let connection = rusqlite::Connection::open(dir.path().join("state.sqlite")).unwrap();
    connection.execute("UPDATE worker_totals SET earned = earned + 1 WHERE worker = 0", []).unwrap();
    assert!(
        matches!(store.check_worker_totals(), Err(StoreError::Corrupt(message)) if message.contains("worker 0"))
    );
}

#[test]
fn a_version_6_database_is_migrated_with_its_totals_recomputed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.sqlite");
    let before = eventful(&path).worker_statuses().unwrap();
    // What version 6 had: no totals, no ledger index by kind, no download counts.
    let connection = rusqlite::Connection::open(&path).unwrap();
    connection
        .execute_batch(
            "DROP TABLE worker_totals; DROP INDEX ledger_kind; ALTER TABLE rounds DROP COLUMN bytes_downloaded;
             DROP TABLE model_rewards; DROP TABLE collateral; PRAGMA user_version = 6;",
        )
        .unwrap();
    drop(connection);
    let mut store = Store::open(&path).unwrap();
    assert_eq!(store.worker_statuses().unwrap(), before);
    store.check_worker_totals().unwrap();
    store.set_downloads(1, 4096).unwrap();
    assert_eq!(store.round_records().unwrap()[1].bytes_downloaded, Some(4096));
    assert_eq!(store.round_records().unwrap()[0].bytes_downloaded, None, "not measured");
    assert_eq!(verify_ledger(&path, None).unwrap().len(), store.ledger_length().unwrap() as usize);
}

#[test]
fn a_version_7_database_gets_an_empty_collateral_table_and_takes_bonds() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.sqlite");
    let before = eventful(&path).worker_statuses().unwrap();
    let connection = rusqlite::Connection::open(&path).unwrap();
    connection
        .execute_batch("DROP TABLE collateral; DROP TABLE model_rewards; PRAGMA user_version = 7;")
        .unwrap();
    drop(connection);
    let mut store = Store::open(&path).unwrap();
    assert_eq!(store.worker_statuses().unwrap(), before);
    assert!(store.collateral().unwrap().is_empty());
    // Bonds, draws and vesting are projected, one row per worker.
    let events = [
        Event::BondDeposited { worker: WorkerId(1), amount: 900 },
        Event::SlashDrawn { round: 1, worker: WorkerId(1), escrow: 30, bond: 470, uncovered: 0 },
        Event::Vested { round: 0, credits: vec![(WorkerId(0), 64), (WorkerId(1), 6)] },
    ];
    store.record(40, &events, &[], &coordinator()).unwrap();
    let totals = store.collateral().unwrap();
    assert_eq!(
        (
            totals[&WorkerId(1)].deposited,
            totals[&WorkerId(1)].drawn_from_escrow,
            totals[&WorkerId(1)].drawn_from_bond
        ),
        (900, 30, 470)
    );
    assert_eq!((totals[&WorkerId(0)].vested, totals[&WorkerId(1)].vested), (64, 6));
    assert_eq!(verify_ledger(&path, None).unwrap().len(), store.ledger_length().unwrap() as usize);
}

#[test]
fn ledger_pages_by_kind_from_either_end() {
    use crowdtrain_store::LedgerOrder::{Newest, Oldest};
    let dir = tempfile::tempdir().unwrap();
    let store = eventful(&dir.path().join("state.sqlite"));
    let kinds = |entries: Vec<crowdtrain_protocol::ledger::Sealed>| -> Vec<(u64, &'static str)> {
        entries
            .iter()
            .map(|sealed| {
                let entry = crowdtrain_protocol::ledger::Entry::from_bytes(&sealed.bytes).unwrap();
                assert_eq!(entry.index, sealed.index);
                (entry.index, entry.event.kind())
            })
            .collect()
    };
    let all = store.ledger().unwrap();
    assert_eq!(store.ledger_length().unwrap(), all.len() as u64);
    assert_eq!(store.ledger_page(&[], Oldest { from: 0 }, 1000).unwrap(), all);
    assert_eq!(store.ledger_page(&[], Oldest { from: 3 }, 2).unwrap(), all[3..5].to_vec());
    let newest = store.ledger_page(&[], Newest { before: None }, 3).unwrap();
    assert_eq!(newest.iter().map(|entry| entry.index).collect::<Vec<_>>(), vec![17, 16, 15]);
    let feed = ["audit", "slash", "auditor-slashed"];
    assert_eq!(
        kinds(store.ledger_page(&feed, Newest { before: None }, 10).unwrap()),
        vec![(11, "auditor-slashed"), (10, "slash"), (9, "audit")]
    );
    assert_eq!(kinds(store.ledger_page(&feed, Newest { before: Some(11) }, 1).unwrap()), vec![(10, "slash")]);
    assert_eq!(
        kinds(store.ledger_page(&feed, Oldest { from: 10 }, 10).unwrap()),
        vec![(10, "slash"), (11, "auditor-slashed")]
    );
    assert!(store.ledger_page(&["no-such-kind"], Newest { before: None }, 10).unwrap().is_empty());
    assert_eq!(store.ledger_entry(10).unwrap(), Some(all[10].clone()));
    assert_eq!(store.ledger_entry(99).unwrap(), None);
}

#[test]
fn withheld_pay_comes_off_the_rewards_and_the_totals_alike() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = eventful(&dir.path().join("state.sqlite"));
    let before = store.worker_statuses().unwrap()[0].earned;
    // The gate takes back rounds 0 and 1 (10 + 60 credits) in round 2.
    let withheld = Event::PayWithheld { round: 2, worker: WorkerId(0), first_round: 0, credits: 70 };
    store.record(40, &[withheld], &[], &coordinator()).unwrap();
    store.check_worker_totals().unwrap();
    assert_eq!(store.worker_statuses().unwrap()[0].earned, before - 70);
}

#[test]
fn an_answer_two_audits_share_is_kept_until_both_passed() {
    // A copier answers its audit with its victim's very bytes: one file,
    // named twice. Pruning it when the victim's audit passes would lose the
    // copier's undecided audit its answer, and a failed audit its evidence.
    let dir = tempfile::tempdir().unwrap();
    let mut store = started(&dir.path().join("state.sqlite"));
    let shared = Digest::of(b"the victim's answer");
    let commit = |worker: u64| Event::Commitment {
        round: 0,
        worker: WorkerId(worker),
        commitment: commitment(0),
        status: Recorded::Accepted,
        audit: Some(1),
        nonce: 300 + worker,
        received_unix_ms: 13,
    };
    let answered = |worker: u64, answer: Digest| Event::AuditAnswered {
        round: 0,
        worker: WorkerId(worker),
        answer,
        nonce: 400 + worker,
        received_unix_ms: 20,
    };
    let judged = |worker: u64, verdict: Verdict| Event::Audit {
        round: 0,
        worker: WorkerId(worker),
        segment: 1,
        verdict,
        judged_by: None,
        sender: None,
        decided_unix_ms: 21,
    };
    let events = [
        registered(0, "portable"),
        registered(1, "portable"),
        registered(2, "portable"),
        Event::RoundOpened {
            round: 0,
            base_model: Digest::of(b"m0"),
            participants: vec![WorkerId(0), WorkerId(1), WorkerId(2)],
            opened_unix_ms: 12,
            commit_deadline_unix_ms: 99,
            secret_commitment: Digest::of(b"s"),
        },
        commit(0),
        commit(1),
        commit(2),
        Event::AuditDraw {
            round: 0,
            secret: [1; 32],
            beacon: Digest::of(b"b"),
            audits: vec![(WorkerId(0), 1), (WorkerId(1), 1), (WorkerId(2), 1)],
            auditors: vec![],
            reveal_deadline_unix_ms: 200,
        },
        answered(0, shared),
        answered(1, shared),
        answered(2, Digest::of(b"an honest answer")),
        judged(0, Verdict::Passed),
        judged(2, Verdict::Passed),
    ];
    store.record(15, &events, &[], &coordinator()).unwrap();
    assert!(!store.answer_prunable(&shared).unwrap(), "the copier's audit is still to be replayed");
    assert!(store.answer_prunable(&Digest::of(b"an honest answer")).unwrap());
    assert!(!store.answer_prunable(&Digest::of(b"no audit names this")).unwrap());
    assert_eq!(store.prunable_answer_digests().unwrap(), vec![Digest::of(b"an honest answer")]);
    store.record(22, &[judged(1, Verdict::Failed("copied".into()))], &[], &coordinator()).unwrap();
    assert!(!store.answer_prunable(&shared).unwrap(), "the failed audit's evidence stays");
    assert_eq!(store.prunable_answer_digests().unwrap(), vec![Digest::of(b"an honest answer")]);
}

#[test]
fn a_delegated_pass_keeps_its_answer_while_its_round_is_open_and_yields_to_the_coordinators_verdict() {
    // A contest has the coordinator replay an audit a delegated auditor
    // passed (the pass proves nothing about copies): the answer must stay
    // for that replay, and the coordinator's verdict replaces the auditor's.
    let dir = tempfile::tempdir().unwrap();
    let mut store = started(&dir.path().join("state.sqlite"));
    let answer = Digest::of(b"the copier's answer");
    let draw = |auditors: Vec<(WorkerId, WorkerId)>| Event::AuditDraw {
        round: 0,
        secret: [1; 32],
        beacon: Digest::of(b"b"),
        audits: vec![(WorkerId(0), 1)],
        auditors,
        reveal_deadline_unix_ms: 200,
    };
    let judged = |verdict: Verdict, judged_by: Option<WorkerId>| Event::Audit {
        round: 0,
        worker: WorkerId(0),
        segment: 1,
        verdict,
        judged_by,
        sender: None,
        decided_unix_ms: 21,
    };
    let events = [
        registered(0, "portable"),
        registered(1, "portable"),
        round_0_opened(&[0, 1]),
        Event::Commitment {
            round: 0,
            worker: WorkerId(0),
            commitment: commitment(0),
            status: Recorded::Accepted,
            audit: Some(1),
            nonce: 300,
            received_unix_ms: 13,
        },
        draw(vec![(WorkerId(0), WorkerId(1))]),
        Event::AuditAnswered { round: 0, worker: WorkerId(0), answer, nonce: 400, received_unix_ms: 20 },
        judged(Verdict::Passed, Some(WorkerId(1))),
    ];
    store.record(15, &events, &[], &coordinator()).unwrap();
    store.check_worker_totals().unwrap();
    assert!(!store.answer_prunable(&answer).unwrap(), "a contest may still have the coordinator replay it");
    assert!(store.prunable_answer_digests().unwrap().is_empty());
    // The contest draws it again (for the coordinator, no auditor), and
    // the coordinator's replay fails it.
    let contest = [draw(vec![]), judged(Verdict::Failed("not its training".into()), None)];
    store.record(30, &contest, &[], &coordinator()).unwrap();
    store.check_worker_totals().unwrap();
    let statuses = store.worker_statuses().unwrap();
    assert_eq!(
        (statuses[0].audits_passed, statuses[0].audits_failed),
        (0, 1),
        "judged once, by the coordinator"
    );
    assert_eq!(statuses[1].audits_judged, 0, "the auditor's overruled pass is not a judgement");
    assert_eq!(store.audit_answer_digest(0, WorkerId(0)).unwrap(), answer);
    // A second delegated verdict on the same audit is not a record the
    // machine makes: refused, nothing written.
    let again = store.record(31, &[judged(Verdict::Passed, Some(WorkerId(1)))], &[], &coordinator());
    assert!(again.is_err());
}

/// Round 0 opened with `participants`.
fn round_0_opened(participants: &[u64]) -> Event {
    Event::RoundOpened {
        round: 0,
        base_model: Digest::of(b"m0"),
        participants: participants.iter().copied().map(WorkerId).collect(),
        opened_unix_ms: 12,
        commit_deadline_unix_ms: 99,
        secret_commitment: Digest::of(b"s"),
    }
}

fn model_rewarded(worker: u64, delivered: bool) -> Event {
    use crowdtrain_protocol::reward_model::{
        Metric, ModelReward, RewardOutcome, RewardRecipe, RunCheckpoint, Withheld,
    };
    let checkpoint =
        |round: u64| RunCheckpoint { round: Some(round), model: Digest::of(&round.to_le_bytes()) };
    let outcome = if delivered {
        RewardOutcome::Delivered(RewardRecipe {
            model_name: "mlp".into(),
            metric: Metric::Accuracy,
            evaluation_set: Digest::of(b"test"),
            target: 0.8,
            tolerance: 0.005,
            lower: checkpoint(0),
            upper: checkpoint(1),
            coefficient: 0.5,
            reward_model: Digest::of(&[worker as u8]),
            measured: 0.801,
            final_model: checkpoint(1),
            final_measured: 0.85,
        })
    } else {
        RewardOutcome::Withheld(Withheld::UnderDelivered)
    };
    Event::ModelRewarded(ModelReward {
        worker: WorkerId(worker),
        option: 0,
        coalition: vec![2],
        realised: 0.85,
        promised: 0.8,
        required_contribution: 100,
        delivered_contribution: if delivered { 128 } else { 64 },
        outcome,
    })
}

/// A model reward is recorded once per participant (a second one fails
/// the batch and changes nothing), and read back by worker; a version 7
/// database gains the table.
#[test]
fn model_rewards_are_recorded_once_per_participant_and_a_version_7_database_gains_them() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.sqlite");
    drop(eventful(&path));
    let connection = rusqlite::Connection::open(&path).unwrap();
    connection
        .execute_batch("DROP TABLE model_rewards; DROP TABLE collateral; PRAGMA user_version = 7;")
        .unwrap();
    drop(connection);
    let mut store = Store::open(&path).unwrap();
    let signer = coordinator();
    store.record(50, &[model_rewarded(0, true), model_rewarded(1, false)], &[], &signer).unwrap();
    let length = store.ledger_length().unwrap();
    assert!(matches!(
        store.record(51, &[model_rewarded(0, true)], &[], &signer),
        Err(StoreError::Corrupt(message)) if message.contains("already recorded")
    ));
    assert_eq!(store.ledger_length().unwrap(), length, "the refused batch left nothing");
    assert_eq!(store.model_reward(WorkerId(0)).unwrap(), Some(Ok(Digest::of(&[0]))));
    assert_eq!(store.model_reward(WorkerId(1)).unwrap(), Some(Err("under-delivered".into())));
    assert_eq!(store.model_reward(WorkerId(7)).unwrap(), None);
    let rewards = store.model_rewards().unwrap();
    assert_eq!(rewards.len(), 2);
    assert_eq!(Event::ModelRewarded(rewards[&WorkerId(1)].clone()), model_rewarded(1, false));
}
