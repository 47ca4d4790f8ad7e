//! Objects from the cluster: metadata-only watches with a slim local cache per resource (never a
//! LIST per request), and resource names from API discovery, refreshed when an unknown one is asked for.
//!
//! A resource RBAC does not let the adapter list and watch is "forbidden": its watch stops at the
//! API server's 403 and looks again every [`ACCESS_RECHECK`] (so a later grant works without a
//! restart), requests for it fail at once naming the permission, and it does not hold up readiness.
//!
//! The watch is kube-rs' `watcher` (relist, resume, backoff) on `Api<PartialObjectMeta<_>>`
//! (metadata-only requests). The cache is ours, not kube's reflector `Store`, for three reasons:
//! - memory: the `Store` keys each object by an `ObjectRef` (name, namespace, and empty resource
//!   version and UID slots) and hands out only values (`state_filter`, `get`), so the value must
//!   repeat name and namespace, behind one more `Arc` allocation. Measured with a counting
//!   allocator on 10,000 pods (5 labels each): 970 bytes per object in `Store<Slim>` against
//!   800 in this map, +21% (commit f5831e8 has that version; it passed the cluster tests);
//! - a 403: `reflector()` owns its writer and the watcher retries a refused list with backoff
//!   forever; we stop at the 403, empty the cache, and look again every [`ACCESS_RECHECK`];
//! - readiness: `Store::wait_until_ready` fires once, cannot say "refused", and has no
//!   synchronous query, which `/readyz` and `forbidden()` need; [`CacheState`] says all three.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use futures::{StreamExt, future::BoxFuture};
use indexmap::IndexMap;
use kube::{
    Api, Client,
    api::{ApiResource, DynamicObject, PartialObjectMeta},
    runtime::{WatchStreamExt, watcher},
};
use tokio::{sync::watch, task::JoinHandle};

use super::{
    Error, ObjectRef, ObjectSource, ResourceInfo, Result, SharedResources,
    access::{AccessReviews, Forbidden},
    discovery::{ApiDiscovery, DiscoveryHealth},
    index::{Id, LabelIndex},
};
use crate::selector::Selector;

/// How long a request waits for a cache that was just started to finish its first list.
const SYNC_WAIT: Duration = Duration::from_secs(10);
/// How often a forbidden watch tries again, and how long a SelfSubjectAccessReview's answer stands.
pub const ACCESS_RECHECK: Duration = Duration::from_secs(180);

/// What is kept of an object: only what label selection needs.
#[derive(Debug, Clone)]
pub(super) struct Slim {
    pub(super) labels: BTreeMap<String, String>,
    /// Being deleted (deletionTimestamp set): no longer a target.
    pub(super) deleting: bool,
}

/// Where a cache's watch stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CacheState {
    /// Its first list has not finished.
    Syncing,
    /// Listed; objects are current.
    Synced,
    /// The API server refused to list or watch it (403); no objects until a recheck succeeds.
    Forbidden,
}

/// One resource's objects, kept current by a watch.
struct Cache {
    objects: RwLock<ObjectMap>,
    state: watch::Sender<CacheState>,
}

impl Cache {
    fn new() -> Self {
        Self {
            objects: RwLock::new(ObjectMap::default()),
            state: watch::Sender::new(CacheState::Syncing),
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

/// One resource's objects, numbered by their position in the map (an `IndexMap`, which stores
/// each key once) and indexed by namespace and labels. Kept current event by event: an update
/// re-indexes one object, a delete moves the last object into the freed number.
#[derive(Debug, Default)]
pub(super) struct ObjectMap {
    objects: IndexMap<ObjectRef, Slim>,
    index: LabelIndex,
}

impl ObjectMap {
    pub(super) fn insert(&mut self, key: ObjectRef, slim: Slim) {
        if let Some((position, _, old)) = self.objects.get_full_mut(&key) {
            let Ok(id) = Id::try_from(position) else {
                return;
            };
            if old.labels != slim.labels {
                self.index.remove(id, key.namespace.as_deref(), &old.labels);
                self.index.insert(id, key.namespace.as_deref(), &slim.labels);
            }
            *old = slim;
            return;
        }
        let Ok(id) = Id::try_from(self.objects.len()) else {
            tracing::warn!(object = ?key, "Too many objects of one resource to index; ignoring this one");
            return;
        };
        self.index.insert(id, key.namespace.as_deref(), &slim.labels);
        self.objects.insert(key, slim);
    }

    pub(super) fn remove(&mut self, key: &ObjectRef) {
        let Some((position, key, slim)) = self.objects.swap_remove_full(key) else {
            return;
        };
        let (Ok(id), Ok(last)) = (Id::try_from(position), Id::try_from(self.objects.len())) else {
            return;
        };
        self.index.remove(id, key.namespace.as_deref(), &slim.labels);
        // `swap_remove` moved the last object (number `last`) into the freed position.
        if let Some((moved, moved_slim)) = self.objects.get_index(position) {
            self.index
                .remove(last, moved.namespace.as_deref(), &moved_slim.labels);
            self.index
                .insert(id, moved.namespace.as_deref(), &moved_slim.labels);
        }
    }

    pub(super) fn get(&self, key: &ObjectRef) -> Option<&Slim> {
        self.objects.get(key)
    }

    fn len(&self) -> usize {
        self.objects.len()
    }

    /// How many objects a list in `namespace` with `selector` looks at.
    #[cfg(test)]
    pub(super) fn candidates_checked(&self, namespace: Option<&str>, selector: &Selector) -> usize {
        self.index
            .candidates(namespace, selector, self.len())
            .ids()
            .count()
    }

    /// The index's entries by object, to compare with another map's.
    #[cfg(test)]
    pub(super) fn index_entries(&self) -> Vec<(String, ObjectRef)> {
        self.index.entries(|id| {
            usize::try_from(id)
                .ok()
                .and_then(|id| self.objects.get_index(id))
                .map(|(key, _)| key.clone())
                .unwrap_or_else(|| ObjectRef {
                    namespace: Some("<dangling id>".into()),
                    name: id.to_string(),
                })
        })
    }
}

/// The objects of `objects` in `namespace` (every namespace when None) whose labels match
/// `selector`, sorted. The one place a list is answered: only the index's candidates are checked.
pub(super) fn select(objects: &ObjectMap, namespace: Option<&str>, selector: &Selector) -> Vec<ObjectRef> {
    let mut refs: Vec<ObjectRef> = objects
        .index
        .candidates(namespace, selector, objects.len())
        .ids()
        .filter_map(|id| objects.objects.get_index(usize::try_from(id).ok()?))
        .filter(|(key, slim)| {
            !slim.deleting
                && (namespace.is_none() || key.namespace.as_deref() == namespace)
                && selector.matches(&slim.labels)
        })
        .map(|(key, _)| key.clone())
        .collect();
    refs.sort();
    refs
}

/// Objects of the cluster, behind the [`ObjectSource`] trait.
pub struct KubeObjects {
    client: Client,
    discovery: Arc<ApiDiscovery>,
    caches: Mutex<HashMap<String, Arc<Cache>>>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    reviews: AccessReviews,
    /// [`ACCESS_RECHECK`] in milliseconds, shared with the watch tasks.
    recheck_ms: Arc<AtomicU64>,
}

impl KubeObjects {
    /// Starts watching pods, services and namespaces (core resources need no discovery) and keeps
    /// `resources` in step with API discovery in the background, refreshed every
    /// `discovery_interval`. Nothing here waits for the API server: readiness is
    /// [`KubeObjects::unsynced`] and [`KubeObjects::discovery_health`]. SelfSubjectAccessReviews
    /// share the discovery client: they are few (one per resource per recheck), and queued behind
    /// the watches' `--client-qps` the first answer for a forbidden resource took seconds.
    pub fn start(
        client: Client,
        discovery_client: Client,
        resources: Arc<SharedResources>,
        discovery_interval: Duration,
    ) -> Arc<Self> {
        let reviews = AccessReviews::new(discovery_client.clone());
        let discovery = ApiDiscovery::new(discovery_client, resources.clone());
        let objects = Arc::new(Self {
            reviews,
            recheck_ms: Arc::new(AtomicU64::new(millis(ACCESS_RECHECK))),
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

    /// Sets how often forbidden resources are looked at again ([`ACCESS_RECHECK`] by default).
    pub fn set_access_recheck(&self, interval: Duration) {
        self.recheck_ms.store(millis(interval), Ordering::Relaxed);
    }

    fn access_recheck(&self) -> Duration {
        Duration::from_millis(self.recheck_ms.load(Ordering::Relaxed))
    }

    /// The resources whose watch has not finished its first list yet (sorted); empty when every
    /// watch has listed or was refused (a forbidden resource is reported, not waited for).
    pub fn unsynced(&self) -> Vec<String> {
        let Ok(caches) = self.caches.lock() else {
            return vec!["(object caches unavailable)".into()];
        };
        let mut waiting: Vec<String> = caches
            .iter()
            .filter(|(_, cache)| *cache.state.borrow() == CacheState::Syncing)
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
        let task = tokio::spawn(run_cache(
            Watch { api, config },
            cache.clone(),
            resource.group_resource(),
            self.recheck_ms.clone(),
        ));
        if let Ok(mut tasks) = self.tasks.lock() {
            tasks.push(task);
        }
        cache
    }
}

impl KubeObjects {
    /// Runs `f` over the synced cache of `resource`.
    fn read<T>(&self, resource: &ResourceInfo, f: impl FnOnce(&ObjectMap) -> T) -> Result<T> {
        let cache = self.cache(resource);
        let not_synced = || Error::NotSynced {
            resource: resource.group_resource(),
        };
        match *cache.state.borrow() {
            CacheState::Synced => {}
            CacheState::Syncing => return Err(not_synced()),
            CacheState::Forbidden => return Err(Error::Forbidden(Forbidden::of(resource))),
        }
        let objects = cache.objects.read().map_err(|_| not_synced())?;
        Ok(f(&objects))
    }

    /// The state of the cache of `resource`, without starting one.
    fn cache_state(&self, resource: &ResourceInfo) -> Option<CacheState> {
        let caches = self.caches.lock().ok()?;
        let cache = caches.get(&resource.group_resource())?;
        Some(*cache.state.borrow())
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

impl Drop for KubeObjects {
    fn drop(&mut self) {
        if let Ok(tasks) = self.tasks.lock() {
            tasks.iter().for_each(JoinHandle::abort);
        }
    }
}

/// What one cache watches.
struct Watch {
    api: Api<PartialObjectMeta<DynamicObject>>,
    config: watcher::Config,
}

/// Keeps one resource's cache current. A 403 stops the watch (kube's backoff would retry it every
/// few seconds, forever) and marks the resource forbidden, logged once; it is tried again every
/// `recheck_ms`, and a successful list makes it an ordinary cache again.
async fn run_cache(watch: Watch, cache: Arc<Cache>, resource: String, recheck_ms: Arc<AtomicU64>) {
    loop {
        let Some(refusal) = follow(&watch, &cache, &resource).await else {
            return;
        };
        let recheck = Duration::from_millis(recheck_ms.load(Ordering::Relaxed));
        if cache.state.send_replace(CacheState::Forbidden) == CacheState::Forbidden {
            tracing::debug!(%resource, error = %refusal, "Still not allowed to list and watch; trying again later");
        } else {
            if let Ok(mut objects) = cache.objects.write() {
                *objects = ObjectMap::default();
            }
            tracing::warn!(
                %resource,
                error = %refusal,
                recheck_seconds = recheck.as_secs(),
                "Not allowed to list and watch this resource: its metrics are not served; grant list and watch in the ClusterRole custom-metrics-resource-reader"
            );
        }
        tokio::time::sleep(recheck).await;
    }
}

/// Follows the watch: the first list fills a fresh map that replaces the old one (so objects
/// deleted while disconnected disappear), later events update it in place. Returns the API
/// server's message when it refuses the list or the watch (403).
async fn follow(watch: &Watch, cache: &Cache, resource: &str) -> Option<String> {
    let mut stream = std::pin::pin!(watcher(watch.api.clone(), watch.config.clone()).default_backoff());
    let mut initial: Option<ObjectMap> = None;
    while let Some(event) = stream.next().await {
        match event {
            Ok(watcher::Event::Init) => initial = Some(ObjectMap::default()),
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
                if cache.state.send_replace(CacheState::Synced) == CacheState::Forbidden {
                    tracing::info!(%resource, "Now allowed to list and watch this resource: its metrics are served");
                }
            }
            Ok(watcher::Event::Apply(object)) => cache.apply(object),
            Ok(watcher::Event::Delete(object)) => cache.delete(object),
            Err(err) => match refusal(&err) {
                Some(message) => return Some(message),
                None => tracing::warn!(%resource, error = %err, "Watching objects failed; retrying"),
            },
        }
    }
    None
}

/// The API server's message when `err` is its 403 Forbidden.
fn refusal(err: &watcher::Error) -> Option<String> {
    let status = match err {
        watcher::Error::InitialListFailed(kube::Error::Api(status))
        | watcher::Error::WatchStartFailed(kube::Error::Api(status))
        | watcher::Error::WatchFailed(kube::Error::Api(status))
        | watcher::Error::WatchError(status) => status,
        _ => return None,
    };
    (status.code == 403).then(|| status.message.clone())
}

impl ObjectSource for KubeObjects {
    fn list(
        &self,
        resource: &ResourceInfo,
        namespace: Option<&str>,
        selector: &Selector,
    ) -> Result<Vec<ObjectRef>> {
        self.read(resource, |objects| select(objects, namespace, selector))
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
            let mut state = cache.state.subscribe();
            let settled = tokio::time::timeout(SYNC_WAIT, state.wait_for(|s| *s != CacheState::Syncing))
                .await
                .ok()
                .and_then(|settled| settled.ok().map(|state| *state));
            match settled {
                Some(CacheState::Synced) => Ok(()),
                Some(CacheState::Forbidden) => Err(Error::Forbidden(Forbidden::of(resource))),
                _ => Err(Error::NotSynced {
                    resource: resource.group_resource(),
                }),
            }
        })
    }

    /// A watch's own outcome decides where one has settled (the list either worked or was
    /// refused); elsewhere a SelfSubjectAccessReview of list and watch does, cached per resource for
    /// the recheck interval, so advertising a resource starts no watch. An unanswered review
    /// counts as allowed: requests then find out from the watch.
    fn may_serve<'a>(&'a self, resource: &'a ResourceInfo) -> BoxFuture<'a, bool> {
        Box::pin(async move {
            match self.cache_state(resource) {
                Some(CacheState::Synced) => true,
                Some(CacheState::Forbidden) => false,
                Some(CacheState::Syncing) | None => self
                    .reviews
                    .allowed(resource, self.access_recheck())
                    .await
                    .unwrap_or(true),
            }
        })
    }

    fn forbidden(&self) -> Vec<String> {
        let mut forbidden = BTreeSet::new();
        let mut synced = BTreeSet::new();
        if let Ok(caches) = self.caches.lock() {
            for (key, cache) in caches.iter() {
                match *cache.state.borrow() {
                    CacheState::Forbidden => forbidden.insert(key.clone()),
                    CacheState::Synced => synced.insert(key.clone()),
                    CacheState::Syncing => false,
                };
            }
        }
        forbidden.extend(
            self.reviews
                .denied()
                .into_iter()
                .filter(|key| !synced.contains(key)),
        );
        forbidden.into_iter().collect()
    }

    fn refresh_resources(&self) -> BoxFuture<'_, bool> {
        Box::pin(self.discovery.refresh_on_demand())
    }
}
