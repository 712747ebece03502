//! Manifests the mirror served, kept for when their registry is down (`<data_dir>/manifests`).
//!
//! A manifest is kept by its digest (its SHA-256, checked: content-addressed, it never changes)
//! with its media type and the repositories that served it with no credentials (where it is
//! public). For registries matching `proxy.tags_when_down`, the last digest each tag named is
//! kept too, so that a pull by tag works while the registry is down (the tag may have moved
//! meanwhile: that is the opt-in). Who may read what while the registry cannot be asked is
//! decided in `proxy`: public content, or what the registry granted that credential lately.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sha2::Digest as _;
use shoal_p2p::{Algorithm, Digest};

/// The largest manifest kept (the distribution spec has registries accept at least 4 MiB).
pub(crate) const MAX_MANIFEST: usize = 4 << 20;

/// The kept manifests of one node.
pub(crate) struct Manifests {
    dir: PathBuf,
    /// Manifests (and tags) kept at most; past that the least recently written go.
    max: usize,
}

/// Manifests, and tags, kept at most by default (a few KiB each).
const MAX_KEPT: usize = 20_000;

/// A kept manifest.
pub(crate) struct Kept {
    pub body: Bytes,
    pub media_type: String,
    /// Served with no credentials by this repository.
    pub public: bool,
}

#[derive(Default, Serialize, Deserialize)]
struct Record {
    media_type: String,
    /// Keys of the repositories (upstream and name) that served it with no credentials.
    public: Vec<String>,
}

#[derive(Serialize, Deserialize)]
struct TagRecord {
    digest: String,
    public: bool,
}

/// A repository's key: its upstream and name, hashed (no names in file names).
fn key(upstream: &str, name: &str, tag: Option<&str>) -> String {
    let mut h = sha2::Sha256::new();
    h.update(upstream.as_bytes());
    h.update([0]);
    h.update(name.as_bytes());
    if let Some(tag) = tag {
        h.update([0]);
        h.update(tag.as_bytes());
    }
    hex::encode(h.finalize())
}

impl Manifests {
    pub fn new(data_dir: &Path) -> Manifests {
        Manifests {
            dir: data_dir.join("manifests"),
            max: MAX_KEPT,
        }
    }

    /// Removes the least recently written files of `dir` past `self.max` (down to 90 % of it).
    fn prune(&self, dir: &Path) -> std::io::Result<()> {
        let mut files: Vec<(std::time::SystemTime, PathBuf)> = std::fs::read_dir(dir)?
            .filter_map(|e| {
                let e = e.ok()?;
                let path = e.path();
                let hidden = e.file_name().to_string_lossy().starts_with('.');
                if hidden || path.extension().is_some() {
                    return None;
                }
                Some((e.metadata().ok()?.modified().ok()?, path))
            })
            .collect();
        if files.len() <= self.max {
            return Ok(());
        }
        files.sort();
        let excess = files.len() - self.max * 9 / 10;
        for (_, path) in files.into_iter().take(excess) {
            let _ = std::fs::remove_file(path.with_extension("json"));
            std::fs::remove_file(&path)?;
        }
        Ok(())
    }

    fn body_path(&self, digest: &Digest) -> PathBuf {
        self.dir.join("sha256").join(digest.hex())
    }

    fn tag_path(&self, upstream: &str, name: &str, tag: &str) -> PathBuf {
        self.dir.join("tags").join(key(upstream, name, Some(tag)))
    }

    /// Keeps `body`, which `upstream` served for `name` (with no credentials: `public`). A body
    /// that is not the digest's is not kept.
    pub fn keep(
        &self,
        upstream: &str,
        name: &str,
        digest: &Digest,
        body: &[u8],
        media_type: &str,
        public: bool,
    ) -> std::io::Result<()> {
        if Digest::of(Algorithm::Sha256, body) != *digest {
            return Ok(());
        }
        let path = self.body_path(digest);
        let meta_path = path.with_extension("json");
        let mut record: Record = std::fs::read(&meta_path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        let repo = key(upstream, name, None);
        let changed = record.media_type != media_type
            || (public && !record.public.contains(&repo))
            || !path.exists();
        if !changed {
            return Ok(());
        }
        record.media_type = media_type.to_owned();
        if public && !record.public.contains(&repo) {
            record.public.push(repo);
        }
        let new = !path.exists();
        write_atomic(&path, body)?;
        write_atomic(
            &meta_path,
            &serde_json::to_vec(&record).map_err(std::io::Error::other)?,
        )?;
        if new {
            self.prune(path.parent().expect("in a directory"))?;
        }
        Ok(())
    }

    /// Remembers that `tag` of `name` at `upstream` named `digest`.
    pub fn keep_tag(
        &self,
        upstream: &str,
        name: &str,
        tag: &str,
        digest: &Digest,
        public: bool,
    ) -> std::io::Result<()> {
        let record = TagRecord {
            digest: digest.to_string(),
            public,
        };
        let bytes = serde_json::to_vec(&record).map_err(std::io::Error::other)?;
        let path = self.tag_path(upstream, name, tag);
        let new = !path.exists();
        write_atomic(&path, &bytes)?;
        if new {
            self.prune(path.parent().expect("in a directory"))?;
        }
        Ok(())
    }

    /// The digest `tag` last named, and whether it was public.
    pub fn tag(&self, upstream: &str, name: &str, tag: &str) -> Option<(Digest, bool)> {
        let bytes = std::fs::read(self.tag_path(upstream, name, tag)).ok()?;
        let record: TagRecord = serde_json::from_slice(&bytes).ok()?;
        Some((record.digest.parse().ok()?, record.public))
    }

    /// The kept manifest `digest`, as `name` at `upstream` has it (checked again: a file
    /// changed on disk is not served).
    pub fn get(&self, upstream: &str, name: &str, digest: &Digest) -> Option<Kept> {
        let path = self.body_path(digest);
        let body = std::fs::read(&path).ok()?;
        if body.len() > MAX_MANIFEST || Digest::of(Algorithm::Sha256, &body) != *digest {
            return None;
        }
        let record: Record =
            serde_json::from_slice(&std::fs::read(path.with_extension("json")).ok()?).ok()?;
        Some(Kept {
            body: Bytes::from(body),
            public: record.public.contains(&key(upstream, name, None)),
            media_type: record.media_type,
        })
    }
}

/// Writes `bytes` to `path` whole or not at all.
fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().expect("kept files are in a directory");
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("kept")
    ));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn past_the_bound_the_oldest_go() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = Manifests::new(dir.path());
        m.max = 10;
        let digests: Vec<Digest> = (0..12u8)
            .map(|i| {
                let body = [i; 8];
                let d = Digest::of(Algorithm::Sha256, &body);
                m.keep("https://r", "a", &d, &body, "t", true).unwrap();
                m.keep_tag("https://r", "a", &format!("v{i}"), &d, true)
                    .unwrap();
                // Modification times apart.
                std::thread::sleep(std::time::Duration::from_millis(5));
                d
            })
            .collect();
        let kept = digests
            .iter()
            .filter(|d| m.get("https://r", "a", d).is_some())
            .count();
        assert!((9..=10).contains(&kept), "{kept} kept");
        assert!(
            m.get("https://r", "a", &digests[0]).is_none(),
            "the oldest stayed"
        );
        assert!(
            m.get("https://r", "a", &digests[11]).is_some(),
            "the newest went"
        );
        assert!(m.tag("https://r", "a", "v0").is_none());
        assert!(m.tag("https://r", "a", "v11").is_some());
    }

    #[test]
    fn kept_by_digest_checked_and_public_only_where_it_was() {
        let dir = tempfile::tempdir().unwrap();
        let m = Manifests::new(dir.path());
        let body = br#"{"schemaVersion":2}"#;
        let digest = Digest::of(Algorithm::Sha256, body);
        let media = "application/vnd.oci.image.manifest.v1+json";
        m.keep("https://r", "team/app", &digest, body, media, true)
            .unwrap();
        let kept = m.get("https://r", "team/app", &digest).unwrap();
        assert_eq!(&kept.body[..], body);
        assert_eq!(kept.media_type, media);
        assert!(kept.public);
        assert!(!m.get("https://r", "team/other", &digest).unwrap().public);
        // A body that is not its digest is not kept; one changed on disk is not served.
        let other = Digest::of(Algorithm::Sha256, b"other");
        m.keep("https://r", "team/app", &other, body, media, true)
            .unwrap();
        assert!(m.get("https://r", "team/app", &other).is_none());
        std::fs::write(m.body_path(&digest), b"tampered").unwrap();
        assert!(m.get("https://r", "team/app", &digest).is_none());
        // Tags.
        assert!(m.tag("https://r", "team/app", "v1").is_none());
        m.keep_tag("https://r", "team/app", "v1", &digest, false)
            .unwrap();
        assert_eq!(m.tag("https://r", "team/app", "v1"), Some((digest, false)));
        assert!(m.tag("https://s", "team/app", "v1").is_none());
    }
}
