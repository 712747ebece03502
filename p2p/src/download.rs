//! The download pipeline: from a URL to a complete, verified task in the store.
//!
//! [`Downloader::download`] reads top-down: the request names a task; a complete task in the
//! store answers at once; otherwise the content length comes from the swarm (or the origin),
//! the task is opened (or resumed) in the store, and the piece loop (`pieces`) takes the missing
//! pieces from peers and the origin; the whole content is checked against its digest when one is
//! known (hashed while the pieces arrive) and the task is completed. Every byte stream is cut at
//! piece boundaries, written at its offset and hashed on one writer thread (`job`); a piece
//! counts once its record is in the task's journal. [`Downloader::read`] streams a task's bytes
//! while it downloads (`reader`).

mod choose;
mod job;
mod link;
mod pieces;
mod reader;
mod request;
mod traffic;
mod urgent;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use job::Job;
use link::{Courier, SwarmLink, task_message};
use pieces::Run;
pub use reader::{ChunkReader, Reading};
pub use request::{DownloadRequest, Downloaded, Progress};
pub use traffic::Traffic;

use crate::bitmap::Bitmap;
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::id::TaskId;
use crate::metrics::{Metrics, Outcome, OutcomeLabel, Source};
use crate::origin::{Origin, OriginConfig, Stat};
use crate::peer::PeerClient;
use crate::piece::Layout;
use crate::proto::PieceSet;
use crate::rate::RateLimit;
use crate::store::{AsyncStore, Holdings, TaskMeta};
use crate::swarm::Swarm;

/// Downloads tasks into a store; one download per task at a time.
pub struct Downloader {
    store: AsyncStore,
    origin: Origin,
    metrics: Metrics,
    running: Mutex<HashMap<TaskId, Arc<tokio::sync::Mutex<()>>>>,
    swarm: Option<Arc<Swarm>>,
    holdings: Arc<Holdings>,
    peers: PeerClient,
    /// Downloads [`Downloader::read`] may start at once (they go on after their reader left).
    background: Arc<tokio::sync::Semaphore>,
    max_background: usize,
    origin_rate: Option<Arc<RateLimit>>,
    /// Pieces readers wait for (see [`Reading::present`]).
    urgent: Arc<urgent::Urgent>,
    /// Where the recent tasks' bytes came from.
    traffic: Arc<Traffic>,
}

/// Background downloads at once unless [`Downloader::with_background_limit`] says otherwise.
pub const MAX_BACKGROUND: usize = 64;

impl Downloader {
    /// A downloader that only uses the origin (no swarm).
    pub fn new(store: AsyncStore, origin: Origin, metrics: Metrics) -> Self {
        Self::with_swarm(store, origin, metrics, None, Arc::default())
    }

    /// A downloader that takes pieces from the swarm, falling back to the origin.
    pub fn with_swarm(
        store: AsyncStore,
        origin: Origin,
        metrics: Metrics,
        swarm: Option<Arc<Swarm>>,
        holdings: Arc<Holdings>,
    ) -> Self {
        let timeout = swarm
            .as_ref()
            .map_or(Duration::from_secs(30), |s| s.config().peer_timeout);
        let peers = PeerClient::new(timeout, swarm.as_ref().and_then(|s| s.cluster()));
        Downloader {
            store,
            origin,
            metrics,
            running: Mutex::default(),
            swarm,
            holdings,
            peers,
            background: Arc::new(tokio::sync::Semaphore::new(MAX_BACKGROUND)),
            max_background: MAX_BACKGROUND,
            origin_rate: None,
            urgent: Arc::default(),
            traffic: Arc::default(),
        }
    }

    /// Pieces from peers (`download`) and bytes from the origin (`origin`) move at most at
    /// these rates on average (`[limits] download_rate`, `origin_rate`).
    pub fn with_rates(
        mut self,
        download: Option<Arc<RateLimit>>,
        origin: Option<Arc<RateLimit>>,
    ) -> Self {
        self.peers = self.peers.with_rate(download);
        self.origin_rate = origin;
        self
    }

    /// At most `n` downloads started by [`Downloader::read`] run at once; past that, `read`
    /// of a task not running already is [`Error::Busy`].
    pub fn with_background_limit(mut self, n: usize) -> Self {
        self.background = Arc::new(tokio::sync::Semaphore::new(n));
        self.max_background = n;
        self
    }

    pub fn store(&self) -> &AsyncStore {
        &self.store
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Where the recent tasks' bytes came from (each download's share, as the metrics count it).
    pub fn traffic(&self) -> &Traffic {
        &self.traffic
    }

    /// The origin client's settings (timeouts, trusted CAs).
    pub fn origin_config(&self) -> &OriginConfig {
        self.origin.config()
    }

    /// The pieces of unfinished tasks this host holds.
    pub fn holdings(&self) -> &Arc<Holdings> {
        &self.holdings
    }

    /// The swarm this downloader takes pieces from, if any.
    pub fn swarm(&self) -> Option<&Arc<Swarm>> {
        self.swarm.as_ref()
    }

    /// Whether a download of `id` runs here.
    fn is_running(&self, id: &TaskId) -> bool {
        self.running
            .lock()
            .expect("running map lock")
            .contains_key(id)
    }

    /// Makes the task for `req` complete in the store, from the cache or the origin, and
    /// returns where its content is. Concurrent calls for one task share the work.
    #[tracing::instrument(skip_all, fields(task))]
    pub async fn download(&self, req: &DownloadRequest, progress: &Progress) -> Result<Downloaded> {
        let id = req.task_id();
        tracing::Span::current().record("task", tracing::field::display(&id));
        let expected = match (req.digest, id.blob_digest()) {
            (Some(a), Some(b)) if a != b => {
                return Err(Error::InvalidRequest(format!(
                    "digest {a} disagrees with the blob URL's digest {b}"
                )));
            }
            (a, b) => a.or(b),
        };
        self.metrics.active_downloads.inc();
        let lock = {
            let mut running = self.running.lock().expect("running map lock");
            running.entry(id.clone()).or_default().clone()
        };
        let result = {
            // A download that waited for another of the same task (a seed job and the request
            // that caused it, say) does not count that one's bytes again as a cache hit.
            let (_one_at_a_time, joined) = match lock.try_lock() {
                Ok(guard) => (guard, false),
                Err(_) => (lock.lock().await, true),
            };
            self.download_locked(&id, req, expected, progress, joined)
                .await
        };
        {
            let mut running = self.running.lock().expect("running map lock");
            if Arc::strong_count(&lock) == 2 {
                running.remove(&id);
            }
        }
        self.metrics.active_downloads.dec();
        let outcome = if result.is_ok() {
            Outcome::Ok
        } else {
            Outcome::Error
        };
        self.metrics
            .downloads
            .get_or_create(&OutcomeLabel { outcome })
            .inc();
        result
    }

    async fn download_locked(
        &self,
        id: &TaskId,
        req: &DownloadRequest,
        expected: Option<Digest>,
        progress: &Progress,
        joined: bool,
    ) -> Result<Downloaded> {
        let path = self.store.data_path(id);
        if let Some(meta) = self.store.cached(id, expected).await? {
            let len = meta.layout.content_length;
            progress.start(len, len);
            if !joined {
                self.metrics.bytes(Source::Cache, len);
                self.traffic.add(id.as_str(), len, Source::Cache, len);
            }
            return Ok(Downloaded {
                task: id.clone(),
                meta,
                path,
                from_cache: true,
            });
        }

        let mut link = match &self.swarm {
            Some(swarm) => self.link(swarm.clone(), id, req).await,
            None => None,
        };
        if link.is_none() && req.swarm_only() {
            return Err(Error::NotInSwarm {
                task: id.clone(),
                why: "no scheduler",
            });
        }
        let (layout, stat) = self.layout(id, req, link.as_mut()).await?;
        // Where the content comes from: the swarm's sources, and this host's origin when it
        // asked it (for the length, or to fetch pieces).
        let mut sources = link
            .as_ref()
            .map(|l| l.view.sources.clone())
            .unwrap_or_default();
        if stat.is_some() || link::to_origin(link.as_ref()) {
            sources.push(req.origin.source());
        }
        let state = self
            .store
            .open_task(id, req.origin.display_url(), layout, sources)
            .await?;
        progress.start(layout.content_length, state.stored_bytes());
        progress.tell(self.traffic.clone(), id.as_str());
        tracing::debug!(
            length = layout.content_length,
            pieces = layout.piece_count(),
            resumed = state.stored_bytes(),
            swarm = link.is_some(),
            "downloading"
        );
        let _holding = self
            .holdings
            .hold(id, state.pieces.iter().map(Option::is_some).collect());
        let job = Job {
            id: id.clone(),
            req: req.clone(),
            layout,
            writer: self.store.task_writer(id)?,
            origin: self.origin.clone(),
            metrics: self.metrics.clone(),
            origin_rate: self.origin_rate.clone(),
        };
        let is_fetcher = link.as_ref().is_some_and(|l| l.view.back_to_source);
        let prefix = match expected {
            Some(exp) => Some(self.store.prefix_hash(id, exp.algorithm())?),
            None => None,
        };
        let reporter = prefix.as_ref().map(|p| p.reporter());
        let run = Run::new(job, state.pieces, state.meta.sources, link, stat, reporter)
            .with_urgent(self.urgent.clone());
        let (pieces, sources) = match run.run(progress).await {
            Ok(p) => p,
            Err(e) => {
                if is_fetcher {
                    self.announce_failure(id, &e).await;
                }
                return Err(e);
            }
        };

        let digest = match expected.zip(prefix) {
            Some((exp, prefix)) => {
                let actual = prefix
                    .finish(layout.content_length)
                    .await
                    .map_err(|e| Error::io("read task file", &path, e))?;
                if actual != exp {
                    self.store.remove(id).await?;
                    return Err(Error::DigestMismatch {
                        task: id.clone(),
                        expected: exp,
                        actual,
                    });
                }
                Some(actual)
            }
            None => None,
        };
        let meta = self.store.complete(id, digest, pieces, sources).await?;
        Ok(Downloaded {
            task: id.clone(),
            meta,
            path,
            from_cache: false,
        })
    }

    /// The task's layout: the length from the swarm when it knows it, else from the origin
    /// (whose answer is kept, and told to the swarm). A length no task can have is refused.
    async fn layout(
        &self,
        id: &TaskId,
        req: &DownloadRequest,
        link: Option<&mut SwarmLink<'_>>,
    ) -> Result<(Layout, Option<Stat>)> {
        let Some(link) = link else {
            let stat = self.origin.stat(&req.origin).await?;
            return Ok((origin_layout(req, &stat)?, Some(stat)));
        };
        // Content only the swarm has is there now or not at all (its builder is on it).
        if let Some(len) = link.wait_for_length(!req.swarm_only()).await {
            match Layout::for_length(len) {
                Some(layout) => return Ok((layout, None)),
                None => {
                    tracing::warn!(task = %id, len, "the swarm's content length is impossible; asking the origin")
                }
            }
        }
        if req.swarm_only() {
            return Err(Error::NotInSwarm {
                task: id.clone(),
                why: "no holder told its length",
            });
        }
        match self.origin.stat(&req.origin).await {
            Ok(stat) => {
                let layout = origin_layout(req, &stat)?;
                let set = PieceSet {
                    length_known: true,
                    content_length: stat.content_length,
                    sources: vec![req.origin.source()],
                    ..Default::default()
                };
                link.courier.announce(set);
                Ok((layout, Some(stat)))
            }
            Err(e) => {
                if link.view.back_to_source {
                    self.announce_failure(id, &e).await;
                }
                Err(e)
            }
        }
    }

    /// Watches the task in the swarm; `None` (origin only) when the scheduler cannot be reached.
    async fn link(
        &self,
        swarm: Arc<Swarm>,
        id: &TaskId,
        req: &DownloadRequest,
    ) -> Option<SwarmLink<'_>> {
        let have = self.resumed_pieces(id).await;
        let (at, mut stream) = match swarm.watch(task_message(id, req), have).await {
            Ok(watching) => watching,
            Err(e) => {
                tracing::warn!(task = %id, error = %e, "scheduler unreachable; using the origin");
                return None;
            }
        };
        let first = tokio::time::timeout(swarm.config().connect_timeout * 2, stream.message());
        let Ok(Ok(Some(view))) = first.await else {
            tracing::warn!(task = %id, "the scheduler sent no view; using the origin");
            return None;
        };
        Some(SwarmLink {
            courier: Courier::start(swarm.clone(), id.clone(), at),
            swarm,
            holdings: &self.holdings,
            peers: self.peers.clone(),
            stream: Some(stream),
            view,
        })
    }

    /// What a resumed task already holds, to register with.
    async fn resumed_pieces(&self, id: &TaskId) -> PieceSet {
        let Ok(Some(state)) = self.store.state(id).await else {
            return PieceSet::default();
        };
        let bitmap: Bitmap = state.pieces.iter().map(Option::is_some).collect();
        PieceSet {
            length_known: true,
            content_length: state.meta.layout.content_length,
            bitmap: bitmap.as_bytes().to_vec(),
            digests: Vec::new(),
            sources: state.meta.sources,
            arriving: Vec::new(),
        }
    }

    /// Stores `data`, made on this host (a seed's gzip index of a layer), as the complete task
    /// `id`, and tells the swarm this host holds it with its piece digests (a seed's are
    /// believed). `url` is the task's, `sources` the upstreams its content derives from.
    pub async fn publish(
        &self,
        id: &TaskId,
        url: String,
        data: Vec<u8>,
        sources: Vec<crate::proto::Source>,
    ) -> Result<TaskMeta> {
        let (meta, digests) = self.store.import(id, url, data, sources).await?;
        if let Some(swarm) = &self.swarm {
            let bitmap: Bitmap = digests.iter().map(|_| true).collect();
            let set = PieceSet {
                length_known: true,
                content_length: meta.layout.content_length,
                bitmap: bitmap.as_bytes().to_vec(),
                digests: (0u32..)
                    .zip(&digests)
                    .map(|(n, d)| crate::proto::PieceDigest::of(n, d))
                    .collect(),
                sources: meta.sources.clone(),
                arriving: Vec::new(),
            };
            swarm.announce(id, Some(set), None).await;
        }
        Ok(meta)
    }

    /// Tells the swarm this host, its fetcher, could not fetch from the origin (an HTTP error,
    /// or no answer at all), so the hosts waiting for it go to the origin themselves at once.
    async fn announce_failure(&self, id: &TaskId, e: &Error) {
        let Some(swarm) = &self.swarm else { return };
        if e.fault() != crate::error::Fault::Origin {
            return;
        }
        let failure = crate::proto::Failure {
            http_status: e.origin_status().map_or(0, u32::from),
            message: e.to_string(),
        };
        swarm.announce(id, None, Some(failure)).await;
    }
}

/// The layout of what the origin said it has; an impossible length is the origin's fault.
fn origin_layout(req: &DownloadRequest, stat: &Stat) -> Result<Layout> {
    Layout::for_length(stat.content_length).ok_or_else(|| Error::OriginProtocol {
        url: req.origin.display_url(),
        detail: format!(
            "content length {} is over the {} bytes a task may have",
            stat.content_length,
            crate::piece::MAX_CONTENT_LENGTH
        ),
    })
}
