//! The file table of a gzip layer: every tar entry with where its bytes start in the
//! uncompressed stream, read in the same pass that builds the checkpoints ([`index_layer`]), so
//! a lazy mount can answer lookups and map a file's read to a span of the layer.

use std::io::Read;

use shoal_p2p::Digest;
use shoal_p2p::digest::{Algorithm, Hasher};

use super::{GzError, Index, IndexBuilder, bad};

/// What a tar entry is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileKind {
    File,
    Dir,
    Symlink,
    /// A hard link to an earlier entry (`link`).
    Hardlink,
    CharDevice,
    BlockDevice,
    Fifo,
}

/// One entry of a layer, as a mount shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileEntry {
    /// Relative, `/`-separated, without `./` or a trailing `/` (the root directory is empty).
    pub path: Vec<u8>,
    pub kind: FileKind,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    /// Seconds since the Unix epoch.
    pub mtime: u64,
    pub size: u64,
    /// Where the entry's bytes start in the uncompressed stream.
    pub offset: u64,
    /// A symlink's target, or the entry a hard link names.
    pub link: Option<Vec<u8>>,
    /// `SCHILY.xattr.*` records: name and value.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    /// A device's major and minor numbers.
    pub device: Option<(u32, u32)>,
}

/// The largest file table a layer may have (about a million files with long paths).
pub(super) const MAX_TABLE: usize = 128 << 20;

/// Reads a gzip layer to its end: its index (checkpoints every `span` of output) and its
/// files. Fails on what is not a gzip tar stream, and on what a mount could not show (a path
/// that climbs out with `..`, a sparse file).
pub fn index_layer(gzip: impl Read, span: u64) -> Result<(Index, Vec<FileEntry>), GzError> {
    index_layer_diff(gzip, span).map(|(index, files, _)| (index, files))
}

/// [`index_layer`], and the layer's diff id: the SHA-256 of its uncompressed bytes.
pub(super) fn index_layer_diff(
    gzip: impl Read,
    span: u64,
) -> Result<(Index, Vec<FileEntry>, Digest), GzError> {
    let mut inflating = Inflating {
        source: gzip,
        builder: Some(IndexBuilder::new(span)),
        input: Vec::new(),
        out: Vec::new(),
        at: 0,
        index: None,
        diff: Some(Algorithm::Sha256.hasher()),
    };
    let files = files(&mut inflating, MAX_TABLE)?;
    // The tar's end padding, and anything after it, is part of the stream.
    std::io::copy(&mut inflating, &mut std::io::sink()).map_err(io)?;
    let index = inflating
        .index
        .take()
        .map_or_else(|| bad("the stream did not end"), Ok)?;
    let diff = inflating.diff.take().expect("taken once").finish();
    Ok((index, files, diff))
}

fn io(e: std::io::Error) -> GzError {
    match e.get_ref().and_then(|e| e.downcast_ref::<GzError>()) {
        Some(gz) => gz.clone(),
        None => GzError(format!("reading the layer: {e}")),
    }
}

/// The entries of the tar stream `tar`.
pub(super) fn files(tar: impl Read, max_table: usize) -> Result<Vec<FileEntry>, GzError> {
    let mut archive = tar::Archive::new(tar);
    let mut out = Vec::new();
    // What the table holds, bounded: a small gzip of millions of headers must not make the
    // builder (a seed) run out of memory.
    let mut held = 0usize;
    for entry in archive.entries().map_err(io)? {
        let mut entry = entry.map_err(io)?;
        let header = entry.header();
        let kind = match header.entry_type() {
            tar::EntryType::Regular | tar::EntryType::Continuous => FileKind::File,
            tar::EntryType::Directory => FileKind::Dir,
            tar::EntryType::Symlink => FileKind::Symlink,
            tar::EntryType::Link => FileKind::Hardlink,
            tar::EntryType::Char => FileKind::CharDevice,
            tar::EntryType::Block => FileKind::BlockDevice,
            tar::EntryType::Fifo => FileKind::Fifo,
            tar::EntryType::GNUSparse => return bad("a sparse file (not served lazily)"),
            other => return bad(format!("a tar entry of type {:?}", other.as_byte())),
        };
        let number = |r: std::io::Result<u64>| r.map_err(io);
        let device = match kind {
            FileKind::CharDevice | FileKind::BlockDevice => Some((
                header.device_major().map_err(io)?.unwrap_or(0),
                header.device_minor().map_err(io)?.unwrap_or(0),
            )),
            _ => None,
        };
        let (mode, uid, gid, mtime) = (
            header.mode().map_err(io)?,
            number(header.uid())?,
            number(header.gid())?,
            number(header.mtime())?,
        );
        let path = clean(&entry.path_bytes())?;
        let link = match entry.link_name_bytes() {
            Some(l) if kind == FileKind::Hardlink => Some(clean(&l)?),
            Some(l) => Some(l.into_owned()),
            None => None,
        };
        let mut xattrs = Vec::new();
        if let Some(pax) = entry.pax_extensions().map_err(io)? {
            for record in pax {
                let record = record.map_err(io)?;
                if let Some(name) = record.key_bytes().strip_prefix(b"SCHILY.xattr.") {
                    xattrs.push((name.to_vec(), record.value_bytes().to_vec()));
                }
            }
        }
        held += 64
            + path.len()
            + link.as_ref().map_or(0, Vec::len)
            + xattrs.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>();
        if held > max_table {
            return bad(format!(
                "a file table over {max_table} bytes ({} entries)",
                out.len()
            ));
        }
        out.push(FileEntry {
            path,
            kind,
            mode,
            uid,
            gid,
            mtime,
            size: entry.size(),
            offset: entry.raw_file_position(),
            link,
            xattrs,
            device,
        });
    }
    Ok(out)
}

/// `path` relative and clean; refused if it climbs out.
fn clean(path: &[u8]) -> Result<Vec<u8>, GzError> {
    let mut parts = Vec::new();
    for part in path.split(|&b| b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => return bad("a path with `..` in it"),
            p => parts.push(p),
        }
    }
    Ok(parts.join(&b'/'))
}

/// The uncompressed bytes of a gzip stream, read through an [`IndexBuilder`]; its index once
/// the stream has ended.
struct Inflating<R> {
    source: R,
    builder: Option<IndexBuilder>,
    /// Compressed bytes read from `source`.
    input: Vec<u8>,
    /// Uncompressed bytes not read yet (from `at`).
    out: Vec<u8>,
    at: usize,
    index: Option<Index>,
    /// The uncompressed bytes' hash.
    diff: Option<Hasher>,
}

impl<R: Read> Read for Inflating<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.at == self.out.len() {
            let Some(builder) = &mut self.builder else {
                return Ok(0);
            };
            self.out.clear();
            self.at = 0;
            self.input.resize(64 << 10, 0);
            let n = self.source.read(&mut self.input)?;
            if n == 0 {
                if let Some(builder) = self.builder.take() {
                    self.index = Some(builder.finish().map_err(std::io::Error::other)?);
                }
                return Ok(0);
            }
            let (out, diff) = (&mut self.out, &mut self.diff);
            builder
                .write(&self.input[..n], &mut |o| {
                    out.extend_from_slice(o);
                    if let Some(h) = diff.as_mut() {
                        h.update(o);
                    }
                })
                .map_err(std::io::Error::other)?;
        }
        let n = buf.len().min(self.out.len() - self.at);
        buf[..n].copy_from_slice(&self.out[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}
