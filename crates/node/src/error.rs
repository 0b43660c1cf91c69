//! Errors of the coordinator and worker processes.

use std::path::PathBuf;

/// Why a node could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Config(#[from] crowdtrain_protocol::ConfigError),
    #[error(transparent)]
    KeyFile(#[from] crate::files::KeyFileError),
    #[error(transparent)]
    Store(#[from] crowdtrain_store::StoreError),
    #[error(transparent)]
    Checkpoint(#[from] crowdtrain_store::CheckpointError),
    #[error(transparent)]
    Storage(#[from] crate::storage::StorageError),
    #[error(transparent)]
    Dataset(#[from] crowdtrain_data::DatasetError),
    #[error(transparent)]
    Train(#[from] crowdtrain_train::TrainError),
    /// The coordinator driver's own failures (its store, files, bucket).
    #[error(transparent)]
    Coordinator(#[from] crowdtrain_coordinator::CoordinatorError),
    /// Text that cannot be a run's data (unreadable, or a tokenizer that
    /// does not fit the model).
    #[error("{0}")]
    Data(String),
    #[error("the run's contract: {0}")]
    Contract(String),
    #[error("{context}: {source}")]
    Io { context: String, source: std::io::Error },
    #[error(
        "the state directory {state} belongs to a run with a different configuration; use a new --state \
         directory, or the run.toml that created it"
    )]
    ConfigChanged { state: PathBuf },
    #[error(
        "the run trains on {expected} ({expected_examples} training examples, digest {expected_digest}) but this \
         worker has {found} ({found_examples} examples, digest {found_digest}); pass the run's data with --data \
         (and for text the run's tokenizer with --tokenizer)"
    )]
    DataMismatch {
        expected: String,
        expected_examples: u64,
        expected_digest: String,
        found: String,
        found_examples: u64,
        found_digest: String,
    },
    #[error("the coordinator halted to protect its state: {0}; restart it with the same --state")]
    Halted(String),
    #[error("the coordinator answered with something this worker cannot trust: {0}")]
    Untrusted(String),
    #[error("the coordinator refused: {0}")]
    Refused(String),
    #[error("gave up on the coordinator at {url} after {seconds} s of failures; last error: {last}")]
    GaveUp { url: String, seconds: u64, last: String },
}

impl NodeError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io { context: context.into(), source }
    }
}
