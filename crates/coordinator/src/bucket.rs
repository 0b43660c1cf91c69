//! The coordinator's own state through its bucket (`[storage]`): with a
//! bucket, every checkpoint a restart reads goes there too (models and
//! deltas under `models/` and `deltas/`, the outer optimizer's state and
//! the aggregator's snapshots under `checkpoints/`), and a coordinator whose
//! state directory kept only its database (`coordinator.sqlite`, which
//! holds the ledger, the rounds and every accepted update) reads back what
//! it lost from the bucket before it loads its state. What it reads is
//! checked like anything else from the bucket: bounded, and hashing to the
//! digest the database names.

use crowdtrain_protocol::{Digest, WorkerId};
use crowdtrain_store::{Checkpoints, RunRecord, Store};

use crate::CoordinatorError;

/// An object of the run, by what it is (see the module's table).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlobKey {
    /// A published parameter checkpoint, by its digest.
    Model(Digest),
    /// The model delta that makes model `target` (its own bytes are
    /// checked by what they rebuild).
    Delta { target: Digest },
    /// A worker's encoded update, by its digest.
    Update { worker: WorkerId, digest: Digest },
    /// A worker's audit answer (postcard), by its digest.
    Answer { worker: WorkerId, digest: Digest },
    /// The coordinator's own checkpoint (outer optimizer state, aggregator
    /// snapshot), by its digest: what a restart reads back.
    Checkpoint(Digest),
    /// The round's public state: the coordinator's signed round view for
    /// nobody in particular, written again at each change (checked by its
    /// signature, not by a digest).
    Notice,
}

impl BlobKey {
    /// The digest the object's bytes must have, if the key names one.
    pub fn digest(&self) -> Option<Digest> {
        match self {
            Self::Model(digest)
            | Self::Checkpoint(digest)
            | Self::Update { digest, .. }
            | Self::Answer { digest, .. } => Some(*digest),
            Self::Delta { .. } | Self::Notice => None,
        }
    }

    pub fn relative(&self) -> String {
        match self {
            Self::Model(digest) => format!("models/{}", digest.to_hex()),
            Self::Delta { target } => format!("deltas/{}", target.to_hex()),
            Self::Checkpoint(digest) => format!("checkpoints/{}", digest.to_hex()),
            Self::Update { worker, digest } => format!("updates/{}/{}", worker.0, digest.to_hex()),
            Self::Answer { worker, digest } => format!("answers/{}/{}", worker.0, digest.to_hex()),
            Self::Notice => "notice".to_owned(),
        }
    }
}

/// The run's object storage, as the driver uses it: whole objects by key,
/// written before the call returns. A trait so that the driver needs no
/// object-store client or async runtime (the node's `CoordinatorBucket`
/// implements it on its own small runtime).
pub trait RunBucket: Send + Sync {
    /// Where the bucket is, for the log.
    fn url(&self) -> &str;
    /// Writes `bytes` under `key`, durably, before returning.
    fn put(&self, key: BlobKey, bytes: Vec<u8>) -> Result<(), CoordinatorError>;
    /// Reads `key`'s object, at most `limit` bytes, hashing to the digest
    /// the key names (if it names one); `None` if the bucket has no such
    /// object.
    fn get(&self, key: BlobKey, limit: u64) -> Result<Option<Vec<u8>>, CoordinatorError>;
}

/// The checkpoints a restart reads: the run's first model and optimizer
/// state, the latest closed round's, the newest aggregator snapshot, and
/// the base models of closed rounds still to score. Each with its key in
/// the bucket.
fn needed(store: &Store, record: &RunRecord) -> Result<Vec<BlobKey>, CoordinatorError> {
    let mut keys = vec![BlobKey::Model(record.initial_model), BlobKey::Checkpoint(record.initial_momentum)];
    if let Some(latest) = store.latest_result()? {
        keys.extend([BlobKey::Model(latest.model), BlobKey::Checkpoint(latest.momentum)]);
    }
    if let Some((_, snapshot)) = store.latest_aggregator_snapshot_before(crowdtrain_protocol::RoundId::MAX)? {
        keys.push(BlobKey::Checkpoint(snapshot));
    }
    for round in store.unscored_rounds()? {
        keys.push(BlobKey::Model(store.scoring_input(round)?.0));
    }
    Ok(keys)
}

/// Reads back from the bucket every checkpoint a restart needs that is
/// not in `checkpoints`; returns how many. One the bucket does not have
/// either is left for the loading that follows to report (or rebuild).
pub fn restore_checkpoints(
    store: &Store,
    record: &RunRecord,
    checkpoints: &Checkpoints,
    bucket: &dyn RunBucket,
) -> Result<usize, CoordinatorError> {
    let mut restored = 0;
    for key in needed(store, record)? {
        let digest = key.digest().expect("checkpoints are content-addressed");
        if checkpoints.path(&digest).exists() {
            continue;
        }
        match bucket.get(key, crowdtrain_store::checkpoint::CHECKPOINT_BYTES_MAX)? {
            Some(bytes) => {
                checkpoints.put(&bytes)?;
                restored += 1;
            }
            None => {
                tracing::warn!(%digest, "a checkpoint the restart needs is neither here nor in the bucket");
            }
        }
    }
    if restored > 0 {
        tracing::info!(restored, url = bucket.url(), "checkpoints read back from the bucket");
    }
    Ok(restored)
}

/// Writes the outer optimizer's state the run stands on (the latest closed
/// round's, or the first) to the bucket, as the writer does for every new
/// one: the process that made it may have been killed before its upload,
/// and the first one is never written by the writer.
pub fn publish_optimizer_state(
    store: &Store,
    record: &RunRecord,
    checkpoints: &Checkpoints,
    bucket: &dyn RunBucket,
) -> Result<(), CoordinatorError> {
    let momentum = store.latest_result()?.map_or(record.initial_momentum, |latest| latest.momentum);
    bucket.put(BlobKey::Checkpoint(momentum), checkpoints.get(&momentum)?)?;
    Ok(())
}

/// Reads `worker`'s audit answer `digest` back from the bucket into
/// `answers` if the state directory lost it (a restart replays the answers
/// it had not judged): from the worker's own prefix, at most `limit` bytes,
/// hashing to `digest`. Blocks on the bucket, on a path only a restart
/// that lost its files takes.
pub fn restore_answer(
    answers: &Checkpoints,
    bucket: &dyn RunBucket,
    worker: WorkerId,
    digest: Digest,
    limit: u64,
) -> Result<(), CoordinatorError> {
    if answers.path(&digest).exists() {
        return Ok(());
    }
    let key = BlobKey::Answer { worker, digest };
    let bytes = bucket
        .get(key, limit)?
        .ok_or_else(|| CoordinatorError::Bucket(format!("{} is not in the bucket", key.relative()).into()))?;
    answers.put(&bytes)?;
    Ok(())
}
