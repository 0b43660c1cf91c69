//! The coordinator's durable state in one SQLite file (WAL, synchronous =
//! FULL): the run, workers, rounds, assignments and submissions with their
//! payloads. Every batch of writes is one transaction, committed before the
//! coordinator answers the request that caused it, so an acknowledged
//! submission survives a crash at any point.

use std::path::Path;

use crowdtrain_protocol::coordinator::{RoundSnapshot, RoundState, Snapshot};
use crowdtrain_protocol::wire::{RoundRecord, SubmissionStatus, WorkerStatus};
use crowdtrain_protocol::{Digest, PublicKey, RoundId, WorkerId};
use rusqlite::{Connection, OptionalExtension, params};

const SCHEMA_VERSION: i64 = 1;

const SCHEMA: &str = "
CREATE TABLE run (
    singleton INTEGER PRIMARY KEY CHECK (singleton = 0),
    run_id BLOB NOT NULL,
    protocol_version INTEGER NOT NULL,
    config_json TEXT NOT NULL,
    coordinator_key BLOB NOT NULL,
    model_name TEXT NOT NULL,
    initial_model BLOB NOT NULL,
    initial_momentum BLOB NOT NULL,
    created_unix_ms INTEGER NOT NULL
);
CREATE TABLE workers (
    id INTEGER PRIMARY KEY,
    public_key BLOB NOT NULL UNIQUE,
    registered_unix_ms INTEGER NOT NULL,
    last_nonce INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE rounds (
    id INTEGER PRIMARY KEY,
    state TEXT NOT NULL CHECK (state IN ('open', 'closed', 'failed')),
    base_model BLOB NOT NULL,
    opened_unix_ms INTEGER NOT NULL,
    deadline_unix_ms INTEGER NOT NULL,
    extensions INTEGER NOT NULL DEFAULT 0,
    closed_unix_ms INTEGER,
    result_model BLOB,
    result_momentum BLOB,
    test_accuracy REAL,
    test_loss REAL,
    overhead_ms INTEGER,
    CHECK ((state = 'closed') = (result_model IS NOT NULL))
);
CREATE TABLE assignments (
    round INTEGER NOT NULL REFERENCES rounds (id),
    worker INTEGER NOT NULL REFERENCES workers (id),
    slot INTEGER NOT NULL,
    PRIMARY KEY (round, worker),
    UNIQUE (round, slot)
);
CREATE TABLE submissions (
    round INTEGER NOT NULL REFERENCES rounds (id),
    worker INTEGER NOT NULL REFERENCES workers (id),
    status TEXT NOT NULL CHECK (status IN ('accepted', 'late')),
    payload_digest BLOB NOT NULL,
    payload BLOB NOT NULL,
    nonce INTEGER NOT NULL,
    received_unix_ms INTEGER NOT NULL,
    PRIMARY KEY (round, worker),
    FOREIGN KEY (round, worker) REFERENCES assignments (round, worker)
);
";

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("state database {path} has schema version {found}; this build reads version {SCHEMA_VERSION}")]
    Schema { path: String, found: i64 },
    #[error("state database is inconsistent: {0}")]
    Corrupt(String),
}

/// The run, as created on first start.
#[derive(Debug, Clone, PartialEq)]
pub struct RunRecord {
    pub run_id: Digest,
    pub protocol_version: u32,
    pub config_json: String,
    pub coordinator_key: PublicKey,
    pub model_name: String,
    pub initial_model: Digest,
    pub initial_momentum: Digest,
    pub created_unix_ms: u64,
}

/// One durable change; a slice of them is applied atomically.
#[derive(Debug, Clone, PartialEq)]
pub enum Write {
    Worker {
        worker: WorkerId,
        key: PublicKey,
        registered_unix_ms: u64,
    },
    OpenRound {
        round: RoundId,
        base_model: Digest,
        participants: Vec<WorkerId>,
        opened_unix_ms: u64,
        deadline_unix_ms: u64,
    },
    ExtendRound {
        round: RoundId,
        deadline_unix_ms: u64,
        extensions: u32,
    },
    Submission {
        round: RoundId,
        worker: WorkerId,
        status: SubmissionStatus,
        digest: Digest,
        payload: Vec<u8>,
        nonce: u64,
        received_unix_ms: u64,
    },
    CommitRound {
        round: RoundId,
        result_model: Digest,
        result_momentum: Digest,
        closed_unix_ms: u64,
    },
    FailRound {
        round: RoundId,
        closed_unix_ms: u64,
    },
}

/// The coordinator's database.
pub struct Store {
    connection: Connection,
}

impl Store {
    /// Opens (creating if needed) the database at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let connection = Connection::open(path)?;
        connection.pragma_update(None, "journal_mode", "WAL")?;
        connection.pragma_update(None, "synchronous", "FULL")?;
        connection.pragma_update(None, "foreign_keys", "ON")?;
        connection.busy_timeout(std::time::Duration::from_secs(5))?;
        let version: i64 = connection.pragma_query_value(None, "user_version", |row| row.get(0))?;
        match version {
            0 => {
                connection.execute_batch(&format!(
                    "BEGIN; {SCHEMA} PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;"
                ))?;
            }
            SCHEMA_VERSION => {}
            found => return Err(StoreError::Schema { path: path.display().to_string(), found }),
        }
        Ok(Self { connection })
    }

    /// The run this database belongs to, if created.
    pub fn run(&self) -> Result<Option<RunRecord>, StoreError> {
        self.connection
            .query_row(
                "SELECT run_id, protocol_version, config_json, coordinator_key, model_name, initial_model,
                        initial_momentum, created_unix_ms FROM run",
                [],
                |row| {
                    Ok(RunRecord {
                        run_id: Digest(blob(row, 0)?),
                        protocol_version: row.get(1)?,
                        config_json: row.get(2)?,
                        coordinator_key: PublicKey(blob(row, 3)?),
                        model_name: row.get(4)?,
                        initial_model: Digest(blob(row, 5)?),
                        initial_momentum: Digest(blob(row, 6)?),
                        created_unix_ms: row.get(7)?,
                    })
                },
            )
            .optional()
            .map_err(StoreError::from)
    }

    pub fn create_run(&mut self, run: &RunRecord) -> Result<(), StoreError> {
        self.connection.execute(
            "INSERT INTO run (singleton, run_id, protocol_version, config_json, coordinator_key, model_name,
                              initial_model, initial_momentum, created_unix_ms)
             VALUES (0, ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                run.run_id.0,
                run.protocol_version,
                run.config_json,
                run.coordinator_key.0,
                run.model_name,
                run.initial_model.0,
                run.initial_momentum.0,
                run.created_unix_ms
            ],
        )?;
        Ok(())
    }

    /// Applies `writes` in one transaction: all or nothing.
    pub fn apply(&mut self, writes: &[Write]) -> Result<(), StoreError> {
        if writes.is_empty() {
            return Ok(());
        }
        let transaction = self.connection.transaction()?;
        for write in writes {
            apply_one(&transaction, write)?;
        }
        transaction.commit()?;
        Ok(())
    }

    /// Records the test accuracy and loss of a round's result.
    pub fn set_evaluation(&mut self, round: RoundId, accuracy: f64, loss: f64) -> Result<(), StoreError> {
        self.connection.execute(
            "UPDATE rounds SET test_accuracy = ?2, test_loss = ?3 WHERE id = ?1",
            params![round, accuracy, loss],
        )?;
        Ok(())
    }

    /// Records how long the coordinator took from a round's last accepted
    /// submission to the next round being open (durably).
    pub fn set_overhead(&mut self, round: RoundId, overhead_ms: u64) -> Result<(), StoreError> {
        self.connection
            .execute("UPDATE rounds SET overhead_ms = ?2 WHERE id = ?1", params![round, overhead_ms])?;
        Ok(())
    }

    /// Everything [`crowdtrain_protocol::Coordinator::restore`] needs.
    pub fn snapshot(&self, initial_model: Digest) -> Result<Snapshot, StoreError> {
        let mut statement =
            self.connection.prepare("SELECT id, public_key, last_nonce FROM workers ORDER BY id")?;
        let workers = statement
            .query_map([], |row| Ok((WorkerId(row.get(0)?), PublicKey(blob(row, 1)?), row.get(2)?)))?
            .collect::<Result<Vec<_>, _>>()?;
        let mut statement = self.connection.prepare(
            "SELECT id, state, base_model, opened_unix_ms, deadline_unix_ms, extensions, result_model
             FROM rounds ORDER BY id",
        )?;
        let mut rounds = statement
            .query_map([], |row| {
                let state: String = row.get(1)?;
                Ok(RoundSnapshot {
                    id: row.get(0)?,
                    state: match state.as_str() {
                        "open" => RoundState::Open,
                        "closed" => RoundState::Closed,
                        _ => RoundState::Failed,
                    },
                    base_model: Digest(blob(row, 2)?),
                    opened_unix_ms: row.get(3)?,
                    deadline_unix_ms: row.get(4)?,
                    extensions: row.get(5)?,
                    result_model: optional_digest(row, 6)?,
                    participants: Vec::new(),
                    submissions: Vec::new(),
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        let mut assignments =
            self.connection.prepare("SELECT worker FROM assignments WHERE round = ?1 ORDER BY slot")?;
        let mut submissions = self.connection.prepare(
            "SELECT worker, status, payload_digest FROM submissions WHERE round = ?1 ORDER BY worker",
        )?;
        for round in &mut rounds {
            round.participants = assignments
                .query_map([round.id], |row| Ok(WorkerId(row.get(0)?)))?
                .collect::<Result<_, _>>()?;
            round.submissions = submissions
                .query_map([round.id], |row| {
                    let status: String = row.get(1)?;
                    Ok((WorkerId(row.get(0)?), parse_status(&status), Digest(blob(row, 2)?)))
                })?
                .collect::<Result<_, _>>()?;
        }
        let open = rounds.iter().filter(|round| round.state == RoundState::Open).count();
        if open > 1 || rounds.iter().rev().skip(1).any(|round| round.state == RoundState::Open) {
            return Err(StoreError::Corrupt("an open round that is not the latest".into()));
        }
        Ok(Snapshot { initial_model, workers, rounds })
    }

    /// The accepted payloads of `round`, in ascending worker id (slot) order.
    pub fn accepted_payloads(&self, round: RoundId) -> Result<Vec<(WorkerId, Vec<u8>)>, StoreError> {
        let mut statement = self.connection.prepare(
            "SELECT worker, payload FROM submissions WHERE round = ?1 AND status = 'accepted' ORDER BY worker",
        )?;
        let rows = statement.query_map([round], |row| Ok((WorkerId(row.get(0)?), row.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The model and momentum after the latest closed round, with how many
    /// rounds have closed; `None` before the first.
    pub fn latest_result(&self) -> Result<Option<(RoundId, Digest, Digest, u64)>, StoreError> {
        let latest = self
            .connection
            .query_row(
                "SELECT id, result_model, result_momentum FROM rounds WHERE state = 'closed' ORDER BY id DESC LIMIT 1",
                [],
                |row| Ok((row.get::<_, u64>(0)?, Digest(blob(row, 1)?), Digest(blob(row, 2)?))),
            )
            .optional()?;
        let closed: u64 =
            self.connection
                .query_row("SELECT COUNT(*) FROM rounds WHERE state = 'closed'", [], |row| row.get(0))?;
        Ok(latest.map(|(round, model, momentum)| (round, model, momentum, closed)))
    }

    /// Every round, for the status page.
    pub fn round_records(&self) -> Result<Vec<RoundRecord>, StoreError> {
        let mut statement = self.connection.prepare(
            "SELECT r.id, r.state, r.opened_unix_ms, r.closed_unix_ms, r.result_model, r.test_accuracy, r.test_loss,
                    (SELECT COUNT(*) FROM assignments a WHERE a.round = r.id),
                    (SELECT COUNT(*) FROM submissions s WHERE s.round = r.id AND s.status = 'accepted'),
                    (SELECT MAX(received_unix_ms) FROM submissions s WHERE s.round = r.id AND s.status = 'accepted'),
                    r.overhead_ms
             FROM rounds r ORDER BY r.id",
        )?;
        let rows = statement.query_map([], |row| {
            let last_submission: Option<u64> = row.get(9)?;
            Ok(RoundRecord {
                round: row.get(0)?,
                status: row.get(1)?,
                opened_unix_ms: row.get(2)?,
                closed_unix_ms: row.get(3)?,
                result_model: optional_digest(row, 4)?,
                test_accuracy: row.get(5)?,
                test_loss: row.get(6)?,
                participants: row.get(7)?,
                accepted: row.get(8)?,
                last_submission_unix_ms: last_submission,
                coordinator_overhead_ms: row.get(10)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Per-worker totals for the status page; `active` is filled in by the
    /// caller, who knows.
    pub fn worker_statuses(&self) -> Result<Vec<WorkerStatus>, StoreError> {
        let mut statement = self.connection.prepare(
            "SELECT w.id, w.public_key,
                    (SELECT COUNT(*) FROM assignments a WHERE a.worker = w.id),
                    (SELECT COUNT(*) FROM submissions s WHERE s.worker = w.id AND s.status = 'accepted'),
                    (SELECT COUNT(*) FROM submissions s WHERE s.worker = w.id AND s.status = 'late'),
                    (SELECT COALESCE(SUM(LENGTH(s.payload)), 0) FROM submissions s WHERE s.worker = w.id)
             FROM workers w ORDER BY w.id",
        )?;
        let rows = statement.query_map([], |row| {
            Ok(WorkerStatus {
                worker: WorkerId(row.get(0)?),
                public_key: PublicKey(blob(row, 1)?),
                active: false,
                rounds_assigned: row.get(2)?,
                submissions_accepted: row.get(3)?,
                submissions_late: row.get(4)?,
                bytes_uploaded: row.get(5)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

fn apply_one(transaction: &rusqlite::Transaction<'_>, write: &Write) -> Result<(), StoreError> {
    match write {
        &Write::Worker { worker, key, registered_unix_ms } => {
            transaction.execute(
                "INSERT INTO workers (id, public_key, registered_unix_ms) VALUES (?1, ?2, ?3)",
                params![worker.0, key.0, registered_unix_ms],
            )?;
        }
        Write::OpenRound { round, base_model, participants, opened_unix_ms, deadline_unix_ms } => {
            let (round, opened_unix_ms, deadline_unix_ms) = (*round, *opened_unix_ms, *deadline_unix_ms);
            transaction.execute(
                "INSERT INTO rounds (id, state, base_model, opened_unix_ms, deadline_unix_ms)
                 VALUES (?1, 'open', ?2, ?3, ?4)",
                params![round, base_model.0, opened_unix_ms, deadline_unix_ms],
            )?;
            for (slot, worker) in participants.iter().enumerate() {
                transaction.execute(
                    "INSERT INTO assignments (round, worker, slot) VALUES (?1, ?2, ?3)",
                    params![round, worker.0, slot as u64],
                )?;
            }
        }
        &Write::ExtendRound { round, deadline_unix_ms, extensions } => {
            expect_one(transaction.execute(
                "UPDATE rounds SET deadline_unix_ms = ?2, extensions = ?3 WHERE id = ?1 AND state = 'open'",
                params![round, deadline_unix_ms, extensions],
            )?)?;
        }
        Write::Submission { round, worker, status, digest, payload, nonce, received_unix_ms } => {
            let (round, worker, nonce) = (*round, *worker, *nonce);
            transaction.execute(
                "INSERT INTO submissions (round, worker, status, payload_digest, payload, nonce, received_unix_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![round, worker.0, status.as_str(), digest.0, payload, nonce, received_unix_ms],
            )?;
            transaction.execute(
                "UPDATE workers SET last_nonce = MAX(last_nonce, ?2) WHERE id = ?1",
                params![worker.0, nonce],
            )?;
        }
        &Write::CommitRound { round, result_model, result_momentum, closed_unix_ms } => {
            expect_one(transaction.execute(
                "UPDATE rounds SET state = 'closed', result_model = ?2, result_momentum = ?3, closed_unix_ms = ?4
                 WHERE id = ?1 AND state = 'open'",
                params![round, result_model.0, result_momentum.0, closed_unix_ms],
            )?)?;
        }
        &Write::FailRound { round, closed_unix_ms } => {
            expect_one(transaction.execute(
                "UPDATE rounds SET state = 'failed', closed_unix_ms = ?2 WHERE id = ?1 AND state = 'open'",
                params![round, closed_unix_ms],
            )?)?;
        }
    }
    Ok(())
}

fn expect_one(changed: usize) -> Result<(), StoreError> {
    if changed == 1 {
        Ok(())
    } else {
        Err(StoreError::Corrupt(format!("expected to change one open round, changed {changed}")))
    }
}

fn parse_status(status: &str) -> SubmissionStatus {
    if status == "late" { SubmissionStatus::Late } else { SubmissionStatus::Accepted }
}

/// A fixed-size blob column; a wrong length is an error, never padded.
fn blob<const N: usize>(row: &rusqlite::Row<'_>, index: usize) -> rusqlite::Result<[u8; N]> {
    let bytes: Vec<u8> = row.get(index)?;
    bytes.try_into().map_err(|bytes: Vec<u8>| {
        rusqlite::Error::FromSqlConversionFailure(
            index,
            rusqlite::types::Type::Blob,
            format!("{} bytes where {N} belong", bytes.len()).into(),
        )
    })
}

fn optional_digest(row: &rusqlite::Row<'_>, index: usize) -> rusqlite::Result<Option<Digest>> {
    match row.get_ref(index)? {
        rusqlite::types::ValueRef::Null => Ok(None),
        _ => Ok(Some(Digest(blob(row, index)?))),
    }
}
