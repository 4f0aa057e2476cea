//! Reading /proc/self/mountinfo and cleaning up mounts left under a directory.

use std::path::{Path, PathBuf};

/// Decodes the octal escapes (`\040` space, `\011` tab, `\012` newline,
/// `\134` backslash) that the kernel uses in mountinfo paths.
fn unescape(s: &str) -> PathBuf {
    use std::os::unix::ffi::OsStringExt;
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') as u32 * 64
                + (b[i + 2] - b'0') as u32 * 8
                + (b[i + 3] - b'0') as u32;
            out.push(v as u8);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    PathBuf::from(std::ffi::OsString::from_vec(out))
}

/// All mount points of this process's mount namespace, in mountinfo order.
pub fn all_mount_points() -> Vec<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape)
        .collect()
}

/// Mount points at or below `path` (compared component-wise, after resolving
/// `path`'s symlinks when it exists), in mountinfo order.
pub fn mounts_under(path: &Path) -> Vec<PathBuf> {
    let base = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    all_mount_points()
        .into_iter()
        .filter(|m| m.starts_with(&base) || m.starts_with(path))
        .collect()
}

/// Lazily unmounts (`umount2(MNT_DETACH)`) everything mounted at or below
/// `path`, deepest first, repeating while something is left (stacked mounts).
/// Returns the mount points it could not remove.
pub fn unmount_all_under(path: &Path) -> Vec<PathBuf> {
    for _ in 0..8 {
        let mut ms = mounts_under(path);
        if ms.is_empty() {
            return ms;
        }
        // Deepest first; among equal paths (stacked mounts), the later one first.
        ms.reverse();
        ms.sort_by_key(|m| std::cmp::Reverse(m.components().count()));
        for m in &ms {
            let _ = nix::mount::umount2(m, nix::mount::MntFlags::MNT_DETACH);
        }
    }
    mounts_under(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unescapes_mountinfo_paths() {
        assert_eq!(unescape("/a\\040b"), PathBuf::from("/a b"));
        assert_eq!(unescape("/plain"), PathBuf::from("/plain"));
        assert_eq!(unescape("/x\\134y"), PathBuf::from("/x\\y"));
    }
}
