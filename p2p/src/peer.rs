//! The peer wire protocol: how one host asks another's upload server (port 4000) for a piece.
//!
//! `GET /tasks/<task>/pieces/<n>` answers the piece's bytes (200), `404` when that host does not
//! hold the piece, and `503` when all its upload slots are busy. [`piece_path`] and
//! [`parse_piece_path`] are the two ends of the path; [`PeerClient`] is the client, which
//! checks every piece against the digest the scheduler published before handing it on.

use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};

use crate::cluster::{Cluster, Role};
use crate::digest::Digest;
use crate::id::TaskId;
use crate::rate::RateLimit;
use crate::relay::RelayWriter;

/// The path of piece `n` of `task` on a peer's upload server.
pub fn piece_path(task: &TaskId, n: u32) -> String {
    format!("/tasks/{task}/pieces/{n}")
}

/// `/tasks/<task>/pieces/<n>` → (task, n); `None` for any other path.
pub fn parse_piece_path(path: &str) -> Option<(TaskId, u32)> {
    let rest = path.strip_prefix("/tasks/")?;
    let (task, n) = rest.split_once("/pieces/")?;
    Some((task.parse().ok()?, n.parse().ok()?))
}

/// Why a piece did not come from a peer: the fetcher decides between another parent and
/// reporting this one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PieceError {
    /// The parent does not hold it (any more) or is busy: try another.
    NotThere,
    /// The parent could not be reached or timed out.
    Unreachable,
    /// The parent answered, then its body broke off before the piece's end: a piece it was
    /// passing on while it arrived failed there (see [`crate::relay`]), or the connection
    /// broke.
    BrokeOff,
    /// The bytes did not match the published digest, or were too many or too few.
    Corrupt,
}

/// The client of other hosts' upload servers: plain HTTP/1.1, or HTTPS with this host's cluster
/// certificate, accepting only servers whose certificate makes them nodes of the cluster.
#[derive(Clone)]
pub struct PeerClient {
    http: reqwest::Client,
    scheme: &'static str,
    /// `[limits] download_rate`: what every piece from peers takes, as it arrives.
    rate: Option<Arc<RateLimit>>,
}

/// Time to connect to a parent, TLS handshake included: long enough for two lost SYNs (1 s and
/// 2 s to their retransmits) on an uplink whose queue is full of uploads. With 2 s, in the lab
/// (32 hosts at 50 Mbit/s), hundreds of piece requests failed to connect and their parents
/// were dropped for the task as unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

impl PeerClient {
    /// `timeout` bounds one whole piece.
    pub fn new(timeout: Duration, cluster: Option<&Cluster>) -> PeerClient {
        let builder = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(timeout)
            .pool_max_idle_per_host(32)
            // Closed before the upload servers close it (their `header_timeout`), so a piece
            // request never goes out on a connection the server is closing.
            .pool_idle_timeout(crate::net::PEER_POOL_IDLE)
            .tcp_nodelay(true)
            .http1_only()
            .no_proxy();
        let (builder, scheme) = match cluster {
            Some(c) => {
                let tls = c.client_config(Role::Node, vec![b"http/1.1".to_vec()]);
                (builder.use_preconfigured_tls(tls), "https")
            }
            None => (builder, "http"),
        };
        PeerClient {
            http: builder
                .build()
                .expect("the peer client's settings are valid"),
            scheme,
            rate: None,
        }
    }

    /// Pieces from peers arrive at most at `rate` on average.
    pub fn with_rate(mut self, rate: Option<Arc<RateLimit>>) -> Self {
        self.rate = rate;
        self
    }

    /// Fetches piece `n` (`range` of the content) of `task` from the upload server at `addr`
    /// and checks it against `expected`. The bytes' buffer may be handed back with [`recycle`].
    pub async fn fetch_piece(
        &self,
        addr: &str,
        task: &TaskId,
        n: u32,
        range: Range<u64>,
        expected: Digest,
    ) -> Result<Bytes, PieceError> {
        let (data, _) = self
            .fetch_relayed(addr, task, n, range, expected, || None)
            .await?;
        Ok(data)
    }

    /// [`fetch_piece`](Self::fetch_piece), relaying the piece while it arrives: once the parent
    /// answers, `relay` may register it (see [`crate::relay`]); its writer gets every chunk
    /// and, when the piece matched `expected`, the held-back last one. It is handed back with
    /// the bytes, to be dropped once the piece is stored; on any failure it is dropped here,
    /// which withdraws the piece from everyone it went to.
    pub async fn fetch_relayed(
        &self,
        addr: &str,
        task: &TaskId,
        n: u32,
        range: Range<u64>,
        expected: Digest,
        relay: impl FnOnce() -> Option<RelayWriter>,
    ) -> Result<(Bytes, Option<RelayWriter>), PieceError> {
        let url = format!("{}://{addr}{}", self.scheme, piece_path(task, n));
        let resp = self
            .http
            .get(&url)
            .send()
            .await
            .map_err(|_| PieceError::Unreachable)?;
        read_piece(resp, range, expected, self.rate.as_deref(), relay).await
    }
}

/// A peer's answer to a piece request, read into one buffer (and relayed) and checked.
async fn read_piece(
    mut resp: reqwest::Response,
    range: Range<u64>,
    expected: Digest,
    rate: Option<&RateLimit>,
    relay: impl FnOnce() -> Option<RelayWriter>,
) -> Result<(Bytes, Option<RelayWriter>), PieceError> {
    match resp.status() {
        http::StatusCode::OK => {}
        http::StatusCode::NOT_FOUND | http::StatusCode::SERVICE_UNAVAILABLE => {
            return Err(PieceError::NotThere);
        }
        _ => return Err(PieceError::Unreachable),
    }
    let len = usize::try_from(range.end - range.start).map_err(|_| PieceError::Corrupt)?;
    // Read into one buffer of the piece's size (no copy when the body is complete, no growth
    // beyond it): a peer that sends more than the piece is cut off as corrupt.
    let mut buf = take_buffer(len);
    let mut relay = relay();
    let mut last = Bytes::new();
    let broke = |e: reqwest::Error| match e.is_timeout() {
        true => PieceError::Unreachable,
        false => PieceError::BrokeOff,
    };
    while let Some(chunk) = resp.chunk().await.map_err(broke)? {
        if chunk.is_empty() {
            continue;
        }
        if buf.len() + chunk.len() > len {
            return Err(PieceError::Corrupt);
        }
        buf.extend_from_slice(&chunk);
        if let Some(r) = &mut relay {
            let is_last = buf.len() == len;
            r.push(&chunk, is_last);
            if is_last {
                last = chunk.clone();
            }
        }
        crate::rate::take(rate, chunk.len()).await;
    }
    if buf.len() != len {
        return Err(PieceError::Corrupt);
    }
    let data: Bytes = buf.freeze();
    let (data, actual) = tokio::task::spawn_blocking(move || {
        let d = Digest::piece(&data);
        (data, d)
    })
    .await
    .expect("hashing does not panic");
    if actual != expected {
        return Err(PieceError::Corrupt);
    }
    if let Some(r) = &relay {
        r.verified(last);
    }
    Ok((data, relay))
}

/// Piece buffers of peer fetches, reused. A fresh piece-sized buffer per piece made glibc raise
/// its mmap threshold and keep the freed buffers in per-thread arenas: a daemon's RSS reached
/// 170 MiB in the lab. Reused, they stay about the pieces in flight.
static BUFFERS: Mutex<Pool> = Mutex::new(Pool {
    buffers: Vec::new(),
    bytes: 0,
});
/// Buffers kept for reuse at most...
const POOLED: usize = 32;
/// ...and their bytes at most (32 pieces of 64 MiB would be 2 GiB).
const POOLED_BYTES: usize = 128 << 20;

struct Pool {
    buffers: Vec<BytesMut>,
    /// Their capacity in all.
    bytes: usize,
}

fn pool() -> std::sync::MutexGuard<'static, Pool> {
    BUFFERS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn take_buffer(len: usize) -> BytesMut {
    let pooled = {
        let mut pool = pool();
        let buf = pool.buffers.pop();
        if let Some(b) = &buf {
            pool.bytes -= b.capacity();
        }
        buf
    };
    pooled
        .filter(|b| b.capacity() >= len)
        .unwrap_or_else(|| BytesMut::with_capacity(len))
}

/// Hands a fetched piece's buffer back for the next fetch, once nothing else holds it.
pub fn recycle(data: Bytes) {
    if let Ok(mut buf) = data.try_into_mut() {
        buf.clear();
        let mut pool = pool();
        if pool.buffers.len() < POOLED && pool.bytes + buf.capacity() <= POOLED_BYTES {
            pool.bytes += buf.capacity();
            pool.buffers.push(buf);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_buffer_pool_keeps_at_most_its_bytes() {
        for _ in 0..8 {
            recycle(Bytes::from(vec![0u8; 64 << 20]));
        }
        let pool = pool();
        assert!(pool.bytes >= 64 << 20, "nothing kept");
        assert!(pool.bytes <= POOLED_BYTES, "{} bytes kept", pool.bytes);
        assert_eq!(
            pool.bytes,
            pool.buffers.iter().map(BytesMut::capacity).sum::<usize>()
        );
    }

    #[test]
    fn piece_paths_round_trip_and_refuse_the_rest() {
        let d = format!("sha256:{}", "a".repeat(64));
        let task: TaskId = d.parse().unwrap();
        assert_eq!(piece_path(&task, 3), format!("/tasks/{d}/pieces/3"));
        assert_eq!(parse_piece_path(&piece_path(&task, 3)), Some((task, 3)));
        assert!(parse_piece_path(&format!("/tasks/{d}/pieces/-1")).is_none());
        assert!(parse_piece_path("/tasks/../../etc/passwd/pieces/1").is_none());
        assert!(parse_piece_path("/").is_none());
    }

    proptest::proptest! {
        /// Any request path: no panic; one taken names a piece whose path is itself.
        #[test]
        fn any_path_is_a_piece_path_or_refused(path in "(/tasks/)?[a-z0-9:/._-]{0,90}") {
            if let Some((task, n)) = parse_piece_path(&path) {
                proptest::prop_assert_eq!(piece_path(&task, n), path);
            }
        }
    }
}
