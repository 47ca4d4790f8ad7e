//! external.metrics.k8s.io/v1beta1: metrics not tied to a Kubernetes object, selected by their
//! own labels (`GET /namespaces/{ns}/{metric}?labelSelector=...`).

use std::{collections::BTreeMap, time::SystemTime};

use axum::{
    http::StatusCode,
    response::{IntoResponse, Response},
};

use super::{
    ApiError, json_response,
    types::{ExternalMetricValue, MetricValueList},
    wants_pretty,
};
use crate::{app::State as AppState, quantity, rules, selector::Selector};

pub const GROUP: &str = "external.metrics.k8s.io";
pub const VERSION: &str = "v1beta1";

pub(super) async fn get_metric(
    state: &AppState,
    version: &str,
    path: &str,
    params: &BTreeMap<String, String>,
) -> Response {
    let segments: Vec<&str> = path.split('/').collect();
    let (namespace, metric) = match segments.as_slice() {
        ["namespaces", namespace, metric]
            if version == VERSION && !namespace.is_empty() && !metric.is_empty() =>
        {
            (*namespace, *metric)
        }
        _ => return ApiError::unknown_route().into_response(),
    };
    let selector = match Selector::parse(params.get("labelSelector").map_or("", String::as_str)) {
        Ok(selector) => selector,
        Err(err) => return ApiError::bad_request(format!("invalid labelSelector: {err}")).into_response(),
    };
    match values(state, namespace, metric, &selector).await {
        Ok(items) => {
            let list = MetricValueList {
                kind: "ExternalMetricValueList",
                api_version: format!("{GROUP}/{VERSION}"),
                metadata: Default::default(),
                items,
            };
            json_response(StatusCode::OK, &list, wants_pretty(params))
        }
        Err(err) => {
            tracing::info!(%metric, %namespace, code = err.code(), error = err.message(), "Request refused");
            err.into_response()
        }
    }
}

async fn values(
    state: &AppState,
    namespace: &str,
    metric: &str,
    selector: &Selector,
) -> Result<Vec<ExternalMetricValue>, ApiError> {
    let discovery = state.discovery.load_full();
    let not_found = |detail: String| {
        ApiError::not_found(format!(
            "the server could not find the metric {metric} for namespaces: {detail}"
        ))
    };
    let entry = discovery.external(metric).ok_or_else(|| {
        let known: Vec<&str> = discovery.external_metrics().map(|(name, _)| name).collect();
        not_found(format!(
            "no external rule names a series {metric:?}; external metrics: {}",
            known.join(", ")
        ))
    })?;
    let resources = state.resources.load_full();
    let promql = entry
        .rule
        .external_query(&entry.series, namespace, selector, &resources)
        .map_err(|err| match err {
            rules::Error::Selector(err) => ApiError::bad_request(format!("invalid labelSelector: {err}")),
            err => ApiError::internal(err.to_string()),
        })?;
    tracing::debug!(%promql, "Querying Prometheus");
    let samples = state
        .prometheus
        .query(&promql, SystemTime::now())
        .await
        .map_err(super::custom::prometheus_error)?;
    let mut items = Vec::with_capacity(samples.len());
    let mut skipped = Vec::new();
    for sample in samples {
        match quantity::from_f64(sample.value) {
            Ok(value) => items.push(ExternalMetricValue {
                metric_name: metric.to_owned(),
                metric_labels: sample.labels.to_map(),
                timestamp: super::custom::format_timestamp(sample.timestamp),
                window: None,
                value,
            }),
            Err(err) => skipped.push(err.to_string()),
        }
    }
    if items.is_empty() {
        let detail = if skipped.is_empty() {
            format!(
                "Prometheus returned no samples of {} in namespace {namespace:?}",
                entry.series
            )
        } else {
            format!("the samples were not numbers ({})", skipped.join("; "))
        };
        return Err(not_found(detail));
    }
    items.sort_by(|a, b| a.metric_labels.cmp(&b.metric_labels));
    Ok(items)
}
