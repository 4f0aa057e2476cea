//! The metadata store: one redb database (`<root>/meta.redb`) holding every
//! namespaced record — namespaces, images, containers, leases and their
//! resources, content labels, snapshot records — as protobuf-encoded values.
//!
//! Keys are `<kind>\x01<namespace>\x01<name>`, so everything of one kind in
//! one namespace is a contiguous range. All writes happen in a redb write
//! transaction through [`MetadataStore::update`], so check-then-insert
//! sequences (e.g. "AlreadyExists unless absent") are atomic.
//!
//! Durability depends on what a transaction wrote. One that touched only
//! container or lease records ([`Kind::relaxed`]) is committed *written but
//! not fsynced*: its pages and header reach the page cache with `write`
//! before `commit` returns, so it survives a crash or `kill -9` of the
//! supervisor, but a power loss may roll it back to an earlier commit
//! (redb's checksummed one-phase commit falls back to the last intact
//! header). Every other transaction — content, images, snapshots,
//! namespaces, or any mix — is fsynced before `commit` returns, and so is
//! everything written before it.

use std::path::Path;

use redb::{Database, Durability, ReadableTable, StorageBackend, TableDefinition};

use crate::error::{Error, Result};

const RECORDS: TableDefinition<&str, &[u8]> = TableDefinition::new("records");

/// What a record is; the first component of its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Namespace,
    Image,
    Container,
    Lease,
    LeaseResource,
    Content,
    Snapshot,
    /// Snapshot records of the `native` snapshotter (`Snapshot` is
    /// `overlayfs`'s): snapshot names are per snapshotter.
    NativeSnapshot,
    /// Global values (not namespaced; namespace "").
    Global,
}

impl Kind {
    fn tag(self) -> &'static str {
        match self {
            Kind::Namespace => "ns",
            Kind::Image => "image",
            Kind::Container => "container",
            Kind::Lease => "lease",
            Kind::LeaseResource => "lease-res",
            Kind::Content => "content",
            Kind::Snapshot => "snapshot",
            Kind::NativeSnapshot => "snapshot-native",
            Kind::Global => "global",
        }
    }
}

impl Kind {
    /// Records whose loss on a power failure (not on a process crash) is
    /// acceptable: container records (the engine above keeps its own and
    /// every task is gone after a power loss anyway) and leases (they only
    /// protect resources of an operation in flight, which a power loss ends).
    pub fn relaxed(self) -> bool {
        matches!(self, Kind::Container | Kind::Lease | Kind::LeaseResource)
    }
}

fn key(kind: Kind, ns: &str, name: &str) -> String {
    format!("{}\x01{ns}\x01{name}", kind.tag())
}

fn range(kind: Kind, ns: &str) -> (String, String) {
    (
        format!("{}\x01{ns}\x01", kind.tag()),
        format!("{}\x01{ns}\x02", kind.tag()),
    )
}

/// The redb-backed metadata store.
pub struct MetadataStore {
    db: Database,
}

/// Access to the records inside one write transaction.
pub struct WriteTx<'a> {
    table: redb::Table<'a, &'static str, &'static [u8]>,
    /// Whether a record of a kind that is not [`Kind::relaxed`] was written.
    strict: bool,
}

/// redb's file backend, except that an *eventual* sync (what
/// [`Durability::Eventual`] commits ask for) only makes sure the data was
/// handed to the kernel: on Linux redb would `fdatasync` for it as for an
/// immediate one. Immediate syncs still `fdatasync`.
#[derive(Debug)]
struct Backend {
    file: redb::backends::FileBackend,
}

impl StorageBackend for Backend {
    fn len(&self) -> std::result::Result<u64, std::io::Error> {
        self.file.len()
    }

    fn read(&self, offset: u64, len: usize) -> std::result::Result<Vec<u8>, std::io::Error> {
        self.file.read(offset, len)
    }

    fn set_len(&self, len: u64) -> std::result::Result<(), std::io::Error> {
        self.file.set_len(len)
    }

    fn sync_data(&self, eventual: bool) -> std::result::Result<(), std::io::Error> {
        if eventual {
            // Every write went through pwrite already: it is in the page
            // cache, which outlives this process.
            Ok(())
        } else {
            self.file.sync_data(false)
        }
    }

    fn write(&self, offset: u64, data: &[u8]) -> std::result::Result<(), std::io::Error> {
        self.file.write(offset, data)
    }
}

impl MetadataStore {
    /// Opens (creating if needed) `<dir>/meta.redb`.
    pub fn open(dir: &Path) -> Result<MetadataStore> {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::io(format!("create {}", dir.display()), e))?;
        let path = dir.join("meta.redb");
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| Error::io(format!("open {}", path.display()), e))?;
        let file = redb::backends::FileBackend::new(file)?;
        let db = redb::Builder::new().create_with_backend(Backend { file })?;
        let txn = db.begin_write()?;
        txn.open_table(RECORDS)?;
        txn.commit()?;
        Ok(MetadataStore { db })
    }

    /// One record, or `None`.
    pub fn get(&self, kind: Kind, ns: &str, name: &str) -> Result<Option<Vec<u8>>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(RECORDS)?;
        let v = table.get(key(kind, ns, name).as_str())?;
        Ok(v.map(|g| g.value().to_vec()))
    }

    /// A protobuf record decoded, or `None`.
    pub fn get_msg<M: prost::Message + Default>(
        &self,
        kind: Kind,
        ns: &str,
        name: &str,
    ) -> Result<Option<M>> {
        match self.get(kind, ns, name)? {
            Some(b) => Ok(Some(M::decode(b.as_slice())?)),
            None => Ok(None),
        }
    }

    /// Every `(name, value)` of one kind in one namespace, in name order.
    pub fn list(&self, kind: Kind, ns: &str) -> Result<Vec<(String, Vec<u8>)>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(RECORDS)?;
        let (lo, hi) = range(kind, ns);
        let prefix_len = lo.len();
        let mut out = Vec::new();
        for item in table.range(lo.as_str()..hi.as_str())? {
            let (k, v) = item?;
            out.push((k.value()[prefix_len..].to_string(), v.value().to_vec()));
        }
        Ok(out)
    }

    /// Every record of one kind in one namespace, decoded.
    pub fn list_msgs<M: prost::Message + Default>(
        &self,
        kind: Kind,
        ns: &str,
    ) -> Result<Vec<(String, M)>> {
        self.list(kind, ns)?
            .into_iter()
            .map(|(n, b)| Ok((n, M::decode(b.as_slice())?)))
            .collect()
    }

    /// Every record of one kind in every namespace: (namespace, name, value).
    pub fn list_all_msgs<M: prost::Message + Default>(
        &self,
        kind: Kind,
    ) -> Result<Vec<(String, String, M)>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(RECORDS)?;
        let lo = format!("{}\x01", kind.tag());
        let hi = format!("{}\x02", kind.tag());
        let mut out = Vec::new();
        for item in table.range(lo.as_str()..hi.as_str())? {
            let (k, v) = item?;
            if let Some((ns, n)) = k.value()[lo.len()..].split_once('\x01') {
                out.push((ns.to_string(), n.to_string(), M::decode(v.value())?));
            }
        }
        Ok(out)
    }

    /// Namespaces holding at least one record of `kind`.
    pub fn namespaces_with(&self, kind: Kind, name: &str) -> Result<Vec<String>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(RECORDS)?;
        let lo = format!("{}\x01", kind.tag());
        let hi = format!("{}\x02", kind.tag());
        let mut out = Vec::new();
        for item in table.range(lo.as_str()..hi.as_str())? {
            let (k, _) = item?;
            let rest = &k.value()[lo.len()..];
            if let Some((ns, n)) = rest.split_once('\x01') {
                if n == name {
                    out.push(ns.to_string());
                }
            }
        }
        Ok(out)
    }

    /// Runs `f` in one write transaction; commits if it returns Ok (see
    /// the module docs for how durable the commit is).
    pub fn update<T>(&self, f: impl FnOnce(&mut WriteTx<'_>) -> Result<T>) -> Result<T> {
        let mut txn = self.db.begin_write()?;
        let (out, strict) = {
            let table = txn.open_table(RECORDS)?;
            let mut tx = WriteTx {
                table,
                strict: false,
            };
            let out = f(&mut tx)?;
            (out, tx.strict)
        };
        txn.set_durability(if strict {
            Durability::Immediate
        } else {
            Durability::Eventual
        });
        txn.commit()?;
        Ok(out)
    }
}

impl WriteTx<'_> {
    pub fn get(&self, kind: Kind, ns: &str, name: &str) -> Result<Option<Vec<u8>>> {
        Ok(self
            .table
            .get(key(kind, ns, name).as_str())?
            .map(|g| g.value().to_vec()))
    }

    pub fn get_msg<M: prost::Message + Default>(
        &self,
        kind: Kind,
        ns: &str,
        name: &str,
    ) -> Result<Option<M>> {
        match self.get(kind, ns, name)? {
            Some(b) => Ok(Some(M::decode(b.as_slice())?)),
            None => Ok(None),
        }
    }

    pub fn exists(&self, kind: Kind, ns: &str, name: &str) -> Result<bool> {
        Ok(self.get(kind, ns, name)?.is_some())
    }

    pub fn put(&mut self, kind: Kind, ns: &str, name: &str, value: &[u8]) -> Result<()> {
        self.strict |= !kind.relaxed();
        self.table.insert(key(kind, ns, name).as_str(), value)?;
        Ok(())
    }

    pub fn put_msg<M: prost::Message>(
        &mut self,
        kind: Kind,
        ns: &str,
        name: &str,
        msg: &M,
    ) -> Result<()> {
        self.put(kind, ns, name, &msg.encode_to_vec())
    }

    /// Removes a record; returns whether it existed.
    pub fn delete(&mut self, kind: Kind, ns: &str, name: &str) -> Result<bool> {
        let existed = self.table.remove(key(kind, ns, name).as_str())?.is_some();
        self.strict |= existed && !kind.relaxed();
        Ok(existed)
    }

    pub fn list(&self, kind: Kind, ns: &str) -> Result<Vec<(String, Vec<u8>)>> {
        let (lo, hi) = range(kind, ns);
        let prefix_len = lo.len();
        let mut out = Vec::new();
        for item in self.table.range(lo.as_str()..hi.as_str())? {
            let (k, v) = item?;
            out.push((k.value()[prefix_len..].to_string(), v.value().to_vec()));
        }
        Ok(out)
    }

    /// Every record of one kind in every namespace: (namespace, name, value).
    pub fn list_all(&self, kind: Kind) -> Result<Vec<(String, String, Vec<u8>)>> {
        let lo = format!("{}\x01", kind.tag());
        let hi = format!("{}\x02", kind.tag());
        let mut out = Vec::new();
        for item in self.table.range(lo.as_str()..hi.as_str())? {
            let (k, v) = item?;
            if let Some((ns, n)) = k.value()[lo.len()..].split_once('\x01') {
                out.push((ns.to_string(), n.to_string(), v.value().to_vec()));
            }
        }
        Ok(out)
    }

    /// Creates the namespace record if missing (containerd creates a
    /// namespace implicitly on its first namespaced write).
    pub fn ensure_namespace(&mut self, ns: &str) -> Result<()> {
        if !self.exists(Kind::Namespace, ns, ns)? {
            let rec = orca_proto::namespaces::Namespace {
                name: ns.to_string(),
                labels: Default::default(),
            };
            self.put_msg(Kind::Namespace, ns, ns, &rec)?;
        }
        Ok(())
    }

    /// Records `resource` (type, id) as held by lease `lease` if a lease is given.
    pub fn add_to_lease(
        &mut self,
        ns: &str,
        lease: Option<&str>,
        rtype: &str,
        id: &str,
    ) -> Result<()> {
        if let Some(lease) = lease {
            if !self.exists(Kind::Lease, ns, lease)? {
                return Err(Error::NotFound(format!("lease {lease}")));
            }
            self.put(
                Kind::LeaseResource,
                ns,
                &format!("{lease}\x01{rtype}\x01{id}"),
                b"",
            )?;
        }
        Ok(())
    }

    /// Next value of a global counter (snapshot ids).
    pub fn next_seq(&mut self, name: &str) -> Result<u64> {
        let cur = match self.get(Kind::Global, "", name)? {
            Some(b) if b.len() == 8 => u64::from_be_bytes(b.try_into().unwrap_or([0; 8])),
            _ => 0,
        };
        let next = cur + 1;
        self.put(Kind::Global, "", name, &next.to_be_bytes())?;
        Ok(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_namespaced_and_transactional() {
        let dir = tempfile::tempdir().unwrap();
        let m = MetadataStore::open(dir.path()).unwrap();
        m.update(|tx| {
            tx.put(Kind::Image, "a", "x/y:1", b"1")?;
            tx.put(Kind::Image, "b", "x/y:1", b"2")?;
            tx.put(Kind::Container, "a", "c", b"3")
        })
        .unwrap();
        let r: Result<()> = m.update(|tx| {
            tx.put(Kind::Image, "a", "z", b"9")?;
            Err(Error::Internal("abort".into()))
        });
        assert!(r.is_err());
        let a = m.list(Kind::Image, "a").unwrap();
        assert_eq!(a, vec![("x/y:1".to_string(), b"1".to_vec())]);
        assert_eq!(m.get(Kind::Image, "b", "x/y:1").unwrap().unwrap(), b"2");
        assert_eq!(
            m.namespaces_with(Kind::Image, "x/y:1").unwrap(),
            vec!["a", "b"]
        );
    }

    /// A relaxed (not fsynced) commit survives the process dying without
    /// closing the database, as with `kill -9`: the writer is a forked child
    /// that `_exit`s right after committing.
    #[test]
    fn relaxed_commits_survive_a_process_crash() {
        let dir = tempfile::tempdir().unwrap();
        // SAFETY: the child only uses the store and then _exits; it never
        // returns into the test harness.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            let ok = MetadataStore::open(dir.path())
                .and_then(|m| {
                    m.update(|tx| tx.put(Kind::Container, "ns", "c1", b"rec"))?;
                    m.update(|tx| tx.put(Kind::Lease, "ns", "l1", b"lease"))?;
                    std::mem::forget(m);
                    Ok(())
                })
                .is_ok();
            // SAFETY: _exit ends the child without running destructors.
            unsafe { libc::_exit(if ok { 0 } else { 1 }) };
        }
        let mut status = 0;
        // SAFETY: waiting for our own child.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        assert_eq!(r, pid);
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
        let m = MetadataStore::open(dir.path()).unwrap();
        assert_eq!(m.get(Kind::Container, "ns", "c1").unwrap().unwrap(), b"rec");
        assert_eq!(m.get(Kind::Lease, "ns", "l1").unwrap().unwrap(), b"lease");
    }

    #[test]
    fn only_container_and_lease_records_are_relaxed() {
        assert!(
            Kind::Container.relaxed() && Kind::Lease.relaxed() && Kind::LeaseResource.relaxed()
        );
        for k in [
            Kind::Namespace,
            Kind::Image,
            Kind::Content,
            Kind::Snapshot,
            Kind::Global,
        ] {
            assert!(!k.relaxed(), "{k:?}");
        }
    }
}
