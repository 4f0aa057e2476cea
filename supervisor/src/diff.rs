//! The diff service's work: applying a layer blob from the content store
//! onto the mounts of a snapshot (bind mounts are written directly; overlay
//! mounts are mounted on a private temp dir and written through, so
//! deletions become overlay whiteouts). Computing a layer from two trees
//! (Diff.Diff) is in [`crate::diff_compare`].

use std::path::{Path, PathBuf};
use std::sync::Arc;

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use orca_proto::types::{Descriptor, Mount};

use crate::content::ContentStore;
use crate::error::{Error, IoContext, Result};
use crate::layer::{apply_layer, LayerError};

/// Applies layers onto snapshot mounts.
pub struct LayerApplier {
    pub(crate) content: Arc<ContentStore>,
    /// Where temp mounts go (cleaned at start-up).
    pub(crate) mount_dir: PathBuf,
}

/// Media type of what Apply reports having applied.
pub const MEDIA_TYPE_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";

impl From<LayerError> for Error {
    fn from(e: LayerError) -> Error {
        match e {
            LayerError::Rejected { .. } => Error::InvalidArgument(e.to_string()),
            other => Error::Internal(other.to_string()),
        }
    }
}

/// A mount on a temp dir: unmounted (detached) and removed on drop.
pub(crate) struct TempMount {
    pub(crate) path: PathBuf,
}

impl Drop for TempMount {
    fn drop(&mut self) {
        if let Err(e) = umount2(&self.path, MntFlags::MNT_DETACH) {
            tracing::warn!(path = %self.path.display(), error = %e, "cannot unmount");
        }
        let _ = std::fs::remove_dir(&self.path);
    }
}

/// The writable overlay an apply goes through. A `volatile` overlay leaves
/// `<workdir>/work/incompat/volatile` behind, which makes the kernel refuse
/// any later mount with that workdir: it is removed once the overlay is
/// unmounted.
struct ApplyMount {
    mount: Option<TempMount>,
    volatile_marker: Option<PathBuf>,
}

impl Drop for ApplyMount {
    fn drop(&mut self) {
        drop(self.mount.take());
        if let Some(marker) = &self.volatile_marker {
            remove_volatile_marker(marker);
        }
    }
}

/// Where a `volatile` overlay with these mount options leaves its marker
/// (`None` without a workdir: a read-only overlay).
fn volatile_marker(options: &[String]) -> Option<PathBuf> {
    options
        .iter()
        .find_map(|o| o.strip_prefix("workdir="))
        .filter(|w| !w.is_empty())
        .map(|w| Path::new(w).join("work/incompat/volatile"))
}

fn remove_volatile_marker(marker: &Path) {
    match std::fs::remove_dir_all(marker) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::warn!(path = %marker.display(), error = %e, "cannot remove the volatile overlay marker: later mounts of this snapshot will fail")
        }
    }
}

impl LayerApplier {
    pub fn new(state_dir: &Path, content: Arc<ContentStore>) -> Result<LayerApplier> {
        let mount_dir = state_dir.join("diff-mounts");
        std::fs::create_dir_all(&mount_dir).ctx(|| format!("create {}", mount_dir.display()))?;
        // Mounts left by an apply interrupted by a crash.
        if let Ok(rd) = std::fs::read_dir(&mount_dir) {
            for e in rd.flatten() {
                let _ = umount2(&e.path(), MntFlags::MNT_DETACH);
                if let Err(err) = std::fs::remove_dir(e.path()) {
                    tracing::warn!(path = %e.path().display(), error = %err, "cannot remove a leftover apply mount point");
                }
            }
        }
        Ok(LayerApplier { content, mount_dir })
    }

    /// Applies the blob `desc` (in namespace `ns`) onto `mounts`; returns
    /// the descriptor of the uncompressed layer (its digest is the diffID).
    pub fn apply(&self, ns: &str, desc: &Descriptor, mounts: &[Mount]) -> Result<Descriptor> {
        let (blob, _info) = self.content.open_blob(ns, &desc.digest)?;
        let (target, _guard) = self.mount_target(mounts)?;
        let applied = apply_layer(&target, std::io::BufReader::with_capacity(1 << 20, blob))?;
        Ok(Descriptor {
            media_type: MEDIA_TYPE_LAYER_TAR.into(),
            digest: applied.diff_id,
            size: applied.size as i64,
            annotations: Default::default(),
        })
    }

    fn mount_target(&self, mounts: &[Mount]) -> Result<(PathBuf, Option<ApplyMount>)> {
        let [m] = mounts else {
            return Err(Error::InvalidArgument(format!(
                "apply needs exactly one mount, got {}",
                mounts.len()
            )));
        };
        match m.r#type.as_str() {
            "bind" | "rbind" => {
                if m.options.iter().any(|o| o == "ro") {
                    return Err(Error::InvalidArgument(
                        "cannot apply a layer onto a read-only mount".into(),
                    ));
                }
                Ok((PathBuf::from(&m.source), None))
            }
            "overlay" => {
                let path = self
                    .mount_dir
                    .join(uuid::Uuid::new_v4().simple().to_string());
                std::fs::create_dir(&path).ctx(|| format!("create {}", path.display()))?;
                let data = m.options.join(",");
                // `volatile` spares the unmount a sync of the whole upper
                // filesystem (every dirty page of every process on it: tens
                // of ms per layer, more on a busy host). The layer's files
                // are then as durable as containerd's, which writes them
                // straight into the upperdir without syncing. Kernels
                // without it (< 5.10) refuse the option: mount without.
                let marker = volatile_marker(&m.options);
                let volatile_data = format!("{data},volatile");
                let mut mounted = None;
                if let Some(marker) = &marker {
                    // A marker left by a crash mid-apply would make every
                    // later mount of this snapshot fail.
                    remove_volatile_marker(marker);
                    match mount(
                        Some("overlay"),
                        &path,
                        Some("overlay"),
                        MsFlags::empty(),
                        Some(volatile_data.as_str()),
                    ) {
                        Ok(()) => mounted = Some(Ok(true)),
                        Err(nix::errno::Errno::EINVAL) => {
                            tracing::debug!(
                                "overlay refuses \"volatile\": applying through a plain mount"
                            );
                        }
                        Err(e) => mounted = Some(Err(e)),
                    }
                }
                let mounted = match mounted {
                    Some(r) => r,
                    None => mount(
                        Some("overlay"),
                        &path,
                        Some("overlay"),
                        MsFlags::empty(),
                        Some(data.as_str()),
                    )
                    .map(|()| false),
                };
                match mounted {
                    Ok(volatile) => Ok((
                        path.clone(),
                        Some(ApplyMount {
                            mount: Some(TempMount { path }),
                            volatile_marker: if volatile { marker } else { None },
                        }),
                    )),
                    Err(e) => {
                        let _ = std::fs::remove_dir(&path);
                        Err(Error::Internal(format!(
                            "mount overlay ({data}) on {}: {e}",
                            path.display()
                        )))
                    }
                }
            }
            other => Err(Error::Unimplemented(format!(
                "applying onto a {other:?} mount"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volatile_marker_is_under_the_workdir() {
        let opts = |o: &[&str]| o.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            volatile_marker(&opts(&[
                "index=off",
                "workdir=/s/3/work",
                "upperdir=/s/3/fs",
                "lowerdir=/s/1/fs"
            ])),
            Some(PathBuf::from("/s/3/work/work/incompat/volatile"))
        );
        assert_eq!(volatile_marker(&opts(&["lowerdir=/s/2/fs:/s/1/fs"])), None);
        assert_eq!(volatile_marker(&opts(&["workdir="])), None);
    }
}
