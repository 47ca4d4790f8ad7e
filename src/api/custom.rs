//! custom.metrics.k8s.io handlers: path → objects → PromQL → samples → MetricValueList.

use std::{
    collections::{BTreeMap, HashSet},
    time::SystemTime,
};

use super::{
    ApiError, WireVersion, json_response,
    types::{MetricIdentifier, MetricValueList, MetricValueV1Beta1, MetricValueV1Beta2, ObjectReference},
    wants_pretty, wire_version,
};
use crate::{
    app::State as AppState,
    objects::{ObjectRef, ResourceInfo},
    prometheus, quantity,
    rules::{self, QueryRequest},
    selector::Selector,
};
use axum::{
    http::StatusCode,
    response::{IntoResponse, Response},
};

/// Above this many objects the query selects every object and filters locally, instead of
/// sending a regex with every name.
const MAX_NAMES_IN_QUERY: usize = 200;

/// Which objects a request is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ObjectName {
    One(String),
    /// `*`: every object matching `labelSelector`.
    All,
}

/// A parsed custom metrics request path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricPath {
    pub namespace: Option<String>,
    pub resource: String,
    pub name: ObjectName,
    pub metric: String,
}

impl MetricPath {
    /// Parses what follows `/apis/<group>/<version>/`. None for shapes no route serves.
    pub fn parse(path: &str) -> Option<Self> {
        let segments: Vec<&str> = path.split('/').collect();
        if segments.iter().any(|s| s.is_empty()) {
            return None;
        }
        let name = |s: &str| {
            if s == "*" {
                ObjectName::All
            } else {
                ObjectName::One(s.to_owned())
            }
        };
        match segments.as_slice() {
            // The metric of the Namespace object itself.
            ["namespaces", ns, "metrics", metric] if *ns != "*" => Some(Self {
                namespace: None,
                resource: "namespaces".into(),
                name: ObjectName::One((*ns).to_owned()),
                metric: (*metric).to_owned(),
            }),
            ["namespaces", ns, resource, object, metric] if *ns != "*" => Some(Self {
                namespace: Some((*ns).to_owned()),
                resource: (*resource).to_owned(),
                name: name(object),
                metric: (*metric).to_owned(),
            }),
            [resource, object, metric] => Some(Self {
                namespace: None,
                resource: (*resource).to_owned(),
                name: name(object),
                metric: (*metric).to_owned(),
            }),
            _ => None,
        }
    }
}

/// One answer item, independent of the wire version.
#[derive(Debug, Clone)]
struct Item {
    object: ObjectReference,
    timestamp: String,
    value: String,
}

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
    let Some(request) = MetricPath::parse(path) else {
        return ApiError::unknown_route().into_response();
    };
    // An empty metricLabelSelector is no selector, as the HPA's client renders it.
    let metric_selector = params.get("metricLabelSelector").filter(|s| !s.trim().is_empty());
    let metric_selector = match metric_selector.map(|s| Selector::parse(s)).transpose() {
        Ok(selector) => selector,
        Err(err) => {
            return ApiError::bad_request(format!("invalid metricLabelSelector: {err}")).into_response();
        }
    };
    // Echoed in every item as a LabelSelector; `!=`, `>` and `<` have no LabelSelector form.
    let selector_echo = match metric_selector
        .as_ref()
        .map(Selector::to_label_selector)
        .transpose()
    {
        Ok(echo) => echo,
        Err(err) => {
            return ApiError::bad_request(format!(
                "invalid metricLabelSelector: {err}; write `key notin (value)` instead of `key!=value`"
            ))
            .into_response();
        }
    };
    let label_selector = match Selector::parse(params.get("labelSelector").map_or("", String::as_str)) {
        Ok(selector) => selector,
        Err(err) => return ApiError::bad_request(format!("invalid labelSelector: {err}")).into_response(),
    };
    let name = match field_selector_name(params, &request.name) {
        Ok(name) => name,
        Err(err) => return err.into_response(),
    };
    let request = MetricPath { name, ..request };

    let items = match metric_values(state, &request, &label_selector, metric_selector.as_ref()).await {
        Ok(items) => items,
        Err(err) => {
            tracing::info!(metric = %request.metric, resource = %request.resource, code = err.code(), error = err.message(), "Request refused");
            return err.into_response();
        }
    };
    let api_version = format!("{group}/{version}");
    let pretty = wants_pretty(params);
    match wire {
        WireVersion::V1Beta1 => {
            let items = items
                .into_iter()
                .map(|item| MetricValueV1Beta1 {
                    described_object: item.object,
                    metric_name: request.metric.clone(),
                    timestamp: item.timestamp,
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
                    described_object: item.object,
                    metric: MetricIdentifier {
                        name: request.metric.clone(),
                        selector: selector_echo.clone(),
                    },
                    timestamp: item.timestamp,
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

/// The stages of a request, each with its own error.
async fn metric_values(
    state: &AppState,
    request: &MetricPath,
    label_selector: &Selector,
    metric_selector: Option<&Selector>,
) -> Result<Vec<Item>, ApiError> {
    let not_found = |detail: String| {
        ApiError::not_found(format!(
            "the server could not find the metric {} for {}: {detail}",
            request.metric, request.resource
        ))
    };
    // 1. Resource; an unknown name refreshes API discovery once (a CRD added after start).
    let mut resources = state.resources.load_full();
    if resources.resolve(&request.resource).is_none()
        && let Some(objects) = &state.objects
        && objects.refresh_resources().await
    {
        resources = state.resources.load_full();
    }
    let resource = resources.resolve(&request.resource).ok_or_else(|| {
        not_found(format!(
            "{:?} is not a resource this server knows; it serves {}",
            request.resource,
            resources.names()
        ))
    })?;
    // Cluster-scoped objects have no namespace, even when the HPA puts one in the path.
    let namespace = if resource.namespaced {
        request.namespace.as_deref()
    } else {
        None
    };

    // 2. Metric, from the discovery snapshot.
    let discovery = state.discovery.load_full();
    let entry = discovery.get(resource, &request.metric).ok_or_else(|| {
        let gr = resource.group_resource();
        if discovery.listed_at.is_none() {
            return ApiError::not_found(format!(
                "the server could not find the metric {} for {gr}: metric discovery has not completed yet (/readyz?verbose says why)",
                request.metric,
            ));
        }
        let mut detail = format!("no series in Prometheus maps to {} for {gr}", request.metric);
        let closest = discovery.closest(resource, &request.metric);
        if !closest.is_empty() {
            detail.push_str(&format!("; did you mean {}?", closest.join(", ")));
        }
        let elsewhere = discovery.resources_of(&request.metric);
        if !elsewhere.is_empty() {
            detail.push_str(&format!("; it is served for {}", elsewhere.join(", ")));
        }
        ApiError::not_found(format!("the server could not find the metric {} for {gr}: {detail}", request.metric))
    })?;

    // 3. Objects.
    let objects = select_objects(state, resource, namespace, request, label_selector).await?;
    let names: Option<Vec<String>> = match (&request.name, &objects) {
        (ObjectName::One(name), _) => Some(vec![name.clone()]),
        (ObjectName::All, Some(objects))
            if objects.len() <= MAX_NAMES_IN_QUERY && !label_selector.is_empty() =>
        {
            Some(objects.iter().map(|o| o.name.clone()).collect())
        }
        (ObjectName::All, _) => None,
    };

    // 4. PromQL.
    let everything = Selector::default();
    let query_request = QueryRequest {
        resource,
        namespace,
        names: names.as_deref(),
        metric_selector: metric_selector.unwrap_or(&everything),
    };
    let query = entry
        .rule
        .query(&entry.series, query_request, &resources)
        .map_err(|err| match err {
            rules::Error::Selector(err) => {
                ApiError::bad_request(format!("invalid metricLabelSelector: {err}"))
            }
            err => ApiError::internal(err.to_string()),
        })?;
    tracing::debug!(promql = %query.promql, "Querying Prometheus");

    // 5. Prometheus.
    let samples = state
        .prometheus
        .query(&query.promql, SystemTime::now())
        .await
        .map_err(prometheus_error)?;

    // 6. Samples → items.
    let wanted: Option<HashSet<(Option<&str>, &str)>> = objects.as_ref().map(|objects| {
        objects
            .iter()
            .map(|o| (o.namespace.as_deref(), o.name.as_str()))
            .collect()
    });
    let mut items = Vec::with_capacity(samples.len());
    let mut not_a_number = Vec::new();
    for sample in &samples {
        let Some(name) = sample.labels.get(&query.resource_label) else {
            continue;
        };
        let item_namespace = match (&query.namespace_label, namespace) {
            (None, _) => None,
            (Some(_), Some(namespace)) => Some(namespace),
            (Some(label), None) => sample.labels.get(label),
        };
        if let ObjectName::One(wanted_name) = &request.name
            && wanted_name != name
        {
            continue;
        }
        if let Some(wanted) = &wanted
            && !wanted.contains(&(item_namespace, name))
        {
            continue;
        }
        let value = match quantity::from_f64(sample.value) {
            Ok(value) => value,
            Err(err) => {
                not_a_number.push(format!("{name}: {err}"));
                continue;
            }
        };
        items.push(Item {
            object: ObjectReference {
                kind: resource.kind.clone(),
                namespace: item_namespace.unwrap_or_default().to_owned(),
                name: name.to_owned(),
                api_version: resource.described_api_version(),
            },
            timestamp: format_timestamp(sample.timestamp),
            value,
        });
    }
    items.sort_by(|a, b| (&a.object.namespace, &a.object.name).cmp(&(&b.object.namespace, &b.object.name)));
    items.dedup_by(|a, b| a.object == b.object);

    // 7. Nothing to answer with is an error the HPA (and a human) can act on.
    if items.is_empty() {
        let scope = namespace
            .map(|ns| format!(" in namespace {ns:?}"))
            .unwrap_or_default();
        let target = match &request.name {
            ObjectName::One(name) => format!("{} {name:?}{scope}", resource.singular),
            ObjectName::All => match &objects {
                Some(objects) => format!("the {} matching {}{scope}", objects.len(), resource.plural),
                None => format!("any {}{scope}", resource.singular),
            },
        };
        let detail = if !not_a_number.is_empty() {
            format!(
                "the sample for {target} was not a number ({})",
                not_a_number.join("; ")
            )
        } else {
            format!(
                "Prometheus returned no samples of {} for {target} (looked for the label {:?})",
                entry.series, query.resource_label
            )
        };
        let message = match &request.name {
            ObjectName::One(name) => format!(
                "the server could not find the metric {} for {} {name}: {detail}",
                request.metric,
                resource.group_resource()
            ),
            ObjectName::All => {
                format!(
                    "the server could not find the metric {} for {}: {detail}",
                    request.metric,
                    resource.group_resource()
                )
            }
        };
        return Err(ApiError::not_found(message));
    }
    if !not_a_number.is_empty() {
        tracing::debug!(skipped = ?not_a_number, "Left out samples that are not numbers");
    }
    Ok(items)
}

/// Which objects exist, when an object source is configured. None means "unknown: take every
/// object that has samples".
async fn select_objects(
    state: &AppState,
    resource: &ResourceInfo,
    namespace: Option<&str>,
    request: &MetricPath,
    label_selector: &Selector,
) -> Result<Option<Vec<ObjectRef>>, ApiError> {
    let (name, metric) = (&request.name, &request.metric);
    let scope = namespace
        .map(|ns| format!(" in namespace {ns:?}"))
        .unwrap_or_default();
    let Some(objects) = &state.objects else {
        if *name == ObjectName::All && !label_selector.is_empty() {
            return Err(ApiError::bad_request(format!(
                "labelSelector {:?} needs to know which {} carry those labels, and this server has no object source: \
                 start it with --objects-file listing the {} and their labels, or drop labelSelector to get every {} with samples",
                label_selector.to_string(),
                resource.plural,
                resource.plural,
                resource.singular
            )));
        }
        return Ok(None);
    };
    let source_error = |err: crate::objects::Error| match err {
        crate::objects::Error::NotSynced { .. } => ApiError::service_unavailable(err.to_string()),
        // Not a passing outage: the metric is not served until RBAC allows it, as discovery says.
        crate::objects::Error::Forbidden(_) => ApiError::not_found(format!(
            "the server could not find the metric {metric} for {}: {err}",
            resource.group_resource()
        )),
        err => ApiError::internal(format!("unable to list matching resources: {err}")),
    };
    objects.ready(resource).await.map_err(source_error)?;
    match name {
        ObjectName::One(object) => {
            if !objects
                .exists(resource, namespace, object)
                .map_err(source_error)?
            {
                return Err(ApiError::not_found(format!(
                    "the server could not find the metric {metric} for {} {object}: {} {object:?} does not exist{scope} (according to the {})",
                    resource.group_resource(),
                    resource.singular,
                    objects.describe()
                )));
            }
            Ok(None)
        }
        ObjectName::All => {
            let matched = objects
                .list(resource, namespace, label_selector)
                .map_err(source_error)?;
            if matched.is_empty() {
                let what = if label_selector.is_empty() {
                    format!("there are no {}{scope}", resource.plural)
                } else {
                    format!(
                        "labelSelector {:?} matched no {}{scope}",
                        label_selector.to_string(),
                        resource.plural
                    )
                };
                return Err(ApiError::not_found(format!(
                    "the server could not find the metric {metric} for {}: {what} (according to the {})",
                    resource.group_resource(),
                    objects.describe()
                )));
            }
            Ok(Some(matched))
        }
    }
}

/// Maps Prometheus failures to the status a client can act on. The message is the error's
/// summary: Prometheus' URL and words went to the log (the client logs every failed query).
pub(super) fn prometheus_error(err: prometheus::Error) -> ApiError {
    let message = format!("unable to fetch metrics: {}", err.summary());
    match err {
        prometheus::Error::Timeout { .. } => ApiError::timeout(message, 1),
        prometheus::Error::Unreachable { .. } => ApiError::service_unavailable(message),
        prometheus::Error::Unavailable { retry_after, .. } => {
            let seconds = u32::try_from(retry_after.as_secs()).unwrap_or(u32::MAX);
            ApiError::service_unavailable_retry(message, seconds)
        }
        _ => ApiError::internal(message),
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
    fn paths() {
        let parse = |p: &str| MetricPath::parse(p);
        assert_eq!(
            parse("namespaces/default/services/sample-metrics-app/http_requests"),
            Some(MetricPath {
                namespace: Some("default".into()),
                resource: "services".into(),
                name: ObjectName::One("sample-metrics-app".into()),
                metric: "http_requests".into()
            })
        );
        assert_eq!(
            parse("namespaces/default/pods/*/http_requests").unwrap().name,
            ObjectName::All
        );
        let namespace_metric = parse("namespaces/default/metrics/http_requests").unwrap();
        assert_eq!(
            (namespace_metric.resource.as_str(), namespace_metric.namespace),
            ("namespaces", None)
        );
        assert_eq!(namespace_metric.name, ObjectName::One("default".into()));
        assert_eq!(parse("namespaces/*/http_requests").unwrap().name, ObjectName::All);
        assert_eq!(parse("pods/*/http_requests").unwrap().namespace, None);
        for bad in [
            "namespaces/default",
            "a/b",
            "namespaces/default/pods//m",
            "namespaces/*/pods/*/m",
            "a/b/c/d/e/f",
        ] {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }

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
