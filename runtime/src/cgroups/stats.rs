//! Resource usage in the shape of runc's `events --stats` "data" object (`types/events.go`),
//! filled from cgroup v1 or v2 files. Field names and omit-if-zero behaviour follow runc's JSON
//! tags (e.g. `throttledPeriods`, `ioServiceBytesRecursive`, `kernelTCP`).

use super::{files, CgroupError, CgroupPaths};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// `runc events --stats` data.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Stats {
    pub cpu: CpuStats,
    pub cpuset: CpusetStats,
    pub memory: MemoryStats,
    pub pids: PidsStats,
    pub blkio: BlkioStats,
    /// Keyed by page size ("2MB", "1GB").
    pub hugetlb: BTreeMap<String, HugetlbStats>,
    pub intel_rdt: IntelRdtStats,
    /// Not collected (runc fills it only for some libcontainer users); always null.
    pub network_interfaces: Option<Vec<serde_json::Value>>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct CpuStats {
    pub usage: CpuUsage,
    pub throttling: Throttling,
}

/// Nanoseconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct CpuUsage {
    #[serde(skip_serializing_if = "is_zero")]
    pub total: u64,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub percpu: Vec<u64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub percpu_kernel: Vec<u64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub percpu_user: Vec<u64>,
    pub kernel: u64,
    pub user: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Throttling {
    #[serde(skip_serializing_if = "is_zero")]
    pub periods: u64,
    #[serde(rename = "throttledPeriods", skip_serializing_if = "is_zero")]
    pub throttled_periods: u64,
    /// Nanoseconds.
    #[serde(rename = "throttledTime", skip_serializing_if = "is_zero")]
    pub throttled_time: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct CpusetStats {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub cpus: Vec<u16>,
    pub cpu_exclusive: u64,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub mems: Vec<u16>,
    pub mem_hardwall: u64,
    pub mem_exclusive: u64,
    pub memory_migrate: u64,
    pub memory_spread_page: u64,
    pub memory_spread_slab: u64,
    pub memory_pressure: u64,
    pub sched_load_balance: u64,
    pub sched_relax_domain_level: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct MemoryEntry {
    pub limit: u64,
    #[serde(skip_serializing_if = "is_zero")]
    pub usage: u64,
    #[serde(skip_serializing_if = "is_zero")]
    pub max: u64,
    pub failcnt: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct MemoryStats {
    #[serde(skip_serializing_if = "is_zero")]
    pub cache: u64,
    pub usage: MemoryEntry,
    /// Memory+swap, as on v1 (v2 values are converted).
    pub swap: MemoryEntry,
    pub kernel: MemoryEntry,
    #[serde(rename = "kernelTCP")]
    pub kernel_tcp: MemoryEntry,
    /// memory.stat as is.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub raw: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PidsStats {
    #[serde(skip_serializing_if = "is_zero")]
    pub current: u64,
    /// u64::MAX when unlimited.
    #[serde(skip_serializing_if = "is_zero")]
    pub limit: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct BlkioEntry {
    #[serde(skip_serializing_if = "is_zero")]
    pub major: u64,
    #[serde(skip_serializing_if = "is_zero")]
    pub minor: u64,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub op: String,
    #[serde(skip_serializing_if = "is_zero")]
    pub value: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct BlkioStats {
    #[serde(
        rename = "ioServiceBytesRecursive",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub io_service_bytes_recursive: Vec<BlkioEntry>,
    #[serde(rename = "ioServicedRecursive", skip_serializing_if = "Vec::is_empty")]
    pub io_serviced_recursive: Vec<BlkioEntry>,
    #[serde(rename = "ioQueueRecursive", skip_serializing_if = "Vec::is_empty")]
    pub io_queued_recursive: Vec<BlkioEntry>,
    #[serde(
        rename = "ioServiceTimeRecursive",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub io_service_time_recursive: Vec<BlkioEntry>,
    #[serde(rename = "ioWaitTimeRecursive", skip_serializing_if = "Vec::is_empty")]
    pub io_wait_time_recursive: Vec<BlkioEntry>,
    #[serde(rename = "ioMergedRecursive", skip_serializing_if = "Vec::is_empty")]
    pub io_merged_recursive: Vec<BlkioEntry>,
    #[serde(rename = "ioTimeRecursive", skip_serializing_if = "Vec::is_empty")]
    pub io_time_recursive: Vec<BlkioEntry>,
    #[serde(rename = "sectorsRecursive", skip_serializing_if = "Vec::is_empty")]
    pub sectors_recursive: Vec<BlkioEntry>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct HugetlbStats {
    #[serde(skip_serializing_if = "is_zero")]
    pub usage: u64,
    #[serde(skip_serializing_if = "is_zero")]
    pub max: u64,
    pub failcnt: u64,
}

/// Intel RDT is not collected; serialises as `{}` like runc without RDT.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct IntelRdtStats {}

// ---- parsers (pure) -----------------------------------------------------------------------

/// "key value" lines (memory.stat, cpu.stat, cpuacct.stat, memory.events). Lines that do not
/// parse are skipped.
pub fn parse_flat_keyed(text: &str) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let mut it = line.split_whitespace();
        if let (Some(k), Some(v), None) = (it.next(), it.next(), it.next()) {
            let v = if v == "max" {
                Some(u64::MAX)
            } else {
                v.parse().ok()
            };
            if let Some(v) = v {
                out.insert(k.to_string(), v);
            }
        }
    }
    out
}

/// Whitespace separated numbers (cpuacct.usage_percpu).
pub fn parse_u64_list(text: &str) -> Vec<u64> {
    text.split_whitespace()
        .filter_map(|v| v.parse().ok())
        .collect()
}

/// cpuacct.usage_all: header "cpu user system", then "<cpu> <user> <system>" per CPU.
/// Returns (percpu_user, percpu_kernel).
pub fn parse_usage_all(text: &str) -> (Vec<u64>, Vec<u64>) {
    let mut user = Vec::new();
    let mut sys = Vec::new();
    for line in text.lines().skip(1) {
        let f: Vec<u64> = line
            .split_whitespace()
            .filter_map(|v| v.parse().ok())
            .collect();
        if f.len() == 3 {
            user.push(f[1]);
            sys.push(f[2]);
        }
    }
    (user, sys)
}

/// A cpuset list like "0-3,5,7-8".
pub fn parse_cpu_list(text: &str) -> Vec<u16> {
    let mut out = Vec::new();
    for part in text.trim().split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                if let (Ok(a), Ok(b)) = (a.trim().parse::<u16>(), b.trim().parse::<u16>()) {
                    out.extend(a..=b);
                }
            }
            None => {
                if let Ok(v) = part.trim().parse::<u16>() {
                    out.push(v);
                }
            }
        }
    }
    out
}

/// A v1 blkio stats file: "8:0 Read 1234" lines (or "8:0 1234" for sectors/time) and a
/// "Total N" line, which is skipped. An empty file gives an empty list.
pub fn parse_blkio(path: &Path, text: &str) -> Result<Vec<BlkioEntry>, CgroupError> {
    let mut out = Vec::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split([' ', ':']).filter(|f| !f.is_empty()).collect();
        if fields.is_empty() {
            continue;
        }
        if fields.len() < 3 {
            if fields.len() == 2 && fields[0] == "Total" {
                continue;
            }
            return Err(CgroupError::Parse {
                path: path.to_path_buf(),
                msg: format!("malformed line {line:?}"),
            });
        }
        let num = |s: &str| {
            s.parse::<u64>().map_err(|e| CgroupError::Parse {
                path: path.to_path_buf(),
                msg: format!("{s:?} in line {line:?}: {e}"),
            })
        };
        let (op, value_idx) = if fields.len() == 4 {
            (fields[2].to_string(), 3)
        } else {
            (String::new(), 2)
        };
        out.push(BlkioEntry {
            major: num(fields[0])?,
            minor: num(fields[1])?,
            op,
            value: num(fields[value_idx])?,
        });
    }
    Ok(out)
}

/// v2 io.stat ("8:0 rbytes=1 wbytes=2 rios=3 wios=4 dbytes=0 dios=0") mapped to the v1 tables
/// as runc does (bytes -> ioServiceBytesRecursive, ios -> ioServicedRecursive).
pub fn parse_io_stat(text: &str) -> BlkioStats {
    let mut st = BlkioStats::default();
    for line in text.lines() {
        let mut it = line.split_whitespace();
        let Some((maj, min)) = it.next().and_then(|d| d.split_once(':')) else {
            continue;
        };
        let (Ok(major), Ok(minor)) = (maj.parse::<u64>(), min.parse::<u64>()) else {
            continue;
        };
        for kv in it {
            let Some((k, v)) = kv.split_once('=') else {
                continue;
            };
            let Ok(value) = v.parse::<u64>() else {
                continue;
            };
            let (table, op) = match k {
                "rbytes" => (&mut st.io_service_bytes_recursive, "Read"),
                "wbytes" => (&mut st.io_service_bytes_recursive, "Write"),
                "rios" => (&mut st.io_serviced_recursive, "Read"),
                "wios" => (&mut st.io_serviced_recursive, "Write"),
                _ => continue,
            };
            table.push(BlkioEntry {
                major,
                minor,
                op: op.to_string(),
                value,
            });
        }
    }
    st
}

/// "hugepages-2048kB" -> "2MB", "hugepages-1048576kB" -> "1GB".
pub fn hugepage_size_name(dir_name: &str) -> Option<String> {
    let kb: u64 = dir_name
        .strip_prefix("hugepages-")?
        .strip_suffix("kB")?
        .parse()
        .ok()?;
    let units = ["KB", "MB", "GB", "TB", "PB"];
    let mut v = kb;
    let mut i = 0;
    while v >= 1024 && v & 1023 == 0 && i + 1 < units.len() {
        v /= 1024;
        i += 1;
    }
    Some(format!("{v}{}", units[i]))
}

fn hugepage_sizes() -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir("/sys/kernel/mm/hugepages")
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| hugepage_size_name(&e.file_name().to_string_lossy()))
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

fn clock_ticks() -> u64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as u64
    } else {
        100
    }
}

// ---- v1 collection ------------------------------------------------------------------------

fn opt(dir: &Path, file: &str) -> Result<Option<String>, CgroupError> {
    files::read_opt(dir, file)
}

fn cpu_v1(
    cpuacct: Option<&Path>,
    cpu: Option<&Path>,
    st: &mut CpuStats,
) -> Result<(), CgroupError> {
    if let Some(d) = cpuacct {
        st.usage.total = files::read_u64_or_zero(d, "cpuacct.usage")?;
        if let Some(t) = opt(d, "cpuacct.usage_percpu")? {
            st.usage.percpu = parse_u64_list(&t);
        }
        if let Some(t) = opt(d, "cpuacct.usage_all")? {
            let (user, sys) = parse_usage_all(&t);
            st.usage.percpu_user = user;
            st.usage.percpu_kernel = sys;
        }
        if let Some(t) = opt(d, "cpuacct.stat")? {
            let m = parse_flat_keyed(&t);
            let ticks = clock_ticks();
            let ns = |v: u64| v.saturating_mul(1_000_000_000) / ticks;
            st.usage.user = ns(m.get("user").copied().unwrap_or(0));
            st.usage.kernel = ns(m.get("system").copied().unwrap_or(0));
        }
    }
    if let Some(d) = cpu {
        if let Some(t) = opt(d, "cpu.stat")? {
            let m = parse_flat_keyed(&t);
            st.throttling.periods = m.get("nr_periods").copied().unwrap_or(0);
            st.throttling.throttled_periods = m.get("nr_throttled").copied().unwrap_or(0);
            st.throttling.throttled_time = m.get("throttled_time").copied().unwrap_or(0);
        }
    }
    Ok(())
}

fn cpuset_from(dir: &Path, cpus_file: &str, mems_file: &str) -> Result<CpusetStats, CgroupError> {
    let mut s = CpusetStats::default();
    if let Some(t) = opt(dir, cpus_file)? {
        s.cpus = parse_cpu_list(&t);
    }
    if let Some(t) = opt(dir, mems_file)? {
        s.mems = parse_cpu_list(&t);
    }
    let num = |f: &str| files::read_u64_or_zero(dir, f);
    s.cpu_exclusive = num("cpuset.cpu_exclusive")?;
    s.mem_hardwall = num("cpuset.mem_hardwall")?;
    s.mem_exclusive = num("cpuset.mem_exclusive")?;
    s.memory_migrate = num("cpuset.memory_migrate")?;
    s.memory_spread_page = num("cpuset.memory_spread_page")?;
    s.memory_spread_slab = num("cpuset.memory_spread_slab")?;
    s.memory_pressure = num("cpuset.memory_pressure")?;
    s.sched_load_balance = num("cpuset.sched_load_balance")?;
    if let Some(t) = opt(dir, "cpuset.sched_relax_domain_level")? {
        s.sched_relax_domain_level = t.trim().parse().unwrap_or(0);
    }
    Ok(s)
}

fn memory_entry_v1(dir: &Path, prefix: &str) -> Result<MemoryEntry, CgroupError> {
    let f = |suffix: &str| files::read_u64_or_zero(dir, &format!("{prefix}.{suffix}"));
    Ok(MemoryEntry {
        limit: f("limit_in_bytes")?,
        usage: f("usage_in_bytes")?,
        max: f("max_usage_in_bytes")?,
        failcnt: f("failcnt")?,
    })
}

fn memory_v1(dir: &Path) -> Result<MemoryStats, CgroupError> {
    let mut m = MemoryStats::default();
    if let Some(t) = opt(dir, "memory.stat")? {
        m.raw = parse_flat_keyed(&t);
    }
    m.cache = m.raw.get("cache").copied().unwrap_or(0);
    m.usage = memory_entry_v1(dir, "memory")?;
    m.swap = memory_entry_v1(dir, "memory.memsw")?;
    m.kernel = memory_entry_v1(dir, "memory.kmem")?;
    m.kernel_tcp = memory_entry_v1(dir, "memory.kmem.tcp")?;
    Ok(m)
}

fn pids_from(dir: &Path) -> Result<PidsStats, CgroupError> {
    Ok(PidsStats {
        current: files::read_u64_or_zero(dir, "pids.current")?,
        limit: files::read_u64_or_zero(dir, "pids.max")?,
    })
}

/// runc's order: BFQ debug stats, BFQ stats, CFQ stats, recursive throttle stats, throttle
/// stats; the first group whose first file has data wins.
fn blkio_v1(dir: &Path) -> Result<BlkioStats, CgroupError> {
    type Field = fn(&mut BlkioStats) -> &mut Vec<BlkioEntry>;
    let sbr: Field = |s| &mut s.io_service_bytes_recursive;
    let sr: Field = |s| &mut s.io_serviced_recursive;
    let qr: Field = |s| &mut s.io_queued_recursive;
    let str_: Field = |s| &mut s.io_service_time_recursive;
    let wtr: Field = |s| &mut s.io_wait_time_recursive;
    let mr: Field = |s| &mut s.io_merged_recursive;
    let tr: Field = |s| &mut s.io_time_recursive;
    let secr: Field = |s| &mut s.sectors_recursive;
    let groups: [&[(&str, Field)]; 5] = [
        &[
            ("blkio.bfq.sectors_recursive", secr),
            ("blkio.bfq.io_service_time_recursive", str_),
            ("blkio.bfq.io_wait_time_recursive", wtr),
            ("blkio.bfq.io_merged_recursive", mr),
            ("blkio.bfq.io_queued_recursive", qr),
            ("blkio.bfq.time_recursive", tr),
            ("blkio.bfq.io_serviced_recursive", sr),
            ("blkio.bfq.io_service_bytes_recursive", sbr),
        ],
        &[
            ("blkio.bfq.io_serviced_recursive", sr),
            ("blkio.bfq.io_service_bytes_recursive", sbr),
        ],
        &[
            ("blkio.sectors_recursive", secr),
            ("blkio.io_service_time_recursive", str_),
            ("blkio.io_wait_time_recursive", wtr),
            ("blkio.io_merged_recursive", mr),
            ("blkio.io_queued_recursive", qr),
            ("blkio.time_recursive", tr),
            ("blkio.io_serviced_recursive", sr),
            ("blkio.io_service_bytes_recursive", sbr),
        ],
        &[
            ("blkio.throttle.io_serviced_recursive", sr),
            ("blkio.throttle.io_service_bytes_recursive", sbr),
        ],
        &[
            ("blkio.throttle.io_serviced", sr),
            ("blkio.throttle.io_service_bytes", sbr),
        ],
    ];
    'groups: for group in groups {
        let mut st = BlkioStats::default();
        for (i, (file, field)) in group.iter().enumerate() {
            let entries = match opt(dir, file)? {
                Some(t) => parse_blkio(&dir.join(file), &t)?,
                None => Vec::new(),
            };
            if entries.is_empty() && i == 0 {
                continue 'groups;
            }
            *field(&mut st) = entries;
        }
        return Ok(st);
    }
    Ok(BlkioStats::default())
}

fn hugetlb_v1(dir: &Path) -> Result<BTreeMap<String, HugetlbStats>, CgroupError> {
    let mut out = BTreeMap::new();
    for size in hugepage_sizes() {
        let f = |suffix: &str| files::read_u64_or_zero(dir, &format!("hugetlb.{size}.{suffix}"));
        out.insert(
            size.clone(),
            HugetlbStats {
                usage: f("usage_in_bytes")?,
                max: f("max_usage_in_bytes")?,
                failcnt: f("failcnt")?,
            },
        );
    }
    Ok(out)
}

pub(super) fn collect_v1(paths: &CgroupPaths) -> Result<Stats, CgroupError> {
    let mut st = Stats::default();
    cpu_v1(paths.get("cpuacct"), paths.get("cpu"), &mut st.cpu)?;
    if let Some(d) = paths.get("cpuset") {
        st.cpuset = cpuset_from(d, "cpuset.cpus", "cpuset.mems")?;
    }
    if let Some(d) = paths.get("memory") {
        st.memory = memory_v1(d)?;
    }
    if let Some(d) = paths.get("pids") {
        st.pids = pids_from(d)?;
    }
    if let Some(d) = paths.get("blkio") {
        st.blkio = blkio_v1(d)?;
    }
    if let Some(d) = paths.get("hugetlb") {
        st.hugetlb = hugetlb_v1(d)?;
    }
    Ok(st)
}

// ---- v2 collection ------------------------------------------------------------------------

fn memory_data_v2(dir: &Path, module: &str) -> Result<Option<MemoryEntry>, CgroupError> {
    let Some(usage) = opt(dir, &format!("{module}.current"))? else {
        return Ok(None);
    };
    let usage = files::parse_u64(&dir.join(format!("{module}.current")), &usage)?;
    Ok(Some(MemoryEntry {
        usage,
        limit: files::read_u64_or_zero(dir, &format!("{module}.max"))?,
        max: files::read_u64_or_zero(dir, &format!("{module}.peak"))?,
        failcnt: 0,
    }))
}

pub(super) fn collect_v2(dir: &Path) -> Result<Stats, CgroupError> {
    let mut st = Stats::default();

    if let Some(t) = opt(dir, "cpu.stat")? {
        let m = parse_flat_keyed(&t);
        let g = |k: &str| m.get(k).copied().unwrap_or(0).saturating_mul(1000);
        st.cpu.usage.total = g("usage_usec");
        st.cpu.usage.user = g("user_usec");
        st.cpu.usage.kernel = g("system_usec");
        st.cpu.throttling.periods = m.get("nr_periods").copied().unwrap_or(0);
        st.cpu.throttling.throttled_periods = m.get("nr_throttled").copied().unwrap_or(0);
        st.cpu.throttling.throttled_time = g("throttled_usec");
    }

    if files::exists(dir, "cpuset.cpus.effective") {
        st.cpuset = cpuset_from(dir, "cpuset.cpus.effective", "cpuset.mems.effective")?;
    }

    if let Some(t) = opt(dir, "memory.stat")? {
        st.memory.raw = parse_flat_keyed(&t);
        st.memory.cache = st.memory.raw.get("file").copied().unwrap_or(0);
    }
    if let Some(usage) = memory_data_v2(dir, "memory")? {
        let events = opt(dir, "memory.events")?
            .map(|t| parse_flat_keyed(&t))
            .unwrap_or_default();
        st.memory.usage = MemoryEntry {
            failcnt: events.get("max").copied().unwrap_or(0),
            ..usage
        };
        // v1 reports memory+swap; emulate that.
        let swap_only = memory_data_v2(dir, "memory.swap")?.unwrap_or_default();
        let mut swap = swap_only;
        swap.usage = swap.usage.saturating_add(st.memory.usage.usage);
        if swap.limit != u64::MAX {
            swap.limit = swap.limit.saturating_add(st.memory.usage.limit);
        }
        swap.max = 0;
        st.memory.swap = swap;
    }

    if files::exists(dir, "pids.current") {
        st.pids = pids_from(dir)?;
    }
    if let Some(t) = opt(dir, "io.stat")? {
        st.blkio = parse_io_stat(&t);
    }
    for size in hugepage_sizes() {
        let cur = format!("hugetlb.{size}.current");
        if !files::exists(dir, &cur) {
            continue;
        }
        let events = opt(dir, &format!("hugetlb.{size}.events"))?
            .map(|t| parse_flat_keyed(&t))
            .unwrap_or_default();
        st.hugetlb.insert(
            size.clone(),
            HugetlbStats {
                usage: files::read_u64_or_zero(dir, &cur)?,
                max: 0,
                failcnt: events.get("max").copied().unwrap_or(0),
            },
        );
    }
    Ok(st)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn flat_keyed_and_lists() {
        let m = parse_flat_keyed("cache 4096\nrss 8192\nbogus\nhierarchical_memory_limit max\n");
        assert_eq!(m["cache"], 4096);
        assert_eq!(m["rss"], 8192);
        assert_eq!(m["hierarchical_memory_limit"], u64::MAX);
        assert_eq!(m.len(), 3);
        assert_eq!(parse_u64_list("12 34 \n"), vec![12, 34]);
        let (u, s) = parse_usage_all("cpu user system\n0 10 20\n1 30 40\n");
        assert_eq!(u, vec![10, 30]);
        assert_eq!(s, vec![20, 40]);
        assert_eq!(parse_cpu_list("0-2,5,7-8\n"), vec![0, 1, 2, 5, 7, 8]);
        assert_eq!(parse_cpu_list(""), Vec::<u16>::new());
    }

    #[test]
    fn blkio_files() {
        let p = PathBuf::from("blkio.throttle.io_service_bytes");
        let e = parse_blkio(
            &p,
            "8:0 Read 4096\n8:0 Write 8192\n8:0 Sync 0\n8:0 Async 12288\nTotal 12288\n",
        )
        .unwrap();
        assert_eq!(e.len(), 4);
        assert_eq!(
            e[1],
            BlkioEntry {
                major: 8,
                minor: 0,
                op: "Write".into(),
                value: 8192
            }
        );
        let e = parse_blkio(&p, "8:16 512\n").unwrap();
        assert_eq!(e[0].op, "");
        assert_eq!(e[0].value, 512);
        assert!(parse_blkio(&p, "Total 1\n").unwrap().is_empty());
        assert!(parse_blkio(&p, "garbage\n").is_err());
    }

    #[test]
    fn io_stat_v2() {
        let st = parse_io_stat("8:0 rbytes=100 wbytes=200 rios=3 wios=4 dbytes=0 dios=0\n");
        assert_eq!(st.io_service_bytes_recursive.len(), 2);
        assert_eq!(st.io_service_bytes_recursive[0].op, "Read");
        assert_eq!(st.io_service_bytes_recursive[1].value, 200);
        assert_eq!(st.io_serviced_recursive[1].value, 4);
    }

    #[test]
    fn hugepage_names() {
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
        assert_eq!(hugepage_size_name("other"), None);
    }

    #[test]
    fn json_shape_matches_runc() {
        let mut st = Stats::default();
        st.cpu.usage.total = 5;
        st.cpu.throttling.throttled_periods = 2;
        st.memory.usage.usage = 10;
        st.memory.raw.insert("cache".into(), 1);
        st.blkio.io_service_bytes_recursive.push(BlkioEntry {
            major: 8,
            minor: 0,
            op: "Read".into(),
            value: 1,
        });
        st.hugetlb.insert("2MB".into(), HugetlbStats::default());
        let v = serde_json::to_value(&st).unwrap();
        assert_eq!(v["cpu"]["usage"]["total"], 5);
        assert_eq!(v["cpu"]["usage"]["kernel"], 0);
        assert!(v["cpu"]["usage"].get("percpu").is_none());
        assert_eq!(v["cpu"]["throttling"]["throttledPeriods"], 2);
        assert_eq!(v["memory"]["usage"]["usage"], 10);
        assert_eq!(v["memory"]["usage"]["limit"], 0);
        assert!(v["memory"]["usage"].get("max").is_none());
        assert!(v["memory"].get("kernelTCP").is_some());
        assert_eq!(v["memory"]["raw"]["cache"], 1);
        assert_eq!(v["blkio"]["ioServiceBytesRecursive"][0]["op"], "Read");
        assert_eq!(v["hugetlb"]["2MB"]["failcnt"], 0);
        assert!(v["intel_rdt"].is_object());
        assert!(v["network_interfaces"].is_null());
        let back: Stats = serde_json::from_value(v).unwrap();
        assert_eq!(back, st);
        // runc output without optional fields deserialises too.
        let _: Stats = serde_json::from_str(r#"{"cpu":{"usage":{"kernel":0,"user":0}}}"#).unwrap();
    }
}
