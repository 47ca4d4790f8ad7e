//! Adapters for tests, served over real TLS on 127.0.0.1:0: assembled from parts with injected
//! state and options ([`start_adapter`]), or through the real start-up path ([`Served`]).

use std::{net::SocketAddr, sync::Arc, time::Duration};

use custom_metrics_adapter::{
    app::State,
    objects::{ObjectSource, StaticObjects},
    prometheus::{Client, ClientConfig},
    rules::{RuleSet, default_rules},
    server::{self, TlsSource},
};

use super::{env, https, install_crypto_provider, wait_ready};

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

pub async fn start_adapter(options: AdapterOptions) -> Adapter {
    install_crypto_provider();
    let env = env();
    let timeout = options.timeout.unwrap_or(Duration::from_secs(10));
    let rules = options.rules.clone().unwrap_or_else(|| RuleSet {
        custom: default_rules("2m").expect("default rules"),
        external: Vec::new(),
        resource: None,
    });
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

/// GETs `path` and returns the status code and body.
pub async fn get(adapter: &Adapter, path: &str) -> (u16, String) {
    let response = https().get(adapter.url(path)).send().await.expect("request");
    let status = response.status().as_u16();
    (status, response.text().await.expect("body"))
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
            if let Err(err) = custom_metrics_adapter::app::serve(
                custom_metrics_adapter::config::Config::from_args(&args).expect("flags"),
                listener,
                async move {
                    let _ = stopped.await;
                },
            )
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
        wait_ready(&format!("https://{addr}/readyz"), Duration::from_secs(10)).await;
        served
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
