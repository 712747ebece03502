//! Reading task files: a range in blocks, and a whole file's hash.

use std::fs::File;
use std::io::{self, Read};

use crate::digest::Digest;

/// Reads `range` of `file` in blocks of `block` bytes, handing each to `send` until it returns
/// false or a read fails (the error is handed on too). Moves the file's cursor: give each
/// reader its own handle. Blocking: call it off the async threads.
pub fn read_blocks(
    mut file: &File,
    range: std::ops::Range<u64>,
    block: usize,
    mut send: impl FnMut(io::Result<bytes::Bytes>) -> bool,
) {
    use std::io::Seek;
    if let Err(e) = file.seek(io::SeekFrom::Start(range.start)) {
        send(Err(e));
        return;
    }
    let mut pos = range.start;
    while pos < range.end {
        let len = block.min((range.end - pos) as usize);
        // read_to_end fills spare capacity without zeroing it first.
        let mut buf = Vec::with_capacity(len);
        let read = match file.take(len as u64).read_to_end(&mut buf) {
            Ok(n) if n == len => Ok(bytes::Bytes::from(buf)),
            Ok(n) => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("task file ended {n} bytes into a {len} byte block at {pos}"),
            )),
            Err(e) => Err(e),
        };
        let failed = read.is_err();
        if !send(read) || failed {
            return;
        }
        pos += len as u64;
    }
}

/// Hashes a whole file with `algorithm`, reading it in 1 MiB blocks.
pub fn hash_file(file: &mut File, algorithm: crate::digest::Algorithm) -> io::Result<Digest> {
    let mut h = algorithm.hasher();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok(h.finish());
        }
        h.update(&buf[..n]);
    }
}
