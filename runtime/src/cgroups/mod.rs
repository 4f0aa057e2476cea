//! cgroups for containers on v1, v2 and hybrid hosts, written against cgroupfs directly.
//!
//! This mirrors runc's `fs` (cgroup v1) and `fs2` (cgroup v2) drivers. We deliberately do not
//! use the `cgroups-rs` crate: it cannot join the cgroup2 hierarchy of a *hybrid* host (v1
//! controllers plus a controller-less cgroup2 mount at `/sys/fs/cgroup/unified`). runc does: on
//! hybrid hosts it also creates and joins the container's path under `/sys/fs/cgroup/unified`,
//! which systemd and tools such as `systemd-cgls` rely on, and which is where eBPF programs are
//! attached. So every path below is computed and written here by hand.
//!
//! Layout:
//! - [`paths`]: parsing `/proc/self/mountinfo` and `/proc/self/cgroup`, computing directories.
//! - `v1` / `v2`: writing resource limits and driving the freezer.
//! - [`devices`]: device rules (v1 allow/deny files, v2 eBPF `BPF_PROG_TYPE_CGROUP_DEVICE`).
//! - [`stats`]: the `runc events --stats` data shape and its parsers.
//! - `oom`: OOM notifications (v1 eventfd + `cgroup.event_control`, v2 `memory.events`).

pub mod devices;
mod files;
mod oom;
pub mod paths;
pub mod stats;
mod v1;
mod v2;

#[cfg(test)]
mod root_tests;

use oci_spec::runtime::LinuxResources;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use oom::OomNotifier;
pub use stats::{
    BlkioEntry, BlkioStats, CpuStats, CpuUsage, CpusetStats, HugetlbStats, IntelRdtStats,
    MemoryEntry, MemoryStats, PidsStats, Stats, Throttling,
};

/// Where cgroup filesystems are mounted on a standard host.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// The cgroup2 mount point of a hybrid host.
pub const HYBRID_UNIFIED_ROOT: &str = "/sys/fs/cgroup/unified";
/// The key of the cgroup2 directory in [`CgroupPaths::paths`].
pub const UNIFIED_KEY: &str = "unified";

/// Everything that can go wrong; each variant names the file or directory and the operation.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("cgroups: {0}")]
    Other(String),

    /// A filesystem operation (read, mkdir, rmdir, open, ...) failed.
    #[error("cgroups: {op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// Writing a value to a cgroup file failed.
    #[error("cgroups: writing {value:?} to {}: {source}", path.display())]
    Write {
        path: PathBuf,
        value: String,
        #[source]
        source: std::io::Error,
    },

    /// A cgroup file had unexpected contents.
    #[error("cgroups: parsing {}: {msg}", path.display())]
    Parse { path: PathBuf, msg: String },

    /// The cgroupsPath (or container id used as a path) cannot be used.
    #[error("cgroups: invalid cgroups path {path:?}: {reason}")]
    InvalidPath { path: String, reason: String },

    /// A resource value is out of range or inconsistent.
    #[error("cgroups: invalid {what}: {reason}")]
    InvalidValue { what: String, reason: String },

    /// A limit was asked for but the controller (or its file) is not available on this host.
    #[error("cgroups: cannot set {what}: {reason}")]
    NotAvailable { what: String, reason: String },

    /// The operation is not supported on this host/mode.
    #[error("cgroups: {0}")]
    Unsupported(String),

    /// A bpf(2) call for the v2 device filter failed.
    #[error("cgroups: bpf {op} for {}: {source}{log}", path.display())]
    Bpf {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
        /// Verifier log (empty unless the program was rejected).
        log: String,
    },

    /// Waiting for the freezer to reach a state did not succeed.
    #[error("cgroups: {op} {}: {reason}", path.display())]
    Freezer {
        op: &'static str,
        path: PathBuf,
        reason: String,
    },

    /// The cgroup directory went away (e.g. while waiting for OOM events).
    #[error("cgroups: cgroup {} was removed", .0.display())]
    Removed(PathBuf),
}

/// How the host mounts cgroups.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CgroupMode {
    /// v1 controllers only.
    V1,
    /// v1 controllers plus a cgroup2 mount at /sys/fs/cgroup/unified (these machines).
    Hybrid,
    /// cgroup2 mounted at /sys/fs/cgroup.
    V2,
}

/// Where one container's cgroup lives: controller name ("memory", "cpu", ...; "unified" for the
/// cgroup2 directory) to absolute directory. Persisted in the container state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CgroupPaths {
    pub mode: CgroupMode,
    pub paths: BTreeMap<String, PathBuf>,
}

impl CgroupPaths {
    /// The directory for a key, if that hierarchy is mounted.
    pub fn get(&self, key: &str) -> Option<&Path> {
        self.paths.get(key).map(PathBuf::as_path)
    }

    /// The cgroup2 directory (hybrid's unified one, or the only one on v2), if any.
    pub fn v2_dir(&self) -> Option<&Path> {
        self.get(UNIFIED_KEY)
    }

    /// Moves the calling thread, which must be its process's only thread, into every v1
    /// directory by writing "0" to `tasks`. Unlike writing a pid to `cgroup.procs`, this
    /// does not take the kernel's global threadgroup lock, whose first writer waits a full
    /// RCU grace period (5–15 ms on these machines). The cgroup2 directory is left out: it
    /// is joined by `clone3(CLONE_INTO_CGROUP)`.
    pub fn join_v1_self(&self) -> Result<(), CgroupError> {
        let v2 = self.v2_dir();
        for dir in self.unique_dirs() {
            if Some(dir) != v2 {
                files::write(dir, "tasks", "0")?;
            }
        }
        Ok(())
    }

    /// Every distinct directory (co-mounted controllers such as `cpu,cpuacct` share one).
    pub fn unique_dirs(&self) -> Vec<&Path> {
        let mut dirs: Vec<&Path> = Vec::new();
        for p in self.paths.values() {
            if !dirs.contains(&p.as_path()) {
                dirs.push(p.as_path());
            }
        }
        dirs
    }
}

pub struct CgroupManager {
    paths: CgroupPaths,
}

impl CgroupManager {
    /// V2 if /sys/fs/cgroup is cgroup2, Hybrid if v1 plus cgroup2 at /sys/fs/cgroup/unified,
    /// else V1.
    pub fn detect_mode() -> Result<CgroupMode, CgroupError> {
        use nix::sys::statfs::{statfs, CGROUP2_SUPER_MAGIC};
        let root = statfs(CGROUP_ROOT).map_err(|e| CgroupError::Io {
            op: "statfs",
            path: PathBuf::from(CGROUP_ROOT),
            source: e.into(),
        })?;
        if root.filesystem_type() == CGROUP2_SUPER_MAGIC {
            return Ok(CgroupMode::V2);
        }
        match statfs(HYBRID_UNIFIED_ROOT) {
            Ok(s) if s.filesystem_type() == CGROUP2_SUPER_MAGIC => Ok(CgroupMode::Hybrid),
            _ => Ok(CgroupMode::V1),
        }
    }

    /// Compute the paths for a container. `cgroups_path` absolute: below each hierarchy root;
    /// relative: below the calling process's own cgroup; None: relative path `<container_id>`.
    pub fn new(cgroups_path: Option<&Path>, container_id: &str) -> Result<Self, CgroupError> {
        let mode = Self::detect_mode()?;
        let mountinfo = files::read_path(Path::new("/proc/self/mountinfo"))?;
        let own = files::read_path(Path::new("/proc/self/cgroup"))?;
        let paths = paths::compute_paths(mode, &mountinfo, &own, cgroups_path, container_id)?;
        tracing::debug!(?paths, "cgroup paths computed");
        Ok(CgroupManager { paths })
    }

    pub fn from_paths(paths: CgroupPaths) -> Self {
        CgroupManager { paths }
    }

    pub fn paths(&self) -> &CgroupPaths {
        &self.paths
    }

    /// The host mode these paths were computed for.
    pub fn mode(&self) -> CgroupMode {
        self.paths.mode
    }

    /// mkdir every directory (cpuset.cpus/mems initialised from the parent on v1, controllers
    /// enabled in subtree_control on v2).
    pub fn create(&self) -> Result<(), CgroupError> {
        for (key, dir) in &self.paths.paths {
            if key == UNIFIED_KEY {
                if self.paths.mode == CgroupMode::V2 {
                    v2::create(dir)?;
                } else {
                    files::mkdir_all(dir)?;
                }
            } else if key == "cpuset" {
                v1::create_cpuset(dir)?;
            } else {
                files::mkdir_all(dir)?;
            }
        }
        Ok(())
    }

    /// Write the configured limits (memory, cpu, cpuset, pids, blkio/io, hugetlb, devices, ...).
    ///
    /// Device rules are only written when `resources.devices` is `Some` (an empty list still
    /// means "deny everything but runc's default devices"); `None` leaves the device cgroup
    /// untouched, which is what an update wants.
    pub fn apply(&self, resources: &LinuxResources) -> Result<(), CgroupError> {
        match self.paths.mode {
            CgroupMode::V1 | CgroupMode::Hybrid => v1::apply(&self.paths, resources),
            CgroupMode::V2 => v2::apply(&self.paths, resources),
        }
    }

    /// Move `pid` (the whole process) into every hierarchy's directory.
    pub fn add_task(&self, pid: i32) -> Result<(), CgroupError> {
        if pid <= 0 {
            return Err(CgroupError::InvalidValue {
                what: "pid".into(),
                reason: format!("{pid} is not a process id"),
            });
        }
        for dir in self.paths.unique_dirs() {
            files::write(dir, "cgroup.procs", &pid.to_string())?;
        }
        Ok(())
    }

    pub fn freeze(&self) -> Result<(), CgroupError> {
        match self.freezer_dir()? {
            Freezer::V1(dir) => v1::freeze(dir),
            Freezer::V2(dir) => v2::freeze(dir),
        }
    }

    pub fn thaw(&self) -> Result<(), CgroupError> {
        match self.freezer_dir()? {
            Freezer::V1(dir) => v1::thaw(dir),
            Freezer::V2(dir) => v2::thaw(dir),
        }
    }

    pub fn is_frozen(&self) -> Result<bool, CgroupError> {
        match self.freezer_dir()? {
            Freezer::V1(dir) => v1::is_frozen(dir),
            Freezer::V2(dir) => v2::is_frozen(dir),
        }
    }

    /// Every pid in the container's cgroup (recursively).
    pub fn pids(&self) -> Result<Vec<i32>, CgroupError> {
        let dir = self.pids_dir()?;
        let mut out = Vec::new();
        files::collect_procs(dir, &mut out)?;
        out.sort_unstable();
        out.dedup();
        Ok(out)
    }

    pub fn stats(&self) -> Result<Stats, CgroupError> {
        match self.paths.mode {
            CgroupMode::V1 | CgroupMode::Hybrid => stats::collect_v1(&self.paths),
            CgroupMode::V2 => {
                let dir = self.require(UNIFIED_KEY, "stats")?;
                stats::collect_v2(dir)
            }
        }
    }

    /// Start watching for OOM kills in the container's memory cgroup (v1: eventfd registered
    /// on memory.oom_control; v2: the oom_kill counter of memory.events).
    pub fn oom_notifier(&self) -> Result<OomNotifier, CgroupError> {
        match self.paths.mode {
            CgroupMode::V1 | CgroupMode::Hybrid => {
                OomNotifier::new_v1(self.require("memory", "OOM notifications")?)
            }
            CgroupMode::V2 => OomNotifier::new_v2(self.require(UNIFIED_KEY, "OOM notifications")?),
        }
    }

    /// runc `kill --all`: freeze the cgroup, send `signal` to every process in it, thaw.
    /// On cgroup v2 with `cgroup.kill` (Linux 5.14+), SIGKILL is delivered through that file.
    pub fn kill_all(&self, signal: i32) -> Result<(), CgroupError> {
        if self.paths.mode == CgroupMode::V2 && signal == libc::SIGKILL {
            let dir = self.require(UNIFIED_KEY, "kill")?;
            if files::exists(dir, "cgroup.kill") {
                return files::write(dir, "cgroup.kill", "1");
            }
        }
        let frozen = match self.freeze() {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(error = %e, "kill_all: cannot freeze the cgroup, signalling anyway");
                false
            }
        };
        let result = self.signal_all(signal);
        if frozen {
            let thawed = self.thaw();
            result?;
            thawed
        } else {
            result
        }
    }

    fn signal_all(&self, signal: i32) -> Result<(), CgroupError> {
        let pids = self.pids()?;
        let mut first_err = None;
        for pid in pids {
            // SAFETY: kill(2) has no memory-safety preconditions; pid comes from cgroup.procs.
            let rc = unsafe { libc::kill(pid, signal) };
            if rc != 0 {
                let err = std::io::Error::last_os_error();
                if err.raw_os_error() == Some(libc::ESRCH) {
                    continue;
                }
                tracing::warn!(pid, signal, error = %err, "kill_all: kill failed");
                if first_err.is_none() {
                    first_err = Some(CgroupError::Other(format!(
                        "sending signal {signal} to pid {pid}: {err}"
                    )));
                }
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// Remove the container's directories (retrying while the kernel still reports EBUSY).
    /// Sub-cgroups the container created inside its own directories are removed first; parents
    /// of the container's directories are never touched.
    pub fn destroy(&self) -> Result<(), CgroupError> {
        let mut dirs: Vec<&Path> = self.paths.unique_dirs();
        // Deepest first, in case one configured path lies below another.
        dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
        let mut first_err = None;
        for dir in dirs {
            if let Err(e) = files::remove_tree(dir) {
                tracing::warn!(dir = %dir.display(), error = %e, "cgroup removal failed");
                if first_err.is_none() {
                    first_err = Some(e);
                }
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    fn require(&self, key: &str, what: &str) -> Result<&Path, CgroupError> {
        self.paths
            .get(key)
            .ok_or_else(|| CgroupError::NotAvailable {
                what: what.to_string(),
                reason: format!("the {key} cgroup hierarchy is not mounted"),
            })
    }

    fn freezer_dir(&self) -> Result<Freezer<'_>, CgroupError> {
        match self.paths.mode {
            CgroupMode::V1 | CgroupMode::Hybrid => {
                Ok(Freezer::V1(self.paths.get("freezer").ok_or_else(|| {
                    CgroupError::Unsupported("the v1 freezer hierarchy is not mounted".into())
                })?))
            }
            CgroupMode::V2 => Ok(Freezer::V2(self.require(UNIFIED_KEY, "freezer")?)),
        }
    }

    fn pids_dir(&self) -> Result<&Path, CgroupError> {
        let candidates: &[&str] = match self.paths.mode {
            CgroupMode::V2 => &[UNIFIED_KEY],
            CgroupMode::V1 | CgroupMode::Hybrid => &["pids", "memory", "freezer", "cpu", "devices"],
        };
        candidates
            .iter()
            .find_map(|k| self.paths.get(k))
            .or_else(|| self.paths.paths.values().next().map(PathBuf::as_path))
            .ok_or_else(|| CgroupError::Other("no cgroup paths configured".into()))
    }
}

enum Freezer<'a> {
    V1(&'a Path),
    V2(&'a Path),
}

/// How long `destroy` keeps retrying a directory the kernel reports as busy.
pub(crate) const RMDIR_RETRIES: u32 = 10;
pub(crate) const RMDIR_BACKOFF: Duration = Duration::from_millis(10);

/// cgroup v1 `cpu.shares` to cgroup v2 `cpu.weight`, as runc converts it:
/// `1 + ((shares - 2) * 9999) / 262142`, with shares clamped to the v1 range [2, 262144].
/// 0 means "unset" and maps to 0.
pub fn shares_to_weight(shares: u64) -> u64 {
    if shares == 0 {
        return 0;
    }
    let s = shares.clamp(2, 262_144);
    1 + ((s - 2) * 9999) / 262_142
}

/// cgroup v1 blkio weight (10..1000) to cgroup v2 io.weight (1..10000), as runc converts it.
pub fn blkio_weight_to_io_weight(weight: u16) -> u64 {
    if weight == 0 {
        return 0;
    }
    let w = u64::from(weight.clamp(10, 1000));
    1 + (w - 10) * 9999 / 990
}

/// The v2 `memory.swap.max` value for an OCI `memory.swap` (memory+swap) and `memory.limit`,
/// as runc's `ConvertMemorySwapToCgroupV2Value` computes it: -1 = "max", 0 = unset.
pub fn swap_v2_value(swap: i64, limit: i64) -> Result<i64, CgroupError> {
    let invalid = |reason: &str| CgroupError::InvalidValue {
        what: format!("memory swap {swap} with limit {limit}"),
        reason: reason.to_string(),
    };
    if limit == -1 && swap == 0 {
        return Ok(-1);
    }
    if swap == -1 || swap == 0 {
        return Ok(swap);
    }
    if limit == 0 || limit == -1 {
        return Err(invalid("unable to set swap limit without memory limit"));
    }
    if limit < 0 {
        return Err(invalid("invalid memory value"));
    }
    if swap < limit {
        return Err(invalid("memory+swap limit should be >= memory limit"));
    }
    Ok(swap - limit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_to_weight_matches_runc() {
        assert_eq!(shares_to_weight(0), 0);
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(1024), 39);
        assert_eq!(shares_to_weight(262_144), 10_000);
        // Out of range values are clamped rather than underflowing.
        assert_eq!(shares_to_weight(1), 1);
        assert_eq!(shares_to_weight(1_000_000), 10_000);
    }

    #[test]
    fn blkio_weight_conversion() {
        assert_eq!(blkio_weight_to_io_weight(0), 0);
        assert_eq!(blkio_weight_to_io_weight(10), 1);
        assert_eq!(blkio_weight_to_io_weight(500), 4950);
        assert_eq!(blkio_weight_to_io_weight(1000), 10_000);
    }

    #[test]
    fn swap_conversion() {
        // Unlimited memory, swap unset: unlimited swap.
        assert_eq!(swap_v2_value(0, -1).unwrap(), -1);
        assert_eq!(swap_v2_value(0, 100).unwrap(), 0);
        assert_eq!(swap_v2_value(-1, 100).unwrap(), -1);
        assert_eq!(swap_v2_value(300, 100).unwrap(), 200);
        // memory == memory+swap: no swap at all.
        assert_eq!(swap_v2_value(100, 100).unwrap(), 0);
        assert!(swap_v2_value(50, 100).is_err());
        assert!(swap_v2_value(100, 0).is_err());
        assert!(swap_v2_value(100, -1).is_err());
    }

    #[test]
    fn unique_dirs_dedups_comounted() {
        let mut paths = BTreeMap::new();
        paths.insert(
            "cpu".to_string(),
            PathBuf::from("/sys/fs/cgroup/cpu,cpuacct/x"),
        );
        paths.insert(
            "cpuacct".to_string(),
            PathBuf::from("/sys/fs/cgroup/cpu,cpuacct/x"),
        );
        paths.insert(
            "memory".to_string(),
            PathBuf::from("/sys/fs/cgroup/memory/x"),
        );
        let p = CgroupPaths {
            mode: CgroupMode::V1,
            paths,
        };
        assert_eq!(p.unique_dirs().len(), 2);
    }

    #[test]
    fn errors_name_file_and_value() {
        let e = CgroupError::Write {
            path: PathBuf::from("/sys/fs/cgroup/memory/x/memory.limit_in_bytes"),
            value: "100".into(),
            source: std::io::Error::from_raw_os_error(libc::EINVAL),
        };
        let s = e.to_string();
        assert!(
            s.contains("memory.limit_in_bytes") && s.contains("\"100\""),
            "{s}"
        );
    }
}
