//! `shoal-seed`: the peer that talks to the origin for the swarm (`shoal seed`, and the seed
//! inside `shoal up`).
//!
//! A scheduler sends a seed a job when a task's first downloader appears and nobody holds it:
//! [`Seed`] (a [`JobHandler`]) turns the job into a download with the requester's credentials
//! (in memory only) and runs it with the node's downloader, which fetches the origin in parallel
//! ranges, hashes each piece as it arrives and announces it at once. The node daemon
//! (`shoal-node`) runs the seed's store, upload server and scheduler links; the binary gives it a
//! `Seed`. The plain HTTP origin client stays in `shoal-p2p`, because every node must be able to
//! fall back to the origin itself.
//!
//!
//! [`Registry`] is the seed's registry client: token auth (Bearer challenges answered with a
//! user and password, or a ready `Authorization` header such as a pull token Harbor hands a
//! preheat; in memory only) and manifest resolution, a tag or a
//! digest to the layers of every platform (or the ones asked for), every manifest checked
//! against its digest. Harbor preheat and the gzip index of lazy pulling build on it.
//!
//! ```
//! // What the binary hands the node daemon to make it a seed.
//! let seed: std::sync::Arc<dyn shoal_p2p::JobHandler> = std::sync::Arc::new(shoal_seed::Seed);
//! # let _ = seed;
//! ```

/// Entry points for the fuzz targets in `fuzz/` (built only with `--cfg fuzzing`).
#[cfg(fuzzing)]
#[doc(hidden)]
pub mod fuzz {
    /// A registry's `WWW-Authenticate` header.
    pub fn www_authenticate(value: &str) {
        crate::registry::fuzz_challenge(value);
    }

    /// A registry's manifest or index.
    pub fn manifest(body: &[u8]) {
        crate::registry::fuzz_manifest(body);
    }
}

mod error;
pub mod gzindex;
mod job;
pub mod registry;

pub use error::{Error, Result};
pub use job::Seed;
pub use registry::{Credentials, Registry};
pub use shoal_p2p::JobHandler;
