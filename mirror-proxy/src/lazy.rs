//! What the snapshotter's lazy layers ask of the node's mirror, with the header `x-shoal-lazy`
//! on a blob GET (after the client's credentials were checked against the registry, as for
//! any blob):
//! * `index`: the layer's gzip index, from the swarm only (a seed builds it; the registry would
//!   answer the layer). 404 when the swarm has none.
//! * `prefetch`: the layer's prefetch list (the spans the first host to run it read first),
//!   from the swarm only. 404 when the swarm has none.
//! * `present`, with a `Range`: those bytes of the layer are made present in this node's task
//!   file (pieces asked for before any other; the rest of the layer keeps coming in the
//!   background), then a 204 names the file (`x-shoal-task-file`): the bytes themselves never
//!   cross the socket, the snapshotter reads the file. `x-shoal-complete: 1` once the whole
//!   layer is here, checked against its digest.
//!
//! A blob PUT with `x-shoal-lazy: prefetch` publishes the layer's prefetch list (the body),
//! as this node's, for a layer this node holds for the client: 201, or 409 when the swarm has
//! a list already (the first one stands: of two published at once, the scheduler believes the
//! first to reach it, and only from a host that holds the layer).
//!
//! None ever passes through to the registry, and content the client's registry does not
//! vouch for is not offered.

use http::header::{self, HeaderMap, HeaderValue};
use http::request::Parts;
use http::{Response, StatusCode};
use shoal_p2p::api::PrefetchList;
use shoal_p2p::id::{GZIP_INDEX, PREFETCH};
use shoal_p2p::origin::upstream_of;
use shoal_p2p::{DownloadRequest, IdOptions, TaskId};

use crate::answer::{parse_range, vouched};
use crate::error::{Body, Error, full};
use crate::proxy::Ctx;

pub(crate) use shoal_p2p::api::LAZY_HEADER as HEADER;
use shoal_p2p::api::{COMPLETE_HEADER, MAX_GZIP_INDEX, TASK_FILE_HEADER};

/// What a lazy layer asks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Lazy {
    Index,
    Prefetch,
    Present,
}

/// The lazy request a blob GET makes, if it has the header (an unknown value is an error).
pub(crate) fn kind(headers: &HeaderMap) -> Option<Result<Lazy, Error>> {
    let v = headers.get(HEADER)?;
    Some(match v.as_bytes() {
        b"index" => Ok(Lazy::Index),
        b"prefetch" => Ok(Lazy::Prefetch),
        b"present" => Ok(Lazy::Present),
        _ => Err(Error::NotLazy(format!(
            "{HEADER} must be index, prefetch or present"
        ))),
    })
}

/// Answers a lazy request for the blob `blob` (its download request, credentials included).
pub(crate) async fn serve(
    ctx: &Ctx,
    blob: DownloadRequest,
    parts: &Parts,
    lazy: Lazy,
) -> Response<Body> {
    let upstream = upstream_of(&blob.origin.url);
    let req = match lazy {
        Lazy::Index => derived(blob, GZIP_INDEX),
        Lazy::Prefetch => derived(blob, PREFETCH),
        Lazy::Present => blob,
    };
    let task = req.task_id();
    let mut reading = match ctx.downloader.read(req).await {
        Ok(r) => r,
        Err(e) => return Error::Task(e).into_response(),
    };
    if !vouched(&reading.sources, &upstream) {
        return Error::NotLazy(format!(
            "the client's registry {upstream} does not vouch for {task}"
        ))
        .into_response();
    }
    let len = reading.content_length();
    let range = match lazy {
        Lazy::Index if len > MAX_GZIP_INDEX => {
            return Error::NotLazy(format!("an index of {len} bytes")).into_response();
        }
        Lazy::Prefetch if len > PrefetchList::MAX_BYTES => {
            return Error::NotLazy(format!("a prefetch list of {len} bytes")).into_response();
        }
        Lazy::Index | Lazy::Prefetch => 0..len,
        Lazy::Present => match parse_range(parts.headers.get(header::RANGE), len) {
            Ok(Some(r)) => r,
            Ok(None) => {
                return Error::NotLazy("present needs one byte range".into()).into_response();
            }
            Err(reason) => return Error::RangeNotSatisfiable { reason, len }.into_response(),
        },
    };
    let complete = reading.complete;
    if let Err(e) = reading.present(range).await {
        return Error::Task(e).into_response();
    }
    let path = ctx.downloader.store().data_path(&task);
    let answer = Response::builder()
        .header("x-dragonfly-task-id", task.as_str())
        .header("x-shoal-content-length", len);
    match lazy {
        Lazy::Index | Lazy::Prefetch => match tokio::fs::read(&path).await {
            Ok(bytes) => answer
                .header(header::CONTENT_TYPE, "application/octet-stream")
                .body(full(bytes.into()))
                .expect("valid response"),
            Err(e) => Error::Task(std::sync::Arc::new(shoal_p2p::Error::io(
                "read task file",
                &path,
                e,
            )))
            .into_response(),
        },
        Lazy::Present => {
            let Ok(file) = HeaderValue::from_str(&path.to_string_lossy()) else {
                return Error::NotLazy("the task file's path is not text".into()).into_response();
            };
            let mut answer = answer
                .status(StatusCode::NO_CONTENT)
                .header(TASK_FILE_HEADER, file);
            if complete {
                answer = answer.header(COMPLETE_HEADER, "1");
            }
            answer
                .body(full(bytes::Bytes::new()))
                .expect("valid response")
        }
    }
}

/// The request for content derived from the layer `blob` (its index, its prefetch list): the
/// blob's URL and credentials with the `application` that names it.
fn derived(blob: DownloadRequest, application: &str) -> DownloadRequest {
    DownloadRequest {
        id_options: IdOptions {
            application: Some(application.into()),
            ..Default::default()
        },
        digest: None,
        task_id: None,
        ..blob
    }
}

/// Publishes `body` as the prefetch list of the layer `blob`, which the client may read (its
/// credentials were checked) and this node holds, from an upstream the client's registry is.
pub(crate) async fn publish(ctx: &Ctx, blob: DownloadRequest, body: &[u8]) -> Response<Body> {
    let upstream = upstream_of(&blob.origin.url);
    let layer = blob.task_id();
    let Some(digest) = blob.digest else {
        return Error::BadLazy("a prefetch list is published for a layer's blob URL".into())
            .into_response();
    };
    let meta = match ctx.downloader.store().meta(&layer).await {
        Ok(Some(meta)) if vouched(&meta.sources, &upstream) => meta,
        Ok(_) => {
            return Error::NotLazy(format!("this node holds no layer {layer} from {upstream}"))
                .into_response();
        }
        Err(e) => return Error::Task(std::sync::Arc::new(e)).into_response(),
    };
    if let Err(why) = PrefetchList::from_bytes(body, meta.layout.content_length) {
        return Error::BadLazy(format!("layer {layer}: {why}")).into_response();
    }
    // Asked first (which also names the task to the swarm): the first list stands.
    let req = derived(blob, PREFETCH);
    match ctx.downloader.read(req.clone()).await {
        Ok(_) => {
            return Error::Published(format!("layer {layer} has a prefetch list already"))
                .into_response();
        }
        Err(e) if matches!(&*e, shoal_p2p::Error::NotInSwarm { .. }) => {}
        Err(e) => return Error::Task(e).into_response(),
    }
    let id = TaskId::prefetch(&digest);
    let published = ctx
        .downloader
        .publish(&id, req.origin.display_url(), body.to_vec(), meta.sources)
        .await;
    match published {
        Ok(_) => {
            tracing::info!(%layer, bytes = body.len(), "prefetch list published");
            Response::builder()
                .status(StatusCode::CREATED)
                .header("x-dragonfly-task-id", id.as_str())
                .body(full(bytes::Bytes::new()))
                .expect("valid response")
        }
        Err(e) => Error::Task(std::sync::Arc::new(e)).into_response(),
    }
}
