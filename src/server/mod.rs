//! The HTTPS server: our own accept loop (so handlers can see the client certificate), HTTP/1.1
//! or HTTP/2 as ALPN chose, and kube-apiserver's connection discipline: every connection has a
//! deadline for its handshake, its request heads and its idleness; connections and requests in
//! flight are bounded; shutdown is graceful.

mod connection;
mod inflight;
pub mod tls;

use std::{
    future::Future,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::Router;
use rustls_pki_types::CertificateDer;
use tokio::{
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore, watch},
    time::Instant,
};

pub use tls::{Certificate, TlsConfig, TlsSource};

/// `--max-connections` by default. Measured with jemalloc (README, "Security and limits"): an
/// idle TLS connection costs 16 KiB (HTTP/1.1) to 26 KiB (HTTP/2), one holding an unfinished
/// 30 KB request head 57 KiB; 512 of the latter add 30 MiB, which keeps the worst case well
/// within the Deployment's 128 MiB next to the object caches of a large cluster.
pub const DEFAULT_MAX_CONNECTIONS: usize = 512;
/// `--max-requests-inflight` by default, as in kube-apiserver.
pub const DEFAULT_MAX_REQUESTS_INFLIGHT: usize = 400;

/// What the connection tells a handler about its client (request extension).
#[derive(Debug, Clone)]
pub struct ConnectionInfo {
    pub peer: SocketAddr,
    /// The client's certificate chain, leaf first, when it presented one.
    pub peer_certificates: Arc<Vec<CertificateDer<'static>>>,
}

/// Every limit and timer of the server; the defaults are kube-apiserver's where it has one.
#[derive(Debug, Clone)]
pub struct Options {
    /// How long a client may take to finish the TLS handshake.
    pub handshake_timeout: Duration,
    /// How long a request head may take to arrive. The first request is due this long after the
    /// handshake on either protocol; HTTP/1.1 (hyper) runs the timer again after each response,
    /// so it is also how long an idle HTTP/1.1 keep-alive connection stays open.
    /// kube-apiserver: 32 s.
    pub read_header_timeout: Duration,
    /// A connection that has served requests and has none open for this long is closed (HTTP/2:
    /// GOAWAY first); in practice HTTP/2's, as HTTP/1.1's read-header timer is shorter.
    /// kube-apiserver: 90 s.
    pub idle_timeout: Duration,
    /// How long a connection closed for idleness may take to say goodbye (HTTP/2: GOAWAY and
    /// the ping that confirms it) before it is dropped.
    pub close_timeout: Duration,
    /// How long a request may take, its response sent in full; past it the connection is
    /// dropped, so a client that does not read its responses cannot keep its place in
    /// `--max-requests-inflight` (kube-apiserver's `--request-timeout` is 60 s).
    pub request_timeout: Duration,
    /// How long in-flight requests may run after shutdown was asked for.
    pub drain_timeout: Duration,
    /// Connections served at once, from accept to close (0: no limit). Past it the server stops
    /// accepting, so new connections wait in the kernel's backlog until one closes.
    pub max_connections: usize,
    /// Requests served at once, health probes apart (0: no limit). Past it requests are
    /// answered 429 with `Retry-After: 1`.
    pub max_requests_inflight: usize,
    /// HTTP/2 streams a client may open at once on one connection. kube-apiserver: 100.
    pub http2_max_concurrent_streams: u32,
    /// The largest request head: HTTP/2's SETTINGS_MAX_HEADER_LIST_SIZE, HTTP/1.1's read buffer.
    pub max_header_bytes: u32,
    /// How often an HTTP/2 connection is pinged, and how long the answer may take before the
    /// connection is closed as dead.
    pub http2_keepalive_interval: Duration,
    pub http2_keepalive_timeout: Duration,
    /// The response to a request past `max_requests_inflight`, given the seconds to wait; the
    /// server adds the 429 status and `Retry-After`.
    pub rejection: RejectionBody,
}

/// Builds the response a rejected request gets, from the seconds it is told to wait.
pub type RejectionBody = fn(u32) -> axum::response::Response;

/// How long a request may take, unless Prometheus calls may take longer (`app` decides).
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// `--http2-max-streams-per-connection` when unset (0), as in kube-apiserver.
pub const DEFAULT_HTTP2_MAX_STREAMS: u32 = 100;

impl Default for Options {
    fn default() -> Self {
        Self {
            handshake_timeout: Duration::from_secs(10),
            read_header_timeout: Duration::from_secs(32),
            idle_timeout: Duration::from_secs(90),
            close_timeout: Duration::from_secs(10),
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            drain_timeout: Duration::from_secs(30),
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_requests_inflight: DEFAULT_MAX_REQUESTS_INFLIGHT,
            http2_max_concurrent_streams: DEFAULT_HTTP2_MAX_STREAMS,
            // Room for hundreds of X-Remote-Group headers from the front proxy, while every
            // connection sending an unfinished head stays cheap (kube-apiserver allows 1 MiB,
            // which would not fit in the Deployment's memory limit).
            max_header_bytes: 32 * 1024,
            http2_keepalive_interval: Duration::from_secs(30),
            http2_keepalive_timeout: Duration::from_secs(20),
            rejection: inflight::plain_rejection,
        }
    }
}

/// How often a limit that keeps being hit is logged.
const LIMIT_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// A warning that is logged at most once per [`LIMIT_LOG_INTERVAL`], so a flood of connections or
/// requests does not become a flood of log lines too.
#[derive(Default)]
struct Throttled {
    last: Mutex<Option<Instant>>,
}

impl Throttled {
    /// True when the warning is due now (and then not again for a while).
    fn due(&self) -> bool {
        let mut last = self.last.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let now = Instant::now();
        if last.is_some_and(|at| now.duration_since(at) < LIMIT_LOG_INTERVAL) {
            return false;
        }
        *last = Some(now);
        true
    }
}

/// Serves `router` over TLS on `listener` until `shutdown` resolves, then stops accepting and
/// waits (up to the drain timeout) for open connections to finish their in-flight requests.
pub async fn serve(
    listener: TcpListener,
    tls: TlsSource,
    router: Router,
    options: Options,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let drain_timeout = options.drain_timeout;
    let shared = Arc::new(connection::Shared::new(router, options));
    let slots = Slots::new(shared.options.max_connections);
    let (stop, _) = watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        // The slot is taken before accepting: at the limit the server does not accept at all, so
        // waiting clients cost a kernel backlog entry, not a file descriptor, a task and TLS state.
        let slot = tokio::select! {
            slot = slots.take() => slot,
            () = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = accept(&listener) => accepted,
            () = &mut shutdown => break,
        };
        tokio::spawn(connection::handle(
            stream,
            peer,
            tls.acceptor(),
            shared.clone(),
            stop.subscribe(),
            slot,
        ));
    }
    drop(listener);
    let _ = stop.send(true);
    // Every connection task holds a receiver; all are gone when every connection has closed.
    if tokio::time::timeout(drain_timeout, stop.closed()).await.is_err() {
        tracing::warn!("Some connections were still busy after {drain_timeout:?}; closing them");
    }
    Ok(())
}

/// Accepts the next connection; errors (out of file descriptors and the like) back off instead
/// of spinning.
async fn accept(listener: &TcpListener) -> (TcpStream, SocketAddr) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                if let Err(err) = stream.set_nodelay(true) {
                    tracing::debug!(%peer, error = %err, "Setting TCP_NODELAY failed");
                }
                return (stream, peer);
            }
            Err(err) => {
                tracing::warn!(error = %err, "Accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// `--max-connections`: one permit per open connection.
struct Slots {
    permits: Option<Arc<Semaphore>>,
    limit: usize,
    full: Throttled,
}

impl Slots {
    fn new(limit: usize) -> Self {
        Self {
            permits: (limit > 0).then(|| Arc::new(Semaphore::new(limit))),
            limit,
            full: Throttled::default(),
        }
    }

    /// Waits for a free slot; `None` when connections are not limited.
    async fn take(&self) -> Option<OwnedSemaphorePermit> {
        let permits = self.permits.clone()?;
        if permits.available_permits() == 0 && self.full.due() {
            tracing::warn!(
                max_connections = self.limit,
                "Connection limit reached: new connections wait in the listen backlog until one closes (--max-connections)"
            );
        }
        // The semaphore is never closed, so acquiring fails only in theory.
        permits.acquire_owned().await.ok()
    }
}

/// Raises the soft limit on open files to the hard limit, so `--max-connections`, not the
/// runtime's default of 1,024 descriptors, is what bounds connections.
pub fn raise_fd_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::debug!(limit, "Raised the open-file limit to the hard limit"),
        Err(err) => tracing::debug!(error = %err, "Cannot raise the open-file limit"),
    }
}
