//! The running adapter: shared state, the relist loop, and `run` that wires flags to a server.

use std::{
    collections::BTreeMap,
    future::Future,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, SystemTime},
};

use arc_swap::ArcSwap;
use tokio::net::TcpListener;

use crate::{
    config::{Args, PrometheusVerb},
    objects::{ObjectSource, Resources, StaticObjects},
    prometheus,
    rules::{self, Discovery, Rule},
    server,
};

/// Everything a request needs, shared by all connections.
pub struct State {
    pub rules: Vec<Rule>,
    pub resources: Resources,
    pub prometheus: prometheus::Client,
    pub objects: Option<Arc<dyn ObjectSource>>,
    pub discovery: ArcSwap<Discovery>,
    /// Set once the first relist has finished, successfully or not.
    pub relisted: AtomicBool,
    /// Series with samples this recent are discovered.
    pub metrics_max_age: Duration,
}

pub type SharedState = Arc<State>;

impl State {
    pub fn new(
        rules: Vec<Rule>,
        prometheus: prometheus::Client,
        objects: Option<Arc<dyn ObjectSource>>,
        metrics_max_age: Duration,
    ) -> Self {
        Self {
            rules,
            resources: Resources::default(),
            prometheus,
            objects,
            discovery: ArcSwap::from_pointee(Discovery::default()),
            relisted: AtomicBool::new(false),
            metrics_max_age,
        }
    }

    /// Builds the state from flags: the Prometheus client, the built-in rules and the object source.
    pub fn from_args(args: &Args) -> anyhow::Result<Self> {
        args.validate()?;
        let headers = args
            .prometheus_headers
            .iter()
            .map(|h| crate::config::parse_header(h))
            .collect::<Result<_, _>>()?;
        let client = prometheus::Client::new(&prometheus::ClientConfig {
            url: args.prometheus_url.clone(),
            headers,
            token_file: args.prometheus_token_file.clone(),
            ca_file: args.prometheus_ca_file.clone(),
            client_cert: args
                .prometheus_client_tls_cert_file
                .clone()
                .zip(args.prometheus_client_tls_key_file.clone()),
            use_post: args.prometheus_verb == PrometheusVerb::Post,
            timeout: args.prometheus_timeout,
        })?;
        let rules = rules::default_rules(&crate::config::promql_duration(args.rate_interval))?;
        let objects: Option<Arc<dyn ObjectSource>> = match &args.objects_file {
            Some(path) => Some(Arc::new(StaticObjects::load(path)?)),
            None => None,
        };
        Ok(Self::new(rules, client, objects, args.metrics_max_age()))
    }

    pub fn is_ready(&self) -> bool {
        self.relisted.load(Ordering::Acquire)
    }

    /// Lists series for every distinct `seriesQuery` and swaps in a new discovery snapshot.
    /// A query that fails keeps its rules' metrics from the previous snapshot, so one broken query
    /// does not hide every metric; when every query fails the previous snapshot stays whole.
    pub async fn relist(&self) -> Result<usize, prometheus::Error> {
        let end = SystemTime::now();
        let start = end
            .checked_sub(self.metrics_max_age)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let mut queries: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for (index, rule) in self.rules.iter().enumerate() {
            queries.entry(rule.series_query.as_str()).or_default().push(index);
        }
        let total = queries.len();
        let mut fetched = Vec::with_capacity(total);
        let mut failed_rules = Vec::new();
        let mut last_error = None;
        for (query, rule_indexes) in queries {
            match self.prometheus.series(query, start, end).await {
                Ok(series) => fetched.push((rule_indexes, series)),
                Err(err) => {
                    tracing::warn!(series_query = query, error = %err, "Listing series failed; keeping this query's metrics");
                    failed_rules.extend(rule_indexes);
                    last_error = Some(err);
                }
            }
        }
        if let Some(err) = last_error
            && fetched.is_empty()
        {
            return Err(err);
        }
        let pairs = fetched.iter().flat_map(|(indexes, series)| {
            indexes
                .iter()
                .flat_map(move |i| series.iter().map(move |s| (*i, s)))
        });
        let mut discovery = Discovery::build(&self.rules, pairs, &self.resources, end);
        let previous = self.discovery.load_full();
        discovery.carry_over(&previous, &failed_rules);
        let count = discovery.len();
        self.discovery.store(Arc::new(discovery));
        if previous.len() != count {
            tracing::info!(
                metrics = count,
                previous = previous.len(),
                "Discovered metrics changed"
            );
        }
        Ok(count)
    }

    /// Relists now and then every `interval`, until `shutdown` resolves.
    pub async fn relist_loop(self: Arc<Self>, interval: Duration, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = &mut shutdown => return,
                _ = ticker.tick() => {}
            }
            match self.relist().await {
                Ok(count) => tracing::debug!(metrics = count, "Relisted series"),
                Err(err) => {
                    tracing::warn!(error = %err, "Relisting series failed; keeping the previous metric list")
                }
            }
            self.relisted.store(true, Ordering::Release);
        }
    }
}

/// Runs the adapter described by `args` until `shutdown` resolves.
pub async fn run(args: Args, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
    let state = Arc::new(State::from_args(&args)?);
    let tls = server::tls::TlsSource::from_args(&args)?;
    let addr = SocketAddr::new(args.bind_address, args.secure_port);
    let listener = TcpListener::bind(addr).await?;
    tracing::info!(%addr, prometheus = state.prometheus.url(), "Serving custom metrics");

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let relist = tokio::spawn(
        state
            .clone()
            .relist_loop(args.metrics_relist_interval, stopped(stop_rx.clone())),
    );
    let reload = tokio::spawn(
        tls.clone()
            .reload_loop(Duration::from_secs(10), stopped(stop_rx.clone())),
    );
    let router = crate::api::router(state);
    let result = server::serve(listener, tls, router, async move {
        shutdown.await;
        tracing::info!("Shutting down; letting in-flight requests finish");
    })
    .await;
    let _ = stop_tx.send(true);
    let _ = tokio::join!(relist, reload);
    result.map_err(Into::into)
}
