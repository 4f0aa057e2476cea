//! Driving a runc-compatible runtime through its command line, as go-runc
//! does: `BINARY --root R --log BUNDLE/log.json --log-format json [--systemd-cgroup] CMD …`,
//! errors taken from the last error line of `log.json`.
//!
//! Runtime processes are reaped by the [`Reaper`](crate::reaper::Reaper)
//! thread; each invocation subscribes before spawning so its exit status is
//! never lost.

use std::cell::Cell;
use std::ffi::OsString;
use std::fs;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::error::{Error, Result};
use crate::reaper::Reaper;

/// Name of the default runtime binary.
pub const DEFAULT_RUNTIME: &str = "orca-runtime";
/// Parent of the default `--root`: `<this>/<binary name>/<namespace>`.
pub const DEFAULT_ROOT_BASE: &str = "/run/containerd/orca";

/// How the shim invokes its runtime.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct RuntimeCli {
    pub binary: PathBuf,
    /// `--root` (already including the namespace).
    pub root: PathBuf,
    pub systemd_cgroup: bool,
    /// `--log` file.
    pub log: PathBuf,
}

/// The stdio of the runtime process for create/exec.
#[derive(Default)]
pub struct RuntimeStdio {
    pub stdin: Option<OwnedFd>,
    pub stdout: Option<OwnedFd>,
    pub stderr: Option<OwnedFd>,
}

fn is_executable(p: &Path) -> bool {
    fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Resolves the runtime binary: `name` if it has a slash, else next to the
/// shim's own executable (for the default only), else in `PATH`.
pub fn resolve_binary(name: &str) -> Result<PathBuf> {
    let name = if name.is_empty() {
        DEFAULT_RUNTIME
    } else {
        name
    };
    if name.contains('/') {
        let p = PathBuf::from(name);
        return if is_executable(&p) {
            Ok(p)
        } else {
            Err(Error::InvalidArgument(format!(
                "runtime binary {name} is not an executable file"
            )))
        };
    }
    if name == DEFAULT_RUNTIME {
        if let Some(dir) = std::env::current_exe()
            .ok()
            .and_then(|e| e.parent().map(Path::to_path_buf))
        {
            let p = dir.join(name);
            if is_executable(&p) {
                return Ok(p);
            }
        }
    }
    let path = std::env::var_os("PATH")
        .unwrap_or_else(|| "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
    for d in std::env::split_paths(&path) {
        let p = d.join(name);
        if is_executable(&p) {
            return Ok(p);
        }
    }
    Err(Error::InvalidArgument(format!(
        "runtime binary {name:?} not found next to the shim or in PATH"
    )))
}

/// The last error message in a runtime's JSON log (runc's `--log-format json`).
pub fn last_error_in_log(text: &str) -> Option<String> {
    let mut last = None;
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let level = v.get("level").and_then(|l| l.as_str()).unwrap_or("");
        if level == "error" || level == "fatal" || level == "panic" {
            if let Some(m) = v.get("msg").and_then(|m| m.as_str()) {
                last = Some(m.to_string());
            }
        }
    }
    last
}

/// Called while a runtime command runs, with a function telling whether it has exited.
pub type WhileRunning<'a> = &'a mut dyn FnMut(&dyn Fn() -> bool);

impl RuntimeCli {
    pub fn new(binary: PathBuf, root: PathBuf, systemd_cgroup: bool, bundle: &Path) -> RuntimeCli {
        RuntimeCli {
            binary,
            root,
            systemd_cgroup,
            log: bundle.join("log.json"),
        }
    }

    /// The default root for a binary in a namespace.
    pub fn default_root(base: &str, binary: &Path, namespace: &str) -> PathBuf {
        let name = binary
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| DEFAULT_RUNTIME.to_string());
        if base.is_empty() {
            Path::new(DEFAULT_ROOT_BASE).join(name).join(namespace)
        } else {
            Path::new(base).join(namespace)
        }
    }

    fn command(&self, args: &[OsString]) -> Command {
        let mut c = Command::new(&self.binary);
        c.arg("--root")
            .arg(&self.root)
            .arg("--log")
            .arg(&self.log)
            .args(["--log-format", "json"]);
        if self.systemd_cgroup {
            c.arg("--systemd-cgroup");
        }
        c.args(args);
        c
    }

    /// Runs one runtime command. `input` goes to its stdin (when `stdio`
    /// gives none); stdout is captured when `stdio` gives none. `during` is
    /// called after spawning with a function telling whether the runtime has
    /// exited (for the console socket handshake).
    pub fn run(
        &self,
        args: Vec<OsString>,
        stdio: RuntimeStdio,
        input: Option<&[u8]>,
        during: Option<WhileRunning<'_>>,
    ) -> Result<Vec<u8>> {
        let what = args
            .first()
            .map(|a| a.to_string_lossy().into_owned())
            .unwrap_or_default();
        if !is_executable(&self.binary) {
            return Err(Error::InvalidArgument(format!(
                "runtime binary {} is not an executable file",
                self.binary.display()
            )));
        }
        let mut cmd = self.command(&args);
        if matches!(what.as_str(), "create" | "exec" | "run") {
            read_only_binary_for(&mut cmd, &self.binary);
        }
        let capture = stdio.stdout.is_none();
        cmd.stdin(match (stdio.stdin, input) {
            (Some(fd), _) => Stdio::from(fd),
            (None, Some(_)) => Stdio::piped(),
            (None, None) => Stdio::null(),
        });
        cmd.stdout(match stdio.stdout {
            Some(fd) => Stdio::from(fd),
            None => Stdio::piped(),
        });
        let capture_err = stdio.stderr.is_none();
        cmd.stderr(match stdio.stderr {
            Some(fd) => Stdio::from(fd),
            None => Stdio::piped(),
        });
        let reaper = Reaper::global();
        let sub = reaper.subscribe();
        let mut child = cmd
            .spawn()
            .map_err(|e| Error::io(format!("spawning {}", self.binary.display()), e))?;
        drop(cmd);
        reaper.notify_spawned();
        let pid = child.id() as i32;
        if let (Some(mut w), Some(data)) = (child.stdin.take(), input) {
            let _ = w.write_all(data);
        }
        let mut out = Vec::new();
        let mut err = Vec::new();
        let mut stderr = child.stderr.take();
        let err_thread = if capture_err {
            stderr.take().map(|mut s| {
                std::thread::Builder::new()
                    .stack_size(32 * 1024)
                    .spawn(move || {
                        let mut v = Vec::new();
                        let _ = s.read_to_end(&mut v);
                        v
                    })
            })
        } else {
            None
        };
        if capture {
            if let Some(mut o) = child.stdout.take() {
                let _ = o.read_to_end(&mut out);
            }
        }
        let exited: Cell<Option<u32>> = Cell::new(None);
        if let Some(f) = during {
            let check = || {
                if exited.get().is_none() {
                    exited.set(sub.try_take(pid));
                }
                exited.get().is_some()
            };
            f(&check);
        }
        let code = match exited.get() {
            Some(c) => c,
            None => sub.wait(pid),
        };
        if let Some(Ok(h)) = err_thread {
            err = h.join().unwrap_or_default();
        }
        drop(child);
        if code != 0 {
            let log = fs::read_to_string(&self.log).unwrap_or_default();
            let msg = last_error_in_log(&log)
                .or_else(|| {
                    let e = String::from_utf8_lossy(&err).trim().to_string();
                    (!e.is_empty()).then_some(e)
                })
                .unwrap_or_else(|| format!("exit status {code}"));
            return Err(Error::Runtime { cmd: what, msg });
        }
        Ok(out)
    }

    fn simple(&self, args: &[&str]) -> Result<Vec<u8>> {
        self.run(
            args.iter().map(OsString::from).collect(),
            RuntimeStdio::default(),
            None,
            None,
        )
    }

    pub fn start(&self, id: &str) -> Result<()> {
        self.simple(&["start", id]).map(drop)
    }

    pub fn kill(&self, id: &str, signal: u32, all: bool) -> Result<()> {
        let sig = signal.to_string();
        if all {
            self.simple(&["kill", "--all", id, &sig]).map(drop)
        } else {
            self.simple(&["kill", id, &sig]).map(drop)
        }
    }

    pub fn delete(&self, id: &str, force: bool) -> Result<()> {
        if force {
            self.simple(&["delete", "--force", id]).map(drop)
        } else {
            self.simple(&["delete", id]).map(drop)
        }
    }

    pub fn pause(&self, id: &str) -> Result<()> {
        self.simple(&["pause", id]).map(drop)
    }

    pub fn resume(&self, id: &str) -> Result<()> {
        self.simple(&["resume", id]).map(drop)
    }

    /// `ps --format json`: the container's pids.
    pub fn ps(&self, id: &str) -> Result<Vec<u32>> {
        let out = self.simple(&["ps", "--format", "json", id])?;
        let text = String::from_utf8_lossy(&out);
        let text = text.trim();
        if text.is_empty() || text == "null" {
            return Ok(Vec::new());
        }
        serde_json::from_str(text).map_err(|e| Error::Runtime {
            cmd: "ps".into(),
            msg: format!("cannot parse its output {text:?}: {e}"),
        })
    }

    /// `update --resources -` with the LinuxResources JSON on stdin.
    pub fn update(&self, id: &str, resources_json: &[u8]) -> Result<()> {
        self.run(
            ["update", "--resources", "-", id]
                .iter()
                .map(OsString::from)
                .collect(),
            RuntimeStdio::default(),
            Some(resources_json),
            None,
        )
        .map(drop)
    }
}

/// For the commands that put a process into a container: the runtime is
/// executed in a mount namespace of its own (a slave of ours, so nothing
/// propagates back) where its binary is bind-mounted read-only over
/// itself, so `/proc/<pid>/exe` of everything it forks cannot be opened for
/// writing (CVE-2019-5736). A runtime that checks this itself (orca-runtime
/// does, as runc 1.2) then skips the re-exec it would otherwise do for the
/// same protection; one that does not is unaffected. Any step that fails
/// leaves the runtime to protect itself.
fn read_only_binary_for(cmd: &mut Command, binary: &Path) {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::process::CommandExt;
    let Ok(bin) = std::ffi::CString::new(binary.as_os_str().as_bytes()) else {
        return;
    };
    if !binary.is_absolute() {
        return;
    }
    let root = c"/";
    // SAFETY: between fork and exec the closure makes only raw syscalls
    // (unshare, mount) on strings allocated before the fork.
    unsafe {
        cmd.pre_exec(move || {
            if libc::unshare(libc::CLONE_NEWNS) != 0 {
                return Ok(());
            }
            let none = std::ptr::null::<libc::c_char>();
            if libc::mount(
                none,
                root.as_ptr(),
                none,
                libc::MS_SLAVE | libc::MS_REC,
                std::ptr::null(),
            ) != 0
                || libc::mount(
                    bin.as_ptr(),
                    bin.as_ptr(),
                    none,
                    libc::MS_BIND,
                    std::ptr::null(),
                ) != 0
            {
                return Ok(());
            }
            libc::mount(
                none,
                bin.as_ptr(),
                none,
                libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY,
                std::ptr::null(),
            );
            Ok(())
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_error_line_wins() {
        let log = r#"{"level":"info","msg":"hello"}
{"level":"error","msg":"first"}
not json
{"level":"error","msg":"container_linux.go: exec: \"nope\": not found"}
{"level":"warning","msg":"later"}
"#;
        assert_eq!(
            last_error_in_log(log).as_deref(),
            Some("container_linux.go: exec: \"nope\": not found")
        );
        assert_eq!(last_error_in_log(""), None);
    }

    #[test]
    fn default_roots() {
        assert_eq!(
            RuntimeCli::default_root("", Path::new("/usr/sbin/runc"), "default"),
            PathBuf::from("/run/containerd/orca/runc/default")
        );
        assert_eq!(
            RuntimeCli::default_root("/x", Path::new("/usr/sbin/runc"), "ns"),
            PathBuf::from("/x/ns")
        );
    }
}
