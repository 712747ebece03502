//! `shoal snapshotter` behind a real containerd 1.6 (`proxy_plugins`), with runc: images pulled
//! with `ctr --snapshotter shoal` run as with containerd's own overlayfs.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use shoal_integration::cluster::{Cluster, ClusterBuilder};
use shoal_integration::process::{ChildGuard, shoal, wait_until};
use shoal_integration::registry::{Access, Image, TestRegistry, tar_dir};
use shoal_integration::runtimes::Containerd;

mod lazy;
mod private;

/// Layer 0: `/bin/cat` with the libraries it loads, `/etc/kept.txt` and `/etc/gone.txt`.
/// Layer 1: `/hello.txt`, and a whiteout deleting `/etc/gone.txt`.
fn image_with_cat(dir: &Path) -> Image {
    Image::of_layers(cat_tars(dir))
}

/// The `cat` image's layers as tars.
fn cat_tars(dir: &Path) -> Vec<bytes::Bytes> {
    let base = dir.join("layer0");
    shoal_integration::registry::copy_cat(&base);
    std::fs::create_dir_all(base.join("etc")).unwrap();
    std::fs::write(base.join("etc/kept.txt"), "kept\n").unwrap();
    std::fs::write(base.join("etc/gone.txt"), "should be gone\n").unwrap();
    let top = dir.join("layer1");
    std::fs::create_dir_all(top.join("etc")).unwrap();
    std::fs::write(top.join("hello.txt"), "hello from the shoal snapshotter\n").unwrap();
    std::fs::write(top.join("etc/.wh.gone.txt"), "").unwrap();
    vec![tar_dir(&base).unwrap(), tar_dir(&top).unwrap()]
}

/// `shoal snapshotter` reading layers through `mirror` (`none`: containerd's path only); a
/// lazy layer's first reads are published 2 s after the first.
fn snapshotter(root: &Path, socket: &Path, log: &Path, mirror: &str) -> ChildGuard {
    let mut cmd = shoal();
    cmd.arg("snapshotter")
        .args(["--record-for", "2s"])
        .arg("--root")
        .arg(root)
        .arg("--socket")
        .arg(socket)
        .arg("--metrics-addr")
        .arg("127.0.0.1:0")
        .args(["--mirror", mirror])
        .stderr(std::fs::File::create(log).unwrap());
    ChildGuard::spawn(cmd)
}

/// A registry holding the `cat` image as `test/cat:v1`, and a cluster of one node whose mirror
/// maps the registry's host; the image's reference.
async fn registry_and_node(dir: &Path) -> (TestRegistry, Image, String, Cluster) {
    registry_and_node_with(dir, image_with_cat(dir), |b| b).await
}

/// [`registry_and_node`] with another image as `test/cat:v1`, the cluster as `configure`
/// makes it.
async fn registry_and_node_with(
    dir: &Path,
    image: Image,
    configure: fn(ClusterBuilder) -> ClusterBuilder,
) -> (TestRegistry, Image, String, Cluster) {
    let registry = TestRegistry::start(&dir.join("registry"), &Access::Anonymous)
        .await
        .unwrap();
    image
        .push(&registry.url(), "test/cat", "v1", None)
        .await
        .unwrap();
    let host = registry.url().trim_start_matches("http://").to_owned();
    let cluster = configure(
        Cluster::builder()
            .daemons(1)
            .registry(&host, &registry.url()),
    )
    .start()
    .await;
    (registry, image, format!("{host}/test/cat:v1"), cluster)
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `ctr run --rm` of `image` with `args`, retried while containerd reconnects to a restarted
/// snapshotter.
async fn run(ctd: &Containerd, image: &str, id: &str, args: &[&str]) -> Output {
    let id = unique(id);
    let mut cmd = vec!["run", "--rm", "--snapshotter", "shoal", image, &id];
    cmd.extend_from_slice(args);
    let start = std::time::Instant::now();
    loop {
        let out = ctd.run(&cmd).await;
        if out.status.success()
            || !text(&out).to_lowercase().contains("unavailable")
            || start.elapsed() > Duration::from_secs(20)
        {
            return out;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// A container id no other test's uses: runc keeps its containers in one directory for every
/// containerd (`/run/containerd/runc/<namespace>`).
fn unique(id: &str) -> String {
    format!("{id}-{}", hex::encode(shoal_integration::random_bytes(4)))
}

/// A container of the `cat` image reads the upper layer's file and the lower layer's kept one,
/// and not the one the upper layer's whiteout deletes (containers `<id>-1`, `<id>-2`).
async fn assert_image_runs(ctd: &Containerd, reference: &str, id: &str) {
    let args = ["/bin/cat", "/hello.txt", "/etc/kept.txt"];
    let out = run(ctd, reference, &format!("{id}-1"), &args).await;
    assert!(out.status.success(), "run: {}", text(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hello from the shoal snapshotter\nkept\n"
    );
    let out = run(
        ctd,
        reference,
        &format!("{id}-2"),
        &["/bin/cat", "/etc/gone.txt"],
    )
    .await;
    assert!(
        !out.status.success(),
        "a whited-out file was read: {}",
        text(&out)
    );
    assert!(text(&out).contains("No such file"), "{}", text(&out));
}

#[tokio::test(flavor = "multi_thread")]
async fn ctr_pulls_and_runs_an_image_on_the_shoal_snapshotter() {
    let dir = tempfile::tempdir().unwrap();
    let registry = TestRegistry::start(&dir.path().join("registry"), &Access::Anonymous)
        .await
        .unwrap();
    let image = image_with_cat(dir.path());
    image
        .push(&registry.url(), "test/cat", "v1", None)
        .await
        .unwrap();
    let reference = format!(
        "{}/test/cat:v1",
        registry.url().trim_start_matches("http://")
    );

    let (root, socket) = (
        dir.path().join("snaps"),
        dir.path().join("snapshotter.sock"),
    );
    let log = dir.path().join("snapshotter.log");
    let mut child = snapshotter(&root, &socket, &log, "none");
    wait_until(Duration::from_secs(20), "snapshotter socket", || {
        socket.exists()
    })
    .await;
    let ctd = Containerd::start_with(
        &dir.path().join("containerd"),
        &format!(
            "[proxy_plugins.shoal]\n  type = \"snapshot\"\n  address = {:?}\n",
            socket
        ),
    )
    .await;
    let plugins = ctd.run(&["plugins", "ls"]).await;
    assert!(
        text(&plugins).contains("io.containerd.snapshotter.v1    shoal"),
        "{}",
        text(&plugins)
    );

    let pull = ctd
        .run(&[
            "images",
            "pull",
            "--plain-http",
            "--snapshotter",
            "shoal",
            &reference,
        ])
        .await;
    assert!(pull.status.success(), "pull: {}", text(&pull));

    assert_image_runs(&ctd, &reference, "c").await;

    // Both layers are committed snapshots of ours, their files in our root.
    let layers = std::fs::read_dir(root.join("snapshots")).unwrap().count();
    assert!(layers >= 2, "{layers} snapshot directories");

    // Restarted, the snapshotter still has every snapshot: the image runs again.
    child.kill9();
    let mut _child = snapshotter(&root, &socket, &dir.path().join("snapshotter2.log"), "none");
    let out = run(&ctd, &reference, "c3", &["/bin/cat", "/hello.txt"]).await;
    assert!(out.status.success(), "run after a restart: {}", text(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hello from the shoal snapshotter\n"
    );
}

/// The two layers' digests, and their chain ids (uncompressed layers: the diff ids are the
/// digests).
fn digests_and_chain_ids(image: &Image) -> (Vec<String>, String, String) {
    let digests: Vec<String> = image
        .layers
        .iter()
        .map(|l| shoal_integration::sha256(l))
        .collect();
    let chain0 = digests[0].clone();
    let chain1 = shoal_integration::sha256(format!("{chain0} {}", digests[1]).as_bytes());
    (digests, chain0, chain1)
}

/// The lease [`cri_prepare`]s are made under, as CRI's pulls are: what containerd's garbage
/// collector must not remove while the image is not recorded yet.
const LEASE: &str = "shoal-test-pull";

/// A client of containerd's Snapshots API on its socket, as `shoal pull` and CRI drive it (the
/// [`LEASE`] made).
async fn snapshots_client(
    ctd: &Containerd,
) -> shoal_snapshotter::proto::snapshots::snapshots_client::SnapshotsClient<tonic::transport::Channel>
{
    let lease = ctd.run(&["leases", "create", "--id", LEASE]).await;
    assert!(lease.status.success(), "{}", text(&lease));
    let channel = shoal_snapshotter::client::connect(&ctd.socket)
        .await
        .unwrap();
    shoal_snapshotter::proto::snapshots::snapshots_client::SnapshotsClient::new(channel)
}

/// A Prepare as CRI sends it for one layer (in containerd's `default` namespace).
fn cri_prepare(
    key: &str,
    parent: &str,
    chain_id: &str,
    layer: &str,
    image: &str,
    layers: &[String],
) -> tonic::Request<shoal_snapshotter::proto::snapshots::PrepareSnapshotRequest> {
    let labels = [
        ("containerd.io/snapshot.ref", chain_id.to_owned()),
        ("containerd.io/snapshot/cri.layer-digest", layer.to_owned()),
        ("containerd.io/snapshot/cri.image-ref", image.to_owned()),
        ("containerd.io/snapshot/cri.image-layers", layers.join(",")),
    ];
    let mut req = tonic::Request::new(
        shoal_snapshotter::proto::snapshots::PrepareSnapshotRequest {
            snapshotter: "shoal".into(),
            key: key.into(),
            parent: parent.into(),
            labels: labels.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
        },
    );
    req.metadata_mut()
        .insert("containerd-namespace", "default".parse().unwrap());
    req.metadata_mut()
        .insert("containerd-lease", LEASE.parse().unwrap());
    req
}

/// A registry holding the `cat` image, a node whose mirror maps its host, `shoal snapshotter`
/// reading through that mirror, and containerd with it as `proxy_plugins.shoal`.
struct Remote {
    /// First: dropped before the directory goes.
    _mounts: shoal_integration::runtimes::UnmountOnDrop,
    dir: tempfile::TempDir,
    image: Image,
    reference: String,
    cluster: shoal_integration::cluster::Cluster,
    _registry: TestRegistry,
    _snapshotter: ChildGuard,
    ctd: Containerd,
}

impl Remote {
    async fn start() -> Remote {
        Remote::start_with(true).await
    }

    /// With `remote` false the snapshotter reads no layer itself (`--mirror none`).
    async fn start_with(remote: bool) -> Remote {
        let dir = tempfile::tempdir().unwrap();
        let image = image_with_cat(dir.path());
        Remote::start_in(dir, image, remote, |b| b).await
    }

    /// With `image` as `test/cat:v1`, the cluster as `configure` makes it.
    async fn start_in(
        dir: tempfile::TempDir,
        image: Image,
        remote: bool,
        configure: fn(ClusterBuilder) -> ClusterBuilder,
    ) -> Remote {
        let (registry, image, reference, cluster) =
            registry_and_node_with(dir.path(), image, configure).await;
        let socket = dir.path().join("snapshotter.sock");
        let mirror = match remote {
            true => format!("http://127.0.0.1:{}", cluster.daemons[0].proxy_port),
            false => "none".to_owned(),
        };
        let log = dir.path().join("snapshotter.log");
        let snapshotter = snapshotter(&dir.path().join("snaps"), &socket, &log, &mirror);
        wait_until(Duration::from_secs(20), "snapshotter socket", || {
            socket.exists()
        })
        .await;
        let ctd = Containerd::start_with(
            &dir.path().join("containerd"),
            &format!("[proxy_plugins.shoal]\n  type = \"snapshot\"\n  address = {socket:?}\n"),
        )
        .await;
        Remote {
            _mounts: shoal_integration::runtimes::UnmountOnDrop(dir.path().to_owned()),
            dir,
            image,
            reference,
            cluster,
            _registry: registry,
            _snapshotter: snapshotter,
            ctd,
        }
    }

    async fn through_node(&self) -> u64 {
        through_node(&self.cluster.daemons[0]).await
    }

    fn layer_bytes(&self) -> u64 {
        self.image.layers.iter().map(|l| l.len() as u64).sum()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn layers_prepared_with_cri_labels_come_from_the_node_and_containerd_fetches_nothing() {
    let remote = Remote::start().await;
    let (dir, image, reference, ctd) = (&remote.dir, &remote.image, &remote.reference, &remote.ctd);

    let (digests, chain0, chain1) = digests_and_chain_ids(image);
    let mut client = snapshots_client(ctd).await;
    for (i, (parent, chain)) in [("", &chain0), (chain0.as_str(), &chain1)]
        .into_iter()
        .enumerate()
    {
        let req = cri_prepare(
            &format!("extract-{i} {chain}"),
            parent,
            chain,
            &digests[i],
            reference,
            &digests,
        );
        let status = client
            .prepare(req)
            .await
            .expect_err("the layer is prepared remotely");
        assert_eq!(
            status.code(),
            tonic::Code::AlreadyExists,
            "layer {i}: {status:?}\n{}",
            std::fs::read_to_string(dir.path().join("snapshotter.log")).unwrap_or_default()
        );
    }
    // containerd recorded both as committed (it asked our List and Stat).
    let ls = ctd
        .run(&["snapshots", "--snapshotter", "shoal", "ls"])
        .await;
    for chain in [&chain0, &chain1] {
        assert!(text(&ls).contains(chain.as_str()), "{}", text(&ls));
    }
    // Mounted as a container's root, they are the image's files, the whiteout honoured.
    let prepared = ctd
        .run(&[
            "snapshots",
            "--snapshotter",
            "shoal",
            "prepare",
            "c1",
            &chain1,
        ])
        .await;
    assert!(
        prepared.status.success(),
        "{}\n{}",
        text(&prepared),
        std::fs::read_to_string(dir.path().join("snapshotter.log")).unwrap_or_default()
    );
    let mnt = dir.path().join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let mounts = ctd
        .run(&[
            "snapshots",
            "--snapshotter",
            "shoal",
            "mounts",
            mnt.to_str().unwrap(),
            "c1",
        ])
        .await;
    let mount = Command::new("sh")
        .arg("-c")
        .arg(String::from_utf8_lossy(&mounts.stdout).trim())
        .output()
        .unwrap();
    assert!(
        mount.status.success(),
        "{}: {}",
        text(&mounts),
        text(&mount)
    );
    let hello = std::fs::read_to_string(mnt.join("hello.txt"));
    let gone = mnt.join("etc/gone.txt").exists();
    let kept = std::fs::read_to_string(mnt.join("etc/kept.txt"));
    let cat_runs = mnt.join("bin/cat").exists();
    let _ = Command::new("umount").arg(&mnt).status();
    assert_eq!(hello.unwrap(), "hello from the shoal snapshotter\n");
    assert_eq!(kept.unwrap(), "kept\n");
    assert!(!gone, "a whited-out file shows");
    assert!(cat_runs);
    // Every byte came through the node (from the registry, once): containerd fetched nothing.
    assert_eq!(remote.through_node().await, remote.layer_bytes());

    // A chain id the layer's bytes do not make is not believed: the layer is not committed
    // under it, and containerd gets mounts (its own path) instead.
    let forged = format!("sha256:{}", "f".repeat(64));
    let req = cri_prepare("extract-f", "", &forged, &digests[0], reference, &[]);
    let resp = client.prepare(req).await.expect("the plain path");
    assert!(!resp.into_inner().mounts.is_empty());
    let log = std::fs::read_to_string(dir.path().join("snapshotter.log")).unwrap();
    assert!(log.contains("not sha256:ffff"), "{log}");

    // A layer the node cannot serve (a registry nobody runs) is left to containerd: the
    // snapshotter answers with mounts, as the plain path does.
    let missing = format!("sha256:{}", "0".repeat(64));
    let req = cri_prepare(
        "extract-x",
        "",
        "sha256:nowhere",
        &missing,
        "127.0.0.1:1/test/cat:v1",
        &[],
    );
    let resp = client
        .prepare(req)
        .await
        .expect("falls back to the plain path");
    assert!(!resp.into_inner().mounts.is_empty());
    let log = std::fs::read_to_string(dir.path().join("snapshotter.log")).unwrap();
    assert!(log.contains("containerd fetches it itself"), "{log}");
}

/// `shoal pull` of the `cat` image into `remote`'s containerd.
async fn shoal_pull(remote: &Remote) -> Output {
    pull_through(
        &remote.cluster.daemons[0],
        &remote.ctd,
        &remote.dir.path().join("snapshotter.sock"),
        &remote.reference,
    )
    .await
}

/// `shoal pull` of `reference` through `node` into `ctd`, whose snapshotter is at `socket`.
async fn pull_through(
    node: &shoal_integration::cluster::Node,
    ctd: &Containerd,
    socket: &Path,
    reference: &str,
) -> Output {
    let mut cmd = shoal();
    cmd.arg("pull")
        .arg(reference)
        .arg("--address")
        .arg(&ctd.socket)
        .arg("--mirror")
        .arg(format!("http://127.0.0.1:{}", node.proxy_port))
        .arg("--data-dir")
        .arg(node.data_dir.join("store"))
        .arg("--snapshotter-socket")
        .arg(socket);
    shoal_integration::process::run(cmd).await
}

#[tokio::test(flavor = "multi_thread")]
async fn layers_the_snapshotter_cannot_read_are_unpacked_by_shoal_pull_itself() {
    let remote = Remote::start_with(false).await;
    // Pulled before onto containerd's own snapshotter: the config is in the content store.
    let before = remote
        .ctd
        .run(&["images", "pull", "--plain-http", &remote.reference])
        .await;
    assert!(before.status.success(), "{}", text(&before));
    let out = shoal_pull(&remote).await;
    assert!(out.status.success(), "shoal pull: {}", text(&out));
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(said.matches("unpacked here").count(), 2, "{said}");
    // The config already there now also holds the shoal snapshots (or GC would take them).
    let content = remote.ctd.run(&["content", "ls"]).await;
    let config = shoal_integration::sha256(&remote.image.config);
    let line = text(&content)
        .lines()
        .find(|l| l.starts_with(&config))
        .unwrap_or_default()
        .to_owned();
    assert!(
        line.contains("containerd.io/gc.ref.snapshot.shoal="),
        "{}",
        text(&content)
    );
    assert_image_runs(&remote.ctd, &remote.reference, "c").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn shoal_pull_makes_a_runnable_image_from_the_swarm() {
    let remote = Remote::start().await;
    let node = &remote.cluster.daemons[0];
    let out = shoal_pull(&remote).await;
    assert!(out.status.success(), "shoal pull: {}", text(&out));
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(said.matches("from the swarm").count(), 2, "{said}");
    // One summary line: layers, size, time, rate, and the node's bytes by source.
    let summary = said.lines().last().unwrap_or_default();
    assert!(
        summary.contains(" layers, ") && summary.contains("/s); origin "),
        "{said}"
    );
    let images = remote.ctd.run(&["images", "ls", "-q"]).await;
    assert!(
        text(&images).contains(&remote.reference),
        "{}",
        text(&images)
    );

    assert_image_runs(&remote.ctd, &remote.reference, "c").await;
    // containerd fetched no layer: every byte (layers and config) came through the node.
    let blobs = remote.layer_bytes() + remote.image.config.len() as u64;
    assert_eq!(remote.through_node().await, blobs);
    let cached = node
        .metric("shoal_download_bytes_total{source=\"cache\"}")
        .await;
    assert_eq!(cached, 0, "a layer was read twice");
    // Pulling again changes nothing and fetches nothing.
    let mut again = shoal();
    again
        .arg("pull")
        .arg(&remote.reference)
        .arg("--address")
        .arg(&remote.ctd.socket)
        .arg("--mirror")
        .arg(format!("http://127.0.0.1:{}", node.proxy_port));
    let out = shoal_integration::process::run(again).await;
    assert!(out.status.success(), "again: {}", text(&out));
    assert_eq!(remote.through_node().await, blobs);
}

#[tokio::test(flavor = "multi_thread")]
async fn shoal_install_wires_containerd_to_the_node_once_and_uninstall_restores_it() {
    let dir = tempfile::tempdir().unwrap();
    let (_registry, image, reference, cluster) = registry_and_node(dir.path()).await;
    let mirror = format!("http://127.0.0.1:{}", cluster.daemons[0].proxy_port);

    let ctd_dir = dir.path().join("containerd");
    std::fs::create_dir_all(&ctd_dir).unwrap();
    let config = ctd_dir.join("config.toml");
    let original = Containerd::config(&ctd_dir);
    std::fs::write(&config, &original).unwrap();
    let node_dir = dir.path().join("node");
    let install = |extra: &[&str]| {
        let mut cmd = shoal();
        cmd.args(["install", "containerd", "--config"])
            .arg(&config)
            .arg("--data-dir")
            .arg(&node_dir)
            .args(["--mirror", &mirror])
            .args(extra);
        cmd
    };
    let out = shoal_integration::process::run(install(&["--dry-run"])).await;
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        std::fs::read_to_string(&config).unwrap(),
        original,
        "a dry run writes nothing"
    );
    let out = shoal_integration::process::run(install(&[])).await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("+[proxy_plugins.shoal]"),
        "{}",
        text(&out)
    );
    let again = shoal_integration::process::run(install(&[])).await;
    assert!(
        text(&again).contains("nothing to change"),
        "{}",
        text(&again)
    );

    // containerd, started with the written config, pulls through the node's mirror onto the
    // shoal snapshotter, and runs the image.
    let socket = node_dir.join("snapshotter.sock");
    let log = dir.path().join("s.log");
    let _snapshotter = snapshotter(&node_dir.join("snapshotter"), &socket, &log, "none");
    wait_until(Duration::from_secs(20), "snapshotter socket", || {
        socket.exists()
    })
    .await;
    let ctd = Containerd::start_config(&ctd_dir, &config).await;
    let hosts_dir = ctd_dir.join("certs.d");
    let pull = ctd
        .run(&[
            "images",
            "pull",
            "--hosts-dir",
            hosts_dir.to_str().unwrap(),
            "--snapshotter",
            "shoal",
            &reference,
        ])
        .await;
    assert!(pull.status.success(), "pull: {}", text(&pull));
    let out = run(&ctd, &reference, "c1", &["/bin/cat", "/hello.txt"]).await;
    assert!(out.status.success(), "run: {}", text(&out));
    let node = &cluster.daemons[0];
    let through_node = through_node(node).await;
    let layers: usize = image.layers.iter().map(|l| l.len()).sum();
    assert!(
        through_node >= layers as u64,
        "{through_node} bytes through the node"
    );
    drop(ctd);

    let out = shoal_integration::process::run(install(&["--uninstall"])).await;
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(std::fs::read_to_string(&config).unwrap(), original);
    assert!(!hosts_dir.join("_default/hosts.toml").exists());
}

/// A containerd under `dir` with its CRI plugin on, configured as `shoal install` would:
/// snapshotter `shoal` at `socket`, snapshot labels on, `host`'s registry from certs.d (plain
/// HTTP).
async fn cri_containerd(dir: &Path, host: &str, socket: &Path) -> Containerd {
    let certs = dir.join("certs.d").join(host);
    std::fs::create_dir_all(&certs).unwrap();
    std::fs::write(
        certs.join("hosts.toml"),
        format!("server = \"http://{host}\"\n[host.\"http://{host}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"),
    )
    .unwrap();
    let config = Containerd::config(dir)
        .replace("disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n", "")
        + &format!(
            "[proxy_plugins.shoal]\n  type = \"snapshot\"\n  address = {socket:?}\n\
         [plugins.\"io.containerd.grpc.v1.cri\".containerd]\n  snapshotter = \"shoal\"\n  \
         disable_snapshot_annotations = false\n\
         [plugins.\"io.containerd.grpc.v1.cri\".registry]\n  config_path = {:?}\n",
            dir.join("certs.d")
        );
    std::fs::write(dir.join("config.toml"), config).unwrap();
    Containerd::start_config(dir, &dir.join("config.toml")).await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_kubelet_pull_over_cri_takes_the_remote_path() {
    use shoal_snapshotter::proto::runtime::v1::image_service_client::ImageServiceClient;
    use shoal_snapshotter::proto::runtime::v1::{ImageSpec, PullImageRequest};
    // The snapshotter of `Remote`, and a second containerd with its CRI plugin on, configured
    // as `shoal install` would: snapshotter `shoal`, snapshot labels on, hosts from certs.d.
    let remote = Remote::start().await;
    let host = remote.reference.split('/').next().unwrap().to_owned();
    let socket = remote.dir.path().join("snapshotter.sock");
    let ctd = cri_containerd(&remote.dir.path().join("cri"), &host, &socket).await;

    let channel = shoal_snapshotter::client::connect(&ctd.socket)
        .await
        .unwrap();
    let mut cri = ImageServiceClient::new(channel);
    let pulled = cri
        .pull_image(PullImageRequest {
            image: Some(ImageSpec {
                image: remote.reference.clone(),
                annotations: Default::default(),
            }),
            auth: None,
        })
        .await
        .unwrap_or_else(|s| panic!("CRI PullImage: {s:?}"));
    assert!(pulled.into_inner().image_ref.starts_with("sha256:"));
    // The layers came through the node; the snapshotter committed them from the swarm.
    assert_eq!(remote.through_node().await, remote.layer_bytes());
    let log = std::fs::read_to_string(remote.dir.path().join("snapshotter.log")).unwrap();
    assert!(!log.contains("containerd fetches it itself"), "{log}");
    // And a container of it runs (in CRI's namespace).
    let mut args = vec!["-n", "k8s.io", "run", "--rm", "--snapshotter", "shoal"];
    let id = unique("c1");
    args.extend([remote.reference.as_str(), &id, "/bin/cat", "/hello.txt"]);
    let out = ctd.run(&args).await;
    assert!(out.status.success(), "run: {}", text(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hello from the shoal snapshotter\n"
    );
}

/// Bytes `node` got for its clients, from every source but its cache.
async fn through_node(node: &shoal_integration::cluster::Node) -> u64 {
    let mut total = 0;
    for source in ["origin", "seed", "peer"] {
        total += node
            .metric(&format!(
                "shoal_download_bytes_total{{source=\"{source}\"}}"
            ))
            .await;
    }
    total
}
