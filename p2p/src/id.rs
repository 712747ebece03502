//! Task identity: which downloads are "the same thing" and may share pieces.
//!
//! * An OCI blob URL (`…/v2/<name>/blobs/sha256:<hex>`) is identified by its digest, so the same
//!   layer from two registries, or pulled and preheated, is one task.
//! * Any other URL is identified by the SHA-256 of the URL with volatile query parameters removed
//!   (object-store signatures, expiry times, containerd's `ns`), plus the optional tag and
//!   application. These are Dragonfly's rules (see `reference/dragonfly-compat.md` §4).
//! * A blob URL with the application [`GZIP_INDEX`] names the seekable index of that gzip layer
//!   (lazy pulling): a small task of its own, derived from the layer's digest, that only a seed
//!   builds and peers pass on (see [`TaskId::gzip_index`]). With [`PREFETCH`], it names the
//!   layer's prefetch list: the spans the first host to run it read first, published by that
//!   host (see [`TaskId::prefetch`]).

use std::fmt;
use std::str::FromStr;

use sha2::Digest as _;
use url::Url;

use crate::digest::{Algorithm, Digest};

/// Query parameters that change between requests for the same content and are dropped before
/// hashing a URL: S3, GCS, OSS, OBS and COS signature parameters, and containerd's `ns`.
pub const DEFAULT_FILTERED_QUERY_PARAMS: &[&str] = &[
    "X-Amz-Algorithm",
    "X-Amz-Credential",
    "X-Amz-Date",
    "X-Amz-Expires",
    "X-Amz-SignedHeaders",
    "X-Amz-Signature",
    "X-Amz-Security-Token",
    "X-Amz-User-Agent",
    "X-Goog-Algorithm",
    "X-Goog-Credential",
    "X-Goog-Date",
    "X-Goog-Expires",
    "X-Goog-SignedHeaders",
    "X-Goog-Signature",
    "OSSAccessKeyId",
    "Expires",
    "Signature",
    "SecurityToken",
    "AccessKeyId",
    "X-Obs-Date",
    "X-Obs-Security-Token",
    "q-sign-algorithm",
    "q-ak",
    "q-sign-time",
    "q-key-time",
    "q-header-list",
    "q-url-param-list",
    "q-signature",
    "x-cos-security-token",
    "ns",
];

/// The application that makes a blob URL name the layer's gzip index instead of the layer.
pub const GZIP_INDEX: &str = "shoal.gzip-index.v1";
/// The application that makes a blob URL name the layer's prefetch list.
pub const PREFETCH: &str = "shoal.prefetch.v1";

/// What besides the URL goes into a URL task's identity.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IdOptions {
    pub tag: Option<String>,
    pub application: Option<String>,
    /// Replaces [`DEFAULT_FILTERED_QUERY_PARAMS`] when set (as dfget's `--filtered-query-params`).
    pub filtered_query_params: Option<Vec<String>>,
}

impl From<&IdOptions> for crate::proto::IdOptions {
    fn from(o: &IdOptions) -> Self {
        crate::proto::IdOptions {
            tag: o.tag.clone(),
            application: o.application.clone(),
            filtered_query_params_set: o.filtered_query_params.is_some(),
            filtered_query_params: o.filtered_query_params.clone().unwrap_or_default(),
        }
    }
}

impl From<crate::proto::IdOptions> for IdOptions {
    fn from(o: crate::proto::IdOptions) -> Self {
        IdOptions {
            tag: o.tag,
            application: o.application,
            filtered_query_params: o
                .filtered_query_params_set
                .then_some(o.filtered_query_params),
        }
    }
}

impl crate::proto::Task {
    /// The task's id, URL and id options, when the URL is the task's: an http(s) URL that
    /// hashes to the id with the options (a blob URL names the blob's digest). The scheduler
    /// checks it before taking a task, and a seed again before fetching one; otherwise whoever
    /// named a task first could send its fetcher anywhere and make other content the task's.
    /// The reason, when it is not.
    pub fn checked_url(&self) -> Result<(TaskId, Url, IdOptions), String> {
        let id: TaskId = self
            .id
            .parse()
            .map_err(|e: ParseTaskIdError| e.to_string())?;
        let url: Url = self.url.parse().map_err(|e| format!("{e}"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!("scheme {} is not http(s)", url.scheme()));
        }
        let options: IdOptions = self.id_options.clone().unwrap_or_default().into();
        if TaskId::for_url(&url, &options) != id {
            return Err(format!(
                "{} is not the URL of task {id}",
                crate::origin::display_url(&url)
            ));
        }
        Ok((id, url, options))
    }
}

/// A task's identity: `sha256:<hex>` for OCI blobs, 64 hex characters for other URLs.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TaskId(String);

impl TaskId {
    /// The id for downloading `url`.
    pub fn for_url(url: &Url, opts: &IdOptions) -> TaskId {
        if let Some(digest) = oci_blob_digest(url) {
            return match opts.application.as_deref() {
                Some(app @ (GZIP_INDEX | PREFETCH)) => TaskId::of_layer(app, &digest),
                _ => TaskId::for_blob(&digest),
            };
        }
        let filtered = filtered_url(url, opts.filtered_query_params.as_deref());
        let mut h = sha2::Sha256::new();
        h.update(filtered.as_bytes());
        for (name, part) in [(b"tag", &opts.tag), (b"app", &opts.application)] {
            if let Some(part) = part {
                // Named and separated, so ("ab", None) and ("a", "b") and a tag vs. an
                // application of the same value all differ.
                h.update([0u8]);
                h.update(name);
                h.update(part.as_bytes());
            }
        }
        // A list other than the default is part of the identity: without it, whoever named the
        // task first could filter out a parameter that selects the content (`?file=…`) and
        // make another URL's content this task's.
        if let Some(list) = &opts.filtered_query_params {
            let mut list: Vec<&str> = list.iter().map(String::as_str).collect();
            list.sort_unstable();
            list.dedup();
            h.update([0u8]);
            h.update(b"filtered");
            for name in list {
                h.update([1u8]);
                h.update(name.as_bytes());
            }
        }
        TaskId(hex::encode(h.finalize()))
    }

    /// The id of a content-addressed blob.
    pub fn for_blob(digest: &Digest) -> TaskId {
        TaskId(digest.to_string())
    }

    /// The id of the gzip index of the layer `layer` (whose own id is its digest): the SHA-256
    /// of a name for the index format and the digest, so it is neither a blob id nor any URL's.
    pub fn gzip_index(layer: &Digest) -> TaskId {
        TaskId::of_layer(GZIP_INDEX, layer)
    }

    /// The id of the prefetch list of the layer `layer`, made as [`TaskId::gzip_index`] is.
    pub fn prefetch(layer: &Digest) -> TaskId {
        TaskId::of_layer(PREFETCH, layer)
    }

    fn of_layer(application: &str, layer: &Digest) -> TaskId {
        let mut h = sha2::Sha256::new();
        h.update(application.as_bytes());
        h.update([0u8]);
        h.update(layer.to_string().as_bytes());
        TaskId(hex::encode(h.finalize()))
    }

    /// The whole-content digest this id promises, for blob ids.
    pub fn blob_digest(&self) -> Option<Digest> {
        self.0
            .starts_with("sha256:")
            .then(|| self.0.parse().ok())
            .flatten()
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A name safe to use as a file name (no `:`).
    pub fn file_name(&self) -> String {
        self.0.replace(':', "-")
    }
}

/// Why a string is not a task id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a task id (64 hex characters, or sha256:<64 hex>)")]
pub struct ParseTaskIdError(String);

impl FromStr for TaskId {
    type Err = ParseTaskIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let is_hex64 =
            |h: &str| h.len() == 64 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        match s.strip_prefix("sha256:") {
            Some(h) if is_hex64(h) => Ok(TaskId(s.to_owned())),
            None if is_hex64(s) => Ok(TaskId(s.to_owned())),
            _ => Err(ParseTaskIdError(s.to_owned())),
        }
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TaskId({})", self.0)
    }
}

/// The digest named by an OCI blob path `/v2/<name>/blobs/sha256:<hex>`, if `url` is one.
pub fn oci_blob_digest(url: &Url) -> Option<Digest> {
    let rest = url.path().strip_prefix("/v2/")?;
    let (name, digest) = rest.rsplit_once("/blobs/")?;
    if name.is_empty() || digest.contains('/') {
        return None;
    }
    let digest: Digest = digest.parse().ok()?;
    (digest.algorithm() == Algorithm::Sha256).then_some(digest)
}

/// `url` without its fragment and without the filtered query parameters (names compared
/// case-sensitively, as the object stores define them).
pub fn filtered_url(url: &Url, filtered: Option<&[String]>) -> String {
    let is_filtered = |k: &str| match filtered {
        Some(list) => list.iter().any(|f| f == k),
        None => DEFAULT_FILTERED_QUERY_PARAMS.contains(&k),
    };
    let mut out = url.clone();
    out.set_fragment(None);
    let kept: Vec<(String, String)> = url
        .query_pairs()
        .filter(|(k, _)| !is_filtered(k))
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    if kept.is_empty() {
        out.set_query(None);
    } else {
        out.query_pairs_mut().clear().extend_pairs(kept);
    }
    out.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn id(u: &str) -> TaskId {
        TaskId::for_url(&Url::parse(u).unwrap(), &IdOptions::default())
    }

    const D: &str = "sha256:6c3c624b58dbbcd3c0dd82b4c53f04194d1247c6eebdaab7c610cf7d66709b3b";

    #[test]
    fn blob_url_id_is_its_digest_whatever_the_registry() {
        let a = id(&format!(
            "https://registry-1.docker.io/v2/library/alpine/blobs/{D}"
        ));
        let b = id(&format!(
            "http://127.0.0.1:4001/v2/library/alpine/blobs/{D}?ns=docker.io"
        ));
        let c = id(&format!("https://harbor.example/v2/proj/a/b/c/blobs/{D}"));
        assert_eq!(a.as_str(), D);
        assert_eq!(a, b);
        assert_eq!(a, c);
        assert_eq!(a.blob_digest().unwrap().to_string(), D);
    }

    #[test]
    fn a_layers_gzip_index_has_an_id_of_its_own_named_by_its_blob_url() {
        let url = Url::parse(&format!("https://r.example/v2/a/blobs/{D}")).unwrap();
        let other = Url::parse(&format!("http://mirror/v2/b/blobs/{D}?ns=r")).unwrap();
        let index = IdOptions {
            application: Some(GZIP_INDEX.into()),
            ..Default::default()
        };
        let id = TaskId::for_url(&url, &index);
        assert_eq!(id, TaskId::for_url(&other, &index), "whatever the registry");
        assert_eq!(id, TaskId::gzip_index(&D.parse().unwrap()));
        assert_ne!(id.as_str(), D);
        assert_eq!(
            id.blob_digest(),
            None,
            "no whole-content digest is promised"
        );
        // Another application leaves a blob URL the blob's.
        let app = IdOptions {
            application: Some("other".into()),
            ..Default::default()
        };
        assert_eq!(TaskId::for_url(&url, &app).as_str(), D);
        // The layer's prefetch list is a third task.
        let prefetch = IdOptions {
            application: Some(PREFETCH.into()),
            ..Default::default()
        };
        let list = TaskId::for_url(&url, &prefetch);
        assert_eq!(list, TaskId::prefetch(&D.parse().unwrap()));
        assert_ne!(list, id);
        assert_ne!(list.as_str(), D);
        // A seed job for it passes the scheduler's check.
        let task = crate::proto::Task {
            id: id.to_string(),
            url: url.to_string(),
            id_options: Some((&index).into()),
            ..Default::default()
        };
        assert!(task.checked_url().is_ok());
    }

    #[test]
    fn not_blob_urls() {
        for u in [
            "https://r.example/v2/library/alpine/manifests/latest",
            "https://r.example/v2//blobs/sha256:00",
            "https://r.example/v2/a/blobs/sha256:totallywrong",
            "https://r.example/files/blobs/sha256:6c3c624b58dbbcd3c0dd82b4c53f04194d1247c6eebdaab7c610cf7d66709b3b",
        ] {
            let t = id(u);
            assert!(t.blob_digest().is_none(), "{u}");
            assert_eq!(t.as_str().len(), 64);
        }
    }

    #[test]
    fn signatures_and_ns_do_not_change_the_id() {
        let base = id("https://bucket.s3.amazonaws.com/big.bin?versionId=3");
        let signed = id(
            "https://bucket.s3.amazonaws.com/big.bin?X-Amz-Signature=abc&versionId=3&X-Amz-Expires=60&ns=docker.io#frag",
        );
        assert_eq!(base, signed);
        assert_ne!(
            base,
            id("https://bucket.s3.amazonaws.com/big.bin?versionId=4")
        );
    }

    #[test]
    fn tag_application_and_custom_filters() {
        let url = Url::parse("https://h.example/f?a=1&token=x").unwrap();
        let plain = TaskId::for_url(&url, &IdOptions::default());
        let tagged = TaskId::for_url(
            &url,
            &IdOptions {
                tag: Some("t".into()),
                ..Default::default()
            },
        );
        let app = TaskId::for_url(
            &url,
            &IdOptions {
                application: Some("t".into()),
                ..Default::default()
            },
        );
        assert_ne!(plain, tagged);
        assert_ne!(tagged, app);
        let filter = IdOptions {
            filtered_query_params: Some(vec!["token".into()]),
            ..Default::default()
        };
        assert_eq!(
            TaskId::for_url(&url, &filter),
            TaskId::for_url(&Url::parse("https://h.example/f?a=1").unwrap(), &filter)
        );
        // The list is part of the id: filtering `file` out cannot make `?file=evil` another
        // task's content.
        let plain = Url::parse("https://h.example/dl").unwrap();
        let evil = Url::parse("https://h.example/dl?file=evil").unwrap();
        let by_file = IdOptions {
            filtered_query_params: Some(vec!["file".into()]),
            ..Default::default()
        };
        assert_ne!(
            TaskId::for_url(&evil, &by_file),
            TaskId::for_url(&plain, &Default::default())
        );
    }

    #[test]
    fn parse_round_trip_and_file_name() {
        let t: TaskId = D.parse().unwrap();
        assert_eq!(t.file_name(), D.replace(':', "-"));
        assert!("sha256:zz".parse::<TaskId>().is_err());
        assert!("../etc/passwd".parse::<TaskId>().is_err());
    }

    proptest! {
        #[test]
        fn filtered_params_never_matter(sig in "[a-zA-Z0-9]{0,20}", exp in 0u32..100000, keep in "[a-z0-9]{1,8}") {
            let a = id(&format!("https://h.example/p?keep={keep}"));
            let b = id(&format!("https://h.example/p?Signature={sig}&keep={keep}&Expires={exp}"));
            prop_assert_eq!(a, b);
        }

        #[test]
        fn kept_params_always_matter(a in "[a-z0-9]{1,8}", b in "[a-z0-9]{1,8}") {
            prop_assume!(a != b);
            prop_assert_ne!(id(&format!("https://h.example/p?v={a}")), id(&format!("https://h.example/p?v={b}")));
        }

        #[test]
        fn id_parses_back(path in "[a-z]{1,10}") {
            let t = id(&format!("https://h.example/{path}"));
            prop_assert_eq!(t.as_str().parse::<TaskId>().unwrap(), t);
        }
    }
}
