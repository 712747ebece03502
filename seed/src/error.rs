//! What the seed's registry client can fail at, and whose fault it is.

use shoal_p2p::Digest;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The image reference cannot be parsed.
    #[error("invalid image reference {0:?}")]
    Reference(String),
    /// The registry could not be reached, or broke off.
    #[error("registry request to {url} failed: {source}")]
    Transport { url: String, source: reqwest::Error },
    /// The registry answered with an error status (401/403: the credentials do not allow it).
    #[error("registry answered {status} for {url}")]
    Status { url: String, status: u16 },
    /// The registry's token endpoint refused or answered nonsense.
    #[error("token from {realm}: {detail}")]
    Token { realm: String, detail: String },
    /// A manifest or index that cannot be used: bad JSON, an unknown media type, too large.
    #[error("manifest {url}: {detail}")]
    Manifest { url: String, detail: String },
    /// The registry's bytes do not have the digest they were asked by, or said they have.
    #[error("manifest {url} has digest {actual}, expected {expected}")]
    DigestMismatch {
        url: String,
        expected: Digest,
        actual: Digest,
    },
}

impl Error {
    /// The registry's HTTP status, when it refused.
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}
