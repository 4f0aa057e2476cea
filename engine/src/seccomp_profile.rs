//! Seccomp for containers: Docker's default profile and Docker-format
//! profiles (`--security-opt seccomp=<profile JSON>`) turned into the OCI
//! `linux.seccomp` section for the container's capabilities, architecture
//! and kernel — as dockerd does when it builds a spec.
//!
//! Docker's profile format: `defaultAction`, `defaultErrnoRet`,
//! `architectures` *or* `archMap` (native architecture → its
//! sub-architectures), `flags`, `listenerPath`, `listenerMetadata`,
//! `syscalls[{name | names, action, errnoRet, args[{index, value, valueTwo,
//! op}], includes, excludes}]` where `includes`/`excludes` hold `arches`
//! (Go architecture names), `caps` and (includes only) `minKernel`. A rule
//! is kept when every included cap is held, the native architecture is in
//! `includes.arches` (if given), the kernel is at least `minKernel`, no
//! excluded cap is held and the architecture is not excluded.
//!
//! The default profile below is written from the facts (syscall names,
//! conditions, values) of moby's `profiles/seccomp/default.json`: deny
//! with EPERM by default, an allowlist, and capability-, argument- and
//! architecture-conditional rules.
//!
//! Names are not checked against any syscall table: the runtime (runc or
//! orca-runtime) skips names its libseccomp does not know.

use serde::Deserialize;
use serde_json::{json, Value};

use crate::error::{EngineError, Result};

/// One argument condition (`SCMP_CMP_*`; for `SCMP_CMP_MASKED_EQ`, `value`
/// is the mask and `valueTwo` the expected masked value).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Arg {
    pub index: u32,
    pub value: u64,
    #[serde(default)]
    pub value_two: u64,
    pub op: String,
}

/// `includes` / `excludes` of a rule.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Filter {
    #[serde(default)]
    pub arches: Option<Vec<String>>,
    #[serde(default)]
    pub caps: Option<Vec<String>>,
    #[serde(default)]
    pub min_kernel: Option<String>,
}

/// One syscall rule of a Docker profile.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Rule {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub names: Option<Vec<String>>,
    pub action: String,
    #[serde(default)]
    pub errno_ret: Option<u32>,
    #[serde(default)]
    pub args: Option<Vec<Arg>>,
    #[serde(default)]
    pub comment: Option<String>,
    #[serde(default)]
    pub includes: Option<Filter>,
    #[serde(default)]
    pub excludes: Option<Filter>,
}

/// `archMap` entry.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ArchMap {
    pub architecture: String,
    #[serde(default)]
    pub sub_architectures: Option<Vec<String>>,
}

/// A Docker-format seccomp profile.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Profile {
    pub default_action: String,
    #[serde(default)]
    pub default_errno_ret: Option<u32>,
    #[serde(default)]
    pub architectures: Option<Vec<String>>,
    #[serde(default)]
    pub arch_map: Option<Vec<ArchMap>>,
    #[serde(default)]
    pub flags: Option<Vec<String>>,
    #[serde(default)]
    pub listener_path: Option<String>,
    #[serde(default)]
    pub listener_metadata: Option<String>,
    #[serde(default)]
    pub syscalls: Option<Vec<Rule>>,
}

const ACTIONS: &[&str] = &[
    "SCMP_ACT_KILL",
    "SCMP_ACT_KILL_PROCESS",
    "SCMP_ACT_KILL_THREAD",
    "SCMP_ACT_TRAP",
    "SCMP_ACT_ERRNO",
    "SCMP_ACT_TRACE",
    "SCMP_ACT_ALLOW",
    "SCMP_ACT_LOG",
    "SCMP_ACT_NOTIFY",
];

const OPS: &[&str] = &[
    "SCMP_CMP_NE",
    "SCMP_CMP_LT",
    "SCMP_CMP_LE",
    "SCMP_CMP_EQ",
    "SCMP_CMP_GE",
    "SCMP_CMP_GT",
    "SCMP_CMP_MASKED_EQ",
];

const ARCHES: &[&str] = &[
    "SCMP_ARCH_X86",
    "SCMP_ARCH_X86_64",
    "SCMP_ARCH_X32",
    "SCMP_ARCH_ARM",
    "SCMP_ARCH_AARCH64",
    "SCMP_ARCH_MIPS",
    "SCMP_ARCH_MIPS64",
    "SCMP_ARCH_MIPS64N32",
    "SCMP_ARCH_MIPSEL",
    "SCMP_ARCH_MIPSEL64",
    "SCMP_ARCH_MIPSEL64N32",
    "SCMP_ARCH_PPC",
    "SCMP_ARCH_PPC64",
    "SCMP_ARCH_PPC64LE",
    "SCMP_ARCH_S390",
    "SCMP_ARCH_S390X",
    "SCMP_ARCH_PARISC",
    "SCMP_ARCH_PARISC64",
    "SCMP_ARCH_RISCV64",
    "SCMP_ARCH_LOONGARCH64",
    "SCMP_ARCH_M68K",
    "SCMP_ARCH_SH",
    "SCMP_ARCH_SHEB",
];

const FLAGS: &[&str] = &[
    "SECCOMP_FILTER_FLAG_TSYNC",
    "SECCOMP_FILTER_FLAG_LOG",
    "SECCOMP_FILTER_FLAG_SPEC_ALLOW",
    "SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV",
];

/// The host as the profile sees it: Go architecture name, libseccomp
/// architecture, kernel (major, minor).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    pub goarch: &'static str,
    pub scmp_arch: &'static str,
    pub kernel: (u32, u32),
}

impl Host {
    /// This machine.
    pub fn current() -> Host {
        let (goarch, scmp_arch) = match std::env::consts::ARCH {
            "x86_64" => ("amd64", "SCMP_ARCH_X86_64"),
            "x86" => ("386", "SCMP_ARCH_X86"),
            "aarch64" => ("arm64", "SCMP_ARCH_AARCH64"),
            "arm" => ("arm", "SCMP_ARCH_ARM"),
            "powerpc64" => ("ppc64le", "SCMP_ARCH_PPC64LE"),
            "s390x" => ("s390x", "SCMP_ARCH_S390X"),
            "riscv64" => ("riscv64", "SCMP_ARCH_RISCV64"),
            "loongarch64" => ("loong64", "SCMP_ARCH_LOONGARCH64"),
            "mips64" => ("mips64", "SCMP_ARCH_MIPS64"),
            other => (other, ""),
        };
        let release = nix::sys::utsname::uname()
            .map(|u| u.release().to_string_lossy().into_owned())
            .unwrap_or_default();
        Host {
            goarch,
            scmp_arch,
            kernel: parse_kernel(&release).unwrap_or((0, 0)),
        }
    }
}

/// "6.1.0-18-amd64" → (6, 1).
fn parse_kernel(s: &str) -> Option<(u32, u32)> {
    let mut it = s
        .split(|c: char| !c.is_ascii_digit())
        .filter(|p| !p.is_empty());
    let major = it.next()?.parse().ok()?;
    let minor = it.next().and_then(|m| m.parse().ok()).unwrap_or(0);
    Some((major, minor))
}

fn bad(msg: impl std::fmt::Display) -> EngineError {
    EngineError::BadRequest(format!("invalid seccomp profile: {msg}"))
}

/// Parses a profile sent in `SecurityOpt` (the docker CLI sends the file's
/// content). Syntax and type errors are 400s naming the problem.
pub fn parse(text: &str) -> Result<Profile> {
    let p: Profile = serde_json::from_str(text)
        .map_err(|e| EngineError::BadRequest(format!("Decoding seccomp profile failed: {e}")))?;
    validate(&p)?;
    Ok(p)
}

fn validate(p: &Profile) -> Result<()> {
    let check = |what: &str, v: &str, known: &[&str]| -> Result<()> {
        if known.contains(&v) {
            Ok(())
        } else {
            Err(bad(format!("unknown {what} {v:?}")))
        }
    };
    check("defaultAction", &p.default_action, ACTIONS)?;
    if p.architectures.as_ref().is_some_and(|a| !a.is_empty())
        && p.arch_map.as_ref().is_some_and(|a| !a.is_empty())
    {
        return Err(bad(
            "both 'architectures' and 'archMap' are specified, use either 'architectures' or 'archMap'",
        ));
    }
    for a in p.architectures.iter().flatten() {
        check("architecture", a, ARCHES)?;
    }
    for m in p.arch_map.iter().flatten() {
        check("architecture", &m.architecture, ARCHES)?;
        for a in m.sub_architectures.iter().flatten() {
            check("architecture", a, ARCHES)?;
        }
    }
    for f in p.flags.iter().flatten() {
        check("flag", f, FLAGS)?;
    }
    for (i, r) in p.syscalls.iter().flatten().enumerate() {
        let n = r.names.as_ref().map_or(0, |v| v.len());
        match (&r.name, n) {
            (Some(_), 1..) => {
                return Err(bad(format!(
                    "syscalls[{i}]: 'name' and 'names' were specified, use either 'name' or 'names'"
                )))
            }
            (None, 0) => return Err(bad(format!("syscalls[{i}]: no syscall names"))),
            _ => {}
        }
        if r.names.iter().flatten().any(|s| s.is_empty()) || r.name.as_deref() == Some("") {
            return Err(bad(format!("syscalls[{i}]: empty syscall name")));
        }
        check(&format!("action in syscalls[{i}]"), &r.action, ACTIONS)?;
        for a in r.args.iter().flatten() {
            check(&format!("operator in syscalls[{i}]"), &a.op, OPS)?;
            if a.index > 5 {
                return Err(bad(format!(
                    "syscalls[{i}]: argument index {} is out of range (0-5)",
                    a.index
                )));
            }
        }
        if let Some(k) = r.includes.as_ref().and_then(|f| f.min_kernel.as_deref()) {
            if parse_kernel(k).is_none() || !k.starts_with(|c: char| c.is_ascii_digit()) {
                return Err(bad(format!(
                    "syscalls[{i}]: invalid minKernel {k:?} (expected e.g. \"4.8\")"
                )));
            }
        }
    }
    Ok(())
}

fn rule_applies(r: &Rule, caps: &[String], host: &Host) -> bool {
    let has = |c: &String| caps.iter().any(|x| x == c);
    if let Some(inc) = &r.includes {
        if let Some(a) = &inc.arches {
            if !a.is_empty() && !a.iter().any(|x| x == host.goarch) {
                return false;
            }
        }
        if let Some(c) = &inc.caps {
            if !c.iter().all(has) {
                return false;
            }
        }
        if let Some(k) = inc.min_kernel.as_deref().and_then(parse_kernel) {
            if host.kernel < k {
                return false;
            }
        }
    }
    if let Some(exc) = &r.excludes {
        if exc.arches.iter().flatten().any(|x| x == host.goarch) {
            return false;
        }
        if exc.caps.iter().flatten().any(has) {
            return false;
        }
    }
    true
}

/// The OCI `linux.seccomp` for a (validated) profile, a container holding
/// `caps` (`CAP_*` names, the bounding set) on `host`.
pub fn to_oci(p: &Profile, caps: &[String], host: &Host) -> Value {
    let mut arches: Vec<String> = p.architectures.clone().unwrap_or_default();
    for m in p.arch_map.iter().flatten() {
        if m.architecture == host.scmp_arch {
            arches.push(m.architecture.clone());
            arches.extend(m.sub_architectures.iter().flatten().cloned());
        }
    }
    let mut syscalls = Vec::new();
    for r in p.syscalls.iter().flatten() {
        if !rule_applies(r, caps, host) {
            continue;
        }
        let names: Vec<String> = match &r.name {
            Some(n) => vec![n.clone()],
            None => r.names.clone().unwrap_or_default(),
        };
        let mut s = json!({"names": names, "action": r.action});
        if let Some(e) = r.errno_ret {
            s["errnoRet"] = json!(e);
        }
        if let Some(args) = r.args.as_ref().filter(|a| !a.is_empty()) {
            s["args"] = args
                .iter()
                .map(|a| json!({"index": a.index, "value": a.value, "valueTwo": a.value_two, "op": a.op}))
                .collect();
        }
        syscalls.push(s);
    }
    let mut out = json!({"defaultAction": p.default_action, "syscalls": syscalls});
    if !arches.is_empty() {
        out["architectures"] = json!(arches);
    }
    if let Some(e) = p.default_errno_ret {
        out["defaultErrnoRet"] = json!(e);
    }
    if let Some(f) = p.flags.as_ref().filter(|f| !f.is_empty()) {
        out["flags"] = json!(f);
    }
    if let Some(l) = &p.listener_path {
        out["listenerPath"] = json!(l);
    }
    if let Some(l) = &p.listener_metadata {
        out["listenerMetadata"] = json!(l);
    }
    out
}

/// What `SecurityOpt` asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum Choice {
    /// Docker's default profile (no option, or `seccomp=builtin`).
    Default,
    /// `seccomp=unconfined`.
    Unconfined,
    /// `seccomp=<profile JSON>`.
    Custom(Box<Profile>),
}

/// Reads the `seccomp` entries of `SecurityOpt` (`seccomp=X` or the old
/// `seccomp:X`); the last one wins. A custom profile is parsed and
/// validated here, so a bad one fails the create.
pub fn choice(security_opts: &[String]) -> Result<Choice> {
    let mut c = Choice::Default;
    for o in security_opts {
        let v = match o.strip_prefix("seccomp") {
            Some(rest) if rest.starts_with('=') || rest.starts_with(':') => &rest[1..],
            _ => continue,
        };
        c = match v.trim() {
            "unconfined" => Choice::Unconfined,
            "builtin" | "" => Choice::Default,
            text => Choice::Custom(Box::new(parse(text)?)),
        };
    }
    Ok(c)
}

/// The container's `linux.seccomp` (None: no filter). Privileged
/// containers and `seccomp=unconfined` get none, as with dockerd.
pub fn for_container(
    security_opts: &[String],
    privileged: bool,
    caps: &[String],
) -> Result<Option<Value>> {
    let choice = choice(security_opts)?;
    if privileged {
        return Ok(None);
    }
    let host = Host::current();
    Ok(match choice {
        Choice::Unconfined => None,
        Choice::Default => Some(to_oci(&default_profile(), caps, &host)),
        Choice::Custom(p) => Some(to_oci(&p, caps, &host)),
    })
}

// ---------------------------------------------------------------------
// Docker's default profile.

/// Always allowed.
const ALLOWED: &[&str] = &[
    "accept",
    "accept4",
    "access",
    "adjtimex",
    "alarm",
    "bind",
    "brk",
    "capget",
    "capset",
    "chdir",
    "chmod",
    "chown",
    "chown32",
    "clock_adjtime",
    "clock_adjtime64",
    "clock_getres",
    "clock_getres_time64",
    "clock_gettime",
    "clock_gettime64",
    "clock_nanosleep",
    "clock_nanosleep_time64",
    "close",
    "close_range",
    "connect",
    "copy_file_range",
    "creat",
    "dup",
    "dup2",
    "dup3",
    "epoll_create",
    "epoll_create1",
    "epoll_ctl",
    "epoll_ctl_old",
    "epoll_pwait",
    "epoll_pwait2",
    "epoll_wait",
    "epoll_wait_old",
    "eventfd",
    "eventfd2",
    "execve",
    "execveat",
    "exit",
    "exit_group",
    "faccessat",
    "faccessat2",
    "fadvise64",
    "fadvise64_64",
    "fallocate",
    "fanotify_mark",
    "fchdir",
    "fchmod",
    "fchmodat",
    "fchown",
    "fchown32",
    "fchownat",
    "fcntl",
    "fcntl64",
    "fdatasync",
    "fgetxattr",
    "flistxattr",
    "flock",
    "fork",
    "fremovexattr",
    "fsetxattr",
    "fstat",
    "fstat64",
    "fstatat64",
    "fstatfs",
    "fstatfs64",
    "fsync",
    "ftruncate",
    "ftruncate64",
    "futex",
    "futex_time64",
    "futex_waitv",
    "futimesat",
    "getcpu",
    "getcwd",
    "getdents",
    "getdents64",
    "getegid",
    "getegid32",
    "geteuid",
    "geteuid32",
    "getgid",
    "getgid32",
    "getgroups",
    "getgroups32",
    "getitimer",
    "getpeername",
    "getpgid",
    "getpgrp",
    "getpid",
    "getppid",
    "getpriority",
    "getrandom",
    "getresgid",
    "getresgid32",
    "getresuid",
    "getresuid32",
    "getrlimit",
    "get_robust_list",
    "getrusage",
    "getsid",
    "getsockname",
    "getsockopt",
    "get_thread_area",
    "gettid",
    "gettimeofday",
    "getuid",
    "getuid32",
    "getxattr",
    "inotify_add_watch",
    "inotify_init",
    "inotify_init1",
    "inotify_rm_watch",
    "io_cancel",
    "ioctl",
    "io_destroy",
    "io_getevents",
    "io_pgetevents",
    "io_pgetevents_time64",
    "ioprio_get",
    "ioprio_set",
    "io_setup",
    "io_submit",
    "io_uring_enter",
    "io_uring_register",
    "io_uring_setup",
    "ipc",
    "kill",
    "landlock_add_rule",
    "landlock_create_ruleset",
    "landlock_restrict_self",
    "lchown",
    "lchown32",
    "lgetxattr",
    "link",
    "linkat",
    "listen",
    "listxattr",
    "llistxattr",
    "_llseek",
    "lremovexattr",
    "lseek",
    "lsetxattr",
    "lstat",
    "lstat64",
    "madvise",
    "membarrier",
    "memfd_create",
    "memfd_secret",
    "mincore",
    "mkdir",
    "mkdirat",
    "mknod",
    "mknodat",
    "mlock",
    "mlock2",
    "mlockall",
    "mmap",
    "mmap2",
    "mprotect",
    "mq_getsetattr",
    "mq_notify",
    "mq_open",
    "mq_timedreceive",
    "mq_timedreceive_time64",
    "mq_timedsend",
    "mq_timedsend_time64",
    "mq_unlink",
    "mremap",
    "msgctl",
    "msgget",
    "msgrcv",
    "msgsnd",
    "msync",
    "munlock",
    "munlockall",
    "munmap",
    "name_to_handle_at",
    "nanosleep",
    "newfstatat",
    "_newselect",
    "open",
    "openat",
    "openat2",
    "pause",
    "pidfd_open",
    "pidfd_send_signal",
    "pipe",
    "pipe2",
    "pkey_alloc",
    "pkey_free",
    "pkey_mprotect",
    "poll",
    "ppoll",
    "ppoll_time64",
    "prctl",
    "pread64",
    "preadv",
    "preadv2",
    "prlimit64",
    "process_mrelease",
    "pselect6",
    "pselect6_time64",
    "pwrite64",
    "pwritev",
    "pwritev2",
    "read",
    "readahead",
    "readlink",
    "readlinkat",
    "readv",
    "recv",
    "recvfrom",
    "recvmmsg",
    "recvmmsg_time64",
    "recvmsg",
    "remap_file_pages",
    "removexattr",
    "rename",
    "renameat",
    "renameat2",
    "restart_syscall",
    "rmdir",
    "rseq",
    "rt_sigaction",
    "rt_sigpending",
    "rt_sigprocmask",
    "rt_sigqueueinfo",
    "rt_sigreturn",
    "rt_sigsuspend",
    "rt_sigtimedwait",
    "rt_sigtimedwait_time64",
    "rt_tgsigqueueinfo",
    "sched_getaffinity",
    "sched_getattr",
    "sched_getparam",
    "sched_get_priority_max",
    "sched_get_priority_min",
    "sched_getscheduler",
    "sched_rr_get_interval",
    "sched_rr_get_interval_time64",
    "sched_setaffinity",
    "sched_setattr",
    "sched_setparam",
    "sched_setscheduler",
    "sched_yield",
    "seccomp",
    "select",
    "semctl",
    "semget",
    "semop",
    "semtimedop",
    "semtimedop_time64",
    "send",
    "sendfile",
    "sendfile64",
    "sendmmsg",
    "sendmsg",
    "sendto",
    "setfsgid",
    "setfsgid32",
    "setfsuid",
    "setfsuid32",
    "setgid",
    "setgid32",
    "setgroups",
    "setgroups32",
    "setitimer",
    "setpgid",
    "setpriority",
    "setregid",
    "setregid32",
    "setresgid",
    "setresgid32",
    "setresuid",
    "setresuid32",
    "setreuid",
    "setreuid32",
    "setrlimit",
    "set_robust_list",
    "setsid",
    "setsockopt",
    "set_thread_area",
    "set_tid_address",
    "setuid",
    "setuid32",
    "setxattr",
    "shmat",
    "shmctl",
    "shmdt",
    "shmget",
    "shutdown",
    "sigaltstack",
    "signalfd",
    "signalfd4",
    "sigprocmask",
    "sigreturn",
    "socketcall",
    "socketpair",
    "splice",
    "stat",
    "stat64",
    "statfs",
    "statfs64",
    "statx",
    "symlink",
    "symlinkat",
    "sync",
    "sync_file_range",
    "syncfs",
    "sysinfo",
    "tee",
    "tgkill",
    "time",
    "timer_create",
    "timer_delete",
    "timer_getoverrun",
    "timer_gettime",
    "timer_gettime64",
    "timer_settime",
    "timer_settime64",
    "timerfd_create",
    "timerfd_gettime",
    "timerfd_gettime64",
    "timerfd_settime",
    "timerfd_settime64",
    "times",
    "tkill",
    "truncate",
    "truncate64",
    "ugetrlimit",
    "umask",
    "uname",
    "unlink",
    "unlinkat",
    "utime",
    "utimensat",
    "utimensat_time64",
    "utimes",
    "vfork",
    "vmsplice",
    "wait4",
    "waitid",
    "waitpid",
    "write",
    "writev",
];

/// Allowed only with CAP_SYS_ADMIN.
const SYS_ADMIN: &[&str] = &[
    "bpf",
    "clone",
    "clone3",
    "fanotify_init",
    "fsconfig",
    "fsmount",
    "fsopen",
    "fspick",
    "lookup_dcookie",
    "mount",
    "mount_setattr",
    "move_mount",
    "open_tree",
    "perf_event_open",
    "quotactl",
    "quotactl_fd",
    "setdomainname",
    "sethostname",
    "setns",
    "syslog",
    "umount",
    "umount2",
    "unshare",
];

/// Syscalls allowed for one capability (besides CAP_SYS_ADMIN and
/// CAP_DAC_READ_SEARCH's `open_by_handle_at`).
const BY_CAP: &[(&str, &[&str])] = &[
    ("CAP_SYS_BOOT", &["reboot"]),
    ("CAP_SYS_CHROOT", &["chroot"]),
    (
        "CAP_SYS_MODULE",
        &["delete_module", "init_module", "finit_module"],
    ),
    ("CAP_SYS_PACCT", &["acct"]),
    (
        "CAP_SYS_PTRACE",
        &[
            "kcmp",
            "pidfd_getfd",
            "process_madvise",
            "process_vm_readv",
            "process_vm_writev",
            "ptrace",
        ],
    ),
    ("CAP_SYS_RAWIO", &["iopl", "ioperm"]),
    (
        "CAP_SYS_TIME",
        &["settimeofday", "stime", "clock_settime", "clock_settime64"],
    ),
    ("CAP_SYS_TTY_CONFIG", &["vhangup"]),
    (
        "CAP_SYS_NICE",
        &[
            "get_mempolicy",
            "mbind",
            "set_mempolicy",
            "set_mempolicy_home_node",
        ],
    ),
    ("CAP_SYSLOG", &["syslog"]),
    ("CAP_BPF", &["bpf"]),
    ("CAP_PERFMON", &["perf_event_open"]),
];

/// Architecture-specific syscalls (Go architecture names).
const BY_ARCH: &[(&[&str], &[&str])] = &[
    (&["ppc64le"], &["sync_file_range2", "swapcontext"]),
    (
        &["arm", "arm64"],
        &[
            "arm_fadvise64_64",
            "arm_sync_file_range",
            "sync_file_range2",
            "breakpoint",
            "cacheflush",
            "set_tls",
        ],
    ),
    (&["amd64", "x32"], &["arch_prctl"]),
    (&["amd64", "x32", "x86"], &["modify_ldt"]),
    (
        &["s390", "s390x"],
        &[
            "s390_pci_mmio_read",
            "s390_pci_mmio_write",
            "s390_runtime_instr",
        ],
    ),
    (&["riscv64"], &["riscv_flush_icache"]),
];

/// `personality(2)` values allowed: PER_LINUX, PER_LINUX32, UNAME26,
/// UNAME26|PER_LINUX32, and the 0xffffffff query.
const PERSONALITIES: &[u64] = &[0x0, 0x8, 0x20000, 0x20008, 0xffff_ffff];

/// CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUTS | CLONE_NEWIPC |
/// CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNET: `clone` without any of
/// these is allowed to everyone.
const CLONE_NAMESPACE_FLAGS: u64 = 0x7E02_0000;

/// AF_VSOCK: the one socket family denied.
const AF_VSOCK: u64 = 40;

/// ENOSYS, so that libcs fall back from `clone3` to `clone`.
const ENOSYS: u32 = 38;

fn names(v: &[&str]) -> Option<Vec<String>> {
    Some(v.iter().map(|s| s.to_string()).collect())
}

fn strings(v: &[&str]) -> Option<Vec<String>> {
    names(v)
}

fn allow(v: &[&str]) -> Rule {
    Rule {
        names: names(v),
        action: "SCMP_ACT_ALLOW".into(),
        ..Default::default()
    }
}

fn arg(index: u32, value: u64, op: &str) -> Option<Vec<Arg>> {
    Some(vec![Arg {
        index,
        value,
        value_two: 0,
        op: op.into(),
    }])
}

fn caps_filter(c: &[&str]) -> Option<Filter> {
    Some(Filter {
        caps: strings(c),
        ..Default::default()
    })
}

/// Docker's default profile.
pub fn default_profile() -> Profile {
    let mut rules = vec![allow(ALLOWED)];
    rules.push(Rule {
        includes: Some(Filter {
            min_kernel: Some("4.8".into()),
            ..Default::default()
        }),
        ..allow(&["process_vm_readv", "process_vm_writev", "ptrace"])
    });
    rules.push(Rule {
        args: arg(0, AF_VSOCK, "SCMP_CMP_NE"),
        ..allow(&["socket"])
    });
    for p in PERSONALITIES {
        rules.push(Rule {
            args: arg(0, *p, "SCMP_CMP_EQ"),
            ..allow(&["personality"])
        });
    }
    for (arches, calls) in BY_ARCH {
        rules.push(Rule {
            includes: Some(Filter {
                arches: strings(arches),
                ..Default::default()
            }),
            ..allow(calls)
        });
    }
    rules.push(Rule {
        includes: caps_filter(&["CAP_DAC_READ_SEARCH"]),
        ..allow(&["open_by_handle_at"])
    });
    rules.push(Rule {
        includes: caps_filter(&["CAP_SYS_ADMIN"]),
        ..allow(SYS_ADMIN)
    });
    // clone without namespace flags (flags are argument 0, on s390
    // argument 1), when CAP_SYS_ADMIN does not allow every clone.
    rules.push(Rule {
        args: Some(vec![Arg {
            index: 0,
            value: CLONE_NAMESPACE_FLAGS,
            value_two: 0,
            op: "SCMP_CMP_MASKED_EQ".into(),
        }]),
        excludes: Some(Filter {
            caps: strings(&["CAP_SYS_ADMIN"]),
            arches: strings(&["s390", "s390x"]),
            ..Default::default()
        }),
        ..allow(&["clone"])
    });
    rules.push(Rule {
        args: Some(vec![Arg {
            index: 1,
            value: CLONE_NAMESPACE_FLAGS,
            value_two: 0,
            op: "SCMP_CMP_MASKED_EQ".into(),
        }]),
        comment: Some("s390: clone's flags are its second argument".into()),
        includes: Some(Filter {
            arches: strings(&["s390", "s390x"]),
            ..Default::default()
        }),
        excludes: caps_filter(&["CAP_SYS_ADMIN"]),
        ..allow(&["clone"])
    });
    // clone3's flags sit in a struct seccomp cannot inspect: ENOSYS.
    rules.push(Rule {
        names: names(&["clone3"]),
        action: "SCMP_ACT_ERRNO".into(),
        errno_ret: Some(ENOSYS),
        excludes: caps_filter(&["CAP_SYS_ADMIN"]),
        ..Default::default()
    });
    for (cap, calls) in BY_CAP {
        rules.push(Rule {
            includes: caps_filter(&[cap]),
            ..allow(calls)
        });
    }
    Profile {
        default_action: "SCMP_ACT_ERRNO".into(),
        default_errno_ret: Some(1),
        arch_map: Some(vec![
            arch_map("SCMP_ARCH_X86_64", &["SCMP_ARCH_X86", "SCMP_ARCH_X32"]),
            arch_map("SCMP_ARCH_AARCH64", &["SCMP_ARCH_ARM"]),
            arch_map(
                "SCMP_ARCH_MIPS64",
                &["SCMP_ARCH_MIPS", "SCMP_ARCH_MIPS64N32"],
            ),
            arch_map(
                "SCMP_ARCH_MIPS64N32",
                &["SCMP_ARCH_MIPS", "SCMP_ARCH_MIPS64"],
            ),
            arch_map(
                "SCMP_ARCH_MIPSEL64",
                &["SCMP_ARCH_MIPSEL", "SCMP_ARCH_MIPSEL64N32"],
            ),
            arch_map(
                "SCMP_ARCH_MIPSEL64N32",
                &["SCMP_ARCH_MIPSEL", "SCMP_ARCH_MIPSEL64"],
            ),
            arch_map("SCMP_ARCH_S390X", &["SCMP_ARCH_S390"]),
            arch_map("SCMP_ARCH_RISCV64", &[]),
        ]),
        syscalls: Some(rules),
        ..Default::default()
    }
}

fn arch_map(a: &str, subs: &[&str]) -> ArchMap {
    ArchMap {
        architecture: a.into(),
        sub_architectures: strings(subs),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn amd64() -> Host {
        Host {
            goarch: "amd64",
            scmp_arch: "SCMP_ARCH_X86_64",
            kernel: (6, 1),
        }
    }

    fn caps(c: &[&str]) -> Vec<String> {
        c.iter().map(|s| s.to_string()).collect()
    }

    fn rules_for<'a>(oci: &'a Value, name: &str) -> Vec<&'a Value> {
        oci["syscalls"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["names"].as_array().unwrap().iter().any(|n| n == name))
            .collect()
    }

    #[test]
    fn default_profile_without_sys_admin() {
        let p = default_profile();
        validate(&p).unwrap();
        let oci = to_oci(&p, &caps(&["CAP_CHOWN", "CAP_SYS_CHROOT"]), &amd64());
        assert_eq!(oci["defaultAction"], "SCMP_ACT_ERRNO");
        assert_eq!(oci["defaultErrnoRet"], 1);
        assert_eq!(
            oci["architectures"],
            json!(["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"])
        );
        // clone only without namespace flags; clone3 → ENOSYS.
        let clone = rules_for(&oci, "clone");
        assert_eq!(clone.len(), 1, "{clone:?}");
        assert_eq!(clone[0]["args"][0]["op"], "SCMP_CMP_MASKED_EQ");
        assert_eq!(clone[0]["args"][0]["value"], 2114060288u64);
        assert_eq!(clone[0]["args"][0]["valueTwo"], 0);
        let clone3 = rules_for(&oci, "clone3");
        assert_eq!(clone3.len(), 1);
        assert_eq!(clone3[0]["action"], "SCMP_ACT_ERRNO");
        assert_eq!(clone3[0]["errnoRet"], 38);
        assert!(rules_for(&oci, "mount").is_empty());
        assert!(rules_for(&oci, "unshare").is_empty());
        assert!(rules_for(&oci, "ptrace").len() == 1); // minKernel 4.8 rule
        assert_eq!(rules_for(&oci, "chroot").len(), 1);
        assert!(rules_for(&oci, "reboot").is_empty());
        assert_eq!(rules_for(&oci, "personality").len(), 5);
        assert_eq!(rules_for(&oci, "socket")[0]["args"][0]["value"], 40);
        assert_eq!(rules_for(&oci, "arch_prctl").len(), 1);
        assert!(rules_for(&oci, "set_tls").is_empty());
        assert!(rules_for(&oci, "mkdir").len() == 1);
        // An old kernel loses the 4.8 rule.
        let old = Host {
            kernel: (4, 4),
            ..amd64()
        };
        let oci = to_oci(&p, &[], &old);
        assert!(rules_for(&oci, "ptrace").is_empty());
    }

    #[test]
    fn default_profile_with_sys_admin() {
        let oci = to_oci(&default_profile(), &caps(&["CAP_SYS_ADMIN"]), &amd64());
        let clone = rules_for(&oci, "clone");
        assert_eq!(clone.len(), 1);
        assert!(clone[0].get("args").is_none());
        assert!(rules_for(&oci, "clone3")
            .iter()
            .all(|r| r["action"] == "SCMP_ACT_ALLOW"));
        assert_eq!(rules_for(&oci, "mount").len(), 1);
        let arm = Host {
            goarch: "arm64",
            scmp_arch: "SCMP_ARCH_AARCH64",
            kernel: (6, 1),
        };
        let oci = to_oci(&default_profile(), &[], &arm);
        assert_eq!(
            oci["architectures"],
            json!(["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"])
        );
        assert_eq!(rules_for(&oci, "set_tls").len(), 1);
        assert!(rules_for(&oci, "arch_prctl").is_empty());
    }

    #[test]
    fn custom_profiles_and_errors() {
        let p = parse(
            r#"{"defaultAction":"SCMP_ACT_ALLOW","architectures":["SCMP_ARCH_X86_64"],
                "syscalls":[{"name":"mkdir","action":"SCMP_ACT_ERRNO","errnoRet":13},
                            {"names":["reboot"],"action":"SCMP_ACT_ERRNO","includes":{"caps":["CAP_SYS_BOOT"]}},
                            {"names":["mkdirat"],"action":"SCMP_ACT_ERRNO","args":[{"index":1,"value":7,"op":"SCMP_CMP_MASKED_EQ","valueTwo":2}]}],
                "unknownKey": 1}"#,
        )
        .unwrap();
        let oci = to_oci(&p, &[], &amd64());
        assert_eq!(oci["architectures"], json!(["SCMP_ARCH_X86_64"]));
        assert_eq!(oci["syscalls"].as_array().unwrap().len(), 2);
        assert_eq!(
            oci["syscalls"][0],
            json!({"names":["mkdir"],"action":"SCMP_ACT_ERRNO","errnoRet":13})
        );
        assert_eq!(oci["syscalls"][1]["args"][0]["valueTwo"], 2);
        assert!(oci.get("defaultErrnoRet").is_none());

        let err = |t: &str| parse(t).unwrap_err().to_string();
        assert!(err("{").contains("Decoding seccomp profile failed"));
        assert!(err(r#"{"syscalls":[]}"#).contains("defaultAction"));
        assert!(err(r#"{"defaultAction":"SCMP_ACT_NOPE"}"#).contains("SCMP_ACT_NOPE"));
        assert!(err(r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":"mkdir","action":"SCMP_ACT_ERRNO"}]}"#)
            .contains("Decoding"));
        assert!(err(r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"name":"a","names":["b"],"action":"SCMP_ACT_ERRNO"}]}"#)
            .contains("either 'name' or 'names'"));
        assert!(err(r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["a"],"action":"SCMP_ACT_ERRNO","args":[{"index":9,"value":1,"op":"SCMP_CMP_EQ"}]}]}"#)
            .contains("index 9"));
        assert!(err(r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["a"],"action":"SCMP_ACT_ERRNO","args":[{"index":0,"value":1,"op":"EQ"}]}]}"#)
            .contains("operator"));
        assert!(err(r#"{"defaultAction":"SCMP_ACT_ALLOW","architectures":["SCMP_ARCH_X86_64"],"archMap":[{"architecture":"SCMP_ARCH_X86_64"}]}"#)
            .contains("archMap"));
        assert!(err(r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["a"],"action":"SCMP_ACT_ERRNO","includes":{"minKernel":"x"}}]}"#)
            .contains("minKernel"));
    }

    #[test]
    fn security_opt_choice() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(choice(&[]).unwrap(), Choice::Default);
        assert_eq!(
            choice(&s(&["seccomp=unconfined"])).unwrap(),
            Choice::Unconfined
        );
        assert_eq!(
            choice(&s(&["seccomp:unconfined"])).unwrap(),
            Choice::Unconfined
        );
        assert_eq!(choice(&s(&["no-new-privileges"])).unwrap(), Choice::Default);
        assert!(matches!(
            choice(&s(&[r#"seccomp={"defaultAction":"SCMP_ACT_LOG"}"#])).unwrap(),
            Choice::Custom(_)
        ));
        assert!(choice(&s(&["seccomp=/not/json"])).is_err());
        assert_eq!(
            for_container(&s(&["seccomp=unconfined"]), false, &[]).unwrap(),
            None
        );
        assert_eq!(for_container(&[], true, &[]).unwrap(), None);
        assert!(for_container(&[], false, &[]).unwrap().is_some());
        assert_eq!(parse_kernel("6.1.0-18-amd64"), Some((6, 1)));
        assert_eq!(parse_kernel("4.19"), Some((4, 19)));
    }
}
