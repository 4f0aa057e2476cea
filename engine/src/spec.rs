//! The OCI runtime spec of a container, built like Docker's default.

use serde_json::{json, Value};

use crate::error::{EngineError, Result};

/// Docker's default capability set.
pub const DEFAULT_CAPS: &[&str] = &[
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

/// Paths Docker masks in /proc and /sys.
pub const MASKED_PATHS: &[&str] = &[
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// Paths Docker makes read-only.
pub const READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// What the spec is built from.
pub struct SpecInput<'a> {
    pub id: &'a str,
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    pub user: &'a str,
    pub tty: bool,
    pub hostname: &'a str,
    /// Host files bind-mounted at /etc/hostname, /etc/hosts, /etc/resolv.conf.
    pub hostname_path: &'a str,
    pub hosts_path: &'a str,
    pub resolv_conf_path: &'a str,
    pub cgroup_parent: &'a str,
}

/// Parses a numeric `uid[:gid]` ("" and "root" are 0:0).
pub fn parse_user(user: &str) -> Result<(u32, u32)> {
    if user.is_empty() || user == "root" || user == "root:root" {
        return Ok((0, 0));
    }
    let (u, g) = user.split_once(':').unwrap_or((user, ""));
    let uid = u.parse::<u32>().map_err(|_| {
        EngineError::NotImplemented(format!(
            "user {user:?}: user names are not implemented in orcad yet; use a numeric uid[:gid]"
        ))
    })?;
    let gid = if g.is_empty() {
        0
    } else {
        g.parse::<u32>().map_err(|_| {
            EngineError::NotImplemented(format!(
                "user {user:?}: group names are not implemented in orcad yet; use a numeric uid[:gid]"
            ))
        })?
    };
    Ok((uid, gid))
}

fn mount(dest: &str, typ: &str, src: &str, opts: &[&str]) -> Value {
    json!({"destination": dest, "type": typ, "source": src, "options": opts})
}

fn dev(typ: &str, major: Option<i64>, minor: Option<i64>, access: &str) -> Value {
    let mut v = json!({"allow": true, "type": typ, "access": access});
    if let Some(m) = major {
        v["major"] = json!(m);
    }
    if let Some(m) = minor {
        v["minor"] = json!(m);
    }
    v
}

/// The runtime spec (config.json) for a container.
pub fn build(i: &SpecInput<'_>) -> Result<Value> {
    let (uid, gid) = parse_user(i.user)?;
    let caps: Vec<&str> = DEFAULT_CAPS.to_vec();
    let mounts = vec![
        mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"]),
        mount(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        ),
        mount(
            "/dev/pts",
            "devpts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5",
            ],
        ),
        mount(
            "/sys",
            "sysfs",
            "sysfs",
            &["nosuid", "noexec", "nodev", "ro"],
        ),
        mount(
            "/sys/fs/cgroup",
            "cgroup",
            "cgroup",
            &["ro", "nosuid", "noexec", "nodev"],
        ),
        mount(
            "/dev/mqueue",
            "mqueue",
            "mqueue",
            &["nosuid", "noexec", "nodev"],
        ),
        mount(
            "/dev/shm",
            "tmpfs",
            "shm",
            &["nosuid", "noexec", "nodev", "mode=1777", "size=67108864"],
        ),
        mount(
            "/etc/resolv.conf",
            "bind",
            i.resolv_conf_path,
            &["rbind", "rprivate"],
        ),
        mount(
            "/etc/hostname",
            "bind",
            i.hostname_path,
            &["rbind", "rprivate"],
        ),
        mount("/etc/hosts", "bind", i.hosts_path, &["rbind", "rprivate"]),
    ];
    let devices = vec![
        json!({"allow": false, "access": "rwm"}),
        dev("c", None, None, "m"),
        dev("b", None, None, "m"),
        dev("c", Some(1), Some(3), "rwm"),
        dev("c", Some(1), Some(8), "rwm"),
        dev("c", Some(1), Some(7), "rwm"),
        dev("c", Some(5), Some(0), "rwm"),
        dev("c", Some(1), Some(5), "rwm"),
        dev("c", Some(1), Some(9), "rwm"),
        dev("c", Some(5), Some(1), "rwm"),
        dev("c", Some(136), None, "rwm"),
        dev("c", Some(5), Some(2), "rwm"),
        dev("c", Some(10), Some(200), "rwm"),
    ];
    Ok(json!({
        "ociVersion": "1.0.2-dev",
        "process": {
            "terminal": i.tty,
            "user": {"uid": uid, "gid": gid},
            "args": i.args,
            "env": i.env,
            "cwd": i.cwd,
            "capabilities": {
                "bounding": caps,
                "effective": caps,
                "permitted": caps,
            },
            "noNewPrivileges": false,
            "oomScoreAdj": 0,
        },
        "root": {"path": "rootfs", "readonly": false},
        "hostname": i.hostname,
        "mounts": mounts,
        "linux": {
            "resources": {"devices": devices},
            "cgroupsPath": format!("{}/{}", i.cgroup_parent.trim_end_matches('/'), i.id),
            "namespaces": [
                {"type": "mount"},
                {"type": "network"},
                {"type": "uts"},
                {"type": "pid"},
                {"type": "ipc"},
            ],
            "maskedPaths": MASKED_PATHS,
            "readonlyPaths": READONLY_PATHS,
        },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users() {
        assert_eq!(parse_user("").unwrap(), (0, 0));
        assert_eq!(parse_user("1000:100").unwrap(), (1000, 100));
        assert!(matches!(
            parse_user("nobody"),
            Err(EngineError::NotImplemented(_))
        ));
    }
}
