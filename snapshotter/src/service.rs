//! The Snapshots gRPC service over [`Snapshotter`]: requests are converted, the operation runs
//! on the blocking pool (metadata commits wait for the disk), and errors become the status
//! codes containerd acts on.

use std::collections::{BTreeMap, HashMap};
use std::pin::Pin;
use std::sync::Arc;

use futures_util::Stream;
use tonic::{Request, Response, Status};

use crate::filter::{self, Filter};
use crate::proto::snapshots::snapshots_server::Snapshots;
use crate::proto::snapshots::{
    CleanupRequest, CommitSnapshotRequest, Info, ListSnapshotsRequest, ListSnapshotsResponse,
    MountsRequest, MountsResponse, PrepareSnapshotRequest, PrepareSnapshotResponse,
    RemoveSnapshotRequest, StatSnapshotRequest, StatSnapshotResponse, UpdateSnapshotRequest,
    UpdateSnapshotResponse, UsageRequest, UsageResponse, ViewSnapshotRequest, ViewSnapshotResponse,
};
use crate::proto::types;
use crate::snapshots::{Kind, Mount, Snapshot, Snapshotter};

/// Infos per `List` message.
const LIST_BATCH: usize = 100;

pub struct Service {
    pub snapshotter: Arc<Snapshotter>,
    pub remote: Option<Arc<crate::Remote>>,
}

impl Service {
    /// Runs `op` on the blocking pool.
    async fn run<T: Send + 'static>(
        &self,
        op: impl FnOnce(&Snapshotter) -> crate::Result<T> + Send + 'static,
    ) -> Result<T, Status> {
        let snapshotter = self.snapshotter.clone();
        tokio::task::spawn_blocking(move || op(&snapshotter))
            .await
            .map_err(|e| Status::internal(format!("snapshot operation failed: {e}")))?
            .map_err(Status::from)
    }
}

fn labels(map: HashMap<String, String>) -> BTreeMap<String, String> {
    map.into_iter().collect()
}

fn mounts(mounts: Vec<Mount>) -> Vec<types::Mount> {
    mounts
        .into_iter()
        .map(|m| types::Mount {
            r#type: m.kind,
            source: m.source,
            target: String::new(),
            options: m.options,
        })
        .collect()
}

fn info(s: Snapshot) -> Info {
    let kind = match s.kind {
        Kind::View => crate::proto::snapshots::Kind::View,
        Kind::Active => crate::proto::snapshots::Kind::Active,
        Kind::Committed => crate::proto::snapshots::Kind::Committed,
    };
    Info {
        name: s.name,
        parent: s.parent,
        kind: kind as i32,
        created_at: Some(s.created.into()),
        updated_at: Some(s.updated.into()),
        labels: s.labels.into_iter().collect(),
    }
}

type InfoStream = Pin<Box<dyn Stream<Item = Result<ListSnapshotsResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Snapshots for Service {
    type ListStream = InfoStream;

    async fn prepare(
        &self,
        request: Request<PrepareSnapshotRequest>,
    ) -> Result<Response<PrepareSnapshotResponse>, Status> {
        let lent = request
            .metadata()
            .get(crate::cri::LEND)
            .and_then(|v| v.to_str().ok())
            .and_then(crate::cri::from_authorization);
        let req = request.into_inner();
        let labels = labels(req.labels);
        if let Some(remote) = &self.remote {
            if let (Some(credentials), Some(image)) = (lent, labels.get(crate::remote::IMAGE_REF)) {
                remote.keychain.keep(image, credentials);
            }
            // Err(AlreadyExists) when the layer is committed: containerd fetches nothing.
            remote
                .prepare(&self.snapshotter, &req.parent, &labels)
                .await?;
        }
        let m = self
            .run(move |s| s.prepare(&req.key, &req.parent, labels))
            .await?;
        Ok(Response::new(PrepareSnapshotResponse { mounts: mounts(m) }))
    }

    async fn view(
        &self,
        request: Request<ViewSnapshotRequest>,
    ) -> Result<Response<ViewSnapshotResponse>, Status> {
        let req = request.into_inner();
        let labels = labels(req.labels);
        let m = self
            .run(move |s| s.view(&req.key, &req.parent, labels))
            .await?;
        Ok(Response::new(ViewSnapshotResponse { mounts: mounts(m) }))
    }

    async fn mounts(
        &self,
        request: Request<MountsRequest>,
    ) -> Result<Response<MountsResponse>, Status> {
        let key = request.into_inner().key;
        let m = self.run(move |s| s.mounts(&key)).await?;
        Ok(Response::new(MountsResponse { mounts: mounts(m) }))
    }

    async fn commit(
        &self,
        request: Request<CommitSnapshotRequest>,
    ) -> Result<Response<()>, Status> {
        let req = request.into_inner();
        let labels = labels(req.labels);
        self.run(move |s| s.commit(&req.name, &req.key, labels))
            .await?;
        Ok(Response::new(()))
    }

    async fn remove(
        &self,
        request: Request<RemoveSnapshotRequest>,
    ) -> Result<Response<()>, Status> {
        let key = request.into_inner().key;
        let remote = self.remote.clone();
        self.run(move |s| {
            s.remove_then(&key, |id| {
                if let Some(r) = &remote {
                    r.unmount(s, id);
                }
            })
        })
        .await?;
        Ok(Response::new(()))
    }

    async fn stat(
        &self,
        request: Request<StatSnapshotRequest>,
    ) -> Result<Response<StatSnapshotResponse>, Status> {
        let key = request.into_inner().key;
        let s = self.run(move |s| s.stat(&key)).await?;
        Ok(Response::new(StatSnapshotResponse {
            info: Some(info(s)),
        }))
    }

    async fn update(
        &self,
        request: Request<UpdateSnapshotRequest>,
    ) -> Result<Response<UpdateSnapshotResponse>, Status> {
        let req = request.into_inner();
        let given = req
            .info
            .ok_or_else(|| Status::invalid_argument("an update needs the snapshot's info"))?;
        let paths = req.update_mask.map(|m| m.paths).unwrap_or_default();
        let labels = labels(given.labels);
        let s = self
            .run(move |s| s.update(&given.name, labels, &paths))
            .await?;
        Ok(Response::new(UpdateSnapshotResponse {
            info: Some(info(s)),
        }))
    }

    async fn list(
        &self,
        request: Request<ListSnapshotsRequest>,
    ) -> Result<Response<Self::ListStream>, Status> {
        let filters = request
            .into_inner()
            .filters
            .iter()
            .map(|f| Filter::parse(f))
            .collect::<Result<Vec<_>, _>>()
            .map_err(Status::invalid_argument)?;
        let all = self.run(Snapshotter::list).await?;
        // Layers being unpacked ahead are not containerd's (its garbage collector would
        // remove them).
        let infos: Vec<Info> = all
            .into_iter()
            .filter(|s| !crate::remote::internal(&s.name) && filter::any(&filters, s))
            .map(info)
            .collect();
        let batches: Vec<Result<ListSnapshotsResponse, Status>> = infos
            .chunks(LIST_BATCH)
            .map(|c| Ok(ListSnapshotsResponse { info: c.to_vec() }))
            .collect();
        Ok(Response::new(Box::pin(futures_util::stream::iter(batches))))
    }

    async fn usage(
        &self,
        request: Request<UsageRequest>,
    ) -> Result<Response<UsageResponse>, Status> {
        let key = request.into_inner().key;
        let u = self.run(move |s| s.usage(&key)).await?;
        Ok(Response::new(UsageResponse {
            size: u.size,
            inodes: u.inodes,
        }))
    }

    async fn cleanup(&self, _: Request<CleanupRequest>) -> Result<Response<()>, Status> {
        let removed = self.run(Snapshotter::cleanup).await?;
        if removed > 0 {
            tracing::info!(removed, "removed snapshot directories no snapshot owned");
        }
        Ok(Response::new(()))
    }
}
