//! Small helpers shared by every fixture: locating binaries, checking tools,
//! free ports, unique names, process reaping and assertion helpers.

use std::ffi::OsStr;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The directory holding the workspace's binaries: `$ORCA_BIN_DIR` if set,
/// else derived from the running executable (`target/<profile>/deps/x` for a
/// test, `target/<profile>/x` for a binary such as orca-bench).
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("ORCA_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().expect("cannot determine the current executable");
    let mut dir = exe
        .parent()
        .expect("the current executable has no parent directory")
        .to_path_buf();
    if dir.file_name() == Some(OsStr::new("deps")) {
        dir.pop();
    }
    dir
}

/// A workspace binary (e.g. "orca-runtime") if it has been built, else `None`.
pub fn try_bin_path(name: &str) -> Option<PathBuf> {
    let p = bin_dir().join(name);
    is_executable(&p).then_some(p)
}

/// A workspace binary (e.g. "orca-runtime"): `$ORCA_BIN_DIR/name` if
/// `ORCA_BIN_DIR` is set, else next to the running test/binary. Panics with a
/// message telling to build the workspace if it is missing.
#[track_caller]
pub fn bin_path(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    if !is_executable(&p) {
        panic!(
            "workspace binary {name:?} not found at {}: run `cargo build --workspace` \
             (or `cargo build --release --workspace` for release tests/benchmarks) first, \
             or set ORCA_BIN_DIR to the directory holding it",
            p.display()
        );
    }
    p
}

fn is_executable(p: &Path) -> bool {
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Panics with a clear message unless running as root (euid 0).
#[track_caller]
pub fn require_root() {
    if !nix::unistd::geteuid().is_root() {
        panic!(
            "this test needs root (euid 0): it creates namespaces, cgroups and mounts; \
             run it as root (e.g. `sudo -E cargo test …`)"
        );
    }
}

/// Directories searched for commands: `$PATH` plus the sbin directories,
/// which are not always in a test runner's PATH.
fn search_dirs() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    for d in [
        "/usr/local/sbin",
        "/usr/local/bin",
        "/usr/sbin",
        "/usr/bin",
        "/sbin",
        "/bin",
    ] {
        let d = PathBuf::from(d);
        if !dirs.contains(&d) {
            dirs.push(d);
        }
    }
    dirs
}

/// A `PATH` value containing the standard directories (sbin included), for
/// the daemons we spawn (containerd needs to find its shim and runc).
pub fn std_path_env() -> std::ffi::OsString {
    std::env::join_paths(search_dirs()).expect("PATH entries contain no ':'")
}

/// Full path of a command found in `PATH` (or the sbin directories).
pub fn which(cmd: &str) -> Option<PathBuf> {
    if cmd.contains('/') {
        let p = PathBuf::from(cmd);
        return is_executable(&p).then_some(p);
    }
    search_dirs()
        .into_iter()
        .map(|d| d.join(cmd))
        .find(|p| is_executable(p))
}

/// Whether a command is available (in `PATH` or the sbin directories).
pub fn have(cmd: &str) -> bool {
    which(cmd).is_some()
}

/// The Debian package providing a tool the fixtures use.
pub fn apt_package_for(cmd: &str) -> &'static str {
    match cmd {
        "busybox" => "busybox-static",
        "runc" => "runc",
        "crun" => "crun",
        "containerd" | "ctr" | "containerd-shim-runc-v2" => "containerd",
        "docker-registry" => "docker-registry",
        "skopeo" => "skopeo",
        "umoci" => "umoci",
        "unshare" | "mount" | "umount" => "util-linux",
        "dockerd" => "docker.io",
        "iptables" => "iptables",
        "hyperfine" => "hyperfine",
        _ => "(unknown package)",
    }
}

/// Full path of a required command; panics saying which apt package to
/// install when it is missing.
#[track_caller]
pub fn require_tool(cmd: &str) -> PathBuf {
    match which(cmd) {
        Some(p) => p,
        None => panic!(
            "required tool {cmd:?} is not installed: `apt-get install -y --no-install-recommends {}`",
            apt_package_for(cmd)
        ),
    }
}

/// Asserts that a command exited successfully, printing its status, stdout
/// and stderr otherwise.
#[track_caller]
pub fn assert_success(out: &Output, what: &str) {
    if !out.status.success() {
        panic!(
            "{what} failed: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Runs a command to completion, capturing its output; panics with a clear
/// message if it cannot be spawned at all.
#[track_caller]
pub fn output_of(cmd: &mut Command) -> Output {
    match cmd.output() {
        Ok(o) => o,
        Err(e) => panic!("cannot run {cmd:?}: {e}"),
    }
}

/// Runs a command to completion like [`Command::output`], but collects
/// stdout/stderr through unlinked temp files instead of pipes, so it returns
/// as soon as the command exits even if it left a process holding them open
/// (e.g. `runc run -d`, whose container inherits the runtime's stdio).
pub fn output_via_files(cmd: &mut Command) -> std::io::Result<Output> {
    use std::io::{Seek, SeekFrom};
    let mut out = tempfile::tempfile()?;
    let mut err = tempfile::tempfile()?;
    let status = cmd
        .stdout(out.try_clone()?)
        .stderr(err.try_clone()?)
        .status()?;
    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    out.seek(SeekFrom::Start(0))?;
    out.read_to_end(&mut stdout)?;
    err.seek(SeekFrom::Start(0))?;
    err.read_to_end(&mut stderr)?;
    Ok(Output {
        status,
        stdout,
        stderr,
    })
}

/// A currently free TCP port on 127.0.0.1 (bound to port 0, then released).
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("cannot bind 127.0.0.1:0");
    l.local_addr()
        .expect("listener has no local address")
        .port()
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A name unique across processes and calls: `<prefix>-<pid>-<n>-<nanos>`,
/// made only of `[a-z0-9-]` so it is a valid container id and cgroup name.
pub fn unique_name(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{prefix}-{}-{n}-{nanos:x}", std::process::id())
}

/// Polls `f` every 20 ms until it returns true or `timeout` passes.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if f() {
            return true;
        }
        if start.elapsed() >= timeout {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sends SIGTERM, waits up to `grace`, then SIGKILLs and reaps the child.
pub fn terminate(child: &mut Child, grace: Duration) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let exited = wait_until(grace, || matches!(child.try_wait(), Ok(Some(_))));
    if !exited {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// A raw HTTP/1.1 GET on 127.0.0.1; returns the status code and the body.
pub fn http_get(addr: &str, path: &str) -> std::io::Result<(u16, Vec<u8>)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.set_write_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    )?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let head_end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| i + 4)
        .unwrap_or(buf.len());
    let status_line = String::from_utf8_lossy(&buf[..head_end]);
    let code = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse::<u16>().ok())
        .ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("bad HTTP response from {addr}: {status_line:?}"),
            )
        })?;
    Ok((code, buf[head_end..].to_vec()))
}

/// Pids of the processes (other than this one) whose argument vector satisfies `pred`.
pub fn pids_where_args(mut pred: impl FnMut(&[String]) -> bool) -> Vec<i32> {
    let me = std::process::id() as i32;
    let mut pids = Vec::new();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return pids;
    };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if pred(&args) {
            pids.push(pid);
        }
    }
    pids
}

/// The last `n` lines of `s` (for logs in failure messages).
pub fn tail_lines(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
