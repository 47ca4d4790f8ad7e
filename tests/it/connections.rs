//! Connection discipline under hostile clients, as kube-apiserver keeps it: connections that send
//! nothing are closed, connections and requests in flight are bounded without starving health
//! probes, and odd TLS server names get the default certificate without a log line each.

use std::{
    net::SocketAddr,
    process::Stdio,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use axum::http::Request;
use rustls::{
    DigitallySignedStruct, SignatureScheme,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    pki_types::{CertificateDer, ServerName, UnixTime},
};
use serde_json::Value;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use tokio_rustls::{TlsConnector, client::TlsStream};

use crate::support::*;

/// How long the tests below give the server to close a connection whose (shortened) timers ran
/// out after about 2 s: generous for a loaded machine, far below the minutes the defaults allow.
const CLOSE_BOUND: Duration = Duration::from_secs(15);

/// Timers shortened so that the tests take seconds.
fn short_timers() -> custom_metrics_adapter::server::Options {
    custom_metrics_adapter::server::Options {
        read_header_timeout: Duration::from_secs(1),
        idle_timeout: Duration::from_secs(1),
        close_timeout: Duration::from_secs(1),
        ..Default::default()
    }
}

/// Accepts any server certificate: these tests are about connections, not trust.
#[derive(Debug)]
struct AnyCertificate(rustls::crypto::WebPkiSupportedAlgorithms);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}

/// A TLS connection to `addr` offering the ALPN protocols `alpn`, handshake finished.
async fn connect(addr: SocketAddr, alpn: &[&[u8]]) -> TlsStream<TcpStream> {
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    let verifier = AnyCertificate(provider.signature_verification_algorithms);
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let name = ServerName::try_from("localhost").expect("server name");
    tokio::time::timeout(
        Duration::from_secs(10),
        TlsConnector::from(Arc::new(config)).connect(name, tcp),
    )
    .await
    .expect("the handshake finishes within 10 s")
    .expect("handshake")
}

/// Reads until the server closes the connection; how long that took, or `None` past `bound`.
async fn closed_within(stream: &mut TlsStream<TcpStream>, bound: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut buffer = [0u8; 4096];
    let read_to_end = async {
        while let Ok(n) = stream.read(&mut buffer).await
            && n > 0
        {}
    };
    tokio::time::timeout(bound, read_to_end)
        .await
        .ok()
        .map(|()| started.elapsed())
}

#[tokio::test]
async fn http1_connections_that_send_no_request_are_closed() {
    let adapter = TestAdapter::start(AdapterOptions {
        server: Some(short_timers()),
        ..Default::default()
    })
    .await;
    for (what, alpn) in [
        ("no ALPN", &[][..]),
        ("ALPN http/1.1", &[b"http/1.1".as_slice()][..]),
    ] {
        let mut stream = connect(adapter.addr, alpn).await;
        let closed = closed_within(&mut stream, CLOSE_BOUND).await;
        assert!(
            closed.is_some(),
            "{what}: a connection that sent no request is still open after {CLOSE_BOUND:?}"
        );
    }

    // Between keep-alive requests the same timer runs.
    let mut stream = connect(adapter.addr, &[b"http/1.1"]).await;
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).await.unwrap();
    assert_eq!(&head, b"HTTP/1.1 200");
    assert!(
        closed_within(&mut stream, CLOSE_BOUND).await.is_some(),
        "an idle keep-alive connection is still open after {CLOSE_BOUND:?}"
    );
}

#[tokio::test]
async fn http2_connections_without_open_streams_are_closed() {
    let adapter = TestAdapter::start(AdapterOptions {
        server: Some(short_timers()),
        ..Default::default()
    })
    .await;
    // A client that sends the preface and settings, answers pings, and never opens a stream.
    let stream = connect(adapter.addr, &[b"h2"]).await;
    let (_client, connection) = h2::client::handshake(stream).await.expect("h2 handshake");
    let started = Instant::now();
    let ended = tokio::time::timeout(CLOSE_BOUND, connection).await;
    assert!(
        ended.is_ok(),
        "an HTTP/2 connection without streams is still open after {CLOSE_BOUND:?}"
    );
    println!(
        "preface-only HTTP/2 connection closed after {:?}",
        started.elapsed()
    );

    // After a request the connection is idle again, and closed again.
    let stream = connect(adapter.addr, &[b"h2"]).await;
    let (client, connection) = h2::client::handshake(stream).await.expect("h2 handshake");
    let connection = tokio::spawn(connection);
    let request = Request::get(format!("https://{}/healthz", adapter.addr))
        .body(())
        .unwrap();
    let (response, _) = client.ready().await.unwrap().send_request(request, true).unwrap();
    assert_eq!(response.await.unwrap().status(), 200);
    assert!(
        tokio::time::timeout(CLOSE_BOUND, connection).await.is_ok(),
        "an HTTP/2 connection idle after its request is still open after {CLOSE_BOUND:?}"
    );
}

/// A Prometheus that accepts connections and never answers; counts what it accepted.
fn hanging_prometheus() -> (String, Arc<AtomicUsize>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().flatten() {
            counter.fetch_add(1, Ordering::SeqCst);
            held.push(stream);
        }
    });
    (url, accepted)
}

const SEED: &str =
    "/apis/custom.metrics.k8s.io/v1beta1/namespaces/default/services/sample-metrics-app/http_requests";

#[tokio::test]
async fn requests_past_max_requests_inflight_get_429_while_probes_answer() {
    let (prometheus, accepted) = hanging_prometheus();
    let adapter = TestAdapter::start(AdapterOptions {
        query_url: Some(prometheus),
        timeout: Some(Duration::from_secs(4)),
        server: Some(custom_metrics_adapter::server::Options {
            max_requests_inflight: 1,
            ..short_timers()
        }),
        ..Default::default()
    })
    .await;
    let client = https_client(None, Duration::from_secs(10));
    let url = adapter.url(SEED);
    let slow = tokio::spawn(client.get(&url).send());
    let reached = eventually(Duration::from_secs(10), async || {
        accepted.load(Ordering::SeqCst) > 0
    })
    .await;
    assert!(reached, "the slow request never reached Prometheus");

    let response = client.get(&url).send().await.expect("an answer, not a wait");
    assert_eq!(response.status(), 429);
    assert_eq!(response.headers()["retry-after"], "1");
    let status: Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
    assert_eq!(status["kind"], "Status");
    assert_eq!(status["reason"], "TooManyRequests");
    assert_eq!(status["code"], 429);
    assert_eq!(status["details"]["retryAfterSeconds"], 1);
    for probe in ["/healthz", "/livez", "/readyz"] {
        let response = client.get(adapter.url(probe)).send().await.unwrap();
        assert_eq!(response.status(), 200, "{probe} while the limit is reached");
    }

    // The slow request outlives the 1 s idle timer (it is not idle) and gets its own answer;
    // then its place is free again.
    let slow = slow.await.unwrap().expect("the slow request is answered");
    assert_ne!(slow.status(), 429);
    let response = client.get(adapter.url("/metrics")).send().await.unwrap();
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn a_client_that_does_not_read_its_response_loses_its_place() {
    let adapter = TestAdapter::start(AdapterOptions {
        server: Some(custom_metrics_adapter::server::Options {
            max_requests_inflight: 1,
            request_timeout: Duration::from_secs(2),
            ..short_timers()
        }),
        ..Default::default()
    })
    .await;
    // An HTTP/2 client that opens no flow-control window: the server can send the response's
    // head, never its body.
    let stream = connect(adapter.addr, &[b"h2"]).await;
    let (client, connection) = h2::client::Builder::new()
        .initial_window_size(0)
        .handshake::<_, bytes::Bytes>(stream)
        .await
        .expect("h2 handshake");
    let connection = tokio::spawn(connection);
    let request = Request::get(format!("https://{}/apis", adapter.addr))
        .body(())
        .unwrap();
    let (response, _) = client.ready().await.unwrap().send_request(request, true).unwrap();
    let response = response.await.unwrap();
    assert_eq!(response.status(), 200);

    let (status, _) = get(&adapter, "/apis").await;
    assert_eq!(status, 429, "the unread response holds the only place");
    assert!(
        tokio::time::timeout(CLOSE_BOUND, connection).await.is_ok(),
        "the connection of a client that does not read is still open after {CLOSE_BOUND:?}"
    );
    let (status, body) = get(&adapter, "/apis").await;
    assert_eq!(status, 200, "the place is free again: {body}");
    drop(response);
}

#[tokio::test]
async fn past_max_connections_new_clients_wait_and_open_ones_are_served() {
    let served = TestAdapter::start(AdapterOptions {
        objects_yaml: Some(OBJECTS_YAML.into()),
        flags: vec!["--max-connections".into(), "3".into()],
        ..Default::default()
    })
    .await;
    // One keep-alive client (its connection stays open between requests) and two silent ones.
    let open_client = https();
    let healthz = format!("https://{}/healthz", served.addr);
    assert_eq!(open_client.get(&healthz).send().await.unwrap().status(), 200);
    let mut silent = vec![
        connect(served.addr, &[b"http/1.1"]).await,
        connect(served.addr, &[b"http/1.1"]).await,
    ];

    let newcomer = tokio::spawn({
        let healthz = healthz.clone();
        async move { https().get(&healthz).send().await.map(|r| r.status().as_u16()) }
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        !newcomer.is_finished(),
        "a fourth connection was served past --max-connections 3"
    );
    let response = open_client.get(&healthz).send().await.unwrap();
    assert_eq!(
        response.status(),
        200,
        "an open connection is served at the limit"
    );

    drop(silent.pop());
    let status = tokio::time::timeout(Duration::from_secs(10), newcomer)
        .await
        .expect("the waiting client is served once a connection closes")
        .unwrap()
        .expect("request");
    assert_eq!(status, 200);
}

#[tokio::test]
async fn an_ip_address_as_tls_server_name_gets_the_default_certificate_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let objects = dir.path().join("objects.yaml");
    std::fs::write(&objects, OBJECTS_YAML).unwrap();
    let port = free_port();
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_custom-metrics-adapter"))
        .arg(format!("--cert-dir={}", dir.path().join("certs").display()))
        .arg(format!("--objects-file={}", objects.display()))
        .arg(format!("--prometheus-url={}", env().prometheus_url))
        .arg(format!("--secure-port={port}"))
        .args(["--bind-address=127.0.0.1", "--insecure-allow-anonymous"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    wait_ready(
        &format!("https://127.0.0.1:{port}/readyz"),
        Duration::from_secs(30),
    )
    .await;

    // OpenSSL sends an IP address as server name when told to (Go's and Apple's clients too).
    for _ in 0..3 {
        let output = tokio::process::Command::new("openssl")
            .args(["s_client", "-connect", &format!("127.0.0.1:{port}")])
            .args(["-servername", "127.0.0.1", "-brief"])
            .stdin(Stdio::null())
            .output()
            .await
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(text.contains("CONNECTION ESTABLISHED"), "{text}");
    }

    let output = terminate(child).await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    let warnings: Vec<&str> = stderr
        .lines()
        .filter(|line| line.contains("WARN") && !line.contains("INSECURE"))
        .collect();
    assert!(warnings.is_empty(), "warnings: {warnings:#?}");
}
