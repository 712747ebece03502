//! The download pipeline: from a URL to a complete, verified task in the store.
//!
//! One pipeline serves every source: a task's missing pieces are fetched with bounded
//! concurrency, each byte stream is cut at piece boundaries, written at its offset, hashed as it
//! is written, and recorded (group-committed) the moment its piece is whole. An origin without
//! range support is one stream over all pieces; an origin with it is one stream per piece.
//! Restarting a half-finished task fetches only the pieces that were not recorded.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::id::{IdOptions, TaskId};
use crate::metrics::{Metrics, Outcome, OutcomeLabel, Source};
use crate::origin::{Origin, OriginRequest};
use crate::piece::Layout;
use crate::store::{self, Store, TaskMeta};
use crate::writer::TaskWriter;

/// What to download.
#[derive(Clone, Debug)]
pub struct DownloadRequest {
    pub origin: OriginRequest,
    pub id_options: IdOptions,
    /// The whole content's expected digest, if the caller knows it.
    pub digest: Option<Digest>,
}

impl DownloadRequest {
    pub fn task_id(&self) -> TaskId {
        TaskId::for_url(&self.origin.url, &self.id_options)
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

    fn add(&self, n: u64) {
        self.done.fetch_add(n, Ordering::Relaxed);
    }
}

/// Downloads tasks into a [`Store`]; one download per task at a time.
pub struct Downloader {
    store: Arc<Store>,
    origin: Origin,
    metrics: Metrics,
    running: Mutex<HashMap<TaskId, Arc<tokio::sync::Mutex<()>>>>,
}

impl Downloader {
    pub fn new(store: Arc<Store>, origin: Origin, metrics: Metrics) -> Self {
        Downloader {
            store,
            origin,
            metrics,
            running: Mutex::default(),
        }
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
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
            let _one_at_a_time = lock.lock().await;
            self.download_locked(&id, req, expected, progress).await
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
            self.metrics.bytes(Source::Cache, len);
            return Ok(Downloaded {
                task: id.clone(),
                meta,
                path,
                from_cache: true,
            });
        }

        let stat = self.origin.stat(&req.origin).await?;
        let layout = Layout::for_length(stat.content_length);
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
            ranges = stat.ranges,
            "downloading"
        );

        let job = Job {
            req: req.clone(),
            layout,
            writer: TaskWriter::start(
                self.store.writer(id)?,
                self.store.journal(id)?,
                self.store.data_path(id),
            ),
        };
        let mut pieces = state.pieces;
        if stat.ranges {
            self.fetch_pieces(&job, &mut pieces, progress).await?;
        } else {
            self.fetch_stream(&job, &mut pieces, progress).await?;
        }
        let pieces: Vec<Digest> = pieces
            .into_iter()
            .collect::<Option<_>>()
            .ok_or_else(|| Error::Metadata("a piece was neither stored nor fetched".into()))?;

        let digest = match expected {
            Some(exp) => Some(self.verify_whole(id, exp).await?),
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

    /// Checks the whole content against `expected`; a mismatch deletes the task.
    async fn verify_whole(&self, id: &TaskId, expected: Digest) -> Result<Digest> {
        let actual = self.hash_task(id, expected).await?;
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

    /// Range-capable origin: one request per missing piece, `concurrency` at a time.
    async fn fetch_pieces(
        &self,
        job: &Job,
        pieces: &mut [Option<Digest>],
        progress: &Progress,
    ) -> Result<()> {
        let limit = Arc::new(Semaphore::new(self.origin.config().concurrency));
        let ctx = Arc::new(PieceCtx {
            origin: self.origin.clone(),
            metrics: self.metrics.clone(),
            job: job.clone(),
        });
        let mut set: JoinSet<Result<Vec<(u32, Digest)>>> = JoinSet::new();
        let missing: Vec<u32> = (0u32..)
            .zip(pieces.iter())
            .filter(|(_, d)| d.is_none())
            .map(|(n, _)| n)
            .collect();
        for n in missing {
            let permit = limit
                .clone()
                .acquire_owned()
                .await
                .expect("semaphore is never closed");
            while let Some(done) = set.try_join_next() {
                stored(
                    job,
                    pieces,
                    progress,
                    done.expect("piece task does not panic")?,
                );
            }
            let ctx = ctx.clone();
            set.spawn(async move {
                let _permit = permit;
                let range = ctx.job.layout.range(n);
                ctx.origin
                    .retrying(&ctx.job.req.origin, || async {
                        let resp = ctx
                            .origin
                            .open(&ctx.job.req.origin, Some(range.clone()))
                            .await?;
                        consume(&ctx, resp, n..n + 1, &[]).await
                    })
                    .await
            });
        }
        while let Some(done) = set.join_next().await {
            stored(
                job,
                pieces,
                progress,
                done.expect("piece task does not panic")?,
            );
        }
        Ok(())
    }

    /// Origin without ranges: one stream over the whole content; stored pieces are skipped.
    async fn fetch_stream(
        &self,
        job: &Job,
        pieces: &mut [Option<Digest>],
        progress: &Progress,
    ) -> Result<()> {
        let ctx = PieceCtx {
            origin: self.origin.clone(),
            metrics: self.metrics.clone(),
            job: job.clone(),
        };
        let skip: Vec<bool> = pieces.iter().map(Option::is_some).collect();
        let all = 0..job.layout.piece_count();
        if all.is_empty() {
            return Ok(());
        }
        let digests = self
            .origin
            .retrying(&job.req.origin, || async {
                let resp = self.origin.open(&job.req.origin, None).await?;
                consume(&ctx, resp, all.clone(), &skip).await
            })
            .await?;
        stored(job, pieces, progress, digests);
        Ok(())
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

#[derive(Clone)]
struct Job {
    req: DownloadRequest,
    layout: Layout,
    writer: TaskWriter,
}

struct PieceCtx {
    origin: Origin,
    metrics: Metrics,
    job: Job,
}

/// Reads `resp`, which starts at the first byte of piece `pieces.start`, writing and hashing
/// every piece in `pieces` not marked in `skip`. Returns the digests of the pieces it stored.
async fn consume(
    ctx: &PieceCtx,
    mut resp: reqwest::Response,
    pieces: std::ops::Range<u32>,
    skip: &[bool],
) -> Result<Vec<(u32, Digest)>> {
    let layout = ctx.job.layout;
    let mut out = Vec::new();
    let mut n = pieces.start;
    let mut pos = layout.range(n).start;
    let writer = &ctx.job.writer;
    let keep = |n: u32| !skip.get(n as usize).copied().unwrap_or(false);
    if keep(n) {
        writer.begin(n).await?;
    }
    let transport = |e: reqwest::Error| Error::OriginTransport {
        url: ctx.job.req.origin.display_url(),
        source: e.without_url(),
    };
    while n < pieces.end {
        let Some(mut chunk) = resp.chunk().await.map_err(transport)? else {
            return Err(Error::OriginProtocol {
                url: ctx.job.req.origin.display_url(),
                detail: format!(
                    "body ended at byte {pos} of {}",
                    layout.range(pieces.end - 1).end
                ),
            });
        };
        ctx.metrics.bytes(Source::Origin, chunk.len() as u64);
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

/// Notes finished pieces (already written and journaled) and counts them as progress.
fn stored(job: &Job, pieces: &mut [Option<Digest>], progress: &Progress, done: Vec<(u32, Digest)>) {
    for (n, d) in done {
        let r = job.layout.range(n);
        progress.add(r.end - r.start);
        pieces[n as usize] = Some(d);
    }
}
