//! The store's garbage collection (`[gc]`): when the disk (or the store's own `capacity`) is
//! fuller than the high watermark, tasks are removed, least recently used first, until it is
//! down to the low one. A task downloading or being read (a local reader, an upload to a peer)
//! is never removed, and every removed task is withdrawn from its scheduler, so that no peer is
//! sent to this host for it. Dragonfly's `gc.policy` has the same watermarks (80 % and 60 %).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use shoal_p2p::store::{AsyncStore, Holdings};
use shoal_p2p::{Result, Swarm, TaskId};

/// The `[gc]` table.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct GcConfig {
    /// How often the store's use is checked.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Percent of the capacity above which tasks are removed...
    pub high_watermark: u8,
    /// ...until the use is down to this percent.
    pub low_watermark: u8,
    /// Bytes of task content the store may hold. 0: the filesystem holding the data directory
    /// is the capacity, and its use (by anything) is what the watermarks are checked against.
    pub capacity: u64,
}

impl Default for GcConfig {
    fn default() -> Self {
        GcConfig {
            interval: Duration::from_secs(60),
            high_watermark: 80,
            low_watermark: 60,
            capacity: 0,
        }
    }
}

impl GcConfig {
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.interval.is_zero() {
            return Err("gc.interval must be greater than zero".into());
        }
        if self.low_watermark >= self.high_watermark || self.high_watermark > 100 {
            return Err("gc watermarks need low_watermark < high_watermark <= 100".into());
        }
        Ok(())
    }
}

/// What the collector works on.
pub(crate) struct Collector {
    pub config: GcConfig,
    pub store: AsyncStore,
    pub holdings: Arc<Holdings>,
    pub swarm: Option<Arc<Swarm>>,
}

impl Collector {
    /// Collects every `interval` until `stop` resolves.
    pub async fn run(self, stop: impl std::future::Future<Output = ()>) {
        tokio::pin!(stop);
        loop {
            tokio::select! {
                () = tokio::time::sleep(self.config.interval) => {}
                () = &mut stop => return,
            }
            if let Err(e) = self.collect().await {
                tracing::warn!(error = %e, "garbage collection failed");
            }
        }
    }

    /// Removes what must go now; returns the removed tasks.
    pub async fn collect(&self) -> Result<Vec<TaskId>> {
        let mut tasks = self.store.list().await?;
        let stored: u64 = tasks.iter().map(|(_, m)| m.layout.content_length).sum();
        let (used, capacity) = match self.config.capacity {
            0 => disk_use(self.store.root())?,
            capacity => (stored, capacity),
        };
        let percent = |p: u8| u128::from(capacity) * u128::from(p) / 100;
        if u128::from(used) <= percent(self.config.high_watermark) {
            return Ok(Vec::new());
        }
        let mut excess = u128::from(used) - percent(self.config.low_watermark);
        tasks.sort_by_key(|(_, m)| m.accessed_at);
        let mut removed = Vec::new();
        for (id, meta) in tasks {
            if excess == 0 {
                break;
            }
            if self.holdings.in_use(&id) {
                continue;
            }
            self.store.remove(&id).await?;
            tracing::info!(task = %id, bytes = meta.layout.content_length, "removed by garbage collection");
            if let Some(swarm) = &self.swarm {
                swarm.withdraw(&id).await;
            }
            excess = excess.saturating_sub(u128::from(meta.layout.content_length));
            removed.push(id);
        }
        if excess > 0 {
            tracing::warn!(
                short = %excess,
                "the store is over its high watermark and every task left is in use"
            );
        }
        Ok(removed)
    }
}

/// Bytes used and the size of the filesystem holding `dir`.
pub fn disk_use(dir: &Path) -> Result<(u64, u64)> {
    let st = nix::sys::statvfs::statvfs(dir)
        .map_err(|e| shoal_p2p::Error::io("stat the store's filesystem", dir, e.into()))?;
    let unit = st.fragment_size() as u64;
    let total = st.blocks() as u64 * unit;
    let available = st.blocks_available() as u64 * unit;
    Ok((total.saturating_sub(available), total))
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_p2p::piece::Layout;

    /// A task of `len` bytes.
    fn task(store: &shoal_p2p::store::Store, name: &str, len: u64) -> TaskId {
        let id = TaskId::for_url(
            &format!("http://h/{name}").parse().unwrap(),
            &Default::default(),
        );
        let layout = Layout::for_length(len).unwrap();
        store.open_task(&id, "u", layout, &[]).unwrap();
        id
    }

    #[tokio::test]
    async fn over_the_high_watermark_least_recently_used_go_first_never_one_in_use() {
        let dir = tempfile::tempdir().unwrap();
        let mib = 1 << 20;
        let ids: Vec<TaskId> = {
            let store = shoal_p2p::store::Store::open(dir.path()).unwrap();
            let ids = (0..5)
                .map(|i| task(&store, &format!("t{i}"), 2 * mib))
                .collect();
            drop(store);
            ids
        };
        let store = AsyncStore::open(dir.path()).unwrap();
        // Access order: t0 oldest ... t4 newest (seconds apart in the records).
        for (i, id) in ids.iter().enumerate() {
            let id = id.clone();
            store
                .call(move |s| s.set_accessed(&id, 1_000 + i as u64))
                .await
                .unwrap();
        }
        let holdings = Arc::new(Holdings::default());
        let collector = Collector {
            // 10 MiB held of 12: over 80 % (9.6 MiB); down to 50 % (6 MiB) takes two tasks.
            config: GcConfig {
                capacity: 12 * mib,
                high_watermark: 80,
                low_watermark: 50,
                ..GcConfig::default()
            },
            store: store.clone(),
            holdings: holdings.clone(),
            swarm: None,
        };
        // t0, the oldest, is being read: t1 and t2 go instead.
        let reading = holdings.reading(&ids[0]);
        assert_eq!(
            collector.collect().await.unwrap(),
            vec![ids[1].clone(), ids[2].clone()]
        );
        assert!(store.meta(&ids[0]).await.unwrap().is_some());
        assert!(!store.data_path(&ids[1]).exists());
        // Under the high watermark now: nothing more goes.
        drop(reading);
        assert!(collector.collect().await.unwrap().is_empty());
        assert_eq!(store.list().await.unwrap().len(), 3);
    }

    #[test]
    fn watermarks_are_checked() {
        assert!(GcConfig::default().validate().is_ok());
        let bad = GcConfig {
            low_watermark: 90,
            ..GcConfig::default()
        };
        assert!(bad.validate().is_err());
    }
}
