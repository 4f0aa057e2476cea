//! Wiring: opens the stores, binds the gRPC socket (0660) and the ttrpc
//! events socket, and serves until a shutdown signal.

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;

use orca_proto as api;
use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;

use crate::config::Config;
use crate::content::ContentStore;
use crate::diff::LayerApplier;
use crate::error::{Error, IoContext, Result};
use crate::events::{serve_ttrpc_events, EventBus};
use crate::gc::Gc;
use crate::metadata::MetadataStore;
use crate::services::*;
use crate::snapshots::{Backend, Snapshotters};
use crate::tasks::ShimManager;

/// Builds the shared state of all services.
pub fn open_core(cfg: &Config) -> Result<Arc<Core>> {
    for d in [&cfg.root, &cfg.state] {
        std::fs::create_dir_all(d).ctx(|| format!("create {}", d.display()))?;
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o711))
            .ctx(|| format!("chmod {}", d.display()))?;
    }
    let meta = Arc::new(MetadataStore::open(&cfg.root)?);
    let content = ContentStore::open(&cfg.root, meta.clone())?;
    let snapshots = Arc::new(Snapshotters::open(
        &cfg.root,
        meta.clone(),
        default_snapshotter(cfg)?,
    )?);
    let applier = Arc::new(LayerApplier::new(&cfg.state, content.clone())?);
    let gc = Arc::new(Gc::new(meta.clone(), content.clone(), snapshots.clone()));
    let shims = Arc::new(ShimManager::new(
        &cfg.state,
        &cfg.address,
        &cfg.ttrpc_address,
        matches!(cfg.log_level.as_str(), "debug" | "trace"),
    )?);
    let uuid_path = cfg.root.join("uuid");
    let uuid = match std::fs::read_to_string(&uuid_path) {
        Ok(u) if !u.trim().is_empty() => u.trim().to_string(),
        _ => {
            let u = uuid::Uuid::new_v4().to_string();
            std::fs::write(&uuid_path, &u).ctx(|| format!("write {}", uuid_path.display()))?;
            u
        }
    };
    Ok(Arc::new(Core {
        meta,
        content,
        snapshots,
        applier,
        events: EventBus::new(),
        shims,
        gc,
        uuid,
    }))
}

/// The snapshotter for requests that name none: `default_snapshotter` from
/// the config (an unknown name is an error), `overlayfs` if unset; `native`
/// with a warning when overlayfs was chosen but cannot be mounted here
/// (checked once, by a test mount under the root).
fn default_snapshotter(cfg: &Config) -> Result<Backend> {
    let chosen = match cfg.default_snapshotter.as_deref() {
        None | Some("") => Backend::Overlay,
        Some(name) => Backend::from_name(name).ok_or_else(|| {
            Error::InvalidArgument(format!(
                "default_snapshotter = {name:?}: unknown snapshotter (use \"overlayfs\" or \"native\")"
            ))
        })?,
    };
    if chosen != Backend::Overlay {
        return Ok(chosen);
    }
    match crate::snapshots::overlay::check_supported(&cfg.root) {
        Ok(()) => Ok(Backend::Overlay),
        Err(why) => {
            tracing::warn!(reason = %why, "overlayfs cannot be mounted here: the default snapshotter is native");
            Ok(Backend::Native)
        }
    }
}

/// Re-attaches the shims of a previous run and publishes the exit (and
/// delete) of tasks whose shim died meanwhile, as containerd does.
pub async fn recover_tasks(core: &Core) {
    let exits = core.shims.recover().await;
    let live = core.shims.count();
    if live > 0 || !exits.is_empty() {
        tracing::info!(
            reattached = live,
            cleaned_up = exits.len(),
            "reloaded task bundles"
        );
    }
    for e in exits {
        core.events.publish(
            &e.namespace,
            "/tasks/exit",
            "TaskExit",
            &api::containerd::events::TaskExit {
                container_id: e.id.clone(),
                id: e.id.clone(),
                pid: e.pid,
                exit_status: e.exit_status,
                exited_at: e.exited_at,
            },
        );
        core.events.publish(
            &e.namespace,
            "/tasks/delete",
            "TaskDelete",
            &api::containerd::events::TaskDelete {
                container_id: e.id.clone(),
                pid: e.pid,
                exit_status: e.exit_status,
                exited_at: e.exited_at,
                id: String::new(),
            },
        );
    }
}

/// Serves the gRPC API on `cfg.address` and the ttrpc events service on
/// `cfg.ttrpc_address` until `shutdown` completes.
pub async fn serve(
    cfg: Config,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<()> {
    let core = open_core(&cfg)?;
    // Checks the [registry] settings before anything is started.
    let streams = crate::streaming::StreamManager::new();
    let transfer =
        crate::transfer::TransferService::new(core.clone(), streams.clone(), &cfg.registry)?;
    recover_tasks(&core).await;
    // Leases that expired while we were down, and whatever they held.
    if let Err(e) = core.gc.collect_now() {
        tracing::warn!(error = %e, "garbage collection at startup failed");
    }
    let gc_loop = tokio::spawn(core.gc.clone().run());
    if let Some(dir) = cfg.address.parent() {
        std::fs::create_dir_all(dir).ctx(|| format!("create {}", dir.display()))?;
    }
    let _ = std::fs::remove_file(&cfg.address);
    let listener =
        UnixListener::bind(&cfg.address).ctx(|| format!("bind {}", cfg.address.display()))?;
    std::fs::set_permissions(&cfg.address, std::fs::Permissions::from_mode(0o660))
        .ctx(|| format!("chmod {}", cfg.address.display()))?;
    let ttrpc_server = serve_ttrpc_events(&cfg.ttrpc_address, core.events.clone())?;
    let _ = std::fs::set_permissions(&cfg.ttrpc_address, std::fs::Permissions::from_mode(0o660));

    let (_health_reporter, health) = tonic_health::server::health_reporter();
    tracing::info!(address = %cfg.address.display(), ttrpc = %cfg.ttrpc_address.display(), root = %cfg.root.display(), state = %cfg.state.display(), "orca-supervisor serving");
    let result = tonic::transport::Server::builder()
        .add_service(health)
        .add_service(api::version::version_server::VersionServer::new(
            VersionService,
        ))
        .add_service(
            api::introspection::introspection_server::IntrospectionServer::new(
                IntrospectionService(core.clone()),
            ),
        )
        .add_service(api::namespaces::namespaces_server::NamespacesServer::new(
            NamespacesService(core.clone()),
        ))
        .add_service(api::images::images_server::ImagesServer::new(
            ImagesService(core.clone()),
        ))
        .add_service(api::containers::containers_server::ContainersServer::new(
            ContainersService(core.clone()),
        ))
        .add_service(api::leases::leases_server::LeasesServer::new(
            LeasesService(core.clone()),
        ))
        .add_service(
            api::content::content_server::ContentServer::new(ContentService(core.clone()))
                .max_decoding_message_size(32 << 20)
                .max_encoding_message_size(32 << 20),
        )
        .add_service(api::snapshots::snapshots_server::SnapshotsServer::new(
            SnapshotsService(core.clone()),
        ))
        .add_service(api::diff::diff_server::DiffServer::new(DiffService(
            core.clone(),
        )))
        .add_service(api::events::events_server::EventsServer::new(
            EventsService(core.clone()),
        ))
        .add_service(api::tasks::tasks_server::TasksServer::new(TasksService(
            core.clone(),
        )))
        .add_service(api::streaming::streaming_server::StreamingServer::new(
            crate::streaming::StreamingService { streams },
        ))
        .add_service(api::transfer::transfer_server::TransferServer::new(
            transfer,
        ))
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown)
        .await
        .map_err(|e| Error::Internal(format!("gRPC server: {e}")));
    gc_loop.abort();
    core.shims.shutdown_all();
    ttrpc_server.abort();
    let _ = std::fs::remove_file(&cfg.address);
    let _ = std::fs::remove_file(&cfg.ttrpc_address);
    result
}

/// `orca-supervisor publish`: forwards one event (a protobuf `Any` read
/// from stdin) to the supervisor's ttrpc events service, as shims started
/// with `-publish-binary` do.
pub fn publish(
    ttrpc_address: &std::path::Path,
    namespace: &str,
    topic: &str,
    event: &[u8],
) -> Result<()> {
    use containerd_shim_protos::protobuf::Message;
    let any = containerd_shim_protos::protobuf::well_known_types::any::Any::parse_from_bytes(event)
        .map_err(|e| {
            Error::InvalidArgument(format!("event on stdin is not a protobuf Any: {e}"))
        })?;
    let now = crate::util::now();
    let envelope = containerd_shim_protos::shim::event::Envelope {
        timestamp: containerd_shim_protos::protobuf::MessageField::some(
            containerd_shim_protos::protobuf::well_known_types::timestamp::Timestamp {
                seconds: now.seconds,
                nanos: now.nanos,
                ..Default::default()
            },
        ),
        namespace: namespace.to_string(),
        topic: topic.to_string(),
        event: containerd_shim_protos::protobuf::MessageField::some(any),
        ..Default::default()
    };
    let req = containerd_shim_protos::shim::events::ForwardRequest {
        envelope: containerd_shim_protos::protobuf::MessageField::some(envelope),
        ..Default::default()
    };
    let addr = format!("unix://{}", ttrpc_address.display());
    let client = ttrpc::Client::connect(&addr)
        .map_err(|e| Error::Unavailable(format!("connect {addr}: {e}")))?;
    containerd_shim_protos::EventsClient::new(client)
        .forward(ttrpc::context::with_timeout(5_000_000_000), &req)
        .map_err(|e| Error::Unavailable(format!("forward event to {addr}: {e}")))?;
    Ok(())
}
