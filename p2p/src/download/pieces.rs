//! The piece loop: one download's missing pieces, fetched from peers and the origin until all are
//! stored.
//!
//! * Pieces are fetched `piece_concurrency` at a time from peers (rarest first among the pieces
//!   whose digest is known and some parent holds; the parent with the fewest of our requests, a
//!   non-seed before a seed).
//! * From the origin in streams (see `job`): one range request over the next run of pieces no
//!   parent can give, the pieces stored in order as they arrive. A second connection (up to
//!   `origin.concurrency`) takes the second half of a stream's rest only when that stream slows
//!   to under half its best rate (or stops); after a split every stream learns its rate anew, so
//!   streams sharing one bottleneck do not split again and again. While a reader waits, the
//!   background streams stop after their current piece and its pieces get streams of their own.
//! * A peer's piece is checked against the digest the scheduler published before it is written;
//!   a mismatch is reported and that parent is not used again for this task.
//! * The origin is used when the scheduler says so (this host fetches for the swarm), when the
//!   host that fetches for the swarm failed (this request's own credentials may work), when there
//!   is no scheduler, and when nothing new appeared in the swarm for `stall_timeout` (seed gone,
//!   scheduler gone): a download never fails because the swarm is sick while the origin is not.
//! * Endgame: when the last few missing pieces are all in flight, each is also asked of a second
//!   parent; the first verified copy wins and the other request is aborted.
//! * Stored pieces are announced to the scheduler (bitmap plus the digests of pieces this host
//!   fetched from the origin) through the link's courier, never waiting for the RPC, and offered
//!   by the upload server at once.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use super::choose::{Candidate, Inflight, Snapshot};
use super::job::{Failure, Job, StreamReports};
use super::link::{SwarmLink, next_view, task_message};
use super::request::Progress;
use super::urgent::Urgent;
use crate::bitmap::Bitmap;
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::metrics::Source;
use crate::origin::Stat;
use crate::peer::PieceError;
use crate::proto::{Fault, PieceDigest, PieceSet, TaskView, add_sources};
use crate::relay::{RelayWriter, Relays};
use crate::store::prefix::PrefixHash;

mod streams;
use streams::{OriginStream, STREAM_WINDOW};

#[derive(Debug)]
enum PieceSource {
    Origin,
    Peer {
        id: String,
        addr: String,
        seed: bool,
        /// The parent did not hold the piece yet but had it arriving (cut-through).
        arriving: bool,
    },
}

/// How a spawned request ended: a peer's piece, or an origin stream (its pieces were reported
/// as they came).
enum Outcome {
    Piece(
        u32,
        PieceSource,
        Result<(Digest, Option<RelayWriter>), Failure>,
    ),
    Stream(u64, Result<()>),
}

/// How long a parent that answered "not here" or "busy" is not asked again.
const PARENT_REST: Duration = Duration::from_millis(200);
pub(crate) struct Run<'a> {
    job: Job,
    link: Option<SwarmLink<'a>>,
    stored: Vec<Option<Digest>>,
    /// Digests of pieces this host fetched from the origin, not yet announced.
    fetched_digests: Vec<PieceDigest>,
    /// Every upstream the stored pieces came from, as far as this host knows: the task's
    /// record, the swarm's sources, and this host's origin once it fetched from it.
    sources: Vec<crate::proto::Source>,
    to_origin: bool,
    stat: Option<Stat>,
    avoid: HashSet<String>,
    /// Parents that answered a piece request with "not here" or "busy" (all upload slots
    /// taken), not asked again until then.
    resting: HashMap<String, Instant>,
    /// Requests in flight per piece: the parent asked (None: the origin), to abort the rest when
    /// one copy arrives.
    inflight: Inflight,
    per_parent: HashMap<String, usize>,
    /// Origin streams running, and where they report their pieces.
    streams: Vec<OriginStream>,
    stream_ids: u64,
    /// When the streams' current rate window ends.
    window_at: Instant,
    streamed: (StreamReports, mpsc::UnboundedReceiver<(u64, u32, Digest)>),
    /// The parent every running peer request asks, by task id, to free its slot even when it
    /// was aborted.
    spawned: HashMap<tokio::task::Id, String>,
    last_news: Instant,
    dirty: bool,
    /// Where to report the stored prefix for the whole content's hash, and how many pieces it
    /// holds (see [`PrefixHash`]).
    prefix: Option<watch::Sender<u64>>,
    prefix_pieces: u32,
    /// Pieces readers wait for, and word of new ones.
    urgent: Option<(Arc<Urgent>, watch::Receiver<u64>)>,
    /// Where pieces arriving from peers are passed on while they come (`[swarm] cut_through`),
    /// and word of each piece that started arriving (to announce it).
    relays: Option<Arc<Relays>>,
    started: (mpsc::UnboundedSender<u32>, mpsc::UnboundedReceiver<u32>),
}

impl<'a> Run<'a> {
    pub(crate) fn new(
        job: Job,
        stored: Vec<Option<Digest>>,
        sources: Vec<crate::proto::Source>,
        link: Option<SwarmLink<'a>>,
        stat: Option<Stat>,
        prefix: Option<watch::Sender<u64>>,
    ) -> Self {
        let to_origin = super::link::to_origin(link.as_ref());
        let relays = link
            .as_ref()
            .filter(|l| l.swarm.config().cut_through)
            .map(|l| l.holdings.relays().clone());
        Run {
            job,
            link,
            stored,
            fetched_digests: Vec::new(),
            sources,
            to_origin,
            stat,
            avoid: HashSet::new(),
            resting: HashMap::new(),
            inflight: HashMap::new(),
            per_parent: HashMap::new(),
            streams: Vec::new(),
            stream_ids: 0,
            window_at: Instant::now(),
            streamed: mpsc::unbounded_channel(),
            spawned: HashMap::new(),
            last_news: Instant::now(),
            dirty: false,
            prefix,
            prefix_pieces: 0,
            urgent: None,
            relays,
            started: mpsc::unbounded_channel(),
        }
    }

    /// Asks first for the pieces readers wait for in `urgent`.
    pub(crate) fn with_urgent(mut self, urgent: Arc<Urgent>) -> Self {
        let rx = urgent.subscribe();
        self.urgent = Some((urgent, rx));
        self
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

    /// Runs until every piece is stored; returns all piece digests and every upstream they
    /// came from.
    pub(crate) async fn run(
        mut self,
        progress: &Progress,
    ) -> Result<(Vec<Digest>, Vec<crate::proto::Source>)> {
        let mut set: JoinSet<Outcome> = JoinSet::new();
        let mut next_announce = Instant::now();
        let mut reconnect_at: Option<Instant> = None;
        self.advance_prefix();
        loop {
            if self.to_origin && self.job.req.swarm_only() {
                return Err(Error::NotInSwarm {
                    task: self.job.id.clone(),
                    why: "its holders are gone",
                });
            }
            if self.stored.iter().all(Option::is_some) {
                self.announce();
                let pieces = self.stored.into_iter().map(|d| d.expect("all stored"));
                return Ok((pieces.collect(), self.sources));
            }
            if self.to_origin && self.stat.as_ref().is_some_and(|s| !s.ranges) && set.is_empty() {
                // An origin without ranges is one stream; nothing else can run beside it.
                let known: Vec<Option<Digest>> = (0..self.job.layout.piece_count())
                    .map(|n| self.expected(n))
                    .collect();
                let digests = self
                    .job
                    .origin_stream(&mut self.stored, &known, progress)
                    .await?;
                self.advance_prefix();
                for (n, d) in digests {
                    self.fetched(n, &d);
                }
                continue;
            }
            let now = Instant::now();
            self.resting.retain(|_, until| *until > now);
            let rested = self.resting.values().min().copied();
            self.fill(&mut set).await?;

            let stall = self.last_news + self.stall_timeout();
            let announce_due = self.dirty && self.link.is_some();
            tokio::select! {
                Some(done) = set.join_next_with_id(), if !set.is_empty() => match done {
                    Ok((task, Outcome::Piece(n, source, result))) => {
                        let asked = self.spawned.remove(&task);
                        self.release(asked);
                        self.finished(n, source, result, progress)?;
                    }
                    Ok((_, Outcome::Stream(id, result))) => self.stream_ended(id, result, progress)?,
                    // An endgame duplicate aborted because the other copy arrived first.
                    Err(e) if e.is_cancelled() => {
                        let asked = self.spawned.remove(&e.id());
                        self.release(asked);
                    }
                    Err(e) => std::panic::resume_unwind(e.into_panic()),
                },
                Some((id, n, digest)) = self.streamed.1.recv() => self.stream_piece(id, n, digest, progress)?,
                // A piece started arriving: announced, so that others may take it as it comes.
                Some(_) = self.started.1.recv() => self.dirty = true,
                () = tokio::time::sleep_until(rested.unwrap_or(now).into()), if rested.is_some() => {}
                () = tokio::time::sleep_until(self.window_at.into()), if !self.streams.is_empty() => {
                    self.split_slow_streams();
                    self.window_at = Instant::now() + STREAM_WINDOW;
                }
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
                    self.announce();
                    next_announce = Instant::now() + Duration::from_millis(20);
                }
                () = tokio::time::sleep_until(reconnect_at.unwrap_or_else(Instant::now).into()), if reconnect_at.is_some() => {
                    reconnect_at = match self.rewatch().await {
                        true => None,
                        false => Some(Instant::now() + Duration::from_secs(1)),
                    };
                }
                Ok(()) = async { self.urgent.as_mut().expect("guarded").1.changed().await }, if self.urgent.is_some() => {}
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

    /// Starts piece requests until the limits are reached or nothing more can start.
    async fn fill(&mut self, set: &mut JoinSet<Outcome>) -> Result<()> {
        let piece_concurrency = self
            .link
            .as_ref()
            .map_or(0, |l| l.swarm.config().piece_concurrency);
        self.make_way_for_readers();
        loop {
            let peer_inflight: usize = self.per_parent.values().sum();
            let origin_free =
                self.to_origin && self.streams.len() < self.job.origin.config().concurrency;
            let (to_peer, to_origin) = {
                let snap = self.snapshot(piece_concurrency);
                // While a reader waits, the background pauses: no other piece starts.
                let background = snap.urgent.is_empty();
                let to_peer = (peer_inflight < 2 * piece_concurrency)
                    .then(|| snap.urgent_peer())
                    .flatten()
                    .or_else(|| {
                        (background && peer_inflight < piece_concurrency)
                            .then(|| snap.peer())
                            .flatten()
                    })
                    .map(|(n, p)| {
                        let arriving = p.arriving.get(n);
                        (n, p.id.clone(), p.addr.clone(), p.seed, arriving)
                    });
                let to_origin = (to_peer.is_none() && origin_free)
                    .then(|| snap.origin_run())
                    .flatten();
                (to_peer, to_origin)
            };
            match (to_peer, to_origin) {
                (Some((n, id, addr, seed, arriving)), _) => {
                    self.spawn_peer(set, n, id, addr, seed, arriving)
                }
                (None, Some((pieces, urgent))) => {
                    if self.stat.is_none() {
                        self.stat = Some(self.job.origin.stat(&self.job.req.origin).await?);
                        if self.stat.as_ref().is_some_and(|s| !s.ranges) {
                            return Ok(());
                        }
                    }
                    self.spawn_stream(set, pieces, urgent);
                }
                (None, None) => return Ok(()),
            }
        }
    }

    /// What the chooser needs to know now.
    fn snapshot(&self, piece_concurrency: usize) -> Snapshot<'_> {
        let count = self.job.layout.piece_count();
        let parents = self.link.as_ref().map_or(Vec::new(), |l| {
            l.view
                .parents
                .iter()
                .filter(|p| !self.avoid.contains(&p.host_id))
                .map(|p| {
                    let arriving = Bitmap::from_bytes(&p.arriving, count);
                    let mut holds = Bitmap::from_bytes(&p.bitmap, count);
                    holds.union(&arriving);
                    Candidate {
                        id: p.host_id.clone(),
                        addr: p.upload_addr.clone(),
                        holds,
                        arriving,
                        seed: p.seed,
                        elsewhere: p.elsewhere,
                        resting: self.resting.contains_key(&p.host_id),
                    }
                })
                .collect()
        });
        let urgent = self.urgent.as_ref().map_or(Vec::new(), |(u, _)| {
            let mut wanted = u.pieces(&self.job.id);
            wanted.retain(|&n| self.stored.get(n as usize).is_some_and(Option::is_none));
            wanted
        });
        let mut streamed = Bitmap::new(count);
        for s in &self.streams {
            s.pending().for_each(|n| streamed.set(n));
        }
        Snapshot {
            parents,
            missing: (0..count)
                .filter(|&n| self.stored[n as usize].is_none())
                .collect(),
            urgent,
            known: (0..count).map(|n| self.expected(n).is_some()).collect(),
            inflight: &self.inflight,
            streamed,
            load: &self.per_parent,
            piece_concurrency,
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
        arriving: bool,
    ) {
        let link = self.link.as_ref().expect("peers come from the swarm");
        let expected = self
            .expected(n)
            .expect("only pieces with known digests are asked of peers");
        let (client, job) = (link.peers.clone(), self.job.clone());
        let relay = self.relays.clone().map(|r| (r, self.started.0.clone()));
        tracing::debug!(task = %self.job.id, piece = n, parent, arriving, "piece requested");
        *self.per_parent.entry(parent.clone()).or_default() += 1;
        let asked = parent.clone();
        let handle = set.spawn(async move {
            let result = job.peer_piece(&client, &addr, n, expected, relay).await;
            let source = PieceSource::Peer {
                id: parent,
                addr,
                seed,
                arriving,
            };
            Outcome::Piece(n, source, result)
        });
        self.spawned.insert(handle.id(), asked.clone());
        self.inflight.entry(n).or_default().push((asked, handle));
    }

    /// Frees the request slot of a finished or aborted peer request.
    fn release(&mut self, parent: Option<String>) {
        if let Some(c) = parent.and_then(|id| self.per_parent.get_mut(&id)) {
            *c = c.saturating_sub(1);
        }
    }

    fn finished(
        &mut self,
        n: u32,
        source: PieceSource,
        result: Result<(Digest, Option<RelayWriter>), Failure>,
        progress: &Progress,
    ) -> Result<()> {
        let handles = self.inflight.get_mut(&n);
        match result {
            Ok((digest, relayed)) => {
                // Leaves the relays once the piece is offered as held (below), or now.
                let _relayed = relayed;
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
                tracing::debug!(task = %self.job.id, piece = n, from = ?source, "piece stored");
                let from = match source {
                    PieceSource::Origin => {
                        self.fetched(n, &digest);
                        Source::Origin
                    }
                    PieceSource::Peer { seed, .. } => {
                        let from = if seed { Source::Seed } else { Source::Peer };
                        self.job.metrics.bytes(from, r.end - r.start);
                        from
                    }
                };
                progress.add(from, r.end - r.start);
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
                // The piece may have been arriving here: the next announcement says it is not.
                self.dirty |= self.relays.is_some();
                let (id, addr, e) = match (source, e) {
                    (_, Failure::Fatal(e)) => return Err(e),
                    // A piece the parent had arriving broke off: it failed there (and was
                    // withdrawn), which says nothing against the parent. (Unreachable or
                    // timed out, it is reported as any parent is.)
                    (
                        PieceSource::Peer {
                            id, arriving: true, ..
                        },
                        Failure::Peer(PieceError::BrokeOff),
                    ) => (id, String::new(), PieceError::NotThere),
                    (PieceSource::Peer { id, addr, .. }, Failure::Peer(e)) => (id, addr, e),
                    (PieceSource::Origin, Failure::Peer(_)) => {
                        return Err(Error::Metadata("an origin piece failed as a peer".into()));
                    }
                };
                let fault = match e {
                    PieceError::NotThere => {
                        // Asked again at once, a busy parent would answer busy again, and
                        // again: it rests a while.
                        self.resting.insert(id, Instant::now() + PARENT_REST);
                        return Ok(());
                    }
                    PieceError::Unreachable | PieceError::BrokeOff => Fault::Unreachable,
                    PieceError::Corrupt => Fault::Corrupt,
                };
                tracing::warn!(task = %self.job.id, piece = n, parent = id, %addr, ?fault, "parent failed; not using it again for this task");
                self.avoid.insert(id.clone());
                if let Some(l) = &self.link {
                    l.courier.report(&id, fault);
                }
                Ok(())
            }
        }
    }

    fn update(&mut self, view: TaskView) {
        let count = self.job.layout.piece_count();
        // News: more pieces held by the parents, or more digests known.
        let known = |v: &TaskView| {
            let held: u32 = (v.parents.iter())
                .map(|p| Bitmap::from_bytes(&p.bitmap, count).count())
                .sum();
            (held, v.digests.iter().filter(|d| !d.is_empty()).count())
        };
        if view.back_to_source && !self.to_origin {
            tracing::info!(task = %self.job.id, "the scheduler sends this host to the origin");
            self.to_origin = true;
        }
        if let Some(f) = &view.failure
            && !self.to_origin
        {
            // Another host's failure, with its credentials: this request may well succeed.
            tracing::info!(task = %self.job.id, failure = f.message, "the fetcher's origin request failed; fetching from the origin with this request's own credentials");
            self.to_origin = true;
        }
        add_sources(&mut self.sources, &view.sources);
        let link = self.link.as_mut().expect("views come from the swarm");
        let before = known(&link.view);
        link.take(view);
        let after = known(&link.view);
        if after.0 > before.0 || after.1 > before.1 {
            self.last_news = Instant::now();
        }
    }

    /// Piece `n` came from this host's origin.
    fn fetched(&mut self, n: u32, digest: &Digest) {
        self.fetched_digests.push(PieceDigest::of(n, digest));
        add_sources(&mut self.sources, &[self.job.req.origin.source()]);
    }

    async fn rewatch(&mut self) -> bool {
        let have = self.piece_set(true);
        let Some(link) = self.link.as_mut() else {
            return true;
        };
        let task = task_message(&self.job.id, &self.job.req);
        match link.swarm.watch(task, have).await {
            Ok((at, stream)) => {
                tracing::info!(task = %self.job.id, scheduler = at, "watching the task again");
                link.courier.watching(at);
                link.stream = Some(stream);
                true
            }
            Err(_) => false,
        }
    }

    fn piece_set(&self, all_digests: bool) -> PieceSet {
        let bitmap: Bitmap = self.stored.iter().map(Option::is_some).collect();
        let arriving = self.relays.as_ref().map_or(Vec::new(), |r| {
            let mut arriving = r.pieces(&self.job.id, self.job.layout.piece_count());
            arriving.subtract(&bitmap);
            arriving.as_bytes().to_vec()
        });
        let digests = if all_digests {
            // After a scheduler restart it knows no digests: share the ones this host checked.
            (0u32..)
                .zip(&self.stored)
                .filter_map(|(n, d)| d.map(|d| PieceDigest::of(n, &d)))
                .collect()
        } else {
            self.fetched_digests.clone()
        };
        PieceSet {
            length_known: true,
            content_length: self.job.layout.content_length,
            bitmap: bitmap.as_bytes().to_vec(),
            digests,
            sources: self.sources.clone(),
            arriving,
        }
    }

    fn announce(&mut self) {
        let Some(link) = &self.link else { return };
        let set = self.piece_set(false);
        self.fetched_digests.clear();
        self.dirty = false;
        link.courier.announce(set);
    }
}
