//! Snapshotters: `overlayfs` ([`overlay`]) and `native` ([`native`]).
//! Both share one record store — snapshot records in the metadata store
//! (overlayfs's under [`Kind::Snapshot`], native's under
//! [`Kind::NativeSnapshot`]: names are per snapshotter and per namespace;
//! ids are global) — and the same semantics (keys, parents, labels, leases,
//! Stat/Update/List/Usage/Remove, background removal through a trash dir).
//! They differ only in [`Backend`]'s filesystem work: how a snapshot's
//! directory is made and which mounts show it. Active snapshots are
//! writable, views are read-only, committed snapshots are immutable parents.

pub mod native;
pub mod overlay;

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
use crate::trash::Trash;
use crate::util::now;

/// containerd's overlay snapshotter name.
pub const OVERLAYFS: &str = "overlayfs";
/// containerd's copying snapshotter name.
pub const NATIVE: &str = "native";

/// What a snapshotter does on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Backend {
    /// `<root>/snapshots/<id>/{fs,work}`, overlay mounts of the parents.
    Overlay,
    /// `<root>/native/snapshots/<id>/`, a full copy of the parent, bind-mounted.
    Native,
}

impl Backend {
    pub const ALL: [Backend; 2] = [Backend::Overlay, Backend::Native];

    /// The snapshotter's name in the API (`snapshotter` fields, labels,
    /// lease resources `snapshots/<name>`).
    pub fn name(self) -> &'static str {
        match self {
            Backend::Overlay => OVERLAYFS,
            Backend::Native => NATIVE,
        }
    }

    /// The backend named `name`, if any.
    pub fn from_name(name: &str) -> Option<Backend> {
        Backend::ALL.into_iter().find(|b| b.name() == name)
    }

    /// Where its snapshot records live in the metadata store.
    pub fn record_kind(self) -> Kind {
        match self {
            Backend::Overlay => Kind::Snapshot,
            Backend::Native => Kind::NativeSnapshot,
        }
    }
}

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

fn decode(key: &str, b: &[u8]) -> Result<SnapshotRecord> {
    serde_json::from_slice(b).map_err(|e| Error::Metadata(format!("snapshot {key}: {e}")))
}

/// What garbage collection needs of a snapshot record.
#[derive(Debug, Clone)]
pub struct SnapshotRefs {
    pub id: u64,
    pub parent: String,
    pub labels: HashMap<String, String>,
}

/// Decodes a snapshot record (as stored under [`Backend::record_kind`]).
pub fn decode_refs(name: &str, bytes: &[u8]) -> Result<SnapshotRefs> {
    let r = decode(name, bytes)?;
    Ok(SnapshotRefs {
        id: r.id,
        parent: r.parent,
        labels: r.labels,
    })
}

/// One snapshotter: the shared record logic over one [`Backend`].
pub struct Snapshotter {
    backend: Backend,
    dir: PathBuf,
    /// Directories of removed snapshots, renamed there (same filesystem,
    /// atomic) and deleted by a background thread.
    trash: Trash,
    meta: Arc<MetadataStore>,
}

impl Snapshotter {
    /// Opens a snapshotter under `root`: overlayfs in `<root>/snapshots`
    /// (trash `<root>/snapshots.trash`), native in `<root>/native/snapshots`
    /// (trash `<root>/native/snapshots.trash`).
    pub fn open(root: &Path, meta: Arc<MetadataStore>, backend: Backend) -> Result<Snapshotter> {
        let base = match backend {
            Backend::Overlay => root.to_path_buf(),
            Backend::Native => root.join("native"),
        };
        let dir = base.join("snapshots");
        fs::create_dir_all(&dir).ctx(|| format!("create {}", dir.display()))?;
        let trash = Trash::open(base.join("snapshots.trash"), "snapshot-rm")?;
        Ok(Snapshotter {
            backend,
            dir,
            trash,
            meta,
        })
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The snapshotter's API name.
    pub fn name(&self) -> &'static str {
        self.backend.name()
    }

    fn kind(&self) -> Kind {
        self.backend.record_kind()
    }

    /// Its lease resource type, `snapshots/<name>`.
    pub fn lease_type(&self) -> String {
        format!("snapshots/{}", self.name())
    }

    fn get_rec(&self, tx: &WriteTx<'_>, ns: &str, key: &str) -> Result<Option<SnapshotRecord>> {
        match tx.get(self.kind(), ns, key)? {
            Some(b) => Ok(Some(decode(key, &b)?)),
            None => Ok(None),
        }
    }

    fn put_rec(&self, tx: &mut WriteTx<'_>, ns: &str, key: &str, r: &SnapshotRecord) -> Result<()> {
        let b = serde_json::to_vec(r).map_err(|e| Error::Internal(e.to_string()))?;
        tx.put(self.kind(), ns, key, &b)
    }

    /// Drops the lease references to snapshot `key`.
    fn unlease(&self, tx: &mut WriteTx<'_>, ns: &str, key: &str) -> Result<()> {
        let suffix = format!("\x01{}\x01{key}", self.lease_type());
        for (k, _) in tx.list(Kind::LeaseResource, ns)? {
            if k.ends_with(&suffix) {
                tx.delete(Kind::LeaseResource, ns, &k)?;
            }
        }
        Ok(())
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
        match self.meta.get(self.kind(), ns, key)? {
            Some(b) => decode(key, &b),
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
        let active = r.kind == SnapshotKind::Active as i32;
        let own = self.snapshot_dir(r.id);
        match self.backend {
            Backend::Overlay => {
                let parents: Vec<PathBuf> = self
                    .parent_ids(ns, r.parent.clone())?
                    .into_iter()
                    .map(|id| self.snapshot_dir(id))
                    .collect();
                Ok(overlay::mounts(&own, &parents, active))
            }
            Backend::Native => Ok(native::mounts(&own, !active)),
        }
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
            if tx.exists(self.kind(), ns, key)? {
                return Err(Error::AlreadyExists(format!("snapshot {key}")));
            }
            let mut parent_id = None;
            if !parent.is_empty() {
                let p = self
                    .get_rec(tx, ns, parent)?
                    .ok_or_else(|| Error::NotFound(format!("parent snapshot {parent}")))?;
                if p.kind != SnapshotKind::Committed as i32 {
                    return Err(Error::InvalidArgument(format!(
                        "parent {parent} is not a committed snapshot"
                    )));
                }
                parent_id = Some(p.id);
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
            self.put_rec(tx, ns, key, &rec)?;
            tx.add_to_lease(ns, lease, &self.lease_type(), key)?;
            // The directory is made inside the transaction (as containerd's
            // metadata layer calls its snapshotter inside its bolt update):
            // garbage collection, which runs in one too, never sees a
            // directory without its record, and a native copy's parent
            // cannot be removed meanwhile.
            let d = self.snapshot_dir(id);
            let _ = fs::remove_dir_all(&d);
            let made = match self.backend {
                Backend::Overlay => overlay::create(&d),
                Backend::Native => {
                    native::create(&d, parent_id.map(|p| self.snapshot_dir(p)).as_deref())
                }
            };
            if let Err(e) = made {
                if let Err(e) = fs::remove_dir_all(&d) {
                    if e.kind() != std::io::ErrorKind::NotFound {
                        tracing::warn!(dir = %d.display(), error = %e, "cannot remove a half-made snapshot directory");
                    }
                }
                return Err(Error::io(
                    format!("{} snapshot {key}: create {}", self.name(), d.display()),
                    e,
                ));
            }
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

    /// Turns active snapshot `key` into committed snapshot `name` (its
    /// directory stays as it is: committing only changes the record).
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
            let r = self
                .get_rec(tx, ns, key)?
                .ok_or_else(|| Error::NotFound(format!("snapshot {key}")))?;
            if r.kind != SnapshotKind::Active as i32 {
                return Err(Error::FailedPrecondition(format!(
                    "snapshot {key} is not active"
                )));
            }
            if tx.exists(self.kind(), ns, name)? {
                return Err(Error::AlreadyExists(format!("snapshot {name}")));
            }
            tx.delete(self.kind(), ns, key)?;
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
            self.put_rec(tx, ns, name, &c)?;
            self.unlease(tx, ns, key)?;
            tx.add_to_lease(ns, lease, &self.lease_type(), name)
        })?;
        Ok(())
    }

    /// Removes a snapshot that has no children.
    pub fn remove(&self, ns: &str, key: &str) -> Result<()> {
        let rec = self.meta.update(|tx| {
            let r = self
                .get_rec(tx, ns, key)?
                .ok_or_else(|| Error::NotFound(format!("snapshot {key}")))?;
            for (name, b) in tx.list(self.kind(), ns)? {
                let c = decode(&name, &b)?;
                if c.parent == key {
                    return Err(Error::FailedPrecondition(format!(
                        "cannot remove snapshot {key}: snapshot {name} is its child"
                    )));
                }
            }
            tx.delete(self.kind(), ns, key)?;
            self.unlease(tx, ns, key)?;
            Ok(r)
        })?;
        self.trash.discard(&self.snapshot_dir(rec.id));
        Ok(())
    }

    pub fn stat(&self, ns: &str, key: &str) -> Result<Info> {
        Ok(self.get(ns, key)?.info(key))
    }

    /// Updates labels (`labels`, `labels.KEY` field paths, none = all).
    pub fn update(&self, ns: &str, info: &Info, fieldpaths: &[String]) -> Result<Info> {
        self.meta.update(|tx| {
            let mut r = self
                .get_rec(tx, ns, &info.name)?
                .ok_or_else(|| Error::NotFound(format!("snapshot {}", info.name)))?;
            apply_label_update(&mut r.labels, &info.labels, fieldpaths)?;
            r.updated = now_pair();
            self.put_rec(tx, ns, &info.name, &r)?;
            Ok(r.info(&info.name))
        })
    }

    pub fn list(&self, ns: &str) -> Result<Vec<Info>> {
        let mut out = Vec::new();
        for (name, b) in self.meta.list(self.kind(), ns)? {
            out.push(decode(&name, &b)?.info(&name));
        }
        Ok(out)
    }

    /// Disk usage of what the snapshot holds itself: overlayfs's own layer,
    /// native's whole tree (as containerd's native snapshotter reports).
    pub fn usage(&self, ns: &str, key: &str) -> Result<Usage> {
        let r = self.get(ns, key)?;
        let top = match self.backend {
            Backend::Overlay => overlay::layer_dir(&self.snapshot_dir(r.id)),
            Backend::Native => self.snapshot_dir(r.id),
        };
        let (mut size, mut inodes) = (0i64, 0i64);
        // Hard links count once.
        let mut seen = std::collections::HashSet::new();
        let mut stack = vec![top];
        while let Some(d) = stack.pop() {
            let Ok(rd) = fs::read_dir(&d) else { continue };
            for e in rd.flatten() {
                let Ok(m) = e.path().symlink_metadata() else {
                    continue;
                };
                use std::os::unix::fs::MetadataExt;
                if m.nlink() > 1 && !m.is_dir() && !seen.insert((m.dev(), m.ino())) {
                    continue;
                }
                inodes += 1;
                size += m.blocks() as i64 * 512;
                if m.is_dir() {
                    stack.push(e.path());
                }
            }
        }
        Ok(Usage { size, inodes })
    }
}

/// The snapshotters of one supervisor and which one an empty
/// `snapshotter` field means.
pub struct Snapshotters {
    overlay: Arc<Snapshotter>,
    native: Arc<Snapshotter>,
    default: Backend,
}

impl Snapshotters {
    pub fn open(root: &Path, meta: Arc<MetadataStore>, default: Backend) -> Result<Snapshotters> {
        Ok(Snapshotters {
            overlay: Arc::new(Snapshotter::open(root, meta.clone(), Backend::Overlay)?),
            native: Arc::new(Snapshotter::open(root, meta, Backend::Native)?),
            default,
        })
    }

    /// The snapshotter named `name` ("" = the default one); an unknown name
    /// is an InvalidArgument error, as containerd's "snapshotter not loaded".
    pub fn get(&self, name: &str) -> Result<&Arc<Snapshotter>> {
        let b = if name.is_empty() {
            self.default
        } else {
            Backend::from_name(name).ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "snapshotter not loaded: {name:?} was not found (available: {OVERLAYFS}, {NATIVE})"
                ))
            })?
        };
        Ok(self.backend(b))
    }

    pub fn backend(&self, b: Backend) -> &Arc<Snapshotter> {
        match b {
            Backend::Overlay => &self.overlay,
            Backend::Native => &self.native,
        }
    }

    /// The snapshotter used when a request names none.
    pub fn default_backend(&self) -> Backend {
        self.default
    }

    /// Every snapshotter.
    pub fn all(&self) -> [&Arc<Snapshotter>; 2] {
        [&self.overlay, &self.native]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prepare_commit_view_remove() {
        let dir = tempfile::tempdir().unwrap();
        let meta = Arc::new(MetadataStore::open(dir.path()).unwrap());
        let s = Snapshotter::open(dir.path(), meta, Backend::Overlay).unwrap();
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
        let s = Snapshotter::open(dir.path(), meta, Backend::Overlay).unwrap();
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

    #[test]
    fn native_snapshots_copy_their_parent_and_bind_mount_one_directory() {
        let dir = tempfile::tempdir().unwrap();
        let meta = Arc::new(MetadataStore::open(dir.path()).unwrap());
        let s = Snapshotters::open(dir.path(), meta.clone(), Backend::Native).unwrap();
        let n = s.get("").unwrap();
        assert_eq!(n.name(), NATIVE);
        let o = s.get(OVERLAYFS).unwrap();
        assert!(matches!(s.get("btrfs"), Err(Error::InvalidArgument(_))));

        let m = n.prepare("ns", "k1", "", HashMap::new(), None).unwrap();
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].r#type, "bind");
        assert_eq!(m[0].options, vec!["rw".to_string(), "rbind".to_string()]);
        let root = PathBuf::from(&m[0].source);
        assert!(root.starts_with(dir.path().join("native/snapshots")));
        fs::create_dir(root.join("etc")).unwrap();
        fs::write(root.join("etc/a"), b"one").unwrap();
        fs::hard_link(root.join("etc/a"), root.join("etc/b")).unwrap();
        n.commit("ns", "c1", "k1", HashMap::new(), None).unwrap();
        // Names are per snapshotter.
        assert!(o.stat("ns", "c1").is_err());
        o.prepare("ns", "c1", "", HashMap::new(), None).unwrap();
        assert_eq!(o.list("ns").unwrap().len(), 1);
        assert_eq!(n.list("ns").unwrap().len(), 1);

        let m2 = n.prepare("ns", "k2", "c1", HashMap::new(), None).unwrap();
        let child = PathBuf::from(&m2[0].source);
        assert_ne!(child, root);
        assert_eq!(fs::read(child.join("etc/a")).unwrap(), b"one");
        use std::os::unix::fs::MetadataExt;
        let (a, b) = (
            fs::metadata(child.join("etc/a")).unwrap(),
            fs::metadata(child.join("etc/b")).unwrap(),
        );
        assert_eq!(a.ino(), b.ino());
        assert_ne!(a.ino(), fs::metadata(root.join("etc/a")).unwrap().ino());
        fs::write(child.join("etc/a"), b"two").unwrap();
        assert_eq!(fs::read(root.join("etc/a")).unwrap(), b"one");
        let v = n.view("ns", "v1", "c1", HashMap::new(), None).unwrap();
        assert_eq!(v[0].options, vec!["ro".to_string(), "rbind".to_string()]);
        assert_eq!(
            fs::read(PathBuf::from(&v[0].source).join("etc/b")).unwrap(),
            b"one"
        );
        let u = n.usage("ns", "c1").unwrap();
        assert_eq!(u.inodes, 2, "etc and one inode for a+b");
        assert!(matches!(
            n.remove("ns", "c1"),
            Err(Error::FailedPrecondition(_))
        ));
        assert!(matches!(
            n.prepare("ns", "k3", "k2", HashMap::new(), None),
            Err(Error::InvalidArgument(_))
        ));
        assert!(matches!(
            n.prepare("ns", "k3", "missing", HashMap::new(), None),
            Err(Error::NotFound(_))
        ));
        // Records and directories survive a reopen.
        drop(s);
        let s = Snapshotters::open(dir.path(), meta, Backend::Overlay).unwrap();
        let n = s.get(NATIVE).unwrap();
        assert_eq!(n.list("ns").unwrap().len(), 3);
        assert_eq!(n.mounts("ns", "k2").unwrap(), m2);
        assert_eq!(n.dir_ids().unwrap().len(), 3);
        n.remove("ns", "k2").unwrap();
        n.remove("ns", "v1").unwrap();
        n.remove("ns", "c1").unwrap();
        assert!(n.list("ns").unwrap().is_empty());
        assert!(n.dir_ids().unwrap().is_empty());
        assert_eq!(s.get("").unwrap().name(), OVERLAYFS);
    }

    #[test]
    fn a_failed_native_copy_leaves_no_record_or_directory() {
        let dir = tempfile::tempdir().unwrap();
        let meta = Arc::new(MetadataStore::open(dir.path()).unwrap());
        let n = Snapshotter::open(dir.path(), meta, Backend::Native).unwrap();
        let m = n.prepare("ns", "k1", "", HashMap::new(), None).unwrap();
        n.commit("ns", "c1", "k1", HashMap::new(), None).unwrap();
        // The parent's directory vanished behind our back: the copy fails.
        fs::remove_dir_all(&m[0].source).unwrap();
        let e = n
            .prepare("ns", "k2", "c1", HashMap::new(), None)
            .unwrap_err();
        assert!(e.to_string().contains("native snapshot k2"), "{e}");
        assert!(n.stat("ns", "k2").is_err());
        assert!(n.dir_ids().unwrap().is_empty());
    }
}
