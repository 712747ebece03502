//! Request handling, shared by the three ways requests arrive: mirror mode (`/v2/…` with no
//! host), the forward proxy (absolute URLs), and requests inside a hijacked CONNECT.
//!
//! A GET of `/v2/<name>/blobs/sha256:<hex>` becomes a swarm task whose id is the digest, after the
//! client's own credentials were checked against the registry; GETs matching `proxy.rules` (or
//! sent with `X-Dragonfly-Use-P2P: true`) become URL tasks. Everything else goes straight to the
//! upstream and its answer comes back unchanged.

use std::sync::Arc;

use bytes::Bytes;
use futures_util::TryStreamExt as _;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;
use http::{Method, Request, Response};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use shoal_p2p::origin::OriginRequest;
use shoal_p2p::{Digest, DownloadRequest, Downloader, IdOptions, TaskId};
use url::Url;

use crate::access::{Access, Probe};
use crate::answer::{Vouch, serve_task};
use crate::ca::Ca;
use crate::config::{Compiled, ProxyConfig};
use crate::error::{Body, BoxError, Error};
use crate::lazy::Lazy;
use crate::manifests::{Manifests, manifest};
use crate::metrics::{Kind, ProxyMetrics};
use crate::route::{self, BadPath, V2};
use shoal_p2p::api::PrefetchList;

/// Everything a request handler needs.
pub(crate) struct Ctx {
    pub config: ProxyConfig,
    pub limits: shoal_p2p::net::Limits,
    pub compiled: Compiled,
    pub downloader: Arc<Downloader>,
    /// To upstreams: redirects are the client's to follow.
    pub client: reqwest::Client,
    pub access: Access,
    /// Manifests kept for when their registry is down.
    pub manifests: Manifests,
    pub ca: Option<Ca>,
    pub metrics: ProxyMetrics,
}

/// Answers one request (not CONNECT). `hijacked` is the origin of a hijacked CONNECT.
pub(crate) async fn handle<B>(
    ctx: Arc<Ctx>,
    req: Request<B>,
    hijacked: Option<Url>,
) -> Response<Body>
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    if head_size(&req) > ctx.limits.max_header_bytes {
        return Error::HeadTooLarge.into_response();
    }
    let (parts, raw) = req.into_parts();
    let uri = parts.uri.clone();
    let path = uri.path();
    let is_v2 = path == "/v2" || path.starts_with("/v2/");
    let base = match (hijacked, uri.scheme_str(), uri.authority()) {
        (Some(base), _, _) => base,
        (None, Some(scheme), Some(authority)) => {
            match Url::parse(&format!("{scheme}://{authority}")) {
                Ok(u) if matches!(scheme, "http" | "https") => u,
                _ => return Error::BadTarget(format!("bad URL {uri}")).into_response(),
            }
        }
        (None, _, _) if !is_v2 => return Error::NotMirrored.into_response(),
        (None, _, _) => match route::upstream(&ctx.compiled, &parts.headers, uri.query()) {
            Ok(u) => u,
            Err(e) => return Error::BadTarget(e).into_response(),
        },
    };
    if !ctx.compiled.allows_url(&base) {
        return Error::NotAllowed(shoal_p2p::origin::upstream_of(&base)).into_response();
    }
    if is_v2 {
        let query = route::query_without_ns(uri.query());
        match route::classify(path) {
            Err(BadPath(code, message)) => Error::BadPath { code, message }.into_response(),
            Ok(V2::Blob { name, digest }) if parts.method == Method::GET => {
                ctx.metrics.request(Kind::Blob);
                let url = route::join(&base, path, query.as_deref());
                blob(&ctx, url, &digest, &name, &parts).await
            }
            Ok(V2::Blob { name, digest })
                if parts.method == Method::PUT
                    && matches!(crate::lazy::kind(&parts.headers), Some(Ok(Lazy::Prefetch))) =>
            {
                ctx.metrics.request(Kind::Blob);
                let url = route::join(&base, path, query.as_deref());
                let limit = PrefetchList::MAX_BYTES as usize;
                let read = http_body_util::Limited::new(raw, limit).collect().await;
                match read {
                    Ok(b) => {
                        publish_prefetch(&ctx, url, &digest, &name, &parts, &b.to_bytes()).await
                    }
                    Err(e) => Error::BadLazy(format!("the prefetch list: {e}")).into_response(),
                }
            }
            Ok(V2::Manifest { name, reference })
                if parts.method == Method::GET || parts.method == Method::HEAD =>
            {
                ctx.metrics.request(Kind::Manifest);
                let url = route::join(&base, path, query.as_deref());
                manifest(&ctx, url, &name, &reference, &parts).await
            }
            Ok(_) => {
                ctx.metrics.request(Kind::Pass);
                let url = route::join(&base, path, query.as_deref());
                passthrough(&ctx, url, parts, upload(raw)).await
            }
        }
    } else {
        let url = route::join(&base, path, uri.query());
        match rule_options(&ctx, &parts, &url) {
            Some(id_options) => {
                ctx.metrics.request(Kind::Rule);
                url_task(&ctx, url, id_options, &parts).await
            }
            None => {
                ctx.metrics.request(Kind::Pass);
                passthrough(&ctx, url, parts, upload(raw)).await
            }
        }
    }
}

/// A request's body, passed on upstream.
fn upload<B>(raw: B) -> Option<reqwest::Body>
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    Some(reqwest::Body::wrap_stream(raw.into_data_stream()))
}

/// The size of a request's head: its target and headers. (hyper bounds its read buffer, not
/// a head that arrives whole.)
pub(crate) fn head_size<B>(req: &Request<B>) -> usize {
    let target = req.uri().to_string().len();
    target
        + req
            .headers()
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len() + 4)
            .sum::<usize>()
}

/// A registry blob through the swarm, once the client proved it may read it.
async fn blob(ctx: &Ctx, url: Url, digest: &Digest, name: &str, parts: &Parts) -> Response<Body> {
    let headers = origin_headers(&parts.headers);
    let checked = ctx.access.check(&url, &headers, Probe::Head).await;
    // The registry cannot be asked: content held here that was public is served still.
    let public = checked.is_err() && public_and_held(ctx, digest).await;
    match checked {
        Ok(true) => {}
        Ok(false) => {
            tracing::debug!(repository = name, %digest, "client may not read the blob; the registry answers");
            return passthrough(ctx, url, parts.clone(), None).await;
        }
        Err(_) if public => {
            tracing::info!(repository = name, %digest, "registry unreachable: a public blob held here answers");
        }
        Err(e) => return Error::unreachable(&url, e).into_response(),
    }
    let req = blob_request(url, headers, digest);
    match crate::lazy::kind(&parts.headers) {
        Some(Ok(lazy)) => return crate::lazy::serve(ctx, req, parts, lazy).await,
        Some(Err(e)) => return e.into_response(),
        None => {}
    }
    let mut extra = HeaderMap::new();
    let d = HeaderValue::from_str(&digest.to_string()).expect("a digest is ASCII");
    extra.insert("docker-content-digest", d.clone());
    extra.insert(
        header::ETAG,
        HeaderValue::from_str(&format!("\"{digest}\"")).expect("ASCII"),
    );
    serve_task(ctx, req, parts, extra, Vouch::Sources).await
}

/// Publishes a layer's prefetch list for a client the registry lets read the layer.
async fn publish_prefetch(
    ctx: &Ctx,
    url: Url,
    digest: &Digest,
    name: &str,
    parts: &Parts,
    list: &[u8],
) -> Response<Body> {
    let headers = origin_headers(&parts.headers);
    match ctx.access.check(&url, &headers, Probe::Head).await {
        Ok(true) => {}
        Ok(false) => return Error::Denied(format!("{name}@{digest}")).into_response(),
        Err(e) => return Error::unreachable(&url, e).into_response(),
    }
    crate::lazy::publish(ctx, blob_request(url, headers, digest), list).await
}

/// The download of the blob `digest` at `url`, with the client's `headers`.
fn blob_request(url: Url, headers: HeaderMap, digest: &Digest) -> DownloadRequest {
    DownloadRequest {
        origin: OriginRequest { url, headers },
        id_options: IdOptions::default(),
        digest: Some(*digest),
        task_id: Some(TaskId::for_blob(digest)),
    }
}

/// Whether the blob `digest` is complete here and came only from upstreams that served it with
/// no credentials.
async fn public_and_held(ctx: &Ctx, digest: &Digest) -> bool {
    let meta = ctx.downloader.store().meta(&TaskId::for_blob(digest)).await;
    matches!(meta, Ok(Some(m)) if m.complete
        && !m.sources.is_empty()
        && m.sources.iter().all(|s| s.anonymous))
}

/// A rule-matched URL through the swarm, to a client the origin serves this URL itself: its
/// first byte, asked for exactly as the client asked (signature, credentials). A task's id leaves
/// out signatures and other volatile parameters, so without this check anyone who knew a
/// presigned URL could read it from the swarm without its signature.
async fn url_task(ctx: &Ctx, url: Url, id_options: IdOptions, parts: &Parts) -> Response<Body> {
    let headers = origin_headers(&parts.headers);
    match ctx.access.check(&url, &headers, Probe::FirstByte).await {
        Ok(true) => {}
        Ok(false) => return passthrough(ctx, url, parts.clone(), None).await,
        Err(e) => return Error::unreachable(&url, e).into_response(),
    }
    let req = DownloadRequest {
        origin: OriginRequest { url, headers },
        id_options,
        digest: None,
        task_id: None,
    };
    // The URL is the task's identity: the origin that answered the client is its source.
    serve_task(ctx, req, parts, HeaderMap::new(), Vouch::Url).await
}

/// Whether a non-registry request becomes a URL task, and with which identity options.
fn rule_options(ctx: &Ctx, parts: &Parts, url: &Url) -> Option<IdOptions> {
    if parts.method != Method::GET {
        return None;
    }
    let text = |name: &str| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let forced = text("x-dragonfly-use-p2p").is_some_and(|v| v.eq_ignore_ascii_case("true"));
    let mut bare = url.clone();
    bare.set_query(None);
    bare.set_fragment(None);
    let rule = ctx
        .compiled
        .rules
        .iter()
        .find(|(re, _)| re.is_match(bare.as_str()));
    if rule.is_none() && !forced {
        return None;
    }
    let filtered = text("x-dragonfly-filtered-query-params")
        .map(|v| {
            v.split([',', '&'])
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect()
        })
        .or_else(|| rule.and_then(|(_, f)| f.clone()));
    Some(IdOptions {
        tag: text("x-dragonfly-tag"),
        application: text("x-dragonfly-application"),
        filtered_query_params: filtered,
    })
}

/// The client's request to the upstream as it is; the answer back as it is.
pub(crate) async fn passthrough(
    ctx: &Ctx,
    url: Url,
    parts: Parts,
    body: Option<reqwest::Body>,
) -> Response<Body> {
    let has_body = parts.headers.contains_key(header::CONTENT_LENGTH)
        || parts.headers.contains_key(header::TRANSFER_ENCODING);
    let mut rb = ctx
        .client
        .request(parts.method, url.clone())
        .headers(upstream_headers(&parts.headers));
    if let (true, Some(body)) = (has_body, body) {
        rb = rb.body(body);
    }
    match rb.send().await {
        Ok(resp) => relay(resp),
        Err(e) => Error::unreachable(&url, e).into_response(),
    }
}

pub(crate) fn relay(resp: reqwest::Response) -> Response<Body> {
    let mut builder = Response::builder().status(resp.status());
    if let Some(h) = builder.headers_mut() {
        *h = strip_hop_by_hop(resp.headers());
    }
    let body = resp
        .bytes_stream()
        .map_ok(Frame::data)
        .map_err(BoxError::from);
    builder
        .body(UnsyncBoxBody::new(StreamBody::new(body)))
        .expect("valid response")
}

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1), plus those a
/// proxy consumes. The `Connection` header may name more.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

pub(crate) fn strip_hop_by_hop(headers: &HeaderMap) -> HeaderMap {
    let named: Vec<String> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|s| s.trim().to_ascii_lowercase())
        .collect();
    let mut out = HeaderMap::with_capacity(headers.len());
    for (name, value) in headers {
        let n = name.as_str();
        if HOP_BY_HOP.contains(&n) || named.iter().any(|x| x == n) {
            continue;
        }
        out.append(name.clone(), value.clone());
    }
    out
}

/// The client's headers as the upstream should see them: no hop-by-hop headers, no `Host`
/// (the upstream's own is set, as Harbor builds its token realm from it), no `X-Dragonfly-*`.
pub(crate) fn upstream_headers(headers: &HeaderMap) -> HeaderMap {
    let mut out = strip_hop_by_hop(headers);
    out.remove(header::HOST);
    let ours: Vec<HeaderName> = out
        .keys()
        .filter(|k| k.as_str().starts_with("x-dragonfly-"))
        .cloned()
        .collect();
    for k in ours {
        out.remove(k);
    }
    shoal_p2p::origin::mark_sensitive(&mut out);
    out
}

/// Headers for whoever fetches a task from the origin (credentials included, in memory only):
/// no body or range headers, no conditionals, no transfer compression.
pub(crate) fn origin_headers(headers: &HeaderMap) -> HeaderMap {
    let mut out = upstream_headers(headers);
    for h in [
        header::RANGE,
        header::IF_RANGE,
        header::IF_MATCH,
        header::IF_NONE_MATCH,
        header::IF_MODIFIED_SINCE,
        header::IF_UNMODIFIED_SINCE,
        header::ACCEPT_ENCODING,
        header::CONTENT_LENGTH,
        header::CONTENT_TYPE,
        HeaderName::from_static(crate::lazy::HEADER),
    ] {
        out.remove(h);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_for_the_upstream() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, "127.0.0.1:4001".parse().unwrap());
        h.insert(header::AUTHORIZATION, "Bearer t".parse().unwrap());
        h.insert(header::CONNECTION, "close, x-hop".parse().unwrap());
        h.insert("x-hop", "1".parse().unwrap());
        h.insert("x-dragonfly-registry", "https://r".parse().unwrap());
        h.insert(header::RANGE, "bytes=0-1".parse().unwrap());
        h.insert(header::ACCEPT_ENCODING, "gzip".parse().unwrap());
        let up = upstream_headers(&h);
        assert_eq!(up.len(), 3, "{up:?}");
        assert!(up.contains_key(header::AUTHORIZATION) && up.contains_key(header::RANGE));
        let origin = origin_headers(&h);
        assert_eq!(origin.len(), 1, "{origin:?}");
    }
}
