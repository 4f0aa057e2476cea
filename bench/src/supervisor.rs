//! Figures of the supervisor layer: orca-supervisor against Debian's
//! containerd, both driven by the same `ctr`, with the same local registry,
//! in the same run. `supervisor.run_true` gives both the same runc shim
//! (`containerd-shim-runc-v2` + runc): it compares the supervisors only.
//! `supervisor.stack.run_true` gives each its product stack: orca-supervisor
//! with orca-shim (`io.containerd.orca.v2`) + orca-runtime against containerd
//! with its default runc shim + runc. Both fixtures log at debug level.

use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use orca_integration::supervisor_support::registry_with_layered_busybox;
use orca_integration::{unique_name, wait_until, Containerd, Registry, Supervisor, TEST_NAMESPACE};

use crate::figure::{median, ms, timed, Ctx, Figure, Line};

pub fn figures() -> Vec<Box<dyn Figure>> {
    vec![
        Box::new(RunTrue { stack: false }),
        Box::new(RunTrue { stack: true }),
        Box::new(IdleRss),
        Box::new(PullUnpack),
    ]
}

const RUNC_RUNTIME: &str = "io.containerd.runc.v2";
const ORCA_RUNTIME: &str = "io.containerd.orca.v2";

/// The daemon under test.
enum Daemon {
    Orca(Supervisor),
    Containerd(Containerd),
}

impl Daemon {
    fn start(orca: bool) -> Daemon {
        if orca {
            Daemon::Orca(Supervisor::start())
        } else {
            Daemon::Containerd(Containerd::start())
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Daemon::Orca(_) => "orca",
            Daemon::Containerd(_) => "containerd",
        }
    }

    fn pid(&self) -> Option<u32> {
        match self {
            Daemon::Orca(s) => s.pid(),
            Daemon::Containerd(c) => c.pid(),
        }
    }

    /// `ctr -a SOCK -n orca-test`, without proxies (the registry is local).
    fn ctr(&self) -> Command {
        let mut c = match self {
            Daemon::Orca(s) => s.ctr_cmd_ns(TEST_NAMESPACE),
            Daemon::Containerd(c) => c.ctr_cmd_ns(TEST_NAMESPACE),
        };
        for v in [
            "HTTP_PROXY",
            "HTTPS_PROXY",
            "http_proxy",
            "https_proxy",
            "ALL_PROXY",
            "all_proxy",
        ] {
            c.env_remove(v);
        }
        c
    }

    fn ctr_ok(&self, args: &[&str]) -> Result<String> {
        let out = self
            .ctr()
            .args(args)
            .output()
            .with_context(|| format!("running ctr {args:?}"))?;
        if !out.status.success() {
            bail!(
                "ctr {args:?} against {}: {}",
                self.name(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

fn vm_rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

/// Runs `f` for orca-supervisor then containerd, recording a value or a
/// failure note for each.
fn both(ctx: &Ctx, line: &mut Line, mut f: impl FnMut(&Daemon) -> Result<f64>) {
    for orca in [true, false] {
        let d = Daemon::start(orca);
        let name = d.name();
        match f(&d) {
            Ok(v) => line.value(name, Some(v)),
            Err(e) => {
                if ctx.verbose {
                    eprintln!("{name}: {e:#}");
                }
                line.value(name, None);
                line.note(format!("{name}: failed: {e:#}"));
            }
        }
    }
}

/// supervisor[.stack].run_true.median_ms
struct RunTrue {
    /// orca-supervisor with orca-shim (else both with the runc shim).
    stack: bool,
}

impl RunTrue {
    fn runtime(&self, d: &Daemon) -> &'static str {
        match d {
            Daemon::Orca(_) if self.stack => ORCA_RUNTIME,
            _ => RUNC_RUNTIME,
        }
    }
}

impl Figure for RunTrue {
    fn name(&self) -> &'static str {
        if self.stack {
            "supervisor.stack.run_true.median_ms"
        } else {
            "supervisor.run_true.median_ms"
        }
    }

    fn describe(&self) -> &'static str {
        if self.stack {
            "`ctr run --rm busybox true`, product stacks: orca-supervisor + orca-shim + orca-runtime vs Debian containerd + containerd-shim-runc-v2 + runc, interleaved"
        } else {
            "`ctr run --rm busybox true` through orca-supervisor vs Debian containerd, both with containerd-shim-runc-v2 + runc, interleaved"
        }
    }

    fn measure(&self, ctx: &Ctx) -> Result<Line> {
        let mut line = Line::new(self.name(), 1);
        let (_reg, image) = Registry::with_busybox();
        let daemons = [Daemon::start(true), Daemon::start(false)];
        let mut samples: Vec<Vec<f64>> = vec![Vec::new(); daemons.len()];
        let mut failed: Vec<Option<anyhow::Error>> = daemons.iter().map(|_| None).collect();
        for (k, d) in daemons.iter().enumerate() {
            if let Err(e) = d.ctr_ok(&["images", "pull", "--plain-http", &image]) {
                failed[k] = Some(e);
            }
        }
        // Interleaved, so that drift hits both alike.
        for i in 0..ctx.warmup + ctx.iterations {
            for (k, d) in daemons.iter().enumerate() {
                if failed[k].is_some() {
                    continue;
                }
                let id = unique_name(&format!("suptrue{i}"));
                let mut c = d.ctr();
                c.args([
                    "run",
                    "--rm",
                    "--runtime",
                    self.runtime(d),
                    &image,
                    &id,
                    "true",
                ]);
                match timed(&mut c).and_then(|r| r.check("ctr run --rm true")) {
                    Ok(r) if i >= ctx.warmup => samples[k].push(ms(r.wall)),
                    Ok(_) => {}
                    Err(e) => failed[k] = Some(e),
                }
            }
        }
        for (k, d) in daemons.iter().enumerate() {
            let name = d.name();
            match failed[k].take() {
                Some(e) => {
                    if ctx.verbose {
                        eprintln!("{name}: {e:#}");
                    }
                    line.value(name, None);
                    line.note(format!("{name}: failed: {e:#}"));
                }
                None => line.value(name, median(&samples[k])),
            }
        }
        line.note(if self.stack {
            "orca: orca-shim + orca-runtime; containerd: runc shim + runc; target orca/containerd <= 0.5"
        } else {
            "both with containerd-shim-runc-v2 + runc (supervisors compared)"
        });
        Ok(line)
    }
}

/// supervisor.idle_rss_kib
struct IdleRss;

impl Figure for IdleRss {
    fn name(&self) -> &'static str {
        "supervisor.idle_rss_kib"
    }

    fn describe(&self) -> &'static str {
        "VmRSS of the daemon 2 s after it answers `ctr version` (fresh root, nothing pulled): orca-supervisor vs Debian containerd"
    }

    fn measure(&self, ctx: &Ctx) -> Result<Line> {
        let mut line = Line::new(self.name(), 0);
        both(ctx, &mut line, |d| {
            std::thread::sleep(Duration::from_secs(2));
            let pid = d.pid().context("daemon pid")?;
            vm_rss_kib(pid)
                .map(|k| k as f64)
                .context("cannot read VmRSS")
        });
        line.note("one sample each");
        Ok(line)
    }
}

/// supervisor.pull_unpack.median_ms
struct PullUnpack;

/// Four uncompressed 24 MiB layers on top of busybox: ≈ 100 MB.
const LAYERS: [(&str, usize); 4] = [
    ("l1.bin", 24 << 20),
    ("l2.bin", 24 << 20),
    ("l3.bin", 24 << 20),
    ("l4.bin", 24 << 20),
];

impl Figure for PullUnpack {
    fn name(&self) -> &'static str {
        "supervisor.pull_unpack.median_ms"
    }

    fn describe(&self) -> &'static str {
        "`ctr images pull` (fetch + unpack into overlayfs) of a 5-layer ≈ 100 MB image from a local registry, then `images rm --sync`: orca-supervisor vs Debian containerd"
    }

    fn measure(&self, ctx: &Ctx) -> Result<Line> {
        let mut line = Line::new(self.name(), 0);
        let (_reg, image, _info) = registry_with_layered_busybox("bench-big", &LAYERS);
        let iterations = ctx.iterations.clamp(1, 5);
        let warmup = ctx.warmup.min(1);
        both(ctx, &mut line, |d| {
            let mut samples = Vec::new();
            for i in 0..warmup + iterations {
                let mut c = d.ctr();
                c.args(["images", "pull", "--plain-http", &image]);
                let r = timed(&mut c)?.check("ctr images pull")?;
                if i >= warmup {
                    samples.push(ms(r.wall));
                }
                d.ctr_ok(&["images", "rm", "--sync", &image])?;
                // Start every pull from an empty store.
                if !wait_until(Duration::from_secs(10), || {
                    d.ctr_ok(&["content", "ls", "-q"])
                        .map(|o| o.trim().is_empty())
                        .unwrap_or(false)
                }) {
                    bail!("{}: content left after images rm --sync", d.name());
                }
            }
            median(&samples).context("no samples")
        });
        line.note(format!(
            "{iterations} pulls each after {warmup} warm-up; ≈ 100 MB in 5 layers"
        ));
        Ok(line)
    }
}
