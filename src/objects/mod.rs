//! Which Kubernetes objects exist: the resource table and object sources behind one small trait.

mod access;
mod discovery;
mod index;
#[cfg(test)]
mod index_tests;
mod kube;
mod resources;
mod static_file;

use futures::future::BoxFuture;

pub use self::kube::{ACCESS_RECHECK, KubeObjects};
pub use access::{Forbidden, READER_CLUSTER_ROLE};
pub use discovery::DiscoveryHealth;
pub use resources::{ResourceInfo, Resources, SharedResources};
pub use static_file::StaticObjects;

use crate::selector::Selector;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read objects file {path}: {source}")]
    Read {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("invalid objects file {path}: {message}")]
    Parse {
        path: std::path::PathBuf,
        message: String,
    },
    #[error("the object source {source_name} does not know {resource}; it lists {known}")]
    UnsupportedResource {
        source_name: String,
        resource: String,
        known: String,
    },
    #[error(
        "the cache of {resource} has not finished its first list from the Kubernetes API yet; retry shortly"
    )]
    NotSynced { resource: String },
    /// RBAC does not let the adapter list and watch the resource.
    #[error("{0}")]
    Forbidden(Forbidden),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A reference to one object: its namespace (None for cluster-scoped objects) and name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectRef {
    pub namespace: Option<String>,
    pub name: String,
}

/// Answers "which objects of this resource exist", from memory (never a request to the API server per call).
pub trait ObjectSource: Send + Sync {
    /// Objects of `resource` in `namespace` (every namespace when `None`) whose labels match `selector`.
    fn list(
        &self,
        resource: &ResourceInfo,
        namespace: Option<&str>,
        selector: &Selector,
    ) -> Result<Vec<ObjectRef>>;

    /// Whether the named object exists.
    fn exists(&self, resource: &ResourceInfo, namespace: Option<&str>, name: &str) -> Result<bool>;

    /// A short description for error messages, e.g. `objects file /etc/objects.yaml`.
    fn describe(&self) -> String;

    /// Waits (briefly) until objects of `resource` can be answered from memory.
    fn ready<'a>(&'a self, _resource: &'a ResourceInfo) -> BoxFuture<'a, Result<()>> {
        Box::pin(async { Ok(()) })
    }

    /// Whether the adapter may list and watch `resource`, which serving its metrics needs; they are
    /// advertised only when it may. Waits briefly at most.
    fn may_serve<'a>(&'a self, _resource: &'a ResourceInfo) -> BoxFuture<'a, bool> {
        Box::pin(async { true })
    }

    /// The resources (`jobs.batch`) the adapter is not allowed to list and watch, sorted: for
    /// `/metrics` and `/readyz?verbose`.
    fn forbidden(&self) -> Vec<String> {
        Vec::new()
    }

    /// Re-reads which resources exist (a CRD added after start); true when it did.
    fn refresh_resources(&self) -> BoxFuture<'_, bool> {
        Box::pin(async { false })
    }
}
