//! Engine errors and their Docker API status codes.

use http::StatusCode;

/// An error answered to a Docker API client as `{"message": …}` with the
/// status code Docker uses for that kind of failure.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// 404: no such container/image/object.
    #[error("{0}")]
    NotFound(String),
    /// 409: name in use, container running, …
    #[error("{0}")]
    Conflict(String),
    /// 403: an operation on a predefined or in-use object.
    #[error("{0}")]
    Forbidden(String),
    /// 400: bad parameter or body.
    #[error("{0}")]
    BadRequest(String),
    /// 501: an endpoint or option orcad does not implement yet.
    #[error("{0}")]
    NotImplemented(String),
    /// 304: nothing to do (e.g. stopping a stopped container).
    #[error("not modified")]
    NotModified,
    /// 500: anything else.
    #[error("{0}")]
    Internal(String),
}

impl EngineError {
    /// The HTTP status code for this error.
    pub fn status(&self) -> StatusCode {
        match self {
            EngineError::NotFound(_) => StatusCode::NOT_FOUND,
            EngineError::Conflict(_) => StatusCode::CONFLICT,
            EngineError::Forbidden(_) => StatusCode::FORBIDDEN,
            EngineError::BadRequest(_) => StatusCode::BAD_REQUEST,
            EngineError::NotImplemented(_) => StatusCode::NOT_IMPLEMENTED,
            EngineError::NotModified => StatusCode::NOT_MODIFIED,
            EngineError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Shorthand for an internal error with context.
    pub fn internal(what: impl std::fmt::Display) -> EngineError {
        EngineError::Internal(what.to_string())
    }

    /// Maps a containerd gRPC status, prefixing `ctx`.
    pub fn grpc(ctx: &str, s: tonic::Status) -> EngineError {
        let msg = format!("{ctx}: {}", s.message());
        match s.code() {
            tonic::Code::NotFound => EngineError::NotFound(msg),
            tonic::Code::AlreadyExists | tonic::Code::FailedPrecondition => {
                EngineError::Conflict(msg)
            }
            tonic::Code::InvalidArgument => EngineError::BadRequest(msg),
            tonic::Code::Unimplemented => EngineError::NotImplemented(msg),
            _ => EngineError::Internal(msg),
        }
    }
}

impl From<std::io::Error> for EngineError {
    fn from(e: std::io::Error) -> Self {
        EngineError::Internal(e.to_string())
    }
}

/// Result alias for the engine.
pub type Result<T> = std::result::Result<T, EngineError>;
