//! Pull and push through containerd's Transfer service (containerd 1.7+,
//! orca-supervisor): the daemon fetches and unpacks the layers itself and
//! reports progress on a Streaming stream, which is turned into Docker's
//! JSON progress messages here. Daemons without the service (Debian's
//! containerd 1.6) are detected through introspection (or an Unimplemented
//! answer) and orcad keeps its client-side pull for them.

use bytes::Bytes;
use orca_proto::introspection::introspection_client::IntrospectionClient;
use orca_proto::introspection::PluginsRequest;
use orca_proto::prost::Message;
use orca_proto::streaming::streaming_client::StreamingClient;
use orca_proto::streaming::StreamInit;
use orca_proto::transfer::transfer_client::TransferClient;
use orca_proto::transfer::{TransferOptions, TransferRequest};
use orca_proto::type_urls;
use orca_proto::types::transfer as tt;
use orca_proto::types::Platform;
use prost_types::Any;
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tracing::{debug, info};

use crate::containerd::Containerd;
use crate::error::{EngineError, Result};

/// Registry credentials handed to the daemon when it asks (auth stream).
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    pub username: String,
    /// Password, or an identity token when `username` is empty.
    pub secret: String,
}

/// Whether the daemon serves the Transfer service (an
/// `io.containerd.grpc.v1` plugin with id `transfer`).
pub async fn available(ctrd: &Containerd) -> bool {
    let mut c = IntrospectionClient::new(ctrd.channel());
    match c
        .plugins(ctrd.req(PluginsRequest {
            filters: vec!["type==io.containerd.grpc.v1,id==transfer".into()],
        }))
        .await
    {
        Ok(r) => !r.into_inner().plugins.is_empty(),
        Err(s) => {
            debug!("introspection: {s}");
            false
        }
    }
}

fn any<M: Message>(type_url: &str, m: &M) -> Any {
    Any {
        type_url: type_url.into(),
        value: m.encode_to_vec(),
    }
}

/// A client stream registered with the daemon's Streaming service.
struct ClientStream {
    id: String,
    /// Keeps our sending side open (dropping it half-closes the stream).
    tx: mpsc::Sender<Any>,
    rx: tonic::Streaming<Any>,
}

async fn open_stream(ctrd: &Containerd, channel: Channel) -> Result<ClientStream> {
    let id = format!("orcad-{}", crate::util::random_hex(12));
    let (tx, rx) = mpsc::channel::<Any>(4);
    tx.send(any(type_urls::STREAM_INIT, &StreamInit { id: id.clone() }))
        .await
        .map_err(|_| EngineError::internal("stream closed"))?;
    let mut rx = StreamingClient::new(channel)
        .stream(ctrd.req(ReceiverStream::new(rx)))
        .await
        .map_err(|s| EngineError::grpc("open a transfer stream", s))?
        .into_inner();
    // The daemon acknowledges the registration before anything else.
    match rx.message().await {
        Ok(Some(_ack)) => {}
        Ok(None) => return Err(EngineError::internal("transfer stream closed at once")),
        Err(s) => return Err(EngineError::grpc("open a transfer stream", s)),
    }
    Ok(ClientStream { id, tx, rx })
}

/// Answers the daemon's AuthRequests on `stream` with `creds`.
fn serve_auth(mut stream: ClientStream, creds: Credentials) {
    tokio::spawn(async move {
        while let Ok(Some(m)) = stream.rx.message().await {
            if type_urls::name(&m.type_url) != type_urls::AUTH_REQUEST {
                continue;
            }
            let req = tt::AuthRequest::decode(m.value.as_slice()).unwrap_or_default();
            debug!(host = %req.host, "registry credentials asked by the daemon");
            let resp = if creds.username.is_empty() {
                tt::AuthResponse {
                    auth_type: tt::AuthType::Refresh as i32,
                    secret: creds.secret.clone(),
                    ..Default::default()
                }
            } else {
                tt::AuthResponse {
                    auth_type: tt::AuthType::Credentials as i32,
                    username: creds.username.clone(),
                    secret: creds.secret.clone(),
                    expire_at: None,
                }
            };
            if stream
                .tx
                .send(any(type_urls::AUTH_RESPONSE, &resp))
                .await
                .is_err()
            {
                break;
            }
        }
    });
}

fn short(digest: &str) -> String {
    digest
        .trim_start_matches("sha256:")
        .chars()
        .take(12)
        .collect()
}

fn progress_bar(current: i64, total: i64) -> String {
    let width = 50i64;
    let filled = if total > 0 {
        (current * width / total).clamp(0, width)
    } else {
        0
    };
    let mut bar = "=".repeat(filled as usize);
    if filled < width {
        bar.push('>');
        bar.push_str(&" ".repeat((width - filled - 1) as usize));
    }
    format!(
        "[{bar}] {}/{}",
        crate::images::human_size(current),
        crate::images::human_size(total)
    )
}

/// Docker's JSON pull message for one Progress event (layers only).
pub fn pull_message(p: &tt::Progress) -> Option<Value> {
    let desc = p.desc.as_ref()?;
    if !(desc.media_type.contains("layer") || desc.media_type.contains("rootfs")) {
        return None;
    }
    let id = short(&desc.digest);
    let detail = |status: &str| json!({"status": status, "progressDetail": {}, "id": id});
    Some(match p.event.as_str() {
        "waiting" => detail("Pulling fs layer"),
        "downloading" => json!({
            "status": "Downloading",
            "progressDetail": {"current": p.progress, "total": p.total},
            "progress": progress_bar(p.progress, p.total),
            "id": id,
        }),
        "complete" => detail("Download complete"),
        "already exists" => detail("Already exists"),
        "extracting" => json!({
            "status": "Extracting",
            "progressDetail": {"current": desc.size, "total": desc.size},
            "progress": progress_bar(desc.size, desc.size),
            "id": id,
        }),
        "extracted" => detail("Pull complete"),
        _ => return None,
    })
}

async fn emit(tx: &mpsc::Sender<Bytes>, v: Value) {
    let mut s = v.to_string();
    s.push_str("\r\n");
    let _ = tx.send(Bytes::from(s)).await;
}

/// A pull to run with [`pull_start`].
pub struct PullRequest {
    /// The normalized reference (`docker.io/library/busybox:latest`): the
    /// image record's name too.
    pub reference: String,
    /// Repository path and tag/digest, for the "Pulling from" line.
    pub path: String,
    pub object: String,
    /// Docker's short name for the status line (`busybox:latest`).
    pub familiar: String,
    pub snapshotter: String,
    pub platform: Platform,
    pub credentials: Option<Credentials>,
}

/// Starts a pull through Transfer and returns once the daemon has resolved
/// the reference (so an unknown tag or a bad reference is an error here,
/// before any progress is streamed); the rest of the pull streams Docker's
/// JSON progress into `tx` and ends with the task's result.
/// `Err(None)`-like fallback: [`PullStart::Unsupported`] when the daemon
/// does not serve Transfer.
pub async fn pull_start(
    ctrd: &Containerd,
    req: PullRequest,
    tx: mpsc::Sender<Bytes>,
) -> Result<PullStart> {
    let channel = ctrd.channel();
    let existed = image_target(ctrd, &req.reference).await?;
    let progress = match open_stream(ctrd, channel.clone()).await {
        Ok(s) => s,
        Err(EngineError::NotImplemented(_)) => return Ok(PullStart::Unsupported),
        Err(e) => return Err(e),
    };
    let auth_stream = match &req.credentials {
        Some(c) => {
            let s = open_stream(ctrd, channel.clone()).await?;
            let id = s.id.clone();
            serve_auth(s, c.clone());
            id
        }
        None => String::new(),
    };
    let source = tt::OciRegistry {
        reference: req.reference.clone(),
        resolver: Some(tt::RegistryResolver {
            auth_stream,
            ..Default::default()
        }),
    };
    let destination = tt::ImageStore {
        name: req.reference.clone(),
        platforms: vec![req.platform.clone()],
        unpacks: vec![tt::UnpackConfiguration {
            platform: Some(req.platform.clone()),
            snapshotter: req.snapshotter.clone(),
        }],
        ..Default::default()
    };
    let treq = ctrd.req(TransferRequest {
        source: Some(any(type_urls::OCI_REGISTRY, &source)),
        destination: Some(any(type_urls::IMAGE_STORE, &destination)),
        options: Some(TransferOptions {
            progress_stream: progress.id.clone(),
        }),
    });
    let (resolved_tx, resolved_rx) = oneshot::channel::<()>();
    let mut client = TransferClient::new(channel);
    let call = tokio::spawn(async move { client.transfer(treq).await });

    // Progress → Docker JSON, until the daemon closes the stream.
    let ClientStream {
        tx: keep_open,
        mut rx,
        ..
    } = progress;
    let (path, object) = (req.path.clone(), req.object.clone());
    let tx2 = tx.clone();
    let pump = tokio::spawn(async move {
        let _keep_open = keep_open;
        let mut resolved_tx = Some(resolved_tx);
        let mut top = String::new();
        while let Ok(Some(m)) = rx.message().await {
            if type_urls::name(&m.type_url) != type_urls::PROGRESS {
                continue;
            }
            let Ok(p) = tt::Progress::decode(m.value.as_slice()) else {
                continue;
            };
            if p.event == "resolved" {
                top = p
                    .desc
                    .as_ref()
                    .map(|d| d.digest.clone())
                    .unwrap_or_default();
                emit(
                    &tx2,
                    json!({"status": format!("Pulling from {path}"), "id": object}),
                )
                .await;
                if let Some(t) = resolved_tx.take() {
                    let _ = t.send(());
                }
                continue;
            }
            if let Some(v) = pull_message(&p) {
                emit(&tx2, v).await;
            }
        }
        top
    });

    // Resolved, or the transfer ended first (error, or a daemon that does
    // not report progress).
    let mut call = call;
    let early = tokio::select! {
        r = resolved_rx => { let _ = r; None }
        r = &mut call => Some(r),
    };
    if let Some(r) = early {
        let r = r.map_err(|e| EngineError::internal(format!("transfer task: {e}")))?;
        if let Err(s) = r {
            pump.abort();
            if s.code() == tonic::Code::Unimplemented {
                debug!("the daemon does not implement Transfer: {}", s.message());
                return Ok(PullStart::Unsupported);
            }
            return Err(EngineError::grpc("pull", s));
        }
        let top = pump.await.unwrap_or_default();
        return Ok(PullStart::Started(tokio::spawn(finish(
            ctrd.clone(),
            req,
            tx,
            existed,
            Ok(()),
            top,
        ))));
    }
    let ctrd = ctrd.clone();
    Ok(PullStart::Started(tokio::spawn(async move {
        let res = match call.await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(s)) => Err(EngineError::grpc("pull", s)),
            Err(e) => Err(EngineError::internal(format!("transfer task: {e}"))),
        };
        let top = pump.await.unwrap_or_default();
        finish(ctrd, req, tx, existed, res, top).await
    })))
}

async fn finish(
    ctrd: Containerd,
    req: PullRequest,
    tx: mpsc::Sender<Bytes>,
    existed: Option<String>,
    res: Result<()>,
    top: String,
) -> Result<()> {
    res?;
    let now = image_target(&ctrd, &req.reference).await?;
    let digest = now.clone().unwrap_or(top);
    emit(&tx, json!({"status": format!("Digest: {digest}")})).await;
    let status = if existed.is_some() && existed == now {
        format!("Status: Image is up to date for {}", req.familiar)
    } else {
        format!("Status: Downloaded newer image for {}", req.familiar)
    };
    emit(&tx, json!({"status": status})).await;
    info!(image = %req.reference, %digest, "pulled through the daemon's transfer service");
    Ok(())
}

/// How [`pull_start`] went.
pub enum PullStart {
    /// The daemon has no Transfer service: pull client-side.
    Unsupported,
    /// Resolved; the task streams the rest and returns the pull's result.
    Started(tokio::task::JoinHandle<Result<()>>),
}

async fn image_target(ctrd: &Containerd, name: &str) -> Result<Option<String>> {
    match ctrd
        .images()
        .get(ctrd.req(orca_proto::images::GetImageRequest {
            name: name.to_string(),
        }))
        .await
    {
        Ok(r) => Ok(r
            .into_inner()
            .image
            .and_then(|i| i.target)
            .map(|t| t.digest)),
        Err(s) if s.code() == tonic::Code::NotFound => Ok(None),
        Err(s) => Err(EngineError::grpc("get image", s)),
    }
}

/// Pushes image `name` (a containerd image record) to `reference` through
/// Transfer; Docker's push progress goes to `tx`. Returns the pushed
/// manifest's digest and size as reported by the daemon. An image pulled
/// for one platform is pushed with `platform` set (its manifest, not the
/// index).
pub async fn push(
    ctrd: &Containerd,
    name: &str,
    reference: &str,
    platform: Option<Platform>,
    credentials: Option<Credentials>,
    tx: &mpsc::Sender<Bytes>,
) -> Result<(String, i64)> {
    let channel = ctrd.channel();
    let progress = open_stream(ctrd, channel.clone()).await?;
    let auth_stream = match credentials {
        Some(c) => {
            let s = open_stream(ctrd, channel.clone()).await?;
            let id = s.id.clone();
            serve_auth(s, c);
            id
        }
        None => String::new(),
    };
    let source = tt::ImageStore {
        name: name.to_string(),
        platforms: platform.into_iter().collect(),
        ..Default::default()
    };
    let destination = tt::OciRegistry {
        reference: reference.to_string(),
        resolver: Some(tt::RegistryResolver {
            auth_stream,
            ..Default::default()
        }),
    };
    let treq = ctrd.req(TransferRequest {
        source: Some(any(type_urls::IMAGE_STORE, &source)),
        destination: Some(any(type_urls::OCI_REGISTRY, &destination)),
        options: Some(TransferOptions {
            progress_stream: progress.id.clone(),
        }),
    });
    let ClientStream {
        tx: keep_open,
        mut rx,
        ..
    } = progress;
    let tx2 = tx.clone();
    let want = reference.to_string();
    let pump = tokio::spawn(async move {
        let _keep_open = keep_open;
        let mut digest = (String::new(), 0i64);
        let mut prepared = std::collections::HashSet::new();
        while let Ok(Some(m)) = rx.message().await {
            let Ok(p) = tt::Progress::decode(m.value.as_slice()) else {
                continue;
            };
            let Some(d) = p.desc.as_ref() else { continue };
            if p.event == "pushed" && p.name == want {
                digest = (d.digest.clone(), d.size);
            }
            if !(d.media_type.contains("layer") || d.media_type.contains("rootfs")) {
                continue;
            }
            let status = match p.event.as_str() {
                "pushing" => "Pushing",
                "pushed" => "Pushed",
                "exists" => "Layer already exists",
                "mounted" => "Mounted from another repository",
                _ => continue,
            };
            let id = short(&d.digest);
            if prepared.insert(id.clone()) {
                emit(
                    &tx2,
                    json!({"status": "Preparing", "progressDetail": {}, "id": id}),
                )
                .await;
            }
            emit(
                &tx2,
                json!({"status": status, "progressDetail": {}, "id": id}),
            )
            .await;
        }
        digest
    });
    let res = TransferClient::new(channel).transfer(treq).await;
    let digest = pump.await.unwrap_or_default();
    res.map_err(|s| EngineError::grpc("push", s))?;
    Ok(digest)
}

/// orcad's pull through the daemon's Transfer service: `Ok(None)` when the
/// daemon has none (pull client-side), else the stream of Docker's JSON
/// progress messages (ending with an error message if the pull fails after
/// the reference was resolved). `reference` is the normalized reference,
/// `path`/`object` its repository path and tag or digest.
pub async fn try_pull(
    engine: &std::sync::Arc<crate::Engine>,
    reference: &str,
    path: &str,
    object: &str,
    credentials: Option<Credentials>,
) -> Result<Option<mpsc::Receiver<Bytes>>> {
    if !available(&engine.ctrd).await {
        return Ok(None);
    }
    let (tx, rx) = mpsc::channel(64);
    let familiar = crate::reference::familiar(reference);
    let req = PullRequest {
        reference: reference.to_string(),
        path: path.to_string(),
        object: object.to_string(),
        familiar: familiar.clone(),
        snapshotter: engine.images.snapshotter().to_string(),
        platform: Platform {
            os: "linux".into(),
            architecture: crate::images::platform_arch().into(),
            ..Default::default()
        },
        credentials,
    };
    let task = match pull_start(&engine.ctrd, req, tx.clone()).await? {
        PullStart::Unsupported => return Ok(None),
        PullStart::Started(t) => t,
    };
    let events = engine.events.clone();
    tokio::spawn(async move {
        let res = match task.await {
            Ok(r) => r,
            Err(e) => Err(EngineError::internal(format!("pull task: {e}"))),
        };
        match res {
            Ok(()) => events.image("pull", &familiar, &familiar),
            Err(e) => {
                tracing::warn!("pull failed: {e}");
                let msg = e.to_string();
                emit(&tx, json!({"errorDetail": {"message": msg}, "error": msg})).await;
            }
        }
    });
    Ok(Some(rx))
}

/// The daemon-side counterpart of a Docker credential, if it has one
/// (a bare registry token has none: it is not passed on).
pub fn credentials_of(c: &orca_registry::Credentials) -> Option<Credentials> {
    match c {
        orca_registry::Credentials::Basic { username, password } => Some(Credentials {
            username: username.clone(),
            secret: password.clone(),
        }),
        orca_registry::Credentials::IdentityToken(t) => Some(Credentials {
            username: String::new(),
            secret: t.clone(),
        }),
        _ => None,
    }
}

/// `docker push` of local image `reference` (its name is the destination)
/// through the daemon's Transfer service, for this machine's platform:
/// Docker's push messages into `tx` (per layer Preparing, then Pushed,
/// Mounted from or Layer already exists; `TAG: digest: D size: N` and the
/// `aux` record). Errors are returned as the message docker prints.
pub async fn docker_push(
    ctrd: &Containerd,
    reference: &str,
    tag: &str,
    creds: &orca_registry::Credentials,
    tx: &mpsc::Sender<Bytes>,
) -> std::result::Result<(), String> {
    let platform = Platform {
        os: "linux".into(),
        architecture: crate::images::platform_arch().into(),
        ..Default::default()
    };
    let (ptx, mut prx) = mpsc::channel::<Bytes>(64);
    let out = tx.clone();
    let forward = tokio::spawn(async move {
        while let Some(b) = prx.recv().await {
            let _ = out.send(b).await;
        }
    });
    let res = push(
        ctrd,
        reference,
        reference,
        Some(platform),
        credentials_of(creds),
        &ptx,
    )
    .await;
    drop(ptx);
    let _ = forward.await;
    let (digest, size) = res.map_err(|e| e.to_string())?;
    emit(
        tx,
        json!({"status": format!("{tag}: digest: {digest} size: {size}")}),
    )
    .await;
    emit(
        tx,
        json!({"progressDetail": {}, "aux": {"Tag": tag, "Digest": digest, "Size": size}}),
    )
    .await;
    info!(image = %reference, %digest, "pushed through the daemon's transfer service");
    Ok(())
}
