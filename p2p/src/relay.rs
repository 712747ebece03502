//! Cut-through relaying: a piece passed on while it is still arriving.
//!
//! A host fetching piece `n` from a parent registers it as arriving ([`Relays::start`]) once the
//! parent answers 200, and pushes each chunk as it comes. Its upload server answers other hosts'
//! requests for that piece from the chunks so far and follows the rest as it comes
//! ([`RelayReader`]), instead of answering "not here" until the piece is stored. The piece's last
//! chunk is held back until the whole piece matched its digest: a piece that fails (corrupt,
//! cut off, timed out) is withdrawn, and every host it went to sees its response break off before
//! its end, never a complete wrong piece. Each of them checks the piece against the digest the
//! scheduler published anyway; the hold-back keeps a relaying host from being reported corrupt
//! for bytes its own parent sent.
//!
//! Without it every hop is store-and-forward: with 8 pieces in flight on a link, a 1 MiB piece
//! takes 0.3–0.6 s to arrive, and a host two hops from the seed got each piece that much later
//! (`integration/BENCHMARKS.md`).
//!

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::watch;

use crate::bitmap::Bitmap;
use crate::id::TaskId;

/// How an arriving piece ended, so far.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum End {
    /// Chunks may still come.
    Open,
    /// Every chunk is there and the piece matched its digest.
    Verified,
    /// Withdrawn: its readers break off.
    Failed,
}

#[derive(Debug)]
struct Chunks {
    chunks: Vec<Bytes>,
    end: End,
}

/// One piece arriving here: its chunks so far, shared with the readers relaying it.
#[derive(Debug)]
struct Arriving {
    len: u64,
    state: watch::Sender<Chunks>,
}

impl Arriving {
    fn new(len: u64) -> Arc<Self> {
        Arc::new(Arriving {
            len,
            state: watch::Sender::new(Chunks {
                chunks: Vec::new(),
                end: End::Open,
            }),
        })
    }

    /// A reader from the first byte.
    fn reader(&self) -> RelayReader {
        RelayReader {
            rx: self.state.subscribe(),
            next: 0,
        }
    }

    fn push(&self, chunk: Bytes) {
        if !chunk.is_empty() {
            self.state.send_modify(|s| s.chunks.push(chunk));
        }
    }

    /// The piece matched its digest: `last` (its held-back end) goes out, and its readers end.
    fn verified(&self, last: Bytes) {
        self.state.send_modify(|s| {
            if !last.is_empty() {
                s.chunks.push(last);
            }
            s.end = End::Verified;
        });
    }

    fn fail(&self) {
        self.state.send_modify(|s| {
            if s.end == End::Open {
                s.end = End::Failed;
            }
        });
    }
}

/// The piece was withdrawn (it failed here) before a reader had all of it.
#[derive(Debug, thiserror::Error)]
#[error("the piece being relayed failed at the relaying host")]
pub struct Withdrawn;

/// Reads an arriving piece's chunks in order, waiting for the next one.
pub struct RelayReader {
    rx: watch::Receiver<Chunks>,
    next: usize,
}

impl RelayReader {
    /// The next chunk; `None` after the last one of a verified piece.
    pub async fn next(&mut self) -> Result<Option<Bytes>, Withdrawn> {
        loop {
            {
                let s = self.rx.borrow_and_update();
                if s.end == End::Failed {
                    return Err(Withdrawn);
                }
                if let Some(c) = s.chunks.get(self.next) {
                    self.next += 1;
                    return Ok(Some(c.clone()));
                }
                if s.end == End::Verified {
                    return Ok(None);
                }
            }
            // Once the piece's writer is gone, `changed` fails: the piece ended here without
            // being verified (its state is checked above first, so a verified piece is read
            // to its end).
            if self.rx.changed().await.is_err() {
                return Err(Withdrawn);
            }
        }
    }
}

/// The pieces arriving here, by task and piece, for the upload server to relay.
#[derive(Default)]
pub struct Relays {
    arriving: Mutex<HashMap<(TaskId, u32), Arc<Arriving>>>,
}

impl Relays {
    /// Registers piece `n` of `task` (`len` bytes) as arriving until the writer is dropped;
    /// `None` when it is arriving already (an endgame's second request for it is not relayed:
    /// the first one's readers stay with the first).
    pub fn start(self: &Arc<Self>, task: &TaskId, n: u32, len: u64) -> Option<RelayWriter> {
        let mut map = self.lock();
        let key = (task.clone(), n);
        if map.contains_key(&key) {
            return None;
        }
        let piece = Arriving::new(len);
        map.insert(key.clone(), piece.clone());
        Some(RelayWriter {
            piece,
            relays: self.clone(),
            key,
        })
    }

    /// A reader of piece `n` of `task`, if it is arriving here.
    pub fn reader(&self, task: &TaskId, n: u32) -> Option<(u64, RelayReader)> {
        let map = self.lock();
        let piece = map.get(&(task.clone(), n))?;
        Some((piece.len, piece.reader()))
    }

    /// The pieces of `task` arriving here, of `count` pieces.
    pub fn pieces(&self, task: &TaskId, count: u32) -> Bitmap {
        let mut bits = Bitmap::new(count);
        for (t, n) in self.lock().keys() {
            if t == task && *n < count {
                bits.set(*n);
            }
        }
        bits
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(TaskId, u32), Arc<Arriving>>> {
        self.arriving
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The fetching side of an arriving piece: chunks pushed as they come, the last held back
/// until [`RelayWriter::verified`]. Dropped before that, the piece is withdrawn; either way it
/// leaves the registry when dropped, which the piece loop does once the piece is stored and
/// offered as held, so a request finds it arriving or stored. (An endgame's other copy that
/// was aborted because this one won may drop its writer a moment before: a request in that
/// moment is answered "not here", and asks again.)
pub struct RelayWriter {
    piece: Arc<Arriving>,
    relays: Arc<Relays>,
    key: (TaskId, u32),
}

impl RelayWriter {
    /// `chunk` arrived; `last` when it completes the piece (held back until verified).
    pub fn push(&mut self, chunk: &Bytes, last: bool) {
        if !last {
            self.piece.push(chunk.clone());
        }
    }

    /// The piece matched its digest: its readers get the held-back `last` chunk and end.
    pub fn verified(&self, last: Bytes) {
        self.piece.verified(last);
    }
}

impl Drop for RelayWriter {
    fn drop(&mut self) {
        self.piece.fail();
        let mut map = self.relays.lock();
        if map
            .get(&self.key)
            .is_some_and(|p| Arc::ptr_eq(p, &self.piece))
        {
            map.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn readers_follow_the_chunks_and_end_when_verified() {
        let piece = Arriving::new(6);
        let mut early = piece.reader();
        piece.push(Bytes::from_static(b"ab"));
        assert_eq!(early.next().await.unwrap().unwrap(), "ab");
        let waiting = tokio::spawn(async move {
            let mut got = Vec::new();
            while let Some(c) = early.next().await.unwrap() {
                got.extend_from_slice(&c);
            }
            got
        });
        piece.push(Bytes::from_static(b"cd"));
        piece.verified(Bytes::from_static(b"ef"));
        assert_eq!(waiting.await.unwrap(), b"cdef");
        // A reader that comes after the end still gets every chunk.
        let mut late = piece.reader();
        let mut got = Vec::new();
        while let Some(c) = late.next().await.unwrap() {
            got.extend_from_slice(&c);
        }
        assert_eq!(got, b"abcdef");
    }

    #[tokio::test]
    async fn a_withdrawn_piece_breaks_off_its_readers_and_never_sends_its_end() {
        let relays = Arc::new(Relays::default());
        let task: TaskId = format!("sha256:{}", "a".repeat(64)).parse().unwrap();
        let mut writer = relays.start(&task, 3, 6).unwrap();
        // A second request for the same piece (the endgame's) is not relayed.
        assert!(relays.start(&task, 3, 6).is_none());
        let (len, mut reader) = relays.reader(&task, 3).unwrap();
        assert_eq!(len, 6);
        assert!(relays.pieces(&task, 8).get(3));
        writer.push(&Bytes::from_static(b"abcd"), false);
        // The chunk that completes the piece is held back until the piece is verified...
        writer.push(&Bytes::from_static(b"ef"), true);
        assert_eq!(reader.next().await.unwrap().unwrap(), "abcd");
        let pending = tokio::spawn(async move { reader.next().await });
        tokio::task::yield_now().await;
        // ...and the piece failed its digest: the reader breaks off without it.
        drop(writer);
        assert!(pending.await.unwrap().is_err());
        // And it is no longer offered.
        assert!(relays.reader(&task, 3).is_none());
        assert_eq!(relays.pieces(&task, 8).count(), 0);
    }
}
