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

/// Raises the soft limit of open files to the hard limit, as Go programs (dockerd,
/// containerd) do at start-up: every running container holds a few descriptors in the
/// daemon (FIFOs, shim connections), more than a default soft limit of 1024 allows
/// with a few hundred containers. Returns the new soft limit.
pub fn raise_open_files_limit() -> std::io::Result<u64> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    }
    Ok(hard)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_files_soft_limit_is_raised_to_the_hard_one() {
        use nix::sys::resource::{getrlimit, setrlimit, Resource};
        let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
        setrlimit(Resource::RLIMIT_NOFILE, hard.min(512), hard).unwrap();
        assert_eq!(raise_open_files_limit().unwrap(), hard);
        assert_eq!(getrlimit(Resource::RLIMIT_NOFILE).unwrap(), (hard, hard));
    }
}
