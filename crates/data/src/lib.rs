//! Training data for crowdtrain.
//!
//! # Brief overview
//!
//! - [`idx`] reads the IDX files (Fashion-MNIST's format), raw or gzipped,
//!   treating them as untrusted input.
//! - [`DataSource`] decides where a data set comes from (`--data DIR`, the
//!   Debian package, or the subset bundled into the binary) and loads a
//!   [`Dataset`], whose [`DatasetInfo`] every command reports.
//! - [`make_shards`] splits the training set among workers (IID or
//!   Dirichlet label skew), [`round_shard`] says which shard each slot
//!   trains in a round (a balanced rotation, so no worker keeps one shard),
//!   and [`batch_indices`] draws one step's batch; all are pure functions
//!   of their seeds.
//! - [`rng`] is the only source of randomness in the project: ChaCha8
//!   streams keyed by purpose and (run, round, worker, step).
//! - [`text`] is the language models' data: text sources (`--data
//!   FILE|DIR`, the installed or the bundled Shakespeare), character and
//!   byte-level BPE tokenizers in Hugging Face's `tokenizer.json` format,
//!   cached memory-mapped token files, the train/validation split, shards
//!   of contiguous tokens, token batches and the data fingerprint.

pub mod dataset;
pub mod idx;
pub mod rng;
pub mod shard;
pub mod text;

pub use dataset::{CLASS_COUNT, DataSource, Dataset, DatasetError, DatasetInfo, LabeledImages};
pub use rng::{RngKey, keyed_rng};
pub use shard::{
    Batch, ShardError, Sharding, batch_indices, make_shards, make_shards_of, round_shard, round_shard_order,
    split_validation,
};
