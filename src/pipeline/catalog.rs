//! What the discovery documents list: the metrics discovered, less those of resources the adapter
//! may not read.

use std::collections::{BTreeMap, BTreeSet};

use super::Pipeline;
use crate::{objects::ResourceInfo, rules::Discovery};

/// A custom metric of a resource, as `APIResourceList` names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServedMetric {
    /// `<group-resource>/<metric>`, e.g. `pods/http_requests`.
    pub name: String,
    pub namespaced: bool,
}

impl Pipeline {
    /// Every (resource, metric) pair discovered, sorted, without the resources RBAC keeps the
    /// adapter from listing (their requests would fail).
    pub async fn served_metrics(&self) -> Vec<ServedMetric> {
        // A full Arc, not a guard: the forbidden check below awaits.
        let discovery = self.discovery();
        let forbidden = self.forbidden_resources(&discovery).await;
        discovery
            .iter()
            .filter(|(_, entry)| !forbidden.contains(&entry.resource.group_resource()))
            .map(|(metric, entry)| ServedMetric {
                name: format!("{}/{metric}", entry.resource.group_resource()),
                namespaced: entry.resource.namespaced,
            })
            .collect()
    }

    /// The external metrics discovered, sorted.
    pub fn external_metric_names(&self) -> Vec<String> {
        self.discovery()
            .external_metrics()
            .map(|(metric, _)| metric.to_owned())
            .collect()
    }

    /// The resources of `discovery` the adapter may not list and watch, so cannot serve. Asked
    /// concurrently; each answer is cached by the source.
    async fn forbidden_resources(&self, discovery: &Discovery) -> BTreeSet<String> {
        let Some(objects) = &self.objects else {
            return BTreeSet::new();
        };
        let resources: BTreeMap<String, &ResourceInfo> = discovery
            .iter()
            .map(|(_, entry)| (entry.resource.group_resource(), &entry.resource))
            .collect();
        let answers = futures::future::join_all(
            resources
                .into_iter()
                .map(|(key, resource)| async move { (key, objects.may_serve(resource).await) }),
        )
        .await;
        answers
            .into_iter()
            .filter(|(_, may)| !may)
            .map(|(key, _)| key)
            .collect()
    }
}
