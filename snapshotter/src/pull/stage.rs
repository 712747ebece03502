//! `shoal pull`'s layers made in the shoal snapshotter itself, before containerd asks for them.

use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

use shoal_seed::registry::Credentials;
use tonic::Request;

use crate::client::connect;
use crate::proto::snapshots::PrepareSnapshotRequest;
use crate::proto::snapshots::snapshots_client::SnapshotsClient;
use crate::remote::TARGET;

/// Makes the layers in the shoal snapshotter itself, through its own socket, bottom first: each
/// it reads through the node is committed under its chain id, and containerd's prepare of it
/// then only finds it. Stops at the first layer it cannot make (containerd's prepare then does
/// the rest). `lend`: this pull's credentials, lent to the snapshotter for the image's layers
/// (only if a user of ours or root owns the socket). Returns the seconds each layer made took.
pub(super) async fn stage(
    socket: &Path,
    snapshotter: &str,
    count: usize,
    labels: &dyn Fn(usize) -> HashMap<String, String>,
    parent_of: &dyn Fn(usize) -> String,
    lend: Option<&Credentials>,
) -> Vec<f64> {
    let lend = lend
        .filter(|_| owned_by_us_or_root(socket))
        .and_then(Credentials::authorization)
        .and_then(|h| tonic::metadata::MetadataValue::try_from(h.as_bytes()).ok());
    let mut took = Vec::new();
    let Ok(channel) = connect(socket).await else {
        return took;
    };
    let mut direct = SnapshotsClient::new(channel);
    for i in 0..count {
        let started = Instant::now();
        let key = format!("shoal-pull-stage/{}", labels(i)[TARGET]);
        let mut req = Request::new(PrepareSnapshotRequest {
            snapshotter: snapshotter.to_owned(),
            key: key.clone(),
            parent: parent_of(i),
            labels: labels(i),
        });
        if let Some(value) = &lend {
            let mut value = value.clone();
            value.set_sensitive(true);
            req.metadata_mut().insert(crate::cri::LEND, value);
        }
        let made = direct.prepare(req).await;
        match made {
            Err(s) if s.code() == tonic::Code::AlreadyExists => {
                took.push(started.elapsed().as_secs_f64());
            }
            Ok(_) => {
                // Not read through the node: the plain snapshot just made is not wanted.
                let _ = direct
                    .remove(crate::proto::snapshots::RemoveSnapshotRequest {
                        snapshotter: snapshotter.to_owned(),
                        key,
                    })
                    .await;
                break;
            }
            Err(_) => break,
        }
    }
    took
}

/// Whether the file at `path` belongs to this process's user or to root (credentials go only
/// to a snapshotter one of them runs).
fn owned_by_us_or_root(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata(path)
        .is_ok_and(|m| m.uid() == 0 || m.uid() == nix::unistd::geteuid().as_raw())
}
