//! `shoal-node`: the node daemon on every host (`shoal daemon`).
//!
//! * [`Daemon`] opens the data directory's store, downloads with [`shoal_p2p::Downloader`],
//!   serves the local API on a unix socket (`api`; its types and client are
//!   [`shoal_p2p::api`]), and in a swarm runs the upload server ([`upload`], port 4000) and stays
//!   attached to every scheduler, handing seed jobs to the seed role when it is one.
//! * [`admin`] serves `/healthz` and `/metrics` (port 4002) for every Shoal process.
//! * [`get`] is `shoal get`: through the local daemon when one runs, standalone otherwise.
//! * [`summary`] is the line `get`, `pull` and `preheat` end with.
//! * [`DaemonConfig`] is the daemon's configuration (`packaging/daemon.toml`).
//!
//! The binary composes the node with the registry mirror (`shoal-mirror`) and the seed
//! (`shoal-seed`) in one process; this crate knows neither.
//!
//! ```no_run
//! # async fn demo() -> shoal_p2p::Result<()> {
//! let mut registry = prometheus_client::registry::Registry::default();
//! let daemon = shoal_node::Daemon::build(Default::default(), None, &mut registry).await?;
//! let socket = daemon.bind_socket().await?;
//! daemon.serve(socket, std::future::pending()).await
//! # }
//! ```

pub mod admin;
mod api;
pub mod config;
mod daemon;
pub mod gc;
pub mod get;
mod output;
pub mod summary;
pub mod upload;

pub use config::DaemonConfig;
pub use daemon::Daemon;
