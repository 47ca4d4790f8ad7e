//! Objects from the cluster: metadata-only watches feeding a kube-rs reflector store per resource
//! (never a LIST per request), and resource names from API discovery, refreshed when an unknown one
//! is asked for.
//!
//! A resource RBAC does not let the adapter list and watch is "forbidden": its watch stops at the
//! API server's 403 and looks again every [`ACCESS_RECHECK`] (so a later grant works without a
//! restart), requests for it fail at once naming the permission, and it does not hold up readiness.
//!
//! kube-rs' reflector [`Store`] holds the objects, and its [`Writer`] does the relist bookkeeping
//! (a relist fills a buffer that replaces the store when it is complete, so objects deleted while
//! disconnected disappear). What stays ours, and why:
//! - the loop around the watcher: kube's `reflector()` takes the writer by value and retries a 403
//!   with backoff forever; we keep the writer, stop at a 403, empty the store, and look again every
//!   [`ACCESS_RECHECK`];
//! - the per-resource state (`Syncing`/`Synced`/`Forbidden`): `Store::wait_until_ready` fires once,
//!   cannot say "refused", and has no synchronous query, which `/readyz` and `forbidden()` need;
//! - the stored type [`Slim`]: a `PartialObjectMeta` keeps annotations and managed fields, which can
//!   be most of an object's memory; `Slim` keeps name, namespace, labels and whether it is being
//!   deleted. The store's key repeats name and namespace, about 100 bytes more per object than our
//!   own map, which the smaller value more than pays for (see `Slim`).

use std::{
    borrow::Cow,
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use futures::{StreamExt, future::BoxFuture};
use kube::{
    Api, Client,
    api::{ApiResource, DynamicObject, PartialObjectMeta},
    runtime::{
        WatchStreamExt,
        reflector::{self, Lookup, Store, store::Writer},
        watcher,
    },
};
use tokio::{sync::watch, task::JoinHandle};

use super::{
    Error, ObjectRef, ObjectSource, ResourceInfo, Result, SharedResources,
    access::{AccessReviews, Forbidden},
    discovery::{ApiDiscovery, DiscoveryHealth},
};
use crate::selector::Selector;

/// How long a request waits for a cache that was just started to finish its first list.
const SYNC_WAIT: Duration = Duration::from_secs(10);
/// How often a forbidden watch tries again, and how long a SelfSubjectAccessReview's answer stands.
pub const ACCESS_RECHECK: Duration = Duration::from_secs(180);

/// What is kept of an object: only what label selection and object references need.
#[derive(Debug, Clone)]
struct Slim {
    name: String,
    namespace: Option<String>,
    labels: BTreeMap<String, String>,
    /// Being deleted (deletionTimestamp set): no longer a target.
    deleting: bool,
}

impl From<PartialObjectMeta<DynamicObject>> for Slim {
    fn from(object: PartialObjectMeta<DynamicObject>) -> Self {
        let meta = object.metadata;
        Self {
            name: meta.name.unwrap_or_default(),
            namespace: meta.namespace,
            labels: meta.labels.unwrap_or_default(),
            deleting: meta.deletion_timestamp.is_some(),
        }
    }
}

/// Lets a reflector store key [`Slim`]s. One store holds one resource, so the type information
/// is empty; resource version and UID are not kept (the store's key ignores them anyway).
impl Lookup for Slim {
    type DynamicType = ();

    fn kind(_: &()) -> Cow<'_, str> {
        Cow::Borrowed("")
    }

    fn group(_: &()) -> Cow<'_, str> {
        Cow::Borrowed("")
    }

    fn version(_: &()) -> Cow<'_, str> {
        Cow::Borrowed("")
    }

    fn plural(_: &()) -> Cow<'_, str> {
        Cow::Borrowed("")
    }

    fn name(&self) -> Option<Cow<'_, str>> {
        Some(Cow::Borrowed(&self.name))
    }

    fn namespace(&self) -> Option<Cow<'_, str>> {
        self.namespace.as_deref().map(Cow::Borrowed)
    }

    fn resource_version(&self) -> Option<Cow<'_, str>> {
        None
    }

    fn uid(&self) -> Option<Cow<'_, str>> {
        None
    }
}

/// A watcher event with its object made [`Slim`] before the store keeps it.
fn slim(event: watcher::Event<PartialObjectMeta<DynamicObject>>) -> watcher::Event<Slim> {
    match event {
        watcher::Event::Apply(object) => watcher::Event::Apply(object.into()),
        watcher::Event::Delete(object) => watcher::Event::Delete(object.into()),
        watcher::Event::Init => watcher::Event::Init,
        watcher::Event::InitApply(object) => watcher::Event::InitApply(object.into()),
        watcher::Event::InitDone => watcher::Event::InitDone,
    }
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
    store: Store<Slim>,
    state: watch::Sender<CacheState>,
}

impl Cache {
    /// A cache and the writer its watch fills it through.
    fn new() -> (Self, Writer<Slim>) {
        let (store, writer) = reflector::store();
        let cache = Self {
            store,
            state: watch::Sender::new(CacheState::Syncing),
        };
        (cache, writer)
    }
}

/// The objects of `store` in `namespace` (every namespace when None) whose labels match
/// `selector`, sorted. The one place a list is answered, so an index can replace the scan.
fn select(store: &Store<Slim>, namespace: Option<&str>, selector: &Selector) -> Vec<ObjectRef> {
    let mut refs: Vec<ObjectRef> = store
        .state_filter(|object| {
            !object.deleting
                && (namespace.is_none() || object.namespace.as_deref() == namespace)
                && selector.matches(&object.labels)
        })
        .iter()
        .map(|object| ObjectRef {
            namespace: object.namespace.clone(),
            name: object.name.clone(),
        })
        .collect();
    refs.sort();
    refs
}

/// Whether `store` holds the named object and it is not being deleted. The store's own `get`
/// also finds a cluster-scoped object under any namespace; asked with a namespace, only an
/// object in that namespace counts.
fn holds(store: &Store<Slim>, namespace: Option<&str>, name: &str) -> bool {
    let key = match namespace {
        Some(namespace) => reflector::ObjectRef::new(name).within(namespace),
        None => reflector::ObjectRef::new(name),
    };
    store
        .get(&key)
        .is_some_and(|object| !object.deleting && object.namespace.as_deref() == namespace)
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
            return Arc::new(Cache::new().0);
        };
        if let Some(cache) = caches.get(&key) {
            return cache.clone();
        }
        let (cache, writer) = Cache::new();
        let cache = Arc::new(cache);
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
            writer,
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
    fn read<T>(&self, resource: &ResourceInfo, f: impl FnOnce(&Store<Slim>) -> T) -> Result<T> {
        let cache = self.cache(resource);
        let not_synced = || Error::NotSynced {
            resource: resource.group_resource(),
        };
        match *cache.state.borrow() {
            CacheState::Synced => {}
            CacheState::Syncing => return Err(not_synced()),
            CacheState::Forbidden => return Err(Error::Forbidden(Forbidden::of(resource))),
        }
        Ok(f(&cache.store))
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
async fn run_cache(
    watch: Watch,
    mut writer: Writer<Slim>,
    cache: Arc<Cache>,
    resource: String,
    recheck_ms: Arc<AtomicU64>,
) {
    loop {
        let Some(refusal) = follow(&watch, &mut writer, &cache, &resource).await else {
            return;
        };
        let recheck = Duration::from_millis(recheck_ms.load(Ordering::Relaxed));
        if cache.state.send_replace(CacheState::Forbidden) == CacheState::Forbidden {
            tracing::debug!(%resource, error = %refusal, "Still not allowed to list and watch; trying again later");
        } else {
            // An empty relist empties the store: a forbidden resource has no objects.
            writer.apply_watcher_event(&watcher::Event::Init);
            writer.apply_watcher_event(&watcher::Event::InitDone);
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

/// Follows the watch into the store (what kube's `reflector()` does, keeping the writer for the
/// next attempt) and marks the cache synced when a list completes. Returns the API server's
/// message when it refuses the list or the watch (403).
async fn follow(watch: &Watch, writer: &mut Writer<Slim>, cache: &Cache, resource: &str) -> Option<String> {
    let mut stream = std::pin::pin!(watcher(watch.api.clone(), watch.config.clone()).default_backoff());
    while let Some(event) = stream.next().await {
        match event {
            Ok(event) => {
                let event = slim(event);
                writer.apply_watcher_event(&event);
                if matches!(event, watcher::Event::InitDone) {
                    tracing::debug!(%resource, objects = cache.store.len(), "Object cache synced");
                    if cache.state.send_replace(CacheState::Synced) == CacheState::Forbidden {
                        tracing::info!(%resource, "Now allowed to list and watch this resource: its metrics are served");
                    }
                }
            }
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
        self.read(resource, |store| select(store, namespace, selector))
    }

    fn exists(&self, resource: &ResourceInfo, namespace: Option<&str>, name: &str) -> Result<bool> {
        self.read(resource, |store| holds(store, namespace, name))
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
