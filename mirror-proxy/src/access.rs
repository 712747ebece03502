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
}

/// Entries kept at most; expired ones are dropped when this many are reached.
const MAX_ACCESS_ENTRIES: usize = 100_000;

impl Access {
    pub fn new(ttl: Duration) -> Self {
        Access {
            ttl,
            allowed: Mutex::default(),
        }
    }

    /// Whether the client sending `headers` may read `url`: the upstream answers a HEAD with
    /// the client's credentials with 2xx, or redirects it (to storage it signed for them).
    pub async fn check(
        &self,
        client: &reqwest::Client,
        url: &Url,
        headers: &HeaderMap,
    ) -> Result<bool, reqwest::Error> {
        let key = access_key(url, headers);
        let now = Instant::now();
        if self.lock().get(&key).is_some_and(|&until| until > now) {
            return Ok(true);
        }
        let resp = client
            .head(url.clone())
            .headers(headers.clone())
            .send()
            .await?;
        let status = resp.status();
        let ok = status.is_success() || status.is_redirection();
        if ok && !self.ttl.is_zero() {
            let mut allowed = self.lock();
            if allowed.len() >= MAX_ACCESS_ENTRIES {
                allowed.retain(|_, until| *until > now);
                if allowed.len() >= MAX_ACCESS_ENTRIES {
                    allowed.clear();
                }
            }
            allowed.insert(key, now + self.ttl);
        }
        Ok(ok)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Instant>> {
        self.allowed.lock().expect("access cache lock")
    }
}

fn access_key(url: &Url, headers: &HeaderMap) -> [u8; 32] {
    let mut h = sha2::Sha256::new();
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
        assert_ne!(access_key(&u1, &a), access_key(&u1, &b));
        assert_ne!(access_key(&u1, &a), access_key(&u2, &a));
        assert_ne!(access_key(&u1, &a), access_key(&u1, &HeaderMap::new()));
        assert_eq!(access_key(&u1, &a), access_key(&u1, &a.clone()));
    }
}
