//! Manifest requests, and the manifests the mirror served, kept for when their registry is down
//! (`<data_dir>/manifests`).
//!
//! A manifest is kept by its digest (its SHA-256, checked: content-addressed, it never changes)
//! with its media type and the repositories that served it with no credentials (where it is
//! public). For registries matching `proxy.tags_when_down`, the last digest each tag named is
//! kept too, so that a pull by tag works while the registry is down (the tag may have moved
//! meanwhile: that is the opt-in). Who may read what while the registry cannot be asked is
//! decided in `proxy`: public content, or what the registry granted that credential lately.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use http::header;
use http::request::Parts;
use http::{Method, Response, StatusCode};
use serde::{Deserialize, Serialize};
use sha2::Digest as _;
use shoal_p2p::origin::upstream_of;
use shoal_p2p::{Algorithm, Digest};
use url::Url;

use crate::access::Probe;
use crate::error::{Body, Error, full};
use crate::proxy::{Ctx, origin_headers, relay, strip_hop_by_hop, upstream_headers};
use crate::route::Reference;

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

/// A manifest from the registry, kept (by its digest; by tag where `proxy.tags_when_down`
/// says) for when the registry is down; while it is (unreachable, or 502/503/504), from what
/// was kept, to clients allowed it (see [`kept_manifest`]).
pub(crate) async fn manifest(
    ctx: &Ctx,
    url: Url,
    name: &str,
    reference: &Reference,
    parts: &Parts,
) -> Response<Body> {
    let sent = ctx
        .client
        .request(parts.method.clone(), url.clone())
        .headers(upstream_headers(&parts.headers))
        .send()
        .await;
    let resp = match sent {
        Ok(resp) if !registry_down(resp.status()) => resp,
        Ok(resp) => {
            return kept_manifest(ctx, &url, name, reference, parts).unwrap_or_else(|| relay(resp));
        }
        Err(e) => {
            return kept_manifest(ctx, &url, name, reference, parts)
                .unwrap_or_else(|| Error::unreachable(&url, e).into_response());
        }
    };
    if !resp.status().is_success() {
        return relay(resp);
    }
    let credentials = origin_headers(&parts.headers);
    ctx.access.remember(&url, &credentials, Probe::FirstByte);
    let public = !credentials.contains_key(header::AUTHORIZATION)
        && !credentials.contains_key(header::COOKIE);
    let upstream = upstream_of(&url);
    let keep_tag = |digest: &Digest| {
        if let Reference::Tag(tag) = reference
            && ctx.compiled.keeps_tags(&url)
            && let Err(e) = ctx.manifests.keep_tag(&upstream, name, tag, digest, public)
        {
            tracing::warn!(error = %e, "cannot keep a tag");
        }
    };
    let length = resp.content_length().and_then(|n| usize::try_from(n).ok());
    let small = length.is_some_and(|n| n <= MAX_MANIFEST);
    if parts.method == Method::HEAD || resp.status() != StatusCode::OK || !small {
        let named = resp
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok()?.parse::<Digest>().ok())
            .filter(|d| d.algorithm() == shoal_p2p::Algorithm::Sha256);
        if let Some(d) = named {
            keep_tag(&d);
        }
        return relay(resp);
    }
    let status = resp.status();
    let headers = strip_hop_by_hop(resp.headers());
    let body = match resp.bytes().await {
        Ok(b) => b,
        Err(e) => return Error::unreachable(&url, e).into_response(),
    };
    let digest = Digest::of(shoal_p2p::Algorithm::Sha256, &body);
    let asked_for = match reference {
        Reference::Digest(d) => *d == digest,
        Reference::Tag(_) => true,
    };
    if asked_for {
        let media_type = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        if let Err(e) = ctx
            .manifests
            .keep(&upstream, name, &digest, &body, media_type, public)
        {
            tracing::warn!(error = %e, "cannot keep a manifest");
        }
        keep_tag(&digest);
    }
    let mut builder = Response::builder().status(status);
    if let Some(h) = builder.headers_mut() {
        *h = headers;
    }
    builder.body(full(body)).expect("valid response")
}

/// An upstream answer that says the registry is down, not that the request is wrong.
fn registry_down(status: StatusCode) -> bool {
    matches!(
        status,
        StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE | StatusCode::GATEWAY_TIMEOUT
    )
}

/// The kept manifest for `url`, while its registry cannot be asked: to any client where it was
/// fetched with no credentials (by tag: the tag too), else only with credentials the registry
/// granted this URL within `auth_cache_ttl`. `None`: not kept, or not for this client.
fn kept_manifest(
    ctx: &Ctx,
    url: &Url,
    name: &str,
    reference: &Reference,
    parts: &Parts,
) -> Option<Response<Body>> {
    let upstream = upstream_of(url);
    let (digest, tag_public) = match reference {
        Reference::Digest(d) => (*d, true),
        Reference::Tag(tag) if ctx.compiled.keeps_tags(url) => {
            ctx.manifests.tag(&upstream, name, tag)?
        }
        Reference::Tag(_) => return None,
    };
    let kept = ctx.manifests.get(&upstream, name, &digest)?;
    let credentials = origin_headers(&parts.headers);
    let granted = ctx.access.remembered(url, &credentials, Probe::FirstByte);
    if !(kept.public && tag_public || granted) {
        return None;
    }
    tracing::info!(%upstream, repository = name, %digest, "registry down: a kept manifest answers");
    let len = kept.body.len();
    let body = if parts.method == Method::HEAD {
        Bytes::new()
    } else {
        kept.body
    };
    let mut builder = Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_LENGTH, len)
        .header("docker-content-digest", digest.to_string())
        .header(header::ETAG, format!("\"{digest}\""))
        .header("docker-distribution-api-version", "registry/2.0");
    if !kept.media_type.is_empty() {
        builder = builder.header(header::CONTENT_TYPE, kept.media_type);
    }
    Some(builder.body(full(body)).expect("valid response"))
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
