//! Every request's authentication and authorization, answered as the API server answers them.

use std::sync::Arc;

use axum::{
    extract::{Request, State},
    middleware::Next,
    response::{IntoResponse, Response},
};

use super::{ApiError, path};
use crate::{
    auth::{Auth, Denial},
    server::ConnectionInfo,
};

/// What a client that may retry is told to wait, in seconds.
const RETRY_AFTER_SECONDS: u32 = 1;

/// Authenticates, strips the front proxy's headers, and authorizes every request, on the path
/// [`path`] decoded (the one the router serves).
pub async fn middleware(State(auth): State<Arc<Auth>>, mut request: Request, next: Next) -> Response {
    let path = match request.extensions().get::<path::RequestPath>() {
        Some(path::RequestPath(path)) => path.clone(),
        // Not behind the path middleware: the URI was never decoded, so decode it here, once.
        None => match path::canonical(request.uri().path()) {
            Ok((path, _)) => path,
            Err(err) => return ApiError::bad_request(err.to_string()).into_response(),
        },
    };
    let certificates = request
        .extensions()
        .get::<ConnectionInfo>()
        .map(|info| info.peer_certificates.clone())
        .unwrap_or_default();
    let method = request.method().clone();
    match auth
        .check(&method, &path, request.headers_mut(), &certificates)
        .await
    {
        Ok(_user) => next.run(request).await,
        Err(denial) => status(denial).into_response(),
    }
}

/// The API server's answer to each denial: 401; 403 naming the permission; 503 with Retry-After
/// when the review did not complete; 500 when the API server refused the review.
fn status(denial: Denial) -> ApiError {
    match denial {
        Denial::Unauthenticated => ApiError::unauthorized(),
        Denial::Forbidden { message, attributes } => ApiError::forbidden(
            message,
            &attributes.api_group,
            &attributes.resource,
            &attributes.name,
        ),
        Denial::ReviewUnavailable => ApiError::service_unavailable_retry(
            "the authorization check could not be completed; retry",
            RETRY_AFTER_SECONDS,
        ),
        Denial::ReviewRefused => {
            ApiError::internal("the authorization check could not be completed; the adapter's log says why")
        }
    }
}
