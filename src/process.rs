//! One process's services (scheduler, node daemon and mirror, snapshotter) and its metrics
//! endpoint, run together until the first ends.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use prometheus_client::registry::Registry;
use shoal_mirror::{Proxy, ProxyConfig};
use shoal_node::{Daemon, DaemonConfig, admin};
use shoal_p2p::JobHandler;
use shoal_scheduler::{Scheduler, SchedulerConfig};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// The services one process runs, with one metrics endpoint.
#[derive(Default)]
pub struct Process {
    pub scheduler: Option<SchedulerConfig>,
    /// The node daemon, and the registry mirror beside it when it is on.
    pub node: Option<(DaemonConfig, Option<ProxyConfig>)>,
    /// Makes the node a seed.
    pub seed: Option<Arc<dyn JobHandler>>,
    /// The containerd snapshotter.
    pub snapshotter: Option<shoal_snapshotter::Setup>,
    /// The metrics address when there is no node (whose config names it).
    pub metrics_addr: Option<SocketAddr>,
}

impl Process {
    pub fn node_from(&mut self, node: crate::cli::NodeConfigs) {
        self.node = Some((node.daemon, node.proxy));
        self.snapshotter = node.snapshotter;
    }

    /// Runs every service until the first one ends (error or shutdown), then stops the rest.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let mut registry = Registry::default();
        let mut tasks = JoinSet::new();
        let stop = || shutdown.clone().cancelled_owned();
        if let Some(config) = self.scheduler {
            let listener = tokio::net::TcpListener::bind(config.listen)
                .await
                .with_context(|| format!("bind scheduler address {}", config.listen))?;
            let scheduler = Scheduler::build(config, &mut registry)?;
            let stop = stop();
            tasks.spawn(async move { scheduler.serve(listener, stop).await.context("scheduler") });
        }
        let metrics_addr = match &self.node {
            Some((d, _)) => d.metrics_addr,
            None => self.metrics_addr.context("no metrics address")?,
        };
        let mut mirror_port = None;
        if let Some((config, proxy)) = self.node {
            let (data_dir, limits) = (config.data_dir.clone(), config.limits);
            let daemon = Daemon::build(config, self.seed, &mut registry).await?;
            // The mirror binds before the local API socket: a client that finds the socket
            // ready finds the mirror ready too.
            if let Some(proxy) = proxy {
                let proxy = Proxy::new(
                    proxy,
                    limits,
                    &data_dir,
                    daemon.downloader().clone(),
                    &mut registry,
                )?;
                let listener = proxy.bind().await?;
                mirror_port = Some(listener.local_addr()?.port());
                let stop = stop();
                tasks.spawn(async move {
                    proxy.serve(listener, stop).await;
                    Ok(())
                });
            }
            let socket = daemon.bind_socket().await?;
            let stop = stop();
            tasks.spawn(async move { daemon.serve(socket, stop).await.context("daemon") });
        }
        if let Some(setup) = self.snapshotter {
            if let Some(remote) = &setup.remote {
                remote.metrics().register(&mut registry);
            }
            let serving = setup.start(mirror_port, stop()).context("snapshotter")?;
            tasks.spawn(async move { serving.await.context("snapshotter") });
        }
        let metrics = tokio::net::TcpListener::bind(metrics_addr)
            .await
            .with_context(|| format!("bind metrics address {metrics_addr}"))?;
        tracing::info!(addr = %metrics.local_addr()?, "metrics listening");
        let (registry, stop) = (Arc::new(registry), stop());
        tasks.spawn(async move {
            admin::serve(metrics, registry, stop)
                .await
                .context("metrics")
        });
        let first = tasks.join_next().await.context("no services")?;
        shutdown.cancel();
        while let Some(r) = tasks.join_next().await {
            r??;
        }
        first?
    }
}
