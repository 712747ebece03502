//! The node daemon (`shoal daemon`, and the node part of `shoal seed` and `shoal up`): it owns
//! the data directory's store, downloads with a [`Downloader`], serves the local API on a unix
//! socket, and, in a swarm, the upload server, staying attached to every scheduler.

use std::future::Future;
use std::sync::Arc;

use prometheus_client::registry::Registry;
use shoal_p2p::api::LocalClient;
use shoal_p2p::proto::{PieceDigest, PieceSet};
use shoal_p2p::rate::RateLimit;
use shoal_p2p::{
    AsyncStore, Bitmap, Downloader, Error, Holdings, JobHandler, Metrics, Origin, Preheat, Result,
    Swarm, TaskMeta,
};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api::{ApiState, router};
use crate::config::DaemonConfig;

/// A built daemon, ready to serve.
pub struct Daemon {
    config: DaemonConfig,
    downloader: Arc<Downloader>,
    upload: Option<tokio::net::TcpListener>,
    seed: Option<Arc<dyn JobHandler>>,
    metrics: Metrics,
}

impl Daemon {
    /// Opens the store, binds the upload server when schedulers are configured, and registers
    /// the daemon's metrics. With `seed`, the host attaches as a seed and hands it the seed
    /// jobs its schedulers send.
    pub async fn build(
        config: DaemonConfig,
        seed: Option<Arc<dyn JobHandler>>,
        registry: &mut Registry,
    ) -> Result<Daemon> {
        if config.swarm.legacy_seed.is_some() {
            tracing::warn!(
                "swarm.seed in the config is no longer read: run `shoal seed` for a seed peer"
            );
        }
        let store = AsyncStore::open(&config.data_dir)?;
        let origin = Origin::new(config.origin.clone())?;
        let metrics = Metrics::register(registry);
        let (swarm, upload) = if config.swarm.schedulers.is_empty() {
            (None, None)
        } else {
            let addr = config.swarm.upload_addr;
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| Error::io("bind upload address", addr.to_string(), e))?;
            let bound = listener
                .local_addr()
                .map_err(|e| Error::io("read upload address", addr.to_string(), e))?;

            let cluster = config
                .cluster
                .load(&config.cluster_dir(), "node")
                .map_err(|e| Error::Config(e.to_string()))?;
            let swarm = Swarm::new(config.swarm.clone(), bound, seed.is_some(), cluster)?;
            (Some(Arc::new(swarm)), Some(listener))
        };
        let downloader = Arc::new(
            Downloader::with_swarm(
                store,
                origin,
                metrics.clone(),
                swarm,
                Arc::new(Holdings::default()),
            )
            .with_background_limit(config.limits.max_downloads)
            .with_rates(
                RateLimit::new(config.limits.download_rate),
                RateLimit::new(config.limits.origin_rate),
            ),
        );
        Ok(Daemon {
            config,
            downloader,
            upload,
            seed,
            metrics,
        })
    }

    /// The address peers fetch pieces from, when this daemon is in a swarm.
    pub fn upload_addr(&self) -> Option<String> {
        self.downloader
            .swarm()
            .map(|s| s.host().upload_addr.clone())
    }

    pub fn downloader(&self) -> &Arc<Downloader> {
        &self.downloader
    }

    /// Binds the local API socket (mode 0600: only this user may ask for downloads, since the
    /// daemon writes output files as itself), replacing a stale socket file.
    pub async fn bind_socket(&self) -> Result<tokio::net::UnixListener> {
        let path = self.config.socket_path();
        if LocalClient::is_running(&path).await {
            return Err(Error::Config(format!(
                "another daemon already answers on {}",
                path.display()
            )));
        }
        shoal_p2p::api::bind_private_socket(&path)
            .map_err(|e| Error::io("bind local API socket", &path, e))
    }

    /// Serves the local API on `listener` until `shutdown` resolves, then lets running requests
    /// finish for up to `shutdown_grace`.
    pub async fn serve(
        self,
        listener: tokio::net::UnixListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<()> {
        let socket = self.config.socket_path();
        let cancel = CancellationToken::new();
        let tracker = TaskTracker::new();
        let collector = crate::gc::Collector {
            config: self.config.gc,
            store: self.downloader.store().clone(),
            holdings: self.downloader.holdings().clone(),
            swarm: self.downloader.swarm().cloned(),
        };
        let stop = cancel.clone();
        tracker.spawn(collector.run(async move { stop.cancelled().await }));
        if let (Some(swarm), Some(upload)) = (self.downloader.swarm(), self.upload) {
            let node = Node {
                downloader: self.downloader.clone(),
                seed: self.seed.clone(),
                tracker: tracker.clone(),
                cancel: cancel.clone(),
            };
            let tls = match swarm.cluster() {
                Some(c) => Some(
                    c.server_config(vec![b"http/1.1".to_vec()])
                        .map_err(Error::Config)?,
                ),
                None => None,
            };
            let upload_server = crate::upload::Upload {
                store: self.downloader.store().clone(),
                holdings: self.downloader.holdings().clone(),
                slots: swarm.config().upload_slots,
                metrics: self.metrics.clone(),
                tls,
                limits: self.config.limits,
                low_priority: swarm.config().upload_low_priority,
            };
            node.start(upload, upload_server);
            tracing::info!(
                host = swarm.host().id,
                upload = swarm.host().upload_addr,
                seed = swarm.host().seed,
                "in the swarm"
            );
        }
        let app = router(
            ApiState {
                downloader: self.downloader.clone(),
                metrics: self.metrics.clone(),
                data_dir: self.config.data_dir.clone(),
                tracker: tracker.clone(),
                cancel: cancel.clone(),
                progress_interval: self.config.progress_interval,
            },
            self.config.max_requests,
        );
        tracing::info!(socket = %socket.display(), data_dir = %self.config.data_dir.display(), "daemon ready");
        let stop = cancel.clone();
        let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
            shutdown.await;
            stop.cancel();
        });
        let result = serve
            .await
            .map_err(|e| Error::io("serve local API on", &socket, e));
        cancel.cancel();
        tracker.close();
        if tokio::time::timeout(self.config.shutdown_grace, tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                "shutdown grace period over; abandoning running downloads (their finished pieces are kept)"
            );
        }
        let _ = std::fs::remove_file(&socket);
        result
    }
}

/// The swarm side of a running daemon.
#[derive(Clone)]
struct Node {
    downloader: Arc<Downloader>,
    seed: Option<Arc<dyn JobHandler>>,
    tracker: TaskTracker,
    cancel: CancellationToken,
}

impl Node {
    /// Runs the upload server and stays attached to every scheduler: after each (re-)attach,
    /// and when a scheduler is lost, the complete tasks this host holds are announced to their
    /// owners now, and jobs go to the seed (or, on other hosts, run as preheats).
    fn start(self, listener: tokio::net::TcpListener, upload: crate::upload::Upload) {
        let Some(swarm) = self.downloader.swarm().cloned() else {
            return;
        };
        let stop = self.cancel.clone();
        self.tracker
            .spawn(crate::upload::serve(listener, upload, async move {
                stop.cancelled().await
            }));
        self.tracker.spawn(send_stats(
            swarm.clone(),
            self.downloader.clone(),
            self.cancel.clone(),
        ));
        for index in 0..swarm.scheduler_count() {
            let (node, swarm) = (self.clone(), swarm.clone());
            self.tracker.spawn(async move {
                let changed = |i: usize, attached: bool| {
                    let (swarm, downloader) = (swarm.clone(), node.downloader.clone());
                    tokio::spawn(async move {
                        // Attached: what scheduler i owns. Lost: what it owned, to the
                        // schedulers that own it now.
                        let moved = |id: &str| match attached {
                            true => swarm.owner(id) == Some(i),
                            false => swarm.owned_before_losing(id, i) && swarm.owner(id) != Some(i),
                        };
                        reannounce(&swarm, &downloader, moved).await;
                    });
                };
                // A seed fetches for the swarm; any other host takes a job as a preheat
                // onto its own disk, through the swarm.
                let job = |job: shoal_p2p::proto::Job| {
                    let task = job.task.as_ref().map(|t| t.id.clone()).unwrap_or_default();
                    let run = match &node.seed {
                        Some(seed) => seed.run(node.downloader.clone(), job),
                        None => Preheat.run(node.downloader.clone(), job),
                    };
                    let (swarm, downloader) = (swarm.clone(), node.downloader.clone());
                    node.tracker.spawn(async move {
                        run.await;
                        // The scheduler that sent the job follows it (a preheat): when
                        // another one owns the task, it hears what this host holds too, or
                        // that the job ended without it.
                        if swarm.owner(&task) != Some(index) {
                            job_done(&swarm, &downloader, &task, index).await;
                        }
                    });
                };
                swarm
                    .attach_loop(index, changed, job, node.cancel.clone())
                    .await;
            });
        }
    }
}

/// Tells scheduler `index`, which sent a job for `task`, what became of it: the whole task,
/// or a failure (it then plans the job elsewhere).
async fn job_done(swarm: &Swarm, downloader: &Downloader, task: &str, index: usize) {
    let Ok(id) = task.parse::<shoal_p2p::TaskId>() else {
        return;
    };
    let held = {
        let id = id.clone();
        downloader
            .store()
            .call(move |s| match s.meta(&id)? {
                Some(meta) if meta.complete => whole(s, &id, meta).map(Some),
                _ => Ok(None),
            })
            .await
    };
    match held {
        Ok(Some(set)) => swarm.announce_at(Some(index), &id, Some(set), None).await,
        _ => {
            let failure = shoal_p2p::proto::Failure {
                http_status: 0,
                message: "the job ended without the task".into(),
            };
            swarm
                .announce_at(Some(index), &id, None, Some(failure))
                .await;
        }
    }
}

/// Tells the owners of the complete tasks this host holds, of those `which` names, about them.
async fn reannounce(swarm: &Swarm, downloader: &Downloader, which: impl Fn(&str) -> bool) {
    let store = downloader.store();
    let Ok(listed) = store.call(|s| s.list()).await else {
        return;
    };
    let chosen: Vec<_> = listed
        .into_iter()
        .filter(|(id, m)| m.complete && which(id.as_str()))
        .collect();
    let complete = store
        .call(|s| {
            chosen
                .into_iter()
                .map(|(id, m)| Ok((whole(s, &id, m)?, id)))
                .collect::<Result<Vec<_>>>()
        })
        .await;
    let Ok(tasks) = complete else { return };
    for (set, id) in tasks {
        swarm.announce(&id, Some(set), None).await;
    }
}

/// A complete task this host holds, as an announcement carries it.
fn whole(s: &shoal_p2p::Store, id: &shoal_p2p::TaskId, meta: TaskMeta) -> Result<PieceSet> {
    let digests = s.piece_digests(id)?;
    let bitmap: Bitmap = digests.iter().map(Option::is_some).collect();
    Ok(PieceSet {
        length_known: true,
        content_length: meta.layout.content_length,
        bitmap: bitmap.as_bytes().to_vec(),
        digests: (0u32..)
            .zip(&digests)
            .filter_map(|(n, d)| d.map(|d| PieceDigest::of(n, &d)))
            .collect(),
        sources: meta.sources,
        arriving: Vec::new(),
    })
}

/// How often this host's traffic is looked at (and sent to the schedulers that take it this
/// often, when it changed).
const STATS_EVERY: std::time::Duration =
    std::time::Duration::from_millis(shoal_p2p::swarm::STATS_EVERY_MS);

/// Sends each attached scheduler this host's traffic (for its console) whenever it changed,
/// at most as often as that scheduler said at attach (less often in a larger cluster).
async fn send_stats(swarm: Arc<Swarm>, downloader: Arc<Downloader>, cancel: CancellationToken) {
    let n = swarm.scheduler_count();
    let mut sent = vec![None; n];
    let mut sent_at: Vec<Option<std::time::Instant>> = vec![None; n];
    loop {
        tokio::select! {
            () = tokio::time::sleep(STATS_EVERY) => {}
            () = cancel.cancelled() => return,
        }
        let metrics = downloader.metrics();
        let now = (
            metrics.received(),
            metrics.upload_bytes.get(),
            downloader.traffic().version(),
        );
        for (i, (_, attached, link)) in swarm.schedulers().into_iter().enumerate() {
            // Sent again to a scheduler attached again since (it may have restarted).
            let told = Some((link.attaches, now));
            let every = std::time::Duration::from_millis(link.stats_every_ms);
            let soon = sent_at[i].is_some_and(|at| at.elapsed() < every)
                && sent[i].is_some_and(|(a, _)| a == link.attaches);
            if !attached || sent[i] == told || soon {
                continue;
            }
            let req = shoal_p2p::proto::StatsRequest {
                host_id: swarm.host().id.clone(),
                received: Some(now.0.into()),
                sent: now.1,
                tasks: downloader
                    .traffic()
                    .recent()
                    .into_iter()
                    .map(
                        |(task_id, content_length, by)| shoal_p2p::proto::TaskTraffic {
                            task_id,
                            content_length,
                            received: Some(by.into()),
                        },
                    )
                    .collect(),
            };
            if swarm.send_stats(i, req).await {
                sent[i] = told;
                sent_at[i] = Some(std::time::Instant::now());
            }
        }
    }
}
