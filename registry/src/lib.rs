//! `orca-registry`: a distribution-v2 (Docker/OCI registry) client shared by
//! orcad (`orca-engine`) and orca-supervisor's transfer service.
//!
//! # API in one screen
//!
//! ```text
//! Reference::parse("busybox")?            // docker.io/library/busybox:latest
//!   .domain / .path / .tag / .digest, .name(), .full(), .object(), .endpoint_host()
//! familiar("docker.io/library/busybox:latest") == "busybox:latest"
//!
//! HostsConfig { mirrors, insecure, certs_dir, system_roots, loopback_plain_http }
//!   HostsConfig::docker(&registry_mirrors, &insecure_registries, Some(certs_dir))
//! Client::new(HostsConfig) -> Result<Client>           // cheap to clone (Arc inside)
//!   client.ping(registry_host, &Credentials) -> Result<()>     // `docker login` check
//!   client.repository(&Reference, Credentials) -> Repository    // clone-able handle
//!
//! Credentials::{Anonymous, Basic{username,password}, IdentityToken(t), RegistryToken(t)}
//!   Credentials::from_x_registry_auth(header) -> Result<AuthConfig>   (base64url JSON)
//!
//! Pull (mirrors first, in order, then the registry itself):
//!   repo.resolve(&Platform) -> Result<Resolved>   // {index?, manifest, image: ImageManifest, endpoint}
//!   repo.fetch_manifest(object) -> Result<FetchedManifest>
//!   repo.fetch_blob(&Descriptor) -> Result<BlobStream>     // .next_chunk() verifies size+digest
//!   repo.fetch_blob_bytes(&Descriptor, max) -> Result<Bytes>
//!   repo.for_each_blob(&[Descriptor], concurrency, |i, desc, stream| async {..}) -> Result<Vec<T>, E>
//!   select_platform(&ImageIndex, &Platform) -> Result<&Descriptor>
//!   Verifier::new(&digest, size) .update(&[u8])? .finish()?
//!
//! Push (the registry itself, never a mirror):
//!   repo.blob_exists(digest) -> Result<Option<u64>>
//!   repo.mount_blob(&Descriptor, from_repo_path) -> Result<bool>
//!   repo.push_blob(&Descriptor, Bytes) -> Result<()>                 // POST + PUT ?digest=
//!   repo.push_blob_stream(&Descriptor, BlobSource) -> Result<()>     // POST + PATCH.. + PUT
//!   repo.push_manifest(tag_or_digest, media_type, Bytes) -> Result<String /*digest*/>
//!
//! Error: thiserror enum; Error::status(), is_not_found(), is_unauthorized().
//! ```
//!
//! Transport: hyper 1 (hyper-util's legacy pooled client) over a connector
//! doing TCP, then TLS with rustls (ring) when the scheme is https. TLS roots:
//! the system's (rustls-native-certs) plus `<certs_dir>/<host[:port]>/*.crt`.
//! Insecure registries (Docker semantics): HTTPS without verification, then
//! plain HTTP. Loopback hosts: verified HTTPS, then plain HTTP when the
//! server does not speak TLS (a certificate error is reported, not bypassed).

pub mod auth;
pub mod client;
pub mod error;
pub mod hosts;
pub mod manifest;
pub mod reference;
mod transport;

pub use auth::{parse_www_authenticate, AuthConfig, Challenge, Credentials};
pub use client::{BlobSource, BlobStream, Client, Repository, Resolved, DEFAULT_CONCURRENCY};
pub use error::{Error, Result};
pub use hosts::HostsConfig;
pub use manifest::{
    select_platform, Descriptor, FetchedManifest, ImageIndex, ImageManifest, Platform, Verifier,
    MT_DOCKER_CONFIG, MT_DOCKER_LAYER, MT_DOCKER_LAYER_FOREIGN, MT_DOCKER_LIST, MT_DOCKER_MANIFEST,
    MT_OCI_CONFIG, MT_OCI_INDEX, MT_OCI_LAYER, MT_OCI_LAYER_GZIP, MT_OCI_LAYER_ZSTD,
    MT_OCI_MANIFEST,
};
pub use reference::{familiar, Reference, DEFAULT_DOMAIN, DEFAULT_ENDPOINT};
