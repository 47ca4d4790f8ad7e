//! metrics.k8s.io/v1beta1 from `resourceRules`: NodeMetrics and PodMetrics for `kubectl top` and
//! the HPA's cpu/memory targets, computed by Prometheus.

use std::{collections::BTreeMap, time::SystemTime};

use axum::{
    http::StatusCode,
    response::{IntoResponse, Response},
};
use serde::Serialize;

use super::{ApiError, json_response, types::StatusDetails, wants_pretty};
use crate::{
    pipeline::{Pipeline as AppState, Usage},
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

/// `/apis/metrics.k8s.io/v1beta1/...`.
pub(super) async fn get(
    state: &AppState,
    version: &str,
    path: &str,
    params: &BTreeMap<String, String>,
) -> Response {
    if state.rules().resource.is_none() {
        return ApiError::unknown_route().into_response();
    }
    let selector = match super::label_selector(params) {
        Ok(selector) => selector,
        Err(err) => return err.into_response(),
    };
    let segments: Vec<&str> = path.split('/').collect();
    let pretty = wants_pretty(params);
    let result = match (version, segments.as_slice()) {
        (VERSION, ["nodes"]) => nodes(state, None, &selector)
            .await
            .map(|items| list("NodeMetricsList", items, pretty)),
        (VERSION, ["nodes", name]) => nodes(state, Some(name), &selector)
            .await
            .and_then(|items| one(items, "nodes", name, pretty)),
        (VERSION, ["pods"]) => pods(state, None, None, &selector)
            .await
            .map(|items| list("PodMetricsList", items, pretty)),
        (VERSION, ["namespaces", ns, "pods"]) => pods(state, Some(ns), None, &selector)
            .await
            .map(|items| list("PodMetricsList", items, pretty)),
        (VERSION, ["namespaces", ns, "pods", name]) => pods(state, Some(ns), Some(name), &selector)
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

async fn nodes(
    state: &AppState,
    name: Option<&str>,
    selector: &Selector,
) -> Result<Vec<NodeMetrics>, ApiError> {
    let usages = state.node_usage(name, selector).await?;
    Ok(usages
        .into_iter()
        .map(|node| NodeMetrics {
            kind: "NodeMetrics",
            api_version: "metrics.k8s.io/v1beta1",
            metadata: Metadata {
                name: node.name,
                namespace: String::new(),
                creation_timestamp: now(),
            },
            timestamp: super::custom::format_timestamp(node.timestamp),
            window: node.window,
            usage: usage(node.usage),
        })
        .collect())
}

async fn pods(
    state: &AppState,
    namespace: Option<&str>,
    name: Option<&str>,
    selector: &Selector,
) -> Result<Vec<PodMetrics>, ApiError> {
    let usages = state.pod_usage(namespace, name, selector).await?;
    Ok(usages
        .into_iter()
        .map(|pod| PodMetrics {
            kind: "PodMetrics",
            api_version: "metrics.k8s.io/v1beta1",
            metadata: Metadata {
                name: pod.name,
                namespace: pod.namespace,
                creation_timestamp: now(),
            },
            timestamp: super::custom::format_timestamp(pod.timestamp),
            window: pod.window,
            containers: pod
                .containers
                .into_iter()
                .map(|(name, container)| ContainerMetrics {
                    name,
                    usage: usage(container),
                })
                .collect(),
        })
        .collect())
}

fn usage(usage: Usage) -> BTreeMap<&'static str, String> {
    BTreeMap::from([("cpu", usage.cpu), ("memory", usage.memory)])
}

fn now() -> String {
    let seconds = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    super::custom::format_timestamp(seconds)
}
