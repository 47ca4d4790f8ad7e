//! Objects from the cluster: metadata-only watches with a slim local cache per resource (never a
//! LIST per request), and resource names from API discovery, refreshed when an unknown one is asked for.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex, RwLock},
    time::{Duration, Instant},
};

use arc_swap::ArcSwap;
use futures::{StreamExt, future::BoxFuture};
use kube::{
    Api, Client,
    api::{ApiResource, DynamicObject, PartialObjectMeta},
    runtime::{WatchStreamExt, watcher},
};
use tokio::{sync::watch, task::JoinHandle};

use super::{Error, ObjectRef, ObjectSource, ResourceInfo, Resources, Result};
use crate::selector::Selector;

/// How long a request waits for a cache that was just started to finish its first list.
const SYNC_WAIT: Duration = Duration::from_secs(10);
/// How long one refresh of API discovery may take.
const DISCOVERY_TIMEOUT: Duration = Duration::from_secs(30);
/// API discovery is refreshed at most this often on requests for unknown resources.
const DISCOVERY_MIN_INTERVAL: Duration = Duration::from_secs(5);

/// What is kept of an object: only what label selection needs.
#[derive(Debug, Clone)]
struct Slim {
    labels: BTreeMap<String, String>,
    /// Being deleted (deletionTimestamp set): no longer a target.
    deleting: bool,
}

/// One resource's objects, kept current by a watch.
struct Cache {
    objects: RwLock<HashMap<ObjectRef, Slim>>,
    synced: watch::Sender<bool>,
}

impl Cache {
    fn new() -> Self {
        Self {
            objects: RwLock::new(HashMap::new()),
            synced: watch::Sender::new(false),
        }
    }

    fn apply(&self, object: PartialObjectMeta<DynamicObject>) {
        let (key, slim) = slim(object);
        if let Ok(mut objects) = self.objects.write() {
            objects.insert(key, slim);
        }
    }

    fn delete(&self, object: PartialObjectMeta<DynamicObject>) {
        let (key, _) = slim(object);
        if let Ok(mut objects) = self.objects.write() {
            objects.remove(&key);
        }
    }
}

fn slim(object: PartialObjectMeta<DynamicObject>) -> (ObjectRef, Slim) {
    let meta = object.metadata;
    let key = ObjectRef {
        namespace: meta.namespace,
        name: meta.name.unwrap_or_default(),
    };
    (
        key,
        Slim {
            labels: meta.labels.unwrap_or_default(),
            deleting: meta.deletion_timestamp.is_some(),
        },
    )
}

/// Objects of the cluster, behind the [`ObjectSource`] trait.
pub struct KubeObjects {
    client: Client,
    resources: Arc<ArcSwap<Resources>>,
    caches: Mutex<HashMap<String, Arc<Cache>>>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    last_discovery: Mutex<Option<Instant>>,
}

impl KubeObjects {
    /// Discovers the cluster's resources into `resources` and starts watching pods, services and
    /// namespaces. Readiness: [`KubeObjects::synced`].
    pub async fn start(client: Client, resources: Arc<ArcSwap<Resources>>) -> Result<Arc<Self>> {
        let objects = Arc::new(Self {
            client,
            resources,
            caches: Mutex::default(),
            tasks: Mutex::default(),
            last_discovery: Mutex::default(),
        });
        objects.refresh_discovery().await?;
        let current = objects.resources.load_full();
        for name in ["pods", "services", "namespaces"] {
            if let Some(resource) = current.resolve(name) {
                objects.cache(resource);
            }
        }
        Ok(objects)
    }

    /// Whether every started watch has finished its first list.
    pub fn synced(&self) -> bool {
        self.caches
            .lock()
            .map(|caches| caches.values().all(|c| *c.synced.borrow()))
            .unwrap_or(false)
    }

    /// Reads API discovery (the legacy documents: `/api/v1`, `/apis/<group>/<preferred version>`),
    /// within [`DISCOVERY_TIMEOUT`].
    pub async fn refresh_discovery(&self) -> Result<()> {
        tokio::time::timeout(DISCOVERY_TIMEOUT, self.read_discovery())
            .await
            .map_err(|_| Error::Discovery(format!("no answer within {DISCOVERY_TIMEOUT:?}")))?
    }

    async fn read_discovery(&self) -> Result<()> {
        let discovery_error = |err: kube::Error| Error::Discovery(err.to_string());
        let mut list = Vec::new();
        let core = self
            .client
            .list_core_api_resources("v1")
            .await
            .map_err(discovery_error)?;
        list.extend(core.resources.iter().filter_map(|r| info("", "v1", r)));
        let groups = self.client.list_api_groups().await.map_err(discovery_error)?;
        for group in groups.groups {
            let Some(preferred) = group
                .preferred_version
                .or_else(|| group.versions.first().cloned())
            else {
                continue;
            };
            match self
                .client
                .list_api_group_resources(&preferred.group_version)
                .await
            {
                Ok(resources) => list.extend(
                    resources
                        .resources
                        .iter()
                        .filter_map(|r| info(&group.name, &preferred.version, r)),
                ),
                // An unavailable aggregated API must not hide every other group.
                Err(err) => {
                    tracing::debug!(group_version = %preferred.group_version, error = %err, "Skipping a group in discovery")
                }
            }
        }
        tracing::debug!(resources = list.len(), "Refreshed API discovery");
        self.resources.store(Arc::new(Resources::new(list)));
        if let Ok(mut last) = self.last_discovery.lock() {
            *last = Some(Instant::now());
        }
        Ok(())
    }

    /// The cache for `resource`, started on first use.
    fn cache(&self, resource: &ResourceInfo) -> Arc<Cache> {
        let key = resource.group_resource();
        let Ok(mut caches) = self.caches.lock() else {
            return Arc::new(Cache::new());
        };
        if let Some(cache) = caches.get(&key) {
            return cache.clone();
        }
        let cache = Arc::new(Cache::new());
        caches.insert(key, cache.clone());
        let api_resource = ApiResource {
            group: resource.group.clone(),
            version: resource.version.clone(),
            api_version: if resource.group.is_empty() {
                resource.version.clone()
            } else {
                format!("{}/{}", resource.group, resource.version)
            },
            kind: resource.kind.clone(),
            plural: resource.plural.clone(),
        };
        // `Api<PartialObjectMeta<_>>` asks for metadata only: names, namespaces, labels.
        let api: Api<PartialObjectMeta<DynamicObject>> = Api::all_with(self.client.clone(), &api_resource);
        let mut config = watcher::Config::default();
        if resource.group.is_empty() && resource.plural == "pods" {
            // Failed and completed pods are not scale targets; the API server filters them out.
            config = config.fields("status.phase!=Failed,status.phase!=Succeeded");
        }
        let task = tokio::spawn(run_cache(api, config, cache.clone(), resource.group_resource()));
        if let Ok(mut tasks) = self.tasks.lock() {
            tasks.push(task);
        }
        cache
    }
}

impl KubeObjects {
    /// Runs `f` over the synced cache of `resource`.
    fn read<T>(&self, resource: &ResourceInfo, f: impl FnOnce(&HashMap<ObjectRef, Slim>) -> T) -> Result<T> {
        let cache = self.cache(resource);
        let not_synced = || Error::NotSynced {
            resource: resource.group_resource(),
        };
        if !*cache.synced.borrow() {
            return Err(not_synced());
        }
        let objects = cache.objects.read().map_err(|_| not_synced())?;
        Ok(f(&objects))
    }
}

impl Drop for KubeObjects {
    fn drop(&mut self) {
        if let Ok(tasks) = self.tasks.lock() {
            tasks.iter().for_each(JoinHandle::abort);
        }
    }
}

/// Follows one resource's watch: the first list fills a fresh map that replaces the old one
/// (so objects deleted while disconnected disappear), later events update it in place.
async fn run_cache(
    api: Api<PartialObjectMeta<DynamicObject>>,
    config: watcher::Config,
    cache: Arc<Cache>,
    resource: String,
) {
    let mut stream = std::pin::pin!(watcher(api, config).default_backoff());
    let mut initial: Option<HashMap<ObjectRef, Slim>> = None;
    while let Some(event) = stream.next().await {
        match event {
            Ok(watcher::Event::Init) => initial = Some(HashMap::new()),
            Ok(watcher::Event::InitApply(object)) => {
                let (key, slim) = slim(object);
                initial.get_or_insert_default().insert(key, slim);
            }
            Ok(watcher::Event::InitDone) => {
                let objects = initial.take().unwrap_or_default();
                tracing::debug!(%resource, objects = objects.len(), "Object cache synced");
                if let Ok(mut current) = cache.objects.write() {
                    *current = objects;
                }
                cache.synced.send_replace(true);
            }
            Ok(watcher::Event::Apply(object)) => cache.apply(object),
            Ok(watcher::Event::Delete(object)) => cache.delete(object),
            Err(err) => tracing::warn!(%resource, error = %err, "Watching objects failed; retrying"),
        }
    }
}

/// One discovery entry as a [`ResourceInfo`]; subresources (`pods/status`) are skipped.
fn info(
    group: &str,
    version: &str,
    r: &k8s_openapi::apimachinery::pkg::apis::meta::v1::APIResource,
) -> Option<ResourceInfo> {
    if r.name.contains('/') {
        return None;
    }
    // The RESTMapper's singular is the lower-cased kind when discovery leaves it empty.
    let singular = if r.singular_name.is_empty() {
        r.kind.to_ascii_lowercase()
    } else {
        r.singular_name.clone()
    };
    Some(ResourceInfo {
        group: group.to_owned(),
        version: version.to_owned(),
        plural: r.name.clone(),
        singular,
        short_names: r.short_names.clone().unwrap_or_default(),
        kind: r.kind.clone(),
        namespaced: r.namespaced,
    })
}

impl ObjectSource for KubeObjects {
    fn list(
        &self,
        resource: &ResourceInfo,
        namespace: Option<&str>,
        selector: &Selector,
    ) -> Result<Vec<ObjectRef>> {
        let mut refs: Vec<ObjectRef> = self.read(resource, |objects| {
            objects
                .iter()
                .filter(|(key, slim)| {
                    !slim.deleting
                        && (namespace.is_none() || key.namespace.as_deref() == namespace)
                        && selector.matches(&slim.labels)
                })
                .map(|(key, _)| key.clone())
                .collect()
        })?;
        refs.sort();
        Ok(refs)
    }

    fn exists(&self, resource: &ResourceInfo, namespace: Option<&str>, name: &str) -> Result<bool> {
        let key = ObjectRef {
            namespace: namespace.map(str::to_owned),
            name: name.to_owned(),
        };
        self.read(resource, |objects| {
            objects.get(&key).is_some_and(|slim| !slim.deleting)
        })
    }

    fn describe(&self) -> String {
        "cluster's object cache".to_owned()
    }

    fn ready<'a>(&'a self, resource: &'a ResourceInfo) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let cache = self.cache(resource);
            let mut synced = cache.synced.subscribe();
            match tokio::time::timeout(SYNC_WAIT, synced.wait_for(|s| *s)).await {
                Ok(Ok(_)) => Ok(()),
                _ => Err(Error::NotSynced {
                    resource: resource.group_resource(),
                }),
            }
        })
    }

    fn refresh_resources(&self) -> BoxFuture<'_, bool> {
        Box::pin(async move {
            let recent = self
                .last_discovery
                .lock()
                .ok()
                .and_then(|last| *last)
                .is_some_and(|at| at.elapsed() < DISCOVERY_MIN_INTERVAL);
            if recent {
                return false;
            }
            match self.refresh_discovery().await {
                Ok(()) => true,
                Err(err) => {
                    tracing::warn!(error = %err, "Refreshing API discovery failed");
                    false
                }
            }
        })
    }
}
