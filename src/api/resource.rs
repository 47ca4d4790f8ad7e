//! metrics.k8s.io/v1beta1 from `resourceRules`: NodeMetrics and PodMetrics for `kubectl top` and
//! the HPA's cpu/memory targets, computed by Prometheus.

use std::{
    collections::{BTreeMap, HashMap},
    time::SystemTime,
};

use axum::{
    http::StatusCode,
    response::{IntoResponse, Response},
};
use futures::{StreamExt, TryStreamExt};
use serde::Serialize;

use super::{ApiError, json_response, types::StatusDetails, wants_pretty};
use crate::{
    backend::Sample,
    objects::{ObjectRef, ResourceInfo, Resources},
    pipeline::Pipeline as AppState,
    quantity,
    rules::{self, PodSelection, ResourceRules, UsageQuery, usage_value},
    selector::Selector,
};

pub const GROUP: &str = "metrics.k8s.io";
pub const VERSION: &str = "v1beta1";

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Metadata {
    name: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    namespace: String,
    creation_timestamp: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct NodeMetrics {
    kind: &'static str,
    api_version: &'static str,
    metadata: Metadata,
    timestamp: String,
    window: String,
    usage: BTreeMap<&'static str, String>,
}

#[derive(Debug, Serialize)]
struct ContainerMetrics {
    name: String,
    usage: BTreeMap<&'static str, String>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct PodMetrics {
    kind: &'static str,
    api_version: &'static str,
    metadata: Metadata,
    timestamp: String,
    window: String,
    containers: Vec<ContainerMetrics>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct List<T> {
    kind: &'static str,
    api_version: &'static str,
    metadata: super::types::ListMeta,
    items: Vec<T>,
}

/// A pod's containers: name → (cpu cores, memory bytes), each if sampled.
type Containers = BTreeMap<String, (Option<f64>, Option<f64>)>;

/// `/apis/metrics.k8s.io/v1beta1/...`.
pub(super) async fn get(
    state: &AppState,
    version: &str,
    path: &str,
    params: &BTreeMap<String, String>,
) -> Response {
    let Some(rules) = state.rules().resource.clone() else {
        return ApiError::unknown_route().into_response();
    };
    let selector = match Selector::parse(params.get("labelSelector").map_or("", String::as_str)) {
        Ok(selector) => selector,
        Err(err) => return ApiError::bad_request(format!("invalid labelSelector: {err}")).into_response(),
    };
    let segments: Vec<&str> = path.split('/').collect();
    let pretty = wants_pretty(params);
    let result = match (version, segments.as_slice()) {
        (VERSION, ["nodes"]) => nodes(state, &rules, None, &selector)
            .await
            .map(|items| list("NodeMetricsList", items, pretty)),
        (VERSION, ["nodes", name]) => nodes(state, &rules, Some(name), &selector)
            .await
            .and_then(|items| one(items, "nodes", name, pretty)),
        (VERSION, ["pods"]) => pods(state, &rules, None, None, &selector)
            .await
            .map(|items| list("PodMetricsList", items, pretty)),
        (VERSION, ["namespaces", ns, "pods"]) => pods(state, &rules, Some(ns), None, &selector)
            .await
            .map(|items| list("PodMetricsList", items, pretty)),
        (VERSION, ["namespaces", ns, "pods", name]) => pods(state, &rules, Some(ns), Some(name), &selector)
            .await
            .and_then(|items| one(items, "pods", name, pretty)),
        _ => Err(ApiError::unknown_route()),
    };
    result.unwrap_or_else(IntoResponse::into_response)
}

fn list<T: Serialize>(kind: &'static str, items: Vec<T>, pretty: bool) -> Response {
    let list = List {
        kind,
        api_version: "metrics.k8s.io/v1beta1",
        metadata: Default::default(),
        items,
    };
    json_response(StatusCode::OK, &list, pretty)
}

/// A single object, or metrics-server's NotFound: `pods.metrics.k8s.io "name" not found`.
fn one<T: Serialize>(items: Vec<T>, resource: &str, name: &str, pretty: bool) -> Result<Response, ApiError> {
    match items.into_iter().next() {
        Some(item) => Ok(json_response(StatusCode::OK, &item, pretty)),
        None => Err(not_found(resource, name)),
    }
}

fn not_found(resource: &str, name: &str) -> ApiError {
    let details = StatusDetails {
        name: name.to_owned(),
        group: GROUP.to_owned(),
        kind: resource.to_owned(),
        ..Default::default()
    };
    ApiError::not_found_with(format!("{resource}.{GROUP} {name:?} not found"), details)
}

/// A resource rule that cannot render its query is a configuration the load checks did not catch.
fn rule_error(err: rules::Error) -> ApiError {
    ApiError::internal(err.to_string())
}

/// Which objects of `resource` exist (all of them when there is no object source).
async fn objects(
    state: &AppState,
    resource: &ResourceInfo,
    namespace: Option<&str>,
    selector: &Selector,
) -> Result<Option<Vec<ObjectRef>>, ApiError> {
    let Some(source) = state.objects() else {
        return Ok(None);
    };
    let unavailable = |err: crate::objects::Error| match err {
        crate::objects::Error::Forbidden(_) => ApiError::not_found(format!(
            "the server could not find the metrics of {}: {err}",
            resource.group_resource()
        )),
        err => ApiError::service_unavailable(err.to_string()),
    };
    source.ready(resource).await.map_err(unavailable)?;
    source
        .list(resource, namespace, selector)
        .map(Some)
        .map_err(unavailable)
}

async fn run(state: &AppState, query: &UsageQuery) -> Result<Vec<Sample>, ApiError> {
    tracing::debug!(promql = %query.promql, "Querying Prometheus");
    state
        .backend()
        .query(&query.promql, SystemTime::now())
        .await
        .map_err(|err| ApiError::from(crate::pipeline::Error::Backend(err)))
}

/// Values by key from a query's samples, as usage.
fn by_key(
    samples: &[Sample],
    key: impl Fn(&Sample) -> Option<(String, String)>,
) -> HashMap<(String, String), (f64, f64)> {
    samples
        .iter()
        .filter_map(|s| key(s).map(|k| (k, (usage_value(s.value), s.timestamp))))
        .collect()
}

fn usage(cpu: f64, memory: f64) -> BTreeMap<&'static str, String> {
    let cpu = quantity::milli_from_f64(cpu)
        .map(quantity::format_milli)
        .unwrap_or_else(|_| "0".to_owned());
    let memory = quantity::milli_from_f64(memory)
        .map(quantity::format_binary_milli)
        .unwrap_or_else(|_| "0".to_owned());
    BTreeMap::from([("cpu", cpu), ("memory", memory)])
}

async fn nodes(
    state: &AppState,
    set: &ResourceRules,
    name: Option<&str>,
    selector: &Selector,
) -> Result<Vec<NodeMetrics>, ApiError> {
    let resources = state.resources().load_full();
    let nodes = resources.resolve("nodes");
    let mut names: Option<Vec<String>> = match nodes {
        Some(nodes) => objects(state, nodes, None, selector)
            .await?
            .map(|list| list.into_iter().map(|o| o.name).collect()),
        None => None,
    };
    if let Some(name) = name {
        names = Some(names.map_or_else(
            || vec![name.to_owned()],
            |all| all.into_iter().filter(|n| n == name).collect(),
        ));
    }
    if names.as_ref().is_some_and(Vec::is_empty) {
        return Ok(Vec::new());
    }
    let cpu_query = set
        .cpu
        .node_query(names.as_deref(), &resources)
        .map_err(rule_error)?;
    let memory_query = set
        .memory
        .node_query(names.as_deref(), &resources)
        .map_err(rule_error)?;
    let (cpu, memory) = tokio::join!(run(state, &cpu_query), run(state, &memory_query));
    let node = |query: &UsageQuery, s: &Sample| {
        s.labels
            .get(&query.object_label)
            .map(|n| (n.to_owned(), String::new()))
    };
    let cpu = by_key(&cpu?, |s| node(&cpu_query, s));
    let memory = by_key(&memory?, |s| node(&memory_query, s));
    let window = crate::duration::format_go(set.window);
    let mut items: Vec<NodeMetrics> = cpu
        .iter()
        .filter_map(|(key, (cpu, cpu_time))| {
            let (memory, memory_time) = memory.get(key)?;
            Some(NodeMetrics {
                kind: "NodeMetrics",
                api_version: "metrics.k8s.io/v1beta1",
                metadata: Metadata {
                    name: key.0.clone(),
                    namespace: String::new(),
                    creation_timestamp: now(),
                },
                timestamp: super::custom::format_timestamp(cpu_time.min(*memory_time)),
                window: window.clone(),
                usage: usage(*cpu, *memory),
            })
        })
        .collect();
    items.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    Ok(items)
}

async fn pods(
    state: &AppState,
    set: &ResourceRules,
    namespace: Option<&str>,
    name: Option<&str>,
    selector: &Selector,
) -> Result<Vec<PodMetrics>, ApiError> {
    let resources = state.resources().load_full();
    let pods_resource = resources
        .resolve("pods")
        .cloned()
        .ok_or_else(|| ApiError::internal("pods are not a known resource"))?;
    let mut listed = objects(state, &pods_resource, namespace, selector).await?;
    if let (Some(name), Some(list)) = (name, listed.as_mut()) {
        list.retain(|o| o.name == name);
    }
    // Without an object source, a named pod is asked for directly; otherwise every pod with samples.
    let wanted: Option<Vec<ObjectRef>> = match (listed, name) {
        (Some(list), _) => Some(list),
        (None, Some(name)) => Some(vec![ObjectRef {
            namespace: namespace.map(str::to_owned),
            name: name.to_owned(),
        }]),
        (None, None) => None,
    };
    if wanted.as_ref().is_some_and(Vec::is_empty) {
        return Ok(Vec::new());
    }
    let per_pod = container_usage(state, set, &resources, namespace, wanted.as_deref()).await?;
    let wanted_keys: Option<Vec<(String, String)>> = wanted.map(|list| {
        list.into_iter()
            .map(|o| (o.namespace.unwrap_or_default(), o.name))
            .collect()
    });
    let window = crate::duration::format_go(set.window);
    let items = per_pod
        .into_iter()
        .filter(|(key, _)| {
            wanted_keys
                .as_ref()
                .is_none_or(|keys| keys.iter().any(|k| k == key))
        })
        // A pod needs both a cpu and a memory sample; a container with only one reports 0 for the other.
        .filter(|(_, (containers, _))| {
            containers.values().any(|(cpu, _)| cpu.is_some())
                && containers.values().any(|(_, memory)| memory.is_some())
        })
        .map(|((namespace, name), (containers, earliest))| PodMetrics {
            kind: "PodMetrics",
            api_version: "metrics.k8s.io/v1beta1",
            metadata: Metadata {
                name,
                namespace,
                creation_timestamp: now(),
            },
            timestamp: super::custom::format_timestamp(earliest),
            window: window.clone(),
            containers: containers
                .into_iter()
                .map(|(name, (cpu, memory))| ContainerMetrics {
                    name,
                    usage: usage(cpu.unwrap_or(0.0), memory.unwrap_or(0.0)),
                })
                .collect(),
        })
        .collect();
    Ok(items)
}

/// How many namespaces' container queries run at once for a cluster-wide pod list.
const NAMESPACE_QUERIES: usize = 8;

/// Per pod (namespace, name): container → (cpu, memory), and the earliest sample time.
type PodUsage = BTreeMap<(String, String), (Containers, f64)>;

/// The container usage of the wanted pods (every pod with samples when None). As in
/// prometheus-adapter, each namespace is queried on its own, grouped by pod and container.
async fn container_usage(
    state: &AppState,
    set: &ResourceRules,
    resources: &Resources,
    namespace: Option<&str>,
    wanted: Option<&[ObjectRef]>,
) -> Result<PodUsage, ApiError> {
    // Owned, so that the stream's future does not borrow from this frame (which a Send future
    // with higher-ranked lifetimes cannot express).
    let mut by_namespace: BTreeMap<Option<String>, Vec<String>> = BTreeMap::new();
    for pod in wanted.unwrap_or_default() {
        let pod_namespace = namespace.or(pod.namespace.as_deref()).map(str::to_owned);
        by_namespace
            .entry(pod_namespace)
            .or_default()
            .push(pod.name.clone());
    }
    let selections: Vec<(Option<String>, Option<Vec<String>>)> = match wanted {
        Some(_) => by_namespace
            .into_iter()
            .map(|(namespace, mut names)| {
                names.sort();
                names.dedup();
                (namespace, Some(names))
            })
            .collect(),
        None => vec![(namespace.map(str::to_owned), None)],
    };
    let results: Vec<PodUsage> = futures::stream::iter(selections)
        .map(|(namespace, names)| async move {
            let pods = PodSelection {
                namespace: namespace.as_deref(),
                names: names.as_deref(),
            };
            namespace_usage(state, set, resources, pods).await
        })
        .buffer_unordered(NAMESPACE_QUERIES)
        .try_collect()
        .await?;
    Ok(results.into_iter().flatten().collect())
}

/// The cpu and memory queries for one selection of pods, their samples merged per container.
async fn namespace_usage(
    state: &AppState,
    set: &ResourceRules,
    resources: &Resources,
    pods: PodSelection<'_>,
) -> Result<PodUsage, ApiError> {
    let cpu_query = set.cpu.container_query(pods, resources).map_err(rule_error)?;
    let memory_query = set.memory.container_query(pods, resources).map_err(rule_error)?;
    let (cpu, memory) = tokio::join!(run(state, &cpu_query), run(state, &memory_query));
    let (cpu, memory) = (cpu?, memory?);
    let mut per_pod = PodUsage::new();
    let set_cpu = |slot: &mut (Option<f64>, Option<f64>), value| slot.0 = Some(value);
    let set_memory = |slot: &mut (Option<f64>, Option<f64>), value| slot.1 = Some(value);
    for (samples, query, container_label, store) in [
        (
            &cpu,
            &cpu_query,
            &set.cpu.container_label,
            &set_cpu as &dyn Fn(&mut _, f64),
        ),
        (&memory, &memory_query, &set.memory.container_label, &set_memory),
    ] {
        for sample in samples {
            let sample_namespace = match &query.namespace_label {
                Some(label) => sample.labels.get(label),
                None => pods.namespace,
            };
            let (Some(sample_namespace), Some(pod)) =
                (sample_namespace, sample.labels.get(&query.object_label))
            else {
                continue;
            };
            let container = sample.labels.get(container_label).unwrap_or_default().to_owned();
            let key = (sample_namespace.to_owned(), pod.to_owned());
            let entry = per_pod.entry(key).or_insert_with(|| (BTreeMap::new(), f64::MAX));
            entry.1 = entry.1.min(sample.timestamp);
            store(entry.0.entry(container).or_default(), usage_value(sample.value));
        }
    }
    Ok(per_pod)
}

fn now() -> String {
    let seconds = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    super::custom::format_timestamp(seconds)
}
