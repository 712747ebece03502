//! The node daemon (`shoal daemon`, and the daemon part of `shoal up`).
//!
//! It owns the data directory's [`Store`], downloads tasks with a [`Downloader`], answers the local
//! API on a unix socket (see [`crate::api`]) and the admin endpoint (`/healthz`, `/metrics`).

use std::future::Future;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use prometheus_client::registry::Registry;
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api::{Event, Failure, GetRequest, HostStatus, SchedulerStatus, Status, TaskInfo};
use crate::download::{Downloader, Progress};
use crate::error::{Error, Result};
use crate::metrics::{Metrics, Source};
use crate::origin::{Origin, OriginConfig};
use crate::store::Store;
use crate::swarm::{Swarm, SwarmConfig};
use crate::upload::Holdings;

/// The daemon's configuration (TOML). Every field has a default.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct DaemonConfig {
    /// Where task content and metadata live.
    pub data_dir: PathBuf,
    /// The local API socket; `<data_dir>/shoal.sock` when unset.
    pub socket: Option<PathBuf>,
    /// `/healthz` and `/metrics`.
    pub metrics_addr: SocketAddr,
    /// How long in-flight requests may take to finish at shutdown.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// Local API requests served at once; more wait.
    pub max_requests: usize,
    /// How often a download's progress is reported to local clients.
    #[serde(with = "humantime_serde")]
    pub progress_interval: Duration,
    pub origin: OriginConfig,
    pub swarm: SwarmConfig,
}

impl Default for DaemonConfig {
    fn default() -> Self {
        DaemonConfig {
            data_dir: default_data_dir(),
            socket: None,
            metrics_addr: SocketAddr::from(([0, 0, 0, 0], 4002)),
            shutdown_grace: Duration::from_secs(10),
            max_requests: 256,
            progress_interval: Duration::from_millis(200),
            origin: OriginConfig::default(),
            swarm: SwarmConfig::default(),
        }
    }
}

impl DaemonConfig {
    /// Reads and validates a TOML file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io("read config", path, e))?;
        Self::from_toml(&text).map_err(|e| Error::Config(format!("{}: {e}", path.display())))
    }

    /// Parses a daemon config file. Its `[proxy]` table belongs to the registry mirror
    /// (`shoal-mirror`), which reads the same file; it is skipped here.
    pub fn from_toml(text: &str) -> Result<Self> {
        let mut table: toml::Table =
            toml::from_str(text).map_err(|e| Error::Config(e.to_string()))?;
        table.remove("proxy");
        let config: DaemonConfig = table
            .try_into()
            .map_err(|e: toml::de::Error| Error::Config(e.to_string()))?;
        config.validate()
    }

    pub fn validate(self) -> Result<Self> {
        self.origin.validate().map_err(Error::Config)?;
        self.swarm.validate().map_err(Error::Config)?;
        if self.max_requests == 0 {
            return Err(Error::Config("max_requests must be at least 1".into()));
        }
        if self.progress_interval.is_zero() {
            return Err(Error::Config(
                "progress_interval must be greater than zero".into(),
            ));
        }
        Ok(self)
    }

    pub fn socket_path(&self) -> PathBuf {
        self.socket
            .clone()
            .unwrap_or_else(|| socket_in(&self.data_dir))
    }
}

/// The local API socket's path for a data directory.
pub fn socket_in(data_dir: &Path) -> PathBuf {
    data_dir.join("shoal.sock")
}

/// `$SHOAL_DATA_DIR`, else `/var/lib/shoal` for root, else `$XDG_DATA_HOME/shoal` or
/// `~/.local/share/shoal`.
pub fn default_data_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("SHOAL_DATA_DIR") {
        return dir.into();
    }
    if nix_is_root() {
        return "/var/lib/shoal".into();
    }
    if let Some(xdg) = std::env::var_os("XDG_DATA_HOME") {
        return PathBuf::from(xdg).join("shoal");
    }
    match std::env::var_os("HOME") {
        Some(home) => PathBuf::from(home).join(".local/share/shoal"),
        None => "/var/lib/shoal".into(),
    }
}

fn nix_is_root() -> bool {
    // The owner of our own /proc entry is our effective uid; no libc call needed.
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
}

/// A built daemon, ready to serve.
pub struct Daemon {
    config: DaemonConfig,
    downloader: Arc<Downloader>,
    swarm: Option<(Arc<Swarm>, tokio::net::TcpListener)>,
    holdings: Arc<Holdings>,
    metrics: Metrics,
}

impl Daemon {
    /// Opens the store, binds the upload server when schedulers are configured, and registers
    /// the daemon's metrics.
    pub async fn build(config: DaemonConfig, registry: &mut Registry) -> Result<Daemon> {
        let store = Arc::new(Store::open(&config.data_dir)?);
        let origin = Origin::new(config.origin.clone())?;
        let metrics = Metrics::register(registry);
        let holdings = Arc::new(Holdings::default());
        let swarm = if config.swarm.schedulers.is_empty() {
            None
        } else {
            let addr = config.swarm.upload_addr;
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| Error::io("bind upload address", addr.to_string(), e))?;
            let bound = listener
                .local_addr()
                .map_err(|e| Error::io("read upload address", addr.to_string(), e))?;
            Some((Arc::new(Swarm::new(config.swarm.clone(), bound)?), listener))
        };
        let downloader = Arc::new(Downloader::with_swarm(
            store,
            origin,
            metrics.clone(),
            swarm.as_ref().map(|(s, _)| s.clone()),
            holdings.clone(),
        ));
        Ok(Daemon {
            config,
            downloader,
            swarm,
            holdings,
            metrics,
        })
    }

    /// The address peers fetch pieces from, when this daemon is in a swarm.
    pub fn upload_addr(&self) -> Option<String> {
        self.swarm
            .as_ref()
            .map(|(s, _)| s.host().upload_addr.clone())
    }

    pub fn downloader(&self) -> &Arc<Downloader> {
        &self.downloader
    }

    /// Binds the local API socket (mode 0600: only this user may ask for downloads, since the
    /// daemon writes output files as itself), replacing a stale socket file.
    pub async fn bind_socket(&self) -> Result<tokio::net::UnixListener> {
        let path = self.config.socket_path();
        if crate::api::LocalClient::is_running(&path).await {
            return Err(Error::Config(format!(
                "another daemon already answers on {}",
                path.display()
            )));
        }
        let _ = std::fs::remove_file(&path);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| Error::io("create socket directory", dir, e))?;
        }
        let listener = tokio::net::UnixListener::bind(&path)
            .map_err(|e| Error::io("bind local API socket", &path, e))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| Error::io("restrict local API socket", &path, e))?;
        Ok(listener)
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
        let state = Arc::new(ApiState {
            downloader: self.downloader.clone(),
            swarm: self.swarm.as_ref().map(|(s, _)| s.clone()),
            metrics: self.metrics.clone(),
            data_dir: self.config.data_dir.clone(),
            tracker: tracker.clone(),
            cancel: cancel.clone(),
            progress_interval: self.config.progress_interval,
        });
        let app = Router::new()
            .route("/v1/get", post(get_handler))
            .route("/v1/tasks", get(tasks_handler))
            .route("/v1/status", get(status_handler))
            .layer(tower::limit::ConcurrencyLimitLayer::new(
                self.config.max_requests,
            ))
            .with_state(state);
        if let Some((swarm, listener)) = self.swarm {
            start_swarm(
                &swarm,
                listener,
                &self.downloader,
                &self.holdings,
                &self.metrics,
                &tracker,
                &cancel,
            );
            tracing::info!(
                host = swarm.host().id,
                upload = swarm.host().upload_addr,
                seed = swarm.config().seed,
                "in the swarm"
            );
        }
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

/// Runs the upload server and stays attached to every scheduler: after each (re-)attach the
/// complete tasks this host holds are announced again, and seed jobs become downloads.
fn start_swarm(
    swarm: &Arc<Swarm>,
    listener: tokio::net::TcpListener,
    downloader: &Arc<Downloader>,
    holdings: &Arc<Holdings>,
    metrics: &Metrics,
    tracker: &TaskTracker,
    cancel: &CancellationToken,
) {
    let slots = swarm.config().upload_slots;
    let stop = cancel.clone();
    tracker.spawn(crate::upload::serve(
        listener,
        downloader.store().clone(),
        holdings.clone(),
        slots,
        metrics.clone(),
        async move { stop.cancelled().await },
    ));
    for index in 0..swarm.scheduler_count() {
        let (swarm2, dl_attached, dl_job, tracker2) = (
            swarm.clone(),
            downloader.clone(),
            downloader.clone(),
            tracker.clone(),
        );
        let cancel = cancel.clone();
        tracker.spawn(async move {
            let attached = |i: usize| {
                let (swarm, dl) = (swarm2.clone(), dl_attached.clone());
                tokio::spawn(async move { reannounce(&swarm, &dl, i).await });
            };
            let job = |job: crate::proto::Job| {
                let dl = dl_job.clone();
                tracker2.spawn(async move { seed_job(&dl, job).await });
            };
            swarm2.attach_loop(index, attached, job, cancel).await;
        });
    }
}

/// Tells scheduler `index` about every complete task it owns that this host holds.
async fn reannounce(swarm: &Swarm, downloader: &Downloader, index: usize) {
    let store = downloader.store().clone();
    let Ok(tasks) = tokio::task::spawn_blocking(move || {
        let tasks = store.list()?;
        tasks
            .into_iter()
            .filter(|(_, m)| m.complete)
            .map(|(id, m)| Ok((store.piece_digests(&id)?, id, m)))
            .collect::<Result<Vec<_>>>()
    })
    .await
    .expect("listing does not panic") else {
        return;
    };
    for (digests, id, meta) in tasks
        .into_iter()
        .filter(|(_, id, _)| swarm.owner(id.as_str()) == Some(index))
    {
        let bitmap: crate::Bitmap = digests.iter().map(Option::is_some).collect();
        let set = crate::proto::PieceSet {
            length_known: true,
            content_length: meta.layout.content_length,
            bitmap: bitmap.as_bytes().to_vec(),
            digests: (0u32..)
                .zip(&digests)
                .filter_map(|(n, d)| {
                    d.map(|d| crate::proto::PieceDigest {
                        number: n,
                        blake3: d.bytes().to_vec(),
                    })
                })
                .collect(),
        };
        swarm.announce(&id, Some(set), None).await;
    }
}

/// A seed job: download the task for the swarm (the scheduler tells this host to use the origin).
async fn seed_job(downloader: &Downloader, job: crate::proto::Job) {
    let Some(task) = job.task else { return };
    let req =
        (|| -> Result<crate::DownloadRequest> {
            let url: url::Url = task
                .url
                .parse()
                .map_err(|e| Error::InvalidRequest(format!("seed job URL: {e}")))?;
            let mut headers = http::HeaderMap::new();
            for h in &task.headers {
                if let (Ok(k), Ok(v)) = (
                    http::HeaderName::from_bytes(h.name.as_bytes()),
                    http::HeaderValue::from_bytes(&h.value),
                ) {
                    headers.append(k, v);
                }
            }
            crate::origin::mark_sensitive(&mut headers);
            Ok(crate::DownloadRequest {
                origin: crate::OriginRequest { url, headers },
                id_options: Default::default(),
                digest: task.digest.parse().ok(),
                task_id: Some(task.id.parse().map_err(|e: crate::id::ParseTaskIdError| {
                    Error::InvalidRequest(e.to_string())
                })?),
            })
        })();
    match req {
        Ok(req) => {
            if let Err(e) = downloader.download(&req, &Progress::default()).await {
                tracing::warn!(task = task.id, error = %e, "seed job failed");
            }
        }
        Err(e) => tracing::warn!(task = task.id, error = %e, "bad seed job"),
    }
}

struct ApiState {
    downloader: Arc<Downloader>,
    swarm: Option<Arc<Swarm>>,
    metrics: Metrics,
    data_dir: PathBuf,
    tracker: TaskTracker,
    cancel: CancellationToken,
    progress_interval: Duration,
}

async fn get_handler(State(state): State<Arc<ApiState>>, Json(req): Json<GetRequest>) -> Response {
    let (tx, mut rx) = mpsc::channel::<Event>(8);
    let task_state = state.clone();
    state.tracker.spawn(async move {
        let last = tokio::select! {
            event = run_get(&task_state, &req, &tx) => event,
            () = task_state.cancel.cancelled() => Event::Failed(Failure {
                message: "the daemon is shutting down; run the command again to resume".into(),
                kind: crate::api::FailureKind::Local,
            }),
        };
        let _ = tx.send(last).await;
    });
    let lines = futures_util::stream::poll_fn(move |cx| {
        rx.poll_recv(cx).map(|e| {
            e.map(|e| {
                let mut line = serde_json::to_vec(&e).expect("events serialize");
                line.push(b'\n');
                Ok::<_, std::convert::Infallible>(bytes::Bytes::from(line))
            })
        })
    });
    (
        [(axum::http::header::CONTENT_TYPE, "application/x-ndjson")],
        axum::body::Body::from_stream(lines),
    )
        .into_response()
}

/// Downloads, reporting progress on `tx`, and places the output; returns the final event.
async fn run_get(state: &ApiState, req: &GetRequest, tx: &mpsc::Sender<Event>) -> Event {
    let download = match req.to_download() {
        Ok(d) => d,
        Err(e) => return Event::Failed((&e).into()),
    };
    let progress = Progress::default();
    let work = state.downloader.download(&download, &progress);
    tokio::pin!(work);
    let mut tick = tokio::time::interval(state.progress_interval);
    let result = loop {
        tokio::select! {
            r = &mut work => break r,
            _ = tick.tick() => {
                let (done, total) = progress.get();
                // A slow reader misses progress lines, never the result.
                let _ = tx.try_send(Event::Progress { done, total });
            }
        }
    };
    let done = match result {
        Ok(done) => done,
        Err(e) => {
            tracing::warn!(error = %e, "download failed");
            return Event::Failed((&e).into());
        }
    };
    if let Some(out) = req.output.clone() {
        let src = done.path.clone();
        let placed = tokio::task::spawn_blocking(move || crate::output::link_or_copy(&src, &out))
            .await
            .expect("placing output does not panic");
        if let Err(e) = placed {
            return Event::Failed((&e).into());
        }
    }
    Event::Done {
        task: done.task.to_string(),
        path: done.path,
        content_length: done.meta.layout.content_length,
        from_cache: done.from_cache,
    }
}

async fn list_tasks(state: &ApiState) -> Result<Vec<TaskInfo>> {
    let store = state.downloader.store().clone();
    let listed = tokio::task::spawn_blocking(move || store.list())
        .await
        .expect("listing does not panic")?;
    Ok(listed
        .into_iter()
        .map(|(id, meta)| TaskInfo {
            task: id.to_string(),
            url: meta.url,
            content_length: meta.layout.content_length,
            complete: meta.complete,
        })
        .collect())
}

fn internal_error(e: &Error) -> Response {
    (axum::http::StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response()
}

async fn tasks_handler(State(state): State<Arc<ApiState>>) -> Response {
    match list_tasks(&state).await {
        Ok(tasks) => Json(tasks).into_response(),
        Err(e) => internal_error(&e),
    }
}

async fn status_handler(State(state): State<Arc<ApiState>>) -> Response {
    let tasks = match list_tasks(&state).await {
        Ok(t) => t,
        Err(e) => return internal_error(&e),
    };
    let downloaded = [
        ("origin", Source::Origin),
        ("peer", Source::Peer),
        ("seed", Source::Seed),
        ("cache", Source::Cache),
    ]
    .into_iter()
    .map(|(name, s)| (name.to_owned(), state.metrics.bytes_from(s)))
    .collect();
    let swarm = state.swarm.as_deref();
    Json(Status {
        data_dir: state.data_dir.clone(),
        host: swarm.map(|s| HostStatus {
            id: s.host().id.clone(),
            upload_addr: s.host().upload_addr.clone(),
            seed: s.config().seed,
        }),
        schedulers: swarm
            .map(Swarm::schedulers)
            .unwrap_or_default()
            .into_iter()
            .map(|(url, attached)| SchedulerStatus { url, attached })
            .collect(),
        downloaded,
        uploaded: state.metrics.upload_bytes.get(),
        tasks,
    })
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_config_shows_the_defaults() {
        let example = include_str!("../../packaging/daemon.toml");
        let expected = DaemonConfig {
            data_dir: "/var/lib/shoal".into(),
            ..DaemonConfig::default()
        };
        assert_eq!(DaemonConfig::from_toml(example).unwrap(), expected);
    }

    #[test]
    fn config_defaults_overrides_and_refusals() {
        let c = DaemonConfig::from_toml("").unwrap();
        assert_eq!(c.metrics_addr.port(), 4002);
        assert_eq!(c.socket_path(), c.data_dir.join("shoal.sock"));
        let c = DaemonConfig::from_toml(
            "data_dir = \"/d\"\nshutdown_grace = \"3s\"\n[origin]\nconcurrency = 4\nread_timeout = \"5s\"\n",
        )
        .unwrap();
        assert_eq!(c.data_dir, PathBuf::from("/d"));
        assert_eq!(c.shutdown_grace, Duration::from_secs(3));
        assert_eq!(c.origin.concurrency, 4);
        assert!(
            DaemonConfig::from_toml("data_dri = \"/d\"").is_err(),
            "unknown keys are refused"
        );
        assert!(DaemonConfig::from_toml("[origin]\nconcurrency = 0").is_err());
        assert!(
            DaemonConfig::from_toml("shutdown_grace = 5").is_err(),
            "durations are typed"
        );
    }
}
