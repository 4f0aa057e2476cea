//! Which daemon to talk to: `-H`/`--host`, else `$ORCA_HOST`, else
//! `$DOCKER_HOST`, else the default orcad socket.

use std::path::PathBuf;

use crate::error::{CliError, Result};

/// orcad's default API socket.
pub const DEFAULT_HOST: &str = "unix:///run/orca/orca.sock";

/// A parsed daemon address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DaemonHost {
    /// `unix:///path/to.sock` (or a bare absolute path).
    Unix(PathBuf),
    /// `tcp://host:port` (plain HTTP, no TLS).
    Tcp(String),
}

impl DaemonHost {
    /// Parses docker's `-H` syntax (unix:// and tcp:// only).
    pub fn parse(s: &str) -> Result<DaemonHost> {
        let s = s.trim();
        if let Some(p) = s.strip_prefix("unix://") {
            if p.is_empty() {
                return Err(CliError::Usage(format!(
                    "invalid host: {s}: empty socket path"
                )));
            }
            return Ok(DaemonHost::Unix(PathBuf::from(p)));
        }
        if s.starts_with('/') {
            return Ok(DaemonHost::Unix(PathBuf::from(s)));
        }
        if let Some(a) = s.strip_prefix("tcp://") {
            let a = a.trim_end_matches('/');
            if a.is_empty() {
                return Err(CliError::Usage(format!("invalid host: {s}: empty address")));
            }
            let a = if a.contains(':') {
                a.to_string()
            } else {
                format!("{a}:2375")
            };
            return Ok(DaemonHost::Tcp(a));
        }
        let scheme = s.split("://").next().unwrap_or(s);
        Err(CliError::Usage(format!(
            "unable to parse docker host `{s}`: unsupported protocol scheme {scheme:?} (orca supports unix:// and tcp://)"
        )))
    }

    /// The address as docker prints it (`unix:///run/orca/orca.sock`).
    pub fn display(&self) -> String {
        match self {
            DaemonHost::Unix(p) => format!("unix://{}", p.display()),
            DaemonHost::Tcp(a) => format!("tcp://{a}"),
        }
    }
}

/// The host chosen by precedence: flag, `ORCA_HOST`, `DOCKER_HOST`, default.
/// Empty values count as unset (as docker treats an empty `DOCKER_HOST`).
pub fn select_host(
    flag: Option<&str>,
    orca_host_env: Option<&str>,
    docker_host_env: Option<&str>,
) -> Result<DaemonHost> {
    let chosen = [flag, orca_host_env, docker_host_env]
        .into_iter()
        .flatten()
        .find(|s| !s.trim().is_empty())
        .unwrap_or(DEFAULT_HOST);
    DaemonHost::parse(chosen)
}

/// [`select_host`] reading the process environment.
pub fn select_host_from_env(flag: Option<&str>) -> Result<DaemonHost> {
    let orca = std::env::var("ORCA_HOST").ok();
    let docker = std::env::var("DOCKER_HOST").ok();
    select_host(flag, orca.as_deref(), docker.as_deref())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precedence_is_flag_then_orca_then_docker_then_default() {
        let u = |p: &str| DaemonHost::Unix(PathBuf::from(p));
        assert_eq!(
            select_host(Some("unix:///a.sock"), Some("unix:///b"), Some("unix:///c")).unwrap(),
            u("/a.sock")
        );
        assert_eq!(
            select_host(None, Some("unix:///b"), Some("unix:///c")).unwrap(),
            u("/b")
        );
        assert_eq!(select_host(None, None, Some("unix:///c")).unwrap(), u("/c"));
        assert_eq!(
            select_host(None, Some(""), Some("")).unwrap(),
            u("/run/orca/orca.sock")
        );
        assert_eq!(
            select_host(None, None, None).unwrap().display(),
            DEFAULT_HOST
        );
    }

    #[test]
    fn parses_tcp_and_rejects_other_schemes() {
        assert_eq!(
            DaemonHost::parse("tcp://127.0.0.1:2375").unwrap(),
            DaemonHost::Tcp("127.0.0.1:2375".into())
        );
        assert_eq!(
            DaemonHost::parse("tcp://127.0.0.1").unwrap(),
            DaemonHost::Tcp("127.0.0.1:2375".into())
        );
        assert_eq!(
            DaemonHost::parse("/x/y.sock").unwrap(),
            DaemonHost::Unix("/x/y.sock".into())
        );
        let e = DaemonHost::parse("ssh://me@box").unwrap_err();
        assert!(e.to_string().contains("unsupported protocol scheme"), "{e}");
        assert!(DaemonHost::parse("unix://").is_err());
    }
}
