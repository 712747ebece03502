//! `bench-get`: one file from a local nginx, fetched with `curl -o` and with `shoal get` (cold and
//! cached; standalone and through a daemon), in one run. Prints times, throughput, ratios to curl,
//! and shoal's peak RSS. A benchmark, not a test: it asserts only that every output is exact.
//!
//! `scripts/bench-get.sh --size 1GiB` (builds release binaries, then runs this).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use clap::Parser;
use shoal_integration::nginx::Nginx;
use shoal_integration::process::{ChildGuard, shoal, wait_until};

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

fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().map_err(|_| format!("bad size {s:?}"))?;
    let mult = match unit.trim() {
        "" | "B" => 1,
        "KiB" | "K" => 1 << 10,
        "MiB" | "M" => 1 << 20,
        "GiB" | "G" => 1 << 30,
        u => return Err(format!("unknown unit {u:?} (use KiB, MiB, GiB)")),
    };
    Ok(n * mult)
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
        if let Some(hwm) = vm_hwm_kib(pid) {
            peak = Some(hwm);
        }
        if let Some(status) = child.child.try_wait()? {
            ensure!(status.success(), "{what} failed: {status}");
            return Ok((start.elapsed().as_secs_f64(), peak));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn vm_hwm_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn get_cmd(url: &str, out: &Path, data_dir: &Path) -> Command {
    let mut c = shoal();
    c.env("SHOAL_LOG", "warn")
        .arg("get")
        .arg(url)
        .arg("-O")
        .arg(out)
        .arg("--data-dir")
        .arg(data_dir)
        .arg("-q");
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
    let runs = args.runs;
    let out = |n: &str, i: usize| work.join(format!("{n}-{i}"));
    let mut cases = Vec::new();
    cases.push(
        run_case(src, runs, "curl -o", None, |i| {
            let mut c = Command::new("curl");
            c.arg("-sS").arg("-o").arg(out("curl", i)).arg(&url);
            (c, out("curl", i), None)
        })
        .await?,
    );
    let sa = |i: usize| work.join(format!("standalone-{i}"));
    cases.push(
        run_case(src, runs, "shoal get, cold", None, |i| {
            (
                get_cmd(&url, &out("cold", i), &sa(i)),
                out("cold", i),
                Some(sa(i)),
            )
        })
        .await?,
    );
    cases.push(
        run_case(src, runs, "shoal get, cached", None, |i| {
            (
                get_cmd(&url, &out("cached", i), &sa(0)),
                out("cached", i),
                None,
            )
        })
        .await?,
    );

    // Through a daemon: the daemon downloads and links the output; its RSS is what counts.
    let dd = work.join("daemon");
    let mut daemon_cmd = shoal();
    daemon_cmd
        .env("SHOAL_LOG", "warn")
        .arg("daemon")
        .arg("--data-dir")
        .arg(&dd)
        .arg("--metrics-addr")
        .arg("127.0.0.1:0");
    let daemon = ChildGuard::spawn(daemon_cmd);
    let socket = dd.join("shoal.sock");
    wait_until(Duration::from_secs(20), "daemon socket", || {
        std::os::unix::net::UnixStream::connect(&socket).is_ok()
    })
    .await;
    let dpid = Some(daemon.child.id());
    // A distinct tag per cold run makes each one a new task in the one daemon store; the cached
    // runs ask for the first cold run's task again.
    let tagged = |name: &str, i: usize, tag: usize| {
        let mut c = get_cmd(&url, &out(name, i), &dd);
        c.arg("--tag").arg(format!("run{tag}"));
        (c, out(name, i), None)
    };
    cases.push(
        run_case(src, runs, "shoal get via daemon, cold", dpid, |i| {
            tagged("dcold", i, i)
        })
        .await?,
    );
    cases.push(
        run_case(src, runs, "shoal get via daemon, cached", dpid, |i| {
            tagged("dcached", i, 0)
        })
        .await?,
    );
    drop(daemon);

    report(&args, &cases)
}

/// Runs one case `runs` times (each run: a command, its output file, and a directory to clear
/// first), checks every output against `src`, and keeps the median time and the peak RSS.
async fn run_case(
    src: &Path,
    runs: usize,
    name: &'static str,
    rss_of: Option<u32>,
    make: impl Fn(usize) -> (Command, PathBuf, Option<PathBuf>),
) -> anyhow::Result<Case> {
    let mut secs = Vec::new();
    let mut peak = None::<u64>;
    for i in 0..runs {
        let (cmd, out, fresh_dir) = make(i);
        if let Some(d) = fresh_dir {
            let _ = std::fs::remove_dir_all(d);
        }
        let (s, p) = timed(cmd, rss_of).await.with_context(|| name)?;
        same_file(src, &out)?;
        std::fs::remove_file(&out)?;
        secs.push(s);
        peak = peak.max(p);
    }
    Ok(Case {
        name,
        seconds: median(secs),
        peak_rss_kib: peak,
    })
}

fn write_random(path: &Path, size: u64) -> anyhow::Result<()> {
    use rand::RngCore;
    use std::io::Write;
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut buf = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        rand::rng().fill_bytes(&mut buf[..n]);
        f.write_all(&buf[..n])?;
        left -= n as u64;
    }
    f.flush()?;
    Ok(())
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
