//! One client connection: the TLS handshake, the protocol ALPN chose, the requests it carries,
//! and the timers that close it.

use std::{
    collections::BTreeMap,
    convert::Infallible,
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
};

use axum::{Router, body::Body};
use bytes::Bytes;
use hyper::{
    Request, Response,
    body::{Frame, Incoming, SizeHint},
    server::conn::{http1, http2},
};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::graceful::GracefulConnection,
};
use tokio::{
    net::TcpStream,
    sync::{OwnedSemaphorePermit, watch},
    time::Instant,
};
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use super::{
    ConnectionInfo, Options, Throttled,
    inflight::{self, Admission, Inflight},
};

/// HTTP/2 flow-control windows for what clients send. The API reads no request bodies, so the
/// protocol's default of 64 KiB is plenty, and hyper's 1 MiB would let every connection park a
/// megabyte in memory.
const REQUEST_WINDOW: u32 = 64 * 1024;
/// hyper refuses an HTTP/1.1 read buffer smaller than this.
const HTTP1_MIN_BUFFER: usize = 8 * 1024;

/// What every connection shares: the protocol settings, the router and the in-flight bound.
pub(super) struct Shared {
    pub options: Options,
    http1: http1::Builder,
    http2: http2::Builder<TokioExecutor>,
    router: Router,
    inflight: Inflight,
    late: Throttled,
}

impl Shared {
    pub fn new(router: Router, options: Options) -> Self {
        let mut http1 = http1::Builder::new();
        http1
            .timer(TokioTimer::new())
            .header_read_timeout(options.read_header_timeout)
            .keep_alive(true)
            .max_buf_size((options.max_header_bytes as usize).max(HTTP1_MIN_BUFFER));
        let mut http2 = http2::Builder::new(TokioExecutor::new());
        http2
            .timer(TokioTimer::new())
            .max_concurrent_streams(options.http2_max_concurrent_streams)
            .max_header_list_size(options.max_header_bytes)
            .initial_stream_window_size(REQUEST_WINDOW)
            .initial_connection_window_size(REQUEST_WINDOW)
            .keep_alive_interval(options.http2_keepalive_interval)
            .keep_alive_timeout(options.http2_keepalive_timeout);
        Self {
            inflight: Inflight::new(options.max_requests_inflight),
            options,
            http1,
            http2,
            router,
            late: Throttled::default(),
        }
    }

    /// Logs that a connection is dropped because a response was not sent in time.
    fn late(&self, peer: SocketAddr) {
        let timeout = self.options.request_timeout;
        if self.late.due() {
            tracing::warn!(%peer, ?timeout, "Dropping a connection whose client has not taken a response in time (further ones are logged at debug for a minute)");
        } else {
            tracing::debug!(%peer, ?timeout, "Dropping a connection whose client has not taken a response in time");
        }
    }
}

/// Serves one accepted connection until it closes; `_slot` is its `--max-connections` permit,
/// returned when this ends.
pub(super) async fn handle(
    stream: TcpStream,
    peer: SocketAddr,
    acceptor: TlsAcceptor,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
    _slot: Option<OwnedSemaphorePermit>,
) {
    let handshake = tokio::time::timeout(shared.options.handshake_timeout, acceptor.accept(stream));
    let stream = tokio::select! {
        result = handshake => match result {
            Ok(Ok(stream)) => stream,
            // kube-apiserver logs these at V(5): scanners and probes make plenty of them.
            Ok(Err(err)) => {
                tracing::debug!(%peer, error = %err, "TLS handshake failed");
                return;
            }
            Err(_) => {
                tracing::debug!(%peer, "TLS handshake timed out");
                return;
            }
        },
        _ = stop.wait_for(|stop| *stop) => return,
    };
    let session = &stream.get_ref().1;
    // HTTP/2 only when ALPN chose it, as Go's server does: no sniffing of the first bytes, which
    // would wait for them without a deadline.
    let http2 = session.alpn_protocol() == Some(b"h2".as_slice());
    let info = ConnectionInfo {
        peer,
        peer_certificates: Arc::new(session.peer_certificates().map(<[_]>::to_vec).unwrap_or_default()),
    };
    let activity = Arc::new(Activity::new());
    let service = {
        let (shared, activity) = (shared.clone(), activity.clone());
        hyper::service::service_fn(move |request| serve_request(request, &shared, &activity, &info))
    };
    let io = TokioIo::new(stream);
    let closer = Closer {
        activity: &activity,
        shared: &shared,
        peer,
    };
    if http2 {
        closer
            .drive(shared.http2.serve_connection(io, service), stop)
            .await;
    } else {
        closer
            .drive(shared.http1.serve_connection(io, service), stop)
            .await;
    }
}

/// Admits one request (or answers 429) and routes it, keeping the connection busy until its
/// response body is dropped. The future owns what it uses (`use<>`), so hyper can run it on its
/// own task (HTTP/2 streams).
fn serve_request(
    mut request: Request<Incoming>,
    shared: &Shared,
    activity: &Arc<Activity>,
    info: &ConnectionInfo,
) -> impl Future<Output = Result<Response<Tracked>, Infallible>> + Send + use<> {
    let busy = activity.begin();
    let admission = shared.inflight.admit(request.uri().path());
    request.extensions_mut().insert(info.clone());
    let router = shared.router.clone();
    let rejection = shared.options.rejection;
    async move {
        let (response, permit) = match admission {
            Admission::Admitted(permit) => {
                let response = router.oneshot(request).await;
                (response.unwrap_or_else(|never| match never {}), permit)
            }
            Admission::Rejected => (inflight::too_many_requests(rejection), None),
        };
        Ok(response.map(|body| Tracked {
            body,
            _busy: busy,
            _permit: permit,
        }))
    }
}

/// A response body that holds its request's place (the connection's open-request count and the
/// in-flight permit) until hyper has sent it or the client went away.
struct Tracked {
    body: Body,
    _busy: Busy,
    _permit: Option<OwnedSemaphorePermit>,
}

impl hyper::body::Body for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The requests open on one connection, and since when it has had none.
struct Activity {
    state: Mutex<ActivityState>,
}

struct ActivityState {
    /// When each open request began, by a number that grows, so the first entry is the oldest.
    open: BTreeMap<u64, Instant>,
    next_id: u64,
    /// When the last request ended, or the connection was established.
    idle_since: Instant,
    /// Whether a request has begun on this connection yet.
    served: bool,
}

/// What the connection must do by when.
enum Deadline {
    /// Receive a request, or be closed gracefully.
    Idle(Instant),
    /// Finish sending the oldest open response, or be dropped.
    Request(Instant),
}

impl Activity {
    fn new() -> Self {
        Self {
            state: Mutex::new(ActivityState {
                open: BTreeMap::new(),
                next_id: 0,
                idle_since: Instant::now(),
                served: false,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ActivityState> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn begin(self: &Arc<Self>) -> Busy {
        let mut state = self.lock();
        let id = state.next_id;
        state.next_id += 1;
        state.served = true;
        state.open.insert(id, Instant::now());
        Busy {
            activity: self.clone(),
            id,
        }
    }

    /// The next deadline: the first request is due within the read-header timeout, later ones
    /// within the idle timeout, and an open request must be answered within the request timeout.
    fn deadline(&self, options: &Options) -> Deadline {
        let state = self.lock();
        match state.open.values().next() {
            Some(oldest) => Deadline::Request(*oldest + options.request_timeout),
            None if state.served => Deadline::Idle(state.idle_since + options.idle_timeout),
            None => Deadline::Idle(state.idle_since + options.read_header_timeout),
        }
    }
}

/// One open request; dropping it ends the request.
struct Busy {
    activity: Arc<Activity>,
    id: u64,
}

impl Drop for Busy {
    fn drop(&mut self) {
        let mut state = self.activity.lock();
        state.open.remove(&self.id);
        if state.open.is_empty() {
            state.idle_since = Instant::now();
        }
    }
}

/// Enforces a connection's deadlines, and closes it gracefully when the server stops.
///
/// hyper closes an HTTP/1.1 connection whose next request head is late (the read-header timer),
/// but has no such timer for HTTP/2: a client that only sends the preface, or keeps a connection
/// without streams, would hold it forever. Nor does hyper bound how long a response may wait for
/// a client that does not read it, which would hold its `--max-requests-inflight` place for good.
/// The requests that the service tracks tell idle from busy, and late from on time, for both.
struct Closer<'a> {
    activity: &'a Activity,
    shared: &'a Shared,
    peer: SocketAddr,
}

impl Closer<'_> {
    async fn drive<C>(self, connection: C, mut stop: watch::Receiver<bool>)
    where
        C: GracefulConnection<Error = hyper::Error>,
    {
        let Self {
            activity,
            shared,
            peer,
        } = self;
        let options = &shared.options;
        tokio::pin!(connection);
        let mut check = Instant::now();
        let (reason, grace) = loop {
            tokio::select! {
                result = connection.as_mut() => return report(result, peer),
                _ = stop.wait_for(|stop| *stop) => break ("the server is stopping", options.drain_timeout),
                () = tokio::time::sleep_until(check) => {
                    let now = Instant::now();
                    match activity.deadline(options) {
                        Deadline::Idle(at) if at <= now => break ("idle", options.close_timeout),
                        Deadline::Request(at) if at <= now => return shared.late(peer),
                        // A request that begins before the next check is due no earlier than
                        // one request timeout after it, so checks are never late.
                        Deadline::Idle(at) | Deadline::Request(at) => {
                            check = at.min(now + options.request_timeout);
                        }
                    }
                },
            }
        };
        tracing::debug!(%peer, reason, "Closing the connection");
        connection.as_mut().graceful_shutdown();
        match tokio::time::timeout(grace, connection).await {
            Ok(result) => report(result, peer),
            Err(_) => tracing::debug!(%peer, "The connection did not close in time; dropped it"),
        }
    }
}

fn report(result: Result<(), hyper::Error>, peer: SocketAddr) {
    if let Err(err) = result {
        tracing::debug!(%peer, error = %err, "Connection ended with an error");
    }
}
