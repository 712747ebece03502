//! The `shoal` binary: command-line parsing and wiring only. Each subcommand's work lives in the
//! library crate that owns it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use prometheus_client::registry::Registry;
use shoal_p2p::get::{GetOptions, Output};
use shoal_p2p::{Daemon, DaemonConfig, Digest, admin, api::GetRequest, daemon};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "shoal",
    version,
    about = "Peer-to-peer distribution of container images and large files"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Everything on one machine: today the node daemon (the scheduler and seed join it with the swarm).
    Up(DaemonArgs),
    /// The node daemon: piece store, downloads, local API socket, /healthz and /metrics.
    Daemon(DaemonArgs),
    /// Download a URL through the local daemon (or standalone when none runs).
    Get(GetArgs),
}

#[derive(Args)]
struct DaemonArgs {
    /// TOML config file (see packaging/daemon.toml).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Overrides `data_dir`.
    #[arg(long, env = "SHOAL_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Overrides `metrics_addr` (`/healthz`, `/metrics`).
    #[arg(long)]
    metrics_addr: Option<SocketAddr>,
    /// Overrides `socket` (the local API).
    #[arg(long)]
    socket: Option<PathBuf>,
}

#[derive(Args)]
struct GetArgs {
    url: String,
    /// Output file, or `-` for standard output.
    #[arg(short = 'O', long = "output")]
    output: PathBuf,
    /// Request header sent to the origin, `'Name: value'` (repeatable).
    #[arg(long = "header", short = 'H')]
    headers: Vec<String>,
    /// Expected digest of the whole content (`sha256:<hex>`); on mismatch nothing is written.
    #[arg(long)]
    digest: Option<Digest>,
    /// Makes the task distinct from other downloads of the same URL.
    #[arg(long)]
    tag: Option<String>,
    #[arg(long)]
    application: Option<String>,
    /// Query parameters ignored when identifying the task (replaces the default list).
    #[arg(long, value_delimiter = ',')]
    filtered_query_params: Option<Vec<String>>,
    #[arg(long, env = "SHOAL_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// The daemon's socket (default: `<data dir>/shoal.sock`).
    #[arg(long)]
    socket: Option<PathBuf>,
    /// No progress bar.
    #[arg(long, short = 'q')]
    quiet: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let quiet = matches!(cli.command, Command::Get(_));
    init_tracing(if quiet { "warn" } else { "info" });
    shoal_p2p::install_crypto_provider();
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime starts");
    let result = runtime.block_on(async {
        match cli.command {
            Command::Up(args) | Command::Daemon(args) => {
                run_daemon(args).await.map(|()| ExitCode::SUCCESS)
            }
            Command::Get(args) => run_get(args).await,
        }
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

async fn run_daemon(args: DaemonArgs) -> anyhow::Result<()> {
    let mut config = match &args.config {
        Some(path) => DaemonConfig::load(path)?,
        None => DaemonConfig::default(),
    };
    config.data_dir = args.data_dir.unwrap_or(config.data_dir);
    config.metrics_addr = args.metrics_addr.unwrap_or(config.metrics_addr);
    config.socket = args.socket.or(config.socket);
    let config = config.validate()?;

    let mut registry = Registry::default();
    let daemon = Daemon::build(config.clone(), &mut registry)?;
    let metrics = tokio::net::TcpListener::bind(config.metrics_addr)
        .await
        .with_context(|| format!("bind metrics address {}", config.metrics_addr))?;
    tracing::info!(addr = %metrics.local_addr()?, "metrics listening");
    let socket = daemon.bind_socket().await?;

    let shutdown = CancellationToken::new();
    tokio::spawn(signal_shutdown(shutdown.clone()));
    let admin = tokio::spawn(admin::serve(
        metrics,
        Arc::new(registry),
        shutdown.clone().cancelled_owned(),
    ));
    daemon
        .serve(socket, shutdown.clone().cancelled_owned())
        .await?;
    shutdown.cancel();
    admin.await?.context("metrics server")?;
    Ok(())
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

async fn run_get(args: GetArgs) -> anyhow::Result<ExitCode> {
    let headers = args
        .headers
        .iter()
        .map(|h| {
            h.split_once(':')
                .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        })
        .collect::<Option<Vec<_>>>()
        .context("--header must look like 'Name: value'")?;
    let data_dir = args.data_dir.unwrap_or_else(daemon::default_data_dir);
    let opts = GetOptions {
        socket: args.socket.unwrap_or_else(|| daemon::socket_in(&data_dir)),
        data_dir,
        output: if args.output.as_os_str() == "-" {
            Output::Stdout
        } else {
            Output::File(args.output)
        },
        progress: !args.quiet,
        origin: Default::default(),
        request: GetRequest {
            url: args.url,
            headers,
            tag: args.tag,
            application: args.application,
            filtered_query_params: args.filtered_query_params,
            digest: args.digest,
            output: None,
        },
    };
    match shoal_p2p::get::get(opts).await {
        Ok(_) => Ok(ExitCode::SUCCESS),
        Err(failure) => {
            eprintln!("shoal get: {}", failure.message);
            Ok(ExitCode::from(shoal_p2p::get::exit_code(failure.kind)))
        }
    }
}
