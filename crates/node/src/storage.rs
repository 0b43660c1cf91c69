//! The run's bucket (`[storage] url = "s3://bucket/prefix"`): where, when a
//! run outgrows one machine, workers fetch models and deltas and upload
//! their updates, so the coordinator serves only small signed metadata and
//! its egress per round does not grow with the models' size. Without
//! `[storage]` nothing here runs and every byte goes through the
//! coordinator, as before.
//!
//! Built on the `object_store` crate (any S3-compatible server: AWS S3,
//! R2, MinIO, RustFS, s3s-fs). Every party brings its own credentials,
//! endpoint and region from its environment (`AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY`, `AWS_ENDPOINT_URL`, `AWS_REGION`); plain HTTP
//! only to an endpoint on loopback, or with `AWS_ALLOW_HTTP=true`.
//!
//! Keys are content-addressed, under `{prefix}/{run}/` (`{run}`: the run
//! id's first 16 hex digits, which keep runs apart; what is read is checked
//! anyway). Keys are short on purpose: some servers (s3s-fs) keep a file
//! named by each key's base64, and file names end at 255 bytes.
//!
//! | key | what | checked by |
//! |---|---|---|
//! | `models/{digest}` | a published parameter checkpoint | its blake3 digest, by every reader |
//! | `deltas/{digest}` | the model delta that makes model `{digest}` | the digest of the model it rebuilds |
//! | `checkpoints/{digest}` | the coordinator's own checkpoints (outer optimizer state, aggregator snapshots), read back by a restart that lost them | its blake3 digest, named by the coordinator's database |
//! | `updates/{worker}/{digest}` | worker `{worker}`'s (its number) encoded update for a reveal | its digest, then the worker's commitment |
//! | `notice` | the round's public state: the coordinator's signed round view for nobody, rewritten at each change of round or phase | the coordinator's signature, the run, and never older than the last one seen |
//! | `answers/{worker}/{digest}` | worker `{worker}`'s audit answer (postcard `AuditAnswer`) | its digest, then its Merkle proofs against the committed root and the replay |
//!
//! So a retried write puts the same bytes under the same key (idempotent;
//! the notice aside, which only ever moves forward),
//! and no reader trusts what it reads: a missing, oversized or altered
//! object is a clear error ([`StorageError`]) and changes nothing.
//!
//! What a malicious worker can write where: the bucket's own access policy
//! decides (the coordinator cannot). The coordinator reads an update only
//! from `updates/{signer's number}/{digest}` (an answer only from
//! `answers/{signer's number}/{digest}`) with `digest` from the signed
//! reveal (answer), at most `[limits] max_upload_bytes` (it asks the size first),
//! and counts it only if it hashes to that digest and matches the signer's
//! commitment; so a worker cannot make another's bytes count as its own,
//! nor make the coordinator read more than an inline upload. With one
//! credential shared by all workers (as in the tests), a worker could
//! still overwrite another's update or a model object; readers then refuse
//! it (digests), which delays the victim (it uploads again; a worker
//! re-downloads a model), and costs the bucket's storage. Production runs
//! give workers credentials that can write only under their own
//! `updates/{worker}/` prefix and read the rest, with a size limit and a
//! lifecycle rule in the bucket's policy.

use std::sync::Arc;
use std::time::Duration;

use crowdtrain_coordinator::CoordinatorError;
use crowdtrain_coordinator::bucket::RunBucket;
use crowdtrain_protocol::Digest;
use crowdtrain_protocol::config::StorageSection;
use futures_util::StreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

/// Hex digits of the run id that name its directory in the bucket.
pub const RUN_DIGITS: usize = 16;

/// Why an object could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("storage.url {url}: {reason}")]
    Config { url: String, reason: String },
    #[error("{key} is not in the bucket")]
    Missing { key: String },
    #[error("{key} is {size} bytes; at most {limit} are read")]
    TooLarge { key: String, size: u64, limit: u64 },
    #[error("{key} hashes to {found}, not {expected}: it was altered")]
    Mismatch { key: String, expected: Digest, found: Digest },
    #[error("the bucket failed on {key}: {source}")]
    Backend { key: String, source: object_store::Error },
}

impl StorageError {
    /// Whether asking again later may succeed (the object may not be
    /// written yet, or the bucket was briefly away).
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Missing { .. } | Self::Backend { .. })
    }
}

pub use crowdtrain_coordinator::bucket::BlobKey;

/// What a round notice (`BlobKey::Notice`) says that workers act on (its
/// deadline aside, which moves with its phase): the coordinator writes a
/// notice when this changes, and a worker acts on one when it differs from
/// what it last saw, never on one older than that ([`NoticeState::older_than`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NoticeState {
    pub completed_rounds: u64,
    pub round: Option<crowdtrain_protocol::RoundId>,
    pub phase: crowdtrain_protocol::wire::Phase,
    pub provisional: bool,
    pub model: Digest,
    pub secret: bool,
}

impl NoticeState {
    pub fn of(view: &crowdtrain_protocol::RoundView) -> Self {
        Self {
            completed_rounds: view.completed_rounds,
            round: view.round,
            phase: view.phase,
            provisional: view.provisional,
            model: view.model,
            secret: view.secret.is_some(),
        }
    }

    /// Where the run stands: later states are larger (rounds complete,
    /// rounds open, and a round commits, then reveals; the end is last).
    fn progress(&self) -> (u64, Option<crowdtrain_protocol::RoundId>, u8) {
        use crowdtrain_protocol::wire::Phase;
        let phase = match self.phase {
            Phase::Waiting => 0,
            Phase::Committing => 1,
            Phase::Revealing => 2,
            Phase::Finished => 3,
        };
        (self.completed_rounds, self.round, phase)
    }

    /// Whether this state is before `other` in the run: a notice replayed
    /// from the past (by anyone who can write to the bucket).
    pub fn older_than(&self, other: &Self) -> bool {
        self.progress() < other.progress()
    }
}

/// The run's bucket: its store and the run's key prefix.
#[derive(Debug, Clone)]
pub struct Bucket {
    store: Arc<dyn ObjectStore>,
    root: String,
    url: String,
}

impl Bucket {
    /// The bucket of `section` for run `run`, configured from the
    /// process's environment. Connects lazily: a wrong endpoint or
    /// credential shows at the first read or write.
    pub fn open(section: &StorageSection, run: &Digest) -> Result<Self, StorageError> {
        Self::open_with_env(section, run, std::env::vars())
    }

    /// [`Bucket::open`] with the `AWS_*` variables of `environment`
    /// instead of the process's.
    pub fn open_with_env(
        section: &StorageSection,
        run: &Digest,
        environment: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, StorageError> {
        let config_error = |reason: String| StorageError::Config { url: section.url.clone(), reason };
        let (bucket, prefix) = section.bucket_and_prefix().map_err(config_error)?;
        let mut builder = object_store::aws::AmazonS3Builder::new();
        let mut endpoint = None;
        for (name, value) in environment {
            if name == "AWS_ENDPOINT_URL" || name == "AWS_ENDPOINT" {
                endpoint = Some(value.clone());
            }
            if let Some(key) =
                name.starts_with("AWS_").then(|| name.to_ascii_lowercase().parse().ok()).flatten()
            {
                builder = builder.with_config(key, value);
            }
        }
        let mut builder = builder.with_bucket_name(bucket);
        // Plain HTTP carries credentials' signatures and the bytes in the
        // clear: only to this machine, unless AWS_ALLOW_HTTP says so.
        if endpoint.as_deref().is_some_and(is_loopback_http) {
            builder = builder.with_allow_http(true);
        }
        let retry = object_store::RetryConfig {
            max_retries: 5,
            retry_timeout: Duration::from_secs(60),
            ..Default::default()
        };
        let store = builder.with_retry(retry).build().map_err(|error| config_error(error.to_string()))?;
        let run = &run.to_hex()[..RUN_DIGITS];
        let root = match prefix {
            "" => run.to_owned(),
            prefix => format!("{prefix}/{run}"),
        };
        Ok(Self { store: Arc::new(store), root, url: section.url.clone() })
    }

    /// The bucket's URL, as the run configures it.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The object's path in the bucket.
    pub fn path(&self, key: &BlobKey) -> Path {
        Path::from(format!("{}/{}", self.root, key.relative()))
    }

    /// Writes `bytes` under `key`. The same key always holds the same
    /// bytes, so writing again (a retry, a restart) changes nothing.
    pub async fn put(&self, key: &BlobKey, bytes: impl Into<PutPayload>) -> Result<(), StorageError> {
        let path = self.path(key);
        self.store
            .put(&path, bytes.into())
            .await
            .map(drop)
            .map_err(|source| StorageError::Backend { key: path.to_string(), source })
    }

    /// Whether an object is under `key` (its bytes unread, unchecked).
    pub async fn exists(&self, key: &BlobKey) -> Result<bool, StorageError> {
        let path = self.path(key);
        match self.store.head(&path).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(source) => Err(StorageError::Backend { key: path.to_string(), source }),
        }
    }

    /// The object under `key`, at most `limit` bytes (asked for its size
    /// first, and counted as it arrives in case it grew), and, where the
    /// key names a digest, only if it hashes to it.
    pub async fn get(&self, key: &BlobKey, limit: u64) -> Result<Vec<u8>, StorageError> {
        let path = self.path(key);
        let name = || path.to_string();
        let backend = |source: object_store::Error| match source {
            object_store::Error::NotFound { .. } => StorageError::Missing { key: name() },
            source => StorageError::Backend { key: name(), source },
        };
        let size = self.store.head(&path).await.map_err(backend)?.size;
        if size > limit {
            return Err(StorageError::TooLarge { key: name(), size, limit });
        }
        let mut stream = self.store.get(&path).await.map_err(backend)?.into_stream();
        let mut bytes = Vec::with_capacity(size as usize);
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(backend)?;
            let size = (bytes.len() + chunk.len()) as u64;
            if size > limit {
                return Err(StorageError::TooLarge { key: name(), size, limit });
            }
            bytes.extend_from_slice(&chunk);
        }
        if let Some(expected) = key.digest() {
            let found = Digest::of(&bytes);
            if found != expected {
                return Err(StorageError::Mismatch { key: name(), expected, found });
            }
        }
        Ok(bytes)
    }
}

/// Whether `endpoint` is plain HTTP to this machine.
fn is_loopback_http(endpoint: &str) -> bool {
    let Some(rest) = endpoint.strip_prefix("http://") else { return false };
    let host = rest.split(['/', '?']).next().unwrap_or("");
    let host = match host.strip_prefix('[') {
        Some(bracketed) => bracketed.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(host, _)| host),
    };
    host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|address| address.is_loopback())
}

/// The coordinator's handle on the bucket: [`Bucket`] on a small runtime
/// of its own, so the checkpoint writer thread (no runtime) and the HTTP
/// handlers (the server's runtime) share one client and its connections,
/// and a blocking caller never blocks the server's threads.
#[derive(Debug)]
pub struct CoordinatorBucket {
    bucket: Bucket,
    runtime: Option<tokio::runtime::Runtime>,
    /// Bytes written (`crowdtrain_bucket_written_bytes_total`): the
    /// coordinator's egress to the bucket, part of its egress per round.
    written: prometheus_client::metrics::counter::Counter,
}

impl CoordinatorBucket {
    /// A client of `bucket` that counts the bytes it writes in `written`.
    pub fn new(
        bucket: Bucket,
        written: prometheus_client::metrics::counter::Counter,
    ) -> std::io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("bucket")
            .enable_all()
            .build()?;
        Ok(Self { bucket, runtime: Some(runtime), written })
    }

    pub fn bucket(&self) -> &Bucket {
        &self.bucket
    }

    fn handle(&self) -> &tokio::runtime::Handle {
        self.runtime.as_ref().expect("the runtime lives until drop").handle()
    }

    /// Writes `bytes` under `key`, waiting for it on this thread (any
    /// thread: the work runs on the bucket's runtime).
    pub fn put_blocking(&self, key: BlobKey, bytes: Vec<u8>) -> Result<(), StorageError> {
        let bucket = self.bucket.clone();
        let (sender, receiver) = std::sync::mpsc::channel();
        let size = bytes.len() as u64;
        self.handle().spawn(async move {
            let _ = sender.send(bucket.put(&key, bytes).await);
        });
        let written = receiver.recv().expect("the bucket's runtime runs until the coordinator stops");
        if written.is_ok() {
            self.written.inc_by(size);
        }
        written
    }

    /// [`Bucket::get`], waiting for it on this thread (not an async one).
    pub fn get_blocking(&self, key: BlobKey, limit: u64) -> Result<Vec<u8>, StorageError> {
        let bucket = self.bucket.clone();
        let (sender, receiver) = std::sync::mpsc::channel();
        self.handle().spawn(async move {
            let _ = sender.send(bucket.get(&key, limit).await);
        });
        receiver.recv().expect("the bucket's runtime runs until the coordinator stops")
    }

    /// [`Bucket::get`], run on the bucket's runtime.
    pub async fn get(&self, key: BlobKey, limit: u64) -> Result<Vec<u8>, StorageError> {
        let bucket = self.bucket.clone();
        self.handle()
            .spawn(async move { bucket.get(&key, limit).await })
            .await
            .expect("reading the bucket does not panic")
    }
}

/// The driver's access to the bucket: blocking, on the bucket's runtime.
impl RunBucket for CoordinatorBucket {
    fn url(&self) -> &str {
        self.bucket.url()
    }

    fn put(&self, key: BlobKey, bytes: Vec<u8>) -> Result<(), CoordinatorError> {
        self.put_blocking(key, bytes).map_err(|error| CoordinatorError::Bucket(Box::new(error)))
    }

    fn get(&self, key: BlobKey, limit: u64) -> Result<Option<Vec<u8>>, CoordinatorError> {
        match self.get_blocking(key, limit) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(StorageError::Missing { .. }) => Ok(None),
            Err(error) => Err(CoordinatorError::Bucket(Box::new(error))),
        }
    }
}

impl Drop for CoordinatorBucket {
    fn drop(&mut self) {
        // Dropped from wherever the node is, maybe an async context, where
        // a runtime may not block to shut down.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crowdtrain_protocol::WorkerId;

    #[test]
    fn plain_http_is_allowed_only_to_this_machine() {
        for endpoint in
            ["http://127.0.0.1:9000", "http://localhost:9000/", "http://[::1]:80", "http://127.3.2.1"]
        {
            assert!(is_loopback_http(endpoint), "{endpoint}");
        }
        for endpoint in [
            "https://127.0.0.1:9000",
            "http://10.0.0.1:9000",
            "http://example.com",
            "http://127.0.0.1.evil.com",
        ] {
            assert!(!is_loopback_http(endpoint), "{endpoint}");
        }
    }

    #[test]
    fn keys_are_content_addressed_under_the_run_and_the_worker() {
        let section = StorageSection { url: "s3://crowdtrain-test/runs/a".into() };
        let run = Digest::of(b"run");
        let bucket = Bucket::open(&section, &run).unwrap();
        let model = Digest::of(b"model");
        let worker = WorkerId(7);
        assert_eq!(
            bucket.path(&BlobKey::Model(model)).as_ref(),
            format!("runs/a/{}/models/{}", &run.to_hex()[..16], model.to_hex())
        );
        assert_eq!(
            bucket.path(&BlobKey::Update { worker, digest: model }).as_ref(),
            format!("runs/a/{}/updates/7/{}", &run.to_hex()[..16], model.to_hex())
        );
        let bad = StorageSection { url: "https://bucket".into() };
        assert!(matches!(Bucket::open(&bad, &run), Err(StorageError::Config { .. })));
    }
}
