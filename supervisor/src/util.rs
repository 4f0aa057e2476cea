//! Small helpers: timestamps, identifiers, digests.

use std::time::{SystemTime, UNIX_EPOCH};

use prost_types::Timestamp;

use crate::error::{Error, Result};

/// A protobuf timestamp for a system time.
pub fn timestamp(t: SystemTime) -> Timestamp {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    Timestamp {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

/// Now, as a protobuf timestamp.
pub fn now() -> Timestamp {
    timestamp(SystemTime::now())
}

/// containerd's identifier rule (`identifiers.Validate`): 1–76 characters of
/// `[A-Za-z0-9]+(?:[._-](?:[A-Za-z0-9]+))*`.
pub fn validate_identifier(kind: &str, id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 76
        && id
            .split(['.', '_', '-'])
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric()));
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "{kind} {id:?}: identifier must match [A-Za-z0-9]+(?:[._-][A-Za-z0-9]+)* and be at most 76 characters"
        )))
    }
}

/// The hex part of a `sha256:<64 hex>` digest, validated.
pub fn sha256_hex(digest: &str) -> Result<&str> {
    match digest.strip_prefix("sha256:") {
        Some(h)
            if h.len() == 64
                && h.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) =>
        {
            Ok(h)
        }
        _ => Err(Error::InvalidArgument(format!(
            "digest {digest:?}: only sha256:<64 lowercase hex> digests are supported"
        ))),
    }
}

/// `sha256:<hex>` of a finished hasher.
pub fn digest_string(h: sha2::Sha256) -> String {
    use sha2::Digest;
    format!("sha256:{}", hex::encode(h.finalize()))
}
