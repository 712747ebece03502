//! `shoal-scheduler`: the swarm's coordinator (`shoal scheduler`, gRPC on port 8002).
//!
//! Hosts attach (their liveness), watch the tasks they download, and announce the pieces they
//! store. For each task the scheduler keeps who holds which piece, the piece digests computed by
//! whoever fetched from the origin, and who that is: the seed chosen by rendezvous hashing of the
//! task id, or, without a live seed, one watching peer. Each watcher gets a [`TaskView`] whenever
//! something changes: content length, digests, up to 16 parents that hold pieces it lacks
//! (locality labels first), and whether it must go to the origin itself. State is memory only;
//! after a restart hosts re-attach and re-announce within seconds.
//!
//! Pieces only flow from a host that holds a verified piece to one that lacks it, so the piece
//! graph has no cycles whatever the parent lists say.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! let mut registry = prometheus_client::registry::Registry::default();
//! let config = shoal_scheduler::SchedulerConfig::from_toml("[cluster]\ninsecure = true")
//!     .expect("a valid config");
//! let scheduler = shoal_scheduler::Scheduler::build(config, &mut registry).expect("builds");
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! scheduler.serve(listener, std::future::pending()).await
//! # }
//! ```
//!
//! [`TaskView`]: shoal_p2p::proto::TaskView

/// Entry points for the fuzz targets in `fuzz/` (built only with `--cfg fuzzing`).
#[cfg(fuzzing)]
#[doc(hidden)]
pub mod fuzz {
    use shoal_p2p::proto::scheduler_server::Scheduler as _;
    use shoal_p2p::proto::{
        AnnounceRequest, AttachRequest, ReportRequest, StatsRequest, WatchRequest,
    };
    use tonic::Request;

    /// A message a member may send.
    pub enum Call {
        Attach(AttachRequest),
        Watch(WatchRequest),
        Announce(AnnounceRequest),
        Report(ReportRequest),
        Stats(StatsRequest),
    }

    /// Serves `calls` in order on one scheduler, as the gRPC server would hand them over
    /// (without cluster TLS: every caller is who it says), letting the watch streams send their
    /// views between calls.
    pub fn calls(calls: Vec<Call>) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let service = crate::service::Service {
                state: std::sync::Arc::default(),
                metrics: crate::Metrics::register(
                    &mut prometheus_client::registry::Registry::default(),
                ),
                traffic: std::sync::Arc::default(),
                members_only: false,
            };
            let mut open = Vec::new();
            for call in calls {
                match call {
                    Call::Attach(m) => {
                        if let Ok(r) = service.attach(Request::new(m)).await {
                            open.push(Box::new(r) as Box<dyn std::any::Any>);
                        }
                    }
                    Call::Watch(m) => {
                        if let Ok(r) = service.watch(Request::new(m)).await {
                            open.push(Box::new(r));
                        }
                    }
                    Call::Announce(m) => drop(service.announce(Request::new(m)).await),
                    Call::Report(m) => drop(service.report(Request::new(m)).await),
                    Call::Stats(m) => drop(service.stats(Request::new(m)).await),
                }
                tokio::task::yield_now().await;
            }
            crate::state::lock(&service.state).gc(std::time::Duration::ZERO);
        });
    }
}

pub mod api;
mod error;
mod members;
mod metrics;
mod service;
mod state;
mod task;
pub mod traffic;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::registry::Registry;
use serde::Deserialize;
use shoal_p2p::cluster::{Cluster, ClusterConfig, Role};
use shoal_p2p::proto::scheduler_server::SchedulerServer;

pub use error::Error;
pub use metrics::Metrics;

/// The scheduler's configuration (TOML; see `packaging/scheduler.toml`). Every field has a default.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SchedulerConfig {
    /// gRPC address.
    pub listen: SocketAddr,
    /// A task nobody holds or watches is forgotten after this long.
    #[serde(with = "humantime_serde")]
    pub task_idle_ttl: Duration,
    /// Cluster identity: only members of the cluster may attach (`cluster/` in the default
    /// data directory unless the table says otherwise).
    pub cluster: ClusterConfig,
    /// The HTTP API: preheat jobs (Harbor's P2P providers, `shoal preheat`), Harbor webhooks.
    pub api: api::ApiConfig,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            listen: SocketAddr::from(([0, 0, 0, 0], 8002)),
            task_idle_ttl: Duration::from_secs(600),
            cluster: ClusterConfig::default(),
            api: api::ApiConfig::default(),
        }
    }
}

impl SchedulerConfig {
    /// Reads a TOML file.
    pub fn load(path: &std::path::Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::ConfigRead {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml(&text).map_err(|e| Error::Config(format!("{}: {e}", path.display())))
    }

    pub fn from_toml(text: &str) -> Result<Self, Error> {
        toml::from_str(text).map_err(|e| Error::Config(e.to_string()))
    }
}

/// Longest a unary call (announce, report) may take to be answered.
const RPC_TIMEOUT: Duration = Duration::from_secs(30);

/// Calls one connection may have in progress at once.
const MAX_CALLS_PER_HOST: usize = 256;

/// A built scheduler, ready to serve.
pub struct Scheduler {
    config: SchedulerConfig,
    cluster: Option<Arc<Cluster>>,
    state: Arc<Mutex<state::State>>,
    metrics: Metrics,
    traffic: Arc<traffic::Traffic>,
    api: Option<Arc<api::Api>>,
}

impl Scheduler {
    /// Loads the cluster identity (a scheduler's certificate) unless the config says
    /// `insecure`, and registers the metrics.
    pub fn build(config: SchedulerConfig, registry: &mut Registry) -> Result<Scheduler, Error> {
        let default_dir = shoal_p2p::api::default_data_dir().join("cluster");
        let cluster = config
            .cluster
            .load(&default_dir, "scheduler")
            .map_err(|e| Error::Config(e.to_string()))?;
        if let Some(me) = cluster.as_ref().map(|c| c.me())
            && !me.is(Role::Scheduler)
        {
            return Err(Error::Config(format!(
                "this host's cluster certificate is {me}, not a scheduler's: issue it with \
                 `--role scheduler`"
            )));
        }
        let state = Arc::default();
        let metrics = Metrics::register(registry);
        let traffic = Arc::default();
        let api = match config.api.enabled {
            true => Some(Arc::new(api::Api::open(
                &config.api,
                Arc::clone(&state),
                metrics.clone(),
                Arc::clone(&traffic),
            )?)),
            false => None,
        };
        Ok(Scheduler {
            config,
            cluster,
            state,
            metrics,
            traffic,
            api,
        })
    }

    /// Serves gRPC on `listener`, and the HTTP API where its config says, until `shutdown`
    /// resolves.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        use futures_util::FutureExt as _;
        let shutdown = shutdown.boxed().shared();
        let addr = listener.local_addr()?;
        let api = match self.api {
            Some(api) => {
                let at = self.config.api.listen;
                let listener = tokio::net::TcpListener::bind(at).await.map_err(|e| {
                    let hint = "--http-listen ADDR, or [api] enabled = false";
                    std::io::Error::new(
                        e.kind(),
                        format!("bind HTTP API address {at}: {e} ({hint})"),
                    )
                })?;
                Some(tokio::spawn(api.serve(listener, shutdown.clone())))
            }
            None => None,
        };
        let gc_state = self.state.clone();
        let gc_metrics = self.metrics.clone();
        let gc_traffic = self.traffic.clone();
        let ttl = self.config.task_idle_ttl;
        let gc = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(10));
            loop {
                tick.tick().await;
                let mut s = state::lock(&gc_state);
                s.gc(ttl);
                gc_metrics.tasks.set(s.tasks.len() as i64);
                // (The state's lock, then the traffic's: `Stats` takes them one after the other.)
                gc_traffic.forget(|id| s.hosts.contains_key(id), traffic::FORGET);
            }
        });
        let service = service::Service {
            state: self.state,
            metrics: self.metrics,
            traffic: self.traffic,
            members_only: self.cluster.is_some(),
        };
        tracing::info!(%addr, tls = self.cluster.is_some(), "scheduler ready");
        // Deadlines: a host that stops answering pings is dropped (its tasks re-planned), a
        // unary call gets its answer within RPC_TIMEOUT or an error, and one connection (one
        // host) has at most MAX_CALLS_PER_HOST calls in progress; watch and attach streams
        // count only while they open. Strangers never get this far: a TLS handshake has its own
        // deadline (see `members`).
        let router = tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(Duration::from_secs(10)))
            .http2_keepalive_timeout(Some(Duration::from_secs(5)))
            .tcp_keepalive(Some(Duration::from_secs(60)))
            .timeout(RPC_TIMEOUT)
            .concurrency_limit_per_connection(MAX_CALLS_PER_HOST)
            .add_service(SchedulerServer::new(service));
        let result = match &self.cluster {
            Some(cluster) => {
                let tls = cluster
                    .server_config(vec![b"h2".to_vec()])
                    .map_err(std::io::Error::other)?;
                router
                    .serve_with_incoming_shutdown(members::incoming(listener, tls), shutdown)
                    .await
            }
            None => {
                let incoming =
                    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
                router
                    .serve_with_incoming_shutdown(incoming, shutdown)
                    .await
            }
        };
        gc.abort();
        if let Some(api) = api {
            api.abort();
        }
        result.map_err(std::io::Error::other)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_config_shows_the_defaults() {
        let example = include_str!("../../packaging/scheduler.toml");
        assert_eq!(
            SchedulerConfig::from_toml(example).unwrap(),
            SchedulerConfig::default()
        );
        assert!(SchedulerConfig::from_toml("listen = \"0.0.0.0:1\"\nbogus = 1").is_err());
    }
}
