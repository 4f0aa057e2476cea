//! The Docker Engine API client: one HTTP/1.1 connection per request over
//! the daemon's unix socket (or TCP), API version negotiated lazily (a
//! daemon's "too new" answer), JSON calls, streamed bodies and hijacked
//! (upgraded) streams.

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
    /// The API version in request paths: ours until a daemon answers that
    /// it is too new (then the daemon's, see [`EngineClient::send`]), or
    /// the pinned one.
    api_version: std::sync::Arc<std::sync::Mutex<String>>,
    /// `$ORCA_API_VERSION`/`$DOCKER_API_VERSION` set it: never renegotiated.
    pinned: bool,
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
    /// A client for `host`. The API version is negotiated lazily instead of
    /// by a `/_ping` first (a round trip per command): requests go out with
    /// our version, and a daemon that only speaks an older one rejects it
    /// with 400 and its own version in the `Api-Version` header (dockerd's
    /// version check runs before any handler), whereupon the request is
    /// sent again with that version and the client keeps it.
    /// `$ORCA_API_VERSION`/`$DOCKER_API_VERSION` pin the version instead.
    pub async fn negotiate(host: DaemonHost) -> Result<EngineClient> {
        let tls = match &host {
            DaemonHost::Tls { ca, cert, key, .. } => {
                Some(tls_client_config(ca, cert.as_deref(), key.as_deref())?)
            }
            _ => None,
        };
        let pinned = std::env::var("ORCA_API_VERSION")
            .or_else(|_| std::env::var("DOCKER_API_VERSION"))
            .ok()
            .filter(|v| !v.is_empty());
        Ok(EngineClient {
            host,
            pinned: pinned.is_some(),
            api_version: std::sync::Arc::new(std::sync::Mutex::new(
                pinned.unwrap_or_else(|| CLIENT_API_VERSION.to_string()),
            )),
            tls,
        })
    }

    /// The daemon's version when `resp` is its refusal of ours as too new.
    fn older_daemon_version(&self, resp: &Response<Incoming>) -> Option<String> {
        if self.pinned || resp.status() != StatusCode::BAD_REQUEST {
            return None;
        }
        let server = resp
            .headers()
            .get("Api-Version")
            .and_then(|v| v.to_str().ok())?;
        version_less(server, &self.api_version()).then(|| server.to_string())
    }

    /// The daemon address.
    pub fn host(&self) -> &DaemonHost {
        &self.host
    }

    /// The API version requests use now.
    pub fn api_version(&self) -> String {
        self.api_version
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
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
    /// ("/containers/json?all=1") except `/_ping`. A daemon refusing our API
    /// version as too new gets the request again with its own (see
    /// [`EngineClient::negotiate`]).
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<(Bytes, &'static str)>,
        extra_headers: &[(&'static str, &'static str)],
    ) -> Result<Response<Incoming>> {
        let resp = self
            .send_once(method.clone(), path, body.clone(), extra_headers)
            .await?;
        let Some(server) = self.older_daemon_version(&resp) else {
            return Ok(resp);
        };
        debug!(api_version = %server, "daemon speaks an older API version");
        *self.api_version.lock().unwrap_or_else(|p| p.into_inner()) = server;
        self.send_once(method, path, body, extra_headers).await
    }

    async fn send_once(
        &self,
        method: Method,
        path: &str,
        body: Option<(Bytes, &'static str)>,
        extra_headers: &[(&'static str, &'static str)],
    ) -> Result<Response<Incoming>> {
        let uri = if path == "/_ping" {
            path.to_string()
        } else {
            format!("/v{}{}", self.api_version(), path)
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

    /// A daemon on a unix socket that speaks API 1.41 as dockerd does:
    /// a newer version in the path gets 400 with `Api-Version: 1.41`
    /// (`bad` requests get a 400 without that header). Returns the socket
    /// and the request lines it saw.
    fn old_daemon(
        dir: &std::path::Path,
        connections: usize,
    ) -> (std::path::PathBuf, std::thread::JoinHandle<Vec<String>>) {
        use std::io::{BufRead, BufReader, Write};
        let sock = dir.join("d.sock");
        let l = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let t = std::thread::spawn(move || {
            let mut seen = Vec::new();
            for _ in 0..connections {
                let (s, _) = l.accept().unwrap();
                let mut r = BufReader::new(s.try_clone().unwrap());
                let mut line = String::new();
                r.read_line(&mut line).unwrap();
                loop {
                    let mut h = String::new();
                    r.read_line(&mut h).unwrap();
                    if h == "\r\n" || h.is_empty() {
                        break;
                    }
                }
                let path = line.split(' ').nth(1).unwrap_or("").to_string();
                seen.push(line.trim_end().to_string());
                let (status, extra, body) = if path.contains("bad") {
                    ("400 Bad Request", "", r#"{"message":"bad parameter"}"#)
                } else if path.starts_with("/v1.44/") {
                    (
                        "400 Bad Request",
                        "Api-Version: 1.41\r\n",
                        r#"{"message":"client version 1.44 is too new. Maximum supported API version is 1.41"}"#,
                    )
                } else {
                    ("200 OK", "Api-Version: 1.41\r\n", "[]")
                };
                let mut w = s;
                write!(
                    w,
                    "HTTP/1.1 {status}\r\n{extra}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                )
                .unwrap();
            }
            seen
        });
        (sock, t)
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    fn client(sock: std::path::PathBuf) -> EngineClient {
        EngineClient {
            host: DaemonHost::Unix(sock),
            api_version: std::sync::Arc::new(std::sync::Mutex::new(CLIENT_API_VERSION.into())),
            pinned: false,
            tls: None,
        }
    }

    #[test]
    fn an_older_daemon_gets_the_request_again_in_its_version() {
        let dir = tempfile::tempdir().unwrap();
        let (sock, daemon) = old_daemon(dir.path(), 3);
        let rt = runtime();
        let c = client(sock);
        rt.block_on(async {
            let r = c.call(Method::GET, "/containers/json", None).await.unwrap();
            assert_eq!(r.status(), StatusCode::OK);
            assert_eq!(c.api_version(), "1.41");
            // Kept for the next request: no second refusal.
            let r = c.call(Method::GET, "/images/json", None).await.unwrap();
            assert_eq!(r.status(), StatusCode::OK);
        });
        assert_eq!(
            daemon.join().unwrap(),
            [
                "GET /v1.44/containers/json HTTP/1.1",
                "GET /v1.41/containers/json HTTP/1.1",
                "GET /v1.41/images/json HTTP/1.1",
            ]
        );
    }

    #[test]
    fn other_bad_requests_are_not_sent_again() {
        let dir = tempfile::tempdir().unwrap();
        let (sock, daemon) = old_daemon(dir.path(), 1);
        let rt = runtime();
        let c = client(sock);
        let err = rt.block_on(c.call(Method::GET, "/bad", None)).unwrap_err();
        assert!(err.to_string().contains("bad parameter"), "{err}");
        assert_eq!(c.api_version(), CLIENT_API_VERSION);
        assert_eq!(daemon.join().unwrap(), ["GET /v1.44/bad HTTP/1.1"]);
    }

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
