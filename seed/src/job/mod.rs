//! Seed jobs: what the scheduler asks a seed to fetch, turned into a download.

mod index;

use std::sync::Arc;

use futures_util::future::BoxFuture;
use shoal_p2p::id::GZIP_INDEX;
use shoal_p2p::proto::{Failure, Job, Task};
use shoal_p2p::{Downloader, Error, JobHandler, Progress, TaskId};

/// The seed role: runs every seed job as a download from the origin.
#[derive(Clone, Copy, Debug, Default)]
pub struct Seed;

impl JobHandler for Seed {
    fn run(&self, downloader: Arc<Downloader>, job: Job) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            let Some(task) = job.task else { return };
            match task.download_request() {
                Ok(req) if req.id_options.application.as_deref() == Some(GZIP_INDEX) => {
                    if let Err(e) = index::build(&downloader, &req).await {
                        tracing::warn!(task = task.id, error = %e, "gzip index not built");
                        refuse(&downloader, &task, &e).await;
                    }
                }
                Ok(req) if req.swarm_only() => {
                    // A prefetch list: its author publishes it, nobody fetches it.
                    let e = Error::InvalidRequest("content only its author publishes".into());
                    refuse(&downloader, &task, &e).await;
                }
                Ok(req) => {
                    if let Err(e) = downloader.download(&req, &Progress::default()).await {
                        tracing::warn!(task = task.id, error = %e, "seed job failed");
                    }
                }
                Err(e) => {
                    tracing::warn!(task = task.id, error = %e, "bad seed job");
                    refuse(&downloader, &task, &e).await;
                }
            }
        })
    }
}

/// Tells the scheduler this seed will not fetch the task, so its watchers go to the origin
/// themselves at once instead of waiting for the seed.
async fn refuse(downloader: &Downloader, task: &Task, e: &Error) {
    let (Some(swarm), Ok(id)) = (downloader.swarm(), task.id.parse::<TaskId>()) else {
        return;
    };
    let failure = Failure {
        http_status: 0,
        message: format!("the seed refused the job: {e}"),
    };
    swarm.announce(&id, None, Some(failure)).await;
}

#[cfg(test)]
mod tests {
    use shoal_p2p::IdOptions;
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
            id_options: None,
        };
        let req = task.download_request().unwrap();
        assert_eq!(req.task_id().as_str(), digest);
        assert_eq!(req.digest.unwrap().to_string(), digest);
        let auth = req.origin.headers.get("authorization").unwrap();
        assert!(auth.is_sensitive());
        assert!(!format!("{req:?}").contains("secret"));
        let bad = Task {
            url: "not a url".into(),
            ..task.clone()
        };
        assert!(bad.download_request().is_err());
    }

    #[test]
    fn a_job_whose_url_is_not_its_tasks_is_refused() {
        let digest = format!("sha256:{}", "ab".repeat(32));
        let other = format!("sha256:{}", "cd".repeat(32));
        let blob = |url: String| Task {
            id: digest.clone(),
            url,
            ..Default::default()
        };
        // Another blob, a plain URL, an internal address, another scheme: all refused.
        for url in [
            format!("http://registry:5000/v2/a/blobs/{other}"),
            "http://169.254.169.254/latest/meta-data/".into(),
            format!("file:///v2/a/blobs/{digest}"),
        ] {
            let err = blob(url.clone())
                .download_request()
                .unwrap_err()
                .to_string();
            assert!(err.contains("job URL"), "{url}: {err}");
        }
        // A URL task: the id is the URL's hash with the job's options, tag included.
        let url: url::Url = "http://files/big.iso?Signature=x".parse().unwrap();
        let options = IdOptions {
            tag: Some("v2".into()),
            ..Default::default()
        };
        let id = TaskId::for_url(&url, &options);
        let job = |url: &str, tag: Option<&str>| Task {
            id: id.to_string(),
            url: url.into(),
            id_options: Some(shoal_p2p::proto::IdOptions {
                tag: tag.map(str::to_owned),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(job(url.as_str(), Some("v2")).download_request().is_ok());
        assert!(
            job(url.as_str(), None).download_request().is_err(),
            "the tag is part of the id"
        );
        assert!(
            job("http://internal/admin", Some("v2"))
                .download_request()
                .is_err()
        );
    }
}
