//! The piece store: task content on local disk, metadata in redb.
//!
//! Layout under the data directory:
//!
//! ```text
//! metadata.redb                 task records, and piece digests of complete tasks
//! tasks/<2 chars>/<task>.data   the content, at its own offsets (sparse until complete)
//! tasks/<2 chars>/<task>.pieces journal of stored pieces while the task is unfinished
//! ```
//!
//! A piece is *stored* when its bytes are in the data file and its record is in the task's journal;
//! only then is it served or counted. Neither is fsynced while downloading: fsyncs during a large
//! write cost more than the write here (an fsync per task added 0.7 s per GiB; a durable redb
//! commit per piece stalled behind the kernel's writeback of everything else). After a crash of
//! the process (`kill -9`) page-cache contents survive, so everything recorded is there. After a
//! power loss records may outlive bytes, hence: [`Store::open_task`] re-verifies the recorded pieces
//! of an unfinished task before resuming it, and opening a store that was not closed cleanly
//! re-verifies the complete tasks used in the two minutes before the last commit (older dirty
//! pages were written back by the kernel).

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::id::TaskId;
use crate::piece::Layout;
use crate::proto::{Source, add_sources};

mod files;
mod handle;
mod holdings;
mod journal;
pub(crate) mod prefix;
pub(crate) mod writer;

pub use files::{hash_file, read_blocks};
pub use handle::AsyncStore;
pub use holdings::{Holdings, ReadGuard};
pub use journal::append_record;
use journal::{decode_digest, encode_digest};

/// Written when a store is closed cleanly, removed when it is opened.
const CLEAN_MARKER: &str = "clean-shutdown";
/// How far back from an unclean stop completed content is re-verified.
const WRITEBACK_WINDOW: std::time::Duration = std::time::Duration::from_secs(120);

const TASKS: TableDefinition<&str, &[u8]> = TableDefinition::new("tasks");
const PIECES: TableDefinition<(&str, u32), &[u8]> = TableDefinition::new("pieces");

/// What the store knows about a task.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskMeta {
    /// The origin URL with volatile query parameters removed (never credentials).
    pub url: String,
    pub layout: Layout,
    /// The whole content's digest, once it is known and checked.
    pub digest: Option<Digest>,
    pub complete: bool,
    /// Seconds since the Unix epoch.
    pub created_at: u64,
    pub accessed_at: u64,
    /// Every upstream the content came from (see [`crate::proto::Source`]): a mirror gives
    /// the bytes only to a client that each of them would serve. Empty in records written
    /// before sources were kept: such content is served only as the registry answers.
    #[serde(default)]
    pub sources: Vec<Source>,
}

/// An open task: its record and which pieces are stored.
#[derive(Clone, Debug)]
pub struct TaskState {
    pub meta: TaskMeta,
    /// `pieces[n]` is the digest of piece `n` if it is stored.
    pub pieces: Vec<Option<Digest>>,
}

impl TaskState {
    pub fn missing(&self) -> impl Iterator<Item = u32> + '_ {
        (0u32..)
            .zip(&self.pieces)
            .filter(|(_, d)| d.is_none())
            .map(|(n, _)| n)
    }

    pub fn stored_bytes(&self) -> u64 {
        (0u32..)
            .zip(&self.pieces)
            .filter(|(_, d)| d.is_some())
            .map(|(n, _)| {
                let r = self.meta.layout.range(n);
                r.end - r.start
            })
            .sum()
    }
}

/// Task content and metadata under one data directory.
pub struct Store {
    root: PathBuf,
    db: redb::Database,
}

impl Store {
    /// Opens (creating if needed) the store under `root`. Fails with [`Error::StoreBusy`] when
    /// another process has it open.
    pub fn open(root: impl Into<PathBuf>) -> Result<Store> {
        let root = root.into();
        fs::create_dir_all(root.join("tasks"))
            .map_err(|e| Error::io("create data directory", &root, e))?;
        let db_path = root.join("metadata.redb");
        // The last commit of the previous run, before this open commits anything.
        let last_commit = fs::metadata(&db_path).and_then(|m| m.modified()).ok();
        let db = redb::Database::create(&db_path).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => Error::StoreBusy { dir: root.clone() },
            other => Error::Metadata(other.into()),
        })?;
        let txn = db.begin_write()?;
        txn.open_table(TASKS)?;
        txn.open_table(PIECES)?;
        txn.commit()?;
        let store = Store { root, db };
        let clean = store.root.join(CLEAN_MARKER);
        let was_clean = fs::remove_file(&clean).is_ok();
        if let (false, Some(last_commit)) = (was_clean, last_commit) {
            store.verify_recent(last_commit)?;
        }
        Ok(store)
    }

    /// After an unclean stop, re-verifies the complete tasks used shortly before it: their bytes
    /// may still have been in the page cache when the machine went down. Older content was
    /// written back by the kernel (dirty pages expire after 30 s by default).
    fn verify_recent(&self, last_commit: SystemTime) -> Result<()> {
        let since = last_commit
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let since = since.saturating_sub(WRITEBACK_WINDOW.as_secs());
        for (id, meta) in self.list()? {
            if !meta.complete || meta.accessed_at < since || !self.data_path(&id).exists() {
                continue;
            }
            let mut state = TaskState {
                pieces: self.recorded_pieces(&id, &meta)?,
                meta,
            };
            if self.drop_corrupt_pieces(&id, &mut state)? {
                tracing::warn!(task = %id, "content damaged by an unclean stop; it will be fetched again");
                state.meta.complete = false;
                state.meta.digest = None;
                let path = self.data_path(&id);
                fs::set_permissions(&path, fs::Permissions::from_mode(0o644))
                    .map_err(|e| Error::io("make writable", &path, e))?;
                self.put_meta(&id, &state.meta)?;
            }
        }
        Ok(())
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where a task's content lives.
    pub fn data_path(&self, id: &TaskId) -> PathBuf {
        let name = id.file_name();
        // The first characters after any `sha256-` prefix spread tasks over 256 directories.
        let shard = &name[name.len() - 64..name.len() - 62];
        self.root
            .join("tasks")
            .join(shard)
            .join(format!("{name}.data"))
    }

    /// The task's record, if the store has one.
    pub fn meta(&self, id: &TaskId) -> Result<Option<TaskMeta>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(TASKS)?;
        let meta = table
            .get(id.as_str())?
            .map(|v| decode_meta(v.value()))
            .transpose()?;
        Ok(meta)
    }

    /// Every task the store holds.
    pub fn list(&self) -> Result<Vec<(TaskId, TaskMeta)>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(TASKS)?;
        let mut out = Vec::new();
        for row in table.iter()? {
            let (k, v) = row?;
            if let Ok(id) = k.value().parse() {
                out.push((id, decode_meta(v.value())?));
            }
        }
        Ok(out)
    }

    /// Opens a task for download: creates it, or resumes it if the store has it with the same
    /// layout (recorded pieces of unfinished tasks are re-verified; bad ones are dropped). A task
    /// recorded with another layout is started over. `sources` are added to the task's.
    pub fn open_task(
        &self,
        id: &TaskId,
        url: &str,
        layout: Layout,
        sources: &[Source],
    ) -> Result<TaskState> {
        let path = self.data_path(id);
        if let Some(mut meta) = self.meta(id)?
            && meta.layout == layout
            && path.exists()
        {
            add_sources(&mut meta.sources, sources);
            let mut state = TaskState {
                pieces: self.recorded_pieces(id, &meta)?,
                meta,
            };
            if !state.meta.complete {
                self.drop_corrupt_pieces(id, &mut state)?;
            }
            self.touch(id, &mut state.meta)?;
            return Ok(state);
        }
        self.remove(id)?;
        let dir = path.parent().expect("data path has a shard directory");
        fs::create_dir_all(dir).map_err(|e| Error::io("create task directory", dir, e))?;
        let file = File::create(&path).map_err(|e| Error::io("create task file", &path, e))?;
        file.set_len(layout.content_length)
            .map_err(|e| Error::io("size task file", &path, e))?;
        let now = unix_now();
        let mut meta = TaskMeta {
            url: url.to_owned(),
            layout,
            digest: None,
            complete: false,
            created_at: now,
            accessed_at: now,
            sources: Vec::new(),
        };
        add_sources(&mut meta.sources, sources);
        self.put_meta(id, &meta)?;
        Ok(TaskState {
            pieces: vec![None; layout.piece_count() as usize],
            meta,
        })
    }

    /// Opens the task's data file for writing pieces into it.
    pub fn writer(&self, id: &TaskId) -> Result<File> {
        let path = self.data_path(id);
        OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(|e| Error::io("open task file", &path, e))
    }

    /// Opens the task's data file for reading.
    pub fn reader(&self, id: &TaskId) -> Result<File> {
        let path = self.data_path(id);
        File::open(&path).map_err(|e| Error::io("open task file", &path, e))
    }

    /// Opens the task's piece journal for appending records (see [`append_record`]).
    pub fn journal(&self, id: &TaskId) -> Result<File> {
        let path = self.journal_path(id);
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| Error::io("open piece journal", &path, e))
    }

    fn journal_path(&self, id: &TaskId) -> PathBuf {
        self.data_path(id).with_extension("pieces")
    }

    /// Marks a task complete (and read-only on disk, since outputs may be hard links to it).
    /// The task's piece digests move from the journal into redb in the same transaction;
    /// `sources` are added to the task's.
    pub fn complete(
        &self,
        id: &TaskId,
        digest: Option<Digest>,
        pieces: &[Digest],
        sources: &[Source],
    ) -> Result<TaskMeta> {
        let path = self.data_path(id);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o444))
            .map_err(|e| Error::io("make read-only", &path, e))?;
        let mut meta = self
            .meta(id)?
            .ok_or_else(|| Error::TaskGone { task: id.clone() })?;
        meta.complete = true;
        meta.digest = digest.or(meta.digest);
        meta.accessed_at = unix_now();
        add_sources(&mut meta.sources, sources);
        let txn = self.db.begin_write()?;
        {
            let mut table = txn.open_table(PIECES)?;
            for (n, d) in (0u32..).zip(pieces) {
                table.insert((id.as_str(), n), encode_digest(d).as_slice())?;
            }
            let bytes = serde_json::to_vec(&meta).expect("TaskMeta serializes");
            txn.open_table(TASKS)?
                .insert(id.as_str(), bytes.as_slice())?;
        }
        txn.commit()?;
        let _ = fs::remove_file(self.journal_path(id));
        Ok(meta)
    }

    /// Stores `data`, made on this host, as the complete task `id` (replacing what the store
    /// held of it), its pieces hashed as a download's are. Returns its record and piece digests.
    pub fn import(
        &self,
        id: &TaskId,
        url: &str,
        data: &[u8],
        sources: &[Source],
    ) -> Result<(TaskMeta, Vec<Digest>)> {
        let layout = Layout::for_length(data.len() as u64).ok_or_else(|| {
            Error::InvalidRequest(format!("{} bytes are too many for a task", data.len()))
        })?;
        self.remove(id)?;
        self.open_task(id, url, layout, sources)?;
        let path = self.data_path(id);
        self.writer(id)?
            .write_all_at(data, 0)
            .map_err(|e| Error::io("write task file", &path, e))?;
        let digests: Vec<Digest> = (0..layout.piece_count())
            .map(|n| {
                let r = layout.range(n);
                Digest::piece(&data[r.start as usize..r.end as usize])
            })
            .collect();
        let meta = self.complete(id, None, &digests, sources)?;
        Ok((meta, digests))
    }

    /// The digests of a complete task's pieces.
    pub fn piece_digests(&self, id: &TaskId) -> Result<Vec<Option<Digest>>> {
        let meta = self
            .meta(id)?
            .ok_or_else(|| Error::TaskGone { task: id.clone() })?;
        self.recorded_pieces(id, &meta)
    }

    /// The task's record and the digests of the pieces stored so far, if the store has it.
    pub fn state(&self, id: &TaskId) -> Result<Option<TaskState>> {
        let Some(meta) = self.meta(id)? else {
            return Ok(None);
        };
        Ok(Some(TaskState {
            pieces: self.recorded_pieces(id, &meta)?,
            meta,
        }))
    }

    /// Records that a complete task was used (for LRU eviction).
    pub fn touch(&self, id: &TaskId, meta: &mut TaskMeta) -> Result<()> {
        meta.accessed_at = unix_now();
        self.put_meta(id, meta)
    }

    /// Records `at` (seconds since the Unix epoch) as the task's last access.
    pub fn set_accessed(&self, id: &TaskId, at: u64) -> Result<()> {
        let mut meta = self
            .meta(id)?
            .ok_or_else(|| Error::TaskGone { task: id.clone() })?;
        meta.accessed_at = at;
        self.put_meta(id, &meta)
    }

    /// Forgets a task and deletes its content.
    pub fn remove(&self, id: &TaskId) -> Result<()> {
        let txn = self.db.begin_write()?;
        {
            txn.open_table(TASKS)?.remove(id.as_str())?;
            let mut pieces = txn.open_table(PIECES)?;
            pieces.retain_in((id.as_str(), 0)..=(id.as_str(), u32::MAX), |_, _| false)?;
        }
        txn.commit()?;
        let _ = fs::remove_file(self.journal_path(id));
        let path = self.data_path(id);
        match fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                Err(Error::io("remove task file", &path, e))
            }
            _ => Ok(()),
        }
    }

    fn recorded_pieces(&self, id: &TaskId, meta: &TaskMeta) -> Result<Vec<Option<Digest>>> {
        let mut pieces = vec![None; meta.layout.piece_count() as usize];
        let txn = self.db.begin_read()?;
        let table = txn.open_table(PIECES)?;
        for row in table.range((id.as_str(), 0)..=(id.as_str(), u32::MAX))? {
            let (k, v) = row?;
            let n = k.value().1 as usize;
            if let (Some(slot), Some(d)) = (pieces.get_mut(n), decode_digest(v.value())) {
                *slot = Some(d);
            }
        }
        // Pieces of an unfinished task are in its journal; a torn last record is ignored.
        if let Ok(journal) = fs::read(self.journal_path(id)) {
            for (n, d) in journal::records(&journal) {
                if let Some(slot) = pieces.get_mut(n as usize) {
                    *slot = Some(d);
                }
            }
        }
        Ok(pieces)
    }

    /// Drops recorded pieces whose bytes no longer match their digests; true if any did.
    fn drop_corrupt_pieces(&self, id: &TaskId, state: &mut TaskState) -> Result<bool> {
        let file = self.reader(id)?;
        let mut buf = Vec::new();
        let mut bad = Vec::new();
        for n in 0..state.meta.layout.piece_count() {
            let Some(expected) = state.pieces[n as usize] else {
                continue;
            };
            let r = state.meta.layout.range(n);
            buf.resize((r.end - r.start) as usize, 0);
            let ok = file.read_exact_at(&mut buf, r.start).is_ok()
                && Digest::of(expected.algorithm(), &buf) == expected;
            if !ok {
                tracing::warn!(task = %id, piece = n, "stored piece failed verification on resume; fetching it again");
                state.pieces[n as usize] = None;
                bad.push(n);
            }
        }
        if bad.is_empty() {
            return Ok(false);
        }
        let txn = self.db.begin_write()?;
        {
            let mut table = txn.open_table(PIECES)?;
            for n in bad {
                table.remove((id.as_str(), n))?;
            }
        }
        txn.commit()?;
        // The journal keeps only the pieces that passed.
        let path = self.journal_path(id);
        let mut journal =
            File::create(&path).map_err(|e| Error::io("rewrite piece journal", &path, e))?;
        for (n, d) in (0u32..).zip(&state.pieces) {
            if let Some(d) = d {
                append_record(&mut journal, n, d)
                    .map_err(|e| Error::io("rewrite piece journal", &path, e))?;
            }
        }
        Ok(true)
    }

    fn put_meta(&self, id: &TaskId, meta: &TaskMeta) -> Result<()> {
        let bytes = serde_json::to_vec(meta).expect("TaskMeta serializes");
        let txn = self.db.begin_write()?;
        txn.open_table(TASKS)?
            .insert(id.as_str(), bytes.as_slice())?;
        txn.commit()?;
        Ok(())
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        // Best effort: without the marker the next open only does extra verification.
        let _ = File::create(self.root.join(CLEAN_MARKER));
    }
}

fn decode_meta(bytes: &[u8]) -> Result<TaskMeta> {
    serde_json::from_slice(bytes).map_err(|e| Error::Metadata(Box::new(e)))
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests;
