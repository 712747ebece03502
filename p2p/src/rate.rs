//! Bandwidth limits (`[limits] download_rate`, `upload_rate`, `origin_rate`): a token bucket
//! shared by everything one limit covers. Bytes are taken as they move; taking more than the
//! bucket holds leaves it in debt, and the taker waits until the debt is paid back at the rate,
//! so the average stays at the rate and a burst is at most one second of it.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// A bandwidth limit in bytes per second.
pub struct RateLimit {
    rate: f64,
    bucket: Mutex<Bucket>,
}

struct Bucket {
    /// Bytes that may go now (negative: owed).
    tokens: f64,
    at: Instant,
}

impl RateLimit {
    /// `bytes_per_sec` on average; `None` for 0 (no limit).
    pub fn new(bytes_per_sec: u64) -> Option<std::sync::Arc<RateLimit>> {
        (bytes_per_sec > 0).then(|| {
            std::sync::Arc::new(RateLimit {
                rate: bytes_per_sec as f64,
                bucket: Mutex::new(Bucket {
                    tokens: bytes_per_sec as f64,
                    at: Instant::now(),
                }),
            })
        })
    }

    /// Takes `n` bytes, waiting while the bucket is in debt.
    pub async fn take(&self, n: usize) {
        let wait = {
            let mut b = self
                .bucket
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let now = Instant::now();
            let refill = now.duration_since(b.at).as_secs_f64() * self.rate;
            b.tokens = (b.tokens + refill).min(self.rate) - n as f64;
            b.at = now;
            (b.tokens < 0.0).then(|| Duration::from_secs_f64(-b.tokens / self.rate))
        };
        if let Some(wait) = wait {
            tokio::time::sleep(wait).await;
        }
    }
}

/// Takes `n` bytes of `limit`, if there is one.
pub async fn take(limit: Option<&RateLimit>, n: usize) {
    if let Some(l) = limit {
        l.take(n).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_average_is_the_rate_after_a_burst_of_one_second() {
        let limit = RateLimit::new(16 << 20).unwrap();
        let start = Instant::now();
        // One second's worth goes at once...
        limit.take(16 << 20).await;
        assert!(start.elapsed() < Duration::from_millis(50));
        // ...then 8 MiB take half a second, however they are cut.
        for _ in 0..128 {
            limit.take(64 << 10).await;
        }
        let took = start.elapsed().as_secs_f64();
        assert!((0.48..0.7).contains(&took), "{took} s");
        assert!(RateLimit::new(0).is_none());
    }
}
