//! Real container runtimes for tests: containerd 1.6 driven by `ctr`, and dockerd 20.10.

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
        Containerd::start_with(dir, "").await
    }

    /// [`start`](Self::start) with more of containerd's config (TOML appended to it:
    /// `[proxy_plugins.…]`, say).
    pub async fn start_with(dir: &Path, extra: &str) -> Containerd {
        let (dir, extra) = (dir.to_owned(), extra.to_owned());
        tokio::task::spawn_blocking(move || Containerd::spawn_with(&dir, &extra))
            .await
            .expect("join")
            .expect("containerd starts")
    }

    /// [`start`](Self::start) for synchronous callers (the lab).
    pub fn spawn(dir: &Path) -> anyhow::Result<Containerd> {
        Containerd::spawn_with(dir, "")
    }

    /// [`spawn`](Self::spawn) with more of containerd's config, as [`start_with`](Self::start_with).
    pub fn spawn_with(dir: &Path, extra: &str) -> anyhow::Result<Containerd> {
        std::fs::create_dir_all(dir)?;
        let config = dir.join("config.toml");
        std::fs::write(&config, Containerd::config(dir) + extra)?;
        Containerd::spawn_config(dir, &config)
    }

    /// The config [`start`](Self::start) writes: root, state and socket under `dir`, CRI off.
    pub fn config(dir: &Path) -> String {
        format!(
            "version = 2\nroot = {:?}\nstate = {:?}\n\
             disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
             [grpc]\n  address = {:?}\n",
            dir.join("root"),
            dir.join("state"),
            dir.join("containerd.sock"),
        )
    }

    /// containerd with the config file `config` (made from [`config`](Self::config) of `dir`).
    pub async fn start_config(dir: &Path, config: &Path) -> Containerd {
        let (dir, config) = (dir.to_owned(), config.to_owned());
        tokio::task::spawn_blocking(move || Containerd::spawn_config(&dir, &config))
            .await
            .expect("join")
            .expect("containerd starts")
    }

    fn spawn_config(dir: &Path, config: &Path) -> anyhow::Result<Containerd> {
        let socket = dir.join("containerd.sock");
        let mut cmd = Command::new("containerd");
        cmd.arg("--config")
            .arg(config)
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.join("containerd.log"))?);
        let child = ChildGuard::spawn(cmd);
        let start = std::time::Instant::now();
        while std::os::unix::net::UnixStream::connect(&socket).is_err() {
            anyhow::ensure!(
                start.elapsed() < Duration::from_secs(20),
                "containerd did not listen on {} (is it installed? scripts/setup.sh)",
                socket.display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Containerd {
            dir: dir.to_owned(),
            socket,
            _child: child,
        })
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
        unmount_under(&self.dir);
    }
}

/// Detaches whatever is mounted under its directory when dropped (a killed snapshotter's FUSE
/// mounts stay, dead, until they are).
pub struct UnmountOnDrop(pub PathBuf);

impl Drop for UnmountOnDrop {
    fn drop(&mut self) {
        unmount_under(&self.0);
    }
}

/// Unmounts whatever a runtime left mounted under `dir` (deepest first).
fn unmount_under(dir: &Path) {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let root = dir.to_string_lossy().into_owned();
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

/// dockerd 20.10 with its data, exec root and socket under a directory (no iptables, no
/// bridge, the vfs storage driver), as root. It starts its own containerd. It runs in a private
/// mount namespace where `/etc/docker` and `/run/docker` are directories of the test, so it
/// neither writes the host's (`key.json`, plugins) nor reads its `certs.d`.
pub struct Dockerd {
    pub dir: PathBuf,
    pub socket: PathBuf,
    child: Option<ChildGuard>,
}

impl Dockerd {
    /// Starts dockerd with extra `args` and environment (`HTTPS_PROXY`, ...).
    pub async fn start(dir: &Path, args: &[String], env: &[(&str, String)]) -> Dockerd {
        for sub in ["cli", "etc-docker/certs.d", "run-docker"] {
            std::fs::create_dir_all(dir.join(sub)).expect("dockerd dir");
        }
        for mount_point in ["/etc/docker", "/run/docker"] {
            std::fs::create_dir_all(mount_point).expect("mount point");
        }
        let socket = dir.join("docker.sock");
        let mut cmd = Command::new("unshare");
        cmd.args(["--mount", "--propagation", "private", "sh", "-c"])
            .arg(
                "mount --bind \"$1\" /etc/docker && mount --bind \"$2\" /run/docker && shift 2 && exec dockerd \"$@\"",
            )
            .arg("sh")
            .arg(dir.join("etc-docker"))
            .arg(dir.join("run-docker"))
            .arg("--data-root")
            .arg(dir.join("data"))
            .arg("--exec-root")
            .arg(dir.join("exec"))
            .arg("--pidfile")
            .arg(dir.join("docker.pid"))
            .arg("-H")
            .arg(format!("unix://{}", socket.display()))
            .args([
                "--iptables=false",
                "--ip6tables=false",
                "--bridge=none",
                "--storage-driver=vfs",
            ])
            .args(args)
            .env_remove("HTTP_PROXY")
            .env_remove("HTTPS_PROXY")
            .env_remove("NO_PROXY")
            .env_remove("no_proxy")
            .envs(env.iter().map(|(k, v)| (*k, v)))
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.join("dockerd.log")).expect("log"));
        let child = ChildGuard::spawn(cmd);
        let s = socket.clone();
        wait_until(Duration::from_secs(30), "dockerd socket", || {
            std::os::unix::net::UnixStream::connect(&s).is_ok()
        })
        .await;
        Dockerd {
            dir: dir.to_owned(),
            socket,
            child: Some(child),
        }
    }

    /// The docker CLI of the same release (`/usr/bin/docker`), talking to this daemon, with its
    /// config (`config.json`: registry credentials) in `<dir>/cli`.
    pub fn docker(&self, args: &[&str]) -> Command {
        let bin = if Path::new("/usr/bin/docker").exists() {
            "/usr/bin/docker"
        } else {
            "docker"
        };
        let mut cmd = Command::new(bin);
        cmd.env("DOCKER_CONFIG", self.dir.join("cli"))
            .arg("-H")
            .arg(format!("unix://{}", self.socket.display()))
            .args(args);
        cmd
    }

    /// dockerd trusts the CA in `ca` (a PEM file) for `registry` (`host:port`): its
    /// `/etc/docker/certs.d/<registry>/ca.crt`.
    pub fn trust(&self, registry: &str, ca: &Path) {
        let d = self.dir.join("etc-docker/certs.d").join(registry);
        std::fs::create_dir_all(&d).expect("certs.d");
        std::fs::copy(ca, d.join("ca.crt")).expect("copy CA");
    }

    /// Credentials the CLI hands dockerd for `registry` (`host:port`).
    pub fn login(&self, registry: &str, basic_base64: &str) {
        std::fs::write(
            self.dir.join("cli/config.json"),
            serde_json::json!({"auths": {registry: {"auth": basic_base64}}}).to_string(),
        )
        .expect("docker config");
    }

    pub async fn run(&self, args: &[&str]) -> Output {
        crate::process::run(self.docker(args)).await
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        // SIGTERM, so dockerd stops the containerd it started; SIGKILL after 10 s.
        if let Some(mut child) = self.child.take() {
            let _ = nix::sys::signal::kill(child.pid(), nix::sys::signal::Signal::SIGTERM);
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while std::time::Instant::now() < deadline {
                if matches!(child.child.try_wait(), Ok(Some(_))) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        unmount_under(&self.dir);
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
