//! The origin client: plain HTTP(S) servers, object stores and registries' blob endpoints.
//!
//! * [`Origin::stat`] learns the content length with `GET` + `Range: bytes=0-0`, falling back to
//!   `HEAD` for servers that refuse it; a `200` answer means the server ignores ranges.
//! * [`Origin::open`] starts a GET for a byte range (checked against `Content-Range`) or the whole.
//! * Redirects are followed; `Authorization`, `Cookie` and `Proxy-Authorization` are dropped when
//!   the scheme, host or port changes (registries redirect blobs to object stores with signed URLs).
//! * Connect, read and whole-request timeouts are separate; retryable failures (connect errors,
//!   timeouts, 5xx, 429) are retried with exponential backoff, others are returned at once.

use std::ops::Range;
use std::path::PathBuf;
use std::time::Duration;

use http::StatusCode;
use http::header::{self, HeaderMap, HeaderValue};
use serde::Deserialize;
use url::Url;

use crate::error::{Error, Result};

/// Timeouts, retries and concurrency for talking to origins.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct OriginConfig {
    /// Time to establish a TCP (and TLS) connection.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Longest silence while reading a response.
    #[serde(with = "humantime_serde")]
    pub read_timeout: Duration,
    /// Longest time for one request, body included (one piece, or the whole content when the
    /// origin has no range support).
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Attempts after the first for retryable failures.
    pub retries: u32,
    /// Delay before the first retry; it doubles each time.
    #[serde(with = "humantime_serde")]
    pub retry_backoff: Duration,
    /// Connections to the origin at once for one task: the pieces are read in one stream,
    /// in order; another connection only takes part of the rest when a stream slows down.
    pub concurrency: usize,
    /// CA certificates (PEM files) trusted besides the system's, for origins and registries
    /// with a private CA.
    pub ca_certs: Vec<PathBuf>,
}

impl Default for OriginConfig {
    fn default() -> Self {
        OriginConfig {
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(30),
            request_timeout: Duration::from_secs(3600),
            retries: 3,
            retry_backoff: Duration::from_millis(200),
            concurrency: 8,
            ca_certs: Vec::new(),
        }
    }
}

impl OriginConfig {
    /// An HTTP client builder that trusts the system's CAs and [`ca_certs`](Self::ca_certs),
    /// with the connect timeout: the base of every client that talks to origins and registries.
    pub fn client_builder(&self) -> Result<reqwest::ClientBuilder> {
        crate::install_crypto_provider();
        let mut roots = Vec::new();
        for path in &self.ca_certs {
            let pem =
                std::fs::read(path).map_err(|e| Error::io("read CA certificates", path, e))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
            if certs.is_empty() {
                return Err(Error::Config(format!(
                    "{}: no PEM certificates",
                    path.display()
                )));
            }
            roots.extend(certs);
        }
        Ok(reqwest::Client::builder()
            .connect_timeout(self.connect_timeout)
            .tcp_nodelay(true)
            .tls_certs_merge(roots))
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.concurrency == 0 {
            return Err("origin.concurrency must be at least 1".into());
        }
        if self.connect_timeout.is_zero()
            || self.read_timeout.is_zero()
            || self.request_timeout.is_zero()
        {
            return Err("origin timeouts must be greater than zero".into());
        }
        Ok(())
    }
}

/// One origin resource and the headers to send with every request for it.
#[derive(Clone, Debug)]
pub struct OriginRequest {
    pub url: Url,
    pub headers: HeaderMap,
}

impl OriginRequest {
    pub fn new(url: Url) -> Self {
        OriginRequest {
            url,
            headers: HeaderMap::new(),
        }
    }

    /// The URL as it may appear in logs and errors: no user info, no signature parameters.
    pub fn display_url(&self) -> String {
        display_url(&self.url)
    }

    /// The upstream this request fetches from, as a task's provenance records it: anonymous
    /// when nothing in the request could be a credential (no `Authorization` or `Cookie`
    /// header, no user info, no query).
    pub fn source(&self) -> crate::proto::Source {
        let anonymous = !self.headers.contains_key(header::AUTHORIZATION)
            && !self.headers.contains_key(header::COOKIE)
            && self.url.username().is_empty()
            && self.url.password().is_none()
            && self.url.query().is_none();
        crate::proto::Source {
            upstream: upstream_of(&self.url),
            anonymous,
        }
    }
}

/// A URL's upstream, as task sources name it: `scheme://host[:port]` (the default port left
/// out).
pub fn upstream_of(url: &Url) -> String {
    url.origin().ascii_serialization()
}

/// What a stat learned about a resource.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stat {
    pub content_length: u64,
    /// Whether the origin answers `Range` requests with 206.
    pub ranges: bool,
}

/// An HTTP(S) client for origins (rustls with ring).
#[derive(Clone)]
pub struct Origin {
    client: reqwest::Client,
    config: OriginConfig,
}

impl Origin {
    pub fn new(config: OriginConfig) -> Result<Self> {
        let client = config
            .client_builder()?
            .read_timeout(config.read_timeout)
            .timeout(config.request_timeout)
            .redirect(reqwest::redirect::Policy::limited(10))
            .build()
            .map_err(|e| Error::InvalidRequest(format!("cannot build the HTTP client: {e}")))?;
        Ok(Origin { client, config })
    }

    pub fn config(&self) -> &OriginConfig {
        &self.config
    }

    /// Learns the length of the resource and whether the origin serves ranges.
    #[tracing::instrument(skip_all, fields(url = %req.display_url()))]
    pub async fn stat(&self, req: &OriginRequest) -> Result<Stat> {
        self.retrying(req, || async {
            let resp = self
                .send(req, reqwest::Method::GET, Some("bytes=0-0"))
                .await?;
            let status = resp.status();
            match status {
                StatusCode::PARTIAL_CONTENT => {
                    let (_, total) = content_range(req, resp.headers())?;
                    Ok(Stat {
                        content_length: total,
                        ranges: true,
                    })
                }
                // The server ignored the range: dropping the response closes the connection
                // before the body is read.
                StatusCode::OK => Ok(Stat {
                    content_length: content_length(req, resp.headers())?,
                    ranges: false,
                }),
                // `bytes */0`: an empty resource.
                StatusCode::RANGE_NOT_SATISFIABLE => {
                    let (_, total) = content_range(req, resp.headers())?;
                    Ok(Stat {
                        content_length: total,
                        ranges: true,
                    })
                }
                s if s == StatusCode::METHOD_NOT_ALLOWED || s == StatusCode::NOT_IMPLEMENTED => {
                    self.stat_head(req).await
                }
                s => Err(status_error(req, s)),
            }
        })
        .await
    }

    async fn stat_head(&self, req: &OriginRequest) -> Result<Stat> {
        let resp = self.send(req, reqwest::Method::HEAD, None).await?;
        if !resp.status().is_success() {
            return Err(status_error(req, resp.status()));
        }
        let ranges = resp
            .headers()
            .get(header::ACCEPT_RANGES)
            .is_some_and(|v| v.as_bytes() == b"bytes");
        Ok(Stat {
            content_length: content_length(req, resp.headers())?,
            ranges,
        })
    }

    /// Starts a GET of `range` (answered 206 with the matching `Content-Range`), or of the whole
    /// resource when `range` is `None`. Retries failures to *start*; the caller retries failures
    /// while reading the body.
    pub async fn open(
        &self,
        req: &OriginRequest,
        range: Option<Range<u64>>,
    ) -> Result<reqwest::Response> {
        self.retrying(req, || async {
            let value = range
                .as_ref()
                .map(|r| format!("bytes={}-{}", r.start, r.end - 1));
            let resp = self
                .send(req, reqwest::Method::GET, value.as_deref())
                .await?;
            match (&range, resp.status()) {
                (Some(r), StatusCode::PARTIAL_CONTENT) => {
                    let (got, _) = content_range(req, resp.headers())?;
                    if got != Some(r.clone()) {
                        return Err(protocol(
                            req,
                            format!("asked for bytes {r:?}, got Content-Range {got:?}"),
                        ));
                    }
                    Ok(resp)
                }
                (None, StatusCode::OK) => Ok(resp),
                (Some(_), StatusCode::OK) => {
                    Err(protocol(req, "answered a Range request with 200".into()))
                }
                (_, s) => Err(status_error(req, s)),
            }
        })
        .await
    }

    /// Runs `attempt` until it succeeds, fails for good, or the retries are spent.
    pub async fn retrying<T, F, Fut>(&self, req: &OriginRequest, mut attempt: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let mut delay = self.config.retry_backoff;
        let mut tries = 0;
        loop {
            match attempt().await {
                Err(e) if e.retryable() && tries < self.config.retries => {
                    tries += 1;
                    tracing::debug!(url = %req.display_url(), error = %e, tries, "retrying origin request");
                    tokio::time::sleep(delay).await;
                    delay = delay.saturating_mul(2);
                }
                other => return other,
            }
        }
    }

    async fn send(
        &self,
        req: &OriginRequest,
        method: reqwest::Method,
        range: Option<&str>,
    ) -> Result<reqwest::Response> {
        let mut headers = req.headers.clone();
        // Bytes must be the origin's bytes: no transfer compression, and ranges are ours to set.
        for h in [
            header::HOST,
            header::RANGE,
            header::ACCEPT_ENCODING,
            header::CONTENT_LENGTH,
        ] {
            headers.remove(h);
        }
        if let Some(r) = range {
            headers.insert(
                header::RANGE,
                HeaderValue::from_str(r).expect("range header is ASCII"),
            );
        }
        self.client
            .request(method, req.url.clone())
            .headers(headers)
            .send()
            .await
            .map_err(|e| Error::OriginTransport {
                url: req.display_url(),
                source: e.without_url(),
            })
    }
}

/// Marks credential headers (`Authorization`, `Proxy-Authorization`, `Cookie`) sensitive, so
/// `Debug` output shows them as `Sensitive` and HTTP/2 never puts them in its index tables.
pub fn mark_sensitive(headers: &mut HeaderMap) {
    for name in [
        header::AUTHORIZATION,
        header::PROXY_AUTHORIZATION,
        header::COOKIE,
    ] {
        if let http::header::Entry::Occupied(mut e) = headers.entry(name) {
            for v in e.iter_mut() {
                v.set_sensitive(true);
            }
        }
    }
}

/// `url` without user info and without the default filtered query parameters (signatures).
pub fn display_url(url: &Url) -> String {
    let mut u = url.clone();
    let _ = u.set_username("");
    let _ = u.set_password(None);
    crate::id::filtered_url(&u, None)
}

fn status_error(req: &OriginRequest, status: StatusCode) -> Error {
    Error::OriginStatus {
        url: req.display_url(),
        status: status.as_u16(),
    }
}

fn protocol(req: &OriginRequest, detail: String) -> Error {
    Error::OriginProtocol {
        url: req.display_url(),
        detail,
    }
}

fn content_length(req: &OriginRequest, headers: &HeaderMap) -> Result<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| protocol(req, "no Content-Length: the size is unknown".into()))
}

/// Parses `Content-Range: bytes <first>-<last>/<total>` or `bytes */<total>`.
fn content_range(req: &OriginRequest, headers: &HeaderMap) -> Result<(Option<Range<u64>>, u64)> {
    let raw = headers
        .get(header::CONTENT_RANGE)
        .and_then(|v| v.to_str().ok());
    parse_content_range(raw.unwrap_or(""))
        .ok_or_else(|| protocol(req, format!("bad Content-Range {raw:?}")))
}

pub(crate) fn parse_content_range(v: &str) -> Option<(Option<Range<u64>>, u64)> {
    let rest = v.trim().strip_prefix("bytes ")?;
    let (span, total) = rest.split_once('/')?;
    let total: u64 = total.parse().ok()?;
    if span == "*" {
        return Some((None, total));
    }
    let (a, b) = span.split_once('-')?;
    let (a, b): (u64, u64) = (a.parse().ok()?, b.parse().ok()?);
    (a <= b && b < total).then_some((Some(a..b + 1), total))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn content_range_forms() {
        assert_eq!(
            parse_content_range("bytes 0-0/1234"),
            Some((Some(0..1), 1234))
        );
        assert_eq!(parse_content_range("bytes */0"), Some((None, 0)));
        assert_eq!(parse_content_range("bytes 5-4/10"), None);
        assert_eq!(parse_content_range("bytes 0-10/10"), None);
        assert_eq!(parse_content_range("items 0-1/2"), None);
        assert_eq!(parse_content_range(""), None);
    }

    #[test]
    fn credentials_are_not_debug_printed() {
        let mut h = HeaderMap::new();
        h.append(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer s3cr3t"),
        );
        h.append(header::COOKIE, HeaderValue::from_static("session=s3cr3t"));
        h.append(header::ACCEPT, HeaderValue::from_static("*/*"));
        mark_sensitive(&mut h);
        let shown = format!("{h:?}");
        assert!(
            !shown.contains("s3cr3t") && shown.contains("*/*"),
            "{shown}"
        );
    }

    #[test]
    fn display_url_hides_secrets() {
        let u = Url::parse("https://user:pw@s3.example/b/k?X-Amz-Signature=s3cr3t&v=1").unwrap();
        let shown = display_url(&u);
        assert!(
            !shown.contains("pw") && !shown.contains("s3cr3t") && !shown.contains("user"),
            "{shown}"
        );
        assert!(shown.contains("v=1"));
    }

    proptest! {
        #[test]
        fn content_range_round_trip(a in 0u64..1 << 50, len in 1u64..1 << 30, extra in 0u64..1 << 20) {
            let total = a + len + extra;
            let v = format!("bytes {}-{}/{}", a, a + len - 1, total);
            prop_assert_eq!(parse_content_range(&v), Some((Some(a..a + len), total)));
        }

        #[test]
        fn content_range_never_panics(s in ".{0,40}") {
            let _ = parse_content_range(&s);
        }
    }
}
