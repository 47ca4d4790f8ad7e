//! Delegated authentication and authorization, as every aggregated API server does them: trust the
//! front proxy only behind its client certificate, ask the API server about tokens and permissions.

mod authn;
mod authz;

use std::{future::Future, sync::Arc, time::Duration};

use axum::http::{HeaderMap, Method};
use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::{
    Api,
    runtime::{WatchStreamExt, watcher},
};

pub use authn::{Authenticator, AuthnConfig, TokenReviewer, UserInfo, parse_pem_certs};
pub use authz::{Attributes, Authorizer, Decision};

use rustls::pki_types::CertificateDer;

#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    #[error("Unauthorized")]
    Unauthorized,
    #[error("{review} failed ({failure:?}): {cause}")]
    Review {
        review: &'static str,
        failure: ReviewFailure,
        cause: String,
    },
    #[error("invalid authentication configuration: {0}")]
    Config(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a TokenReview or SubjectAccessReview gave no answer; decides what the client is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReviewFailure {
    /// No answer within `--authentication-timeout`/`--authorization-timeout`.
    TimedOut,
    /// The API server could not be reached or answered 429 or 5xx: worth retrying.
    Unavailable,
    /// The API server refused the review (a 4xx, e.g. the adapter lacks RBAC) or answered garbage.
    Refused,
}

/// How long a TokenReview or SubjectAccessReview may take by default, as k8s.io/apiserver's
/// delegating authenticator and authorizer (`TokenRequestTimeout`, `ClientTimeout`).
pub const REVIEW_TIMEOUT: Duration = Duration::from_secs(10);

/// Sends one review with a deadline and names the failure, so callers answer the client without
/// passing client-library errors on.
async fn send_review<T>(
    review: &'static str,
    timeout: Duration,
    call: impl Future<Output = kube::Result<T>>,
) -> Result<T> {
    let failed = |failure, cause| Error::Review {
        review,
        failure,
        cause,
    };
    match tokio::time::timeout(timeout, call).await {
        Ok(Ok(answer)) => Ok(answer),
        Err(_) => Err(failed(
            ReviewFailure::TimedOut,
            format!("no answer within {timeout:?}"),
        )),
        Ok(Err(err)) => {
            let failure = match &err {
                kube::Error::Api(status) if status.code == 429 || status.code >= 500 => {
                    ReviewFailure::Unavailable
                }
                kube::Error::Api(_) | kube::Error::SerdeError(_) => ReviewFailure::Refused,
                _ => ReviewFailure::Unavailable,
            };
            Err(failed(failure, err.to_string()))
        }
    }
}

/// The name of the ConfigMap that holds the cluster's authentication settings.
pub const AUTH_CONFIGMAP: &str = "extension-apiserver-authentication";

/// Authentication plus authorization of every request.
pub struct Auth {
    pub authenticator: Authenticator,
    pub authorizer: Authorizer,
    /// Paths that skip authorization (still authenticated).
    pub always_allow_paths: Vec<String>,
}

/// Why a request is not let through; `api` turns each into the API server's Status.
#[derive(Debug, Clone)]
pub enum Denial {
    /// No credentials the cluster trusts, or a token that could not be checked in time: 401.
    Unauthenticated,
    /// Authenticated, but not allowed: 403 with the API server's message.
    Forbidden {
        message: String,
        attributes: Box<Attributes>,
    },
    /// The authorization review did not complete in time or the API server was unavailable: the
    /// client may retry.
    ReviewUnavailable,
    /// The API server refused the authorization review (the adapter's RBAC, a bad answer).
    ReviewRefused,
}

impl Auth {
    /// Authenticates the caller (stripping the front proxy's headers from `headers`) and, unless
    /// `path` always passes, authorizes `method` on the decoded `path`. Review details go to the
    /// log only; the caller learns the outcome.
    pub async fn check(
        &self,
        method: &Method,
        path: &str,
        headers: &mut HeaderMap,
        peer_certificates: &[CertificateDer<'static>],
    ) -> Result<UserInfo, Denial> {
        let user = match self.authenticator.authenticate(headers, peer_certificates).await {
            Ok(user) => user,
            Err(Error::Unauthorized) => return Err(Denial::Unauthenticated),
            Err(err) => {
                tracing::warn!(error = %err, "Unable to authenticate the request; answering 401");
                return Err(Denial::Unauthenticated);
            }
        };
        if !self.always_allow_paths.iter().any(|p| p == path) {
            let attributes = Attributes::from_request(method, path);
            self.authorize(&user, attributes).await?;
        }
        Ok(user)
    }

    async fn authorize(&self, user: &UserInfo, attributes: Attributes) -> Result<(), Denial> {
        match self.authorizer.authorize(user, &attributes).await {
            Ok(Decision { allowed: true, .. }) => Ok(()),
            Ok(Decision { reason, .. }) => {
                tracing::info!(user = %user.name, verb = %attributes.verb, path = %attributes.path, %reason, "Forbidden");
                Err(Denial::Forbidden {
                    message: attributes.forbidden_message(&user.name, &reason),
                    attributes: Box::new(attributes),
                })
            }
            Err(err) => {
                tracing::warn!(user = %user.name, verb = %attributes.verb, path = %attributes.path, error = %err, "Authorization failed");
                Err(match err {
                    Error::Review {
                        failure: ReviewFailure::TimedOut | ReviewFailure::Unavailable,
                        ..
                    } => Denial::ReviewUnavailable,
                    _ => Denial::ReviewRefused,
                })
            }
        }
    }
}

/// Keeps `authenticator` in step with the ConfigMap `kube-system/extension-apiserver-authentication`,
/// so a CA rotation takes effect without a restart. `overrides` applies the flags that were given.
/// Returns after the first successful load is applied (or the watch ends).
pub async fn watch_auth_configmap(
    client: kube::Client,
    auth: Arc<Auth>,
    overrides: impl Fn(AuthnConfig) -> AuthnConfig + Send + Sync + 'static,
    loaded: tokio::sync::watch::Sender<bool>,
) {
    let api: Api<ConfigMap> = Api::namespaced(client, "kube-system");
    let config = watcher::Config::default().fields(&format!("metadata.name={AUTH_CONFIGMAP}"));
    let mut stream = std::pin::pin!(watcher(api, config).default_backoff().applied_objects());
    while let Some(event) = stream.next().await {
        match event {
            Ok(configmap) => {
                let data = configmap.data.unwrap_or_default();
                match AuthnConfig::from_configmap(&data) {
                    Ok(config) => {
                        let config = overrides(config);
                        if *auth.authenticator.config() != config {
                            tracing::info!(
                                requestheader_cas = config.requestheader_ca.len(),
                                client_cas = config.client_ca.len(),
                                allowed_names = ?config.allowed_names,
                                "Loaded authentication settings from kube-system/{AUTH_CONFIGMAP}"
                            );
                        }
                        auth.authenticator.set_config(config);
                        let _ = loaded.send(true);
                    }
                    Err(err) => tracing::warn!(error = %err, "Keeping the previous authentication settings"),
                }
            }
            Err(err) => {
                tracing::warn!(error = %err, "Watching kube-system/{AUTH_CONFIGMAP} failed; retrying")
            }
        }
    }
}
