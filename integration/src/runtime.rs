//! OCI runtime CLIs (orca-runtime, runc, crun), each with a private `--root`.

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use tempfile::TempDir;

use crate::util::{bin_path, output_via_files, std_path_env, try_bin_path, which};

/// The shell script crun runs under: crun refuses cgroup-v1 *hybrid* hosts
/// (it sees the cgroup2 mount at /sys/fs/cgroup/unified), so it runs in a
/// private mount namespace where that mount is gone, and works as on v1.
/// Usage: `unshare -m sh -c CRUN_WRAPPER sh CRUN ROOT ARGS…`.
pub const CRUN_WRAPPER: &str = r#"umount /sys/fs/cgroup/unified 2>/dev/null; crun="$1"; root="$2"; shift 2; exec "$crun" --root "$root" "$@""#;

/// The wrapper with nothing to run (`exec true`), to measure its own cost.
pub const CRUN_WRAPPER_NOOP: &str = "umount /sys/fs/cgroup/unified 2>/dev/null; exec true";

/// Whether this host is cgroup-v1 hybrid (a cgroup2 mount at
/// /sys/fs/cgroup/unified), which crun refuses unless wrapped.
pub fn is_cgroup_hybrid() -> bool {
    crate::mounts::all_mount_points()
        .iter()
        .any(|m| m == Path::new("/sys/fs/cgroup/unified"))
}

/// Which runtime a [`Runtime`] drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RuntimeKind {
    /// This workspace's orca-runtime.
    Orca,
    /// Debian's runc.
    Runc,
    /// Debian's crun (wrapped in `unshare -m` on hybrid hosts).
    Crun,
}

impl RuntimeKind {
    /// "orca", "runc" or "crun".
    pub fn name(self) -> &'static str {
        match self {
            RuntimeKind::Orca => "orca",
            RuntimeKind::Runc => "runc",
            RuntimeKind::Crun => "crun",
        }
    }

    /// Where the binary is, if present.
    pub fn locate(self) -> Option<PathBuf> {
        match self {
            RuntimeKind::Orca => try_bin_path("orca-runtime"),
            RuntimeKind::Runc => which("runc"),
            RuntimeKind::Crun => which("crun"),
        }
    }
}

/// An OCI runtime binary with its own temp `--root` (state dir). Dropping it
/// force-deletes every container it still knows and removes the root.
pub struct Runtime {
    kind: RuntimeKind,
    binary: PathBuf,
    root: TempDir,
    wrap_crun: bool,
}

impl Runtime {
    /// This workspace's orca-runtime (see [`crate::bin_path`]); panics if it
    /// has not been built.
    #[track_caller]
    pub fn orca() -> Runtime {
        Runtime::with_binary(RuntimeKind::Orca, bin_path("orca-runtime"))
    }

    /// Debian's runc; panics with the package to install if missing.
    #[track_caller]
    pub fn runc() -> Runtime {
        Runtime::with_binary(RuntimeKind::Runc, crate::util::require_tool("runc"))
    }

    /// Debian's crun; panics with the package to install if missing.
    #[track_caller]
    pub fn crun() -> Runtime {
        crate::util::require_tool("unshare");
        Runtime::with_binary(RuntimeKind::Crun, crate::util::require_tool("crun"))
    }

    /// The runtime of that kind if its binary is present, else `None`.
    pub fn try_new(kind: RuntimeKind) -> Option<Runtime> {
        if kind == RuntimeKind::Crun && which("unshare").is_none() {
            return None;
        }
        kind.locate().map(|b| Runtime::with_binary(kind, b))
    }

    /// A runtime of `kind` at an explicit path.
    #[track_caller]
    pub fn with_binary(kind: RuntimeKind, binary: PathBuf) -> Runtime {
        let root = tempfile::Builder::new()
            .prefix(&format!("orca-{}-root-", kind.name()))
            .tempdir()
            .unwrap_or_else(|e| panic!("cannot create a temp dir for a runtime root: {e}"));
        Runtime {
            kind,
            binary,
            root,
            wrap_crun: kind == RuntimeKind::Crun && is_cgroup_hybrid(),
        }
    }

    /// Which runtime this is.
    pub fn kind(&self) -> RuntimeKind {
        self.kind
    }

    /// "orca", "runc" or "crun".
    pub fn name(&self) -> &'static str {
        self.kind.name()
    }

    /// The runtime binary.
    pub fn binary(&self) -> &Path {
        &self.binary
    }

    /// The private `--root` state directory.
    pub fn root(&self) -> &Path {
        self.root.path()
    }

    /// Whether commands run inside the `unshare -m` wrapper (crun on a
    /// hybrid host).
    pub fn is_wrapped(&self) -> bool {
        self.wrap_crun
    }

    /// The runtime binary with `--root ROOT` set; add the subcommand and its
    /// arguments. For crun on a hybrid host this is
    /// `unshare -m sh -c CRUN_WRAPPER sh CRUN ROOT`, which appends them.
    pub fn cmd(&self) -> Command {
        let mut c;
        if self.wrap_crun {
            c = Command::new("unshare");
            c.args(["-m", "sh", "-c", CRUN_WRAPPER, "sh"])
                .arg(&self.binary)
                .arg(self.root.path());
        } else {
            c = Command::new(&self.binary);
            c.arg("--root").arg(self.root.path());
        }
        c.env("PATH", std_path_env());
        c
    }

    /// A command that does everything [`Runtime::cmd`]'s wrapper does but
    /// runs nothing (`exec true`), or `None` when there is no wrapper.
    pub fn wrapper_noop_cmd(&self) -> Option<Command> {
        self.wrap_crun.then(|| {
            let mut c = Command::new("unshare");
            c.args(["-m", "sh", "-c", CRUN_WRAPPER_NOOP]);
            c.env("PATH", std_path_env());
            c
        })
    }

    /// Runs the runtime with `args` (stdin from /dev/null), capturing output.
    /// Output goes through temp files, not pipes, so this returns when the
    /// runtime exits even if a detached container (`run -d`) inherited its
    /// stdout/stderr.
    #[track_caller]
    pub fn run<S: AsRef<OsStr>>(&self, args: &[S]) -> Output {
        let mut c = self.cmd();
        c.args(args).stdin(Stdio::null());
        match output_via_files(&mut c) {
            Ok(o) => o,
            Err(e) => panic!("cannot run {c:?}: {e}"),
        }
    }

    /// Container ids the runtime still knows: `list -q` plus the entries
    /// of its state directory.
    pub fn container_ids(&self) -> Vec<String> {
        let mut ids = BTreeSet::new();
        if let Ok(out) = output_via_files(self.cmd().args(["list", "-q"]).stdin(Stdio::null())) {
            if out.status.success() {
                for l in String::from_utf8_lossy(&out.stdout).lines() {
                    let l = l.trim();
                    if !l.is_empty() {
                        ids.insert(l.to_string());
                    }
                }
            }
        }
        if let Ok(rd) = std::fs::read_dir(self.root.path()) {
            for e in rd.filter_map(|e| e.ok()) {
                if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    if let Some(n) = e.file_name().to_str() {
                        ids.insert(n.to_string());
                    }
                }
            }
        }
        ids.into_iter().collect()
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        for id in self.container_ids() {
            let _ = output_via_files(self.cmd().args(["kill", &id, "9"]).stdin(Stdio::null()));
            let _ = output_via_files(self.cmd().args(["delete", "-f", &id]).stdin(Stdio::null()));
        }
        let _ = crate::mounts::unmount_all_under(self.root.path());
    }
}
