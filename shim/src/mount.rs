//! The container's rootfs: the mounts containerd hands to Create (overlay,
//! bind, …) mounted on `<bundle>/rootfs`, and unmounted on Delete.

use std::os::fd::{FromRawFd, OwnedFd};
use std::path::Path;

use nix::fcntl::{open, OFlag};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::stat::Mode;

use crate::error::{Error, Result};

/// One mount to perform (containerd's `types.Mount`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountSpec {
    pub kind: String,
    pub source: String,
    pub options: Vec<String>,
}

/// Splits mount(8)-style options into flags, propagation flags and the data
/// string handed to the filesystem.
pub fn parse_options(options: &[String]) -> (MsFlags, MsFlags, String) {
    let mut flags = MsFlags::empty();
    let mut prop = MsFlags::empty();
    let mut data = Vec::new();
    for o in options {
        let (set, clear, p) = match o.as_str() {
            "ro" => (MsFlags::MS_RDONLY, MsFlags::empty(), MsFlags::empty()),
            "rw" => (MsFlags::empty(), MsFlags::MS_RDONLY, MsFlags::empty()),
            "bind" => (MsFlags::MS_BIND, MsFlags::empty(), MsFlags::empty()),
            "rbind" => (
                MsFlags::MS_BIND | MsFlags::MS_REC,
                MsFlags::empty(),
                MsFlags::empty(),
            ),
            "nosuid" => (MsFlags::MS_NOSUID, MsFlags::empty(), MsFlags::empty()),
            "suid" => (MsFlags::empty(), MsFlags::MS_NOSUID, MsFlags::empty()),
            "nodev" => (MsFlags::MS_NODEV, MsFlags::empty(), MsFlags::empty()),
            "dev" => (MsFlags::empty(), MsFlags::MS_NODEV, MsFlags::empty()),
            "noexec" => (MsFlags::MS_NOEXEC, MsFlags::empty(), MsFlags::empty()),
            "exec" => (MsFlags::empty(), MsFlags::MS_NOEXEC, MsFlags::empty()),
            "noatime" => (MsFlags::MS_NOATIME, MsFlags::empty(), MsFlags::empty()),
            "relatime" => (MsFlags::MS_RELATIME, MsFlags::empty(), MsFlags::empty()),
            "sync" => (MsFlags::MS_SYNCHRONOUS, MsFlags::empty(), MsFlags::empty()),
            "remount" => (MsFlags::MS_REMOUNT, MsFlags::empty(), MsFlags::empty()),
            "defaults" => (MsFlags::empty(), MsFlags::empty(), MsFlags::empty()),
            "private" => (MsFlags::empty(), MsFlags::empty(), MsFlags::MS_PRIVATE),
            "rprivate" => (
                MsFlags::empty(),
                MsFlags::empty(),
                MsFlags::MS_PRIVATE | MsFlags::MS_REC,
            ),
            "slave" => (MsFlags::empty(), MsFlags::empty(), MsFlags::MS_SLAVE),
            "rslave" => (
                MsFlags::empty(),
                MsFlags::empty(),
                MsFlags::MS_SLAVE | MsFlags::MS_REC,
            ),
            _ => {
                data.push(o.as_str());
                continue;
            }
        };
        flags |= set;
        flags &= !clear;
        prop |= p;
    }
    (flags, prop, data.join(","))
}

/// Mounts every spec on `target`, in order; on failure unmounts what was
/// mounted.
pub fn mount_all(specs: &[MountSpec], target: &Path) -> Result<()> {
    for (i, m) in specs.iter().enumerate() {
        if let Err(e) = mount_one(m, target) {
            for _ in 0..i {
                let _ = umount2(target, MntFlags::MNT_DETACH);
            }
            return Err(e);
        }
    }
    Ok(())
}

fn mount_one(m: &MountSpec, target: &Path) -> Result<()> {
    let (flags, prop, data) = parse_options(&m.options);
    let data = (!data.is_empty()).then_some(data.as_str());
    let fstype = if flags.contains(MsFlags::MS_BIND) {
        None
    } else {
        Some(m.kind.as_str())
    };
    mount(
        Some(m.source.as_str()),
        target,
        fstype,
        if fstype.is_some() {
            flags
        } else {
            flags & (MsFlags::MS_BIND | MsFlags::MS_REC)
        },
        data,
    )
    .map_err(|e| {
        Error::errno(
            format!("mounting {} ({}) on {}", m.source, m.kind, target.display()),
            e,
        )
    })?;
    if flags.contains(MsFlags::MS_BIND) && flags.contains(MsFlags::MS_RDONLY) {
        mount(
            None::<&str>,
            target,
            None::<&str>,
            flags | MsFlags::MS_REMOUNT,
            None::<&str>,
        )
        .map_err(|e| Error::errno(format!("remounting {} read-only", target.display()), e))?;
    }
    if !prop.is_empty() {
        mount(None::<&str>, target, None::<&str>, prop, None::<&str>)
            .map_err(|e| Error::errno(format!("setting propagation of {}", target.display()), e))?;
    }
    Ok(())
}

/// Unmounts everything mounted on `target` (stacked mounts included).
pub fn unmount_all(target: &Path) -> Result<()> {
    // Each layer's root is held open (O_PATH) across its lazy unmount, so the
    // unmount only detaches it; the last reference, and with it the
    // superblock's teardown, goes when `held` is dropped on a helper thread.
    // That teardown is the slow part (overlayfs syncs its whole upper
    // filesystem there: ≈ 10 ms on a busy disk) and nobody needs to wait for
    // it: the mount is gone from the namespace as soon as umount2 returns.
    let mut held: Vec<OwnedFd> = Vec::new();
    let mut result = Ok(());
    for _ in 0..64 {
        let root = open(
            target,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        // SAFETY: `open` just returned this descriptor; nothing else owns it.
        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) })
        .ok();
        match umount2(target, MntFlags::MNT_DETACH) {
            Ok(()) => held.extend(root),
            Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => break,
            Err(e) => {
                result = Err(Error::errno(format!("unmounting {}", target.display()), e));
                break;
            }
        }
    }
    release_in_background(held);
    result
}

/// Drops `fds` on a short-lived thread. If no thread can be made, `spawn`
/// drops the closure, and with it the descriptors, right here.
fn release_in_background(fds: Vec<OwnedFd>) {
    if fds.is_empty() {
        return;
    }
    let _ = std::thread::Builder::new()
        .name("umount-release".into())
        .stack_size(64 * 1024)
        .spawn(move || drop(fds));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_split_into_flags_and_data() {
        let o: Vec<String> = ["ro", "rbind", "nosuid", "lowerdir=/a:/b", "index=off"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let (f, p, d) = parse_options(&o);
        assert!(f.contains(
            MsFlags::MS_RDONLY | MsFlags::MS_BIND | MsFlags::MS_REC | MsFlags::MS_NOSUID
        ));
        assert!(p.is_empty());
        assert_eq!(d, "lowerdir=/a:/b,index=off");
        let (f, _, _) = parse_options(&["ro".to_string(), "rw".to_string()]);
        assert!(!f.contains(MsFlags::MS_RDONLY));
    }
}
