//! Durable state for the crowdtrain coordinator.
//!
//! # Brief overview
//!
//! - [`Store`] is the SQLite database (WAL, synchronous = FULL) holding the
//!   run, workers, rounds, assignments and submissions; [`Write`]s are
//!   applied in all-or-nothing transactions, and [`Store::snapshot`] gives
//!   back what the round state machine needs to resume after a crash.
//! - [`Checkpoints`] is a directory of safetensors files named by the hash
//!   of their content; [`checkpoint::encode`] and [`checkpoint::decode`]
//!   are deterministic and strict.
//! - [`trajectory`] reads a run's checkpoints in order, with the verified
//!   work behind each and its evaluation (from the verified ledger).
//! - [`reward`] builds model rewards from those checkpoints, and checks a
//!   reward's recipe by rebuilding it.

pub mod checkpoint;
pub mod db;
pub mod delta;
pub mod reward;
pub mod trajectory;

pub use checkpoint::{CheckpointError, CheckpointKind, Checkpoints};
pub use db::{LatestResult, LedgerOrder, RunRecord, Store, StoreError};
