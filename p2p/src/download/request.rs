//! What a download is asked for, what it returns, and how far it got.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::digest::Digest;
use crate::id::{GZIP_INDEX, IdOptions, PREFETCH, TaskId};
use crate::origin::OriginRequest;
use crate::store::TaskMeta;

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

    /// Whether only the swarm may provide the content: a layer's gzip index or prefetch list,
    /// whose URL is the layer's (the origin would answer the layer). A seed builds the index
    /// (see `shoal-seed`); the first host to run the layer publishes its prefetch list.
    pub fn swarm_only(&self) -> bool {
        matches!(
            self.id_options.application.as_deref(),
            Some(GZIP_INDEX | PREFETCH)
        )
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

    pub(crate) fn start(&self, total: u64, done: u64) {
        self.total.store(total, Ordering::Relaxed);
        self.done.store(done, Ordering::Relaxed);
    }

    pub(crate) fn add(&self, n: u64) {
        self.done.fetch_add(n, Ordering::Relaxed);
    }
}
