//! Real container runtimes for tests: containerd 1.6 driven by `ctr`, and skopeo.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use crate::process::{ChildGuard, wait_until};

/// A containerd with its own root, state and socket under a directory (CRI off), as root.
pub struct Containerd {
    pub dir: PathBuf,
    pub socket: PathBuf,
    _child: ChildGuard,
}

impl Containerd {
    pub async fn start(dir: &Path) -> Containerd {
        std::fs::create_dir_all(dir).expect("containerd dir");
        let socket = dir.join("containerd.sock");
        let config = dir.join("config.toml");
        std::fs::write(
            &config,
            format!(
                "version = 2\nroot = {:?}\nstate = {:?}\n\
                 disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
                 [grpc]\n  address = {:?}\n",
                dir.join("root"),
                dir.join("state"),
                socket
            ),
        )
        .expect("containerd config");
        let mut cmd = Command::new("containerd");
        cmd.arg("--config")
            .arg(&config)
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.join("containerd.log")).expect("log"));
        let child = ChildGuard::spawn(cmd);
        let s = socket.clone();
        wait_until(Duration::from_secs(20), "containerd socket", || {
            std::os::unix::net::UnixStream::connect(&s).is_ok()
        })
        .await;
        Containerd {
            dir: dir.to_owned(),
            socket,
            _child: child,
        }
    }

    /// `ctr --address <socket> <args>`.
    pub fn ctr(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("ctr");
        cmd.arg("--address").arg(&self.socket).args(args);
        cmd
    }

    /// Runs `ctr` off the async threads.
    pub async fn run(&self, args: &[&str]) -> Output {
        crate::process::run(self.ctr(args)).await
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        // Unpacked layers are overlay mounts under the root: release them with the process.
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        let root = self.dir.to_string_lossy().into_owned();
        let mut points: Vec<&str> = mounts
            .lines()
            .filter_map(|l| l.split(' ').nth(1))
            .filter(|p| p.starts_with(&root))
            .collect();
        points.sort_unstable_by(|a, b| b.cmp(a));
        for p in points {
            let _ = Command::new("umount").arg("-l").arg(p).status();
        }
    }
}

/// A `hosts.toml` directory entry: containerd sends requests for `registry` to `mirror` first
/// (`registry` = `_default` for the catch-all).
pub fn hosts_toml(hosts_dir: &Path, registry: &str, server: Option<&str>, mirror: &str) {
    let dir = hosts_dir.join(registry);
    std::fs::create_dir_all(&dir).expect("hosts dir");
    let server = server
        .map(|s| format!("server = {s:?}\n"))
        .unwrap_or_default();
    std::fs::write(
        dir.join("hosts.toml"),
        format!("{server}\n[host.{mirror:?}]\n  capabilities = [\"pull\", \"resolve\"]\n"),
    )
    .expect("hosts.toml");
}
