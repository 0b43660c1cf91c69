//! The coordinator driver: the round state machine of
//! `crowdtrain-protocol`, the store it records to, and the work it asks
//! for (aggregation, the outer step, audit judging), as synchronous code on
//! an injected clock ([`driver::Driver`]), generic over the run's
//! [`training::Training`]: a real model's ([`model_training`]) or a
//! simulation's stand-in.
//!
//! This crate has no HTTP server, no async runtime and no object-store
//! client: what needs one is a parameter. The process around the driver
//! implements [`driver::Shell`] (showing rounds, serving and writing
//! models, running replays) and, for a run with a bucket,
//! [`bucket::RunBucket`]. `crowdtrain-node` is that process for a real
//! coordinator; `crowdtrain-simnet` drives the same driver with its own
//! shell and training, on a virtual clock.
//!
//! Beside the driver live what it and the worker share: the run's data and
//! its shards ([`data`]), the assignment's training streams
//! ([`assignment`]) and the replay of an audited segment ([`replay`]), so
//! that an auditing worker and the coordinator replay the same code.

pub mod assignment;
pub mod audit;
pub mod behavior;
pub mod bucket;
pub mod clock;
pub mod data;
pub mod deltas;
pub mod driver;
mod error;
pub mod model_training;
pub mod replay;
mod restore;
pub mod training;

pub use assignment::AssignedWork;
pub use data::{RunData, Shards};
pub use driver::{Batch, CheckpointWrite, Driver, DriverError, Run, Sent, Shell};
pub use error::{BucketError, CoordinatorError};
pub use model_training::{Evidence, ModelRun, ModelTraining, PendingReplay};
pub use restore::{AGGREGATOR_SNAPSHOT_ROUNDS, encode_global};
pub use training::{Audited, Judged, Stepped, Training};
