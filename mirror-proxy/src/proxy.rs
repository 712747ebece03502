//! Request handling, shared by the three ways requests arrive: mirror mode (`/v2/…` with no
//! host), the forward proxy (absolute URLs), and requests inside a hijacked CONNECT.
//!
//! A GET of `/v2/<name>/blobs/sha256:<hex>` becomes a swarm task whose id is the digest, after the
//! client's own credentials were checked against the registry; GETs matching `proxy.rules` (or
//! sent with `X-Dragonfly-Use-P2P: true`) become URL tasks. Everything else goes straight to the
//! upstream and its answer comes back unchanged.

use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::{StreamExt as _, TryStreamExt as _};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;
use http::{Method, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use shoal_p2p::http1::FileBody;
use shoal_p2p::origin::{OriginRequest, upstream_of};
use shoal_p2p::proto::Source;
use shoal_p2p::{Digest, DownloadRequest, Downloader, IdOptions, TaskId};
use url::Url;

use crate::access::{Access, Probe};
use crate::ca::Ca;
use crate::config::{Compiled, ProxyConfig};
use crate::error::{Body, BoxError, Error};
use crate::manifests::{MAX_MANIFEST, Manifests};
use crate::metrics::{Kind, ProxyMetrics};
use crate::route::{self, BadPath, Reference, V2};

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
    let (parts, body) = req.into_parts();
    let body = Some(reqwest::Body::wrap_stream(body.into_data_stream()));
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
                passthrough(&ctx, url, parts, body).await
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
                passthrough(&ctx, url, parts, body).await
            }
        }
    }
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
    let req = DownloadRequest {
        origin: OriginRequest { url, headers },
        id_options: IdOptions::default(),
        digest: Some(*digest),
        task_id: Some(TaskId::for_blob(digest)),
    };
    let mut extra = HeaderMap::new();
    let d = HeaderValue::from_str(&digest.to_string()).expect("a digest is ASCII");
    extra.insert("docker-content-digest", d.clone());
    extra.insert(
        header::ETAG,
        HeaderValue::from_str(&format!("\"{digest}\"")).expect("ASCII"),
    );
    serve_task(ctx, req, parts, extra, Vouch::Sources).await
}

/// Whether the blob `digest` is complete here and came only from upstreams that served it with
/// no credentials.
async fn public_and_held(ctx: &Ctx, digest: &Digest) -> bool {
    let meta = ctx.downloader.store().meta(&TaskId::for_blob(digest)).await;
    matches!(meta, Ok(Some(m)) if m.complete
        && !m.sources.is_empty()
        && m.sources.iter().all(|s| s.anonymous))
}

/// A manifest from the registry, kept (by its digest; by tag where `proxy.tags_when_down`
/// says) for when the registry is down; while it is (unreachable, or 502/503/504), from what
/// was kept, to clients allowed it (see [`kept_manifest`]).
async fn manifest(
    ctx: &Ctx,
    url: Url,
    name: &str,
    reference: &Reference,
    parts: &Parts,
) -> Response<Body> {
    let sent = ctx
        .client
        .request(parts.method.clone(), url.clone())
        .headers(upstream_headers(&parts.headers))
        .send()
        .await;
    let resp = match sent {
        Ok(resp) if !registry_down(resp.status()) => resp,
        Ok(resp) => {
            return kept_manifest(ctx, &url, name, reference, parts).unwrap_or_else(|| relay(resp));
        }
        Err(e) => {
            return kept_manifest(ctx, &url, name, reference, parts)
                .unwrap_or_else(|| Error::unreachable(&url, e).into_response());
        }
    };
    if !resp.status().is_success() {
        return relay(resp);
    }
    let credentials = origin_headers(&parts.headers);
    ctx.access.remember(&url, &credentials, Probe::FirstByte);
    let public = !credentials.contains_key(header::AUTHORIZATION)
        && !credentials.contains_key(header::COOKIE);
    let upstream = upstream_of(&url);
    let keep_tag = |digest: &Digest| {
        if let Reference::Tag(tag) = reference
            && ctx.compiled.keeps_tags(&url)
            && let Err(e) = ctx.manifests.keep_tag(&upstream, name, tag, digest, public)
        {
            tracing::warn!(error = %e, "cannot keep a tag");
        }
    };
    let length = resp.content_length().and_then(|n| usize::try_from(n).ok());
    let small = length.is_some_and(|n| n <= MAX_MANIFEST);
    if parts.method == Method::HEAD || resp.status() != StatusCode::OK || !small {
        let named = resp
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok()?.parse::<Digest>().ok())
            .filter(|d| d.algorithm() == shoal_p2p::Algorithm::Sha256);
        if let Some(d) = named {
            keep_tag(&d);
        }
        return relay(resp);
    }
    let status = resp.status();
    let headers = strip_hop_by_hop(resp.headers());
    let body = match resp.bytes().await {
        Ok(b) => b,
        Err(e) => return Error::unreachable(&url, e).into_response(),
    };
    let digest = Digest::of(shoal_p2p::Algorithm::Sha256, &body);
    let asked_for = match reference {
        Reference::Digest(d) => *d == digest,
        Reference::Tag(_) => true,
    };
    if asked_for {
        let media_type = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        if let Err(e) = ctx
            .manifests
            .keep(&upstream, name, &digest, &body, media_type, public)
        {
            tracing::warn!(error = %e, "cannot keep a manifest");
        }
        keep_tag(&digest);
    }
    let mut builder = Response::builder().status(status);
    if let Some(h) = builder.headers_mut() {
        *h = headers;
    }
    builder.body(full_body(body)).expect("valid response")
}

/// An upstream answer that says the registry is down, not that the request is wrong.
fn registry_down(status: StatusCode) -> bool {
    matches!(
        status,
        StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE | StatusCode::GATEWAY_TIMEOUT
    )
}

/// The kept manifest for `url`, while its registry cannot be asked: to any client where it was
/// fetched with no credentials (by tag: the tag too), else only with credentials the registry
/// granted this URL within `auth_cache_ttl`. `None`: not kept, or not for this client.
fn kept_manifest(
    ctx: &Ctx,
    url: &Url,
    name: &str,
    reference: &Reference,
    parts: &Parts,
) -> Option<Response<Body>> {
    let upstream = upstream_of(url);
    let (digest, tag_public) = match reference {
        Reference::Digest(d) => (*d, true),
        Reference::Tag(tag) if ctx.compiled.keeps_tags(url) => {
            ctx.manifests.tag(&upstream, name, tag)?
        }
        Reference::Tag(_) => return None,
    };
    let kept = ctx.manifests.get(&upstream, name, &digest)?;
    let credentials = origin_headers(&parts.headers);
    let granted = ctx.access.remembered(url, &credentials, Probe::FirstByte);
    if !(kept.public && tag_public || granted) {
        return None;
    }
    tracing::info!(%upstream, repository = name, %digest, "registry down: a kept manifest answers");
    let len = kept.body.len();
    let body = if parts.method == Method::HEAD {
        Bytes::new()
    } else {
        kept.body
    };
    let mut builder = Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_LENGTH, len)
        .header("docker-content-digest", digest.to_string())
        .header(header::ETAG, format!("\"{digest}\""))
        .header("docker-distribution-api-version", "registry/2.0");
    if !kept.media_type.is_empty() {
        builder = builder.header(header::CONTENT_TYPE, kept.media_type);
    }
    Some(builder.body(full_body(body)).expect("valid response"))
}

fn full_body(bytes: Bytes) -> Body {
    UnsyncBoxBody::new(http_body_util::Full::new(bytes).map_err(|never| match never {}))
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

/// Which upstream vouches for a task's content, to a client its origin just answered.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Vouch {
    /// The task's id is its URL's: the origin the client named is the content's.
    Url,
    /// A blob, whose id is only its digest: every upstream the content came from must be the
    /// client's registry, or have served it with no credentials (see [`vouched`]).
    Sources,
}

/// Whether a client that `upstream` (its registry) serves may have content that came from
/// `sources`: each of them is that registry, or served the content with no credentials (it is
/// public). A registry the client names for the first time vouches for nothing that came from
/// elsewhere; content from nowhere known goes to nobody.
fn vouched(sources: &[Source], upstream: &str) -> bool {
    !sources.is_empty()
        && sources
            .iter()
            .all(|s| s.anonymous || s.upstream == upstream)
}

/// Answers a GET from a task: 200, or 206 for a `Range`, bytes flowing as pieces are verified.
/// Content its upstreams do not vouch for to this client is the upstream's to answer.
async fn serve_task(
    ctx: &Ctx,
    req: DownloadRequest,
    parts: &Parts,
    extra: HeaderMap,
    vouch: Vouch,
) -> Response<Body> {
    let task = req.task_id();
    let url = req.origin.url.clone();
    let reading = match ctx.downloader.read(req).await {
        Ok(r) => r,
        Err(e) if matches!(*e, shoal_p2p::Error::Busy { .. }) => {
            // As many downloads as may run: this client is served as if there were no swarm.
            tracing::debug!(%task, "background downloads all busy; the upstream answers");
            return passthrough(ctx, url, parts.clone(), None).await;
        }
        Err(e) if e.fault() == shoal_p2p::Fault::Local => {
            // This host cannot hold the task (its disk, say): the upstream answers.
            tracing::warn!(%task, error = %e, "the task cannot be downloaded here; the upstream answers");
            return passthrough(ctx, url, parts.clone(), None).await;
        }
        Err(e) => return Error::Task(e).into_response(),
    };
    if vouch == Vouch::Sources && !vouched(&reading.sources, &upstream_of(&url)) {
        tracing::info!(%task, upstream = upstream_of(&url), "the content came from elsewhere; the client's registry answers");
        return passthrough(ctx, url, parts.clone(), None).await;
    }
    let len = reading.content_length();
    let span = match parse_range(parts.headers.get(header::RANGE), len) {
        Ok(span) => span,
        Err(reason) => return Error::RangeNotSatisfiable { reason, len }.into_response(),
    };
    let mut builder = Response::builder()
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::ACCEPT_RANGES, "bytes")
        .header("x-dragonfly-task-id", task.as_str())
        .header("docker-distribution-api-version", "registry/2.0");
    let range = match span {
        Some(r) => {
            builder = builder.status(StatusCode::PARTIAL_CONTENT).header(
                header::CONTENT_RANGE,
                format!("bytes {}-{}/{len}", r.start, r.end - 1),
            );
            r
        }
        None => 0..len,
    };
    builder = builder.header(header::CONTENT_LENGTH, range.end - range.start);
    if let Some(h) = builder.headers_mut() {
        h.extend(extra);
    }
    let served = ctx.metrics.served_bytes.clone();
    // A complete task's bytes go out straight from its file on plain connections.
    let file = if reading.complete {
        ctx.downloader.store().reader(&task).ok()
    } else {
        None
    };
    let mut response = builder;
    if let Some(file) = file {
        response = response.extension(FileBody {
            file: Arc::new(file),
            range: range.clone(),
            sent: served.clone(),
        });
    }
    // The stream starts at the first poll: not at all when the file is sent instead.
    let rest = Rest {
        client: ctx.client.clone(),
        url,
        headers: upstream_headers(&parts.headers),
    };
    let start = Phase::Start(Box::new((reading, range.clone())), rest);
    let frames = futures_util::stream::unfold((start, range.start, range.end), move |state| {
        let served = served.clone();
        async move {
            let (mut phase, mut pos, end) = state;
            loop {
                phase = match phase {
                    Phase::Start(started, rest) => {
                        let (reading, range) = *started;
                        Phase::Task(reading.stream(range), rest)
                    }
                    Phase::Task(mut rx, rest) => match rx.recv().await {
                        Some(Ok(b)) => {
                            served.inc_by(b.len() as u64);
                            pos += b.len() as u64;
                            return Some((Ok(Frame::data(b)), (Phase::Task(rx, rest), pos, end)));
                        }
                        Some(Err(e)) if pos < end => {
                            // This host failed the download (its disk, say): the upstream sends
                            // the rest, as it would have without the swarm.
                            tracing::warn!(error = %e, at = pos, "the download failed mid-answer; the upstream sends the rest");
                            match rest.open(pos..end).await {
                                Ok(body) => Phase::Upstream(Box::pin(body)),
                                Err(e) => return Some((Err(e), (Phase::Done, pos, end))),
                            }
                        }
                        Some(Err(e)) => return Some((Err(e.into()), (Phase::Done, pos, end))),
                        None => return None,
                    },
                    Phase::Upstream(mut body) => {
                        return match body.next().await {
                            Some(Ok(b)) => {
                                pos += b.len() as u64;
                                Some((Ok(Frame::data(b)), (Phase::Upstream(body), pos, end)))
                            }
                            Some(Err(e)) => Some((Err(e.into()), (Phase::Done, pos, end))),
                            None => None,
                        };
                    }
                    Phase::Done => return None,
                };
            }
        }
    });
    response
        .body(UnsyncBoxBody::new(StreamBody::new(frames)))
        .expect("valid response")
}

/// Where an answer's bytes come from, in turn.
enum Phase {
    /// Not polled yet.
    Start(Box<(shoal_p2p::Reading, Range<u64>)>, Rest),
    /// The task, as its pieces are verified.
    Task(tokio::sync::mpsc::Receiver<std::io::Result<Bytes>>, Rest),
    /// The rest from the upstream, the download having failed.
    Upstream(std::pin::Pin<Box<dyn futures_util::Stream<Item = reqwest::Result<Bytes>> + Send>>),
    Done,
}

/// How to ask the upstream for the rest of an answer: as the client asked, with a `Range`.
struct Rest {
    client: reqwest::Client,
    url: Url,
    headers: HeaderMap,
}

impl Rest {
    /// The bytes `range` of the content from the upstream: a 206 for exactly that range.
    async fn open(
        &self,
        range: Range<u64>,
    ) -> Result<impl futures_util::Stream<Item = reqwest::Result<Bytes>> + Send + use<>, BoxError>
    {
        let resp = self
            .client
            .get(self.url.clone())
            .headers(self.headers.clone())
            .header(
                header::RANGE,
                format!("bytes={}-{}", range.start, range.end - 1),
            )
            .send()
            .await?;
        let expected = format!("bytes {}-{}/", range.start, range.end - 1);
        let exact = resp.status() == StatusCode::PARTIAL_CONTENT
            && resp
                .headers()
                .get(header::CONTENT_RANGE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.starts_with(&expected));
        if !exact {
            return Err(format!("the upstream answered {} for the rest", resp.status()).into());
        }
        Ok(resp.bytes_stream())
    }
}

/// `Range: bytes=…` against a content of `len` bytes, as RFC 9110 §14 has it: one range (`a-b`,
/// `a-`, `-n`) is served; a range unit other than bytes, several ranges, or a malformed
/// specifier are ignored (`None`: the whole content, 200); a range that starts past the end (or
/// a zero-length suffix) is unsatisfiable: the reason, for a 416.
pub(crate) fn parse_range(
    value: Option<&HeaderValue>,
    len: u64,
) -> Result<Option<Range<u64>>, String> {
    let Some(text) = value.and_then(|v| v.to_str().ok()) else {
        return Ok(None);
    };
    let Some(spec) = text.trim().strip_prefix("bytes=") else {
        return Ok(None);
    };
    let Some((a, b)) = spec.trim().split_once('-').filter(|_| !spec.contains(',')) else {
        return Ok(None);
    };
    let (a, b) = (a.trim(), b.trim());
    let num = |s: &str| s.parse::<u64>().ok();
    let range = match (a.is_empty(), b.is_empty()) {
        (true, false) => match num(b) {
            Some(n) => len.saturating_sub(n)..len,
            None => return Ok(None),
        },
        (false, true) => match num(a) {
            Some(a) => a..len,
            None => return Ok(None),
        },
        (false, false) => match (num(a), num(b)) {
            (Some(a), Some(b)) if a <= b => a..len.min(b.saturating_add(1)),
            _ => return Ok(None),
        },
        (true, true) => return Ok(None),
    };
    if range.start >= range.end {
        return Err(format!(
            "Range {text:?} is outside the {len} bytes of content"
        ));
    }
    Ok(Some(range))
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

fn relay(resp: reqwest::Response) -> Response<Body> {
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

fn strip_hop_by_hop(headers: &HeaderMap) -> HeaderMap {
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
fn upstream_headers(headers: &HeaderMap) -> HeaderMap {
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
fn origin_headers(headers: &HeaderMap) -> HeaderMap {
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
    ] {
        out.remove(h);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(v: &str, len: u64) -> Result<Option<Range<u64>>, String> {
        parse_range(Some(&HeaderValue::from_str(v).unwrap()), len)
    }

    #[test]
    fn ranges() {
        assert_eq!(parse_range(None, 10), Ok(None));
        assert_eq!(range("bytes=0-0", 10), Ok(Some(0..1)));
        assert_eq!(range("bytes=2-5", 10), Ok(Some(2..6)));
        assert_eq!(range("bytes=2-50", 10), Ok(Some(2..10)));
        assert_eq!(range("bytes=7-", 10), Ok(Some(7..10)));
        assert_eq!(range("bytes=-3", 10), Ok(Some(7..10)));
        assert_eq!(range("bytes=-30", 10), Ok(Some(0..10)));
        // Unsatisfiable: 416.
        for bad in ["bytes=10-", "bytes=99-100", "bytes=-0"] {
            assert!(range(bad, 10).is_err(), "{bad}");
        }
        assert!(range("bytes=0-", 0).is_err());
        // Another unit, several ranges, or a malformed specifier: ignored, the whole content.
        for ignored in [
            "bytes=5-2",
            "bytes=-",
            "bytes=a-b",
            "bytes=0-1,3-4",
            "items=0-1",
            "bytes=18446744073709551616-",
            "",
        ] {
            assert_eq!(range(ignored, 10), Ok(None), "{ignored}");
        }
    }

    #[test]
    fn a_blob_is_vouched_for_by_every_registry_it_came_from() {
        let src = |upstream: &str, anonymous| Source {
            upstream: upstream.into(),
            anonymous,
        };
        let r = "https://r.example";
        assert!(!vouched(&[], r), "content from nowhere known");
        assert!(vouched(&[src(r, false)], r));
        assert!(!vouched(&[src(r, false)], "https://evil.example"));
        // Public there: any client's registry will do.
        assert!(vouched(&[src(r, true)], "https://evil.example"));
        // Content from two upstreams: each must vouch.
        let both = [src(r, false), src("https://s.example", true)];
        assert!(vouched(&both, r));
        assert!(!vouched(&both, "https://s.example"));
        let two_private = [src(r, false), src("https://s.example", false)];
        assert!(!vouched(&two_private, r));
    }

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

    proptest::proptest! {
        /// Any `Range` value against any length: no panic, and a range served is within the
        /// content and not empty.
        #[test]
        fn any_range_header_is_served_within_the_content(v in "[ -~]{0,40}", len in 0u64..1 << 40) {
            if let Ok(value) = HeaderValue::from_str(&v)
                && let Ok(Some(r)) = parse_range(Some(&value), len)
            {
                proptest::prop_assert!(r.start < r.end && r.end <= len, "{:?} of {}", r, len);
            }
        }
    }
}
