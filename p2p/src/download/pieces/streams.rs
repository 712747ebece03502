//! The piece loop's origin streams (see `job`): starting them, taking their pieces, pausing
//! them for readers, and splitting the slow ones.

use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinSet;

use super::{Outcome, PieceSource, Run};
use crate::digest::Digest;
use crate::download::job::StreamSpan;
use crate::download::request::Progress;
use crate::error::Result;

/// How often the origin streams' rates are looked at.
pub(super) const STREAM_WINDOW: Duration = Duration::from_secs(1);
/// A stream is split only when this many pieces are left to it.
const SPLIT_MIN_PIECES: u32 = 4;

/// One origin stream as the piece loop sees it.
pub(super) struct OriginStream {
    id: u64,
    span: Arc<StreamSpan>,
    /// The next piece this loop expects from it (it reports them in order).
    next: u32,
    /// Started for pieces a reader waited for.
    urgent: bool,
    /// Bytes in its best [`STREAM_WINDOW`] so far, and windows seen.
    best: u64,
    windows: u32,
}

impl OriginStream {
    /// The pieces it has still to deliver.
    pub(super) fn pending(&self) -> Range<u32> {
        self.next..self.span.range().end
    }
}

impl Run<'_> {
    /// Starts an origin stream over `pieces` (see `job`).
    pub(super) fn spawn_stream(
        &mut self,
        set: &mut JoinSet<Outcome>,
        pieces: Range<u32>,
        urgent: bool,
    ) {
        if self.streams.is_empty() {
            self.window_at = Instant::now() + STREAM_WINDOW;
        }
        self.stream_ids += 1;
        let id = self.stream_ids;
        tracing::debug!(task = %self.job.id, ?pieces, urgent, "origin stream");
        let span = StreamSpan::new(pieces.clone());
        // The origin's bytes must be what the swarm's fetcher published, when it did.
        let known: Vec<Option<Digest>> = (0..self.job.layout.piece_count())
            .map(|n| self.expected(n))
            .collect();
        let (job, done, shared) = (self.job.clone(), self.streamed.0.clone(), span.clone());
        set.spawn(async move {
            let result = job.origin_span(id, &shared, &known, &done).await;
            Outcome::Stream(id, result)
        });
        self.streams.push(OriginStream {
            id,
            span,
            next: pieces.start,
            urgent,
            best: 0,
            windows: 0,
        });
    }

    /// Piece `n` came from origin stream `id`.
    pub(super) fn stream_piece(
        &mut self,
        id: u64,
        n: u32,
        digest: Digest,
        progress: &Progress,
    ) -> Result<()> {
        if let Some(s) = self.streams.iter_mut().find(|s| s.id == id) {
            s.next = n + 1;
        }
        self.finished(n, PieceSource::Origin, Ok((digest, None)), progress)
    }

    /// Origin stream `id` ended: every piece it stored was reported before it ended.
    pub(super) fn stream_ended(
        &mut self,
        id: u64,
        result: Result<()>,
        progress: &Progress,
    ) -> Result<()> {
        while let Ok((from, n, digest)) = self.streamed.1.try_recv() {
            self.stream_piece(from, n, digest, progress)?;
        }
        self.streams.retain(|s| s.id != id);
        result
    }

    /// While a reader waits, the streams started for the background stop after the piece they
    /// read now (the pieces the reader waits for then get streams of their own).
    pub(super) fn make_way_for_readers(&mut self) {
        let Some((u, _)) = &self.urgent else { return };
        if u.pieces(&self.job.id).is_empty() {
            return;
        }
        for s in self.streams.iter().filter(|s| !s.urgent) {
            s.span.cut(s.span.range().start + 1);
        }
    }

    /// Called every [`STREAM_WINDOW`]: a stream that slowed to under half its best rate, or
    /// read nothing at all, gives the second half of its rest to a new connection (when
    /// `origin.concurrency` allows one). After a split the rates are learnt anew: streams that
    /// share one bottleneck each read half as much, which is no slowdown of theirs.
    pub(super) fn split_slow_streams(&mut self) {
        let mut free = self
            .job
            .origin
            .config()
            .concurrency
            .saturating_sub(self.streams.len());
        let mut split = false;
        for s in &mut self.streams {
            let bytes = s.span.take_bytes();
            s.windows += 1;
            let slow = s.windows > 1 && bytes * 2 < s.best;
            s.best = s.best.max(bytes);
            let span = s.span.range();
            let left = span.end.saturating_sub(span.start);
            if free > 0 && slow && left >= SPLIT_MIN_PIECES && s.span.cut(span.start + left / 2) {
                tracing::debug!(task = %self.job.id, stream = s.id, bytes, best = s.best, "origin stream slowed; splitting it");
                free -= 1;
                split = true;
            }
        }
        if split {
            for s in &mut self.streams {
                s.best = 0;
                s.windows = 0;
            }
        }
    }
}
