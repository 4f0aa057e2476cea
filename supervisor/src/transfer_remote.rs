//! The registry side of a transfer: what [`crate::transfer`] needs of a
//! registry (resolve, fetch, push), implemented over the shared
//! `orca-registry` client with the supervisor's `[registry]` configuration
//! (mirrors, insecure hosts, certs dir) and the request's credentials
//! (`RegistryResolver.headers`, the client's auth stream).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use orca_proto::types::{Descriptor, Platform};
use tokio::sync::Mutex;

use crate::config::RegistryConfig;
use crate::error::Result;
use crate::streaming::ClientStream;
use crate::transfer::BlobBody;

/// A manifest or index as fetched (bytes verified against its digest).
#[derive(Debug, Clone)]
pub struct Fetched {
    pub media_type: String,
    pub digest: String,
    pub bytes: Vec<u8>,
}

impl Fetched {
    pub fn descriptor(&self) -> Descriptor {
        Descriptor {
            media_type: self.media_type.clone(),
            digest: self.digest.clone(),
            size: self.bytes.len() as i64,
            annotations: HashMap::new(),
        }
    }
}

/// A reference resolved for a platform.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// The index, when the reference names one.
    pub index: Option<Fetched>,
    /// The platform's image manifest.
    pub manifest: Fetched,
}

/// Credentials of one transfer request.
#[derive(Default, Clone)]
pub struct Auth {
    /// `RegistryResolver.headers`: sent with every registry request (an
    /// `Authorization` header among them is used as is).
    pub headers: HashMap<String, String>,
    /// The client's auth stream: asked (`AuthRequest`) for credentials when
    /// the registry wants some.
    pub stream: Option<Arc<Mutex<ClientStream>>>,
    /// `RegistryResolver.default_scheme` (`http` allows plain HTTP).
    pub default_scheme: String,
}

/// One repository at one registry, with the request's credentials.
#[tonic::async_trait]
pub trait Remote: Send + Sync {
    /// The normalized reference (`docker.io/library/busybox:latest`).
    fn canonical_name(&self) -> String;
    /// The registry host of the reference (`docker.io`, `127.0.0.1:5000`).
    fn host(&self) -> String;
    /// The repository path (`library/busybox`).
    fn repository(&self) -> String;
    /// The reference's tag, if it has one (pushes tag the top manifest).
    fn tag(&self) -> Option<String>;
    /// Resolves the reference for `platform` (mirrors first): the index
    /// (if the reference names one) and the platform's manifest. Later
    /// fetches use the endpoint that answered.
    async fn resolve(&self, platform: &Platform) -> Result<Resolved>;
    /// A small blob, whole (verified by the caller).
    async fn blob_bytes(&self, desc: &Descriptor) -> Result<Vec<u8>>;
    /// A blob as a stream of chunks (size and digest are verified by the
    /// content store's commit).
    async fn blob(&self, desc: &Descriptor) -> Result<BlobBody>;
    async fn blob_exists(&self, desc: &Descriptor) -> Result<bool>;
    /// Mounts a blob from another repository of the same registry: false
    /// if the registry would not (the caller uploads it then).
    async fn mount_blob(&self, desc: &Descriptor, from_repository: &str) -> Result<bool>;
    /// Uploads the blob file at `path`.
    async fn push_blob(&self, desc: &Descriptor, path: &Path) -> Result<()>;
    /// PUTs a manifest or index under `tag` (or its digest).
    async fn push_manifest(
        &self,
        desc: &Descriptor,
        bytes: Vec<u8>,
        tag: Option<&str>,
    ) -> Result<()>;
}

/// Makes [`Remote`]s for references.
#[tonic::async_trait]
pub trait RemoteFactory: Send + Sync {
    async fn remote(&self, reference: &str, auth: Auth, push: bool) -> Result<Box<dyn Remote>>;
}

/// The factory over `orca-registry` for this configuration.
pub fn factory(cfg: &RegistryConfig) -> Result<Arc<dyn RemoteFactory>> {
    Ok(Arc::new(crate::transfer_registry::RegistryFactory::new(
        cfg,
    )?))
}
