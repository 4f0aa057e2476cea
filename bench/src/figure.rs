//! What a benchmark figure is, how it is measured and printed.

use std::fmt;
use std::io::{Read, Seek, SeekFrom};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

/// Settings shared by all figures.
#[derive(Debug, Clone)]
pub struct Ctx {
    /// Measured iterations per subject (after the warm-ups).
    pub iterations: usize,
    /// Unmeasured warm-up iterations per subject.
    pub warmup: usize,
    /// Print per-subject progress and failures to stderr.
    pub verbose: bool,
}

/// One figure: a name ("area.what.statistic_unit") and how to measure it
/// for Orca and its peers in the same run.
pub trait Figure {
    /// e.g. "runtime.run_true.median_ms".
    fn name(&self) -> &'static str;
    /// One sentence on what is measured (for `--list`).
    fn describe(&self) -> &'static str;
    /// Measures Orca and every peer; subjects that are missing or fail
    /// are `None` (printed `n/a`) with a note, not an error.
    fn measure(&self, ctx: &Ctx) -> Result<Line>;
}

/// A measured figure: Orca first, then each peer.
#[derive(Debug, Clone)]
pub struct Line {
    pub name: String,
    /// (subject, value); the first subject is Orca's.
    pub values: Vec<(String, Option<f64>)>,
    /// Decimals to print values with.
    pub precision: usize,
    /// Remarks printed after `#` (how a peer was measured, why n/a, …).
    pub notes: Vec<String>,
}

impl Line {
    pub fn new(name: &str, precision: usize) -> Line {
        Line {
            name: name.to_string(),
            values: Vec::new(),
            precision,
            notes: Vec::new(),
        }
    }

    pub fn value(&mut self, subject: &str, v: Option<f64>) {
        self.values.push((subject.to_string(), v));
    }

    pub fn note(&mut self, n: impl Into<String>) {
        self.notes.push(n.into());
    }
}

impl fmt::Display for Line {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:<34}", self.name)?;
        for (s, v) in &self.values {
            match v {
                Some(v) => write!(f, "  {s}={v:.*}", self.precision)?,
                None => write!(f, "  {s}=n/a")?,
            }
        }
        if let Some((ours, mine)) = self.values.first() {
            for (peer, theirs) in &self.values[1..] {
                match (mine, theirs) {
                    (Some(a), Some(b)) if *b > 0.0 => write!(f, "  {ours}/{peer}={:.2}", a / b)?,
                    _ => write!(f, "  {ours}/{peer}=n/a")?,
                }
            }
        }
        if !self.notes.is_empty() {
            write!(f, "  # {}", self.notes.join("; "))?;
        }
        Ok(())
    }
}

/// The median of some samples (mean of the middle two for an even count).
pub fn median(samples: &[f64]) -> Option<f64> {
    if samples.is_empty() {
        return None;
    }
    let mut s = samples.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let n = s.len();
    Some(if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    })
}

/// What one timed execution gave.
pub struct Run {
    pub wall: Duration,
    pub status: ExitStatus,
    /// Peak resident set size (KiB) of the process and the descendants it
    /// waited for, from wait4's rusage.
    pub maxrss_kib: i64,
    pub stderr: String,
}

impl Run {
    /// Ok if the command succeeded, else an error quoting its stderr.
    pub fn check(self, what: &str) -> Result<Run> {
        if self.status.success() {
            Ok(self)
        } else {
            anyhow::bail!(
                "{what} failed ({}): {}",
                self.status,
                self.stderr.trim().lines().last().unwrap_or("")
            )
        }
    }
}

/// Runs `cmd` (stdin and stdout /dev/null, stderr to a temp file prepared
/// beforehand) and times spawn-to-reap with `Instant`; reaps it with wait4
/// to get its rusage.
pub fn timed(cmd: &mut Command) -> Result<Run> {
    use std::os::unix::process::ExitStatusExt;
    let mut err = tempfile::tempfile().context("creating a temp file for stderr")?;
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(err.try_clone()?);
    let start = Instant::now();
    let child = cmd.spawn().with_context(|| format!("spawning {cmd:?}"))?;
    let pid = child.id() as libc::pid_t;
    let mut status: libc::c_int = 0;
    // SAFETY: rusage is plain old data; wait4 fills it in.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let r = loop {
        // SAFETY: pid is our child, not yet reaped (we never call child.wait()).
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
        if r == -1 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
            continue;
        }
        break r;
    };
    let wall = start.elapsed();
    if r != pid {
        return Err(std::io::Error::last_os_error()).context("wait4");
    }
    drop(child);
    let mut stderr = String::new();
    err.seek(SeekFrom::Start(0))?;
    let _ = err.read_to_string(&mut stderr);
    Ok(Run {
        wall,
        status: ExitStatus::from_raw(status),
        maxrss_kib: ru.ru_maxrss,
        stderr,
    })
}

/// Duration in milliseconds.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
