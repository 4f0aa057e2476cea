//! orcad: the Orca engine daemon (Docker Engine API on a unix socket).

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use orca_engine::{bind, serve, Engine, EngineConfig};
use tracing_subscriber::EnvFilter;

#[derive(Parser, Debug)]
#[command(
    name = "orcad",
    version,
    about = "Orca engine: the Docker Engine API on containerd"
)]
struct Args {
    /// Socket to listen on (unix:///path).
    #[arg(
        short = 'H',
        long = "host",
        default_value = "unix:///run/orca/orca.sock"
    )]
    host: String,
    /// containerd's gRPC socket.
    #[arg(long, default_value = "/run/containerd/containerd.sock")]
    containerd: PathBuf,
    /// containerd namespace for orcad's images and containers.
    #[arg(long, default_value = "orca")]
    containerd_namespace: String,
    /// Persistent state (container records, logs).
    #[arg(long, default_value = "/var/lib/orca")]
    data_root: PathBuf,
    /// Runtime state (stdio FIFOs).
    #[arg(long, default_value = "/run/orca")]
    exec_root: PathBuf,
    /// containerd runtime for containers.
    #[arg(long, default_value = "io.containerd.runc.v2")]
    default_runtime: String,
    /// containerd snapshotter.
    #[arg(long, default_value = "overlayfs")]
    snapshotter: String,
    /// cgroup parent of containers (cgroupfs path).
    #[arg(long, default_value = "/orca")]
    cgroup_parent: String,
    /// Registry (host[:port]) reached over plain HTTP (loopback always is).
    #[arg(long = "insecure-registry")]
    insecure_registries: Vec<String>,
    /// Log filter (tracing env-filter syntax), e.g. "info" or "orca_engine=debug".
    #[arg(long, default_value = "info")]
    log_level: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_new(&args.log_level).unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let sock = args
        .host
        .strip_prefix("unix://")
        .with_context(|| format!("-H {}: only unix:///path sockets are supported", args.host))?;
    let cfg = EngineConfig {
        containerd_socket: args.containerd,
        namespace: args.containerd_namespace,
        data_root: args.data_root,
        exec_root: args.exec_root,
        runtime: args.default_runtime,
        snapshotter: args.snapshotter,
        cgroup_parent: args.cgroup_parent,
        insecure_registries: args.insecure_registries,
    };
    let engine = Engine::new(cfg).await?;
    let listener = bind(std::path::Path::new(sock))?;
    tracing::info!(socket = sock, "orcad listening");
    let shutdown = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("cannot install a SIGTERM handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    };
    serve(engine, listener, shutdown).await?;
    let _ = std::fs::remove_file(sock);
    Ok(())
}
