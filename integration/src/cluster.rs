//! A swarm on 127.0.0.1: a scheduler, an optional seed and N daemons, each a real `shoal`
//! process with its own data directory and ephemeral ports.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::process::{ChildGuard, run, shoal, wait_until};

mod ca;
pub use ca::ClusterCa;

/// A free TCP port on 127.0.0.1 (the listener is closed again, so a race is possible but rare).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// Waits until a node answers on its local socket; an error if it exits first or takes 20 s.
async fn ready(child: &mut ChildGuard, socket: &Path) -> Result<(), String> {
    let start = std::time::Instant::now();
    loop {
        if std::os::unix::net::UnixStream::connect(socket).is_ok() {
            return Ok(());
        }
        if let Ok(Some(status)) = child.child.try_wait() {
            return Err(format!("it exited: {status}"));
        }
        if start.elapsed() > Duration::from_secs(20) {
            return Err("no socket after 20 s".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A node's config file: its store, its schedulers, where it serves pieces, its host id, and how
/// long it waits for news from the swarm before going to the origin, and where its registry
/// mirror listens. Origin retries are short, for tests. Ends inside the `[swarm]` table, so a
/// caller may append swarm settings.
pub fn node_config(
    store: &Path,
    schedulers: &[String],
    upload_addr: &str,
    host_id: &str,
    stall_timeout: &str,
    proxy_listen: &str,
) -> String {
    format!(
        "data_dir = {store:?}\n[origin]\nretries = 2\nretry_backoff = \"50ms\"\n\
         [proxy]\nlisten = {proxy_listen:?}\n\
         [swarm]\nschedulers = {schedulers:?}\nupload_addr = {upload_addr:?}\n\
         host_id = {host_id:?}\nstall_timeout = {stall_timeout:?}\n"
    )
}

/// `shoal scheduler` on `127.0.0.1:port` (metrics and the HTTP API on ephemeral ports), with
/// the data directory `data_dir`:
/// its cluster credentials are in `<data_dir>/cluster/`, the default, its API's tokens and
/// jobs in `<data_dir>/api/`.
pub fn scheduler_command(port: u16, data_dir: &Path) -> Command {
    scheduler_command_with_api(port, 0, data_dir)
}

/// [`scheduler_command`] with the HTTP API on `127.0.0.1:api_port` (0: ephemeral).
pub fn scheduler_command_with_api(port: u16, api_port: u16, data_dir: &Path) -> Command {
    let mut cmd = shoal();
    cmd.env("SHOAL_DATA_DIR", data_dir)
        .arg("scheduler")
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--http-listen")
        .arg(format!("127.0.0.1:{api_port}"))
        .arg("--metrics-addr")
        .arg("127.0.0.1:0");
    cmd
}

/// One `shoal` process of the cluster.
pub struct Node {
    pub name: String,
    pub data_dir: PathBuf,
    pub metrics_port: u16,
    /// The registry mirror and proxy.
    pub proxy_port: u16,
    pub child: ChildGuard,
}

impl Node {
    /// The node's registry mirror, `http://127.0.0.1:<port>`.
    pub fn mirror_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.proxy_port)
    }

    /// A metric's value (0 when absent), e.g. `shoal_download_bytes_total{source="peer"}`.
    pub async fn metric(&self, series: &str) -> u64 {
        let text = http_get(self.metrics_port, "/metrics")
            .await
            .unwrap_or_default();
        text.lines()
            .find_map(|l| l.strip_prefix(series))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }
}

/// Builder for a [`Cluster`].
pub struct ClusterBuilder {
    daemons: usize,
    seed: bool,
    seed_upload_slots: usize,
    stall_timeout: &'static str,
    schedulers: usize,
    registries: Vec<(String, String)>,
    proxy_settings: Vec<String>,
    settings: Vec<(&'static str, String)>,
    hijack: Vec<String>,
    origin_ca: Option<PathBuf>,
    log: &'static str,
    insecure: bool,
    scheduler_settings: Vec<String>,
}

impl ClusterBuilder {
    /// A line for the first scheduler's config (after its `[cluster]` table: say the table).
    pub fn scheduler_setting(mut self, line: &str) -> Self {
        self.scheduler_settings.push(line.to_owned());
        self
    }

    /// The nodes' proxies terminate TLS of CONNECT targets matching `regex`.
    pub fn hijack(mut self, regex: &str) -> Self {
        self.hijack.push(regex.into());
        self
    }

    /// The nodes trust this CA (PEM file) for origins and registries.
    pub fn origin_ca(mut self, path: &Path) -> Self {
        self.origin_ca = Some(path.into());
        self
    }

    /// The nodes' mirrors send requests naming no registry (Docker, skopeo) to `url`.
    pub fn default_registry(mut self, url: &str) -> Self {
        self.proxy_settings
            .push(format!("default_registry = {url:?}"));
        self
    }

    /// A line for the nodes' `[proxy]` table (`allowed_upstreams = […]`, say).
    pub fn proxy_setting(mut self, line: &str) -> Self {
        self.proxy_settings.push(line.into());
        self
    }

    /// A line for the nodes' `[table]` (`"limits"`, `"header_timeout = \"1s\""`, say; not
    /// `proxy`, see [`ClusterBuilder::proxy_setting`]).
    pub fn setting(mut self, table: &'static str, line: &str) -> Self {
        self.settings.push((table, line.into()));
        self
    }

    /// The nodes' mirrors reach registry `host` (as named by `?ns=`) at `url`.
    pub fn registry(mut self, host: &str, url: &str) -> Self {
        self.registries.push((host.into(), url.into()));
        self
    }

    /// The nodes' `SHOAL_LOG`.
    /// Every member with `[cluster] insecure = true`: plaintext, no certificates.
    pub fn insecure(mut self) -> Self {
        self.insecure = true;
        self
    }

    pub fn log(mut self, filter: &'static str) -> Self {
        self.log = filter;
        self
    }

    pub fn daemons(mut self, n: usize) -> Self {
        self.daemons = n;
        self
    }

    pub fn no_seed(mut self) -> Self {
        self.seed = false;
        self
    }

    /// Uploads the seed serves at once (fewer pushes daemons to share with each other).
    pub fn seed_upload_slots(mut self, n: usize) -> Self {
        self.seed_upload_slots = n;
        self
    }

    pub fn stall_timeout(mut self, t: &'static str) -> Self {
        self.stall_timeout = t;
        self
    }

    /// Daemons are configured with a scheduler address where nothing listens.
    pub fn no_scheduler(mut self) -> Self {
        self.schedulers = 0;
        self
    }

    /// `n` schedulers sharing the tasks (one by default).
    pub fn schedulers(mut self, n: usize) -> Self {
        self.schedulers = n;
        self
    }

    pub async fn start(self) -> Cluster {
        let dir = tempfile::tempdir().expect("cluster dir");
        let scheduler_port = free_port();
        let mut cluster = Cluster {
            _mounts: crate::runtimes::UnmountOnDrop(dir.path().to_owned()),
            dir,
            scheduler_port,
            api_port: free_port(),
            scheduler_settings: self.scheduler_settings,
            scheduler: None,
            more_schedulers: (1..self.schedulers.max(1))
                .map(|_| (free_port(), None))
                .collect(),
            seed: None,
            daemons: Vec::new(),
            stall: self.stall_timeout,
            registries: self.registries,
            proxy_settings: self.proxy_settings,
            settings: self.settings,
            hijack: self.hijack,
            origin_ca: self.origin_ca,
            log: self.log,
            insecure: self.insecure,
        };
        let ca = ClusterCa::init(&cluster.dir.path().join("ca"));
        ca.issue(
            "scheduler",
            &["scheduler"],
            &cluster.scheduler_dir().join("cluster"),
        );
        if self.schedulers > 0 {
            cluster.start_scheduler().await;
        }
        for i in 1..self.schedulers {
            let dir = cluster.dir.path().join(format!("scheduler{i}"));
            ca.issue(
                &format!("scheduler{i}"),
                &["scheduler"],
                &dir.join("cluster"),
            );
            let port = cluster.more_schedulers[i - 1].0;
            let child = ChildGuard::spawn(scheduler_command(port, &dir));
            wait_until(Duration::from_secs(20), "scheduler to listen", || {
                std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
            })
            .await;
            cluster.more_schedulers[i - 1].1 = Some(child);
        }
        if self.seed {
            cluster.seed = Some(
                cluster
                    .start_node("seed", true, self.seed_upload_slots)
                    .await,
            );
        }
        for i in 0..self.daemons {
            let node = cluster.start_node(&format!("d{i}"), false, 64).await;
            cluster.daemons.push(node);
        }
        cluster
    }
}

pub struct Cluster {
    /// First: the nodes' snapshotters' FUSE mounts detached before the directory goes.
    _mounts: crate::runtimes::UnmountOnDrop,
    dir: tempfile::TempDir,
    pub scheduler_port: u16,
    /// The first scheduler's HTTP API (preheat jobs).
    pub api_port: u16,
    scheduler_settings: Vec<String>,
    pub scheduler: Option<ChildGuard>,
    /// The other schedulers (`.schedulers(n)`): port and process.
    pub more_schedulers: Vec<(u16, Option<ChildGuard>)>,
    pub seed: Option<Node>,
    pub daemons: Vec<Node>,
    stall: &'static str,
    registries: Vec<(String, String)>,
    proxy_settings: Vec<String>,
    settings: Vec<(&'static str, String)>,
    hijack: Vec<String>,
    origin_ca: Option<PathBuf>,
    log: &'static str,
    insecure: bool,
}

impl Cluster {
    pub fn builder() -> ClusterBuilder {
        ClusterBuilder {
            daemons: 3,
            seed: true,
            seed_upload_slots: 64,
            stall_timeout: "3s",
            schedulers: 1,
            registries: Vec::new(),
            proxy_settings: Vec::new(),
            settings: Vec::new(),
            hijack: Vec::new(),
            origin_ca: None,
            log: "info",
            insecure: false,
            scheduler_settings: Vec::new(),
        }
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The cluster's CA.
    pub fn ca(&self) -> ClusterCa {
        ClusterCa {
            dir: self.dir.path().join("ca"),
        }
    }

    /// Every scheduler's URL, as the nodes are configured with them.
    pub fn scheduler_urls(&self) -> Vec<String> {
        std::iter::once(self.scheduler_port)
            .chain(self.more_schedulers.iter().map(|(port, _)| *port))
            .map(|port| format!("http://127.0.0.1:{port}"))
            .collect()
    }

    /// The scheduler's data directory (its credentials are in `cluster/` there).
    pub fn scheduler_dir(&self) -> PathBuf {
        self.dir.path().join("scheduler")
    }

    /// (Re)starts the scheduler on its port; its log goes to `log` in its directory.
    pub async fn start_scheduler(&mut self) {
        let data_dir = self.scheduler_dir();
        let mut cmd = scheduler_command_with_api(self.scheduler_port, self.api_port, &data_dir);
        let config = data_dir.join("scheduler.toml");
        std::fs::create_dir_all(&data_dir).expect("scheduler dir");
        let mut text = format!("[cluster]\ninsecure = {}\n", self.insecure);
        for line in &self.scheduler_settings {
            text += &format!("{line}\n");
        }
        std::fs::write(&config, text).expect("scheduler config");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(data_dir.join("log"))
            .expect("scheduler log");
        cmd.env("SHOAL_LOG", self.log)
            .arg("--config")
            .arg(config)
            .stderr(log);
        self.scheduler = Some(ChildGuard::spawn(cmd));
        let port = self.scheduler_port;
        wait_until(Duration::from_secs(20), "scheduler to listen", || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        })
        .await;
    }

    /// A daemon whose credentials come from another CA than the cluster's (as a host given
    /// the wrong ones): it runs, and no scheduler of the cluster takes it.
    pub async fn start_stranger(&self, name: &str) -> Node {
        let other = ClusterCa::init(&self.dir.path().join(format!("{name}-ca")));
        self.start_node_of(&other, name, false, 64).await
    }

    async fn start_node(&self, name: &str, seed: bool, upload_slots: usize) -> Node {
        self.start_node_of(&self.ca(), name, seed, upload_slots)
            .await
    }

    async fn start_node_of(
        &self,
        ca: &ClusterCa,
        name: &str,
        seed: bool,
        upload_slots: usize,
    ) -> Node {
        let data_dir = self.dir.path().join(name);
        std::fs::create_dir_all(&data_dir).expect("node dir");
        let role = if seed { "seed" } else { "node" };
        ca.issue(name, &[role], &data_dir.join("store").join("cluster"));
        let config = data_dir.join("config.toml");
        let log = data_dir.join("log");
        let socket = data_dir.join("store").join("shoal.sock");
        // `free_port` can race with other tests for a port: a node that could not bind one is
        // started again on new ports.
        for attempt in 1.. {
            let proxy_port = free_port();
            let mut text = node_config(
                &data_dir.join("store"),
                &self.scheduler_urls(),
                "127.0.0.1:0",
                name,
                self.stall,
                &format!("127.0.0.1:{proxy_port}"),
            ) + &format!("upload_slots = {upload_slots}\n");
            // `node_config` ends in the `[swarm]` table: its settings go on there.
            for (_, line) in self.settings.iter().filter(|(t, _)| *t == "swarm") {
                text += &format!("{line}\n");
            }
            for line in &self.proxy_settings {
                text = text.replacen("[proxy]\n", &format!("[proxy]\n{line}\n"), 1);
            }
            if let Some(ca) = &self.origin_ca {
                text = text.replacen("[origin]\n", &format!("[origin]\nca_certs = [{ca:?}]\n"), 1);
            }
            text += "[proxy.registries]\n";
            for (host, url) in &self.registries {
                text += &format!("{host:?} = {url:?}\n");
            }
            text += &format!("[proxy.hijack]\nhosts = {:?}\n", self.hijack);
            let mut tables: Vec<&str> = (self.settings.iter())
                .map(|(t, _)| *t)
                .filter(|t| *t != "swarm")
                .collect();
            tables.sort_unstable();
            tables.dedup();
            for table in tables {
                text += &format!("[{table}]\n");
                for (_, line) in self.settings.iter().filter(|(t, _)| *t == table) {
                    text += &format!("{line}\n");
                }
            }
            if self.insecure {
                text += "[cluster]\ninsecure = true\n";
            }
            std::fs::write(&config, text).expect("write node config");
            let metrics_port = free_port();
            let mut cmd = shoal();
            cmd.env("SHOAL_LOG", self.log)
                .arg(if seed { "seed" } else { "daemon" })
                .arg("--config")
                .arg(&config)
                .arg("--metrics-addr")
                .arg(format!("127.0.0.1:{metrics_port}"))
                .stderr(std::fs::File::create(&log).expect("log file"));
            let mut child = ChildGuard::spawn(cmd);
            match ready(&mut child, &socket).await {
                Ok(()) => {
                    return Node {
                        name: name.to_owned(),
                        data_dir,
                        metrics_port,
                        proxy_port,
                        child,
                    };
                }
                Err(why) => {
                    let log = std::fs::read_to_string(&log).unwrap_or_default();
                    assert!(
                        attempt < 3 && log.contains("in use"),
                        "node {name} did not start ({why}); its log:\n{log}"
                    );
                }
            }
        }
        unreachable!("the loop returns or panics")
    }

    /// `shoal get` through daemon `i`, writing to `out`.
    pub fn get(&self, i: usize, url: &str, out: &Path) -> Command {
        crate::process::get(&self.daemons[i].data_dir.join("store"), url, out)
    }

    /// Runs `shoal get` on every daemon at once; returns their outputs' paths and results.
    pub async fn get_all(&self, url: &str) -> Vec<(PathBuf, Output)> {
        let runs = (0..self.daemons.len()).map(|i| {
            let out = self.dir.path().join(format!("out-{i}"));
            let cmd = self.get(i, url, &out);
            async move { (out, run(cmd).await) }
        });
        futures_util::future::join_all(runs).await
    }

    /// The log of a node, for failure messages.
    pub fn log(&self, node: &Node) -> String {
        std::fs::read_to_string(node.data_dir.join("log")).unwrap_or_default()
    }
}

/// A minimal HTTP/1.0 GET on 127.0.0.1 (the body, for 200 answers).
pub async fn http_get(port: u16, path: &str) -> Option<String> {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf))
        .await
        .ok()?
        .ok()?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200")
        .then(|| body.to_owned())
        .or_else(|| head.starts_with("HTTP/1.0 200").then(|| body.to_owned()))
}
