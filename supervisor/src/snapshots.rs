//! The overlayfs snapshotter (containerd's `overlayfs`): each snapshot is a
//! directory `<root>/snapshots/<id>/` holding `fs/` (its upper layer) and
//! `work/` (overlayfs's work dir). Active snapshots are writable, views are
//! read-only, committed snapshots are immutable parents. Snapshot names are
//! per namespace (records in the metadata store); ids are global.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use orca_proto::snapshots::{Info, Kind as SnapshotKind, UsageResponse as Usage};
use orca_proto::types::Mount;
use serde::{Deserialize, Serialize};

use crate::content::apply_label_update;
use crate::error::{Error, IoContext, Result};
use crate::metadata::{Kind, MetadataStore, WriteTx};
use crate::util::now;

/// The only snapshotter this supervisor provides.
pub const OVERLAYFS: &str = "overlayfs";

#[derive(Debug, Clone, Serialize, Deserialize)]
struct SnapshotRecord {
    id: u64,
    kind: i32,
    parent: String,
    labels: HashMap<String, String>,
    created: (i64, i32),
    updated: (i64, i32),
}

impl SnapshotRecord {
    fn info(&self, name: &str) -> Info {
        Info {
            name: name.to_string(),
            parent: self.parent.clone(),
            kind: self.kind,
            created_at: Some(prost_types::Timestamp {
                seconds: self.created.0,
                nanos: self.created.1,
            }),
            updated_at: Some(prost_types::Timestamp {
                seconds: self.updated.0,
                nanos: self.updated.1,
            }),
            labels: self.labels.clone(),
        }
    }
}

fn now_pair() -> (i64, i32) {
    let t = now();
    (t.seconds, t.nanos)
}

fn get_rec(tx: &WriteTx<'_>, ns: &str, key: &str) -> Result<Option<SnapshotRecord>> {
    match tx.get(Kind::Snapshot, ns, key)? {
        Some(b) => {
            Ok(Some(serde_json::from_slice(&b).map_err(|e| {
                Error::Metadata(format!("snapshot {key}: {e}"))
            })?))
        }
        None => Ok(None),
    }
}

fn put_rec(tx: &mut WriteTx<'_>, ns: &str, key: &str, r: &SnapshotRecord) -> Result<()> {
    let b = serde_json::to_vec(r).map_err(|e| Error::Internal(e.to_string()))?;
    tx.put(Kind::Snapshot, ns, key, &b)
}

/// What garbage collection needs of a snapshot record.
#[derive(Debug, Clone)]
pub struct SnapshotRefs {
    pub id: u64,
    pub parent: String,
    pub labels: HashMap<String, String>,
}

/// Decodes a snapshot record (as stored under [`Kind::Snapshot`]).
pub fn decode_refs(name: &str, bytes: &[u8]) -> Result<SnapshotRefs> {
    let r: SnapshotRecord = serde_json::from_slice(bytes)
        .map_err(|e| Error::Metadata(format!("snapshot {name}: {e}")))?;
    Ok(SnapshotRefs {
        id: r.id,
        parent: r.parent,
        labels: r.labels,
    })
}

/// The overlayfs snapshotter.
pub struct OverlaySnapshotter {
    dir: PathBuf,
    /// `<root>/snapshots.trash`: directories of removed snapshots, renamed
    /// there (same filesystem, atomic) and deleted by a background thread.
    trash: PathBuf,
    meta: Arc<MetadataStore>,
}

/// Distinguishes trash entries of one process.
static TRASH_SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Deletes `paths` on a background thread (inline if no thread can be made).
fn remove_in_background(paths: Vec<PathBuf>) {
    if paths.is_empty() {
        return;
    }
    let work = move || {
        for p in paths {
            if let Err(e) = fs::remove_dir_all(&p) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(dir = %p.display(), error = %e, "cannot remove snapshot directory");
                }
            }
        }
    };
    let shared = Arc::new(std::sync::Mutex::new(Some(work)));
    let theirs = shared.clone();
    let spawned = std::thread::Builder::new()
        .name("snapshot-rm".into())
        .spawn(move || {
            if let Some(w) = theirs.lock().ok().and_then(|mut g| g.take()) {
                w()
            }
        });
    if spawned.is_err() {
        if let Some(w) = shared.lock().ok().and_then(|mut g| g.take()) {
            w()
        }
    }
}

impl OverlaySnapshotter {
    pub fn open(root: &Path, meta: Arc<MetadataStore>) -> Result<OverlaySnapshotter> {
        let dir = root.join("snapshots");
        fs::create_dir_all(&dir).ctx(|| format!("create {}", dir.display()))?;
        let trash = root.join("snapshots.trash");
        fs::create_dir_all(&trash).ctx(|| format!("create {}", trash.display()))?;
        // Leftovers of removals a previous run did not finish.
        let leftovers = fs::read_dir(&trash)
            .ctx(|| format!("read {}", trash.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        remove_in_background(leftovers);
        Ok(OverlaySnapshotter { dir, trash, meta })
    }

    /// Takes a snapshot directory out of `snapshots/` at once (a rename) and
    /// deletes it in the background: removing an upper layer can take tens
    /// of milliseconds, which no caller needs to wait for (containerd also
    /// removes snapshot directories after the call, in its GC). Falls back
    /// to removing in place if the rename fails.
    fn discard_dir(&self, d: &Path) {
        let seq = TRASH_SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!(
            "{}-{}-{seq}",
            d.file_name()
                .map(|n| n.to_string_lossy())
                .unwrap_or_default(),
            std::process::id()
        );
        let to = self.trash.join(name);
        match fs::rename(d, &to) {
            Ok(()) => remove_in_background(vec![to]),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::debug!(dir = %d.display(), error = %e, "cannot move snapshot directory to the trash");
                if let Err(e) = fs::remove_dir_all(d) {
                    tracing::warn!(dir = %d.display(), error = %e, "cannot remove snapshot directory");
                }
            }
        }
    }

    fn snapshot_dir(&self, id: u64) -> PathBuf {
        self.dir.join(id.to_string())
    }

    /// Ids of the snapshot directories on disk.
    pub fn dir_ids(&self) -> Result<Vec<u64>> {
        let mut out = Vec::new();
        for e in fs::read_dir(&self.dir).ctx(|| format!("read {}", self.dir.display()))? {
            let e = e.ctx(|| format!("read {}", self.dir.display()))?;
            if let Some(id) = e.file_name().to_str().and_then(|n| n.parse().ok()) {
                out.push(id);
            }
        }
        Ok(out)
    }

    /// Removes the directory of a snapshot whose record is gone.
    pub fn remove_dir(&self, id: u64) {
        let d = self.snapshot_dir(id);
        if let Err(e) = fs::remove_dir_all(&d) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(dir = %d.display(), error = %e, "cannot remove snapshot directory");
            }
        }
    }

    fn get(&self, ns: &str, key: &str) -> Result<SnapshotRecord> {
        match self.meta.get(Kind::Snapshot, ns, key)? {
            Some(b) => serde_json::from_slice(&b)
                .map_err(|e| Error::Metadata(format!("snapshot {key}: {e}"))),
            None => Err(Error::NotFound(format!("snapshot {key}"))),
        }
    }

    /// Ids of the committed ancestors of a snapshot, nearest first.
    fn parent_ids(&self, ns: &str, mut parent: String) -> Result<Vec<u64>> {
        let mut ids = Vec::new();
        while !parent.is_empty() {
            let r = self.get(ns, &parent)?;
            ids.push(r.id);
            parent = r.parent;
            if ids.len() > 500 {
                return Err(Error::FailedPrecondition(
                    "snapshot parent chain too long".into(),
                ));
            }
        }
        Ok(ids)
    }

    fn mounts_for(&self, ns: &str, r: &SnapshotRecord) -> Result<Vec<Mount>> {
        let parents = self.parent_ids(ns, r.parent.clone())?;
        let own = self.snapshot_dir(r.id);
        let fs_of = |id: u64| self.snapshot_dir(id).join("fs").display().to_string();
        let bind = |src: String, ro: bool| Mount {
            r#type: "bind".into(),
            source: src,
            target: String::new(),
            options: vec![if ro { "ro" } else { "rw" }.into(), "rbind".into()],
        };
        let active = r.kind == SnapshotKind::Active as i32;
        if parents.is_empty() {
            return Ok(vec![bind(own.join("fs").display().to_string(), !active)]);
        }
        if !active && parents.len() == 1 {
            return Ok(vec![bind(fs_of(parents[0]), true)]);
        }
        let lower = parents
            .iter()
            .map(|id| fs_of(*id))
            .collect::<Vec<_>>()
            .join(":");
        let mut options = Vec::new();
        if active {
            options.push(format!("workdir={}", own.join("work").display()));
            options.push(format!("upperdir={}", own.join("fs").display()));
        }
        options.push(format!("lowerdir={lower}"));
        Ok(vec![Mount {
            r#type: "overlay".into(),
            source: "overlay".into(),
            target: String::new(),
            options,
        }])
    }

    fn create(
        &self,
        ns: &str,
        key: &str,
        parent: &str,
        labels: HashMap<String, String>,
        kind: SnapshotKind,
        lease: Option<&str>,
    ) -> Result<Vec<Mount>> {
        if key.is_empty() {
            return Err(Error::InvalidArgument(
                "snapshot key must not be empty".into(),
            ));
        }
        let rec = self.meta.update(|tx| {
            if tx.exists(Kind::Snapshot, ns, key)? {
                return Err(Error::AlreadyExists(format!("snapshot {key}")));
            }
            if !parent.is_empty() {
                let p = get_rec(tx, ns, parent)?
                    .ok_or_else(|| Error::NotFound(format!("parent snapshot {parent}")))?;
                if p.kind != SnapshotKind::Committed as i32 {
                    return Err(Error::InvalidArgument(format!(
                        "parent {parent} is not a committed snapshot"
                    )));
                }
            }
            tx.ensure_namespace(ns)?;
            let id = tx.next_seq("snapshot-id")?;
            let t = now_pair();
            let rec = SnapshotRecord {
                id,
                kind: kind as i32,
                parent: parent.to_string(),
                labels: labels.clone(),
                created: t,
                updated: t,
            };
            put_rec(tx, ns, key, &rec)?;
            tx.add_to_lease(ns, lease, "snapshots/overlayfs", key)?;
            let d = self.snapshot_dir(id);
            let _ = fs::remove_dir_all(&d);
            for sub in ["fs", "work"] {
                fs::create_dir_all(d.join(sub))
                    .ctx(|| format!("create {}", d.join(sub).display()))?;
            }
            fs::set_permissions(
                d.join("fs"),
                std::os::unix::fs::PermissionsExt::from_mode(0o755),
            )
            .ctx(|| format!("chmod {}/fs", d.display()))?;
            Ok(rec)
        })?;
        self.mounts_for(ns, &rec)
    }

    /// A new writable snapshot on top of committed `parent` ("" for none).
    pub fn prepare(
        &self,
        ns: &str,
        key: &str,
        parent: &str,
        labels: HashMap<String, String>,
        lease: Option<&str>,
    ) -> Result<Vec<Mount>> {
        self.create(ns, key, parent, labels, SnapshotKind::Active, lease)
    }

    /// A new read-only view of committed `parent`.
    pub fn view(
        &self,
        ns: &str,
        key: &str,
        parent: &str,
        labels: HashMap<String, String>,
        lease: Option<&str>,
    ) -> Result<Vec<Mount>> {
        self.create(ns, key, parent, labels, SnapshotKind::View, lease)
    }

    pub fn mounts(&self, ns: &str, key: &str) -> Result<Vec<Mount>> {
        let r = self.get(ns, key)?;
        self.mounts_for(ns, &r)
    }

    /// Turns active snapshot `key` into committed snapshot `name`.
    pub fn commit(
        &self,
        ns: &str,
        name: &str,
        key: &str,
        labels: HashMap<String, String>,
        lease: Option<&str>,
    ) -> Result<()> {
        if name.is_empty() {
            return Err(Error::InvalidArgument(
                "committed snapshot name must not be empty".into(),
            ));
        }
        self.meta.update(|tx| {
            let r =
                get_rec(tx, ns, key)?.ok_or_else(|| Error::NotFound(format!("snapshot {key}")))?;
            if r.kind != SnapshotKind::Active as i32 {
                return Err(Error::FailedPrecondition(format!(
                    "snapshot {key} is not active"
                )));
            }
            if tx.exists(Kind::Snapshot, ns, name)? {
                return Err(Error::AlreadyExists(format!("snapshot {name}")));
            }
            tx.delete(Kind::Snapshot, ns, key)?;
            let mut merged = r.labels.clone();
            merged.extend(labels.clone());
            let t = now_pair();
            let c = SnapshotRecord {
                id: r.id,
                kind: SnapshotKind::Committed as i32,
                parent: r.parent.clone(),
                labels: merged,
                created: t,
                updated: t,
            };
            put_rec(tx, ns, name, &c)?;
            for (k, _) in tx.list(Kind::LeaseResource, ns)? {
                if k.ends_with(&format!("\x01snapshots/overlayfs\x01{key}")) {
                    tx.delete(Kind::LeaseResource, ns, &k)?;
                }
            }
            tx.add_to_lease(ns, lease, "snapshots/overlayfs", name)
        })?;
        Ok(())
    }

    /// Removes a snapshot that has no children.
    pub fn remove(&self, ns: &str, key: &str) -> Result<()> {
        let rec = self.meta.update(|tx| {
            let r =
                get_rec(tx, ns, key)?.ok_or_else(|| Error::NotFound(format!("snapshot {key}")))?;
            for (name, b) in tx.list(Kind::Snapshot, ns)? {
                let c: SnapshotRecord =
                    serde_json::from_slice(&b).map_err(|e| Error::Metadata(e.to_string()))?;
                if c.parent == key {
                    return Err(Error::FailedPrecondition(format!(
                        "cannot remove snapshot {key}: snapshot {name} is its child"
                    )));
                }
            }
            tx.delete(Kind::Snapshot, ns, key)?;
            for (k, _) in tx.list(Kind::LeaseResource, ns)? {
                if k.ends_with(&format!("\x01snapshots/overlayfs\x01{key}")) {
                    tx.delete(Kind::LeaseResource, ns, &k)?;
                }
            }
            Ok(r)
        })?;
        self.discard_dir(&self.snapshot_dir(rec.id));
        Ok(())
    }

    pub fn stat(&self, ns: &str, key: &str) -> Result<Info> {
        Ok(self.get(ns, key)?.info(key))
    }

    /// Updates labels (`labels`, `labels.KEY` field paths, none = all).
    pub fn update(&self, ns: &str, info: &Info, fieldpaths: &[String]) -> Result<Info> {
        self.meta.update(|tx| {
            let mut r = get_rec(tx, ns, &info.name)?
                .ok_or_else(|| Error::NotFound(format!("snapshot {}", info.name)))?;
            apply_label_update(&mut r.labels, &info.labels, fieldpaths)?;
            r.updated = now_pair();
            put_rec(tx, ns, &info.name, &r)?;
            Ok(r.info(&info.name))
        })
    }

    pub fn list(&self, ns: &str) -> Result<Vec<Info>> {
        let mut out = Vec::new();
        for (name, b) in self.meta.list(Kind::Snapshot, ns)? {
            let r: SnapshotRecord =
                serde_json::from_slice(&b).map_err(|e| Error::Metadata(e.to_string()))?;
            out.push(r.info(&name));
        }
        Ok(out)
    }

    /// Disk usage of the snapshot's own layer.
    pub fn usage(&self, ns: &str, key: &str) -> Result<Usage> {
        let r = self.get(ns, key)?;
        let (mut size, mut inodes) = (0i64, 0i64);
        let mut stack = vec![self.snapshot_dir(r.id).join("fs")];
        while let Some(d) = stack.pop() {
            let Ok(rd) = fs::read_dir(&d) else { continue };
            for e in rd.flatten() {
                let Ok(m) = e.path().symlink_metadata() else {
                    continue;
                };
                inodes += 1;
                size += std::os::unix::fs::MetadataExt::blocks(&m) as i64 * 512;
                if m.is_dir() {
                    stack.push(e.path());
                }
            }
        }
        Ok(Usage { size, inodes })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prepare_commit_view_remove() {
        let dir = tempfile::tempdir().unwrap();
        let meta = Arc::new(MetadataStore::open(dir.path()).unwrap());
        let s = OverlaySnapshotter::open(dir.path(), meta).unwrap();
        let m = s.prepare("ns", "k1", "", HashMap::new(), None).unwrap();
        assert_eq!(m[0].r#type, "bind");
        assert!(m[0].options.contains(&"rw".to_string()));
        assert!(matches!(
            s.prepare("ns", "k1", "", HashMap::new(), None),
            Err(Error::AlreadyExists(_))
        ));
        assert!(matches!(
            s.prepare("ns", "k2", "k1", HashMap::new(), None),
            Err(Error::InvalidArgument(_))
        ));
        s.commit("ns", "c1", "k1", HashMap::new(), None).unwrap();
        assert!(s.stat("ns", "k1").is_err());
        assert_eq!(
            s.stat("ns", "c1").unwrap().kind,
            SnapshotKind::Committed as i32
        );
        let m = s.prepare("ns", "k2", "c1", HashMap::new(), None).unwrap();
        assert_eq!(m[0].r#type, "overlay");
        assert!(m[0].options.iter().any(|o| o.starts_with("upperdir=")));
        let v = s.view("ns", "v1", "c1", HashMap::new(), None).unwrap();
        assert_eq!(v[0].r#type, "bind");
        assert!(v[0].options.contains(&"ro".to_string()));
        assert!(matches!(
            s.remove("ns", "c1"),
            Err(Error::FailedPrecondition(_))
        ));
        assert!(s.stat("other", "c1").is_err());
        s.remove("ns", "k2").unwrap();
        s.remove("ns", "v1").unwrap();
        s.remove("ns", "c1").unwrap();
        assert!(s.list("ns").unwrap().is_empty());
    }

    fn entries(d: &Path) -> Vec<std::ffi::OsString> {
        fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect()
    }

    #[test]
    fn removed_directories_leave_at_once_and_are_deleted_in_the_background() {
        let dir = tempfile::tempdir().unwrap();
        let meta = Arc::new(MetadataStore::open(dir.path()).unwrap());
        // A leftover of an earlier run that stopped mid-removal.
        let stale = dir.path().join("snapshots.trash/7-1-0/fs/etc");
        fs::create_dir_all(&stale).unwrap();
        fs::write(stale.join("f"), b"x").unwrap();
        let s = OverlaySnapshotter::open(dir.path(), meta).unwrap();
        s.prepare("ns", "k1", "", HashMap::new(), None).unwrap();
        let snaps = dir.path().join("snapshots");
        assert_eq!(entries(&snaps).len(), 1);
        let upper = snaps.join(entries(&snaps)[0].clone()).join("fs");
        fs::create_dir_all(upper.join("a/b")).unwrap();
        fs::write(upper.join("a/b/c"), vec![0u8; 4096]).unwrap();
        s.remove("ns", "k1").unwrap();
        assert!(entries(&snaps).is_empty(), "{:?}", entries(&snaps));
        let trash = dir.path().join("snapshots.trash");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !entries(&trash).is_empty() {
            assert!(
                std::time::Instant::now() < deadline,
                "trash not emptied: {:?}",
                entries(&trash)
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(matches!(s.remove("ns", "k1"), Err(Error::NotFound(_))));
    }
}
