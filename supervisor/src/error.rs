//! The supervisor's error type and its mapping onto gRPC status codes, the
//! way containerd's `errdefs.ToGRPC` does (clients such as `ctr` branch on
//! NotFound / AlreadyExists / Unavailable).

use thiserror::Error;

/// Errors of the supervisor's stores and services.
#[derive(Debug, Error)]
pub enum Error {
    #[error("{0}: not found")]
    NotFound(String),
    #[error("{0}: already exists")]
    AlreadyExists(String),
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("failed precondition: {0}")]
    FailedPrecondition(String),
    #[error("unavailable: {0}")]
    Unavailable(String),
    #[error("not implemented by orca-supervisor: {0}")]
    Unimplemented(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("metadata store: {0}")]
    Metadata(String),
    #[error("{0}")]
    Internal(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An I/O error with what was being done.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Error {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::NotFound(_))
            || matches!(self, Error::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
    }
}

/// Adds context to `std::io::Result`s.
pub trait IoContext<T> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| Error::io(what(), e))
    }
}

impl From<Error> for tonic::Status {
    fn from(e: Error) -> tonic::Status {
        use tonic::Status;
        let msg = e.to_string();
        match e {
            Error::NotFound(_) => Status::not_found(msg),
            Error::AlreadyExists(_) => Status::already_exists(msg),
            Error::InvalidArgument(_) => Status::invalid_argument(msg),
            Error::FailedPrecondition(_) => Status::failed_precondition(msg),
            Error::Unavailable(_) => Status::unavailable(msg),
            Error::Unimplemented(_) => Status::unimplemented(msg),
            Error::Io { ref source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
                Status::not_found(msg)
            }
            Error::Io { .. } | Error::Metadata(_) | Error::Internal(_) => Status::internal(msg),
        }
    }
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for Error {
            fn from(e: $t) -> Error {
                Error::Metadata(e.to_string())
            }
        }
    )*};
}
from_redb!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

impl From<prost::DecodeError> for Error {
    fn from(e: prost::DecodeError) -> Error {
        Error::Metadata(format!("corrupt record: {e}"))
    }
}
