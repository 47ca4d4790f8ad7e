//! An in-process fake of the Kubernetes API server: an axum app on plain HTTP at 127.0.0.1:0 that
//! speaks the real JSON (k8s-openapi types), so kube-rs clients, watchers and reflectors work against
//! it unchanged. It serves discovery, GET/LIST/WATCH for every known resource type (full or
//! metadata-only), TokenReview, SubjectAccessReview and SelfSubjectAccessReview, and records every
//! request it receives.
//!
//! Semantics follow the real server where the adapter can observe them: one global resourceVersion
//! counter, LIST returns the current one, WATCH replays history after the requested version and then
//! streams live changes, filtered by namespace, label and field selector (an object that stops
//! matching is sent as DELETED with the previous state). Watches end after `timeoutSeconds`, capped
//! at [`WATCH_CAP`], so clients reconnect (from their last resourceVersion, without a LIST).
//!
//! Discovery is served both ways, as Kubernetes 1.26+ does: the legacy documents, and the
//! aggregated `APIGroupDiscoveryList` (apidiscovery.k8s.io/v2) for clients that ask for it in
//! Accept. Faults a real cluster has can be injected: hundreds of groups ([`FakeKube::add_groups`]),
//! an aggregated API whose backend is down (the aggregator's plain-text 503 under its path, listed
//! `Stale` in aggregated discovery), and root discovery answering 503.
//!
//! Authorization of its callers is off by default (the Authorization header is only recorded). With
//! [`FakeKube::enforce_rbac`], GET, LIST and WATCH of resources are authorized as the real server
//! does: the caller is the user of its bearer token (see [`FakeKube::add_token`]; the kubeconfig of
//! [`FakeKube::write_kubeconfig`] authenticates as [`ADAPTER_USER`]), no token is
//! `system:anonymous`, an unknown token is a 401, and a verb no [`FakeKube::allow`] rule grants is
//! the real 403 `Status` (`jobs.batch is forbidden: User "..." cannot list resource "jobs" in API
//! group "batch" at the cluster scope`). SelfSubjectAccessReviews are answered from the same rules
//! for the caller (everything is allowed while RBAC is not enforced). Discovery, TokenReview and
//! (Self)SubjectAccessReview creation are always allowed.
//!
//! Not emulated: writes other than TokenReview/SubjectAccessReview/SelfSubjectAccessReview creation,
//! subresources, admission, defaulting and validation; OpenAPI, protobuf, Table output (406), compression, TLS, HTTP/2,
//! priority and fairness (429s); LIST `resourceVersion`/`resourceVersionMatch` (always the latest
//! state; continue pages are cut from the current state, not a snapshot); 410 Gone (history is kept
//! forever); periodic bookmarks (one when a watch times out, plus the initial-events-end one); field
//! selectors beyond `metadata.name`, `metadata.namespace` and pods' `status.phase` (others are 400);
//! real RBAC objects (no roles, bindings or resource names in rules; subresources ignored; a rule
//! grants a verb on a resource in every namespace unless limited to one, and deny rules stand in for
//! an authorization webhook ahead of RBAC); a watch that is already open when a rule changes keeps
//! streaming.
//!
//! Failure modes on demand: TokenReviews or SubjectAccessReviews that hang or answer an error
//! Status ([`FakeKube::set_review_fault`]), LISTs held until released.

mod discovery;
mod resources;
mod reviews;
mod store;
#[cfg(test)]
mod tests;
mod watches;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use axum::{
    Router,
    body::Bytes,
    extract::{Query, State},
    http::{HeaderMap, Method, StatusCode, Uri, header},
    response::{IntoResponse, Response},
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ListMeta, Status, StatusDetails};
use serde::Serialize;
use serde_json::Value;
use tokio::sync::{broadcast, watch};

pub use self::reviews::{Review, ReviewFault};
use self::{
    reviews::Rule,
    store::{CREATE_VERBS, Change, READ_VERBS, ResType},
};

/// Longest a WATCH stays open, whatever `timeoutSeconds` asks for (the real default is 30–60 min).
pub const WATCH_CAP: Duration = Duration::from_secs(10);
/// The user the kubeconfig of [`FakeKube::write_kubeconfig`] authenticates as (token `adapter-token`):
/// the ServiceAccount deploy/ runs the adapter as.
pub const ADAPTER_USER: &str = "system:serviceaccount:custom-metrics:custom-metrics-apiserver";
const ADAPTER_TOKEN: &str = "adapter-token";

/// One request the fake received, in arrival order.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    pub method: String,
    pub path: String,
    /// The raw (percent-encoded) query string, "" when absent.
    pub query: String,
    /// `watch=true` or `watch=1`.
    pub watch: bool,
    pub body: String,
    pub authorization: Option<String>,
}

#[derive(Default)]
pub(super) struct Inner {
    rv: u64,
    types: Vec<ResType>,
    /// (group, plural) → (namespace or "", name) → object.
    objects: BTreeMap<(String, String), BTreeMap<(String, String), Value>>,
    history: Vec<Arc<Change>>,
    tokens: HashMap<String, (String, Vec<String>)>,
    rules: Vec<Rule>,
    /// Whether GET/LIST/WATCH of resources are authorized against `rules` (see [`FakeKube::enforce_rbac`]).
    enforce_rbac: bool,
    requests: Vec<RecordedRequest>,
    /// Path suffixes whose LISTs wait until released (to observe clients before their caches sync).
    held_lists: Vec<String>,
    /// Aggregated group/versions whose backend is down: the aggregator answers 503 for them.
    unavailable: BTreeSet<String>,
    /// Answer only the legacy discovery documents (a server before Kubernetes 1.26).
    legacy_discovery_only: bool,
    /// `/api` and `/apis` answer 503 (an API server that is starting or overloaded).
    discovery_down: bool,
    token_fault: Option<ReviewFault>,
    access_fault: Option<ReviewFault>,
}

pub(super) struct Shared {
    inner: Mutex<Inner>,
    changes: broadcast::Sender<Arc<Change>>,
    shutdown: watch::Receiver<bool>,
    addr: SocketAddr,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The fake API server; dropping it stops serving (open watches end).
pub struct FakeKube {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
}

impl Drop for FakeKube {
    fn drop(&mut self) {
        self.shutdown.send_replace(true);
    }
}

impl FakeKube {
    pub async fn start() -> FakeKube {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local addr");
        let (shutdown, shutdown_rx) = watch::channel(false);
        let (changes, _) = broadcast::channel(4096);
        let mut inner = Inner::default();
        let core = |p: &str, s: &str, k: &str, namespaced: bool, short: &str| ResType {
            group: String::new(),
            version: "v1".into(),
            plural: p.into(),
            singular: s.into(),
            kind: k.into(),
            namespaced,
            short_names: vec![short.into()],
            verbs: READ_VERBS,
        };
        inner.types = vec![
            core("pods", "pod", "Pod", true, "po"),
            core("services", "service", "Service", true, "svc"),
            core("namespaces", "namespace", "Namespace", false, "ns"),
            core("configmaps", "configmap", "ConfigMap", true, "cm"),
            core("nodes", "node", "Node", false, "no"),
        ];
        let shared = Arc::new(Shared {
            inner: Mutex::new(inner),
            changes,
            shutdown: shutdown_rx.clone(),
            addr,
        });
        let app = Router::new().fallback(handle).with_state(shared.clone());
        let mut stop = shutdown_rx;
        tokio::spawn(async move {
            let stopped = async move {
                let _ = stop.wait_for(|s| *s).await;
            };
            let _ = axum::serve(listener, app).with_graceful_shutdown(stopped).await;
        });
        let fake = FakeKube {
            addr,
            shared,
            shutdown,
        };
        for (plural, singular, kind, short) in [
            ("deployments", "deployment", "Deployment", "deploy"),
            ("statefulsets", "statefulset", "StatefulSet", "sts"),
            ("replicasets", "replicaset", "ReplicaSet", "rs"),
        ] {
            fake.add_resource_type("apps", "v1", plural, singular, kind, true, &[short]);
        }
        fake.add_type(ResType {
            verbs: CREATE_VERBS,
            short_names: vec![],
            ..fake.type_for(
                "authentication.k8s.io",
                "tokenreviews",
                "tokenreview",
                "TokenReview",
            )
        });
        fake.add_type(ResType {
            verbs: CREATE_VERBS,
            short_names: vec![],
            ..fake.type_for(
                "authorization.k8s.io",
                "subjectaccessreviews",
                "subjectaccessreview",
                "SubjectAccessReview",
            )
        });
        fake.add_type(ResType {
            verbs: CREATE_VERBS,
            short_names: vec![],
            ..fake.type_for(
                "authorization.k8s.io",
                "selfsubjectaccessreviews",
                "selfsubjectaccessreview",
                "SelfSubjectAccessReview",
            )
        });
        // A ServiceAccount token authenticates with these groups on a real server.
        fake.add_token(
            ADAPTER_TOKEN,
            ADAPTER_USER,
            &[
                "system:serviceaccounts",
                "system:serviceaccounts:custom-metrics",
                "system:authenticated",
            ],
        );
        // Every real cluster has these two.
        fake.upsert_namespace("default", &[]);
        fake.upsert_namespace("kube-system", &[]);
        fake
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Writes a kubeconfig (server = url, user token = "adapter-token", who is [`ADAPTER_USER`]) into
    /// `dir`, returns its path.
    pub fn write_kubeconfig(&self, dir: &Path) -> PathBuf {
        let path = dir.join("fake-kube.kubeconfig");
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {}\n\
             users:\n- name: adapter\n  user:\n    token: adapter-token\n\
             contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: adapter\n\
             current-context: fake\n",
            self.url()
        );
        std::fs::write(&path, text).expect("write kubeconfig");
        path
    }

    /// Makes LISTs of paths ending in `suffix` (e.g. `/pods`) wait until [`Self::release_lists`].
    pub fn hold_lists(&self, suffix: &str) {
        self.shared.lock().held_lists.push(suffix.to_owned());
    }

    pub fn release_lists(&self) {
        self.shared.lock().held_lists.clear();
    }

    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.lock().requests.clone()
    }

    pub fn clear_requests(&self) {
        self.shared.lock().requests.clear();
    }
}

pub(super) fn respond<T: Serialize>(code: StatusCode, body: &T) -> Response {
    let body = serde_json::to_vec(body).expect("serialize response");
    (code, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

pub(super) fn status(code: StatusCode, reason: &str, message: String) -> Response {
    let status = Status {
        code: Some(code.as_u16().into()),
        details: Some(StatusDetails::default()),
        message: Some(message),
        metadata: ListMeta::default(),
        reason: Some(reason.into()),
        status: Some("Failure".into()),
    };
    respond(code, &status)
}

pub(super) fn not_found() -> Response {
    status(
        StatusCode::NOT_FOUND,
        "NotFound",
        "the server could not find the requested resource".into(),
    )
}

pub(super) fn unauthorized() -> Response {
    status(StatusCode::UNAUTHORIZED, "Unauthorized", "Unauthorized".into())
}

pub(super) fn bad_request(message: String) -> Response {
    status(StatusCode::BAD_REQUEST, "BadRequest", message)
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let query: HashMap<String, String> = Query::try_from_uri(&uri).map(|q| q.0).unwrap_or_default();
    let watch = matches!(query.get("watch").map(String::as_str), Some("true" | "1"));
    shared.lock().requests.push(RecordedRequest {
        method: method.to_string(),
        path: uri.path().to_owned(),
        query: uri.query().unwrap_or_default().to_owned(),
        watch,
        body: String::from_utf8_lossy(&body).into_owned(),
        authorization: headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
    });
    while !watch
        && method == Method::GET
        && shared
            .lock()
            .held_lists
            .iter()
            .any(|suffix| uri.path().ends_with(suffix.as_str()))
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let segments: Vec<&str> = uri.path().split('/').filter(|s| !s.is_empty()).collect();
    let inner = || shared.lock();
    if let Some(response) = discovery::fault(&inner(), &segments) {
        return response;
    }
    if method == Method::GET && discovery::wants_aggregated(&headers) && !inner().legacy_discovery_only {
        match segments.as_slice() {
            ["api"] => return discovery::aggregated(&inner(), true),
            ["apis"] => return discovery::aggregated(&inner(), false),
            _ => {}
        }
    }
    match (method.clone(), segments.as_slice()) {
        (Method::GET, ["version"]) => discovery::version(),
        (Method::GET, ["api"]) => discovery::core_versions(shared.addr),
        (Method::GET, ["apis"]) => discovery::groups(&inner()),
        (Method::GET, ["api", "v1"]) => discovery::resource_list(&inner(), "", "v1"),
        (Method::GET, ["apis", group, version]) => discovery::resource_list(&inner(), group, version),
        (Method::POST, ["apis", "authentication.k8s.io", "v1", "tokenreviews"]) => {
            match reviews::fault(&shared, Review::Token).await {
                Some(response) => response,
                None => reviews::token_review(&inner(), &body),
            }
        }
        (Method::POST, ["apis", "authorization.k8s.io", "v1", "subjectaccessreviews"]) => {
            match reviews::fault(&shared, Review::Access).await {
                Some(response) => response,
                None => reviews::access_review(&inner(), &body),
            }
        }
        (Method::POST, ["apis", "authorization.k8s.io", "v1", "selfsubjectaccessreviews"]) => {
            reviews::self_access_review(&inner(), &headers, &body)
        }
        (Method::GET, ["api", "v1", rest @ ..]) => {
            resources::resource(&shared, "", "v1", rest, &query, &headers, watch)
        }
        (Method::GET, ["apis", group, version, rest @ ..]) => {
            resources::resource(&shared, group, version, rest, &query, &headers, watch)
        }
        (_, ["api" | "apis", ..]) if method != Method::GET => status(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            format!("the fake API server does not support {method} here"),
        ),
        _ => not_found(),
    }
}
