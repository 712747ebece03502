//! Snapshots on overlayfs, as containerd's own overlayfs snapshotter keeps them: each snapshot
//! is a directory `snapshots/<id>/` holding `fs/` (its files, or an overlay's upper layer) and
//! `work/` (overlayfs's work directory); a committed snapshot is read-only and may be the parent
//! of others; an active one is mounted writable over its parents' `fs/` directories; a view is
//! mounted read-only. The records (name, kind, parent, labels, times, usage) live in redb
//! (`metadata.redb`), so they survive restarts; a directory without a record is removed by
//! `cleanup`.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

const SNAPSHOTS: TableDefinition<&str, &[u8]> = TableDefinition::new("snapshots");
const COUNTERS: TableDefinition<&str, u64> = TableDefinition::new("counters");
const NEXT_ID: &str = "next_id";
/// Where lazy layers are unpacked before they appear in their snapshot ([`Snapshotter::unpacking_dir`]).
const UNPACKING: &str = "unpacking";

/// The largest label (key and value together), as containerd bounds it.
pub const MAX_LABEL_BYTES: usize = 4096;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    View,
    Active,
    Committed,
}

impl Kind {
    /// The name containerd's filters compare with.
    pub fn name(self) -> &'static str {
        match self {
            Kind::View => "view",
            Kind::Active => "active",
            Kind::Committed => "committed",
        }
    }
}

/// Disk use of a snapshot's own files.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub size: i64,
    pub inodes: i64,
}

/// A snapshot's record.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Its key (active, view) or name (committed).
    #[serde(skip)]
    pub name: String,
    /// Its directory: `snapshots/<id>/`.
    pub id: u64,
    pub kind: Kind,
    /// The committed snapshot below it; empty for none.
    pub parent: String,
    pub labels: BTreeMap<String, String>,
    pub created: SystemTime,
    pub updated: SystemTime,
    /// Counted once when it is committed (its files no longer change).
    pub usage: Option<Usage>,
}

/// A mount for containerd to perform.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    pub kind: String,
    pub source: String,
    pub options: Vec<String>,
}

/// The snapshots under one root directory.
pub struct Snapshotter {
    root: PathBuf,
    db: redb::Database,
}

impl Snapshotter {
    /// Opens (or starts) the snapshots under `root`.
    pub fn open(root: &Path) -> Result<Snapshotter> {
        let dir = root.join("snapshots");
        std::fs::create_dir_all(&dir).map_err(|e| Error::io("create", &dir, e))?;
        let db = redb::Database::create(root.join("metadata.redb"))?;
        let txn = db.begin_write()?;
        txn.open_table(SNAPSHOTS)?;
        txn.open_table(COUNTERS)?;
        txn.commit()?;
        // Unpacks a stop cut short (the database lock says no other snapshotter is here).
        let _ = std::fs::remove_dir_all(root.join(UNPACKING));
        Ok(Snapshotter {
            root: root.to_owned(),
            db,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn dir(&self, id: u64) -> PathBuf {
        self.root.join("snapshots").join(id.to_string())
    }

    /// The directory holding snapshot `id`'s files.
    pub fn fs_dir(&self, id: u64) -> PathBuf {
        self.dir(id).join("fs")
    }

    /// Where a lazy layer's files are unpacked once the layer is whole (it appears whole, by a
    /// rename): from then on, the directory the snapshot's children stack on instead of
    /// [`fs_dir`](Self::fs_dir) (where the lazy mount stays for the containers using it).
    pub fn unpacked_dir(&self, id: u64) -> PathBuf {
        self.dir(id).join("unpacked")
    }

    /// The directory a child stacks on: the unpacked files when there are, else `fs`.
    fn lower_dir(&self, id: u64) -> PathBuf {
        let unpacked = self.unpacked_dir(id);
        match unpacked.is_dir() {
            true => unpacked,
            false => self.fs_dir(id),
        }
    }

    /// A writable snapshot `key` over the committed `parent` (empty: none).
    pub fn prepare(
        &self,
        key: &str,
        parent: &str,
        labels: BTreeMap<String, String>,
    ) -> Result<Vec<Mount>> {
        self.create(Kind::Active, key, parent, labels)
    }

    /// A read-only snapshot `key` of the committed `parent`.
    pub fn view(
        &self,
        key: &str,
        parent: &str,
        labels: BTreeMap<String, String>,
    ) -> Result<Vec<Mount>> {
        self.create(Kind::View, key, parent, labels)
    }

    fn create(
        &self,
        kind: Kind,
        key: &str,
        parent: &str,
        labels: BTreeMap<String, String>,
    ) -> Result<Vec<Mount>> {
        if key.is_empty() {
            return Err(Error::InvalidArgument("a snapshot needs a key".into()));
        }
        check_labels(&labels)?;
        let txn = self.db.begin_write()?;
        let (snapshot, parents) = {
            let mut table = txn.open_table(SNAPSHOTS)?;
            if table.get(key)?.is_some() {
                return Err(Error::AlreadyExists(key.to_owned()));
            }
            let parents = chain(&table, parent)?;
            let mut counters = txn.open_table(COUNTERS)?;
            let id = counters.get(NEXT_ID)?.map_or(1, |v| v.value());
            counters.insert(NEXT_ID, id + 1)?;
            let now = SystemTime::now();
            let snapshot = Snapshot {
                name: key.to_owned(),
                id,
                kind,
                parent: parent.to_owned(),
                labels,
                created: now,
                updated: now,
                usage: None,
            };
            table.insert(key, serde_json::to_vec(&snapshot)?.as_slice())?;
            (snapshot, parents)
        };
        let dir = self.dir(snapshot.id);
        for sub in ["fs", "work"] {
            let path = dir.join(sub);
            std::fs::create_dir_all(&path).map_err(|e| Error::io("create", &path, e))?;
        }
        if let Err(e) = txn.commit() {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(e.into());
        }
        Ok(self.mounts_of(&snapshot, &parents))
    }

    /// The mounts of the active snapshot or view `key`.
    pub fn mounts(&self, key: &str) -> Result<Vec<Mount>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(SNAPSHOTS)?;
        let snapshot = get(&table, key)?;
        if snapshot.kind == Kind::Committed {
            return Err(Error::FailedPrecondition(format!(
                "snapshot {key:?} is committed: mount a view of it"
            )));
        }
        let parents = chain(&table, &snapshot.parent)?;
        Ok(self.mounts_of(&snapshot, &parents))
    }

    /// Overlay mounts, as containerd's overlayfs snapshotter makes them: a writable snapshot
    /// without parents is a bind mount of its directory; with parents, an overlay of its
    /// directory over theirs (nearest first); a view of one directory is a read-only bind
    /// mount of it, of several a read-only overlay.
    fn mounts_of(&self, snapshot: &Snapshot, parents: &[u64]) -> Vec<Mount> {
        let path = |id: u64| self.fs_dir(id).display().to_string();
        let below = |id: u64| self.lower_dir(id).display().to_string();
        let bind = |source: String, mode: &str| Mount {
            kind: "bind".into(),
            source,
            options: vec![mode.into(), "rbind".into()],
        };
        let lower = || {
            let dirs: Vec<String> = parents.iter().map(|&id| below(id)).collect();
            format!("lowerdir={}", dirs.join(":"))
        };
        match (snapshot.kind, parents) {
            (Kind::Active, []) => vec![bind(path(snapshot.id), "rw")],
            (_, []) => vec![bind(path(snapshot.id), "ro")],
            (Kind::View, [only]) => vec![bind(below(*only), "ro")],
            (Kind::View, _) => vec![Mount {
                kind: "overlay".into(),
                source: "overlay".into(),
                options: vec![lower()],
            }],
            (_, _) => vec![Mount {
                kind: "overlay".into(),
                source: "overlay".into(),
                options: vec![
                    format!("workdir={}", self.dir(snapshot.id).join("work").display()),
                    format!("upperdir={}", path(snapshot.id)),
                    lower(),
                ],
            }],
        }
    }

    /// Makes the active snapshot `key` the committed snapshot `name`, with `labels`.
    pub fn commit(&self, name: &str, key: &str, labels: BTreeMap<String, String>) -> Result<()> {
        self.commit_on(name, key, None, labels)
    }

    /// [`commit`](Self::commit), and with `parent`, the active snapshot `key` — which has no
    /// parent — is committed on the committed `parent`: a layer unpacked before its parent was
    /// there (an overlay layer's directory holds its own diff, whatever lies under it).
    pub fn commit_on(
        &self,
        name: &str,
        key: &str,
        parent: Option<&str>,
        labels: BTreeMap<String, String>,
    ) -> Result<()> {
        if name.is_empty() {
            return Err(Error::InvalidArgument(
                "a committed snapshot needs a name".into(),
            ));
        }
        check_labels(&labels)?;
        let txn = self.db.begin_write()?;
        {
            let mut table = txn.open_table(SNAPSHOTS)?;
            let mut snapshot = get(&table, key)?;
            if snapshot.kind != Kind::Active {
                return Err(Error::FailedPrecondition(format!(
                    "snapshot {key:?} is not active: only an active snapshot is committed"
                )));
            }
            if table.get(name)?.is_some() {
                return Err(Error::AlreadyExists(name.to_owned()));
            }
            if let Some(parent) = parent.filter(|p| !p.is_empty()) {
                if !snapshot.parent.is_empty() {
                    return Err(Error::FailedPrecondition(format!(
                        "snapshot {key:?} has a parent already"
                    )));
                }
                chain(&table, parent)?;
                snapshot.parent = parent.to_owned();
            }
            // A lazy layer's files are not on this disk (and walking them would read its
            // FUSE mount's whole tree).
            snapshot.usage = Some(match labels.contains_key(crate::remote::LAZY) {
                true => Usage::default(),
                false => usage_of(&self.fs_dir(snapshot.id))?,
            });
            snapshot.kind = Kind::Committed;
            snapshot.labels = labels;
            snapshot.updated = SystemTime::now();
            snapshot.created = snapshot.updated;
            table.remove(key)?;
            table.insert(name, serde_json::to_vec(&snapshot)?.as_slice())?;
        }
        txn.commit()?;
        Ok(())
    }

    /// Removes snapshot `key` and its files; a committed snapshot that is the parent of
    /// another stays.
    pub fn remove(&self, key: &str) -> Result<()> {
        self.remove_then(key, |_| {})
    }

    /// [`remove`](Self::remove), calling `before_files` with the snapshot's id once it is
    /// forgotten and before its files go (to unmount what is mounted over them).
    pub fn remove_then(&self, key: &str, before_files: impl FnOnce(u64)) -> Result<()> {
        let txn = self.db.begin_write()?;
        let id = {
            let mut table = txn.open_table(SNAPSHOTS)?;
            let snapshot = get(&table, key)?;
            for entry in table.iter()? {
                let (name, value) = entry?;
                let child: Snapshot = serde_json::from_slice(value.value())?;
                if child.parent == key {
                    return Err(Error::FailedPrecondition(format!(
                        "snapshot {key:?} is the parent of {:?}",
                        name.value()
                    )));
                }
            }
            table.remove(key)?;
            snapshot.id
        };
        txn.commit()?;
        before_files(id);
        self.remove_dir(id);
        Ok(())
    }

    /// Removes a snapshot's directory (what fails to go is left to `cleanup`).
    fn remove_dir(&self, id: u64) {
        let dir = self.dir(id);
        if let Err(e) = std::fs::remove_dir_all(&dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(dir = %dir.display(), error = %e, "could not remove a snapshot's files");
        }
    }

    pub fn stat(&self, key: &str) -> Result<Snapshot> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(SNAPSHOTS)?;
        get(&table, key)
    }

    /// Changes the labels of snapshot `key`: with no `paths`, or `labels`, all of them become
    /// `labels`; `labels.<k>` sets (or, absent from `labels`, removes) that one. Nothing else
    /// of a snapshot changes.
    pub fn update(
        &self,
        key: &str,
        labels: BTreeMap<String, String>,
        paths: &[String],
    ) -> Result<Snapshot> {
        check_labels(&labels)?;
        let txn = self.db.begin_write()?;
        let snapshot = {
            let mut table = txn.open_table(SNAPSHOTS)?;
            let mut snapshot = get(&table, key)?;
            if paths.is_empty() {
                snapshot.labels = labels.clone();
            }
            for path in paths {
                match path.strip_prefix("labels.") {
                    _ if path == "labels" => snapshot.labels = labels.clone(),
                    Some(label) => match labels.get(label) {
                        Some(value) => {
                            snapshot.labels.insert(label.to_owned(), value.clone());
                        }
                        None => {
                            snapshot.labels.remove(label);
                        }
                    },
                    None => {
                        return Err(Error::InvalidArgument(format!(
                            "cannot update {path:?} of a snapshot: only its labels change"
                        )));
                    }
                }
            }
            check_labels(&snapshot.labels)?;
            snapshot.updated = SystemTime::now();
            table.insert(key, serde_json::to_vec(&snapshot)?.as_slice())?;
            snapshot
        };
        txn.commit()?;
        Ok(snapshot)
    }

    /// Disk use of snapshot `key`'s own files (an active one's as they are now).
    pub fn usage(&self, key: &str) -> Result<Usage> {
        let snapshot = self.stat(key)?;
        let unpacked = self.unpacked_dir(snapshot.id);
        match snapshot.usage {
            // A lazy layer's files, once unpacked beside its mount.
            _ if unpacked.is_dir() => usage_of(&unpacked),
            Some(usage) => Ok(usage),
            None => usage_of(&self.fs_dir(snapshot.id)),
        }
    }

    /// Where a lazy layer is unpacked before it appears as [`unpacked_dir`](Self::unpacked_dir)
    /// (outside the snapshot's directory: a snapshot removed meanwhile leaves nothing there).
    pub fn unpacking_dir(&self, id: u64) -> PathBuf {
        self.root.join(UNPACKING).join(id.to_string())
    }

    /// Every snapshot.
    pub fn list(&self) -> Result<Vec<Snapshot>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(SNAPSHOTS)?;
        let mut out = Vec::new();
        for entry in table.iter()? {
            let (name, value) = entry?;
            let mut snapshot: Snapshot = serde_json::from_slice(value.value())?;
            snapshot.name = name.value().to_owned();
            out.push(snapshot);
        }
        Ok(out)
    }

    /// Removes the directories no snapshot owns (left by a crash between a record's removal
    /// and its files'). Returns how many.
    pub fn cleanup(&self) -> Result<usize> {
        // Under a write transaction: a snapshot being made (its directory made before its
        // record commits) is not taken for an orphan.
        let txn = self.db.begin_write()?;
        let mut owned = HashSet::new();
        for entry in txn.open_table(SNAPSHOTS)?.iter()? {
            let (_, value) = entry?;
            owned.insert(serde_json::from_slice::<Snapshot>(value.value())?.id);
        }
        let dir = self.root.join("snapshots");
        let entries = std::fs::read_dir(&dir).map_err(|e| Error::io("read", &dir, e))?;
        let mut removed = 0;
        for entry in entries.flatten() {
            let id = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u64>().ok());
            if let Some(id) = id
                && !owned.contains(&id)
            {
                self.remove_dir(id);
                removed += 1;
            }
        }
        txn.abort()?;
        Ok(removed)
    }
}

fn get(table: &impl ReadableTable<&'static str, &'static [u8]>, key: &str) -> Result<Snapshot> {
    let value = table
        .get(key)?
        .ok_or_else(|| Error::NotFound(key.to_owned()))?;
    let mut snapshot: Snapshot = serde_json::from_slice(value.value())?;
    snapshot.name = key.to_owned();
    Ok(snapshot)
}

/// The directories below a snapshot whose parent is `parent`: `parent`'s, its parent's, and
/// so on. `parent` must be committed.
fn chain(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    parent: &str,
) -> Result<Vec<u64>> {
    let mut ids = Vec::new();
    let mut next = parent.to_owned();
    while !next.is_empty() {
        let snapshot = get(table, &next).map_err(|e| match e {
            Error::NotFound(_) => Error::NotFound(format!("parent {next}")),
            e => e,
        })?;
        if snapshot.kind != Kind::Committed {
            return Err(Error::InvalidArgument(format!(
                "parent {next:?} is not a committed snapshot"
            )));
        }
        if ids.contains(&snapshot.id) || ids.len() > 4096 {
            return Err(Error::Metadata(format!("the parents of {parent:?} loop")));
        }
        ids.push(snapshot.id);
        next = snapshot.parent;
    }
    Ok(ids)
}

fn check_labels(labels: &BTreeMap<String, String>) -> Result<()> {
    for (k, v) in labels {
        if k.len() + v.len() > MAX_LABEL_BYTES {
            return Err(Error::InvalidArgument(format!(
                "label {k:?} is over {MAX_LABEL_BYTES} bytes with its value"
            )));
        }
    }
    Ok(())
}

/// The blocks and inodes under `dir` (hard links once), as `du` counts them.
fn usage_of(dir: &Path) -> Result<Usage> {
    use std::os::unix::fs::MetadataExt;
    let mut seen = HashSet::new();
    let mut usage = Usage::default();
    let mut stack = vec![dir.to_owned()];
    while let Some(dir) = stack.pop() {
        let entries = std::fs::read_dir(&dir).map_err(|e| Error::io("read", &dir, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| Error::io("read", &dir, e))?;
            let meta = entry
                .metadata()
                .map_err(|e| Error::io("stat", &entry.path(), e))?;
            if seen.insert((meta.dev(), meta.ino())) {
                usage.inodes += 1;
                usage.size += i64::try_from(meta.blocks() * 512).unwrap_or(i64::MAX);
            }
            if meta.is_dir() {
                stack.push(entry.path());
            }
        }
    }
    Ok(usage)
}

#[cfg(test)]
mod tests;
