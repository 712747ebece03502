//! Which client credentials may read which upstream resources, checked with the upstream
//! itself and remembered briefly. Keys are hashes; credentials themselves are never kept.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use http::header::{self, HeaderMap};
use sha2::Digest as _;
use url::Url;

/// Remembers, briefly, which credentials may read which upstream resources. Keys are hashes;
/// credentials themselves are never kept.
pub(crate) struct Access {
    ttl: Duration,
    allowed: Mutex<HashMap<[u8; 32], Instant>>,
    /// Follows redirects (the client would).
    follow: reqwest::Client,
}

/// How the upstream is asked whether a client may read a resource.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Probe {
    /// `HEAD`, as registries answer for blobs, following redirects (to storage the registry
    /// signed for this client; credentials are dropped across hosts): a 2xx answer counts as
    /// yes, nothing else (a redirect is not a yes: anyone can answer one).
    Head,
    /// `GET` of the first byte, exactly as the client asked (its query, its headers), following
    /// redirects (credentials are dropped across hosts): a presigned URL is signed for `GET`
    /// only. A 2xx answer counts as yes, and a 416 (the content is empty); nothing else.
    FirstByte,
}

/// Entries kept at most; expired ones are dropped when this many are reached.
const MAX_ACCESS_ENTRIES: usize = 100_000;

impl Access {
    /// Remembers a yes for `ttl`; `follow` (a client that follows redirects) asks.
    pub fn new(ttl: Duration, follow: reqwest::Client) -> Self {
        Access {
            ttl,
            allowed: Mutex::default(),
            follow,
        }
    }

    /// Whether the client sending `headers` may read `url`, as the upstream answers `probe`
    /// sent with the client's own credentials.
    pub async fn check(
        &self,
        url: &Url,
        headers: &HeaderMap,
        probe: Probe,
    ) -> Result<bool, reqwest::Error> {
        if self.remembered(url, headers, probe) {
            return Ok(true);
        }
        let request = match probe {
            Probe::Head => self.follow.head(url.clone()).headers(headers.clone()),
            Probe::FirstByte => self
                .follow
                .get(url.clone())
                .headers(headers.clone())
                .header(header::RANGE, "bytes=0-0"),
        };
        // The answer's body (one byte, or an error page) is dropped unread.
        let status = request.send().await?.status();
        let ok = match probe {
            Probe::Head => status.is_success(),
            Probe::FirstByte => {
                status.is_success() || status == http::StatusCode::RANGE_NOT_SATISFIABLE
            }
        };
        if ok {
            self.remember(url, headers, probe);
        }
        Ok(ok)
    }

    /// Whether the upstream said yes to `probe` for `url` with these credentials lately.
    pub fn remembered(&self, url: &Url, headers: &HeaderMap, probe: Probe) -> bool {
        let key = access_key(url, headers, probe);
        self.lock()
            .get(&key)
            .is_some_and(|&until| until > Instant::now())
    }

    /// The upstream said yes to `probe` for `url` with these credentials (for the TTL).
    pub fn remember(&self, url: &Url, headers: &HeaderMap, probe: Probe) {
        if self.ttl.is_zero() {
            return;
        }
        let now = Instant::now();
        let mut allowed = self.lock();
        if allowed.len() >= MAX_ACCESS_ENTRIES {
            allowed.retain(|_, until| *until > now);
            if allowed.len() >= MAX_ACCESS_ENTRIES {
                allowed.clear();
            }
        }
        allowed.insert(access_key(url, headers, probe), now + self.ttl);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Instant>> {
        self.allowed.lock().expect("access cache lock")
    }
}

fn access_key(url: &Url, headers: &HeaderMap, probe: Probe) -> [u8; 32] {
    let mut h = sha2::Sha256::new();
    h.update([probe as u8]);
    h.update(url.as_str().as_bytes());
    for name in [header::AUTHORIZATION, header::COOKIE] {
        h.update([0u8]);
        for v in headers.get_all(name) {
            h.update(v.as_bytes());
            h.update([1u8]);
        }
    }
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_keys_separate_credentials_and_resources() {
        let u1 = Url::parse("http://r/v2/a/blobs/sha256:1").unwrap();
        let u2 = Url::parse("http://r/v2/b/blobs/sha256:1").unwrap();
        let mut a = HeaderMap::new();
        a.insert(header::AUTHORIZATION, "Bearer a".parse().unwrap());
        let mut b = HeaderMap::new();
        b.insert(header::AUTHORIZATION, "Bearer b".parse().unwrap());
        assert_ne!(
            access_key(&u1, &a, Probe::Head),
            access_key(&u1, &b, Probe::Head)
        );
        assert_ne!(
            access_key(&u1, &a, Probe::Head),
            access_key(&u2, &a, Probe::Head)
        );
        assert_ne!(
            access_key(&u1, &a, Probe::Head),
            access_key(&u1, &HeaderMap::new(), Probe::Head)
        );
        assert_eq!(
            access_key(&u1, &a, Probe::Head),
            access_key(&u1, &a.clone(), Probe::Head)
        );
        assert_ne!(
            access_key(&u1, &a, Probe::Head),
            access_key(&u1, &a, Probe::FirstByte)
        );
    }
}
