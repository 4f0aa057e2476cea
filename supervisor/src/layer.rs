//! Applying an image layer (tar, gzip or zstd) onto a directory, with OCI
//! whiteouts (`.wh.NAME`) and opaque directories (`.wh..wh..opq`), and the
//! diffID (sha256 of the uncompressed tar stream) computed on the way.
//!
//! The target is treated as a root the layer cannot leave:
//! - entry names that are absolute or contain `..` are rejected;
//! - the parent of every entry is resolved inside the root, with symlinks
//!   evaluated as if the root were `/` (a link to `../../etc` lands on
//!   `<root>/etc`), and the entry itself is never followed;
//! - hard link targets are resolved the same way and must be existing
//!   non-directories inside the root;
//! - whiteouts must name a plain file name (not `.`, `..`, or a path);
//! - block and character device nodes are rejected.

use std::collections::HashSet;
use std::ffi::{CString, OsStr};
use std::fs;
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::util::digest_string;

/// Why a layer could not be applied.
#[derive(Debug, Error)]
pub enum LayerError {
    #[error("layer entry {path:?} rejected: {reason}")]
    Rejected { path: String, reason: String },
    #[error("layer entry {path:?}: {source}")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("reading the layer: {0}")]
    Read(io::Error),
}

fn rejected(path: &Path, reason: impl Into<String>) -> LayerError {
    LayerError::Rejected {
        path: path.display().to_string(),
        reason: reason.into(),
    }
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> LayerError + '_ {
    move |source| LayerError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Result of applying a layer.
#[derive(Debug, Clone)]
pub struct Applied {
    /// sha256 of the uncompressed tar stream.
    pub diff_id: String,
    /// Size of the uncompressed tar stream.
    pub size: u64,
}

struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    n: u64,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.n += n as u64;
        Ok(n)
    }
}

/// Wraps a possibly compressed layer stream in the right decompressor
/// (decided by the magic bytes, not the media type).
pub fn decompress<'a, R: Read + 'a>(r: R) -> Result<Box<dyn Read + 'a>, LayerError> {
    let mut br = BufReader::with_capacity(1 << 16, r);
    let head = br.fill_buf().map_err(LayerError::Read)?;
    if head.starts_with(&[0x1f, 0x8b]) {
        Ok(Box::new(flate2::read::MultiGzDecoder::new(br)))
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        let d = ruzstd::decoding::StreamingDecoder::new(br).map_err(|e| {
            LayerError::Read(io::Error::new(io::ErrorKind::InvalidData, e.to_string()))
        })?;
        Ok(Box::new(d))
    } else {
        Ok(Box::new(br))
    }
}

/// Applies a (possibly compressed) layer onto `root`.
pub fn apply_layer(root: &Path, layer: impl Read) -> Result<Applied, LayerError> {
    let mut hr = HashingReader {
        inner: decompress(layer)?,
        hasher: Sha256::new(),
        n: 0,
    };
    apply_tar(root, &mut hr)?;
    // The diffID covers the whole stream, trailing blocks included.
    io::copy(&mut hr, &mut io::sink()).map_err(LayerError::Read)?;
    Ok(Applied {
        diff_id: digest_string(hr.hasher.clone()),
        size: hr.n,
    })
}

/// Copies `r` to its end into `w` through `buf`.
fn copy_data(r: &mut impl Read, w: &mut impl io::Write, buf: &mut [u8]) -> io::Result<u64> {
    let mut n = 0u64;
    loop {
        let got = match r.read(buf) {
            Ok(0) => return Ok(n),
            Ok(got) => got,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        w.write_all(&buf[..got])?;
        n += got as u64;
    }
}

/// The entry's path made relative and checked: no absolute paths, no `..`.
fn clean_entry_path(raw: &Path) -> Result<PathBuf, LayerError> {
    let mut out = PathBuf::new();
    for c in raw.components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir => {}
            Component::ParentDir => return Err(rejected(raw, "path contains '..'")),
            Component::RootDir | Component::Prefix(_) => {
                return Err(rejected(raw, "absolute path"))
            }
        }
    }
    Ok(out)
}

/// Resolves `rel` (already clean) inside `root`, following symlinks in every
/// component as if `root` were `/`, creating missing directories when
/// `create` is set. Returns a path under `root` with no symlinks in it.
fn resolve_dir_in_root(root: &Path, rel: &Path, create: bool) -> Result<PathBuf, LayerError> {
    let mut pending: Vec<std::ffi::OsString> = rel
        .components()
        .rev()
        .map(|c| c.as_os_str().to_os_string())
        .collect();
    let mut cur: Vec<std::ffi::OsString> = Vec::new();
    let mut hops = 0;
    while let Some(comp) = pending.pop() {
        let comp_s = comp.as_os_str();
        if comp_s == OsStr::new(".") || comp_s.is_empty() {
            continue;
        }
        if comp_s == OsStr::new("..") {
            cur.pop();
            continue;
        }
        let mut p = root.to_path_buf();
        p.extend(&cur);
        p.push(comp_s);
        match fs::symlink_metadata(&p) {
            Ok(m) if m.file_type().is_symlink() => {
                hops += 1;
                if hops > 40 {
                    return Err(rejected(rel, "too many levels of symbolic links"));
                }
                let target = fs::read_link(&p).map_err(io_err(&p))?;
                if target.is_absolute() {
                    cur.clear();
                }
                for c in target.components().rev() {
                    match c {
                        Component::RootDir | Component::Prefix(_) => {}
                        other => pending.push(other.as_os_str().to_os_string()),
                    }
                }
            }
            Ok(m) if m.is_dir() => cur.push(comp),
            Ok(_) => return Err(rejected(rel, format!("{} is not a directory", p.display()))),
            Err(e) if e.kind() == io::ErrorKind::NotFound && create => {
                fs::create_dir(&p).map_err(io_err(&p))?;
                cur.push(comp);
            }
            Err(e) => return Err(io_err(&p)(e)),
        }
    }
    let mut p = root.to_path_buf();
    p.extend(&cur);
    Ok(p)
}

/// Removes whatever is at `p` (not following symlinks).
fn remove_any(p: &Path) -> io::Result<()> {
    match fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(p),
        Ok(_) => fs::remove_file(p),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

fn cstr(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

fn lchown(p: &Path, uid: u64, gid: u64) -> io::Result<()> {
    let c = cstr(p)?;
    // SAFETY: `c` is a valid NUL-terminated path for the duration of the call.
    let r = unsafe { libc::lchown(c.as_ptr(), uid as libc::uid_t, gid as libc::gid_t) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn set_times(p: &Path, mtime: u64) -> io::Result<()> {
    let c = cstr(p)?;
    let ts = libc::timespec {
        tv_sec: mtime as libc::time_t,
        tv_nsec: 0,
    };
    let times = [ts, ts];
    // SAFETY: valid path and a two-element timespec array, as utimensat requires.
    let r = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn lsetxattr(p: &Path, name: &str, value: &[u8]) -> io::Result<()> {
    let c = cstr(p)?;
    let n = CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: valid NUL-terminated strings and a buffer of `value.len()` bytes.
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

fn apply_tar(root: &Path, r: &mut dyn Read) -> Result<(), LayerError> {
    let mut archive = tar::Archive::new(r);
    // Paths (relative to root) this layer has put in place; opaque
    // directories keep these and drop everything else.
    let mut written: HashSet<PathBuf> = HashSet::new();
    let mut dir_times: Vec<(PathBuf, u64)> = Vec::new();
    let is_root = nix::unistd::geteuid().is_root();
    // File data moves in 1 MiB pieces: io::copy's 8 KiB buffer made a
    // 24 MiB file cost ~3 000 reads through the hashing/decompressing
    // readers and as many write(2)s.
    let mut buf = vec![0u8; 1 << 20];
    for entry in archive.entries().map_err(LayerError::Read)? {
        let mut entry = entry.map_err(LayerError::Read)?;
        let raw = entry.path().map_err(LayerError::Read)?.into_owned();
        let rel = clean_entry_path(&raw)?;
        let Some(name) = rel.file_name().map(|n| n.to_os_string()) else {
            continue; // the root itself
        };
        let parent_rel = rel.parent().unwrap_or(Path::new("")).to_path_buf();
        let parent = resolve_dir_in_root(root, &parent_rel, true)?;
        let name_b = name.as_bytes();

        if name_b == b".wh..wh..opq" {
            let rd = fs::read_dir(&parent).map_err(io_err(&parent))?;
            for e in rd {
                let e = e.map_err(io_err(&parent))?;
                let child_rel = parent_rel.join(e.file_name());
                if !written.contains(&child_rel) {
                    remove_any(&e.path()).map_err(io_err(&e.path()))?;
                }
            }
            continue;
        }
        if let Some(victim) = name_b.strip_prefix(b".wh.") {
            if victim.is_empty() || victim == b"." || victim == b".." || victim.contains(&b'/') {
                return Err(rejected(&raw, "whiteout must name a file in its directory"));
            }
            let p = parent.join(OsStr::from_bytes(victim));
            remove_any(&p).map_err(io_err(&p))?;
            continue;
        }

        let target = parent.join(&name);
        let header = entry.header().clone();
        let kind = header.entry_type();
        let mode = header.mode().map_err(LayerError::Read)? & 0o7777;
        let uid = header.uid().map_err(LayerError::Read)?;
        let gid = header.gid().map_err(LayerError::Read)?;
        let mtime = header.mtime().unwrap_or(0);

        let existing = fs::symlink_metadata(&target).ok();
        let keep_dir = kind.is_dir() && existing.as_ref().is_some_and(|m| m.is_dir());
        if existing.is_some() && !keep_dir {
            remove_any(&target).map_err(io_err(&target))?;
        }

        match kind {
            tar::EntryType::Directory => {
                if !keep_dir {
                    fs::create_dir(&target).map_err(io_err(&target))?;
                }
            }
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                let mut f = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode_nofollow()
                    .open(&target)
                    .map_err(io_err(&target))?;
                copy_data(&mut entry, &mut f, &mut buf).map_err(io_err(&target))?;
            }
            tar::EntryType::Symlink => {
                let link = entry
                    .link_name()
                    .map_err(LayerError::Read)?
                    .ok_or_else(|| rejected(&raw, "symlink without a target"))?;
                symlink(&link, &target).map_err(io_err(&target))?;
            }
            tar::EntryType::Link => {
                let link = entry
                    .link_name()
                    .map_err(LayerError::Read)?
                    .ok_or_else(|| rejected(&raw, "hard link without a target"))?;
                let link_rel = clean_entry_path(&link).map_err(|_| {
                    rejected(&raw, format!("hard link target {link:?} leaves the root"))
                })?;
                let lname = link_rel
                    .file_name()
                    .ok_or_else(|| rejected(&raw, "hard link to the root"))?;
                let lparent =
                    resolve_dir_in_root(root, link_rel.parent().unwrap_or(Path::new("")), false)?;
                let src = lparent.join(lname);
                let m = fs::symlink_metadata(&src).map_err(|_| {
                    rejected(
                        &raw,
                        format!("hard link target {link:?} does not exist in the layer's root"),
                    )
                })?;
                if m.is_dir() {
                    return Err(rejected(&raw, "hard link to a directory"));
                }
                fs::hard_link(&src, &target).map_err(io_err(&target))?;
                written.insert(rel);
                continue; // shares the target's metadata
            }
            tar::EntryType::Fifo => {
                nix::unistd::mkfifo(&target, nix::sys::stat::Mode::from_bits_truncate(mode))
                    .map_err(|e| io_err(&target)(io::Error::from(e)))?;
            }
            tar::EntryType::Char | tar::EntryType::Block => {
                return Err(rejected(&raw, "device nodes are not allowed in layers"));
            }
            tar::EntryType::XGlobalHeader | tar::EntryType::XHeader => continue,
            other => return Err(rejected(&raw, format!("unsupported entry type {other:?}"))),
        }

        if let Ok(Some(exts)) = entry.pax_extensions() {
            for ext in exts.flatten() {
                if let (Ok(k), v) = (ext.key(), ext.value_bytes()) {
                    if let Some(x) = k.strip_prefix("SCHILY.xattr.") {
                        if let Err(e) = lsetxattr(&target, x, v) {
                            tracing::debug!(path = %target.display(), xattr = x, error = %e, "cannot set xattr");
                        }
                    }
                }
            }
        }
        if is_root {
            lchown(&target, uid, gid).map_err(io_err(&target))?;
        }
        if kind != tar::EntryType::Symlink {
            fs::set_permissions(&target, fs::Permissions::from_mode(mode))
                .map_err(io_err(&target))?;
        }
        if kind.is_dir() {
            dir_times.push((target.clone(), mtime));
        } else {
            let _ = set_times(&target, mtime);
        }
        written.insert(rel);
    }
    for (d, t) in dir_times.into_iter().rev() {
        let _ = set_times(&d, t);
    }
    Ok(())
}

trait OpenNoFollow {
    fn mode_nofollow(&mut self) -> &mut Self;
}

impl OpenNoFollow for fs::OpenOptions {
    fn mode_nofollow(&mut self) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt;
        self.custom_flags(libc::O_NOFOLLOW).mode(0o600)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_of(entries: &[(&str, tar::EntryType, &[u8], Option<&str>)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, kind, data, link) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(*kind);
            h.set_mode(if kind.is_dir() { 0o755 } else { 0o644 });
            h.set_size(data.len() as u64);
            h.set_mtime(1);
            h.set_uid(0);
            h.set_gid(0);
            // Write names raw so hostile paths survive the builder's checks.
            let name = path.as_bytes();
            h.as_old_mut().name[..name.len()].copy_from_slice(name);
            if let Some(l) = link {
                h.as_old_mut().linkname[..l.len()].copy_from_slice(l.as_bytes());
            }
            h.set_cksum();
            b.append(&h, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    use tar::EntryType as E;

    #[test]
    fn applies_files_whiteouts_and_opaque_dirs() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        let l1 = tar_of(&[
            ("etc/", E::Directory, b"", None),
            ("etc/a", E::Regular, b"a", None),
            ("etc/b", E::Regular, b"b", None),
            ("d/", E::Directory, b"", None),
            ("d/old", E::Regular, b"o", None),
            ("lnk", E::Symlink, b"", Some("etc/a")),
            ("hard", E::Link, b"", Some("etc/b")),
        ]);
        let applied = apply_layer(r, l1.as_slice()).unwrap();
        let mut h = Sha256::new();
        h.update(&l1);
        assert_eq!(applied.diff_id, digest_string(h));
        assert_eq!(fs::read(r.join("hard")).unwrap(), b"b");
        let l2 = tar_of(&[
            ("etc/.wh.a", E::Regular, b"", None),
            ("d/", E::Directory, b"", None),
            ("d/.wh..wh..opq", E::Regular, b"", None),
            ("d/new", E::Regular, b"n", None),
        ]);
        // gzip it to exercise decompression
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &l2).unwrap();
        let applied = apply_layer(r, gz.finish().unwrap().as_slice()).unwrap();
        let mut h = Sha256::new();
        h.update(&l2);
        assert_eq!(applied.diff_id, digest_string(h));
        assert!(!r.join("etc/a").exists());
        assert!(r.join("etc/b").exists());
        assert!(!r.join("d/old").exists());
        assert_eq!(fs::read(r.join("d/new")).unwrap(), b"n");
    }

    #[test]
    fn rejects_or_contains_hostile_layers() {
        let outer = tempfile::tempdir().unwrap();
        let root = outer.path().join("root");
        fs::create_dir(&root).unwrap();
        let cases: Vec<Vec<u8>> = vec![
            tar_of(&[("../escape", E::Regular, b"x", None)]),
            tar_of(&[("a/../../escape", E::Regular, b"x", None)]),
            tar_of(&[("/abs-escape", E::Regular, b"x", None)]),
            tar_of(&[("h", E::Link, b"", Some("../outside-file"))]),
            tar_of(&[(".wh...", E::Regular, b"", None)]),
            tar_of(&[("null", E::Char, b"", None)]),
        ];
        fs::write(outer.path().join("outside-file"), b"secret").unwrap();
        for (i, t) in cases.iter().enumerate() {
            let e = apply_layer(&root, t.as_slice());
            assert!(
                matches!(e, Err(LayerError::Rejected { .. })),
                "case {i}: {e:?}"
            );
        }
        // A symlink pointing out of the root is contained: writing through
        // it lands inside the root.
        let t = tar_of(&[
            ("up", E::Symlink, b"", Some("../../..")),
            ("up/escape", E::Regular, b"x", None),
            ("abs", E::Symlink, b"", Some("/")),
            ("abs/escape2", E::Regular, b"y", None),
        ]);
        apply_layer(&root, t.as_slice()).unwrap();
        assert_eq!(fs::read(root.join("escape")).unwrap(), b"x");
        assert_eq!(fs::read(root.join("escape2")).unwrap(), b"y");
        let names: Vec<_> = fs::read_dir(outer.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(
            names.len(),
            2,
            "nothing written outside the root: {names:?}"
        );
        assert_eq!(
            fs::read(outer.path().join("outside-file")).unwrap(),
            b"secret"
        );
    }
}
