//! The upload server (port 4000): other peers fetch verified pieces here; with cluster TLS on,
//! only members of the cluster (mutual TLS, see [`shoal_p2p::cluster`]).
//!
//! It answers the peer wire protocol ([`shoal_p2p::peer`]): a piece's bytes (200), `404` at once
//! when this host does not hold that piece, and `503` when all upload slots are busy (the peer
//! asks another parent). Only pieces that are stored (written and recorded after verification)
//! are served. Requests are read by [`shoal_p2p::http1`], which sends the piece from the task file in 1 MiB
//! blocks on the connection's own task; anything else it hands to hyper, where the bytes stream
//! in 256 KiB blocks read on a blocking thread. Either way an upload costs little memory.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{Semaphore, mpsc};

use shoal_p2p::http1::{self, FileBody};
use shoal_p2p::relay::RelayReader;
use shoal_p2p::store::{AsyncStore, Holdings, read_blocks};
use shoal_p2p::{Metrics, cluster, net, peer};

const BLOCK: usize = 256 << 10;

struct Ctx {
    store: AsyncStore,
    holdings: Arc<Holdings>,
    slots: Arc<Semaphore>,
    metrics: Metrics,
    limits: net::Limits,
    /// `[limits] upload_rate`: every piece served takes its bytes before it goes.
    rate: Option<Arc<shoal_p2p::rate::RateLimit>>,
}

/// What the upload server is given.
pub struct Upload {
    pub store: AsyncStore,
    pub holdings: Arc<Holdings>,
    /// Uploads at once.
    pub slots: usize,
    pub metrics: Metrics,
    /// With it, only cluster members are served: a connection whose client has no certificate
    /// of the cluster ends in the handshake.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    pub limits: net::Limits,
    /// Send at low priority (`[swarm] upload_low_priority`).
    pub low_priority: bool,
}

/// Serves pieces on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    upload: Upload,
    shutdown: impl Future<Output = ()>,
) {
    let ctx = Arc::new(Ctx {
        store: upload.store,
        holdings: upload.holdings,
        slots: Arc::new(Semaphore::new(upload.slots)),
        metrics: upload.metrics,
        limits: upload.limits,
        rate: shoal_p2p::rate::RateLimit::new(upload.limits.upload_rate),
    });
    let acceptor = upload.tls.map(tokio_rustls::TlsAcceptor::from);
    let (limits, low_priority) = (upload.limits, upload.low_priority);
    net::accept_loop(listener, &limits, "upload", shutdown, |conn| {
        let (ctx, acceptor) = (ctx.clone(), acceptor.clone());
        async move {
            let net::Conn { stream, slot } = conn;
            if low_priority && let Err(e) = net::low_priority(stream.get_ref()) {
                tracing::debug!(error = %e, "upload connection not marked low priority");
            }
            let Some(acceptor) = acceptor else {
                return connection(ctx, stream, &slot).await;
            };
            // A handshake not begun is idle: it may make room for another connection.
            match slot.idle(cluster::accept(&acceptor, stream)).await {
                Some(Ok((tls, _member))) => connection(ctx, tls, &slot).await,
                Some(Err(e)) => tracing::debug!(error = %e, "upload connection refused"),
                None => {}
            }
        }
    })
    .await;
}

/// One connection's requests, the simple ones on the fast path.
async fn connection<T>(ctx: Arc<Ctx>, stream: T, slot: &net::Slot)
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let limits = http1::Limits {
        header_timeout: Some(ctx.limits.header_timeout),
        max_head: ctx.limits.max_header_bytes,
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
        // Once hyper has a connection, the heads it reads are bound as the fast path's are
        // (hyper's default is about 400 KiB).
        let _ = hyper::server::conn::http1::Builder::new()
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(limits.header_timeout)
            .max_buf_size(limits.max_head)
            .serve_connection(TokioIo::new(io), svc)
            .await;
    };
    http1::serve(stream, limits, Some(slot), simple, hyper).await;
}

type Body = BoxBody<Bytes, std::io::Error>;

/// A piece still arriving here, passed on as it comes (see [`shoal_p2p::relay`]): if it is
/// withdrawn, the response breaks off before its end.
async fn relayed<P: Send + Sync + 'static>(
    ctx: &Ctx,
    length: u64,
    reader: RelayReader,
    permit: P,
) -> Response<Body> {
    shoal_p2p::rate::take(ctx.rate.as_deref(), length as usize).await;
    ctx.metrics.relayed_pieces.inc();
    let sent = ctx.metrics.upload_bytes.clone();
    let chunks = futures_util::stream::unfold(
        (reader, permit, sent),
        |(mut reader, permit, sent)| async move {
            match reader.next().await {
                Ok(Some(chunk)) => {
                    sent.inc_by(chunk.len() as u64);
                    Some((Ok(Frame::data(chunk)), (reader, permit, sent)))
                }
                Ok(None) => None,
                Err(e) => Some((Err(std::io::Error::other(e)), (reader, permit, sent))),
            }
        },
    );
    Response::builder()
        .status(StatusCode::OK)
        .header(http::header::CONTENT_LENGTH, length)
        .body(BodyExt::boxed(StreamBody::new(chunks)))
        .expect("valid response")
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

async fn handle<B>(ctx: Arc<Ctx>, req: Request<B>) -> Response<Body> {
    if req.method() != Method::GET {
        return plain(StatusCode::METHOD_NOT_ALLOWED, "only GET\n");
    }
    let Some((id, n)) = peer::parse_piece_path(req.uri().path()) else {
        return plain(
            StatusCode::BAD_REQUEST,
            "expected /tasks/<task>/pieces/<n>\n",
        );
    };
    let Ok(permit) = ctx.slots.clone().try_acquire_owned() else {
        return plain(StatusCode::SERVICE_UNAVAILABLE, "all upload slots busy\n");
    };
    // Held, with the slot, until the piece is sent: the task is not removed meanwhile.
    let permit = (permit, ctx.holdings.reading(&id));
    // Asked before the stored pieces: a piece leaves the relays only once it is held.
    if let Some((length, reader)) = ctx.holdings.relays().reader(&id, n) {
        return relayed(&ctx, length, reader, permit).await;
    }
    let layout = match ctx.store.meta(&id).await {
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
    shoal_p2p::rate::take(ctx.rate.as_deref(), length as usize).await;
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
    use shoal_p2p::TaskId;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    /// An upload server on loopback with nothing stored; its holdings and address.
    async fn server(dir: &std::path::Path) -> (Arc<Holdings>, std::net::SocketAddr) {
        let holdings = Arc::new(Holdings::default());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let upload = Upload {
            store: AsyncStore::open(dir).unwrap(),
            holdings: holdings.clone(),
            slots: 4,
            metrics: Metrics::default(),
            tls: None,
            limits: net::Limits::default(),
            low_priority: false,
        };
        tokio::spawn(serve(listener, upload, std::future::pending()));
        (holdings, addr)
    }

    /// Reads from `conn` until the response head and `body` bytes of body are in, or the
    /// connection ends (or a second passes); returns the head and the body so far, and whether
    /// the connection ended.
    async fn read_response(conn: &mut TcpStream, body: usize) -> (String, Vec<u8>, bool) {
        let mut got = Vec::new();
        let mut closed = false;
        let split = |got: &[u8]| got.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
        while split(&got).is_none_or(|at| got.len() - at < body) {
            let mut buf = [0u8; 4096];
            match tokio::time::timeout_at(deadline, conn.read(&mut buf)).await {
                Ok(Ok(0) | Err(_)) => {
                    closed = true;
                    break;
                }
                Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
                Err(_) => break,
            }
        }
        let at = split(&got).expect("a response head");
        let head = String::from_utf8_lossy(&got[..at]).into_owned();
        (head, got[at..].to_vec(), closed)
    }

    async fn ask(addr: std::net::SocketAddr, task: &TaskId, n: u32) -> TcpStream {
        let mut conn = TcpStream::connect(addr).await.unwrap();
        let req = format!(
            "GET {} HTTP/1.1\r\nhost: peer\r\n\r\n",
            peer::piece_path(task, n)
        );
        conn.write_all(req.as_bytes()).await.unwrap();
        conn
    }

    #[tokio::test]
    async fn a_piece_still_arriving_goes_out_as_it_comes_its_end_only_once_verified() {
        let dir = tempfile::tempdir().unwrap();
        let (holdings, addr) = server(dir.path()).await;
        let task: TaskId = format!("sha256:{}", "c".repeat(64)).parse().unwrap();
        let (head, _, _) = read_response(&mut ask(addr, &task, 0).await, 0).await;
        assert!(head.starts_with("HTTP/1.1 404"), "{head}");

        let mut writer = holdings.relays().start(&task, 0, 6).unwrap();
        writer.push(&Bytes::from_static(b"abcd"), false);
        let mut conn = ask(addr, &task, 0).await;
        let (head, body, _) = read_response(&mut conn, 4).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(head.contains("content-length: 6"), "{head}");
        assert_eq!(body, b"abcd");
        // The chunk that completes the piece waits for its digest...
        writer.push(&Bytes::from_static(b"ef"), true);
        let (more, closed) = read_rest(&mut conn, Duration::from_millis(200)).await;
        assert!(more.is_empty() && !closed, "sent before verified: {more:?}");
        // ...and goes once the piece matched it.
        writer.verified(Bytes::from_static(b"ef"));
        let (more, _) = read_rest(&mut conn, Duration::from_millis(300)).await;
        assert_eq!(more, b"ef");
    }

    #[tokio::test]
    async fn a_relayed_piece_that_fails_here_breaks_off_every_response_before_its_end() {
        let dir = tempfile::tempdir().unwrap();
        let (holdings, addr) = server(dir.path()).await;
        let task: TaskId = format!("sha256:{}", "d".repeat(64)).parse().unwrap();
        let mut writer = holdings.relays().start(&task, 2, 6).unwrap();
        writer.push(&Bytes::from_static(b"abcd"), false);
        writer.push(&Bytes::from_static(b"XX"), true);
        let mut readers = Vec::new();
        for _ in 0..2 {
            let mut conn = ask(addr, &task, 2).await;
            let (head, body, _) = read_response(&mut conn, 4).await;
            assert!(head.starts_with("HTTP/1.1 200"), "{head}");
            assert_eq!(body, b"abcd");
            readers.push(conn);
        }
        // The piece did not match its digest: dropped unverified, it is withdrawn.
        drop(writer);
        for mut conn in readers {
            let (more, closed) = read_rest(&mut conn, Duration::from_secs(1)).await;
            assert!(more.is_empty(), "the piece's end went out: {more:?}");
            assert!(closed, "the response did not break off");
        }
        // And nobody is offered it any more.
        let (head, _, _) = read_response(&mut ask(addr, &task, 2).await, 0).await;
        assert!(head.starts_with("HTTP/1.1 404"), "{head}");
    }

    /// What else arrives on `conn` within `wait`, and whether it closed.
    async fn read_rest(conn: &mut TcpStream, wait: Duration) -> (Vec<u8>, bool) {
        let mut got = Vec::new();
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let mut buf = [0u8; 4096];
            match tokio::time::timeout_at(deadline, conn.read(&mut buf)).await {
                Ok(Ok(0) | Err(_)) => return (got, true),
                Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
                Err(_) => return (got, false),
            }
        }
    }
}
