//! The registry client: requests with auth (anonymous, basic, bearer
//! token), scheme fallback, redirects; pull (manifests, blobs, bounded
//! parallel downloads) and push (blob exists/mount/upload, manifest PUT).

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use futures_util::{Stream, StreamExt, TryStreamExt};
use http::{header, HeaderValue, Method, Request, StatusCode, Uri};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;
use tracing::{debug, info, warn};

use crate::auth::{parse_www_authenticate, Challenge, Credentials};
use crate::error::{Error, Result};
use crate::hosts::{Endpoint, HostsConfig, SchemePolicy};
use crate::manifest::{
    is_index, is_manifest, select_platform, Descriptor, FetchedManifest, ImageManifest, Platform,
    Verifier, MANIFEST_ACCEPT, MT_OCI_MANIFEST,
};
use crate::reference::{validate_digest, Reference};
use crate::transport::{find_connect_error, ConnectErrorKind, Connector, TlsConfigs};

/// Parallel layer downloads, like dockerd's `max-concurrent-downloads`.
pub const DEFAULT_CONCURRENCY: usize = 3;

/// Largest manifest accepted (like containerd's 4 MiB limit).
const MAX_MANIFEST: usize = 4 << 20;
/// Time to wait for response headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(120);
const USER_AGENT: &str = concat!("orca-registry/", env!("CARGO_PKG_VERSION"));

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type ReqBody = UnsyncBoxBody<Bytes, BoxError>;

/// A stream of data to push (e.g. mapped from containerd's Content.Read).
pub type BlobSource = Pin<Box<dyn Stream<Item = Result<Bytes>> + Send>>;

/// A registry client. Cheap to clone; share one per process (connection
/// pool, learned schemes and token cache live inside).
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    hosts: HostsConfig,
    http: HyperClient<Connector, ReqBody>,
    /// Learned scheme per authority ("https"/"http") for fallback endpoints.
    schemes: Mutex<HashMap<String, &'static str>>,
    /// Bearer tokens: "authority|credentials-key|scopes" → token.
    tokens: Mutex<HashMap<String, CachedToken>>,
    /// Authorities that asked for Basic auth.
    basic: Mutex<HashSet<String>>,
}

struct CachedToken {
    token: String,
    expires: Instant,
}

/// The body of a request (streams cannot be retried after a 401).
enum Body {
    Empty,
    Bytes(Bytes),
    Stream(BlobSource),
}

impl Body {
    fn retryable(&self) -> Option<Body> {
        match self {
            Body::Empty => Some(Body::Empty),
            Body::Bytes(b) => Some(Body::Bytes(b.clone())),
            Body::Stream(_) => None,
        }
    }

    fn into_req_body(self) -> ReqBody {
        match self {
            Body::Empty => Empty::<Bytes>::new()
                .map_err(|never| match never {})
                .boxed_unsync(),
            Body::Bytes(b) => Full::new(b).map_err(|never| match never {}).boxed_unsync(),
            Body::Stream(s) => StreamBody::new(
                s.map_ok(Frame::data)
                    .map_err(|e| -> BoxError { Box::new(e) }),
            )
            .boxed_unsync(),
        }
    }
}

/// What to authenticate a request with.
struct AuthCtx<'a> {
    creds: &'a Credentials,
    scopes: Vec<String>,
}

impl Client {
    /// A client for a hosts configuration (validated here).
    pub fn new(hosts: HostsConfig) -> Result<Client> {
        hosts.validate()?;
        let tls = Arc::new(TlsConfigs::new(hosts.clone()));
        let http = HyperClient::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(Connector { tls });
        Ok(Client {
            inner: Arc::new(Inner {
                hosts,
                http,
                schemes: Mutex::new(HashMap::new()),
                tokens: Mutex::new(HashMap::new()),
                basic: Mutex::new(HashSet::new()),
            }),
        })
    }

    /// The hosts configuration.
    pub fn hosts(&self) -> &HostsConfig {
        &self.inner.hosts
    }

    /// A handle on one repository of a registry, with the credentials for
    /// that registry (mirrors are always spoken to anonymously).
    pub fn repository(&self, reference: &Reference, creds: Credentials) -> Repository {
        Repository {
            client: self.clone(),
            reference: reference.clone(),
            creds,
            chosen: Arc::new(Mutex::new(None)),
        }
    }

    /// `docker login`'s check: `GET /v2/` on the registry (a domain such as
    /// "docker.io" or "127.0.0.1:5000"), doing the token or basic dance with
    /// the credentials. Ok when the registry accepts them (or needs none).
    pub async fn ping(&self, domain: &str, creds: &Credentials) -> Result<()> {
        let ep = self.inner.hosts.registry_endpoint(domain);
        let auth = AuthCtx {
            creds,
            scopes: Vec::new(),
        };
        let (resp, url) = self
            .call(&ep, &auth, Method::GET, "/v2/", &[], Body::Empty, true)
            .await?;
        match resp.status() {
            s if s.is_success() => Ok(()),
            s @ (StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) => Err(Error::Unauthorized {
                status: s.as_u16(),
                message: format!(
                    "login attempt to {url} failed with status: {} {}",
                    s.as_u16(),
                    s.canonical_reason().unwrap_or("")
                ),
            }),
            _ => Err(error_from(resp, &format!("GET {url}")).await),
        }
    }

    fn creds_key(authority: &str, creds: &Credentials, scopes: &[String]) -> String {
        let mut s = scopes.to_vec();
        s.sort();
        s.dedup();
        format!("{authority}|{}|{}", creds.cache_key(), s.join(" "))
    }

    fn learned_scheme(&self, ep: &Endpoint) -> Vec<&'static str> {
        match ep.scheme {
            SchemePolicy::Https => vec!["https"],
            SchemePolicy::Http => vec!["http"],
            SchemePolicy::HttpsThenHttp => {
                match self
                    .inner
                    .schemes
                    .lock()
                    .expect("schemes lock")
                    .get(&ep.authority)
                {
                    Some(s) => vec![s],
                    None => vec!["https", "http"],
                }
            }
        }
    }

    /// Sends one request (no auth handling), mapping transport errors.
    async fn send_raw(
        &self,
        method: &Method,
        url: &Uri,
        headers: &[(header::HeaderName, String)],
        auth: Option<&str>,
        body: Body,
    ) -> Result<hyper::Response<Incoming>> {
        let mut b = Request::builder()
            .method(method.clone())
            .uri(url.clone())
            .header(header::USER_AGENT, USER_AGENT);
        for (k, v) in headers {
            b = b.header(k, v);
        }
        if let Some(a) = auth {
            b = b.header(header::AUTHORIZATION, a);
        }
        // A streamed upload's answer comes after the whole body: no header
        // timeout for those (the source's own pace rules).
        let streaming = matches!(body, Body::Stream(_));
        let req = b
            .body(body.into_req_body())
            .map_err(|e| Error::InvalidArgument(format!("bad request to {url}: {e}")))?;
        debug!(%method, %url, "registry request");
        let fut = self.inner.http.request(req);
        let answer = if streaming {
            Ok(fut.await)
        } else {
            tokio::time::timeout(HEADER_TIMEOUT, fut).await
        };
        match answer {
            Err(_) => Err(Error::Connect(format!(
                "{method} {url}: no answer within {}s",
                HEADER_TIMEOUT.as_secs()
            ))),
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => Err(match find_connect_error(&e) {
                Some(c) if c.kind == ConnectErrorKind::Tcp => {
                    Error::Connect(format!("{method} {url}: {}", c.message))
                }
                Some(c) => Error::Tls(format!("{method} {url}: {}", c.message)),
                None => {
                    let mut msg = e.to_string();
                    let mut src = std::error::Error::source(&e);
                    while let Some(s) = src {
                        msg.push_str(&format!(": {s}"));
                        src = s.source();
                    }
                    Error::Connect(format!("{method} {url}: {msg}"))
                }
            }),
        }
    }

    /// A request to an endpoint: picks the scheme (with fallback), adds
    /// cached auth, answers a 401 challenge once, follows redirects for
    /// GET/HEAD. `target` is a path ("/v2/…") or an absolute URL (upload
    /// locations). Returns the response and the URL finally asked.
    #[allow(clippy::too_many_arguments)]
    async fn call(
        &self,
        ep: &Endpoint,
        auth: &AuthCtx<'_>,
        method: Method,
        target: &str,
        headers: &[(header::HeaderName, String)],
        body: Body,
        follow_redirects: bool,
    ) -> Result<(hyper::Response<Incoming>, String)> {
        // Absolute URLs (upload locations) are used as they are.
        let absolute = target.starts_with("http://") || target.starts_with("https://");
        let schemes = if absolute {
            vec![""]
        } else {
            self.learned_scheme(ep)
        };
        let mut body = Some(body);
        let mut last_err = None;
        for (n, scheme) in schemes.iter().enumerate() {
            let url = if absolute {
                target.to_string()
            } else {
                format!("{scheme}://{}{target}", ep.authority)
            };
            let this_body = if n + 1 == schemes.len() {
                body.take().unwrap_or(Body::Empty)
            } else {
                match body.as_ref().and_then(Body::retryable) {
                    Some(b) => b,
                    None => body.take().unwrap_or(Body::Empty),
                }
            };
            match self
                .call_url(
                    ep,
                    auth,
                    &method,
                    &url,
                    headers,
                    this_body,
                    follow_redirects,
                )
                .await
            {
                Ok(r) => {
                    if !absolute && ep.scheme == SchemePolicy::HttpsThenHttp {
                        self.inner
                            .schemes
                            .lock()
                            .expect("schemes lock")
                            .insert(ep.authority.clone(), scheme);
                    }
                    return Ok((r, url));
                }
                // Certificate errors are never bypassed on a verified host;
                // insecure hosts do not verify, so they never get here.
                Err(e @ Error::Tls(_))
                    if n + 1 < schemes.len()
                        && !self.inner.hosts.is_insecure(&ep.authority)
                        && e.to_string().contains("invalid peer certificate") =>
                {
                    return Err(e)
                }
                Err(e @ (Error::Tls(_) | Error::Connect(_))) if n + 1 < schemes.len() => {
                    debug!(endpoint = %ep.authority, error = %e, "HTTPS failed; trying plain HTTP");
                    last_err = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last_err.unwrap_or_else(|| Error::Connect(format!("{} unreachable", ep.authority))))
    }

    #[allow(clippy::too_many_arguments)]
    async fn call_url(
        &self,
        ep: &Endpoint,
        auth: &AuthCtx<'_>,
        method: &Method,
        url: &str,
        headers: &[(header::HeaderName, String)],
        body: Body,
        follow_redirects: bool,
    ) -> Result<hyper::Response<Incoming>> {
        let mut uri: Uri = url
            .parse()
            .map_err(|e| Error::InvalidResponse(format!("bad registry URL {url:?}: {e}")))?;
        let mut body = Some(body);
        let mut retried_auth = false;
        let mut redirects = 0;
        loop {
            let same_host = uri.authority().map(|a| a.as_str()) == Some(ep.authority.as_str());
            let authz = if same_host {
                self.cached_auth(&ep.authority, auth)
            } else {
                None
            };
            let this_body = match body.as_ref().and_then(Body::retryable) {
                Some(b) => b,
                None => body.take().unwrap_or(Body::Empty),
            };
            let resp = self
                .send_raw(method, &uri, headers, authz.as_deref(), this_body)
                .await?;
            let status = resp.status();
            if status == StatusCode::UNAUTHORIZED && same_host && !retried_auth {
                let challenges: Vec<Challenge> = resp
                    .headers()
                    .get_all(header::WWW_AUTHENTICATE)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .flat_map(parse_www_authenticate)
                    .collect();
                if challenges.is_empty() {
                    return Ok(resp);
                }
                if body.is_none() {
                    // A streamed body is gone: the caller authenticates first.
                    return Ok(resp);
                }
                retried_auth = true;
                self.answer_challenge(ep, auth, &challenges).await?;
                continue;
            }
            if follow_redirects
                && status.is_redirection()
                && (method == Method::GET || method == Method::HEAD)
            {
                redirects += 1;
                if redirects > 5 {
                    return Err(Error::InvalidResponse(format!(
                        "{method} {url}: too many redirects"
                    )));
                }
                let loc = resp
                    .headers()
                    .get(header::LOCATION)
                    .and_then(|v| v.to_str().ok())
                    .ok_or_else(|| {
                        Error::InvalidResponse(format!("{method} {url}: redirect without Location"))
                    })?;
                uri = resolve_location(&uri, loc)?;
                continue;
            }
            return Ok(resp);
        }
    }

    fn cached_auth(&self, authority: &str, auth: &AuthCtx<'_>) -> Option<String> {
        if let Credentials::RegistryToken(t) = auth.creds {
            return Some(format!("Bearer {t}"));
        }
        let key = Self::creds_key(authority, auth.creds, &auth.scopes);
        {
            let mut tokens = self.inner.tokens.lock().expect("tokens lock");
            if let Some(t) = tokens.get(&key) {
                if t.expires > Instant::now() {
                    return Some(format!("Bearer {}", t.token));
                }
                tokens.remove(&key);
            }
        }
        if let Credentials::Basic { username, password } = auth.creds {
            if self
                .inner
                .basic
                .lock()
                .expect("basic lock")
                .contains(authority)
            {
                return Some(basic_header(username, password));
            }
        }
        None
    }

    async fn answer_challenge(
        &self,
        ep: &Endpoint,
        auth: &AuthCtx<'_>,
        challenges: &[Challenge],
    ) -> Result<()> {
        if let Some(c) = challenges.iter().find(|c| c.scheme == "bearer") {
            let token = self.fetch_token(ep, auth, c).await?;
            let key = Self::creds_key(&ep.authority, auth.creds, &auth.scopes);
            let mut tokens = self.inner.tokens.lock().expect("tokens lock");
            let now = Instant::now();
            tokens.retain(|_, t| t.expires > now);
            tokens.insert(key, token);
            return Ok(());
        }
        if challenges.iter().any(|c| c.scheme == "basic") {
            return match auth.creds {
                Credentials::Basic { .. } => {
                    self.inner
                        .basic
                        .lock()
                        .expect("basic lock")
                        .insert(ep.authority.clone());
                    Ok(())
                }
                _ => Err(Error::Unauthorized {
                    status: 401,
                    message: "no basic auth credentials".into(),
                }),
            };
        }
        let schemes: Vec<&str> = challenges.iter().map(|c| c.scheme.as_str()).collect();
        Err(Error::Unsupported(format!(
            "{} asks for authentication scheme {} which is not supported (only Basic and Bearer)",
            ep.authority,
            schemes.join(", ")
        )))
    }

    async fn fetch_token(
        &self,
        ep: &Endpoint,
        auth: &AuthCtx<'_>,
        c: &Challenge,
    ) -> Result<CachedToken> {
        let realm = c.param("realm").filter(|r| !r.is_empty()).ok_or_else(|| {
            Error::InvalidResponse(format!("{}: bearer challenge without realm", ep.authority))
        })?;
        let realm_uri: Uri = realm.parse().map_err(|e| {
            Error::InvalidResponse(format!("{}: bad token realm {realm:?}: {e}", ep.authority))
        })?;
        if !matches!(realm_uri.scheme_str(), Some("http") | Some("https")) {
            return Err(Error::InvalidResponse(format!(
                "{}: token realm {realm:?} is not an http(s) URL",
                ep.authority
            )));
        }
        let mut scopes: Vec<String> = Vec::new();
        if let Some(s) = c.param("scope") {
            scopes.extend(s.split(' ').filter(|s| !s.is_empty()).map(String::from));
        }
        for s in &auth.scopes {
            if !scopes.contains(s) {
                scopes.push(s.clone());
            }
        }
        let service = c.param("service");
        let enc = |s: &str| -> String {
            let mut out = String::new();
            for b in s.bytes() {
                if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                    out.push(b as char);
                } else {
                    out.push_str(&format!("%{b:02X}"));
                }
            }
            out
        };
        let mut params: Vec<(String, String)> = Vec::new();
        if let Some(s) = service {
            params.push(("service".into(), s.into()));
        }
        for s in &scopes {
            params.push(("scope".into(), s.clone()));
        }
        let (method, url, body, authz, headers) = match auth.creds {
            Credentials::IdentityToken(t) => {
                // OAuth2 refresh-token grant, as docker does with identity tokens.
                params.push(("grant_type".into(), "refresh_token".into()));
                params.push(("refresh_token".into(), t.clone()));
                params.push(("client_id".into(), "orca".into()));
                let form: Vec<String> = params
                    .iter()
                    .map(|(k, v)| format!("{k}={}", enc(v)))
                    .collect();
                (
                    Method::POST,
                    realm.to_string(),
                    Body::Bytes(Bytes::from(form.join("&"))),
                    None,
                    vec![(
                        header::CONTENT_TYPE,
                        "application/x-www-form-urlencoded".to_string(),
                    )],
                )
            }
            creds => {
                let q: Vec<String> = params
                    .iter()
                    .map(|(k, v)| format!("{k}={}", enc(v)))
                    .collect();
                let sep = if realm.contains('?') { '&' } else { '?' };
                let url = if q.is_empty() {
                    realm.to_string()
                } else {
                    format!("{realm}{sep}{}", q.join("&"))
                };
                let authz = match creds {
                    Credentials::Basic { username, password } => {
                        Some(basic_header(username, password))
                    }
                    _ => None,
                };
                (Method::GET, url, Body::Empty, authz, Vec::new())
            }
        };
        let uri: Uri = url
            .parse()
            .map_err(|e| Error::InvalidResponse(format!("bad token URL {url:?}: {e}")))?;
        debug!(realm, scopes = ?scopes, "fetching registry token");
        let resp = self
            .send_raw(&method, &uri, &headers, authz.as_deref(), body)
            .await?;
        let status = resp.status();
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            let detail = read_limited(resp, 64 << 10).await.unwrap_or_default();
            let msg = registry_message(&detail).unwrap_or_else(|| {
                if auth.creds.is_anonymous() {
                    "unauthorized: authentication required".into()
                } else {
                    "unauthorized: incorrect username or password".into()
                }
            });
            return Err(Error::Unauthorized {
                status: status.as_u16(),
                message: msg,
            });
        }
        if !status.is_success() {
            return Err(error_from(resp, &format!("token server {realm}")).await);
        }
        let raw = read_limited(resp, 1 << 20).await?;
        #[derive(Deserialize)]
        struct TokenResp {
            #[serde(default)]
            token: String,
            #[serde(default)]
            access_token: String,
            #[serde(default)]
            expires_in: Option<u64>,
        }
        let t: TokenResp = serde_json::from_slice(&raw).map_err(|e| {
            Error::InvalidResponse(format!("token server {realm} answered garbage: {e}"))
        })?;
        let token = if !t.access_token.is_empty() {
            t.access_token
        } else {
            t.token
        };
        if token.is_empty() || token.contains(['\r', '\n']) {
            return Err(Error::InvalidResponse(format!(
                "token server {realm} answered no usable token"
            )));
        }
        // Tokens live at least 60 s per the token spec; keep a margin.
        let ttl = t.expires_in.unwrap_or(60).clamp(10, 3600);
        Ok(CachedToken {
            token,
            expires: Instant::now() + Duration::from_secs(ttl.saturating_sub(5)),
        })
    }
}

fn basic_header(username: &str, password: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"))
    )
}

fn resolve_location(base: &Uri, loc: &str) -> Result<Uri> {
    if loc.starts_with("http://") || loc.starts_with("https://") {
        return loc
            .parse()
            .map_err(|e| Error::InvalidResponse(format!("bad Location {loc:?}: {e}")));
    }
    if !loc.starts_with('/') {
        return Err(Error::InvalidResponse(format!(
            "unsupported relative Location {loc:?}"
        )));
    }
    let scheme = base.scheme_str().unwrap_or("https");
    let auth = base.authority().map(|a| a.as_str()).unwrap_or("");
    format!("{scheme}://{auth}{loc}")
        .parse()
        .map_err(|e| Error::InvalidResponse(format!("bad Location {loc:?}: {e}")))
}

async fn read_limited(resp: hyper::Response<Incoming>, limit: usize) -> Result<Bytes> {
    let mut body = resp.into_body();
    let mut out = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| Error::Connect(format!("reading registry answer: {e}")))?;
        if let Ok(d) = frame.into_data() {
            if out.len() + d.len() > limit {
                return Err(Error::InvalidResponse(format!(
                    "registry answer larger than {limit} bytes"
                )));
            }
            out.extend_from_slice(&d);
        }
    }
    Ok(Bytes::from(out))
}

/// "code: message" from a registry error body
/// (`{"errors":[{"code","message"}]}`) or a token server's `details`.
fn registry_message(body: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct E {
        #[serde(default)]
        code: String,
        #[serde(default)]
        message: String,
    }
    #[derive(Deserialize)]
    struct Es {
        #[serde(default)]
        errors: Vec<E>,
        #[serde(default)]
        details: Option<String>,
    }
    let es: Es = serde_json::from_slice(body).ok()?;
    if let Some(d) = es.details.filter(|d| !d.is_empty()) {
        return Some(d);
    }
    let parts: Vec<String> = es
        .errors
        .iter()
        .map(|e| {
            let code = e.code.to_ascii_lowercase().replace('_', " ");
            match (code.is_empty(), e.message.is_empty()) {
                (false, false) => format!("{code}: {}", e.message),
                (false, true) => code,
                (true, _) => e.message.clone(),
            }
        })
        .collect();
    if parts.is_empty() {
        None
    } else {
        Some(parts.join("; "))
    }
}

/// Maps an unexpected response to an error: 401/403 → Unauthorized, 404 →
/// NotFound, others → Registry with the registry's message (or a cleaned
/// excerpt of a garbage body).
async fn error_from(resp: hyper::Response<Incoming>, what: &str) -> Error {
    let status = resp.status();
    let body = read_limited(resp, 64 << 10).await.unwrap_or_default();
    let msg = registry_message(&body);
    match status {
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Error::Unauthorized {
            status: status.as_u16(),
            message: msg.unwrap_or_else(|| {
                if status == StatusCode::FORBIDDEN {
                    "denied: requested access to the resource is denied".into()
                } else {
                    "unauthorized: authentication required".into()
                }
            }),
        },
        StatusCode::NOT_FOUND => Error::NotFound(match msg {
            Some(m) => format!("{what} not found: {m}"),
            None => format!("{what} not found"),
        }),
        _ => {
            let detail = msg.unwrap_or_else(|| {
                let text: String = String::from_utf8_lossy(&body)
                    .chars()
                    .filter(|c| !c.is_control() || *c == ' ')
                    .take(200)
                    .collect();
                if text.trim().is_empty() {
                    status.canonical_reason().unwrap_or("").to_string()
                } else {
                    text.trim().to_string()
                }
            });
            Error::Registry {
                status: status.as_u16(),
                message: format!(
                    "{what}: registry answered {} {}: {detail}",
                    status.as_u16(),
                    status.canonical_reason().unwrap_or("")
                ),
            }
        }
    }
}

fn header_str(resp: &hyper::Response<Incoming>, h: header::HeaderName) -> Option<&str> {
    resp.headers()
        .get(h)
        .and_then(|v: &HeaderValue| v.to_str().ok())
}

/// A manifest resolved for a platform.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// The index (or Docker manifest list) when the reference named one.
    pub index: Option<FetchedManifest>,
    /// The platform's image manifest (raw).
    pub manifest: FetchedManifest,
    /// The parsed image manifest.
    pub image: ImageManifest,
    /// The endpoint (host[:port]) that served it: a mirror or the registry.
    pub endpoint: String,
}

/// A blob being downloaded. [`BlobStream::next_chunk`] verifies size and
/// digest as the data goes: the last call fails on a mismatch.
pub struct BlobStream {
    body: Incoming,
    desc: Descriptor,
    verifier: Option<Verifier>,
}

impl BlobStream {
    /// The descriptor being fetched.
    pub fn descriptor(&self) -> &Descriptor {
        &self.desc
    }

    /// Bytes received so far.
    pub fn received(&self) -> u64 {
        self.verifier
            .as_ref()
            .map(Verifier::seen)
            .unwrap_or(self.desc.size)
    }

    /// The next chunk, `None` at the (verified) end.
    pub async fn next_chunk(&mut self) -> Result<Option<Bytes>> {
        loop {
            let Some(v) = self.verifier.as_mut() else {
                return Ok(None);
            };
            match self.body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(d) = frame.into_data() {
                        v.update(&d)?;
                        if !d.is_empty() {
                            return Ok(Some(d));
                        }
                    }
                }
                Some(Err(e)) => {
                    return Err(Error::Connect(format!(
                        "reading blob {}: {e}",
                        self.desc.digest
                    )))
                }
                None => {
                    let v = self.verifier.take().expect("checked above");
                    v.finish()?;
                    return Ok(None);
                }
            }
        }
    }

    /// As a `Stream` of verified chunks.
    pub fn into_stream(self) -> impl Stream<Item = Result<Bytes>> + Send {
        futures_util::stream::try_unfold(self, |mut s| async move {
            Ok(s.next_chunk().await?.map(|c| (c, s)))
        })
    }
}

/// One repository of a registry, with credentials. Cheap to clone. After
/// [`Repository::resolve`], blobs come from the endpoint that served the
/// manifest (a mirror or the registry).
#[derive(Clone)]
pub struct Repository {
    client: Client,
    reference: Reference,
    creds: Credentials,
    chosen: Arc<Mutex<Option<Endpoint>>>,
}

impl Repository {
    /// The reference this handle was made for.
    pub fn reference(&self) -> &Reference {
        &self.reference
    }

    fn pull_scope(&self) -> Vec<String> {
        vec![format!("repository:{}:pull", self.reference.path)]
    }

    fn push_scope(&self) -> Vec<String> {
        vec![format!("repository:{}:pull,push", self.reference.path)]
    }

    fn creds_for(&self, ep: &Endpoint) -> &Credentials {
        static ANON: Credentials = Credentials::Anonymous;
        if ep.mirror {
            &ANON
        } else {
            &self.creds
        }
    }

    fn pull_endpoint(&self) -> Endpoint {
        self.chosen
            .lock()
            .expect("chosen lock")
            .clone()
            .unwrap_or_else(|| {
                self.client
                    .inner
                    .hosts
                    .registry_endpoint(&self.reference.domain)
            })
    }

    fn push_endpoint(&self) -> Endpoint {
        self.client
            .inner
            .hosts
            .registry_endpoint(&self.reference.domain)
    }

    /// Resolves the reference's tag or digest to an image manifest for a
    /// platform (an index is narrowed with [`select_platform`]). Mirrors are
    /// tried first, in order; any mirror failure falls through to the next.
    pub async fn resolve(&self, platform: &Platform) -> Result<Resolved> {
        let eps = self
            .client
            .inner
            .hosts
            .pull_endpoints(&self.reference.domain)?;
        let n = eps.len();
        let mut last = None;
        for (i, ep) in eps.into_iter().enumerate() {
            match self.resolve_at(&ep, platform).await {
                Ok(r) => {
                    *self.chosen.lock().expect("chosen lock") = Some(ep);
                    return Ok(r);
                }
                Err(e) if i + 1 < n => {
                    warn!(mirror = %ep.authority, reference = %self.reference.full(), error = %e,
                          "mirror failed; trying the next endpoint");
                    last = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| Error::Config("no endpoint".into())))
    }

    async fn resolve_at(&self, ep: &Endpoint, platform: &Platform) -> Result<Resolved> {
        let top = self.manifest_at(ep, &self.reference.object()).await?;
        let (index, manifest) = if is_index(&top.media_type) {
            let idx = top.index()?;
            let d = select_platform(&idx, platform)?.clone();
            let m = self.manifest_at(ep, &d.digest).await?;
            if !is_manifest(&m.media_type) {
                return Err(Error::Unsupported(format!(
                    "manifest {} has unsupported media type {}",
                    d.digest, m.media_type
                )));
            }
            if m.bytes.len() as u64 != d.size {
                return Err(Error::SizeMismatch {
                    what: format!("manifest {}", d.digest),
                    expected: d.size,
                    actual: m.bytes.len() as u64,
                });
            }
            (Some(top), m)
        } else if is_manifest(&top.media_type) {
            (None, top)
        } else {
            return Err(Error::Unsupported(format!(
                "{}: unsupported manifest media type {:?} (only Docker schema 2 and OCI)",
                self.reference.full(),
                top.media_type
            )));
        };
        let image = manifest.image_manifest()?;
        info!(reference = %self.reference.full(), endpoint = %ep.authority,
              digest = %manifest.digest, "resolved");
        Ok(Resolved {
            index,
            manifest,
            image,
            endpoint: ep.authority.clone(),
        })
    }

    /// Fetches a manifest or index by tag or digest (from the endpoint chosen
    /// by `resolve`, else the registry). A digest is verified.
    pub async fn fetch_manifest(&self, object: &str) -> Result<FetchedManifest> {
        let ep = self.pull_endpoint();
        self.manifest_at(&ep, object).await
    }

    async fn manifest_at(&self, ep: &Endpoint, object: &str) -> Result<FetchedManifest> {
        if object.contains(':') {
            validate_digest(object)?;
        }
        let path = format!("/v2/{}/manifests/{object}", self.reference.path);
        let auth = AuthCtx {
            creds: self.creds_for(ep),
            scopes: self.pull_scope(),
        };
        let what = format!("manifest for {}:{object}", self.reference.name());
        let (resp, _) = self
            .client
            .call(
                ep,
                &auth,
                Method::GET,
                &path,
                &[(header::ACCEPT, MANIFEST_ACCEPT.to_string())],
                Body::Empty,
                true,
            )
            .await?;
        if !resp.status().is_success() {
            return Err(error_from(resp, &what).await);
        }
        let ct = header_str(&resp, header::CONTENT_TYPE)
            .unwrap_or("")
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_string();
        let header_digest =
            header_str(&resp, "docker-content-digest".parse().expect("header")).map(String::from);
        let bytes = read_limited(resp, MAX_MANIFEST)
            .await
            .map_err(|e| Error::InvalidResponse(format!("{what}: {e}")))?;
        let digest = crate::manifest::sha256_digest(&bytes);
        if object.contains(':') && object != digest {
            return Err(Error::DigestMismatch {
                what,
                expected: object.into(),
                actual: digest,
            });
        }
        if let Some(h) = header_digest {
            if h.starts_with("sha256:") && h != digest {
                return Err(Error::DigestMismatch {
                    what: format!("{what} (Docker-Content-Digest)"),
                    expected: h,
                    actual: digest,
                });
            }
        }
        let body_mt = serde_json::from_slice::<serde_json::Value>(&bytes)
            .map_err(|e| Error::InvalidResponse(format!("{what}: not JSON: {e}")))?
            .get("mediaType")
            .and_then(|v| v.as_str())
            .map(String::from);
        let media_type = if ct.is_empty() || ct == "application/json" || ct == "text/plain" {
            match body_mt {
                Some(m) => m,
                None => {
                    // OCI manifests may omit mediaType: tell by shape.
                    let v: serde_json::Value =
                        serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
                    if v.get("manifests").is_some() {
                        crate::manifest::MT_OCI_INDEX.to_string()
                    } else {
                        MT_OCI_MANIFEST.to_string()
                    }
                }
            }
        } else {
            ct
        };
        Ok(FetchedManifest {
            media_type,
            digest,
            bytes,
        })
    }

    /// Starts downloading a blob; the stream verifies size and digest.
    pub async fn fetch_blob(&self, desc: &Descriptor) -> Result<BlobStream> {
        let verifier = Verifier::new(&desc.digest, Some(desc.size))?;
        let ep = self.pull_endpoint();
        let path = format!("/v2/{}/blobs/{}", self.reference.path, desc.digest);
        let auth = AuthCtx {
            creds: self.creds_for(&ep),
            scopes: self.pull_scope(),
        };
        let (resp, _) = self
            .client
            .call(&ep, &auth, Method::GET, &path, &[], Body::Empty, true)
            .await?;
        if !resp.status().is_success() {
            return Err(error_from(resp, &format!("blob {}", desc.digest)).await);
        }
        if let Some(len) =
            header_str(&resp, header::CONTENT_LENGTH).and_then(|l| l.parse::<u64>().ok())
        {
            if len != desc.size {
                return Err(Error::SizeMismatch {
                    what: format!("blob {}", desc.digest),
                    expected: desc.size,
                    actual: len,
                });
            }
        }
        Ok(BlobStream {
            body: resp.into_body(),
            desc: desc.clone(),
            verifier: Some(verifier),
        })
    }

    /// Downloads a (small) blob into memory, verified; refuses more than `max` bytes.
    pub async fn fetch_blob_bytes(&self, desc: &Descriptor, max: u64) -> Result<Bytes> {
        if desc.size > max {
            return Err(Error::InvalidResponse(format!(
                "blob {} is {} bytes, more than the {max} allowed",
                desc.digest, desc.size
            )));
        }
        let mut s = self.fetch_blob(desc).await?;
        let mut out = Vec::with_capacity(desc.size as usize);
        while let Some(c) = s.next_chunk().await? {
            out.extend_from_slice(&c);
        }
        Ok(Bytes::from(out))
    }

    /// Downloads blobs with at most `concurrency` at a time (0 → 3), giving
    /// each stream to `f(index, descriptor, stream)`. Results come back in
    /// the order of `descs`; the first error cancels the rest.
    pub async fn for_each_blob<T, E, F, Fut>(
        &self,
        descs: &[Descriptor],
        concurrency: usize,
        f: F,
    ) -> std::result::Result<Vec<T>, E>
    where
        E: From<Error>,
        F: Fn(usize, Descriptor, BlobStream) -> Fut,
        Fut: Future<Output = std::result::Result<T, E>>,
    {
        let limit = if concurrency == 0 {
            DEFAULT_CONCURRENCY
        } else {
            concurrency
        };
        let f = &f;
        let mut done: Vec<(usize, T)> =
            futures_util::stream::iter(descs.iter().cloned().enumerate())
                .map(|(i, d)| async move {
                    let s = self.fetch_blob(&d).await.map_err(E::from)?;
                    f(i, d, s).await.map(|t| (i, t))
                })
                .buffer_unordered(limit)
                .try_collect()
                .await?;
        done.sort_by_key(|(i, _)| *i);
        Ok(done.into_iter().map(|(_, t)| t).collect())
    }

    /// HEAD a blob on the registry: its size when present.
    pub async fn blob_exists(&self, digest: &str) -> Result<Option<u64>> {
        validate_digest(digest)?;
        let ep = self.push_endpoint();
        let path = format!("/v2/{}/blobs/{digest}", self.reference.path);
        let auth = AuthCtx {
            creds: &self.creds,
            scopes: self.push_scope(),
        };
        let (resp, _) = self
            .client
            .call(&ep, &auth, Method::HEAD, &path, &[], Body::Empty, true)
            .await?;
        match resp.status() {
            s if s.is_success() => Ok(Some(
                header_str(&resp, header::CONTENT_LENGTH)
                    .and_then(|l| l.parse().ok())
                    .unwrap_or(0),
            )),
            StatusCode::NOT_FOUND => Ok(None),
            _ => Err(error_from(resp, &format!("blob {digest}")).await),
        }
    }

    async fn start_upload(
        &self,
        query: &str,
        extra_scopes: &[String],
    ) -> Result<(StatusCode, Option<String>)> {
        let ep = self.push_endpoint();
        let path = format!("/v2/{}/blobs/uploads/{query}", self.reference.path);
        let mut scopes = self.push_scope();
        scopes.extend_from_slice(extra_scopes);
        let auth = AuthCtx {
            creds: &self.creds,
            scopes,
        };
        let (resp, url) = self
            .client
            .call(
                &ep,
                &auth,
                Method::POST,
                &path,
                &[(header::CONTENT_LENGTH, "0".into())],
                Body::Empty,
                false,
            )
            .await?;
        let status = resp.status();
        if status != StatusCode::ACCEPTED && status != StatusCode::CREATED {
            return Err(error_from(
                resp,
                &format!("starting an upload to {}", self.reference.name()),
            )
            .await);
        }
        let loc = header_str(&resp, header::LOCATION).map(|l| {
            let base: Uri = url.parse().unwrap_or_default();
            resolve_location(&base, l).map(|u| u.to_string())
        });
        let loc = match loc {
            Some(r) => Some(r?),
            None => None,
        };
        Ok((status, loc))
    }

    /// Cross-repository mount from another repository of the same registry:
    /// true when mounted, false when the registry declined (then upload).
    pub async fn mount_blob(&self, desc: &Descriptor, from_path: &str) -> Result<bool> {
        validate_digest(&desc.digest)?;
        if from_path.is_empty() || from_path == self.reference.path {
            return Ok(false);
        }
        let from_scope = vec![format!("repository:{from_path}:pull")];
        let q = format!("?mount={}&from={}", desc.digest, from_path);
        let (status, loc) = self.start_upload(&q, &from_scope).await?;
        if status == StatusCode::CREATED {
            return Ok(true);
        }
        // Declined: cancel the session the registry opened instead.
        if let Some(loc) = loc {
            let auth = AuthCtx {
                creds: &self.creds,
                scopes: self.push_scope(),
            };
            let ep = self.push_endpoint();
            let _ = self
                .client
                .call(&ep, &auth, Method::DELETE, &loc, &[], Body::Empty, false)
                .await;
        }
        Ok(false)
    }

    fn with_digest(loc: &str, digest: &str) -> String {
        let sep = if loc.contains('?') { '&' } else { '?' };
        format!("{loc}{sep}digest={digest}")
    }

    async fn finish_upload(
        &self,
        loc: &str,
        desc: &Descriptor,
        body: Body,
        len: u64,
    ) -> Result<()> {
        let ep = self.push_endpoint();
        let auth = AuthCtx {
            creds: &self.creds,
            scopes: self.push_scope(),
        };
        let url = Self::with_digest(loc, &desc.digest);
        let (resp, _) = self
            .client
            .call(
                &ep,
                &auth,
                Method::PUT,
                &url,
                &[
                    (header::CONTENT_TYPE, "application/octet-stream".into()),
                    (header::CONTENT_LENGTH, len.to_string()),
                ],
                body,
                false,
            )
            .await?;
        if resp.status() != StatusCode::CREATED && !resp.status().is_success() {
            return Err(error_from(resp, &format!("uploading blob {}", desc.digest)).await);
        }
        Ok(())
    }

    /// Monolithic upload: POST, then PUT `?digest=` with the data (verified
    /// against the descriptor first).
    pub async fn push_blob(&self, desc: &Descriptor, data: Bytes) -> Result<()> {
        let mut v = Verifier::new(&desc.digest, Some(desc.size))?;
        v.update(&data)?;
        v.finish()?;
        let (_, loc) = self.start_upload("", &[]).await?;
        let loc = loc.ok_or_else(|| {
            Error::InvalidResponse("registry started an upload without a Location".into())
        })?;
        let len = data.len() as u64;
        self.finish_upload(&loc, desc, Body::Bytes(data), len).await
    }

    /// Streamed upload: POST, one PATCH carrying the stream, then PUT
    /// `?digest=` (the registry verifies the digest).
    pub async fn push_blob_stream(&self, desc: &Descriptor, source: BlobSource) -> Result<()> {
        validate_digest(&desc.digest)?;
        let (_, loc) = self.start_upload("", &[]).await?;
        let loc = loc.ok_or_else(|| {
            Error::InvalidResponse("registry started an upload without a Location".into())
        })?;
        let ep = self.push_endpoint();
        let auth = AuthCtx {
            creds: &self.creds,
            scopes: self.push_scope(),
        };
        let (resp, url) = self
            .client
            .call(
                &ep,
                &auth,
                Method::PATCH,
                &loc,
                &[(header::CONTENT_TYPE, "application/octet-stream".into())],
                Body::Stream(source),
                false,
            )
            .await?;
        if resp.status() != StatusCode::ACCEPTED && !resp.status().is_success() {
            return Err(error_from(resp, &format!("uploading blob {}", desc.digest)).await);
        }
        let next = match header_str(&resp, header::LOCATION) {
            Some(l) => {
                let base: Uri = url.parse().unwrap_or_default();
                resolve_location(&base, l)?.to_string()
            }
            None => loc,
        };
        self.finish_upload(&next, desc, Body::Empty, 0).await
    }

    /// PUT a manifest under a tag or digest with its media type; returns
    /// its digest.
    pub async fn push_manifest(
        &self,
        tag_or_digest: &str,
        media_type: &str,
        bytes: Bytes,
    ) -> Result<String> {
        let digest = crate::manifest::sha256_digest(&bytes);
        if tag_or_digest.contains(':') && tag_or_digest != digest {
            return Err(Error::DigestMismatch {
                what: "manifest".into(),
                expected: tag_or_digest.into(),
                actual: digest,
            });
        }
        let ep = self.push_endpoint();
        let auth = AuthCtx {
            creds: &self.creds,
            scopes: self.push_scope(),
        };
        let path = format!("/v2/{}/manifests/{tag_or_digest}", self.reference.path);
        let len = bytes.len();
        let (resp, _) = self
            .client
            .call(
                &ep,
                &auth,
                Method::PUT,
                &path,
                &[
                    (header::CONTENT_TYPE, media_type.to_string()),
                    (header::CONTENT_LENGTH, len.to_string()),
                ],
                Body::Bytes(bytes),
                false,
            )
            .await?;
        if !resp.status().is_success() {
            return Err(error_from(
                resp,
                &format!("manifest {}:{tag_or_digest}", self.reference.name()),
            )
            .await);
        }
        if let Some(h) = header_str(&resp, "docker-content-digest".parse().expect("header")) {
            if h != digest {
                warn!(registry_digest = h, digest = %digest, "registry reports another manifest digest");
            }
        }
        Ok(digest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_messages() {
        assert_eq!(
            registry_message(br#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required","detail":null}]}"#).as_deref(),
            Some("unauthorized: authentication required")
        );
        assert_eq!(
            registry_message(
                br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}"#
            )
            .as_deref(),
            Some("manifest unknown: manifest unknown")
        );
        assert_eq!(registry_message(b"<html>oops</html>"), None);
        assert_eq!(
            registry_message(br#"{"details":"incorrect username or password"}"#).as_deref(),
            Some("incorrect username or password")
        );
    }

    #[test]
    fn locations() {
        let base: Uri = "http://127.0.0.1:5000/v2/x/blobs/uploads/".parse().unwrap();
        assert_eq!(
            resolve_location(&base, "/v2/x/blobs/uploads/abc?_state=1")
                .unwrap()
                .to_string(),
            "http://127.0.0.1:5000/v2/x/blobs/uploads/abc?_state=1"
        );
        assert_eq!(
            resolve_location(&base, "https://s3.example/b?sig=1")
                .unwrap()
                .to_string(),
            "https://s3.example/b?sig=1"
        );
        assert!(resolve_location(&base, "relative").is_err());
        assert_eq!(
            Repository::with_digest("http://h/u?_state=1", "sha256:ab"),
            "http://h/u?_state=1&digest=sha256:ab"
        );
    }
}
