//! Loading and checking an OCI bundle's `config.json`, and the default spec `orca-runtime spec`
//! writes.

use crate::error::{Result, RuntimeError};
use oci_spec::runtime::{LinuxNamespaceType, Spec};
use std::path::{Path, PathBuf};

/// The OCI runtime-spec version this runtime implements.
pub const OCI_VERSION: &str = "1.0.2";

/// Read `<bundle>/config.json`. A malformed or wrong-typed document gives an error naming the
/// field (`process.user.uid: invalid type: ...`).
pub fn load(bundle: &Path) -> Result<Spec> {
    let path = bundle.join("config.json");
    let data = std::fs::read(&path)
        .map_err(|e| RuntimeError::Config(format!("cannot read {}: {e}", path.display())))?;
    parse(&data)
}

pub fn parse(data: &[u8]) -> Result<Spec> {
    let de = &mut serde_json::Deserializer::from_slice(data);
    let spec: Spec = serde_path_to_error::deserialize(de).map_err(|e| {
        let field = e.path().to_string();
        if field == "." || field.is_empty() {
            RuntimeError::Config(e.inner().to_string())
        } else {
            RuntimeError::Config(format!("field {field}: {}", e.inner()))
        }
    })?;
    Ok(spec)
}

/// Checks that serde cannot express: required fields, consistency between sections.
pub fn validate(spec: &Spec, for_create: bool) -> Result<()> {
    let bad = |m: String| Err(RuntimeError::Config(m));
    if spec.version().is_empty() {
        return bad("field ociVersion: must be set".into());
    }
    let Some(root) = spec.root() else {
        return bad("field root: must be set".into());
    };
    if root.path().as_os_str().is_empty() {
        return bad("field root.path: must be set".into());
    }
    if for_create {
        let Some(process) = spec.process() else {
            return bad("field process: must be set".into());
        };
        match process.args() {
            Some(a) if !a.is_empty() && !a[0].is_empty() => {}
            _ => return bad("field process.args: must contain at least one element".into()),
        }
        if !process.cwd().is_absolute() {
            return bad(format!(
                "field process.cwd: {:?} is not an absolute path",
                process.cwd()
            ));
        }
    }
    for (i, m) in spec.mounts().iter().flatten().enumerate() {
        if !m.destination().is_absolute() {
            return bad(format!(
                "field mounts[{i}].destination: {:?} is not an absolute path",
                m.destination()
            ));
        }
    }
    if let Some(linux) = spec.linux() {
        let mut seen = Vec::new();
        for (i, ns) in linux.namespaces().iter().flatten().enumerate() {
            if seen.contains(&ns.typ()) {
                return bad(format!(
                    "field linux.namespaces[{i}]: duplicate namespace {:?}",
                    ns.typ()
                ));
            }
            seen.push(ns.typ());
            if let Some(p) = ns.path() {
                if !p.is_absolute() {
                    return bad(format!(
                        "field linux.namespaces[{i}].path: {p:?} is not an absolute path"
                    ));
                }
            }
        }
        let has = |t| seen.contains(&t);
        let has_maps = linux.uid_mappings().as_ref().is_some_and(|m| !m.is_empty())
            || linux.gid_mappings().as_ref().is_some_and(|m| !m.is_empty());
        let user_new = linux
            .namespaces()
            .iter()
            .flatten()
            .any(|n| n.typ() == LinuxNamespaceType::User && n.path().is_none());
        if user_new && !has_maps {
            return bad(
                "field linux.uidMappings: a new user namespace needs uid and gid mappings".into(),
            );
        }
        if has_maps && !has(LinuxNamespaceType::User) {
            return bad("field linux.uidMappings: mappings need a user namespace".into());
        }
        if spec.hostname().as_ref().is_some_and(|h| !h.is_empty()) && !has(LinuxNamespaceType::Uts)
        {
            return bad(
                "field hostname: unable to set hostname without a private UTS namespace".into(),
            );
        }
        if let Some(p) = linux.cgroups_path() {
            if p.components()
                .any(|c| matches!(c, std::path::Component::ParentDir))
            {
                return bad(format!(
                    "field linux.cgroupsPath: {p:?} must not contain '..'"
                ));
            }
        }
    } else if for_create {
        return bad("field linux: must be set".into());
    }
    Ok(())
}

/// The bundle's rootfs as an absolute, existing directory.
pub fn rootfs_path(bundle: &Path, spec: &Spec) -> Result<PathBuf> {
    let root = spec
        .root()
        .as_ref()
        .ok_or_else(|| RuntimeError::Config("field root: must be set".into()))?;
    let p = if root.path().is_absolute() {
        root.path().clone()
    } else {
        bundle.join(root.path())
    };
    let canon = std::fs::canonicalize(&p).map_err(|e| {
        RuntimeError::Config(format!("rootfs ({}) does not exist: {e}", p.display()))
    })?;
    if !canon.is_dir() {
        return Err(RuntimeError::Config(format!(
            "rootfs ({}) is not a directory",
            p.display()
        )));
    }
    Ok(canon)
}

/// The document `orca-runtime spec` writes: runc's default spec (busybox `sh` with a terminal).
pub fn default_spec(rootless: bool) -> serde_json::Value {
    let caps = serde_json::json!(["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]);
    let mut namespaces = vec![
        serde_json::json!({"type": "pid"}),
        serde_json::json!({"type": "network"}),
        serde_json::json!({"type": "ipc"}),
        serde_json::json!({"type": "uts"}),
        serde_json::json!({"type": "mount"}),
        serde_json::json!({"type": "cgroup"}),
    ];
    let mut linux = serde_json::json!({
        "resources": {"devices": [{"allow": false, "access": "rwm"}]},
        "namespaces": [],
        "maskedPaths": [
            "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
            "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware",
            "/proc/scsi"
        ],
        "readonlyPaths": [
            "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"
        ]
    });
    let mut mounts = serde_json::json!([
        {"destination": "/proc", "type": "proc", "source": "proc"},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
        {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
         "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
        {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
         "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
        {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
         "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/sys", "type": "sysfs", "source": "sysfs",
         "options": ["nosuid", "noexec", "nodev", "ro"]},
        {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
         "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]}
    ]);
    if rootless {
        namespaces.retain(|n| n["type"] != "network");
        namespaces.push(serde_json::json!({"type": "user"}));
        let uid = nix::unistd::geteuid().as_raw();
        let gid = nix::unistd::getegid().as_raw();
        linux["uidMappings"] = serde_json::json!([{"containerID": 0, "hostID": uid, "size": 1}]);
        linux["gidMappings"] = serde_json::json!([{"containerID": 0, "hostID": gid, "size": 1}]);
        linux.as_object_mut().map(|o| o.remove("resources"));
        if let Some(arr) = mounts.as_array_mut() {
            for m in arr.iter_mut() {
                if m["type"] == "devpts" {
                    m["options"] = serde_json::json!([
                        "nosuid",
                        "noexec",
                        "newinstance",
                        "ptmxmode=0666",
                        "mode=0620"
                    ]);
                }
                if m["type"] == "mqueue" {
                    *m = serde_json::json!({"destination": "/dev/mqueue", "type": "bind", "source": "/dev/mqueue", "options": ["rbind", "nosuid", "noexec", "nodev"]});
                }
                if m["type"] == "sysfs" {
                    *m = serde_json::json!({"destination": "/sys", "type": "none", "source": "/sys", "options": ["rbind", "nosuid", "noexec", "nodev", "ro"]});
                }
            }
            arr.retain(|m| m["type"] != "cgroup");
        }
    }
    linux["namespaces"] = serde_json::Value::Array(namespaces);
    serde_json::json!({
        "ociVersion": OCI_VERSION,
        "process": {
            "terminal": true,
            "user": {"uid": 0, "gid": 0},
            "args": ["sh"],
            "env": [
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "TERM=xterm"
            ],
            "cwd": "/",
            "capabilities": {
                "bounding": caps, "effective": caps, "permitted": caps, "ambient": caps
            },
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": true
        },
        "root": {"path": "rootfs", "readonly": true},
        "hostname": "orca",
        "mounts": mounts,
        "linux": linux
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_spec_parses_and_validates() {
        let v = default_spec(false);
        let spec = parse(v.to_string().as_bytes()).unwrap();
        validate(&spec, true).unwrap();
        let rootless = parse(default_spec(true).to_string().as_bytes()).unwrap();
        validate(&rootless, true).unwrap();
    }

    #[test]
    fn wrong_type_names_the_field() {
        let mut v = default_spec(false);
        v["process"]["user"]["uid"] = serde_json::json!("root");
        let err = parse(v.to_string().as_bytes()).unwrap_err().to_string();
        assert!(err.contains("process.user.uid"), "{err}");
    }

    #[test]
    fn missing_args_and_relative_mount_are_rejected() {
        let mut v = default_spec(false);
        v["process"]["args"] = serde_json::json!([]);
        let spec = parse(v.to_string().as_bytes()).unwrap();
        let err = validate(&spec, true).unwrap_err().to_string();
        assert!(err.contains("process.args"), "{err}");

        let mut v = default_spec(false);
        v["mounts"][0]["destination"] = serde_json::json!("proc");
        let spec = parse(v.to_string().as_bytes()).unwrap();
        let err = validate(&spec, true).unwrap_err().to_string();
        assert!(err.contains("mounts[0].destination"), "{err}");
    }

    #[test]
    fn hostname_needs_uts_namespace() {
        let mut v = default_spec(false);
        v["linux"]["namespaces"] = serde_json::json!([{"type": "mount"}]);
        let spec = parse(v.to_string().as_bytes()).unwrap();
        let err = validate(&spec, true).unwrap_err().to_string();
        assert!(err.contains("UTS"), "{err}");
    }
}
