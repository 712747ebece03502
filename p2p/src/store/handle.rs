//! The store's async face: each call is one trip to a blocking thread, doing all the disk and
//! redb work of one step of a download (look up the cache, open the task, complete it), so the
//! download pipeline reads top-down and never blocks the runtime's threads.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::prefix::PrefixHash;
use super::writer::TaskWriter;
use super::{Store, TaskMeta, TaskState};
use crate::digest::{Algorithm, Digest};
use crate::error::{Error, Result};
use crate::id::TaskId;
use crate::piece::Layout;
use crate::proto::Source;

/// A [`Store`] shared by async code; cheap to clone.
#[derive(Clone)]
pub struct AsyncStore {
    store: Arc<Store>,
}

impl AsyncStore {
    /// Opens (creating if needed) the store under `root`; see [`Store::open`].
    pub fn open(root: impl Into<PathBuf>) -> Result<Self> {
        Ok(AsyncStore {
            store: Arc::new(Store::open(root)?),
        })
    }

    /// Runs `f` on a blocking thread: several store calls that belong together make one trip.
    pub async fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || f(&store))
            .await
            .expect("store calls do not panic")
    }

    pub fn root(&self) -> &Path {
        self.store.root()
    }

    /// Where a task's content lives.
    pub fn data_path(&self, id: &TaskId) -> PathBuf {
        self.store.data_path(id)
    }

    /// Opens the task's data file for reading (an `open(2)`: cheap enough for async code).
    pub fn reader(&self, id: &TaskId) -> Result<File> {
        self.store.reader(id)
    }

    /// The task's record, if the store has one.
    pub async fn meta(&self, id: &TaskId) -> Result<Option<TaskMeta>> {
        let id = id.clone();
        self.call(move |s| s.meta(&id)).await
    }

    /// Every task the store holds.
    pub async fn list(&self) -> Result<Vec<(TaskId, TaskMeta)>> {
        self.call(|s| s.list()).await
    }

    /// The task's record and which of its pieces are stored, if the store has it.
    pub async fn state(&self, id: &TaskId) -> Result<Option<TaskState>> {
        let id = id.clone();
        self.call(move |s| s.state(&id)).await
    }

    /// The complete task `id`, if the store has it and its content matches `expected` (hashed
    /// now when the record does not say); it counts as used. A complete task with other content
    /// is [`Error::DigestMismatch`].
    pub async fn cached(&self, id: &TaskId, expected: Option<Digest>) -> Result<Option<TaskMeta>> {
        let id = id.clone();
        self.call(move |s| {
            let Some(mut meta) = s.meta(&id)?.filter(|m| m.complete) else {
                return Ok(None);
            };
            if let Some(exp) = expected
                && meta.digest != Some(exp)
            {
                let actual = hash_task(s, &id, exp.algorithm())?;
                if actual != exp {
                    return Err(Error::DigestMismatch {
                        task: id,
                        expected: exp,
                        actual,
                    });
                }
                meta.digest = Some(exp);
            }
            s.touch(&id, &mut meta)?;
            Ok(Some(meta))
        })
        .await
    }

    /// Creates or resumes a task; see [`Store::open_task`].
    pub async fn open_task(
        &self,
        id: &TaskId,
        url: String,
        layout: Layout,
        sources: Vec<Source>,
    ) -> Result<TaskState> {
        let id = id.clone();
        self.call(move |s| s.open_task(&id, &url, layout, &sources))
            .await
    }

    /// Marks a task complete; see [`Store::complete`].
    pub async fn complete(
        &self,
        id: &TaskId,
        digest: Option<Digest>,
        pieces: Vec<Digest>,
        sources: Vec<Source>,
    ) -> Result<TaskMeta> {
        let id = id.clone();
        self.call(move |s| s.complete(&id, digest, &pieces, &sources))
            .await
    }

    /// Stores bytes made on this host as a complete task; see [`Store::import`].
    pub async fn import(
        &self,
        id: &TaskId,
        url: String,
        data: Vec<u8>,
        sources: Vec<Source>,
    ) -> Result<(TaskMeta, Vec<Digest>)> {
        let id = id.clone();
        self.call(move |s| s.import(&id, &url, &data, &sources))
            .await
    }

    /// Forgets a task and deletes its content.
    pub async fn remove(&self, id: &TaskId) -> Result<()> {
        let id = id.clone();
        self.call(move |s| s.remove(&id)).await
    }

    /// A writer thread for the task's pieces (its file and journal opened now).
    pub(crate) fn task_writer(&self, id: &TaskId) -> Result<TaskWriter> {
        Ok(TaskWriter::start(
            self.store.writer(id)?,
            self.store.journal(id)?,
            self.store.data_path(id),
        ))
    }

    /// Starts hashing the task's stored prefix with `algorithm` (see [`PrefixHash`]).
    pub(crate) fn prefix_hash(&self, id: &TaskId, algorithm: Algorithm) -> Result<PrefixHash> {
        Ok(PrefixHash::start(self.store.reader(id)?, algorithm))
    }
}

fn hash_task(store: &Store, id: &TaskId, algorithm: Algorithm) -> Result<Digest> {
    let path = store.data_path(id);
    let mut file = store.reader(id)?;
    super::hash_file(&mut file, algorithm).map_err(|e| Error::io("read task file", path, e))
}
