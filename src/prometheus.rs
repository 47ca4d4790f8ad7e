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

/// How to reach Prometheus.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub token_file: Option<PathBuf>,
    pub ca_file: Option<PathBuf>,
    pub client_cert: Option<(PathBuf, PathBuf)>,
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
    pub async fn series(
        &self,
        selector: &str,
        start: SystemTime,
        end: SystemTime,
    ) -> Result<Vec<BTreeMap<String, String>>> {
        let params = [
            ("match[]", selector.to_owned()),
            ("start", format_time(start)),
            ("end", format_time(end)),
        ];
        self.call("/api/v1/series", &params).await
    }

    async fn call<T: for<'de> Deserialize<'de>>(&self, path: &str, params: &[(&str, String)]) -> Result<T> {
        let url = format!("{}{path}", self.base);
        let request = if self.use_post {
            self.http.request(Method::POST, &url).form(params)
        } else {
            self.http.request(Method::GET, &url).query(params)
        };
        let started = std::time::Instant::now();
        let response = request
            .send()
            .await
            .map_err(|err| self.transport_error(&url, err))?;
        let status = response.status().as_u16();
        let body = response
            .bytes()
            .await
            .map_err(|err| self.transport_error(&url, err))?;
        tracing::debug!(%url, status, elapsed_ms = started.elapsed().as_millis() as u64, "Prometheus call");
        let envelope: Envelope<T> = match serde_json::from_slice(&body) {
            Ok(envelope) => envelope,
            Err(_) => {
                let body = String::from_utf8_lossy(&body[..body.len().min(512)]).into_owned();
                return Err(Error::BadResponse { status, body });
            }
        };
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
    fn time_format_has_millis() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_565_786_045_323);
        assert_eq!(format_time(t), "1565786045.323");
    }

    #[test]
    fn url_path_prefix_is_kept() {
        let config = ClientConfig {
            url: "http://thanos:9090/prometheus/".into(),
            headers: vec![],
            token_file: None,
            ca_file: None,
            client_cert: None,
            use_post: false,
            timeout: Duration::from_secs(1),
        };
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
