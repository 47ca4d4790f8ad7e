//! The running adapter: shared state, the relist loop, and `run` that wires flags to a server.

use std::{
    future::Future,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, SystemTime},
};

use anyhow::Context;
use arc_swap::ArcSwap;
use tokio::net::TcpListener;

use crate::{
    auth::{self, Auth, Authenticator, AuthnConfig, Authorizer, TokenReviewer},
    cluster::{self, RateLimit},
    config::{Args, PrometheusVerb},
    objects::{DiscoveryHealth, KubeObjects, ObjectSource, SharedResources, StaticObjects},
    prometheus,
    rules::{self, Discovery, RuleSet},
    server,
};

/// How one readiness condition stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    Ready,
    /// Ready, with something an operator should know (a skipped API group, a forbidden resource).
    Degraded(String),
    /// Not ready, and why.
    NotReady(String),
}

/// A named readiness condition for `/readyz`.
pub struct ReadyCheck {
    pub name: &'static str,
    pub check: Box<dyn Fn() -> Readiness + Send + Sync>,
}

/// The name of the relist's readiness check.
const METRIC_DISCOVERY: &str = "metric-discovery";
/// After a failed relist the next one starts this soon, doubling up to the relist interval.
const RELIST_RETRY_MIN: Duration = Duration::from_secs(1);

/// Everything a request needs, shared by all connections.
pub struct State {
    /// The current rules; a discovery snapshot keeps the rules it was built from.
    pub rules: ArcSwap<RuleSet>,
    /// The resources the adapter knows; replaced when API discovery is refreshed.
    pub resources: Arc<SharedResources>,
    pub prometheus: prometheus::Client,
    pub objects: Option<Arc<dyn ObjectSource>>,
    pub discovery: ArcSwap<Discovery>,
    /// Set once a relist has succeeded.
    pub relisted: AtomicBool,
    /// Why the latest relist failed (None after a success), for `/readyz?verbose`.
    relist_error: std::sync::Mutex<Option<String>>,
    /// Series with samples this recent are discovered.
    pub metrics_max_age: Duration,
    /// Further conditions for readiness (object caches synced, ...).
    pub ready_checks: Vec<ReadyCheck>,
    pub metrics: crate::telemetry::Metrics,
}

pub type SharedState = Arc<State>;

impl State {
    pub fn new(
        rules: RuleSet,
        prometheus: prometheus::Client,
        objects: Option<Arc<dyn ObjectSource>>,
        metrics_max_age: Duration,
    ) -> Self {
        Self {
            rules: ArcSwap::from_pointee(rules),
            resources: Arc::new(SharedResources::default()),
            prometheus,
            objects,
            discovery: ArcSwap::from_pointee(Discovery::default()),
            relisted: AtomicBool::new(false),
            relist_error: std::sync::Mutex::new(None),
            metrics_max_age,
            ready_checks: Vec::new(),
            metrics: Default::default(),
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
            token_file: args
                .prometheus_token_file
                .clone()
                .or_else(|| incluster(args, "token")),
            ca_file: args
                .prometheus_ca_file
                .clone()
                .or_else(|| incluster(args, "ca.crt")),
            client_cert: args
                .prometheus_client_tls_cert_file
                .clone()
                .zip(args.prometheus_client_tls_key_file.clone()),
            auth_config: args.prometheus_auth_config.clone(),
            use_post: args.prometheus_verb == PrometheusVerb::Post,
            timeout: args.prometheus_timeout,
            max_response_bytes: args.prometheus_max_response_bytes,
        })?;
        let rules = load_rules(args)?;
        let objects: Option<Arc<dyn ObjectSource>> = match &args.objects_file {
            Some(path) => Some(Arc::new(StaticObjects::load(path)?)),
            None => None,
        };
        Ok(Self::new(rules, client, objects, args.metrics_max_age()))
    }

    /// Every readiness condition and how it stands, in a stable order; also mirrored on `/metrics`.
    pub fn readiness(&self) -> Vec<(&'static str, Readiness)> {
        let mut checks = vec![(METRIC_DISCOVERY, self.relist_readiness())];
        checks.extend(self.ready_checks.iter().map(|c| (c.name, (c.check)())));
        for (name, readiness) in &checks {
            self.metrics
                .set_check(name, !matches!(readiness, Readiness::NotReady(_)));
        }
        checks
    }

    pub fn is_ready(&self) -> bool {
        self.readiness()
            .iter()
            .all(|(_, r)| !matches!(r, Readiness::NotReady(_)))
    }

    fn relist_readiness(&self) -> Readiness {
        let error = self.relist_error.lock().ok().and_then(|e| e.clone());
        match (self.relisted.load(Ordering::Acquire), error) {
            (true, None) => Readiness::Ready,
            (true, Some(error)) => Readiness::Degraded(format!(
                "the latest series relist failed ({error}); serving the metrics of the previous one"
            )),
            (false, Some(error)) => {
                Readiness::NotReady(format!("no series relist has succeeded yet: {error}"))
            }
            (false, None) => Readiness::NotReady("the first series relist is under way".into()),
        }
    }

    fn record_relist(&self, result: &Result<usize, prometheus::Error>) {
        let error = match result {
            Ok(_) => {
                self.relisted.store(true, Ordering::Release);
                None
            }
            Err(err) => Some(err.summary()),
        };
        if let Ok(mut slot) = self.relist_error.lock() {
            *slot = error;
        }
    }

    /// Lists series for every distinct `seriesQuery` and swaps in a new discovery snapshot.
    /// A query that fails keeps its rules' metrics from the previous snapshot, so one broken query
    /// does not hide every metric; when every query fails the previous snapshot stays whole.
    pub async fn relist(&self) -> Result<usize, prometheus::Error> {
        let end = SystemTime::now();
        let start = end
            .checked_sub(self.metrics_max_age)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let rules = self.rules.load_full();
        let resources = self.resources.load_full();
        let mut builder = rules::discovery::Builder::new(&resources);
        let (mut listed, mut last_error) = (0, None);
        for query in rules.series_queries() {
            match self.prometheus.series(&query.query, start, end).await {
                Ok(series) => {
                    builder.add(&query, &series.shapes);
                    listed += 1;
                }
                Err(err) => {
                    self.metrics.relist_failures.inc();
                    tracing::warn!(series_query = query.query, error = %err, "Listing series failed; keeping this query's metrics");
                    builder.failed(&query);
                    last_error = Some(err);
                }
            }
        }
        if let Some(err) = last_error
            && listed == 0
        {
            return Err(err);
        }
        let previous = self.discovery.load_full();
        let discovery = builder.finish(&previous, end);
        // One line per rule whose outcome changed: what it saw, named and associated.
        for (rule, summary) in &discovery.summaries {
            if previous.summaries.get(rule) != Some(summary) {
                tracing::info!(
                    rule = format!("rules[{rule}]"),
                    series_shapes = summary.series,
                    named = summary.named,
                    metrics = summary.metrics.len(),
                    resources = ?summary.resources,
                    unmapped_labels = ?summary.unmapped_labels,
                    "Rule discovery changed (labels that name no known resource are not associated)"
                );
            }
        }
        let count = discovery.len();
        self.metrics.discovered_metrics.set(count as i64);
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

    /// Re-reads `--config` every `interval` and, when its contents changed, validates it and swaps
    /// the rules in (then relists at once). A bad file keeps the old rules; the log and the metric
    /// `custom_metrics_adapter_config_last_reload_successful` say so. ConfigMap mounts swap a
    /// `..data` symlink, which a content comparison sees like any edit.
    pub async fn reload_loop(
        self: Arc<Self>,
        args: Args,
        interval: Duration,
        shutdown: impl Future<Output = ()>,
    ) {
        let Some(path) = args.config.clone() else { return };
        tokio::pin!(shutdown);
        let mut last = std::fs::read(&path).ok();
        loop {
            tokio::select! {
                () = &mut shutdown => return,
                () = tokio::time::sleep(interval) => {}
            }
            let current = std::fs::read(&path).ok();
            if current == last {
                continue;
            }
            last = current;
            match load_rules(&args) {
                Ok(rules) => {
                    self.rules.store(Arc::new(rules));
                    self.metrics.config_last_reload_successful.set(1);
                    self.metrics.count_reload("success");
                    tracing::info!(config = %path.display(), "Reloaded the rules");
                    if let Err(err) = self.relist().await {
                        tracing::warn!(error = %err, "Relisting after the reload failed");
                    }
                }
                Err(err) => {
                    self.metrics.config_last_reload_successful.set(0);
                    self.metrics.count_reload("failure");
                    tracing::error!(config = %path.display(), error = %format!("{err:#}"), "Keeping the previous rules: the new file is invalid");
                }
            }
        }
    }

    /// Relists now and then every `interval` until `shutdown` resolves; after a failure sooner,
    /// from [`RELIST_RETRY_MIN`] doubling up to `interval`; and at once when API discovery changes
    /// the resource table, so series labels are associated with resources learnt since.
    pub async fn relist_loop(self: Arc<Self>, interval: Duration, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut resources_changed = self.resources.subscribe();
        let mut retry = RELIST_RETRY_MIN;
        loop {
            let result = self.relist().await;
            let wait = match &result {
                Ok(count) => {
                    tracing::debug!(metrics = count, "Relisted series");
                    retry = RELIST_RETRY_MIN;
                    interval
                }
                Err(err) => {
                    tracing::warn!(error = %err, retry_in = ?retry, "Relisting series failed; keeping the previous metric list");
                    let wait = retry.min(interval);
                    retry = (retry * 2).min(interval);
                    wait
                }
            };
            self.record_relist(&result);
            tokio::select! {
                _ = &mut shutdown => return,
                _ = tokio::time::sleep(wait) => {}
                Ok(()) = resources_changed.changed() => {}
            }
        }
    }
}

/// The rules of `--config`, or the built-in defaults with `--rate-interval`.
pub fn load_rules(args: &Args) -> anyhow::Result<RuleSet> {
    let mut set = match &args.config {
        None => {
            let custom = rules::default_rules(&crate::duration::format_prometheus(args.rate_interval))?;
            RuleSet::custom(custom)
        }
        Some(path) => {
            let set = rules::config::load(path)?.rule_set();
            for warning in rules::lint(&set) {
                tracing::warn!(config = %path.display(), "{warning}");
            }
            tracing::info!(config = %path.display(), rules = set.custom.len(), external_rules = set.external.len(), "Loaded rules");
            set
        }
    };
    if args.metric_selector_regex_passthrough {
        tracing::warn!(
            "--metric-selector-regex-passthrough: single-value `in` selectors reach Prometheus as raw regexes"
        );
        set.set_in_regex(rules::promql::InRegex::Passthrough);
    }
    Ok(set)
}

/// With `--prometheus-auth-incluster`, the pod's service-account file `name`.
fn incluster(args: &Args, name: &str) -> Option<std::path::PathBuf> {
    args.prometheus_auth_incluster
        .then(|| std::path::Path::new("/var/run/secrets/kubernetes.io/serviceaccount").join(name))
}

/// Runs the adapter described by `args` until `shutdown` resolves.
pub async fn run(args: Args, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
    server::raise_fd_limit();
    let addr = SocketAddr::new(args.bind_address, args.secure_port);
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    serve(args, listener, shutdown).await
}

/// Runs the adapter on an already bound listener (tests bind 127.0.0.1:0).
pub async fn serve(
    args: Args,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let mut state = State::from_args(&args)?;
    let tls = server::tls::TlsSource::from_args(&args)?;
    let limit = RateLimit {
        qps: args.client_qps,
        burst: args.client_burst,
    };

    if state.objects.is_none() {
        let kubeconfig = args.lister_kubeconfig.as_deref();
        let objects = KubeObjects::start(
            cluster::client(kubeconfig, limit).await?,
            cluster::discovery_client(kubeconfig).await?,
            state.resources.clone(),
            args.discovery_interval,
        );
        objects.set_access_recheck(args.access_recheck);
        state.ready_checks.extend(cluster_checks(&objects));
        state.objects = Some(objects);
    }
    let auth = if args.insecure_allow_anonymous {
        tracing::warn!(
            "INSECURE: --insecure-allow-anonymous is set: no authentication or authorization; anyone who can reach {} reads every metric",
            listener.local_addr().map(|a| a.to_string()).unwrap_or_default()
        );
        None
    } else {
        let (auth, check) = delegated_auth(&args).await?;
        state.ready_checks.extend(check);
        Some(auth)
    };

    let state = Arc::new(state);
    tracing::info!(addr = %listener.local_addr()?, prometheus = state.prometheus.url(), "Serving custom metrics");
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
    let config_reload = tokio::spawn(state.clone().reload_loop(
        args.clone(),
        Duration::from_secs(5),
        stopped(stop_rx.clone()),
    ));
    let router = crate::api::router(state, auth);
    let options = server_options(&args);
    let result = server::serve(listener, tls, router, options, async move {
        shutdown.await;
        tracing::info!("Shutting down; letting in-flight requests finish");
    })
    .await;
    let _ = stop_tx.send(true);
    let _ = tokio::join!(relist, reload, config_reload);
    result.map_err(Into::into)
}

/// The server's limits set by flags. Its timers keep kube-apiserver's values (it has no flags for
/// them), except that a request may always take three times `--prometheus-timeout`: it waits for
/// one round of Prometheus calls (run concurrently), with room to spare.
fn server_options(args: &Args) -> server::Options {
    let defaults = server::Options::default();
    server::Options {
        max_connections: args.max_connections,
        max_requests_inflight: args.max_requests_inflight,
        http2_max_concurrent_streams: match args.http2_max_streams_per_connection {
            0 => defaults.http2_max_concurrent_streams,
            streams => streams,
        },
        request_timeout: defaults
            .request_timeout
            .max(args.prometheus_timeout.saturating_mul(3)),
        rejection: crate::api::ApiError::too_many_requests_response,
        ..defaults
    }
}

/// Readiness of the cluster's object source: API discovery has succeeded once (groups it had to
/// skip are named, not fatal) and every started watch has listed.
fn cluster_checks(objects: &Arc<KubeObjects>) -> [ReadyCheck; 3] {
    let discovery = objects.clone();
    let caches = objects.clone();
    let access = objects.clone();
    [
        ReadyCheck {
            name: "api-discovery",
            check: Box::new(move || match discovery.discovery_health() {
                DiscoveryHealth::NotYet(reason) => Readiness::NotReady(format!(
                    "Kubernetes API discovery has not succeeded yet: {reason}"
                )),
                DiscoveryHealth::Ready { unavailable } if unavailable.is_empty() => Readiness::Ready,
                DiscoveryHealth::Ready { unavailable } => Readiness::Degraded(format!(
                    "{} API group version(s) unavailable and skipped: {}",
                    unavailable.len(),
                    unavailable.join(", ")
                )),
            }),
        },
        ReadyCheck {
            name: "object-caches",
            check: Box::new(move || {
                let waiting = caches.unsynced();
                if waiting.is_empty() {
                    return Readiness::Ready;
                }
                Readiness::NotReady(format!(
                    "the watch of {} has not finished its first list",
                    waiting.join(", ")
                ))
            }),
        },
        // Resources RBAC keeps the adapter from listing do not make it unready: it serves everything else.
        ReadyCheck {
            name: "object-access",
            check: Box::new(move || {
                let forbidden = access.forbidden();
                if forbidden.is_empty() {
                    return Readiness::Ready;
                }
                Readiness::Degraded(format!(
                    "not allowed to list and watch {}, so their metrics are not served (grant list and watch in the ClusterRole {})",
                    forbidden.join(", "),
                    crate::objects::READER_CLUSTER_ROLE
                ))
            }),
        },
    ]
}

/// Authentication and authorization delegated to the Kubernetes API server, with clients of
/// their own (not limited by `--client-qps`) and bounded review latency; and, unless
/// `--authentication-skip-lookup`, the readiness check of the cluster's authentication settings.
async fn delegated_auth(args: &Args) -> anyhow::Result<(Arc<Auth>, Option<ReadyCheck>)> {
    let limit = cluster::DELEGATED_AUTH_RATE_LIMIT;
    let authn_client = cluster::client(args.authentication_kubeconfig.as_deref(), limit).await?;
    let authz_client = cluster::client(args.authorization_kubeconfig.as_deref(), limit).await?;
    let flags = flag_authn_config(args)?;
    let tokens = TokenReviewer::new(authn_client.clone(), args.authentication_token_webhook_cache_ttl)
        .with_timeout(args.authentication_timeout);
    let auth = Arc::new(Auth {
        authenticator: Authenticator::new(flags.clone().with_default_headers(), Some(tokens)),
        authorizer: Authorizer::new(
            authz_client,
            args.authorization_webhook_cache_authorized_ttl,
            args.authorization_webhook_cache_unauthorized_ttl,
        )
        .with_timeout(args.authorization_timeout),
        always_allow_paths: args.authorization_always_allow_paths.clone(),
    });
    if args.authentication_skip_lookup {
        return Ok((auth, None));
    }
    let (loaded_tx, loaded_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(auth::watch_auth_configmap(
        authn_client,
        auth.clone(),
        move |from_cluster| merge_authn(from_cluster, &flags),
        loaded_tx,
    ));
    let check = auth_config_check(loaded_rx, args.authentication_tolerate_lookup_failure);
    Ok((auth, Some(check)))
}

/// Until kube-system/extension-apiserver-authentication was read, the front proxy cannot be
/// trusted, so the adapter is not ready (prometheus-adapter exits instead, and crash-loops while
/// the API server is unreachable or the Role binding is missing); with
/// `--authentication-tolerate-lookup-failure` it is ready on its flags alone.
fn auth_config_check(loaded: tokio::sync::watch::Receiver<bool>, tolerate: bool) -> ReadyCheck {
    let problem = format!(
        "kube-system/{} has not been read: bind the ServiceAccount to the Role extension-apiserver-authentication-reader in kube-system",
        auth::AUTH_CONFIGMAP
    );
    let mut waiting = loaded.clone();
    let warning = problem.clone();
    tokio::spawn(async move {
        let read = tokio::time::timeout(Duration::from_secs(10), waiting.wait_for(|l| *l)).await;
        if !matches!(read, Ok(Ok(_))) {
            tracing::warn!(tolerated = tolerate, "{warning}; still trying");
        }
    });
    ReadyCheck {
        name: "authentication-config",
        check: Box::new(move || match (*loaded.borrow(), tolerate) {
            (true, _) => Readiness::Ready,
            (false, true) => Readiness::Degraded(format!(
                "{problem}; using the flags alone (--authentication-tolerate-lookup-failure)"
            )),
            (false, false) => Readiness::NotReady(format!(
                "{problem}, or pass --authentication-tolerate-lookup-failure"
            )),
        }),
    }
}

/// The authentication settings given by flags (empty where a flag is absent).
fn flag_authn_config(args: &Args) -> anyhow::Result<AuthnConfig> {
    let read = |path: &Option<std::path::PathBuf>| -> anyhow::Result<Vec<_>> {
        match path {
            Some(path) => {
                let pem = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
                Ok(auth::parse_pem_certs(&pem, &path.display().to_string())?)
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

/// Flags win over the cluster's ConfigMap: the client CA on its own, the request-header settings
/// as a whole when `--requestheader-client-ca-file` is given.
fn merge_authn(from_cluster: AuthnConfig, flags: &AuthnConfig) -> AuthnConfig {
    let mut merged = if flags.requestheader_ca.is_empty() {
        from_cluster.clone()
    } else {
        AuthnConfig {
            client_ca: from_cluster.client_ca.clone(),
            ..flags.clone()
        }
    };
    if !flags.client_ca.is_empty() {
        merged.client_ca = flags.client_ca.clone();
    }
    merged.with_default_headers()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_limits_are_flags_not_ignored() {
        let argv = [
            "adapter",
            "--max-requests-inflight=1",
            "--http2-max-streams-per-connection",
            "7",
            "--max-connections=3",
            "--prometheus-timeout=30s",
        ];
        let (kept, ignored) = crate::config::split_ignored_flags(argv.iter().map(std::ffi::OsString::from));
        assert!(ignored.is_empty(), "{ignored:?}");
        let options = server_options(&<Args as clap::Parser>::try_parse_from(kept).unwrap());
        assert_eq!(options.max_requests_inflight, 1);
        assert_eq!(options.http2_max_concurrent_streams, 7);
        assert_eq!(options.max_connections, 3);
        assert_eq!(
            options.request_timeout,
            Duration::from_secs(90),
            "three Prometheus timeouts"
        );
        let defaults = server_options(&<Args as clap::Parser>::try_parse_from(["adapter"]).unwrap());
        assert_eq!(defaults.max_requests_inflight, 400, "kube-apiserver's default");
        assert_eq!(
            defaults.http2_max_concurrent_streams, 100,
            "kube-apiserver's default"
        );
        assert_eq!(defaults.request_timeout, Duration::from_secs(60));
    }
}
