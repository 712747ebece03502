//! What every Shoal TCP server shares: the bounds of `[limits]`, the accept loop that keeps to
//! them, and the write deadline on each connection.
//!
//! A server keeps at most `max_connections` open. At the limit a new connection takes the place
//! of the connection that has waited longest for its next request (one idle between requests, or
//! still in its TLS handshake): it is closed, as nginx reuses keep-alive connections, so that
//! clients holding connections open cannot keep a real request out. When no connection is idle,
//! the new one is answered `503 Service Unavailable` with `Retry-After` and closed, at once,
//! instead of waiting in the kernel's queue. A write that makes no progress for `write_timeout`
//! (a client that stopped reading) fails and the connection closes, so slow readers cannot hold
//! the upload slots; `header_timeout` bounds how long a request head may take.

use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::time::Sleep;

/// The `[limits]` table: bounds on the connections of every server (the upload server, the
/// registry mirror and proxy), on the downloads the mirror starts, and on bandwidth.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Time a request head may take to arrive, from the first read for it; a kept-alive
    /// connection's silence between requests counts. Peers keep idle connections for
    /// [`PEER_POOL_IDLE`], so this must be longer.
    #[serde(with = "humantime_serde")]
    pub header_timeout: Duration,
    /// Longest a write to a client may make no progress before the connection is closed.
    #[serde(with = "humantime_serde")]
    pub write_timeout: Duration,
    /// Connections each server keeps open at once (see the [module docs](self)).
    pub max_connections: usize,
    /// Largest request head (request line and headers) accepted; larger ones get 431.
    pub max_header_bytes: usize,
    /// Downloads the mirror starts at once (each goes on after its client left); past that,
    /// a client asking for content not downloading already is served straight from upstream.
    pub max_downloads: usize,
    /// Bytes per second, on average, of pieces from peers (0: no limit).
    pub download_rate: u64,
    /// Bytes per second, on average, of pieces sent to peers (0: no limit).
    pub upload_rate: u64,
    /// Bytes per second, on average, from origins (0: no limit).
    pub origin_rate: u64,
}

/// How long peers keep an idle connection to an upload server for the next piece.
pub const PEER_POOL_IDLE: Duration = Duration::from_secs(15);

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_timeout: Duration::from_secs(30),
            write_timeout: Duration::from_secs(30),
            max_connections: 1024,
            max_header_bytes: 64 << 10,
            max_downloads: crate::download::MAX_BACKGROUND,
            download_rate: 0,
            upload_rate: 0,
            origin_rate: 0,
        }
    }
}

impl Limits {
    /// Checks the bounds; the error names the bad one.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_connections == 0 || self.max_downloads == 0 {
            return Err("limits.max_connections and max_downloads must be at least 1".into());
        }
        if self.max_header_bytes < 8192 {
            return Err("limits.max_header_bytes must be at least 8192".into());
        }
        if self.header_timeout.is_zero() || self.write_timeout.is_zero() {
            return Err("limits timeouts must be greater than zero".into());
        }
        Ok(())
    }
}

/// One accepted connection: its stream (writes bounded by `write_timeout`) and its place among
/// the server's connections.
pub struct Conn {
    pub stream: Deadline<TcpStream>,
    pub slot: Slot,
}

/// A connection's place among its server's open connections; freed when dropped.
pub struct Slot {
    gate: Arc<Gate>,
    id: u64,
}

struct Gate {
    max: usize,
    state: Mutex<GateState>,
}

#[derive(Default)]
struct GateState {
    open: usize,
    next_id: u64,
    /// Connections waiting for their next request, oldest first, and how to close each.
    idle: BTreeMap<u64, Arc<Notify>>,
}

impl Gate {
    fn lock(&self) -> std::sync::MutexGuard<'_, GateState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A slot for a new connection: a free one, or the longest-idle connection's (which is told
    /// to close); `None` when every connection is busy.
    fn admit(self: &Arc<Self>) -> Option<Slot> {
        let mut state = self.lock();
        if state.open >= self.max {
            let (_, oldest) = state.idle.pop_first()?;
            oldest.notify_one();
        }
        state.open += 1;
        state.next_id += 1;
        Some(Slot {
            gate: self.clone(),
            id: state.next_id,
        })
    }
}

impl Slot {
    /// Runs `wait` (reading the next request's first bytes, a TLS handshake) with the
    /// connection marked idle: `None` when it was closed meanwhile to make room for another.
    pub async fn idle<F: Future>(&self, wait: F) -> Option<F::Output> {
        let closing = Arc::new(Notify::new());
        self.gate.lock().idle.insert(self.id, closing.clone());
        let out = tokio::select! {
            out = wait => Some(out),
            () = closing.notified() => None,
        };
        self.gate.lock().idle.remove(&self.id);
        out
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut state = self.gate.lock();
        state.open -= 1;
        state.idle.remove(&self.id);
    }
}

/// The answer to a connection the server has no room for.
const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nretry-after: 1\r\n\
    content-length: 0\r\nconnection: close\r\n\r\n";
/// Connections answered [`BUSY`] at once.
const SHEDDING: usize = 256;

/// Answers a connection there is no room for, once its request head is in (a client may not
/// expect an answer before it sent its request): 503 and close. (A TLS client sees a failed
/// handshake.)
async fn busy(mut stream: TcpStream) -> io::Result<()> {
    let mut head = [0u8; 8192];
    let mut len = 0;
    while len < head.len() && !head[..len].windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut head[len..]).await? {
            0 => break,
            n => len += n,
        }
    }
    stream.write_all(BUSY).await?;
    stream.shutdown().await
}

/// Accepts connections on `listener` until `shutdown` resolves and runs `serve` on each in its
/// own task, within `limits` (see the [module docs](self)). Accept errors (out of file
/// descriptors and the like) back off; the loop never stops on them.
pub async fn accept_loop<F, Fut>(
    listener: TcpListener,
    limits: &Limits,
    what: &'static str,
    shutdown: impl Future<Output = ()>,
    serve: F,
) where
    F: Fn(Conn) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let gate = Arc::new(Gate {
        max: limits.max_connections,
        state: Mutex::default(),
    });
    let shedding = Arc::new(tokio::sync::Semaphore::new(SHEDDING));
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            () = &mut shutdown => return,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!(error = %e, server = what, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let Some(slot) = gate.admit() else {
            tracing::debug!(server = what, "every connection busy; answered 503");
            // At most SHEDDING answered at once; beyond that the connection is just closed.
            if let Ok(permit) = shedding.clone().try_acquire_owned() {
                tokio::spawn(async move {
                    let _permit = permit;
                    let _ = tokio::time::timeout(Duration::from_secs(1), busy(stream)).await;
                });
            }
            continue;
        };
        let conn = serve(Conn {
            stream: Deadline::new(stream, limits.write_timeout),
            slot,
        });
        tokio::spawn(conn);
    }
}

/// DSCP Lower Effort (RFC 8622) in the IPv4 TOS byte.
const TOS_LOWER_EFFORT: u32 = 1 << 2;
/// Linux's `TC_PRIO_BULK`: the last band of `pfifo_fast`.
const PRIORITY_BULK: u32 = 2;

/// Marks `stream`'s traffic as low priority (see `SwarmConfig::upload_low_priority`). IPv6
/// sockets get the priority only (no traffic class is set).
pub fn low_priority(stream: &TcpStream) -> io::Result<()> {
    let socket = socket2::SockRef::from(stream);
    if stream.local_addr()?.is_ipv4() {
        // Setting the TOS resets the priority: the TOS first.
        socket.set_tos_v4(TOS_LOWER_EFFORT)?;
    }
    socket.set_priority(PRIORITY_BULK)
}

/// A stream whose writes fail with `TimedOut` when one makes no progress for `timeout`.
pub struct Deadline<T> {
    inner: T,
    timeout: Duration,
    /// Running while a write is pending.
    stalled: Option<Pin<Box<Sleep>>>,
}

impl<T> Deadline<T> {
    pub fn new(inner: T, timeout: Duration) -> Self {
        Deadline {
            inner,
            timeout,
            stalled: None,
        }
    }

    pub fn get_ref(&self) -> &T {
        &self.inner
    }

    /// `poll` is pending: fails once it has been for the timeout.
    fn pending<R>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<R>> {
        let timeout = self.timeout;
        let sleep = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client read nothing for the write timeout",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn timed<R>(
        &mut self,
        cx: &mut Context<'_>,
        poll: impl FnOnce(Pin<&mut T>, &mut Context<'_>) -> Poll<io::Result<R>>,
    ) -> Poll<io::Result<R>>
    where
        T: Unpin,
    {
        match poll(Pin::new(&mut self.inner), cx) {
            Poll::Pending => self.pending(cx),
            ready => {
                self.stalled = None;
                ready
            }
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Deadline<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Deadline<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.timed(cx, |s, cx| s.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.timed(cx, |s, cx| s.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.timed(cx, |s, cx| s.poll_flush(cx))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.timed(cx, |s, cx| s.poll_shutdown(cx))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(max: usize) -> Arc<Gate> {
        Arc::new(Gate {
            max,
            state: Mutex::default(),
        })
    }

    #[tokio::test]
    async fn a_connection_marked_low_priority_sends_as_lower_effort_bulk() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        let (accepted, client) = (accepted.unwrap().0, client.unwrap());
        low_priority(&accepted).unwrap();
        let marks = |s: &TcpStream| {
            let s = socket2::SockRef::from(s);
            (s.tos_v4().unwrap(), s.priority().unwrap())
        };
        assert_eq!(marks(&accepted), (TOS_LOWER_EFFORT, PRIORITY_BULK));
        assert_eq!(marks(&client), (0, 0), "the other end is not marked");
    }

    #[tokio::test]
    async fn at_the_limit_the_longest_idle_connection_makes_room() {
        let gate = gate(2);
        let a = gate.admit().unwrap();
        let b = gate.admit().unwrap();
        // Both busy: no room.
        assert!(gate.admit().is_none());
        // `a` waits for a request: a new connection closes it.
        let waiting = tokio::spawn(async move {
            let out = a.idle(std::future::pending::<()>()).await;
            (out, a)
        });
        tokio::task::yield_now().await;
        while gate.lock().idle.is_empty() {
            tokio::task::yield_now().await;
        }
        let c = gate.admit().unwrap();
        let (out, a) = waiting.await.unwrap();
        assert!(out.is_none(), "the idle connection was not closed");
        drop(a);
        assert_eq!(gate.lock().open, 2);
        // An idle wait that ends by itself leaves the connection busy again.
        assert_eq!(b.idle(async { 7 }).await, Some(7));
        assert!(gate.admit().is_none());
        drop((b, c));
        assert_eq!(gate.lock().open, 0);
    }

    #[tokio::test]
    async fn a_write_the_client_does_not_read_fails_after_the_timeout() {
        let (client, server) = tokio::io::duplex(1024);
        let mut timed = Deadline::new(server, Duration::from_millis(200));
        let start = std::time::Instant::now();
        let err = timed.write_all(&vec![0u8; 1 << 20]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(start.elapsed() >= Duration::from_millis(200));
        // A client that reads keeps the writes going, however long the whole takes.
        let (mut client2, server2) = tokio::io::duplex(1024);
        let mut timed = Deadline::new(server2, Duration::from_millis(200));
        let reader = tokio::spawn(async move {
            let mut buf = vec![0u8; 64];
            let mut total = 0;
            while total < 16 << 10 {
                tokio::time::sleep(Duration::from_millis(2)).await;
                total += client2.read(&mut buf).await.unwrap();
            }
            total
        });
        timed.write_all(&vec![0u8; 16 << 10]).await.unwrap();
        assert!(reader.await.unwrap() >= 16 << 10);
        drop(client);
    }

    #[test]
    fn limits_are_checked() {
        assert!(Limits::default().validate().is_ok());
        let bad = Limits {
            max_connections: 0,
            ..Limits::default()
        };
        assert!(bad.validate().unwrap_err().contains("max_connections"));
    }
}
