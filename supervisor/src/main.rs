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

fn main() -> anyhow::Result<()> {
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
