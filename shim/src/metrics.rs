//! `Stats`: the container's cgroup figures as containerd's metrics types
//! (`io.containerd.cgroups.v1.Metrics` or `io.containerd.cgroups.v2.Metrics`).

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use containerd_shim_protos::cgroups::metrics as v1;
use containerd_shim_protos::cgroups_v2::metrics as v2;
use containerd_shim_protos::protobuf::well_known_types::any::Any;

use crate::error::{Error, Result};
use crate::events::to_any;

const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// `/proc/<pid>/cgroup` parsed: controller (or "" for the unified
/// hierarchy) → path.
pub fn parse_proc_cgroup(text: &str) -> HashMap<String, String> {
    let mut m = HashMap::new();
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(ctrls), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        if ctrls.is_empty() {
            m.insert(String::new(), path.to_string());
        }
        for c in ctrls.split(',').filter(|c| !c.is_empty()) {
            m.insert(c.trim_start_matches("name=").to_string(), path.to_string());
        }
    }
    m
}

fn read_u64(p: &Path) -> u64 {
    fs::read_to_string(p)
        .ok()
        .and_then(|s| {
            let s = s.trim();
            if s == "max" {
                Some(u64::MAX)
            } else {
                s.parse().ok()
            }
        })
        .unwrap_or(0)
}

fn read_kv(p: &Path) -> HashMap<String, u64> {
    fs::read_to_string(p)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            Some((it.next()?.to_string(), it.next()?.parse().ok()?))
        })
        .collect()
}

fn v1_dir(cg: &HashMap<String, String>, ctrl: &str) -> Option<PathBuf> {
    let p = cg.get(ctrl)?;
    let dir = Path::new(CGROUP_ROOT)
        .join(ctrl)
        .join(p.trim_start_matches('/'));
    dir.exists().then_some(dir)
}

/// The metrics of the cgroup(s) `pid` is in.
pub fn collect(pid: u32) -> Result<Any> {
    let text = fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .map_err(|e| Error::NotFound(format!("cgroup of process {pid} ({e})")))?;
    let cg = parse_proc_cgroup(&text);
    let unified_only = cg.len() == 1 && cg.contains_key("");
    if unified_only {
        Ok(to_any(&collect_v2(&cg)))
    } else {
        Ok(to_any(&collect_v1(&cg)))
    }
}

fn collect_v1(cg: &HashMap<String, String>) -> v1::Metrics {
    let mut m = v1::Metrics::new();
    if let Some(d) = v1_dir(cg, "pids") {
        let mut p = v1::PidsStat::new();
        p.current = read_u64(&d.join("pids.current"));
        let max = read_u64(&d.join("pids.max"));
        p.limit = if max == u64::MAX { 0 } else { max };
        m.pids = Some(p).into();
    }
    if let Some(d) = v1_dir(cg, "cpuacct") {
        let mut c = v1::CPUStat::new();
        let mut u = v1::CPUUsage::new();
        u.total = read_u64(&d.join("cpuacct.usage"));
        u.per_cpu = fs::read_to_string(d.join("cpuacct.usage_percpu"))
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|s| s.parse().ok())
            .collect();
        let st = read_kv(&d.join("cpuacct.stat"));
        // USER_HZ ticks → nanoseconds.
        u.user = st.get("user").copied().unwrap_or(0) * 10_000_000;
        u.kernel = st.get("system").copied().unwrap_or(0) * 10_000_000;
        c.usage = Some(u).into();
        if let Some(cd) = v1_dir(cg, "cpu") {
            let t = read_kv(&cd.join("cpu.stat"));
            let mut th = v1::Throttle::new();
            th.periods = t.get("nr_periods").copied().unwrap_or(0);
            th.throttled_periods = t.get("nr_throttled").copied().unwrap_or(0);
            th.throttled_time = t.get("throttled_time").copied().unwrap_or(0);
            c.throttling = Some(th).into();
        }
        m.cpu = Some(c).into();
    }
    if let Some(d) = v1_dir(cg, "memory") {
        let mut ms = v1::MemoryStat::new();
        let st = read_kv(&d.join("memory.stat"));
        let g = |k: &str| st.get(k).copied().unwrap_or(0);
        ms.cache = g("cache");
        ms.rss = g("rss");
        ms.rss_huge = g("rss_huge");
        ms.mapped_file = g("mapped_file");
        ms.dirty = g("dirty");
        ms.writeback = g("writeback");
        ms.pg_pg_in = g("pgpgin");
        ms.pg_pg_out = g("pgpgout");
        ms.pg_fault = g("pgfault");
        ms.pg_maj_fault = g("pgmajfault");
        ms.inactive_anon = g("inactive_anon");
        ms.active_anon = g("active_anon");
        ms.inactive_file = g("inactive_file");
        ms.active_file = g("active_file");
        ms.unevictable = g("unevictable");
        ms.hierarchical_memory_limit = g("hierarchical_memory_limit");
        ms.hierarchical_swap_limit = g("hierarchical_memsw_limit");
        ms.total_cache = g("total_cache");
        ms.total_rss = g("total_rss");
        ms.total_rss_huge = g("total_rss_huge");
        ms.total_mapped_file = g("total_mapped_file");
        ms.total_dirty = g("total_dirty");
        ms.total_writeback = g("total_writeback");
        ms.total_pg_pg_in = g("total_pgpgin");
        ms.total_pg_pg_out = g("total_pgpgout");
        ms.total_pg_fault = g("total_pgfault");
        ms.total_pg_maj_fault = g("total_pgmajfault");
        ms.total_inactive_anon = g("total_inactive_anon");
        ms.total_active_anon = g("total_active_anon");
        ms.total_inactive_file = g("total_inactive_file");
        ms.total_active_file = g("total_active_file");
        ms.total_unevictable = g("total_unevictable");
        let entry = |prefix: &str| {
            let mut e = v1::MemoryEntry::new();
            e.usage = read_u64(&d.join(format!("{prefix}usage_in_bytes")));
            e.limit = read_u64(&d.join(format!("{prefix}limit_in_bytes")));
            e.max = read_u64(&d.join(format!("{prefix}max_usage_in_bytes")));
            e.failcnt = read_u64(&d.join(format!("{prefix}failcnt")));
            e
        };
        ms.usage = Some(entry("memory.")).into();
        ms.swap = Some(entry("memory.memsw.")).into();
        ms.kernel = Some(entry("memory.kmem.")).into();
        ms.kernel_tcp = Some(entry("memory.kmem.tcp.")).into();
        m.memory = Some(ms).into();
        let oc = read_kv(&d.join("memory.oom_control"));
        let mut o = v1::MemoryOomControl::new();
        o.oom_kill_disable = oc.get("oom_kill_disable").copied().unwrap_or(0);
        o.under_oom = oc.get("under_oom").copied().unwrap_or(0);
        o.oom_kill = oc.get("oom_kill").copied().unwrap_or(0);
        m.memory_oom_control = Some(o).into();
    }
    m
}

fn collect_v2(cg: &HashMap<String, String>) -> v2::Metrics {
    let mut m = v2::Metrics::new();
    let Some(p) = cg.get("") else { return m };
    let d = Path::new(CGROUP_ROOT).join(p.trim_start_matches('/'));
    let mut pids = v2::PidsStat::new();
    pids.current = read_u64(&d.join("pids.current"));
    let max = read_u64(&d.join("pids.max"));
    pids.limit = if max == u64::MAX { 0 } else { max };
    m.pids = Some(pids).into();
    let st = read_kv(&d.join("cpu.stat"));
    let g = |k: &str| st.get(k).copied().unwrap_or(0);
    let mut c = v2::CPUStat::new();
    c.usage_usec = g("usage_usec");
    c.user_usec = g("user_usec");
    c.system_usec = g("system_usec");
    c.nr_periods = g("nr_periods");
    c.nr_throttled = g("nr_throttled");
    c.throttled_usec = g("throttled_usec");
    m.cpu = Some(c).into();
    let ms_kv = read_kv(&d.join("memory.stat"));
    let g = |k: &str| ms_kv.get(k).copied().unwrap_or(0);
    let mut ms = v2::MemoryStat::new();
    ms.anon = g("anon");
    ms.file = g("file");
    ms.kernel_stack = g("kernel_stack");
    ms.slab = g("slab");
    ms.sock = g("sock");
    ms.shmem = g("shmem");
    ms.file_mapped = g("file_mapped");
    ms.file_dirty = g("file_dirty");
    ms.file_writeback = g("file_writeback");
    ms.inactive_anon = g("inactive_anon");
    ms.active_anon = g("active_anon");
    ms.usage = read_u64(&d.join("memory.current"));
    ms.usage_limit = read_u64(&d.join("memory.max"));
    ms.swap_usage = read_u64(&d.join("memory.swap.current"));
    m.memory = Some(ms).into();
    m
}

/// The v1 memory cgroup directory of `pid`, for OOM notifications.
pub fn memory_cgroup_dir(pid: u32) -> Option<PathBuf> {
    let text = fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    v1_dir(&parse_proc_cgroup(&text), "memory")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_cgroup_hybrid_and_unified() {
        let t = "12:pids:/ns/c1\n4:cpu,cpuacct:/ns/c1\n1:name=systemd:/x\n0::/ns/c1\n";
        let m = parse_proc_cgroup(t);
        assert_eq!(m["pids"], "/ns/c1");
        assert_eq!(m["cpuacct"], "/ns/c1");
        assert_eq!(m["cpu"], "/ns/c1");
        assert_eq!(m["systemd"], "/x");
        assert_eq!(m[""], "/ns/c1");
        let u = parse_proc_cgroup("0::/a/b\n");
        assert_eq!(u.len(), 1);
    }
}
