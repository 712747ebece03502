//! What a request asks for: the `/v2/` endpoint (OCI distribution-spec paths) and the upstream
//! registry it is meant for.

use std::sync::LazyLock;

use http::HeaderMap;
use regex::Regex;
use shoal_p2p::{Algorithm, Digest};
use url::Url;

use crate::config::{Compiled, registry_url};

/// `X-Dragonfly-Registry`: the upstream for a mirror request.
pub const REGISTRY_HEADER: &str = "x-dragonfly-registry";

/// A `/v2/` request.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum V2 {
    /// A blob by a digest Shoal can verify (SHA-256): a swarm task when fetched with GET.
    Blob { name: String, digest: Digest },
    /// A manifest by tag or by a digest Shoal can verify: kept when fetched, for when the
    /// registry is down.
    Manifest { name: String, reference: Reference },
    /// Everything else (`/v2/` itself, manifests, tags, referrers, uploads, other digest
    /// algorithms): straight to the upstream.
    Pass,
}

/// A manifest's reference.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Reference {
    Tag(String),
    Digest(Digest),
}

/// Why a `/v2/` path was refused before reaching the upstream: `(OCI code, message)`.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct BadPath(pub &'static str, pub String);

// distribution-spec: repository names and tags.
static NAME: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*$")
        .expect("valid regex")
});
static TAG: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}$").expect("valid regex"));
static DIGEST: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^[a-z0-9]+([+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+$").expect("valid regex")
});

/// Classifies the path of a `/v2/` request (`path` starts with `/v2`). A path no registry
/// endpoint has (a backslash, which URL parsing turns into `/`; a `.` or `..` segment, plain or
/// percent-encoded) is refused: passed on, it could reach other paths of the upstream.
pub(crate) fn classify(path: &str) -> Result<V2, BadPath> {
    let dots = |seg: &str| {
        let seg = seg.to_ascii_lowercase().replace("%2e", ".");
        seg == "." || seg == ".."
    };
    let lower = path.to_ascii_lowercase();
    if path.contains('\\')
        || lower.contains("%5c")
        || lower.contains("%2f")
        || path.split('/').any(dots)
    {
        return Err(BadPath(
            "UNSUPPORTED",
            format!("{path:?} is not a distribution-spec endpoint"),
        ));
    }
    let rest = path.strip_prefix("/v2").unwrap_or(path);
    let rest = rest.trim_start_matches('/');
    if rest.is_empty() || rest == "_catalog" {
        return Ok(V2::Pass);
    }
    for (marker, kind) in [
        ("/blobs/", Kind::Blob),
        ("/manifests/", Kind::Manifest),
        ("/referrers/", Kind::Referrers),
        ("/tags/", Kind::Other),
    ] {
        let Some(at) = rest.rfind(marker) else {
            continue;
        };
        let (name, tail) = (&rest[..at], &rest[at + marker.len()..]);
        if !NAME.is_match(name) || name.len() > 255 {
            return Err(BadPath(
                "NAME_INVALID",
                format!("invalid repository name {name:?}"),
            ));
        }
        return match kind {
            Kind::Blob if tail.starts_with("uploads") => Ok(V2::Pass),
            Kind::Blob => blob(name, tail),
            Kind::Manifest if TAG.is_match(tail) => Ok(V2::Manifest {
                name: name.to_string(),
                reference: Reference::Tag(tail.to_string()),
            }),
            Kind::Manifest if tail.contains(':') => {
                checked_digest(tail)?;
                Ok(match tail.parse::<Digest>() {
                    Ok(d) if d.algorithm() == Algorithm::Sha256 => V2::Manifest {
                        name: name.to_string(),
                        reference: Reference::Digest(d),
                    },
                    _ => V2::Pass,
                })
            }
            // Neither a tag nor a digest: the registry answers it (404, usually); a mirror is
            // not stricter than the registry behind it. One segment of tag characters only.
            Kind::Manifest
                if !tail.is_empty()
                    && tail
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)) =>
            {
                Ok(V2::Pass)
            }
            Kind::Manifest => Err(BadPath(
                "MANIFEST_INVALID",
                format!("{tail:?} is neither a tag nor a digest"),
            )),
            Kind::Referrers => checked_digest(tail).map(|()| V2::Pass),
            Kind::Other => Ok(V2::Pass),
        };
    }
    Err(BadPath(
        "UNSUPPORTED",
        format!("/v2/{rest} is not a distribution-spec endpoint"),
    ))
}

enum Kind {
    Blob,
    Manifest,
    Referrers,
    Other,
}

fn blob(name: &str, tail: &str) -> Result<V2, BadPath> {
    checked_digest(tail)?;
    match tail.parse::<Digest>() {
        Ok(digest) if digest.algorithm() == Algorithm::Sha256 => Ok(V2::Blob {
            name: name.to_string(),
            digest,
        }),
        // Well-formed, but not one Shoal verifies (sha512, ...): the registry decides.
        _ => Ok(V2::Pass),
    }
}

/// A digest in the OCI grammar; the registered algorithms (`sha256`, `sha512`) must have their
/// exact length of lowercase hex. (docker-registry 2.8 answers 500 to `sha256:totallywrong`.)
fn checked_digest(text: &str) -> Result<(), BadPath> {
    let invalid = || BadPath("DIGEST_INVALID", format!("invalid digest {text:?}"));
    let (algorithm, encoded) = text.split_once(':').ok_or_else(invalid)?;
    let hex_len = match algorithm {
        "sha256" => Some(64),
        "sha512" => Some(128),
        _ => None,
    };
    let lower_hex = encoded
        .bytes()
        .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    match hex_len {
        _ if !DIGEST.is_match(text) => Err(invalid()),
        Some(n) if encoded.len() != n || !lower_hex => Err(invalid()),
        _ => Ok(()),
    }
}

/// The upstream registry of a mirror request: `X-Dragonfly-Registry`, else containerd's
/// `?ns=`, else the default registry.
pub(crate) fn upstream(
    config: &Compiled,
    headers: &HeaderMap,
    query: Option<&str>,
) -> Result<Url, String> {
    if let Some(v) = headers.get(REGISTRY_HEADER) {
        let text = v
            .to_str()
            .map_err(|_| format!("{REGISTRY_HEADER} is not text"))?;
        return registry_url(text).map_err(|e| format!("{REGISTRY_HEADER}: {e}"));
    }
    if let Some(ns) = ns(query) {
        return registry_for_host(config, &ns);
    }
    Ok(config.default_registry.clone())
}

/// The upstream URL for a registry host (`registry.example:5000`, `docker.io`).
pub(crate) fn registry_for_host(config: &Compiled, host: &str) -> Result<Url, String> {
    let host = host.to_ascii_lowercase();
    if let Some(url) = config.registries.get(&host) {
        return Ok(url.clone());
    }
    let valid = !host.is_empty()
        && host.len() <= 255
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b));
    if !valid {
        return Err(format!("invalid registry host {host:?}"));
    }
    registry_url(&format!("https://{host}"))
}

/// containerd's `ns` query parameter, decoded.
fn ns(query: Option<&str>) -> Option<String> {
    url::form_urlencoded::parse(query?.as_bytes())
        .find(|(k, _)| k == "ns")
        .map(|(_, v)| v.into_owned())
}

/// The query without `ns` (the upstream is not a mirror and does not need it).
pub(crate) fn query_without_ns(query: Option<&str>) -> Option<String> {
    let query = query?;
    let kept: Vec<_> = url::form_urlencoded::parse(query.as_bytes())
        .filter(|(k, _)| k != "ns")
        .collect();
    if kept.is_empty() {
        return None;
    }
    Some(
        url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(kept)
            .finish(),
    )
}

/// `base` with `path` and `query`.
pub(crate) fn join(base: &Url, path: &str, query: Option<&str>) -> Url {
    let mut url = base.clone();
    url.set_path(path);
    url.set_query(query);
    url
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ProxyConfig;

    const HEX: &str = "4b6f0a26f0ac5e1fcc2a9f5c0f7a2f1f5b9fd1bc2f9d39c3b8d1d0f7c6e2a1b0";

    #[test]
    fn blobs_become_tasks() {
        let d = format!("sha256:{HEX}");
        assert_eq!(
            classify(&format!("/v2/team/app/blobs/{d}")),
            Ok(V2::Blob {
                name: "team/app".into(),
                digest: d.parse().unwrap()
            })
        );
        // Names may contain the markers' words.
        assert!(matches!(
            classify(&format!("/v2/blobs/manifests/blobs/{d}")),
            Ok(V2::Blob { name, .. }) if name == "blobs/manifests"
        ));
    }

    #[test]
    fn manifests_by_tag_and_by_sha256_are_named() {
        let d = "sha256:4b6f0a26f0ac5e1fcc2a9f5c0f7a2f1f5b9fd1bc2f9d39c3b8d1d0f7c6e2a1b0";
        assert_eq!(
            classify("/v2/team/app/manifests/v1"),
            Ok(V2::Manifest {
                name: "team/app".into(),
                reference: Reference::Tag("v1".into()),
            })
        );
        assert_eq!(
            classify(&format!("/v2/team/app/manifests/{d}")),
            Ok(V2::Manifest {
                name: "team/app".into(),
                reference: Reference::Digest(d.parse().unwrap()),
            })
        );
    }

    #[test]
    fn everything_else_passes() {
        for p in [
            "/v2/",
            "/v2",
            "/v2/_catalog",
            "/v2/team/app/manifests/sha512:4b6f0a26f0ac5e1fcc2a9f5c0f7a2f1f5b9fd1bc2f9d39c3b8d1d0f7c6e2a1b04b6f0a26f0ac5e1fcc2a9f5c0f7a2f1f5b9fd1bc2f9d39c3b8d1d0f7c6e2a1b0",
            "/v2/team/app/tags/list",
            "/v2/team/app/blobs/uploads/",
            "/v2/team/app/blobs/uploads/123-456",
            "/v2/team/app/blobs/blake3:abcdef",
            // The spec's conformance suite: the registry answers this one (404).
            "/v2/team/app/manifests/.INVALID_MANIFEST_NAME",
            "/v2/team/app/manifests/-bad",
        ] {
            assert_eq!(classify(p), Ok(V2::Pass), "{p}");
        }
    }

    #[test]
    fn bad_paths_are_refused() {
        for (p, code) in [
            ("/v2/Team/app/manifests/v1", "NAME_INVALID"),
            ("/v2/team/app/blobs/sha256:totallywrong", "DIGEST_INVALID"),
            ("/v2/team/app/blobs/not-a-digest", "DIGEST_INVALID"),
            (
                "/v2/team/app/manifests/sha256:totallywrong",
                "DIGEST_INVALID",
            ),
            ("/v2/team/app/blobs/sha512:abcdef", "DIGEST_INVALID"),
            ("/v2/team/app/referrers/sha256:ABC", "DIGEST_INVALID"),
            ("/v2/team/app/manifests/..%2f", "UNSUPPORTED"),
            ("/v2/team/app/manifests/..", "UNSUPPORTED"),
            ("/v2/team/app/manifests/..\\..\\admin", "UNSUPPORTED"),
            ("/v2/team/app/tags/..%5C..%5Cadmin", "UNSUPPORTED"),
            ("/v2/team/app/blobs/uploads/%2e%2e/x", "UNSUPPORTED"),
            ("/v2/team/app/manifests/a+b", "MANIFEST_INVALID"),
            ("/v2/team/app/whatever", "UNSUPPORTED"),
            ("/v2/../etc/blobs/sha256:ab", "UNSUPPORTED"),
        ] {
            assert_eq!(classify(p).map_err(|e| e.0), Err(code), "{p}");
        }
    }

    #[test]
    fn upstream_order() {
        let mut config = ProxyConfig::default();
        config
            .registries
            .insert("reg.local:5000".into(), "http://127.0.0.1:5000".into());
        let c = config.compile().unwrap();
        let mut h = HeaderMap::new();
        assert_eq!(
            upstream(&c, &h, None).unwrap().as_str(),
            "https://index.docker.io/"
        );
        assert_eq!(
            upstream(&c, &h, Some("ns=reg.local%3A5000"))
                .unwrap()
                .as_str(),
            "http://127.0.0.1:5000/"
        );
        assert_eq!(
            upstream(&c, &h, Some("ns=docker.io")).unwrap().as_str(),
            "https://registry-1.docker.io/"
        );
        assert_eq!(
            upstream(&c, &h, Some("ns=ghcr.io")).unwrap().as_str(),
            "https://ghcr.io/"
        );
        assert!(upstream(&c, &h, Some("ns=a/b")).is_err());
        h.insert(REGISTRY_HEADER, "https://harbor.example".parse().unwrap());
        assert_eq!(
            upstream(&c, &h, Some("ns=ghcr.io")).unwrap().as_str(),
            "https://harbor.example/"
        );
        assert_eq!(query_without_ns(Some("ns=a&n=1")).as_deref(), Some("n=1"));
        assert_eq!(query_without_ns(Some("ns=a")), None);
    }

    proptest::proptest! {
        /// Any path: no panic; a blob or manifest is named as the grammar says, and no path
        /// with a dot segment or a backslash reaches the upstream.
        #[test]
        fn any_path_is_classified_or_refused(rest in "[a-zA-Z0-9._:/%\\\\-]{0,80}") {
            let path = format!("/v2/{rest}");
            let dots = path.split('/').any(|s| s == "." || s == "..");
            match classify(&path) {
                Ok(V2::Blob { name, .. }) | Ok(V2::Manifest { name, .. }) => {
                    proptest::prop_assert!(NAME.is_match(&name));
                    proptest::prop_assert!(!dots);
                }
                Ok(V2::Pass) => proptest::prop_assert!(!dots && !path.contains('\\')),
                Err(_) => {}
            }
        }
    }
}
