//! [`Remote`] over the shared `orca-registry` client: the supervisor's
//! `[registry]` settings become its hosts configuration (mirrors tried first
//! for pulls, insecure hosts, per-host CAs under `certs_dir`, loopback over
//! plain HTTP); a request's credentials come from an `Authorization`
//! resolver header or from the client's auth stream.

use std::path::Path;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use orca_proto::type_urls;
use orca_proto::types::transfer as tt;
use orca_proto::types::{Descriptor, Platform};
use orca_registry as reg;
use prost::Message;
use prost_types::Any;
use tokio::sync::mpsc;

use crate::config::RegistryConfig;
use crate::error::{Error, Result};
use crate::transfer::BlobBody;
use crate::transfer_remote::{Auth, Fetched, Remote, RemoteFactory, Resolved};

/// Largest manifest, index or config read whole.
const MAX_SMALL_BLOB: u64 = 16 << 20;

/// Maps a registry client error onto the supervisor's (and so a gRPC code).
pub fn map_err(e: reg::Error) -> Error {
    let msg = e.to_string();
    match e {
        reg::Error::InvalidReference(_) | reg::Error::InvalidArgument(_) => {
            Error::InvalidArgument(msg)
        }
        reg::Error::NotFound(_) | reg::Error::NoMatchingPlatform(_) => Error::NotFound(msg),
        reg::Error::Unauthorized { .. } => {
            Error::FailedPrecondition(format!("registry authorization: {msg}"))
        }
        reg::Error::Tls(_) | reg::Error::Connect(_) => Error::Unavailable(msg),
        reg::Error::Registry { status, .. } if status >= 500 || status == 429 => {
            Error::Unavailable(format!("registry: {msg}"))
        }
        reg::Error::DigestMismatch { .. } | reg::Error::SizeMismatch { .. } => {
            Error::FailedPrecondition(msg)
        }
        reg::Error::Unsupported(_) => Error::Unimplemented(msg),
        reg::Error::Config(_) => {
            Error::FailedPrecondition(format!("registry configuration: {msg}"))
        }
        _ => Error::Internal(format!("registry: {msg}")),
    }
}

fn to_reg_desc(d: &Descriptor) -> reg::Descriptor {
    let mut r = reg::Descriptor::new(&d.media_type, &d.digest, d.size.max(0) as u64);
    r.annotations = d
        .annotations
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    r
}

fn fetched(m: reg::FetchedManifest) -> Fetched {
    Fetched {
        media_type: m.media_type,
        digest: m.digest,
        bytes: m.bytes.to_vec(),
    }
}

/// Makes registry [`Remote`]s with one shared client (connection pool,
/// token cache).
pub struct RegistryFactory {
    hosts: reg::HostsConfig,
    client: reg::Client,
}

impl RegistryFactory {
    pub fn new(cfg: &RegistryConfig) -> Result<RegistryFactory> {
        let hosts = reg::HostsConfig {
            mirrors: cfg
                .mirrors
                .iter()
                .map(|(host, m)| (host.clone(), m.endpoint.clone()))
                .collect(),
            insecure: cfg.insecure.clone(),
            certs_dir: cfg.certs_dir.clone(),
            ..Default::default()
        };
        hosts
            .validate()
            .map_err(|e| Error::InvalidArgument(format!("[registry] configuration: {e}")))?;
        let client = reg::Client::new(hosts.clone())
            .map_err(|e| Error::InvalidArgument(format!("[registry] configuration: {e}")))?;
        Ok(RegistryFactory { hosts, client })
    }
}

/// Credentials from an `Authorization` header value.
fn credentials_from_header(value: &str) -> Result<reg::Credentials> {
    let (scheme, rest) = value.trim().split_once(' ').unwrap_or((value, ""));
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("basic") {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(rest)
            .map_err(|e| {
                Error::InvalidArgument(format!("Authorization: bad basic credentials: {e}"))
            })?;
        let text = String::from_utf8(raw).map_err(|_| {
            Error::InvalidArgument("Authorization: basic credentials are not UTF-8".into())
        })?;
        let (u, p) = text.split_once(':').ok_or_else(|| {
            Error::InvalidArgument("Authorization: basic credentials need user:password".into())
        })?;
        Ok(reg::Credentials::Basic {
            username: u.to_string(),
            password: p.to_string(),
        })
    } else if scheme.eq_ignore_ascii_case("bearer") {
        Ok(reg::Credentials::RegistryToken(rest.to_string()))
    } else {
        Err(Error::InvalidArgument(format!(
            "Authorization: unsupported scheme {scheme:?} (Basic or Bearer)"
        )))
    }
}

/// Asks the client's auth stream for credentials for `host`.
async fn ask_auth_stream(auth: &Auth, host: &str, reference: &str) -> Result<reg::Credentials> {
    let Some(stream) = &auth.stream else {
        return Ok(reg::Credentials::Anonymous);
    };
    let mut s = stream.lock().await;
    let req = tt::AuthRequest {
        host: host.to_string(),
        reference: reference.to_string(),
        wwwauthenticate: vec![],
    };
    if !s
        .send(Any {
            type_url: type_urls::AUTH_REQUEST.into(),
            value: req.encode_to_vec(),
        })
        .await
    {
        return Err(Error::Unavailable(
            "the auth stream was closed by the client".into(),
        ));
    }
    let answer = tokio::time::timeout(Duration::from_secs(30), s.recv())
        .await
        .map_err(|_| Error::Unavailable("no AuthResponse on the auth stream within 30 s".into()))?
        .ok_or_else(|| Error::Unavailable("the auth stream was closed by the client".into()))?;
    if type_urls::name(&answer.type_url) != type_urls::AUTH_RESPONSE {
        return Err(Error::InvalidArgument(format!(
            "expected an AuthResponse on the auth stream, got {:?}",
            answer.type_url
        )));
    }
    let r = tt::AuthResponse::decode(answer.value.as_slice())
        .map_err(|e| Error::InvalidArgument(format!("bad AuthResponse: {e}")))?;
    Ok(match tt::AuthType::try_from(r.auth_type) {
        Ok(tt::AuthType::None) => reg::Credentials::Anonymous,
        Ok(tt::AuthType::Credentials) => reg::Credentials::Basic {
            username: r.username,
            password: r.secret,
        },
        Ok(tt::AuthType::Refresh) => reg::Credentials::IdentityToken(r.secret),
        Ok(tt::AuthType::Header) => credentials_from_header(&r.secret)?,
        Err(_) => {
            return Err(Error::InvalidArgument(format!(
                "unknown AuthResponse type {}",
                r.auth_type
            )))
        }
    })
}

#[tonic::async_trait]
impl RemoteFactory for RegistryFactory {
    async fn remote(&self, reference: &str, auth: Auth, push: bool) -> Result<Box<dyn Remote>> {
        let r = reg::Reference::parse(reference).map_err(|e| match e {
            reg::Error::InvalidReference(m) => Error::InvalidArgument(m),
            other => map_err(other),
        })?;
        if !auth.default_scheme.is_empty()
            && auth.default_scheme != "https"
            && auth.default_scheme != "http"
        {
            return Err(Error::InvalidArgument(format!(
                "RegistryResolver.default_scheme {:?}: http or https",
                auth.default_scheme
            )));
        }
        let mut creds = reg::Credentials::Anonymous;
        for (k, v) in &auth.headers {
            if k.eq_ignore_ascii_case("authorization") {
                creds = credentials_from_header(v)?;
            } else if !k.eq_ignore_ascii_case("user-agent") {
                return Err(Error::Unimplemented(format!(
                    "RegistryResolver header {k:?}: only Authorization is supported"
                )));
            }
        }
        if creds.is_anonymous() && auth.stream.is_some() {
            creds = ask_auth_stream(&auth, &r.domain, &r.full()).await?;
        }
        tracing::debug!(reference = %r.full(), push, anonymous = creds.is_anonymous(), "registry remote");
        // `default_scheme = "http"` (ctr's --plain-http): this request may
        // reach the registry over plain HTTP, as an insecure registry.
        let client = if auth.default_scheme == "http"
            && !self.hosts.is_insecure(&r.domain)
            && !reg::HostsConfig::is_loopback(&r.domain)
        {
            let mut hosts = self.hosts.clone();
            hosts.insecure.push(r.domain.clone());
            reg::Client::new(hosts).map_err(map_err)?
        } else {
            self.client.clone()
        };
        let repo = client.repository(&r, creds);
        Ok(Box::new(RegistryRemote { r, repo }))
    }
}

struct RegistryRemote {
    r: reg::Reference,
    repo: reg::Repository,
}

#[tonic::async_trait]
impl Remote for RegistryRemote {
    fn canonical_name(&self) -> String {
        self.r.full()
    }

    fn host(&self) -> String {
        self.r.domain.clone()
    }

    fn repository(&self) -> String {
        self.r.path.clone()
    }

    fn tag(&self) -> Option<String> {
        self.r.tag.clone()
    }

    async fn resolve(&self, platform: &Platform) -> Result<Resolved> {
        let want = reg::Platform {
            architecture: platform.architecture.clone(),
            os: platform.os.clone(),
            variant: Some(platform.variant.clone()).filter(|v| !v.is_empty()),
            os_version: Some(platform.os_version.clone()).filter(|v| !v.is_empty()),
            os_features: vec![],
        };
        let r = self.repo.resolve(&want).await.map_err(map_err)?;
        tracing::debug!(reference = %self.r.full(), endpoint = %r.endpoint, "resolved");
        Ok(Resolved {
            index: r.index.map(fetched),
            manifest: fetched(r.manifest),
        })
    }

    async fn blob_bytes(&self, desc: &Descriptor) -> Result<Vec<u8>> {
        self.repo
            .fetch_blob_bytes(&to_reg_desc(desc), MAX_SMALL_BLOB)
            .await
            .map(|b| b.to_vec())
            .map_err(map_err)
    }

    async fn blob(&self, desc: &Descriptor) -> Result<BlobBody> {
        let mut stream = self
            .repo
            .fetch_blob(&to_reg_desc(desc))
            .await
            .map_err(map_err)?;
        let (tx, rx) = mpsc::channel::<Result<Bytes>>(4);
        tokio::spawn(async move {
            loop {
                match stream.next_chunk().await {
                    Ok(Some(b)) => {
                        if tx.send(Ok(b)).await.is_err() {
                            return;
                        }
                    }
                    Ok(None) => return,
                    Err(e) => {
                        let _ = tx.send(Err(map_err(e))).await;
                        return;
                    }
                }
            }
        });
        Ok(rx)
    }

    async fn blob_exists(&self, desc: &Descriptor) -> Result<bool> {
        Ok(self
            .repo
            .blob_exists(&desc.digest)
            .await
            .map_err(map_err)?
            .is_some())
    }

    async fn mount_blob(&self, desc: &Descriptor, from_repository: &str) -> Result<bool> {
        self.repo
            .mount_blob(&to_reg_desc(desc), from_repository)
            .await
            .map_err(map_err)
    }

    async fn push_blob(&self, desc: &Descriptor, path: &Path) -> Result<()> {
        use tokio::io::AsyncReadExt;
        let mut file = tokio::fs::File::open(path)
            .await
            .map_err(|e| Error::io(format!("open {}", path.display()), e))?;
        let (tx, rx) = mpsc::channel::<reg::Result<Bytes>>(4);
        let what = path.display().to_string();
        tokio::spawn(async move {
            loop {
                let mut buf = vec![0u8; 1 << 20];
                match file.read(&mut buf).await {
                    Ok(0) => return,
                    Ok(n) => {
                        buf.truncate(n);
                        if tx.send(Ok(Bytes::from(buf))).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        let _ = tx
                            .send(Err(reg::Error::Source(format!("read {what}: {e}"))))
                            .await;
                        return;
                    }
                }
            }
        });
        let source: reg::BlobSource = Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx));
        self.repo
            .push_blob_stream(&to_reg_desc(desc), source)
            .await
            .map_err(map_err)
    }

    async fn push_manifest(
        &self,
        desc: &Descriptor,
        bytes: Vec<u8>,
        tag: Option<&str>,
    ) -> Result<()> {
        let at = tag.unwrap_or(&desc.digest);
        let digest = self
            .repo
            .push_manifest(at, &desc.media_type, Bytes::from(bytes))
            .await
            .map_err(map_err)?;
        if digest != desc.digest {
            return Err(Error::Internal(format!(
                "the registry stored manifest {} as {digest}",
                desc.digest
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authorization_headers() {
        let b = base64::engine::general_purpose::STANDARD.encode("u:p:w");
        assert_eq!(
            credentials_from_header(&format!("Basic {b}")).unwrap(),
            reg::Credentials::Basic {
                username: "u".into(),
                password: "p:w".into()
            }
        );
        assert_eq!(
            credentials_from_header("Bearer tok").unwrap(),
            reg::Credentials::RegistryToken("tok".into())
        );
        assert!(credentials_from_header("Digest x").is_err());
        assert!(credentials_from_header("Basic !!!").is_err());
    }
}
