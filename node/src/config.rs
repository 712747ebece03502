//! The node daemon's configuration (`daemon.toml`): data directory, local API, admin address,
//! origin and swarm settings. The file's `[proxy]` table belongs to the registry mirror.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use shoal_p2p::api::{default_data_dir, socket_in};
use shoal_p2p::cluster::{ClusterConfig, Paths};
use shoal_p2p::net::Limits;

use crate::gc::GcConfig;
use shoal_p2p::{Error, OriginConfig, Result, SwarmConfig};

/// The daemon's configuration (TOML). Every field has a default.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct DaemonConfig {
    /// Where task content and metadata live.
    pub data_dir: PathBuf,
    /// The local API socket; `<data_dir>/shoal.sock` when unset.
    pub socket: Option<PathBuf>,
    /// `/healthz` and `/metrics`.
    pub metrics_addr: SocketAddr,
    /// How long in-flight requests may take to finish at shutdown.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// Local API requests served at once; more wait.
    pub max_requests: usize,
    /// How often a download's progress is reported to local clients.
    #[serde(with = "humantime_serde")]
    pub progress_interval: Duration,
    pub origin: OriginConfig,
    pub swarm: SwarmConfig,
    /// Cluster identity for the swarm (the upload server, the schedulers).
    pub cluster: ClusterConfig,
    /// Bounds on the servers' connections (the upload server, the mirror).
    pub limits: Limits,
    /// When the store's tasks are removed.
    pub gc: GcConfig,
}

impl Default for DaemonConfig {
    fn default() -> Self {
        DaemonConfig {
            data_dir: default_data_dir(),
            socket: None,
            metrics_addr: SocketAddr::from(([0, 0, 0, 0], 4002)),
            shutdown_grace: Duration::from_secs(10),
            max_requests: 256,
            progress_interval: Duration::from_millis(200),
            origin: OriginConfig::default(),
            swarm: SwarmConfig::default(),
            cluster: ClusterConfig::default(),
            limits: Limits::default(),
            gc: GcConfig::default(),
        }
    }
}

impl DaemonConfig {
    /// Reads and validates a TOML file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io("read config", path, e))?;
        Self::from_toml(&text).map_err(|e| Error::Config(format!("{}: {e}", path.display())))
    }

    /// Parses a daemon config file. Its `[proxy]` and `[snapshotter]` tables belong to the
    /// registry mirror and the snapshotter, which read the same file; they are skipped here.
    pub fn from_toml(text: &str) -> Result<Self> {
        let mut table: toml::Table =
            toml::from_str(text).map_err(|e| Error::Config(e.to_string()))?;
        // The mirror's and the snapshotter's tables are theirs (`shoal-mirror`,
        // `shoal-snapshotter`), read from the same file.
        table.remove("proxy");
        table.remove("snapshotter");
        let config: DaemonConfig = table
            .try_into()
            .map_err(|e: toml::de::Error| Error::Config(e.to_string()))?;
        config.validate()
    }

    pub fn validate(self) -> Result<Self> {
        self.origin.validate().map_err(Error::Config)?;
        self.swarm.validate().map_err(Error::Config)?;
        self.limits.validate().map_err(Error::Config)?;
        self.gc.validate().map_err(Error::Config)?;
        if self.max_requests == 0 {
            return Err(Error::Config("max_requests must be at least 1".into()));
        }
        if self.progress_interval.is_zero() {
            return Err(Error::Config(
                "progress_interval must be greater than zero".into(),
            ));
        }
        Ok(self)
    }

    /// Where this host's cluster credentials are (`cluster/` in the data directory unless the
    /// config says otherwise).
    pub fn cluster_paths(&self) -> Paths {
        self.cluster.paths(&self.cluster_dir())
    }

    /// The `[cluster]` table's directory, or `cluster/` in the data directory.
    pub fn cluster_dir(&self) -> PathBuf {
        self.cluster
            .dir
            .clone()
            .unwrap_or_else(|| self.data_dir.join("cluster"))
    }

    pub fn socket_path(&self) -> PathBuf {
        self.socket
            .clone()
            .unwrap_or_else(|| socket_in(&self.data_dir))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_config_shows_the_defaults() {
        let example = include_str!("../../packaging/daemon.toml");
        let expected = DaemonConfig {
            data_dir: "/var/lib/shoal".into(),
            ..DaemonConfig::default()
        };
        assert_eq!(DaemonConfig::from_toml(example).unwrap(), expected);
    }

    #[test]
    fn config_defaults_overrides_and_refusals() {
        let c = DaemonConfig::from_toml("").unwrap();
        assert_eq!(c.metrics_addr.port(), 4002);
        assert_eq!(c.socket_path(), c.data_dir.join("shoal.sock"));
        let c = DaemonConfig::from_toml(
            "data_dir = \"/d\"\nshutdown_grace = \"3s\"\n[origin]\nconcurrency = 4\nread_timeout = \"5s\"\n",
        )
        .unwrap();
        assert_eq!(c.data_dir, PathBuf::from("/d"));
        assert_eq!(c.shutdown_grace, Duration::from_secs(3));
        assert_eq!(c.origin.concurrency, 4);
        assert!(
            DaemonConfig::from_toml("data_dri = \"/d\"").is_err(),
            "unknown keys are refused"
        );
        assert!(DaemonConfig::from_toml("[origin]\nconcurrency = 0").is_err());
        // A config written for an earlier version, with the seed flag, still loads.
        let old = DaemonConfig::from_toml("[swarm]\nseed = false\n").unwrap();
        assert_eq!(old.swarm.legacy_seed, Some(false));
        assert!(
            DaemonConfig::from_toml("shutdown_grace = 5").is_err(),
            "durations are typed"
        );
    }
}
