//! The coordinator's durable state in one SQLite file (WAL, synchronous =
//! FULL): the signed ledger of the run's events, and tables built from
//! those events for the queries the coordinator and its status page make
//! (workers, rounds, assignments, commitments, reveals with their
//! payloads, audits, credits, refusals, rewards, model rewards, and each worker's totals,
//! kept up to date event by event so that a status page reads one row per
//! worker however long the run).
//!
//! The events are the one record of each fact: [`Store::record`] writes the
//! rows an event implies and its ledger entry together, and the events of
//! one input in one transaction, committed before the coordinator answers
//! the request that caused them. So an acknowledged submission survives a
//! crash at any point, the tables never disagree with the ledger, and a
//! restarted coordinator rebuilds its state machine from [`Store::events`].

use std::collections::BTreeMap;
use std::path::Path;

use crowdtrain_protocol::contract::{ContractChoice, ContractMenu};
use crowdtrain_protocol::coordinator::RoundState;
use crowdtrain_protocol::ledger::{self, Chain, Event, Reward, Sealed};
use crowdtrain_protocol::reward_model::{ModelReward, RewardOutcome};
use crowdtrain_protocol::wire::{RoundRecord, WorkerRound, WorkerStatus};
use crowdtrain_protocol::{Digest, Identity, PublicKey, Recorded, RoundId, Verdict, WorkerId};
use rusqlite::{Connection, OptionalExtension, named_params, params};

const SCHEMA_VERSION: i64 = 8;

/// Prepared statements kept per connection: the write path's few dozen
/// (each event kind's, and the totals' updates), with room to spare.
const STATEMENT_CACHE: usize = 96;

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
    class TEXT NOT NULL,
    registered_unix_ms INTEGER NOT NULL,
    token BLOB UNIQUE
);
CREATE UNIQUE INDEX workers_token ON workers (token);
CREATE TABLE rounds (
    id INTEGER PRIMARY KEY,
    state TEXT NOT NULL CHECK (state IN ('open', 'closed', 'failed')),
    base_model BLOB NOT NULL,
    opened_unix_ms INTEGER NOT NULL,
    commit_deadline_unix_ms INTEGER NOT NULL,
    extensions INTEGER NOT NULL DEFAULT 0,
    secret_commitment BLOB NOT NULL,
    secret BLOB,
    beacon BLOB,
    reveal_deadline_unix_ms INTEGER,
    closed_unix_ms INTEGER,
    result_model BLOB,
    result_momentum BLOB,
    result_aggregator BLOB,
    scored_unix_ms INTEGER,
    test_accuracy REAL,
    test_loss REAL,
    overhead_ms INTEGER,
    bytes_downloaded INTEGER,
    CHECK ((state = 'closed') = (result_model IS NOT NULL))
);
CREATE TABLE assignments (
    round INTEGER NOT NULL REFERENCES rounds (id),
    worker INTEGER NOT NULL REFERENCES workers (id),
    slot INTEGER NOT NULL,
    PRIMARY KEY (round, worker),
    UNIQUE (round, slot)
);
CREATE TABLE commitments (
    round INTEGER NOT NULL,
    worker INTEGER NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('accepted', 'late')),
    merkle_root BLOB NOT NULL,
    payload_digest BLOB NOT NULL,
    segments INTEGER NOT NULL,
    received_unix_ms INTEGER NOT NULL,
    PRIMARY KEY (round, worker),
    FOREIGN KEY (round, worker) REFERENCES assignments (round, worker)
);
CREATE TABLE reveals (
    round INTEGER NOT NULL,
    worker INTEGER NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('accepted', 'late', 'mismatch', 'malformed')),
    payload_digest BLOB NOT NULL,
    payload BLOB NOT NULL,
    received_unix_ms INTEGER NOT NULL,
    PRIMARY KEY (round, worker),
    FOREIGN KEY (round, worker) REFERENCES assignments (round, worker)
);
CREATE TABLE audits (
    round INTEGER NOT NULL,
    worker INTEGER NOT NULL,
    segment INTEGER NOT NULL,
    auditor INTEGER REFERENCES workers (id),
    answer_digest BLOB,
    answered_unix_ms INTEGER,
    verdict TEXT CHECK (verdict IN ('passed', 'failed', 'unanswered')),
    reason TEXT,
    judged_by INTEGER REFERENCES workers (id),
    decided_unix_ms INTEGER,
    PRIMARY KEY (round, worker),
    FOREIGN KEY (round, worker) REFERENCES assignments (round, worker)
);
CREATE TABLE credits (
    round INTEGER NOT NULL REFERENCES rounds (id),
    worker INTEGER NOT NULL REFERENCES workers (id),
    kind TEXT NOT NULL CHECK (kind IN ('work', 'slash', 'auditor-slash')),
    amount INTEGER NOT NULL CHECK (amount >= 0),
    reason TEXT NOT NULL,
    PRIMARY KEY (round, worker, kind)
);
CREATE TABLE refusals (
    round INTEGER NOT NULL,
    worker INTEGER NOT NULL,
    reason TEXT NOT NULL,
    PRIMARY KEY (round, worker),
    FOREIGN KEY (round, worker) REFERENCES assignments (round, worker)
);
CREATE TABLE rewards (
    round INTEGER NOT NULL,
    worker INTEGER NOT NULL,
    score REAL NOT NULL,
    quality REAL NOT NULL,
    multiplier REAL NOT NULL,
    units INTEGER NOT NULL,
    credits INTEGER NOT NULL CHECK (credits >= 0),
    PRIMARY KEY (round, worker),
    FOREIGN KEY (round, worker) REFERENCES assignments (round, worker)
);
CREATE TABLE ledger (
    idx INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    body BLOB NOT NULL,
    hash BLOB NOT NULL,
    signature BLOB NOT NULL
);
";

/// What version 7 added to version 6: per-worker totals kept up to date
/// event by event (so a status page costs the number of workers, not the
/// size of the run's history), the ledger by kind (so a feed of audits or
/// slashes reads only those entries), and the bytes each round's workers
/// downloaded.
const SCHEMA_7: &str = "
CREATE TABLE worker_totals (
    worker INTEGER PRIMARY KEY REFERENCES workers (id),
    rounds_assigned INTEGER NOT NULL DEFAULT 0,
    credited INTEGER NOT NULL DEFAULT 0,
    late INTEGER NOT NULL DEFAULT 0,
    rejected INTEGER NOT NULL DEFAULT 0,
    refused INTEGER NOT NULL DEFAULT 0,
    bytes_uploaded INTEGER NOT NULL DEFAULT 0,
    verified_work INTEGER NOT NULL DEFAULT 0,
    slashed INTEGER NOT NULL DEFAULT 0,
    earned INTEGER NOT NULL DEFAULT 0,
    quality REAL,
    quality_round INTEGER,
    audits_passed INTEGER NOT NULL DEFAULT 0,
    audits_failed INTEGER NOT NULL DEFAULT 0,
    audits_judged INTEGER NOT NULL DEFAULT 0,
    auditor_slashes INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX ledger_kind ON ledger (kind, idx);
";

/// One worker's row of `collateral` (see `crowdtrain_protocol::collateral`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CollateralTotals {
    pub deposited: u64,
    pub drawn_from_escrow: u64,
    pub drawn_from_bond: u64,
    pub uncovered: u64,
    pub vested: u64,
}

/// What version 8 added to version 7: each participant's model reward at
/// the end of a run with a contract (one row per worker: a reward is
/// recorded once), the recipe itself in its ledger entry (issue 15); and
/// each worker's collateral, summed from the `bond-deposited`,
/// `slash-drawn` and `vested` ledger entries (issue 14).
const SCHEMA_8: &str = "
CREATE TABLE model_rewards (
    worker INTEGER PRIMARY KEY REFERENCES workers (id),
    option INTEGER NOT NULL,
    promised REAL NOT NULL,
    required INTEGER NOT NULL,
    delivered INTEGER NOT NULL,
    reward_model BLOB,
    measured REAL,
    withheld TEXT,
    CHECK ((reward_model IS NULL) = (withheld IS NOT NULL))
);
CREATE TABLE collateral (
    worker INTEGER PRIMARY KEY REFERENCES workers (id),
    deposited INTEGER NOT NULL DEFAULT 0,
    drawn_from_escrow INTEGER NOT NULL DEFAULT 0,
    drawn_from_bond INTEGER NOT NULL DEFAULT 0,
    uncovered INTEGER NOT NULL DEFAULT 0,
    vested INTEGER NOT NULL DEFAULT 0
);
";

/// The per-worker totals computed from the tables themselves, one pass over
/// each: how a version 6 database gets its `worker_totals`, and what
/// [`Store::check_worker_totals`] compares them with.
const RECOMPUTED_TOTALS: &str = "
WITH
  assigned AS (SELECT worker, COUNT(*) AS n FROM assignments GROUP BY worker),
  credit AS (
    SELECT worker,
           SUM(kind = 'work') AS credited,
           SUM(CASE WHEN kind = 'work' THEN amount ELSE 0 END) AS work,
           SUM(CASE WHEN kind IN ('slash', 'auditor-slash') THEN amount ELSE 0 END) AS slashed,
           SUM(kind = 'slash') AS slashes,
           SUM(kind = 'auditor-slash') AS auditor_slashes
    FROM credits GROUP BY worker),
  revealed AS (
    SELECT worker, SUM(status = 'late') AS late, SUM(status = 'malformed') AS malformed,
           SUM(LENGTH(payload)) AS bytes
    FROM reveals GROUP BY worker),
  refused AS (SELECT worker, COUNT(*) AS n FROM refusals GROUP BY worker),
  audited AS (
    SELECT worker, SUM(verdict = 'passed') AS passed, SUM(verdict IN ('failed', 'unanswered')) AS failed
    FROM audits GROUP BY worker),
  judged AS (SELECT judged_by AS worker, COUNT(*) AS n FROM audits WHERE judged_by IS NOT NULL GROUP BY judged_by),
  -- SQLite takes a bare column of a MAX() aggregate from the row with the maximum.
  latest AS (SELECT worker, MAX(round) AS round, quality FROM rewards GROUP BY worker),
  earned AS (SELECT worker, SUM(credits) AS n FROM rewards GROUP BY worker)
SELECT w.id, COALESCE(assigned.n, 0), COALESCE(credit.credited, 0), COALESCE(revealed.late, 0),
       COALESCE(credit.slashes, 0) + COALESCE(revealed.malformed, 0), COALESCE(refused.n, 0),
       COALESCE(revealed.bytes, 0), COALESCE(credit.work, 0), COALESCE(credit.slashed, 0),
       COALESCE(earned.n, 0), latest.quality, latest.round, COALESCE(audited.passed, 0),
       COALESCE(audited.failed, 0), COALESCE(judged.n, 0), COALESCE(credit.auditor_slashes, 0)
FROM workers w
  LEFT JOIN assigned ON assigned.worker = w.id
  LEFT JOIN credit ON credit.worker = w.id
  LEFT JOIN revealed ON revealed.worker = w.id
  LEFT JOIN refused ON refused.worker = w.id
  LEFT JOIN audited ON audited.worker = w.id
  LEFT JOIN judged ON judged.worker = w.id
  LEFT JOIN latest ON latest.worker = w.id
  LEFT JOIN earned ON earned.worker = w.id
ORDER BY w.id
";

/// The columns of `worker_totals`, in [`RECOMPUTED_TOTALS`]' order.
const TOTALS_COLUMNS: &str = "worker, rounds_assigned, credited, late, rejected, refused, bytes_uploaded, \
     verified_work, slashed, earned, quality, quality_round, audits_passed, audits_failed, audits_judged, \
     auditor_slashes";

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

/// One scored round: its `(worker, score)` pairs.
pub type RoundScores = (RoundId, Vec<(WorkerId, f64)>);

/// What the latest closed round left behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LatestResult {
    pub round: RoundId,
    pub model: Digest,
    pub momentum: Digest,
    pub aggregator: Option<Digest>,
    /// How many rounds have closed.
    pub closed: u64,
}

/// Where a page of the ledger starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LedgerOrder {
    /// The newest entries first, from before index `before` (from the
    /// latest if `None`).
    Newest { before: Option<u64> },
    /// The oldest first, from index `from` on.
    Oldest { from: u64 },
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

/// The coordinator's database.
pub struct Store {
    connection: Connection,
    chain: Chain,
}

impl Store {
    /// Opens (creating if needed) the database at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Self::prepare(Connection::open(path)?, &path.display().to_string())
    }

    /// A database that lives in memory only: for tests and simulations,
    /// which run the same schema and the same writes as a real file.
    pub fn open_in_memory() -> Result<Self, StoreError> {
        Self::prepare(Connection::open_in_memory()?, ":memory:")
    }

    fn prepare(connection: Connection, path: &str) -> Result<Self, StoreError> {
        connection.pragma_update(None, "journal_mode", "WAL")?;
        connection.pragma_update(None, "synchronous", "FULL")?;
        connection.pragma_update(None, "foreign_keys", "ON")?;
        // Zero freed space, so no stale copy of a ledger entry (or of anything
        // else) lingers in the file where an edit would go unseen.
        connection.pragma_update(None, "secure_delete", "ON")?;
        connection.busy_timeout(std::time::Duration::from_secs(5))?;
        // Room for every statement of the write path (see `execute`).
        connection.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        let version: i64 = connection.pragma_query_value(None, "user_version", |row| row.get(0))?;
        match version {
            0 => {
                connection.execute_batch(&format!(
                    "BEGIN; {SCHEMA} {SCHEMA_7} {SCHEMA_8} PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;"
                ))?;
            }
            6 => {
                connection.execute_batch(&format!(
                    "BEGIN; {SCHEMA_7} ALTER TABLE rounds ADD COLUMN bytes_downloaded INTEGER;
                     INSERT INTO worker_totals ({TOTALS_COLUMNS}) {RECOMPUTED_TOTALS};
                     {SCHEMA_8} PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;"
                ))?;
            }
            // A version 7 ledger has no model rewards or collateral entries:
            // the tables start empty.
            7 => {
                connection.execute_batch(&format!(
                    "BEGIN; {SCHEMA_8} PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;"
                ))?;
            }
            SCHEMA_VERSION => {}
            found => return Err(StoreError::Schema { path: path.to_owned(), found }),
        }
        let head: Option<(u64, Vec<u8>)> = connection
            .query_row("SELECT idx, hash FROM ledger ORDER BY idx DESC LIMIT 1", [], |row| {
                Ok((row.get(0)?, row.get(1)?))
            })
            .optional()?;
        let chain = match head {
            None => Chain::empty(),
            Some((index, hash)) => {
                let hash: [u8; 32] = hash
                    .try_into()
                    .map_err(|_| StoreError::Corrupt("a ledger hash is not 32 bytes".into()))?;
                Chain::resume(index + 1, Digest(hash))
            }
        };
        Ok(Self { connection, chain })
    }

    /// Leaves WAL checkpoints to [`Store::checkpoint_wal`], called off the
    /// critical path (by default SQLite checkpoints inside whichever commit
    /// crosses 1000 pages, which then takes ten times as long).
    pub fn defer_wal_checkpoints(&self) -> Result<(), StoreError> {
        self.connection.pragma_update(None, "wal_autocheckpoint", 0)?;
        Ok(())
    }

    /// Copies what the WAL holds into the database without waiting for, or
    /// blocking, anyone (a passive checkpoint).
    pub fn checkpoint_wal(&self) -> Result<(), StoreError> {
        self.connection.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))?;
        Ok(())
    }

    /// A read-only connection to the database at `path`, which the
    /// coordinator's writer created: for status pages that must never wait
    /// on (or delay) the writer. WAL lets it read the last committed state
    /// while a write is in progress.
    pub fn open_reader(path: &Path) -> Result<Self, StoreError> {
        let connection = Connection::open_with_flags(
            path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        connection.busy_timeout(std::time::Duration::from_secs(5))?;
        let version: i64 = connection.pragma_query_value(None, "user_version", |row| row.get(0))?;
        if version != SCHEMA_VERSION {
            return Err(StoreError::Schema { path: path.display().to_string(), found: version });
        }
        Ok(Self { connection, chain: Chain::empty() })
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

    /// Creates the run: its record, and the [`Event::RunStarted`] that
    /// opens its ledger, in one transaction.
    pub fn create_run(
        &mut self,
        run: &RunRecord,
        config: Digest,
        signer: &Identity,
    ) -> Result<(), StoreError> {
        let started = Event::RunStarted {
            run_id: run.run_id,
            coordinator: run.coordinator_key,
            config,
            initial_model: run.initial_model,
            initial_momentum: run.initial_momentum,
        };
        let mut chain = self.chain.clone();
        let transaction = self.connection.transaction()?;
        transaction.execute(
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
        append(&transaction, &mut chain, signer, run.created_unix_ms, &started)?;
        transaction.commit()?;
        self.chain = chain;
        Ok(())
    }

    /// Records `events` in one transaction, all or nothing: for each, the
    /// rows it implies and its ledger entry (chained and signed with
    /// `signer`, stamped `unix_ms`). A reveal's bytes come from `payloads`,
    /// by digest. An event the tables cannot take (a second commitment of
    /// the same worker in a round, a verdict on an audit never drawn, a
    /// reveal without its bytes) fails the whole batch.
    pub fn record(
        &mut self,
        unix_ms: u64,
        events: &[Event],
        payloads: &[(Digest, &[u8])],
        signer: &Identity,
    ) -> Result<(), StoreError> {
        if events.is_empty() {
            return Ok(());
        }
        let mut chain = self.chain.clone();
        let transaction = self.connection.transaction()?;
        for event in events {
            project(&transaction, unix_ms, event, payloads)?;
            append(&transaction, &mut chain, signer, unix_ms, event)?;
        }
        transaction.commit()?;
        self.chain = chain;
        Ok(())
    }

    /// Every event recorded, in order: what a restarted coordinator
    /// replays.
    pub fn events(&self) -> Result<Vec<Event>, StoreError> {
        self.ledger()?
            .iter()
            .map(|sealed| {
                ledger::Entry::from_bytes(&sealed.bytes)
                    .map(|entry| entry.event)
                    .map_err(|reason| StoreError::Corrupt(format!("ledger entry {}: {reason}", sealed.index)))
            })
            .collect()
    }

    /// The contract menu the run published, if it offers one.
    pub fn contract_menu(&self) -> Result<Option<ContractMenu>, StoreError> {
        let body: Option<(i64, Vec<u8>)> = self
            .connection
            .query_row(
                "SELECT idx, body FROM ledger WHERE kind = 'contract-published' ORDER BY idx LIMIT 1",
                [],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .optional()?;
        let Some((index, body)) = body else { return Ok(None) };
        match ledger::Entry::from_bytes(&body) {
            Ok(ledger::Entry { event: Event::ContractPublished { menu }, .. }) => Ok(Some(menu)),
            Ok(_) => {
                Err(StoreError::Corrupt(format!("ledger entry {index} is not the contract it is filed as")))
            }
            Err(reason) => Err(StoreError::Corrupt(format!("ledger entry {index}: {reason}"))),
        }
    }

    /// The model rewards recorded so far, by worker (from their ledger
    /// entries, which hold the recipes).
    pub fn model_rewards(&self) -> Result<BTreeMap<WorkerId, ModelReward>, StoreError> {
        let mut statement = self
            .connection
            .prepare("SELECT idx, body FROM ledger WHERE kind = 'model-rewarded' ORDER BY idx")?;
        let rows = statement.query_map([], |row| Ok((row.get::<_, i64>(0)?, row.get::<_, Vec<u8>>(1)?)))?;
        let mut rewards = BTreeMap::new();
        for row in rows {
            let (index, body) = row?;
            match ledger::Entry::from_bytes(&body) {
                Ok(ledger::Entry { event: Event::ModelRewarded(reward), .. }) => {
                    rewards.insert(reward.worker, reward);
                }
                Ok(_) => {
                    return Err(StoreError::Corrupt(format!(
                        "ledger entry {index} is not the model reward it is filed as"
                    )));
                }
                Err(reason) => return Err(StoreError::Corrupt(format!("ledger entry {index}: {reason}"))),
            }
        }
        Ok(rewards)
    }

    /// `worker`'s model reward, if recorded: the digest of its model file,
    /// or why it was withheld.
    pub fn model_reward(&self, worker: WorkerId) -> Result<Option<Result<Digest, String>>, StoreError> {
        let row: Option<(Option<Vec<u8>>, Option<String>)> = self
            .connection
            .query_row(
                "SELECT reward_model, withheld FROM model_rewards WHERE worker = ?1",
                params![worker.0],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .optional()?;
        Ok(match row {
            None => None,
            Some((Some(digest), _)) => Some(Ok(Digest(
                digest
                    .try_into()
                    .map_err(|_| StoreError::Corrupt("a model digest is not 32 bytes".into()))?,
            ))),
            Some((None, withheld)) => Some(Err(withheld.unwrap_or_default())),
        })
    }

    /// Each participant's latest choice of option, by worker.
    pub fn choices(&self) -> Result<BTreeMap<WorkerId, ContractChoice>, StoreError> {
        let mut statement = self
            .connection
            .prepare("SELECT idx, body FROM ledger WHERE kind = 'option-chosen' ORDER BY idx")?;
        let rows = statement.query_map([], |row| Ok((row.get::<_, i64>(0)?, row.get::<_, Vec<u8>>(1)?)))?;
        let mut choices = BTreeMap::new();
        for row in rows {
            let (index, body) = row?;
            match ledger::Entry::from_bytes(&body) {
                Ok(ledger::Entry { event: Event::OptionChosen { worker, choice }, .. }) => {
                    choices.insert(worker, choice);
                }
                Ok(_) => {
                    return Err(StoreError::Corrupt(format!(
                        "ledger entry {index} is not the choice it is filed as"
                    )));
                }
                Err(reason) => return Err(StoreError::Corrupt(format!("ledger entry {index}: {reason}"))),
            }
        }
        Ok(choices)
    }

    /// Records the test accuracy and loss of a round's result.
    pub fn set_evaluation(&mut self, round: RoundId, accuracy: f64, loss: f64) -> Result<(), StoreError> {
        self.connection.execute(
            "UPDATE rounds SET test_accuracy = ?2, test_loss = ?3 WHERE id = ?1",
            params![round, accuracy, loss],
        )?;
        Ok(())
    }

    /// Records how long the coordinator took from a round's last awaited
    /// input to the next round being open (durably).
    pub fn set_overhead(&mut self, round: RoundId, overhead_ms: u64) -> Result<(), StoreError> {
        self.connection
            .execute("UPDATE rounds SET overhead_ms = ?2 WHERE id = ?1", params![round, overhead_ms])?;
        Ok(())
    }

    /// Records how many bytes the coordinator served while `round` was
    /// open (its model to its participants, audit tasks): a measurement,
    /// like the overhead, not a fact of the ledger.
    /// The model round `round` trained from.
    pub fn round_base_model(&self, round: RoundId) -> Result<Digest, StoreError> {
        self.connection
            .query_row("SELECT base_model FROM rounds WHERE id = ?1", [round], |row| {
                Ok(Digest(blob(row, 0)?))
            })
            .optional()?
            .ok_or_else(|| StoreError::Corrupt(format!("no round {round}")))
    }

    pub fn set_downloads(&mut self, round: RoundId, bytes: u64) -> Result<(), StoreError> {
        self.connection
            .execute("UPDATE rounds SET bytes_downloaded = ?2 WHERE id = ?1", params![round, bytes])?;
        Ok(())
    }

    /// Closed rounds whose result has not been evaluated yet (the
    /// coordinator stopped before it finished), with their models.
    pub fn unevaluated_rounds(&self) -> Result<Vec<(RoundId, Digest)>, StoreError> {
        let mut statement = self.connection.prepare(
            "SELECT id, result_model FROM rounds WHERE state = 'closed' AND test_accuracy IS NULL ORDER BY id",
        )?;
        let rows = statement.query_map([], |row| Ok((row.get(0)?, Digest(blob(row, 1)?))))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The revealed payloads of `workers` in `round`, in the order given;
    /// an error if any of them has no accepted reveal.
    pub fn payloads(&self, round: RoundId, workers: &[WorkerId]) -> Result<Vec<Vec<u8>>, StoreError> {
        let mut statement = self.connection.prepare(
            "SELECT payload FROM reveals WHERE round = ?1 AND worker = ?2 AND status = 'accepted'",
        )?;
        workers
            .iter()
            .map(|worker| {
                statement.query_row(params![round, worker.0], |row| row.get(0)).optional()?.ok_or_else(|| {
                    StoreError::Corrupt(format!("no accepted reveal of {worker} in round {round}"))
                })
            })
            .collect()
    }

    /// The stored answers no audit needs any more: every audit that names
    /// them passed (the verdict and the commitment are the record). An
    /// answer is a file named by its content, so two audits can name the
    /// same file: a copier's answer is bit for bit its victim's when both
    /// are audited on the same segment. Such a file stays while any audit
    /// naming it is undecided (it is still to be replayed) or failed (it is
    /// the evidence for the slash), and while a delegated auditor's pass
    /// naming it is in a round still open (a contest has the coordinator
    /// replay it).
    pub fn prunable_answer_digests(&self) -> Result<Vec<Digest>, StoreError> {
        let mut statement = self.connection.prepare(
            "SELECT DISTINCT answer_digest FROM audits AS passed
             WHERE verdict = 'passed' AND answer_digest IS NOT NULL
               AND NOT EXISTS (SELECT 1 FROM audits AS other
                               WHERE other.answer_digest = passed.answer_digest
                                 AND (other.verdict IS NULL OR other.verdict != 'passed'
                                      OR (other.judged_by IS NOT NULL
                                          AND EXISTS (SELECT 1 FROM rounds
                                                      WHERE rounds.id = other.round AND rounds.state = 'open'))))",
        )?;
        let rows = statement.query_map([], |row| Ok(Digest(blob(row, 0)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Whether stored answer `digest` may be deleted: it is named by some
    /// audit, and every audit naming it passed (see
    /// [`Self::prunable_answer_digests`]).
    pub fn answer_prunable(&self, digest: &Digest) -> Result<bool, StoreError> {
        Ok(self.connection.query_row(
            "SELECT EXISTS (SELECT 1 FROM audits WHERE answer_digest = ?1)
                AND NOT EXISTS (SELECT 1 FROM audits WHERE answer_digest = ?1
                                AND (verdict IS NULL OR verdict != 'passed'
                                     OR (judged_by IS NOT NULL
                                         AND EXISTS (SELECT 1 FROM rounds
                                                     WHERE rounds.id = audits.round AND rounds.state = 'open'))))",
            params![&digest.0[..]],
            |row| row.get(0),
        )?)
    }

    /// The digest of the stored answer to `worker`'s audit in `round`.
    pub fn audit_answer_digest(&self, round: RoundId, worker: WorkerId) -> Result<Digest, StoreError> {
        let bytes: Vec<u8> = self
            .connection
            .query_row(
                "SELECT answer_digest FROM audits WHERE round = ?1 AND worker = ?2 AND answer_digest IS NOT NULL",
                params![round, worker.0],
                |row| row.get(0),
            )
            .optional()?
            .ok_or_else(|| {
                StoreError::Corrupt(format!("no stored audit answer of {worker} in round {round}"))
            })?;
        let digest: [u8; 32] = bytes.try_into().map_err(|_| {
            StoreError::Corrupt(format!(
                "the audit answer digest of {worker} in round {round} is not 32 bytes"
            ))
        })?;
        Ok(Digest(digest))
    }

    /// `workers` in the order their accepted commitments for `round`
    /// arrived (ties by worker id): the precedence the checks use.
    pub fn commitment_order(
        &self,
        round: RoundId,
        workers: &[WorkerId],
    ) -> Result<Vec<WorkerId>, StoreError> {
        let mut statement = self.connection.prepare(
            "SELECT worker FROM commitments WHERE round = ?1 AND status = 'accepted' ORDER BY received_unix_ms, worker",
        )?;
        let order: Vec<WorkerId> =
            statement.query_map([round], |row| Ok(WorkerId(row.get(0)?)))?.collect::<Result<_, _>>()?;
        let ordered: Vec<WorkerId> = order.into_iter().filter(|worker| workers.contains(worker)).collect();
        if ordered.len() != workers.len() {
            return Err(StoreError::Corrupt(format!(
                "accepted workers of round {round} without a commitment"
            )));
        }
        Ok(ordered)
    }

    /// The digests of every accepted reveal of rounds before `round`: the
    /// updates a resubmission would repeat.
    pub fn earlier_digests(
        &self,
        round: RoundId,
        rounds: u64,
    ) -> Result<std::collections::HashSet<[u8; 32]>, StoreError> {
        let mut statement = self.connection.prepare(
            "SELECT payload_digest FROM reveals WHERE round < ?1 AND round >= ?2 AND status = 'accepted'",
        )?;
        let rows = statement.query_map([round, round.saturating_sub(rounds)], |row| blob::<32>(row, 0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// What the latest closed round left behind; `None` before the first.
    pub fn latest_result(&self) -> Result<Option<LatestResult>, StoreError> {
        self.latest_result_before(RoundId::MAX)
    }

    /// What the latest closed round before `round` left behind (`closed`
    /// counting the closed rounds up to it); `None` if none closed before.
    pub fn latest_result_before(&self, round: RoundId) -> Result<Option<LatestResult>, StoreError> {
        let before = i64::try_from(round).unwrap_or(i64::MAX);
        let latest = self
            .connection
            .query_row(
                "SELECT id, result_model, result_momentum, result_aggregator FROM rounds
                 WHERE state = 'closed' AND id < ?1 ORDER BY id DESC LIMIT 1",
                [before],
                |row| {
                    Ok((
                        row.get::<_, u64>(0)?,
                        Digest(blob(row, 1)?),
                        Digest(blob(row, 2)?),
                        optional_digest(row, 3)?,
                    ))
                },
            )
            .optional()?;
        let closed: u64 = self.connection.query_row(
            "SELECT COUNT(*) FROM rounds WHERE state = 'closed' AND id < ?1",
            [before],
            |row| row.get(0),
        )?;
        Ok(latest.map(|(round, model, momentum, aggregator)| LatestResult {
            round,
            model,
            momentum,
            aggregator,
            closed,
        }))
    }

    /// The latest aggregator snapshot of a round before `round`, with that
    /// round (pass [`RoundId::MAX`] for the latest of all).
    pub fn latest_aggregator_snapshot_before(
        &self,
        round: RoundId,
    ) -> Result<Option<(RoundId, Digest)>, StoreError> {
        let before = i64::try_from(round).unwrap_or(i64::MAX);
        Ok(self
            .connection
            .query_row(
                "SELECT id, result_aggregator FROM rounds
                 WHERE state = 'closed' AND result_aggregator IS NOT NULL AND id < ?1
                 ORDER BY id DESC LIMIT 1",
                [before],
                |row| Ok((row.get(0)?, Digest(blob(row, 1)?))),
            )
            .optional()?)
    }

    /// Closed rounds after `round` (all of them for `None`), ascending.
    pub fn closed_rounds_after(&self, round: Option<RoundId>) -> Result<Vec<RoundId>, StoreError> {
        let mut statement = self
            .connection
            .prepare("SELECT id FROM rounds WHERE state = 'closed' AND id > ?1 ORDER BY id")?;
        let after = round.map_or(-1, |round| round as i64);
        let rows = statement.query_map([after], |row| row.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The workers credited with verified work in `round` (their updates
    /// passed the checks and were aggregated), ascending.
    pub fn credited(&self, round: RoundId) -> Result<Vec<WorkerId>, StoreError> {
        let mut statement = self
            .connection
            .prepare("SELECT worker FROM credits WHERE round = ?1 AND kind = 'work' ORDER BY worker")?;
        let workers =
            statement.query_map([round], |row| Ok(WorkerId(row.get(0)?)))?.collect::<Result<_, _>>()?;
        Ok(workers)
    }

    /// Closed rounds not yet scored, ascending.
    pub fn unscored_rounds(&self) -> Result<Vec<RoundId>, StoreError> {
        let mut statement = self
            .connection
            .prepare("SELECT id FROM rounds WHERE state = 'closed' AND scored_unix_ms IS NULL ORDER BY id")?;
        let rows = statement.query_map([], |row| row.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// What scoring a closed round needs: its base model and the workers
    /// credited with verified work in it (ascending). (The evaluation batch
    /// is keyed by the run's seed, not the round's beacon: `docs/PAY.md`.)
    pub fn scoring_input(&self, round: RoundId) -> Result<(Digest, Vec<WorkerId>), StoreError> {
        let base = self
            .connection
            .query_row("SELECT base_model FROM rounds WHERE id = ?1 AND state = 'closed'", [round], |row| {
                Ok(Digest(blob(row, 0)?))
            })
            .optional()?
            .ok_or_else(|| StoreError::Corrupt(format!("round {round} is not closed")))?;
        let mut statement = self
            .connection
            .prepare("SELECT worker FROM credits WHERE round = ?1 AND kind = 'work' ORDER BY worker")?;
        let workers =
            statement.query_map([round], |row| Ok(WorkerId(row.get(0)?)))?.collect::<Result<_, _>>()?;
        Ok((base, workers))
    }

    /// Every scored round's `(worker, score)` pairs, ascending by round then
    /// worker: what rebuilds the pay gate after a restart.
    pub fn score_history(&self) -> Result<Vec<RoundScores>, StoreError> {
        let mut statement =
            self.connection.prepare("SELECT round, worker, score FROM rewards ORDER BY round, worker")?;
        let rows = statement
            .query_map([], |row| Ok((row.get::<_, u64>(0)?, WorkerId(row.get(1)?), row.get::<_, f64>(2)?)))?;
        let mut history: Vec<RoundScores> = Vec::new();
        for row in rows {
            let (round, worker, score) = row?;
            match history.last_mut() {
                Some((last, scores)) if *last == round => scores.push((worker, score)),
                _ => history.push((round, vec![(worker, score)])),
            }
        }
        Ok(history)
    }

    /// Every round, for the status page.
    pub fn round_records(&self) -> Result<Vec<RoundRecord>, StoreError> {
        self.round_records_page(0, u64::MAX)
    }

    /// The test accuracy of the latest evaluated round, if any.
    pub fn latest_test_accuracy(&self) -> Result<Option<f64>, StoreError> {
        Ok(self
            .connection
            .query_row(
                "SELECT test_accuracy FROM rounds WHERE test_accuracy IS NOT NULL ORDER BY id DESC LIMIT 1",
                [],
                |row| row.get(0),
            )
            .optional()?)
    }

    /// SQLite's `data_version` of this connection: it changes whenever
    /// another connection has committed to the database since it was last
    /// read, so a reader can tell when what it read is stale.
    pub fn data_version(&self) -> Result<i64, StoreError> {
        Ok(self.connection.query_row("PRAGMA data_version", [], |row| row.get(0))?)
    }

    /// How many rounds have been opened.
    pub fn round_count(&self) -> Result<u64, StoreError> {
        Ok(self.connection.query_row("SELECT COUNT(*) FROM rounds", [], |row| row.get(0))?)
    }

    /// At most `limit` rounds from round `from` on, ascending.
    pub fn round_records_page(&self, from: RoundId, limit: u64) -> Result<Vec<RoundRecord>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let mut statement = self.connection.prepare(
            "SELECT r.id, r.state, r.opened_unix_ms, r.closed_unix_ms, r.result_model, r.test_accuracy, r.test_loss,
                    (SELECT COUNT(*) FROM assignments a WHERE a.round = r.id),
                    (SELECT COUNT(*) FROM credits c WHERE c.round = r.id AND c.kind = 'work'),
                    (SELECT MAX(received_unix_ms) FROM reveals v WHERE v.round = r.id),
                    r.overhead_ms,
                    (SELECT COUNT(*) FROM audits u WHERE u.round = r.id),
                    (SELECT COUNT(*) FROM credits c WHERE c.round = r.id AND c.kind = 'slash'),
                    (SELECT COUNT(*) FROM commitments m WHERE m.round = r.id AND m.status = 'accepted'),
                    (SELECT COUNT(*) FROM reveals v WHERE v.round = r.id AND v.status = 'accepted'),
                    (SELECT COUNT(*) FROM refusals f WHERE f.round = r.id),
                    r.scored_unix_ms IS NOT NULL,
                    (SELECT COALESCE(SUM(LENGTH(v.payload)), 0) FROM reveals v WHERE v.round = r.id),
                    r.bytes_downloaded
             FROM rounds r WHERE r.id >= ?1 ORDER BY r.id LIMIT ?2",
        )?;
        let rows = statement.query_map(params![from, limit], |row| {
            Ok(RoundRecord {
                round: row.get(0)?,
                status: round_state(row, 1)?,
                opened_unix_ms: row.get(2)?,
                closed_unix_ms: row.get(3)?,
                result_model: optional_digest(row, 4)?,
                test_accuracy: row.get(5)?,
                test_loss: row.get(6)?,
                participants: row.get(7)?,
                accepted: row.get(8)?,
                last_submission_unix_ms: row.get(9)?,
                coordinator_overhead_ms: row.get(10)?,
                audited: row.get(11)?,
                slashed: row.get(12)?,
                committed: row.get(13)?,
                revealed: row.get(14)?,
                refused: row.get(15)?,
                scored: row.get(16)?,
                bytes_uploaded: row.get(17)?,
                bytes_downloaded: row.get(18)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Each worker's collateral sums (workers with no collateral entry are
    /// absent): bonds deposited, slash draws, vested credits.
    pub fn collateral(&self) -> Result<BTreeMap<WorkerId, CollateralTotals>, StoreError> {
        let mut statement = self.connection.prepare(
            "SELECT worker, deposited, drawn_from_escrow, drawn_from_bond, uncovered, vested FROM collateral \
             ORDER BY worker",
        )?;
        let rows = statement.query_map([], |row| {
            Ok((
                WorkerId(row.get(0)?),
                CollateralTotals {
                    deposited: row.get(1)?,
                    drawn_from_escrow: row.get(2)?,
                    drawn_from_bond: row.get(3)?,
                    uncovered: row.get(4)?,
                    vested: row.get(5)?,
                },
            ))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Per-worker totals for the status page, in worker order; `active`
    /// and `last_seen_unix_ms` are filled in by the caller, who knows.
    /// Reads one row per worker, however long the run has been.
    pub fn worker_statuses(&self) -> Result<Vec<WorkerStatus>, StoreError> {
        self.worker_statuses_where("", [])
    }

    /// One worker's totals, as in [`Store::worker_statuses`].
    pub fn worker_status(&self, worker: WorkerId) -> Result<Option<WorkerStatus>, StoreError> {
        Ok(self.worker_statuses_where("WHERE w.id = ?1", [worker.0])?.pop())
    }

    /// At most `limit` of `worker`'s rounds from round `from` on,
    /// ascending: a few primary-key lookups per round, however long the run.
    pub fn worker_rounds(
        &self,
        worker: WorkerId,
        from: RoundId,
        limit: u64,
    ) -> Result<Vec<WorkerRound>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let mut statement = self.connection.prepare_cached(
            "SELECT a.round, r.state, m.status, v.status,
                    (SELECT amount FROM credits c WHERE c.round = a.round AND c.worker = a.worker AND c.kind = 'work'),
                    f.reason, u.segment, u.verdict,
                    (SELECT COALESCE(SUM(amount), 0) FROM credits c
                      WHERE c.round = a.round AND c.worker = a.worker AND c.kind IN ('slash', 'auditor-slash')),
                    w.credits, r.scored_unix_ms IS NOT NULL
             FROM assignments a JOIN rounds r ON r.id = a.round
               LEFT JOIN commitments m ON m.round = a.round AND m.worker = a.worker
               LEFT JOIN reveals v ON v.round = a.round AND v.worker = a.worker
               LEFT JOIN refusals f ON f.round = a.round AND f.worker = a.worker
               LEFT JOIN audits u ON u.round = a.round AND u.worker = a.worker
               LEFT JOIN rewards w ON w.round = a.round AND w.worker = a.worker
             WHERE a.round >= ?1 AND a.worker = ?2 ORDER BY a.round LIMIT ?3",
        )?;
        let rows = statement.query_map(params![from, worker.0, limit], |row| {
            let work: Option<u64> = row.get(4)?;
            Ok(WorkerRound {
                round: row.get(0)?,
                round_state: round_state(row, 1)?,
                commitment: row.get(2)?,
                reveal: row.get(3)?,
                accepted: work.is_some(),
                work: work.unwrap_or(0),
                refused: row.get(5)?,
                audit_segment: row.get(6)?,
                verdict: row.get(7)?,
                slashed: row.get(8)?,
                reward: row.get(9)?,
                scored: row.get(10)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn worker_statuses_where<P: rusqlite::Params>(
        &self,
        filter: &str,
        parameters: P,
    ) -> Result<Vec<WorkerStatus>, StoreError> {
        let mut statement = self.connection.prepare_cached(&format!(
            "SELECT w.id, w.public_key, w.class, t.rounds_assigned, t.credited, t.late, t.rejected, t.refused,
                    t.bytes_uploaded, t.verified_work, t.slashed, t.earned, t.quality, t.audits_passed,
                    t.audits_failed, t.audits_judged, t.auditor_slashes
             FROM workers w JOIN worker_totals t ON t.worker = w.id {filter} ORDER BY w.id"
        ))?;
        let rows = statement.query_map(parameters, |row| {
            let slashed: u64 = row.get(10)?;
            let earned: u64 = row.get(11)?;
            Ok(WorkerStatus {
                worker: WorkerId(row.get(0)?),
                public_key: PublicKey(blob(row, 1)?),
                class: row.get(2)?,
                active: false,
                last_seen_unix_ms: None,
                rounds_assigned: row.get(3)?,
                submissions_accepted: row.get(4)?,
                submissions_late: row.get(5)?,
                submissions_rejected: row.get(6)?,
                submissions_refused: row.get(7)?,
                bytes_uploaded: row.get(8)?,
                verified_work: row.get(9)?,
                slashed,
                earned,
                credits: earned as i64 - slashed as i64,
                quality: row.get(12)?,
                audits_passed: row.get(13)?,
                audits_failed: row.get(14)?,
                audits_judged: row.get(15)?,
                auditor_slashes: row.get(16)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Checks the per-worker totals kept event by event against the same
    /// totals computed from the tables; names the first worker that
    /// differs.
    pub fn check_worker_totals(&self) -> Result<(), StoreError> {
        type Row = (u64, [i64; 9], Option<f64>, Option<i64>, [i64; 4]);
        let read = |row: &rusqlite::Row<'_>| -> rusqlite::Result<Row> {
            let mut counts = [0i64; 9];
            for (index, count) in counts.iter_mut().enumerate() {
                *count = row.get(index + 1)?;
            }
            let mut audits = [0i64; 4];
            for (index, count) in audits.iter_mut().enumerate() {
                *count = row.get(index + 12)?;
            }
            Ok((row.get(0)?, counts, row.get(10)?, row.get(11)?, audits))
        };
        let kept: Vec<Row> = self
            .connection
            .prepare(&format!("SELECT {TOTALS_COLUMNS} FROM worker_totals ORDER BY worker"))?
            .query_map([], read)?
            .collect::<Result<_, _>>()?;
        let computed: Vec<Row> =
            self.connection.prepare(RECOMPUTED_TOTALS)?.query_map([], read)?.collect::<Result<_, _>>()?;
        if kept.len() != computed.len() {
            return Err(StoreError::Corrupt(format!(
                "totals for {} workers, {} registered",
                kept.len(),
                computed.len()
            )));
        }
        match kept.iter().zip(&computed).find(|(kept, computed)| kept != computed) {
            Some((kept, computed)) => Err(StoreError::Corrupt(format!(
                "worker {}'s totals are {kept:?}, its records add up to {computed:?}",
                kept.0
            ))),
            None => Ok(()),
        }
    }

    /// At most `limit` ledger entries of the given kinds (any kind if
    /// none is given), from where `order` says. Reads only the entries it
    /// returns (the ledger is indexed by kind), however long the ledger.
    pub fn ledger_page(
        &self,
        kinds: &[&str],
        order: LedgerOrder,
        limit: u64,
    ) -> Result<Vec<Sealed>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let as_i64 = |index: u64| i64::try_from(index).unwrap_or(i64::MAX);
        let (condition, direction, bound) = match order {
            LedgerOrder::Newest { before } => ("idx < :bound", "DESC", before.map_or(i64::MAX, as_i64)),
            LedgerOrder::Oldest { from } => ("idx >= :bound", "ASC", as_i64(from)),
        };
        let read = |row: &rusqlite::Row<'_>| {
            Ok(Sealed {
                index: row.get(0)?,
                bytes: row.get(1)?,
                hash: Digest(blob(row, 2)?),
                signature: crowdtrain_protocol::identity::SignatureBytes(blob(row, 3)?),
            })
        };
        let select = "SELECT idx, body, hash, signature FROM ledger";
        if kinds.is_empty() {
            let mut statement = self.connection.prepare_cached(&format!(
                "{select} WHERE {condition} ORDER BY idx {direction} LIMIT :limit"
            ))?;
            let rows = statement.query_map(named_params! { ":bound": bound, ":limit": limit }, read)?;
            return Ok(rows.collect::<Result<_, _>>()?);
        }
        // One range of the kind index per kind, then the first `limit` of
        // their union.
        let mut statement = self.connection.prepare_cached(&format!(
            "{select} WHERE kind = :kind AND {condition} ORDER BY idx {direction} LIMIT :limit"
        ))?;
        let mut entries: Vec<Sealed> = Vec::new();
        for kind in kinds {
            let rows = statement
                .query_map(named_params! { ":kind": kind, ":bound": bound, ":limit": limit }, read)?;
            entries.extend(rows.collect::<Result<Vec<_>, _>>()?);
        }
        match order {
            LedgerOrder::Newest { .. } => entries.sort_by_key(|entry| std::cmp::Reverse(entry.index)),
            LedgerOrder::Oldest { .. } => entries.sort_by_key(|entry| entry.index),
        }
        entries.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
        Ok(entries)
    }

    /// The ledger entry at `index`, if there is one.
    pub fn ledger_entry(&self, index: u64) -> Result<Option<Sealed>, StoreError> {
        Ok(self
            .ledger_page(&[], LedgerOrder::Oldest { from: index }, 1)?
            .into_iter()
            .find(|entry| entry.index == index))
    }

    /// How many entries the ledger holds.
    pub fn ledger_length(&self) -> Result<u64, StoreError> {
        Ok(self.connection.query_row("SELECT COALESCE(MAX(idx) + 1, 0) FROM ledger", [], |row| row.get(0))?)
    }

    /// Every ledger entry as stored, in order.
    pub fn ledger(&self) -> Result<Vec<Sealed>, StoreError> {
        let mut statement =
            self.connection.prepare("SELECT idx, body, hash, signature FROM ledger ORDER BY idx")?;
        let rows = statement.query_map([], |row| {
            Ok(Sealed {
                index: row.get(0)?,
                bytes: row.get(1)?,
                hash: Digest(blob(row, 2)?),
                signature: crowdtrain_protocol::identity::SignatureBytes(blob(row, 3)?),
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// SQLite's own structural check of the file.
    pub fn integrity_check(&self) -> Result<(), StoreError> {
        let result: String = self.connection.query_row("PRAGMA integrity_check", [], |row| row.get(0))?;
        if result == "ok" { Ok(()) } else { Err(StoreError::Corrupt(result)) }
    }
}

/// Writes the rows `event` implies.
fn project(
    transaction: &rusqlite::Transaction<'_>,
    unix_ms: u64,
    event: &Event,
    payloads: &[(Digest, &[u8])],
) -> Result<(), StoreError> {
    match event {
        Event::RunStarted { .. } => {
            return Err(StoreError::Corrupt("a run starts once, with Store::create_run".into()));
        }
        Event::WorkerRegistered { worker, key, class, registered_unix_ms, token } => {
            execute(
                transaction,
                "INSERT INTO workers (id, public_key, class, registered_unix_ms, token) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![worker.0, key.0, class, registered_unix_ms, token.map(|token| token.0)],
            )?;
            execute(transaction, "INSERT INTO worker_totals (worker) VALUES (?1)", [worker.0])?;
        }
        Event::RoundOpened {
            round,
            base_model,
            participants,
            opened_unix_ms,
            commit_deadline_unix_ms,
            secret_commitment,
        } => {
            execute(
                transaction,
                "INSERT INTO rounds (id, state, base_model, opened_unix_ms, commit_deadline_unix_ms, secret_commitment)
                 VALUES (?1, 'open', ?2, ?3, ?4, ?5)",
                params![round, base_model.0, opened_unix_ms, commit_deadline_unix_ms, secret_commitment.0],
            )?;
            for (slot, worker) in participants.iter().enumerate() {
                execute(
                    transaction,
                    "INSERT INTO assignments (round, worker, slot) VALUES (?1, ?2, ?3)",
                    params![round, worker.0, slot as u64],
                )?;
                add_to_totals(transaction, *worker, "rounds_assigned = rounds_assigned + 1", &[])?;
            }
        }
        Event::DeadlineExtended { round, commit_deadline_unix_ms, extensions } => {
            expect_one(execute(
                transaction,
                "UPDATE rounds SET commit_deadline_unix_ms = ?2, extensions = ?3 WHERE id = ?1 AND state = 'open'",
                params![round, commit_deadline_unix_ms, extensions],
            )?)?;
        }
        Event::Commitment { round, worker, commitment, status, audit, received_unix_ms, .. } => {
            execute(
                transaction,
                "INSERT INTO commitments (round, worker, status, merkle_root, payload_digest, segments,
                                          received_unix_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    round,
                    worker.0,
                    status.as_str(),
                    commitment.merkle_root.0,
                    commitment.payload.0,
                    commitment.segments,
                    received_unix_ms
                ],
            )?;
            if let Some(segment) = audit {
                execute(
                    transaction,
                    "INSERT INTO audits (round, worker, segment) VALUES (?1, ?2, ?3)",
                    params![round, worker.0, segment],
                )?;
            }
        }
        Event::AuditDraw { round, secret, beacon, audits, auditors, reveal_deadline_unix_ms } => {
            expect_one(execute(
                transaction,
                "UPDATE rounds SET secret = ?2, beacon = ?3, reveal_deadline_unix_ms = ?4 WHERE id = ?1 AND state = 'open'",
                params![round, secret, beacon.0, reveal_deadline_unix_ms],
            )?)?;
            // Most audits were drawn, and recorded, with their commitments;
            // the draw lists them, adds the contested ones (two commitments
            // to one update) and names the auditors.
            for (worker, segment) in audits {
                let auditor =
                    auditors.iter().find(|(audited, _)| audited == worker).map(|(_, auditor)| auditor.0);
                expect_one(execute(
                    transaction,
                    "INSERT INTO audits (round, worker, segment, auditor) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (round, worker) DO UPDATE SET auditor = COALESCE(excluded.auditor, auditor)
                     WHERE segment = excluded.segment",
                    params![round, worker.0, segment, auditor],
                )?)?;
            }
        }
        Event::AuditAnswered { round, worker, answer, received_unix_ms, .. } => {
            expect_one(execute(
                transaction,
                "UPDATE audits SET answer_digest = ?3, answered_unix_ms = ?4
                 WHERE round = ?1 AND worker = ?2 AND answer_digest IS NULL AND verdict IS NULL",
                params![round, worker.0, &answer.0[..], received_unix_ms],
            )?)?;
        }
        Event::Reveal { round, worker, payload, status, received_unix_ms, .. } => {
            let bytes =
                payloads.iter().find(|(digest, _)| digest == payload).map(|(_, bytes)| *bytes).ok_or_else(
                    || StoreError::Corrupt(format!("the reveal of {worker} in round {round} has no bytes")),
                )?;
            execute(
                transaction,
                "INSERT INTO reveals (round, worker, status, payload_digest, payload, received_unix_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![round, worker.0, status.as_str(), payload.0, bytes, received_unix_ms],
            )?;
            let late = u64::from(*status == Recorded::Late);
            let malformed = u64::from(*status == Recorded::Malformed);
            add_to_totals(
                transaction,
                *worker,
                "bytes_uploaded = bytes_uploaded + ?2, late = late + ?3, rejected = rejected + ?4",
                &[&(bytes.len() as u64), &late, &malformed],
            )?;
        }
        Event::Audit { round, worker, verdict, judged_by, decided_unix_ms, .. } => {
            let (name, reason) = match verdict {
                Verdict::Passed => ("passed", None),
                Verdict::Failed(reason) => ("failed", Some(reason.as_str())),
                Verdict::Unanswered => ("unanswered", None),
            };
            // A contest has the coordinator replay an audit a delegated
            // auditor passed: its verdict replaces the auditor's (the
            // ledger keeps both), and the pass no longer counts, for the
            // worker nor as the auditor's judgement.
            let overruled: Option<u64> = transaction
                .query_row(
                    "SELECT judged_by FROM audits
                     WHERE round = ?1 AND worker = ?2 AND verdict IS NOT NULL AND judged_by IS NOT NULL",
                    params![round, worker.0],
                    |row| row.get(0),
                )
                .optional()?;
            if overruled.is_some() && judged_by.is_some() {
                return Err(StoreError::Corrupt(format!(
                    "{worker}'s audit in round {round} is judged twice by delegated auditors"
                )));
            }
            expect_one(execute(
                transaction,
                "UPDATE audits SET verdict = ?3, reason = ?4, judged_by = ?5, decided_unix_ms = ?6
                 WHERE round = ?1 AND worker = ?2 AND (verdict IS NULL OR judged_by IS NOT NULL)",
                params![round, worker.0, name, reason, judged_by.map(|auditor| auditor.0), decided_unix_ms],
            )?)?;
            if let Some(auditor) = overruled {
                add_to_totals(transaction, *worker, "audits_passed = audits_passed - 1", &[])?;
                add_to_totals(transaction, WorkerId(auditor), "audits_judged = audits_judged - 1", &[])?;
            }
            let passed = u64::from(*verdict == Verdict::Passed);
            add_to_totals(
                transaction,
                *worker,
                "audits_passed = audits_passed + ?2, audits_failed = audits_failed + ?3",
                &[&passed, &(1 - passed)],
            )?;
            if let Some(auditor) = judged_by {
                add_to_totals(transaction, *auditor, "audits_judged = audits_judged + 1", &[])?;
            }
        }
        Event::AuditorSlashed { round, auditor, amount, reason, .. } => {
            credit(transaction, *round, *auditor, "auditor-slash", *amount, reason)?;
            add_to_totals(
                transaction,
                *auditor,
                "slashed = slashed + ?2, auditor_slashes = auditor_slashes + 1",
                &[amount],
            )?;
        }
        Event::BondDeposited { worker, amount } => {
            add_to_collateral(transaction, *worker, "deposited = deposited + ?2", &[amount])?;
        }
        Event::SlashDrawn { worker, escrow, bond, uncovered, .. } => {
            add_to_collateral(
                transaction,
                *worker,
                "drawn_from_escrow = drawn_from_escrow + ?2, drawn_from_bond = drawn_from_bond + ?3, \
                 uncovered = uncovered + ?4",
                &[escrow, bond, uncovered],
            )?;
        }
        Event::Vested { credits, .. } => {
            for (worker, amount) in credits {
                add_to_collateral(transaction, *worker, "vested = vested + ?2", &[amount])?;
            }
        }
        Event::Slash { round, worker, amount, reason } => {
            credit(transaction, *round, *worker, "slash", *amount, reason)?;
            add_to_totals(
                transaction,
                *worker,
                "slashed = slashed + ?2, rejected = rejected + 1",
                &[amount],
            )?;
        }
        Event::WorkAccepted { round, worker, units } => {
            credit(transaction, *round, *worker, "work", *units, "verified work")?;
            add_to_totals(
                transaction,
                *worker,
                "credited = credited + 1, verified_work = verified_work + ?2",
                &[units],
            )?;
        }
        Event::UpdateRefused { round, worker, reason } => {
            execute(
                transaction,
                "INSERT INTO refusals (round, worker, reason) VALUES (?1, ?2, ?3)",
                params![round, worker.0, reason],
            )?;
            add_to_totals(transaction, *worker, "refused = refused + 1", &[])?;
        }
        Event::RoundClosed {
            round,
            result_model,
            result_momentum,
            result_aggregator,
            closed_unix_ms,
            ..
        } => {
            expect_one(execute(
                transaction,
                "UPDATE rounds SET state = 'closed', result_model = ?2, result_momentum = ?3, result_aggregator = ?4,
                                   closed_unix_ms = ?5
                 WHERE id = ?1 AND state = 'open'",
                params![
                    round,
                    result_model.0,
                    result_momentum.0,
                    result_aggregator.map(|digest| digest.0),
                    closed_unix_ms
                ],
            )?)?;
        }
        Event::RoundFailed { round, closed_unix_ms, .. } => {
            expect_one(execute(
                transaction,
                "UPDATE rounds SET state = 'failed', closed_unix_ms = ?2 WHERE id = ?1 AND state = 'open'",
                params![round, closed_unix_ms],
            )?)?;
        }
        Event::Reward(Reward { round, worker, score, quality, multiplier, units, credits, .. }) => {
            execute(
                transaction,
                "INSERT INTO rewards (round, worker, score, quality, multiplier, units, credits)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![round, worker.0, score, quality, multiplier, units, credits],
            )?;
            // The quality after the latest round scored, whatever order
            // rewards are recorded in.
            add_to_totals(
                transaction,
                *worker,
                "earned = earned + ?2,
                 quality = CASE WHEN quality_round IS NULL OR quality_round <= ?3 THEN ?4 ELSE quality END,
                 quality_round = MAX(COALESCE(quality_round, ?3), ?3)",
                &[credits, round, quality],
            )?;
        }
        Event::RoundScored { round } => {
            expect_one(execute(
                transaction,
                "UPDATE rounds SET scored_unix_ms = ?2 WHERE id = ?1 AND state = 'closed' AND scored_unix_ms IS NULL",
                params![round, unix_ms],
            )?)?;
        }
        Event::RunFinished { .. } => {}
        Event::ContractPublished { .. } => {
            // The menu lives in its ledger entry (`Store::contract_menu`);
            // a run publishes one, before anyone can choose from it.
            let published: i64 = transaction.query_row(
                "SELECT COUNT(*) FROM ledger WHERE kind = 'contract-published'",
                [],
                |row| row.get(0),
            )?;
            if published != 0 {
                return Err(StoreError::Corrupt("the run's contract menu is already published".into()));
            }
        }
        Event::OptionChosen { worker, .. } => {
            // Choices live in their ledger entries (`Store::choices`).
            let known: i64 = transaction.query_row(
                "SELECT COUNT(*) FROM workers WHERE id = ?1",
                params![worker.0],
                |row| row.get(0),
            )?;
            if known == 0 {
                return Err(StoreError::Corrupt(format!("{worker} chose an option without registering")));
            }
        }
        Event::ModelRewarded(reward) => {
            let recipe = reward.outcome.recipe();
            let withheld = match &reward.outcome {
                RewardOutcome::Delivered(_) => None,
                RewardOutcome::Withheld(reason) => Some(reason.name()),
            };
            // One reward per participant: the primary key refuses a second.
            transaction
                .execute(
                    "INSERT INTO model_rewards (worker, option, promised, required, delivered, reward_model, \
                     measured, withheld) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                    params![
                        reward.worker.0,
                        reward.option,
                        reward.promised,
                        reward.required_contribution,
                        reward.delivered_contribution,
                        recipe.map(|recipe| recipe.reward_model.0),
                        recipe.map(|recipe| recipe.measured),
                        withheld
                    ],
                )
                .map_err(|error| match error {
                    rusqlite::Error::SqliteFailure(failure, _)
                        if failure.code == rusqlite::ErrorCode::ConstraintViolation =>
                    {
                        StoreError::Corrupt(format!(
                            "{}'s model reward is already recorded, or it never registered",
                            reward.worker
                        ))
                    }
                    other => other.into(),
                })?;
        }
        Event::PayWithheld { round, worker, first_round, .. } => {
            let withheld: i64 = transaction.query_row(
                "SELECT COALESCE(SUM(credits), 0) FROM rewards WHERE worker = ?1 AND round >= ?2 AND round < ?3",
                params![worker.0, first_round, round],
                |row| row.get(0),
            )?;
            execute(
                transaction,
                "UPDATE rewards SET credits = 0, multiplier = 0 WHERE worker = ?1 AND round >= ?2 AND round < ?3",
                params![worker.0, first_round, round],
            )?;
            // The totals follow the rewards they sum.
            add_to_totals(transaction, *worker, "earned = earned - ?2", &[&withheld])?;
        }
    }
    Ok(())
}

/// Updates `worker`'s row of `worker_totals` with `assignments` (SQL, its
/// parameters from `?2` on; `?1` is the worker).
fn add_to_totals(
    transaction: &rusqlite::Transaction<'_>,
    worker: WorkerId,
    assignments: &str,
    values: &[&dyn rusqlite::ToSql],
) -> Result<(), StoreError> {
    let mut statement =
        transaction.prepare_cached(&format!("UPDATE worker_totals SET {assignments} WHERE worker = ?1"))?;
    let mut parameters: Vec<&dyn rusqlite::ToSql> = vec![&worker.0];
    parameters.extend_from_slice(values);
    expect_one(statement.execute(&*parameters)?)
}

/// Adds to `worker`'s row of `collateral` (made on its first entry).
fn add_to_collateral(
    transaction: &rusqlite::Transaction<'_>,
    worker: WorkerId,
    assignments: &str,
    values: &[&dyn rusqlite::ToSql],
) -> Result<(), StoreError> {
    transaction
        .prepare_cached("INSERT INTO collateral (worker) VALUES (?1) ON CONFLICT (worker) DO NOTHING")?
        .execute([worker.0])?;
    let mut statement =
        transaction.prepare_cached(&format!("UPDATE collateral SET {assignments} WHERE worker = ?1"))?;
    let mut parameters: Vec<&dyn rusqlite::ToSql> = vec![&worker.0];
    parameters.extend_from_slice(values);
    expect_one(statement.execute(&*parameters)?)
}

fn credit(
    transaction: &rusqlite::Transaction<'_>,
    round: RoundId,
    worker: WorkerId,
    kind: &str,
    amount: u64,
    reason: &str,
) -> Result<(), StoreError> {
    execute(
        transaction,
        "INSERT INTO credits (round, worker, kind, amount, reason) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![round, worker.0, kind, amount, reason],
    )?;
    Ok(())
}

/// Appends `event` to the ledger as the chain's next entry.
fn append(
    transaction: &rusqlite::Transaction<'_>,
    chain: &mut Chain,
    signer: &Identity,
    unix_ms: u64,
    event: &Event,
) -> Result<(), StoreError> {
    let sealed = chain.append(signer, unix_ms, event.clone());
    execute(
        transaction,
        "INSERT INTO ledger (idx, kind, body, hash, signature) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![sealed.index, event.kind(), sealed.bytes, sealed.hash.0, sealed.signature.0],
    )?;
    Ok(())
}

/// Runs one statement of the write path, prepared once per connection:
/// every batch applies the same few dozen statements, and preparing each
/// again was most of the store's time in the whole-network simulation.
fn execute(
    transaction: &rusqlite::Transaction<'_>,
    sql: &str,
    parameters: impl rusqlite::Params,
) -> rusqlite::Result<usize> {
    transaction.prepare_cached(sql)?.execute(parameters)
}

fn expect_one(changed: usize) -> Result<(), StoreError> {
    if changed == 1 {
        Ok(())
    } else {
        Err(StoreError::Corrupt(format!("expected to change one row, changed {changed}")))
    }
}

fn round_state(row: &rusqlite::Row<'_>, index: usize) -> rusqlite::Result<RoundState> {
    let text: String = row.get(index)?;
    RoundState::parse(&text).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(
            index,
            rusqlite::types::Type::Text,
            format!("round state {text}").into(),
        )
    })
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

/// Verifies the ledger in the database at `path` against `coordinator`'s
/// key (by default the key the run was created with): SQLite's integrity
/// check, then every entry's index, link, hash and signature.
pub fn verify_ledger(
    path: &Path,
    coordinator: Option<PublicKey>,
) -> Result<Vec<ledger::Entry>, LedgerFailure> {
    if !path.is_file() {
        return Err(LedgerFailure::Unreadable(format!("no state database at {}", path.display())));
    }
    let store = Store::open(path).map_err(|error| LedgerFailure::Unreadable(error.to_string()))?;
    store.integrity_check().map_err(|error| LedgerFailure::Unreadable(error.to_string()))?;
    let key = match coordinator {
        Some(key) => key,
        None => {
            store
                .run()
                .map_err(|error| LedgerFailure::Unreadable(error.to_string()))?
                .ok_or_else(|| LedgerFailure::Unreadable("the state holds no run".into()))?
                .coordinator_key
        }
    };
    let sealed = store.ledger().map_err(|error| LedgerFailure::Unreadable(error.to_string()))?;
    let entries = ledger::verify(&sealed, &key).map_err(LedgerFailure::Broken)?;
    match entries.first().map(|entry| &entry.event) {
        Some(Event::RunStarted { coordinator, .. }) if *coordinator == key => Ok(entries),
        Some(_) => Err(LedgerFailure::Broken(ledger::Break {
            index: 0,
            reason: "the first entry does not start the run with this coordinator's key".into(),
        })),
        None => Ok(entries),
    }
}

/// Why a ledger does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LedgerFailure {
    #[error("the ledger cannot be read: {0}")]
    Unreadable(String),
    #[error(transparent)]
    Broken(ledger::Break),
}
