//! `lab`: many hosts on one machine (network namespaces on a bridge, links shaped with tc), and
//! the benchmark that compares Shoal with what users would run instead. Needs root.
//!
//! ```text
//! cargo run --release -p shoal-integration --bin lab -- swarm --hosts 8 --size 256MiB --rate 200mbit \
//!     [--scenarios direct,pullthrough,nginx,shoal] [--fault seed-kill:0.3] [--pull-layers 4]
//!     [--json out.json]
//! cargo run --release -p shoal-integration --bin lab -- clean
//! ```

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use shoal_integration::lab::swarm::{self, Fault, Params, Scenario};
use shoal_integration::lab::{self, Lab};
use shoal_integration::parse_size;

#[derive(Parser)]
#[command(about = "Shoal's multi-host lab on one machine")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// N hosts fetch one blob (or pull one image) at once, by each scenario, every link shaped
    /// to one rate.
    Swarm {
        #[arg(long, default_value_t = 8)]
        hosts: usize,
        /// Blob size, e.g. 256MiB.
        #[arg(long, default_value = "256MiB", value_parser = parse_size)]
        size: u64,
        /// Link rate of every host, e.g. 200mbit, 1gbit.
        #[arg(long, default_value = "200mbit", value_parser = parse_rate)]
        rate: u64,
        /// Schedulers of the shoal scenario, each on its own host, sharing the tasks.
        #[arg(long, default_value_t = 1)]
        schedulers: usize,
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "direct,pullthrough,nginx,shoal"
        )]
        scenarios: Vec<Scenario>,
        /// A fault for the shoal scenario: `seed-kill[:FRACTION]`, `parent-kill`,
        /// `origin-gone`, `loss[:PERCENT]`, `corrupt-peer`, `scheduler-blackhole`,
        /// `seed-no-origin`, `daemon-restart`.
        #[arg(long)]
        fault: Option<Fault>,
        /// Pull an image of this many layers (`--size` in all) with containerd's
        /// `ctr images pull` on every host, instead of fetching one blob.
        #[arg(long)]
        pull_layers: Option<usize>,
        /// A `[swarm]` setting of the Shoal scenarios' nodes, e.g. `piece_concurrency = 4`
        /// (repeatable).
        #[arg(long = "swarm-setting")]
        swarm_settings: Vec<String>,
        /// Two zones joined by a link of this rate (e.g. 50mbit): the second half of the
        /// hosts in the second zone, everything else in the first.
        #[arg(long, value_parser = parse_rate)]
        zone_rate: Option<u64>,
        /// Also write the results as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Keep the hosts' files here (default: a temporary directory, removed at the end).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Removes what lab runs that were killed left behind (namespaces and their processes).
    Clean,
}

/// `200mbit`, `1gbit`, `500kbit`, or bits per second.
fn parse_rate(s: &str) -> Result<u64, String> {
    let lower = s.trim().to_ascii_lowercase();
    let split = lower
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(lower.len());
    let (n, unit) = lower.split_at(split);
    let n: u64 = n.parse().map_err(|_| format!("bad rate {s:?}"))?;
    let mult = match unit {
        "" | "bit" => 1,
        "kbit" => 1_000,
        "mbit" => 1_000_000,
        "gbit" => 1_000_000_000,
        u => return Err(format!("unknown rate unit {u:?} (use kbit, mbit, gbit)")),
    };
    Ok(n * mult)
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Clean => {
            let n = lab::clean_stale()?;
            println!("removed {n} namespaces");
            Ok(())
        }
        Cmd::Swarm {
            hosts,
            size,
            rate,
            schedulers,
            scenarios,
            fault,
            pull_layers,
            swarm_settings,
            zone_rate,
            json,
            dir,
        } => {
            ensure_shoal_built()?;
            let params = Params {
                hosts,
                size,
                rate_bits_per_s: rate,
                schedulers,
                scenarios,
                fault,
                pull_layers,
                swarm_settings,
                zone_rate,
            };
            let mut lab = Lab::new(dir.as_deref())?;
            let scratch = lab.temporary_dir().map(std::path::Path::to_path_buf);
            // Ctrl-C or SIGTERM: remove the lab's namespaces and processes before exiting,
            // instead of dying with them left behind.
            let (tx, rx) = std::sync::mpsc::channel();
            let runner = std::thread::spawn(move || {
                let r = swarm::run(&mut lab, &params);
                let _ = tx.send(());
                (lab, r)
            });
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let interrupted = rt.block_on(async {
                use tokio::signal::unix::{SignalKind, signal};
                let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
                let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
                loop {
                    if rx.try_recv().is_ok() {
                        return anyhow::Ok(false);
                    }
                    tokio::select! {
                        _ = int.recv() => return Ok(true),
                        _ = term.recv() => return Ok(true),
                        () = tokio::time::sleep(std::time::Duration::from_millis(50)) => {}
                    }
                }
            })?;
            if interrupted {
                eprintln!("lab: interrupted; removing the lab");
                // Twice: the runner may have been making a namespace the first pass missed.
                lab::remove_all_of_this_run();
                std::thread::sleep(std::time::Duration::from_millis(200));
                lab::remove_all_of_this_run();
                if let Some(d) = scratch {
                    let _ = std::fs::remove_dir_all(d);
                }
                std::process::exit(130);
            }
            let (lab, outcomes) = runner.join().expect("lab runner");
            drop(lab);
            let outcomes = outcomes?;
            print!("{}", swarm::table(&outcomes));
            if let Some(path) = json {
                let doc = serde_json::json!({ "scenarios": outcomes });
                std::fs::write(&path, serde_json::to_string_pretty(&doc)?)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            Ok(())
        }
    }
}

/// Builds the release `shoal` binary the lab runs, if it is missing.
fn ensure_shoal_built() -> anyhow::Result<()> {
    if shoal_integration::process::shoal_bin_path().exists() {
        return Ok(());
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let profile = if cfg!(debug_assertions) {
        vec![]
    } else {
        vec!["--release"]
    };
    let status = std::process::Command::new(cargo)
        .args(["build", "--bin", "shoal"])
        .args(profile)
        .status()
        .context("cargo build --bin shoal")?;
    anyhow::ensure!(status.success(), "building shoal failed");
    Ok(())
}
