//! Delegated authentication and authorization, as every aggregated API server does them: trust the
//! front proxy only behind its client certificate, ask the API server about tokens and permissions.

mod authn;
mod authz;

use std::sync::Arc;

use axum::{
    extract::{Request, State},
    middleware::Next,
    response::{IntoResponse, Response},
};
use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::{
    Api,
    runtime::{WatchStreamExt, watcher},
};

pub use authn::{Authenticator, AuthnConfig, TokenReviewer, UserInfo, parse_pem_certs};
pub use authz::{Attributes, Authorizer, Decision};

use crate::{api::ApiError, server::ConnectionInfo};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Unauthorized")]
    Unauthorized,
    #[error("{0}")]
    Review(String),
    #[error("invalid authentication configuration: {0}")]
    Config(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How long a TokenReview or SubjectAccessReview may take before the request fails.
pub const REVIEW_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The name of the ConfigMap that holds the cluster's authentication settings.
pub const AUTH_CONFIGMAP: &str = "extension-apiserver-authentication";

/// Authentication plus authorization, used by [`middleware`].
pub struct Auth {
    pub authenticator: Authenticator,
    pub authorizer: Authorizer,
    /// Paths that skip authorization (still authenticated).
    pub always_allow_paths: Vec<String>,
}

/// The user a request was authenticated as (request extension, for handlers and logs).
#[derive(Debug, Clone)]
pub struct Caller(pub UserInfo);

/// Authenticates, strips the front proxy's headers, and authorizes every request.
pub async fn middleware(State(auth): State<Arc<Auth>>, mut request: Request, next: Next) -> Response {
    let certificates = request
        .extensions()
        .get::<ConnectionInfo>()
        .map(|info| info.peer_certificates.clone())
        .unwrap_or_default();
    let user = match auth
        .authenticator
        .authenticate(request.headers_mut(), &certificates)
        .await
    {
        Ok(user) => user,
        Err(Error::Unauthorized) => return ApiError::unauthorized().into_response(),
        Err(err) => {
            tracing::warn!(error = %err, "Authentication failed");
            return ApiError::internal(err.to_string()).into_response();
        }
    };
    let path = request.uri().path();
    if !auth.always_allow_paths.iter().any(|p| p == path) {
        let attributes = Attributes::from_request(request.method(), path);
        match auth.authorizer.authorize(&user, &attributes).await {
            Ok(Decision { allowed: true, .. }) => {}
            Ok(Decision { reason, .. }) => {
                tracing::info!(user = %user.name, verb = %attributes.verb, %path, %reason, "Forbidden");
                let message = attributes.forbidden_message(&user.name, &reason);
                return ApiError::forbidden(
                    message,
                    &attributes.api_group,
                    &attributes.resource,
                    &attributes.name,
                )
                .into_response();
            }
            Err(err) => {
                tracing::warn!(error = %err, "Authorization failed");
                return ApiError::internal(err.to_string()).into_response();
            }
        }
    }
    request.extensions_mut().insert(Caller(user));
    next.run(request).await
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
