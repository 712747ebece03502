//! A download's link to the swarm: the task's watch stream at its scheduler and the last view
//! it sent (content length, piece digests, parents, whether to go to the origin).

use crate::id::TaskId;
use crate::proto::{Header, Task, TaskView};
use crate::store::Holdings;
use crate::swarm::Swarm;

use super::request::DownloadRequest;

/// The swarm side of a download, when there is one.
pub(crate) struct SwarmLink<'a> {
    pub swarm: &'a Swarm,
    pub holdings: &'a Holdings,
    pub peers: reqwest::Client,
    /// The open watch stream (None once lost).
    pub stream: Option<tonic::Streaming<TaskView>>,
    pub view: TaskView,
}

impl SwarmLink<'_> {
    /// Waits for the swarm to tell the content length. `None` when this host must learn it
    /// from the origin: it is the fetcher, or no length came within the stall timeout.
    pub(crate) async fn wait_for_length(&mut self) -> Option<u64> {
        let deadline = tokio::time::Instant::now() + self.swarm.config().stall_timeout;
        loop {
            if self.view.length_known {
                return Some(self.view.content_length);
            }
            if self.view.back_to_source || self.view.failure.is_some() {
                return None;
            }
            let stream = self.stream.as_mut()?;
            match tokio::time::timeout_at(deadline, stream.message()).await {
                Ok(Ok(Some(view))) => self.view = view,
                _ => return None,
            }
        }
    }
}

/// The next view on the link's stream; `None` when the stream ended or failed.
pub(crate) async fn next_view(link: &mut Option<SwarmLink<'_>>) -> Option<TaskView> {
    let stream = link.as_mut()?.stream.as_mut()?;
    stream.message().await.ok().flatten()
}

/// The scheduler's description of a task (the headers go to whoever fetches from the origin).
pub(crate) fn task_message(id: &TaskId, req: &DownloadRequest) -> Task {
    Task {
        id: id.to_string(),
        url: req.origin.url.to_string(),
        headers: req
            .origin
            .headers
            .iter()
            .map(|(k, v)| Header {
                name: k.to_string(),
                value: v.as_bytes().to_vec(),
            })
            .collect(),
        digest: req.digest.map(|d| d.to_string()).unwrap_or_default(),
        id_options: Some((&req.id_options).into()),
    }
}
