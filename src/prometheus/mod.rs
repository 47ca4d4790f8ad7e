//! A small client for the Prometheus HTTP API: instant queries and series lookups.

use std::{collections::BTreeMap, path::PathBuf, time::Duration, time::SystemTime};

use reqwest::{
    Method,
    header::{ACCEPT_ENCODING, AUTHORIZATION, HeaderMap, HeaderName, HeaderValue},
};
use serde::Deserialize;

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
    #[error("Prometheus answered HTTP {status}: {error_type}: {error}")]
    Api {
        status: u16,
        error_type: String,
        error: String,
    },
    #[error("Prometheus answered HTTP {status} with a body that is not its API's JSON: {body}")]
    BadResponse { status: u16, body: String },
    #[error("Prometheus returned a {0} result where an instant vector or scalar was expected")]
    UnexpectedResultType(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// What went wrong in a few words, without URLs or bodies: safe for `/readyz?verbose`, which
    /// anyone who can reach the adapter may read.
    pub fn summary(&self) -> String {
        match self {
            Self::Url { .. } | Self::ReadFile { .. } | Self::Setup(_) => {
                "the Prometheus client is misconfigured".into()
            }
            Self::Unreachable { .. } => "Prometheus is unreachable".into(),
            Self::Timeout { timeout, .. } => format!("Prometheus did not answer within {timeout:?}"),
            Self::Api {
                status, error_type, ..
            } => format!("Prometheus answered HTTP {status} ({error_type})"),
            Self::BadResponse { status, .. } => {
                format!("Prometheus answered HTTP {status} with a body that is not its API's JSON")
            }
            Self::UnexpectedResultType(kind) => format!("Prometheus returned a {kind} result"),
        }
    }
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
}

/// One sample of an instant vector.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub labels: BTreeMap<String, String>,
    /// Seconds since the Unix epoch, as Prometheus reports it (millisecond precision).
    pub timestamp: f64,
    pub value: f64,
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
        }
    }
}

#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    use_post: bool,
    timeout: Duration,
}

impl Client {
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
        let base = config.url.trim_end_matches('/').to_owned();

        let mut headers = HeaderMap::new();
        // Small query answers cost Prometheus more to gzip than to send (research perf-anchors).
        headers.insert(ACCEPT_ENCODING, HeaderValue::from_static("identity"));
        for (key, value) in &config.headers {
            let name = HeaderName::try_from(key.as_str())
                .map_err(|err| Error::Setup(format!("header name {key:?}: {err}")))?;
            let value = HeaderValue::try_from(value.as_str())
                .map_err(|err| Error::Setup(format!("header {key} value: {err}")))?;
            headers.append(name, value);
        }
        if let Some(path) = &config.token_file {
            let token = read(path)?;
            let token = String::from_utf8_lossy(&token).trim().to_owned();
            let mut value = HeaderValue::try_from(format!("Bearer {token}"))
                .map_err(|err| Error::Setup(format!("token in {}: {err}", path.display())))?;
            value.set_sensitive(true);
            headers.insert(AUTHORIZATION, value);
        }

        let mut builder = reqwest::Client::builder()
            .default_headers(headers)
            .timeout(config.timeout)
            .connect_timeout(config.timeout.min(Duration::from_secs(5)))
            .pool_idle_timeout(Duration::from_secs(90))
            .tcp_nodelay(true);
        if let Some(path) = &config.ca_file {
            let certs = reqwest::Certificate::from_pem_bundle(&read(path)?)
                .map_err(|err| Error::Setup(format!("CA bundle {}: {err}", path.display())))?;
            builder = builder.tls_certs_only(certs);
        }
        if let Some((cert, key)) = &config.client_cert {
            let mut pem = read(cert)?;
            pem.push(b'\n');
            pem.extend(read(key)?);
            let identity = reqwest::Identity::from_pem(&pem)
                .map_err(|err| Error::Setup(format!("client certificate {}: {err}", cert.display())))?;
            builder = builder.identity(identity);
        }
        if let Some(path) = &config.auth_config {
            let auth = kubeconfig_auth(path)?;
            if let Some(ca) = auth.ca_pem {
                let certs = reqwest::Certificate::from_pem_bundle(&ca)
                    .map_err(|err| Error::Setup(format!("CA in {}: {err}", path.display())))?;
                builder = builder.tls_certs_only(certs);
            }
            if let Some(pem) = auth.identity_pem {
                let identity = reqwest::Identity::from_pem(&pem).map_err(|err| {
                    Error::Setup(format!("client certificate in {}: {err}", path.display()))
                })?;
                builder = builder.identity(identity);
            }
            if auth.insecure {
                builder = builder.tls_danger_accept_invalid_certs(true);
            }
            if let Some(mut value) = auth.authorization {
                value.set_sensitive(true);
                let mut headers = HeaderMap::new();
                headers.insert(AUTHORIZATION, value);
                builder = builder.default_headers(headers);
            }
        }
        let http = builder.build().map_err(|err| Error::Setup(err.to_string()))?;
        Ok(Self {
            http,
            base,
            use_post: config.use_post,
            timeout: config.timeout,
        })
    }

    /// The base URL, for messages.
    pub fn url(&self) -> &str {
        &self.base
    }

    /// Runs an instant query at `time`. Scalars come back as one sample without labels.
    pub async fn query(&self, promql: &str, time: SystemTime) -> Result<Vec<Sample>> {
        let params = [
            ("query", promql.to_owned()),
            ("time", format_time(time)),
            ("timeout", format!("{}ms", self.timeout.as_millis())),
        ];
        let data: QueryData = self.call("/api/v1/query", &params).await?;
        match data {
            QueryData::Vector(samples) => Ok(samples.into_iter().map(RawSample::into_sample).collect()),
            QueryData::Scalar(pair) => Ok(vec![Sample {
                labels: BTreeMap::new(),
                timestamp: pair.0,
                value: parse_value(&pair.1),
            }]),
            QueryData::Matrix(_) => Err(Error::UnexpectedResultType("matrix".into())),
            QueryData::String(_) => Err(Error::UnexpectedResultType("string".into())),
        }
    }

    /// Lists the label sets of series matching `selector` with samples in `[start, end]`.
    pub async fn series(&self, selector: &str, start: SystemTime, end: SystemTime) -> Result<SeriesList> {
        let params = [
            ("match[]", selector.to_owned()),
            ("start", format_time(start)),
            ("end", format_time(end)),
        ];
        self.call_series(&params).await
    }

    async fn send(&self, path: &str, params: &[(&str, String)]) -> Result<(String, reqwest::Response)> {
        let url = format!("{}{path}", self.base);
        let request = if self.use_post {
            self.http.request(Method::POST, &url).form(params)
        } else {
            self.http.request(Method::GET, &url).query(params)
        };
        let response = request
            .send()
            .await
            .map_err(|err| self.transport_error(&url, err))?;
        Ok((url, response))
    }

    /// A small API call: the body is read whole, then decoded.
    async fn call<T: for<'de> Deserialize<'de>>(&self, path: &str, params: &[(&str, String)]) -> Result<T> {
        let started = std::time::Instant::now();
        let (url, mut response) = self.send(path, params).await?;
        let status = response.status().as_u16();
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|err| self.transport_error(&url, err))?
        {
            body.extend_from_slice(&chunk);
        }
        tracing::debug!(%url, status, elapsed_ms = started.elapsed().as_millis() as u64, "Prometheus call");
        match serde_json::from_slice(&body) {
            Ok(envelope) => envelope_data(status, envelope),
            Err(_) => Err(bad_response(status, &body)),
        }
    }

    /// A series listing, decoded while it arrives: memory holds a few chunks of the body and the
    /// distinct shapes, however many series Prometheus lists.
    async fn call_series(&self, params: &[(&str, String)]) -> Result<SeriesList> {
        let started = std::time::Instant::now();
        let (url, mut response) = self.send("/api/v1/series", params).await?;
        let status = response.status().as_u16();
        let (chunks, receiver) = tokio::sync::mpsc::channel::<bytes::Bytes>(8);
        let decoder = tokio::task::spawn_blocking(move || {
            let reader = std::io::BufReader::with_capacity(
                64 * 1024,
                ChunkReader {
                    receiver,
                    current: bytes::Bytes::new(),
                },
            );
            serde_json::from_reader::<_, Envelope<SeriesList>>(reader)
        });
        let mut head = Vec::new();
        let mut transport = Ok(());
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    if head.len() < 512 {
                        head.extend_from_slice(&chunk[..chunk.len().min(512 - head.len())]);
                    }
                    // The decoder stops reading on malformed input; its error is reported below.
                    if chunks.send(chunk).await.is_err() {
                        break;
                    }
                }
                Ok(None) => break,
                Err(err) => {
                    transport = Err(self.transport_error(&url, err));
                    break;
                }
            }
        }
        drop(chunks);
        let decoded = decoder
            .await
            .map_err(|err| Error::Setup(format!("series decoder stopped: {err}")))?;
        transport?;
        tracing::debug!(%url, status, elapsed_ms = started.elapsed().as_millis() as u64, "Prometheus call");
        match decoded {
            Ok(envelope) => envelope_data(status, envelope),
            Err(_) => Err(bad_response(status, &head)),
        }
    }

    fn transport_error(&self, url: &str, err: reqwest::Error) -> Error {
        if err.is_timeout() {
            Error::Timeout {
                url: url.to_owned(),
                timeout: self.timeout,
            }
        } else {
            Error::Unreachable {
                url: url.to_owned(),
                reason: error_chain(&err.without_url()),
            }
        }
    }
}

/// The distinct shapes (series name and label names) of a series listing. Label values are never
/// kept: naming and resource association need only names, and prometheus-adapter's habit of
/// holding every label set is what makes its memory grow with the number of series.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SeriesList {
    pub shapes: Vec<SeriesShape>,
    /// How many series Prometheus listed.
    pub series: usize,
}

/// A series name and its label names (sorted, without `__name__`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SeriesShape {
    pub name: String,
    pub labels: Vec<String>,
}

impl<'de> Deserialize<'de> for SeriesList {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        struct ListVisitor;
        impl<'de> serde::de::Visitor<'de> for ListVisitor {
            type Value = SeriesList;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a list of label sets")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> std::result::Result<SeriesList, A::Error> {
                // Shapes by hash; most series repeat a shape already seen, so only new ones allocate.
                let mut known: std::collections::HashMap<u64, Vec<SeriesShape>> = Default::default();
                let mut series = 0;
                while let Some(shape) = seq.next_element::<Option<BorrowedShape<'de>>>()? {
                    series += 1;
                    let Some(shape) = shape else { continue };
                    let bucket = known.entry(shape.hash()).or_default();
                    if !bucket.iter().any(|k| shape.is(k)) {
                        bucket.push(shape.to_owned());
                    }
                }
                let mut shapes: Vec<SeriesShape> = known.into_values().flatten().collect();
                shapes.sort();
                Ok(SeriesList { shapes, series })
            }
        }
        deserializer.deserialize_seq(ListVisitor)
    }
}

/// A string that borrows from the input unless it had escapes (serde's own `Cow` always copies).
struct Text<'de>(std::borrow::Cow<'de, str>);

impl<'de> Deserialize<'de> for Text<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        struct TextVisitor;
        impl<'de> serde::de::Visitor<'de> for TextVisitor {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> std::result::Result<Text<'de>, E> {
                Ok(Text(std::borrow::Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> std::result::Result<Text<'de>, E> {
                Ok(Text(std::borrow::Cow::Owned(v.to_owned())))
            }
        }
        deserializer.deserialize_str(TextVisitor)
    }
}

/// One label set of a listing, borrowing from the response body where it can.
struct BorrowedShape<'de> {
    name: std::borrow::Cow<'de, str>,
    labels: Vec<std::borrow::Cow<'de, str>>,
}

impl BorrowedShape<'_> {
    fn hash(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        self.name.hash(&mut hasher);
        self.labels.hash(&mut hasher);
        hasher.finish()
    }

    fn is(&self, known: &SeriesShape) -> bool {
        known.name == self.name
            && known.labels.len() == self.labels.len()
            && known.labels.iter().zip(&self.labels).all(|(a, b)| a == b)
    }

    fn to_owned(&self) -> SeriesShape {
        SeriesShape {
            name: self.name.to_string(),
            labels: self.labels.iter().map(|l| l.to_string()).collect(),
        }
    }
}

impl<'de> Deserialize<'de> for BorrowedShape<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        struct ShapeVisitor;
        impl<'de> serde::de::Visitor<'de> for ShapeVisitor {
            type Value = BorrowedShape<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a label set")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<Self::Value, A::Error> {
                let mut name = std::borrow::Cow::Borrowed("");
                let mut labels = Vec::new();
                while let Some(Text(key)) = map.next_key::<Text<'de>>()? {
                    if key == "__name__" {
                        name = map.next_value::<Text<'de>>()?.0;
                    } else {
                        map.next_value::<serde::de::IgnoredAny>()?;
                        labels.push(key);
                    }
                }
                labels.sort();
                Ok(BorrowedShape { name, labels })
            }
        }
        deserializer.deserialize_map(ShapeVisitor)
    }
}

/// What a kubeconfig's current context says about reaching Prometheus.
#[derive(Default)]
struct KubeconfigAuth {
    ca_pem: Option<Vec<u8>>,
    identity_pem: Option<Vec<u8>>,
    authorization: Option<HeaderValue>,
    insecure: bool,
}

/// Reads the current context of a kubeconfig, as prometheus-adapter's `--prometheus-auth-config`
/// does (the server URL still comes from `--prometheus-url`).
fn kubeconfig_auth(path: &PathBuf) -> Result<KubeconfigAuth> {
    use base64::Engine as _;
    #[derive(Deserialize, Default)]
    #[serde(rename_all = "kebab-case", default)]
    struct File {
        current_context: String,
        contexts: Vec<Named<Context>>,
        clusters: Vec<Named<Cluster>>,
        users: Vec<Named<User>>,
    }
    #[derive(Deserialize, Default)]
    #[serde(default)]
    struct Named<T: Default> {
        name: String,
        #[serde(alias = "context", alias = "cluster", alias = "user")]
        value: T,
    }
    #[derive(Deserialize, Default)]
    #[serde(default)]
    struct Context {
        cluster: String,
        user: String,
    }
    #[derive(Deserialize, Default)]
    #[serde(rename_all = "kebab-case", default)]
    struct Cluster {
        certificate_authority: Option<PathBuf>,
        certificate_authority_data: Option<String>,
        insecure_skip_tls_verify: bool,
    }
    #[derive(Deserialize, Default)]
    #[serde(rename_all = "kebab-case", default)]
    struct User {
        token: Option<String>,
        token_file: Option<PathBuf>,
        username: Option<String>,
        password: Option<String>,
        client_certificate: Option<PathBuf>,
        client_certificate_data: Option<String>,
        client_key: Option<PathBuf>,
        client_key_data: Option<String>,
    }
    let setup = |what: String| Error::Setup(format!("--prometheus-auth-config {}: {what}", path.display()));
    let text = std::fs::read_to_string(path).map_err(|source| Error::ReadFile {
        path: path.clone(),
        source,
    })?;
    let file: File = serde_saphyr::from_str(&text).map_err(|err| setup(err.to_string()))?;
    let context = file
        .contexts
        .iter()
        .find(|c| c.name == file.current_context)
        .ok_or_else(|| {
            setup(format!(
                "no context named {:?} (current-context)",
                file.current_context
            ))
        })?;
    let cluster = file
        .clusters
        .iter()
        .find(|c| c.name == context.value.cluster)
        .map(|c| &c.value);
    let user = file
        .users
        .iter()
        .find(|u| u.name == context.value.user)
        .map(|u| &u.value);
    let decode = |data: &str| {
        base64::engine::general_purpose::STANDARD
            .decode(data.trim())
            .map_err(|err| setup(format!("base64: {err}")))
    };
    let inline_or_file = |data: &Option<String>, file: &Option<PathBuf>| -> Result<Option<Vec<u8>>> {
        match (data, file) {
            (Some(data), _) => decode(data).map(Some),
            (None, Some(file)) => read(file).map(Some),
            (None, None) => Ok(None),
        }
    };
    let mut auth = KubeconfigAuth::default();
    if let Some(cluster) = cluster {
        auth.ca_pem = inline_or_file(
            &cluster.certificate_authority_data,
            &cluster.certificate_authority,
        )?;
        auth.insecure = cluster.insecure_skip_tls_verify;
    }
    if let Some(user) = user {
        let cert = inline_or_file(&user.client_certificate_data, &user.client_certificate)?;
        let key = inline_or_file(&user.client_key_data, &user.client_key)?;
        if let (Some(mut cert), Some(key)) = (cert, key) {
            cert.push(b'\n');
            cert.extend(key);
            auth.identity_pem = Some(cert);
        }
        let token = match (&user.token, &user.token_file) {
            (Some(token), _) => Some(token.trim().to_owned()),
            (None, Some(file)) => Some(String::from_utf8_lossy(&read(file)?).trim().to_owned()),
            (None, None) => None,
        };
        let authorization = match (token, &user.username, &user.password) {
            (Some(token), _, _) => Some(format!("Bearer {token}")),
            (None, Some(name), Some(password)) => Some(format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{name}:{password}"))
            )),
            _ => None,
        };
        if let Some(value) = authorization {
            auth.authorization = Some(HeaderValue::try_from(value).map_err(|err| setup(err.to_string()))?);
        }
    }
    Ok(auth)
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
fn envelope_data<T>(status: u16, envelope: Envelope<T>) -> Result<T> {
    match envelope {
        Envelope {
            status: ref s,
            data: Some(data),
            ..
        } if s == "success" => Ok(data),
        Envelope {
            error_type, error, ..
        } => Err(Error::Api {
            status,
            error_type: error_type.unwrap_or_default(),
            error: error.unwrap_or_else(|| "no error text".into()),
        }),
    }
}

fn bad_response(status: u16, body: &[u8]) -> Error {
    Error::BadResponse {
        status,
        body: String::from_utf8_lossy(&body[..body.len().min(512)]).into_owned(),
    }
}

/// Feeds body chunks from the async side to a blocking JSON decoder.
struct ChunkReader {
    receiver: tokio::sync::mpsc::Receiver<bytes::Bytes>,
    current: bytes::Bytes,
}

impl std::io::Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            match self.receiver.blocking_recv() {
                Some(chunk) => self.current = chunk,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}

fn read(path: &PathBuf) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|source| Error::ReadFile {
        path: path.clone(),
        source,
    })
}

/// Seconds since the epoch with millisecond decimals, as prometheus-adapter sends them.
fn format_time(time: SystemTime) -> String {
    let ms = time
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    format!("{}.{:03}", ms / 1000, ms % 1000)
}

/// Prometheus writes sample values as strings, including `NaN`, `+Inf` and `-Inf`.
fn parse_value(s: &str) -> f64 {
    match s {
        "+Inf" | "Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        _ => s.parse().unwrap_or(f64::NAN),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Envelope<T> {
    status: String,
    data: Option<T>,
    error_type: Option<String>,
    error: Option<String>,
}

#[derive(Deserialize)]
#[serde(tag = "resultType", content = "result", rename_all = "lowercase")]
enum QueryData {
    Vector(Vec<RawSample>),
    Scalar(ValuePair),
    Matrix(serde::de::IgnoredAny),
    String(serde::de::IgnoredAny),
}

#[derive(Deserialize)]
struct ValuePair(f64, String);

#[derive(Deserialize)]
struct RawSample {
    metric: BTreeMap<String, String>,
    value: ValuePair,
}

impl RawSample {
    fn into_sample(self) -> Sample {
        Sample {
            labels: self.metric,
            timestamp: self.value.0,
            value: parse_value(&self.value.1),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_vector_and_special_values() {
        let body = r#"{"status":"success","data":{"resultType":"vector","result":[
            {"metric":{"pod":"a"},"value":[1700000000.123,"1.5"]},
            {"metric":{"pod":"b"},"value":[1700000000.123,"NaN"]},
            {"metric":{"pod":"c"},"value":[1700000000.123,"+Inf"]}]}}"#;
        let env: Envelope<QueryData> = serde_json::from_str(body).unwrap();
        let QueryData::Vector(samples) = env.data.unwrap() else {
            panic!("vector expected")
        };
        let samples: Vec<Sample> = samples.into_iter().map(RawSample::into_sample).collect();
        assert_eq!(samples[0].value, 1.5);
        assert_eq!(samples[0].labels["pod"], "a");
        assert!(samples[1].value.is_nan());
        assert_eq!(samples[2].value, f64::INFINITY);
    }

    #[test]
    fn decodes_errors() {
        let body = r#"{"status":"error","errorType":"bad_data","error":"parse error"}"#;
        let env: Envelope<QueryData> = serde_json::from_str(body).unwrap();
        assert_eq!(env.error_type.as_deref(), Some("bad_data"));
        assert!(env.data.is_none());
    }

    #[test]
    fn series_listings_keep_only_distinct_shapes() {
        let body = r#"{"status":"success","data":[
            {"__name__":"http_requests_total","namespace":"a","pod":"p1"},
            {"__name__":"http_requests_total","pod":"p2","namespace":"b"},
            {"__name__":"queue_depth","namespace":"a"}]}"#;
        let env: Envelope<SeriesList> = serde_json::from_str(body).unwrap();
        let list = env.data.unwrap();
        assert_eq!(list.series, 3);
        let shape = |name: &str, labels: &[&str]| SeriesShape {
            name: name.into(),
            labels: labels.iter().map(|l| (*l).to_owned()).collect(),
        };
        assert_eq!(
            list.shapes,
            [
                shape("http_requests_total", &["namespace", "pod"]),
                shape("queue_depth", &["namespace"])
            ]
        );
    }

    #[test]
    fn time_format_has_millis() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_565_786_045_323);
        assert_eq!(format_time(t), "1565786045.323");
    }

    #[test]
    fn kubeconfig_auth_reads_the_current_context() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("prometheus.kubeconfig");
        std::fs::write(
            &path,
            "apiVersion: v1\nkind: Config\ncurrent-context: prom\ncontexts:\n- name: other\n  context: {cluster: c, user: nobody}\n\
             - name: prom\n  context: {cluster: c, user: reader}\nclusters:\n- name: c\n  cluster: {server: 'https://ignored', insecure-skip-tls-verify: true}\n\
             users:\n- name: nobody\n  user: {token: wrong}\n- name: reader\n  user: {username: alice, password: secret}\n",
        )
        .unwrap();
        let auth = kubeconfig_auth(&path).unwrap();
        assert_eq!(
            auth.authorization.unwrap().to_str().unwrap(),
            "Basic YWxpY2U6c2VjcmV0"
        );
        assert!(auth.insecure);
        assert!(auth.ca_pem.is_none() && auth.identity_pem.is_none());
        std::fs::write(&path, "current-context: missing\n").unwrap();
        assert!(kubeconfig_auth(&path).is_err());
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
}
