//! TCP + optional TLS (rustls, ring) connector for hyper-util's pooled
//! client, with per-host TLS settings.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use tokio::net::TcpStream;
use tracing::{debug, warn};

use crate::error::{Error, Result};
use crate::hosts::{host_of, HostsConfig};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a connection could not be made (found again in hyper's error chain).
#[derive(Debug)]
pub(crate) struct ConnectError {
    pub kind: ConnectErrorKind,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ConnectErrorKind {
    Tcp,
    /// TLS failed for another reason than the peer's certificate (e.g. the
    /// server speaks plain HTTP).
    Tls,
    /// The peer's certificate was refused.
    Certificate,
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}
impl std::error::Error for ConnectError {}

/// Per-host TLS client configurations, built on first use.
pub(crate) struct TlsConfigs {
    hosts: HostsConfig,
    cache: Mutex<HashMap<String, Arc<ClientConfig>>>,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    static P: OnceLock<Arc<rustls::crypto::CryptoProvider>> = OnceLock::new();
    P.get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

fn system_roots() -> &'static Vec<CertificateDer<'static>> {
    static ROOTS: OnceLock<Vec<CertificateDer<'static>>> = OnceLock::new();
    ROOTS.get_or_init(|| {
        let r = rustls_native_certs::load_native_certs();
        for e in &r.errors {
            warn!(error = %e, "loading system CA certificates");
        }
        debug!(count = r.certs.len(), "system CA certificates loaded");
        r.certs
    })
}

impl TlsConfigs {
    pub fn new(hosts: HostsConfig) -> TlsConfigs {
        TlsConfigs {
            hosts,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The TLS configuration for host[:port] (normalized: default port 443
    /// dropped).
    /// The certs dir is looked at again for each new connection (like
    /// dockerd): a CA added or changed there is used without a restart.
    pub fn for_authority(&self, authority: &str) -> Result<Arc<ClientConfig>> {
        let key = format!("{authority}\0{}", self.dir_signature(authority));
        if let Some(c) = self.cache.lock().expect("tls cache lock").get(&key) {
            return Ok(c.clone());
        }
        let cfg = Arc::new(self.build(authority)?);
        let mut cache = self.cache.lock().expect("tls cache lock");
        // Stale entries of this host go.
        cache.retain(|k, _| k.split('\0').next() != Some(authority));
        cache.insert(key, cfg.clone());
        Ok(cfg)
    }

    /// Names, sizes and mtimes of `<certs_dir>/<authority>/*`.
    fn dir_signature(&self, authority: &str) -> String {
        let Some(dir) = self.hosts.certs_dir.as_ref().map(|d| d.join(authority)) else {
            return String::new();
        };
        let Ok(rd) = std::fs::read_dir(&dir) else {
            return String::new();
        };
        let mut parts: Vec<String> = rd
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let m = e.metadata().ok()?;
                let t = m
                    .modified()
                    .ok()
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map(|d| d.as_nanos())
                    .unwrap_or(0);
                Some(format!("{:?}:{}:{t}", e.file_name(), m.len()))
            })
            .collect();
        parts.sort();
        parts.join(",")
    }

    fn build(&self, authority: &str) -> Result<ClientConfig> {
        let builder = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::Config(format!("TLS setup: {e}")))?;
        let dir = self
            .hosts
            .certs_dir
            .as_ref()
            .map(|d| d.join(authority))
            .filter(|d| d.is_dir());
        let builder = if self.hosts.is_insecure(authority) {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(NoVerify(provider())))
        } else {
            let mut roots = RootCertStore::empty();
            if self.hosts.system_roots {
                let (_, bad) = roots.add_parsable_certificates(system_roots().iter().cloned());
                if bad > 0 {
                    debug!(bad, "unparsable system CA certificates skipped");
                }
            }
            if let Some(dir) = &dir {
                for path in files_with_ext(dir, "crt")? {
                    let certs = read_certs(&path)?;
                    for c in certs {
                        roots.add(c).map_err(|e| {
                            Error::Config(format!("CA certificate {}: {e}", path.display()))
                        })?;
                    }
                    debug!(host = authority, file = %path.display(), "registry CA loaded");
                }
            }
            builder.with_root_certificates(roots)
        };
        let mut cfg = match client_cert(dir.as_deref())? {
            Some((chain, key)) => builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| Error::Config(format!("client certificate for {authority}: {e}")))?,
            None => builder.with_no_client_auth(),
        };
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(cfg)
    }
}

fn files_with_ext(dir: &Path, ext: &str) -> Result<Vec<std::path::PathBuf>> {
    let rd = std::fs::read_dir(dir)
        .map_err(|e| Error::Config(format!("reading {}: {e}", dir.display())))?;
    let mut out: Vec<_> = rd
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == ext))
        .collect();
    out.sort();
    Ok(out)
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let certs: std::result::Result<Vec<_>, _> = CertificateDer::pem_file_iter(path)
        .map_err(|e| Error::Config(format!("reading {}: {e}", path.display())))?
        .collect();
    let certs = certs.map_err(|e| Error::Config(format!("parsing {}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(Error::Config(format!(
            "{}: no PEM certificate found",
            path.display()
        )));
    }
    Ok(certs)
}

type ClientCert = (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>);

/// `<dir>/*.cert` with the matching `*.key`.
fn client_cert(dir: Option<&Path>) -> Result<Option<ClientCert>> {
    let Some(dir) = dir else { return Ok(None) };
    let Some(cert) = files_with_ext(dir, "cert")?.into_iter().next() else {
        return Ok(None);
    };
    let key = cert.with_extension("key");
    if !key.exists() {
        return Err(Error::Config(format!(
            "client certificate {} has no matching {}",
            cert.display(),
            key.display()
        )));
    }
    let chain = read_certs(&cert)?;
    let key = PrivateKeyDer::from_pem_file(&key)
        .map_err(|e| Error::Config(format!("reading key {}: {e}", key.display())))?;
    Ok(Some((chain, key)))
}

/// Accepts any server certificate (insecure registries only); signatures
/// are still checked so the handshake is well-formed.
#[derive(Debug)]
struct NoVerify(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The connector given to hyper-util's client.
#[derive(Clone)]
pub(crate) struct Connector {
    pub tls: Arc<TlsConfigs>,
}

/// A plain or TLS connection.
pub(crate) enum Conn {
    Plain(TokioIo<TcpStream>),
    Tls(Box<TokioIo<tokio_rustls::client::TlsStream<TcpStream>>>),
}

impl Connection for Conn {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl hyper::rt::Read for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl hyper::rt::Write for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_flush(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

fn classify_tls(e: &io::Error) -> ConnectErrorKind {
    let inner = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>());
    match inner {
        Some(rustls::Error::InvalidCertificate(_))
        | Some(rustls::Error::NoCertificatesPresented)
        | Some(rustls::Error::UnsupportedNameType) => ConnectErrorKind::Certificate,
        _ => ConnectErrorKind::Tls,
    }
}

impl tower::Service<Uri> for Connector {
    type Response = Conn;
    type Error = ConnectError;
    type Future = Pin<Box<dyn Future<Output = std::result::Result<Conn, ConnectError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<std::result::Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let tls = self.tls.clone();
        Box::pin(async move {
            let https = uri.scheme_str() == Some("https");
            let authority = uri
                .authority()
                .map(|a| a.as_str().to_string())
                .unwrap_or_default();
            let host = host_of(&authority).to_string();
            let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
            let tcp_err = |message: String| ConnectError {
                kind: ConnectErrorKind::Tcp,
                message,
            };
            if host.is_empty() {
                return Err(tcp_err(format!("no host in {uri}")));
            }
            let tcp =
                tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect((host.as_str(), port)))
                    .await
                    .map_err(|_| tcp_err(format!("dial tcp {authority}: i/o timeout")))?
                    .map_err(|e| tcp_err(format!("dial tcp {host}:{port}: {e}")))?;
            let _ = tcp.set_nodelay(true);
            if !https {
                return Ok(Conn::Plain(TokioIo::new(tcp)));
            }
            // Certificates dirs are named host[:port] as written in references.
            let key = match uri.port_u16() {
                Some(443) | None => host_key(&authority, true),
                Some(_) => authority.clone(),
            };
            let cfg = tls.for_authority(&key).map_err(|e| ConnectError {
                kind: ConnectErrorKind::Tls,
                message: e.to_string(),
            })?;
            let name = ServerName::try_from(host.clone()).map_err(|e| ConnectError {
                kind: ConnectErrorKind::Tls,
                message: format!("invalid TLS server name {host:?}: {e}"),
            })?;
            let stream = tokio_rustls::TlsConnector::from(cfg)
                .connect(name, tcp)
                .await
                .map_err(|e| {
                    let kind = classify_tls(&e);
                    let hint = if kind == ConnectErrorKind::Certificate {
                        match &tls.hosts.certs_dir {
                            Some(d) => format!(
                                " (trust its CA with {}/{key}/ca.crt, or list it in insecure-registries)",
                                d.display()
                            ),
                            None => " (list it in insecure-registries to skip verification)".into(),
                        }
                    } else {
                        String::new()
                    };
                    ConnectError {
                        kind,
                        message: format!("tls: {authority}: {e}{hint}"),
                    }
                })?;
            Ok(Conn::Tls(Box::new(TokioIo::new(stream))))
        })
    }
}

/// host[:port] with an explicit :443 dropped.
fn host_key(authority: &str, drop_443: bool) -> String {
    if drop_443 {
        authority
            .strip_suffix(":443")
            .unwrap_or(authority)
            .to_string()
    } else {
        authority.to_string()
    }
}

/// Finds our [`ConnectError`] in an error's source chain.
pub(crate) fn find_connect_error<'a>(
    e: &'a (dyn std::error::Error + 'static),
) -> Option<&'a ConnectError> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(c) = err.downcast_ref::<ConnectError>() {
            return Some(c);
        }
        cur = err.source();
    }
    None
}
