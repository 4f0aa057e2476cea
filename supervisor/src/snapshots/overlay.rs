//! The `overlayfs` snapshotter's filesystem work: a snapshot is a directory
//! `<root>/snapshots/<id>/` holding `fs/` (its upper layer) and `work/`
//! (overlayfs's work dir); its mounts stack the committed parents' `fs/`
//! directories as lower layers.

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use orca_proto::types::Mount;

/// Creates `fs/` (0755) and `work/` of a new snapshot.
pub fn create(dir: &Path) -> io::Result<()> {
    fs::create_dir(dir)?;
    for sub in ["fs", "work"] {
        fs::create_dir(dir.join(sub))?;
    }
    fs::set_permissions(dir.join("fs"), fs::Permissions::from_mode(0o755))
}

/// The directory whose contents are the snapshot's own layer.
pub fn layer_dir(dir: &Path) -> PathBuf {
    dir.join("fs")
}

/// Mounts of a snapshot in `own` whose committed ancestors (nearest first)
/// live in `parents`: a bind mount while there is a single layer to show,
/// otherwise an overlay (with upper and work dirs if `active`).
pub fn mounts(own: &Path, parents: &[PathBuf], active: bool) -> Vec<Mount> {
    let bind = |src: PathBuf, ro: bool| Mount {
        r#type: "bind".into(),
        source: src.display().to_string(),
        target: String::new(),
        options: vec![if ro { "ro" } else { "rw" }.into(), "rbind".into()],
    };
    if parents.is_empty() {
        return vec![bind(layer_dir(own), !active)];
    }
    if !active && parents.len() == 1 {
        return vec![bind(layer_dir(&parents[0]), true)];
    }
    let lower = parents
        .iter()
        .map(|p| layer_dir(p).display().to_string())
        .collect::<Vec<_>>()
        .join(":");
    let mut options = Vec::new();
    if active {
        options.push(format!("workdir={}", own.join("work").display()));
        options.push(format!("upperdir={}", own.join("fs").display()));
    }
    options.push(format!("lowerdir={lower}"));
    vec![Mount {
        r#type: "overlay".into(),
        source: "overlay".into(),
        target: String::new(),
        options,
    }]
}

/// Whether an overlay with an upper dir can be mounted on `root`'s
/// filesystem: a real test mount in a scratch directory under `root`
/// (the kernel may lack overlayfs, `root` may itself be on overlayfs or on
/// a filesystem overlayfs refuses as upper, or mounting may not be
/// permitted). Err says why not.
pub fn check_supported(root: &Path) -> Result<(), String> {
    let t = root.join(format!("overlay-check-{}", std::process::id()));
    let _ = fs::remove_dir_all(&t);
    let res = (|| {
        for d in ["lower1", "lower2", "upper", "work", "merged"] {
            fs::create_dir_all(t.join(d)).map_err(|e| format!("create {}: {e}", t.display()))?;
        }
        let data = format!(
            "lowerdir={}:{},upperdir={},workdir={}",
            t.join("lower1").display(),
            t.join("lower2").display(),
            t.join("upper").display(),
            t.join("work").display()
        );
        mount(
            Some("overlay"),
            &t.join("merged"),
            Some("overlay"),
            MsFlags::empty(),
            Some(data.as_str()),
        )
        .map_err(|e| format!("test mount of overlayfs on {}: {e}", root.display()))?;
        if let Err(e) = umount2(&t.join("merged"), MntFlags::MNT_DETACH) {
            tracing::warn!(path = %t.join("merged").display(), error = %e, "cannot unmount the overlayfs test mount");
        }
        Ok(())
    })();
    let _ = fs::remove_dir_all(&t);
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_check_refuses_a_root_on_overlayfs() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: mounting needs root");
            return;
        }
        let t = tempfile::tempdir().unwrap();
        // The temp dir is on a filesystem overlayfs accepts (ext4 here).
        check_supported(t.path()).unwrap();
        assert!(
            fs::read_dir(t.path()).unwrap().next().is_none(),
            "the check leaves nothing behind"
        );
        for d in ["l", "u", "w", "m"] {
            fs::create_dir(t.path().join(d)).unwrap();
        }
        let data = format!(
            "lowerdir={},upperdir={},workdir={}",
            t.path().join("l").display(),
            t.path().join("u").display(),
            t.path().join("w").display()
        );
        mount(
            Some("overlay"),
            &t.path().join("m"),
            Some("overlay"),
            MsFlags::empty(),
            Some(data.as_str()),
        )
        .unwrap();
        let root = t.path().join("m/root");
        fs::create_dir(&root).unwrap();
        let res = check_supported(&root);
        let left = fs::read_dir(&root).unwrap().count();
        umount2(&t.path().join("m"), MntFlags::MNT_DETACH).unwrap();
        let why = res.unwrap_err();
        assert!(why.contains("overlayfs"), "{why}");
        assert_eq!(left, 0, "the failed check leaves nothing behind");
    }
}
