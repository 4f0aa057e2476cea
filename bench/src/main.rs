//! orca-bench: measures Orca and its real peers in the same run and prints
//! one line per figure:
//!
//! ```text
//! runtime.run_true.median_ms  orca=4.20  runc=19.10  crun=6.05  orca/runc=0.22  orca/crun=0.69  # notes
//! ```
//!
//! Figures live in one module per layer (runtime.rs now; shim.rs,
//! supervisor.rs, engine.rs later), each exporting `figures()`.

mod engine;
mod figure;
mod runtime;
mod shim;
mod supervisor;

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use orca_integration::{is_cgroup_hybrid, Runtime, RuntimeKind};

use figure::{Ctx, Figure};

/// Benchmarks Orca against runc, crun, containerd and dockerd on this machine.
#[derive(Parser, Debug)]
#[command(name = "orca-bench")]
struct Args {
    /// Measured iterations per subject for timing figures.
    #[arg(long, default_value_t = 30)]
    iterations: usize,
    /// Unmeasured warm-up iterations per subject.
    #[arg(long, default_value_t = 3)]
    warmup: usize,
    /// Only figures whose name starts with PREFIX (repeatable).
    #[arg(long = "only", value_name = "PREFIX")]
    only: Vec<String>,
    /// List the figures and exit.
    #[arg(long)]
    list: bool,
    /// Print failures and progress to stderr.
    #[arg(short, long)]
    verbose: bool,
}

/// Every figure, in print order. Later layers append theirs here.
fn all_figures() -> Vec<Box<dyn Figure>> {
    let mut v = Vec::new();
    v.extend(runtime::figures());
    v.extend(shim::figures());
    v.extend(supervisor::figures());
    v.extend(engine::figures());
    v
}

fn version_of(rt: &Runtime) -> String {
    let out = rt.run(&["--version"]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .unwrap_or("")
        .trim()
        .to_string()
}

fn print_header(ctx: &Ctx) {
    println!(
        "# orca-bench: iterations={} warmup={} (compare ratios within one run only)",
        ctx.iterations, ctx.warmup
    );
    for kind in [RuntimeKind::Orca, RuntimeKind::Runc, RuntimeKind::Crun] {
        match Runtime::try_new(kind) {
            Some(rt) => println!(
                "# {}: {} ({}){}",
                kind.name(),
                rt.binary().display(),
                version_of(&rt),
                if rt.is_wrapped() {
                    ", run inside `unshare -m` without /sys/fs/cgroup/unified"
                } else {
                    ""
                }
            ),
            None => println!("# {}: not available", kind.name()),
        }
    }
    if is_cgroup_hybrid() {
        println!("# host: cgroup v1 hybrid");
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let figures: Vec<Box<dyn Figure>> = all_figures()
        .into_iter()
        .filter(|f| args.only.is_empty() || args.only.iter().any(|p| f.name().starts_with(p)))
        .collect();
    if args.list {
        for f in &figures {
            println!("{:<34}  {}", f.name(), f.describe());
        }
        return ExitCode::SUCCESS;
    }
    if figures.is_empty() {
        eprintln!("orca-bench: no figure matches --only {:?}", args.only);
        return ExitCode::from(2);
    }
    if !nix_is_root() {
        eprintln!("orca-bench: must run as root (containers need namespaces, cgroups and mounts)");
        return ExitCode::from(1);
    }
    if args.iterations == 0 {
        eprintln!("orca-bench: --iterations must be at least 1");
        return ExitCode::from(2);
    }
    let ctx = Ctx {
        iterations: args.iterations,
        warmup: args.warmup,
        verbose: args.verbose,
    };
    print_header(&ctx);
    let mut failed = false;
    for f in figures {
        if ctx.verbose {
            eprintln!("measuring {} …", f.name());
        }
        match f.measure(&ctx) {
            Ok(line) => println!("{line}"),
            Err(e) => {
                failed = true;
                println!("{:<34}  error: {e:#}", f.name());
            }
        }
        let _ = std::io::stdout().flush();
    }
    if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

fn nix_is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}
