//! Whether the adapter may list and watch a resource, which it needs to serve that resource's
//! metrics: the permission named in errors, and SelfSubjectAccessReviews cached per resource.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use kube::{Api, Client, api::PostParams};
use tokio::sync::watch;

use super::ResourceInfo;

/// The ClusterRole of deploy/ that grants the adapter its reads of objects.
pub const READER_CLUSTER_ROLE: &str = "custom-metrics-resource-reader";
/// The verbs a watch cache needs.
const VERBS: [&str; 2] = ["list", "watch"];
/// How long one SelfSubjectAccessReview may take.
const REVIEW_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a caller waits for the first review of a resource before it assumes "allowed".
const FIRST_REVIEW_WAIT: Duration = Duration::from_secs(2);

/// A resource the adapter may not list and watch (RBAC), so it serves none of its metrics.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Forbidden {
    /// API group; empty for the core group.
    pub group: String,
    /// Plural resource name.
    pub resource: String,
}

impl Forbidden {
    pub fn of(resource: &ResourceInfo) -> Self {
        Self {
            group: resource.group.clone(),
            resource: resource.plural.clone(),
        }
    }

    /// `GroupResource.String()`: `pods`, `jobs.batch`.
    pub fn group_resource(&self) -> String {
        if self.group.is_empty() {
            self.resource.clone()
        } else {
            format!("{}.{}", self.resource, self.group)
        }
    }
}

impl std::fmt::Display for Forbidden {
    /// What is missing and where to add it, for the clients of a metric of this resource.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Self { group, resource } = self;
        write!(
            f,
            "the adapter is not allowed to list and watch {resource} in API group {group:?}; grant its \
             ServiceAccount the verbs list and watch on resources [{resource}] in apiGroups [{group:?}], e.g. \
             in the ClusterRole {READER_CLUSTER_ROLE} (deploy/base/cluster-role-resource-reader.yaml)"
        )
    }
}

/// The latest review of one resource.
struct Entry {
    /// Some(allowed) once a review answered.
    allowed: watch::Sender<Option<bool>>,
    /// When the latest review started; the next one starts after the recheck interval.
    started: Mutex<Option<Instant>>,
}

/// SelfSubjectAccessReviews of `list` and `watch` per resource, cached and re-checked in the background.
pub(super) struct AccessReviews {
    client: Client,
    entries: Mutex<HashMap<String, Arc<Entry>>>,
}

impl AccessReviews {
    pub(super) fn new(client: Client) -> Self {
        Self {
            client,
            entries: Mutex::default(),
        }
    }

    /// Whether the adapter may list and watch `resource`, as the last review said; None when no review
    /// has answered. A review older than `recheck` is repeated in the background (the old answer stands
    /// meanwhile); the first review of a resource is waited for, briefly.
    pub(super) async fn allowed(&self, resource: &ResourceInfo, recheck: Duration) -> Option<bool> {
        let key = resource.group_resource();
        let entry = {
            let Ok(mut entries) = self.entries.lock() else {
                return None;
            };
            entries
                .entry(key)
                .or_insert_with(|| {
                    Arc::new(Entry {
                        allowed: watch::Sender::new(None),
                        started: Mutex::new(None),
                    })
                })
                .clone()
        };
        let due = entry.started.lock().is_ok_and(|mut started| {
            let due = started.is_none_or(|at| at.elapsed() >= recheck);
            if due {
                *started = Some(Instant::now());
            }
            due
        });
        if due {
            tokio::spawn(review(
                self.client.clone(),
                Forbidden::of(resource),
                entry.clone(),
            ));
        }
        let mut answers = entry.allowed.subscribe();
        let answered = tokio::time::timeout(FIRST_REVIEW_WAIT, answers.wait_for(Option::is_some)).await;
        match answered {
            Ok(Ok(allowed)) => *allowed,
            _ => None,
        }
    }

    /// The resources whose last review was a denial.
    pub(super) fn denied(&self) -> Vec<String> {
        self.entries
            .lock()
            .map(|entries| {
                entries
                    .iter()
                    .filter(|(_, entry)| *entry.allowed.borrow() == Some(false))
                    .map(|(key, _)| key.clone())
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// Reviews both verbs and records the answer; a review that fails leaves the previous answer.
async fn review(client: Client, resource: Forbidden, entry: Arc<Entry>) {
    let api: Api<SelfSubjectAccessReview> = Api::all(client);
    let ask = |verb: &'static str| {
        let review = SelfSubjectAccessReview {
            spec: SelfSubjectAccessReviewSpec {
                resource_attributes: Some(ResourceAttributes {
                    verb: Some(verb.to_owned()),
                    group: Some(resource.group.clone()),
                    resource: Some(resource.resource.clone()),
                    ..Default::default()
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        let api = api.clone();
        async move {
            let answer =
                tokio::time::timeout(REVIEW_TIMEOUT, api.create(&PostParams::default(), &review)).await;
            match answer {
                Ok(Ok(review)) => Ok(review.status.is_some_and(|s| s.allowed)),
                Ok(Err(err)) => Err(err.to_string()),
                Err(_) => Err(format!("no answer within {REVIEW_TIMEOUT:?}")),
            }
        }
    };
    let (list, watch) = futures::join!(ask(VERBS[0]), ask(VERBS[1]));
    match (list, watch) {
        (Ok(list), Ok(watch)) => {
            let allowed = list && watch;
            let previous = entry.allowed.send_replace(Some(allowed));
            if previous.is_some_and(|was| was != allowed) || (previous.is_none() && !allowed) {
                tracing::info!(
                    resource = %resource.group_resource(),
                    allowed,
                    "SelfSubjectAccessReview: {}",
                    if allowed {
                        "the adapter may now list and watch this resource; its metrics are advertised"
                    } else {
                        "the adapter may not list and watch this resource; its metrics are not advertised"
                    }
                );
            }
        }
        (Err(err), _) | (_, Err(err)) => {
            tracing::debug!(resource = %resource.group_resource(), error = %err, "SelfSubjectAccessReview failed; keeping the previous answer");
        }
    }
}
