//! The request path, percent-decoded exactly once before authentication, authorization and
//! routing read it. k8s.io/apiserver authorizes what Go's `URL.Path` holds (the decoded path, split
//! on `/`), so `namespaces/kube%2Dsystem` is namespace `kube-system` and `pods/%2A` is name `*`.
//! If the authorizer saw the encoded path while axum's extractors decoded it, a request could be
//! allowed for `kube%2Dsystem` and served for `kube-system`.
//!
//! The middleware decodes the path once, drops empty segments, and rewrites the request URI to a
//! canonical encoding of the same segments: every byte that is not plain in a URI path is escaped
//! again, so the router and axum's `Path` extractors (which decode once) see exactly the segments
//! the authorizer saw. `%2F` becomes a separator, as it does for Go; `%25` becomes a literal `%`
//! that is re-escaped, so `%252A` is served and authorized as `%2A`, never as `*`.

use axum::{
    extract::Request,
    http::{Uri, uri::PathAndQuery},
    middleware::Next,
    response::{IntoResponse, Response},
};

use super::ApiError;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("invalid URL escape {0:?} in the request path")]
    Escape(String),
    #[error("the request path is not valid UTF-8 once decoded")]
    Utf8,
}

/// The request's path, decoded once and without empty segments (request extension). Everything
/// that decides about a request reads this, not the URI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestPath(pub String);

/// Decodes every `%XX` of `raw`; a `%` without two hex digits after it, or bytes that are not
/// UTF-8, are refused (Go's `url.Parse` refuses the former as well).
pub fn decode(raw: &str) -> Result<String, Error> {
    let bytes = raw.as_bytes();
    let hex = |at: usize| bytes.get(at).and_then(|b| char::from(*b).to_digit(16));
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'%' {
            out.push(bytes[i]);
            i += 1;
            continue;
        }
        match (hex(i + 1), hex(i + 2)) {
            // Two hex digits are at most 0xFF.
            (Some(high), Some(low)) => out.push((high * 16 + low) as u8),
            _ => {
                let escape = &bytes[i..(i + 3).min(bytes.len())];
                return Err(Error::Escape(String::from_utf8_lossy(escape).into_owned()));
            }
        }
        i += 3;
    }
    String::from_utf8(out).map_err(|_| Error::Utf8)
}

/// Bytes that stand for themselves in a URI path segment (RFC 3986 `pchar` without `%`).
fn plain(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@".contains(&byte)
}

/// The canonical form of a raw path: (decoded path, the same segments escaped for a URI).
pub fn canonical(raw: &str) -> Result<(String, String), Error> {
    let decoded = decode(raw)?;
    let segments: Vec<&str> = decoded.split('/').filter(|s| !s.is_empty()).collect();
    let mut path = String::with_capacity(decoded.len() + 1);
    let mut encoded = String::with_capacity(raw.len() + 1);
    for segment in &segments {
        path.push('/');
        path.push_str(segment);
        encoded.push('/');
        for byte in segment.bytes() {
            if plain(byte) {
                encoded.push(char::from(byte));
            } else {
                encoded.push_str(&format!("%{byte:02X}"));
            }
        }
    }
    if segments.is_empty() {
        path.push('/');
        encoded.push('/');
    }
    Ok((path, encoded))
}

/// Decodes the path once, records it as [`RequestPath`] and rewrites the URI to its canonical
/// form; a path that cannot be decoded is a 400 Status.
pub async fn middleware(mut request: Request, next: Next) -> Response {
    let (path, encoded) = match canonical(request.uri().path()) {
        Ok(canonical) => canonical,
        Err(err) => return ApiError::bad_request(err.to_string()).into_response(),
    };
    if encoded != request.uri().path() {
        let target = match request.uri().query() {
            Some(query) => format!("{encoded}?{query}"),
            None => encoded,
        };
        let mut parts = request.uri().clone().into_parts();
        parts.path_and_query = PathAndQuery::try_from(target).ok();
        match Uri::from_parts(parts) {
            Ok(uri) => *request.uri_mut() = uri,
            Err(err) => {
                tracing::warn!(error = %err, uri = %request.uri(), "Rewriting the request URI failed");
                return ApiError::bad_request("the request URI cannot be parsed").into_response();
            }
        }
    }
    request.extensions_mut().insert(RequestPath(path));
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_decoded_once() {
        let (path, encoded) =
            canonical("/apis/custom.metrics.k8s.io/v1beta2/namespaces/kube%2Dsystem/pods/%2A/http_requests")
                .unwrap();
        assert_eq!(
            path,
            "/apis/custom.metrics.k8s.io/v1beta2/namespaces/kube-system/pods/*/http_requests"
        );
        assert_eq!(encoded, path);
        let (path, encoded) = canonical("/apis/g/v1/pods/%252A/m").unwrap();
        assert_eq!(
            (path.as_str(), encoded.as_str()),
            ("/apis/g/v1/pods/%2A/m", "/apis/g/v1/pods/%252A/m")
        );
    }

    #[test]
    fn slashes_and_empty_segments() {
        assert_eq!(
            canonical("/a%2Fb//c/").unwrap(),
            ("/a/b/c".into(), "/a/b/c".into())
        );
        assert_eq!(canonical("/").unwrap(), ("/".into(), "/".into()));
        assert_eq!(canonical("//").unwrap(), ("/".into(), "/".into()));
    }

    #[test]
    fn unsafe_bytes_are_escaped_again() {
        let (path, encoded) = canonical("/x/a%20b%3Fc%23d%C3%A9%7B%7D").unwrap();
        assert_eq!(path, "/x/a b?c#dé{}");
        assert_eq!(encoded, "/x/a%20b%3Fc%23d%C3%A9%7B%7D");
        assert_eq!(decode(&encoded).unwrap(), path);
    }

    #[test]
    fn bad_escapes_and_bytes_are_refused() {
        assert_eq!(decode("/a%zz"), Err(Error::Escape("%zz".into())));
        assert_eq!(decode("/a%2"), Err(Error::Escape("%2".into())));
        assert_eq!(decode("/a%"), Err(Error::Escape("%".into())));
        assert_eq!(decode("/a%+1"), Err(Error::Escape("%+1".into())));
        assert_eq!(decode("/a%FF"), Err(Error::Utf8));
    }
}
