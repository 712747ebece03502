//! Running a preheat: the manifest resolved with the request's credentials, then every blob
//! of the image (configs, layers, and each gzip layer's index for lazy pulling) made present on
//! the hosts the scope names, through the scheduler's own planning: the seed chosen for a blob
//! fetches it from the registry, every other host it is meant for gets it from the swarm.
//! Preheated blobs are the tasks pulls use (a blob's id is its digest), so a pull after a
//! preheat finds them.

use std::sync::Arc;
use std::time::{Duration, Instant};

use shoal_p2p::TaskId;
use shoal_p2p::id::GZIP_INDEX;
use shoal_p2p::proto::{Header, IdOptions, Task};
use shoal_seed::Credentials;
use shoal_seed::registry::Platform;
use url::Url;

use super::Api;
use super::jobs::{BlobProgress, HostResult, JobState, PreheatJob, Scope};
use crate::state::{self, State};
use crate::task::rendezvous;

/// How often a running job looks at the swarm.
const POLL: Duration = Duration::from_millis(250);
/// How often a host that does not hold a blob yet is sent its job again (its download may
/// have stopped: a stall, a restart).
const RESEND: Duration = Duration::from_secs(20);

/// What a preheat is asked to do, credentials included (in memory only).
pub struct PreheatRequest {
    /// The image's manifest URL: `https://registry/v2/<repository>/manifests/<tag or digest>`.
    pub url: Url,
    pub credentials: Credentials,
    pub scope: Scope,
    /// Platforms of an index to preheat (empty: every platform).
    pub platforms: Vec<Platform>,
    pub timeout: Duration,
    /// What asked (see [`PreheatJob::via`]).
    pub via: &'static str,
}

/// The registry, repository and reference a manifest URL names.
pub fn manifest_url(url: &Url) -> Result<(Url, String, String), String> {
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(format!("{url} is not an http(s) URL"));
    }
    let path = url.path();
    let rest = path.strip_prefix("/v2/").ok_or_else(|| {
        format!("{path} is not a registry path (/v2/<name>/manifests/<reference>)")
    })?;
    let (repository, reference) = rest
        .rsplit_once("/manifests/")
        .filter(|(r, f)| !r.is_empty() && !f.is_empty())
        .ok_or_else(|| format!("{path} names no manifest (/v2/<name>/manifests/<reference>)"))?;
    let mut base = url.clone();
    base.set_path("/");
    base.set_query(None);
    base.set_fragment(None);
    Ok((base, repository.to_owned(), reference.to_owned()))
}

/// Starts a preheat: the job is kept (PENDING) and runs on its own task.
pub fn start(api: &Arc<Api>, req: PreheatRequest) -> std::io::Result<PreheatJob> {
    let job = api
        .jobs
        .create(shoal_p2p::origin::display_url(&req.url), req.scope, req.via)?;
    tracing::info!(job = job.id, url = job.url, scope = %req.scope, via = req.via, "preheat");
    let (api, running) = (api.clone(), job.clone());
    tokio::spawn(async move { run(api, running, req).await });
    Ok(job)
}

async fn run(api: Arc<Api>, mut job: PreheatJob, req: PreheatRequest) {
    job.state = JobState::Running;
    api.save(&mut job);
    let outcome = tokio::time::timeout(req.timeout, execute(&api, &mut job, &req)).await;
    match outcome {
        Ok(Ok(())) => job.state = JobState::Success,
        Ok(Err(why)) => {
            job.state = JobState::Failure;
            job.error = why;
        }
        Err(_) => {
            job.state = JobState::Failure;
            job.error = format!(
                "not done within {}",
                humantime_serde::re::humantime::format_duration(req.timeout)
            );
        }
    }
    match job.state {
        JobState::Success => tracing::info!(job = job.id, "preheat done"),
        _ => tracing::warn!(job = job.id, error = job.error, "preheat failed"),
    }
    api.save(&mut job);
}

/// One blob to make present, and the hosts it is meant for.
struct Blob {
    task: Task,
    targets: Vec<String>,
    /// The hosts it is meant for are sent jobs: at once for a blob, but for a layer's index
    /// only once a seed built it (before, a host would look for it in the swarm in vain).
    ready: bool,
}

async fn execute(api: &Arc<Api>, job: &mut PreheatJob, req: &PreheatRequest) -> Result<(), String> {
    let (base, repository, reference) = manifest_url(&req.url)?;
    let registry =
        shoal_seed::Registry::new(base.clone(), api.http.clone(), req.credentials.clone());
    let image = registry
        .resolve(&repository, &reference, &req.platforms)
        .await
        .map_err(|e| format!("resolving the image: {e}"))?;
    let headers: Vec<Header> = registry
        .authorization(&repository)
        .map(|value| Header {
            name: "authorization".into(),
            value: value.as_bytes().to_vec(),
        })
        .into_iter()
        .collect();
    let mut blobs = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let descriptors = image
        .manifests
        .iter()
        .map(|m| &m.config)
        .chain(image.layers());
    for d in descriptors.filter(|d| seen.insert(d.digest)) {
        let mut url = base.clone();
        url.set_path(&format!("/v2/{repository}/blobs/{}", d.digest));
        let blob = Task {
            id: TaskId::for_blob(&d.digest).to_string(),
            url: url.to_string(),
            headers: headers.clone(),
            digest: d.digest.to_string(),
            id_options: None,
        };
        job.blobs.push(progress(&blob, d.size, false));
        blobs.push(blob);
        if d.media_type.ends_with("tar+gzip") || d.media_type.ends_with("tar.gzip") {
            let index = Task {
                id: TaskId::gzip_index(&d.digest).to_string(),
                digest: String::new(),
                id_options: Some(IdOptions {
                    application: Some(GZIP_INDEX.into()),
                    ..Default::default()
                }),
                ..blobs[blobs.len() - 1].clone()
            };
            job.blobs.push(progress(&index, 0, true));
            blobs.push(index);
        }
    }
    job.image_digest = image.digest.to_string();
    let image_key = image.digest.to_string();
    let started = Instant::now();
    let mut blobs: Vec<Blob> = {
        let state = state::lock(&api.state);
        blobs
            .into_iter()
            .map(|task| {
                let targets = targets(&state, req.scope, &task.id, &image_key, started);
                let ready = task.id_options.is_none();
                Blob {
                    task,
                    targets,
                    ready,
                }
            })
            .collect()
    };
    if blobs.iter().any(|b| b.targets.is_empty()) {
        return Err(match req.scope {
            Scope::SingleSeedPeer | Scope::AllSeedPeers => "no seed peer is attached".into(),
            _ => "no host is attached".into(),
        });
    }
    api.save(job);
    let mut sent: Option<Instant> = None;
    loop {
        let mut resend = sent.is_none_or(|at| at.elapsed() >= RESEND);
        let mut jobs = Vec::new();
        let mut failed = None;
        let before = job.clone();
        {
            let mut state = state::lock(&api.state);
            for (blob, progress) in blobs.iter_mut().zip(job.blobs.iter_mut()) {
                if progress.done {
                    continue;
                }
                if req.scope == Scope::SingleSeedPeer {
                    // The seed chosen for it failed: the next one takes it over.
                    let next = targets(&state, req.scope, &blob.task.id, &image_key, started);
                    if next.is_empty() {
                        // (A layer's index that could not be built fails no job.)
                        progress.done = progress.index;
                        if !progress.index {
                            failed =
                                Some(format!("{}: every seed failed to fetch it", progress.url));
                        }
                        continue;
                    }
                    resend |= next != blob.targets;
                    blob.targets = next;
                }
                let mut now = resend;
                if !blob.ready && state.held_whole(&blob.task.id) {
                    blob.ready = true;
                    now = true;
                }
                if now {
                    let targets = if blob.ready { &blob.targets[..] } else { &[] };
                    jobs.extend(state.preheat(blob.task.clone(), targets));
                }
                if let Err(why) = look(&state, blob, progress, started)
                    && !progress.index
                {
                    failed = Some(format!("{}: {why}", progress.url));
                }
            }
        }
        if resend {
            sent = Some(Instant::now());
        }
        if !jobs.is_empty() {
            crate::service::dispatch(&api.state, &api.metrics, jobs);
        }
        if *job != before {
            api.save(job);
        }
        if let Some(why) = failed {
            return Err(why);
        }
        if job.blobs.iter().all(|b| b.done) {
            return Ok(());
        }
        tokio::time::sleep(POLL).await;
    }
}

fn progress(task: &Task, size: u64, index: bool) -> BlobProgress {
    BlobProgress {
        url: task.url.clone(),
        digest: task.digest.clone(),
        size,
        index,
        hosts: Vec::new(),
        done: false,
    }
}

/// Brings `progress` up to date with the swarm; an error when the blob cannot be made present
/// (the origin refused it since the job began, or every host it is meant for failed or is
/// gone). A host not attached now is not waited for; it is again when it comes back.
fn look(
    state: &State,
    blob: &Blob,
    progress: &mut BlobProgress,
    started: Instant,
) -> Result<(), String> {
    let presence = state
        .presence(&blob.task.id, &blob.targets, started)
        .unwrap_or_default();
    progress.hosts = blob
        .targets
        .iter()
        .map(|host| {
            let attached = state.hosts.get(host);
            let held = presence.whole.contains(host);
            let error = match () {
                () if held => String::new(),
                () if attached.is_none() => "the host is not attached".into(),
                () if presence.failed.contains(host) => "its origin fetch failed".into(),
                () => presence.refused.clone().unwrap_or_default(),
            };
            HostResult {
                host: host.clone(),
                addr: attached
                    .map(|a| a.host.upload_addr.clone())
                    .unwrap_or_default(),
                held,
                error,
            }
        })
        .collect();
    let held = progress.hosts.iter().filter(|h| h.held).count();
    let waiting = progress
        .hosts
        .iter()
        .filter(|h| !h.held && h.error.is_empty())
        .count();
    if held > 0 && waiting == 0 {
        progress.done = true;
        return Ok(());
    }
    if let Some(why) = presence.refused {
        progress.done = progress.index;
        return Err(why);
    }
    if waiting == 0 {
        progress.done = progress.index;
        return Err(match progress.hosts.first() {
            Some(h) if !h.error.is_empty() => h.error.clone(),
            _ => "no host it was meant for is attached".into(),
        });
    }
    Ok(())
}

/// The hosts a blob is meant for: the seed chosen for it (of those that did not fail to
/// fetch it since `since`), every seed, every host, or a number of the other hosts (the same
/// ones for every blob of the image: chosen by the image).
fn targets(state: &State, scope: Scope, task_id: &str, image: &str, since: Instant) -> Vec<String> {
    let seeds = || {
        state
            .hosts
            .values()
            .filter(|a| a.host.seed)
            .map(|a| &a.host.id)
    };
    let peers: Vec<&String> = state
        .hosts
        .values()
        .filter(|a| !a.host.seed)
        .map(|a| &a.host.id)
        .collect();
    let some = |n: usize| {
        let mut chosen = peers.clone();
        chosen.sort_by_key(|id| std::cmp::Reverse(rendezvous(image, id)));
        chosen.truncate(n);
        chosen.into_iter().cloned().collect()
    };
    let mut chosen: Vec<String> = match scope {
        Scope::SingleSeedPeer => state.preheat_seed(task_id, since).into_iter().collect(),
        Scope::AllSeedPeers => seeds().cloned().collect(),
        Scope::AllPeers => state.hosts.keys().cloned().collect(),
        Scope::Count(n) => some(n as usize),
        Scope::Percentage(p) => some((peers.len() * usize::from(p)).div_ceil(100)),
    };
    // In a stable order, for the job's report.
    chosen.sort_unstable();
    chosen
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manifest_url_names_its_registry_repository_and_reference() {
        let url: Url = "https://harbor.example.com/v2/library/nginx/manifests/1.25"
            .parse()
            .unwrap();
        let (base, repo, reference) = manifest_url(&url).unwrap();
        assert_eq!(base.as_str(), "https://harbor.example.com/");
        assert_eq!(repo, "library/nginx");
        assert_eq!(reference, "1.25");
        for bad in [
            "ftp://h/v2/a/manifests/b",
            "https://h/v1/a/manifests/b",
            "https://h/v2/a/blobs/sha256:00",
            "https://h/v2//manifests/x",
            "https://h/v2/a/manifests/",
        ] {
            assert!(manifest_url(&bad.parse().unwrap()).is_err(), "{bad}");
        }
    }
}
