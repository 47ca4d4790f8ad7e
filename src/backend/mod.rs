//! Where metrics come from: the seam between the request pipeline (and the relist) and a metrics
//! store. The pipeline renders PromQL and hands it to a [`MetricsBackend`]; what comes back is
//! backend-neutral ([`Sample`], [`SeriesList`], [`Error`] with an [`ErrorKind`] the API maps to a
//! status). [`prometheus`] is the real backend; [`memory`] answers from what tests put in it.

pub mod cache;
pub mod memory;
pub mod prometheus;
mod samples;

use std::{fmt, time::Duration, time::SystemTime};

use futures::future::BoxFuture;

pub use cache::CachingBackend;
pub use memory::MemoryBackend;
pub use samples::{Labels, Sample, SeriesList, SeriesShape};

/// A store of metrics the adapter can query. Object-safe, so the app holds an
/// `Arc<dyn MetricsBackend>` and tests substitute [`MemoryBackend`].
pub trait MetricsBackend: Send + Sync {
    /// Runs the instant query `promql` at `time`. A scalar comes back as one sample without labels.
    fn query<'a>(&'a self, promql: &'a str, time: SystemTime) -> BoxFuture<'a, Result<Vec<Sample>>>;

    /// The distinct shapes of the series matching the series selector `selector` that have
    /// samples in `[start, end]`.
    fn series<'a>(
        &'a self,
        selector: &'a str,
        start: SystemTime,
        end: SystemTime,
    ) -> BoxFuture<'a, Result<SeriesList>>;

    /// Where the backend is (Prometheus' base URL), for the adapter's own log; never for clients.
    fn describe(&self) -> &str;
}

/// What kind of failure a backend call met: the API layer picks the status a client can act on
/// from this alone, so it never needs to know which backend failed or how.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The backend did not answer in time: a gateway timeout, worth retrying.
    Timeout,
    /// The backend cannot be reached (connection refused, DNS, TLS): service unavailable.
    Unreachable,
    /// The backend answered that it is unavailable or throttling; callers may retry after this long.
    Unavailable { retry_after: Duration },
    /// Anything else: the query was refused, the answer was unusable or too large, or the backend
    /// is misconfigured. Retrying the same request will not help.
    Failed,
}

/// A failed backend call: its kind, a summary safe for clients and `/readyz?verbose` (no URLs,
/// no backend bodies), and the full detail for the log (what `Display` prints).
#[derive(Debug, Clone)]
pub struct Error {
    kind: ErrorKind,
    summary: String,
    detail: String,
}

impl Error {
    /// An error of `kind`; `summary` is what clients may read, `detail` what the log records.
    pub fn new(kind: ErrorKind, summary: impl Into<String>, detail: impl fmt::Display) -> Self {
        Self {
            kind,
            summary: summary.into(),
            detail: detail.to_string(),
        }
    }

    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// What went wrong and what to do, without URLs or the backend's words.
    pub fn summary(&self) -> &str {
        &self.summary
    }
}

// The detail alone, not a source chain: it already names the cause, and a chain would print it twice.
impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.detail)
    }
}

impl std::error::Error for Error {}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_is_the_detail_and_the_summary_stays_apart() {
        let err = Error::new(
            ErrorKind::Unreachable,
            "the backend is unreachable",
            "http://prometheus.internal:9090: connection refused",
        );
        assert_eq!(
            err.to_string(),
            "http://prometheus.internal:9090: connection refused"
        );
        assert_eq!(err.summary(), "the backend is unreachable");
        assert_eq!(err.kind(), ErrorKind::Unreachable);
    }

    #[test]
    fn the_trait_is_object_safe() {
        let backend: std::sync::Arc<dyn MetricsBackend> = std::sync::Arc::new(MemoryBackend::new());
        assert_eq!(backend.describe(), "memory");
    }
}
