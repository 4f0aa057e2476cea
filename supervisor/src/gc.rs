//! Garbage collection, containerd's way: a mark-and-sweep over the metadata
//! of every namespace.
//!
//! Roots: images (their target), containers (their snapshot), live leases
//! (every resource they hold; leases whose `containerd.io/gc.expire` time
//! has passed are deleted first), and content or snapshots labelled
//! `containerd.io/gc.root`. References: `containerd.io/gc.ref.content*`
//! labels name content, `containerd.io/gc.ref.snapshot.<snapshotter>*`
//! labels name snapshots of that snapshotter (`overlayfs` or `native`; on
//! images, containers, content and snapshots), and a snapshot references
//! its parent in the same snapshotter. A lease labelled `containerd.io/gc.flat`
//! keeps its resources but not what they reference.
//!
//! Unmarked content and snapshot records are deleted in the same metadata
//! transaction as the marking (so nothing created meanwhile is missed);
//! blob files no namespace records, snapshot directories without a record
//! and ingests started under a lease that no live lease holds any more are
//! removed afterwards. Runs after image, container, lease, content and
//! snapshot deletions (scheduled, or synchronously when the request asks
//! for `sync`) and at startup.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use orca_proto as api;
use prost::Message;

use crate::content::ContentStore;
use crate::error::Result;
use crate::metadata::{Kind, MetadataStore};
use crate::snapshots::{decode_refs, Backend, SnapshotRefs, Snapshotters};

pub const LABEL_ROOT: &str = "containerd.io/gc.root";
pub const LABEL_EXPIRE: &str = "containerd.io/gc.expire";
pub const LABEL_FLAT: &str = "containerd.io/gc.flat";
pub const LABEL_REF_CONTENT: &str = "containerd.io/gc.ref.content";
pub const LABEL_REF_SNAPSHOT: &str = "containerd.io/gc.ref.snapshot.";

/// What one collection removed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct GcStats {
    pub leases: usize,
    pub content: usize,
    pub blobs: usize,
    pub snapshots: usize,
    pub ingests: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Node {
    Content(String, String),
    /// (snapshotter, namespace, key)
    Snapshot(Backend, String, String),
}

/// The references named by a record's labels.
fn label_refs(ns: &str, labels: &HashMap<String, String>, out: &mut Vec<Node>) {
    for (k, v) in labels {
        if k.starts_with(LABEL_REF_CONTENT) {
            out.push(Node::Content(ns.to_string(), v.clone()));
        } else if let Some(rest) = k.strip_prefix(LABEL_REF_SNAPSHOT) {
            let snapshotter = rest.split('/').next().unwrap_or("");
            if let Some(b) = Backend::from_name(snapshotter) {
                out.push(Node::Snapshot(b, ns.to_string(), v.clone()));
            }
        }
    }
}

/// Whether a lease's expiry label (RFC 3339) is in the past.
fn expired(labels: &HashMap<String, String>, now: chrono::DateTime<chrono::Utc>) -> bool {
    labels
        .get(LABEL_EXPIRE)
        .and_then(|v| chrono::DateTime::parse_from_rfc3339(v).ok())
        .is_some_and(|t| t <= now)
}

/// Runs one collection.
pub fn collect(
    meta: &MetadataStore,
    content: &ContentStore,
    snapshots: &Snapshotters,
) -> Result<GcStats> {
    let now = chrono::Utc::now();
    let mut stats = GcStats::default();
    let mut live_ingests: HashSet<(String, String)> = HashSet::new();
    let mut removed_ids: Vec<(Backend, u64)> = Vec::new();
    let mut kept_digests: HashSet<String> = HashSet::new();

    meta.update(|tx| {
        // Leases: drop the expired ones, note which are flat.
        let mut live: HashMap<(String, String), bool> = HashMap::new();
        for (ns, id, b) in tx.list_all(Kind::Lease)? {
            let lease = api::leases::Lease::decode(b.as_slice())?;
            if expired(&lease.labels, now) {
                tx.delete(Kind::Lease, &ns, &id)?;
                stats.leases += 1;
                tracing::debug!(namespace = %ns, lease = %id, "lease expired");
            } else {
                live.insert((ns, id), lease.labels.contains_key(LABEL_FLAT));
            }
        }

        let content_recs: HashMap<(String, String), HashMap<String, String>> = tx
            .list_all(Kind::Content)?
            .into_iter()
            .map(|(ns, d, b)| Ok(((ns, d), api::content::Info::decode(b.as_slice())?.labels)))
            .collect::<Result<_>>()?;
        let mut snap_recs: HashMap<(Backend, String, String), SnapshotRefs> = HashMap::new();
        for b in Backend::ALL {
            for (ns, k, v) in tx.list_all(b.record_kind())? {
                let r = decode_refs(&k, &v)?;
                snap_recs.insert((b, ns, k), r);
            }
        }

        let mut marked: HashSet<Node> = HashSet::new();
        let mut queue: Vec<Node> = Vec::new();
        // Marks a root; `follow` = also what it references.
        let mut root = |n: Node, follow: bool, marked: &mut HashSet<Node>| {
            if follow {
                queue.push(n);
            } else {
                marked.insert(n);
            }
        };

        for (ns, key, _) in tx.list_all(Kind::LeaseResource)? {
            let mut parts = key.splitn(3, '\x01');
            let (Some(lease), Some(rtype), Some(id)) = (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            let Some(flat) = live.get(&(ns.clone(), lease.to_string())).copied() else {
                // Left over from an expired lease.
                tx.delete(Kind::LeaseResource, &ns, &key)?;
                continue;
            };
            match rtype {
                "content" => root(
                    Node::Content(ns.clone(), id.to_string()),
                    !flat,
                    &mut marked,
                ),
                "ingests" => {
                    live_ingests.insert((ns.clone(), id.to_string()));
                }
                t => {
                    if let Some(b) = t.strip_prefix("snapshots/").and_then(Backend::from_name) {
                        root(
                            Node::Snapshot(b, ns.clone(), id.to_string()),
                            !flat,
                            &mut marked,
                        )
                    }
                }
            }
        }
        for (ns, _, b) in tx.list_all(Kind::Image)? {
            let image = api::images::Image::decode(b.as_slice())?;
            if let Some(t) = &image.target {
                root(
                    Node::Content(ns.clone(), t.digest.clone()),
                    true,
                    &mut marked,
                );
            }
            let mut refs = Vec::new();
            label_refs(&ns, &image.labels, &mut refs);
            for r in refs {
                root(r, true, &mut marked);
            }
        }
        for (ns, _, b) in tx.list_all(Kind::Container)? {
            let c = api::containers::Container::decode(b.as_slice())?;
            // An empty snapshotter is the default one, as for Tasks.Create.
            let b = if c.snapshotter.is_empty() {
                Some(snapshots.default_backend())
            } else {
                Backend::from_name(&c.snapshotter)
            };
            if let (Some(b), false) = (b, c.snapshot_key.is_empty()) {
                root(
                    Node::Snapshot(b, ns.clone(), c.snapshot_key.clone()),
                    true,
                    &mut marked,
                );
            }
            let mut refs = Vec::new();
            label_refs(&ns, &c.labels, &mut refs);
            for r in refs {
                root(r, true, &mut marked);
            }
        }
        for ((ns, d), labels) in &content_recs {
            if labels.contains_key(LABEL_ROOT) {
                root(Node::Content(ns.clone(), d.clone()), true, &mut marked);
            }
        }
        for ((b, ns, k), r) in &snap_recs {
            if r.labels.contains_key(LABEL_ROOT) {
                root(Node::Snapshot(*b, ns.clone(), k.clone()), true, &mut marked);
            }
        }

        // Mark everything reachable.
        while let Some(n) = queue.pop() {
            if !marked.insert(n.clone()) {
                continue;
            }
            let mut refs = Vec::new();
            match &n {
                Node::Content(ns, d) => {
                    if let Some(labels) = content_recs.get(&(ns.clone(), d.clone())) {
                        label_refs(ns, labels, &mut refs);
                    }
                }
                Node::Snapshot(b, ns, k) => {
                    if let Some(r) = snap_recs.get(&(*b, ns.clone(), k.clone())) {
                        if !r.parent.is_empty() {
                            refs.push(Node::Snapshot(*b, ns.clone(), r.parent.clone()));
                        }
                        label_refs(ns, &r.labels, &mut refs);
                    }
                }
            }
            queue.extend(refs.into_iter().filter(|r| !marked.contains(r)));
        }

        // Sweep records.
        for (ns, d) in content_recs.keys() {
            if marked.contains(&Node::Content(ns.clone(), d.clone())) {
                kept_digests.insert(d.clone());
            } else {
                tx.delete(Kind::Content, ns, d)?;
                stats.content += 1;
            }
        }
        let mut kept_ids = HashSet::new();
        for ((b, ns, k), r) in &snap_recs {
            if marked.contains(&Node::Snapshot(*b, ns.clone(), k.clone())) {
                kept_ids.insert((*b, r.id));
            } else {
                tx.delete(b.record_kind(), ns, k)?;
                stats.snapshots += 1;
            }
        }
        // Directories are only created inside a metadata transaction, so
        // within this one every directory without a record is garbage.
        for sn in snapshots.all() {
            let b = sn.backend();
            removed_ids.extend(
                sn.dir_ids()?
                    .into_iter()
                    .filter(|id| !kept_ids.contains(&(b, *id)))
                    .map(|id| (b, id)),
            );
        }
        Ok(())
    })?;

    for (b, id) in removed_ids {
        snapshots.backend(b).remove_dir(id);
    }
    for d in content.blob_digests()? {
        // Re-checked under the blob lock: a commit may have recorded it since.
        if !kept_digests.contains(&d) && content.remove_blob_if_unreferenced(&d)? {
            stats.blobs += 1;
        }
    }
    for ingest in content.idle_ingests() {
        if ingest.lease.is_some()
            && !live_ingests.contains(&(ingest.namespace.clone(), ingest.reference.clone()))
        {
            content.remove_idle_ingest(&ingest)?;
            stats.ingests += 1;
        }
    }
    if stats != GcStats::default() {
        tracing::info!(
            leases = stats.leases,
            content = stats.content,
            blobs = stats.blobs,
            snapshots = stats.snapshots,
            ingests = stats.ingests,
            "garbage collected"
        );
    }
    Ok(stats)
}

/// Runs collections one at a time, on demand or scheduled (debounced) by
/// deletions.
pub struct Gc {
    meta: Arc<MetadataStore>,
    content: Arc<ContentStore>,
    snapshots: Arc<Snapshotters>,
    run_lock: Mutex<()>,
    wake: tokio::sync::Notify,
}

impl Gc {
    pub fn new(
        meta: Arc<MetadataStore>,
        content: Arc<ContentStore>,
        snapshots: Arc<Snapshotters>,
    ) -> Gc {
        Gc {
            meta,
            content,
            snapshots,
            run_lock: Mutex::new(()),
            wake: tokio::sync::Notify::new(),
        }
    }

    /// Collects now (blocking), after any collection in progress.
    pub fn collect_now(&self) -> Result<GcStats> {
        let _g = self.run_lock.lock().unwrap_or_else(|p| p.into_inner());
        collect(&self.meta, &self.content, &self.snapshots)
    }

    /// Asks the background loop ([`Gc::run`]) for a collection soon.
    pub fn schedule(&self) {
        self.wake.notify_one();
    }

    /// The background loop: one collection shortly after each burst of
    /// [`Gc::schedule`] calls.
    pub async fn run(self: Arc<Self>) {
        loop {
            self.wake.notified().await;
            tokio::time::sleep(Duration::from_millis(50)).await;
            let gc = self.clone();
            match tokio::task::spawn_blocking(move || gc.collect_now()).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "garbage collection failed"),
                Err(e) => tracing::warn!(error = %e, "garbage collection worker failed"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshots::Snapshotter;
    use crate::util::digest_string;
    use sha2::{Digest, Sha256};

    struct Stores {
        _dir: tempfile::TempDir,
        meta: Arc<MetadataStore>,
        content: Arc<ContentStore>,
        /// The overlayfs snapshotter of `all`.
        snaps: Arc<Snapshotter>,
        all: Arc<Snapshotters>,
    }

    fn stores() -> Stores {
        let dir = tempfile::tempdir().unwrap();
        let meta = Arc::new(MetadataStore::open(dir.path()).unwrap());
        let content = ContentStore::open(dir.path(), meta.clone()).unwrap();
        let all = Arc::new(Snapshotters::open(dir.path(), meta.clone(), Backend::Overlay).unwrap());
        let snaps = all.backend(Backend::Overlay).clone();
        Stores {
            _dir: dir,
            meta,
            content,
            snaps,
            all,
        }
    }

    impl Stores {
        fn gc(&self) -> GcStats {
            collect(&self.meta, &self.content, &self.all).unwrap()
        }

        fn put(&self, data: &[u8], labels: &[(&str, &str)], lease: Option<&str>) -> String {
            let d = digest_string(Sha256::new_with_prefix(data));
            let mut w = self
                .content
                .writer("ns", &format!("ref-{d}"), 0, "", lease)
                .unwrap();
            w.write(data).unwrap();
            let labels = labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            w.commit(data.len() as i64, &d, labels).unwrap();
            d
        }

        fn lease(&self, id: &str, labels: &[(&str, &str)]) {
            let l = api::leases::Lease {
                id: id.into(),
                created_at: None,
                labels: labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            };
            self.meta
                .update(|tx| tx.put_msg(Kind::Lease, "ns", id, &l))
                .unwrap();
        }

        fn delete_lease(&self, id: &str) {
            self.meta
                .update(|tx| {
                    tx.delete(Kind::Lease, "ns", id)?;
                    Ok(())
                })
                .unwrap();
        }

        fn image(&self, name: &str, target: &str) {
            let i = api::images::Image {
                name: name.into(),
                target: Some(api::types::Descriptor {
                    media_type: "m".into(),
                    digest: target.into(),
                    size: 1,
                    annotations: Default::default(),
                }),
                ..Default::default()
            };
            self.meta
                .update(|tx| tx.put_msg(Kind::Image, "ns", name, &i))
                .unwrap();
        }

        fn has(&self, d: &str) -> bool {
            self.content.info("ns", d).is_ok() && self.content.blob_path(d).unwrap().exists()
        }
    }

    #[test]
    fn image_keeps_its_tree_and_unreferenced_content_goes() {
        let s = stores();
        s.lease("pull", &[]);
        s.snaps
            .prepare("ns", "extract", "", HashMap::new(), Some("pull"))
            .unwrap();
        s.snaps
            .commit("ns", "chain1", "extract", HashMap::new(), Some("pull"))
            .unwrap();
        s.snaps
            .prepare("ns", "ctr-rootfs", "chain1", HashMap::new(), None)
            .unwrap();
        let layer = s.put(b"layer", &[], Some("pull"));
        let config = s.put(
            b"config",
            &[("containerd.io/gc.ref.snapshot.overlayfs", "chain1")],
            Some("pull"),
        );
        let manifest = s.put(
            b"manifest",
            &[
                ("containerd.io/gc.ref.content.config", &config),
                ("containerd.io/gc.ref.content.l.0", &layer),
            ],
            Some("pull"),
        );
        let stray = s.put(b"stray", &[], None);
        s.image("img", &manifest);
        s.delete_lease("pull");
        let st = s.gc();
        assert_eq!(st.content, 1, "{st:?}");
        assert!(!s.has(&stray));
        assert!(s.has(&layer) && s.has(&config) && s.has(&manifest));
        // The unreferenced active snapshot goes, the image's chain stays.
        assert!(s.snaps.stat("ns", "ctr-rootfs").is_err());
        assert!(s.snaps.stat("ns", "chain1").is_ok());

        s.meta
            .update(|tx| {
                tx.delete(Kind::Image, "ns", "img")?;
                Ok(())
            })
            .unwrap();
        let st = s.gc();
        assert_eq!((st.content, st.snapshots), (3, 1), "{st:?}");
        assert!(s.content.list("ns").unwrap().is_empty());
        assert!(s.snaps.list("ns").unwrap().is_empty());
        assert!(s.content.blob_digests().unwrap().is_empty());
        assert!(s.snaps.dir_ids().unwrap().is_empty());
    }

    #[test]
    fn leases_hold_until_deleted_or_expired() {
        let s = stores();
        s.lease("keep", &[]);
        s.lease("old", &[(LABEL_EXPIRE, "2001-01-01T00:00:00Z")]);
        s.lease("future", &[(LABEL_EXPIRE, "2999-01-01T00:00:00Z")]);
        let a = s.put(b"a", &[], Some("keep"));
        let b = s.put(b"b", &[], Some("old"));
        let c = s.put(b"c", &[], Some("future"));
        let st = s.gc();
        assert_eq!((st.leases, st.content), (1, 1), "{st:?}");
        assert!(s.has(&a) && !s.has(&b) && s.has(&c));
        s.delete_lease("keep");
        s.gc();
        assert!(!s.has(&a) && s.has(&c));
    }

    #[test]
    fn flat_lease_does_not_follow_references_and_gc_root_is_kept() {
        let s = stores();
        s.lease("flat", &[(LABEL_FLAT, "")]);
        let child = s.put(b"child", &[], None);
        let parent = s.put(
            b"parent",
            &[("containerd.io/gc.ref.content.x", &child)],
            Some("flat"),
        );
        let rooted = s.put(b"rooted", &[(LABEL_ROOT, "2000-01-01T00:00:00Z")], None);
        s.gc();
        assert!(s.has(&parent) && !s.has(&child) && s.has(&rooted));
    }

    #[test]
    fn ingests_of_deleted_leases_go_others_stay() {
        let s = stores();
        s.lease("l", &[]);
        let mut w = s.content.writer("ns", "leased", 10, "", Some("l")).unwrap();
        w.write(b"12345").unwrap();
        drop(w);
        let mut w = s.content.writer("ns", "free", 10, "", None).unwrap();
        w.write(b"12345").unwrap();
        drop(w);
        assert_eq!(s.gc().ingests, 0);
        assert_eq!(s.content.list_statuses("ns").unwrap().len(), 2);
        s.delete_lease("l");
        assert_eq!(s.gc().ingests, 1);
        let left = s.content.list_statuses("ns").unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].r#ref, "free");
    }

    #[test]
    fn native_snapshots_are_collected_with_their_directories() {
        let s = stores();
        let native = s.all.backend(Backend::Native).clone();
        s.lease("pull", &[]);
        let m = native
            .prepare("ns", "extract", "", HashMap::new(), Some("pull"))
            .unwrap();
        std::fs::write(std::path::Path::new(&m[0].source).join("f"), b"x").unwrap();
        native
            .commit("ns", "chain1", "extract", HashMap::new(), Some("pull"))
            .unwrap();
        // The same name in the overlay snapshotter is another snapshot.
        s.snaps
            .prepare("ns", "chain1", "", HashMap::new(), None)
            .unwrap();
        let config = s.put(
            b"config",
            &[("containerd.io/gc.ref.snapshot.native", "chain1")],
            Some("pull"),
        );
        s.image("img", &config);
        // A container on the native snapshotter keeps its active snapshot.
        native
            .prepare("ns", "ctr", "chain1", HashMap::new(), None)
            .unwrap();
        let c = api::containers::Container {
            id: "c1".into(),
            snapshotter: "native".into(),
            snapshot_key: "ctr".into(),
            ..Default::default()
        };
        s.meta
            .update(|tx| tx.put_msg(Kind::Container, "ns", "c1", &c))
            .unwrap();
        s.delete_lease("pull");
        let st = s.gc();
        assert_eq!(st.snapshots, 1, "only overlayfs's chain1 goes: {st:?}");
        assert!(s.snaps.stat("ns", "chain1").is_err());
        assert!(native.stat("ns", "chain1").is_ok());
        assert!(native.stat("ns", "ctr").is_ok());
        assert_eq!(native.dir_ids().unwrap().len(), 2);

        s.meta
            .update(|tx| {
                tx.delete(Kind::Image, "ns", "img")?;
                tx.delete(Kind::Container, "ns", "c1")?;
                Ok(())
            })
            .unwrap();
        let st = s.gc();
        assert_eq!(st.snapshots, 2, "{st:?}");
        assert!(native.list("ns").unwrap().is_empty());
        assert!(native.dir_ids().unwrap().is_empty());
        // A directory without a record (a crash between rename and
        // removal, say) goes too.
        std::fs::create_dir_all(std::path::Path::new(&m[0].source).with_file_name("999")).unwrap();
        assert_eq!(native.dir_ids().unwrap(), vec![999]);
        s.gc();
        assert!(native.dir_ids().unwrap().is_empty());
    }
}
