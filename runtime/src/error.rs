//! The runtime's error type. Messages follow runc's wording where a caller (containerd's runc
//! shim, docker) matches on them: "container does not exist", "container not running",
//! "executable file not found in $PATH", ...

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("container does not exist")]
    NotFound,
    #[error("container with given ID already exists")]
    Exists,
    #[error("invalid container id {0:?}: {1}")]
    InvalidId(String, &'static str),
    #[error("container not running")]
    NotRunning,
    #[error("cannot {op} container {id} in state {status}")]
    WrongState {
        op: &'static str,
        id: String,
        status: String,
    },
    #[error("invalid config.json: {0}")]
    Config(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{context}: {source}")]
    Sys {
        context: String,
        #[source]
        source: nix::Error,
    },
    #[error(transparent)]
    Cgroup(#[from] crate::cgroups::CgroupError),
    #[error(transparent)]
    Seccomp(#[from] crate::seccomp::SeccompError),
    #[error(transparent)]
    Capability(#[from] crate::capabilities::CapabilityError),
    #[error("{0}")]
    Hook(String),
    /// An error reported by the container's init process during setup.
    #[error("{0}")]
    Init(String),
    #[error("{0}")]
    Other(String),
    #[error("state of container in {path}: {msg}")]
    State { path: PathBuf, msg: String },
}

pub type Result<T, E = RuntimeError> = std::result::Result<T, E>;

/// Attach context to io and nix errors: `fs::read(p).ctx(|| format!("read {p:?}"))`.
pub trait Context<T> {
    fn ctx<S: Into<String>>(self, f: impl FnOnce() -> S) -> Result<T>;
}

impl<T> Context<T> for std::result::Result<T, std::io::Error> {
    fn ctx<S: Into<String>>(self, f: impl FnOnce() -> S) -> Result<T> {
        self.map_err(|source| RuntimeError::Io {
            context: f().into(),
            source,
        })
    }
}

impl<T> Context<T> for std::result::Result<T, nix::Error> {
    fn ctx<S: Into<String>>(self, f: impl FnOnce() -> S) -> Result<T> {
        self.map_err(|source| RuntimeError::Sys {
            context: f().into(),
            source,
        })
    }
}

impl RuntimeError {
    pub fn other(msg: impl Into<String>) -> Self {
        RuntimeError::Other(msg.into())
    }
}
