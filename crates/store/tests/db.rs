//! The coordinator database on real SQLite files.

use crowdtrain_protocol::coordinator::RoundState;
use crowdtrain_protocol::wire::SubmissionStatus;
use crowdtrain_protocol::{Digest, Identity, PublicKey, WorkerId};
use crowdtrain_store::{RunRecord, Store, StoreError, Write};

fn key(index: u8) -> PublicKey {
    Identity::from_seed([index; 32]).public_key()
}

fn record() -> RunRecord {
    RunRecord {
        run_id: Digest::of(b"run"),
        protocol_version: 1,
        config_json: "{}".into(),
        coordinator_key: key(9),
        model_name: "mlp-784-256-10".into(),
        initial_model: Digest::of(b"m0"),
        initial_momentum: Digest::of(b"z0"),
        created_unix_ms: 5,
    }
}

fn populated(path: &std::path::Path) -> Store {
    let mut store = Store::open(path).unwrap();
    store.create_run(&record()).unwrap();
    let participants = [WorkerId(0), WorkerId(1)];
    store
        .apply(&[
            Write::Worker { worker: WorkerId(0), key: key(0), registered_unix_ms: 10 },
            Write::Worker { worker: WorkerId(1), key: key(1), registered_unix_ms: 11 },
            Write::OpenRound {
                round: 0,
                base_model: Digest::of(b"m0"),
                participants: participants.to_vec(),
                opened_unix_ms: 12,
                deadline_unix_ms: 99,
            },
        ])
        .unwrap();
    store
}

fn submission(worker: u64, payload: &[u8], nonce: u64) -> Write {
    Write::Submission {
        round: 0,
        worker: WorkerId(worker),
        status: SubmissionStatus::Accepted,
        digest: Digest::of(payload),
        payload: payload.to_vec(),
        nonce,
        received_unix_ms: 20,
    }
}

#[test]
fn state_survives_reopening_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.sqlite");
    {
        let mut store = populated(&path);
        store.apply(&[submission(1, b"second", 700), submission(0, b"first", 500)]).unwrap();
    }
    let store = Store::open(&path).unwrap();
    assert_eq!(store.run().unwrap(), Some(record()));
    let snapshot = store.snapshot(Digest::of(b"m0")).unwrap();
    assert_eq!(snapshot.workers, vec![(WorkerId(0), key(0), 500), (WorkerId(1), key(1), 700)]);
    assert_eq!(snapshot.rounds.len(), 1);
    let round = &snapshot.rounds[0];
    assert_eq!(round.state, RoundState::Open);
    assert_eq!(round.participants, vec![WorkerId(0), WorkerId(1)]);
    assert_eq!(round.submissions.len(), 2);
    assert_eq!(
        store.accepted_payloads(0).unwrap(),
        vec![(WorkerId(0), b"first".to_vec()), (WorkerId(1), b"second".to_vec())],
        "payloads come back in worker (slot) order"
    );
}

#[test]
fn a_batch_with_a_failing_write_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = populated(&dir.path().join("state.sqlite"));
    // The second write references a round that does not exist.
    let mut bad = submission(1, b"x", 1);
    if let Write::Submission { round, .. } = &mut bad {
        *round = 7;
    }
    assert!(store.apply(&[submission(0, b"ok", 1), bad]).is_err());
    assert!(store.accepted_payloads(0).unwrap().is_empty(), "the first write was rolled back too");
    // A worker that is not a participant cannot have a submission.
    let stranger =
        [Write::Worker { worker: WorkerId(2), key: key(2), registered_unix_ms: 1 }, submission(2, b"y", 1)];
    assert!(store.apply(&stranger).is_err());
    assert_eq!(store.snapshot(Digest::of(b"m0")).unwrap().workers.len(), 2);
}

#[test]
fn closing_a_round_records_its_result_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = populated(&dir.path().join("state.sqlite"));
    store.apply(&[submission(0, b"a", 1)]).unwrap();
    let commit = Write::CommitRound {
        round: 0,
        result_model: Digest::of(b"m1"),
        result_momentum: Digest::of(b"z1"),
        closed_unix_ms: 30,
    };
    store.apply(std::slice::from_ref(&commit)).unwrap();
    assert!(
        matches!(store.apply(&[commit]), Err(StoreError::Corrupt(_))),
        "a closed round cannot close again"
    );
    assert_eq!(store.latest_result().unwrap(), Some((0, Digest::of(b"m1"), Digest::of(b"z1"), 1)));
    let records = store.round_records().unwrap();
    assert_eq!(records[0].status, "closed");
    assert_eq!((records[0].participants, records[0].accepted), (2, 1));
}

#[test]
fn a_database_from_a_newer_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.sqlite");
    drop(Store::open(&path).unwrap());
    rusqlite::Connection::open(&path).unwrap().pragma_update(None, "user_version", 99).unwrap();
    assert!(matches!(Store::open(&path), Err(StoreError::Schema { found: 99, .. })));
}
