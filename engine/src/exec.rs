//! Exec instances: POST /containers/{id}/exec, /exec/{id}/start|resize|json,
//! on containerd's `Tasks.Exec` + `Start` + `Wait` (with the exec ID) and
//! per-exec stdio FIFOs in the container's exec-root directory.

use std::fs::{self, File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use orca_proto::containers as ctrs;
use orca_proto::tasks;
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use crate::containers::{merge_env, Containers, StdinPipe, StdinState, StreamMsg};
use crate::error::{EngineError, Result};
use crate::spec;
use crate::util;

/// What POST /containers/{id}/exec asked for.
#[derive(Debug, Clone, Default)]
pub struct ExecConfig {
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub working_dir: String,
    pub user: String,
    pub tty: bool,
    pub attach_stdin: bool,
    pub attach_stdout: bool,
    pub attach_stderr: bool,
    pub console_size: Option<(u32, u32)>,
}

/// The state of one exec.
#[derive(Debug, Clone, Default)]
pub struct ExecState {
    pub started: bool,
    pub running: bool,
    pub exit_code: Option<i64>,
    pub pid: u32,
    /// A resize that came before the process started (width, height).
    pub pending_size: Option<(u32, u32)>,
}

/// An exec instance.
pub struct ExecEntry {
    pub id: String,
    pub container_id: String,
    pub cfg: ExecConfig,
    pub state: Mutex<ExecState>,
    /// True once the process has exited and its exit code is recorded.
    pub done: watch::Sender<bool>,
}

impl ExecEntry {
    fn st(&self) -> std::sync::MutexGuard<'_, ExecState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A started (attached) exec: its output chunks and stdin.
pub struct ExecStream {
    pub tty: bool,
    /// Output; closed when the process's stdio ended *and* its exit code is
    /// recorded (the CLI inspects the exec right after the stream ends).
    pub rx: mpsc::Receiver<StreamMsg>,
    /// True once the exit code is recorded.
    pub done: watch::Receiver<bool>,
}

fn console_size(v: &Value) -> Option<(u32, u32)> {
    let a = v.as_array()?;
    let h = a.first()?.as_u64()? as u32;
    let w = a.get(1)?.as_u64()? as u32;
    (h > 0 && w > 0).then_some((w, h))
}

/// Reads one exec FIFO until EOF into the output channel.
fn read_fifo(path: &Path, sid: u8, tx: Option<&mpsc::Sender<StreamMsg>>) {
    let mut f = match File::open(path) {
        Ok(f) => f,
        Err(e) => {
            warn!(path = %path.display(), "cannot open exec fifo: {e}");
            return;
        }
    };
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                // A gone client (or an unattached stream): keep draining so
                // the process never blocks on a full pipe.
                if let Some(tx) = tx {
                    let _ =
                        tx.blocking_send(StreamMsg::Data(sid, Bytes::copy_from_slice(&buf[..n])));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                warn!(path = %path.display(), "reading exec fifo: {e}");
                break;
            }
        }
    }
}

/// Releases readers blocked in `open` on FIFOs no process will open.
fn unblock(paths: &[(u8, PathBuf)]) {
    for (_, p) in paths {
        let _ = OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(p);
    }
}

impl Containers {
    fn exec_entry(&self, id: &str) -> Result<Arc<ExecEntry>> {
        self.execs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
            .ok_or_else(|| EngineError::NotFound(format!("No such exec instance: {id}")))
    }

    /// The IDs of a container's execs (`null` when none, like dockerd).
    pub(crate) fn exec_ids(&self, container_id: &str) -> Value {
        let ids: Vec<String> = self
            .execs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .filter(|e| e.container_id == container_id)
            .map(|e| e.id.clone())
            .collect();
        if ids.is_empty() {
            Value::Null
        } else {
            json!(ids)
        }
    }

    /// Drops the exec records of a container (on exit or removal).
    pub(crate) fn forget_execs(&self, container_id: &str) {
        self.execs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|_, e| e.container_id != container_id || e.st().running);
    }

    /// POST /containers/{id}/exec.
    pub fn exec_create(&self, key: &str, body: &Value) -> Result<String> {
        let entry = self.lookup(key)?;
        let rec = entry.record();
        if !body.is_object() {
            return Err(EngineError::BadRequest(
                "exec config must be an object".into(),
            ));
        }
        if rec.state.restarting {
            return Err(EngineError::Conflict(format!(
                "Container {} is restarting, wait until the container is running",
                rec.id
            )));
        }
        if !rec.state.running {
            return Err(EngineError::Conflict(format!(
                "Container {} is not running",
                rec.id
            )));
        }
        if rec.state.paused {
            return Err(EngineError::Conflict(format!(
                "Container {} is paused, unpause the container before exec",
                rec.id
            )));
        }
        if body["Privileged"].as_bool().unwrap_or(false) {
            return Err(EngineError::NotImplemented(
                "privileged exec is not implemented in orcad yet".into(),
            ));
        }
        let strs = |k: &str| -> Result<Vec<String>> {
            match &body[k] {
                Value::Null => Ok(Vec::new()),
                Value::Array(a) => a
                    .iter()
                    .map(|x| {
                        x.as_str().map(String::from).ok_or_else(|| {
                            EngineError::BadRequest(format!("{k} must be a list of strings"))
                        })
                    })
                    .collect(),
                Value::String(s) => Ok(vec![s.clone()]),
                _ => Err(EngineError::BadRequest(format!(
                    "{k} must be a list of strings"
                ))),
            }
        };
        let cmd = strs("Cmd")?;
        if cmd.is_empty() {
            return Err(EngineError::BadRequest("No exec command specified".into()));
        }
        let env = strs("Env")?;
        for e in &env {
            if e.is_empty() || e.starts_with('=') {
                return Err(EngineError::BadRequest(format!(
                    "invalid environment variable: {e:?}"
                )));
            }
        }
        let s = |k: &str| body[k].as_str().unwrap_or("").to_string();
        let b = |k: &str| body[k].as_bool().unwrap_or(false);
        let cfg = ExecConfig {
            cmd,
            env,
            working_dir: s("WorkingDir"),
            user: s("User"),
            tty: b("Tty"),
            attach_stdin: b("AttachStdin"),
            attach_stdout: b("AttachStdout"),
            attach_stderr: b("AttachStderr"),
            console_size: console_size(&body["ConsoleSize"]),
        };
        if !cfg.working_dir.is_empty() && !cfg.working_dir.starts_with('/') {
            return Err(EngineError::BadRequest(format!(
                "the working directory '{}' is invalid, it needs to be an absolute path",
                cfg.working_dir
            )));
        }
        spec::parse_user(&cfg.user)?;
        let id = util::random_hex(32);
        let e = Arc::new(ExecEntry {
            id: id.clone(),
            container_id: rec.id.clone(),
            cfg,
            state: Mutex::new(ExecState::default()),
            done: watch::channel(false).0,
        });
        let action = format!("exec_create: {}", e.cfg.cmd.join(" "));
        self.execs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.clone(), e);
        debug!(exec = %id, container = %rec.id, "created exec");
        self.events
            .container(&action, &rec, &[("execID", id.clone())]);
        Ok(id)
    }

    /// GET /exec/{id}/json.
    pub fn exec_inspect(&self, id: &str) -> Result<Value> {
        let e = self.exec_entry(id)?;
        let st = e.st().clone();
        let c = &e.cfg;
        Ok(json!({
            "ID": e.id,
            "Running": st.running,
            "ExitCode": st.exit_code,
            "ProcessConfig": {
                "tty": c.tty,
                "entrypoint": c.cmd[0],
                "arguments": &c.cmd[1..],
                "privileged": false,
                "user": c.user,
            },
            "OpenStdin": c.attach_stdin,
            "OpenStderr": c.attach_stderr,
            "OpenStdout": c.attach_stdout,
            "CanRemove": false,
            "ContainerID": e.container_id,
            "DetachKeys": "",
            "Pid": st.pid,
        }))
    }

    /// POST /exec/{id}/resize.
    pub async fn exec_resize(&self, id: &str, w: u32, h: u32) -> Result<()> {
        let e = self.exec_entry(id)?;
        if !e.cfg.tty {
            return Err(EngineError::Conflict(format!(
                "exec {id} does not have a TTY"
            )));
        }
        {
            let mut st = e.st();
            if !st.running {
                if st.exit_code.is_none() {
                    // Not started yet: applied once it is.
                    st.pending_size = Some((w, h));
                    return Ok(());
                }
                return Err(EngineError::Conflict(format!("exec {id} is not running")));
            }
        }
        self.resize_pty(&e.container_id, &e.id, w, h).await
    }

    /// Tasks.ResizePty for the init process (`exec_id` empty) or an exec.
    pub(crate) async fn resize_pty(&self, cid: &str, exec_id: &str, w: u32, h: u32) -> Result<()> {
        self.ctrd
            .tasks()
            .resize_pty(self.ctrd.req(tasks::ResizePtyRequest {
                container_id: cid.to_string(),
                exec_id: exec_id.to_string(),
                width: w,
                height: h,
            }))
            .await
            .map_err(|s| EngineError::grpc("resize", s))?;
        Ok(())
    }

    /// Checks an exec can be started and marks it started.
    pub fn exec_claim(&self, id: &str) -> Result<Arc<ExecEntry>> {
        let e = self.exec_entry(id)?;
        let entry = self.lookup(&e.container_id)?;
        let rec = entry.record();
        if !rec.state.running || rec.state.restarting {
            return Err(EngineError::Conflict(format!(
                "Container {} is not running",
                rec.id
            )));
        }
        if rec.state.paused {
            return Err(EngineError::Conflict(format!(
                "Container {} is paused, unpause the container before exec",
                rec.id
            )));
        }
        let mut st = e.st();
        if st.started {
            return Err(EngineError::Conflict(format!(
                "Error: Exec command {id} is already running"
            )));
        }
        st.started = true;
        Ok(e.clone())
    }

    /// The container's OCI process spec, adapted for the exec.
    async fn exec_process_spec(&self, e: &ExecEntry) -> Result<Value> {
        let c = self
            .ctrd
            .containers()
            .get(self.ctrd.req(ctrs::GetContainerRequest {
                id: e.container_id.clone(),
            }))
            .await
            .map_err(|s| EngineError::grpc("get container", s))?
            .into_inner()
            .container
            .ok_or_else(|| EngineError::internal("containerd returned no container"))?;
        let spec: Value = serde_json::from_slice(&c.spec.map(|a| a.value).unwrap_or_default())
            .map_err(|e| EngineError::internal(format!("container spec: {e}")))?;
        let mut p = spec["process"].clone();
        if !p.is_object() {
            return Err(EngineError::internal("container spec has no process"));
        }
        let base_env: Vec<String> = serde_json::from_value(p["env"].clone()).unwrap_or_default();
        let mut env = merge_env(&base_env, &e.cfg.env);
        if e.cfg.tty && !env.iter().any(|v| v.starts_with("TERM=")) {
            env.push("TERM=xterm".into());
        }
        p["args"] = json!(e.cfg.cmd);
        p["env"] = json!(env);
        p["terminal"] = json!(e.cfg.tty);
        if !e.cfg.working_dir.is_empty() {
            p["cwd"] = json!(e.cfg.working_dir);
        }
        if !e.cfg.user.is_empty() {
            let (uid, gid) = spec::parse_user(&e.cfg.user)?;
            exec_user(&mut p, uid, gid);
        }
        // A resize that came before the start wins over ConsoleSize.
        let size = e.st().pending_size.or(e.cfg.console_size);
        if let (true, Some((w, h))) = (e.cfg.tty, size) {
            p["consoleSize"] = json!({"height": h, "width": w});
        } else if let Some(o) = p.as_object_mut() {
            o.remove("consoleSize");
        }
        Ok(p)
    }

    /// Starts a claimed exec. Detached: no stdio, returns `None`. Otherwise
    /// the output stream (and stdin pipe when AttachStdin).
    pub async fn exec_start(
        self: &Arc<Self>,
        e: Arc<ExecEntry>,
        detach: bool,
        stdin: Option<Arc<StdinPipe>>,
    ) -> Result<Option<ExecStream>> {
        let res = self
            .exec_start_inner(e.clone(), detach, stdin.clone())
            .await;
        if res.is_err() {
            if let Some(p) = &stdin {
                p.set(StdinState::Closed);
            }
            let mut st = e.st();
            st.running = false;
            if st.exit_code.is_none() {
                st.exit_code = Some(126);
            }
            drop(st);
            e.done.send_replace(true);
        }
        res
    }

    async fn exec_start_inner(
        self: &Arc<Self>,
        e: Arc<ExecEntry>,
        detach: bool,
        stdin_pipe: Option<Arc<StdinPipe>>,
    ) -> Result<Option<ExecStream>> {
        let proc_spec = self.exec_process_spec(&e).await?;
        let cid = e.container_id.clone();
        let xdir = self.exec_dir(&cid);
        fs::create_dir_all(&xdir)?;
        let tty = e.cfg.tty;
        // Without a TTY the shim wants both stdout and stderr (or neither);
        // output of a stream the client did not attach is read and dropped.
        let mut fifos: Vec<(u8, PathBuf)> = Vec::new();
        let (want_out, want_err) = (e.cfg.attach_stdout, e.cfg.attach_stderr && !tty);
        if !detach && (want_out || want_err) {
            fifos.push((1, xdir.join(format!("{}-stdout", e.id))));
            if !tty {
                fifos.push((2, xdir.join(format!("{}-stderr", e.id))));
            }
        }
        for (_, p) in &fifos {
            let _ = fs::remove_file(p);
            nix::unistd::mkfifo(p, nix::sys::stat::Mode::from_bits_truncate(0o600))
                .map_err(|err| EngineError::internal(format!("mkfifo {}: {err}", p.display())))?;
        }
        let stdin_path = xdir.join(format!("{}-stdin", e.id));
        let stdin_rdwr = if !detach && e.cfg.attach_stdin && stdin_pipe.is_some() {
            Some(crate::containers::stdin_fifo(&stdin_path)?)
        } else {
            None
        };
        let (tx, rx) = mpsc::channel::<StreamMsg>(64);
        let mut readers = Vec::new();
        for (sid, p) in fifos.clone() {
            let tx = tx.clone();
            let keep = if sid == 1 { want_out } else { want_err };
            readers.push(tokio::task::spawn_blocking(move || {
                read_fifo(&p, sid, keep.then_some(&tx))
            }));
        }
        let path_of = |sid: u8| {
            fifos
                .iter()
                .find(|(s, _)| *s == sid)
                .map(|(_, p)| p.display().to_string())
                .unwrap_or_default()
        };
        let cleanup_files = {
            let mut v: Vec<PathBuf> = fifos.iter().map(|(_, p)| p.clone()).collect();
            v.push(stdin_path.clone());
            v
        };
        let value = serde_json::to_vec(&proc_spec).map_err(EngineError::internal)?;
        if let Err(s) = self
            .ctrd
            .tasks()
            .exec(self.ctrd.req(tasks::ExecProcessRequest {
                container_id: cid.clone(),
                stdin: if stdin_rdwr.is_some() {
                    stdin_path.display().to_string()
                } else {
                    String::new()
                },
                stdout: path_of(1),
                stderr: path_of(2),
                terminal: tty,
                spec: Some(prost_types::Any {
                    type_url: "types.containerd.io/opencontainers/runtime-spec/1/Process".into(),
                    value,
                }),
                exec_id: e.id.clone(),
            }))
            .await
        {
            unblock(&fifos);
            for p in &cleanup_files {
                let _ = fs::remove_file(p);
            }
            return Err(EngineError::grpc("exec", s));
        }
        let started = self
            .ctrd
            .tasks()
            .start(self.ctrd.req(tasks::StartRequest {
                container_id: cid.clone(),
                exec_id: e.id.clone(),
            }))
            .await;
        let pid = match started {
            Ok(r) => {
                if let Ok(c) = self.lookup(&cid) {
                    self.events.container(
                        &format!("exec_start: {}", e.cfg.cmd.join(" ")),
                        &c.record(),
                        &[("execID", e.id.clone())],
                    );
                }
                r.into_inner().pid
            }
            Err(s) => {
                let _ = self
                    .ctrd
                    .tasks()
                    .delete_process(self.ctrd.req(tasks::DeleteProcessRequest {
                        container_id: cid.clone(),
                        exec_id: e.id.clone(),
                    }))
                    .await;
                unblock(&fifos);
                for p in &cleanup_files {
                    let _ = fs::remove_file(p);
                }
                let msg = format!("OCI runtime exec failed: {}", s.message());
                let lower = msg.to_ascii_lowercase();
                let code = if lower.contains("executable file not found")
                    || lower.contains("no such file or directory")
                {
                    127
                } else {
                    126
                };
                e.st().exit_code = Some(code);
                return Err(EngineError::internal(msg));
            }
        };
        let stdin = match (stdin_rdwr, stdin_pipe) {
            (Some(f), Some(pipe)) => {
                pipe.open(
                    crate::containers::stdin_writer(&stdin_path, f),
                    &self.ctrd,
                    &cid,
                    &e.id,
                );
                Some(pipe)
            }
            (_, pipe) => {
                if let Some(p) = pipe {
                    p.set(StdinState::Closed);
                }
                None
            }
        };
        let pending = {
            let mut st = e.st();
            st.running = true;
            st.pid = pid;
            st.pending_size.take()
        };
        info!(exec = %e.id, container = %cid, pid, "started exec");
        if let Some((w, h)) = pending {
            if let Err(err) = self.resize_pty(&cid, &e.id, w, h).await {
                debug!("initial exec resize: {err}");
            }
        }
        // Waiter: exit status, then the end of the output, then cleanup.
        let me = self.clone();
        let e2 = e.clone();
        let stdin2 = stdin.clone();
        tokio::spawn(async move {
            let res = me
                .ctrd
                .tasks()
                .wait(me.ctrd.req(tasks::WaitRequest {
                    container_id: cid.clone(),
                    exec_id: e2.id.clone(),
                }))
                .await;
            let code = match res {
                Ok(r) => r.into_inner().exit_status as i64,
                Err(s) => {
                    warn!(exec = %e2.id, "waiting for the exec failed: {s}");
                    255
                }
            };
            if let Some(p) = stdin2 {
                p.set(StdinState::Closed);
            }
            let drain = async {
                for r in readers {
                    let _ = r.await;
                }
            };
            if tokio::time::timeout(Duration::from_secs(5), drain)
                .await
                .is_err()
            {
                warn!(exec = %e2.id, "exec output did not end within 5 s of its exit");
            }
            if let Err(s) = me
                .ctrd
                .tasks()
                .delete_process(me.ctrd.req(tasks::DeleteProcessRequest {
                    container_id: cid.clone(),
                    exec_id: e2.id.clone(),
                }))
                .await
            {
                debug!(exec = %e2.id, "delete exec process: {s}");
            }
            for p in &cleanup_files {
                let _ = fs::remove_file(p);
            }
            {
                let mut st = e2.st();
                st.running = false;
                st.exit_code = Some(code);
            }
            info!(exec = %e2.id, code, "exec exited");
            e2.done.send_replace(true);
            // The output channel closes only now (tx moved here).
            drop(tx);
        });
        if detach {
            return Ok(None);
        }
        Ok(Some(ExecStream {
            tty,
            rx,
            done: e.done.subscribe(),
        }))
    }
}

impl Containers {
    /// POST /containers/{id}/resize.
    pub async fn resize(&self, key: &str, w: u32, h: u32) -> Result<()> {
        let entry = self.lookup(key)?;
        let rec = entry.record();
        if !rec.state.running {
            return Err(EngineError::Conflict(format!(
                "Container {} is not running",
                rec.id
            )));
        }
        if !rec.config.tty {
            return Err(EngineError::Conflict(format!(
                "Container {} does not have a TTY",
                rec.id
            )));
        }
        self.resize_pty(&rec.id, "", w, h).await
    }
}

/// Sets the exec's uid/gid on the container's `process` spec, keeping its
/// `additionalGids` (the container's `GroupAdd`): dockerd's getUser gives
/// an `exec -u` process the container's added groups too.
fn exec_user(p: &mut Value, uid: u32, gid: u32) {
    let gids = p["user"]["additionalGids"].clone();
    p["user"] = json!({"uid": uid, "gid": gid});
    if gids.as_array().is_some_and(|a| !a.is_empty()) {
        p["user"]["additionalGids"] = gids;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_user_keeps_the_containers_added_groups() {
        let mut p =
            json!({"user": {"uid": 0, "gid": 0, "additionalGids": [1234, 29]}, "args": ["sh"]});
        exec_user(&mut p, 1000, 100);
        assert_eq!(
            p["user"],
            json!({"uid": 1000, "gid": 100, "additionalGids": [1234, 29]})
        );
        let mut p = json!({"user": {"uid": 0, "gid": 0}});
        exec_user(&mut p, 1000, 0);
        assert_eq!(p["user"], json!({"uid": 1000, "gid": 0}));
    }
}
