//! The running adapter: builds every subsystem from its part of the [`Config`], starts the
//! background loops, and serves until shutdown.

use std::{future::Future, sync::Arc, time::Duration};

use anyhow::Context;
use tokio::net::TcpListener;

use crate::{
    api,
    auth::{self, Auth, Authenticator, AuthnConfig, Authorizer, TokenReviewer},
    backend::{CachingBackend, MetricsBackend, cache, prometheus},
    cluster,
    config::{AuthConfig, AuthLookup, Config, ObjectsConfig, RulesConfig},
    health::{Health, Readiness, ReadyCheck},
    objects::{DiscoveryHealth, KubeObjects, ObjectSource, SharedResources, StaticObjects},
    pipeline::{self, Pipeline},
    rules,
    rules::RuleSet,
    server,
    telemetry::Metrics,
};

/// How often `--config` and the serving certificate files are looked at for changes.
const CONFIG_POLL: Duration = Duration::from_secs(5);
const CERTIFICATE_POLL: Duration = Duration::from_secs(10);

/// Runs the adapter described by `config` until `shutdown` resolves.
pub async fn run(config: Config, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
    server::raise_fd_limit();
    let addr = config.server.listen;
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    serve(config, listener, shutdown).await
}

/// What [`serve_with`] takes instead of building it from the configuration. Production runs
/// [`serve`]; tests and embedders give another backend or object source.
#[derive(Default)]
pub struct Seams {
    /// Instead of the Prometheus client `config.backend` describes.
    pub backend: Option<Arc<dyn MetricsBackend>>,
    pub objects: ObjectsSeam,
}

/// Where the objects that exist come from.
#[derive(Default)]
pub enum ObjectsSeam {
    /// `--objects-file`, or the cluster's.
    #[default]
    FromConfig,
    Given(Arc<dyn ObjectSource>),
    /// No object source: every object with samples exists (and `labelSelector` cannot be applied).
    Unknown,
}

/// Runs the adapter on an already bound listener.
pub async fn serve(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    serve_with(config, Seams::default(), listener, shutdown).await
}

/// [`serve`], with parts given instead of built from `config`.
pub async fn serve_with(
    config: Config,
    seams: Seams,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let metrics = Arc::new(Metrics::default());
    let tls = server::TlsSource::from_config(&config.server.tls)?;
    let (pipeline, mut checks) = build_pipeline(&config, seams, &metrics).await?;
    let auth = match &config.auth {
        None => {
            tracing::warn!(
                "INSECURE: --insecure-allow-anonymous is set: no authentication or authorization; anyone who can reach {} reads every metric",
                listener.local_addr().map(|a| a.to_string()).unwrap_or_default()
            );
            None
        }
        Some(auth_config) => {
            let (auth, check) = delegated_auth(auth_config).await?;
            checks.extend(check);
            Some(auth)
        }
    };
    let context = Arc::new(api::Context {
        pipeline: pipeline.clone(),
        health: Arc::new(Health::new(checks, metrics.clone())),
        metrics,
    });
    tracing::info!(addr = %listener.local_addr()?, backend = pipeline.backend().describe(), "Serving custom metrics");

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let relist = tokio::spawn(
        pipeline
            .clone()
            .relist_loop(config.discovery.relist_interval, stopped(stop_rx.clone())),
    );
    let reload = tokio::spawn(
        tls.clone()
            .reload_loop(CERTIFICATE_POLL, stopped(stop_rx.clone())),
    );
    let config_reload = tokio::spawn(reload_rules_loop(
        pipeline,
        config.rules.clone(),
        stopped(stop_rx.clone()),
    ));
    let options = server::Options {
        rejection: api::ApiError::too_many_requests_response,
        ..config.server.options.clone()
    };
    let result = server::serve(listener, tls, api::router(context, auth), options, async move {
        shutdown.await;
        tracing::info!("Shutting down; letting in-flight requests finish");
    })
    .await;
    let _ = stop_tx.send(true);
    let _ = tokio::join!(relist, reload, config_reload);
    result.map_err(Into::into)
}

/// The rules, the backend and the object source, and the readiness checks of the metric and
/// object discovery behind them.
async fn build_pipeline(
    config: &Config,
    seams: Seams,
    metrics: &Arc<Metrics>,
) -> anyhow::Result<(Arc<Pipeline>, Vec<ReadyCheck>)> {
    let resources = Arc::new(SharedResources::default());
    let rules = load_rules(&config.rules)?;
    let backend: Arc<dyn MetricsBackend> = match seams.backend {
        Some(backend) => backend,
        None => Arc::new(prometheus::Client::new(&config.backend.prometheus)?),
    };
    let backend = Arc::new(CachingBackend::new(
        backend,
        config.backend.query_cache_ttl,
        cache::Counters {
            hits: metrics.query_cache_hits.clone(),
            misses: metrics.query_cache_misses.clone(),
            coalesced: metrics.query_cache_coalesced.clone(),
        },
    ));
    let (objects, object_checks) = match seams.objects {
        ObjectsSeam::FromConfig => {
            let (objects, checks) = object_source(&config.objects, &resources).await?;
            (Some(objects), checks)
        }
        ObjectsSeam::Given(objects) => (Some(objects), Vec::new()),
        ObjectsSeam::Unknown => (None, Vec::new()),
    };
    let pipeline = Arc::new(Pipeline::new(pipeline::Parts {
        rules,
        backend,
        objects,
        resources,
        max_age: config.discovery.max_age,
        metrics: metrics.clone(),
    }));
    let relisting = pipeline.clone();
    let mut checks = vec![ReadyCheck::new(METRIC_DISCOVERY, move || {
        relisting.relist_readiness()
    })];
    checks.extend(object_checks);
    Ok((pipeline, checks))
}

/// The name of the relist's readiness check.
const METRIC_DISCOVERY: &str = "metric-discovery";

/// The objects that exist: those of `--objects-file`, or the cluster's, watched, with the
/// readiness checks of the cluster's API discovery, caches and access.
async fn object_source(
    config: &ObjectsConfig,
    resources: &Arc<SharedResources>,
) -> anyhow::Result<(Arc<dyn ObjectSource>, Vec<ReadyCheck>)> {
    let ObjectsConfig {
        file,
        kubeconfig,
        rate_limit,
        access_recheck,
        api_discovery_interval,
    } = config;
    if let Some(path) = file {
        return Ok((Arc::new(StaticObjects::load(path)?), Vec::new()));
    }
    let kubeconfig = kubeconfig.as_deref();
    let objects = KubeObjects::start(
        cluster::client(kubeconfig, *rate_limit).await?,
        cluster::discovery_client(kubeconfig).await?,
        resources.clone(),
        *api_discovery_interval,
    );
    objects.set_access_recheck(*access_recheck);
    let checks = cluster_checks(&objects).into();
    Ok((objects, checks))
}

/// The rules of `--config`, or the built-in defaults with `--rate-interval`.
pub fn load_rules(config: &RulesConfig) -> anyhow::Result<RuleSet> {
    let mut set = match &config.file {
        None => {
            let custom = rules::default_rules(&crate::duration::format_prometheus(config.rate_interval))?;
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
    if config.in_regex == rules::promql::InRegex::Passthrough {
        tracing::warn!(
            "--metric-selector-regex-passthrough: single-value `in` selectors reach Prometheus as raw regexes"
        );
        set.set_in_regex(rules::promql::InRegex::Passthrough);
    }
    Ok(set)
}

/// Re-reads `--config` every few seconds and, when its contents changed, validates it and swaps
/// the rules in (then relists at once). A bad file keeps the old rules; the log and the metric
/// `custom_metrics_adapter_config_last_reload_successful` say so. ConfigMap mounts swap a
/// `..data` symlink, which a content comparison sees like any edit.
async fn reload_rules_loop(pipeline: Arc<Pipeline>, config: RulesConfig, shutdown: impl Future<Output = ()>) {
    let Some(path) = config.file.clone() else { return };
    let mut last = std::fs::read(&path).ok();
    let mut ticker = crate::periodic::Ticker::new(CONFIG_POLL, shutdown);
    while ticker.tick().await {
        let current = std::fs::read(&path).ok();
        if current == last {
            continue;
        }
        last = current;
        let metrics = pipeline.metrics();
        match load_rules(&config) {
            Ok(rules) => {
                pipeline.set_rules(rules);
                metrics.config_last_reload_successful.set(1);
                metrics.count_reload("success");
                tracing::info!(config = %path.display(), "Reloaded the rules");
                if let Err(err) = pipeline.relist().await {
                    tracing::warn!(error = %err, "Relisting after the reload failed");
                }
            }
            Err(err) => {
                metrics.config_last_reload_successful.set(0);
                metrics.count_reload("failure");
                tracing::error!(config = %path.display(), error = %format!("{err:#}"), "Keeping the previous rules: the new file is invalid");
            }
        }
    }
}

/// Readiness of the cluster's object source: API discovery has succeeded once (groups it had to
/// skip are named, not fatal) and every started watch has listed.
fn cluster_checks(objects: &Arc<KubeObjects>) -> [ReadyCheck; 3] {
    let discovery = objects.clone();
    let caches = objects.clone();
    let access = objects.clone();
    [
        ReadyCheck::new("api-discovery", move || match discovery.discovery_health() {
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
        ReadyCheck::new("object-caches", move || {
            let waiting = caches.unsynced();
            if waiting.is_empty() {
                return Readiness::Ready;
            }
            Readiness::NotReady(format!(
                "the watch of {} has not finished its first list",
                waiting.join(", ")
            ))
        }),
        // Resources RBAC keeps the adapter from listing do not make it unready: it serves everything else.
        ReadyCheck::new("object-access", move || {
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
    ]
}

/// Authentication and authorization delegated to the Kubernetes API server, with clients of
/// their own (not limited by `--client-qps`) and bounded review latency; and, unless
/// `--authentication-skip-lookup`, the readiness check of the cluster's authentication settings.
async fn delegated_auth(config: &AuthConfig) -> anyhow::Result<(Arc<Auth>, Option<ReadyCheck>)> {
    let limit = cluster::DELEGATED_AUTH_RATE_LIMIT;
    let authn_client = cluster::client(config.authentication_kubeconfig.as_deref(), limit).await?;
    let authz_client = cluster::client(config.authorization_kubeconfig.as_deref(), limit).await?;
    let flags = config.flags.clone();
    let tokens = TokenReviewer::new(authn_client.clone(), config.token_cache_ttl)
        .with_timeout(config.authentication_timeout);
    let auth = Arc::new(Auth {
        authenticator: Authenticator::new(flags.clone().with_default_headers(), Some(tokens)),
        authorizer: Authorizer::new(authz_client, config.authorized_ttl, config.unauthorized_ttl)
            .with_timeout(config.authorization_timeout),
        always_allow_paths: config.always_allow_paths.clone(),
    });
    let tolerate = match config.lookup {
        AuthLookup::Skip => return Ok((auth, None)),
        AuthLookup::Required => false,
        AuthLookup::Tolerated => true,
    };
    let (loaded_tx, loaded_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(auth::watch_auth_configmap(
        authn_client,
        auth.clone(),
        move |from_cluster| merge_authn(from_cluster, &flags),
        loaded_tx,
    ));
    Ok((auth, Some(auth_config_check(loaded_rx, tolerate))))
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
    ReadyCheck::new("authentication-config", move || {
        match (*loaded.borrow(), tolerate) {
            (true, _) => Readiness::Ready,
            (false, true) => Readiness::Degraded(format!(
                "{problem}; using the flags alone (--authentication-tolerate-lookup-failure)"
            )),
            (false, false) => Readiness::NotReady(format!(
                "{problem}, or pass --authentication-tolerate-lookup-failure"
            )),
        }
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
