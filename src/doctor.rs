//! `shoal doctor`: checks this node's wiring end to end and says, one line each, what is wrong
//! and how to fix it: the daemon, its schedulers (reachable, this host's credentials accepted,
//! the clocks agreeing), the registry mirror, containerd's and Docker's configs, the disk.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use serde::Serialize;
use shoal_p2p::api::{LocalClient, default_data_dir, socket_in};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Clocks further apart than this break certificates' and registry tokens' validity checks.
const SKEW_LIMIT_MS: i64 = 5_000;
/// The disk is nearly full past this share used, or with less than [`MIN_FREE`] left.
const DISK_FULL_PERCENT: u64 = 95;
const MIN_FREE: u64 = 1 << 30;

#[derive(Args)]
pub struct DoctorArgs {
    /// The node's data directory.
    #[arg(long, env = "SHOAL_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// The daemon's socket (default `<data_dir>/shoal.sock`).
    #[arg(long)]
    pub socket: Option<PathBuf>,
    /// The node's registry mirror.
    #[arg(long, default_value = "http://127.0.0.1:4001")]
    pub mirror: String,
    /// containerd's config file.
    #[arg(long, default_value = "/etc/containerd/config.toml")]
    pub containerd_config: PathBuf,
    /// Docker's config file (checked when it exists).
    #[arg(long, default_value = "/etc/docker/daemon.json")]
    pub docker_config: PathBuf,
    /// One JSON object per check on standard output instead of lines.
    #[arg(long)]
    pub json: bool,
}

/// One check's verdict.
#[derive(Debug, Serialize)]
struct Finding {
    check: &'static str,
    ok: bool,
    /// What was found.
    message: String,
    /// How to fix it, when not ok.
    #[serde(skip_serializing_if = "Option::is_none")]
    fix: Option<String>,
}

fn ok(check: &'static str, message: String) -> Finding {
    Finding {
        check,
        ok: true,
        message,
        fix: None,
    }
}

fn bad(check: &'static str, message: String, fix: String) -> Finding {
    Finding {
        check,
        ok: false,
        message,
        fix: Some(fix),
    }
}

impl DoctorArgs {
    /// Runs every check; `false` when any failed.
    pub async fn run(self) -> anyhow::Result<bool> {
        let data_dir = self.data_dir.clone().unwrap_or_else(default_data_dir);
        let socket = self.socket.clone().unwrap_or_else(|| socket_in(&data_dir));
        let mut found = Vec::new();
        self.node(&socket, &mut found).await;
        found.push(self.mirror().await);
        found.extend(self.containerd(&data_dir));
        found.extend(self.docker(&data_dir));
        found.push(disk(&data_dir));
        for f in &found {
            if self.json {
                println!("{}", serde_json::to_string(f)?);
            } else {
                let mark = if f.ok { "ok  " } else { "FAIL" };
                match &f.fix {
                    Some(fix) => println!("{mark} {:<10} {}; fix: {fix}", f.check, f.message),
                    None => println!("{mark} {:<10} {}", f.check, f.message),
                }
            }
        }
        Ok(found.iter().all(|f| f.ok))
    }

    /// The daemon, and through it each scheduler and the clocks.
    async fn node(&self, socket: &std::path::Path, found: &mut Vec<Finding>) {
        let status = match LocalClient::new(socket).status().await {
            Ok(s) => s,
            Err(e) => {
                found.push(bad(
                    "daemon",
                    format!("does not answer: {e}"),
                    "start it: `systemctl start shoal-daemon` (or `shoal daemon`); \
                     `--data-dir` names another node"
                        .into(),
                ));
                return;
            }
        };
        let host = status.host.as_ref().map_or("not in a swarm".into(), |h| {
            format!("host {}{}", h.id, if h.seed { " (seed)" } else { "" })
        });
        found.push(ok(
            "daemon",
            format!("running: {host}, data in {}", status.data_dir.display()),
        ));
        if status.schedulers.is_empty() {
            found.push(ok(
                "scheduler",
                "none configured: this node fetches from origins alone (no P2P)".into(),
            ));
        }
        for s in &status.schedulers {
            found.push(scheduler(s).await);
            if let Some(skew) = s.clock_skew_ms.filter(|_| s.attached) {
                found.push(clock(&s.url, skew));
            }
        }
    }

    /// The mirror answers HTTP (a path it refuses itself, so no registry is asked).
    async fn mirror(&self) -> Finding {
        let fix = "check `[proxy] enabled` and `listen` in the daemon's config, or give \
                   `--mirror`"
            .to_owned();
        let Some(addr) = host_port(&self.mirror) else {
            return bad("mirror", format!("{:?} is not a URL", self.mirror), fix);
        };
        let probe = async {
            let mut conn = tokio::net::TcpStream::connect(&addr).await?;
            let head = format!(
                "GET /v2/shoal-doctor HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
            );
            conn.write_all(head.as_bytes()).await?;
            let mut first = [0u8; 12];
            conn.read_exact(&mut first).await?;
            std::io::Result::Ok(first)
        };
        match tokio::time::timeout(Duration::from_secs(5), probe).await {
            Ok(Ok(first)) if first.starts_with(b"HTTP/1.") => {
                ok("mirror", format!("{} answers", self.mirror))
            }
            Ok(Ok(_)) => bad(
                "mirror",
                format!("{addr} answers, but not as an HTTP server"),
                fix,
            ),
            Ok(Err(e)) => bad(
                "mirror",
                format!("{} does not answer: {e}", self.mirror),
                fix,
            ),
            Err(_) => bad(
                "mirror",
                format!("{} did not answer in 5 s", self.mirror),
                fix,
            ),
        }
    }

    fn containerd(&self, data_dir: &std::path::Path) -> Option<Finding> {
        use shoal_snapshotter::install::Runtime;
        let path = &self.containerd_config;
        if !path.exists() && !on_path("containerd") {
            return None;
        }
        let mut finding = wired(
            Runtime::Containerd,
            path,
            &self.mirror,
            data_dir,
            "containerd",
        );
        let socket = data_dir.join("snapshotter.sock");
        if finding.ok && std::os::unix::net::UnixStream::connect(&socket).is_err() {
            finding = bad(
                "containerd",
                format!(
                    "{} names Shoal's snapshotter, but {} does not answer",
                    path.display(),
                    socket.display()
                ),
                "start it: `systemctl start shoal-snapshotter` (or `shoal snapshotter`)".into(),
            );
        }
        Some(finding)
    }

    fn docker(&self, data_dir: &std::path::Path) -> Option<Finding> {
        use shoal_snapshotter::install::Runtime;
        self.docker_config.exists().then(|| {
            wired(
                Runtime::Docker,
                &self.docker_config,
                &self.mirror,
                data_dir,
                "docker",
            )
        })
    }
}

/// Whether a runtime's config holds what `shoal install` would write.
fn wired(
    runtime: shoal_snapshotter::install::Runtime,
    config: &std::path::Path,
    mirror: &str,
    data_dir: &std::path::Path,
    name: &'static str,
) -> Finding {
    use shoal_snapshotter::install::{Install, plan};
    let install = Install {
        runtime,
        config: config.to_owned(),
        mirror: mirror.to_owned(),
        socket: data_dir.join("snapshotter.sock"),
    };
    let fix = format!("`shoal install {name}`, then restart {name}");
    match plan(&install, false) {
        Ok(changes) if changes.is_empty() => {
            ok(name, format!("{} is wired to this node", config.display()))
        }
        Ok(changes) => {
            let files: Vec<String> = changes
                .iter()
                .map(|c| c.path.display().to_string())
                .collect();
            bad(
                name,
                format!("not wired to Shoal (missing in {})", files.join(", ")),
                fix,
            )
        }
        Err(e) => bad(name, format!("{}: {e}", config.display()), fix),
    }
}

/// One scheduler: attached, or why not (the network, or this host's credentials).
async fn scheduler(s: &shoal_p2p::api::SchedulerStatus) -> Finding {
    if s.attached {
        return ok("scheduler", format!("{} attached", s.url));
    }
    let why = s.error.clone().unwrap_or_else(|| "not attached yet".into());
    let Some(addr) = host_port(&s.url) else {
        return bad(
            "scheduler",
            format!("{:?} is not a URL", s.url),
            "fix `[swarm] schedulers` in the daemon's config".into(),
        );
    };
    let connect = tokio::time::timeout(
        Duration::from_secs(3),
        tokio::net::TcpStream::connect(&addr),
    )
    .await;
    let reason = match connect {
        Ok(Ok(_)) => None,
        Ok(Err(e)) => Some(e.to_string()),
        Err(_) => Some("no answer in 3 s".into()),
    };
    if let Some(reason) = reason {
        return bad(
            "scheduler",
            format!("{} unreachable ({reason})", s.url),
            format!(
                "check that the scheduler runs there, `[swarm] schedulers` in the daemon's \
                 config, and that port {} is open to this host",
                addr.rsplit(':').next().unwrap_or("")
            ),
        );
    }
    let lower = why.to_lowercase();
    let credentials = [
        "certificate",
        "alert",
        "tls",
        "handshake",
        "unauthenticated",
        "permission",
    ]
    .iter()
    .any(|w| lower.contains(w));
    if credentials {
        bad(
            "scheduler",
            format!("{} refuses this host's credentials ({why})", s.url),
            "give this host a certificate from the cluster's CA in <data_dir>/cluster/: \
             `shoal ca issue --ca-dir CA --id HOST --role node --out DIR`, and the cluster's \
             ca.crt beside it"
                .into(),
        )
    } else {
        bad(
            "scheduler",
            format!("{} reachable but not attached ({why})", s.url),
            "see the daemon's log (`journalctl -u shoal-daemon`)".into(),
        )
    }
}

fn clock(url: &str, skew_ms: i64) -> Finding {
    let secs = skew_ms.unsigned_abs() as f64 / 1000.0;
    if skew_ms.abs() <= SKEW_LIMIT_MS {
        return ok("clock", format!("within {secs:.1} s of {url}"));
    }
    let way = if skew_ms > 0 { "behind" } else { "ahead of" };
    bad(
        "clock",
        format!("{secs:.1} s {way} the scheduler {url}"),
        "certificates and registry tokens fail on skewed clocks: keep time with NTP \
         (`timedatectl set-ntp true`)"
            .into(),
    )
}

fn disk(data_dir: &std::path::Path) -> Finding {
    // The data directory, or the nearest directory above it that exists.
    let dir = data_dir
        .ancestors()
        .find(|d| d.exists())
        .unwrap_or(std::path::Path::new("/"));
    match shoal_node::gc::disk_use(dir) {
        Ok((used, total)) => {
            let free = total.saturating_sub(used);
            let percent = used.saturating_mul(100).checked_div(total).unwrap_or(0);
            let message = format!(
                "{} free of {} ({percent} % used) under {}",
                indicatif::HumanBytes(free),
                indicatif::HumanBytes(total),
                dir.display()
            );
            if percent >= DISK_FULL_PERCENT || free < MIN_FREE {
                bad(
                    "disk",
                    message,
                    "free space, or lower `[gc] high_watermark` / `capacity` in the daemon's \
                     config so that it keeps less"
                        .into(),
                )
            } else {
                ok("disk", message)
            }
        }
        Err(e) => bad("disk", e.to_string(), "check the data directory".into()),
    }
}

/// `host:port` of an `http(s)://host[:port]/…` URL.
fn host_port(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let authority = rest.split('/').next()?;
    if authority.is_empty() {
        return None;
    }
    let has_port = authority
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok());
    Some(match (has_port, scheme) {
        (true, _) => authority.to_owned(),
        (false, "https") => format!("{authority}:443"),
        (false, _) => format!("{authority}:80"),
    })
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_give_their_address() {
        assert_eq!(
            host_port("http://127.0.0.1:4001").unwrap(),
            "127.0.0.1:4001"
        );
        assert_eq!(host_port("https://sched/x").unwrap(), "sched:443");
        assert_eq!(host_port("http://[::1]:8002").unwrap(), "[::1]:8002");
        assert_eq!(host_port("http://h").unwrap(), "h:80");
        assert!(host_port("sched:8002").is_none());
        assert!(host_port("http:///x").is_none());
    }

    #[test]
    fn a_clock_off_by_more_than_the_limit_fails() {
        assert!(clock("u", 4_000).ok);
        assert!(clock("u", -4_000).ok);
        let behind = clock("u", 7_500);
        assert!(
            !behind.ok && behind.message.starts_with("7.5 s behind"),
            "{behind:?}"
        );
        assert!(clock("u", -9_000).message.starts_with("9.0 s ahead of"));
    }
}
