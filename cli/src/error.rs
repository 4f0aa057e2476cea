//! The error type of the CLI library and the exit codes docker uses.

/// Exit code of a docker-style usage or daemon error in `run`/`create`.
pub const EXIT_DAEMON_ERROR: i32 = 125;
/// Exit code when the container command cannot be executed.
pub const EXIT_CANNOT_EXECUTE: i32 = 126;
/// Exit code when the container command was not found.
pub const EXIT_NOT_FOUND: i32 = 127;

/// Everything that makes an `orca` command fail.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The daemon socket could not be reached.
    #[error("Cannot connect to the Orca daemon at {host}. Is orcad running?")]
    Connect {
        host: String,
        #[source]
        source: std::io::Error,
    },
    /// The daemon answered with an error status; `message` is its `message`.
    #[error("Error response from daemon: {message}")]
    Daemon { status: u16, message: String },
    /// Bad command line input (exit 125, like docker's flag errors).
    #[error("{0}")]
    Usage(String),
    /// The daemon said something we did not expect.
    #[error("unexpected response from daemon: {0}")]
    Protocol(String),
    /// A --format template could not be parsed or rendered.
    #[error("template: {0}")]
    Template(String),
    /// A message printed as is, with the given exit code.
    #[error("{message}")]
    Status { message: String, code: i32 },
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Http(#[from] hyper::Error),
    #[error("invalid JSON from daemon: {0}")]
    Json(#[from] serde_json::Error),
}

impl CliError {
    /// The process exit code docker would use for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            CliError::Usage(_) => EXIT_DAEMON_ERROR,
            CliError::Status { code, .. } => *code,
            _ => 1,
        }
    }

    /// True for a daemon 404 (no such container / image / exec).
    pub fn is_not_found(&self) -> bool {
        matches!(self, CliError::Daemon { status: 404, .. })
    }
}

/// Result alias of the CLI library.
pub type Result<T, E = CliError> = std::result::Result<T, E>;
