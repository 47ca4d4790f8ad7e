//! The seed data and the real Prometheus: an exporter whose counters grow at known rates, their
//! backfilled history, the objects file that goes with them, and one Prometheus per test binary.

use std::{
    io::{BufRead, BufReader, Write},
    net::{SocketAddr, TcpListener as StdListener},
    process::{Command, Stdio},
    sync::OnceLock,
    time::{Duration, Instant, SystemTime},
};

use super::free_port;

/// The seed request: Service sample-metrics-app's request rate, in the group prometheus-adapter
/// served first.
pub const SEED: &str = "/apis/custom-metrics.metrics.k8s.io/v1beta1/namespaces/default/services/sample-metrics-app/http_requests";

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
