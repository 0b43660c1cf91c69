//! The newest model, watched: under a delayed outer update one long poll
//! per worker stays open on `GET /v1/round?model_not=M` for as long as the
//! worker runs, and hands on every view that names a new model.
//!
//! Why its own task: a pipelined worker's next rounds train from models
//! published as earlier rounds close, and the work loop can fetch such a
//! model ahead only once a view names it. It used to ask for one view when a
//! round's training began (and long-poll only when that view named nothing
//! ahead). A round that closed later during that training, in the WAN lab
//! about every other one, stayed unknown until the training ended, so its
//! model's download (a round trip plus its transfer, 0.2-0.4 s at 20 Mbit/s
//! and 50 ms) started then, and a worker near the pipeline's head waited for
//! it: measured, the download began a median 0.27 s after the model was
//! published. A long poll the work loop owns would have to be dropped when
//! the training it runs beside ends, and a dropped request costs its
//! connection (a new one is another round trip); this one is never
//! dropped, so the work loop only reads what it saw.

use std::sync::Arc;
use std::time::Duration;

use crowdtrain_protocol::wire::Phase;
use crowdtrain_protocol::{Digest, PublicKey, RoundView};
use tokio::sync::watch;

use super::client::Client;
use super::own_view;

/// How long a watch that failed (the coordinator gone or refusing this
/// worker) waits before it asks again. The work loop, which asks too,
/// decides whether the worker gives up.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// How long one long poll waits for a new model before it is asked again.
const LONG_POLL_MS: u64 = 20_000;

/// The views naming each new model as it appears, from a task that lives
/// as long as this does.
pub struct NewestModel {
    views: watch::Receiver<Option<RoundView>>,
    task: tokio::task::AbortHandle,
}

impl NewestModel {
    /// Starts watching the run's newest model over `client`.
    pub fn watch(client: Arc<Client>, coordinator: PublicKey, run_id: Digest) -> Self {
        let (sender, views) = watch::channel(None);
        let task = tokio::spawn(follow(client, coordinator, run_id, sender)).abort_handle();
        Self { views, task }
    }

    /// The next view naming a model newer than the last one returned (at
    /// once if one came since), or `None` once the run has finished and
    /// the watch with it.
    pub async fn next(&mut self) -> Option<RoundView> {
        loop {
            self.views.changed().await.ok()?;
            if let Some(view) = self.views.borrow_and_update().clone() {
                return Some(view);
            }
        }
    }
}

impl Drop for NewestModel {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Long-polls for a model other than the newest seen, and sends each view
/// that names one, until the run finishes or nobody listens.
async fn follow(
    client: Arc<Client>,
    coordinator: PublicKey,
    run_id: Digest,
    sender: watch::Sender<Option<RoundView>>,
) {
    let mut newest: Option<Digest> = None;
    while !sender.is_closed() {
        let path = match newest {
            None => "/v1/round?wait_ms=0".to_owned(),
            Some(model) => format!("/v1/round?wait_ms={LONG_POLL_MS}&model_not={}", model.to_hex()),
        };
        match own_view(&client, &coordinator, run_id, &path).await {
            Ok(view) => {
                let finished = view.phase == Phase::Finished;
                // A long poll that timed out names the same model: nothing new.
                if newest != Some(view.model) || finished {
                    newest = Some(view.model);
                    sender.send_replace(Some(view));
                }
                if finished {
                    return;
                }
            }
            Err(error) => {
                tracing::debug!(%error, "watching for new models failed: asking again");
                tokio::time::sleep(RETRY_AFTER).await;
            }
        }
    }
}
