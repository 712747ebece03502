//! HTTP/1.1 with file bodies sent straight from the file.
//!
//! hyper serves a file's bytes through its body: a blocking thread reads each block, hands it over
//! a channel, and a runtime thread writes it; on two cores beside the client, those hand-offs cost
//! a warm blob a third of its loopback throughput. [`serve`] therefore answers the simple requests
//! of a plain connection itself (GET and HEAD without a body, upgrade or `Expect`) with the same
//! service, and when the response carries a [`FileBody`] extension it reads the file a block at a
//! time into one buffer and writes each block out on the connection's own task, as a plain
//! read/write loop does. (`sendfile(2)` was measured too: on this machine's loopback it is slower
//! than the copy, see `integration/BENCHMARKS.md`.) Other responses are written from their body,
//! with `Content-Length` or chunked. At the first request it does not take (a push, `CONNECT`,
//! anything it cannot parse) it hands the connection, with the bytes already read, to hyper
//! ([`Rewound`]) for the rest of its life. The stream may be TLS (the cluster's upload
//! connections): the file's blocks are then encrypted on the same task.

use std::future::Future;
use std::io;
use std::ops::Range;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::{BodyExt, Empty};
use hyper::body::Body;
use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use crate::net::Slot;

/// Headers in one request head we parse ourselves; more go to hyper (which refuses them).
const MAX_HEADERS: usize = 100;
/// Bytes of a [`FileBody`] read and written at a time: on loopback here 64 KiB blocks reach half
/// the throughput of 1 MiB ones, and 4 MiB ones no more (see `integration/BENCHMARKS.md`).
const FILE_BLOCK: usize = 1 << 20;

/// A response extension: the body is `range` of `file`, which [`serve`] sends from the file
/// (counting the bytes in `sent`) instead of polling the response's body. The body is dropped
/// unpolled only after the file was sent, so it may hold what must live as long as the sending
/// (an upload slot, say); it must yield the same bytes, for connections hyper serves.
#[derive(Clone)]
pub struct FileBody {
    pub file: Arc<std::fs::File>,
    pub range: Range<u64>,
    pub sent: Counter,
}

/// Bounds on reading a request head.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// How long a request head may take to arrive (from the first read for it), idle
    /// keep-alive time included, as hyper's `header_read_timeout`.
    pub header_timeout: Option<Duration>,
    /// Largest request head read here; a larger one is answered 431.
    pub max_head: usize,
}

/// Serves `stream`: the simple requests with `service` here, and from the first other one on,
/// the whole connection with `fallback` (see the [module docs](self)). While it waits for a
/// request the connection is idle in its `slot`, and may be closed to make room for another.
pub async fn serve<T, S, Fut, B, F, FFut>(
    stream: T,
    limits: Limits,
    slot: Option<&Slot>,
    service: S,
    fallback: F,
) where
    T: AsyncRead + AsyncWrite + Unpin,
    S: Fn(Request<Empty<Bytes>>) -> Fut,
    Fut: Future<Output = Response<B>>,
    B: Body<Data = Bytes>,
    B::Error: std::fmt::Display,
    F: FnOnce(Rewound<T>) -> FFut,
    FFut: Future<Output = ()>,
{
    let mut stream = stream;
    let mut buf = BytesMut::with_capacity(8 << 10);
    // For file bodies; grown at the first one.
    let mut block = Vec::new();
    loop {
        let head = match read_head(&mut stream, &mut buf, limits, slot).await {
            Head::Closed => return,
            Head::TooLarge => {
                let answer = b"HTTP/1.1 431 Request Header Fields Too Large\r\n\
                    content-length: 0\r\nconnection: close\r\n\r\n";
                let _ = stream.write_all(answer).await;
                let _ = stream.shutdown().await;
                return;
            }
            Head::Request(req, len) => (*req, len),
            Head::Other => {
                let rewound = Rewound {
                    prefix: buf.freeze(),
                    inner: stream,
                };
                return fallback(rewound).await;
            }
        };
        let (req, len) = head;
        buf.advance(len);
        let method = req.method().clone();
        let version = req.version();
        let close = wants_close(req.headers(), version);
        let response = service(req).await;
        match write_response(&mut stream, &mut block, response, &method, version, close).await {
            Ok(true) => {}
            Ok(_) => {
                let _ = stream.shutdown().await;
                return;
            }
            Err(e) => {
                tracing::debug!(error = %e, "HTTP/1.1 response not sent whole");
                return;
            }
        }
    }
}

enum Head {
    /// The connection ended (or timed out) between requests.
    Closed,
    /// A request to serve here, and the length of its head in the buffer.
    Request(Box<Request<Empty<Bytes>>>, usize),
    /// A head over [`Limits::max_head`]: answered 431 here (handed to hyper whole, it would
    /// be parsed against hyper's own, larger bound).
    TooLarge,
    /// Anything else: hyper's.
    Other,
}

async fn read_head<T: AsyncRead + Unpin>(
    stream: &mut T,
    buf: &mut BytesMut,
    limits: Limits,
    slot: Option<&Slot>,
) -> Head {
    let read = async {
        if buf.is_empty()
            && let Some(slot) = slot
        {
            // Nothing of the next request yet: idle until its first bytes.
            match slot.idle(stream.read_buf(buf)).await {
                None | Some(Ok(0)) => return Head::Closed,
                Some(Err(_)) => return Head::Other,
                Some(Ok(_)) => {}
            }
        }
        loop {
            if !buf.is_empty() {
                match parse(buf) {
                    Ok(Some(Head::Request(_, len))) if len > limits.max_head => {
                        return Head::TooLarge;
                    }
                    Ok(Some(head)) => return head,
                    Ok(None) if buf.len() <= limits.max_head => {}
                    Ok(None) => return Head::TooLarge,
                    _ => return Head::Other,
                }
            }
            match stream.read_buf(buf).await {
                Ok(0) if buf.is_empty() => return Head::Closed,
                // A partial head and EOF (or an error): hyper says what it says to that.
                Ok(0) | Err(_) => return Head::Other,
                Ok(_) => {}
            }
        }
    };
    match limits.header_timeout {
        Some(t) => tokio::time::timeout(t, read).await.unwrap_or(Head::Closed),
        None => read.await,
    }
}

/// A request head as the upload server reads it, and the piece path in it (fuzzing).
#[cfg(fuzzing)]
pub(crate) fn fuzz_head(data: &[u8]) {
    if let Ok(Some(Head::Request(req, _))) = parse(data) {
        let _ = crate::peer::parse_piece_path(req.uri().path());
    }
}

/// `Ok(None)`: the head is not complete yet. `Err`: not a request served here.
fn parse(buf: &[u8]) -> Result<Option<Head>, ()> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut headers);
    let len = match parsed.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(()),
    };
    let method = Method::from_bytes(parsed.method.ok_or(())?.as_bytes()).map_err(|_| ())?;
    if method != Method::GET && method != Method::HEAD {
        return Ok(Some(Head::Other));
    }
    let version = match parsed.version {
        Some(0) => Version::HTTP_10,
        Some(1) => Version::HTTP_11,
        _ => return Err(()),
    };
    let uri: Uri = parsed.path.ok_or(())?.parse().map_err(|_| ())?;
    let mut map = HeaderMap::with_capacity(parsed.headers.len());
    for h in parsed.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| ())?;
        let value = HeaderValue::from_bytes(h.value).map_err(|_| ())?;
        map.append(name, value);
    }
    let has_body = map.contains_key(header::TRANSFER_ENCODING)
        || map
            .get_all(header::CONTENT_LENGTH)
            .iter()
            .any(|v| v.as_bytes() != b"0");
    if has_body || map.contains_key(header::UPGRADE) || map.contains_key(header::EXPECT) {
        return Ok(Some(Head::Other));
    }
    let mut req = Request::new(Empty::new());
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    *req.version_mut() = version;
    *req.headers_mut() = map;
    Ok(Some(Head::Request(Box::new(req), len)))
}

fn wants_close(headers: &HeaderMap, version: Version) -> bool {
    let has = |token: &str| {
        headers.get_all(header::CONNECTION).iter().any(|v| {
            v.to_str()
                .is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    if version == Version::HTTP_10 {
        !has("keep-alive")
    } else {
        has("close")
    }
}

/// Writes `response`; `Ok(true)` when the connection may carry another request.
async fn write_response<T, B>(
    stream: &mut T,
    block: &mut Vec<u8>,
    response: Response<B>,
    method: &Method,
    version: Version,
    close: bool,
) -> io::Result<bool>
where
    T: AsyncWrite + Unpin,
    B: Body<Data = Bytes>,
    B::Error: std::fmt::Display,
{
    let keep = write_message(stream, block, response, method, version, close).await?;
    // A TLS stream may hold the end of the response until flushed.
    stream.flush().await?;
    Ok(keep)
}

async fn write_message<T, B>(
    stream: &mut T,
    block: &mut Vec<u8>,
    response: Response<B>,
    method: &Method,
    version: Version,
    close: bool,
) -> io::Result<bool>
where
    T: AsyncWrite + Unpin,
    B: Body<Data = Bytes>,
    B::Error: std::fmt::Display,
{
    let (mut parts, body) = response.into_parts();
    let status = parts.status;
    let file = parts.extensions.remove::<FileBody>();
    let no_body = *method == Method::HEAD
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let headers = &mut parts.headers;
    // A HEAD answer keeps the Content-Length it was given, of the body it does not carry.
    let length = match &file {
        _ if no_body => None,
        Some(f) => Some(f.range.end - f.range.start),
        None => body.size_hint().exact().or_else(|| {
            headers
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok()?.parse().ok())
        }),
    };
    // Without a known length an HTTP/1.0 body ends with the connection.
    let chunked = !no_body && length.is_none() && version == Version::HTTP_11;
    let keep = !close && (no_body || length.is_some() || chunked);
    if let Some(n) = length {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
    }
    headers.remove(header::TRANSFER_ENCODING);
    if chunked {
        headers.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
    }
    if !keep {
        headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    if !headers.contains_key(header::DATE) {
        let now = httpdate::fmt_http_date(std::time::SystemTime::now());
        headers.insert(
            header::DATE,
            HeaderValue::from_str(&now).expect("ASCII date"),
        );
    }
    let mut head = Vec::with_capacity(512);
    head.extend_from_slice(if version == Version::HTTP_10 {
        b"HTTP/1.0 "
    } else {
        b"HTTP/1.1 "
    });
    head.extend_from_slice(status.as_str().as_bytes());
    head.push(b' ');
    head.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    head.extend_from_slice(b"\r\n");
    for (name, value) in headers.iter() {
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"\r\n");
    stream.write_all(&head).await?;
    if no_body {
        return Ok(keep);
    }
    if let Some(file) = file {
        send_file(stream, block, &file).await?;
        drop(body);
        return Ok(keep);
    }
    let mut body = std::pin::pin!(body);
    let mut written = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| io::Error::other(e.to_string()))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if data.is_empty() {
            continue;
        }
        written += data.len() as u64;
        if length.is_some_and(|n| written > n) {
            return Err(io::Error::other(
                "the body is longer than its Content-Length",
            ));
        }
        if chunked {
            stream
                .write_all(format!("{:x}\r\n", data.len()).as_bytes())
                .await?;
            stream.write_all(&data).await?;
            stream.write_all(b"\r\n").await?;
        } else {
            stream.write_all(&data).await?;
        }
    }
    if chunked {
        stream.write_all(b"0\r\n\r\n").await?;
    }
    if length.is_some_and(|n| written != n) {
        return Err(io::Error::other(
            "the body is shorter than its Content-Length",
        ));
    }
    Ok(keep)
}

/// `file.range` to the socket: each block read into one buffer and written out on this task.
/// A page the cache lacks is read from disk on this thread: task files are read soon after they
/// were written.
async fn send_file<T: AsyncWrite + Unpin>(
    stream: &mut T,
    buf: &mut Vec<u8>,
    file: &FileBody,
) -> io::Result<()> {
    use std::os::unix::fs::FileExt as _;
    let len = FILE_BLOCK.min((file.range.end - file.range.start) as usize);
    if buf.len() < len {
        buf.resize(len, 0);
    }
    let mut pos = file.range.start;
    while pos < file.range.end {
        let want = buf.len().min((file.range.end - pos) as usize);
        let n = file.file.read_at(&mut buf[..want], pos)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the file is shorter than its range",
            ));
        }
        stream.write_all(&buf[..n]).await?;
        file.sent.inc_by(n as u64);
        pos += n as u64;
    }
    Ok(())
}

/// A connection handed to hyper: the bytes [`serve`] already read, then the stream.
pub struct Rewound<T = TcpStream> {
    prefix: Bytes,
    inner: T,
}

impl<T: AsyncRead + Unpin> AsyncRead for Rewound<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Rewound<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests;
