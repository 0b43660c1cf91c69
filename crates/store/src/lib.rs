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

pub mod checkpoint;
pub mod db;

pub use checkpoint::{CheckpointError, CheckpointKind, Checkpoints};
pub use db::{LatestResult, LedgerOrder, RunRecord, Store, StoreError};
