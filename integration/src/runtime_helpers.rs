//! Small generic helpers for the OCI runtime tests: reading command output and
//! `state` JSON, waiting for a status, finding processes and cgroup
//! directories, leak checks after a container is gone, a `--console-socket`
//! receiver, and commands whose container output goes to files that outlive
//! the runtime command (`create` then `start`).

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;
use sha2::{Digest, Sha256};
use tempfile::TempDir;

use crate::bundle::{cgroup_leftovers, Bundle};
use crate::mounts::mounts_under;
use crate::runtime::Runtime;
use crate::util::wait_until;

/// A command's stdout, lossily decoded.
pub fn out_str(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A command's stderr, lossily decoded.
pub fn err_str(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// "status, stdout, stderr" of a command, for assertion messages.
pub fn describe(o: &Output) -> String {
    format!(
        "{}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        o.status,
        out_str(o),
        err_str(o)
    )
}

/// Asserts that a command failed (non-zero exit), printing its output otherwise.
#[track_caller]
pub fn assert_failure(o: &Output, what: &str) {
    if o.status.success() {
        panic!("{what} unexpectedly succeeded: {}", describe(o));
    }
}

/// The runtime's `state ID` document, or `None` when `state` fails.
pub fn state_of(rt: &Runtime, id: &str) -> Option<Value> {
    let o = rt.run(&["state", id]);
    if !o.status.success() {
        return None;
    }
    serde_json::from_slice(&o.stdout).ok()
}

/// The `status` field of `state ID` ("created", "running", ...), or `None`
/// when `state` fails.
pub fn status_of(rt: &Runtime, id: &str) -> Option<String> {
    state_of(rt, id).and_then(|v| v["status"].as_str().map(String::from))
}

/// Waits until `state ID` reports `want` (up to `timeout`); returns whether it did.
pub fn wait_status(rt: &Runtime, id: &str, want: &str, timeout: Duration) -> bool {
    wait_until(timeout, || status_of(rt, id).as_deref() == Some(want))
}

/// The init pid from `state ID` (0 when stopped or unknown).
pub fn pid_of(rt: &Runtime, id: &str) -> i32 {
    state_of(rt, id)
        .and_then(|v| v["pid"].as_i64())
        .unwrap_or(0) as i32
}

/// Pids of live (non-zombie) processes whose command line contains `needle`,
/// except the calling process.
pub fn pids_with_cmdline(needle: &str) -> Vec<i32> {
    crate::util::pids_where_args(|args| args.join(" ").contains(needle))
        .into_iter()
        .filter(|pid| !is_zombie(*pid))
        .collect()
}

/// Whether `/proc/<pid>` is gone or a zombie.
pub fn is_zombie(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => s
            .rfind(')')
            .and_then(|i| s[i + 1..].split_whitespace().next())
            .is_some_and(|st| st == "Z" || st == "X"),
        Err(_) => true,
    }
}

/// Whether a live (non-zombie) process `pid` exists.
pub fn process_alive(pid: i32) -> bool {
    pid > 0 && Path::new(&format!("/proc/{pid}")).exists() && !is_zombie(pid)
}

/// The host directory of `pid`'s cgroup in the v1 hierarchy of `controller`
/// ("memory", "pids", "freezer", ...), from `/proc/<pid>/cgroup`.
pub fn v1_cgroup_dir(pid: i32, controller: &str) -> Option<PathBuf> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    for line in text.lines() {
        let mut f = line.splitn(3, ':');
        let _id = f.next()?;
        let ctrls = f.next()?;
        let path = f.next()?;
        if ctrls.split(',').any(|c| c == controller) {
            let base = Path::new("/sys/fs/cgroup").join(ctrls);
            let base = if base.is_dir() {
                base
            } else {
                Path::new("/sys/fs/cgroup").join(controller)
            };
            return Some(base.join(path.trim_start_matches('/')));
        }
    }
    None
}

/// A file's content, trimmed; empty if it cannot be read.
pub fn read_trim(p: impl AsRef<Path>) -> String {
    std::fs::read_to_string(p.as_ref())
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Hex SHA-256 of a file's bytes.
pub fn sha256_file(p: impl AsRef<Path>) -> String {
    let data = std::fs::read(p.as_ref())
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", p.as_ref().display()));
    hex::encode(Sha256::digest(&data))
}

/// What a container left behind after it should be gone: the runtime's state
/// dir for `id`, cgroup directories of the bundle's cgroupsPath, mounts under
/// the bundle and live processes whose command line mentions `id`. Empty when
/// clean.
pub fn leftovers(rt: &Runtime, bundle: &Bundle, id: &str) -> Vec<String> {
    let mut left = Vec::new();
    if !id.is_empty() && rt.root().join(id).exists() {
        left.push(format!("state dir {}", rt.root().join(id).display()));
    }
    for c in bundle.cgroup_leftovers() {
        left.push(format!("cgroup dir {}", c.display()));
    }
    for m in mounts_under(bundle.path()) {
        left.push(format!("mount {}", m.display()));
    }
    if !id.is_empty() {
        for p in pids_with_cmdline(id) {
            let cmd = std::fs::read(format!("/proc/{p}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
                .unwrap_or_default();
            left.push(format!("process {p}: {cmd}"));
        }
    }
    left
}

/// Asserts that nothing of container `id` is left (see [`leftovers`]). Waits
/// up to 5 s for processes that are just exiting.
#[track_caller]
pub fn assert_no_leftovers(rt: &Runtime, bundle: &Bundle, id: &str) {
    let mut left = Vec::new();
    let clean = wait_until(Duration::from_secs(5), || {
        left = leftovers(rt, bundle, id);
        left.is_empty()
    });
    assert!(clean, "container {id:?} left behind: {left:#?}");
}

/// Asserts that cgroupsPath `cg` has no directory left under any hierarchy.
#[track_caller]
pub fn assert_no_cgroup(cg: &str) {
    let left = cgroup_leftovers(cg);
    assert!(left.is_empty(), "cgroup {cg} left behind: {left:?}");
}

/// Files that receive a command's stdout and stderr and stay readable after
/// it exits — also what a container writes later, when it inherited them
/// (`create` followed by `start`, `run -d`, `exec -d`).
pub struct OutputFiles {
    dir: TempDir,
}

impl Default for OutputFiles {
    fn default() -> Self {
        Self::new()
    }
}

impl OutputFiles {
    /// Two empty files in a new temp dir.
    pub fn new() -> OutputFiles {
        let dir = tempfile::Builder::new()
            .prefix("orca-out-")
            .tempdir()
            .expect("temp dir for output files");
        File::create(dir.path().join("stdout")).expect("create stdout file");
        File::create(dir.path().join("stderr")).expect("create stderr file");
        OutputFiles { dir }
    }

    /// Path of the stdout file.
    pub fn stdout_path(&self) -> PathBuf {
        self.dir.path().join("stdout")
    }

    /// Path of the stderr file.
    pub fn stderr_path(&self) -> PathBuf {
        self.dir.path().join("stderr")
    }

    /// Current content of the stdout file.
    pub fn stdout(&self) -> String {
        std::fs::read_to_string(self.stdout_path()).unwrap_or_default()
    }

    /// Current content of the stderr file.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.stderr_path()).unwrap_or_default()
    }

    /// Points `cmd`'s stdout/stderr at the files (appending) and stdin at /dev/null.
    pub fn attach(&self, cmd: &mut Command) {
        let open = |p: PathBuf| {
            std::fs::OpenOptions::new()
                .append(true)
                .open(&p)
                .unwrap_or_else(|e| panic!("open {}: {e}", p.display()))
        };
        cmd.stdin(Stdio::null())
            .stdout(open(self.stdout_path()))
            .stderr(open(self.stderr_path()));
    }

    /// Runs `cmd` to completion with its output going to the files; returns
    /// the exit status.
    #[track_caller]
    pub fn run(&self, cmd: &mut Command) -> ExitStatus {
        self.attach(cmd);
        cmd.status()
            .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
    }

    /// Waits until the stdout file contains `needle` (up to `timeout`).
    pub fn wait_stdout(&self, needle: &str, timeout: Duration) -> bool {
        wait_until(timeout, || self.stdout().contains(needle))
    }
}

/// Runs `rt` with `args`, its stdio going to `files` (so a container started
/// from it keeps writing there). Returns the runtime's exit status.
#[track_caller]
pub fn run_with_files(rt: &Runtime, files: &OutputFiles, args: &[&str]) -> ExitStatus {
    let mut c = rt.cmd();
    c.args(args);
    files.run(&mut c)
}

/// Runs `rt` with `args` through `sh -c 'exec 3<F 4<F …; exec "$@"'`, so the
/// runtime starts with `extra` descriptors (3, 4, …) open without
/// close-on-exec, each opened read-only on `file`.
pub fn run_with_inherited_fds(rt: &Runtime, extra: u32, file: &Path, args: &[&str]) -> Output {
    let mut redirs = String::new();
    for fd in 3..3 + extra {
        redirs.push_str(&format!(" {fd}<\"$F\""));
    }
    let script = format!("exec{redirs}; exec \"$@\"");
    let rt_cmd = rt.cmd();
    let mut c = Command::new("sh");
    c.env("F", file)
        .arg("-c")
        .arg(script)
        .arg("sh")
        .arg(rt_cmd.get_program())
        .args(rt_cmd.get_args())
        .args(args)
        .stdin(Stdio::null());
    crate::util::output_via_files(&mut c).unwrap_or_else(|e| panic!("cannot run {c:?}: {e}"))
}

/// A `--console-socket` listener: a unix stream socket in a temp dir whose
/// first connection is accepted in the background and the pty master
/// received over SCM_RIGHTS.
pub struct ConsoleSocket {
    _dir: TempDir,
    path: PathBuf,
    handle: Option<JoinHandle<std::io::Result<OwnedFd>>>,
}

impl ConsoleSocket {
    /// Binds the socket and starts accepting.
    pub fn bind() -> ConsoleSocket {
        let dir = tempfile::Builder::new()
            .prefix("orca-console-")
            .tempdir()
            .expect("temp dir for the console socket");
        let path = dir.path().join("console.sock");
        let listener = UnixListener::bind(&path).expect("bind console socket");
        let handle = std::thread::spawn(move || -> std::io::Result<OwnedFd> {
            let (stream, _) = listener.accept()?;
            recv_fd(stream.as_raw_fd())
        });
        ConsoleSocket {
            _dir: dir,
            path,
            handle: Some(handle),
        }
    }

    /// The socket path, for `--console-socket`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The path as a `&str` (temp dirs are ASCII).
    pub fn path_str(&self) -> &str {
        self.path.to_str().expect("temp dir paths are valid UTF-8")
    }

    /// The received pty master; waits up to `timeout`.
    pub fn master(&mut self, timeout: Duration) -> std::io::Result<OwnedFd> {
        let h = self
            .handle
            .take()
            .ok_or_else(|| std::io::Error::other("master already taken"))?;
        let deadline = Instant::now() + timeout;
        while !h.is_finished() {
            if Instant::now() > deadline {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "no connection on the console socket",
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        h.join()
            .map_err(|_| std::io::Error::other("console receiver panicked"))?
    }
}

/// Receives one descriptor sent with SCM_RIGHTS on a connected unix socket.
pub fn recv_fd(sock: RawFd) -> std::io::Result<OwnedFd> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    let mut buf = [0u8; 4096];
    let mut iov = [std::io::IoSliceMut::new(&mut buf)];
    let mut cmsg = nix::cmsg_space!([RawFd; 4]);
    let msg = recvmsg::<()>(sock, &mut iov, Some(&mut cmsg), MsgFlags::MSG_CMSG_CLOEXEC)
        .map_err(std::io::Error::from)?;
    for c in msg.cmsgs().map_err(std::io::Error::from)? {
        if let ControlMessageOwned::ScmRights(fds) = c {
            if let Some(fd) = fds.first() {
                // SAFETY: the kernel just installed this descriptor for us.
                return Ok(unsafe { OwnedFd::from_raw_fd(*fd) });
            }
        }
    }
    Err(std::io::Error::other("no descriptor in the message"))
}

/// Reads from a pty master until EOF/EIO (every slave closed), until
/// `until` appears in the text, or until `timeout`; returns what was read.
pub fn read_pty(master: &OwnedFd, until: &str, timeout: Duration) -> String {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    let mut f = File::from(master.try_clone().expect("dup pty master"));
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        let mut pfd = [PollFd::new(
            std::os::fd::AsFd::as_fd(master),
            PollFlags::POLLIN,
        )];
        let ms = left.as_millis().min(1000) as u16;
        match poll(&mut pfd, PollTimeout::from(ms)) {
            Ok(0) => continue,
            Ok(_) => {}
            Err(nix::Error::EINTR) => continue,
            Err(_) => break,
        }
        let mut buf = [0u8; 4096];
        match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                out.extend_from_slice(&buf[..n]);
                if !until.is_empty() && String::from_utf8_lossy(&out).contains(until) {
                    break;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break, // EIO: the slave side is closed
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `chown -hR uid:gid` of a directory tree (symlinks themselves, not their targets).
pub fn chown_tree(root: &Path, uid: u32, gid: u32) -> std::io::Result<()> {
    std::os::unix::fs::lchown(root, Some(uid), Some(gid))?;
    if std::fs::symlink_metadata(root)?.is_dir() {
        for e in std::fs::read_dir(root)? {
            chown_tree(&e?.path(), uid, gid)?;
        }
    }
    Ok(())
}

/// A field of `/proc/<pid>/status` ("NSpid", "CapEff", ...), trimmed.
pub fn proc_status_field(pid: i32, field: &str) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines().find_map(|l| {
        l.strip_prefix(field)
            .and_then(|r| r.strip_prefix(':'))
            .map(|v| v.trim().to_string())
    })
}
