//! `shoal daemon` with `shoal get` as its client: the local API, caching, metrics, shutdown.

use std::path::Path;
use std::time::Duration;

use shoal_integration::cluster::free_port;
use shoal_integration::origin::TestOrigin;
use shoal_integration::process::{self, ChildGuard, run, shoal, wait_until};
use shoal_integration::random_bytes;

const MIB: usize = 1 << 20;

fn start_daemon(data_dir: &Path, metrics_port: u16) -> ChildGuard {
    let mut cmd = shoal();
    cmd.arg("daemon")
        .arg("--data-dir")
        .arg(data_dir)
        .arg("--metrics-addr")
        .arg(format!("127.0.0.1:{metrics_port}"))
        .arg("--proxy-listen")
        .arg("127.0.0.1:0");
    ChildGuard::spawn(cmd)
}

/// [`start_daemon`] (metrics on any port), once its socket answers; the socket.
async fn started_daemon(data_dir: &Path) -> (ChildGuard, std::path::PathBuf) {
    let daemon = start_daemon(data_dir, free_port());
    let socket = data_dir.join("shoal.sock");
    wait_until(Duration::from_secs(20), "daemon socket", || {
        std::os::unix::net::UnixStream::connect(&socket).is_ok()
    })
    .await;
    (daemon, socket)
}

async fn http_get(port: u16, path: &str) -> String {
    let out = run({
        let mut c = std::process::Command::new("curl");
        c.args(["-fsS", &format!("http://127.0.0.1:{port}{path}")]);
        c
    })
    .await;
    assert!(
        out.status.success(),
        "curl {path}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn metric(text: &str, line_prefix: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(line_prefix))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn get_through_the_daemon_then_a_cache_hit_counted_in_metrics() {
    let data = random_bytes(12 * MIB + 1);
    let origin = TestOrigin::builder().file("/f", data.clone()).start().await;
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let port = free_port();
    let mut daemon = start_daemon(&data_dir, port);
    let socket = data_dir.join("shoal.sock");
    wait_until(Duration::from_secs(20), "daemon socket", || {
        std::os::unix::net::UnixStream::connect(&socket).is_ok()
    })
    .await;
    assert_eq!(http_get(port, "/healthz").await, "ok\n");

    for (i, expect_origin) in [(1, data.len() as u64 + 1), (2, data.len() as u64 + 1)] {
        let out = dir.path().join(format!("out{i}"));
        get(&origin.url("/f"), &out, &data_dir).await;
        assert_eq!(std::fs::read(&out).unwrap(), data);
        assert_eq!(origin.bytes_sent(), expect_origin);
    }
    let metrics = http_get(port, "/metrics").await;
    // The stat's one byte is not read as content, so not counted.
    assert_eq!(
        metric(&metrics, "shoal_download_bytes_total{source=\"origin\"}"),
        data.len() as u64
    );
    assert_eq!(
        metric(&metrics, "shoal_download_bytes_total{source=\"cache\"}"),
        data.len() as u64
    );
    assert_eq!(metric(&metrics, "shoal_downloads_total{outcome=\"ok\"}"), 2);

    // A standalone get cannot open the daemon's store, so it must have gone through the daemon;
    // prove the socket is the daemon's by stopping it: SIGTERM drains and removes the socket.
    daemon.terminate();
    let status = daemon
        .wait_exit(Duration::from_secs(20))
        .await
        .expect("daemon exits on SIGTERM");
    assert!(status.success());
    assert!(!socket.exists());
}

/// `shoal get` of `url` into `out` through the daemon whose data is in `data_dir`.
async fn get(url: &str, out: &Path, data_dir: &Path) {
    let res = run(process::get(data_dir, url, out)).await;
    assert!(
        res.status.success(),
        "{}",
        String::from_utf8_lossy(&res.stderr)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn shoal_up_counts_each_byte_once_by_source() {
    let data = random_bytes(6 * MIB);
    let origin = TestOrigin::builder().file("/f", data.clone()).start().await;
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let port = free_port();
    let cmd = process::up(&data_dir, port);
    let _up = ChildGuard::spawn(cmd);
    let socket = data_dir.join("shoal.sock");
    wait_until(Duration::from_secs(20), "daemon socket", || {
        std::os::unix::net::UnixStream::connect(&socket).is_ok()
    })
    .await;
    // With zero set-up it made its own cluster (keys readable by its user only), and its
    // node attached to its scheduler over mutual TLS as the seed.
    // It runs the containerd snapshotter too.
    let snapshots = data_dir.join("snapshotter.sock");
    wait_until(Duration::from_secs(20), "snapshotter socket", || {
        std::os::unix::net::UnixStream::connect(&snapshots).is_ok()
    })
    .await;
    let cluster = data_dir.join("cluster");
    for key in ["ca.key", "host.key"] {
        let mode = std::fs::metadata(cluster.join(key)).unwrap().permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );
    }
    let client = shoal_p2p::api::LocalClient::new(socket.clone());
    let started = std::time::Instant::now();
    loop {
        let status = client.status().await.unwrap();
        let seed = status.host.as_ref().is_some_and(|h| h.seed);
        if seed && status.schedulers.iter().all(|s| s.attached) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "not attached: {status}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let url = origin.url("/f");
    let len = data.len() as u64;
    // The daemon is also the seed: the scheduler's seed job for this task comes back to it.
    // What it fetched for the user is not counted again as served from the cache.
    get(&url, &dir.path().join("a"), &data_dir).await;
    assert_eq!(std::fs::read(dir.path().join("a")).unwrap(), data);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let metrics = http_get(port, "/metrics").await;
    let by = |source: &str| {
        metric(
            &metrics,
            &format!("shoal_download_bytes_total{{source=\"{source}\"}}"),
        )
    };
    assert_eq!((by("origin"), by("cache")), (len, 0), "{metrics}");
    // A second get is served from the store, and counted so once.
    get(&url, &dir.path().join("b"), &data_dir).await;
    let metrics = http_get(port, "/metrics").await;
    let cache = metric(&metrics, "shoal_download_bytes_total{source=\"cache\"}");
    assert_eq!(cache, len, "{metrics}");
}

/// Fail closed: a daemon in a swarm without cluster credentials does not start, and says what
/// to do; with `insecure = true` it starts and says so in its log.
#[tokio::test(flavor = "multi_thread")]
async fn a_swarm_member_without_credentials_refuses_to_start_unless_insecure() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    let base = format!(
        "data_dir = {:?}\n[proxy]\nenabled = false\n[swarm]\nschedulers = [\"http://127.0.0.1:9\"]\n\
         upload_addr = \"127.0.0.1:0\"\n",
        dir.path().join("data")
    );
    std::fs::write(&config, &base).unwrap();
    let mut cmd = shoal();
    cmd.arg("daemon")
        .arg("--config")
        .arg(&config)
        .arg("--metrics-addr")
        .arg("127.0.0.1:0");
    let out = run(cmd).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("no cluster credentials") && stderr.contains("shoal ca issue"),
        "{stderr}"
    );
    std::fs::write(&config, base + "[cluster]\ninsecure = true\n").unwrap();
    let log = dir.path().join("log");
    let mut cmd = shoal();
    cmd.arg("daemon")
        .arg("--config")
        .arg(&config)
        .arg("--metrics-addr")
        .arg("127.0.0.1:0")
        .stderr(std::fs::File::create(&log).unwrap());
    let _daemon = ChildGuard::spawn(cmd);
    wait_until(Duration::from_secs(20), "the insecure warning", || {
        std::fs::read_to_string(&log).is_ok_and(|l| l.contains("INSECURE"))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn daemon_reports_origin_errors_to_the_client() {
    let origin = TestOrigin::builder().start().await;
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let (_daemon, _) = started_daemon(&data_dir).await;
    let mut cmd = shoal();
    cmd.arg("get")
        .arg(origin.url("/missing"))
        .arg("-O")
        .arg(dir.path().join("o"))
        .arg("--data-dir")
        .arg(&data_dir);
    let res = run(cmd).await;
    assert_eq!(res.status.code(), Some(8));
    assert!(String::from_utf8_lossy(&res.stderr).contains("404"));
}

/// Issue 14 (3): nothing evicted, ever. With `[gc]`, a store past its high watermark drops the
/// least recently used tasks down to the low one; what is used again stays.
#[tokio::test(flavor = "multi_thread")]
async fn a_full_store_drops_the_least_recently_used_tasks() {
    let files: Vec<_> = (0..3).map(|_| random_bytes(6 * MIB)).collect();
    let mut origin = TestOrigin::builder();
    for (i, f) in files.iter().enumerate() {
        origin = origin.file(&format!("/f{i}"), f.clone());
    }
    let origin = origin.start().await;
    // 20 MiB: above 16 MiB, down to 12.
    let cluster = shoal_integration::cluster::Cluster::builder()
        .daemons(1)
        .setting("gc", "interval = \"200ms\"")
        .setting("gc", &format!("capacity = {}", 20 * MIB))
        .start()
        .await;
    let data_dir = cluster.daemons[0].data_dir.join("store");
    let dir = tempfile::tempdir().unwrap();
    let fetch = |i: usize| {
        let (url, out) = (
            origin.url(&format!("/f{i}")),
            dir.path().join(format!("out{i}")),
        );
        let data_dir = data_dir.clone();
        async move {
            get(&url, &out, &data_dir).await;
            std::fs::read(&out).unwrap()
        }
    };
    let held = || async {
        let client = shoal_p2p::api::LocalClient::new(data_dir.join("shoal.sock"));
        let mut urls: Vec<String> = client
            .tasks()
            .await
            .unwrap()
            .into_iter()
            .map(|t| t.url)
            .collect();
        urls.sort();
        urls
    };
    assert!(fetch(0).await == files[0]);
    assert!(fetch(1).await == files[1]);
    // Access times are in seconds: f0 is used again after f1.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(fetch(0).await == files[0]);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(fetch(2).await == files[2]);
    let want = vec![origin.url("/f0"), origin.url("/f2")];
    let mut got = held().await;
    for _ in 0..50 {
        if got == want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        got = held().await;
    }
    assert_eq!(got, want, "f1, the least recently used, goes; nothing else");
    // It comes back (from the swarm or the origin) when asked for again.
    assert!(fetch(1).await == files[1]);
}

/// `/v1/tasks` tells how much of a download is held as it goes (what `shoal pull`'s bars show).
#[tokio::test(flavor = "multi_thread")]
async fn the_task_list_tells_the_bytes_held_while_a_download_runs() {
    let data = random_bytes(16 * MIB);
    let origin = TestOrigin::builder()
        .file("/f", data.clone())
        .rate(4 * MIB as u64)
        .start()
        .await;
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let (_daemon, socket) = started_daemon(&data_dir).await;
    let (url, out) = (origin.url("/f"), dir.path().join("out"));
    let getting = tokio::spawn({
        let data_dir = data_dir.clone();
        async move { get(&url, &out, &data_dir).await }
    });
    let client = shoal_p2p::api::LocalClient::new(&socket);
    let mut seen_partial = false;
    while !getting.is_finished() {
        if let Some(t) = client.tasks().await.unwrap().first() {
            assert!(t.stored <= t.content_length, "{t:?}");
            seen_partial |= !t.complete && t.stored > 0 && t.stored < t.content_length;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    getting.await.unwrap();
    assert!(seen_partial, "never saw part of the download held");
    let t = &client.tasks().await.unwrap()[0];
    assert_eq!((t.complete, t.stored), (true, data.len() as u64));
}
