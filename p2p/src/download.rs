//! The download pipeline: from a URL to a complete, verified task in the store.
//!
//! [`Downloader::download`] answers from the cache when it can; otherwise it learns the content
//! length (from the swarm, or the origin), opens (or resumes) the task in the store, and hands the
//! missing pieces to the piece loop (the `fetch` module), which takes them from peers and the
//! origin. Every byte stream is cut at piece boundaries, written at its offset and hashed on one
//! writer thread; a piece counts once its record is in the task's journal. The whole content is
//! checked against its digest when one is known, hashed while the pieces arrive (the `prefix`
//! module).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use std::time::Duration;

use crate::bitmap::Bitmap;
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::fetch::{HoldingGuard, Job, Run, SwarmLink};
use crate::id::{IdOptions, TaskId};
use crate::metrics::{Metrics, Outcome, OutcomeLabel, Source};
use crate::origin::{Origin, OriginRequest, Stat};
use crate::piece::Layout;
use crate::prefix::PrefixHash;
use crate::proto::PieceSet;
use crate::store::{self, Store, TaskMeta};
use crate::swarm::Swarm;
use crate::upload::Holdings;
use crate::writer::TaskWriter;

/// What to download.
#[derive(Clone, Debug)]
pub struct DownloadRequest {
    pub origin: OriginRequest,
    pub id_options: IdOptions,
    /// The whole content's expected digest, if the caller knows it.
    pub digest: Option<Digest>,
    /// The task id, when the caller was given it (a seed job); else derived from the URL.
    pub task_id: Option<TaskId>,
}

impl DownloadRequest {
    pub fn task_id(&self) -> TaskId {
        self.task_id
            .clone()
            .unwrap_or_else(|| TaskId::for_url(&self.origin.url, &self.id_options))
    }
}

/// A finished download.
#[derive(Clone, Debug)]
pub struct Downloaded {
    pub task: TaskId,
    pub meta: TaskMeta,
    /// The task's content in the store.
    pub path: PathBuf,
    /// Whether the whole content was already in the store.
    pub from_cache: bool,
}

/// Progress of one download, shared with whoever displays it.
#[derive(Debug, Default)]
pub struct Progress {
    total: AtomicU64,
    done: AtomicU64,
}

impl Progress {
    /// `(bytes stored, content length)`; the length is 0 until known.
    pub fn get(&self) -> (u64, u64) {
        (
            self.done.load(Ordering::Relaxed),
            self.total.load(Ordering::Relaxed),
        )
    }

    fn start(&self, total: u64, done: u64) {
        self.total.store(total, Ordering::Relaxed);
        self.done.store(done, Ordering::Relaxed);
    }

    pub(crate) fn add(&self, n: u64) {
        self.done.fetch_add(n, Ordering::Relaxed);
    }
}

/// Downloads tasks into a [`Store`]; one download per task at a time.
pub struct Downloader {
    store: Arc<Store>,
    origin: Origin,
    metrics: Metrics,
    running: Mutex<HashMap<TaskId, Arc<tokio::sync::Mutex<()>>>>,
    swarm: Option<Arc<Swarm>>,
    holdings: Arc<Holdings>,
    peers: reqwest::Client,
}

impl Downloader {
    /// A downloader that only uses the origin (no swarm).
    pub fn new(store: Arc<Store>, origin: Origin, metrics: Metrics) -> Self {
        Self::with_swarm(store, origin, metrics, None, Arc::default())
    }

    /// A downloader that takes pieces from the swarm, falling back to the origin.
    pub fn with_swarm(
        store: Arc<Store>,
        origin: Origin,
        metrics: Metrics,
        swarm: Option<Arc<Swarm>>,
        holdings: Arc<Holdings>,
    ) -> Self {
        let timeout = swarm
            .as_ref()
            .map_or(Duration::from_secs(30), |s| s.config().peer_timeout);
        let peers = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            .timeout(timeout)
            .pool_max_idle_per_host(32)
            .tcp_nodelay(true)
            .no_proxy()
            .build()
            .expect("a plain HTTP client builds");
        Downloader {
            store,
            origin,
            metrics,
            running: Mutex::default(),
            swarm,
            holdings,
            peers,
        }
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The origin client's settings (timeouts, trusted CAs).
    pub fn origin_config(&self) -> &crate::origin::OriginConfig {
        self.origin.config()
    }

    pub(crate) fn holdings(&self) -> &Holdings {
        &self.holdings
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
        if let Some(meta) = self
            .blocking({
                let id = id.clone();
                move |s| s.meta(&id)
            })
            .await?
            && meta.complete
        {
            let meta = self.check_cached(id, meta, expected).await?;
            let len = meta.layout.content_length;
            progress.start(len, len);
            if !joined {
                self.metrics.bytes(Source::Cache, len);
            }
            return Ok(Downloaded {
                task: id.clone(),
                meta,
                path,
                from_cache: true,
            });
        }

        let mut link = match &self.swarm {
            Some(swarm) => self.link(swarm, id, req).await,
            None => None,
        };
        let (layout, stat) = match link.as_mut() {
            Some(l) => match wait_for_length(l).await {
                Some(len) => (Layout::for_length(len), None),
                None => {
                    let stat = self.stat_for_swarm(id, req, l).await?;
                    (Layout::for_length(stat.content_length), Some(stat))
                }
            },
            None => {
                let stat = self.origin.stat(&req.origin).await?;
                (Layout::for_length(stat.content_length), Some(stat))
            }
        };
        let url = req.origin.display_url();
        let state = self
            .blocking({
                let id = id.clone();
                move |s| s.open_task(&id, &url, layout)
            })
            .await?;
        progress.start(layout.content_length, state.stored_bytes());
        tracing::debug!(
            length = layout.content_length,
            pieces = layout.piece_count(),
            resumed = state.stored_bytes(),
            swarm = link.is_some(),
            "downloading"
        );
        self.holdings
            .start(id, state.pieces.iter().map(Option::is_some).collect());
        let _holding = HoldingGuard {
            holdings: &self.holdings,
            id: id.clone(),
        };
        let job = Job {
            id: id.clone(),
            req: req.clone(),
            layout,
            writer: TaskWriter::start(
                self.store.writer(id)?,
                self.store.journal(id)?,
                self.store.data_path(id),
            ),
            origin: self.origin.clone(),
            metrics: self.metrics.clone(),
        };
        let is_fetcher = link.as_ref().is_some_and(|l| l.view.back_to_source);
        let prefix = match expected {
            Some(exp) => Some(PrefixHash::start(self.store.reader(id)?, exp.algorithm())),
            None => None,
        };
        let reporter = prefix.as_ref().map(PrefixHash::reporter);
        let run = Run::new(job, state.pieces, link, stat, reporter);
        let pieces = match run.run(progress).await {
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
                let started = std::time::Instant::now();
                let d = self
                    .verify_whole(id, exp, prefix, layout.content_length)
                    .await?;
                tracing::debug!(
                    secs = started.elapsed().as_secs_f64(),
                    "whole content verified"
                );
                Some(d)
            }
            None => None,
        };
        let meta = self
            .blocking({
                let id = id.clone();
                move |s| s.complete(&id, digest, &pieces)
            })
            .await?;
        Ok(Downloaded {
            task: id.clone(),
            meta,
            path,
            from_cache: false,
        })
    }

    /// Watches the task in the swarm; `None` (origin only) when the scheduler cannot be reached.
    async fn link<'a>(
        &'a self,
        swarm: &'a Swarm,
        id: &TaskId,
        req: &DownloadRequest,
    ) -> Option<SwarmLink<'a>> {
        let have = self.resumed_pieces(id).await;
        match swarm.watch(task_message(id, req), have).await {
            Ok(mut stream) => {
                let view = match tokio::time::timeout(
                    swarm.config().connect_timeout * 2,
                    stream.message(),
                )
                .await
                {
                    Ok(Ok(Some(view))) => view,
                    _ => {
                        tracing::warn!(task = %id, "the scheduler sent no view; using the origin");
                        return None;
                    }
                };
                Some(SwarmLink {
                    swarm,
                    holdings: &self.holdings,
                    peers: self.peers.clone(),
                    stream: Some(stream),
                    view,
                })
            }
            Err(e) => {
                tracing::warn!(task = %id, error = %e, "scheduler unreachable; using the origin");
                None
            }
        }
    }

    /// What a resumed task already holds, to register with.
    async fn resumed_pieces(&self, id: &TaskId) -> PieceSet {
        let id2 = id.clone();
        let meta = self.blocking(move |s| s.meta(&id2)).await.ok().flatten();
        let Some(meta) = meta else {
            return PieceSet::default();
        };
        let id2 = id.clone();
        let pieces = self
            .blocking(move |s| s.piece_digests(&id2))
            .await
            .unwrap_or_default();
        let bitmap: Bitmap = pieces.iter().map(Option::is_some).collect();
        PieceSet {
            length_known: true,
            content_length: meta.layout.content_length,
            bitmap: bitmap.as_bytes().to_vec(),
            digests: Vec::new(),
        }
    }

    /// Learns the length from the origin for a swarm download, and tells the swarm (this host
    /// is the fetcher, or the swarm had nothing to say in time).
    async fn stat_for_swarm(
        &self,
        id: &TaskId,
        req: &DownloadRequest,
        link: &SwarmLink<'_>,
    ) -> Result<Stat> {
        match self.origin.stat(&req.origin).await {
            Ok(stat) => {
                let set = PieceSet {
                    length_known: true,
                    content_length: stat.content_length,
                    ..Default::default()
                };
                link.swarm.announce(id, Some(set), None).await;
                Ok(stat)
            }
            Err(e) => {
                if link.view.back_to_source {
                    self.announce_failure(id, &e).await;
                }
                Err(e)
            }
        }
    }

    /// Tells the swarm the origin refused, so the others fail at once the same way.
    async fn announce_failure(&self, id: &TaskId, e: &Error) {
        if let (Some(swarm), Some(status)) = (&self.swarm, e.origin_status()) {
            let failure = crate::proto::Failure {
                http_status: u32::from(status),
                message: e.to_string(),
            };
            swarm.announce(id, None, Some(failure)).await;
        }
    }

    /// A cached task is returned only if it matches the digest the caller expects.
    async fn check_cached(
        &self,
        id: &TaskId,
        mut meta: TaskMeta,
        expected: Option<Digest>,
    ) -> Result<TaskMeta> {
        let Some(exp) = expected else {
            self.blocking({
                let (id, mut meta) = (id.clone(), meta.clone());
                move |s| s.touch(&id, &mut meta)
            })
            .await?;
            return Ok(meta);
        };
        if meta.digest != Some(exp) {
            let actual = self.hash_task(id, exp).await?;
            if actual != exp {
                return Err(Error::DigestMismatch {
                    task: id.clone(),
                    expected: exp,
                    actual,
                });
            }
            meta.digest = Some(exp);
        }
        self.blocking({
            let (id, mut meta) = (id.clone(), meta.clone());
            move |s| s.touch(&id, &mut meta)
        })
        .await?;
        Ok(meta)
    }

    /// Checks the whole content against `expected` (hashed by `prefix` while it was stored); a
    /// mismatch deletes the task.
    async fn verify_whole(
        &self,
        id: &TaskId,
        expected: Digest,
        prefix: PrefixHash,
        len: u64,
    ) -> Result<Digest> {
        let actual = prefix
            .finish(len)
            .await
            .map_err(|e| Error::io("read task file", self.store.data_path(id), e))?;
        if actual != expected {
            let id2 = id.clone();
            self.blocking(move |s| s.remove(&id2)).await?;
            return Err(Error::DigestMismatch {
                task: id.clone(),
                expected,
                actual,
            });
        }
        Ok(actual)
    }

    async fn hash_task(&self, id: &TaskId, like: Digest) -> Result<Digest> {
        let path = self.store.data_path(id);
        let mut file = self.store.reader(id)?;
        tokio::task::spawn_blocking(move || store::hash_file(&mut file, like.algorithm()))
            .await
            .expect("hashing does not panic")
            .map_err(|e| Error::io("read task file", path, e))
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || f(&store))
            .await
            .expect("store call does not panic")
    }
}

/// Waits for the swarm to tell the content length. `None` when this host must learn it from
/// the origin: it is the fetcher, or no length came within the stall timeout.
async fn wait_for_length(link: &mut SwarmLink<'_>) -> Option<u64> {
    let deadline = tokio::time::Instant::now() + link.swarm.config().stall_timeout;
    loop {
        if link.view.length_known {
            return Some(link.view.content_length);
        }
        if link.view.back_to_source || link.view.failure.is_some() {
            return None;
        }
        let stream = link.stream.as_mut()?;
        match tokio::time::timeout_at(deadline, stream.message()).await {
            Ok(Ok(Some(view))) => link.view = view,
            _ => return None,
        }
    }
}

/// The scheduler's description of a task (the headers go to whoever fetches from the origin).
pub(crate) fn task_message(id: &TaskId, req: &DownloadRequest) -> crate::proto::Task {
    crate::proto::Task {
        id: id.to_string(),
        url: req.origin.url.to_string(),
        headers: req
            .origin
            .headers
            .iter()
            .map(|(k, v)| crate::proto::Header {
                name: k.to_string(),
                value: v.as_bytes().to_vec(),
            })
            .collect(),
        digest: req.digest.map(|d| d.to_string()).unwrap_or_default(),
    }
}

/// Origin without ranges: one stream over the whole content; stored pieces are skipped.
/// Returns the digests of the pieces it stored.
pub(crate) async fn fetch_stream(
    job: &Job,
    pieces: &mut [Option<Digest>],
    progress: &Progress,
) -> Result<Vec<(u32, Digest)>> {
    let skip: Vec<bool> = pieces.iter().map(Option::is_some).collect();
    let all = 0..job.layout.piece_count();
    if all.is_empty() {
        return Ok(Vec::new());
    }
    let digests = job
        .origin
        .retrying(&job.req.origin, || async {
            let resp = job.origin.open(&job.req.origin, None).await?;
            consume(job, resp, all.clone(), &skip).await
        })
        .await?;
    for (n, d) in &digests {
        let r = job.layout.range(*n);
        progress.add(r.end - r.start);
        pieces[*n as usize] = Some(*d);
    }
    Ok(digests)
}

/// Reads `resp`, which starts at the first byte of piece `pieces.start`, writing and hashing
/// every piece in `pieces` not marked in `skip`. Returns the digests of the pieces it stored.
pub(crate) async fn consume(
    job: &Job,
    mut resp: reqwest::Response,
    pieces: std::ops::Range<u32>,
    skip: &[bool],
) -> Result<Vec<(u32, Digest)>> {
    let layout = job.layout;
    let mut out = Vec::new();
    let mut n = pieces.start;
    let mut pos = layout.range(n).start;
    let writer = &job.writer;
    let keep = |n: u32| !skip.get(n as usize).copied().unwrap_or(false);
    if keep(n) {
        writer.begin(n).await?;
    }
    let transport = |e: reqwest::Error| Error::OriginTransport {
        url: job.req.origin.display_url(),
        source: e.without_url(),
    };
    while n < pieces.end {
        let Some(mut chunk) = resp.chunk().await.map_err(transport)? else {
            return Err(Error::OriginProtocol {
                url: job.req.origin.display_url(),
                detail: format!(
                    "body ended at byte {pos} of {}",
                    layout.range(pieces.end - 1).end
                ),
            });
        };
        job.metrics.bytes(Source::Origin, chunk.len() as u64);
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
                    out.push((n, writer.finish(n).await?));
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
