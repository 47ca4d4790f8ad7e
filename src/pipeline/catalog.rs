//! What the discovery documents list: the metrics discovered, less those of resources the adapter
//! may not read.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
};

use super::Pipeline;
use crate::{objects::ResourceInfo, rules::Discovery};

/// A custom metric of a resource, as `APIResourceList` names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServedMetric {
    /// `<group-resource>/<metric>`, e.g. `pods/http_requests`.
    pub name: String,
    pub namespaced: bool,
}

/// A resource some discovered metric belongs to, keyed by its group-resource (`jobs.batch`).
type DiscoveredResource = (String, ResourceInfo);

/// What the discovery documents list at one moment: a discovery snapshot, whether the rules
/// serve resource metrics, and which discovered resources RBAC forbids. Two catalogs that are
/// [`Catalog::same_as`] each other give byte-identical documents, so the API serves prebuilt
/// ones until the catalog changes.
#[derive(Clone)]
pub struct Catalog {
    discovery: Arc<Discovery>,
    /// The distinct resources of `discovery`, so a forbidden check does not walk every metric.
    resources: Arc<[DiscoveredResource]>,
    forbidden: BTreeSet<String>,
    resource_metrics: bool,
}

impl Catalog {
    /// True when both list the same: the same snapshot (by identity, as a relist swaps in a new
    /// one), the same resource metrics setting and the same forbidden resources.
    pub fn same_as(&self, other: &Catalog) -> bool {
        Arc::ptr_eq(&self.discovery, &other.discovery)
            && self.resource_metrics == other.resource_metrics
            && self.forbidden == other.forbidden
    }

    /// Whether the rules have `resourceRules`, so `metrics.k8s.io` is served.
    pub fn resource_metrics(&self) -> bool {
        self.resource_metrics
    }

    /// Every (resource, metric) pair served, sorted.
    pub fn served_metrics(&self) -> Vec<ServedMetric> {
        Pipeline::served_metrics_of(&self.discovery, &self.forbidden)
    }

    /// The external metrics discovered, sorted.
    pub fn external_metric_names(&self) -> Vec<String> {
        self.discovery
            .external_metrics()
            .map(|(metric, _)| metric.to_owned())
            .collect()
    }
}

impl Pipeline {
    /// The catalog now. With the `previous` one of the same snapshot its resource list is
    /// reused, so this costs one cached access answer per distinct resource, not a walk of every
    /// metric: cheap enough to ask on every discovery request, which is how a grant (or a
    /// revocation) shows without a relist.
    pub async fn catalog(&self, previous: Option<&Catalog>) -> Catalog {
        let discovery = self.discovery();
        let resources = match previous {
            Some(previous) if Arc::ptr_eq(&previous.discovery, &discovery) => previous.resources.clone(),
            _ => Self::discovered_resources(&discovery).into(),
        };
        let forbidden = self.forbidden_among(&resources).await;
        Catalog {
            discovery,
            resources,
            forbidden,
            resource_metrics: self.rules().resource.is_some(),
        }
    }

    /// The distinct resources the metrics of `discovery` belong to, sorted by group-resource. Kept
    /// with a snapshot, so that asking which of them are forbidden does not walk every metric.
    fn discovered_resources(discovery: &Discovery) -> Vec<DiscoveredResource> {
        let resources: BTreeMap<String, &ResourceInfo> = discovery
            .iter()
            .map(|(_, entry)| (entry.resource.group_resource(), &entry.resource))
            .collect();
        resources
            .into_iter()
            .map(|(key, resource)| (key, resource.clone()))
            .collect()
    }

    /// Every (resource, metric) pair of `discovery`, sorted, without those of the `forbidden`
    /// group-resources.
    fn served_metrics_of(discovery: &Discovery, forbidden: &BTreeSet<String>) -> Vec<ServedMetric> {
        discovery
            .iter()
            .filter_map(|(metric, entry)| {
                let group_resource = entry.resource.group_resource();
                (!forbidden.contains(&group_resource)).then(|| ServedMetric {
                    name: format!("{group_resource}/{metric}"),
                    namespaced: entry.resource.namespaced,
                })
            })
            .collect()
    }

    /// Every (resource, metric) pair discovered, sorted, without the resources RBAC keeps the
    /// adapter from listing (their requests would fail).
    #[cfg(test)]
    pub async fn served_metrics(&self) -> Vec<ServedMetric> {
        self.catalog(None).await.served_metrics()
    }

    /// The external metrics discovered, sorted.
    #[cfg(test)]
    pub fn external_metric_names(&self) -> Vec<String> {
        self.discovery()
            .external_metrics()
            .map(|(metric, _)| metric.to_owned())
            .collect()
    }

    /// The group-resources among `resources` the adapter may not list and watch, so cannot
    /// serve. Asked concurrently; each answer is cached by the source, and a grant shows here
    /// without a relist.
    async fn forbidden_among(&self, resources: &[DiscoveredResource]) -> BTreeSet<String> {
        let Some(objects) = &self.objects else {
            return BTreeSet::new();
        };
        let answers = futures::future::join_all(
            resources
                .iter()
                .map(|(key, resource)| async move { (key, objects.may_serve(resource).await) }),
        )
        .await;
        answers
            .into_iter()
            .filter(|(_, may)| !may)
            .map(|(key, _)| key.clone())
            .collect()
    }
}
