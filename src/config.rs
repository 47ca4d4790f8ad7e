//! Command-line flags, named as prometheus-adapter names them, and the small parsers they need.

use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    time::Duration,
};

use anyhow::Context as _;
use clap::{Parser, ValueEnum};

pub use crate::telemetry::LogFormat;
use crate::{
    auth::AuthnConfig,
    backend::prometheus,
    cluster::RateLimit,
    rules::promql::InRegex,
    server::{self, DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_REQUESTS_INFLIGHT},
};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid --prometheus-header {0:?}: expected Key=Value")]
    Header(String),
    #[error(
        "--metrics-max-age ({max_age:?}) must not be shorter than --metrics-relist-interval ({relist:?})"
    )]
    MaxAge { max_age: Duration, relist: Duration },
    #[error("--rate-interval must be at least 1ms")]
    RateInterval,
    #[error(
        "--query-cache-ttl ({ttl:?}) must not be longer than --rate-interval ({rate:?}): a cached answer would be older than the window it rates over; shorten the TTL (0s turns the cache off)"
    )]
    QueryCacheTtl { ttl: Duration, rate: Duration },
    #[error("--{0} must be longer than 0s: a review needs time to answer")]
    ZeroTimeout(&'static str),
    #[error(
        "invalid byte size {0:?}: expected a positive number of bytes, optionally with Ki, Mi or Gi (e.g. 64Mi)"
    )]
    ByteSize(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The HTTP method used for Prometheus API calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
#[value(rename_all = "UPPER")]
pub enum PrometheusVerb {
    Get,
    Post,
}

/// Subcommands; without one the adapter serves.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Command {
    /// Validate a rules file (errors name the line); with --prometheus-url, run one discovery and
    /// print the discovery document and the PromQL a sample request of each metric runs.
    CheckConfig {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        prometheus_url: Option<String>,
        /// Namespace of the sample requests.
        #[arg(long, default_value = "default")]
        namespace: String,
    },
}

/// Flags of the `custom-metrics-adapter` binary.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "custom-metrics-adapter",
    version,
    about = "Kubernetes custom metrics API server backed by Prometheus"
)]
pub struct Args {
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Port to serve HTTPS on.
    #[arg(long, default_value_t = 6443)]
    pub secure_port: u16,
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0")]
    pub bind_address: IpAddr,
    /// Serving certificate (PEM). Without it a self-signed certificate is kept in --cert-dir.
    #[arg(long, requires = "tls_private_key_file")]
    pub tls_cert_file: Option<PathBuf>,
    /// Private key of --tls-cert-file (PEM).
    #[arg(long, requires = "tls_cert_file")]
    pub tls_private_key_file: Option<PathBuf>,
    /// Directory for the self-signed certificate (apiserver.crt, apiserver.key); reused on restart.
    #[arg(long, default_value = "apiserver.local.config/certificates")]
    pub cert_dir: PathBuf,
    /// Serve HTTP/1.1 only (CVE-2023-44487 mitigation).
    #[arg(long)]
    pub disable_http2: bool,
    /// HTTP/2 streams a client may open at once on one connection (0: kube-apiserver's default, 100).
    #[arg(long, default_value_t = 0)]
    pub http2_max_streams_per_connection: u32,
    /// Requests served at once, health probes apart; more are answered 429 with Retry-After: 1
    /// (0: no limit).
    #[arg(long, default_value_t = DEFAULT_MAX_REQUESTS_INFLIGHT)]
    pub max_requests_inflight: usize,
    /// Client connections open at once; more wait in the listen backlog until one closes
    /// (0: no limit). The default keeps the worst case within a 128 MiB memory limit.
    #[arg(long, default_value_t = DEFAULT_MAX_CONNECTIONS)]
    pub max_connections: usize,

    /// Prometheus base URL; a path prefix is kept (e.g. http://thanos:9090/prometheus).
    #[arg(long, default_value = "https://localhost")]
    pub prometheus_url: String,
    /// Extra header for every Prometheus call, Key=Value (repeatable).
    #[arg(long = "prometheus-header", value_name = "KEY=VALUE")]
    pub prometheus_headers: Vec<String>,
    /// File holding a bearer token for Prometheus.
    #[arg(long)]
    pub prometheus_token_file: Option<PathBuf>,
    /// CA bundle (PEM) to verify Prometheus' serving certificate.
    #[arg(long)]
    pub prometheus_ca_file: Option<PathBuf>,
    /// Client certificate (PEM) presented to Prometheus.
    #[arg(long, requires = "prometheus_client_tls_key_file")]
    pub prometheus_client_tls_cert_file: Option<PathBuf>,
    /// Key of --prometheus-client-tls-cert-file (PEM).
    #[arg(long, requires = "prometheus_client_tls_cert_file")]
    pub prometheus_client_tls_key_file: Option<PathBuf>,
    /// HTTP method for Prometheus API calls.
    #[arg(long, value_enum, default_value = "GET")]
    pub prometheus_verb: PrometheusVerb,
    /// Timeout of every Prometheus call.
    #[arg(long, default_value = "10s", value_parser = crate::duration::parse_go)]
    pub prometheus_timeout: Duration,
    /// Larger Prometheus answers stop being read and fail: bytes, or with a Ki, Mi or Gi suffix.
    #[arg(long, default_value = "64Mi", value_parser = parse_byte_size)]
    pub prometheus_max_response_bytes: u64,
    /// How long a query's answer is served from memory to identical queries (0s: off; identical
    /// queries in flight at once share one Prometheus call either way). At most --rate-interval.
    #[arg(long, default_value = "0s", value_parser = crate::duration::parse_go)]
    pub query_cache_ttl: Duration,

    /// Window of rate() for counters.
    #[arg(long, default_value = "2m", value_parser = crate::duration::parse_go)]
    pub rate_interval: Duration,
    /// How often the list of available metrics is refreshed from Prometheus.
    #[arg(long, default_value = "1m", value_parser = crate::duration::parse_go)]
    pub metrics_relist_interval: Duration,
    /// Only series with samples this recent are discovered (default: the relist interval).
    #[arg(long, value_parser = crate::duration::parse_go)]
    pub metrics_max_age: Option<Duration>,

    /// YAML file listing the namespaces, pods and services that exist (see README).
    #[arg(long)]
    pub objects_file: Option<PathBuf>,

    /// Log line format (`--logging-format` is prometheus-adapter's name for it).
    #[arg(long, alias = "logging-format", value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// klog-style verbosity: 0-4 info, 5-7 debug (every Prometheus call), 8+ trace. `RUST_LOG` wins.
    #[arg(long, short = 'v', default_value_t = 0)]
    pub v: u8,

    /// Let a single-value `in` in a metric label selector pass through as a raw regex, as
    /// prometheus-adapter does (`code in (5..)` → `code=~"5.."`). Off: values are escaped, so
    /// callers cannot inject regexes.
    #[arg(long)]
    pub metric_selector_regex_passthrough: bool,

    /// prometheus-adapter's rules file (rules, externalRules, resourceRules). Without it the
    /// built-in default rules apply.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Authenticate to Prometheus with the pod's service-account token and cluster CA.
    #[arg(long, conflicts_with = "prometheus_auth_config")]
    pub prometheus_auth_incluster: bool,
    /// kubeconfig file whose current context describes how to reach Prometheus (token, client
    /// certificate, basic auth, CA).
    #[arg(long)]
    pub prometheus_auth_config: Option<PathBuf>,

    /// Kubeconfig for watching objects and API discovery (default: $KUBECONFIG, ~/.kube/config, in-cluster).
    #[arg(long)]
    pub lister_kubeconfig: Option<PathBuf>,
    /// Kubeconfig for TokenReview and the extension-apiserver-authentication ConfigMap.
    #[arg(long)]
    pub authentication_kubeconfig: Option<PathBuf>,
    /// Kubeconfig for SubjectAccessReview.
    #[arg(long)]
    pub authorization_kubeconfig: Option<PathBuf>,
    /// How often Kubernetes API discovery is refreshed (resources added later, groups that were
    /// unavailable); an unknown resource in a request also refreshes it, at most every 5 s.
    #[arg(long, default_value = "10m", value_parser = crate::duration::parse_go)]
    pub discovery_interval: Duration,
    /// Requests per second to the Kubernetes API (0 = unlimited).
    #[arg(long, default_value_t = 5.0)]
    pub client_qps: f32,
    /// Burst of requests to the Kubernetes API above --client-qps.
    #[arg(long, default_value_t = 10)]
    pub client_burst: u32,

    /// Do not read kube-system/extension-apiserver-authentication; use only the flags below.
    #[arg(long)]
    pub authentication_skip_lookup: bool,
    /// Start even if that ConfigMap cannot be read (everyone is then anonymous unless flags say otherwise).
    #[arg(long)]
    pub authentication_tolerate_lookup_failure: bool,
    /// How long TokenReview answers are cached.
    #[arg(long, default_value = "10s", value_parser = crate::duration::parse_go)]
    pub authentication_token_webhook_cache_ttl: Duration,
    /// How long a TokenReview may take; a bearer token that cannot be checked in time is answered
    /// 401 (k8s.io/apiserver's TokenRequestTimeout, which has no flag there).
    #[arg(long, default_value = "10s", value_parser = crate::duration::parse_go)]
    pub authentication_timeout: Duration,
    /// CA bundle for client certificates (user = CN, groups = O).
    #[arg(long)]
    pub client_ca_file: Option<PathBuf>,
    /// CA bundle that signs the front proxy's (kube-aggregator's) client certificate.
    #[arg(long)]
    pub requestheader_client_ca_file: Option<PathBuf>,
    /// Common names allowed for the front proxy's certificate (empty: any the CA signed).
    #[arg(long, value_delimiter = ',')]
    pub requestheader_allowed_names: Vec<String>,
    /// Headers holding the user name.
    #[arg(long, value_delimiter = ',')]
    pub requestheader_username_headers: Vec<String>,
    /// Headers holding the groups.
    #[arg(long, value_delimiter = ',')]
    pub requestheader_group_headers: Vec<String>,
    /// Header prefixes for extra user attributes.
    #[arg(long, value_delimiter = ',')]
    pub requestheader_extra_headers_prefix: Vec<String>,
    /// Headers holding the user's UID.
    #[arg(long, value_delimiter = ',')]
    pub requestheader_uid_headers: Vec<String>,
    /// Paths that skip authorization.
    #[arg(long, value_delimiter = ',', default_value = "/healthz,/readyz,/livez")]
    pub authorization_always_allow_paths: Vec<String>,
    /// How long an allowed SubjectAccessReview is cached.
    #[arg(long, default_value = "10s", value_parser = crate::duration::parse_go)]
    pub authorization_webhook_cache_authorized_ttl: Duration,
    /// How long a denied SubjectAccessReview is cached.
    #[arg(long, default_value = "10s", value_parser = crate::duration::parse_go)]
    pub authorization_webhook_cache_unauthorized_ttl: Duration,
    /// How long a SubjectAccessReview may take; a request whose review does not finish in time is
    /// answered 503 with Retry-After (k8s.io/apiserver's ClientTimeout, which has no flag there).
    #[arg(long, default_value = "10s", value_parser = crate::duration::parse_go)]
    pub authorization_timeout: Duration,
    /// Serve everyone without authentication or authorization. For local runs only: anyone who
    /// can reach the port reads every metric.
    #[arg(long)]
    pub insecure_allow_anonymous: bool,
    /// How often a resource RBAC keeps the adapter from listing is looked at again, and how long a
    /// SelfSubjectAccessReview's answer stands. Not a flag (a few minutes suits every cluster); tests
    /// shorten it.
    #[arg(skip = crate::objects::ACCESS_RECHECK)]
    pub access_recheck: Duration,
}

impl Args {
    /// Checks relations between flags that clap cannot express.
    pub fn validate(&self) -> Result<()> {
        if let Some(max_age) = self.metrics_max_age
            && max_age < self.metrics_relist_interval
        {
            return Err(Error::MaxAge {
                max_age,
                relist: self.metrics_relist_interval,
            });
        }
        if self.rate_interval < Duration::from_millis(1) {
            return Err(Error::RateInterval);
        }
        if self.query_cache_ttl > self.rate_interval {
            return Err(Error::QueryCacheTtl {
                ttl: self.query_cache_ttl,
                rate: self.rate_interval,
            });
        }
        for header in &self.prometheus_headers {
            parse_header(header)?;
        }
        for (flag, timeout) in [
            ("authentication-timeout", self.authentication_timeout),
            ("authorization-timeout", self.authorization_timeout),
        ] {
            if timeout.is_zero() {
                return Err(Error::ZeroTimeout(flag));
            }
        }
        Ok(())
    }

    pub fn metrics_max_age(&self) -> Duration {
        self.metrics_max_age.unwrap_or(self.metrics_relist_interval)
    }
}

/// Every subsystem's settings, parsed and checked from the flags in one place; each constructor
/// takes its own part, so only `config`, `app` and `main` know the flags.
#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerConfig,
    pub backend: BackendConfig,
    pub rules: RulesConfig,
    pub discovery: DiscoveryConfig,
    pub objects: ObjectsConfig,
    /// None with `--insecure-allow-anonymous`: everyone is served.
    pub auth: Option<AuthConfig>,
    pub logging: LoggingConfig,
}

/// Where and how the HTTPS server listens.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub tls: server::TlsConfig,
    pub options: server::Options,
}

/// How metrics are queried: the Prometheus client, and how long answers are kept.
#[derive(Debug, Clone)]
pub struct BackendConfig {
    pub prometheus: prometheus::ClientConfig,
    /// How long an answer is served to identical queries (`--query-cache-ttl`; zero: not kept).
    pub query_cache_ttl: Duration,
}

/// Where the rules come from.
#[derive(Debug, Clone)]
pub struct RulesConfig {
    /// prometheus-adapter's rules file; None: the built-in rules.
    pub file: Option<PathBuf>,
    /// The `rate()` window of the built-in rules.
    pub rate_interval: Duration,
    /// How a single-value `in` of a metric label selector reaches PromQL.
    pub in_regex: InRegex,
}

/// How often the backend's series are listed to discover metrics.
#[derive(Debug, Clone)]
pub struct DiscoveryConfig {
    pub relist_interval: Duration,
    /// Series with samples this recent are discovered.
    pub max_age: Duration,
}

/// Where the objects that exist come from: a file, or the cluster.
#[derive(Debug, Clone)]
pub struct ObjectsConfig {
    pub file: Option<PathBuf>,
    pub kubeconfig: Option<PathBuf>,
    pub rate_limit: RateLimit,
    pub access_recheck: Duration,
    /// How often Kubernetes API discovery is refreshed.
    pub api_discovery_interval: Duration,
}

/// Delegated authentication and authorization.
#[derive(Debug, Clone)]
pub struct AuthConfig {
    pub authentication_kubeconfig: Option<PathBuf>,
    pub authorization_kubeconfig: Option<PathBuf>,
    pub lookup: AuthLookup,
    /// The settings the flags give (CAs already read), which win over the cluster's ConfigMap.
    pub flags: AuthnConfig,
    pub token_cache_ttl: Duration,
    pub authentication_timeout: Duration,
    pub authorized_ttl: Duration,
    pub unauthorized_ttl: Duration,
    pub authorization_timeout: Duration,
    pub always_allow_paths: Vec<String>,
}

/// Whether kube-system/extension-apiserver-authentication is read, and what its absence means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthLookup {
    /// `--authentication-skip-lookup`: the flags alone.
    Skip,
    /// Not ready until it was read.
    Required,
    /// `--authentication-tolerate-lookup-failure`: ready on the flags alone meanwhile.
    Tolerated,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy)]
pub struct LoggingConfig {
    pub format: LogFormat,
    pub verbosity: u8,
}

impl Config {
    /// Parses and checks every flag; an error names the flag. Reads the CA files the flags name.
    pub fn from_args(args: &Args) -> anyhow::Result<Self> {
        args.validate()?;
        Ok(Self {
            server: server_config(args),
            backend: BackendConfig {
                prometheus: backend_config(args)?,
                query_cache_ttl: args.query_cache_ttl,
            },
            rules: RulesConfig {
                file: args.config.clone(),
                rate_interval: args.rate_interval,
                in_regex: if args.metric_selector_regex_passthrough {
                    InRegex::Passthrough
                } else {
                    InRegex::Escaped
                },
            },
            discovery: DiscoveryConfig {
                relist_interval: args.metrics_relist_interval,
                max_age: args.metrics_max_age(),
            },
            objects: ObjectsConfig {
                file: args.objects_file.clone(),
                kubeconfig: args.lister_kubeconfig.clone(),
                rate_limit: RateLimit {
                    qps: args.client_qps,
                    burst: args.client_burst,
                },
                access_recheck: args.access_recheck,
                api_discovery_interval: args.discovery_interval,
            },
            auth: match args.insecure_allow_anonymous {
                true => None,
                false => Some(auth_config(args)?),
            },
            logging: LoggingConfig {
                format: args.log_format,
                verbosity: args.v,
            },
        })
    }
}

/// The server's limits set by flags. Its timers keep kube-apiserver's values (it has no flags for
/// them), except that a request may always take three times `--prometheus-timeout`: it waits for
/// one round of Prometheus calls (run concurrently), with room to spare.
fn server_config(args: &Args) -> ServerConfig {
    let defaults = server::Options::default();
    let certificate = match (&args.tls_cert_file, &args.tls_private_key_file) {
        (Some(cert), Some(key)) => server::Certificate::Files {
            cert: cert.clone(),
            key: key.clone(),
        },
        _ => server::Certificate::SelfSigned {
            dir: args.cert_dir.clone(),
        },
    };
    ServerConfig {
        listen: SocketAddr::new(args.bind_address, args.secure_port),
        tls: server::TlsConfig {
            certificate,
            http2: !args.disable_http2,
        },
        options: server::Options {
            max_connections: args.max_connections,
            max_requests_inflight: args.max_requests_inflight,
            http2_max_concurrent_streams: match args.http2_max_streams_per_connection {
                0 => defaults.http2_max_concurrent_streams,
                streams => streams,
            },
            request_timeout: defaults
                .request_timeout
                .max(args.prometheus_timeout.saturating_mul(3)),
            ..defaults
        },
    }
}

/// The Prometheus client's settings; `--prometheus-auth-incluster` names the pod's
/// service-account token and CA unless the flags name others.
fn backend_config(args: &Args) -> Result<prometheus::ClientConfig> {
    let incluster = |name: &str| {
        args.prometheus_auth_incluster
            .then(|| std::path::Path::new("/var/run/secrets/kubernetes.io/serviceaccount").join(name))
    };
    Ok(prometheus::ClientConfig {
        url: args.prometheus_url.clone(),
        headers: args
            .prometheus_headers
            .iter()
            .map(|h| parse_header(h))
            .collect::<Result<_>>()?,
        token_file: args.prometheus_token_file.clone().or_else(|| incluster("token")),
        ca_file: args.prometheus_ca_file.clone().or_else(|| incluster("ca.crt")),
        client_cert: args
            .prometheus_client_tls_cert_file
            .clone()
            .zip(args.prometheus_client_tls_key_file.clone()),
        auth_config: args.prometheus_auth_config.clone(),
        use_post: args.prometheus_verb == PrometheusVerb::Post,
        timeout: args.prometheus_timeout,
        max_response_bytes: args.prometheus_max_response_bytes,
        max_idle_connections: prometheus::idle_connections(args.max_requests_inflight),
    })
}

fn auth_config(args: &Args) -> anyhow::Result<AuthConfig> {
    let lookup = match (
        args.authentication_skip_lookup,
        args.authentication_tolerate_lookup_failure,
    ) {
        (true, _) => AuthLookup::Skip,
        (false, true) => AuthLookup::Tolerated,
        (false, false) => AuthLookup::Required,
    };
    Ok(AuthConfig {
        authentication_kubeconfig: args.authentication_kubeconfig.clone(),
        authorization_kubeconfig: args.authorization_kubeconfig.clone(),
        lookup,
        flags: flag_authn_config(args)?,
        token_cache_ttl: args.authentication_token_webhook_cache_ttl,
        authentication_timeout: args.authentication_timeout,
        authorized_ttl: args.authorization_webhook_cache_authorized_ttl,
        unauthorized_ttl: args.authorization_webhook_cache_unauthorized_ttl,
        authorization_timeout: args.authorization_timeout,
        always_allow_paths: args.authorization_always_allow_paths.clone(),
    })
}

/// The authentication settings given by flags (empty where a flag is absent).
fn flag_authn_config(args: &Args) -> anyhow::Result<AuthnConfig> {
    let read = |path: &Option<PathBuf>| -> anyhow::Result<Vec<_>> {
        match path {
            Some(path) => {
                let pem = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
                Ok(crate::auth::parse_pem_certs(&pem, &path.display().to_string())?)
            }
            None => Ok(Vec::new()),
        }
    };
    Ok(AuthnConfig {
        client_ca: read(&args.client_ca_file)?,
        requestheader_ca: read(&args.requestheader_client_ca_file)?,
        allowed_names: args.requestheader_allowed_names.clone(),
        username_headers: args.requestheader_username_headers.clone(),
        group_headers: args.requestheader_group_headers.clone(),
        extra_header_prefixes: args.requestheader_extra_headers_prefix.clone(),
        uid_headers: args.requestheader_uid_headers.clone(),
    })
}

/// Flags of the generic Kubernetes API server and klog that prometheus-adapter accepts but that
/// do not apply here, with whether each takes a value. They are accepted, so a prometheus-adapter
/// Deployment's args work unchanged, and logged as ignored.
const IGNORED_FLAGS: &[(&str, bool)] = &[
    ("tls-cipher-suites", true),
    ("tls-min-version", true),
    ("tls-sni-cert-key", true),
    ("permit-port-sharing", false),
    ("permit-address-sharing", false),
    ("profiling", false),
    ("contention-profiling", false),
    ("enable-priority-and-fairness", false),
    ("debug-socket-path", true),
    ("max-mutating-requests-inflight", true),
    ("min-request-timeout", true),
    ("request-timeout", true),
    ("shutdown-delay-duration", true),
    ("shutdown-send-retry-after", false),
    ("goaway-chance", true),
    ("livez-grace-period", true),
    ("cors-allowed-origins", true),
    ("strict-transport-security-directives", true),
    ("external-hostname", true),
    ("advertise-address", true),
    ("egress-selector-config-file", true),
    ("feature-gates", true),
    ("vmodule", true),
    ("log-dir", true),
    ("log-file", true),
    ("log-file-max-size", true),
    ("log-flush-frequency", true),
    ("log-backtrace-at", true),
    ("stderrthreshold", true),
    ("logtostderr", false),
    ("alsologtostderr", false),
    ("add-dir-header", false),
    ("skip-headers", false),
    ("skip-log-headers", false),
    ("one-output", false),
    ("audit-log-compress", false),
];

/// Removes the flags of `IGNORED_FLAGS` (and every `--audit-*` flag, which takes a value) from
/// `argv`; returns the rest and the removed flags as written.
pub fn split_ignored_flags(
    argv: impl IntoIterator<Item = std::ffi::OsString>,
) -> (Vec<std::ffi::OsString>, Vec<String>) {
    let mut kept = Vec::new();
    let mut ignored = Vec::new();
    let mut argv = argv.into_iter();
    while let Some(arg) = argv.next() {
        let text = arg.to_string_lossy().into_owned();
        let Some(flag) = text.strip_prefix("--") else {
            kept.push(arg);
            continue;
        };
        let (name, inline_value) = match flag.split_once('=') {
            Some((name, _)) => (name, true),
            None => (flag, false),
        };
        let takes_value = match IGNORED_FLAGS.iter().find(|(n, _)| *n == name) {
            Some((_, takes_value)) => *takes_value,
            None if name.starts_with("audit-") => true,
            None => {
                kept.push(arg);
                continue;
            }
        };
        let mut written = text.clone();
        if takes_value
            && !inline_value
            && let Some(value) = argv.next()
        {
            written.push(' ');
            written.push_str(&value.to_string_lossy());
        }
        ignored.push(written);
    }
    (kept, ignored)
}

/// Splits `Key=Value` on the first `=`, as prometheus-adapter does (a missing value is empty).
pub fn parse_header(s: &str) -> Result<(String, String)> {
    let (key, value) = s.split_once('=').unwrap_or((s, ""));
    if key.trim().is_empty() {
        return Err(Error::Header(s.to_owned()));
    }
    Ok((key.trim().to_owned(), value.to_owned()))
}

/// Parses a byte count: `67108864`, `64Mi`, `512Ki`, `1Gi`; zero is refused.
pub fn parse_byte_size(s: &str) -> Result<u64> {
    let err = || Error::ByteSize(s.to_owned());
    let (number, shift) = [("Gi", 30), ("Mi", 20), ("Ki", 10)]
        .iter()
        .find_map(|(suffix, shift)| s.strip_suffix(suffix).map(|n| (n, *shift)))
        .unwrap_or((s, 0));
    let number: u64 = number.parse().map_err(|_| err())?;
    number.checked_mul(1 << shift).filter(|n| *n > 0).ok_or_else(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_adapter_args_are_accepted() {
        let argv = [
            "adapter",
            "--cert-dir=/var/run/serving-cert",
            "--config=/etc/adapter/config.yaml",
            "--logtostderr=true",
            "--metrics-relist-interval=1m",
            "--prometheus-url=http://prometheus.monitoring.svc:9090/",
            "--secure-port=6443",
            "--tls-cipher-suites=TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
            "--audit-log-path",
            "-",
            "--profiling",
            "--v=6",
        ];
        let (kept, ignored) = split_ignored_flags(argv.iter().map(std::ffi::OsString::from));
        assert_eq!(
            ignored,
            [
                "--logtostderr=true",
                "--tls-cipher-suites=TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
                "--audit-log-path -",
                "--profiling"
            ]
        );
        let args = Args::try_parse_from(kept).unwrap();
        assert_eq!(args.v, 6);
        assert_eq!(
            args.config.as_deref(),
            Some(std::path::Path::new("/etc/adapter/config.yaml"))
        );
        assert_eq!(args.secure_port, 6443);
        let args = Args::try_parse_from(["adapter", "--logging-format=json"]).unwrap();
        assert_eq!(args.log_format, LogFormat::Json);
    }

    #[test]
    fn server_limits_are_flags_not_ignored() {
        let argv = [
            "adapter",
            "--max-requests-inflight=1",
            "--http2-max-streams-per-connection",
            "7",
            "--max-connections=3",
            "--prometheus-timeout=30s",
            "--insecure-allow-anonymous",
        ];
        let (kept, ignored) = split_ignored_flags(argv.iter().map(std::ffi::OsString::from));
        assert!(ignored.is_empty(), "{ignored:?}");
        let config = Config::from_args(&Args::try_parse_from(kept).unwrap()).unwrap();
        let options = config.server.options;
        assert_eq!(options.max_requests_inflight, 1);
        assert_eq!(options.http2_max_concurrent_streams, 7);
        assert_eq!(options.max_connections, 3);
        assert_eq!(
            options.request_timeout,
            Duration::from_secs(90),
            "three Prometheus timeouts"
        );
        let defaults = Config::from_args(&Args::try_parse_from(["adapter"]).unwrap())
            .unwrap()
            .server
            .options;
        assert_eq!(defaults.max_requests_inflight, 400, "kube-apiserver's default");
        assert_eq!(
            defaults.http2_max_concurrent_streams, 100,
            "kube-apiserver's default"
        );
        assert_eq!(defaults.request_timeout, Duration::from_secs(60));
    }

    #[test]
    fn each_subsystem_gets_its_part_of_the_flags() {
        let args = Args::try_parse_from([
            "adapter",
            "--metric-selector-regex-passthrough",
            "--authentication-skip-lookup",
            "--discovery-interval=2m",
            "--metrics-relist-interval=30s",
            "--prometheus-header=a=1",
            "--prometheus-header=a=2",
            "--disable-http2",
        ])
        .unwrap();
        let config = Config::from_args(&args).unwrap();
        assert_eq!(config.rules.in_regex, InRegex::Passthrough);
        assert_eq!(config.auth.map(|auth| auth.lookup), Some(AuthLookup::Skip));
        assert_eq!(config.objects.api_discovery_interval, Duration::from_secs(120));
        assert_eq!(
            (config.discovery.relist_interval, config.discovery.max_age),
            (Duration::from_secs(30), Duration::from_secs(30))
        );
        assert_eq!(
            config.backend.prometheus.headers,
            vec![("a".to_owned(), "1".to_owned()), ("a".to_owned(), "2".to_owned())]
        );
        assert!(!config.server.tls.http2);
        let anonymous = Args::try_parse_from(["adapter", "--insecure-allow-anonymous"]).unwrap();
        assert!(Config::from_args(&anonymous).unwrap().auth.is_none());
    }

    #[test]
    fn the_query_cache_ttl_is_off_by_default_and_never_longer_than_the_rate_window() {
        let config = |argv: &[&str]| {
            let args = Args::try_parse_from([&["adapter"], argv].concat()).unwrap();
            Config::from_args(&args).map(|config| config.backend)
        };
        let defaults = config(&[]).unwrap();
        assert_eq!(defaults.query_cache_ttl, Duration::ZERO, "off");
        assert_eq!(
            defaults.prometheus.max_idle_connections, 256,
            "400 requests in flight, capped"
        );
        assert_eq!(
            config(&["--query-cache-ttl=15s"]).unwrap().query_cache_ttl,
            Duration::from_secs(15)
        );
        assert_eq!(
            config(&["--query-cache-ttl=2m"]).unwrap().query_cache_ttl,
            Duration::from_secs(120),
            "as long as the rate window is allowed"
        );
        let err = config(&["--query-cache-ttl=5m"]).unwrap_err().to_string();
        assert!(
            err.contains("--query-cache-ttl") && err.contains("--rate-interval"),
            "{err}"
        );
        assert!(config(&["--query-cache-ttl=30s", "--rate-interval=20s"]).is_err());
        assert_eq!(
            config(&["--max-requests-inflight=8"])
                .unwrap()
                .prometheus
                .max_idle_connections,
            8,
            "one per request in flight"
        );
        assert_eq!(
            config(&["--max-requests-inflight=0"])
                .unwrap()
                .prometheus
                .max_idle_connections,
            256,
            "no limit on requests: the cap"
        );
    }

    #[test]
    fn headers() {
        assert_eq!(
            parse_header("X-Scope-OrgID=team=a").unwrap(),
            ("X-Scope-OrgID".into(), "team=a".into())
        );
        assert_eq!(parse_header("X-Empty").unwrap(), ("X-Empty".into(), "".into()));
        assert!(parse_header("=v").is_err());
    }

    #[test]
    fn flag_defaults_match_prometheus_adapter() {
        let args = Args::try_parse_from(["custom-metrics-adapter"]).unwrap();
        assert_eq!(args.secure_port, 6443);
        assert_eq!(args.rate_interval, Duration::from_secs(120));
        assert_eq!(args.metrics_relist_interval, Duration::from_secs(60));
        assert_eq!(args.metrics_max_age(), Duration::from_secs(60));
        assert_eq!(args.prometheus_timeout, Duration::from_secs(10));
        assert_eq!(args.prometheus_verb, PrometheusVerb::Get);
        assert_eq!(args.authentication_timeout, Duration::from_secs(10));
        assert_eq!(args.authorization_timeout, Duration::from_secs(10));
        let zero = Args::try_parse_from(["x", "--authorization-timeout", "0"]).unwrap();
        assert!(
            zero.validate().is_err(),
            "a zero review timeout fails every request"
        );
        assert_eq!(args.prometheus_max_response_bytes, 64 << 20);
        let args =
            Args::try_parse_from(["x", "--prometheus-verb", "POST", "--metrics-max-age", "30s"]).unwrap();
        assert_eq!(args.prometheus_verb, PrometheusVerb::Post);
        assert!(args.validate().is_err(), "max age below relist interval");
        assert!(
            Args::try_parse_from(["x", "--tls-cert-file", "a.crt"]).is_err(),
            "key file required"
        );
    }

    #[test]
    fn byte_sizes() {
        assert_eq!(parse_byte_size("67108864").unwrap(), 64 << 20);
        assert_eq!(parse_byte_size("64Mi").unwrap(), 64 << 20);
        assert_eq!(parse_byte_size("512Ki").unwrap(), 512 << 10);
        assert_eq!(parse_byte_size("2Gi").unwrap(), 2 << 30);
        for bad in ["0", "", "Mi", "-1", "1.5Mi", "64MB", "99999999999999Gi"] {
            assert!(parse_byte_size(bad).is_err(), "{bad}");
        }
    }
}
