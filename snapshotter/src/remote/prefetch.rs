//! Prefetch (DESIGN.md "Lazy pulling"): the first host to run a layer records the compressed
//! spans its reads needed, from the mount to [`Mounted::record_for`] after the first read, and
//! publishes them through the node's mirror as the layer's prefetch list; the next hosts'
//! mounts make those spans present first, in the order they were read.

use std::sync::{Arc, Mutex};

use http::HeaderValue;
use http::header::HeaderMap;
use shoal_p2p::Digest;
use shoal_p2p::api::{LAZY_HEADER, PrefetchList};

use super::lazy::{COMPLETE_CHECK, INDEX_WAIT, Mounted, derived, present};
use super::stage::Source;
use crate::error::{Error, Result};

/// What a layer's first reads needed, while they are recorded for its prefetch list.
pub(super) struct Recording {
    /// `Some` while reads are recorded.
    pub list: Mutex<Option<PrefetchList>>,
    pub first_read: tokio::sync::Notify,
}

/// With the layer's prefetch list from the swarm, makes its spans present, in order; without
/// one (the first host to run the layer), records what the reads need for
/// [`Mounted::record_for`] after the first and publishes it.
pub(super) async fn prefetch_or_record(
    source: Source,
    mounted: Arc<Mounted>,
    id: u64,
    digest: Digest,
    layer_bytes: u64,
    recording: Arc<Recording>,
) {
    let found = tokio::time::timeout(INDEX_WAIT, prefetch_list(&source, digest, layer_bytes)).await;
    if let Ok(Ok(list)) = found {
        *recording.list.lock().expect("recording lock") = None;
        let started = std::time::Instant::now();
        for range in &list.ranges {
            if !mounted.holds(id) {
                return;
            }
            if let Err(e) = present(&source, digest, range.clone()).await {
                tracing::warn!(layer = %digest, error = %e, "prefetch stopped");
                return;
            }
            mounted.metrics.prefetched.inc_by(range.end - range.start);
        }
        tracing::info!(layer = %digest, spans = list.ranges.len(), bytes = list.bytes(), took = ?started.elapsed(), "prefetched the layer's first reads");
        return;
    }
    if recording.list.lock().expect("recording lock").is_none() {
        return;
    }
    // A layer nobody reads records nothing: given up when it is unmounted.
    while tokio::time::timeout(COMPLETE_CHECK, recording.first_read.notified())
        .await
        .is_err()
    {
        if !mounted.holds(id) {
            return;
        }
    }
    tokio::time::sleep(mounted.record_for).await;
    let list = recording.list.lock().expect("recording lock").take();
    let Some(list) = list.filter(|l| !l.ranges.is_empty()) else {
        return;
    };
    match publish_prefetch(&source, digest, &list).await {
        Ok(()) => {
            tracing::info!(layer = %digest, spans = list.ranges.len(), bytes = list.bytes(), "the layer's first reads published for the next hosts' prefetch")
        }
        Err(e) if e.status() == Some(409) => {
            tracing::info!(layer = %digest, "another host's prefetch list came first: it stands")
        }
        Err(e) => {
            tracing::warn!(layer = %digest, error = %e, "the layer's prefetch list was not published")
        }
    }
}

/// The layer's prefetch list, from the swarm through the node's mirror.
async fn prefetch_list(source: &Source, digest: Digest, layer_bytes: u64) -> Result<PrefetchList> {
    let bytes = derived(
        source,
        digest,
        ("prefetch", "prefetch list"),
        PrefetchList::MAGIC,
        PrefetchList::MAX_BYTES as usize,
    )
    .await?;
    PrefetchList::from_bytes(&bytes, layer_bytes)
        .map_err(|e| Error::Remote(format!("the layer's prefetch list: {e}")))
}

/// Publishes `list` as the layer's prefetch list, through the node's mirror.
async fn publish_prefetch(
    source: &Source,
    digest: Digest,
    list: &PrefetchList,
) -> shoal_seed::Result<()> {
    let mut extra = HeaderMap::new();
    extra.insert(LAZY_HEADER, HeaderValue::from_static("prefetch"));
    source
        .registry
        .put_blob_with(&source.repository, digest, &extra, list.to_bytes())
        .await?;
    Ok(())
}
