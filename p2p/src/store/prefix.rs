//! The whole content's digest, computed while the download runs.
//!
//! A content digest (`sha256:` for an OCI blob) must be computed in order, but pieces arrive in
//! any order. The stored prefix of the task file (every piece from the first up to the first
//! missing one) is hashed as it grows, read back from the page cache on a blocking thread, so a
//! finished download has only its last pieces left to hash instead of the whole content. In the
//! lab, hashing 256 MiB after the last piece took 0.45–0.9 s per host (8 hosts hashing at once on
//! 2 cores).

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::digest::{Algorithm, Digest, Hasher};

/// Hashes a task file's stored prefix in the background.
pub(crate) struct PrefixHash {
    stored: watch::Sender<u64>,
    task: JoinHandle<io::Result<(Hasher, u64)>>,
}

/// Bytes read and hashed at a time.
const BLOCK: usize = 1 << 20;

impl PrefixHash {
    /// Starts hashing `file` (the task file, read-only) with `algorithm`.
    pub(crate) fn start(file: File, algorithm: Algorithm) -> Self {
        let (stored, mut rx) = watch::channel(0u64);
        let task = tokio::spawn(async move {
            let mut state = (file, algorithm.hasher(), vec![0u8; BLOCK], 0u64);
            loop {
                let upto = *rx.borrow_and_update();
                if upto > state.3 {
                    state = tokio::task::spawn_blocking(move || {
                        let (file, mut hasher, mut buf, at) = state;
                        hash_range(&file, &mut hasher, &mut buf, at, upto)?;
                        Ok::<_, io::Error>((file, hasher, buf, upto))
                    })
                    .await
                    .expect("hashing does not panic")?;
                    continue;
                }
                if rx.changed().await.is_err() {
                    return Ok((state.1, state.3));
                }
            }
        });
        PrefixHash { stored, task }
    }

    /// A handle to report the stored prefix's length with (see [`PrefixHash::advance`]).
    pub(crate) fn reporter(&self) -> watch::Sender<u64> {
        self.stored.clone()
    }

    /// The first `len` bytes of the file are stored and will not change.
    pub(crate) fn advance(reporter: &watch::Sender<u64>, len: u64) {
        reporter.send_if_modified(|v| {
            let grew = len > *v;
            if grew {
                *v = len;
            }
            grew
        });
    }

    /// Hashes the rest, up to `len` (the content length, all stored), and returns the digest.
    /// Every reporter must be dropped first.
    pub(crate) async fn finish(self, len: u64) -> io::Result<Digest> {
        Self::advance(&self.stored, len);
        drop(self.stored);
        let (hasher, at) = self.task.await.expect("prefix hashing does not panic")?;
        if at != len {
            return Err(io::Error::other(format!(
                "hashed {at} of {len} bytes: a reporter outlived the download"
            )));
        }
        Ok(hasher.finish())
    }
}

/// Feeds bytes `from..to` of `file` to `hasher`.
fn hash_range(
    file: &File,
    hasher: &mut Hasher,
    buf: &mut [u8],
    from: u64,
    to: u64,
) -> io::Result<()> {
    let mut at = from;
    while at < to {
        let n = usize::try_from(to - at)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        file.read_exact_at(&mut buf[..n], at)?;
        hasher.update(&buf[..n]);
        at += n as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[tokio::test]
    async fn prefix_reported_in_steps_hashes_like_the_whole_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let data: Vec<u8> = (0..(3 * BLOCK + 12345))
            .map(|i| (i * 7 % 251) as u8)
            .collect();
        File::create(&path).unwrap().write_all(&data).unwrap();
        let mut h = Algorithm::Sha256.hasher();
        h.update(&data);
        let whole = h.finish();

        let h = PrefixHash::start(File::open(&path).unwrap(), Algorithm::Sha256);
        let r = h.reporter();
        for len in [5, 5, BLOCK as u64 + 1, 3, 2 * BLOCK as u64] {
            PrefixHash::advance(&r, len);
            tokio::task::yield_now().await;
        }
        drop(r);
        assert_eq!(h.finish(data.len() as u64).await.unwrap(), whole);
    }

    #[tokio::test]
    async fn a_short_file_is_an_error_not_a_digest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"short").unwrap();
        let h = PrefixHash::start(File::open(&path).unwrap(), Algorithm::Sha256);
        assert!(h.finish(100).await.is_err());
    }
}
