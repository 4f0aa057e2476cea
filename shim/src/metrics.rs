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

// Out of line: keeps the (v1-host) hot `collect` small in the shim's
// hot-code region (shim/link-order).
#[inline(never)]
fn collect_v2(cg: &HashMap<String, String>) -> v2::Metrics {
    let Some(p) = cg.get("") else {
        return v2::Metrics::new();
    };
    let dir = Path::new(CGROUP_ROOT).join(p.trim_start_matches('/'));
    stat_v2(&dir, hugepage_sizes())
}

/// One cgroup v2 directory read through a reused buffer (one allocation
/// for every file of a Stats call).
struct V2Dir<'a> {
    dir: &'a Path,
    buf: String,
}

impl V2Dir<'_> {
    /// The text of `name`, or `None` when it is missing or unreadable
    /// (controller not enabled, PSI off, older kernel).
    fn read(&mut self, name: &str) -> Option<&str> {
        use std::io::Read;
        self.buf.clear();
        let mut f = fs::File::open(self.dir.join(name)).ok()?;
        f.read_to_string(&mut self.buf).ok()?;
        Some(&self.buf)
    }

    /// A single-value file as containerd's getStatFileContentUint64 reads
    /// it: "max" is u64::MAX, missing or unparsable is 0.
    fn u64(&mut self, name: &str) -> u64 {
        self.read(name).map(parse_v2_value).unwrap_or(0)
    }

    /// Calls `f` for every "key value" line of a flat-keyed file; false
    /// when the file cannot be read.
    fn kv(&mut self, name: &str, mut f: impl FnMut(&str, u64)) -> bool {
        let Some(text) = self.read(name) else {
            return false;
        };
        for line in text.lines() {
            let mut it = line.split_ascii_whitespace();
            if let (Some(k), Some(v)) = (it.next(), it.next()) {
                f(k, parse_v2_value(v));
            }
        }
        true
    }

    /// A pressure file (`some avg10=.. avg60=.. avg300=.. total=..`, and a
    /// `full` line), or `None` when absent like containerd's
    /// getStatPSIFromFile.
    fn psi(&mut self, name: &str) -> Option<v2::PSIStats> {
        let text = self.read(name)?;
        let mut ps = v2::PSIStats::new();
        for line in text.lines() {
            let mut it = line.split_ascii_whitespace();
            let slot = match it.next() {
                Some("some") => &mut ps.some,
                Some("full") => &mut ps.full,
                _ => continue,
            };
            let mut d = v2::PSIData::new();
            for kv in it {
                let (k, v) = kv.split_once('=')?;
                match k {
                    "avg10" => d.avg10 = parse_decimal(v)?,
                    "avg60" => d.avg60 = parse_decimal(v)?,
                    "avg300" => d.avg300 = parse_decimal(v)?,
                    "total" => d.total = v.parse().ok()?,
                    _ => {}
                }
            }
            *slot = Some(d).into();
        }
        Some(ps)
    }
}

/// A PSI average as the kernel prints it ("%lu.%02lu", e.g. "12.34") as
/// the nearest f64, without `f64::from_str`: its lookup tables would add
/// ≈ 12 KiB of read-only data to every shim's mapped pages.
fn parse_decimal(s: &str) -> Option<f64> {
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    let digits = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
    if !digits(int) || !(frac.is_empty() || digits(frac)) || frac.len() > 9 {
        return None;
    }
    let scale = 10u64.pow(frac.len() as u32);
    let mut n: u64 = int.parse().ok()?;
    n = n.checked_mul(scale)?;
    if !frac.is_empty() {
        n = n.checked_add(frac.parse().ok()?)?;
    }
    if n > 1 << 53 {
        return None;
    }
    // Both exact, so the one division rounds to the nearest f64.
    Some(n as f64 / scale as f64)
}

fn parse_v2_value(s: &str) -> u64 {
    match s.trim() {
        "max" => u64::MAX,
        t => t.parse().unwrap_or(0),
    }
}

/// Sets the `MemoryStat` field named by a memory.stat key (the proto's
/// field names are the kernel's keys); unknown keys are ignored.
fn set_memory_stat(ms: &mut v2::MemoryStat, key: &str, v: u64) {
    let f = match key {
        "anon" => &mut ms.anon,
        "file" => &mut ms.file,
        "kernel_stack" => &mut ms.kernel_stack,
        "slab" => &mut ms.slab,
        "sock" => &mut ms.sock,
        "shmem" => &mut ms.shmem,
        "file_mapped" => &mut ms.file_mapped,
        "file_dirty" => &mut ms.file_dirty,
        "file_writeback" => &mut ms.file_writeback,
        "anon_thp" => &mut ms.anon_thp,
        "inactive_anon" => &mut ms.inactive_anon,
        "active_anon" => &mut ms.active_anon,
        "inactive_file" => &mut ms.inactive_file,
        "active_file" => &mut ms.active_file,
        "unevictable" => &mut ms.unevictable,
        "slab_reclaimable" => &mut ms.slab_reclaimable,
        "slab_unreclaimable" => &mut ms.slab_unreclaimable,
        "pgfault" => &mut ms.pgfault,
        "pgmajfault" => &mut ms.pgmajfault,
        "workingset_refault" => &mut ms.workingset_refault,
        "workingset_activate" => &mut ms.workingset_activate,
        // Linux 5.9 split these two by LRU type; the proto has the sums.
        "workingset_refault_anon" | "workingset_refault_file" => {
            ms.workingset_refault = ms.workingset_refault.saturating_add(v);
            return;
        }
        "workingset_activate_anon" | "workingset_activate_file" => {
            ms.workingset_activate = ms.workingset_activate.saturating_add(v);
            return;
        }
        "workingset_nodereclaim" => &mut ms.workingset_nodereclaim,
        "pgrefill" => &mut ms.pgrefill,
        "pgscan" => &mut ms.pgscan,
        "pgsteal" => &mut ms.pgsteal,
        "pgactivate" => &mut ms.pgactivate,
        "pgdeactivate" => &mut ms.pgdeactivate,
        "pglazyfree" => &mut ms.pglazyfree,
        "pglazyfreed" => &mut ms.pglazyfreed,
        "thp_fault_alloc" => &mut ms.thp_fault_alloc,
        "thp_collapse_alloc" => &mut ms.thp_collapse_alloc,
        _ => return,
    };
    *f = v;
}

/// One io.stat line (`MAJ:MIN rbytes=.. wbytes=.. rios=.. wios=.. dbytes=..
/// dios=..`) as an `IOEntry`; `None` for a malformed line.
fn parse_io_line(line: &str) -> Option<v2::IOEntry> {
    let mut it = line.split_ascii_whitespace();
    let (ma, mi) = it.next()?.split_once(':')?;
    let mut e = v2::IOEntry::new();
    e.major = ma.parse().ok()?;
    e.minor = mi.parse().ok()?;
    for kv in it {
        let Some((k, v)) = kv.split_once('=') else {
            continue;
        };
        let Ok(v) = v.parse() else { continue };
        match k {
            "rbytes" => e.rbytes = v,
            "wbytes" => e.wbytes = v,
            "rios" => e.rios = v,
            "wios" => e.wios = v,
            _ => {}
        }
    }
    Some(e)
}

/// rdma.current / rdma.max lines (`DEV hca_handle=N hca_object=N`, "max"
/// as u32::MAX).
fn parse_rdma(text: &str) -> Vec<v2::RdmaEntry> {
    let mut out = Vec::new();
    for line in text.lines() {
        let parts: [&str; 3] = {
            let mut it = line.split_ascii_whitespace();
            match (it.next(), it.next(), it.next(), it.next()) {
                (Some(a), Some(b), Some(c), None) => [a, b, c],
                _ => continue,
            }
        };
        let mut e = v2::RdmaEntry::new();
        e.device = parts[0].to_string();
        for kv in &parts[1..] {
            let Some((k, v)) = kv.split_once('=') else {
                continue;
            };
            let n = match v {
                "max" => u32::MAX,
                v => match v.parse() {
                    Ok(n) => n,
                    Err(_) => continue,
                },
            };
            match k {
                "hca_handle" => e.hca_handles = n,
                "hca_object" => e.hca_objects = n,
                _ => {}
            }
        }
        out.push(e);
    }
    out
}

/// The host's huge page sizes as cgroup file infixes ("2MB", "1GB"), read
/// once from /sys/kernel/mm/hugepages like containerd's hugePageSizes.
fn hugepage_sizes() -> &'static [String] {
    static SIZES: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    SIZES.get_or_init(|| {
        let mut v: Vec<String> = fs::read_dir("/sys/kernel/mm/hugepages")
            .map(|rd| {
                rd.filter_map(|e| hugepage_size_name(&e.ok()?.file_name().to_string_lossy()))
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    })
}

/// "hugepages-2048kB" → "2MB" (the kernel's hugetlb cgroup naming).
fn hugepage_size_name(dir: &str) -> Option<String> {
    let kb: u64 = dir
        .strip_prefix("hugepages-")?
        .strip_suffix("kB")?
        .parse()
        .ok()?;
    Some(if kb >= 1 << 20 {
        format!("{}GB", kb >> 20)
    } else if kb >= 1 << 10 {
        format!("{}MB", kb >> 10)
    } else {
        format!("{kb}KB")
    })
}

/// The `io.containerd.cgroups.v2.Metrics` of the cgroup v2 directory `dir`,
/// filled as containerd's cgroup2 Manager.Stat does. Missing files leave
/// their fields zero (or their message unset where containerd leaves it nil).
fn stat_v2(dir: &Path, hugepage_sizes: &[String]) -> v2::Metrics {
    let mut d = V2Dir {
        dir,
        buf: String::with_capacity(2048),
    };
    let mut m = v2::Metrics::new();

    let mut pids = v2::PidsStat::new();
    pids.current = d.u64("pids.current");
    pids.limit = d.u64("pids.max");
    m.pids = Some(pids).into();

    let mut c = v2::CPUStat::new();
    d.kv("cpu.stat", |k, v| match k {
        "usage_usec" => c.usage_usec = v,
        "user_usec" => c.user_usec = v,
        "system_usec" => c.system_usec = v,
        "nr_periods" => c.nr_periods = v,
        "nr_throttled" => c.nr_throttled = v,
        "throttled_usec" => c.throttled_usec = v,
        "nr_bursts" => c.nr_bursts = v,
        "burst_usec" => c.burst_usec = v,
        _ => {}
    });
    c.psi = d.psi("cpu.pressure").into();
    m.cpu = Some(c).into();

    let mut ms = v2::MemoryStat::new();
    d.kv("memory.stat", |k, v| set_memory_stat(&mut ms, k, v));
    ms.usage = d.u64("memory.current");
    ms.usage_limit = d.u64("memory.max");
    ms.max_usage = d.u64("memory.peak");
    ms.swap_usage = d.u64("memory.swap.current");
    ms.swap_limit = d.u64("memory.swap.max");
    ms.swap_max_usage = d.u64("memory.swap.peak");
    ms.psi = d.psi("memory.pressure").into();
    m.memory = Some(ms).into();

    let mut ev = v2::MemoryEvents::new();
    let mut any = false;
    d.kv("memory.events", |k, v| {
        any = true;
        match k {
            "low" => ev.low = v,
            "high" => ev.high = v,
            "max" => ev.max = v,
            "oom" => ev.oom = v,
            "oom_kill" => ev.oom_kill = v,
            "oom_group_kill" => ev.oom_group_kill = v,
            _ => {}
        }
    });
    if any {
        m.memory_events = Some(ev).into();
    }

    let mut io = v2::IOStat::new();
    if let Some(text) = d.read("io.stat") {
        io.usage = text.lines().filter_map(parse_io_line).collect();
    }
    io.psi = d.psi("io.pressure").into();
    m.io = Some(io).into();

    let mut rdma = v2::RdmaStat::new();
    rdma.current = d.read("rdma.current").map(parse_rdma).unwrap_or_default();
    rdma.limit = d.read("rdma.max").map(parse_rdma).unwrap_or_default();
    m.rdma = Some(rdma).into();

    m.hugetlb = hugepage_sizes
        .iter()
        .map(|size| {
            let mut h = v2::HugeTlbStat::new();
            h.current = d.u64(&format!("hugetlb.{size}.current"));
            h.max = d.u64(&format!("hugetlb.{size}.max"));
            // hugetlb.<size>.events is "max N": N allocations refused.
            let mut failcnt = 0;
            d.kv(&format!("hugetlb.{size}.events"), |k, v| {
                if k == "max" {
                    failcnt = v;
                }
            });
            h.failcnt = failcnt;
            h.pagesize = size.clone();
            h
        })
        .collect();
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

    /// A cgroup v2 directory as a 6.x kernel writes it (formats from
    /// Documentation/admin-guide/cgroup-v2.rst), values distinct per key.
    fn fake_v2_dir() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        let w = |name: &str, text: &str| fs::write(d.path().join(name), text).unwrap();
        w("pids.current", "7\n");
        w("pids.max", "max\n");
        w(
            "cpu.stat",
            "usage_usec 1000001\nuser_usec 600002\nsystem_usec 400003\n\
             core_sched.force_idle_usec 0\nnr_periods 40\nnr_throttled 5\n\
             throttled_usec 12345\nnr_bursts 2\nburst_usec 77\n",
        );
        w(
            "cpu.pressure",
            "some avg10=1.50 avg60=0.25 avg300=0.00 total=123456\n\
             full avg10=0.50 avg60=0.00 avg300=0.00 total=6543\n",
        );
        w(
            "memory.stat",
            "anon 1001\nfile 1002\nkernel 9999\nkernel_stack 1003\npagetables 9998\n\
             sec_pagetables 0\npercpu 9997\nsock 1005\nvmalloc 0\nshmem 1006\n\
             zswap 0\nzswapped 0\nfile_mapped 1007\nfile_dirty 1008\n\
             file_writeback 1009\nswapcached 0\nanon_thp 1010\nfile_thp 0\n\
             shmem_thp 0\ninactive_anon 1011\nactive_anon 1012\n\
             inactive_file 1013\nactive_file 1014\nunevictable 1015\n\
             slab_reclaimable 1016\nslab_unreclaimable 1017\nslab 1004\n\
             workingset_refault_anon 1\nworkingset_refault_file 1019\n\
             workingset_activate_anon 21\nworkingset_activate_file 1000\n\
             workingset_restore_anon 0\nworkingset_restore_file 0\n\
             workingset_nodereclaim 1022\npgscan 1024\npgsteal 1025\n\
             pgscan_kswapd 0\npgscan_direct 0\npgsteal_kswapd 0\n\
             pgsteal_direct 0\npgfault 1018\npgmajfault 1019\npgrefill 1023\n\
             pgactivate 1026\npgdeactivate 1027\npglazyfree 1028\n\
             pglazyfreed 1029\nthp_fault_alloc 1030\nthp_collapse_alloc 1031\n",
        );
        w("memory.current", "5242880\n");
        w("memory.max", "67108864\n");
        w("memory.peak", "8388608\n");
        w("memory.swap.current", "4096\n");
        w("memory.swap.max", "max\n");
        w("memory.swap.peak", "8192\n");
        w(
            "memory.pressure",
            "some avg10=0.00 avg60=0.00 avg300=0.00 total=11\n\
             full avg10=0.00 avg60=0.00 avg300=0.00 total=22\n",
        );
        w(
            "memory.events",
            "low 1\nhigh 2\nmax 3\noom 4\noom_kill 5\noom_group_kill 6\n",
        );
        w(
            "io.stat",
            "8:16 rbytes=1459200 wbytes=314773504 rios=192 wios=353 dbytes=0 dios=0\n\
             8:0 rbytes=90430464 wbytes=299008000 rios=8950 wios=1252 dbytes=50331648 dios=3021\n\
             garbage line\n",
        );
        w(
            "rdma.current",
            "mlx4_0 hca_handle=1 hca_object=20\nocrdma1 hca_handle=0 hca_object=0\n",
        );
        w(
            "rdma.max",
            "mlx4_0 hca_handle=2 hca_object=2000\nocrdma1 hca_handle=3 hca_object=max\n",
        );
        w("hugetlb.2MB.current", "4194304\n");
        w("hugetlb.2MB.max", "max\n");
        w("hugetlb.2MB.events", "max 3\n");
        w("hugetlb.1GB.current", "0\n");
        w("hugetlb.1GB.max", "1073741824\n");
        w("hugetlb.1GB.events", "max 0\n");
        d
    }

    #[test]
    fn v2_stat_fills_every_field_like_containerd() {
        let d = fake_v2_dir();
        let sizes = vec!["1GB".to_string(), "2MB".to_string()];
        let m = stat_v2(d.path(), &sizes);

        let p = m.pids.as_ref().unwrap();
        assert_eq!((p.current, p.limit), (7, u64::MAX));

        let c = m.cpu.as_ref().unwrap();
        assert_eq!(
            (c.usage_usec, c.user_usec, c.system_usec),
            (1000001, 600002, 400003)
        );
        assert_eq!(
            (c.nr_periods, c.nr_throttled, c.throttled_usec),
            (40, 5, 12345)
        );
        assert_eq!((c.nr_bursts, c.burst_usec), (2, 77));
        let psi = c.psi.as_ref().unwrap();
        let some = psi.some.as_ref().unwrap();
        assert_eq!(
            (some.avg10, some.avg60, some.avg300, some.total),
            (1.5, 0.25, 0.0, 123456)
        );
        assert_eq!(psi.full.as_ref().unwrap().total, 6543);

        let ms = m.memory.as_ref().unwrap();
        let got = [
            ms.anon,
            ms.file,
            ms.kernel_stack,
            ms.slab,
            ms.sock,
            ms.shmem,
            ms.file_mapped,
            ms.file_dirty,
            ms.file_writeback,
            ms.anon_thp,
            ms.inactive_anon,
            ms.active_anon,
            ms.inactive_file,
            ms.active_file,
            ms.unevictable,
            ms.slab_reclaimable,
            ms.slab_unreclaimable,
            ms.pgfault,
            ms.pgmajfault,
            ms.workingset_refault,
            ms.workingset_activate,
            ms.workingset_nodereclaim,
            ms.pgrefill,
            ms.pgscan,
            ms.pgsteal,
            ms.pgactivate,
            ms.pgdeactivate,
            ms.pglazyfree,
            ms.pglazyfreed,
            ms.thp_fault_alloc,
            ms.thp_collapse_alloc,
        ];
        let want: Vec<u64> = (1001..=1031).collect();
        assert_eq!(got.to_vec(), want);
        assert_eq!(
            (ms.usage, ms.usage_limit, ms.max_usage),
            (5242880, 67108864, 8388608)
        );
        assert_eq!(
            (ms.swap_usage, ms.swap_limit, ms.swap_max_usage),
            (4096, u64::MAX, 8192)
        );
        let mp = ms.psi.as_ref().unwrap();
        assert_eq!(
            (
                mp.some.as_ref().unwrap().total,
                mp.full.as_ref().unwrap().total
            ),
            (11, 22)
        );

        let ev = m.memory_events.as_ref().unwrap();
        assert_eq!(
            (
                ev.low,
                ev.high,
                ev.max,
                ev.oom,
                ev.oom_kill,
                ev.oom_group_kill
            ),
            (1, 2, 3, 4, 5, 6)
        );

        let io = m.io.as_ref().unwrap();
        assert_eq!(io.usage.len(), 2);
        let e = &io.usage[0];
        assert_eq!(
            (e.major, e.minor, e.rbytes, e.wbytes, e.rios, e.wios),
            (8, 16, 1459200, 314773504, 192, 353)
        );
        let e = &io.usage[1];
        assert_eq!(
            (e.major, e.minor, e.rbytes, e.wbytes, e.rios, e.wios),
            (8, 0, 90430464, 299008000, 8950, 1252)
        );
        assert!(io.psi.is_none());

        let r = m.rdma.as_ref().unwrap();
        let cur: Vec<_> = r
            .current
            .iter()
            .map(|e| (e.device.as_str(), e.hca_handles, e.hca_objects))
            .collect();
        assert_eq!(cur, [("mlx4_0", 1, 20), ("ocrdma1", 0, 0)]);
        let lim: Vec<_> = r
            .limit
            .iter()
            .map(|e| (e.device.as_str(), e.hca_handles, e.hca_objects))
            .collect();
        assert_eq!(lim, [("mlx4_0", 2, 2000), ("ocrdma1", 3, u32::MAX)]);

        let h: Vec<_> = m
            .hugetlb
            .iter()
            .map(|h| (h.pagesize.as_str(), h.current, h.max, h.failcnt))
            .collect();
        assert_eq!(
            h,
            [("1GB", 0, 1073741824, 0), ("2MB", 4194304, u64::MAX, 3)]
        );

        // What the engine needs from the encoded message: the docker CLI's
        // v2 memory figure is usage - inactive_file.
        use containerd_shim_protos::protobuf::Message;
        let bytes = m.write_to_bytes().unwrap();
        let back = v2::Metrics::parse_from_bytes(&bytes).unwrap();
        let bm = back.memory.as_ref().unwrap();
        assert_eq!(bm.usage - bm.inactive_file, 5242880 - 1013);
    }

    #[test]
    fn v2_stat_of_a_bare_directory_is_zero_not_an_error() {
        // Controllers not enabled, PSI off: containerd leaves the counters
        // zero, memory_events and every psi unset.
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join("memory.max"), "max\n").unwrap();
        let m = stat_v2(d.path(), &[]);
        assert_eq!(m.pids.as_ref().unwrap().limit, 0);
        assert_eq!(m.cpu.as_ref().unwrap().usage_usec, 0);
        assert!(m.cpu.as_ref().unwrap().psi.is_none());
        let ms = m.memory.as_ref().unwrap();
        assert_eq!(
            (ms.usage, ms.usage_limit, ms.inactive_file),
            (0, u64::MAX, 0)
        );
        assert!(ms.psi.is_none());
        assert!(m.memory_events.is_none());
        assert!(m.io.as_ref().unwrap().usage.is_empty());
        assert!(m.hugetlb.is_empty());
        // Malformed values read as zero, a malformed PSI file as unset.
        fs::write(d.path().join("pids.current"), "lots\n").unwrap();
        fs::write(d.path().join("cpu.pressure"), "some avg10=x\n").unwrap();
        let m = stat_v2(d.path(), &[]);
        assert_eq!(m.pids.as_ref().unwrap().current, 0);
        assert!(m.cpu.as_ref().unwrap().psi.is_none());
    }

    #[test]
    fn psi_decimals_parse_like_strconv() {
        for t in [
            "0.00", "1.50", "12.34", "0.13", "99.99", "100.00", "7", "3.1415",
        ] {
            assert_eq!(parse_decimal(t), Some(t.parse::<f64>().unwrap()), "{t}");
        }
        for bad in ["", "1.2.3", "-1.0", "x", "1e3", "0.1234567890"] {
            assert_eq!(parse_decimal(bad), None, "{bad}");
        }
    }

    #[test]
    fn hugepage_dir_names() {
        assert_eq!(
            hugepage_size_name("hugepages-2048kB").as_deref(),
            Some("2MB")
        );
        assert_eq!(
            hugepage_size_name("hugepages-1048576kB").as_deref(),
            Some("1GB")
        );
        assert_eq!(
            hugepage_size_name("hugepages-64kB").as_deref(),
            Some("64KB")
        );
        assert_eq!(hugepage_size_name("hugepages-2048MB"), None);
        assert_eq!(hugepage_size_name("other"), None);
    }
}
