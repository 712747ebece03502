//! What the snapshotter's lazy layers ask of the node's mirror, with the header `x-shoal-lazy`
//! on a blob GET (after the client's credentials were checked against the registry, as for
//! any blob):
//! * `index`: the layer's gzip index, from the swarm only (a seed builds it; the registry would
//!   answer the layer). 404 when the swarm has none.
//! * `present`, with a `Range`: those bytes of the layer are made present in this node's task
//!   file (pieces asked for before any other; the rest of the layer keeps coming in the
//!   background), then a 204 names the file (`x-shoal-task-file`): the bytes themselves never
//!   cross the socket, the snapshotter reads the file. `x-shoal-complete: 1` once the whole
//!   layer is here, checked against its digest.
//!
//! Neither ever passes through to the registry, and content the client's registry does not
//! vouch for is not offered.

use http::header::{self, HeaderMap, HeaderValue};
use http::request::Parts;
use http::{Response, StatusCode};
use shoal_p2p::id::GZIP_INDEX;
use shoal_p2p::origin::upstream_of;
use shoal_p2p::{DownloadRequest, IdOptions};

use crate::answer::{parse_range, vouched};
use crate::error::{Body, Error, full};
use crate::proxy::Ctx;

pub(crate) use shoal_p2p::api::LAZY_HEADER as HEADER;
use shoal_p2p::api::{COMPLETE_HEADER, MAX_GZIP_INDEX, TASK_FILE_HEADER};

/// What a lazy layer asks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Lazy {
    Index,
    Present,
}

/// The lazy request a blob GET makes, if it has the header (an unknown value is an error).
pub(crate) fn kind(headers: &HeaderMap) -> Option<Result<Lazy, Error>> {
    let v = headers.get(HEADER)?;
    Some(match v.as_bytes() {
        b"index" => Ok(Lazy::Index),
        b"present" => Ok(Lazy::Present),
        _ => Err(Error::NotLazy(format!("{HEADER} must be index or present"))),
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
        Lazy::Index => DownloadRequest {
            id_options: IdOptions {
                application: Some(GZIP_INDEX.into()),
                ..Default::default()
            },
            digest: None,
            task_id: None,
            ..blob
        },
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
        Lazy::Index => 0..len,
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
        Lazy::Index => match tokio::fs::read(&path).await {
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
