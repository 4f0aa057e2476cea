//! The content store: blobs addressed by digest under
//! `<root>/content/blobs/sha256/<hex>`, resumable ingests under
//! `<root>/content/ingest/<sha256(namespace, ref)>/`, and per-namespace
//! records (size, labels, times) in the metadata store. Blobs are shared
//! between namespaces; a namespace sees only the blobs it has a record for.
//! Nothing is committed before its size and digest are verified.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use orca_proto::content::{Info, Status};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, IoContext, Result};
use crate::metadata::{Kind, MetadataStore};
use crate::util::{digest_string, now, sha256_hex, timestamp};

/// Blobs, ingests and their per-namespace records.
pub struct ContentStore {
    dir: PathBuf,
    meta: Arc<MetadataStore>,
    /// Ingest refs (namespace, ref) with an open writer.
    locked: Mutex<HashSet<(String, String)>>,
    /// Serializes "record a blob in a namespace + put its file in place"
    /// against "no namespace holds it any more: remove its file" (delete
    /// and garbage collection), so a blob file never disappears under a
    /// record.
    blob_lock: Mutex<()>,
}

/// An ingest found on disk, for garbage collection.
#[derive(Debug, Clone)]
pub struct IngestEntry {
    pub namespace: String,
    pub reference: String,
    /// The lease it was started under, if any.
    pub lease: Option<String>,
    pub dir: PathBuf,
}

#[derive(Serialize, Deserialize)]
struct IngestMeta {
    namespace: String,
    reference: String,
    total: i64,
    expected: String,
    started_at_ns: u128,
    /// The lease the ingest was started under (garbage collection removes
    /// it once no live lease holds it).
    #[serde(default)]
    lease: Option<String>,
}

impl ContentStore {
    pub fn open(root: &Path, meta: Arc<MetadataStore>) -> Result<Arc<ContentStore>> {
        let dir = root.join("content");
        for d in ["blobs/sha256", "ingest"] {
            fs::create_dir_all(dir.join(d)).ctx(|| format!("create {}", dir.join(d).display()))?;
        }
        Ok(Arc::new(ContentStore {
            dir,
            meta,
            locked: Mutex::new(HashSet::new()),
            blob_lock: Mutex::new(()),
        }))
    }

    /// Where the blob for `digest` lives (whether or not it exists).
    pub fn blob_path(&self, digest: &str) -> Result<PathBuf> {
        Ok(self.dir.join("blobs/sha256").join(sha256_hex(digest)?))
    }

    fn ingest_dir(&self, ns: &str, reference: &str) -> PathBuf {
        let mut h = Sha256::new();
        h.update(ns.as_bytes());
        h.update([0]);
        h.update(reference.as_bytes());
        self.dir.join("ingest").join(hex::encode(h.finalize()))
    }

    /// The record of a blob in a namespace.
    /// True when `digest` is already in namespace `ns`; it then joins
    /// `lease` (as containerd's metadata store does for a write of existing
    /// content), in the same transaction, so GC cannot take it meanwhile.
    pub fn lease_if_exists(&self, ns: &str, digest: &str, lease: Option<&str>) -> Result<bool> {
        if self.meta.get(Kind::Content, ns, digest)?.is_none() {
            return Ok(false);
        }
        self.meta.update(|tx| {
            if !tx.exists(Kind::Content, ns, digest)? {
                return Ok(false);
            }
            tx.add_to_lease(ns, lease, "content", digest)?;
            Ok(true)
        })
    }

    pub fn info(&self, ns: &str, digest: &str) -> Result<Info> {
        sha256_hex(digest)?;
        self.meta
            .get_msg::<Info>(Kind::Content, ns, digest)?
            .ok_or_else(|| Error::NotFound(format!("content digest {digest}")))
    }

    pub fn list(&self, ns: &str) -> Result<Vec<Info>> {
        Ok(self
            .meta
            .list_msgs::<Info>(Kind::Content, ns)?
            .into_iter()
            .map(|(_, i)| i)
            .collect())
    }

    /// Updates a blob's labels: no field paths or `labels` replace them all,
    /// `labels.KEY` sets (or, when absent from `info`, removes) one label.
    pub fn update(&self, ns: &str, info: &Info, fieldpaths: &[String]) -> Result<Info> {
        self.meta.update(|tx| {
            let mut cur: Info = tx
                .get_msg(Kind::Content, ns, &info.digest)?
                .ok_or_else(|| Error::NotFound(format!("content digest {}", info.digest)))?;
            apply_label_update(&mut cur.labels, &info.labels, fieldpaths)?;
            cur.updated_at = Some(now());
            tx.put_msg(Kind::Content, ns, &info.digest, &cur)?;
            Ok(cur)
        })
    }

    /// Removes a blob from a namespace; the file goes when no namespace
    /// refers to it any more.
    pub fn delete(&self, ns: &str, digest: &str) -> Result<()> {
        sha256_hex(digest)?;
        let existed = self
            .meta
            .update(|tx| tx.delete(Kind::Content, ns, digest))?;
        if !existed {
            return Err(Error::NotFound(format!("content digest {digest}")));
        }
        self.remove_blob_if_unreferenced(digest)?;
        Ok(())
    }

    /// Removes the blob file of `digest` unless some namespace records it;
    /// returns whether a file was removed.
    pub fn remove_blob_if_unreferenced(&self, digest: &str) -> Result<bool> {
        let _g = self.blob_lock.lock().unwrap_or_else(|p| p.into_inner());
        if !self.meta.namespaces_with(Kind::Content, digest)?.is_empty() {
            return Ok(false);
        }
        let p = self.blob_path(digest)?;
        match fs::remove_file(&p) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(Error::io(format!("remove {}", p.display()), e)),
        }
    }

    /// Digests of the blob files on disk.
    pub fn blob_digests(&self) -> Result<Vec<String>> {
        let dir = self.dir.join("blobs/sha256");
        let mut out = Vec::new();
        for e in fs::read_dir(&dir).ctx(|| format!("read {}", dir.display()))? {
            let e = e.ctx(|| format!("read {}", dir.display()))?;
            let d = format!("sha256:{}", e.file_name().to_string_lossy());
            if sha256_hex(&d).is_ok() {
                out.push(d);
            }
        }
        Ok(out)
    }

    /// Every ingest on disk (all namespaces) without an open writer.
    pub fn idle_ingests(&self) -> Vec<IngestEntry> {
        let mut out = Vec::new();
        let ingest = self.dir.join("ingest");
        let Ok(rd) = fs::read_dir(&ingest) else {
            return out;
        };
        let locked = self.locked.lock().unwrap_or_else(|p| p.into_inner());
        for e in rd.flatten() {
            let Ok(bytes) = fs::read(e.path().join("meta.json")) else {
                continue;
            };
            let Ok(m) = serde_json::from_slice::<IngestMeta>(&bytes) else {
                continue;
            };
            if locked.contains(&(m.namespace.clone(), m.reference.clone())) {
                continue;
            }
            out.push(IngestEntry {
                namespace: m.namespace,
                reference: m.reference,
                lease: m.lease,
                dir: e.path(),
            });
        }
        out
    }

    /// Removes an ingest found by [`ContentStore::idle_ingests`] unless a
    /// writer opened it meanwhile.
    pub fn remove_idle_ingest(&self, entry: &IngestEntry) -> Result<()> {
        let locked = self.locked.lock().unwrap_or_else(|p| p.into_inner());
        if locked.contains(&(entry.namespace.clone(), entry.reference.clone())) {
            return Ok(());
        }
        match fs::remove_dir_all(&entry.dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io(format!("remove {}", entry.dir.display()), e)),
        }
    }

    /// Opens a blob the namespace has, for reading.
    pub fn open_blob(&self, ns: &str, digest: &str) -> Result<(File, Info)> {
        let info = self.info(ns, digest)?;
        let p = self.blob_path(digest)?;
        let f = File::open(&p).ctx(|| format!("open blob {}", p.display()))?;
        Ok((f, info))
    }

    /// Reads `size` bytes (0: to the end) from `offset` of a blob, calling
    /// `chunk` with each piece (at most 1 MiB).
    pub fn read(
        &self,
        ns: &str,
        digest: &str,
        offset: i64,
        size: i64,
        mut chunk: impl FnMut(i64, Vec<u8>) -> bool,
    ) -> Result<()> {
        let (mut f, info) = self.open_blob(ns, digest)?;
        if offset < 0 || offset > info.size {
            return Err(Error::InvalidArgument(format!(
                "read offset {offset} outside blob {digest} of {} bytes",
                info.size
            )));
        }
        let end = if size > 0 {
            (offset + size).min(info.size)
        } else {
            info.size
        };
        f.seek(SeekFrom::Start(offset as u64))
            .ctx(|| format!("seek blob {digest}"))?;
        let mut pos = offset;
        while pos < end {
            let n = ((end - pos) as usize).min(1 << 20);
            let mut buf = vec![0u8; n];
            f.read_exact(&mut buf)
                .ctx(|| format!("read blob {digest}"))?;
            if !chunk(pos, buf) {
                break;
            }
            pos += n as i64;
        }
        Ok(())
    }

    fn status_of(&self, dir: &Path) -> Result<Status> {
        let meta: IngestMeta = serde_json::from_slice(
            &fs::read(dir.join("meta.json")).ctx(|| format!("read {}/meta.json", dir.display()))?,
        )
        .map_err(|e| Error::Internal(format!("corrupt ingest {}: {e}", dir.display())))?;
        let data = fs::metadata(dir.join("data")).ctx(|| format!("stat {}/data", dir.display()))?;
        let started = UNIX_EPOCH + std::time::Duration::from_nanos(meta.started_at_ns as u64);
        Ok(Status {
            started_at: Some(timestamp(started)),
            updated_at: Some(timestamp(data.modified().unwrap_or(started))),
            r#ref: meta.reference,
            offset: data.len() as i64,
            total: meta.total,
            expected: meta.expected,
        })
    }

    /// Status of an ingest in progress.
    pub fn status(&self, ns: &str, reference: &str) -> Result<Status> {
        let dir = self.ingest_dir(ns, reference);
        if !dir.exists() {
            return Err(Error::NotFound(format!("ingest ref {reference:?}")));
        }
        self.status_of(&dir)
    }

    /// Every ingest in progress in a namespace.
    pub fn list_statuses(&self, ns: &str) -> Result<Vec<Status>> {
        let mut out = Vec::new();
        let ingest = self.dir.join("ingest");
        for e in fs::read_dir(&ingest).ctx(|| format!("read {}", ingest.display()))? {
            let e = e.ctx(|| format!("read {}", ingest.display()))?;
            let Ok(bytes) = fs::read(e.path().join("meta.json")) else {
                continue;
            };
            let Ok(m) = serde_json::from_slice::<IngestMeta>(&bytes) else {
                continue;
            };
            if m.namespace == ns {
                if let Ok(s) = self.status_of(&e.path()) {
                    out.push(s);
                }
            }
        }
        Ok(out)
    }

    /// Drops an ingest in progress.
    pub fn abort(&self, ns: &str, reference: &str) -> Result<()> {
        let dir = self.ingest_dir(ns, reference);
        if !dir.exists() {
            return Err(Error::NotFound(format!("ingest ref {reference:?}")));
        }
        fs::remove_dir_all(&dir).ctx(|| format!("remove {}", dir.display()))?;
        self.meta.update(|tx| {
            for (k, _) in tx.list(Kind::LeaseResource, ns)? {
                if k.ends_with(&format!("\x01ingests\x01{reference}")) {
                    tx.delete(Kind::LeaseResource, ns, &k)?;
                }
            }
            Ok(())
        })
    }

    /// Records a blob already on disk as present in `ns` (shared content):
    /// returns true if the namespace did not have it yet.
    fn adopt_existing(
        &self,
        ns: &str,
        digest: &str,
        labels: &HashMap<String, String>,
        lease: Option<&str>,
    ) -> Result<bool> {
        let p = self.blob_path(digest)?;
        let _g = self.blob_lock.lock().unwrap_or_else(|p| p.into_inner());
        let Ok(md) = fs::metadata(&p) else {
            return Ok(false);
        };
        self.meta.update(|tx| {
            if tx.exists(Kind::Content, ns, digest)? {
                return Ok(false);
            }
            tx.ensure_namespace(ns)?;
            let t = now();
            let info = Info {
                digest: digest.to_string(),
                size: md.len() as i64,
                created_at: Some(t),
                updated_at: Some(t),
                labels: labels.clone(),
            };
            tx.put_msg(Kind::Content, ns, digest, &info)?;
            tx.add_to_lease(ns, lease, "content", digest)?;
            Ok(true)
        })
    }

    /// Opens (or resumes) the ingest `reference`. Fails with AlreadyExists if
    /// `expected` is already in the namespace, Unavailable if another writer
    /// holds the ref.
    pub fn writer(
        self: &Arc<Self>,
        ns: &str,
        reference: &str,
        total: i64,
        expected: &str,
        lease: Option<&str>,
    ) -> Result<IngestWriter> {
        if reference.is_empty() {
            return Err(Error::InvalidArgument("an ingest needs a ref".into()));
        }
        if !expected.is_empty() {
            sha256_hex(expected)?;
            if self.lease_if_exists(ns, expected, lease)? {
                return Err(Error::AlreadyExists(format!("content {expected}")));
            }
            if self.adopt_existing(ns, expected, &HashMap::new(), lease)? {
                return Err(Error::AlreadyExists(format!("content {expected}")));
            }
        }
        let key = (ns.to_string(), reference.to_string());
        {
            let mut locked = self.locked.lock().unwrap_or_else(|p| p.into_inner());
            if !locked.insert(key.clone()) {
                return Err(Error::Unavailable(format!("ref {reference} locked")));
            }
        }
        let guard = RefLock {
            store: Arc::clone(self),
            key,
        };
        // A writer of the same ref may have committed between the check
        // above and taking the lock.
        if !expected.is_empty() && self.lease_if_exists(ns, expected, lease)? {
            return Err(Error::AlreadyExists(format!("content {expected}")));
        }
        let dir = self.ingest_dir(ns, reference);
        let data_path = dir.join("data");
        let mut hasher = Sha256::new();
        let (file, offset, total, expected) =
            if dir.join("meta.json").exists() && data_path.exists() {
                let m: IngestMeta = serde_json::from_slice(
                    &fs::read(dir.join("meta.json"))
                        .ctx(|| format!("read {}/meta.json", dir.display()))?,
                )
                .map_err(|e| Error::Internal(format!("corrupt ingest {}: {e}", dir.display())))?;
                let mut f = OpenOptions::new()
                    .read(true)
                    .append(true)
                    .open(&data_path)
                    .ctx(|| format!("open {}", data_path.display()))?;
                let n = std::io::copy(&mut f, &mut hasher)
                    .ctx(|| format!("read {}", data_path.display()))?;
                // A resumed ingest (e.g. a pull retried after a crash) is
                // held by the new writer's lease too.
                if lease.is_some() {
                    self.meta.update(|tx| {
                        tx.ensure_namespace(ns)?;
                        tx.add_to_lease(ns, lease, "ingests", reference)
                    })?;
                }
                let total = if total > 0 { total } else { m.total };
                let expected = if expected.is_empty() {
                    m.expected
                } else {
                    expected.to_string()
                };
                (f, n as i64, total, expected)
            } else {
                fs::create_dir_all(&dir).ctx(|| format!("create {}", dir.display()))?;
                let m = IngestMeta {
                    namespace: ns.to_string(),
                    reference: reference.to_string(),
                    total,
                    expected: expected.to_string(),
                    started_at_ns: SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .unwrap_or_default()
                        .as_nanos(),
                    lease: lease.map(str::to_string),
                };
                fs::write(
                    dir.join("meta.json"),
                    serde_json::to_vec(&m).unwrap_or_default(),
                )
                .ctx(|| format!("write {}/meta.json", dir.display()))?;
                let f = OpenOptions::new()
                    .read(true)
                    .append(true)
                    .create(true)
                    .truncate(false)
                    .open(&data_path)
                    .ctx(|| format!("create {}", data_path.display()))?;
                self.meta.update(|tx| {
                    tx.ensure_namespace(ns)?;
                    tx.add_to_lease(ns, lease, "ingests", reference)
                })?;
                (f, 0, total, expected.to_string())
            };
        Ok(IngestWriter {
            store: Arc::clone(self),
            ns: ns.to_string(),
            reference: reference.to_string(),
            dir,
            file,
            hasher,
            offset,
            writeback_from: offset,
            total,
            expected,
            lease: lease.map(str::to_string),
            _lock: guard,
        })
    }
}

struct RefLock {
    store: Arc<ContentStore>,
    key: (String, String),
}

impl Drop for RefLock {
    fn drop(&mut self) {
        let mut locked = self.store.locked.lock().unwrap_or_else(|p| p.into_inner());
        locked.remove(&self.key);
    }
}

/// An open ingest: append data, then commit with size/digest verification.
pub struct IngestWriter {
    store: Arc<ContentStore>,
    ns: String,
    reference: String,
    dir: PathBuf,
    file: File,
    hasher: Sha256,
    offset: i64,
    /// Where the data not yet handed to writeback starts.
    writeback_from: i64,
    pub total: i64,
    pub expected: String,
    lease: Option<String>,
    _lock: RefLock,
}

/// How much ingest data accumulates before its writeback is started.
const WRITEBACK_STEP: i64 = 4 << 20;

impl IngestWriter {
    pub fn offset(&self) -> i64 {
        self.offset
    }

    /// Digest of the data written so far.
    pub fn digest(&self) -> String {
        digest_string(self.hasher.clone())
    }

    pub fn status(&self) -> Result<Status> {
        self.store.status_of(&self.dir)
    }

    /// Appends data at the current offset.
    pub fn write(&mut self, data: &[u8]) -> Result<()> {
        self.file
            .write_all(data)
            .ctx(|| format!("write ingest {}", self.reference))?;
        self.hasher.update(data);
        self.offset += data.len() as i64;
        if self.offset - self.writeback_from >= WRITEBACK_STEP {
            self.start_writeback();
        }
        Ok(())
    }

    /// Starts (without waiting for) the writeback of what was written since
    /// the last call, so that the fsync of `commit` finds most of the blob
    /// on disk already instead of writing all of it then. Only a hint: a
    /// failure here is left for that fsync to report.
    fn start_writeback(&mut self) {
        use std::os::fd::AsRawFd;
        let (from, len) = (self.writeback_from, self.offset - self.writeback_from);
        // SAFETY: sync_file_range on a file descriptor we own, over a range
        // of it; it reads or writes no memory of ours.
        let r = unsafe {
            libc::sync_file_range(
                self.file.as_raw_fd(),
                from,
                len,
                libc::SYNC_FILE_RANGE_WRITE,
            )
        };
        if r != 0 {
            tracing::debug!(reference = %self.reference, error = %std::io::Error::last_os_error(), "sync_file_range");
        }
        self.writeback_from = self.offset;
    }

    /// Restarts the ingest from offset 0.
    pub fn truncate(&mut self) -> Result<()> {
        self.file
            .set_len(0)
            .ctx(|| format!("truncate ingest {}", self.reference))?;
        self.hasher = Sha256::new();
        self.offset = 0;
        self.writeback_from = 0;
        Ok(())
    }

    /// Verifies size (if `size` > 0) and digest (if `expected` is set),
    /// moves the data into the blob store and records it in the namespace.
    /// Returns the digest.
    pub fn commit(
        &mut self,
        size: i64,
        expected: &str,
        labels: HashMap<String, String>,
    ) -> Result<String> {
        self.file
            .sync_all()
            .ctx(|| format!("sync ingest {}", self.reference))?;
        if size > 0 && size != self.offset {
            return Err(Error::FailedPrecondition(format!(
                "unexpected commit size {}, expected {size}",
                self.offset
            )));
        }
        let actual = self.digest();
        if !expected.is_empty() && expected != actual {
            return Err(Error::FailedPrecondition(format!(
                "unexpected commit digest {actual}, expected {expected}"
            )));
        }
        let blob = self.store.blob_path(&actual)?;
        let ns = self.ns.clone();
        let reference = self.reference.clone();
        let lease = self.lease.clone();
        let size = self.offset;
        // The data goes into place first and the record second: a crash in between leaves
        // an unrecorded blob file (invisible, collected later), never a record whose blob is
        // missing or partial.
        let _g = self
            .store
            .blob_lock
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        // As containerd: existing content still joins this writer's lease,
        // so the caller can rely on it staying.
        if self.store.lease_if_exists(&ns, &actual, lease.as_deref())? {
            return Err(Error::AlreadyExists(format!("content {actual}")));
        }
        let data = self.dir.join("data");
        if blob.exists() {
            fs::remove_file(&data).ctx(|| format!("remove {}", data.display()))?;
        } else {
            let _ = fs::set_permissions(&data, std::os::unix::fs::PermissionsExt::from_mode(0o444));
            fs::rename(&data, &blob)
                .ctx(|| format!("rename {} to {}", data.display(), blob.display()))?;
        }
        let mut existed = false;
        self.store.meta.update(|tx| {
            if tx.exists(Kind::Content, &ns, &actual)? {
                existed = true;
                return tx.add_to_lease(&ns, lease.as_deref(), "content", &actual);
            }
            tx.ensure_namespace(&ns)?;
            let t = now();
            let info = Info {
                digest: actual.clone(),
                size,
                created_at: Some(t),
                updated_at: Some(t),
                labels: labels.clone(),
            };
            tx.put_msg(Kind::Content, &ns, &actual, &info)?;
            let suffix = format!("\x01ingests\x01{reference}");
            for (k, _) in tx.list(Kind::LeaseResource, &ns)? {
                if k.ends_with(&suffix) {
                    tx.delete(Kind::LeaseResource, &ns, &k)?;
                }
            }
            tx.add_to_lease(&ns, lease.as_deref(), "content", &actual)
        })?;
        if existed {
            return Err(Error::AlreadyExists(format!("content {actual}")));
        }
        let _ = fs::remove_dir_all(&self.dir);
        Ok(actual)
    }
}

/// Applies a containerd-style label update (`labels` / `labels.KEY` field
/// paths; none means replace all).
pub fn apply_label_update(
    cur: &mut HashMap<String, String>,
    new: &HashMap<String, String>,
    fieldpaths: &[String],
) -> Result<()> {
    if fieldpaths.is_empty() {
        *cur = new.clone();
        return Ok(());
    }
    for p in fieldpaths {
        if p == "labels" {
            *cur = new.clone();
        } else if let Some(k) = p.strip_prefix("labels.") {
            match new.get(k) {
                Some(v) => {
                    cur.insert(k.to_string(), v.clone());
                }
                None => {
                    cur.remove(k);
                }
            }
        } else {
            return Err(Error::InvalidArgument(format!("cannot update field {p:?}")));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha(data: &[u8]) -> String {
        let mut h = Sha256::new();
        h.update(data);
        digest_string(h)
    }

    /// A write of content that is already there still puts it in the
    /// writer's lease (containerd does the same): otherwise a client whose
    /// lease was meant to hold it (ctr's `snapshots diff` reading the diff it
    /// asked for) can see it collected once the first owner lets go.
    #[test]
    fn existing_content_joins_the_writers_lease() {
        let dir = tempfile::tempdir().unwrap();
        let meta = Arc::new(MetadataStore::open(dir.path()).unwrap());
        let cs = ContentStore::open(dir.path(), meta.clone()).unwrap();
        let data = b"layer bytes";
        let d = sha(data);
        let mut w = cs.writer("ns", "first", 0, "", None).unwrap();
        w.write(data).unwrap();
        w.commit(0, &d, HashMap::new()).unwrap();
        drop(w);
        meta.update(|tx| {
            tx.ensure_namespace("ns")?;
            tx.put(Kind::Lease, "ns", "l1", b"")?;
            tx.put(Kind::Lease, "ns", "l2", b"")
        })
        .unwrap();
        let held = |lease: &str| {
            meta.get(
                Kind::LeaseResource,
                "ns",
                &format!("{lease}\x01content\x01{d}"),
            )
            .unwrap()
            .is_some()
        };
        // By expected digest at open (ctr's write of a known blob)...
        assert!(matches!(
            cs.writer("ns", "second", 0, &d, Some("l1")),
            Err(Error::AlreadyExists(_))
        ));
        assert!(held("l1"));
        // ...and by commit of the same bytes (a diff producing a known layer).
        let mut w = cs.writer("ns", "third", 0, "", Some("l2")).unwrap();
        w.write(data).unwrap();
        assert!(matches!(
            w.commit(0, &d, HashMap::new()),
            Err(Error::AlreadyExists(_))
        ));
        assert!(held("l2"));
    }

    #[test]
    fn ingest_is_resumable_and_verified() {
        let dir = tempfile::tempdir().unwrap();
        let meta = Arc::new(MetadataStore::open(dir.path()).unwrap());
        let cs = ContentStore::open(dir.path(), meta).unwrap();
        let data = b"hello world";
        let d = sha(data);
        {
            let mut w = cs
                .writer("ns", "ref1", data.len() as i64, &d, None)
                .unwrap();
            assert!(matches!(
                cs.writer("ns", "ref1", 0, "", None),
                Err(Error::Unavailable(_))
            ));
            w.write(&data[..5]).unwrap();
        }
        assert_eq!(cs.status("ns", "ref1").unwrap().offset, 5);
        assert_eq!(cs.list_statuses("ns").unwrap().len(), 1);
        let mut w = cs.writer("ns", "ref1", 0, "", None).unwrap();
        assert_eq!(w.offset(), 5);
        w.write(b" WRONG").unwrap();
        let e = w.commit(data.len() as i64, &d, HashMap::new()).unwrap_err();
        assert!(matches!(e, Error::FailedPrecondition(_)), "{e}");
        assert!(cs.info("ns", &d).is_err());
        w.truncate().unwrap();
        w.write(data).unwrap();
        assert_eq!(w.commit(data.len() as i64, &d, HashMap::new()).unwrap(), d);
        drop(w);
        assert_eq!(cs.info("ns", &d).unwrap().size, 11);
        assert!(cs.info("other", &d).is_err());
        assert!(matches!(
            cs.writer("ns", "ref2", 0, &d, None),
            Err(Error::AlreadyExists(_))
        ));
        let mut got = Vec::new();
        cs.read("ns", &d, 6, 0, |_, b| {
            got.extend(b);
            true
        })
        .unwrap();
        assert_eq!(got, b"world");
        cs.delete("ns", &d).unwrap();
        assert!(!cs.blob_path(&d).unwrap().exists());
    }
}
