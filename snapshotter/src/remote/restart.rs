//! A restarted snapshotter's lazy layers: the mounts a crash left dead are detached, and each
//! committed lazy layer is mounted again (its index fetched anew and checked again).

use std::sync::Arc;
use std::time::Duration;

use shoal_p2p::Digest;

use super::lazy::{INDEX_WAIT, Mounted, attach, index};
use super::stage::Source;
use super::{chain_id, parent_chain};
use crate::error::{Error, Result};
use crate::snapshots::Snapshotter;

/// How long a restarted snapshotter tries to get the lazy layers' indexes again (the node may
/// be starting beside it) before it unpacks them instead.
pub(super) const RESTORE_FOR: Duration = Duration::from_secs(30);

/// Mounts the lazy layer of the committed snapshot `s` again, after a restart, trying until
/// `until` for its index.
pub(super) async fn remount(
    snapshotter: &Arc<Snapshotter>,
    mounted: &Arc<Mounted>,
    source: &Source,
    s: &crate::snapshots::Snapshot,
    digest: Digest,
    until: std::time::Instant,
) -> Result<()> {
    let index = loop {
        match tokio::time::timeout(INDEX_WAIT, index(source, digest)).await {
            Ok(Ok(index)) => break index,
            failed if std::time::Instant::now() > until => {
                let why = match failed {
                    Ok(Err(e)) => e.to_string(),
                    _ => format!("no index within {INDEX_WAIT:?}"),
                };
                return Err(Error::Remote(why));
            }
            _ => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    };
    let made = chain_id(parent_chain(&s.parent), &index.diff_id.to_string());
    if made != s.name {
        return Err(Error::Remote(format!(
            "the layer's index makes chain id {made}, not {}",
            s.name
        )));
    }
    // Its first reads were this host's before the restart: not recorded again.
    attach(snapshotter, mounted, source, digest, s.id, index, false).await?;
    tracing::info!(layer = %digest, snapshot = s.name, "lazy layer mounted again");
    Ok(())
}

/// Lazy layers' mounts a stopped snapshotter left under `root` (a crash leaves them dead:
/// "transport endpoint is not connected"), detached.
pub(super) fn unmount_stale(root: &std::path::Path) {
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") else {
        return;
    };
    let under = root.join("snapshots");
    for line in mounts.lines() {
        let mut fields = line.split(' ');
        let (Some(_), Some(at), Some(kind)) = (fields.next(), fields.next(), fields.next()) else {
            continue;
        };
        // The kernel writes a space in a path as \040.
        let at = std::path::PathBuf::from(at.replace("\\040", " "));
        if kind.starts_with("fuse") && at.starts_with(&under) {
            let done = std::process::Command::new("umount")
                .arg("-l")
                .arg(&at)
                .status();
            match done {
                Ok(s) if s.success() => {
                    tracing::info!(at = %at.display(), "a stale lazy layer mount detached")
                }
                _ => {
                    tracing::warn!(at = %at.display(), "could not detach a stale lazy layer mount")
                }
            }
        }
    }
}
