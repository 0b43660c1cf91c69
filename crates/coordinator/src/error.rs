//! Why the driver could not do something: a read or a write of its store,
//! its files or its bucket failed, or what it read back is not what it
//! wrote.

/// An error of the run's object storage, as its implementation reports it
/// ([`crate::bucket::RunBucket`]).
pub type BucketError = Box<dyn std::error::Error + Send + Sync>;

/// Why the driver could not open or carry out an input.
#[derive(Debug, thiserror::Error)]
pub enum CoordinatorError {
    #[error(transparent)]
    Store(#[from] crowdtrain_store::StoreError),
    #[error(transparent)]
    Checkpoint(#[from] crowdtrain_store::CheckpointError),
    #[error(transparent)]
    Dataset(#[from] crowdtrain_data::DatasetError),
    #[error(transparent)]
    Train(#[from] crowdtrain_train::TrainError),
    /// The run's bucket failed (or lacks an object the driver needs).
    #[error(transparent)]
    Bucket(BucketError),
    /// Text that cannot be a run's data (unreadable, or a tokenizer that
    /// does not fit the model).
    #[error("{0}")]
    Data(String),
    /// The process around the driver stopped it in the middle of a batch
    /// (a simulated crash, [`crate::Shell::record`]).
    #[error("{0}")]
    Stopped(String),
    /// A file the coordinator stored does not decode.
    #[error("a stored file is corrupt: {0}")]
    Corrupt(String),
}
