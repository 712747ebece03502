//! `bench-mirror`: the registry mirror against the registry itself, on loopback, in one run.
//!
//! * A warm blob (already in the daemon's store) read through the mirror with curl, beside the
//!   same blob read with curl straight from docker-registry: median throughput and the ratio.
//! * A manifest GET by tag, through the mirror (passed through to the registry) and straight
//!   from the registry, on kept-alive connections: median latency and what the mirror adds.
//!
//! A benchmark, not a test: it checks only that the bytes are right.
//! `scripts/bench-mirror.sh --size 1GiB` (builds release binaries, then runs this).

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use clap::Parser;
use shoal_integration::cluster::free_port;
use shoal_integration::process::{ChildGuard, peak_rss_kib, shoal, wait_until};
use shoal_integration::registry::{Access, Image, TestRegistry, store_blob};
use shoal_integration::{median, parse_size, random_bytes};

#[derive(Parser)]
struct Args {
    /// Blob size, e.g. 1GiB, 256MiB.
    #[arg(long, default_value = "1GiB", value_parser = parse_size)]
    size: u64,
    /// Blob reads of each kind; the median is reported.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Manifest requests of each kind.
    #[arg(long, default_value_t = 1000)]
    requests: usize,
    /// Working directory (default: a temporary directory under /var/tmp).
    #[arg(long)]
    dir: Option<PathBuf>,
}

const REGISTRY: &str = "bench.invalid:5000";
const NS: &str = "ns=bench.invalid%3A5000";

/// curl's download time for `url` into /dev/null, checking the size.
fn curl_seconds(url: &str, size: u64) -> anyhow::Result<f64> {
    let out = Command::new("curl")
        .args([
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{size_download} %{time_total}",
        ])
        .arg(url)
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let parts: Vec<&str> = text.split_whitespace().collect();
    ensure!(
        out.status.success() && parts.len() == 3 && parts[0] == "200",
        "curl {url}: {text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(
        parts[1] == size.to_string(),
        "curl {url} got {} bytes",
        parts[1]
    );
    Ok(parts[2].parse()?)
}

/// Median latency of `n` sequential GETs of `url` on one kept-alive connection, in ms.
async fn latency_ms(
    client: &reqwest::Client,
    url: &str,
    n: usize,
    expect: &[u8],
) -> anyhow::Result<f64> {
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        let start = Instant::now();
        let resp = client
            .get(url)
            .header("accept", shoal_integration::registry::MANIFEST_TYPE)
            .send()
            .await?;
        ensure!(resp.status() == 200, "{url}: {}", resp.status());
        let body = resp.bytes().await?;
        v.push(start.elapsed().as_secs_f64() * 1000.0);
        ensure!(body == expect, "{url}: wrong manifest");
    }
    Ok(median(v))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    ensure!(
        args.runs >= 1 && args.requests >= 1,
        "--runs and --requests must be at least 1"
    );
    shoal_p2p::install_crypto_provider();
    let tmp = tempfile::Builder::new()
        .prefix("shoal-bench-mirror-")
        .tempdir_in(args.dir.clone().unwrap_or("/var/tmp".into()))?;
    let registry = TestRegistry::start(&tmp.path().join("registry"), &Access::Anonymous).await?;
    eprintln!("storing a {} byte blob in the registry", args.size);
    let data = random_bytes(usize::try_from(args.size)?);
    let digest = store_blob(&registry.root, "bench/app", &data)?;
    drop(data);
    let image = Image::random(&[1000]);
    image.push(&registry.url(), "bench/app", "v1", None).await?;

    let proxy_port = free_port();
    let config = tmp.path().join("daemon.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = {:?}\n[proxy]\nlisten = \"127.0.0.1:{proxy_port}\"\n\
             [proxy.registries]\n{REGISTRY:?} = {:?}\n",
            tmp.path().join("store"),
            registry.url()
        ),
    )?;
    let mut cmd = shoal();
    cmd.env("SHOAL_LOG", "warn")
        .arg("daemon")
        .arg("--config")
        .arg(&config)
        .arg("--metrics-addr")
        .arg("127.0.0.1:0");
    let daemon = ChildGuard::spawn(cmd);
    wait_until(Duration::from_secs(20), "the mirror to listen", || {
        std::net::TcpStream::connect(("127.0.0.1", proxy_port)).is_ok()
    })
    .await;

    let direct = format!("{}/v2/bench/app/blobs/{digest}", registry.url());
    let mirror = format!("http://127.0.0.1:{proxy_port}/v2/bench/app/blobs/{digest}?{NS}");
    eprintln!("warming the mirror (first read fetches from the registry)");
    let cold = curl_seconds(&mirror, args.size).context("cold read")?;
    let (mut d, mut m) = (Vec::new(), Vec::new());
    for _ in 0..args.runs {
        d.push(curl_seconds(&direct, args.size)?);
        m.push(curl_seconds(&mirror, args.size)?);
    }
    let rss = peak_rss_kib(daemon.child.id());
    let mb = |s: f64| args.size as f64 / s / 1e6;
    let (d, m) = (median(d), median(m));

    let client = reqwest::Client::builder().no_proxy().build()?;
    let tag = |base: &str, q: &str| format!("{base}/v2/bench/app/manifests/v1{q}");
    let direct_url = tag(&registry.url(), "");
    let mirror_url = tag(&format!("http://127.0.0.1:{proxy_port}"), &format!("?{NS}"));
    // Warm both connections, then alternate blocks so drift hits both alike.
    latency_ms(&client, &direct_url, 10, &image.manifest).await?;
    latency_ms(&client, &mirror_url, 10, &image.manifest).await?;
    let (mut ld, mut lm) = (Vec::new(), Vec::new());
    let block = 50.min(args.requests);
    for _ in 0..args.requests.div_ceil(block) {
        ld.push(latency_ms(&client, &direct_url, block, &image.manifest).await?);
        lm.push(latency_ms(&client, &mirror_url, block, &image.manifest).await?);
    }
    let (ld, lm) = (median(ld), median(lm));

    println!(
        "blob of {} bytes on loopback, median of {} reads (curl -o /dev/null):",
        args.size, args.runs
    );
    println!(
        "  straight from docker-registry  {:>8.3} s  {:>7.0} MB/s",
        d,
        mb(d)
    );
    println!(
        "  through the mirror, warm       {:>8.3} s  {:>7.0} MB/s  ({:.2}x the registry's throughput)",
        m,
        mb(m),
        d / m
    );
    println!(
        "  through the mirror, cold       {:>8.3} s  {:>7.0} MB/s  (first read: registry -> store -> client)",
        cold,
        mb(cold)
    );
    println!(
        "manifest GET by tag, median of {} requests on a kept-alive connection:",
        args.requests
    );
    println!("  straight from docker-registry  {ld:>8.3} ms");
    println!(
        "  through the mirror             {lm:>8.3} ms  (+{:.3} ms)",
        lm - ld
    );
    if let Some(kib) = rss {
        println!("daemon peak RSS {:.0} MiB", kib as f64 / 1024.0);
    }
    Ok(())
}
