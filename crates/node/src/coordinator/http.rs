//! The coordinator's HTTP API (axum), a thin layer over [`Node`].
//!
//! | method and path | auth | answer |
//! |---|---|---|
//! | `GET /v1/run` | none | `Signed<RunInfo>` |
//! | `GET /v1/contract` | none | `Signed<ContractMenu>` (postcard, as in the ledger: JSON does not carry every f64 back exactly): the menu the run published in its ledger when it started; 404 `not-found` if the run offers no contract |
//! | `POST /v1/workers` | signed | body: a JSON `RegisterRequest` (class, admission token); `Signed<Registration>` (idempotent per key); 403 `not-admitted` for a new key the run does not admit, 503 `full` when the run has as many live workers as its data supports (send it again later) |
//! | `GET /v1/round?after=R&wait_ms=W` | signed | `Signed<RoundView>`; long-polls up to W ms while it asks nothing of this worker for a round after R |
//! | `GET /v1/models/{digest}` | none | the safetensors checkpoint; honours `Range: bytes=N-` so downloads resume |
//! | `GET /v1/models/{digest}/delta` | none | under a compressed broadcast (`[outer] broadcast`), the model delta (`crowdtrain_store::delta`) that makes this model from the one before it; 404 `not-found` when there is none among the newest kept (download the model whole). Its content is checked by the digest of what it rebuilds |
//! | `POST /v1/rounds/{round}/commitments?base_model=D[&slot=K&slots=N][&with_reveal=L]` | signed | body: a JSON `Commitment` (under `audit.replay = "from-start"` with its `boundaries`, the leaves its root is over), and with `with_reveal=L` the L bytes of the encoded update after it, revealed as soon as the commitment is taken (not with a bucket); `Signed<Receipt>` (200, or 202 if late), with `with_reveal` a `CommittedAndRevealed` (both receipts, or the reveal's refusal); 409 `too-early` while the round is open provisionally (send it again shortly); `stale-model` if the model, or the shard trained (slot K of N), is not the round's |
//! | `POST /v1/rounds/{round}/reveals?base_model=D[&object=DIGEST]` | signed | body: the encoded pseudo-gradient (with a bucket: no body, and the update at `updates/{worker}/{DIGEST}` in the bucket); `Signed<Receipt>` (200, or 202 if late); 409 `reveal-mismatch` if it is not what was committed (recorded and slashed) |
//! | `POST /v1/rounds/{round}/audits[?object=DIGEST]` | signed | body: a postcard `AuditAnswer` (with a bucket: no body, and the answer at `answers/{worker}/{DIGEST}` in the bucket); `Signed<Receipt>`: `replaying` (the verdict follows in the ledger), `delegated`, or `failed` (proofs that do not hold) |
//! | `GET /v1/status?rounds_from=R&rounds_limit=N` | none | `RunStatus` JSON, with at most N (default 100, at most 1,000) rounds from round R (default: the latest) |
//! | `GET /v1/rewards/{worker}` | `{worker}`'s own key | its model reward (safetensors) once the run has finished, named by the `x-crowdtrain-reward-model` header; 403 for any other key, 409 `too-early` before it is built, 404 if withheld |
//! | `GET /v1/ledger?kinds=K1,K2&before=I&from=I&limit=N` | none | `LedgerPage` JSON: at most N (default 50, at most 200) decoded entries of those kinds (any if none; at most 20 kinds), newest first from before index I, or oldest first from index I |
//! | `GET /v1/ledger/{index}` | none | `LedgerEntryView` JSON: one entry, decoded |
//! | `GET /metrics` | none | the Prometheus (OpenMetrics) text; names in [`super::metrics`] |
//! | `GET /`, `/dashboard.js`, `/dashboard.css` | none | the live dashboard: a page embedded in the binary that polls `/v1/status` and `/v1/ledger` |
//!
//! Every refusal is a 4xx with an [`ApiError`] JSON body naming the
//! problem; nothing refused changes any state. Work that touches the state
//! runs on the blocking pool, so the async threads never wait on SQLite or
//! aggregation.
//!
//! What anyone can make the coordinator spend is bounded before a request
//! is authenticated: connections ([`super::net`]); requests per second per
//! address and per key (429 `rate-limited`, with `Retry-After`); and
//! bodies, which are read only after the request's signature (over its
//! declared body length and digest) and nonce check out, within the
//! upload limit, from a key with an upload slot free, at a minimum rate,
//! hashed as they arrive ([`super::limits`]).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{ConnectInfo, FromRef, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use crowdtrain_protocol::wire::{
    AUTH_HEADER, ApiError, BODY_HEADER, BodyDeclaration, ErrorCode, LONG_POLL_MS_MAX, Phase,
    REWARD_MODEL_HEADER, RUN_HEADER, Receipt, ReceiptStatus, RegisterRequest,
};
use crowdtrain_protocol::wire::{CommitBody, CommittedAndRevealed};
use crowdtrain_protocol::{Digest, PublicKey, Refusal, RequestAuth, Shard, Signed};
use serde::Deserialize;

use super::driver::DriverError;
use super::limits::{RequestLimits, UploadSlot, read_body};
use super::{Node, net};
use crate::NodeError;
use crate::storage::{BlobKey, StorageError};

/// A refused request: the HTTP status and the JSON body to send. The
/// mapping of the protocol's error codes to HTTP statuses lives here, in
/// the shell, with the handlers that send them.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    pub status: u16,
    pub code: ErrorCode,
    pub message: String,
}

impl Failure {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        let status = match code {
            ErrorCode::Unauthenticated | ErrorCode::BadSignature => 401,
            ErrorCode::UnknownWorker
            | ErrorCode::NotAssigned
            | ErrorCode::NotAdmitted
            | ErrorCode::Forbidden
            | ErrorCode::BondExhausted => 403,
            ErrorCode::TimedOut => 408,
            ErrorCode::RateLimited => 429,
            ErrorCode::NotFound => 404,
            ErrorCode::Replayed | ErrorCode::WrongRound | ErrorCode::Duplicate | ErrorCode::StaleModel => 409,
            ErrorCode::Late
            | ErrorCode::TooEarly
            | ErrorCode::NotCommitted
            | ErrorCode::NotAudited
            | ErrorCode::RevealMismatch
            | ErrorCode::ResidualChain => 409,
            ErrorCode::Finished => 410,
            ErrorCode::TooLarge => 413,
            ErrorCode::WrongShape | ErrorCode::NonFinite | ErrorCode::BadObject => 422,
            ErrorCode::WrongRun | ErrorCode::BadRequest => 400,
            ErrorCode::Full | ErrorCode::Unavailable => 503,
        };
        Self { status, code, message: message.into() }
    }

    pub(super) fn internal(error: impl std::fmt::Display) -> Self {
        Self { status: 500, code: ErrorCode::Unavailable, message: format!("coordinator error: {error}") }
    }
}

impl From<Refusal> for Failure {
    fn from(refusal: Refusal) -> Self {
        Self::new(refusal.code, refusal.message)
    }
}

/// The driver's typed errors as the shell answers them: a refusal with its
/// code's status, anything else a 500 (the node halts too if a durable
/// write failed, see [`Node::input`](super::Node)).
impl From<DriverError> for Failure {
    fn from(error: DriverError) -> Self {
        match error {
            DriverError::Refused(refusal) => refusal.into(),
            other => Self::internal(other),
        }
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let retry_after = match self.code {
            ErrorCode::RateLimited => Some("1"),
            ErrorCode::Full => Some("5"),
            _ => None,
        };
        let mut response =
            (status, Json(ApiError { error: self.code, message: self.message })).into_response();
        if let Some(seconds) = retry_after {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static(seconds));
        }
        response
    }
}

/// What every handler may reach: the node and the request limits.
#[derive(Clone)]
struct App {
    node: Arc<Node>,
    limits: Arc<RequestLimits>,
}

impl FromRef<App> for Arc<Node> {
    fn from_ref(app: &App) -> Self {
        Arc::clone(&app.node)
    }
}

impl FromRef<App> for Arc<RequestLimits> {
    fn from_ref(app: &App) -> Self {
        Arc::clone(&app.limits)
    }
}

/// A registration's body (JSON: a class and a token) is at most this.
const REGISTRATION_BYTES_MAX: u64 = 4096;

/// Ledger pages hold at most this many entries, of at most this many kinds.
const LEDGER_PAGE_MAX: u64 = 200;
const LEDGER_PAGE_DEFAULT: u64 = 50;
const LEDGER_KINDS_MAX: usize = 20;

/// The dashboard's files, embedded in the binary (no build step, no
/// Node toolchain): a page, its script (hand-written SVG charts) and its
/// style.
const DASHBOARD_HTML: &str = include_str!("dashboard/index.html");
const DASHBOARD_JS: &str = include_str!("dashboard/dashboard.js");
const DASHBOARD_CSS: &str = include_str!("dashboard/dashboard.css");

/// Status pages hold at most this many rounds.
const STATUS_ROUNDS_MAX: u64 = 1000;
const STATUS_ROUNDS_DEFAULT: u64 = 100;

/// A worker's own view lists at most this many of its rounds.
const WORKER_ROUNDS_MAX: u64 = 64;
const WORKER_ROUNDS_DEFAULT: u64 = 16;

/// Serves the API on `listener` until `shutdown` resolves, with the timer
/// that enforces round deadlines. Returns an error if the node hit a state
/// it cannot safely continue from (a failed write): the process should
/// exit, and a restart resumes from the durable state.
pub async fn serve(
    node: Arc<Node>,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), NodeError> {
    let descriptors = net::raise_descriptor_limit()
        .map_err(|error| NodeError::io("reading the limit on open files", error))?;
    let server = &node.config.server;
    let connections = net::ConnectionLimits::new(server, descriptors);
    tracing::info!(
        descriptors,
        max_connections = connections.max_connections,
        per_address = connections.max_per_address,
        "connection limits"
    );
    let limits = Arc::new(RequestLimits::new(server, &node.uploads_dir));
    let app = App { node: Arc::clone(&node), limits: Arc::clone(&limits) };
    let router = Router::new()
        .route("/v1/run", get(run_info))
        .route("/v1/contract", get(contract_menu))
        .route("/v1/workers", post(register))
        .route("/v1/workers/{worker}", get(worker_view))
        .route("/v1/round", get(round))
        .route("/v1/models/{digest}", get(model))
        .route("/v1/models/{digest}/delta", get(model_delta))
        .route("/v1/rounds/{round}/commitments", post(commitment))
        .route("/v1/rounds/{round}/reveals", post(reveal))
        .route("/v1/rounds/{round}/audits", post(audit_answer))
        .route("/v1/rounds/{round}/audit-tasks/{audited}", get(audit_task).post(audit_report))
        .route("/v1/rewards/{worker}", get(reward_model))
        .route("/v1/status", get(status))
        .route("/v1/ledger", get(ledger))
        .route("/v1/ledger/{index}", get(ledger_entry))
        .route("/metrics", get(metrics))
        .route("/", get(|| async { asset("text/html; charset=utf-8", DASHBOARD_HTML) }))
        .route("/dashboard.js", get(|| async { asset("text/javascript; charset=utf-8", DASHBOARD_JS) }))
        .route("/dashboard.css", get(|| async { asset("text/css; charset=utf-8", DASHBOARD_CSS) }))
        .fallback(|| async { Failure::new(ErrorCode::NotFound, "no such endpoint") })
        .layer(axum::middleware::from_fn_with_state(Arc::clone(&node), count_sent))
        .layer(axum::middleware::from_fn_with_state(Arc::clone(&limits), per_address))
        .with_state(app);
    let stats = Arc::new(net::ConnectionStats::default());
    let server = net::serve(listener, router, connections, stats, shutdown);
    let mut fatal = node.fatal.subscribe();
    tokio::select! {
        served = server => served.map_err(|error| NodeError::io("the HTTP server failed", error)),
        failed = timer(Arc::clone(&node)) => failed,
        () = prune(limits) => Ok(()),
        () = super::notices::publish(Arc::clone(&node)) => Ok(()),
        _ = fatal.wait_for(Option::is_some) => Err(NodeError::Halted(node.fatal.borrow().clone().unwrap_or_default())),
    }
}

/// Refuses a request over its address's rate, before anything else.
async fn per_address(State(limits): State<Arc<RequestLimits>>, request: Request, next: Next) -> Response {
    let peer = request.extensions().get::<ConnectInfo<SocketAddr>>().map(|ConnectInfo(peer)| peer.ip());
    if let Some(Err(failure)) = peer.map(|address| limits.check_address(address)) {
        return failure.into_response();
    }
    next.run(request).await
}

/// Counts each answer's body in `crowdtrain_sent_bytes_total`, by route:
/// the coordinator's egress, which a run with a bucket keeps to small
/// signed metadata. Every body the API makes has a known length.
async fn count_sent(
    State(node): State<Arc<Node>>,
    matched: Option<axum::extract::MatchedPath>,
    request: Request,
    next: Next,
) -> Response {
    let response = next.run(request).await;
    let size = axum::body::HttpBody::size_hint(response.body());
    let bytes = size.exact().unwrap_or(size.lower());
    let endpoint = matched.as_ref().map_or("other", |matched| matched.as_str());
    node.metrics.sent(endpoint, bytes);
    response
}

/// Keeps the rate limiters to the addresses and keys seen lately.
async fn prune(limits: Arc<RequestLimits>) {
    loop {
        tokio::time::sleep(Duration::from_secs(10)).await;
        limits.prune();
    }
}

/// Calls `tick` at every deadline the machine sets; returns only on a
/// failure the node cannot continue from.
async fn timer(node: Arc<Node>) -> Result<(), NodeError> {
    let mut changes = node.changes.subscribe();
    loop {
        let next = node.lock().driver.machine.poll_timeout();
        match next {
            Some(deadline) => {
                let wait = Duration::from_millis(deadline.saturating_sub(node.now()));
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {
                        let node = Arc::clone(&node);
                        tokio::task::spawn_blocking(move || node.tick()).await.expect("the tick task does not panic")?;
                    }
                    _ = changes.changed() => {}
                }
            }
            None => {
                if changes.changed().await.is_err() {
                    return Ok(());
                }
            }
        }
    }
}

/// Runs `work` on the blocking pool.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, Failure> + Send + 'static,
) -> Result<T, Failure> {
    tokio::task::spawn_blocking(work).await.unwrap_or_else(|error| Err(Failure::internal(error)))
}

/// Checks the run header and the request's signature over its declared
/// body, and counts the request against its key's rate; returns the
/// signer, the nonce and the declared body. Reads no body. Says precisely
/// what is wrong.
fn verify_signature(
    node: &Node,
    limits: &RequestLimits,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
) -> Result<(RequestAuth, BodyDeclaration), Failure> {
    let header_text = |name: &str| headers.get(name).and_then(|value| value.to_str().ok());
    let auth = header_text(AUTH_HEADER).ok_or_else(|| {
        Failure::new(ErrorCode::Unauthenticated, format!("unsigned request: no {AUTH_HEADER} header"))
    })?;
    let run = header_text(RUN_HEADER)
        .ok_or_else(|| Failure::new(ErrorCode::Unauthenticated, format!("no {RUN_HEADER} header")))?;
    if run != node.run_id().to_hex() {
        return Err(Failure::new(
            ErrorCode::WrongRun,
            format!("this coordinator runs {}, not {run}", node.run_id().to_hex()),
        ));
    }
    let auth =
        RequestAuth::parse_header(auth).map_err(|reason| Failure::new(ErrorCode::Unauthenticated, reason))?;
    let declared = match header_text(BODY_HEADER) {
        Some(text) => BodyDeclaration::parse_header(text)
            .map_err(|reason| Failure::new(ErrorCode::BadRequest, reason))?,
        None if headers.contains_key(BODY_HEADER) => {
            return Err(Failure::new(ErrorCode::BadRequest, format!("{BODY_HEADER} is not text")));
        }
        None => BodyDeclaration::empty(),
    };
    let length =
        headers.get(header::CONTENT_LENGTH).and_then(|value| value.to_str().ok()?.parse::<u64>().ok());
    if length.is_some_and(|length| length != declared.length) {
        return Err(Failure::new(
            ErrorCode::BadRequest,
            format!("Content-Length is not the {} bytes {BODY_HEADER} declares", declared.length),
        ));
    }
    let path = uri.path_and_query().map_or(uri.path(), |path| path.as_str());
    auth.verify(&node.run_id(), method.as_str(), path, &declared).map_err(|_| {
        Failure::new(
            ErrorCode::BadSignature,
            format!("the signature does not verify for key {} over {method} {path}", auth.worker),
        )
    })?;
    limits.check_key(&auth.worker)?;
    Ok((auth, declared))
}

/// Checks a signed request that reads (no body; a single-use nonce) and
/// marks its worker as seen; returns the worker.
async fn signed_read(
    node: &Arc<Node>,
    limits: &RequestLimits,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
) -> Result<crowdtrain_protocol::WorkerId, Failure> {
    let (auth, declared) = verify_signature(node, limits, method, uri, headers)?;
    if declared.length != 0 {
        return Err(Failure::new(ErrorCode::BadRequest, format!("{method} {} takes no body", uri.path())));
    }
    let node = Arc::clone(node);
    let worker = blocking(move || node.read(&auth.worker, auth.nonce)).await?;
    net::participant_authenticated();
    Ok(worker)
}

async fn run_info(State(node): State<Arc<Node>>) -> Response {
    Json(node.run_info().clone()).into_response()
}

async fn contract_menu(State(node): State<Arc<Node>>) -> Response {
    // Postcard, as the ledger keeps it: JSON does not carry every f64
    // back bit for bit, and the signature covers the exact values.
    match node.contract_menu() {
        Some(menu) => (
            [(header::CONTENT_TYPE, "application/octet-stream")],
            postcard::to_allocvec(menu).expect("menus encode"),
        )
            .into_response(),
        None => Failure::new(ErrorCode::NotFound, "this run offers no contract").into_response(),
    }
}

async fn register(
    State(node): State<Arc<Node>>,
    State(limits): State<Arc<RequestLimits>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let result = async {
        let (auth, declared) = verify_signature(&node, &limits, &method, &uri, &headers)?;
        if declared.length > REGISTRATION_BYTES_MAX {
            return Err(Failure::new(
                ErrorCode::TooLarge,
                format!("a registration is at most {REGISTRATION_BYTES_MAX} bytes"),
            ));
        }
        let body = read_body(body, declared, limits.body_timeout, &limits.spill_dir).await?;
        let request: RegisterRequest = serde_json::from_slice(&body).map_err(|error| {
            Failure::new(
                ErrorCode::BadRequest,
                format!(
                    "registration needs a JSON body with the worker's determinism class and, if the run admits \
                     by token, its admission token ({{\"class\": ..., \"token\": ...}}): {error}"
                ),
            )
        })?;
        blocking(move || {
            node.register(auth.worker, auth.nonce, &request.class, request.token.as_deref(), request.choice)
        })
        .await
    };
    match result.await {
        Ok(registration) => {
            net::participant_authenticated();
            Json(registration).into_response()
        }
        Err(failure) => failure.into_response(),
    }
}

#[derive(Debug, Deserialize)]
struct RoundQuery {
    after: Option<u64>,
    wait_ms: Option<u64>,
    /// Wait instead until round `revealing` (committed to by the worker)
    /// asks for its reveal or audit answer, or is over: what a reveal sent
    /// beside the next round's training waits for (`[outer] delay` >= 1).
    revealing: Option<u64>,
    /// Wait instead until the newest model is another than this one (hex):
    /// the next round's base, fetched while this round trains.
    model_not: Option<String>,
}

async fn round(
    State(node): State<Arc<Node>>,
    State(limits): State<Arc<RequestLimits>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    query: Result<Query<RoundQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let result = async {
        let Query(query) =
            query.map_err(|rejection| Failure::new(ErrorCode::BadRequest, rejection.body_text()))?;
        let model_not: Option<Digest> =
            query.model_not.as_deref().map(str::parse).transpose().map_err(|reason: String| {
                Failure::new(ErrorCode::BadRequest, format!("model_not: {reason}"))
            })?;
        let worker = signed_read(&node, &limits, &method, &uri, &headers).await?;
        let mut changes = node.changes.subscribe();
        let deadline = tokio::time::Instant::now()
            + Duration::from_millis(query.wait_ms.unwrap_or(0).min(LONG_POLL_MS_MAX));
        loop {
            let view = {
                let node = Arc::clone(&node);
                // Asked again each time it wakes: a slash may have
                // exhausted its bond while it waited.
                blocking(move || {
                    node.may_work(worker)?;
                    Ok(node.view(Some(worker)))
                })
                .await?
            };
            let news = match (query.revealing, model_not) {
                (Some(round), _) => reveal_due(&view.body, round),
                (None, Some(model)) => view.body.model != model || view.body.phase == Phase::Finished,
                (None, None) => actionable(&view.body, query.after),
            };
            if news {
                return Ok::<_, Failure>(view);
            }
            tokio::select! {
                _ = changes.changed() => {}
                _ = tokio::time::sleep_until(deadline) => return Ok(view),
            }
        }
    };
    match result.await {
        Ok(view) => Json(view).into_response(),
        Err(failure) => failure.into_response(),
    }
}

/// Whether `view` asks something of its worker that it has not done yet,
/// for a round after `after` (the last round the worker is done with).
fn actionable(view: &crowdtrain_protocol::RoundView, after: Option<u64>) -> bool {
    // The round opened ahead (delayed outer updates): its training is due
    // while the open round reveals.
    if view.ahead.as_deref().is_some_and(|ahead| actionable(ahead, after)) {
        return true;
    }
    if view.audit_task.is_some() {
        // Another worker's segment to replay: whatever this worker is done with.
        return true;
    }
    let Some(assignment) = &view.assignment else { return view.phase == Phase::Finished };
    // A challenge of an update already revealed (two copies no replay had
    // told apart): due whatever the worker is done with.
    if view.phase == Phase::Revealing
        && view.committed
        && view.revealed
        && view.audit.is_some()
        && !view.audit_answered
    {
        return true;
    }
    if after.is_some_and(|after| assignment.round <= after) {
        return false;
    }
    match view.phase {
        // Committed and drawn for audit: the answer is due at once.
        Phase::Committing => !view.committed || (view.audit.is_some() && !view.audit_answered),
        Phase::Revealing => {
            view.committed && (!view.revealed || (view.audit.is_some() && !view.audit_answered))
        }
        Phase::Waiting | Phase::Finished => true,
    }
}

/// Whether round `round`, which the worker committed to, asks for its
/// reveal or an audit answer now, or is over (another round, or none, is
/// the open round since): not while it is committing with nothing due.
/// A round opened ahead of the open one (`view.ahead`) runs its own phases:
/// its reveal is due as soon as its commit phase is over.
fn reveal_due(view: &crowdtrain_protocol::RoundView, round: u64) -> bool {
    if view.phase == Phase::Finished {
        return true;
    }
    let chain = std::iter::successors(Some(view), |view| view.ahead.as_deref());
    let live =
        chain.take(1 + crowdtrain_protocol::MAX_OUTER_DELAY as usize).find(|live| live.round == Some(round));
    match (live, view.round) {
        (Some(live), _) => live.phase != Phase::Committing || (live.audit.is_some() && !live.audit_answered),
        (None, Some(open)) => open > round,
        (None, None) => true,
    }
}

async fn model(State(node): State<Arc<Node>>, Path(digest): Path<String>, headers: HeaderMap) -> Response {
    let result = async {
        let digest: Digest = digest.parse().map_err(|reason: String| {
            Failure::new(ErrorCode::BadRequest, format!("model {digest}: {reason}"))
        })?;
        let bytes = {
            let node = Arc::clone(&node);
            blocking(move || node.model_bytes(&digest)).await?
        };
        let total = bytes.len() as u64;
        let start = match headers.get(header::RANGE) {
            Some(range) => parse_range_start(range, total)?,
            None => 0,
        };
        node.count_download(total - start, Some(&digest));
        // Served from the shared buffer, not copied per download.
        let body = axum::body::Bytes::from_owner(ArcBytes(bytes)).slice(start as usize..);
        let mut response = Body::from(body).into_response();
        let response_headers = response.headers_mut();
        response_headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
        response_headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
        if start > 0 {
            *response.status_mut() = StatusCode::PARTIAL_CONTENT;
            let range = format!("bytes {start}-{}/{total}", total - 1);
            response
                .headers_mut()
                .insert(header::CONTENT_RANGE, HeaderValue::from_str(&range).expect("ascii"));
        }
        Ok(response)
    };
    result.await.unwrap_or_else(Failure::into_response)
}

async fn model_delta(State(node): State<Arc<Node>>, Path(digest): Path<String>) -> Response {
    let result = (|| {
        let digest: Digest = digest.parse().map_err(|reason: String| {
            Failure::new(ErrorCode::BadRequest, format!("model {digest}: {reason}"))
        })?;
        let bytes = node.model_delta(&digest)?;
        node.count_download(bytes.len() as u64, Some(&digest));
        let mut response = Body::from(axum::body::Bytes::from_owner(ArcBytes(bytes))).into_response();
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
        Ok::<_, Failure>(response)
    })();
    result.unwrap_or_else(Failure::into_response)
}

/// The start of a `Range: bytes=N-` (or `bytes=N-M`, served to the end):
/// what a resuming download sends.
fn parse_range_start(range: &HeaderValue, total: u64) -> Result<u64, Failure> {
    let bad =
        || Failure::new(ErrorCode::BadRequest, "Range must be bytes=<start>- with start inside the file");
    let text = range.to_str().map_err(|_| bad())?;
    let spec = text.strip_prefix("bytes=").ok_or_else(bad)?;
    let start: u64 = spec.split('-').next().ok_or_else(bad)?.trim().parse().map_err(|_| bad())?;
    if start >= total { Err(bad()) } else { Ok(start) }
}

/// A published model's shared bytes, as the owner of a response body.
struct ArcBytes(Arc<Vec<u8>>);

impl AsRef<[u8]> for ArcBytes {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

/// An authenticated upload over the limit is read (and dropped) up to this
/// many times the limit before it is refused, so that its sender gets the
/// 413 and its reason rather than a broken pipe. Unauthenticated bodies
/// are never read.
const DRAIN_FACTOR: u64 = 4;

/// Reads and drops an authenticated body (at most `DRAIN_FACTOR` times
/// `limit`, within `timeout`) so that a refusal reaches its sender.
async fn drain(body: Body, limit: u64, timeout: Duration) {
    use http_body_util::BodyExt;
    let mut body = body;
    let mut total = 0u64;
    let _ = tokio::time::timeout(timeout, async {
        while let Some(Ok(frame)) = body.frame().await {
            total += frame.data_ref().map_or(0, |data| data.len() as u64);
            if total > limit.saturating_mul(DRAIN_FACTOR) {
                return;
            }
        }
    })
    .await;
}

#[derive(Debug, Deserialize)]
struct ModelQuery {
    base_model: Option<String>,
    /// With a commitment: the shard the worker trained (its slot of how
    /// many), so that one trained on a provisional round that was
    /// withdrawn and opened again with other participants, on the same
    /// model, is not taken for the new assignment.
    slot: Option<u32>,
    slots: Option<u32>,
    /// A reveal's update in the run's bucket, by its digest (see
    /// [`reveal`]).
    object: Option<String>,
    /// With a commitment: the length of the encoded update that follows
    /// its JSON in the body, revealed as soon as the commitment is taken
    /// (see [`commitment`]).
    with_reveal: Option<usize>,
}

/// A signed, state-changing worker request about one round: what the
/// commitment, reveal and audit endpoints share.
struct RoundPost {
    worker: crowdtrain_protocol::WorkerId,
    nonce: u64,
    round: u64,
    base_model: Option<Digest>,
    /// The shard it trained, if it says.
    trained: Option<Shard>,
    /// The `object` query parameter: an update in the bucket.
    object: Option<Digest>,
    /// The `with_reveal` query parameter: the length of the update after
    /// a commitment's JSON.
    with_reveal: Option<usize>,
    body: Vec<u8>,
    /// The sender's upload slot, held until the request is answered.
    _slot: UploadSlot,
}

/// Checks everything every round POST needs, in the order that costs an
/// unauthenticated sender least: the round in the path, the optional base
/// model, the signature over the declared body, a registered key with a
/// fresh nonce (above the last one, if `ordered`: every post but an audit
/// answer, see `Coordinator::authenticate`), the declared size, a free
/// upload slot; only then reads the body (see [`read_body`]). Changes
/// nothing.
#[allow(clippy::too_many_arguments)]
async fn round_post(
    node: &Arc<Node>,
    limits: &Arc<RequestLimits>,
    ordered: bool,
    path: Result<Path<u64>, axum::extract::rejection::PathRejection>,
    query: Result<Query<ModelQuery>, axum::extract::rejection::QueryRejection>,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: Body,
) -> Result<RoundPost, Failure> {
    let Path(round) = path.map_err(|rejection| Failure::new(ErrorCode::BadRequest, rejection.body_text()))?;
    let Query(query) =
        query.map_err(|rejection| Failure::new(ErrorCode::BadRequest, rejection.body_text()))?;
    let base_model = query
        .base_model
        .map(|text| text.parse::<Digest>())
        .transpose()
        .map_err(|reason| Failure::new(ErrorCode::BadRequest, format!("base_model: {reason}")))?;
    let trained = match (query.slot, query.slots) {
        (Some(slot), Some(slots)) if slot < slots => Some(Shard { slot, slots }),
        (None, None) => None,
        _ => {
            return Err(Failure::new(ErrorCode::BadRequest, "slot and slots go together, with slot < slots"));
        }
    };
    let object = query
        .object
        .map(|text| text.parse::<Digest>())
        .transpose()
        .map_err(|reason| Failure::new(ErrorCode::BadRequest, format!("object: {reason}")))?;
    let (auth, declared) = verify_signature(node, limits, method, uri, headers)?;
    let key: PublicKey = auth.worker;
    let worker = {
        let node = Arc::clone(node);
        blocking(move || node.authenticate(&key, auth.nonce, ordered)).await?
    };
    if !ordered {
        // An unordered post (an audit answer) may be a replay of one taken
        // already: refused on its headers, it costs no more than they do.
        let node = Arc::clone(node);
        blocking(move || node.expect_answer(worker, round)).await?;
    }
    net::participant_authenticated();
    let limit = node.config.limits.max_upload_bytes;
    if declared.length > limit {
        drain(body, limit, limits.body_timeout).await;
        return Err(Failure::new(ErrorCode::TooLarge, format!("uploads are at most {limit} bytes")));
    }
    let slot = limits.begin_upload(key)?;
    let body = read_body(body, declared, limits.body_timeout, &limits.spill_dir).await?;
    let with_reveal = query.with_reveal;
    Ok(RoundPost {
        worker,
        nonce: auth.nonce,
        round,
        base_model,
        trained,
        object,
        with_reveal,
        body,
        _slot: slot,
    })
}

fn required_base(post: &RoundPost) -> Result<Digest, Failure> {
    post.base_model
        .ok_or_else(|| Failure::new(ErrorCode::BadRequest, "the base_model query parameter is required"))
}

/// 200 for what counts now, 202 for what is only kept (late).
fn receipt_response(result: Result<Signed<Receipt>, Failure>) -> Response {
    match result {
        Ok(receipt) => (receipt_status_code(&receipt), Json(receipt)).into_response(),
        Err(failure) => failure.into_response(),
    }
}

fn receipt_status_code(receipt: &Signed<Receipt>) -> StatusCode {
    if receipt.body.status == ReceiptStatus::Late { StatusCode::ACCEPTED } else { StatusCode::OK }
}

/// A commitment, and with `?with_reveal=N` its reveal too: the body is then
/// the commitment's JSON followed by the N bytes of the encoded update,
/// taken as a reveal (under the same signature and nonce) once the
/// commitment is accepted, and answered with both receipts
/// ([`CommittedAndRevealed`]). Nothing is recorded unless the commitment
/// parses; a reveal that does not match it is recorded and slashed, as
/// one sent alone.
#[allow(clippy::too_many_arguments)] // axum extractors, one per argument
async fn commitment(
    State(node): State<Arc<Node>>,
    State(limits): State<Arc<RequestLimits>>,
    path: Result<Path<u64>, axum::extract::rejection::PathRejection>,
    query: Result<Query<ModelQuery>, axum::extract::rejection::QueryRejection>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let result = async {
        let mut post = round_post(&node, &limits, true, path, query, &method, &uri, &headers, body).await?;
        let base = required_base(&post)?;
        let update = match post.with_reveal {
            None => None,
            Some(_) if node.bucket().is_some() => {
                return Err(Failure::new(
                    ErrorCode::BadRequest,
                    "this run takes updates through its bucket, and reveals them when due: commit alone",
                ));
            }
            Some(length) if length > post.body.len() => {
                return Err(Failure::new(
                    ErrorCode::BadRequest,
                    format!("with_reveal={length}, but the body is {} bytes", post.body.len()),
                ));
            }
            Some(length) => Some(post.body.split_off(post.body.len() - length)),
        };
        let body: CommitBody = serde_json::from_slice(&post.body).map_err(|error| {
            Failure::new(ErrorCode::BadRequest, format!("the commitment does not parse: {error}"))
        })?;
        let RoundPost { worker, nonce, round, trained, _slot, .. } = post;
        let committed = {
            let node = Arc::clone(&node);
            blocking(move || node.commit(worker, nonce, round, base, trained, body)).await?
        };
        let Some(update) = update else { return Ok((committed, None)) };
        let reveal = match committed.body.status {
            ReceiptStatus::Accepted => {
                let revealed = blocking(move || node.reveal(worker, nonce, round, base, update)).await;
                Some(revealed.map_err(|failure| ApiError { error: failure.code, message: failure.message }))
            }
            _ => None,
        };
        drop(_slot);
        Ok((committed, Some(reveal)))
    };
    match result.await {
        Ok((commitment, None)) => receipt_response(Ok(commitment)),
        Ok((commitment, Some(reveal))) => {
            let status = receipt_status_code(&commitment);
            (status, Json(CommittedAndRevealed { commitment, reveal })).into_response()
        }
        Err(failure) => failure.into_response(),
    }
}

#[allow(clippy::too_many_arguments)] // axum extractors, one per argument
async fn reveal(
    State(node): State<Arc<Node>>,
    State(limits): State<Arc<RequestLimits>>,
    path: Result<Path<u64>, axum::extract::rejection::PathRejection>,
    query: Result<Query<ModelQuery>, axum::extract::rejection::QueryRejection>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let result = async {
        let mut post = round_post(&node, &limits, true, path, query, &method, &uri, &headers, body).await?;
        let base = required_base(&post)?;
        let body =
            posted_bytes(&node, &mut post, |worker, digest| BlobKey::Update { worker, digest }).await?;
        let RoundPost { worker, nonce, round, _slot, .. } = post;
        let receipt = blocking(move || node.reveal(worker, nonce, round, base, body)).await;
        drop(_slot);
        receipt
    };
    receipt_response(result.await)
}

/// A reveal's update or an audit answer: its body, or with a bucket the
/// object the signed `object` parameter names under the signer's own prefix
/// (`key` of the signer and the digest), read within the upload limit and
/// only if it hashes to its name (then checked like any inline body: a
/// reveal against the commitment, an answer's proofs against its root). A
/// missing, oversized or altered object is refused (`bad-object`) before
/// anything is recorded.
async fn posted_bytes(
    node: &Node,
    post: &mut RoundPost,
    key: fn(crowdtrain_protocol::WorkerId, Digest) -> BlobKey,
) -> Result<Vec<u8>, Failure> {
    match (node.bucket(), post.object) {
        (None, None) => Ok(std::mem::take(&mut post.body)),
        (None, Some(_)) => {
            Err(Failure::new(ErrorCode::BadRequest, "this run has no bucket: send the bytes as the body"))
        }
        (Some(bucket), None) => Err(Failure::new(
            ErrorCode::BadRequest,
            format!(
                "this run takes updates and audit answers through its bucket, {}: upload the bytes there and \
                 name their digest with ?object=",
                bucket.bucket().url()
            ),
        )),
        (Some(_), Some(_)) if !post.body.is_empty() => {
            Err(Failure::new(ErrorCode::BadRequest, "a post that names an object has no body"))
        }
        (Some(bucket), Some(digest)) => {
            let limit = node.config.limits.max_upload_bytes;
            bucket.get(key(post.worker, digest), limit).await.map_err(|error| match error {
                StorageError::Backend { .. } | StorageError::Config { .. } => {
                    Failure::new(ErrorCode::Unavailable, error.to_string())
                }
                StorageError::Missing { .. }
                | StorageError::TooLarge { .. }
                | StorageError::Mismatch { .. } => Failure::new(ErrorCode::BadObject, error.to_string()),
            })
        }
    }
}

#[allow(clippy::too_many_arguments)] // axum extractors, one per argument
async fn audit_answer(
    State(node): State<Arc<Node>>,
    State(limits): State<Arc<RequestLimits>>,
    path: Result<Path<u64>, axum::extract::rejection::PathRejection>,
    query: Result<Query<ModelQuery>, axum::extract::rejection::QueryRejection>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let result = async {
        // Not ordered: sent beside the worker's other posts (Coordinator::authenticate).
        let mut post = round_post(&node, &limits, false, path, query, &method, &uri, &headers, body).await?;
        let body =
            posted_bytes(&node, &mut post, |worker, digest| BlobKey::Answer { worker, digest }).await?;
        let RoundPost { worker, nonce, round, _slot, .. } = post;
        let receipt = blocking(move || node.answer_audit(worker, nonce, round, body)).await;
        drop(_slot);
        receipt
    };
    receipt_response(result.await)
}

/// `GET /v1/rounds/{round}/audit-tasks/{audited}`: the segment a delegated
/// auditor must replay (postcard, signed by the coordinator).
async fn audit_task(
    State(node): State<Arc<Node>>,
    State(limits): State<Arc<RequestLimits>>,
    path: Result<Path<(u64, u64)>, axum::extract::rejection::PathRejection>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let result = async {
        let Path((round, audited)) =
            path.map_err(|rejection| Failure::new(ErrorCode::BadRequest, rejection.body_text()))?;
        let worker = signed_read(&node, &limits, &method, &uri, &headers).await?;
        blocking(move || node.audit_task(worker, round, crowdtrain_protocol::WorkerId(audited))).await
    };
    match result.await {
        Ok(bytes) => ([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response(),
        Err(failure) => failure.into_response(),
    }
}

/// `GET /v1/rewards/{worker}`: a participant's model reward (safetensors),
/// signed by that participant's key, named by the
/// [`REWARD_MODEL_HEADER`] hash its ledger entry records.
async fn reward_model(
    State(node): State<Arc<Node>>,
    State(limits): State<Arc<RequestLimits>>,
    path: Result<Path<u64>, axum::extract::rejection::PathRejection>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let result = async {
        let Path(worker) =
            path.map_err(|rejection| Failure::new(ErrorCode::BadRequest, rejection.body_text()))?;
        let requester = signed_read(&node, &limits, &method, &uri, &headers).await?;
        let node = Arc::clone(&node);
        blocking(move || node.reward_model_bytes(requester, crowdtrain_protocol::WorkerId(worker))).await
    };
    match result.await {
        Ok((digest, bytes)) => {
            node.count_download(bytes.len() as u64, None);
            (
                [
                    (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
                    (HeaderName::from_static(REWARD_MODEL_HEADER), digest.to_hex()),
                ],
                bytes,
            )
                .into_response()
        }
        Err(failure) => failure.into_response(),
    }
}

/// `POST /v1/rounds/{round}/audit-tasks/{audited}`: a delegated auditor's
/// report (postcard).
#[allow(clippy::too_many_arguments)] // axum extractors, one per argument
async fn audit_report(
    State(node): State<Arc<Node>>,
    State(limits): State<Arc<RequestLimits>>,
    path: Result<Path<(u64, u64)>, axum::extract::rejection::PathRejection>,
    query: Result<Query<ModelQuery>, axum::extract::rejection::QueryRejection>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let result = async {
        let (round, audited) = match path {
            Ok(Path(pair)) => pair,
            Err(rejection) => return Err(Failure::new(ErrorCode::BadRequest, rejection.body_text())),
        };
        let post =
            round_post(&node, &limits, true, Ok(Path(round)), query, &method, &uri, &headers, body).await?;
        let RoundPost { worker, nonce, round, body, _slot, .. } = post;
        let receipt = blocking(move || {
            node.audit_report(worker, nonce, round, crowdtrain_protocol::WorkerId(audited), &body)
        })
        .await;
        drop(_slot);
        receipt
    };
    receipt_response(result.await)
}

#[derive(Debug, Deserialize)]
struct StatusQuery {
    rounds_from: Option<u64>,
    rounds_limit: Option<u64>,
}

async fn status(
    State(node): State<Arc<Node>>,
    query: Result<Query<StatusQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(query)) = query else {
        return Failure::new(ErrorCode::BadRequest, "rounds_from and rounds_limit are round counts")
            .into_response();
    };
    let limit = query.rounds_limit.unwrap_or(STATUS_ROUNDS_DEFAULT).min(STATUS_ROUNDS_MAX);
    match blocking(move || node.status(query.rounds_from, limit)).await {
        Ok(status) => Json(status).into_response(),
        Err(failure) => failure.into_response(),
    }
}

/// One of the dashboard's embedded files. The page shows what workers
/// declared (their class, reasons): its script writes text, never HTML,
/// and the policy allows no script but its own.
fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; \
                 frame-ancestors 'none'",
            ),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}

#[derive(Debug, Deserialize)]
struct LedgerQuery {
    kinds: Option<String>,
    before: Option<u64>,
    from: Option<u64>,
    limit: Option<u64>,
}

/// `GET /v1/ledger`: a bounded page, read through the ledger's index by
/// kind (what the dashboard's feed of audits and slashes shows).
async fn ledger(
    State(node): State<Arc<Node>>,
    query: Result<Query<LedgerQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let result = async {
        let Query(query) = query.map_err(|_| {
            Failure::new(ErrorCode::BadRequest, "before, from and limit are entry counts; kinds is a list")
        })?;
        // Each kind once: a kind named twice would list its entries twice.
        let kinds: std::collections::BTreeSet<String> = query
            .kinds
            .iter()
            .flat_map(|kinds| kinds.split(','))
            .filter(|kind| !kind.is_empty())
            .map(str::to_owned)
            .collect();
        if kinds.len() > LEDGER_KINDS_MAX {
            return Err(Failure::new(ErrorCode::BadRequest, format!("at most {LEDGER_KINDS_MAX} kinds")));
        }
        let order = match (query.before, query.from) {
            (Some(_), Some(_)) => {
                return Err(Failure::new(ErrorCode::BadRequest, "before or from, not both"));
            }
            (before, None) => crowdtrain_store::LedgerOrder::Newest { before },
            (None, Some(from)) => crowdtrain_store::LedgerOrder::Oldest { from },
        };
        let limit = query.limit.unwrap_or(LEDGER_PAGE_DEFAULT).min(LEDGER_PAGE_MAX);
        blocking(move || {
            let kinds: Vec<&str> = kinds.iter().map(String::as_str).collect();
            node.ledger_page(&kinds, order, limit)
        })
        .await
    };
    match result.await {
        Ok(page) => Json(page).into_response(),
        Err(failure) => failure.into_response(),
    }
}

async fn ledger_entry(
    State(node): State<Arc<Node>>,
    path: Result<Path<u64>, axum::extract::rejection::PathRejection>,
) -> Response {
    let Ok(Path(index)) = path else {
        return Failure::new(ErrorCode::BadRequest, "a ledger entry is named by its index").into_response();
    };
    match blocking(move || node.ledger_entry(index)).await {
        Ok(entry) => Json(entry).into_response(),
        Err(failure) => failure.into_response(),
    }
}

/// `GET /v1/workers/{id}?rounds_from=R&rounds_limit=N`: one worker's
/// totals and its rounds (what its own round summaries read): a few
/// indexed rows, whatever the number of workers.
async fn worker_view(
    State(node): State<Arc<Node>>,
    path: Result<Path<u64>, axum::extract::rejection::PathRejection>,
    query: Result<Query<StatusQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let (Ok(Path(worker)), Ok(Query(query))) = (path, query) else {
        return Failure::new(
            ErrorCode::BadRequest,
            "a worker is named by its number; rounds_from and rounds_limit are round counts",
        )
        .into_response();
    };
    let limit = query.rounds_limit.unwrap_or(WORKER_ROUNDS_DEFAULT).min(WORKER_ROUNDS_MAX);
    match blocking(move || node.worker_view(crowdtrain_protocol::WorkerId(worker), query.rounds_from, limit))
        .await
    {
        Ok(view) => Json(view).into_response(),
        Err(failure) => failure.into_response(),
    }
}

async fn metrics(State(node): State<Arc<Node>>) -> Response {
    match blocking(move || Ok(node.metrics_text())).await {
        Ok(text) => {
            ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], text)
                .into_response()
        }
        Err(failure) => failure.into_response(),
    }
}
