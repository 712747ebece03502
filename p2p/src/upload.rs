//! The upload server (port 4000): other peers fetch verified pieces here.
//!
//! `GET /tasks/<task>/pieces/<n>` answers the piece's bytes (200), `404` at once when this host
//! does not hold that piece, and `503` when all upload slots are busy (the peer asks another
//! parent). Only pieces that are stored (written and recorded after verification) are served.
//! Bytes are streamed from the task file in 256 KiB blocks, so an upload costs little memory.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use tokio::sync::{Semaphore, mpsc};

use crate::bitmap::Bitmap;
use crate::id::TaskId;
use crate::metrics::Metrics;
use crate::store::Store;

const BLOCK: usize = 256 << 10;
/// Connections open at once; more wait in the kernel's accept queue.
const MAX_CONNECTIONS: usize = 1024;

/// Pieces of unfinished tasks this host holds (complete tasks are known to the store).
#[derive(Default)]
pub struct Holdings {
    active: Mutex<HashMap<TaskId, Bitmap>>,
}

impl Holdings {
    pub fn start(&self, id: &TaskId, have: Bitmap) {
        self.lock().insert(id.clone(), have);
    }

    pub fn add(&self, id: &TaskId, n: u32) {
        if let Some(b) = self.lock().get_mut(id) {
            b.set(n);
        }
    }

    pub fn stop(&self, id: &TaskId) {
        self.lock().remove(id);
    }

    fn has(&self, id: &TaskId, n: u32) -> bool {
        self.lock().get(id).is_some_and(|b| b.get(n))
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
    let connections = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            p = connections.clone().acquire_owned() => p.expect("never closed"),
            () = &mut shutdown => return,
        };
        let accepted = tokio::select! {
            a = listener.accept() => a,
            () = &mut shutdown => return,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors and the like: back off, never stop serving.
                tracing::warn!(error = %e, "upload accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let svc = hyper::service::service_fn(move |req| handle(ctx.clone(), req));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

type Body = BoxBody<Bytes, std::io::Error>;

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

async fn handle(ctx: Arc<Ctx>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    if req.method() != Method::GET {
        return Ok(plain(StatusCode::METHOD_NOT_ALLOWED, "only GET\n"));
    }
    let Some((id, n)) = parse_path(req.uri().path()) else {
        return Ok(plain(
            StatusCode::BAD_REQUEST,
            "expected /tasks/<task>/pieces/<n>\n",
        ));
    };
    let Ok(permit) = ctx.slots.clone().try_acquire_owned() else {
        return Ok(plain(
            StatusCode::SERVICE_UNAVAILABLE,
            "all upload slots busy\n",
        ));
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
        Ok(_) => return Ok(plain(StatusCode::NOT_FOUND, "piece not here\n")),
        Err(e) => {
            tracing::warn!(error = %e, "upload metadata read failed");
            return Ok(plain(StatusCode::INTERNAL_SERVER_ERROR, "metadata error\n"));
        }
    };
    let file = match ctx.store.reader(&id) {
        Ok(f) => f,
        Err(_) => return Ok(plain(StatusCode::NOT_FOUND, "piece not here\n")),
    };
    let range = layout.range(n);
    let (tx, mut rx) = mpsc::channel::<std::io::Result<Bytes>>(2);
    let metrics = ctx.metrics.clone();
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        let mut pos = range.start;
        while pos < range.end {
            let len = BLOCK.min((range.end - pos) as usize);
            let mut buf = vec![0u8; len];
            let read = file.read_exact_at(&mut buf, pos).map(|()| Bytes::from(buf));
            let failed = read.is_err();
            if tx.blocking_send(read).is_err() || failed {
                return;
            }
            metrics.upload_bytes.inc_by(len as u64);
            pos += len as u64;
        }
    });
    let frames = futures_util::stream::poll_fn(move |cx| {
        rx.poll_recv(cx).map(|c| c.map(|r| r.map(Frame::data)))
    });
    Ok(Response::builder()
        .status(StatusCode::OK)
        .header(http::header::CONTENT_LENGTH, range.end - range.start)
        .body(BodyExt::boxed(StreamBody::new(frames)))
        .expect("valid response"))
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
