//! Resource metrics (`resourceRules`): the cpu and memory usage of nodes and of pods' containers,
//! as metrics.k8s.io serves it for `kubectl top` and the HPA's resource targets.

use std::{
    collections::{BTreeMap, HashMap},
    time::SystemTime,
};

use futures::{StreamExt, TryStreamExt};

use super::{Error, Pipeline};
use crate::{
    backend::Sample,
    objects::{ObjectRef, ResourceInfo, Resources},
    quantity,
    rules::{self, PodSelection, ResourceRules, UsageQuery, usage_value},
    selector::Selector,
};

/// A usage as Quantities: cpu in cores, memory in bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Usage {
    pub cpu: String,
    pub memory: String,
}

/// A node's usage.
#[derive(Debug, Clone)]
pub struct NodeUsage {
    pub name: String,
    /// Seconds since the epoch: the older of the cpu and memory samples.
    pub timestamp: f64,
    /// The window of the rate behind the cpu value, as a Go duration.
    pub window: String,
    pub usage: Usage,
}

/// A pod's usage, per container.
#[derive(Debug, Clone)]
pub struct PodUsage {
    pub namespace: String,
    pub name: String,
    /// Seconds since the epoch: the oldest sample.
    pub timestamp: f64,
    /// The window of the rate behind the cpu values, as a Go duration.
    pub window: String,
    /// By container name, sorted.
    pub containers: Vec<(String, Usage)>,
}

/// A pod's containers: name → (cpu cores, memory bytes), each if sampled.
type Containers = BTreeMap<String, (Option<f64>, Option<f64>)>;

impl Pipeline {
    /// The usage of the node `name`, or of every node matching `selector`, sorted by name.
    pub async fn node_usage(&self, name: Option<&str>, selector: &Selector) -> Result<Vec<NodeUsage>, Error> {
        let rules = self.resource_rules()?;
        nodes(self, &rules, name, selector).await
    }

    /// The usage of the pod `name`, or of every pod matching `selector`, in `namespace` or all.
    pub async fn pod_usage(
        &self,
        namespace: Option<&str>,
        name: Option<&str>,
        selector: &Selector,
    ) -> Result<Vec<PodUsage>, Error> {
        let rules = self.resource_rules()?;
        pods(self, &rules, namespace, name, selector).await
    }

    fn resource_rules(&self) -> Result<std::sync::Arc<ResourceRules>, Error> {
        self.rules().resource.clone().ok_or_else(|| {
            Error::NotFound("no resourceRules are configured, so resource metrics are not served".into())
        })
    }
}

/// A resource rule that cannot render its query is a configuration the load checks did not catch.
fn rule_error(err: rules::Error) -> Error {
    Error::Internal(err.to_string())
}

/// Which objects of `resource` exist (all of them when there is no object source).
async fn objects(
    state: &Pipeline,
    resource: &ResourceInfo,
    namespace: Option<&str>,
    selector: &Selector,
) -> Result<Option<Vec<ObjectRef>>, Error> {
    let Some(source) = state.objects.as_ref() else {
        return Ok(None);
    };
    let unavailable = |err: crate::objects::Error| match err {
        crate::objects::Error::Forbidden(_) => Error::NotFound(format!(
            "the server could not find the metrics of {}: {err}",
            resource.group_resource()
        )),
        err => Error::Unavailable(err.to_string()),
    };
    source.ready(resource).await.map_err(unavailable)?;
    source
        .list(resource, namespace, selector)
        .map(Some)
        .map_err(unavailable)
}

async fn run(state: &Pipeline, query: &UsageQuery) -> Result<Vec<Sample>, Error> {
    tracing::debug!(promql = %query.promql, "Querying the backend");
    state
        .backend
        .query(&query.promql, SystemTime::now())
        .await
        .map_err(Error::Backend)
}

/// Values by key from a query's samples, as usage.
fn by_key(
    samples: &[Sample],
    key: impl Fn(&Sample) -> Option<(String, String)>,
) -> HashMap<(String, String), (f64, f64)> {
    samples
        .iter()
        .filter_map(|s| key(s).map(|k| (k, (usage_value(s.value), s.timestamp))))
        .collect()
}

/// Cores and bytes as the Quantities metrics-server writes: cpu in milli-units, memory in
/// binary units.
fn usage(cpu: f64, memory: f64) -> Usage {
    Usage {
        cpu: quantity::milli_from_f64(cpu)
            .map(quantity::format_milli)
            .unwrap_or_else(|_| "0".to_owned()),
        memory: quantity::milli_from_f64(memory)
            .map(quantity::format_binary_milli)
            .unwrap_or_else(|_| "0".to_owned()),
    }
}

async fn nodes(
    state: &Pipeline,
    set: &ResourceRules,
    name: Option<&str>,
    selector: &Selector,
) -> Result<Vec<NodeUsage>, Error> {
    let resources = state.resources.load_full();
    let nodes = resources.resolve("nodes");
    let mut names: Option<Vec<String>> = match nodes {
        Some(nodes) => objects(state, nodes, None, selector)
            .await?
            .map(|list| list.into_iter().map(|o| o.name).collect()),
        None => None,
    };
    if let Some(name) = name {
        names = Some(names.map_or_else(
            || vec![name.to_owned()],
            |all| all.into_iter().filter(|n| n == name).collect(),
        ));
    }
    if names.as_ref().is_some_and(Vec::is_empty) {
        return Ok(Vec::new());
    }
    let cpu_query = set
        .cpu
        .node_query(names.as_deref(), &resources)
        .map_err(rule_error)?;
    let memory_query = set
        .memory
        .node_query(names.as_deref(), &resources)
        .map_err(rule_error)?;
    let (cpu, memory) = tokio::join!(run(state, &cpu_query), run(state, &memory_query));
    let node = |query: &UsageQuery, s: &Sample| {
        s.labels
            .get(&query.object_label)
            .map(|n| (n.to_owned(), String::new()))
    };
    let cpu = by_key(&cpu?, |s| node(&cpu_query, s));
    let memory = by_key(&memory?, |s| node(&memory_query, s));
    let window = crate::duration::format_go(set.window);
    let mut items: Vec<NodeUsage> = cpu
        .iter()
        .filter_map(|(key, (cpu, cpu_time))| {
            let (memory, memory_time) = memory.get(key)?;
            Some(NodeUsage {
                name: key.0.clone(),
                timestamp: cpu_time.min(*memory_time),
                window: window.clone(),
                usage: usage(*cpu, *memory),
            })
        })
        .collect();
    items.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(items)
}

async fn pods(
    state: &Pipeline,
    set: &ResourceRules,
    namespace: Option<&str>,
    name: Option<&str>,
    selector: &Selector,
) -> Result<Vec<PodUsage>, Error> {
    let resources = state.resources.load_full();
    let pods_resource = resources
        .resolve("pods")
        .cloned()
        .ok_or_else(|| Error::Internal("pods are not a known resource".into()))?;
    let mut listed = objects(state, &pods_resource, namespace, selector).await?;
    if let (Some(name), Some(list)) = (name, listed.as_mut()) {
        list.retain(|o| o.name == name);
    }
    // Without an object source, a named pod is asked for directly; otherwise every pod with samples.
    let wanted: Option<Vec<ObjectRef>> = match (listed, name) {
        (Some(list), _) => Some(list),
        (None, Some(name)) => Some(vec![ObjectRef {
            namespace: namespace.map(str::to_owned),
            name: name.to_owned(),
        }]),
        (None, None) => None,
    };
    if wanted.as_ref().is_some_and(Vec::is_empty) {
        return Ok(Vec::new());
    }
    let per_pod = container_usage(state, set, &resources, namespace, wanted.as_deref()).await?;
    let wanted_keys: Option<Vec<(String, String)>> = wanted.map(|list| {
        list.into_iter()
            .map(|o| (o.namespace.unwrap_or_default(), o.name))
            .collect()
    });
    let window = crate::duration::format_go(set.window);
    let items = per_pod
        .into_iter()
        .filter(|(key, _)| {
            wanted_keys
                .as_ref()
                .is_none_or(|keys| keys.iter().any(|k| k == key))
        })
        // A pod needs both a cpu and a memory sample; a container with only one reports 0 for the other.
        .filter(|(_, (containers, _))| {
            containers.values().any(|(cpu, _)| cpu.is_some())
                && containers.values().any(|(_, memory)| memory.is_some())
        })
        .map(|((namespace, name), (containers, earliest))| PodUsage {
            namespace,
            name,
            timestamp: earliest,
            window: window.clone(),
            containers: containers
                .into_iter()
                .map(|(name, (cpu, memory))| (name, usage(cpu.unwrap_or(0.0), memory.unwrap_or(0.0))))
                .collect(),
        })
        .collect();
    Ok(items)
}

/// How many namespaces' container queries run at once for a cluster-wide pod list.
const NAMESPACE_QUERIES: usize = 8;

/// Per pod (namespace, name): container → (cpu, memory), and the earliest sample time.
type PerPod = BTreeMap<(String, String), (Containers, f64)>;

/// The container usage of the wanted pods (every pod with samples when None). As in
/// prometheus-adapter, each namespace is queried on its own, grouped by pod and container.
async fn container_usage(
    state: &Pipeline,
    set: &ResourceRules,
    resources: &Resources,
    namespace: Option<&str>,
    wanted: Option<&[ObjectRef]>,
) -> Result<PerPod, Error> {
    // Owned, so that the stream's future does not borrow from this frame (which a Send future
    // with higher-ranked lifetimes cannot express).
    let mut by_namespace: BTreeMap<Option<String>, Vec<String>> = BTreeMap::new();
    for pod in wanted.unwrap_or_default() {
        let pod_namespace = namespace.or(pod.namespace.as_deref()).map(str::to_owned);
        by_namespace
            .entry(pod_namespace)
            .or_default()
            .push(pod.name.clone());
    }
    let selections: Vec<(Option<String>, Option<Vec<String>>)> = match wanted {
        Some(_) => by_namespace
            .into_iter()
            .map(|(namespace, mut names)| {
                names.sort();
                names.dedup();
                (namespace, Some(names))
            })
            .collect(),
        None => vec![(namespace.map(str::to_owned), None)],
    };
    let results: Vec<PerPod> = futures::stream::iter(selections)
        .map(|(namespace, names)| async move {
            let pods = PodSelection {
                namespace: namespace.as_deref(),
                names: names.as_deref(),
            };
            namespace_usage(state, set, resources, pods).await
        })
        .buffer_unordered(NAMESPACE_QUERIES)
        .try_collect()
        .await?;
    Ok(results.into_iter().flatten().collect())
}

/// The cpu and memory queries for one selection of pods, their samples merged per container.
async fn namespace_usage(
    state: &Pipeline,
    set: &ResourceRules,
    resources: &Resources,
    pods: PodSelection<'_>,
) -> Result<PerPod, Error> {
    let cpu_query = set.cpu.container_query(pods, resources).map_err(rule_error)?;
    let memory_query = set.memory.container_query(pods, resources).map_err(rule_error)?;
    let (cpu, memory) = tokio::join!(run(state, &cpu_query), run(state, &memory_query));
    let (cpu, memory) = (cpu?, memory?);
    let mut per_pod = PerPod::new();
    let set_cpu = |slot: &mut (Option<f64>, Option<f64>), value| slot.0 = Some(value);
    let set_memory = |slot: &mut (Option<f64>, Option<f64>), value| slot.1 = Some(value);
    for (samples, query, container_label, store) in [
        (
            &cpu,
            &cpu_query,
            &set.cpu.container_label,
            &set_cpu as &dyn Fn(&mut _, f64),
        ),
        (&memory, &memory_query, &set.memory.container_label, &set_memory),
    ] {
        for sample in samples {
            let sample_namespace = match &query.namespace_label {
                Some(label) => sample.labels.get(label),
                None => pods.namespace,
            };
            let (Some(sample_namespace), Some(pod)) =
                (sample_namespace, sample.labels.get(&query.object_label))
            else {
                continue;
            };
            let container = sample.labels.get(container_label).unwrap_or_default().to_owned();
            let key = (sample_namespace.to_owned(), pod.to_owned());
            let entry = per_pod.entry(key).or_insert_with(|| (BTreeMap::new(), f64::MAX));
            entry.1 = entry.1.min(sample.timestamp);
            store(entry.0.entry(container).or_default(), usage_value(sample.value));
        }
    }
    Ok(per_pod)
}
