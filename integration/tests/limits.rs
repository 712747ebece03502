//! Issue 14 (2): the servers' bounds (`[limits]`) against clients that hold connections, send
//! heads slowly or stop reading.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use reqwest::StatusCode;
use shoal_integration::cluster::Cluster;
use shoal_integration::origin::TestOrigin;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Connections each flood opens: more than the default `max_connections` (1024).
const FLOOD: usize = 1100;

async fn open(addr: &str, n: usize) -> Vec<TcpStream> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(TcpStream::connect(addr).await.unwrap());
    }
    out
}

/// How many of `conns` the server closed (or answered): a read ends within 200 ms.
async fn closed(conns: &mut [TcpStream]) -> usize {
    let reads = conns.iter_mut().map(|c| async move {
        let mut buf = [0u8; 256];
        tokio::time::timeout(Duration::from_millis(200), c.read(&mut buf))
            .await
            .is_ok()
    });
    futures_util::future::join_all(reads)
        .await
        .into_iter()
        .filter(|&ended| ended)
        .count()
}

fn rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap()
}

/// 1,100 connections held idle on the upload server and on the mirror used to keep real
/// requests waiting (70 s and more on 4000, 29 s on 4001); a client that stopped reading held its
/// connection (and an upload slot) for ever. Now a new connection takes an idle one's place, a
/// stalled write ends the connection, and when every connection is busy the answer is 503.
#[tokio::test(flavor = "multi_thread")]
async fn connections_held_open_or_unread_keep_no_real_request_out() {
    let blob = shoal_integration::random_bytes(64 << 20);
    let digest = shoal_integration::sha256(&blob);
    let registry = TestOrigin::builder()
        .file("/v2/", Bytes::from_static(b"{}"))
        .file(&format!("/v2/big/blobs/{digest}"), blob.clone())
        .start()
        .await;
    let cluster = Cluster::builder()
        .daemons(1)
        .default_registry(&registry.url(""))
        .setting("limits", "header_timeout = \"3s\"")
        .setting("limits", "write_timeout = \"2s\"")
        .start()
        .await;
    let d0 = &cluster.daemons[0];
    let pid = d0.child.pid().as_raw();
    let rss_before = rss_kib(pid);
    let socket = d0.data_dir.join("store").join("shoal.sock");
    let status = shoal_p2p::api::LocalClient::new(socket)
        .status()
        .await
        .unwrap();
    let upload = status.host.unwrap().upload_addr;
    let mirror = format!("127.0.0.1:{}", d0.proxy_port);
    shoal_p2p::install_crypto_provider();
    let http = reqwest::Client::new();
    let v2 = |client: &reqwest::Client| client.get(format!("http://{mirror}/v2/")).send();

    // Idle floods on both servers; real requests get through at once.
    let mut idle_upload = open(&upload, FLOOD).await;
    let mut idle_mirror = open(&mirror, FLOOD).await;
    let start = Instant::now();
    assert_eq!(v2(&http).await.unwrap().status(), StatusCode::OK);
    let member = cluster.ca().member("peer", &["node"]);
    let tcp = TcpStream::connect(&upload).await.unwrap();
    let tls = member.client_config(shoal_p2p::cluster::Role::Node, vec![b"http/1.1".to_vec()]);
    let mut peer = member.connect(tcp, Arc::new(tls)).await.unwrap();
    let piece = format!("/tasks/sha256:{}/pieces/0", "ab".repeat(32));
    peer.write_all(format!("GET {piece} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut answer = [0u8; 12];
    peer.read_exact(&mut answer).await.unwrap();
    assert_eq!(&answer, b"HTTP/1.1 404", "the upload server's answer");
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "real requests waited {:?} behind idle connections",
        start.elapsed()
    );
    assert!(closed(&mut idle_mirror).await >= FLOOD - 1024);
    assert!(closed(&mut idle_upload).await >= FLOOD - 1024);
    let rss_flooded = rss_kib(pid);
    drop((idle_upload, idle_mirror, peer));

    // A client that asks for 64 MiB and reads nothing: the connection ends after the write
    // timeout, well before the whole blob went out.
    let mut stalled = TcpStream::connect(&mirror).await.unwrap();
    stalled
        .write_all(format!("GET /v2/big/blobs/{digest} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), stalled.read_to_end(&mut got)).await;
    assert!(read.is_ok(), "the stalled connection is still open");
    assert!(
        got.len() < blob.len(),
        "a client that read nothing got the whole blob"
    );
    // The blob itself is fine for a client that reads.
    let body = http
        .get(format!("http://{mirror}/v2/big/blobs/{digest}"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert!(body == blob);

    // Every connection busy (heads arriving slowly): the next is answered 503 with
    // Retry-After, at once; after the header timeout the slow ones are gone. Each slow
    // connection sends its first bytes as soon as it is open (one that has sent nothing yet
    // counts as idle, and the next would take its place).
    let began = std::time::Instant::now();
    let mut slow = Vec::new();
    for _ in 0..1024 {
        let mut c = TcpStream::connect(&mirror).await.unwrap();
        c.write_all(b"GET /v2/ HTTP/1.1\r\n").await.unwrap();
        slow.push(c);
    }
    // Once the server has read their first bytes, a new client (not a pooled connection,
    // which would be answered on it) is answered 503.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let resp = v2(&reqwest::Client::new()).await.unwrap();
    // (On a machine so loaded that opening them took most of the 3 s header timeout, the
    // first ones are gone already and their slots free: the unit test of the gate,
    // `at_the_limit_the_longest_idle_connection_makes_room`, holds the rule then.)
    let in_time = began.elapsed() < Duration::from_millis(2500);
    if !in_time {
        eprintln!(
            "slow connections took {:?} to open: 503 not checked",
            began.elapsed()
        );
    }
    if in_time {
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(resp.headers()["retry-after"], "1");
    }
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(v2(&http).await.unwrap().status(), StatusCode::OK);
    drop(slow);

    let rss_after = rss_kib(pid);
    eprintln!(
        "daemon RSS: {rss_before} KiB at start, {rss_flooded} KiB flooded, {rss_after} KiB after"
    );
    assert!(
        rss_flooded < rss_before + (100 << 10),
        "2,200 idle connections cost {} KiB",
        rss_flooded - rss_before
    );
}

/// A registry holding `blobs` in repository `x` (sending at most `rate` bytes per second), and
/// one daemon without a seed mirroring it, with a `[limits]` line.
async fn mirror_of_blobs(
    blobs: &[&Bytes],
    rate: Option<u64>,
    limit: &str,
) -> (TestOrigin, Cluster) {
    let mut registry = TestOrigin::builder();
    for b in blobs {
        let digest = shoal_integration::sha256(b);
        registry = registry.file(&format!("/v2/x/blobs/{digest}"), (*b).clone());
    }
    if let Some(rate) = rate {
        registry = registry.rate(rate);
    }
    let registry = registry.start().await;
    let cluster = Cluster::builder()
        .daemons(1)
        .no_seed()
        .default_registry(&registry.url(""))
        .setting("limits", limit)
        .start()
        .await;
    (registry, cluster)
}

/// Issue 14 (3): every mirror request started a download that outlives its client, with no cap.
/// Past `max_downloads`, a client asking for content not downloading already is served straight
/// from the upstream.
#[tokio::test(flavor = "multi_thread")]
async fn past_max_downloads_the_upstream_serves_the_client() {
    let a = shoal_integration::random_bytes(8 << 20);
    let b = shoal_integration::random_bytes(1 << 20);
    let (da, db) = (shoal_integration::sha256(&a), shoal_integration::sha256(&b));
    let (_registry, cluster) = mirror_of_blobs(&[&a, &b], Some(4 << 20), "max_downloads = 1").await;
    let mirror = cluster.daemons[0].mirror_url();
    shoal_p2p::install_crypto_provider();
    let http = reqwest::Client::new();
    let blob = |d: &str| http.get(format!("{mirror}/v2/x/blobs/{d}")).send();
    let first = blob(&da).await.unwrap();
    assert!(first.headers().contains_key("x-dragonfly-task-id"));
    let second = blob(&db).await.unwrap();
    assert_eq!(second.status(), StatusCode::OK);
    assert!(
        !second.headers().contains_key("x-dragonfly-task-id"),
        "a second download started past max_downloads"
    );
    assert!(second.bytes().await.unwrap() == b);
    assert!(first.bytes().await.unwrap() == a);
    // The download's place is free again.
    let third = blob(&db).await.unwrap();
    assert!(third.headers().contains_key("x-dragonfly-task-id"));
    assert!(third.bytes().await.unwrap() == b);
}

/// Issue 14 (3): no bandwidth limits. `origin_rate` and `download_rate` hold the average to the
/// rate after a one-second burst, for the fetcher and for the peer that takes pieces from it.
#[tokio::test(flavor = "multi_thread")]
async fn bandwidth_limits_hold_origin_and_peer_transfers_to_their_rate() {
    let data = shoal_integration::random_bytes(24 << 20);
    let origin = TestOrigin::builder().file("/f", data.clone()).start().await;
    let rate = 8 << 20;
    let cluster = Cluster::builder()
        .daemons(2)
        .no_seed()
        .setting("limits", &format!("origin_rate = {rate}"))
        .setting("limits", &format!("download_rate = {rate}"))
        .start()
        .await;
    let dir = tempfile::tempdir().unwrap();
    for (i, d) in cluster.daemons.iter().enumerate() {
        let out = dir.path().join(format!("out{i}"));
        let start = Instant::now();
        let cmd =
            shoal_integration::process::get(&d.data_dir.join("store"), &origin.url("/f"), &out);
        let res = shoal_integration::process::run(cmd).await;
        let took = start.elapsed();
        assert!(
            res.status.success(),
            "{}",
            String::from_utf8_lossy(&res.stderr)
        );
        assert!(std::fs::read(&out).unwrap() == data);
        // 24 MiB at 8 MiB/s after a burst of 8: at least 2 s.
        assert!(
            took >= Duration::from_millis(1900),
            "daemon {i} took {took:?}"
        );
        assert!(took < Duration::from_secs(10), "daemon {i} took {took:?}");
    }
    assert_eq!(
        origin.bytes_sent(),
        data.len() as u64 + 1,
        "the origin sent it once"
    );
}

/// Unmounts a test's tmpfs when dropped.
struct Mounted(std::path::PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// Issue 14: a fault of this host (here its disk filling up mid-blob) ended the client's
/// answer short. The upstream now sends the rest, as it would have without the swarm; a task
/// that cannot start here at all is the upstream's to answer whole.
#[tokio::test(flavor = "multi_thread")]
async fn a_disk_that_fills_mid_answer_leaves_the_rest_to_the_upstream() {
    let blob = shoal_integration::random_bytes(16 << 20);
    let digest = shoal_integration::sha256(&blob);
    let (_registry, cluster) = mirror_of_blobs(&[&blob], None, "").await;
    // The task files go to a 4 MiB filesystem.
    let tasks = cluster.daemons[0].data_dir.join("store").join("tasks");
    std::fs::create_dir_all(&tasks).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=4m", "tmpfs"])
        .arg(&tasks)
        .status()
        .unwrap();
    assert!(mounted.success(), "mount a tmpfs (the tests run as root)");
    let _mount = Mounted(tasks);
    shoal_p2p::install_crypto_provider();
    let resp = reqwest::Client::new()
        .get(format!(
            "{}/v2/x/blobs/{digest}",
            cluster.daemons[0].mirror_url()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let body = resp.bytes().await.expect("the whole answer");
    assert_eq!(body.len(), blob.len());
    assert!(body == blob, "the answer is not the blob");
    // The download did fail here.
    let failed = cluster.daemons[0]
        .metric("shoal_downloads_total{outcome=\"error\"}")
        .await;
    assert_eq!(
        failed, 1,
        "the download did not fail: the test tests nothing"
    );
}
