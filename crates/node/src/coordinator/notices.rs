//! With a bucket (`[storage]`): the round's public state, published in the
//! bucket as the coordinator's signed round view for nobody in particular
//! (`node.view(None)`: no assignment, no worker's standing) under the
//! bucket's `notice` key, written again whenever what it says changes. A
//! worker waits for the round's next step by reading it there instead of
//! long-polling `GET /v1/round` (see `worker::notices`), and asks the
//! coordinator for its own view only when the notice shows something that
//! may be for it: a round to train, or the run's end. So the coordinator's
//! egress for the waiting is one small object per change of round or
//! phase, whatever the number of workers.
//!
//! The notice is a convenience, never an authority: what a worker does
//! still goes through the coordinator's signed per-worker view or its
//! receipts, and a notice that is missing, stale, forged or altered only
//! makes a worker ask the coordinator (at the latest after a long poll's
//! time).

use std::sync::Arc;
use std::time::Duration;

use super::Node;
use crate::storage::{BlobKey, NoticeState};

/// Writes the notice whenever the round's public state changes, for as
/// long as the node runs (with no bucket: never returns, does nothing). A
/// failed write is tried again a second later; workers meanwhile fall back
/// on asking the coordinator.
pub(super) async fn publish(node: Arc<Node>) {
    if node.bucket.is_none() {
        return std::future::pending().await;
    }
    let mut changes = node.changes.subscribe();
    let mut written = None;
    loop {
        let view = {
            let node = Arc::clone(&node);
            tokio::task::spawn_blocking(move || node.view(None)).await.expect("a view does not panic")
        };
        let state = NoticeState::of(&view.body);
        if written != Some(state) {
            let bytes = serde_json::to_vec(&view).expect("views serialise");
            let bucket = Arc::clone(node.bucket.as_ref().expect("checked above"));
            let put = tokio::task::spawn_blocking(move || bucket.put_blocking(BlobKey::Notice, bytes))
                .await
                .expect("writing to the bucket does not panic");
            match put {
                Ok(()) => written = Some(state),
                Err(error) => {
                    tracing::warn!(%error, "could not write the round notice; trying again");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            }
        }
        if changes.changed().await.is_err() {
            return std::future::pending().await;
        }
    }
}
