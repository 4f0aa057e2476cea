//! `orca-supervisor`: containerd's command line (`--config`, `--address`,
//! `--root`, `--state`, `--log-level`) and the `publish` subcommand shims
//! call through `-publish-binary`.

use std::io::Read;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use orca_supervisor::config::{Config, ConfigFile};

#[derive(Parser)]
#[command(
    name = "orca-supervisor",
    version,
    about = "Orca's container supervisor (containerd's role): containerd's gRPC API on a unix socket"
)]
struct Cli {
    /// Path to the TOML configuration file.
    #[arg(short = 'c', long)]
    config: Option<PathBuf>,
    /// gRPC socket path (default /run/orca/supervisor/supervisor.sock).
    #[arg(short = 'a', long)]
    address: Option<PathBuf>,
    /// Persistent data directory (default /var/lib/orca/supervisor).
    #[arg(long)]
    root: Option<PathBuf>,
    /// Runtime state directory (default /run/orca/supervisor).
    #[arg(long)]
    state: Option<PathBuf>,
    /// trace, debug, info, warn, error.
    #[arg(short = 'l', long)]
    log_level: Option<String>,
    #[command(subcommand)]
    command: Option<Cmd>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Publish an event (a protobuf Any on stdin) to a running supervisor.
    Publish {
        #[arg(long)]
        topic: String,
        #[arg(long)]
        namespace: String,
    },
}

/// glibc malloc settings for a long-running daemon, set before any other
/// thread exists. A fixed 128 KiB mmap threshold: by default glibc raises the
/// threshold to the largest block freed so far (redb's 1 MiB buffers at
/// open, layer buffers during a pull), after which such blocks come from the
/// brk heap and their pages stay resident once freed (≈ 1.3 MiB at idle).
/// Returns false when glibc refused the setting.
fn tune_malloc() -> bool {
    // SAFETY: mallopt only sets malloc parameters; called first thing in
    // main, before any other thread can allocate concurrently.
    unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024) == 1 }
}

/// The C `pow` for the whole binary. tokio's multi-thread scheduler calls
/// `f64::powf` (its task-poll-time average), and that is the only libm symbol
/// this binary needs: defined here, the linker (`--as-needed`) drops libm.so,
/// whose mapping (relocated at start, IFUNC resolvers run) costs ≈ 0.5 MiB of
/// RSS. The `libm` crate is the Rust port of musl's libm, whose `pow` is the
/// same algorithm as glibc's (ARM's optimized-routines, < 1 ULP).
#[no_mangle]
pub extern "C" fn pow(x: f64, y: f64) -> f64 {
    libm::pow(x, y)
}

fn main() -> anyhow::Result<()> {
    let malloc_tuned = tune_malloc();
    let cli = Cli::parse();
    let file = match &cli.config {
        Some(p) => ConfigFile::load(p)?,
        None => ConfigFile::default(),
    };
    let cfg = Config::resolve(file, cli.root, cli.state, cli.address, cli.log_level);
    // A plain level applies to Orca's own logs; the HTTP/2 stack stays at info.
    let directives = if cfg.log_level.contains('=') {
        cfg.log_level.clone()
    } else {
        format!(
            "{},h2=info,hyper=info,hyper_util=info,tower=info,tonic=info",
            cfg.log_level
        )
    };
    let filter = tracing_subscriber::EnvFilter::try_new(&directives)
        .with_context(|| format!("bad --log-level {:?}", cfg.log_level))?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    match orca_supervisor::util::raise_open_files_limit() {
        Ok(n) => tracing::debug!(limit = n, "open files"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the open files limit"),
    }
    if !malloc_tuned {
        tracing::warn!("mallopt(M_MMAP_THRESHOLD) failed: idle memory may be higher");
    }

    if let Some(Cmd::Publish { topic, namespace }) = cli.command {
        let mut event = Vec::new();
        std::io::stdin()
            .read_to_end(&mut event)
            .context("read the event from stdin")?;
        orca_supervisor::server::publish(&cfg.ttrpc_address, &namespace, &topic, &event)?;
        return Ok(());
    }

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("start the tokio runtime")?;
    rt.block_on(async move {
        let shutdown = async {
            use tokio::signal::unix::{signal, SignalKind};
            let (Ok(mut term), Ok(mut int)) = (
                signal(SignalKind::terminate()),
                signal(SignalKind::interrupt()),
            ) else {
                return std::future::pending().await;
            };
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            tracing::info!("shutting down");
        };
        orca_supervisor::server::serve(cfg, shutdown).await
    })?;
    Ok(())
}
