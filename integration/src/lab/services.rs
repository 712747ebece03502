//! Real programs on lab hosts: docker-registry (as the origin, or as distribution's pull-through
//! cache), an nginx caching proxy, and Shoal's scheduler, seed and daemons.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use super::Host;
use crate::cluster::ClusterCa;
use crate::process::{ChildGuard, shoal_bin};

/// The repository the lab's blob is stored under.
pub const REPO: &str = "lab/blob";
pub const REGISTRY_PORT: u16 = 5000;
pub const NGINX_PORT: u16 = 80;
pub const SCHEDULER_PORT: u16 = 8002;
/// The scheduler's HTTP API (preheat jobs).
pub const API_PORT: u16 = 8080;
pub const UPLOAD_PORT: u16 = 4000;
pub const PROXY_PORT: u16 = 4001;
/// The registry name images in the lab use; daemons' mirrors map it to the origin registry.
pub const LAB_REGISTRY: &str = "lab.invalid:5000";
pub const METRICS_PORT: u16 = 4002;

/// Every lab host's store is on this machine's one filesystem: with the default (the
/// filesystem's use is the store's), every host's garbage collection would answer to all of
/// them at once, and evict what a scenario measures. Each gets a capacity of its own instead.
const LAB_GC: &str = "[gc]\ncapacity = 68719476736\n";

/// A process on a host, its log in the host's directory; killed by pid when dropped.
pub struct Service {
    pub host: Host,
    pub child: ChildGuard,
    pub log: PathBuf,
}

impl Service {
    fn spawn(host: &Host, name: &str, mut cmd: Command) -> anyhow::Result<Service> {
        let log = host.dir.join(format!("{name}.log"));
        let file = std::fs::File::create(&log).context("log file")?;
        cmd.stdout(file.try_clone()?).stderr(file);
        Ok(Service {
            host: host.clone(),
            child: ChildGuard::spawn(cmd),
            log,
        })
    }

    /// Waits until `url` answers 2xx from inside the host, failing early if the process exits.
    fn wait_ready(&mut self, url: &str) -> anyhow::Result<()> {
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.child.try_wait() {
                bail!(
                    "{} on {} exited ({status}): {}",
                    url,
                    self.host.name,
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                );
            }
            let ok = self
                .host
                .command("curl")
                .args(["-sf", "-o", "/dev/null", "--max-time", "1", url])
                .stdin(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                return Ok(());
            }
            if start.elapsed() > Duration::from_secs(30) {
                bail!("{url} on {} not ready after 30 s", self.host.name);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// docker-registry on `host` serving the storage under `root`; a pull-through cache of
/// `remote` when given.
pub fn registry(host: &Host, root: &Path, remote: Option<&str>) -> anyhow::Result<Service> {
    let proxy = remote
        .map(|r| format!("proxy:\n  remoteurl: {r}\n"))
        .unwrap_or_default();
    let config = crate::registry::config(root, &format!("{}:{REGISTRY_PORT}", host.ip), &proxy);
    let path = host.dir.join("registry.yml");
    std::fs::write(&path, config)?;
    let mut cmd = host.command(crate::registry::registry_bin()?);
    cmd.arg("serve").arg(&path);
    let mut svc = Service::spawn(host, "registry", cmd)?;
    svc.wait_ready(&format!("http://{}:{REGISTRY_PORT}/v2/", host.ip))?;
    Ok(svc)
}

/// nginx on `host` as a caching proxy in front of `upstream`, with `proxy_cache_lock` so
/// concurrent misses for one URL make one upstream request.
pub fn nginx_cache(host: &Host, upstream: &str) -> anyhow::Result<Service> {
    let w = host.dir.join("nginx");
    std::fs::create_dir_all(w.join("tmp"))?;
    let http = format!(
        "proxy_cache_path {w}/cache levels=1:2 keys_zone=lab:10m max_size=64g inactive=1h use_temp_path=off;\n\
         server {{\n    listen {ip}:{NGINX_PORT};\n    location / {{\n\
         proxy_pass {upstream};\n      proxy_http_version 1.1;\n      proxy_cache lab;\n\
         proxy_cache_valid 200 1h;\n      proxy_cache_lock on;\n      proxy_cache_lock_timeout 1h;\n\
         proxy_cache_lock_age 1h;\n    }}\n  }}",
        w = w.display(),
        ip = host.ip,
    );
    let conf = crate::nginx::config(&w, &http);
    let path = host.dir.join("nginx.conf");
    std::fs::write(&path, conf)?;
    let mut cmd = host.command(crate::nginx::nginx_bin());
    cmd.arg("-c")
        .arg(&path)
        .arg("-e")
        .arg(host.dir.join("nginx/error.log"));
    let mut svc = Service::spawn(host, "nginx", cmd)?;
    svc.wait_ready(&format!("http://{}:{NGINX_PORT}/v2/", host.ip))?;
    Ok(svc)
}

/// Shoal's log filter in the lab: `SHOAL_LOG` of the lab command, else `info`.
fn log_level() -> String {
    std::env::var("SHOAL_LOG").unwrap_or_else(|_| "info".into())
}

/// `shoal scheduler` on `host`, a member of the cluster of `ca` (plaintext without).
pub fn scheduler(host: &Host, ca: Option<&ClusterCa>) -> anyhow::Result<Service> {
    let config = host.dir.join("scheduler.toml");
    // The HTTP API (preheat jobs) on the host's address, its tokens and jobs in its directory.
    let api = format!(
        "[api]\nlisten = \"{}:{API_PORT}\"\ndir = {:?}\n",
        host.ip,
        host.dir.join("api")
    );
    match ca {
        Some(ca) => {
            ca.issue(&host.name, &["scheduler"], &host.dir.join("cluster"));
            std::fs::write(
                &config,
                format!("[cluster]\ndir = {:?}\n{api}", host.dir.join("cluster")),
            )?;
        }
        None => std::fs::write(&config, format!("[cluster]\ninsecure = true\n{api}"))?,
    }
    let mut cmd = host.command(shoal_bin());
    cmd.env("SHOAL_LOG", log_level())
        .arg("scheduler")
        .arg("--config")
        .arg(&config)
        .arg("--listen")
        .arg(format!("{}:{SCHEDULER_PORT}", host.ip))
        .arg("--metrics-addr")
        .arg(format!("{}:{METRICS_PORT}", host.ip));
    let mut svc = Service::spawn(host, "scheduler", cmd)?;
    svc.wait_ready(&format!("http://{}:{METRICS_PORT}/metrics", host.ip))?;
    Ok(svc)
}

/// The URLs of the schedulers on `hosts`, as nodes are configured with them.
pub fn scheduler_urls(hosts: &[Host]) -> Vec<String> {
    hosts
        .iter()
        .map(|h| format!("http://{}:{SCHEDULER_PORT}", h.ip))
        .collect()
}

/// A Shoal node (`shoal seed` or `shoal daemon`) on `host`, using the schedulers on `schedulers`.
pub struct Node {
    pub svc: Service,
    pub store: PathBuf,
}

impl Node {
    /// Starts the node; its registry mirror (on the host's address) maps [`LAB_REGISTRY`] to the
    /// registry on `origin`.
    /// With `ca`, the node is a member of its cluster; else plaintext.
    pub fn start(
        host: &Host,
        schedulers: &[Host],
        origin: &Host,
        seed: bool,
        ca: Option<&ClusterCa>,
    ) -> anyhow::Result<Node> {
        Node::start_with(host, schedulers, origin, seed, ca, "")
    }

    /// [`start`](Self::start) with more of the node's config: `extra` is TOML that goes on
    /// from the `[swarm]` table (its keys first, then any tables).
    pub fn start_with(
        host: &Host,
        schedulers: &[Host],
        origin: &Host,
        seed: bool,
        ca: Option<&ClusterCa>,
        extra: &str,
    ) -> anyhow::Result<Node> {
        let store = host.dir.join("store");
        let config = host.dir.join("shoal.toml");
        let cluster = match ca {
            Some(ca) => {
                let role = if seed { "seed" } else { "node" };
                ca.issue(&host.name, &[role], &store.join("cluster"));
                String::new()
            }
            None => "[cluster]\ninsecure = true\n".to_owned(),
        };
        std::fs::write(
            &config,
            crate::cluster::node_config(
                &store,
                &scheduler_urls(schedulers),
                &format!("{}:{UPLOAD_PORT}", host.ip),
                &host.name,
                "10s",
                &format!("{}:{PROXY_PORT}", host.ip),
            ) + &format!(
                "{extra}[proxy.registries]\n{LAB_REGISTRY:?} = \"http://{}:{REGISTRY_PORT}\"\n\
                 {LAB_GC}{cluster}",
                origin.ip
            ),
        )?;
        let mut cmd = host.command(shoal_bin());
        cmd.env("SHOAL_LOG", log_level())
            .arg(if seed { "seed" } else { "daemon" })
            .arg("--config")
            .arg(&config)
            .arg("--metrics-addr")
            .arg(format!("{}:{METRICS_PORT}", host.ip));
        let mut svc = Service::spawn(host, "shoal", cmd)?;
        svc.wait_ready(&format!("http://{}:{METRICS_PORT}/healthz", host.ip))?;
        Ok(Node { svc, store })
    }

    /// `shoal get` of `url` through this node, inside its host.
    pub fn get(&self, url: &str, out: &Path) -> Command {
        let mut cmd = self.svc.host.command(shoal_bin());
        cmd.arg("get")
            .arg(url)
            .arg("-O")
            .arg(out)
            .arg("--data-dir")
            .arg(&self.store)
            .arg("-q");
        cmd
    }

    /// A counter from the node's metrics (0 when absent).
    pub fn metric(&self, series: &str) -> u64 {
        let url = format!("http://{}:{METRICS_PORT}/metrics", self.svc.host.ip);
        self.svc
            .host
            .http_get(&url)
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix(series))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .map_or(0, |v| v as u64)
    }
}
