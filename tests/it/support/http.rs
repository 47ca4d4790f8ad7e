//! HTTPS clients that trust the tests' self-signed certificates, requests, and polling.

use std::time::{Duration, Instant};

pub fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// An HTTPS client that trusts any server certificate, presenting `identity` (a client
/// certificate and key, PEM) if any, giving up on a request after `timeout`.
pub fn https_client(identity: Option<&[u8]>, timeout: Duration) -> reqwest::Client {
    install_crypto_provider();
    let mut builder = reqwest::Client::builder()
        .tls_danger_accept_invalid_certs(true)
        .timeout(timeout);
    if let Some(pem) = identity {
        builder = builder.identity(reqwest::Identity::from_pem(pem).expect("client identity"));
    }
    builder.build().expect("https client")
}

/// An HTTPS client that trusts the test's self-signed certificates.
pub fn https() -> reqwest::Client {
    https_client(None, Duration::from_secs(30))
}

/// Sends `request`; its status, headers and body.
pub async fn send(request: reqwest::RequestBuilder) -> (u16, reqwest::header::HeaderMap, String) {
    let response = request.send().await.expect("request");
    let (status, headers) = (response.status().as_u16(), response.headers().clone());
    (status, headers, response.text().await.expect("body"))
}

/// Polls `url` (a `/readyz`) every 100 ms until it answers 200; panics with its last answer after
/// `within`.
pub async fn wait_ready(url: &str, within: Duration) {
    let client = https();
    let deadline = Instant::now() + within;
    let mut last = String::new();
    loop {
        if let Ok(response) = client.get(url).send().await {
            if response.status().as_u16() == 200 {
                return;
            }
            last = response.text().await.unwrap_or_default();
        }
        assert!(
            Instant::now() < deadline,
            "{url} not ready within {within:?}: {last}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Polls `check` every 50 ms for up to `within`; returns whether it became true.
pub async fn eventually<F: AsyncFnMut() -> bool>(within: Duration, mut check: F) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    check().await
}

/// Percent-encodes everything but RFC 3986's unreserved characters, for selectors in queries.
pub fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}
