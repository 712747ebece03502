//! `bench-get`: one file from a local nginx, fetched with `curl -o` and with `shoal get` (cold and
//! cached; standalone and through a daemon), in one run. Prints times, throughput, ratios to curl,
//! and shoal's peak RSS. A benchmark, not a test: it asserts only that every output is exact.
//!
//! `scripts/bench-get.sh --size 1GiB` (builds release binaries, then runs this).

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use clap::Parser;
use shoal_integration::nginx::Nginx;
use shoal_integration::process::{ChildGuard, peak_rss_kib, shoal, wait_until};
use shoal_integration::{median, parse_size, write_random};

#[derive(Parser)]
struct Args {
    /// File size, e.g. 1GiB, 256MiB.
    #[arg(long, default_value = "1GiB", value_parser = parse_size)]
    size: u64,
    /// Runs of each case; the median is reported.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Working directory (default: a temporary directory under /var/tmp).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Also write the results as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

struct Case {
    name: &'static str,
    seconds: f64,
    peak_rss_kib: Option<u64>,
}

/// Runs `cmd`, timing it and sampling the peak RSS of `rss_of` (the command itself if `None`).
async fn timed(mut cmd: Command, rss_of: Option<u32>) -> anyhow::Result<(f64, Option<u64>)> {
    let what = format!("{cmd:?}");
    cmd.stdout(std::process::Stdio::null());
    let start = Instant::now();
    let mut child = ChildGuard::spawn(cmd);
    let pid = rss_of.unwrap_or(child.child.id());
    let mut peak = None;
    loop {
        if let Some(hwm) = peak_rss_kib(pid) {
            peak = Some(hwm);
        }
        if let Some(status) = child.child.try_wait()? {
            ensure!(status.success(), "{what} failed: {status}");
            return Ok((start.elapsed().as_secs_f64(), peak));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn get_cmd(url: &str, out: &Path, data_dir: &Path) -> Command {
    let mut c = shoal_integration::process::get(data_dir, url, out);
    c.env("SHOAL_LOG", "warn");
    c
}

fn same_file(a: &Path, b: &Path) -> anyhow::Result<()> {
    let (ma, mb) = (std::fs::metadata(a)?, std::fs::metadata(b)?);
    ensure!(
        ma.len() == mb.len(),
        "{} and {} differ in length",
        a.display(),
        b.display()
    );
    let status = Command::new("cmp").arg("-s").arg(a).arg(b).status()?;
    ensure!(
        status.success(),
        "{} and {} differ",
        a.display(),
        b.display()
    );
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    ensure!(args.runs >= 1, "--runs must be at least 1");
    let tmp = tempfile::Builder::new()
        .prefix("shoal-bench-")
        .tempdir_in(args.dir.clone().unwrap_or("/var/tmp".into()))?;
    let (www, work) = (tmp.path().join("www"), tmp.path().join("work"));
    std::fs::create_dir_all(&www)?;
    std::fs::create_dir_all(&work)?;
    let src = www.join("blob");
    eprintln!("writing {} random bytes", args.size);
    write_random(&src, args.size)?;
    let nginx = Nginx::serve(&www, &tmp.path().join("nginx")).await;
    let url = format!("http://{}/blob", nginx.addr);

    let src = src.as_path();
    let out = |n: &str, i: usize| work.join(format!("{n}-{i}"));

    // The "via daemon" cases use a daemon started fresh, on an empty data directory, each round
    // (like the standalone cold runs, which start from an empty directory): the daemon downloads
    // and links the output, so its RSS is the one that counts.
    let daemon: RefCell<Option<ChildGuard>> = RefCell::new(None);
    let dd = |i: usize| work.join(format!("daemon-{i}"));
    let sa = |i: usize| work.join(format!("standalone-{i}"));
    let specs: Vec<Spec> = vec![
        Spec {
            name: "curl -o",
            daemon: false,
            make: Box::new(|i| {
                let mut c = Command::new("curl");
                c.arg("-sS").arg("-o").arg(out("curl", i)).arg(&url);
                (c, out("curl", i), None)
            }),
        },
        Spec {
            name: "shoal get, cold",
            daemon: false,
            make: Box::new(|i| {
                (
                    get_cmd(&url, &out("cold", i), &sa(i)),
                    out("cold", i),
                    Some(sa(i)),
                )
            }),
        },
        Spec {
            name: "shoal get, cached",
            daemon: false,
            make: Box::new(|i| {
                (
                    get_cmd(&url, &out("cached", i), &sa(i)),
                    out("cached", i),
                    None,
                )
            }),
        },
        Spec {
            name: "shoal get via daemon, cold",
            daemon: true,
            make: Box::new(|i| {
                (
                    get_cmd(&url, &out("dcold", i), &dd(i)),
                    out("dcold", i),
                    None,
                )
            }),
        },
        Spec {
            name: "shoal get via daemon, cached",
            daemon: true,
            make: Box::new(|i| {
                (
                    get_cmd(&url, &out("dcached", i), &dd(i)),
                    out("dcached", i),
                    None,
                )
            }),
        },
    ];
    let start_daemon = async |i: usize| -> anyhow::Result<()> {
        daemon.borrow_mut().take();
        if i > 0 {
            let _ = std::fs::remove_dir_all(dd(i - 1));
        }
        let mut cmd = shoal();
        cmd.env("SHOAL_LOG", "warn")
            .arg("daemon")
            .arg("--data-dir")
            .arg(dd(i))
            .arg("--metrics-addr")
            .arg("127.0.0.1:0")
            .arg("--proxy-listen")
            .arg("127.0.0.1:0");
        *daemon.borrow_mut() = Some(ChildGuard::spawn(cmd));
        let socket = dd(i).join("shoal.sock");
        wait_until(Duration::from_secs(20), "daemon socket", || {
            std::os::unix::net::UnixStream::connect(&socket).is_ok()
        })
        .await;
        Ok(())
    };
    let mut secs = vec![Vec::new(); specs.len()];
    let mut peaks = vec![None::<u64>; specs.len()];
    for i in 0..args.runs {
        start_daemon(i).await?;
        let dpid = daemon.borrow().as_ref().map(|d| d.child.id());
        for (k, spec) in specs.iter().enumerate() {
            let (cmd, out, fresh_dir) = (spec.make)(i);
            if let Some(d) = fresh_dir {
                let _ = std::fs::remove_dir_all(d);
            }
            // Flush dirty pages first (not timed), so no run pays for the previous one's writeback.
            ensure!(Command::new("sync").status()?.success(), "sync failed");
            let rss_of = if spec.daemon { dpid } else { None };
            let (s, p) = timed(cmd, rss_of).await.with_context(|| spec.name)?;
            same_file(src, &out)?;
            std::fs::remove_file(&out)?;
            secs[k].push(s);
            peaks[k] = peaks[k].max(p);
        }
    }
    daemon.borrow_mut().take();
    let cases: Vec<Case> = specs
        .iter()
        .zip(secs)
        .zip(peaks)
        .map(|((spec, s), peak_rss_kib)| Case {
            name: spec.name,
            seconds: median(s),
            peak_rss_kib,
        })
        .collect();
    report(&args, &cases)
}

/// One benchmark case: how to make run `i` (a command, its output file, a directory to clear
/// first), and whether the RSS that counts is the round's daemon's. Cases run interleaved, one
/// of each per round, so drift on a shared machine hits all of them alike.
struct Spec<'a> {
    name: &'static str,
    daemon: bool,
    make: Box<dyn Fn(usize) -> (Command, PathBuf, Option<PathBuf>) + 'a>,
}

fn report(args: &Args, cases: &[Case]) -> anyhow::Result<()> {
    let Some(curl) = cases.iter().find(|c| c.name == "curl -o") else {
        bail!("no curl baseline")
    };
    let mb = args.size as f64 / 1e6;
    println!("size {} bytes, median of {} runs", args.size, args.runs);
    println!(
        "{:<32} {:>9} {:>10} {:>14} {:>12}",
        "case", "seconds", "MB/s", "curl time / x", "peak RSS MiB"
    );
    let mut json = Vec::new();
    for c in cases {
        let rss = c
            .peak_rss_kib
            .map(|k| format!("{:.1}", k as f64 / 1024.0))
            .unwrap_or_else(|| "-".into());
        println!(
            "{:<32} {:>9.3} {:>10.0} {:>14.2} {:>12}",
            c.name,
            c.seconds,
            mb / c.seconds,
            curl.seconds / c.seconds,
            rss
        );
        json.push(serde_json::json!({
            "name": c.name, "seconds": c.seconds, "speedup_vs_curl": curl.seconds / c.seconds,
            "peak_rss_kib": c.peak_rss_kib,
        }));
    }
    if let Some(path) = &args.json {
        std::fs::write(
            path,
            serde_json::to_vec_pretty(
                &serde_json::json!({"size_bytes": args.size, "runs": args.runs, "cases": json}),
            )?,
        )?;
    }
    Ok(())
}
