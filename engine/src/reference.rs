//! Image references, normalized the way Docker does (`busybox` →
//! `docker.io/library/busybox:latest`).

use crate::error::{EngineError, Result};

/// The default registry domain.
pub const DEFAULT_DOMAIN: &str = "docker.io";

/// A parsed, normalized image reference.
#[derive(Debug, Clone, PartialEq, Eq)]
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

fn invalid(s: &str) -> EngineError {
    EngineError::BadRequest(format!("invalid reference format: {s:?}"))
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
        if s.is_empty() || s.len() > 255 + 128 {
            return Err(invalid(s));
        }
        let (rest, digest) = match s.split_once('@') {
            Some((r, d)) => {
                let ok = d.strip_prefix("sha256:").is_some_and(|h| {
                    h.len() == 64
                        && h.bytes()
                            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
                });
                if !ok {
                    return Err(invalid(s));
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
            let ok = !t.is_empty()
                && t.len() <= 128
                && t.bytes()
                    .next()
                    .is_some_and(|c| c.is_ascii_alphanumeric() || c == b'_')
                && t.bytes()
                    .all(|c| c.is_ascii_alphanumeric() || b"_.-".contains(&c));
            if !ok {
                return Err(invalid(s));
            }
        }
        let (domain, path) = match name.split_once('/') {
            Some((first, rest))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first.to_string(), rest.to_string())
            }
            _ => (DEFAULT_DOMAIN.to_string(), name.to_string()),
        };
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
        let comp_ok = |c: &str| {
            !c.is_empty()
                && c.bytes()
                    .next()
                    .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
                && c.bytes()
                    .last()
                    .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
                && c.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
        };
        if path.is_empty() || !path.split('/').all(comp_ok) {
            return Err(invalid(s));
        }
        let domain_ok = domain
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b));
        if !domain_ok {
            return Err(invalid(s));
        }
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

    /// The tag or digest to ask the registry for.
    pub fn object(&self) -> String {
        self.digest
            .clone()
            .or_else(|| self.tag.clone())
            .unwrap_or_else(|| "latest".into())
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
        let r = Reference::parse("127.0.0.1:5000/library/busybox:1.36").unwrap();
        assert_eq!(r.domain, "127.0.0.1:5000");
        assert_eq!(r.path, "library/busybox");
        assert_eq!(r.full(), "127.0.0.1:5000/library/busybox:1.36");
        let r = Reference::parse("localhost/foo/bar").unwrap();
        assert_eq!(r.full(), "localhost/foo/bar:latest");
        assert!(Reference::parse("Busybox").is_err());
        assert!(Reference::parse("a b").is_err());
        assert_eq!(
            familiar("docker.io/library/busybox:latest"),
            "busybox:latest"
        );
    }
}
