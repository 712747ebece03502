//! One download's fixed parts (task, request, layout, writer), how a peer's piece reaches the
//! task file (checked against its digest first), and how origin bytes do: every response is cut
//! at piece boundaries, written at its offset and hashed on the task's writer thread.

use std::ops::Range;
use std::sync::Arc;

use super::request::{DownloadRequest, Progress};
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::id::TaskId;
use crate::metrics::{Metrics, Source};
use crate::origin::Origin;
use crate::peer::{self, PieceError};
use crate::piece::Layout;
use crate::rate::RateLimit;
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

impl Job {
    /// Fetches piece `n` from the origin (a range request, retried) into the task file; with
    /// `expected` (the swarm's digest of it), other bytes are refused.
    pub(crate) async fn origin_piece(&self, n: u32, expected: Option<Digest>) -> Result<Digest> {
        let range = self.layout.range(n);
        self.origin
            .retrying(&self.req.origin, || async {
                let resp = self
                    .origin
                    .open(&self.req.origin, Some(range.clone()))
                    .await?;
                let mut out = self.consume(resp, n..n + 1, &[], &|_| expected).await?;
                out.pop()
                    .map(|(_, d)| d)
                    .ok_or_else(|| Error::Metadata("origin piece produced no digest".into()))
            })
            .await
    }

    /// Fetches piece `n` from the parent at `addr`, checked against `expected`, and stores it.
    pub(crate) async fn peer_piece(
        &self,
        client: &peer::PeerClient,
        addr: &str,
        n: u32,
        expected: Digest,
    ) -> Result<Digest, Failure> {
        let range = self.layout.range(n);
        let data = client
            .fetch_piece(addr, &self.id, n, range.clone(), expected)
            .await
            .map_err(Failure::Peer)?;
        let data = self
            .writer
            .write_verified(n, range.start, data, expected)
            .await
            .map_err(Failure::Fatal)?;
        peer::recycle(data);
        Ok(expected)
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
        let all = 0..self.layout.piece_count();
        if all.is_empty() {
            return Ok(Vec::new());
        }
        let digests = self
            .origin
            .retrying(&self.req.origin, || async {
                let resp = self.origin.open(&self.req.origin, None).await?;
                let known = |n: u32| known.get(n as usize).copied().flatten();
                self.consume(resp, all.clone(), &skip, &known).await
            })
            .await?;
        for (n, d) in &digests {
            let r = self.layout.range(*n);
            progress.add(r.end - r.start);
            pieces[*n as usize] = Some(*d);
        }
        Ok(digests)
    }

    /// Reads `resp`, which starts at the first byte of piece `pieces.start`, writing and hashing
    /// every piece in `pieces` not marked in `skip`; a piece whose digest the swarm published
    /// (`known`) must have it. Returns the digests of the pieces it stored.
    async fn consume(
        &self,
        mut resp: reqwest::Response,
        pieces: Range<u32>,
        skip: &[bool],
        known: &(dyn Fn(u32) -> Option<Digest> + Sync),
    ) -> Result<Vec<(u32, Digest)>> {
        let layout = self.layout;
        let mut out = Vec::new();
        let mut n = pieces.start;
        let mut pos = layout.range(n).start;
        let writer = &self.writer;
        let keep = |n: u32| !skip.get(n as usize).copied().unwrap_or(false);
        if keep(n) {
            writer.begin(n).await?;
        }
        let transport = |e: reqwest::Error| Error::OriginTransport {
            url: self.req.origin.display_url(),
            source: e.without_url(),
        };
        while n < pieces.end {
            let Some(mut chunk) = resp.chunk().await.map_err(transport)? else {
                return Err(Error::OriginProtocol {
                    url: self.req.origin.display_url(),
                    detail: format!(
                        "body ended at byte {pos} of {}",
                        layout.range(pieces.end - 1).end
                    ),
                });
            };
            self.metrics.bytes(Source::Origin, chunk.len() as u64);
            crate::rate::take(self.origin_rate.as_deref(), chunk.len()).await;
            while !chunk.is_empty() && n < pieces.end {
                let end = layout.range(n).end;
                let take = chunk.len().min((end - pos) as usize);
                let part = chunk.split_to(take);
                if keep(n) {
                    writer.write(n, pos, part).await?;
                }
                pos += take as u64;
                if pos == end {
                    if keep(n) {
                        out.push((n, writer.finish(n, known(n)).await?));
                    }
                    n += 1;
                    if n < pieces.end && keep(n) {
                        writer.begin(n).await?;
                    }
                }
            }
        }
        Ok(out)
    }
}
