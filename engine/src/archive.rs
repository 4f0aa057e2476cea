//! Archives: `docker export` / `import`, `save` / `load` (docker-archive
//! format) and `docker cp` (`/containers/{id}/archive`).
//!
//! A container's files are reached in one of two ways:
//! - its snapshot mounts (`Snapshots.Mounts`), mounted under
//!   `<exec-root>/archive/` by [`RootfsMount`] (read-only: an overlay of
//!   `upperdir:lowerdir` with no upper layer, so a running container's own
//!   mount is not disturbed; read-write only while the container is stopped
//!   and its start is held off) and always unmounted on drop;
//! - `/proc/<pid>/root` of a running container's init (cp in/out, so the
//!   container's bind mounts are seen, as with dockerd).
//!
//! Every path a client names is resolved by [`resolve_in_root`]: symlinks are
//! evaluated as if the root were `/`, and `..` never climbs above it.

use std::collections::{HashMap, VecDeque};
use std::fs;
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use orca_proto::snapshots as snaps;
use orca_proto::types::Descriptor;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::error::{EngineError, Result};
use crate::image_writer::ImageWriter;
use crate::images::{chain_ids, is_dangling_name, DANGLING_PREFIX};
use crate::reference::{familiar, Reference};
use crate::util::Query;
use crate::Engine;

const MT_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const MT_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const MT_OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const MT_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
const MT_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// The response header `docker cp` reads the stat of a path from.
pub const PATH_STAT_HEADER: &str = "X-Docker-Container-Path-Stat";

type Body = crate::api::Body;

// ---------------------------------------------------------------- helpers

/// A `Write` that sends chunks into a response body channel (blocking; run
/// it on a blocking thread).
struct ChanWriter {
    tx: mpsc::Sender<Bytes>,
    buf: Vec<u8>,
}

impl ChanWriter {
    fn new(tx: mpsc::Sender<Bytes>) -> ChanWriter {
        ChanWriter {
            tx,
            buf: Vec::with_capacity(64 << 10),
        }
    }
}

impl Write for ChanWriter {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(b);
        if self.buf.len() >= 64 << 10 {
            self.flush()?;
        }
        Ok(b.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::take(&mut self.buf));
        self.tx
            .blocking_send(chunk)
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "client went away"))
    }
}

fn streaming(rx: mpsc::Receiver<Bytes>, content_type: &'static str) -> Response<Body> {
    use tokio_stream::StreamExt;
    let s = tokio_stream::wrappers::ReceiverStream::new(rx)
        .map(|b| Ok::<_, io::Error>(hyper::body::Frame::data(b)));
    let mut r = Response::new(http_body_util::StreamBody::new(s).boxed());
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

/// Runs `f` on a blocking thread writing into a streamed response body;
/// errors end the stream early (the client sees a truncated archive).
fn stream_blocking(
    what: &'static str,
    content_type: &'static str,
    f: impl FnOnce(&mut ChanWriter) -> io::Result<()> + Send + 'static,
) -> Response<Body> {
    let (tx, rx) = mpsc::channel(16);
    tokio::task::spawn_blocking(move || {
        let mut w = ChanWriter::new(tx);
        if let Err(e) = f(&mut w).and_then(|_| w.flush()) {
            warn!("{what}: {e}");
        }
    });
    streaming(rx, content_type)
}

/// Sends one JSON progress line.
async fn emit(tx: &mpsc::Sender<Bytes>, v: Value) {
    let _ = tx.send(Bytes::from(v.to_string() + "\r\n")).await;
}

/// Writes a request body into a file.
async fn body_to_file(body: Incoming, file: &mut fs::File) -> Result<u64> {
    let mut body = body;
    let mut n = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| EngineError::BadRequest(format!("reading body: {e}")))?;
        if let Ok(data) = frame.into_data() {
            n += data.len() as u64;
            file.write_all(&data)?;
        }
    }
    file.flush()?;
    file.seek(SeekFrom::Start(0))?;
    Ok(n)
}

fn sha256_hex(b: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(b)))
}

/// A reader that hashes what passes through it.
struct HashingReader<R> {
    inner: R,
    hash: Sha256,
    n: u64,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        self.n += n as u64;
        Ok(n)
    }
}

/// A writer that hashes what passes through it.
struct HashingWriter<W> {
    inner: W,
    hash: Sha256,
    n: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(b)?;
        self.hash.update(&b[..n]);
        self.n += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Compression {
    None,
    Gzip,
    Other(&'static str),
}

fn sniff(file: &mut fs::File) -> io::Result<Compression> {
    let mut m = [0u8; 6];
    let mut got = 0;
    while got < m.len() {
        let n = file.read(&mut m[got..])?;
        if n == 0 {
            break;
        }
        got += n;
    }
    file.seek(SeekFrom::Start(0))?;
    let m = &m[..got];
    Ok(if m.starts_with(&[0x1f, 0x8b]) {
        Compression::Gzip
    } else if m.starts_with(b"BZh") {
        Compression::Other("bzip2")
    } else if m.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        Compression::Other("xz")
    } else if m.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Compression::Other("zstd")
    } else {
        Compression::None
    })
}

/// A reader of the uncompressed tar in `file` (gzip or plain).
fn uncompressed(mut file: fs::File) -> Result<Box<dyn Read + Send>> {
    match sniff(&mut file)? {
        Compression::None => Ok(Box::new(BufReader::new(file))),
        Compression::Gzip => Ok(Box::new(flate2::read::MultiGzDecoder::new(BufReader::new(
            file,
        )))),
        Compression::Other(c) => Err(EngineError::NotImplemented(format!(
            "{c}-compressed archives are not implemented in orcad yet (plain tar or gzip only)"
        ))),
    }
}

fn temp_file(engine: &Engine) -> Result<fs::File> {
    let dir = engine.cfg.exec_root.join("archive");
    fs::create_dir_all(&dir)?;
    Ok(tempfile::tempfile_in(&dir)?)
}

/// Minimal standard base64 (for the path-stat header).
pub fn base64(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for c in data.chunks(3) {
        let n = (c[0] as u32) << 16
            | (*c.get(1).unwrap_or(&0) as u32) << 8
            | *c.get(2).unwrap_or(&0) as u32;
        out.push(A[(n >> 18) as usize & 63] as char);
        out.push(A[(n >> 12) as usize & 63] as char);
        out.push(if c.len() > 1 {
            A[(n >> 6) as usize & 63] as char
        } else {
            '='
        });
        out.push(if c.len() > 2 {
            A[n as usize & 63] as char
        } else {
            '='
        });
    }
    out
}

// ---------------------------------------------------------------- rootfs

/// A container's snapshot mounted in a private temp dir; unmounted (lazily,
/// so it never fails on a busy mount) and removed on drop.
pub struct RootfsMount {
    dir: PathBuf,
    mounted: bool,
}

impl RootfsMount {
    /// Mounts the snapshot `key`. Read-only mounts of an overlay stack the
    /// upper dir as the top lower layer (no workdir is taken).
    pub async fn mount(engine: &Engine, key: &str, rw: bool) -> Result<RootfsMount> {
        let mounts = engine
            .ctrd
            .snapshots()
            .mounts(engine.ctrd.req(snaps::MountsRequest {
                snapshotter: engine.images.snapshotter().to_string(),
                key: key.to_string(),
            }))
            .await
            .map_err(|s| EngineError::grpc("snapshot mounts", s))?
            .into_inner()
            .mounts;
        let base = engine.cfg.exec_root.join("archive");
        fs::create_dir_all(&base)?;
        let dir = base.join(format!("mnt-{}", crate::util::random_hex(8)));
        fs::create_dir(&dir)?;
        let mut m = RootfsMount {
            dir: dir.clone(),
            mounted: false,
        };
        let [mnt] = mounts.as_slice() else {
            return Err(EngineError::internal(format!(
                "snapshot {key}: {} mounts (expected one)",
                mounts.len()
            )));
        };
        tokio::task::spawn_blocking({
            let mnt = mnt.clone();
            move || mount_one(&mnt, &dir, rw)
        })
        .await
        .map_err(EngineError::internal)??;
        m.mounted = true;
        Ok(m)
    }

    /// Where the rootfs is.
    pub fn path(&self) -> &Path {
        &self.dir
    }
}

impl Drop for RootfsMount {
    fn drop(&mut self) {
        if self.mounted {
            if let Err(e) = nix::mount::umount2(&self.dir, nix::mount::MntFlags::MNT_DETACH) {
                warn!(dir = %self.dir.display(), "cannot unmount: {e}");
                return;
            }
        }
        let _ = fs::remove_dir(&self.dir);
    }
}

pub(crate) fn mount_one(m: &orca_proto::types::Mount, target: &Path, rw: bool) -> Result<()> {
    use nix::mount::{mount, MsFlags};
    let err = |e: nix::Error| EngineError::internal(format!("mounting the rootfs: {e}"));
    match m.r#type.as_str() {
        "overlay" => {
            let mut opts: Vec<String> = Vec::new();
            let (mut upper, mut lower) = (None, None);
            for o in &m.options {
                if let Some(v) = o.strip_prefix("upperdir=") {
                    upper = Some(v.to_string());
                } else if let Some(v) = o.strip_prefix("lowerdir=") {
                    lower = Some(v.to_string());
                } else if o.starts_with("workdir=") {
                    if rw {
                        opts.push(o.clone());
                    }
                } else if o != "rw" && o != "ro" {
                    opts.push(o.clone());
                }
            }
            let lower = lower.unwrap_or_default();
            match (upper, rw) {
                (Some(u), true) => {
                    opts.push(format!("upperdir={u}"));
                    opts.push(format!("lowerdir={lower}"));
                }
                (Some(u), false) => opts.push(format!("lowerdir={u}:{lower}")),
                (None, _) => opts.push(format!("lowerdir={lower}")),
            }
            let flags = if rw {
                MsFlags::empty()
            } else {
                MsFlags::MS_RDONLY
            };
            mount(
                Some("overlay"),
                target,
                Some("overlay"),
                flags,
                Some(opts.join(",").as_str()),
            )
            .map_err(err)?;
        }
        "bind" | "rbind" => {
            let mut flags = MsFlags::MS_BIND;
            if m.r#type == "rbind" || m.options.iter().any(|o| o == "rbind") {
                flags |= MsFlags::MS_REC;
            }
            mount(
                Some(m.source.as_str()),
                target,
                None::<&str>,
                flags,
                None::<&str>,
            )
            .map_err(err)?;
            let ro = !rw || m.options.iter().any(|o| o == "ro");
            if ro {
                if let Err(e) = mount(
                    None::<&str>,
                    target,
                    None::<&str>,
                    MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
                    None::<&str>,
                ) {
                    let _ = nix::mount::umount2(target, nix::mount::MntFlags::MNT_DETACH);
                    return Err(err(e));
                }
            }
        }
        other => {
            return Err(EngineError::NotImplemented(format!(
                "rootfs mounts of type {other} are not implemented in orcad yet"
            )))
        }
    }
    Ok(())
}

/// Where a container's files are reached: a mount of its snapshot, or the
/// root of its running init.
enum ContainerRoot {
    Mounted(RootfsMount),
    Proc(PathBuf),
}

impl ContainerRoot {
    fn path(&self) -> &Path {
        match self {
            ContainerRoot::Mounted(m) => m.path(),
            ContainerRoot::Proc(p) => p,
        }
    }
}

async fn container_root(engine: &Engine, id: &str, rw: bool) -> Result<ContainerRoot> {
    let entry = engine.containers.lookup(id)?;
    let rec = entry.record();
    if rec.state.running && rec.state.pid > 0 {
        let p = PathBuf::from(format!("/proc/{}/root", rec.state.pid));
        if fs::metadata(&p).is_ok() {
            return Ok(ContainerRoot::Proc(p));
        }
    }
    Ok(ContainerRoot::Mounted(
        RootfsMount::mount(engine, &rec.id, rw).await?,
    ))
}

/// Lexical components of a container path (empty and `.` dropped).
fn components(p: &str) -> VecDeque<String> {
    p.split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .map(String::from)
        .collect()
}

/// Resolves `path` inside `root` with symlinks evaluated as if `root` were
/// `/` and `..` stopping at it. The final component is followed only with
/// `follow_final`. Returns the path relative to `root` (no leading `/`).
pub fn resolve_in_root(root: &Path, path: &str, follow_final: bool) -> io::Result<PathBuf> {
    let mut parts = components(path);
    let mut cur = PathBuf::new();
    let mut links = 0;
    while let Some(c) = parts.pop_front() {
        if c == ".." {
            cur.pop();
            continue;
        }
        let cand = cur.join(&c);
        if parts.is_empty() && !follow_final {
            cur = cand;
            break;
        }
        match fs::symlink_metadata(root.join(&cand)) {
            Ok(m) if m.file_type().is_symlink() => {
                links += 1;
                if links > 255 {
                    return Err(io::Error::from_raw_os_error(libc::ELOOP));
                }
                let target = fs::read_link(root.join(&cand))?;
                let t = target.to_string_lossy();
                if t.starts_with('/') {
                    cur = PathBuf::new();
                }
                let mut next = components(&t);
                next.extend(parts);
                parts = next;
            }
            _ => cur = cand,
        }
    }
    Ok(cur)
}

// ---------------------------------------------------------------- tar out

/// Filesystems never archived from a running container's root.
fn is_virtual_fs(p: &Path) -> bool {
    match nix::sys::statfs::statfs(p) {
        Ok(s) => {
            let t = s.filesystem_type();
            use nix::sys::statfs as f;
            t == f::PROC_SUPER_MAGIC
                || t == f::SYSFS_MAGIC
                || t == f::CGROUP_SUPER_MAGIC
                || t == f::CGROUP2_SUPER_MAGIC
                || t == f::DEBUGFS_MAGIC
                || t == f::SECURITYFS_MAGIC
        }
        Err(_) => false,
    }
}

/// Appends `src` (not followed) as `name`, recursing into directories.
fn append_tree<W: Write>(
    b: &mut tar::Builder<W>,
    src: &Path,
    name: &Path,
    top: bool,
) -> io::Result<()> {
    let m = fs::symlink_metadata(src)?;
    let ft = m.file_type();
    if ft.is_socket() {
        return Ok(());
    }
    if ft.is_dir() && !top && is_virtual_fs(src) {
        return Ok(());
    }
    if name.as_os_str().is_empty() {
        // The root itself: no entry, only its children.
    } else {
        b.append_path_with_name(src, name)?;
    }
    if ft.is_dir() {
        let mut kids: Vec<_> = fs::read_dir(src)?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name())
            .collect();
        kids.sort();
        for k in kids {
            let r = append_tree(b, &src.join(&k), &name.join(&k), false);
            if let Err(e) = r {
                // A file vanishing meanwhile is not fatal.
                if e.kind() != io::ErrorKind::NotFound {
                    return Err(e);
                }
            }
        }
    }
    Ok(())
}

fn tar_builder<W: Write>(w: W) -> tar::Builder<W> {
    let mut b = tar::Builder::new(w);
    b.mode(tar::HeaderMode::Complete);
    b.follow_symlinks(false);
    b
}

// ---------------------------------------------------------------- export

/// GET /containers/{id}/export: a tar of the container's filesystem.
pub async fn export(engine: Arc<Engine>, id: &str) -> Result<Response<Body>> {
    let entry = engine.containers.lookup(id)?;
    let rec = entry.record();
    let m = RootfsMount::mount(&engine, &rec.id, false).await?;
    info!(id = %rec.id, "exporting container");
    Ok(stream_blocking("export", "application/x-tar", move |w| {
        let mut b = tar_builder(w);
        append_tree(&mut b, m.path(), Path::new(""), true)?;
        b.finish()?;
        drop(m);
        Ok(())
    }))
}

// ---------------------------------------------------------------- cp

/// Go's `os.FileMode` bits for a file's metadata (what `docker cp` expects).
fn go_mode(m: &fs::Metadata) -> u32 {
    let ft = m.file_type();
    let mut mode = m.mode() & 0o777;
    if ft.is_dir() {
        mode |= 1 << 31;
    } else if ft.is_symlink() {
        mode |= 1 << 27;
    } else if ft.is_fifo() {
        mode |= 1 << 25;
    } else if ft.is_socket() {
        mode |= 1 << 24;
    } else if ft.is_block_device() {
        mode |= 1 << 26;
    } else if ft.is_char_device() {
        mode |= (1 << 26) | (1 << 21);
    }
    let raw = m.mode();
    if raw & libc::S_ISUID != 0 {
        mode |= 1 << 23;
    }
    if raw & libc::S_ISGID != 0 {
        mode |= 1 << 22;
    }
    if raw & libc::S_ISVTX != 0 {
        mode |= 1 << 20;
    }
    mode
}

/// The container path's base name as docker names the archive's top entry.
fn base_name(path: &str) -> String {
    if path.ends_with("/.") || path == "." {
        return ".".into();
    }
    match components(path).back() {
        Some(b) if b != ".." => b.clone(),
        _ => "/".into(),
    }
}

fn not_found(path: &str, id: &str) -> EngineError {
    EngineError::NotFound(format!("Could not find the file {path} in container {id}"))
}

/// Stat of `path` as the header value; resolves it (final component not
/// followed unless the path ends in `/` or `/.`).
fn stat_header(root: &Path, path: &str, id: &str) -> Result<(PathBuf, fs::Metadata, String)> {
    let follow = path.ends_with('/') || path.ends_with("/.");
    let rel = resolve_in_root(root, path, follow)?;
    let full = root.join(&rel);
    let m = fs::symlink_metadata(&full).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => not_found(path, id),
        _ => EngineError::from(e),
    })?;
    let link_target = if m.file_type().is_symlink() {
        let t = resolve_in_root(root, &format!("/{}", rel.display()), true)?;
        format!("/{}", t.display())
    } else {
        String::new()
    };
    let mtime = chrono::DateTime::from_timestamp(m.mtime(), m.mtime_nsec() as u32)
        .map(crate::util::rfc3339)
        .unwrap_or_else(|| crate::util::ZERO_TIME.to_string());
    let stat = json!({
        "name": base_name(path),
        "size": m.len(),
        "mode": go_mode(&m),
        "mtime": mtime,
        "linkTarget": link_target,
    });
    Ok((full, m, base64(stat.to_string().as_bytes())))
}

fn cp_path(q: &Query) -> Result<String> {
    match q.get("path") {
        Some(p) if !p.is_empty() => Ok(p.to_string()),
        _ => Err(EngineError::BadRequest(
            "Bad parameters: path cannot be empty".into(),
        )),
    }
}

/// HEAD and GET /containers/{id}/archive?path=P.
pub async fn archive_get(
    engine: Arc<Engine>,
    id: &str,
    q: &Query,
    head: bool,
) -> Result<Response<Body>> {
    let path = cp_path(q)?;
    let root = container_root(&engine, id, false).await?;
    let (full, _, stat) = stat_header(root.path(), &path, id)?;
    let stat = HeaderValue::from_str(&stat).map_err(EngineError::internal)?;
    let mut r = if head {
        let mut r = Response::new(http_body_util::Empty::new().map_err(|n| match n {}).boxed());
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-tar"),
        );
        r
    } else {
        let name = base_name(&path);
        debug!(id, path, "copying out of container");
        stream_blocking("archive", "application/x-tar", move |w| {
            let mut b = tar_builder(w);
            let name = if name == "/" { String::new() } else { name };
            append_tree(&mut b, &full, Path::new(&name), true)?;
            b.finish()?;
            drop(root);
            Ok(())
        })
    };
    r.headers_mut().insert(PATH_STAT_HEADER, stat);
    *r.status_mut() = StatusCode::OK;
    Ok(r)
}

/// PUT /containers/{id}/archive?path=DIR: extracts a tar into DIR.
pub async fn archive_put(
    engine: Arc<Engine>,
    req: Request<Incoming>,
    id: &str,
    q: &Query,
) -> Result<Response<Body>> {
    let path = cp_path(q)?;
    let entry = engine.containers.lookup(id)?;
    // Holds off a start while a stopped container's rootfs is mounted rw.
    let _op = entry.op.lock().await;
    let cid = entry.record().id;
    let root = container_root(&engine, &cid, true).await?;
    let rel = resolve_in_root(root.path(), &path, true)?;
    let dest = root.path().join(&rel);
    match fs::metadata(&dest) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(EngineError::BadRequest(
                "extraction point is not a directory".into(),
            ))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(not_found(&path, id)),
        Err(e) => return Err(e.into()),
    }
    let mut f = temp_file(&engine)?;
    body_to_file(req.into_body(), &mut f).await?;
    let opts = ExtractOpts {
        no_overwrite_dir_non_dir: q.bool("noOverwriteDirNonDir"),
        copy_uid_gid: q.bool("copyUIDGID"),
    };
    let root_path = root.path().to_path_buf();
    tokio::task::spawn_blocking(move || {
        let r = uncompressed(f).and_then(|rd| extract(rd, &root_path, &rel, opts));
        drop(root);
        r
    })
    .await
    .map_err(EngineError::internal)??;
    info!(id = %cid, path, "copied into container");
    let mut r = Response::new(http_body_util::Empty::new().map_err(|n| match n {}).boxed());
    *r.status_mut() = StatusCode::OK;
    Ok(r)
}

#[derive(Clone, Copy)]
struct ExtractOpts {
    no_overwrite_dir_non_dir: bool,
    copy_uid_gid: bool,
}

/// A tar entry name made relative and clean; `None` if it climbs out.
fn clean_entry(name: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in name.components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::ParentDir => {
                if !out.pop() {
                    return None;
                }
            }
            Component::CurDir | Component::RootDir | Component::Prefix(_) => {}
        }
    }
    Some(out)
}

/// Extracts a tar into `root/dest` (dest relative to the root, already
/// resolved). Each entry's parent is resolved inside `root`; the entry
/// itself is never followed.
fn extract(rd: impl Read, root: &Path, dest: &Path, o: ExtractOpts) -> Result<()> {
    let mut ar = tar::Archive::new(rd);
    let mut dirs: Vec<(PathBuf, tar::Header)> = Vec::new();
    for e in ar.entries()? {
        let mut e = e?;
        let raw = e.path()?.into_owned();
        let Some(rel) = clean_entry(&raw) else {
            return Err(EngineError::BadRequest(format!(
                "invalid tar entry {}: it leaves the extraction point",
                raw.display()
            )));
        };
        let Some(fname) = rel.file_name().map(|n| n.to_owned()) else {
            continue; // "." itself
        };
        let parent_in_dest = dest.join(rel.parent().unwrap_or(Path::new("")));
        let parent = resolve_in_root(root, &format!("/{}", parent_in_dest.display()), true)?;
        let parent_full = root.join(&parent);
        if !parent_full.is_dir() {
            fs::create_dir_all(&parent_full)?;
        }
        let target = parent_full.join(&fname);
        let h = e.header().clone();
        let kind = h.entry_type();
        let existing = fs::symlink_metadata(&target).ok();
        if let Some(m) = &existing {
            let is_dir = m.is_dir();
            if o.no_overwrite_dir_non_dir && is_dir != kind.is_dir() {
                return Err(EngineError::BadRequest(format!(
                    "cannot overwrite {} {} with a {}",
                    if is_dir { "directory" } else { "non-directory" },
                    raw.display(),
                    if kind.is_dir() {
                        "directory"
                    } else {
                        "non-directory"
                    }
                )));
            }
            if !(is_dir && kind.is_dir()) {
                if is_dir {
                    fs::remove_dir_all(&target)?;
                } else {
                    fs::remove_file(&target)?;
                }
            }
        }
        let mode = h.mode().unwrap_or(0o644) & 0o7777;
        match kind {
            tar::EntryType::Directory => {
                if existing.as_ref().is_none_or(|m| !m.is_dir()) {
                    fs::create_dir(&target)?;
                }
                dirs.push((target.clone(), h.clone()));
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let mut f = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .custom_flags(libc::O_NOFOLLOW)
                    .mode(0o600)
                    .open(&target)?;
                io::copy(&mut e, &mut f)?;
            }
            tar::EntryType::Symlink => {
                let t = e
                    .link_name()?
                    .ok_or_else(|| EngineError::BadRequest("symlink without target".into()))?;
                std::os::unix::fs::symlink(t, &target)?;
            }
            tar::EntryType::Link => {
                let t = e
                    .link_name()?
                    .ok_or_else(|| EngineError::BadRequest("hard link without target".into()))?;
                let Some(trel) = clean_entry(&t) else {
                    return Err(EngineError::BadRequest(format!(
                        "invalid hard link {}: it leaves the extraction point",
                        t.display()
                    )));
                };
                let src = resolve_in_root(root, &format!("/{}", dest.join(trel).display()), false)?;
                let src = root.join(src);
                if fs::symlink_metadata(&src)?.is_dir() {
                    return Err(EngineError::BadRequest(format!(
                        "invalid hard link {}: it names a directory",
                        t.display()
                    )));
                }
                fs::hard_link(&src, &target)?;
            }
            tar::EntryType::Fifo | tar::EntryType::Char | tar::EntryType::Block => {
                use nix::sys::stat::{makedev, mknod, Mode, SFlag};
                let k = match kind {
                    tar::EntryType::Fifo => SFlag::S_IFIFO,
                    tar::EntryType::Char => SFlag::S_IFCHR,
                    _ => SFlag::S_IFBLK,
                };
                let dev = makedev(
                    h.device_major()?.unwrap_or(0) as u64,
                    h.device_minor()?.unwrap_or(0) as u64,
                );
                mknod(&target, k, Mode::from_bits_truncate(0o600), dev)
                    .map_err(|e| EngineError::internal(format!("mknod {}: {e}", raw.display())))?;
            }
            tar::EntryType::XGlobalHeader | tar::EntryType::XHeader => continue,
            other => {
                debug!(entry = %raw.display(), "skipping tar entry of type {other:?}");
                continue;
            }
        }
        let (uid, gid) = if o.copy_uid_gid {
            (h.uid().unwrap_or(0) as u32, h.gid().unwrap_or(0) as u32)
        } else {
            (0, 0)
        };
        std::os::unix::fs::lchown(&target, Some(uid), Some(gid))?;
        if kind != tar::EntryType::Symlink && kind != tar::EntryType::Link {
            fs::set_permissions(&target, fs::Permissions::from_mode(mode))?;
            if kind != tar::EntryType::Directory {
                set_mtime(&target, &h);
            }
        }
    }
    // Directory times last (their contents changed them).
    for (d, h) in dirs.iter().rev() {
        set_mtime(d, h);
    }
    Ok(())
}

fn set_mtime(p: &Path, h: &tar::Header) {
    use nix::sys::stat::{utimensat, UtimensatFlags};
    use nix::sys::time::TimeSpec;
    let t = TimeSpec::new(h.mtime().unwrap_or(0) as i64, 0);
    let _ = utimensat(None, p, &t, &t, UtimensatFlags::NoFollowSymlink);
}

// ---------------------------------------------------------------- storing images

/// One layer blob in a local file, ready to be written to containerd.
struct LayerBlob {
    file: fs::File,
    digest: String,
    size: i64,
    media_type: String,
    diff_id: String,
}

/// Writes an image (layers, config, manifest) into containerd content with
/// the GC labels a pull sets, unpacks it and points `names` at it (none: a
/// dangling record). Returns the image ID (config digest).
async fn store_image(
    engine: &Engine,
    names: &[String],
    config: Vec<u8>,
    layers: Vec<LayerBlob>,
) -> Result<String> {
    let w = ImageWriter::begin(&engine.images, "archive").await?;
    let res = store_with(&w, names, config, layers).await;
    w.finish().await;
    res
}

async fn store_with(
    w: &ImageWriter<'_>,
    names: &[String],
    config: Vec<u8>,
    mut layers: Vec<LayerBlob>,
) -> Result<String> {
    let diff_ids: Vec<String> = layers.iter().map(|l| l.diff_id.clone()).collect();
    let chains = chain_ids(&diff_ids);
    for l in layers.iter_mut() {
        l.file.seek(SeekFrom::Start(0))?;
        let labels = ImageWriter::layer_labels(&l.diff_id);
        w.write_blob(&l.digest, l.size, labels, &mut l.file).await?;
    }
    let config_digest = sha256_hex(&config);
    w.write_config(&config_digest, &config, &chains).await?;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": MT_OCI_MANIFEST,
        "config": {"mediaType": MT_OCI_CONFIG, "digest": config_digest, "size": config.len()},
        "layers": layers.iter().map(|l| json!({
            "mediaType": l.media_type, "digest": l.digest, "size": l.size,
        })).collect::<Vec<_>>(),
    });
    let manifest = serde_json::to_vec(&manifest).map_err(EngineError::internal)?;
    let manifest_digest = sha256_hex(&manifest);
    w.write_manifest(
        &manifest_digest,
        &manifest,
        &config_digest,
        layers.iter().map(|l| l.digest.as_str()),
    )
    .await?;
    for (i, l) in layers.iter().enumerate() {
        if w.is_unpacked(&chains[i]).await? {
            continue;
        }
        let d = Descriptor {
            media_type: l.media_type.clone(),
            digest: l.digest.clone(),
            size: l.size,
            annotations: HashMap::new(),
        };
        w.unpack_layer(&d, &l.diff_id, &chains, i).await?;
    }
    let target = Descriptor {
        media_type: MT_OCI_MANIFEST.to_string(),
        digest: manifest_digest.clone(),
        size: manifest.len() as i64,
        annotations: HashMap::new(),
    };
    if names.is_empty() {
        let all = w.images().all().await?;
        if !all.iter().any(|i| i.config_digest == config_digest) {
            w.set_name(&format!("{DANGLING_PREFIX}{manifest_digest}"), &target)
                .await?;
        }
    }
    for n in names {
        w.set_name(n, &target).await?;
    }
    Ok(config_digest)
}

/// Compresses a plain tar file with gzip; returns the layer blob.
fn gzip_layer(mut src: fs::File, dst: fs::File) -> Result<LayerBlob> {
    src.seek(SeekFrom::Start(0))?;
    let mut rd = HashingReader {
        inner: BufReader::new(src),
        hash: Sha256::new(),
        n: 0,
    };
    let hw = HashingWriter {
        inner: BufWriter::new(dst),
        hash: Sha256::new(),
        n: 0,
    };
    let mut gz = flate2::write::GzEncoder::new(hw, flate2::Compression::fast());
    io::copy(&mut rd, &mut gz)?;
    let mut hw = gz.finish()?;
    hw.flush()?;
    let file = hw
        .inner
        .into_inner()
        .map_err(|e| EngineError::internal(e.to_string()))?;
    Ok(LayerBlob {
        file,
        digest: format!("sha256:{}", hex::encode(hw.hash.finalize())),
        size: hw.n as i64,
        media_type: MT_LAYER_GZIP.to_string(),
        diff_id: format!("sha256:{}", hex::encode(rd.hash.finalize())),
    })
}

// ---------------------------------------------------------------- import

/// Applies `docker import --change` lines to an image config.
fn apply_changes(cfg: &mut Value, changes: &[String]) -> Result<()> {
    for c in changes {
        let c = c.trim();
        if c.is_empty() {
            continue;
        }
        let (ins, rest) = c.split_once(char::is_whitespace).unwrap_or((c, ""));
        let rest = rest.trim();
        let words = || -> Value {
            match serde_json::from_str::<Vec<String>>(rest) {
                Ok(v) => json!(v),
                Err(_) => json!(["/bin/sh", "-c", rest]),
            }
        };
        match ins.to_ascii_uppercase().as_str() {
            "CMD" => cfg["Cmd"] = words(),
            "ENTRYPOINT" => cfg["Entrypoint"] = words(),
            "WORKDIR" => cfg["WorkingDir"] = json!(rest),
            "USER" => cfg["User"] = json!(rest),
            "ENV" => {
                let kv = match rest.split_once('=') {
                    Some((k, v)) => format!("{}={}", k.trim(), v.trim_matches('"')),
                    None => match rest.split_once(char::is_whitespace) {
                        Some((k, v)) => format!("{k}={}", v.trim()),
                        None => {
                            return Err(EngineError::BadRequest(format!(
                                "ENV requires a value: {c}"
                            )))
                        }
                    },
                };
                let key = kv.split('=').next().unwrap_or("").to_string();
                let mut env: Vec<Value> = cfg["Env"].as_array().cloned().unwrap_or_default();
                env.retain(|e| {
                    e.as_str()
                        .and_then(|s| s.split('=').next())
                        .is_none_or(|k| k != key)
                });
                env.push(json!(kv));
                cfg["Env"] = json!(env);
            }
            "LABEL" => {
                let Some((k, v)) = rest.split_once('=') else {
                    return Err(EngineError::BadRequest(format!(
                        "LABEL requires key=value: {c}"
                    )));
                };
                cfg["Labels"][k.trim().trim_matches('"')] = json!(v.trim().trim_matches('"'));
            }
            other => {
                return Err(EngineError::NotImplemented(format!(
                    "import --change {other} is not implemented in orcad yet"
                )))
            }
        }
    }
    Ok(())
}

/// All values of a repeated query parameter (the engine's `Query` keeps
/// only the last one).
fn query_all(raw: Option<&str>, key: &str) -> Vec<String> {
    raw.unwrap_or("")
        .split('&')
        .filter_map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (crate::util::percent_decode(k, true) == key)
                .then(|| crate::util::percent_decode(v, true))
        })
        .collect()
}

/// POST /images/create?fromSrc=-: a one-layer image from the body's tar.
pub async fn import(engine: Arc<Engine>, req: Request<Incoming>) -> Result<Response<Body>> {
    let raw_q = req.uri().query().map(String::from);
    let q = Query::parse(raw_q.as_deref());
    if q.get("fromSrc") != Some("-") {
        return Err(EngineError::NotImplemented(
            "importing from a URL is not implemented in orcad yet (only fromSrc=-)".into(),
        ));
    }
    if let Some(p) = q.get("platform").filter(|p| !p.is_empty()) {
        let want = format!("linux/{}", crate::images::platform_arch());
        if p != want {
            return Err(EngineError::NotImplemented(format!(
                "importing for platform {p} is not implemented in orcad yet (only {want})"
            )));
        }
    }
    let repo = q.get("repo").unwrap_or("");
    let tag = q.get("tag").unwrap_or("");
    let name = if repo.is_empty() {
        None
    } else {
        Some(crate::images::record_name(
            repo,
            tag,
            "cannot import to a digest reference",
        )?)
    };
    let message = q.get("message").unwrap_or("").to_string();
    let changes = query_all(raw_q.as_deref(), "changes");
    let mut cfg = json!({});
    apply_changes(&mut cfg, &changes)?;

    let mut src = temp_file(&engine)?;
    body_to_file(req.into_body(), &mut src).await?;
    let plain = temp_file(&engine)?;
    let gz = temp_file(&engine)?;
    let layer = tokio::task::spawn_blocking(move || -> Result<LayerBlob> {
        // Decompress (if needed) into a plain tar, checking it is one.
        let mut rd = uncompressed(src)?;
        let mut plain = plain;
        io::copy(&mut rd, &mut plain)?;
        plain.seek(SeekFrom::Start(0))?;
        let mut ar = tar::Archive::new(BufReader::new(&plain));
        for e in ar
            .entries()
            .map_err(|e| EngineError::BadRequest(format!("not a tar archive: {e}")))?
        {
            e.map_err(|e| EngineError::BadRequest(format!("not a tar archive: {e}")))?;
        }
        gzip_layer(plain, gz)
    })
    .await
    .map_err(EngineError::internal)??;

    let now = crate::util::now();
    let comment = if message.is_empty() {
        "Imported from -".to_string()
    } else {
        message
    };
    let config = json!({
        "architecture": crate::images::platform_arch(),
        "os": "linux",
        "created": now,
        "comment": comment,
        "config": cfg,
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id]},
        "history": [{"created": now, "created_by": "", "comment": comment}],
    });
    let config = serde_json::to_vec(&config).map_err(EngineError::internal)?;
    let names: Vec<String> = name.iter().cloned().collect();
    let id = store_image(&engine, &names, config, vec![layer]).await?;
    info!(image = %id, name = ?name, "imported image");
    let (tx, rx) = mpsc::channel(4);
    emit(&tx, json!({"status": id})).await;
    drop(tx);
    Ok(streaming(rx, "application/json"))
}

// ---------------------------------------------------------------- save

/// GET /images/get?names=… and GET /images/{name}/get: a docker-archive
/// (Docker 25+ layout: OCI blobs plus manifest.json).
pub async fn save(
    engine: Arc<Engine>,
    raw_query: Option<&str>,
    name: Option<&str>,
) -> Result<Response<Body>> {
    let mut names = query_all(raw_query, "names");
    if let Some(n) = name {
        names.push(n.to_string());
    }
    if names.is_empty() {
        return Err(EngineError::BadRequest("no images named".into()));
    }
    let q = Query::parse(raw_query);
    if q.get("platform").is_some_and(|p| !p.is_empty()) {
        return Err(EngineError::NotImplemented(
            "save --platform is not implemented in orcad yet".into(),
        ));
    }
    let all = engine.images.all().await?;
    // (config digest) → (repo tags, image)
    let mut order: Vec<(Vec<String>, crate::images::ResolvedImage)> = Vec::new();
    for n in &names {
        let img = engine.images.resolve(n).await?;
        let tags: Vec<String> = match Reference::parse(n) {
            Ok(r) if r.digest.is_none() && all.iter().any(|i| i.name == r.full()) => {
                vec![familiar(&r.full())]
            }
            // By ID: every tag of the image, as dockerd does.
            _ => all
                .iter()
                .filter(|i| {
                    i.config_digest == img.config_digest
                        && !i.name.contains('@')
                        && !is_dangling_name(&i.name)
                })
                .map(|i| familiar(&i.name))
                .collect(),
        };
        match order
            .iter_mut()
            .find(|(_, i)| i.config_digest == img.config_digest)
        {
            Some((t, _)) => {
                for x in tags {
                    if !t.contains(&x) {
                        t.push(x);
                    }
                }
            }
            None => order.push((tags, img)),
        }
    }
    // Everything is fetched (and layers decompressed to temp files) before
    // the response starts, so errors get a status code.
    struct Blob {
        hex: String,
        src: BlobSrc,
    }
    enum BlobSrc {
        Mem(Vec<u8>),
        File(fs::File, u64),
    }
    let mut blobs: Vec<Blob> = Vec::new();
    let mut manifest_json = Vec::new();
    let mut index_manifests = Vec::new();
    for (tags, img) in &order {
        let config = engine.ctrd.read_blob(&img.config_digest).await?;
        let chex = img.config_digest.trim_start_matches("sha256:").to_string();
        let diff_ids: Vec<String> = crate::util::json_strings(&img.config["rootfs"]["diff_ids"]);
        let mut layer_paths = Vec::new();
        let mut layer_descs = Vec::new();
        for (i, l) in img.layers.iter().enumerate() {
            let diff_id = diff_ids.get(i).cloned().ok_or_else(|| {
                EngineError::internal(format!("image {} lacks diff id {i}", img.config_digest))
            })?;
            let hexd = diff_id.trim_start_matches("sha256:").to_string();
            let mut comp = temp_file(&engine)?;
            let mut stream = engine
                .ctrd
                .content()
                .read(engine.ctrd.req(orca_proto::content::ReadContentRequest {
                    digest: l.digest.clone(),
                    offset: 0,
                    size: 0,
                }))
                .await
                .map_err(|s| EngineError::grpc(&format!("read {}", l.digest), s))?
                .into_inner();
            while let Some(chunk) = stream
                .message()
                .await
                .map_err(|s| EngineError::grpc(&format!("read {}", l.digest), s))?
            {
                comp.write_all(&chunk.data)?;
            }
            comp.seek(SeekFrom::Start(0))?;
            let plain = temp_file(&engine)?;
            let (plain, n, got) =
                tokio::task::spawn_blocking(move || -> Result<(fs::File, u64, String)> {
                    let mut rd = uncompressed(comp)?;
                    let mut hw = HashingWriter {
                        inner: BufWriter::new(plain),
                        hash: Sha256::new(),
                        n: 0,
                    };
                    io::copy(&mut rd, &mut hw)?;
                    hw.flush()?;
                    let n = hw.n;
                    let got = format!("sha256:{}", hex::encode(hw.hash.finalize()));
                    let mut f = hw
                        .inner
                        .into_inner()
                        .map_err(|e| EngineError::internal(e.to_string()))?;
                    f.seek(SeekFrom::Start(0))?;
                    Ok((f, n, got))
                })
                .await
                .map_err(EngineError::internal)??;
            if got != diff_id {
                return Err(EngineError::internal(format!(
                    "layer {} uncompresses to {got}, not its diff id {diff_id}",
                    l.digest
                )));
            }
            layer_paths.push(format!("blobs/sha256/{hexd}"));
            layer_descs.push(json!({"mediaType": MT_LAYER_TAR, "digest": diff_id, "size": n}));
            if !blobs.iter().any(|b| b.hex == hexd) {
                blobs.push(Blob {
                    hex: hexd,
                    src: BlobSrc::File(plain, n),
                });
            }
        }
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": MT_OCI_MANIFEST,
            "config": {"mediaType": MT_OCI_CONFIG, "digest": img.config_digest, "size": config.len()},
            "layers": layer_descs,
        });
        let manifest = serde_json::to_vec(&manifest).map_err(EngineError::internal)?;
        let mdigest = sha256_hex(&manifest);
        let msize = manifest.len();
        for t in tags.iter().chain(tags.is_empty().then_some(&String::new())) {
            let mut d = json!({"mediaType": MT_OCI_MANIFEST, "digest": mdigest, "size": msize});
            if !t.is_empty() {
                let full = Reference::parse(t).map(|r| r.full()).unwrap_or_default();
                let tag = Reference::parse(t)
                    .ok()
                    .and_then(|r| r.tag.clone())
                    .unwrap_or_default();
                d["annotations"] = json!({
                    "io.containerd.image.name": full,
                    "org.opencontainers.image.ref.name": tag,
                });
            }
            index_manifests.push(d);
        }
        if !blobs.iter().any(|b| b.hex == chex) {
            blobs.push(Blob {
                hex: chex.clone(),
                src: BlobSrc::Mem(config),
            });
        }
        let mhex = mdigest.trim_start_matches("sha256:").to_string();
        if !blobs.iter().any(|b| b.hex == mhex) {
            blobs.push(Blob {
                hex: mhex,
                src: BlobSrc::Mem(manifest),
            });
        }
        manifest_json.push(json!({
            "Config": format!("blobs/sha256/{chex}"),
            "RepoTags": tags,
            "Layers": layer_paths,
        }));
    }
    let index = json!({
        "schemaVersion": 2,
        "mediaType": MT_OCI_INDEX,
        "manifests": index_manifests,
    });
    let manifest_json = serde_json::to_vec(&manifest_json).map_err(EngineError::internal)?;
    let index = serde_json::to_vec(&index).map_err(EngineError::internal)?;
    info!(images = ?names, "saving images");
    let mtime = chrono::Utc::now().timestamp() as u64;
    Ok(stream_blocking("save", "application/x-tar", move |w| {
        let mut b = tar::Builder::new(w);
        let hdr = |typ: tar::EntryType, size: u64, mode: u32| {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(typ);
            h.set_size(size);
            h.set_mode(mode);
            h.set_mtime(mtime);
            h.set_uid(0);
            h.set_gid(0);
            h
        };
        for d in ["blobs/", "blobs/sha256/"] {
            let mut h = hdr(tar::EntryType::Directory, 0, 0o755);
            b.append_data(&mut h, d, io::empty())?;
        }
        for blob in blobs {
            let path = format!("blobs/sha256/{}", blob.hex);
            match blob.src {
                BlobSrc::Mem(m) => {
                    let mut h = hdr(tar::EntryType::Regular, m.len() as u64, 0o644);
                    b.append_data(&mut h, &path, m.as_slice())?;
                }
                BlobSrc::File(f, n) => {
                    let mut h = hdr(tar::EntryType::Regular, n, 0o644);
                    b.append_data(&mut h, &path, BufReader::new(f))?;
                }
            }
        }
        for (p, data) in [
            ("index.json", index),
            ("manifest.json", manifest_json),
            ("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec()),
        ] {
            let mut h = hdr(tar::EntryType::Regular, data.len() as u64, 0o644);
            b.append_data(&mut h, p, data.as_slice())?;
        }
        b.finish()
    }))
}

// ---------------------------------------------------------------- load

/// The files of an extracted archive: regular files in a temp dir, and
/// the archive's symlinks (resolved inside the archive).
struct Unpacked {
    dir: tempfile::TempDir,
    links: HashMap<PathBuf, PathBuf>,
}

impl Unpacked {
    fn extract(rd: impl Read, base: &Path) -> Result<Unpacked> {
        let dir = tempfile::Builder::new().prefix("load-").tempdir_in(base)?;
        let mut links = HashMap::new();
        let mut ar = tar::Archive::new(rd);
        let bad = |e: io::Error| EngineError::BadRequest(format!("invalid archive: {e}"));
        for e in ar.entries().map_err(bad)? {
            let mut e = e.map_err(bad)?;
            let raw = e.path().map_err(bad)?.into_owned();
            let Some(rel) = clean_entry(&raw) else {
                return Err(EngineError::BadRequest(format!(
                    "invalid archive entry {}",
                    raw.display()
                )));
            };
            if rel.as_os_str().is_empty() {
                continue;
            }
            match e.header().entry_type() {
                tar::EntryType::Regular | tar::EntryType::Continuous => {
                    let p = dir.path().join(&rel);
                    if let Some(parent) = p.parent() {
                        fs::create_dir_all(parent)?;
                    }
                    let mut f = fs::OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .custom_flags(libc::O_NOFOLLOW)
                        .open(&p)
                        .map_err(|err| {
                            EngineError::BadRequest(format!(
                                "invalid archive entry {}: {err}",
                                raw.display()
                            ))
                        })?;
                    io::copy(&mut e, &mut f)?;
                }
                tar::EntryType::Symlink | tar::EntryType::Link => {
                    if let Some(t) = e.link_name().map_err(bad)? {
                        let t = if e.header().entry_type() == tar::EntryType::Link {
                            Path::new("/").join(t)
                        } else {
                            t.into_owned()
                        };
                        links.insert(rel, t);
                    }
                }
                _ => {}
            }
        }
        Ok(Unpacked { dir, links })
    }

    /// Opens an archive path, following the archive's own links.
    fn open(&self, p: &str) -> Result<fs::File> {
        let mut cur = clean_entry(Path::new(p))
            .ok_or_else(|| EngineError::BadRequest(format!("invalid path in archive: {p}")))?;
        for _ in 0..16 {
            if let Some(t) = self.links.get(&cur) {
                let joined = if t.is_absolute() {
                    t.clone()
                } else {
                    cur.parent().unwrap_or(Path::new("")).join(t)
                };
                cur = clean_entry(&joined).ok_or_else(|| {
                    EngineError::BadRequest(format!("invalid link in archive: {p}"))
                })?;
                continue;
            }
            return fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(self.dir.path().join(&cur))
                .map_err(|e| EngineError::BadRequest(format!("archive file {p} is missing: {e}")));
        }
        Err(EngineError::BadRequest(format!(
            "too many links for {p} in archive"
        )))
    }

    fn read(&self, p: &str) -> Result<Vec<u8>> {
        let mut b = Vec::new();
        self.open(p)?.read_to_end(&mut b)?;
        Ok(b)
    }
}

/// POST /images/load: a docker-archive (manifest.json + config + layers,
/// in the legacy `<id>/layer.tar` or the Docker 25+ `blobs/sha256` form).
pub async fn load(
    engine: Arc<Engine>,
    req: Request<Incoming>,
    q: &Query,
) -> Result<Response<Body>> {
    if q.get("platform").is_some_and(|p| !p.is_empty()) {
        return Err(EngineError::NotImplemented(
            "load --platform is not implemented in orcad yet".into(),
        ));
    }
    let quiet = q.bool("quiet");
    let mut src = temp_file(&engine)?;
    body_to_file(req.into_body(), &mut src).await?;
    let base = engine.cfg.exec_root.join("archive");
    let eng = engine.clone();
    // Unpack, then per image: config, layers (checked against the diff ids).
    let (unpacked, images) = tokio::task::spawn_blocking(move || -> Result<_> {
        let rd = uncompressed(src)?;
        let u = Unpacked::extract(rd, &base)?;
        let manifest: Value = match u.read("manifest.json") {
            Ok(b) => serde_json::from_slice(&b)
                .map_err(|e| EngineError::BadRequest(format!("invalid manifest.json: {e}")))?,
            Err(_) => {
                return Err(EngineError::NotImplemented(
                    "loading archives without manifest.json (plain OCI layouts) is not implemented in orcad yet"
                        .into(),
                ))
            }
        };
        let list = manifest
            .as_array()
            .cloned()
            .ok_or_else(|| EngineError::BadRequest("manifest.json is not a list".into()))?;
        let mut out = Vec::new();
        for m in list {
            let cpath = m["Config"].as_str().unwrap_or("");
            let config = u.read(cpath)?;
            let cv: Value = serde_json::from_slice(&config)
                .map_err(|e| EngineError::BadRequest(format!("invalid image config: {e}")))?;
            let diff_ids: Vec<String> = crate::util::json_strings(&cv["rootfs"]["diff_ids"]);
            let lpaths: Vec<String> = crate::util::json_strings(&m["Layers"]);
            if lpaths.len() != diff_ids.len() {
                return Err(EngineError::BadRequest(format!(
                    "image config has {} diff ids for {} layers",
                    diff_ids.len(),
                    lpaths.len()
                )));
            }
            let mut layers = Vec::new();
            for (p, want) in lpaths.iter().zip(&diff_ids) {
                let mut f = u.open(p)?;
                let comp = sniff(&mut f)?;
                // Hash the stored blob and its uncompressed content.
                let mut blob_hash = HashingReader {
                    inner: BufReader::new(f.try_clone()?),
                    hash: Sha256::new(),
                    n: 0,
                };
                let (diff_id, size, digest) = match comp {
                    Compression::None => {
                        io::copy(&mut blob_hash, &mut io::sink())?;
                        let d = format!("sha256:{}", hex::encode(blob_hash.hash.finalize()));
                        (d.clone(), blob_hash.n, d)
                    }
                    Compression::Gzip => {
                        let mut dec = HashingReader {
                            inner: flate2::read::MultiGzDecoder::new(&mut blob_hash),
                            hash: Sha256::new(),
                            n: 0,
                        };
                        io::copy(&mut dec, &mut io::sink())?;
                        let d = format!("sha256:{}", hex::encode(dec.hash.finalize()));
                        // Whatever follows the gzip stream counts for the blob.
                        io::copy(&mut blob_hash, &mut io::sink())?;
                        let b = format!("sha256:{}", hex::encode(blob_hash.hash.finalize()));
                        (d, blob_hash.n, b)
                    }
                    Compression::Other(c) => {
                        return Err(EngineError::NotImplemented(format!(
                            "{c}-compressed layers are not implemented in orcad yet"
                        )))
                    }
                };
                if &diff_id != want {
                    return Err(EngineError::BadRequest(format!(
                        "layer {p}: content is {diff_id}, the config says {want}"
                    )));
                }
                layers.push(LayerBlob {
                    file: f,
                    digest,
                    size: size as i64,
                    media_type: if comp == Compression::Gzip {
                        MT_LAYER_GZIP
                    } else {
                        MT_LAYER_TAR
                    }
                    .to_string(),
                    diff_id,
                });
            }
            let mut tags = Vec::new();
            for t in m["RepoTags"].as_array().cloned().unwrap_or_default() {
                if let Some(t) = t.as_str() {
                    tags.push(Reference::parse(t)?.full());
                }
            }
            out.push((tags, config, layers));
        }
        Ok((u, out))
    })
    .await
    .map_err(EngineError::internal)??;
    let mut lines = Vec::new();
    for (tags, config, layers) in images {
        let id = store_image(&eng, &tags, config, layers).await?;
        if tags.is_empty() {
            lines.push(format!("Loaded image ID: {id}"));
        }
        for t in &tags {
            lines.push(format!("Loaded image: {}", familiar(t)));
        }
    }
    drop(unpacked);
    info!(loaded = ?lines, "loaded images");
    let (tx, rx) = mpsc::channel(lines.len() + 1);
    for l in lines {
        emit(&tx, json!({"stream": format!("{l}\n")})).await;
    }
    drop(tx);
    let _ = quiet;
    Ok(streaming(rx, "application/json"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_encodes() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
    }

    #[test]
    fn resolves_inside_root() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        fs::create_dir_all(r.join("a/b")).unwrap();
        std::os::unix::fs::symlink("../../../../..", r.join("a/b/up")).unwrap();
        std::os::unix::fs::symlink("/etc", r.join("abs")).unwrap();
        std::os::unix::fs::symlink("loop", r.join("loop")).unwrap();
        assert_eq!(
            resolve_in_root(r, "/../../etc/passwd", true).unwrap(),
            Path::new("etc/passwd")
        );
        assert_eq!(
            resolve_in_root(r, "a/b/up/etc", true).unwrap(),
            Path::new("etc")
        );
        assert_eq!(
            resolve_in_root(r, "/abs/x", true).unwrap(),
            Path::new("etc/x")
        );
        assert_eq!(resolve_in_root(r, "/abs", false).unwrap(), Path::new("abs"));
        assert!(resolve_in_root(r, "/loop/x", true).is_err());
        assert_eq!(resolve_in_root(r, "/", true).unwrap(), Path::new(""));
    }

    #[test]
    fn cleans_entries() {
        assert_eq!(clean_entry(Path::new("./a/../b")), Some(PathBuf::from("b")));
        assert_eq!(
            clean_entry(Path::new("/etc/x")),
            Some(PathBuf::from("etc/x"))
        );
        assert_eq!(clean_entry(Path::new("a/../../x")), None);
    }

    #[test]
    fn changes() {
        let mut c = json!({});
        apply_changes(
            &mut c,
            &[
                "CMD [\"/bin/sh\"]".into(),
                "ENV A=b".into(),
                "WORKDIR /w".into(),
            ],
        )
        .unwrap();
        assert_eq!(c["Cmd"], json!(["/bin/sh"]));
        assert_eq!(c["Env"], json!(["A=b"]));
        assert_eq!(c["WorkingDir"], "/w");
        assert!(apply_changes(&mut c, &["ONBUILD x".into()]).is_err());
    }
}
