//! The runtime side of every command: create (fork the init and supervise its setup), start,
//! state, kill, delete, exec, pause/resume, ps, update, events.

use crate::cgroups::{CgroupManager, CgroupPaths};
use crate::error::{Context, Result, RuntimeError};
use crate::init::{self, InitConfig, InitKind};
use crate::namespaces::{self, NamespacePlan};
use crate::state::{proc_start_time, ContainerState, StateStore, Status, EXEC_FIFO};
use crate::sync::{self, Msg};
use nix::fcntl::OFlag;
use nix::sched::CloneFlags;
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use oci_spec::runtime::{LinuxNamespaceType, Process, Spec};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, Default, Clone)]
pub struct CreateOptions {
    pub bundle: PathBuf,
    pub pid_file: Option<PathBuf>,
    pub console_socket: Option<PathBuf>,
    pub no_pivot: bool,
    pub no_new_keyring: bool,
    pub preserve_fds: i32,
}

#[derive(Debug, Default, Clone)]
pub struct ExecOptions {
    pub pid_file: Option<PathBuf>,
    pub console_socket: Option<PathBuf>,
    pub preserve_fds: i32,
    pub detach: bool,
}

/// What the runtime needs while a fresh process sets itself up.
struct Spawned {
    init_pid: Pid,
}

/// Fork a child with raw clone(2): with `flags` it lands directly in new namespaces.
fn clone_child(flags: CloneFlags) -> Result<Option<Pid>> {
    // SAFETY: clone without CLONE_VM and with a null stack behaves like fork(2): the child gets
    // a copy of our (single-threaded) address space and continues here.
    let r = unsafe {
        libc::syscall(
            libc::SYS_clone,
            (flags.bits() as libc::c_long) | libc::SIGCHLD as libc::c_long,
            0usize,
            0usize,
            0usize,
            0usize,
        )
    };
    match r {
        -1 => Err(RuntimeError::Sys {
            context: format!("clone({flags:?})"),
            source: nix::Error::last(),
        }),
        0 => Ok(None),
        pid => Ok(Some(Pid::from_raw(pid as i32))),
    }
}

/// `struct clone_args` of clone3(2), up to `cgroup` (CLONE_ARGS_SIZE_VER2).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// Like [`clone_child`], but the child starts in the cgroup2 directory `cgroup` (no write to
/// `cgroup.procs`, so no wait for the kernel's threadgroup lock). `Err` when the kernel
/// refuses; the caller then falls back to [`clone_child`] and `cgroup.procs`.
fn clone_child_into_cgroup(flags: CloneFlags, cgroup: &OwnedFd) -> Result<Option<Pid>> {
    let args = CloneArgs {
        flags: flags.bits() as u64 | CLONE_INTO_CGROUP,
        exit_signal: libc::SIGCHLD as u64,
        cgroup: cgroup.as_raw_fd() as u64,
        ..Default::default()
    };
    // SAFETY: `args` is a valid clone_args of the size passed; no CLONE_VM and a null stack
    // make this behave like fork(2) (see clone_child).
    let r = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &args as *const CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    match r {
        -1 => Err(RuntimeError::Sys {
            context: format!("clone3({flags:?} | CLONE_INTO_CGROUP)"),
            source: nix::Error::last(),
        }),
        0 => Ok(None),
        pid => Ok(Some(Pid::from_raw(pid as i32))),
    }
}

/// Run the parent half of the setup protocol; returns the init pid once it is Ready.
#[allow(clippy::too_many_arguments)]
fn spawn_and_supervise(
    cfg: InitConfig,
    spec: &Spec,
    plan: &NamespacePlan,
    cgroup: Option<&CgroupManager>,
    on_hooks: &mut dyn FnMut(i32) -> Result<()>,
    on_seccomp: &mut dyn FnMut(i32, OwnedFd) -> Result<()>,
    spawned: &mut Option<Pid>,
) -> Result<Spawned> {
    let (parent_end, child_end) = sync::pair()?;
    let fast = plan.join.is_empty();
    // The cgroup namespace is never created by the clone: the child unshares it after Go, once
    // it is in the container's cgroup, so that cgroup is its namespace's root (as runc).
    let flags = if fast {
        plan.new - CloneFlags::CLONE_NEWCGROUP
    } else {
        CloneFlags::empty()
    };
    // Fast path without a new user namespace (whose child could not write the host's
    // cgroupfs): the clone lands in the cgroup2 directory and the child joins the v1 ones
    // itself, so nobody writes `cgroup.procs` (see CgroupPaths::join_v1_self).
    let into = match cgroup {
        Some(cg) if fast && !plan.creates(LinuxNamespaceType::User) => cg
            .paths()
            .v2_dir()
            .and_then(|d| {
                nix::fcntl::open(
                    d,
                    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
                    nix::sys::stat::Mode::empty(),
                )
                .ok()
            })
            // SAFETY: `open` just returned this descriptor; nothing else owns it.
            .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
        _ => None,
    };
    let mut cfg = cfg;
    let cloned = match &into {
        Some(fd) => match clone_child_into_cgroup(flags, fd) {
            Ok(c) => {
                cfg.join_cgroup_self = true;
                Some(c)
            }
            Err(e) => {
                tracing::debug!(error = %e, "clone3 into the cgroup failed; using cgroup.procs");
                None
            }
        },
        None => None,
    };
    let cloned = match cloned {
        Some(c) => c,
        None => clone_child(flags)?,
    };
    let child = match cloned {
        None => {
            drop(parent_end);
            drop(into);
            init::child_main(cfg, child_end)
        }
        Some(pid) => pid,
    };
    drop(into);
    drop(child_end);
    *spawned = Some(child);
    if let Some(cg) = cgroup {
        if !cfg.join_cgroup_self {
            cg.add_task(child.as_raw())?;
        }
    }
    if fast && plan.creates(LinuxNamespaceType::User) {
        init::write_id_maps(child, spec)?;
    }
    parent_end.send(&Msg::Go)?;
    let mut init_pid = if fast { Some(child) } else { None };
    if let Some(pid) = init_pid {
        parent_end.send(&Msg::HostPid { pid: pid.as_raw() })?;
    }
    loop {
        let Some((msg, fd)) = parent_end.recv()? else {
            let status = waitpid(child, Some(WaitPidFlag::WNOHANG)).ok();
            return Err(RuntimeError::Init(format!(
                "container init exited during setup ({status:?})"
            )));
        };
        match msg {
            Msg::MapIds { pid } => {
                init::write_id_maps(Pid::from_raw(pid), spec)?;
                parent_end.send(&Msg::Mapped)?;
            }
            Msg::InitPid { pid } => {
                let pid = Pid::from_raw(pid);
                if pid != child {
                    // The intermediate process exits right after reporting; reap it.
                    let _ = waitpid(child, None);
                    *spawned = Some(pid);
                }
                init_pid = Some(pid);
                parent_end.send(&Msg::HostPid { pid: pid.as_raw() })?;
            }
            Msg::RunCreateHooks => {
                let pid = init_pid.ok_or_else(|| RuntimeError::other("hooks before init pid"))?;
                on_hooks(pid.as_raw())?;
                parent_end.send(&Msg::HooksDone)?;
            }
            Msg::SeccompFd => {
                let pid = init_pid.ok_or_else(|| RuntimeError::other("seccomp before init pid"))?;
                let fd = fd.ok_or_else(|| RuntimeError::other("seccomp message without fd"))?;
                on_seccomp(pid.as_raw(), fd)?;
            }
            Msg::Ready => {
                let init_pid =
                    init_pid.ok_or_else(|| RuntimeError::other("ready before init pid"))?;
                return Ok(Spawned { init_pid });
            }
            Msg::Error { msg } => return Err(RuntimeError::Init(msg)),
            other => {
                return Err(RuntimeError::other(format!(
                    "init sync: unexpected message {other:?}"
                )))
            }
        }
    }
}

/// Undo a half-made container when create fails: kill what was forked, remove its cgroup and
/// state directory.
struct CreateGuard<'a> {
    store: &'a StateStore,
    id: String,
    cgroup: Option<CgroupManager>,
    pid: Option<Pid>,
    armed: bool,
}

impl Drop for CreateGuard<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        if let Some(pid) = self.pid {
            let _ = kill(pid, Signal::SIGKILL);
            let _ = waitpid(pid, None);
        }
        if let Some(cg) = &self.cgroup {
            if let Ok(pids) = cg.pids() {
                for p in pids {
                    let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
                }
            }
            if let Err(e) = cg.destroy() {
                tracing::warn!(error = %e, "cleanup of failed create: cgroup");
            }
        }
        if let Err(e) = self.store.remove(&self.id) {
            tracing::warn!(error = %e, "cleanup of failed create: state dir");
        }
    }
}

fn write_pid_file(path: &Path, pid: i32) -> Result<()> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, pid.to_string()).ctx(|| format!("write pid file {tmp:?}"))?;
    std::fs::rename(&tmp, path).ctx(|| format!("rename pid file to {path:?}"))
}

fn namespace_types(plan: &NamespacePlan) -> Vec<String> {
    let mut out = Vec::new();
    for t in [
        LinuxNamespaceType::User,
        LinuxNamespaceType::Mount,
        LinuxNamespaceType::Cgroup,
        LinuxNamespaceType::Uts,
        LinuxNamespaceType::Ipc,
        LinuxNamespaceType::Network,
        LinuxNamespaceType::Pid,
        LinuxNamespaceType::Time,
    ] {
        if plan.has(t) {
            out.push(namespaces::proc_name(t).to_string());
        }
    }
    out
}

/// Fail loudly on config features this runtime does not implement yet.
fn reject_unsupported(spec: &Spec) -> Result<()> {
    let unsupported = |what: &str| {
        Err(RuntimeError::Config(format!(
            "field {what}: not supported by orca-runtime yet"
        )))
    };
    if let Some(l) = spec.linux() {
        if l.intel_rdt().is_some() {
            return unsupported("linux.intelRdt");
        }
        if l.personality().is_some() {
            return unsupported("linux.personality");
        }
        if l.memory_policy().is_some() {
            return unsupported("linux.memoryPolicy");
        }
        if l.time_offsets().as_ref().is_some_and(|t| !t.is_empty()) {
            return unsupported("linux.timeOffsets");
        }
        if l.net_devices().as_ref().is_some_and(|t| !t.is_empty()) {
            return unsupported("linux.netDevices");
        }
    }
    if let Some(p) = spec.process() {
        if p.scheduler().is_some() {
            return unsupported("process.scheduler");
        }
        if p.io_priority().is_some() {
            return unsupported("process.ioPriority");
        }
        if p.exec_cpu_affinity().is_some() {
            return unsupported("process.execCPUAffinity");
        }
        if p.apparmor_profile()
            .as_deref()
            .is_some_and(|a| !a.is_empty())
            && Path::new("/sys/kernel/security/apparmor").exists()
        {
            return unsupported("process.apparmorProfile");
        }
    }
    Ok(())
}

/// The spec's seccomp filter as BPF, compiled once per profile and then read from the state
/// root's cache (`None`: no profile, or a notify profile the init compiles itself).
fn prepare_seccomp(
    store: &StateStore,
    spec: &oci_spec::runtime::Spec,
) -> Result<Option<crate::seccomp_cache::BpfFilter>> {
    match spec.linux().as_ref().and_then(|l| l.seccomp().as_ref()) {
        Some(profile) => Ok(crate::seccomp_cache::prepare(
            profile,
            Some(&store.seccomp_cache_dir()),
        )?),
        None => Ok(None),
    }
}

/// `create`: everything up to a process waiting on the exec fifo. Returns the init pid.
pub fn create(store: &StateStore, id: &str, opts: &CreateOptions) -> Result<i32> {
    create_inner(store, id, opts, false).map(|(pid, _)| pid)
}

/// `create`; with `may_proxy_tty` (foreground `run`) a config asking for a terminal without
/// `--console-socket` gets a console socket pair whose runtime end is returned, so the caller
/// can proxy the pty itself, as runc does.
fn create_inner(
    store: &StateStore,
    id: &str,
    opts: &CreateOptions,
    may_proxy_tty: bool,
) -> Result<(i32, Option<OwnedFd>)> {
    crate::state::validate_id(id)?;
    let bundle = std::fs::canonicalize(&opts.bundle).ctx(|| format!("bundle {:?}", opts.bundle))?;
    let spec = crate::spec::load(&bundle)?;
    crate::spec::validate(&spec, true)?;
    reject_unsupported(&spec)?;
    let rootfs = crate::spec::rootfs_path(&bundle, &spec)?;
    let process = spec
        .process()
        .clone()
        .ok_or_else(|| RuntimeError::Config("field process: must be set".into()))?;
    let (proxy_end, own_console) =
        if may_proxy_tty && process.terminal().unwrap_or(false) && opts.console_socket.is_none() {
            let (ours, theirs) = crate::tty::console_pair()?;
            (Some(ours), Some(theirs))
        } else {
            (None, None)
        };
    if process.terminal().unwrap_or(false) && opts.console_socket.is_none() && own_console.is_none()
    {
        return Err(RuntimeError::other(
            "cannot allocate tty if runtime will detach without setting console socket",
        ));
    }
    if !process.terminal().unwrap_or(false) && opts.console_socket.is_some() {
        return Err(RuntimeError::other(
            "cannot use console socket if runtime will not detach or allocate tty",
        ));
    }
    let linux = spec.linux().clone().unwrap_or_default();
    let plan = NamespacePlan::from_spec(linux.namespaces().as_deref().unwrap_or(&[]));

    let dir = store.create_dir(id)?;
    let mut guard = CreateGuard {
        store,
        id: id.to_string(),
        cgroup: None,
        pid: None,
        armed: true,
    };
    let fifo_path = dir.join(EXEC_FIFO);
    nix::unistd::mkfifo(&fifo_path, nix::sys::stat::Mode::from_bits_truncate(0o622))
        .ctx(|| format!("mkfifo {fifo_path:?}"))?;
    // As runc (which creates it under umask 0): the init opens the fifo for writing after it
    // switched to the process user, which may be non-root without CAP_DAC_OVERRIDE or a
    // mapped uid of a user namespace, so it must be writable by others whatever our umask.
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&fifo_path, std::fs::Permissions::from_mode(0o622))
            .ctx(|| format!("chmod {fifo_path:?}"))?;
    }
    let fifo = nix::fcntl::open(
        &fifo_path,
        nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .ctx(|| format!("open {fifo_path:?}"))?;

    let cgroup = CgroupManager::new(linux.cgroups_path().as_deref(), id)?;
    cgroup.create()?;
    let cg_paths: CgroupPaths = cgroup.paths().clone();
    guard.cgroup = Some(CgroupManager::from_paths(cg_paths.clone()));
    if let Some(res) = linux.resources() {
        cgroup.apply(res)?;
    }

    let console = match (&opts.console_socket, own_console) {
        (Some(p), _) => Some(crate::tty::connect_console_socket(p)?),
        (None, fd) => fd,
    };

    let mut state = ContainerState {
        id: id.to_string(),
        bundle: bundle.clone(),
        rootfs: rootfs.clone(),
        created: chrono::Utc::now(),
        owner: String::new(),
        init_pid: 0,
        init_start_time: 0,
        cgroup: Some(cg_paths.clone()),
        namespaces: namespace_types(&plan),
        spec: spec.clone(),
    };

    let seccomp_bpf = prepare_seccomp(store, &spec)?;
    let cfg = InitConfig {
        id,
        spec: &spec,
        process: &process,
        rootfs: &rootfs,
        bundle: &bundle,
        kind: InitKind::Container {
            no_pivot: opts.no_pivot,
            fifo,
        },
        namespaces: &plan,
        cgroup: Some(&cg_paths),
        console: console.as_ref().map(|c| c.as_raw_fd()),
        preserve_fds: opts.preserve_fds,
        no_new_keyring: opts.no_new_keyring,
        cloned_with_namespaces: plan.join.is_empty(),
        seccomp_bpf: seccomp_bpf.as_ref(),
        join_cgroup_self: false,
    };
    let hooks = spec.hooks().clone();
    let seccomp_listener = linux
        .seccomp()
        .as_ref()
        .and_then(|s| s.listener_path().clone());
    let mut spawned_pid = None;
    let result = spawn_and_supervise(
        cfg,
        &spec,
        &plan,
        Some(&cgroup),
        &mut |pid| {
            let mut st = state.clone();
            st.init_pid = pid;
            let s = st.hook_state(Status::Creating, pid);
            crate::hooks::run_all(
                "prestart",
                hooks.as_ref().and_then(|h| h.prestart().as_ref()),
                &s,
            )?;
            crate::hooks::run_all(
                "createRuntime",
                hooks.as_ref().and_then(|h| h.create_runtime().as_ref()),
                &s,
            )
        },
        &mut |pid, fd| {
            let path = seccomp_listener.clone().ok_or_else(|| {
                RuntimeError::Config(
                    "field linux.seccomp.listenerPath: needed for SCMP_ACT_NOTIFY".into(),
                )
            })?;
            let mut st = state.clone();
            st.init_pid = pid;
            crate::seccomp::send_to_listener(&path, fd, &st.hook_state(Status::Creating, pid))?;
            Ok(())
        },
        &mut spawned_pid,
    );
    let _ = nix::unistd::close(fifo);
    guard.pid = spawned_pid;
    let spawned = result?;
    let init_pid = spawned.init_pid.as_raw();
    state.init_pid = init_pid;
    state.init_start_time = proc_start_time(init_pid)
        .map(|(s, _)| s)
        .ok_or_else(|| RuntimeError::Init("container init exited during setup".into()))?;
    store.save(&state)?;
    if let Some(p) = &opts.pid_file {
        write_pid_file(p, init_pid)?;
    }
    guard.armed = false;
    tracing::debug!(id, init_pid, "container created");
    Ok((init_pid, proxy_end))
}

/// `start`: let the init proceed to execve by reading the exec fifo.
pub fn start(store: &StateStore, id: &str) -> Result<()> {
    let state = store.load(id)?;
    let status = state.status(store);
    match status {
        Status::Created => {}
        Status::Stopped => {
            return Err(RuntimeError::other(
                "cannot start a container that has stopped",
            ))
        }
        s => {
            return Err(RuntimeError::WrongState {
                op: "start",
                id: id.into(),
                status: s.to_string(),
            })
        }
    }
    let fifo_path = store.dir(id).join(EXEC_FIFO);
    let fifo = nix::fcntl::open(
        &fifo_path,
        nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_NONBLOCK | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .ctx(|| format!("open exec fifo {fifo_path:?}"))?;
    // SAFETY: `open` returned a descriptor nothing else owns.
    let fifo: OwnedFd = unsafe { std::os::fd::FromRawFd::from_raw_fd(fifo) };
    let mut buf = [0u8; 1];
    let mut got = false;
    // The init opens the fifo for writing as soon as we are a reader, writes one byte, closes.
    for _ in 0..20_000 {
        match nix::unistd::read(fifo.as_raw_fd(), &mut buf) {
            Ok(1) => {
                got = true;
                break;
            }
            Ok(_) | Err(nix::Error::EAGAIN) => {
                if !state.init_alive() {
                    // The init may have written its byte, executed the program and
                    // exited between our read and this check (a short-lived program):
                    // the byte is still in the fifo then.
                    got = matches!(nix::unistd::read(fifo.as_raw_fd(), &mut buf), Ok(1));
                    break;
                }
                let mut pfd = [nix::poll::PollFd::new(
                    fifo.as_fd_borrow(),
                    nix::poll::PollFlags::POLLIN,
                )];
                let _ = nix::poll::poll(&mut pfd, nix::poll::PollTimeout::from(5u8));
            }
            Err(nix::Error::EINTR) => {}
            Err(e) => return Err(e).ctx(|| "read exec fifo"),
        }
    }
    if !got {
        return Err(RuntimeError::other(
            "cannot start an already running container or its init died",
        ));
    }
    // Then read to EOF, as runc does: the init keeps its close-on-exec write end open until it
    // executes the container's program (after the startContainer hooks), so poststart hooks
    // below run, and `start` returns, only once the program runs.
    loop {
        match nix::unistd::read(fifo.as_raw_fd(), &mut buf) {
            Ok(0) => break,
            Ok(_) | Err(nix::Error::EINTR) => {}
            Err(nix::Error::EAGAIN) => {
                if !state.init_alive() {
                    break;
                }
                let mut pfd = [nix::poll::PollFd::new(
                    fifo.as_fd_borrow(),
                    nix::poll::PollFlags::POLLIN,
                )];
                let _ = nix::poll::poll(&mut pfd, nix::poll::PollTimeout::from(50u8));
            }
            Err(e) => return Err(e).ctx(|| "read exec fifo"),
        }
    }
    std::fs::remove_file(&fifo_path).ctx(|| format!("remove {fifo_path:?}"))?;
    if let Some(h) = state
        .spec
        .hooks()
        .as_ref()
        .and_then(|h| h.poststart().as_ref())
    {
        let s = state.hook_state(Status::Running, state.init_pid);
        if let Err(e) = crate::hooks::run_all("poststart", Some(h), &s) {
            // As runc: a failing poststart hook stops the container.
            let _ = kill(Pid::from_raw(state.init_pid), Signal::SIGKILL);
            return Err(e);
        }
    }
    Ok(())
}

trait AsFdBorrow {
    fn as_fd_borrow(&self) -> std::os::fd::BorrowedFd<'_>;
}
impl AsFdBorrow for OwnedFd {
    fn as_fd_borrow(&self) -> std::os::fd::BorrowedFd<'_> {
        std::os::fd::AsFd::as_fd(self)
    }
}

pub fn parse_signal(s: &str) -> Result<Signal> {
    let bad = || RuntimeError::other(format!("unknown signal {s:?}"));
    if let Ok(n) = s.parse::<i32>() {
        return Signal::try_from(n).map_err(|_| bad());
    }
    let up = s.to_ascii_uppercase();
    let name = if up.starts_with("SIG") {
        up
    } else {
        format!("SIG{up}")
    };
    name.parse::<Signal>().map_err(|_| bad())
}

pub fn kill_container(store: &StateStore, id: &str, sig: Signal, all: bool) -> Result<()> {
    let state = store.load(id)?;
    let status = state.status(store);
    if status == Status::Stopped {
        return Err(RuntimeError::NotRunning);
    }
    if all {
        if let Some(paths) = &state.cgroup {
            CgroupManager::from_paths(paths.clone()).kill_all(sig as i32)?;
            return Ok(());
        }
    }
    kill(Pid::from_raw(state.init_pid), sig).ctx(|| format!("kill {} with {sig}", state.init_pid))
}

/// Remove what is left of a stopped container: remaining processes, cgroup, poststop hooks,
/// state directory.
fn destroy(store: &StateStore, state: &ContainerState) -> Result<()> {
    if let Some(paths) = &state.cgroup {
        let cg = CgroupManager::from_paths(paths.clone());
        // Without its own pid namespace a container's other processes outlive the init.
        if let Ok(pids) = cg.pids() {
            if !pids.is_empty() {
                let _ = cg.kill_all(Signal::SIGKILL as i32);
            }
        }
        let mut last = Ok(());
        for _ in 0..100 {
            last = cg.destroy();
            if last.is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        last?;
    }
    let hooks = state.spec.hooks().clone();
    store.remove(&state.id)?;
    if let Some(h) = hooks.as_ref().and_then(|h| h.poststop().as_ref()) {
        let s = state.hook_state(Status::Stopped, 0);
        if let Err(e) = crate::hooks::run_all("poststop", Some(h), &s) {
            tracing::warn!(error = %e, "poststop hook failed");
        }
    }
    Ok(())
}

fn wait_gone(state: &ContainerState, timeout: Duration) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    while state.init_alive() {
        // Reap it if it is our child (run).
        let _ = waitpid(Pid::from_raw(state.init_pid), Some(WaitPidFlag::WNOHANG));
        if std::time::Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    true
}

pub fn delete(store: &StateStore, id: &str, force: bool) -> Result<()> {
    let state = match store.load(id) {
        Ok(s) => s,
        Err(RuntimeError::NotFound) if force => return Ok(()),
        Err(e) => return Err(e),
    };
    match state.status(store) {
        Status::Stopped => {}
        Status::Created => {
            let _ = kill(Pid::from_raw(state.init_pid), Signal::SIGKILL);
            wait_gone(&state, Duration::from_secs(10));
        }
        s if force => {
            if s == Status::Paused {
                if let Some(p) = &state.cgroup {
                    let cg = CgroupManager::from_paths(p.clone());
                    let _ = cg.kill_all(Signal::SIGKILL as i32);
                    let _ = cg.thaw();
                }
            }
            let _ = kill(Pid::from_raw(state.init_pid), Signal::SIGKILL);
            if !wait_gone(&state, Duration::from_secs(10)) {
                return Err(RuntimeError::other(format!(
                    "container init {} did not exit after SIGKILL",
                    state.init_pid
                )));
            }
        }
        s => {
            return Err(RuntimeError::other(format!(
                "cannot delete container {id} that is not stopped: {s}"
            )))
        }
    }
    destroy(store, &state)
}

pub fn pause(store: &StateStore, id: &str) -> Result<()> {
    let state = store.load(id)?;
    match state.status(store) {
        Status::Running | Status::Created => {}
        Status::Paused => return Ok(()),
        _ => return Err(RuntimeError::NotRunning),
    }
    let paths = state
        .cgroup
        .clone()
        .ok_or_else(|| RuntimeError::other("container has no cgroup"))?;
    CgroupManager::from_paths(paths).freeze()?;
    Ok(())
}

pub fn resume(store: &StateStore, id: &str) -> Result<()> {
    let state = store.load(id)?;
    if state.status(store) != Status::Paused {
        return Err(RuntimeError::other("container not paused"));
    }
    let paths = state
        .cgroup
        .clone()
        .ok_or_else(|| RuntimeError::other("container has no cgroup"))?;
    CgroupManager::from_paths(paths).thaw()?;
    Ok(())
}

pub fn pids(store: &StateStore, id: &str) -> Result<Vec<i32>> {
    let state = store.load(id)?;
    let paths = state
        .cgroup
        .clone()
        .ok_or_else(|| RuntimeError::other("container has no cgroup"))?;
    Ok(CgroupManager::from_paths(paths).pids()?)
}

pub fn update(
    store: &StateStore,
    id: &str,
    resources: &oci_spec::runtime::LinuxResources,
) -> Result<()> {
    let mut state = store.load(id)?;
    if state.status(store) == Status::Stopped {
        return Err(RuntimeError::NotRunning);
    }
    let paths = state
        .cgroup
        .clone()
        .ok_or_else(|| RuntimeError::other("container has no cgroup"))?;
    CgroupManager::from_paths(paths).apply(resources)?;
    if let Some(linux) = state.spec.linux_mut() {
        linux.set_resources(Some(resources.clone()));
    }
    store.save(&state)
}

/// `exec`: run a new process in the container's namespaces and cgroup. With `detach` returns
/// the pid at once; otherwise waits and returns the process's exit code.
pub fn exec(store: &StateStore, id: &str, process: &Process, opts: &ExecOptions) -> Result<i32> {
    let state = store.load(id)?;
    match state.status(store) {
        Status::Running | Status::Created => {}
        Status::Paused => return Err(RuntimeError::other("cannot exec in a paused container")),
        _ => return Err(RuntimeError::other("cannot exec in a stopped container")),
    }
    if process.args().as_ref().is_none_or(|a| a.is_empty()) {
        return Err(RuntimeError::Config(
            "field args: exec needs a command".into(),
        ));
    }
    let proxy_tty = process.terminal().unwrap_or(false) && opts.console_socket.is_none();
    if proxy_tty && opts.detach {
        return Err(RuntimeError::other(
            "cannot allocate tty if runtime will detach without setting console socket",
        ));
    }
    let types: Vec<LinuxNamespaceType> = state
        .namespaces
        .iter()
        .filter_map(|n| namespaces::from_proc_name(n))
        .collect();
    let plan = NamespacePlan::join_process(state.init_pid, &types);
    let mut proxy_end = None;
    let console = match &opts.console_socket {
        Some(p) => Some(crate::tty::connect_console_socket(p)?),
        None if proxy_tty => {
            let (ours, theirs) = crate::tty::console_pair()?;
            proxy_end = Some(ours);
            Some(theirs)
        }
        None => None,
    };
    if !opts.detach {
        nix::sys::prctl::set_child_subreaper(true).ctx(|| "prctl(PR_SET_CHILD_SUBREAPER)")?;
    }
    let cgroup = state.cgroup.clone().map(CgroupManager::from_paths);
    let seccomp_bpf = prepare_seccomp(store, &state.spec)?;
    let cfg = InitConfig {
        id,
        spec: &state.spec,
        process,
        rootfs: &state.rootfs,
        bundle: &state.bundle,
        kind: InitKind::Exec,
        namespaces: &plan,
        cgroup: state.cgroup.as_ref(),
        console: console.as_ref().map(|c| c.as_raw_fd()),
        preserve_fds: opts.preserve_fds,
        no_new_keyring: true,
        cloned_with_namespaces: false,
        seccomp_bpf: seccomp_bpf.as_ref(),
        join_cgroup_self: false,
    };
    let mut spawned_pid = None;
    let result = spawn_and_supervise(
        cfg,
        &state.spec,
        &plan,
        cgroup.as_ref(),
        &mut |_| Ok(()),
        &mut |_, _| {
            Err(RuntimeError::other(
                "seccomp notify is not supported for exec",
            ))
        },
        &mut spawned_pid,
    );
    let spawned = match result {
        Ok(s) => s,
        Err(e) => {
            if let Some(p) = spawned_pid {
                let _ = kill(p, Signal::SIGKILL);
                let _ = waitpid(p, None);
            }
            return Err(e);
        }
    };
    drop(console);
    let pid = spawned.init_pid;
    if let Some(p) = &opts.pid_file {
        write_pid_file(p, pid.as_raw())?;
    }
    if opts.detach {
        return Ok(0);
    }
    let proxy = match proxy_end {
        Some(end) => Some(crate::tty::PtyProxy::start(crate::tty::receive_master(
            &end,
        )?)?),
        None => None,
    };
    let code = wait_for_exit(pid);
    drop(proxy);
    Ok(code)
}

static FORWARD_TO: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

extern "C" fn forward_signal(sig: libc::c_int) {
    let pid = FORWARD_TO.load(std::sync::atomic::Ordering::Relaxed);
    if pid > 0 {
        // SAFETY: kill(2) is async-signal-safe.
        unsafe { libc::kill(pid, sig) };
    }
}

/// Forward the usual termination signals to `pid` (runc's signal proxy for `run`/`exec`).
pub fn forward_signals_to(pid: Pid) {
    FORWARD_TO.store(pid.as_raw(), std::sync::atomic::Ordering::Relaxed);
    for sig in [
        Signal::SIGINT,
        Signal::SIGTERM,
        Signal::SIGHUP,
        Signal::SIGQUIT,
        Signal::SIGUSR1,
        Signal::SIGUSR2,
        Signal::SIGWINCH,
    ] {
        let action = nix::sys::signal::SigAction::new(
            nix::sys::signal::SigHandler::Handler(forward_signal),
            nix::sys::signal::SaFlags::SA_RESTART,
            nix::sys::signal::SigSet::empty(),
        );
        // SAFETY: the handler only calls kill(2), which is async-signal-safe.
        let _ = unsafe { nix::sys::signal::sigaction(sig, &action) };
    }
}

/// Wait (as parent or subreaper) until `pid` exits; reap any other orphan meanwhile.
/// Returns the exit code, 128+signal when killed.
pub fn wait_for_exit(pid: Pid) -> i32 {
    forward_signals_to(pid);
    loop {
        match waitpid(None, None) {
            Ok(WaitStatus::Exited(p, code)) if p == pid => return code,
            Ok(WaitStatus::Signaled(p, sig, _)) if p == pid => return 128 + sig as i32,
            Ok(_) => continue,
            Err(nix::Error::EINTR) => continue,
            Err(_) => return 255,
        }
    }
}

/// `run`: create + start, then (unless detached) wait for the init and delete the container.
pub fn run(store: &StateStore, id: &str, opts: &CreateOptions, detach: bool) -> Result<i32> {
    if !detach {
        nix::sys::prctl::set_child_subreaper(true).ctx(|| "prctl(PR_SET_CHILD_SUBREAPER)")?;
    }
    let (pid, proxy_end) = create_inner(store, id, opts, !detach)?;
    let proxy = match proxy_end {
        Some(end) => match crate::tty::receive_master(&end).and_then(crate::tty::PtyProxy::start) {
            Ok(p) => Some(p),
            Err(e) => {
                let _ = delete(store, id, true);
                return Err(e);
            }
        },
        None => None,
    };
    if let Err(e) = start(store, id) {
        let _ = delete(store, id, true);
        return Err(e);
    }
    if detach {
        return Ok(0);
    }
    let code = wait_for_exit(Pid::from_raw(pid));
    drop(proxy);
    let state = store.load(id)?;
    destroy(store, &state)?;
    Ok(code)
}
