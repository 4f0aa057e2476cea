//! orcad's daemon configuration: `daemon.json` (dockerd's keys, default
//! `/etc/orca/daemon.json`) merged with command-line flags (flags win), and
//! the json-file log options shared by the daemon and containers.
//!
//! Every key is type-checked and an error names it; unknown keys are
//! refused (as dockerd does), so a typo never silently does nothing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

/// Default location of the configuration file.
pub const DEFAULT_CONFIG_FILE: &str = "/etc/orca/daemon.json";
/// Default API socket.
pub const DEFAULT_HOST: &str = "unix:///run/orca/orca.sock";
/// dockerd's default port for `tcp://HOST` with TLS.
pub const DEFAULT_TLS_PORT: u16 = 2376;
/// Default group owning the API socket.
pub const DEFAULT_GROUP: &str = "orca";
/// dockerd's default `shutdown-timeout` (seconds).
pub const DEFAULT_SHUTDOWN_TIMEOUT: i64 = 15;

/// A configuration error (startup fails with it).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read configuration file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("configuration file {path} is not valid JSON: {msg}")]
    Syntax { path: String, msg: String },
    #[error("configuration file {path}: {msg}")]
    Key { path: String, msg: String },
    #[error("{0}")]
    Invalid(String),
}

/// What `daemon.json` may set (all optional).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct FileConfig {
    pub data_root: Option<PathBuf>,
    pub exec_root: Option<PathBuf>,
    pub hosts: Option<Vec<String>>,
    pub group: Option<String>,
    pub registry_mirrors: Option<Vec<String>>,
    pub insecure_registries: Option<Vec<String>>,
    pub log_driver: Option<String>,
    pub log_opts: Option<BTreeMap<String, String>>,
    /// Docker's HostConfig.Ulimits entries (`[{"Name","Hard","Soft"}]`).
    pub default_ulimits: Option<Vec<Value>>,
    pub live_restore: Option<bool>,
    pub shutdown_timeout: Option<i64>,
    pub pidfile: Option<PathBuf>,
    pub containerd: Option<PathBuf>,
    pub containerd_namespace: Option<String>,
    pub default_runtime: Option<String>,
    pub cgroup_parent: Option<String>,
    pub debug: Option<bool>,
    pub log_level: Option<String>,
    /// `bridge`, `bip`, `iptables`, `userland-proxy`, `ip`,
    /// `default-address-pools`.
    pub net: crate::network::NetOptions,
    pub tls: Option<bool>,
    pub tlsverify: Option<bool>,
    pub tlscacert: Option<PathBuf>,
    pub tlscert: Option<PathBuf>,
    pub tlskey: Option<PathBuf>,
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

impl FileConfig {
    /// Loads `path`. A missing file is an empty configuration unless
    /// `required` (the path was given explicitly).
    pub fn load(path: &Path, required: bool) -> Result<FileConfig, ConfigError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => {
                return Ok(FileConfig::default())
            }
            Err(source) => {
                return Err(ConfigError::Read {
                    path: path.display().to_string(),
                    source,
                })
            }
        };
        FileConfig::parse(&text, &path.display().to_string())
    }

    /// Parses the JSON text of a configuration file (`path` for messages).
    pub fn parse(text: &str, path: &str) -> Result<FileConfig, ConfigError> {
        if text.trim().is_empty() {
            return Ok(FileConfig::default());
        }
        let v: Value = serde_json::from_str(text).map_err(|e| ConfigError::Syntax {
            path: path.into(),
            msg: e.to_string(),
        })?;
        let Value::Object(obj) = v else {
            return Err(ConfigError::Key {
                path: path.into(),
                msg: format!("the top level must be a JSON object, not {}", type_name(&v)),
            });
        };
        let key_err = |msg: String| ConfigError::Key {
            path: path.into(),
            msg,
        };
        let mut c = FileConfig::default();
        let mut unknown = Vec::new();
        for (k, v) in &obj {
            let want = |what: &str| {
                key_err(format!(
                    "invalid value for key {k:?}: expected {what}, got {} ({v})",
                    type_name(v)
                ))
            };
            let string = || v.as_str().map(String::from).ok_or_else(|| want("a string"));
            let strings = || -> Result<Vec<String>, ConfigError> {
                v.as_array()
                    .ok_or_else(|| want("an array of strings"))?
                    .iter()
                    .map(|x| {
                        x.as_str()
                            .map(String::from)
                            .ok_or_else(|| want("an array of strings"))
                    })
                    .collect()
            };
            match k.as_str() {
                "data-root" => c.data_root = Some(string()?.into()),
                "exec-root" => c.exec_root = Some(string()?.into()),
                "hosts" => c.hosts = Some(strings()?),
                "group" => c.group = Some(string()?),
                "registry-mirrors" => c.registry_mirrors = Some(strings()?),
                "insecure-registries" => c.insecure_registries = Some(strings()?),
                "log-driver" => c.log_driver = Some(string()?),
                "log-opts" => {
                    let o = v.as_object().ok_or_else(|| want("an object of strings"))?;
                    let mut m = BTreeMap::new();
                    for (ok, ov) in o {
                        let s = ov.as_str().ok_or_else(|| {
                            key_err(format!(
                                "invalid value for key \"log-opts\": option {ok:?} must be a string, got {} ({ov})",
                                type_name(ov)
                            ))
                        })?;
                        m.insert(ok.clone(), s.to_string());
                    }
                    c.log_opts = Some(m);
                }
                "default-ulimits" => c.default_ulimits = Some(parse_ulimits(v, &key_err)?),
                "live-restore" => {
                    c.live_restore = Some(v.as_bool().ok_or_else(|| want("a boolean"))?)
                }
                "shutdown-timeout" => {
                    let n = v.as_i64().ok_or_else(|| want("an integer"))?;
                    if n < 0 {
                        return Err(key_err(format!(
                            "invalid value for key \"shutdown-timeout\": {n} must be >= 0"
                        )));
                    }
                    c.shutdown_timeout = Some(n);
                }
                "pidfile" => c.pidfile = Some(string()?.into()),
                "containerd" => c.containerd = Some(string()?.into()),
                "containerd-namespace" => c.containerd_namespace = Some(string()?),
                "default-runtime" => c.default_runtime = Some(string()?),
                "cgroup-parent" => c.cgroup_parent = Some(string()?),
                "debug" => c.debug = Some(v.as_bool().ok_or_else(|| want("a boolean"))?),
                "log-level" => c.log_level = Some(string()?),
                "bridge" => c.net.bridge = Some(string()?),
                "bip" => c.net.bip = Some(string()?),
                "ip" => c.net.ip = Some(string()?),
                "host-gateway-ip" => c.net.host_gateway_ip = Some(string()?),
                "iptables" => c.net.iptables = Some(v.as_bool().ok_or_else(|| want("a boolean"))?),
                "userland-proxy" => {
                    c.net.userland_proxy = Some(v.as_bool().ok_or_else(|| want("a boolean"))?)
                }
                "default-address-pools" => {
                    let a = v
                        .as_array()
                        .ok_or_else(|| want("an array of {\"base\", \"size\"} objects"))?;
                    let mut pools = Vec::new();
                    for p in a {
                        match (p["base"].as_str(), p["size"].as_u64()) {
                            (Some(b), Some(n)) => pools.push(format!("base={b},size={n}")),
                            _ => return Err(want("an array of {\"base\", \"size\"} objects")),
                        }
                    }
                    c.net.pools = Some(pools);
                }
                "tls" => c.tls = Some(v.as_bool().ok_or_else(|| want("a boolean"))?),
                "tlsverify" => c.tlsverify = Some(v.as_bool().ok_or_else(|| want("a boolean"))?),
                "tlscacert" => c.tlscacert = Some(string()?.into()),
                "tlscert" => c.tlscert = Some(string()?.into()),
                "tlskey" => c.tlskey = Some(string()?.into()),
                _ => unknown.push(k.clone()),
            }
        }
        if !unknown.is_empty() {
            return Err(key_err(format!(
                "the following directives don't match any configuration option: {}",
                unknown.join(", ")
            )));
        }
        Ok(c)
    }
}

fn parse_ulimits(
    v: &Value,
    key_err: &dyn Fn(String) -> ConfigError,
) -> Result<Vec<Value>, ConfigError> {
    let o: &Map<String, Value> = v.as_object().ok_or_else(|| {
        key_err(format!(
            "invalid value for key \"default-ulimits\": expected an object of {{\"Name\",\"Hard\",\"Soft\"}}, got {}",
            type_name(v)
        ))
    })?;
    let mut out = Vec::new();
    for (name, u) in o {
        let field = |f: &str| -> Result<i64, ConfigError> {
            u[f].as_i64().ok_or_else(|| {
                key_err(format!(
                    "invalid value for key \"default-ulimits\": {name}.{f} must be an integer, got {}",
                    type_name(&u[f])
                ))
            })
        };
        let (hard, soft) = (field("Hard")?, field("Soft")?);
        if soft > hard {
            return Err(key_err(format!(
                "invalid value for key \"default-ulimits\": {name}: soft limit {soft} is above the hard limit {hard}"
            )));
        }
        out.push(serde_json::json!({"Name": name, "Hard": hard, "Soft": soft}));
    }
    Ok(out)
}

/// json-file limits of one container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogLimits {
    /// Rotate when the file reaches this size (`None`: never).
    pub max_size: Option<u64>,
    /// Files kept, the current one included (≥ 1; 1 truncates instead).
    pub max_file: u32,
}

impl Default for LogLimits {
    fn default() -> Self {
        LogLimits {
            max_size: None,
            max_file: 1,
        }
    }
}

/// go-units `RAMInBytes`: "10m", "1k", "512", "1.5g" (binary multiples).
pub fn ram_in_bytes(s: &str) -> Option<u64> {
    let t = s.trim();
    let lower = t.to_ascii_lowercase();
    let lower = lower.strip_suffix('b').unwrap_or(&lower);
    let lower = lower.strip_suffix('i').unwrap_or(lower);
    let (num, mult) = match lower.chars().last()? {
        'k' => (&lower[..lower.len() - 1], 1u64 << 10),
        'm' => (&lower[..lower.len() - 1], 1 << 20),
        'g' => (&lower[..lower.len() - 1], 1 << 30),
        't' => (&lower[..lower.len() - 1], 1 << 40),
        'p' => (&lower[..lower.len() - 1], 1 << 50),
        _ => (lower, 1),
    };
    let num = num.trim();
    if num.is_empty() || !num.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return None;
    }
    let f: f64 = num.parse().ok()?;
    if f < 0.0 {
        return None;
    }
    Some((f * mult as f64) as u64)
}

/// Validates json-file log options (dockerd's `ValidateLogOpt` messages)
/// and returns the limits. Options orcad does not implement are refused
/// with `Err((true, msg))` (501), bad values with `Err((false, msg))` (400).
pub fn log_limits(opts: &BTreeMap<String, String>) -> Result<LogLimits, (bool, String)> {
    let mut l = LogLimits::default();
    for (k, v) in opts {
        match k.as_str() {
            "max-size" => {
                let n = ram_in_bytes(v).ok_or_else(|| {
                    (
                        false,
                        format!("invalid max-size {v:?} for json-file log driver"),
                    )
                })?;
                if n == 0 {
                    return Err((
                        false,
                        format!("invalid max-size {v:?}: must be a positive size"),
                    ));
                }
                l.max_size = Some(n);
            }
            "max-file" => {
                let n: i64 = v
                    .parse()
                    .map_err(|_| (false, format!("invalid max-file {v:?}: must be an integer")))?;
                if n < 1 {
                    return Err((false, "max-file cannot be less than 1".into()));
                }
                l.max_file = n.min(u32::MAX as i64) as u32;
            }
            "compress" => match v.as_str() {
                "false" | "0" | "" => {}
                "true" | "1" => {
                    return Err((
                        true,
                        "log-opt compress=true is not implemented in orcad yet".into(),
                    ))
                }
                _ => return Err((false, format!("invalid value for compress: {v:?}"))),
            },
            "labels" | "labels-regex" | "env" | "env-regex" | "tag" => {
                return Err((true, format!("log-opt {k} is not implemented in orcad yet")))
            }
            other => {
                return Err((
                    false,
                    format!("unknown log opt '{other}' for json-file log driver"),
                ))
            }
        }
    }
    if l.max_file > 1 && l.max_size.is_none() {
        return Err((false, "max-file can only be set if max-size is set".into()));
    }
    Ok(l)
}

/// Command-line values (`None`: not given).
#[derive(Debug, Default, Clone)]
pub struct Flags {
    pub hosts: Vec<String>,
    pub containerd: Option<PathBuf>,
    pub containerd_namespace: Option<String>,
    pub data_root: Option<PathBuf>,
    pub exec_root: Option<PathBuf>,
    pub default_runtime: Option<String>,
    pub snapshotter: Option<String>,
    pub cgroup_parent: Option<String>,
    pub insecure_registries: Vec<String>,
    pub registry_mirrors: Vec<String>,
    pub group: Option<String>,
    pub pidfile: Option<PathBuf>,
    pub live_restore: Option<bool>,
    pub shutdown_timeout: Option<i64>,
    pub log_driver: Option<String>,
    pub log_opts: Vec<String>,
    pub default_ulimits: Vec<String>,
    pub log_level: Option<String>,
    /// `--bridge`, `--bip`, `--iptables`, `--userland-proxy`, `--ip`,
    /// `--default-address-pool`, `--iptables-chain`.
    pub net: crate::network::NetOptions,
    /// `--tls` (server TLS; on tcp orcad also requires `--tlsverify`).
    pub tls: Option<bool>,
    /// `--tlsverify`: TLS with client certificates verified against the CA.
    pub tlsverify: Option<bool>,
    pub tlscacert: Option<PathBuf>,
    pub tlscert: Option<PathBuf>,
    pub tlskey: Option<PathBuf>,
}

/// One address orcad listens on (`-H` / `hosts`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenHost {
    /// `unix:///path`: the API socket, root:GROUP 0660.
    Unix(PathBuf),
    /// `tcp://HOST:PORT` (always TLS with client verification).
    Tcp(String),
}

impl ListenHost {
    /// Parses dockerd's `-H` syntax: `unix:///path` or `tcp://[HOST][:PORT]`
    /// (no port: 2376, no host: every address).
    pub fn parse(s: &str) -> Result<ListenHost, ConfigError> {
        let t = s.trim();
        if let Some(p) = t.strip_prefix("unix://") {
            if !p.starts_with('/') {
                return Err(ConfigError::Invalid(format!(
                    "host {s:?}: a unix socket needs an absolute path (unix:///path)"
                )));
            }
            return Ok(ListenHost::Unix(PathBuf::from(p)));
        }
        if let Some(a) = t.strip_prefix("tcp://") {
            let a = a.trim_end_matches('/');
            if a.contains('/') || a.contains('@') {
                return Err(ConfigError::Invalid(format!(
                    "host {s:?}: expected tcp://HOST:PORT"
                )));
            }
            // "[v6]:port", "[v6]", "host:port", "host", ":port".
            let split = match a.strip_prefix('[') {
                Some(r) => r.split_once(']').and_then(|(h, rest)| {
                    let host = &a[..h.len() + 2];
                    match rest {
                        "" => Some((host, None)),
                        _ => rest.strip_prefix(':').map(|p| (host, Some(p))),
                    }
                }),
                None => Some(match a.rsplit_once(':') {
                    Some((h, p)) => (h, Some(p)),
                    None => (a, None),
                }),
            };
            let Some((host, port)) = split else {
                return Err(ConfigError::Invalid(format!(
                    "host {s:?}: expected tcp://HOST:PORT"
                )));
            };
            let port = match port {
                None => DEFAULT_TLS_PORT,
                Some(p) => p
                    .parse::<u16>()
                    .map_err(|_| ConfigError::Invalid(format!("host {s:?}: invalid port {p:?}")))?,
            };
            let host = if host.is_empty() { "0.0.0.0" } else { host };
            return Ok(ListenHost::Tcp(format!("{host}:{port}")));
        }
        Err(ConfigError::Invalid(format!(
            "host {s:?}: only unix:///path and tcp://HOST:PORT are supported"
        )))
    }

    /// The address as given to `-H`.
    pub fn display(&self) -> String {
        match self {
            ListenHost::Unix(p) => format!("unix://{}", p.display()),
            ListenHost::Tcp(a) => format!("tcp://{a}"),
        }
    }
}

/// The certificate files of the TLS listener (PEM).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// CA that client certificates must chain to.
    pub ca: PathBuf,
    /// The server's certificate (chain).
    pub cert: PathBuf,
    /// The server's private key.
    pub key: PathBuf,
}

/// The resolved daemon settings.
#[derive(Debug, Clone)]
pub struct DaemonSettings {
    /// Every address to listen on (at least one).
    pub hosts: Vec<ListenHost>,
    /// Set when a tcp host exists: TLS with client verification.
    pub tls: Option<TlsFiles>,
    /// `None`: orcad starts and manages its own orca-supervisor.
    pub containerd: Option<PathBuf>,
    pub namespace: String,
    pub data_root: PathBuf,
    pub exec_root: PathBuf,
    pub runtime: String,
    pub snapshotter: String,
    pub cgroup_parent: String,
    pub insecure_registries: Vec<String>,
    pub registry_mirrors: Vec<String>,
    pub group: String,
    pub pidfile: PathBuf,
    pub live_restore: bool,
    pub shutdown_timeout: i64,
    pub log_opts: BTreeMap<String, String>,
    pub default_ulimits: Vec<Value>,
    pub log_level: String,
    /// Networking settings.
    pub network: crate::network::NetConfig,
}

/// `--default-ulimit nofile=1024:2048` → Docker's Ulimit JSON.
fn parse_ulimit_flag(s: &str) -> Result<Value, ConfigError> {
    let bad = || ConfigError::Invalid(format!("invalid --default-ulimit {s:?} (NAME=SOFT[:HARD])"));
    let (name, lim) = s.split_once('=').ok_or_else(bad)?;
    let (soft, hard) = match lim.split_once(':') {
        Some((a, b)) => (
            a.parse::<i64>().map_err(|_| bad())?,
            b.parse::<i64>().map_err(|_| bad())?,
        ),
        None => {
            let n = lim.parse::<i64>().map_err(|_| bad())?;
            (n, n)
        }
    };
    if soft > hard {
        return Err(bad());
    }
    Ok(serde_json::json!({"Name": name, "Hard": hard, "Soft": soft}))
}

/// Flags over file over defaults, then validation (log driver and
/// options, hosts).
pub fn resolve(file: FileConfig, flags: Flags) -> Result<DaemonSettings, ConfigError> {
    let hosts = if !flags.hosts.is_empty() {
        flags.hosts.clone()
    } else {
        file.hosts.clone().unwrap_or_default()
    };
    let hosts = if hosts.is_empty() {
        vec![DEFAULT_HOST.to_string()]
    } else {
        hosts
    };
    let mut listen: Vec<ListenHost> = Vec::new();
    for h in &hosts {
        let l = ListenHost::parse(h)?;
        if listen.contains(&l) {
            return Err(ConfigError::Invalid(format!("host {h:?} is listed twice")));
        }
        listen.push(l);
    }
    let tls = resolve_tls(&file, &flags, &listen)?;
    let log_driver = flags
        .log_driver
        .clone()
        .or(file.log_driver.clone())
        .unwrap_or_else(|| "json-file".into());
    if log_driver != "json-file" {
        return Err(ConfigError::Invalid(format!(
            "log-driver {log_driver:?} is not supported by orcad (only \"json-file\")"
        )));
    }
    let mut log_opts = file.log_opts.clone().unwrap_or_default();
    for o in &flags.log_opts {
        let (k, v) = o
            .split_once('=')
            .ok_or_else(|| ConfigError::Invalid(format!("invalid --log-opt {o:?} (KEY=VALUE)")))?;
        log_opts.insert(k.to_string(), v.to_string());
    }
    log_limits(&log_opts).map_err(|(_, m)| ConfigError::Invalid(format!("log-opts: {m}")))?;
    let default_ulimits = if flags.default_ulimits.is_empty() {
        file.default_ulimits.clone().unwrap_or_default()
    } else {
        flags
            .default_ulimits
            .iter()
            .map(|s| parse_ulimit_flag(s))
            .collect::<Result<_, _>>()?
    };
    let exec_root = flags
        .exec_root
        .clone()
        .or(file.exec_root.clone())
        .unwrap_or_else(|| PathBuf::from("/run/orca"));
    let pick_vec = |f: &Vec<String>, d: &Option<Vec<String>>| {
        if f.is_empty() {
            d.clone().unwrap_or_default()
        } else {
            f.clone()
        }
    };
    Ok(DaemonSettings {
        hosts: listen,
        tls,
        containerd: flags.containerd.clone().or(file.containerd.clone()),
        namespace: flags
            .containerd_namespace
            .clone()
            .or(file.containerd_namespace.clone())
            .unwrap_or_else(|| "orca".into()),
        data_root: flags
            .data_root
            .clone()
            .or(file.data_root.clone())
            .unwrap_or_else(|| PathBuf::from("/var/lib/orca")),
        pidfile: flags
            .pidfile
            .clone()
            .or(file.pidfile.clone())
            .unwrap_or_else(|| exec_root.join("orcad.pid")),
        exec_root,
        runtime: flags
            .default_runtime
            .clone()
            .or(file.default_runtime.clone())
            .unwrap_or_else(|| "io.containerd.runc.v2".into()),
        snapshotter: flags
            .snapshotter
            .clone()
            .unwrap_or_else(|| "overlayfs".into()),
        cgroup_parent: flags
            .cgroup_parent
            .clone()
            .or(file.cgroup_parent.clone())
            .unwrap_or_else(|| "/orca".into()),
        insecure_registries: pick_vec(&flags.insecure_registries, &file.insecure_registries),
        registry_mirrors: pick_vec(&flags.registry_mirrors, &file.registry_mirrors),
        group: flags
            .group
            .clone()
            .or(file.group.clone())
            .unwrap_or_else(|| DEFAULT_GROUP.into()),
        live_restore: flags.live_restore.or(file.live_restore).unwrap_or(false),
        shutdown_timeout: flags
            .shutdown_timeout
            .or(file.shutdown_timeout)
            .unwrap_or(DEFAULT_SHUTDOWN_TIMEOUT),
        network: flags.net.resolve(&file.net).map_err(ConfigError::Invalid)?,
        log_opts,
        default_ulimits,
        log_level: flags
            .log_level
            .clone()
            .or(file.log_level.clone())
            .unwrap_or_else(|| {
                if file.debug == Some(true) {
                    "debug".into()
                } else {
                    "info".into()
                }
            }),
    })
}

/// TLS settings: required (tlsverify and the three files) as soon as one
/// host is tcp; dockerd would also serve plain or unverified tcp, orcad
/// refuses to. Without a tcp host the TLS options are checked but unused
/// (dockerd applies TLS to tcp hosts only).
fn resolve_tls(
    file: &FileConfig,
    flags: &Flags,
    hosts: &[ListenHost],
) -> Result<Option<TlsFiles>, ConfigError> {
    let verify = flags.tlsverify.or(file.tlsverify).unwrap_or(false);
    let tls = flags.tls.or(file.tls).unwrap_or(false) || verify;
    let ca = flags.tlscacert.clone().or(file.tlscacert.clone());
    let cert = flags.tlscert.clone().or(file.tlscert.clone());
    let key = flags.tlskey.clone().or(file.tlskey.clone());
    let Some(tcp) = hosts.iter().find(|h| matches!(h, ListenHost::Tcp(_))) else {
        return Ok(None);
    };
    let what = tcp.display();
    if !verify {
        return Err(ConfigError::Invalid(format!(
            "refusing to listen on {what} without TLS client verification: \
             orcad serves tcp only with --tlsverify --tlscacert CA --tlscert CERT --tlskey KEY \
             (daemon.json: \"tlsverify\": true, \"tlscacert\", \"tlscert\", \"tlskey\"){}",
            if tls {
                " (--tls alone does not verify clients)"
            } else {
                ""
            }
        )));
    }
    let mut missing = Vec::new();
    for (n, v) in [
        ("--tlscacert", &ca),
        ("--tlscert", &cert),
        ("--tlskey", &key),
    ] {
        if v.is_none() {
            missing.push(n);
        }
    }
    if !missing.is_empty() {
        return Err(ConfigError::Invalid(format!(
            "refusing to listen on {what}: --tlsverify needs {} (PEM files)",
            missing.join(", ")
        )));
    }
    Ok(Some(TlsFiles {
        ca: ca.unwrap_or_default(),
        cert: cert.unwrap_or_default(),
        key: key.unwrap_or_default(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_names_bad_keys() {
        let c = FileConfig::parse(
            r#"{"data-root":"/d","live-restore":true,"log-opts":{"max-size":"1m","max-file":"3"},
                "default-ulimits":{"nofile":{"Name":"nofile","Hard":20,"Soft":10}},"shutdown-timeout":3,
                "registry-mirrors":["http://127.0.0.1:1"],"hosts":["unix:///x.sock"],"group":"g"}"#,
            "d.json",
        )
        .unwrap();
        assert_eq!(c.data_root, Some(PathBuf::from("/d")));
        assert_eq!(c.live_restore, Some(true));
        assert_eq!(c.default_ulimits.as_ref().unwrap()[0]["Soft"], 10);
        let e = FileConfig::parse(r#"{"live-restore":"yes"}"#, "d.json").unwrap_err();
        assert!(e.to_string().contains("\"live-restore\""), "{e}");
        let e = FileConfig::parse(r#"{"log-opts":{"max-file":3}}"#, "d.json").unwrap_err();
        assert!(
            e.to_string().contains("log-opts") && e.to_string().contains("max-file"),
            "{e}"
        );
        let e = FileConfig::parse(r#"{"data-root": "#, "d.json").unwrap_err();
        assert!(matches!(e, ConfigError::Syntax { .. }), "{e}");
        let e = FileConfig::parse(r#"{"bogus": 1}"#, "d.json").unwrap_err();
        assert!(e.to_string().contains("bogus"), "{e}");
    }

    #[test]
    fn flags_win_and_log_driver_is_checked() {
        let file = FileConfig {
            data_root: Some("/file".into()),
            exec_root: Some("/x".into()),
            log_opts: Some(BTreeMap::from([("max-size".into(), "1k".into())])),
            ..Default::default()
        };
        let flags = Flags {
            data_root: Some("/flag".into()),
            ..Default::default()
        };
        let s = resolve(file.clone(), flags).unwrap();
        assert_eq!(s.data_root, PathBuf::from("/flag"));
        assert_eq!(s.pidfile, PathBuf::from("/x/orcad.pid"));
        assert_eq!(s.log_opts["max-size"], "1k");
        let bad = FileConfig {
            log_driver: Some("syslog".into()),
            ..Default::default()
        };
        assert!(resolve(bad, Flags::default())
            .unwrap_err()
            .to_string()
            .contains("syslog"));
    }

    #[test]
    fn hosts_and_tls() {
        let s = resolve(FileConfig::default(), Flags::default()).unwrap();
        assert_eq!(
            s.hosts,
            vec![ListenHost::Unix("/run/orca/orca.sock".into())]
        );
        assert!(s.tls.is_none());
        assert_eq!(
            ListenHost::parse("tcp://127.0.0.1").unwrap(),
            ListenHost::Tcp("127.0.0.1:2376".into())
        );
        assert_eq!(
            ListenHost::parse("tcp://:1234").unwrap(),
            ListenHost::Tcp("0.0.0.0:1234".into())
        );
        assert!(ListenHost::parse("tcp://1.2.3.4:x").is_err());
        assert_eq!(
            ListenHost::parse("tcp://[::1]:7").unwrap(),
            ListenHost::Tcp("[::1]:7".into())
        );
        assert_eq!(
            ListenHost::parse("tcp://[::1]").unwrap(),
            ListenHost::Tcp("[::1]:2376".into())
        );
        assert!(ListenHost::parse("tcp://[::1]x").is_err());
        assert!(ListenHost::parse("fd://").is_err());
        assert!(ListenHost::parse("unix://rel.sock").is_err());
        let tcp = |extra: Flags| {
            resolve(
                FileConfig::default(),
                Flags {
                    hosts: vec!["unix:///a.sock".into(), "tcp://127.0.0.1:5".into()],
                    ..extra
                },
            )
        };
        let e = tcp(Flags::default()).unwrap_err().to_string();
        assert!(e.contains("without TLS client verification"), "{e}");
        let e = tcp(Flags {
            tls: Some(true),
            ..Default::default()
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("--tls alone"), "{e}");
        let e = tcp(Flags {
            tlsverify: Some(true),
            tlscacert: Some("/ca".into()),
            ..Default::default()
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("--tlscert, --tlskey"), "{e}");
        let s = tcp(Flags {
            tlsverify: Some(true),
            tlscacert: Some("/ca".into()),
            tlscert: Some("/c".into()),
            tlskey: Some("/k".into()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(s.hosts.len(), 2);
        assert_eq!(s.tls.unwrap().key, PathBuf::from("/k"));
        // daemon.json keys.
        let f = FileConfig::parse(
            r#"{"hosts":["unix:///a.sock","tcp://127.0.0.1:9"],"tlsverify":true,
                "tlscacert":"/ca","tlscert":"/c","tlskey":"/k"}"#,
            "d.json",
        )
        .unwrap();
        let s = resolve(f, Flags::default()).unwrap();
        assert_eq!(s.tls.unwrap().ca, PathBuf::from("/ca"));
        assert!(FileConfig::parse(r#"{"tlsverify":"yes"}"#, "d.json").is_err());
    }

    #[test]
    fn host_gateway_ip() {
        let f = FileConfig::parse(r#"{"host-gateway-ip":"192.0.2.1"}"#, "t").unwrap();
        let s = resolve(f.clone(), Flags::default()).unwrap();
        assert_eq!(
            s.network.host_gateway_ip,
            Some("192.0.2.1".parse().unwrap())
        );
        // The flag wins over the file.
        let mut flags = Flags::default();
        flags.net.host_gateway_ip = Some("fd00::1".into());
        let s = resolve(f, flags).unwrap();
        assert_eq!(s.network.host_gateway_ip, Some("fd00::1".parse().unwrap()));
        let bad = FileConfig::parse(r#"{"host-gateway-ip":"nope"}"#, "t").unwrap();
        let e = resolve(bad, Flags::default()).unwrap_err().to_string();
        assert!(e.contains("host-gateway-ip"), "{e}");
        assert!(FileConfig::parse(r#"{"host-gateway-ip":1}"#, "t").is_err());
        assert_eq!(
            resolve(FileConfig::default(), Flags::default())
                .unwrap()
                .network
                .host_gateway_ip,
            None
        );
    }

    #[test]
    fn sizes_and_log_limits() {
        assert_eq!(ram_in_bytes("1k"), Some(1024));
        assert_eq!(ram_in_bytes("10m"), Some(10 << 20));
        assert_eq!(ram_in_bytes("100"), Some(100));
        assert_eq!(ram_in_bytes("2KB"), Some(2048));
        assert_eq!(ram_in_bytes("x"), None);
        let o = |p: &[(&str, &str)]| -> BTreeMap<String, String> {
            p.iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect()
        };
        assert_eq!(
            log_limits(&o(&[("max-size", "1k"), ("max-file", "3")])).unwrap(),
            LogLimits {
                max_size: Some(1024),
                max_file: 3
            }
        );
        assert!(log_limits(&o(&[("max-file", "3")])).is_err());
        assert!(log_limits(&o(&[("nope", "3")]))
            .unwrap_err()
            .1
            .contains("unknown log opt"));
        assert!(log_limits(&o(&[("compress", "true")])).unwrap_err().0);
    }
}
