//! `shoal-p2p`: the core every Shoal service shares. No daemon wiring, no CLI.
//!
//! * Names: [`TaskId`] says which downloads are the same content ([`id`]); [`Digest`] names
//!   content ([`digest`]); [`Layout`] cuts a task into pieces ([`piece`]); [`Bitmap`] says which.
//! * [`store`]: [`Store`] keeps task content and per-piece digests under one data directory,
//!   crash-safe; [`AsyncStore`] is its face for async code; [`Holdings`] tells what unfinished
//!   tasks hold, piece by piece.
//! * [`origin`]: [`Origin`] fetches from HTTP(S) origins (stat, ranges, redirects, timeouts,
//!   retries). Every node can fall back to it.
//! * [`peer`]: the peer wire protocol (a piece's path on a peer's upload server, and the client
//!   that fetches and checks it).
//! * [`swarm`]: the scheduler protocol's client ([`Swarm`]); [`proto`] is the protocol itself;
//!   [`seeding`] is how a node hands seed jobs to the seed role.
//! * [`download`]: [`Downloader`], the pipeline from a request to a complete, verified task,
//!   taking pieces from peers and the origin; [`Downloader::read`] streams a task while it
//!   downloads.
//! * [`api`]: the node's local API (unix socket): its request and answer types and a client,
//!   so `shoal get`, the mirror and the snapshotter need no node internals.
//! * [`cluster`]: cluster identity, mutual TLS between the members of a cluster.
//! * [`http1`] and [`net`]: the plain HTTP/1.1 fast path and the accept loop the servers share.
//!
//! ```no_run
//! # async fn demo() -> shoal_p2p::Result<()> {
//! use shoal_p2p::{AsyncStore, Downloader, DownloadRequest, Metrics, Origin, OriginConfig, OriginRequest, Progress};
//! let store = AsyncStore::open("/tmp/shoal-data")?;
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

pub mod api;
pub mod bitmap;
pub mod cluster;
pub mod digest;
pub mod download;
pub mod error;
pub mod http1;
pub mod id;
pub mod metrics;
pub mod net;
pub mod origin;
pub mod peer;
pub mod piece;
pub mod proto;
pub mod rate;
pub mod relay;
pub mod seeding;
pub mod store;
pub mod swarm;

/// Entry points for the fuzz targets in `fuzz/` (built only with `--cfg fuzzing`): each takes
/// what the network may send and must return, whatever it is.
#[cfg(fuzzing)]
#[doc(hidden)]
pub mod fuzz {
    /// A request head on the upload server, and the piece path in it.
    pub fn upload_request(data: &[u8]) {
        crate::http1::fuzz_head(data);
        if let Ok(text) = std::str::from_utf8(data) {
            let _ = crate::peer::parse_piece_path(text);
        }
    }

    /// A task as a member names it: its id, and its URL checked against the id.
    pub fn task(id: &str, url: &str, options: &[u8]) {
        let _ = id.parse::<crate::TaskId>();
        let task = crate::proto::Task {
            id: id.to_owned(),
            url: url.to_owned(),
            id_options: <crate::proto::IdOptions as prost::Message>::decode(options).ok(),
            ..Default::default()
        };
        let _ = task.checked_url();
    }
}

pub use bitmap::Bitmap;
pub use digest::{Algorithm, Digest};
pub use download::{ChunkReader, DownloadRequest, Downloaded, Downloader, Progress, Reading};
pub use error::{Error, Fault, Result};
pub use id::{IdOptions, TaskId};
pub use metrics::{BySource, Metrics, Source};
pub use origin::{Origin, OriginConfig, OriginRequest, Stat};
pub use piece::Layout;
pub use seeding::{JobHandler, Preheat};
pub use store::{AsyncStore, Holdings, Store, TaskMeta, TaskState};
pub use swarm::{Swarm, SwarmConfig};

/// Installs ring as the process's rustls crypto provider (once; later calls do nothing).
/// Every TLS client and server in Shoal needs it, tests included.
pub fn install_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // Err means another provider was installed first, which is just as good.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}
