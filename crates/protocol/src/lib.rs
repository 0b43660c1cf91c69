//! The crowdtrain protocol, without any I/O: no files, no clock, no
//! sockets, no OS randomness, and no training code. It depends on the plain
//! types of `crowdtrain-recipe` and on hashing, signing and serialisation
//! crates only.
//!
//! # Brief overview
//!
//! - [`RunConfig`] is `run.toml`: parsed strictly, validated with errors
//!   that name the field.
//! - [`ids`] names things: [`Digest`], [`WorkerId`], [`RoundId`].
//! - [`Identity`] and [`PublicKey`] are ed25519 keys with domain-separated
//!   signatures (key files are the node's).
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
//!   proof-of-training's building blocks; [`judge`] holds the rules an
//!   audit answer and a delegated auditor's report are judged by.
//! - [`contract`] is `[contract]` of `run.toml` and the menu a run
//!   publishes, records and serves signed; [`contract::ContractMenu::choose`]
//!   is the choice incentive compatibility predicts.
//! - [`reward_model`] is the recipe of a model reward: the checkpoints, the
//!   coefficient and the measured values anyone can rebuild and check.

pub mod admission;
pub mod audit;
pub mod collateral;
pub mod config;
pub mod contract;
pub mod coordinator;
pub mod identity;
pub mod ids;
pub mod judge;
pub mod ledger;
pub mod merkle;
mod read_nonces;
pub mod reward_model;
pub mod wire;

pub use audit::Commitment;
pub use config::{ConfigError, RunConfig};
pub use coordinator::{
    Action, Aggregated, Coordinator, Opened, Outcome, Recorded, Refusal, RoundResult, Settings, Verdict,
};
pub use crowdtrain_recipe::{MAX_OUTER_DELAY, TrainingRecipe};
pub use identity::{Identity, PublicKey};
pub use ids::{Digest, RoundId, WorkerId};
pub use wire::{Assignment, RequestAuth, RoundView, Shard, Signed};
