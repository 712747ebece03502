//! The seed job for a layer's gzip index (lazy pulling): the seed reads the layer (from its
//! store, the swarm or the registry, with the requester's credentials, checked against its
//! digest), builds the index while the bytes go past, and publishes it as the index task with
//! its piece digests, which the scheduler believes from a seed. Peers then fetch it like any
//! task. A layer that is not gzip (zstd, uncompressed, eStargz's own TOC aside) has no index:
//! the job fails and the requesters take the eager path.

use std::sync::Arc;

use shoal_p2p::id::oci_blob_digest;
use shoal_p2p::{ChunkReader, DownloadRequest, Downloader, Error, IdOptions, Result, TaskId};

use crate::gzindex::{DEFAULT_SPAN, LayerIndex};

/// Builds the index of the layer `req` names (a blob URL with the index's application) and
/// publishes it under `req`'s task id.
pub(super) async fn build(downloader: &Arc<Downloader>, req: &DownloadRequest) -> Result<()> {
    let index_id = req.task_id();
    let digest = oci_blob_digest(&req.origin.url).ok_or_else(|| {
        Error::InvalidRequest("a gzip index job must name a layer's blob URL".into())
    })?;
    let layer = DownloadRequest {
        origin: req.origin.clone(),
        id_options: IdOptions::default(),
        digest: Some(digest),
        task_id: None,
    };
    let reading = downloader
        .read(layer)
        .await
        .map_err(|e| Error::InvalidRequest(format!("reading the layer: {e}")))?;
    let len = reading.content_length();
    // The stream ends cleanly only once the whole layer matched its digest.
    let bytes = reading.stream(0..len);
    let built = tokio::task::spawn_blocking(move || {
        LayerIndex::build(ChunkReader::new(bytes), DEFAULT_SPAN)
    })
    .await
    .map_err(|e| Error::InvalidRequest(format!("building the index stopped: {e}")))?
    .map_err(|e| Error::InvalidRequest(format!("layer {digest} has no gzip index: {e}")))?;
    // The index derives from the layer: it comes from where the layer came from.
    let sources = downloader
        .store()
        .meta(&TaskId::for_blob(&digest))
        .await?
        .map(|m| m.sources)
        .unwrap_or_default();
    let bytes = built.to_bytes();
    tracing::info!(layer = %digest, files = built.files.len(), checkpoints = built.index.checkpoints.len(), bytes = bytes.len(), "gzip index built");
    downloader
        .publish(&index_id, req.origin.display_url(), bytes, sources)
        .await?;
    Ok(())
}
