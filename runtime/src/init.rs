//! The container side of `create` and `exec`: code that runs in the forked child, inside the
//! container's namespaces, up to execve of the user's process. Nothing here returns to the
//! caller: the child either execs or reports an error over the sync channel and exits.
//!
//! Order (as runc): namespaces → mounts → createRuntime hooks (by the runtime) →
//! createContainer hooks → pivot_root → console → sysctl → read-only/masked paths → hostname →
//! rlimits, oom score, keyring → [seccomp without NNP] → fds, capabilities, user, cwd →
//! Ready → wait for `start` on the exec fifo → startContainer hooks → [seccomp with NNP] →
//! execve.

use crate::cgroups::CgroupPaths;
use crate::error::{Context, Result, RuntimeError};
use crate::namespaces::NamespacePlan;
use crate::rootfs::{self, RootfsContext};
use crate::seccomp::SeccompProgram;
use crate::sync::{Channel, Msg};
use nix::sched::unshare;
use nix::unistd::{Gid, Pid, Uid};
use oci_spec::runtime::{LinuxNamespaceType, PosixRlimitType, Process, Spec};
use std::ffi::CString;
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};

pub enum InitKind {
    /// A new container: set up the rootfs and wait on the exec fifo (an O_PATH fd) for `start`.
    Container { no_pivot: bool, fifo: RawFd },
    /// A process joining a running container.
    Exec,
}

pub struct InitConfig<'a> {
    pub id: &'a str,
    pub spec: &'a Spec,
    pub process: &'a Process,
    pub rootfs: &'a Path,
    pub bundle: &'a Path,
    pub kind: InitKind,
    pub namespaces: &'a NamespacePlan,
    pub cgroup: Option<&'a CgroupPaths>,
    pub console: Option<RawFd>,
    pub preserve_fds: i32,
    pub no_new_keyring: bool,
    /// True when the namespaces were created by the clone itself (single-clone fast path).
    pub cloned_with_namespaces: bool,
    /// The container's seccomp filter, compiled (or taken from the cache) by the runtime before
    /// the clone. `None` with a seccomp profile in the spec: a notify profile, compiled here.
    pub seccomp_bpf: Option<&'a crate::seccomp_cache::BpfFilter>,
    /// Set by the runtime when the clone already put the child into the cgroup2 directory
    /// (`CLONE_INTO_CGROUP`) and the child joins the v1 directories itself, first thing.
    pub join_cgroup_self: bool,
}

/// Entry point of the forked child. Never returns.
pub fn child_main(cfg: InitConfig, sync: Channel) -> ! {
    let err = match run(&cfg, &sync) {
        Ok(never) => match never {},
        Err(e) => e,
    };
    if sync
        .send(&Msg::Error {
            msg: err.to_string(),
        })
        .is_err()
    {
        // After `Ready` the runtime may be gone (create returned): the log is then the only
        // place the error can go.
        tracing::error!("container init: {err}");
    }
    // SAFETY: _exit is always safe; it skips destructors of a process that must just end.
    unsafe { libc::_exit(1) }
}

enum Never {}

fn run(cfg: &InitConfig, sync: &Channel) -> Result<Never> {
    if cfg.join_cgroup_self {
        if let Some(paths) = cfg.cgroup {
            paths
                .join_v1_self()
                .map_err(|e| RuntimeError::other(format!("joining the container's cgroup: {e}")))?;
        }
    }
    // Keep other processes in the container away from this one (and its /proc/<pid>/exe)
    // until it has executed the container's program.
    nix::sys::prctl::set_dumpable(false).ctx(|| "prctl(PR_SET_DUMPABLE)")?;
    sync.expect(&Msg::Go)?;

    if cfg.cloned_with_namespaces
        && cfg
            .namespaces
            .new
            .contains(nix::sched::CloneFlags::CLONE_NEWCGROUP)
    {
        // Only now that the runtime moved us into the container's cgroup (before Go), so that
        // cgroup is the root of the new cgroup namespace (the clone left this one out).
        unshare(nix::sched::CloneFlags::CLONE_NEWCGROUP).ctx(|| "unshare(CLONE_NEWCGROUP)")?;
    }
    if !cfg.cloned_with_namespaces {
        let fds = cfg.namespaces.open_joins()?;
        crate::namespaces::join_all(fds)?;
        let new = cfg.namespaces.new;
        if !new.is_empty() {
            unshare(new).ctx(|| format!("unshare({new:?})"))?;
        }
        if cfg.namespaces.creates(LinuxNamespaceType::User) {
            sync.send(&Msg::MapIds {
                pid: std::process::id() as i32,
            })?;
            sync.expect(&Msg::Mapped)?;
        }
        if cfg.namespaces.has(LinuxNamespaceType::Pid) {
            // A pid namespace applies to children only: the container's init is our child.
            // SAFETY: the runtime is single-threaded, so the child may run arbitrary code.
            match unsafe { nix::unistd::fork() }.ctx(|| "fork into the pid namespace")? {
                nix::unistd::ForkResult::Parent { child } => {
                    sync.send(&Msg::InitPid {
                        pid: child.as_raw(),
                    })?;
                    // SAFETY: see child_main.
                    unsafe { libc::_exit(0) }
                }
                nix::unistd::ForkResult::Child => {}
            }
        } else {
            sync.send(&Msg::InitPid {
                pid: std::process::id() as i32,
            })?;
        }
    }
    let in_user_ns = cfg.namespaces.has(LinuxNamespaceType::User);
    if in_user_ns {
        // Become root of the user namespace so setup runs with its capabilities.
        nix::unistd::setresgid(Gid::from_raw(0), Gid::from_raw(0), Gid::from_raw(0))
            .ctx(|| "setresgid(0) in user namespace")?;
        nix::unistd::setresuid(Uid::from_raw(0), Uid::from_raw(0), Uid::from_raw(0))
            .ctx(|| "setresuid(0) in user namespace")?;
    }
    let host_pid = match sync.recv()? {
        Some((Msg::HostPid { pid }, _)) => pid,
        Some((Msg::Error { msg }, _)) => return Err(RuntimeError::Init(msg)),
        other => {
            return Err(RuntimeError::other(format!(
                "init sync: expected HostPid, got {other:?}"
            )))
        }
    };

    let spec = cfg.spec;
    let process = cfg.process;
    let mut seccomp = match (
        cfg.seccomp_bpf,
        spec.linux().as_ref().and_then(|l| l.seccomp().as_ref()),
    ) {
        (Some(bpf), _) => Some(Filter::Bpf(bpf)),
        (None, Some(s)) => Some(Filter::Libseccomp(SeccompProgram::from_oci(s)?)),
        (None, None) => None,
    };

    match cfg.kind {
        InitKind::Container { no_pivot, fifo } => {
            let mount_ns = cfg.namespaces.has(LinuxNamespaceType::Mount);
            if !mount_ns {
                return Err(RuntimeError::Config(
                    "field linux.namespaces: a mount namespace is required".into(),
                ));
            }
            rootfs::prepare(
                spec,
                &RootfsContext {
                    rootfs: cfg.rootfs,
                    cgroup: cfg.cgroup,
                    in_user_ns,
                    cgroup_ns: cfg.namespaces.has(LinuxNamespaceType::Cgroup),
                },
            )?;
            let hooks = spec.hooks().as_ref();
            if hooks.is_some_and(|h| h.prestart().is_some() || h.create_runtime().is_some()) {
                sync.send(&Msg::RunCreateHooks)?;
                sync.expect(&Msg::HooksDone)?;
            }
            if let Some(h) = hooks.and_then(|h| h.create_container().as_ref()) {
                let state = hook_state(cfg, "created", host_pid);
                crate::hooks::run_all("createContainer", Some(h), &state)?;
            }
            rootfs::enter(cfg.rootfs, no_pivot)?;
            // As runc: a missing cwd is created (0755, before the root may become read-only),
            // which `ctr run --cwd`, docker's WORKDIR and images rely on. We are inside the
            // new root here, so the path cannot escape it.
            let cwd = process.cwd();
            if !cwd.as_os_str().is_empty() {
                use std::os::unix::fs::DirBuilderExt as _;
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o755)
                    .create(cwd)
                    .ctx(|| format!("create cwd {cwd:?}"))?;
            }
            if process.terminal().unwrap_or(false) {
                let sock = cfg.console.ok_or_else(|| {
                    RuntimeError::other("a terminal was requested but no --console-socket given")
                })?;
                crate::tty::setup_console(sock, true)?;
            }
            apply_sysctl(spec)?;
            rootfs::finalize(spec, in_user_ns)?;
            if cfg.namespaces.has(LinuxNamespaceType::Uts) {
                if let Some(h) = spec.hostname().as_deref().filter(|h| !h.is_empty()) {
                    nix::unistd::sethostname(h).ctx(|| format!("sethostname {h:?}"))?;
                }
                if let Some(d) = spec.domainname().as_deref().filter(|d| !d.is_empty()) {
                    set_domainname(d)?;
                }
            }
            if let Some(adj) = process.oom_score_adj() {
                std::fs::write("/proc/self/oom_score_adj", adj.to_string())
                    .ctx(|| format!("set oom_score_adj {adj}"))?;
            }
            let _ = fifo;
        }
        InitKind::Exec => {
            if process.terminal().unwrap_or(false) {
                let sock = cfg.console.ok_or_else(|| {
                    RuntimeError::other("a terminal was requested but no --console-socket given")
                })?;
                crate::tty::setup_console(sock, false)?;
            }
        }
    }

    apply_rlimits(process)?;
    if !cfg.no_new_keyring {
        join_session_keyring(cfg.id);
    }
    let nnp = process.no_new_privileges().unwrap_or(false);
    if nnp {
        nix::sys::prctl::set_no_new_privs().ctx(|| "prctl(PR_SET_NO_NEW_PRIVS)")?;
    }
    let notify = seccomp.as_ref().is_some_and(|s| s.uses_notify());
    if !nnp || notify {
        if let Some(filter) = seccomp.take() {
            if let Some(fd) = filter.load()? {
                sync.send_with_fd(&Msg::SeccompFd, Some(fd.as_raw_fd()))?;
            }
        }
    }

    finalize_process(cfg, process, in_user_ns)?;
    let env = process_env(process);
    let args = process.args().clone().unwrap_or_default();
    let exe = lookup_executable(&args[0], &env)?;
    let c_exe = cstring(exe.as_os_str().as_encoded_bytes())?;
    let c_args = args
        .iter()
        .map(|a| cstring(a.as_bytes()))
        .collect::<Result<Vec<_>>>()?;
    let c_env = env
        .iter()
        .map(|a| cstring(a.as_bytes()))
        .collect::<Result<Vec<_>>>()?;

    sync.send(&Msg::Ready)?;
    // The exec fifo stays open (close-on-exec) until execve, so `start`, which reads it to
    // EOF, returns only once startContainer hooks ran and the program is executed (as runc).
    let mut _exec_fifo = None;
    if let InitKind::Container { fifo, .. } = cfg.kind {
        _exec_fifo = Some(wait_for_start(fifo)?);
        if let Some(h) = spec
            .hooks()
            .as_ref()
            .and_then(|h| h.start_container().as_ref())
        {
            let state = hook_state(cfg, "created", host_pid);
            crate::hooks::run_all("startContainer", Some(h), &state)?;
        }
    }
    if let Some(filter) = seccomp.take() {
        filter.load()?;
    }
    let e = nix::unistd::execve(&c_exe, &c_args, &c_env).unwrap_err();
    Err(RuntimeError::Sys {
        context: format!("exec {:?}", args[0]),
        source: e,
    })
}

/// The filter the init loads: a prepared BPF program, or libseccomp for notify profiles.
enum Filter<'a> {
    Bpf(&'a crate::seccomp_cache::BpfFilter),
    Libseccomp(SeccompProgram),
}

impl Filter<'_> {
    fn uses_notify(&self) -> bool {
        matches!(self, Filter::Libseccomp(p) if p.uses_notify())
    }

    /// Loads the filter; the listener fd of a notify profile.
    fn load(self) -> Result<Option<std::os::fd::OwnedFd>> {
        match self {
            Filter::Bpf(b) => b.load().map(|()| None).map_err(Into::into),
            Filter::Libseccomp(p) => p.load().map_err(Into::into),
        }
    }
}

fn hook_state(cfg: &InitConfig, status: &str, pid: i32) -> Vec<u8> {
    serde_json::json!({
        "ociVersion": crate::spec::OCI_VERSION,
        "id": cfg.id,
        "status": status,
        "pid": pid,
        "bundle": cfg.bundle,
        "annotations": cfg.spec.annotations().clone().unwrap_or_default(),
    })
    .to_string()
    .into_bytes()
}

fn cstring(b: &[u8]) -> Result<CString> {
    CString::new(b)
        .map_err(|_| RuntimeError::Config("an argument or env var contains a NUL byte".into()))
}

/// Block until `start` opens the exec fifo for reading, then tell it we proceed. Returns the
/// (close-on-exec) write end: `start` sees EOF when it is closed by execve.
fn wait_for_start(fifo: RawFd) -> Result<std::fs::File> {
    let path = format!("/proc/self/fd/{fifo}");
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .ctx(|| "open exec fifo (is /proc mounted in the container?)")?;
    use std::io::Write;
    (&f).write_all(b"0").ctx(|| "write exec fifo")?;
    let _ = nix::unistd::close(fifo);
    Ok(f)
}

fn apply_sysctl(spec: &Spec) -> Result<()> {
    for (k, v) in spec
        .linux()
        .as_ref()
        .and_then(|l| l.sysctl().as_ref())
        .into_iter()
        .flatten()
    {
        if k.contains("..") || k.contains('/') && k.contains('.') && k.starts_with('/') {
            return Err(RuntimeError::Config(format!(
                "field linux.sysctl: invalid key {k:?}"
            )));
        }
        let p = PathBuf::from("/proc/sys").join(k.replace('.', "/"));
        std::fs::write(&p, v).ctx(|| format!("set sysctl {k}={v}"))?;
    }
    Ok(())
}

fn set_domainname(d: &str) -> Result<()> {
    // SAFETY: pointer and length describe a live &str.
    let r = unsafe { libc::setdomainname(d.as_ptr().cast(), d.len()) };
    if r < 0 {
        return Err(RuntimeError::Sys {
            context: format!("setdomainname {d:?}"),
            source: nix::Error::last(),
        });
    }
    Ok(())
}

fn join_session_keyring(id: &str) {
    const KEYCTL_JOIN_SESSION_KEYRING: libc::c_long = 1;
    let Ok(name) = CString::new(format!("_ses.{id}")) else {
        return;
    };
    // SAFETY: keyctl with a valid NUL-terminated name; failures (no keyring support) are fine.
    let r = unsafe { libc::syscall(libc::SYS_keyctl, KEYCTL_JOIN_SESSION_KEYRING, name.as_ptr()) };
    if r < 0 {
        tracing::debug!(error = %nix::Error::last(), "cannot join a new session keyring");
    }
}

fn rlimit_resource(t: PosixRlimitType) -> Option<libc::__rlimit_resource_t> {
    use PosixRlimitType::*;
    Some(match t {
        RlimitCpu => libc::RLIMIT_CPU,
        RlimitFsize => libc::RLIMIT_FSIZE,
        RlimitData => libc::RLIMIT_DATA,
        RlimitStack => libc::RLIMIT_STACK,
        RlimitCore => libc::RLIMIT_CORE,
        RlimitRss => libc::RLIMIT_RSS,
        RlimitNproc => libc::RLIMIT_NPROC,
        RlimitNofile => libc::RLIMIT_NOFILE,
        RlimitMemlock => libc::RLIMIT_MEMLOCK,
        RlimitAs => libc::RLIMIT_AS,
        RlimitLocks => libc::RLIMIT_LOCKS,
        RlimitSigpending => libc::RLIMIT_SIGPENDING,
        RlimitMsgqueue => libc::RLIMIT_MSGQUEUE,
        RlimitNice => libc::RLIMIT_NICE,
        RlimitRtprio => libc::RLIMIT_RTPRIO,
        RlimitRttime => libc::RLIMIT_RTTIME,
        #[allow(unreachable_patterns)]
        _ => return None,
    })
}

fn apply_rlimits(process: &Process) -> Result<()> {
    for r in process.rlimits().iter().flatten() {
        let res = rlimit_resource(r.typ()).ok_or_else(|| {
            RuntimeError::Config(format!(
                "field process.rlimits: unsupported type {}",
                r.typ()
            ))
        })?;
        let lim = libc::rlimit {
            rlim_cur: r.soft(),
            rlim_max: r.hard(),
        };
        // SAFETY: setrlimit reads a valid rlimit struct.
        if unsafe { libc::setrlimit(res, &lim) } < 0 {
            return Err(RuntimeError::Sys {
                context: format!("setrlimit {} soft={} hard={}", r.typ(), r.soft(), r.hard()),
                source: nix::Error::last(),
            });
        }
    }
    Ok(())
}

/// Close inherited descriptors, drop capabilities, switch user, set umask and cwd.
fn finalize_process(cfg: &InitConfig, process: &Process, in_user_ns: bool) -> Result<()> {
    // Every descriptor past stdio and the preserved ones is closed at exec.
    let first = 3 + cfg.preserve_fds.max(0) as u32;
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only sets flags on our own descriptors.
    let r = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    if r < 0 {
        for entry in std::fs::read_dir("/proc/self/fd")
            .ctx(|| "list /proc/self/fd")?
            .flatten()
        {
            if let Some(fd) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<i32>().ok())
            {
                if fd >= first as i32 {
                    let _ = nix::fcntl::fcntl(
                        fd,
                        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
                    );
                }
            }
        }
    }
    if let Some(caps) = process.capabilities() {
        crate::capabilities::drop_bounding(caps)?;
    }
    let user = process.user();
    nix::sys::prctl::set_keepcaps(true).ctx(|| "prctl(PR_SET_KEEPCAPS)")?;
    let setgroups_allowed = !in_user_ns
        || std::fs::read_to_string("/proc/self/setgroups").map_or(true, |s| s.trim() == "allow");
    if setgroups_allowed {
        let gids: Vec<Gid> = user
            .additional_gids()
            .iter()
            .flatten()
            .map(|g| Gid::from_raw(*g))
            .collect();
        nix::unistd::setgroups(&gids).ctx(|| format!("setgroups {gids:?}"))?;
    }
    let gid = Gid::from_raw(user.gid());
    let uid = Uid::from_raw(user.uid());
    nix::unistd::setresgid(gid, gid, gid).ctx(|| format!("setresgid {gid}"))?;
    nix::unistd::setresuid(uid, uid, uid).ctx(|| format!("setresuid {uid}"))?;
    nix::sys::prctl::set_keepcaps(false).ctx(|| "prctl(PR_SET_KEEPCAPS, 0)")?;
    match process.capabilities() {
        Some(caps) => crate::capabilities::apply(caps)?,
        None => crate::capabilities::apply(&empty_caps())?,
    }
    let umask = user.umask().unwrap_or(0o022);
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(umask));
    let cwd = process.cwd();
    nix::unistd::chdir(cwd).ctx(|| format!("chdir to cwd ({cwd:?}) set in config.json"))?;
    // CVE-2024-21626: the working directory must be inside the container's root.
    match nix::unistd::getcwd() {
        Ok(_) => {}
        Err(e) => {
            return Err(RuntimeError::Sys {
                context: format!(
                    "current working directory {cwd:?} is outside of the container root"
                ),
                source: e,
            })
        }
    }
    Ok(())
}

fn empty_caps() -> oci_spec::runtime::LinuxCapabilities {
    oci_spec::runtime::LinuxCapabilitiesBuilder::default()
        .bounding(oci_spec::runtime::Capabilities::new())
        .effective(oci_spec::runtime::Capabilities::new())
        .inheritable(oci_spec::runtime::Capabilities::new())
        .permitted(oci_spec::runtime::Capabilities::new())
        .ambient(oci_spec::runtime::Capabilities::new())
        .build()
        .unwrap_or_default()
}

/// The process environment, with HOME from the container's /etc/passwd when not given.
fn process_env(process: &Process) -> Vec<String> {
    let mut env = process.env().clone().unwrap_or_default();
    if !env.iter().any(|e| e.starts_with("HOME=")) {
        let uid = process.user().uid();
        let home = std::fs::read_to_string("/etc/passwd")
            .ok()
            .and_then(|p| {
                p.lines().find_map(|l| {
                    let f: Vec<&str> = l.split(':').collect();
                    (f.len() >= 6 && f[2].parse::<u32>().ok() == Some(uid))
                        .then(|| f[5].to_string())
                })
            })
            .unwrap_or_else(|| "/".into());
        env.push(format!("HOME={home}"));
    }
    env
}

fn is_executable(p: &Path) -> std::result::Result<(), std::io::Error> {
    use std::os::unix::fs::PermissionsExt;
    let md = std::fs::metadata(p)?;
    if md.is_dir() {
        return Err(std::io::Error::from_raw_os_error(libc::EISDIR));
    }
    if md.permissions().mode() & 0o111 == 0 {
        return Err(std::io::Error::from_raw_os_error(libc::EACCES));
    }
    Ok(())
}

/// Find the program as Go's exec.LookPath does, with runc's error wording.
pub fn lookup_executable(name: &str, env: &[String]) -> Result<PathBuf> {
    if name.contains('/') {
        return match is_executable(Path::new(name)) {
            Ok(()) => Ok(PathBuf::from(name)),
            Err(e) => Err(RuntimeError::Other(format!(
                "exec: {name:?}: stat {name}: {}",
                io_msg(&e)
            ))),
        };
    }
    let path = env
        .iter()
        .rev()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or("");
    for dir in path.split(':') {
        let dir = if dir.is_empty() { "." } else { dir };
        let p = Path::new(dir).join(name);
        if is_executable(&p).is_ok() {
            return Ok(p);
        }
    }
    Err(RuntimeError::Other(format!(
        "exec: {name:?}: executable file not found in $PATH"
    )))
}

fn io_msg(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::ENOENT) => "no such file or directory".into(),
        Some(libc::EACCES) => "permission denied".into(),
        Some(libc::EISDIR) => "is a directory".into(),
        _ => e.to_string(),
    }
}

/// Write uid_map/gid_map of a process that unshared (or was cloned into) a user namespace.
pub fn write_id_maps(pid: Pid, spec: &Spec) -> Result<()> {
    let linux = spec.linux().as_ref();
    let fmt = |m: &Option<Vec<oci_spec::runtime::LinuxIdMapping>>| {
        m.iter()
            .flatten()
            .map(|m| format!("{} {} {}\n", m.container_id(), m.host_id(), m.size()))
            .collect::<String>()
    };
    let uid = fmt(linux.map(|l| l.uid_mappings()).unwrap_or(&None));
    let gid = fmt(linux.map(|l| l.gid_mappings()).unwrap_or(&None));
    if !nix::unistd::geteuid().is_root() {
        std::fs::write(format!("/proc/{pid}/setgroups"), "deny").ctx(|| "write setgroups deny")?;
    }
    if !uid.is_empty() {
        std::fs::write(format!("/proc/{pid}/uid_map"), &uid)
            .ctx(|| format!("write uid_map {uid:?}"))?;
    }
    if !gid.is_empty() {
        std::fs::write(format!("/proc/{pid}/gid_map"), &gid)
            .ctx(|| format!("write gid_map {gid:?}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_follows_path_and_reports_like_runc() {
        let env = vec!["PATH=/nonexistent:/bin".to_string()];
        assert_eq!(
            lookup_executable("sh", &env).unwrap(),
            PathBuf::from("/bin/sh")
        );
        let e = lookup_executable("no-such-cmd-xyz", &env)
            .unwrap_err()
            .to_string();
        assert!(e.contains("executable file not found in $PATH"), "{e}");
        let e = lookup_executable("/no/such", &env).unwrap_err().to_string();
        assert!(e.contains("no such file or directory"), "{e}");
    }
}
