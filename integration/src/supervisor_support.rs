//! A private orca-supervisor on a unix socket in a temp dir, driven by
//! Debian's `ctr` (containerd 1.6) like a containerd.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use tempfile::TempDir;

use crate::mounts::unmount_all_under;
use crate::util::{bin_path, require_tool, std_path_env, terminate, wait_until};

/// A running `orca-supervisor` with its own root, state and socket, logging
/// at debug level to a file. Dropping it kills and deletes every task and
/// container, stops it and the shims it started, unmounts what is left
/// under its temp dir and removes it.
pub struct Supervisor {
    child: Option<Child>,
    dir: TempDir,
    ctr: PathBuf,
}

impl Supervisor {
    /// Starts `orca-supervisor` and waits until `ctr version` answers.
    #[track_caller]
    pub fn start() -> Supervisor {
        let ctr = require_tool("ctr");
        let dir = tempfile::Builder::new()
            .prefix("orca-sup-")
            .tempdir()
            .unwrap_or_else(|e| panic!("cannot create a temp dir for orca-supervisor: {e}"));
        let mut s = Supervisor {
            child: None,
            dir,
            ctr,
        };
        s.spawn_and_wait();
        s
    }

    /// Starts the supervisor process on this fixture's root, state and
    /// socket (appending to its log) and waits until `ctr version` answers.
    #[track_caller]
    fn spawn_and_wait(&mut self) {
        let bin = bin_path("orca-supervisor");
        let t = self.dir.path();
        let log_path = t.join("supervisor.log");
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .unwrap_or_else(|e| panic!("cannot open {}: {e}", log_path.display()));
        let log2 = log
            .try_clone()
            .unwrap_or_else(|e| panic!("cannot dup a file descriptor: {e}"));
        let child = Command::new(&bin)
            .arg("--root")
            .arg(t.join("root"))
            .arg("--state")
            .arg(t.join("state"))
            .arg("--address")
            .arg(t.join("s.sock"))
            .args(["--log-level", "debug"])
            .env("PATH", std_path_env())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        self.child = Some(child);
        let sock = self.socket();
        let mut exited = false;
        let ready = wait_until(Duration::from_secs(30), || {
            if let Some(Ok(Some(_))) = self.child.as_mut().map(|c| c.try_wait()) {
                exited = true;
                return true;
            }
            sock.exists() && self.ctr_ns("default", &["version"]).status.success()
        });
        if !ready || exited {
            panic!(
                "orca-supervisor {}; its log:\n{}",
                if exited {
                    "exited during startup"
                } else {
                    "did not answer `ctr version` within 30 s"
                },
                self.log()
            );
        }
    }

    /// The supervisor's pid, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// SIGKILLs the supervisor (not its shims) and reaps it, as a crash
    /// would; [`Supervisor::restart`] starts it again on the same state.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the supervisor again on the same root, state and socket
    /// (after [`Supervisor::kill9`]; kills a running one first).
    #[track_caller]
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn_and_wait();
    }

    /// The gRPC socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("s.sock")
    }

    /// The temp dir holding root/, state/, the sockets and the log.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The supervisor's log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("supervisor.log")).unwrap_or_default()
    }

    /// A `ctr -a SOCK -n NAMESPACE` command, ready for more arguments.
    pub fn ctr_cmd_ns(&self, namespace: &str) -> Command {
        let mut c = Command::new(&self.ctr);
        c.arg("-a")
            .arg(self.socket())
            .arg("-n")
            .arg(namespace)
            .env("PATH", std_path_env())
            .stdin(Stdio::null());
        c
    }

    /// Runs `ctr -a SOCK -n NAMESPACE ARGS…`.
    #[track_caller]
    pub fn ctr_ns(&self, namespace: &str, args: &[&str]) -> Output {
        let mut c = self.ctr_cmd_ns(namespace);
        c.args(args);
        match crate::util::output_via_files(&mut c) {
            Ok(o) => o,
            Err(e) => panic!("cannot run {c:?}: {e}"),
        }
    }

    /// `ctr -n NAMESPACE ARGS…` that must succeed; returns its stdout. A
    /// failure panics with ctr's output and the end of the supervisor's log.
    #[track_caller]
    pub fn ctr_ok_ns(&self, namespace: &str, args: &[&str]) -> String {
        let out = self.ctr_ns(namespace, args);
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        if !out.status.success() {
            let log = self.log();
            let lines: Vec<&str> = log.lines().collect();
            panic!(
                "ctr {args:?} failed: {}\n--- stdout ---\n{}\n--- stderr ---\n{}\n--- supervisor log (tail) ---\n{}",
                out.status,
                text(&out.stdout),
                text(&out.stderr),
                lines[lines.len().saturating_sub(80)..].join("\n")
            );
        }
        text(&out.stdout)
    }

    /// `ctr tasks ls` in `namespace` as (id, pid, status) rows.
    #[track_caller]
    pub fn tasks_ns(&self, namespace: &str) -> Vec<(String, u32, String)> {
        self.ctr_ok_ns(namespace, &["tasks", "ls"])
            .lines()
            .skip(1)
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                Some((
                    f.first()?.to_string(),
                    f.get(1)?.parse().ok()?,
                    f.get(2)?.to_string(),
                ))
            })
            .collect()
    }

    /// One task's (pid, status) in `namespace`, if listed.
    #[track_caller]
    pub fn task_ns(&self, namespace: &str, id: &str) -> Option<(u32, String)> {
        self.tasks_ns(namespace)
            .into_iter()
            .find(|t| t.0 == id)
            .map(|(_, pid, st)| (pid, st))
    }

    fn quiet_list(&self, ns: &str, args: &[&str]) -> Vec<String> {
        let out = self.ctr_ns(ns, args);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| l.trim().to_string())
            .filter(|l| !l.is_empty())
            .collect()
    }

    /// Kills and deletes every task and container in every namespace.
    pub fn cleanup_all(&self) {
        for ns in self.quiet_list("default", &["namespaces", "ls", "-q"]) {
            for task in self.quiet_list(&ns, &["tasks", "ls", "-q"]) {
                let _ = self.ctr_ns(&ns, &["tasks", "kill", "-a", "-s", "SIGKILL", &task]);
                let _ = wait_until(Duration::from_secs(5), || {
                    self.ctr_ns(&ns, &["tasks", "delete", &task])
                        .status
                        .success()
                });
            }
            for c in self.quiet_list(&ns, &["containers", "ls", "-q"]) {
                let _ = self.ctr_ns(&ns, &["containers", "delete", &c]);
            }
        }
    }

    /// Pids of shims started by this supervisor (their command line names
    /// its socket).
    fn shim_pids(&self) -> Vec<i32> {
        let sock = self.socket().to_string_lossy().into_owned();
        crate::util::pids_where_args(|args| args.contains(&sock))
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        let alive = matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)));
        if alive {
            self.cleanup_all();
        }
        if let Some(mut child) = self.child.take() {
            terminate(&mut child, Duration::from_secs(5));
        }
        for pid in self.shim_pids() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let _ = unmount_all_under(self.dir.path());
    }
}

/// Media type of an uncompressed OCI layer.
pub const MEDIA_TYPE_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";

/// Writes the busybox image into the OCI layout at `dir` (see
/// [`crate::write_busybox_oci_layout`]) with, on top of its layer, one
/// uncompressed layer per `(file name, size)` of `extra`, each holding the
/// single file `/<file name>` of `size` pseudo-random (incompressible)
/// bytes; the manifest is tagged `tag` in index.json. The returned info
/// lists every layer, busybox's first.
pub fn write_layered_busybox_oci_layout(
    dir: &Path,
    tag: &str,
    extra: &[(&str, usize)],
) -> std::io::Result<crate::ImageInfo> {
    use crate::image::{ANNOTATION_REF_NAME, LAYER_MTIME, MEDIA_TYPE_CONFIG, MEDIA_TYPE_MANIFEST};
    use crate::sha256_digest;
    use serde_json::{json, Value};

    let base = crate::write_busybox_oci_layout(dir, tag)?;
    let blob = |d: &str| {
        dir.join("blobs/sha256")
            .join(d.trim_start_matches("sha256:"))
    };
    let mut config: Value = serde_json::from_slice(&fs::read(blob(&base.config_digest))?)?;
    let base_manifest: Value = serde_json::from_slice(&fs::read(blob(&base.manifest_digest))?)?;
    let mut layers = base_manifest["layers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let mut info = base.clone();
    let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
    for (name, size) in extra {
        let mut data = vec![0u8; *size];
        for chunk in data.chunks_mut(8) {
            // xorshift64: fast, incompressible enough for gzip/registries.
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let b = seed.to_le_bytes();
            chunk.copy_from_slice(&b[..chunk.len()]);
        }
        let mut t = tar::Builder::new(Vec::with_capacity(size + 4096));
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(LAYER_MTIME);
        h.set_size(*size as u64);
        t.append_data(&mut h, name, data.as_slice())?;
        let layer = t.into_inner()?;
        drop(data);
        let digest = sha256_digest(&layer);
        fs::write(blob(&digest), &layer)?;
        config["rootfs"]["diff_ids"]
            .as_array_mut()
            .ok_or_else(|| std::io::Error::other("busybox config has no rootfs.diff_ids"))?
            .push(json!(digest));
        layers.push(json!({
            "mediaType": MEDIA_TYPE_LAYER_TAR,
            "digest": digest,
            "size": layer.len(),
        }));
        info.layer_digests.push(digest.clone());
        info.diff_ids.push(digest);
    }
    let config = serde_json::to_vec(&config)?;
    let config_digest = sha256_digest(&config);
    fs::write(blob(&config_digest), &config)?;
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_TYPE_MANIFEST,
        "config": {"mediaType": MEDIA_TYPE_CONFIG, "digest": config_digest, "size": config.len()},
        "layers": layers,
    }))?;
    let manifest_digest = sha256_digest(&manifest);
    fs::write(blob(&manifest_digest), &manifest)?;
    let index_path = dir.join("index.json");
    let mut index: Value = serde_json::from_slice(&fs::read(&index_path)?)?;
    if let Some(m) = index["manifests"].as_array_mut() {
        m.retain(|m| m["annotations"][ANNOTATION_REF_NAME].as_str() != Some(tag));
        m.push(json!({
            "mediaType": MEDIA_TYPE_MANIFEST,
            "digest": manifest_digest,
            "size": manifest.len(),
            "annotations": {ANNOTATION_REF_NAME: tag},
        }));
    }
    fs::write(&index_path, serde_json::to_vec(&index)?)?;
    info.config_digest = config_digest;
    info.manifest_digest = manifest_digest;
    info.manifest_size = manifest.len() as u64;
    Ok(info)
}

/// A registry holding the busybox image plus the `extra` layers of
/// [`write_layered_busybox_oci_layout`] as `library/<name>:latest`;
/// returns it, the image reference and what was pushed.
#[track_caller]
pub fn registry_with_layered_busybox(
    name: &str,
    extra: &[(&str, usize)],
) -> (crate::Registry, String, crate::ImageInfo) {
    let reg = crate::Registry::start();
    let layout = tempfile::Builder::new()
        .prefix("orca-oci-")
        .tempdir()
        .unwrap_or_else(|e| panic!("cannot create a temp dir for an OCI layout: {e}"));
    let info = write_layered_busybox_oci_layout(layout.path(), "latest", extra)
        .unwrap_or_else(|e| panic!("cannot write the layered busybox OCI layout: {e}"));
    // --preserve-digests: skopeo would otherwise gzip the uncompressed
    // layers on their way to a registry (new digests, slow).
    let src = format!("oci:{}:latest", layout.path().display());
    let r = format!("{}/library/{name}:latest", reg.addr());
    let out = crate::util::output_of(
        Command::new(require_tool("skopeo"))
            .args([
                "--insecure-policy",
                "copy",
                "--dest-tls-verify=false",
                "--preserve-digests",
            ])
            .arg(&src)
            .arg(format!("docker://{r}"))
            .stdin(Stdio::null()),
    );
    if !out.status.success() {
        panic!(
            "skopeo copy {src} docker://{r} failed: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    (reg, r, info)
}
