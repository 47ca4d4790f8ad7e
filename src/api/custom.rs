//! custom.metrics.k8s.io: the request's path and selectors in, a MetricValueList out; the
//! pipeline does the work between.

use std::collections::BTreeMap;

use super::{
    ApiError, WireVersion, json_response, label_selector,
    types::{MetricIdentifier, MetricValueList, MetricValueV1Beta1, MetricValueV1Beta2, ObjectReference},
    wants_pretty, wire_version,
};
use crate::{
    pipeline::{DescribedObject, MetricPath, MetricRequest, ObjectName, ObjectValue, Pipeline as AppState},
    selector::{LabelSelector, Selector},
};
use axum::{
    http::StatusCode,
    response::{IntoResponse, Response},
};

pub(super) async fn get_metric(
    state: &AppState,
    group: &str,
    version: &str,
    path: &str,
    params: &BTreeMap<String, String>,
) -> Response {
    let Some(wire) = wire_version(group, version) else {
        return ApiError::unknown_route().into_response();
    };
    match answer(state, path, params).await {
        Ok((metric, selector_echo, items)) => {
            let api_version = format!("{group}/{version}");
            let pretty = wants_pretty(params);
            render(wire, api_version, &metric, selector_echo, items, pretty)
        }
        Err(err) => err.into_response(),
    }
}

/// The request's metric name, its metricLabelSelector as echoed, and the values.
async fn answer(
    state: &AppState,
    path: &str,
    params: &BTreeMap<String, String>,
) -> Result<(String, Option<LabelSelector>, Vec<ObjectValue>), ApiError> {
    let request = MetricPath::parse(path).ok_or_else(ApiError::unknown_route)?;
    // An empty metricLabelSelector is no selector, as the HPA's client renders it.
    let metric_selector = params
        .get("metricLabelSelector")
        .filter(|s| !s.trim().is_empty())
        .map(|s| Selector::parse(s))
        .transpose()
        .map_err(|err| ApiError::bad_request(format!("invalid metricLabelSelector: {err}")))?;
    // Echoed in every item as a LabelSelector; `!=`, `>` and `<` have no LabelSelector form.
    let selector_echo = metric_selector
        .as_ref()
        .map(Selector::to_label_selector)
        .transpose()
        .map_err(|err| {
            ApiError::bad_request(format!(
                "invalid metricLabelSelector: {err}; write `key notin (value)` instead of `key!=value`"
            ))
        })?;
    let label_selector = label_selector(params)?;
    let name = field_selector_name(params, &request.name)?;
    let request = MetricPath { name, ..request };
    let metric_request = MetricRequest {
        path: &request,
        label_selector: &label_selector,
        metric_selector: metric_selector.as_ref(),
    };
    let items = state.custom_metric(metric_request).await.map_err(|err| {
        let err = ApiError::from(err);
        tracing::info!(metric = %request.metric, resource = %request.resource, code = err.code(), error = err.message(), "Request refused");
        err
    })?;
    Ok((request.metric, selector_echo, items))
}

/// The values in the wire format of the version asked for.
fn render(
    wire: WireVersion,
    api_version: String,
    metric: &str,
    selector_echo: Option<LabelSelector>,
    items: Vec<ObjectValue>,
    pretty: bool,
) -> Response {
    match wire {
        WireVersion::V1Beta1 => {
            let items = items
                .into_iter()
                .map(|item| MetricValueV1Beta1 {
                    described_object: object_reference(item.object),
                    metric_name: metric.to_owned(),
                    timestamp: format_timestamp(item.timestamp),
                    window: None,
                    value: item.value,
                    selector: selector_echo.clone(),
                })
                .collect();
            json_response(StatusCode::OK, &list(api_version, items), pretty)
        }
        WireVersion::V1Beta2 => {
            let items = items
                .into_iter()
                .map(|item| MetricValueV1Beta2 {
                    described_object: object_reference(item.object),
                    metric: MetricIdentifier {
                        name: metric.to_owned(),
                        selector: selector_echo.clone(),
                    },
                    timestamp: format_timestamp(item.timestamp),
                    window_seconds: None,
                    value: item.value,
                })
                .collect();
            json_response(StatusCode::OK, &list(api_version, items), pretty)
        }
    }
}

fn list<T>(api_version: String, items: Vec<T>) -> MetricValueList<T> {
    MetricValueList {
        kind: "MetricValueList",
        api_version,
        metadata: Default::default(),
        items,
    }
}

/// `fieldSelector=metadata.name=X` names one object, as in the Go API machinery.
fn field_selector_name(params: &BTreeMap<String, String>, name: &ObjectName) -> Result<ObjectName, ApiError> {
    let Some(field_selector) = params.get("fieldSelector").filter(|s| !s.is_empty()) else {
        return Ok(name.clone());
    };
    let value = field_selector
        .strip_prefix("metadata.name==")
        .or_else(|| field_selector.strip_prefix("metadata.name="))
        .filter(|v| !v.contains(','))
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "invalid fieldSelector {field_selector:?}: only metadata.name=<name> is supported"
            ))
        })?;
    match name {
        ObjectName::One(path_name) if path_name != value => Err(ApiError::bad_request(format!(
            "fieldSelector metadata.name={value} does not match the name {path_name:?} in the path"
        ))),
        _ => Ok(ObjectName::One(value.to_owned())),
    }
}

fn object_reference(object: DescribedObject) -> ObjectReference {
    ObjectReference {
        kind: object.kind,
        namespace: object.namespace,
        name: object.name,
        api_version: object.api_version,
    }
}

/// RFC 3339 in UTC with second precision, from Prometheus' sample time.
pub(super) fn format_timestamp(seconds: f64) -> String {
    let whole = seconds.floor() as i64;
    jiff::Timestamp::from_second(whole)
        .map(|t| t.to_string())
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339_seconds() {
        assert_eq!(format_timestamp(1_543_611_394.823), "2018-11-30T20:56:34Z");
    }

    #[test]
    fn field_selector() {
        let params = |v: &str| BTreeMap::from([("fieldSelector".to_owned(), v.to_owned())]);
        assert_eq!(
            field_selector_name(&params("metadata.name=a"), &ObjectName::All).unwrap(),
            ObjectName::One("a".into())
        );
        assert!(field_selector_name(&params("metadata.name=a"), &ObjectName::One("b".into())).is_err());
        assert!(field_selector_name(&params("status.phase=Running"), &ObjectName::All).is_err());
    }
}
