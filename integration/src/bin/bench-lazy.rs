//! `bench-lazy`: how soon a container on a fresh host reads a file of an image whose layer's
//! index the swarm holds, against the full pull of the same image over the same link.
//!
//! A cluster on loopback: a scheduler, a seed and fresh nodes whose pieces come in at
//! `--rate` (the node's `[limits] download_rate` and `origin_rate`: the host's link). The
//! image: a small layer with `cat`, and a big gzip layer of 1 MiB files with one small file
//! stored last. The seed builds the big layer's index first (as a preheat, or a pull on
//! another host, would). Then, each run, side by side on fresh nodes and containerds:
//!
//! * full: `ctr images pull` through the node's mirror (containerd's own overlayfs);
//! * lazy: `shoal pull` (the layers mounted lazily) and `ctr run … cat /data/last.txt`: the time
//!   to that file's bytes, and the bytes the node had fetched by then; then the time until the
//!   node holds the whole layer (background completion), and a read of every file of the
//!   layer against the same read on the full pull's overlayfs snapshot.
//!
//! The first run's lazy host publishes what its reads needed as the layer's prefetch list; the
//! later runs' hosts make those spans present first (prefetch).
//!
//! A benchmark, not a test. `scripts/bench-lazy.sh --size 1GiB --rate 200mbit --runs 3`.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use clap::Parser;
use shoal_integration::cluster::{Cluster, Node};
use shoal_integration::registry::{Access, Image, TestRegistry, copy_cat, store_image, tar_dir};
use shoal_integration::runtimes::{Containerd, hosts_toml};
use shoal_integration::{median, parse_size};

#[derive(Parser)]
struct Args {
    /// The big layer's size, e.g. 1GiB.
    #[arg(long, default_value = "1GiB", value_parser = parse_size)]
    size: u64,
    /// The fresh hosts' link, in bits per second (`200mbit`).
    #[arg(long, default_value = "200mbit")]
    rate: String,
    /// Runs of each kind; the median is reported.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Working directory (default: a temporary directory under /var/tmp).
    #[arg(long)]
    dir: Option<std::path::PathBuf>,
}

/// `200mbit`, `1gbit`: bytes per second.
fn rate(text: &str) -> anyhow::Result<u64> {
    let t = text.to_ascii_lowercase();
    let (n, unit) = t.split_at(t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len()));
    let n: u64 = n.parse().context("--rate")?;
    let bits = match unit {
        "kbit" => n * 1_000,
        "mbit" => n * 1_000_000,
        "gbit" => n * 1_000_000_000,
        _ => anyhow::bail!("--rate: a number and kbit, mbit or gbit"),
    };
    Ok(bits / 8)
}

fn drop_page_cache() {
    let _ = Command::new("sync").status();
    let _ = std::fs::write("/proc/sys/vm/drop_caches", "3");
}

/// The image: `cat` (layer 0) and `data/file-NNNNN.bin` of 1 MiB each, then `data/last.txt`
/// (layer 1, the tar's last entry).
fn image(dir: &Path, size: u64) -> anyhow::Result<Image> {
    let base = dir.join("layer0");
    copy_cat(&base);
    let data = dir.join("layer1/data");
    std::fs::create_dir_all(&data)?;
    for i in 0..size.div_ceil(1 << 20) {
        let bytes = shoal_integration::random_bytes(1 << 20);
        std::fs::write(data.join(format!("file-{i:05}.bin")), bytes)?;
    }
    std::fs::write(data.join("last.txt"), "the last file of the layer\n")?;
    let tars = vec![tar_dir(&base)?, tar_dir(&dir.join("layer1"))?];
    std::fs::remove_dir_all(dir.join("layer1"))?;
    Ok(Image::of_gzip_layers(tars))
}

/// Asks `node`'s mirror for the layer's index until the swarm has it (the seed builds it).
async fn preheat_index(node: &Node, host: &str, layer: &str) -> anyhow::Result<Duration> {
    until_swarm_has(node, host, layer, "index", Duration::from_secs(600)).await
}

/// Asks `node`'s mirror for what the layer's `lazy` header names until the swarm has it.
async fn until_swarm_has(
    node: &Node,
    host: &str,
    layer: &str,
    lazy: &'static str,
    within: Duration,
) -> anyhow::Result<Duration> {
    let url = format!(
        "{}/v2/bench/lazy/blobs/{layer}?ns={host}",
        node.mirror_url()
    );
    let client = reqwest::Client::new();
    let start = Instant::now();
    loop {
        let resp = client.get(&url).header("x-shoal-lazy", lazy).send().await?;
        if resp.status() == 200 {
            return Ok(start.elapsed());
        }
        ensure!(
            start.elapsed() < within,
            "no {lazy} of {layer}: {}",
            resp.status()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn timed(mut cmd: Command) -> anyhow::Result<(f64, String)> {
    let start = Instant::now();
    let out = cmd.output()?;
    ensure!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((
        start.elapsed().as_secs_f64(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    ))
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    tokio::task::spawn_blocking(f).await?
}

/// `cat` of every file of the big layer in a container of `image` (output discarded).
fn read_all_command(
    ctd: &Containerd,
    snapshotter: &str,
    image: &str,
    id: &str,
    files: u64,
) -> Command {
    let mut args: Vec<String> = [
        "run",
        "--rm",
        "--snapshotter",
        snapshotter,
        image,
        id,
        "/bin/cat",
    ]
    .map(str::to_owned)
    .to_vec();
    args.extend((0..files).map(|i| format!("/data/file-{i:05}.bin")));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut cmd = ctd.ctr(&args);
    cmd.stdout(std::process::Stdio::null());
    cmd
}

struct Run {
    full: f64,
    first_read: f64,
    pull: f64,
    fetched_before: u64,
    /// Compressed bytes the reads needed (the spans around what they read).
    needed: u64,
    /// Compressed bytes made present from the layers' prefetch lists by then.
    prefetched: u64,
    /// Bytes the node had from the registry by then.
    origin_before: u64,
    complete: f64,
    /// Until both layers were unpacked beside their mounts.
    unpacked: f64,
    read_all_overlay: f64,
    read_all_lazy: f64,
}

async fn one_run(
    dir: &Path,
    full_node: &Node,
    lazy_node: &Node,
    host: &str,
    reference: &str,
    files: u64,
) -> anyhow::Result<Run> {
    // Full: containerd fetches every layer through the fresh node's mirror, then unpacks.
    drop_page_cache();
    let hosts = dir.join("hosts");
    hosts_toml(
        &hosts,
        host,
        Some(&format!("http://{host}")),
        &full_node.mirror_url(),
    );
    let ctd = Containerd::start(&dir.join("ctd-full")).await;
    let mut cmd = ctd.ctr(&["images", "pull", "--hosts-dir"]);
    cmd.arg(&hosts).arg(reference);
    let (full, _) = blocking(move || timed(cmd)).await?;
    drop_page_cache();
    let cmd = read_all_command(&ctd, "overlayfs", reference, "read-all-full", files);
    let (read_all_overlay, _) = blocking(move || timed(cmd)).await?;
    drop(ctd);

    // Lazy: shoal pull onto the fresh node's snapshotter, then the container reads one file.
    drop_page_cache();
    let store = lazy_node.data_dir.join("store");
    let socket = store.join("snapshotter.sock");
    let ctd = Containerd::start_with(
        &dir.join("ctd-lazy"),
        &format!("[proxy_plugins.shoal]\n  type = \"snapshot\"\n  address = {socket:?}\n"),
    )
    .await;
    let start = Instant::now();
    let mut cmd = shoal_integration::process::shoal();
    cmd.arg("pull")
        .arg(reference)
        .arg("--address")
        .arg(&ctd.socket)
        .arg("--mirror")
        .arg(lazy_node.mirror_url())
        .arg("--data-dir")
        .arg(&store)
        .stdout(std::process::Stdio::null());
    let (pull, _) = blocking(move || timed(cmd)).await?;
    let cmd = ctd.ctr(&[
        "run",
        "--rm",
        "--snapshotter",
        "shoal",
        reference,
        "first-read",
        "/bin/cat",
        "/data/last.txt",
    ]);
    let (_, said) = blocking(move || timed(cmd)).await?;
    let first_read = start.elapsed().as_secs_f64();
    ensure!(said == "the last file of the layer\n", "read {said:?}");
    let needed = lazy_node.metric("shoal_lazy_read_bytes_total").await;
    let prefetched = lazy_node.metric("shoal_lazy_prefetched_bytes_total").await;
    let origin_before = lazy_node
        .metric("shoal_download_bytes_total{source=\"origin\"}")
        .await;
    let mut fetched_before = 0;
    for source in ["origin", "seed", "peer"] {
        fetched_before += lazy_node
            .metric(&format!(
                "shoal_download_bytes_total{{source=\"{source}\"}}"
            ))
            .await;
    }
    // Background completion: the node holds every layer, checked.
    let client = shoal_p2p::api::LocalClient::new(shoal_p2p::api::socket_in(&store));
    loop {
        let tasks = client.tasks().await?;
        let blobs: Vec<_> = tasks
            .iter()
            .filter(|t| t.task.starts_with("sha256:"))
            .collect();
        if blobs.len() >= 2 && blobs.iter().all(|t| t.complete) {
            break;
        }
        ensure!(
            start.elapsed() < Duration::from_secs(1800),
            "the layers never completed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let complete = start.elapsed().as_secs_f64();
    // Then unpacked beside their mounts: the container below stacks on plain files.
    while lazy_node.metric("shoal_lazy_layers_unpacked_total").await < 2 {
        ensure!(
            start.elapsed() < Duration::from_secs(1800),
            "the layers were never unpacked"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let unpacked = start.elapsed().as_secs_f64();
    drop_page_cache();
    let cmd = read_all_command(&ctd, "shoal", reference, "read-all-lazy", files);
    let (read_all_lazy, _) = blocking(move || timed(cmd)).await?;
    drop(ctd);
    Ok(Run {
        full,
        first_read,
        pull,
        fetched_before,
        needed,
        prefetched,
        origin_before,
        complete,
        unpacked,
        read_all_overlay,
        read_all_lazy,
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    ensure!(args.runs >= 1, "--runs must be at least 1");
    let bytes_per_second = rate(&args.rate)?;
    shoal_p2p::install_crypto_provider();
    let tmp = tempfile::Builder::new()
        .prefix("shoal-bench-lazy-")
        .tempdir_in(args.dir.clone().unwrap_or("/var/tmp".into()))?;
    let registry = TestRegistry::start(&tmp.path().join("registry"), &Access::Anonymous).await?;
    eprintln!("making a {} byte layer of 1 MiB files", args.size);
    let image = image(tmp.path(), args.size)?;
    let layer = shoal_integration::sha256(&image.layers[1]);
    let small = shoal_integration::sha256(&image.layers[0]);
    let layer_bytes = image.layers[1].len() as u64;
    store_image(&registry.root, "bench/lazy", "v1", &image).context("store the image")?;
    drop(image);
    let host = registry.url().trim_start_matches("http://").to_owned();
    let reference = format!("{host}/bench/lazy:v1");
    let files = args.size.div_ceil(1 << 20);

    // Two fresh nodes a run, and one that asks for the indexes (as a preheat would).
    let cluster = Cluster::builder()
        .daemons(2 * args.runs + 1)
        .registry(&host, &registry.url())
        .setting("limits", &format!("download_rate = {bytes_per_second}"))
        .setting("limits", &format!("origin_rate = {bytes_per_second}"))
        .setting("snapshotter", "enabled = true")
        // Task content is bounded by its own capacity, not by how full this VM's disk is.
        .setting("gc", "capacity = 64000000000")
        .start()
        .await;
    let asker = &cluster.daemons[2 * args.runs];
    let built = preheat_index(asker, &host, &layer).await?;
    eprintln!("the seed fetched the layer and built its index in {built:.1?}");
    // A preheat indexes every layer of the image.
    preheat_index(asker, &host, &small).await?;

    let mut runs = Vec::new();
    for i in 0..args.runs {
        let run = one_run(
            &tmp.path().join(format!("run-{i}")),
            &cluster.daemons[2 * i],
            &cluster.daemons[2 * i + 1],
            &host,
            &reference,
            files,
        )
        .await?;
        eprintln!(
            "run {i}: full pull {:.2} s; lazy: pull {:.2} s, first read {:.2} s ({:.1} % of full), reads needed {} bytes, {} prefetched, the node held {} of {} by then ({} from the registry), complete {:.1} s; read all: overlayfs {:.2} s, lazy {:.2} s",
            run.full,
            run.pull,
            run.first_read,
            100.0 * run.first_read / run.full,
            run.needed,
            run.prefetched,
            run.fetched_before,
            layer_bytes,
            run.origin_before,
            run.complete,
            run.read_all_overlay,
            run.read_all_lazy
        );
        runs.push(run);
        if i == 0 {
            // The first lazy host publishes its reads (15 s after the first): the next use them.
            until_swarm_has(asker, &host, &layer, "prefetch", Duration::from_secs(120)).await?;
        }
    }
    let col = |f: fn(&Run) -> f64| {
        let v: Vec<f64> = runs.iter().map(f).collect();
        let (lo, hi) = v
            .iter()
            .fold((f64::MAX, 0f64), |(l, h), &x| (l.min(x), h.max(x)));
        (median(v), lo, hi)
    };
    let line = |name: &str, (m, lo, hi): (f64, f64, f64)| {
        println!("  {name:<44} {m:>8.2} s  ({lo:.2}–{hi:.2})");
    };
    println!(
        "a {} byte gzip layer of 1 MiB files (+ cat), fresh hosts at {}, median of {} (spread):",
        layer_bytes, args.rate, args.runs
    );
    line("full: ctr images pull through the node", col(|r| r.full));
    line("lazy: shoal pull", col(|r| r.pull));
    line(
        "lazy: shoal pull + ctr run, last file read",
        col(|r| r.first_read),
    );
    line("lazy: whole layer held (background)", col(|r| r.complete));
    line(
        "lazy: whole layers unpacked beside the mounts",
        col(|r| r.unpacked),
    );
    line(
        "read every file: overlayfs (full pull)",
        col(|r| r.read_all_overlay),
    );
    line(
        "read every file: lazy layer, whole and unpacked",
        col(|r| r.read_all_lazy),
    );
    let first = col(|r| r.first_read / r.full * 100.0);
    let med = |f: fn(&Run) -> u64| median(runs.iter().map(|r| f(r) as f64).collect()) as u64;
    println!(
        "  first read / full pull: {:.1} % ({:.1}–{:.1}); the reads needed {} bytes, the node held {} by then (background included), medians",
        first.0,
        first.1,
        first.2,
        med(|r| r.needed),
        med(|r| r.fetched_before)
    );
    // Run 0's host had no prefetch list (it published one); the later hosts had it.
    if let [first, later @ ..] = runs.as_slice()
        && !later.is_empty()
    {
        let with: Vec<f64> = later.iter().map(|r| r.first_read).collect();
        println!(
            "  first read without a prefetch list (run 0): {:.2} s; with the list (runs 1–{}): {:.2} s median, {} bytes prefetched, {} bytes from the registry (max)",
            first.first_read,
            later.len(),
            median(with),
            med(|r| r.prefetched),
            later.iter().map(|r| r.origin_before).max().unwrap_or(0)
        );
    }
    Ok(())
}
