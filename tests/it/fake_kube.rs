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

use std::{
    collections::{BTreeMap, HashMap},
    convert::Infallible,
    marker::PhantomData,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use axum::{
    Router,
    body::{Body, Bytes},
    extract::{Query, State},
    http::{HeaderMap, Method, StatusCode, Uri, header},
    response::{IntoResponse, Response},
};
use custom_metrics_adapter::selector::Selector;
use futures::{SinkExt, channel::mpsc};
use k8s_openapi::{
    api::{
        authentication::v1::{TokenReview, TokenReviewStatus, UserInfo},
        authorization::v1::{SelfSubjectAccessReview, SubjectAccessReview, SubjectAccessReviewStatus},
        core::v1::{
            ConfigMap, Container, Namespace, NamespaceStatus, Pod, PodCondition, PodSpec, PodStatus, Service,
            ServiceSpec,
        },
    },
    apimachinery::pkg::{
        apis::meta::v1::{
            APIGroup, APIGroupList, APIResource, APIResourceList, APIVersions, GroupVersionForDiscovery,
            ListMeta, ObjectMeta, ServerAddressByClientCIDR, Status, StatusDetails, Time, WatchEvent,
        },
        version::Info,
    },
};
use kube::core::{DynamicObject, ObjectList, PartialObjectMeta, TypeMeta};
use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::{broadcast, watch};

/// Longest a WATCH stays open, whatever `timeoutSeconds` asks for (the real default is 30–60 min).
pub const WATCH_CAP: Duration = Duration::from_secs(10);
const READ_VERBS: &[&str] = &["get", "list", "watch"];
const CREATE_VERBS: &[&str] = &["create"];
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

#[derive(Clone)]
struct ResType {
    group: String,
    version: String,
    plural: String,
    singular: String,
    kind: String,
    namespaced: bool,
    short_names: Vec<String>,
    verbs: &'static [&'static str],
}

impl ResType {
    fn api_version(&self) -> String {
        gv(&self.group, &self.version)
    }
}

fn gv(group: &str, version: &str) -> String {
    if group.is_empty() {
        version.to_owned()
    } else {
        format!("{group}/{version}")
    }
}

/// One mutation: `prev` is the stored object before, `cur` after (None = deleted).
struct Change {
    rv: u64,
    group: String,
    plural: String,
    prev: Option<Value>,
    cur: Option<Value>,
}

struct Rule {
    subject: String,
    verb: String,
    group: String,
    resource: String,
    /// None: every namespace and cluster-scoped requests (a ClusterRoleBinding); Some: only
    /// requests in that namespace (a RoleBinding).
    namespace: Option<String>,
    /// A deny rule answers `denied: true`, as a webhook authorizer ahead of RBAC can.
    deny: bool,
}

/// How the fake answers TokenReviews or SubjectAccessReviews while a fault is set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReviewFault {
    /// No answer until the fault is cleared (an API server stuck on etcd or a webhook).
    Hang,
    /// A Status with this code (500 InternalError, 503 ServiceUnavailable, 429 TooManyRequests).
    Fail(u16),
}

/// Which review a fault applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Review {
    Token,
    Access,
}

#[derive(Default)]
struct Inner {
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
    unavailable: std::collections::BTreeSet<String>,
    /// Answer only the legacy discovery documents (a server before Kubernetes 1.26).
    legacy_discovery_only: bool,
    /// `/api` and `/apis` answer 503 (an API server that is starting or overloaded).
    discovery_down: bool,
    token_fault: Option<ReviewFault>,
    access_fault: Option<ReviewFault>,
}

impl Inner {
    fn find(&self, group: &str, version: Option<&str>, plural: &str) -> Option<&ResType> {
        self.types
            .iter()
            .find(|t| t.group == group && t.plural == plural && version.is_none_or(|v| t.version == v))
    }
}

struct Shared {
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

fn labels_map(labels: &[(&str, &str)]) -> Option<BTreeMap<String, String>> {
    (!labels.is_empty()).then(|| {
        labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    })
}

fn to_value<T: Serialize>(object: &T) -> Value {
    serde_json::to_value(object).expect("k8s-openapi objects serialize")
}

fn typed<T: serde::de::DeserializeOwned + Default>(prev: Option<Value>) -> T {
    prev.and_then(|v| serde_json::from_value(v).ok())
        .unwrap_or_default()
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

    fn type_for(&self, group: &str, plural: &str, singular: &str, kind: &str) -> ResType {
        ResType {
            group: group.into(),
            version: "v1".into(),
            plural: plural.into(),
            singular: singular.into(),
            kind: kind.into(),
            namespaced: false,
            short_names: vec![],
            verbs: READ_VERBS,
        }
    }

    fn add_type(&self, t: ResType) {
        let mut inner = self.shared.lock();
        inner
            .types
            .retain(|o| !(o.group == t.group && o.version == t.version && o.plural == t.plural));
        inner.types.push(t);
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

    /// Applies `f` to the stored object (None = absent); `f` returning None deletes it. Bumps the
    /// resourceVersion, stamps the object, records the change and broadcasts it to watches.
    fn mutate(
        &self,
        group: &str,
        plural: &str,
        namespace: &str,
        name: &str,
        f: impl FnOnce(Option<Value>) -> Option<Value>,
    ) {
        let mut guard = self.shared.lock();
        let inner = &mut *guard;
        let Some(rt) = inner.find(group, None, plural).cloned() else {
            panic!("fake kube: unknown resource type {plural}.{group}; call add_resource_type first")
        };
        let namespace = if rt.namespaced { namespace } else { "" };
        let key = (namespace.to_owned(), name.to_owned());
        let store = inner.objects.entry((group.into(), plural.into())).or_default();
        let prev = store.get(&key).cloned();
        let Some(mut cur) = f(prev.clone()) else {
            if prev.is_none() {
                return;
            }
            inner.rv += 1;
            store.remove(&key);
            let change = Arc::new(Change {
                rv: inner.rv,
                group: group.into(),
                plural: plural.into(),
                prev,
                cur: None,
            });
            inner.history.push(change.clone());
            let _ = self.shared.changes.send(change);
            return;
        };
        inner.rv += 1;
        let rv = inner.rv;
        cur["apiVersion"] = json!(rt.api_version());
        cur["kind"] = json!(rt.kind);
        let meta = &mut cur["metadata"];
        if !meta.is_object() {
            *meta = json!({});
        }
        meta["name"] = json!(name);
        if rt.namespaced {
            meta["namespace"] = json!(namespace);
        }
        meta["resourceVersion"] = json!(rv.to_string());
        let old_meta = prev.as_ref().map(|p| &p["metadata"]);
        meta["uid"] = old_meta
            .map(|m| m["uid"].clone())
            .unwrap_or_else(|| json!(format!("00000000-0000-4000-8000-{rv:012}")));
        meta["creationTimestamp"] = old_meta
            .map(|m| m["creationTimestamp"].clone())
            .unwrap_or_else(|| to_value(&Time(jiff::Timestamp::now())));
        store.insert(key, cur.clone());
        let change = Arc::new(Change {
            rv,
            group: group.into(),
            plural: plural.into(),
            prev,
            cur: Some(cur),
        });
        inner.history.push(change.clone());
        let _ = self.shared.changes.send(change);
    }

    pub fn upsert_namespace(&self, name: &str, labels: &[(&str, &str)]) {
        self.mutate("", "namespaces", "", name, |prev| {
            let mut ns: Namespace = typed(prev);
            ns.metadata.labels = labels_map(labels);
            ns.status = Some(NamespaceStatus {
                phase: Some("Active".into()),
                ..Default::default()
            });
            Some(to_value(&ns))
        });
    }

    /// Creates or replaces a pod (keeping uid, creation and deletion timestamps). The Ready
    /// condition is True exactly when `phase` is "Running".
    pub fn upsert_pod(&self, namespace: &str, name: &str, labels: &[(&str, &str)], phase: &str) {
        self.mutate("", "pods", namespace, name, |prev| {
            let mut pod: Pod = typed(prev);
            pod.metadata.labels = labels_map(labels);
            pod.spec = Some(PodSpec {
                containers: vec![Container {
                    name: "app".into(),
                    image: Some("registry.example/app:1".into()),
                    ..Default::default()
                }],
                ..Default::default()
            });
            let ready = if phase == "Running" { "True" } else { "False" };
            pod.status = Some(PodStatus {
                phase: Some(phase.into()),
                conditions: Some(vec![PodCondition {
                    type_: "Ready".into(),
                    status: ready.into(),
                    ..Default::default()
                }]),
                ..Default::default()
            });
            Some(to_value(&pod))
        });
    }

    /// Sets metadata.deletionTimestamp (a MODIFIED event), as a graceful delete does.
    pub fn mark_pod_deleting(&self, namespace: &str, name: &str) {
        self.mutate("", "pods", namespace, name, |prev| {
            let mut pod: Pod = serde_json::from_value(prev?).ok()?;
            pod.metadata.deletion_timestamp = Some(Time(jiff::Timestamp::now()));
            pod.metadata.deletion_grace_period_seconds = Some(30);
            Some(to_value(&pod))
        });
    }

    pub fn delete_pod(&self, namespace: &str, name: &str) {
        self.mutate("", "pods", namespace, name, |_| None);
    }

    pub fn upsert_service(&self, namespace: &str, name: &str, labels: &[(&str, &str)]) {
        self.mutate("", "services", namespace, name, |prev| {
            let mut svc: Service = typed(prev);
            svc.metadata.labels = labels_map(labels);
            svc.spec = Some(ServiceSpec {
                type_: Some("ClusterIP".into()),
                ..Default::default()
            });
            Some(to_value(&svc))
        });
    }

    /// Creates or relabels an object of any known type (see `add_resource_type`).
    #[allow(clippy::too_many_arguments)]
    pub fn upsert_object(
        &self,
        group: &str,
        version: &str,
        plural: &str,
        kind: &str,
        namespace: Option<&str>,
        name: &str,
        labels: &[(&str, &str)],
    ) {
        self.mutate(group, plural, namespace.unwrap_or(""), name, |prev| {
            let mut obj: DynamicObject =
                prev.and_then(|v| serde_json::from_value(v).ok())
                    .unwrap_or_else(|| DynamicObject {
                        types: None,
                        metadata: ObjectMeta::default(),
                        data: json!({}),
                    });
            obj.types = Some(TypeMeta {
                api_version: gv(group, version),
                kind: kind.into(),
            });
            obj.metadata.labels = labels_map(labels);
            Some(to_value(&obj))
        });
    }

    /// Adds batch/v1 Jobs and CronJobs to discovery. Not there by default: each API group is one
    /// more discovery request at the adapter's start, within its client rate limit, and tests of
    /// timing should not pay for groups they do not use.
    pub fn add_batch_types(&self) {
        self.add_resource_type("batch", "v1", "jobs", "job", "Job", true, &[]);
        self.add_resource_type("batch", "v1", "cronjobs", "cronjob", "CronJob", true, &["cj"]);
    }

    /// Adds a resource type to discovery (e.g. a CRD added after the adapter started).
    #[allow(clippy::too_many_arguments)]
    pub fn add_resource_type(
        &self,
        group: &str,
        version: &str,
        plural: &str,
        singular: &str,
        kind: &str,
        namespaced: bool,
        short_names: &[&str],
    ) {
        self.add_type(ResType {
            group: group.into(),
            version: version.into(),
            plural: plural.into(),
            singular: singular.into(),
            kind: kind.into(),
            namespaced,
            short_names: short_names.iter().map(|s| s.to_string()).collect(),
            verbs: READ_VERBS,
        });
    }

    /// Sets the data of ConfigMap kube-system/extension-apiserver-authentication (ADDED/MODIFIED).
    pub fn set_auth_configmap(&self, data: &[(&str, &str)]) {
        self.mutate(
            "",
            "configmaps",
            "kube-system",
            "extension-apiserver-authentication",
            |prev| {
                let mut cm: ConfigMap = typed(prev);
                cm.data = Some(data.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect());
                Some(to_value(&cm))
            },
        );
    }

    /// TokenReview: this bearer token authenticates as `user` with `groups`.
    pub fn add_token(&self, token: &str, user: &str, groups: &[&str]) {
        let groups = groups.iter().map(|g| g.to_string()).collect();
        self.shared
            .lock()
            .tokens
            .insert(token.into(), (user.into(), groups));
    }

    /// SubjectAccessReview: allow `verb` on (`group`, `resource`) for this user or group ("*"
    /// matches any verb, group or resource; with group "" the resource may be a non-resource path,
    /// a trailing "*" matching any suffix).
    pub fn allow(&self, subject: &str, verb: &str, group: &str, resource: &str) {
        self.add_rule(subject, verb, group, resource, None, false);
    }

    /// [`Self::allow`] for requests in `namespace` only, as a RoleBinding grants.
    pub fn allow_in(&self, namespace: &str, subject: &str, verb: &str, group: &str, resource: &str) {
        self.add_rule(subject, verb, group, resource, Some(namespace), false);
    }

    /// SubjectAccessReview: deny `verb` on (`group`, `resource`) in `namespace` for this user or
    /// group (`denied: true`), whatever allow rules say; as an authorization webhook ahead of RBAC
    /// that protects a namespace does.
    pub fn deny_in(&self, namespace: &str, subject: &str, verb: &str, group: &str, resource: &str) {
        self.add_rule(subject, verb, group, resource, Some(namespace), true);
    }

    fn add_rule(
        &self,
        subject: &str,
        verb: &str,
        group: &str,
        resource: &str,
        namespace: Option<&str>,
        deny: bool,
    ) {
        self.shared.lock().rules.push(Rule {
            subject: subject.into(),
            verb: verb.into(),
            group: group.into(),
            resource: resource.into(),
            namespace: namespace.map(str::to_owned),
            deny,
        });
    }

    /// From now on, GET/LIST/WATCH of resources need a rule of [`Self::allow`] for the caller (its
    /// user or one of its groups), or they are the API server's 403.
    pub fn enforce_rbac(&self) {
        self.shared.lock().enforce_rbac = true;
    }

    /// Makes TokenReviews or SubjectAccessReviews hang or fail until called again with None.
    pub fn set_review_fault(&self, review: Review, fault: Option<ReviewFault>) {
        let mut inner = self.shared.lock();
        match review {
            Review::Token => inner.token_fault = fault,
            Review::Access => inner.access_fault = fault,
        }
    }

    /// The SubjectAccessReviews received, in arrival order (also those that hung or failed).
    pub fn access_reviews(&self) -> Vec<SubjectAccessReview> {
        self.requests()
            .iter()
            .filter(|r| r.method == "POST" && r.path.ends_with("/subjectaccessreviews"))
            .filter_map(|r| serde_json::from_str(&r.body).ok())
            .collect()
    }

    /// Makes LISTs of paths ending in `suffix` (e.g. `/pods`) wait until [`Self::release_lists`].
    pub fn hold_lists(&self, suffix: &str) {
        self.shared.lock().held_lists.push(suffix.to_owned());
    }

    pub fn release_lists(&self) {
        self.shared.lock().held_lists.clear();
    }

    /// Adds `count` CRD groups (`group-<i>.example.com/v1`, one namespaced resource each), the
    /// size of a real cluster's discovery (one with 183 groups was seen).
    pub fn add_groups(&self, count: usize) {
        for i in 0..count {
            self.add_resource_type(
                &format!("group-{i}.example.com"),
                "v1",
                &format!("widget{i}s"),
                &format!("widget{i}"),
                &format!("Widget{i}"),
                true,
                &[],
            );
        }
    }

    /// Registers an aggregated API `group/version` (like an APIService) whose backend is down:
    /// it is listed in `/apis`, and everything under `/apis/<group>/<version>` answers 503.
    pub fn add_unavailable_api(&self, group: &str, version: &str) {
        self.add_resource_type(group, version, "things", "thing", "Thing", true, &[]);
        self.set_api_available(group, version, false);
    }

    /// Brings an aggregated API's backend up or down.
    pub fn set_api_available(&self, group: &str, version: &str, available: bool) {
        let mut inner = self.shared.lock();
        if available {
            inner.unavailable.remove(&gv(group, version));
        } else {
            inner.unavailable.insert(gv(group, version));
        }
    }

    /// Serve only legacy discovery (a server before aggregated discovery).
    pub fn legacy_discovery_only(&self) {
        self.shared.lock().legacy_discovery_only = true;
    }

    /// Makes `/api`, `/api/v1` and `/apis` answer 503 (or answer again).
    pub fn set_discovery_down(&self, down: bool) {
        self.shared.lock().discovery_down = down;
    }

    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.lock().requests.clone()
    }

    pub fn clear_requests(&self) {
        self.shared.lock().requests.clear();
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP side

fn respond<T: Serialize>(code: StatusCode, body: &T) -> Response {
    let body = serde_json::to_vec(body).expect("serialize response");
    (code, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

fn status(code: StatusCode, reason: &str, message: String) -> Response {
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

fn not_found() -> Response {
    status(
        StatusCode::NOT_FOUND,
        "NotFound",
        "the server could not find the requested resource".into(),
    )
}

fn unauthorized() -> Response {
    status(StatusCode::UNAUTHORIZED, "Unauthorized", "Unauthorized".into())
}

fn bad_request(message: String) -> Response {
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
    if let Some(response) = discovery_fault(&inner(), &segments) {
        return response;
    }
    if method == Method::GET && wants_aggregated(&headers) && !inner().legacy_discovery_only {
        match segments.as_slice() {
            ["api"] => return aggregated_discovery(&inner(), true),
            ["apis"] => return aggregated_discovery(&inner(), false),
            _ => {}
        }
    }
    match (method.clone(), segments.as_slice()) {
        (Method::GET, ["version"]) => respond(
            StatusCode::OK,
            &Info {
                git_version: "v1.32.0-fake".into(),
                major: "1".into(),
                minor: "32".into(),
                platform: "linux/amd64".into(),
                ..Default::default()
            },
        ),
        (Method::GET, ["api"]) => respond(
            StatusCode::OK,
            &APIVersions {
                versions: vec!["v1".into()],
                server_address_by_client_cidrs: vec![ServerAddressByClientCIDR {
                    client_cidr: "0.0.0.0/0".into(),
                    server_address: shared.addr.to_string(),
                }],
            },
        ),
        (Method::GET, ["apis"]) => {
            let mut groups: Vec<APIGroup> = Vec::new();
            for t in inner().types.iter().filter(|t| !t.group.is_empty()) {
                let version = GroupVersionForDiscovery {
                    group_version: t.api_version(),
                    version: t.version.clone(),
                };
                match groups.iter_mut().find(|g| g.name == t.group) {
                    Some(g) if !g.versions.contains(&version) => g.versions.push(version),
                    Some(_) => {}
                    None => groups.push(APIGroup {
                        name: t.group.clone(),
                        preferred_version: Some(version.clone()),
                        server_address_by_client_cidrs: None,
                        versions: vec![version],
                    }),
                }
            }
            respond(StatusCode::OK, &APIGroupList { groups })
        }
        (Method::GET, ["api", "v1"]) => resource_list(&inner(), "", "v1"),
        (Method::GET, ["apis", group, version]) => resource_list(&inner(), group, version),
        (Method::POST, ["apis", "authentication.k8s.io", "v1", "tokenreviews"]) => {
            match fault(&shared, Review::Token).await {
                Some(response) => response,
                None => token_review(&inner(), &body),
            }
        }
        (Method::POST, ["apis", "authorization.k8s.io", "v1", "subjectaccessreviews"]) => {
            match fault(&shared, Review::Access).await {
                Some(response) => response,
                None => access_review(&inner(), &body),
            }
        }
        (Method::POST, ["apis", "authorization.k8s.io", "v1", "selfsubjectaccessreviews"]) => {
            self_access_review(&inner(), &headers, &body)
        }
        (Method::GET, ["api", "v1", rest @ ..]) => resource(&shared, "", "v1", rest, &query, &headers, watch),
        (Method::GET, ["apis", group, version, rest @ ..]) => {
            resource(&shared, group, version, rest, &query, &headers, watch)
        }
        (_, ["api" | "apis", ..]) if method != Method::GET => status(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            format!("the fake API server does not support {method} here"),
        ),
        _ => not_found(),
    }
}

/// What the real server answers instead of the request, for the faults tests inject: 503 from the
/// aggregator for an unavailable aggregated group (its plain-text `service unavailable`), 503 for
/// the root discovery documents while they are down.
fn discovery_fault(inner: &Inner, segments: &[&str]) -> Option<Response> {
    match segments {
        ["api" | "apis"] | ["api", "v1"] if inner.discovery_down => Some(status(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            "the server is currently unable to handle the request".into(),
        )),
        ["apis", group, version, ..] if inner.unavailable.contains(&gv(group, version)) => Some(
            (
                StatusCode::SERVICE_UNAVAILABLE,
                [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                "service unavailable\n",
            )
                .into_response(),
        ),
        _ => None,
    }
}

/// The media type of aggregated discovery (apidiscovery.k8s.io/v2), as clients ask for it.
const AGGREGATED_V2: &str = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";

fn wants_aggregated(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.replace(' ', "").starts_with(AGGREGATED_V2))
}

/// `/api` or `/apis` as an `APIGroupDiscoveryList`: every group with its versions and resources;
/// an unavailable aggregated group/version is listed `Stale` with no resources, as the aggregator
/// lists one it could never reach.
/// A group's versions in the order they were added (the first is preferred) with their types.
type Versions<'a> = Vec<(String, Vec<&'a ResType>)>;

fn aggregated_discovery(inner: &Inner, core: bool) -> Response {
    let mut groups: Vec<(String, Versions)> = Vec::new();
    for t in inner.types.iter().filter(|t| t.group.is_empty() == core) {
        let versions = match groups.iter_mut().find(|(g, _)| *g == t.group) {
            Some((_, versions)) => versions,
            None => {
                groups.push((t.group.clone(), Vec::new()));
                &mut groups.last_mut().expect("just pushed").1
            }
        };
        match versions.iter_mut().find(|(v, _)| *v == t.version) {
            Some((_, types)) => types.push(t),
            None => versions.push((t.version.clone(), vec![t])),
        }
    }
    let items: Vec<Value> = groups
        .iter()
        .map(|(group, versions)| {
            let versions: Vec<Value> = versions
                .iter()
                .map(|(version, types)| {
                    let stale = inner.unavailable.contains(&gv(group, version));
                    let resources: Vec<Value> = if stale {
                        Vec::new()
                    } else {
                        types.iter().map(|t| aggregated_resource(t)).collect()
                    };
                    json!({"version": version, "resources": resources,
                           "freshness": if stale { "Stale" } else { "Current" }})
                })
                .collect();
            json!({"metadata": {"name": group, "creationTimestamp": null}, "versions": versions})
        })
        .collect();
    let body = json!({"kind": "APIGroupDiscoveryList", "apiVersion": "apidiscovery.k8s.io/v2",
                      "metadata": {}, "items": items});
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, AGGREGATED_V2)],
        serde_json::to_vec(&body).expect("serialize"),
    )
        .into_response()
}

fn aggregated_resource(t: &ResType) -> Value {
    let mut resource = json!({
        "resource": t.plural,
        "responseKind": {"group": t.group, "version": t.version, "kind": t.kind},
        "scope": if t.namespaced { "Namespaced" } else { "Cluster" },
        "singularResource": t.singular,
        "verbs": t.verbs,
    });
    if !t.short_names.is_empty() {
        resource["shortNames"] = json!(t.short_names);
    }
    resource
}

fn resource_list(inner: &Inner, group: &str, version: &str) -> Response {
    let resources: Vec<APIResource> = inner
        .types
        .iter()
        .filter(|t| t.group == group && t.version == version)
        .map(|t| APIResource {
            kind: t.kind.clone(),
            name: t.plural.clone(),
            namespaced: t.namespaced,
            short_names: (!t.short_names.is_empty()).then(|| t.short_names.clone()),
            singular_name: t.singular.clone(),
            verbs: t.verbs.iter().map(|v| v.to_string()).collect(),
            ..Default::default()
        })
        .collect();
    if resources.is_empty() {
        return not_found();
    }
    respond(
        StatusCode::OK,
        &APIResourceList {
            group_version: gv(group, version),
            resources,
        },
    )
}

/// Waits while a `Hang` fault is set for `review` (or the fake stops); the failure to answer when a
/// `Fail` fault is set.
async fn fault(shared: &Arc<Shared>, review: Review) -> Option<Response> {
    let current = || {
        let inner = shared.lock();
        match review {
            Review::Token => inner.token_fault,
            Review::Access => inner.access_fault,
        }
    };
    while current() == Some(ReviewFault::Hang) && !*shared.shutdown.borrow() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let code = match current()? {
        ReviewFault::Hang => return None,
        ReviewFault::Fail(code) => StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
    };
    let reason = match code.as_u16() {
        429 => "TooManyRequests",
        503 => "ServiceUnavailable",
        504 => "Timeout",
        _ => "InternalError",
    };
    Some(status(
        code,
        reason,
        format!("the fake API server fails {review:?} reviews"),
    ))
}

fn token_review(inner: &Inner, body: &[u8]) -> Response {
    let mut review: TokenReview = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => return bad_request(format!("invalid TokenReview: {e}")),
    };
    let token = review.spec.token.clone();
    review.status = Some(match inner.tokens.get(&token) {
        Some((user, groups)) => TokenReviewStatus {
            authenticated: Some(true),
            user: Some(UserInfo {
                username: Some(user.clone()),
                groups: Some(groups.clone()),
                uid: Some(format!("uid-{user}")),
                extra: None,
            }),
            ..Default::default()
        },
        None => TokenReviewStatus {
            authenticated: Some(false),
            error: Some("invalid bearer token".into()),
            ..Default::default()
        },
    });
    respond(StatusCode::CREATED, &review)
}

fn access_review(inner: &Inner, body: &[u8]) -> Response {
    let mut review: SubjectAccessReview = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => return bad_request(format!("invalid SubjectAccessReview: {e}")),
    };
    let spec = &review.spec;
    let subjects: Vec<&str> = spec
        .user
        .iter()
        .chain(spec.groups.iter().flatten())
        .map(String::as_str)
        .collect();
    let Some(request) = Access::requested(
        spec.resource_attributes.as_ref(),
        spec.non_resource_attributes.as_ref(),
    ) else {
        return bad_request("resourceAttributes or nonResourceAttributes required".into());
    };
    review.status = Some(inner.decide(&subjects, &request));
    respond(StatusCode::CREATED, &review)
}

/// A SelfSubjectAccessReview: the same decision as a SubjectAccessReview, for the caller.
fn self_access_review(inner: &Inner, headers: &HeaderMap, body: &[u8]) -> Response {
    let mut review: SelfSubjectAccessReview = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => return bad_request(format!("invalid SelfSubjectAccessReview: {e}")),
    };
    let Some((user, groups)) = inner.caller(headers) else {
        return unauthorized();
    };
    let spec = &review.spec;
    let Some(request) = Access::requested(
        spec.resource_attributes.as_ref(),
        spec.non_resource_attributes.as_ref(),
    ) else {
        return bad_request("resourceAttributes or nonResourceAttributes required".into());
    };
    let subjects: Vec<&str> = std::iter::once(user.as_str())
        .chain(groups.iter().map(String::as_str))
        .collect();
    // It answers what the caller can do here: anything, unless RBAC is enforced.
    review.status = Some(if inner.enforce_rbac {
        inner.decide(&subjects, &request)
    } else {
        SubjectAccessReviewStatus {
            allowed: true,
            reason: Some("the fake does not enforce RBAC".into()),
            ..Default::default()
        }
    });
    respond(StatusCode::CREATED, &review)
}

/// What an access review or a request asks to do.
struct Access {
    verb: String,
    group: String,
    /// The resource, or the path of a non-resource request.
    resource: String,
    /// "" at the cluster scope and for non-resource requests.
    namespace: String,
    non_resource: bool,
}

impl Access {
    /// What a (Self)SubjectAccessReview asks about; None when it names neither kind.
    fn requested(
        resource: Option<&k8s_openapi::api::authorization::v1::ResourceAttributes>,
        non_resource: Option<&k8s_openapi::api::authorization::v1::NonResourceAttributes>,
    ) -> Option<Self> {
        match (resource, non_resource) {
            (Some(ra), _) => Some(Access::resource(
                ra.verb.as_deref(),
                ra.group.as_deref(),
                ra.resource.as_deref(),
                ra.namespace.as_deref(),
            )),
            (None, Some(na)) => Some(Access::path(na.verb.as_deref(), na.path.as_deref())),
            (None, None) => None,
        }
    }

    fn resource(
        verb: Option<&str>,
        group: Option<&str>,
        resource: Option<&str>,
        namespace: Option<&str>,
    ) -> Self {
        Access {
            verb: verb.unwrap_or_default().to_owned(),
            group: group.unwrap_or_default().to_owned(),
            resource: resource.unwrap_or_default().to_owned(),
            namespace: namespace.unwrap_or_default().to_owned(),
            non_resource: false,
        }
    }

    fn path(verb: Option<&str>, path: Option<&str>) -> Self {
        Access {
            verb: verb.unwrap_or_default().to_owned(),
            group: String::new(),
            resource: path.unwrap_or_default().to_owned(),
            namespace: String::new(),
            non_resource: true,
        }
    }
}

impl Inner {
    /// The rules' answer for these subjects (a user and its groups); `system:masters` may do
    /// anything; a deny rule wins over allow rules, as a webhook authorizer ahead of RBAC does.
    fn decide(&self, subjects: &[&str], request: &Access) -> SubjectAccessReviewStatus {
        let wild = |rule: &str, value: &str| rule == "*" || rule == value;
        let applies = |r: &&Rule| {
            subjects.contains(&r.subject.as_str())
                && wild(&r.verb, &request.verb)
                && if request.non_resource {
                    r.group.is_empty()
                        && r.namespace.is_none()
                        && (wild(&r.resource, &request.resource)
                            || r.resource
                                .strip_suffix('*')
                                .is_some_and(|p| request.resource.starts_with(p)))
                } else {
                    wild(&r.group, &request.group)
                        && wild(&r.resource, &request.resource)
                        && r.namespace.as_ref().is_none_or(|ns| *ns == request.namespace)
                }
        };
        let denied = self.rules.iter().filter(|r| r.deny).find(applies);
        let matched = self.rules.iter().filter(|r| !r.deny).find(applies);
        if subjects.contains(&"system:masters") {
            SubjectAccessReviewStatus {
                allowed: true,
                reason: Some("system:masters".into()),
                ..Default::default()
            }
        } else if let Some(rule) = denied {
            SubjectAccessReviewStatus {
                allowed: false,
                denied: Some(true),
                reason: Some(format!(
                    "namespace {:?} is protected from {:?} by the fake's deny rule",
                    request.namespace, rule.subject
                )),
                ..Default::default()
            }
        } else if let Some(rule) = matched {
            let reason = format!("allowed by fake rule for {:?}", rule.subject);
            SubjectAccessReviewStatus {
                allowed: true,
                reason: Some(reason),
                ..Default::default()
            }
        } else {
            SubjectAccessReviewStatus {
                allowed: false,
                reason: Some("no RBAC policy matched".into()),
                ..Default::default()
            }
        }
    }

    /// Who sends this request, as the API server's authenticators see it: the user and groups of its
    /// bearer token, `system:anonymous` without one, None (a 401) for a token no one issued.
    fn caller(&self, headers: &HeaderMap) -> Option<(String, Vec<String>)> {
        let token = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        match token {
            None => Some(("system:anonymous".into(), vec!["system:unauthenticated".into()])),
            Some(token) => self.tokens.get(token).cloned(),
        }
    }

    /// With RBAC enforced, the API server's 403 for a `verb` on the (group, resource) the caller may
    /// not do (or its 401); None when allowed.
    fn authorize(
        &self,
        headers: &HeaderMap,
        verb: &str,
        (group, plural): (&str, &str),
        namespace: Option<&str>,
        name: Option<&str>,
    ) -> Option<Response> {
        if !self.enforce_rbac {
            return None;
        }
        let Some((user, groups)) = self.caller(headers) else {
            return Some(unauthorized());
        };
        let subjects: Vec<&str> = std::iter::once(user.as_str())
            .chain(groups.iter().map(String::as_str))
            .collect();
        let request = Access::resource(Some(verb), Some(group), Some(plural), namespace);
        if self.decide(&subjects, &request).allowed {
            return None;
        }
        // k8s.io/apiserver's forbiddenMessage, wrapped by errors.NewForbidden.
        let scope = match namespace {
            Some(ns) => format!("in the namespace {ns:?}"),
            None => "at the cluster scope".to_owned(),
        };
        let why = format!("User {user:?} cannot {verb} resource {plural:?} in API group {group:?} {scope}");
        let qualified = if group.is_empty() {
            plural.to_owned()
        } else {
            format!("{plural}.{group}")
        };
        let message = match name {
            Some(name) => format!("{qualified} {name:?} is forbidden: {why}"),
            None => format!("{qualified} is forbidden: {why}"),
        };
        let status = Status {
            code: Some(403),
            details: Some(StatusDetails {
                group: Some(group.to_owned()).filter(|g| !g.is_empty()),
                kind: Some(plural.to_owned()),
                name: name.map(str::to_owned),
                ..Default::default()
            }),
            message: Some(message),
            metadata: ListMeta::default(),
            reason: Some("Forbidden".into()),
            status: Some("Failure".into()),
        };
        Some(respond(StatusCode::FORBIDDEN, &status))
    }
}

/// What LIST/WATCH/GET select: namespace, label selector, field selector.
#[derive(Clone)]
struct Filter {
    namespace: Option<String>,
    labels: Selector,
    /// (JSON pointer, equal?, value)
    fields: Vec<(&'static str, bool, String)>,
}

impl Filter {
    fn parse(rt: &ResType, namespace: Option<&str>, query: &HashMap<String, String>) -> Result<Self, String> {
        let labels = Selector::parse(query.get("labelSelector").map_or("", String::as_str))
            .map_err(|e| format!("unable to parse requirement: {e}"))?;
        let mut fields = Vec::new();
        for term in query
            .get("fieldSelector")
            .map_or("", String::as_str)
            .split(',')
            .filter(|t| !t.is_empty())
        {
            let (key, eq, value) = if let Some((k, v)) = term.split_once("!=") {
                (k, false, v)
            } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
                (k, true, v)
            } else {
                return Err(format!("invalid selector: '{term}'; can't understand '{term}'"));
            };
            let pointer = match key.trim() {
                "metadata.name" => "/metadata/name",
                "metadata.namespace" => "/metadata/namespace",
                "status.phase" if rt.plural == "pods" && rt.group.is_empty() => "/status/phase",
                other => {
                    return Err(format!(
                        "field label not supported: {other} (the fake supports metadata.name, metadata.namespace, pods status.phase)"
                    ));
                }
            };
            fields.push((pointer, eq, value.trim().to_owned()));
        }
        Ok(Filter {
            namespace: namespace.map(str::to_owned),
            labels,
            fields,
        })
    }

    fn matches(&self, obj: &Value) -> bool {
        let text = |pointer: &str| {
            obj.pointer(pointer)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        if self
            .namespace
            .as_ref()
            .is_some_and(|ns| *ns != text("/metadata/namespace"))
        {
            return false;
        }
        let labels: BTreeMap<String, String> = obj
            .pointer("/metadata/labels")
            .and_then(|l| serde_json::from_value(l.clone()).ok())
            .unwrap_or_default();
        self.labels.matches(&labels)
            && self
                .fields
                .iter()
                .all(|(pointer, eq, value)| (text(pointer) == *value) == *eq)
    }
}

/// Whether the Accept header asks for metadata only (`as=PartialObjectMetadata[List]`); an `as=`
/// the fake cannot produce (e.g. Table) with no plain-JSON alternative is 406, as upstream.
fn metadata_only(headers: &HeaderMap, list: bool) -> Result<bool, String> {
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json");
    let wanted = if list {
        "PartialObjectMetadataList"
    } else {
        "PartialObjectMetadata"
    };
    for alternative in accept.split(',') {
        let as_param = alternative
            .split(';')
            .skip(1)
            .find_map(|p| p.trim().strip_prefix("as="));
        match as_param {
            None => return Ok(false),
            Some(a) if a == wanted => return Ok(true),
            Some(_) => {}
        }
    }
    Err(format!(
        "only the following media types are accepted: application/json, application/json;as={wanted};g=meta.k8s.io;v=v1"
    ))
}

fn partial(obj: &Value) -> Value {
    let meta = PartialObjectMeta::<DynamicObject> {
        types: Some(TypeMeta {
            api_version: "meta.k8s.io/v1".into(),
            kind: "PartialObjectMetadata".into(),
        }),
        metadata: serde_json::from_value(obj["metadata"].clone()).unwrap_or_default(),
        _phantom: PhantomData,
    };
    to_value(&meta)
}

fn resource(
    shared: &Arc<Shared>,
    group: &str,
    version: &str,
    rest: &[&str],
    query: &HashMap<String, String>,
    headers: &HeaderMap,
    watch: bool,
) -> Response {
    let (namespace, plural, name) = match *rest {
        [plural] => (None, plural, None),
        ["namespaces", ns, plural] => (Some(ns), plural, None),
        ["namespaces", ns, plural, name] => (Some(ns), plural, Some(name)),
        [plural, name] => (None, plural, Some(name)),
        _ => return not_found(),
    };
    let inner = shared.lock();
    // As on the real server, authorization comes before routing: an unknown resource is a 403 too.
    let verb = match (name, watch) {
        (_, true) => "watch",
        (Some(_), false) => "get",
        (None, false) => "list",
    };
    if let Some(refused) = inner.authorize(headers, verb, (group, plural), namespace, name) {
        return refused;
    }
    let Some(rt) = inner.find(group, Some(version), plural).cloned() else {
        return not_found();
    };
    if rt.verbs != READ_VERBS {
        return status(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            format!("{plural} only support create"),
        );
    }
    if (namespace.is_some() && !rt.namespaced) || (name.is_some() && rt.namespaced && namespace.is_none()) {
        return not_found();
    }
    let mut filter = match Filter::parse(&rt, namespace, query) {
        Ok(f) => f,
        Err(message) => return bad_request(message),
    };
    let meta = match metadata_only(headers, name.is_none() && !watch) {
        Ok(m) => m,
        Err(message) => return status(StatusCode::NOT_ACCEPTABLE, "NotAcceptable", message),
    };
    let store = inner.objects.get(&(rt.group.clone(), rt.plural.clone()));
    if let (Some(name), false) = (name, watch) {
        let resource = if group.is_empty() {
            plural.to_owned()
        } else {
            format!("{plural}.{group}")
        };
        return match store.and_then(|s| s.get(&(namespace.unwrap_or("").to_owned(), name.to_owned()))) {
            Some(obj) if meta => respond(StatusCode::OK, &partial(obj)),
            Some(obj) => respond(StatusCode::OK, obj),
            None => status(
                StatusCode::NOT_FOUND,
                "NotFound",
                format!("{resource} {name:?} not found"),
            ),
        };
    }
    if !watch {
        // Pages are cut from the current state; the continue token carries the list's
        // resourceVersion and the last key returned.
        let (list_rv, after) = match query.get("continue") {
            Some(token) => match token
                .split_once('/')
                .and_then(|(rv, key)| Some((rv.parse::<u64>().ok()?, key.split_once('/')?)))
            {
                Some((rv, (ns, name))) => (rv, Some((ns.to_owned(), name.to_owned()))),
                None => return bad_request(format!("invalid continue token {token:?}")),
            },
            None => (inner.rv, None),
        };
        let limit = query
            .get("limit")
            .and_then(|l| l.parse::<usize>().ok())
            .filter(|l| *l > 0);
        let mut items: Vec<&Value> = store
            .into_iter()
            .flat_map(|s| s.range(after.clone().unwrap_or_default()..))
            .filter(|(key, _)| Some(*key) != after.as_ref())
            .map(|(_, o)| o)
            .filter(|o| filter.matches(o))
            .collect();
        let mut continue_ = None;
        if let Some(limit) = limit.filter(|l| items.len() > *l) {
            items.truncate(limit);
            let last = &items[limit - 1]["metadata"];
            let text = |f: &str| last[f].as_str().unwrap_or_default().to_owned();
            continue_ = Some(format!("{list_rv}/{}/{}", text("namespace"), text("name")));
        }
        let metadata = ListMeta {
            resource_version: Some(list_rv.to_string()),
            continue_,
            ..Default::default()
        };
        return if meta {
            let types = TypeMeta {
                api_version: "meta.k8s.io/v1".into(),
                kind: "PartialObjectMetadataList".into(),
            };
            let items = items.into_iter().map(partial).collect();
            respond(
                StatusCode::OK,
                &ObjectList {
                    types,
                    metadata,
                    items,
                },
            )
        } else {
            let types = TypeMeta {
                api_version: rt.api_version(),
                kind: format!("{}List", rt.kind),
            };
            let items = items.into_iter().cloned().collect();
            respond(
                StatusCode::OK,
                &ObjectList::<Value> {
                    types,
                    metadata,
                    items,
                },
            )
        };
    }

    // WATCH. The history snapshot and the broadcast subscription are taken under one lock, so no
    // change is lost or sent twice.
    if let Some(name) = name {
        filter.fields.push(("/metadata/name", true, name.to_owned()));
    }
    let since = match query.get("resourceVersion").map(String::as_str) {
        None | Some("" | "0") => None,
        Some(rv) => match rv.parse::<u64>() {
            Ok(rv) => Some(rv),
            Err(_) => return bad_request(format!("invalid resource version {rv:?}")),
        },
    };
    let initial_events = query.get("sendInitialEvents").is_some_and(|v| v == "true");
    let bookmarks = query.get("allowWatchBookmarks").is_some_and(|v| v == "true");
    let timeout = query
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .map_or(WATCH_CAP, |t| Duration::from_secs(t).min(WATCH_CAP));
    let mut lines: Vec<String> = Vec::new();
    if since.is_none() || initial_events {
        // "Start at most recent / any": synthetic ADDED for the current state.
        let current = store
            .into_iter()
            .flat_map(|s| s.values())
            .filter(|o| filter.matches(o));
        lines.extend(current.map(|o| event_line(WatchEvent::Added(o.clone()), meta)));
    } else if let Some(since) = since {
        let start = inner.history.partition_point(|c| c.rv <= since);
        lines.extend(
            inner.history[start..]
                .iter()
                .filter_map(|c| change_line(c, &rt, &filter, meta)),
        );
    }
    let mut last_rv = inner.rv;
    if initial_events && bookmarks {
        lines.push(bookmark_line(&rt, meta, last_rv, true));
    }
    let mut changes = shared.changes.subscribe();
    let mut shutdown = shared.shutdown.clone();
    drop(inner);

    let (mut tx, rx) = mpsc::channel::<Result<Bytes, Infallible>>(64);
    tokio::spawn(async move {
        for line in lines {
            if tx.send(Ok(line.into())).await.is_err() {
                return;
            }
        }
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        loop {
            let line = tokio::select! {
                _ = &mut deadline => {
                    if bookmarks {
                        let _ = tx.send(Ok(bookmark_line(&rt, meta, last_rv, false).into())).await;
                    }
                    return;
                }
                _ = async { shutdown.wait_for(|s| *s).await.is_ok() } => return,
                change = changes.recv() => match change {
                    Ok(change) => {
                        last_rv = change.rv;
                        change_line(&change, &rt, &filter, meta)
                    }
                    // Lagged or closed: end the stream; the client resumes from its last version.
                    Err(_) => return,
                },
            };
            if let Some(line) = line
                && tx.send(Ok(line.into())).await.is_err()
            {
                return;
            }
        }
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(rx))
        .expect("watch response")
}

/// The event a watch with this filter sees for `change`, as the real watch cache computes it.
fn change_line(change: &Change, rt: &ResType, filter: &Filter, meta: bool) -> Option<String> {
    if change.group != rt.group || change.plural != rt.plural {
        return None;
    }
    let was = change.prev.as_ref().is_some_and(|o| filter.matches(o));
    let event = match &change.cur {
        Some(cur) if filter.matches(cur) => {
            if was {
                WatchEvent::Modified(cur.clone())
            } else {
                WatchEvent::Added(cur.clone())
            }
        }
        _ if was => {
            // Gone, or no longer matching: DELETED with the last matching state at this version.
            let mut prev = change.prev.clone()?;
            prev["metadata"]["resourceVersion"] = json!(change.rv.to_string());
            WatchEvent::Deleted(prev)
        }
        _ => return None,
    };
    Some(event_line(event, meta))
}

fn event_line(event: WatchEvent<Value>, meta: bool) -> String {
    let event = if meta {
        match event {
            WatchEvent::Added(o) => WatchEvent::Added(partial(&o)),
            WatchEvent::Modified(o) => WatchEvent::Modified(partial(&o)),
            WatchEvent::Deleted(o) => WatchEvent::Deleted(partial(&o)),
            other => other,
        }
    } else {
        event
    };
    serde_json::to_string(&event).expect("serialize watch event") + "\n"
}

/// Built by hand: k8s-openapi's `WatchEvent::Bookmark` omits apiVersion/kind, which the real
/// server sends and kube-core's `Bookmark` requires.
fn bookmark_line(rt: &ResType, meta: bool, rv: u64, initial_end: bool) -> String {
    let (api_version, kind) = if meta {
        ("meta.k8s.io/v1".to_owned(), "PartialObjectMetadata".to_owned())
    } else {
        (rt.api_version(), rt.kind.clone())
    };
    let annotations = if initial_end {
        json!({"k8s.io/initial-events-end": "true"})
    } else {
        json!({})
    };
    let object = json!({"apiVersion": api_version, "kind": kind, "metadata": {"resourceVersion": rv.to_string(), "annotations": annotations}});
    json!({"type": "BOOKMARK", "object": object}).to_string() + "\n"
}

#[cfg(test)]
mod tests {
    use std::{collections::BTreeSet, time::Instant};

    use futures::StreamExt;
    use k8s_openapi::api::{
        authentication::v1::TokenReviewSpec,
        authorization::v1::{NonResourceAttributes, ResourceAttributes, SubjectAccessReviewSpec},
    };
    use kube::{
        Api, Client, ResourceExt,
        api::{ApiResource, ListParams, PostParams},
        config::{KubeConfigOptions, Kubeconfig},
        discovery::Discovery,
        runtime::{WatchStreamExt, reflector, watcher},
    };

    use super::*;

    fn client(fake: &FakeKube) -> Client {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        Client::try_from(kube::Config::new(fake.url().parse().unwrap())).unwrap()
    }

    async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(1);
        while !done() {
            assert!(Instant::now() < deadline, "{what}: not within 1s");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn count(fake: &FakeKube, path: &str, watch: bool) -> usize {
        fake.requests()
            .iter()
            .filter(|r| r.method == "GET" && r.path == path && r.watch == watch)
            .count()
    }

    #[tokio::test]
    async fn discovery_finds_core_apps_and_late_crds() {
        let fake = FakeKube::start().await;
        let client = client(&fake);
        let has = |d: &Discovery, group: &str, plural: &str| {
            d.get(group).is_some_and(|g| {
                g.recommended_resources()
                    .iter()
                    .any(|(ar, _)| ar.plural == plural)
            })
        };
        let discovery = Discovery::new(client.clone()).run().await.unwrap();
        assert!(has(&discovery, "", "pods") && has(&discovery, "", "namespaces"));
        assert!(has(&discovery, "apps", "deployments"));
        assert!(has(&discovery, "authorization.k8s.io", "subjectaccessreviews"));
        assert!(!discovery.has_group("example.com"));

        fake.add_resource_type("example.com", "v1", "widgets", "widget", "Widget", true, &["wd"]);
        fake.upsert_object(
            "example.com",
            "v1",
            "widgets",
            "Widget",
            Some("default"),
            "w1",
            &[("app", "web")],
        );
        let discovery = Discovery::new(client.clone()).run().await.unwrap();
        let group = discovery
            .get("example.com")
            .expect("CRD group after add_resource_type");
        let (ar, caps) = group
            .recommended_resources()
            .into_iter()
            .find(|(ar, _)| ar.plural == "widgets")
            .unwrap();
        assert_eq!(
            (ar.kind.as_str(), caps.scope),
            ("Widget", kube::discovery::Scope::Namespaced)
        );

        let widgets: Api<DynamicObject> = Api::namespaced_with(client.clone(), "default", &ar);
        let list = widgets
            .list(&ListParams::default().labels("app=web"))
            .await
            .unwrap();
        assert_eq!(
            list.items.iter().map(|o| o.name_any()).collect::<Vec<_>>(),
            ["w1"]
        );
        let deploy = ApiResource::erase::<k8s_openapi::api::apps::v1::Deployment>(&());
        fake.upsert_object(
            "apps",
            "v1",
            "deployments",
            "Deployment",
            Some("default"),
            "web",
            &[],
        );
        let got = Api::<DynamicObject>::namespaced_with(client, "default", &deploy)
            .get("web")
            .await
            .unwrap();
        assert_eq!(got.types.unwrap().kind, "Deployment");
    }

    #[tokio::test]
    async fn lists_filter_by_labels_fields_and_paginate() {
        let fake = FakeKube::start().await;
        fake.upsert_pod("default", "web-0", &[("app", "web")], "Running");
        fake.upsert_pod("default", "web-1", &[("app", "web"), ("tier", "x")], "Failed");
        fake.upsert_pod("default", "db-0", &[("app", "db")], "Running");
        fake.upsert_pod("other", "web-9", &[("app", "web")], "Running");
        let client = client(&fake);
        let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
        let names =
            |list: kube::core::ObjectList<Pod>| list.items.iter().map(|p| p.name_any()).collect::<Vec<_>>();

        assert_eq!(
            names(pods.list(&ListParams::default().labels("app=web")).await.unwrap()),
            ["web-0", "web-1"]
        );
        let running = ListParams::default()
            .labels("app=web")
            .fields("status.phase!=Failed");
        assert_eq!(names(pods.list(&running).await.unwrap()), ["web-0"]);
        let set_based = ListParams::default().labels("app in (web,db),!tier");
        assert_eq!(names(pods.list(&set_based).await.unwrap()), ["db-0", "web-0"]);
        let all = Api::<Pod>::all(client.clone())
            .list(&ListParams::default().labels("app notin (db)"))
            .await;
        assert_eq!(names(all.unwrap()), ["web-0", "web-1", "web-9"]);

        let page = pods.list(&ListParams::default().limit(2)).await.unwrap();
        assert_eq!(names(page.clone()), ["db-0", "web-0"]);
        let rv = page.metadata.resource_version.clone().unwrap();
        let token = page.metadata.continue_.unwrap();
        let rest = pods
            .list(&ListParams::default().limit(2).continue_token(&token))
            .await
            .unwrap();
        assert_eq!(
            (
                rest.metadata.resource_version.clone(),
                rest.metadata.continue_.clone()
            ),
            (Some(rv), None)
        );
        assert_eq!(names(rest), ["web-1"]);

        let meta = pods
            .list_metadata(&ListParams::default().fields("metadata.name=web-0"))
            .await
            .unwrap();
        assert_eq!(meta.types.kind, "PartialObjectMetadataList");
        assert_eq!(
            meta.items[0].types.as_ref().unwrap().api_version,
            "meta.k8s.io/v1"
        );
        assert_eq!(meta.items[0].labels()["app"], "web");

        assert_eq!(
            pods.get("web-0").await.unwrap().status.unwrap().phase.as_deref(),
            Some("Running")
        );
        let missing = pods.get("nope").await.unwrap_err();
        assert!(matches!(missing, kube::Error::Api(s) if s.code == 404 && s.reason == "NotFound"));
        let bad = pods
            .list(&ListParams::default().labels("app in ("))
            .await
            .unwrap_err();
        assert!(matches!(bad, kube::Error::Api(s) if s.code == 400));
        let bad_field = pods
            .list(&ListParams::default().fields("spec.nodeName=n1"))
            .await
            .unwrap_err();
        assert!(matches!(bad_field, kube::Error::Api(s) if s.code == 400));

        let body = reqwest::get(format!("{}/nowhere", fake.url())).await.unwrap();
        assert_eq!(body.status(), 404);
        let status: Status = serde_json::from_str(&body.text().await.unwrap()).unwrap();
        assert_eq!(status.reason.as_deref(), Some("NotFound"));
        let last = fake.requests().pop().unwrap();
        assert_eq!(
            (last.method.as_str(), last.path.as_str(), last.watch),
            ("GET", "/nowhere", false)
        );
    }

    #[tokio::test]
    #[allow(deprecated)] // kube 5 prefers watcher(Api<PartialObjectMeta<Pod>>); both send the same requests
    async fn metadata_reflector_follows_pods_with_one_list() {
        let fake = FakeKube::start().await;
        fake.upsert_pod("default", "web-0", &[("app", "web")], "Running");
        fake.upsert_pod("default", "crashed", &[("app", "web")], "Failed");
        let api: Api<Pod> = Api::all(client(&fake));
        let (reader, writer) = reflector::store::<PartialObjectMeta<Pod>>();
        let config = watcher::Config::default().fields("status.phase!=Failed");
        let stream = reflector(writer, kube::runtime::metadata_watcher(api, config)).default_backoff();
        let task = tokio::spawn(stream.for_each(|_| async {}));
        tokio::time::timeout(Duration::from_secs(5), reader.wait_until_ready())
            .await
            .unwrap()
            .unwrap();
        let state = || reader.state();
        let names = || state().iter().map(|p| p.name_any()).collect::<BTreeSet<_>>();
        let labels_of = |name: &str| {
            state()
                .iter()
                .find(|p| p.name_any() == name)
                .map(|p| p.labels().clone())
        };
        assert_eq!(names(), BTreeSet::from(["web-0".to_owned()]));

        fake.upsert_pod("default", "web-1", &[("app", "web")], "Running");
        eventually("new pod", || names().contains("web-1")).await;
        fake.upsert_pod("default", "web-1", &[("app", "api")], "Running");
        eventually("relabel", || {
            labels_of("web-1").is_some_and(|l| l["app"] == "api")
        })
        .await;
        fake.mark_pod_deleting("default", "web-1");
        eventually("deleting", || {
            state().iter().any(|p| p.metadata.deletion_timestamp.is_some())
        })
        .await;
        fake.delete_pod("default", "web-1");
        eventually("deleted pod gone", || !names().contains("web-1")).await;
        fake.upsert_pod("default", "web-0", &[("app", "web")], "Failed");
        eventually("failed pod gone", || names().is_empty()).await;
        fake.upsert_pod("default", "crashed", &[("app", "web")], "Running");
        eventually("recovered pod", || names().contains("crashed")).await;

        assert_eq!(
            count(&fake, "/api/v1/pods", false),
            1,
            "one LIST per watcher start"
        );
        assert!(count(&fake, "/api/v1/pods", true) >= 1);
        let list = fake
            .requests()
            .into_iter()
            .find(|r| r.path == "/api/v1/pods")
            .unwrap();
        assert!(
            list.query.contains("fieldSelector=status.phase%21%3DFailed"),
            "{}",
            list.query
        );
        task.abort();
    }

    #[tokio::test]
    async fn partial_object_meta_api_watches_services_by_label() {
        let fake = FakeKube::start().await;
        fake.upsert_service("default", "web", &[("app", "web")]);
        let api: Api<PartialObjectMeta<Service>> = Api::namespaced(client(&fake), "default");
        let (reader, writer) = reflector::store();
        let stream = reflector(writer, watcher(api, watcher::Config::default().labels("app=web")));
        let task = tokio::spawn(stream.default_backoff().for_each(|_| async {}));
        tokio::time::timeout(Duration::from_secs(5), reader.wait_until_ready())
            .await
            .unwrap()
            .unwrap();
        let names = || reader.state().iter().map(|s| s.name_any()).collect::<Vec<_>>();
        assert_eq!(names(), ["web"]);
        fake.upsert_service("default", "web", &[("app", "other")]);
        eventually("relabelled out of the selector", || names().is_empty()).await;
        fake.upsert_service("other", "web2", &[("app", "web")]);
        fake.upsert_service("default", "web3", &[("app", "web")]);
        eventually("new matching service", || names() == ["web3"]).await;
        assert_eq!(count(&fake, "/api/v1/namespaces/default/services", false), 1);
        task.abort();
    }

    #[tokio::test]
    async fn configmap_watch_resumes_without_relisting() {
        let fake = FakeKube::start().await;
        fake.set_auth_configmap(&[("client-ca-file", "CA1")]);
        let api: Api<ConfigMap> = Api::namespaced(client(&fake), "kube-system");
        // timeoutSeconds=1: the fake ends each watch after 1s and kube re-watches from its last version.
        let config = watcher::Config::default()
            .fields("metadata.name=extension-apiserver-authentication")
            .timeout(1);
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let stream = watcher(api, config).default_backoff().applied_objects();
        let task = tokio::spawn(stream.for_each(move |cm| {
            let _ = tx.send(cm.unwrap());
            async {}
        }));
        let mut next_ca = async || {
            let cm = tokio::time::timeout(Duration::from_secs(1), rx.recv())
                .await
                .unwrap()
                .unwrap();
            assert_eq!(cm.name_any(), "extension-apiserver-authentication");
            cm.data.unwrap()["client-ca-file"].clone()
        };
        assert_eq!(next_ca().await, "CA1");
        tokio::time::sleep(Duration::from_millis(1500)).await;
        fake.upsert_object(
            "",
            "v1",
            "configmaps",
            "ConfigMap",
            Some("kube-system"),
            "other",
            &[],
        );
        fake.set_auth_configmap(&[("client-ca-file", "CA2")]);
        assert_eq!(next_ca().await, "CA2");
        let path = "/api/v1/namespaces/kube-system/configmaps";
        assert_eq!(count(&fake, path, false), 1);
        assert!(
            count(&fake, path, true) >= 2,
            "the watch was re-opened after its timeout"
        );
        task.abort();
    }

    #[tokio::test]
    async fn streaming_list_gets_initial_events_and_end_bookmark() {
        let fake = FakeKube::start().await;
        let api: Api<Namespace> = Api::all(client(&fake));
        let config = watcher::Config::default().streaming_lists();
        let mut events = watcher(api, config).boxed();
        let mut seen = Vec::new();
        loop {
            let event = tokio::time::timeout(Duration::from_secs(1), events.next()).await;
            match event.unwrap().unwrap().unwrap() {
                watcher::Event::InitApply(ns) => seen.push(ns.name_any()),
                watcher::Event::InitDone => break,
                _ => {}
            }
        }
        assert_eq!(seen, ["default", "kube-system"]);
        let watches = fake.requests();
        assert!(watches.iter().all(|r| r.watch), "a streaming list does not LIST");
        assert!(watches[0].query.contains("sendInitialEvents=true"));
    }

    #[tokio::test]
    async fn token_and_access_reviews() {
        let fake = FakeKube::start().await;
        fake.add_token(
            "t-hpa",
            "system:serviceaccount:kube-system:horizontal-pod-autoscaler",
            &["system:serviceaccounts"],
        );
        fake.allow("system:serviceaccounts", "get", "custom.metrics.k8s.io", "*");
        fake.allow("system:authenticated", "get", "", "/apis/custom.metrics.k8s.io*");
        let client = client(&fake);

        let reviews: Api<TokenReview> = Api::all(client.clone());
        let review = |token: &str| TokenReview {
            spec: TokenReviewSpec {
                token: token.into(),
                audiences: None,
            },
            ..Default::default()
        };
        let ok = reviews
            .create(&PostParams::default(), &review("t-hpa"))
            .await
            .unwrap()
            .status
            .unwrap();
        assert_eq!(ok.authenticated, Some(true));
        assert_eq!(ok.user.unwrap().groups.unwrap(), ["system:serviceaccounts"]);
        let bad = reviews
            .create(&PostParams::default(), &review("nope"))
            .await
            .unwrap()
            .status
            .unwrap();
        assert_eq!(
            (bad.authenticated, bad.error.as_deref()),
            (Some(false), Some("invalid bearer token"))
        );

        let sars: Api<SubjectAccessReview> = Api::all(client);
        let check =
            async |user: &str, groups: &[&str], verb: &str, resource: Option<&str>, path: Option<&str>| {
                let spec = SubjectAccessReviewSpec {
                    user: Some(user.into()),
                    groups: Some(groups.iter().map(|g| g.to_string()).collect()),
                    resource_attributes: resource.map(|r| ResourceAttributes {
                        verb: Some(verb.into()),
                        group: Some("custom.metrics.k8s.io".into()),
                        resource: Some(r.into()),
                        subresource: Some("http_requests".into()),
                        namespace: Some("default".into()),
                        ..Default::default()
                    }),
                    non_resource_attributes: path.map(|p| NonResourceAttributes {
                        path: Some(p.into()),
                        verb: Some(verb.into()),
                    }),
                    ..Default::default()
                };
                let sar = SubjectAccessReview {
                    spec,
                    ..Default::default()
                };
                sars.create(&PostParams::default(), &sar)
                    .await
                    .unwrap()
                    .status
                    .unwrap()
            };
        assert!(
            check("hpa", &["system:serviceaccounts"], "get", Some("pods"), None)
                .await
                .allowed
        );
        let denied = check("hpa", &["system:serviceaccounts"], "list", Some("pods"), None).await;
        assert_eq!(
            (denied.allowed, denied.reason.as_deref()),
            (false, Some("no RBAC policy matched"))
        );
        assert!(
            !check("mallory", &["system:authenticated"], "get", Some("pods"), None)
                .await
                .allowed
        );
        assert!(
            check("root", &["system:masters"], "delete", Some("pods"), None)
                .await
                .allowed
        );
        let discovery_path = Some("/apis/custom.metrics.k8s.io/v1beta2");
        assert!(
            check("bob", &["system:authenticated"], "get", None, discovery_path)
                .await
                .allowed
        );
        assert!(
            !check("bob", &["system:authenticated"], "get", None, Some("/metrics"))
                .await
                .allowed
        );
        let post = fake.requests().into_iter().find(|r| r.method == "POST").unwrap();
        assert_eq!(post.path, "/apis/authentication.k8s.io/v1/tokenreviews");
        assert!(post.body.contains("t-hpa"));
    }

    /// A client that authenticates as [`ADAPTER_USER`], through the kubeconfig the fake writes.
    async fn adapter_client(fake: &FakeKube, dir: &Path) -> Client {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let kubeconfig = Kubeconfig::read_from(fake.write_kubeconfig(dir)).unwrap();
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
            .await
            .unwrap();
        Client::try_from(config).unwrap()
    }

    #[tokio::test]
    async fn enforced_rbac_answers_the_api_servers_403_and_self_reviews() {
        let fake = FakeKube::start().await;
        fake.add_batch_types();
        fake.upsert_pod("default", "web-0", &[], "Running");
        let dir = tempfile::tempdir().unwrap();
        let adapter = adapter_client(&fake, dir.path()).await;
        let jobs_resource = ApiResource::erase::<k8s_openapi::api::batch::v1::Job>(&());
        let jobs = Api::<DynamicObject>::all_with(adapter.clone(), &jobs_resource);
        // Off by default: everyone may do anything.
        assert!(jobs.list(&ListParams::default()).await.is_ok());

        fake.enforce_rbac();
        fake.allow("system:serviceaccounts", "list", "", "pods");
        let refused = |err: kube::Error| match err {
            kube::Error::Api(status) => *status,
            other => panic!("not an API error: {other}"),
        };
        let status = refused(jobs.list(&ListParams::default()).await.unwrap_err());
        assert_eq!(
            (status.code, status.reason.as_str(), status.message.as_str()),
            (
                403,
                "Forbidden",
                r#"jobs.batch is forbidden: User "system:serviceaccount:custom-metrics:custom-metrics-apiserver" cannot list resource "jobs" in API group "batch" at the cluster scope"#
            )
        );
        let details = status.details.unwrap();
        assert_eq!((details.group.as_str(), details.kind.as_str()), ("batch", "jobs"));
        // A metadata watch (what the adapter's caches do) is refused with the verb watch.
        let metadata = Api::<PartialObjectMeta<DynamicObject>>::all_with(adapter.clone(), &jobs_resource);
        let mut events = watcher(metadata, watcher::Config::default()).boxed();
        let watch = loop {
            match events.next().await.unwrap() {
                Ok(watcher::Event::Init) => continue,
                other => break other,
            }
        };
        assert!(
            matches!(watch, Err(watcher::Error::InitialListFailed(kube::Error::Api(ref s))) if s.code == 403),
            "{watch:?}"
        );

        // Granted through the ServiceAccount's group; get is still refused, in the namespace.
        let pods: Api<Pod> = Api::namespaced(adapter.clone(), "default");
        assert_eq!(pods.list(&ListParams::default()).await.unwrap().items.len(), 1);
        let status = refused(pods.get("web-0").await.unwrap_err());
        assert_eq!(
            status.message,
            r#"pods "web-0" is forbidden: User "system:serviceaccount:custom-metrics:custom-metrics-apiserver" cannot get resource "pods" in API group "" in the namespace "default""#
        );
        // Without a token the caller is anonymous; with a token no one issued it is a 401.
        let status = refused(
            Api::<Pod>::all(client(&fake))
                .list(&ListParams::default())
                .await
                .unwrap_err(),
        );
        assert!(
            status.message.contains(r#"User "system:anonymous" cannot list"#),
            "{}",
            status.message
        );
        let mut config = kube::Config::new(fake.url().parse().unwrap());
        config.auth_info.token = Some("stolen".to_owned().into());
        let stranger = Api::<Pod>::all(Client::try_from(config).unwrap());
        assert_eq!(
            refused(stranger.list(&ListParams::default()).await.unwrap_err()).code,
            401
        );

        // SelfSubjectAccessReview: the same rules, for the caller.
        let reviews: Api<SelfSubjectAccessReview> = Api::all(adapter);
        let may = async |verb: &str, group: &str, resource: &str| {
            let review = SelfSubjectAccessReview {
                spec: k8s_openapi::api::authorization::v1::SelfSubjectAccessReviewSpec {
                    resource_attributes: Some(ResourceAttributes {
                        verb: Some(verb.into()),
                        group: Some(group.into()),
                        resource: Some(resource.into()),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                ..Default::default()
            };
            let answer = reviews.create(&PostParams::default(), &review).await.unwrap();
            answer.status.unwrap().allowed
        };
        assert!(may("list", "", "pods").await);
        assert!(!may("watch", "", "pods").await);
        assert!(!may("list", "batch", "jobs").await);
        fake.allow(ADAPTER_USER, "*", "batch", "jobs");
        assert!(may("watch", "batch", "jobs").await);
        assert!(jobs.list(&ListParams::default()).await.is_ok());
        let post = fake.requests().into_iter().find(|r| r.method == "POST").unwrap();
        assert_eq!(
            post.path,
            "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews"
        );
    }

    #[tokio::test]
    async fn namespaced_rules_denials_and_review_faults() {
        let fake = FakeKube::start().await;
        fake.allow_in("default", "alice", "get", "custom.metrics.k8s.io", "*");
        fake.allow("hpa", "get", "custom.metrics.k8s.io", "*");
        fake.deny_in("kube-system", "hpa", "*", "*", "*");
        fake.add_token("t", "bob", &[]);
        let sars: Api<SubjectAccessReview> = Api::all(client(&fake));
        let sar = |user: &str, namespace: &str| SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: Some(user.into()),
                resource_attributes: Some(ResourceAttributes {
                    verb: Some("get".into()),
                    group: Some("custom.metrics.k8s.io".into()),
                    resource: Some("pods".into()),
                    name: Some("*".into()),
                    namespace: (!namespace.is_empty()).then(|| namespace.into()),
                    ..Default::default()
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        let check = async |user: &str, namespace: &str| {
            sars.create(&PostParams::default(), &sar(user, namespace)).await
        };
        let status = async |user: &str, namespace: &str| {
            let status = check(user, namespace).await.unwrap().status.unwrap();
            (status.allowed, status.denied.unwrap_or(false))
        };
        assert_eq!(status("alice", "default").await, (true, false));
        assert_eq!(
            status("alice", "staging").await,
            (false, false),
            "a RoleBinding's namespace only"
        );
        assert_eq!(status("alice", "").await, (false, false));
        assert_eq!(status("hpa", "default").await, (true, false));
        assert_eq!(status("hpa", "kube-system").await, (false, true), "deny wins");
        let namespaces: Vec<Option<String>> = fake
            .access_reviews()
            .into_iter()
            .map(|r| r.spec.resource_attributes.unwrap().namespace)
            .collect();
        assert_eq!(namespaces.len(), 5);
        assert_eq!(namespaces[4].as_deref(), Some("kube-system"));

        fake.set_review_fault(Review::Access, Some(ReviewFault::Fail(503)));
        // kube retries 503s for minutes by default; this client shows the first answer.
        let mut config = kube::Config::new(fake.url().parse().unwrap());
        config.default_retry = false;
        let once: Api<SubjectAccessReview> = Api::all(Client::try_from(config).unwrap());
        let failed = once
            .create(&PostParams::default(), &sar("hpa", "default"))
            .await
            .unwrap_err();
        assert!(matches!(failed, kube::Error::Api(s) if s.code == 503 && s.reason == "ServiceUnavailable"));
        fake.set_review_fault(Review::Access, Some(ReviewFault::Hang));
        let hung = tokio::time::timeout(Duration::from_millis(300), check("hpa", "default")).await;
        assert!(hung.is_err(), "a hanging review does not answer");
        let (api, review) = (sars.clone(), sar("hpa", "default"));
        let waiting = tokio::spawn(async move { api.create(&PostParams::default(), &review).await });
        tokio::time::sleep(Duration::from_millis(100)).await;
        fake.set_review_fault(Review::Access, None);
        let answer = waiting.await.unwrap().unwrap();
        assert!(answer.status.unwrap().allowed, "answers once the fault clears");

        let tokens: Api<TokenReview> = Api::all(client(&fake));
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: "t".into(),
                audiences: None,
            },
            ..Default::default()
        };
        fake.set_review_fault(Review::Token, Some(ReviewFault::Fail(500)));
        let failed = tokens.create(&PostParams::default(), &review).await.unwrap_err();
        assert!(matches!(failed, kube::Error::Api(s) if s.code == 500 && s.reason == "InternalError"));
        fake.set_review_fault(Review::Token, None);
        let ok = tokens.create(&PostParams::default(), &review).await.unwrap();
        assert_eq!(ok.status.unwrap().authenticated, Some(true));
    }

    #[tokio::test]
    async fn kubeconfig_reaches_the_fake_with_the_token() {
        let fake = FakeKube::start().await;
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let dir = tempfile::tempdir().unwrap();
        let kubeconfig = Kubeconfig::read_from(fake.write_kubeconfig(dir.path())).unwrap();
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
            .await
            .unwrap();
        let namespaces = Api::<Namespace>::all(Client::try_from(config).unwrap());
        let names: Vec<String> = namespaces
            .list(&Default::default())
            .await
            .unwrap()
            .iter()
            .map(|n| n.name_any())
            .collect();
        assert_eq!(names, ["default", "kube-system"]);
        let last = fake.requests().pop().unwrap();
        assert_eq!(last.authorization.as_deref(), Some("Bearer adapter-token"));
        fake.clear_requests();
        assert!(fake.requests().is_empty());
        let url = fake.url();
        drop(fake);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            reqwest::get(format!("{url}/api")).await.is_err(),
            "dropping FakeKube stops the server"
        );
    }
}
