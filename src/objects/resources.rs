//! The resources the adapter can describe, and how request paths and series labels name them.

use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::sync::watch;

/// One Kubernetes resource, as discovery would describe it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceInfo {
    /// API group; empty for the core group.
    pub group: String,
    pub version: String,
    /// Plural, lower-case resource name (`pods`).
    pub plural: String,
    /// Singular resource name (`pod`).
    pub singular: String,
    pub short_names: Vec<String>,
    pub kind: String,
    pub namespaced: bool,
}

impl ResourceInfo {
    fn core(plural: &str, singular: &str, short: &str, kind: &str, namespaced: bool) -> Self {
        Self {
            group: String::new(),
            version: "v1".into(),
            plural: plural.into(),
            singular: singular.into(),
            short_names: vec![short.into()],
            kind: kind.into(),
            namespaced,
        }
    }

    /// Core `nodes` (cluster-scoped).
    pub fn node() -> Self {
        Self::core("nodes", "node", "no", "Node", false)
    }

    /// `GroupResource.String()`: `pods`, `deployments.apps`.
    pub fn group_resource(&self) -> String {
        if self.group.is_empty() {
            self.plural.clone()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    /// The `apiVersion` prometheus-adapter writes in `describedObject`: `<group>/<version>`,
    /// which is `/v1` for the core group (a quirk clients have always accepted).
    pub fn described_api_version(&self) -> String {
        format!("{}/{}", self.group, self.version)
    }

    fn is_named(&self, name: &str) -> bool {
        name == self.plural || name == self.singular || self.short_names.iter().any(|s| s == name)
    }
}

/// The table of resources the adapter knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resources {
    list: Vec<ResourceInfo>,
}

impl Default for Resources {
    /// The core resources served without a Kubernetes connection: pods, services, namespaces.
    fn default() -> Self {
        Self {
            list: vec![
                ResourceInfo::core("pods", "pod", "po", "Pod", true),
                ResourceInfo::core("services", "service", "svc", "Service", true),
                ResourceInfo::core("namespaces", "namespace", "ns", "Namespace", false),
                ResourceInfo::node(),
            ],
        }
    }
}

impl Resources {
    pub fn new(list: Vec<ResourceInfo>) -> Self {
        Self { list }
    }

    /// Resolves what a user or the HPA writes in a path: plural, singular or short name, optionally
    /// group-qualified (`pods`, `pod`, `po`, `pods.`, `deployments.apps`). Case-insensitive, as kubectl is.
    pub fn resolve(&self, text: &str) -> Option<&ResourceInfo> {
        let text = text.to_ascii_lowercase();
        let (name, group) = match text.split_once('.') {
            Some((name, group)) => (name, Some(group)),
            None => (text.as_str(), None),
        };
        self.list
            .iter()
            .find(|r| r.is_named(name) && group.is_none_or(|g| g == r.group))
    }

    /// Resolves a series label name (`pod`, `service`, `namespace`) to the resource it names.
    pub fn for_label(&self, label: &str) -> Option<&ResourceInfo> {
        self.list
            .iter()
            .find(|r| r.singular == label || r.plural == label)
    }

    /// The namespaces resource, used for the namespace matcher of namespaced requests.
    pub fn namespaces(&self) -> Option<&ResourceInfo> {
        self.list
            .iter()
            .find(|r| r.group.is_empty() && r.plural == "namespaces")
    }

    pub fn iter(&self) -> impl Iterator<Item = &ResourceInfo> {
        self.list.iter()
    }

    /// `pods, services, namespaces`, for error messages.
    pub fn names(&self) -> String {
        self.list
            .iter()
            .map(ResourceInfo::group_resource)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The current resource table, shared by requests, the relist and API discovery, with a change
/// signal so the relist can re-associate series labels as soon as discovery learns new resources.
pub struct SharedResources {
    current: ArcSwap<Resources>,
    /// Bumped whenever the table's contents change.
    generation: watch::Sender<u64>,
}

impl Default for SharedResources {
    fn default() -> Self {
        Self {
            current: ArcSwap::from_pointee(Resources::default()),
            generation: watch::Sender::new(0),
        }
    }
}

impl SharedResources {
    pub fn load_full(&self) -> Arc<Resources> {
        self.current.load_full()
    }

    /// Replaces the table when `next` differs from it; true when it did.
    pub fn store_if_changed(&self, next: Resources) -> bool {
        if *self.current.load_full() == next {
            return false;
        }
        self.current.store(Arc::new(next));
        self.generation.send_modify(|g| *g += 1);
        true
    }

    /// How many times the table changed; with [`SharedResources::subscribe`] to wait for the next.
    pub fn generation(&self) -> u64 {
        *self.generation.borrow()
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_every_spelling() {
        let resources = Resources::default();
        for text in ["pods", "pod", "po", "pods.", "pod.", "Pods"] {
            assert_eq!(
                resources.resolve(text).map(|r| r.kind.as_str()),
                Some("Pod"),
                "{text}"
            );
        }
        for text in ["services", "service", "svc", "services."] {
            assert_eq!(
                resources.resolve(text).map(|r| r.kind.as_str()),
                Some("Service"),
                "{text}"
            );
        }
        assert_eq!(resources.resolve("ns").map(|r| r.namespaced), Some(false));
        assert!(resources.resolve("pods.apps").is_none());
        assert!(resources.resolve("deployments").is_none());
    }

    #[test]
    fn names_and_versions() {
        let resources = Resources::default();
        let pods = resources.resolve("pods").unwrap();
        assert_eq!(pods.group_resource(), "pods");
        assert_eq!(pods.described_api_version(), "/v1");
        assert_eq!(resources.for_label("service").unwrap().plural, "services");
        assert!(resources.for_label("instance").is_none());
    }
}
