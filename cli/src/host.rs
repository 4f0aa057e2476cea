//! Which daemon to talk to: `-H`/`--host`, else `$ORCA_HOST`, else
//! `$DOCKER_HOST`, else the default orcad socket; and, for tcp, TLS as the
//! docker CLI does it (`--tlsverify`/`$DOCKER_TLS_VERIFY`, `--tlscacert`,
//! `--tlscert`, `--tlskey`, defaults in `$DOCKER_CERT_PATH` or `~/.docker`).

use std::path::PathBuf;
use std::sync::OnceLock;

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
    /// `tcp://host:port` with TLS: the server verified against `ca`, our
    /// client certificate presented when given.
    Tls {
        addr: String,
        ca: PathBuf,
        cert: Option<PathBuf>,
        key: Option<PathBuf>,
    },
}

/// The TLS command-line flags (docker's global `--tls*` flags).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsFlags {
    pub tls: bool,
    pub tlsverify: bool,
    pub tlscacert: Option<PathBuf>,
    pub tlscert: Option<PathBuf>,
    pub tlskey: Option<PathBuf>,
}

static TLS_FLAGS: OnceLock<TlsFlags> = OnceLock::new();

/// Records the global TLS flags (once, before the command runs).
pub fn set_tls_flags(f: TlsFlags) {
    let _ = TLS_FLAGS.set(f);
}

/// Turns a tcp host into a TLS one when `--tlsverify` or
/// `$DOCKER_TLS_VERIFY` asks for it. `cert_path` is `$DOCKER_CERT_PATH`
/// (else `~/.docker`). `--tls` without verification is refused: orca does
/// not talk TLS to a server it cannot verify.
pub fn apply_tls(
    host: DaemonHost,
    flags: &TlsFlags,
    tls_verify_env: Option<&str>,
    cert_path: Option<PathBuf>,
) -> Result<DaemonHost> {
    let verify = flags.tlsverify || tls_verify_env.is_some_and(|v| !v.is_empty());
    let DaemonHost::Tcp(addr) = host else {
        return Ok(host);
    };
    if !verify {
        if flags.tls {
            return Err(CliError::Usage(
                "--tls without --tlsverify is not supported by orca: use --tlsverify with --tlscacert".into(),
            ));
        }
        return Ok(DaemonHost::Tcp(addr));
    }
    let dir = cert_path.unwrap_or_else(|| {
        std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_default()
            .join(".docker")
    });
    let pick = |flag: &Option<PathBuf>, file: &str| -> Option<PathBuf> {
        match flag {
            Some(p) => Some(p.clone()),
            None => Some(dir.join(file)).filter(|p| p.exists()),
        }
    };
    let ca = pick(&flags.tlscacert, "ca.pem").ok_or_else(|| {
        CliError::Usage(format!(
            "--tlsverify needs a CA certificate: --tlscacert or {}",
            dir.join("ca.pem").display()
        ))
    })?;
    let cert = pick(&flags.tlscert, "cert.pem");
    let key = pick(&flags.tlskey, "key.pem");
    if cert.is_some() != key.is_some() {
        return Err(CliError::Usage(
            "a TLS client certificate needs both --tlscert and --tlskey".into(),
        ));
    }
    Ok(DaemonHost::Tls {
        addr,
        ca,
        cert,
        key,
    })
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
            DaemonHost::Tcp(a) | DaemonHost::Tls { addr: a, .. } => format!("tcp://{a}"),
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

/// [`select_host`] reading the process environment, then [`apply_tls`]
/// with the recorded TLS flags.
pub fn select_host_from_env(flag: Option<&str>) -> Result<DaemonHost> {
    let orca = std::env::var("ORCA_HOST").ok();
    let docker = std::env::var("DOCKER_HOST").ok();
    let host = select_host(flag, orca.as_deref(), docker.as_deref())?;
    let flags = TLS_FLAGS.get().cloned().unwrap_or_default();
    let verify = std::env::var("DOCKER_TLS_VERIFY").ok();
    let cert_path = std::env::var_os("DOCKER_CERT_PATH")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from);
    apply_tls(host, &flags, verify.as_deref(), cert_path)
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

    #[test]
    fn tls_from_flags_and_env() {
        let dir = tempfile::tempdir().unwrap();
        let tcp = || DaemonHost::Tcp("127.0.0.1:1".into());
        // No verification asked: plain tcp; --tls alone refused.
        assert_eq!(
            apply_tls(tcp(), &TlsFlags::default(), None, None).unwrap(),
            tcp()
        );
        let e = apply_tls(
            tcp(),
            &TlsFlags {
                tls: true,
                ..Default::default()
            },
            None,
            None,
        )
        .unwrap_err();
        assert!(e.to_string().contains("--tlsverify"), "{e}");
        // DOCKER_TLS_VERIFY without a CA file anywhere.
        let e = apply_tls(
            tcp(),
            &TlsFlags::default(),
            Some("1"),
            Some(dir.path().into()),
        )
        .unwrap_err();
        assert!(e.to_string().contains("ca.pem"), "{e}");
        // DOCKER_CERT_PATH defaults.
        for f in ["ca.pem", "cert.pem", "key.pem"] {
            std::fs::write(dir.path().join(f), "x").unwrap();
        }
        let h = apply_tls(
            tcp(),
            &TlsFlags::default(),
            Some("1"),
            Some(dir.path().into()),
        )
        .unwrap();
        assert_eq!(
            h,
            DaemonHost::Tls {
                addr: "127.0.0.1:1".into(),
                ca: dir.path().join("ca.pem"),
                cert: Some(dir.path().join("cert.pem")),
                key: Some(dir.path().join("key.pem")),
            }
        );
        assert_eq!(h.display(), "tcp://127.0.0.1:1");
        // Unix hosts ignore TLS.
        let u = DaemonHost::Unix("/x.sock".into());
        assert_eq!(
            apply_tls(u.clone(), &TlsFlags::default(), Some("1"), None).unwrap(),
            u
        );
        // A flag without its pair.
        let e = apply_tls(
            tcp(),
            &TlsFlags {
                tlsverify: true,
                tlscacert: Some("/ca".into()),
                tlscert: Some("/c".into()),
                ..Default::default()
            },
            None,
            Some(std::path::PathBuf::from("/nonexistent")),
        )
        .unwrap_err();
        assert!(e.to_string().contains("--tlskey"), "{e}");
    }
}
