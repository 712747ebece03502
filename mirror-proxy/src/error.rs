//! What the mirror can fail at, and the one place where a failure becomes an HTTP answer
//! ([`Error::into_response`]): the status, an OCI error body (`{"errors":[{"code","message"}]}`)
//! and `X-Dragonfly-Error-Type` saying whether the proxy or the backend failed.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full};

use crate::ca::CaError;

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub(crate) type Body = UnsyncBoxBody<Bytes, BoxError>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The `[proxy]` configuration is invalid (at start-up).
    #[error("proxy config: {0}")]
    Config(String),
    /// Shoal's CA for the HTTPS hijack could not be loaded or made (at start-up).
    #[error(transparent)]
    Ca(#[from] CaError),
    #[error("cannot bind the proxy to {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    /// The request's target and headers exceed `max_header_bytes`.
    #[error("request head too large")]
    HeadTooLarge,
    /// The request names no usable target: a bad absolute URL, a CONNECT without host:port, an
    /// upstream that is not a registry URL.
    #[error("{0}")]
    BadTarget(String),
    /// The upstream is not among `proxy.allowed_upstreams`.
    #[error("upstream {0} is not allowed by this proxy's configuration")]
    NotAllowed(String),
    /// A request without a host for a path that is not the registry API.
    #[error("this is a registry mirror: only /v2/ paths are served")]
    NotMirrored,
    /// A `/v2/` path the distribution spec does not allow (code as the spec names it).
    #[error("{message}")]
    BadPath { code: &'static str, message: String },
    /// A `Range` the content cannot satisfy.
    #[error("{reason}")]
    RangeNotSatisfiable { reason: String, len: u64 },
    /// The upstream could not be reached (or broke off) before answering.
    #[error("upstream {url} unreachable")]
    UpstreamUnreachable { url: String, source: reqwest::Error },
    /// A lazy layer's request (`x-shoal-lazy`) this node cannot answer.
    #[error("{0}")]
    NotLazy(String),
    /// A lazy layer's request that is wrong (a prefetch list that is not one).
    #[error("{0}")]
    BadLazy(String),
    /// The layer's prefetch list was published already (the first one stands).
    #[error("{0}")]
    Published(String),
    /// The client may not read the blob it asked to publish for.
    #[error("the registry does not let this client read {0}")]
    Denied(String),
    /// The task could not start: the origin refused, or this host failed.
    #[error(transparent)]
    Task(Arc<shoal_p2p::Error>),
}

impl Error {
    /// `url` could not be reached (shown without credentials or signatures).
    pub(crate) fn unreachable(url: &url::Url, e: reqwest::Error) -> Self {
        Error::UpstreamUnreachable {
            url: shoal_p2p::origin::display_url(url),
            source: e.without_url(),
        }
    }

    /// The answer a client gets for this failure.
    pub(crate) fn into_response(self) -> Response<Body> {
        let (status, code, from) = match &self {
            Error::HeadTooLarge => (
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "UNSUPPORTED",
                None,
            ),
            Error::BadTarget(_) | Error::Config(_) => {
                (StatusCode::BAD_REQUEST, "UNSUPPORTED", None)
            }
            Error::NotMirrored => (StatusCode::NOT_FOUND, "UNSUPPORTED", None),
            Error::NotLazy(_) => (StatusCode::NOT_FOUND, "BLOB_UNKNOWN", Some("proxy")),
            Error::NotAllowed(_) | Error::Denied(_) => (StatusCode::FORBIDDEN, "DENIED", None),
            Error::BadLazy(_) => (StatusCode::BAD_REQUEST, "UNSUPPORTED", Some("proxy")),
            Error::Published(_) => (StatusCode::CONFLICT, "UNSUPPORTED", Some("proxy")),
            Error::BadPath { code, .. } => (StatusCode::BAD_REQUEST, *code, None),
            Error::RangeNotSatisfiable { .. } => {
                (StatusCode::RANGE_NOT_SATISFIABLE, "RANGE_INVALID", None)
            }
            Error::UpstreamUnreachable { url, source } => {
                tracing::warn!(url, error = %source, "upstream unreachable");
                (StatusCode::BAD_GATEWAY, "UNAVAILABLE", Some("proxy"))
            }
            Error::Task(e) => {
                tracing::warn!(error = %e, "task failed");
                let (status, code) = match (e.origin_status(), &**e) {
                    (_, shoal_p2p::Error::NotInSwarm { .. }) => {
                        (StatusCode::NOT_FOUND, "BLOB_UNKNOWN")
                    }
                    (_, shoal_p2p::Error::Busy { .. }) => {
                        (StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE")
                    }
                    (status, _) => match status {
                        Some(401) => (StatusCode::UNAUTHORIZED, "UNAUTHORIZED"),
                        Some(403) => (StatusCode::FORBIDDEN, "DENIED"),
                        Some(404) => (StatusCode::NOT_FOUND, "BLOB_UNKNOWN"),
                        Some(s) => (
                            StatusCode::from_u16(s).unwrap_or(StatusCode::BAD_GATEWAY),
                            "UNKNOWN",
                        ),
                        None => (StatusCode::BAD_GATEWAY, "UNKNOWN"),
                    },
                };
                (status, code, Some("backend"))
            }
            Error::Ca(_) | Error::Bind { .. } => {
                (StatusCode::INTERNAL_SERVER_ERROR, "UNKNOWN", Some("proxy"))
            }
        };
        let mut r = oci_error(status, code, &self.to_string());
        if let Error::RangeNotSatisfiable { len, .. } = self {
            let all = HeaderValue::from_str(&format!("bytes */{len}")).expect("ASCII");
            r.headers_mut().insert(header::CONTENT_RANGE, all);
        }
        if let Some(from) = from {
            r.headers_mut()
                .insert("x-dragonfly-error-type", HeaderValue::from_static(from));
        }
        r
    }
}

/// An error in the distribution spec's shape: `{"errors":[{"code","message"}]}`.
fn oci_error(status: StatusCode, code: &str, message: &str) -> Response<Body> {
    let body = serde_json::json!({"errors": [{"code": code, "message": message}]}).to_string();
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .header("docker-distribution-api-version", "registry/2.0")
        .body(full(Bytes::from(body)))
        .expect("valid response")
}

/// A body of `bytes`, whole.
pub(crate) fn full(bytes: Bytes) -> Body {
    UnsyncBoxBody::new(Full::new(bytes).map_err(|never: Infallible| match never {}))
}

/// An answer with no body (CONNECT's).
pub(crate) fn empty(status: StatusCode) -> Response<Body> {
    Response::builder()
        .status(status)
        .body(UnsyncBoxBody::new(
            Empty::new().map_err(|never: Infallible| match never {}),
        ))
        .expect("valid response")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_map_to_their_status_and_say_whose_they_are() {
        let origin = |status| {
            Error::Task(Arc::new(shoal_p2p::Error::OriginStatus {
                url: "http://r/v2/a/blobs/x".into(),
                status,
            }))
            .into_response()
        };
        assert_eq!(origin(401).status(), StatusCode::UNAUTHORIZED);
        assert_eq!(origin(404).status(), StatusCode::NOT_FOUND);
        assert_eq!(origin(503).status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(origin(404).headers()["x-dragonfly-error-type"], "backend");
        let range = Error::RangeNotSatisfiable {
            reason: "outside".into(),
            len: 10,
        }
        .into_response();
        assert_eq!(range.status(), StatusCode::RANGE_NOT_SATISFIABLE);
        assert_eq!(range.headers()[header::CONTENT_RANGE], "bytes */10");
        let path = Error::BadPath {
            code: "NAME_INVALID",
            message: "bad".into(),
        }
        .into_response();
        assert_eq!(path.status(), StatusCode::BAD_REQUEST);
        assert_eq!(
            Error::NotMirrored.into_response().status(),
            StatusCode::NOT_FOUND
        );
    }
}
