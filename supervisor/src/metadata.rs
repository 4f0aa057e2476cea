//! The metadata store: one redb database (`<root>/meta.redb`) holding every
//! namespaced record — namespaces, images, containers, leases and their
//! resources, content labels, snapshot records — as protobuf-encoded values.
//!
//! Keys are `<kind>\x01<namespace>\x01<name>`, so everything of one kind in
//! one namespace is a contiguous range. All writes happen in a redb write
//! transaction through [`MetadataStore::update`], so check-then-insert
//! sequences (e.g. "AlreadyExists unless absent") are atomic.

use std::path::Path;

use redb::{Database, ReadableTable, TableDefinition};

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
            Kind::Global => "global",
        }
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
}

impl MetadataStore {
    /// Opens (creating if needed) `<dir>/meta.redb`.
    pub fn open(dir: &Path) -> Result<MetadataStore> {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::io(format!("create {}", dir.display()), e))?;
        let db = Database::create(dir.join("meta.redb"))?;
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

    /// Runs `f` in one write transaction; commits if it returns Ok.
    pub fn update<T>(&self, f: impl FnOnce(&mut WriteTx<'_>) -> Result<T>) -> Result<T> {
        let txn = self.db.begin_write()?;
        let out = {
            let table = txn.open_table(RECORDS)?;
            let mut tx = WriteTx { table };
            f(&mut tx)?
        };
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
        Ok(self.table.remove(key(kind, ns, name).as_str())?.is_some())
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
}
