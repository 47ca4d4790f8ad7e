//! Test fixtures: a real Prometheus scraping an exporter whose counters grow at known rates, and
//! adapters served over real TLS on 127.0.0.1:0.

use std::{
    io::{BufRead, BufReader, Write},
    net::{SocketAddr, TcpListener as StdListener},
    path::PathBuf,
    process::{Command, Stdio},
    sync::{Arc, OnceLock},
    time::{Duration, Instant, SystemTime},
};

use custom_metrics_adapter::{
    app::State,
    objects::{ObjectSource, StaticObjects},
    prometheus::{Client, ClientConfig},
    rules::{RuleSet, default_rules},
    server::{self, TlsSource},
};

/// One exported series and its true per-second rate (counters) or constant value (gauges).
pub struct Series {
    pub text: &'static str,
    pub rate: Option<f64>,
    pub value: &'static str,
}

const fn counter(text: &'static str, rate: f64) -> Series {
    Series {
        text,
        rate: Some(rate),
        value: "",
    }
}

const fn gauge(text: &'static str, value: &'static str) -> Series {
    Series {
        text,
        rate: None,
        value,
    }
}

/// The seed: three pods behind Service sample-metrics-app in `default` serving 501.484 requests/s
/// in total (pod 0 splits its 100.5 into code 200 and code 500), plus neighbours that must not leak in.
pub const SERIES: &[Series] = &[
    counter(
        r#"http_requests_total{namespace="default",pod="sample-metrics-app-0",service="sample-metrics-app",code="200"}"#,
        100.0,
    ),
    counter(
        r#"http_requests_total{namespace="default",pod="sample-metrics-app-0",service="sample-metrics-app",code="500"}"#,
        0.5,
    ),
    counter(
        r#"http_requests_total{namespace="default",pod="sample-metrics-app-1",service="sample-metrics-app",code="200"}"#,
        200.25,
    ),
    counter(
        r#"http_requests_total{namespace="default",pod="sample-metrics-app-2",service="sample-metrics-app",code="200"}"#,
        200.734,
    ),
    counter(
        r#"http_requests_total{namespace="default",pod="backend-0",service="backend",code="200"}"#,
        3.0,
    ),
    counter(
        r#"http_requests_total{namespace="default",pod="ghost-0",service="ghost",code="200"}"#,
        1.0,
    ),
    counter(
        r#"http_requests_total{namespace="staging",pod="sample-metrics-app-0",service="sample-metrics-app",code="200"}"#,
        7.0,
    ),
    counter(
        r#"process_cpu_seconds_total{namespace="default",pod="backend-0"}"#,
        0.25,
    ),
    // Labelled with a resource only a cluster knows (a CRD), for the discovery-refresh test.
    counter(
        r#"jobs_processed_total{namespace="default",crontab="nightly"}"#,
        2.0,
    ),
    // cAdvisor and kubelet series for resourceRules (metrics.k8s.io).
    counter(
        r#"container_cpu_usage_seconds_total{namespace="default",pod="backend-0",container="app"}"#,
        0.25,
    ),
    counter(
        r#"container_cpu_usage_seconds_total{namespace="default",pod="backend-0",container="sidecar"}"#,
        0.05,
    ),
    gauge(
        r#"container_memory_working_set_bytes{namespace="default",pod="backend-0",container="app"}"#,
        "104857600",
    ),
    gauge(
        r#"container_memory_working_set_bytes{namespace="default",pod="backend-0",container="sidecar"}"#,
        "1048576",
    ),
    counter(
        r#"container_cpu_usage_seconds_total{namespace="default",pod="worker-0",container="app"}"#,
        1.5,
    ),
    counter(r#"node_cpu_usage_seconds_total{node="node-1"}"#, 1.25),
    gauge(r#"node_memory_working_set_bytes{node="node-1"}"#, "2147483648"),
    counter(r#"node_cpu_usage_seconds_total{node="node-2"}"#, 0.5),
    gauge(r#"queue_depth{namespace="default",pod="worker-0"}"#, "42"),
    gauge(
        r#"temperature_celsius{namespace="default",pod="worker-0"}"#,
        "NaN",
    ),
    gauge(r#"huge_value{namespace="default",pod="worker-0"}"#, "1e20"),
];

/// True rates the tests compare against.
pub const SEED_SERVICE_RATE: f64 = 501.484;
/// Relative tolerance between what the adapter serves and the exporter's true rate. The history
/// fills the 2-minute window, so the only error is scrape-timing jitter of milliseconds over two
/// minutes (measured below 0.01 %); 1 % leaves room for a loaded CI machine.
pub const TOLERANCE: f64 = 0.01;

/// What the objects file says exists (ghost-0 has series but no object; sample-metrics-app-3 the reverse).
pub const OBJECTS_YAML: &str = r#"
namespaces:
  - name: default
  - name: staging
pods:
  - {name: sample-metrics-app-0, labels: {app: sample-metrics-app, tier: web}}
  - {name: sample-metrics-app-1, labels: {app: sample-metrics-app, tier: web}}
  - {name: sample-metrics-app-2, labels: {app: sample-metrics-app, tier: web}}
  - {name: sample-metrics-app-3, labels: {app: sample-metrics-app, tier: web}}
  - {name: backend-0, labels: {app: backend}}
  - {name: worker-0, labels: {app: worker}}
  - {name: sample-metrics-app-0, namespace: staging, labels: {app: sample-metrics-app}}
services:
  - {name: sample-metrics-app, labels: {app: sample-metrics-app}, selector: {app: sample-metrics-app}}
  - {name: backend, selector: {app: backend}}
"#;

/// The shared Prometheus + exporter, started once per test binary.
pub struct Env {
    pub prometheus_url: String,
    _dir: tempfile::TempDir,
    _watchdog: std::process::Child,
}

pub fn env() -> &'static Env {
    static ENV: OnceLock<Env> = OnceLock::new();
    ENV.get_or_init(|| {
        std::thread::spawn(start_env)
            .join()
            .expect("environment start-up panicked")
    })
}

/// A loopback port nobody listens on (now).
pub fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// How much history is written into Prometheus before it starts: more than the 5-minute rate
/// window of prometheus-adapter's defaults, so rate() reports the true rate at once.
const HISTORY_SECS: u64 = 330;

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

fn start_env() -> Env {
    // Every counter is `rate * (t - origin)`: the backfilled history and the live exporter agree.
    let origin = unix_now() - HISTORY_SECS as f64;
    let exporter = start_exporter(origin);
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    backfill(origin, exporter, dir.path(), &data);
    let port = free_port();
    let config = format!(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 900ms\nscrape_configs:\n  - job_name: exporter\n    honor_labels: true\n    static_configs:\n      - targets: ['{exporter}']\n"
    );
    let config_path = dir.path().join("prometheus.yml");
    std::fs::write(&config_path, config).expect("write prometheus.yml");
    // A watchdog shell ends Prometheus when this test process exits, however it exits.
    let script = format!(
        "prometheus --config.file={} --storage.tsdb.path={} --web.listen-address=127.0.0.1:{port} --log.level=warn & P=$!; \
         while kill -0 {} 2>/dev/null && kill -0 $P 2>/dev/null; do sleep 0.5; done; kill $P 2>/dev/null; wait $P",
        config_path.display(),
        data.display(),
        std::process::id()
    );
    let watchdog = Command::new("sh")
        .arg("-c")
        .arg(script)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .expect("start prometheus (is the Debian package installed? .ci/run installs it)");
    let url = format!("http://127.0.0.1:{port}");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(wait_for_rates(&url));
    Env {
        prometheus_url: url,
        _dir: dir,
        _watchdog: watchdog,
    }
}

/// Writes one sample per second per series from `origin` until now as TSDB blocks (promtool),
/// with the `job` and `instance` labels the live scrape adds, so history and scrapes are one series.
fn backfill(origin: f64, exporter: SocketAddr, dir: &std::path::Path, data: &std::path::Path) {
    let end = unix_now() - 2.0;
    let mut text = String::new();
    for series in SERIES {
        let labels = format!(r#",instance="{exporter}",job="exporter"}}"#);
        let name = series.text.replacen('}', &labels, 1);
        let mut t = origin + 1.0;
        while t < end {
            let value = match series.rate {
                Some(rate) => format!("{:.6}", rate * (t - origin)),
                None => series.value.to_owned(),
            };
            text.push_str(&format!("{name} {value} {t:.3}\n"));
            t += 1.0;
        }
    }
    text.push_str("# EOF\n");
    let input = dir.join("history.om");
    std::fs::write(&input, text).expect("write history");
    let output = Command::new("promtool")
        .args(["tsdb", "create-blocks-from", "openmetrics", "--quiet"])
        .arg(&input)
        .arg(data)
        .output()
        .expect("run promtool (part of Debian's prometheus package)");
    assert!(
        output.status.success(),
        "promtool failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Waits until Prometheus has loaded the history and scraped the live exporter a few times, so the
/// newest sample is at most one scrape old and rate() covers the whole window.
async fn wait_for_rates(url: &str) {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let scalar = async |query: &str| -> Option<f64> {
        let response = client
            .get(format!("{url}/api/v1/query"))
            .query(&[("query", query)])
            .send()
            .await
            .ok()?;
        let body: serde_json::Value = serde_json::from_str(&response.text().await.ok()?).ok()?;
        body["data"]["result"][0]["value"][1].as_str()?.parse().ok()
    };
    let counters = SERIES.iter().filter(|s| s.rate.is_some()).count() as f64;
    loop {
        let history = scalar("count(rate({__name__=~\".+_total\"}[2m]))").await;
        let live_scrapes = scalar("sum(count_over_time(up{job=\"exporter\"}[1m]))").await;
        if history == Some(counters) && live_scrapes.is_some_and(|n| n >= 3.0) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus at {url} was not ready within 60 s: counters with rates {history:?} (want {counters}), live scrapes {live_scrapes:?} (want 3)"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// A plain-HTTP exporter on a thread: every scrape reports `rate * (now - origin)`.
fn start_exporter(origin: f64) -> SocketAddr {
    let listener = StdListener::bind("127.0.0.1:0").expect("bind exporter");
    let addr = listener.local_addr().expect("exporter addr");
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().expect("clone stream"));
            let mut line = String::new();
            // Read the request head; the body of a GET is empty.
            while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
                line.clear();
            }
            let elapsed = unix_now() - origin;
            let mut body = String::new();
            for series in SERIES {
                match series.rate {
                    Some(rate) => body.push_str(&format!("{} {:.6}\n", series.text, rate * elapsed)),
                    None => body.push_str(&format!("{} {}\n", series.text, series.value)),
                }
            }
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = stream
                .write_all(head.as_bytes())
                .and_then(|()| stream.write_all(body.as_bytes()));
        }
    });
    addr
}

/// Options for a test adapter.
#[derive(Default, Clone)]
pub struct AdapterOptions {
    pub objects_yaml: Option<&'static str>,
    /// Point the query path at another URL than the real Prometheus (discovery still comes from it).
    pub query_url: Option<String>,
    pub timeout: Option<Duration>,
    /// Rules other than the built-in defaults.
    pub rules: Option<RuleSet>,
    /// The whole query client's configuration (URL, credentials, limits); wins over `query_url`.
    pub query_client: Option<ClientConfig>,
    /// Server limits and timers other than the defaults.
    pub server: Option<server::Options>,
}

/// An adapter served over TLS on 127.0.0.1:0 in this test's runtime.
pub struct Adapter {
    pub addr: SocketAddr,
    pub state: Arc<State>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    pub task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl Adapter {
    pub fn url(&self, path: &str) -> String {
        format!("https://{}{path}", self.addr)
    }

    /// Asks the server to shut down gracefully and waits for it.
    pub async fn shutdown(mut self) -> std::io::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.task.take() {
            Some(task) => task.await.expect("server task"),
            None => Ok(()),
        }
    }
}

impl Drop for Adapter {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

pub fn client_config(url: &str, timeout: Duration) -> ClientConfig {
    ClientConfig::plain(url, timeout)
}

fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

pub async fn start_adapter(options: AdapterOptions) -> Adapter {
    install_crypto_provider();
    let env = env();
    let timeout = options.timeout.unwrap_or(Duration::from_secs(10));
    let rules = options
        .rules
        .clone()
        .unwrap_or_else(|| RuleSet::custom(default_rules("2m").expect("default rules")));
    let objects: Option<Arc<dyn ObjectSource>> = options
        .objects_yaml
        .map(|yaml| Arc::new(StaticObjects::parse(yaml, "test objects").expect("objects")) as _);

    // Discovery always comes from the real Prometheus.
    let discovering = State::new(
        rules.clone(),
        Client::new(&client_config(&env.prometheus_url, timeout)).expect("client"),
        None,
        Duration::from_secs(60),
    );
    discovering
        .relist()
        .await
        .expect("relist against the real Prometheus");
    let query_url = options.query_url.as_deref().unwrap_or(&env.prometheus_url);
    let query_client = options
        .query_client
        .clone()
        .unwrap_or_else(|| client_config(query_url, timeout));
    let state = State::new(
        rules,
        Client::new(&query_client).expect("client"),
        objects,
        Duration::from_secs(60),
    );
    state.discovery.store(discovering.discovery.load_full());
    state.relisted.store(true, std::sync::atomic::Ordering::Release);
    let state = Arc::new(state);

    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
        .expect("cert");
    let tls = TlsSource::from_pem(
        cert.cert.pem().as_bytes(),
        cert.signing_key.serialize_pem().as_bytes(),
        true,
    )
    .expect("tls");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind adapter");
    let addr = listener.local_addr().expect("adapter addr");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let router = custom_metrics_adapter::api::router(state.clone(), None);
    let server_options = server::Options {
        rejection: custom_metrics_adapter::api::ApiError::too_many_requests_response,
        ..options.server.clone().unwrap_or_default()
    };
    let task = tokio::spawn(server::serve(listener, tls, router, server_options, async move {
        let _ = stopped.await;
    }));
    Adapter {
        addr,
        state,
        stop: Some(stop),
        task: Some(task),
    }
}

/// An HTTPS client that trusts the test's self-signed certificates.
pub fn https() -> reqwest::Client {
    install_crypto_provider();
    reqwest::Client::builder()
        .tls_danger_accept_invalid_certs(true)
        .timeout(Duration::from_secs(30))
        .build()
        .expect("https client")
}

/// GETs `path` and returns the status code and body.
pub async fn get(adapter: &Adapter, path: &str) -> (u16, String) {
    let response = https().get(adapter.url(path)).send().await.expect("request");
    let status = response.status().as_u16();
    (status, response.text().await.expect("body"))
}

/// Parses a Kubernetes quantity string into a float, for comparing with true rates.
pub fn quantity(s: &str) -> f64 {
    custom_metrics_adapter::quantity::parse_milli(s).expect("quantity") as f64 / 1000.0
}

pub fn assert_close(actual: f64, expected: f64, what: &str) {
    let error = (actual - expected).abs() / expected;
    // Visible with --nocapture: the measured error, for the record.
    println!(
        "{what}: served {actual}, true {expected}, error {:.4} %",
        error * 100.0
    );
    assert!(
        error <= TOLERANCE,
        "{what}: got {actual}, true value {expected} (off by {:.2} %)",
        error * 100.0
    );
}

/// Replaces what changes between runs (sample values, timestamps, ports) so shapes can be pinned.
pub fn normalize(body: &str) -> String {
    let body = regex::Regex::new(r#""(timestamp|creationTimestamp)":"[^"]+""#)
        .unwrap()
        .replace_all(body, r#""$1":"<timestamp>""#);
    let body = regex::Regex::new(r#""(value|cpu)":"[^"]+""#)
        .unwrap()
        .replace_all(&body, r#""$1":"<quantity>""#);
    let body = regex::Regex::new(r"127\.0\.0\.1:\d+")
        .unwrap()
        .replace_all(&body, "127.0.0.1:<port>");
    body.into_owned()
}

/// Compares `body` (normalised) with `tests/it/golden/<name>.json`; `UPDATE_GOLDEN=1` rewrites it.
pub fn assert_golden(name: &str, body: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/it/golden")
        .join(format!("{name}.json"));
    let actual = normalize(body);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, &actual).expect("write golden");
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|_| {
        panic!(
            "missing golden file {}; run with UPDATE_GOLDEN=1 to create it",
            path.display()
        )
    });
    assert_eq!(actual, expected, "response differs from {}", path.display());
}

/// The seconds since the epoch now, for timestamp checks.
pub fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// An adapter started through its real start-up path (`app::serve`) with `flags` (plus the
/// Prometheus URL and a certificate directory); stops when dropped.
pub struct Served {
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    _dir: tempfile::TempDir,
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

impl Served {
    pub async fn start(flags: &[&str]) -> Served {
        install_crypto_provider();
        let dir = tempfile::tempdir().expect("tempdir");
        let cert_dir = dir.path().join("certs").display().to_string();
        let mut argv = vec![
            "custom-metrics-adapter",
            "--prometheus-url",
            &env().prometheus_url,
            "--cert-dir",
            &cert_dir,
        ];
        argv.extend_from_slice(flags);
        let args = <custom_metrics_adapter::config::Args as clap::Parser>::parse_from(argv);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            if let Err(err) = custom_metrics_adapter::app::serve(args, listener, async move {
                let _ = stopped.await;
            })
            .await
            {
                eprintln!("adapter stopped: {err:#}");
            }
        });
        let served = Served {
            addr,
            stop: Some(stop),
            _dir: dir,
        };
        for _ in 0..100 {
            if served.get("/readyz").await.0 == 200 {
                return served;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("adapter not ready within 10 s: {:?}", served.get("/readyz").await);
    }

    pub async fn get(&self, path: &str) -> (u16, String) {
        match https().get(format!("https://{}{path}", self.addr)).send().await {
            Ok(response) => (
                response.status().as_u16(),
                response.text().await.unwrap_or_default(),
            ),
            Err(err) => (0, err.to_string()),
        }
    }
}
