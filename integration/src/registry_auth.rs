//! Registries that need more than plain HTTP: Debian's `docker-registry`
//! with htpasswd (basic) auth, token auth (our own small token server
//! issuing ES256 JWTs with the signing cert in `x5c`), or TLS with a test CA
//! made by `openssl`; and a fake registry answering 500s or garbage.
//!
//! Every piece lives in its own temp dir on 127.0.0.1 ephemeral ports and
//! stops on drop.

use std::collections::HashMap;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use tempfile::TempDir;

use crate::util::{assert_success, free_port, output_of, require_tool, terminate, wait_until};

/// Test PKI made with `openssl`: a CA, a server certificate for
/// 127.0.0.1/localhost signed by it, and a self-signed EC P-256 token
/// signing certificate with its PKCS#8 key.
pub struct Pki {
    dir: TempDir,
}

fn openssl(dir: &Path, args: &[&str]) {
    let bin = require_tool("openssl");
    let out = output_of(
        Command::new(bin)
            .args(args)
            .current_dir(dir)
            .stdin(Stdio::null()),
    );
    assert_success(&out, &format!("openssl {args:?}"));
}

impl Pki {
    /// Creates the CA, server and token-signing material.
    #[track_caller]
    pub fn new() -> Pki {
        let dir = tempfile::Builder::new()
            .prefix("orca-pki-")
            .tempdir()
            .unwrap_or_else(|e| panic!("cannot create a temp dir: {e}"));
        let d = dir.path();
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        let mut a = vec!["req", "-x509"];
        a.extend(ec);
        a.extend([
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "2",
            "-subj",
            "/CN=orca test CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ]);
        openssl(d, &a);
        let mut a = vec!["req"];
        a.extend(ec);
        a.extend([
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ]);
        openssl(d, &a);
        fs::write(
            d.join("server.ext"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n\
             keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
        )
        .expect("write server.ext");
        openssl(
            d,
            &[
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                "server.crt",
                "-days",
                "2",
                "-extfile",
                "server.ext",
            ],
        );
        let mut a = vec!["req", "-x509"];
        a.extend(ec);
        a.extend([
            "-keyout",
            "token.key",
            "-out",
            "token.crt",
            "-days",
            "2",
            "-subj",
            "/CN=orca test token signer",
        ]);
        openssl(d, &a);
        openssl(
            d,
            &[
                "pkcs8",
                "-topk8",
                "-nocrypt",
                "-in",
                "token.key",
                "-outform",
                "DER",
                "-out",
                "token.pk8",
            ],
        );
        openssl(
            d,
            &[
                "x509",
                "-in",
                "token.crt",
                "-outform",
                "DER",
                "-out",
                "token.der",
            ],
        );
        Pki { dir }
    }

    /// The CA certificate (PEM).
    pub fn ca_cert(&self) -> PathBuf {
        self.dir.path().join("ca.crt")
    }
    /// The server certificate (PEM) for 127.0.0.1.
    pub fn server_cert(&self) -> PathBuf {
        self.dir.path().join("server.crt")
    }
    /// The server key (PEM).
    pub fn server_key(&self) -> PathBuf {
        self.dir.path().join("server.key")
    }
    /// The token signing certificate (PEM), the registry's `rootcertbundle`.
    pub fn token_cert(&self) -> PathBuf {
        self.dir.path().join("token.crt")
    }
    fn token_cert_der(&self) -> Vec<u8> {
        fs::read(self.dir.path().join("token.der")).expect("read token.der")
    }
    fn token_key_pkcs8(&self) -> Vec<u8> {
        fs::read(self.dir.path().join("token.pk8")).expect("read token.pk8")
    }

    /// A certs dir (`<dir>/<host:port>/ca.crt`) trusting the CA for `addr`.
    pub fn certs_dir_for(&self, addr: &str) -> TempDir {
        let dir = tempfile::Builder::new()
            .prefix("orca-certs-")
            .tempdir()
            .expect("temp dir");
        fs::create_dir_all(dir.path().join(addr)).expect("mkdir");
        fs::copy(self.ca_cert(), dir.path().join(addr).join("ca.crt")).expect("copy ca");
        dir
    }
}

impl Default for Pki {
    fn default() -> Self {
        Pki::new()
    }
}

const TOKEN_SERVICE: &str = "orca-test-registry";
const TOKEN_ISSUER: &str = "orca-test-issuer";

/// A token server (Docker's token auth spec): `GET /token?service=&scope=`
/// with optional Basic credentials answers `{"token","access_token",
/// "expires_in"}`, an ES256 JWT whose header's `x5c` carries the signing
/// certificate. Right credentials get every requested action; no
/// credentials get a token without access; wrong ones get 401.
pub struct TokenServer {
    addr: String,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    requests: Arc<Mutex<Vec<String>>>,
}

struct TokenState {
    user: String,
    password: String,
    key: ring::signature::EcdsaKeyPair,
    cert_der: Vec<u8>,
    requests: Arc<Mutex<Vec<String>>>,
}

fn b64url(b: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

fn pct_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let h = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(h, 16) {
                    Ok(v) => {
                        out.push(v);
                        i += 3;
                    }
                    Err(_) => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Reads one HTTP/1.x request head: (method, target, headers lower-cased).
fn read_head(stream: &mut TcpStream) -> Option<(String, String, HashMap<String, String>)> {
    let mut r = BufReader::new(stream.try_clone().ok()?);
    let mut line = String::new();
    r.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_string();
    let target = parts.next()?.to_string();
    let mut headers = HashMap::new();
    loop {
        let mut h = String::new();
        if r.read_line(&mut h).ok()? == 0 {
            break;
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    // Drain a small body (form posts), if any.
    if let Some(n) = headers
        .get("content-length")
        .and_then(|v| v.parse::<usize>().ok())
    {
        let mut body = vec![0u8; n.min(1 << 16)];
        let _ = r.read_exact(&mut body);
    }
    Some((method, target, headers))
}

fn respond(stream: &mut TcpStream, status: &str, content_type: &str, body: &[u8]) {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(body);
    let _ = stream.flush();
}

impl TokenState {
    fn handle(&self, mut stream: TcpStream) {
        let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
        let Some((_method, target, headers)) = read_head(&mut stream) else {
            return;
        };
        let (path, query) = target.split_once('?').unwrap_or((&target, ""));
        if path != "/token" {
            respond(&mut stream, "404 Not Found", "text/plain", b"not found");
            return;
        }
        let mut scopes = Vec::new();
        let mut service = String::new();
        for kv in query.split('&').filter(|s| !s.is_empty()) {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            match k {
                "scope" => scopes.push(pct_decode(v)),
                "service" => service = pct_decode(v),
                _ => {}
            }
        }
        let who = match headers
            .get("authorization")
            .and_then(|a| a.strip_prefix("Basic "))
        {
            None => None,
            Some(b) => {
                let dec = base64::engine::general_purpose::STANDARD
                    .decode(b.trim())
                    .ok()
                    .and_then(|d| String::from_utf8(d).ok())
                    .unwrap_or_default();
                if dec != format!("{}:{}", self.user, self.password) {
                    self.requests
                        .lock()
                        .unwrap()
                        .push(format!("refused scope={}", scopes.join(" ")));
                    respond(
                        &mut stream,
                        "401 Unauthorized",
                        "application/json",
                        br#"{"details":"incorrect username or password"}"#,
                    );
                    return;
                }
                Some(self.user.clone())
            }
        };
        self.requests.lock().unwrap().push(format!(
            "{} service={service} scope={}",
            who.as_deref().unwrap_or("anonymous"),
            scopes.join(" ")
        ));
        let access: Vec<serde_json::Value> = if who.is_some() {
            scopes
                .iter()
                .filter_map(|s| {
                    let mut p = s.splitn(3, ':');
                    let (t, n, a) = (p.next()?, p.next()?, p.next()?);
                    Some(serde_json::json!({"type": t, "name": n, "actions": a.split(',').collect::<Vec<_>>()}))
                })
                .collect()
        } else {
            Vec::new()
        };
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let header = serde_json::json!({
            "typ": "JWT",
            "alg": "ES256",
            "x5c": [base64::engine::general_purpose::STANDARD.encode(&self.cert_der)],
        });
        let claims = serde_json::json!({
            "iss": TOKEN_ISSUER,
            "sub": who.clone().unwrap_or_default(),
            "aud": service,
            "exp": now + 300,
            "nbf": now - 10,
            "iat": now,
            "jti": format!("{now}-{}", std::process::id()),
            "access": access,
        });
        let input = format!(
            "{}.{}",
            b64url(header.to_string().as_bytes()),
            b64url(claims.to_string().as_bytes())
        );
        let rng = ring::rand::SystemRandom::new();
        let sig = match self.key.sign(&rng, input.as_bytes()) {
            Ok(s) => s,
            Err(_) => {
                respond(
                    &mut stream,
                    "500 Internal Server Error",
                    "text/plain",
                    b"sign",
                );
                return;
            }
        };
        let token = format!("{input}.{}", b64url(sig.as_ref()));
        let body = serde_json::json!({"token": token, "access_token": token, "expires_in": 300});
        respond(
            &mut stream,
            "200 OK",
            "application/json",
            body.to_string().as_bytes(),
        );
    }
}

impl TokenServer {
    /// Starts a token server accepting `user`/`password`, signing with the
    /// PKI's token key.
    #[track_caller]
    pub fn start(pki: &Pki, user: &str, password: &str) -> TokenServer {
        let rng = ring::rand::SystemRandom::new();
        let key = ring::signature::EcdsaKeyPair::from_pkcs8(
            &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &pki.token_key_pkcs8(),
            &rng,
        )
        .unwrap_or_else(|e| panic!("token key: {e}"));
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind token server");
        let addr = listener.local_addr().expect("local addr").to_string();
        listener.set_nonblocking(true).expect("nonblocking");
        let stop = Arc::new(AtomicBool::new(false));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let state = Arc::new(TokenState {
            user: user.into(),
            password: password.into(),
            key,
            cert_der: pki.token_cert_der(),
            requests: requests.clone(),
        });
        let stop2 = stop.clone();
        let thread = std::thread::spawn(move || serve(listener, stop2, move |s| state.handle(s)));
        TokenServer {
            addr,
            stop,
            thread: Some(thread),
            requests,
        }
    }

    /// "http://127.0.0.1:PORT/token".
    pub fn realm(&self) -> String {
        format!("http://{}/token", self.addr)
    }

    /// Requests served so far ("user service=… scope=…", "refused …").
    pub fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Accept loop (non-blocking listener polled so `stop` is honoured); one
/// thread per connection.
fn serve(
    listener: TcpListener,
    stop: Arc<AtomicBool>,
    handler: impl Fn(TcpStream) + Send + Sync + 'static,
) {
    let handler = Arc::new(handler);
    while !stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((s, _)) => {
                let _ = s.set_nonblocking(false);
                let h = handler.clone();
                std::thread::spawn(move || h(s));
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

/// How a [`SecureRegistry`] authenticates.
pub enum Auth {
    None,
    /// htpasswd (bcrypt, made with `htpasswd -B`) with one user.
    Basic {
        user: String,
        password: String,
    },
    /// Token auth against a [`TokenServer`] realm, trusting the PKI's token cert.
    Token {
        realm: String,
    },
}

/// Debian's docker-registry with auth and/or TLS, pre-loaded with busybox
/// as `library/busybox:latest` (copied from a plain seeded registry's
/// storage, so seeding does not depend on the auth under test).
pub struct SecureRegistry {
    child: Child,
    addr: String,
    dir: TempDir,
}

impl SecureRegistry {
    /// Starts one; `tls` uses the PKI's server certificate.
    #[track_caller]
    pub fn start(auth: Auth, tls: Option<&Pki>, token_pki: Option<&Pki>) -> SecureRegistry {
        let bin = require_tool("docker-registry");
        let dir = tempfile::Builder::new()
            .prefix("orca-secreg-")
            .tempdir()
            .unwrap_or_else(|e| panic!("cannot create a temp dir: {e}"));
        let storage = dir.path().join("reg");
        {
            let (seed, _) = crate::Registry::with_busybox();
            let out = output_of(
                Command::new("cp")
                    .arg("-a")
                    .arg(seed.storage_dir())
                    .arg(&storage),
            );
            assert_success(&out, "cp -a registry storage");
        }
        let mut auth_yaml = String::new();
        match &auth {
            Auth::None => {}
            Auth::Basic { user, password } => {
                let htpasswd = require_tool("htpasswd");
                let out = output_of(Command::new(htpasswd).args(["-Bbn", user, password]));
                assert_success(&out, "htpasswd -Bbn");
                let file = dir.path().join("htpasswd");
                fs::write(&file, &out.stdout).expect("write htpasswd");
                auth_yaml = format!(
                    "auth:\n  htpasswd:\n    realm: orca-test\n    path: {}\n",
                    file.display()
                );
            }
            Auth::Token { realm } => {
                let pki = token_pki.expect("token auth needs the token PKI");
                auth_yaml = format!(
                    "auth:\n  token:\n    realm: {realm}\n    service: {TOKEN_SERVICE}\n    issuer: {TOKEN_ISSUER}\n    rootcertbundle: {}\n",
                    pki.token_cert().display()
                );
            }
        }
        let tls_yaml = match tls {
            Some(p) => format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                p.server_cert().display(),
                p.server_key().display()
            ),
            None => String::new(),
        };
        let mut last = String::new();
        for _ in 0..5 {
            let port = free_port();
            let addr = format!("127.0.0.1:{port}");
            let config = dir.path().join("config.yml");
            let text = format!(
                "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: true\n\
                 storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
                 http:\n  addr: {addr}\n{tls_yaml}{auth_yaml}",
                storage.display()
            );
            fs::write(&config, text).expect("write registry config");
            let log_path = dir.path().join("registry.log");
            let log = fs::File::create(&log_path).expect("registry log");
            let log2 = log.try_clone().expect("dup");
            let mut child = Command::new(&bin)
                .arg("serve")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(log)
                .stderr(log2)
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start docker-registry: {e}"));
            let mut exited = false;
            let ready = wait_until(Duration::from_secs(20), || {
                if let Ok(Some(_)) = child.try_wait() {
                    exited = true;
                    return true;
                }
                TcpStream::connect(&addr).is_ok()
            });
            if ready && !exited {
                return SecureRegistry { child, addr, dir };
            }
            terminate(&mut child, Duration::from_secs(2));
            last = fs::read_to_string(&log_path).unwrap_or_default();
        }
        panic!("cannot start the secure registry; its log:\n{last}");
    }

    /// "127.0.0.1:PORT".
    pub fn addr(&self) -> String {
        self.addr.clone()
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }
}

impl Drop for SecureRegistry {
    fn drop(&mut self) {
        terminate(&mut self.child, Duration::from_secs(3));
        if std::thread::panicking() {
            eprintln!("--- registry log ---\n{}", self.log());
        }
    }
}

/// What a [`FakeRegistry`] answers for manifests and blobs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Misbehaviour {
    /// 500 with a text body for everything but `/v2/`.
    ServerError,
    /// 200 with a manifest content type and a body that is not JSON.
    GarbageManifest,
    /// A valid manifest whose config blob is served with other bytes.
    WrongBlob,
}

/// A fake registry on 127.0.0.1 that misbehaves (for error handling).
pub struct FakeRegistry {
    addr: String,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl FakeRegistry {
    /// Starts one.
    pub fn start(mode: Misbehaviour) -> FakeRegistry {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind fake registry");
        let addr = listener.local_addr().expect("addr").to_string();
        listener.set_nonblocking(true).expect("nonblocking");
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let config =
            br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
        let config_digest = crate::sha256_digest(config);
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "config": {"mediaType": "application/vnd.docker.container.image.v1+json",
                       "digest": config_digest, "size": config.len()},
            "layers": []
        })
        .to_string();
        let thread = std::thread::spawn(move || {
            serve(listener, stop2, move |mut s| {
                let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
                let Some((_m, target, _h)) = read_head(&mut s) else {
                    return;
                };
                let mt = "application/vnd.docker.distribution.manifest.v2+json";
                if target == "/v2/" {
                    respond(&mut s, "200 OK", "application/json", b"{}");
                    return;
                }
                match mode {
                    Misbehaviour::ServerError => respond(
                        &mut s,
                        "500 Internal Server Error",
                        "text/plain",
                        b"something broke\n",
                    ),
                    Misbehaviour::GarbageManifest => {
                        respond(&mut s, "200 OK", mt, b"\x00\x01 this is not json {{{")
                    }
                    Misbehaviour::WrongBlob => {
                        if target.contains("/manifests/") {
                            respond(&mut s, "200 OK", mt, manifest.as_bytes());
                        } else {
                            let mut wrong = config.to_vec();
                            wrong[2] = b'X';
                            respond(&mut s, "200 OK", "application/octet-stream", &wrong);
                        }
                    }
                }
            })
        });
        FakeRegistry {
            addr,
            stop,
            thread: Some(thread),
        }
    }

    /// "127.0.0.1:PORT".
    pub fn addr(&self) -> String {
        self.addr.clone()
    }
}

impl Drop for FakeRegistry {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
