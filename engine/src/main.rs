//! orcad: the Orca engine daemon (Docker Engine API on a unix socket).
//!
//! Flags override `--config-file` (default /etc/orca/daemon.json), which
//! overrides the defaults. Without `--containerd` orcad starts (or reuses)
//! its own orca-supervisor.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Parser;
use orca_engine::config::{self, FileConfig, Flags};
use orca_engine::supervisor::ManagedSupervisor;
use orca_engine::{bind_with_group, serve, Engine, EngineConfig};
use tracing_subscriber::EnvFilter;

#[derive(Parser, Debug)]
#[command(
    name = "orcad",
    version,
    about = "Orca engine: the Docker Engine API on containerd"
)]
struct Args {
    /// Daemon configuration file (dockerd's daemon.json keys).
    #[arg(long)]
    config_file: Option<PathBuf>,
    /// Socket to listen on (unix:///path) [default: unix:///run/orca/orca.sock].
    #[arg(short = 'H', long = "host")]
    hosts: Vec<String>,
    /// containerd's gRPC socket; without it orcad runs its own orca-supervisor.
    #[arg(long)]
    containerd: Option<PathBuf>,
    /// containerd namespace for orcad's images and containers [default: orca].
    #[arg(long)]
    containerd_namespace: Option<String>,
    /// Persistent state (container records, logs) [default: /var/lib/orca].
    #[arg(long)]
    data_root: Option<PathBuf>,
    /// Runtime state (stdio FIFOs, pid files) [default: /run/orca].
    #[arg(long)]
    exec_root: Option<PathBuf>,
    /// containerd runtime for containers [default: io.containerd.runc.v2].
    #[arg(long)]
    default_runtime: Option<String>,
    /// containerd snapshotter [default: overlayfs].
    #[arg(long)]
    snapshotter: Option<String>,
    /// cgroup parent of containers (cgroupfs path) [default: /orca].
    #[arg(long)]
    cgroup_parent: Option<String>,
    /// Registry (host[:port]) reached over plain HTTP (loopback always is).
    #[arg(long = "insecure-registry")]
    insecure_registries: Vec<String>,
    /// Registry mirror (accepted and reported; not used for pulls yet).
    #[arg(long = "registry-mirror")]
    registry_mirrors: Vec<String>,
    /// Group owning the API socket (root's group if it does not exist) [default: orca].
    #[arg(short = 'G', long)]
    group: Option<String>,
    /// orcad's pid file [default: <exec-root>/orcad.pid].
    #[arg(short = 'p', long)]
    pidfile: Option<PathBuf>,
    /// Keep containers running when orcad stops.
    #[arg(long)]
    live_restore: bool,
    /// Seconds to wait for containers to stop at shutdown [default: 15].
    #[arg(long)]
    shutdown_timeout: Option<i64>,
    /// Default log driver (only json-file).
    #[arg(long)]
    log_driver: Option<String>,
    /// Default json-file option KEY=VALUE (max-size, max-file).
    #[arg(long = "log-opt")]
    log_opts: Vec<String>,
    /// Default ulimit NAME=SOFT[:HARD].
    #[arg(long = "default-ulimit")]
    default_ulimits: Vec<String>,
    /// Log filter (tracing env-filter syntax), e.g. "info" or "orca_engine=debug".
    #[arg(long)]
    log_level: Option<String>,
}

/// Writes the pid file, refusing when it names another live process.
fn write_pidfile(path: &Path) -> anyhow::Result<()> {
    if let Ok(s) = std::fs::read_to_string(path) {
        if let Ok(pid) = s.trim().parse::<i32>() {
            let me = std::process::id() as i32;
            if pid != me
                && pid > 0
                && nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok()
            {
                anyhow::bail!(
                    "pid file found, ensure orcad is not running or delete {}",
                    path.display()
                );
            }
        }
    }
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d)?;
    }
    std::fs::write(path, format!("{}\n", std::process::id()))
        .with_context(|| format!("cannot write the pid file {}", path.display()))
}

fn main() {
    if let Err(e) = run() {
        eprintln!("orcad: {e:#}");
        std::process::exit(1);
    }
}

#[tokio::main]
async fn run() -> anyhow::Result<()> {
    let args = Args::parse();
    let file_path = args
        .config_file
        .clone()
        .unwrap_or_else(|| PathBuf::from(config::DEFAULT_CONFIG_FILE));
    let file = FileConfig::load(&file_path, args.config_file.is_some())?;
    let flags = Flags {
        hosts: args.hosts,
        containerd: args.containerd,
        containerd_namespace: args.containerd_namespace,
        data_root: args.data_root,
        exec_root: args.exec_root,
        default_runtime: args.default_runtime,
        snapshotter: args.snapshotter,
        cgroup_parent: args.cgroup_parent,
        insecure_registries: args.insecure_registries,
        registry_mirrors: args.registry_mirrors,
        group: args.group,
        pidfile: args.pidfile,
        live_restore: args.live_restore.then_some(true),
        shutdown_timeout: args.shutdown_timeout,
        log_driver: args.log_driver,
        log_opts: args.log_opts,
        default_ulimits: args.default_ulimits,
        log_level: args.log_level,
    };
    let s = config::resolve(file, flags)?;
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_new(&s.log_level).unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    std::fs::create_dir_all(&s.exec_root)
        .with_context(|| format!("cannot create {}", s.exec_root.display()))?;
    write_pidfile(&s.pidfile)?;
    let result = run_daemon(&s).await;
    let _ = std::fs::remove_file(&s.pidfile);
    result
}

async fn run_daemon(s: &config::DaemonSettings) -> anyhow::Result<()> {
    let managed = match &s.containerd {
        Some(_) => None,
        None => Some(ManagedSupervisor::ensure(&s.data_root, &s.exec_root).await?),
    };
    let socket = match (&s.containerd, &managed) {
        (Some(p), _) => p.clone(),
        (None, Some(m)) => m.socket().to_path_buf(),
        (None, None) => unreachable!("a managed supervisor exists without --containerd"),
    };
    let cfg = EngineConfig {
        containerd_socket: socket,
        namespace: s.namespace.clone(),
        data_root: s.data_root.clone(),
        exec_root: s.exec_root.clone(),
        runtime: s.runtime.clone(),
        snapshotter: s.snapshotter.clone(),
        cgroup_parent: s.cgroup_parent.clone(),
        insecure_registries: s.insecure_registries.clone(),
        registry_mirrors: s.registry_mirrors.clone(),
        live_restore: s.live_restore,
        shutdown_timeout: s.shutdown_timeout,
        log_opts: s.log_opts.clone(),
        default_ulimits: s.default_ulimits.clone(),
    };
    let engine = match Engine::new(cfg).await {
        Ok(e) => e,
        Err(e) => {
            if let Some(m) = managed {
                m.stop().await;
            }
            return Err(e);
        }
    };
    let listener = bind_with_group(&s.socket, &s.group)?;
    tracing::info!(socket = %s.socket.display(), live_restore = s.live_restore, "orcad listening");
    let shutdown = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("cannot install a SIGTERM handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    };
    serve(engine.clone(), listener, shutdown).await?;
    let _ = std::fs::remove_file(&s.socket);
    engine.shutdown().await;
    if let Some(m) = managed {
        if s.live_restore {
            m.detach();
        } else {
            m.stop().await;
        }
    }
    Ok(())
}
