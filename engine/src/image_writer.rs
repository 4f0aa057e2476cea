//! Writing images into the supervisor's (containerd's) content store, shared
//! by pull (`images`) and import / load (`archive`).
//!
//! Everything is written under one temporary lease ([`ImageWriter::begin`] /
//! [`ImageWriter::finish`]), with the labels a containerd pull sets: layer
//! blobs carry `containerd.io/uncompressed` (their diff ID), the config a GC
//! reference to the top layer's snapshot, the manifest GC references to the
//! config and layers, an index one to the manifest picked from it. Layers are
//! unpacked into snapshots named by chain ID. Image records are created or
//! retargeted by [`put_record`] (pull, tag) or [`ImageWriter::set_name`]
//! (import, load: keeps a replaced image as dangling).

use std::collections::HashMap;
use std::io::Read;

use orca_proto::images::{self as imgs, Image};
use orca_proto::leases;
use orca_proto::snapshots as snaps;
use orca_proto::types::Descriptor;
use tracing::warn;

use crate::containerd::{BlobWriter, Containerd};
use crate::error::{EngineError, Result};
use crate::images::{ImageService, DANGLING_PREFIX};

/// The GC label keeping a blob's child alive.
pub(crate) const GC_CONTENT: &str = "containerd.io/gc.ref.content";
/// The GC label keeping a snapshot alive (suffixed with the snapshotter).
pub(crate) const GC_SNAPSHOT: &str = "containerd.io/gc.ref.snapshot";
/// A layer blob's label naming its uncompressed digest (diff ID).
pub(crate) const LABEL_UNCOMPRESSED: &str = "containerd.io/uncompressed";

/// Content.Write chunk size.
const CHUNK: usize = 1 << 20;

/// Writes one or more images' blobs, snapshots and records under a lease
/// that expires after an hour if [`ImageWriter::finish`] is never reached.
pub(crate) struct ImageWriter<'a> {
    images: &'a ImageService,
    lease: String,
}

impl<'a> ImageWriter<'a> {
    /// Creates the lease `orcad-{purpose}-{random}`.
    pub(crate) async fn begin(images: &'a ImageService, purpose: &str) -> Result<ImageWriter<'a>> {
        let ctrd = images.ctrd();
        let lease = format!("orcad-{purpose}-{}", crate::util::random_hex(8));
        let expire = crate::util::rfc3339(chrono::Utc::now() + chrono::Duration::hours(1));
        ctrd.leases()
            .create(ctrd.req(leases::CreateRequest {
                id: lease.clone(),
                labels: HashMap::from([("containerd.io/gc.expire".to_string(), expire)]),
            }))
            .await
            .map_err(|s| EngineError::grpc("create lease", s))?;
        Ok(ImageWriter { images, lease })
    }

    /// Deletes the lease (what was written stays, held by its records and
    /// GC labels); a failure is only logged.
    pub(crate) async fn finish(self) {
        let ctrd = self.images.ctrd();
        if let Err(s) = ctrd
            .leases()
            .delete(ctrd.req(leases::DeleteRequest {
                id: self.lease.clone(),
                sync: false,
            }))
            .await
        {
            warn!(lease = %self.lease, "cannot delete lease: {s}");
        }
    }

    /// The image service written through.
    pub(crate) fn images(&self) -> &'a ImageService {
        self.images
    }

    /// The labels of a layer blob.
    pub(crate) fn layer_labels(diff_id: &str) -> HashMap<String, String> {
        HashMap::from([(LABEL_UNCOMPRESSED.to_string(), diff_id.to_string())])
    }

    /// If the blob is already stored, sets `labels` on it and returns true.
    pub(crate) async fn relabel_existing(
        &self,
        digest: &str,
        labels: HashMap<String, String>,
    ) -> Result<bool> {
        let ctrd = self.images.ctrd();
        if ctrd.content_info(digest).await?.is_none() {
            return Ok(false);
        }
        ctrd.content_set_labels(digest, labels).await?;
        Ok(true)
    }

    /// A Content.Write session for a blob under the lease.
    pub(crate) fn blob_writer(
        &self,
        digest: &str,
        size: i64,
        labels: HashMap<String, String>,
    ) -> BlobWriter {
        self.images
            .ctrd()
            .blob_writer(digest, size, labels, Some(&self.lease))
    }

    /// Writes a blob of `size` bytes read from local data (a file or
    /// memory; the store checks size and digest). One already stored only
    /// gets `labels`.
    pub(crate) async fn write_blob(
        &self,
        digest: &str,
        size: i64,
        labels: HashMap<String, String>,
        rd: &mut (dyn Read + Send),
    ) -> Result<()> {
        if self.relabel_existing(digest, labels.clone()).await? {
            return Ok(());
        }
        let mut w = self.blob_writer(digest, size, labels);
        loop {
            let mut buf = vec![0u8; CHUNK];
            // Local data: short blocking reads are fine here.
            let n = rd.read(&mut buf)?;
            if n == 0 {
                break;
            }
            buf.truncate(n);
            w.write(buf).await?;
        }
        w.commit().await
    }

    /// [`ImageWriter::write_blob`] from memory.
    pub(crate) async fn put_blob(
        &self,
        digest: &str,
        bytes: &[u8],
        labels: HashMap<String, String>,
    ) -> Result<()> {
        self.write_blob(digest, bytes.len() as i64, labels, &mut &bytes[..])
            .await
    }

    /// The image config, referencing the top layer's snapshot (`chains`:
    /// the layers' chain IDs).
    pub(crate) async fn write_config(
        &self,
        digest: &str,
        bytes: &[u8],
        chains: &[String],
    ) -> Result<()> {
        let mut labels = HashMap::new();
        if let Some(top) = chains.last() {
            labels.insert(
                format!("{GC_SNAPSHOT}.{}", self.images.snapshotter()),
                top.clone(),
            );
        }
        self.put_blob(digest, bytes, labels).await
    }

    /// The manifest, referencing its config and layers.
    pub(crate) async fn write_manifest<'d>(
        &self,
        digest: &str,
        bytes: &[u8],
        config_digest: &str,
        layer_digests: impl IntoIterator<Item = &'d str>,
    ) -> Result<()> {
        let mut labels =
            HashMap::from([(format!("{GC_CONTENT}.config"), config_digest.to_string())]);
        for (i, l) in layer_digests.into_iter().enumerate() {
            labels.insert(format!("{GC_CONTENT}.l.{i}"), l.to_string());
        }
        self.put_blob(digest, bytes, labels).await
    }

    /// The index a manifest was picked from (`position`: its place there).
    pub(crate) async fn write_index(
        &self,
        digest: &str,
        bytes: &[u8],
        position: usize,
        manifest_digest: &str,
    ) -> Result<()> {
        let labels = HashMap::from([(
            format!("{GC_CONTENT}.m.{position}"),
            manifest_digest.to_string(),
        )]);
        self.put_blob(digest, bytes, labels).await
    }

    /// Whether the snapshot of a chain ID exists (the layer is unpacked).
    pub(crate) async fn is_unpacked(&self, chain: &str) -> Result<bool> {
        let ctrd = self.images.ctrd();
        match ctrd
            .snapshots()
            .stat(ctrd.req(snaps::StatSnapshotRequest {
                snapshotter: self.images.snapshotter().to_string(),
                key: chain.to_string(),
            }))
            .await
        {
            Ok(_) => Ok(true),
            Err(s) if s.code() == tonic::Code::NotFound => Ok(false),
            Err(s) => Err(EngineError::grpc("stat snapshot", s)),
        }
    }

    /// Unpacks layer `i` (stored blob `layer`, uncompressed digest
    /// `diff_id`) onto its parent `chains[i - 1]` into the snapshot
    /// `chains[i]`, checking the applied digest against the diff ID. A failed
    /// unpack leaves no snapshot behind.
    pub(crate) async fn unpack_layer(
        &self,
        layer: &Descriptor,
        diff_id: &str,
        chains: &[String],
        i: usize,
    ) -> Result<()> {
        let ctrd = self.images.ctrd();
        let snapshotter = self.images.snapshotter().to_string();
        let lease = Some(self.lease.as_str());
        let chain = &chains[i];
        let parent = if i == 0 { "" } else { chains[i - 1].as_str() };
        let key = format!("extract-{} {chain}", crate::util::random_hex(6));
        let mounts = ctrd
            .snapshots()
            .prepare(ctrd.req_lease(
                snaps::PrepareSnapshotRequest {
                    snapshotter: snapshotter.clone(),
                    key: key.clone(),
                    parent: parent.to_string(),
                    labels: HashMap::new(),
                },
                lease,
            ))
            .await
            .map_err(|s| EngineError::grpc("prepare snapshot", s))?
            .into_inner()
            .mounts;
        let res = async {
            let applied = ctrd
                .diff()
                .apply(ctrd.req_lease(
                    orca_proto::diff::ApplyRequest {
                        diff: Some(layer.clone()),
                        mounts,
                        payloads: HashMap::new(),
                        sync_fs: false,
                    },
                    lease,
                ))
                .await
                .map_err(|s| EngineError::grpc(&format!("apply layer {}", layer.digest), s))?
                .into_inner()
                .applied;
            let got = applied.map(|d| d.digest).unwrap_or_default();
            if got != diff_id {
                return Err(EngineError::internal(format!(
                    "layer {}: unpacked digest {got} does not match diff id {diff_id}",
                    layer.digest
                )));
            }
            match ctrd
                .snapshots()
                .commit(ctrd.req_lease(
                    snaps::CommitSnapshotRequest {
                        snapshotter: snapshotter.clone(),
                        name: chain.to_string(),
                        key: key.clone(),
                        labels: HashMap::new(),
                    },
                    lease,
                ))
                .await
            {
                Ok(_) => Ok(()),
                Err(s) if s.code() == tonic::Code::AlreadyExists => Ok(()),
                Err(s) => Err(EngineError::grpc("commit snapshot", s)),
            }
        }
        .await;
        if res.is_err() {
            let _ = ctrd
                .snapshots()
                .remove(ctrd.req(snaps::RemoveSnapshotRequest {
                    snapshotter: snapshotter.clone(),
                    key: key.clone(),
                }))
                .await;
        }
        res
    }

    /// Points the image record `name` at `target`, creating it if needed.
    /// An image that loses its last name this way stays as a dangling record
    /// (`docker images` shows `<none>`), as with dockerd; a name given to a
    /// dangling image removes its dangling record.
    pub(crate) async fn set_name(&self, name: &str, target: &Descriptor) -> Result<()> {
        let ctrd = self.images.ctrd();
        let record = Image {
            name: name.to_string(),
            target: Some(target.clone()),
            ..Default::default()
        };
        match self.images.image_record(name).await? {
            None => {
                create_record(ctrd, record)
                    .await
                    .map_err(|s| EngineError::grpc("create image", s))?;
            }
            Some(old) => {
                let old_target = old.target.clone().unwrap_or_default();
                if old_target.digest == target.digest {
                    return Ok(());
                }
                // Keep the old image as dangling unless another name holds it.
                let others = ctrd
                    .images()
                    .list(ctrd.req(imgs::ListImagesRequest { filters: vec![] }))
                    .await
                    .map_err(|s| EngineError::grpc("list images", s))?
                    .into_inner()
                    .images;
                if !others.iter().any(|i| {
                    i.name != name
                        && i.target.as_ref().map(|t| &t.digest) == Some(&old_target.digest)
                }) {
                    let dangling = Image {
                        name: format!("{DANGLING_PREFIX}{}", old_target.digest),
                        target: Some(old_target),
                        ..Default::default()
                    };
                    let _ = create_record(ctrd, dangling).await;
                }
                retarget_record(ctrd, record)
                    .await
                    .map_err(|s| EngineError::grpc("update image", s))?;
            }
        }
        let dangling = format!("{DANGLING_PREFIX}{}", target.digest);
        if name != dangling {
            let _ = ctrd
                .images()
                .delete(ctrd.req(imgs::DeleteImageRequest {
                    name: dangling,
                    ..Default::default()
                }))
                .await;
        }
        Ok(())
    }
}

/// Creates the image record, or retargets the existing one of that name.
pub(crate) async fn put_record(ctrd: &Containerd, record: Image) -> Result<()> {
    match create_record(ctrd, record.clone()).await {
        Ok(()) => Ok(()),
        Err(s) if s.code() == tonic::Code::AlreadyExists => retarget_record(ctrd, record)
            .await
            .map_err(|s| EngineError::grpc("update image", s)),
        Err(s) => Err(EngineError::grpc("create image", s)),
    }
}

async fn create_record(ctrd: &Containerd, record: Image) -> std::result::Result<(), tonic::Status> {
    ctrd.images()
        .create(ctrd.req(imgs::CreateImageRequest {
            image: Some(record),
            ..Default::default()
        }))
        .await
        .map(|_| ())
}

/// Updates only the record's target.
async fn retarget_record(
    ctrd: &Containerd,
    record: Image,
) -> std::result::Result<(), tonic::Status> {
    ctrd.images()
        .update(ctrd.req(imgs::UpdateImageRequest {
            image: Some(record),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["target".into()],
            }),
            ..Default::default()
        }))
        .await
        .map(|_| ())
}
