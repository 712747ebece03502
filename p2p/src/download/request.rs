//! What a download is asked for, what it returns, and how far it got.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use crate::digest::Digest;
use crate::id::{GZIP_INDEX, IdOptions, PREFETCH, TaskId};
use crate::metrics::{BySource, Source};
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
    /// The bytes stored, by where they came from (origin, peer, seed, cache).
    from: [AtomicU64; 4],
    /// Where each piece is also told as it is stored: the host's record of its tasks' traffic.
    to: OnceLock<(Arc<super::Traffic>, String)>,
}

impl Progress {
    /// `(bytes stored, content length)`; the length is 0 until known.
    pub fn get(&self) -> (u64, u64) {
        (
            self.done.load(Ordering::Relaxed),
            self.total.load(Ordering::Relaxed),
        )
    }

    /// The bytes stored so far by where they came from; they add up to the first of
    /// [`Progress::get`]. Bytes this host held already (a cache hit, a resumed download) are
    /// the cache's.
    pub fn by_source(&self) -> BySource {
        let n = |s: Source| self.from[s as usize].load(Ordering::Relaxed);
        BySource {
            origin: n(Source::Origin),
            peer: n(Source::Peer),
            seed: n(Source::Seed),
            cache: n(Source::Cache),
        }
    }

    /// The download starts with `done` of `total` bytes already here.
    pub(crate) fn start(&self, total: u64, done: u64) {
        self.total.store(total, Ordering::Relaxed);
        self.done.store(done, Ordering::Relaxed);
        for (i, f) in self.from.iter().enumerate() {
            f.store(
                if i == Source::Cache as usize { done } else { 0 },
                Ordering::Relaxed,
            );
        }
    }

    pub(crate) fn add(&self, from: Source, n: u64) {
        self.done.fetch_add(n, Ordering::Relaxed);
        self.from[from as usize].fetch_add(n, Ordering::Relaxed);
        if let Some((traffic, task)) = self.to.get() {
            traffic.add(task, self.total.load(Ordering::Relaxed), from, n);
        }
    }

    /// From now on, the bytes stored are told to `traffic` as task `task`'s too.
    pub(crate) fn tell(&self, traffic: Arc<super::Traffic>, task: &str) {
        let _ = self.to.set((traffic, task.to_owned()));
    }
}
