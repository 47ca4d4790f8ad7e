//! API discovery: which resources the cluster serves, so request paths (`pods`, `deploy`,
//! `widgets.example.com`) and series labels resolve to resources.
//!
//! A real cluster serves hundreds of groups, some of them aggregated APIs whose backends may be
//! down (including this adapter's own four while it has no ready replica). Discovery therefore
//! never depends on any one group: it asks for the aggregated document first (two requests for the
//! whole cluster), falls back to the legacy per-group documents fetched concurrently, skips and
//! names the groups that fail, and never retries a failed group within one refresh.
//!
//! From kube-rs this uses the aggregated discovery types and Accept header
//! (`kube::core::discovery::v2`) and the client's legacy calls (`list_core_api_resources`,
//! `list_api_groups`, `list_api_group_resources`). It does not use `kube::discovery`, because:
//! - its `ApiResource`/`ApiCapabilities` keep neither singular nor short names, which request paths
//!   (`pod`, `po`) and series labels (`pod`, `namespace`) resolve by, so neither `Discovery` nor
//!   `oneshot::pinned_group` nor its document parsing can fill a [`ResourceInfo`];
//! - `Discovery::run` fetches the groups one after another and returns the first group's error
//!   (`?`), so one unavailable aggregated API fails discovery of the whole cluster; we fetch
//!   [`CONCURRENT_GROUPS`] at once and skip and name the groups that fail;
//! - `Discovery::run_aggregated` (and `Client::list_api_groups_aggregated`) decode the answer
//!   straight into `APIGroupDiscoveryList`, whose `items` default to empty, so a server without
//!   aggregated discovery (its legacy `APIGroupList` is the Accept header's last choice) reads as a
//!   cluster with no groups; we check the `kind` and fall back to the legacy documents. A group
//!   with no versions fails the whole run, and `Stale` groups are not reported;
//! - neither bounds a request: the client has no read timeout by default, so a hung aggregated API
//!   would hold discovery; every request here has [`REQUEST_TIMEOUT`].

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures::{StreamExt, stream};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::APIResource;
use kube::{
    Client,
    core::discovery::v2::{ACCEPT_AGGREGATED_DISCOVERY_V2, APIGroupDiscoveryList, APIResourceDiscovery},
};
use tokio::sync::watch;

use super::{ResourceInfo, Resources, SharedResources};

/// How long one discovery request may take; the aggregator gives aggregated APIs the same.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How many legacy group documents are fetched at once.
const CONCURRENT_GROUPS: usize = 32;
/// Refreshes asked for by requests (an unknown resource) start at most this often, failed or not.
const ON_DEMAND_MIN_INTERVAL: Duration = Duration::from_secs(5);
/// How long a request waits for an on-demand refresh before answering with what is known.
const ON_DEMAND_WAIT: Duration = Duration::from_secs(2);
/// Retries of a failed refresh start here and double up to [`RETRY_MAX`].
const RETRY_MIN: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{what} failed: {source}")]
    Request {
        what: &'static str,
        #[source]
        source: kube::Error,
    },
    #[error("{0} did not answer within {REQUEST_TIMEOUT:?}")]
    Timeout(&'static str),
    #[error("the aggregated discovery document could not be read: {0}")]
    Decode(#[from] serde_json::Error),
}

/// What one refresh found: the resources, and the group/versions it had to skip (with why).
#[derive(Debug, Default)]
struct Found {
    resources: Vec<ResourceInfo>,
    unavailable: BTreeMap<String, String>,
}

/// The outcome of the latest refresh, for readiness and `/metrics`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiscoveryHealth {
    /// No refresh has succeeded yet; the reason of the last failure.
    NotYet(String),
    /// The last refresh succeeded; these group/versions were skipped.
    Ready { unavailable: Vec<String> },
}

#[derive(Default)]
struct State {
    last_attempt: Option<Instant>,
    in_flight: bool,
    succeeded: bool,
    last_error: Option<String>,
    unavailable: BTreeMap<String, String>,
}

/// Keeps [`SharedResources`] in step with the cluster's API discovery.
pub struct ApiDiscovery {
    /// A client without kube-rs' retry layer (it retries every 503 of an unavailable group) and
    /// without the watches' rate limit (discovery of 200 groups must not take a minute).
    client: Client,
    resources: Arc<SharedResources>,
    state: Mutex<State>,
    /// Counts finished refreshes, so on-demand callers can wait for the one in flight.
    finished: watch::Sender<u64>,
}

impl ApiDiscovery {
    pub fn new(client: Client, resources: Arc<SharedResources>) -> Arc<Self> {
        Arc::new(Self {
            client,
            resources,
            state: Mutex::default(),
            finished: watch::Sender::new(0),
        })
    }

    /// The state of discovery, for `/readyz` and `/metrics`.
    pub fn health(&self) -> DiscoveryHealth {
        let Ok(state) = self.state.lock() else {
            return DiscoveryHealth::NotYet("discovery state unavailable".into());
        };
        if !state.succeeded {
            return DiscoveryHealth::NotYet(
                state
                    .last_error
                    .clone()
                    .unwrap_or_else(|| "the first refresh is under way".into()),
            );
        }
        DiscoveryHealth::Ready {
            unavailable: state.unavailable.keys().cloned().collect(),
        }
    }

    /// Refreshes now, then retries with backoff until a refresh succeeds, then refreshes every
    /// `interval`; never gives up, so a cluster that recovers is picked up without a restart.
    pub async fn run(self: Arc<Self>, interval: Duration) {
        let mut retry = RETRY_MIN;
        loop {
            self.begin_attempt();
            let wait = match self.refresh().await {
                Ok(()) => {
                    retry = RETRY_MIN;
                    interval
                }
                Err(_) => {
                    let wait = retry;
                    retry = (retry * 2).min(RETRY_MAX);
                    wait
                }
            };
            tokio::time::sleep(wait).await;
        }
    }

    /// Refreshes on behalf of a request that named an unknown resource: at most once per
    /// [`ON_DEMAND_MIN_INTERVAL`] (failed refreshes count), sharing a refresh already under way,
    /// waiting at most [`ON_DEMAND_WAIT`]. True when the resource table changed meanwhile.
    pub async fn refresh_on_demand(self: &Arc<Self>) -> bool {
        let before = self.resources.generation();
        let mut finished = self.finished.subscribe();
        let seen = *finished.borrow_and_update();
        let start = match self.state.lock() {
            Ok(state) if state.in_flight => false,
            Ok(mut state) => {
                let recent = state
                    .last_attempt
                    .is_some_and(|at| at.elapsed() < ON_DEMAND_MIN_INTERVAL);
                if recent {
                    return false;
                }
                state.in_flight = true;
                state.last_attempt = Some(Instant::now());
                true
            }
            Err(_) => return false,
        };
        if start {
            let discovery = self.clone();
            tokio::spawn(async move {
                let _ = discovery.refresh().await;
            });
        }
        let _ = tokio::time::timeout(ON_DEMAND_WAIT, finished.wait_for(|n| *n > seen)).await;
        self.resources.generation() != before
    }

    fn begin_attempt(&self) {
        if let Ok(mut state) = self.state.lock() {
            state.in_flight = true;
            state.last_attempt = Some(Instant::now());
        }
    }

    /// One refresh: fetch, store the table if it changed, record the outcome.
    async fn refresh(&self) -> Result<(), Error> {
        let result = fetch(&self.client).await;
        let outcome = match result {
            Ok(found) => {
                let count = found.resources.len();
                if self.resources.store_if_changed(Resources::new(found.resources)) {
                    tracing::debug!(resources = count, "API discovery changed");
                }
                self.record_success(found.unavailable);
                Ok(())
            }
            Err(err) => {
                self.record_failure(&err);
                Err(err)
            }
        };
        self.finished.send_modify(|n| *n += 1);
        outcome
    }

    /// Logs each group/version once when it becomes unavailable and once when it is back.
    fn record_success(&self, unavailable: BTreeMap<String, String>) {
        let Ok(mut state) = self.state.lock() else { return };
        for (group_version, reason) in &unavailable {
            if !state.unavailable.contains_key(group_version) {
                tracing::warn!(%group_version, %reason, "An API group is unavailable; discovery skips it until it answers");
            }
        }
        for group_version in state.unavailable.keys() {
            if !unavailable.contains_key(group_version) {
                tracing::info!(%group_version, "An API group that was unavailable answers again");
            }
        }
        if !state.succeeded {
            tracing::info!(skipped = unavailable.len(), "API discovery succeeded");
        }
        state.unavailable = unavailable;
        state.succeeded = true;
        state.last_error = None;
        state.in_flight = false;
    }

    fn record_failure(&self, err: &Error) {
        let Ok(mut state) = self.state.lock() else { return };
        let message = err.to_string();
        if state.last_error.as_ref() != Some(&message) {
            tracing::warn!(error = %message, "Kubernetes API discovery failed; retrying with backoff");
        }
        state.last_error = Some(message);
        state.in_flight = false;
    }
}

/// Aggregated discovery where the API server offers it (Kubernetes 1.26+), else the legacy documents.
async fn fetch(client: &Client) -> Result<Found, Error> {
    match aggregated(client, "/api", "core API aggregated discovery").await? {
        Some(core) => {
            let groups = aggregated(client, "/apis", "API groups aggregated discovery")
                .await?
                .unwrap_or_default();
            let mut found = Found::default();
            for group in core.items.into_iter().chain(groups.items) {
                add_aggregated_group(&mut found, group);
            }
            Ok(found)
        }
        None => legacy(client).await,
    }
}

async fn bounded<T>(what: &'static str, call: impl Future<Output = kube::Result<T>>) -> Result<T, Error> {
    tokio::time::timeout(REQUEST_TIMEOUT, call)
        .await
        .map_err(|_| Error::Timeout(what))?
        .map_err(|source| Error::Request { what, source })
}

/// The aggregated document at `path`, or None when the server answers with the legacy one
/// (the Accept header lists plain JSON last) or refuses the media type (406).
async fn aggregated(
    client: &Client,
    path: &str,
    what: &'static str,
) -> Result<Option<APIGroupDiscoveryList>, Error> {
    let request = axum::http::Request::get(path)
        .header(axum::http::header::ACCEPT, ACCEPT_AGGREGATED_DISCOVERY_V2)
        .body(Vec::new())
        .map_err(|err| Error::Request {
            what,
            source: kube::Error::HttpError(err),
        })?;
    let value: serde_json::Value = match bounded(what, client.request(request)).await {
        Ok(value) => value,
        Err(Error::Request {
            source: kube::Error::Api(status),
            ..
        }) if status.code == 406 || status.code == 404 => return Ok(None),
        Err(err) => return Err(err),
    };
    if value.get("kind").and_then(serde_json::Value::as_str) != Some("APIGroupDiscoveryList") {
        return Ok(None);
    }
    Ok(Some(serde_json::from_value(value)?))
}

/// One group of the aggregated document: its preferred (first) version's resources. A version
/// the aggregator could not refresh is `Stale`: its last known resources are kept, and it is named.
fn add_aggregated_group(found: &mut Found, group: kube::core::discovery::v2::APIGroupDiscovery) {
    let name = group.metadata.and_then(|m| m.name).unwrap_or_default();
    let Some(preferred) = group.versions.into_iter().next() else {
        return;
    };
    let version = preferred.version.unwrap_or_default();
    if preferred.freshness.as_deref() == Some("Stale") {
        let group_version = if name.is_empty() {
            version.clone()
        } else {
            format!("{name}/{version}")
        };
        found.unavailable.insert(
            group_version,
            "the API server reports its discovery as stale".into(),
        );
    }
    found.resources.extend(
        preferred
            .resources
            .iter()
            .filter_map(|r| aggregated_info(&name, &version, r)),
    );
}

fn aggregated_info(group: &str, version: &str, r: &APIResourceDiscovery) -> Option<ResourceInfo> {
    let plural = r.resource.clone()?;
    let kind = r
        .response_kind
        .as_ref()
        .and_then(|k| k.kind.clone())
        .unwrap_or_default();
    let singular = r
        .singular_resource
        .clone()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| kind.to_ascii_lowercase());
    Some(ResourceInfo {
        group: group.to_owned(),
        version: version.to_owned(),
        plural,
        singular,
        short_names: r.short_names.clone(),
        kind,
        namespaced: r.scope.as_deref() == Some("Namespaced"),
    })
}

/// The legacy documents: `/api/v1` and `/apis` must answer; each group's preferred version is
/// fetched concurrently, and a group that fails is skipped and named.
async fn legacy(client: &Client) -> Result<Found, Error> {
    let core = bounded("core API discovery", client.list_core_api_resources("v1")).await?;
    let groups = bounded("API group list", client.list_api_groups()).await?;
    let mut found = Found::default();
    found
        .resources
        .extend(core.resources.iter().filter_map(|r| legacy_info("", "v1", r)));
    let preferred = groups.groups.into_iter().filter_map(|group| {
        let version = group
            .preferred_version
            .or_else(|| group.versions.first().cloned())?;
        Some((group.name, version))
    });
    let mut documents: Vec<_> = stream::iter(preferred.enumerate())
        .map(|(position, (group, version))| async move {
            let result = bounded(
                "API group discovery",
                client.list_api_group_resources(&version.group_version),
            )
            .await;
            (position, group, version, result)
        })
        .buffer_unordered(CONCURRENT_GROUPS)
        .collect()
        .await;
    // Names resolve to the first match, so groups keep the API server's priority order.
    documents.sort_by_key(|(position, ..)| *position);
    for (_, group, version, result) in documents {
        match result {
            Ok(list) => found.resources.extend(
                list.resources
                    .iter()
                    .filter_map(|r| legacy_info(&group, &version.version, r)),
            ),
            Err(err) => {
                found
                    .unavailable
                    .insert(version.group_version, short_reason(&err));
            }
        }
    }
    Ok(found)
}

/// Why a group was skipped, in a few words (the API server's status line, not a whole body).
fn short_reason(err: &Error) -> String {
    match err {
        Error::Request {
            source: kube::Error::Api(status),
            ..
        } => format!("HTTP {}", status.code),
        other => other.to_string(),
    }
}

/// One legacy discovery entry as a [`ResourceInfo`]; subresources (`pods/status`) are skipped.
fn legacy_info(group: &str, version: &str, r: &APIResource) -> Option<ResourceInfo> {
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
