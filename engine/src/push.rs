//! `docker push` (`POST /images/{name}/push`) and `docker login`
//! (`POST /auth`) over the shared `orca-registry` client.
//!
//! Push sends the image's platform manifest (the one orcad runs), its config
//! and layers, read from containerd's content store (`Content.Read`,
//! streamed). Per layer: present at the registry → "Layer already exists";
//! present in another repository of the same registry that a local image
//! came from → cross-repository mount; else an upload.

use std::collections::BTreeSet;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use orca_proto::content;
use orca_registry as reg;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::error::{EngineError, Result};
use crate::images::{emit, progress_bar, short, ResolvedImage};
use crate::reference::{familiar, registry_domain, Reference};
use crate::Engine;

/// Layers uploaded at once (dockerd's default `max-concurrent-uploads`).
const MAX_CONCURRENT_UPLOADS: usize = 5;

/// What a push needs, found before the progress stream starts (so an
/// unknown image is a real 404).
struct PushJob {
    reference: Reference,
    tag: String,
    image: ResolvedImage,
    manifest: Bytes,
    media_type: String,
    /// Repositories of the same registry holding each layer (for mounts).
    mount_sources: Vec<(String, String)>,
}

/// Starts a push; returns Docker's JSON progress stream.
pub async fn push(
    engine: Arc<Engine>,
    name: &str,
    tag: &str,
    creds: reg::Credentials,
) -> Result<mpsc::Receiver<Bytes>> {
    let mut r = Reference::parse_no_default(name)?;
    if r.digest.is_some() {
        return Err(EngineError::BadRequest(
            "cannot push a digest reference".into(),
        ));
    }
    if !tag.is_empty() {
        // Validate through the parser (same rules as a reference's tag).
        let t = Reference::parse(&format!("{}:{tag}", r.name()))?;
        r.tag = t.tag;
    }
    let tags: Vec<String> = match &r.tag {
        Some(t) => vec![t.clone()],
        None => {
            // All local tags of the repository, like `docker push --all-tags`.
            let mut v: Vec<String> = engine
                .images
                .all()
                .await?
                .into_iter()
                .filter_map(|i| {
                    let ir = Reference::parse(&i.name).ok()?;
                    (ir.name() == r.name()).then_some(ir.tag).flatten()
                })
                .collect();
            v.sort();
            v.dedup();
            v
        }
    };
    if tags.is_empty() {
        return Err(EngineError::NotFound(format!(
            "An image does not exist locally with the tag: {}",
            familiar(&r.name())
        )));
    }
    let mut jobs = Vec::new();
    for t in &tags {
        let mut rt = r.clone();
        rt.tag = Some(t.clone());
        jobs.push(prepare(&engine, rt, t).await?);
    }
    let client = engine.images.registry().clone();
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        emit(
            &tx,
            json!({"status": format!("The push refers to repository [{}]", familiar(&r.name()))}),
        )
        .await;
        for job in jobs {
            let name = familiar(&job.reference.full());
            match run(&engine, &client, &creds, &job, &tx).await {
                Ok(()) => engine.events.image("push", &name, &name),
                Err(msg) => {
                    warn!(image = %job.reference.full(), "push failed: {msg}");
                    emit(&tx, json!({"errorDetail": {"message": msg}, "error": msg})).await;
                    return;
                }
            }
        }
    });
    Ok(rx)
}

async fn prepare(engine: &Arc<Engine>, r: Reference, tag: &str) -> Result<PushJob> {
    let not_found = || {
        EngineError::NotFound(format!(
            "An image does not exist locally with the tag: {}",
            familiar(&r.name())
        ))
    };
    let record = engine
        .images
        .image_record(&r.full())
        .await?
        .ok_or_else(not_found)?;
    let image = engine.images.load(record).await?;
    let manifest = Bytes::from(engine.ctrd.read_blob(&image.manifest_digest).await?);
    let v: Value = serde_json::from_slice(&manifest).map_err(|e| {
        EngineError::internal(format!("manifest {}: bad JSON: {e}", image.manifest_digest))
    })?;
    let media_type = match v["mediaType"].as_str() {
        Some(m) if !m.is_empty() => m.to_string(),
        _ if v["config"]["mediaType"] == reg::MT_DOCKER_CONFIG => reg::MT_DOCKER_MANIFEST.into(),
        _ => reg::MT_OCI_MANIFEST.into(),
    };
    // Other local repositories of the same registry with these layers.
    let mut mount_sources = Vec::new();
    let wanted: BTreeSet<&str> = image.layers.iter().map(|l| l.digest.as_str()).collect();
    for other in engine.images.all().await.unwrap_or_default() {
        let Ok(or) = Reference::parse(&other.name) else {
            continue;
        };
        if or.domain != r.domain || or.path == r.path {
            continue;
        }
        for l in &other.layers {
            if wanted.contains(l.digest.as_str())
                && !mount_sources
                    .iter()
                    .any(|(d, p)| d == &l.digest && p == &or.path)
            {
                mount_sources.push((l.digest.clone(), or.path.clone()));
            }
        }
    }
    Ok(PushJob {
        reference: r,
        tag: tag.to_string(),
        image,
        manifest,
        media_type,
        mount_sources,
    })
}

/// A push error in the words `docker push` prints.
fn push_message(e: reg::Error) -> String {
    e.to_string()
}

async fn run(
    engine: &Arc<Engine>,
    client: &reg::Client,
    creds: &reg::Credentials,
    job: &PushJob,
    tx: &mpsc::Sender<Bytes>,
) -> std::result::Result<(), String> {
    // Through the daemon's Transfer service when it has one (orca-supervisor).
    if crate::transfer::available(&engine.ctrd).await {
        let name = job.reference.full();
        return crate::transfer::docker_push(&engine.ctrd, &name, &job.tag, creds, tx).await;
    }
    let repo = client.repository(&job.reference, creds.clone());
    let layers = &job.image.layers;
    // Docker lists layers top first.
    for l in layers.iter().rev() {
        emit(
            tx,
            json!({"status": "Preparing", "progressDetail": {}, "id": short(&l.digest)}),
        )
        .await;
    }
    // Layers in parallel, at most 5 at a time (dockerd's
    // max-concurrent-uploads); the first error stops the push.
    let mut uploads = Vec::new();
    for l in layers.iter().rev() {
        uploads.push(push_layer(engine, &repo, job, l, tx));
    }
    futures_util::stream::iter(uploads)
        .buffer_unordered(MAX_CONCURRENT_UPLOADS)
        .try_collect::<Vec<()>>()
        .await?;
    // The config, then the manifest under the tag.
    let config = reg::Descriptor::new(&job.media_type_of_config(), &job.image.config_digest, 0);
    if repo
        .blob_exists(&config.digest)
        .await
        .map_err(push_message)?
        .is_none()
    {
        let bytes = engine
            .ctrd
            .read_blob(&config.digest)
            .await
            .map_err(|e| e.to_string())?;
        let mut config = config;
        config.size = bytes.len() as u64;
        repo.push_blob(&config, Bytes::from(bytes))
            .await
            .map_err(push_message)?;
    }
    let digest = repo
        .push_manifest(&job.tag, &job.media_type, job.manifest.clone())
        .await
        .map_err(push_message)?;
    let size = job.manifest.len();
    emit(
        tx,
        json!({"status": format!("{}: digest: {digest} size: {size}", job.tag)}),
    )
    .await;
    emit(
        tx,
        json!({"progressDetail": {}, "aux": {"Tag": job.tag, "Digest": digest, "Size": size}}),
    )
    .await;
    info!(image = %job.reference.full(), %digest, "pushed");
    Ok(())
}

/// Pushes one layer: already there, mounted from another repository, or
/// uploaded.
async fn push_layer(
    engine: &Arc<Engine>,
    repo: &reg::Repository,
    job: &PushJob,
    l: &orca_proto::types::Descriptor,
    tx: &mpsc::Sender<Bytes>,
) -> std::result::Result<(), String> {
    let desc = reg::Descriptor::new(&l.media_type, &l.digest, l.size.max(0) as u64);
    let id = short(&l.digest);
    if repo
        .blob_exists(&l.digest)
        .await
        .map_err(push_message)?
        .is_some()
    {
        emit(
            tx,
            json!({"status": "Layer already exists", "progressDetail": {}, "id": id}),
        )
        .await;
        return Ok(());
    }
    let mut mounted = None;
    for (_, from) in job
        .mount_sources
        .iter()
        .filter(|(d, _)| d == &l.digest)
        .take(3)
    {
        match repo.mount_blob(&desc, from).await {
            Ok(true) => {
                mounted = Some(from.clone());
                break;
            }
            Ok(false) => {}
            Err(e) => warn!(digest = %l.digest, from, "cross-repository mount failed: {e}"),
        }
    }
    if let Some(from) = mounted {
        emit(
            tx,
            json!({"status": format!("Mounted from {from}"), "progressDetail": {}, "id": id}),
        )
        .await;
        return Ok(());
    }
    upload(engine, repo, &desc, Some(tx)).await?;
    emit(
        tx,
        json!({"status": "Pushed", "progressDetail": {}, "id": id}),
    )
    .await;
    Ok(())
}

impl PushJob {
    fn media_type_of_config(&self) -> String {
        serde_json::from_slice::<Value>(&self.manifest)
            .ok()
            .and_then(|v| v["config"]["mediaType"].as_str().map(String::from))
            .unwrap_or_else(|| reg::MT_OCI_CONFIG.into())
    }
}

/// Streams a blob from containerd's content store to the registry.
async fn upload(
    engine: &Arc<Engine>,
    repo: &reg::Repository,
    desc: &reg::Descriptor,
    progress: Option<&mpsc::Sender<Bytes>>,
) -> std::result::Result<(), String> {
    let stream = engine
        .ctrd
        .content()
        .read(engine.ctrd.req(content::ReadContentRequest {
            digest: desc.digest.clone(),
            offset: 0,
            size: 0,
        }))
        .await
        .map_err(|s| format!("read {}: {}", desc.digest, s.message()))?
        .into_inner();
    let total = desc.size as i64;
    let id = short(&desc.digest);
    let tx = progress.cloned();
    let mut sent: i64 = 0;
    let mut last: i64 = -1;
    let digest = desc.digest.clone();
    let source = stream.map(move |m| match m {
        Ok(chunk) => {
            sent += chunk.data.len() as i64;
            if let Some(tx) = &tx {
                if sent - last >= 512 << 10 || sent == total {
                    last = sent;
                    let v = json!({"status": "Pushing", "progressDetail": {"current": sent, "total": total}, "progress": progress_bar(sent, total), "id": id});
                    // Progress only: dropped when the client reads slowly.
                    let _ = tx.try_send(Bytes::from(v.to_string() + "\r\n"));
                }
            }
            Ok(Bytes::from(chunk.data))
        }
        Err(s) => Err(reg::Error::Source(format!(
            "reading {digest} from containerd: {}",
            s.message()
        ))),
    });
    repo.push_blob_stream(desc, Box::pin(source))
        .await
        .map_err(push_message)
}

/// `POST /auth`: checks credentials against the registry. `Ok(Ok(body))`
/// on success, `Ok(Err(message))` for refused credentials (a 401).
pub async fn login(
    engine: &Arc<Engine>,
    body: &Value,
) -> Result<std::result::Result<Value, String>> {
    let s = |k: &str| body[k].as_str().unwrap_or("").to_string();
    let server = s("serveraddress");
    let domain = registry_domain(&server);
    let identity = s("identitytoken");
    let creds = if !identity.is_empty() {
        reg::Credentials::IdentityToken(identity)
    } else {
        let (username, password) = (s("username"), s("password"));
        if username.is_empty() && password.is_empty() {
            return Err(EngineError::BadRequest(
                "Username and password are required".into(),
            ));
        }
        reg::Credentials::Basic { username, password }
    };
    match engine.images.registry().ping(&domain, &creds).await {
        Ok(()) => {
            info!(registry = %domain, "login succeeded");
            Ok(Ok(
                json!({"Status": "Login Succeeded", "IdentityToken": ""}),
            ))
        }
        Err(e) if e.is_unauthorized() => {
            info!(registry = %domain, "login refused: {e}");
            Ok(Err(e.to_string()))
        }
        Err(e) => Err(EngineError::Internal(e.to_string())),
    }
}
