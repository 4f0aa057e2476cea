//! orcad: the Orca engine daemon (Docker Engine API on unix sockets and,
//! with TLS client verification only, on tcp).
//!
//! Flags override `--config-file` (default /etc/orca/daemon.json), which
//! overrides the defaults. Without `--containerd` orcad starts (or reuses)
//! its own orca-supervisor.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Parser;
use orca_engine::config::ListenHost;
use orca_engine::config::{self, FileConfig, Flags};
use orca_engine::supervisor::ManagedSupervisor;
use orca_engine::tls::{self, Listener};
use orca_engine::{bind_with_group, Engine, EngineConfig};
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
    /// Address to listen on, repeatable: unix:///path or tcp://HOST:PORT
    /// (tcp only with --tlsverify) [default: unix:///run/orca/orca.sock].
    #[arg(short = 'H', long = "host")]
    hosts: Vec<String>,
    /// Use TLS (implied by --tlsverify; tcp hosts need --tlsverify).
    #[arg(long)]
    tls: bool,
    /// Use TLS and require client certificates signed by --tlscacert.
    #[arg(long)]
    tlsverify: bool,
    /// CA certificate (PEM) client certificates must chain to.
    #[arg(long)]
    tlscacert: Option<PathBuf>,
    /// Server certificate (PEM).
    #[arg(long)]
    tlscert: Option<PathBuf>,
    /// Server private key (PEM).
    #[arg(long)]
    tlskey: Option<PathBuf>,
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
    /// Docker Hub mirror tried first for pulls (repeatable).
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
    /// The default bridge network's Linux bridge; "none": containers keep
    /// loopback only by default [default: orca0].
    #[arg(short = 'b', long)]
    bridge: Option<String>,
    /// The default bridge's address/prefix, e.g. 172.17.0.1/16.
    #[arg(long)]
    bip: Option<String>,
    /// Manage iptables rules (NAT, forwarding, isolation) [default: true].
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    iptables: Option<bool>,
    /// Forward published ports from orcad too (needed for 127.0.0.1) [default: true].
    #[arg(long = "userland-proxy", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    userland_proxy: Option<bool>,
    /// Default host address of published ports [default: 0.0.0.0].
    #[arg(long)]
    ip: Option<String>,
    /// Address pool of new networks, base=CIDR,size=N (repeatable).
    #[arg(long = "default-address-pool")]
    default_address_pools: Vec<String>,
    /// Prefix of orcad's iptables chains [default: ORCA].
    #[arg(long = "iptables-chain")]
    iptables_chain: Option<String>,
    /// The address `--add-host NAME:host-gateway` maps to [default: the
    /// default bridge's gateway].
    #[arg(long = "host-gateway-ip")]
    host_gateway_ip: Option<String>,
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
        net: orca_engine::network::NetOptions {
            bridge: args.bridge,
            bip: args.bip,
            iptables: args.iptables,
            userland_proxy: args.userland_proxy,
            ip: args.ip,
            pools: (!args.default_address_pools.is_empty()).then_some(args.default_address_pools),
            chain: args.iptables_chain,
            host_gateway_ip: args.host_gateway_ip,
        },
        tls: args.tls.then_some(true),
        tlsverify: args.tlsverify.then_some(true),
        tlscacert: args.tlscacert,
        tlscert: args.tlscert,
        tlskey: args.tlskey,
    };
    let s = config::resolve(file, flags)?;
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_new(&s.log_level).unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match orca_engine::util::raise_open_files_limit() {
        Ok(n) => tracing::debug!(limit = n, "open files"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the open files limit"),
    }
    std::fs::create_dir_all(&s.exec_root)
        .with_context(|| format!("cannot create {}", s.exec_root.display()))?;
    write_pidfile(&s.pidfile)?;
    let result = run_daemon(&s).await;
    let _ = std::fs::remove_file(&s.pidfile);
    result
}

/// Binds every host (unix sockets root:GROUP 0660, tcp with TLS).
async fn bind_all(s: &config::DaemonSettings) -> anyhow::Result<Vec<Listener>> {
    let tls_config = match &s.tls {
        Some(files) => Some(tls::server_config(files)?),
        None => None,
    };
    let mut out = Vec::new();
    for h in &s.hosts {
        match h {
            ListenHost::Unix(p) => out.push(Listener::Unix(bind_with_group(p, &s.group)?)),
            ListenHost::Tcp(addr) => {
                let cfg = tls_config.clone().ok_or_else(|| {
                    anyhow::anyhow!("tcp://{addr}: no TLS configuration (needs --tlsverify)")
                })?;
                out.push(Listener::bind_tls(addr, cfg).await?);
            }
        }
    }
    Ok(out)
}

fn remove_sockets(s: &config::DaemonSettings) {
    for h in &s.hosts {
        if let ListenHost::Unix(p) = h {
            let _ = std::fs::remove_file(p);
        }
    }
}

async fn run_daemon(s: &config::DaemonSettings) -> anyhow::Result<()> {
    // Signal handlers before anything else: a SIGTERM/SIGINT that arrives
    // while orcad starts (networking, restore) is kept and handled as soon
    // as it serves, with a clean shutdown, instead of killing it half-way.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot install a SIGTERM handler")?;
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .context("cannot install a SIGINT handler")?;
    // Listeners first (TLS files read, ports bound): a bad file or a busy
    // port fails the start before any container is touched. Clients that
    // connect meanwhile wait in the backlog until the engine is ready.
    let listeners = match bind_all(s).await {
        Ok(l) => l,
        Err(e) => {
            remove_sockets(s);
            return Err(e);
        }
    };
    let managed = match &s.containerd {
        Some(_) => None,
        None => match ManagedSupervisor::ensure(&s.data_root, &s.exec_root).await {
            Ok(m) => Some(m),
            Err(e) => {
                remove_sockets(s);
                return Err(e);
            }
        },
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
        network: s.network.clone(),
    };
    let engine = match Engine::new(cfg).await {
        Ok(e) => e,
        Err(e) => {
            if let Some(m) = managed {
                m.stop().await;
            }
            remove_sockets(s);
            return Err(e);
        }
    };
    let hosts: Vec<String> = s.hosts.iter().map(|h| h.display()).collect();
    tracing::info!(hosts = %hosts.join(","), tls = s.tls.is_some(), live_restore = s.live_restore, "orcad listening");
    let shutdown = async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    };
    let served = tls::serve_all(engine.clone(), listeners, shutdown).await;
    remove_sockets(s);
    if let Err(e) = &served {
        tracing::error!("serving ended: {e:#}");
    }
    engine.shutdown().await;
    if let Some(m) = managed {
        if s.live_restore {
            m.detach();
        } else {
            m.stop().await;
        }
    }
    served
}
