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
    /// Docker's HostConfig (resources, security, mounts).
    pub host: &'a Value,
    /// Volume mounts (and binds inherited through VolumesFrom), already
    /// resolved to host paths (`volumes::MountPoint::oci`).
    pub volume_mounts: &'a [Value],
    /// The container's /etc/group (for `GroupAdd` names); `None`: it has none.
    pub etc_group: Option<&'a str>,
    /// `IpcMode shareable`: the host-side tmpfs bind-mounted at /dev/shm.
    pub shm_path: &'a str,
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

/// Every capability Linux knows (index = capability number).
pub const ALL_CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// The capabilities the kernel supports and orcad's bounding set holds
/// (like dockerd: a container cannot get more than the engine may grant).
fn host_caps() -> Vec<&'static str> {
    let last = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse::<usize>().ok())
        .unwrap_or(ALL_CAPS.len() - 1);
    let bnd = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapBnd:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .unwrap_or(u64::MAX);
    ALL_CAPS
        .iter()
        .enumerate()
        .take(last + 1)
        .filter(|(i, _)| bnd & (1u64 << i) != 0)
        .map(|(_, c)| *c)
        .collect()
}

fn normalize_cap(c: &str) -> Result<String> {
    let up = c.trim().to_ascii_uppercase();
    if up == "ALL" {
        return Ok(up);
    }
    let name = if up.starts_with("CAP_") {
        up
    } else {
        format!("CAP_{up}")
    };
    if !ALL_CAPS.contains(&name.as_str()) {
        return Err(EngineError::BadRequest(format!(
            "unknown capability: {c:?}"
        )));
    }
    Ok(name)
}

/// Docker's capability tweaking: the default set (or all when privileged),
/// `ALL` in CapAdd adds every capability, `ALL` in CapDrop starts empty.
pub fn capabilities(privileged: bool, add: &[String], drop: &[String]) -> Result<Vec<String>> {
    let add: Vec<String> = add
        .iter()
        .map(|c| normalize_cap(c))
        .collect::<Result<_>>()?;
    let drop: Vec<String> = drop
        .iter()
        .map(|c| normalize_cap(c))
        .collect::<Result<_>>()?;
    let host = host_caps();
    if privileged {
        return Ok(host.iter().map(|s| s.to_string()).collect());
    }
    let add_all = add.iter().any(|c| c == "ALL");
    let drop_all = drop.iter().any(|c| c == "ALL");
    let mut caps: Vec<String> = if add_all {
        host.iter().map(|s| s.to_string()).collect()
    } else if drop_all {
        Vec::new()
    } else {
        DEFAULT_CAPS.iter().map(|s| s.to_string()).collect()
    };
    caps.retain(|c| !drop.contains(c));
    if !add_all {
        for c in &add {
            if !caps.contains(c) && host.contains(&c.as_str()) {
                caps.push(c.clone());
            }
        }
    }
    Ok(caps)
}

const PROPAGATIONS: &[&str] = &[
    "private", "rprivate", "shared", "rshared", "slave", "rslave",
];

fn bind_mount(src: &str, dst: &str, ro: bool, propagation: &str, recursive: bool) -> Value {
    let mut opts = vec![if recursive { "rbind" } else { "bind" }.to_string()];
    opts.push(
        if propagation.is_empty() {
            "rprivate"
        } else {
            propagation
        }
        .to_string(),
    );
    if ro {
        opts.push("ro".into());
    }
    json!({"destination": dst, "type": "bind", "source": src, "options": opts})
}

fn check_target(dst: &str) -> Result<()> {
    if !dst.starts_with('/') {
        return Err(EngineError::BadRequest(format!(
            "invalid mount config: mount path must be absolute: {dst:?}"
        )));
    }
    if dst == "/" {
        return Err(EngineError::BadRequest(
            "invalid specification: destination can't be '/'".into(),
        ));
    }
    Ok(())
}

fn tmpfs_options(defaults: &[&str], user: &str) -> Vec<String> {
    let mut opts: Vec<String> = defaults.iter().map(|s| s.to_string()).collect();
    for o in user.split(',').map(str::trim).filter(|o| !o.is_empty()) {
        // "exec" cancels a default "noexec" (and so on).
        opts.retain(|d| d.strip_prefix("no") != Some(o));
        if !["exec", "suid", "dev"].contains(&o) {
            opts.retain(|d| d.split('=').next() != o.split('=').next());
            opts.push(o.to_string());
        }
    }
    opts
}

/// HostConfig.Binds (host paths only), Mounts (bind, tmpfs) and Tmpfs as
/// OCI mounts. Volume entries (`name:/path`, `/path`, Mounts of type
/// volume) are skipped here: `volumes::plan` resolves them.
pub fn user_mounts(hc: &Value) -> Result<Vec<Value>> {
    user_mounts_impl(hc, true)
}

/// [`user_mounts`] without creating missing bind sources (for inspect);
/// invalid entries are skipped.
pub fn user_mounts_no_side_effects(hc: &Value) -> Vec<Value> {
    user_mounts_impl(hc, false).unwrap_or_default()
}

fn user_mounts_impl(hc: &Value, create_missing: bool) -> Result<Vec<Value>> {
    let mut out: Vec<Value> = Vec::new();
    for b in crate::util::json_strings(&hc["Binds"]) {
        let parts: Vec<&str> = b.split(':').collect();
        let (src, dst, mode) = match parts.as_slice() {
            // An anonymous volume: volumes::plan.
            [_] => continue,
            [s, d] => (*s, *d, ""),
            [s, d, m] => (*s, *d, *m),
            _ => {
                return Err(EngineError::BadRequest(format!(
                    "invalid volume specification: '{b}'"
                )))
            }
        };
        if !src.starts_with('/') {
            // A named volume: volumes::plan.
            continue;
        }
        check_target(dst)?;
        let mut ro = false;
        let mut prop = "";
        for m in mode.split(',').filter(|m| !m.is_empty()) {
            match m {
                "ro" => ro = true,
                "rw" | "z" | "Z" | "nocopy" => {}
                p if PROPAGATIONS.contains(&p) => prop = p,
                other => return Err(EngineError::BadRequest(format!("invalid mode: {other}"))),
            }
        }
        // Like dockerd: a missing host path of a bind is created.
        if create_missing && !std::path::Path::new(src).exists() {
            std::fs::create_dir_all(src).map_err(|e| {
                EngineError::BadRequest(format!(
                    "error while creating mount source path '{src}': {e}"
                ))
            })?;
        }
        out.push(bind_mount(src, dst, ro, prop, true));
    }
    if let Some(ms) = hc["Mounts"].as_array() {
        for m in ms {
            let typ = m["Type"].as_str().unwrap_or("");
            let dst = m["Target"].as_str().unwrap_or("");
            match typ {
                "bind" => {
                    let src = m["Source"].as_str().unwrap_or("");
                    if !src.starts_with('/') {
                        return Err(EngineError::BadRequest(format!(
                            "invalid mount config for type \"bind\": invalid mount path: '{src}' mount path must be absolute"
                        )));
                    }
                    check_target(dst)?;
                    if create_missing && !std::path::Path::new(src).exists() {
                        return Err(EngineError::BadRequest(format!(
                            "invalid mount config for type \"bind\": bind source path does not exist: {src}"
                        )));
                    }
                    let bo = &m["BindOptions"];
                    let prop = bo["Propagation"].as_str().unwrap_or("");
                    if !prop.is_empty() && !PROPAGATIONS.contains(&prop) {
                        return Err(EngineError::BadRequest(format!(
                            "invalid propagation mode: {prop}"
                        )));
                    }
                    out.push(bind_mount(
                        src,
                        dst,
                        m["ReadOnly"].as_bool().unwrap_or(false),
                        prop,
                        !bo["NonRecursive"].as_bool().unwrap_or(false),
                    ));
                }
                "tmpfs" => {
                    check_target(dst)?;
                    if m["Source"].as_str().is_some_and(|s| !s.is_empty()) {
                        return Err(EngineError::BadRequest(
                            "invalid mount config for type \"tmpfs\": field Source must not be specified".into(),
                        ));
                    }
                    let to = &m["TmpfsOptions"];
                    let mut opts: Vec<String> =
                        vec!["nosuid".into(), "nodev".into(), "noexec".into()];
                    if let Some(n) = to["SizeBytes"].as_i64().filter(|n| *n > 0) {
                        opts.push(format!("size={n}"));
                    }
                    if let Some(n) = to["Mode"].as_u64().filter(|n| *n > 0) {
                        opts.push(format!("mode={n:o}"));
                    }
                    if m["ReadOnly"].as_bool().unwrap_or(false) {
                        opts.push("ro".into());
                    }
                    out.push(json!({"destination": dst, "type": "tmpfs", "source": "tmpfs", "options": opts}));
                }
                // Resolved by volumes::plan.
                "volume" => {}
                "npipe" | "cluster" | "image" => {
                    return Err(EngineError::NotImplemented(format!(
                        "mounts of type {typ:?} are not implemented in orcad yet"
                    )))
                }
                other => {
                    return Err(EngineError::BadRequest(format!(
                        "invalid mount config: mount type unknown: {other:?}"
                    )))
                }
            }
        }
    }
    if let Some(t) = hc["Tmpfs"].as_object() {
        for (dst, opts) in t {
            check_target(dst)?;
            let opts = tmpfs_options(&["noexec", "nosuid", "nodev"], opts.as_str().unwrap_or(""));
            out.push(
                json!({"destination": dst, "type": "tmpfs", "source": "tmpfs", "options": opts}),
            );
        }
    }
    for (i, m) in out.iter().enumerate() {
        if out[..i]
            .iter()
            .any(|o| o["destination"] == m["destination"])
        {
            return Err(EngineError::BadRequest(format!(
                "Duplicate mount point: {}",
                m["destination"].as_str().unwrap_or("")
            )));
        }
    }
    Ok(out)
}

fn num(hc: &Value, k: &str) -> i64 {
    hc[k].as_i64().unwrap_or(0)
}

fn host_cpus() -> i64 {
    std::thread::available_parallelism()
        .map(|n| n.get() as i64)
        .unwrap_or(1)
}

/// `linux.resources` (without devices) from HostConfig; options orcad
/// cannot apply answer 501.
pub fn resources(hc: &Value) -> Result<Value> {
    let bad = |m: &str| Err(EngineError::BadRequest(m.to_string()));
    for k in [
        "BlkioWeight",
        "CpuRealtimePeriod",
        "CpuRealtimeRuntime",
        "KernelMemory",
        "KernelMemoryTCP",
        "CpuCount",
        "CpuPercent",
        "IOMaximumIOps",
        "IOMaximumBandwidth",
    ] {
        if num(hc, k) != 0 {
            return Err(EngineError::NotImplemented(format!(
                "HostConfig.{k} is not implemented in orcad yet"
            )));
        }
    }
    for k in [
        "BlkioWeightDevice",
        "BlkioDeviceReadBps",
        "BlkioDeviceWriteBps",
        "BlkioDeviceReadIOps",
        "BlkioDeviceWriteIOps",
        "DeviceRequests",
    ] {
        if hc[k].as_array().is_some_and(|a| !a.is_empty()) {
            return Err(EngineError::NotImplemented(format!(
                "HostConfig.{k} is not implemented in orcad yet"
            )));
        }
    }
    let mut r = json!({});
    let mem = num(hc, "Memory");
    let swap = num(hc, "MemorySwap");
    if mem < 0 {
        return bad("invalid memory limit");
    }
    if mem > 0 && mem < 6 * 1024 * 1024 {
        return bad("Minimum memory limit allowed is 6MB");
    }
    if mem == 0 && swap > 0 {
        return bad(
            "You should always set the Memory limit when using Memoryswap limit, see usage",
        );
    }
    if mem > 0 && swap > 0 && swap < mem {
        return bad("Minimum memoryswap limit should be larger than memory limit, see usage");
    }
    let mut m = serde_json::Map::new();
    if mem > 0 {
        m.insert("limit".into(), json!(mem));
        // Like dockerd: swap = 2 × memory unless given, when the kernel
        // accounts swap.
        if std::path::Path::new("/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes").exists() {
            let s = match swap {
                0 => mem * 2,
                n => n,
            };
            m.insert("swap".into(), json!(s));
        }
    }
    let resv = num(hc, "MemoryReservation");
    if resv > 0 {
        m.insert("reservation".into(), json!(resv));
    }
    if let Some(sw) = hc["MemorySwappiness"].as_i64().filter(|s| *s >= 0) {
        if sw > 100 {
            return bad(&format!(
                "Invalid value: {sw}, valid memory swappiness range is 0-100"
            ));
        }
        m.insert("swappiness".into(), json!(sw));
    }
    if hc["OomKillDisable"].as_bool().unwrap_or(false) {
        m.insert("disableOOMKiller".into(), json!(true));
    }
    if !m.is_empty() {
        r["memory"] = Value::Object(m);
    }
    let mut c = serde_json::Map::new();
    let nano = num(hc, "NanoCpus");
    let (quota, period) = (num(hc, "CpuQuota"), num(hc, "CpuPeriod"));
    if nano != 0 {
        if period != 0 {
            return bad("Conflicting options: Nano CPUs and CPU Period cannot both be set");
        }
        if quota != 0 {
            return bad("Conflicting options: Nano CPUs and CPU Quota cannot both be set");
        }
        let n = host_cpus();
        if nano < 10_000_000 || nano > n * 1_000_000_000 {
            return bad(&format!(
                "Range of CPUs is from 0.01 to {n}.00, as there are only {n} CPUs available"
            ));
        }
        c.insert("period".into(), json!(100_000u64));
        c.insert("quota".into(), json!(nano * 100_000 / 1_000_000_000));
    }
    if quota > 0 {
        if quota < 1000 {
            return bad("CPU cfs quota can not be less than 1ms (i.e. 1000)");
        }
        c.insert("quota".into(), json!(quota));
    }
    if period > 0 {
        if !(1000..=1_000_000).contains(&period) {
            return bad("CPU cfs period can not be less than 1ms (i.e. 1000) or larger than 1s (i.e. 1000000)");
        }
        c.insert("period".into(), json!(period));
    }
    let shares = num(hc, "CpuShares");
    if shares > 0 {
        c.insert("shares".into(), json!(shares.max(2)));
    }
    for (k, o) in [("CpusetCpus", "cpus"), ("CpusetMems", "mems")] {
        if let Some(v) = hc[k].as_str().filter(|v| !v.is_empty()) {
            if !v
                .bytes()
                .all(|b| b.is_ascii_digit() || b == b',' || b == b'-')
            {
                return bad(&format!("Invalid value {v} for cpuset {o}"));
            }
            c.insert(o.into(), json!(v));
        }
    }
    if !c.is_empty() {
        r["cpu"] = Value::Object(c);
    }
    let pids = num(hc, "PidsLimit");
    if pids > 0 {
        r["pids"] = json!({"limit": pids});
    }
    Ok(r)
}

const RLIMITS: &[&str] = &[
    "as",
    "core",
    "cpu",
    "data",
    "fsize",
    "locks",
    "memlock",
    "msgqueue",
    "nice",
    "nofile",
    "nproc",
    "rss",
    "rtprio",
    "rttime",
    "sigpending",
    "stack",
];

/// HostConfig.Ulimits as `process.rlimits`.
pub fn rlimits(v: &Value) -> Result<Vec<Value>> {
    let mut out = Vec::new();
    for u in v.as_array().map(|a| a.as_slice()).unwrap_or_default() {
        let name = u["Name"].as_str().unwrap_or("");
        if !RLIMITS.contains(&name) {
            return Err(EngineError::BadRequest(format!(
                "invalid ulimit type: {name}"
            )));
        }
        let (soft, hard) = (
            u["Soft"].as_i64().unwrap_or(0),
            u["Hard"].as_i64().unwrap_or(0),
        );
        if soft > hard {
            return Err(EngineError::BadRequest(format!(
                "ulimit soft limit must be less than or equal to hard limit: {soft} > {hard}"
            )));
        }
        out.push(json!({
            "type": format!("RLIMIT_{}", name.to_ascii_uppercase()),
            "hard": hard as u64,
            "soft": soft as u64,
        }));
    }
    Ok(out)
}

/// HostConfig.SecurityOpt: `no-new-privileges` is applied; `seccomp=…`
/// is read by [`crate::seccomp_profile`]; unconfined apparmor and
/// disabled labels match what orcad does anyway; anything else is 501.
pub fn no_new_privileges(hc: &Value) -> Result<bool> {
    let mut nnp = false;
    for o in crate::util::json_strings(&hc["SecurityOpt"]) {
        let (k, v) = o
            .split_once('=')
            .or_else(|| o.split_once(':'))
            .unwrap_or((o.as_str(), ""));
        match (k, v) {
            ("no-new-privileges", "" | "true") => nnp = true,
            ("no-new-privileges", "false") => nnp = false,
            ("seccomp", _) | ("apparmor", "unconfined") | ("label", "disable") => {}
            _ => {
                return Err(EngineError::NotImplemented(format!(
                    "security option {o:?} is not implemented in orcad yet"
                )))
            }
        }
    }
    Ok(nnp)
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

/// Go's text of an errno (lower-case, no "(os error N)"), as dockerd's
/// messages carry it.
fn errno_text(e: &std::io::Error) -> String {
    let s = match e.raw_os_error() {
        Some(n) => nix::errno::Errno::from_raw(n).desc().to_string(),
        None => e.to_string(),
    };
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_lowercase().chain(c).collect(),
        None => s,
    }
}

/// A host device node as an OCI `linux.devices` entry (path `dst`), or
/// `Ok(None)` when `path` is not a device node (containerd's
/// DeviceFromPath: block, char or fifo; never follows a symlink).
fn device_from_path(path: &std::path::Path, dst: &str) -> std::io::Result<Option<Value>> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let md = std::fs::symlink_metadata(path)?;
    let ft = md.file_type();
    let typ = if ft.is_block_device() {
        "b"
    } else if ft.is_char_device() {
        "c"
    } else if ft.is_fifo() {
        "p"
    } else {
        return Ok(None);
    };
    let rdev = md.rdev();
    Ok(Some(json!({
        "path": dst,
        "type": typ,
        "major": nix::sys::stat::major(rdev),
        "minor": nix::sys::stat::minor(rdev),
        "fileMode": md.mode() & 0o7777,
        "uid": md.uid(),
        "gid": md.gid(),
    })))
}

/// The cgroup rule allowing `d` with `access`.
fn device_rule(d: &Value, access: &str) -> Value {
    json!({"allow": true, "type": d["type"], "major": d["major"], "minor": d["minor"], "access": access})
}

/// dockerd's DevicesFromPath: the node at `host` (a symlink resolved) as
/// `ctr`, or every node below a directory (`ctr` replacing its prefix).
fn devices_from_path(host: &str, ctr: &str) -> Result<Vec<Value>> {
    let fail = |why: String| {
        EngineError::Internal(format!(
            "error gathering device information while adding custom device {host:?}: {why}"
        ))
    };
    let mut resolved = std::path::PathBuf::from(host);
    if std::fs::symlink_metadata(host).is_ok_and(|m| m.file_type().is_symlink()) {
        if let Ok(p) = std::fs::canonicalize(host) {
            resolved = p;
        }
    }
    match device_from_path(&resolved, ctr) {
        Ok(Some(d)) => return Ok(vec![d]),
        Ok(None) => {}
        Err(e) => return Err(fail(errno_text(&e))),
    }
    let mut out = Vec::new();
    if resolved.is_dir() {
        // Like filepath.Walk: lexical order, symlinks not followed, entries
        // that cannot be read skipped.
        let mut stack = vec![resolved.clone()];
        while let Some(dir) = stack.pop() {
            let Ok(rd) = std::fs::read_dir(&dir) else {
                continue;
            };
            let mut entries: Vec<_> = rd.filter_map(|e| e.ok()).map(|e| e.path()).collect();
            entries.sort();
            for p in entries.into_iter().rev() {
                let rel = p.strip_prefix(&resolved).unwrap_or(&p);
                let dst = format!("{}/{}", ctr.trim_end_matches('/'), rel.display());
                match device_from_path(&p, &dst) {
                    Ok(Some(d)) => out.push(d),
                    Ok(None) => {
                        if std::fs::symlink_metadata(&p).is_ok_and(|m| m.is_dir()) {
                            stack.push(p);
                        }
                    }
                    Err(_) => {}
                }
            }
        }
        out.sort_by(|a, b| a["path"].as_str().cmp(&b["path"].as_str()));
    }
    if out.is_empty() {
        return Err(fail("not a device node".into()));
    }
    Ok(out)
}

/// Every device node under the host's /dev, for `--privileged`.
pub fn host_devices() -> Result<Vec<Value>> {
    host_devices_under(std::path::Path::new("/dev"), "/dev")
}

/// containerd's oci.HostDevices (what dockerd gives a privileged
/// container): char and block nodes below `dir` (named under `ctr`), in
/// name order, skipping fifos, `console`, symlinks and the pts, shm, fd,
/// mqueue, .lxc, .lxd-mounts and .udev directories; an entry that vanished
/// meanwhile is skipped, any other error fails.
fn host_devices_under(dir: &std::path::Path, ctr: &str) -> Result<Vec<Value>> {
    let fail = |p: &std::path::Path, e: std::io::Error| {
        EngineError::Internal(format!(
            "error gathering host devices for a privileged container: {}: {}",
            p.display(),
            errno_text(&e)
        ))
    };
    let mut entries: Vec<std::fs::DirEntry> = std::fs::read_dir(dir)
        .map_err(|e| fail(dir, e))?
        .collect::<std::io::Result<_>>()
        .map_err(|e| fail(dir, e))?;
    entries.sort_by_key(|e| e.file_name());
    let mut out = Vec::new();
    for e in entries {
        let name = e.file_name();
        let name = name.to_string_lossy();
        let path = e.path();
        let dst = format!("{}/{name}", ctr.trim_end_matches('/'));
        let ft = match e.file_type() {
            Ok(ft) => ft,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
            Err(err) => return Err(fail(&path, err)),
        };
        if ft.is_dir() {
            if !matches!(
                &*name,
                "pts" | "shm" | "fd" | "mqueue" | ".lxc" | ".lxd-mounts" | ".udev"
            ) {
                out.extend(host_devices_under(&path, &dst)?);
            }
            continue;
        }
        if name == "console" {
            continue;
        }
        match device_from_path(&path, &dst) {
            Ok(Some(d)) if d["type"] != "p" => out.push(d),
            Ok(_) => {}
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => return Err(fail(&path, err)),
        }
    }
    Ok(out)
}

/// The `linux.devices` of a privileged container, as dockerd builds them:
/// every host device, then each `HostConfig.Devices` mapping whose
/// container path differs from its host path (the others are already
/// there), with "rwm" whatever its CgroupPermissions (all are allowed).
fn privileged_devices(hc: &Value) -> Result<Vec<Value>> {
    if !hc["Devices"].is_null() && !hc["Devices"].is_array() {
        // The same 400 as unprivileged.
        devices(hc)?;
    }
    let mut nodes = host_devices()?;
    let mapped: Vec<Value> = hc["Devices"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|d| {
                    let host = d["PathOnHost"].as_str().unwrap_or("");
                    let ctr = d["PathInContainer"].as_str().unwrap_or("");
                    !ctr.is_empty() && ctr != host
                })
                .map(|d| {
                    let mut d = d.clone();
                    d["CgroupPermissions"] = json!("rwm");
                    d
                })
                .collect()
        })
        .unwrap_or_default();
    if !mapped.is_empty() {
        let (user_nodes, _) = devices(&json!({ "Devices": mapped }))?;
        nodes.extend(user_nodes);
    }
    Ok(nodes)
}

/// `HostConfig.Devices` (host nodes, as `linux.devices`) and the cgroup
/// rules allowing them plus `HostConfig.DeviceCgroupRules`, as dockerd
/// builds them. A missing host path is dockerd's 500 error.
pub fn devices(hc: &Value) -> Result<(Vec<Value>, Vec<Value>)> {
    let mut nodes = Vec::new();
    let mut rules = Vec::new();
    let list = match &hc["Devices"] {
        Value::Null => &[][..],
        Value::Array(a) => a.as_slice(),
        _ => {
            return Err(EngineError::BadRequest(
                "HostConfig.Devices must be an array of {PathOnHost, PathInContainer, CgroupPermissions}".into(),
            ))
        }
    };
    for d in list {
        let field = |k: &str| -> Result<&str> {
            match &d[k] {
                Value::Null => Ok(""),
                Value::String(s) => Ok(s.as_str()),
                _ => Err(EngineError::BadRequest(format!(
                    "HostConfig.Devices: {k} must be a string"
                ))),
            }
        };
        let host = field("PathOnHost")?;
        if host.is_empty() {
            return Err(EngineError::BadRequest(
                "HostConfig.Devices: PathOnHost must be set".into(),
            ));
        }
        let ctr = match field("PathInContainer")? {
            "" => host,
            c => c,
        };
        if !ctr.starts_with('/') {
            return Err(EngineError::BadRequest(format!(
                "invalid device path in container {ctr:?}: it must be absolute"
            )));
        }
        let access = match field("CgroupPermissions")? {
            "" => "rwm",
            a => a,
        };
        if access.len() > 3 || !access.chars().all(|c| "rwm".contains(c)) {
            return Err(EngineError::BadRequest(format!(
                "invalid device mode: {access}"
            )));
        }
        for n in devices_from_path(host, ctr)? {
            rules.push(device_rule(&n, access));
            nodes.push(n);
        }
    }
    for r in crate::util::json_strings(&hc["DeviceCgroupRules"]) {
        rules.push(parse_cgroup_rule(&r)?);
    }
    if !hc["DeviceCgroupRules"].is_null() && !hc["DeviceCgroupRules"].is_array() {
        return Err(EngineError::BadRequest(
            "HostConfig.DeviceCgroupRules must be an array of strings".into(),
        ));
    }
    Ok((nodes, rules))
}

/// One `--device-cgroup-rule` (`TYPE MAJOR:MINOR ACCESS`, `*` for any
/// number: -1 in the spec), as dockerd's regexp
/// `^([acb]) ([0-9]+|\*):([0-9]+|\*) ([rwm]{1,3})$` accepts it.
pub fn parse_cgroup_rule(rule: &str) -> Result<Value> {
    let bad = || EngineError::BadRequest(format!("invalid device cgroup rule format: '{rule}'"));
    let parts: Vec<&str> = rule.split(' ').collect();
    let [typ, nums, access] = parts.as_slice() else {
        return Err(bad());
    };
    if !["a", "b", "c"].contains(typ) {
        return Err(bad());
    }
    if access.is_empty() || access.len() > 3 || !access.chars().all(|c| "rwm".contains(c)) {
        return Err(bad());
    }
    let (ma, mi) = nums.split_once(':').ok_or_else(bad)?;
    let num = |s: &str| -> Result<i64> {
        if s == "*" {
            return Ok(-1);
        }
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        s.parse::<i64>().map_err(|_| {
            EngineError::BadRequest(format!(
                "invalid major/minor value in device cgroup rule format: '{rule}'"
            ))
        })
    };
    Ok(json!({"allow": true, "type": typ, "major": num(ma)?, "minor": num(mi)?, "access": access}))
}

/// `HostConfig.GroupAdd` as gids, the way runc's GetAdditionalGroups (and
/// so dockerd) resolves them: an entry matching a group's name or gid in
/// the container's /etc/group takes that group's gid, else it must be a
/// number in 0..=2^31-1. Duplicates are dropped; order is kept.
pub fn additional_gids(groups: &[String], etc_group: Option<&str>) -> Result<Vec<u32>> {
    let entries: Vec<(&str, u32)> = etc_group
        .unwrap_or("")
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let mut f = l.split(':');
            let name = f.next()?;
            let _pw = f.next();
            let gid = f.next()?.trim().parse::<u32>().ok()?;
            Some((name, gid))
        })
        .collect();
    let mut out: Vec<u32> = Vec::new();
    for g in groups {
        let found = entries
            .iter()
            .find(|(n, gid)| *n == g || gid.to_string() == *g)
            .map(|(_, gid)| *gid);
        let gid = match found {
            Some(gid) => gid,
            None => {
                let n = g.parse::<i64>().map_err(|_| {
                    EngineError::Internal(format!(
                        "Unable to find group {g}: no matching entries in group file"
                    ))
                })?;
                if !(0..=i64::from(i32::MAX)).contains(&n) {
                    return Err(EngineError::Internal(format!(
                        "uids and gids must be in range 0-{}",
                        i32::MAX
                    )));
                }
                n as u32
            }
        };
        if !out.contains(&gid) {
            out.push(gid);
        }
    }
    Ok(out)
}

/// Whether resolving `GroupAdd` needs the container's /etc/group (some
/// entry is not a plain number).
pub fn group_add_needs_names(hc: &Value) -> bool {
    crate::util::json_strings(&hc["GroupAdd"])
        .iter()
        .any(|g| g.parse::<u32>().is_err())
}

/// Reads `/etc/group` of a rootfs given as its (snapshot) mounts: mounted
/// read-only in a fresh directory under `scratch`, read with symlinks
/// resolved inside the root, unmounted. `Ok(None)`: the file is missing.
pub fn read_etc_group(
    mounts: &[orca_proto::types::Mount],
    scratch: &std::path::Path,
) -> Result<Option<String>> {
    let [m] = mounts else {
        return Err(EngineError::internal(format!(
            "reading /etc/group: {} rootfs mounts (expected one)",
            mounts.len()
        )));
    };
    std::fs::create_dir_all(scratch)?;
    let dir = scratch.join(format!("group-{}", crate::util::random_hex(8)));
    std::fs::create_dir(&dir)?;
    struct Guard<'a>(&'a std::path::Path, bool);
    impl Drop for Guard<'_> {
        fn drop(&mut self) {
            if self.1 {
                let _ = nix::mount::umount2(self.0, nix::mount::MntFlags::MNT_DETACH);
            }
            let _ = std::fs::remove_dir(self.0);
        }
    }
    let mut g = Guard(&dir, false);
    crate::archive::mount_one(m, &dir, false)?;
    g.1 = true;
    let rel = match crate::archive::resolve_in_root(&dir, "/etc/group", true) {
        Ok(r) => r,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(EngineError::internal(format!("reading /etc/group: {e}"))),
    };
    match std::fs::read(dir.join(rel)) {
        Ok(b) => Ok(Some(String::from_utf8_lossy(&b).into_owned())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(EngineError::internal(format!("reading /etc/group: {e}"))),
    }
}

/// The runtime spec (config.json) for a container.
pub fn build(i: &SpecInput<'_>) -> Result<Value> {
    let (uid, gid) = parse_user(i.user)?;
    let hc = i.host;
    let privileged = hc["Privileged"].as_bool().unwrap_or(false);
    let caps = capabilities(
        privileged,
        &crate::util::json_strings(&hc["CapAdd"]),
        &crate::util::json_strings(&hc["CapDrop"]),
    )?;
    let shm_size = match hc["ShmSize"].as_i64().unwrap_or(0) {
        n if n > 0 => n,
        _ => 67108864,
    };
    let shm_opt = format!("size={shm_size}");
    let sys_ro: &[&str] = if privileged {
        &["nosuid", "noexec", "nodev"]
    } else {
        &["nosuid", "noexec", "nodev", "ro"]
    };
    let mut mounts = vec![
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
        mount("/sys", "sysfs", "sysfs", sys_ro),
        mount(
            "/sys/fs/cgroup",
            "cgroup",
            "cgroup",
            if privileged {
                &["nosuid", "noexec", "nodev"]
            } else {
                &["ro", "nosuid", "noexec", "nodev"]
            },
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
            &["nosuid", "noexec", "nodev", "mode=1777", &shm_opt],
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
    let modes = NsModes::of(hc)?;
    match modes.ipc {
        // No /dev/shm at all.
        "none" => mounts.retain(|m| m["destination"] != "/dev/shm"),
        // The host's /dev/shm, or the host-side tmpfs others can join.
        "host" | "shareable" => {
            let src = if modes.ipc == "host" {
                "/dev/shm"
            } else {
                i.shm_path
            };
            if !src.is_empty() {
                for m in mounts.iter_mut() {
                    if m["destination"] == "/dev/shm" {
                        *m = bind_mount(src, "/dev/shm", false, "rprivate", true);
                    }
                }
            }
        }
        // private, and `container:<x>` until its start binds the target's.
        _ => {}
    }
    // User mounts replace default mounts at the same destination.
    let mut user = user_mounts(hc)?;
    for v in i.volume_mounts {
        if user.iter().any(|u| u["destination"] == v["destination"]) {
            return Err(EngineError::BadRequest(format!(
                "Duplicate mount point: {}",
                v["destination"].as_str().unwrap_or("")
            )));
        }
        user.push(v.clone());
    }
    mounts.retain(|m| !user.iter().any(|u| u["destination"] == m["destination"]));
    mounts.extend(user);
    // Parents before children (dockerd sorts mounts by depth), so a volume
    // or bind on /etc does not hide /etc/hosts and friends.
    mounts.sort_by_key(|m| {
        m["destination"]
            .as_str()
            .unwrap_or("")
            .trim_end_matches('/')
            .matches('/')
            .count()
    });
    let mut devices = vec![
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
    let user_nodes = if privileged {
        devices = vec![json!({"allow": true, "access": "rwm"})];
        privileged_devices(hc)?
    } else {
        let (user_nodes, user_rules) = self::devices(hc)?;
        devices.extend(user_rules);
        user_nodes
    };
    let mut resources = resources(hc)?;
    resources["devices"] = json!(devices);
    let gids = additional_gids(&crate::util::json_strings(&hc["GroupAdd"]), i.etc_group)?;
    let nnp = no_new_privileges(hc)?;
    // Docker's default seccomp profile for these capabilities, a custom one,
    // or none (unconfined, privileged).
    let seccomp = crate::seccomp_profile::for_container(
        &crate::util::json_strings(&hc["SecurityOpt"]),
        privileged,
        &caps,
    )?;
    let mut spec = json!({
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
            "noNewPrivileges": nnp,
            "oomScoreAdj": hc["OomScoreAdj"].as_i64().unwrap_or(0),
        },
        "root": {"path": "rootfs", "readonly": hc["ReadonlyRootfs"].as_bool().unwrap_or(false)},
        "hostname": i.hostname,
        "mounts": mounts,
        "linux": {
            "resources": resources,
            "cgroupsPath": format!("{}/{}", i.cgroup_parent.trim_end_matches('/'), i.id),
            "namespaces": [
                {"type": "mount"},
                {"type": "network"},
                {"type": "uts"},
                {"type": "pid"},
                {"type": "ipc"},
            ],
            "maskedPaths": if privileged { &[][..] } else { MASKED_PATHS },
            "readonlyPaths": if privileged { &[][..] } else { READONLY_PATHS },
        },
    });
    if let Some(sc) = seccomp {
        spec["linux"]["seccomp"] = sc;
    }
    if !user_nodes.is_empty() {
        spec["linux"]["devices"] = json!(user_nodes);
    }
    if !gids.is_empty() {
        spec["process"]["user"]["additionalGids"] = json!(gids);
    }
    // `--network host`: no network namespace (the host's is shared); the
    // same for `--pid host`, `--uts host` (no hostname then) and `--ipc host`.
    if let Some(ns) = spec["linux"]["namespaces"].as_array_mut() {
        ns.retain(|n| {
            !((n["type"] == "network" && hc["NetworkMode"] == "host")
                || (n["type"] == "pid" && modes.pid == "host")
                || (n["type"] == "uts" && modes.uts == "host")
                || (n["type"] == "ipc" && modes.ipc == "host"))
        });
    }
    if modes.uts == "host" {
        if let Some(o) = spec.as_object_mut() {
            o.remove("hostname");
        }
    }
    let rl = rlimits(&hc["Ulimits"])?;
    if !rl.is_empty() {
        spec["process"]["rlimits"] = json!(rl);
    }
    let sysctls = sysctls(hc)?;
    if !sysctls.is_empty() {
        spec["linux"]["sysctl"] = json!(sysctls);
    }
    if hc["Init"].as_bool().unwrap_or(false) {
        add_init(&mut spec)?;
    }
    Ok(spec)
}

/// `HostConfig.PidMode`, `UTSMode` and `IpcMode`, checked as dockerd does
/// (`container:` targets are resolved at start).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NsModes<'a> {
    /// "", "host" or "container:<x>".
    pub pid: &'a str,
    /// "" or "host".
    pub uts: &'a str,
    /// "" (= private), "private", "shareable", "host", "none" or "container:<x>".
    pub ipc: &'a str,
}

impl<'a> NsModes<'a> {
    pub fn of(hc: &'a Value) -> Result<Self> {
        let get = |k: &str| -> Result<&'a str> {
            match &hc[k] {
                Value::Null => Ok(""),
                Value::String(s) => Ok(s.as_str()),
                _ => Err(EngineError::BadRequest(format!(
                    "HostConfig.{k} must be a string"
                ))),
            }
        };
        let container = |v: &str| v.strip_prefix("container:").is_some_and(|t| !t.is_empty());
        let m = NsModes {
            pid: get("PidMode")?,
            uts: get("UTSMode")?,
            ipc: get("IpcMode")?,
        };
        if !(m.ipc.is_empty()
            || ["private", "shareable", "host", "none"].contains(&m.ipc)
            || container(m.ipc))
        {
            return Err(EngineError::BadRequest(format!(
                "invalid IPC mode: {}",
                m.ipc
            )));
        }
        if !(m.pid.is_empty() || m.pid == "host" || container(m.pid)) {
            return Err(EngineError::BadRequest(format!(
                "invalid PID mode: {}",
                m.pid
            )));
        }
        if !(m.uts.is_empty() || m.uts == "host") {
            return Err(EngineError::BadRequest(format!(
                "invalid UTS mode: {}",
                m.uts
            )));
        }
        Ok(m)
    }
}

/// Where Docker puts its init inside the container.
const INIT_DEST: &str = "/sbin/docker-init";

/// dockerd's `docker-init` (tini; Debian's docker.io links it to
/// tini-static): the first `docker-init` on PATH, then the usual places.
pub fn find_init() -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    std::env::split_paths(&path)
        .chain(["/usr/libexec/docker".into(), "/usr/lib/docker".into()])
        .map(|d| d.join("docker-init"))
        .find(|p| p.is_file())
        .and_then(|p| std::fs::canonicalize(p).ok())
}

/// `HostConfig.Init`: the init binary bind-mounted read-only at
/// /sbin/docker-init and run as `docker-init -- ARGS…` (it reaps zombies and
/// forwards signals to the command), as dockerd does.
fn add_init(spec: &mut Value) -> Result<()> {
    let init = find_init().ok_or_else(|| {
        EngineError::BadRequest(
            "HostConfig.Init: no docker-init binary found on orcad's PATH (Debian: the tini package's tini-static, linked as docker-init by docker.io)".into(),
        )
    })?;
    if let Some(m) = spec["mounts"].as_array_mut() {
        m.push(json!({
            "destination": INIT_DEST,
            "type": "bind",
            "source": init.display().to_string(),
            "options": ["bind", "ro"],
        }));
    }
    let args = spec["process"]["args"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let mut with_init = vec![json!(INIT_DEST), json!("--")];
    with_init.extend(args);
    spec["process"]["args"] = json!(with_init);
    Ok(())
}

/// `HostConfig.Sysctls`: only namespaced ones, as dockerd allows them (IPC
/// sysctls, `fs.mqueue.*`, and `net.*` when the container has its own
/// network namespace).
fn sysctls(hc: &Value) -> Result<serde_json::Map<String, Value>> {
    let mut out = serde_json::Map::new();
    let Some(m) = hc["Sysctls"].as_object() else {
        if hc["Sysctls"].is_null() {
            return Ok(out);
        }
        return Err(EngineError::BadRequest(
            "HostConfig.Sysctls must be an object of strings".into(),
        ));
    };
    const IPC: &[&str] = &[
        "kernel.msgmax",
        "kernel.msgmnb",
        "kernel.msgmni",
        "kernel.sem",
        "kernel.shmall",
        "kernel.shmmax",
        "kernel.shmmni",
        "kernel.shm_rmid_forced",
    ];
    let host_net = hc["NetworkMode"] == "host";
    let host_ipc = hc["IpcMode"] == "host";
    for (k, v) in m {
        let Some(v) = v.as_str() else {
            return Err(EngineError::BadRequest(format!(
                "HostConfig.Sysctls: the value of {k:?} must be a string"
            )));
        };
        let ipc_key = IPC.contains(&k.as_str()) || k.starts_with("fs.mqueue.");
        if ipc_key && host_ipc {
            return Err(EngineError::BadRequest(format!(
                "sysctl {k:?} not allowed in host IPC namespace"
            )));
        }
        let allowed = ipc_key || (k.starts_with("net.") && !host_net);
        if !allowed {
            return Err(EngineError::BadRequest(if k.starts_with("net.") {
                format!("sysctl {k:?} not allowed in host network namespace")
            } else {
                format!("sysctl {k:?} is not allowed")
            }));
        }
        out.insert(k.clone(), json!(v));
    }
    Ok(out)
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

    #[test]
    fn caps_resources_and_mounts() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let c = capabilities(false, &[], &s(&["ALL"])).unwrap();
        assert!(c.is_empty());
        let c = capabilities(false, &s(&["net_admin"]), &s(&["CHOWN"])).unwrap();
        assert!(
            c.contains(&"CAP_NET_ADMIN".to_string()) || !host_caps().contains(&"CAP_NET_ADMIN")
        );
        assert!(!c.contains(&"CAP_CHOWN".to_string()));
        assert!(capabilities(false, &s(&["NOPE"]), &[]).is_err());

        let r = resources(&json!({"Memory": 67108864, "NanoCpus": 500000000i64, "PidsLimit": 20}))
            .unwrap();
        assert_eq!(r["memory"]["limit"], 67108864);
        assert_eq!(r["cpu"]["quota"], 50000);
        assert_eq!(r["cpu"]["period"], 100000);
        assert_eq!(r["pids"]["limit"], 20);
        assert!(matches!(
            resources(&json!({"Memory": 1024})),
            Err(EngineError::BadRequest(_))
        ));
        assert!(matches!(
            resources(&json!({"NanoCpus": 500000000i64, "CpuPeriod": 1000})),
            Err(EngineError::BadRequest(_))
        ));
        assert!(matches!(
            resources(&json!({"BlkioWeight": 10})),
            Err(EngineError::NotImplemented(_))
        ));

        let m = user_mounts(&json!({"Binds": ["/tmp:/data:ro"], "Tmpfs": {"/t": "size=1m,exec"}}))
            .unwrap();
        assert_eq!(m[0]["options"], json!(["rbind", "rprivate", "ro"]));
        assert_eq!(m[1]["options"], json!(["nosuid", "nodev", "size=1m"]));
        // Volumes are resolved by volumes::plan, not here.
        assert!(user_mounts(&json!({"Binds": ["vol:/data", "/anon"]}))
            .unwrap()
            .is_empty());
        assert!(matches!(
            user_mounts(&json!({"Binds": ["/tmp:/a", "/tmp:/a"]})),
            Err(EngineError::BadRequest(_))
        ));
        assert_eq!(
            rlimits(&json!([{"Name": "nofile", "Soft": 1, "Hard": 2}])).unwrap()[0]["type"],
            "RLIMIT_NOFILE"
        );
        assert!(no_new_privileges(&json!({"SecurityOpt": ["no-new-privileges:true"]})).unwrap());
        assert!(no_new_privileges(&json!({"SecurityOpt": ["apparmor=x"]})).is_err());
    }

    #[test]
    fn privileged_host_devices_like_containerd() {
        use nix::sys::stat::{makedev, mknod, Mode, SFlag};
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        let node = |p: &str, kind: SFlag, ma: u64, mi: u64| {
            mknod(
                &r.join(p),
                kind,
                Mode::from_bits_truncate(0o640),
                makedev(ma, mi),
            )
            .unwrap();
        };
        for sub in ["pts", "shm", "fd", "mqueue", ".udev", "net", "mapper"] {
            std::fs::create_dir(r.join(sub)).unwrap();
        }
        node("kmsg", SFlag::S_IFCHR, 1, 11);
        node("loop0", SFlag::S_IFBLK, 7, 0);
        node("console", SFlag::S_IFCHR, 5, 1);
        node("initctl", SFlag::S_IFIFO, 0, 0);
        node("pts/0", SFlag::S_IFCHR, 136, 0);
        node("shm/x", SFlag::S_IFCHR, 1, 3);
        node(".udev/y", SFlag::S_IFCHR, 1, 3);
        node("net/tun", SFlag::S_IFCHR, 10, 200);
        node("mapper/control", SFlag::S_IFCHR, 10, 236);
        std::fs::write(r.join("regular"), "x").unwrap();
        std::os::unix::fs::symlink("loop0", r.join("cdrom")).unwrap();
        std::os::unix::fs::symlink("net", r.join("netlink")).unwrap();
        let got = host_devices_under(r, "/dev").unwrap();
        let summary: Vec<(String, String, u64, u64)> = got
            .iter()
            .map(|d| {
                (
                    d["path"].as_str().unwrap().to_string(),
                    d["type"].as_str().unwrap().to_string(),
                    d["major"].as_u64().unwrap(),
                    d["minor"].as_u64().unwrap(),
                )
            })
            .collect();
        let want: Vec<(String, String, u64, u64)> = [
            ("/dev/kmsg", "c", 1, 11),
            ("/dev/loop0", "b", 7, 0),
            ("/dev/mapper/control", "c", 10, 236),
            ("/dev/net/tun", "c", 10, 200),
        ]
        .iter()
        .map(|(p, t, a, b)| (p.to_string(), t.to_string(), *a, *b))
        .collect();
        assert_eq!(summary, want);
        assert_eq!(got[0]["fileMode"], 0o640);
        let e = host_devices_under(&r.join("nope"), "/dev").unwrap_err();
        assert!(e.to_string().contains("privileged"), "{e}");
    }

    #[test]
    fn privileged_spec_has_every_host_device() {
        let hc = json!({"Privileged": true, "Devices": [
            {"PathOnHost": "/dev/null", "PathInContainer": "/dev/null", "CgroupPermissions": "r"},
            {"PathOnHost": "/dev/null", "PathInContainer": "/dev/mynull", "CgroupPermissions": "r"},
        ]});
        let nodes = privileged_devices(&hc).unwrap();
        let paths: Vec<&str> = nodes.iter().map(|d| d["path"].as_str().unwrap()).collect();
        assert!(
            paths.contains(&"/dev/null") && paths.contains(&"/dev/mynull"),
            "{paths:?}"
        );
        assert_eq!(paths.iter().filter(|p| **p == "/dev/null").count(), 1);
        assert!(!paths
            .iter()
            .any(|p| p.starts_with("/dev/pts/") || *p == "/dev/console"));
        if std::path::Path::new("/dev/kmsg").exists() {
            assert!(paths.contains(&"/dev/kmsg"));
        }
        assert!(privileged_devices(&json!({"Devices": "x"})).is_err());
    }

    #[test]
    fn devices_rules_and_groups() {
        let (nodes, rules) = devices(&json!({
            "Devices": [{"PathOnHost": "/dev/null", "PathInContainer": "/dev/mynull", "CgroupPermissions": "rw"}],
            "DeviceCgroupRules": ["c 42:* rmw", "a *:* m"],
        }))
        .unwrap();
        assert_eq!(nodes.len(), 1);
        assert_eq!(nodes[0]["path"], "/dev/mynull");
        assert_eq!(
            (
                nodes[0]["type"].as_str(),
                nodes[0]["major"].as_u64(),
                nodes[0]["minor"].as_u64()
            ),
            (Some("c"), Some(1), Some(3))
        );
        assert_eq!(nodes[0]["uid"], 0);
        assert!(nodes[0]["fileMode"].as_u64().is_some());
        assert_eq!(
            rules[0],
            json!({"allow": true, "type": "c", "major": 1, "minor": 3, "access": "rw"})
        );
        assert_eq!(
            rules[1],
            json!({"allow": true, "type": "c", "major": 42, "minor": -1, "access": "rmw"})
        );
        assert_eq!(rules[2]["type"], "a");
        // A directory: every node below it, the container prefix replacing
        // the host one.
        let d = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/dev/null", d.path().join("ignored-link")).unwrap();
        std::fs::create_dir(d.path().join("sub")).unwrap();
        nix::unistd::mkfifo(
            &d.path().join("sub/p"),
            nix::sys::stat::Mode::from_bits_truncate(0o640),
        )
        .unwrap();
        std::fs::write(d.path().join("file"), "x").unwrap();
        let (nodes, _) = devices(&json!({"Devices": [{"PathOnHost": d.path().to_str().unwrap(), "PathInContainer": "/dev/mine", "CgroupPermissions": "rwm"}]})).unwrap();
        assert_eq!(nodes.len(), 1, "{nodes:?}");
        assert_eq!(nodes[0]["path"], "/dev/mine/sub/p");
        assert_eq!(nodes[0]["type"], "p");
        assert_eq!(nodes[0]["fileMode"], 0o640);
        let e = devices(&json!({"Devices": [{"PathOnHost": "/dev/nope-orca", "PathInContainer": "/dev/x", "CgroupPermissions": "rwm"}]})).unwrap_err();
        assert!(matches!(e, EngineError::Internal(_)));
        assert_eq!(e.to_string(), "error gathering device information while adding custom device \"/dev/nope-orca\": no such file or directory");
        let e =
            devices(&json!({"Devices": [{"PathOnHost": d.path().join("file").to_str().unwrap()}]}))
                .unwrap_err();
        assert!(e.to_string().ends_with(": not a device node"), "{e}");
        for bad in ["c 1:2", "x 1:2 r", "c 1:2 rwx", "c -1:2 r", "c 1:2  r"] {
            assert!(
                matches!(parse_cgroup_rule(bad), Err(EngineError::BadRequest(_))),
                "{bad}"
            );
        }
        assert!(matches!(
            devices(&json!({"Devices": [{"PathOnHost": "/dev/null", "CgroupPermissions": "rx"}]})),
            Err(EngineError::BadRequest(_))
        ));

        let group = "root:x:0:\n# comment\naudio:x:29:alice\n1234:x:77:\nbad line\n";
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(
            additional_gids(&s(&["1234", "audio", "29", "5"]), Some(group)).unwrap(),
            vec![77, 29, 5]
        );
        assert_eq!(additional_gids(&s(&["1234"]), None).unwrap(), vec![1234]);
        let e = additional_gids(&s(&["video"]), Some(group)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "Unable to find group video: no matching entries in group file"
        );
        assert!(additional_gids(&s(&["2147483648"]), None).is_err());
        assert!(group_add_needs_names(&json!({"GroupAdd": ["1", "audio"]})));
        assert!(!group_add_needs_names(&json!({"GroupAdd": ["1", "2"]})));
    }
}
