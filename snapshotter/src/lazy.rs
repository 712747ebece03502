//! A lazy layer (issue 16): a gzip layer mounted read-only with FUSE from its index (the
//! checkpoints and file table `shoal_seed::gzindex` builds), its bytes fetched span by span as
//! files are read. It is a lower directory of an overlay mount, as stargz's and SOCI's are:
//! OCI whiteouts show as overlayfs ones (`.wh.NAME` → a 0/0 character device `NAME`,
//! `.wh..wh..opq` → the directory's `trusted.overlay.opaque` = `y`), hard links share an inode.
//!
//! Where the compressed bytes come from is the [`Spans`] given (the node's store, once the node
//! has made the range present). Inflated spans are kept in a small cache, so a file read in
//! kernel-sized pieces inflates each span once.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::ops::Range;
use std::os::unix::ffi::OsStrExt as _;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, LockOwner,
    OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyEntry, ReplyOpen, ReplyStatfs,
    ReplyXattr, Request,
};
use shoal_seed::gzindex::{FileEntry, FileKind, Index, read_at};

/// The compressed bytes of a layer, by range.
pub trait Spans: Send + Sync + 'static {
    fn fetch(&self, range: Range<u64>) -> std::io::Result<Vec<u8>>;
}

/// How long the kernel may keep names and attributes: a layer never changes.
const TTL: Duration = Duration::from_secs(3600);
/// Inflated spans kept.
const CACHED_SPANS: usize = 8;
const ROOT: u64 = 1;
const OPAQUE: &[u8] = b"trusted.overlay.opaque";

struct Node {
    entry: FileEntry,
    nlink: u32,
    /// A directory's entries, in the order the layer lists them.
    children: Vec<(Vec<u8>, u64)>,
}

/// A layer's tree, and how to read its files.
pub struct LazyLayer {
    /// By inode number less one.
    nodes: Vec<Node>,
    lookup: HashMap<(u64, Vec<u8>), u64>,
    index: Index,
    spans: Box<dyn Spans>,
    /// Inflated spans, by checkpoint, most recent last.
    cache: Mutex<Vec<(usize, Arc<Vec<u8>>)>>,
    /// Spans being inflated, by checkpoint: a read of one waits for it (readahead sends
    /// several reads of a span at once) instead of inflating it again.
    inflating: Mutex<HashMap<usize, Arc<Mutex<()>>>>,
}

fn dir_entry(path: Vec<u8>) -> FileEntry {
    FileEntry {
        path,
        kind: FileKind::Dir,
        mode: 0o755,
        uid: 0,
        gid: 0,
        mtime: 0,
        size: 0,
        offset: 0,
        link: None,
        xattrs: Vec::new(),
        device: None,
    }
}

impl LazyLayer {
    /// The tree of `files` (a later entry of the same path replaces an earlier one, as
    /// unpacking would); the bytes through `spans`.
    pub fn new(index: Index, files: Vec<FileEntry>, spans: Box<dyn Spans>) -> LazyLayer {
        let mut layer = LazyLayer {
            nodes: vec![Node {
                entry: dir_entry(Vec::new()),
                nlink: 2,
                children: Vec::new(),
            }],
            lookup: HashMap::new(),
            index,
            spans,
            cache: Mutex::default(),
            inflating: Mutex::default(),
        };
        for mut entry in files {
            let (parent_path, name) = match entry.path.iter().rposition(|&b| b == b'/') {
                Some(i) => (entry.path[..i].to_vec(), entry.path[i + 1..].to_vec()),
                None => (Vec::new(), entry.path.clone()),
            };
            if name.is_empty() {
                // The layer's `./`: the root's owner and mode (it stays a directory).
                if entry.kind != FileKind::Dir {
                    continue;
                }
                layer.nodes[0].entry = FileEntry {
                    path: Vec::new(),
                    ..entry
                };
                continue;
            }
            let parent = layer.dir(&parent_path);
            if name == b".wh..wh..opq" {
                let xattrs = &mut layer.nodes[(parent - 1) as usize].entry.xattrs;
                xattrs.retain(|(k, _)| k != OPAQUE);
                xattrs.push((OPAQUE.to_vec(), b"y".to_vec()));
                continue;
            }
            let name = match name.strip_prefix(b".wh.") {
                Some(hidden) => {
                    // An overlayfs whiteout: a character device 0/0.
                    entry.kind = FileKind::CharDevice;
                    entry.device = Some((0, 0));
                    entry.mode = 0;
                    entry.size = 0;
                    hidden.to_vec()
                }
                None => name,
            };
            if entry.kind == FileKind::Hardlink {
                let target = entry.link.as_deref().and_then(|t| layer.find(t));
                if let Some(ino) = target {
                    layer.nodes[(ino - 1) as usize].nlink += 1;
                    layer.attach(parent, name, ino);
                }
                continue;
            }
            match layer.lookup.get(&(parent, name.clone())) {
                Some(&ino) => layer.nodes[(ino - 1) as usize].entry = entry,
                None => {
                    let ino = layer.add(entry);
                    layer.attach(parent, name, ino);
                }
            }
        }
        layer
    }

    fn add(&mut self, entry: FileEntry) -> u64 {
        let nlink = if entry.kind == FileKind::Dir { 2 } else { 1 };
        self.nodes.push(Node {
            entry,
            nlink,
            children: Vec::new(),
        });
        self.nodes.len() as u64
    }

    fn attach(&mut self, parent: u64, name: Vec<u8>, ino: u64) {
        if self.lookup.insert((parent, name.clone()), ino).is_none() {
            self.nodes[(parent - 1) as usize].children.push((name, ino));
        }
    }

    /// The inode of the directory at `path`, made (0755, root's) if the layer did not list it.
    fn dir(&mut self, path: &[u8]) -> u64 {
        let mut at = ROOT;
        for part in path.split(|&b| b == b'/').filter(|p| !p.is_empty()) {
            at = match self.lookup.get(&(at, part.to_vec())) {
                Some(&ino) if self.nodes[(ino - 1) as usize].entry.kind == FileKind::Dir => ino,
                _ => {
                    let ino = self.add(dir_entry(part.to_vec()));
                    self.lookup.insert((at, part.to_vec()), ino);
                    let children = &mut self.nodes[(at - 1) as usize].children;
                    children.retain(|(n, _)| n != part);
                    children.push((part.to_vec(), ino));
                    ino
                }
            };
        }
        at
    }

    fn find(&self, path: &[u8]) -> Option<u64> {
        let mut at = ROOT;
        for part in path.split(|&b| b == b'/').filter(|p| !p.is_empty()) {
            at = *self.lookup.get(&(at, part.to_vec()))?;
        }
        Some(at)
    }

    fn node(&self, ino: INodeNo) -> Option<&Node> {
        self.nodes.get(usize::try_from(ino.0).ok()?.checked_sub(1)?)
    }

    fn attr(&self, ino: u64, node: &Node) -> FileAttr {
        let e = &node.entry;
        let kind = match e.kind {
            FileKind::File | FileKind::Hardlink => FileType::RegularFile,
            FileKind::Dir => FileType::Directory,
            FileKind::Symlink => FileType::Symlink,
            FileKind::CharDevice => FileType::CharDevice,
            FileKind::BlockDevice => FileType::BlockDevice,
            FileKind::Fifo => FileType::NamedPipe,
        };
        let size = match e.kind {
            FileKind::Symlink => e.link.as_ref().map_or(0, |l| l.len() as u64),
            _ => e.size,
        };
        let time = UNIX_EPOCH + Duration::from_secs(e.mtime);
        let (major, minor) = e.device.unwrap_or((0, 0));
        FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: time,
            mtime: time,
            ctime: time,
            crtime: time,
            kind,
            perm: (e.mode & 0o7777) as u16,
            nlink: node.nlink,
            uid: u32::try_from(e.uid).unwrap_or(u32::MAX),
            gid: u32::try_from(e.gid).unwrap_or(u32::MAX),
            rdev: (major << 8) | (minor & 0xff) | ((minor & !0xff) << 12),
            blksize: 4096,
            flags: 0,
        }
    }

    /// `len` bytes at `offset` of the uncompressed stream, span by span.
    fn read_stream(&self, offset: u64, len: u64) -> std::io::Result<Vec<u8>> {
        let end = offset.saturating_add(len).min(self.index.uncompressed_size);
        let mut out = Vec::with_capacity(end.saturating_sub(offset) as usize);
        let mut at = offset;
        while at < end {
            let cp = self
                .index
                .checkpoints
                .partition_point(|c| c.uncompressed <= at)
                .saturating_sub(1);
            let span = self.span(cp)?;
            let start = self.index.checkpoints[cp].uncompressed;
            let from = at
                .checked_sub(start)
                .ok_or_else(|| std::io::Error::other("no checkpoint before the range"))?
                as usize;
            let take = ((end - at) as usize).min(span.len().saturating_sub(from));
            if take == 0 {
                return Err(std::io::Error::other("a span shorter than the index says"));
            }
            out.extend_from_slice(&span[from..from + take]);
            at += take as u64;
        }
        Ok(out)
    }

    /// The span of checkpoint `cp` if it is cached (then the most recent).
    fn cached(&self, cp: usize) -> Option<Arc<Vec<u8>>> {
        let mut cache = self.cache.lock().expect("span cache lock");
        let i = cache.iter().position(|(k, _)| *k == cp)?;
        let hit = cache.remove(i);
        cache.push(hit.clone());
        Some(hit.1)
    }

    /// The uncompressed bytes from checkpoint `cp` to the next (or the end), inflated once
    /// however many reads want them at the same time.
    fn span(&self, cp: usize) -> std::io::Result<Arc<Vec<u8>>> {
        if let Some(hit) = self.cached(cp) {
            return Ok(hit);
        }
        let gate = self
            .inflating
            .lock()
            .expect("inflating lock")
            .entry(cp)
            .or_default()
            .clone();
        // It guards nothing but the work: a reader that panicked leaves it usable.
        let held = gate
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let inflated = match self.cached(cp) {
            Some(hit) => Ok(hit),
            None => self.inflate(cp),
        };
        drop(held);
        // This gate only: a later one (the span evicted and wanted again) stays.
        let mut inflating = self.inflating.lock().expect("inflating lock");
        if inflating.get(&cp).is_some_and(|g| Arc::ptr_eq(g, &gate)) {
            inflating.remove(&cp);
        }
        inflated
    }

    /// Fetches and inflates the span of checkpoint `cp`, and caches it.
    fn inflate(&self, cp: usize) -> std::io::Result<Arc<Vec<u8>>> {
        let checkpoints = &self.index.checkpoints;
        let from = checkpoints
            .get(cp)
            .ok_or_else(|| std::io::Error::other("an index without checkpoints"))?;
        let end = checkpoints
            .get(cp + 1)
            .map_or(self.index.uncompressed_size, |c| c.uncompressed)
            .max(from.uncompressed);
        let (_, range) = self
            .index
            .span(from.uncompressed..end.max(from.uncompressed + 1))
            .ok_or_else(|| std::io::Error::other("a checkpoint outside the layer"))?;
        let data = self.spans.fetch(range)?;
        let bytes = read_at(
            from,
            &data,
            from.uncompressed,
            (end - from.uncompressed) as usize,
        )
        .map_err(std::io::Error::other)?;
        let bytes = Arc::new(bytes);
        let mut cache = self.cache.lock().expect("span cache lock");
        if cache.len() >= CACHED_SPANS {
            cache.remove(0);
        }
        cache.push((cp, bytes.clone()));
        Ok(bytes)
    }
}

impl Filesystem for LazyLayer {
    fn lookup(&self, _: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.lookup.get(&(parent.0, name.as_bytes().to_vec())) {
            Some(&ino) => {
                let node = &self.nodes[(ino - 1) as usize];
                reply.entry(&TTL, &self.attr(ino, node), Generation(0));
            }
            None => reply.error(Errno::ENOENT),
        }
    }

    fn getattr(&self, _: &Request, ino: INodeNo, _: Option<FileHandle>, reply: ReplyAttr) {
        match self.node(ino) {
            Some(node) => reply.attr(&TTL, &self.attr(ino.0, node)),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn readlink(&self, _: &Request, ino: INodeNo, reply: ReplyData) {
        match self.node(ino).and_then(|n| n.entry.link.as_deref()) {
            Some(target) => reply.data(target),
            None => reply.error(Errno::EINVAL),
        }
    }

    fn open(&self, _: &Request, ino: INodeNo, _: OpenFlags, reply: ReplyOpen) {
        match self.node(ino) {
            Some(_) => reply.opened(FileHandle(0), FopenFlags::FOPEN_KEEP_CACHE),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn read(
        &self,
        _: &Request,
        ino: INodeNo,
        _: FileHandle,
        offset: u64,
        size: u32,
        _: OpenFlags,
        _: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let Some(node) = self.node(ino) else {
            return reply.error(Errno::ENOENT);
        };
        let e = &node.entry;
        let len = e.size.saturating_sub(offset).min(u64::from(size));
        if len == 0 || e.kind != FileKind::File {
            return reply.data(&[]);
        }
        match self.read_stream(e.offset.saturating_add(offset), len) {
            Ok(bytes) => reply.data(&bytes),
            Err(err) => {
                tracing::error!(path = %String::from_utf8_lossy(&e.path), offset, len, error = %err, "a lazy read failed");
                reply.error(Errno::EIO);
            }
        }
    }

    fn readdir(
        &self,
        _: &Request,
        ino: INodeNo,
        _: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let Some(node) = self.node(ino) else {
            return reply.error(Errno::ENOENT);
        };
        let dots = [(&b"."[..], ino.0), (&b".."[..], ino.0)];
        let all = dots
            .into_iter()
            .chain(node.children.iter().map(|(n, i)| (n.as_slice(), *i)));
        for (i, (name, child)) in all.enumerate().skip(offset as usize) {
            let kind = self.attr(child, &self.nodes[(child - 1) as usize]).kind;
            if reply.add(INodeNo(child), i as u64 + 1, kind, OsStr::from_bytes(name)) {
                break;
            }
        }
        reply.ok();
    }

    fn getxattr(&self, _: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let value = self.node(ino).and_then(|n| {
            n.entry
                .xattrs
                .iter()
                .find(|(k, _)| k.as_slice() == name.as_bytes())
        });
        match value {
            None => reply.error(Errno::NO_XATTR),
            Some((_, v)) if size == 0 => reply.size(v.len() as u32),
            Some((_, v)) if v.len() <= size as usize => reply.data(v),
            Some(_) => reply.error(Errno::ERANGE),
        }
    }

    fn listxattr(&self, _: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let Some(node) = self.node(ino) else {
            return reply.error(Errno::ENOENT);
        };
        let mut names = Vec::new();
        for (k, _) in &node.entry.xattrs {
            names.extend_from_slice(k);
            names.push(0);
        }
        match size {
            0 => reply.size(names.len() as u32),
            s if names.len() <= s as usize => reply.data(&names),
            _ => reply.error(Errno::ERANGE),
        }
    }

    fn statfs(&self, _: &Request, _: INodeNo, reply: ReplyStatfs) {
        let files = self.nodes.len() as u64;
        let blocks = self.index.uncompressed_size.div_ceil(4096);
        reply.statfs(blocks, 0, 0, files, 0, 4096, 255, 4096);
    }
}

/// Mounts `layer` read-only at `at` (an existing directory); unmounted when the session is
/// dropped.
pub fn mount(layer: LazyLayer, at: &Path) -> std::io::Result<fuser::BackgroundSession> {
    let mut config = fuser::Config::default();
    config.mount_options = vec![
        fuser::MountOption::RO,
        fuser::MountOption::FSName("shoal".into()),
        fuser::MountOption::Subtype("shoal".into()),
        fuser::MountOption::DefaultPermissions,
    ];
    // A read waiting for the network holds its thread: enough for lookups to go on beside them.
    config.n_threads = Some(16);
    fuser::spawn_mount(layer, at, &config)
}

#[cfg(test)]
mod tests;
