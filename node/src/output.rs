//! Putting a task's content at the path a user asked for.

use std::fs;
use std::io;
use std::path::Path;

use shoal_p2p::{Error, Result};

/// Makes `dst` hold the content of `src` (a complete task file): a hard link when both are on one
/// file system, a copy otherwise. `dst` appears whole or not at all (written beside it, then
/// renamed), and an existing `dst` is replaced.
pub fn link_or_copy(src: &Path, dst: &Path) -> Result<()> {
    let name = dst.file_name().ok_or_else(|| {
        Error::InvalidRequest(format!("output {} is not a file path", dst.display()))
    })?;
    let tmp = dst.with_file_name(format!(
        ".{}.shoal-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let _ = fs::remove_file(&tmp);
    let placed = match fs::hard_link(src, &tmp) {
        Ok(()) => Ok(()),
        // EXDEV (another file system), EPERM (protected_hardlinks, or no link support): copy.
        Err(_) => fs::copy(src, &tmp).map(|_| ()),
    };
    placed.and_then(|()| fs::rename(&tmp, dst)).map_err(|e| {
        let _ = fs::remove_file(&tmp);
        Error::io("write output", dst, e)
    })
}

/// Copies a complete task file to `out` (standard output, for `-O -`).
pub fn copy_to(src: &Path, out: &mut impl io::Write) -> Result<u64> {
    let mut f = fs::File::open(src).map_err(|e| Error::io("open task file", src, e))?;
    io::copy(&mut f, out).map_err(|e| Error::io("copy task file from", src, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_existing_output_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        fs::write(&src, b"new").unwrap();
        let dst = dir.path().join("out");
        fs::write(&dst, b"old").unwrap();
        link_or_copy(&src, &dst).unwrap();
        assert_eq!(fs::read(&dst).unwrap(), b"new");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 2);
    }

    #[test]
    fn missing_directory_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        fs::write(&src, b"x").unwrap();
        let err = link_or_copy(&src, &dir.path().join("no/such/out")).unwrap_err();
        assert!(err.to_string().contains("write output"), "{err}");
    }
}
