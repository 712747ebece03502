//! The scheduler under load: simulated hosts over real gRPC on loopback against a real `shoal
//! scheduler` pinned to one core (plaintext, so that TLS is not what is measured).
//!
//! ```text
//! bench-scheduler --hosts 1000 --tasks 1 --pieces 64 --piece-ms 50
//! bench-scheduler --hosts 10000 --tasks 1000 --per-host 1
//! ```
//!
//! One simulated seed takes every seed job and announces the task's pieces one by one, each
//! `--piece-ms` after the last (the piece pace). Every other host watches `--per-host` tasks and
//! takes, each `--piece-ms`, one piece a parent in its latest view offers, announcing what it
//! holds; it keeps holding (attached) when done. No bytes move: what is measured is the
//! scheduler's part. Reported: views (decisions) per second and per CPU second of the
//! scheduler; from an announcement to the next view each watcher of the task gets (p50, p99:
//! the delay before the views it changes are sent); the first view's delay and the hosts without one after 1 s; every
//! host's completion against the piece pace; and the time from every host leaving at once
//! until the scheduler counts none.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use shoal_integration::cluster::free_port;
use shoal_integration::median;
use shoal_integration::process::{ChildGuard, shoal_bin};
use shoal_p2p::Bitmap;
use shoal_p2p::proto::scheduler_client::SchedulerClient;
use shoal_p2p::proto::{
    AnnounceRequest, AttachRequest, Host, PieceDigest, PieceSet, Source, StatsRequest, Task,
    TaskTraffic, TaskView, Traffic, WatchRequest,
};
use tonic::transport::Channel;

#[derive(Parser)]
struct Args {
    /// Hosts besides the seed.
    #[arg(long, default_value_t = 1000)]
    hosts: usize,
    /// Distinct tasks.
    #[arg(long, default_value_t = 1)]
    tasks: usize,
    /// Tasks each host downloads (chosen round-robin).
    #[arg(long, default_value_t = 1)]
    per_host: usize,
    /// Pieces per task.
    #[arg(long, default_value_t = 64)]
    pieces: u32,
    /// The piece pace: the seed announces, and a host takes, one piece this often.
    #[arg(long, default_value_t = 50)]
    piece_ms: u64,
    /// gRPC connections the hosts share (default: one per 50 hosts).
    #[arg(long)]
    connections: Option<usize>,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 300)]
    timeout: u64,
    /// Each host also tells its traffic (a `Stats` call, as a daemon does for the console)
    /// after a piece, at most this often (ms); 0: never.
    #[arg(long, default_value_t = 0)]
    stats_ms: u64,
    /// The hosts ask for whole views (every digest in each, each view sent), as daemons did
    /// before digest deltas.
    #[arg(long)]
    whole_views: bool,
}

/// `--whole-views`, for every simulated host.
static WHOLE_VIEWS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// One MiB pieces: a task of `pieces` pieces has this length.
const PIECE: u64 = 1 << 20;

#[derive(Default)]
struct Stats {
    views: AtomicU64,
    /// `Stats` calls the hosts made (and how many the scheduler refused).
    told: AtomicU64,
    told_refused: AtomicU64,
    /// Every announcement's time, by task.
    announced: std::sync::Mutex<HashMap<usize, Vec<Instant>>>,
    /// Announcement → the next view each watcher of the task gets, in seconds.
    latencies: std::sync::Mutex<Vec<f64>>,
    first_views: std::sync::Mutex<Vec<f64>>,
    done: std::sync::Mutex<Vec<f64>>,
}

impl Stats {
    /// An announcement for task `t` was answered now.
    fn log(&self, t: usize) {
        let now = Instant::now();
        self.announced
            .lock()
            .expect("lock")
            .entry(t)
            .or_default()
            .push(now);
    }

    /// A watcher of task `t` got a view now: the announcements since its last view (from
    /// `*next` on in the log) are reflected; the oldest one's delay is a sample.
    fn reflected(&self, t: usize, next: &mut usize) {
        let now = Instant::now();
        let log = self.announced.lock().expect("lock");
        let Some(times) = log.get(&t) else { return };
        if let Some(oldest) = times.get(*next) {
            let l = now.saturating_duration_since(*oldest).as_secs_f64();
            self.latencies.lock().expect("lock").push(l);
        }
        *next = times.len();
    }
}

fn task_id(t: usize) -> String {
    let hex = format!("{:064x}", t + 1);
    format!("sha256:{hex}")
}

fn task(t: usize) -> Task {
    let id = task_id(t);
    Task {
        url: format!("http://origin.invalid/v2/bench/blobs/{id}"),
        digest: id.clone(),
        id,
        ..Default::default()
    }
}

fn host(i: usize, seed: bool) -> Host {
    Host {
        id: if seed { "seed".into() } else { format!("h{i}") },
        upload_addr: format!("127.0.0.1:{}", 10_000 + i % 50_000),
        labels: Default::default(),
        upload_slots: 16,
        seed,
    }
}

/// User + system CPU seconds of every thread of process `pid`.
fn cpu_seconds(pid: u32) -> f64 {
    let Ok(threads) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0.0;
    };
    threads
        .flatten()
        .map(|t| {
            let stat = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
            let fields: Vec<&str> = stat
                .rsplit_once(')')
                .map(|(_, r)| r.split_whitespace().collect())
                .unwrap_or_default();
            let ticks = |i: usize| {
                fields
                    .get(i)
                    .and_then(|v| v.parse::<f64>().ok())
                    .unwrap_or(0.0)
            };
            (ticks(11) + ticks(12)) / 100.0
        })
        .sum()
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * p).round() as usize]
}

async fn hosts_attached(metrics_port: u16) -> Option<u64> {
    let text = shoal_integration::cluster::http_get(metrics_port, "/metrics").await?;
    text.lines()
        .find_map(|l| l.strip_prefix("shoal_scheduler_hosts "))
        .and_then(|v| v.trim().parse().ok())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.hosts == 0 || args.tasks == 0 || args.per_host == 0 || args.pieces == 0 {
        bail!("hosts, tasks, per-host and pieces must be positive");
    }
    // The generator on the second core, the scheduler on the first.
    let mut set = nix::sched::CpuSet::new();
    set.set(1)?;
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)?;
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("scheduler.toml");
    std::fs::write(
        &config,
        "[cluster]\ninsecure = true\n[api]\nenabled = false\n",
    )?;
    let (port, metrics_port) = (free_port(), free_port());
    let mut cmd = std::process::Command::new("taskset");
    cmd.args(["-c", "0"])
        .arg(shoal_bin())
        .env("SHOAL_LOG", "warn")
        .env("SHOAL_DATA_DIR", dir.path())
        .args(["scheduler", "--config"])
        .arg(&config)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--metrics-addr", &format!("127.0.0.1:{metrics_port}")]);
    let scheduler = ChildGuard::spawn(cmd);
    let pid = scheduler.child.id();
    let start = Instant::now();
    while hosts_attached(metrics_port).await.is_none() {
        if start.elapsed() > Duration::from_secs(20) {
            bail!("the scheduler did not start");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let url = format!("http://127.0.0.1:{port}");
    let connections = args.connections.unwrap_or(args.hosts.div_ceil(50)).max(1);
    WHOLE_VIEWS.store(args.whole_views, std::sync::atomic::Ordering::Relaxed);
    let channels: Vec<Channel> = (0..connections)
        .map(|_| {
            shoal_p2p::swarm::scheduler_channel(&url, Duration::from_secs(5), None)
                .context("channel")
        })
        .collect::<anyhow::Result<_>>()?;
    let stats = Arc::new(Stats::default());
    let pace = Duration::from_millis(args.piece_ms);

    // The seed: every job's task announced piece by piece at the pace.
    let seed_client = SchedulerClient::new(channels[0].clone());
    let mut jobs = seed_client
        .clone()
        .attach(AttachRequest {
            host: Some(host(0, true)),
        })
        .await?
        .into_inner();
    let seed_stats = stats.clone();
    let pieces = args.pieces;
    let seed = tokio::spawn(async move {
        while let Ok(Some(job)) = jobs.message().await {
            let Some(task) = job.task else { continue };
            let t = usize::from_str_radix(&task.id["sha256:".len()..], 16).unwrap_or(1) - 1;
            let (mut client, stats) = (seed_client.clone(), seed_stats.clone());
            tokio::spawn(async move {
                let mut held = Bitmap::new(pieces);
                let mut digests = Vec::new();
                for p in 0..pieces {
                    tokio::time::sleep(pace).await;
                    held.set(p);
                    let mut digest = vec![0u8; 32];
                    digest[..4].copy_from_slice(&p.to_le_bytes());
                    digest[4..12].copy_from_slice(&(t as u64).to_le_bytes());
                    digests.push(PieceDigest {
                        number: p,
                        blake3: digest,
                    });
                    let set = PieceSet {
                        length_known: true,
                        content_length: u64::from(pieces) * PIECE,
                        bitmap: held.as_bytes().to_vec(),
                        digests: digests.clone(),
                        sources: vec![Source {
                            upstream: "http://origin.invalid".into(),
                            anonymous: true,
                        }],
                        arriving: Vec::new(),
                    };
                    let _ = client
                        .announce(AnnounceRequest {
                            host_id: "seed".into(),
                            task_id: task.id.clone(),
                            pieces: Some(set),
                            ..Default::default()
                        })
                        .await;
                    stats.log(t);
                }
            });
        }
    });

    // The hosts: attach, watch, take a piece per pace from the parents offered.
    let began = Instant::now();
    let cpu_before = cpu_seconds(pid);
    let me_before = cpu_seconds(std::process::id());
    let mut attached = Vec::new();
    let mut downloads = Vec::new();
    for i in 0..args.hosts {
        let mut client = SchedulerClient::new(channels[(i + 1) % connections].clone());
        let me = host(i, false);
        let stream = client
            .attach(AttachRequest {
                host: Some(me.clone()),
            })
            .await
            .with_context(|| format!("host {i} attach"))?
            .into_inner();
        attached.push(stream);
        for k in 0..args.per_host {
            let t = (i * args.per_host + k) % args.tasks;
            let (client, me, stats) = (client.clone(), me.clone(), stats.clone());
            let tell = Duration::from_millis(args.stats_ms);
            downloads.push(tokio::spawn(download(
                client, me, t, pieces, pace, tell, stats,
            )));
        }
    }

    let deadline = Duration::from_secs(args.timeout);
    let all = futures_util::future::join_all(downloads);
    let finished = tokio::time::timeout(deadline, all).await.is_ok();
    let elapsed = began.elapsed().as_secs_f64();
    let cpu = cpu_seconds(pid) - cpu_before;
    let generator = cpu_seconds(std::process::id()) - me_before;
    let views = stats.views.load(Ordering::Relaxed);
    seed.abort();

    // Every host leaves at once.
    let leaving = Instant::now();
    drop(attached);
    drop(channels);
    let mut left = None;
    while leaving.elapsed() < deadline {
        if hosts_attached(metrics_port).await.is_some_and(|n| n <= 1) {
            left = Some(leaving.elapsed().as_secs_f64());
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut lat = std::mem::take(&mut *stats.latencies.lock().expect("lock"));
    let mut first = std::mem::take(&mut *stats.first_views.lock().expect("lock"));
    let done = std::mem::take(&mut *stats.done.lock().expect("lock"));
    let late = first.iter().filter(|s| **s > 1.0).count();
    let ideal = f64::from(pieces) * pace.as_secs_f64();
    let rss = shoal_integration::process::peak_rss_kib(pid);
    println!(
        "hosts {} tasks {} per-host {} pieces {} pace {} ms connections {connections}",
        args.hosts, args.tasks, args.per_host, pieces, args.piece_ms
    );
    println!(
        "views {views} in {elapsed:.2} s: {:.0}/s; scheduler CPU {cpu:.2} s: {:.0} views per CPU second",
        views as f64 / elapsed,
        views as f64 / cpu.max(0.001)
    );
    if args.stats_ms > 0 {
        println!(
            "Stats calls: {} ({:.0}/s), {} refused",
            stats.told.load(Ordering::Relaxed),
            stats.told.load(Ordering::Relaxed) as f64 / elapsed,
            stats.told_refused.load(Ordering::Relaxed)
        );
    }
    println!(
        "the simulated hosts' CPU {generator:.2} s ({:.0} % of their core: above ~90 %, they are \
         what is measured)",
        generator * 100.0 / elapsed
    );
    println!(
        "announce -> the next view of each watcher: p50 {:.1} ms, p99 {:.1} ms ({} samples)",
        percentile(&mut lat, 0.5) * 1000.0,
        percentile(&mut lat, 0.99) * 1000.0,
        lat.len()
    );
    println!(
        "first view: p50 {:.1} ms, p99 {:.1} ms, {late} of {} after 1 s",
        percentile(&mut first, 0.5) * 1000.0,
        percentile(&mut first, 0.99) * 1000.0,
        first.len()
    );
    println!(
        "downloads done: {} of {} ({}); median {:.2} s, ideal {ideal:.2} s ({:.2}x)",
        done.len(),
        args.hosts * args.per_host,
        if finished { "all" } else { "timed out" },
        median(done.clone()),
        median(done) / ideal
    );
    match left {
        Some(s) => println!("all {} hosts left: detached in {s:.2} s", args.hosts),
        None => println!("all {} hosts left: not all detached in time", args.hosts),
    }
    if let Some(kib) = rss {
        println!(
            "scheduler peak RSS {:.1} MiB: {:.1} KiB per host",
            kib as f64 / 1024.0,
            kib as f64 / args.hosts as f64
        );
    }
    drop(scheduler);
    Ok(())
}

/// One host downloading task `t`: a piece per pace from what its views offer, announced.
async fn download(
    mut client: SchedulerClient<Channel>,
    me: Host,
    t: usize,
    pieces: u32,
    pace: Duration,
    tell: Duration,
    stats: Arc<Stats>,
) {
    let started = Instant::now();
    let mut told: Option<Instant> = None;
    let Ok(resp) = client
        .watch(WatchRequest {
            host: Some(me.clone()),
            task: Some(task(t)),
            have: Some(PieceSet::default()),
            // As the daemons do: only new digests in each view.
            digest_deltas: !WHOLE_VIEWS.load(std::sync::atomic::Ordering::Relaxed),
        })
        .await
    else {
        return;
    };
    let mut views = resp.into_inner();
    let mut latest: Option<TaskView> = None;
    let mut held = Bitmap::new(pieces);
    // Announcements before this watch began are not this watcher's to see.
    let mut next = stats
        .announced
        .lock()
        .expect("lock")
        .get(&t)
        .map_or(0, Vec::len);
    let mut first = true;
    let mut tick = tokio::time::interval(pace);
    loop {
        tokio::select! {
            view = views.message() => {
                let Ok(Some(view)) = view else { return };
                stats.views.fetch_add(1, Ordering::Relaxed);
                if first {
                    first = false;
                    let s = started.elapsed().as_secs_f64();
                    stats.first_views.lock().expect("lock").push(s);
                }
                stats.reflected(t, &mut next);
                latest = Some(view);
            }
            _ = tick.tick() => {
                let Some(view) = &latest else { continue };
                let next = view.parents.iter().find_map(|parent| {
                    Bitmap::from_bytes(&parent.bitmap, pieces)
                        .ones()
                        .find(|p| !held.get(*p))
                });
                let Some(p) = next else { continue };
                held.set(p);
                let set = PieceSet {
                    length_known: true,
                    content_length: u64::from(pieces) * PIECE,
                    bitmap: held.as_bytes().to_vec(),
                    ..Default::default()
                };
                let _ = client
                    .announce(AnnounceRequest {
                        host_id: me.id.clone(),
                        task_id: task_id(t),
                        pieces: Some(set),
                        ..Default::default()
                    })
                    .await;
                stats.log(t);
                let due = told.is_none_or(|at| at.elapsed() >= tell);
                if !tell.is_zero() && (due || held.is_full()) {
                    told = Some(Instant::now());
                    let got = u64::from(held.count()) * PIECE;
                    let traffic = Traffic { peer: got, ..Default::default() };
                    let req = StatsRequest {
                        host_id: me.id.clone(),
                        received: Some(traffic),
                        sent: 0,
                        tasks: vec![TaskTraffic {
                            task_id: task_id(t),
                            content_length: u64::from(pieces) * PIECE,
                            received: Some(traffic),
                        }],
                    };
                    stats.told.fetch_add(1, Ordering::Relaxed);
                    if client.stats(req).await.is_err() {
                        stats.told_refused.fetch_add(1, Ordering::Relaxed);
                    }
                }
                if held.is_full() {
                    stats.done.lock().expect("lock").push(started.elapsed().as_secs_f64());
                    // Done: it keeps holding (attached) but stops watching.
                    return;
                }
            }
        }
    }
}
