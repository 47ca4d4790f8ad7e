//! A Prometheus that misbehaves or rotates credentials: a fake one on 127.0.0.1:0 (plain HTTP or
//! TLS, optionally requiring a bearer token or a client certificate) answers the adapter's queries,
//! while discovery still comes from the real Prometheus.

use std::{
    path::Path,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use arc_swap::ArcSwap;
use axum::{
    body::Body,
    extract::State,
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::Response,
};
use custom_metrics_adapter::backend::prometheus::ClientConfig;
use futures::StreamExt as _;
use serde_json::Value;

use crate::support::*;

const PODS: &str = "/apis/custom.metrics.k8s.io/v1beta1/namespaces/default/pods/*/http_requests";
const SECRET: &str = "SECRET-7f3a9c";

/// What the fake answers to /api/v1/query.
#[derive(Clone)]
enum Answer {
    /// One sample of pod sample-metrics-app-0.
    Sample,
    /// A valid vector of about `bytes`, streamed; `declared` sends its Content-Length.
    Large { bytes: usize, declared: bool },
    /// An error status with `body` and an optional Retry-After.
    Status {
        code: u16,
        retry_after: Option<&'static str>,
        body: String,
    },
}

struct Fake {
    answer: Mutex<Answer>,
    /// Bearer tokens accepted; empty: no token needed.
    tokens: Mutex<Vec<String>>,
    /// Requests refused for their token.
    refused: AtomicUsize,
    /// Body bytes handed to the connection (streamed answers).
    sent: Arc<AtomicU64>,
}

struct FakePrometheus {
    url: String,
    fake: Arc<Fake>,
    /// The TLS fake's configuration, swapped to rotate its certificate or client CAs.
    tls: Option<Arc<ArcSwap<rustls::ServerConfig>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakePrometheus {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakePrometheus {
    async fn start(tls: Option<rustls::ServerConfig>) -> FakePrometheus {
        let fake = Arc::new(Fake {
            answer: Mutex::new(Answer::Sample),
            tokens: Mutex::new(Vec::new()),
            refused: AtomicUsize::new(0),
            sent: Arc::new(AtomicU64::new(0)),
        });
        let router = axum::Router::new()
            .route("/api/v1/query", axum::routing::get(query))
            .with_state(fake.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let Some(config) = tls else {
            let task = tokio::spawn(async move {
                let _ = axum::serve(listener, router).await;
            });
            return FakePrometheus {
                url: format!("http://{addr}"),
                fake,
                tls: None,
                task,
            };
        };
        let config = Arc::new(ArcSwap::from_pointee(config));
        let task = tokio::spawn(serve_tls(listener, config.clone(), router));
        FakePrometheus {
            url: format!("https://{addr}"),
            fake,
            tls: Some(config),
            task,
        }
    }

    fn answer(&self, answer: Answer) {
        *self.fake.answer.lock().unwrap() = answer;
        self.fake.sent.store(0, Ordering::SeqCst);
    }

    fn accept_tokens(&self, tokens: &[&str]) {
        *self.fake.tokens.lock().unwrap() = tokens.iter().map(|t| (*t).to_owned()).collect();
    }

    fn serve_with(&self, config: rustls::ServerConfig) {
        self.tls.as_ref().expect("a TLS fake").store(Arc::new(config));
    }

    /// An adapter whose queries go to this fake with `configure`d client settings.
    async fn adapter(&self, configure: impl FnOnce(&mut ClientConfig)) -> TestAdapter {
        let mut config = client_config(&self.url, Duration::from_secs(10));
        configure(&mut config);
        TestAdapter::start(AdapterOptions {
            query_client: Some(config),
            ..Default::default()
        })
        .await
    }
}

/// TLS connections, each served once and closed, so every request makes a new handshake with
/// the configuration of the moment.
async fn serve_tls(
    listener: tokio::net::TcpListener,
    config: Arc<ArcSwap<rustls::ServerConfig>>,
    router: axum::Router,
) {
    while let Ok((stream, _)) = listener.accept().await {
        let acceptor = tokio_rustls::TlsAcceptor::from(config.load_full());
        let router = router.clone();
        tokio::spawn(async move {
            let Ok(stream) = acceptor.accept(stream).await else {
                return;
            };
            let service = hyper_util::service::TowerToHyperService::new(router);
            let _ = hyper::server::conn::http1::Builder::new()
                .keep_alive(false)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn query(State(fake): State<Arc<Fake>>, headers: HeaderMap) -> Response {
    let tokens = fake.tokens.lock().unwrap().clone();
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if !tokens.is_empty() && !presented.is_some_and(|p| tokens.iter().any(|t| t == p)) {
        fake.refused.fetch_add(1, Ordering::SeqCst);
        return respond(401, "Unauthorized\n".into(), None);
    }
    let answer = fake.answer.lock().unwrap().clone();
    match answer {
        Answer::Sample => respond(200, vector(&[sample_json(0)]), None),
        Answer::Large { bytes, declared } => large(bytes, declared, fake.sent.clone()),
        Answer::Status {
            code,
            retry_after,
            body,
        } => respond(code, body, retry_after),
    }
}

fn respond(code: u16, body: String, retry_after: Option<&'static str>) -> Response {
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = StatusCode::from_u16(code).unwrap();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if let Some(value) = retry_after {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static(value));
    }
    response
}

fn sample_json(i: usize) -> String {
    format!(
        r#"{{"metric":{{"namespace":"default","pod":"sample-metrics-app-{i}","service":"sample-metrics-app"}},"value":[{}.123,"1.5"]}}"#,
        now_secs()
    )
}

fn vector(samples: &[String]) -> String {
    format!(
        r#"{{"status":"success","data":{{"resultType":"vector","result":[{}]}}}}"#,
        samples.join(",")
    )
}

/// A valid vector answer of `bytes` (give or take a sample), generated as it is sent.
fn large(bytes: usize, declared: bool, sent: Arc<AtomicU64>) -> Response {
    let head = r#"{"status":"success","data":{"resultType":"vector","result":["#;
    let tail = "]}}";
    let per_sample = sample_json(0).len() + 1;
    let count = (bytes - head.len() - tail.len()) / per_sample;
    let chunk_samples = 512;
    let chunks = count.div_ceil(chunk_samples);
    let mut length = head.len() + tail.len() + count.saturating_sub(1);
    length += (0..count).map(|i| sample_json(i).len()).sum::<usize>();
    let stream = futures::stream::iter(0..=chunks + 1).map(move |c| {
        let text = match c {
            0 => head.to_owned(),
            c if c == chunks + 1 => tail.to_owned(),
            c => {
                let first = (c - 1) * chunk_samples;
                let last = (first + chunk_samples).min(count);
                let mut text = String::new();
                for i in first..last {
                    if i > 0 {
                        text.push(',');
                    }
                    text.push_str(&sample_json(i));
                }
                text
            }
        };
        sent.fetch_add(text.len() as u64, Ordering::SeqCst);
        Ok::<_, std::convert::Infallible>(axum::body::Bytes::from(text))
    });
    let mut response = Response::new(Body::from_stream(stream));
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if declared {
        response
            .headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    }
    response
}

/// GETs `path` and returns the status, the Retry-After header and the body.
async fn get_with_headers(adapter: &TestAdapter, path: &str) -> (u16, Option<String>, String) {
    let (status, headers, body) = send(https().get(adapter.url(path))).await;
    let retry_after = headers
        .get(header::RETRY_AFTER)
        .map(|v| v.to_str().unwrap().to_owned());
    (status, retry_after, body)
}

fn status_of(body: &str) -> Value {
    let status: Value = serde_json::from_str(body).unwrap_or_else(|_| panic!("not JSON: {body}"));
    assert_eq!(status["kind"], "Status", "{body}");
    status
}

/// Nothing of Prometheus' words or whereabouts reaches the caller.
fn assert_no_internals(body: &str, fake: &FakePrometheus) {
    let address = fake.url.split("://").nth(1).unwrap();
    for leak in [SECRET, address, "/api/v1/query", "prometheus.internal"] {
        assert!(!body.contains(leak), "the answer leaks {leak:?}: {body}");
    }
}

#[tokio::test]
async fn answers_over_the_limit_fail_naming_the_limit_and_the_adapter_keeps_serving() {
    let fake = FakePrometheus::start(None).await;
    let adapter = fake.adapter(|config| config.max_response_bytes = 1 << 20).await;
    for declared in [true, false] {
        fake.answer(Answer::Large {
            bytes: 32 << 20,
            declared,
        });
        let (code, _, body) = get_with_headers(&adapter, PODS).await;
        // Today's answer to an unlimited read would be a list of 200,000 items: show its start.
        let shown = &body[..body.len().min(400)];
        assert_eq!(code, 500, "{shown}");
        let status = status_of(&body);
        assert_eq!(status["reason"], "InternalError", "{body}");
        let message = status["message"].as_str().unwrap();
        assert!(
            message.contains("larger than 1 MiB") && message.contains("--prometheus-max-response-bytes"),
            "{message}"
        );
        assert_no_internals(&body, &fake);
        // Reading stopped near the limit (socket buffers hold a few MiB more), not at the end.
        let sent = fake.fake.sent.load(Ordering::SeqCst);
        println!("declared={declared}: the fake handed over {sent} bytes");
        assert!(sent < 16 << 20, "declared={declared}: {sent} bytes were read");
    }
    fake.answer(Answer::Sample);
    let (code, body) = get(&adapter, PODS).await;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("sample-metrics-app-0"), "{body}");
}

#[tokio::test]
async fn prometheus_unavailable_or_throttling_is_503_with_retry_after() {
    let fake = FakePrometheus::start(None).await;
    let adapter = fake.adapter(|_| {}).await;
    let unavailable = format!(r#"{{"status":"error","errorType":"unavailable","error":"{SECRET}"}}"#);
    for (code, retry_after, expected) in [(503, Some("7"), 7), (429, None, 5)] {
        fake.answer(Answer::Status {
            code,
            retry_after,
            body: unavailable.clone(),
        });
        let (got, header, body) = get_with_headers(&adapter, PODS).await;
        let status = status_of(&body);
        assert_eq!(
            (got, status["reason"].as_str(), header.as_deref()),
            (
                503,
                Some("ServiceUnavailable"),
                Some(expected.to_string().as_str())
            ),
            "Prometheus {code}: {body}"
        );
        assert_eq!(status["details"]["retryAfterSeconds"], expected, "{body}");
        assert_no_internals(&body, &fake);
    }
}

#[tokio::test]
async fn prometheus_error_bodies_and_urls_never_reach_the_caller() {
    let fake = FakePrometheus::start(None).await;
    let adapter = fake.adapter(|_| {}).await;
    let bodies = [
        (
            400,
            format!(
                r#"{{"status":"error","errorType":"bad_data","error":"{SECRET} near http://prometheus.internal:9090/api/v1/query"}}"#
            ),
            "rejected the query (HTTP 400, bad_data)",
        ),
        (
            422,
            format!(r#"{{"status":"error","errorType":"{SECRET}","error":"x"}}"#),
            "rejected the query (HTTP 422",
        ),
        (
            502,
            format!("<html>{SECRET} from {}/api/v1/query</html>", fake.url),
            "HTTP 502",
        ),
    ];
    for (code, body, says) in bodies {
        fake.answer(Answer::Status {
            code,
            retry_after: None,
            body,
        });
        let (got, answer) = get(&adapter, PODS).await;
        let status = status_of(&answer);
        assert_eq!(
            (got, status["reason"].as_str()),
            (500, Some("InternalError")),
            "{answer}"
        );
        assert!(status["message"].as_str().unwrap().contains(says), "{answer}");
        assert_no_internals(&answer, &fake);
    }
}

/// Runs 48 requests from 6 workers; after the first 16 have finished, `rotate` runs. Returns the
/// failed requests' statuses and bodies.
async fn load_while(adapter: &TestAdapter, rotate: impl AsyncFnOnce()) -> Vec<(u16, String)> {
    let done = Arc::new(AtomicUsize::new(0));
    let url = adapter.url(PODS);
    let workers: Vec<_> = (0..6)
        .map(|_| {
            let (url, done) = (url.clone(), done.clone());
            tokio::spawn(async move {
                let client = https();
                let mut failures = Vec::new();
                for _ in 0..8 {
                    let response = client.get(&url).send().await.expect("request");
                    let code = response.status().as_u16();
                    let body = response.text().await.unwrap_or_default();
                    if code != 200 || !body.contains("sample-metrics-app-0") {
                        failures.push((code, body));
                    }
                    done.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                failures
            })
        })
        .collect();
    while done.load(Ordering::SeqCst) < 16 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    rotate().await;
    let mut failures = Vec::new();
    for worker in workers {
        failures.extend(worker.await.unwrap());
    }
    assert_eq!(done.load(Ordering::SeqCst), 48);
    failures
}

#[tokio::test]
async fn a_rotated_bearer_token_is_picked_up_without_failed_requests() {
    let fake = FakePrometheus::start(None).await;
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "token-one\n").unwrap();
    fake.accept_tokens(&["token-one"]);
    let path = token.clone();
    let adapter = fake.adapter(|config| config.token_file = Some(path)).await;
    let failures = load_while(&adapter, async || {
        // As the kubelet does: the new token is written, then the old one stops being accepted.
        std::fs::write(&token, "token-two\n").unwrap();
        fake.accept_tokens(&["token-two"]);
    })
    .await;
    println!(
        "requests refused by the fake for their token: {}",
        fake.fake.refused.load(Ordering::SeqCst)
    );
    assert_eq!(failures, [], "requests failed across the token rotation");
}

/// A server configuration with `cert` for 127.0.0.1, requiring client certificates from
/// `client_cas` when there are any.
fn server_config((cert, key): &(String, String), client_cas: &[&Ca]) -> rustls::ServerConfig {
    let chain = rustls_pki_types::pem::PemObject::pem_slice_iter(cert.as_bytes())
        .collect::<Result<Vec<rustls_pki_types::CertificateDer>, _>>()
        .unwrap();
    let key =
        <rustls_pki_types::PrivateKeyDer as rustls_pki_types::pem::PemObject>::from_pem_slice(key.as_bytes())
            .unwrap();
    let builder = rustls::ServerConfig::builder();
    let builder = if client_cas.is_empty() {
        builder.with_no_client_auth()
    } else {
        let mut roots = rustls::RootCertStore::empty();
        for ca in client_cas {
            for cert in rustls_pki_types::pem::PemObject::pem_slice_iter(ca.pem.as_bytes()) {
                roots.add(cert.unwrap()).unwrap();
            }
        }
        let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(roots))
            .build()
            .unwrap();
        builder.with_client_cert_verifier(verifier)
    };
    builder.with_single_cert(chain, key).unwrap()
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

#[tokio::test]
async fn a_rotated_ca_bundle_is_picked_up_without_failed_requests() {
    install_crypto_provider();
    let (old_ca, new_ca) = (Ca::new("prometheus-ca-1"), Ca::new("prometheus-ca-2"));
    let old_cert = old_ca.server(&["127.0.0.1"]);
    let new_cert = new_ca.server(&["127.0.0.1"]);
    let fake = FakePrometheus::start(Some(server_config(&old_cert, &[]))).await;
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("ca.crt");
    write(&bundle, &old_ca.pem);
    let path = bundle.clone();
    let adapter = fake.adapter(|config| config.ca_file = Some(path)).await;
    let failures = load_while(&adapter, async || {
        // The bundle gains the new CA, then Prometheus serves a certificate only it signed.
        write(&bundle, &format!("{}{}", old_ca.pem, new_ca.pem));
        fake.serve_with(server_config(&new_cert, &[]));
    })
    .await;
    assert_eq!(failures, [], "requests failed across the CA rotation");
    // The old CA leaves the bundle; answers go on.
    write(&bundle, &new_ca.pem);
    let failures = load_while(&adapter, async || {}).await;
    assert_eq!(failures, [], "requests failed after the old CA left the bundle");
}

#[tokio::test]
async fn a_rotated_client_certificate_is_picked_up_without_failed_requests() {
    install_crypto_provider();
    let serving_ca = Ca::new("prometheus-serving");
    let serving = serving_ca.server(&["127.0.0.1"]);
    let (old_ca, new_ca) = (Ca::new("clients-1"), Ca::new("clients-2"));
    let fake = FakePrometheus::start(Some(server_config(&serving, &[&old_ca]))).await;
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    let split = |pem: Vec<u8>| {
        let pem = String::from_utf8(pem).unwrap();
        let at = pem.find("-----BEGIN PRIVATE KEY-----").unwrap();
        (pem[..at].to_owned(), pem[at..].to_owned())
    };
    let (old_cert, old_key) = split(old_ca.client("custom-metrics-adapter", &[]));
    let (new_cert, new_key) = split(new_ca.client("custom-metrics-adapter", &[]));
    write(&cert, &old_cert);
    write(&key, &old_key);
    let ca = dir.path().join("ca.crt");
    write(&ca, &serving_ca.pem);
    let paths = (cert.clone(), key.clone(), ca);
    let adapter = fake
        .adapter(|config| {
            config.client_cert = Some((paths.0, paths.1));
            config.ca_file = Some(paths.2);
        })
        .await;
    let failures = load_while(&adapter, async || {
        // Prometheus trusts both client CAs while the certificate and key are replaced (one file
        // at a time), then only the new one.
        fake.serve_with(server_config(&serving, &[&old_ca, &new_ca]));
        write(&cert, &new_cert);
        write(&key, &new_key);
        fake.serve_with(server_config(&serving, &[&new_ca]));
    })
    .await;
    assert_eq!(
        failures,
        [],
        "requests failed across the client certificate rotation"
    );
}
