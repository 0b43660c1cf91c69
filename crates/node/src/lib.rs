//! The crowdtrain processes: the coordinator's HTTP server and the worker.
//!
//! # Brief overview
//!
//! - [`coordinator::Node`] drives the round state machine of
//!   `crowdtrain-protocol`: each request or deadline feeds it, its actions
//!   become durable SQLite writes before any answer, and the round's
//!   aggregation runs where it asks for it. [`coordinator::serve`] puts the
//!   node behind an axum API.
//! - [`worker::run_worker`] is the worker's loop: register, then for each
//!   round download the model (resuming partial downloads, checking its
//!   hash), train the assignment, upload the pseudo-gradient; retry with
//!   backoff while the coordinator is away and say why when giving up.
//! - [`storage`] is the run's optional bucket (`[storage]`), through which
//!   workers fetch models and upload updates instead of the coordinator.

pub mod coordinator;
mod error;
pub mod files;
pub mod storage;
pub mod worker;

pub use crowdtrain_coordinator::{AssignedWork, RunData, Shards, data, replay};
pub use error::NodeError;
