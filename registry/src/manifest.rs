//! Manifests, indexes, descriptors, platforms and content verification.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256, Sha512};

use crate::error::{Error, Result};

pub const MT_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MT_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MT_OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const MT_OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
pub const MT_OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const MT_OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
pub const MT_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const MT_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const MT_DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const MT_DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
pub const MT_DOCKER_LAYER_FOREIGN: &str =
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip";

/// The `Accept` header for manifest requests.
pub(crate) const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json";

/// Whether a media type is an index (OCI index or Docker manifest list).
pub fn is_index(media_type: &str) -> bool {
    media_type == MT_OCI_INDEX || media_type == MT_DOCKER_LIST
}

/// Whether a media type is an image manifest (OCI or Docker schema 2).
pub fn is_manifest(media_type: &str) -> bool {
    media_type == MT_OCI_MANIFEST || media_type == MT_DOCKER_MANIFEST
}

/// A content descriptor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    #[serde(default)]
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub urls: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
}

impl Descriptor {
    /// A plain descriptor.
    pub fn new(media_type: &str, digest: &str, size: u64) -> Descriptor {
        Descriptor {
            media_type: media_type.into(),
            digest: digest.into(),
            size,
            urls: Vec::new(),
            annotations: BTreeMap::new(),
            platform: None,
        }
    }
}

/// An OS/architecture platform.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    #[serde(
        rename = "os.version",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub os_version: Option<String>,
    #[serde(rename = "os.features", default, skip_serializing_if = "Vec::is_empty")]
    pub os_features: Vec<String>,
}

impl Platform {
    /// linux/amd64, the default.
    pub fn linux_amd64() -> Platform {
        Platform {
            architecture: "amd64".into(),
            os: "linux".into(),
            ..Default::default()
        }
    }

    /// The platform of this build (linux/<GOARCH name>).
    pub fn host() -> Platform {
        let arch = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "x86" => "386",
            "arm" => "arm",
            "powerpc64" => "ppc64le",
            "s390x" => "s390x",
            "riscv64" => "riscv64",
            other => other,
        };
        Platform {
            architecture: arch.into(),
            os: "linux".into(),
            ..Default::default()
        }
    }

    /// Parses "os/arch[/variant]" (or just "os"/"arch"-less "linux").
    pub fn parse(s: &str) -> Result<Platform> {
        let parts: Vec<&str> = s.split('/').collect();
        let bad =
            || Error::InvalidArgument(format!("invalid platform {s:?}: want os/arch[/variant]"));
        if parts.iter().any(|p| p.is_empty()) || parts.len() > 3 || s.is_empty() {
            return Err(bad());
        }
        let mut p = Platform {
            os: parts[0].to_ascii_lowercase(),
            architecture: parts
                .get(1)
                .map(|a| a.to_ascii_lowercase())
                .unwrap_or_else(|| Platform::host().architecture),
            variant: parts.get(2).map(|v| v.to_ascii_lowercase()),
            ..Default::default()
        };
        if !p.os.bytes().all(|c| c.is_ascii_alphanumeric()) {
            return Err(bad());
        }
        p.architecture = match p.architecture.as_str() {
            "x86_64" | "x86-64" => "amd64".into(),
            "aarch64" => "arm64".into(),
            "i386" => "386".into(),
            a => a.into(),
        };
        Ok(p)
    }

    fn norm_variant(&self) -> Option<String> {
        let v = self.variant.clone().filter(|v| !v.is_empty());
        match (self.architecture.as_str(), v.as_deref()) {
            ("arm64", None) | ("arm64", Some("v8")) => Some("v8".into()),
            ("arm", None) => Some("v7".into()),
            (_, v) => v.map(String::from),
        }
    }

    /// Whether an index entry's platform satisfies this wanted platform:
    /// same OS and architecture; the variant must match when one is wanted
    /// (arm64 ≡ arm64/v8, arm ≡ arm/v7).
    pub fn matches(&self, candidate: &Platform) -> bool {
        if !self.os.eq_ignore_ascii_case(&candidate.os)
            || !self
                .architecture
                .eq_ignore_ascii_case(&candidate.architecture)
        {
            return false;
        }
        match self.norm_variant() {
            None => true,
            Some(v) => candidate.norm_variant().as_deref() == Some(v.as_str()),
        }
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = self.variant.as_deref().filter(|v| !v.is_empty()) {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// An image manifest (OCI or Docker schema 2).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageManifest {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub config: Descriptor,
    #[serde(default)]
    pub layers: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// An image index (OCI index or Docker manifest list).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageIndex {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub manifests: Vec<Descriptor>,
}

/// The best entry of an index for a platform: the first whose platform
/// matches; when no variant is wanted, an entry without variant (or the
/// default variant) is preferred over others.
pub fn select_platform<'a>(index: &'a ImageIndex, want: &Platform) -> Result<&'a Descriptor> {
    let candidates: Vec<&Descriptor> = index
        .manifests
        .iter()
        .filter(|d| d.platform.as_ref().is_some_and(|p| want.matches(p)))
        .filter(|d| is_manifest(&d.media_type) || d.media_type.is_empty())
        .collect();
    let preferred = candidates.iter().find(|d| {
        let p = d.platform.as_ref().expect("filtered on platform");
        p.norm_variant() == want.norm_variant()
    });
    preferred
        .or(candidates.first())
        .copied()
        .ok_or_else(|| Error::NoMatchingPlatform(want.to_string()))
}

/// A manifest or index as fetched: raw bytes (pushed/stored as-is), media
/// type and digest (computed over the bytes).
#[derive(Debug, Clone)]
pub struct FetchedManifest {
    pub media_type: String,
    pub digest: String,
    pub bytes: Bytes,
}

impl FetchedManifest {
    /// A descriptor for this manifest.
    pub fn descriptor(&self) -> Descriptor {
        Descriptor::new(&self.media_type, &self.digest, self.bytes.len() as u64)
    }

    /// Parses as an image manifest.
    pub fn image_manifest(&self) -> Result<ImageManifest> {
        let m: ImageManifest = serde_json::from_slice(&self.bytes).map_err(|e| {
            Error::InvalidResponse(format!("manifest {} is not valid JSON: {e}", self.digest))
        })?;
        if m.schema_version != 2 {
            return Err(Error::Unsupported(format!(
                "manifest {}: schema version {} is not supported",
                self.digest, m.schema_version
            )));
        }
        Ok(m)
    }

    /// Parses as an index.
    pub fn index(&self) -> Result<ImageIndex> {
        serde_json::from_slice(&self.bytes).map_err(|e| {
            Error::InvalidResponse(format!("index {} is not valid JSON: {e}", self.digest))
        })
    }
}

/// Incremental size + digest check of content against its descriptor.
pub struct Verifier {
    what: String,
    expected_digest: String,
    expected_size: Option<u64>,
    hasher: Hasher,
    seen: u64,
}

enum Hasher {
    Sha256(Sha256),
    Sha512(Sha512),
}

impl Verifier {
    /// Checks against a digest ("sha256:…" or "sha512:…") and, when given, a size.
    pub fn new(digest: &str, size: Option<u64>) -> Result<Verifier> {
        crate::reference::validate_digest(digest)?;
        let hasher = if digest.starts_with("sha512:") {
            Hasher::Sha512(Sha512::new())
        } else {
            Hasher::Sha256(Sha256::new())
        };
        Ok(Verifier {
            what: format!("blob {digest}"),
            expected_digest: digest.into(),
            expected_size: size,
            hasher,
            seen: 0,
        })
    }

    /// Feeds data; fails as soon as more than the expected size arrived.
    pub fn update(&mut self, data: &[u8]) -> Result<()> {
        self.seen += data.len() as u64;
        if let Some(max) = self.expected_size {
            if self.seen > max {
                return Err(Error::SizeMismatch {
                    what: self.what.clone(),
                    expected: max,
                    actual: self.seen,
                });
            }
        }
        match &mut self.hasher {
            Hasher::Sha256(h) => h.update(data),
            Hasher::Sha512(h) => h.update(data),
        }
        Ok(())
    }

    /// Bytes seen so far.
    pub fn seen(&self) -> u64 {
        self.seen
    }

    /// Checks the final size and digest.
    pub fn finish(self) -> Result<()> {
        if let Some(n) = self.expected_size {
            if self.seen != n {
                return Err(Error::SizeMismatch {
                    what: self.what,
                    expected: n,
                    actual: self.seen,
                });
            }
        }
        let actual = match self.hasher {
            Hasher::Sha256(h) => format!("sha256:{}", hex::encode(h.finalize())),
            Hasher::Sha512(h) => format!("sha512:{}", hex::encode(h.finalize())),
        };
        if actual != self.expected_digest {
            return Err(Error::DigestMismatch {
                what: self.what,
                expected: self.expected_digest,
                actual,
            });
        }
        Ok(())
    }
}

/// "sha256:<hex>" of some bytes.
pub fn sha256_digest(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(arch: &str, variant: Option<&str>, digest_char: char) -> Descriptor {
        let mut d = Descriptor::new(
            MT_OCI_MANIFEST,
            &format!("sha256:{}", digest_char.to_string().repeat(64)),
            1,
        );
        d.platform = Some(Platform {
            architecture: arch.into(),
            os: "linux".into(),
            variant: variant.map(String::from),
            ..Default::default()
        });
        d
    }

    #[test]
    fn platform_selection() {
        let idx = ImageIndex {
            schema_version: 2,
            media_type: Some(MT_OCI_INDEX.into()),
            manifests: vec![
                entry("arm", Some("v6"), '1'),
                entry("arm", Some("v7"), '2'),
                entry("arm64", Some("v8"), '3'),
                entry("amd64", None, '4'),
                entry("s390x", None, '5'),
            ],
        };
        let pick = |s: &str| {
            select_platform(&idx, &Platform::parse(s).unwrap())
                .map(|d| d.digest.chars().last().unwrap())
        };
        assert_eq!(pick("linux/amd64").unwrap(), '4');
        assert_eq!(pick("linux/arm64").unwrap(), '3');
        assert_eq!(pick("linux/arm64/v8").unwrap(), '3');
        assert_eq!(pick("linux/arm").unwrap(), '2');
        assert_eq!(pick("linux/arm/v6").unwrap(), '1');
        assert_eq!(pick("linux/x86_64").unwrap(), '4');
        let e = pick("linux/ppc64le").unwrap_err();
        assert_eq!(
            e.to_string(),
            "no matching manifest for linux/ppc64le in the manifest list entries"
        );
        assert!(pick("windows/amd64").is_err());
        assert!(Platform::parse("linux//x").is_err());
        assert!(Platform::parse("").is_err());
        // Attestation entries (unknown/unknown) are never picked.
        let idx = ImageIndex {
            schema_version: 2,
            media_type: None,
            manifests: vec![entry("unknown", None, '9'), entry("amd64", None, '4')],
        };
        assert_eq!(
            select_platform(&idx, &Platform::linux_amd64())
                .unwrap()
                .digest
                .chars()
                .last(),
            Some('4')
        );
    }

    #[test]
    fn verifier() {
        let d = sha256_digest(b"hello");
        let mut v = Verifier::new(&d, Some(5)).unwrap();
        v.update(b"hel").unwrap();
        v.update(b"lo").unwrap();
        v.finish().unwrap();
        let mut v = Verifier::new(&d, Some(5)).unwrap();
        assert!(matches!(
            v.update(b"hello!"),
            Err(Error::SizeMismatch { .. })
        ));
        let mut v = Verifier::new(&d, Some(5)).unwrap();
        v.update(b"hellp").unwrap();
        assert!(matches!(v.finish(), Err(Error::DigestMismatch { .. })));
        let v = Verifier::new(&d, Some(5)).unwrap();
        assert!(matches!(v.finish(), Err(Error::SizeMismatch { .. })));
        assert!(Verifier::new("sha256:xyz", None).is_err());
    }

    #[test]
    fn parses_manifests() {
        let m = FetchedManifest {
            media_type: MT_DOCKER_MANIFEST.into(),
            digest: "sha256:x".into(),
            bytes: Bytes::from_static(br#"{"schemaVersion":2,"config":{"mediaType":"a","digest":"sha256:1","size":3},"layers":[{"mediaType":"b","digest":"sha256:2","size":4}]}"#),
        };
        let im = m.image_manifest().unwrap();
        assert_eq!(im.layers[0].size, 4);
        let bad = FetchedManifest {
            bytes: Bytes::from_static(b"<html>"),
            ..m
        };
        assert!(matches!(
            bad.image_manifest(),
            Err(Error::InvalidResponse(_))
        ));
    }
}
