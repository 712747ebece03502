//! What a layer's index task holds: the gzip index and the file table, as bytes. Little-endian:
//! `SHOALGZL`, version 1, the diff id's 32 bytes (SHA-256), the index's length (u64) and bytes ([`Index::to_bytes`]), the entry
//! count (u32), then each entry: path, kind (u8), mode (u32), uid, gid, mtime, size, offset
//! (u64 each), link (u8 flag, then bytes), xattr count (u32) and each name and value, device
//! (u8 flag, then major and minor as u32). Byte strings are a u32 length and the bytes.

use std::io::Read;

use super::format::Reader;
use shoal_p2p::Digest;
use shoal_p2p::digest::Algorithm;

use super::files::index_layer_diff;
use super::{FileEntry, FileKind, GzError, Index, bad};

const MAGIC: &[u8; 8] = LAYER_INDEX_MAGIC;
/// The first bytes of a layer index.
pub const LAYER_INDEX_MAGIC: &[u8; 8] = b"SHOALGZL";
const VERSION: u8 = 1;
const KINDS: [FileKind; 7] = [
    FileKind::File,
    FileKind::Dir,
    FileKind::Symlink,
    FileKind::Hardlink,
    FileKind::CharDevice,
    FileKind::BlockDevice,
    FileKind::Fifo,
];

/// A gzip layer's index and files: all a lazy mount needs besides the layer's bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayerIndex {
    /// The layer's diff id (the SHA-256 of its tar): what an image's config names it by, so a
    /// mount can be checked against the chain id it is mounted as.
    pub diff_id: Digest,
    pub index: Index,
    pub files: Vec<FileEntry>,
}

impl LayerIndex {
    /// Reads a gzip layer to its end (see [`index_layer`](super::index_layer)).
    pub fn build(gzip: impl Read, span: u64) -> Result<LayerIndex, GzError> {
        let (index, files, diff_id) = index_layer_diff(gzip, span)?;
        Ok(LayerIndex {
            diff_id,
            index,
            files,
        })
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let index = self.index.to_bytes();
        let mut b = Vec::with_capacity(index.len() + 64 * self.files.len() + 32);
        b.extend_from_slice(MAGIC);
        b.push(VERSION);
        b.extend_from_slice(self.diff_id.bytes());
        b.extend_from_slice(&(index.len() as u64).to_le_bytes());
        b.extend_from_slice(&index);
        let count = u32::try_from(self.files.len()).unwrap_or(u32::MAX);
        b.extend_from_slice(&count.to_le_bytes());
        let bytes = |b: &mut Vec<u8>, s: &[u8]| {
            b.extend_from_slice(&(s.len() as u32).to_le_bytes());
            b.extend_from_slice(s);
        };
        for f in self.files.iter().take(count as usize) {
            bytes(&mut b, &f.path);
            let kind = KINDS.iter().position(|k| *k == f.kind).unwrap_or(0) as u8;
            b.push(kind);
            b.extend_from_slice(&f.mode.to_le_bytes());
            for n in [f.uid, f.gid, f.mtime, f.size, f.offset] {
                b.extend_from_slice(&n.to_le_bytes());
            }
            b.push(u8::from(f.link.is_some()));
            if let Some(link) = &f.link {
                bytes(&mut b, link);
            }
            b.extend_from_slice(&(f.xattrs.len() as u32).to_le_bytes());
            for (name, value) in &f.xattrs {
                bytes(&mut b, name);
                bytes(&mut b, value);
            }
            b.push(u8::from(f.device.is_some()));
            if let Some((major, minor)) = f.device {
                b.extend_from_slice(&major.to_le_bytes());
                b.extend_from_slice(&minor.to_le_bytes());
            }
        }
        b
    }

    /// A layer index from its bytes; anything inconsistent is refused (they come from peers).
    pub fn from_bytes(b: &[u8]) -> Result<LayerIndex, GzError> {
        let mut r = Reader(b);
        if r.take(8)? != MAGIC {
            return bad("not a Shoal layer index");
        }
        if r.take(1)?[0] != VERSION {
            return bad("a layer index of another version");
        }
        let diff_id = Digest::new(Algorithm::Sha256, r.array()?);
        let len = usize::try_from(r.u64()?).unwrap_or(usize::MAX);
        let index = Index::from_bytes(r.take(len)?)?;
        let count = u32::from_le_bytes(r.array()?);
        // Not allocated ahead: the count is the peer's word, the bytes are what is there.
        let mut files = Vec::new();
        for _ in 0..count {
            files.push(entry(&mut r)?);
        }
        if !r.0.is_empty() {
            return bad("bytes after the layer index");
        }
        Ok(LayerIndex {
            diff_id,
            index,
            files,
        })
    }
}

fn entry(r: &mut Reader<'_>) -> Result<FileEntry, GzError> {
    let path = string(r)?;
    let kind = *KINDS
        .get(usize::from(r.take(1)?[0]))
        .map_or_else(|| bad("an unknown entry kind"), Ok)?;
    let mode = u32::from_le_bytes(r.array()?);
    let [uid, gid, mtime, size, offset] = [r.u64()?, r.u64()?, r.u64()?, r.u64()?, r.u64()?];
    let link = match r.take(1)?[0] {
        0 => None,
        _ => Some(string(r)?),
    };
    let xattr_count = u32::from_le_bytes(r.array()?);
    let mut xattrs = Vec::new();
    for _ in 0..xattr_count {
        xattrs.push((string(r)?, string(r)?));
    }
    let device = match r.take(1)?[0] {
        0 => None,
        _ => Some((
            u32::from_le_bytes(r.array()?),
            u32::from_le_bytes(r.array()?),
        )),
    };
    Ok(FileEntry {
        path,
        kind,
        mode,
        uid,
        gid,
        mtime,
        size,
        offset,
        link,
        xattrs,
        device,
    })
}

fn string(r: &mut Reader<'_>) -> Result<Vec<u8>, GzError> {
    let len = u32::from_le_bytes(r.array()?) as usize;
    Ok(r.take(len)?.to_vec())
}
