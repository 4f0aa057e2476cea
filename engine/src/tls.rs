//! orcad's listeners: the unix API socket(s) and the TLS tcp listener.
//!
//! tcp is served only with TLS 1.2/1.3 (rustls, ring provider) and client
//! certificates verified against `--tlscacert` (WebPKI chain validation,
//! client-auth EKU); a client without a certificate, or with one from
//! another CA, fails the handshake. Every connection, whatever it came
//! in on, goes to the same hyper service (so attach/exec hijacking works
//! over TLS too). A failed or slow handshake only ends that connection.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UnixListener};
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

use crate::config::TlsFiles;
use crate::Engine;

/// How long a client may take to complete the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What Go's TLS server answers to plain HTTP (the docker CLI shows it).
const PLAIN_HTTP_ANSWER: &[u8] =
    b"HTTP/1.0 400 Bad Request\r\n\r\nClient sent an HTTP request to an HTTPS server.\n";

/// A TLS set-up error (orcad does not start).
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} {path}: {msg}")]
    Read {
        what: &'static str,
        path: PathBuf,
        msg: String,
    },
    #[error("{what} {path} holds no PEM certificate")]
    NoCert { what: &'static str, path: PathBuf },
    #[error("--tlscacert {path}: {msg}")]
    BadCa { path: PathBuf, msg: String },
    #[error("TLS configuration: {0}")]
    Config(String),
}

fn read_certs(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsError::Read {
            what,
            path: path.to_path_buf(),
            msg: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCert {
            what,
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

/// The rustls server configuration from the PEM files: the server's
/// certificate chain and key, and a verifier that requires a client
/// certificate chaining to the CA.
pub fn server_config(files: &TlsFiles) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    for c in read_certs("--tlscacert", &files.ca)? {
        roots.add(c).map_err(|e| TlsError::BadCa {
            path: files.ca.clone(),
            msg: e.to_string(),
        })?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| TlsError::BadCa {
            path: files.ca.clone(),
            msg: e.to_string(),
        })?;
    let chain = read_certs("--tlscert", &files.cert)?;
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| TlsError::Read {
        what: "--tlskey",
        path: files.key.clone(),
        msg: e.to_string(),
    })?;
    let cfg = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| {
            TlsError::Config(format!(
                "--tlscert {} / --tlskey {}: {e}",
                files.cert.display(),
                files.key.display()
            ))
        })?;
    Ok(Arc::new(cfg))
}

/// One bound listener.
pub enum Listener {
    /// A unix API socket.
    Unix(UnixListener),
    /// A tcp socket served with TLS (client certificates required).
    Tls(TcpListener, TlsAcceptor),
}

impl Listener {
    /// Binds `addr` (HOST:PORT) for TLS with `config`.
    pub async fn bind_tls(addr: &str, config: Arc<ServerConfig>) -> anyhow::Result<Listener> {
        let l = TcpListener::bind(addr)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on tcp://{addr}: {e}"))?;
        Ok(Listener::Tls(l, TlsAcceptor::from(config)))
    }
}

/// Serves every listener until `shutdown` resolves (connections already
/// accepted carry on, as with [`crate::serve`]).
pub async fn serve_all(
    engine: Arc<Engine>,
    listeners: Vec<Listener>,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let mut tasks = tokio::task::JoinSet::new();
    for l in listeners {
        let engine = engine.clone();
        match l {
            Listener::Unix(u) => {
                tasks.spawn(async move { crate::serve(engine, u, std::future::pending()).await });
            }
            Listener::Tls(t, acceptor) => {
                tasks.spawn(async move {
                    accept_tls(engine, t, acceptor).await;
                    Ok(())
                });
            }
        }
    }
    tokio::select! {
        _ = shutdown => {
            info!("shutting down");
        }
        Some(r) = tasks.join_next() => {
            tasks.abort_all();
            return match r {
                Ok(r) => r,
                Err(e) => Err(anyhow::anyhow!("listener task ended: {e}")),
            };
        }
    }
    tasks.abort_all();
    Ok(())
}

async fn accept_tls(engine: Arc<Engine>, listener: TcpListener, acceptor: TlsAcceptor) {
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                warn!("tcp accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let engine = engine.clone();
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let stream =
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake(tcp, &acceptor)).await {
                    Ok(Ok(Some(s))) => s,
                    Ok(Ok(None)) => return,
                    Ok(Err(e)) => {
                        info!(%peer, "TLS handshake error: {e}");
                        return;
                    }
                    Err(_) => {
                        debug!(%peer, "TLS handshake timed out");
                        return;
                    }
                };
            debug!(%peer, "TLS client verified");
            crate::serve_connection(engine, stream).await;
        });
    }
}

/// Peeks at the first byte: a TLS handshake record goes to rustls; plain
/// HTTP gets Go's 400 answer (`None`) instead of a garbled alert.
async fn handshake(
    mut tcp: tokio::net::TcpStream,
    acceptor: &TlsAcceptor,
) -> std::io::Result<Option<tokio_rustls::server::TlsStream<tokio::net::TcpStream>>> {
    let mut first = [0u8; 1];
    if tcp.peek(&mut first).await? == 0 {
        return Ok(None);
    }
    if first[0] != 0x16 {
        if first[0].is_ascii_uppercase() {
            debug!("plain HTTP on the TLS port");
            let _ = tcp.write_all(PLAIN_HTTP_ANSWER).await;
            let _ = tcp.shutdown().await;
            // Drain the request briefly, so closing with unread bytes does
            // not reset the connection before the client reads the answer.
            let mut buf = [0u8; 4096];
            let drain = async {
                let mut total = 0usize;
                while let Ok(n) = tcp.read(&mut buf).await {
                    total += n;
                    if n == 0 || total > 64 * 1024 {
                        break;
                    }
                }
            };
            let _ = tokio::time::timeout(Duration::from_secs(1), drain).await;
            return Ok(None);
        }
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "not a TLS client",
        ));
    }
    acceptor.accept(tcp).await.map(Some)
}
