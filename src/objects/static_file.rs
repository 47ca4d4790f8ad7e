//! An object source read from a YAML or JSON file: for local runs and clusters without API access.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
};

use serde::Deserialize;

use super::{
    Error, ObjectRef, ObjectSource, ResourceInfo, Result,
    index::{Id, LabelIndex},
};
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

/// One resource's objects, sorted by name (for [`ObjectSource::exists`]) and indexed by namespace
/// and labels (for [`ObjectSource::list`]).
#[derive(Debug, Default)]
struct Indexed {
    objects: Vec<Object>,
    index: LabelIndex,
}

impl Indexed {
    fn new(mut objects: Vec<Object>) -> Result<Self, String> {
        if Id::try_from(objects.len()).is_err() {
            return Err(format!(
                "{} objects of one resource are more than this adapter indexes",
                objects.len()
            ));
        }
        objects.sort_by(|a, b| (&a.name, &a.namespace).cmp(&(&b.name, &b.namespace)));
        let mut index = LabelIndex::default();
        for (id, object) in (0..).zip(&objects) {
            index.insert(id, object.namespace.as_deref(), &object.labels);
        }
        Ok(Self { objects, index })
    }

    fn list(&self, namespace: Option<&str>, selector: &Selector) -> Vec<ObjectRef> {
        let mut refs: Vec<ObjectRef> = self
            .index
            .candidates(namespace, selector, self.objects.len())
            .ids()
            .filter_map(|id| self.objects.get(usize::try_from(id).ok()?))
            .filter(|o| namespace.is_none() || o.namespace.as_deref() == namespace)
            .filter(|o| selector.matches(&o.labels))
            .map(|o| ObjectRef {
                namespace: o.namespace.clone(),
                name: o.name.clone(),
            })
            .collect();
        refs.sort();
        refs.dedup();
        refs
    }

    fn exists(&self, namespace: Option<&str>, name: &str) -> bool {
        let first = self.objects.partition_point(|o| o.name.as_str() < name);
        self.objects[first..]
            .iter()
            .take_while(|o| o.name == name)
            .any(|o| namespace.is_none() || o.namespace.as_deref() == namespace)
    }
}

/// Objects listed in a YAML or JSON file (`--objects-file`); see the README for the format.
#[derive(Debug)]
pub struct StaticObjects {
    path: String,
    by_resource: BTreeMap<&'static str, Indexed>,
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
        let invalid = |message: String| Error::Parse {
            path: origin.into(),
            message,
        };
        let file = read_file(text).map_err(invalid)?;
        let by_resource = index_file(file).map_err(invalid)?;
        Ok(Self {
            path: origin.into(),
            by_resource,
        })
    }

    fn objects(&self, resource: &ResourceInfo) -> Result<&Indexed> {
        if !resource.group.is_empty() {
            return Err(self.unsupported(resource));
        }
        self.by_resource
            .get(resource.plural.as_str())
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

/// How many times its own size a YAML file may grow through aliases (`*name`) before it is
/// refused: a generated file may share one labels map between many objects, but not explode.
const ALIAS_GROWTH: usize = 4;

/// Parses the file: JSON through serde_json when it looks like JSON (several times faster than
/// a YAML parser for the same document), YAML otherwise, or when it is a YAML flow mapping that
/// only looks like JSON.
fn read_file(text: &str) -> Result<File, String> {
    if text.trim().is_empty() {
        return Ok(File::default());
    }
    if text.trim_start().starts_with('{') {
        match serde_json::from_str(text) {
            Ok(file) => return Ok(file),
            // Valid JSON of the wrong shape: the JSON error says where.
            Err(err) if err.is_data() => return Err(format!("{err}")),
            Err(_) => {}
        }
    }
    serde_saphyr::from_str_with_options(text, yaml_options(text.len())).map_err(|err| {
        let message = err.to_string();
        if message.contains("budget breached") {
            format!(
                "{message}; the YAML limits scale with the file's size ({} bytes) and allow aliases to grow it \
                 {ALIAS_GROWTH} times at most: write the objects out without anchors and aliases, or as JSON, which has no such limits",
                text.len()
            )
        } else {
            message
        }
    })
}

/// serde-saphyr's defaults (250,000 nodes, 1,000,000 events, 64 MiB of text) guard against
/// documents that expand through aliases, and refuse an honest file of about 23,000 pods. The
/// limits here grow with the file instead: every node, event and scalar byte not produced by an
/// alias comes from at least one byte of input, so `ALIAS_GROWTH` times the size bounds what
/// aliases can add, and the alias-to-anchor ratio check (which refuses one shared labels map
/// referenced by every pod) is redundant under that bound.
fn yaml_options(size: usize) -> serde_saphyr::Options {
    let scaled = |default: usize| default.max(size.saturating_mul(ALIAS_GROWTH));
    let mut budget = serde_saphyr::Budget::default();
    budget.max_events = scaled(budget.max_events);
    budget.max_nodes = scaled(budget.max_nodes);
    budget.max_total_scalar_bytes = scaled(budget.max_total_scalar_bytes);
    budget.max_aliases = scaled(budget.max_aliases);
    budget.max_recorded_anchor_events = scaled(budget.max_recorded_anchor_events);
    budget.enforce_alias_anchor_ratio = false;
    let mut options = serde_saphyr::Options::default();
    options.alias_limits.max_total_replayed_events = scaled(options.alias_limits.max_total_replayed_events);
    options.budget = Some(budget);
    options
}

/// The file's objects per resource, indexed.
fn index_file(file: File) -> Result<BTreeMap<&'static str, Indexed>, String> {
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
    let listed: BTreeSet<&str> = namespaces.iter().map(|n| n.name.as_str()).collect();
    let implied: BTreeSet<&str> = pods
        .iter()
        .chain(&services)
        .filter_map(|o| o.namespace.as_deref())
        .filter(|namespace| !listed.contains(namespace))
        .collect();
    let implied: Vec<Object> = implied
        .into_iter()
        .map(|name| Object {
            namespace: None,
            name: name.to_owned(),
            labels: BTreeMap::new(),
        })
        .collect();
    namespaces.extend(implied);
    let nodes = cluster_scoped(file.nodes);
    Ok(BTreeMap::from([
        ("pods", Indexed::new(pods)?),
        ("services", Indexed::new(services)?),
        ("namespaces", Indexed::new(namespaces)?),
        ("nodes", Indexed::new(nodes)?),
    ]))
}

impl ObjectSource for StaticObjects {
    fn list(
        &self,
        resource: &ResourceInfo,
        namespace: Option<&str>,
        selector: &Selector,
    ) -> Result<Vec<ObjectRef>> {
        Ok(self.objects(resource)?.list(namespace, selector))
    }

    fn exists(&self, resource: &ResourceInfo, namespace: Option<&str>, name: &str) -> Result<bool> {
        Ok(self.objects(resource)?.exists(namespace, name))
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

    /// Writes an objects file of `pods` pods (3 labels each, in 50 namespaces) in YAML or JSON.
    fn write_pods(path: &Path, pods: usize, json: bool) {
        use std::fmt::Write;
        let mut text = String::with_capacity(pods * 120);
        if json {
            text.push_str("{\"pods\": [");
        } else {
            text.push_str("pods:\n");
        }
        for n in 0..pods {
            let (namespace, app) = (n % 50, n % 1000);
            if json {
                let comma = if n + 1 < pods { "," } else { "" };
                let _ = writeln!(
                    text,
                    r#"{{"namespace": "ns-{namespace}", "name": "pod-{n}", "labels": {{"app": "app-{app}", "tier": "web", "pod-template-hash": "h{n}"}}}}{comma}"#
                );
            } else {
                let _ = writeln!(
                    text,
                    "  - namespace: ns-{namespace}\n    name: pod-{n}\n    labels: {{app: app-{app}, tier: web, pod-template-hash: h{n}}}"
                );
            }
        }
        if json {
            text.push_str("]}\n");
        }
        std::fs::write(path, text).unwrap();
    }

    /// serde-saphyr's default budget (250,000 nodes) refused any file above about 23,000 pods.
    fn loads_pods(pods: usize) {
        let dir = tempfile::tempdir().unwrap();
        let resources = Resources::default();
        let pod = resources.resolve("pods").unwrap();
        for (name, json) in [("objects.yaml", false), ("objects.json", true)] {
            let path = dir.path().join(name);
            write_pods(&path, pods, json);
            let objects = StaticObjects::load(&path).unwrap_or_else(|err| panic!("{name}: {err}"));
            let app = Selector::parse("app=app-7").unwrap();
            let matched = objects.list(pod, Some("ns-7"), &app).unwrap();
            assert_eq!(matched.len(), pods / 1000, "{name}");
            assert!(
                objects
                    .exists(pod, Some("ns-1"), &format!("pod-{}", pods - 49))
                    .unwrap()
            );
            let all = Selector::default();
            assert_eq!(objects.list(pod, None, &all).unwrap().len(), pods, "{name}");
        }
    }

    #[test]
    fn loads_30k_pods_yaml_and_json() {
        loads_pods(30_000);
    }

    #[test]
    #[ignore = "about 10 s in a debug build; run with --ignored or in release"]
    fn loads_100k_pods_yaml_and_json() {
        loads_pods(100_000);
    }

    #[test]
    fn json_looking_yaml_and_json_errors() {
        // A YAML flow mapping starts with `{` too but is no JSON: it is read as YAML.
        let objects = StaticObjects::parse("{pods: [{name: a, labels: {app: web}}]}", "f.yaml").unwrap();
        let pods = Resources::default();
        let pods = pods.resolve("pods").unwrap();
        assert!(objects.exists(pods, Some("default"), "a").unwrap());
        // Valid JSON of the wrong shape gets serde_json's message with its position.
        let err = StaticObjects::parse(r#"{"pods": [{"name": "a", "lables": {}}]}"#, "f.json").unwrap_err();
        assert!(
            err.to_string().contains("lables") && err.to_string().contains("column"),
            "{err}"
        );
    }

    #[test]
    fn alias_bombs_are_refused_naming_the_limit() {
        // One labels map of 1,000 labels shared by 200 pods: 200,000 labels from a 20 kB file.
        let labels: Vec<String> = (0..1000).map(|n| format!("k{n}: v")).collect();
        let mut text = format!("pods:\n  - name: p0\n    labels: &l {{{}}}\n", labels.join(", "));
        for n in 1..200 {
            text.push_str(&format!("  - name: p{n}\n    labels: *l\n"));
        }
        let err = StaticObjects::parse(&text, "bomb.yaml").unwrap_err().to_string();
        assert!(
            err.contains("aliases to grow it 4 times") && err.contains("as JSON"),
            "{err}"
        );
        // Shared by 20 pods it stays within serde-saphyr's default limits, the floor, and loads.
        let shared: String = text
            .lines()
            .take(1 + 2 * 20)
            .map(|line| format!("{line}\n"))
            .collect();
        let objects = StaticObjects::parse(&shared, "shared.yaml").unwrap();
        let pods = Resources::default();
        let k9 = Selector::parse("k9=v").unwrap();
        assert_eq!(
            objects
                .list(pods.resolve("pods").unwrap(), None, &k9)
                .unwrap()
                .len(),
            20
        );
    }
}
