//! Figures of the engine layer, two families:
//!
//! - `engine.*` (same lower stack): orcad against Debian's dockerd 20.10, both
//!   on the same Debian containerd 1.6 (orcad in namespace `orca`, dockerd in
//!   `moby`), both with containerd-shim-runc-v2 + runc, both driven by the
//!   same docker CLI 28 through their own sockets. Compares the engines only.
//! - `engine.stack.*` (product stacks): Orca's own stack end to end — the
//!   `orca` CLI → orcad → its managed orca-supervisor → orca-shim →
//!   orca-runtime — against docker CLI 28 → dockerd 20.10 → containerd 1.6 →
//!   containerd-shim-runc-v2 → runc.
//!
//! The busybox image is pulled by each daemon from the same loopback
//! registry. Every figure starts its own daemons and removes every container
//! it made before they stop.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use orca_integration::util::{std_path_env, terminate};
use orca_integration::{
    bin_path, require_tool, unmount_all_under, wait_until, Containerd, Registry,
};

use crate::figure::{median, ms, timed, Ctx, Figure, Line};

pub fn figures() -> Vec<Box<dyn Figure>> {
    let mut v: Vec<Box<dyn Figure>> = Vec::new();
    for stack in [false, true] {
        v.push(Box::new(RunRmTrue { stack }));
        v.push(Box::new(Ps { running: 10, stack }));
        v.push(Box::new(Ps {
            running: if stack { ISSUE_MANY } else { MANY },
            stack,
        }));
        v.push(Box::new(ParallelStart { stack }));
        v.push(Box::new(IdleRss { stack }));
    }
    v
}

/// Which daemon (and which CLI and lower stack) a subject is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// docker CLI → orcad → Debian containerd + runc shim + runc.
    Orca,
    /// orca CLI → orcad → its managed orca-supervisor → orca-shim → orca-runtime.
    OrcaStack,
    /// docker CLI → dockerd → Debian containerd + runc shim + runc.
    Dockerd,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Orca => "orca",
            Kind::OrcaStack => "orca-stack",
            Kind::Dockerd => "dockerd",
        }
    }

    /// The subjects of a figure: Orca's first (ratios are Orca/peer).
    fn subjects(stack: bool) -> [Kind; 2] {
        if stack {
            [Kind::OrcaStack, Kind::Dockerd]
        } else {
            [Kind::Orca, Kind::Dockerd]
        }
    }
}

/// The runtime orcad gives containers in the product stack.
const ORCA_SHIM_RUNTIME: &str = "io.containerd.orca.v2";

const DOCKER_CLI: &str = "/usr/local/bin/docker";
/// Containers for the engines-only "many" figure: with runc shims under both
/// daemons, 500 would need ≈ 13 GiB of shims at once and minutes of start-up
/// on 2 cores; 100 keeps a run short. The figure names carry the count.
const MANY: usize = 100;
/// The issue's number, for the product stacks (orca-shim ≈ 1.2 MiB each,
/// dockerd's runc shims ≈ 6.5 GiB in all).
const ISSUE_MANY: usize = 500;

const PROXY_VARS: [&str; 6] = [
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "http_proxy",
    "https_proxy",
    "ALL_PROXY",
    "all_proxy",
];

/// orcad or dockerd on a temp dir, with its API socket.
struct Daemon {
    kind: Kind,
    name: &'static str,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl Daemon {
    fn sock(&self) -> PathBuf {
        self.dir.path().join("api.sock")
    }

    fn start(kind: Kind, containerd: &Path) -> Result<Daemon> {
        let name = kind.name();
        let dir = tempfile::Builder::new()
            .prefix(&format!("orca-bench-{name}-"))
            .tempdir()?;
        let t = dir.path();
        let log = fs::File::create(t.join("daemon.log"))?;
        let mut c = if kind != Kind::Dockerd {
            let mut c = Command::new(bin_path("orcad"));
            if kind == Kind::Orca {
                c.arg("--containerd").arg(containerd);
            } else {
                // No --containerd: orcad starts and manages its own
                // orca-supervisor (next to it), which runs orca-shim.
                c.args(["--default-runtime", ORCA_SHIM_RUNTIME]);
            }
            c.arg("--data-root")
                .arg(t.join("data"))
                .arg("--exec-root")
                .arg(t.join("exec"))
                .arg("--cgroup-parent")
                .arg(cgroup_parent(kind))
                // As dockerd below: no default bridge, no host firewall rules
                // (containers keep loopback only).
                .args(["--bridge=none", "--iptables=false", "--log-level", "warn"]);
            c
        } else {
            let mut c = Command::new(require_tool("dockerd"));
            c.arg("--containerd")
                .arg(containerd)
                .arg("--data-root")
                .arg(t.join("data"))
                .arg("--exec-root")
                .arg(t.join("exec"))
                .arg("--pidfile")
                .arg(t.join("d.pid"))
                // No docker0 bridge nor host firewall rules.
                .args(["--bridge=none", "--iptables=false", "--log-level", "warn"]);
            c
        };
        c.arg("-H")
            .arg(format!("unix://{}", t.join("api.sock").display()));
        for v in PROXY_VARS {
            c.env_remove(v);
        }
        let child = c
            .env("PATH", std_path_env())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        let mut d = Daemon {
            kind,
            name,
            child: Some(child),
            dir,
        };
        let mut exited = false;
        let ready = wait_until(Duration::from_secs(60), || {
            if let Some(Ok(Some(_))) = d.child.as_mut().map(|c| c.try_wait()) {
                exited = true;
                return true;
            }
            d.docker()
                .arg("version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        });
        if !ready || exited {
            bail!(
                "{name} did not start: {}",
                fs::read_to_string(d.dir.path().join("daemon.log")).unwrap_or_default()
            );
        }
        Ok(d)
    }

    fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// The pid of orcad's managed orca-supervisor (product stack only).
    fn supervisor_pid(&self) -> Option<u32> {
        fs::read_to_string(self.dir.path().join("exec/supervisor/supervisor.pid"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
    }

    /// This daemon's CLI aimed at it: the docker CLI, or for the product
    /// stack Orca's own `orca` CLI.
    fn docker(&self) -> Command {
        let host = format!("unix://{}", self.sock().display());
        let mut c = if self.kind == Kind::OrcaStack {
            let mut c = Command::new(bin_path("orca"));
            c.env("ORCA_HOST", host).env_remove("DOCKER_HOST");
            c
        } else {
            let mut c = Command::new(DOCKER_CLI);
            c.env("DOCKER_HOST", host).env_remove("ORCA_HOST");
            c
        };
        c.env("DOCKER_CONFIG", self.dir.path().join("cli"))
            .env_remove("DOCKER_CONTEXT")
            .env_remove("DOCKER_API_VERSION")
            .env_remove("ORCA_API_VERSION")
            .stdin(Stdio::null());
        for v in PROXY_VARS {
            c.env_remove(v);
        }
        c
    }

    fn docker_ok(&self, args: &[&str]) -> Result<String> {
        let out = self
            .docker()
            .args(args)
            .output()
            .with_context(|| format!("docker {args:?}"))?;
        if !out.status.success() {
            bail!(
                "docker {args:?} against {}: {}",
                self.name,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Starts `n` `sleep` containers, at most `parallel` CLIs at a time;
    /// returns the wall time.
    fn start_many(&self, image: &str, n: usize, parallel: usize) -> Result<Duration> {
        let start = Instant::now();
        let mut left = n;
        let mut failures = Vec::new();
        while left > 0 {
            let batch = left.min(parallel);
            let children: Vec<_> = (0..batch)
                .map(|_| {
                    self.docker()
                        .args(["run", "-d", image, "sleep", "100000"])
                        .stdout(Stdio::null())
                        .stderr(Stdio::piped())
                        .spawn()
                })
                .collect::<std::io::Result<_>>()?;
            for c in children {
                let out = c.wait_with_output()?;
                if !out.status.success() {
                    failures.push(String::from_utf8_lossy(&out.stderr).trim().to_string());
                }
            }
            left -= batch;
        }
        let wall = start.elapsed();
        if let Some(f) = failures.first() {
            bail!(
                "{} of {n} `docker run -d` failed on {}: {f}",
                failures.len(),
                self.name
            );
        }
        let running = self.docker_ok(&["ps", "-q"])?.lines().count();
        if running != n {
            bail!(
                "{running} containers running on {}, expected {n}",
                self.name
            );
        }
        Ok(wall)
    }

    /// Removes every container (forced).
    fn remove_all(&self) {
        let Ok(ids) = self.docker_ok(&["ps", "-aq"]) else {
            return;
        };
        let ids: Vec<&str> = ids.lines().collect();
        for chunk in ids.chunks(50) {
            let mut args = vec!["rm", "-f"];
            args.extend_from_slice(chunk);
            let _ = self.docker_ok(&args);
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.remove_all();
        if let Some(mut c) = self.child.take() {
            terminate(&mut c, Duration::from_secs(15));
        }
        let _ = unmount_all_under(self.dir.path());
        if self.kind != Kind::Dockerd {
            let cg = cgroup_parent(self.kind).trim_start_matches('/').to_string();
            for sub in fs::read_dir("/sys/fs/cgroup")
                .into_iter()
                .flatten()
                .flatten()
            {
                let _ = fs::remove_dir(sub.path().join(&cg));
            }
        }
    }
}

/// orcad's cgroup parent (removed when the daemon stops).
fn cgroup_parent(kind: Kind) -> String {
    format!("/orca-bench-{}-{}", kind.name(), std::process::id())
}

/// containerd, the registry with busybox, and the figure's two daemons,
/// each having pulled the image. Fields drop in order: daemons (they remove
/// their containers), then containerd, then the registry.
struct Stack {
    daemons: Vec<Daemon>,
    _containerd: Containerd,
    _registry: Registry,
    image: String,
}

impl Stack {
    fn start(stack: bool) -> Result<Stack> {
        let containerd = Containerd::start();
        let (registry, image) = Registry::with_busybox();
        let mut daemons = Vec::new();
        for kind in Kind::subjects(stack) {
            let d = Daemon::start(kind, &containerd.socket())?;
            d.docker_ok(&["pull", "-q", &image])?;
            daemons.push(d);
        }
        Ok(Stack {
            daemons,
            _containerd: containerd,
            _registry: registry,
            image,
        })
    }
}

fn note_failure(ctx: &Ctx, line: &mut Line, name: &str, e: anyhow::Error) {
    if ctx.verbose {
        eprintln!("{name}: {e:#}");
    }
    line.note(format!("{name}: failed: {e:#}"));
}

/// Interleaved timing of one CLI command on each daemon; returns the
/// medians (ms) in daemon order.
fn interleaved(ctx: &Ctx, s: &Stack, args: &[&str], line: &mut Line) {
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); s.daemons.len()];
    let mut failed: Vec<Option<anyhow::Error>> = s.daemons.iter().map(|_| None).collect();
    for i in 0..ctx.warmup + ctx.iterations {
        for (k, d) in s.daemons.iter().enumerate() {
            if failed[k].is_some() {
                continue;
            }
            let mut c = d.docker();
            c.args(args);
            match timed(&mut c).and_then(|r| r.check(&format!("docker {args:?}"))) {
                Ok(r) if i >= ctx.warmup => samples[k].push(ms(r.wall)),
                Ok(_) => {}
                Err(e) => failed[k] = Some(e),
            }
        }
    }
    for (k, d) in s.daemons.iter().enumerate() {
        match failed[k].take() {
            Some(e) => {
                line.value(d.name, None);
                note_failure(ctx, line, d.name, e);
            }
            None => line.value(d.name, median(&samples[k])),
        }
    }
}

/// Where the `# notes` say which stacks a line compares.
fn stack_note(stack: bool) -> &'static str {
    if stack {
        "product stacks: orca CLI > orcad > orca-supervisor > orca-shim > orca-runtime vs docker CLI > dockerd > containerd > runc shim > runc"
    } else {
        "engines only: docker CLI > orcad or dockerd > same containerd + runc shim + runc"
    }
}

/// engine[.stack].run_rm_true.median_ms
struct RunRmTrue {
    stack: bool,
}

impl Figure for RunRmTrue {
    fn name(&self) -> &'static str {
        if self.stack {
            "engine.stack.run_rm_true.median_ms"
        } else {
            "engine.run_rm_true.median_ms"
        }
    }

    fn describe(&self) -> &'static str {
        if self.stack {
            "`run --rm busybox true` through each product stack's own CLI: orca > orcad > orca-supervisor > orca-shim > orca-runtime vs docker 28 > dockerd 20.10 > containerd 1.6 > runc shim > runc, interleaved"
        } else {
            "`docker run --rm busybox true` (CLI 28) through orcad vs dockerd 20.10, same containerd 1.6 + runc shim, interleaved"
        }
    }

    fn measure(&self, ctx: &Ctx) -> Result<Line> {
        let mut line = Line::new(self.name(), 1);
        let s = Stack::start(self.stack)?;
        interleaved(ctx, &s, &["run", "--rm", &s.image, "true"], &mut line);
        line.note("target orca/dockerd <= 0.15");
        line.note(stack_note(self.stack));
        Ok(line)
    }
}

/// engine[.stack].ps_N.median_ms
struct Ps {
    running: usize,
    stack: bool,
}

impl Figure for Ps {
    fn name(&self) -> &'static str {
        match (self.running, self.stack) {
            (10, false) => "engine.ps_10.median_ms",
            (MANY, false) => "engine.ps_100.median_ms",
            (10, true) => "engine.stack.ps_10.median_ms",
            (ISSUE_MANY, true) => "engine.stack.ps_500.median_ms",
            _ => unreachable!("no figure name for ps with {} running", self.running),
        }
    }

    fn describe(&self) -> &'static str {
        match (self.running == 10, self.stack) {
            (true, false) => "`docker ps` with 10 running containers: orcad vs dockerd 20.10 (same containerd), interleaved",
            (false, false) => "`docker ps` with 100 running containers (500 with runc shims under both daemons is too heavy here; the stack figure has 500): orcad vs dockerd 20.10, interleaved",
            (true, true) => "`ps` with 10 running containers through each product stack's CLI (orca vs docker), interleaved",
            (false, true) => "`ps` with 500 running containers through each product stack's CLI (orca vs docker), interleaved",
        }
    }

    fn measure(&self, ctx: &Ctx) -> Result<Line> {
        let mut line = Line::new(self.name(), 1);
        let s = Stack::start(self.stack)?;
        for d in &s.daemons {
            d.start_many(&s.image, self.running, 10)?;
        }
        interleaved(ctx, &s, &["ps"], &mut line);
        line.note("target orca/dockerd <= 0.5");
        line.note(stack_note(self.stack));
        Ok(line)
    }
}

/// engine[.stack].parallel_start_100.s
struct ParallelStart {
    stack: bool,
}

impl Figure for ParallelStart {
    fn name(&self) -> &'static str {
        if self.stack {
            "engine.stack.parallel_start_100.s"
        } else {
            "engine.parallel_start_100.s"
        }
    }

    fn describe(&self) -> &'static str {
        if self.stack {
            "wall time of 100 `run -d busybox sleep` CLIs (orca vs docker) started at once until all return, product stacks"
        } else {
            "wall time of 100 `docker run -d busybox sleep` CLIs started at once until all return (all 100 then running): orcad vs dockerd 20.10"
        }
    }

    fn measure(&self, ctx: &Ctx) -> Result<Line> {
        let mut line = Line::new(self.name(), 2);
        let s = Stack::start(self.stack)?;
        for d in &s.daemons {
            match d.start_many(&s.image, 100, 100) {
                Ok(w) => line.value(d.name, Some(w.as_secs_f64())),
                Err(e) => {
                    line.value(d.name, None);
                    note_failure(ctx, &mut line, d.name, e);
                }
            }
            // Free the machine before the next daemon's run.
            d.remove_all();
        }
        line.note("one sample each, daemons one after the other");
        line.note(stack_note(self.stack));
        Ok(line)
    }
}

/// engine[.stack].idle_rss_kib
struct IdleRss {
    stack: bool,
}

fn vm_rss_kib(pid: u32) -> Option<u64> {
    let s = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

impl Figure for IdleRss {
    fn name(&self) -> &'static str {
        if self.stack {
            "engine.stack.idle_rss_kib"
        } else {
            "engine.idle_rss_kib"
        }
    }

    fn describe(&self) -> &'static str {
        if self.stack {
            "VmRSS of orcad (its managed orca-supervisor in the notes) vs dockerd 2 s after a pull and one `run --rm true` through each one's CLI"
        } else {
            "VmRSS of the daemon 2 s after it pulled busybox and ran one `docker run --rm true` (then idle): orcad vs dockerd 20.10"
        }
    }

    fn measure(&self, ctx: &Ctx) -> Result<Line> {
        let mut line = Line::new(self.name(), 0);
        let s = Stack::start(self.stack)?;
        for d in &s.daemons {
            let r = d
                .docker_ok(&["run", "--rm", &s.image, "true"])
                .and_then(|_| {
                    std::thread::sleep(Duration::from_secs(2));
                    d.pid()
                        .and_then(vm_rss_kib)
                        .map(|k| k as f64)
                        .context("cannot read VmRSS")
                });
            match r {
                Ok(v) => line.value(d.name, Some(v)),
                Err(e) => {
                    line.value(d.name, None);
                    note_failure(ctx, &mut line, d.name, e);
                }
            }
            if d.kind == Kind::OrcaStack {
                match d.supervisor_pid().and_then(vm_rss_kib) {
                    Some(k) => line.note(format!("its orca-supervisor: {k} KiB")),
                    None => line.note("its orca-supervisor: RSS not readable"),
                }
            }
        }
        line.note("one sample each; target orca <= 15360 KiB (15 MiB)");
        line.note(stack_note(self.stack));
        Ok(line)
    }
}
