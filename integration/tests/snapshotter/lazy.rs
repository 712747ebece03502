//! Lazy pulling: a gzip layer whose index the swarm holds is mounted with FUSE instead of
//! unpacked, under a real containerd and runc; the container's reads come through the node.

use super::*;

/// Asks the node's mirror for `layer`'s gzip index until the swarm has it (the first ask
/// sends the seed to build it, as a pull on another host would); its bytes.
async fn index_built(remote: &Remote, layer: &str) -> bytes::Bytes {
    let host = remote.reference.split('/').next().unwrap();
    let url = format!(
        "{}/v2/test/cat/blobs/{layer}?ns={host}",
        remote.cluster.daemons[0].mirror_url()
    );
    let client = reqwest::Client::new();
    let start = std::time::Instant::now();
    loop {
        let resp = client
            .get(&url)
            .header("x-shoal-lazy", "index")
            .send()
            .await
            .unwrap();
        if resp.status() == 200 {
            return resp.bytes().await.unwrap();
        }
        assert_eq!(resp.status(), 404, "{}", resp.text().await.unwrap());
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no index of {layer}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The FUSE mounts of lazy layers under `dir`.
fn lazy_mounts(dir: &Path) -> usize {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    mounts
        .lines()
        .filter(|l| {
            l.starts_with("shoal ") && l.contains(" fuse ") && l.contains(dir.to_str().unwrap())
        })
        .count()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_layer_the_swarm_has_an_index_of_is_mounted_lazily_and_its_container_runs() {
    let dir = tempfile::tempdir().unwrap();
    let image = Image::of_gzip_layers(cat_tars(dir.path()));
    let mut remote = Remote::start_in(dir, image, true, |b| b).await;
    let digests: Vec<String> = remote
        .image
        .layers
        .iter()
        .map(|l| shoal_integration::sha256(l))
        .collect();
    for d in &digests {
        let index = index_built(&remote, d).await;
        assert!(index.starts_with(b"SHOALGZL"));
    }

    let out = shoal_pull(&remote).await;
    assert!(out.status.success(), "shoal pull: {}", text(&out));
    let log = std::fs::read_to_string(remote.dir.path().join("snapshotter.log")).unwrap();
    assert_eq!(log.matches("layer mounted lazily").count(), 2, "{log}");
    assert_eq!(
        lazy_mounts(remote.dir.path()),
        2,
        "{}",
        std::fs::read_to_string("/proc/self/mounts").unwrap()
    );
    // `cat` and its libraries are read through FUSE; the upper layer's whiteout hides the
    // lower layer's file.
    assert_image_runs(&remote.ctd, &remote.reference, "lazy").await;

    // A snapshotter killed leaves its mounts dead; the next one mounts the layers again.
    drop(remote._snapshotter);
    let socket = remote.dir.path().join("snapshotter.sock");
    let _ = std::fs::remove_file(&socket);
    let log = remote.dir.path().join("snapshotter-again.log");
    let _again = snapshotter(
        &remote.dir.path().join("snaps"),
        &socket,
        &log,
        &remote.cluster.daemons[0].mirror_url(),
    );
    wait_until(Duration::from_secs(20), "snapshotter socket", || {
        socket.exists()
    })
    .await;
    assert_image_runs(&remote.ctd, &remote.reference, "lazy-again").await;
    let said = std::fs::read_to_string(&log).unwrap();
    assert_eq!(
        said.matches("lazy layer mounted again").count(),
        2,
        "{said}"
    );
    assert_eq!(lazy_mounts(remote.dir.path()), 2);

    // The layers come in the background: the node soon holds both, whole and checked.
    let store = remote.cluster.daemons[0].data_dir.join("store");
    let node = shoal_p2p::api::LocalClient::new(shoal_p2p::api::socket_in(&store));
    let start = std::time::Instant::now();
    loop {
        let tasks = node.tasks().await.unwrap();
        let complete = |d: &String| tasks.iter().any(|t| &t.task == d && t.complete);
        if digests.iter().all(complete) {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "{tasks:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Whole, each layer is unpacked beside its mount: new containers stack on plain files.
    let start = std::time::Instant::now();
    loop {
        let said = std::fs::read_to_string(&log).unwrap();
        if said.matches("lazy layer whole and unpacked").count() == 2 {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "{said}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A new container's root stacks on them (the top layer: the committed one with a parent).
    let ls = remote
        .ctd
        .run(&["snapshots", "--snapshotter", "shoal", "ls"])
        .await;
    let top = text(&ls)
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.len() == 3 && f[2] == "Committed" && f[1].starts_with("sha256:"))
        .map(|f| f[0].to_owned())
        .unwrap_or_else(|| panic!("{}", text(&ls)));
    let snap = |args: &[&str]| {
        let mut all = vec!["snapshots", "--snapshotter", "shoal"];
        all.extend_from_slice(args);
        let all: Vec<String> = all.into_iter().map(str::to_owned).collect();
        let ctd = &remote.ctd;
        async move {
            let args: Vec<&str> = all.iter().map(String::as_str).collect();
            ctd.run(&args).await
        }
    };
    assert!(snap(&["prepare", "probe", &top]).await.status.success());
    let mounts = text(&snap(&["mounts", "/mnt", "probe"]).await);
    assert_eq!(mounts.matches("/unpacked").count(), 2, "{mounts}");
    assert!(snap(&["rm", "probe"]).await.status.success());
    // Their disk use is the unpacked files'.
    let usage = text(&snap(&["usage", &top]).await);
    let inodes: u64 = usage
        .lines()
        .find(|l| l.starts_with(&top))
        .and_then(|l| l.split_whitespace().last()?.parse().ok())
        .unwrap_or_else(|| panic!("{usage}"));
    assert!(inodes >= 2, "{usage}");
    // With the registry and every peer gone the image still runs: its bytes are here.
    drop(remote._registry);
    drop(remote.cluster.seed.take());
    assert_image_runs(&remote.ctd, &remote.reference, "lazy-offline").await;

    // containerd's GC (here: the image removed, its snapshots with it) unmounts them.
    let rm = remote
        .ctd
        .run(&["images", "rm", "--sync", &remote.reference])
        .await;
    assert!(rm.status.success(), "{}", text(&rm));
    wait_until(Duration::from_secs(20), "lazy layers unmounted", || {
        lazy_mounts(remote.dir.path()) == 0
    })
    .await;
}

/// A layer of `cat`, then `big.bin` (48 MiB, random) and `last.txt`, stored last.
fn image_with_a_big_file(dir: &Path) -> Image {
    let root = dir.join("big");
    shoal_integration::registry::copy_cat(&root);
    std::fs::write(
        root.join("big.bin"),
        shoal_integration::random_bytes(48 << 20),
    )
    .unwrap();
    std::fs::write(root.join("last.txt"), "the last file\n").unwrap();
    Image::of_gzip_layers(vec![tar_dir(&root).unwrap()])
}

/// Registry stopped after the mount: the read is served from a peer (the seed). Then the
/// seed gone too: a read of what the node does not hold fails with EIO once the origin was
/// tried, and the snapshotter's log names the layer and the range.
#[tokio::test(flavor = "multi_thread")]
async fn reads_come_from_peers_without_the_registry_and_fail_cleanly_without_any_source() {
    let dir = tempfile::tempdir().unwrap();
    let image = image_with_a_big_file(dir.path());
    // The node's link: 1 MB/s, so the layer's background download is far from done when the
    // sources go; the swarm is given up on after 2 s.
    let remote = Remote::start_in(dir, image, true, |b| {
        b.setting("limits", "download_rate = 1000000")
            .stall_timeout("2s")
    })
    .await;
    let layer = shoal_integration::sha256(&remote.image.layers[0]);
    index_built(&remote, &layer).await;
    let out = shoal_pull(&remote).await;
    assert!(out.status.success(), "shoal pull: {}", text(&out));
    drop(remote._registry);

    let out = run(
        &remote.ctd,
        &remote.reference,
        "peers",
        &["/bin/cat", "/last.txt"],
    )
    .await;
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "the last file\n");
    let from_origin = remote.cluster.daemons[0]
        .metric("shoal_download_bytes_total{source=\"origin\"}")
        .await;
    assert_eq!(from_origin, 0, "the registry is gone: all from the seed");

    let mut cluster = remote.cluster;
    drop(cluster.seed.take());
    let out = run(
        &remote.ctd,
        &remote.reference,
        "none",
        &["/bin/cat", "/big.bin"],
    )
    .await;
    assert!(!out.status.success(), "read with every source gone");
    assert!(text(&out).contains("Input/output error"), "{}", text(&out));
    let log = std::fs::read_to_string(remote.dir.path().join("snapshotter.log")).unwrap();
    let line = log
        .lines()
        .find(|l| l.contains("a lazy read failed"))
        .unwrap_or_else(|| panic!("{log}"));
    assert!(line.contains(&layer) && line.contains("big.bin"), "{line}");
}

/// The log of a snapshotter once it has a line saying `what`.
async fn logged(log: &Path, what: &str) -> String {
    let start = std::time::Instant::now();
    loop {
        let said = std::fs::read_to_string(log).unwrap_or_default();
        if said.contains(what) {
            return said;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no {what:?} in {}: {said}",
            log.display()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Prefetch: the first host to run the layer publishes what its reads needed (2 s after the
/// first, here); the next host's mount makes those spans present before the container reads,
/// from the swarm (no byte from the registry). The list is the first host's: another is
/// refused, as is one that is not a list, or one for a blob the registry does not show.
#[tokio::test(flavor = "multi_thread")]
async fn the_first_hosts_reads_are_prefetched_on_the_next_host_from_the_swarm() {
    let dir = tempfile::tempdir().unwrap();
    let image = image_with_a_big_file(dir.path());
    let remote = Remote::start_in(dir, image, true, |b| b.daemons(2)).await;
    let layer = shoal_integration::sha256(&remote.image.layers[0]);
    index_built(&remote, &layer).await;

    // The first host: its reads are recorded, then published.
    let out = shoal_pull(&remote).await;
    assert!(out.status.success(), "shoal pull: {}", text(&out));
    let read = |id| {
        run(
            &remote.ctd,
            &remote.reference,
            id,
            &["/bin/cat", "/last.txt"],
        )
    };
    let out = read("first").await;
    assert_eq!(String::from_utf8_lossy(&out.stdout), "the last file\n");
    let first_log = remote.dir.path().join("snapshotter.log");
    logged(&first_log, "published for the next hosts' prefetch").await;

    // The next host: its own containerd and snapshotter on the second node.
    let second = remote.dir.path().join("second");
    let socket = second.join("snapshotter.sock");
    let log = second.join("snapshotter.log");
    std::fs::create_dir_all(&second).unwrap();
    let node = &remote.cluster.daemons[1];
    let _snapshotter = snapshotter(
        &second.join("snaps"),
        &socket,
        &log,
        &format!("http://127.0.0.1:{}", node.proxy_port),
    );
    wait_until(Duration::from_secs(20), "snapshotter socket", || {
        socket.exists()
    })
    .await;
    let ctd = Containerd::start_with(
        &second.join("containerd"),
        &format!("[proxy_plugins.shoal]\n  type = \"snapshot\"\n  address = {socket:?}\n"),
    )
    .await;
    let out = pull_through(node, &ctd, &socket, &remote.reference).await;
    assert!(out.status.success(), "shoal pull: {}", text(&out));
    let said = logged(&log, "prefetched the layer's first reads").await;
    assert!(!said.contains("prefetch stopped"), "{said}");
    let out = run(&ctd, &remote.reference, "next", &["/bin/cat", "/last.txt"]).await;
    assert_eq!(String::from_utf8_lossy(&out.stdout), "the last file\n");
    let from_origin = node
        .metric("shoal_download_bytes_total{source=\"origin\"}")
        .await;
    assert_eq!(from_origin, 0, "the next host's bytes came from the swarm");
    // It had a list: it records none of its own.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let said = std::fs::read_to_string(&log).unwrap();
    assert!(!said.contains("published for the next hosts"), "{said}");
    assert!(!said.contains("prefetch list came first"), "{said}");

    // The first list stands; what is not a list, or names no layer held, is refused.
    let host = remote.reference.split('/').next().unwrap();
    let put = |body: Vec<u8>, digest: String| {
        let url = format!(
            "http://127.0.0.1:{}/v2/test/cat/blobs/{digest}?ns={host}",
            node.proxy_port
        );
        async move {
            reqwest::Client::new()
                .put(url)
                .header("x-shoal-lazy", "prefetch")
                .body(body)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    let mut other = shoal_p2p::api::PrefetchList::default();
    other.record(0..1);
    assert_eq!(put(other.to_bytes(), layer.clone()).await, 409);
    assert_eq!(put(b"SHOALPF1 nonsense".to_vec(), layer.clone()).await, 400);
    let unknown = format!("sha256:{}", "0".repeat(64));
    assert_eq!(put(other.to_bytes(), unknown).await, 403);
}
