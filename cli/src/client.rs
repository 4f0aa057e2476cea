//! The Docker Engine API client: one HTTP/1.1 connection per request over
//! the daemon's unix socket (or TCP), API version negotiated through
//! `/_ping`, JSON calls, streamed bodies and hijacked (upgraded) streams.

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::debug;

use crate::error::{CliError, Result};
use crate::host::DaemonHost;

/// The newest API version this client speaks.
pub const CLIENT_API_VERSION: &str = "1.44";
/// Used when the daemon does not send `Api-Version` (docker's fallback).
pub const FALLBACK_API_VERSION: &str = "1.24";

/// Any byte stream to the daemon.
pub trait DaemonIo: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> DaemonIo for T {}

/// An upgraded (hijacked) connection: raw bytes both ways.
pub type HijackedStream = TokioIo<hyper::upgrade::Upgraded>;

/// What a hijacking request got back.
pub enum AttachOutput {
    /// 101 Switching Protocols: read output from and write stdin to it.
    Hijacked(HijackedStream),
    /// The daemon answered with a plain streaming body instead.
    Body(Incoming),
}

/// A client bound to one daemon address and one API version.
#[derive(Debug, Clone)]
pub struct EngineClient {
    host: DaemonHost,
    api_version: String,
    /// For a TLS host: the rustls configuration (CA, client certificate).
    tls: Option<std::sync::Arc<rustls::ClientConfig>>,
}

fn tls_error(msg: String) -> CliError {
    CliError::Status {
        message: msg,
        code: 1,
    }
}

/// The rustls client configuration for a TLS host: servers verified
/// against `ca` (name or IP SAN of the address), our certificate if given.
pub fn tls_client_config(
    ca: &std::path::Path,
    cert: Option<&std::path::Path>,
    key: Option<&std::path::Path>,
) -> Result<std::sync::Arc<rustls::ClientConfig>> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let read_certs = |what: &str, p: &std::path::Path| -> Result<Vec<CertificateDer<'static>>> {
        let v = CertificateDer::pem_file_iter(p)
            .and_then(|it| it.collect::<std::result::Result<Vec<_>, _>>())
            .map_err(|e| tls_error(format!("could not read {what} {}: {e}", p.display())))?;
        if v.is_empty() {
            return Err(tls_error(format!(
                "{what} {} holds no PEM certificate",
                p.display()
            )));
        }
        Ok(v)
    };
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in read_certs("CA certificate", ca)? {
        roots
            .add(c)
            .map_err(|e| tls_error(format!("CA certificate {}: {e}", ca.display())))?;
    }
    let b = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_error(format!("TLS configuration: {e}")))?
        .with_root_certificates(roots);
    let cfg = match (cert, key) {
        (Some(c), Some(k)) => {
            let chain = read_certs("certificate", c)?;
            let key = PrivateKeyDer::from_pem_file(k)
                .map_err(|e| tls_error(format!("could not read key {}: {e}", k.display())))?;
            b.with_client_auth_cert(chain, key)
                .map_err(|e| tls_error(format!("client certificate {}: {e}", c.display())))?
        }
        _ => b.with_no_client_auth(),
    };
    Ok(std::sync::Arc::new(cfg))
}

/// Docker's numeric comparison of "1.44"-style versions.
pub fn version_less(a: &str, b: &str) -> bool {
    let parse = |v: &str| -> Vec<u32> { v.split('.').map(|p| p.parse().unwrap_or(0)).collect() };
    parse(a) < parse(b)
}

/// Percent-encodes a query component (RFC 3986 unreserved kept).
pub fn encode_component(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `?a=b&c=d` from pairs (empty string if none).
pub fn query_string(pairs: &[(&str, String)]) -> String {
    if pairs.is_empty() {
        return String::new();
    }
    let q: Vec<String> = pairs
        .iter()
        .map(|(k, v)| format!("{}={}", encode_component(k), encode_component(v)))
        .collect();
    format!("?{}", q.join("&"))
}

/// The daemon's error message from an error response body.
pub fn error_message(body: &[u8]) -> String {
    match serde_json::from_slice::<Value>(body) {
        Ok(v) if v["message"].is_string() => v["message"].as_str().unwrap_or("").to_string(),
        _ => String::from_utf8_lossy(body).trim().to_string(),
    }
}

impl EngineClient {
    /// Connects to `host` and negotiates the API version with `/_ping`
    /// (`$ORCA_API_VERSION`/`$DOCKER_API_VERSION` pin it instead).
    pub async fn negotiate(host: DaemonHost) -> Result<EngineClient> {
        let tls = match &host {
            DaemonHost::Tls { ca, cert, key, .. } => {
                Some(tls_client_config(ca, cert.as_deref(), key.as_deref())?)
            }
            _ => None,
        };
        let mut c = EngineClient {
            host,
            api_version: CLIENT_API_VERSION.to_string(),
            tls,
        };
        let pinned = std::env::var("ORCA_API_VERSION")
            .or_else(|_| std::env::var("DOCKER_API_VERSION"))
            .ok()
            .filter(|v| !v.is_empty());
        if let Some(v) = pinned {
            c.api_version = v;
            return Ok(c);
        }
        let resp = c.send(Method::GET, "/_ping", None, &[]).await?;
        let server = resp
            .headers()
            .get("Api-Version")
            .and_then(|v| v.to_str().ok())
            .unwrap_or(FALLBACK_API_VERSION)
            .to_string();
        let _ = resp.into_body().collect().await;
        if version_less(&server, CLIENT_API_VERSION) {
            c.api_version = server;
        }
        debug!(api_version = %c.api_version, "negotiated");
        Ok(c)
    }

    /// The daemon address.
    pub fn host(&self) -> &DaemonHost {
        &self.host
    }

    /// The negotiated API version.
    pub fn api_version(&self) -> &str {
        &self.api_version
    }

    async fn connect(&self) -> Result<Box<dyn DaemonIo>> {
        let err = |source| CliError::Connect {
            host: self.host.display(),
            source,
        };
        Ok(match &self.host {
            DaemonHost::Unix(p) => Box::new(tokio::net::UnixStream::connect(p).await.map_err(err)?),
            DaemonHost::Tcp(a) => Box::new(tokio::net::TcpStream::connect(a).await.map_err(err)?),
            DaemonHost::Tls { addr, .. } => {
                let cfg = self
                    .tls
                    .clone()
                    .ok_or_else(|| tls_error("TLS host without a TLS configuration".into()))?;
                let tcp = tokio::net::TcpStream::connect(addr).await.map_err(err)?;
                let _ = tcp.set_nodelay(true);
                let host = match addr.rsplit_once(':') {
                    Some((h, _)) => h.trim_start_matches('[').trim_end_matches(']'),
                    None => addr.as_str(),
                };
                let name = rustls_pki_types::ServerName::try_from(host.to_string())
                    .map_err(|e| tls_error(format!("invalid TLS server name {host:?}: {e}")))?;
                let s = tokio_rustls::TlsConnector::from(cfg)
                    .connect(name, tcp)
                    .await
                    .map_err(|e| {
                        tls_error(format!(
                            "TLS handshake with {} failed: {e}",
                            self.host.display()
                        ))
                    })?;
                Box::new(s)
            }
        })
    }

    /// Sends one request on a fresh connection; `path` is unversioned
    /// ("/containers/json?all=1") except `/_ping`.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<(Bytes, &'static str)>,
        extra_headers: &[(&'static str, &'static str)],
    ) -> Result<Response<Incoming>> {
        let uri = if path == "/_ping" {
            path.to_string()
        } else {
            format!("/v{}{}", self.api_version, path)
        };
        debug!(%method, %uri, "request");
        let io = self.connect().await?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                debug!("connection closed: {e}");
            }
        });
        let mut req = Request::builder()
            .method(method)
            .uri(&uri)
            .header(header::HOST, "docker")
            .header(
                header::USER_AGENT,
                concat!("orca-cli/", env!("CARGO_PKG_VERSION")),
            );
        let body = match body {
            Some((bytes, content_type)) => {
                req = req.header(header::CONTENT_TYPE, content_type);
                bytes
            }
            None => Bytes::new(),
        };
        for (k, v) in extra_headers {
            req = req.header(*k, HeaderValue::from_static(v));
        }
        let req = req
            .body(Full::new(body))
            .map_err(|e| CliError::Protocol(format!("cannot build request: {e}")))?;
        match sender.send_request(req).await {
            Ok(r) => Ok(r),
            // TLS 1.3: a refused client certificate arrives as an alert on
            // the first read, after the handshake; say so.
            Err(e) if self.tls.is_some() => {
                let mut msg = e.to_string();
                let mut src = std::error::Error::source(&e);
                while let Some(s) = src {
                    msg.push_str(&format!(": {s}"));
                    src = s.source();
                }
                Err(tls_error(format!(
                    "TLS connection to {} failed: {msg}",
                    self.host.display()
                )))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Sends a request and turns an error status into [`CliError::Daemon`].
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Response<Incoming>> {
        let body = body.map(|v| (Bytes::from(v.to_string()), "application/json"));
        let resp = self.send(method, path, body, &[]).await?;
        check_status(resp).await
    }

    /// Sends raw bytes (a tar archive, an image) as the body.
    pub async fn call_with_bytes(
        &self,
        method: Method,
        path: &str,
        body: Bytes,
        content_type: &'static str,
    ) -> Result<Response<Incoming>> {
        let resp = self
            .send(method, path, Some((body, content_type)), &[])
            .await?;
        check_status(resp).await
    }

    /// A JSON call returning the decoded body (`Null` for an empty one).
    pub async fn json(&self, method: Method, path: &str, body: Option<&Value>) -> Result<Value> {
        let resp = self.call(method, path, body).await?;
        let bytes = resp.into_body().collect().await?.to_bytes();
        if bytes.iter().all(|b| b.is_ascii_whitespace()) {
            return Ok(Value::Null);
        }
        Ok(serde_json::from_slice(&bytes)?)
    }

    /// A request expecting a hijacked stream (attach, exec start).
    pub async fn hijack(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(AttachOutput, bool)> {
        let body = body.map(|v| (Bytes::from(v.to_string()), "application/json"));
        let resp = self
            .send(
                method,
                path,
                body,
                &[("Connection", "Upgrade"), ("Upgrade", "tcp")],
            )
            .await?;
        let raw = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|t| t.contains("raw-stream"));
        if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            let upgraded = hyper::upgrade::on(resp).await?;
            return Ok((AttachOutput::Hijacked(TokioIo::new(upgraded)), raw));
        }
        let resp = check_status(resp).await?;
        Ok((AttachOutput::Body(resp.into_body()), raw))
    }
}

/// Passes a success through; reads an error body into [`CliError::Daemon`].
pub async fn check_status(resp: Response<Incoming>) -> Result<Response<Incoming>> {
    let status = resp.status();
    if status.is_success() || status == StatusCode::SWITCHING_PROTOCOLS || status.as_u16() == 304 {
        return Ok(resp);
    }
    let bytes = resp.into_body().collect().await?.to_bytes();
    let mut message = error_message(&bytes);
    if message.is_empty() {
        message = status.canonical_reason().unwrap_or("error").to_string();
    }
    Err(CliError::Daemon {
        status: status.as_u16(),
        message,
    })
}

/// Splits a stream of concatenated JSON values (newline or `\r\n`
/// separated, possibly cut anywhere by the transport).
#[derive(Debug, Default)]
pub struct JsonStreamDecoder {
    buf: Vec<u8>,
}

impl JsonStreamDecoder {
    /// Appends bytes; returns every complete value.
    pub fn push(&mut self, data: &[u8]) -> Result<Vec<Value>> {
        self.buf.extend_from_slice(data);
        let mut out = Vec::new();
        let mut consumed = 0;
        {
            let mut it = serde_json::Deserializer::from_slice(&self.buf).into_iter::<Value>();
            loop {
                match it.next() {
                    Some(Ok(v)) => {
                        out.push(v);
                        consumed = it.byte_offset();
                    }
                    Some(Err(e)) if e.is_eof() => break,
                    Some(Err(e)) => return Err(e.into()),
                    None => {
                        consumed = it.byte_offset();
                        break;
                    }
                }
            }
        }
        self.buf.drain(..consumed);
        Ok(out)
    }
}

/// Reads the next data chunk of a body (`None` at the end).
pub async fn next_chunk(body: &mut Incoming) -> Result<Option<Bytes>> {
    loop {
        match body.frame().await {
            None => return Ok(None),
            Some(Err(e)) => return Err(e.into()),
            Some(Ok(f)) => {
                if let Ok(d) = f.into_data() {
                    return Ok(Some(d));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_and_versions() {
        assert_eq!(
            query_string(&[
                ("fromImage", "127.0.0.1:5000/busybox".into()),
                ("tag", "latest".into())
            ]),
            "?fromImage=127.0.0.1%3A5000%2Fbusybox&tag=latest"
        );
        assert_eq!(query_string(&[]), "");
        assert!(version_less("1.24", "1.44"));
        assert!(version_less("1.9", "1.10"));
        assert!(!version_less("1.44", "1.44"));
    }

    #[test]
    fn json_stream_survives_any_split() {
        let wire = b"{\"status\":\"a\"}\r\n{\"status\":\"b\",\"id\":\"x\"}\r\n";
        for cut in 0..wire.len() {
            let mut d = JsonStreamDecoder::default();
            let mut got = d.push(&wire[..cut]).unwrap();
            got.extend(d.push(&wire[cut..]).unwrap());
            assert_eq!(got.len(), 2, "cut at {cut}");
            assert_eq!(got[1]["id"], "x");
        }
    }

    #[test]
    fn error_messages() {
        assert_eq!(
            error_message(br#"{"message":"No such container: x"}"#),
            "No such container: x"
        );
        assert_eq!(error_message(b"plain text\n"), "plain text");
    }
}
