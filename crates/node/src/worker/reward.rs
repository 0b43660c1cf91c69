//! Fetching a participant's model reward once its run has finished
//! (`crowdtrain reward fetch`): a request signed by the participant's key,
//! as every worker request, for the model the coordinator made it.

use std::path::Path;
use std::time::{Duration, Instant};

use crowdtrain_protocol::wire::{ErrorCode, REWARD_MODEL_HEADER, RunInfo, RunStatus};
use crowdtrain_protocol::{Digest, PublicKey, Signed, WorkerId};
use reqwest::Method;

use super::client::Client;
use super::{expect_ok, verified};
use crate::NodeError;

/// A fetched model reward.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FetchedReward {
    pub worker: WorkerId,
    pub run_id: Digest,
    /// BLAKE3 of the file: the `reward_model` of its ledger entry.
    pub reward_model: Digest,
    pub bytes: u64,
}

/// The first pause before asking again for a reward not ready yet; each
/// next pause is 1.5 times longer, up to [`POLL_MAX`]. Rewards are built
/// in a fraction of a second after the run's last round (`docs/BENCHMARKS.md`),
/// so a participant waiting for its run's end asks about once every
/// [`POLL_MAX`], and one asking as the run ends gets its reward at most
/// half as late again as it was ready. (A fixed half-second poll cost a demo a
/// quarter of a second on average: 4% of its time.)
const POLL_FIRST: Duration = Duration::from_millis(25);
const POLL_MAX: Duration = Duration::from_millis(500);

/// Fetches the model reward of the participant whose key is `key` from
/// `coordinator`, waiting up to `wait` while the run is still going or its
/// rewards are being built, and writes it to `out`.
pub async fn fetch_reward(
    coordinator: &str,
    key: &Path,
    coordinator_key: Option<PublicKey>,
    wait: Duration,
    out: &Path,
) -> Result<FetchedReward, NodeError> {
    let identity = crate::files::load_identity(key)?;
    let public_key = identity.public_key();
    let mut client = Client::new(coordinator, identity, Duration::from_secs(30))?;
    let answer = client.request(Method::GET, "/v1/run", Vec::new(), &[]).await?;
    let signed: Signed<RunInfo> = expect_ok(&answer, "reading the run description")?.json()?;
    let trusted = coordinator_key.unwrap_or(signed.body.coordinator);
    let run = verified(&signed, &trusted, "run description")?.clone();
    let answer = client.request(Method::GET, "/v1/status?rounds_limit=0", Vec::new(), &[]).await?;
    let status: RunStatus = expect_ok(&answer, "reading the run's status")?.json()?;
    client.set_run(run.run_id);
    let worker = status
        .workers
        .iter()
        .find(|worker| worker.public_key == public_key)
        .map(|worker| worker.worker)
        .ok_or_else(|| NodeError::Refused(format!("no participant of this run has the key {public_key}")))?;
    let started = Instant::now();
    let path = format!("/v1/rewards/{}", worker.0);
    let mut pause = POLL_FIRST;
    loop {
        let answer = client.request(Method::GET, &path, Vec::new(), &[]).await?;
        if answer.code() == Some(ErrorCode::TooEarly) && started.elapsed() < wait {
            tokio::time::sleep(pause).await;
            pause = pause.mul_f64(1.5).min(POLL_MAX);
            continue;
        }
        let answer = expect_ok(&answer, "fetching the model reward")?;
        let named: Digest = answer
            .header
            .as_deref()
            .ok_or_else(|| NodeError::Untrusted(format!("the answer has no {REWARD_MODEL_HEADER} header")))?
            .parse()
            .map_err(|reason: String| NodeError::Untrusted(format!("{REWARD_MODEL_HEADER}: {reason}")))?;
        let found = Digest::of(&answer.body);
        if found != named {
            return Err(NodeError::Untrusted(format!(
                "the model reward hashes to {found}, not the {named} the coordinator named"
            )));
        }
        std::fs::write(out, &answer.body)
            .map_err(|error| NodeError::io(format!("could not write {}", out.display()), error))?;
        return Ok(FetchedReward {
            worker,
            run_id: run.run_id,
            reward_model: found,
            bytes: answer.body.len() as u64,
        });
    }
}
