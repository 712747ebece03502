//! The `shoal` binary: command-line parsing and wiring only. Each service lives in the library
//! crate that owns it; this file composes them into one process per role.

mod cli;
mod containerd;
mod doctor;
mod preheat;
mod process;
mod systemd;

use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use cli::{Cli, Command};
use process::Process;
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
            | Command::Token(_)
            | Command::Preheat(_)
            | Command::Doctor(_)
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
                if args.daemon.check {
                    // Without making the cluster of its own that a start would.
                    args.daemon.config(false, true)?;
                    return config_ok();
                }
                let (scheduler, node) = args.configs()?;
                process.scheduler = Some(scheduler);
                process.node_from(node);
                process.seed = Some(Arc::new(shoal_seed::Seed));
            }
            Command::Daemon(args) => {
                let check = args.check;
                process.node_from(args.config(false, false)?);
                if check {
                    return config_ok();
                }
            }
            Command::Seed(args) => {
                let check = args.check;
                process.node_from(args.config(true, false)?);
                if check {
                    return config_ok();
                }
                process.seed = Some(Arc::new(shoal_seed::Seed));
            }
            Command::Scheduler(args) => {
                process.scheduler = Some(args.config()?);
                if args.check {
                    return config_ok();
                }
                process.metrics_addr = Some(args.metrics_addr);
            }
            Command::Snapshotter(args) => {
                process.snapshotter = Some(args.setup()?);
                process.metrics_addr = Some(args.metrics_addr);
            }
            Command::Ca(args) => return args.run().map(|()| ExitCode::SUCCESS),
            Command::Install(args) => return args.run().map(|()| ExitCode::SUCCESS),
            Command::Pull(args) => return args.run().await.map(|()| ExitCode::SUCCESS),
            Command::Token(args) => return args.run().map(|()| ExitCode::SUCCESS),
            Command::Preheat(args) => return args.run().await.map(|()| ExitCode::SUCCESS),
            Command::Get(args) => return Ok(shoal_node::get::run(args.options()?).await.into()),
            Command::Status(args) => return args.run().await.map(|()| ExitCode::SUCCESS),
            Command::Doctor(args) => {
                return args.run().await.map(|fine| {
                    if fine {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::FAILURE
                    }
                });
            }
        }
        process.run(shutdown).await.map(|()| ExitCode::SUCCESS)
    });
    result.unwrap_or_else(|e| {
        eprintln!("shoal: {e:#}");
        ExitCode::FAILURE
    })
}

/// `--check`: the config was read and is valid.
fn config_ok() -> anyhow::Result<ExitCode> {
    println!("config ok");
    Ok(ExitCode::SUCCESS)
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
