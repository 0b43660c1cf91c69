//! The crowdtrain protocol, without any I/O.
//!
//! # Brief overview
//!
//! - [`RunConfig`] is `run.toml`: parsed strictly, validated with errors
//!   that name the field.
//! - [`Identity`] and [`PublicKey`] are ed25519 keys with domain-separated
//!   signatures; key files are private (mode 0600) or refused.
//! - [`wire`] holds what crosses the network: request authentication
//!   ([`RequestAuth`]), the values the coordinator signs ([`Signed`]:
//!   run description, round views with assignments, receipts), and the JSON
//!   of errors and status.
//! - [`Coordinator`] is the round logic as a pure state machine: inputs
//!   with the current time, [`Action`]s out. The HTTP server and the tests
//!   drive the same code.
//! - [`audit`] (the unpredictable, checkable audit draw), [`merkle`] (the
//!   commitment to segment-boundary states) and [`ledger`] (the signed,
//!   hash-chained record of everything that decides who earns what) are
//!   proof-of-training's building blocks.
//! - [`reward_model`] is the recipe of a model reward: the checkpoints, the
//!   coefficient and the measured values anyone can rebuild and check.

pub mod audit;
pub mod config;
pub mod coordinator;
pub mod identity;
pub mod ledger;
pub mod merkle;
pub mod reward_model;
pub mod wire;

pub use audit::Commitment;
pub use config::{ConfigError, RunConfig};
pub use coordinator::{
    Action, Aggregated, AssignmentTemplate, Coordinator, Opened, Outcome, Recorded, Refusal, Settings,
    Snapshot, Verdict,
};
pub use identity::{Identity, IdentityError, PublicKey};
pub use wire::{Assignment, Digest, RequestAuth, RoundId, RoundView, Signed, WorkerId};
