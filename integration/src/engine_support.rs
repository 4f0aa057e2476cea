//! orcad (the Orca engine) on a private socket, driven by the real docker CLI.

use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use tempfile::TempDir;

use crate::bundle::cgroup_leftovers;
use crate::containerd::Containerd;
use crate::util::{bin_path, terminate, wait_until};

/// The docker CLI the engine tests drive.
pub const DOCKER_CLI: &str = "/usr/local/bin/docker";

/// A running `orcad --containerd SOCK` with its own data-root, exec-root and
/// API socket in a temp dir, logging at debug level to a file. Dropping it
/// stops orcad (the [`Containerd`] fixture's drop cleans tasks/containers).
pub struct Orcad {
    child: Option<Child>,
    dir: TempDir,
    cgroup_parent: String,
    /// Every flag orcad runs with (kept for [`Orcad::restart`]).
    args: Vec<OsString>,
    /// Started without `--containerd`: orcad runs its own orca-supervisor.
    managed: bool,
}

impl Orcad {
    /// Starts orcad against `containerd` and waits until `GET /_ping` answers.
    #[track_caller]
    pub fn start(containerd: &Containerd) -> Orcad {
        Orcad::start_with(&containerd.socket(), &[])
    }

    /// Starts orcad against any containerd API socket (Debian's containerd or
    /// orca-supervisor), with extra flags (e.g. `--default-runtime`).
    #[track_caller]
    pub fn start_with(containerd_socket: &Path, extra_args: &[&str]) -> Orcad {
        Orcad::start_opts(Some(containerd_socket), extra_args)
    }

    /// Starts orcad without `--containerd`: it runs its own orca-supervisor
    /// (under the fixture's data-root and exec-root). Dropping the fixture
    /// stops a supervisor left running (`--live-restore`) too.
    #[track_caller]
    pub fn start_managed(extra_args: &[&str]) -> Orcad {
        Orcad::start_opts(None, extra_args)
    }

    #[track_caller]
    fn start_opts(containerd_socket: Option<&Path>, extra_args: &[&str]) -> Orcad {
        let dir = tempfile::Builder::new()
            .prefix("orca-orcad-")
            .tempdir()
            .unwrap_or_else(|e| panic!("cannot create a temp dir for orcad: {e}"));
        let t = dir.path();
        // One cgroup parent per orcad: its Drop removes the parent, which
        // must never be one another test's orcad is creating containers in.
        let cgroup_parent = format!("/{}", crate::util::unique_name("orca-engine-test"));
        let mut args: Vec<OsString> = Vec::new();
        if let Some(sock) = containerd_socket {
            args.extend(["--containerd".into(), sock.into()]);
        }
        args.extend(extra_args.iter().map(OsString::from));
        args.extend(net_args(extra_args).into_iter().map(OsString::from));
        for (flag, value) in [
            ("--data-root", t.join("data").into_os_string()),
            ("--exec-root", t.join("exec").into_os_string()),
            (
                "-H",
                format!("unix://{}", t.join("orca.sock").display()).into(),
            ),
            ("--log-level", "info,orca_engine=debug".into()),
            ("--cgroup-parent", cgroup_parent.clone().into()),
        ] {
            args.push(flag.into());
            args.push(value);
        }
        let mut o = Orcad {
            child: None,
            dir,
            cgroup_parent,
            args,
            managed: containerd_socket.is_none(),
        };
        o.start_again(&[]);
        o
    }

    /// Runs orcad (again, after [`Orcad::stop`]) with this fixture's flags
    /// plus `extra` (log appended) and waits until `GET /_ping` answers.
    #[track_caller]
    pub fn start_again(&mut self, extra: &[&str]) {
        assert!(
            self.child.is_none(),
            "orcad is still running: stop it first"
        );
        let bin = bin_path("orcad");
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("orcad.log"))
            .unwrap_or_else(|e| panic!("cannot open orcad.log: {e}"));
        let log2 = log.try_clone().expect("cannot dup a file descriptor");
        let child = Command::new(&bin)
            .args(&self.args)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        self.child = Some(child);
        let mut exited = false;
        let ready = wait_until(Duration::from_secs(30), || {
            if let Some(Ok(Some(_))) = self.child.as_mut().map(|c| c.try_wait()) {
                exited = true;
                return true;
            }
            matches!(self.http("GET", "/_ping", None), Ok((200, _)))
        });
        if !ready || exited {
            panic!(
                "orcad {}; its log:\n{}",
                if exited {
                    "exited during startup"
                } else {
                    "did not answer /_ping within 30 s"
                },
                self.log()
            );
        }
    }

    /// Stops orcad (a clean shutdown) and starts it again on the same data
    /// and flags, plus `extra` for this run (e.g. `--live-restore`).
    #[track_caller]
    pub fn restart(&mut self, extra: &[&str]) {
        self.stop();
        self.start_again(extra);
    }

    /// Stops orcad now (SIGTERM: a clean shutdown, up to 30 s).
    /// `docker rm -f` of every container this orcad has (test clean-up;
    /// errors ignored: the daemon may already be failing).
    pub fn remove_all_containers(&self, limit: Duration) {
        let ids = stdout(&self.docker(&["ps", "-aq"], limit));
        let ids: Vec<&str> = ids.split_whitespace().collect();
        if !ids.is_empty() {
            let mut args = vec!["rm", "-f"];
            args.extend(ids);
            let _ = self.docker(&args, limit);
        }
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            terminate(&mut c, Duration::from_secs(30));
        }
    }

    /// SIGTERM and wait up to `grace` (then SIGKILL); returns whether orcad
    /// exited by itself within it (true if it was not running).
    pub fn stop_within(&mut self, grace: Duration) -> bool {
        use std::os::unix::process::ExitStatusExt;
        let Some(mut c) = self.child.take() else {
            return true;
        };
        terminate(&mut c, grace);
        // SIGKILLed only if it outlived `grace`.
        let killed = nix::sys::signal::Signal::SIGKILL as i32;
        !matches!(c.wait().map(|s| s.signal()), Ok(Some(sig)) if sig == killed)
    }

    /// A path under the fixture's temp dir (data-root is `data`, exec-root
    /// `exec`).
    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// The API socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("orca.sock")
    }

    /// `--data-root`.
    pub fn data_root(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The cgroup parent of this orcad's containers (`--cgroup-parent`).
    pub fn cgroup_parent(&self) -> &str {
        &self.cgroup_parent
    }

    /// orcad's log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("orcad.log")).unwrap_or_default()
    }

    /// A docker CLI command aimed at this orcad (own DOCKER_CONFIG).
    pub fn docker_cmd(&self) -> Command {
        let mut c = Command::new(DOCKER_CLI);
        let cfg = self.dir.path().join("docker-config");
        let _ = fs::create_dir_all(&cfg);
        c.env("DOCKER_HOST", format!("unix://{}", self.socket().display()))
            .env("DOCKER_CONFIG", &cfg)
            .env_remove("DOCKER_CONTEXT")
            .env_remove("DOCKER_API_VERSION")
            .stdin(Stdio::null());
        c
    }

    /// Runs `docker ARGS…` with a time limit (killed past it); returns its output.
    #[track_caller]
    pub fn docker(&self, args: &[&str], limit: Duration) -> Output {
        let mut c = self.docker_cmd();
        c.args(args);
        run_with_limit(&mut c, limit)
            .unwrap_or_else(|e| panic!("docker {args:?}: {e}\n--- orcad log ---\n{}", self.log()))
    }

    /// `docker ARGS…` that must succeed; returns its stdout.
    #[track_caller]
    pub fn docker_ok(&self, args: &[&str], limit: Duration) -> String {
        let out = self.docker(args, limit);
        crate::assert_success(&out, &format!("docker {args:?}"));
        text(&out.stdout)
    }

    /// `program` (another Docker API client such as docker-compose, or a
    /// shell) with the docker CLI's environment aimed at this orcad.
    pub fn client_cmd(&self, program: impl AsRef<OsStr>) -> Command {
        let d = self.docker_cmd();
        let mut c = Command::new(program);
        c.stdin(Stdio::null());
        for (k, v) in d.get_envs() {
            match v {
                Some(v) => c.env(k, v),
                None => c.env_remove(k),
            };
        }
        c
    }

    /// `docker ARGS…` with `input` on its stdin (then closed), within `limit`.
    #[track_caller]
    pub fn docker_with_stdin(&self, args: &[&str], input: &[u8], limit: Duration) -> Output {
        let mut c = self.docker_cmd();
        c.args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c.spawn().expect("spawn docker");
        {
            let mut si = child.stdin.take().unwrap();
            si.write_all(input).unwrap();
        }
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(child.wait_with_output());
        });
        rx.recv_timeout(limit)
            .unwrap_or_else(|_| panic!("docker {args:?} timed out\n{}", self.log()))
            .expect("docker output")
    }

    /// `sh -c SCRIPT` with the docker CLI's environment aimed at this orcad
    /// (for pipes such as `docker save | docker load`).
    #[track_caller]
    pub fn docker_sh(&self, script: &str, limit: Duration) -> Output {
        let mut c = self.client_cmd("sh");
        c.args(["-c", script]);
        run_with_limit(&mut c, limit)
            .unwrap_or_else(|e| panic!("sh -c {script:?}: {e}\n--- orcad log ---\n{}", self.log()))
    }

    /// One raw HTTP/1.1 request on the API socket: (status, body).
    pub fn http(
        &self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> std::io::Result<(u16, Vec<u8>)> {
        http_unix(&self.socket(), method, path, body)
    }
}

impl Drop for Orcad {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            terminate(&mut c, Duration::from_secs(5));
        }
        // An orcad that had to be killed leaves its test bridge behind
        // (a clean stop deletes it): remove a fixture-made `ob…` bridge.
        let bridge = self
            .args
            .windows(2)
            .find(|w| w[0] == "--bridge" || w[0] == "-b")
            .map(|w| w[1].to_string_lossy().into_owned());
        if let Some(b) = bridge.filter(|b| b.starts_with("ob")) {
            if Path::new("/sys/class/net").join(&b).exists() {
                let _ = std::process::Command::new("ip")
                    .args(["link", "del", &b])
                    .status();
            }
        }
        // A managed orca-supervisor orcad left running (live-restore).
        if self.managed {
            stop_supervisor(&self.path("exec/supervisor/supervisor.pid"));
        }
        // The per-process cgroup parent (runc removes only the containers'
        // own cgroups); fails harmlessly while another test still uses it.
        for p in cgroup_leftovers(&self.cgroup_parent) {
            let _ = fs::remove_dir(p);
        }
        if std::thread::panicking() {
            eprintln!("--- orcad log ---\n{}", self.log());
        }
    }
}

/// SIGTERM to the process in `pidfile` (if any), waiting up to 10 s for it.
fn stop_supervisor(pidfile: &Path) {
    let Some(pid) = fs::read_to_string(pidfile)
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
    else {
        return;
    };
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGTERM,
    );
    wait_until(Duration::from_secs(10), || {
        !Path::new(&format!("/proc/{pid}")).exists()
    });
}

pub use crate::process::run_with_limit;

/// Bytes as text (lossy): a command's stdout or stderr.
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A command's stdout as text.
pub fn stdout(o: &Output) -> String {
    text(&o.stdout)
}

/// A command's stderr as text.
pub fn stderr(o: &Output) -> String {
    text(&o.stderr)
}

/// containerd, a networking orcad (its own default bridge, bip, address pool
/// and iptables chain prefix `<prefix>XXXXXX`, published ports on
/// 127.0.0.1) and the local registry with busybox pulled. Dropped — also
/// after a failed test — it removes containers and networks, then stops
/// orcad cleanly, which removes its bridges and chains.
pub struct NetworkedOrcad {
    pub o: Orcad,
    _reg: crate::Registry,
    _c: Containerd,
    pub image: String,
    /// The default bridge's name.
    pub bridge: String,
    /// The `--iptables-chain` prefix.
    pub chain: String,
}

impl NetworkedOrcad {
    #[track_caller]
    pub fn start(chain_prefix: &str, limit: Duration) -> NetworkedOrcad {
        crate::require_root();
        crate::util::require_tool(DOCKER_CLI);
        crate::util::require_tool("iptables");
        crate::util::require_tool("ip");
        let c = Containerd::start();
        let b = bridge_args();
        let chain = format!("{chain_prefix}{:06X}", net_token() & 0xff_ffff);
        let mut args: Vec<&str> = b.iter().map(String::as_str).collect();
        args.extend(["--ip", "127.0.0.1", "--iptables-chain", &chain]);
        let o = Orcad::start_with(&c.socket(), &args);
        let (reg, image) = crate::Registry::with_busybox();
        o.docker_ok(&["pull", &image], limit);
        NetworkedOrcad {
            o,
            _reg: reg,
            _c: c,
            image,
            bridge: b[1].clone(),
            chain,
        }
    }
}

impl Drop for NetworkedOrcad {
    fn drop(&mut self) {
        let limit = Duration::from_secs(120);
        self.o.remove_all_containers(limit);
        let _ = self.o.docker(&["network", "prune", "-f"], limit);
        self.o.stop();
    }
}

/// Returns the image reference too.
pub fn orcad_with_busybox(limit: Duration) -> (Containerd, Orcad, crate::Registry, String) {
    crate::require_root();
    crate::require_tool(DOCKER_CLI);
    let c = Containerd::start();
    let o = Orcad::start(&c);
    let (reg, image) = crate::Registry::with_busybox();
    let out = o.docker(&["pull", &image], limit);
    crate::assert_success(&out, "docker pull");
    (c, o, reg, image)
}

/// A number unlikely to repeat across concurrent test processes.
fn net_token() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let x = nanos
        ^ (std::process::id() as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)
        ^ N.fetch_add(1, Ordering::Relaxed)
            .wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^ (x >> 29)
}

/// The networking flags that keep one test orcad away from the host's and
/// other test orcads' networking: its own iptables chain prefix and
/// address pool (10.64.0.0/10 in /20 blocks, cut in /24s), and `--bridge
/// none` (loopback-only containers, the engine tests' usual set-up) unless
/// `given` names a bridge. Flags in `given` win.
pub fn net_args(given: &[&str]) -> Vec<String> {
    let has = |f: &str| {
        given
            .iter()
            .any(|a| *a == f || a.starts_with(&format!("{f}=")))
    };
    let t = net_token();
    let mut v = Vec::new();
    if !has("--bridge") && !has("-b") {
        v.extend(["--bridge".to_string(), "none".to_string()]);
    }
    if !has("--iptables-chain") {
        v.extend([
            "--iptables-chain".to_string(),
            format!("OT{:06X}", t & 0xff_ffff),
        ]);
    }
    if !has("--default-address-pool") {
        let a = 64 + ((t >> 24) % 64);
        let b = ((t >> 30) % 16) * 16;
        v.extend([
            "--default-address-pool".to_string(),
            format!("base=10.{a}.{b}.0/20,size=24"),
        ]);
    }
    v
}

/// A unique default bridge for a networking test orcad: `--bridge obXXXXXX
/// --bip 10.<128-191>.<n>.1/24` (outside [`net_args`]'s pools).
pub fn bridge_args() -> Vec<String> {
    let t = net_token();
    vec![
        "--bridge".into(),
        format!("ob{:06x}", t & 0xff_ffff),
        "--bip".into(),
        format!("10.{}.{}.1/24", 128 + (t >> 24) % 64, (t >> 30) % 256),
    ]
}

/// A raw HTTP/1.1 request over a unix socket (Connection: close).
pub fn http_unix(
    sock: &Path,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
) -> std::io::Result<(u16, Vec<u8>)> {
    let mut s = UnixStream::connect(sock)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let body = body.unwrap_or(b"");
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: docker\r\nConnection: close\r\n");
    if !body.is_empty() || method == "POST" {
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes())?;
    s.write_all(body)?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let head_end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| i + 4)
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, "no HTTP head"))?;
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse::<u16>().ok())
        .ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("bad status line: {head:?}"),
            )
        })?;
    let mut body = buf[head_end..].to_vec();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = dechunk(&body);
    }
    Ok((code, body))
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = b.windows(2).position(|w| w == b"\r\n") {
        let size =
            usize::from_str_radix(String::from_utf8_lossy(&b[..eol]).trim(), 16).unwrap_or(0);
        if size == 0 {
            break;
        }
        let start = eol + 2;
        if b.len() < start + size {
            out.extend_from_slice(&b[start..]);
            break;
        }
        out.extend_from_slice(&b[start..start + size]);
        b = &b[(start + size + 2).min(b.len())..];
    }
    out
}
