//! containerd gRPC client: one tonic channel over containerd's unix socket;
//! every request carries the `containerd-namespace` metadata (and, where
//! given, a `containerd-lease`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use orca_proto::containers::containers_client::ContainersClient;
use orca_proto::content::content_client::ContentClient;
use orca_proto::content::{self, WriteAction, WriteContentRequest};
use orca_proto::diff::diff_client::DiffClient;
use orca_proto::images::images_client::ImagesClient;
use orca_proto::leases::leases_client::LeasesClient;
use orca_proto::snapshots::snapshots_client::SnapshotsClient;
use orca_proto::tasks::tasks_client::TasksClient;
use orca_proto::version::version_client::VersionClient;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::error::{EngineError, Result};

/// The metadata key naming the lease a request's resources are held by.
pub const LEASE_HEADER: &str = "containerd-lease";

/// A connected containerd client bound to one namespace.
#[derive(Clone)]
pub struct Containerd {
    channel: Channel,
    namespace: String,
    socket: PathBuf,
}

impl Containerd {
    /// Connects to containerd's gRPC socket.
    pub async fn connect(socket: &Path, namespace: &str) -> anyhow::Result<Containerd> {
        let path = socket.to_path_buf();
        let channel = Endpoint::try_from("http://[::]:50051")?
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let path = path.clone();
                async move {
                    let s = tokio::net::UnixStream::connect(path).await?;
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(s))
                }
            }))
            .await
            .map_err(|e| {
                anyhow::anyhow!("cannot connect to containerd at {}: {e}", socket.display())
            })?;
        Ok(Containerd {
            channel,
            namespace: namespace.to_string(),
            socket: socket.to_path_buf(),
        })
    }

    /// The gRPC channel (for services without an accessor here).
    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }

    /// The containerd socket path.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The containerd namespace used.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// Wraps a message in a request carrying the namespace.
    pub fn req<T>(&self, msg: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        if let Ok(v) = MetadataValue::try_from(self.namespace.as_str()) {
            r.metadata_mut().insert(orca_proto::NAMESPACE_HEADER, v);
        }
        r
    }

    /// Like [`Containerd::req`], also naming a lease.
    pub fn req_lease<T>(&self, msg: T, lease: Option<&str>) -> tonic::Request<T> {
        let mut r = self.req(msg);
        if let Some(l) = lease {
            if let Ok(v) = MetadataValue::try_from(l) {
                r.metadata_mut().insert(LEASE_HEADER, v);
            }
        }
        r
    }

    pub fn content(&self) -> ContentClient<Channel> {
        ContentClient::new(self.channel.clone())
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20)
    }
    pub fn images(&self) -> ImagesClient<Channel> {
        ImagesClient::new(self.channel.clone())
    }
    pub fn snapshots(&self) -> SnapshotsClient<Channel> {
        SnapshotsClient::new(self.channel.clone())
    }
    pub fn diff(&self) -> DiffClient<Channel> {
        DiffClient::new(self.channel.clone())
    }
    pub fn leases(&self) -> LeasesClient<Channel> {
        LeasesClient::new(self.channel.clone())
    }
    pub fn containers(&self) -> ContainersClient<Channel> {
        ContainersClient::new(self.channel.clone()).max_decoding_message_size(64 << 20)
    }
    pub fn tasks(&self) -> TasksClient<Channel> {
        TasksClient::new(self.channel.clone())
    }
    pub fn version(&self) -> VersionClient<Channel> {
        VersionClient::new(self.channel.clone())
    }

    /// `Tasks.Delete` of a container's task (its exit status is not needed).
    pub async fn delete_task(&self, id: &str) -> std::result::Result<(), tonic::Status> {
        self.tasks()
            .delete(self.req(orca_proto::tasks::DeleteTaskRequest {
                container_id: id.to_string(),
            }))
            .await
            .map(drop)
    }

    /// containerd's version and revision.
    pub async fn server_version(&self) -> Result<(String, String)> {
        let v = self
            .version()
            .version(tonic::Request::new(()))
            .await
            .map_err(|s| EngineError::grpc("containerd version", s))?
            .into_inner();
        Ok((v.version, v.revision))
    }

    /// Info of a blob, `None` if it is not in the content store.
    pub async fn content_info(&self, digest: &str) -> Result<Option<content::Info>> {
        match self
            .content()
            .info(self.req(content::InfoRequest {
                digest: digest.to_string(),
            }))
            .await
        {
            Ok(r) => Ok(r.into_inner().info),
            Err(s) if s.code() == tonic::Code::NotFound => Ok(None),
            Err(s) => Err(EngineError::grpc("content info", s)),
        }
    }

    /// Sets labels on an existing blob.
    pub async fn content_set_labels(
        &self,
        digest: &str,
        labels: HashMap<String, String>,
    ) -> Result<()> {
        if labels.is_empty() {
            return Ok(());
        }
        let paths = labels.keys().map(|k| format!("labels.{k}")).collect();
        self.content()
            .update(self.req(content::UpdateRequest {
                info: Some(content::Info {
                    digest: digest.to_string(),
                    labels,
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask { paths }),
            }))
            .await
            .map_err(|s| EngineError::grpc("content update", s))?;
        Ok(())
    }

    /// Reads a whole blob.
    pub async fn read_blob(&self, digest: &str) -> Result<Vec<u8>> {
        let mut stream = self
            .content()
            .read(self.req(content::ReadContentRequest {
                digest: digest.to_string(),
                offset: 0,
                size: 0,
            }))
            .await
            .map_err(|s| EngineError::grpc(&format!("read {digest}"), s))?
            .into_inner();
        let mut out = Vec::new();
        while let Some(chunk) = stream
            .message()
            .await
            .map_err(|s| EngineError::grpc(&format!("read {digest}"), s))?
        {
            out.extend_from_slice(&chunk.data);
        }
        Ok(out)
    }

    /// Opens a content writer for a blob of known digest and size.
    pub fn blob_writer(
        &self,
        expected: &str,
        total: i64,
        labels: HashMap<String, String>,
        lease: Option<&str>,
    ) -> BlobWriter {
        let (tx, rx) = mpsc::channel::<WriteContentRequest>(8);
        let reference = format!("orcad-{}-{}", expected, crate::util::random_hex(8));
        let req = self.req_lease(ReceiverStream::new(rx), lease);
        let mut client = self.content();
        let call = tokio::spawn(async move {
            let mut resp = client.write(req).await?.into_inner();
            let mut last = None;
            while let Some(m) = resp.message().await? {
                last = Some(m);
            }
            Ok::<_, tonic::Status>(last)
        });
        BlobWriter {
            tx,
            call,
            reference,
            expected: expected.to_string(),
            total,
            offset: 0,
            labels,
            first: true,
        }
    }
}

/// A streaming Content.Write session: [`BlobWriter::write`] chunks, then
/// [`BlobWriter::commit`] (the store checks size and digest).
pub struct BlobWriter {
    tx: mpsc::Sender<WriteContentRequest>,
    call: tokio::task::JoinHandle<
        std::result::Result<Option<content::WriteContentResponse>, tonic::Status>,
    >,
    reference: String,
    expected: String,
    total: i64,
    offset: i64,
    labels: HashMap<String, String>,
    first: bool,
}

impl BlobWriter {
    fn msg(&mut self, action: WriteAction, data: Vec<u8>) -> WriteContentRequest {
        let m = WriteContentRequest {
            action: action as i32,
            r#ref: self.reference.clone(),
            total: self.total,
            expected: self.expected.clone(),
            offset: self.offset,
            data,
            labels: if action == WriteAction::Commit {
                std::mem::take(&mut self.labels)
            } else {
                HashMap::new()
            },
        };
        self.first = false;
        m
    }

    async fn send(&mut self, m: WriteContentRequest) -> Result<()> {
        if self.tx.send(m).await.is_err() {
            // The call ended early: report its error.
            let (tx, _) = mpsc::channel(1);
            self.tx = tx;
            return Err(self
                .finish()
                .await
                .err()
                .unwrap_or_else(|| EngineError::internal("content write stream closed early")));
        }
        Ok(())
    }

    /// Appends data at the current offset.
    pub async fn write(&mut self, data: Vec<u8>) -> Result<()> {
        let n = data.len() as i64;
        let m = self.msg(WriteAction::Write, data);
        self.send(m).await?;
        self.offset += n;
        Ok(())
    }

    /// Commits the blob. `AlreadyExists` counts as success.
    pub async fn commit(mut self) -> Result<()> {
        let m = self.msg(WriteAction::Commit, Vec::new());
        self.send(m).await?;
        let (tx, _) = mpsc::channel(1);
        self.tx = tx; // closes the request stream
        self.finish().await
    }

    async fn finish(&mut self) -> Result<()> {
        let call = std::mem::replace(&mut self.call, tokio::spawn(async { Ok(None) }));
        match call.await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(s)) if s.code() == tonic::Code::AlreadyExists => Ok(()),
            Ok(Err(s)) => Err(EngineError::grpc(&format!("write {}", self.expected), s)),
            Err(e) => Err(EngineError::internal(format!("content writer task: {e}"))),
        }
    }
}
