//! OCI bundles (rootfs + config.json) in temp dirs, and the default spec.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use tempfile::TempDir;

use crate::mounts::unmount_all_under;
use crate::rootfs::make_busybox_rootfs;
use crate::util::unique_name;

/// Parent of every bundle's `linux.cgroupsPath`.
pub const CGROUP_PARENT: &str = "/orca-test";

/// The 14 capabilities a container gets by default (Docker's/containerd's
/// default set).
pub const DEFAULT_CAPS: [&str; 14] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// The document `runc spec` writes, adapted for tests: no terminal, the 14
/// default capabilities (bounding/effective/permitted), hostname "orca", a
/// cgroup namespace, and the given `args`. It has no `linux.cgroupsPath`;
/// [`Bundle`] adds a unique one.
pub fn default_spec(args: &[&str]) -> Value {
    json!({
        "ociVersion": "1.0.2-dev",
        "process": {
            "terminal": false,
            "user": { "uid": 0, "gid": 0 },
            "args": args,
            "env": [
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "TERM=xterm"
            ],
            "cwd": "/",
            "capabilities": {
                "bounding": DEFAULT_CAPS,
                "effective": DEFAULT_CAPS,
                "permitted": DEFAULT_CAPS
            },
            "rlimits": [
                { "type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024 }
            ],
            "noNewPrivileges": true
        },
        "root": { "path": "rootfs", "readonly": true },
        "hostname": "orca",
        "mounts": [
            { "destination": "/proc", "type": "proc", "source": "proc" },
            {
                "destination": "/dev", "type": "tmpfs", "source": "tmpfs",
                "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]
            },
            {
                "destination": "/dev/pts", "type": "devpts", "source": "devpts",
                "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]
            },
            {
                "destination": "/dev/shm", "type": "tmpfs", "source": "shm",
                "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]
            },
            {
                "destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
                "options": ["nosuid", "noexec", "nodev"]
            },
            {
                "destination": "/sys", "type": "sysfs", "source": "sysfs",
                "options": ["nosuid", "noexec", "nodev", "ro"]
            },
            {
                "destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
                "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]
            }
        ],
        "linux": {
            "resources": {
                "devices": [ { "allow": false, "access": "rwm" } ]
            },
            "namespaces": [
                { "type": "pid" },
                { "type": "network" },
                { "type": "ipc" },
                { "type": "uts" },
                { "type": "mount" },
                { "type": "cgroup" }
            ],
            "maskedPaths": [
                "/proc/acpi",
                "/proc/asound",
                "/proc/kcore",
                "/proc/keys",
                "/proc/latency_stats",
                "/proc/timer_list",
                "/proc/timer_stats",
                "/proc/sched_debug",
                "/sys/firmware",
                "/proc/scsi"
            ],
            "readonlyPaths": [
                "/proc/bus",
                "/proc/fs",
                "/proc/irq",
                "/proc/sys",
                "/proc/sysrq-trigger"
            ]
        }
    })
}

/// Every directory for `cgroups_path` (e.g. "/orca-test/x") still present
/// under a cgroup hierarchy: `/sys/fs/cgroup/*/<path>` (v1 controllers,
/// `name=systemd`, and the v2 `unified` mount) and `/sys/fs/cgroup/<path>`
/// (pure cgroup v2 hosts).
pub fn cgroup_leftovers(cgroups_path: &str) -> Vec<PathBuf> {
    let rel = cgroups_path.trim_start_matches('/');
    if rel.is_empty() {
        return Vec::new();
    }
    let root = Path::new("/sys/fs/cgroup");
    let mut candidates = vec![root.join(rel)];
    if let Ok(rd) = std::fs::read_dir(root) {
        let mut hier: Vec<PathBuf> = rd.filter_map(|e| e.ok()).map(|e| e.path()).collect();
        hier.sort();
        let mut seen = Vec::new();
        for h in hier {
            // Skip symlinks such as cpu -> cpu,cpuacct (same hierarchy).
            let real = std::fs::canonicalize(&h).unwrap_or_else(|_| h.clone());
            if seen.contains(&real) {
                continue;
            }
            seen.push(real);
            candidates.push(h.join(rel));
        }
    }
    candidates.into_iter().filter(|p| p.is_dir()).collect()
}

/// An OCI bundle in a unique temp dir: `rootfs/` and `config.json`.
/// Dropping it unmounts anything left below it and removes it.
pub struct Bundle {
    dir: TempDir,
    config: Value,
}

impl Bundle {
    /// A busybox bundle running `args`, with [`default_spec`] and a unique
    /// `linux.cgroupsPath` ("/orca-test/<unique>"). The config is saved.
    #[track_caller]
    pub fn busybox(args: &[&str]) -> Bundle {
        match Bundle::try_busybox(args) {
            Ok(b) => b,
            Err(e) => panic!("cannot make a busybox bundle: {e}"),
        }
    }

    /// Like [`Bundle::busybox`], returning an error instead of panicking
    /// (for the benchmark binary, built with `panic = "abort"`).
    pub fn try_busybox(args: &[&str]) -> std::io::Result<Bundle> {
        let dir = tempfile::Builder::new().prefix("orca-bundle-").tempdir()?;
        std::fs::create_dir(dir.path().join("rootfs"))?;
        let mut config = default_spec(args);
        config["linux"]["cgroupsPath"] =
            Value::String(format!("{CGROUP_PARENT}/{}", unique_name("cg")));
        let b = Bundle { dir, config };
        std::fs::write(
            b.dir.path().join("config.json"),
            serde_json::to_vec_pretty(&b.config).expect("a JSON value serializes"),
        )?;
        make_busybox_rootfs(&b.rootfs()).map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("busybox rootfs in {}: {e}", b.rootfs().display()),
            )
        })?;
        Ok(b)
    }

    /// Like [`Bundle::busybox`] but with an empty `rootfs/` directory, for
    /// callers that fill the rootfs themselves.
    #[track_caller]
    pub fn empty(args: &[&str]) -> Bundle {
        let dir = tempfile::Builder::new()
            .prefix("orca-bundle-")
            .tempdir()
            .unwrap_or_else(|e| panic!("cannot create a temp dir for a bundle: {e}"));
        std::fs::create_dir(dir.path().join("rootfs"))
            .unwrap_or_else(|e| panic!("cannot create rootfs/ in {}: {e}", dir.path().display()));
        let mut config = default_spec(args);
        config["linux"]["cgroupsPath"] =
            Value::String(format!("{CGROUP_PARENT}/{}", unique_name("cg")));
        let b = Bundle { dir, config };
        b.save();
        b
    }

    /// The config document; call [`Bundle::save`] after changing it.
    pub fn config_mut(&mut self) -> &mut Value {
        &mut self.config
    }

    /// The config document as last set.
    pub fn config(&self) -> &Value {
        &self.config
    }

    /// Writes the config to `config.json`.
    #[track_caller]
    pub fn save(&self) {
        let p = self.dir.path().join("config.json");
        let text = serde_json::to_vec_pretty(&self.config).expect("a JSON value serializes");
        std::fs::write(&p, text).unwrap_or_else(|e| panic!("cannot write {}: {e}", p.display()));
    }

    /// The bundle directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The bundle directory as a `&str` (temp dirs are ASCII), for argument lists.
    pub fn path_str(&self) -> &str {
        self.dir
            .path()
            .to_str()
            .expect("temp dir paths are valid UTF-8")
    }

    /// `<bundle>/rootfs`.
    pub fn rootfs(&self) -> PathBuf {
        self.dir.path().join("rootfs")
    }

    /// The config's `linux.cgroupsPath` (empty if removed).
    pub fn cgroups_path(&self) -> String {
        self.config["linux"]["cgroupsPath"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Sets `process.args` and saves.
    pub fn set_args(&mut self, args: &[&str]) {
        self.config["process"]["args"] = json!(args);
        self.save();
    }

    /// Cgroup directories of this bundle's cgroupsPath still present.
    pub fn cgroup_leftovers(&self) -> Vec<PathBuf> {
        cgroup_leftovers(&self.cgroups_path())
    }
}

impl Drop for Bundle {
    fn drop(&mut self) {
        let _ = unmount_all_under(self.dir.path());
    }
}
