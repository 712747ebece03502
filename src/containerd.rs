//! The containerd commands: `shoal pull`, `shoal install`, `shoal snapshotter`.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use shoal_p2p::api::{LocalClient, default_data_dir, socket_in};

#[derive(Args)]
pub struct PullArgs {
    /// The image: `registry.example/team/app:v1`, `alpine` (Docker Hub), `…@sha256:…`.
    pub image: String,
    /// containerd's socket (as `ctr --address`).
    #[arg(long, default_value = "/run/containerd/containerd.sock")]
    pub address: PathBuf,
    /// containerd's namespace (`k8s.io` for Kubernetes' images).
    #[arg(long, default_value = "default")]
    pub namespace: String,
    /// `os/architecture[/variant]`; default this machine's.
    #[arg(long)]
    pub platform: Option<String>,
    /// `user:password` for the registry (else Docker's config file, else anonymous).
    #[arg(long)]
    pub user: Option<String>,
    /// The snapshotter containerd knows Shoal's by (`proxy_plugins.<name>`).
    #[arg(long, default_value = "shoal")]
    pub snapshotter: String,
    /// Unpack every layer, even one the swarm has an index of (by default such a layer is
    /// mounted lazily: the container starts before the layer is here).
    #[arg(long)]
    pub eager: bool,
    /// The local node (its mirror serves the image; its status counts the bytes).
    #[arg(long, env = "SHOAL_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// The node's registry mirror.
    #[arg(long, default_value = "http://127.0.0.1:4001")]
    pub mirror: String,
    /// The shoal snapshotter's socket (default `<data_dir>/snapshotter.sock`): the layers are
    /// made there before containerd is asked for them.
    #[arg(long)]
    pub snapshotter_socket: Option<PathBuf>,
    /// Ends with a JSON object (image, digest, layers, bytes, seconds, bytes by source)
    /// instead of the summary line.
    #[arg(long)]
    pub json: bool,
}

impl PullArgs {
    pub async fn run(self) -> anyhow::Result<()> {
        use shoal_snapshotter::pull;
        let platform = match &self.platform {
            Some(p) => p.parse().map_err(|e: String| anyhow::anyhow!(e))?,
            None => {
                let arch = match std::env::consts::ARCH {
                    "x86_64" => "amd64",
                    "aarch64" => "arm64",
                    other => other,
                };
                format!("linux/{arch}")
                    .parse()
                    .map_err(|e: String| anyhow::anyhow!(e))?
            }
        };
        let host = shoal_snapshotter::client::registry_of(&self.image)
            .with_context(|| format!("{:?} is not an image reference", self.image))?;
        let credentials = match &self.user {
            Some(u) => {
                let (user, password) = u.split_once(':').context("--user is user:password")?;
                shoal_seed::registry::Credentials::Basic {
                    user: user.into(),
                    password: password.into(),
                }
            }
            None => std::env::var_os("DOCKER_CONFIG")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker")))
                .and_then(|dir| {
                    shoal_snapshotter::client::docker_credentials(&dir.join("config.json"), &host)
                })
                .unwrap_or_default(),
        };
        let data_dir = self.data_dir.clone().unwrap_or_else(default_data_dir);
        let node = LocalClient::new(socket_in(&data_dir));
        let stage_at = self
            .snapshotter_socket
            .clone()
            .unwrap_or_else(|| data_dir.join("snapshotter.sock"));
        let before = node.status().await.ok();
        let started = std::time::Instant::now();
        let p = pull::Pull {
            address: self.address,
            namespace: self.namespace,
            reference: self.image,
            platform,
            credentials,
            snapshotter: self.snapshotter,
            mirror: self.mirror.parse().context("--mirror")?,
            stage_at: Some(stage_at),
            lend: self.user.is_some(),
            eager: self.eager,
        };
        let bars = Bars::new(LocalClient::new(socket_in(&data_dir)));
        let pulled = pull::pull(&p, |event| match event {
            pull::Event::Layers(layers) => bars.start(layers),
            pull::Event::Done(l) => bars.done(l),
        })
        .await;
        bars.stop();
        let pulled = pulled.map_err(|e| anyhow::anyhow!(e))?;
        // The node's counters moved by this pull (and by whatever else it did meanwhile).
        let by_source = match (before, node.status().await) {
            (Some(before), Ok(after)) => {
                let moved = |k: &str| {
                    let was = before.downloaded.get(k).copied().unwrap_or(0);
                    after
                        .downloaded
                        .get(k)
                        .copied()
                        .unwrap_or(0)
                        .saturating_sub(was)
                };
                Some(shoal_p2p::BySource {
                    origin: moved("origin"),
                    peer: moved("peer"),
                    seed: moved("seed"),
                    cache: moved("cache"),
                })
            }
            _ => None,
        };
        let summary = shoal_node::summary::Summary {
            bytes: pulled.layers.iter().map(|l| l.size).sum(),
            elapsed: started.elapsed(),
            by_source,
        };
        if self.json {
            let mut v = summary.json();
            v["image"] = pulled.name.into();
            v["digest"] = pulled.digest.into();
            v["layers"] = pulled.layers.len().into();
            v["lazy_layers"] = pulled
                .layers
                .iter()
                .filter(|l| l.by_snapshotter)
                .count()
                .into();
            println!("{v}");
        } else {
            println!(
                "{} ({}): {} layers, {summary}",
                pulled.name,
                pulled.digest,
                pulled.layers.len()
            );
        }
        Ok(())
    }
}

/// One progress bar per layer (on a terminal), moved by what the node holds of it; a line per
/// layer done otherwise.
struct Bars {
    all: indicatif::MultiProgress,
    layers: LayerBars,
    /// Polls the node for the bars (on a terminal only).
    poll: Option<tokio::task::JoinHandle<()>>,
}

/// Each layer's digest and bar.
type LayerBars = std::sync::Arc<std::sync::Mutex<Vec<(String, indicatif::ProgressBar)>>>;

impl Bars {
    fn new(node: LocalClient) -> Bars {
        use std::io::IsTerminal as _;
        let terminal = std::io::stderr().is_terminal();
        let all = match terminal {
            true => indicatif::MultiProgress::new(),
            false => {
                indicatif::MultiProgress::with_draw_target(indicatif::ProgressDrawTarget::hidden())
            }
        };
        let layers = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let watched = std::sync::Arc::clone(&layers);
        let poll = terminal.then(|| tokio::spawn(async move { Bars::follow(node, watched).await }));
        Bars { all, layers, poll }
    }

    /// Moves the bars by the bytes the node holds of each layer, until stopped.
    async fn follow(node: LocalClient, watched: LayerBars) {
        loop {
            tokio::time::sleep(std::time::Duration::from_millis(250)).await;
            let Ok(tasks) = node.tasks().await else {
                continue;
            };
            let held: std::collections::HashMap<String, u64> =
                tasks.into_iter().map(|t| (t.task, t.stored)).collect();
            let bars: &Vec<(String, indicatif::ProgressBar)> = &watched.lock().expect("bars lock");
            for (digest, bar) in bars {
                if let Some(&n) = held.get(digest)
                    && !bar.is_finished()
                {
                    bar.set_position(n);
                }
            }
        }
    }

    fn start(&self, layers: &[(String, u64)]) {
        let style = indicatif::ProgressStyle::with_template(
            "{prefix} {bar:30} {bytes:>10}/{total_bytes:<10} {msg}",
        )
        .expect("static progress template is valid");
        let mut bars = self.layers.lock().expect("bars lock");
        for (digest, size) in layers {
            let bar = self
                .all
                .add(indicatif::ProgressBar::new(*size).with_style(style.clone()));
            bar.set_prefix(digest.chars().take(19).collect::<String>());
            bars.push((digest.clone(), bar));
        }
    }

    fn done(&self, l: &shoal_snapshotter::pull::Layer) {
        let how = match l.by_snapshotter {
            true => "from the swarm",
            false => "unpacked here",
        };
        let bars = self.layers.lock().expect("bars lock");
        match bars
            .iter()
            .find(|(d, b)| *d == l.digest && !b.is_finished())
        {
            Some((_, bar)) if !bar.is_hidden() => {
                bar.set_position(l.size);
                bar.finish_with_message(format!("{:.2} s {how}", l.seconds));
            }
            found => {
                if let Some((_, bar)) = found {
                    bar.finish();
                }
                println!(
                    "{}  {:>10} bytes  {:6.2} s  {how}",
                    l.digest, l.size, l.seconds
                );
            }
        }
    }

    fn stop(&self) {
        if let Some(poll) = &self.poll {
            poll.abort();
        }
    }
}

#[derive(Args)]
pub struct InstallArgs {
    /// `containerd`, `docker` or `podman` (CRI-O reads the same `registries.conf`); or
    /// `systemd`: the units of `shoal daemon`, `seed`, `scheduler` and `snapshotter`, and the
    /// configs they read where there are none.
    pub runtime: InstallRuntime,
    /// The runtime's config file (default `/etc/containerd/config.toml`,
    /// `/etc/docker/daemon.json`, `/etc/containers/registries.conf`).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// The node to wire to: its snapshotter socket is `<data_dir>/snapshotter.sock`.
    #[arg(long, env = "SHOAL_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// The node's registry mirror.
    #[arg(long, default_value = "http://127.0.0.1:4001")]
    pub mirror: String,
    /// Restore what the files held before (their backups).
    #[arg(long)]
    pub uninstall: bool,
    /// Show the change; write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// systemd: the binary the units run (default: this one).
    #[arg(long)]
    pub bin: Option<PathBuf>,
    /// systemd: where the units go.
    #[arg(long, default_value = "/etc/systemd/system")]
    pub unit_dir: PathBuf,
    /// systemd: where the units' configs are (`daemon.toml`, `scheduler.toml`).
    #[arg(long, default_value = "/etc/shoal")]
    pub etc_dir: PathBuf,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum InstallRuntime {
    Containerd,
    Docker,
    Podman,
    Systemd,
}

impl InstallArgs {
    pub fn run(self) -> anyhow::Result<()> {
        use shoal_snapshotter::install::{self, Install, Runtime};
        let (runtime, default_config) = match self.runtime {
            InstallRuntime::Containerd => (Runtime::Containerd, "/etc/containerd/config.toml"),
            InstallRuntime::Docker => (Runtime::Docker, "/etc/docker/daemon.json"),
            InstallRuntime::Podman => (Runtime::Podman, "/etc/containers/registries.conf"),
            InstallRuntime::Systemd => return self.systemd(),
        };
        let data_dir = self.data_dir.clone().unwrap_or_else(default_data_dir);
        let wire = Install {
            runtime,
            config: self.config.clone().unwrap_or_else(|| default_config.into()),
            mirror: self.mirror.clone(),
            socket: data_dir.join("snapshotter.sock"),
        };
        let changes = install::plan(&wire, self.uninstall)?;
        if changes.is_empty() {
            println!("{}: nothing to change", wire.config.display());
            return Ok(());
        }
        self.show_and_apply(&changes, "restart the runtime to use them")
    }

    /// `shoal install systemd`.
    fn systemd(self) -> anyhow::Result<()> {
        let bin = match &self.bin {
            Some(b) => b.clone(),
            None => crate::systemd::this_binary()?,
        };
        let files = crate::systemd::files(&bin, &self.unit_dir, &self.etc_dir)?;
        let changes = shoal_snapshotter::install::plan_owned(&files, self.uninstall)?;
        if changes.is_empty() {
            println!("{}: nothing to change", self.unit_dir.display());
            return Ok(());
        }
        self.show_and_apply(
            &changes,
            "then `systemctl daemon-reload` and `systemctl enable --now shoal-daemon` (or \
             shoal-seed, shoal-scheduler, shoal-snapshotter)",
        )
    }

    /// Prints the changes as a diff, and makes them unless `--dry-run`.
    fn show_and_apply(
        &self,
        changes: &[shoal_snapshotter::install::Change],
        then: &str,
    ) -> anyhow::Result<()> {
        use shoal_snapshotter::install;
        for c in changes {
            print!("{}", c.diff());
        }
        if self.dry_run {
            return Ok(());
        }
        install::apply(changes, self.uninstall)?;
        println!(
            "{} {} file(s); {then}{}",
            if self.uninstall {
                "Restored"
            } else {
                "Changed"
            },
            changes.len(),
            if self.uninstall {
                ""
            } else {
                " (`--uninstall` restores the backups)"
            }
        );
        Ok(())
    }
}

#[derive(Args)]
pub struct SnapshotterArgs {
    /// The node's data directory: the snapshots go to `<data_dir>/snapshotter/`, the socket is
    /// `<data_dir>/snapshotter.sock` unless told otherwise.
    #[arg(long, env = "SHOAL_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Where the snapshots and their metadata live.
    #[arg(long)]
    pub root: Option<PathBuf>,
    /// The socket containerd's `proxy_plugins.shoal.address` names.
    #[arg(long)]
    pub socket: Option<PathBuf>,
    /// `/healthz` and `/metrics`.
    #[arg(long, default_value = "127.0.0.1:4003")]
    pub metrics_addr: SocketAddr,
    /// The local node's registry mirror: layers prepared with CRI's labels are read through it
    /// (from the swarm). `none`: containerd fetches every layer itself.
    #[arg(long, default_value = "http://127.0.0.1:4001")]
    pub mirror: String,
    /// Docker's config file, for registries' credentials (default: `$DOCKER_CONFIG/config.json`,
    /// else `~/.docker/config.json`).
    #[arg(long)]
    pub docker_config: Option<PathBuf>,
    /// containerd's socket: CRI's image service on the snapshotter's socket (the kubelet's
    /// `--image-service-endpoint`) is forwarded there, the pulls' credentials kept in memory
    /// for the layers they prepare. `none`: no image service.
    #[arg(long, default_value = shoal_snapshotter::DEFAULT_CONTAINERD)]
    pub containerd: PathBuf,
    /// Unpack every layer: never mount one lazily (FUSE), even when the swarm has its index.
    #[arg(long)]
    pub eager: bool,
    /// On the first host to run a lazy layer, how long after its first read the reads are
    /// recorded and published as the layer's prefetch list (default 15s).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub record_for: Option<std::time::Duration>,
}

impl SnapshotterArgs {
    pub fn setup(&self) -> anyhow::Result<shoal_snapshotter::Setup> {
        let data_dir = self
            .data_dir
            .clone()
            .unwrap_or_else(shoal_p2p::api::default_data_dir);
        let config = shoal_snapshotter::SnapshotterConfig {
            enabled: Some(true),
            root: self.root.clone(),
            socket: self.socket.clone(),
            mirror: Some(self.mirror.clone()),
            docker_config: self.docker_config.clone(),
            containerd: Some(self.containerd.clone()),
            lazy: Some(!self.eager),
            record_for: self.record_for,
        };
        Ok(config.setup(&data_dir, None)?)
    }
}
