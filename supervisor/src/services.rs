//! The gRPC services (containerd v1 names and semantics) over the stores.
//! Namespaced services read the namespace from the `containerd-namespace`
//! metadata header and the lease (if any) from `containerd-lease`.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;

use orca_proto as api;
use orca_proto::tonic::{self, Request, Response, Status, Streaming};
use prost_types::Any;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};

use crate::content::{apply_label_update, ContentStore};
use crate::diff::LayerApplier;
use crate::error::{Error, Result};
use crate::events::{envelope_matches, EventBus};
use crate::filters::{label_field, Filter};
use crate::gc::Gc;
use crate::metadata::{Kind, MetadataStore};
use crate::snapshots::{Snapshotter, Snapshotters, NATIVE, OVERLAYFS};
use crate::tasks::{pb_timestamp, CreateTask, ShimManager};
use crate::util::{now, validate_identifier};

type GrpcResult<T> = std::result::Result<Response<T>, Status>;
type BoxStream<T> = Pin<Box<dyn Stream<Item = std::result::Result<T, Status>> + Send>>;

/// Everything the services share.
pub struct Core {
    pub meta: Arc<MetadataStore>,
    pub content: Arc<ContentStore>,
    pub snapshots: Arc<Snapshotters>,
    pub applier: Arc<LayerApplier>,
    pub events: EventBus,
    pub shims: Arc<ShimManager>,
    pub gc: Arc<Gc>,
    pub uuid: String,
}

impl Core {
    /// Collects garbage now (`sync` requests) or soon.
    async fn collect_garbage(&self, sync: bool) -> std::result::Result<(), Status> {
        if sync {
            let gc = self.gc.clone();
            blocking(move || gc.collect_now()).await?;
        } else {
            self.gc.schedule();
        }
        Ok(())
    }
}

fn namespace<T>(req: &Request<T>) -> std::result::Result<String, Status> {
    let ns = req
        .metadata()
        .get(api::NAMESPACE_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    if ns.is_empty() {
        return Err(Status::failed_precondition(
            "namespace is required: set the containerd-namespace header",
        ));
    }
    validate_identifier("namespace", &ns)?;
    Ok(ns)
}

fn lease<T>(req: &Request<T>) -> Option<String> {
    req.metadata()
        .get("containerd-lease")
        .and_then(|v| v.to_str().ok())
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

fn mask(m: &Option<prost_types::FieldMask>) -> Vec<String> {
    m.as_ref().map(|m| m.paths.clone()).unwrap_or_default()
}

/// Runs blocking work (disk, shim ttrpc calls) off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> std::result::Result<T, Status> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(Status::from),
        Err(e) => Err(Status::internal(format!("worker failed: {e}"))),
    }
}

fn stream_of<T: Send + 'static>(items: Vec<T>) -> BoxStream<T> {
    Box::pin(tokio_stream::iter(items.into_iter().map(Ok)))
}

// ---------------------------------------------------------------- version

pub struct VersionService;

#[tonic::async_trait]
impl api::version::version_server::Version for VersionService {
    async fn version(&self, _: Request<()>) -> GrpcResult<api::version::VersionResponse> {
        Ok(Response::new(api::version::VersionResponse {
            version: format!("orca-supervisor {}", env!("CARGO_PKG_VERSION")),
            revision: "orca".into(),
        }))
    }
}

// ---------------------------------------------------------- introspection

pub struct IntrospectionService(pub Arc<Core>);

/// The plugins this supervisor provides, as containerd names them.
pub fn plugins() -> Vec<api::introspection::Plugin> {
    let p = |t: &str, id: &str| api::introspection::Plugin {
        r#type: t.into(),
        id: id.into(),
        ..Default::default()
    };
    vec![
        p("io.containerd.content.v1", "content"),
        p("io.containerd.snapshotter.v1", OVERLAYFS),
        p("io.containerd.snapshotter.v1", NATIVE),
        p("io.containerd.metadata.v1", "redb"),
        p("io.containerd.differ.v1", "walking"),
        p("io.containerd.event.v1", "exchange"),
        p("io.containerd.runtime.v2", "task"),
        p("io.containerd.ttrpc.v1", "events"),
        p("io.containerd.grpc.v1", "containers"),
        p("io.containerd.grpc.v1", "content"),
        p("io.containerd.grpc.v1", "diff"),
        p("io.containerd.grpc.v1", "events"),
        p("io.containerd.grpc.v1", "healthcheck"),
        p("io.containerd.grpc.v1", "images"),
        p("io.containerd.grpc.v1", "introspection"),
        p("io.containerd.grpc.v1", "leases"),
        p("io.containerd.grpc.v1", "namespaces"),
        p("io.containerd.grpc.v1", "snapshots"),
        p("io.containerd.grpc.v1", "tasks"),
        p("io.containerd.grpc.v1", "version"),
        p("io.containerd.grpc.v1", "streaming"),
        p("io.containerd.grpc.v1", "transfer"),
        p("io.containerd.transfer.v1", "local"),
    ]
}

#[tonic::async_trait]
impl api::introspection::introspection_server::Introspection for IntrospectionService {
    async fn plugins(
        &self,
        req: Request<api::introspection::PluginsRequest>,
    ) -> GrpcResult<api::introspection::PluginsResponse> {
        let f = Filter::parse_all(&req.get_ref().filters)?;
        let plugins = plugins()
            .into_iter()
            .filter(|p| {
                f.matches(&|path: &[String]| match path.first().map(String::as_str) {
                    Some("type") => Some(p.r#type.clone()),
                    Some("id") => Some(p.id.clone()),
                    _ => None,
                })
            })
            .collect();
        Ok(Response::new(api::introspection::PluginsResponse {
            plugins,
        }))
    }

    async fn server(&self, _: Request<()>) -> GrpcResult<api::introspection::ServerResponse> {
        let pidns = std::fs::read_link("/proc/self/ns/pid")
            .ok()
            .and_then(|l| {
                l.to_string_lossy()
                    .trim_start_matches("pid:[")
                    .trim_end_matches(']')
                    .parse()
                    .ok()
            })
            .unwrap_or(0);
        Ok(Response::new(api::introspection::ServerResponse {
            uuid: self.0.uuid.clone(),
            pid: std::process::id() as u64,
            pidns,
            deprecations: vec![],
        }))
    }

    async fn plugin_info(
        &self,
        _: Request<api::introspection::PluginInfoRequest>,
    ) -> GrpcResult<api::introspection::PluginInfoResponse> {
        Err(Status::unimplemented(
            "orca-supervisor: Introspection.PluginInfo is not implemented",
        ))
    }
}

// ------------------------------------------------------------- namespaces

pub struct NamespacesService(pub Arc<Core>);

#[tonic::async_trait]
impl api::namespaces::namespaces_server::Namespaces for NamespacesService {
    async fn get(
        &self,
        req: Request<api::namespaces::GetNamespaceRequest>,
    ) -> GrpcResult<api::namespaces::GetNamespaceResponse> {
        // containerd answers Get for a namespace that has no record with the
        // name and no labels (its store reads labels, absent = none); dockerd
        // relies on this when it looks up the default runtime label of `moby`.
        let name = &req.get_ref().name;
        validate_identifier("namespace", name)?;
        let ns = self
            .0
            .meta
            .get_msg::<api::namespaces::Namespace>(Kind::Namespace, name, name)?
            .unwrap_or_else(|| api::namespaces::Namespace {
                name: name.clone(),
                labels: Default::default(),
            });
        Ok(Response::new(api::namespaces::GetNamespaceResponse {
            namespace: Some(ns),
        }))
    }

    async fn list(
        &self,
        _: Request<api::namespaces::ListNamespacesRequest>,
    ) -> GrpcResult<api::namespaces::ListNamespacesResponse> {
        let namespaces = self
            .0
            .meta
            .list_all_msgs::<api::namespaces::Namespace>(Kind::Namespace)?
            .into_iter()
            .map(|(_, _, n)| n)
            .collect();
        Ok(Response::new(api::namespaces::ListNamespacesResponse {
            namespaces,
        }))
    }

    async fn create(
        &self,
        req: Request<api::namespaces::CreateNamespaceRequest>,
    ) -> GrpcResult<api::namespaces::CreateNamespaceResponse> {
        let ns = req
            .into_inner()
            .namespace
            .ok_or_else(|| Status::invalid_argument("namespace missing"))?;
        validate_identifier("namespace", &ns.name)?;
        self.0.meta.update(|tx| {
            if tx.exists(Kind::Namespace, &ns.name, &ns.name)? {
                return Err(Error::AlreadyExists(format!("namespace {}", ns.name)));
            }
            tx.put_msg(Kind::Namespace, &ns.name, &ns.name, &ns)
        })?;
        self.0.events.publish(
            &ns.name,
            "/namespaces/create",
            "NamespaceCreate",
            &api::containerd::events::NamespaceCreate {
                name: ns.name.clone(),
                labels: ns.labels.clone(),
            },
        );
        Ok(Response::new(api::namespaces::CreateNamespaceResponse {
            namespace: Some(ns),
        }))
    }

    async fn update(
        &self,
        req: Request<api::namespaces::UpdateNamespaceRequest>,
    ) -> GrpcResult<api::namespaces::UpdateNamespaceResponse> {
        let r = req.into_inner();
        let paths = mask(&r.update_mask);
        let new = r
            .namespace
            .ok_or_else(|| Status::invalid_argument("namespace missing"))?;
        let out = self.0.meta.update(|tx| {
            let mut cur: api::namespaces::Namespace = tx
                .get_msg(Kind::Namespace, &new.name, &new.name)?
                .ok_or_else(|| Error::NotFound(format!("namespace {}", new.name)))?;
            apply_label_update(&mut cur.labels, &new.labels, &paths)?;
            tx.put_msg(Kind::Namespace, &new.name, &new.name, &cur)?;
            Ok(cur)
        })?;
        Ok(Response::new(api::namespaces::UpdateNamespaceResponse {
            namespace: Some(out),
        }))
    }

    async fn delete(
        &self,
        req: Request<api::namespaces::DeleteNamespaceRequest>,
    ) -> GrpcResult<()> {
        let name = req.into_inner().name;
        self.0.meta.update(|tx| {
            if !tx.exists(Kind::Namespace, &name, &name)? {
                return Err(Error::NotFound(format!("namespace {name}")));
            }
            for (kind, what) in [
                (Kind::Image, "images"),
                (Kind::Container, "containers"),
                (Kind::Content, "content"),
                (Kind::Snapshot, "snapshots"),
                (Kind::NativeSnapshot, "snapshots"),
                (Kind::Lease, "leases"),
            ] {
                if !tx.list(kind, &name)?.is_empty() {
                    return Err(Error::FailedPrecondition(format!(
                        "namespace {name} must be empty, but it still has {what}"
                    )));
                }
            }
            tx.delete(Kind::Namespace, &name, &name)?;
            Ok(())
        })?;
        self.0.events.publish(
            &name,
            "/namespaces/delete",
            "NamespaceDelete",
            &api::containerd::events::NamespaceDelete { name: name.clone() },
        );
        Ok(Response::new(()))
    }
}

// ------------------------------------------------------------------ images

pub struct ImagesService(pub Arc<Core>);

fn image_matches(f: &Filter, i: &api::images::Image) -> bool {
    f.matches(&|p: &[String]| match p.first().map(String::as_str) {
        Some("name") => Some(i.name.clone()),
        Some("target") => match p.get(1).map(String::as_str) {
            Some("digest") => i.target.as_ref().map(|t| t.digest.clone()),
            Some("mediatype") => i.target.as_ref().map(|t| t.media_type.clone()),
            _ => None,
        },
        Some("labels") => label_field(&i.labels, &p[1..]),
        _ => None,
    })
}

#[tonic::async_trait]
impl api::images::images_server::Images for ImagesService {
    async fn get(
        &self,
        req: Request<api::images::GetImageRequest>,
    ) -> GrpcResult<api::images::GetImageResponse> {
        let ns = namespace(&req)?;
        let name = &req.get_ref().name;
        let image = self
            .0
            .meta
            .get_msg::<api::images::Image>(Kind::Image, &ns, name)?
            .ok_or_else(|| Error::NotFound(format!("image {name:?}")))?;
        Ok(Response::new(api::images::GetImageResponse {
            image: Some(image),
        }))
    }

    async fn list(
        &self,
        req: Request<api::images::ListImagesRequest>,
    ) -> GrpcResult<api::images::ListImagesResponse> {
        let ns = namespace(&req)?;
        let f = Filter::parse_all(&req.get_ref().filters)?;
        let images = self
            .0
            .meta
            .list_msgs::<api::images::Image>(Kind::Image, &ns)?
            .into_iter()
            .map(|(_, i)| i)
            .filter(|i| image_matches(&f, i))
            .collect();
        Ok(Response::new(api::images::ListImagesResponse { images }))
    }

    async fn create(
        &self,
        req: Request<api::images::CreateImageRequest>,
    ) -> GrpcResult<api::images::CreateImageResponse> {
        let ns = namespace(&req)?;
        let mut image = req
            .into_inner()
            .image
            .ok_or_else(|| Status::invalid_argument("image missing"))?;
        if image.name.is_empty() {
            return Err(Status::invalid_argument("image name must not be empty"));
        }
        let target = image
            .target
            .as_ref()
            .ok_or_else(|| Status::invalid_argument("image target missing"))?;
        if target.digest.is_empty() || target.media_type.is_empty() {
            return Err(Status::invalid_argument(
                "image target needs a digest and a media type",
            ));
        }
        let t = now();
        image.created_at = Some(t);
        image.updated_at = Some(t);
        self.0.meta.update(|tx| {
            if tx.exists(Kind::Image, &ns, &image.name)? {
                return Err(Error::AlreadyExists(format!("image {:?}", image.name)));
            }
            tx.ensure_namespace(&ns)?;
            tx.put_msg(Kind::Image, &ns, &image.name, &image)
        })?;
        self.0.events.publish(
            &ns,
            "/images/create",
            "ImageCreate",
            &api::images::ImageCreate {
                name: image.name.clone(),
                labels: image.labels.clone(),
            },
        );
        Ok(Response::new(api::images::CreateImageResponse {
            image: Some(image),
        }))
    }

    async fn update(
        &self,
        req: Request<api::images::UpdateImageRequest>,
    ) -> GrpcResult<api::images::UpdateImageResponse> {
        let ns = namespace(&req)?;
        let r = req.into_inner();
        let paths = mask(&r.update_mask);
        let new = r
            .image
            .ok_or_else(|| Status::invalid_argument("image missing"))?;
        let out = self.0.meta.update(|tx| {
            let mut cur: api::images::Image = tx
                .get_msg(Kind::Image, &ns, &new.name)?
                .ok_or_else(|| Error::NotFound(format!("image {:?}", new.name)))?;
            if paths.is_empty() {
                cur.labels = new.labels.clone();
                if new.target.is_some() {
                    cur.target = new.target.clone();
                }
            } else {
                let mut label_paths = Vec::new();
                for p in &paths {
                    match p.as_str() {
                        "target" => cur.target = new.target.clone(),
                        "annotations" => {
                            if let (Some(c), Some(n)) = (cur.target.as_mut(), new.target.as_ref()) {
                                c.annotations = n.annotations.clone();
                            }
                        }
                        p if p == "labels" || p.starts_with("labels.") => {
                            label_paths.push(p.to_string())
                        }
                        other => {
                            return Err(Error::InvalidArgument(format!(
                                "cannot update image field {other:?}"
                            )))
                        }
                    }
                }
                if !label_paths.is_empty() {
                    apply_label_update(&mut cur.labels, &new.labels, &label_paths)?;
                }
            }
            cur.updated_at = Some(now());
            tx.put_msg(Kind::Image, &ns, &cur.name, &cur)?;
            Ok(cur)
        })?;
        self.0.events.publish(
            &ns,
            "/images/update",
            "ImageUpdate",
            &api::images::ImageUpdate {
                name: out.name.clone(),
                labels: out.labels.clone(),
            },
        );
        Ok(Response::new(api::images::UpdateImageResponse {
            image: Some(out),
        }))
    }

    async fn delete(&self, req: Request<api::images::DeleteImageRequest>) -> GrpcResult<()> {
        let ns = namespace(&req)?;
        let r = req.into_inner();
        self.0.meta.update(|tx| {
            let cur: api::images::Image = tx
                .get_msg(Kind::Image, &ns, &r.name)?
                .ok_or_else(|| Error::NotFound(format!("image {:?}", r.name)))?;
            if let (Some(want), Some(have)) = (r.target.as_ref(), cur.target.as_ref()) {
                if want.digest != have.digest {
                    return Err(Error::FailedPrecondition(format!(
                        "image {:?} has target {}, not {}",
                        r.name, have.digest, want.digest
                    )));
                }
            }
            tx.delete(Kind::Image, &ns, &r.name)?;
            Ok(())
        })?;
        self.0.events.publish(
            &ns,
            "/images/delete",
            "ImageDelete",
            &api::images::ImageDelete {
                name: r.name.clone(),
            },
        );
        self.0.collect_garbage(r.sync).await?;
        Ok(Response::new(()))
    }
}

// -------------------------------------------------------------- containers

pub struct ContainersService(pub Arc<Core>);

fn container_matches(f: &Filter, c: &api::containers::Container) -> bool {
    f.matches(&|p: &[String]| match p.first().map(String::as_str) {
        Some("id") => Some(c.id.clone()),
        Some("image") => Some(c.image.clone()),
        Some("snapshotter") => Some(c.snapshotter.clone()),
        Some("runtime") => match p.get(1).map(String::as_str) {
            None | Some("name") => c.runtime.as_ref().map(|r| r.name.clone()),
            _ => None,
        },
        Some("labels") => label_field(&c.labels, &p[1..]),
        _ => None,
    })
}

impl ContainersService {
    fn list_matching(
        &self,
        ns: &str,
        filters: &[String],
    ) -> Result<Vec<api::containers::Container>> {
        let f = Filter::parse_all(filters)?;
        Ok(self
            .0
            .meta
            .list_msgs::<api::containers::Container>(Kind::Container, ns)?
            .into_iter()
            .map(|(_, c)| c)
            .filter(|c| container_matches(&f, c))
            .collect())
    }
}

#[tonic::async_trait]
impl api::containers::containers_server::Containers for ContainersService {
    type ListStreamStream = BoxStream<api::containers::ListContainerMessage>;

    async fn get(
        &self,
        req: Request<api::containers::GetContainerRequest>,
    ) -> GrpcResult<api::containers::GetContainerResponse> {
        let ns = namespace(&req)?;
        let id = &req.get_ref().id;
        let c = self
            .0
            .meta
            .get_msg::<api::containers::Container>(Kind::Container, &ns, id)?
            .ok_or_else(|| Error::NotFound(format!("container {id:?}")))?;
        Ok(Response::new(api::containers::GetContainerResponse {
            container: Some(c),
        }))
    }

    async fn list(
        &self,
        req: Request<api::containers::ListContainersRequest>,
    ) -> GrpcResult<api::containers::ListContainersResponse> {
        let ns = namespace(&req)?;
        let containers = self.list_matching(&ns, &req.get_ref().filters)?;
        Ok(Response::new(api::containers::ListContainersResponse {
            containers,
        }))
    }

    async fn list_stream(
        &self,
        req: Request<api::containers::ListContainersRequest>,
    ) -> GrpcResult<Self::ListStreamStream> {
        let ns = namespace(&req)?;
        let items = self
            .list_matching(&ns, &req.get_ref().filters)?
            .into_iter()
            .map(|c| api::containers::ListContainerMessage { container: Some(c) })
            .collect();
        Ok(Response::new(stream_of(items)))
    }

    async fn create(
        &self,
        req: Request<api::containers::CreateContainerRequest>,
    ) -> GrpcResult<api::containers::CreateContainerResponse> {
        let ns = namespace(&req)?;
        let lease = lease(&req);
        let mut c = req
            .into_inner()
            .container
            .ok_or_else(|| Status::invalid_argument("container missing"))?;
        validate_identifier("container id", &c.id)?;
        if c.runtime.as_ref().is_none_or(|r| r.name.is_empty()) {
            return Err(Status::invalid_argument(format!(
                "container {:?}: runtime name must not be empty",
                c.id
            )));
        }
        if c.spec.is_none() {
            return Err(Status::invalid_argument(format!(
                "container {:?}: spec must not be empty",
                c.id
            )));
        }
        let t = now();
        c.created_at = Some(t);
        c.updated_at = Some(t);
        self.0.meta.update(|tx| {
            if tx.exists(Kind::Container, &ns, &c.id)? {
                return Err(Error::AlreadyExists(format!("container {:?}", c.id)));
            }
            tx.ensure_namespace(&ns)?;
            tx.put_msg(Kind::Container, &ns, &c.id, &c)?;
            tx.add_to_lease(&ns, lease.as_deref(), "containers", &c.id)
        })?;
        self.0.events.publish(
            &ns,
            "/containers/create",
            "ContainerCreate",
            &api::containerd::events::ContainerCreate {
                id: c.id.clone(),
                image: c.image.clone(),
                runtime: c.runtime.as_ref().map(|r| {
                    api::containerd::events::container_create::Runtime {
                        name: r.name.clone(),
                        options: r.options.clone(),
                    }
                }),
            },
        );
        Ok(Response::new(api::containers::CreateContainerResponse {
            container: Some(c),
        }))
    }

    async fn update(
        &self,
        req: Request<api::containers::UpdateContainerRequest>,
    ) -> GrpcResult<api::containers::UpdateContainerResponse> {
        let ns = namespace(&req)?;
        let r = req.into_inner();
        let paths = mask(&r.update_mask);
        let new = r
            .container
            .ok_or_else(|| Status::invalid_argument("container missing"))?;
        let out = self.0.meta.update(|tx| {
            let mut cur: api::containers::Container = tx
                .get_msg(Kind::Container, &ns, &new.id)?
                .ok_or_else(|| Error::NotFound(format!("container {:?}", new.id)))?;
            if paths.is_empty() {
                if new.runtime.as_ref().map(|r| &r.name) != cur.runtime.as_ref().map(|r| &r.name) {
                    return Err(Error::InvalidArgument(
                        "container runtime is immutable".into(),
                    ));
                }
                cur.labels = new.labels.clone();
                cur.image = new.image.clone();
                cur.spec = new.spec.clone();
                cur.snapshot_key = new.snapshot_key.clone();
                cur.snapshotter = new.snapshotter.clone();
                cur.extensions = new.extensions.clone();
            } else {
                let mut label_paths = Vec::new();
                for p in &paths {
                    match p.as_str() {
                        "image" => cur.image = new.image.clone(),
                        "spec" => cur.spec = new.spec.clone(),
                        "snapshotkey" | "snapshot_key" => {
                            cur.snapshot_key = new.snapshot_key.clone()
                        }
                        "extensions" => cur.extensions = new.extensions.clone(),
                        p if p.starts_with("extensions.") => {
                            let k = &p["extensions.".len()..];
                            match new.extensions.get(k) {
                                Some(v) => {
                                    cur.extensions.insert(k.to_string(), v.clone());
                                }
                                None => {
                                    cur.extensions.remove(k);
                                }
                            }
                        }
                        p if p == "labels" || p.starts_with("labels.") => {
                            label_paths.push(p.to_string())
                        }
                        other => {
                            return Err(Error::InvalidArgument(format!(
                                "cannot update container field {other:?}"
                            )))
                        }
                    }
                }
                if !label_paths.is_empty() {
                    apply_label_update(&mut cur.labels, &new.labels, &label_paths)?;
                }
            }
            cur.updated_at = Some(now());
            tx.put_msg(Kind::Container, &ns, &cur.id, &cur)?;
            Ok(cur)
        })?;
        self.0.events.publish(
            &ns,
            "/containers/update",
            "ContainerUpdate",
            &api::containerd::events::ContainerUpdate {
                id: out.id.clone(),
                image: out.image.clone(),
                labels: out.labels.clone(),
                snapshot_key: out.snapshot_key.clone(),
            },
        );
        Ok(Response::new(api::containers::UpdateContainerResponse {
            container: Some(out),
        }))
    }

    async fn delete(
        &self,
        req: Request<api::containers::DeleteContainerRequest>,
    ) -> GrpcResult<()> {
        let ns = namespace(&req)?;
        let id = req.into_inner().id;
        if self.0.shims.get(&ns, &id).is_ok() {
            return Err(Status::failed_precondition(format!(
                "container {id:?} still has a task: delete the task first"
            )));
        }
        self.0.meta.update(|tx| {
            if !tx.delete(Kind::Container, &ns, &id)? {
                return Err(Error::NotFound(format!("container {id:?}")));
            }
            Ok(())
        })?;
        self.0.events.publish(
            &ns,
            "/containers/delete",
            "ContainerDelete",
            &api::containerd::events::ContainerDelete { id },
        );
        self.0.collect_garbage(false).await?;
        Ok(Response::new(()))
    }
}

// ------------------------------------------------------------------ leases

pub struct LeasesService(pub Arc<Core>);

#[tonic::async_trait]
impl api::leases::leases_server::Leases for LeasesService {
    async fn create(
        &self,
        req: Request<api::leases::CreateRequest>,
    ) -> GrpcResult<api::leases::CreateResponse> {
        let ns = namespace(&req)?;
        let r = req.into_inner();
        let id = if r.id.is_empty() {
            uuid::Uuid::new_v4().simple().to_string()
        } else {
            r.id
        };
        // containerd's random lease ids ("<nanos>-<base64url>") are not
        // identifiers; only control characters are refused.
        if id.chars().any(char::is_control) || id.len() > 256 {
            return Err(Status::invalid_argument(format!(
                "lease id {id:?} contains control characters or is too long"
            )));
        }
        let lease = api::leases::Lease {
            id: id.clone(),
            created_at: Some(now()),
            labels: r.labels,
        };
        self.0.meta.update(|tx| {
            if tx.exists(Kind::Lease, &ns, &id)? {
                return Err(Error::AlreadyExists(format!("lease {id:?}")));
            }
            tx.ensure_namespace(&ns)?;
            tx.put_msg(Kind::Lease, &ns, &id, &lease)
        })?;
        Ok(Response::new(api::leases::CreateResponse {
            lease: Some(lease),
        }))
    }

    async fn delete(&self, req: Request<api::leases::DeleteRequest>) -> GrpcResult<()> {
        let ns = namespace(&req)?;
        let r = req.into_inner();
        let id = r.id;
        self.0.meta.update(|tx| {
            if !tx.delete(Kind::Lease, &ns, &id)? {
                return Err(Error::NotFound(format!("lease {id:?}")));
            }
            for (k, _) in tx.list(Kind::LeaseResource, &ns)? {
                if k.starts_with(&format!("{id}\x01")) {
                    tx.delete(Kind::LeaseResource, &ns, &k)?;
                }
            }
            Ok(())
        })?;
        self.0.collect_garbage(r.sync).await?;
        Ok(Response::new(()))
    }

    async fn list(
        &self,
        req: Request<api::leases::ListRequest>,
    ) -> GrpcResult<api::leases::ListResponse> {
        let ns = namespace(&req)?;
        let f = Filter::parse_all(&req.get_ref().filters)?;
        let leases = self
            .0
            .meta
            .list_msgs::<api::leases::Lease>(Kind::Lease, &ns)?
            .into_iter()
            .map(|(_, l)| l)
            .filter(|l| {
                f.matches(&|p: &[String]| match p.first().map(String::as_str) {
                    Some("id") => Some(l.id.clone()),
                    Some("labels") => label_field(&l.labels, &p[1..]),
                    _ => None,
                })
            })
            .collect();
        Ok(Response::new(api::leases::ListResponse { leases }))
    }

    async fn add_resource(&self, req: Request<api::leases::AddResourceRequest>) -> GrpcResult<()> {
        let ns = namespace(&req)?;
        let r = req.into_inner();
        let res = r
            .resource
            .ok_or_else(|| Status::invalid_argument("resource missing"))?;
        if res.id.is_empty() || res.r#type.is_empty() {
            return Err(Status::invalid_argument("resource needs an id and a type"));
        }
        self.0
            .meta
            .update(|tx| tx.add_to_lease(&ns, Some(&r.id), &res.r#type, &res.id))?;
        Ok(Response::new(()))
    }

    async fn delete_resource(
        &self,
        req: Request<api::leases::DeleteResourceRequest>,
    ) -> GrpcResult<()> {
        let ns = namespace(&req)?;
        let r = req.into_inner();
        let res = r
            .resource
            .ok_or_else(|| Status::invalid_argument("resource missing"))?;
        self.0.meta.update(|tx| {
            if !tx.exists(Kind::Lease, &ns, &r.id)? {
                return Err(Error::NotFound(format!("lease {:?}", r.id)));
            }
            tx.delete(
                Kind::LeaseResource,
                &ns,
                &format!("{}\x01{}\x01{}", r.id, res.r#type, res.id),
            )?;
            Ok(())
        })?;
        Ok(Response::new(()))
    }

    async fn list_resources(
        &self,
        req: Request<api::leases::ListResourcesRequest>,
    ) -> GrpcResult<api::leases::ListResourcesResponse> {
        let ns = namespace(&req)?;
        let id = &req.get_ref().id;
        if self.0.meta.get(Kind::Lease, &ns, id)?.is_none() {
            return Err(Error::NotFound(format!("lease {id:?}")).into());
        }
        let prefix = format!("{id}\x01");
        let resources = self
            .0
            .meta
            .list(Kind::LeaseResource, &ns)?
            .into_iter()
            .filter_map(|(k, _)| {
                let rest = k.strip_prefix(&prefix)?;
                let (t, i) = rest.split_once('\x01')?;
                Some(api::leases::Resource {
                    id: i.to_string(),
                    r#type: t.to_string(),
                })
            })
            .collect();
        Ok(Response::new(api::leases::ListResourcesResponse {
            resources,
        }))
    }
}

// ----------------------------------------------------------------- content

pub struct ContentService(pub Arc<Core>);

fn content_matches(f: &Filter, i: &api::content::Info) -> bool {
    f.matches(&|p: &[String]| match p.first().map(String::as_str) {
        Some("digest") => Some(i.digest.clone()),
        Some("size") => Some(i.size.to_string()),
        Some("labels") => label_field(&i.labels, &p[1..]),
        _ => None,
    })
}

#[tonic::async_trait]
impl api::content::content_server::Content for ContentService {
    type ListStream = BoxStream<api::content::ListContentResponse>;
    type ReadStream = BoxStream<api::content::ReadContentResponse>;
    type WriteStream = BoxStream<api::content::WriteContentResponse>;

    async fn info(
        &self,
        req: Request<api::content::InfoRequest>,
    ) -> GrpcResult<api::content::InfoResponse> {
        let ns = namespace(&req)?;
        let info = self.0.content.info(&ns, &req.get_ref().digest)?;
        Ok(Response::new(api::content::InfoResponse {
            info: Some(info),
        }))
    }

    async fn update(
        &self,
        req: Request<api::content::UpdateRequest>,
    ) -> GrpcResult<api::content::UpdateResponse> {
        let ns = namespace(&req)?;
        let r = req.into_inner();
        let info = r
            .info
            .ok_or_else(|| Status::invalid_argument("info missing"))?;
        let out = self.0.content.update(&ns, &info, &mask(&r.update_mask))?;
        Ok(Response::new(api::content::UpdateResponse {
            info: Some(out),
        }))
    }

    async fn list(
        &self,
        req: Request<api::content::ListContentRequest>,
    ) -> GrpcResult<Self::ListStream> {
        let ns = namespace(&req)?;
        let f = Filter::parse_all(&req.get_ref().filters)?;
        let infos: Vec<_> = self
            .0
            .content
            .list(&ns)?
            .into_iter()
            .filter(|i| content_matches(&f, i))
            .collect();
        let batches = infos
            .chunks(100)
            .map(|c| api::content::ListContentResponse { info: c.to_vec() })
            .collect();
        Ok(Response::new(stream_of(batches)))
    }

    async fn delete(&self, req: Request<api::content::DeleteContentRequest>) -> GrpcResult<()> {
        let ns = namespace(&req)?;
        let digest = req.into_inner().digest;
        self.0.content.delete(&ns, &digest)?;
        self.0.events.publish(
            &ns,
            "/content/delete",
            "ContentDelete",
            &api::containerd::events::ContentDelete { digest },
        );
        self.0.collect_garbage(false).await?;
        Ok(Response::new(()))
    }

    async fn read(
        &self,
        req: Request<api::content::ReadContentRequest>,
    ) -> GrpcResult<Self::ReadStream> {
        let ns = namespace(&req)?;
        let r = req.into_inner();
        self.0.content.info(&ns, &r.digest)?;
        let (tx, rx) = mpsc::channel(4);
        let content = self.0.content.clone();
        tokio::task::spawn_blocking(move || {
            let res = content.read(&ns, &r.digest, r.offset, r.size, |offset, data| {
                tx.blocking_send(Ok(api::content::ReadContentResponse { offset, data }))
                    .is_ok()
            });
            if let Err(e) = res {
                let _ = tx.blocking_send(Err(e.into()));
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn status(
        &self,
        req: Request<api::content::StatusRequest>,
    ) -> GrpcResult<api::content::StatusResponse> {
        let ns = namespace(&req)?;
        let status = self.0.content.status(&ns, &req.get_ref().r#ref)?;
        Ok(Response::new(api::content::StatusResponse {
            status: Some(status),
        }))
    }

    async fn list_statuses(
        &self,
        req: Request<api::content::ListStatusesRequest>,
    ) -> GrpcResult<api::content::ListStatusesResponse> {
        let ns = namespace(&req)?;
        let f = Filter::parse_all(&req.get_ref().filters)?;
        let statuses = self
            .0
            .content
            .list_statuses(&ns)?
            .into_iter()
            .filter(|s| {
                f.matches(&|p: &[String]| match p.first().map(String::as_str) {
                    Some("ref") => Some(s.r#ref.clone()),
                    _ => None,
                })
            })
            .collect();
        Ok(Response::new(api::content::ListStatusesResponse {
            statuses,
        }))
    }

    async fn write(
        &self,
        req: Request<Streaming<api::content::WriteContentRequest>>,
    ) -> GrpcResult<Self::WriteStream> {
        let ns = namespace(&req)?;
        let lease = lease(&req);
        let mut inbound = req.into_inner();
        let (tx, rx) = mpsc::channel(4);
        let core = self.0.clone();
        tokio::spawn(async move {
            if let Err(status) =
                write_session(&core, &ns, lease.as_deref(), &mut inbound, &tx).await
            {
                let _ = tx.send(Err(status)).await;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn abort(&self, req: Request<api::content::AbortRequest>) -> GrpcResult<()> {
        let ns = namespace(&req)?;
        self.0.content.abort(&ns, &req.get_ref().r#ref)?;
        Ok(Response::new(()))
    }
}

/// One content Write session, following containerd's server loop: the
/// first message names the ref and opens (or resumes) the ingest; each
/// message is answered with the ingest's offset (and digest/times).
async fn write_session(
    core: &Arc<Core>,
    ns: &str,
    lease: Option<&str>,
    inbound: &mut Streaming<api::content::WriteContentRequest>,
    tx: &mpsc::Sender<std::result::Result<api::content::WriteContentResponse, Status>>,
) -> std::result::Result<(), Status> {
    use api::content::WriteAction;
    let Some(mut req) = inbound.message().await? else {
        return Ok(());
    };
    if req.r#ref.is_empty() {
        return Err(Status::invalid_argument(
            "first message must have a reference",
        ));
    }
    let mut total = req.total;
    let mut expected = req.expected.clone();
    let mut w = tokio::task::block_in_place(|| {
        core.content.writer(ns, &req.r#ref, total, &expected, lease)
    })?;
    if total == 0 {
        total = w.total;
    }
    if expected.is_empty() {
        expected = w.expected.clone();
    }
    loop {
        let mut msg = api::content::WriteContentResponse {
            action: req.action,
            offset: w.offset(),
            ..Default::default()
        };
        if !req.expected.is_empty() {
            expected = req.expected.clone();
            if core.content.lease_if_exists(ns, &req.expected, lease)? {
                drop(w);
                let _ = core.content.abort(ns, &req.r#ref);
                return Err(Status::already_exists(format!(
                    "blob with expected digest {} exists",
                    req.expected
                )));
            }
        }
        if req.total > 0 {
            total = req.total;
        }
        match WriteAction::try_from(req.action) {
            Ok(WriteAction::Stat) => {
                let st = tokio::task::block_in_place(|| w.status())?;
                msg.digest = w.digest();
                msg.started_at = st.started_at;
                msg.updated_at = st.updated_at;
                msg.total = total;
            }
            Ok(action @ (WriteAction::Write | WriteAction::Commit)) => {
                if req.offset > 0 && req.offset != w.offset() {
                    return Err(Status::out_of_range(format!(
                        "write @{} must occur at current offset {}",
                        req.offset,
                        w.offset()
                    )));
                }
                if req.offset == 0 && w.offset() > 0 {
                    tokio::task::block_in_place(|| w.truncate())?;
                }
                if !req.data.is_empty() {
                    tokio::task::block_in_place(|| w.write(&req.data))?;
                }
                msg.offset = w.offset();
                if action == WriteAction::Commit {
                    let labels: HashMap<String, String> = req.labels.clone();
                    let digest =
                        tokio::task::block_in_place(|| w.commit(total, &expected, labels))?;
                    core.events.publish(
                        ns,
                        "/content/create",
                        "ContentCreate",
                        &api::containerd::events::ContentCreate {
                            digest: digest.clone(),
                            size: w.offset(),
                        },
                    );
                }
                msg.digest = w.digest();
            }
            Err(_) => {
                return Err(Status::invalid_argument(format!(
                    "unknown write action {}",
                    req.action
                )))
            }
        }
        if tx.send(Ok(msg)).await.is_err() {
            return Ok(());
        }
        match inbound.message().await? {
            Some(next) => req = next,
            None => return Ok(()),
        }
    }
}

// --------------------------------------------------------------- snapshots

pub struct SnapshotsService(pub Arc<Core>);

impl SnapshotsService {
    /// The snapshotter a request names ("" = the configured default).
    fn snapshotter(&self, name: &str) -> std::result::Result<Arc<Snapshotter>, Status> {
        Ok(self.0.snapshots.get(name)?.clone())
    }
}

#[tonic::async_trait]
impl api::snapshots::snapshots_server::Snapshots for SnapshotsService {
    type ListStream = BoxStream<api::snapshots::ListSnapshotsResponse>;

    async fn prepare(
        &self,
        req: Request<api::snapshots::PrepareSnapshotRequest>,
    ) -> GrpcResult<api::snapshots::PrepareSnapshotResponse> {
        let ns = namespace(&req)?;
        let lease = lease(&req);
        let r = req.into_inner();
        let sn = self.snapshotter(&r.snapshotter)?;
        let name = sn.name();
        let (ns2, key, parent) = (ns.clone(), r.key.clone(), r.parent.clone());
        let mounts =
            blocking(move || sn.prepare(&ns2, &key, &parent, r.labels, lease.as_deref())).await?;
        self.0.events.publish(
            &ns,
            "/snapshot/prepare",
            "SnapshotPrepare",
            &api::containerd::events::SnapshotPrepare {
                key: r.key,
                parent: r.parent,
                snapshotter: name.into(),
            },
        );
        Ok(Response::new(api::snapshots::PrepareSnapshotResponse {
            mounts,
        }))
    }

    async fn view(
        &self,
        req: Request<api::snapshots::ViewSnapshotRequest>,
    ) -> GrpcResult<api::snapshots::ViewSnapshotResponse> {
        let ns = namespace(&req)?;
        let lease = lease(&req);
        let r = req.into_inner();
        let sn = self.snapshotter(&r.snapshotter)?;
        let mounts =
            blocking(move || sn.view(&ns, &r.key, &r.parent, r.labels, lease.as_deref())).await?;
        Ok(Response::new(api::snapshots::ViewSnapshotResponse {
            mounts,
        }))
    }

    async fn mounts(
        &self,
        req: Request<api::snapshots::MountsRequest>,
    ) -> GrpcResult<api::snapshots::MountsResponse> {
        let ns = namespace(&req)?;
        let mounts = self
            .snapshotter(&req.get_ref().snapshotter)?
            .mounts(&ns, &req.get_ref().key)?;
        Ok(Response::new(api::snapshots::MountsResponse { mounts }))
    }

    async fn commit(&self, req: Request<api::snapshots::CommitSnapshotRequest>) -> GrpcResult<()> {
        let ns = namespace(&req)?;
        let lease = lease(&req);
        let r = req.into_inner();
        let sn = self.snapshotter(&r.snapshotter)?;
        sn.commit(&ns, &r.name, &r.key, r.labels, lease.as_deref())?;
        self.0.events.publish(
            &ns,
            "/snapshot/commit",
            "SnapshotCommit",
            &api::containerd::events::SnapshotCommit {
                key: r.key,
                name: r.name,
                snapshotter: sn.name().into(),
            },
        );
        Ok(Response::new(()))
    }

    async fn remove(&self, req: Request<api::snapshots::RemoveSnapshotRequest>) -> GrpcResult<()> {
        let ns = namespace(&req)?;
        let r = req.into_inner();
        let sn = self.snapshotter(&r.snapshotter)?;
        let name = sn.name();
        let (ns2, key) = (ns.clone(), r.key.clone());
        blocking(move || sn.remove(&ns2, &key)).await?;
        self.0.events.publish(
            &ns,
            "/snapshot/remove",
            "SnapshotRemove",
            &api::containerd::events::SnapshotRemove {
                key: r.key,
                snapshotter: name.into(),
            },
        );
        self.0.collect_garbage(false).await?;
        Ok(Response::new(()))
    }

    async fn stat(
        &self,
        req: Request<api::snapshots::StatSnapshotRequest>,
    ) -> GrpcResult<api::snapshots::StatSnapshotResponse> {
        let ns = namespace(&req)?;
        let info = self
            .snapshotter(&req.get_ref().snapshotter)?
            .stat(&ns, &req.get_ref().key)?;
        Ok(Response::new(api::snapshots::StatSnapshotResponse {
            info: Some(info),
        }))
    }

    async fn update(
        &self,
        req: Request<api::snapshots::UpdateSnapshotRequest>,
    ) -> GrpcResult<api::snapshots::UpdateSnapshotResponse> {
        let ns = namespace(&req)?;
        let r = req.into_inner();
        let sn = self.snapshotter(&r.snapshotter)?;
        let info = r
            .info
            .ok_or_else(|| Status::invalid_argument("info missing"))?;
        let out = sn.update(&ns, &info, &mask(&r.update_mask))?;
        Ok(Response::new(api::snapshots::UpdateSnapshotResponse {
            info: Some(out),
        }))
    }

    async fn list(
        &self,
        req: Request<api::snapshots::ListSnapshotsRequest>,
    ) -> GrpcResult<Self::ListStream> {
        let ns = namespace(&req)?;
        let sn = self.snapshotter(&req.get_ref().snapshotter)?;
        let f = Filter::parse_all(&req.get_ref().filters)?;
        let infos: Vec<_> = sn
            .list(&ns)?
            .into_iter()
            .filter(|i| {
                f.matches(&|p: &[String]| match p.first().map(String::as_str) {
                    Some("name") => Some(i.name.clone()),
                    Some("parent") => Some(i.parent.clone()),
                    Some("kind") => Some(
                        match api::snapshots::Kind::try_from(i.kind) {
                            Ok(api::snapshots::Kind::Active) => "active",
                            Ok(api::snapshots::Kind::View) => "view",
                            Ok(api::snapshots::Kind::Committed) => "committed",
                            _ => "unknown",
                        }
                        .to_string(),
                    ),
                    Some("labels") => label_field(&i.labels, &p[1..]),
                    _ => None,
                })
            })
            .collect();
        let batches = infos
            .chunks(100)
            .map(|c| api::snapshots::ListSnapshotsResponse { info: c.to_vec() })
            .collect();
        Ok(Response::new(stream_of(batches)))
    }

    async fn usage(
        &self,
        req: Request<api::snapshots::UsageRequest>,
    ) -> GrpcResult<api::snapshots::UsageResponse> {
        let ns = namespace(&req)?;
        let sn = self.snapshotter(&req.get_ref().snapshotter)?;
        let key = req.get_ref().key.clone();
        let u = blocking(move || sn.usage(&ns, &key)).await?;
        Ok(Response::new(api::snapshots::UsageResponse {
            size: u.size,
            inodes: u.inodes,
        }))
    }

    async fn cleanup(&self, req: Request<api::snapshots::CleanupRequest>) -> GrpcResult<()> {
        namespace(&req)?;
        self.snapshotter(&req.get_ref().snapshotter)?;
        // Snapshot directories without a record are removed by garbage
        // collection.
        self.0.collect_garbage(true).await?;
        Ok(Response::new(()))
    }
}

// -------------------------------------------------------------------- diff

pub struct DiffService(pub Arc<Core>);

#[tonic::async_trait]
impl api::diff::diff_server::Diff for DiffService {
    async fn apply(
        &self,
        req: Request<api::diff::ApplyRequest>,
    ) -> GrpcResult<api::diff::ApplyResponse> {
        let ns = namespace(&req)?;
        let r = req.into_inner();
        let desc = r
            .diff
            .ok_or_else(|| Status::invalid_argument("diff descriptor missing"))?;
        let applier = self.0.applier.clone();
        let applied = blocking(move || applier.apply(&ns, &desc, &r.mounts)).await?;
        Ok(Response::new(api::diff::ApplyResponse {
            applied: Some(applied),
        }))
    }

    async fn diff(
        &self,
        req: Request<api::diff::DiffRequest>,
    ) -> GrpcResult<api::diff::DiffResponse> {
        let ns = namespace(&req)?;
        let lease = lease(&req);
        let r = req.into_inner();
        let creq = crate::diff_compare::CompareRequest {
            left: r.left,
            right: r.right,
            media_type: r.media_type,
            reference: r.r#ref,
            labels: r.labels,
            source_date_epoch: r.source_date_epoch.map(|t| t.seconds),
        };
        let applier = self.0.applier.clone();
        let desc = blocking(move || applier.compare(&ns, lease.as_deref(), &creq)).await?;
        Ok(Response::new(api::diff::DiffResponse { diff: Some(desc) }))
    }
}

// ------------------------------------------------------------------ events

pub struct EventsService(pub Arc<Core>);

#[tonic::async_trait]
impl api::events::events_server::Events for EventsService {
    type SubscribeStream = BoxStream<api::types::Envelope>;

    async fn publish(&self, req: Request<api::events::PublishRequest>) -> GrpcResult<()> {
        let ns = namespace(&req)?;
        let r = req.into_inner();
        if !r.topic.starts_with('/') {
            return Err(Status::invalid_argument(format!(
                "event topic {:?} must start with '/'",
                r.topic
            )));
        }
        self.0.events.forward(api::types::Envelope {
            timestamp: Some(now()),
            namespace: ns,
            topic: r.topic,
            event: r.event,
        });
        Ok(Response::new(()))
    }

    async fn forward(&self, req: Request<api::events::ForwardRequest>) -> GrpcResult<()> {
        let env = req
            .into_inner()
            .envelope
            .ok_or_else(|| Status::invalid_argument("envelope missing"))?;
        validate_identifier("namespace", &env.namespace)?;
        self.0.events.forward(env);
        Ok(Response::new(()))
    }

    async fn subscribe(
        &self,
        req: Request<api::events::SubscribeRequest>,
    ) -> GrpcResult<Self::SubscribeStream> {
        let f = Filter::parse_all(&req.get_ref().filters)?;
        let rx = tokio_stream::wrappers::BroadcastStream::new(self.0.events.subscribe());
        let s = rx.filter_map(move |r| match r {
            Ok(env) if envelope_matches(&f, &env) => Some(Ok(env)),
            _ => None,
        });
        Ok(Response::new(Box::pin(s)))
    }
}

// ------------------------------------------------------------------- tasks

pub struct TasksService(pub Arc<Core>);

fn process_of(
    container_id: &str,
    s: &containerd_shim_protos::api::StateResponse,
) -> api::containerd::v1::types::Process {
    api::containerd::v1::types::Process {
        container_id: container_id.to_string(),
        id: if s.exec_id.is_empty() {
            container_id.to_string()
        } else {
            s.exec_id.clone()
        },
        pid: s.pid,
        status: s.status.value(),
        stdin: s.stdin.clone(),
        stdout: s.stdout.clone(),
        stderr: s.stderr.clone(),
        terminal: s.terminal,
        exit_status: s.exit_status,
        exited_at: s.exited_at.as_ref().map(pb_timestamp),
    }
}

#[tonic::async_trait]
impl api::tasks::tasks_server::Tasks for TasksService {
    async fn create(
        &self,
        req: Request<api::tasks::CreateTaskRequest>,
    ) -> GrpcResult<api::tasks::CreateTaskResponse> {
        let ns = namespace(&req)?;
        let r = req.into_inner();
        if r.checkpoint.is_some() {
            return Err(Status::unimplemented(
                "orca-supervisor: creating a task from a checkpoint is not implemented",
            ));
        }
        let container = self
            .0
            .meta
            .get_msg::<api::containers::Container>(Kind::Container, &ns, &r.container_id)?
            .ok_or_else(|| Error::NotFound(format!("container {:?}", r.container_id)))?;
        let mut rootfs = r.rootfs.clone();
        if rootfs.is_empty() && !container.snapshot_key.is_empty() {
            rootfs = self
                .0
                .snapshots
                .get(&container.snapshotter)?
                .mounts(&ns, &container.snapshot_key)?;
        }
        let create = CreateTask {
            rootfs: rootfs.clone(),
            stdin: r.stdin.clone(),
            stdout: r.stdout.clone(),
            stderr: r.stderr.clone(),
            terminal: r.terminal,
            options: r.options.clone(),
            runtime_path: r.runtime_path.clone(),
        };
        // Task lifecycle events (/tasks/create, start, exec-added,
        // exec-started, paused, resumed, delete, exit, oom) come from the
        // shim over ttrpc, as with containerd's v2 runtime.
        let (_shim, pid) = self.0.shims.create(&ns, &container, create).await?;
        Ok(Response::new(api::tasks::CreateTaskResponse {
            container_id: r.container_id,
            pid,
        }))
    }

    async fn start(
        &self,
        req: Request<api::tasks::StartRequest>,
    ) -> GrpcResult<api::tasks::StartResponse> {
        let ns = namespace(&req)?;
        let r = req.into_inner();
        let pid = self.0.shims.start(&ns, &r.container_id, &r.exec_id).await?;
        Ok(Response::new(api::tasks::StartResponse { pid }))
    }

    async fn delete(
        &self,
        req: Request<api::tasks::DeleteTaskRequest>,
    ) -> GrpcResult<api::tasks::DeleteResponse> {
        let ns = namespace(&req)?;
        let id = req.into_inner().container_id;
        let d = self.0.shims.delete(&ns, &id, "").await?;
        let exited_at = d.exited_at.as_ref().map(pb_timestamp);
        Ok(Response::new(api::tasks::DeleteResponse {
            id,
            pid: d.pid,
            exit_status: d.exit_status,
            exited_at,
        }))
    }

    async fn delete_process(
        &self,
        req: Request<api::tasks::DeleteProcessRequest>,
    ) -> GrpcResult<api::tasks::DeleteResponse> {
        let ns = namespace(&req)?;
        let r = req.into_inner();
        if r.exec_id.is_empty() {
            return Err(Status::invalid_argument(
                "DeleteProcess needs an exec id: use Delete for the task",
            ));
        }
        let d = self
            .0
            .shims
            .delete(&ns, &r.container_id, &r.exec_id)
            .await?;
        Ok(Response::new(api::tasks::DeleteResponse {
            id: r.exec_id,
            pid: d.pid,
            exit_status: d.exit_status,
            exited_at: d.exited_at.as_ref().map(pb_timestamp),
        }))
    }

    async fn get(
        &self,
        req: Request<api::tasks::GetRequest>,
    ) -> GrpcResult<api::tasks::GetResponse> {
        let ns = namespace(&req)?;
        let r = req.into_inner();
        let shim = self.0.shims.get(&ns, &r.container_id)?;
        let s = shim.state(&r.exec_id).await?;
        Ok(Response::new(api::tasks::GetResponse {
            process: Some(process_of(&r.container_id, &s)),
        }))
    }

    async fn list(
        &self,
        req: Request<api::tasks::ListTasksRequest>,
    ) -> GrpcResult<api::tasks::ListTasksResponse> {
        let ns = namespace(&req)?;
        // Every shim is asked at once (each on its own connection).
        let mut asks = tokio::task::JoinSet::new();
        for (i, s) in self.0.shims.list(&ns).into_iter().enumerate() {
            asks.spawn(async move {
                match s.state("").await {
                    Ok(st) => Some((i, process_of(&s.id, &st))),
                    Err(e) => {
                        tracing::warn!(task = %s.id, error = %e, "cannot get task state");
                        None
                    }
                }
            });
        }
        let mut tasks: Vec<_> = asks.join_all().await.into_iter().flatten().collect();
        tasks.sort_by_key(|(i, _)| *i);
        let tasks = tasks.into_iter().map(|(_, t)| t).collect();
        Ok(Response::new(api::tasks::ListTasksResponse { tasks }))
    }

    async fn kill(&self, req: Request<api::tasks::KillRequest>) -> GrpcResult<()> {
        let ns = namespace(&req)?;
        let r = req.into_inner();
        self.0
            .shims
            .kill(&ns, &r.container_id, &r.exec_id, r.signal, r.all)
            .await?;
        Ok(Response::new(()))
    }

    async fn exec(&self, req: Request<api::tasks::ExecProcessRequest>) -> GrpcResult<()> {
        let ns = namespace(&req)?;
        let r = req.into_inner();
        if r.exec_id.is_empty() {
            return Err(Status::invalid_argument("exec id must not be empty"));
        }
        self.0.shims.exec(&ns, &r.container_id, &r).await?;
        Ok(Response::new(()))
    }

    async fn resize_pty(&self, req: Request<api::tasks::ResizePtyRequest>) -> GrpcResult<()> {
        let ns = namespace(&req)?;
        let r = req.into_inner();
        self.0
            .shims
            .resize_pty(&ns, &r.container_id, &r.exec_id, r.width, r.height)
            .await?;
        Ok(Response::new(()))
    }

    async fn close_io(&self, req: Request<api::tasks::CloseIoRequest>) -> GrpcResult<()> {
        let ns = namespace(&req)?;
        let r = req.into_inner();
        self.0
            .shims
            .close_io(&ns, &r.container_id, &r.exec_id, r.stdin)
            .await?;
        Ok(Response::new(()))
    }

    async fn pause(&self, req: Request<api::tasks::PauseTaskRequest>) -> GrpcResult<()> {
        let ns = namespace(&req)?;
        let id = req.into_inner().container_id;
        self.0.shims.pause(&ns, &id).await?;
        Ok(Response::new(()))
    }

    async fn resume(&self, req: Request<api::tasks::ResumeTaskRequest>) -> GrpcResult<()> {
        let ns = namespace(&req)?;
        let id = req.into_inner().container_id;
        self.0.shims.resume(&ns, &id).await?;
        Ok(Response::new(()))
    }

    async fn list_pids(
        &self,
        req: Request<api::tasks::ListPidsRequest>,
    ) -> GrpcResult<api::tasks::ListPidsResponse> {
        let ns = namespace(&req)?;
        let id = req.into_inner().container_id;
        let processes = self.0.shims.pids(&ns, &id).await?;
        Ok(Response::new(api::tasks::ListPidsResponse { processes }))
    }

    async fn checkpoint(
        &self,
        _: Request<api::tasks::CheckpointTaskRequest>,
    ) -> GrpcResult<api::tasks::CheckpointTaskResponse> {
        Err(Status::unimplemented(
            "orca-supervisor: Tasks.Checkpoint is not implemented",
        ))
    }

    async fn update(&self, req: Request<api::tasks::UpdateTaskRequest>) -> GrpcResult<()> {
        let ns = namespace(&req)?;
        let r = req.into_inner();
        self.0
            .shims
            .update(&ns, &r.container_id, &r.resources, &r.annotations)
            .await?;
        Ok(Response::new(()))
    }

    async fn metrics(
        &self,
        req: Request<api::tasks::MetricsRequest>,
    ) -> GrpcResult<api::tasks::MetricsResponse> {
        let ns = namespace(&req)?;
        let f = Filter::parse_all(&req.get_ref().filters)?;
        let shims: Vec<_> = self
            .0
            .shims
            .list(&ns)
            .into_iter()
            .filter(|s| {
                f.matches(&|p: &[String]| match p.first().map(String::as_str) {
                    Some("id") => Some(s.id.clone()),
                    _ => None,
                })
            })
            .collect();
        let mut metrics = Vec::with_capacity(shims.len());
        for s in shims {
            let data: Option<Any> = self.0.shims.stats(&ns, &s.id).await?;
            metrics.push(api::types::Metric {
                timestamp: Some(now()),
                id: s.id.clone(),
                data,
            });
        }
        Ok(Response::new(api::tasks::MetricsResponse { metrics }))
    }

    async fn wait(
        &self,
        req: Request<api::tasks::WaitRequest>,
    ) -> GrpcResult<api::tasks::WaitResponse> {
        let ns = namespace(&req)?;
        let r = req.into_inner();
        let (exit_status, exited_at) = self.0.shims.wait(&ns, &r.container_id, &r.exec_id).await?;
        Ok(Response::new(api::tasks::WaitResponse {
            exit_status,
            exited_at,
        }))
    }
}
