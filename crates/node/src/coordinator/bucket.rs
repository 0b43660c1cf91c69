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

use crate::NodeError;
use crate::storage::{BlobKey, CoordinatorBucket, StorageError};

/// The checkpoints a restart reads: the run's first model and optimizer
/// state, the latest closed round's, the newest aggregator snapshot, and
/// the base models of closed rounds still to score. Each with its key in
/// the bucket.
fn needed(store: &Store, record: &RunRecord) -> Result<Vec<BlobKey>, NodeError> {
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
pub(super) fn restore_checkpoints(
    store: &Store,
    record: &RunRecord,
    checkpoints: &Checkpoints,
    bucket: &CoordinatorBucket,
) -> Result<usize, NodeError> {
    let mut restored = 0;
    for key in needed(store, record)? {
        let digest = key.digest().expect("checkpoints are content-addressed");
        if checkpoints.path(&digest).exists() {
            continue;
        }
        match bucket.get_blocking(key, crowdtrain_store::checkpoint::CHECKPOINT_BYTES_MAX) {
            Ok(bytes) => {
                checkpoints.put(&bytes)?;
                restored += 1;
            }
            Err(StorageError::Missing { .. }) => {
                tracing::warn!(%digest, "a checkpoint the restart needs is neither here nor in the bucket");
            }
            Err(error) => return Err(error.into()),
        }
    }
    if restored > 0 {
        tracing::info!(restored, url = bucket.bucket().url(), "checkpoints read back from the bucket");
    }
    Ok(restored)
}

/// Writes the outer optimizer's state the run stands on (the latest closed
/// round's, or the first) to the bucket, as the writer does for every new
/// one: the process that made it may have been killed before its upload,
/// and the first one is never written by the writer.
pub(super) fn publish_optimizer_state(
    store: &Store,
    record: &RunRecord,
    checkpoints: &Checkpoints,
    bucket: &CoordinatorBucket,
) -> Result<(), NodeError> {
    let momentum = store.latest_result()?.map_or(record.initial_momentum, |latest| latest.momentum);
    bucket.put_blocking(BlobKey::Checkpoint(momentum), checkpoints.get(&momentum)?)?;
    Ok(())
}

/// Reads `worker`'s audit answer `digest` back from the bucket into
/// `answers` if the state directory lost it (a restart replays the answers
/// it had not judged): from the worker's own prefix, at most `limit` bytes,
/// hashing to `digest`. Blocks on the bucket, on a path only a restart
/// that lost its files takes.
pub(super) fn restore_answer(
    answers: &Checkpoints,
    bucket: &CoordinatorBucket,
    worker: WorkerId,
    digest: Digest,
    limit: u64,
) -> Result<(), NodeError> {
    if answers.path(&digest).exists() {
        return Ok(());
    }
    let bytes = bucket.get_blocking(BlobKey::Answer { worker, digest }, limit)?;
    answers.put(&bytes)?;
    Ok(())
}
