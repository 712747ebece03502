//! `bench-pull`: an image from docker-registry on loopback into containerd, cold each time,
//! two ways side by side, alternating:
//!
//! * `ctr images pull` (containerd fetches every layer into its content store, then unpacks
//!   them onto its overlayfs snapshotter);
//! * `shoal pull` (a fresh `shoal up` node; its snapshotter reads each layer through the node's
//!   mirror and unpacks it while it streams; the other layers are fetched meanwhile).
//!
//! A benchmark, not a test: it checks that each pull made the image.
//! `scripts/bench-pull.sh --size 1GiB --layers 4 --runs 3` (builds release binaries first).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use clap::Parser;
use shoal_integration::cluster::free_port;
use shoal_integration::process::{ChildGuard, shoal, wait_until};
use shoal_integration::registry::{Access, Image, TestRegistry, store_image};
use shoal_integration::runtimes::Containerd;
use shoal_integration::{median, parse_size};

#[derive(Parser)]
struct Args {
    /// The image's size (its layers together), e.g. 1GiB.
    #[arg(long, default_value = "1GiB", value_parser = parse_size)]
    size: u64,
    #[arg(long, default_value_t = 4)]
    layers: usize,
    /// Pulls of each kind; the median is reported.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Working directory (default: a temporary directory under /var/tmp).
    #[arg(long)]
    dir: Option<PathBuf>,
}

/// Writes dirty pages and drops the page cache, so no pull reads what the last one left.
fn drop_page_cache() {
    let _ = Command::new("sync").status();
    let _ = std::fs::write("/proc/sys/vm/drop_caches", "3");
}

fn run(mut cmd: Command) -> anyhow::Result<f64> {
    let start = Instant::now();
    let out = cmd.output()?;
    ensure!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(start.elapsed().as_secs_f64())
}

async fn ctr_pull(dir: &Path, reference: &str) -> anyhow::Result<f64> {
    let ctd = Containerd::start(dir).await;
    let mut cmd = ctd.ctr(&["images", "pull", "--plain-http", reference]);
    cmd.stdout(std::process::Stdio::null());
    let secs = tokio::task::spawn_blocking(move || run(cmd)).await??;
    drop(ctd);
    Ok(secs)
}

async fn shoal_pull(dir: &Path, registry: &TestRegistry, reference: &str) -> anyhow::Result<f64> {
    let data_dir = dir.join("node");
    let proxy_port = free_port();
    let config = dir.join("shoal.toml");
    std::fs::create_dir_all(dir)?;
    std::fs::write(
        &config,
        format!(
            "data_dir = {data_dir:?}\n[proxy]\nlisten = \"127.0.0.1:{proxy_port}\"\n\
             [proxy.registries]\n{:?} = {:?}\n",
            reference.split('/').next().unwrap_or_default(),
            registry.url()
        ),
    )?;
    let mut cmd = shoal();
    cmd.env("SHOAL_LOG", "warn")
        .arg("up")
        .arg("--config")
        .arg(&config)
        .arg("--metrics-addr")
        .arg(format!("127.0.0.1:{}", free_port()))
        .arg("--upload-addr")
        .arg(format!("127.0.0.1:{}", free_port()))
        .arg("--scheduler-listen")
        .arg(format!("127.0.0.1:{}", free_port()))
        .arg("--http-listen")
        .arg(format!("127.0.0.1:{}", free_port()));
    let _up = ChildGuard::spawn(cmd);
    let socket = data_dir.join("snapshotter.sock");
    wait_until(Duration::from_secs(30), "the node's snapshotter", || {
        std::os::unix::net::UnixStream::connect(&socket).is_ok()
    })
    .await;
    let ctd = Containerd::start_with(
        &dir.join("containerd"),
        &format!("[proxy_plugins.shoal]\n  type = \"snapshot\"\n  address = {socket:?}\n"),
    )
    .await;
    let mut cmd = shoal();
    cmd.arg("pull")
        .arg(reference)
        .arg("--address")
        .arg(&ctd.socket)
        .arg("--mirror")
        .arg(format!("http://127.0.0.1:{proxy_port}"))
        .arg("--data-dir")
        .arg(&data_dir);
    let secs = tokio::task::spawn_blocking(move || run(cmd)).await??;
    drop(ctd);
    Ok(secs)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    ensure!(
        args.runs >= 1 && args.layers >= 1,
        "--runs and --layers must be at least 1"
    );
    shoal_p2p::install_crypto_provider();
    let tmp = tempfile::Builder::new()
        .prefix("shoal-bench-pull-")
        .tempdir_in(args.dir.clone().unwrap_or("/var/tmp".into()))?;
    let registry = TestRegistry::start(&tmp.path().join("registry"), &Access::Anonymous).await?;
    let size = usize::try_from(args.size)?;
    let sizes: Vec<usize> = (0..args.layers)
        .map(|i| size / args.layers + usize::from(i < size % args.layers))
        .collect();
    eprintln!(
        "storing a {}-layer image of {} bytes in the registry",
        args.layers, args.size
    );
    let image = Image::random(&sizes);
    store_image(&registry.root, "bench/app", "v1", &image).context("store the image")?;
    drop(image);
    let host = registry.url().trim_start_matches("http://").to_owned();
    let reference = format!("{host}/bench/app:v1");

    let (mut ctr, mut shoal) = (Vec::new(), Vec::new());
    for i in 0..args.runs {
        drop_page_cache();
        let c = ctr_pull(&tmp.path().join(format!("ctr-{i}")), &reference).await?;
        drop_page_cache();
        let s = shoal_pull(
            &tmp.path().join(format!("shoal-{i}")),
            &registry,
            &reference,
        )
        .await?;
        eprintln!("run {i}: ctr images pull {c:.2} s, shoal pull {s:.2} s");
        ctr.push(c);
        shoal.push(s);
        let _ = std::fs::remove_dir_all(tmp.path().join(format!("ctr-{i}")));
        let _ = std::fs::remove_dir_all(tmp.path().join(format!("shoal-{i}")));
    }
    let spread = |v: &[f64]| {
        let (lo, hi) = v
            .iter()
            .fold((f64::MAX, 0f64), |(l, h), &x| (l.min(x), h.max(x)));
        format!("{lo:.2}–{hi:.2}")
    };
    let (c, s) = (median(ctr.clone()), median(shoal.clone()));
    println!(
        "a {}-layer image of {} bytes from docker-registry on loopback, cold, median of {} (spread):",
        args.layers, args.size, args.runs
    );
    println!(
        "  ctr images pull (overlayfs)         {c:>7.2} s  ({})",
        spread(&ctr)
    );
    println!(
        "  shoal pull (shoal up + snapshotter) {s:>7.2} s  ({})  {:.2}x faster",
        spread(&shoal),
        c / s
    );
    Ok(())
}
