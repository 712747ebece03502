//! One download's fixed parts (task, request, layout, writer), how a peer's piece reaches the
//! task file (checked against its digest first), and how origin bytes do: every response is cut
//! at piece boundaries, written at its offset and hashed on the task's writer thread.
//!
//! The origin is read in streams: one range request over a run of pieces, each piece stored and
//! reported the moment its last byte is cut from the response, so the pieces arrive in order and
//! the origin serves one long read rather than a request per piece. The piece loop may cut a
//! stream short ([`StreamSpan::cut`]) to give the rest to another connection.

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;

use super::request::{DownloadRequest, Progress};
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::id::TaskId;
use crate::metrics::{Metrics, Source};
use crate::origin::Origin;
use crate::peer::{self, PieceError};
use crate::piece::Layout;
use crate::rate::RateLimit;
use crate::relay::{RelayWriter, Relays};
use crate::store::writer::TaskWriter;

/// How a piece request failed.
pub(crate) enum Failure {
    /// A parent failed it: try another (and maybe report this one).
    Peer(PieceError),
    /// A download error that ends the download (disk, origin refused).
    Fatal(Error),
}

/// Everything the piece loop needs about one download.
#[derive(Clone)]
pub(crate) struct Job {
    pub id: TaskId,
    pub req: DownloadRequest,
    pub layout: Layout,
    pub writer: TaskWriter,
    pub origin: Origin,
    pub metrics: Metrics,
    /// `[limits] origin_rate`: what every byte from the origin takes.
    pub origin_rate: Option<Arc<RateLimit>>,
}

/// What one origin stream has left to deliver: pieces `start..end`, `start` being the one it
/// reads now; and the bytes it read since the piece loop last asked (its rate).
#[derive(Debug)]
pub(crate) struct StreamSpan {
    span: Mutex<Range<u32>>,
    bytes: AtomicU64,
}

impl StreamSpan {
    pub(crate) fn new(pieces: Range<u32>) -> Arc<Self> {
        Arc::new(StreamSpan {
            span: Mutex::new(pieces),
            bytes: AtomicU64::new(0),
        })
    }

    pub(crate) fn range(&self) -> Range<u32> {
        self.lock().clone()
    }

    /// Ends the stream before piece `at`, when `at` lies past the piece it reads now; returns
    /// whether it did. The pieces from `at` on are then no stream's.
    pub(crate) fn cut(&self, at: u32) -> bool {
        let mut span = self.lock();
        let cut = at > span.start && at < span.end;
        if cut {
            span.end = at;
        }
        cut
    }

    /// Bytes read since the last call.
    pub(crate) fn take_bytes(&self) -> u64 {
        self.bytes.swap(0, Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Range<u32>> {
        self.span.lock().expect("stream span lock")
    }
}

/// Where the pieces of one origin response go (see [`Job::consume`]).
trait Cut: Send {
    /// Whether piece `n` is stored (otherwise read past).
    fn keep(&self, _n: u32) -> bool {
        true
    }
    /// The digest piece `n` must have, when the swarm published it.
    fn expected(&self, n: u32) -> Option<Digest>;
    /// The piece after the last one to read; asked before each piece.
    fn end(&self) -> u32;
    /// Piece `n` is stored, with digest `d`.
    fn stored(&mut self, n: u32, d: Digest);
    /// `len` more bytes were read.
    fn read(&self, _len: usize) {}
}

/// Where an origin stream reports each piece it stored: its id, the piece, its digest.
pub(crate) type StreamReports = mpsc::UnboundedSender<(u64, u32, Digest)>;

/// A stream's pieces: reported one by one on a channel as they are stored.
struct Streamed<'a> {
    id: u64,
    span: &'a StreamSpan,
    known: &'a [Option<Digest>],
    done: &'a StreamReports,
}

impl Cut for Streamed<'_> {
    fn expected(&self, n: u32) -> Option<Digest> {
        self.known.get(n as usize).copied().flatten()
    }
    fn end(&self) -> u32 {
        self.span.lock().end
    }
    fn stored(&mut self, n: u32, d: Digest) {
        // Reported before the span moves on, so the piece is never nobody's.
        let _ = self.done.send((self.id, n, d));
        self.span.lock().start = n + 1;
    }
    fn read(&self, len: usize) {
        self.span.bytes.fetch_add(len as u64, Ordering::Relaxed);
    }
}

/// An origin without ranges: the whole content, stored pieces read past.
struct Whole<'a> {
    skip: &'a [bool],
    known: &'a [Option<Digest>],
    end: u32,
    out: Vec<(u32, Digest)>,
}

impl Cut for Whole<'_> {
    fn keep(&self, n: u32) -> bool {
        !self.skip.get(n as usize).copied().unwrap_or(false)
    }
    fn expected(&self, n: u32) -> Option<Digest> {
        self.known.get(n as usize).copied().flatten()
    }
    fn end(&self) -> u32 {
        self.end
    }
    fn stored(&mut self, n: u32, d: Digest) {
        self.out.push((n, d));
    }
}

impl Job {
    /// Streams the pieces of `span` from the origin, in order, in one range request, reporting
    /// each piece to `done` (as stream `id`) as soon as it is stored; a piece whose digest the swarm
    /// published (`known`, by piece) must have it. A failed request is retried from the piece
    /// it was reading (with fresh retries when the stream had moved on since the last failure).
    pub(crate) async fn origin_span(
        &self,
        id: u64,
        span: &StreamSpan,
        known: &[Option<Digest>],
        done: &StreamReports,
    ) -> Result<()> {
        loop {
            let from = span.range().start;
            let result = self
                .origin
                .retrying(&self.req.origin, || async {
                    let pieces = span.range();
                    if pieces.is_empty() {
                        return Ok(());
                    }
                    let bytes = self.layout.range(pieces.start).start
                        ..self.layout.range(pieces.end - 1).end;
                    let resp = self.origin.open(&self.req.origin, Some(bytes)).await?;
                    let mut cut = Streamed {
                        id,
                        span,
                        known,
                        done,
                    };
                    self.consume(resp, pieces.start, &mut cut).await
                })
                .await;
            match result {
                Err(e) if e.retryable() && span.range().start > from => continue,
                other => return other,
            }
        }
    }

    /// Fetches piece `n` from the parent at `addr`, checked against `expected`, and stores it.
    /// With `relay`, the piece is registered there as arriving once the parent answers (and
    /// its number sent on the channel), and passed on while it arrives (see [`crate::relay`]);
    /// the writer comes back with the digest, to be dropped once the piece is offered as held.
    pub(crate) async fn peer_piece(
        &self,
        client: &peer::PeerClient,
        addr: &str,
        n: u32,
        expected: Digest,
        relay: Option<(Arc<Relays>, mpsc::UnboundedSender<u32>)>,
    ) -> Result<(Digest, Option<RelayWriter>), Failure> {
        let range = self.layout.range(n);
        let len = range.end - range.start;
        let start = || {
            let (relays, started) = relay?;
            let writer = relays.start(&self.id, n, len)?;
            let _ = started.send(n);
            Some(writer)
        };
        let (data, relayed) = client
            .fetch_relayed(addr, &self.id, n, range.clone(), expected, start)
            .await
            .map_err(Failure::Peer)?;
        let data = self
            .writer
            .write_verified(n, range.start, data, expected)
            .await
            .map_err(Failure::Fatal)?;
        peer::recycle(data);
        Ok((expected, relayed))
    }

    /// Origin without ranges: one stream over the whole content; stored pieces are skipped.
    /// Returns the digests of the pieces it stored.
    pub(crate) async fn origin_stream(
        &self,
        pieces: &mut [Option<Digest>],
        known: &[Option<Digest>],
        progress: &Progress,
    ) -> Result<Vec<(u32, Digest)>> {
        let skip: Vec<bool> = pieces.iter().map(Option::is_some).collect();
        let count = self.layout.piece_count();
        if count == 0 {
            return Ok(Vec::new());
        }
        let digests = self
            .origin
            .retrying(&self.req.origin, || async {
                let resp = self.origin.open(&self.req.origin, None).await?;
                let mut cut = Whole {
                    skip: &skip,
                    known,
                    end: count,
                    out: Vec::new(),
                };
                self.consume(resp, 0, &mut cut).await?;
                Ok(cut.out)
            })
            .await?;
        for (n, d) in &digests {
            let r = self.layout.range(*n);
            progress.add(Source::Origin, r.end - r.start);
            pieces[*n as usize] = Some(*d);
        }
        Ok(digests)
    }

    /// Reads `resp`, which starts at the first byte of piece `first`, up to the piece `cut`
    /// ends at, writing and hashing every piece `cut` keeps and telling it each one stored.
    async fn consume(
        &self,
        mut resp: reqwest::Response,
        first: u32,
        cut: &mut dyn Cut,
    ) -> Result<()> {
        let layout = self.layout;
        let mut n = first;
        let mut pos = layout.range(n).start;
        let writer = &self.writer;
        let transport = |e: reqwest::Error| Error::OriginTransport {
            url: self.req.origin.display_url(),
            source: e.without_url(),
        };
        if n < cut.end() && cut.keep(n) {
            writer.begin(n).await?;
        }
        while n < cut.end() {
            let Some(mut chunk) = resp.chunk().await.map_err(transport)? else {
                return Err(Error::OriginProtocol {
                    url: self.req.origin.display_url(),
                    detail: format!(
                        "body ended at byte {pos} of {}",
                        layout.range(cut.end() - 1).end
                    ),
                });
            };
            self.metrics.bytes(Source::Origin, chunk.len() as u64);
            cut.read(chunk.len());
            crate::rate::take(self.origin_rate.as_deref(), chunk.len()).await;
            while !chunk.is_empty() {
                let end = layout.range(n).end;
                let take = chunk.len().min((end - pos) as usize);
                let part = chunk.split_to(take);
                if cut.keep(n) {
                    writer.write(n, pos, part).await?;
                }
                pos += take as u64;
                if pos == end {
                    if cut.keep(n) {
                        let d = writer.finish(n, cut.expected(n)).await?;
                        cut.stored(n, d);
                    }
                    n += 1;
                    if n >= cut.end() {
                        break;
                    }
                    if cut.keep(n) {
                        writer.begin(n).await?;
                    }
                }
            }
        }
        Ok(())
    }
}
