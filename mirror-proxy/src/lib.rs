//! `shoal-mirror`: the registry mirror and HTTP(S) proxy on every node (port 4001).
//!
//! * **Mirror mode**: `/v2/…` requests with no host (containerd `hosts.toml`, also as the
//!   catch-all `_default`; Docker `registry-mirrors`). The upstream is `X-Dragonfly-Registry`,
//!   else containerd's `?ns=`, else `proxy.default_registry`.
//! * **Forward proxy**: absolute-URL requests, and `CONNECT`, tunnelled untouched unless the
//!   target matches `proxy.hijack.hosts`: then TLS ends here with a certificate from Shoal's CA
//!   ([`Ca`]) and the requests inside are handled like the others.
//! * A GET of `/v2/<name>/blobs/sha256:<hex>` becomes a swarm task (its id is the digest) once
//!   the registry accepted the client's own credentials for it (a HEAD, cached briefly per
//!   credential and resource): a blob held in the swarm is never served to a client that could
//!   not read it from the registry. The credentials travel with the task in memory only.
//!   Everything else goes to the upstream as it is, with the upstream's `Host`.

/// Entry points for the fuzz targets in `fuzz/` (built only with `--cfg fuzzing`).
#[cfg(fuzzing)]
#[doc(hidden)]
pub mod fuzz {
    /// A client's request path (after `/v2`) and its `Range` header against a content length.
    pub fn request(path: &str, range: &[u8], len: u64) {
        let _ = crate::route::classify(path);
        let _ = crate::route::query_without_ns(Some(path));
        if let Ok(value) = http::HeaderValue::from_bytes(range) {
            let _ = crate::answer::parse_range(Some(&value), len);
        }
    }
}

mod access;
mod answer;
pub mod ca;
pub mod config;
mod error;
mod lazy;
mod manifests;
mod metrics;
mod proxy;
mod route;
mod server;

pub use ca::{Ca, CaError};
pub use config::ProxyConfig;
pub use error::Error;
pub use server::{Proxy, default_ca_paths};
