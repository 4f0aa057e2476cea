//! The `native` snapshotter's filesystem work (containerd's
//! `io.containerd.snapshotter.v1` `native`): a snapshot is one full
//! directory `<root>/native/snapshots/<id>/`. Prepare and View copy the
//! parent's committed tree into it ([`copy_tree`]); its mount is a single
//! bind mount of that directory (`rw` for active snapshots, `ro` for views).
//! Works on any filesystem, including an overlayfs root where the overlay
//! snapshotter cannot mount.

use std::collections::HashMap;
use std::ffi::{CString, OsStr};
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::sys::stat::{mknod, utimensat, Mode, SFlag, UtimensatFlags};
use nix::sys::time::TimeSpec;
use orca_proto::types::Mount;

/// The single bind mount of a native snapshot's directory.
pub fn mounts(dir: &Path, read_only: bool) -> Vec<Mount> {
    vec![Mount {
        r#type: "bind".into(),
        source: dir.display().to_string(),
        target: String::new(),
        options: vec![if read_only { "ro" } else { "rw" }.into(), "rbind".into()],
    }]
}

/// Creates the directory of a new native snapshot: a copy of `parent`'s
/// tree, or an empty 0755 directory.
pub fn create(dir: &Path, parent: Option<&Path>) -> io::Result<()> {
    match parent {
        Some(p) => copy_tree(p, dir),
        None => {
            fs::create_dir(dir).map_err(ctx("create", dir))?;
            fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).map_err(ctx("chmod", dir))
        }
    }
}

fn ctx<'a>(what: &'static str, p: &'a Path) -> impl Fn(io::Error) -> io::Error + 'a {
    move |e| io::Error::new(e.kind(), format!("{what} {}: {e}", p.display()))
}

fn nix_io<'a>(what: &'static str, p: &'a Path) -> impl Fn(nix::Error) -> io::Error + 'a {
    move |e| {
        let e = io::Error::from(e);
        io::Error::new(e.kind(), format!("{what} {}: {e}", p.display()))
    }
}

/// Copies the tree at `src` to `dst` (which must not exist), as containerd's
/// `fs.CopyDir`: every entry keeps its type, mode (setuid/setgid/sticky
/// included), owner, atime/mtime and extended attributes; files hard-linked
/// to each other inside the tree stay hard links; symlinks are copied, never
/// followed; device nodes and fifos are recreated; sockets are skipped.
/// Directory times are set once their contents are in.
pub fn copy_tree(src: &Path, dst: &Path) -> io::Result<()> {
    let root = fs::symlink_metadata(src).map_err(ctx("stat", src))?;
    if !root.is_dir() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("copy {}: not a directory", src.display()),
        ));
    }
    // (dev, ino) of multiply-linked non-directories → their first copy.
    let mut links: HashMap<(u64, u64), PathBuf> = HashMap::new();
    // Directories in creation order; their times are set in reverse order.
    let mut dirs: Vec<(PathBuf, fs::Metadata)> = Vec::new();
    let mut stack: Vec<(PathBuf, PathBuf, fs::Metadata)> =
        vec![(src.to_path_buf(), dst.to_path_buf(), root)];
    while let Some((s, d, m)) = stack.pop() {
        fs::create_dir(&d).map_err(ctx("create", &d))?;
        copy_owner_mode_xattrs(&s, &d, &m, false)?;
        for e in fs::read_dir(&s).map_err(ctx("read", &s))? {
            let e = e.map_err(ctx("read", &s))?;
            let sp = e.path();
            let dp = d.join(e.file_name());
            let em = fs::symlink_metadata(&sp).map_err(ctx("stat", &sp))?;
            let ft = em.file_type();
            if ft.is_dir() {
                stack.push((sp, dp, em));
                continue;
            }
            if ft.is_socket() {
                tracing::debug!(path = %sp.display(), "skipping a socket");
                continue;
            }
            if em.nlink() > 1 {
                if let Some(first) = links.get(&(em.dev(), em.ino())) {
                    fs::hard_link(first, &dp).map_err(ctx("link", &dp))?;
                    continue;
                }
            }
            copy_entry(&sp, &dp, &em)?;
            if em.nlink() > 1 {
                links.insert((em.dev(), em.ino()), dp);
            }
        }
        dirs.push((d, m));
    }
    for (d, m) in dirs.iter().rev() {
        set_times(d, m)?;
    }
    Ok(())
}

/// Copies one non-directory entry (not a socket).
fn copy_entry(s: &Path, d: &Path, m: &fs::Metadata) -> io::Result<()> {
    let ft = m.file_type();
    if ft.is_file() {
        let mut from = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(s)
            .map_err(ctx("open", s))?;
        let mut to = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(d)
            .map_err(ctx("create", d))?;
        // std's copy uses copy_file_range (reflinks where the fs can).
        io::copy(&mut from, &mut to).map_err(ctx("copy into", d))?;
        drop(to);
        copy_owner_mode_xattrs(s, d, m, false)?;
    } else if ft.is_symlink() {
        let target = fs::read_link(s).map_err(ctx("readlink", s))?;
        std::os::unix::fs::symlink(&target, d).map_err(ctx("symlink", d))?;
        copy_owner_mode_xattrs(s, d, m, true)?;
    } else if ft.is_char_device() || ft.is_block_device() || ft.is_fifo() {
        let kind = if ft.is_char_device() {
            SFlag::S_IFCHR
        } else if ft.is_block_device() {
            SFlag::S_IFBLK
        } else {
            SFlag::S_IFIFO
        };
        let rdev = if ft.is_fifo() { 0 } else { m.rdev() };
        mknod(
            d,
            kind,
            Mode::from_bits_truncate(0o600),
            rdev as libc::dev_t,
        )
        .map_err(nix_io("mknod", d))?;
        copy_owner_mode_xattrs(s, d, m, false)?;
    } else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("copy {}: unsupported file type", s.display()),
        ));
    }
    set_times(d, m)
}

/// Owner, then mode (chown clears setuid/setgid), then xattrs.
fn copy_owner_mode_xattrs(s: &Path, d: &Path, m: &fs::Metadata, symlink: bool) -> io::Result<()> {
    if let Err(e) = std::os::unix::fs::lchown(d, Some(m.uid()), Some(m.gid())) {
        // Unprivileged: fine only if the owner is already right.
        let cur = fs::symlink_metadata(d).map_err(ctx("stat", d))?;
        if cur.uid() != m.uid() || cur.gid() != m.gid() {
            return Err(io::Error::new(
                e.kind(),
                format!("chown {}: {e}", d.display()),
            ));
        }
    }
    if !symlink {
        fs::set_permissions(d, fs::Permissions::from_mode(m.mode() & 0o7777))
            .map_err(ctx("chmod", d))?;
    }
    copy_xattrs(s, d)
}

fn set_times(d: &Path, m: &fs::Metadata) -> io::Result<()> {
    let at = TimeSpec::new(m.atime(), m.atime_nsec());
    let mt = TimeSpec::new(m.mtime(), m.mtime_nsec());
    utimensat(None, d, &at, &mt, UtimensatFlags::NoFollowSymlink).map_err(nix_io("set times of", d))
}

fn cpath(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{}: NUL in path", p.display()),
        )
    })
}

fn unsupported(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::ENOTSUP) || e.raw_os_error() == Some(libc::EOPNOTSUPP)
}

/// Reads a size-then-fill xattr call into a buffer, retrying on ERANGE.
fn read_sized(mut call: impl FnMut(*mut libc::c_void, usize) -> isize) -> io::Result<Vec<u8>> {
    loop {
        let n = call(std::ptr::null_mut(), 0);
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut buf = vec![0u8; n as usize];
        if buf.is_empty() {
            return Ok(buf);
        }
        let m = call(buf.as_mut_ptr().cast(), buf.len());
        if m < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ERANGE) {
                continue;
            }
            return Err(e);
        }
        buf.truncate(m as usize);
        return Ok(buf);
    }
}

/// Extended attributes of `p` (not following a symlink): (name, value).
pub fn list_xattrs(p: &Path) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let c = cpath(p)?;
    let names = match read_sized(|buf, len| {
        // SAFETY: `c` is a valid NUL-terminated path; `buf` is null with
        // len 0 (size query) or points to `len` writable bytes.
        unsafe { libc::llistxattr(c.as_ptr(), buf.cast(), len) }
    }) {
        Ok(n) => n,
        Err(e) if unsupported(&e) => return Ok(Vec::new()),
        Err(e) => {
            return Err(io::Error::new(
                e.kind(),
                format!("list xattrs of {}: {e}", p.display()),
            ))
        }
    };
    let mut out = Vec::new();
    for name in names.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let cn = CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidData))?;
        let value = match read_sized(|buf, len| {
            // SAFETY: valid NUL-terminated path and name; `buf` is null
            // with len 0 or points to `len` writable bytes.
            unsafe { libc::lgetxattr(c.as_ptr(), cn.as_ptr(), buf, len) }
        }) {
            Ok(v) => v,
            // Removed meanwhile.
            Err(e) if e.raw_os_error() == Some(libc::ENODATA) => continue,
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!(
                        "read xattr {} of {}: {e}",
                        String::from_utf8_lossy(name),
                        p.display()
                    ),
                ))
            }
        };
        out.push((name.to_vec(), value));
    }
    Ok(out)
}

fn copy_xattrs(s: &Path, d: &Path) -> io::Result<()> {
    let attrs = list_xattrs(s)?;
    if attrs.is_empty() {
        return Ok(());
    }
    let c = cpath(d)?;
    for (name, value) in attrs {
        let cn =
            CString::new(name.clone()).map_err(|_| io::Error::from(io::ErrorKind::InvalidData))?;
        // SAFETY: valid NUL-terminated path and name, and a buffer of
        // `value.len()` readable bytes.
        let r = unsafe {
            libc::lsetxattr(
                c.as_ptr(),
                cn.as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                0,
            )
        };
        if r != 0 {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(
                e.kind(),
                format!(
                    "set xattr {} on {}: {e}",
                    OsStr::from_bytes(&name).to_string_lossy(),
                    d.display()
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set_xattr(p: &Path, name: &str, value: &[u8]) -> io::Result<()> {
        let c = cpath(p)?;
        let n = CString::new(name).unwrap();
        // SAFETY: valid NUL-terminated strings and a readable buffer.
        let r = unsafe {
            libc::lsetxattr(
                c.as_ptr(),
                n.as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                0,
            )
        };
        if r == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    fn is_root() -> bool {
        nix::unistd::geteuid().is_root()
    }

    #[test]
    fn copy_keeps_types_modes_owners_times_links_and_xattrs() {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("src");
        fs::create_dir_all(src.join("etc/sub")).unwrap();
        fs::write(src.join("etc/passwd"), b"root:x:0:0\n").unwrap();
        fs::write(src.join("bin"), b"\x7fELF").unwrap();
        // Hard links inside the tree: three names, one inode.
        fs::hard_link(src.join("bin"), src.join("etc/sub/ls")).unwrap();
        fs::hard_link(src.join("bin"), src.join("etc/cat")).unwrap();
        // A symlink to something outside the tree, and a dangling one.
        std::os::unix::fs::symlink("/etc/hostname", src.join("etc/host")).unwrap();
        std::os::unix::fs::symlink("nowhere", src.join("dangling")).unwrap();
        // A directory symlink must not be descended into.
        std::os::unix::fs::symlink("/usr", src.join("usr")).unwrap();
        fs::set_permissions(src.join("bin"), fs::Permissions::from_mode(0o4755)).unwrap();
        fs::set_permissions(src.join("etc/sub"), fs::Permissions::from_mode(0o1777)).unwrap();
        fs::set_permissions(src.join("etc/passwd"), fs::Permissions::from_mode(0o640)).unwrap();
        nix::unistd::mkfifo(&src.join("fifo"), Mode::from_bits_truncate(0o620)).unwrap();
        fs::set_permissions(src.join("fifo"), fs::Permissions::from_mode(0o620)).unwrap();
        let sock = std::os::unix::net::UnixListener::bind(src.join("sock")).unwrap();
        let xattrs_ok = set_xattr(&src.join("etc/passwd"), "user.orca.test", b"v1").is_ok();
        if is_root() {
            std::os::unix::fs::lchown(src.join("etc/passwd"), Some(1234), Some(5678)).unwrap();
            std::os::unix::fs::lchown(src.join("etc/host"), Some(42), Some(43)).unwrap();
            std::os::unix::fs::lchown(src.join("etc/sub"), Some(7), Some(8)).unwrap();
            mknod(
                &src.join("null"),
                SFlag::S_IFCHR,
                Mode::from_bits_truncate(0o666),
                nix::sys::stat::makedev(1, 3),
            )
            .unwrap();
            fs::set_permissions(src.join("null"), fs::Permissions::from_mode(0o666)).unwrap();
            set_xattr(&src.join("etc"), "trusted.orca", b"dir").unwrap();
            set_xattr(&src.join("etc/host"), "trusted.link", b"l").unwrap();
        }
        let old = TimeSpec::new(1_000_000_000, 123_456_789);
        for p in ["etc/passwd", "etc/sub", "etc", "bin"] {
            utimensat(
                None,
                &src.join(p),
                &old,
                &old,
                UtimensatFlags::NoFollowSymlink,
            )
            .unwrap();
        }
        utimensat(
            None,
            &src.join("etc/host"),
            &old,
            &TimeSpec::new(2_000_000_000, 5),
            UtimensatFlags::NoFollowSymlink,
        )
        .unwrap();

        let dst = t.path().join("dst");
        copy_tree(&src, &dst).unwrap();
        drop(sock);

        let m = |p: &str| fs::symlink_metadata(dst.join(p)).unwrap();
        let sm = |p: &str| fs::symlink_metadata(src.join(p)).unwrap();
        // Contents and modes.
        assert_eq!(fs::read(dst.join("etc/passwd")).unwrap(), b"root:x:0:0\n");
        assert_eq!(m("bin").mode() & 0o7777, 0o4755);
        assert_eq!(m("etc/sub").mode() & 0o7777, 0o1777);
        assert_eq!(m("etc/passwd").mode() & 0o7777, 0o640);
        assert!(m("fifo").file_type().is_fifo());
        assert_eq!(m("fifo").mode() & 0o777, 0o620);
        assert!(!dst.join("sock").exists(), "sockets are skipped");
        // Hard links stay hard links (and not links to the source).
        assert_eq!(m("bin").ino(), m("etc/sub/ls").ino());
        assert_eq!(m("bin").ino(), m("etc/cat").ino());
        assert_eq!(m("bin").nlink(), 3);
        assert_ne!(m("bin").ino(), sm("bin").ino());
        // Symlinks are copied as symlinks, not followed.
        assert!(m("etc/host").file_type().is_symlink());
        assert_eq!(
            fs::read_link(dst.join("etc/host")).unwrap(),
            PathBuf::from("/etc/hostname")
        );
        assert_eq!(
            fs::read_link(dst.join("dangling")).unwrap(),
            PathBuf::from("nowhere")
        );
        assert!(m("usr").file_type().is_symlink());
        // Times, directories' included (set after their contents).
        for p in ["etc/passwd", "etc/sub", "etc", "bin"] {
            assert_eq!(
                (m(p).mtime(), m(p).mtime_nsec()),
                (1_000_000_000, 123_456_789),
                "{p}"
            );
        }
        assert_eq!(
            (m("etc/host").mtime(), m("etc/host").mtime_nsec()),
            (2_000_000_000, 5)
        );
        if xattrs_ok {
            let x = list_xattrs(&dst.join("etc/passwd")).unwrap();
            assert!(
                x.contains(&(b"user.orca.test".to_vec(), b"v1".to_vec())),
                "{x:?}"
            );
        }
        if is_root() {
            assert_eq!((m("etc/passwd").uid(), m("etc/passwd").gid()), (1234, 5678));
            assert_eq!((m("etc/host").uid(), m("etc/host").gid()), (42, 43));
            assert_eq!((m("etc/sub").uid(), m("etc/sub").gid()), (7, 8));
            assert!(m("null").file_type().is_char_device());
            assert_eq!(m("null").rdev(), nix::sys::stat::makedev(1, 3));
            assert_eq!(m("null").mode() & 0o777, 0o666);
            let x = list_xattrs(&dst.join("etc")).unwrap();
            assert!(
                x.contains(&(b"trusted.orca".to_vec(), b"dir".to_vec())),
                "{x:?}"
            );
            let x = list_xattrs(&dst.join("etc/host")).unwrap();
            assert!(
                x.contains(&(b"trusted.link".to_vec(), b"l".to_vec())),
                "{x:?}"
            );
        }
        // The copy is independent of the source.
        fs::write(dst.join("etc/passwd"), b"changed").unwrap();
        assert_eq!(fs::read(src.join("etc/passwd")).unwrap(), b"root:x:0:0\n");
    }

    #[test]
    fn copy_refuses_a_non_directory_and_an_existing_target() {
        let t = tempfile::tempdir().unwrap();
        fs::write(t.path().join("f"), b"x").unwrap();
        assert!(copy_tree(&t.path().join("f"), &t.path().join("d")).is_err());
        fs::create_dir(t.path().join("s")).unwrap();
        fs::create_dir(t.path().join("exists")).unwrap();
        let e = copy_tree(&t.path().join("s"), &t.path().join("exists")).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
    }
}
