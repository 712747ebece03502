//! The swarm: scheduler, seed and daemons as real processes on 127.0.0.1.

use std::path::Path;
use std::time::Duration;

use shoal_integration::cluster::{Cluster, scheduler_command};
use shoal_integration::fakepeer::{CorruptPeer, Lie};
use shoal_integration::origin::TestOrigin;
use shoal_integration::process::wait_until;
use shoal_integration::random_bytes;

const MIB: usize = 1 << 20;

fn assert_all_exact(
    results: &[(std::path::PathBuf, std::process::Output)],
    data: &[u8],
    cluster: &Cluster,
) {
    for (i, (out, res)) in results.iter().enumerate() {
        assert!(
            res.status.success(),
            "get {i} failed: {}\n{}",
            String::from_utf8_lossy(&res.stderr),
            cluster.log(&cluster.daemons[i])
        );
        assert!(
            std::fs::read(out).unwrap() == data,
            "daemon {i} got wrong bytes"
        );
    }
}

/// The origin sent the blob of `size` bytes about once (5 % for retried pieces).
fn assert_origin_sent_once(origin: &TestOrigin, size: usize) {
    let sent = origin.bytes_sent();
    assert!(
        sent as f64 <= size as f64 * 1.05,
        "origin sent {sent} bytes for a {size}-byte blob"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn eight_daemons_one_origin_fetch_and_pieces_shared_between_daemons() {
    let size = 256 * MIB;
    let (data, origin) = blob_origin(size, None).await;
    // A seed that serves two uploads at a time: daemons must mostly feed each other.
    let cluster = Cluster::builder()
        .daemons(8)
        .seed_upload_slots(2)
        .start()
        .await;
    let results = cluster.get_all(&origin.url("/blob")).await;
    assert_all_exact(&results, &data, &cluster);

    assert_origin_sent_once(&origin, size);
    let mut from_peers = 0;
    for d in &cluster.daemons {
        let peer = d
            .metric("shoal_download_bytes_total{source=\"peer\"}")
            .await;
        let seed = d
            .metric("shoal_download_bytes_total{source=\"seed\"}")
            .await;
        let origin = d
            .metric("shoal_download_bytes_total{source=\"origin\"}")
            .await;
        assert!(
            peer + seed + origin >= size as u64,
            "{}: peer {peer} seed {seed} origin {origin}",
            d.name
        );
        if peer > 0 {
            from_peers += 1;
        }
    }
    assert!(
        from_peers >= 5,
        "only {from_peers} of 8 daemons received pieces from other daemons"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn pieces_are_passed_on_while_they_arrive() {
    let size = 32 * MIB;
    let (data, origin) = blob_origin(size, None).await;
    // Every daemon takes pieces from peers at 8 MiB/s: a piece arrives over a while (8 at
    // once: about a second each), and the others ask the host it goes to for it meanwhile.
    let cluster = Cluster::builder()
        .daemons(3)
        .setting("limits", &format!("download_rate = {}", 8 * MIB))
        .start()
        .await;
    let results = cluster.get_all(&origin.url("/blob")).await;
    assert_all_exact(&results, &data, &cluster);
    assert_origin_sent_once(&origin, size);
    let mut relayed = 0;
    for d in &cluster.daemons {
        relayed += d.metric("shoal_relayed_pieces_total").await;
    }
    assert!(
        relayed >= 4,
        "{relayed} pieces of 32 passed on while they arrived"
    );
}

/// A blob of `size` random bytes at `/blob` on an origin sending at most `rate` bytes/s.
async fn blob_origin(size: usize, rate: Option<u64>) -> (bytes::Bytes, TestOrigin) {
    let data = random_bytes(size);
    let mut origin = TestOrigin::builder().file("/blob", data.clone());
    if let Some(rate) = rate {
        origin = origin.rate(rate);
    }
    (data, origin.start().await)
}

/// A blob of `size` random bytes on an origin sending 16 MiB/s, so faults land mid-download.
async fn slow_origin(size: usize) -> (bytes::Bytes, TestOrigin) {
    blob_origin(size, Some(16 * MIB as u64)).await
}

/// Waits until the origin has sent `percent` % of `size` bytes.
async fn origin_sent(origin: &TestOrigin, size: usize, percent: u64) {
    let what = format!("{percent}% sent by the origin");
    wait_until(Duration::from_secs(60), &what, || {
        origin.bytes_sent() >= size as u64 * percent / 100
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn seed_killed_at_30_percent_everyone_completes() {
    let size = 64 * MIB;
    let (data, origin) = slow_origin(size).await;
    let mut cluster = Cluster::builder()
        .daemons(3)
        .stall_timeout("2s")
        .start()
        .await;
    let mut seed = cluster.seed.take().unwrap();
    let kill = async {
        origin_sent(&origin, size, 30).await;
        seed.child.kill9();
    };
    let url = origin.url("/blob");
    let (results, ()) = tokio::join!(cluster.get_all(&url), kill);
    assert_all_exact(&results, &data, &cluster);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_peer_serving_corrupt_pieces_is_caught_and_avoided() {
    let size = 32 * MIB;
    let (data, origin) = blob_origin(size, None).await;
    let cluster = Cluster::builder().daemons(3).start().await;
    let url = origin.url("/blob");
    let task = shoal_p2p::TaskId::for_url(&url.parse().unwrap(), &Default::default());
    let member = cluster.ca().member("liar", &["node"]);
    let liar = CorruptPeer::join(cluster.scheduler_port, Some(member), &task, size as u64).await;
    let results = cluster.get_all(&url).await;
    assert_all_exact(&results, &data, &cluster);
    let asked = liar.requests.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        asked > 0,
        "the liar was never asked: the test proves nothing"
    );
    // When the first bad piece comes back a daemon has at most its 8 requests in flight to the
    // liar (all of them when the liar is its only parent with digests published yet); after
    // that it never asks the liar again.
    assert!(asked <= 3 * 8, "the liar was asked {asked} times");
}

/// A member that announces every piece as arriving and then never sends one: its stalls are
/// timeouts, reported like any unreachable parent's (only a body that breaks off after a 200 is
/// excused, as a relayed piece withdrawn), so each daemon stops asking it after its first
/// requests time out.
#[tokio::test(flavor = "multi_thread")]
async fn a_member_that_says_pieces_are_arriving_and_stalls_is_reported_and_avoided() {
    // The seed fetches for 4 s: time for several peer timeouts of 1 s.
    let size = 16 * MIB;
    let (data, origin) = blob_origin(size, Some(4 * MIB as u64)).await;
    let cluster = Cluster::builder()
        .daemons(2)
        .setting("swarm", "peer_timeout = \"1s\"")
        .start()
        .await;
    let url = origin.url("/blob");
    let task = shoal_p2p::TaskId::for_url(&url.parse().unwrap(), &Default::default());
    let member = cluster.ca().member("staller", &["node"]);
    let scheduler = format!("http://127.0.0.1:{}", cluster.scheduler_port);
    let ip = "127.0.0.1".parse().unwrap();
    let staller =
        CorruptPeer::join_lying(&scheduler, Some(member), ip, &task, size as u64, Lie::Stall).await;
    let results = cluster.get_all(&url).await;
    assert_all_exact(&results, &data, &cluster);
    let asked = staller.requests.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        asked > 0,
        "the staller was never asked: the test proves nothing"
    );
    // A daemon's first requests to it (at most its 8 in flight) time out; then it is avoided.
    assert!(asked <= 2 * 8, "the staller was asked {asked} times");
}

#[tokio::test(flavor = "multi_thread")]
async fn scheduler_unreachable_everyone_completes_from_the_origin() {
    let size = 16 * MIB;
    let (data, origin) = blob_origin(size, None).await;
    let cluster = Cluster::builder()
        .no_scheduler()
        .no_seed()
        .daemons(2)
        .start()
        .await;
    let results = cluster.get_all(&origin.url("/blob")).await;
    assert_all_exact(&results, &data, &cluster);
    for d in &cluster.daemons {
        assert_eq!(
            d.metric("shoal_download_bytes_total{source=\"origin\"}")
                .await,
            size as u64,
            "{}",
            d.name
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn scheduler_stopped_mid_run_everyone_completes() {
    let size = 48 * MIB;
    let (data, origin) = slow_origin(size).await;
    let mut cluster = Cluster::builder()
        .daemons(3)
        .stall_timeout("2s")
        .start()
        .await;
    let mut scheduler = cluster.scheduler.take().unwrap();
    let stop = async {
        origin_sent(&origin, size, 30).await;
        scheduler.kill9();
    };
    let url = origin.url("/blob");
    let (results, ()) = tokio::join!(cluster.get_all(&url), stop);
    assert_all_exact(&results, &data, &cluster);
}

#[tokio::test(flavor = "multi_thread")]
async fn scheduler_restarted_mid_run_the_swarm_recovers() {
    let size = 48 * MIB;
    let (data, origin) = slow_origin(size).await;
    let mut cluster = Cluster::builder()
        .daemons(3)
        .stall_timeout("5s")
        .start()
        .await;
    let mut scheduler = cluster.scheduler.take().unwrap();
    let (port, scheduler_dir) = (cluster.scheduler_port, cluster.scheduler_dir());
    let restart = async {
        origin_sent(&origin, size, 30).await;
        scheduler.kill9();
        tokio::time::sleep(Duration::from_millis(300)).await;
        shoal_integration::process::ChildGuard::spawn(scheduler_command(port, &scheduler_dir))
    };
    let url = origin.url("/blob");
    let (results, _new_scheduler) = tokio::join!(cluster.get_all(&url), restart);
    assert_all_exact(&results, &data, &cluster);
    // The swarm went on after the restart instead of every daemon fetching alone.
    let sent = origin.bytes_sent();
    assert!(
        sent < 2 * size as u64,
        "origin sent {sent} bytes: the daemons went to it on their own"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_tasks_of_a_scheduler_that_stops_answering_move_to_the_next() {
    let size = 48 * MIB;
    let (data, origin) = slow_origin(size).await;
    // The default stall timeout: a lost scheduler must be noticed, and its tasks moved, before
    // the hosts give up on the swarm.
    let cluster = Cluster::builder()
        .schedulers(2)
        .daemons(3)
        .stall_timeout("10s")
        .start()
        .await;
    let url = origin.url("/blob");
    let task = shoal_p2p::TaskId::for_url(&url.parse().unwrap(), &Default::default());
    let urls = cluster.scheduler_urls();
    let owner = (0..urls.len())
        .max_by_key(|&i| shoal_p2p::swarm::rendezvous(task.as_str(), &urls[i]))
        .unwrap();
    let pid = match owner {
        0 => cluster.scheduler.as_ref(),
        i => cluster.more_schedulers[i - 1].1.as_ref(),
    }
    .unwrap()
    .child
    .id();
    let stop = async {
        origin_sent(&origin, size, 30).await;
        // Stopped, not killed: its connections stay open and unanswered, as when its packets
        // are dropped on the way.
        let status = std::process::Command::new("kill")
            .args(["-STOP", &pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    };
    let (results, ()) = tokio::join!(cluster.get_all(&url), stop);
    let _ = std::process::Command::new("kill")
        .args(["-CONT", &pid.to_string()])
        .status();
    assert_all_exact(&results, &data, &cluster);
    let sent = origin.bytes_sent();
    assert!(
        sent < 2 * size as u64,
        "origin sent {sent} bytes: the daemons went to it on their own"
    );
}

/// `shoal status --json` of daemon `i`.
async fn status(cluster: &Cluster, i: usize) -> serde_json::Value {
    let mut cmd = shoal_integration::process::shoal();
    cmd.arg("status")
        .arg("--json")
        .arg("--data-dir")
        .arg(cluster.daemons[i].data_dir.join("store"));
    let out = shoal_integration::process::run(cmd).await;
    assert!(
        out.status.success(),
        "shoal status: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn status_shows_the_scheduler_the_tasks_and_bytes_by_source() {
    let size = 8 * MIB;
    let (data, origin) = blob_origin(size, None).await;
    let cluster = Cluster::builder().daemons(2).start().await;
    let url = origin.url("/blob");
    let results = cluster.get_all(&url).await;
    assert_all_exact(&results, &data, &cluster);
    // A second get on daemon 0 is a cache hit.
    let again =
        shoal_integration::process::run(cluster.get(0, &url, &cluster.dir().join("again"))).await;
    assert!(again.status.success());

    let s = status(&cluster, 0).await;
    assert_eq!(s["host"]["id"], "d0");
    assert_eq!(s["schedulers"][0]["attached"], true, "{s}");
    let got: u64 = ["origin", "peer", "seed"]
        .iter()
        .map(|k| s["downloaded"][k].as_u64().unwrap())
        .sum();
    assert_eq!(got, size as u64, "{s}");
    assert_eq!(s["downloaded"]["cache"], size as u64, "{s}");
    let tasks = s["tasks"].as_array().unwrap();
    assert_eq!(tasks.len(), 1, "{s}");
    assert_eq!(tasks[0]["url"], url.as_str());
    assert_eq!(tasks[0]["complete"], true);

    // Without a daemon, a clear error.
    let mut cmd = shoal_integration::process::shoal();
    cmd.arg("status")
        .arg("--data-dir")
        .arg(cluster.dir().join("nowhere"));
    let out = shoal_integration::process::run(cmd).await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach the daemon"));
}

#[tokio::test(flavor = "multi_thread")]
async fn every_get_ends_with_its_own_size_time_and_bytes_by_source() {
    let size = 6 * MIB + 4321;
    let (data, origin) = blob_origin(size, None).await;
    let cluster = Cluster::builder().daemons(2).start().await;
    let url = origin.url("/blob");
    let json_get = |i: usize| {
        let mut cmd = cluster.get(i, &url, &cluster.dir().join(format!("out-{i}")));
        cmd.arg("--json");
        async move {
            let out = shoal_integration::process::run(cmd).await;
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
        }
    };
    let first = json_get(0).await;
    assert_eq!(first["bytes"], size as u64, "{first}");
    let by = |v: &serde_json::Value, k: &str| v["by_source"][k].as_u64().unwrap();
    let sum = |v: &serde_json::Value| {
        ["origin", "peer", "seed", "cache"]
            .iter()
            .map(|k| by(v, k))
            .sum::<u64>()
    };
    assert_eq!(sum(&first), size as u64, "{first}");
    assert!(first["seconds"].as_f64().unwrap() > 0.0, "{first}");
    // The second host finds the content in the swarm: none of its bytes are the origin's.
    let second = json_get(1).await;
    assert_eq!(sum(&second), size as u64, "{second}");
    assert_eq!(by(&second, "origin"), 0, "{second}");
    assert_eq!(
        by(&second, "peer") + by(&second, "seed"),
        size as u64,
        "{second}"
    );

    // Without --json or -q: one line on standard error, wget's way, naming the cache.
    let out = cluster.dir().join("again");
    let mut cmd = shoal_integration::process::shoal();
    cmd.arg("get")
        .arg(&url)
        .arg("-O")
        .arg(&out)
        .arg("--data-dir")
        .arg(cluster.daemons[0].data_dir.join("store"));
    let again = shoal_integration::process::run(cmd).await;
    let said = String::from_utf8_lossy(&again.stderr).into_owned();
    assert!(again.status.success(), "{said}");
    assert!(again.stdout.is_empty());
    assert_eq!(said.lines().count(), 1, "{said}");
    assert!(
        said.starts_with(&format!("shoal get: '{}': 6.00 MiB in ", out.display())),
        "{said}"
    );
    assert!(
        said.trim_end()
            .ends_with("; origin 0 B, peers 0 B, seeds 0 B, cache 6.00 MiB"),
        "{said}"
    );
    assert_eq!(std::fs::read(&out).unwrap(), data);

    // --json and the content on standard output cannot share it.
    let mut cmd = cluster.get(0, &url, Path::new("-"));
    cmd.arg("--json");
    let both = shoal_integration::process::run(cmd).await;
    assert!(!both.status.success());
    assert!(both.stdout.is_empty());
    assert!(String::from_utf8_lossy(&both.stderr).contains("use -O FILE"));
}

/// A cluster member that speaks to the scheduler by hand (as an attacker who joined would):
/// its client, its host, and its attach stream (attached while it is kept).
async fn member(
    cluster: &Cluster,
) -> (
    shoal_p2p::proto::scheduler_client::SchedulerClient<tonic::transport::Channel>,
    shoal_p2p::proto::Host,
    tonic::Response<tonic::Streaming<shoal_p2p::proto::Job>>,
) {
    use shoal_p2p::proto::{AttachRequest, Host};
    let identity = cluster.ca().member("mallory", &["node"]);
    let mut client = scheduler_client(cluster, Some(&identity));
    let host = Host {
        id: "mallory".into(),
        upload_addr: "127.0.0.1:9".into(),
        upload_slots: 1,
        ..Default::default()
    };
    let attached = client
        .attach(AttachRequest {
            host: Some(host.clone()),
        })
        .await
        .unwrap();
    (client, host, attached)
}

/// A scheduler client of `cluster`'s scheduler, with `identity` (or none: plaintext).
fn scheduler_client(
    cluster: &Cluster,
    identity: Option<&std::sync::Arc<shoal_p2p::cluster::Cluster>>,
) -> shoal_p2p::proto::scheduler_client::SchedulerClient<tonic::transport::Channel> {
    let url = format!("http://127.0.0.1:{}", cluster.scheduler_port);
    let channel =
        shoal_p2p::swarm::scheduler_channel(&url, Duration::from_secs(3), identity).unwrap();
    shoal_p2p::proto::scheduler_client::SchedulerClient::new(channel)
}

/// Issue 13 (4): one message used to take the scheduler down. A length of ~2^58 made the piece
/// count overflow inside the scheduler's lock; the panic poisoned it and every later call failed,
/// so every daemon went to the origin on its own.
#[tokio::test(flavor = "multi_thread")]
async fn a_member_announcing_an_impossible_length_changes_nothing_and_the_scheduler_keeps_serving()
{
    use shoal_p2p::piece::MAX_CONTENT_LENGTH;
    use shoal_p2p::proto::{AnnounceRequest, PieceSet, Task, WatchRequest};

    let size = 8 * MIB;
    let (data, origin) = blob_origin(size, None).await;
    let cluster = Cluster::builder().daemons(2).start().await;
    let url = origin.url("/blob");
    let task = shoal_p2p::TaskId::for_url(&url.parse().unwrap(), &Default::default());
    let (mut client, host, _attached) = member(&cluster).await;
    let hostile = [
        (1u64 << 58, vec![0xff; 4]),
        (u64::MAX, vec![0xff; 4]),
        (MAX_CONTENT_LENGTH + 1, Vec::new()),
        (size as u64, vec![0xff; 1 << 20]),
    ];
    for (content_length, bitmap) in hostile {
        let pieces = PieceSet {
            length_known: true,
            content_length,
            bitmap,
            ..Default::default()
        };
        let watch = client
            .watch(WatchRequest {
                host: Some(host.clone()),
                task: Some(Task {
                    id: task.to_string(),
                    ..Default::default()
                }),
                have: Some(pieces.clone()),
                digest_deltas: false,
            })
            .await;
        assert_eq!(
            watch.err().map(|s| s.code()),
            Some(tonic::Code::InvalidArgument),
            "watch with length {content_length}"
        );
        let announce = client
            .announce(AnnounceRequest {
                host_id: host.id.clone(),
                task_id: task.to_string(),
                pieces: Some(pieces),
                failure: None,
                withdrawn: false,
            })
            .await;
        assert_eq!(
            announce.err().map(|s| s.code()),
            Some(tonic::Code::InvalidArgument),
            "announce with length {content_length}"
        );
    }
    // The scheduler still runs the swarm: the blob leaves the origin once.
    let results = cluster.get_all(&url).await;
    assert_all_exact(&results, &data, &cluster);
    assert_origin_sent_once(&origin, size);
}

/// Issue 13 (3): a task's length and piece digests were taken from whoever announced them
/// first. A member that names the task before anyone else, with a wrong length and the digests
/// of its own bytes for every piece, now changes nothing: only the seed the scheduler sent to
/// the origin says what the task is, and the blob leaves the origin once.
#[tokio::test(flavor = "multi_thread")]
async fn a_member_naming_a_task_first_with_false_facts_changes_nothing() {
    use shoal_p2p::proto::{PieceDigest, PieceSet, Task, WatchRequest};

    let size = 6 * MIB;
    let (data, origin) = blob_origin(size, None).await;
    let cluster = Cluster::builder().daemons(2).start().await;
    let url = origin.url("/blob");
    let task = shoal_p2p::TaskId::for_url(&url.parse().unwrap(), &Default::default());
    let (mut client, host, _attached) = member(&cluster).await;
    let false_length = (size + MIB) as u64;
    let pieces = shoal_p2p::piece::Layout::for_length(false_length)
        .unwrap()
        .piece_count();
    let lie = PieceSet {
        length_known: true,
        content_length: false_length,
        bitmap: vec![0xff; pieces.div_ceil(8) as usize],
        digests: (0..pieces)
            .map(|number| PieceDigest {
                number,
                blake3: vec![0xee; 32],
            })
            .collect(),
        ..Default::default()
    };
    let _watch = client
        .watch(WatchRequest {
            host: Some(host),
            task: Some(Task {
                id: task.to_string(),
                ..Default::default()
            }),
            have: Some(lie),
            digest_deltas: false,
        })
        .await
        .unwrap();
    let results = cluster.get_all(&url).await;
    assert_all_exact(&results, &data, &cluster);
    assert_origin_sent_once(&origin, size);
}

/// Issue 13 (5): a seed ran whatever URL a seed job named for a task id. Any host could watch a
/// task first with another URL (an internal address, say): the seed fetched it and served that
/// content as the task to everyone. The scheduler now refuses a task whose URL is not its id's
/// (and a seed checks every job again, see `shoal-seed`'s unit tests).
#[tokio::test(flavor = "multi_thread")]
async fn a_task_named_with_another_url_is_refused_and_nobody_fetches_it() {
    use shoal_p2p::proto::{Task, WatchRequest};

    let size = 2 * MIB;
    let (data, origin) = blob_origin(size, None).await;
    let internal = TestOrigin::builder()
        .file("/admin", random_bytes(size))
        .start()
        .await;
    let cluster = Cluster::builder().daemons(1).start().await;
    let url = origin.url("/blob");
    let task = shoal_p2p::TaskId::for_url(&url.parse().unwrap(), &Default::default());
    let (mut client, host, _attached) = member(&cluster).await;
    // The first watcher of the task names the internal address as its URL, then a filter that
    // would make the internal URL's query irrelevant.
    for (bad, filtered) in [
        (internal.url("/admin"), Vec::new()),
        (format!("{url}?x=1"), vec!["x".to_string()]),
    ] {
        let watch = client
            .watch(WatchRequest {
                host: Some(host.clone()),
                task: Some(Task {
                    id: task.to_string(),
                    url: bad.clone(),
                    id_options: Some(shoal_p2p::proto::IdOptions {
                        filtered_query_params_set: !filtered.is_empty(),
                        filtered_query_params: filtered,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                have: None,
                digest_deltas: false,
            })
            .await;
        assert_eq!(
            watch.err().map(|s| s.code()),
            Some(tonic::Code::InvalidArgument),
            "{bad}"
        );
    }
    // The task's real content reaches the daemon through the swarm, and nobody fetched the
    // internal address.
    let results = cluster.get_all(&url).await;
    assert_all_exact(&results, &data, &cluster);
    assert!(internal.seen().is_empty());
    assert_origin_sent_once(&origin, size);
}

/// Issue 14 (1, 4): the seed's origin failure (here the first requester's expired signature) was
/// the task's: every waiting host failed with it, even one whose own request was good. Now the
/// failure reaches the waiting hosts at once and each fetches with its own credentials.
#[tokio::test(flavor = "multi_thread")]
async fn a_fetchers_origin_failure_is_its_own_and_the_others_fetch_with_theirs() {
    use shoal_integration::process::run;

    let size = 3 * MIB;
    let data = random_bytes(size);
    let origin = TestOrigin::builder()
        .file("/obj", data.clone())
        .signed("Signature=good")
        .start()
        .await;
    // A stall timeout longer than the test: only the failure can send a host to the origin.
    let cluster = Cluster::builder()
        .daemons(2)
        .stall_timeout("120s")
        .start()
        .await;
    let (expired, good) = (
        origin.url("/obj?Signature=expired"),
        origin.url("/obj?Signature=good"),
    );
    let out = |i: usize| cluster.dir().join(format!("out-{i}"));
    let seed = cluster.seed.as_ref().unwrap();
    let first = run(cluster.get(0, &expired, &out(0)));
    let second = async {
        wait_until(Duration::from_secs(30), "the seed job to fail", || {
            cluster.log(seed).contains("seed job failed")
        })
        .await;
        run(cluster.get(1, &good, &out(1))).await
    };
    let (first, second) = tokio::join!(first, second);
    // The expired request fails with the origin's own answer to it.
    assert_eq!(
        first.status.code(),
        Some(8),
        "{}",
        cluster.log(&cluster.daemons[0])
    );
    assert!(
        second.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&second.stderr),
        cluster.log(&cluster.daemons[1])
    );
    assert!(std::fs::read(out(1)).unwrap() == data);
}

/// Issue 14 (2): the upload server's fast path reads at most 64 KiB of request head, but handed
/// a larger one to hyper, which took up to ~400 KiB and answered it. (A member's request: a
/// stranger's ends in the TLS handshake.)
#[tokio::test(flavor = "multi_thread")]
async fn an_oversized_request_head_to_the_upload_server_is_refused() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let cluster = Cluster::builder().daemons(1).start().await;
    let socket = cluster.daemons[0].data_dir.join("store").join("shoal.sock");
    let status = shoal_p2p::api::LocalClient::new(socket)
        .status()
        .await
        .unwrap();
    let upload = status.host.unwrap().upload_addr;
    let piece = format!("/tasks/sha256:{}/pieces/0", "ab".repeat(32));
    let member = cluster.ca().member("mallory", &["node"]);
    let tcp = tokio::net::TcpStream::connect(&upload).await.unwrap();
    let tls = member.client_config(shoal_p2p::cluster::Role::Node, vec![b"http/1.1".to_vec()]);
    let mut stream = member.connect(tcp, std::sync::Arc::new(tls)).await.unwrap();
    let request = format!(
        "GET {piece} HTTP/1.1\r\nHost: {upload}\r\nX-Big: {}\r\n\r\n",
        "a".repeat(100 << 10)
    );
    // The server may answer before it read everything, and then close.
    let _ = stream.write_all(request.as_bytes()).await;
    let mut answer = vec![0u8; 64];
    let n = stream.read(&mut answer).await.unwrap_or(0);
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(
        answer.starts_with("HTTP/1.1 431"),
        "answered {answer:?} to a 100 KiB head"
    );
}
