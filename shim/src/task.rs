//! The task service (`containerd.task.v2.Task`, also served as
//! `containerd.task.v3.Task`): one container, its init and exec processes.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use containerd_shim_protos::events::task as ev;
use containerd_shim_protos::protobuf::{Message, MessageField};
use containerd_shim_protos::shim::oci::{Options, ProcessDetails};
use containerd_shim_protos::shim::shim as api;
use containerd_shim_protos::shim_sync::Task;
use containerd_shim_protos::types::empty::Empty;
use containerd_shim_protos::types::task::{ProcessInfo, Status as ApiStatus};
use ttrpc::{MethodHandler, TtrpcContext};

use crate::error::{Error, Result};
use crate::events::{timestamp, to_any, Publisher};
use crate::io::{self, ConsoleSocket, StdioPaths};
use crate::mount::{self, MountSpec};
use crate::process::{Process, Status};
use crate::reaper::Reaper;
use crate::runtime_cli::{resolve_binary, RuntimeCli, RuntimeStdio};

/// File in the bundle recording how the runtime was invoked (for the
/// `delete` bootstrap action after a shim died).
pub const RUNTIME_FILE: &str = "orca-shim.json";

/// A flag set once and waited for.
#[derive(Default)]
pub struct OneShot {
    done: Mutex<bool>,
    cv: Condvar,
}

/// Set when the shim should exit (after Delete + Shutdown).
pub type ShutdownSignal = OneShot;

impl OneShot {
    pub fn fire(&self) {
        *self.done.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.cv.notify_all();
    }

    pub fn wait(&self) {
        let mut g = self.done.lock().unwrap_or_else(|e| e.into_inner());
        while !*g {
            g = self.cv.wait(g).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// [`OneShot::wait`] for at most `d`; whether it was set.
    pub fn wait_for(&self, d: Duration) -> bool {
        let g = self.done.lock().unwrap_or_else(|e| e.into_inner());
        let (g, _) = self
            .cv
            .wait_timeout_while(g, d, |done| !*done)
            .unwrap_or_else(|e| e.into_inner());
        *g
    }
}

struct Container {
    id: String,
    bundle: PathBuf,
    runtime: RuntimeCli,
    init: Process,
    execs: HashMap<String, Process>,
    /// `<bundle>/rootfs` when the shim mounted it.
    rootfs: Option<PathBuf>,
    /// The runtime's `delete` right after the init's exit (see
    /// [`TaskService::delete_runtime_state_early`]).
    early_delete: EarlyDelete,
    /// Fired once the OOM watch is set up (see `watch_oom`).
    oom_armed: Arc<OneShot>,
}

/// Where the runtime's `delete` after the init's exit stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EarlyDelete {
    NotRun,
    /// On the `runtime-delete` thread, without the container lock:
    /// `Delete` waits for it on [`Inner::early_delete_done`].
    Running,
    Done,
}

impl Container {
    fn process(&self, exec_id: &str) -> Result<&Process> {
        if exec_id.is_empty() {
            Ok(&self.init)
        } else {
            self.execs
                .get(exec_id)
                .ok_or_else(|| Error::NotFound(format!("exec {exec_id:?}")))
        }
    }

    fn process_mut(&mut self, exec_id: &str) -> Result<&mut Process> {
        if exec_id.is_empty() {
            Ok(&mut self.init)
        } else {
            self.execs
                .get_mut(exec_id)
                .ok_or_else(|| Error::NotFound(format!("exec {exec_id:?}")))
        }
    }
}

struct Inner {
    namespace: String,
    container: Mutex<Option<Container>>,
    /// Signalled (with `container`) when an early runtime delete ends.
    early_delete_done: std::sync::Condvar,
    events: Publisher,
    shutdown: Arc<ShutdownSignal>,
}

/// The task service; clone-able handle.
#[derive(Clone)]
pub struct TaskService {
    inner: Arc<Inner>,
}

/// How long Delete waits for a process's output to be copied out (the
/// runc shim's bound too): output still held by a descendant that outlived
/// the process, or a FIFO no client ever opened, must not hang Delete.
const OUTPUT_DRAIN: Duration = Duration::from_secs(2);

/// Lets the process's output streams reach EOF before Delete replies (and
/// the shim may exit), so no output still in flight is cut off.
fn wait_output(io: &io::ProcessIo, what: &str) {
    if !io.wait_output(OUTPUT_DRAIN) {
        crate::warn!(
            "{what}: output still open {} s after the exit; not waiting longer",
            OUTPUT_DRAIN.as_secs()
        );
    }
}

/// How long an exit waits for the output the process wrote to be copied
/// out before it is reported anyway (a destination nobody reads).
const EXIT_DRAIN: Duration = Duration::from_secs(2);

fn drain_output(d: &io::OutputDrain, pid: i32) {
    if !d.drain(EXIT_DRAIN) {
        crate::warn!(
            "process {pid} exited with output not yet copied out after {} s (nobody reading?): reporting the exit",
            EXIT_DRAIN.as_secs()
        );
    }
}

fn pid_file(path: &Path) -> Result<u32> {
    let s = fs::read_to_string(path)
        .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
    s.trim()
        .parse()
        .map_err(|_| Error::Other(format!("bad pid file {}: {s:?}", path.display())))
}

fn parse_options(
    any: &MessageField<containerd_shim_protos::protobuf::well_known_types::any::Any>,
) -> Result<Options> {
    crate::options::parse(any.as_ref())
}

/// Runtime options given to `start` on stdin (a protobuf Any), if any.
pub fn options_from_bootstrap(bytes: &[u8]) -> Option<Options> {
    let any = containerd_shim_protos::protobuf::well_known_types::any::Any::parse_from_bytes(bytes)
        .ok()?;
    parse_options(&Some(any).into()).ok()
}

/// Watches the container's memory cgroup for OOM kills and publishes
/// TaskOOM: `memory.events` on a pure cgroup v2 host (see `oom`), else the
/// v1 memory cgroup (`cgroup.event_control`). Set up on the watcher's own
/// thread, off Create's reply path; `armed` fires once the watch is set (or
/// cannot be), and Start waits for it, so no OOM of the started process can
/// go unseen.
fn watch_oom(pid: u32, container_id: String, events: Publisher, armed: Arc<OneShot>) {
    let spawned = std::thread::Builder::new()
        .name("oom".into())
        .stack_size(32 * 1024)
        .spawn({
            let armed = armed.clone();
            move || {
                let Some(watch) = arm_oom_watch(pid, container_id, events) else {
                    armed.fire();
                    return;
                };
                armed.fire();
                watch();
            }
        });
    if spawned.is_err() {
        armed.fire();
    }
}

/// Sets the OOM watch up; returns the v1 wait loop to run (the v2 watcher
/// runs on a thread of its own).
fn arm_oom_watch(pid: u32, container_id: String, events: Publisher) -> Option<impl FnOnce()> {
    if let Some(file) = crate::oom::memory_events_of(pid) {
        crate::oom::watch_memory_events(file, move || {
            let mut e = ev::TaskOOM::new();
            e.container_id = container_id.clone();
            events.publish(&e);
        });
        return None;
    }
    let dir = crate::metrics::memory_cgroup_dir(pid)?;
    let oom = fs::File::open(dir.join("memory.oom_control")).ok()?;
    // SAFETY: eventfd has no memory preconditions; the result is checked.
    let efd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
    if efd < 0 {
        return None;
    }
    // SAFETY: efd is a fresh descriptor we own.
    let efd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(efd) };
    use std::os::fd::AsRawFd;
    let line = format!("{} {}", efd.as_raw_fd(), oom.as_raw_fd());
    fs::write(dir.join("cgroup.event_control"), line).ok()?;
    Some(move || {
        let _oom = oom;
        loop {
            let mut buf = [0u8; 8];
            // SAFETY: reads 8 bytes into buf from the eventfd we own.
            let n = unsafe { libc::read(efd.as_raw_fd(), buf.as_mut_ptr().cast(), 8) };
            if n != 8 {
                return;
            }
            // The eventfd also fires when the cgroup is removed.
            if !dir.exists() {
                return;
            }
            let mut e = ev::TaskOOM::new();
            e.container_id = container_id.clone();
            events.publish(&e);
        }
    })
}

impl TaskService {
    pub fn new(namespace: &str, events: Publisher, shutdown: Arc<ShutdownSignal>) -> TaskService {
        TaskService {
            inner: Arc::new(Inner {
                namespace: namespace.to_string(),
                container: Mutex::new(None),
                early_delete_done: std::sync::Condvar::new(),
                events,
                shutdown,
            }),
        }
    }

    /// Routes every reaped exit to [`TaskService::handle_exit`] through a
    /// dedicated thread (the reaper must never wait for the container lock).
    pub fn install_exit_handler(&self) {
        let (tx, rx) = mpsc::channel::<(i32, u32)>();
        let tx = Mutex::new(tx);
        Reaper::global().set_callback(Box::new(move |pid, code| {
            let _ = tx
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .send((pid, code));
        }));
        let me = self.clone();
        std::thread::Builder::new()
            .name("exits".into())
            .stack_size(128 * 1024)
            .spawn(move || {
                for (pid, code) in rx {
                    me.handle_exit(pid, code);
                }
            })
            .expect("cannot start the exit thread");
    }

    fn lock(&self) -> MutexGuard<'_, Option<Container>> {
        self.inner
            .container
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// A process of the container exited: record it and publish TaskExit,
    /// once its output written so far has been copied out (bounded): a
    /// client such as ctr 1.6 closes its FIFOs as soon as it has seen the
    /// exit, so output still in the shim's pipe then would be lost.
    pub fn handle_exit(&self, pid: i32, code: u32) {
        if pid <= 0 {
            return;
        }
        let drain = {
            let g = self.lock();
            let Some(c) = g.as_ref() else { return };
            let mut procs = std::iter::once(&c.init).chain(c.execs.values());
            let Some(p) = procs.find(|p| p.pid == pid as u32 && p.exited().is_none()) else {
                return;
            };
            p.io.as_ref().map(|io| {
                // Stdin closed; a pty's output ends once drained.
                io.process_exited();
                io.drainer()
            })
        };
        // Without the container lock: the copiers never need it.
        if let Some(d) = drain {
            drain_output(&d, pid);
        }
        let mut g = self.lock();
        let Some(c) = g.as_mut() else { return };
        let cid = c.id.clone();
        let procs = std::iter::once(&mut c.init).chain(c.execs.values_mut());
        for p in procs {
            if p.pid == pid as u32 && p.exited().is_none() {
                let is_init = p.exec_id.is_empty();
                if let Some(info) = p.set_exited(code) {
                    self.publish_exit(&cid, p, info);
                }
                drop(g);
                if is_init {
                    self.delete_runtime_state_early(cid);
                }
                return;
            }
        }
    }

    /// Once the init's exit is published, the runtime's `delete` (which
    /// kills what is left in the container's cgroup — nothing when it has
    /// its own pid namespace —, runs the poststop hooks, removes the
    /// cgroups and the runtime's state) runs at once on its own thread,
    /// without the container lock, instead of when `Delete` comes: the
    /// client's round trip from the exit event to `Delete` overlaps it, and
    /// `Delete` waits for it. A stopped container has no further use for
    /// that state: `Kill`, `Exec`, `Pause`, `Update` and `Stats` refuse an
    /// exited init, `State` and `Wait` answer from the shim's own record,
    /// `Pids` answers an empty list. On a failure `Delete` runs it again
    /// and reports it.
    fn delete_runtime_state_early(&self, cid: String) {
        let me = self.clone();
        let spawned = std::thread::Builder::new()
            .name("runtime-delete".into())
            .stack_size(128 * 1024)
            .spawn(move || {
                let runtime = {
                    let mut g = me.lock();
                    let Some(c) = g.as_mut() else { return };
                    if c.id != cid
                        || c.early_delete != EarlyDelete::NotRun
                        || c.init.exited().is_none()
                    {
                        return;
                    }
                    c.early_delete = EarlyDelete::Running;
                    c.runtime.clone()
                };
                let result = runtime.delete(&cid, true);
                let mut g = me.lock();
                if let Some(c) = g.as_mut().filter(|c| c.id == cid) {
                    c.early_delete = if result.is_ok() {
                        EarlyDelete::Done
                    } else {
                        EarlyDelete::NotRun
                    };
                }
                drop(g);
                me.inner.early_delete_done.notify_all();
                if let Err(e) = result {
                    crate::warn!("runtime delete after the exit: {e}");
                }
            });
        if let Err(e) = spawned {
            crate::warn!("cannot start the runtime-delete thread: {e}");
        }
    }

    fn publish_exit(&self, cid: &str, p: &Process, info: crate::process::ExitInfo) {
        let mut e = ev::TaskExit::new();
        e.container_id = cid.to_string();
        e.id = if p.exec_id.is_empty() {
            cid.to_string()
        } else {
            p.exec_id.clone()
        };
        e.pid = p.pid;
        e.exit_status = info.status;
        e.exited_at = Some(timestamp(info.at)).into();
        self.inner.events.publish(&e);
    }

    fn container<'a>(
        g: &'a mut MutexGuard<'_, Option<Container>>,
        id: &str,
    ) -> Result<&'a mut Container> {
        match g.as_mut() {
            Some(c) if c.id == id => Ok(c),
            Some(_) => Err(Error::NotFound(format!("container {id:?}"))),
            None => Err(Error::NotFound(format!("container {id:?} (not created)"))),
        }
    }

    fn do_create(&self, req: api::CreateTaskRequest) -> Result<api::CreateTaskResponse> {
        let mut g = self.lock();
        if let Some(c) = g.as_ref() {
            return Err(Error::AlreadyExists(format!("container {:?}", c.id)));
        }
        if req.id.is_empty() || req.id.contains('/') {
            return Err(Error::InvalidArgument(format!(
                "bad container id {:?}",
                req.id
            )));
        }
        if req.bundle.is_empty() || !Path::new(&req.bundle).join("config.json").exists() {
            return Err(Error::InvalidArgument(format!(
                "bundle {:?} has no config.json",
                req.bundle
            )));
        }
        if !req.checkpoint.is_empty() {
            return Err(Error::Unimplemented("restoring from a checkpoint".into()));
        }
        let t0 = std::time::Instant::now();
        let opts = parse_options(&req.options)?;
        let bundle = PathBuf::from(&req.bundle);
        let binary = resolve_binary(&opts.binary_name)?;
        let root = RuntimeCli::default_root(&opts.root, &binary, &self.inner.namespace);
        let runtime = RuntimeCli::new(binary, root, opts.systemd_cgroup, &bundle);
        if let Ok(j) = serde_json::to_vec(&runtime) {
            let _ = fs::write(bundle.join(RUNTIME_FILE), j);
        }
        let mut rootfs = None;
        if !req.rootfs.is_empty() {
            let target = bundle.join("rootfs");
            fs::create_dir_all(&target)
                .map_err(|e| Error::io(format!("creating {}", target.display()), e))?;
            let specs: Vec<MountSpec> = req
                .rootfs
                .iter()
                .map(|m| MountSpec {
                    kind: m.type_.clone(),
                    source: m.source.clone(),
                    options: m.options.clone(),
                })
                .collect();
            mount::mount_all(&specs, &target)?;
            rootfs = Some(target);
        }
        let mounted = t0.elapsed();
        let stdio = StdioPaths {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        let pidfile = bundle.join("init.pid");
        let mut args: Vec<OsString> = vec![
            "create".into(),
            "--bundle".into(),
            bundle.clone().into(),
            "--pid-file".into(),
            pidfile.clone().into(),
        ];
        if opts.no_pivot_root {
            args.push("--no-pivot".into());
        }
        if opts.no_new_keyring {
            args.push("--no-new-keyring".into());
        }
        let result =
            self.spawn_with_stdio(&runtime, args, &req.id, &stdio, opts.io_uid, opts.io_gid);
        let fail = |e: Error| {
            let _ = runtime.delete(&req.id, true);
            if let Some(r) = &rootfs {
                let _ = mount::unmount_all(r);
            }
            e
        };
        let (pio, sub) = result.map_err(fail)?;
        // Integer microseconds: float formatting would map its code and tables into every shim.
        crate::debug!(
            "create: rootfs mounted after {} us, runtime create done after {} us",
            mounted.as_micros(),
            t0.elapsed().as_micros()
        );
        let pid = pid_file(&pidfile).map_err(fail)?;
        let mut init = Process::new("", stdio.clone());
        init.pid = pid;
        init.io = Some(pio);
        if let Some(code) = sub.try_take(pid as i32) {
            init.set_exited(code);
        }
        drop(sub);
        let mut e = ev::TaskCreate::new();
        e.container_id = req.id.clone();
        e.bundle = req.bundle.clone();
        e.rootfs = req.rootfs.clone();
        let mut tio = ev::TaskIO::new();
        tio.stdin = req.stdin.clone();
        tio.stdout = req.stdout.clone();
        tio.stderr = req.stderr.clone();
        tio.terminal = req.terminal;
        e.io = Some(tio).into();
        e.checkpoint = req.checkpoint.clone();
        e.pid = pid;
        self.inner.events.publish(&e);
        let oom_armed = Arc::new(OneShot::default());
        watch_oom(
            pid,
            req.id.clone(),
            self.inner.events.clone(),
            oom_armed.clone(),
        );
        *g = Some(Container {
            id: req.id.clone(),
            bundle,
            runtime,
            init,
            execs: HashMap::new(),
            rootfs,
            early_delete: EarlyDelete::NotRun,
            oom_armed,
        });
        let mut r = api::CreateTaskResponse::new();
        r.pid = pid;
        Ok(r)
    }

    /// Runs a runtime create/exec with the process's stdio wired up; keeps a
    /// reaper subscription so an exit before the pid is known is kept.
    fn spawn_with_stdio(
        &self,
        runtime: &RuntimeCli,
        mut args: Vec<OsString>,
        id: &str,
        stdio: &StdioPaths,
        io_uid: u32,
        io_gid: u32,
    ) -> Result<(io::ProcessIo, crate::reaper::Subscription)> {
        let sub = Reaper::global().subscribe();
        if stdio.terminal {
            let sock = ConsoleSocket::new()?;
            args.push("--console-socket".into());
            args.push(sock.path.clone().into());
            args.push(id.into());
            let mut master = None;
            let mut during = |exited: &dyn Fn() -> bool| {
                master = sock.receive(exited);
            };
            runtime.run(args, io::null_stdio()?, None, Some(&mut during))?;
            let master = master.ok_or_else(|| Error::Runtime {
                cmd: "create".into(),
                msg: "the runtime sent no terminal over the console socket".into(),
            })?;
            Ok((io::setup_console(master, stdio)?, sub))
        } else {
            args.push(id.into());
            let (rs, pio): (RuntimeStdio, _) = io::setup_pipes(stdio, io_uid, io_gid)?;
            match runtime.run(args, rs, None, None) {
                Ok(_) => Ok((pio, sub)),
                Err(e) => {
                    pio.close_stdin();
                    Err(e)
                }
            }
        }
    }

    fn do_start(&self, req: api::StartRequest) -> Result<api::StartResponse> {
        let mut g = self.lock();
        let c = Self::container(&mut g, &req.id)?;
        let mut r = api::StartResponse::new();
        if req.exec_id.is_empty() {
            if c.init.status != Status::Created || c.init.exited().is_some() {
                return Err(Error::FailedPrecondition(format!(
                    "container {:?} is not in the created state",
                    c.id
                )));
            }
            if !c.oom_armed.wait_for(Duration::from_secs(2)) {
                crate::warn!("the OOM watch is not set up yet; starting anyway");
            }
            c.runtime.start(&c.id)?;
            c.init.status = Status::Running;
            let mut e = ev::TaskStart::new();
            e.container_id = c.id.clone();
            e.pid = c.init.pid;
            self.inner.events.publish(&e);
            r.pid = c.init.pid;
            return Ok(r);
        }
        if c.init.exited().is_some() || c.init.status == Status::Created {
            return Err(Error::FailedPrecondition(format!(
                "container {:?} is not running",
                c.id
            )));
        }
        let p = c.process(&req.exec_id)?;
        if p.status != Status::Created {
            return Err(Error::FailedPrecondition(format!(
                "exec {:?} was already started",
                req.exec_id
            )));
        }
        let spec_path = c.bundle.join(format!(".exec-{}.json", req.exec_id));
        let pidfile = c.bundle.join(format!(".exec-{}.pid", req.exec_id));
        fs::write(&spec_path, &p.spec)
            .map_err(|e| Error::io(format!("writing {}", spec_path.display()), e))?;
        let args: Vec<OsString> = vec![
            "exec".into(),
            "--process".into(),
            spec_path.clone().into(),
            "--detach".into(),
            "--pid-file".into(),
            pidfile.clone().into(),
        ];
        let stdio = p.stdio.clone();
        let res = self.spawn_with_stdio(&c.runtime, args, &c.id, &stdio, 0, 0);
        let _ = fs::remove_file(&spec_path);
        let (pio, sub) = res?;
        let pid = pid_file(&pidfile);
        let _ = fs::remove_file(&pidfile);
        let pid = pid?;
        let cid = c.id.clone();
        let p = c.process_mut(&req.exec_id)?;
        p.pid = pid;
        p.io = Some(pio);
        p.status = Status::Running;
        let mut e = ev::TaskExecStarted::new();
        e.container_id = cid.clone();
        e.exec_id = req.exec_id.clone();
        e.pid = pid;
        self.inner.events.publish(&e);
        if let Some(code) = sub.try_take(pid as i32) {
            if let Some(io) = &p.io {
                io.process_exited();
                drain_output(&io.drainer(), pid as i32);
            }
            if let Some(info) = p.set_exited(code) {
                self.publish_exit(&cid, p, info);
            }
        }
        r.pid = pid;
        Ok(r)
    }

    fn do_delete(&self, req: api::DeleteRequest) -> Result<api::DeleteResponse> {
        let mut g = self.lock();
        while req.exec_id.is_empty()
            && g.as_ref()
                .is_some_and(|c| c.early_delete == EarlyDelete::Running)
        {
            g = self
                .inner
                .early_delete_done
                .wait(g)
                .unwrap_or_else(|e| e.into_inner());
        }
        let c = Self::container(&mut g, &req.id)?;
        let mut r = api::DeleteResponse::new();
        if !req.exec_id.is_empty() {
            let p = c.process(&req.exec_id)?;
            if p.status != Status::Created && p.exited().is_none() {
                return Err(Error::FailedPrecondition(format!(
                    "exec {:?} is still running",
                    req.exec_id
                )));
            }
            let p = c.execs.remove(&req.exec_id).expect("checked above");
            if let Some(io) = &p.io {
                io.close_stdin();
                wait_output(io, &req.exec_id);
            }
            r.pid = p.pid;
            if let Some(x) = p.exited() {
                r.exit_status = x.status;
                r.exited_at = Some(timestamp(x.at)).into();
            }
            return Ok(r);
        }
        let running = c.init.exited().is_none() && c.init.status != Status::Created;
        if running {
            return Err(Error::FailedPrecondition(format!(
                "container {:?} is still running: kill it first",
                c.id
            )));
        }
        if c.early_delete != EarlyDelete::Done {
            c.runtime.delete(&c.id, true)?;
        }
        if c.init.exited().is_none() {
            // Created but never started: the runtime killed its init.
            c.init.set_exited(128 + libc::SIGKILL as u32);
        }
        for p in c.execs.values_mut() {
            if p.exited().is_none() {
                p.set_exited(128 + libc::SIGKILL as u32);
            }
        }
        if let Some(io) = &c.init.io {
            io.close_stdin();
            // The runtime's delete killed whatever was left: the output
            // reaches EOF once copied.
            wait_output(io, &c.id);
        }
        if let Some(rootfs) = &c.rootfs {
            mount::unmount_all(rootfs)?;
        }
        let x = c.init.exited().expect("set above");
        r.pid = c.init.pid;
        r.exit_status = x.status;
        r.exited_at = Some(timestamp(x.at)).into();
        let mut e = ev::TaskDelete::new();
        e.container_id = c.id.clone();
        e.pid = c.init.pid;
        e.exit_status = x.status;
        e.exited_at = Some(timestamp(x.at)).into();
        self.inner.events.publish(&e);
        let _ = fs::remove_file(c.bundle.join("init.pid"));
        *g = None;
        Ok(r)
    }

    fn do_state(&self, req: api::StateRequest) -> Result<api::StateResponse> {
        let mut g = self.lock();
        let c = Self::container(&mut g, &req.id)?;
        let p = c.process(&req.exec_id)?;
        let mut r = api::StateResponse::new();
        r.id = if req.exec_id.is_empty() {
            c.id.clone()
        } else {
            req.exec_id.clone()
        };
        r.bundle = c.bundle.to_string_lossy().into_owned();
        r.pid = p.pid;
        r.stdin = p.stdio.stdin.clone();
        r.stdout = p.stdio.stdout.clone();
        r.stderr = p.stdio.stderr.clone();
        r.terminal = p.stdio.terminal;
        r.exec_id = req.exec_id.clone();
        let status = match (p.exited(), p.status) {
            (Some(x), _) => {
                r.exit_status = x.status;
                r.exited_at = Some(timestamp(x.at)).into();
                ApiStatus::STOPPED
            }
            (None, Status::Created) => ApiStatus::CREATED,
            (None, Status::Running) => ApiStatus::RUNNING,
            (None, Status::Paused) => ApiStatus::PAUSED,
            (None, Status::Stopped) => ApiStatus::STOPPED,
        };
        r.set_status(status);
        Ok(r)
    }

    fn do_kill(&self, req: api::KillRequest) -> Result<()> {
        let mut g = self.lock();
        let c = Self::container(&mut g, &req.id)?;
        let p = c.process(&req.exec_id)?;
        if p.exited().is_some() {
            return Err(Error::NotFound(format!(
                "process {} (already finished)",
                if req.exec_id.is_empty() {
                    &c.id
                } else {
                    &req.exec_id
                }
            )));
        }
        if req.exec_id.is_empty() {
            return c.runtime.kill(&c.id, req.signal, req.all);
        }
        if p.status == Status::Created {
            return Err(Error::FailedPrecondition(format!(
                "exec {:?} is not started",
                req.exec_id
            )));
        }
        let sig = nix::sys::signal::Signal::try_from(req.signal as i32)
            .map_err(|_| Error::InvalidArgument(format!("bad signal {}", req.signal)))?;
        match nix::sys::signal::kill(nix::unistd::Pid::from_raw(p.pid as i32), sig) {
            Ok(()) => Ok(()),
            Err(nix::errno::Errno::ESRCH) => Err(Error::NotFound(format!(
                "process {} (already finished)",
                req.exec_id
            ))),
            Err(e) => Err(Error::errno("kill", e)),
        }
    }

    fn do_exec(&self, req: api::ExecProcessRequest) -> Result<()> {
        let mut g = self.lock();
        let c = Self::container(&mut g, &req.id)?;
        if req.exec_id.is_empty() {
            return Err(Error::InvalidArgument("empty exec id".into()));
        }
        if c.execs.contains_key(&req.exec_id) {
            return Err(Error::AlreadyExists(format!("exec {:?}", req.exec_id)));
        }
        if c.init.exited().is_some() {
            return Err(Error::FailedPrecondition(format!(
                "container {:?} is not running",
                c.id
            )));
        }
        let spec = req
            .spec
            .as_ref()
            .map(|a| a.value.clone())
            .unwrap_or_default();
        if serde_json::from_slice::<serde_json::Value>(&spec)
            .ok()
            .and_then(|v| v.get("args").cloned())
            .is_none()
        {
            return Err(Error::InvalidArgument(
                "exec spec is not an OCI process (JSON with args)".into(),
            ));
        }
        let mut p = Process::new(
            &req.exec_id,
            StdioPaths {
                stdin: req.stdin.clone(),
                stdout: req.stdout.clone(),
                stderr: req.stderr.clone(),
                terminal: req.terminal,
            },
        );
        p.spec = spec;
        c.execs.insert(req.exec_id.clone(), p);
        let mut e = ev::TaskExecAdded::new();
        e.container_id = c.id.clone();
        e.exec_id = req.exec_id.clone();
        self.inner.events.publish(&e);
        Ok(())
    }

    fn do_pids(&self, req: api::PidsRequest) -> Result<api::PidsResponse> {
        let mut g = self.lock();
        let c = Self::container(&mut g, &req.id)?;
        let pids = if c.early_delete != EarlyDelete::NotRun {
            Vec::new()
        } else {
            c.runtime.ps(&c.id)?
        };
        let mut r = api::PidsResponse::new();
        for pid in pids {
            let mut pi = ProcessInfo::new();
            pi.pid = pid;
            if let Some(p) = c.execs.values().find(|p| p.pid == pid) {
                let mut d = ProcessDetails::new();
                d.exec_id = p.exec_id.clone();
                pi.info = Some(to_any(&d)).into();
            }
            r.processes.push(pi);
        }
        Ok(r)
    }

    fn do_pause(&self, id: &str, pause: bool) -> Result<()> {
        let mut g = self.lock();
        let c = Self::container(&mut g, id)?;
        let want = if pause {
            Status::Running
        } else {
            Status::Paused
        };
        if c.init.exited().is_some() || c.init.status != want {
            return Err(Error::FailedPrecondition(format!(
                "container {:?} is not {}",
                c.id,
                if pause { "running" } else { "paused" }
            )));
        }
        if pause {
            c.runtime.pause(&c.id)?;
            c.init.status = Status::Paused;
            let mut e = ev::TaskPaused::new();
            e.container_id = c.id.clone();
            self.inner.events.publish(&e);
        } else {
            c.runtime.resume(&c.id)?;
            c.init.status = Status::Running;
            let mut e = ev::TaskResumed::new();
            e.container_id = c.id.clone();
            self.inner.events.publish(&e);
        }
        Ok(())
    }

    fn do_wait(&self, req: api::WaitRequest) -> Result<api::WaitResponse> {
        let cell = {
            let mut g = self.lock();
            let c = Self::container(&mut g, &req.id)?;
            c.process(&req.exec_id)?.exit.clone()
        };
        let x = cell.wait();
        let mut r = api::WaitResponse::new();
        r.exit_status = x.status;
        r.exited_at = Some(timestamp(x.at)).into();
        Ok(r)
    }

    fn do_stats(&self, req: api::StatsRequest) -> Result<api::StatsResponse> {
        let pid = {
            let mut g = self.lock();
            let c = Self::container(&mut g, &req.id)?;
            if c.init.exited().is_some() {
                return Err(Error::FailedPrecondition(format!(
                    "container {:?} has exited",
                    c.id
                )));
            }
            c.init.pid
        };
        let mut r = api::StatsResponse::new();
        r.stats = Some(crate::metrics::collect(pid)?).into();
        Ok(r)
    }

    fn do_update(&self, req: api::UpdateTaskRequest) -> Result<()> {
        let mut g = self.lock();
        let c = Self::container(&mut g, &req.id)?;
        let Some(res) = req.resources.as_ref() else {
            return Err(Error::InvalidArgument("no resources".into()));
        };
        if serde_json::from_slice::<serde_json::Value>(&res.value).is_err() {
            return Err(Error::InvalidArgument(
                "resources are not OCI LinuxResources JSON".into(),
            ));
        }
        c.runtime.update(&c.id, &res.value)
    }

    fn do_close_io(&self, req: api::CloseIORequest) -> Result<()> {
        let mut g = self.lock();
        let c = Self::container(&mut g, &req.id)?;
        let p = c.process(&req.exec_id)?;
        if req.stdin {
            if let Some(io) = &p.io {
                io.close_stdin();
            }
        }
        Ok(())
    }

    fn do_resize(&self, req: api::ResizePtyRequest) -> Result<()> {
        let mut g = self.lock();
        let c = Self::container(&mut g, &req.id)?;
        let p = c.process(&req.exec_id)?;
        match &p.io {
            Some(io) => io.resize(req.width, req.height),
            None => Err(Error::FailedPrecondition(
                "the process is not started".into(),
            )),
        }
    }

    fn do_connect(&self, _req: api::ConnectRequest) -> Result<api::ConnectResponse> {
        let g = self.lock();
        let mut r = api::ConnectResponse::new();
        r.shim_pid = std::process::id();
        r.task_pid = g.as_ref().map(|c| c.init.pid).unwrap_or(0);
        r.version = concat!("orca-shim ", env!("CARGO_PKG_VERSION")).to_string();
        Ok(r)
    }

    fn do_shutdown(&self, req: api::ShutdownRequest) -> Result<()> {
        let g = self.lock();
        if g.is_some() && !req.now {
            // Still has a container: not ours to leave yet.
            return Ok(());
        }
        self.inner.shutdown.fire();
        Ok(())
    }

    /// The method map for both service names.
    pub fn methods(&self) -> HashMap<String, Box<dyn MethodHandler + Send + Sync>> {
        let mut all = HashMap::new();
        let svc: Arc<dyn Task + Send + Sync> = Arc::new(self.clone());
        for (k, v) in containerd_shim_protos::create_task(svc.clone()) {
            all.insert(
                k,
                Box::new(Guarded(v)) as Box<dyn MethodHandler + Send + Sync>,
            );
        }
        for (k, v) in containerd_shim_protos::create_task(svc) {
            let k = k.replace("/containerd.task.v2.Task/", "/containerd.task.v3.Task/");
            all.insert(
                k,
                Box::new(Guarded(v)) as Box<dyn MethodHandler + Send + Sync>,
            );
        }
        all
    }
}

/// Turns a handler failure (an undecodable request) into an
/// InvalidArgument reply instead of a dropped connection.
struct Guarded(Box<dyn MethodHandler + Send + Sync>);

impl MethodHandler for Guarded {
    fn handler(&self, ctx: TtrpcContext, req: ttrpc::Request) -> ttrpc::Result<()> {
        let stream_id = ctx.mh.stream_id;
        let tx = ctx.res_tx.clone();
        match self.0.handler(ctx, req) {
            Ok(()) => Ok(()),
            Err(e) => {
                let mut res = ttrpc::Response::new();
                res.set_status(ttrpc::get_status(
                    ttrpc::Code::INVALID_ARGUMENT,
                    format!("malformed request: {e}"),
                ));
                ttrpc::response_to_channel(stream_id, res, tx)
            }
        }
    }
}

fn reply<T>(what: &str, r: Result<T>) -> ttrpc::Result<T> {
    r.map_err(|e| {
        crate::debug!("{what}: {e}");
        e.into()
    })
}

impl Task for TaskService {
    fn state(&self, _: &TtrpcContext, req: api::StateRequest) -> ttrpc::Result<api::StateResponse> {
        reply("state", self.do_state(req))
    }
    fn create(
        &self,
        _: &TtrpcContext,
        req: api::CreateTaskRequest,
    ) -> ttrpc::Result<api::CreateTaskResponse> {
        reply("create", self.do_create(req))
    }
    fn start(&self, _: &TtrpcContext, req: api::StartRequest) -> ttrpc::Result<api::StartResponse> {
        reply("start", self.do_start(req))
    }
    fn delete(
        &self,
        _: &TtrpcContext,
        req: api::DeleteRequest,
    ) -> ttrpc::Result<api::DeleteResponse> {
        reply("delete", self.do_delete(req))
    }
    fn pids(&self, _: &TtrpcContext, req: api::PidsRequest) -> ttrpc::Result<api::PidsResponse> {
        reply("pids", self.do_pids(req))
    }
    fn pause(&self, _: &TtrpcContext, req: api::PauseRequest) -> ttrpc::Result<Empty> {
        reply("pause", self.do_pause(&req.id, true)).map(|_| Empty::new())
    }
    fn resume(&self, _: &TtrpcContext, req: api::ResumeRequest) -> ttrpc::Result<Empty> {
        reply("resume", self.do_pause(&req.id, false)).map(|_| Empty::new())
    }
    fn checkpoint(
        &self,
        _: &TtrpcContext,
        _req: api::CheckpointTaskRequest,
    ) -> ttrpc::Result<Empty> {
        Err(
            Error::Unimplemented("checkpoint (orca-shim does not support checkpoints yet)".into())
                .into(),
        )
    }
    fn kill(&self, _: &TtrpcContext, req: api::KillRequest) -> ttrpc::Result<Empty> {
        reply("kill", self.do_kill(req)).map(|_| Empty::new())
    }
    fn exec(&self, _: &TtrpcContext, req: api::ExecProcessRequest) -> ttrpc::Result<Empty> {
        reply("exec", self.do_exec(req)).map(|_| Empty::new())
    }
    fn resize_pty(&self, _: &TtrpcContext, req: api::ResizePtyRequest) -> ttrpc::Result<Empty> {
        reply("resize", self.do_resize(req)).map(|_| Empty::new())
    }
    fn close_io(&self, _: &TtrpcContext, req: api::CloseIORequest) -> ttrpc::Result<Empty> {
        reply("close_io", self.do_close_io(req)).map(|_| Empty::new())
    }
    fn update(&self, _: &TtrpcContext, req: api::UpdateTaskRequest) -> ttrpc::Result<Empty> {
        reply("update", self.do_update(req)).map(|_| Empty::new())
    }
    fn wait(&self, _: &TtrpcContext, req: api::WaitRequest) -> ttrpc::Result<api::WaitResponse> {
        reply("wait", self.do_wait(req))
    }
    fn stats(&self, _: &TtrpcContext, req: api::StatsRequest) -> ttrpc::Result<api::StatsResponse> {
        reply("stats", self.do_stats(req))
    }
    fn connect(
        &self,
        _: &TtrpcContext,
        req: api::ConnectRequest,
    ) -> ttrpc::Result<api::ConnectResponse> {
        reply("connect", self.do_connect(req))
    }
    fn shutdown(&self, _: &TtrpcContext, req: api::ShutdownRequest) -> ttrpc::Result<Empty> {
        reply("shutdown", self.do_shutdown(req)).map(|_| Empty::new())
    }
}
