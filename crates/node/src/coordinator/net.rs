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
//!   `max_connections_per_address` from one IPv4 address or IPv6 /64. The
//!   total cap is also held below the process's file descriptor limit
//!   (raised to its hard limit at start) less [`FD_RESERVE`], which no
//!   network load can take: SQLite, the checkpoints, audit answers and
//!   uploads in progress always get theirs.
//! - **Workers first.** A connection that carried a participant's
//!   authenticated request is never closed to make room, and
//!   `reserved_connections` of the total are only for addresses a
//!   participant authenticated from lately ([`TRUST_TTL`]): an attacker
//!   holding every other slot cannot keep the workers out. At its share's
//!   cap a new connection closes the connection idle longest among the
//!   others (no request in progress; from a stranger, idle at least half
//!   the header timeout, so that strangers cannot churn each other out).
//! - **Cheap refusals.** Over `connections_per_second_per_address` (for
//!   strangers: trusted addresses may hold many workers behind NAT), or
//!   with no slot it may take, a connection is closed as soon as it is
//!   accepted, with a reset (no FIN handshake, no TIME-WAIT), before any
//!   HTTP state exists for it; refusals are counted, never logged one by
//!   one.
//! - **Backpressure.** With no slot a stranger may take, the loop stops
//!   accepting as fast as connections come and leaves them in the kernel's
//!   backlog (whose overflow the kernel drops and clients retry with
//!   backoff): it accepts one every [`SATURATED_PACE`] to find the
//!   trusted, and none at all when even the reserved share is full, until
//!   a connection closes. Attackers who reconnect at once then cost the
//!   coordinator a bounded number of accepts a second, however many they
//!   are.
//! - **Timeouts.** hyper's header read timeout (`header_timeout_ms`) bounds
//!   the time to send a request's headers and the idle time between
//!   requests; [`WriteDeadline`] closes a connection whose client stops
//!   reading a response (hyper has no write timeout); bodies are bounded
//!   where they are read (`http::read_body`).
//!
//! The caps are kept by hand (tower's concurrency limit counts requests,
//! not connections, and nothing in tower or hyper keys on the peer's
//! address); the per-address connection rate is governor's keyed GCRA
//! limiter, as for requests; everything inside a connection is hyper's
//! and tower's.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::ConnectInfo;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
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

/// An address a participant authenticated from is trusted this long after.
pub const TRUST_TTL: Duration = Duration::from_secs(600);

/// Trusted addresses kept at most (each costs a few dozen bytes; only an
/// admitted key's request adds one).
const TRUSTED_MAX: usize = 65_536;

/// With no slot a stranger may take, the accept loop takes one connection
/// from the backlog this often (to admit a trusted address's), at most.
pub const SATURATED_PACE: Duration = Duration::from_millis(2);

/// A long poll still open at shutdown gets this long to finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// How often the accept loop forgets addresses it has not heard from.
const PRUNE_EVERY: Duration = Duration::from_secs(10);

/// The connection limits in force.
#[derive(Debug, Clone)]
pub struct ConnectionLimits {
    pub max_connections: usize,
    pub max_per_address: usize,
    /// Of `max_connections`, the slots only trusted addresses may take.
    pub reserved: usize,
    pub per_second_per_address: u32,
    /// A stranger's idle connection is closed to make room for another
    /// stranger's only once idle this long.
    pub evictable_after: Duration,
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
        let header_timeout = Duration::from_millis(server.header_timeout_ms);
        Self {
            max_connections,
            max_per_address: (server.max_connections_per_address as usize).min(max_connections),
            reserved: (server.reserved_connections as usize).min(max_connections / 2),
            per_second_per_address: server.connections_per_second_per_address,
            evictable_after: header_timeout / 2,
            header_timeout,
            write_timeout: WRITE_TIMEOUT,
        }
    }

    /// The slots strangers (untrusted addresses) may hold.
    fn general(&self) -> usize {
        self.max_connections - self.reserved
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

/// The addresses participants authenticated from lately.
#[derive(Default)]
struct Trusted {
    last_seen: Mutex<HashMap<AddressKey, Instant>>,
}

impl Trusted {
    fn contains(&self, address: AddressKey, now: Instant) -> bool {
        let last_seen = self.last_seen.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        last_seen.get(&address).is_some_and(|seen| now.duration_since(*seen) < TRUST_TTL)
    }

    fn insert(&self, address: AddressKey, now: Instant) {
        let mut last_seen = self.last_seen.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if last_seen.len() >= TRUSTED_MAX && !last_seen.contains_key(&address) {
            last_seen.retain(|_, seen| now.duration_since(*seen) < TRUST_TTL);
            if last_seen.len() >= TRUSTED_MAX {
                let oldest = last_seen.iter().min_by_key(|(_, seen)| **seen).map(|(address, _)| *address);
                last_seen.remove(&oldest.expect("full"));
            }
        }
        last_seen.insert(address, now);
    }

    fn prune(&self, now: Instant) {
        let mut last_seen = self.last_seen.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        last_seen.retain(|_, seen| now.duration_since(*seen) < TRUST_TTL);
        last_seen.shrink_to_fit();
    }
}

/// What a request handler knows of the connection it came on.
#[derive(Clone)]
struct ConnectionTrust {
    address: AddressKey,
    authenticated: Arc<AtomicBool>,
    trusted: Arc<Trusted>,
}

tokio::task_local! {
    /// The connection the request being handled came on (set around each
    /// request by [`Connection::run`]), so that handlers need not thread
    /// it through every signature.
    static CONNECTION: ConnectionTrust;
}

/// Marks the connection of the request being handled, and its address, as
/// a participant's: called once a request's key is known to be a
/// participant's (registered, or admitted now) and its signature checked.
/// Does nothing outside a connection (in tests calling handlers directly).
pub fn participant_authenticated() {
    let _ = CONNECTION.try_with(|connection| {
        connection.authenticated.store(true, Ordering::Relaxed);
        connection.trusted.insert(connection.address, Instant::now());
    });
}

/// One connection as the tracker sees it.
struct Tracked {
    address: AddressKey,
    /// Whether its address was trusted when it was accepted (it counts in
    /// the reserved share, and is never closed to make room).
    trusted: bool,
    /// Whether a participant's request came on it (never closed to make
    /// room either).
    authenticated: Arc<AtomicBool>,
    /// Requests in progress on it.
    busy: Arc<AtomicU64>,
    /// When its last request ended (or it was accepted), in ms since the
    /// tracker started.
    idle_since: Arc<AtomicU64>,
    evict: Arc<Notify>,
}

impl Tracked {
    /// Whether it may be closed to make room: a stranger's, idle, no
    /// participant's request on it.
    fn evictable(&self) -> Option<u64> {
        let closable = !self.trusted
            && !self.authenticated.load(Ordering::Relaxed)
            && self.busy.load(Ordering::Relaxed) == 0;
        closable.then(|| self.idle_since.load(Ordering::Relaxed))
    }
}

/// Open connections, by id, and per address.
#[derive(Default)]
struct Tracker {
    connections: HashMap<u64, Tracked>,
    per_address: HashMap<AddressKey, usize>,
    /// Connections from addresses not trusted when accepted.
    strangers: usize,
    next_id: u64,
}

/// What the tracker decided about a new connection.
enum Admit {
    Accept(Accepted),
    Refuse,
}

struct Accepted {
    id: u64,
    authenticated: Arc<AtomicBool>,
    busy: Arc<AtomicU64>,
    idle_since: Arc<AtomicU64>,
    evict: Arc<Notify>,
}

/// Whom the accept loop can take a connection from now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Room {
    /// Anyone (free slots, or an idle connection to close).
    Anyone,
    /// Only trusted addresses (into the reserved share, or in place of a
    /// stranger's idle connection).
    TrustedOnly,
    /// No one, until a connection closes or goes idle.
    None,
}

impl Tracker {
    /// The stranger's connection idle longest, if any, idle since at most
    /// `idle_before` (ms since the tracker started).
    fn idlest(&self, idle_before: u64) -> Option<u64> {
        self.connections
            .iter()
            .filter_map(|(&id, tracked)| Some((id, tracked.evictable()?)))
            .filter(|(_, idle_since)| *idle_since <= idle_before)
            .min_by_key(|(_, idle_since)| *idle_since)
            .map(|(id, _)| id)
    }

    /// The longest-idle connection that a newcomer (`trusted` or not)
    /// may close to make room, if it needs room and there is one; `Err`
    /// if it needs room and none may be closed.
    fn room_for(&self, trusted: bool, limits: &ConnectionLimits, now_ms: u64) -> Result<Option<u64>, ()> {
        let full = self.connections.len() >= limits.max_connections;
        if trusted {
            if !full {
                return Ok(None);
            }
            return self.idlest(u64::MAX).map(Some).ok_or(());
        }
        if !full && self.strangers < limits.general() {
            return Ok(None);
        }
        let idle_before = now_ms.saturating_sub(limits.evictable_after.as_millis() as u64);
        self.idlest(idle_before).map(Some).ok_or(())
    }

    fn room(&self, limits: &ConnectionLimits, now_ms: u64) -> Room {
        if self.room_for(false, limits, now_ms).is_ok() {
            Room::Anyone
        } else if self.room_for(true, limits, now_ms).is_ok() {
            Room::TrustedOnly
        } else {
            Room::None
        }
    }

    fn admit(&mut self, address: AddressKey, trusted: bool, limits: &ConnectionLimits, now_ms: u64) -> Admit {
        if self.per_address.get(&address).copied().unwrap_or(0) >= limits.max_per_address {
            return Admit::Refuse;
        }
        match self.room_for(trusted, limits, now_ms) {
            Err(()) => return Admit::Refuse,
            Ok(None) => {}
            Ok(Some(idlest)) => {
                let evicted = self.remove(idlest).expect("listed");
                evicted.evict.notify_one();
            }
        }
        let id = self.next_id;
        self.next_id += 1;
        let tracked = Tracked {
            address,
            trusted,
            authenticated: Arc::new(AtomicBool::new(false)),
            busy: Arc::new(AtomicU64::new(0)),
            idle_since: Arc::new(AtomicU64::new(now_ms)),
            evict: Arc::new(Notify::new()),
        };
        let accepted = Accepted {
            id,
            authenticated: Arc::clone(&tracked.authenticated),
            busy: Arc::clone(&tracked.busy),
            idle_since: Arc::clone(&tracked.idle_since),
            evict: Arc::clone(&tracked.evict),
        };
        *self.per_address.entry(address).or_default() += 1;
        self.strangers += usize::from(!trusted);
        self.connections.insert(id, tracked);
        Admit::Accept(accepted)
    }

    /// Forgets connection `id` (closed, or evicted); idempotent.
    fn remove(&mut self, id: u64) -> Option<Tracked> {
        let tracked = self.connections.remove(&id)?;
        self.strangers -= usize::from(!tracked.trusted);
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
    /// Refused at accept: over the per-address cap, or no slot the
    /// connection could take.
    pub refused: AtomicU64,
    /// Refused at accept: its address opened connections too fast.
    pub refused_over_rate: AtomicU64,
    /// Idle connections closed to make room.
    pub evicted: AtomicU64,
}

/// The tracker, locked (its counts stay consistent through a panic
/// elsewhere).
fn lock(tracker: &Mutex<Tracker>) -> std::sync::MutexGuard<'_, Tracker> {
    tracker.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Closes a refused connection at once, with a reset: no FIN handshake and
/// no TIME-WAIT state to keep, and nothing else made for it.
fn refuse(stream: TcpStream) {
    let _ = stream.set_zero_linger();
    drop(stream);
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
    let trusted = Arc::new(Trusted::default());
    let rate = NonZeroU32::new(limits.per_second_per_address).unwrap_or(NonZeroU32::MIN);
    let opened: DefaultKeyedRateLimiter<AddressKey> = RateLimiter::keyed(
        Quota::per_second(rate).allow_burst(rate.saturating_mul(NonZeroU32::new(2).expect("2"))),
    );
    // Wakes the loop when a connection closes or a request ends.
    let freed = Arc::new(Notify::new());
    let started = Instant::now();
    let mut pruned = Instant::now();
    let (stop, stopping) = watch::channel(false);
    let mut shutdown = std::pin::pin!(shutdown);
    // The connection tasks, so that shutdown can wait for them (briefly).
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        if pruned.elapsed() >= PRUNE_EVERY {
            pruned = Instant::now();
            opened.retain_recent();
            opened.shrink_to_fit();
            trusted.prune(pruned);
        }
        // Backpressure: leave connections in the kernel's backlog while
        // there is no slot a stranger may take.
        let room = lock(&tracker).room(&limits, started.elapsed().as_millis() as u64);
        let pause = match room {
            Room::Anyone => None,
            Room::TrustedOnly => Some(SATURATED_PACE),
            // A connection closing or going idle wakes the loop; the
            // timeout notices idle connections that aged into closable.
            Room::None => Some(Duration::from_millis(100)),
        };
        if let Some(pause) = pause {
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = freed.notified(), if room == Room::None => {}
                () = &mut shutdown => break,
            }
            if room == Room::None {
                continue;
            }
        }
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of descriptors (which the caps should prevent),
                    // or a connection reset before it was accepted: wait a
                    // little rather than spin.
                    tracing::debug!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        stats.accepted.fetch_add(1, Ordering::Relaxed);
        let address = AddressKey::of(peer.ip());
        // Many workers may share an address (a lab behind NAT): trusted
        // addresses are not held to the strangers' rate.
        let is_trusted = trusted.contains(address, Instant::now());
        if !is_trusted && opened.check_key(&address).is_err() {
            stats.refused_over_rate.fetch_add(1, Ordering::Relaxed);
            refuse(stream);
            continue;
        }
        let now_ms = started.elapsed().as_millis() as u64;
        let Admit::Accept(accepted) = lock(&tracker).admit(address, is_trusted, &limits, now_ms) else {
            stats.refused.fetch_add(1, Ordering::Relaxed);
            refuse(stream);
            continue;
        };
        stats.open.fetch_add(1, Ordering::Relaxed);
        let _ = stream.set_nodelay(true);
        let id = accepted.id;
        let connection = Connection {
            stream,
            peer,
            app: app.clone(),
            limits: limits.clone(),
            trust: ConnectionTrust {
                address,
                authenticated: Arc::clone(&accepted.authenticated),
                trusted: Arc::clone(&trusted),
            },
            busy: accepted.busy,
            idle_since: accepted.idle_since,
            evict: accepted.evict,
            freed: Arc::clone(&freed),
            started,
            stopping: stopping.clone(),
        };
        let (tracker, stats, freed) = (Arc::clone(&tracker), Arc::clone(&stats), Arc::clone(&freed));
        while tasks.try_join_next().is_some() {}
        tasks.spawn(async move {
            let evicted = connection.run().await;
            lock(&tracker).remove(id);
            freed.notify_one();
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
    trust: ConnectionTrust,
    busy: Arc<AtomicU64>,
    idle_since: Arc<AtomicU64>,
    evict: Arc<Notify>,
    /// Notified as a request ends (the connection may become closable).
    freed: Arc<Notify>,
    started: Instant,
    stopping: watch::Receiver<bool>,
}

impl Connection {
    /// Serves the connection until it closes; returns whether it was
    /// closed to make room for another.
    async fn run(self) -> bool {
        let Self { stream, peer, app, limits, trust, busy, idle_since, evict, freed, started, mut stopping } =
            self;
        let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
            let mut request = request.map(axum::body::Body::new);
            request.extensions_mut().insert(ConnectInfo(peer));
            let guard = Busy::start(Arc::clone(&busy), Arc::clone(&idle_since), Arc::clone(&freed), started);
            let response = CONNECTION.scope(trust.clone(), app.clone().oneshot(request));
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
    freed: Arc<Notify>,
    started: Instant,
}

impl Busy {
    fn start(busy: Arc<AtomicU64>, idle_since: Arc<AtomicU64>, freed: Arc<Notify>, started: Instant) -> Self {
        busy.fetch_add(1, Ordering::Relaxed);
        Self { busy, idle_since, freed, started }
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.idle_since.store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
        self.busy.fetch_sub(1, Ordering::Relaxed);
        self.freed.notify_one();
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
