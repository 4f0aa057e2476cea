//! The crate's error type. Registry status codes map to variants: 401/403 →
//! [`Error::Unauthorized`], 404 → [`Error::NotFound`], anything else
//! unexpected → [`Error::Registry`]; unparsable answers →
//! [`Error::InvalidResponse`].

/// Errors of the registry client. The `Display` texts are meant for users
/// (orcad sends them as Docker's `message`).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A malformed image reference (Docker's wording: "invalid reference format…").
    #[error("{0}")]
    InvalidReference(String),
    /// A bad argument from the caller (bad digest, bad mirror URL, bad auth header).
    #[error("{0}")]
    InvalidArgument(String),
    /// Bad hosts configuration (unreadable CA file, bad certificate).
    #[error("{0}")]
    Config(String),
    /// The registry refused the credentials (401) or the access (403).
    #[error("{message}")]
    Unauthorized { status: u16, message: String },
    /// 404: repository, manifest or blob unknown.
    #[error("{0}")]
    NotFound(String),
    /// TLS handshake or certificate verification failed.
    #[error("{0}")]
    Tls(String),
    /// TCP connect, DNS or connection-level failure.
    #[error("{0}")]
    Connect(String),
    /// The registry answered an unexpected status (5xx, 400, …).
    #[error("{message}")]
    Registry { status: u16, message: String },
    /// The registry answered something unparsable (garbage JSON, missing header).
    #[error("{0}")]
    InvalidResponse(String),
    /// Content did not match its descriptor.
    #[error("{what}: digest mismatch: expected {expected}, got {actual}")]
    DigestMismatch {
        what: String,
        expected: String,
        actual: String,
    },
    /// Content was shorter or longer than its descriptor says.
    #[error("{what}: size mismatch: expected {expected} bytes, got {actual}")]
    SizeMismatch {
        what: String,
        expected: u64,
        actual: u64,
    },
    /// No manifest in an index matches the requested platform.
    #[error("no matching manifest for {0} in the manifest list entries")]
    NoMatchingPlatform(String),
    /// A media type, digest algorithm or auth scheme this client does not handle.
    #[error("{0}")]
    Unsupported(String),
    /// The caller's data source (e.g. containerd Content.Read) failed while pushing.
    #[error("{0}")]
    Source(String),
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The registry's HTTP status when the error comes from one.
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::Unauthorized { status, .. } | Error::Registry { status, .. } => Some(*status),
            Error::NotFound(_) => Some(404),
            _ => None,
        }
    }

    /// 404 from the registry.
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::NotFound(_))
    }

    /// 401/403 from the registry (or a token server).
    pub fn is_unauthorized(&self) -> bool {
        matches!(self, Error::Unauthorized { .. })
    }

    /// Errors of the caller's input (reference, arguments): a 400 for an API.
    pub fn is_invalid_input(&self) -> bool {
        matches!(self, Error::InvalidReference(_) | Error::InvalidArgument(_))
    }
}
