//! Kubernetes API clients: one per purpose (objects, authentication, authorization), from a
//! kubeconfig flag or the usual inference (`$KUBECONFIG`, `~/.kube/config`, in-cluster).

use std::{path::Path, time::Duration};

use kube::{
    Client, Config,
    client::ClientBuilder,
    config::{KubeConfigOptions, Kubeconfig},
};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read kubeconfig {path}: {message}")]
    Kubeconfig { path: String, message: String },
    #[error(
        "no Kubernetes configuration found ({0}); run in a cluster, pass --lister-kubeconfig, or use --objects-file with --insecure-allow-anonymous for a local run"
    )]
    Infer(String),
    #[error("cannot build a Kubernetes client: {0}")]
    Client(#[from] kube::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Client-side rate limit, as client-go's `--client-qps`/`--client-burst`.
#[derive(Debug, Clone, Copy)]
pub struct RateLimit {
    pub qps: f32,
    pub burst: u32,
}

/// The rate limit of the TokenReview and SubjectAccessReview clients, the one k8s.io/apiserver
/// gives its delegating authenticator and authorizer. Every request that misses the review caches
/// waits for a review, so reviews must not queue behind `--client-qps`, which paces watches.
pub const DELEGATED_AUTH_RATE_LIMIT: RateLimit = RateLimit {
    qps: 200.0,
    burst: 400,
};

/// Builds a client from `kubeconfig`, or infers the configuration when it is None.
pub async fn client(kubeconfig: Option<&Path>, limit: RateLimit) -> Result<Client> {
    build(config(kubeconfig).await?, Some(limit))
}

/// A client for API discovery: no rate limit, so discovering a cluster's hundreds of groups does
/// not delay start-up by minutes, and no retries, because kube-rs' retry layer retries every 503 of
/// an unavailable aggregated group and would hold discovery for as long as that group is down.
pub async fn discovery_client(kubeconfig: Option<&Path>) -> Result<Client> {
    let mut config = config(kubeconfig).await?;
    config.default_retry = false;
    build(config, None)
}

async fn config(kubeconfig: Option<&Path>) -> Result<Config> {
    match kubeconfig {
        Some(path) => {
            let error = |message: String| Error::Kubeconfig {
                path: path.display().to_string(),
                message,
            };
            let file = Kubeconfig::read_from(path).map_err(|err| error(err.to_string()))?;
            Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
                .await
                .map_err(|err| error(err.to_string()))
        }
        None => Config::infer().await.map_err(|err| Error::Infer(err.to_string())),
    }
}

fn build(config: Config, limit: Option<RateLimit>) -> Result<Client> {
    let builder = ClientBuilder::try_from(config)?;
    let Some(limit) = limit.filter(|l| l.qps > 0.0 && l.burst > 0) else {
        return Ok(builder.build());
    };
    // `burst` requests per `burst / qps` seconds: the same long-run rate as client-go's token bucket.
    let window = Duration::from_secs_f32(limit.burst as f32 / limit.qps);
    let layer = tower::limit::RateLimitLayer::new(u64::from(limit.burst), window);
    Ok(builder.with_layer(&layer).build())
}
