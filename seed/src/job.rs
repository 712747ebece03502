//! Seed jobs: what the scheduler asks a seed to fetch, turned into a download.

use std::sync::Arc;

use futures_util::future::BoxFuture;
use shoal_p2p::proto::{Job, Task};
use shoal_p2p::{DownloadRequest, Downloader, Error, JobHandler, OriginRequest, Progress, Result};

/// The seed role: runs every seed job as a download from the origin.
#[derive(Clone, Copy, Debug, Default)]
pub struct Seed;

impl JobHandler for Seed {
    fn run(&self, downloader: Arc<Downloader>, job: Job) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            let Some(task) = job.task else { return };
            match request(&task) {
                Ok(req) => {
                    if let Err(e) = downloader.download(&req, &Progress::default()).await {
                        tracing::warn!(task = task.id, error = %e, "seed job failed");
                    }
                }
                Err(e) => tracing::warn!(task = task.id, error = %e, "bad seed job"),
            }
        })
    }
}

/// The download a seed job asks for: the task's URL with the requester's headers (marked
/// sensitive: they may hold credentials), its id, and its digest when it has one.
fn request(task: &Task) -> Result<DownloadRequest> {
    let url: url::Url = task
        .url
        .parse()
        .map_err(|e| Error::InvalidRequest(format!("seed job URL: {e}")))?;
    let mut headers = http::HeaderMap::new();
    for h in &task.headers {
        let name = http::HeaderName::from_bytes(h.name.as_bytes());
        let value = http::HeaderValue::from_bytes(&h.value);
        if let (Ok(k), Ok(v)) = (name, value) {
            headers.append(k, v);
        }
    }
    shoal_p2p::origin::mark_sensitive(&mut headers);
    let task_id = task
        .id
        .parse()
        .map_err(|e: shoal_p2p::id::ParseTaskIdError| Error::InvalidRequest(e.to_string()))?;
    Ok(DownloadRequest {
        origin: OriginRequest { url, headers },
        id_options: Default::default(),
        digest: task.digest.parse().ok(),
        task_id: Some(task_id),
    })
}

#[cfg(test)]
mod tests {
    use shoal_p2p::proto::Header;

    use super::*;

    #[test]
    fn a_job_becomes_a_download_with_its_headers_hidden() {
        let digest = format!("sha256:{}", "ab".repeat(32));
        let task = Task {
            id: digest.clone(),
            url: format!("http://registry:5000/v2/a/blobs/{digest}"),
            headers: vec![Header {
                name: "Authorization".into(),
                value: b"Bearer secret".to_vec(),
            }],
            digest: digest.clone(),
        };
        let req = request(&task).unwrap();
        assert_eq!(req.task_id().as_str(), digest);
        assert_eq!(req.digest.unwrap().to_string(), digest);
        let auth = req.origin.headers.get("authorization").unwrap();
        assert!(auth.is_sensitive());
        assert!(!format!("{req:?}").contains("secret"));
        let bad = Task {
            url: "not a url".into(),
            ..task
        };
        assert!(request(&bad).is_err());
    }
}
