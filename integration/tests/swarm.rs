//! The swarm: scheduler, seed and daemons as real processes on 127.0.0.1.

use std::time::Duration;

use shoal_integration::cluster::Cluster;
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

#[tokio::test(flavor = "multi_thread")]
async fn eight_daemons_one_origin_fetch_and_pieces_shared_between_daemons() {
    let size = 256 * MIB;
    let data = random_bytes(size);
    let origin = TestOrigin::builder()
        .file("/blob", data.clone())
        .start()
        .await;
    // A seed that serves two uploads at a time: daemons must mostly feed each other.
    let cluster = Cluster::builder()
        .daemons(8)
        .seed_upload_slots(2)
        .start()
        .await;
    let results = cluster.get_all(&origin.url("/blob")).await;
    assert_all_exact(&results, &data, &cluster);

    let sent = origin.bytes_sent();
    assert!(
        sent as f64 <= size as f64 * 1.05,
        "origin sent {sent} bytes for a {size}-byte blob"
    );
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
async fn seed_killed_at_30_percent_everyone_completes() {
    let size = 64 * MIB;
    let data = random_bytes(size);
    let origin = TestOrigin::builder()
        .file("/blob", data.clone())
        .rate(16 * MIB as u64)
        .start()
        .await;
    let mut cluster = Cluster::builder()
        .daemons(3)
        .stall_timeout("2s")
        .start()
        .await;
    let mut seed = cluster.seed.take().unwrap();
    let kill = async {
        wait_until(Duration::from_secs(60), "30% sent by the origin", || {
            origin.bytes_sent() >= (size as u64) * 3 / 10
        })
        .await;
        seed.child.kill9();
    };
    let url = origin.url("/blob");
    let (results, ()) = tokio::join!(cluster.get_all(&url), kill);
    assert_all_exact(&results, &data, &cluster);
}
