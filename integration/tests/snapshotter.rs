//! `shoal snapshotter` behind a real containerd 1.6 (`proxy_plugins`), with runc: images pulled
//! with `ctr --snapshotter shoal` run as with containerd's own overlayfs.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use shoal_integration::process::{ChildGuard, shoal, wait_until};
use shoal_integration::registry::{Access, Image, TestRegistry, tar_dir};
use shoal_integration::runtimes::Containerd;

/// Layer 0: `/bin/cat` with the libraries it loads, `/etc/kept.txt` and `/etc/gone.txt`.
/// Layer 1: `/hello.txt`, and a whiteout deleting `/etc/gone.txt`.
fn image_with_cat(dir: &Path) -> Image {
    let base = dir.join("layer0");
    let mut files = vec!["/bin/cat".to_owned()];
    let ldd = Command::new("ldd").arg("/bin/cat").output().unwrap();
    for line in String::from_utf8_lossy(&ldd.stdout).lines() {
        // `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)` or `/lib64/ld-linux….so.2 (0x…)`
        if let Some(path) = line.split_whitespace().find(|w| w.starts_with('/')) {
            files.push(path.to_owned());
        }
    }
    for file in &files {
        let to = base.join(file.trim_start_matches('/'));
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(file, &to).unwrap();
    }
    std::fs::create_dir_all(base.join("etc")).unwrap();
    std::fs::write(base.join("etc/kept.txt"), "kept\n").unwrap();
    std::fs::write(base.join("etc/gone.txt"), "should be gone\n").unwrap();
    let top = dir.join("layer1");
    std::fs::create_dir_all(top.join("etc")).unwrap();
    std::fs::write(top.join("hello.txt"), "hello from the shoal snapshotter\n").unwrap();
    std::fs::write(top.join("etc/.wh.gone.txt"), "").unwrap();
    Image::of_layers(vec![tar_dir(&base).unwrap(), tar_dir(&top).unwrap()])
}

fn snapshotter(root: &Path, socket: &Path, log: &Path) -> ChildGuard {
    let mut cmd = shoal();
    cmd.arg("snapshotter")
        .arg("--root")
        .arg(root)
        .arg("--socket")
        .arg(socket)
        .arg("--metrics-addr")
        .arg("127.0.0.1:0")
        .stderr(std::fs::File::create(log).unwrap());
    ChildGuard::spawn(cmd)
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
    let mut cmd = vec!["run", "--rm", "--snapshotter", "shoal", image, id];
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

#[tokio::test(flavor = "multi_thread")]
async fn ctr_pulls_and_runs_an_image_on_the_shoal_snapshotter() {
    let dir = tempfile::tempdir().unwrap();
    let registry = TestRegistry::start(&dir.path().join("registry"), &Access::Anonymous)
        .await
        .unwrap();
    let image = image_with_cat(dir.path());
    image.push(&registry.url(), "test/cat", "v1", None).await.unwrap();
    let reference = format!("{}/test/cat:v1", registry.url().trim_start_matches("http://"));

    let (root, socket) = (dir.path().join("snaps"), dir.path().join("snapshotter.sock"));
    let log = dir.path().join("snapshotter.log");
    let mut child = snapshotter(&root, &socket, &log);
    wait_until(Duration::from_secs(20), "snapshotter socket", || socket.exists()).await;
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
        .run(&["images", "pull", "--plain-http", "--snapshotter", "shoal", &reference])
        .await;
    assert!(pull.status.success(), "pull: {}", text(&pull));

    let out = run(&ctd, &reference, "c1", &["/bin/cat", "/hello.txt", "/etc/kept.txt"]).await;
    assert!(out.status.success(), "run: {}", text(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hello from the shoal snapshotter\nkept\n"
    );
    // The upper layer's whiteout hides the lower layer's file.
    let out = run(&ctd, &reference, "c2", &["/bin/cat", "/etc/gone.txt"]).await;
    assert!(!out.status.success(), "a whited-out file was read: {}", text(&out));
    assert!(text(&out).contains("No such file"), "{}", text(&out));

    // Both layers are committed snapshots of ours, their files in our root.
    let layers = std::fs::read_dir(root.join("snapshots")).unwrap().count();
    assert!(layers >= 2, "{layers} snapshot directories");

    // Restarted, the snapshotter still has every snapshot: the image runs again.
    child.kill9();
    let mut _child = snapshotter(&root, &socket, &dir.path().join("snapshotter2.log"));
    let out = run(&ctd, &reference, "c3", &["/bin/cat", "/hello.txt"]).await;
    assert!(out.status.success(), "run after a restart: {}", text(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hello from the shoal snapshotter\n"
    );
}
