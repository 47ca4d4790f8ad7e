//! Errors answered to clients: Kubernetes `Status` objects with the code and reason the Go API
//! machinery would use, and messages that say which stage failed and what to fix.

use axum::http::{HeaderValue, StatusCode, header::RETRY_AFTER};
use axum::response::{IntoResponse, Response};

use super::types::{ListMeta, Status, StatusCause, StatusDetails};
use crate::pipeline::{self, BackendError, BackendFailure};

/// An error on its way to the client.
#[derive(Debug, Clone)]
pub struct ApiError {
    status: Box<Status>,
}

impl ApiError {
    fn new(code: u16, reason: &'static str, message: String, details: Option<StatusDetails>) -> Self {
        Self {
            status: Box::new(Status {
                kind: "Status",
                api_version: "v1",
                metadata: ListMeta::default(),
                status: "Failure",
                message,
                reason,
                details,
                code,
            }),
        }
    }

    /// 404 NotFound without details, as prometheus-adapter writes it.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(404, "NotFound", message.into(), None)
    }

    /// 404 with the API server's details (name, group, kind).
    pub fn not_found_with(message: String, details: StatusDetails) -> Self {
        Self::new(404, "NotFound", message, Some(details))
    }

    /// 404 for a path no route serves, as the Go mux answers it (`details: {}`).
    pub fn unknown_route() -> Self {
        Self::new(
            404,
            "NotFound",
            "the server could not find the requested resource".into(),
            Some(StatusDetails::default()),
        )
    }

    pub fn method_not_allowed() -> Self {
        Self::new(
            405,
            "MethodNotAllowed",
            "the server does not allow this method on the requested resource".into(),
            Some(StatusDetails::default()),
        )
    }

    /// 401, as the API server answers a request whose credentials are not valid.
    pub fn unauthorized() -> Self {
        Self::new(401, "Unauthorized", "Unauthorized".into(), None)
    }

    /// 403 Forbidden with the API server's details (`group`, `kind` = resource, `name`).
    pub fn forbidden(message: String, group: &str, resource: &str, name: &str) -> Self {
        let details = StatusDetails {
            name: name.to_owned(),
            group: group.to_owned(),
            kind: resource.to_owned(),
            ..Default::default()
        };
        Self::new(403, "Forbidden", message, Some(details))
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message.into(), None)
    }

    /// 500 InternalError: `Internal error occurred: <cause>` with the cause repeated in details.
    pub fn internal(cause: impl Into<String>) -> Self {
        let cause = cause.into();
        let details = StatusDetails {
            causes: vec![StatusCause {
                message: cause.clone(),
            }],
            ..Default::default()
        };
        Self::new(
            500,
            "InternalError",
            format!("Internal error occurred: {cause}"),
            Some(details),
        )
    }

    /// 429 TooManyRequests with a retry hint, as `apierrors.NewTooManyRequests` builds it.
    pub fn too_many_requests(message: impl Into<String>, retry_after_seconds: u32) -> Self {
        let details = StatusDetails {
            retry_after_seconds: Some(retry_after_seconds),
            ..Default::default()
        };
        Self::new(429, "TooManyRequests", message.into(), Some(details))
    }

    /// What a request past `--max-requests-inflight` gets, as a response body for the server.
    pub fn too_many_requests_response(retry_after_seconds: u32) -> axum::response::Response {
        Self::too_many_requests("Too many requests, please try again later.", retry_after_seconds)
            .into_response()
    }

    pub fn service_unavailable(message: impl Into<String>) -> Self {
        Self::new(503, "ServiceUnavailable", message.into(), None)
    }

    /// 503 ServiceUnavailable with a retry hint (`details.retryAfterSeconds` and the
    /// `Retry-After` header), for a backend that said it is overloaded or down for now.
    pub fn service_unavailable_retry(message: impl Into<String>, retry_after_seconds: u32) -> Self {
        let details = StatusDetails {
            retry_after_seconds: Some(retry_after_seconds),
            ..Default::default()
        };
        Self::new(503, "ServiceUnavailable", message.into(), Some(details))
    }

    /// 504 Timeout: `Timeout: <message>`, with a retry hint.
    pub fn timeout(message: impl Into<String>, retry_after_seconds: u32) -> Self {
        let details = StatusDetails {
            retry_after_seconds: Some(retry_after_seconds),
            ..Default::default()
        };
        Self::new(
            504,
            "Timeout",
            format!("Timeout: {}", message.into()),
            Some(details),
        )
    }

    pub fn code(&self) -> u16 {
        self.status.code
    }

    pub fn message(&self) -> &str {
        &self.status.message
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ({}): {}",
            self.status.code, self.status.reason, self.status.message
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = StatusCode::from_u16(self.status.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = super::json_response(code, &*self.status, false);
        // As the Go API server writes it: a Status with a retry period also sets Retry-After.
        if let Some(seconds) = self
            .status
            .details
            .as_ref()
            .and_then(|d| d.retry_after_seconds)
            .filter(|s| *s > 0)
        {
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

/// The pipeline's reasons, answered with the status a client can act on.
impl From<pipeline::Error> for ApiError {
    fn from(err: pipeline::Error) -> Self {
        match err {
            pipeline::Error::NotFound(message) => ApiError::not_found(message),
            pipeline::Error::BadRequest(message) => ApiError::bad_request(message),
            pipeline::Error::Unavailable(message) => ApiError::service_unavailable(message),
            pipeline::Error::Backend(err) => backend_error(err),
            pipeline::Error::Internal(message) => ApiError::internal(message),
        }
    }
}

/// Maps backend failures to the status a client can act on. The message is the error's
/// summary: the backend's URL and words went to the log (the client logs every failed query).
fn backend_error(err: BackendError) -> ApiError {
    let message = format!("unable to fetch metrics: {}", err.summary());
    match err.kind() {
        BackendFailure::Timeout => ApiError::timeout(message, 1),
        BackendFailure::Unreachable => ApiError::service_unavailable(message),
        BackendFailure::Unavailable { retry_after } => {
            let seconds = u32::try_from(retry_after.as_secs()).unwrap_or(u32::MAX);
            ApiError::service_unavailable_retry(message, seconds)
        }
        BackendFailure::Failed => ApiError::internal(message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_json_matches_go() {
        let body = serde_json::to_string(
            &ApiError::not_found("the server could not find the metric x for pods").status,
        )
        .unwrap();
        assert_eq!(
            body,
            r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"the server could not find the metric x for pods","reason":"NotFound","code":404}"#
        );
        let body = serde_json::to_string(&ApiError::internal("unable to fetch metrics").status).unwrap();
        assert_eq!(
            body,
            r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"Internal error occurred: unable to fetch metrics","reason":"InternalError","details":{"causes":[{"message":"unable to fetch metrics"}]},"code":500}"#
        );
        let body = serde_json::to_string(&ApiError::unknown_route().status).unwrap();
        assert!(body.contains(r#""details":{},"code":404"#), "{body}");
        let unavailable = ApiError::service_unavailable_retry("Prometheus is unavailable", 5);
        assert_eq!(
            serde_json::to_string(&unavailable.status).unwrap(),
            r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"Prometheus is unavailable","reason":"ServiceUnavailable","details":{"retryAfterSeconds":5},"code":503}"#
        );
        let response = unavailable.into_response();
        assert_eq!(response.headers()[RETRY_AFTER], "5");
        assert!(
            ApiError::not_found("x")
                .into_response()
                .headers()
                .get(RETRY_AFTER)
                .is_none()
        );
    }
}
