//! What `shoal-p2p` can fail at, and whose fault it is.

use std::path::{Path, PathBuf};

use crate::digest::Digest;
use crate::id::TaskId;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Whose fault an error is: callers choose between retrying, another source, and giving up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The origin answered badly or not at all.
    Origin,
    /// This host: disk, metadata, configuration.
    Local,
    /// The request itself (bad URL, wrong digest given).
    Request,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot {what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("metadata store: {0}")]
    Metadata(Box<dyn std::error::Error + Send + Sync>),
    #[error(
        "data directory {dir} is in use by another shoal process (is `shoal daemon` running with it?)"
    )]
    StoreBusy { dir: PathBuf },
    #[error("task {task} was removed while in use")]
    TaskGone { task: TaskId },
    /// As many downloads run in the background as may (`[limits] max_downloads`).
    #[error("{running} downloads are running already")]
    Busy { running: usize },
    #[error("origin answered {status} for {url}")]
    OriginStatus { url: String, status: u16 },
    #[error("origin request to {url} failed: {source}")]
    OriginTransport { url: String, source: reqwest::Error },
    #[error("origin {url} broke the HTTP contract: {detail}")]
    OriginProtocol { url: String, detail: String },
    #[error("content of task {task} has digest {actual}, expected {expected}")]
    DigestMismatch {
        task: TaskId,
        expected: Digest,
        actual: Digest,
    },
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// Content only the swarm provides (a layer's gzip index) that the swarm does not have.
    #[error("the swarm has no task {task} ({why})")]
    NotInSwarm { task: TaskId, why: &'static str },
    #[error("config: {0}")]
    Config(String),
}

impl Error {
    pub fn io(what: &'static str, path: impl AsRef<Path>, source: std::io::Error) -> Self {
        Error::Io {
            what,
            path: path.as_ref().to_owned(),
            source,
        }
    }

    pub fn fault(&self) -> Fault {
        match self {
            Error::Io { .. }
            | Error::Metadata(_)
            | Error::StoreBusy { .. }
            | Error::TaskGone { .. }
            | Error::Busy { .. }
            | Error::Config(_) => Fault::Local,
            Error::OriginStatus { .. }
            | Error::OriginTransport { .. }
            | Error::OriginProtocol { .. }
            | Error::NotInSwarm { .. } => Fault::Origin,
            // The bytes came from the origin, but the digest the request named is what disagrees.
            Error::DigestMismatch { .. } | Error::InvalidRequest(_) => Fault::Request,
        }
    }

    /// Whether trying the same thing again may succeed: timeouts, broken connections, 5xx, 429.
    pub fn retryable(&self) -> bool {
        match self {
            Error::OriginStatus { status, .. } => {
                *status >= 500 || *status == 429 || *status == 408
            }
            Error::OriginTransport { source, .. } => !source.is_builder() && !source.is_redirect(),
            Error::OriginProtocol { .. } => true,
            _ => false,
        }
    }

    /// The origin's HTTP status, when the origin refused.
    pub fn origin_status(&self) -> Option<u16> {
        match self {
            Error::OriginStatus { status, .. } => Some(*status),
            _ => None,
        }
    }
}

macro_rules! metadata_errors {
    ($($t:ty),*) => {$(
        impl From<$t> for Error {
            fn from(e: $t) -> Self {
                Error::Metadata(Box::new(redb::Error::from(e)))
            }
        }
    )*};
}
metadata_errors!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);
