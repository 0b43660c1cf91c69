//! The worker's HTTP client: signs every request, retries what can be
//! retried, and gives up with the reason when the coordinator stays away.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crowdtrain_protocol::wire::{
    AUTH_HEADER, ApiError, BODY_HEADER, BodyDeclaration, ErrorCode, REWARD_MODEL_HEADER, RUN_HEADER,
};
use crowdtrain_protocol::{Digest, Identity, RequestAuth};
use reqwest::StatusCode;

use crate::NodeError;

/// The first retry waits this long; each next one twice as long, up to
/// [`BACKOFF_MAX`].
const BACKOFF_START: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Idle connections are kept this long for reuse.
const POOL_IDLE: Duration = Duration::from_secs(5);

/// A response the caller must look at: a success, or a refusal (4xx) with
/// the coordinator's reason.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub body: Vec<u8>,
    /// The [`REWARD_MODEL_HEADER`] of the answer, if it has one.
    pub header: Option<String>,
}

impl Answer {
    /// The coordinator's explanation of a refusal, for messages.
    pub fn reason(&self) -> String {
        match serde_json::from_slice::<ApiError>(&self.body) {
            Ok(error) => format!("{} ({:?}, HTTP {})", error.message, error.error, self.status.as_u16()),
            Err(_) => format!("HTTP {}: {}", self.status.as_u16(), String::from_utf8_lossy(&self.body)),
        }
    }

    /// The machine-readable reason of a refusal, if the body names one.
    pub fn code(&self) -> Option<ErrorCode> {
        if self.status.is_success() {
            return None;
        }
        serde_json::from_slice::<ApiError>(&self.body).ok().map(|error| error.error)
    }

    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, NodeError> {
        serde_json::from_slice(&self.body)
            .map_err(|error| NodeError::Untrusted(format!("unreadable answer ({error}): {}", self.reason())))
    }
}

/// How a state-changing request (a POST) is sequenced with the others.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sequence {
    /// One at a time, in the order they are signed (see
    /// [`Client::request_counted`]).
    InTurn,
    /// Beside the others, on a connection of its own: for a large upload
    /// (an audit answer) that the small ones (commitments, reveals) must
    /// not wait behind, whose effect does not depend on its order.
    Beside,
}

/// Talks to one coordinator as one identity.
pub struct Client {
    http: reqwest::Client,
    base: String,
    identity: Identity,
    run: Option<Digest>,
    give_up_after: Duration,
    last_nonce: AtomicU64,
    /// Held by a state-changing request (a POST) sent in turn
    /// ([`Sequence::InTurn`]) from signing until its answer: the coordinator
    /// takes such a request only with a nonce above the last one it
    /// accepted from this key, so two in flight at once (a reveal sent
    /// beside the next round's commitment, `[outer] delay` >= 1) could
    /// arrive out of order and the earlier-signed one be refused.
    posting: tokio::sync::Mutex<()>,
    /// Bytes received in response bodies.
    pub bytes_received: AtomicU64,
}

/// A request refused as replayed is signed again and sent this many more
/// times at most; a refusal as replayed comes before the coordinator
/// changes anything. Posts go one at a time (`Client::posting`), and the
/// coordinator takes reads in any order among the latest few from a key
/// (`ReadNonces` in the protocol crate), so an honest worker's requests are
/// not refused as replayed: this is a net under that, not a race to win.
/// (A post sent beside the others, [`Sequence::Beside`], is an audit
/// answer, which the coordinator does not hold to the nonce order: see
/// `Coordinator::authenticate`.)
const REPLAYED_RETRIES: u32 = 3;

impl Client {
    pub fn new(base: &str, identity: Identity, give_up_after: Duration) -> Result<Self, NodeError> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(120))
            .connect_timeout(Duration::from_secs(10))
            // Below the coordinator's idle limit (`server.header_timeout_ms`,
            // 10 s by default): a connection idle while the worker loads its
            // data or trains is dropped here first, not reused just as the
            // coordinator closes it ("connection closed before message
            // completed").
            .pool_idle_timeout(POOL_IDLE)
            .build()
            .map_err(|error| NodeError::Untrusted(format!("could not build an HTTP client: {error}")))?;
        Ok(Self {
            http,
            base: base.trim_end_matches('/').to_owned(),
            identity,
            run: None,
            give_up_after,
            last_nonce: AtomicU64::new(0),
            posting: tokio::sync::Mutex::new(()),
            bytes_received: AtomicU64::new(0),
        })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// Signs requests for `run` from now on.
    pub fn set_run(&mut self, run: Digest) {
        self.run = Some(run);
    }

    /// Microseconds since the epoch, strictly increasing in this process.
    fn nonce(&self) -> u64 {
        let now =
            SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |elapsed| elapsed.as_micros() as u64);
        let mut last = self.last_nonce.load(Ordering::Relaxed);
        loop {
            let next = now.max(last + 1);
            match self.last_nonce.compare_exchange(last, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return next,
                Err(current) => last = current,
            }
        }
    }

    /// Sends a request, signed if a run is set, retrying transport failures
    /// and 5xx answers with exponential backoff (re-signing each attempt with
    /// a fresh nonce) until `give_up_after` has passed without success, and
    /// answers that say to send it again later (429 `rate-limited`, after
    /// their `Retry-After`) for as long as they come. Returns any other 2xx
    /// or 4xx answer, and 503 `full` (the caller decides how long to wait
    /// for a place).
    pub async fn request(
        &self,
        method: reqwest::Method,
        path_and_query: &str,
        body: Vec<u8>,
        headers: &[(&str, String)],
    ) -> Result<Answer, NodeError> {
        self.request_counted(method, path_and_query, body, headers, None, Sequence::InTurn).await
    }

    /// [`Client::request`], counting the body's bytes into `sent` as they
    /// go out (from zero again on each attempt): what an upload's progress
    /// bar shows. A post goes in turn with the others or beside them
    /// (`sequence`); one refused as replayed because another overtook it
    /// is signed again and sent again, a few times.
    pub async fn request_counted(
        &self,
        method: reqwest::Method,
        path_and_query: &str,
        body: Vec<u8>,
        headers: &[(&str, String)],
        sent: Option<&Arc<AtomicU64>>,
        sequence: Sequence,
    ) -> Result<Answer, NodeError> {
        let _posting = match method {
            reqwest::Method::GET | reqwest::Method::HEAD => None,
            _ if sequence == Sequence::Beside => None,
            _ => Some(self.posting.lock().await),
        };
        let mut started = Instant::now();
        let mut backoff = BACKOFF_START;
        let mut replayed = 0;
        let declared = BodyDeclaration::of(&body);
        loop {
            let mut request = self.http.request(method.clone(), format!("{}{path_and_query}", self.base));
            if let Some(run) = &self.run {
                let auth = RequestAuth::sign_declared(
                    &self.identity,
                    run,
                    method.as_str(),
                    path_and_query,
                    self.nonce(),
                    &declared,
                );
                request = request.header(RUN_HEADER, run.to_hex()).header(AUTH_HEADER, auth.to_header());
                if !body.is_empty() {
                    request = request.header(BODY_HEADER, declared.to_header());
                }
            }
            for (name, value) in headers {
                request = request.header(*name, value);
            }
            let request = match sent {
                Some(sent) if !body.is_empty() => {
                    sent.store(0, Ordering::Relaxed);
                    request
                        .header(reqwest::header::CONTENT_LENGTH, body.len())
                        .body(counted_body(body.clone(), Arc::clone(sent)))
                }
                _ => request.body(body.clone()),
            };
            let outcome = match request.send().await {
                Ok(response) => {
                    let status = response.status();
                    let retry_after = response
                        .headers()
                        .get(reqwest::header::RETRY_AFTER)
                        .and_then(|value| value.to_str().ok()?.parse::<u64>().ok())
                        .map(Duration::from_secs);
                    let header = response
                        .headers()
                        .get(REWARD_MODEL_HEADER)
                        .and_then(|value| value.to_str().ok())
                        .map(str::to_owned);
                    match response.bytes().await {
                        Ok(bytes) => {
                            self.bytes_received.fetch_add(bytes.len() as u64, Ordering::Relaxed);
                            let answer = Answer { status, body: bytes.to_vec(), header };
                            match answer.code() {
                                Some(ErrorCode::RateLimited) => {
                                    // The coordinator is there, and busy:
                                    // wait as told, and never give up.
                                    let wait = retry_after.unwrap_or(backoff).clamp(backoff, BACKOFF_MAX);
                                    tracing::debug!(wait_ms = wait.as_millis() as u64, "rate limited");
                                    tokio::time::sleep(wait).await;
                                    backoff = (backoff * 2).min(BACKOFF_MAX);
                                    started = Instant::now();
                                    continue;
                                }
                                Some(ErrorCode::Replayed) if replayed < REPLAYED_RETRIES => {
                                    replayed += 1;
                                    continue;
                                }
                                Some(ErrorCode::Full) => return Ok(answer),
                                _ if !status.is_server_error() => return Ok(answer),
                                _ => format!(
                                    "HTTP {}: {}",
                                    status.as_u16(),
                                    String::from_utf8_lossy(&answer.body)
                                ),
                            }
                        }
                        Err(error) => format!("reading the answer failed: {error}"),
                    }
                }
                Err(error) => describe(&error),
            };
            if started.elapsed() >= self.give_up_after {
                return Err(NodeError::GaveUp {
                    url: self.base.clone(),
                    seconds: started.elapsed().as_secs(),
                    last: outcome,
                });
            }
            tracing::warn!(%outcome, retry_in_ms = backoff.as_millis() as u64, "coordinator unavailable");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    /// Like [`Client::request`], for callers that want the raw response to
    /// stream (model downloads); a single attempt.
    pub async fn get_stream(&self, path: &str, range_start: u64) -> Result<reqwest::Response, String> {
        let mut request = self.http.get(format!("{}{path}", self.base));
        if range_start > 0 {
            request = request.header(reqwest::header::RANGE, format!("bytes={range_start}-"));
        }
        request.send().await.map_err(|error| describe(&error))
    }

    pub fn give_up_after(&self) -> Duration {
        self.give_up_after
    }
}

/// Uploads are handed to the connection in pieces of this size, so that
/// their progress can be counted.
const UPLOAD_CHUNK: usize = 64 * 1024;

/// `body` as a stream of pieces, each counted into `sent` as the
/// connection takes it (its length is declared in the headers).
fn counted_body(body: Vec<u8>, sent: Arc<AtomicU64>) -> reqwest::Body {
    let pieces: Vec<Vec<u8>> = body.chunks(UPLOAD_CHUNK).map(<[u8]>::to_vec).collect();
    reqwest::Body::wrap_stream(futures_util::stream::iter(pieces.into_iter().map(move |piece| {
        sent.fetch_add(piece.len() as u64, Ordering::Relaxed);
        Ok::<_, std::convert::Infallible>(piece)
    })))
}

/// A transport error in words, with its cause chain.
fn describe(error: &reqwest::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use axum::Router;
    use axum::routing::post;
    use reqwest::Method;

    use super::{Client, Sequence};
    use crowdtrain_protocol::Identity;

    /// A loopback server whose `/answer` holds its request until `release`
    /// is notified (a large upload still under way) and whose `/reveal`
    /// answers at once.
    async fn server(release: Arc<tokio::sync::Notify>) -> String {
        let app = Router::new()
            .route(
                "/answer",
                post(move || {
                    let release = Arc::clone(&release);
                    async move {
                        release.notified().await;
                        "answered"
                    }
                }),
            )
            .route("/reveal", post(|| async { "revealed" }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("a loopback port");
        let address = listener.local_addr().expect("bound");
        tokio::spawn(async move { axum::serve(listener, app).await.expect("the server runs") });
        format!("http://{address}")
    }

    #[test]
    fn a_post_in_turn_does_not_wait_behind_an_answer_sent_beside_it_but_waits_behind_one_in_turn() {
        let runtime =
            tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        runtime.block_on(async {
            let release = Arc::new(tokio::sync::Notify::new());
            let base = server(Arc::clone(&release)).await;
            let identity = Identity::from_seed([7; 32]);
            let client = Arc::new(Client::new(&base, identity, Duration::from_secs(10)).unwrap());
            for sequence in [Sequence::Beside, Sequence::InTurn] {
                let answering = {
                    let client = Arc::clone(&client);
                    tokio::spawn(async move {
                        client
                            .request_counted(Method::POST, "/answer", vec![0; 1 << 20], &[], None, sequence)
                            .await
                    })
                };
                // The answer's request is under way (held by the server).
                tokio::time::sleep(Duration::from_millis(200)).await;
                let reveal = client.request(Method::POST, "/reveal", vec![1; 1024], &[]);
                let revealed = tokio::time::timeout(Duration::from_millis(1500), reveal).await;
                match sequence {
                    Sequence::Beside => {
                        let answer = revealed.expect("the reveal does not wait for the answer").unwrap();
                        assert_eq!(answer.body, b"revealed");
                        assert!(!answering.is_finished(), "the answer is still held");
                    }
                    Sequence::InTurn => assert!(revealed.is_err(), "posts in turn go one at a time"),
                }
                release.notify_one();
                let answered = answering.await.unwrap().unwrap();
                assert_eq!(answered.body, b"answered");
            }
        });
    }
}
