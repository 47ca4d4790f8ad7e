//! The fake's objects: resource types, the store with its one resourceVersion counter, and the
//! history of changes that watches replay.

use std::{collections::BTreeMap, sync::Arc};

use k8s_openapi::{
    api::core::v1::{
        ConfigMap, Container, Namespace, NamespaceStatus, Pod, PodCondition, PodSpec, PodStatus, Service,
        ServiceSpec,
    },
    apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time},
};
use kube::core::{DynamicObject, TypeMeta};
use serde::Serialize;
use serde_json::{Value, json};

use super::{FakeKube, Inner};

pub(super) const READ_VERBS: &[&str] = &["get", "list", "watch"];
pub(super) const CREATE_VERBS: &[&str] = &["create"];

#[derive(Clone)]
pub(super) struct ResType {
    pub(super) group: String,
    pub(super) version: String,
    pub(super) plural: String,
    pub(super) singular: String,
    pub(super) kind: String,
    pub(super) namespaced: bool,
    pub(super) short_names: Vec<String>,
    pub(super) verbs: &'static [&'static str],
}

impl ResType {
    pub(super) fn api_version(&self) -> String {
        gv(&self.group, &self.version)
    }
}

pub(super) fn gv(group: &str, version: &str) -> String {
    if group.is_empty() {
        version.to_owned()
    } else {
        format!("{group}/{version}")
    }
}

/// One mutation: `prev` is the stored object before, `cur` after (None = deleted).
pub(super) struct Change {
    pub(super) rv: u64,
    pub(super) group: String,
    pub(super) plural: String,
    pub(super) prev: Option<Value>,
    pub(super) cur: Option<Value>,
}

impl Inner {
    pub(super) fn find(&self, group: &str, version: Option<&str>, plural: &str) -> Option<&ResType> {
        self.types
            .iter()
            .find(|t| t.group == group && t.plural == plural && version.is_none_or(|v| t.version == v))
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

pub(super) fn to_value<T: Serialize>(object: &T) -> Value {
    serde_json::to_value(object).expect("k8s-openapi objects serialize")
}

fn typed<T: serde::de::DeserializeOwned + Default>(prev: Option<Value>) -> T {
    prev.and_then(|v| serde_json::from_value(v).ok())
        .unwrap_or_default()
}

impl FakeKube {
    pub(super) fn type_for(&self, group: &str, plural: &str, singular: &str, kind: &str) -> ResType {
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

    pub(super) fn add_type(&self, t: ResType) {
        let mut inner = self.shared.lock();
        inner
            .types
            .retain(|o| !(o.group == t.group && o.version == t.version && o.plural == t.plural));
        inner.types.push(t);
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
}
