//! Containers: Docker's container model on containerd (records under
//! `--data-root`, one directory per container, JSON written atomically),
//! task lifecycle, stdio FIFOs, json-file logs, attach fan-out, wait.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use orca_proto::containers as ctrs;
use orca_proto::snapshots as snaps;
use orca_proto::tasks;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::{broadcast, mpsc, watch};
use tracing::{debug, info, warn};

use crate::config::{log_limits, LogLimits};
use crate::containerd::Containerd;
use crate::error::{EngineError, Result};
use crate::events::EventBus;
use crate::images::ImageService;
use crate::networks::Networks;
use crate::spec;
use crate::util::{self, Query};

/// The default PATH for containers whose image sets none.
pub const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Settings of the container service.
#[derive(Debug, Clone)]
pub struct ContainersConfig {
    pub data_root: PathBuf,
    pub exec_root: PathBuf,
    pub runtime: String,
    pub snapshotter: String,
    pub cgroup_parent: String,
    /// Daemon-wide json-file options (`log-opts`), merged into each
    /// container's LogConfig at create.
    pub log_opts: BTreeMap<String, String>,
    /// Daemon-wide `default-ulimits` (HostConfig.Ulimits entries), applied
    /// for the names a container does not set.
    pub default_ulimits: Vec<Value>,
}

/// Docker's `container.Config` (the fields orcad keeps), echoed by inspect.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ContainerConfig {
    pub hostname: String,
    pub domainname: String,
    pub user: String,
    pub attach_stdin: bool,
    pub attach_stdout: bool,
    pub attach_stderr: bool,
    pub tty: bool,
    pub open_stdin: bool,
    pub stdin_once: bool,
    pub env: Vec<String>,
    pub cmd: Option<Vec<String>>,
    pub image: String,
    pub volumes: Option<Value>,
    pub working_dir: String,
    pub entrypoint: Option<Vec<String>>,
    pub on_build: Option<Value>,
    pub labels: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop_timeout: Option<i64>,
    /// `{"80/tcp": {}}`: the user's and the image's exposed ports.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exposed_ports: Option<Value>,
}

/// Docker's `State`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct State {
    pub status: String,
    pub running: bool,
    pub paused: bool,
    pub restarting: bool,
    #[serde(rename = "OOMKilled")]
    pub oom_killed: bool,
    pub dead: bool,
    pub pid: u32,
    pub exit_code: i64,
    pub error: String,
    pub started_at: String,
    pub finished_at: String,
}

impl Default for State {
    fn default() -> Self {
        State {
            status: "created".into(),
            running: false,
            paused: false,
            restarting: false,
            oom_killed: false,
            dead: false,
            pid: 0,
            exit_code: 0,
            error: String::new(),
            started_at: util::ZERO_TIME.into(),
            finished_at: util::ZERO_TIME.into(),
        }
    }
}

/// What orcad persists per container (`<data-root>/containers/<id>/config.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    pub id: String,
    /// With the leading "/".
    pub name: String,
    pub created: String,
    pub path: String,
    pub args: Vec<String>,
    pub config: ContainerConfig,
    pub host_config: Value,
    pub auto_remove: bool,
    /// The image ID (config digest).
    pub image: String,
    /// The containerd image name it was created from.
    pub image_name: String,
    pub state: State,
    pub log_path: String,
    pub hostname_path: String,
    pub hosts_path: String,
    pub resolv_conf_path: String,
    /// Automatic restarts since the last manual start.
    #[serde(default)]
    pub restart_count: u32,
    /// Stopped or killed through the API (unless-stopped does not restart).
    #[serde(default)]
    pub has_been_manually_stopped: bool,
    /// The init process's stdio FIFOs while a task exists (reopened by a
    /// restarted orcad).
    #[serde(default)]
    pub stdio: Option<StdioPaths>,
    /// Networks joined (name → endpoint; addresses while running).
    #[serde(default)]
    pub networks: BTreeMap<String, Endpoint>,
    /// Published ports while running.
    #[serde(default)]
    pub ports: Vec<crate::network::portmap::Mapping>,
    /// Volumes (and VolumesFrom binds) mounted into the container.
    #[serde(default)]
    pub mount_points: Vec<crate::volumes::MountPoint>,
}

/// The stdio FIFO paths of a task ("" = none).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StdioPaths {
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
}

/// A container's membership of a user-defined network.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Endpoint {
    pub network_id: String,
    #[serde(default)]
    pub aliases: Vec<String>,
    /// Links on a user-defined network (`name[:alias]`, resolved by its
    /// embedded DNS for this container only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub links: Vec<String>,
    /// The rest is set while the container runs (see `networks`).
    #[serde(default)]
    pub endpoint_id: String,
    #[serde(default)]
    pub ip: String,
    #[serde(default)]
    pub prefix_len: u8,
    #[serde(default)]
    pub gateway: String,
    #[serde(default)]
    pub mac: String,
    /// The host end of the veth pair.
    #[serde(default)]
    pub veth: String,
    /// The interface inside the container (eth0, eth1…).
    #[serde(default)]
    pub ifname: String,
}

/// Docker's restart policies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartPolicy {
    No,
    Always,
    UnlessStopped,
    /// With the maximum retry count (0 = unlimited).
    OnFailure(u32),
}

impl RestartPolicy {
    /// HostConfig.RestartPolicy, validated with dockerd's messages.
    pub fn from_host_config(hc: &Value) -> Result<RestartPolicy> {
        let rp = &hc["RestartPolicy"];
        let name = rp["Name"].as_str().unwrap_or("");
        let max = rp["MaximumRetryCount"].as_i64().unwrap_or(0);
        match name {
            "always" | "unless-stopped" | "no" => {
                if max != 0 {
                    let mut msg = "invalid restart policy: maximum retry count can only be used with 'on-failure'".to_string();
                    if max < 0 {
                        msg.push_str(" and cannot be negative");
                    }
                    return Err(EngineError::BadRequest(msg));
                }
                Ok(match name {
                    "always" => RestartPolicy::Always,
                    "unless-stopped" => RestartPolicy::UnlessStopped,
                    _ => RestartPolicy::No,
                })
            }
            "on-failure" => {
                if max < 0 {
                    return Err(EngineError::BadRequest(
                        "invalid restart policy: maximum retry count cannot be negative".into(),
                    ));
                }
                Ok(RestartPolicy::OnFailure(max.min(u32::MAX as i64) as u32))
            }
            "" => Ok(RestartPolicy::No),
            other => Err(EngineError::BadRequest(format!(
                "invalid restart policy: unknown policy '{other}'; use one of 'no', 'always', 'on-failure', or 'unless-stopped'"
            ))),
        }
    }
}

/// dockerd's restart manager state (memory only): the backoff delay and
/// whether an API stop/kill cancelled restarts.
#[derive(Debug, Default)]
pub(crate) struct RestartState {
    timeout: Duration,
    cancelled: bool,
    /// Bumped to invalidate a pending delayed restart.
    generation: u64,
}

/// First restart delay; doubled per restart, capped at [`RESTART_MAX`],
/// back to the start after a run of 10 s (dockerd's numbers).
pub const RESTART_FIRST: Duration = Duration::from_millis(100);
/// Longest restart delay.
pub const RESTART_MAX: Duration = Duration::from_secs(60);

/// What POST /containers/{id}/attach streams.
pub struct Attached {
    pub tty: bool,
    /// `None` when the container cannot produce output any more.
    pub rx: Option<broadcast::Receiver<StreamMsg>>,
    /// The container's stdin (OpenStdin).
    pub stdin: Option<Arc<StdinPipe>>,
    /// Close the container's stdin when the client's stdin ends.
    pub stdin_once: bool,
}

/// Exit/removal notifications of one container.
#[derive(Debug, Clone, Default)]
pub struct Events {
    pub exits: u64,
    pub exit_code: i64,
    pub removed: bool,
}

/// Output of a container, fanned out to attached clients.
#[derive(Debug, Clone)]
pub enum StreamMsg {
    /// (1 = stdout, 2 = stderr, data)
    Data(u8, Bytes),
    /// The container's stdio closed.
    End,
}

/// A container known to orcad.
pub struct Entry {
    pub rec: Mutex<Record>,
    pub events: watch::Sender<Events>,
    pub streams: broadcast::Sender<StreamMsg>,
    /// True while the stdio copiers run.
    pub io_running: watch::Sender<bool>,
    /// Serializes start/stop/remove.
    pub op: tokio::sync::Mutex<()>,
    /// The task's stdin (OpenStdin containers).
    pub stdin: Arc<StdinPipe>,
    /// Restart policy bookkeeping.
    pub(crate) restart: Mutex<RestartState>,
    /// The rootfs mounts `Snapshots.Prepare` answered at create, for the
    /// first start (later starts, and starts after an orcad restart, ask
    /// `Snapshots.Mounts`: an active snapshot's mounts never change).
    rootfs_mounts: Mutex<Option<Vec<orca_proto::types::Mount>>>,
    /// The supervisor reported an OOM kill in the container during this
    /// run (`/tasks/oom`): `State.OOMKilled` at its exit, as dockerd.
    oom_seen: watch::Sender<bool>,
}

impl Entry {
    fn new(rec: Record) -> Arc<Entry> {
        Arc::new(Entry {
            rec: Mutex::new(rec),
            events: watch::channel(Events::default()).0,
            streams: broadcast::channel(1024).0,
            io_running: watch::channel(false).0,
            op: tokio::sync::Mutex::new(()),
            stdin: Arc::new(StdinPipe::default()),
            restart: Mutex::new(RestartState::default()),
            rootfs_mounts: Mutex::new(None),
            oom_seen: watch::channel(false).0,
        })
    }

    fn restart_state(&self) -> std::sync::MutexGuard<'_, RestartState> {
        self.restart.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A copy of the record.
    pub fn record(&self) -> Record {
        self.rec.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub(crate) fn with_rec<T>(&self, f: impl FnOnce(&mut Record) -> T) -> T {
        let mut g = self.rec.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut g)
    }

    /// Waits (bounded) for the next exit after `since` exits.
    async fn wait_exit(&self, since: u64, timeout: Option<Duration>) -> bool {
        let mut rx = self.events.subscribe();
        let fut = async {
            loop {
                {
                    let e = rx.borrow_and_update();
                    if e.exits > since || e.removed {
                        return true;
                    }
                }
                if rx.changed().await.is_err() {
                    return true;
                }
            }
        };
        match timeout {
            Some(t) => tokio::time::timeout(t, fut).await.unwrap_or(false),
            None => fut.await,
        }
    }
}

#[derive(Default)]
pub(crate) enum StdinState {
    /// No task reads it yet: writers wait.
    #[default]
    NotOpen,
    Open(Arc<File>),
    /// Closed for this run of the process.
    Closed,
}

/// The write side of a process's stdin FIFO. Writers that come before the
/// process starts (attach precedes start) wait until it is opened.
#[derive(Default)]
pub struct StdinPipe {
    state: Mutex<StdinState>,
    changed: tokio::sync::Notify,
    /// The process whose stdin this is (containerd client, container ID,
    /// exec ID): the shim holds its own write side of the FIFO, closed with
    /// `Tasks.CloseIO`.
    process: Mutex<Option<(Containerd, String, String)>>,
}

impl StdinPipe {
    pub(crate) fn set(&self, st: StdinState) {
        *self.state.lock().unwrap_or_else(|p| p.into_inner()) = st;
        self.changed.notify_waiters();
    }

    /// Waits until the pipe is open (or closed: `None`).
    async fn open_file(&self) -> Option<Arc<File>> {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            match &*self.state.lock().unwrap_or_else(|p| p.into_inner()) {
                StdinState::Open(f) => return Some(f.clone()),
                StdinState::Closed => return None,
                StdinState::NotOpen => {}
            }
            notified.await;
        }
    }

    /// Writes client bytes to the process's stdin.
    pub async fn write(&self, data: Bytes) -> std::io::Result<()> {
        let Some(f) = self.open_file().await else {
            return Err(std::io::ErrorKind::BrokenPipe.into());
        };
        tokio::task::spawn_blocking(move || (&*f).write_all(&data))
            .await
            .map_err(std::io::Error::other)?
    }

    /// Opens the pipe for the writers: `file` is the FIFO's write side for
    /// the process (`container_id`, `exec_id`).
    pub(crate) fn open(&self, file: File, ctrd: &Containerd, container_id: &str, exec_id: &str) {
        *self.process.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((ctrd.clone(), container_id.to_string(), exec_id.to_string()));
        self.set(StdinState::Open(Arc::new(file)));
    }

    /// Closes stdin (the process reads EOF), once it has been opened.
    pub async fn close(&self) {
        if self.open_file().await.is_none() {
            return;
        }
        self.set(StdinState::Closed);
        let target = self
            .process
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if let Some((ctrd, cid, eid)) = target {
            if let Err(s) = ctrd
                .tasks()
                .close_io(ctrd.req(tasks::CloseIoRequest {
                    container_id: cid,
                    exec_id: eid,
                    stdin: true,
                }))
                .await
            {
                debug!("closing stdin: {s}");
            }
        }
    }
}

/// An OCI spec as the `Any` containerd keeps in a container record.
fn spec_any(spec: &Value) -> Result<prost_types::Any> {
    Ok(prost_types::Any {
        type_url: "types.containerd.io/opencontainers/runtime-spec/1/Spec".into(),
        value: serde_json::to_vec(spec).map_err(EngineError::internal)?,
    })
}

/// Creates a stdin FIFO and opens it read-write, so that a writer exists
/// before the shim opens its read side.
pub(crate) fn stdin_fifo(path: &Path) -> Result<File> {
    let _ = fs::remove_file(path);
    nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(0o600))
        .map_err(|e| EngineError::internal(format!("mkfifo {}: {e}", path.display())))?;
    Ok(OpenOptions::new().read(true).write(true).open(path)?)
}

/// Once the shim reads the FIFO: a write-only descriptor instead of the
/// read-write one, so writes fail (EPIPE) rather than block forever when
/// the reader goes away.
pub(crate) fn stdin_writer(path: &Path, rdwr: File) -> File {
    match OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
    {
        Ok(f) => {
            if let Ok(fl) = nix::fcntl::fcntl(f.as_raw_fd(), nix::fcntl::FcntlArg::F_GETFL) {
                let fl = nix::fcntl::OFlag::from_bits_truncate(fl) & !nix::fcntl::OFlag::O_NONBLOCK;
                let _ = nix::fcntl::fcntl(f.as_raw_fd(), nix::fcntl::FcntlArg::F_SETFL(fl));
            }
            f
        }
        Err(_) => rdwr,
    }
}

/// The wait conditions of POST /containers/{id}/wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitCondition {
    NotRunning,
    NextExit,
    Removed,
}

/// Options of GET /containers/{id}/logs.
#[derive(Debug, Clone)]
pub struct LogOptions {
    pub stdout: bool,
    pub stderr: bool,
    pub follow: bool,
    pub tail: Option<usize>,
    pub timestamps: bool,
}

fn str_slice(v: &Value, field: &str) -> Result<Option<Vec<String>>> {
    match v {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(vec![s.clone()])),
        Value::Array(a) => a
            .iter()
            .map(|x| {
                x.as_str().map(String::from).ok_or_else(|| {
                    EngineError::BadRequest(format!("json: cannot unmarshal {x} into Go struct field Config.{field} of type string"))
                })
            })
            .collect::<Result<Vec<_>>>()
            .map(Some),
        other => Err(EngineError::BadRequest(format!(
            "json: cannot unmarshal {other} into Go struct field Config.{field} of type strslice.StrSlice"
        ))),
    }
}

pub(crate) fn valid_name(n: &str) -> bool {
    let n = n.strip_prefix('/').unwrap_or(n);
    let b = n.as_bytes();
    b.len() >= 2
        && b[0].is_ascii_alphanumeric()
        && b[1..]
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || b"_.-".contains(c))
}

fn env_key(e: &str) -> &str {
    e.split_once('=').map(|(k, _)| k).unwrap_or(e)
}

/// Image env first, then the user's, replacing same keys.
pub(crate) fn merge_env(image: &[String], user: &[String]) -> Vec<String> {
    let mut out: Vec<String> = image.to_vec();
    for u in user {
        match out.iter_mut().find(|e| env_key(e) == env_key(u)) {
            Some(e) => *e = u.clone(),
            None => out.push(u.clone()),
        }
    }
    out
}

/// Parses a signal name ("SIGTERM", "TERM", "15").
pub fn parse_signal(s: &str) -> Result<i32> {
    if let Ok(n) = s.parse::<i32>() {
        if n > 0 && n < 65 {
            return Ok(n);
        }
    }
    let up = s.to_ascii_uppercase();
    let name = if up.starts_with("SIG") {
        up
    } else {
        format!("SIG{up}")
    };
    name.parse::<nix::sys::signal::Signal>()
        .map(|s| s as i32)
        .map_err(|_| EngineError::BadRequest(format!("Invalid signal: {s}")))
}

/// The process environment (dockerd's `CreateDaemonEnvironment`): PATH,
/// HOSTNAME, TERM with a TTY, the link variables, then the container's
/// own variables over them.
fn spec_env(rec: &Record, linked: &[String]) -> Vec<String> {
    let c = &rec.config;
    let mut env = Vec::new();
    if !c.env.iter().any(|e| env_key(e) == "PATH") {
        env.push(DEFAULT_PATH.to_string());
    }
    env.push(format!("HOSTNAME={}", c.hostname));
    if c.tty {
        env.push("TERM=xterm".into());
    }
    env.extend(linked.iter().cloned());
    let mut env = merge_env(&env, &c.env);
    env.dedup();
    env
}

/// `rec` with only the numeric `HostConfig.GroupAdd` entries (a spec built
/// before the rootfs's /etc/group can be read).
fn numeric_group_add(rec: &Record) -> Record {
    let mut r = rec.clone();
    let gids: Vec<String> = util::json_strings(&rec.host_config["GroupAdd"])
        .into_iter()
        .filter(|g| g.parse::<u32>().is_ok())
        .collect();
    r.host_config["GroupAdd"] = json!(gids);
    r
}

/// Whether the container mounts something of its own at /dev/shm (then no
/// IPC mode puts a tmpfs or bind there).
fn own_dev_shm(rec: &Record) -> bool {
    let at = |d: &str| d.trim_end_matches('/') == "/dev/shm";
    spec::user_mounts_no_side_effects(&rec.host_config)
        .iter()
        .any(|m| at(m["destination"].as_str().unwrap_or("")))
        || rec.mount_points.iter().any(|m| at(&m.destination))
}

/// Whether `p` is the root of a mount (a different device than its parent).
fn is_mountpoint(p: &Path) -> bool {
    match (fs::metadata(p), p.parent().map(fs::metadata)) {
        (Ok(m), Some(Ok(parent))) => m.dev() != parent.dev(),
        _ => false,
    }
}

/// HostConfig options orcad does not implement yet: refused with 501 rather
/// than ignored.
fn check_host_config(hc: &Value) -> Result<()> {
    let ni = |what: &str| {
        Err(EngineError::NotImplemented(format!(
            "{what} is not implemented in orcad yet"
        )))
    };
    let nonempty = |k: &str| match &hc[k] {
        Value::Null => false,
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64() != Some(0.0),
        Value::String(s) => !s.is_empty(),
    };
    for (k, what) in [("VolumeDriver", "HostConfig.VolumeDriver")] {
        if nonempty(k) {
            return ni(what);
        }
    }
    // Devices and cgroup rules: checked (host nodes gathered) before
    // anything is created; GroupAdd names are resolved in the rootfs later.
    spec::devices(hc)?;
    if !(hc["GroupAdd"].is_null() || hc["GroupAdd"].is_array()) {
        return Err(EngineError::BadRequest(
            "HostConfig.GroupAdd must be an array of strings".into(),
        ));
    }
    // PidMode, UTSMode and IpcMode: spec::NsModes (all of dockerd's modes).
    spec::NsModes::of(hc)?;
    for (k, ok) in [("UsernsMode", ""), ("CgroupnsMode", "")] {
        let v = hc[k].as_str().unwrap_or("");
        if !(v.is_empty() || v == ok || (k == "CgroupnsMode" && v == "host")) {
            return ni(&format!("HostConfig.{k} {v:?}"));
        }
    }
    crate::network::portmap::check(hc)?;
    crate::networks::check_hosts_and_dns(hc)?;
    let policy = RestartPolicy::from_host_config(hc)?;
    if hc["AutoRemove"].as_bool().unwrap_or(false) && policy != RestartPolicy::No {
        return Err(EngineError::BadRequest(
            "can't create 'AutoRemove' container with restart policy".into(),
        ));
    }
    if let Some(t) = hc["LogConfig"]["Type"].as_str() {
        if !t.is_empty() && t != "json-file" {
            return ni(&format!("log driver {t:?}"));
        }
    }
    Ok(())
}

/// dockerd's restart manager: the delay before the next restart, or
/// `None`. Backoff 100 ms doubling up to 1 min, reset after a run of 10 s
/// or more.
fn should_restart(
    rs: &mut RestartState,
    rec: &Record,
    code: i64,
    ran_for: Duration,
) -> Option<Duration> {
    let policy = RestartPolicy::from_host_config(&rec.host_config).unwrap_or(RestartPolicy::No);
    if policy == RestartPolicy::No || rs.cancelled {
        return None;
    }
    if ran_for >= Duration::from_secs(10) {
        rs.timeout = Duration::ZERO;
    }
    rs.timeout = if rs.timeout.is_zero() {
        RESTART_FIRST
    } else {
        (rs.timeout * 2).min(RESTART_MAX)
    };
    let restart = match policy {
        RestartPolicy::No => false,
        RestartPolicy::Always => true,
        RestartPolicy::UnlessStopped => !rec.has_been_manually_stopped,
        RestartPolicy::OnFailure(max) => (max == 0 || rec.restart_count < max) && code != 0,
    };
    restart.then_some(rs.timeout)
}

/// A container's json-file limits from its (merged) LogConfig.
pub(crate) fn container_log_limits(hc: &Value) -> Result<LogLimits> {
    let opts: BTreeMap<String, String> = match &hc["LogConfig"]["Config"] {
        Value::Null => BTreeMap::new(),
        v => serde_json::from_value(v.clone()).map_err(|e| {
            EngineError::BadRequest(format!("LogConfig.Config must map strings to strings: {e}"))
        })?,
    };
    log_limits(&opts).map_err(|(ni, m)| {
        if ni {
            EngineError::NotImplemented(m)
        } else {
            EngineError::BadRequest(m)
        }
    })
}

/// The container service.
pub struct Containers {
    pub(crate) cfg: ContainersConfig,
    pub(crate) ctrd: Containerd,
    images: ImageService,
    map: Mutex<HashMap<String, Arc<Entry>>>,
    /// Exec instances by exec ID.
    pub(crate) execs: Mutex<HashMap<String, Arc<crate::exec::ExecEntry>>>,
    /// The event stream.
    pub events: Arc<EventBus>,
    /// User-defined network records.
    pub networks: Arc<Networks>,
    /// The local volume store.
    pub volumes: Arc<crate::volumes::Volumes>,
    /// Set at daemon shutdown: exits are not restarted.
    shutting_down: AtomicBool,
    /// Set at a live-restore shutdown: stdio copiers stop at a line
    /// boundary and leave the rest in the FIFOs for the next orcad.
    stop_copiers: watch::Sender<bool>,
    /// Held (read) by each removal still finishing in the background (the
    /// containerd container, the rootfs snapshot, the directories); taken
    /// (write) by what must see them gone: image removal and prune, daemon
    /// shutdown. See [`Self::settle_removals`].
    removals: Arc<tokio::sync::RwLock<()>>,
}

impl Containers {
    /// Creates the service and loads the containers recorded under data-root
    /// (reattaching to running tasks, collecting exits that happened while
    /// orcad was down, and starting containers whose restart policy says
    /// so).
    pub async fn new(
        cfg: ContainersConfig,
        ctrd: Containerd,
        images: ImageService,
        events: Arc<EventBus>,
        networks: Arc<Networks>,
    ) -> anyhow::Result<Arc<Containers>> {
        fs::create_dir_all(cfg.data_root.join("containers"))?;
        fs::create_dir_all(cfg.exec_root.join("containers"))?;
        let volumes = crate::volumes::Volumes::new(&cfg.data_root, events.clone())?;
        let c = Arc::new(Containers {
            cfg,
            ctrd,
            images,
            map: Mutex::new(HashMap::new()),
            execs: Mutex::new(HashMap::new()),
            events,
            networks,
            volumes,
            shutting_down: AtomicBool::new(false),
            stop_copiers: watch::Sender::new(false),
            removals: Arc::new(tokio::sync::RwLock::new(())),
        });
        c.load().await;
        tokio::spawn(c.clone().watch_ooms());
        Ok(c)
    }

    /// Follows the supervisor's `/tasks/oom` events of our namespace for as
    /// long as orcad runs (resubscribing after the supervisor restarts):
    /// each marks its container's run as OOM-killed and is reported as
    /// docker's `oom` event.
    async fn watch_ooms(self: Arc<Self>) {
        use orca_proto::events::events_client::EventsClient;
        use orca_proto::prost::Message;
        let filter = format!("topic==\"/tasks/oom\",namespace=={}", self.ctrd.namespace());
        loop {
            let sub = EventsClient::new(self.ctrd.channel())
                .subscribe(orca_proto::events::SubscribeRequest {
                    filters: vec![filter.clone()],
                })
                .await;
            if let Ok(stream) = sub {
                let mut stream = stream.into_inner();
                while let Ok(Some(env)) = stream.message().await {
                    let Some(any) = env.event else { continue };
                    let Ok(oom) = orca_proto::containerd::events::TaskOom::decode(&any.value[..])
                    else {
                        continue;
                    };
                    let Ok(entry) = self.lookup(&oom.container_id) else {
                        continue;
                    };
                    entry.oom_seen.send_replace(true);
                    info!(id = %oom.container_id, "container OOM-killed");
                    self.events.container("oom", &entry.record(), &[]);
                }
            }
            if self.shutting_down.load(Ordering::SeqCst) {
                return;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// Daemon shutdown. Without live-restore every running container is
    /// stopped (its stop signal, then SIGKILL after its stop timeout capped
    /// by `timeout`), as dockerd does. With live-restore containers keep
    /// running: the stdio copiers stop at a line boundary so the next orcad
    /// reopens the FIFOs without losing or splitting output.
    pub async fn shutdown(self: &Arc<Self>, live_restore: bool, timeout: Duration) {
        self.shutting_down.store(true, Ordering::SeqCst);
        self.stop_at_shutdown(live_restore, timeout).await;
        let settled = tokio::time::timeout(Duration::from_secs(10), self.settle_removals()).await;
        if settled.is_err() {
            warn!("container removals still finishing at shutdown (the next start completes them)");
        }
    }

    async fn stop_at_shutdown(self: &Arc<Self>, live_restore: bool, timeout: Duration) {
        let entries = self.entries();
        if live_restore {
            self.stop_copiers.send_replace(true);
            for e in &entries {
                let mut io = e.io_running.subscribe();
                let _ = tokio::time::timeout(Duration::from_secs(2), io.wait_for(|r| !*r)).await;
            }
            info!("live-restore: containers left running");
            return;
        }
        let mut waits = Vec::new();
        for e in entries {
            let rec = e.record();
            if !rec.state.running || rec.state.restarting {
                continue;
            }
            let me = self.clone();
            let t = rec
                .config
                .stop_timeout
                .unwrap_or(10)
                .min(timeout.as_secs() as i64);
            waits.push(tokio::spawn(async move {
                if let Err(err) = me.stop_inner(&e, Some(t), None, false).await {
                    warn!(id = %rec.id, "stopping at shutdown: {err}");
                }
            }));
        }
        if !waits.is_empty() {
            info!(n = waits.len(), "stopping running containers");
        }
        let all = async {
            for w in waits {
                let _ = w.await;
            }
        };
        if tokio::time::timeout(timeout + Duration::from_secs(5), all)
            .await
            .is_err()
        {
            warn!("some containers did not stop within the shutdown timeout");
        }
    }

    fn dir(&self, id: &str) -> PathBuf {
        self.cfg.data_root.join("containers").join(id)
    }

    /// `IpcMode shareable`: where the container's /dev/shm tmpfs is mounted
    /// on the host (dockerd's ShmPath), from its start to its exit.
    fn shm_dir(&self, id: &str) -> PathBuf {
        self.dir(id).join("shm")
    }

    /// The host path that is `rec`'s /dev/shm, when others can join it:
    /// its own shareable tmpfs, the host's /dev/shm, or (`container:<x>`)
    /// the one it joined.
    fn shm_source(&self, rec: &Record) -> Option<PathBuf> {
        let mut rec = rec.clone();
        for _ in 0..8 {
            let mode = rec.host_config["IpcMode"]
                .as_str()
                .unwrap_or("")
                .to_string();
            match mode.as_str() {
                "shareable" if !own_dev_shm(&rec) => return Some(self.shm_dir(&rec.id)),
                "host" => return Some(PathBuf::from("/dev/shm")),
                m => {
                    rec = self
                        .lookup(crate::networks::container_target(m)?)
                        .ok()?
                        .record()
                }
            }
        }
        None
    }

    /// Mounts the host-side tmpfs of a shareable container (`mode=1777`,
    /// `size=ShmSize`, 64 MiB by default), unless it is already there.
    fn mount_shm(&self, rec: &Record) -> Result<()> {
        if rec.host_config["IpcMode"] != "shareable" || own_dev_shm(rec) {
            return Ok(());
        }
        let dir = self.shm_dir(&rec.id);
        fs::create_dir_all(&dir)?;
        if is_mountpoint(&dir) {
            return Ok(());
        }
        let size = match rec.host_config["ShmSize"].as_i64().unwrap_or(0) {
            n if n > 0 => n,
            _ => 64 << 20,
        };
        use nix::mount::MsFlags;
        nix::mount::mount(
            Some("shm"),
            &dir,
            Some("tmpfs"),
            MsFlags::MS_NOEXEC | MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some(format!("mode=1777,size={size}").as_str()),
        )
        .map_err(|e| EngineError::internal(format!("mounting shm tmpfs: {e}")))?;
        debug!(id = %rec.id, dir = %dir.display(), "shareable /dev/shm mounted");
        Ok(())
    }

    /// Undoes `mount_shm` (lazily: containers that joined keep their bind).
    fn unmount_shm(&self, id: &str) {
        unmount_shm_at(&self.shm_dir(id), id);
    }

    pub(crate) fn exec_dir(&self, id: &str) -> PathBuf {
        self.cfg.exec_root.join("containers").join(id)
    }

    pub(crate) fn save(&self, rec: &Record) -> Result<()> {
        let data = serde_json::to_vec_pretty(rec).map_err(EngineError::internal)?;
        util::write_atomic(&self.dir(&rec.id).join("config.json"), &data)?;
        Ok(())
    }

    /// Saves a start or exit of a container. Without a restart policy the
    /// record is replaced atomically (temp file + rename) but not fsynced:
    /// a crash of orcad never loses or tears it, and after a power loss —
    /// every task gone — `load` reconciles the state with the supervisor
    /// anyway. With a restart policy the record decides what comes back at
    /// boot, so it is fsynced as every other save.
    fn save_state(&self, rec: &Record) -> Result<()> {
        let policy = RestartPolicy::from_host_config(&rec.host_config).unwrap_or(RestartPolicy::No);
        if !matches!(policy, RestartPolicy::No) {
            return self.save(rec);
        }
        let data = serde_json::to_vec_pretty(rec).map_err(EngineError::internal)?;
        let path = self.dir(&rec.id).join("config.json");
        let tmp = self
            .dir(&rec.id)
            .join(format!(".config.json.tmp-{}", util::random_hex(4)));
        fs::write(&tmp, &data)?;
        if let Err(e) = fs::rename(&tmp, &path) {
            let _ = fs::remove_file(&tmp);
            return Err(e.into());
        }
        Ok(())
    }

    pub(crate) fn lock_map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Entry>>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn entries(&self) -> Vec<Arc<Entry>> {
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// Containers created from an image (ID, running).
    pub fn users_of_image(&self, image_id: &str) -> Vec<(String, bool)> {
        self.entries()
            .iter()
            .map(|e| e.record())
            .filter(|r| r.image == image_id)
            .map(|r| (r.id, r.state.running))
            .collect()
    }

    /// Counts (total, running, stopped).
    pub fn counts(&self) -> (usize, usize, usize) {
        let all = self.entries();
        let running = all.iter().filter(|e| e.record().state.running).count();
        (all.len(), running, all.len() - running)
    }

    async fn load(self: &Arc<Self>) {
        let Ok(rd) = fs::read_dir(self.cfg.data_root.join("containers")) else {
            return;
        };
        let mut to_start = Vec::new();
        for d in rd.filter_map(|e| e.ok()) {
            let p = d.path().join("config.json");
            if !p.exists() && d.path().is_dir() {
                // A removal whose background part did not finish.
                let id = d.file_name().to_string_lossy().into_owned();
                let ctx = self.clone_for_removal();
                let finished = match ctx.delete_task(&id).await {
                    Ok(()) => ctx.finish(&id).await,
                    Err(e) => Err(e),
                };
                if let Err(e) = finished {
                    warn!(id, "completing an earlier removal: {e}");
                }
                continue;
            }
            let rec: Record = match fs::read(&p)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
            {
                Ok(r) => r,
                Err(e) => {
                    warn!(path = %p.display(), "skipping unreadable container record: {e}");
                    continue;
                }
            };
            let id = rec.id.clone();
            let was_running = rec.state.running;
            let entry = Entry::new(rec);
            self.map
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(id.clone(), entry.clone());
            if !was_running {
                if self.restart_at_daemon_start(&entry) {
                    to_start.push(entry);
                }
                continue;
            }
            let task = self
                .ctrd
                .tasks()
                .get(self.ctrd.req(tasks::GetRequest {
                    container_id: id.clone(),
                    exec_id: String::new(),
                }))
                .await
                .ok()
                .and_then(|r| r.into_inner().process);
            match task {
                // RUNNING, PAUSED, PAUSING: reattach stdio and monitor again.
                Some(p) if matches!(p.status, 2 | 4 | 5) => {
                    let paused = p.status != 2;
                    entry.with_rec(|r| {
                        r.state.running = true;
                        r.state.restarting = false;
                        r.state.paused = paused;
                        r.state.status = if paused { "paused" } else { "running" }.into();
                        r.state.pid = p.pid;
                    });
                    let _ = self.save(&entry.record());
                    self.networks.restore(&entry.record()).await;
                    self.reattach_io(&entry);
                    info!(id, pid = p.pid, "container still running: reattached");
                    let me = self.clone();
                    tokio::spawn(async move { me.monitor(entry).await });
                }
                other => {
                    // Exited while orcad was down: collect the output the
                    // FIFOs still hold and the exit status, then clean up.
                    let (code, at) = match &other {
                        Some(p) if p.status == 3 => (
                            p.exit_status as i64,
                            p.exited_at
                                .as_ref()
                                .map(|t| util::rfc3339(util::from_proto_ts(Some(t))))
                                .unwrap_or_else(util::now),
                        ),
                        _ => (255, util::now()),
                    };
                    self.drain_io(&entry);
                    let _ = self.ctrd.delete_task(&id).await;
                    let mut nr = entry.record();
                    self.networks.release(&mut nr).await;
                    entry.with_rec(|r| {
                        r.state.running = false;
                        r.state.restarting = false;
                        r.state.paused = false;
                        r.state.status = "exited".into();
                        r.state.pid = 0;
                        r.state.exit_code = code;
                        r.state.finished_at = at;
                        r.stdio = None;
                        r.networks = nr.networks;
                        r.ports = nr.ports;
                    });
                    let _ = self.save(&entry.record());
                    info!(id, code, "container exited while orcad was down");
                    self.events.container(
                        "die",
                        &entry.record(),
                        &[("exitCode", code.to_string())],
                    );
                    if entry.record().auto_remove {
                        if let Err(e) = self.remove_entry(&entry).await {
                            warn!(id, "auto-remove failed: {e}");
                        }
                    } else if self.restart_at_daemon_start(&entry) {
                        to_start.push(entry);
                    }
                }
            }
        }
        for entry in to_start {
            let me = self.clone();
            tokio::spawn(async move {
                let id = entry.record().id;
                info!(id, "starting container (restart policy)");
                let _op = entry.op.lock().await;
                if let Err(e) = me.start_locked(&entry).await {
                    warn!(id, "restart-policy start failed: {e}");
                }
            });
        }
    }

    /// dockerd's `ShouldRestart` at daemon start: `always`, `unless-stopped`
    /// unless stopped through the API, `on-failure` after a failure with
    /// retries left; only containers that ran before.
    fn restart_at_daemon_start(&self, entry: &Arc<Entry>) -> bool {
        let rec = entry.record();
        if rec.state.started_at == util::ZERO_TIME || rec.state.status == "removing" {
            return false;
        }
        match RestartPolicy::from_host_config(&rec.host_config).unwrap_or(RestartPolicy::No) {
            RestartPolicy::No => false,
            RestartPolicy::Always => true,
            RestartPolicy::UnlessStopped => !rec.has_been_manually_stopped,
            RestartPolicy::OnFailure(max) => {
                rec.state.exit_code != 0 && (max == 0 || rec.restart_count < max)
            }
        }
    }

    /// The FIFOs of the recorded stdio (older records: the default paths).
    fn stdio_fifos(&self, rec: &Record) -> (Vec<(u8, PathBuf)>, Option<PathBuf>) {
        let st = rec.stdio.clone().unwrap_or_else(|| {
            let x = self.exec_dir(&rec.id);
            StdioPaths {
                stdin: if rec.config.open_stdin {
                    x.join("init-stdin").display().to_string()
                } else {
                    String::new()
                },
                stdout: x.join("init-stdout").display().to_string(),
                stderr: if rec.config.tty {
                    String::new()
                } else {
                    x.join("init-stderr").display().to_string()
                },
            }
        });
        let mut out = Vec::new();
        if !st.stdout.is_empty() {
            out.push((1, PathBuf::from(&st.stdout)));
        }
        if !st.stderr.is_empty() {
            out.push((2, PathBuf::from(&st.stderr)));
        }
        let stdin = (!st.stdin.is_empty()).then(|| PathBuf::from(&st.stdin));
        (out, stdin)
    }

    fn open_log(&self, rec: &Record) -> Result<Arc<Mutex<JsonLog>>> {
        let limits = container_log_limits(&rec.host_config).unwrap_or_default();
        Ok(Arc::new(Mutex::new(JsonLog::open(
            Path::new(&rec.log_path),
            limits,
        )?)))
    }

    /// Starts the stdio copier threads (`reattach`: the FIFOs already have
    /// writers, open them without waiting).
    fn spawn_copiers(&self, entry: &Arc<Entry>, fifos: &[(u8, PathBuf)], log: Arc<Mutex<JsonLog>>) {
        entry.io_running.send_replace(true);
        let mut handles = Vec::new();
        for (sid, p) in fifos.iter().cloned() {
            let log = log.clone();
            let tx = entry.streams.clone();
            let stop = self.stop_copiers.subscribe();
            handles.push(tokio::spawn(copy_stream(p, sid, log, tx, stop)));
        }
        let entry = entry.clone();
        tokio::spawn(async move {
            for h in handles {
                let _ = h.await;
            }
            let _ = entry.streams.send(StreamMsg::End);
            entry.io_running.send_replace(false);
        });
    }

    /// Reopens the stdio FIFOs of a task that kept running while orcad was
    /// down: output continues into the json-file log and to attach clients,
    /// stdin accepts writers again.
    fn reattach_io(&self, entry: &Arc<Entry>) {
        let rec = entry.record();
        let (fifos, stdin) = self.stdio_fifos(&rec);
        match self.open_log(&rec) {
            Ok(log) => self.spawn_copiers(entry, &fifos, log),
            Err(e) => warn!(id = %rec.id, "cannot reopen the container log: {e}"),
        }
        if let Some(p) = stdin {
            // The shim holds the read side: a non-blocking open succeeds.
            match OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(&p)
            {
                Ok(f) => {
                    set_blocking(&f);
                    entry.stdin.open(f, &self.ctrd, &rec.id, "");
                }
                Err(e) => debug!(id = %rec.id, "stdin fifo not reopened: {e}"),
            }
        }
    }

    /// Copies what the FIFOs of an exited task still buffer into the log.
    fn drain_io(&self, entry: &Arc<Entry>) {
        let rec = entry.record();
        let (fifos, _) = self.stdio_fifos(&rec);
        let Ok(log) = self.open_log(&rec) else {
            return;
        };
        for (sid, p) in fifos {
            let Ok(mut f) = OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(&p)
            else {
                continue;
            };
            let name = if sid == 2 { "stderr" } else { "stdout" };
            let mut data = Vec::new();
            let mut buf = vec![0u8; 32 * 1024];
            loop {
                match f.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => data.extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(_) => break,
                }
            }
            for line in data.split_inclusive(|&b| b == b'\n') {
                write_log_line(&log, name, line);
            }
        }
    }

    /// Finds a container by id, name or unique id prefix.
    pub fn lookup(&self, key: &str) -> Result<Arc<Entry>> {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = map.get(key) {
            return Ok(e.clone());
        }
        let name = if key.starts_with('/') {
            key.to_string()
        } else {
            format!("/{key}")
        };
        if let Some(e) = map.values().find(|e| e.record().name == name) {
            return Ok(e.clone());
        }
        if !key.is_empty() && key.bytes().all(|b| b.is_ascii_hexdigit()) {
            let found: Vec<&Arc<Entry>> = map
                .iter()
                .filter(|(id, _)| id.starts_with(key))
                .map(|(_, e)| e)
                .collect();
            match found.len() {
                1 => return Ok(found[0].clone()),
                0 => {}
                _ => {
                    return Err(EngineError::BadRequest(format!(
                        "multiple IDs found with provided prefix: {key}"
                    )))
                }
            }
        }
        Err(EngineError::NotFound(format!("No such container: {key}")))
    }

    /// POST /containers/create.
    pub async fn create(self: &Arc<Self>, name: Option<&str>, body: &Value) -> Result<String> {
        if !body.is_object() {
            return Err(EngineError::BadRequest(
                "config cannot be empty in order to create a container".into(),
            ));
        }
        if let Some(n) = name.filter(|n| !n.is_empty()) {
            if !valid_name(n) {
                return Err(EngineError::BadRequest(format!(
                    "Invalid container name ({n}), only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed"
                )));
            }
        }
        let hc = match &body["HostConfig"] {
            Value::Null => json!({}),
            v @ Value::Object(_) => v.clone(),
            _ => {
                return Err(EngineError::BadRequest(
                    "HostConfig must be an object".into(),
                ))
            }
        };
        check_host_config(&hc)?;
        crate::networks::check_network_mode(body, &hc)?;
        crate::networks::check_links(&hc, &|k| self.lookup(k).map(|e| e.record()))?;
        let get_str = |k: &str| -> Result<String> {
            match &body[k] {
                Value::Null => Ok(String::new()),
                Value::String(s) => Ok(s.clone()),
                other => Err(EngineError::BadRequest(format!(
                    "json: cannot unmarshal {other} into Go struct field Config.{k} of type string"
                ))),
            }
        };
        let get_bool = |k: &str| body[k].as_bool().unwrap_or(false);
        let image_ref = get_str("Image")?;
        if image_ref.is_empty() {
            return Err(EngineError::BadRequest("Config.Image must be set".into()));
        }
        let user_env = str_slice(&body["Env"], "Env")?.unwrap_or_default();
        let cmd = str_slice(&body["Cmd"], "Cmd")?;
        let entrypoint = str_slice(&body["Entrypoint"], "Entrypoint")?;
        let mut labels: BTreeMap<String, String> = match &body["Labels"] {
            Value::Null => BTreeMap::new(),
            v => serde_json::from_value(v.clone())
                .map_err(|e| EngineError::BadRequest(format!("Labels: {e}")))?,
        };

        let img = self.images.resolve(&image_ref).await?;
        let ic = &img.config["config"];
        let image_env: Vec<String> = serde_json::from_value(ic["Env"].clone()).unwrap_or_default();
        let mut config = ContainerConfig {
            hostname: get_str("Hostname")?,
            domainname: get_str("Domainname")?,
            user: get_str("User")?,
            attach_stdin: get_bool("AttachStdin"),
            attach_stdout: get_bool("AttachStdout"),
            attach_stderr: get_bool("AttachStderr"),
            tty: get_bool("Tty"),
            open_stdin: get_bool("OpenStdin"),
            stdin_once: get_bool("StdinOnce"),
            env: merge_env(&image_env, &user_env),
            cmd,
            image: image_ref.clone(),
            volumes: match &body["Volumes"] {
                Value::Null => None,
                v @ Value::Object(_) => Some(v.clone()),
                _ => {
                    return Err(EngineError::BadRequest(
                        "json: cannot unmarshal Volumes into Go struct field Config.Volumes of type map[string]struct {}".into(),
                    ))
                }
            },
            working_dir: get_str("WorkingDir")?,
            entrypoint,
            on_build: None,
            labels: BTreeMap::new(),
            stop_signal: body["StopSignal"]
                .as_str()
                .filter(|s| !s.is_empty())
                .map(String::from),
            stop_timeout: body["StopTimeout"].as_i64(),
            exposed_ports: {
                let mut e = serde_json::Map::new();
                for src in [&ic["ExposedPorts"], &body["ExposedPorts"]] {
                    if let Some(o) = src.as_object() {
                        e.extend(o.keys().map(|k| (k.clone(), json!({}))));
                    }
                }
                (!e.is_empty()).then_some(Value::Object(e))
            },
        };
        // Docker's merge of the image config into the user's.
        if config.user.is_empty() {
            config.user = ic["User"].as_str().unwrap_or("").to_string();
        }
        if config.entrypoint.as_deref().unwrap_or_default().is_empty() {
            if config.cmd.as_deref().unwrap_or_default().is_empty() {
                config.cmd = serde_json::from_value(ic["Cmd"].clone()).unwrap_or(None);
            }
            if config.entrypoint.is_none() {
                config.entrypoint =
                    serde_json::from_value(ic["Entrypoint"].clone()).unwrap_or(None);
            }
        }
        if config.working_dir.is_empty() {
            config.working_dir = ic["WorkingDir"].as_str().unwrap_or("").to_string();
        }
        if config.stop_signal.is_none() {
            config.stop_signal = ic["StopSignal"]
                .as_str()
                .filter(|s| !s.is_empty())
                .map(String::from);
        }
        let image_labels: BTreeMap<String, String> =
            serde_json::from_value(ic["Labels"].clone()).unwrap_or_default();
        for (k, v) in image_labels {
            labels.entry(k).or_insert(v);
        }
        config.labels = labels;
        // Image volumes join the user's (dockerd's merge).
        if let Some(iv) = ic["Volumes"].as_object().filter(|o| !o.is_empty()) {
            let mut v = config.volumes.take().unwrap_or_else(|| json!({}));
            for k in iv.keys() {
                if v.get(k).is_none() {
                    v[k] = json!({});
                }
            }
            config.volumes = Some(v);
        }
        if !config.working_dir.is_empty() && !config.working_dir.starts_with('/') {
            return Err(EngineError::BadRequest(format!(
                "the working directory '{}' is invalid, it needs to be an absolute path",
                config.working_dir
            )));
        }
        if let Some(s) = &config.stop_signal {
            parse_signal(s)?;
        }
        spec::parse_user(&config.user)?;
        let mut argv: Vec<String> = config.entrypoint.clone().unwrap_or_default();
        argv.extend(config.cmd.clone().unwrap_or_default());
        if argv.is_empty() {
            return Err(EngineError::BadRequest("No command specified".into()));
        }
        let top = img
            .top_chain_id()
            .ok_or_else(|| EngineError::internal(format!("image {} has no layers", img.name)))?
            .to_string();
        let networks = self.networks_of(&hc, &body["NetworkingConfig"])?;
        // Volumes: planned now (validated), created once the name is reserved.
        let planned = {
            let config_volumes: Vec<String> = config
                .volumes
                .as_ref()
                .and_then(|v| v.as_object())
                .map(|o| o.keys().cloned().collect())
                .unwrap_or_default();
            let taken: Vec<String> = spec::user_mounts_no_side_effects(&hc)
                .iter()
                .filter_map(|m| m["destination"].as_str().map(String::from))
                .collect();
            crate::volumes::plan(&hc, &config_volumes, self.volumes_from(&hc)?, &taken)?
        };
        // dockerd's mergeAndVerifyLogConfig: the daemon's log-opts fill in
        // what the container does not set.
        let mut hc = hc;
        if hc["LogConfig"].is_null() || hc["LogConfig"]["Type"].as_str().unwrap_or("").is_empty() {
            let cfg = hc["LogConfig"]["Config"].clone();
            hc["LogConfig"] = json!({"Type": "json-file", "Config": if cfg.is_object() { cfg } else { json!({}) }});
        }
        if !hc["LogConfig"]["Config"].is_object() {
            hc["LogConfig"]["Config"] = json!({});
        }
        for (k, v) in &self.cfg.log_opts {
            if hc["LogConfig"]["Config"].get(k).is_none() {
                hc["LogConfig"]["Config"][k] = json!(v);
            }
        }
        container_log_limits(&hc)?;

        let id = util::random_hex(32);
        let uts_host = hc["UTSMode"] == "host";
        if uts_host && !config.hostname.is_empty() {
            return Err(EngineError::BadRequest(
                "conflicting options: hostname and the UTS mode".into(),
            ));
        }
        if config.hostname.is_empty() {
            // The host's UTS namespace: /etc/hostname says the host's name.
            config.hostname = if hc["NetworkMode"] == "host" || uts_host {
                nix::unistd::gethostname()
                    .ok()
                    .and_then(|h| h.into_string().ok())
                    .unwrap_or_else(|| id[..12].to_string())
            } else {
                id[..12].to_string()
            };
        }
        let dir = self.dir(&id);
        let rec = Record {
            id: id.clone(),
            name: String::new(),
            created: util::now(),
            path: argv[0].clone(),
            args: argv[1..].to_vec(),
            config,
            host_config: {
                let mut h = hc.clone();
                if h["LogConfig"].is_null()
                    || h["LogConfig"]["Type"].as_str().unwrap_or("").is_empty()
                {
                    h["LogConfig"] = json!({"Type": "json-file", "Config": {}});
                }
                if h["NetworkMode"].as_str().unwrap_or("").is_empty() {
                    h["NetworkMode"] = json!("default");
                }
                // dockerd's default-ipc-mode.
                if h["IpcMode"].as_str().unwrap_or("").is_empty() {
                    h["IpcMode"] = json!("private");
                }
                h
            },
            auto_remove: hc["AutoRemove"].as_bool().unwrap_or(false),
            image: img.config_digest.clone(),
            image_name: img.name.clone(),
            state: State::default(),
            log_path: dir.join(format!("{id}-json.log")).display().to_string(),
            hostname_path: dir.join("hostname").display().to_string(),
            hosts_path: dir.join("hosts").display().to_string(),
            resolv_conf_path: dir.join("resolv.conf").display().to_string(),
            restart_count: 0,
            has_been_manually_stopped: false,
            stdio: None,
            networks,
            ports: Vec::new(),
            mount_points: planned.iter().map(|p| p.mp.clone()).collect(),
        };

        // Resources, mounts and security options are checked now (a bad
        // one fails the create, as with dockerd; GroupAdd names are looked
        // up once the rootfs exists).
        let checked_spec = self.build_spec(&numeric_group_add(&rec), None)?;

        // Reserve the name.
        let entry = {
            let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
            let name = match name.filter(|n| !n.is_empty()) {
                Some(n) => format!("/{}", n.trim_start_matches('/')),
                // As dockerd: a few random names (a digit appended after the
                // first), then the short id.
                None => (0..6)
                    .map(|retry| format!("/{}", util::random_name(retry)))
                    .find(|n| !map.values().any(|e| e.record().name == *n))
                    .unwrap_or_else(|| format!("/{}", &id[..12])),
            };
            if let Some(other) = map.values().find(|e| e.record().name == name) {
                return Err(EngineError::Conflict(format!(
                    "Conflict. The container name \"{name}\" is already in use by container \"{}\". \
                     You have to remove (or rename) that container to be able to reuse that name.",
                    other.record().id
                )));
            }
            let mut rec = rec;
            rec.name = name;
            let e = Entry::new(rec);
            map.insert(id.clone(), e.clone());
            e
        };
        // The spec checked above is the containerd container's, unless
        // volumes (mount points) or GroupAdd names complete it below.
        let reusable_spec = planned.is_empty().then_some(checked_spec);
        let volumes_guard = match self.volumes.materialize(planned) {
            Ok((mps, guard)) => {
                entry.with_rec(|r| r.mount_points = mps);
                guard
            }
            Err(e) => {
                self.map
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&id);
                return Err(e);
            }
        };
        match self.create_resources(&entry, &top, reusable_spec).await {
            Ok(()) => {
                volumes_guard.commit();
                info!(id, name = %entry.record().name, "created container");
                self.events.container("create", &entry.record(), &[]);
                Ok(id)
            }
            Err(e) => {
                warn!(id, "create failed: {e}");
                let _ = self.cleanup_resources(&id, false, false).await;
                self.map
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&id);
                Err(e)
            }
        }
    }

    /// HostConfig.VolumesFrom (`container[:ro|rw]`): the other containers'
    /// volumes and binds, with the requested mode.
    fn volumes_from(&self, hc: &Value) -> Result<Vec<crate::volumes::MountPoint>> {
        let mut out = Vec::new();
        for spec_str in util::json_strings(&hc["VolumesFrom"]) {
            let (c, rw) = crate::volumes::parse_volumes_from(&spec_str)?;
            let r = self.lookup(&c)?.record();
            let mut mps = r.mount_points.clone();
            for m in spec::user_mounts_no_side_effects(&r.host_config) {
                if m["type"] != "bind" || mps.iter().any(|p| p.destination == m["destination"]) {
                    continue;
                }
                let opts = util::json_strings(&m["options"]);
                mps.push(crate::volumes::MountPoint {
                    typ: "bind".into(),
                    source: m["source"].as_str().unwrap_or("").into(),
                    destination: m["destination"].as_str().unwrap_or("").into(),
                    rw: !opts.iter().any(|o| o == "ro"),
                    propagation: opts
                        .iter()
                        .find(|o| {
                            o.ends_with("private") || o.ends_with("shared") || o.ends_with("slave")
                        })
                        .cloned()
                        .unwrap_or_default(),
                    ..Default::default()
                });
            }
            for mut mp in mps {
                if let Some(rw) = rw {
                    mp.rw = rw;
                    mp.mode = if rw { "rw" } else { "ro" }.into();
                }
                if !out
                    .iter()
                    .any(|o: &crate::volumes::MountPoint| o.destination == mp.destination)
                {
                    out.push(mp);
                }
            }
        }
        Ok(out)
    }

    /// Removes the anonymous volumes of a removed container that no other
    /// container references (`rm -v`, AutoRemove).
    pub fn remove_anonymous_volumes(&self, rec: &Record) {
        for mp in rec.mount_points.iter().filter(|m| m.typ == "volume") {
            if !self.volumes.get(&mp.name).is_ok_and(|v| v.anonymous()) {
                continue;
            }
            let users: Vec<String> = self
                .entries()
                .iter()
                .map(|e| e.record())
                .filter(|r| r.id != rec.id && r.mount_points.iter().any(|m| m.name == mp.name))
                .map(|r| r.id)
                .collect();
            if !users.is_empty() {
                continue;
            }
            if let Err(e) = self.volumes.remove(&mp.name, true, &[]) {
                warn!(volume = %mp.name, "cannot remove an anonymous volume: {e}");
            }
        }
    }

    /// At a container exit: unmounts option volumes no other running
    /// container uses.
    fn release_volumes(&self, rec: &Record) {
        for mp in rec.mount_points.iter().filter(|m| m.typ == "volume") {
            if !self
                .volumes
                .get(&mp.name)
                .is_ok_and(|v| v.options.get("type").is_some_and(|t| !t.is_empty()))
            {
                continue;
            }
            let busy = self.entries().iter().map(|e| e.record()).any(|r| {
                r.id != rec.id
                    && r.state.running
                    && r.mount_points.iter().any(|m| m.name == mp.name)
            });
            if !busy {
                crate::volumes::release(&self.volumes, &mp.name);
            }
        }
    }

    /// The user-defined networks a new container joins: its NetworkMode
    /// (when not default/bridge/none) and the NetworkingConfig endpoints.
    fn networks_of(&self, hc: &Value, nc: &Value) -> Result<BTreeMap<String, Endpoint>> {
        let mut out = BTreeMap::new();
        let mut join = |name: &str, ep: &Value| -> Result<()> {
            if ["none", "host"].contains(&name) || name.starts_with("container:") {
                return Ok(());
            }
            let net = if ["", "default", "bridge"].contains(&name) {
                // The default bridge network, unless `--bridge none`.
                match self.networks.default_bridge() {
                    Some(n) => n,
                    None => return Ok(()),
                }
            } else {
                self.networks.lookup(name)?
            };
            let nonempty = |v: &Value| match v {
                Value::Null => false,
                Value::Object(o) => o
                    .values()
                    .any(|x| !x.is_null() && x != "" && x != &json!([])),
                Value::Array(a) => !a.is_empty(),
                Value::String(s) => !s.is_empty(),
                _ => true,
            };
            if nonempty(&ep["IPAMConfig"])
                || nonempty(&ep["IPAddress"])
                || nonempty(&ep["MacAddress"])
            {
                return Err(EngineError::NotImplemented(
                    "static addresses on networks are not implemented in orcad yet".into(),
                ));
            }
            let mut links = crate::networks::endpoint_links(&ep["Links"])?;
            if !net.predefined && hc["NetworkMode"].as_str() == Some(name) {
                // `--link` with a user-defined network mode.
                links.extend(crate::networks::endpoint_links(&hc["Links"])?);
            }
            let aliases: Vec<String> =
                serde_json::from_value(ep["Aliases"].clone()).unwrap_or_default();
            if net.predefined && nonempty(&ep["Aliases"]) {
                return Err(EngineError::BadRequest(
                    "network-scoped alias is supported only for containers in user defined networks".into(),
                ));
            }
            let e = out.entry(net.name.clone()).or_insert_with(|| Endpoint {
                network_id: net.id.clone(),
                ..Default::default()
            });
            for a in aliases {
                if !e.aliases.contains(&a) {
                    e.aliases.push(a);
                }
            }
            if !net.predefined {
                for l in links {
                    if !e.links.contains(&l) {
                        e.links.push(l);
                    }
                }
            }
            Ok(())
        };
        join(hc["NetworkMode"].as_str().unwrap_or(""), &Value::Null)?;
        if let Some(eps) = nc["EndpointsConfig"].as_object() {
            for (name, ep) in eps {
                join(name, ep)?;
            }
        }
        Ok(out)
    }

    async fn create_resources(
        &self,
        entry: &Arc<Entry>,
        top_chain: &str,
        spec: Option<Value>,
    ) -> Result<()> {
        let rec = entry.record();
        let id = rec.id.clone();
        fs::create_dir_all(self.dir(&id))?;
        fs::create_dir_all(self.exec_dir(&id))?;
        let hn = &rec.config.hostname;
        fs::write(&rec.hostname_path, format!("{hn}\n"))?;
        self.networks.write_files(&rec)?;
        File::create(&rec.log_path)?;
        // The record's fsync overlaps the supervisor calls below (whose
        // snapshot prepare fsyncs too) instead of preceding them; both are
        // done before create answers, whatever the outcome.
        let data = serde_json::to_vec_pretty(&rec).map_err(EngineError::internal)?;
        let path = self.dir(&id).join("config.json");
        let saving = tokio::task::spawn_blocking(move || util::write_atomic(&path, &data));
        let created = self.create_in_supervisor(&rec, top_chain, spec).await;
        let saved = saving.await.map_err(EngineError::internal)?;
        let mounts = created?;
        saved?;
        *entry
            .rootfs_mounts
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(mounts);
        Ok(())
    }

    /// The containerd container (with its spec) and its rootfs snapshot.
    async fn create_in_supervisor(
        &self,
        rec: &Record,
        top_chain: &str,
        built: Option<Value>,
    ) -> Result<Vec<orca_proto::types::Mount>> {
        let id = rec.id.clone();

        // GroupAdd names are looked up in the rootfs's /etc/group, known once
        // the snapshot exists; the snapshot is prepared after the containerd
        // container that references it (an unreferenced active snapshot can
        // be garbage-collected), so such a spec is completed by an update.
        let names = spec::group_add_needs_names(&rec.host_config);
        let spec = match built {
            // Built from the same record (numeric GroupAdd entries only, as
            // here when names need the rootfs).
            Some(s) => s,
            None if names => self.build_spec(&numeric_group_add(rec), None)?,
            None => self.build_spec(rec, None)?,
        };
        let container = ctrs::Container {
            id: id.clone(),
            labels: HashMap::from([("io.orca.engine".to_string(), "1".to_string())]),
            image: rec.image_name.clone(),
            runtime: Some(ctrs::container::Runtime {
                name: self.cfg.runtime.clone(),
                options: None,
            }),
            spec: Some(spec_any(&spec)?),
            snapshotter: self.cfg.snapshotter.clone(),
            snapshot_key: id.clone(),
            ..Default::default()
        };
        self.ctrd
            .containers()
            .create(self.ctrd.req(ctrs::CreateContainerRequest {
                container: Some(container),
            }))
            .await
            .map_err(|s| EngineError::grpc("create containerd container", s))?;
        let rootfs = self
            .ctrd
            .snapshots()
            .prepare(self.ctrd.req(snaps::PrepareSnapshotRequest {
                snapshotter: self.cfg.snapshotter.clone(),
                key: id.clone(),
                parent: top_chain.to_string(),
                labels: HashMap::new(),
            }))
            .await
            .map_err(|s| EngineError::grpc("prepare rootfs snapshot", s))?
            .into_inner()
            .mounts;
        if names {
            let scratch = self.cfg.exec_root.join("groups");
            let mounts = rootfs.clone();
            let etc_group =
                tokio::task::spawn_blocking(move || spec::read_etc_group(&mounts, &scratch))
                    .await
                    .map_err(EngineError::internal)??;
            let spec = self.build_spec(rec, etc_group.as_deref())?;
            self.update_spec(&id, &spec).await?;
        }
        Ok(rootfs)
    }

    /// Replaces the spec of the containerd container `id`.
    async fn update_spec(&self, id: &str, spec: &Value) -> Result<()> {
        let container = ctrs::Container {
            id: id.to_string(),
            spec: Some(spec_any(spec)?),
            ..Default::default()
        };
        self.ctrd
            .containers()
            .update(self.ctrd.req(ctrs::UpdateContainerRequest {
                container: Some(container),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["spec".into()],
                }),
            }))
            .await
            .map_err(|s| EngineError::grpc("update containerd container", s))?;
        Ok(())
    }

    fn build_spec(&self, rec: &Record, etc_group: Option<&str>) -> Result<Value> {
        let c = &rec.config;
        let env = spec_env(rec, &[]);
        let mut args = vec![rec.path.clone()];
        args.extend(rec.args.iter().cloned());
        // The daemon's default-ulimits for the names the container leaves out.
        let mut host = rec.host_config.clone();
        if !self.cfg.default_ulimits.is_empty() {
            let mut ul: Vec<Value> = host["Ulimits"].as_array().cloned().unwrap_or_default();
            for d in &self.cfg.default_ulimits {
                if !ul.iter().any(|u| u["Name"] == d["Name"]) {
                    ul.push(d.clone());
                }
            }
            host["Ulimits"] = Value::Array(ul);
        }
        spec::build(&spec::SpecInput {
            id: &rec.id,
            args,
            env,
            cwd: if c.working_dir.is_empty() {
                "/".into()
            } else {
                c.working_dir.clone()
            },
            user: &c.user,
            tty: c.tty,
            hostname: &c.hostname,
            hostname_path: &rec.hostname_path,
            hosts_path: &rec.hosts_path,
            resolv_conf_path: &rec.resolv_conf_path,
            cgroup_parent: &self.cfg.cgroup_parent,
            host: &host,
            volume_mounts: &rec.mount_points.iter().map(|m| m.oci()).collect::<Vec<_>>(),
            etc_group,
            shm_path: &if rec.host_config["IpcMode"] == "shareable" && !own_dev_shm(rec) {
                self.shm_dir(&rec.id).display().to_string()
            } else {
                String::new()
            },
        })
    }

    /// POST /containers/{id}/start. A failed start of an AutoRemove
    /// container removes it (the CLI waits for `removed` after a failed
    /// `run --rm`).
    pub async fn start(self: &Arc<Self>, key: &str) -> Result<()> {
        let entry = self.lookup(key)?;
        let res = {
            let _op = entry.op.lock().await;
            if !entry.record().state.running {
                // A manual start resets the restart manager (dockerd's
                // ResetRestartManager(true)).
                {
                    let mut rs = entry.restart_state();
                    rs.timeout = Duration::ZERO;
                    rs.cancelled = false;
                    rs.generation += 1;
                }
                entry.with_rec(|r| {
                    r.restart_count = 0;
                    r.has_been_manually_stopped = false;
                });
            }
            self.start_locked(&entry).await
        };
        if let Err(e) = &res {
            if !matches!(e, EngineError::NotModified) && entry.record().auto_remove {
                if let Err(e2) = self.remove_entry(&entry).await {
                    warn!("auto-remove after a failed start: {e2}");
                }
            }
        }
        res
    }

    async fn start_locked(self: &Arc<Self>, entry: &Arc<Entry>) -> Result<()> {
        let res = self.start_locked_inner(entry).await;
        if res
            .as_ref()
            .is_err_and(|e| !matches!(e, EngineError::NotModified))
        {
            // A shareable /dev/shm mounted for this start goes with it.
            self.unmount_shm(&entry.record().id);
        }
        res
    }

    async fn start_locked_inner(self: &Arc<Self>, entry: &Arc<Entry>) -> Result<()> {
        let rec = entry.record();
        if rec.state.running {
            return Err(EngineError::NotModified);
        }
        if rec.state.status == "removing" {
            return Err(EngineError::Conflict(format!(
                "container {} is marked for removal and cannot be started",
                rec.id
            )));
        }
        let id = rec.id.clone();
        for (name, ep) in &rec.networks {
            if self.networks.lookup(&ep.network_id).is_err() {
                return Err(EngineError::NotFound(format!("network {name} not found")));
            }
        }
        self.prepare_sharing(entry).await?;
        self.mount_shm(&rec)?;
        // A leftover task from a previous run (a container that never
        // started has none: its task is deleted when create or start fails).
        if rec.state.started_at != util::ZERO_TIME {
            let _ = self.ctrd.delete_task(&id).await;
        }
        let prepared = entry
            .rootfs_mounts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let mounts = match prepared {
            Some(m) => m,
            None => {
                self.ctrd
                    .snapshots()
                    .mounts(self.ctrd.req(snaps::MountsRequest {
                        snapshotter: self.cfg.snapshotter.clone(),
                        key: id.clone(),
                    }))
                    .await
                    .map_err(|s| EngineError::grpc("rootfs mounts", s))?
                    .into_inner()
                    .mounts
            }
        };
        // Volumes: option volumes mounted, image content copied into empty
        // ones (dockerd's populateVolumes).
        if !rec.mount_points.is_empty() {
            let vols = self.volumes.clone();
            let mps = rec.mount_points.clone();
            let rootfs = mounts.clone();
            let scratch = self.cfg.exec_root.join("volumes");
            tokio::task::spawn_blocking(move || {
                crate::volumes::prepare_start(&vols, &mps, &rootfs, &scratch)
            })
            .await
            .map_err(EngineError::internal)??;
        }

        // stdio FIFOs, read by copier tasks.
        let xdir = self.exec_dir(&id);
        fs::create_dir_all(&xdir)?;
        let tty = rec.config.tty;
        let mut fifos: Vec<(u8, PathBuf)> = vec![(1, xdir.join("init-stdout"))];
        if !tty {
            fifos.push((2, xdir.join("init-stderr")));
        }
        for (_, p) in &fifos {
            let _ = fs::remove_file(p);
            nix::unistd::mkfifo(p, nix::sys::stat::Mode::from_bits_truncate(0o600))
                .map_err(|e| EngineError::internal(format!("mkfifo {}: {e}", p.display())))?;
        }
        let stdin_path = xdir.join("init-stdin");
        let stdin_rdwr = if rec.config.open_stdin {
            Some(stdin_fifo(&stdin_path)?)
        } else {
            None
        };
        let log = self.open_log(&rec)?;
        self.spawn_copiers(entry, &fifos, log);
        let unblock = |fifos: &[(u8, PathBuf)]| {
            for (_, p) in fifos {
                // Opening the write side releases a reader blocked in open;
                // dropping it at once gives the reader EOF.
                let _ = OpenOptions::new()
                    .write(true)
                    .custom_flags(libc::O_NONBLOCK)
                    .open(p);
            }
        };
        let path_of = |sid: u8| {
            fifos
                .iter()
                .find(|(s, _)| *s == sid)
                .map(|(_, p)| p.display().to_string())
                .unwrap_or_default()
        };
        let stdio = StdioPaths {
            stdin: if stdin_rdwr.is_some() {
                stdin_path.display().to_string()
            } else {
                String::new()
            },
            stdout: path_of(1),
            stderr: path_of(2),
        };
        // Networking: addresses (and the container's hosts/resolv.conf)
        // before the task exists; veths and published ports once it has a
        // pid (its netns); all undone if the start fails.
        let mut net_rec = entry.record();
        if let Err(e) = self
            .networks
            .allocate(&mut net_rec)
            .and_then(|()| self.networks.write_files(&net_rec))
        {
            self.networks.release(&mut net_rec).await;
            unblock(&fifos);
            return Err(e);
        }
        let create_req = tasks::CreateTaskRequest {
            container_id: id.clone(),
            rootfs: mounts,
            stdin: stdio.stdin.clone(),
            stdout: stdio.stdout.clone(),
            stderr: stdio.stderr.clone(),
            terminal: tty,
            ..Default::default()
        };
        let mut created = self
            .ctrd
            .tasks()
            .create(self.ctrd.req(create_req.clone()))
            .await;
        if matches!(&created, Err(s) if s.code() == tonic::Code::AlreadyExists) {
            // A task left by an orcad that died between create and start.
            let _ = self.ctrd.delete_task(&id).await;
            created = self.ctrd.tasks().create(self.ctrd.req(create_req)).await;
        }
        let task_pid = match created {
            Ok(r) => r.into_inner().pid,
            Err(s) => {
                self.networks.release(&mut net_rec).await;
                unblock(&fifos);
                return Err(self.start_failed(entry, "failed to create task for container", s));
            }
        };
        if let Err(e) = self.networks.attach_task(&mut net_rec, task_pid).await {
            let _ = self.ctrd.delete_task(&id).await;
            self.networks.release(&mut net_rec).await;
            unblock(&fifos);
            warn!(id, "network setup failed: {e}");
            entry.with_rec(|r| r.state.error = e.to_string());
            return Err(e);
        }
        let started = self
            .ctrd
            .tasks()
            .start(self.ctrd.req(tasks::StartRequest {
                container_id: id.clone(),
                exec_id: String::new(),
            }))
            .await;
        let pid = match started {
            Ok(r) => r.into_inner().pid,
            Err(s) => {
                let _ = self.ctrd.delete_task(&id).await;
                self.networks.release(&mut net_rec).await;
                unblock(&fifos);
                return Err(self.start_failed(entry, "failed to start task", s));
            }
        };
        if let Some(f) = stdin_rdwr {
            entry
                .stdin
                .open(stdin_writer(&stdin_path, f), &self.ctrd, &id, "");
        }
        entry.with_rec(|r| {
            r.state.status = "running".into();
            r.state.running = true;
            r.state.restarting = false;
            r.state.paused = false;
            r.state.pid = pid;
            r.state.exit_code = 0;
            r.state.oom_killed = false;
            r.state.error = String::new();
            r.state.started_at = util::now();
            r.state.finished_at = util::ZERO_TIME.into();
            r.stdio = Some(stdio);
            r.networks = net_rec.networks.clone();
            r.ports = net_rec.ports.clone();
        });
        self.save_state(&entry.record())?;
        info!(id, pid, "started container");
        let rec = entry.record();
        self.update_link_parents(&rec);
        for (name, ep) in &rec.networks {
            self.events.network(
                "connect",
                &ep.network_id,
                name,
                &[("container", id.clone())],
            );
        }
        self.volumes.mount_events(&id, &rec.mount_points);
        self.events.container("start", &rec, &[]);
        let me = self.clone();
        let e2 = entry.clone();
        tokio::spawn(async move { me.monitor(e2).await });
        Ok(())
    }

    /// Before a start: the namespaces this container joins (`container:`
    /// network/PID modes) and its legacy links are resolved (dockerd's
    /// errors for missing/stopped targets), the containerd container's spec
    /// is updated with them (namespace paths, the network target's
    /// hostname and hosts/resolv.conf/hostname files, link variables) and
    /// the record takes the target's hostname and file paths, as dockerd's.
    async fn prepare_sharing(&self, entry: &Arc<Entry>) -> Result<()> {
        let rec = entry.record();
        let hc = &rec.host_config;
        let shares_net =
            crate::networks::container_target(hc["NetworkMode"].as_str().unwrap_or("")).is_some();
        let shares_pid =
            crate::networks::container_target(hc["PidMode"].as_str().unwrap_or("")).is_some();
        let shares_ipc =
            crate::networks::container_target(hc["IpcMode"].as_str().unwrap_or("")).is_some();
        let has_links = !util::json_strings(&hc["Links"]).is_empty();
        if hc["IpcMode"] == "host" && !Path::new("/dev/shm").is_dir() {
            return Err(EngineError::internal(
                "/dev/shm is not mounted, but must be for --ipc=host",
            ));
        }
        if !(shares_net || shares_pid || shares_ipc || has_links) {
            return Ok(());
        }
        let lookup = |k: &str| self.lookup(k).map(|e| e.record());
        let net = crate::networks::net_target(&rec, &lookup)?;
        let pid = crate::networks::pid_target(&rec, &lookup)?;
        let ipc = crate::networks::ipc_target(&rec, &lookup, &|r| self.shm_source(r))?;
        let bridge_id = self.networks.default_bridge().map(|n| n.id);
        let links = crate::networks::legacy_links(&rec, bridge_id.as_deref(), &lookup)?;
        let bid = bridge_id.unwrap_or_default();
        let mut linked = Vec::new();
        let mut hosts = Vec::new();
        for (alias, child) in &links {
            linked.extend(crate::networks::link_env(&rec.name, alias, child, &bid));
            hosts.push(crate::networks::link_hosts_line(alias, child, &bid));
        }
        self.networks.set_link_hosts(&rec.id, hosts);
        let mut r2 = rec.clone();
        if let Some(t) = &net {
            r2.config.hostname = t.config.hostname.clone();
            r2.config.domainname = t.config.domainname.clone();
            r2.hostname_path = t.hostname_path.clone();
            r2.hosts_path = t.hosts_path.clone();
            r2.resolv_conf_path = t.resolv_conf_path.clone();
        }
        let env = (shares_net || has_links).then(|| spec_env(&r2, &linked));
        let c = self
            .ctrd
            .containers()
            .get(
                self.ctrd
                    .req(ctrs::GetContainerRequest { id: rec.id.clone() }),
            )
            .await
            .map_err(|s| EngineError::grpc("get containerd container", s))?
            .into_inner()
            .container
            .ok_or_else(|| EngineError::internal("containerd returned no container"))?;
        let mut spec: Value = serde_json::from_slice(&c.spec.map(|a| a.value).unwrap_or_default())
            .map_err(|e| EngineError::internal(format!("container spec: {e}")))?;
        crate::networks::patch_spec(&mut spec, net.as_ref(), pid.as_ref(), env);
        if let Some((t, shm)) = &ipc {
            let own = own_dev_shm(&rec);
            crate::networks::patch_ipc(&mut spec, t.state.pid, (!own).then_some(shm.as_path()));
        }
        self.update_spec(&rec.id, &spec).await?;
        if net.is_some() {
            entry.with_rec(|r| {
                r.config.hostname = r2.config.hostname.clone();
                r.config.domainname = r2.config.domainname.clone();
                r.hostname_path = r2.hostname_path.clone();
                r.hosts_path = r2.hosts_path.clone();
                r.resolv_conf_path = r2.resolv_conf_path.clone();
            });
            self.save(&entry.record())?;
        }
        Ok(())
    }

    /// After `child` started (maybe with a new address): the /etc/hosts of
    /// running containers holding a legacy link to it are rewritten, as
    /// dockerd updates link parents.
    fn update_link_parents(&self, child: &Record) {
        let Some(bid) = self.networks.default_bridge().map(|n| n.id) else {
            return;
        };
        let lookup = |k: &str| self.lookup(k).map(|e| e.record());
        for parent in self.entries().iter().map(|e| e.record()) {
            if parent.id == child.id || !parent.state.running {
                continue;
            }
            let links_it = util::json_strings(&parent.host_config["Links"])
                .iter()
                .any(|l| {
                    crate::networks::parse_link(l)
                        .ok()
                        .and_then(|(name, _)| lookup(&name).ok())
                        .is_some_and(|c| c.id == child.id)
                });
            if !links_it {
                continue;
            }
            match crate::networks::legacy_links(&parent, Some(&bid), &lookup) {
                Ok(links) => {
                    let hosts = links
                        .iter()
                        .map(|(alias, c)| crate::networks::link_hosts_line(alias, c, &bid))
                        .collect();
                    self.networks.set_link_hosts(&parent.id, hosts);
                    if let Err(e) = self.networks.write_files(&parent) {
                        warn!(id = %parent.id, "cannot update the hosts file of a link parent: {e}");
                    }
                }
                Err(e) => debug!(id = %parent.id, "link parent not updated: {e}"),
            }
        }
    }

    /// Records a failed start the way dockerd does: exit code 127 for a
    /// missing executable, 126 for a permission error (both 400), else 128.
    fn start_failed(&self, entry: &Arc<Entry>, ctx: &str, s: tonic::Status) -> EngineError {
        let msg = format!("{ctx}: {}", s.message());
        let lower = msg.to_ascii_lowercase();
        let (code, bad_param) = if lower.contains("executable file not found")
            || lower.contains("no such file or directory")
        {
            (127, true)
        } else if lower.contains("permission denied") {
            (126, true)
        } else {
            (128, false)
        };
        entry.with_rec(|r| {
            r.state.error = msg.clone();
            r.state.exit_code = code;
            r.state.status = if r.state.started_at == util::ZERO_TIME {
                "created".into()
            } else {
                "exited".into()
            };
        });
        let _ = self.save(&entry.record());
        entry.events.send_modify(|e| e.exit_code = code);
        warn!(id = %entry.record().id, "{msg}");
        if bad_param {
            EngineError::BadRequest(msg)
        } else {
            EngineError::Internal(msg)
        }
    }

    /// Waits for the task to exit, records it, cleans the task up, then
    /// restarts it per its restart policy or honours AutoRemove.
    async fn monitor(self: Arc<Self>, entry: Arc<Entry>) {
        let id = entry.record().id;
        let res = self
            .ctrd
            .tasks()
            .wait(self.ctrd.req(tasks::WaitRequest {
                container_id: id.clone(),
                exec_id: String::new(),
            }))
            .await;
        let (code, at) = match res {
            Ok(r) => {
                let r = r.into_inner();
                (
                    r.exit_status as i64,
                    util::from_proto_ts(r.exited_at.as_ref()),
                )
            }
            Err(s) => {
                if self.shutting_down.load(Ordering::SeqCst) {
                    // orcad is going away (live-restore): the next one
                    // picks the task up again.
                    return;
                }
                warn!(id, "waiting for the task failed: {s}");
                (255, chrono::Utc::now())
            }
        };
        // A kill by the OOM killer is reported on the event stream, which
        // may trail the exit: a SIGKILLed process gets a moment for it.
        if code == 128 + libc::SIGKILL as i64 && !*entry.oom_seen.borrow() {
            let mut seen = entry.oom_seen.subscribe();
            let _ = tokio::time::timeout(Duration::from_millis(200), seen.wait_for(|s| *s)).await;
        }
        let oom_killed = entry.oom_seen.send_replace(false);
        let t0 = std::time::Instant::now();
        entry.stdin.set(StdinState::NotOpen);
        let mut io = entry.io_running.subscribe();
        let _ = tokio::time::timeout(Duration::from_secs(5), io.wait_for(|r| !*r)).await;
        let io_done = t0.elapsed();
        // An AutoRemove container (never restarted) is removed right below:
        // its task goes with the rest of it, after `removed` (see
        // `cleanup_resources`).
        let deferred = {
            let rec = entry.record();
            rec.auto_remove
                && matches!(
                    RestartPolicy::from_host_config(&rec.host_config),
                    Ok(RestartPolicy::No)
                )
        };
        let task_gone = deferred
            || match self.ctrd.delete_task(&id).await {
                Ok(()) => true,
                Err(s) if s.code() == tonic::Code::NotFound => true,
                Err(s) => {
                    warn!(id, "deleting the task failed: {s}");
                    false
                }
            };
        let task_deleted = t0.elapsed();
        let _ = tokio::time::timeout(Duration::from_secs(2), io.wait_for(|r| !*r)).await;
        {
            // Networking of the run that ended: veths, ports, addresses.
            let mut r = entry.record();
            self.networks.release(&mut r).await;
            entry.with_rec(|x| {
                x.networks = r.networks;
                x.ports = r.ports;
            });
        }
        let rec = entry.record();
        let started = chrono::DateTime::parse_from_rfc3339(&rec.state.started_at)
            .map(|t| t.with_timezone(&chrono::Utc))
            .unwrap_or(at);
        let ran_for = (at - started).to_std().unwrap_or_default();
        // Decided and recorded under the restart lock, so that an API stop
        // either cancels the restart or finds the container restarting.
        let (delay, generation) = {
            let mut rs = entry.restart_state();
            let delay = if self.shutting_down.load(Ordering::SeqCst) {
                None
            } else {
                should_restart(&mut rs, &rec, code, ran_for)
            };
            let generation = rs.generation;
            entry.with_rec(|r| {
                r.state.paused = false;
                r.state.pid = 0;
                r.state.exit_code = code;
                r.state.oom_killed = oom_killed;
                r.state.finished_at = util::rfc3339(at);
                r.stdio = None;
                if delay.is_some() {
                    // dockerd's SetRestarting: still "running" for stop/rm/…
                    r.state.running = true;
                    r.state.restarting = true;
                    r.state.status = "restarting".into();
                    r.restart_count += 1;
                } else {
                    r.state.running = false;
                    r.state.restarting = false;
                    r.state.status = "exited".into();
                }
            });
            (delay, generation)
        };
        self.forget_execs(&id);
        // An AutoRemove container's record is deleted right below; should
        // that fail, a restarted orcad still finds the task gone and marks
        // the container exited.
        let removing = delay.is_none() && entry.record().auto_remove;
        if !removing {
            if let Err(e) = self.save_state(&entry.record()) {
                warn!(id, "cannot save the container record: {e}");
            }
        }
        debug!(
            id,
            io_ms = io_done.as_secs_f64() * 1e3,
            delete_task_ms = (task_deleted - io_done).as_secs_f64() * 1e3,
            record_ms = (t0.elapsed() - task_deleted).as_secs_f64() * 1e3,
            "exit handled"
        );
        info!(id, code, "container exited");
        let rec = entry.record();
        // "die" before waiters (stop) hear of the exit: dockerd's order.
        self.events.container(
            "die",
            &rec,
            &[
                ("exitCode", code.to_string()),
                ("execDuration", ran_for.as_secs().to_string()),
            ],
        );
        for (name, ep) in &rec.networks {
            self.events.network(
                "disconnect",
                &ep.network_id,
                name,
                &[("container", id.clone())],
            );
        }
        if !rec.mount_points.is_empty() {
            self.volumes.unmount_events(&id, &rec.mount_points);
            self.release_volumes(&rec);
        }
        self.unmount_shm(&id);
        entry.events.send_modify(|e| {
            e.exits += 1;
            e.exit_code = code;
        });
        if let Some(delay) = delay {
            info!(
                id,
                ?delay,
                count = rec.restart_count,
                "restarting container (restart policy)"
            );
            tokio::spawn(async move { self.delayed_restart(entry, delay, generation).await });
            return;
        }
        if entry.record().auto_remove {
            let t0 = std::time::Instant::now();
            let task_gone = task_gone && !deferred;
            if let Err(e) = self.remove_entry_after(&entry, task_gone).await {
                warn!(id, "auto-remove failed: {e}");
            }
            debug!(id, ms = t0.elapsed().as_secs_f64() * 1e3, "auto-removed");
        }
    }

    /// Starts a restarting container after its backoff delay, unless a
    /// stop/kill/rm/start came in between.
    fn delayed_restart(
        self: Arc<Self>,
        entry: Arc<Entry>,
        delay: Duration,
        generation: u64,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
        Box::pin(async move { self.delayed_restart_inner(entry, delay, generation).await })
    }

    async fn delayed_restart_inner(
        self: Arc<Self>,
        entry: Arc<Entry>,
        delay: Duration,
        generation: u64,
    ) {
        tokio::time::sleep(delay).await;
        let _op = entry.op.lock().await;
        let id = entry.record().id;
        {
            let rs = entry.restart_state();
            if rs.cancelled || rs.generation != generation {
                entry.with_rec(|r| {
                    if r.state.restarting {
                        r.state.restarting = false;
                        r.state.running = false;
                        r.state.status = "exited".into();
                    }
                });
                return;
            }
        }
        if entry.events.borrow().removed
            || !entry.record().state.restarting
            || self.shutting_down.load(Ordering::SeqCst)
        {
            return;
        }
        entry.with_rec(|r| {
            r.state.running = false;
            r.state.restarting = false;
        });
        if let Err(e) = self.start_locked(&entry).await {
            warn!(id, "restart failed: {e}");
            entry.with_rec(|r| {
                r.state.status = "exited".into();
                r.state.running = false;
            });
            let _ = self.save(&entry.record());
        }
    }

    /// Marks a stop/kill through the API: no more restarts for this run
    /// (`cancel`, dockerd's ExitOnNext), `unless-stopped` stays down. A
    /// container waiting to be restarted is set to exited at once; returns
    /// whether it was.
    fn manual_stop(&self, entry: &Arc<Entry>, cancel: bool) -> bool {
        let mut rs = entry.restart_state();
        if cancel {
            rs.cancelled = true;
            rs.generation += 1;
        }
        let was_restarting = entry.with_rec(|r| {
            r.has_been_manually_stopped = true;
            if cancel && r.state.restarting {
                r.state.restarting = false;
                r.state.running = false;
                r.state.status = "exited".into();
                true
            } else {
                false
            }
        });
        drop(rs);
        let _ = self.save(&entry.record());
        was_restarting
    }

    /// POST /containers/{id}/wait: resolves the container now, returns a
    /// future of the exit code.
    pub fn wait(
        &self,
        key: &str,
        cond: WaitCondition,
    ) -> Result<impl std::future::Future<Output = i64> + Send + 'static> {
        let entry = self.lookup(key)?;
        let mut rx = entry.events.subscribe();
        let since = rx.borrow().exits;
        let rec = entry.record();
        let running = rec.state.running;
        let current = rec.state.exit_code;
        Ok(async move {
            if cond == WaitCondition::NotRunning && !running {
                return current;
            }
            loop {
                {
                    let e = rx.borrow_and_update();
                    let done = match cond {
                        WaitCondition::Removed => e.removed,
                        _ => e.exits > since || e.removed,
                    };
                    if done {
                        return e.exit_code;
                    }
                }
                if rx.changed().await.is_err() {
                    return entry.record().state.exit_code;
                }
            }
        })
    }

    async fn kill_task(&self, id: &str, signal: i32, all: bool) -> Result<()> {
        let res = match self
            .ctrd
            .tasks()
            .kill(self.ctrd.req(tasks::KillRequest {
                container_id: id.to_string(),
                exec_id: String::new(),
                signal: signal as u32,
                all,
            }))
            .await
        {
            Ok(_) => {
                if let Ok(e) = self.lookup(id) {
                    self.events
                        .container("kill", &e.record(), &[("signal", signal.to_string())]);
                }
                Ok(())
            }
            Err(s) if s.code() == tonic::Code::NotFound => Ok(()),
            Err(s) => Err(EngineError::grpc("kill", s)),
        };
        // A frozen container gets the signal once thawed (like dockerd).
        if let Ok(e) = self.lookup(id) {
            if e.record().state.paused {
                if let Err(err) = self.set_paused(&e, false).await {
                    warn!(id, "unpausing to deliver a signal: {err}");
                }
            }
        }
        res
    }

    /// POST /containers/{id}/stop.
    pub async fn stop(&self, key: &str, timeout: Option<i64>, signal: Option<&str>) -> Result<()> {
        let entry = self.lookup(key)?;
        self.stop_inner(&entry, timeout, signal, true).await
    }

    /// Stops a container; `manual` (an API stop) cancels its restarts.
    pub(crate) async fn stop_inner(
        &self,
        entry: &Arc<Entry>,
        timeout: Option<i64>,
        signal: Option<&str>,
        manual: bool,
    ) -> Result<()> {
        // Checked and signalled under the op lock: a pending restart is
        // either cancelled before it starts or signalled after.
        let op = entry.op.lock().await;
        let rec = entry.record();
        if !rec.state.running {
            return Err(EngineError::NotModified);
        }
        let sig = match signal
            .filter(|s| !s.is_empty())
            .or(rec.config.stop_signal.as_deref())
        {
            Some(s) => parse_signal(s)?,
            None => libc::SIGTERM,
        };
        if manual && self.manual_stop(entry, true) {
            // It was waiting to be restarted: nothing runs.
            self.events.container("stop", &entry.record(), &[]);
            return Ok(());
        }
        let t = timeout.or(rec.config.stop_timeout).unwrap_or(10);
        let since = entry.events.borrow().exits;
        if !entry.record().state.running {
            // It exited since the check above.
            self.events.container("stop", &entry.record(), &[]);
            return Ok(());
        }
        self.kill_task(&rec.id, sig, false).await?;
        drop(op);
        let limit = if t < 0 {
            None
        } else {
            Some(Duration::from_secs(t as u64))
        };
        if entry.wait_exit(since, limit).await {
            self.events.container("stop", &entry.record(), &[]);
            return Ok(());
        }
        info!(id = %rec.id, "container did not stop within {t}s; killing it");
        self.kill_task(&rec.id, libc::SIGKILL, true).await?;
        if entry.wait_exit(since, Some(Duration::from_secs(30))).await {
            self.events.container("stop", &entry.record(), &[]);
            Ok(())
        } else {
            Err(EngineError::internal(format!(
                "container {} did not exit after SIGKILL",
                rec.id
            )))
        }
    }

    /// POST /containers/{id}/kill.
    pub async fn kill(&self, key: &str, signal: Option<&str>) -> Result<()> {
        let entry = self.lookup(key)?;
        let _op = entry.op.lock().await;
        let rec = entry.record();
        let sig = match signal.filter(|s| !s.is_empty()) {
            Some(s) => parse_signal(s)?,
            None => libc::SIGKILL,
        };
        if !rec.state.running {
            return Err(EngineError::Conflict(format!(
                "Cannot kill container: {key}: Container {} is not running",
                rec.id
            )));
        }
        // dockerd: killing with the stop signal (or SIGKILL, or any signal
        // when no stop signal is configured) cancels restarts.
        let cancel = match rec.config.stop_signal.as_deref() {
            None => true,
            Some(s) => sig == libc::SIGKILL || parse_signal(s).ok() == Some(sig),
        };
        if self.manual_stop(&entry, cancel) {
            return Ok(());
        }
        self.kill_task(&rec.id, sig, sig == libc::SIGKILL).await
    }

    /// DELETE /containers/{id}.
    pub async fn remove(&self, key: &str, force: bool) -> Result<()> {
        let entry = self.lookup(key)?;
        let rec = entry.record();
        if rec.state.running {
            if !force {
                return Err(EngineError::Conflict(format!(
                    "cannot remove container \"{}\": container is running: stop the container before removing or force remove",
                    rec.name
                )));
            }
            let op = entry.op.lock().await;
            if !self.manual_stop(&entry, true) && entry.record().state.running {
                let since = entry.events.borrow().exits;
                self.kill_task(&rec.id, libc::SIGKILL, true).await?;
                drop(op);
                if !entry.wait_exit(since, Some(Duration::from_secs(30))).await {
                    return Err(EngineError::internal(format!(
                        "container {} did not exit after SIGKILL",
                        rec.id
                    )));
                }
            }
        }
        self.remove_entry(&entry).await
    }

    async fn remove_entry(&self, entry: &Arc<Entry>) -> Result<()> {
        self.remove_entry_after(entry, false).await
    }

    /// [`Self::remove_entry`]; `task_gone`: the caller has just deleted the
    /// task (no `Tasks.Delete` again).
    async fn remove_entry_after(&self, entry: &Arc<Entry>, task_gone: bool) -> Result<()> {
        let _op = entry.op.lock().await;
        if entry.events.borrow().removed {
            return Ok(());
        }
        // A start that slipped in before the lock made a new task.
        let task_gone = task_gone && !entry.record().state.running;
        let id = entry.record().id;
        entry.with_rec(|r| r.state.status = "removing".into());
        {
            let mut r = entry.record();
            if !r.ports.is_empty() || r.networks.values().any(|e| !e.ip.is_empty()) {
                self.networks.release(&mut r).await;
            }
        }
        self.cleanup_resources(&id, task_gone, true).await?;
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
        // dockerd removes the anonymous volumes of `--rm` containers (before
        // `wait condition=removed` returns).
        let rec = entry.record();
        if rec.auto_remove && !rec.mount_points.is_empty() {
            self.remove_anonymous_volumes(&rec);
        }
        let _ = entry.streams.send(StreamMsg::End);
        entry.events.send_modify(|e| e.removed = true);
        info!(id, "removed container");
        self.events.container("destroy", &entry.record(), &[]);
        Ok(())
    }

    /// `Tasks.Delete` of the container's task (its init process).
    /// Removes what a container has outside orcad's map: its task (unless
    /// `task_gone`), its record, then its containerd container, rootfs
    /// snapshot and directories. With `background` only the task and the
    /// record go before this returns: the container is gone for every API
    /// call from then on (its id is never reused), and the rest finishes in
    /// a background task that [`Self::settle_removals`] waits for. A record
    /// directory without `config.json` is the tombstone of such a removal:
    /// a restarted orcad completes it.
    async fn cleanup_resources(&self, id: &str, task_gone: bool, background: bool) -> Result<()> {
        if !background {
            if !task_gone {
                let _ = self.ctrd.delete_task(id).await;
            }
            return self.finish_removal(id).await;
        }
        let _ = fs::remove_file(self.dir(id).join("config.json"));
        let guard = self.removals.clone().read_owned().await;
        let me = self.clone_for_removal();
        let id = id.to_string();
        tokio::spawn(async move {
            let deleted = if task_gone {
                Ok(())
            } else {
                me.delete_task(&id).await
            };
            let finished = match deleted {
                Ok(()) => me.finish(&id).await,
                Err(e) => Err(e),
            };
            if let Err(e) = finished {
                warn!(
                    id,
                    "removing a container's containerd records: {e} (retried at the next start)"
                );
            }
            drop(guard);
        });
        Ok(())
    }

    /// The part of [`Self::cleanup_resources`] after the task (see
    /// [`RemovalCtx::finish`]).
    async fn finish_removal(&self, id: &str) -> Result<()> {
        self.clone_for_removal().finish(id).await
    }

    /// What a background removal needs of `self`.
    fn clone_for_removal(&self) -> RemovalCtx {
        RemovalCtx {
            ctrd: self.ctrd.clone(),
            snapshotter: self.cfg.snapshotter.clone(),
            data_dir: self.cfg.data_root.join("containers"),
            exec_dir: self.cfg.exec_root.join("containers"),
        }
    }

    /// Waits until every container removal that started before this call
    /// has finished in the background (see [`Self::cleanup_resources`]).
    pub async fn settle_removals(&self) {
        drop(self.removals.write().await);
    }

    /// Subscribes to a container's output for attach: `None` when the
    /// container has already exited (the stream ends at once).
    pub fn attach(&self, key: &str) -> Result<Attached> {
        let entry = self.lookup(key)?;
        let rx = entry.streams.subscribe();
        let rec = entry.record();
        let live =
            rec.state.running || (rec.state.status == "created" || rec.state.status == "exited");
        self.events.container("attach", &rec, &[]);
        Ok(Attached {
            tty: rec.config.tty,
            rx: live.then_some(rx),
            stdin: rec.config.open_stdin.then(|| entry.stdin.clone()),
            stdin_once: rec.config.stdin_once,
        })
    }

    /// GET /containers/{id}/logs: (tty, stream of ready-to-send chunks).
    pub fn logs(&self, key: &str, opts: LogOptions) -> Result<(bool, mpsc::Receiver<Bytes>)> {
        let entry = self.lookup(key)?;
        let rec = entry.record();
        let (tx, rx) = mpsc::channel(64);
        let tty = rec.config.tty;
        tokio::spawn(async move {
            if let Err(e) = stream_logs(entry, rec, opts, tx).await {
                debug!("log stream ended: {e}");
            }
        });
        Ok((tty, rx))
    }

    /// GET /containers/{id}/json.
    pub fn inspect(&self, key: &str) -> Result<Value> {
        let rec = self.lookup(key)?.record();
        Ok(json!({
            "Id": rec.id,
            "Created": rec.created,
            "Path": rec.path,
            "Args": rec.args,
            "State": rec.state,
            "Image": rec.image,
            "ResolvConfPath": rec.resolv_conf_path,
            "HostnamePath": rec.hostname_path,
            "HostsPath": rec.hosts_path,
            "LogPath": rec.log_path,
            "Name": rec.name,
            "RestartCount": rec.restart_count,
            "Driver": self.cfg.snapshotter,
            "Platform": "linux",
            "MountLabel": "",
            "ProcessLabel": "",
            "AppArmorProfile": "",
            "ExecIDs": self.exec_ids(&rec.id),
            "HostConfig": rec.host_config,
            "GraphDriver": {"Name": self.cfg.snapshotter, "Data": null},
            "Mounts": mounts_json(&rec.host_config, &rec.mount_points),
            "Config": rec.config,
            "NetworkSettings": network_settings_json(&rec),
        }))
    }

    /// GET /containers/json.
    pub fn list(&self, q: &Query) -> Result<Value> {
        let all = q.bool("all");
        let filters: HashMap<String, Vec<String>> = match q.get("filters").filter(|f| !f.is_empty())
        {
            None => HashMap::new(),
            Some(f) => {
                let v: Value = serde_json::from_str(f)
                    .map_err(|e| EngineError::BadRequest(format!("invalid filter: {e}")))?;
                let obj = v
                    .as_object()
                    .ok_or_else(|| EngineError::BadRequest("invalid filter".into()))?;
                let mut m = HashMap::new();
                for (k, vals) in obj {
                    let list: Vec<String> = match vals {
                        Value::Array(a) => a
                            .iter()
                            .filter_map(|x| x.as_str().map(String::from))
                            .collect(),
                        Value::Object(o) => o.keys().cloned().collect(),
                        _ => return Err(EngineError::BadRequest(format!("invalid filter '{k}'"))),
                    };
                    if !["id", "name", "status", "label", "volume"].contains(&k.as_str()) {
                        return Err(EngineError::BadRequest(format!("invalid filter '{k}'")));
                    }
                    m.insert(k.clone(), list);
                }
                m
            }
        };
        let mut recs: Vec<Record> = self.entries().iter().map(|e| e.record()).collect();
        recs.sort_by(|a, b| b.created.cmp(&a.created));
        let now = chrono::Utc::now();
        let mut out = Vec::new();
        for r in recs {
            let has_status_filter = filters.contains_key("status");
            if !all && !has_status_filter && !r.state.running {
                continue;
            }
            let label_ok = filters.get("label").is_none_or(|vals| {
                vals.iter().all(|v| match v.split_once('=') {
                    Some((lk, lv)) => r.config.labels.get(lk).is_some_and(|x| x == lv),
                    None => r.config.labels.contains_key(v.as_str()),
                })
            });
            let ok = label_ok
                && filters
                    .iter()
                    .filter(|(k, _)| k.as_str() != "label")
                    .all(|(k, vals)| {
                        vals.iter().any(|v| match k.as_str() {
                            "id" => r.id.starts_with(v.as_str()),
                            "name" => r
                                .name
                                .trim_start_matches('/')
                                .contains(v.trim_start_matches('/')),
                            "status" => r.state.status == *v,
                            // A volume name or a mount destination.
                            "volume" => r
                                .mount_points
                                .iter()
                                .any(|m| m.name == *v || m.destination == *v),
                            "label" => match v.split_once('=') {
                                Some((lk, lv)) => r.config.labels.get(lk).is_some_and(|x| x == lv),
                                None => r.config.labels.contains_key(v.as_str()),
                            },
                            _ => false,
                        })
                    });
            if !ok {
                continue;
            }
            let ts = |s: &str| {
                chrono::DateTime::parse_from_rfc3339(s)
                    .map(|t| t.with_timezone(&chrono::Utc))
                    .unwrap_or(now)
            };
            let status = match r.state.status.as_str() {
                "running" => format!("Up {}", util::human_duration(now - ts(&r.state.started_at))),
                "paused" => format!(
                    "Up {} (Paused)",
                    util::human_duration(now - ts(&r.state.started_at))
                ),
                "exited" => format!(
                    "Exited ({}) {} ago",
                    r.state.exit_code,
                    util::human_duration(now - ts(&r.state.finished_at))
                ),
                "created" => "Created".into(),
                "removing" => "Removal In Progress".into(),
                "restarting" => format!(
                    "Restarting ({}) {} ago",
                    r.state.exit_code,
                    util::human_duration(now - ts(&r.state.finished_at))
                ),
                other => other.to_string(),
            };
            let mut cmd = vec![r.path.clone()];
            cmd.extend(r.args.iter().cloned());
            out.push(json!({
                "Id": r.id,
                "Names": [r.name],
                "Image": r.config.image,
                "ImageID": r.image,
                "Command": cmd.join(" "),
                "Created": ts(&r.created).timestamp(),
                "Ports": crate::network::portmap::list_json(&r.ports),
                "Labels": r.config.labels,
                "State": r.state.status,
                "Status": status,
                "HostConfig": {"NetworkMode": r.host_config["NetworkMode"].as_str().unwrap_or("default")},
                "NetworkSettings": {"Networks": networks_json(&r)},
                "Mounts": mounts_json(&r.host_config, &r.mount_points),
            }));
            if let Some(limit) = q.get("limit").and_then(|l| l.parse::<i64>().ok()) {
                if limit > 0 && out.len() as i64 >= limit {
                    break;
                }
            }
        }
        Ok(Value::Array(out))
    }
}

/// Inspect's `NetworkSettings`: the top-level fields mirror the default
/// `bridge` network's endpoint (as dockerd), `Ports` the published ports.
fn network_settings_json(rec: &Record) -> Value {
    let b = rec.networks.get("bridge").cloned().unwrap_or_default();
    let running = rec.state.running && rec.state.pid > 0;
    json!({
        "Bridge": "", "SandboxID": "",
        "SandboxKey": if running && rec.host_config["NetworkMode"] != "host" { format!("/proc/{}/ns/net", rec.state.pid) } else { String::new() },
        "HairpinMode": false,
        "LinkLocalIPv6Address": "", "LinkLocalIPv6PrefixLen": 0,
        "Ports": if running || rec.config.exposed_ports.is_some() {
            crate::network::portmap::ports_json(&crate::networks::exposed(rec), &rec.ports)
        } else { json!({}) },
        "SecondaryIPAddresses": null, "SecondaryIPv6Addresses": null,
        "EndpointID": b.endpoint_id, "Gateway": b.gateway, "GlobalIPv6Address": "", "GlobalIPv6PrefixLen": 0,
        "IPAddress": b.ip, "IPPrefixLen": b.prefix_len, "IPv6Gateway": "", "MacAddress": b.mac,
        "Networks": networks_json(rec)
    })
}

/// `NetworkSettings.Networks`: the networks joined, with their addresses
/// while the container runs (host/none modes show that network).
fn networks_json(rec: &Record) -> Value {
    let short = &rec.id[..12.min(rec.id.len())];
    let mut m = serde_json::Map::new();
    for (name, ep) in &rec.networks {
        let mut aliases = ep.aliases.clone();
        if !aliases.iter().any(|a| a == short) {
            aliases.push(short.to_string());
        }
        let mut dns = vec![rec.name.trim_start_matches('/').to_string()];
        dns.extend(aliases.iter().cloned());
        let bridge = name == "bridge";
        m.insert(
            name.clone(),
            json!({
                "IPAMConfig": null,
                "Links": if ep.links.is_empty() { Value::Null } else { json!(ep.links) },
                "Aliases": if bridge { Value::Null } else { json!(aliases) },
                "MacAddress": ep.mac,
                "DriverOpts": null, "NetworkID": ep.network_id, "EndpointID": ep.endpoint_id,
                "Gateway": ep.gateway, "IPAddress": ep.ip, "IPPrefixLen": ep.prefix_len, "IPv6Gateway": "",
                "GlobalIPv6Address": "", "GlobalIPv6PrefixLen": 0,
                "DNSNames": if bridge { Value::Null } else { json!(dns) },
            }),
        );
    }
    if m.is_empty() {
        if let Some(mode @ ("host" | "none")) = rec.host_config["NetworkMode"].as_str() {
            m.insert(
                mode.to_string(),
                json!({"IPAMConfig": null, "Links": null, "Aliases": null, "MacAddress": "",
                       "DriverOpts": null, "NetworkID": "", "EndpointID": "", "Gateway": "",
                       "IPAddress": "", "IPPrefixLen": 0, "IPv6Gateway": "", "GlobalIPv6Address": "",
                       "GlobalIPv6PrefixLen": 0, "DNSNames": null}),
            );
        }
    }
    Value::Object(m)
}

/// Docker's `Mounts` of inspect: binds and tmpfs mounts asked for, then
/// volumes (and VolumesFrom binds).
fn mounts_json(hc: &Value, mount_points: &[crate::volumes::MountPoint]) -> Value {
    let mounts = spec::user_mounts_no_side_effects(hc);
    let mut out: Vec<Value> = mount_points.iter().map(|m| m.to_json()).collect();
    let user = Value::Array(
        mounts
            .iter()
            .filter(|m| {
                // HostConfig.Tmpfs mounts are not listed by dockerd.
                m["type"] == "bind"
                    || !hc["Tmpfs"]
                        .as_object()
                        .is_some_and(|t| t.contains_key(m["destination"].as_str().unwrap_or("")))
            })
            .map(|m| {
                let opts = util::json_strings(&m["options"]);
                let rw = !opts.iter().any(|o| o == "ro");
                let prop = opts
                    .iter()
                    .find(|o| o.contains("private") || o.contains("shared") || o.contains("slave"))
                    .cloned()
                    .unwrap_or_default();
                json!({
                    "Type": m["type"],
                    "Source": if m["type"] == "bind" { m["source"].clone() } else { json!("") },
                    "Destination": m["destination"],
                    "Mode": "",
                    "RW": rw,
                    "Propagation": prop,
                })
            })
            .collect(),
    );
    if let Value::Array(u) = user {
        out.splice(0..0, u);
    }
    Value::Array(out)
}

/// Clears O_NONBLOCK on a descriptor.
pub(crate) fn set_blocking(f: &File) {
    if let Ok(fl) = nix::fcntl::fcntl(f.as_raw_fd(), nix::fcntl::FcntlArg::F_GETFL) {
        let fl = nix::fcntl::OFlag::from_bits_truncate(fl) & !nix::fcntl::OFlag::O_NONBLOCK;
        let _ = nix::fcntl::fcntl(f.as_raw_fd(), nix::fcntl::FcntlArg::F_SETFL(fl));
    }
}

/// Reads one stdio FIFO until EOF: json-file log lines plus fan-out. A task
/// on the runtime, not a thread: with hundreds of running containers, a
/// blocking reader per stream would exhaust tokio's blocking pool.
///
/// The FIFO is opened non-blocking, which succeeds with or without a writer;
/// reads wait until the shim's write side has been opened (a Linux FIFO
/// reports no hang-up before its first writer) and end at EOF, when the last
/// writer closed it. `stop` (live-restore shutdown) ends the copy at a line
/// boundary (waiting at most 1 s for the rest of a line), leaving what
/// follows in the FIFO for the next orcad.
pub(crate) async fn copy_stream(
    path: PathBuf,
    sid: u8,
    log: Arc<Mutex<JsonLog>>,
    tx: broadcast::Sender<StreamMsg>,
    mut stop: watch::Receiver<bool>,
) {
    use tokio::io::AsyncReadExt;
    let mut f = match tokio::net::unix::pipe::OpenOptions::new().open_receiver(&path) {
        Ok(f) => f,
        Err(e) => {
            warn!(path = %path.display(), "cannot open stdio fifo: {e}");
            return;
        }
    };
    let name = if sid == 2 { "stderr" } else { "stdout" };
    let mut buf = vec![0u8; 32 * 1024];
    let mut pending: Vec<u8> = Vec::new();
    let mut stop_deadline: Option<tokio::time::Instant> = None;
    loop {
        if stop_deadline.is_some() && pending.is_empty() {
            break;
        }
        let read = match stop_deadline {
            None => tokio::select! {
                r = f.read(&mut buf) => r,
                _ = stop.wait_for(|s| *s) => {
                    stop_deadline = Some(tokio::time::Instant::now() + Duration::from_secs(1));
                    continue;
                }
            },
            Some(d) => match tokio::time::timeout_at(d, f.read(&mut buf)).await {
                Ok(r) => r,
                Err(_) => break,
            },
        };
        let n = match read {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                warn!(path = %path.display(), "reading stdio fifo: {e}");
                break;
            }
        };
        let _ = tx.send(StreamMsg::Data(sid, Bytes::copy_from_slice(&buf[..n])));
        pending.extend_from_slice(&buf[..n]);
        while let Some(pos) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=pos).collect();
            write_log_line(&log, name, &line);
        }
        if pending.len() >= 16 * 1024 {
            let chunk = std::mem::take(&mut pending);
            write_log_line(&log, name, &chunk);
        }
    }
    if !pending.is_empty() {
        write_log_line(&log, name, &pending);
    }
}

/// A container's json-file log with dockerd's rotation: when the file has
/// reached `max-size`, `<log>.N-1` → `<log>.N`, …, `<log>` → `<log>.1`
/// and a new file starts (`max-file` files in all); with `max-file` 1 the
/// file is truncated instead.
pub(crate) struct JsonLog {
    path: PathBuf,
    file: File,
    size: u64,
    limits: LogLimits,
}

impl JsonLog {
    /// Opens (creates) the log for appending.
    pub(crate) fn open(path: &Path, limits: LogLimits) -> std::io::Result<JsonLog> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let size = file.metadata()?.len();
        Ok(JsonLog {
            path: path.to_path_buf(),
            file,
            size,
            limits,
        })
    }

    fn rotated(path: &Path, n: u32) -> PathBuf {
        let mut s = path.as_os_str().to_owned();
        s.push(format!(".{n}"));
        PathBuf::from(s)
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        if self.limits.max_file <= 1 {
            self.file.set_len(0)?;
            self.size = 0;
            return Ok(());
        }
        for i in (2..self.limits.max_file).rev() {
            match fs::rename(
                Self::rotated(&self.path, i - 1),
                Self::rotated(&self.path, i),
            ) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        fs::rename(&self.path, Self::rotated(&self.path, 1))?;
        self.file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        self.size = 0;
        Ok(())
    }

    /// Appends one encoded entry, rotating first when the file is full.
    pub(crate) fn write_entry(&mut self, data: &[u8]) -> std::io::Result<()> {
        if let Some(max) = self.limits.max_size {
            if self.size >= max {
                self.rotate()?;
            }
        }
        self.file.write_all(data)?;
        self.size += data.len() as u64;
        Ok(())
    }
}

/// The files of a json-file log, oldest first (`<log>.N` … `<log>.1`,
/// `<log>`), whatever max-file was when they were written.
pub(crate) fn log_files(path: &Path) -> Vec<PathBuf> {
    let mut rotated = Vec::new();
    let mut n = 1;
    loop {
        let p = JsonLog::rotated(path, n);
        if !p.exists() {
            break;
        }
        rotated.push(p);
        n += 1;
    }
    rotated.reverse();
    rotated.push(path.to_path_buf());
    rotated
}

pub(crate) fn write_log_line(log: &Mutex<JsonLog>, stream: &str, data: &[u8]) {
    let line = json!({
        "log": String::from_utf8_lossy(data),
        "stream": stream,
        "time": util::now(),
    });
    let mut s = line.to_string();
    s.push('\n');
    let mut f = log.lock().unwrap_or_else(|p| p.into_inner());
    if let Err(e) = f.write_entry(s.as_bytes()) {
        warn!("cannot write container log: {e}");
    }
}

/// A stdcopy frame: [stream, 0, 0, 0, size (u32 BE)] + payload.
pub fn frame(sid: u8, data: &[u8]) -> Bytes {
    let mut v = Vec::with_capacity(8 + data.len());
    v.push(sid);
    v.extend_from_slice(&[0, 0, 0]);
    v.extend_from_slice(&(data.len() as u32).to_be_bytes());
    v.extend_from_slice(data);
    Bytes::from(v)
}

#[derive(Deserialize)]
struct LogLine {
    log: String,
    stream: String,
    time: String,
}

/// Complete lines of `data` as log entries; returns the bytes consumed.
fn parse_lines(data: &[u8], out: &mut Vec<LogLine>) -> usize {
    let complete = data
        .iter()
        .rposition(|&b| b == b'\n')
        .map(|p| p + 1)
        .unwrap_or(0);
    out.extend(
        data[..complete]
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .filter_map(|l| serde_json::from_slice::<LogLine>(l).ok()),
    );
    complete
}

async fn stream_logs(
    entry: Arc<Entry>,
    rec: Record,
    opts: LogOptions,
    tx: mpsc::Sender<Bytes>,
) -> std::result::Result<(), String> {
    let tty = rec.config.tty;
    let encode = |l: &LogLine| -> Option<Bytes> {
        let sid = if l.stream == "stderr" { 2 } else { 1 };
        if (sid == 1 && !opts.stdout) || (sid == 2 && !opts.stderr) {
            return None;
        }
        let payload = if opts.timestamps {
            format!("{} {}", l.time, l.log)
        } else {
            l.log.clone()
        };
        Some(if tty {
            Bytes::from(payload)
        } else {
            frame(sid, payload.as_bytes())
        })
    };
    let log_path = PathBuf::from(&rec.log_path);
    // The current file is opened first: a rotation while the older files
    // are read is then noticed below (its inode changes).
    let mut f = match File::open(&log_path) {
        Ok(f) => f,
        Err(_) => return Ok(()),
    };
    let mut lines: Vec<LogLine> = Vec::new();
    let files = log_files(&log_path);
    for p in &files[..files.len() - 1] {
        if let Ok(data) = fs::read(p) {
            parse_lines(&data, &mut lines);
        }
    }
    let mut data = Vec::new();
    f.read_to_end(&mut data).map_err(|e| e.to_string())?;
    let mut offset = parse_lines(&data, &mut lines) as u64;
    let skip = match opts.tail {
        Some(n) => lines.len().saturating_sub(n),
        None => 0,
    };
    for l in &lines[skip..] {
        if let Some(b) = encode(l) {
            tx.send(b).await.map_err(|_| "client gone")?;
        }
    }
    if !opts.follow {
        return Ok(());
    }
    let events = entry.events.subscribe();
    loop {
        let finished = {
            let st = entry.record().state;
            let removed = events.borrow().removed;
            removed || (!st.running && !*entry.io_running.borrow())
        };
        // Read what was appended; after a rotation finish the old file,
        // then continue with the new one from its start.
        let mut round = 0;
        loop {
            f.seek(SeekFrom::Start(offset)).map_err(|e| e.to_string())?;
            let mut more = Vec::new();
            f.read_to_end(&mut more).map_err(|e| e.to_string())?;
            let mut new_lines = Vec::new();
            offset += parse_lines(&more, &mut new_lines) as u64;
            for l in &new_lines {
                if let Some(b) = encode(l) {
                    tx.send(b).await.map_err(|_| "client gone")?;
                }
            }
            let cur = fs::metadata(&log_path).ok();
            let mine = f.metadata().map_err(|e| e.to_string())?;
            match cur {
                Some(m) if m.ino() != mine.ino() && round < 8 => {
                    // Rotated: anything left in the old file was read above.
                    match File::open(&log_path) {
                        Ok(nf) => {
                            f = nf;
                            offset = 0;
                            round += 1;
                            continue;
                        }
                        Err(_) => break,
                    }
                }
                // Truncated (max-file 1).
                Some(m) if m.ino() == mine.ino() && m.len() < offset => offset = 0,
                _ => {}
            }
            break;
        }
        if finished {
            return Ok(());
        }
        if tx.is_closed() {
            return Err("client gone".into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Unmounts a container's shareable /dev/shm (`dir`, under its record
/// directory) and removes the mount point.
fn unmount_shm_at(dir: &Path, id: &str) {
    while is_mountpoint(dir) {
        if let Err(e) = nix::mount::umount2(dir, nix::mount::MntFlags::MNT_DETACH) {
            warn!(id, "cannot unmount {}: {e}", dir.display());
            return;
        }
    }
    let _ = fs::remove_dir(dir);
}

/// The end of a container removal, which may run in the background after
/// the container is gone from the API (see `Containers::cleanup_resources`).
struct RemovalCtx {
    ctrd: Containerd,
    snapshotter: String,
    /// `<data-root>/containers`.
    data_dir: PathBuf,
    /// `<exec-root>/containers`.
    exec_dir: PathBuf,
}

impl RemovalCtx {
    /// `Tasks.Delete` (already gone is fine): what a removal deferred.
    async fn delete_task(&self, id: &str) -> Result<()> {
        match self.ctrd.delete_task(id).await {
            Ok(()) => Ok(()),
            Err(s) if s.code() == tonic::Code::NotFound => Ok(()),
            Err(s) => Err(EngineError::grpc("delete task", s)),
        }
    }

    /// The containerd container and its rootfs snapshot (independent
    /// records, one transaction each in the supervisor, so both go at once;
    /// either already gone is fine), then the /dev/shm mount, the record
    /// and the directories. On an error the record directory stays, the
    /// tombstone a restarted orcad completes.
    async fn finish(&self, id: &str) -> Result<()> {
        let delete_container = async {
            match self
                .ctrd
                .containers()
                .delete(
                    self.ctrd
                        .req(ctrs::DeleteContainerRequest { id: id.to_string() }),
                )
                .await
            {
                Ok(_) => Ok(()),
                Err(s) if s.code() == tonic::Code::NotFound => Ok(()),
                Err(s) => Err(EngineError::grpc("delete containerd container", s)),
            }
        };
        let remove_snapshot = async {
            match self
                .ctrd
                .snapshots()
                .remove(self.ctrd.req(snaps::RemoveSnapshotRequest {
                    snapshotter: self.snapshotter.clone(),
                    key: id.to_string(),
                }))
                .await
            {
                Ok(_) => Ok(()),
                Err(s) if s.code() == tonic::Code::NotFound => Ok(()),
                Err(s) => Err(EngineError::grpc("remove rootfs snapshot", s)),
            }
        };
        let (container, snapshot) = tokio::join!(delete_container, remove_snapshot);
        container?;
        snapshot?;
        let dir = self.data_dir.join(id);
        unmount_shm_at(&dir.join("shm"), id);
        let _ = fs::remove_file(dir.join("config.json"));
        let dirs = [self.exec_dir.join(id), dir];
        tokio::task::spawn_blocking(move || {
            for d in dirs {
                let _ = fs::remove_dir_all(d);
            }
        })
        .await
        .map_err(EngineError::internal)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A temp dir with a FIFO `name` and an empty json-file log.
    fn fifo_and_log(name: &str) -> (tempfile::TempDir, PathBuf, PathBuf, Arc<Mutex<JsonLog>>) {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join(name);
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let log_path = dir.path().join("log.json");
        let limits = LogLimits {
            max_size: None,
            max_file: 1,
        };
        let log = Arc::new(Mutex::new(JsonLog::open(&log_path, limits).unwrap()));
        (dir, fifo, log_path, log)
    }

    /// A copier waits for the FIFO's first writer (no early EOF), copies what
    /// comes into the log and to attach clients, and ends at the writer's close.
    #[tokio::test]
    async fn stdio_copier_waits_for_the_writer_and_ends_at_its_close() {
        let (_dir, fifo, log_path, log) = fifo_and_log("init-stdout");
        let (tx, mut rx) = broadcast::channel(16);
        let (_stop, stop_rx) = watch::channel(false);
        let copier = tokio::spawn(copy_stream(fifo.clone(), 1, log, tx, stop_rx));
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            !copier.is_finished(),
            "the copier ended before any writer came"
        );
        let p = fifo.clone();
        tokio::task::spawn_blocking(move || {
            let mut w = OpenOptions::new().write(true).open(&p).unwrap();
            w.write_all(b"one\ntwo").unwrap();
        })
        .await
        .unwrap();
        tokio::time::timeout(Duration::from_secs(5), copier)
            .await
            .expect("the copier did not end at the writer's close")
            .unwrap();
        match rx.recv().await.unwrap() {
            StreamMsg::Data(1, b) => assert_eq!(&b[..], b"one\ntwo"),
            _ => panic!("expected stdout data"),
        }
        let text = fs::read_to_string(&log_path).unwrap();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert_eq!(lines[0]["log"], "one\n");
        assert_eq!(lines[1]["log"], "two");
        assert_eq!(lines[1]["stream"], "stdout");
    }

    /// At a live-restore stop the copier finishes the line it is in and leaves
    /// the rest in the FIFO.
    #[tokio::test]
    async fn stdio_copier_stops_at_a_line_boundary() {
        let (_dir, fifo, log_path, log) = fifo_and_log("init-stderr");
        let (tx, _rx) = broadcast::channel(16);
        let (stop, stop_rx) = watch::channel(false);
        let copier = tokio::spawn(copy_stream(fifo.clone(), 2, log, tx, stop_rx));
        // Held open read-write too, so the FIFO never reaches EOF here.
        let mut w = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&fifo)
            .unwrap();
        w.write_all(b"half").unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        stop.send_replace(true);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!copier.is_finished(), "stopped in the middle of a line");
        w.write_all(b" line\n").unwrap();
        tokio::time::timeout(Duration::from_secs(5), copier)
            .await
            .expect("the copier did not stop after the line")
            .unwrap();
        w.write_all(b"next\n").unwrap();
        let text = fs::read_to_string(&log_path).unwrap();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 1, "{text}");
        assert_eq!(lines[0]["log"], "half line\n");
        assert_eq!(lines[0]["stream"], "stderr");
    }

    #[test]
    fn names_and_signals() {
        assert!(valid_name("web-1"));
        assert!(valid_name("/web_1.x"));
        assert!(!valid_name("a"));
        assert!(!valid_name("-bad"));
        assert!(!valid_name("bad name"));
        assert_eq!(parse_signal("SIGTERM").unwrap(), 15);
        assert_eq!(parse_signal("kill").unwrap(), 9);
        assert_eq!(parse_signal("2").unwrap(), 2);
        assert!(parse_signal("NOPE").is_err());
        assert_eq!(
            merge_env(
                &["A=1".into(), "PATH=/x".into()],
                &["A=2".into(), "B=3".into()]
            ),
            vec!["A=2", "PATH=/x", "B=3"]
        );
        assert_eq!(&frame(1, b"hi")[..], &[1, 0, 0, 0, 0, 0, 0, 2, b'h', b'i']);
    }
}
