//! cgroup v1 (and the v1 side of hybrid hosts), after runc's `libcontainer/cgroups/fs`.

use super::{devices, files, CgroupError, CgroupMode, CgroupPaths, UNIFIED_KEY};
use oci_spec::runtime::{
    LinuxBlockIo, LinuxCpu, LinuxHugepageLimit, LinuxMemory, LinuxNetwork, LinuxResources,
};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// mkdir -p a cpuset directory, copying cpuset.cpus / cpuset.mems from the nearest ancestor
/// into every level that has them empty (a new v1 cpuset cgroup starts empty, and a task cannot
/// join a cpuset cgroup without CPUs or memory nodes).
pub(super) fn create_cpuset(dir: &Path) -> Result<(), CgroupError> {
    // Find the hierarchy root: the deepest existing ancestor whose parent has no cpuset files.
    let mut chain: Vec<PathBuf> = dir.ancestors().map(Path::to_path_buf).collect();
    chain.reverse(); // "/" ... dir
    let Some(root_idx) = chain.iter().rposition(|p| {
        p.exists()
            && files::exists(p, "cpuset.cpus")
            && !p
                .parent()
                .is_some_and(|pp| files::exists(pp, "cpuset.cpus"))
    }) else {
        // Not a cpuset hierarchy we recognise: just create it.
        return files::mkdir_all(dir);
    };
    for i in root_idx + 1..chain.len() {
        let cur = &chain[i];
        let parent = &chain[i - 1];
        if !cur.exists() {
            match std::fs::create_dir(cur) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(source) => {
                    return Err(CgroupError::Io {
                        op: "creating directory",
                        path: cur.clone(),
                        source,
                    })
                }
            }
        }
        for file in ["cpuset.cpus", "cpuset.mems"] {
            if files::read(cur, file)?.is_empty() {
                let v = files::read(parent, file)?;
                if !v.is_empty() {
                    files::write(cur, file, &v)?;
                }
            }
        }
    }
    Ok(())
}

fn dir_for<'a>(paths: &'a CgroupPaths, key: &str, what: &str) -> Result<&'a Path, CgroupError> {
    paths.get(key).ok_or_else(|| CgroupError::NotAvailable {
        what: what.to_string(),
        reason: format!("the {key} cgroup controller is not mounted"),
    })
}

pub(super) fn memory_is_set(m: &LinuxMemory) -> bool {
    m.limit().is_some()
        || m.reservation().is_some()
        || m.swap().is_some()
        || m.swappiness().is_some()
        || m.disable_oom_killer() == Some(true)
}

fn cpu_is_set(c: &LinuxCpu) -> bool {
    c.shares().unwrap_or(0) != 0
        || c.quota().unwrap_or(0) != 0
        || c.period().unwrap_or(0) != 0
        || c.realtime_runtime().unwrap_or(0) != 0
        || c.realtime_period().unwrap_or(0) != 0
        || c.burst().is_some()
        || c.idle().is_some()
}

fn cpuset_is_set(c: &LinuxCpu) -> bool {
    c.cpus().as_deref().is_some_and(|s| !s.is_empty())
        || c.mems().as_deref().is_some_and(|s| !s.is_empty())
}

pub(super) fn apply(paths: &CgroupPaths, r: &LinuxResources) -> Result<(), CgroupError> {
    if let Some(m) = r.memory() {
        warn_kernel_memory(m);
        if memory_is_set(m) {
            set_memory(dir_for(paths, "memory", "memory limits")?, m)?;
        }
    }
    if let Some(c) = r.cpu() {
        if cpu_is_set(c) {
            set_cpu(dir_for(paths, "cpu", "cpu limits")?, c)?;
        }
        if cpuset_is_set(c) {
            set_cpuset(dir_for(paths, "cpuset", "cpuset")?, c)?;
        }
    }
    if let Some(p) = r.pids() {
        let limit = if p.limit() > 0 {
            p.limit().to_string()
        } else {
            "max".to_string()
        };
        files::write(dir_for(paths, "pids", "pids limit")?, "pids.max", &limit)?;
    }
    if let Some(b) = r.block_io() {
        set_blkio(paths.get("blkio"), b)?;
    }
    if let Some(h) = r.hugepage_limits() {
        if !h.is_empty() {
            set_hugetlb(dir_for(paths, "hugetlb", "hugepage limits")?, h)?;
        }
    }
    if let Some(n) = r.network() {
        set_network(paths, n)?;
    }
    if let Some(rdma) = r.rdma() {
        if !rdma.is_empty() {
            set_rdma(dir_for(paths, "rdma", "rdma limits")?, rdma)?;
        }
    }
    if let Some(u) = r.unified() {
        set_unified(paths, u)?;
    }
    if let Some(d) = r.devices() {
        let rules = devices::full_rule_list(d)?;
        devices::apply_v1(dir_for(paths, "devices", "device rules")?, &rules)?;
    }
    Ok(())
}

pub(super) fn warn_kernel_memory(m: &LinuxMemory) {
    if m.kernel().is_some() {
        tracing::warn!("linux.resources.memory.kernel is deprecated and ignored");
    }
    if m.kernel_tcp().is_some() {
        tracing::warn!("linux.resources.memory.kernelTCP is deprecated and ignored");
    }
}

fn set_memory(dir: &Path, m: &LinuxMemory) -> Result<(), CgroupError> {
    const LIMIT: &str = "memory.limit_in_bytes";
    const MEMSW: &str = "memory.memsw.limit_in_bytes";
    let limit = m.limit().unwrap_or(0);
    let mut swap = m.swap().unwrap_or(0);
    let have_memsw = files::exists(dir, MEMSW);
    // Unlimited memory with swap unset means unlimited swap too (if swap accounting exists).
    if limit == -1 && swap == 0 && have_memsw {
        swap = -1;
    }
    if swap != 0 && !have_memsw {
        tracing::warn!(
            swap,
            "swap accounting is not available ({MEMSW} missing); ignoring the swap limit"
        );
        swap = 0;
    }
    let mut done = false;
    if limit != 0 && swap != 0 {
        // Order the two writes so the kernel's "memsw >= limit" check holds at each step.
        let cur = files::read_u64(dir, LIMIT)?;
        if swap == -1 || cur < swap as u64 {
            files::write(dir, MEMSW, &swap.to_string())?;
            write_limit(dir, limit)?;
            done = true;
        }
    }
    if !done {
        if limit != 0 {
            write_limit(dir, limit)?;
        }
        if swap != 0 {
            files::write(dir, MEMSW, &swap.to_string())?;
        }
    }
    if let Some(res) = m.reservation() {
        if res != 0 {
            files::write(dir, "memory.soft_limit_in_bytes", &res.to_string())?;
        }
    }
    if let Some(s) = m.swappiness() {
        if s > 100 {
            return Err(CgroupError::InvalidValue {
                what: format!("memory swappiness {s}"),
                reason: "must be between 0 and 100".into(),
            });
        }
        files::write(dir, "memory.swappiness", &s.to_string())?;
    }
    if m.disable_oom_killer() == Some(true) {
        files::write(dir, "memory.oom_control", "1")?;
    }
    Ok(())
}

fn write_limit(dir: &Path, limit: i64) -> Result<(), CgroupError> {
    const LIMIT: &str = "memory.limit_in_bytes";
    let value = limit.to_string();
    match files::write_raw(dir, LIMIT, &value) {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
            let usage = files::read_u64_or_zero(dir, "memory.usage_in_bytes").unwrap_or(0);
            Err(CgroupError::InvalidValue {
                what: format!("memory limit {value} for {}", dir.join(LIMIT).display()),
                reason: format!("the kernel refused it (EBUSY); current usage is {usage} bytes"),
            })
        }
        Err(e) => Err(files::write_error(dir, LIMIT, &value, e)),
    }
}

fn set_cpu(dir: &Path, c: &LinuxCpu) -> Result<(), CgroupError> {
    // Realtime period/runtime depend on each other: retry the period after the runtime if the
    // kernel refuses it first (EINVAL).
    let rt_runtime = c.realtime_runtime().unwrap_or(0);
    let mut pending_rt_period = None;
    if let Some(p) = c.realtime_period().filter(|p| *p != 0) {
        let v = p.to_string();
        if let Err(e) = files::write_raw(dir, "cpu.rt_period_us", &v) {
            if e.raw_os_error() != Some(libc::EINVAL) || rt_runtime == 0 {
                return Err(files::write_error(dir, "cpu.rt_period_us", &v, e));
            }
            pending_rt_period = Some(v);
        }
    }
    if rt_runtime != 0 {
        files::write(dir, "cpu.rt_runtime_us", &rt_runtime.to_string())?;
        if let Some(v) = pending_rt_period {
            files::write(dir, "cpu.rt_period_us", &v)?;
        }
    }

    if let Some(shares) = c.shares().filter(|s| *s != 0) {
        files::write(dir, "cpu.shares", &shares.to_string())?;
        let got = files::read_u64(dir, "cpu.shares")?;
        if got != shares {
            return Err(CgroupError::InvalidValue {
                what: format!("cpu shares {shares}"),
                reason: format!("the kernel clamped it to {got} (allowed range is 2 to 262144)"),
            });
        }
    }

    let quota = c.quota().unwrap_or(0);
    let mut pending_period = None;
    if let Some(p) = c.period().filter(|p| *p != 0) {
        let v = p.to_string();
        if let Err(e) = files::write_raw(dir, "cpu.cfs_period_us", &v) {
            // A smaller period can be refused while the old quota is in place.
            if e.raw_os_error() != Some(libc::EINVAL) || quota == 0 {
                return Err(files::write_error(dir, "cpu.cfs_period_us", &v, e));
            }
            pending_period = Some(v);
        }
    }
    if quota != 0 {
        files::write(dir, "cpu.cfs_quota_us", &quota.to_string())?;
        if let Some(v) = pending_period {
            files::write(dir, "cpu.cfs_period_us", &v)?;
        }
    }
    if let Some(b) = c.burst() {
        if b != 0 || files::exists(dir, "cpu.cfs_burst_us") {
            files::write(dir, "cpu.cfs_burst_us", &b.to_string())?;
        }
    }
    if let Some(idle) = c.idle() {
        if idle != 0 || files::exists(dir, "cpu.idle") {
            files::write(dir, "cpu.idle", &idle.to_string())?;
        }
    }
    Ok(())
}

pub(super) fn set_cpuset(dir: &Path, c: &LinuxCpu) -> Result<(), CgroupError> {
    if let Some(cpus) = c.cpus().as_deref().filter(|s| !s.is_empty()) {
        files::write(dir, "cpuset.cpus", cpus)?;
    }
    if let Some(mems) = c.mems().as_deref().filter(|s| !s.is_empty()) {
        files::write(dir, "cpuset.mems", mems)?;
    }
    Ok(())
}

fn set_blkio(dir: Option<&Path>, b: &LinuxBlockIo) -> Result<(), CgroupError> {
    let weight = b.weight().unwrap_or(0);
    let leaf = b.leaf_weight().unwrap_or(0);
    let weight_devices = b.weight_device().as_deref().unwrap_or(&[]);
    let throttles: [(&str, &Option<Vec<oci_spec::runtime::LinuxThrottleDevice>>); 4] = [
        (
            "blkio.throttle.read_bps_device",
            b.throttle_read_bps_device(),
        ),
        (
            "blkio.throttle.write_bps_device",
            b.throttle_write_bps_device(),
        ),
        (
            "blkio.throttle.read_iops_device",
            b.throttle_read_iops_device(),
        ),
        (
            "blkio.throttle.write_iops_device",
            b.throttle_write_iops_device(),
        ),
    ];
    let wants_weight = weight != 0
        || leaf != 0
        || weight_devices
            .iter()
            .any(|w| w.weight().unwrap_or(0) != 0 || w.leaf_weight().unwrap_or(0) != 0);
    let wants_throttle = throttles
        .iter()
        .any(|(_, t)| t.as_ref().is_some_and(|t| !t.is_empty()));
    let Some(dir) = dir else {
        if wants_weight || wants_throttle {
            return Err(CgroupError::NotAvailable {
                what: "block IO limits".into(),
                reason: "the blkio cgroup controller is not mounted".into(),
            });
        }
        return Ok(());
    };

    // CFQ exposes blkio.weight; BFQ blkio.bfq.weight; neither exists without a proportional
    // IO scheduler.
    let (weight_file, weight_device_file) = if files::exists(dir, "blkio.weight") {
        (Some("blkio.weight"), Some("blkio.weight_device"))
    } else if files::exists(dir, "blkio.bfq.weight") {
        (Some("blkio.bfq.weight"), Some("blkio.bfq.weight_device"))
    } else {
        (None, None)
    };
    let no_weight = |what: &str| CgroupError::NotAvailable {
        what: what.to_string(),
        reason: format!(
            "neither blkio.weight nor blkio.bfq.weight exists in {} (no CFQ/BFQ IO scheduler)",
            dir.display()
        ),
    };

    if weight != 0 {
        let f = weight_file.ok_or_else(|| no_weight(&format!("blkio weight {weight}")))?;
        files::write(dir, f, &weight.to_string())?;
    } else if weight_file.is_none() && b.weight().is_some() {
        tracing::warn!(
            dir = %dir.display(),
            "blkio weight files do not exist on this kernel; ignoring weight 0"
        );
    }
    if leaf != 0 {
        files::write(dir, "blkio.leaf_weight", &leaf.to_string())?;
    }
    for wd in weight_devices {
        let dev = format!("{}:{}", wd.major(), wd.minor());
        if let Some(w) = wd.weight().filter(|w| *w != 0) {
            let f = weight_device_file
                .ok_or_else(|| no_weight(&format!("blkio weight {w} for device {dev}")))?;
            files::write(dir, f, &format!("{dev} {w}"))?;
        }
        if let Some(w) = wd.leaf_weight().filter(|w| *w != 0) {
            files::write(dir, "blkio.leaf_weight_device", &format!("{dev} {w}"))?;
        }
    }
    for (file, list) in throttles {
        for t in list.as_deref().unwrap_or(&[]) {
            files::write(
                dir,
                file,
                &format!("{}:{} {}", t.major(), t.minor(), t.rate()),
            )?;
        }
    }
    Ok(())
}

/// Check a hugepage size string ("2MB", "1GB", "64KB") before it becomes part of a file name.
pub(super) fn check_page_size(h: &LinuxHugepageLimit) -> Result<&str, CgroupError> {
    let ps = h.page_size().as_str();
    let ok = ps.len() > 2 && ps.ends_with('B') && ps.chars().all(|c| c.is_ascii_alphanumeric());
    if ok {
        Ok(ps)
    } else {
        Err(CgroupError::InvalidValue {
            what: format!("hugepage size {ps:?}"),
            reason: "expected a size like 2MB or 1GB".into(),
        })
    }
}

fn set_hugetlb(dir: &Path, limits: &[LinuxHugepageLimit]) -> Result<(), CgroupError> {
    for h in limits {
        let ps = check_page_size(h)?;
        let file = format!("hugetlb.{ps}.limit_in_bytes");
        if !files::exists(dir, &file) {
            return Err(CgroupError::NotAvailable {
                what: format!("hugepage limit for {ps}"),
                reason: format!("{} does not exist", dir.join(&file).display()),
            });
        }
        let v = h.limit().to_string();
        files::write(dir, &file, &v)?;
        let rsvd = format!("hugetlb.{ps}.rsvd.limit_in_bytes");
        if files::exists(dir, &rsvd) {
            files::write(dir, &rsvd, &v)?;
        }
    }
    Ok(())
}

fn set_network(paths: &CgroupPaths, n: &LinuxNetwork) -> Result<(), CgroupError> {
    if let Some(id) = n.class_id() {
        match paths.get("net_cls") {
            Some(dir) => files::write(dir, "net_cls.classid", &id.to_string())?,
            None => tracing::warn!(
                class_id = id,
                "net_cls is not mounted; ignoring linux.resources.network.classID"
            ),
        }
    }
    if let Some(prios) = n.priorities().as_deref().filter(|p| !p.is_empty()) {
        match paths.get("net_prio") {
            Some(dir) => {
                for p in prios {
                    files::write(
                        dir,
                        "net_prio.ifpriomap",
                        &format!("{} {}", p.name(), p.priority()),
                    )?;
                }
            }
            None => tracing::warn!(
                "net_prio is not mounted; ignoring linux.resources.network.priorities"
            ),
        }
    }
    Ok(())
}

pub(super) fn set_rdma(
    dir: &Path,
    rdma: &HashMap<String, oci_spec::runtime::LinuxRdma>,
) -> Result<(), CgroupError> {
    for (dev, l) in rdma {
        let mut v = dev.clone();
        if let Some(h) = l.hca_handles() {
            v.push_str(&format!(" hca_handle={h}"));
        }
        if let Some(o) = l.hca_objects() {
            v.push_str(&format!(" hca_object={o}"));
        }
        files::write(dir, "rdma.max", &v)?;
    }
    Ok(())
}

/// Reject unified keys that are not plain file names.
pub(super) fn check_unified_key(key: &str) -> Result<(), CgroupError> {
    if key.is_empty() || key.contains('/') || key == "." || key == ".." {
        return Err(CgroupError::InvalidValue {
            what: format!("unified key {key:?}"),
            reason: "must be a cgroup file name".into(),
        });
    }
    Ok(())
}

/// linux.resources.unified on a v1 or hybrid host: only possible for files that the hybrid
/// cgroup2 directory actually has.
fn set_unified(paths: &CgroupPaths, u: &HashMap<String, String>) -> Result<(), CgroupError> {
    let mut keys: Vec<&String> = u.keys().collect();
    keys.sort();
    for key in keys {
        check_unified_key(key)?;
        let dir = match (paths.mode, paths.get(UNIFIED_KEY)) {
            (CgroupMode::Hybrid, Some(d)) if files::exists(d, key) => d,
            _ => {
                return Err(CgroupError::NotAvailable {
                    what: format!("unified resource {key:?}"),
                    reason: "this host uses cgroup v1 and its cgroup2 hierarchy has no such file"
                        .into(),
                })
            }
        };
        files::write(dir, key, &u[key])?;
    }
    Ok(())
}

// ---- freezer ----------------------------------------------------------------------------

const FREEZER_STATE: &str = "freezer.state";

/// Write FROZEN and wait until the state reads back FROZEN (a v1 cgroup can linger in
/// FREEZING while tasks keep appearing; like runc, retry with an occasional thaw and short
/// sleeps, and thaw again if it never settles).
pub(super) fn freeze(dir: &Path) -> Result<(), CgroupError> {
    const ATTEMPTS: u32 = 1000;
    for i in 0..ATTEMPTS {
        if i % 50 == 49 {
            let _ = files::write(dir, FREEZER_STATE, "THAWED");
            std::thread::sleep(Duration::from_millis(10));
        }
        files::write(dir, FREEZER_STATE, "FROZEN")?;
        if i % 25 == 24 {
            std::thread::sleep(Duration::from_micros(10));
        }
        let state = files::read(dir, FREEZER_STATE)?;
        match state.as_str() {
            "FROZEN" => {
                if i > 1 {
                    tracing::debug!(retries = i, "cgroup frozen after retries");
                }
                return Ok(());
            }
            "FREEZING" => continue,
            other => {
                return Err(CgroupError::Freezer {
                    op: "freezing",
                    path: dir.to_path_buf(),
                    reason: format!("unexpected freezer state {other:?}"),
                })
            }
        }
    }
    let _ = files::write(dir, FREEZER_STATE, "THAWED");
    Err(CgroupError::Freezer {
        op: "freezing",
        path: dir.to_path_buf(),
        reason: format!("still FREEZING after {ATTEMPTS} attempts; thawed it again"),
    })
}

pub(super) fn thaw(dir: &Path) -> Result<(), CgroupError> {
    files::write(dir, FREEZER_STATE, "THAWED")?;
    for _ in 0..1000 {
        if files::read(dir, FREEZER_STATE)? == "THAWED" {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    Err(CgroupError::Freezer {
        op: "thawing",
        path: dir.to_path_buf(),
        reason: "the state did not read back THAWED".into(),
    })
}

/// True if this cgroup itself is frozen (not merely frozen through an ancestor).
pub(super) fn is_frozen(dir: &Path) -> Result<bool, CgroupError> {
    for _ in 0..1000 {
        match files::read(dir, FREEZER_STATE)?.as_str() {
            "THAWED" => return Ok(false),
            "FROZEN" => {
                return match files::read_opt(dir, "freezer.self_freezing")? {
                    Some(s) => Ok(s.trim() == "1"),
                    None => Ok(true),
                }
            }
            // Transitional; wait for a stable state.
            "FREEZING" => std::thread::sleep(Duration::from_millis(1)),
            other => {
                return Err(CgroupError::Parse {
                    path: dir.join(FREEZER_STATE),
                    msg: format!("unexpected state {other:?}"),
                })
            }
        }
    }
    Ok(false)
}
