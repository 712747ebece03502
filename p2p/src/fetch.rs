//! The piece loop: one download's missing pieces, fetched from peers and the origin until all are
//! stored.
//!
//! * Pieces are fetched `piece_concurrency` at a time from peers (rarest first among the pieces
//!   whose digest is known and some parent holds; the parent with the fewest of our requests, a
//!   non-seed before a seed), and `origin.concurrency` at a time from the origin.
//! * A peer's piece is checked against the digest the scheduler published before it is written;
//!   a mismatch is reported and that parent is not used again for this task.
//! * The origin is used when the scheduler says so (this host fetches for the swarm), when there
//!   is no scheduler, and when nothing new appeared in the swarm for `stall_timeout` (seed gone,
//!   scheduler gone): a download never fails because the swarm is sick while the origin is not.
//! * Endgame: when the last few missing pieces are all in flight, each is also asked of a second
//!   parent; the first verified copy wins and the other request is aborted.
//! * Stored pieces are announced to the scheduler (bitmap plus the digests of pieces this host
//!   fetched from the origin), and offered by the upload server at once.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::Rng;
use tokio::sync::watch;
use tokio::task::{AbortHandle, JoinSet};

use crate::bitmap::Bitmap;
use crate::digest::Digest;
use crate::download::{DownloadRequest, Progress};
use crate::error::{Error, Result};
use crate::id::TaskId;
use crate::metrics::{Metrics, Source};
use crate::origin::{Origin, Stat};
use crate::piece::Layout;
use crate::prefix::PrefixHash;
use crate::proto::{Fault, Parent, PieceDigest, PieceSet, TaskView};
use crate::swarm::Swarm;
use crate::upload::Holdings;
use crate::writer::TaskWriter;

/// Everything the piece loop needs about one download.
#[derive(Clone)]
pub(crate) struct Job {
    pub id: TaskId,
    pub req: DownloadRequest,
    pub layout: Layout,
    pub writer: TaskWriter,
    pub origin: Origin,
    pub metrics: Metrics,
}

/// The swarm side of a download, when there is one.
pub(crate) struct SwarmLink<'a> {
    pub swarm: &'a Swarm,
    pub holdings: &'a Holdings,
    pub peers: reqwest::Client,
    /// The open watch stream (None once lost).
    pub stream: Option<tonic::Streaming<TaskView>>,
    pub view: TaskView,
}

/// The endgame starts when this few pieces are missing (and all are in flight).
const ENDGAME_PIECES: usize = 3;
/// Requests in flight to one parent at most: the download's share spread over its parents, and
/// never fewer than [`MIN_PER_PARENT`]. In the lab (8 hosts, 7 peers and a seed each) 2 per
/// parent gave a median of 1.25–1.26× ideal against 1.28–1.34× with 4: more requests to one parent
/// pile onto the few that hold the newest pieces, whose uploads are already the busiest.
fn per_parent_limit(piece_concurrency: usize, parents: usize) -> usize {
    piece_concurrency
        .div_ceil(parents.max(1))
        .max(MIN_PER_PARENT)
}

const MIN_PER_PARENT: usize = 2;

#[derive(Debug)]
enum PieceSource {
    Origin,
    Peer {
        id: String,
        addr: String,
        seed: bool,
    },
}

enum PieceError {
    /// The parent does not hold it (any more) or is busy: try another.
    NotThere,
    /// The parent could not be reached or timed out.
    Unreachable,
    /// The bytes did not match the published digest.
    Corrupt,
    /// A download error that ends the download (disk, origin refused).
    Fatal(Error),
}

type Outcome = (u32, PieceSource, Result<Digest, PieceError>);

pub(crate) struct Run<'a> {
    job: Job,
    link: Option<SwarmLink<'a>>,
    stored: Vec<Option<Digest>>,
    /// Digests of pieces this host fetched from the origin, not yet announced.
    fetched_digests: Vec<PieceDigest>,
    to_origin: bool,
    stat: Option<Stat>,
    avoid: HashSet<String>,
    /// Requests in flight per piece: the parent asked (None: the origin), to abort the rest when
    /// one copy arrives.
    inflight: HashMap<u32, Vec<(Option<String>, AbortHandle)>>,
    per_parent: HashMap<String, usize>,
    origin_inflight: usize,
    /// Who every running request asks (None: the origin), by task id, to free its slot even when
    /// it was aborted.
    spawned: HashMap<tokio::task::Id, Option<String>>,
    last_news: Instant,
    dirty: bool,
    /// Where to report the stored prefix for the whole content's hash, and how many pieces it
    /// holds (see [`PrefixHash`]).
    prefix: Option<watch::Sender<u64>>,
    prefix_pieces: u32,
}

impl<'a> Run<'a> {
    pub(crate) fn new(
        job: Job,
        stored: Vec<Option<Digest>>,
        link: Option<SwarmLink<'a>>,
        stat: Option<Stat>,
        prefix: Option<watch::Sender<u64>>,
    ) -> Self {
        let to_origin = link.as_ref().is_none_or(|l| l.view.back_to_source);
        Run {
            job,
            link,
            stored,
            fetched_digests: Vec::new(),
            to_origin,
            stat,
            avoid: HashSet::new(),
            inflight: HashMap::new(),
            per_parent: HashMap::new(),
            origin_inflight: 0,
            spawned: HashMap::new(),
            last_news: Instant::now(),
            dirty: false,
            prefix,
            prefix_pieces: 0,
        }
    }

    /// Reports how far the stored prefix reaches, for the whole content's hash.
    fn advance_prefix(&mut self) {
        let Some(tx) = &self.prefix else { return };
        let count = self.job.layout.piece_count();
        while self.prefix_pieces < count && self.stored[self.prefix_pieces as usize].is_some() {
            self.prefix_pieces += 1;
        }
        if let Some(last) = self.prefix_pieces.checked_sub(1) {
            PrefixHash::advance(tx, self.job.layout.range(last).end);
        }
    }

    /// Runs until every piece is stored; returns all piece digests.
    pub(crate) async fn run(mut self, progress: &Progress) -> Result<Vec<Digest>> {
        let mut set: JoinSet<Outcome> = JoinSet::new();
        let mut next_announce = Instant::now();
        let mut reconnect_at: Option<Instant> = None;
        self.advance_prefix();
        loop {
            if let Some(f) = self.link.as_ref().and_then(|l| l.view.failure.clone()) {
                return Err(Error::OriginStatus {
                    url: self.job.req.origin.display_url(),
                    status: u16::try_from(f.http_status).unwrap_or(502),
                });
            }
            if self.stored.iter().all(Option::is_some) {
                self.announce().await;
                return Ok(self
                    .stored
                    .into_iter()
                    .map(|d| d.expect("all stored"))
                    .collect());
            }
            if self.to_origin && self.stat.as_ref().is_some_and(|s| !s.ranges) && set.is_empty() {
                // An origin without ranges is one stream; nothing else can run beside it.
                let digests =
                    crate::download::fetch_stream(&self.job, &mut self.stored, progress).await?;
                self.advance_prefix();
                self.fetched_digests
                    .extend(digests.into_iter().map(|(n, d)| piece_digest(n, &d)));
                continue;
            }
            self.fill(&mut set).await?;

            let stall = self.last_news + self.stall_timeout();
            let announce_due = self.dirty && self.link.is_some();
            tokio::select! {
                Some(done) = set.join_next_with_id(), if !set.is_empty() => match done {
                    Ok((task, (n, source, result))) => {
                        self.spawned.remove(&task);
                        self.finished(n, source, result, progress).await?;
                    }
                    // An endgame duplicate aborted because the other copy arrived first.
                    Err(e) if e.is_cancelled() => {
                        let asked = self.spawned.remove(&e.id());
                        self.release(asked);
                    }
                    Err(e) => std::panic::resume_unwind(e.into_panic()),
                },
                msg = next_view(&mut self.link), if self.link.as_ref().is_some_and(|l| l.stream.is_some()) => {
                    match msg {
                        Some(view) => self.update(view),
                        None => {
                            tracing::warn!(task = %self.job.id, "lost the scheduler; going on with the parents known");
                            if let Some(l) = self.link.as_mut() { l.stream = None; }
                            reconnect_at = Some(Instant::now() + Duration::from_millis(500));
                        }
                    }
                }
                () = tokio::time::sleep_until(next_announce.into()), if announce_due => {
                    self.announce().await;
                    next_announce = Instant::now() + Duration::from_millis(20);
                }
                () = tokio::time::sleep_until(reconnect_at.unwrap_or_else(Instant::now).into()), if reconnect_at.is_some() => {
                    reconnect_at = match self.rewatch().await {
                        true => None,
                        false => Some(Instant::now() + Duration::from_secs(1)),
                    };
                }
                () = tokio::time::sleep_until(stall.into()), if !self.to_origin => {
                    tracing::warn!(task = %self.job.id, "no new pieces in the swarm for {:?}; fetching the rest from the origin", self.stall_timeout());
                    self.to_origin = true;
                }
            }
        }
    }

    fn stall_timeout(&self) -> Duration {
        self.link
            .as_ref()
            .map_or(Duration::from_secs(10), |l| l.swarm.config().stall_timeout)
    }

    fn parents(&self) -> Vec<&Parent> {
        self.link
            .as_ref()
            .map(|l| {
                l.view
                    .parents
                    .iter()
                    .filter(|p| !self.avoid.contains(&p.host_id))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Starts piece requests until the limits are reached or nothing more can start.
    async fn fill(&mut self, set: &mut JoinSet<Outcome>) -> Result<()> {
        let n_pieces = self.job.layout.piece_count();
        let peer_limit = self
            .link
            .as_ref()
            .map_or(0, |l| l.swarm.config().piece_concurrency);
        loop {
            let peer_inflight: usize = self.per_parent.values().sum();
            let parents: Vec<(String, String, Bitmap, bool)> = self
                .parents()
                .into_iter()
                .map(|p| {
                    (
                        p.host_id.clone(),
                        p.upload_addr.clone(),
                        Bitmap::from_bytes(&p.bitmap, n_pieces),
                        p.seed,
                    )
                })
                .collect();
            let per_parent = per_parent_limit(peer_limit, parents.len());
            let missing: Vec<u32> = (0..n_pieces)
                .filter(|&n| self.stored[n as usize].is_none())
                .collect();
            let known: Vec<bool> = (0..n_pieces).map(|n| self.expected(n).is_some()).collect();
            let expected = |n: u32| known[n as usize];
            let mut started = false;
            if peer_inflight < peer_limit {
                // Rarest first, random among equals.
                let mut best: Option<(usize, u32, u32)> = None;
                let mut rng = rand::rng();
                for n in missing
                    .iter()
                    .copied()
                    .filter(|n| !self.inflight.contains_key(n) && expected(*n))
                {
                    let free =
                        |id: &String| self.per_parent.get(id).copied().unwrap_or(0) < per_parent;
                    let holders = parents.iter().filter(|p| p.2.get(n) && free(&p.0)).count();
                    if holders == 0 {
                        continue;
                    }
                    let tie: u32 = rng.random();
                    if best.is_none_or(|(h, _, t)| (holders, tie) < (h, t)) {
                        best = Some((holders, n, tie));
                    }
                }
                // Endgame: every missing piece is in flight, so a piece in flight from one peer
                // is asked of another holder too.
                let endgame = missing.len() <= ENDGAME_PIECES
                    && missing.iter().all(|n| self.inflight.contains_key(n));
                let pick = best.map(|(_, n, _)| n).or_else(|| {
                    if !endgame {
                        return None;
                    }
                    self.inflight
                        .iter()
                        .filter(|(_, reqs)| reqs.len() == 1)
                        .find(|(n, reqs)| {
                            expected(**n)
                                && parents
                                    .iter()
                                    .any(|p| p.2.get(**n) && reqs[0].0.as_ref() != Some(&p.0))
                        })
                        .map(|(n, _)| *n)
                });
                if let Some(n) = pick {
                    let asked: Vec<&String> = self
                        .inflight
                        .get(&n)
                        .into_iter()
                        .flatten()
                        .filter_map(|(p, _)| p.as_ref())
                        .collect();
                    // A peer before a seed (the seed's upload is for pieces only it holds), then
                    // the parent we ask least; at most `per_parent` requests to one parent.
                    let load = |id: &String| self.per_parent.get(id).copied().unwrap_or(0);
                    let chosen = parents
                        .iter()
                        .filter(|p| p.2.get(n) && !asked.contains(&&p.0) && load(&p.0) < per_parent)
                        .min_by_key(|p| (p.3, load(&p.0)));
                    if let Some((id, addr, _, seed)) = chosen {
                        let (id, addr, seed) = (id.clone(), addr.clone(), *seed);
                        self.spawn_peer(set, n, id, addr, seed);
                        started = true;
                    }
                }
            }
            if !started
                && self.to_origin
                && self.origin_inflight < self.job.origin.config().concurrency
            {
                // Pieces a peer could give us (held by a parent, digest known) are left to the
                // peers; the rest come from the origin.
                let from_peers = |n: u32| expected(n) && parents.iter().any(|p| p.2.get(n));
                if let Some(n) = missing
                    .iter()
                    .copied()
                    .find(|n| !self.inflight.contains_key(n) && !from_peers(*n))
                {
                    if self.stat.is_none() {
                        self.stat = Some(self.job.origin.stat(&self.job.req.origin).await?);
                        if self.stat.as_ref().is_some_and(|s| !s.ranges) {
                            return Ok(());
                        }
                    }
                    self.spawn_origin(set, n);
                    started = true;
                }
            }
            if !started {
                return Ok(());
            }
        }
    }

    fn expected(&self, n: u32) -> Option<Digest> {
        let raw = self.link.as_ref()?.view.digests.get(n as usize)?;
        let bytes: [u8; 32] = raw.as_slice().try_into().ok()?;
        Some(Digest::new(crate::digest::Algorithm::PIECE, bytes))
    }

    fn spawn_peer(
        &mut self,
        set: &mut JoinSet<Outcome>,
        n: u32,
        parent: String,
        addr: String,
        seed: bool,
    ) {
        let link = self.link.as_ref().expect("peers come from the swarm");
        let expected = self
            .expected(n)
            .expect("only pieces with known digests are asked of peers");
        let (client, job) = (link.peers.clone(), self.job.clone());
        tracing::debug!(task = %self.job.id, piece = n, parent, "piece requested");
        *self.per_parent.entry(parent.clone()).or_default() += 1;
        let asked = parent.clone();
        let handle = set.spawn(async move {
            let result = fetch_from_peer(&client, &job, &addr, n, expected).await;
            (
                n,
                PieceSource::Peer {
                    id: parent,
                    addr,
                    seed,
                },
                result,
            )
        });
        self.spawned.insert(handle.id(), Some(asked.clone()));
        self.inflight
            .entry(n)
            .or_default()
            .push((Some(asked), handle));
    }

    fn spawn_origin(&mut self, set: &mut JoinSet<Outcome>, n: u32) {
        let job = self.job.clone();
        self.origin_inflight += 1;
        let handle = set.spawn(async move {
            let range = job.layout.range(n);
            let result = job
                .origin
                .retrying(&job.req.origin, || async {
                    let resp = job
                        .origin
                        .open(&job.req.origin, Some(range.clone()))
                        .await?;
                    let mut skip = Vec::new();
                    consume_one(&job, resp, n, &mut skip).await
                })
                .await
                .map_err(PieceError::Fatal);
            (n, PieceSource::Origin, result)
        });
        self.spawned.insert(handle.id(), None);
        self.inflight.entry(n).or_default().push((None, handle));
    }

    /// Frees the request slot of a finished or aborted request (`None`: the origin).
    fn release(&mut self, parent: Option<Option<String>>) {
        match parent {
            Some(None) => self.origin_inflight -= 1,
            Some(Some(id)) => {
                if let Some(c) = self.per_parent.get_mut(&id) {
                    *c = c.saturating_sub(1);
                }
            }
            None => {}
        }
    }

    async fn finished(
        &mut self,
        n: u32,
        source: PieceSource,
        result: Result<Digest, PieceError>,
        progress: &Progress,
    ) -> Result<()> {
        self.release(Some(match &source {
            PieceSource::Origin => None,
            PieceSource::Peer { id, .. } => Some(id.clone()),
        }));
        let handles = self.inflight.get_mut(&n);
        match result {
            Ok(digest) => {
                if let Some(hs) = self.inflight.remove(&n) {
                    // The first verified copy wins; the endgame's other request is not needed.
                    hs.iter().for_each(|(_, h)| h.abort());
                }
                if self.stored[n as usize].is_some() {
                    return Ok(());
                }
                self.stored[n as usize] = Some(digest);
                self.advance_prefix();
                let r = self.job.layout.range(n);
                progress.add(r.end - r.start);
                tracing::debug!(task = %self.job.id, piece = n, from = ?source, "piece stored");
                match source {
                    PieceSource::Origin => self.fetched_digests.push(piece_digest(n, &digest)),
                    PieceSource::Peer { seed, .. } => {
                        let from = if seed { Source::Seed } else { Source::Peer };
                        self.job.metrics.bytes(from, r.end - r.start);
                    }
                }
                if let Some(l) = &self.link {
                    l.holdings.add(&self.job.id, n);
                }
                self.dirty = true;
                self.last_news = Instant::now();
                Ok(())
            }
            Err(e) => {
                if let Some(hs) = handles {
                    hs.retain(|(_, h)| !h.is_finished());
                    if hs.is_empty() {
                        self.inflight.remove(&n);
                    }
                }
                let PieceSource::Peer { id, addr, .. } = source else {
                    return match e {
                        PieceError::Fatal(e) => Err(e),
                        _ => Err(Error::Metadata(
                            "origin piece failed without an error".into(),
                        )),
                    };
                };
                let fault = match e {
                    PieceError::Fatal(e) => return Err(e),
                    PieceError::NotThere => return Ok(()),
                    PieceError::Unreachable => Fault::Unreachable,
                    PieceError::Corrupt => Fault::Corrupt,
                };
                tracing::warn!(task = %self.job.id, piece = n, parent = id, %addr, ?fault, "parent failed; not using it again for this task");
                self.avoid.insert(id.clone());
                if let Some(l) = &self.link {
                    l.swarm.report(&self.job.id, &id, fault).await;
                }
                Ok(())
            }
        }
    }

    fn update(&mut self, view: TaskView) {
        let link = self.link.as_mut().expect("views come from the swarm");
        let news = view
            .parents
            .iter()
            .map(|p| Bitmap::from_bytes(&p.bitmap, self.job.layout.piece_count()).count())
            .sum::<u32>()
            > link
                .view
                .parents
                .iter()
                .map(|p| Bitmap::from_bytes(&p.bitmap, self.job.layout.piece_count()).count())
                .sum::<u32>()
            || view.digests.iter().filter(|d| !d.is_empty()).count()
                > link.view.digests.iter().filter(|d| !d.is_empty()).count();
        if news {
            self.last_news = Instant::now();
        }
        if view.back_to_source && !self.to_origin {
            tracing::info!(task = %self.job.id, "the scheduler sends this host to the origin");
            self.to_origin = true;
        }
        link.view = view;
    }

    async fn rewatch(&mut self) -> bool {
        let have = self.piece_set(true);
        let Some(link) = self.link.as_mut() else {
            return true;
        };
        let task = crate::download::task_message(&self.job.id, &self.job.req);
        match link.swarm.watch(task, have).await {
            Ok(stream) => {
                tracing::info!(task = %self.job.id, "watching the task again");
                link.stream = Some(stream);
                true
            }
            Err(_) => false,
        }
    }

    fn piece_set(&self, all_digests: bool) -> PieceSet {
        let bitmap: Bitmap = self.stored.iter().map(Option::is_some).collect();
        let digests = if all_digests {
            // After a scheduler restart it knows no digests: share the ones this host checked.
            (0u32..)
                .zip(&self.stored)
                .filter_map(|(n, d)| d.map(|d| piece_digest(n, &d)))
                .collect()
        } else {
            self.fetched_digests.clone()
        };
        PieceSet {
            length_known: true,
            content_length: self.job.layout.content_length,
            bitmap: bitmap.as_bytes().to_vec(),
            digests,
        }
    }

    async fn announce(&mut self) {
        let Some(link) = &self.link else { return };
        let set = self.piece_set(false);
        self.fetched_digests.clear();
        self.dirty = false;
        link.swarm.announce(&self.job.id, Some(set), None).await;
    }
}

async fn next_view(link: &mut Option<SwarmLink<'_>>) -> Option<TaskView> {
    let stream = link.as_mut()?.stream.as_mut()?;
    stream.message().await.ok().flatten()
}

fn piece_digest(n: u32, d: &Digest) -> PieceDigest {
    PieceDigest {
        number: n,
        blake3: d.bytes().to_vec(),
    }
}

/// Fetches piece `n` from a parent's upload server, checks it, and stores it.
async fn fetch_from_peer(
    client: &reqwest::Client,
    job: &Job,
    addr: &str,
    n: u32,
    expected: Digest,
) -> Result<Digest, PieceError> {
    let url = format!("http://{addr}/tasks/{}/pieces/{n}", job.id);
    let resp = client
        .get(&url)
        .send()
        .await
        .map_err(|_| PieceError::Unreachable)?;
    match resp.status() {
        http::StatusCode::OK => {}
        http::StatusCode::NOT_FOUND | http::StatusCode::SERVICE_UNAVAILABLE => {
            return Err(PieceError::NotThere);
        }
        _ => return Err(PieceError::Unreachable),
    }
    let range = job.layout.range(n);
    let len = usize::try_from(range.end - range.start).expect("a piece fits in memory");
    // Read into one buffer of the piece's size (no copy when the body is complete, no growth
    // beyond it): a peer that sends more than the piece is cut off as corrupt.
    let mut buf = take_buffer(len);
    let mut resp = resp;
    while let Some(chunk) = resp.chunk().await.map_err(|_| PieceError::Unreachable)? {
        if buf.len() + chunk.len() > len {
            return Err(PieceError::Corrupt);
        }
        buf.extend_from_slice(&chunk);
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
    let data = job
        .writer
        .write_verified(n, range.start, data, actual)
        .await
        .map_err(PieceError::Fatal)?;
    give_back(data);
    Ok(actual)
}

/// Piece buffers of peer fetches, reused. A fresh piece-sized buffer per piece made glibc raise
/// its mmap threshold and keep the freed buffers in per-thread arenas: a daemon's RSS reached
/// 170 MiB in the lab. Reused, they stay about the pieces in flight.
static BUFFERS: std::sync::Mutex<Vec<bytes::BytesMut>> = std::sync::Mutex::new(Vec::new());
/// Buffers kept for reuse at most (each a piece long).
const POOLED: usize = 32;

fn take_buffer(len: usize) -> bytes::BytesMut {
    let pooled = BUFFERS
        .lock()
        .expect("buffer pool lock")
        .pop()
        .filter(|b| b.capacity() >= len);
    pooled.unwrap_or_else(|| bytes::BytesMut::with_capacity(len))
}

fn give_back(data: Bytes) {
    if let Ok(mut buf) = data.try_into_mut() {
        buf.clear();
        let mut pool = BUFFERS.lock().expect("buffer pool lock");
        if pool.len() < POOLED {
            pool.push(buf);
        }
    }
}

/// Reads one piece from an origin response into the task file.
async fn consume_one(
    job: &Job,
    resp: reqwest::Response,
    n: u32,
    skip: &mut Vec<bool>,
) -> Result<Digest> {
    skip.clear();
    let mut out = crate::download::consume(job, resp, n..n + 1, skip).await?;
    out.pop()
        .map(|(_, d)| d)
        .ok_or_else(|| Error::Metadata("origin piece produced no digest".into()))
}

/// Reports a download's swarm holdings as stopped when dropped.
pub(crate) struct HoldingGuard<'a> {
    pub holdings: &'a Holdings,
    pub id: TaskId,
}

impl Drop for HoldingGuard<'_> {
    fn drop(&mut self) {
        self.holdings.stop(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_spread_over_parents_but_one_parent_can_fill_the_download() {
        // The lab: 8 in flight over 7 peers and a seed.
        assert_eq!(per_parent_limit(8, 8), MIN_PER_PARENT);
        // One parent (a seed, or a single peer): all 8 from it.
        assert_eq!(per_parent_limit(8, 1), 8);
        assert_eq!(per_parent_limit(8, 3), 3);
        assert_eq!(per_parent_limit(8, 0), 8);
        assert_eq!(per_parent_limit(1, 4), MIN_PER_PARENT);
    }
}
