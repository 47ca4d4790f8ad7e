//! The Kubernetes-facing HTTP surface: routes, discovery, health, and the custom metrics handlers.

pub(crate) mod custom;
mod discovery;
pub mod error;
mod external;
mod guard;
pub mod path;
mod resource;
pub mod types;

use std::{collections::BTreeMap, time::Instant};

use axum::{
    Router,
    body::Body,
    extract::{FromRequestParts, Path, Query, Request, State},
    http::{HeaderValue, StatusCode, header::CONTENT_TYPE, request::Parts},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::get,
};
use serde::Serialize;
use tower::Layer;

pub use crate::pipeline::MetricPath;
pub use error::ApiError;

use crate::{
    auth::Auth, health::Health, health::Readiness, pipeline::Pipeline, selector::Selector, telemetry::Metrics,
};

/// What the handlers serve from.
pub struct Context {
    pub pipeline: std::sync::Arc<Pipeline>,
    pub health: std::sync::Arc<Health>,
    pub metrics: std::sync::Arc<Metrics>,
}

type SharedState = std::sync::Arc<Context>;

/// A served API group and its versions, preferred first.
pub struct GroupDef {
    pub name: &'static str,
    pub versions: &'static [&'static str],
}

/// Every group this server answers. `custom-metrics.metrics.k8s.io` is the group some tutorials
/// register; it has the same wire format as `custom.metrics.k8s.io/v1beta1`.
pub const GROUPS: &[GroupDef] = &[
    GroupDef {
        name: "custom.metrics.k8s.io",
        versions: &["v1beta2", "v1beta1"],
    },
    GroupDef {
        name: "custom-metrics.metrics.k8s.io",
        versions: &["v1beta1"],
    },
];

/// The wire format of a served group/version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireVersion {
    V1Beta1,
    V1Beta2,
}

/// The external metrics group.
pub const EXTERNAL_GROUP: GroupDef = GroupDef {
    name: external::GROUP,
    versions: &[external::VERSION],
};

/// The resource metrics group, served when the configuration has `resourceRules`.
pub const RESOURCE_GROUP: GroupDef = GroupDef {
    name: resource::GROUP,
    versions: &[resource::VERSION],
};

/// The groups served with the current rules.
pub fn served_groups(pipeline: &Pipeline) -> Vec<&'static GroupDef> {
    groups_served(pipeline.rules().resource.is_some())
}

/// The groups served, with `resource_metrics` when the rules have `resourceRules`.
fn groups_served(resource_metrics: bool) -> Vec<&'static GroupDef> {
    let mut groups: Vec<&'static GroupDef> = GROUPS.iter().collect();
    // External metrics are always served (an empty list without externalRules), so their
    // APIService stays available and rules added by a reload work at once.
    groups.push(&EXTERNAL_GROUP);
    if resource_metrics {
        groups.push(&RESOURCE_GROUP);
    }
    groups
}

/// Query parameters; a query string that does not decode is a 400 Status, like every error.
pub(super) struct Params(pub BTreeMap<String, String>);

impl<S: Send + Sync> FromRequestParts<S> for Params {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match Query::<BTreeMap<String, String>>::from_request_parts(parts, state).await {
            Ok(Query(params)) => Ok(Params(params)),
            Err(rejection) => Err(ApiError::bad_request(format!(
                "invalid query string: {}",
                rejection.body_text()
            ))),
        }
    }
}

/// `labelSelector`, which selects objects (custom and resource metrics) or series (external).
fn label_selector(params: &BTreeMap<String, String>) -> Result<Selector, ApiError> {
    Selector::parse(params.get("labelSelector").map_or("", String::as_str))
        .map_err(|err| ApiError::bad_request(format!("invalid labelSelector: {err}")))
}

/// Path segments; a path that does not decode (percent-encoded bytes that are not UTF-8) is a
/// 400 Status rather than axum's plain-text rejection.
pub(super) struct PathParts<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned + Send> FromRequestParts<S> for PathParts<T> {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(value)) => Ok(PathParts(value)),
            Err(rejection) => Err(ApiError::bad_request(format!(
                "invalid request path: {}",
                rejection.body_text()
            ))),
        }
    }
}

/// `/apis/<group>/<version>/...`: a custom or an external metric.
async fn metric(
    State(context): State<SharedState>,
    PathParts((group, version, path)): PathParts<(String, String, String)>,
    Params(params): Params,
) -> Response {
    let state = &context.pipeline;
    let served = served_groups(state).iter().any(|g| g.name == group);
    if served && group == external::GROUP {
        return external::get_metric(state, &version, &path, &params).await;
    }
    if served && group == resource::GROUP {
        return resource::get(state, &version, &path, &params).await;
    }
    custom::get_metric(state, &group, &version, &path, &params).await
}

/// Finds a served group/version.
pub fn wire_version(group: &str, version: &str) -> Option<WireVersion> {
    let def = GROUPS.iter().find(|g| g.name == group)?;
    def.versions.iter().find(|v| **v == version).map(|v| match *v {
        "v1beta2" => WireVersion::V1Beta2,
        _ => WireVersion::V1Beta1,
    })
}

/// The router for every path this server answers; `auth` None serves everyone (local runs).
pub fn router(state: SharedState, auth: Option<std::sync::Arc<Auth>>) -> Router {
    // The discovery routes keep their prebuilt documents in a state of their own.
    let discovery_routes = Router::new()
        .route("/apis", get(discovery::group_list))
        .route("/apis/{group}", get(discovery::group))
        .route("/apis/{group}/{version}", get(discovery::resource_list))
        .with_state(discovery::DiscoveryState::new(state.clone()));
    let router = Router::new()
        .merge(discovery_routes)
        .route("/apis/{group}/{version}/{*path}", get(metric))
        .route("/healthz", get(health))
        .route("/livez", get(health))
        .route("/readyz", get(ready))
        .route("/healthz/ping", get(health))
        .route("/livez/ping", get(health))
        .route("/readyz/ping", get(health))
        .route("/version", get(discovery::version))
        .route("/metrics", get(own_metrics))
        .route("/openapi/v2", get(discovery::openapi_v2))
        .route("/openapi/v3", get(discovery::openapi_v3))
        .fallback(|| async { ApiError::unknown_route() })
        .method_not_allowed_fallback(|| async { ApiError::method_not_allowed() });
    let router = match auth {
        Some(auth) => router.layer(middleware::from_fn_with_state(auth, guard::middleware)),
        None => router,
    };
    // `Router::layer` runs after routing, so the path is made canonical in a service in front of
    // the router: routing, authentication and authorization then all see the same decoded path.
    let canonical = middleware::from_fn(path::middleware).layer(router.with_state(state));
    Router::new()
        .fallback_service(canonical)
        .layer(middleware::from_fn(log_request))
}

/// Serialises `value` as the Go API server does: compact (or 2-space indented with `?pretty`),
/// with a trailing newline, as `application/json`.
pub fn json_response<T: Serialize>(code: StatusCode, value: &T, pretty: bool) -> Response {
    let body = if pretty {
        serde_json::to_vec_pretty(value)
    } else {
        serde_json::to_vec(value)
    };
    match body {
        Ok(mut body) => {
            body.push(b'\n');
            let mut response = Response::new(Body::from(body));
            *response.status_mut() = code;
            response
                .headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            response
        }
        Err(err) => {
            tracing::error!(error = %err, "Serialising a response failed");
            (StatusCode::INTERNAL_SERVER_ERROR, "serialisation failed").into_response()
        }
    }
}

/// `?pretty=true` as the Go API server reads it.
fn wants_pretty(params: &BTreeMap<String, String>) -> bool {
    params.get("pretty").is_some_and(|v| v == "true" || v == "1")
}

/// The adapter's own metrics in Prometheus' text format.
async fn own_metrics(State(state): State<SharedState>) -> Response {
    // Evaluating readiness refreshes the per-check gauges.
    let _ = state.health.readiness();
    if let Some(objects) = state.pipeline.objects() {
        state.metrics.set_forbidden(&objects.forbidden());
    }
    let mut response = state.metrics.encode().into_response();
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    response
}

async fn health() -> &'static str {
    "ok"
}

/// `/readyz` as the API server writes it: `ok`, or with `?verbose` (and whenever a check fails)
/// one `[+]name ok` / `[-]name failed: reason` line per check. A degraded check stays `[+]` and
/// says what is wrong after `ok`.
async fn ready(State(state): State<SharedState>, Params(params): Params) -> Response {
    let checks = state.health.readiness();
    let ready = checks.iter().all(|(_, r)| !matches!(r, Readiness::NotReady(_)));
    if ready && !params.contains_key("verbose") {
        return (StatusCode::OK, "ok").into_response();
    }
    let mut body = String::from("[+]ping ok\n");
    for (name, readiness) in &checks {
        let line = match readiness {
            Readiness::Ready => format!("[+]{name} ok\n"),
            Readiness::Degraded(note) => format!("[+]{name} ok: {note}\n"),
            Readiness::NotReady(reason) => format!("[-]{name} failed: {reason}\n"),
        };
        body.push_str(&line);
    }
    if ready {
        body.push_str("readyz check passed\n");
        return (StatusCode::OK, body).into_response();
    }
    body.push_str("readyz check failed\n");
    (StatusCode::SERVICE_UNAVAILABLE, body).into_response()
}

/// One structured log line per request, at debug under the access target (`--v=4` turns those
/// alone on); health probes at debug under this module's target, so only `--v=5` shows them.
async fn log_request(request: Request, next: Next) -> Response {
    let probe = matches!(request.uri().path(), "/healthz" | "/livez" | "/readyz");
    // One line per request is debug (or `--v=4`, see `telemetry::ACCESS_TARGET`); when it is off,
    // the path and query are not even copied.
    let wanted = if probe {
        tracing::enabled!(tracing::Level::DEBUG)
    } else {
        tracing::enabled!(target: crate::telemetry::ACCESS_TARGET, tracing::Level::DEBUG)
    };
    if !wanted {
        return next.run(request).await;
    }
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let query = request.uri().query().map(str::to_owned);
    let started = Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16();
    let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
    if probe {
        tracing::debug!(%method, %path, status, latency_ms, "HTTP");
    } else {
        tracing::debug!(target: crate::telemetry::ACCESS_TARGET, %method, %path, query = query.as_deref().unwrap_or(""), status, latency_ms, "HTTP");
    }
    response
}
