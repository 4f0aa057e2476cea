//! A small registry (distribution v2) client over plain HTTP on hyper.
//!
//! Only plain-HTTP registries are reachable (loopback and `--insecure-registry`
//! hosts); HTTPS and registry authentication are answered as not implemented.

use bytes::Bytes;
use http::{header, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use sha2::{Digest, Sha256};

use crate::error::{EngineError, Result};
use crate::reference::Reference;

pub const MT_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MT_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MT_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const MT_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

/// A fetched manifest (or index).
pub struct Fetched {
    pub media_type: String,
    pub digest: String,
    pub bytes: Vec<u8>,
}

/// Registry access settings.
#[derive(Clone)]
pub struct RegistryClient {
    client: Client<HttpConnector, Empty<Bytes>>,
    insecure: Vec<String>,
}

impl RegistryClient {
    /// `insecure`: extra hosts (host[:port]) reached over plain HTTP.
    pub fn new(insecure: Vec<String>) -> RegistryClient {
        let client = Client::builder(TokioExecutor::new()).build_http();
        RegistryClient { client, insecure }
    }

    /// Whether a registry domain is spoken to over plain HTTP.
    pub fn is_plain_http(&self, domain: &str) -> bool {
        let host = if let Some(rest) = domain.strip_prefix('[') {
            rest.split(']').next().unwrap_or("")
        } else {
            domain.split(':').next().unwrap_or("")
        };
        let loopback = host == "localhost"
            || host == "::1"
            || host
                .parse::<std::net::Ipv4Addr>()
                .is_ok_and(|a| a.is_loopback());
        loopback || self.insecure.iter().any(|i| i == domain || i == host)
    }

    fn base(&self, r: &Reference) -> Result<String> {
        if !self.is_plain_http(&r.domain) {
            return Err(EngineError::NotImplemented(format!(
                "pulling from {} needs HTTPS, which is not implemented in orcad yet \
                 (only loopback and --insecure-registry registries over plain HTTP)",
                r.domain
            )));
        }
        Ok(format!("http://{}/v2/{}", r.domain, r.path))
    }

    async fn get(&self, url: &str, accept: &str) -> Result<hyper::Response<Incoming>> {
        let mut url = url.to_string();
        for _ in 0..4 {
            let req = Request::get(&url)
                .header(header::ACCEPT, accept)
                .header(
                    header::USER_AGENT,
                    concat!("orcad/", env!("CARGO_PKG_VERSION")),
                )
                .body(Empty::<Bytes>::new())
                .map_err(|e| EngineError::BadRequest(format!("bad registry URL {url}: {e}")))?;
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| EngineError::internal(format!("GET {url}: {e}")))?;
            if resp.status().is_redirection() {
                let loc = resp
                    .headers()
                    .get(header::LOCATION)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string();
                // Only follow redirects to plain-HTTP registry hosts.
                let target: http::Uri = loc
                    .parse()
                    .map_err(|_| EngineError::internal(format!("bad redirect from {url}")))?;
                match target.authority() {
                    Some(a) if self.is_plain_http(a.as_str()) => url = loc,
                    None => {
                        let cur: http::Uri = url.parse().map_err(EngineError::internal)?;
                        url = format!(
                            "http://{}{}",
                            cur.authority().map(|a| a.as_str()).unwrap_or(""),
                            loc
                        );
                    }
                    Some(a) => {
                        return Err(EngineError::NotImplemented(format!(
                            "registry redirected to {a}, which is not a plain-HTTP registry; \
                             not implemented in orcad yet"
                        )))
                    }
                }
                continue;
            }
            return Ok(resp);
        }
        Err(EngineError::internal(format!(
            "too many redirects for {url}"
        )))
    }

    async fn check(&self, what: &str, resp: &hyper::Response<Incoming>) -> Result<()> {
        match resp.status() {
            s if s.is_success() => Ok(()),
            StatusCode::NOT_FOUND => Err(EngineError::NotFound(format!("{what} not found: manifest unknown"))),
            StatusCode::UNAUTHORIZED => Err(EngineError::NotImplemented(format!(
                "{what}: the registry asks for authentication, which is not implemented in orcad yet"
            ))),
            s => Err(EngineError::internal(format!("{what}: registry answered {s}"))),
        }
    }

    /// Fetches a manifest or index by tag or digest.
    pub async fn manifest(&self, r: &Reference, object: &str) -> Result<Fetched> {
        let url = format!("{}/manifests/{object}", self.base(r)?);
        let accept = [
            MT_OCI_INDEX,
            MT_DOCKER_LIST,
            MT_OCI_MANIFEST,
            MT_DOCKER_MANIFEST,
        ]
        .join(", ");
        let resp = self.get(&url, &accept).await?;
        let what = format!("manifest for {}:{}", r.name(), object);
        self.check(&what, &resp).await?;
        let ct = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_string();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| EngineError::internal(format!("reading {url}: {e}")))?
            .to_bytes()
            .to_vec();
        if bytes.len() > 4 << 20 {
            return Err(EngineError::internal(format!("{what}: manifest too large")));
        }
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(&bytes)));
        if object.starts_with("sha256:") && object != digest {
            return Err(EngineError::internal(format!(
                "{what}: content digest {digest} does not match"
            )));
        }
        let media_type = if ct.is_empty() || ct == "application/json" {
            serde_json::from_slice::<serde_json::Value>(&bytes)
                .ok()
                .and_then(|v| v["mediaType"].as_str().map(String::from))
                .unwrap_or_else(|| MT_OCI_MANIFEST.to_string())
        } else {
            ct
        };
        Ok(Fetched {
            media_type,
            digest,
            bytes,
        })
    }

    /// Starts fetching a blob; returns its body.
    pub async fn blob(&self, r: &Reference, digest: &str) -> Result<Incoming> {
        let url = format!("{}/blobs/{digest}", self.base(r)?);
        let resp = self.get(&url, "*/*").await?;
        self.check(&format!("blob {digest}"), &resp).await?;
        Ok(resp.into_body())
    }
}
