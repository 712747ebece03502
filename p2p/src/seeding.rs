//! The jobs a scheduler sends a host, as the node sees them: a [`JobHandler`] takes them. A seed's
//! (`shoal-seed`) fetches tasks from the origin for the swarm; every other host runs
//! [`Preheat`]: a job puts the task on its disk through the swarm (a preheat to `all_peers`),
//! going to the origin only when its scheduler says so.

use std::sync::Arc;

use futures_util::future::BoxFuture;

use crate::download::{DownloadRequest, Downloader, Progress};
use crate::error::{Error, Result};
use crate::proto::{Job, Task};

/// What a host does with the jobs its schedulers send.
pub trait JobHandler: Send + Sync + 'static {
    /// Runs one job to its end with this host's `downloader`. The node runs each job on a task
    /// of its own and lets it finish at shutdown within its grace period.
    fn run(&self, downloader: Arc<Downloader>, job: Job) -> BoxFuture<'static, ()>;
}

/// The jobs of a host that is not a seed: each one a download of its task, through the swarm,
/// into this host's store (a preheat onto the host).
#[derive(Clone, Copy, Debug, Default)]
pub struct Preheat;

impl JobHandler for Preheat {
    fn run(&self, downloader: Arc<Downloader>, job: Job) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            let Some(task) = job.task else { return };
            let result = match task.download_request() {
                Ok(req) => downloader
                    .download(&req, &Progress::default())
                    .await
                    .map(drop),
                Err(e) => Err(e),
            };
            match result {
                Ok(()) => tracing::info!(task = task.id, "preheated"),
                Err(e) => tracing::warn!(task = task.id, error = %e, "preheat job failed"),
            }
        })
    }
}

impl Task {
    /// The download a job for this task asks for: the task's URL with the requester's headers
    /// (marked sensitive: they may hold credentials), its id, and its digest when it has one.
    /// The URL must be the task's: it hashes to the task id with the job's id options (a blob
    /// URL names the blob's digest; see [`Task::checked_url`]). Anything else is refused before
    /// any request is made, so a job cannot make a task of other content. (Which hosts may be
    /// reached is not limited here: a blob URL may name any registry; its content is checked
    /// against the digest.)
    pub fn download_request(&self) -> Result<DownloadRequest> {
        let (task_id, url, id_options) = self
            .checked_url()
            .map_err(|why| Error::InvalidRequest(format!("job URL: {why}")))?;
        let mut headers = http::HeaderMap::new();
        for h in &self.headers {
            let name = http::HeaderName::from_bytes(h.name.as_bytes());
            let value = http::HeaderValue::from_bytes(&h.value);
            if let (Ok(k), Ok(v)) = (name, value) {
                headers.append(k, v);
            }
        }
        crate::origin::mark_sensitive(&mut headers);
        Ok(DownloadRequest {
            origin: crate::origin::OriginRequest { url, headers },
            id_options,
            digest: self.digest.parse().ok(),
            task_id: Some(task_id),
        })
    }
}
