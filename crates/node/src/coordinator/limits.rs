//! What one address or one key can make the coordinator do: requests per
//! second (governor's keyed GCRA limiters), uploads at once, and reading
//! an upload's body, which happens only after its request is authenticated
//! ([`read_body`]).

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use crowdtrain_protocol::PublicKey;
use crowdtrain_protocol::config::ServerSection;
use crowdtrain_protocol::wire::{BodyDeclaration, ErrorCode};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::Failure;
use super::net::AddressKey;

/// Bodies up to this size are read into memory; larger ones go to a
/// temporary file as they arrive, so a slow upload holds no memory.
pub const IN_MEMORY_MAX: u64 = 1024 * 1024;

/// An upload must average at least this rate (after the pause it may take
/// at the start, `server.body_timeout_ms`): a client cannot hold an upload
/// slot by trickling bytes.
pub const MIN_UPLOAD_BYTES_PER_S: u64 = 64 * 1024;

/// The request and upload limits of one coordinator.
pub struct RequestLimits {
    per_address: DefaultKeyedRateLimiter<AddressKey>,
    per_key: DefaultKeyedRateLimiter<PublicKey>,
    uploads: Arc<Semaphore>,
    uploads_per_key: Mutex<HashMap<PublicKey, u32>>,
    max_per_key: u32,
    pub body_timeout: Duration,
    /// Where large bodies are spilled while they arrive.
    pub spill_dir: PathBuf,
}

impl RequestLimits {
    pub fn new(server: &ServerSection, spill_dir: &Path) -> Self {
        let quota = |per_second: u32| {
            let rate = NonZeroU32::new(per_second).unwrap_or(NonZeroU32::MIN);
            Quota::per_second(rate).allow_burst(rate.saturating_mul(NonZeroU32::new(2).expect("2 > 0")))
        };
        Self {
            per_address: RateLimiter::keyed(quota(server.requests_per_second_per_address)),
            per_key: RateLimiter::keyed(quota(server.requests_per_second_per_key)),
            uploads: Arc::new(Semaphore::new(server.uploads_in_flight as usize)),
            uploads_per_key: Mutex::new(HashMap::new()),
            max_per_key: server.uploads_in_flight_per_key,
            body_timeout: Duration::from_millis(server.body_timeout_ms),
            spill_dir: spill_dir.to_owned(),
        }
    }

    /// Counts a request from `address`; refuses it over the address's rate.
    pub fn check_address(&self, address: IpAddr) -> Result<(), Failure> {
        self.per_address.check_key(&AddressKey::of(address)).map_err(|_| {
            Failure::new(ErrorCode::RateLimited, "too many requests from this address; send it again shortly")
        })
    }

    /// Counts a request signed by `key`; refuses it over the key's rate.
    pub fn check_key(&self, key: &PublicKey) -> Result<(), Failure> {
        self.per_key.check_key(key).map_err(|_| {
            Failure::new(ErrorCode::RateLimited, "too many requests from this key; send it again shortly")
        })
    }

    /// Forgets addresses and keys whose buckets are full again, so the
    /// limiters hold only who sent something recently.
    pub fn prune(&self) {
        self.per_address.retain_recent();
        self.per_address.shrink_to_fit();
        self.per_key.retain_recent();
        self.per_key.shrink_to_fit();
    }

    /// A slot to receive one upload from `key`, if the key and the
    /// coordinator have one free.
    pub fn begin_upload(self: &Arc<Self>, key: PublicKey) -> Result<UploadSlot, Failure> {
        let busy =
            || Failure::new(ErrorCode::RateLimited, "too many uploads in progress; send it again shortly");
        {
            let mut per_key = self.uploads_per_key.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            let count = per_key.entry(key).or_default();
            if *count >= self.max_per_key {
                return Err(busy());
            }
            *count += 1;
        }
        // Counted for the key from here: dropped, the slot gives it back.
        let mut slot = UploadSlot { limits: Arc::clone(self), key, _permit: None };
        slot._permit = Some(Arc::clone(&self.uploads).try_acquire_owned().map_err(|_| busy())?);
        Ok(slot)
    }
}

/// One upload being received (and processed); frees its slot when dropped.
pub struct UploadSlot {
    limits: Arc<RequestLimits>,
    key: PublicKey,
    _permit: Option<OwnedSemaphorePermit>,
}

impl Drop for UploadSlot {
    fn drop(&mut self) {
        let mut per_key = self.limits.uploads_per_key.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(count) = per_key.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                per_key.remove(&self.key);
            }
        }
    }
}

/// Reads an authenticated request's body, which must be exactly
/// `declared`: never more bytes than declared, hashed as they arrive, in
/// memory if small and in a temporary file otherwise, and within a
/// deadline (`timeout` without a byte, or `timeout` plus the declared
/// length at [`MIN_UPLOAD_BYTES_PER_S`] in all).
pub async fn read_body(
    body: Body,
    declared: BodyDeclaration,
    timeout: Duration,
    spill_dir: &Path,
) -> Result<Vec<u8>, Failure> {
    let started = Instant::now();
    let deadline = started + timeout + Duration::from_secs(declared.length / MIN_UPLOAD_BYTES_PER_S);
    let mut sink = if declared.length <= IN_MEMORY_MAX {
        Sink::Memory(Vec::with_capacity(declared.length as usize))
    } else {
        let file = tempfile::tempfile_in(spill_dir).map_err(Failure::internal)?;
        Sink::File(tokio::fs::File::from_std(file))
    };
    let mut hasher = blake3::Hasher::new();
    let mut received = 0u64;
    let mut body = body;
    loop {
        let wait = timeout.min(deadline.saturating_duration_since(Instant::now()));
        let frame = match tokio::time::timeout(wait, body.frame()).await {
            Err(_) => {
                return Err(Failure::new(
                    ErrorCode::TimedOut,
                    format!(
                        "the body stalled or came too slowly ({received} of {} bytes in {:.1} s)",
                        declared.length,
                        started.elapsed().as_secs_f64()
                    ),
                ));
            }
            Ok(None) => break,
            Ok(Some(frame)) => frame
                .map_err(|error| Failure::new(ErrorCode::BadRequest, format!("reading the body: {error}")))?,
        };
        let Ok(data) = frame.into_data() else { continue };
        received += data.len() as u64;
        if received > declared.length {
            return Err(Failure::new(
                ErrorCode::BadRequest,
                format!("the body is longer than the {} bytes its request declares", declared.length),
            ));
        }
        hasher.update(&data);
        match &mut sink {
            Sink::Memory(bytes) => bytes.extend_from_slice(&data),
            Sink::File(file) => file.write_all(&data).await.map_err(Failure::internal)?,
        }
    }
    if received != declared.length {
        return Err(Failure::new(
            ErrorCode::BadRequest,
            format!("the body is {received} bytes, not the {} its request declares", declared.length),
        ));
    }
    if crowdtrain_protocol::Digest(*hasher.finalize().as_bytes()) != declared.digest {
        return Err(Failure::new(
            ErrorCode::BadSignature,
            "the body is not the one its signed declaration names (another BLAKE3 digest)",
        ));
    }
    match sink {
        Sink::Memory(bytes) => Ok(bytes),
        Sink::File(mut file) => {
            let mut bytes = Vec::with_capacity(declared.length as usize);
            file.rewind().await.map_err(Failure::internal)?;
            file.read_to_end(&mut bytes).await.map_err(Failure::internal)?;
            Ok(bytes)
        }
    }
}

enum Sink {
    Memory(Vec<u8>),
    File(tokio::fs::File),
}
