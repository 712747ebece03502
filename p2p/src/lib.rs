//! `shoal-p2p`: the core every Shoal service shares.
//!
//! * [`TaskId`] says which downloads are the same content ([`id`]); [`Digest`] names content.
//! * [`Layout`] cuts a task into pieces ([`piece`]).
//! * [`Store`] keeps task content and per-piece digests under one data directory, crash-safe.
//! * [`Origin`] fetches from HTTP(S) origins: stat, ranges, redirects, timeouts, retries.
//! * [`Downloader`] is the pipeline from a URL to a complete, verified task in the store.
//! * [`Downloader::read`] streams a task's bytes while it downloads ([`reader`]).
//! * [`daemon`] is the node daemon: the local API on a unix socket, `/healthz` and `/metrics`.
//! * [`http1`] serves plain HTTP/1.1 GETs with file bodies sent straight from the file (the
//!   upload server's pieces, the mirror's complete blobs), and hands everything else to hyper.
//!
//! ```no_run
//! # async fn demo() -> shoal_p2p::Result<()> {
//! use std::sync::Arc;
//! use shoal_p2p::{Downloader, DownloadRequest, Metrics, Origin, OriginConfig, OriginRequest, Progress, Store};
//! let store = Arc::new(Store::open("/tmp/shoal-data")?);
//! let downloader = Downloader::new(store, Origin::new(OriginConfig::default())?, Metrics::default());
//! let req = DownloadRequest {
//!     origin: OriginRequest::new("http://127.0.0.1:8000/big.bin".parse().expect("valid URL")),
//!     id_options: Default::default(),
//!     digest: None,
//!     task_id: None,
//! };
//! let done = downloader.download(&req, &Progress::default()).await?;
//! println!("{} is at {}", done.task, done.path.display());
//! # Ok(()) }
//! ```

pub mod admin;
pub mod api;
pub mod bitmap;
pub mod daemon;
pub mod digest;
pub mod download;
pub mod error;
mod fetch;
pub mod get;
pub mod http1;
pub mod id;
pub mod metrics;
pub mod net;
pub mod origin;
pub mod output;
pub mod piece;
mod prefix;
pub mod proto;
pub mod reader;
pub mod store;
pub mod swarm;
pub mod upload;
mod writer;

pub use bitmap::Bitmap;
pub use daemon::{Daemon, DaemonConfig};
pub use digest::{Algorithm, Digest};
pub use download::{DownloadRequest, Downloaded, Downloader, Progress};
pub use error::{Error, Fault, Result};
pub use id::{IdOptions, TaskId};
pub use metrics::{Metrics, Source};
pub use origin::{Origin, OriginConfig, OriginRequest, Stat};
pub use piece::Layout;
pub use store::{Store, TaskMeta, TaskState};

/// Installs ring as the process's rustls crypto provider (once; later calls do nothing).
/// Every TLS client and server in Shoal needs it, tests included.
pub fn install_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // Err means another provider was installed first, which is just as good.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}
