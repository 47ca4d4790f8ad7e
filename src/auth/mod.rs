//! Delegated authentication and authorization, as every aggregated API server does them: trust the
//! front proxy only behind its client certificate, ask the API server about tokens and permissions.

mod authn;
mod authz;

use std::{future::Future, sync::Arc, time::Duration};

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

use crate::{
    api::{ApiError, path::RequestPath},
    server::ConnectionInfo,
};

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

/// What a client that may retry is told to wait, in seconds.
const RETRY_AFTER_SECONDS: u32 = 1;

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

/// Authenticates, strips the front proxy's headers, and authorizes every request, on the path
/// [`crate::api::path`] decoded (the one the router serves).
pub async fn middleware(State(auth): State<Arc<Auth>>, mut request: Request, next: Next) -> Response {
    let path = match request.extensions().get::<RequestPath>() {
        Some(RequestPath(path)) => path.clone(),
        // Not behind the path middleware: the URI was never decoded, so decode it here, once.
        None => match crate::api::path::canonical(request.uri().path()) {
            Ok((path, _)) => path,
            Err(err) => return ApiError::bad_request(err.to_string()).into_response(),
        },
    };
    let user = match authenticate(&auth, &mut request).await {
        Ok(user) => user,
        Err(response) => return *response,
    };
    if !auth.always_allow_paths.contains(&path) {
        let attributes = Attributes::from_request(request.method(), &path);
        if let Err(response) = authorize(&auth, &user, &attributes).await {
            return *response;
        }
    }
    request.extensions_mut().insert(Caller(user));
    next.run(request).await
}

/// The caller, or the API server's 401 when credentials are invalid or cannot be checked (a
/// TokenReview that failed or timed out: the token is not trusted without an answer).
async fn authenticate(auth: &Auth, request: &mut Request) -> Result<UserInfo, Box<Response>> {
    let certificates = request
        .extensions()
        .get::<ConnectionInfo>()
        .map(|info| info.peer_certificates.clone())
        .unwrap_or_default();
    match auth
        .authenticator
        .authenticate(request.headers_mut(), &certificates)
        .await
    {
        Ok(user) => Ok(user),
        Err(Error::Unauthorized) => Err(Box::new(ApiError::unauthorized().into_response())),
        Err(err) => {
            tracing::warn!(error = %err, "Unable to authenticate the request; answering 401");
            Err(Box::new(ApiError::unauthorized().into_response()))
        }
    }
}

/// Nothing when `user` may do what `attributes` say; otherwise the answer: 403 when denied, 503
/// with Retry-After when the review did not complete in time or the API server is unavailable,
/// 500 when the API server refused the review. Review details go to the log only.
async fn authorize(auth: &Auth, user: &UserInfo, attributes: &Attributes) -> Result<(), Box<Response>> {
    let error = match auth.authorizer.authorize(user, attributes).await {
        Ok(Decision { allowed: true, .. }) => return Ok(()),
        Ok(Decision { reason, .. }) => {
            tracing::info!(user = %user.name, verb = %attributes.verb, path = %attributes.path, %reason, "Forbidden");
            let message = attributes.forbidden_message(&user.name, &reason);
            ApiError::forbidden(
                message,
                &attributes.api_group,
                &attributes.resource,
                &attributes.name,
            )
        }
        Err(err) => {
            tracing::warn!(user = %user.name, verb = %attributes.verb, path = %attributes.path, error = %err, "Authorization failed");
            match err {
                Error::Review {
                    failure: ReviewFailure::TimedOut | ReviewFailure::Unavailable,
                    ..
                } => ApiError::service_unavailable_retry(
                    "the authorization check could not be completed; retry",
                    RETRY_AFTER_SECONDS,
                ),
                _ => ApiError::internal(
                    "the authorization check could not be completed; the adapter's log says why",
                ),
            }
        }
    };
    Err(Box::new(error.into_response()))
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
