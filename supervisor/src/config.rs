//! The supervisor's configuration: containerd-style TOML (`root`, `state`,
//! `[grpc] address`, `[ttrpc] address`, `[debug] level`, `[registry]` for
//! the transfer service, and Orca's own top-level `default_snapshotter`;
//! other keys are ignored), overridden by command-line flags.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{Error, Result};

pub const DEFAULT_ROOT: &str = "/var/lib/orca/supervisor";
pub const DEFAULT_STATE: &str = "/run/orca/supervisor";
pub const DEFAULT_ADDRESS: &str = "/run/orca/supervisor/supervisor.sock";

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ConfigFile {
    pub root: Option<PathBuf>,
    pub state: Option<PathBuf>,
    pub grpc: AddressSection,
    pub ttrpc: AddressSection,
    pub debug: DebugSection,
    pub registry: RegistryConfig,
    /// The snapshotter a request that names none uses (`overlayfs`, the
    /// default, or `native`): an empty `snapshotter` field of a Snapshots
    /// call, a container or a transfer unpack. `ctr` and orcad always name
    /// one (their own default is `overlayfs`). If overlayfs cannot be
    /// mounted on the root's filesystem, the supervisor warns and uses
    /// `native` instead.
    ///
    /// ```toml
    /// default_snapshotter = "native"
    /// ```
    pub default_snapshotter: Option<String>,
}

/// Registry access for the transfer service (server-side pull and push):
///
/// ```toml
/// [registry]
/// certs_dir = "/etc/orca/certs.d"      # <dir>/<host[:port]>/ca.crt
/// insecure = ["reg.example:5000"]      # HTTPS without verification, then plain HTTP
/// [registry.mirrors."docker.io"]
/// endpoint = ["https://mirror.example", "http://127.0.0.1:5000"]
/// ```
///
/// Loopback registries may always be reached over plain HTTP.
#[derive(Debug, Default, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RegistryConfig {
    /// Per-host CA certificates: `<certs_dir>/<host[:port]>/ca.crt`.
    pub certs_dir: Option<PathBuf>,
    /// Hosts (`host` or `host:port`) reached without TLS verification,
    /// falling back to plain HTTP.
    pub insecure: Vec<String>,
    /// Mirrors per registry host, tried in order before the host itself.
    pub mirrors: BTreeMap<String, MirrorSection>,
}

#[derive(Debug, Default, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct MirrorSection {
    /// Mirror base URLs (`https://host[:port]` or `http://…`) or bare hosts.
    pub endpoint: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct AddressSection {
    pub address: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct DebugSection {
    pub level: Option<String>,
}

/// The resolved configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub root: PathBuf,
    pub state: PathBuf,
    pub address: PathBuf,
    pub ttrpc_address: PathBuf,
    pub log_level: String,
    pub registry: RegistryConfig,
    /// `default_snapshotter` from the file (checked when the server starts).
    pub default_snapshotter: Option<String>,
}

impl ConfigFile {
    pub fn load(path: &Path) -> Result<ConfigFile> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::io(format!("read config {}", path.display()), e))?;
        toml::from_str(&text)
            .map_err(|e| Error::InvalidArgument(format!("config {}: {e}", path.display())))
    }
}

impl Config {
    /// Flags win over the file, the file over the defaults.
    pub fn resolve(
        file: ConfigFile,
        root: Option<PathBuf>,
        state: Option<PathBuf>,
        address: Option<PathBuf>,
        log_level: Option<String>,
    ) -> Config {
        let address = address
            .or(file.grpc.address)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_ADDRESS));
        let ttrpc_address = file.ttrpc.address.unwrap_or_else(|| {
            let mut s = address.clone().into_os_string();
            s.push(".ttrpc");
            PathBuf::from(s)
        });
        Config {
            root: root
                .or(file.root)
                .unwrap_or_else(|| PathBuf::from(DEFAULT_ROOT)),
            state: state
                .or(file.state)
                .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE)),
            address,
            ttrpc_address,
            log_level: log_level
                .or(file.debug.level)
                .unwrap_or_else(|| "info".into()),
            registry: file.registry,
            default_snapshotter: file.default_snapshotter,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_file() {
        let file: ConfigFile = toml::from_str(
            "version = 2\nroot = \"/r\"\n[grpc]\naddress = \"/g.sock\"\n[debug]\nlevel = \"debug\"\n[plugins.x]\ny = 1\n",
        )
        .unwrap();
        let c = Config::resolve(file, None, Some("/s".into()), None, None);
        assert_eq!(c.root, PathBuf::from("/r"));
        assert_eq!(c.state, PathBuf::from("/s"));
        assert_eq!(c.address, PathBuf::from("/g.sock"));
        assert_eq!(c.ttrpc_address, PathBuf::from("/g.sock.ttrpc"));
        assert_eq!(c.log_level, "debug");
        assert_eq!(c.registry, RegistryConfig::default());
        assert_eq!(c.default_snapshotter, None);
    }

    #[test]
    fn default_snapshotter_key() {
        let file: ConfigFile = toml::from_str("default_snapshotter = \"native\"\n").unwrap();
        let c = Config::resolve(file, None, None, None, None);
        assert_eq!(c.default_snapshotter.as_deref(), Some("native"));
    }

    #[test]
    fn registry_section() {
        let file: ConfigFile = toml::from_str(
            "[registry]\ncerts_dir = \"/c\"\ninsecure = [\"r:5000\"]\n[registry.mirrors.\"docker.io\"]\nendpoint = [\"http://127.0.0.1:5000\"]\n",
        )
        .unwrap();
        let c = Config::resolve(file, None, None, None, None);
        assert_eq!(c.registry.certs_dir, Some(PathBuf::from("/c")));
        assert_eq!(c.registry.insecure, vec!["r:5000".to_string()]);
        assert_eq!(
            c.registry.mirrors["docker.io"].endpoint,
            vec!["http://127.0.0.1:5000".to_string()]
        );
        assert!(toml::from_str::<ConfigFile>("[registry]\nmirror = 1\n").is_err());
    }
}
