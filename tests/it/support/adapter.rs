//! [`TestAdapter`]: an adapter started through its real start-up path (`app::serve_with`) over
//! real TLS on 127.0.0.1:0, with the seams a test needs: objects from YAML or none, rules from
//! YAML, queries answered by another Prometheus (discovery still reads the real one), server
//! limits.

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, SystemTime},
};

use custom_metrics_adapter::{
    app::{self, ObjectsSeam, Seams},
    backend::{MetricsBackend, Result, Sample, SeriesList, prometheus},
    config::{self, Args, Config},
    objects::StaticObjects,
    server,
};
use futures::future::BoxFuture;

use super::{env, https, install_crypto_provider, wait_ready};

/// What a test adapter differs in from the default: the built-in rules, the real Prometheus, no
/// object source, no authentication, the server's default limits.
#[derive(Default, Clone)]
pub struct AdapterOptions {
    /// The objects that exist, as an objects file lists them; None: every object with samples exists.
    pub objects_yaml: Option<String>,
    /// Point the query path at another URL than the real Prometheus (discovery still comes from it).
    pub query_url: Option<String>,
    /// `--prometheus-timeout`, and the query client's timeout.
    pub timeout: Option<Duration>,
    /// A prometheus-adapter rules file (`--config`) instead of the built-in rules.
    pub rules_yaml: Option<String>,
    /// The whole query client's configuration (URL, credentials, limits); wins over `query_url`.
    pub query_client: Option<prometheus::ClientConfig>,
    /// Server limits and timers other than the defaults.
    pub server: Option<server::Options>,
    /// Further flags, as on the command line.
    pub flags: Vec<String>,
    /// Return as soon as the server listens, without waiting for `/readyz`.
    pub unready: bool,
    /// A cluster (the fake API server's kubeconfig) to watch objects in and to delegate
    /// authentication and authorization to; without it everyone is served.
    pub kubeconfig: Option<std::path::PathBuf>,
    /// How soon a resource RBAC forbids is looked at again (not a flag).
    pub access_recheck: Option<Duration>,
}

/// An adapter served in this test's runtime; stops when dropped.
pub struct TestAdapter {
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    _dir: tempfile::TempDir,
}

impl TestAdapter {
    pub async fn start(options: AdapterOptions) -> TestAdapter {
        install_crypto_provider();
        let dir = tempfile::tempdir().expect("tempdir");
        let config = Config::from_args(&args(&options, dir.path())).expect("flags");
        let config = Config {
            server: config::ServerConfig {
                options: options.server.clone().unwrap_or(config.server.options),
                ..config.server
            },
            objects: config::ObjectsConfig {
                access_recheck: options.access_recheck.unwrap_or(config.objects.access_recheck),
                ..config.objects
            },
            ..config
        };
        let seams = Seams {
            backend: query_backend(&options),
            objects: match (&options.kubeconfig, &options.objects_yaml) {
                (Some(_), _) => ObjectsSeam::FromConfig,
                // Named as in the golden files, not by a temporary path.
                (None, Some(yaml)) => ObjectsSeam::Given(Arc::new(
                    StaticObjects::parse(yaml, "test objects").expect("objects"),
                )),
                (None, None) => ObjectsSeam::Unknown,
            },
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(app::serve_with(config, seams, listener, async move {
            let _ = stopped.await;
        }));
        let adapter = TestAdapter {
            addr,
            stop: Some(stop),
            task: Some(task),
            _dir: dir,
        };
        if !options.unready {
            wait_ready(&adapter.url("/readyz"), Duration::from_secs(30)).await;
        }
        adapter
    }

    pub fn url(&self, path: &str) -> String {
        format!("https://{}{path}", self.addr)
    }

    /// GETs `path` and returns the status code and body; status 0 and the error when there is
    /// no answer.
    pub async fn get(&self, path: &str) -> (u16, String) {
        match https().get(self.url(path)).send().await {
            Ok(response) => (
                response.status().as_u16(),
                response.text().await.unwrap_or_default(),
            ),
            Err(err) => (0, err.to_string()),
        }
    }

    /// Asks the server to shut down gracefully and waits for it.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.task.take() {
            Some(task) => task.await.expect("server task"),
            None => Ok(()),
        }
    }
}

impl Drop for TestAdapter {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// GETs `path` from `adapter` and returns the status code and body.
pub async fn get(adapter: &TestAdapter, path: &str) -> (u16, String) {
    adapter.get(path).await
}

/// The command line the options describe; files they name are written to `dir`.
fn args(options: &AdapterOptions, dir: &std::path::Path) -> Args {
    let path = |name: &str, contents: &str| {
        let path = dir.join(name);
        std::fs::write(&path, contents).expect("write test file");
        path.display().to_string()
    };
    let mut argv: Vec<String> = [
        "custom-metrics-adapter",
        "--cert-dir",
        &dir.join("certs").display().to_string(),
    ]
    .map(str::to_owned)
    .to_vec();
    match &options.kubeconfig {
        Some(kubeconfig) => {
            for flag in [
                "--lister-kubeconfig",
                "--authentication-kubeconfig",
                "--authorization-kubeconfig",
            ] {
                argv.extend([flag.to_owned(), kubeconfig.display().to_string()]);
            }
        }
        None => argv.push("--insecure-allow-anonymous".to_owned()),
    }
    if !options.flags.iter().any(|f| f.starts_with("--prometheus-url")) {
        argv.extend(["--prometheus-url".to_owned(), env().prometheus_url.clone()]);
    }
    if let Some(yaml) = &options.rules_yaml {
        argv.extend(["--config".to_owned(), path("rules.yaml", yaml)]);
    }
    if let Some(timeout) = options.timeout {
        argv.extend([
            "--prometheus-timeout".to_owned(),
            format!("{}ms", timeout.as_millis()),
        ]);
    }
    argv.extend(options.flags.iter().cloned());
    <Args as clap::Parser>::parse_from(argv)
}

pub fn client_config(url: &str, timeout: Duration) -> prometheus::ClientConfig {
    prometheus::ClientConfig::plain(url, timeout)
}

/// With another query URL or client, a backend whose series come from the real Prometheus and
/// whose queries go to the other one.
fn query_backend(options: &AdapterOptions) -> Option<Arc<dyn MetricsBackend>> {
    let timeout = options.timeout.unwrap_or(Duration::from_secs(10));
    let queries = match (&options.query_client, &options.query_url) {
        (Some(config), _) => config.clone(),
        (None, Some(url)) => client_config(url, timeout),
        (None, None) => return None,
    };
    let series = client_config(&env().prometheus_url, Duration::from_secs(10));
    Some(Arc::new(SplitBackend {
        series: prometheus::Client::new(&series).expect("series client"),
        queries: prometheus::Client::new(&queries).expect("query client"),
    }))
}

/// Lists series from one backend and answers queries from another.
struct SplitBackend {
    series: prometheus::Client,
    queries: prometheus::Client,
}

impl MetricsBackend for SplitBackend {
    fn query<'a>(&'a self, promql: &'a str, time: SystemTime) -> BoxFuture<'a, Result<Vec<Sample>>> {
        MetricsBackend::query(&self.queries, promql, time)
    }

    fn series<'a>(
        &'a self,
        selector: &'a str,
        start: SystemTime,
        end: SystemTime,
    ) -> BoxFuture<'a, Result<SeriesList>> {
        MetricsBackend::series(&self.series, selector, start, end)
    }

    fn describe(&self) -> &str {
        MetricsBackend::describe(&self.queries)
    }
}
