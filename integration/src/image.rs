//! A busybox OCI image, written as an OCI image layout without any daemon.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tempfile::TempDir;

use crate::rootfs::make_busybox_rootfs;

pub const MEDIA_TYPE_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MEDIA_TYPE_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MEDIA_TYPE_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const MEDIA_TYPE_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";

/// The fixed mtime of every layer entry (2000-01-01T00:00:00Z).
pub const LAYER_MTIME: u64 = 946_684_800;

/// "sha256:<hex>" of some bytes.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// What [`write_busybox_oci_layout`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageInfo {
    /// The tag (`org.opencontainers.image.ref.name`) in index.json.
    pub tag: String,
    /// "sha256:…" of the image manifest.
    pub manifest_digest: String,
    /// Size in bytes of the image manifest.
    pub manifest_size: u64,
    /// "sha256:…" of the image config.
    pub config_digest: String,
    /// "sha256:…" of each (gzip-compressed) layer blob, bottom first.
    pub layer_digests: Vec<String>,
    /// "sha256:…" of each uncompressed layer tar (the config's rootfs.diff_ids).
    pub diff_ids: Vec<String>,
}

/// A deterministic tar of a directory tree: entries sorted by path, relative
/// paths ("bin/", "bin/busybox", …), uid/gid 0, mtime [`LAYER_MTIME`],
/// modes kept (including the sticky bit), symlinks kept as symlinks.
pub fn tar_dir(root: &Path) -> io::Result<Vec<u8>> {
    use std::os::unix::fs::MetadataExt;
    let mut paths = Vec::new();
    collect(root, root, &mut paths)?;
    paths.sort();
    let mut b = tar::Builder::new(Vec::new());
    b.follow_symlinks(false);
    for rel in paths {
        let full = root.join(&rel);
        let md = fs::symlink_metadata(&full)?;
        let mut h = tar::Header::new_gnu();
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(LAYER_MTIME);
        h.set_mode(md.mode() & 0o7777);
        let ft = md.file_type();
        if ft.is_dir() {
            h.set_entry_type(tar::EntryType::Directory);
            h.set_size(0);
            b.append_data(&mut h, &rel, io::empty())?;
        } else if ft.is_symlink() {
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_size(0);
            let target = fs::read_link(&full)?;
            b.append_link(&mut h, &rel, &target)?;
        } else if ft.is_file() {
            h.set_entry_type(tar::EntryType::Regular);
            h.set_size(md.len());
            let f = fs::File::open(&full)?;
            b.append_data(&mut h, &rel, f)?;
        } else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "cannot put {} in a layer: unsupported file type",
                    full.display()
                ),
            ));
        }
    }
    b.into_inner()
}

fn collect(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) -> io::Result<()> {
    for e in fs::read_dir(dir)? {
        let e = e?;
        let p = e.path();
        let rel = p
            .strip_prefix(root)
            .expect("read_dir yields children of dir")
            .to_path_buf();
        let is_dir = e.file_type()?.is_dir();
        out.push(rel);
        if is_dir {
            collect(root, &p, out)?;
        }
    }
    Ok(())
}

/// Gzip-compresses bytes deterministically (no name, mtime 0 in the header).
pub fn gzip(bytes: &[u8]) -> io::Result<Vec<u8>> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(bytes)?;
    enc.finish()
}

/// The OCI architecture name of the machine (amd64, arm64, …).
pub fn oci_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

/// The blobs of the busybox image.
struct Blobs {
    layer_gz: Vec<u8>,
    layer_digest: String,
    diff_id: String,
    config: Vec<u8>,
    config_digest: String,
    manifest: Vec<u8>,
    manifest_digest: String,
}

/// The uncompressed tar of the busybox rootfs (as made by
/// [`make_busybox_rootfs`]), e.g. for `docker import` or `ctr images import`.
pub fn busybox_rootfs_tar() -> io::Result<Vec<u8>> {
    let tmp = tempfile::Builder::new()
        .prefix("orca-busybox-tar-")
        .tempdir()?;
    make_busybox_rootfs(tmp.path())?;
    tar_dir(tmp.path())
}

/// The busybox image's blobs, made once per process.
fn busybox_blobs() -> io::Result<&'static Blobs> {
    static BLOBS: OnceLock<Result<Blobs, String>> = OnceLock::new();
    let r = BLOBS.get_or_init(|| {
        let make = || -> io::Result<Blobs> {
            let tar = busybox_rootfs_tar()?;
            let diff_id = sha256_digest(&tar);
            let layer_gz = gzip(&tar)?;
            let layer_digest = sha256_digest(&layer_gz);
            let config = json!({
                "created": "2000-01-01T00:00:00Z",
                "architecture": oci_arch(),
                "os": "linux",
                "config": {
                    "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
                    "Cmd": ["sh"]
                },
                "rootfs": { "type": "layers", "diff_ids": [diff_id] },
                "history": [
                    { "created": "2000-01-01T00:00:00Z", "created_by": "orca-integration: busybox-static rootfs" }
                ]
            });
            let config = serde_json::to_vec(&config).expect("JSON serializes");
            let config_digest = sha256_digest(&config);
            let manifest = json!({
                "schemaVersion": 2,
                "mediaType": MEDIA_TYPE_MANIFEST,
                "config": {
                    "mediaType": MEDIA_TYPE_CONFIG,
                    "digest": config_digest,
                    "size": config.len()
                },
                "layers": [
                    {
                        "mediaType": MEDIA_TYPE_LAYER_GZIP,
                        "digest": layer_digest,
                        "size": layer_gz.len()
                    }
                ]
            });
            let manifest = serde_json::to_vec(&manifest).expect("JSON serializes");
            let manifest_digest = sha256_digest(&manifest);
            Ok(Blobs {
                layer_gz,
                layer_digest,
                diff_id,
                config,
                config_digest,
                manifest,
                manifest_digest,
            })
        };
        make().map_err(|e| format!("cannot make the busybox image: {e}"))
    });
    r.as_ref().map_err(|e| io::Error::other(e.clone()))
}

fn write_blob(dir: &Path, digest: &str, bytes: &[u8]) -> io::Result<()> {
    let hex = digest.strip_prefix("sha256:").expect("sha256 digests");
    let p = dir.join("blobs/sha256").join(hex);
    if !p.exists() {
        fs::write(p, bytes)?;
    }
    Ok(())
}

/// Writes (or adds to) an OCI image layout at `dir`: `oci-layout`,
/// `blobs/sha256/…` and `index.json`, whose manifest entry for the busybox
/// image carries the `org.opencontainers.image.ref.name` annotation `tag`
/// (an existing entry with the same tag is replaced). The image has one
/// gzip layer (a deterministic tar of the busybox rootfs), a config for
/// linux/amd64 with `Cmd ["sh"]` and `PATH`, and its manifest.
pub fn write_busybox_oci_layout(dir: &Path, tag: &str) -> io::Result<ImageInfo> {
    let blobs = busybox_blobs()?;
    fs::create_dir_all(dir.join("blobs/sha256"))?;
    fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    write_blob(dir, &blobs.layer_digest, &blobs.layer_gz)?;
    write_blob(dir, &blobs.config_digest, &blobs.config)?;
    write_blob(dir, &blobs.manifest_digest, &blobs.manifest)?;

    let index_path = dir.join("index.json");
    let mut index: Value = match fs::read(&index_path) {
        Ok(b) => serde_json::from_slice(&b).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: {e}", index_path.display()),
            )
        })?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            json!({ "schemaVersion": 2, "mediaType": MEDIA_TYPE_INDEX, "manifests": [] })
        }
        Err(e) => return Err(e),
    };
    let manifests = index["manifests"].as_array_mut().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: no manifests array", index_path.display()),
        )
    })?;
    manifests.retain(|m| m["annotations"][ANNOTATION_REF_NAME].as_str() != Some(tag));
    manifests.push(json!({
        "mediaType": MEDIA_TYPE_MANIFEST,
        "digest": blobs.manifest_digest,
        "size": blobs.manifest.len(),
        "annotations": { ANNOTATION_REF_NAME: tag }
    }));
    fs::write(
        &index_path,
        serde_json::to_vec(&index).expect("JSON serializes"),
    )?;
    Ok(ImageInfo {
        tag: tag.to_string(),
        manifest_digest: blobs.manifest_digest.clone(),
        manifest_size: blobs.manifest.len() as u64,
        config_digest: blobs.config_digest.clone(),
        layer_digests: vec![blobs.layer_digest.clone()],
        diff_ids: vec![blobs.diff_id.clone()],
    })
}

/// A busybox OCI image layout in its own temp dir (removed on drop).
pub struct OciImage {
    dir: TempDir,
    info: ImageInfo,
}

impl OciImage {
    /// Writes the busybox image with `tag` into a new temp dir.
    #[track_caller]
    pub fn busybox(tag: &str) -> OciImage {
        let dir = tempfile::Builder::new()
            .prefix("orca-oci-")
            .tempdir()
            .unwrap_or_else(|e| panic!("cannot create a temp dir for an OCI layout: {e}"));
        let info = write_busybox_oci_layout(dir.path(), tag).unwrap_or_else(|e| {
            panic!(
                "cannot write the busybox OCI layout in {}: {e}",
                dir.path().display()
            )
        });
        OciImage { dir, info }
    }

    /// The layout directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The tag in index.json.
    pub fn tag(&self) -> &str {
        &self.info.tag
    }

    /// Digests of what was written.
    pub fn info(&self) -> &ImageInfo {
        &self.info
    }

    /// `oci:<dir>:<tag>`, the reference skopeo understands.
    pub fn skopeo_ref(&self) -> String {
        format!("oci:{}:{}", self.dir.path().display(), self.info.tag)
    }
}
