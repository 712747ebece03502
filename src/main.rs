//! The `shoal` binary: command-line parsing and wiring only. Each subcommand's work lives in the
//! library crate that owns it.

mod cli;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use cli::{CaArgs, Cli, Command, GetArgs, StatusArgs};
use prometheus_client::registry::Registry;
use shoal_mirror::{Ca, Proxy, ProxyConfig};
use shoal_p2p::{Daemon, DaemonConfig, admin};
use shoal_scheduler::{Scheduler, SchedulerConfig};
use tokio_util::sync::CancellationToken;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let quiet = matches!(
        cli.command,
        Command::Get(_) | Command::Status(_) | Command::Ca(_)
    );
    init_tracing(if quiet { "warn" } else { "info" });
    shoal_p2p::install_crypto_provider();
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime starts");
    let result = runtime.block_on(async {
        let shutdown = CancellationToken::new();
        tokio::spawn(signal_shutdown(shutdown.clone()));
        match cli.command {
            Command::Up(args) => {
                let (scheduler, node) = args.configs()?;
                run_node(Some(scheduler), Some(node), None, shutdown).await
            }
            Command::Daemon(args) => {
                run_node(None, Some(args.config(false)?), None, shutdown).await
            }
            Command::Seed(args) => run_node(None, Some(args.config(true)?), None, shutdown).await,
            Command::Ca(args) => run_ca(args),
            Command::Scheduler(args) => {
                run_node(
                    Some(args.config()?),
                    None,
                    Some(args.metrics_addr),
                    shutdown,
                )
                .await
            }
            Command::Get(args) => return run_get(args).await,
            Command::Status(args) => run_status(args).await,
        }
        .map(|()| ExitCode::SUCCESS)
    });
    result.unwrap_or_else(|e| {
        eprintln!("shoal: {e:#}");
        ExitCode::FAILURE
    })
}

fn init_tracing(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SHOAL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

/// Runs a scheduler, a daemon, or both in one process, with one metrics endpoint.
async fn run_node(
    scheduler: Option<SchedulerConfig>,
    daemon: Option<(DaemonConfig, Option<ProxyConfig>)>,
    metrics_addr: Option<SocketAddr>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut registry = Registry::default();
    let mut tasks = tokio::task::JoinSet::new();
    if let Some(config) = scheduler {
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("bind scheduler address {}", config.listen))?;
        let scheduler = Scheduler::build(config, &mut registry);
        let stop = shutdown.clone().cancelled_owned();
        tasks.spawn(async move { scheduler.serve(listener, stop).await.context("scheduler") });
    }
    let metrics_addr = daemon
        .as_ref()
        .map(|(d, _)| d.metrics_addr)
        .or(metrics_addr)
        .context("no metrics address")?;
    if let Some((config, proxy)) = daemon {
        let data_dir = config.data_dir.clone();
        let daemon = Daemon::build(config, &mut registry).await?;
        // The mirror binds before the local API socket: a client that finds the socket ready
        // finds the mirror ready too.
        if let Some(proxy) = proxy {
            let proxy = Proxy::new(proxy, &data_dir, daemon.downloader().clone(), &mut registry)?;
            let listener = proxy.bind().await?;
            let stop = shutdown.clone().cancelled_owned();
            tasks.spawn(async move {
                proxy.serve(listener, stop).await;
                Ok(())
            });
        }
        let socket = daemon.bind_socket().await?;
        let stop = shutdown.clone().cancelled_owned();
        tasks.spawn(async move { daemon.serve(socket, stop).await.context("daemon") });
    }
    let metrics = tokio::net::TcpListener::bind(metrics_addr)
        .await
        .with_context(|| format!("bind metrics address {metrics_addr}"))?;
    tracing::info!(addr = %metrics.local_addr()?, "metrics listening");
    let stop = shutdown.clone().cancelled_owned();
    let registry = Arc::new(registry);
    tasks.spawn(async move {
        admin::serve(metrics, registry, stop)
            .await
            .context("metrics server")
    });
    // The first service to end (error or shutdown) ends the node.
    let first = tasks.join_next().await.context("no services")?;
    shutdown.cancel();
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    first?
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

/// `shoal ca`: makes the CA when missing, and says how to trust it.
fn run_ca(args: CaArgs) -> anyhow::Result<()> {
    let (cert, key) = args.paths()?;
    let (_, created) = Ca::load_or_create(&cert, &key)?;
    println!(
        "{}",
        shoal_mirror::ca::trust_instructions(&cert, &key, created)
    );
    Ok(())
}

async fn run_status(args: StatusArgs) -> anyhow::Result<()> {
    let status = shoal_p2p::api::LocalClient::new(args.socket())
        .status()
        .await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print!("{status}");
    }
    Ok(())
}

async fn run_get(args: GetArgs) -> anyhow::Result<ExitCode> {
    let opts = args.options()?;
    match shoal_p2p::get::get(opts).await {
        Ok(_) => Ok(ExitCode::SUCCESS),
        Err(failure) => {
            eprintln!("shoal get: {}", failure.message);
            Ok(ExitCode::from(shoal_p2p::get::exit_code(failure.kind)))
        }
    }
}
