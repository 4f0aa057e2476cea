//! Figures of the OCI runtime layer: orca-runtime against runc and crun.

use anyhow::Result;
use orca_integration::{unique_name, Bundle, Runtime, RuntimeKind};

use crate::figure::{median, ms, timed, Ctx, Figure, Line};

/// The runtimes compared, Orca first.
const KINDS: [RuntimeKind; 3] = [RuntimeKind::Orca, RuntimeKind::Runc, RuntimeKind::Crun];

pub fn figures() -> Vec<Box<dyn Figure>> {
    vec![Box::new(RunTrueMedian), Box::new(RunTruePeakRss)]
}

/// One runtime under test, or why it is not.
struct Subject {
    kind: RuntimeKind,
    rt: Option<Runtime>,
    failed: Option<String>,
}

impl Subject {
    fn all(line: &mut Line) -> Vec<Subject> {
        KINDS
            .iter()
            .map(|&kind| {
                let rt = Runtime::try_new(kind);
                if rt.is_none() {
                    line.note(match kind {
                        RuntimeKind::Orca => {
                            "orca: orca-runtime not built (cargo build --release --workspace)"
                                .to_string()
                        }
                        k => format!("{}: not installed (apt-get install {})", k.name(), k.name()),
                    });
                }
                Subject {
                    kind,
                    rt,
                    failed: None,
                }
            })
            .collect()
    }

    fn active(&self) -> Option<&Runtime> {
        if self.failed.is_some() {
            None
        } else {
            self.rt.as_ref()
        }
    }
}

/// `RUNTIME --root R run -b BUNDLE ID` of busybox `true`, timed and reaped.
fn run_true(rt: &Runtime, bundle: &Bundle) -> Result<crate::figure::Run> {
    let id = unique_name(&format!("bench-{}", rt.name()));
    let mut cmd = rt.cmd();
    cmd.args(["run", "-b", bundle.path_str(), &id]);
    timed(&mut cmd)?.check(&format!("{} run", rt.name()))
}

fn fail(ctx: &Ctx, s: &mut Subject, e: anyhow::Error) {
    if ctx.verbose {
        eprintln!("{}: {e:#}", s.kind.name());
    }
    s.failed = Some(format!("{}: failed: {e:#}", s.kind.name()));
}

fn busybox_true_bundle() -> Result<Bundle> {
    Bundle::try_busybox(&["true"])
        .map_err(|e| anyhow::anyhow!("cannot make the busybox bundle: {e}"))
}

/// runtime.run_true.median_ms
struct RunTrueMedian;

impl Figure for RunTrueMedian {
    fn name(&self) -> &'static str {
        "runtime.run_true.median_ms"
    }

    fn describe(&self) -> &'static str {
        "median wall time of `RUNTIME run -b BUNDLE ID` (create+start+wait+delete) of busybox `true`"
    }

    fn measure(&self, ctx: &Ctx) -> Result<Line> {
        let mut line = Line::new(self.name(), 2);
        let bundle = busybox_true_bundle()?;
        let mut subjects = Subject::all(&mut line);
        let mut samples: Vec<Vec<f64>> = vec![Vec::new(); subjects.len()];
        // The crun wrapper's own cost, measured with a no-op, interleaved.
        let mut noop = subjects
            .iter()
            .find_map(|s| s.rt.as_ref().and_then(|r| r.wrapper_noop_cmd()));
        let mut noop_samples = Vec::new();

        // Interleave subjects within each iteration so drift hits all alike.
        for i in 0..ctx.warmup + ctx.iterations {
            let measured = i >= ctx.warmup;
            for (k, s) in subjects.iter_mut().enumerate() {
                let Some(rt) = s.active() else { continue };
                match run_true(rt, &bundle) {
                    Ok(r) if measured => samples[k].push(ms(r.wall)),
                    Ok(_) => {}
                    Err(e) => fail(ctx, s, e),
                }
            }
            if let Some(cmd) = noop.as_mut() {
                match timed(cmd).and_then(|r| r.check("unshare wrapper no-op")) {
                    Ok(r) if measured => noop_samples.push(ms(r.wall)),
                    Ok(_) => {}
                    Err(e) => {
                        line.note(format!("wrapper no-op failed: {e:#}"));
                        noop = None;
                    }
                }
            }
        }

        let wrapper_ms = median(&noop_samples);
        for (k, s) in subjects.iter().enumerate() {
            let mut v = median(&samples[k]).filter(|_| s.failed.is_none());
            if let (Some(rt), Some(w)) = (&s.rt, wrapper_ms) {
                if rt.is_wrapped() {
                    v = v.map(|v| v - w);
                    line.note(format!(
                        "{}: minus the median {w:.2} ms of its `unshare -m sh -c 'umount /sys/fs/cgroup/unified; exec true'` wrapper (cgroup v1 hybrid host)",
                        s.kind.name()
                    ));
                }
            }
            if let Some(f) = &s.failed {
                line.note(f.clone());
            }
            line.value(s.kind.name(), v);
        }
        line.note(format!(
            "{} iterations after {} warm-ups",
            ctx.iterations, ctx.warmup
        ));
        Ok(line)
    }
}

/// runtime.run_true.peak_rss_kib
struct RunTruePeakRss;

/// Runs per subject; the figure is their median (ru_maxrss barely varies).
const RSS_RUNS: usize = 5;

impl Figure for RunTruePeakRss {
    fn name(&self) -> &'static str {
        "runtime.run_true.peak_rss_kib"
    }

    fn describe(&self) -> &'static str {
        "peak RSS (wait4 ru_maxrss: the runtime process and the children it reaped) of one `run` of busybox `true`"
    }

    fn measure(&self, _ctx: &Ctx) -> Result<Line> {
        let mut line = Line::new(self.name(), 0);
        let bundle = busybox_true_bundle()?;
        let mut subjects = Subject::all(&mut line);
        for s in subjects.iter_mut() {
            let mut rss = Vec::new();
            let mut failed = false;
            if let Some(rt) = s.active() {
                // One unmeasured run first, as for the timing.
                let mut err = run_true(rt, &bundle).err();
                for _ in 0..RSS_RUNS {
                    if err.is_some() {
                        break;
                    }
                    match run_true(rt, &bundle) {
                        Ok(r) => rss.push(r.maxrss_kib as f64),
                        Err(e) => err = Some(e),
                    }
                }
                if let Some(e) = err {
                    line.note(format!("{}: failed: {e:#}", s.kind.name()));
                    failed = true;
                }
                if rt.is_wrapped() {
                    if let Some(mut noop) = rt.wrapper_noop_cmd() {
                        if let Ok(r) = timed(&mut noop) {
                            line.note(format!(
                                "{}: max over its unshare/sh wrapper and crun (wrapper alone {} KiB)",
                                s.kind.name(),
                                r.maxrss_kib
                            ));
                        }
                    }
                }
            }
            if failed {
                s.failed = Some(String::new());
            }
            let v = median(&rss).filter(|_| s.failed.is_none());
            line.value(s.kind.name(), v);
        }
        line.note(format!("median of {RSS_RUNS} runs"));
        Ok(line)
    }
}
