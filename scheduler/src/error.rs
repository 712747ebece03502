//! What the scheduler can fail at, and the one place a failure becomes a gRPC status.

use shoal_p2p::id::ParseTaskIdError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read config {path}: {source}")]
    ConfigRead {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("config: {0}")]
    Config(String),
    /// A request left out a field the protocol requires.
    #[error("{0} is required")]
    Missing(&'static str),
    #[error("host.id must be 1-256 bytes")]
    HostId,
    #[error("host.upload_addr must be ip:port")]
    UploadAddr,
    #[error(transparent)]
    TaskId(#[from] ParseTaskIdError),
    /// A task's URL that does not hash to its id.
    #[error("the task's URL is not the URL of its id")]
    TaskUrl,
    /// A content length no task can have.
    #[error("content length {0} is over the largest a task may have")]
    ContentLength(u64),
    /// A bitmap or digest list longer than any task's pieces.
    #[error("the piece set is larger than any task's")]
    PieceSet,
    /// A connection without a member's certificate (cluster TLS on, yet none).
    #[error("not a member of the cluster")]
    NotMember,
    /// A member speaking for another host.
    #[error("{member} may not speak for host {claimed:?}")]
    NotThatHost { member: String, claimed: String },
    /// A member attaching as a seed without a seed's certificate.
    #[error("{0} is not a seed (its certificate says so): seed jobs carry registry credentials")]
    NotSeed(String),
    /// A host watched a task before attaching.
    #[error("attach the host before watching tasks")]
    NotAttached,
}

impl From<Error> for tonic::Status {
    fn from(e: Error) -> Self {
        let message = e.to_string();
        match e {
            Error::Missing(_)
            | Error::HostId
            | Error::UploadAddr
            | Error::TaskId(_)
            | Error::ContentLength(_)
            | Error::PieceSet
            | Error::TaskUrl => tonic::Status::invalid_argument(message),
            Error::NotAttached => tonic::Status::failed_precondition(message),
            Error::NotMember => tonic::Status::unauthenticated(message),
            Error::NotThatHost { .. } | Error::NotSeed(_) => {
                tonic::Status::permission_denied(message)
            }
            Error::ConfigRead { .. } | Error::Config(_) => tonic::Status::internal(message),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_map_to_the_codes_hosts_act_on() {
        let code = |e: Error| tonic::Status::from(e).code();
        assert_eq!(code(Error::Missing("host")), tonic::Code::InvalidArgument);
        assert_eq!(code(Error::NotAttached), tonic::Code::FailedPrecondition);
        assert_eq!(code(Error::NotMember), tonic::Code::Unauthenticated);
        assert_eq!(
            code(Error::NotSeed("h".into())),
            tonic::Code::PermissionDenied
        );
        let bad_id = "nope".parse::<shoal_p2p::TaskId>().unwrap_err();
        assert_eq!(code(Error::TaskId(bad_id)), tonic::Code::InvalidArgument);
    }
}
