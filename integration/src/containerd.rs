//! A private containerd (Debian's containerd 1.6) on a unix socket in a temp dir.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use tempfile::TempDir;

use crate::mounts::unmount_all_under;
use crate::util::{require_tool, std_path_env, terminate, wait_until};

/// The namespace [`Containerd::ctr`] works in.
pub const TEST_NAMESPACE: &str = "orca-test";

/// A running containerd with its own root, state, socket and config (CRI
/// disabled, nothing that needs the network), logging at debug level to a
/// file. Dropping it kills every task in every namespace, deletes the
/// containers, stops containerd and its shims, unmounts whatever is left
/// under its temp dir and removes it.
pub struct Containerd {
    child: Option<Child>,
    dir: TempDir,
    ctr: PathBuf,
}

impl Containerd {
    /// Starts containerd and waits until `ctr version` answers.
    #[track_caller]
    pub fn start() -> Containerd {
        let bin = require_tool("containerd");
        let ctr = require_tool("ctr");
        require_tool("containerd-shim-runc-v2");
        let dir = tempfile::Builder::new()
            .prefix("orca-ctrd-")
            .tempdir()
            .unwrap_or_else(|e| panic!("cannot create a temp dir for containerd: {e}"));
        let t = dir.path();
        for d in ["root", "state", "opt"] {
            fs::create_dir_all(t.join(d))
                .unwrap_or_else(|e| panic!("cannot create {}: {e}", t.join(d).display()));
        }
        let sock = t.join("c.sock");
        let config = t.join("config.toml");
        let text = format!(
            r#"version = 2
root = "{root}"
state = "{state}"
oom_score = 0
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[grpc]
  address = "{sock}"

[ttrpc]
  address = "{sock}.ttrpc"

[debug]
  level = "debug"

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "{opt}"
"#,
            root = t.join("root").display(),
            state = t.join("state").display(),
            sock = sock.display(),
            opt = t.join("opt").display(),
        );
        fs::write(&config, text)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", config.display()));
        let log_path = t.join("containerd.log");
        let log = fs::File::create(&log_path)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", log_path.display()));
        let log2 = log
            .try_clone()
            .unwrap_or_else(|e| panic!("cannot dup a file descriptor: {e}"));
        let child = Command::new(&bin)
            .arg("--config")
            .arg(&config)
            .arg("--root")
            .arg(t.join("root"))
            .arg("--state")
            .arg(t.join("state"))
            .arg("--address")
            .arg(&sock)
            .args(["--log-level", "debug"])
            .env("PATH", std_path_env())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let mut c = Containerd {
            child: Some(child),
            dir,
            ctr,
        };
        let mut exited = false;
        let ready = wait_until(Duration::from_secs(30), || {
            if let Some(Ok(Some(_))) = c.child.as_mut().map(|ch| ch.try_wait()) {
                exited = true;
                return true;
            }
            sock.exists() && c.ctr(&["version"]).status.success()
        });
        if !ready || exited {
            let log = c.log();
            panic!(
                "containerd {} (socket {}); its log:\n{log}",
                if exited {
                    "exited during startup"
                } else {
                    "did not answer `ctr version` within 30 s"
                },
                sock.display()
            );
        }
        c
    }

    /// The containerd gRPC socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("c.sock")
    }

    /// The temp dir holding root/, state/, the socket, config and log.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Contents of containerd's log so far (for failure messages).
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }

    /// The pid of the containerd process.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
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

    /// Runs `ctr -a SOCK -n orca-test ARGS…` and returns its output.
    #[track_caller]
    pub fn ctr(&self, args: &[&str]) -> Output {
        self.ctr_ns(TEST_NAMESPACE, args)
    }

    /// Runs `ctr -a SOCK -n NAMESPACE ARGS…` and returns its output.
    #[track_caller]
    pub fn ctr_ns(&self, namespace: &str, args: &[&str]) -> Output {
        let mut c = self.ctr_cmd_ns(namespace);
        c.args(args);
        match c.output() {
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
        let mut namespaces = self.quiet_list(TEST_NAMESPACE, &["namespaces", "ls", "-q"]);
        if !namespaces.iter().any(|n| n == TEST_NAMESPACE) {
            namespaces.push(TEST_NAMESPACE.to_string());
        }
        for ns in &namespaces {
            for task in self.quiet_list(ns, &["tasks", "ls", "-q"]) {
                let _ = self.ctr_ns(ns, &["tasks", "kill", "-a", "-s", "SIGKILL", &task]);
                let _ = wait_until(Duration::from_secs(5), || {
                    self.ctr_ns(ns, &["tasks", "delete", &task])
                        .status
                        .success()
                });
                let _ = self.ctr_ns(ns, &["tasks", "delete", "-f", &task]);
            }
            for c in self.quiet_list(ns, &["containers", "ls", "-q"]) {
                let _ = self.ctr_ns(ns, &["containers", "delete", &c]);
            }
        }
    }

    /// Pids of shims started by this containerd (their command line names
    /// this containerd's socket), which outlive containerd when it is killed.
    fn shim_pids(&self) -> Vec<i32> {
        let sock = self.socket().to_string_lossy().into_owned();
        crate::util::pids_where_args(|args| {
            args.first().is_some_and(|a| a.contains("containerd-shim")) && args.contains(&sock)
        })
    }
}

impl Drop for Containerd {
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
