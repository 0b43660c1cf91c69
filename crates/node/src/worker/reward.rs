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
    loop {
        let answer = client.request(Method::GET, &path, Vec::new(), &[]).await?;
        if answer.code() == Some(ErrorCode::TooEarly) && started.elapsed() < wait {
            tokio::time::sleep(Duration::from_millis(500)).await;
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
