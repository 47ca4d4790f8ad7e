//! The request pipeline and what it stands on: the rules, the metrics discovered with them, the
//! resources and objects that exist, and the metrics backend. `api` turns a request into calls
//! here and the answers into wire types; nothing here knows HTTP.

mod catalog;
mod custom;
mod external;
mod relist;
mod resource;
#[cfg(test)]
mod tests;

pub use crate::backend::{Error as BackendError, ErrorKind as BackendFailure};
pub use catalog::{Catalog, ServedMetric};
pub use custom::{DescribedObject, MetricPath, MetricRequest, ObjectName, ObjectValue};
pub use resource::Usage;

use std::{
    sync::{Arc, Mutex, atomic::AtomicBool},
    time::Duration,
};

use arc_swap::ArcSwap;

use crate::{
    backend::{self, MetricsBackend},
    objects::{ObjectSource, SharedResources},
    rules::{Discovery, RuleSet},
    telemetry::Metrics,
};

/// Why a request has no answer; `api` turns each into the API server's Status.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The metric, or the objects it is about, do not exist.
    #[error("{0}")]
    NotFound(String),
    /// The request cannot be answered as asked (a selector that cannot be applied).
    #[error("{0}")]
    BadRequest(String),
    /// Something the answer needs is not ready yet (an object cache still listing).
    #[error("{0}")]
    Unavailable(String),
    /// The backend failed; its summary, never its internals, reaches the client.
    #[error(transparent)]
    Backend(backend::Error),
    /// Neither the client's nor a dependency's fault.
    #[error("{0}")]
    Internal(String),
}

impl Error {
    /// An object source's failure for a request about `metric` of `resource`.
    fn from_objects(
        err: crate::objects::Error,
        metric: &str,
        resource: &crate::objects::ResourceInfo,
    ) -> Self {
        match err {
            crate::objects::Error::NotSynced { .. } => Error::Unavailable(err.to_string()),
            // Not a passing outage: the metric is not served until RBAC allows it, as discovery says.
            crate::objects::Error::Forbidden(_) => Error::NotFound(format!(
                "the server could not find the metric {metric} for {}: {err}",
                resource.group_resource()
            )),
            err => Error::Internal(format!("unable to list matching resources: {err}")),
        }
    }
}

/// What a pipeline is built from.
pub struct Parts {
    pub rules: RuleSet,
    pub backend: Arc<dyn MetricsBackend>,
    /// None: every object with samples exists.
    pub objects: Option<Arc<dyn ObjectSource>>,
    /// The resources the adapter knows; API discovery replaces them.
    pub resources: Arc<SharedResources>,
    /// Series with samples this recent are discovered.
    pub max_age: Duration,
    pub metrics: Arc<Metrics>,
}

/// Everything a metrics request needs, shared by all connections.
pub struct Pipeline {
    /// The current rules; a discovery snapshot keeps the rules it was built from.
    rules: ArcSwap<RuleSet>,
    resources: Arc<SharedResources>,
    backend: Arc<dyn MetricsBackend>,
    objects: Option<Arc<dyn ObjectSource>>,
    discovery: ArcSwap<Discovery>,
    /// Set once a relist has succeeded.
    relisted: AtomicBool,
    /// Why the latest relist failed (None after a success), for `/readyz?verbose`.
    relist_error: Mutex<Option<String>>,
    max_age: Duration,
    metrics: Arc<Metrics>,
}

impl Pipeline {
    pub fn new(parts: Parts) -> Self {
        Self {
            rules: ArcSwap::from_pointee(parts.rules),
            resources: parts.resources,
            backend: parts.backend,
            objects: parts.objects,
            discovery: ArcSwap::from_pointee(Discovery::default()),
            relisted: AtomicBool::new(false),
            relist_error: Mutex::new(None),
            max_age: parts.max_age,
            metrics: parts.metrics,
        }
    }

    pub fn rules(&self) -> Arc<RuleSet> {
        self.rules.load_full()
    }

    /// Swaps in new rules; the next relist discovers with them.
    pub fn set_rules(&self, rules: RuleSet) {
        self.rules.store(Arc::new(rules));
    }

    /// The latest discovery snapshot.
    pub fn discovery(&self) -> Arc<Discovery> {
        self.discovery.load_full()
    }

    pub fn objects(&self) -> Option<&Arc<dyn ObjectSource>> {
        self.objects.as_ref()
    }

    pub fn backend(&self) -> &Arc<dyn MetricsBackend> {
        &self.backend
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }
}
