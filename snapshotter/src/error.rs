//! What a snapshot operation can fail with, and the gRPC status containerd receives for each:
//! containerd acts on the code (`AlreadyExists` ends a remote prepare; `NotFound` makes it
//! prepare; `FailedPrecondition` keeps a parent that has children).

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("snapshot {0:?} not found")]
    NotFound(String),
    #[error("snapshot {0:?} already exists")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("snapshot metadata: {0}")]
    Metadata(String),
    /// The remote path could not read a layer (the plain path then serves it).
    #[error("{0}")]
    Remote(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(action: &'static str, path: &std::path::Path, source: std::io::Error) -> Self {
        Error::Io {
            action,
            path: path.to_owned(),
            source,
        }
    }
}

macro_rules! metadata_errors {
    ($($t:ty),*) => {$(
        impl From<$t> for Error {
            fn from(e: $t) -> Self {
                Error::Metadata(e.to_string())
            }
        }
    )*};
}

metadata_errors!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    serde_json::Error
);

impl From<Error> for tonic::Status {
    fn from(e: Error) -> Self {
        let message = e.to_string();
        match e {
            Error::NotFound(_) => tonic::Status::not_found(message),
            Error::AlreadyExists(_) => tonic::Status::already_exists(message),
            Error::FailedPrecondition(_) => tonic::Status::failed_precondition(message),
            Error::InvalidArgument(_) => tonic::Status::invalid_argument(message),
            Error::Io { .. } | Error::Metadata(_) | Error::Remote(_) => {
                tonic::Status::internal(message)
            }
        }
    }
}
