//! The diff service's `Diff` call (containerd's `Compare`): the changes from
//! a lower tree (`left` mounts) to an upper tree (`right` mounts) as an OCI
//! layer tar (optionally gzipped), written into the content store.
//!
//! Two ways to find the changes:
//! - **overlay fast path**: `right` is one overlay mount whose lowerdirs are
//!   exactly the directories `left` stands for; only its `upperdir` is
//!   walked, overlay whiteouts (char device 0/0) become `.wh.NAME` and
//!   opaque directories (`trusted.overlay.opaque=y`) get `.wh..wh..opq`;
//! - **double walk** (containerd's `fs.Changes`): both trees are walked in
//!   step and compared by type, mode, owner, rdev, xattrs, size, mtime (and
//!   content only when both mtimes have whole seconds). Overlay mounts are
//!   mounted read-only on private temp dirs; bind mounts are read in place.
//!
//! Entries come in containerd's order (each directory's names sorted
//! bytewise, parents before children), every entry's parent directories
//! are written before it (containerd's `includeParents`), and files linked
//! together are written once and then as tar hard links.

use std::collections::{HashMap, HashSet};
use std::ffi::{CString, OsStr, OsString};
use std::fs::{self, Metadata};
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::mount::{mount, MsFlags};
use orca_proto::types::{Descriptor, Mount};
use sha2::{Digest, Sha256};

use crate::diff::{LayerApplier, TempMount, MEDIA_TYPE_LAYER_TAR};
use crate::error::{Error, IoContext, Result};
use crate::util::digest_string;

/// Media type of a gzipped OCI layer (containerd's default for Diff).
pub const MEDIA_TYPE_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// Media type of a zstd OCI layer (not produced, as in containerd 1.6).
pub const MEDIA_TYPE_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
/// Label holding the digest of the uncompressed tar of compressed content.
pub const LABEL_UNCOMPRESSED: &str = "containerd.io/uncompressed";

const WHITEOUT_PREFIX: &str = ".wh.";
const WHITEOUT_OPAQUE: &str = ".wh..wh..opq";

/// What a Diff request asks for, decoded.
#[derive(Debug, Clone, Default)]
pub struct CompareRequest {
    pub left: Vec<Mount>,
    pub right: Vec<Mount>,
    pub media_type: String,
    pub reference: String,
    pub labels: HashMap<String, String>,
    /// SOURCE_DATE_EPOCH (seconds): mtimes are clamped to it and whiteouts
    /// carry it.
    pub source_date_epoch: Option<i64>,
}

/// Whether the layer is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
}

/// The media type Diff produces for `requested` and its compression, with
/// containerd 1.6's rules: empty means gzip; anything else but plain tar and
/// gzip is Unimplemented ("not implemented" is containerd's code for an
/// unsupported diff media type).
pub fn media_type_for(requested: &str) -> Result<(&'static str, Compression)> {
    match requested {
        "" | MEDIA_TYPE_LAYER_GZIP => Ok((MEDIA_TYPE_LAYER_GZIP, Compression::Gzip)),
        MEDIA_TYPE_LAYER_TAR => Ok((MEDIA_TYPE_LAYER_TAR, Compression::None)),
        MEDIA_TYPE_LAYER_ZSTD => Err(Error::Unimplemented(format!(
            "unsupported diff media type: {requested} (zstd layers are not produced; use {MEDIA_TYPE_LAYER_TAR} or {MEDIA_TYPE_LAYER_GZIP})"
        ))),
        other => Err(Error::Unimplemented(format!(
            "unsupported diff media type: {other}"
        ))),
    }
}

// ------------------------------------------------------------ mounts

/// One mount of a Diff request, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Parsed {
    /// A directory read in place.
    Bind(PathBuf),
    Overlay {
        lower: Vec<PathBuf>,
        upper: Option<PathBuf>,
        /// Options other than lowerdir/upperdir/workdir/ro/rw/volatile.
        extra: Vec<String>,
    },
}

impl Parsed {
    /// The directories this mount stacks, top first.
    fn stack(&self) -> Vec<PathBuf> {
        match self {
            Parsed::Bind(p) => vec![p.clone()],
            Parsed::Overlay { lower, upper, .. } => upper.iter().chain(lower).cloned().collect(),
        }
    }
}

fn existing_dir(side: &str, what: &str, p: &str) -> Result<PathBuf> {
    let path = PathBuf::from(p);
    if !path.is_absolute() {
        return Err(Error::InvalidArgument(format!(
            "{side} mount: {what} {p:?} is not an absolute path"
        )));
    }
    match fs::metadata(&path) {
        Ok(m) if m.is_dir() => Ok(path),
        Ok(_) => Err(Error::InvalidArgument(format!(
            "{side} mount: {what} {p:?} is not a directory"
        ))),
        Err(e) => Err(Error::InvalidArgument(format!(
            "{side} mount: {what} {p:?}: {e}"
        ))),
    }
}

fn parse_mounts(side: &str, mounts: &[Mount]) -> Result<Parsed> {
    let [m] = mounts else {
        return Err(Error::InvalidArgument(format!(
            "diff needs exactly one {side} mount, got {}",
            mounts.len()
        )));
    };
    match m.r#type.as_str() {
        "bind" | "rbind" => Ok(Parsed::Bind(existing_dir(side, "source", &m.source)?)),
        "overlay" => {
            let mut lower = Vec::new();
            let mut upper = None;
            let mut extra = Vec::new();
            for o in &m.options {
                if let Some(v) = o.strip_prefix("lowerdir=") {
                    for d in v.split(':') {
                        lower.push(existing_dir(side, "lowerdir", d)?);
                    }
                } else if let Some(v) = o.strip_prefix("upperdir=") {
                    upper = Some(existing_dir(side, "upperdir", v)?);
                } else if o.starts_with("workdir=")
                    || matches!(o.as_str(), "ro" | "rw" | "volatile")
                {
                    // Not needed (nor wanted) for a read-only view.
                } else if o.contains([',', '\0']) || o.is_empty() {
                    return Err(Error::InvalidArgument(format!(
                        "{side} mount: bad overlay option {o:?}"
                    )));
                } else {
                    extra.push(o.clone());
                }
            }
            if lower.is_empty() {
                return Err(Error::InvalidArgument(format!(
                    "{side} mount: overlay without lowerdir"
                )));
            }
            Ok(Parsed::Overlay {
                lower,
                upper,
                extra,
            })
        }
        "" => Err(Error::InvalidArgument(format!("{side} mount has no type"))),
        other => Err(Error::InvalidArgument(format!(
            "{side} mount: unsupported mount type {other:?} (diff reads bind and overlay mounts)"
        ))),
    }
}

/// A tree to read: a directory in place or a read-only temp mount.
struct Tree {
    path: PathBuf,
    _mount: Option<TempMount>,
}

impl LayerApplier {
    /// Presents `m` read-only: bind sources in place; an overlay as a
    /// read-only overlay of its layers (upperdir on top, no workdir) on a
    /// temp dir, unmounted when the returned tree is dropped.
    fn read_only_tree(&self, m: &Parsed) -> Result<Tree> {
        let stack = m.stack();
        if stack.len() == 1 {
            return Ok(Tree {
                path: stack[0].clone(),
                _mount: None,
            });
        }
        let extra = match m {
            Parsed::Overlay { extra, .. } => extra.clone(),
            Parsed::Bind(_) => Vec::new(),
        };
        let lowerdir = stack
            .iter()
            .map(|p| p.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(":");
        let data = std::iter::once(format!("lowerdir={lowerdir}"))
            .chain(extra)
            .collect::<Vec<_>>()
            .join(",");
        let path = self
            .mount_dir
            .join(uuid::Uuid::new_v4().simple().to_string());
        fs::create_dir(&path).ctx(|| format!("create {}", path.display()))?;
        if let Err(e) = mount(
            Some("overlay"),
            &path,
            Some("overlay"),
            MsFlags::MS_RDONLY,
            Some(data.as_str()),
        ) {
            let _ = fs::remove_dir(&path);
            return Err(Error::InvalidArgument(format!(
                "cannot mount overlay ({data}) read-only: {e}"
            )));
        }
        Ok(Tree {
            path: path.clone(),
            _mount: Some(TempMount { path }),
        })
    }

    /// containerd's Diff.Diff: the layer of changes from `req.left` to
    /// `req.right`, committed to the content store of `ns` (under `lease`);
    /// returns its descriptor. On error nothing is committed and the ingest
    /// is dropped.
    pub fn compare(
        &self,
        ns: &str,
        lease: Option<&str>,
        req: &CompareRequest,
    ) -> Result<Descriptor> {
        let (media_type, compression) = media_type_for(&req.media_type)?;
        let left = parse_mounts("left", &req.left)?;
        let right = parse_mounts("right", &req.right)?;
        let opts = WriteOptions {
            mtime_upper_bound: req.source_date_epoch,
            whiteout_mtime: req
                .source_date_epoch
                .unwrap_or_else(|| chrono::Utc::now().timestamp()),
        };

        // The fast path needs the right overlay to stack exactly on left.
        let fast_upper = match &right {
            Parsed::Overlay {
                lower,
                upper: Some(upper),
                extra,
            } if same_dirs(lower, &left.stack()) => {
                let userxattr = extra.iter().any(|o| o == "userxattr");
                let prefix = if userxattr { "user." } else { "trusted." };
                match overlay_upper_is_plain(upper, prefix) {
                    Ok(true) => Some((upper.clone(), prefix)),
                    Ok(false) => {
                        tracing::debug!(upper = %upper.display(), "overlay upper uses redirects or metacopy; walking both trees");
                        None
                    }
                    Err(e) => return Err(Error::io(format!("scan {}", upper.display()), e)),
                }
            }
            _ => None,
        };

        let (reference, new_ref) = if req.reference.is_empty() {
            (format!("diff-{}", uuid::Uuid::new_v4().simple()), true)
        } else {
            (req.reference.clone(), false)
        };
        let mut w = self.content.writer(ns, &reference, 0, "", lease)?;
        if w.offset() != 0 {
            w.truncate()?;
        }
        let written = (|| -> Result<Option<String>> {
            let sink = BufWriter::with_capacity(1 << 20, IngestSink(&mut w));
            let walk = |tw: &mut dyn Write| -> Result<()> {
                match &fast_upper {
                    Some((upper, prefix)) => {
                        tracing::debug!(upper = %upper.display(), "diff: overlay upperdir walk");
                        let mut cw = ChangeWriter::new(tw, upper, opts);
                        overlay_changes(upper, prefix, &mut cw)
                            .and_then(|()| cw.finish())
                            .map_err(|e| {
                                Error::io(format!("diff of overlay upper {}", upper.display()), e)
                            })
                    }
                    None => {
                        let lower_tree = self.read_only_tree(&left)?;
                        let upper_tree = self.read_only_tree(&right)?;
                        tracing::debug!(lower = %lower_tree.path.display(), upper = %upper_tree.path.display(), "diff: double walk");
                        let mut cw = ChangeWriter::new(tw, &upper_tree.path, opts);
                        compare_trees(&lower_tree.path, &upper_tree.path, &mut |k, p, m| {
                            cw.handle(k, p, m)
                        })
                        .and_then(|()| cw.finish())
                        .map_err(|e| Error::io("diff of two trees", e))
                    }
                }
            };
            match compression {
                Compression::None => {
                    let mut sink = sink;
                    walk(&mut sink)?;
                    sink.flush().ctx(|| "write the diff".into())?;
                    Ok(None)
                }
                Compression::Gzip => {
                    let gz = flate2::write::GzEncoder::new(sink, flate2::Compression::default());
                    let mut hw = HashingWriter {
                        inner: gz,
                        hasher: Sha256::new(),
                    };
                    walk(&mut hw)?;
                    let uncompressed = digest_string(hw.hasher.clone());
                    let mut sink = hw.inner.finish().ctx(|| "gzip the diff".into())?;
                    sink.flush().ctx(|| "write the diff".into())?;
                    Ok(Some(uncompressed))
                }
            }
        })();
        let uncompressed = match written {
            Ok(u) => u,
            Err(e) => {
                drop(w);
                self.abort_ingest(ns, &reference, new_ref);
                return Err(e);
            }
        };
        let digest = w.digest();
        let mut labels = req.labels.clone();
        if let Some(u) = &uncompressed {
            labels.insert(LABEL_UNCOMPRESSED.into(), u.clone());
        }
        match w.commit(0, &digest, labels.clone()) {
            Ok(_) => {}
            Err(Error::AlreadyExists(_)) => {
                drop(w);
                self.abort_ingest(ns, &reference, new_ref);
                // The same layer is already there: make sure it carries the
                // labels asked for (containerd adds the uncompressed one).
                let info = self.content.info(ns, &digest)?;
                let missing: Vec<String> = labels
                    .keys()
                    .filter(|k| !info.labels.contains_key(*k))
                    .map(|k| format!("labels.{k}"))
                    .collect();
                if !missing.is_empty() {
                    let mut upd = info.clone();
                    upd.labels = labels;
                    self.content.update(ns, &upd, &missing)?;
                }
            }
            Err(e) => {
                drop(w);
                self.abort_ingest(ns, &reference, new_ref);
                return Err(e);
            }
        }
        let info = self.content.info(ns, &digest)?;
        tracing::info!(namespace = ns, digest = %digest, size = info.size, media_type, fast = fast_upper.is_some(), "diff committed");
        Ok(Descriptor {
            media_type: media_type.into(),
            digest,
            size: info.size,
            annotations: Default::default(),
        })
    }

    fn abort_ingest(&self, ns: &str, reference: &str, new_ref: bool) {
        if let Err(e) = self.content.abort(ns, reference) {
            if !e.is_not_found() {
                tracing::warn!(namespace = ns, reference, new_ref, error = %e, "cannot drop the diff ingest");
            }
        }
    }
}

fn same_dirs(a: &[PathBuf], b: &[PathBuf]) -> bool {
    let canon = |p: &PathBuf| fs::canonicalize(p).unwrap_or_else(|_| p.clone());
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| canon(x) == canon(y))
}

struct IngestSink<'a>(&'a mut crate::content::IngestWriter);

impl Write for IngestSink<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0
            .write(buf)
            .map_err(|e| io::Error::other(e.to_string()))?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

// ------------------------------------------------------------ xattrs

fn cstr(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

/// The names of `p`'s extended attributes (not following symlinks).
fn list_xattrs(p: &Path) -> io::Result<Vec<Vec<u8>>> {
    let c = cstr(p)?;
    let mut buf = vec![0u8; 1024];
    loop {
        // SAFETY: `c` is a valid path; `buf` is writable for `buf.len()` bytes.
        let n = unsafe { libc::llistxattr(c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        if n >= 0 {
            buf.truncate(n as usize);
            return Ok(buf
                .split(|b| *b == 0)
                .filter(|s| !s.is_empty())
                .map(<[u8]>::to_vec)
                .collect());
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::ERANGE) => buf.resize(buf.len() * 4, 0),
            Some(libc::ENOTSUP) => return Ok(Vec::new()),
            _ => return Err(e),
        }
    }
}

/// One extended attribute of `p` (not following symlinks), if set.
fn get_xattr(p: &Path, name: &[u8]) -> io::Result<Option<Vec<u8>>> {
    let c = cstr(p)?;
    let n = CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let mut buf = vec![0u8; 256];
    loop {
        // SAFETY: valid NUL-terminated strings; `buf` is writable for `buf.len()` bytes.
        let r =
            unsafe { libc::lgetxattr(c.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        if r >= 0 {
            buf.truncate(r as usize);
            return Ok(Some(buf));
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::ERANGE) => buf.resize(buf.len() * 4, 0),
            Some(libc::ENODATA) | Some(libc::ENOTSUP) => return Ok(None),
            _ => return Err(e),
        }
    }
}

/// Extended attributes that belong in a layer: user.*, trusted.* (but not
/// overlayfs' own), file capabilities and POSIX ACLs.
fn layer_xattr(name: &[u8]) -> bool {
    (name.starts_with(b"user.") && !name.starts_with(b"user.overlay."))
        || (name.starts_with(b"trusted.") && !name.starts_with(b"trusted.overlay."))
        || name == b"security.capability"
        || name == b"system.posix_acl_access"
        || name == b"system.posix_acl_default"
}

/// The layer-relevant xattrs of `p`, sorted by name.
fn layer_xattrs(p: &Path) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut out = Vec::new();
    for name in list_xattrs(p)? {
        if !layer_xattr(&name) {
            continue;
        }
        if let Some(v) = get_xattr(p, &name)? {
            out.push((name, v));
        }
    }
    out.sort();
    Ok(out)
}

// ------------------------------------------------------------ tree walks

/// What happened to a path between the lower and the upper tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    Add,
    Modify,
    Delete,
    /// Same in both trees but linked to other names (needed to write hard
    /// links right).
    Unmodified,
}

/// The names in directory `dir`, sorted bytewise.
fn sorted_names(dir: &Path) -> io::Result<Vec<OsString>> {
    let mut names = fs::read_dir(dir)?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<io::Result<Vec<_>>>()?;
    names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    Ok(names)
}

fn is_linked(m: &Metadata) -> bool {
    !m.is_dir() && m.nlink() > 1
}

/// containerd's `sameFile`: same inode, or same type/mode/owner/rdev/xattrs
/// and, for non-directories, same size and mtime; when both mtimes have no
/// sub-second part (possibly truncated) the contents (or symlink targets)
/// are compared.
fn same_file(lp: &Path, lm: &Metadata, up: &Path, um: &Metadata) -> io::Result<bool> {
    if lm.dev() == um.dev() && lm.ino() == um.ino() {
        return Ok(true);
    }
    if lm.mode() != um.mode()
        || lm.uid() != um.uid()
        || lm.gid() != um.gid()
        || lm.rdev() != um.rdev()
    {
        return Ok(false);
    }
    if layer_xattrs(lp)? != layer_xattrs(up)? {
        return Ok(false);
    }
    if lm.is_dir() {
        return Ok(true);
    }
    if lm.size() != um.size() || lm.mtime() != um.mtime() {
        return Ok(false);
    }
    if lm.mtime_nsec() != um.mtime_nsec() {
        return Ok(false);
    }
    if lm.mtime_nsec() != 0 {
        return Ok(true);
    }
    if lm.file_type().is_symlink() {
        return Ok(fs::read_link(lp)? == fs::read_link(up)?);
    }
    if !lm.is_file() || lm.size() == 0 {
        return Ok(true);
    }
    same_content(lp, up)
}

fn same_content(a: &Path, b: &Path) -> io::Result<bool> {
    let open = |p: &Path| {
        fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(p)
    };
    let (mut fa, mut fb) = (open(a)?, open(b)?);
    let mut ba = vec![0u8; 64 * 1024];
    let mut bb = vec![0u8; 64 * 1024];
    loop {
        let na = read_full(&mut fa, &mut ba)?;
        let nb = read_full(&mut fb, &mut bb)?;
        if na != nb || ba[..na] != bb[..nb] {
            return Ok(false);
        }
        if na == 0 {
            return Ok(true);
        }
    }
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

type ChangeFn<'a> = dyn FnMut(ChangeKind, &Path, Option<&Metadata>) -> io::Result<()> + 'a;

/// containerd's double walk (`fs.Changes`): calls `f` for every difference
/// from `lower` to `upper`, in walk order (names sorted bytewise per
/// directory, a directory before its children). A deleted directory is one
/// Delete (not one per child); a directory that replaced a non-directory is
/// a Modify followed by Adds of all it holds.
pub fn compare_trees(lower: &Path, upper: &Path, f: &mut ChangeFn<'_>) -> io::Result<()> {
    compare_dir(lower, upper, Path::new(""), f)
}

fn compare_dir(lower: &Path, upper: &Path, rel: &Path, f: &mut ChangeFn<'_>) -> io::Result<()> {
    let ln = sorted_names(&lower.join(rel))?;
    let un = sorted_names(&upper.join(rel))?;
    let (mut i, mut j) = (0, 0);
    while i < ln.len() || j < un.len() {
        let ord = match (ln.get(i), un.get(j)) {
            (Some(a), Some(b)) => a.as_bytes().cmp(b.as_bytes()),
            (Some(_), None) => std::cmp::Ordering::Less,
            _ => std::cmp::Ordering::Greater,
        };
        match ord {
            std::cmp::Ordering::Less => {
                f(ChangeKind::Delete, &rel.join(&ln[i]), None)?;
                i += 1;
            }
            std::cmp::Ordering::Greater => {
                add_tree(upper, &rel.join(&un[j]), f)?;
                j += 1;
            }
            std::cmp::Ordering::Equal => {
                let p = rel.join(&un[j]);
                let (lp, up) = (lower.join(&p), upper.join(&p));
                let lm = fs::symlink_metadata(&lp)?;
                let um = fs::symlink_metadata(&up)?;
                match (lm.is_dir(), um.is_dir()) {
                    (true, true) => {
                        if !same_file(&lp, &lm, &up, &um)? {
                            f(ChangeKind::Modify, &p, Some(&um))?;
                        }
                        compare_dir(lower, upper, &p, f)?;
                    }
                    (false, true) => {
                        f(ChangeKind::Modify, &p, Some(&um))?;
                        add_children(upper, &p, f)?;
                    }
                    (true, false) => f(ChangeKind::Modify, &p, Some(&um))?,
                    (false, false) => {
                        if !same_file(&lp, &lm, &up, &um)? {
                            f(ChangeKind::Modify, &p, Some(&um))?;
                        } else if is_linked(&um) {
                            f(ChangeKind::Unmodified, &p, Some(&um))?;
                        }
                    }
                }
                i += 1;
                j += 1;
            }
        }
    }
    Ok(())
}

fn add_tree(upper: &Path, rel: &Path, f: &mut ChangeFn<'_>) -> io::Result<()> {
    let m = fs::symlink_metadata(upper.join(rel))?;
    f(ChangeKind::Add, rel, Some(&m))?;
    if m.is_dir() {
        add_children(upper, rel, f)?;
    }
    Ok(())
}

fn add_children(upper: &Path, rel: &Path, f: &mut ChangeFn<'_>) -> io::Result<()> {
    for n in sorted_names(&upper.join(rel))? {
        add_tree(upper, &rel.join(n), f)?;
    }
    Ok(())
}

fn is_overlay_whiteout(m: &Metadata) -> bool {
    m.file_type().is_char_device() && m.rdev() == 0
}

/// Whether the overlay upper dir can be read as a plain change set: no
/// renamed directories (`overlay.redirect`) and no metadata-only copies
/// (`overlay.metacopy`), whose data lives in a lower layer.
fn overlay_upper_is_plain(upper: &Path, prefix: &str) -> io::Result<bool> {
    let redirect = format!("{prefix}overlay.redirect");
    let metacopy = format!("{prefix}overlay.metacopy");
    let mut stack = vec![upper.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d)? {
            let e = e?;
            let ft = e.file_type()?;
            let p = e.path();
            if ft.is_dir() {
                if get_xattr(&p, redirect.as_bytes())?.is_some() {
                    return Ok(false);
                }
                stack.push(p);
            } else if ft.is_file() && get_xattr(&p, metacopy.as_bytes())?.is_some() {
                return Ok(false);
            }
        }
    }
    Ok(true)
}

/// The changes an overlay upper dir holds, fed to `cw` in walk order:
/// whiteouts (char device 0/0, or a file with `overlay.whiteout`) become
/// deletions, opaque directories get an opaque marker after their entry,
/// everything else is written as is.
fn overlay_changes<W: Write + ?Sized>(
    upper: &Path,
    prefix: &str,
    cw: &mut ChangeWriter<'_, W>,
) -> io::Result<()> {
    let opaque = format!("{prefix}overlay.opaque");
    let whiteout = format!("{prefix}overlay.whiteout");
    overlay_dir(upper, Path::new(""), &opaque, &whiteout, cw)
}

fn overlay_dir<W: Write + ?Sized>(
    upper: &Path,
    rel: &Path,
    opaque: &str,
    whiteout: &str,
    cw: &mut ChangeWriter<'_, W>,
) -> io::Result<()> {
    for n in sorted_names(&upper.join(rel))? {
        let p = rel.join(&n);
        let full = upper.join(&p);
        let m = fs::symlink_metadata(&full)?;
        if is_overlay_whiteout(&m)
            || (m.is_file() && m.len() == 0 && get_xattr(&full, whiteout.as_bytes())?.is_some())
        {
            cw.handle(ChangeKind::Delete, &p, None)?;
        } else if m.is_dir() {
            cw.handle(ChangeKind::Modify, &p, Some(&m))?;
            if get_xattr(&full, opaque.as_bytes())?.as_deref() == Some(b"y") {
                cw.opaque(&p)?;
            }
            overlay_dir(upper, &p, opaque, whiteout, cw)?;
        } else {
            cw.handle(ChangeKind::Modify, &p, Some(&m))?;
        }
    }
    Ok(())
}

// ------------------------------------------------------------ tar writing

/// Timestamps for the written entries.
#[derive(Debug, Clone, Copy)]
pub struct WriteOptions {
    /// Entry mtimes are clamped to this (SOURCE_DATE_EPOCH).
    pub mtime_upper_bound: Option<i64>,
    /// mtime of whiteout entries.
    pub whiteout_mtime: i64,
}

/// containerd's `ChangeWriter`: turns changes into tar entries.
pub struct ChangeWriter<'w, W: Write + ?Sized> {
    out: &'w mut W,
    source: PathBuf,
    opts: WriteOptions,
    /// Tar name of the first written name of each linked inode.
    inode_src: HashMap<(u64, u64), Vec<u8>>,
    /// Unmodified names linked to an inode not written yet.
    inode_refs: HashMap<(u64, u64), Vec<Vec<u8>>>,
    added_dirs: HashSet<PathBuf>,
}

impl<'w, W: Write + ?Sized> ChangeWriter<'w, W> {
    /// A writer of entries whose data is read from `source` (the upper tree).
    pub fn new(out: &'w mut W, source: &Path, opts: WriteOptions) -> Self {
        ChangeWriter {
            out,
            source: source.to_path_buf(),
            opts,
            inode_src: HashMap::new(),
            inode_refs: HashMap::new(),
            added_dirs: HashSet::new(),
        }
    }

    /// Writes the end-of-archive blocks.
    pub fn finish(self) -> io::Result<()> {
        self.out.write_all(&[0u8; 1024])
    }

    /// Writes the entry (or whiteout) for one change of `rel` (relative to
    /// the trees' roots); `m` is the upper tree's metadata (None for a
    /// deletion).
    pub fn handle(&mut self, kind: ChangeKind, rel: &Path, m: Option<&Metadata>) -> io::Result<()> {
        let Some(m) = m.filter(|_| kind != ChangeKind::Delete) else {
            let base = rel
                .file_name()
                .ok_or_else(|| io::Error::other("whiteout of the root"))?;
            let mut wname = OsString::from(WHITEOUT_PREFIX);
            wname.push(base);
            let wpath = rel.with_file_name(wname);
            return self.write_whiteout(&wpath);
        };
        let ft = m.file_type();
        if ft.is_socket() {
            return Ok(());
        }
        let mut name = rel.as_os_str().as_bytes().to_vec();
        if m.is_dir() {
            self.added_dirs.insert(rel.to_path_buf());
            name.push(b'/');
        }
        let full = self.source.join(rel);
        let link = if ft.is_symlink() {
            Some(fs::read_link(&full)?.into_os_string().into_vec())
        } else {
            None
        };
        let mut h = self.header_for(m);
        let mut hard_target = None;
        let mut additional = Vec::new();
        if is_linked(m) {
            let key = (m.dev(), m.ino());
            if let Some(src) = self.inode_src.get(&key) {
                hard_target = Some(src.clone());
            } else {
                if kind == ChangeKind::Unmodified {
                    self.inode_refs.entry(key).or_default().push(name);
                    return Ok(());
                }
                self.inode_src.insert(key, name.clone());
                additional = self.inode_refs.remove(&key).unwrap_or_default();
            }
        } else if kind == ChangeKind::Unmodified {
            return Ok(());
        }
        let xattrs = layer_xattrs(&full)?;
        self.include_parents(rel)?;
        match &hard_target {
            Some(t) => {
                h.set_entry_type(tar::EntryType::Link);
                h.set_size(0);
                self.write_entry(h.clone(), &name, Some(t), &xattrs, None)?;
            }
            None => {
                let data = if m.is_file() && m.len() > 0 {
                    Some(&full)
                } else {
                    None
                };
                self.write_entry(
                    h.clone(),
                    &name,
                    link.as_deref(),
                    &xattrs,
                    data.map(|p| (p.as_path(), m.len())),
                )?;
            }
        }
        for extra in additional {
            self.include_parents(Path::new(OsStr::from_bytes(&extra)))?;
            let mut lh = h.clone();
            lh.set_entry_type(tar::EntryType::Link);
            lh.set_size(0);
            self.write_entry(lh, &extra, Some(&name), &xattrs, None)?;
        }
        Ok(())
    }

    /// Writes `rel/.wh..wh..opq` (the directory `rel` hides what the lower
    /// layers hold in it).
    pub fn opaque(&mut self, rel: &Path) -> io::Result<()> {
        self.write_whiteout(&rel.join(WHITEOUT_OPAQUE))
    }

    fn write_whiteout(&mut self, wpath: &Path) -> io::Result<()> {
        self.include_parents(wpath)?;
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0);
        h.set_uid(0);
        h.set_gid(0);
        h.set_size(0);
        h.set_mtime(self.opts.whiteout_mtime.max(0) as u64);
        self.write_entry(h, wpath.as_os_str().as_bytes(), None, &[], None)
    }

    /// Writes the parent directories of `rel` not written yet (from the
    /// upper tree), outermost first.
    fn include_parents(&mut self, rel: &Path) -> io::Result<()> {
        let Some(parent) = rel.parent() else {
            return Ok(());
        };
        if parent.as_os_str().is_empty() || self.added_dirs.contains(parent) {
            return Ok(());
        }
        self.added_dirs.insert(parent.to_path_buf());
        let m = fs::metadata(self.source.join(parent))?;
        self.handle(ChangeKind::Modify, parent, Some(&m))
    }

    fn header_for(&self, m: &Metadata) -> tar::Header {
        let ft = m.file_type();
        let mut h = tar::Header::new_ustar();
        let kind = if ft.is_dir() {
            tar::EntryType::Directory
        } else if ft.is_symlink() {
            tar::EntryType::Symlink
        } else if ft.is_char_device() {
            tar::EntryType::Char
        } else if ft.is_block_device() {
            tar::EntryType::Block
        } else if ft.is_fifo() {
            tar::EntryType::Fifo
        } else {
            tar::EntryType::Regular
        };
        h.set_entry_type(kind);
        h.set_mode(m.mode() & 0o7777);
        h.set_uid(m.uid() as u64);
        h.set_gid(m.gid() as u64);
        let mut mtime = m.mtime();
        if let Some(bound) = self.opts.mtime_upper_bound {
            mtime = mtime.min(bound);
        }
        h.set_mtime(mtime.max(0) as u64);
        h.set_size(if kind == tar::EntryType::Regular {
            m.len()
        } else {
            0
        });
        if ft.is_char_device() || ft.is_block_device() {
            let rdev = m.rdev();
            let _ = h.set_device_major(libc::major(rdev));
            let _ = h.set_device_minor(libc::minor(rdev));
        }
        h
    }

    /// Writes one entry: a PAX header first when the name or link target do
    /// not fit ustar or xattrs are set, then the header and the data.
    fn write_entry(
        &mut self,
        mut h: tar::Header,
        name: &[u8],
        link: Option<&[u8]>,
        xattrs: &[(Vec<u8>, Vec<u8>)],
        data: Option<(&Path, u64)>,
    ) -> io::Result<()> {
        let mut pax: Vec<(String, Vec<u8>)> = Vec::new();
        if !set_ustar_name(&mut h, name) {
            pax.push(("path".into(), name.to_vec()));
        }
        if let Some(l) = link {
            let field = &mut h.as_old_mut().linkname;
            if l.len() <= field.len() {
                field[..l.len()].copy_from_slice(l);
            } else {
                let n = field.len();
                field.copy_from_slice(&l[..n]);
                pax.push(("linkpath".into(), l.to_vec()));
            }
        }
        for (k, v) in xattrs {
            pax.push((
                format!("SCHILY.xattr.{}", String::from_utf8_lossy(k)),
                v.clone(),
            ));
        }
        if !pax.is_empty() {
            let mut records = Vec::new();
            for (k, v) in &pax {
                // "<len> <key>=<value>\n", where len counts itself.
                let rest = 3 + k.len() + v.len();
                let mut len = rest + 1;
                while len != rest + len.to_string().len() {
                    len = rest + len.to_string().len();
                }
                records.extend_from_slice(format!("{len} {k}=").as_bytes());
                records.extend_from_slice(v);
                records.push(b'\n');
            }
            let mut ph = tar::Header::new_ustar();
            ph.set_entry_type(tar::EntryType::XHeader);
            ph.set_size(records.len() as u64);
            ph.set_mode(0o644);
            ph.set_mtime(h.mtime().unwrap_or(0));
            let pname = b"PaxHeaders/entry";
            ph.as_old_mut().name[..pname.len()].copy_from_slice(pname);
            ph.set_cksum();
            self.out.write_all(ph.as_bytes())?;
            self.out.write_all(&records)?;
            pad(self.out, records.len() as u64)?;
        }
        h.set_cksum();
        self.out.write_all(h.as_bytes())?;
        if let Some((path, size)) = data {
            let mut f = fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(path)?;
            let n = io::copy(&mut (&mut f).take(size), self.out)?;
            if n != size {
                return Err(io::Error::other(format!(
                    "{} shrank from {size} to {n} bytes while being read",
                    path.display()
                )));
            }
            pad(self.out, size)?;
        }
        Ok(())
    }
}

fn pad<W: Write + ?Sized>(out: &mut W, size: u64) -> io::Result<()> {
    let rem = (size % 512) as usize;
    if rem != 0 {
        out.write_all(&[0u8; 512][..512 - rem])?;
    }
    Ok(())
}

/// Puts `name` into the ustar name (and prefix) fields; false if it does
/// not fit (a PAX `path` record is then needed; the name field gets the
/// name's tail so old readers see something sensible).
fn set_ustar_name(h: &mut tar::Header, name: &[u8]) -> bool {
    let Some(u) = h.as_ustar_mut() else {
        return false;
    };
    if name.len() <= u.name.len() {
        u.name[..name.len()].copy_from_slice(name);
        return true;
    }
    // Split at a '/' so that prefix <= 155 and the rest <= 100 bytes.
    let trimmed = name.strip_suffix(b"/").unwrap_or(name);
    for (i, b) in trimmed.iter().enumerate() {
        if *b == b'/' && i <= u.prefix.len() && name.len() - i - 1 <= u.name.len() && i > 0 {
            u.prefix[..i].copy_from_slice(&name[..i]);
            let rest = &name[i + 1..];
            u.name[..rest.len()].copy_from_slice(rest);
            return true;
        }
    }
    let tail = &name[name.len() - u.name.len()..];
    u.name.copy_from_slice(tail);
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, PermissionsExt};

    fn set_mtime(p: &Path, secs: i64, nsec: i64) {
        let c = cstr(p).unwrap();
        let ts = libc::timespec {
            tv_sec: secs as libc::time_t,
            tv_nsec: nsec as _,
        };
        let times = [ts, ts];
        // SAFETY: valid path and a two-element timespec array.
        let r = unsafe {
            libc::utimensat(
                libc::AT_FDCWD,
                c.as_ptr(),
                times.as_ptr(),
                libc::AT_SYMLINK_NOFOLLOW,
            )
        };
        assert_eq!(r, 0, "utimensat {}", p.display());
    }

    fn changes(lower: &Path, upper: &Path) -> Vec<(ChangeKind, String)> {
        let mut out = Vec::new();
        compare_trees(lower, upper, &mut |k, p, _| {
            out.push((k, p.display().to_string()));
            Ok(())
        })
        .unwrap();
        out
    }

    /// (type char, name, link target, size) of every entry of a tar.
    fn entries(tar_bytes: &[u8]) -> Vec<(char, String, String)> {
        let mut a = tar::Archive::new(tar_bytes);
        a.entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let t = match e.header().entry_type() {
                    tar::EntryType::Directory => 'd',
                    tar::EntryType::Regular => 'f',
                    tar::EntryType::Symlink => 'l',
                    tar::EntryType::Link => 'h',
                    tar::EntryType::Fifo => 'p',
                    _ => '?',
                };
                let name = String::from_utf8_lossy(&e.path_bytes()).into_owned();
                let link = e
                    .link_name_bytes()
                    .map(|l| String::from_utf8_lossy(&l).into_owned())
                    .unwrap_or_default();
                (t, name, link)
            })
            .collect()
    }

    fn write_diff(lower: &Path, upper: &Path) -> Vec<u8> {
        let mut out = Vec::new();
        let opts = WriteOptions {
            mtime_upper_bound: None,
            whiteout_mtime: 0,
        };
        let mut cw = ChangeWriter::new(&mut out, upper, opts);
        compare_trees(lower, upper, &mut |k, p, m| cw.handle(k, p, m)).unwrap();
        cw.finish().unwrap();
        out
    }

    /// A lower tree and an upper copy of it (same mtimes), for changing.
    fn two_trees() -> (tempfile::TempDir, PathBuf, PathBuf) {
        let t = tempfile::tempdir().unwrap();
        let (l, u) = (t.path().join("l"), t.path().join("u"));
        for root in [&l, &u] {
            fs::create_dir_all(root.join("etc")).unwrap();
            fs::create_dir_all(root.join("d/sub")).unwrap();
            fs::write(root.join("etc/a"), b"a").unwrap();
            fs::write(root.join("etc/b"), b"b").unwrap();
            fs::write(root.join("d/old"), b"old").unwrap();
            fs::write(root.join("d/sub/s"), b"s").unwrap();
            fs::write(root.join("h1"), b"h").unwrap();
            fs::hard_link(root.join("h1"), root.join("h2")).unwrap();
            symlink("etc/a", root.join("lnk")).unwrap();
            for p in ["etc/a", "etc/b", "d/old", "d/sub/s", "h1", "lnk"] {
                set_mtime(&root.join(p), 1000, 0);
            }
            for p in ["etc", "d/sub", "d", ""] {
                set_mtime(&root.join(p), 1000, 0);
            }
        }
        (t, l, u)
    }

    #[test]
    fn identical_trees_have_no_changes() {
        let (_t, l, u) = two_trees();
        assert_eq!(
            changes(&l, &u),
            vec![
                (ChangeKind::Unmodified, "h1".into()),
                (ChangeKind::Unmodified, "h2".into())
            ]
        );
        let tar = write_diff(&l, &u);
        assert!(entries(&tar).is_empty(), "{:?}", entries(&tar));
    }

    #[test]
    fn double_walk_finds_adds_modifies_deletes_in_containerd_order() {
        use ChangeKind::*;
        let (_t, l, u) = two_trees();
        fs::write(u.join("etc/new"), b"new").unwrap();
        fs::remove_file(u.join("etc/a")).unwrap();
        // Same size and whole-second mtime, other content: content compare.
        fs::write(u.join("etc/b"), b"B").unwrap();
        set_mtime(&u.join("etc/b"), 1000, 0);
        fs::remove_dir_all(u.join("d")).unwrap();
        fs::create_dir(u.join("d")).unwrap();
        fs::write(u.join("d/n"), b"n").unwrap();
        fs::create_dir_all(u.join("x/y")).unwrap();
        fs::write(u.join("x/y/z"), b"z").unwrap();
        fs::hard_link(u.join("x/y/z"), u.join("x/zl")).unwrap();
        fs::set_permissions(
            u.join("lnk").parent().unwrap().join("etc"),
            fs::Permissions::from_mode(0o700),
        )
        .unwrap();
        nix::unistd::mkfifo(
            &u.join("fifo"),
            nix::sys::stat::Mode::from_bits_truncate(0o644),
        )
        .unwrap();
        let got = changes(&l, &u);
        let want: Vec<(ChangeKind, String)> = [
            (Add, "d/n"),
            (Delete, "d/old"),
            (Delete, "d/sub"),
            (Modify, "etc"),
            (Delete, "etc/a"),
            (Modify, "etc/b"),
            (Add, "etc/new"),
            (Add, "fifo"),
            (Unmodified, "h1"),
            (Unmodified, "h2"),
            (Add, "x"),
            (Add, "x/y"),
            (Add, "x/y/z"),
            (Add, "x/zl"),
        ]
        .iter()
        .map(|(k, p)| (*k, p.to_string()))
        .collect();
        assert_eq!(got, want);

        let tar = write_diff(&l, &u);
        let names: Vec<(char, String, String)> = entries(&tar);
        let want_tar: Vec<(char, &str, &str)> = vec![
            ('d', "d/", ""),
            ('f', "d/n", ""),
            ('f', "d/.wh.old", ""),
            ('f', "d/.wh.sub", ""),
            ('d', "etc/", ""),
            ('f', "etc/.wh.a", ""),
            ('f', "etc/b", ""),
            ('f', "etc/new", ""),
            ('p', "fifo", ""),
            ('d', "x/", ""),
            ('d', "x/y/", ""),
            ('f', "x/y/z", ""),
            ('h', "x/zl", "x/y/z"),
        ];
        let got_tar: Vec<(char, &str, &str)> = names
            .iter()
            .map(|(t, n, l)| (*t, n.as_str(), l.as_str()))
            .collect();
        assert_eq!(got_tar, want_tar);

        // Applying the diff onto a copy of the lower tree gives the upper.
        let (_t2, l2, _u2) = two_trees();
        crate::layer::apply_layer(&l2, tar.as_slice()).unwrap();
        assert_eq!(fs::read(l2.join("etc/b")).unwrap(), b"B");
        assert!(!l2.join("etc/a").exists());
        assert!(!l2.join("d/old").exists() && !l2.join("d/sub").exists());
        assert_eq!(fs::read(l2.join("d/n")).unwrap(), b"n");
        assert_eq!(
            fs::metadata(l2.join("x/zl")).unwrap().ino(),
            fs::metadata(l2.join("x/y/z")).unwrap().ino()
        );
        assert_eq!(fs::metadata(l2.join("etc")).unwrap().mode() & 0o777, 0o700);
    }

    #[test]
    fn metadata_changes_are_detected() {
        let (_t, l, u) = two_trees();
        // Different sub-second mtime, same content and size.
        set_mtime(&u.join("etc/a"), 1000, 5);
        // Type change: file -> dir, dir -> file.
        fs::remove_file(u.join("etc/b")).unwrap();
        fs::create_dir(u.join("etc/b")).unwrap();
        fs::write(u.join("etc/b/inner"), b"i").unwrap();
        fs::remove_dir_all(u.join("d/sub")).unwrap();
        fs::write(u.join("d/sub"), b"now a file").unwrap();
        // Symlink target change with the same mtime and length.
        fs::remove_file(u.join("lnk")).unwrap();
        symlink("etc/x", u.join("lnk")).unwrap();
        set_mtime(&u.join("lnk"), 1000, 0);
        // A user xattr (tmpfs and ext4 both take them; skip if not).
        let xattr_ok = {
            let c = cstr(&u.join("d/old")).unwrap();
            // SAFETY: valid NUL-terminated strings and a 1-byte value.
            unsafe {
                libc::lsetxattr(
                    c.as_ptr(),
                    c"user.test".as_ptr(),
                    b"v".as_ptr().cast(),
                    1,
                    0,
                ) == 0
            }
        };
        let got: Vec<String> = changes(&l, &u)
            .into_iter()
            .filter(|(k, _)| *k != ChangeKind::Unmodified)
            .map(|(k, p)| format!("{k:?} {p}"))
            .collect();
        let mut want = vec![];
        if xattr_ok {
            want.push("Modify d/old");
        }
        want.extend([
            "Modify d/sub",
            "Modify etc/a",
            "Modify etc/b",
            "Add etc/b/inner",
            "Modify lnk",
        ]);
        assert_eq!(got, want);
        let tar = write_diff(&l, &u);
        let mut a = tar::Archive::new(tar.as_slice());
        let mut saw_xattr = false;
        for e in a.entries().unwrap() {
            let mut e = e.unwrap();
            if e.path_bytes().as_ref() == b"d/old" {
                for x in e.pax_extensions().unwrap().unwrap() {
                    let x = x.unwrap();
                    saw_xattr |=
                        x.key().unwrap() == "SCHILY.xattr.user.test" && x.value_bytes() == b"v";
                }
            }
        }
        assert_eq!(saw_xattr, xattr_ok);
    }

    #[test]
    fn long_names_use_pax_and_round_trip() {
        let t = tempfile::tempdir().unwrap();
        let (l, u) = (t.path().join("l"), t.path().join("u"));
        fs::create_dir_all(&l).unwrap();
        let deep = "a".repeat(120) + "/" + &"b".repeat(120);
        fs::create_dir_all(u.join(&deep)).unwrap();
        let file = format!("{deep}/{}", "c".repeat(200));
        fs::write(u.join(&file), b"data").unwrap();
        symlink("t".repeat(150), u.join("longlink")).unwrap();
        let tar = write_diff(&l, &u);
        let names: Vec<String> = entries(&tar).into_iter().map(|e| e.1).collect();
        assert_eq!(
            names,
            vec![
                format!("{}/", "a".repeat(120)),
                format!("{deep}/"),
                file.clone(),
                "longlink".into()
            ]
        );
        let out = t.path().join("out");
        fs::create_dir(&out).unwrap();
        crate::layer::apply_layer(&out, tar.as_slice()).unwrap();
        assert_eq!(fs::read(out.join(&file)).unwrap(), b"data");
        assert_eq!(
            fs::read_link(out.join("longlink")).unwrap(),
            PathBuf::from("t".repeat(150))
        );
    }

    #[test]
    fn overlay_upper_walk_translates_whiteouts_and_opaque_dirs() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root for whiteout device nodes and trusted xattrs");
            return;
        }
        let t = tempfile::tempdir().unwrap();
        let up = t.path().join("upper");
        fs::create_dir_all(up.join("etc")).unwrap();
        fs::create_dir_all(up.join("d")).unwrap();
        fs::write(up.join("etc/new"), b"new").unwrap();
        nix::sys::stat::mknod(
            &up.join("etc/a"),
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::empty(),
            0,
        )
        .unwrap();
        fs::hard_link(up.join("etc/a"), up.join("gone")).unwrap(); // shared whiteout inode
        fs::write(up.join("d/n"), b"n").unwrap();
        let c = cstr(&up.join("d")).unwrap();
        // SAFETY: valid NUL-terminated strings and a 1-byte value.
        let r = unsafe {
            libc::lsetxattr(
                c.as_ptr(),
                c"trusted.overlay.opaque".as_ptr(),
                b"y".as_ptr().cast(),
                1,
                0,
            )
        };
        assert_eq!(r, 0);
        assert!(overlay_upper_is_plain(&up, "trusted.").unwrap());
        let mut out = Vec::new();
        let mut cw = ChangeWriter::new(
            &mut out,
            &up,
            WriteOptions {
                mtime_upper_bound: None,
                whiteout_mtime: 0,
            },
        );
        overlay_changes(&up, "trusted.", &mut cw).unwrap();
        cw.finish().unwrap();
        let names: Vec<String> = entries(&out)
            .into_iter()
            .map(|e| format!("{}{}", e.0, e.1))
            .collect();
        assert_eq!(
            names,
            [
                "dd/",
                "fd/.wh..wh..opq",
                "fd/n",
                "detc/",
                "fetc/.wh.a",
                "fetc/new",
                "f.wh.gone"
            ]
        );
        // Redirected directories disable the fast path.
        let c = cstr(&up.join("etc")).unwrap();
        // SAFETY: as above.
        let r = unsafe {
            libc::lsetxattr(
                c.as_ptr(),
                c"trusted.overlay.redirect".as_ptr(),
                b"/x".as_ptr().cast(),
                2,
                0,
            )
        };
        assert_eq!(r, 0);
        assert!(!overlay_upper_is_plain(&up, "trusted.").unwrap());
    }

    #[test]
    fn media_types_and_bad_mounts() {
        assert_eq!(
            media_type_for("").unwrap(),
            (MEDIA_TYPE_LAYER_GZIP, Compression::Gzip)
        );
        assert_eq!(
            media_type_for(MEDIA_TYPE_LAYER_TAR).unwrap().1,
            Compression::None
        );
        assert!(matches!(
            media_type_for(MEDIA_TYPE_LAYER_ZSTD),
            Err(Error::Unimplemented(_))
        ));
        assert!(matches!(
            media_type_for("text/plain"),
            Err(Error::Unimplemented(_))
        ));
        let m = |t: &str, s: &str, o: &[&str]| Mount {
            r#type: t.into(),
            source: s.into(),
            target: String::new(),
            options: o.iter().map(|s| s.to_string()).collect(),
        };
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_str().unwrap();
        for bad in [
            vec![],
            vec![m("bind", d, &[]), m("bind", d, &[])],
            vec![m("tmpfs", "tmpfs", &[])],
            vec![m("", d, &[])],
            vec![m("bind", "relative/dir", &[])],
            vec![m("bind", "/nonexistent/orca/dir", &[])],
            vec![m("overlay", "overlay", &["upperdir=/x"])],
            vec![m(
                "overlay",
                "overlay",
                &[&format!("lowerdir={d}:/nonexistent/orca")],
            )],
        ] {
            assert!(
                matches!(parse_mounts("left", &bad), Err(Error::InvalidArgument(_))),
                "{bad:?}"
            );
        }
        assert_eq!(
            parse_mounts("left", &[m("bind", d, &["ro", "rbind"])])
                .unwrap()
                .stack(),
            vec![PathBuf::from(d)]
        );
    }
}
