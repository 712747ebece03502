//! `bench-peer`: one peer-to-peer transfer on loopback. A seed holds the file (fetched from a
//! local nginx first, not timed); a fresh daemon then gets it, every piece from the seed and
//! checked against its digest. Prints the throughput and the daemon's peak RSS beside `curl -o`
//! of the same file from nginx and beside `dd` of as many zeros to a new file (what the page cache
//! takes in). A benchmark, not a test: it asserts only that the bytes are exact.
//!
//! `scripts/bench-peer.sh --size 1GiB` (builds release binaries, then runs this).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use clap::Parser;
use shoal_integration::cluster::Cluster;
use shoal_integration::nginx::Nginx;
use shoal_integration::process::{get, peak_rss_kib, run};
use shoal_integration::{median, parse_size, write_random};

#[derive(Parser)]
struct Args {
    /// File size, e.g. 1GiB.
    #[arg(long, default_value = "1GiB", value_parser = parse_size)]
    size: u64,
    /// Rounds (a fresh swarm each); the median is reported.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Working directory (default: a temporary directory under /var/tmp).
    #[arg(long)]
    dir: Option<PathBuf>,
}

/// Runs `cmd` and times it, after giving the kernel `recycle` bytes of page cache to reuse: a file
/// of that size is written and deleted first. Every timed case writes the whole file, and on the
/// VMs we measure on, page cache in memory the guest has not used lately is filled at 0.25–0.45
/// GB/s against 3.5–4.5 GB/s in memory just freed (`dd` of 1 GiB, each way). A long-running host's
/// page cache recycles memory, so every case gets memory just freed: the same for each.
async fn checked(cmd: Command, what: &str, recycle: (&Path, u64)) -> anyhow::Result<f64> {
    let ballast = recycle.0.join("ballast");
    let mut f = std::fs::File::create(&ballast)?;
    std::io::copy(&mut std::io::repeat(0).take(recycle.1), &mut f)?;
    drop(f);
    std::fs::remove_file(&ballast)?;
    let _ = Command::new("sync").status();
    let start = Instant::now();
    let out = run(cmd).await;
    let secs = start.elapsed().as_secs_f64();
    ensure!(
        out.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(secs)
}

/// A VM whose balloon reports free pages to the host at once makes every first write of new page
/// cache a fault in the hypervisor: all three cases are then bound by it (see BENCHMARKS.md, "What
/// the VM's memory costs").
fn warn_of_page_reporting() {
    let knob = "/sys/module/page_reporting/parameters/min_free_ms";
    if let Ok(ms) = std::fs::read_to_string(knob)
        && ms.trim() == "0"
    {
        eprintln!(
            "note: free page reporting is on with {knob} = 0: new page cache costs a fault in the \
             hypervisor here, and the figures below are bound by it (integration/BENCHMARKS.md)"
        );
    }
}

fn same(a: &Path, b: &Path) -> anyhow::Result<()> {
    let ok = Command::new("cmp")
        .arg("-s")
        .arg(a)
        .arg(b)
        .status()?
        .success();
    ensure!(ok, "{} differs from {}", b.display(), a.display());
    std::fs::remove_file(b)?;
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    ensure!(args.runs >= 1, "--runs must be at least 1");
    warn_of_page_reporting();
    let tmp = tempfile::Builder::new()
        .prefix("shoal-bench-peer-")
        .tempdir_in(args.dir.clone().unwrap_or("/var/tmp".into()))?;
    let www = tmp.path().join("www");
    std::fs::create_dir_all(&www)?;
    let src = www.join("blob");
    eprintln!("writing {} random bytes", args.size);
    write_random(&src, args.size)?;
    let nginx = Nginx::serve(&www, &tmp.path().join("nginx")).await;
    let url = format!("http://{}/blob", nginx.addr);

    let (mut dd, mut curl, mut rss) = (Vec::new(), Vec::new(), Vec::new());
    let (mut peer, mut plain) = (Vec::new(), Vec::new());
    for i in 0..args.runs {
        // The page cache's own speed: the same number of zeros written to a new file.
        let zeros = tmp.path().join("zeros");
        let mut c = Command::new("dd");
        c.arg("if=/dev/zero")
            .arg(format!("of={}", zeros.display()))
            .args(["bs=1M", "iflag=count_bytes", "status=none"])
            .arg(format!("count={}", args.size));
        dd.push(checked(c, "dd", (tmp.path(), args.size)).await?);
        std::fs::remove_file(&zeros)?;

        let out = tmp.path().join(format!("curl-{i}"));
        let mut c = Command::new("curl");
        c.arg("-sS").arg("-o").arg(&out).arg(&url);
        curl.push(checked(c, "curl", (tmp.path(), args.size)).await?);
        same(&src, &out)?;

        // With cluster TLS (the default) and without, side by side.
        for (tls, times) in [(true, &mut peer), (false, &mut plain)] {
            let builder = Cluster::builder().daemons(1);
            let cluster = if tls { builder } else { builder.insecure() }.start().await;
            let (secs, peak) =
                from_the_seed(&cluster, &url, &src, tmp.path(), i, args.size).await?;
            times.push(secs);
            rss.push(peak);
        }
    }
    let mb = args.size as f64 / 1e6;
    let spread = |v: &[f64]| {
        let (lo, hi) = v
            .iter()
            .fold((f64::MAX, 0f64), |(l, h), &x| (l.min(x), h.max(x)));
        format!("{lo:.3}–{hi:.3} s")
    };
    let (tls_spread, plain_spread) = (spread(&peer), spread(&plain));
    let (z, c, p, q) = (median(dd), median(curl), median(peer), median(plain));
    println!("size {} bytes, median of {} runs", args.size, args.runs);
    println!(
        "dd zeros to a new file             {z:>7.3} s {:>7.0} MB/s",
        mb / z
    );
    println!(
        "curl -o from nginx (loopback)      {c:>7.3} s {:>7.0} MB/s",
        mb / c
    );
    println!(
        "shoal get, from a peer, cluster TLS {p:>7.3} s {:>7.0} MB/s  ({:.2}x curl; {tls_spread})",
        mb / p,
        c / p,
    );
    println!(
        "shoal get, from a peer, plaintext   {q:>7.3} s {:>7.0} MB/s  ({:.2}x curl; {plain_spread})",
        mb / q,
        c / q,
    );
    println!(
        "TLS / plaintext time {:.3}; daemon peak RSS {:.1} MiB",
        p / q,
        rss.into_iter().max().unwrap_or(0) as f64 / 1024.0
    );
    Ok(())
}

/// A fresh daemon of `cluster` gets `url` with every piece from the seed, which fetched it first
/// (not timed). Returns the seconds and the daemon's peak RSS.
async fn from_the_seed(
    cluster: &Cluster,
    url: &str,
    src: &Path,
    tmp: &Path,
    round: usize,
    size: u64,
) -> anyhow::Result<(f64, u64)> {
    let seed = cluster.seed.as_ref().context("seed")?;
    let warm = get(
        &seed.data_dir.join("store"),
        url,
        &cluster.dir().join("warm"),
    );
    checked(warm, "warming the seed", (tmp, 0)).await?;
    // Let the seed's announcement of the complete task reach the scheduler.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let out = tmp.join(format!("peer-{round}"));
    let secs = checked(
        cluster.get(0, url, &out),
        "shoal get from the seed",
        (tmp, size),
    )
    .await?;
    let d = &cluster.daemons[0];
    let from_peers = d
        .metric("shoal_download_bytes_total{source=\"seed\"}")
        .await
        + d.metric("shoal_download_bytes_total{source=\"peer\"}")
            .await;
    ensure!(
        from_peers == size,
        "the daemon got {from_peers} of {size} bytes from peers: not a peer-to-peer transfer"
    );
    let peak = peak_rss_kib(d.child.child.id()).unwrap_or(0);
    same(src, &out)?;
    Ok((secs, peak))
}
