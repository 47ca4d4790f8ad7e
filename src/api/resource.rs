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
use serde::Serialize;

use super::{ApiError, json_response, types::StatusDetails, wants_pretty};
use crate::{
    app::State as AppState,
    objects::{ObjectRef, ResourceInfo, Resources},
    prometheus::Sample,
    quantity,
    rules::{ResourceRuleSet, Rule, promql, template},
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
    let Some(rules) = state.rules.load().resource.clone() else {
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

fn label(rule: &Rule, resource: Option<&ResourceInfo>, resources: &Resources) -> Result<String, ApiError> {
    resource
        .and_then(|r| rule.label_for_resource(r, resources))
        .ok_or_else(|| {
            ApiError::internal("resourceRules.resources maps no label to namespaces, pods or nodes")
        })
}

/// Which objects of `resource` exist (all of them when there is no object source).
async fn objects(
    state: &AppState,
    resource: &ResourceInfo,
    namespace: Option<&str>,
    selector: &Selector,
) -> Result<Option<Vec<ObjectRef>>, ApiError> {
    let Some(source) = &state.objects else {
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

async fn run(
    state: &AppState,
    query: &template::Template,
    matchers: &[String],
    group_by: &[String],
) -> Result<Vec<Sample>, ApiError> {
    let promql = template::render_metrics_query(query, "", matchers, group_by, &BTreeMap::new())
        .map_err(|err| ApiError::internal(format!("resourceRules: {err}")))?;
    tracing::debug!(%promql, "Querying Prometheus");
    state
        .prometheus
        .query(&promql, SystemTime::now())
        .await
        .map_err(super::custom::prometheus_error)
}

/// Values by key from a query's samples; NaN and negative values count as 0, as in prometheus-adapter.
fn by_key(
    samples: &[Sample],
    key: impl Fn(&Sample) -> Option<(String, String)>,
) -> HashMap<(String, String), (f64, f64)> {
    samples
        .iter()
        .filter_map(|s| {
            key(s).map(|k| {
                (
                    k,
                    (
                        if s.value.is_nan() || s.value < 0.0 {
                            0.0
                        } else {
                            s.value
                        },
                        s.timestamp,
                    ),
                )
            })
        })
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
    set: &ResourceRuleSet,
    name: Option<&str>,
    selector: &Selector,
) -> Result<Vec<NodeMetrics>, ApiError> {
    let rules = &set.config;
    let resources = state.resources.load_full();
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
    let (cpu_rule, memory_rule) = (&set.cpu, &set.memory);
    let node_resource = nodes.cloned().unwrap_or_else(ResourceInfo::node);
    let cpu_label = label(cpu_rule, Some(&node_resource), &resources)?;
    let memory_label = label(memory_rule, Some(&node_resource), &resources)?;
    let matcher = |label: &str| match &names {
        Some(names) => promql::names_matcher(label, names),
        None => promql::matcher(label, promql::MatchOp::Ne, ""),
    };
    let (cpu_matchers, memory_matchers) = ([matcher(&cpu_label)], [matcher(&memory_label)]);
    let (cpu, memory) = tokio::join!(
        run(
            state,
            &rules.cpu.node_query,
            &cpu_matchers,
            std::slice::from_ref(&cpu_label)
        ),
        run(
            state,
            &rules.memory.node_query,
            &memory_matchers,
            std::slice::from_ref(&memory_label)
        ),
    );
    let cpu = by_key(&cpu?, |s| {
        s.labels.get(&cpu_label).map(|n| (n.to_owned(), String::new()))
    });
    let memory = by_key(&memory?, |s| {
        s.labels.get(&memory_label).map(|n| (n.to_owned(), String::new()))
    });
    let window = crate::duration::format_go(rules.window);
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
    set: &ResourceRuleSet,
    namespace: Option<&str>,
    name: Option<&str>,
    selector: &Selector,
) -> Result<Vec<PodMetrics>, ApiError> {
    let rules = &set.config;
    let resources = state.resources.load_full();
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
    let (cpu_rule, memory_rule) = (&set.cpu, &set.memory);
    let namespaces = resources.namespaces().cloned();
    let labels = |rule: &Rule| -> Result<(String, String), ApiError> {
        Ok((
            label(rule, namespaces.as_ref(), &resources)?,
            label(rule, Some(&pods_resource), &resources)?,
        ))
    };
    let (cpu_ns, cpu_pod) = labels(cpu_rule)?;
    let (memory_ns, memory_pod) = labels(memory_rule)?;
    // prometheus-adapter's order: the namespace matcher, then the pods.
    let matchers = |ns_label: &str, pod_label: &str| {
        let mut matchers = Vec::new();
        if let Some(namespace) = namespace {
            matchers.push(promql::matcher(ns_label, promql::MatchOp::Eq, namespace));
        }
        matchers.push(match &wanted {
            Some(list) => {
                let mut names: Vec<String> = list.iter().map(|o| o.name.clone()).collect();
                names.sort();
                names.dedup();
                promql::names_matcher(pod_label, &names)
            }
            None => promql::matcher(pod_label, promql::MatchOp::Ne, ""),
        });
        matchers
    };
    let cpu_group = [cpu_pod.clone(), rules.cpu.container_label.clone(), cpu_ns.clone()];
    let memory_group = [
        memory_pod.clone(),
        rules.memory.container_label.clone(),
        memory_ns.clone(),
    ];
    let (cpu_matchers, memory_matchers) = (matchers(&cpu_ns, &cpu_pod), matchers(&memory_ns, &memory_pod));
    let (cpu, memory) = tokio::join!(
        run(state, &rules.cpu.container_query, &cpu_matchers, &cpu_group),
        run(
            state,
            &rules.memory.container_query,
            &memory_matchers,
            &memory_group
        ),
    );
    let (cpu, memory) = (cpu?, memory?);
    let pod_key =
        |s: &Sample, ns: &str, pod: &str| Some((s.labels.get(ns)?.to_owned(), s.labels.get(pod)?.to_owned()));
    // Per pod: container → (cpu, memory), and the earliest sample time.
    let mut per_pod: BTreeMap<(String, String), (Containers, f64)> = BTreeMap::new();
    for (samples, ns_label, pod_label, container_label, is_cpu) in [
        (&cpu, &cpu_ns, &cpu_pod, &rules.cpu.container_label, true),
        (
            &memory,
            &memory_ns,
            &memory_pod,
            &rules.memory.container_label,
            false,
        ),
    ] {
        for sample in samples {
            let Some(key) = pod_key(sample, ns_label, pod_label) else {
                continue;
            };
            let container = sample.labels.get(container_label).unwrap_or_default().to_owned();
            let value = if sample.value.is_nan() || sample.value < 0.0 {
                0.0
            } else {
                sample.value
            };
            let entry = per_pod.entry(key).or_insert_with(|| (BTreeMap::new(), f64::MAX));
            entry.1 = entry.1.min(sample.timestamp);
            let slot = entry.0.entry(container).or_default();
            if is_cpu {
                slot.0 = Some(value)
            } else {
                slot.1 = Some(value)
            }
        }
    }
    let wanted_keys: Option<Vec<(String, String)>> = wanted.map(|list| {
        list.into_iter()
            .map(|o| (o.namespace.unwrap_or_default(), o.name))
            .collect()
    });
    let window = crate::duration::format_go(rules.window);
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

fn now() -> String {
    let seconds = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    super::custom::format_timestamp(seconds)
}
