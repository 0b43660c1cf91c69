//! The coordinator's HTTP API (axum), a thin layer over [`Node`].
//!
//! | method and path | auth | answer |
//! |---|---|---|
//! | `GET /v1/run` | none | `Signed<RunInfo>` |
//! | `POST /v1/workers` | signed | `Signed<Registration>` (idempotent per key) |
//! | `GET /v1/round?after=R&wait_ms=W` | signed | `Signed<RoundView>`; long-polls up to W ms while it asks nothing of this worker for a round after R |
//! | `GET /v1/models/{digest}` | none | the safetensors checkpoint; honours `Range: bytes=N-` so downloads resume |
//! | `POST /v1/rounds/{round}/commitments?base_model=D` | signed | body: a JSON `Commitment`; `Signed<Receipt>` (200, or 202 if late); 409 `too-early` while the round is open provisionally (send it again shortly) |
//! | `POST /v1/rounds/{round}/reveals?base_model=D` | signed | body: the encoded pseudo-gradient; `Signed<Receipt>` (200, or 202 if late); 409 `reveal-mismatch` if it is not what was committed (recorded and slashed) |
//! | `POST /v1/rounds/{round}/audits` | signed | body: a postcard `AuditAnswer`; `Signed<Receipt>`: `replaying` (the verdict follows in the ledger), `delegated`, or `failed` (proofs that do not hold) |
//! | `GET /v1/status` | none | `RunStatus` JSON |
//!
//! Every refusal is a 4xx with an [`ApiError`] JSON body naming the
//! problem; nothing refused changes any state. Work that touches the state
//! runs on the blocking pool, so the async threads never wait on SQLite or
//! aggregation.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use crowdtrain_protocol::wire::{AUTH_HEADER, ApiError, ErrorCode, LONG_POLL_MS_MAX, RUN_HEADER};
use crowdtrain_protocol::wire::{Receipt, ReceiptStatus};
use crowdtrain_protocol::{Commitment, Digest, RequestAuth, Signed};
use serde::Deserialize;

use super::{Failure, Node, now_unix_ms};
use crate::NodeError;

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, Json(ApiError { error: self.code, message: self.message })).into_response()
    }
}

/// Serves the API on `listener` until `shutdown` resolves, with the timer
/// that enforces round deadlines. Returns an error if the node hit a state
/// it cannot safely continue from (a failed write): the process should
/// exit, and a restart resumes from the durable state.
pub async fn serve(
    node: Arc<Node>,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), NodeError> {
    let app = Router::new()
        .route("/v1/run", get(run_info))
        .route("/v1/workers", post(register))
        .route("/v1/round", get(round))
        .route("/v1/models/{digest}", get(model))
        .route("/v1/rounds/{round}/commitments", post(commitment))
        .route("/v1/rounds/{round}/reveals", post(reveal))
        .route("/v1/rounds/{round}/audits", post(audit_answer))
        .route("/v1/rounds/{round}/audit-tasks/{audited}", get(audit_task).post(audit_report))
        .route("/v1/status", get(status))
        .fallback(|| async { Failure::new(ErrorCode::NotFound, "no such endpoint") })
        .with_state(Arc::clone(&node));
    let server = axum::serve(listener, app).with_graceful_shutdown(shutdown);
    let mut fatal = node.fatal.subscribe();
    tokio::select! {
        served = server => served.map_err(|error| NodeError::io("the HTTP server failed", error)),
        failed = timer(Arc::clone(&node)) => failed,
        _ = fatal.wait_for(Option::is_some) => Err(NodeError::Halted(node.fatal.borrow().clone().unwrap_or_default())),
    }
}

/// Calls `tick` at every deadline the machine sets; returns only on a
/// failure the node cannot continue from.
async fn timer(node: Arc<Node>) -> Result<(), NodeError> {
    let mut changes = node.changes.subscribe();
    loop {
        let next = node.lock().machine.poll_timeout();
        match next {
            Some(deadline) => {
                let wait = Duration::from_millis(deadline.saturating_sub(now_unix_ms()));
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

/// Checks the run header and the request signature; returns the signer
/// and the nonce. Says precisely what is wrong.
fn verify_signature(
    node: &Node,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<RequestAuth, Failure> {
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
    let path = uri.path_and_query().map_or(uri.path(), |path| path.as_str());
    auth.verify(&node.run_id(), method.as_str(), path, body).map_err(|_| {
        Failure::new(
            ErrorCode::BadSignature,
            format!("the signature does not verify for key {} over {method} {path}", auth.worker),
        )
    })?;
    Ok(auth)
}

/// Checks a signed request that reads (no body, any rising nonce) and
/// marks its worker as seen; returns the worker.
async fn signed_read(
    node: &Arc<Node>,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
) -> Result<crowdtrain_protocol::WorkerId, Failure> {
    let auth = verify_signature(node, method, uri, headers, b"")?;
    let node = Arc::clone(node);
    blocking(move || node.authenticate(&auth.worker, auth.nonce, false)).await
}

async fn run_info(State(node): State<Arc<Node>>) -> Response {
    Json(node.run_info().clone()).into_response()
}

#[derive(Debug, Deserialize)]
struct RegisterQuery {
    /// The worker's determinism class (the kernels its CPU runs).
    class: Option<String>,
}

async fn register(
    State(node): State<Arc<Node>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    query: Result<Query<RegisterQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let result = async {
        let Query(query) =
            query.map_err(|rejection| Failure::new(ErrorCode::BadRequest, rejection.body_text()))?;
        let class = query.class.ok_or_else(|| {
            Failure::new(
                ErrorCode::BadRequest,
                "registration needs the worker's determinism class (?class=...)",
            )
        })?;
        let auth = verify_signature(&node, &method, &uri, &headers, b"")?;
        let nonce_ms = auth.nonce / 1000;
        if nonce_ms.abs_diff(now_unix_ms()) > crowdtrain_protocol::coordinator::NONCE_WINDOW_MS {
            return Err(Failure::new(
                ErrorCode::Replayed,
                "the registration's nonce is too far from the coordinator's clock",
            ));
        }
        blocking(move || node.register(auth.worker, &class)).await
    };
    match result.await {
        Ok(registration) => Json(registration).into_response(),
        Err(failure) => failure.into_response(),
    }
}

#[derive(Debug, Deserialize)]
struct RoundQuery {
    after: Option<u64>,
    wait_ms: Option<u64>,
}

async fn round(
    State(node): State<Arc<Node>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    query: Result<Query<RoundQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let result = async {
        let Query(query) =
            query.map_err(|rejection| Failure::new(ErrorCode::BadRequest, rejection.body_text()))?;
        let worker = signed_read(&node, &method, &uri, &headers).await?;
        let mut changes = node.changes.subscribe();
        let deadline = tokio::time::Instant::now()
            + Duration::from_millis(query.wait_ms.unwrap_or(0).min(LONG_POLL_MS_MAX));
        loop {
            let view = {
                let node = Arc::clone(&node);
                blocking(move || Ok(node.view(Some(worker)))).await?
            };
            let news = actionable(&view.body, query.after);
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
    use crowdtrain_protocol::wire::Phase;
    if view.audit_task.is_some() {
        // Another worker's segment to replay: whatever this worker is done with.
        return true;
    }
    let Some(assignment) = &view.assignment else { return view.phase == Phase::Finished };
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
        node.count_download(total - start);
        let mut response = Body::from(bytes[start as usize..].to_vec()).into_response();
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

/// Bodies up to this many times the upload limit are read to the end
/// before being refused, so that the client gets the 413 and its reason
/// rather than a broken pipe.
const DRAIN_FACTOR: u64 = 4;

/// Reads a body of at most `limit` bytes. A longer body is drained (up to
/// `DRAIN_FACTOR` times the limit) and `None` is returned.
async fn read_body(body: Body, limit: u64) -> Result<Option<Vec<u8>>, Failure> {
    use http_body_util::BodyExt;
    let mut body = body;
    let mut kept = Vec::new();
    let mut total = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame
            .map_err(|error| Failure::new(ErrorCode::BadRequest, format!("reading the body: {error}")))?;
        let Ok(data) = frame.into_data() else { continue };
        total += data.len() as u64;
        if total > limit.saturating_mul(DRAIN_FACTOR) {
            return Ok(None);
        }
        if total <= limit {
            kept.extend_from_slice(&data);
        }
    }
    Ok((total <= limit).then_some(kept))
}

#[derive(Debug, Deserialize)]
struct ModelQuery {
    base_model: Option<String>,
}

/// A signed, state-changing worker request about one round: what the
/// commitment, reveal and audit endpoints share.
struct RoundPost {
    worker: crowdtrain_protocol::WorkerId,
    nonce: u64,
    round: u64,
    base_model: Option<Digest>,
    body: Vec<u8>,
}

/// Reads and checks everything every round POST needs: the round in the
/// path, the optional base model, a size-capped body, the signature and a
/// fresh nonce. Changes nothing.
async fn round_post(
    node: &Arc<Node>,
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
    let limit = node.config.limits.max_upload_bytes;
    let too_large = || Failure::new(ErrorCode::TooLarge, format!("uploads are at most {limit} bytes"));
    let declared =
        headers.get(header::CONTENT_LENGTH).and_then(|value| value.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|length| length > limit.saturating_mul(DRAIN_FACTOR)) {
        // Far too large to be worth reading: refuse at once (the client
        // may see the connection close before it finishes sending).
        return Err(too_large());
    }
    let body = read_body(body, limit).await?.ok_or_else(too_large)?;
    let auth = verify_signature(node, method, uri, headers, &body)?;
    let base_model = query
        .base_model
        .map(|text| text.parse::<Digest>())
        .transpose()
        .map_err(|reason| Failure::new(ErrorCode::BadRequest, format!("base_model: {reason}")))?;
    let worker = {
        let node = Arc::clone(node);
        blocking(move || node.authenticate(&auth.worker, auth.nonce, true)).await?
    };
    Ok(RoundPost { worker, nonce: auth.nonce, round, base_model, body })
}

fn required_base(post: &RoundPost) -> Result<Digest, Failure> {
    post.base_model
        .ok_or_else(|| Failure::new(ErrorCode::BadRequest, "the base_model query parameter is required"))
}

/// 200 for what counts now, 202 for what is only kept (late).
fn receipt_response(result: Result<Signed<Receipt>, Failure>) -> Response {
    match result {
        Ok(receipt) => {
            let status = if receipt.body.status == ReceiptStatus::Late {
                StatusCode::ACCEPTED
            } else {
                StatusCode::OK
            };
            (status, Json(receipt)).into_response()
        }
        Err(failure) => failure.into_response(),
    }
}

async fn commitment(
    State(node): State<Arc<Node>>,
    path: Result<Path<u64>, axum::extract::rejection::PathRejection>,
    query: Result<Query<ModelQuery>, axum::extract::rejection::QueryRejection>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let result = async {
        let post = round_post(&node, path, query, &method, &uri, &headers, body).await?;
        let base = required_base(&post)?;
        let commitment: Commitment = serde_json::from_slice(&post.body).map_err(|error| {
            Failure::new(ErrorCode::BadRequest, format!("the commitment does not parse: {error}"))
        })?;
        blocking(move || node.commit(post.worker, post.nonce, post.round, base, commitment)).await
    };
    receipt_response(result.await)
}

async fn reveal(
    State(node): State<Arc<Node>>,
    path: Result<Path<u64>, axum::extract::rejection::PathRejection>,
    query: Result<Query<ModelQuery>, axum::extract::rejection::QueryRejection>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let result = async {
        let post = round_post(&node, path, query, &method, &uri, &headers, body).await?;
        let base = required_base(&post)?;
        blocking(move || node.reveal(post.worker, post.nonce, post.round, base, post.body)).await
    };
    receipt_response(result.await)
}

async fn audit_answer(
    State(node): State<Arc<Node>>,
    path: Result<Path<u64>, axum::extract::rejection::PathRejection>,
    query: Result<Query<ModelQuery>, axum::extract::rejection::QueryRejection>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let result = async {
        let post = round_post(&node, path, query, &method, &uri, &headers, body).await?;
        blocking(move || node.answer_audit(post.worker, post.nonce, post.round, post.body)).await
    };
    receipt_response(result.await)
}

/// `GET /v1/rounds/{round}/audit-tasks/{audited}`: the segment a delegated
/// auditor must replay (postcard, signed by the coordinator).
async fn audit_task(
    State(node): State<Arc<Node>>,
    path: Result<Path<(u64, u64)>, axum::extract::rejection::PathRejection>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let result = async {
        let Path((round, audited)) =
            path.map_err(|rejection| Failure::new(ErrorCode::BadRequest, rejection.body_text()))?;
        let worker = signed_read(&node, &method, &uri, &headers).await?;
        blocking(move || node.audit_task(worker, round, crowdtrain_protocol::WorkerId(audited))).await
    };
    match result.await {
        Ok(bytes) => ([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response(),
        Err(failure) => failure.into_response(),
    }
}

/// `POST /v1/rounds/{round}/audit-tasks/{audited}`: a delegated auditor's
/// report (postcard).
async fn audit_report(
    State(node): State<Arc<Node>>,
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
        let post = round_post(&node, Ok(Path(round)), query, &method, &uri, &headers, body).await?;
        blocking(move || {
            node.audit_report(
                post.worker,
                post.nonce,
                post.round,
                crowdtrain_protocol::WorkerId(audited),
                &post.body,
            )
        })
        .await
    };
    receipt_response(result.await)
}

async fn status(State(node): State<Arc<Node>>) -> Response {
    match blocking(move || node.status()).await {
        Ok(status) => Json(status).into_response(),
        Err(failure) => failure.into_response(),
    }
}
