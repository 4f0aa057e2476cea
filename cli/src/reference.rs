//! Image references as the CLI splits them for the API: `fromImage` (the
//! name) and `tag` (a tag or a digest), and the fully qualified form docker
//! prints after a pull.

/// A split image reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageReference {
    /// The repository as typed ("busybox", "127.0.0.1:5000/library/busybox").
    pub name: String,
    /// The tag, if one was given.
    pub tag: Option<String>,
    /// The digest ("sha256:…"), if one was given.
    pub digest: Option<String>,
}

impl ImageReference {
    /// Splits `NAME[:TAG][@DIGEST]`.
    pub fn parse(s: &str) -> Result<ImageReference, String> {
        let (rest, digest) = match s.split_once('@') {
            Some((r, d)) => (r, Some(d.to_string())),
            None => (s, None),
        };
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => (
                rest[..last_slash + i].to_string(),
                Some(rest[last_slash + i + 1..].to_string()),
            ),
            None => (rest.to_string(), None),
        };
        let invalid = name.is_empty()
            || name != name.to_ascii_lowercase()
            || name.contains(char::is_whitespace)
            || tag.as_deref().is_some_and(str::is_empty);
        if invalid {
            return Err(format!("invalid reference format: {s:?}"));
        }
        Ok(ImageReference { name, tag, digest })
    }

    /// True if neither tag nor digest was given ("Using default tag").
    pub fn is_name_only(&self) -> bool {
        self.tag.is_none() && self.digest.is_none()
    }

    /// The `tag` query parameter: the digest, else the tag, else "latest".
    pub fn api_tag(&self) -> String {
        self.digest
            .clone()
            .or_else(|| self.tag.clone())
            .unwrap_or_else(|| "latest".into())
    }

    /// The name with the default tag added ("busybox:latest").
    pub fn familiar(&self) -> String {
        match (&self.tag, &self.digest) {
            (_, Some(d)) => format!("{}@{d}", self.name),
            (Some(t), None) => format!("{}:{t}", self.name),
            (None, None) => format!("{}:latest", self.name),
        }
    }

    /// Fully qualified ("docker.io/library/busybox:latest").
    pub fn canonical(&self) -> String {
        let first = self.name.split('/').next().unwrap_or("");
        let has_domain = self.name.contains('/')
            && (first.contains('.') || first.contains(':') || first == "localhost");
        let name = if has_domain {
            self.name.clone()
        } else if self.name.contains('/') {
            format!("docker.io/{}", self.name)
        } else {
            format!("docker.io/library/{}", self.name)
        };
        ImageReference {
            name,
            ..self.clone()
        }
        .familiar()
    }
}

/// Splits `REPOSITORY[:TAG]` for `tag`/`import`/`commit` (tag defaults to "latest").
pub fn split_repo_tag(s: &str) -> (String, String) {
    let last_slash = s.rfind('/').map_or(0, |i| i + 1);
    match s[last_slash..].rfind(':') {
        Some(i) => (
            s[..last_slash + i].to_string(),
            s[last_slash + i + 1..].to_string(),
        ),
        None => (s.to_string(), "latest".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_names_tags_and_digests() {
        let r = ImageReference::parse("127.0.0.1:5000/library/busybox").unwrap();
        assert_eq!(r.name, "127.0.0.1:5000/library/busybox");
        assert!(r.is_name_only());
        assert_eq!(r.api_tag(), "latest");
        assert_eq!(r.canonical(), "127.0.0.1:5000/library/busybox:latest");
        let r = ImageReference::parse("busybox:1.36").unwrap();
        assert_eq!(
            (r.name.as_str(), r.tag.as_deref()),
            ("busybox", Some("1.36"))
        );
        assert_eq!(r.canonical(), "docker.io/library/busybox:1.36");
        let r = ImageReference::parse("me/app@sha256:abc").unwrap();
        assert_eq!(r.api_tag(), "sha256:abc");
        assert_eq!(r.canonical(), "docker.io/me/app@sha256:abc");
        assert!(ImageReference::parse("Busybox").is_err());
        assert!(ImageReference::parse("busybox:").is_err());
    }

    #[test]
    fn repo_tag_split() {
        assert_eq!(split_repo_tag("a/b:v1"), ("a/b".into(), "v1".into()));
        assert_eq!(
            split_repo_tag("127.0.0.1:5000/b"),
            ("127.0.0.1:5000/b".into(), "latest".into())
        );
    }
}
