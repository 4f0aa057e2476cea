//! Containers: Docker's container model on containerd (records under
//! `--data-root`, one directory per container, JSON written atomically),
//! task lifecycle, stdio FIFOs, json-file logs, attach fan-out, wait.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
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

use crate::containerd::Containerd;
use crate::error::{EngineError, Result};
use crate::images::ImageService;
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
}

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
        })
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
    for (k, what) in [
        ("PortBindings", "HostConfig.PortBindings (published ports)"),
        (
            "PublishAllPorts",
            "HostConfig.PublishAllPorts (published ports)",
        ),
        ("VolumesFrom", "HostConfig.VolumesFrom"),
        ("Links", "HostConfig.Links"),
        ("Devices", "HostConfig.Devices"),
        ("Init", "HostConfig.Init (docker-init)"),
        ("ExtraHosts", "HostConfig.ExtraHosts"),
        ("Dns", "HostConfig.Dns"),
        ("DnsSearch", "HostConfig.DnsSearch"),
        ("DnsOptions", "HostConfig.DnsOptions"),
        ("GroupAdd", "HostConfig.GroupAdd"),
        ("Sysctls", "HostConfig.Sysctls"),
        ("VolumeDriver", "HostConfig.VolumeDriver"),
    ] {
        if nonempty(k) {
            return ni(what);
        }
    }
    for (k, ok) in [
        ("PidMode", ""),
        ("IpcMode", ""),
        ("UTSMode", ""),
        ("UsernsMode", ""),
        ("CgroupnsMode", ""),
    ] {
        let v = hc[k].as_str().unwrap_or("");
        if !(v.is_empty()
            || v == ok
            || (k == "IpcMode" && (v == "private" || v == "shareable"))
            || (k == "CgroupnsMode" && v == "host"))
        {
            return ni(&format!("HostConfig.{k} {v:?}"));
        }
    }
    match hc["NetworkMode"].as_str().unwrap_or("") {
        "" | "default" | "bridge" | "none" => {}
        other => return ni(&format!("network mode {other:?}")),
    }
    match hc["RestartPolicy"]["Name"].as_str().unwrap_or("") {
        "" | "no" => {}
        other => return ni(&format!("restart policy {other:?}")),
    }
    if let Some(t) = hc["LogConfig"]["Type"].as_str() {
        if !t.is_empty() && t != "json-file" {
            return ni(&format!("log driver {t:?}"));
        }
    }
    Ok(())
}

/// The container service.
pub struct Containers {
    pub(crate) cfg: ContainersConfig,
    pub(crate) ctrd: Containerd,
    images: ImageService,
    map: Mutex<HashMap<String, Arc<Entry>>>,
    /// Exec instances by exec ID.
    pub(crate) execs: Mutex<HashMap<String, Arc<crate::exec::ExecEntry>>>,
}

impl Containers {
    /// Creates the service and loads the containers recorded under data-root.
    pub async fn new(
        cfg: ContainersConfig,
        ctrd: Containerd,
        images: ImageService,
    ) -> anyhow::Result<Arc<Containers>> {
        fs::create_dir_all(cfg.data_root.join("containers"))?;
        fs::create_dir_all(cfg.exec_root.join("containers"))?;
        let c = Arc::new(Containers {
            cfg,
            ctrd,
            images,
            map: Mutex::new(HashMap::new()),
            execs: Mutex::new(HashMap::new()),
        });
        c.load().await;
        Ok(c)
    }

    fn dir(&self, id: &str) -> PathBuf {
        self.cfg.data_root.join("containers").join(id)
    }

    pub(crate) fn exec_dir(&self, id: &str) -> PathBuf {
        self.cfg.exec_root.join("containers").join(id)
    }

    pub(crate) fn save(&self, rec: &Record) -> Result<()> {
        let data = serde_json::to_vec_pretty(rec).map_err(EngineError::internal)?;
        util::write_atomic(&self.dir(&rec.id).join("config.json"), &data)?;
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
        for d in rd.filter_map(|e| e.ok()) {
            let p = d.path().join("config.json");
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
            if was_running {
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
                    // 2 = RUNNING: keep monitoring (its output is not reattached).
                    Some(p) if p.status == 2 => {
                        info!(
                            id,
                            "container still running; monitoring it again (output not reattached)"
                        );
                        let me = self.clone();
                        tokio::spawn(async move { me.monitor(entry).await });
                    }
                    other => {
                        let code = other.map(|p| p.exit_status as i64).unwrap_or(255);
                        let _ = self
                            .ctrd
                            .tasks()
                            .delete(self.ctrd.req(tasks::DeleteTaskRequest {
                                container_id: id.clone(),
                            }))
                            .await;
                        entry.with_rec(|r| {
                            r.state.running = false;
                            r.state.status = "exited".into();
                            r.state.pid = 0;
                            r.state.exit_code = code;
                            r.state.finished_at = util::now();
                        });
                        let _ = self.save(&entry.record());
                    }
                }
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
            volumes: None,
            working_dir: get_str("WorkingDir")?,
            entrypoint,
            on_build: None,
            labels: BTreeMap::new(),
            stop_signal: body["StopSignal"]
                .as_str()
                .filter(|s| !s.is_empty())
                .map(String::from),
            stop_timeout: body["StopTimeout"].as_i64(),
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

        let id = util::random_hex(32);
        if config.hostname.is_empty() {
            config.hostname = id[..12].to_string();
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
        };

        // Resources, mounts and security options are checked now (a bad
        // one fails the create, as with dockerd).
        self.build_spec(&rec)?;

        // Reserve the name.
        let entry = {
            let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
            let name = match name.filter(|n| !n.is_empty()) {
                Some(n) => format!("/{}", n.trim_start_matches('/')),
                None => loop {
                    let n = format!("/{}", util::random_name());
                    if !map.values().any(|e| e.record().name == n) {
                        break n;
                    }
                },
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
        match self.create_resources(&entry, &top).await {
            Ok(()) => {
                info!(id, name = %entry.record().name, "created container");
                Ok(id)
            }
            Err(e) => {
                warn!(id, "create failed: {e}");
                let _ = self.cleanup_resources(&id).await;
                self.map
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&id);
                Err(e)
            }
        }
    }

    async fn create_resources(&self, entry: &Arc<Entry>, top_chain: &str) -> Result<()> {
        let rec = entry.record();
        let id = rec.id.clone();
        fs::create_dir_all(self.dir(&id))?;
        fs::create_dir_all(self.exec_dir(&id))?;
        let hn = &rec.config.hostname;
        fs::write(&rec.hostname_path, format!("{hn}\n"))?;
        fs::write(
            &rec.hosts_path,
            format!(
                "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n\
                 fe00::0\tip6-localnet\nff00::0\tip6-mcastprefix\nff02::1\tip6-allnodes\n\
                 ff02::2\tip6-allrouters\n127.0.0.1\t{hn}\n"
            ),
        )?;
        // The container's netns is loopback-only: keep the host's search
        // options, drop loopback nameservers (they would point into the
        // container itself).
        let host_resolv = fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        let resolv: String = host_resolv
            .lines()
            .filter(|l| {
                let mut w = l.split_whitespace();
                !(w.next() == Some("nameserver")
                    && w.next()
                        .is_some_and(|a| a.starts_with("127.") || a == "::1"))
            })
            .map(|l| format!("{l}\n"))
            .collect();
        fs::write(&rec.resolv_conf_path, resolv)?;
        File::create(&rec.log_path)?;
        self.save(&rec)?;

        let spec = self.build_spec(&rec)?;
        let container = ctrs::Container {
            id: id.clone(),
            labels: HashMap::from([("io.orca.engine".to_string(), "1".to_string())]),
            image: rec.image_name.clone(),
            runtime: Some(ctrs::container::Runtime {
                name: self.cfg.runtime.clone(),
                options: None,
            }),
            spec: Some(prost_types::Any {
                type_url: "types.containerd.io/opencontainers/runtime-spec/1/Spec".into(),
                value: serde_json::to_vec(&spec).map_err(EngineError::internal)?,
            }),
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
        self.ctrd
            .snapshots()
            .prepare(self.ctrd.req(snaps::PrepareSnapshotRequest {
                snapshotter: self.cfg.snapshotter.clone(),
                key: id.clone(),
                parent: top_chain.to_string(),
                labels: HashMap::new(),
            }))
            .await
            .map_err(|s| EngineError::grpc("prepare rootfs snapshot", s))?;
        Ok(())
    }

    fn build_spec(&self, rec: &Record) -> Result<Value> {
        let c = &rec.config;
        let mut env = Vec::new();
        if !c.env.iter().any(|e| env_key(e) == "PATH") {
            env.push(DEFAULT_PATH.to_string());
        }
        env.push(format!("HOSTNAME={}", c.hostname));
        if c.tty {
            env.push("TERM=xterm".into());
        }
        let mut env = merge_env(&env, &c.env);
        env.dedup();
        let mut args = vec![rec.path.clone()];
        args.extend(rec.args.iter().cloned());
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
            host: &rec.host_config,
        })
    }

    /// POST /containers/{id}/start. A failed start of an AutoRemove
    /// container removes it (the CLI waits for `removed` after a failed
    /// `run --rm`).
    pub async fn start(self: &Arc<Self>, key: &str) -> Result<()> {
        let entry = self.lookup(key)?;
        let res = {
            let _op = entry.op.lock().await;
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
        // A leftover task from a previous run.
        let _ = self
            .ctrd
            .tasks()
            .delete(self.ctrd.req(tasks::DeleteTaskRequest {
                container_id: id.clone(),
            }))
            .await;
        let mounts = self
            .ctrd
            .snapshots()
            .mounts(self.ctrd.req(snaps::MountsRequest {
                snapshotter: self.cfg.snapshotter.clone(),
                key: id.clone(),
            }))
            .await
            .map_err(|s| EngineError::grpc("rootfs mounts", s))?
            .into_inner()
            .mounts;

        // stdio FIFOs, read by blocking copier threads.
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
        let log = Arc::new(Mutex::new(
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(&rec.log_path)?,
        ));
        entry.io_running.send_replace(true);
        let mut handles = Vec::new();
        for (sid, p) in fifos.clone() {
            let log = log.clone();
            let tx = entry.streams.clone();
            handles.push(tokio::task::spawn_blocking(move || {
                copy_stream(&p, sid, &log, &tx)
            }));
        }
        {
            let entry = entry.clone();
            tokio::spawn(async move {
                for h in handles {
                    let _ = h.await;
                }
                let _ = entry.streams.send(StreamMsg::End);
                entry.io_running.send_replace(false);
            });
        }
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
        let created = self
            .ctrd
            .tasks()
            .create(self.ctrd.req(tasks::CreateTaskRequest {
                container_id: id.clone(),
                rootfs: mounts,
                stdin: if stdin_rdwr.is_some() {
                    stdin_path.display().to_string()
                } else {
                    String::new()
                },
                stdout: path_of(1),
                stderr: path_of(2),
                terminal: tty,
                ..Default::default()
            }))
            .await;
        if let Err(s) = created {
            unblock(&fifos);
            return Err(self.start_failed(entry, "failed to create task for container", s));
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
                let _ = self
                    .ctrd
                    .tasks()
                    .delete(self.ctrd.req(tasks::DeleteTaskRequest {
                        container_id: id.clone(),
                    }))
                    .await;
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
            r.state.paused = false;
            r.state.pid = pid;
            r.state.exit_code = 0;
            r.state.error = String::new();
            r.state.started_at = util::now();
            r.state.finished_at = util::ZERO_TIME.into();
        });
        self.save(&entry.record())?;
        info!(id, pid, "started container");
        let me = self.clone();
        let e2 = entry.clone();
        tokio::spawn(async move { me.monitor(e2).await });
        Ok(())
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

    /// Waits for the task to exit, records it, cleans the task up and
    /// honours AutoRemove.
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
                warn!(id, "waiting for the task failed: {s}");
                (255, chrono::Utc::now())
            }
        };
        entry.stdin.set(StdinState::NotOpen);
        let mut io = entry.io_running.subscribe();
        let _ = tokio::time::timeout(Duration::from_secs(5), io.wait_for(|r| !*r)).await;
        if let Err(s) = self
            .ctrd
            .tasks()
            .delete(self.ctrd.req(tasks::DeleteTaskRequest {
                container_id: id.clone(),
            }))
            .await
        {
            if s.code() != tonic::Code::NotFound {
                warn!(id, "deleting the task failed: {s}");
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), io.wait_for(|r| !*r)).await;
        entry.with_rec(|r| {
            r.state.running = false;
            r.state.paused = false;
            r.state.status = "exited".into();
            r.state.pid = 0;
            r.state.exit_code = code;
            r.state.finished_at = util::rfc3339(at);
        });
        self.forget_execs(&id);
        if let Err(e) = self.save(&entry.record()) {
            warn!(id, "cannot save the container record: {e}");
        }
        entry.events.send_modify(|e| {
            e.exits += 1;
            e.exit_code = code;
        });
        info!(id, code, "container exited");
        if entry.record().auto_remove {
            if let Err(e) = self.remove_entry(&entry).await {
                warn!(id, "auto-remove failed: {e}");
            }
        }
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
            Ok(_) => Ok(()),
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
        let t = timeout.or(rec.config.stop_timeout).unwrap_or(10);
        let since = entry.events.borrow().exits;
        self.kill_task(&rec.id, sig, false).await?;
        let limit = if t < 0 {
            None
        } else {
            Some(Duration::from_secs(t as u64))
        };
        if entry.wait_exit(since, limit).await {
            return Ok(());
        }
        info!(id = %rec.id, "container did not stop within {t}s; killing it");
        self.kill_task(&rec.id, libc::SIGKILL, true).await?;
        if entry.wait_exit(since, Some(Duration::from_secs(30))).await {
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
            let since = entry.events.borrow().exits;
            self.kill_task(&rec.id, libc::SIGKILL, true).await?;
            if !entry.wait_exit(since, Some(Duration::from_secs(30))).await {
                return Err(EngineError::internal(format!(
                    "container {} did not exit after SIGKILL",
                    rec.id
                )));
            }
        }
        self.remove_entry(&entry).await
    }

    async fn remove_entry(&self, entry: &Arc<Entry>) -> Result<()> {
        let _op = entry.op.lock().await;
        if entry.events.borrow().removed {
            return Ok(());
        }
        let id = entry.record().id;
        entry.with_rec(|r| r.state.status = "removing".into());
        self.cleanup_resources(&id).await?;
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
        let _ = entry.streams.send(StreamMsg::End);
        entry.events.send_modify(|e| e.removed = true);
        info!(id, "removed container");
        Ok(())
    }

    async fn cleanup_resources(&self, id: &str) -> Result<()> {
        let _ = self
            .ctrd
            .tasks()
            .delete(self.ctrd.req(tasks::DeleteTaskRequest {
                container_id: id.to_string(),
            }))
            .await;
        match self
            .ctrd
            .containers()
            .delete(
                self.ctrd
                    .req(ctrs::DeleteContainerRequest { id: id.to_string() }),
            )
            .await
        {
            Ok(_) => {}
            Err(s) if s.code() == tonic::Code::NotFound => {}
            Err(s) => return Err(EngineError::grpc("delete containerd container", s)),
        }
        match self
            .ctrd
            .snapshots()
            .remove(self.ctrd.req(snaps::RemoveSnapshotRequest {
                snapshotter: self.cfg.snapshotter.clone(),
                key: id.to_string(),
            }))
            .await
        {
            Ok(_) => {}
            Err(s) if s.code() == tonic::Code::NotFound => {}
            Err(s) => return Err(EngineError::grpc("remove rootfs snapshot", s)),
        }
        let _ = fs::remove_dir_all(self.exec_dir(id));
        let _ = fs::remove_dir_all(self.dir(id));
        Ok(())
    }

    /// Subscribes to a container's output for attach: `None` when the
    /// container has already exited (the stream ends at once).
    pub fn attach(&self, key: &str) -> Result<Attached> {
        let entry = self.lookup(key)?;
        let rx = entry.streams.subscribe();
        let rec = entry.record();
        let live =
            rec.state.running || (rec.state.status == "created" || rec.state.status == "exited");
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
            "RestartCount": 0,
            "Driver": self.cfg.snapshotter,
            "Platform": "linux",
            "MountLabel": "",
            "ProcessLabel": "",
            "AppArmorProfile": "",
            "ExecIDs": self.exec_ids(&rec.id),
            "HostConfig": rec.host_config,
            "GraphDriver": {"Name": self.cfg.snapshotter, "Data": null},
            "Mounts": mounts_json(&rec.host_config),
            "Config": rec.config,
            "NetworkSettings": {
                "Bridge": "", "SandboxID": "", "SandboxKey": "", "HairpinMode": false,
                "LinkLocalIPv6Address": "", "LinkLocalIPv6PrefixLen": 0, "Ports": {},
                "SecondaryIPAddresses": null, "SecondaryIPv6Addresses": null,
                "EndpointID": "", "Gateway": "", "GlobalIPv6Address": "", "GlobalIPv6PrefixLen": 0,
                "IPAddress": "", "IPPrefixLen": 0, "IPv6Gateway": "", "MacAddress": "",
                "Networks": {}
            },
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
                    if !["id", "name", "status", "label"].contains(&k.as_str()) {
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
            let ok = filters.iter().all(|(k, vals)| {
                vals.iter().any(|v| match k.as_str() {
                    "id" => r.id.starts_with(v.as_str()),
                    "name" => r
                        .name
                        .trim_start_matches('/')
                        .contains(v.trim_start_matches('/')),
                    "status" => r.state.status == *v,
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
                "Ports": [],
                "Labels": r.config.labels,
                "State": r.state.status,
                "Status": status,
                "HostConfig": {"NetworkMode": r.host_config["NetworkMode"].as_str().unwrap_or("default")},
                "NetworkSettings": {"Networks": {}},
                "Mounts": [],
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

/// Docker's `Mounts` of inspect: binds and tmpfs mounts asked for.
fn mounts_json(hc: &Value) -> Value {
    let mounts = spec::user_mounts_no_side_effects(hc);
    Value::Array(
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
                let opts = spec::str_list(&m["options"]);
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
    )
}

/// Reads one stdio FIFO until EOF: json-file log lines plus fan-out.
pub(crate) fn copy_stream(
    path: &Path,
    sid: u8,
    log: &Mutex<File>,
    tx: &broadcast::Sender<StreamMsg>,
) {
    let mut f = match File::open(path) {
        Ok(f) => f,
        Err(e) => {
            warn!(path = %path.display(), "cannot open stdio fifo: {e}");
            return;
        }
    };
    let name = if sid == 2 { "stderr" } else { "stdout" };
    let mut buf = vec![0u8; 32 * 1024];
    let mut pending: Vec<u8> = Vec::new();
    loop {
        let n = match f.read(&mut buf) {
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
            write_log_line(log, name, &line);
        }
        if pending.len() >= 16 * 1024 {
            let chunk = std::mem::take(&mut pending);
            write_log_line(log, name, &chunk);
        }
    }
    if !pending.is_empty() {
        write_log_line(log, name, &pending);
    }
}

fn write_log_line(log: &Mutex<File>, stream: &str, data: &[u8]) {
    let line = json!({
        "log": String::from_utf8_lossy(data),
        "stream": stream,
        "time": util::now(),
    });
    let mut s = line.to_string();
    s.push('\n');
    let mut f = log.lock().unwrap_or_else(|p| p.into_inner());
    if let Err(e) = f.write_all(s.as_bytes()) {
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
    let mut f = match File::open(&rec.log_path) {
        Ok(f) => f,
        Err(_) => return Ok(()),
    };
    let mut data = Vec::new();
    f.read_to_end(&mut data).map_err(|e| e.to_string())?;
    let complete = data
        .iter()
        .rposition(|&b| b == b'\n')
        .map(|p| p + 1)
        .unwrap_or(0);
    let mut offset = complete as u64;
    let lines: Vec<LogLine> = data[..complete]
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .filter_map(|l| serde_json::from_slice(l).ok())
        .collect();
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
        // Read what was appended.
        f.seek(SeekFrom::Start(offset)).map_err(|e| e.to_string())?;
        let mut more = Vec::new();
        f.read_to_end(&mut more).map_err(|e| e.to_string())?;
        let complete = more
            .iter()
            .rposition(|&b| b == b'\n')
            .map(|p| p + 1)
            .unwrap_or(0);
        offset += complete as u64;
        for l in more[..complete]
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
        {
            if let Ok(l) = serde_json::from_slice::<LogLine>(l) {
                if let Some(b) = encode(&l) {
                    tx.send(b).await.map_err(|_| "client gone")?;
                }
            }
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

#[cfg(test)]
mod tests {
    use super::*;

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
