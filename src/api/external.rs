//! external.metrics.k8s.io/v1beta1: metrics not tied to a Kubernetes object, selected by their
//! own labels (`GET /namespaces/{ns}/{metric}?labelSelector=...`).

use std::collections::BTreeMap;

use axum::{
    http::StatusCode,
    response::{IntoResponse, Response},
};

use super::{
    ApiError, json_response,
    types::{ExternalMetricValue, MetricValueList},
    wants_pretty,
};
use crate::pipeline::Pipeline as AppState;

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
    let selector = match super::label_selector(params) {
        Ok(selector) => selector,
        Err(err) => return err.into_response(),
    };
    match state.external_metric(namespace, metric, &selector).await {
        Ok(values) => {
            let items: Vec<ExternalMetricValue> = values
                .into_iter()
                .map(|value| ExternalMetricValue {
                    metric_name: metric.to_owned(),
                    metric_labels: value.labels,
                    timestamp: super::custom::format_timestamp(value.timestamp),
                    window: None,
                    value: value.value,
                })
                .collect();
            let list = MetricValueList {
                kind: "ExternalMetricValueList",
                api_version: format!("{GROUP}/{VERSION}"),
                metadata: Default::default(),
                items,
            };
            json_response(StatusCode::OK, &list, wants_pretty(params))
        }
        Err(err) => {
            let err = ApiError::from(err);
            tracing::info!(%metric, %namespace, code = err.code(), error = err.message(), "Request refused");
            err.into_response()
        }
    }
}
