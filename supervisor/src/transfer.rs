//! containerd's Transfer service (`containerd.services.transfer.v1`,
//! containerd 1.7+): server-side image pull and push, so that a client
//! (orcad, `ctr` 1.7+) never fetches layers itself.
//!
//! * `OCIRegistry` → `ImageStore` is a **pull**: resolve the reference,
//!   pick the platform manifest, fetch config and layers (layers in
//!   parallel, at most [`PARALLEL_DOWNLOADS`]) into the content store
//!   through the same ingest/commit path as `Content.Write` (size and digest
//!   verified before anything is committed), label them for garbage
//!   collection exactly as `ctr pull` does, unpack the layers into snapshots
//!   of the unpack's snapshotter (`overlayfs` or `native`; none named = the
//!   supervisor's default) named by chain id (the `Diff.Apply` code path), create or
//!   update the image record and publish `/images/create|update`. All of it
//!   under a lease, so garbage collection cannot race the pull; on failure
//!   the lease is deleted and a synchronous collection removes whatever the
//!   pull had committed.
//! * `ImageStore` → `OCIRegistry` is a **push**: blobs (config, layers)
//!   and manifests from the content store to the registry, index last.
//!
//! `Any` payloads use containerd's type URLs (the message's full name,
//! [`orca_proto::type_urls`]). Progress goes to the client's stream
//! `TransferOptions.progress_stream` as `containerd.types.transfer.Progress`
//! messages (events below); credentials come from `RegistryResolver.headers`
//! and from the client's `auth_stream` (an `AuthRequest` answered with an
//! `AuthResponse`).
//!
//! Progress events (`Progress.event`; `name` is containerd's ref key such as
//! `layer-sha256:…`, `desc` the descriptor, `parents` the manifest's key):
//! `resolving`, `resolved`, then per layer `waiting`, `downloading`
//! (`progress`/`total` in bytes), `complete` or `already exists`, then
//! `extracting`/`extracted` while unpacking, and `saved` (name = image name,
//! desc = image target) at the end. A push sends `pushing`, `pushed` or
//! `exists` per blob and manifest.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use orca_proto as api;
use orca_proto::tonic::{self, Request, Response, Status};
use orca_proto::type_urls;
use orca_proto::types::transfer as tt;
use orca_proto::types::{Descriptor, Platform};
use prost::Message;
use prost_types::Any;
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use crate::config::RegistryConfig;
use crate::error::{Error, Result};
use crate::metadata::Kind;
use crate::services::Core;
use crate::snapshots::Snapshotter;
use crate::streaming::{namespace_of, ClientStream, StreamManager};
use crate::transfer_remote::{Auth, Fetched, Remote, RemoteFactory};
use crate::util::now;

/// Layers downloaded at the same time (as dockerd).
pub const PARALLEL_DOWNLOADS: usize = 3;

/// How long a pull waits for another pull writing the same blob.
const INGEST_LOCK_WAIT: Duration = Duration::from_secs(600);

const GC_CONTENT: &str = "containerd.io/gc.ref.content";
const GC_SNAPSHOT: &str = "containerd.io/gc.ref.snapshot";
const GC_EXPIRE: &str = "containerd.io/gc.expire";
const LABEL_UNCOMPRESSED: &str = "containerd.io/uncompressed";
const LABEL_DISTRIBUTION_SOURCE: &str = "containerd.io/distribution.source";

pub const MT_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MT_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MT_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const MT_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

/// The gRPC Transfer service.
pub struct TransferService {
    core: Arc<Core>,
    streams: Arc<StreamManager>,
    remotes: Arc<dyn RemoteFactory>,
}

impl TransferService {
    pub fn new(
        core: Arc<Core>,
        streams: Arc<StreamManager>,
        registry: &RegistryConfig,
    ) -> Result<TransferService> {
        Ok(TransferService {
            core,
            streams,
            remotes: crate::transfer_remote::factory(registry)?,
        })
    }
}

fn decode<M: Message + Default>(any: &Any, what: &str) -> Result<M> {
    M::decode(any.value.as_slice())
        .map_err(|e| Error::InvalidArgument(format!("cannot decode the {what}: {e}")))
}

fn to_any<M: Message>(type_url: &str, m: &M) -> Any {
    Any {
        type_url: type_url.to_string(),
        value: m.encode_to_vec(),
    }
}

#[tonic::async_trait]
impl api::transfer::transfer_server::Transfer for TransferService {
    async fn transfer(
        &self,
        req: Request<api::transfer::TransferRequest>,
    ) -> std::result::Result<Response<()>, Status> {
        let ns = namespace_of(&req)?;
        let r = req.into_inner();
        let src = r
            .source
            .ok_or_else(|| Status::invalid_argument("transfer source missing"))?;
        let dst = r
            .destination
            .ok_or_else(|| Status::invalid_argument("transfer destination missing"))?;
        let progress = match r.options.map(|o| o.progress_stream).unwrap_or_default() {
            id if id.is_empty() => Progress::none(),
            id => Progress::new(
                self.streams
                    .take(&ns, &id, Duration::from_secs(5))
                    .await
                    .ok_or_else(|| {
                        Status::not_found(format!("progress stream {id:?} is not open"))
                    })?,
            ),
        };
        let (s, d) = (
            type_urls::name(&src.type_url),
            type_urls::name(&dst.type_url),
        );
        let res = match (s, d) {
            (type_urls::OCI_REGISTRY, type_urls::IMAGE_STORE) => {
                let src: tt::OciRegistry = decode(&src, "OCIRegistry source")?;
                let dst: tt::ImageStore = decode(&dst, "ImageStore destination")?;
                self.pull(&ns, src, dst, &progress).await.map(|_| ())
            }
            (type_urls::IMAGE_STORE, type_urls::OCI_REGISTRY) => {
                let src: tt::ImageStore = decode(&src, "ImageStore source")?;
                let dst: tt::OciRegistry = decode(&dst, "OCIRegistry destination")?;
                self.push(&ns, src, dst, &progress).await
            }
            (
                type_urls::IMAGE_IMPORT_STREAM | type_urls::IMAGE_STORE,
                type_urls::IMAGE_STORE | type_urls::IMAGE_EXPORT_STREAM,
            ) => Err(Error::Unimplemented(format!(
                "transfer from {s} to {d} (image import/export/tag) is not implemented; \
                 only OCIRegistry → ImageStore (pull) and ImageStore → OCIRegistry (push)"
            ))),
            _ => Err(Error::InvalidArgument(format!(
                "cannot transfer from {:?} to {:?}: unsupported source or destination type",
                src.type_url, dst.type_url
            ))),
        };
        drop(progress);
        match res {
            Ok(()) => Ok(Response::new(())),
            Err(e) => {
                tracing::warn!(namespace = %ns, error = %e, "transfer failed");
                Err(e.into())
            }
        }
    }
}

// ------------------------------------------------------------------ progress

/// Where Progress messages go (nowhere without a progress stream).
#[derive(Clone)]
pub struct Progress {
    tx: Option<mpsc::Sender<std::result::Result<Any, Status>>>,
    _stream: Option<Arc<ClientStream>>,
}

impl Progress {
    fn none() -> Progress {
        Progress {
            tx: None,
            _stream: None,
        }
    }

    fn new(stream: ClientStream) -> Progress {
        Progress {
            tx: Some(stream.sender()),
            _stream: Some(Arc::new(stream)),
        }
    }

    async fn send(&self, p: tt::Progress) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(Ok(to_any(type_urls::PROGRESS, &p))).await;
        }
    }

    async fn event(&self, event: &str, name: &str, desc: Option<&Descriptor>) {
        self.send(tt::Progress {
            event: event.into(),
            name: name.into(),
            desc: desc.cloned(),
            total: desc.map(|d| d.size).unwrap_or(0),
            ..Default::default()
        })
        .await;
    }

    async fn blob(&self, event: &str, desc: &Descriptor, parent: &str, progress: i64) {
        self.send(tt::Progress {
            event: event.into(),
            name: ref_key(desc),
            parents: if parent.is_empty() {
                vec![]
            } else {
                vec![parent.to_string()]
            },
            progress,
            total: desc.size,
            desc: Some(desc.clone()),
        })
        .await;
    }
}

/// containerd's ref key of a descriptor (`remotes.MakeRefKey`): used as the
/// ingest ref and the progress name.
pub fn ref_key(desc: &Descriptor) -> String {
    let kind = match desc.media_type.as_str() {
        MT_OCI_INDEX | MT_DOCKER_LIST => "index",
        MT_OCI_MANIFEST | MT_DOCKER_MANIFEST => "manifest",
        m if m.contains("layer") || m.contains("rootfs") => "layer",
        "application/vnd.docker.container.image.v1+json" => "config",
        m if m.contains("config") => "config",
        _ => "unknown",
    };
    format!("{kind}-{}", desc.digest)
}

// ------------------------------------------------------------------ images

fn is_index(mt: &str) -> bool {
    mt == MT_OCI_INDEX || mt == MT_DOCKER_LIST
}

fn parse_json(what: &str, b: &[u8]) -> Result<Value> {
    serde_json::from_slice(b)
        .map_err(|e| Error::InvalidArgument(format!("the registry sent an invalid {what}: {e}")))
}

fn descriptor_of(v: &Value) -> Result<Descriptor> {
    let digest = v["digest"].as_str().unwrap_or_default().to_string();
    crate::util::sha256_hex(&digest)
        .map_err(|_| Error::InvalidArgument(format!("unsupported or invalid digest {digest:?}")))?;
    let size = v["size"]
        .as_i64()
        .filter(|s| *s >= 0)
        .ok_or_else(|| Error::InvalidArgument(format!("descriptor {digest} has no size")))?;
    let mut annotations = HashMap::new();
    if let Some(a) = v["annotations"].as_object() {
        for (k, v) in a {
            if let Some(s) = v.as_str() {
                annotations.insert(k.clone(), s.to_string());
            }
        }
    }
    Ok(Descriptor {
        media_type: v["mediaType"].as_str().unwrap_or_default().to_string(),
        digest,
        size,
        annotations,
    })
}

/// The platform images are pulled for by default: linux and this machine's
/// architecture, as OCI names them.
pub fn default_platform() -> Platform {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    };
    Platform {
        os: "linux".into(),
        architecture: arch.into(),
        variant: if arch == "arm64" {
            "v8".into()
        } else {
            String::new()
        },
        os_version: String::new(),
    }
}

fn platform_matches(want: &Platform, v: &Value) -> bool {
    let os = v["os"].as_str().unwrap_or_default();
    let arch = v["architecture"].as_str().unwrap_or_default();
    let variant = v["variant"].as_str().unwrap_or_default();
    (want.os.is_empty() || want.os == os)
        && want.architecture == arch
        && (want.variant.is_empty() || variant.is_empty() || want.variant == variant)
}

/// Chain ids from diff ids (`chain[i] = sha256(chain[i-1] + " " + diff[i])`).
pub fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let next = match out.last() {
            None => d.clone(),
            Some(p) => format!("sha256:{}", hex::encode(Sha256::digest(format!("{p} {d}")))),
        };
        out.push(next);
    }
    out
}

fn short_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..12].to_string()
}

/// What a pull produced.
#[derive(Debug)]
pub struct Pulled {
    pub name: String,
    pub target: Descriptor,
}

struct PullPlan {
    reference: String,
    repo_host: String,
    repo_path: String,
    top: Fetched,
    manifest: Fetched,
    manifest_index: Option<usize>,
    /// The snapshotter to unpack into, if unpacking.
    unpack: Option<Arc<Snapshotter>>,
}

impl TransferService {
    fn blocking_core<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Core) -> Result<T> + Send + 'static,
    ) -> impl std::future::Future<Output = Result<T>> {
        let core = self.core.clone();
        async move {
            tokio::task::spawn_blocking(move || f(&core))
                .await
                .map_err(|e| Error::Internal(format!("worker failed: {e}")))?
        }
    }

    async fn remote_for(
        &self,
        ns: &str,
        reference: &str,
        resolver: Option<&tt::RegistryResolver>,
        push: bool,
    ) -> Result<Box<dyn Remote>> {
        let mut auth = Auth::default();
        if let Some(r) = resolver {
            auth.headers = r.headers.clone();
            if !r.host_dir.is_empty() {
                return Err(Error::Unimplemented(
                    "RegistryResolver.host_dir (a client-side hosts directory) is not supported; \
                     configure [registry] in the supervisor's config instead"
                        .into(),
                ));
            }
            if !r.auth_stream.is_empty() {
                let stream = self
                    .streams
                    .take(ns, &r.auth_stream, Duration::from_secs(5))
                    .await
                    .ok_or_else(|| {
                        Error::NotFound(format!("auth stream {:?} is not open", r.auth_stream))
                    })?;
                auth.stream = Some(Arc::new(tokio::sync::Mutex::new(stream)));
            }
            auth.default_scheme = r.default_scheme.clone();
        }
        self.remotes.remote(reference, auth, push).await
    }

    /// OCIRegistry → ImageStore.
    pub async fn pull(
        &self,
        ns: &str,
        src: tt::OciRegistry,
        dst: tt::ImageStore,
        progress: &Progress,
    ) -> Result<Pulled> {
        if src.reference.is_empty() {
            return Err(Error::InvalidArgument(
                "the OCIRegistry reference is empty".into(),
            ));
        }
        let mut unpack_into: Option<Arc<Snapshotter>> = None;
        for u in &dst.unpacks {
            let sn = self.core.snapshots.get(&u.snapshotter)?;
            match &unpack_into {
                Some(first) if first.name() != sn.name() => {
                    return Err(Error::Unimplemented(format!(
                        "unpacking into several snapshotters ({} and {}) is not supported: name one",
                        first.name(),
                        sn.name()
                    )))
                }
                _ => unpack_into = Some(sn.clone()),
            }
        }
        if dst.extra_references.iter().any(|r| r.is_prefix) {
            return Err(Error::Unimplemented(
                "ImageStore.extra_references with is_prefix is not supported".into(),
            ));
        }
        // Pulls fetch one platform's manifest tree; say so instead of
        // silently fetching less than was asked for.
        if dst.platforms.len() > 1 {
            return Err(Error::Unimplemented(
                "pulling several platforms (ImageStore.platforms) is not supported: name one"
                    .into(),
            ));
        }
        if dst.all_metadata {
            return Err(Error::Unimplemented(
                "ImageStore.all_metadata is not supported".into(),
            ));
        }
        if dst.manifest_limit != 0 {
            return Err(Error::Unimplemented(
                "ImageStore.manifest_limit is not supported".into(),
            ));
        }
        let platform = dst
            .platforms
            .first()
            .cloned()
            .or_else(|| dst.unpacks.iter().find_map(|u| u.platform.clone()))
            .unwrap_or_else(default_platform);
        let remote = self
            .remote_for(ns, &src.reference, src.resolver.as_ref(), false)
            .await?;
        progress.event("resolving", &src.reference, None).await;
        let resolved = remote.resolve(&platform).await?;
        let top = resolved
            .index
            .clone()
            .unwrap_or_else(|| resolved.manifest.clone());
        let top_desc = top.descriptor();
        progress
            .event("resolved", &src.reference, Some(&top_desc))
            .await;
        let manifest = resolved.manifest;
        if manifest.media_type != MT_OCI_MANIFEST && manifest.media_type != MT_DOCKER_MANIFEST {
            return Err(Error::InvalidArgument(format!(
                "unsupported manifest media type {:?} (Docker schema 2 and OCI only)",
                manifest.media_type
            )));
        }
        let manifest_index = match &resolved.index {
            Some(idx) => {
                let idx = parse_json("image index", &idx.bytes)?;
                let pos = idx["manifests"]
                    .as_array()
                    .and_then(|a| {
                        a.iter()
                            .position(|m| m["digest"].as_str() == Some(manifest.digest.as_str()))
                    })
                    .ok_or_else(|| {
                        Error::Internal(format!(
                            "manifest {} is not in the index it was resolved from",
                            manifest.digest
                        ))
                    })?;
                Some(pos)
            }
            None => None,
        };
        let name = if dst.name.is_empty() {
            remote.canonical_name()
        } else {
            dst.name.clone()
        };
        let plan = PullPlan {
            reference: name,
            repo_host: remote.host(),
            repo_path: remote.repository(),
            top,
            manifest,
            manifest_index,
            unpack: unpack_into,
        };

        let lease = format!("transfer-pull-{}", short_id());
        self.create_lease(ns, &lease).await?;
        let res = self
            .pull_with_lease(ns, &lease, remote.as_ref(), &plan, &dst, progress)
            .await;
        let failed = res.is_err();
        if let Err(e) = self.delete_lease(ns, &lease).await {
            tracing::warn!(lease, error = %e, "cannot delete the pull lease");
        }
        if failed {
            // Whatever this pull committed and nothing else references.
            let gc = self.core.gc.clone();
            if let Err(e) = tokio::task::spawn_blocking(move || gc.collect_now())
                .await
                .map_err(|e| Error::Internal(e.to_string()))
                .and_then(|r| r)
            {
                tracing::warn!(error = %e, "garbage collection after a failed pull");
            }
        } else {
            self.core.gc.schedule();
        }
        let target = res?;
        progress
            .event("saved", &plan.reference, Some(&target))
            .await;
        tracing::info!(namespace = %ns, image = %plan.reference, digest = %target.digest, source = %src.reference, "transfer: pulled");
        Ok(Pulled {
            name: plan.reference,
            target,
        })
    }

    async fn create_lease(&self, ns: &str, id: &str) -> Result<()> {
        let expire = chrono::Utc::now() + chrono::Duration::hours(1);
        let lease = api::leases::Lease {
            id: id.to_string(),
            created_at: Some(now()),
            labels: HashMap::from([(
                GC_EXPIRE.to_string(),
                expire.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            )]),
        };
        let (ns, id) = (ns.to_string(), id.to_string());
        self.blocking_core(move |core| {
            core.meta.update(|tx| {
                tx.ensure_namespace(&ns)?;
                tx.put_msg(Kind::Lease, &ns, &id, &lease)
            })
        })
        .await
    }

    async fn delete_lease(&self, ns: &str, id: &str) -> Result<()> {
        let (ns, id) = (ns.to_string(), id.to_string());
        self.blocking_core(move |core| {
            core.meta.update(|tx| {
                tx.delete(Kind::Lease, &ns, &id)?;
                let prefix = format!("{id}\x01");
                for (k, _) in tx.list(Kind::LeaseResource, &ns)? {
                    if k.starts_with(&prefix) {
                        tx.delete(Kind::LeaseResource, &ns, &k)?;
                    }
                }
                Ok(())
            })
        })
        .await
    }

    async fn pull_with_lease(
        &self,
        ns: &str,
        lease: &str,
        remote: &dyn Remote,
        plan: &PullPlan,
        dst: &tt::ImageStore,
        progress: &Progress,
    ) -> Result<Descriptor> {
        let manifest = parse_json("manifest", &plan.manifest.bytes)?;
        let manifest_desc = plan.manifest.descriptor();
        let manifest_key = ref_key(&manifest_desc);
        let config_desc = descriptor_of(&manifest["config"])?;
        let layers: Vec<Descriptor> = manifest["layers"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(descriptor_of)
            .collect::<Result<_>>()?;
        let source_label = (
            format!("{LABEL_DISTRIBUTION_SOURCE}.{}", plan.repo_host),
            plan.repo_path.clone(),
        );

        // The config: small, fetched whole, parsed for the diff ids.
        let config_bytes = match self.read_local(ns, &config_desc.digest).await? {
            Some(b) => b,
            None => remote.blob_bytes(&config_desc).await?,
        };
        let got = format!("sha256:{}", hex::encode(Sha256::digest(&config_bytes)));
        if got != config_desc.digest || config_bytes.len() as i64 != config_desc.size {
            return Err(Error::FailedPrecondition(format!(
                "image config: expected {} ({} bytes), got {got} ({} bytes)",
                config_desc.digest,
                config_desc.size,
                config_bytes.len()
            )));
        }
        let config = parse_json("image config", &config_bytes)?;
        let diff_ids: Vec<String> = config["rootfs"]["diff_ids"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        if diff_ids.len() != layers.len() {
            return Err(Error::InvalidArgument(format!(
                "image config has {} diff ids for {} layers",
                diff_ids.len(),
                layers.len()
            )));
        }
        let chains = chain_ids(&diff_ids);

        // Layers, PARALLEL_DOWNLOADS at a time, bottom first; each is
        // unpacked as soon as it and the ones below it are in (on a blocking
        // thread, while the next ones download), as containerd's unpacker does.
        for l in &layers {
            progress.blob("waiting", l, &manifest_key, 0).await;
        }
        let sem = Arc::new(tokio::sync::Semaphore::new(PARALLEL_DOWNLOADS));
        let mut jobs = Vec::new();
        let mut fetched_rx = Vec::new();
        for (i, l) in layers.iter().enumerate() {
            let labels = HashMap::from([
                (LABEL_UNCOMPRESSED.to_string(), diff_ids[i].clone()),
                source_label.clone(),
            ]);
            let sem = sem.clone();
            let key = manifest_key.clone();
            let (done, rx) = tokio::sync::oneshot::channel::<bool>();
            fetched_rx.push(rx);
            jobs.push(async move {
                let _permit = sem
                    .acquire()
                    .await
                    .map_err(|_| Error::Internal("download semaphore closed".into()))?;
                let fresh = self
                    .fetch_blob(ns, lease, remote, l, labels, progress, &key)
                    .await?;
                progress
                    .blob(
                        if fresh { "complete" } else { "already exists" },
                        l,
                        &key,
                        l.size,
                    )
                    .await;
                let _ = done.send(fresh);
                Ok::<bool, Error>(fresh)
            });
        }
        let unpack = async {
            let Some(sn) = plan.unpack.as_ref() else {
                return Ok(());
            };
            for (i, (l, fetched)) in layers.iter().zip(fetched_rx).enumerate() {
                // A failed download drops its sender: stop, the download
                // error is the one reported.
                let Ok(fresh) = fetched.await else {
                    return Ok(());
                };
                let parent = if i == 0 { "" } else { chains[i - 1].as_str() };
                if self.snapshot_exists(sn, ns, &chains[i]).await? {
                    self.hold_snapshot(sn, ns, lease, &chains[i]).await?;
                    if fresh {
                        progress.blob("extracted", l, &manifest_key, l.size).await;
                    }
                    continue;
                }
                progress.blob("extracting", l, &manifest_key, 0).await;
                self.unpack_layer(sn, ns, lease, l, parent, &chains[i], &diff_ids[i])
                    .await?;
                progress.blob("extracted", l, &manifest_key, l.size).await;
            }
            Ok::<(), Error>(())
        };
        // Both run to their end (an unpack in progress finishes before the
        // caller deletes the lease and collects garbage).
        let (downloaded, unpacked) = tokio::join!(try_join_all(jobs), unpack);
        downloaded?;
        unpacked?;

        // Config, manifest, index with the GC references between them.
        let mut config_labels = HashMap::from([source_label.clone()]);
        if let Some(sn) = &plan.unpack {
            if let Some(top) = chains.last() {
                config_labels.insert(format!("{GC_SNAPSHOT}.{}", sn.name()), top.clone());
            }
        }
        self.put_bytes(ns, lease, &config_desc, config_bytes, config_labels)
            .await?;
        let mut manifest_labels = HashMap::from([
            (format!("{GC_CONTENT}.config"), config_desc.digest.clone()),
            source_label.clone(),
        ]);
        for (i, l) in layers.iter().enumerate() {
            manifest_labels.insert(format!("{GC_CONTENT}.l.{i}"), l.digest.clone());
        }
        self.put_bytes(
            ns,
            lease,
            &manifest_desc,
            plan.manifest.bytes.clone(),
            manifest_labels,
        )
        .await?;
        if let Some(i) = plan.manifest_index {
            let labels = HashMap::from([
                (format!("{GC_CONTENT}.m.{i}"), plan.manifest.digest.clone()),
                source_label.clone(),
            ]);
            self.put_bytes(
                ns,
                lease,
                &plan.top.descriptor(),
                plan.top.bytes.clone(),
                labels,
            )
            .await?;
        }

        // The image record(s).
        let target = plan.top.descriptor();
        let mut names = vec![plan.reference.clone()];
        for r in &dst.extra_references {
            if !r.name.is_empty() && !names.contains(&r.name) {
                names.push(r.name.clone());
            }
        }
        for name in names {
            self.save_image(ns, &name, &target, &dst.labels).await?;
        }
        Ok(target)
    }

    /// A blob of this namespace, read whole (for small ones: config).
    async fn read_local(&self, ns: &str, digest: &str) -> Result<Option<Vec<u8>>> {
        let (ns, digest) = (ns.to_string(), digest.to_string());
        self.blocking_core(move |core| match core.content.info(&ns, &digest) {
            Ok(_) => {
                let p = core.content.blob_path(&digest)?;
                std::fs::read(&p)
                    .map(Some)
                    .map_err(|e| Error::io(format!("read {}", p.display()), e))
            }
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        })
        .await
    }

    /// Puts `desc` into the lease, and sets `labels` on it, if the
    /// namespace has it: true if it did.
    async fn adopt_local(
        &self,
        ns: &str,
        lease: &str,
        desc: &Descriptor,
        labels: &HashMap<String, String>,
    ) -> Result<bool> {
        let (ns, lease, digest, labels) = (
            ns.to_string(),
            lease.to_string(),
            desc.digest.clone(),
            labels.clone(),
        );
        self.blocking_core(move |core| {
            if core.content.info(&ns, &digest).is_err() {
                return Ok(false);
            }
            core.meta
                .update(|tx| tx.add_to_lease(&ns, Some(&lease), "content", &digest))?;
            if !labels.is_empty() {
                let paths: Vec<String> = labels.keys().map(|k| format!("labels.{k}")).collect();
                core.content.update(
                    &ns,
                    &api::content::Info {
                        digest: digest.clone(),
                        labels,
                        ..Default::default()
                    },
                    &paths,
                )?;
            }
            Ok(true)
        })
        .await
    }

    /// Downloads a blob into the content store (verified on commit);
    /// returns false if the namespace already had it.
    #[allow(clippy::too_many_arguments)]
    async fn fetch_blob(
        &self,
        ns: &str,
        lease: &str,
        remote: &dyn Remote,
        desc: &Descriptor,
        labels: HashMap<String, String>,
        progress: &Progress,
        parent: &str,
    ) -> Result<bool> {
        if self.adopt_local(ns, lease, desc, &labels).await? {
            return Ok(false);
        }
        let reference = ref_key(desc);
        let content = self.core.content.clone();
        let deadline = tokio::time::Instant::now() + INGEST_LOCK_WAIT;
        let mut w = loop {
            match tokio::task::block_in_place(|| {
                content.writer(ns, &reference, desc.size, &desc.digest, Some(lease))
            }) {
                Ok(w) => break w,
                // Another namespace had the blob: now recorded here too.
                Err(Error::AlreadyExists(_)) => {
                    self.adopt_local(ns, lease, desc, &labels).await?;
                    return Ok(false);
                }
                // Another pull is writing this blob: wait for it.
                Err(Error::Unavailable(_)) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    if self.adopt_local(ns, lease, desc, &labels).await? {
                        return Ok(false);
                    }
                }
                Err(e) => return Err(e),
            }
        };
        if w.offset() > 0 {
            tokio::task::block_in_place(|| w.truncate())?;
        }
        let mut body = remote.blob(desc).await?;
        let mut current: i64 = 0;
        let mut last_report: i64 = 0;
        progress.blob("downloading", desc, parent, 0).await;
        while let Some(chunk) = body.recv().await {
            let chunk = chunk?;
            current += chunk.len() as i64;
            if current > desc.size {
                return Err(Error::FailedPrecondition(format!(
                    "blob {}: the registry sent more than {} bytes",
                    desc.digest, desc.size
                )));
            }
            tokio::task::block_in_place(|| w.write(&chunk))?;
            if current - last_report >= 256 << 10 || current == desc.size {
                last_report = current;
                progress.blob("downloading", desc, parent, current).await;
            }
        }
        let digest =
            match tokio::task::block_in_place(|| w.commit(desc.size, &desc.digest, labels.clone()))
            {
                Ok(d) => d,
                // A concurrent pull committed the same blob first (containerd's
                // fetcher takes ErrAlreadyExists at commit as success too).
                Err(Error::AlreadyExists(_)) => {
                    self.adopt_local(ns, lease, desc, &labels).await?;
                    return Ok(false);
                }
                Err(e) => return Err(e),
            };
        self.core.events.publish(
            ns,
            "/content/create",
            "ContentCreate",
            &api::containerd::events::ContentCreate {
                digest,
                size: desc.size,
            },
        );
        Ok(true)
    }

    /// Stores small bytes (config, manifest, index) verified against
    /// `desc`, or just labels them if present.
    async fn put_bytes(
        &self,
        ns: &str,
        lease: &str,
        desc: &Descriptor,
        bytes: Vec<u8>,
        labels: HashMap<String, String>,
    ) -> Result<()> {
        let deadline = tokio::time::Instant::now() + INGEST_LOCK_WAIT;
        loop {
            if self.adopt_local(ns, lease, desc, &labels).await? {
                return Ok(());
            }
            let reference = ref_key(desc);
            let (ns2, lease2, desc2, labels2, bytes2) = (
                ns.to_string(),
                lease.to_string(),
                desc.clone(),
                labels.clone(),
                bytes.clone(),
            );
            let res = self
                .blocking_core(move |core| {
                    let mut w = core.content.writer(
                        &ns2,
                        &reference,
                        desc2.size,
                        &desc2.digest,
                        Some(&lease2),
                    )?;
                    if w.offset() > 0 {
                        w.truncate()?;
                    }
                    w.write(&bytes2)?;
                    w.commit(desc2.size, &desc2.digest, labels2)
                })
                .await;
            return match res {
                Ok(digest) => {
                    self.core.events.publish(
                        ns,
                        "/content/create",
                        "ContentCreate",
                        &api::containerd::events::ContentCreate {
                            digest,
                            size: desc.size,
                        },
                    );
                    Ok(())
                }
                Err(Error::AlreadyExists(_)) => {
                    self.adopt_local(ns, lease, desc, &labels).await?;
                    Ok(())
                }
                // Another pull is writing this blob: wait for it.
                Err(Error::Unavailable(_)) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
                Err(e) => Err(e),
            };
        }
    }

    async fn snapshot_exists(&self, sn: &Snapshotter, ns: &str, key: &str) -> Result<bool> {
        match sn.stat(ns, key) {
            Ok(_) => Ok(true),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(e),
        }
    }

    async fn hold_snapshot(
        &self,
        sn: &Snapshotter,
        ns: &str,
        lease: &str,
        key: &str,
    ) -> Result<()> {
        let (ns, lease, key) = (ns.to_string(), lease.to_string(), key.to_string());
        let rtype = sn.lease_type();
        self.blocking_core(move |core| {
            core.meta
                .update(|tx| tx.add_to_lease(&ns, Some(&lease), &rtype, &key))
        })
        .await
    }

    /// Prepare → Diff.Apply → verify diff id → commit as `chain`.
    #[allow(clippy::too_many_arguments)]
    async fn unpack_layer(
        &self,
        sn: &Arc<Snapshotter>,
        ns: &str,
        lease: &str,
        layer: &Descriptor,
        parent: &str,
        chain: &str,
        diff_id: &str,
    ) -> Result<()> {
        let key = format!("extract-{} {chain}", short_id());
        let (ns2, lease2, key2, parent2, layer2, chain2, diff2) = (
            ns.to_string(),
            lease.to_string(),
            key.clone(),
            parent.to_string(),
            layer.clone(),
            chain.to_string(),
            diff_id.to_string(),
        );
        let snaps = sn.clone();
        let res = self
            .blocking_core(move |core| {
                let mounts = snaps.prepare(&ns2, &key2, &parent2, HashMap::new(), Some(&lease2))?;
                let applied = core.applier.apply(&ns2, &layer2, &mounts);
                let applied = match applied {
                    Ok(a) => a,
                    Err(e) => {
                        let _ = snaps.remove(&ns2, &key2);
                        return Err(e);
                    }
                };
                if applied.digest != diff2 {
                    let _ = snaps.remove(&ns2, &key2);
                    return Err(Error::FailedPrecondition(format!(
                        "layer {}: unpacked digest {} does not match diff id {diff2}",
                        layer2.digest, applied.digest
                    )));
                }
                match snaps.commit(&ns2, &chain2, &key2, HashMap::new(), Some(&lease2)) {
                    Ok(()) => Ok(true),
                    Err(Error::AlreadyExists(_)) => {
                        let _ = snaps.remove(&ns2, &key2);
                        core.meta.update(|tx| {
                            tx.add_to_lease(&ns2, Some(&lease2), &snaps.lease_type(), &chain2)
                        })?;
                        Ok(false)
                    }
                    Err(e) => {
                        let _ = snaps.remove(&ns2, &key2);
                        Err(e)
                    }
                }
            })
            .await?;
        self.core.events.publish(
            ns,
            "/snapshot/prepare",
            "SnapshotPrepare",
            &api::containerd::events::SnapshotPrepare {
                key: key.clone(),
                parent: parent.to_string(),
                snapshotter: sn.name().into(),
            },
        );
        if res {
            self.core.events.publish(
                ns,
                "/snapshot/commit",
                "SnapshotCommit",
                &api::containerd::events::SnapshotCommit {
                    key,
                    name: chain.to_string(),
                    snapshotter: sn.name().into(),
                },
            );
        }
        Ok(())
    }

    /// Creates the image record, or points an existing one at `target`.
    async fn save_image(
        &self,
        ns: &str,
        name: &str,
        target: &Descriptor,
        labels: &HashMap<String, String>,
    ) -> Result<()> {
        let (ns2, name2, target2, labels2) = (
            ns.to_string(),
            name.to_string(),
            target.clone(),
            labels.clone(),
        );
        let (created, image) = self
            .blocking_core(move |core| {
                core.meta.update(|tx| {
                    tx.ensure_namespace(&ns2)?;
                    let t = now();
                    let existing: Option<api::images::Image> =
                        tx.get_msg(Kind::Image, &ns2, &name2)?;
                    let (created, image) = match existing {
                        Some(mut cur) => {
                            cur.target = Some(target2.clone());
                            cur.labels.extend(labels2.clone());
                            cur.updated_at = Some(t);
                            (false, cur)
                        }
                        None => (
                            true,
                            api::images::Image {
                                name: name2.clone(),
                                labels: labels2.clone(),
                                target: Some(target2.clone()),
                                created_at: Some(t),
                                updated_at: Some(t),
                            },
                        ),
                    };
                    tx.put_msg(Kind::Image, &ns2, &name2, &image)?;
                    Ok((created, image))
                })
            })
            .await?;
        if created {
            self.core.events.publish(
                ns,
                "/images/create",
                "ImageCreate",
                &api::images::ImageCreate {
                    name: image.name.clone(),
                    labels: image.labels.clone(),
                },
            );
        } else {
            self.core.events.publish(
                ns,
                "/images/update",
                "ImageUpdate",
                &api::images::ImageUpdate {
                    name: image.name.clone(),
                    labels: image.labels.clone(),
                },
            );
        }
        Ok(())
    }

    // ---------------------------------------------------------------- push

    /// ImageStore → OCIRegistry.
    pub async fn push(
        &self,
        ns: &str,
        src: tt::ImageStore,
        dst: tt::OciRegistry,
        progress: &Progress,
    ) -> Result<()> {
        if src.name.is_empty() {
            return Err(Error::InvalidArgument(
                "the ImageStore name is empty".into(),
            ));
        }
        if dst.reference.is_empty() {
            return Err(Error::InvalidArgument(
                "the OCIRegistry reference is empty".into(),
            ));
        }
        let (ns2, name2) = (ns.to_string(), src.name.clone());
        let image: api::images::Image = self
            .blocking_core(move |core| {
                core.meta
                    .get_msg(Kind::Image, &ns2, &name2)?
                    .ok_or_else(|| Error::NotFound(format!("image {name2:?}")))
            })
            .await?;
        let target = image.target.ok_or_else(|| {
            Error::FailedPrecondition(format!("image {:?} has no target", src.name))
        })?;
        let remote = self
            .remote_for(ns, &dst.reference, dst.resolver.as_ref(), true)
            .await?;
        if src.platforms.len() > 1 {
            return Err(Error::Unimplemented(
                "pushing several platforms (ImageStore.platforms) is not supported: name one or none".into(),
            ));
        }
        let platform = src.platforms.first().cloned();
        let pushed = self
            .push_tree(
                ns,
                remote.as_ref(),
                &target,
                platform.as_ref(),
                progress,
                true,
            )
            .await?;
        tracing::info!(namespace = %ns, image = %src.name, destination = %dst.reference, digest = %pushed.digest, "transfer: pushed");
        progress
            .event("pushed", &dst.reference, Some(&pushed))
            .await;
        Ok(())
    }

    fn push_tree<'a>(
        &'a self,
        ns: &'a str,
        remote: &'a dyn Remote,
        desc: &'a Descriptor,
        platform: Option<&'a Platform>,
        progress: &'a Progress,
        top: bool,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Descriptor>> + Send + 'a>> {
        Box::pin(async move {
            let bytes = self.read_local(ns, &desc.digest).await?.ok_or_else(|| {
                Error::NotFound(format!(
                    "{} {} of the image is not in the content store (an image pulled for one \
                     platform is pushed with ImageStore.platforms naming it)",
                    if top { "content" } else { "manifest" },
                    desc.digest
                ))
            })?;
            let key = ref_key(desc);
            if is_index(&desc.media_type) {
                let idx = parse_json("image index", &bytes)?;
                let children: Vec<(Descriptor, Value)> = idx["manifests"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                    .iter()
                    .map(|m| Ok((descriptor_of(m)?, m["platform"].clone())))
                    .collect::<Result<_>>()?;
                if let Some(p) = platform {
                    // One platform only: push its manifest in place of the index.
                    let (child, _) = children
                        .iter()
                        .find(|(_, pv)| platform_matches(p, pv))
                        .ok_or_else(|| {
                            Error::NotFound(format!(
                                "no manifest for {}/{} in the image",
                                p.os, p.architecture
                            ))
                        })?;
                    return self.push_tree(ns, remote, child, None, progress, top).await;
                }
                for (child, _) in &children {
                    self.push_tree(ns, remote, child, None, progress, false)
                        .await?;
                }
            } else {
                let m = parse_json("manifest", &bytes)?;
                let mut blobs = vec![descriptor_of(&m["config"])?];
                for l in m["layers"].as_array().cloned().unwrap_or_default() {
                    blobs.push(descriptor_of(&l)?);
                }
                for b in &blobs {
                    if remote.blob_exists(b).await? {
                        progress.blob("exists", b, &key, b.size).await;
                        continue;
                    }
                    let (path, info) = {
                        let (ns2, d2) = (ns.to_string(), b.digest.clone());
                        self.blocking_core(move |core| {
                            let info = core.content.info(&ns2, &d2)?;
                            Ok((core.content.blob_path(&d2)?, info))
                        })
                        .await?
                    };
                    // Same registry, other repository: a cross-repository mount.
                    let source = info
                        .labels
                        .get(&format!("{LABEL_DISTRIBUTION_SOURCE}.{}", remote.host()))
                        .cloned()
                        .unwrap_or_default();
                    let from = source
                        .split(',')
                        .find(|r| !r.is_empty() && *r != remote.repository());
                    if let Some(from) = from {
                        if remote.mount_blob(b, from).await? {
                            progress.blob("mounted", b, &key, b.size).await;
                            continue;
                        }
                    }
                    progress.blob("pushing", b, &key, 0).await;
                    remote.push_blob(b, &path).await?;
                    progress.blob("pushed", b, &key, b.size).await;
                }
            }
            progress.blob("pushing", desc, "", 0).await;
            let tag = if top { remote.tag() } else { None };
            remote.push_manifest(desc, bytes, tag.as_deref()).await?;
            progress.blob("pushed", desc, "", desc.size).await;
            Ok(desc.clone())
        })
    }
}

/// Runs futures concurrently (on this task), failing on the first error.
async fn try_join_all<T, F>(futs: Vec<F>) -> Result<Vec<T>>
where
    F: std::future::Future<Output = Result<T>>,
{
    let mut futs: Vec<_> = futs.into_iter().map(Box::pin).collect();
    let mut out: Vec<Option<T>> = (0..futs.len()).map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (i, f) in futs.iter_mut().enumerate() {
            if out[i].is_some() {
                continue;
            }
            match f.as_mut().poll(cx) {
                std::task::Poll::Ready(Ok(v)) => out[i] = Some(v),
                std::task::Poll::Ready(Err(e)) => return std::task::Poll::Ready(Err(e)),
                std::task::Poll::Pending => pending = true,
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(Ok(()))
        }
    })
    .await?;
    Ok(out
        .into_iter()
        .map(|v| v.expect("every future finished"))
        .collect())
}

/// A chunk stream of a blob download.
pub type BlobBody = mpsc::Receiver<Result<Bytes>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chains() {
        let c = chain_ids(&["sha256:a".into(), "sha256:b".into()]);
        assert_eq!(c[0], "sha256:a");
        assert_eq!(
            c[1],
            format!(
                "sha256:{}",
                hex::encode(Sha256::digest("sha256:a sha256:b"))
            )
        );
    }

    #[test]
    fn platform_match() {
        let amd = Platform {
            os: "linux".into(),
            architecture: "amd64".into(),
            ..Default::default()
        };
        let arm = Platform {
            os: "linux".into(),
            architecture: "arm64".into(),
            variant: "v8".into(),
            ..Default::default()
        };
        let v = serde_json::json!({"os": "linux", "architecture": "arm64", "variant": "v8"});
        assert!(platform_matches(&arm, &v));
        assert!(!platform_matches(&amd, &v));
        assert!(platform_matches(
            &amd,
            &serde_json::json!({"os": "linux", "architecture": "amd64"})
        ));
    }

    #[test]
    fn ref_keys() {
        let d = |mt: &str| Descriptor {
            media_type: mt.into(),
            digest: "sha256:x".into(),
            ..Default::default()
        };
        assert_eq!(ref_key(&d(MT_OCI_INDEX)), "index-sha256:x");
        assert_eq!(ref_key(&d(MT_DOCKER_MANIFEST)), "manifest-sha256:x");
        assert_eq!(
            ref_key(&d("application/vnd.oci.image.layer.v1.tar+gzip")),
            "layer-sha256:x"
        );
        assert_eq!(
            ref_key(&d("application/vnd.docker.container.image.v1+json")),
            "config-sha256:x"
        );
    }
}
