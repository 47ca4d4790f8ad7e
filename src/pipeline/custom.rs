//! A custom metric of Kubernetes objects, in named steps: resolve the resource, resolve the metric,
//! select the objects, build the query, query the backend, match samples to objects, convert the
//! values.

use std::{collections::HashSet, sync::Arc, time::SystemTime};

use super::{Error, Pipeline};
use crate::{
    backend::Sample,
    objects::{ObjectRef, ResourceInfo, Resources},
    quantity,
    rules::{self, Discovery, MetricEntry, Query, QueryRequest},
    selector::Selector,
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

/// What a custom metrics request is about: the path after `/apis/<group>/<version>/`.
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

/// A custom metrics request: the path and its selectors.
#[derive(Debug, Clone, Copy)]
pub struct MetricRequest<'a> {
    pub path: &'a MetricPath,
    /// Which objects (`labelSelector`); empty selects all.
    pub label_selector: &'a Selector,
    /// Which series of the metric (`metricLabelSelector`).
    pub metric_selector: Option<&'a Selector>,
}

/// The object a value describes, as the wire's ObjectReference names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DescribedObject {
    pub kind: String,
    /// Empty for cluster-scoped objects.
    pub namespace: String,
    pub name: String,
    pub api_version: String,
}

/// One object's value.
#[derive(Debug, Clone)]
pub struct ObjectValue {
    pub object: DescribedObject,
    /// Seconds since the epoch, as the backend stamped the sample.
    pub timestamp: f64,
    /// A Kubernetes Quantity.
    pub value: String,
}

/// The resource and metric a request resolved to.
struct Resolved<'a> {
    resource: &'a ResourceInfo,
    /// None for cluster-scoped resources, even when the HPA puts a namespace in the path.
    namespace: Option<&'a str>,
    entry: &'a MetricEntry,
}

impl Pipeline {
    /// The values of a custom metric for the objects `request` names, sorted by namespace and name.
    pub async fn custom_metric(&self, request: MetricRequest<'_>) -> Result<Vec<ObjectValue>, Error> {
        let resources = self.resolve_resources(&request.path.resource).await;
        let discovery = self.discovery();
        let resolved = resolve(&resources, &discovery, request.path)?;
        let objects = self.select_objects(&resolved, request).await?;
        let query = build_query(&resolved, request, objects.as_deref(), &resources)?;
        tracing::debug!(promql = %query.promql, "Querying the backend");
        let samples = self
            .backend
            .query(&query.promql, SystemTime::now())
            .await
            .map_err(Error::Backend)?;
        let matched = match_samples(&samples, &query, &resolved, request.path, objects.as_deref());
        values(matched, &resolved, request.path, objects.as_deref(), &query)
    }

    /// The resource table; a name it lacks refreshes API discovery once (a CRD added after start).
    async fn resolve_resources(&self, resource: &str) -> Arc<Resources> {
        let resources = self.resources.load_full();
        if resources.resolve(resource).is_none()
            && let Some(objects) = &self.objects
            && objects.refresh_resources().await
        {
            return self.resources.load_full();
        }
        resources
    }
}

/// The resource and the metric of the request, or why there is none.
fn resolve<'a>(
    resources: &'a Resources,
    discovery: &'a Discovery,
    path: &'a MetricPath,
) -> Result<Resolved<'a>, Error> {
    let resource = resources.resolve(&path.resource).ok_or_else(|| {
        Error::NotFound(format!(
            "the server could not find the metric {} for {}: {:?} is not a resource this server knows; it serves {}",
            path.metric,
            path.resource,
            path.resource,
            resources.names()
        ))
    })?;
    let namespace = if resource.namespaced {
        path.namespace.as_deref()
    } else {
        None
    };
    let entry = discovery
        .get(resource, &path.metric)
        .ok_or_else(|| unknown_metric(discovery, resource, &path.metric))?;
    Ok(Resolved {
        resource,
        namespace,
        entry,
    })
}

/// Why `metric` is not served for `resource`, with the closest names and the resources it is
/// served for.
fn unknown_metric(discovery: &Discovery, resource: &ResourceInfo, metric: &str) -> Error {
    let gr = resource.group_resource();
    if discovery.listed_at.is_none() {
        return Error::NotFound(format!(
            "the server could not find the metric {metric} for {gr}: metric discovery has not completed yet (/readyz?verbose says why)",
        ));
    }
    let mut detail = format!("no series in Prometheus maps to {metric} for {gr}");
    let closest = discovery.closest(resource, metric);
    if !closest.is_empty() {
        detail.push_str(&format!("; did you mean {}?", closest.join(", ")));
    }
    let elsewhere = discovery.resources_of(metric);
    if !elsewhere.is_empty() {
        detail.push_str(&format!("; it is served for {}", elsewhere.join(", ")));
    }
    Error::NotFound(format!(
        "the server could not find the metric {metric} for {gr}: {detail}"
    ))
}

/// The PromQL of the request: object names go into the query when there are few enough.
fn build_query(
    resolved: &Resolved<'_>,
    request: MetricRequest<'_>,
    objects: Option<&[ObjectRef]>,
    resources: &Resources,
) -> Result<Query, Error> {
    let names: Option<Vec<String>> = match (&request.path.name, objects) {
        (ObjectName::One(name), _) => Some(vec![name.clone()]),
        (ObjectName::All, Some(objects))
            if objects.len() <= MAX_NAMES_IN_QUERY && !request.label_selector.is_empty() =>
        {
            Some(objects.iter().map(|o| o.name.clone()).collect())
        }
        (ObjectName::All, _) => None,
    };
    let everything = Selector::default();
    let query_request = QueryRequest {
        resource: resolved.resource,
        namespace: resolved.namespace,
        names: names.as_deref(),
        metric_selector: request.metric_selector.unwrap_or(&everything),
    };
    resolved
        .entry
        .rule
        .query(&resolved.entry.series, query_request, resources)
        .map_err(|err| match err {
            rules::Error::Selector(err) => Error::BadRequest(format!("invalid metricLabelSelector: {err}")),
            err => Error::Internal(err.to_string()),
        })
}

/// The samples that describe a wanted object, with the object's namespace and name.
struct Matched<'s> {
    samples: Vec<(Option<&'s str>, &'s str, &'s Sample)>,
}

/// Keeps the samples of the objects the request is about: the named one, or those that exist.
fn match_samples<'s>(
    samples: &'s [Sample],
    query: &'s Query,
    resolved: &Resolved<'s>,
    path: &MetricPath,
    objects: Option<&[ObjectRef]>,
) -> Matched<'s> {
    let wanted: Option<HashSet<(Option<&str>, &str)>> = objects.map(|objects| {
        objects
            .iter()
            .map(|o| (o.namespace.as_deref(), o.name.as_str()))
            .collect()
    });
    let mut matched = Vec::with_capacity(samples.len());
    for sample in samples {
        let Some(name) = sample.labels.get(&query.resource_label) else {
            continue;
        };
        let namespace = match (&query.namespace_label, resolved.namespace) {
            (None, _) => None,
            (Some(_), Some(namespace)) => Some(namespace),
            (Some(label), None) => sample.labels.get(label),
        };
        let other_name = matches!(&path.name, ObjectName::One(wanted) if wanted != name);
        let not_wanted = wanted.as_ref().is_some_and(|w| !w.contains(&(namespace, name)));
        if !other_name && !not_wanted {
            matched.push((namespace, name, sample));
        }
    }
    Matched { samples: matched }
}

/// The values as Quantities, sorted and without duplicates; no value is a NotFound that says why.
fn values(
    matched: Matched<'_>,
    resolved: &Resolved<'_>,
    path: &MetricPath,
    objects: Option<&[ObjectRef]>,
    query: &Query,
) -> Result<Vec<ObjectValue>, Error> {
    let resource = resolved.resource;
    let mut items = Vec::with_capacity(matched.samples.len());
    let mut not_a_number = Vec::new();
    for (namespace, name, sample) in matched.samples {
        match quantity::from_f64(sample.value) {
            Ok(value) => items.push(ObjectValue {
                object: DescribedObject {
                    kind: resource.kind.clone(),
                    namespace: namespace.unwrap_or_default().to_owned(),
                    name: name.to_owned(),
                    api_version: resource.described_api_version(),
                },
                timestamp: sample.timestamp,
                value,
            }),
            Err(err) => not_a_number.push(format!("{name}: {err}")),
        }
    }
    items.sort_by(|a, b| (&a.object.namespace, &a.object.name).cmp(&(&b.object.namespace, &b.object.name)));
    items.dedup_by(|a, b| a.object == b.object);
    if items.is_empty() {
        return Err(no_values(resolved, path, objects, query, &not_a_number));
    }
    if !not_a_number.is_empty() {
        tracing::debug!(skipped = ?not_a_number, "Left out samples that are not numbers");
    }
    Ok(items)
}

/// Nothing to answer with is an error the HPA (and a human) can act on.
fn no_values(
    resolved: &Resolved<'_>,
    path: &MetricPath,
    objects: Option<&[ObjectRef]>,
    query: &Query,
    not_a_number: &[String],
) -> Error {
    let resource = resolved.resource;
    let scope = resolved
        .namespace
        .map(|ns| format!(" in namespace {ns:?}"))
        .unwrap_or_default();
    let target = match (&path.name, objects) {
        (ObjectName::One(name), _) => format!("{} {name:?}{scope}", resource.singular),
        (ObjectName::All, Some(objects)) => {
            format!("the {} matching {}{scope}", objects.len(), resource.plural)
        }
        (ObjectName::All, None) => format!("any {}{scope}", resource.singular),
    };
    let detail = if !not_a_number.is_empty() {
        format!(
            "the sample for {target} was not a number ({})",
            not_a_number.join("; ")
        )
    } else {
        format!(
            "Prometheus returned no samples of {} for {target} (looked for the label {:?})",
            resolved.entry.series, query.resource_label
        )
    };
    let object = match &path.name {
        ObjectName::One(name) => format!(" {name}"),
        ObjectName::All => String::new(),
    };
    Error::NotFound(format!(
        "the server could not find the metric {} for {}{object}: {detail}",
        path.metric,
        resource.group_resource()
    ))
}

impl Pipeline {
    /// Which objects exist, when an object source is configured. None means "unknown: take every
    /// object that has samples".
    async fn select_objects(
        &self,
        resolved: &Resolved<'_>,
        request: MetricRequest<'_>,
    ) -> Result<Option<Vec<ObjectRef>>, Error> {
        let (resource, namespace) = (resolved.resource, resolved.namespace);
        let (name, metric, label_selector) =
            (&request.path.name, &request.path.metric, request.label_selector);
        let Some(objects) = &self.objects else {
            if *name == ObjectName::All && !label_selector.is_empty() {
                return Err(Error::BadRequest(format!(
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
        let scope = namespace
            .map(|ns| format!(" in namespace {ns:?}"))
            .unwrap_or_default();
        let not_found = |what: String| {
            Error::NotFound(format!(
                "the server could not find the metric {metric} for {}: {what} (according to the {})",
                resource.group_resource(),
                objects.describe()
            ))
        };
        let source_error = |err: crate::objects::Error| Error::from_objects(err, metric, resource);
        objects.ready(resource).await.map_err(source_error)?;
        match name {
            ObjectName::One(object) => {
                if !objects
                    .exists(resource, namespace, object)
                    .map_err(source_error)?
                {
                    return Err(Error::NotFound(format!(
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
                if !matched.is_empty() {
                    return Ok(Some(matched));
                }
                Err(not_found(if label_selector.is_empty() {
                    format!("there are no {}{scope}", resource.plural)
                } else {
                    format!(
                        "labelSelector {:?} matched no {}{scope}",
                        label_selector.to_string(),
                        resource.plural
                    )
                }))
            }
        }
    }
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
}
