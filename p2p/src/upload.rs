//! The upload server (port 4000): other peers fetch verified pieces here.
//!
//! `GET /tasks/<task>/pieces/<n>` answers the piece's bytes (200), `404` at once when this host
//! does not hold that piece, and `503` when all upload slots are busy (the peer asks another
//! parent). Only pieces that are stored (written and recorded after verification) are served.
//! Requests are read by [`crate::http1`], which sends the piece from the task file in 1 MiB
//! blocks on the connection's own task; anything else it hands to hyper, where the bytes stream
//! in 256 KiB blocks read on a blocking thread. Either way an upload costs little memory.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use tokio::sync::{Semaphore, mpsc};

use crate::bitmap::Bitmap;
use crate::http1::FileBody;
use crate::id::TaskId;
use crate::metrics::Metrics;
use crate::store::Store;

const BLOCK: usize = 256 << 10;
/// Connections open at once; more wait in the kernel's accept queue.
const MAX_CONNECTIONS: usize = 1024;

/// Pieces of unfinished tasks this host holds (complete tasks are known to the store). Local
/// readers [`subscribe`](Holdings::subscribe) to learn when a piece arrives.
pub struct Holdings {
    active: Mutex<HashMap<TaskId, Bitmap>>,
    changed: tokio::sync::watch::Sender<u64>,
}

impl Default for Holdings {
    fn default() -> Self {
        Holdings {
            active: Mutex::default(),
            changed: tokio::sync::watch::Sender::new(0),
        }
    }
}

impl Holdings {
    pub fn start(&self, id: &TaskId, have: Bitmap) {
        self.lock().insert(id.clone(), have);
        self.bump();
    }

    pub fn add(&self, id: &TaskId, n: u32) {
        if let Some(b) = self.lock().get_mut(id) {
            b.set(n);
        }
        self.bump();
    }

    pub fn stop(&self, id: &TaskId) {
        self.lock().remove(id);
        self.bump();
    }

    /// Whether piece `n` of the unfinished task `id` is stored here.
    pub fn has(&self, id: &TaskId, n: u32) -> bool {
        self.lock().get(id).is_some_and(|b| b.get(n))
    }

    /// Whether `id` is downloading here.
    pub fn is_active(&self, id: &TaskId) -> bool {
        self.lock().contains_key(id)
    }

    /// Changes on every start, stored piece and stop (of any task).
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changed.subscribe()
    }

    fn bump(&self) {
        self.changed.send_modify(|g| *g = g.wrapping_add(1));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<TaskId, Bitmap>> {
        self.active.lock().expect("holdings lock")
    }
}

struct Ctx {
    store: Arc<Store>,
    holdings: Arc<Holdings>,
    slots: Arc<Semaphore>,
    metrics: Metrics,
}

/// Serves pieces on `listener` until `shutdown` resolves; `slots` uploads at once.
pub async fn serve(
    listener: tokio::net::TcpListener,
    store: Arc<Store>,
    holdings: Arc<Holdings>,
    slots: usize,
    metrics: Metrics,
    shutdown: impl Future<Output = ()>,
) {
    let ctx = Arc::new(Ctx {
        store,
        holdings,
        slots: Arc::new(Semaphore::new(slots)),
        metrics,
    });
    crate::net::accept_loop(listener, MAX_CONNECTIONS, "upload", shutdown, |stream| {
        let ctx = ctx.clone();
        let limits = crate::http1::Limits {
            header_timeout: None,
            max_head: 64 << 10,
        };
        let simple = {
            let ctx = ctx.clone();
            move |req| handle(ctx.clone(), req)
        };
        let hyper = move |io| async move {
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let response = handle(ctx.clone(), req);
                async move { Ok::<_, Infallible>(response.await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(io), svc)
                .await;
        };
        crate::http1::serve(stream, limits, simple, hyper)
    })
    .await;
}

type Body = BoxBody<Bytes, std::io::Error>;

/// Reads `range` of `file` in blocks of `block` bytes, handing each to `send` until it returns
/// false or a read fails (the error is handed on too). Moves the file's cursor: give each
/// reader its own handle. Blocking: call it off the async threads.
pub(crate) fn read_blocks(
    mut file: &std::fs::File,
    range: std::ops::Range<u64>,
    block: usize,
    mut send: impl FnMut(std::io::Result<Bytes>) -> bool,
) {
    use std::io::{Read, Seek};
    if let Err(e) = file.seek(std::io::SeekFrom::Start(range.start)) {
        send(Err(e));
        return;
    }
    let mut pos = range.start;
    while pos < range.end {
        let len = block.min((range.end - pos) as usize);
        // read_to_end fills spare capacity without zeroing it first.
        let mut buf = Vec::with_capacity(len);
        let read = match file.take(len as u64).read_to_end(&mut buf) {
            Ok(n) if n == len => Ok(Bytes::from(buf)),
            Ok(n) => Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("task file ended {n} bytes into a {len} byte block at {pos}"),
            )),
            Err(e) => Err(e),
        };
        let failed = read.is_err();
        if !send(read) || failed {
            return;
        }
        pos += len as u64;
    }
}

fn plain(status: StatusCode, text: &'static str) -> Response<Body> {
    Response::builder()
        .status(status)
        .body(
            Full::new(Bytes::from_static(text.as_bytes()))
                .map_err(|never: Infallible| match never {})
                .boxed(),
        )
        .expect("static response")
}

/// `/tasks/<task>/pieces/<n>` → (task, n).
fn parse_path(path: &str) -> Option<(TaskId, u32)> {
    let rest = path.strip_prefix("/tasks/")?;
    let (task, n) = rest.split_once("/pieces/")?;
    Some((task.parse().ok()?, n.parse().ok()?))
}

async fn handle<B>(ctx: Arc<Ctx>, req: Request<B>) -> Response<Body> {
    if req.method() != Method::GET {
        return plain(StatusCode::METHOD_NOT_ALLOWED, "only GET\n");
    }
    let Some((id, n)) = parse_path(req.uri().path()) else {
        return plain(
            StatusCode::BAD_REQUEST,
            "expected /tasks/<task>/pieces/<n>\n",
        );
    };
    let Ok(permit) = ctx.slots.clone().try_acquire_owned() else {
        return plain(StatusCode::SERVICE_UNAVAILABLE, "all upload slots busy\n");
    };
    let store = ctx.store.clone();
    let id2 = id.clone();
    let meta = tokio::task::spawn_blocking(move || store.meta(&id2))
        .await
        .expect("meta read does not panic");
    let layout = match meta {
        Ok(Some(meta))
            if (meta.complete || ctx.holdings.has(&id, n)) && n < meta.layout.piece_count() =>
        {
            meta.layout
        }
        Ok(_) => return plain(StatusCode::NOT_FOUND, "piece not here\n"),
        Err(e) => {
            tracing::warn!(error = %e, "upload metadata read failed");
            return plain(StatusCode::INTERNAL_SERVER_ERROR, "metadata error\n");
        }
    };
    let file = match ctx.store.reader(&id) {
        Ok(f) => Arc::new(f),
        Err(_) => return plain(StatusCode::NOT_FOUND, "piece not here\n"),
    };
    let range = layout.range(n);
    let length = range.end - range.start;
    // On a plain connection the piece goes out from the file and the body is never polled;
    // either way the slot is held until the body is dropped.
    let from_file = FileBody {
        file: file.clone(),
        range: range.clone(),
        sent: ctx.metrics.upload_bytes.clone(),
    };
    let metrics = ctx.metrics.clone();
    let mut pending = Some(permit);
    let mut rx = None;
    let frames = futures_util::stream::poll_fn(move |cx| {
        let rx = rx.get_or_insert_with(|| {
            let permit = pending.take();
            let (tx, rx) = mpsc::channel::<std::io::Result<Bytes>>(2);
            let (file, range, metrics) = (file.clone(), range.clone(), metrics.clone());
            tokio::task::spawn_blocking(move || {
                let _permit = permit;
                read_blocks(&file, range, BLOCK, |block| {
                    if let Ok(b) = &block {
                        metrics.upload_bytes.inc_by(b.len() as u64);
                    }
                    tx.blocking_send(block).is_ok()
                });
            });
            rx
        });
        rx.poll_recv(cx).map(|c| c.map(|r| r.map(Frame::data)))
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(http::header::CONTENT_LENGTH, length)
        .extension(from_file)
        .body(BodyExt::boxed(StreamBody::new(frames)))
        .expect("valid response")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        let d = format!("sha256:{}", "a".repeat(64));
        assert_eq!(
            parse_path(&format!("/tasks/{d}/pieces/3")).map(|(t, n)| (t.to_string(), n)),
            Some((d.clone(), 3))
        );
        assert!(parse_path(&format!("/tasks/{d}/pieces/-1")).is_none());
        assert!(parse_path("/tasks/../../etc/passwd/pieces/1").is_none());
        assert!(parse_path("/").is_none());
    }
}
