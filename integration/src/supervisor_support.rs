//! A private orca-supervisor on a unix socket in a temp dir, driven by
//! Debian's `ctr` (containerd 1.6) like a containerd.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use tempfile::TempDir;

use crate::mounts::unmount_all_under;
use crate::util::{bin_path, require_tool, std_path_env, terminate, wait_until};

/// A running `orca-supervisor` with its own root, state and socket, logging
/// at debug level to a file. Dropping it kills and deletes every task and
/// container, stops it and the shims it started, unmounts what is left
/// under its temp dir and removes it.
pub struct Supervisor {
    child: Option<Child>,
    dir: TempDir,
    ctr: PathBuf,
}

impl Supervisor {
    /// Starts `orca-supervisor` and waits until `ctr version` answers.
    #[track_caller]
    pub fn start() -> Supervisor {
        let bin = bin_path("orca-supervisor");
        let ctr = require_tool("ctr");
        let dir = tempfile::Builder::new()
            .prefix("orca-sup-")
            .tempdir()
            .unwrap_or_else(|e| panic!("cannot create a temp dir for orca-supervisor: {e}"));
        let t = dir.path();
        let log_path = t.join("supervisor.log");
        let log = fs::File::create(&log_path)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", log_path.display()));
        let log2 = log
            .try_clone()
            .unwrap_or_else(|e| panic!("cannot dup a file descriptor: {e}"));
        let child = Command::new(&bin)
            .arg("--root")
            .arg(t.join("root"))
            .arg("--state")
            .arg(t.join("state"))
            .arg("--address")
            .arg(t.join("s.sock"))
            .args(["--log-level", "debug"])
            .env("PATH", std_path_env())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let mut s = Supervisor {
            child: Some(child),
            dir,
            ctr,
        };
        let sock = s.socket();
        let mut exited = false;
        let ready = wait_until(Duration::from_secs(30), || {
            if let Some(Ok(Some(_))) = s.child.as_mut().map(|c| c.try_wait()) {
                exited = true;
                return true;
            }
            sock.exists() && s.ctr_ns("default", &["version"]).status.success()
        });
        if !ready || exited {
            panic!(
                "orca-supervisor {}; its log:\n{}",
                if exited {
                    "exited during startup"
                } else {
                    "did not answer `ctr version` within 30 s"
                },
                s.log()
            );
        }
        s
    }

    /// The gRPC socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("s.sock")
    }

    /// The temp dir holding root/, state/, the sockets and the log.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The supervisor's log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("supervisor.log")).unwrap_or_default()
    }

    /// A `ctr -a SOCK -n NAMESPACE` command, ready for more arguments.
    pub fn ctr_cmd_ns(&self, namespace: &str) -> Command {
        let mut c = Command::new(&self.ctr);
        c.arg("-a")
            .arg(self.socket())
            .arg("-n")
            .arg(namespace)
            .env("PATH", std_path_env())
            .stdin(Stdio::null());
        c
    }

    /// Runs `ctr -a SOCK -n NAMESPACE ARGS…`.
    #[track_caller]
    pub fn ctr_ns(&self, namespace: &str, args: &[&str]) -> Output {
        let mut c = self.ctr_cmd_ns(namespace);
        c.args(args);
        match crate::util::output_via_files(&mut c) {
            Ok(o) => o,
            Err(e) => panic!("cannot run {c:?}: {e}"),
        }
    }

    fn quiet_list(&self, ns: &str, args: &[&str]) -> Vec<String> {
        let out = self.ctr_ns(ns, args);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| l.trim().to_string())
            .filter(|l| !l.is_empty())
            .collect()
    }

    /// Kills and deletes every task and container in every namespace.
    pub fn cleanup_all(&self) {
        for ns in self.quiet_list("default", &["namespaces", "ls", "-q"]) {
            for task in self.quiet_list(&ns, &["tasks", "ls", "-q"]) {
                let _ = self.ctr_ns(&ns, &["tasks", "kill", "-a", "-s", "SIGKILL", &task]);
                let _ = wait_until(Duration::from_secs(5), || {
                    self.ctr_ns(&ns, &["tasks", "delete", &task])
                        .status
                        .success()
                });
            }
            for c in self.quiet_list(&ns, &["containers", "ls", "-q"]) {
                let _ = self.ctr_ns(&ns, &["containers", "delete", &c]);
            }
        }
    }

    /// Pids of shims started by this supervisor (their command line names
    /// its socket).
    fn shim_pids(&self) -> Vec<i32> {
        let sock = self.socket();
        let sock = sock.to_string_lossy();
        let mut pids = Vec::new();
        let Ok(rd) = fs::read_dir("/proc") else {
            return pids;
        };
        for e in rd.filter_map(|e| e.ok()) {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                continue;
            };
            let Ok(cmdline) = fs::read(e.path().join("cmdline")) else {
                continue;
            };
            let args: Vec<String> = cmdline
                .split(|b| *b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            if args.iter().any(|a| a == sock.as_ref()) {
                pids.push(pid);
            }
        }
        pids
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        let alive = matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)));
        if alive {
            self.cleanup_all();
        }
        if let Some(mut child) = self.child.take() {
            terminate(&mut child, Duration::from_secs(5));
        }
        for pid in self.shim_pids() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let _ = unmount_all_under(self.dir.path());
    }
}
