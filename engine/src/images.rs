//! Images: pull from a registry into containerd (content, image record,
//! unpacked snapshots) the way `ctr pull` does client-side, plus listing and
//! resolving images for containers.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use orca_proto::images::{self as imgs, Image};
use orca_proto::snapshots as snaps;
use orca_proto::types::Descriptor;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tracing::{debug, info};

use crate::containerd::Containerd;
use crate::error::{EngineError, Result};
use crate::image_writer::{put_record, ImageWriter};
use crate::reference::{familiar, Reference};
use orca_registry as reg;

/// Name prefix of image records that keep an untagged ("dangling") image,
/// as dockerd's containerd image store names them.
pub const DANGLING_PREFIX: &str = "moby-dangling@";

/// Whether an image record name is a dangling image's.
pub fn is_dangling_name(name: &str) -> bool {
    name.starts_with(DANGLING_PREFIX)
}

/// An image as found in containerd, with its manifest and config loaded.
#[derive(Debug, Clone)]
pub struct ResolvedImage {
    /// containerd image name (normalized reference).
    pub name: String,
    /// The image record's target (index or manifest).
    pub target: Descriptor,
    /// The platform manifest's digest.
    pub manifest_digest: String,
    /// "sha256:…" of the config: Docker's image ID.
    pub config_digest: String,
    /// The image config JSON.
    pub config: Value,
    /// Layer descriptors, bottom first.
    pub layers: Vec<Descriptor>,
    /// Chain ids of the unpacked layers, bottom first.
    pub chain_ids: Vec<String>,
    /// When the image record was created in containerd.
    pub record_created: chrono::DateTime<chrono::Utc>,
}

impl ResolvedImage {
    /// The snapshot a container's rootfs is prepared from.
    pub fn top_chain_id(&self) -> Option<&str> {
        self.chain_ids.last().map(|s| s.as_str())
    }
}

/// Everything found before the progress stream starts (so errors like an
/// unknown tag are answered with a proper status code).
pub struct PullPlan {
    reference: Reference,
    repo: reg::Repository,
    /// What the image record points at: the index when there is one.
    top: reg::FetchedManifest,
    /// The platform manifest.
    manifest: reg::FetchedManifest,
    image: reg::ImageManifest,
    /// The platform manifest's position in the index.
    manifest_index: Option<usize>,
}

/// The platform Orca runs containers for.
pub fn platform_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "arm" => "arm",
        other => other,
    }
}

/// Where per-registry CA certificates live (`<dir>/<host[:port]>/ca.crt`):
/// `$ORCA_REGISTRY_CERTS_DIR`, else Docker's `/etc/docker/certs.d`.
pub fn registry_certs_dir() -> std::path::PathBuf {
    std::env::var_os("ORCA_REGISTRY_CERTS_DIR")
        .filter(|v| !v.is_empty())
        .map(Into::into)
        .unwrap_or_else(|| "/etc/docker/certs.d".into())
}

/// The registry client for orcad's settings: `registry-mirrors` (Docker
/// Hub mirrors), `insecure-registries`, the certs dir, system roots.
pub fn registry_client(cfg: &crate::EngineConfig) -> Result<reg::Client> {
    let hosts = reg::HostsConfig::docker(
        &cfg.registry_mirrors,
        &cfg.insecure_registries,
        Some(registry_certs_dir()),
    );
    reg::Client::new(hosts).map_err(|e| EngineError::BadRequest(format!("registry settings: {e}")))
}

/// Docker's `X-Registry-Auth` header of a request (absent → anonymous).
pub fn registry_auth(headers: &http::HeaderMap) -> Result<reg::Credentials> {
    match headers.get("x-registry-auth") {
        None => Ok(reg::Credentials::Anonymous),
        Some(v) => {
            let s = v.to_str().map_err(|_| {
                EngineError::BadRequest("invalid X-Registry-Auth header: not ASCII".into())
            })?;
            Ok(reg::Credentials::from_x_registry_auth(s)?.credentials)
        }
    }
}

/// A registry error met while pulling `r`, in dockerd's words.
pub fn pull_error(r: &Reference, e: reg::Error) -> EngineError {
    match e {
        reg::Error::Unauthorized { message, .. } => EngineError::NotFound(format!(
            "pull access denied for {}, repository does not exist or may require 'docker login': {message}",
            familiar(&r.name())
        )),
        other => other.into(),
    }
}

fn proto_desc(d: &reg::Descriptor) -> Descriptor {
    Descriptor {
        media_type: d.media_type.clone(),
        digest: d.digest.clone(),
        size: d.size as i64,
        annotations: HashMap::new(),
    }
}

fn is_index(mt: &str) -> bool {
    reg::manifest::is_index(mt)
}

fn parse_json(what: &str, b: &[u8]) -> Result<Value> {
    serde_json::from_slice(b).map_err(|e| EngineError::internal(format!("{what}: bad JSON: {e}")))
}

fn descriptor(v: &Value) -> Result<Descriptor> {
    let digest = v["digest"].as_str().unwrap_or("").to_string();
    if !digest.starts_with("sha256:") || digest.len() != 71 {
        return Err(EngineError::internal(format!(
            "bad descriptor digest {digest:?}"
        )));
    }
    Ok(Descriptor {
        media_type: v["mediaType"].as_str().unwrap_or("").to_string(),
        digest,
        size: v["size"].as_i64().unwrap_or(0),
        annotations: HashMap::new(),
    })
}

/// Picks the linux/<arch> manifest of a stored index (the crate's platform
/// matching); returns its position.
fn pick_platform(index: &Value) -> Result<(usize, Descriptor)> {
    let idx: reg::ImageIndex = serde_json::from_value(index.clone())
        .map_err(|e| EngineError::internal(format!("index: {e}")))?;
    let want = reg::Platform {
        architecture: platform_arch().into(),
        os: "linux".into(),
        ..Default::default()
    };
    let d = reg::select_platform(&idx, &want)?;
    let pos = idx
        .manifests
        .iter()
        .position(|m| m.digest == d.digest)
        .unwrap_or(0);
    Ok((pos, proto_desc(d)))
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

pub(crate) fn short(digest: &str) -> String {
    digest
        .trim_start_matches("sha256:")
        .chars()
        .take(12)
        .collect()
}

pub(crate) fn progress_bar(current: i64, total: i64) -> String {
    let width = 50i64;
    let filled = if total > 0 {
        (current * width / total).min(width)
    } else {
        0
    };
    let mut bar = "=".repeat(filled as usize);
    if filled < width {
        bar.push('>');
        bar.push_str(&" ".repeat((width - filled - 1) as usize));
    }
    format!("[{bar}] {}/{}", human_size(current), human_size(total))
}

/// Docker's `units.HumanSize` (decimal units).
pub fn human_size(n: i64) -> String {
    let units = ["B", "kB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1000.0 && u < units.len() - 1 {
        v /= 1000.0;
        u += 1;
    }
    // Four significant digits, like Go's %.4g.
    let s = if v >= 100.0 {
        format!("{v:.1}")
    } else if v >= 10.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    };
    let s = if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    };
    s + units[u]
}

/// Sends one progress message (ignored once the client has gone).
pub(crate) async fn emit(tx: &mpsc::Sender<Bytes>, v: Value) {
    let mut s = v.to_string();
    s.push_str("\r\n");
    let _ = tx.send(Bytes::from(s)).await;
}

/// Image operations on containerd.
#[derive(Clone)]
pub struct ImageService {
    ctrd: Containerd,
    registry: reg::Client,
    snapshotter: String,
    /// Indexes, manifests and configs read from the content store, by digest
    /// (see [`MetadataBlobs`]).
    blobs: Arc<MetadataBlobs>,
}

/// A bounded cache of the small JSON blobs every image lookup reads
/// (index, manifest, config): content is addressed by digest, so a cached
/// blob is always the blob. Each container create resolves its image; the
/// cache saves two or three content-store round trips per create.
#[derive(Default)]
struct MetadataBlobs {
    map: std::sync::Mutex<HashMap<String, Arc<Vec<u8>>>>,
}

impl MetadataBlobs {
    const MAX_ENTRIES: usize = 512;
    const MAX_BLOB: usize = 4 << 20;

    fn get(&self, digest: &str) -> Option<Arc<Vec<u8>>> {
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(digest)
            .cloned()
    }

    fn put(&self, digest: &str, blob: Arc<Vec<u8>>) {
        if blob.len() > Self::MAX_BLOB {
            return;
        }
        let mut m = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if m.len() >= Self::MAX_ENTRIES {
            m.clear();
        }
        m.insert(digest.to_string(), blob);
    }
}

impl ImageService {
    pub fn new(ctrd: Containerd, registry: reg::Client, snapshotter: String) -> ImageService {
        ImageService {
            ctrd,
            registry,
            snapshotter,
            blobs: Arc::default(),
        }
    }

    /// An index, manifest or config blob, from the cache or the content
    /// store (then cached).
    async fn read_metadata_blob(&self, digest: &str) -> Result<Arc<Vec<u8>>> {
        if let Some(b) = self.blobs.get(digest) {
            return Ok(b);
        }
        let b = Arc::new(self.ctrd.read_blob(digest).await?);
        self.blobs.put(digest, b.clone());
        Ok(b)
    }

    /// The snapshotter used for unpacking.
    pub fn snapshotter(&self) -> &str {
        &self.snapshotter
    }

    /// The containerd (supervisor) client.
    pub(crate) fn ctrd(&self) -> &Containerd {
        &self.ctrd
    }

    /// The registry client (shared with push and login).
    pub fn registry(&self) -> &reg::Client {
        &self.registry
    }

    /// Resolves the reference at the registry (mirrors first; top manifest
    /// and platform manifest) before any progress is streamed.
    pub async fn pull_prepare(
        &self,
        reference: Reference,
        creds: reg::Credentials,
    ) -> Result<PullPlan> {
        let repo = self.registry.repository(&reference, creds);
        let platform = reg::Platform {
            architecture: platform_arch().into(),
            os: "linux".into(),
            ..Default::default()
        };
        let resolved = repo
            .resolve(&platform)
            .await
            .map_err(|e| pull_error(&reference, e))?;
        let (top, manifest_index) = match resolved.index {
            Some(idx) => {
                let pos = idx
                    .index()?
                    .manifests
                    .iter()
                    .position(|d| d.digest == resolved.manifest.digest);
                (idx, pos)
            }
            None => (resolved.manifest.clone(), None),
        };
        Ok(PullPlan {
            reference,
            repo,
            top,
            manifest: resolved.manifest,
            image: resolved.image,
            manifest_index,
        })
    }

    /// Downloads, stores and unpacks the planned image, streaming Docker's
    /// JSON progress messages into `tx`.
    pub async fn pull_run(&self, plan: PullPlan, tx: &mpsc::Sender<Bytes>) -> Result<()> {
        let r = &plan.reference;
        emit(
            tx,
            json!({"status": format!("Pulling from {}", r.path), "id": r.object()}),
        )
        .await;
        let w = ImageWriter::begin(self, "pull").await?;
        let res = self.pull_with_lease(&plan, tx, &w).await;
        w.finish().await;
        let existed = res?;
        emit(
            tx,
            json!({"status": format!("Digest: {}", plan.top.digest)}),
        )
        .await;
        let name = familiar(&r.full());
        let status = if existed {
            format!("Status: Image is up to date for {name}")
        } else {
            format!("Status: Downloaded newer image for {name}")
        };
        emit(tx, json!({"status": status})).await;
        Ok(())
    }

    /// Returns whether the image was already up to date.
    async fn pull_with_lease(
        &self,
        plan: &PullPlan,
        tx: &mpsc::Sender<Bytes>,
        w: &ImageWriter<'_>,
    ) -> Result<bool> {
        let r = &plan.reference;
        let config_desc = &plan.image.config;
        let layers: &[reg::Descriptor] = &plan.image.layers;
        for l in layers.iter().chain(std::iter::once(config_desc)) {
            orca_registry::reference::validate_digest(&l.digest)?;
            if !l.digest.starts_with("sha256:") {
                return Err(EngineError::NotImplemented(format!(
                    "{}: only sha256 digests are supported",
                    l.digest
                )));
            }
        }

        // The config (small): fetch (verified), parse.
        let config_bytes = match self.ctrd.content_info(&config_desc.digest).await? {
            Some(_) => self.ctrd.read_blob(&config_desc.digest).await?,
            None => plan
                .repo
                .fetch_blob_bytes(config_desc, 16 << 20)
                .await
                .map_err(|e| pull_error(r, e))?
                .to_vec(),
        };
        let got = format!("sha256:{}", hex::encode(Sha256::digest(&config_bytes)));
        if got != config_desc.digest {
            return Err(EngineError::internal(format!(
                "config digest mismatch: expected {}, got {got}",
                config_desc.digest
            )));
        }
        let config = parse_json("image config", &config_bytes)?;
        let diff_ids: Vec<String> = crate::util::json_strings(&config["rootfs"]["diff_ids"]);
        if diff_ids.len() != layers.len() {
            return Err(EngineError::internal(format!(
                "image config has {} diff ids for {} layers",
                diff_ids.len(),
                layers.len()
            )));
        }
        let chains = chain_ids(&diff_ids);
        let existed = match self.image_record(&r.full()).await? {
            Some(img) => img.target.map(|t| t.digest) == Some(plan.top.digest.clone()),
            None => false,
        };

        for l in layers {
            emit(
                tx,
                json!({"status": "Pulling fs layer", "progressDetail": {}, "id": short(&l.digest)}),
            )
            .await;
        }
        // Layers: those already in the content store are relabelled; the
        // others download in parallel (bounded, like dockerd) straight into
        // Content.Write.
        let mut downloaded = vec![false; layers.len()];
        let mut missing: Vec<usize> = Vec::new();
        for (i, l) in layers.iter().enumerate() {
            let labels = ImageWriter::layer_labels(&diff_ids[i]);
            if w.relabel_existing(&l.digest, labels).await? {
                emit(tx, json!({"status": "Already exists", "progressDetail": {}, "id": short(&l.digest)})).await;
            } else if missing.iter().any(|&j| layers[j].digest == l.digest) {
                // The same blob twice in one image: downloaded once.
            } else {
                missing.push(i);
            }
        }
        let todo: Vec<reg::Descriptor> = missing.iter().map(|&i| layers[i].clone()).collect();
        let diff_ids_ref = &diff_ids;
        let missing_ref = &missing;
        plan.repo
            .for_each_blob(&todo, reg::DEFAULT_CONCURRENCY, |k, l, stream| async move {
                let i = missing_ref[k];
                let labels = ImageWriter::layer_labels(&diff_ids_ref[i]);
                self.download_blob(r, &l, stream, labels, w, tx).await?;
                emit(tx, json!({"status": "Download complete", "progressDetail": {}, "id": short(&l.digest)})).await;
                Ok::<_, EngineError>(())
            })
            .await?;
        for &i in &missing {
            downloaded[i] = true;
        }
        // Config, manifest, index, with the GC references between them.
        w.write_config(&config_desc.digest, &config_bytes, &chains)
            .await?;
        w.write_manifest(
            &plan.manifest.digest,
            &plan.manifest.bytes,
            &config_desc.digest,
            layers.iter().map(|l| l.digest.as_str()),
        )
        .await?;
        if let Some(i) = plan.manifest_index {
            w.write_index(&plan.top.digest, &plan.top.bytes, i, &plan.manifest.digest)
                .await?;
        }
        // Unpack.
        for (i, l) in layers.iter().enumerate() {
            let l = proto_desc(l);
            if w.is_unpacked(&chains[i]).await? {
                if downloaded[i] {
                    emit(tx, json!({"status": "Pull complete", "progressDetail": {}, "id": short(&l.digest)})).await;
                }
                continue;
            }
            emit(tx, json!({"status": "Extracting", "progressDetail": {"current": l.size, "total": l.size}, "progress": progress_bar(l.size, l.size), "id": short(&l.digest)})).await;
            w.unpack_layer(&l, &diff_ids[i], &chains, i).await?;
            emit(
                tx,
                json!({"status": "Pull complete", "progressDetail": {}, "id": short(&l.digest)}),
            )
            .await;
        }
        // The image record.
        let target = Descriptor {
            media_type: plan.top.media_type.clone(),
            digest: plan.top.digest.clone(),
            size: plan.top.bytes.len() as i64,
            annotations: HashMap::new(),
        };
        let image = Image {
            name: r.full(),
            target: Some(target),
            ..Default::default()
        };
        put_record(&self.ctrd, image).await?;
        info!(image = %r.full(), digest = %plan.top.digest, "pulled");
        Ok(existed)
    }

    /// Streams one verified blob download into containerd's Content.Write.
    async fn download_blob(
        &self,
        r: &Reference,
        l: &reg::Descriptor,
        mut stream: reg::BlobStream,
        labels: HashMap<String, String>,
        writer: &ImageWriter<'_>,
        tx: &mpsc::Sender<Bytes>,
    ) -> Result<()> {
        let size = l.size as i64;
        let mut w = writer.blob_writer(&l.digest, size, labels);
        let mut buf: Vec<u8> = Vec::with_capacity(1 << 20);
        let mut current: i64 = 0;
        let mut last_report: i64 = -1;
        while let Some(data) = stream.next_chunk().await.map_err(|e| pull_error(r, e))? {
            current += data.len() as i64;
            buf.extend_from_slice(&data);
            if buf.len() >= 1 << 20 {
                w.write(std::mem::take(&mut buf)).await?;
            }
            if current - last_report >= 256 << 10 || current == size {
                last_report = current;
                emit(tx, json!({"status": "Downloading", "progressDetail": {"current": current, "total": size}, "progress": progress_bar(current, size), "id": short(&l.digest)})).await;
            }
        }
        if !buf.is_empty() {
            w.write(buf).await?;
        }
        debug!(digest = %l.digest, bytes = current, "layer downloaded");
        w.commit().await
    }

    pub(crate) async fn image_record(&self, name: &str) -> Result<Option<Image>> {
        match self
            .ctrd
            .images()
            .get(self.ctrd.req(imgs::GetImageRequest {
                name: name.to_string(),
            }))
            .await
        {
            Ok(r) => Ok(r.into_inner().image),
            Err(s) if s.code() == tonic::Code::NotFound => Ok(None),
            Err(s) => Err(EngineError::grpc("get image", s)),
        }
    }

    /// Loads manifest and config of an image record.
    pub async fn load(&self, img: Image) -> Result<ResolvedImage> {
        let target = img
            .target
            .clone()
            .ok_or_else(|| EngineError::internal(format!("image {} has no target", img.name)))?;
        let mut manifest_desc = target.clone();
        if is_index(&target.media_type) {
            let idx = parse_json("index", &self.read_metadata_blob(&target.digest).await?)?;
            manifest_desc = pick_platform(&idx)?.1;
        }
        let manifest = parse_json(
            "manifest",
            &self.read_metadata_blob(&manifest_desc.digest).await?,
        )?;
        let config_digest = descriptor(&manifest["config"])?.digest;
        let config = parse_json("config", &self.read_metadata_blob(&config_digest).await?)?;
        let layers: Vec<Descriptor> = manifest["layers"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(descriptor)
            .collect::<Result<_>>()?;
        let diff_ids: Vec<String> = crate::util::json_strings(&config["rootfs"]["diff_ids"]);
        Ok(ResolvedImage {
            name: img.name.clone(),
            target,
            manifest_digest: manifest_desc.digest,
            config_digest,
            config,
            layers,
            chain_ids: chain_ids(&diff_ids),
            record_created: crate::util::from_proto_ts(img.created_at.as_ref()),
        })
    }

    /// All images in the namespace, loaded (unloadable ones are skipped).
    pub async fn all(&self) -> Result<Vec<ResolvedImage>> {
        let list = self
            .ctrd
            .images()
            .list(self.ctrd.req(imgs::ListImagesRequest { filters: vec![] }))
            .await
            .map_err(|s| EngineError::grpc("list images", s))?
            .into_inner()
            .images;
        let mut out = Vec::new();
        for img in list {
            let name = img.name.clone();
            match self.load(img).await {
                Ok(r) => out.push(r),
                Err(e) => debug!(image = %name, "skipping image: {e}"),
            }
        }
        Ok(out)
    }

    /// Finds an image by reference, full ID or ID prefix.
    pub async fn resolve(&self, name: &str) -> Result<ResolvedImage> {
        let not_found = || EngineError::NotFound(format!("No such image: {name}"));
        if let Ok(r) = Reference::parse(name) {
            if let Some(img) = self.image_record(&r.full()).await? {
                return self.load(img).await;
            }
        }
        let hexpart = name.strip_prefix("sha256:").unwrap_or(name);
        if !hexpart.is_empty()
            && hexpart.len() <= 64
            && hexpart.bytes().all(|b| b.is_ascii_hexdigit())
        {
            let all = self.all().await?;
            let mut found: Vec<ResolvedImage> = all
                .into_iter()
                .filter(|i| {
                    i.config_digest
                        .trim_start_matches("sha256:")
                        .starts_with(hexpart)
                })
                .collect();
            found.dedup_by(|a, b| a.config_digest == b.config_digest);
            if let Some(i) = found.into_iter().next() {
                return Ok(i);
            }
        }
        Err(not_found())
    }

    /// Disk usage of an image's unpacked layers.
    pub async fn size(&self, img: &ResolvedImage) -> i64 {
        let mut total = 0;
        for c in &img.chain_ids {
            total += self.snapshot_usage(c).await.unwrap_or(0);
        }
        if total == 0 {
            total = img.layers.iter().map(|l| l.size).sum();
        }
        total
    }

    /// GET /images/json.
    pub async fn list_json(&self) -> Result<Value> {
        let all = self.all().await?;
        let mut by_id: Vec<(String, Vec<ResolvedImage>)> = Vec::new();
        for i in all {
            match by_id.iter_mut().find(|(id, _)| *id == i.config_digest) {
                Some((_, v)) => v.push(i),
                None => by_id.push((i.config_digest.clone(), vec![i])),
            }
        }
        let mut out = Vec::new();
        for (id, imgs) in by_id {
            let first = &imgs[0];
            let size = self.size(first).await;
            let tags: Vec<String> = imgs
                .iter()
                .filter(|i| !i.name.contains('@'))
                .map(|i| familiar(&i.name))
                .collect();
            let digests = repo_digests(imgs.iter());
            out.push(json!({
                "Containers": -1,
                "Created": created_unix(first),
                "Id": id,
                "Labels": first.config["config"]["Labels"].clone(),
                "ParentId": "",
                "RepoDigests": digests,
                "RepoTags": tags,
                "SharedSize": -1,
                "Size": size,
                "VirtualSize": size,
            }));
        }
        Ok(Value::Array(out))
    }

    /// POST /images/{name}/tag: another containerd image record with the
    /// same target.
    pub async fn tag(&self, source: &str, repo: &str, tag: &str) -> Result<()> {
        let img = self.resolve(source).await?;
        if repo.is_empty() {
            return Err(EngineError::BadRequest(
                "repository name must have at least one component".into(),
            ));
        }
        let name = record_name(
            repo,
            tag,
            "refusing to create a tag with a digest reference",
        )?;
        let record = Image {
            name: name.clone(),
            target: Some(img.target.clone()),
            ..Default::default()
        };
        put_record(&self.ctrd, record).await?;
        info!(source, target = %name, "tagged image");
        Ok(())
    }

    async fn delete_record(&self, name: &str, sync: bool) -> Result<()> {
        match self
            .ctrd
            .images()
            .delete(self.ctrd.req(imgs::DeleteImageRequest {
                name: name.to_string(),
                sync,
                ..Default::default()
            }))
            .await
        {
            Ok(_) => Ok(()),
            Err(s) if s.code() == tonic::Code::NotFound => Ok(()),
            Err(s) => Err(EngineError::grpc("delete image", s)),
        }
    }

    /// DELETE /images/{name}. `users` are the containers created from the
    /// image (ID, running). Removing one of several references untags it;
    /// removing the last one (or the image by ID) deletes the image, which
    /// any container using it prevents unless `force` (running ones even
    /// then).
    pub async fn remove(
        &self,
        name: &str,
        img: &ResolvedImage,
        force: bool,
        users: &[(String, bool)],
    ) -> Result<Value> {
        let short_id = short(&img.config_digest);
        let all = self.all().await?;
        let mut same: Vec<String> = all
            .iter()
            .filter(|i| i.config_digest == img.config_digest)
            .map(|i| i.name.clone())
            .collect();
        same.sort();
        same.dedup();
        let by_ref = Reference::parse(name)
            .ok()
            .map(|r| r.full())
            .filter(|f| same.contains(f));
        let mut out = Vec::new();
        if let Some(r) = &by_ref {
            if same.len() > 1 {
                self.delete_record(r, false).await?;
                out.push(json!({"Untagged": familiar(r)}));
                return Ok(Value::Array(out));
            }
        } else if same.len() > 1 && !force {
            return Err(EngineError::Conflict(format!(
                "conflict: unable to delete {short_id} (must be forced) - image is referenced in multiple repositories"
            )));
        }
        if let Some((cid, _)) = users.iter().find(|(_, running)| *running) {
            return Err(EngineError::Conflict(format!(
                "conflict: unable to delete {short_id} (cannot be forced) - image is being used by running container {}",
                &cid[..12.min(cid.len())]
            )));
        }
        if let (Some((cid, _)), false) = (users.first(), force) {
            let cshort = &cid[..12.min(cid.len())];
            return Err(EngineError::Conflict(match &by_ref {
                Some(r) => format!(
                    "conflict: unable to remove repository reference \"{}\" (must force) - container {cshort} is using its referenced image {short_id}",
                    familiar(r)
                ),
                None => format!(
                    "conflict: unable to delete {short_id} (must be forced) - image is being used by stopped container {cshort}"
                ),
            }));
        }
        let n = same.len();
        for (i, r) in same.iter().enumerate() {
            // The last delete waits for containerd's garbage collection.
            self.delete_record(r, i + 1 == n).await?;
            if !is_dangling_name(r) {
                out.push(json!({"Untagged": familiar(r)}));
            }
        }
        out.push(json!({"Deleted": img.config_digest}));
        info!(image = %img.config_digest, "deleted image");
        Ok(Value::Array(out))
    }

    /// GET /images/{name}/history: newest first.
    pub async fn history(&self, name: &str) -> Result<Value> {
        let img = self.resolve(name).await?;
        let all = self.all().await.unwrap_or_default();
        let tags: Vec<String> = all
            .iter()
            .filter(|i| i.config_digest == img.config_digest && !i.name.contains('@'))
            .map(|i| familiar(&i.name))
            .collect();
        let hist = img.config["history"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let mut layer = 0usize;
        let mut rows = Vec::new();
        for h in &hist {
            let empty = h["empty_layer"].as_bool().unwrap_or(false);
            let size = if empty {
                0
            } else {
                let i = layer;
                layer += 1;
                self.layer_size(&img, i).await
            };
            rows.push(json!({
                "Id": "<missing>",
                "Created": h["created"]
                    .as_str()
                    .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
                    .map(|t| t.timestamp())
                    .unwrap_or(0),
                "CreatedBy": h["created_by"].as_str().unwrap_or(""),
                "Tags": null,
                "Size": size,
                "Comment": h["comment"].as_str().unwrap_or(""),
            }));
        }
        if rows.is_empty() {
            // No history in the config: one row per layer.
            for i in 0..img.chain_ids.len() {
                rows.push(json!({
                    "Id": "<missing>", "Created": created_unix(&img), "CreatedBy": "",
                    "Tags": null, "Size": self.layer_size(&img, i).await, "Comment": "",
                }));
            }
        }
        rows.reverse();
        if let Some(top) = rows.first_mut() {
            top["Id"] = json!(img.config_digest);
            top["Tags"] = json!(tags);
        }
        Ok(Value::Array(rows))
    }

    /// The disk usage of one snapshot (None: it cannot be measured).
    async fn snapshot_usage(&self, key: &str) -> Option<i64> {
        self.ctrd
            .snapshots()
            .usage(self.ctrd.req(snaps::UsageRequest {
                snapshotter: self.snapshotter.clone(),
                key: key.to_string(),
            }))
            .await
            .ok()
            .map(|u| u.into_inner().size)
    }

    /// The unpacked size of layer `i` (its own snapshot), else its blob size.
    async fn layer_size(&self, img: &ResolvedImage, i: usize) -> i64 {
        if let Some(c) = img.chain_ids.get(i) {
            if let Some(size) = self.snapshot_usage(c).await {
                return size;
            }
        }
        img.layers.get(i).map(|l| l.size).unwrap_or(0)
    }

    /// GET /images/{name}/json.
    pub async fn inspect_json(&self, name: &str) -> Result<Value> {
        let img = self.resolve(name).await?;
        let size = self.size(&img).await;
        let all = self.all().await.unwrap_or_default();
        let same: Vec<&ResolvedImage> = all
            .iter()
            .filter(|i| i.config_digest == img.config_digest)
            .collect();
        let tags: Vec<String> = same
            .iter()
            .filter(|i| !is_dangling_name(&i.name))
            .map(|i| familiar(&i.name))
            .collect();
        let digests = repo_digests(same.iter().copied());
        let c = &img.config;
        Ok(json!({
            "Id": img.config_digest,
            "RepoTags": tags,
            "RepoDigests": digests,
            "Parent": "",
            "Comment": c["comment"].as_str().unwrap_or(""),
            "Created": c["created"].as_str().unwrap_or(crate::util::ZERO_TIME),
            "DockerVersion": "",
            "Author": c["author"].as_str().unwrap_or(""),
            "Config": c["config"].clone(),
            "Architecture": c["architecture"].clone(),
            "Os": c["os"].clone(),
            "Size": size,
            "GraphDriver": {"Name": self.snapshotter, "Data": null},
            "RootFS": {"Type": "layers", "Layers": c["rootfs"]["diff_ids"].clone()},
            "Metadata": {"LastTagTime": crate::util::rfc3339(img.record_created)},
        }))
    }
}

/// The full name of a new image record `repo[:tag]`; a digest reference is
/// refused with `on_digest`.
pub(crate) fn record_name(repo: &str, tag: &str, on_digest: &str) -> Result<String> {
    let full = if tag.is_empty() {
        repo.to_string()
    } else {
        format!("{repo}:{tag}")
    };
    let r = Reference::parse(&full)?;
    if r.digest.is_some() {
        return Err(EngineError::BadRequest(on_digest.into()));
    }
    Ok(r.full())
}

/// `RepoDigests`: `name@manifest-digest` of each (non-dangling) record of one
/// image.
fn repo_digests<'i>(records: impl Iterator<Item = &'i ResolvedImage>) -> Vec<String> {
    records
        .filter(|i| !is_dangling_name(&i.name))
        .filter_map(|i| {
            Reference::parse(&i.name)
                .ok()
                .map(|r| format!("{}@{}", familiar(&r.name()), i.target.digest))
        })
        .collect()
}

/// The image's creation time (from its config) as Unix seconds.
pub fn created_unix(i: &ResolvedImage) -> i64 {
    i.config["created"]
        .as_str()
        .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
        .map(|t| t.timestamp())
        .unwrap_or_else(|| i.record_created.timestamp())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chains() {
        let d = vec!["sha256:a".to_string(), "sha256:b".to_string()];
        let c = chain_ids(&d);
        assert_eq!(c[0], "sha256:a");
        assert_eq!(
            c[1],
            format!(
                "sha256:{}",
                hex::encode(Sha256::digest("sha256:a sha256:b"))
            )
        );
        assert_eq!(human_size(1_234_567), "1.235MB");
        assert_eq!(human_size(999), "999B");
    }
}
