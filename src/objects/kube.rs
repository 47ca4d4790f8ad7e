//! Objects from the cluster: metadata-only watches with a slim local cache per resource (never a
//! LIST per request), and resource names from API discovery, refreshed when an unknown one is asked for.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex, RwLock},
    time::Duration,
};

use futures::{StreamExt, future::BoxFuture};
use kube::{
    Api, Client,
    api::{ApiResource, DynamicObject, PartialObjectMeta},
    runtime::{WatchStreamExt, watcher},
};
use tokio::{sync::watch, task::JoinHandle};

use super::{
    Error, ObjectRef, ObjectSource, ResourceInfo, Result, SharedResources,
    discovery::{ApiDiscovery, DiscoveryHealth},
};
use crate::selector::Selector;

/// How long a request waits for a cache that was just started to finish its first list.
const SYNC_WAIT: Duration = Duration::from_secs(10);

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
    discovery: Arc<ApiDiscovery>,
    caches: Mutex<HashMap<String, Arc<Cache>>>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl KubeObjects {
    /// Starts watching pods, services and namespaces (core resources need no discovery) and keeps
    /// `resources` in step with API discovery in the background, refreshed every
    /// `discovery_interval`. Nothing here waits for the API server: readiness is
    /// [`KubeObjects::synced`] and [`KubeObjects::discovery_health`].
    pub fn start(
        client: Client,
        discovery_client: Client,
        resources: Arc<SharedResources>,
        discovery_interval: Duration,
    ) -> Arc<Self> {
        let discovery = ApiDiscovery::new(discovery_client, resources.clone());
        let objects = Arc::new(Self {
            client,
            discovery: discovery.clone(),
            caches: Mutex::default(),
            tasks: Mutex::default(),
        });
        let current = resources.load_full();
        for name in ["pods", "services", "namespaces"] {
            if let Some(resource) = current.resolve(name) {
                objects.cache(resource);
            }
        }
        let task = tokio::spawn(discovery.run(discovery_interval));
        if let Ok(mut tasks) = objects.tasks.lock() {
            tasks.push(task);
        }
        objects
    }

    /// The resources whose watch has not finished its first list yet (sorted); empty when synced.
    pub fn unsynced(&self) -> Vec<String> {
        let Ok(caches) = self.caches.lock() else {
            return vec!["(object caches unavailable)".into()];
        };
        let mut waiting: Vec<String> = caches
            .iter()
            .filter(|(_, cache)| !*cache.synced.borrow())
            .map(|(resource, _)| resource.clone())
            .collect();
        waiting.sort();
        waiting
    }

    /// How API discovery stands (for readiness and `/metrics`).
    pub fn discovery_health(&self) -> DiscoveryHealth {
        self.discovery.health()
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
        Box::pin(self.discovery.refresh_on_demand())
    }
}
