//! The `[snapshotter]` table of a node's config file, and what it makes to run.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::Remote;

/// The `[snapshotter]` table of a node's config file (`shoal up`, `shoal daemon`); every field
/// has a default.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SnapshotterConfig {
    /// Whether the node runs the snapshotter: `shoal up` does unless this is false, `shoal
    /// daemon` only when it is true.
    pub enabled: Option<bool>,
    /// Where the snapshots live (default `<data_dir>/snapshotter`).
    pub root: Option<PathBuf>,
    /// The socket containerd's `proxy_plugins.shoal.address` names (default
    /// `<data_dir>/snapshotter.sock`).
    pub socket: Option<PathBuf>,
    /// The registry mirror layers prepared with CRI's labels are read through (default: the
    /// node's own); `none`: containerd fetches every layer itself.
    pub mirror: Option<String>,
    /// Docker's config file, for registries' credentials (default `$DOCKER_CONFIG/config.json`,
    /// else `~/.docker/config.json`).
    pub docker_config: Option<PathBuf>,
    /// containerd's socket: CRI's image service, called on the snapshotter's socket (the
    /// kubelet's `--image-service-endpoint`), is forwarded there, and the pulls' credentials
    /// are kept for the remote path (default `/run/containerd/containerd.sock`; `none`: the
    /// snapshotter's socket serves no image service).
    pub containerd: Option<PathBuf>,
    /// Whether a layer whose index the swarm holds is mounted lazily (FUSE) instead of
    /// unpacked (default true; off without `/dev/fuse`).
    pub lazy: Option<bool>,
    /// How long after a lazy layer's first read, on the first host to run it, its reads are
    /// recorded for the next hosts' prefetch (default 15s).
    #[serde(with = "humantime_serde")]
    pub record_for: Option<std::time::Duration>,
}

/// containerd's socket where it usually is.
pub const DEFAULT_CONTAINERD: &str = "/run/containerd/containerd.sock";

/// What a snapshotter runs with.
pub struct Setup {
    pub root: PathBuf,
    pub socket: PathBuf,
    pub remote: Option<Remote>,
    /// containerd's socket, where CRI's image service is forwarded.
    pub containerd: Option<PathBuf>,
}

impl Setup {
    /// Opens the snapshots and binds the socket (failing here, before anything runs); the
    /// future serves them until `shutdown`. `mirror_port`: the port the node's mirror was
    /// given, when its config said port 0.
    pub fn start(
        self,
        mirror_port: Option<u16>,
        shutdown: impl std::future::Future<Output = ()> + Send,
    ) -> crate::Result<impl std::future::Future<Output = std::io::Result<()>>> {
        let Setup {
            root,
            socket,
            mut remote,
            containerd,
        } = self;
        if let (Some(r), Some(port)) = (remote.as_mut(), mirror_port)
            && r.mirror.port() == Some(0)
        {
            let _ = r.mirror.set_port(Some(port));
        }
        let snapshotter = crate::Snapshotter::open(&root)
            .map_err(|e| crate::Error::Metadata(format!("snapshots in {}: {e}", root.display())))?;
        if let Err(e) = crate::remote::sweep(&snapshotter) {
            tracing::warn!(error = %e, "could not remove the layers a stop left half unpacked");
        }
        let listener = crate::bind(&socket)
            .map_err(|e| crate::Error::io("bind snapshotter socket", &socket, e))?;
        tracing::info!(socket = %socket.display(), root = %root.display(), "snapshotter ready");
        Ok(async move {
            crate::serve(
                snapshotter,
                remote,
                containerd.as_deref(),
                listener,
                shutdown,
            )
            .await
        })
    }
}

impl SnapshotterConfig {
    /// The `[snapshotter]` table of a daemon config file (defaults when absent).
    pub fn from_daemon_toml(text: &str) -> Result<Self, String> {
        let mut table: toml::Table = toml::from_str(text).map_err(|e| e.to_string())?;
        match table.remove("snapshotter") {
            Some(t) => t
                .try_into()
                .map_err(|e: toml::de::Error| format!("[snapshotter]: {e}")),
            None => Ok(SnapshotterConfig::default()),
        }
    }

    /// Paths under `data_dir` unless set; the remote path through `mirror` unless the config
    /// names another (or `none`), or there is none.
    pub fn setup(&self, data_dir: &Path, mirror: Option<&str>) -> crate::Result<Setup> {
        let mirror = match self.mirror.as_deref().or(mirror) {
            None | Some("none") => None,
            Some(url) => Some(url.parse::<url::Url>().map_err(|e| {
                crate::Error::InvalidArgument(format!("snapshotter mirror {url:?}: {e}"))
            })?),
        };
        let docker_config = self.docker_config.clone().or_else(|| {
            let dir = std::env::var_os("DOCKER_CONFIG")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker")))?;
            Some(dir.join("config.json"))
        });
        Ok(Setup {
            root: self
                .root
                .clone()
                .unwrap_or_else(|| data_dir.join("snapshotter")),
            socket: self
                .socket
                .clone()
                .unwrap_or_else(|| data_dir.join("snapshotter.sock")),
            remote: mirror
                .map(|m| {
                    let mut remote = Remote::new(m, docker_config)?;
                    remote.lazy = self.lazy.unwrap_or(true) && fuse_available();
                    if let Some(d) = self.record_for {
                        remote.set_record_for(d);
                    }
                    Ok::<_, crate::Error>(remote)
                })
                .transpose()?,
            containerd: match self.containerd.as_deref() {
                None => Some(DEFAULT_CONTAINERD.into()),
                Some(p) if p == Path::new("none") => None,
                Some(p) => Some(p.to_owned()),
            },
        })
    }
}

/// Whether this host can mount FUSE file systems (a container may lack the device).
fn fuse_available() -> bool {
    let there = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
        .is_ok();
    if !there {
        tracing::warn!("no usable /dev/fuse: layers are unpacked, never mounted lazily");
    }
    there
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_defaults_to_the_data_dir_and_the_nodes_mirror() {
        let c = SnapshotterConfig::from_daemon_toml("data_dir = \"/d\"\n[proxy]\nenabled = true\n")
            .unwrap();
        assert_eq!(c, SnapshotterConfig::default());
        let s = c
            .setup(Path::new("/d"), Some("http://127.0.0.1:4001"))
            .unwrap();
        assert_eq!(s.root, Path::new("/d/snapshotter"));
        assert_eq!(s.socket, Path::new("/d/snapshotter.sock"));
        assert_eq!(s.remote.unwrap().mirror.as_str(), "http://127.0.0.1:4001/");
        let off =
            SnapshotterConfig::from_daemon_toml("[snapshotter]\nmirror = \"none\"\n").unwrap();
        assert!(
            off.setup(Path::new("/d"), Some("http://x"))
                .unwrap()
                .remote
                .is_none()
        );
        assert!(SnapshotterConfig::from_daemon_toml("[snapshotter]\nbogus = 1\n").is_err());
        let bad = SnapshotterConfig::from_daemon_toml("[snapshotter]\nmirror = \"::\"\n").unwrap();
        assert!(bad.setup(Path::new("/d"), None).is_err());
        let example = include_str!("../../packaging/daemon.toml");
        assert_eq!(
            SnapshotterConfig::from_daemon_toml(example).unwrap(),
            SnapshotterConfig::default(),
            "the example shows the defaults"
        );
    }
}
