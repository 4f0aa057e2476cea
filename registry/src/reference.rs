//! Image references, normalized the way Docker does (`busybox` →
//! `docker.io/library/busybox:latest`), with distribution/reference's error
//! wording.

use crate::error::{Error, Result};

/// The default registry domain.
pub const DEFAULT_DOMAIN: &str = "docker.io";
/// The host actually spoken to for [`DEFAULT_DOMAIN`].
pub const DEFAULT_ENDPOINT: &str = "registry-1.docker.io";

const NAME_TOTAL_LENGTH_MAX: usize = 255;

/// A parsed, normalized image reference.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Reference {
    /// Registry host[:port] ("docker.io", "127.0.0.1:5000").
    pub domain: String,
    /// Repository path ("library/busybox").
    pub path: String,
    /// Tag, if any.
    pub tag: Option<String>,
    /// Digest ("sha256:…"), if any.
    pub digest: Option<String>,
}

fn invalid() -> Error {
    Error::InvalidReference("invalid reference format".into())
}

fn path_component_ok(c: &str) -> bool {
    // [a-z0-9]+(?:(?:[._]|__|[-]*)[a-z0-9]+)*
    let b = c.as_bytes();
    if b.is_empty() || !is_alnum_lower(b[0]) || !is_alnum_lower(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if is_alnum_lower(b[i]) {
            i += 1;
            continue;
        }
        // A separator run: ".", "_", "__" or "-"+, followed by alnum.
        let start = i;
        if b[i] == b'-' {
            while i < b.len() && b[i] == b'-' {
                i += 1;
            }
        } else if b[i] == b'.' {
            i += 1;
        } else if b[i] == b'_' {
            i += 1;
            if i < b.len() && b[i] == b'_' {
                i += 1;
            }
        } else {
            return false;
        }
        if i == start || i >= b.len() || !is_alnum_lower(b[i]) {
            return false;
        }
    }
    true
}

fn is_alnum_lower(c: u8) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit()
}

fn domain_ok(d: &str) -> bool {
    let (host, port) = if let Some(rest) = d.strip_prefix('[') {
        match rest.split_once(']') {
            Some((h, p)) => {
                if h.is_empty() || !h.bytes().all(|c| c.is_ascii_hexdigit() || c == b':') {
                    return false;
                }
                (None, p)
            }
            None => return false,
        }
    } else {
        match d.split_once(':') {
            Some((h, p)) => (Some(h), &d[h.len()..][..p.len() + 1]),
            None => (Some(d), ""),
        }
    };
    if let Some(h) = host {
        let ok = !h.is_empty()
            && h.split('.').all(|l| {
                !l.is_empty()
                    && l.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-')
                    && !l.starts_with('-')
                    && !l.ends_with('-')
            });
        if !ok {
            return false;
        }
    }
    match port.strip_prefix(':') {
        Some(p) => !p.is_empty() && p.len() <= 5 && p.bytes().all(|c| c.is_ascii_digit()),
        None => port.is_empty(),
    }
}

fn tag_ok(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= 128
        && t.bytes()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == b'_')
        && t.bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"_.-".contains(&c))
}

/// Validates "algorithm:hex" (sha256 with 64 lower-case hex digits, or sha512
/// with 128).
pub fn validate_digest(d: &str) -> Result<()> {
    let ok = match d.split_once(':') {
        Some(("sha256", h)) => h.len() == 64,
        Some(("sha512", h)) => h.len() == 128,
        _ => false,
    } && d.split_once(':').is_some_and(|(_, h)| {
        h.bytes()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
    });
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "invalid digest format: {d:?}"
        )))
    }
}

impl Reference {
    /// Parses and normalizes; adds the `latest` tag when neither tag nor
    /// digest is given.
    pub fn parse(s: &str) -> Result<Reference> {
        let mut r = Self::parse_no_default(s)?;
        if r.tag.is_none() && r.digest.is_none() {
            r.tag = Some("latest".into());
        }
        Ok(r)
    }

    /// Parses and normalizes without adding a default tag.
    pub fn parse_no_default(s: &str) -> Result<Reference> {
        if s.is_empty() {
            return Err(invalid());
        }
        let (rest, digest) = match s.split_once('@') {
            Some((r, d)) => {
                if validate_digest(d).is_err() {
                    return Err(invalid());
                }
                (r, Some(d.to_string()))
            }
            None => (s, None),
        };
        let last_slash = rest.rfind('/').map(|i| i + 1).unwrap_or(0);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => {
                let i = last_slash + i;
                (&rest[..i], Some(rest[i + 1..].to_string()))
            }
            None => (rest, None),
        };
        if let Some(t) = &tag {
            if !tag_ok(t) {
                return Err(invalid());
            }
        }
        if name.is_empty() {
            return Err(invalid());
        }
        let (domain, path) = match name.split_once('/') {
            Some((first, rest))
                if first.contains('.')
                    || first.contains(':')
                    || first == "localhost"
                    || first.bytes().any(|c| c.is_ascii_uppercase()) =>
            {
                (first.to_string(), rest.to_string())
            }
            _ => (DEFAULT_DOMAIN.to_string(), name.to_string()),
        };
        if path.bytes().any(|c| c.is_ascii_uppercase())
            && path
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || b"._-/".contains(&c))
        {
            let shown = if domain == DEFAULT_DOMAIN && !path.contains('/') {
                format!("library/{path}")
            } else {
                path.clone()
            };
            return Err(Error::InvalidReference(format!(
                "invalid reference format: repository name ({shown}) must be lowercase"
            )));
        }
        if !domain_ok(&domain) || path.is_empty() || !path.split('/').all(path_component_ok) {
            return Err(invalid());
        }
        if name.len() > NAME_TOTAL_LENGTH_MAX {
            return Err(Error::InvalidReference(format!(
                "invalid reference format: repository name must not be more than {NAME_TOTAL_LENGTH_MAX} characters"
            )));
        }
        let domain = if domain == "index.docker.io" {
            DEFAULT_DOMAIN.to_string()
        } else {
            domain
        };
        let path = if domain == DEFAULT_DOMAIN && !path.contains('/') {
            format!("library/{path}")
        } else {
            path
        };
        Ok(Reference {
            domain,
            path,
            tag,
            digest,
        })
    }

    /// "domain/path".
    pub fn name(&self) -> String {
        format!("{}/{}", self.domain, self.path)
    }

    /// The full normalized string ("domain/path:tag" or "domain/path@digest").
    pub fn full(&self) -> String {
        match (&self.tag, &self.digest) {
            (_, Some(d)) => format!("{}@{d}", self.name()),
            (Some(t), None) => format!("{}:{t}", self.name()),
            (None, None) => self.name(),
        }
    }

    /// The tag or digest to ask the registry for (digest wins).
    pub fn object(&self) -> String {
        self.digest
            .clone()
            .or_else(|| self.tag.clone())
            .unwrap_or_else(|| "latest".into())
    }

    /// The host[:port] spoken to (`registry-1.docker.io` for `docker.io`).
    pub fn endpoint_host(&self) -> String {
        endpoint_host(&self.domain)
    }
}

/// The host[:port] spoken to for a registry domain.
pub fn endpoint_host(domain: &str) -> String {
    if domain == DEFAULT_DOMAIN || domain == "index.docker.io" {
        DEFAULT_ENDPOINT.to_string()
    } else {
        domain.to_string()
    }
}

/// Normalizes a registry name as given to `docker login` / in
/// `serveraddress` ("https://index.docker.io/v1/", "127.0.0.1:5000",
/// "http://host:port/") to its domain ("docker.io", "127.0.0.1:5000").
pub fn registry_domain(server: &str) -> String {
    let s = server.trim();
    let s = s
        .strip_prefix("https://")
        .or_else(|| s.strip_prefix("http://"))
        .unwrap_or(s);
    let host = s.split('/').next().unwrap_or("");
    match host {
        "" | "index.docker.io" | "registry-1.docker.io" | "docker.io" => DEFAULT_DOMAIN.into(),
        h => h.to_ascii_lowercase(),
    }
}

/// Docker's "familiar" form: drops `docker.io/` and `library/`.
pub fn familiar(full: &str) -> String {
    match full.strip_prefix("docker.io/") {
        Some(rest) => rest.strip_prefix("library/").unwrap_or(rest).to_string(),
        None => full.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes() {
        let r = Reference::parse("busybox").unwrap();
        assert_eq!(r.full(), "docker.io/library/busybox:latest");
        assert_eq!(r.endpoint_host(), "registry-1.docker.io");
        let r = Reference::parse("127.0.0.1:5000/library/busybox:1.36").unwrap();
        assert_eq!(r.domain, "127.0.0.1:5000");
        assert_eq!(r.path, "library/busybox");
        assert_eq!(r.full(), "127.0.0.1:5000/library/busybox:1.36");
        assert_eq!(r.endpoint_host(), "127.0.0.1:5000");
        let r = Reference::parse("localhost/foo/bar").unwrap();
        assert_eq!(r.full(), "localhost/foo/bar:latest");
        let r = Reference::parse("index.docker.io/foo/bar:x").unwrap();
        assert_eq!(r.full(), "docker.io/foo/bar:x");
        let r = Reference::parse("user/repo").unwrap();
        assert_eq!(r.full(), "docker.io/user/repo:latest");
        let r = Reference::parse("[::1]:5000/a/b:t").unwrap();
        assert_eq!(r.domain, "[::1]:5000");
        assert_eq!(
            familiar("docker.io/library/busybox:latest"),
            "busybox:latest"
        );
        assert_eq!(familiar("docker.io/user/x:1"), "user/x:1");
    }

    #[test]
    fn digests_and_tags() {
        let d = format!("sha256:{}", "a".repeat(64));
        let r = Reference::parse(&format!("busybox@{d}")).unwrap();
        assert_eq!(r.tag, None);
        assert_eq!(r.digest.as_deref(), Some(d.as_str()));
        assert_eq!(r.object(), d);
        assert_eq!(r.full(), format!("docker.io/library/busybox@{d}"));
        let r = Reference::parse(&format!("busybox:1.2@{d}")).unwrap();
        assert_eq!(r.tag.as_deref(), Some("1.2"));
        assert_eq!(r.object(), d);
        let r = Reference::parse_no_default("busybox").unwrap();
        assert_eq!(r.tag, None);
        assert!(Reference::parse("busybox@sha256:abc").is_err());
        assert!(Reference::parse(&format!("busybox@md5:{}", "a".repeat(32))).is_err());
        assert!(Reference::parse("busybox:").is_err());
        assert!(Reference::parse("busybox:-x").is_err());
        assert!(Reference::parse(&format!("busybox:{}", "a".repeat(129))).is_err());
    }

    #[test]
    fn validation_wording() {
        let e = Reference::parse("Busybox").unwrap_err().to_string();
        assert_eq!(
            e,
            "invalid reference format: repository name (library/Busybox) must be lowercase"
        );
        for bad in [
            "a b",
            "",
            "/x",
            "x/",
            "a//b",
            "-a",
            "a-",
            "a..b",
            "host:port/x",
            ":tag",
        ] {
            let e = Reference::parse(bad).unwrap_err();
            assert_eq!(e.to_string(), "invalid reference format", "{bad:?}");
            assert!(e.is_invalid_input());
        }
        let long = format!("{}/{}", "a".repeat(200), "b".repeat(100));
        assert!(Reference::parse(&long)
            .unwrap_err()
            .to_string()
            .contains("must not be more than 255 characters"));
        // Separators allowed by the grammar.
        for good in ["a_b", "a__b", "a---b", "a.b", "my-reg.example:5000/a/b-c_d"] {
            assert!(Reference::parse(good).is_ok(), "{good:?}");
        }
        assert!(Reference::parse("a___b").is_err());
    }

    #[test]
    fn registry_domains() {
        assert_eq!(registry_domain("https://index.docker.io/v1/"), "docker.io");
        assert_eq!(registry_domain(""), "docker.io");
        assert_eq!(registry_domain("127.0.0.1:5000"), "127.0.0.1:5000");
        assert_eq!(registry_domain("http://127.0.0.1:5000/"), "127.0.0.1:5000");
    }
}
