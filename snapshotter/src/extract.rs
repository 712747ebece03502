//! A layer's tar stream unpacked into a snapshot's directory as an overlayfs upper layer:
//! decompressed on the way (gzip, zstd, or none, told by the first bytes), OCI whiteouts turned
//! into overlayfs ones (`.wh.NAME` → a 0/0 character device `NAME`; `.wh..wh..opq` → the
//! directory's `trusted.overlay.opaque` = `y`), owners, modes, times and xattrs kept, hard links
//! and symlinks made. Nothing lands outside the directory: `tar`'s `unpack_in` refuses `..` and
//! paths through symlinks, and whiteouts are checked the same way. Device nodes are refused (the
//! layer then takes containerd's own path, which makes them).

use std::io::{BufRead, BufReader, Read};

use sha2::Digest as _;
use std::path::{Component, Path, PathBuf};

use crate::error::{Error, Result};

const WHITEOUT: &str = ".wh.";
const OPAQUE: &str = ".wh..wh..opq";

/// What was unpacked.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Unpacked {
    pub entries: u64,
    pub whiteouts: u64,
    /// The digest of the uncompressed tar (every byte of it, padding included): the layer's
    /// diff id, which its chain id is made of.
    pub diff_id: String,
}

/// Unpacks the (possibly compressed) layer `input` into `dir`, which must exist. Reads `input`
/// to its end, past the tar's end marker.
pub fn unpack(input: impl Read, dir: &Path) -> Result<Unpacked> {
    let mut input = BufReader::with_capacity(1 << 20, input);
    let magic = input
        .fill_buf()
        .map_err(|e| Error::io("read layer", dir, e))?;
    let tar: Box<dyn Read> = if magic.starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::bufread::MultiGzDecoder::new(input))
    } else if magic.starts_with(&ZSTD_MAGIC) {
        Box::new(ZstdFrames {
            input: Some(input),
            frame: None,
        })
    } else {
        Box::new(input)
    };
    let mut tar = guard::Guard::new(Hashing {
        inner: tar,
        hash: sha2::Sha256::new(),
    });
    let mut out = unpack_tar(&mut tar, dir)?;
    // The rest (the tar's end padding, a zstd:chunked trailer) counts in the digests too.
    let mut rest = tar.into_inner();
    std::io::copy(&mut rest, &mut std::io::sink()).map_err(|e| Error::io("read layer", dir, e))?;
    out.diff_id = format!("sha256:{}", hex::encode(rest.hash.finalize()));
    Ok(out)
}

const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// Every zstd frame of `input`, one after the other (a layer may hold several).
struct ZstdFrames<R: BufRead> {
    input: Option<R>,
    frame: Option<ruzstd::decoding::StreamingDecoder<R, ruzstd::decoding::FrameDecoder>>,
}

impl<R: BufRead> Read for ZstdFrames<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            if let Some(frame) = &mut self.frame {
                let n = frame.read(buf)?;
                if n > 0 || buf.is_empty() {
                    return Ok(n);
                }
                self.input = self.frame.take().map(|f| f.into_inner());
            }
            let Some(mut input) = self.input.take() else {
                return Ok(0);
            };
            if input.fill_buf()?.is_empty() {
                return Ok(0);
            }
            let frame = ruzstd::decoding::StreamingDecoder::new(input)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()))?;
            self.frame = Some(frame);
        }
    }
}

/// A reader that hashes what passes through it.
struct Hashing<R> {
    inner: R,
    hash: sha2::Sha256,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        sha2::Digest::update(&mut self.hash, &buf[..n]);
        Ok(n)
    }
}

fn unpack_tar(tar: impl Read, dir: &Path) -> Result<Unpacked> {
    let layer_error = |e: std::io::Error| Error::io("unpack layer into", dir, e);
    let mut archive = tar::Archive::new(tar);
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(true);
    archive.set_preserve_mtime(true);
    archive.set_unpack_xattrs(true);
    archive.set_overwrite(true);
    let mut out = Unpacked::default();
    for entry in archive.entries().map_err(layer_error)? {
        let mut entry = entry.map_err(layer_error)?;
        out.entries += 1;
        let path = entry.path().map_err(layer_error)?.into_owned();
        let kind = entry.header().entry_type();
        if kind.is_character_special() || kind.is_block_special() {
            return Err(Error::InvalidArgument(format!(
                "layer holds the device node {}: left to containerd",
                path.display()
            )));
        }
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name == OPAQUE {
            let parent = inside(dir, path.parent().unwrap_or(Path::new("")))?;
            std::fs::create_dir_all(&parent).map_err(|e| Error::io("create", &parent, e))?;
            xattr::set(&parent, "trusted.overlay.opaque", b"y")
                .map_err(|e| Error::io("mark opaque", &parent, e))?;
            out.whiteouts += 1;
        } else if let Some(hidden) = name.strip_prefix(WHITEOUT) {
            if hidden.is_empty() || hidden == "." || hidden == ".." || hidden.starts_with(".wh.") {
                return Err(Error::InvalidArgument(format!(
                    "layer holds a whiteout of no file: {}",
                    path.display()
                )));
            }
            let parent_rel = path.parent().unwrap_or(Path::new(""));
            let parent = inside(dir, parent_rel)?;
            std::fs::create_dir_all(&parent).map_err(|e| Error::io("create", &parent, e))?;
            let target = inside(dir, &parent_rel.join(hidden))?;
            whiteout(&target)?;
            out.whiteouts += 1;
        } else if kind.is_fifo() {
            // `tar` would write a regular file.
            let at = inside(dir, &path)?;
            fifo(&at, entry.header())?;
        } else if !entry.unpack_in(dir).map_err(layer_error)? {
            return Err(Error::InvalidArgument(format!(
                "layer entry {} points outside the snapshot",
                path.display()
            )));
        }
    }
    Ok(out)
}

/// `rel` under `dir`, refused if it climbs out (`..`, an absolute path) or passes through a
/// symlink.
fn inside(dir: &Path, rel: &Path) -> Result<PathBuf> {
    let mut at = dir.to_owned();
    for part in rel.components() {
        match part {
            Component::Normal(p) => {
                if at
                    .symlink_metadata()
                    .is_ok_and(|m| m.file_type().is_symlink())
                {
                    return Err(escape(rel));
                }
                at.push(p);
            }
            Component::CurDir => {}
            _ => return Err(escape(rel)),
        }
    }
    if at != dir
        && let Some(parent) = at.parent()
        && parent
            .symlink_metadata()
            .is_ok_and(|m| m.file_type().is_symlink())
    {
        return Err(escape(rel));
    }
    Ok(at)
}

fn escape(rel: &Path) -> Error {
    Error::InvalidArgument(format!(
        "layer entry {} points outside the snapshot",
        rel.display()
    ))
}

/// A named pipe at `path`, with the entry's mode and owners.
fn fifo(path: &Path, header: &tar::Header) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let fail = |e: std::io::Error| Error::io("make named pipe", path, e);
    if path.symlink_metadata().is_ok() {
        std::fs::remove_file(path).map_err(fail)?;
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(fail)?;
    }
    let mode = header.mode().map_err(fail)? & 0o7777;
    nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(0o600))
        .map_err(|e| fail(e.into()))?;
    let owner = |id: std::io::Result<u64>| id.ok().and_then(|id| u32::try_from(id).ok());
    std::os::unix::fs::lchown(path, owner(header.uid()), owner(header.gid())).map_err(fail)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(fail)
}

/// An overlayfs whiteout at `path`: a character device 0/0 (replacing what was there).
fn whiteout(path: &Path) -> Result<()> {
    use nix::sys::stat::{Mode, SFlag, makedev, mknod};
    if let Ok(meta) = path.symlink_metadata() {
        let removed = if meta.is_dir() {
            std::fs::remove_dir_all(path)
        } else {
            std::fs::remove_file(path)
        };
        removed.map_err(|e| Error::io("replace with a whiteout", path, e))?;
    }
    mknod(path, SFlag::S_IFCHR, Mode::empty(), makedev(0, 0))
        .map_err(|e| Error::io("make whiteout", path, e.into()))
}

mod guard;

#[cfg(test)]
mod tests;
