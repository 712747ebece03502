//! The `shoal` binary: command-line parsing and wiring only. Each service lives in the library
//! crate that owns it; this file composes them into one process per role.

mod cli;
mod containerd;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use cli::{Cli, Command};
use prometheus_client::registry::Registry;
use shoal_mirror::{Proxy, ProxyConfig};
use shoal_node::{Daemon, DaemonConfig, admin};
use shoal_p2p::JobHandler;
use shoal_scheduler::{Scheduler, SchedulerConfig};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let quiet = matches!(
        cli.command,
        Command::Get(_)
            | Command::Status(_)
            | Command::Ca(_)
            | Command::Install(_)
            | Command::Pull(_)
    );
    let filter = tracing_subscriber::EnvFilter::try_from_env("SHOAL_LOG").unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(if quiet { "warn" } else { "info" })
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    shoal_p2p::install_crypto_provider();
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime starts");
    let result = runtime.block_on(async {
        let shutdown = CancellationToken::new();
        tokio::spawn(signal_shutdown(shutdown.clone()));
        let mut process = Process::default();
        match cli.command {
            Command::Up(args) => {
                let (scheduler, node) = args.configs()?;
                process.scheduler = Some(scheduler);
                process.node_from(node);
                process.seed = Some(Arc::new(shoal_seed::Seed));
            }
            Command::Daemon(args) => process.node_from(args.config(false, false)?),
            Command::Seed(args) => {
                process.node_from(args.config(true, false)?);
                process.seed = Some(Arc::new(shoal_seed::Seed));
            }
            Command::Scheduler(args) => {
                process.scheduler = Some(args.config()?);
                process.metrics_addr = Some(args.metrics_addr);
            }
            Command::Snapshotter(args) => {
                process.snapshotter = Some(args.setup()?);
                process.metrics_addr = Some(args.metrics_addr);
            }
            Command::Ca(args) => return args.run().map(|()| ExitCode::SUCCESS),
            Command::Install(args) => return args.run().map(|()| ExitCode::SUCCESS),
            Command::Pull(args) => return args.run().await.map(|()| ExitCode::SUCCESS),
            Command::Get(args) => return Ok(shoal_node::get::run(args.options()?).await.into()),
            Command::Status(args) => return args.run().await.map(|()| ExitCode::SUCCESS),
        }
        process.run(shutdown).await.map(|()| ExitCode::SUCCESS)
    });
    result.unwrap_or_else(|e| {
        eprintln!("shoal: {e:#}");
        ExitCode::FAILURE
    })
}

/// The services one process runs, with one metrics endpoint.
#[derive(Default)]
struct Process {
    scheduler: Option<SchedulerConfig>,
    /// The node daemon, and the registry mirror beside it when it is on.
    node: Option<(DaemonConfig, Option<ProxyConfig>)>,
    /// Makes the node a seed.
    seed: Option<Arc<dyn JobHandler>>,
    /// The containerd snapshotter.
    snapshotter: Option<shoal_snapshotter::Setup>,
    /// The metrics address when there is no node (whose config names it).
    metrics_addr: Option<SocketAddr>,
}

impl Process {
    fn node_from(&mut self, node: cli::NodeConfigs) {
        self.node = Some((node.daemon, node.proxy));
        self.snapshotter = node.snapshotter;
    }

    /// Runs every service until the first one ends (error or shutdown), then stops the rest.
    async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
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
        if let Some(shoal_snapshotter::Setup {
            root,
            socket,
            mut remote,
        }) = self.snapshotter
        {
            // The node's mirror, configured on port 0, is on the port it was given.
            if let (Some(r), Some(port)) = (remote.as_mut(), mirror_port)
                && r.mirror.port() == Some(0)
            {
                let _ = r.mirror.set_port(Some(port));
            }
            let snapshotter = shoal_snapshotter::Snapshotter::open(&root)
                .with_context(|| format!("snapshots in {}", root.display()))?;
            let listener = shoal_snapshotter::bind(&socket)
                .with_context(|| format!("bind snapshotter socket {}", socket.display()))?;
            tracing::info!(socket = %socket.display(), root = %root.display(), "snapshotter ready");
            let stop = stop();
            tasks.spawn(async move {
                shoal_snapshotter::serve(snapshotter, remote, listener, stop)
                    .await
                    .context("snapshotter")
            });
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

async fn signal_shutdown(token: CancellationToken) {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler installs");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
    token.cancel();
}
