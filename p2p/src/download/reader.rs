//! Reading a task while it downloads: the local read path of the mirror (and, later, the
//! snapshotter).
//!
//! [`Downloader::read`] starts the task's download in the background (or joins the one running)
//! and returns as soon as the content length is known. [`Reading::stream`] then yields the bytes
//! of a range in order, each piece as soon as it is verified and stored. The download goes on
//! when the reader goes away, so a client that gives up still leaves the blob for the next one.
//! The last piece of the content is held back until the whole content matched its digest (when
//! one is known), so a reader never sees a clean end of a blob that turned out wrong.

use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::{mpsc, watch};

use super::Downloader;
use super::request::{DownloadRequest, Progress};
use crate::error::{Error, Result};
use crate::id::TaskId;
use crate::piece::Layout;
use crate::store::{ReadGuard, read_blocks};

/// Bytes read from the task file at a time for a local reader.
const READ_BLOCK: usize = 256 << 10;

/// How a background download ended: `None` while it runs.
type Done = Option<std::result::Result<(), Arc<Error>>>;

/// A task being read, from [`Downloader::read`]: [`Reading::stream`] yields its bytes in order,
/// each piece as soon as it is verified and stored.
pub struct Reading {
    pub task: TaskId,
    pub layout: Layout,
    /// Whether the content was already complete in the store when reading began.
    pub complete: bool,
    /// Every upstream the content came from (see [`crate::proto::Source`]): empty when not
    /// known, and then no client's registry vouches for it.
    pub sources: Vec<crate::proto::Source>,
    pub(super) downloader: Arc<Downloader>,
    pub(super) done: watch::Receiver<Done>,
    /// The task is not removed while it is read.
    _reading: ReadGuard,
}

impl Downloader {
    /// Starts (or joins) the download of `req` and returns once its length is known. Fails with
    /// the download's error when it ends before that (the origin refused, say).
    /// A task that is neither complete nor downloading already needs one of the background
    /// downloads' places: without one it is [`Error::Busy`] (the caller serves its client
    /// another way).
    pub async fn read(self: &Arc<Self>, req: DownloadRequest) -> Result<Reading, Arc<Error>> {
        let id = req.task_id();
        let mut changes = self.holdings().subscribe();
        let (tx, mut done) = watch::channel::<Done>(None);
        let complete = matches!(self.store().meta(&id).await, Ok(Some(m)) if m.complete);
        let place = if complete || self.is_running(&id) {
            None
        } else {
            match self.background.clone().try_acquire_owned() {
                Ok(p) => Some(p),
                Err(_) => {
                    return Err(Arc::new(Error::Busy {
                        running: self.max_background,
                    }));
                }
            }
        };
        let downloader = self.clone();
        tokio::spawn(async move {
            let _place = place;
            let r = downloader.download(&req, &Progress::default()).await;
            let _ = tx.send(Some(r.map(|_| ()).map_err(Arc::new)));
        });
        loop {
            let meta = self.store().meta(&id).await.map_err(Arc::new)?;
            let finished = done.borrow_and_update().clone();
            if let Some(meta) = meta
                && (meta.complete || self.holdings().is_active(&id))
            {
                return Ok(Reading {
                    _reading: self.holdings().reading(&id),
                    task: id,
                    layout: meta.layout,
                    complete: meta.complete,
                    sources: meta.sources,
                    downloader: self.clone(),
                    done,
                });
            }
            match finished {
                Some(Err(e)) => return Err(e),
                Some(Ok(())) => return Err(Arc::new(Error::TaskGone { task: id })),
                None => {}
            }
            tokio::select! {
                _ = changes.changed() => {}
                _ = done.changed() => {}
            }
        }
    }
}

impl Reading {
    pub fn content_length(&self) -> u64 {
        self.layout.content_length
    }

    /// The bytes of `range` (within the content), in order, in blocks of at most 1 MiB.
    /// An error item ends the stream (the download failed, or the disk did).
    pub fn stream(self, range: Range<u64>) -> mpsc::Receiver<std::io::Result<Bytes>> {
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            if let Err(e) = self.send_range(range, &tx).await {
                let _ = tx.send(Err(e)).await;
            }
        });
        rx
    }

    async fn send_range(
        mut self,
        range: Range<u64>,
        tx: &mpsc::Sender<std::io::Result<Bytes>>,
    ) -> std::io::Result<()> {
        let len = self.layout.content_length;
        if range.start >= range.end {
            return Ok(());
        }
        let file = Arc::new(
            self.downloader
                .store()
                .reader(&self.task)
                .map_err(std::io::Error::other)?,
        );
        let mut changes = self.downloader.holdings().subscribe();
        let mut pos = range.start;
        while pos < range.end {
            let n = self.layout.pieces_covering(pos..pos + 1).start;
            let end = self.layout.range(n).end.min(range.end);
            // The content's end waits for the whole-content check.
            let needs_all = end == len;
            loop {
                let finished = self.done.borrow_and_update().clone();
                match finished {
                    Some(Ok(())) => break,
                    Some(Err(e)) => return Err(std::io::Error::other(e.to_string())),
                    None if self.complete => break,
                    None if !needs_all && self.downloader.holdings().has(&self.task, n) => break,
                    None => {}
                }
                tokio::select! {
                    _ = changes.changed() => {}
                    _ = self.done.changed() => {}
                }
            }
            let file = file.clone();
            let tx2 = tx.clone();
            let sent = tokio::task::spawn_blocking(move || {
                let mut all = true;
                read_blocks(&file, pos..end, READ_BLOCK, |block| {
                    all = block.is_ok() && tx2.blocking_send(block).is_ok();
                    all
                });
                all
            })
            .await
            .expect("reading does not panic");
            if !sent || tx.is_closed() {
                return Ok(());
            }
            pos = end;
        }
        Ok(())
    }
}

/// A byte stream's chunks, as they arrive, read on a blocking thread ([`std::io::Read`]): for
/// the parsers that read a task (or a layer) while it downloads. An error item is the read's
/// error; the end of the stream is the end of the bytes.
pub struct ChunkReader {
    rx: mpsc::Receiver<std::io::Result<Bytes>>,
    chunk: Bytes,
}

impl ChunkReader {
    pub fn new(rx: mpsc::Receiver<std::io::Result<Bytes>>) -> Self {
        ChunkReader {
            rx,
            chunk: Bytes::new(),
        }
    }
}

impl std::io::Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.chunk.is_empty() {
            match self.rx.blocking_recv() {
                Some(chunk) => self.chunk = chunk?,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.chunk.len());
        buf[..n].copy_from_slice(&self.chunk.split_to(n));
        Ok(n)
    }
}
