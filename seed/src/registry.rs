//! A registry client for the seed: the manifests an image reference stands for, and the layers
//! they need, fetched with token auth (see `auth`). Harbor preheat (an image to make present)
//! and the gzip index of lazy pulling (which layers are gzip) start here.
//!
//! [`Registry::resolve`] takes a tag or a digest; an index (OCI, or Docker's manifest list)
//! resolves to the manifests of every platform it lists (attestations left out), or of the
//! platforms asked for. Every manifest is checked against the digest it was fetched by (or that
//! its index named), and against `Docker-Content-Digest` when the registry sends a SHA-256 one.
//! Repository names and references are checked against the spec's grammar first.

#[cfg(fuzzing)]
pub(crate) fn fuzz_challenge(value: &str) {
    let _ = auth::Challenge::parse(value);
}

#[cfg(fuzzing)]
pub(crate) fn fuzz_manifest(body: &[u8]) {
    let _ = manifest::parse(body);
}

mod auth;
mod body;
mod manifest;

use http::header::{ACCEPT, AUTHORIZATION, WWW_AUTHENTICATE};
use shoal_p2p::{Algorithm, Digest};
use url::Url;

pub use auth::Credentials;
pub use manifest::{Descriptor, Image, Manifest, Platform};

use crate::error::{Error, Result};
use auth::{Challenge, Tokens};
use body::BodyError;

/// The manifest media types a seed accepts.
const ACCEPT_MANIFESTS: &str = "application/vnd.oci.image.index.v1+json, \
application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.docker.distribution.manifest.v2+json";

/// Manifests larger than this are refused (distribution's own limit is 4 MiB).
const MAX_MANIFEST: usize = 4 << 20;

/// A manifest as the registry served it.
#[derive(Clone, Debug)]
pub struct Served {
    pub digest: Digest,
    pub media_type: String,
    pub body: bytes::Bytes,
}

/// One registry, with one identity.
pub struct Registry {
    base: Url,
    http: reqwest::Client,
    credentials: Credentials,
    tokens: Tokens,
}

impl Registry {
    /// A client for the registry at `base` (`https://registry.example`), using `http` (which
    /// carries the trusted CAs and timeouts) and `credentials`.
    pub fn new(base: Url, http: reqwest::Client, credentials: Credentials) -> Self {
        Registry {
            base,
            http,
            credentials,
            tokens: Tokens::default(),
        }
    }

    /// The image `repository:reference` (a tag, or `sha256:…`): its digest and the manifests
    /// of the platforms in `platforms` (every platform when empty).
    pub async fn resolve(
        &self,
        repository: &str,
        reference: &str,
        platforms: &[Platform],
    ) -> Result<Image> {
        check_reference(repository, reference)?;
        let (digest, _, top) = self.manifest(repository, reference, None).await?;
        let manifests = match top {
            manifest::Parsed::Manifest(m) => vec![m],
            manifest::Parsed::Index(entries) => {
                let mut out = Vec::new();
                for entry in entries.iter().filter(|e| e.wanted(platforms)) {
                    let name = entry.digest.to_string();
                    let (_, _, parsed) =
                        self.manifest(repository, &name, Some(entry.digest)).await?;
                    match parsed {
                        manifest::Parsed::Manifest(mut m) => {
                            m.platform = entry.platform.clone();
                            out.push(m);
                        }
                        manifest::Parsed::Index(_) => {
                            return Err(Error::Manifest {
                                url: shoal_p2p::origin::display_url(&self.url(
                                    repository,
                                    "manifests",
                                    &name,
                                )),
                                detail: "an index inside an index".into(),
                            });
                        }
                    }
                }
                out
            }
        };
        Ok(Image { digest, manifests })
    }

    /// The manifest of `platform` that `repository:reference` names (through its index when it
    /// names one), with the bytes the registry served, checked against their digest.
    pub async fn platform_manifest(
        &self,
        repository: &str,
        reference: &str,
        platform: &Platform,
    ) -> Result<(Served, Manifest)> {
        check_reference(repository, reference)?;
        let mut next = (reference.to_owned(), None);
        for _ in 0..2 {
            let (digest, body, parsed) = self.manifest(repository, &next.0, next.1).await?;
            match parsed {
                manifest::Parsed::Manifest(m) => {
                    let media_type = match m.media_type.as_str() {
                        "" => "application/vnd.oci.image.manifest.v1+json".to_owned(),
                        t => t.to_owned(),
                    };
                    let served = Served {
                        digest,
                        media_type,
                        body: body.into(),
                    };
                    return Ok((served, m));
                }
                manifest::Parsed::Index(entries) => {
                    let platforms = std::slice::from_ref(platform);
                    let entry = entries
                        .iter()
                        .find(|e| e.wanted(platforms))
                        .ok_or_else(|| Error::Manifest {
                            url: shoal_p2p::origin::display_url(&self.url(
                                repository,
                                "manifests",
                                &next.0,
                            )),
                            detail: format!("no manifest for {platform}"),
                        })?;
                    next = (entry.digest.to_string(), Some(entry.digest));
                }
            }
        }
        Err(Error::Manifest {
            url: shoal_p2p::origin::display_url(&self.url(repository, "manifests", reference)),
            detail: "an index inside an index".into(),
        })
    }

    /// A blob, as the registry streams it (the caller checks it against its digest).
    pub async fn blob(&self, repository: &str, digest: Digest) -> Result<reqwest::Response> {
        check_reference(repository, &digest.to_string())?;
        self.get(
            &self.url(repository, "blobs", &digest.to_string()),
            repository,
        )
        .await
    }

    /// A GET of the blob with `extra` headers (a mirror's own requests, a `Range`): the
    /// answer as it comes, any success status.
    pub async fn blob_with(
        &self,
        repository: &str,
        digest: Digest,
        extra: &http::HeaderMap,
    ) -> Result<reqwest::Response> {
        check_reference(repository, &digest.to_string())?;
        let url = self.url(repository, "blobs", &digest.to_string());
        self.get_with(&url, repository, extra).await
    }

    /// A PUT of `body` to the blob's URL with `extra` headers and the credentials already held
    /// for the repository (a mirror's own requests: a lazy layer's prefetch list).
    pub async fn put_blob_with(
        &self,
        repository: &str,
        digest: Digest,
        extra: &http::HeaderMap,
        body: Vec<u8>,
    ) -> Result<reqwest::Response> {
        check_reference(repository, &digest.to_string())?;
        let url = self.url(repository, "blobs", &digest.to_string());
        let held = self.held(&format!("repository:{repository}:pull"));
        let mut rb = self.http.put(url.clone()).headers(extra.clone()).body(body);
        if let Some(a) = held {
            rb = rb.header(AUTHORIZATION, a);
        }
        let resp = rb.send().await.map_err(|e| Error::Transport {
            url: shoal_p2p::origin::display_url(&url),
            source: e.without_url(),
        })?;
        checked(resp, &url)
    }

    /// A small blob (an image's config), checked against its digest.
    pub async fn small_blob(&self, repository: &str, digest: Digest) -> Result<bytes::Bytes> {
        let url = self.url(repository, "blobs", &digest.to_string());
        let body = read_limited(self.get(&url, repository).await?, &url).await?;
        let actual = Digest::of(Algorithm::Sha256, &body);
        if actual != digest {
            return Err(Error::DigestMismatch {
                url: shoal_p2p::origin::display_url(&url),
                expected: digest,
                actual,
            });
        }
        Ok(body.into())
    }

    /// Fetches and checks one manifest or index; its digest, bytes and what they hold.
    async fn manifest(
        &self,
        repository: &str,
        reference: &str,
        expected: Option<Digest>,
    ) -> Result<(Digest, Vec<u8>, manifest::Parsed)> {
        let url = self.url(repository, "manifests", reference);
        let expected = expected.or_else(|| reference.parse().ok());
        let resp = self.get(&url, repository).await?;
        let header_digest = resp
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<Digest>().ok());
        let body = read_limited(resp, &url).await?;
        let actual = Digest::of(Algorithm::Sha256, &body);
        for claimed in [expected, header_digest].into_iter().flatten() {
            if claimed != actual {
                return Err(Error::DigestMismatch {
                    url: shoal_p2p::origin::display_url(&url),
                    expected: claimed,
                    actual,
                });
            }
        }
        let parsed = manifest::parse(&body).map_err(|detail| Error::Manifest {
            url: shoal_p2p::origin::display_url(&url),
            detail,
        })?;
        Ok((actual, body, parsed))
    }

    fn url(&self, repository: &str, kind: &str, reference: &str) -> Url {
        let mut url = self.base.clone();
        let prefix = self.base.path().trim_end_matches('/');
        url.set_path(&format!("{prefix}/v2/{repository}/{kind}/{reference}"));
        // A mirror's base names the registry in its query (`?ns=`): kept.
        url.set_query(self.base.query());
        url
    }

    /// A GET with the registry's authentication: the held token for the repository's pull
    /// scope, else the credentials' header; on a `401` the challenge is answered once.
    async fn get(&self, url: &Url, repository: &str) -> Result<reqwest::Response> {
        self.get_with(url, repository, &http::HeaderMap::new())
            .await
    }

    /// The `Authorization` a blob request in `repository` carries now (after [`Registry::resolve`]
    /// earned a token for it): what a preheat hands the seeds that fetch the blobs.
    pub fn authorization(&self, repository: &str) -> Option<http::HeaderValue> {
        self.held(&format!("repository:{repository}:pull"))
            .or_else(|| self.credentials.authorization())
    }

    /// The authorization held for `scope`: the credentials' header, else a token earned.
    fn held(&self, scope: &str) -> Option<http::HeaderValue> {
        match &self.credentials {
            Credentials::Header(h) => Some(h.clone()),
            _ => self.tokens.get(scope),
        }
    }

    /// [`Registry::get`] with `extra` headers on every request.
    async fn get_with(
        &self,
        url: &Url,
        repository: &str,
        extra: &http::HeaderMap,
    ) -> Result<reqwest::Response> {
        let scope = format!("repository:{repository}:pull");
        let held = self.held(&scope);
        let resp = self.send(url, held.clone(), extra).await?;
        if resp.status() != http::StatusCode::UNAUTHORIZED
            || matches!(self.credentials, Credentials::Header(_))
        {
            return checked(resp, url);
        }
        let challenge = resp
            .headers()
            .get(WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .and_then(Challenge::parse);
        let Some(challenge) = challenge else {
            return checked(resp, url);
        };
        let tls = self.base.scheme() == "https";
        let earned = self
            .tokens
            .answer(&self.http, &challenge, &self.credentials, &scope, tls)
            .await?;
        match earned {
            Some(auth) if Some(&auth) != held.as_ref() => {
                checked(self.send(url, Some(auth), extra).await?, url)
            }
            _ => checked(resp, url),
        }
    }

    async fn send(
        &self,
        url: &Url,
        authorization: Option<http::HeaderValue>,
        extra: &http::HeaderMap,
    ) -> Result<reqwest::Response> {
        let mut rb = self
            .http
            .get(url.clone())
            .header(ACCEPT, ACCEPT_MANIFESTS)
            .headers(extra.clone());
        if let Some(a) = authorization {
            rb = rb.header(AUTHORIZATION, a);
        }
        rb.send().await.map_err(|e| Error::Transport {
            url: shoal_p2p::origin::display_url(url),
            source: e.without_url(),
        })
    }
}

/// A repository name and a tag or digest as the distribution spec writes them, so that neither
/// can reach another path of the registry.
fn check_reference(repository: &str, reference: &str) -> Result<()> {
    let component = |c: &str| {
        !c.is_empty()
            && c.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
            && c.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
    };
    let tag = |t: &str| {
        (1..=128).contains(&t.len())
            && t.bytes()
                .next()
                .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_')
            && t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    };
    let name_ok = repository.len() <= 255 && repository.split('/').all(component);
    let reference_ok = tag(reference) || reference.parse::<Digest>().is_ok();
    if name_ok && reference_ok {
        Ok(())
    } else {
        Err(Error::Reference(format!("{repository}:{reference}")))
    }
}

fn checked(resp: reqwest::Response, url: &Url) -> Result<reqwest::Response> {
    if resp.status().is_success() {
        Ok(resp)
    } else {
        Err(Error::Status {
            url: shoal_p2p::origin::display_url(url),
            status: resp.status().as_u16(),
        })
    }
}

async fn read_limited(resp: reqwest::Response, url: &Url) -> Result<Vec<u8>> {
    body::read(resp, MAX_MANIFEST).await.map_err(|e| match e {
        BodyError::TooLarge => Error::Manifest {
            url: shoal_p2p::origin::display_url(url),
            detail: format!("larger than {MAX_MANIFEST} bytes"),
        },
        BodyError::Transport(source) => Error::Transport {
            url: shoal_p2p::origin::display_url(url),
            source,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_reach_no_other_path() {
        let digest = format!("sha256:{}", "ab".repeat(32));
        for (repo, reference) in [
            ("library/nginx", "1.25"),
            ("team/app", digest.as_str()),
            ("a", "_latest"),
        ] {
            assert!(
                check_reference(repo, reference).is_ok(),
                "{repo}:{reference}"
            );
        }
        for (repo, reference) in [
            ("team/../admin", "v1"),
            ("Team/app", "v1"),
            ("team/app", "..\\..\\admin"),
            ("team/app", "v1/../../x"),
            ("team//app", "v1"),
            ("team/app", ".hidden"),
            ("team/app", "sha256:short"),
        ] {
            let err = check_reference(repo, reference).unwrap_err();
            assert!(matches!(err, Error::Reference(_)), "{repo}:{reference}");
        }
    }
}
