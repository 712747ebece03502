//! Command-line arguments and how they override the config files.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use shoal_mirror::{Ca, ProxyConfig};
use shoal_node::DaemonConfig;
use shoal_node::get::{GetOptions, Output, Report};
use shoal_p2p::Digest;
use shoal_p2p::api::{GetRequest, LocalClient, default_data_dir, socket_in};
use shoal_p2p::cluster::{ClusterConfig, Member, Role, pki};
use shoal_scheduler::SchedulerConfig;
use shoal_snapshotter::SnapshotterConfig;

#[derive(Parser)]
#[command(
    name = "shoal",
    version,
    about = "Peer-to-peer distribution of container images and large files"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Everything on one machine: scheduler, and a node daemon that is also the seed.
    Up(UpArgs),
    /// The node daemon: piece store, downloads, upload server, local API socket, /metrics.
    Daemon(DaemonArgs),
    /// A seed peer: a node daemon that fetches from the origin when the scheduler asks.
    Seed(DaemonArgs),
    /// The scheduler: who holds which pieces, who fetches from the origin (gRPC).
    Scheduler(SchedulerArgs),
    /// The containerd snapshotter (`proxy_plugins`, `type = "snapshot"`): containerd's
    /// Snapshots service on a unix socket.
    Snapshotter(crate::containerd::SnapshotterArgs),
    /// Wires a container runtime on this host to the local node: containerd (the snapshotter,
    /// CRI's settings, a catch-all mirror), docker (`registry-mirrors`), podman / CRI-O
    /// (`registries.conf`). Shows the change, backs the file up, changes nothing twice.
    Install(crate::containerd::InstallArgs),
    /// Pulls an image into containerd through the shoal snapshotter: its layers come from the
    /// swarm, unpacked while they stream (as `ctr-remote rpull`).
    Pull(crate::containerd::PullArgs),
    /// Makes an image present in the swarm ahead of its pulls, through the scheduler's HTTP
    /// API (as Harbor's preheat does); `--list` shows the jobs.
    Preheat(crate::preheat::PreheatArgs),
    /// The scheduler's HTTP API tokens: `create NAME` (printed once), `list`, `revoke NAME`.
    Token(crate::preheat::TokenArgs),
    /// Download a URL through the local daemon (or standalone when none runs).
    Get(GetArgs),
    /// The local daemon: its schedulers, its tasks, the bytes it got from origin / peers / cache.
    Status(StatusArgs),
    /// Checks this node's wiring end to end (daemon, schedulers and credentials, clocks, the
    /// mirror, containerd's and Docker's configs, disk) and says what to fix, a line each.
    Doctor(crate::doctor::DoctorArgs),
    /// Creates Shoal's CA for HTTPS hijack (if missing) and prints how to trust it; `init`
    /// and `issue` make a cluster's CA and its members' certificates.
    Ca(CaArgs),
}

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct CaArgs {
    #[command(subcommand)]
    pub cluster: Option<ClusterCa>,
    /// The daemon's TOML config file (its `[proxy.hijack]` may name the CA files).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// The daemon's data directory (the CA goes to `<data_dir>/ca/` by default).
    #[arg(long, env = "SHOAL_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
}

/// The cluster's CA: the identity its members prove to one another.
#[derive(Subcommand)]
pub enum ClusterCa {
    /// Creates a cluster CA (`ca.crt`, and `ca.key` readable only by you) in a directory,
    /// unless one is there. Keep the key off the cluster's hosts.
    Init {
        /// Where the CA's files go.
        #[arg(long)]
        dir: PathBuf,
    },
    /// Issues a member certificate from the cluster CA, and writes what the member needs
    /// (`ca.crt`, `host.crt`, `host.key`) to a directory: copy it to the member's
    /// `<data_dir>/cluster/`, or name it in its config's `[cluster] dir`.
    Issue(IssueArgs),
}

#[derive(Args)]
pub struct IssueArgs {
    /// The CA's directory (`shoal ca init --dir`).
    #[arg(long)]
    pub ca_dir: PathBuf,
    /// The member's host id (the scheduler knows it by this name).
    #[arg(long)]
    pub id: String,
    /// What it may be: `node`, `seed` (a node that takes seed jobs, with the registry
    /// credentials they carry) or `scheduler`. Repeatable.
    #[arg(long = "role", required = true)]
    pub roles: Vec<Role>,
    /// Where the member's files go.
    #[arg(long)]
    pub out: PathBuf,
    /// Days the certificate is valid.
    #[arg(long, default_value_t = pki::MEMBER_DAYS)]
    pub days: u32,
}

impl CaArgs {
    /// The CA's certificate and key files.
    pub fn paths(&self) -> anyhow::Result<(PathBuf, PathBuf)> {
        let (daemon, proxy, _) = read_configs(self.config.as_deref())?;
        let data_dir = self.data_dir.clone().unwrap_or(daemon.data_dir);
        let (cert, key) = shoal_mirror::default_ca_paths(&data_dir);
        Ok((
            proxy.hijack.ca_cert.unwrap_or(cert),
            proxy.hijack.ca_key.unwrap_or(key),
        ))
    }

    /// `shoal ca`: makes the hijack CA when missing, and says how to trust it; `shoal ca init`
    /// and `shoal ca issue` make the cluster's credentials.
    pub fn run(&self) -> anyhow::Result<()> {
        match &self.cluster {
            None => {
                let (cert, key) = self.paths()?;
                let (_, created) = Ca::load_or_create(&cert, &key)?;
                let instructions = shoal_mirror::ca::trust_instructions(&cert, &key, created);
                println!("{instructions}");
            }
            Some(ClusterCa::Init { dir }) => {
                let (cert, key) = (dir.join("ca.crt"), dir.join("ca.key"));
                let name = format!("Shoal cluster CA {}", pki::hostname());
                let created = pki::create_ca(&cert, &key, &name)?;
                println!(
                    "{} cluster CA: {} (key {}, keep it off the cluster's hosts)\n\
                     Issue each member a certificate: shoal ca issue --ca-dir {} --id <host id> \
                     --role node|seed|scheduler --out <dir>",
                    if created { "Created the" } else { "The" },
                    cert.display(),
                    key.display(),
                    dir.display()
                );
            }
            Some(ClusterCa::Issue(a)) => {
                let ca_cert = a.ca_dir.join("ca.crt");
                let member = Member::new(a.id.clone(), a.roles.iter().copied());
                let issued = pki::issue(&ca_cert, &a.ca_dir.join("ca.key"), &member, a.days)?;
                let paths = pki::write_member(&a.out, &ca_cert, &issued)?;
                println!(
                    "Issued {member}, valid {} days: {}, {} (key, mode 0600), {}\n\
                     Copy them to the member's <data_dir>/cluster/, or set [cluster] dir = {:?} \
                     in its config.",
                    a.days,
                    paths.cert.display(),
                    paths.key.display(),
                    paths.ca_cert.display(),
                    a.out
                );
            }
        }
        Ok(())
    }
}

/// The daemon config file's three parts (defaults without a file).
fn read_configs(
    path: Option<&std::path::Path>,
) -> anyhow::Result<(DaemonConfig, ProxyConfig, SnapshotterConfig)> {
    let Some(path) = path else {
        return Ok(Default::default());
    };
    let text =
        std::fs::read_to_string(path).with_context(|| format!("read config {}", path.display()))?;
    let daemon =
        DaemonConfig::from_toml(&text).with_context(|| format!("config {}", path.display()))?;
    let proxy = ProxyConfig::from_daemon_toml(&text)
        .map_err(|e| anyhow::anyhow!("config {}: {e}", path.display()))?;
    let snapshotter = SnapshotterConfig::from_daemon_toml(&text)
        .map_err(|e| anyhow::anyhow!("config {}: {e}", path.display()))?;
    Ok((daemon, proxy, snapshotter))
}

#[derive(Args)]
pub struct StatusArgs {
    /// The daemon's data directory (its `shoal.sock` is the daemon's socket).
    #[arg(long, env = "SHOAL_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// The daemon's socket, if not in the data directory.
    #[arg(long)]
    pub socket: Option<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

impl StatusArgs {
    /// The daemon's socket: `--socket`, else the one in the data directory.
    pub fn socket(&self) -> PathBuf {
        let data_dir = self.data_dir.clone().unwrap_or_else(default_data_dir);
        self.socket.clone().unwrap_or_else(|| socket_in(&data_dir))
    }

    /// `shoal status`: the local daemon's state, as text or JSON.
    pub async fn run(&self) -> anyhow::Result<()> {
        let status = LocalClient::new(self.socket()).status().await?;
        if self.json {
            println!("{}", serde_json::to_string_pretty(&status)?);
        } else {
            print!("{status}");
        }
        Ok(())
    }
}

#[derive(Args)]
pub struct DaemonArgs {
    /// TOML config file (see packaging/daemon.toml).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Reads and checks the config (with the command line's overrides), says `config ok` or
    /// what is wrong, and exits: the settings, not the files they name (cluster credentials,
    /// CAs) nor the addresses.
    #[arg(long)]
    pub check: bool,
    /// Overrides `data_dir`.
    #[arg(long, env = "SHOAL_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Overrides `metrics_addr` (`/healthz`, `/metrics`).
    #[arg(long)]
    pub metrics_addr: Option<SocketAddr>,
    /// Overrides `socket` (the local API).
    #[arg(long)]
    pub socket: Option<PathBuf>,
    /// Overrides `swarm.schedulers` (repeatable): `http://host:8002`.
    #[arg(long = "scheduler")]
    pub schedulers: Vec<String>,
    /// Overrides `swarm.upload_addr`.
    #[arg(long)]
    pub upload_addr: Option<SocketAddr>,
    /// Overrides `swarm.host_id`.
    #[arg(long)]
    pub host_id: Option<String>,
    /// Overrides `proxy.listen` (the registry mirror and HTTP(S) proxy).
    #[arg(long)]
    pub proxy_listen: Option<SocketAddr>,
}

impl DaemonArgs {
    /// The config file (or defaults) with the command line's overrides, validated; the proxy's
    /// part is `None` when it is off (always for a `seed`); the snapshotter runs when its table
    /// says so, else when `snapshotter` (`shoal up`).
    pub fn config(self, seed: bool, snapshotter: bool) -> anyhow::Result<NodeConfigs> {
        let (mut c, mut proxy, snapshots) = read_configs(self.config.as_deref())?;
        proxy.listen = self.proxy_listen.unwrap_or(proxy.listen);
        let proxy = (proxy.enabled && !seed).then_some(proxy);
        c.data_dir = self.data_dir.unwrap_or(c.data_dir);
        c.metrics_addr = self.metrics_addr.unwrap_or(c.metrics_addr);
        c.socket = self.socket.or(c.socket);
        if !self.schedulers.is_empty() {
            c.swarm.schedulers = self.schedulers;
        }
        c.swarm.upload_addr = self.upload_addr.unwrap_or(c.swarm.upload_addr);
        c.swarm.host_id = self.host_id.or(c.swarm.host_id);
        let c = c.validate()?;
        // The node's own mirror, dialled on loopback when it listens on every address.
        let mirror = proxy.as_ref().map(|p| {
            let ip = match p.listen.ip() {
                ip if ip.is_unspecified() => std::net::Ipv4Addr::LOCALHOST.into(),
                ip => ip,
            };
            format!("http://{}", SocketAddr::new(ip, p.listen.port()))
        });
        let snapshotter = match snapshots.enabled.unwrap_or(snapshotter) {
            true => Some(snapshots.setup(&c.data_dir, mirror.as_deref())?),
            false => None,
        };
        Ok(NodeConfigs {
            daemon: c,
            proxy,
            snapshotter,
        })
    }
}

/// What a node process runs: the daemon, the registry mirror, the containerd snapshotter.
pub struct NodeConfigs {
    pub daemon: DaemonConfig,
    pub proxy: Option<ProxyConfig>,
    pub snapshotter: Option<shoal_snapshotter::Setup>,
}

#[derive(Args)]
pub struct SchedulerArgs {
    /// TOML config file (see packaging/scheduler.toml).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Reads and checks the config (with the command line's overrides), says `config ok` or
    /// what is wrong, and exits: the settings, not the files they name (cluster credentials,
    /// CAs) nor the addresses.
    #[arg(long)]
    pub check: bool,
    /// Overrides `listen` (gRPC).
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Overrides `[api] listen` (the HTTP API: preheat jobs, Harbor's providers and webhooks).
    #[arg(long)]
    pub http_listen: Option<SocketAddr>,
    /// `/healthz` and `/metrics`.
    #[arg(long, default_value = "0.0.0.0:4002")]
    pub metrics_addr: SocketAddr,
}

impl SchedulerArgs {
    pub fn config(&self) -> anyhow::Result<SchedulerConfig> {
        let mut c = match &self.config {
            Some(path) => SchedulerConfig::load(path)?,
            None => SchedulerConfig::default(),
        };
        c.listen = self.listen.unwrap_or(c.listen);
        c.api.listen = self.http_listen.unwrap_or(c.api.listen);
        Ok(c)
    }
}

#[derive(Args)]
pub struct UpArgs {
    #[command(flatten)]
    pub daemon: DaemonArgs,
    /// The embedded scheduler's gRPC address.
    #[arg(long, default_value = "0.0.0.0:8002")]
    pub scheduler_listen: SocketAddr,
    /// The embedded scheduler's HTTP API (preheat jobs, Harbor's providers and webhooks); its
    /// tokens and jobs are kept in `<data_dir>/api/`.
    #[arg(long, default_value = "0.0.0.0:8080")]
    pub http_listen: SocketAddr,
}

impl UpArgs {
    /// The embedded scheduler's config, and the one daemon's (it uses the local scheduler unless
    /// told otherwise, and serves the mirror; `up` makes it the seed too).
    pub fn configs(self) -> anyhow::Result<(SchedulerConfig, NodeConfigs)> {
        let mut daemon = self.daemon;
        if daemon.schedulers.is_empty() {
            daemon.schedulers = vec![format!("http://127.0.0.1:{}", self.scheduler_listen.port())];
        }
        let node = daemon.config(false, true)?;
        let scheduler = SchedulerConfig {
            listen: self.scheduler_listen,
            cluster: up_cluster(&node.daemon)?,
            api: shoal_scheduler::api::ApiConfig {
                listen: self.http_listen,
                dir: Some(node.daemon.data_dir.join("api")),
                ..Default::default()
            },
            ..Default::default()
        };
        Ok((scheduler, node))
    }
}

/// `shoal up`'s cluster credentials, for its scheduler and its node alike: a cluster of its own,
/// made in the cluster directory at the first start (and its certificate renewed there), unless
/// the config names other files, says `insecure`, or the directory holds a certificate from
/// another cluster's CA (no `ca.key` beside it).
fn up_cluster(daemon: &DaemonConfig) -> anyhow::Result<ClusterConfig> {
    let c = &daemon.cluster;
    let paths = daemon.cluster_paths();
    let dir = daemon.cluster_dir();
    let given = c.ca_cert.is_some() || c.cert.is_some() || c.key.is_some();
    let foreign = paths.cert.exists() && !dir.join("ca.key").exists();
    if !c.insecure && !given && !foreign {
        let id = daemon.swarm.host_id.clone().unwrap_or_else(pki::hostname);
        let me = Member::new(id, [Role::Seed, Role::Scheduler]);
        let (_, issued) = pki::provision(&dir, &me)?;
        if issued {
            tracing::info!(dir = %dir.display(), member = %me, "made this host's cluster identity");
        }
    }
    Ok(ClusterConfig {
        dir: Some(dir),
        ca_cert: Some(paths.ca_cert),
        cert: Some(paths.cert),
        key: Some(paths.key),
        insecure: c.insecure,
    })
}

#[derive(Args)]
pub struct GetArgs {
    pub url: String,
    /// Output file, or `-` for standard output.
    #[arg(short = 'O', long = "output")]
    pub output: PathBuf,
    /// Request header sent to the origin, `'Name: value'` (repeatable).
    #[arg(long = "header", short = 'H')]
    pub headers: Vec<String>,
    /// Expected digest of the whole content (`sha256:<hex>`); on mismatch nothing is written.
    #[arg(long)]
    pub digest: Option<Digest>,
    /// Makes the task distinct from other downloads of the same URL.
    #[arg(long)]
    pub tag: Option<String>,
    #[arg(long)]
    pub application: Option<String>,
    /// Query parameters ignored when identifying the task (replaces the default list).
    #[arg(long, value_delimiter = ',')]
    pub filtered_query_params: Option<Vec<String>>,
    #[arg(long, env = "SHOAL_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// The daemon's socket (default: `<data dir>/shoal.sock`).
    #[arg(long)]
    pub socket: Option<PathBuf>,
    /// No progress bar, and no summary line at the end.
    #[arg(long, short = 'q')]
    pub quiet: bool,
    /// Ends with a JSON object on standard output instead of the summary line (size,
    /// seconds, bytes per second, bytes by source, task id).
    #[arg(long)]
    pub json: bool,
}

impl GetArgs {
    /// The download the command line asks for.
    pub fn options(self) -> anyhow::Result<GetOptions> {
        let headers = self
            .headers
            .iter()
            .map(|h| {
                h.split_once(':')
                    .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
            })
            .collect::<Option<Vec<_>>>()
            .context("--header must look like 'Name: value'")?;
        let data_dir = self.data_dir.unwrap_or_else(default_data_dir);
        if self.json && self.output.as_os_str() == "-" {
            anyhow::bail!(
                "--json writes to standard output, which -O - gives the content: use -O FILE"
            );
        }
        Ok(GetOptions {
            socket: self.socket.unwrap_or_else(|| socket_in(&data_dir)),
            data_dir,
            output: if self.output.as_os_str() == "-" {
                Output::Stdout
            } else {
                Output::File(self.output)
            },
            progress: !self.quiet,
            report: match (self.quiet, self.json) {
                (_, true) => Report::Json,
                (true, false) => Report::Nothing,
                (false, false) => Report::Line,
            },
            origin: Default::default(),
            request: GetRequest {
                url: self.url,
                headers,
                tag: self.tag,
                application: self.application,
                filtered_query_params: self.filtered_query_params,
                digest: self.digest,
                output: None,
            },
        })
    }
}
