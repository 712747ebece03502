//! The real `shoal` binary as a child process.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The `shoal` binary of this workspace's build (`cargo build --bin shoal` makes it; the test
/// command in the README does so before running the tests).
pub fn shoal_bin() -> PathBuf {
    let bin = shoal_bin_path();
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build --bin shoal` first (the README's test command does)",
        bin.display()
    );
    bin
}

/// Where the `shoal` binary of this build profile is (it may not be built yet).
pub fn shoal_bin_path() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    target.join(profile).join("shoal")
}

/// A `shoal` command with a clean environment for logs.
pub fn shoal() -> Command {
    let mut cmd = Command::new(shoal_bin());
    cmd.env_remove("SHOAL_DATA_DIR").env("SHOAL_LOG", "info");
    cmd
}

/// `shoal get -q url -O out` through the daemon (or standalone store) in `data_dir`.
pub fn get(data_dir: &Path, url: &str, out: &Path) -> Command {
    let mut cmd = shoal();
    cmd.arg("get")
        .arg(url)
        .arg("-O")
        .arg(out)
        .arg("--data-dir")
        .arg(data_dir)
        .arg("-q");
    cmd
}

/// `shoal up` with its data in `data_dir`, `/metrics` on `metrics_port` and every other port
/// free (the mirror's chosen by the system).
pub fn up(data_dir: &Path, metrics_port: u16) -> Command {
    let port = || crate::cluster::free_port();
    let mut cmd = shoal();
    cmd.arg("up")
        .arg("--data-dir")
        .arg(data_dir)
        .arg("--metrics-addr")
        .arg(format!("127.0.0.1:{metrics_port}"))
        .arg("--proxy-listen")
        .arg("127.0.0.1:0")
        .arg("--upload-addr")
        .arg(format!("127.0.0.1:{}", port()))
        .arg("--scheduler-listen")
        .arg(format!("127.0.0.1:{}", port()))
        .arg("--http-listen")
        .arg(format!("127.0.0.1:{}", port()));
    cmd
}

/// Runs a command to completion off the async threads.
pub async fn run(mut cmd: Command) -> Output {
    tokio::task::spawn_blocking(move || cmd.output().expect("shoal runs"))
        .await
        .expect("join")
}

/// A child process killed by pid (SIGKILL) when dropped.
pub struct ChildGuard {
    pub child: Child,
}

impl ChildGuard {
    pub fn spawn(mut cmd: Command) -> Self {
        let child = cmd.stdin(Stdio::null()).spawn().expect("child starts");
        ChildGuard { child }
    }

    pub fn pid(&self) -> nix::unistd::Pid {
        nix::unistd::Pid::from_raw(self.child.id() as i32)
    }

    pub fn kill9(&mut self) {
        let _ = nix::sys::signal::kill(self.pid(), nix::sys::signal::Signal::SIGKILL);
        let _ = self.child.wait();
    }

    pub fn terminate(&mut self) {
        let _ = nix::sys::signal::kill(self.pid(), nix::sys::signal::Signal::SIGTERM);
    }

    /// Waits for the process to exit, up to `deadline`.
    pub async fn wait_exit(&mut self, deadline: Duration) -> Option<std::process::ExitStatus> {
        let start = Instant::now();
        while start.elapsed() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.kill9();
        }
    }
}

/// Polls `cond` every 20 ms until it holds or `deadline` passes.
pub async fn wait_until(deadline: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < deadline,
            "timed out after {deadline:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A live process's peak resident set size (`VmHWM`), in KiB.
pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}
