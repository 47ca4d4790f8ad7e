//! An object source read from a YAML file: for local runs and clusters without API access.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
};

use serde::Deserialize;

use super::{Error, ObjectRef, ObjectSource, ResourceInfo, Result};
use crate::selector::Selector;

/// The `--objects-file` format. Unknown keys are refused so typos do not go unnoticed.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    namespaces: Vec<ClusterScopedEntry>,
    #[serde(default)]
    pods: Vec<Entry>,
    #[serde(default)]
    services: Vec<ServiceEntry>,
    #[serde(default)]
    nodes: Vec<ClusterScopedEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClusterScopedEntry {
    name: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    #[serde(default = "default_namespace")]
    namespace: String,
    name: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ServiceEntry {
    #[serde(default = "default_namespace")]
    namespace: String,
    name: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    /// The pods the Service fronts. Documentation only: a Service's value comes from the series
    /// that carry its `service` label, which is what a ServiceMonitor attaches.
    #[serde(default)]
    #[allow(dead_code)]
    selector: BTreeMap<String, String>,
}

fn default_namespace() -> String {
    "default".into()
}

#[derive(Debug, Clone)]
struct Object {
    namespace: Option<String>,
    name: String,
    labels: BTreeMap<String, String>,
}

/// Objects listed in a YAML file (`--objects-file`); see the README for the format.
#[derive(Debug)]
pub struct StaticObjects {
    path: String,
    by_resource: BTreeMap<&'static str, Vec<Object>>,
}

impl StaticObjects {
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    pub fn parse(text: &str, origin: &str) -> Result<Self> {
        let file: File = if text.trim().is_empty() {
            File::default()
        } else {
            serde_saphyr::from_str(text).map_err(|err| Error::Parse {
                path: origin.into(),
                message: err.to_string(),
            })?
        };
        let namespaced = |e: Entry| Object {
            namespace: Some(e.namespace),
            name: e.name,
            labels: e.labels,
        };
        let pods: Vec<Object> = file.pods.into_iter().map(namespaced).collect();
        let services: Vec<Object> = file
            .services
            .into_iter()
            .map(|s| Object {
                namespace: Some(s.namespace),
                name: s.name,
                labels: s.labels,
            })
            .collect();
        let cluster_scoped = |entries: Vec<ClusterScopedEntry>| -> Vec<Object> {
            entries
                .into_iter()
                .map(|e| Object {
                    namespace: None,
                    name: e.name,
                    labels: e.labels,
                })
                .collect()
        };
        // A namespace that holds a listed pod or service exists even if not listed itself.
        let mut namespaces = cluster_scoped(file.namespaces);
        let listed: BTreeSet<String> = namespaces.iter().map(|n| n.name.clone()).collect();
        let implied: BTreeSet<String> = pods
            .iter()
            .chain(&services)
            .filter_map(|o| o.namespace.clone())
            .collect();
        for name in implied.difference(&listed) {
            namespaces.push(Object {
                namespace: None,
                name: name.clone(),
                labels: BTreeMap::new(),
            });
        }
        let nodes = cluster_scoped(file.nodes);
        let by_resource = BTreeMap::from([
            ("pods", pods),
            ("services", services),
            ("namespaces", namespaces),
            ("nodes", nodes),
        ]);
        Ok(Self {
            path: origin.into(),
            by_resource,
        })
    }

    fn objects(&self, resource: &ResourceInfo) -> Result<&[Object]> {
        if !resource.group.is_empty() {
            return Err(self.unsupported(resource));
        }
        self.by_resource
            .get(resource.plural.as_str())
            .map(Vec::as_slice)
            .ok_or_else(|| self.unsupported(resource))
    }

    fn unsupported(&self, resource: &ResourceInfo) -> Error {
        Error::UnsupportedResource {
            source_name: self.describe(),
            resource: resource.group_resource(),
            known: "pods, services, namespaces, nodes".into(),
        }
    }
}

impl ObjectSource for StaticObjects {
    fn list(
        &self,
        resource: &ResourceInfo,
        namespace: Option<&str>,
        selector: &Selector,
    ) -> Result<Vec<ObjectRef>> {
        let mut refs: Vec<ObjectRef> = self
            .objects(resource)?
            .iter()
            .filter(|o| namespace.is_none() || o.namespace.as_deref() == namespace)
            .filter(|o| selector.matches(&o.labels))
            .map(|o| ObjectRef {
                namespace: o.namespace.clone(),
                name: o.name.clone(),
            })
            .collect();
        refs.sort();
        refs.dedup();
        Ok(refs)
    }

    fn exists(&self, resource: &ResourceInfo, namespace: Option<&str>, name: &str) -> Result<bool> {
        Ok(self
            .objects(resource)?
            .iter()
            .any(|o| o.name == name && (namespace.is_none() || o.namespace.as_deref() == namespace)))
    }

    fn describe(&self) -> String {
        format!("objects file {}", self.path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::objects::Resources;

    const FILE: &str = r#"
namespaces:
  - name: staging
    labels: {team: a}
pods:
  - name: web-1
    labels: {app: web, tier: front}
  - name: web-2
    labels: {app: web}
  - name: db-1
    namespace: staging
    labels: {app: db}
services:
  - name: web
    selector: {app: web}
"#;

    #[test]
    fn lists_by_namespace_and_selector() {
        let objects = StaticObjects::parse(FILE, "test").unwrap();
        let resources = Resources::default();
        let pods = resources.resolve("pods").unwrap();
        let all = Selector::parse("").unwrap();
        let web = Selector::parse("app=web,tier").unwrap();
        assert_eq!(objects.list(pods, Some("default"), &all).unwrap().len(), 2);
        assert_eq!(objects.list(pods, None, &all).unwrap().len(), 3);
        let matched = objects.list(pods, Some("default"), &web).unwrap();
        assert_eq!(
            matched,
            vec![ObjectRef {
                namespace: Some("default".into()),
                name: "web-1".into()
            }]
        );
        assert!(objects.exists(pods, Some("staging"), "db-1").unwrap());
        assert!(!objects.exists(pods, Some("default"), "db-1").unwrap());
        let namespaces = resources.resolve("namespaces").unwrap();
        let names: Vec<String> = objects
            .list(namespaces, None, &all)
            .unwrap()
            .into_iter()
            .map(|o| o.name)
            .collect();
        assert_eq!(names, ["default", "staging"]);
        let team = Selector::parse("team=a").unwrap();
        assert_eq!(objects.list(namespaces, None, &team).unwrap().len(), 1);
    }

    #[test]
    fn refuses_unknown_keys() {
        let err = StaticObjects::parse("pods:\n  - name: a\n    lables: {}\n", "f.yaml").unwrap_err();
        assert!(err.to_string().contains("lables"), "{err}");
    }
}
