//! The shim's error type and its mapping onto ttrpc status codes.

use ttrpc::Code;

/// Everything that can go wrong inside the shim. Each variant maps onto the
/// gRPC code containerd expects (`errdefs` semantics).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}: not found")]
    NotFound(String),
    #[error("{0}: already exists")]
    AlreadyExists(String),
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("failed precondition: {0}")]
    FailedPrecondition(String),
    #[error("{0}: not implemented")]
    Unimplemented(String),
    #[error("runtime {cmd} failed: {msg}")]
    Runtime { cmd: String, msg: String },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Other(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Error {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    pub fn errno(context: impl Into<String>, e: nix::errno::Errno) -> Error {
        Error::io(context, std::io::Error::from_raw_os_error(e as i32))
    }

    /// The ttrpc status code for this error.
    pub fn code(&self) -> Code {
        match self {
            Error::NotFound(_) => Code::NOT_FOUND,
            Error::AlreadyExists(_) => Code::ALREADY_EXISTS,
            Error::InvalidArgument(_) => Code::INVALID_ARGUMENT,
            Error::FailedPrecondition(_) => Code::FAILED_PRECONDITION,
            Error::Unimplemented(_) => Code::UNIMPLEMENTED,
            Error::Runtime { .. } | Error::Other(_) => Code::UNKNOWN,
            Error::Io { source, .. } => match source.kind() {
                std::io::ErrorKind::NotFound => Code::NOT_FOUND,
                std::io::ErrorKind::InvalidInput => Code::INVALID_ARGUMENT,
                _ => Code::INTERNAL,
            },
        }
    }
}

impl From<Error> for ttrpc::Error {
    fn from(e: Error) -> ttrpc::Error {
        ttrpc::Error::RpcStatus(ttrpc::get_status(e.code(), e.to_string()))
    }
}
