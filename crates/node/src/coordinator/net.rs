//! Connection discipline: what anyone who can reach the coordinator's port
//! can make it hold, before any request is authenticated.
//!
//! `axum::serve` accepts every connection and keeps it as long as the
//! client likes, so idle or slow (slowloris) connections pile up until the
//! process runs out of file descriptors, and then the coordinator cannot
//! open its own files. This module owns the accept loop instead, and
//! serves each connection with hyper's HTTP/1 server:
//!
//! - **Caps.** At most `max_connections` in all and
//!   `max_connections_per_address` from one IPv4 address or IPv6 /64. At the
//!   total cap a new connection closes the one idle longest (no request in
//!   progress), so idle connections cannot keep the workers out; with none
//!   idle the new one is closed. The total cap is also held below the
//!   process's file descriptor limit (raised to its hard limit at start)
//!   less [`FD_RESERVE`], which no network load can take: SQLite, the
//!   checkpoints, audit answers and uploads in progress always get theirs.
//! - **Timeouts.** hyper's header read timeout (`header_timeout_ms`) bounds
//!   the time to send a request's headers and the idle time between
//!   requests; [`WriteDeadline`] closes a connection whose client stops
//!   reading a response (hyper has no write timeout); bodies are bounded
//!   where they are read (`http::read_body`).
//!
//! The caps are kept by hand (tower's concurrency limit counts requests,
//! not connections, and nothing in tower or hyper keys on the peer's
//! address); everything inside a connection is hyper's and tower's.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};
use tower::ServiceExt;

/// File descriptors kept from the network for the coordinator's own files:
/// three SQLite connections with their WAL and shared-memory files, the
/// checkpoint and answer files being read or written, the temporary files
/// of uploads in progress (at most `server.uploads_in_flight`), threads'
/// and libraries' own, with room to spare.
pub const FD_RESERVE: u64 = 256;

/// The longest a client may leave a response unread before its connection
/// is closed.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// A long poll still open at shutdown gets this long to finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// The connection limits in force.
#[derive(Debug, Clone)]
pub struct ConnectionLimits {
    pub max_connections: usize,
    pub max_per_address: usize,
    pub header_timeout: Duration,
    pub write_timeout: Duration,
}

impl ConnectionLimits {
    /// The configured limits, with the total held below the file
    /// descriptors this process may open (`descriptors`) less the reserve
    /// and the uploads in flight, which hold a temporary file each.
    pub fn new(server: &crowdtrain_protocol::config::ServerSection, descriptors: u64) -> Self {
        let room = descriptors.saturating_sub(FD_RESERVE + u64::from(server.uploads_in_flight)).max(16);
        let max_connections = (server.max_connections as u64).min(room) as usize;
        Self {
            max_connections,
            max_per_address: (server.max_connections_per_address as usize).min(max_connections),
            header_timeout: Duration::from_millis(server.header_timeout_ms),
            write_timeout: WRITE_TIMEOUT,
        }
    }
}

/// Raises this process's soft limit on open files to its hard limit;
/// returns the limit now in force.
pub fn raise_descriptor_limit() -> io::Result<u64> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit and setrlimit read and write the struct we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return Err(io::Error::last_os_error());
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit { rlim_cur: limit.rlim_max, rlim_max: limit.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit = raised;
            }
        }
    }
    Ok(limit.rlim_cur)
}

/// Where connections are counted: an IPv4 address, or an IPv6 /64 (what
/// one host usually gets).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AddressKey {
    V4(u32),
    V6(u64),
}

impl AddressKey {
    pub fn of(address: IpAddr) -> Self {
        match address.to_canonical() {
            IpAddr::V4(v4) => Self::V4(u32::from(v4)),
            IpAddr::V6(v6) => Self::V6((u128::from(v6) >> 64) as u64),
        }
    }
}

/// One connection as the tracker sees it.
struct Tracked {
    address: AddressKey,
    /// Requests in progress on it.
    busy: Arc<AtomicU64>,
    /// When its last request ended (or it was accepted), in ms since the
    /// tracker started.
    idle_since: Arc<AtomicU64>,
    evict: Arc<Notify>,
}

/// Open connections, by id, and per address.
#[derive(Default)]
struct Tracker {
    connections: HashMap<u64, Tracked>,
    per_address: HashMap<AddressKey, usize>,
    next_id: u64,
}

/// What the tracker decided about a new connection.
enum Admit {
    Accept { id: u64, busy: Arc<AtomicU64>, idle_since: Arc<AtomicU64>, evict: Arc<Notify> },
    Refuse,
}

impl Tracker {
    fn admit(&mut self, address: AddressKey, limits: &ConnectionLimits, now_ms: u64) -> Admit {
        if self.per_address.get(&address).copied().unwrap_or(0) >= limits.max_per_address {
            return Admit::Refuse;
        }
        if self.connections.len() >= limits.max_connections {
            // Make room by closing the connection idle longest.
            let idle = self
                .connections
                .iter()
                .filter(|(_, tracked)| tracked.busy.load(Ordering::Relaxed) == 0)
                .min_by_key(|(_, tracked)| tracked.idle_since.load(Ordering::Relaxed));
            match idle {
                Some((&id, _)) => {
                    let evicted = self.remove(id).expect("listed");
                    evicted.evict.notify_one();
                }
                None => return Admit::Refuse,
            }
        }
        let id = self.next_id;
        self.next_id += 1;
        let tracked = Tracked {
            address,
            busy: Arc::new(AtomicU64::new(0)),
            idle_since: Arc::new(AtomicU64::new(now_ms)),
            evict: Arc::new(Notify::new()),
        };
        let admitted = Admit::Accept {
            id,
            busy: Arc::clone(&tracked.busy),
            idle_since: Arc::clone(&tracked.idle_since),
            evict: Arc::clone(&tracked.evict),
        };
        *self.per_address.entry(address).or_default() += 1;
        self.connections.insert(id, tracked);
        admitted
    }

    /// Forgets connection `id` (closed, or evicted); idempotent.
    fn remove(&mut self, id: u64) -> Option<Tracked> {
        let tracked = self.connections.remove(&id)?;
        if let Some(count) = self.per_address.get_mut(&tracked.address) {
            *count -= 1;
            if *count == 0 {
                self.per_address.remove(&tracked.address);
            }
        }
        Some(tracked)
    }
}

/// Counters for the status page and the benchmarks.
#[derive(Debug, Default)]
pub struct ConnectionStats {
    pub open: AtomicU64,
    pub accepted: AtomicU64,
    /// Refused at accept: over the per-address cap, or the total cap with
    /// nothing idle to close.
    pub refused: AtomicU64,
    /// Idle connections closed to make room.
    pub evicted: AtomicU64,
}

/// Serves `app` on `listener` under `limits` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ConnectionLimits,
    stats: Arc<ConnectionStats>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let tracker = Arc::new(Mutex::new(Tracker::default()));
    let started = Instant::now();
    let (stop, stopping) = watch::channel(false);
    let mut shutdown = std::pin::pin!(shutdown);
    // The connection tasks, so that shutdown can wait for them (briefly).
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of descriptors (which the caps should prevent),
                    // or a connection reset before it was accepted: wait a
                    // little rather than spin.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        stats.accepted.fetch_add(1, Ordering::Relaxed);
        let now_ms = started.elapsed().as_millis() as u64;
        let admit = tracker.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).admit(
            AddressKey::of(peer.ip()),
            &limits,
            now_ms,
        );
        let Admit::Accept { id, busy, idle_since, evict } = admit else {
            stats.refused.fetch_add(1, Ordering::Relaxed);
            drop(stream);
            continue;
        };
        stats.open.fetch_add(1, Ordering::Relaxed);
        let _ = stream.set_nodelay(true);
        let connection = Connection {
            stream,
            peer,
            app: app.clone(),
            limits: limits.clone(),
            busy,
            idle_since,
            evict,
            started,
            stopping: stopping.clone(),
        };
        let (tracker, stats) = (Arc::clone(&tracker), Arc::clone(&stats));
        while tasks.try_join_next().is_some() {}
        tasks.spawn(async move {
            let evicted = connection.run().await;
            tracker.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).remove(id);
            stats.open.fetch_sub(1, Ordering::Relaxed);
            if evicted {
                stats.evicted.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    let _ = stop.send(true);
    let _ =
        tokio::time::timeout(SHUTDOWN_GRACE * 2, async { while tasks.join_next().await.is_some() {} }).await;
    tasks.abort_all();
    Ok(())
}

/// One accepted connection.
struct Connection {
    stream: TcpStream,
    peer: SocketAddr,
    app: Router,
    limits: ConnectionLimits,
    busy: Arc<AtomicU64>,
    idle_since: Arc<AtomicU64>,
    evict: Arc<Notify>,
    started: Instant,
    stopping: watch::Receiver<bool>,
}

impl Connection {
    /// Serves the connection until it closes; returns whether it was
    /// closed to make room for another.
    async fn run(self) -> bool {
        let Self { stream, peer, app, limits, busy, idle_since, evict, started, mut stopping } = self;
        let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
            let mut request = request.map(axum::body::Body::new);
            request.extensions_mut().insert(ConnectInfo(peer));
            let guard = Busy::start(Arc::clone(&busy), Arc::clone(&idle_since), started);
            let response = app.clone().oneshot(request);
            async move {
                let response = response.await;
                drop(guard);
                response
            }
        });
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_timeout)
            .max_buf_size(16 * 1024)
            .keep_alive(true);
        let io = TokioIo::new(WriteDeadline::new(stream, limits.write_timeout));
        let connection = builder.serve_connection(io, service);
        let mut connection = std::pin::pin!(connection);
        let evicted = tokio::select! {
            result = connection.as_mut() => {
                if let Err(error) = result {
                    tracing::debug!(%peer, %error, "connection ended");
                }
                return false;
            }
            () = evict.notified() => true,
            _ = stopping.wait_for(|stop| *stop) => false,
        };
        // Finish a request in progress (none, when evicted), then close.
        connection.as_mut().graceful_shutdown();
        let _ = tokio::time::timeout(SHUTDOWN_GRACE, connection).await;
        evicted
    }
}

/// Marks a connection busy while one of its requests is in progress.
struct Busy {
    busy: Arc<AtomicU64>,
    idle_since: Arc<AtomicU64>,
    started: Instant,
}

impl Busy {
    fn start(busy: Arc<AtomicU64>, idle_since: Arc<AtomicU64>, started: Instant) -> Self {
        busy.fetch_add(1, Ordering::Relaxed);
        Self { busy, idle_since, started }
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.idle_since.store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
        self.busy.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A stream whose writes fail once one has waited `timeout` for the peer
/// to read: a client that stops reading a response cannot hold the
/// connection (and the response's buffers) for ever.
struct WriteDeadline<S> {
    inner: S,
    timeout: Duration,
    /// Armed while a write waits.
    sleep: Pin<Box<tokio::time::Sleep>>,
    armed: bool,
}

impl<S> WriteDeadline<S> {
    fn new(inner: S, timeout: Duration) -> Self {
        Self { inner, timeout, sleep: Box::pin(tokio::time::sleep(timeout)), armed: false }
    }

    /// Turns a pending write into a timeout error once it waited too long.
    fn pending<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        if !self.armed {
            self.armed = true;
            let deadline = tokio::time::Instant::now() + self.timeout;
            self.sleep.as_mut().reset(deadline);
        }
        ready!(self.sleep.as_mut().poll(cx));
        Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "the client stopped reading")))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for WriteDeadline<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for WriteDeadline<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_write(cx, buf) {
            Poll::Pending => this.pending(cx),
            ready => {
                this.armed = false;
                ready
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_flush(cx) {
            Poll::Pending => this.pending(cx),
            ready => {
                this.armed = false;
                ready
            }
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_write_vectored(cx, bufs) {
            Poll::Pending => this.pending(cx),
            ready => {
                this.armed = false;
                ready
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
