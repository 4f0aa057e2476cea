#![recursion_limit = "256"]
//! orcad: the Docker Engine API on a unix socket, implemented on
//! containerd's gRPC API (dockerd's role in the Orca stack).
//!
//! - [`api`]: version prefixes, router, handlers (hyper 1).
//! - [`containerd`]: tonic client over the containerd socket, namespaced.
//! - [`images`] / [`push`] / [`reference`]: pull into containerd (via `orca-registry`), push, list.
//! - [`containers`]: container records, tasks, stdio, logs, wait,
//!   restart policies, live restore.
//! - [`spec`]: Docker's default OCI spec.
//! - [`events`]: `GET /events` (buffer, filters, since/until).
//! - [`config`]: `daemon.json` + flags, json-file log options.
//! - [`networks`] / [`network`]: bridge networks (records, addresses,
//!   veths, iptables, published ports, embedded DNS).
//! - [`volumes`]: the `local` volume driver, container volume mounts.
//! - [`supervisor`]: the orca-supervisor orcad starts without `--containerd`.

pub mod api;
pub mod archive;
pub mod config;
pub mod containerd;
pub mod containers;
pub mod error;
pub mod events;
pub mod exec;
pub mod image_writer;
pub mod images;
pub mod info;
pub mod network;
pub mod networks;
pub mod ops;
pub mod prune;
pub mod push;
pub mod reference;
pub mod seccomp_profile;
pub mod spec;
pub mod supervisor;
pub mod tls;
pub mod transfer;
pub mod util;
pub mod volumes;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::UnixListener;
use tracing::{debug, info, warn};

pub use error::{EngineError, Result};

/// orcad's settings.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub containerd_socket: PathBuf,
    pub namespace: String,
    pub data_root: PathBuf,
    pub exec_root: PathBuf,
    pub runtime: String,
    pub snapshotter: String,
    pub cgroup_parent: String,
    pub insecure_registries: Vec<String>,
    /// `registry-mirrors`: Docker Hub mirrors tried first for pulls.
    pub registry_mirrors: Vec<String>,
    /// Leave containers running when orcad stops.
    pub live_restore: bool,
    /// Seconds to wait for containers to stop at shutdown.
    pub shutdown_timeout: i64,
    /// Daemon-wide json-file log options.
    pub log_opts: BTreeMap<String, String>,
    /// Daemon-wide ulimits (HostConfig.Ulimits entries).
    pub default_ulimits: Vec<Value>,
    /// Networking (`--bridge`, `--bip`, `--iptables`, …).
    pub network: network::NetConfig,
}

impl EngineConfig {
    /// The defaults of the `orcad` flags for a containerd socket.
    pub fn new(containerd_socket: PathBuf) -> EngineConfig {
        EngineConfig {
            containerd_socket,
            namespace: "orca".into(),
            data_root: "/var/lib/orca".into(),
            exec_root: "/run/orca".into(),
            runtime: "io.containerd.runc.v2".into(),
            snapshotter: "overlayfs".into(),
            cgroup_parent: "/orca".into(),
            insecure_registries: Vec::new(),
            registry_mirrors: Vec::new(),
            live_restore: false,
            shutdown_timeout: config::DEFAULT_SHUTDOWN_TIMEOUT,
            log_opts: BTreeMap::new(),
            default_ulimits: Vec::new(),
            network: network::NetConfig::default(),
        }
    }
}

/// The engine: shared by every connection.
pub struct Engine {
    pub cfg: EngineConfig,
    pub id: String,
    pub ctrd: containerd::Containerd,
    pub images: images::ImageService,
    pub containers: Arc<containers::Containers>,
    pub events: Arc<events::EventBus>,
    pub networks: Arc<networks::Networks>,
}

impl Engine {
    /// Connects to containerd and loads the state under data-root.
    pub async fn new(cfg: EngineConfig) -> anyhow::Result<Arc<Engine>> {
        std::fs::create_dir_all(&cfg.data_root)?;
        std::fs::create_dir_all(&cfg.exec_root)?;
        let id_path = cfg.data_root.join("engine-id");
        let id = match std::fs::read_to_string(&id_path) {
            Ok(s) if !s.trim().is_empty() => s.trim().to_string(),
            _ => {
                let id = util::random_hex(16);
                util::write_atomic(&id_path, id.as_bytes())?;
                id
            }
        };
        let ctrd = containerd::Containerd::connect(&cfg.containerd_socket, &cfg.namespace).await?;
        let (v, _) = ctrd.server_version().await.map_err(|e| {
            anyhow::anyhow!(
                "containerd at {} does not answer: {e}",
                cfg.containerd_socket.display()
            )
        })?;
        info!(containerd = %v, namespace = %cfg.namespace, "connected to containerd");
        let images = images::ImageService::new(
            ctrd.clone(),
            images::registry_client(&cfg)?,
            cfg.snapshotter.clone(),
        );
        let events = Arc::new(events::EventBus::default());
        let networks =
            networks::Networks::new(&cfg.data_root, cfg.network.clone(), events.clone()).await?;
        let containers = containers::Containers::new(
            containers::ContainersConfig {
                data_root: cfg.data_root.clone(),
                exec_root: cfg.exec_root.clone(),
                runtime: cfg.runtime.clone(),
                snapshotter: cfg.snapshotter.clone(),
                cgroup_parent: cfg.cgroup_parent.clone(),
                log_opts: cfg.log_opts.clone(),
                default_ulimits: cfg.default_ulimits.clone(),
            },
            ctrd.clone(),
            images.clone(),
            events.clone(),
            networks.clone(),
        )
        .await?;
        Ok(Arc::new(Engine {
            cfg,
            id,
            ctrd,
            images,
            containers,
            events,
            networks,
        }))
    }

    /// Daemon shutdown: stops running containers (up to `shutdown-timeout`)
    /// unless live-restore is set.
    pub async fn shutdown(&self) {
        self.containers
            .shutdown(
                self.cfg.live_restore,
                Duration::from_secs(self.cfg.shutdown_timeout.max(0) as u64),
            )
            .await;
        self.networks.shutdown(self.cfg.live_restore).await;
    }
}

/// Binds the API socket like [`bind`], owned by root:`group` (mode 0660).
/// A group that does not exist falls back to root's group, with a warning
/// (dockerd's behaviour for its `docker` group).
pub fn bind_with_group(path: &std::path::Path, group: &str) -> anyhow::Result<UnixListener> {
    let l = bind(path)?;
    let gid = match nix::unistd::Group::from_name(group) {
        Ok(Some(g)) => Some(g.gid),
        Ok(None) => {
            warn!(
                group,
                "group not found: the API socket stays root:root (mode 0660)"
            );
            None
        }
        Err(e) => {
            warn!(group, "cannot look up the socket group: {e}");
            None
        }
    };
    if let Some(gid) = gid {
        nix::unistd::chown(path, None, Some(gid))
            .map_err(|e| anyhow::anyhow!("chown {} to root:{group}: {e}", path.display()))?;
    }
    Ok(l)
}

/// Binds the API socket (replacing a stale one), mode 0660.
pub fn bind(path: &std::path::Path) -> anyhow::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(anyhow::anyhow!(
                "cannot remove stale socket {}: {e}",
                path.display()
            ))
        }
    }
    let l = UnixListener::bind(path)
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
    Ok(l)
}

/// Serves the API until `shutdown` resolves.
pub async fn serve(
    engine: Arc<Engine>,
    listener: UnixListener,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => {
                info!("shutting down");
                return Ok(());
            }
            accepted = listener.accept() => {
                let (stream, _) = match accepted {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::warn!("accept failed: {e}");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                };
                tokio::spawn(serve_connection(engine.clone(), stream));
            }
        }
    }
}

/// Serves HTTP/1.1 (with upgrades, for attach/exec hijacking) on one
/// accepted connection, unix or TLS.
pub async fn serve_connection<I>(engine: Arc<Engine>, io: I)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = hyper::service::service_fn(move |req| api::handle(engine.clone(), req));
    if let Err(e) = http1::Builder::new()
        .serve_connection(TokioIo::new(io), svc)
        .with_upgrades()
        .await
    {
        debug!("connection ended: {e}");
    }
}
