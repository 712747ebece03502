//! A tar stream's extension entries bounded before `tar` reads them: `tar` reads a GNU long
//! name or link (`L`, `K`) and a PAX header (`x`, `g`) whole into memory, as large as its header
//! says — a few megabytes of gzip can declare gigabytes. This reader follows the archive's
//! headers as the bytes pass and fails the stream at an extension entry over [`MAX_EXTENSION`]
//! (containerd's own bound is 1 MiB), at a PAX `size` (which would move the next header where
//! this reader cannot follow) and at GNU sparse entries (whose extra headers it does not
//! follow). Such a layer is left to containerd.

use std::io::{self, Read};

/// The largest long name, long link or PAX header accepted.
pub const MAX_EXTENSION: u64 = 1 << 20;

const BLOCK: u64 = 512;

pub struct Guard<R> {
    inner: R,
    /// Bytes read so far.
    pos: u64,
    /// Where the next header starts.
    next_header: u64,
    header: Vec<u8>,
    /// The data of the PAX header being read, and where it ends.
    pax: Option<(Vec<u8>, u64)>,
}

impl<R> Guard<R> {
    pub fn new(inner: R) -> Guard<R> {
        Guard {
            inner,
            pos: 0,
            next_header: 0,
            header: Vec::with_capacity(BLOCK as usize),
            pax: None,
        }
    }

    pub fn into_inner(self) -> R {
        self.inner
    }

    /// Follows the bytes `data`, read at `self.pos`.
    fn follow(&mut self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            if let Some((pax, end)) = &mut self.pax {
                let end = *end;
                let take = usize::try_from((end - self.pos).min(data.len() as u64)).unwrap_or(0);
                pax.extend_from_slice(&data[..take]);
                self.advance(take, &mut data);
                if self.pos == end
                    && let Some((pax, _)) = self.pax.take()
                {
                    check_pax(&pax)?;
                }
                continue;
            }
            if self.pos < self.next_header {
                let skip = usize::try_from((self.next_header - self.pos).min(data.len() as u64))
                    .unwrap_or(0);
                self.advance(skip, &mut data);
                continue;
            }
            let take = (BLOCK as usize - self.header.len()).min(data.len());
            self.header.extend_from_slice(&data[..take]);
            self.advance(take, &mut data);
            if self.header.len() == BLOCK as usize {
                self.next_header = self.pos + self.entry()?.div_ceil(BLOCK) * BLOCK;
                self.header.clear();
            }
        }
        Ok(())
    }

    fn advance(&mut self, n: usize, data: &mut &[u8]) {
        self.pos += n as u64;
        *data = &data[n..];
    }

    /// The size of the entry whose header was just read (0 for an end-of-archive block).
    fn entry(&mut self) -> io::Result<u64> {
        let h = &self.header;
        if h.iter().all(|&b| b == 0) {
            return Ok(0);
        }
        let size = size_field(&h[124..136])?;
        match h[156] {
            b'L' | b'K' | b'x' | b'g' if size > MAX_EXTENSION => Err(refuse(format!(
                "a tar extension entry of {size} bytes (over {MAX_EXTENSION})"
            ))),
            b'x' | b'g' => {
                self.pax = Some((Vec::new(), self.pos + size));
                Ok(size)
            }
            b'S' => Err(refuse("a GNU sparse file".into())),
            _ => Ok(size),
        }
    }
}

impl<R: Read> Read for Guard<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.follow(&buf[..n])?;
        Ok(n)
    }
}

fn refuse(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("layer refused: {what}"))
}

/// A header's size: octal digits, or base-256 (high bit set).
fn size_field(field: &[u8]) -> io::Result<u64> {
    if field[0] & 0x80 != 0 {
        let mut n: u64 = u64::from(field[0] & 0x7f);
        for &b in &field[1..] {
            n = n
                .checked_mul(256)
                .and_then(|n| n.checked_add(u64::from(b)))
                .ok_or_else(|| refuse("a tar size over 2^64".into()))?;
        }
        return Ok(n);
    }
    let text: String = field
        .iter()
        .take_while(|&&b| b != 0)
        .map(|&b| b as char)
        .collect();
    let text = text.trim();
    if text.is_empty() {
        return Ok(0);
    }
    u64::from_str_radix(text, 8).map_err(|_| refuse(format!("a tar size {text:?}")))
}

/// A PAX header must not say the next entry's size (this reader could not follow it).
fn check_pax(data: &[u8]) -> io::Result<()> {
    let sizes = data
        .split(|&b| b == b'\n')
        .filter_map(|record| {
            record
                .iter()
                .position(|&b| b == b' ')
                .map(|i| &record[i + 1..])
        })
        .any(|kv| kv.starts_with(b"size="));
    match sizes {
        true => Err(refuse("a PAX size record".into())),
        false => Ok(()),
    }
}
