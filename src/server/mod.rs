//! The HTTPS server: our own accept loop (so handlers can later see the client certificate),
//! HTTP/1.1 and HTTP/2 by ALPN, keep-alive, TCP_NODELAY, and graceful shutdown.

pub mod tls;

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use axum::Router;
use hyper::{Request, body::Incoming};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::{conn::auto, graceful::GracefulShutdown},
};
use rustls_pki_types::CertificateDer;
use tokio::net::TcpListener;
use tower::ServiceExt;

pub use tls::TlsSource;

/// How long a client may take to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long in-flight requests may run after shutdown was asked for.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// What the connection tells a handler about its client (request extension).
#[derive(Debug, Clone)]
pub struct ConnectionInfo {
    pub peer: SocketAddr,
    /// The client's certificate chain, leaf first, when it presented one.
    pub peer_certificates: Arc<Vec<CertificateDer<'static>>>,
}

/// Serves `router` over TLS on `listener` until `shutdown` resolves, then stops accepting and
/// waits (up to 30 s) for open connections to finish their in-flight requests.
pub async fn serve(
    listener: TcpListener,
    tls: TlsSource,
    router: Router,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30))
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Duration::from_secs(30));
    if !tls.http2() {
        builder = builder.http1_only();
    }
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %err, "Accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        if let Err(err) = stream.set_nodelay(true) {
            tracing::debug!(%peer, error = %err, "Setting TCP_NODELAY failed");
        }
        let acceptor = tls.acceptor();
        let router = router.clone();
        let builder = builder.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(err)) => {
                    tracing::debug!(%peer, error = %err, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            let peer_certificates = stream
                .get_ref()
                .1
                .peer_certificates()
                .map(|certs| certs.to_vec())
                .unwrap_or_default();
            let info = ConnectionInfo {
                peer,
                peer_certificates: Arc::new(peer_certificates),
            };
            let service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
                request.extensions_mut().insert(info.clone());
                router.clone().oneshot(request)
            });
            let connection = builder
                .serve_connection(TokioIo::new(stream), service)
                .into_owned();
            if let Err(err) = watcher.watch(connection).await {
                tracing::debug!(%peer, error = %err, "Connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("Some connections were still busy after {DRAIN_TIMEOUT:?}; closing them");
    }
    Ok(())
}
