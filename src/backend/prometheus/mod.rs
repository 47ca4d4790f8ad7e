//! The Prometheus backend: a small client for the Prometheus HTTP API (instant queries and series
//! lookups) behind [`MetricsBackend`].
//!
//! Answers are decoded while they arrive and stop being read past `--prometheus-max-response-bytes`
//! (`decode`); credentials are re-read when their files change (`credentials`). Errors keep
//! Prometheus' URL and body for the log; [`Error::summary`] is what callers may see, and
//! [`Error::kind`] what the API layer maps to a status.

mod credentials;
mod decode;
mod kubeconfig;

use std::{path::PathBuf, sync::Arc, time::Duration, time::SystemTime};

use reqwest::{Method, StatusCode, header::HeaderMap};

use futures::future::BoxFuture;

use super::{ErrorKind, MetricsBackend, Sample, SeriesList};
use decode::{Envelope, QueryData, StreamError};

/// The default of `--prometheus-max-response-bytes`.
pub const DEFAULT_MAX_RESPONSE_BYTES: u64 = 64 << 20;
/// The most idle connections to Prometheus kept open for reuse. Each one holds a goroutine and a
/// file descriptor in Prometheus, whose `--web.max-connections` defaults to 512 for all its
/// clients (the UI, Grafana, other adapter replicas), so the adapter keeps at most half of that.
pub const MAX_IDLE_CONNECTIONS: usize = 256;
/// Error answers are small JSON; more than this is not read.
const ERROR_BODY_LIMIT: u64 = 64 << 10;
/// How long callers are told to wait when Prometheus is unavailable and does not say.
const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(5);
/// The longest Retry-After passed on from Prometheus.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(600);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid --prometheus-url {url:?}: {reason}")]
    Url { url: String, reason: String },
    #[error("cannot read {path}: {source}")]
    ReadFile { path: PathBuf, source: std::io::Error },
    #[error("invalid Prometheus client setting: {0}")]
    Setup(String),
    #[error("Prometheus at {url} is unreachable: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("Prometheus at {url} did not answer within {timeout:?}")]
    Timeout { url: String, timeout: Duration },
    #[error("Prometheus at {url} is unavailable (HTTP {status}, retry after {retry_after:?}): {body}")]
    Unavailable {
        url: String,
        status: u16,
        retry_after: Duration,
        body: String,
    },
    #[error("Prometheus at {url} answered HTTP {status}: {error_type}: {error}")]
    Api {
        url: String,
        status: u16,
        error_type: String,
        error: String,
    },
    #[error("Prometheus at {url} answered HTTP {status} with a body that is not its API's JSON: {body}")]
    BadResponse { url: String, status: u16, body: String },
    #[error("Prometheus at {url} answered {query:?} with more than {} (--prometheus-max-response-bytes); reading stopped", bytes(*limit))]
    TooLarge { url: String, query: String, limit: u64 },
    #[error("Prometheus returned a {0} result where an instant vector or scalar was expected")]
    UnexpectedResultType(String),
    #[error("decoding Prometheus' answer stopped: {0}")]
    Decoder(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// What went wrong and what to do, without URLs or Prometheus' words: safe for callers and
    /// for `/readyz?verbose`, which anyone who can reach the adapter may read.
    pub fn summary(&self) -> String {
        match self {
            Self::Url { .. } | Self::ReadFile { .. } | Self::Setup(_) => {
                "the Prometheus client is misconfigured".into()
            }
            Self::Unreachable { .. } => {
                "Prometheus is unreachable (the adapter's log names the address and the cause)".into()
            }
            Self::Timeout { timeout, .. } => format!("Prometheus did not answer within {timeout:?}"),
            Self::Unavailable {
                status, retry_after, ..
            } => format!(
                "Prometheus is unavailable (HTTP {status}); retry in {} s",
                retry_after.as_secs()
            ),
            Self::Api { status, .. } | Self::BadResponse { status, .. } if matches!(status, 401 | 403) => {
                format!("Prometheus refused the adapter's credentials (HTTP {status})")
            }
            Self::Api {
                status, error_type, ..
            } => format!(
                "Prometheus rejected the query (HTTP {status}, {})",
                known_error_type(error_type)
            ),
            Self::BadResponse { status, .. } => {
                format!("Prometheus answered HTTP {status} with a body that is not its API's JSON")
            }
            Self::TooLarge { limit, .. } => format!(
                "Prometheus' answer is larger than {}, the limit --prometheus-max-response-bytes sets; ask for fewer objects or series, or raise the limit",
                bytes(*limit)
            ),
            Self::UnexpectedResultType(kind) => format!(
                "Prometheus returned a {} result where an instant vector or scalar was expected",
                if matches!(kind.as_str(), "matrix" | "string") {
                    kind
                } else {
                    "different"
                }
            ),
            Self::Decoder(_) => "decoding Prometheus' answer failed".into(),
        }
    }

    /// Which kind of failure this is, for the status callers get.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::Timeout { .. } => ErrorKind::Timeout,
            Self::Unreachable { .. } => ErrorKind::Unreachable,
            Self::Unavailable { retry_after, .. } => ErrorKind::Unavailable {
                retry_after: *retry_after,
            },
            _ => ErrorKind::Failed,
        }
    }

    /// Logs the failure of `query` with Prometheus' URL, status and words as separate fields.
    fn log(&self, query: &str) {
        match self {
            Self::Unavailable {
                url,
                status,
                retry_after,
                body,
            } => tracing::warn!(
                query,
                url,
                status,
                retry_after_s = retry_after.as_secs(),
                body,
                "Prometheus is unavailable"
            ),
            Self::Api {
                url,
                status,
                error_type,
                error,
            } => tracing::warn!(
                query,
                url,
                status,
                error_type,
                error,
                "Prometheus refused the query"
            ),
            Self::BadResponse { url, status, body } => {
                tracing::warn!(
                    query,
                    url,
                    status,
                    body,
                    "Prometheus answered with a body that is not its API's JSON"
                )
            }
            Self::TooLarge { url, limit, .. } => {
                tracing::warn!(
                    query,
                    url,
                    limit,
                    "Prometheus' answer is over --prometheus-max-response-bytes; reading stopped"
                )
            }
            Self::Unreachable { url, reason } => {
                tracing::warn!(query, url, reason, "Prometheus is unreachable")
            }
            Self::Timeout { url, timeout } => {
                tracing::warn!(
                    query,
                    url,
                    timeout_ms = timeout.as_millis() as u64,
                    "Prometheus did not answer in time"
                )
            }
            err => tracing::warn!(query, error = %err, "Prometheus query failed"),
        }
    }
}

impl From<Error> for super::Error {
    fn from(err: Error) -> Self {
        super::Error::new(err.kind(), err.summary(), &err)
    }
}

/// Prometheus' own error types pass on; anything else could be a proxy's words.
fn known_error_type(error_type: &str) -> &str {
    match error_type {
        "bad_data" | "execution" | "timeout" | "canceled" | "internal" | "unavailable" | "not_found"
        | "not_acceptable" => error_type,
        _ => "unknown error type",
    }
}

/// A byte count as people write limits: `64 MiB`, `1500 bytes`.
pub fn bytes(n: u64) -> String {
    for (unit, size) in [("GiB", 1u64 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)] {
        if n >= size && n.is_multiple_of(size) {
            return format!("{} {unit}", n / size);
        }
    }
    format!("{n} bytes")
}

/// How to reach Prometheus.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub token_file: Option<PathBuf>,
    pub ca_file: Option<PathBuf>,
    pub client_cert: Option<(PathBuf, PathBuf)>,
    /// A kubeconfig whose current context says how to authenticate to Prometheus
    /// (`--prometheus-auth-config`): token, basic auth, client certificate, CA.
    pub auth_config: Option<PathBuf>,
    pub use_post: bool,
    pub timeout: Duration,
    /// Answers larger than this stop being read and fail (`--prometheus-max-response-bytes`).
    pub max_response_bytes: u64,
    /// Idle keep-alive connections kept for reuse ([`idle_connections`]).
    pub max_idle_connections: usize,
}

/// The idle connections to keep for `max_requests_inflight` concurrent requests (0: no limit):
/// one per request that can be in flight, so a burst at full concurrency finds a connection for
/// each of its queries without a new TCP (and TLS) handshake, up to [`MAX_IDLE_CONNECTIONS`].
pub fn idle_connections(max_requests_inflight: usize) -> usize {
    match max_requests_inflight {
        0 => MAX_IDLE_CONNECTIONS,
        inflight => inflight.min(MAX_IDLE_CONNECTIONS),
    }
}

impl ClientConfig {
    /// A client for `url` without credentials or extra headers, using GET.
    pub fn plain(url: &str, timeout: Duration) -> Self {
        Self {
            url: url.to_owned(),
            headers: Vec::new(),
            token_file: None,
            ca_file: None,
            client_cert: None,
            auth_config: None,
            use_post: false,
            timeout,
            max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
            max_idle_connections: MAX_IDLE_CONNECTIONS,
        }
    }
}

#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    base: String,
    use_post: bool,
    timeout: Duration,
    max_response_bytes: u64,
    credentials: credentials::Credentials,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("url", &self.inner.base).finish()
    }
}

impl Client {
    /// Checks the URL and reads the credential files; a file that does not load is an error here
    /// (later, a changed file that does not load keeps the previous credentials).
    pub fn new(config: &ClientConfig) -> Result<Self> {
        let url = reqwest::Url::parse(&config.url).map_err(|err| Error::Url {
            url: config.url.clone(),
            reason: err.to_string(),
        })?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(Error::Url {
                url: config.url.clone(),
                reason: "scheme must be http or https".into(),
            });
        }
        Ok(Self {
            inner: Arc::new(Inner {
                base: config.url.trim_end_matches('/').to_owned(),
                use_post: config.use_post,
                timeout: config.timeout,
                max_response_bytes: config.max_response_bytes,
                credentials: credentials::Credentials::new(config)?,
            }),
        })
    }

    /// The base URL, for the log (never for callers).
    pub fn url(&self) -> &str {
        &self.inner.base
    }

    /// Runs an instant query at `time`. Scalars come back as one sample without labels.
    pub async fn query(&self, promql: &str, time: SystemTime) -> Result<Vec<Sample>> {
        let params = [
            ("query", promql.to_owned()),
            ("time", format_time(time)),
            ("timeout", format!("{}ms", self.inner.timeout.as_millis())),
        ];
        let result = match self.call::<QueryData>("/api/v1/query", &params, promql).await {
            Ok(QueryData::Vector(samples)) => Ok(samples),
            Ok(QueryData::Scalar(sample)) => Ok(vec![sample]),
            Ok(QueryData::Other(kind)) => Err(Error::UnexpectedResultType(kind)),
            Err(err) => Err(err),
        };
        if let Err(err) = &result {
            err.log(promql);
        }
        result
    }

    /// Lists the label sets of series matching `selector` with samples in `[start, end]`.
    pub async fn series(&self, selector: &str, start: SystemTime, end: SystemTime) -> Result<SeriesList> {
        let params = [
            ("match[]", selector.to_owned()),
            ("start", format_time(start)),
            ("end", format_time(end)),
        ];
        self.call("/api/v1/series", &params, selector).await
    }

    /// Sends a call; when Prometheus refuses the credentials (401, or a TLS handshake that fails)
    /// and their files hold newer ones, sends it once more with those.
    async fn send(&self, path: &str, params: &[(&str, String)]) -> Result<(String, reqwest::Response)> {
        let url = format!("{}{path}", self.inner.base);
        let credentials = self.inner.credentials.current().await;
        let first = self.request(&credentials, &url, params).await;
        let refused = match &first {
            Ok(response) => response.status() == StatusCode::UNAUTHORIZED,
            Err(err) => !err.is_timeout(),
        };
        let newer = match refused {
            true => {
                self.inner
                    .credentials
                    .reload_after_refusal(credentials.generation)
                    .await
            }
            false => None,
        };
        let result = match newer {
            Some(newer) => {
                tracing::info!(%url, generation = newer.generation, "Prometheus refused the request; retrying with the reloaded credentials");
                self.request(&newer, &url, params).await
            }
            None => first,
        };
        match result {
            Ok(response) => Ok((url, response)),
            Err(err) => Err(self.transport_error(&url, err)),
        }
    }

    async fn request(
        &self,
        credentials: &credentials::Loaded,
        url: &str,
        params: &[(&str, String)],
    ) -> reqwest::Result<reqwest::Response> {
        let http = &credentials.http;
        let request = if self.inner.use_post {
            http.request(Method::POST, url).form(params)
        } else {
            http.request(Method::GET, url).query(params)
        };
        request.headers(credentials.headers.clone()).send().await
    }

    /// One API call, its answer decoded while it arrives and read up to the response limit
    /// (`subject`, the query or selector, names it in errors).
    async fn call<T>(&self, path: &str, params: &[(&str, String)], subject: &str) -> Result<T>
    where
        T: for<'de> serde::Deserialize<'de> + Send + 'static,
    {
        let started = std::time::Instant::now();
        let (url, mut response) = self.send(path, params).await?;
        let status = response.status();
        if matches!(
            status,
            StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS
        ) {
            return Err(Error::Unavailable {
                retry_after: retry_after(response.headers()),
                status: status.as_u16(),
                body: lossy(&read_head(&mut response).await),
                url,
            });
        }
        let limit = match status.is_success() {
            true => self.inner.max_response_bytes,
            false => ERROR_BODY_LIMIT,
        };
        let too_large = |url: String| match status.is_success() {
            true => Error::TooLarge {
                url,
                query: subject.to_owned(),
                limit,
            },
            false => Error::BadResponse {
                url,
                status: status.as_u16(),
                body: format!("(over {} of error body)", bytes(limit)),
            },
        };
        // A declared length over the limit is refused before reading a byte.
        if response.content_length().is_some_and(|length| length > limit) {
            return Err(too_large(url));
        }
        let streamed = decode::decode::<Envelope<T>>(response, limit).await;
        tracing::debug!(%url, status = status.as_u16(), elapsed_ms = started.elapsed().as_millis() as u64, "Prometheus call");
        match streamed.result {
            Ok(envelope) => envelope_data(url, status.as_u16(), envelope),
            Err(StreamError::TooLarge) => Err(too_large(url)),
            Err(StreamError::Transport(err)) => Err(self.transport_error(&url, err)),
            Err(StreamError::Decoder(reason)) => Err(Error::Decoder(reason)),
            Err(StreamError::Malformed) => Err(Error::BadResponse {
                url,
                status: status.as_u16(),
                body: lossy(&streamed.head),
            }),
        }
    }

    fn transport_error(&self, url: &str, err: reqwest::Error) -> Error {
        if err.is_timeout() {
            Error::Timeout {
                url: url.to_owned(),
                timeout: self.inner.timeout,
            }
        } else {
            Error::Unreachable {
                url: url.to_owned(),
                reason: error_chain(&err.without_url()),
            }
        }
    }
}

impl MetricsBackend for Client {
    fn query<'a>(&'a self, promql: &'a str, time: SystemTime) -> BoxFuture<'a, super::Result<Vec<Sample>>> {
        Box::pin(async move { Ok(Client::query(self, promql, time).await?) })
    }

    fn series<'a>(
        &'a self,
        selector: &'a str,
        start: SystemTime,
        end: SystemTime,
    ) -> BoxFuture<'a, super::Result<SeriesList>> {
        Box::pin(async move { Ok(Client::series(self, selector, start, end).await?) })
    }

    fn describe(&self) -> &str {
        self.url()
    }
}

/// Prometheus' `Retry-After` in seconds (bounded), or the default.
fn retry_after(headers: &HeaderMap) -> Duration {
    headers
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(|secs| Duration::from_secs(secs).clamp(Duration::from_secs(1), MAX_RETRY_AFTER))
        .unwrap_or(DEFAULT_RETRY_AFTER)
}

/// The first bytes of an error body, for the log; the rest is not read.
async fn read_head(response: &mut reqwest::Response) -> Vec<u8> {
    let mut head = Vec::new();
    while head.len() < 512 {
        match response.chunk().await {
            Ok(Some(chunk)) => head.extend_from_slice(&chunk[..chunk.len().min(512 - head.len())]),
            _ => break,
        }
    }
    head
}

fn lossy(body: &[u8]) -> String {
    String::from_utf8_lossy(body).into_owned()
}

/// `error sending request: client error (Connect): tcp connect error: Connection refused`: the
/// whole cause chain, since reqwest's top-level message alone says little.
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// The data of a successful answer, or Prometheus' error.
fn envelope_data<T>(url: String, status: u16, envelope: Envelope<T>) -> Result<T> {
    match envelope {
        Envelope {
            status: ref s,
            data: Some(data),
            ..
        } if s == "success" => Ok(data),
        Envelope {
            error_type, error, ..
        } => Err(Error::Api {
            url,
            status,
            error_type: error_type.unwrap_or_default(),
            error: error.unwrap_or_else(|| "no error text".into()),
        }),
    }
}

/// Seconds since the epoch with millisecond decimals, as prometheus-adapter sends them.
fn format_time(time: SystemTime) -> String {
    let ms = time
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    format!("{}.{:03}", ms / 1000, ms % 1000)
}

/// For the fuzz target `prometheus_answer`: decodes `body` with the same decoders the client
/// streams answers through, as an instant query's answer and as a series listing, and checks the
/// compact labels of every sample against an independent decode (serde_json's `Value`).
#[doc(hidden)]
pub fn fuzz_decode(body: &[u8]) {
    let _ = serde_json::from_slice::<decode::Envelope<SeriesList>>(body);
    let Ok(envelope) = serde_json::from_slice::<Envelope<decode::QueryData>>(body) else {
        return;
    };
    let Some(decode::QueryData::Vector(samples)) = envelope.data else {
        return;
    };
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(body) else {
        return;
    };
    let Some(results) = value["data"]["result"].as_array() else {
        return;
    };
    assert_eq!(results.len(), samples.len(), "sample count");
    for (sample, result) in samples.iter().zip(results) {
        let Some(metric) = result["metric"].as_object() else {
            continue;
        };
        let expected: Vec<(&str, Option<&str>)> = metric
            .iter()
            .filter(|(name, _)| *name != "__name__")
            .map(|(name, value)| (name.as_str(), value.as_str()))
            .collect();
        let decoded = sample
            .labels
            .iter()
            .filter(|(name, _)| *name != "__name__")
            .count();
        // A JSON object with a repeated key keeps its last value in `Value`; the label set may keep both.
        if decoded != expected.len() {
            continue;
        }
        for (name, value) in expected {
            assert_eq!(sample.labels.get(name), value, "label {name:?}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_format_has_millis() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_565_786_045_323);
        assert_eq!(format_time(t), "1565786045.323");
    }

    #[test]
    fn url_path_prefix_is_kept() {
        let config = ClientConfig::plain("http://thanos:9090/prometheus/", Duration::from_secs(1));
        assert_eq!(
            Client::new(&config).unwrap().url(),
            "http://thanos:9090/prometheus"
        );
        let bad = ClientConfig {
            url: "ftp://x".into(),
            ..config
        };
        assert!(Client::new(&bad).is_err());
    }

    #[test]
    fn summaries_keep_urls_and_prometheus_words_out() {
        let url = "http://prometheus.internal:9090/api/v1/query".to_owned();
        let errors = [
            Error::Api {
                url: url.clone(),
                status: 400,
                error_type: "SECRET".into(),
                error: "SECRET".into(),
            },
            Error::BadResponse {
                url: url.clone(),
                status: 502,
                body: "SECRET".into(),
            },
            Error::Unavailable {
                url: url.clone(),
                status: 503,
                retry_after: Duration::from_secs(7),
                body: "SECRET".into(),
            },
            Error::Unreachable {
                url: url.clone(),
                reason: "SECRET".into(),
            },
            Error::TooLarge {
                url,
                query: "SECRET".into(),
                limit: 64 << 20,
            },
            Error::UnexpectedResultType("SECRET".into()),
        ];
        for err in errors {
            let summary = err.summary();
            assert!(
                !summary.contains("SECRET") && !summary.contains("internal"),
                "{summary}"
            );
        }
    }

    #[test]
    fn retry_after_is_bounded() {
        let headers = |v: &str| HeaderMap::from_iter([(reqwest::header::RETRY_AFTER, v.parse().unwrap())]);
        assert_eq!(retry_after(&headers("7")), Duration::from_secs(7));
        assert_eq!(retry_after(&headers("0")), Duration::from_secs(1));
        assert_eq!(retry_after(&headers("99999999999")), MAX_RETRY_AFTER);
        assert_eq!(
            retry_after(&headers("Wed, 21 Oct 2015 07:28:00 GMT")),
            DEFAULT_RETRY_AFTER
        );
        assert_eq!(retry_after(&HeaderMap::new()), DEFAULT_RETRY_AFTER);
    }

    /// A one-shot HTTP/1.1 server that answers an empty vector and hands back the raw request
    /// head, so a test sees exactly the header lines that went over the wire.
    async fn recording_server() -> (String, tokio::task::JoinHandle<String>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let head = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut head = Vec::new();
            while !head.ends_with(b"\r\n\r\n") {
                let mut byte = [0u8; 1];
                if socket.read(&mut byte).await.unwrap() == 0 {
                    break;
                }
                head.push(byte[0]);
            }
            let body = r#"{"status":"success","data":{"resultType":"vector","result":[]}}"#;
            let answer = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            socket.write_all(answer.as_bytes()).await.unwrap();
            String::from_utf8(head).unwrap()
        });
        (url, head)
    }

    /// prometheus-adapter adds every `--prometheus-header` to an `http.Header` with `Add`, and Go
    /// writes one header line per value: `--prometheus-header foo=bar --prometheus-header foo=baz`
    /// sends `Foo: bar` and `Foo: baz`.
    #[tokio::test]
    async fn repeated_headers_send_every_value_as_its_own_line() {
        let (url, head) = recording_server().await;
        let config = ClientConfig {
            headers: vec![
                ("foo".into(), "bar".into()),
                ("X-Scope-OrgID".into(), "team-a".into()),
                ("foo".into(), "baz".into()),
                // Answers are decoded as they arrive, uncompressed: this stays `identity`.
                ("Accept-Encoding".into(), "gzip".into()),
            ],
            ..ClientConfig::plain(&url, Duration::from_secs(5))
        };
        let client = Client::new(&config).unwrap();
        client.query("up", SystemTime::now()).await.unwrap();
        let head = head.await.unwrap().to_ascii_lowercase();
        let lines: Vec<&str> = head.lines().collect();
        let values = |name: &str| -> Vec<&str> {
            lines
                .iter()
                .filter_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
                .map(str::trim)
                .collect()
        };
        assert_eq!(values("foo"), ["bar", "baz"], "{head}");
        assert_eq!(values("x-scope-orgid"), ["team-a"], "{head}");
        assert_eq!(values("accept-encoding"), ["identity"], "{head}");
    }

    /// The token file's credential replaces an Authorization `--prometheus-header`, as before
    /// repeated headers were kept; without a credential the header goes through.
    #[tokio::test]
    async fn a_credential_authorization_wins_over_the_header() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("token"), "secret").unwrap();
        for token_file in [Some(dir.path().join("token")), None] {
            let (url, head) = recording_server().await;
            let config = ClientConfig {
                headers: vec![("Authorization".into(), "Basic eDp5".into())],
                token_file: token_file.clone(),
                ..ClientConfig::plain(&url, Duration::from_secs(5))
            };
            Client::new(&config)
                .unwrap()
                .query("up", SystemTime::now())
                .await
                .unwrap();
            let head = head.await.unwrap();
            let authorization: Vec<&str> = head
                .lines()
                .filter(|line| line.to_ascii_lowercase().starts_with("authorization:"))
                .collect();
            let expected = match token_file {
                Some(_) => "Bearer secret",
                None => "Basic eDp5",
            };
            assert_eq!(authorization, [format!("authorization: {expected}")], "{head}");
        }
    }

    #[test]
    fn byte_counts() {
        assert_eq!(bytes(64 << 20), "64 MiB");
        assert_eq!(bytes(1 << 30), "1 GiB");
        assert_eq!(bytes(1536), "1536 bytes");
        assert_eq!(bytes(2048), "2 KiB");
        assert_eq!(bytes(1000), "1000 bytes");
    }
}
