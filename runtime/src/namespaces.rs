//! Linux namespaces: which ones a container creates (clone/unshare flags) and which it joins by
//! path, and joining them in a safe order (user first, mount last).

use crate::error::{Context, Result, RuntimeError};
use nix::fcntl::{open, OFlag};
use nix::sched::{setns, CloneFlags};
use nix::sys::stat::Mode;
use oci_spec::runtime::{LinuxNamespace, LinuxNamespaceType};
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::PathBuf;

pub fn clone_flag(t: LinuxNamespaceType) -> CloneFlags {
    match t {
        LinuxNamespaceType::Mount => CloneFlags::CLONE_NEWNS,
        LinuxNamespaceType::Cgroup => CloneFlags::CLONE_NEWCGROUP,
        LinuxNamespaceType::Uts => CloneFlags::CLONE_NEWUTS,
        LinuxNamespaceType::Ipc => CloneFlags::CLONE_NEWIPC,
        LinuxNamespaceType::User => CloneFlags::CLONE_NEWUSER,
        LinuxNamespaceType::Pid => CloneFlags::CLONE_NEWPID,
        LinuxNamespaceType::Network => CloneFlags::CLONE_NEWNET,
        LinuxNamespaceType::Time => CloneFlags::from_bits_retain(libc::CLONE_NEWTIME),
    }
}

/// The name of the namespace under /proc/<pid>/ns/.
pub fn proc_name(t: LinuxNamespaceType) -> &'static str {
    match t {
        LinuxNamespaceType::Mount => "mnt",
        LinuxNamespaceType::Cgroup => "cgroup",
        LinuxNamespaceType::Uts => "uts",
        LinuxNamespaceType::Ipc => "ipc",
        LinuxNamespaceType::User => "user",
        LinuxNamespaceType::Pid => "pid",
        LinuxNamespaceType::Network => "net",
        LinuxNamespaceType::Time => "time",
    }
}

pub fn from_proc_name(name: &str) -> Option<LinuxNamespaceType> {
    Some(match name {
        "mnt" => LinuxNamespaceType::Mount,
        "cgroup" => LinuxNamespaceType::Cgroup,
        "uts" => LinuxNamespaceType::Uts,
        "ipc" => LinuxNamespaceType::Ipc,
        "user" => LinuxNamespaceType::User,
        "pid" => LinuxNamespaceType::Pid,
        "net" => LinuxNamespaceType::Network,
        "time" => LinuxNamespaceType::Time,
        _ => return None,
    })
}

/// Join order: the user namespace first (it grants the capabilities to join the others), the
/// mount namespace last (it changes what paths mean).
fn join_rank(t: LinuxNamespaceType) -> u8 {
    match t {
        LinuxNamespaceType::User => 0,
        LinuxNamespaceType::Mount => 9,
        _ => 5,
    }
}

/// What a process must do about namespaces.
#[derive(Debug, Clone)]
pub struct NamespacePlan {
    /// Namespaces to create.
    pub new: CloneFlags,
    /// Namespaces to join, by path, in join order.
    pub join: Vec<(LinuxNamespaceType, PathBuf)>,
}

impl Default for NamespacePlan {
    fn default() -> Self {
        NamespacePlan {
            new: CloneFlags::empty(),
            join: Vec::new(),
        }
    }
}

impl NamespacePlan {
    pub fn from_spec(namespaces: &[LinuxNamespace]) -> Self {
        let mut plan = NamespacePlan::default();
        for ns in namespaces {
            match ns.path() {
                Some(p) if !p.as_os_str().is_empty() => plan.join.push((ns.typ(), p.clone())),
                _ => plan.new |= clone_flag(ns.typ()),
            }
        }
        plan.join.sort_by_key(|(t, _)| join_rank(*t));
        plan
    }

    /// Join every namespace of a running process (for `exec`).
    pub fn join_process(pid: i32, types: &[LinuxNamespaceType]) -> Self {
        let mut plan = NamespacePlan::default();
        for t in types {
            plan.join.push((
                *t,
                PathBuf::from(format!("/proc/{pid}/ns/{}", proc_name(*t))),
            ));
        }
        plan.join.sort_by_key(|(t, _)| join_rank(*t));
        plan
    }

    pub fn has(&self, t: LinuxNamespaceType) -> bool {
        self.new.contains(clone_flag(t)) || self.join.iter().any(|(j, _)| *j == t)
    }

    pub fn creates(&self, t: LinuxNamespaceType) -> bool {
        self.new.contains(clone_flag(t))
    }

    /// Open every namespace file to join (before any join changes what paths mean).
    pub fn open_joins(&self) -> Result<Vec<(LinuxNamespaceType, OwnedFd)>> {
        let mut out = Vec::with_capacity(self.join.len());
        for (t, p) in &self.join {
            let fd = open(p, OFlag::O_RDONLY | OFlag::O_CLOEXEC, Mode::empty())
                .ctx(|| format!("open {} namespace {p:?}", proc_name(*t)))?;
            // SAFETY: `open` returned a new descriptor that nothing else owns.
            out.push((*t, unsafe { OwnedFd::from_raw_fd(fd) }));
        }
        Ok(out)
    }
}

pub fn join_all(fds: Vec<(LinuxNamespaceType, OwnedFd)>) -> Result<()> {
    for (t, fd) in fds {
        setns(&fd, clone_flag(t)).map_err(|e| RuntimeError::Sys {
            context: format!("join {} namespace", proc_name(t)),
            source: e,
        })?;
    }
    Ok(())
}
