//! A worker's models by digest: the one in use in memory, the rest on disk,
//! downloaded whole (resuming where a download stopped) or rebuilt from the
//! delta the coordinator publishes to each model from the one before it;
//! and models fetched ahead, in the background, for the rounds a pipelined
//! worker trains next.
//!
//! Why fetch ahead: a pipelined worker (`[outer] delay` of 1 or more) is
//! usually behind the pipeline's head, and the view it holds already names
//! its next rounds and their bases. It used to download only the next base
//! beside one round's training and then wait for what was left of it. Over
//! a home link a delta's download is a round trip plus its transfer
//! (0.18-0.25 s for the MLP at 20 Mbit/s and 50 ms), longer than an MLP
//! round of H = 50 trains, so every round waited. Fetched ahead, a base
//! arrives rounds before it is needed and the wait is gone; each model is
//! still downloaded once (the work loop waits for a fetch ahead of the
//! model it needs instead of starting its own).
//!
//! Everything downloaded is untrusted: a model must hash to its digest, a
//! delta is bounded while it arrives and must rebuild exactly its target
//! (`ModelDelta::rebuild`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crowdtrain_protocol::{Digest, MAX_OUTER_DELAY};
use crowdtrain_store::delta::{self, ModelDelta};
use crowdtrain_store::{CheckpointKind, checkpoint};
use crowdtrain_train::{Model, ParamLayout};
use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Shared};
use reqwest::StatusCode;
use tokio::io::AsyncWriteExt;

use super::client::{Answer, Client};
use crate::NodeError;
use crate::storage::{BlobKey, Bucket, StorageError};

/// A download is retried from where it stopped at most this many times.
const DOWNLOAD_ATTEMPTS_MAX: u32 = 20;

/// The most models fetched ahead at once: a worker's next rounds under the
/// deepest pipeline (each round of a pipelined run trains from its own
/// model), so what a view names can make it spend no more than that.
pub const AHEAD_MAX: usize = MAX_OUTER_DELAY as usize + 1;

/// A model fetched ahead in the background: the outcome of its task (the
/// model is then in the disk cache), which whoever needs the model waits
/// for (the work loop, or the fetch ahead of the model after it, whose
/// delta starts from it). Shared so that both can.
type Ahead = Shared<BoxFuture<'static, Result<(), String>>>;

/// A model on its way: its digest, its outcome, and its task (to tell when
/// it is done although nobody waited for it: a round withdrawn before it
/// was trained).
type OnItsWay = (Digest, Ahead, tokio::task::AbortHandle);

/// Models by digest: in memory for the one in use, on disk for the rest,
/// downloaded with resume when missing, fetched ahead when asked to.
pub struct ModelCache {
    source: Source,
    current: Option<(Digest, Arc<Vec<f32>>)>,
    /// Whether a new model is first asked for as a delta (the run
    /// publishes deltas: `[outer] broadcast`).
    deltas: bool,
    /// Models being fetched ahead, in the order asked for.
    ahead: Vec<OnItsWay>,
}

/// Where models come from and where they are kept: all a download needs,
/// so that one in the background can own a copy.
#[derive(Clone)]
struct Source {
    dir: PathBuf,
    name: String,
    layout: Arc<ParamLayout>,
    /// The run's bucket, where models and deltas come from when it has one.
    bucket: Option<Bucket>,
    tally: Arc<Tally>,
}

/// What crossed the network for models, counted wherever it was fetched.
#[derive(Default)]
struct Tally {
    bytes: AtomicU64,
    /// Models downloaded whole.
    full: AtomicU64,
    /// Models rebuilt from a delta.
    deltas: AtomicU64,
}

impl ModelCache {
    pub fn new(dir: &Path, model: &dyn Model) -> Result<Self, NodeError> {
        std::fs::create_dir_all(dir)
            .map_err(|error| NodeError::io(format!("could not create {}", dir.display()), error))?;
        Ok(Self {
            source: Source {
                dir: dir.to_owned(),
                name: model.name(),
                layout: Arc::new(model.layout().clone()),
                bucket: None,
                tally: Arc::default(),
            },
            current: None,
            deltas: false,
            ahead: Vec::new(),
        })
    }

    /// Fetches models and deltas from `bucket` (the run's `[storage]`)
    /// instead of the coordinator.
    pub fn use_bucket(&mut self, bucket: Option<Bucket>) {
        self.source.bucket = bucket;
    }

    /// Asks for each new model as a delta first (when the run publishes
    /// deltas: `[outer] broadcast`).
    pub fn use_deltas(&mut self, deltas: bool) {
        self.deltas = deltas;
    }

    /// Models downloaded whole, and rebuilt from deltas, so far.
    pub fn downloads(&self) -> (u64, u64) {
        let tally = &self.source.tally;
        (tally.full.load(Ordering::Relaxed), tally.deltas.load(Ordering::Relaxed))
    }

    /// Bytes received from model downloads so far.
    pub fn bytes_downloaded(&self) -> u64 {
        self.source.tally.bytes.load(Ordering::Relaxed)
    }

    /// The parameters of model `digest`: the one in memory, or once a fetch
    /// ahead of it is done, from the disk cache, or rebuilt from its delta
    /// (from a model held in memory or on disk), or downloaded whole.
    pub async fn get(&mut self, client: &Client, digest: &Digest) -> Result<Arc<Vec<f32>>, NodeError> {
        if let Some((current, params)) = &self.current
            && current == digest
        {
            return Ok(Arc::clone(params));
        }
        if let Some(index) = self.ahead.iter().position(|(ahead, ..)| ahead == digest) {
            let (_, fetch, _) = self.ahead.remove(index);
            if let Err(reason) = fetch.await {
                tracing::debug!(model = %digest, %reason, "fetching ahead failed: fetching now");
            }
        }
        let params = match self.source.cached(digest) {
            Some(params) => params,
            None => self.download(client, digest).await?,
        };
        let params = Arc::new(params);
        self.current = Some((*digest, Arc::clone(&params)));
        Ok(params)
    }

    /// Model `digest` from the network: rebuilt from its delta when the run
    /// publishes them and this worker holds the model it starts from, else
    /// whole.
    async fn download(&mut self, client: &Client, digest: &Digest) -> Result<Vec<f32>, NodeError> {
        if self.deltas {
            match self.source.delta(client, digest).await {
                Ok(Some(delta)) => {
                    let base = match &self.current {
                        Some((held, params)) if *held == delta.base => Some(Arc::clone(params)),
                        _ => self.source.cached(&delta.base).map(Arc::new),
                    };
                    // A delta from a model not held: download the model whole.
                    if let Some(base) = base {
                        match self.source.rebuild(&delta, &base) {
                            Ok(params) => return Ok(params),
                            Err(reason) => tracing::warn!(
                                model = %digest, %reason, "model delta not usable: downloading the model whole"
                            ),
                        }
                    }
                }
                // No delta to it (the first model, or not kept).
                Ok(None) => {}
                Err(reason) => {
                    tracing::warn!(model = %digest, %reason, "model delta not usable: downloading the model whole")
                }
            }
        }
        let bytes = self.source.fetch(client, digest).await?;
        Ok(checkpoint::decode(&bytes, CheckpointKind::Params, &self.source.name, &self.source.layout)?)
    }

    /// Starts fetching `digests` (the bases of this worker's next rounds,
    /// in round order) in the background, each that is not held or already
    /// on its way, at most [`AHEAD_MAX`] at once. Returns at once; [`get`]
    /// waits for a fetch ahead of the model it is asked for. A fetch ahead
    /// that fails is forgotten: `get` then fetches the model itself.
    ///
    /// [`get`]: Self::get
    pub fn fetch_ahead(&mut self, client: &Arc<Client>, digests: &[Digest]) {
        // Done: the model is on disk, or `get` fetches it itself.
        self.ahead.retain(|(.., task)| !task.is_finished());
        for digest in digests {
            let held = self.current.as_ref().is_some_and(|(current, _)| current == digest);
            if held || self.ahead.iter().any(|(ahead, ..)| ahead == digest) || self.source.is_cached(digest) {
                continue;
            }
            if self.ahead.len() >= AHEAD_MAX {
                break;
            }
            let fetch = FetchAhead {
                source: self.source.clone(),
                client: Arc::clone(client),
                digest: *digest,
                deltas: self.deltas,
                held: self.current.clone(),
                earlier: self.ahead.iter().map(|(ahead, outcome, _)| (*ahead, outcome.clone())).collect(),
            };
            let task = tokio::spawn(fetch.run());
            let handle = task.abort_handle();
            let outcome = async move { task.await.map_err(|error| error.to_string())? }.boxed().shared();
            self.ahead.push((*digest, outcome, handle));
        }
    }

    /// The checkpoint's bytes, from the cache or downloaded; a partial
    /// download resumes from where it stopped.
    pub async fn fetch(&mut self, client: &Client, digest: &Digest) -> Result<Vec<u8>, NodeError> {
        self.source.fetch(client, digest).await
    }
}

/// One model fetched ahead: rebuilt from its delta (waiting for the fetch
/// ahead of the model that delta starts from, if that is on its way), or
/// downloaded whole in a run that publishes no deltas.
struct FetchAhead {
    source: Source,
    client: Arc<Client>,
    digest: Digest,
    deltas: bool,
    /// The model in memory when the fetch was asked for.
    held: Option<(Digest, Arc<Vec<f32>>)>,
    earlier: Vec<(Digest, Ahead)>,
}

impl FetchAhead {
    async fn run(self) -> Result<(), String> {
        let Self { source, client, digest, deltas, held, earlier } = self;
        let started = Instant::now();
        if !deltas {
            return source.fetch(&client, &digest).await.map(drop).map_err(|error| error.to_string());
        }
        let delta =
            source.delta(&client, &digest).await?.ok_or("the coordinator publishes no delta to it")?;
        let downloaded_ms = started.elapsed().as_millis() as u64;
        if let Some((_, before)) = earlier.iter().find(|(ahead, _)| *ahead == delta.base) {
            before.clone().await?;
        }
        let based_ms = started.elapsed().as_millis() as u64;
        let base = match held {
            Some((held, params)) if held == delta.base => params,
            _ => Arc::new(
                source
                    .cached(&delta.base)
                    .ok_or_else(|| format!("the model {} it starts from is not held", delta.base))?,
            ),
        };
        // Off the worker's (single-threaded) runtime: a large model's
        // rebuild and hash would hold up its uploads.
        tokio::task::spawn_blocking(move || source.rebuild(&delta, &base).map(drop))
            .await
            .map_err(|error| error.to_string())??;
        tracing::debug!(
            model = %digest,
            downloaded_ms,
            based_ms,
            rebuilt_ms = started.elapsed().as_millis() as u64,
            "fetched ahead"
        );
        Ok(())
    }
}

impl Source {
    fn path(&self, digest: &Digest) -> PathBuf {
        self.dir.join(format!("{}.safetensors", digest.to_hex()))
    }

    /// Whether the disk cache has a file for `digest` (checked when read).
    fn is_cached(&self, digest: &Digest) -> bool {
        self.path(digest).exists()
    }

    /// Model `digest`'s parameters from the disk cache, if a file there
    /// hashes to it and decodes.
    fn cached(&self, digest: &Digest) -> Option<Vec<f32>> {
        let bytes = std::fs::read(self.path(digest)).ok().filter(|bytes| Digest::of(bytes) == *digest)?;
        checkpoint::decode(&bytes, CheckpointKind::Params, &self.name, &self.layout)
            .inspect_err(|error| tracing::warn!(model = %digest, %error, "a cached model does not decode"))
            .ok()
    }

    /// The delta the coordinator publishes to model `target` (from the
    /// model before it), or `None` when there is none. The delta is
    /// untrusted: bounded while it arrives, then decoded and checked to
    /// name `target`; [`Source::rebuild`] checks the rest.
    async fn delta(&self, client: &Client, target: &Digest) -> Result<Option<ModelDelta>, String> {
        // Never more than the model whole: past that the delta saves nothing.
        let limit = delta::HEADER_BYTES + crowdtrain_train::codec::HEADER_BYTES + self.layout.len() * 4;
        let bytes = match &self.bucket {
            Some(bucket) => {
                match delta_from_bucket(bucket, target, limit as u64, client.give_up_after()).await? {
                    Some(bytes) => {
                        self.tally.bytes.fetch_add(bytes.len() as u64, Ordering::Relaxed);
                        bytes
                    }
                    None => return Ok(None),
                }
            }
            None => {
                let mut response =
                    client.get_stream(&format!("/v1/models/{}/delta", target.to_hex()), 0).await?;
                match response.status() {
                    StatusCode::OK => {}
                    StatusCode::NOT_FOUND => return Ok(None),
                    status => return Err(format!("HTTP {status}")),
                }
                let mut bytes = Vec::new();
                while let Some(chunk) = response.chunk().await.map_err(|error| error.to_string())? {
                    self.tally.bytes.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                    if bytes.len() + chunk.len() > limit {
                        return Err(format!("the delta is larger than the model ({limit} bytes)"));
                    }
                    bytes.extend_from_slice(&chunk);
                }
                bytes
            }
        };
        let delta = ModelDelta::decode(&bytes).map_err(|error| error.to_string())?;
        if delta.target != *target {
            return Err(format!("the delta makes model {}, not {target}", delta.target));
        }
        Ok(Some(delta))
    }

    /// The model `delta` makes from `base` (the parameters of `delta.base`),
    /// which must hash to its target; kept in the disk cache.
    fn rebuild(&self, delta: &ModelDelta, base: &[f32]) -> Result<Vec<f32>, String> {
        let (params, checkpoint) =
            delta.rebuild(&delta.base, base, &self.name, &self.layout).map_err(|error| error.to_string())?;
        self.tally.deltas.fetch_add(1, Ordering::Relaxed);
        let done = self.path(&delta.target);
        if let Err(error) = std::fs::write(&done, &checkpoint) {
            tracing::warn!(path = %done.display(), %error, "could not cache a rebuilt model");
        }
        Ok(params)
    }

    /// The checkpoint's bytes, from the cache or downloaded; a partial
    /// download resumes from where it stopped.
    async fn fetch(&self, client: &Client, digest: &Digest) -> Result<Vec<u8>, NodeError> {
        let done = self.path(digest);
        if let Ok(bytes) = std::fs::read(&done)
            && Digest::of(&bytes) == *digest
        {
            return Ok(bytes);
        }
        let bytes = match &self.bucket {
            Some(bucket) => {
                let bytes = self.fetch_from_bucket(bucket, client.give_up_after(), digest).await?;
                if let Err(error) = std::fs::write(&done, &bytes) {
                    tracing::warn!(path = %done.display(), %error, "could not cache a downloaded model");
                }
                bytes
            }
            None => self.fetch_from_coordinator(client, digest).await?,
        };
        self.tally.full.fetch_add(1, Ordering::Relaxed);
        Ok(bytes)
    }

    /// Model `digest` from the coordinator into the disk cache, resuming a
    /// partial download, retried while the failures are transient.
    async fn fetch_from_coordinator(&self, client: &Client, digest: &Digest) -> Result<Vec<u8>, NodeError> {
        let done = self.path(digest);
        let partial = self.dir.join(format!("{}.partial", digest.to_hex()));
        let io = |error| NodeError::io(format!("could not write {}", partial.display()), error);
        let started = Instant::now();
        let mut last_error = String::new();
        for _ in 0..DOWNLOAD_ATTEMPTS_MAX {
            if started.elapsed() > client.give_up_after() {
                break;
            }
            let offset = std::fs::metadata(&partial).map_or(0, |metadata| metadata.len());
            match self.download_into(client, digest, &partial, offset).await {
                Ok(()) => {}
                Err(DownloadError::Transient(reason)) => {
                    last_error = reason;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
                Err(DownloadError::Fatal(error)) => return Err(error),
            }
            let bytes = std::fs::read(&partial).map_err(io)?;
            if Digest::of(&bytes) == *digest {
                std::fs::rename(&partial, &done).map_err(io)?;
                return Ok(bytes);
            }
            last_error = format!("the download hashes to {}, not {digest}", Digest::of(&bytes));
            std::fs::remove_file(&partial).map_err(io)?;
        }
        Err(NodeError::GaveUp {
            url: client.base().to_owned(),
            seconds: started.elapsed().as_secs(),
            last: last_error,
        })
    }

    /// Model `digest` from the bucket, checked against its digest. A
    /// model not there yet (the coordinator publishes it as the round
    /// opens), a bucket briefly away, or an object that does not hash to
    /// its key (the coordinator writes it again when it restarts) is asked
    /// for again, waiting longer each time, for up to `give_up_after`.
    async fn fetch_from_bucket(
        &self,
        bucket: &Bucket,
        give_up_after: Duration,
        digest: &Digest,
    ) -> Result<Vec<u8>, NodeError> {
        let started = Instant::now();
        let mut wait = Duration::from_millis(20);
        loop {
            match bucket
                .get(&BlobKey::Model(*digest), crowdtrain_store::checkpoint::CHECKPOINT_BYTES_MAX)
                .await
            {
                Ok(bytes) => {
                    self.tally.bytes.fetch_add(bytes.len() as u64, Ordering::Relaxed);
                    return Ok(bytes);
                }
                Err(error @ StorageError::TooLarge { .. }) => {
                    return Err(NodeError::Untrusted(error.to_string()));
                }
                Err(error) if started.elapsed() >= give_up_after => {
                    return Err(NodeError::GaveUp {
                        url: bucket.url().to_owned(),
                        seconds: started.elapsed().as_secs(),
                        last: error.to_string(),
                    });
                }
                Err(error) => {
                    tracing::debug!(%error, "model not in the bucket yet");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(1));
                }
            }
        }
    }

    async fn download_into(
        &self,
        client: &Client,
        digest: &Digest,
        partial: &Path,
        offset: u64,
    ) -> Result<(), DownloadError> {
        let transient = DownloadError::Transient;
        let mut response =
            client.get_stream(&format!("/v1/models/{}", digest.to_hex()), offset).await.map_err(transient)?;
        let status = response.status();
        let append = match status {
            StatusCode::PARTIAL_CONTENT => true,
            StatusCode::OK => false,
            status if status.is_server_error() => return Err(transient(format!("HTTP {status}"))),
            status => {
                let body = response.bytes().await.unwrap_or_default();
                let answer = Answer { status, body: body.to_vec(), header: None };
                return Err(DownloadError::Fatal(NodeError::Refused(format!(
                    "downloading model {digest}: {}",
                    answer.reason()
                ))));
            }
        };
        let mut file = tokio::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .append(append)
            .truncate(!append)
            .open(partial)
            .await
            .map_err(|error| {
                DownloadError::Fatal(NodeError::io(format!("could not open {}", partial.display()), error))
            })?;
        let mut size = offset;
        while let Some(chunk) = response.chunk().await.map_err(|error| transient(error.to_string()))? {
            size += chunk.len() as u64;
            if size > crowdtrain_store::checkpoint::CHECKPOINT_BYTES_MAX {
                return Err(DownloadError::Fatal(NodeError::Untrusted(format!(
                    "model {digest} is larger than any checkpoint"
                ))));
            }
            file.write_all(&chunk).await.map_err(|error| {
                DownloadError::Fatal(NodeError::io(format!("could not write {}", partial.display()), error))
            })?;
            self.tally.bytes.fetch_add(chunk.len() as u64, Ordering::Relaxed);
        }
        file.flush()
            .await
            .map_err(|error| DownloadError::Fatal(NodeError::io("flushing a download", error)))?;
        Ok(())
    }
}

enum DownloadError {
    /// Worth retrying from where the file now ends.
    Transient(String),
    Fatal(NodeError),
}

/// The delta that makes model `target`, from the bucket (at most `limit`
/// bytes; its content is checked by what it rebuilds), or `None` when there
/// will be none: the coordinator writes a round's delta before its model,
/// so while neither is there the delta may still come (the round opened
/// before the upload) and is waited for, backing off to 1 s for up to
/// `give_up_after`; once the model is there without it, none comes and the
/// model is downloaded whole.
async fn delta_from_bucket(
    bucket: &Bucket,
    target: &Digest,
    limit: u64,
    give_up_after: Duration,
) -> Result<Option<Vec<u8>>, String> {
    let started = Instant::now();
    let mut wait = Duration::from_millis(20);
    loop {
        // The model first: if it is there, so is any delta to it.
        let model_there = bucket.exists(&BlobKey::Model(*target)).await.map_err(|error| error.to_string())?;
        match bucket.get(&BlobKey::Delta { target: *target }, limit).await {
            Ok(bytes) => return Ok(Some(bytes)),
            Err(StorageError::Missing { .. }) => {}
            Err(error) => return Err(error.to_string()),
        }
        if model_there || started.elapsed() >= give_up_after {
            return Ok(None);
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_secs(1));
    }
}
