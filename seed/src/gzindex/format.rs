//! The index as bytes: what peers fetch and check like any task. Little-endian:
//! `SHOALGZI`, version 1, the compressed and uncompressed sizes (u64), the checkpoint count
//! (u32), then each checkpoint: compressed and uncompressed offsets (u64), bits and bit
//! buffer (u8 each), window length (u16) and window.

use super::{Checkpoint, GzError, Index, WINDOW, bad};

const MAGIC: &[u8; 8] = b"SHOALGZI";
const VERSION: u8 = 1;
/// A checkpoint's bytes before its window.
const FIXED: usize = 8 + 8 + 1 + 1 + 2;

impl Index {
    pub fn to_bytes(&self) -> Vec<u8> {
        let windows: usize = self.checkpoints.iter().map(|c| c.window.len()).sum();
        let mut b = Vec::with_capacity(29 + self.checkpoints.len() * FIXED + windows);
        b.extend_from_slice(MAGIC);
        b.push(VERSION);
        b.extend_from_slice(&self.compressed_size.to_le_bytes());
        b.extend_from_slice(&self.uncompressed_size.to_le_bytes());
        let count = u32::try_from(self.checkpoints.len()).unwrap_or(u32::MAX);
        b.extend_from_slice(&count.to_le_bytes());
        for c in self.checkpoints.iter().take(count as usize) {
            b.extend_from_slice(&c.compressed.to_le_bytes());
            b.extend_from_slice(&c.uncompressed.to_le_bytes());
            b.extend_from_slice(&[c.bits, c.bit_buf]);
            let window = &c.window[c.window.len().saturating_sub(WINDOW)..];
            b.extend_from_slice(&(window.len() as u16).to_le_bytes());
            b.extend_from_slice(window);
        }
        b
    }

    /// An index from its bytes; anything inconsistent is refused (the bytes come from peers).
    pub fn from_bytes(b: &[u8]) -> Result<Index, GzError> {
        let mut r = Reader(b);
        if r.take(8)? != MAGIC {
            return bad("not a Shoal gzip index");
        }
        if r.take(1)?[0] != VERSION {
            return bad("a gzip index of another version");
        }
        let compressed_size = r.u64()?;
        let uncompressed_size = r.u64()?;
        let count = u32::from_le_bytes(r.array()?);
        let mut checkpoints: Vec<Checkpoint> = Vec::new();
        for _ in 0..count {
            let compressed = r.u64()?;
            let uncompressed = r.u64()?;
            let [bits, bit_buf] = r.array()?;
            let len = usize::from(u16::from_le_bytes(r.array()?));
            let window = r.take(len)?.to_vec();
            let ordered = checkpoints
                .last()
                .is_none_or(|p| p.compressed < compressed && p.uncompressed <= uncompressed);
            if bits > 7
                || len > WINDOW
                || !ordered
                || compressed > compressed_size
                || uncompressed > uncompressed_size
            {
                return bad("an inconsistent checkpoint in the index");
            }
            checkpoints.push(Checkpoint {
                compressed,
                bits,
                bit_buf,
                uncompressed,
                window,
            });
        }
        if !r.0.is_empty() {
            return bad("bytes after the index");
        }
        if checkpoints.is_empty() {
            return bad("an index without checkpoints");
        }
        Ok(Index {
            checkpoints,
            compressed_size,
            uncompressed_size,
        })
    }
}

/// The index's bytes not read yet.
pub(super) struct Reader<'a>(pub(super) &'a [u8]);

impl<'a> Reader<'a> {
    pub(super) fn take(&mut self, n: usize) -> Result<&'a [u8], GzError> {
        if self.0.len() < n {
            return bad("the index is cut short");
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    pub(super) fn array<const N: usize>(&mut self) -> Result<[u8; N], GzError> {
        let mut a = [0; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    pub(super) fn u64(&mut self) -> Result<u64, GzError> {
        Ok(u64::from_le_bytes(self.array()?))
    }
}
