//! Credentials, Docker's `X-Registry-Auth` header and `WWW-Authenticate`
//! challenges.

use std::collections::BTreeMap;

use base64::Engine as _;
use serde::Deserialize;

use crate::error::{Error, Result};

/// Credentials for one registry, given by the caller.
#[derive(Clone, Default, PartialEq, Eq)]
pub enum Credentials {
    /// No credentials (anonymous tokens are still fetched when asked for).
    #[default]
    Anonymous,
    /// Username and password: sent as Basic to the registry or the token realm.
    Basic { username: String, password: String },
    /// An OAuth2 refresh token (Docker's `identitytoken`): exchanged at the
    /// token realm with `grant_type=refresh_token`.
    IdentityToken(String),
    /// A bearer token used as-is (Docker's `registrytoken`).
    RegistryToken(String),
}

impl std::fmt::Debug for Credentials {
    // Never print secrets.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::Anonymous => write!(f, "Anonymous"),
            Credentials::Basic { username, .. } => write!(f, "Basic({username})"),
            Credentials::IdentityToken(_) => write!(f, "IdentityToken"),
            Credentials::RegistryToken(_) => write!(f, "RegistryToken"),
        }
    }
}

impl Credentials {
    /// Whether these are anonymous.
    pub fn is_anonymous(&self) -> bool {
        matches!(self, Credentials::Anonymous)
    }

    /// A key identifying these credentials in caches (a hash, not the secret).
    pub(crate) fn cache_key(&self) -> String {
        use sha2::{Digest, Sha256};
        let raw = match self {
            Credentials::Anonymous => return "anon".into(),
            Credentials::Basic { username, password } => format!("b\0{username}\0{password}"),
            Credentials::IdentityToken(t) => format!("i\0{t}"),
            Credentials::RegistryToken(t) => format!("r\0{t}"),
        };
        hex::encode(&Sha256::digest(raw.as_bytes())[..16])
    }

    /// Decodes Docker's `X-Registry-Auth` header: base64url (padded or not,
    /// standard alphabet accepted too) JSON `{username, password, auth,
    /// serveraddress, identitytoken, registrytoken}`. An empty header or `{}`
    /// is anonymous.
    pub fn from_x_registry_auth(header: &str) -> Result<AuthConfig> {
        let h = header.trim();
        if h.is_empty() {
            return Ok(AuthConfig::default());
        }
        let bad = |e: &dyn std::fmt::Display| {
            Error::InvalidArgument(format!("invalid X-Registry-Auth header: {e}"))
        };
        let raw = decode_b64(h).map_err(|e| bad(&e))?;
        let wire: WireAuth = serde_json::from_slice(&raw).map_err(|e| bad(&e))?;
        let mut username = wire.username.unwrap_or_default();
        let mut password = wire.password.unwrap_or_default();
        if username.is_empty() && password.is_empty() {
            if let Some(auth) = wire.auth.filter(|a| !a.is_empty()) {
                let dec = decode_b64(&auth).map_err(|e| bad(&e))?;
                let s = String::from_utf8(dec).map_err(|e| bad(&e))?;
                let (u, p) = s
                    .split_once(':')
                    .ok_or_else(|| bad(&"auth is not user:password"))?;
                username = u.to_string();
                password = p.to_string();
            }
        }
        let credentials = if let Some(t) = wire.registrytoken.filter(|t| !t.is_empty()) {
            Credentials::RegistryToken(t)
        } else if let Some(t) = wire.identitytoken.filter(|t| !t.is_empty()) {
            Credentials::IdentityToken(t)
        } else if !username.is_empty() || !password.is_empty() {
            Credentials::Basic { username, password }
        } else {
            Credentials::Anonymous
        };
        Ok(AuthConfig {
            credentials,
            server_address: wire.serveraddress.filter(|s| !s.is_empty()),
        })
    }
}

fn decode_b64(s: &str) -> std::result::Result<Vec<u8>, base64::DecodeError> {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    let s = s.trim();
    URL_SAFE
        .decode(s)
        .or_else(|_| URL_SAFE_NO_PAD.decode(s))
        .or_else(|_| STANDARD.decode(s))
        .or_else(|_| STANDARD_NO_PAD.decode(s))
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct WireAuth {
    #[serde(alias = "Username")]
    username: Option<String>,
    #[serde(alias = "Password")]
    password: Option<String>,
    #[serde(alias = "Auth")]
    auth: Option<String>,
    #[serde(alias = "ServerAddress")]
    serveraddress: Option<String>,
    #[serde(alias = "IdentityToken")]
    identitytoken: Option<String>,
    #[serde(alias = "RegistryToken")]
    registrytoken: Option<String>,
}

/// A decoded `X-Registry-Auth` / `POST /auth` body.
#[derive(Debug, Clone, Default)]
pub struct AuthConfig {
    pub credentials: Credentials,
    /// `serveraddress`, as given (e.g. "https://index.docker.io/v1/").
    pub server_address: Option<String>,
}

/// One challenge of a `WWW-Authenticate` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    /// Lower-cased scheme ("bearer", "basic").
    pub scheme: String,
    /// Parameters with lower-cased names (realm, service, scope, error).
    pub params: BTreeMap<String, String>,
}

impl Challenge {
    /// A parameter by (lower-case) name.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params.get(name).map(String::as_str)
    }
}

/// Parses a `WWW-Authenticate` header value (RFC 7235: one or more
/// challenges, each a scheme then `name=value`/`name="quoted"` params).
/// Garbage yields what could be parsed, never a panic.
pub fn parse_www_authenticate(value: &str) -> Vec<Challenge> {
    let b = value.as_bytes();
    let mut i = 0;
    let mut out: Vec<Challenge> = Vec::new();
    let skip_ws = |i: &mut usize| {
        while *i < b.len() && (b[*i] == b' ' || b[*i] == b'\t') {
            *i += 1;
        }
    };
    let is_tchar = |c: u8| c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c);
    loop {
        // Skip separators between items.
        while i < b.len() && (b[i] == b' ' || b[i] == b'\t' || b[i] == b',') {
            i += 1;
        }
        if i >= b.len() {
            break;
        }
        let start = i;
        while i < b.len() && is_tchar(b[i]) {
            i += 1;
        }
        if i == start {
            // Unexpected character: skip it.
            i += 1;
            continue;
        }
        let token = &value[start..i];
        let save = i;
        skip_ws(&mut i);
        if i < b.len() && b[i] == b'=' && !out.is_empty() {
            // A parameter of the current challenge.
            i += 1;
            skip_ws(&mut i);
            let v = if i < b.len() && b[i] == b'"' {
                i += 1;
                let mut s = Vec::new();
                while i < b.len() && b[i] != b'"' {
                    if b[i] == b'\\' && i + 1 < b.len() {
                        i += 1;
                    }
                    s.push(b[i]);
                    i += 1;
                }
                i += 1; // closing quote (or end)
                String::from_utf8_lossy(&s).into_owned()
            } else {
                let vs = i;
                while i < b.len() && b[i] != b',' && b[i] != b' ' && b[i] != b'\t' {
                    i += 1;
                }
                value[vs..i].to_string()
            };
            if let Some(c) = out.last_mut() {
                c.params.insert(token.to_ascii_lowercase(), v);
            }
        } else {
            i = save;
            out.push(Challenge {
                scheme: token.to_ascii_lowercase(),
                params: BTreeMap::new(),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_challenge() {
        let c = parse_www_authenticate(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull""#,
        );
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].scheme, "bearer");
        assert_eq!(c[0].param("realm"), Some("https://auth.docker.io/token"));
        assert_eq!(c[0].param("service"), Some("registry.docker.io"));
        assert_eq!(c[0].param("scope"), Some("repository:library/busybox:pull"));
    }

    #[test]
    fn several_and_odd_challenges() {
        let c = parse_www_authenticate(
            r#"Basic realm="Registry Realm", Bearer realm="http://x/t", error="invalid_token", scope="repository:a/b:pull,push""#,
        );
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].scheme, "basic");
        assert_eq!(c[0].param("realm"), Some("Registry Realm"));
        assert_eq!(c[1].param("scope"), Some("repository:a/b:pull,push"));
        assert_eq!(c[1].param("error"), Some("invalid_token"));
        let c = parse_www_authenticate(r#"bearer REALM=http://x/t , service = s"#);
        assert_eq!(c[0].param("realm"), Some("http://x/t"));
        assert_eq!(c[0].param("service"), Some("s"));
        let c = parse_www_authenticate(r#"Bearer realm="a \"q\" b""#);
        assert_eq!(c[0].param("realm"), Some(r#"a "q" b"#));
        // Garbage never panics.
        for g in [
            "",
            "=",
            "\"",
            "Bearer realm=\"unterminated",
            ",,,",
            "é=ü",
            "Bearer =x",
        ] {
            let _ = parse_www_authenticate(g);
        }
        assert!(parse_www_authenticate("").is_empty());
    }

    #[test]
    fn x_registry_auth() {
        use base64::engine::general_purpose::{STANDARD, URL_SAFE};
        let h = URL_SAFE
            .encode(r#"{"username":"u","password":"p?>","serveraddress":"127.0.0.1:5000"}"#);
        let a = Credentials::from_x_registry_auth(&h).unwrap();
        assert_eq!(
            a.credentials,
            Credentials::Basic {
                username: "u".into(),
                password: "p?>".into()
            }
        );
        assert_eq!(a.server_address.as_deref(), Some("127.0.0.1:5000"));
        let h = STANDARD.encode(r#"{"identitytoken":"tok"}"#);
        let a = Credentials::from_x_registry_auth(&h).unwrap();
        assert_eq!(a.credentials, Credentials::IdentityToken("tok".into()));
        let h = URL_SAFE.encode(format!(r#"{{"auth":"{}"}}"#, STANDARD.encode("me:secret")));
        let a = Credentials::from_x_registry_auth(&h).unwrap();
        assert_eq!(
            a.credentials,
            Credentials::Basic {
                username: "me".into(),
                password: "secret".into()
            }
        );
        assert!(Credentials::from_x_registry_auth("")
            .unwrap()
            .credentials
            .is_anonymous());
        assert!(Credentials::from_x_registry_auth(&URL_SAFE.encode("{}"))
            .unwrap()
            .credentials
            .is_anonymous());
        assert!(Credentials::from_x_registry_auth("!!!").is_err());
        assert!(Credentials::from_x_registry_auth(&URL_SAFE.encode("[1]")).is_err());
        assert_eq!(
            format!(
                "{:?}",
                Credentials::Basic {
                    username: "u".into(),
                    password: "secret".into()
                }
            ),
            "Basic(u)"
        );
    }
}
