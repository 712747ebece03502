//! A seekable index of a gzip stream, for lazy pulling (DESIGN.md "Lazy pulling"): built once,
//! while the layer streams past the first host that fetches it, then any uncompressed range is
//! read by fetching only the compressed span around it. As zlib's `zran.c` does it, at deflate
//! block boundaries every [`DEFAULT_SPAN`] of output the index keeps a checkpoint: where the next
//! block starts in the compressed stream (with the bits of the byte before it that belong to it)
//! and the 32 KiB of output a match may refer back to. Inflating from a checkpoint needs nothing
//! before it. Multi-member gzip (as `pigz` and some registries write) is followed member by
//! member; each member's CRC-32 and size are checked while the index is built.
//!
//! Inflate is miniz_oxide's (pure Rust), with its block-boundary interface.

use std::ops::Range;

use miniz_oxide::inflate::TINFLStatus;
use miniz_oxide::inflate::core::inflate_flags::{
    TINFL_FLAG_HAS_MORE_INPUT, TINFL_FLAG_STOP_ON_BLOCK_BOUNDARY,
};
use miniz_oxide::inflate::core::{BlockBoundaryState, DecompressorOxide, decompress};

mod files;
mod format;
mod layer;

pub use files::{FileEntry, FileKind, index_layer};
pub use layer::{LAYER_INDEX_MAGIC, LayerIndex};

/// Output between checkpoints (as SOCI's default span).
pub const DEFAULT_SPAN: u64 = 4 << 20;
/// How far back a deflate match reaches.
const WINDOW: usize = 32 << 10;
/// The largest gzip member header accepted (file name and comment included).
const MAX_HEADER: usize = 64 << 10;

/// What is wrong with a gzip stream, or with the bytes given to read from it.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
#[error("gzip: {0}")]
pub struct GzError(String);

fn bad<T>(why: impl Into<String>) -> Result<T, GzError> {
    Err(GzError(why.into()))
}

/// A place inflating can start from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    /// Offset in the gzip stream of the first byte to read from here.
    pub compressed: u64,
    /// How many bits of the byte before `compressed` belong to the next block (0–7), and
    /// those bits (in the low bits).
    pub bits: u8,
    pub bit_buf: u8,
    /// Offset in the uncompressed stream.
    pub uncompressed: u64,
    /// The output a match may refer back to (up to 32 KiB; empty at a member's start).
    pub window: Vec<u8>,
}

/// The checkpoints of one gzip stream, and its sizes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Index {
    /// In stream order; the first is at the start of the first member's data.
    pub checkpoints: Vec<Checkpoint>,
    pub compressed_size: u64,
    pub uncompressed_size: u64,
}

impl Index {
    /// What to fetch to read `range` of the uncompressed stream: the checkpoint to inflate from
    /// (its position in `checkpoints`) and the compressed bytes from it to past the range's end.
    pub fn span(&self, range: Range<u64>) -> Option<(usize, Range<u64>)> {
        if range.start >= range.end || range.end > self.uncompressed_size {
            return None;
        }
        let from = self
            .checkpoints
            .partition_point(|c| c.uncompressed <= range.start)
            .checked_sub(1)?;
        let end = self
            .checkpoints
            .iter()
            .find(|c| c.uncompressed >= range.end)
            .map_or(self.compressed_size, |c| {
                (c.compressed + 1).min(self.compressed_size)
            });
        Some((from, self.checkpoints[from].compressed..end))
    }
}

/// Builds the [`Index`] of a gzip stream fed in pieces of any size, passing the uncompressed
/// bytes on as they come.
pub struct IndexBuilder {
    inflater: Inflater,
    span: u64,
    checkpoints: Vec<Checkpoint>,
}

impl IndexBuilder {
    /// A checkpoint at a block boundary at least `span` bytes of output after the last one.
    pub fn new(span: u64) -> IndexBuilder {
        IndexBuilder {
            inflater: Inflater::at_start(),
            span: span.max(1),
            checkpoints: Vec::new(),
        }
    }

    /// The next compressed bytes; `out` gets the uncompressed ones.
    pub fn write(&mut self, input: &[u8], out: &mut dyn FnMut(&[u8])) -> Result<(), GzError> {
        let (span, checkpoints) = (self.span, &mut self.checkpoints);
        self.inflater.feed(input, out, &mut |at: &Inflater, state| {
            let last = checkpoints.last().map(|c| c.uncompressed);
            if last.is_none_or(|l| at.out - l >= span) {
                checkpoints.push(at.checkpoint(state));
            }
        })
    }

    /// The index, once the stream has ended where a gzip stream may end.
    pub fn finish(self) -> Result<Index, GzError> {
        if !matches!(self.inflater.stage, Stage::Header(ref b) if b.is_empty())
            || self.inflater.members == 0
        {
            return bad(format!(
                "the stream ends inside a member (at byte {})",
                self.inflater.in_at
            ));
        }
        Ok(Index {
            checkpoints: self.checkpoints,
            compressed_size: self.inflater.in_at,
            uncompressed_size: self.inflater.out,
        })
    }
}

/// Reads `len` uncompressed bytes at `offset` from `data`, the compressed bytes that start at
/// `from` (the span [`Index::span`] names).
pub fn read_at(
    from: &Checkpoint,
    data: &[u8],
    offset: u64,
    len: usize,
) -> Result<Vec<u8>, GzError> {
    let Some(skip) = offset.checked_sub(from.uncompressed) else {
        return bad("the range starts before the checkpoint");
    };
    let mut inflater = Inflater::resume(from);
    let mut got = Vec::with_capacity(len);
    let mut at = from.uncompressed;
    let end = offset.saturating_add(len as u64);
    inflater.feed(
        data,
        &mut |chunk| {
            let (start, stop) = (at.max(offset), (at + chunk.len() as u64).min(end));
            if start < stop {
                got.extend_from_slice(&chunk[(start - at) as usize..(stop - at) as usize]);
            }
            at += chunk.len() as u64;
        },
        &mut |_, _| {},
    )?;
    if got.len() < len {
        return bad(format!(
            "the span ends {} bytes short of the range (from {skip} past the checkpoint)",
            len - got.len()
        ));
    }
    Ok(got)
}

/// Where a member-by-member walk of the stream is.
enum Stage {
    /// A member header (its bytes so far), or the stream's end.
    Header(Vec<u8>),
    Deflate,
    /// The member's CRC-32 and size (the bytes so far).
    Trailer(Vec<u8>),
}

/// Inflates a gzip stream fed in pieces, from its start or from a checkpoint.
struct Inflater {
    stage: Stage,
    decoder: Box<DecompressorOxide>,
    /// The last 32 KiB of output, written around.
    ring: Vec<u8>,
    pos: usize,
    /// Output of this member held in `ring` (up to 32 KiB).
    held: usize,
    /// Bytes read, and written.
    in_at: u64,
    out: u64,
    /// The member's CRC-32 and size, when it was read from its start.
    crc: Option<(crc32fast::Hasher, u32)>,
    members: u64,
}

impl Inflater {
    fn at_start() -> Inflater {
        Inflater {
            stage: Stage::Header(Vec::new()),
            decoder: Box::default(),
            ring: vec![0; WINDOW],
            pos: 0,
            held: 0,
            in_at: 0,
            out: 0,
            crc: None,
            members: 0,
        }
    }

    fn resume(from: &Checkpoint) -> Inflater {
        let mut i = Inflater::at_start();
        let w = from.window.len().min(WINDOW);
        // The window ends just before position 0 of the ring.
        i.ring[WINDOW - w..].copy_from_slice(&from.window[from.window.len() - w..]);
        i.held = w;
        i.decoder = Box::new(DecompressorOxide::from_block_boundary_state(
            &BlockBoundaryState {
                num_bits: from.bits.min(7),
                bit_buf: from.bit_buf,
                ..Default::default()
            },
        ));
        i.stage = Stage::Deflate;
        i.in_at = from.compressed;
        i.out = from.uncompressed;
        i.members = 1;
        i
    }

    /// A checkpoint here (at a block boundary: `state` from the decoder).
    fn checkpoint(&self, state: (u8, u8)) -> Checkpoint {
        let mut window = Vec::with_capacity(self.held);
        let start = (self.pos + WINDOW - self.held) % WINDOW;
        if start < self.pos {
            window.extend_from_slice(&self.ring[start..self.pos]);
        } else if self.held > 0 {
            window.extend_from_slice(&self.ring[start..]);
            window.extend_from_slice(&self.ring[..self.pos]);
        }
        Checkpoint {
            compressed: self.in_at,
            bits: state.0,
            bit_buf: state.1,
            uncompressed: self.out,
            window,
        }
    }

    fn feed(
        &mut self,
        mut input: &[u8],
        out: &mut dyn FnMut(&[u8]),
        boundary: &mut dyn FnMut(&Inflater, (u8, u8)),
    ) -> Result<(), GzError> {
        while !input.is_empty() {
            match &mut self.stage {
                Stage::Header(got) => {
                    // `got` holds at most MAX_HEADER bytes here.
                    let take = input.len().min(MAX_HEADER + 1 - got.len());
                    let before = got.len();
                    got.extend_from_slice(&input[..take]);
                    let Some(len) = header_len(got)? else {
                        if got.len() > MAX_HEADER {
                            return bad("a member header longer than 64 KiB");
                        }
                        self.in_at += take as u64;
                        input = &input[take..];
                        continue;
                    };
                    let used = len - before;
                    self.in_at += used as u64;
                    input = &input[used..];
                    self.stage = Stage::Deflate;
                    *self.decoder = DecompressorOxide::default();
                    self.held = 0;
                    self.crc = Some((crc32fast::Hasher::new(), 0));
                    self.members += 1;
                    boundary(self, (0, 0));
                }
                Stage::Deflate => input = self.inflate(input, out, boundary)?,
                Stage::Trailer(got) => {
                    let take = input.len().min(8 - got.len());
                    got.extend_from_slice(&input[..take]);
                    self.in_at += take as u64;
                    input = &input[take..];
                    if got.len() == 8 {
                        let crc = u32::from_le_bytes([got[0], got[1], got[2], got[3]]);
                        let size = u32::from_le_bytes([got[4], got[5], got[6], got[7]]);
                        if let Some((hasher, made)) = self.crc.take()
                            && (hasher.finalize(), made) != (crc, size)
                        {
                            return bad(format!(
                                "member {} fails its CRC-32 or size check",
                                self.members
                            ));
                        }
                        self.stage = Stage::Header(Vec::new());
                    }
                }
            }
        }
        Ok(())
    }

    /// Inflates from `input` until it is used up or the member ends; what is left.
    fn inflate<'a>(
        &mut self,
        mut input: &'a [u8],
        out: &mut dyn FnMut(&[u8]),
        boundary: &mut dyn FnMut(&Inflater, (u8, u8)),
    ) -> Result<&'a [u8], GzError> {
        let flags = TINFL_FLAG_HAS_MORE_INPUT | TINFL_FLAG_STOP_ON_BLOCK_BOUNDARY;
        loop {
            let (status, used, made) =
                decompress(&mut self.decoder, input, &mut self.ring, self.pos, flags);
            input = &input[used..];
            self.in_at += used as u64;
            if made > 0 {
                let chunk = &self.ring[self.pos..self.pos + made];
                if let Some((hasher, size)) = &mut self.crc {
                    hasher.update(chunk);
                    *size = size.wrapping_add(made as u32);
                }
                out(chunk);
                self.pos = (self.pos + made) % WINDOW;
                self.held = (self.held + made).min(WINDOW);
                self.out += made as u64;
            }
            match status {
                TINFLStatus::NeedsMoreInput if input.is_empty() => return Ok(input),
                TINFLStatus::HasMoreOutput | TINFLStatus::NeedsMoreInput
                    if used > 0 || made > 0 => {}
                TINFLStatus::BlockBoundary => {
                    let state = self.decoder.block_boundary_state().unwrap_or_default();
                    boundary(self, (state.num_bits, state.bit_buf));
                }
                TINFLStatus::Done => {
                    self.stage = Stage::Trailer(Vec::new());
                    return Ok(input);
                }
                status => {
                    return bad(format!(
                        "bad deflate data near byte {} ({status:?})",
                        self.in_at
                    ));
                }
            }
        }
    }
}

/// The length of the gzip member header at the start of `b`; `None` until it is all there.
fn header_len(b: &[u8]) -> Result<Option<usize>, GzError> {
    const FHCRC: u8 = 2;
    const FEXTRA: u8 = 4;
    const FNAME: u8 = 8;
    const FCOMMENT: u8 = 16;
    if b.len() >= 2 && b[..2] != [0x1f, 0x8b] {
        return bad("not a gzip member (no 1f 8b)");
    }
    if b.len() >= 3 && b[2] != 8 {
        return bad(format!("compression method {} (only deflate)", b[2]));
    }
    if b.len() < 10 {
        return Ok(None);
    }
    let flags = b[3];
    if flags & 0xe0 != 0 {
        return bad("reserved header flags set");
    }
    let mut at = 10;
    if flags & FEXTRA != 0 {
        let Some(len) = b.get(at..at + 2) else {
            return Ok(None);
        };
        at += 2 + usize::from(u16::from_le_bytes([len[0], len[1]]));
    }
    for field in [FNAME, FCOMMENT] {
        if flags & field != 0 {
            let Some(nul) = b.get(at..).and_then(|r| r.iter().position(|&c| c == 0)) else {
                return Ok(None);
            };
            at += nul + 1;
        }
    }
    if flags & FHCRC != 0 {
        at += 2;
    }
    Ok((b.len() >= at).then_some(at))
}

#[cfg(test)]
mod tests;
