//! cgroup v2 (unified hierarchy), after runc's `libcontainer/cgroups/fs2`.

use super::{
    blkio_weight_to_io_weight, devices, files, shares_to_weight, swap_v2_value, v1, CgroupError,
    CgroupPaths, UNIFIED_KEY,
};
use oci_spec::runtime::{LinuxBlockIo, LinuxCpu, LinuxMemory, LinuxResources};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// mkdir -p `dir`, enabling every available controller in `cgroup.subtree_control` of each
/// ancestor on the way (failures are ignored, like runc: they surface later when a limit is
/// written to a file that does not exist).
pub(super) fn create(dir: &Path) -> Result<(), CgroupError> {
    let mut chain: Vec<PathBuf> = dir.ancestors().map(Path::to_path_buf).collect();
    chain.reverse();
    // The hierarchy root is the shallowest directory that has cgroup.controllers.
    let Some(root_idx) = chain
        .iter()
        .position(|p| files::exists(p, "cgroup.controllers"))
    else {
        return files::mkdir_all(dir);
    };
    for i in root_idx..chain.len() {
        let cur = &chain[i];
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
        if i + 1 < chain.len() {
            enable_controllers(cur);
        }
    }
    Ok(())
}

fn enable_controllers(dir: &Path) {
    let Ok(Some(avail)) = files::read_opt(dir, "cgroup.controllers") else {
        return;
    };
    let ctrls: Vec<String> = avail.split_whitespace().map(|c| format!("+{c}")).collect();
    if ctrls.is_empty() {
        return;
    }
    if files::write(dir, "cgroup.subtree_control", &ctrls.join(" ")).is_err() {
        for c in &ctrls {
            if let Err(e) = files::write(dir, "cgroup.subtree_control", c) {
                tracing::debug!(error = %e, "cannot enable controller");
            }
        }
    }
}

/// runc's numToStr: 0 = unset (""), -1 = "max".
fn num_to_str(v: i64) -> Option<String> {
    match v {
        0 => None,
        -1 => Some("max".into()),
        v => Some(v.to_string()),
    }
}

pub(super) fn apply(paths: &CgroupPaths, r: &LinuxResources) -> Result<(), CgroupError> {
    let dir = paths
        .get(UNIFIED_KEY)
        .ok_or_else(|| CgroupError::NotAvailable {
            what: "resources".into(),
            reason: "no cgroup2 directory".into(),
        })?;
    if let Some(c) = r.cpu() {
        set_cpu(dir, c)?;
        v1::set_cpuset(dir, c)?;
    }
    if let Some(m) = r.memory() {
        v1::warn_kernel_memory(m);
        set_memory(dir, m)?;
    }
    if let Some(p) = r.pids() {
        let limit = if p.limit() > 0 {
            p.limit().to_string()
        } else {
            "max".to_string()
        };
        files::write(dir, "pids.max", &limit)?;
    }
    if let Some(b) = r.block_io() {
        set_io(dir, b)?;
    }
    if let Some(h) = r.hugepage_limits() {
        for l in h {
            let ps = v1::check_page_size(l)?;
            let v = if l.limit() < 0 {
                "max".to_string()
            } else {
                l.limit().to_string()
            };
            files::write(dir, &format!("hugetlb.{ps}.max"), &v)?;
            let rsvd = format!("hugetlb.{ps}.rsvd.max");
            if files::exists(dir, &rsvd) {
                files::write(dir, &rsvd, &v)?;
            }
        }
    }
    if let Some(n) = r.network() {
        if n.class_id().is_some() || n.priorities().as_ref().is_some_and(|p| !p.is_empty()) {
            tracing::warn!(
                "net_cls/net_prio do not exist on cgroup v2; ignoring linux.resources.network"
            );
        }
    }
    if let Some(rdma) = r.rdma() {
        if !rdma.is_empty() {
            v1::set_rdma(dir, rdma)?;
        }
    }
    if let Some(d) = r.devices() {
        let rules = devices::full_rule_list(d)?;
        devices::apply_v2(dir, &rules)?;
    }
    // Last, so that explicit unified values override the converted ones (like runc).
    if let Some(u) = r.unified() {
        let mut keys: Vec<&String> = u.keys().collect();
        keys.sort();
        for key in keys {
            v1::check_unified_key(key)?;
            files::write(dir, key, &u[key])?;
        }
    }
    Ok(())
}

fn set_cpu(dir: &Path, c: &LinuxCpu) -> Result<(), CgroupError> {
    if c.realtime_runtime().unwrap_or(0) != 0 || c.realtime_period().unwrap_or(0) != 0 {
        return Err(CgroupError::Unsupported(
            "realtime cpu runtime/period cannot be set on cgroup v2".into(),
        ));
    }
    if let Some(idle) = c.idle() {
        if idle != 0 || files::exists(dir, "cpu.idle") {
            files::write(dir, "cpu.idle", &idle.to_string())?;
        }
    }
    if let Some(shares) = c.shares().filter(|s| *s != 0) {
        files::write(dir, "cpu.weight", &shares_to_weight(shares).to_string())?;
    }
    let quota = c.quota().unwrap_or(0);
    let period = c.period().unwrap_or(0);
    if quota != 0 || period != 0 {
        let mut v = if quota > 0 {
            quota.to_string()
        } else {
            "max".to_string()
        };
        if period != 0 {
            v.push_str(&format!(" {period}"));
        }
        files::write(dir, "cpu.max", &v)?;
    }
    if let Some(b) = c.burst() {
        if b != 0 || files::exists(dir, "cpu.max.burst") {
            files::write(dir, "cpu.max.burst", &b.to_string())?;
        }
    }
    Ok(())
}

fn set_memory(dir: &Path, m: &LinuxMemory) -> Result<(), CgroupError> {
    let limit = m.limit().unwrap_or(0);
    let swap_req = m.swap().unwrap_or(0);
    if limit != 0 || swap_req != 0 {
        let swap = swap_v2_value(swap_req, limit)?;
        let mut swap_str = num_to_str(swap);
        if swap_str.is_none() && swap == 0 && swap_req > 0 {
            // memory == memory+swap: no swap at all.
            swap_str = Some("0".into());
        }
        if let Some(s) = swap_str {
            if let Err(e) = files::write_raw(dir, "memory.swap.max", &s) {
                // Without swap accounting, "max" and "0" are what we have anyway.
                let benign = e.kind() == std::io::ErrorKind::NotFound && (s == "max" || s == "0");
                if !benign {
                    return Err(files::write_error(dir, "memory.swap.max", &s, e));
                }
            }
        }
        if let Some(l) = num_to_str(limit) {
            files::write(dir, "memory.max", &l)?;
        }
    }
    if let Some(res) = m.reservation().and_then(num_to_str) {
        files::write(dir, "memory.low", &res)?;
    }
    if m.swappiness().is_some() {
        tracing::warn!("memory.swappiness does not exist on cgroup v2; ignoring it");
    }
    if m.disable_oom_killer() == Some(true) {
        tracing::warn!("disableOOMKiller is not supported on cgroup v2; ignoring it");
    }
    Ok(())
}

fn set_io(dir: &Path, b: &LinuxBlockIo) -> Result<(), CgroupError> {
    let weight = b.weight().unwrap_or(0);
    if weight != 0 {
        // BFQ takes the v1 scale directly; otherwise convert to io.weight.
        if let Err(e) = files::write_raw(dir, "io.bfq.weight", &weight.to_string()) {
            if e.kind() != std::io::ErrorKind::NotFound {
                return Err(files::write_error(
                    dir,
                    "io.bfq.weight",
                    &weight.to_string(),
                    e,
                ));
            }
            let v = blkio_weight_to_io_weight(weight).to_string();
            files::write(dir, "io.weight", &v)?;
        }
    }
    for wd in b.weight_device().as_deref().unwrap_or(&[]) {
        if let Some(w) = wd.weight().filter(|w| *w != 0) {
            let v = format!("{}:{} {}", wd.major(), wd.minor(), w);
            if files::exists(dir, "io.bfq.weight") {
                files::write(dir, "io.bfq.weight", &v)?;
            } else {
                return Err(CgroupError::NotAvailable {
                    what: format!("per-device blkio weight {v}"),
                    reason: format!(
                        "{} does not exist (only the BFQ scheduler supports it on cgroup v2)",
                        dir.join("io.bfq.weight").display()
                    ),
                });
            }
        }
    }
    let throttles = [
        ("rbps", b.throttle_read_bps_device()),
        ("wbps", b.throttle_write_bps_device()),
        ("riops", b.throttle_read_iops_device()),
        ("wiops", b.throttle_write_iops_device()),
    ];
    for (key, list) in throttles {
        for t in list.as_deref().unwrap_or(&[]) {
            files::write(
                dir,
                "io.max",
                &format!("{}:{} {}={}", t.major(), t.minor(), key, t.rate()),
            )?;
        }
    }
    Ok(())
}

// ---- freezer ----------------------------------------------------------------------------

fn events_frozen(dir: &Path) -> Result<bool, CgroupError> {
    let ev = files::read(dir, "cgroup.events")?;
    Ok(ev
        .lines()
        .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["frozen", "1"]))
}

fn require_freeze_file(dir: &Path) -> Result<(), CgroupError> {
    if files::exists(dir, "cgroup.freeze") {
        Ok(())
    } else if !dir.exists() {
        Err(CgroupError::Removed(dir.to_path_buf()))
    } else {
        Err(CgroupError::Unsupported(format!(
            "{} does not exist (the cgroup v2 freezer needs Linux 5.2+)",
            dir.join("cgroup.freeze").display()
        )))
    }
}

/// Write 1 to cgroup.freeze and poll cgroup.events until it says `frozen 1` (10 s at most).
pub(super) fn freeze(dir: &Path) -> Result<(), CgroupError> {
    require_freeze_file(dir)?;
    files::write(dir, "cgroup.freeze", "1")?;
    for _ in 0..1000 {
        if events_frozen(dir)? {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = files::write(dir, "cgroup.freeze", "0");
    Err(CgroupError::Freezer {
        op: "freezing",
        path: dir.to_path_buf(),
        reason: "cgroup.events did not report frozen within 10s; thawed it again".into(),
    })
}

pub(super) fn thaw(dir: &Path) -> Result<(), CgroupError> {
    require_freeze_file(dir)?;
    files::write(dir, "cgroup.freeze", "0")?;
    for _ in 0..1000 {
        if !events_frozen(dir)? {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    Err(CgroupError::Freezer {
        op: "thawing",
        path: dir.to_path_buf(),
        reason: "cgroup.events still reports frozen".into(),
    })
}

pub(super) fn is_frozen(dir: &Path) -> Result<bool, CgroupError> {
    match files::read_opt(dir, "cgroup.freeze")? {
        None => {
            require_freeze_file(dir)?;
            Ok(false)
        }
        Some(s) if s.trim() == "1" => events_frozen(dir),
        Some(_) => Ok(false),
    }
}
