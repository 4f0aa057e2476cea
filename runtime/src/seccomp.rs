//! Seccomp: an OCI `linux.seccomp` profile compiled to a BPF filter with libseccomp.
//!
//! The translation follows runc (`libcontainer/seccomp/seccomp_linux.go`):
//!
//! * the default action (with `defaultErrnoRet`, EPERM when unset) creates the context;
//! * every listed architecture is added (the native one is always present);
//! * `flags` map to libseccomp filter attributes (TSYNC, LOG, SPEC_ALLOW);
//! * each syscall name is resolved on the native architecture; names libseccomp does not know
//!   are skipped with a debug log (the kernel may simply be older than the profile);
//! * a rule whose action equals the default action is skipped (libseccomp rejects it);
//! * `SCMP_ACT_ERRNO` / `SCMP_ACT_TRACE` without `errnoRet` use EPERM;
//! * when a rule has several conditions on the same argument index, every condition becomes its
//!   own rule (libseccomp ANDs the conditions of one rule and refuses two on the same index; runc
//!   "reverts to the old behaviour" of one rule per condition, which ORs them);
//! * libseccomp's NO_NEW_PRIVS attribute is off: the runtime sets no_new_privs itself when the
//!   configuration asks for it.
//!
//! Like runc, `SCMP_ACT_NOTIFY` is refused as the default action and for `write` (the runtime
//! still needs to write after the filter is loaded, which would deadlock).
//!
//! Not implemented: runc's BPF patching that makes syscalls newer than the profile return
//! ENOSYS instead of the default action.

use std::io::IoSlice;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;

use libseccomp::{
    ScmpAction, ScmpArch, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext, ScmpSyscall,
};
use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags, UnixAddr};
use oci_spec::runtime::{
    Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg, LinuxSeccompFilterFlag,
    LinuxSeccompOperator, LinuxSyscall,
};

type LibError = libseccomp::error::SeccompError;

/// Maximum number of syscall arguments (seccomp_data.args has 6 entries).
const SYSCALL_MAX_ARGUMENTS: usize = 6;

/// Errors from compiling, loading or handing over a seccomp filter. Every variant says which
/// syscall, architecture, action or flag was involved.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("seccomp: {0}")]
    Other(String),

    #[error("seccomp: invalid action {0:?}")]
    InvalidAction(String),

    #[error("seccomp: invalid operator {0:?}")]
    InvalidOperator(String),

    #[error("seccomp: invalid architecture {0:?}")]
    InvalidArch(String),

    #[error("seccomp: invalid flag {0:?}")]
    InvalidFlag(String),

    #[error("seccomp: creating filter context with default action {action}: {source}")]
    NewContext {
        action: &'static str,
        #[source]
        source: LibError,
    },

    #[error("seccomp: architecture {arch} is not supported by libseccomp: {source}")]
    AddArch {
        arch: &'static str,
        #[source]
        source: LibError,
    },

    #[error("seccomp: flag {flag} is not supported here: {reason}")]
    UnsupportedFlag { flag: &'static str, reason: String },

    #[error("seccomp: setting {what}: {source}")]
    Attribute {
        what: String,
        #[source]
        source: LibError,
    },

    #[error("seccomp: {action}: return value {value} out of range (0..=65535){context}")]
    InvalidReturnValue {
        action: &'static str,
        value: u32,
        context: String,
    },

    #[error("seccomp: {action} requires libseccomp API level >= 6 (kernel >= 5.0), have {api}")]
    NotifyUnsupported { action: &'static str, api: u32 },

    #[error("seccomp: SCMP_ACT_NOTIFY cannot be used as the default action")]
    NotifyAsDefault,

    #[error("seccomp: SCMP_ACT_NOTIFY cannot be used for the {0} syscall")]
    NotifyForbidden(String),

    #[error("seccomp: syscall {syscall}: argument index {index} out of range (max {max})")]
    InvalidArgIndex {
        syscall: String,
        index: usize,
        max: usize,
    },

    #[error("seccomp: adding rule {action} for syscall {syscall}{conditions}: {source}")]
    AddRule {
        syscall: String,
        action: &'static str,
        conditions: String,
        #[source]
        source: LibError,
    },

    #[error("seccomp: loading filter into the kernel: {0}")]
    Load(#[source] LibError),

    #[error("seccomp: getting the notify listener fd: {0}")]
    NotifyFd(#[source] LibError),

    #[error("seccomp: connecting to seccomp listener {path}: {source}")]
    ListenerConnect {
        path: String,
        #[source]
        source: std::io::Error,
    },

    #[error("seccomp: sending notify fd to seccomp listener {path}: {source}")]
    ListenerSend {
        path: String,
        #[source]
        source: nix::Error,
    },
}

// ---------------------------------------------------------------------------------------------
// Name tables (OCI string <-> oci-spec enum), shared by parsing helpers, error messages and the
// features document.
// ---------------------------------------------------------------------------------------------

const ACTIONS: &[(&str, LinuxSeccompAction)] = &[
    ("SCMP_ACT_ALLOW", LinuxSeccompAction::ScmpActAllow),
    ("SCMP_ACT_ERRNO", LinuxSeccompAction::ScmpActErrno),
    ("SCMP_ACT_KILL", LinuxSeccompAction::ScmpActKill),
    (
        "SCMP_ACT_KILL_PROCESS",
        LinuxSeccompAction::ScmpActKillProcess,
    ),
    (
        "SCMP_ACT_KILL_THREAD",
        LinuxSeccompAction::ScmpActKillThread,
    ),
    ("SCMP_ACT_LOG", LinuxSeccompAction::ScmpActLog),
    ("SCMP_ACT_NOTIFY", LinuxSeccompAction::ScmpActNotify),
    ("SCMP_ACT_TRACE", LinuxSeccompAction::ScmpActTrace),
    ("SCMP_ACT_TRAP", LinuxSeccompAction::ScmpActTrap),
];

const OPERATORS: &[(&str, LinuxSeccompOperator)] = &[
    ("SCMP_CMP_EQ", LinuxSeccompOperator::ScmpCmpEq),
    ("SCMP_CMP_GE", LinuxSeccompOperator::ScmpCmpGe),
    ("SCMP_CMP_GT", LinuxSeccompOperator::ScmpCmpGt),
    ("SCMP_CMP_LE", LinuxSeccompOperator::ScmpCmpLe),
    ("SCMP_CMP_LT", LinuxSeccompOperator::ScmpCmpLt),
    ("SCMP_CMP_MASKED_EQ", LinuxSeccompOperator::ScmpCmpMaskedEq),
    ("SCMP_CMP_NE", LinuxSeccompOperator::ScmpCmpNe),
];

/// Architectures the OCI spec (and oci-spec) can express, with their libseccomp token.
/// `SCMP_ARCH_NATIVE` is accepted in profiles but not advertised in the features document.
const ARCHS: &[(&str, Arch, ScmpArch)] = &[
    (
        "SCMP_ARCH_AARCH64",
        Arch::ScmpArchAarch64,
        ScmpArch::Aarch64,
    ),
    ("SCMP_ARCH_ARM", Arch::ScmpArchArm, ScmpArch::Arm),
    ("SCMP_ARCH_MIPS", Arch::ScmpArchMips, ScmpArch::Mips),
    ("SCMP_ARCH_MIPS64", Arch::ScmpArchMips64, ScmpArch::Mips64),
    (
        "SCMP_ARCH_MIPS64N32",
        Arch::ScmpArchMips64n32,
        ScmpArch::Mips64N32,
    ),
    ("SCMP_ARCH_MIPSEL", Arch::ScmpArchMipsel, ScmpArch::Mipsel),
    (
        "SCMP_ARCH_MIPSEL64",
        Arch::ScmpArchMipsel64,
        ScmpArch::Mipsel64,
    ),
    (
        "SCMP_ARCH_MIPSEL64N32",
        Arch::ScmpArchMipsel64n32,
        ScmpArch::Mipsel64N32,
    ),
    ("SCMP_ARCH_NATIVE", Arch::ScmpArchNative, ScmpArch::Native),
    ("SCMP_ARCH_PPC", Arch::ScmpArchPpc, ScmpArch::Ppc),
    ("SCMP_ARCH_PPC64", Arch::ScmpArchPpc64, ScmpArch::Ppc64),
    (
        "SCMP_ARCH_PPC64LE",
        Arch::ScmpArchPpc64le,
        ScmpArch::Ppc64Le,
    ),
    (
        "SCMP_ARCH_RISCV64",
        Arch::ScmpArchRiscv64,
        ScmpArch::Riscv64,
    ),
    ("SCMP_ARCH_S390", Arch::ScmpArchS390, ScmpArch::S390),
    ("SCMP_ARCH_S390X", Arch::ScmpArchS390x, ScmpArch::S390X),
    ("SCMP_ARCH_X32", Arch::ScmpArchX32, ScmpArch::X32),
    ("SCMP_ARCH_X86", Arch::ScmpArchX86, ScmpArch::X86),
    ("SCMP_ARCH_X86_64", Arch::ScmpArchX86_64, ScmpArch::X8664),
];

const FLAGS: &[(&str, LinuxSeccompFilterFlag)] = &[
    (
        "SECCOMP_FILTER_FLAG_TSYNC",
        LinuxSeccompFilterFlag::SeccompFilterFlagTsync,
    ),
    (
        "SECCOMP_FILTER_FLAG_SPEC_ALLOW",
        LinuxSeccompFilterFlag::SeccompFilterFlagSpecAllow,
    ),
    (
        "SECCOMP_FILTER_FLAG_LOG",
        LinuxSeccompFilterFlag::SeccompFilterFlagLog,
    ),
];

/// The OCI name of an action ("SCMP_ACT_ERRNO").
pub fn action_name(action: LinuxSeccompAction) -> &'static str {
    ACTIONS
        .iter()
        .find(|(_, a)| *a == action)
        .map_or("SCMP_ACT_<unknown>", |(n, _)| *n)
}

/// The OCI name of a comparison operator ("SCMP_CMP_EQ").
pub fn operator_name(op: LinuxSeccompOperator) -> &'static str {
    OPERATORS
        .iter()
        .find(|(_, o)| *o == op)
        .map_or("SCMP_CMP_<unknown>", |(n, _)| *n)
}

/// The OCI name of an architecture ("SCMP_ARCH_X86_64").
pub fn arch_name(arch: Arch) -> &'static str {
    ARCHS
        .iter()
        .find(|(_, a, _)| *a == arch)
        .map_or("SCMP_ARCH_<unknown>", |(n, _, _)| *n)
}

/// The OCI name of a filter flag ("SECCOMP_FILTER_FLAG_LOG").
pub fn flag_name(flag: LinuxSeccompFilterFlag) -> &'static str {
    FLAGS
        .iter()
        .find(|(_, f)| *f == flag)
        .map_or("SECCOMP_FILTER_FLAG_<unknown>", |(n, _)| *n)
}

/// Parse an OCI action name ("SCMP_ACT_ERRNO"); the error names the offending string.
pub fn parse_action(name: &str) -> Result<LinuxSeccompAction, SeccompError> {
    ACTIONS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, a)| *a)
        .ok_or_else(|| SeccompError::InvalidAction(name.to_string()))
}

/// Parse an OCI operator name ("SCMP_CMP_EQ"); the error names the offending string.
pub fn parse_operator(name: &str) -> Result<LinuxSeccompOperator, SeccompError> {
    OPERATORS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, o)| *o)
        .ok_or_else(|| SeccompError::InvalidOperator(name.to_string()))
}

/// Parse an OCI architecture name ("SCMP_ARCH_X86_64"); the error names the offending string.
pub fn parse_arch(name: &str) -> Result<Arch, SeccompError> {
    ARCHS
        .iter()
        .find(|(n, _, _)| *n == name)
        .map(|(_, a, _)| *a)
        .ok_or_else(|| SeccompError::InvalidArch(name.to_string()))
}

/// Parse an OCI filter flag name; the error names the offending string.
pub fn parse_flag(name: &str) -> Result<LinuxSeccompFilterFlag, SeccompError> {
    FLAGS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, f)| *f)
        .ok_or_else(|| SeccompError::InvalidFlag(name.to_string()))
}

/// Parse a `linux.seccomp` JSON object. Errors from serde name the offending value (e.g.
/// "unknown variant `SCMP_ACT_FOO`").
pub fn profile_from_json(json: &[u8]) -> Result<LinuxSeccomp, SeccompError> {
    serde_json::from_slice(json)
        .map_err(|e| SeccompError::Other(format!("parsing seccomp profile: {e}")))
}

fn scmp_arch(arch: Arch) -> ScmpArch {
    ARCHS
        .iter()
        .find(|(_, a, _)| *a == arch)
        .map_or(ScmpArch::Native, |(_, _, s)| *s)
}

/// Convert an OCI action (+ errnoRet) to the libseccomp action, as runc's `getAction`.
fn scmp_action(
    action: LinuxSeccompAction,
    errno_ret: Option<u32>,
    context: &str,
) -> Result<ScmpAction, SeccompError> {
    let ret_value = |default: u32| -> Result<u16, SeccompError> {
        let value = errno_ret.unwrap_or(default);
        u16::try_from(value).map_err(|_| SeccompError::InvalidReturnValue {
            action: action_name(action),
            value,
            context: context.to_string(),
        })
    };
    let eperm = libc::EPERM as u32;
    Ok(match action {
        LinuxSeccompAction::ScmpActKill | LinuxSeccompAction::ScmpActKillThread => {
            ScmpAction::KillThread
        }
        LinuxSeccompAction::ScmpActKillProcess => ScmpAction::KillProcess,
        LinuxSeccompAction::ScmpActTrap => ScmpAction::Trap,
        LinuxSeccompAction::ScmpActErrno => ScmpAction::Errno(i32::from(ret_value(eperm)?)),
        LinuxSeccompAction::ScmpActTrace => ScmpAction::Trace(ret_value(eperm)?),
        LinuxSeccompAction::ScmpActLog => ScmpAction::Log,
        LinuxSeccompAction::ScmpActNotify => ScmpAction::Notify,
        LinuxSeccompAction::ScmpActAllow => ScmpAction::Allow,
    })
}

fn scmp_condition(arg: &LinuxSeccompArg) -> ScmpArgCompare {
    // The index was checked by the caller (< 6), so the cast cannot truncate.
    let index = arg.index() as u32;
    let op = match arg.op() {
        LinuxSeccompOperator::ScmpCmpNe => ScmpCompareOp::NotEqual,
        LinuxSeccompOperator::ScmpCmpLt => ScmpCompareOp::Less,
        LinuxSeccompOperator::ScmpCmpLe => ScmpCompareOp::LessOrEqual,
        LinuxSeccompOperator::ScmpCmpEq => ScmpCompareOp::Equal,
        LinuxSeccompOperator::ScmpCmpGe => ScmpCompareOp::GreaterEqual,
        LinuxSeccompOperator::ScmpCmpGt => ScmpCompareOp::Greater,
        // OCI/runc: `value` is the mask, `valueTwo` the datum compared after masking.
        LinuxSeccompOperator::ScmpCmpMaskedEq => {
            return ScmpArgCompare::new(
                index,
                ScmpCompareOp::MaskedEqual(arg.value()),
                arg.value_two().unwrap_or(0),
            )
        }
    };
    ScmpArgCompare::new(index, op, arg.value())
}

fn describe_conditions(args: &[LinuxSeccompArg]) -> String {
    if args.is_empty() {
        return String::new();
    }
    let parts: Vec<String> = args
        .iter()
        .map(|a| match a.value_two() {
            Some(v2) => format!(
                "arg{} {} {:#x} {:#x}",
                a.index(),
                operator_name(a.op()),
                a.value(),
                v2
            ),
            None => format!(
                "arg{} {} {:#x}",
                a.index(),
                operator_name(a.op()),
                a.value()
            ),
        })
        .collect();
    format!(" with [{}]", parts.join(", "))
}

/// A compiled filter, ready to load into the calling thread.
pub struct SeccompProgram {
    ctx: ScmpFilterContext,
    uses_notify: bool,
    /// Rules actually added (after skipping unknown names and default-action duplicates).
    rules_added: usize,
}

impl std::fmt::Debug for SeccompProgram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SeccompProgram")
            .field("uses_notify", &self.uses_notify)
            .field("rules_added", &self.rules_added)
            .finish_non_exhaustive()
    }
}

impl SeccompProgram {
    /// Build the filter from the OCI profile (default action, architectures, syscalls with their
    /// actions, errnoRet and argument conditions, flags). Names unknown to libseccomp are skipped
    /// with a debug log, as runc does.
    pub fn from_oci(profile: &LinuxSeccomp) -> Result<Self, SeccompError> {
        let default_oci = profile.default_action();
        if default_oci == LinuxSeccompAction::ScmpActNotify {
            return Err(SeccompError::NotifyAsDefault);
        }
        let default_action = scmp_action(
            default_oci,
            profile.default_errno_ret(),
            " (defaultErrnoRet)",
        )?;

        let syscalls: &[LinuxSyscall] = profile.syscalls().as_deref().unwrap_or(&[]);
        let uses_notify = syscalls
            .iter()
            .any(|s| s.action() == LinuxSeccompAction::ScmpActNotify);
        if uses_notify {
            for call in syscalls
                .iter()
                .filter(|s| s.action() == LinuxSeccompAction::ScmpActNotify)
            {
                if let Some(name) = call.names().iter().find(|n| n.as_str() == "write") {
                    return Err(SeccompError::NotifyForbidden(name.clone()));
                }
            }
            let api = libseccomp::get_api();
            if api < 6 {
                return Err(SeccompError::NotifyUnsupported {
                    action: "SCMP_ACT_NOTIFY",
                    api,
                });
            }
        }

        let mut ctx =
            ScmpFilterContext::new(default_action).map_err(|source| SeccompError::NewContext {
                action: action_name(default_oci),
                source,
            })?;

        // The runtime sets no_new_privs itself (only when process.noNewPrivileges is true).
        ctx.set_ctl_nnp(false)
            .map_err(|source| SeccompError::Attribute {
                what: "libseccomp NO_NEW_PRIVS attribute to false".into(),
                source,
            })?;

        // A binary tree of syscall numbers instead of libseccomp's default linear list: with
        // Docker's profile (≈ 300 syscalls) the kernel checks a syscall in ≈ 10 comparisons
        // instead of up to ≈ 600, and seccomp(2) itself — which runs the filter once per
        // syscall number to build its constant-allow cache — takes ≈ 0.3 ms instead of ≈ 1.7.
        // libseccomp < 2.5 has no such level: the filter is then only slower, not different.
        if let Err(e) = ctx.set_ctl_optimize(2) {
            tracing::debug!(error = %e, "libseccomp cannot build a binary-tree filter");
        }

        for arch in profile.architectures().as_deref().unwrap_or(&[]) {
            ctx.add_arch(scmp_arch(*arch))
                .map_err(|source| SeccompError::AddArch {
                    arch: arch_name(*arch),
                    source,
                })?;
        }

        for flag in profile.flags().as_deref().unwrap_or(&[]) {
            apply_flag(&mut ctx, *flag)?;
        }

        let mut rules_added = 0usize;
        for call in syscalls {
            rules_added += add_syscall_rules(&mut ctx, call, default_action)?;
        }
        tracing::debug!(
            default_action = action_name(default_oci),
            rules = rules_added,
            uses_notify,
            "seccomp filter compiled"
        );

        Ok(Self {
            ctx,
            uses_notify,
            rules_added,
        })
    }

    /// True when some rule uses SCMP_ACT_NOTIFY (the caller must forward the listener fd).
    pub fn uses_notify(&self) -> bool {
        self.uses_notify
    }

    /// Number of libseccomp rules added (after skipping unknown syscalls and rules equal to the
    /// default action).
    pub fn rule_count(&self) -> usize {
        self.rules_added
    }

    /// The filter in libseccomp's human readable PFC form (for debugging).
    pub fn export_pfc(&self) -> Result<String, SeccompError> {
        let file = tempfile_in_memory()?;
        self.ctx
            .export_pfc(&file)
            .map_err(|source| SeccompError::Attribute {
                what: "exporting PFC".into(),
                source,
            })?;
        let mut file = std::fs::File::from(file);
        use std::io::{Read, Seek};
        let mut out = String::new();
        file.seek(std::io::SeekFrom::Start(0))
            .and_then(|_| file.read_to_string(&mut out))
            .map_err(|e| SeccompError::Other(format!("reading PFC export: {e}")))?;
        Ok(out)
    }

    /// Write the compiled filter as a raw BPF program (an array of `struct sock_filter`).
    pub fn export_bpf(&self, fd: impl std::os::fd::AsFd) -> Result<(), SeccompError> {
        self.ctx
            .export_bpf(fd)
            .map_err(|source| SeccompError::Attribute {
                what: "exporting BPF".into(),
                source,
            })
    }

    /// Load the filter into the current process. Returns the notify fd when `uses_notify`.
    pub fn load(self) -> Result<Option<OwnedFd>, SeccompError> {
        self.ctx.load().map_err(SeccompError::Load)?;
        tracing::debug!(rules = self.rules_added, "seccomp filter loaded");
        if !self.uses_notify {
            return Ok(None);
        }
        let raw = self.ctx.get_notify_fd().map_err(SeccompError::NotifyFd)?;
        if raw < 0 {
            return Err(SeccompError::Other(format!(
                "libseccomp returned an invalid notify fd {raw}"
            )));
        }
        // SAFETY: libseccomp created this listener fd when loading the filter (the kernel returns
        // it with O_CLOEXEC) and only remembers its number; nobody else owns or closes it, so we
        // take ownership (runc does the same and closes it after sending it to the agent).
        Ok(Some(unsafe { OwnedFd::from_raw_fd(raw) }))
    }
}

fn tempfile_in_memory() -> Result<OwnedFd, SeccompError> {
    nix::sys::memfd::memfd_create(
        c"orca-seccomp-pfc",
        nix::sys::memfd::MemFdCreateFlag::MFD_CLOEXEC,
    )
    .map_err(|e| SeccompError::Other(format!("memfd_create for PFC export: {e}")))
}

fn apply_flag(
    ctx: &mut ScmpFilterContext,
    flag: LinuxSeccompFilterFlag,
) -> Result<(), SeccompError> {
    let name = flag_name(flag);
    let api = libseccomp::get_api();
    let need = |level: u32| -> Result<(), SeccompError> {
        if api < level {
            Err(SeccompError::UnsupportedFlag {
                flag: name,
                reason: format!("needs libseccomp API level >= {level}, have {api}"),
            })
        } else {
            Ok(())
        }
    };
    let attr_err = |source| SeccompError::Attribute {
        what: format!("flag {name}"),
        source,
    };
    match flag {
        LinuxSeccompFilterFlag::SeccompFilterFlagTsync => {
            need(2)?;
            ctx.set_ctl_tsync(true).map_err(attr_err)?;
        }
        LinuxSeccompFilterFlag::SeccompFilterFlagLog => {
            need(3)?;
            ctx.set_ctl_log(true).map_err(attr_err)?;
        }
        LinuxSeccompFilterFlag::SeccompFilterFlagSpecAllow => {
            need(4)?;
            ctx.set_ctl_ssb(true).map_err(attr_err)?;
        }
    }
    tracing::debug!(flag = name, "seccomp flag set");
    Ok(())
}

/// Add the rules of one OCI syscall entry; returns how many libseccomp rules were added.
fn add_syscall_rules(
    ctx: &mut ScmpFilterContext,
    call: &LinuxSyscall,
    default_action: ScmpAction,
) -> Result<usize, SeccompError> {
    let names = call.names();
    let first = names.first().map_or("<no name>", String::as_str);
    let action = scmp_action(
        call.action(),
        call.errno_ret(),
        &format!(" (errnoRet of syscall {first})"),
    )?;
    if action == default_action {
        tracing::debug!(
            syscalls = ?names,
            action = action_name(call.action()),
            "seccomp rule has the default action, skipped"
        );
        return Ok(0);
    }

    let args: &[LinuxSeccompArg] = call.args().as_deref().unwrap_or(&[]);
    let mut per_index = [0usize; SYSCALL_MAX_ARGUMENTS];
    for arg in args {
        if arg.index() >= SYSCALL_MAX_ARGUMENTS {
            return Err(SeccompError::InvalidArgIndex {
                syscall: first.to_string(),
                index: arg.index(),
                max: SYSCALL_MAX_ARGUMENTS - 1,
            });
        }
        per_index[arg.index()] += 1;
    }
    // Each inner Vec is one rule (its conditions ANDed).
    let rule_sets: Vec<&[LinuxSeccompArg]> = if per_index.iter().any(|&n| n > 1) {
        // Same as runc: one rule per condition.
        args.chunks(1).collect()
    } else {
        vec![args]
    };

    let mut added = 0usize;
    for name in names {
        let syscall = match ScmpSyscall::from_name(name) {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(syscall = %name, error = %e, "unknown seccomp syscall ignored");
                continue;
            }
        };
        for conds in &rule_sets {
            let cmps: Vec<ScmpArgCompare> = conds.iter().map(scmp_condition).collect();
            ctx.add_rule_conditional(action, syscall, &cmps)
                .map_err(|source| SeccompError::AddRule {
                    syscall: name.clone(),
                    action: action_name(call.action()),
                    conditions: describe_conditions(conds),
                    source,
                })?;
            added += 1;
        }
    }
    Ok(added)
}

/// Send a seccomp notify fd to the agent listening on `listener_path`, with the container state
/// JSON and `listenerMetadata`, as runc does (SCM_RIGHTS over a unix stream socket).
///
/// `state_json` is the complete message payload (runc sends the `ContainerProcessState` JSON,
/// which carries `listenerMetadata` as `metadata`); it is sent in the same `sendmsg` as the fd.
pub fn send_to_listener(
    listener_path: &Path,
    fd: OwnedFd,
    state_json: &[u8],
) -> Result<(), SeccompError> {
    let path = listener_path.display().to_string();
    let stream =
        UnixStream::connect(listener_path).map_err(|source| SeccompError::ListenerConnect {
            path: path.clone(),
            source,
        })?;
    let send_err = |source| SeccompError::ListenerSend {
        path: path.clone(),
        source,
    };
    let fds = [fd.as_raw_fd()];
    let cmsgs = [ControlMessage::ScmRights(&fds)];
    // A zero-length payload would not carry the control message on some kernels; the payload is
    // never empty in practice (state JSON), but guard anyway.
    let payload: &[u8] = if state_json.is_empty() {
        b"{}"
    } else {
        state_json
    };
    let sent = loop {
        let iov = [IoSlice::new(payload)];
        match sendmsg::<UnixAddr>(stream.as_raw_fd(), &iov, &cmsgs, MsgFlags::empty(), None) {
            Ok(n) => break n,
            Err(nix::Error::EINTR) => continue,
            Err(e) => return Err(send_err(e)),
        }
    };
    // A stream socket may accept a partial message: send the rest without the fd.
    let mut offset = sent;
    while offset < payload.len() {
        let iov = [IoSlice::new(&payload[offset..])];
        match sendmsg::<UnixAddr>(stream.as_raw_fd(), &iov, &[], MsgFlags::empty(), None) {
            Ok(n) => offset += n,
            Err(nix::Error::EINTR) => continue,
            Err(e) => return Err(send_err(e)),
        }
    }
    tracing::debug!(listener = %path, bytes = payload.len(), "seccomp notify fd sent to agent");
    // `fd` is dropped (closed) here: the agent now holds its own copy.
    drop(fd);
    Ok(())
}

/// The `linux.seccomp` part of the OCI features document.
#[derive(Debug, Default, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SeccompFeatures {
    pub enabled: bool,
    pub actions: Vec<String>,
    pub operators: Vec<String>,
    pub archs: Vec<String>,
    pub known_flags: Vec<String>,
    pub supported_flags: Vec<String>,
}

/// Whether a filter flag can be used with this libseccomp and kernel (runc's `FlagSupported`).
pub fn flag_supported(flag: LinuxSeccompFilterFlag) -> bool {
    let api = libseccomp::get_api();
    match flag {
        LinuxSeccompFilterFlag::SeccompFilterFlagTsync => api >= 2,
        LinuxSeccompFilterFlag::SeccompFilterFlagLog => api >= 3,
        LinuxSeccompFilterFlag::SeccompFilterFlagSpecAllow => api >= 4,
    }
}

pub fn features() -> SeccompFeatures {
    let mut archs: Vec<String> = ARCHS
        .iter()
        .filter(|(_, a, _)| *a != Arch::ScmpArchNative)
        .map(|(n, _, _)| (*n).to_string())
        .collect();
    archs.sort();
    SeccompFeatures {
        enabled: true,
        actions: ACTIONS.iter().map(|(n, _)| (*n).to_string()).collect(),
        operators: OPERATORS.iter().map(|(n, _)| (*n).to_string()).collect(),
        archs,
        known_flags: FLAGS.iter().map(|(n, _)| (*n).to_string()).collect(),
        supported_flags: FLAGS
            .iter()
            .filter(|(_, f)| flag_supported(*f))
            .map(|(n, _)| (*n).to_string())
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::wait::{waitpid, WaitStatus};
    use nix::unistd::{fork, ForkResult};

    fn profile(json: &str) -> LinuxSeccomp {
        profile_from_json(json.as_bytes()).expect("valid test profile")
    }

    use crate::test_support::in_child;

    fn errno() -> i32 {
        std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
    }

    #[test]
    fn names_roundtrip_and_features() {
        for (n, a) in ACTIONS {
            assert_eq!(parse_action(n).unwrap(), *a);
            assert_eq!(action_name(*a), *n);
            // Same spelling as oci-spec's serde.
            assert_eq!(serde_json::to_value(a).unwrap(), serde_json::json!(n));
        }
        for (n, o) in OPERATORS {
            assert_eq!(parse_operator(n).unwrap(), *o);
            assert_eq!(serde_json::to_value(o).unwrap(), serde_json::json!(n));
        }
        for (n, a, _) in ARCHS {
            assert_eq!(parse_arch(n).unwrap(), *a);
            assert_eq!(serde_json::to_value(a).unwrap(), serde_json::json!(n));
        }
        for (n, f) in FLAGS {
            assert_eq!(parse_flag(n).unwrap(), *f);
            assert_eq!(serde_json::to_value(f).unwrap(), serde_json::json!(n));
        }
        let f = features();
        assert!(f.enabled);
        assert_eq!(f.actions.len(), 9);
        assert!(f.operators.contains(&"SCMP_CMP_MASKED_EQ".to_string()));
        assert!(f.archs.contains(&"SCMP_ARCH_X86_64".to_string()));
        assert!(!f.archs.contains(&"SCMP_ARCH_NATIVE".to_string()));
        assert!(f
            .supported_flags
            .contains(&"SECCOMP_FILTER_FLAG_TSYNC".to_string()));
        let json = serde_json::to_value(&f).unwrap();
        assert!(json.get("knownFlags").is_some());
        assert!(json.get("supportedFlags").is_some());
    }

    #[test]
    fn invalid_strings_are_named() {
        let e = parse_action("SCMP_ACT_BOGUS").unwrap_err();
        assert!(e.to_string().contains("SCMP_ACT_BOGUS"), "{e}");
        let e = parse_operator("SCMP_CMP_WHATEVER").unwrap_err();
        assert!(e.to_string().contains("SCMP_CMP_WHATEVER"), "{e}");
        let e = parse_arch("SCMP_ARCH_VAX").unwrap_err();
        assert!(e.to_string().contains("SCMP_ARCH_VAX"), "{e}");

        // Through the JSON profile as the config parser sees it.
        let e = profile_from_json(
            br#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["getcwd"],"action":"SCMP_ACT_BOGUS"}]}"#,
        )
        .unwrap_err();
        assert!(e.to_string().contains("SCMP_ACT_BOGUS"), "{e}");
        let e = profile_from_json(
            br#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["getcwd"],"action":"SCMP_ACT_ERRNO","args":[{"index":0,"value":1,"op":"SCMP_CMP_NOPE"}]}]}"#,
        )
        .unwrap_err();
        assert!(e.to_string().contains("SCMP_CMP_NOPE"), "{e}");
        let e = profile_from_json(br#"{"defaultAction":"SCMP_ACT_NOPE"}"#).unwrap_err();
        assert!(e.to_string().contains("SCMP_ACT_NOPE"), "{e}");
    }

    #[test]
    fn builds_docker_like_profile() {
        let p = profile(
            r#"{
              "defaultAction": "SCMP_ACT_ERRNO",
              "defaultErrnoRet": 1,
              "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
              "flags": ["SECCOMP_FILTER_FLAG_TSYNC"],
              "syscalls": [
                {"names": ["read", "write", "exit_group", "getcwd", "not_a_syscall_xyz"],
                 "action": "SCMP_ACT_ALLOW"},
                {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
                 "args": [{"index": 0, "value": 0, "op": "SCMP_CMP_EQ"}]},
                {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
                 "args": [{"index": 0, "value": 8, "op": "SCMP_CMP_EQ"}]},
                {"names": ["clone"], "action": "SCMP_ACT_ALLOW",
                 "args": [{"index": 0, "value": 2114060288, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}]},
                {"names": ["mkdir"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1234},
                {"names": ["ptrace"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1},
                {"names": ["socket"], "action": "SCMP_ACT_ERRNO", "errnoRet": 22,
                 "args": [{"index": 0, "value": 40, "op": "SCMP_CMP_EQ"}]}
              ]
            }"#,
        );
        let prog = SeccompProgram::from_oci(&p).expect("compile");
        assert!(!prog.uses_notify());
        // 4 known allow names + 2 personality + clone + mkdir + socket; ptrace ERRNO(1) equals
        // the default action and is skipped, not_a_syscall_xyz is unknown.
        assert_eq!(prog.rule_count(), 9);
        let pfc = prog.export_pfc().expect("pfc");
        assert!(pfc.contains("mkdir"), "{pfc}");
        assert!(!pfc.contains("ptrace"), "{pfc}");
    }

    #[test]
    fn repeated_arg_index_is_split_into_rules() {
        let p = profile(
            r#"{"defaultAction": "SCMP_ACT_ALLOW",
                "syscalls": [{"names": ["getpriority"], "action": "SCMP_ACT_ERRNO",
                  "args": [{"index": 1, "value": 100, "op": "SCMP_CMP_EQ"},
                           {"index": 1, "value": 200, "op": "SCMP_CMP_EQ"},
                           {"index": 0, "value": 0, "op": "SCMP_CMP_EQ"}]},
                  {"names": ["setpriority"], "action": "SCMP_ACT_ERRNO",
                  "args": [{"index": 1, "value": 100, "op": "SCMP_CMP_EQ"},
                           {"index": 0, "value": 0, "op": "SCMP_CMP_EQ"}]}]}"#,
        );
        let prog = SeccompProgram::from_oci(&p).expect("compile");
        assert_eq!(prog.rule_count(), 3 + 1);
    }

    #[test]
    fn default_action_variants_and_errors() {
        // Every action as default compiles (except NOTIFY, refused like runc).
        for (name, _) in ACTIONS {
            let p = profile(&format!(
                r#"{{"defaultAction":"{name}","syscalls":[{{"names":["getcwd"],"action":"SCMP_ACT_ALLOW"}}]}}"#
            ));
            let r = SeccompProgram::from_oci(&p);
            if *name == "SCMP_ACT_NOTIFY" {
                assert!(matches!(r, Err(SeccompError::NotifyAsDefault)));
            } else {
                r.unwrap_or_else(|e| panic!("{name}: {e}"));
            }
        }
        // Every action in a rule compiles.
        for (name, _) in ACTIONS {
            let p = profile(&format!(
                r#"{{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{{"names":["getcwd"],"action":"{name}","errnoRet":5}}]}}"#
            ));
            let prog = SeccompProgram::from_oci(&p).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(prog.uses_notify(), *name == "SCMP_ACT_NOTIFY");
            let expected = usize::from(*name != "SCMP_ACT_ALLOW");
            assert_eq!(prog.rule_count(), expected, "{name}");
        }
        // Argument index out of range.
        let p = profile(
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["getcwd"],"action":"SCMP_ACT_ERRNO","args":[{"index":6,"value":1,"op":"SCMP_CMP_EQ"}]}]}"#,
        );
        let e = SeccompProgram::from_oci(&p).unwrap_err();
        assert!(
            e.to_string().contains("getcwd") && e.to_string().contains("6"),
            "{e}"
        );
        // errnoRet too large.
        let p = profile(
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["mkdir"],"action":"SCMP_ACT_ERRNO","errnoRet":70000}]}"#,
        );
        let e = SeccompProgram::from_oci(&p).unwrap_err();
        assert!(
            e.to_string().contains("mkdir") && e.to_string().contains("70000"),
            "{e}"
        );
        // NOTIFY on write is refused.
        let p = profile(
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["getcwd","write"],"action":"SCMP_ACT_NOTIFY"}]}"#,
        );
        let e = SeccompProgram::from_oci(&p).unwrap_err();
        assert!(e.to_string().contains("write"), "{e}");
        // Conflicting rules for the same syscall: libseccomp error names the syscall.
        let p = profile(
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[
                {"names":["getcwd"],"action":"SCMP_ACT_ERRNO","errnoRet":3},
                {"names":["getcwd"],"action":"SCMP_ACT_ERRNO","errnoRet":4}]}"#,
        );
        match SeccompProgram::from_oci(&p) {
            Ok(_) => {}
            Err(e) => assert!(e.to_string().contains("getcwd"), "{e}"),
        }
    }

    #[test]
    fn unknown_names_only_is_fine() {
        let p = profile(
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["definitely_not_real","nor_this"],"action":"SCMP_ACT_ERRNO"}]}"#,
        );
        let prog = SeccompProgram::from_oci(&p).expect("compile");
        assert_eq!(prog.rule_count(), 0);
    }

    #[test]
    fn loaded_filter_returns_errno_in_child() {
        let p = profile(
            r#"{"defaultAction":"SCMP_ACT_ALLOW",
                "architectures":["SCMP_ARCH_X86_64","SCMP_ARCH_X86","SCMP_ARCH_X32"],
                "syscalls":[
                  {"names":["getcwd"],"action":"SCMP_ACT_ERRNO","errnoRet":1234},
                  {"names":["getpriority"],"action":"SCMP_ACT_ERRNO",
                   "args":[{"index":1,"value":100000,"op":"SCMP_CMP_EQ"},
                           {"index":1,"value":200000,"op":"SCMP_CMP_EQ"}]},
                  {"names":["setpriority"],"action":"SCMP_ACT_ERRNO","errnoRet":77,
                   "args":[{"index":0,"value":65280,"valueTwo":56832,"op":"SCMP_CMP_MASKED_EQ"}]}
                ]}"#,
        );
        let prog = SeccompProgram::from_oci(&p).expect("compile");
        let code = in_child(move || {
            // The filter is loaded without libseccomp's NNP: as root CAP_SYS_ADMIN suffices,
            // otherwise set it ourselves like the runtime does.
            // SAFETY: plain prctl call without pointers.
            unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
            match prog.load() {
                Ok(None) => {}
                _ => return 10,
            }
            let mut buf = [0u8; 256];
            // SAFETY: buf is valid for buf.len() bytes.
            let r = unsafe { libc::syscall(libc::SYS_getcwd, buf.as_mut_ptr(), buf.len()) };
            if r != -1 || errno() != 1234 {
                return 11;
            }
            // Split rule: both values on index 1 match (OR), another value does not.
            for who in [100000u64, 200000] {
                // SAFETY: getpriority takes integers only.
                let r = unsafe { libc::syscall(libc::SYS_getpriority, libc::PRIO_PROCESS, who) };
                if r != -1 || errno() != libc::EPERM {
                    return 12;
                }
            }
            // SAFETY: getpriority takes integers only.
            let r = unsafe { libc::syscall(libc::SYS_getpriority, libc::PRIO_PROCESS, 0) };
            if r == -1 {
                return 13;
            }
            // MASKED_EQ: (arg0 & 0xff00) == 0xde00.
            // SAFETY: setpriority takes integers only.
            let r = unsafe { libc::syscall(libc::SYS_setpriority, 0xdead_u64, 0, 0) };
            if r != -1 || errno() != 77 {
                return 14;
            }
            // SAFETY: setpriority takes integers only.
            let r = unsafe { libc::syscall(libc::SYS_setpriority, 0x12ad_u64, 0, 0) };
            if r != -1 || errno() != libc::EINVAL {
                return 15;
            }
            0
        });
        assert_eq!(code, 0, "child reported failure code {code}");
    }

    #[test]
    fn notify_fd_is_sent_to_listener_and_answered() {
        use libseccomp::{ScmpNotifReq, ScmpNotifResp, ScmpNotifRespFlags};
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        use nix::sys::socket::{recvmsg, ControlMessageOwned};
        use std::io::IoSliceMut;
        use std::os::fd::AsFd;
        use std::os::unix::net::UnixListener;

        if libseccomp::get_api() < 6 {
            eprintln!("skipping: libseccomp API level < 6");
            return;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let sock = dir.path().join("agent.sock");
        let listener = UnixListener::bind(&sock).expect("bind");

        let p = profile(
            r#"{"defaultAction":"SCMP_ACT_ALLOW","listenerPath":"/unused",
                "syscalls":[{"names":["uname"],"action":"SCMP_ACT_NOTIFY"}]}"#,
        );
        let prog = SeccompProgram::from_oci(&p).expect("compile");
        assert!(prog.uses_notify());
        let sock_child = sock.clone();

        // SAFETY: see in_child; the child leaves through _exit.
        let child = match unsafe { fork() }.expect("fork") {
            ForkResult::Child => {
                let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    // SAFETY: plain prctl call without pointers.
                    unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
                    let fd = match prog.load() {
                        Ok(Some(fd)) => fd,
                        _ => return 20,
                    };
                    if send_to_listener(
                        &sock_child,
                        fd,
                        br#"{"ociVersion":"1.2.0","fds":["seccompFd"]}"#,
                    )
                    .is_err()
                    {
                        return 21;
                    }
                    let mut uts = std::mem::MaybeUninit::<libc::utsname>::uninit();
                    // SAFETY: uts is valid writable memory for a utsname.
                    let r = unsafe { libc::syscall(libc::SYS_uname, uts.as_mut_ptr()) };
                    if r != -1 || errno() != 123 {
                        return 22;
                    }
                    0
                }))
                .unwrap_or(101);
                // SAFETY: _exit is async-signal-safe.
                unsafe { libc::_exit(code) }
            }
            ForkResult::Parent { child } => child,
        };

        let wait_readable = |fd: std::os::fd::BorrowedFd<'_>| {
            let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
            let n = poll(&mut fds, PollTimeout::from(10_000u16)).expect("poll");
            assert_eq!(n, 1, "timed out waiting for the child");
        };
        wait_readable(listener.as_fd());
        let (conn, _) = listener.accept().expect("accept");
        wait_readable(conn.as_fd());
        let mut buf = vec![0u8; 4096];
        let mut cmsg = nix::cmsg_space!([std::os::fd::RawFd; 1]);
        let (n, received) = {
            let mut iov = [IoSliceMut::new(&mut buf)];
            let msg = recvmsg::<UnixAddr>(
                conn.as_raw_fd(),
                &mut iov,
                Some(&mut cmsg),
                MsgFlags::MSG_CMSG_CLOEXEC,
            )
            .expect("recvmsg");
            let mut received = None;
            for c in msg.cmsgs().expect("cmsgs") {
                if let ControlMessageOwned::ScmRights(fds) = c {
                    received = fds.first().copied();
                }
            }
            (msg.bytes, received)
        };
        assert!(std::str::from_utf8(&buf[..n])
            .unwrap()
            .contains("seccompFd"));
        let raw = received.expect("no fd received");
        // SAFETY: the fd was just received through SCM_RIGHTS and is owned by nobody else.
        let notify = unsafe { OwnedFd::from_raw_fd(raw) };

        wait_readable(notify.as_fd());
        let req = ScmpNotifReq::receive(notify.as_raw_fd()).expect("receive");
        assert_eq!(
            req.data.syscall,
            ScmpSyscall::from_name("uname").expect("uname")
        );
        ScmpNotifResp::new_error(req.id, -123, ScmpNotifRespFlags::empty())
            .respond(notify.as_raw_fd())
            .expect("respond");

        match waitpid(child, None).expect("waitpid") {
            WaitStatus::Exited(_, code) => assert_eq!(code, 0, "child failure code {code}"),
            other => panic!("child did not exit normally: {other:?}"),
        }
    }
}
