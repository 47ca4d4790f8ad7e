//! `--max-requests-inflight`: kube-apiserver's bound on requests served at once. Past it a request
//! is answered 429 with `Retry-After: 1` at once, which clients (client-go, kube-aggregator) back
//! off from, instead of queueing behind the slow ones.

use std::sync::Arc;

use axum::{
    body::Body,
    http::{HeaderValue, header::RETRY_AFTER},
    response::{IntoResponse, Response},
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::Throttled;

/// What a rejected client is told to wait, in seconds (kube-apiserver's value).
const RETRY_AFTER_SECONDS: u32 = 1;

/// The bound on requests in flight, shared by all connections.
pub(super) struct Inflight {
    permits: Option<Arc<Semaphore>>,
    limit: usize,
    full: Throttled,
}

impl Inflight {
    /// `limit` 0 means no bound, as for kube-apiserver's flag.
    pub fn new(limit: usize) -> Self {
        Self {
            permits: (limit > 0).then(|| Arc::new(Semaphore::new(limit))),
            limit,
            full: Throttled::default(),
        }
    }

    /// Whether a request for `path` may be served now.
    pub fn admit(&self, path: &str) -> Admission {
        let Some(permits) = &self.permits else {
            return Admission::Admitted(None);
        };
        if is_probe(path) {
            return Admission::Admitted(None);
        }
        match permits.clone().try_acquire_owned() {
            Ok(permit) => Admission::Admitted(Some(permit)),
            Err(_) => {
                if self.full.due() {
                    tracing::warn!(
                        max_requests_inflight = self.limit,
                        "Request limit reached: answering 429 until requests finish (--max-requests-inflight)"
                    );
                }
                tracing::debug!(path, "Too many requests in flight; answered 429");
                Admission::Rejected
            }
        }
    }
}

/// What [`Inflight::admit`] decided.
#[derive(Debug)]
pub(super) enum Admission {
    /// Served, holding a place while it runs (none for health probes, or without a bound).
    Admitted(Option<OwnedSemaphorePermit>),
    /// To be answered with [`too_many_requests`].
    Rejected,
}

/// Health probes are never turned away, as kube-apiserver exempts them (its `probes` flow
/// schema): a busy adapter is not a dead one, and the kubelet must not restart it for being busy.
fn is_probe(path: &str) -> bool {
    ["/healthz", "/livez", "/readyz"].iter().any(|probe| {
        path.strip_prefix(probe)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    })
}

/// What a request past the limit gets: 429 and `Retry-After`, the body from `body` (the API layer
/// supplies a Kubernetes `Status`; the server itself knows no wire types).
pub(super) fn too_many_requests(body: super::RejectionBody) -> Response<Body> {
    let mut response = body(RETRY_AFTER_SECONDS);
    *response.status_mut() = axum::http::StatusCode::TOO_MANY_REQUESTS;
    response
        .headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECONDS));
    response
}

/// The body kube-apiserver's own limiter writes, for a server given no other.
pub(super) fn plain_rejection(_retry_after_seconds: u32) -> Response<Body> {
    "Too many requests, please try again later.\n".into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_are_exempt_and_the_rest_is_bounded() {
        let inflight = Inflight::new(1);
        let Admission::Admitted(Some(held)) = inflight.admit("/apis/custom.metrics.k8s.io/v1beta1") else {
            panic!("the first request takes the place");
        };
        for probe in ["/healthz", "/livez", "/readyz", "/readyz/ping", "/healthz/ping"] {
            assert!(
                matches!(inflight.admit(probe), Admission::Admitted(None)),
                "{probe}"
            );
        }
        for other in ["/metrics", "/healthzz", "/apis"] {
            assert!(matches!(inflight.admit(other), Admission::Rejected), "{other}");
        }
        drop(held);
        assert!(matches!(inflight.admit("/apis"), Admission::Admitted(Some(_))));
        assert!(
            matches!(Inflight::new(0).admit("/apis"), Admission::Admitted(None)),
            "0 means no bound"
        );
        let rejected = too_many_requests(plain_rejection);
        assert_eq!(rejected.status(), 429);
        assert_eq!(rejected.headers()[RETRY_AFTER], "1");
    }
}
