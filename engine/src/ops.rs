//! More container operations: restart, pause/unpause (`Tasks.Pause` /
//! `Resume`), rename, top (`Tasks.ListPids` + host `ps`), and stats
//! (`Tasks.Metrics`, cgroup v1 or v2 metrics, in Docker's JSON shape: the
//! v1 or the v2 document, as dockerd answers on such a host).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use orca_proto::tasks;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tracing::{debug, info};

use crate::containers::{valid_name, Containers, Entry};
use crate::error::{EngineError, Result};
use crate::util;

/// The type URL of containerd's cgroup v1 metrics.
const CGROUPS_V1_METRICS: &str = "io.containerd.cgroups.v1.Metrics";
/// The type URL of containerd's cgroup v2 metrics.
const CGROUPS_V2_METRICS: &str = "io.containerd.cgroups.v2.Metrics";

impl Containers {
    /// Freezes or thaws the task and records it.
    pub(crate) async fn set_paused(&self, entry: &Arc<Entry>, paused: bool) -> Result<()> {
        let id = entry.record().id;
        let res = if paused {
            self.ctrd
                .tasks()
                .pause(self.ctrd.req(tasks::PauseTaskRequest {
                    container_id: id.clone(),
                }))
                .await
        } else {
            self.ctrd
                .tasks()
                .resume(self.ctrd.req(tasks::ResumeTaskRequest {
                    container_id: id.clone(),
                }))
                .await
        };
        res.map_err(|s| EngineError::grpc(if paused { "pause" } else { "resume" }, s))?;
        entry.with_rec(|r| {
            if r.state.running {
                r.state.paused = paused;
                r.state.status = if paused { "paused" } else { "running" }.into();
            }
        });
        self.save(&entry.record())?;
        info!(id, paused, "container paused state changed");
        Ok(())
    }

    /// POST /containers/{id}/pause.
    pub async fn pause(&self, key: &str) -> Result<()> {
        let entry = self.lookup(key)?;
        let _op = entry.op.lock().await;
        let rec = entry.record();
        if !rec.state.running {
            return Err(EngineError::Conflict(format!(
                "Container {} is not running",
                rec.id
            )));
        }
        if rec.state.paused {
            return Err(EngineError::Conflict(format!(
                "Container {} is already paused",
                rec.id
            )));
        }
        if rec.state.restarting {
            return Err(EngineError::Conflict(format!(
                "Container {} is restarting, wait until the container is running",
                rec.id
            )));
        }
        self.set_paused(&entry, true).await?;
        self.events.container("pause", &entry.record(), &[]);
        Ok(())
    }

    /// POST /containers/{id}/unpause.
    pub async fn unpause(&self, key: &str) -> Result<()> {
        let entry = self.lookup(key)?;
        let _op = entry.op.lock().await;
        let rec = entry.record();
        if !rec.state.paused {
            return Err(EngineError::Conflict(format!(
                "Container {} is not paused",
                rec.id
            )));
        }
        self.set_paused(&entry, false).await?;
        self.events.container("unpause", &entry.record(), &[]);
        Ok(())
    }

    /// POST /containers/{id}/restart: stop (if running), then start.
    pub async fn restart(
        self: &Arc<Self>,
        key: &str,
        timeout: Option<i64>,
        signal: Option<&str>,
    ) -> Result<()> {
        let entry = self.lookup(key)?;
        let id = entry.record().id;
        match self.stop(&id, timeout, signal).await {
            Ok(()) | Err(EngineError::NotModified) => {}
            Err(e) => return Err(e),
        }
        // The monitor records the exit before cleaning the task up; wait
        // until it is done with it.
        let ok = wait_stopped(&entry).await;
        if !ok {
            return Err(EngineError::internal(format!(
                "container {id} did not finish stopping"
            )));
        }
        match self.start(&id).await {
            Ok(()) | Err(EngineError::NotModified) => {
                self.events.container("restart", &entry.record(), &[]);
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// POST /containers/{id}/rename.
    pub fn rename(&self, key: &str, new: &str) -> Result<()> {
        if new.is_empty() {
            return Err(EngineError::BadRequest(
                "Neither old nor new names may be empty".into(),
            ));
        }
        if !valid_name(new) {
            return Err(EngineError::BadRequest(format!(
                "Invalid container name ({new}), only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed"
            )));
        }
        let entry = self.lookup(key)?;
        let new_name = format!("/{}", new.trim_start_matches('/'));
        let rec = entry.record();
        if rec.name == new_name {
            return Err(EngineError::BadRequest(
                "Renaming a container with the same name as its current name".into(),
            ));
        }
        // Name check and change under the map lock (no concurrent create
        // can take the name in between).
        let _map = self.lock_map();
        if let Some(other) = _map.values().find(|e| e.record().name == new_name) {
            return Err(EngineError::Conflict(format!(
                "Conflict. The container name \"{new_name}\" is already in use by container \"{}\". \
                 You have to remove (or rename) that container to be able to reuse that name.",
                other.record().id
            )));
        }
        entry.with_rec(|r| r.name = new_name.clone());
        self.save(&entry.record())?;
        self.events
            .container("rename", &entry.record(), &[("oldName", rec.name.clone())]);
        info!(id = %rec.id, from = %rec.name, to = %new_name, "renamed container");
        Ok(())
    }

    /// GET /containers/{id}/top: the host's `ps` output, filtered to the
    /// container's processes.
    pub async fn top(&self, key: &str, ps_args: &str) -> Result<Value> {
        let entry = self.lookup(key)?;
        let rec = entry.record();
        if !rec.state.running {
            return Err(EngineError::Conflict(format!(
                "Container {} is not running",
                rec.id
            )));
        }
        let pids: HashSet<u32> = self
            .ctrd
            .tasks()
            .list_pids(self.ctrd.req(tasks::ListPidsRequest {
                container_id: rec.id.clone(),
            }))
            .await
            .map_err(|s| EngineError::grpc("list pids", s))?
            .into_inner()
            .processes
            .iter()
            .map(|p| p.pid)
            .collect();
        let args: Vec<String> = if ps_args.is_empty() {
            vec!["-ef".into()]
        } else {
            ps_args.split_whitespace().map(String::from).collect()
        };
        let out = tokio::task::spawn_blocking(move || {
            std::process::Command::new("ps")
                .args(&args)
                .stdin(std::process::Stdio::null())
                .output()
        })
        .await
        .map_err(EngineError::internal)?
        .map_err(|e| EngineError::internal(format!("cannot run ps: {e}")))?;
        if !out.status.success() {
            return Err(EngineError::internal(format!(
                "ps: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        parse_ps(&String::from_utf8_lossy(&out.stdout), &pids)
    }

    /// One stats sample of a running container.
    async fn stats_sample(&self, id: &str) -> Result<Sample> {
        let resp = self
            .ctrd
            .tasks()
            .metrics(self.ctrd.req(tasks::MetricsRequest {
                filters: vec![format!("id=={id}")],
            }))
            .await
            .map_err(|s| EngineError::grpc("metrics", s))?
            .into_inner();
        let m = resp
            .metrics
            .into_iter()
            .find(|m| m.id == id)
            .and_then(|m| m.data)
            .ok_or_else(|| EngineError::Conflict(format!("container {id} has no metrics")))?;
        let metrics = if m.type_url.ends_with(CGROUPS_V1_METRICS) {
            Metrics::V1(decode_v1(&m.value))
        } else if m.type_url.ends_with(CGROUPS_V2_METRICS) {
            Metrics::V2(Box::new(decode_v2(&m.value)))
        } else {
            return Err(EngineError::NotImplemented(format!(
                "stats from {} metrics are not implemented in orcad yet",
                m.type_url
            )));
        };
        Ok(Sample {
            at: util::now(),
            metrics,
            system_cpu: system_cpu_ns(),
        })
    }

    /// GET /containers/{id}/stats: one JSON document (stream=0), else one
    /// per second until the container stops or the client goes away.
    pub async fn stats(
        self: &Arc<Self>,
        key: &str,
        stream: bool,
        one_shot: bool,
    ) -> Result<mpsc::Receiver<Bytes>> {
        let entry = self.lookup(key)?;
        let rec = entry.record();
        let (tx, rx) = mpsc::channel(4);
        let cid = rec.id.clone();
        let doc = move |cur: &Sample, pre: Option<&Sample>, name: &str| -> Bytes {
            Bytes::from(stats_json(&cid, name, cur, pre).to_string() + "\n")
        };
        if !rec.state.running {
            // Docker answers zeroed stats for a stopped container.
            let v = stats_json(&rec.id, &rec.name, &Sample::default(), None);
            let _ = tx.try_send(Bytes::from(v.to_string() + "\n"));
            return Ok(rx);
        }
        let first = self.stats_sample(&rec.id).await?;
        if !stream {
            let (cur, pre) = if one_shot {
                (first, None)
            } else {
                tokio::time::sleep(Duration::from_millis(500)).await;
                (self.stats_sample(&rec.id).await?, Some(first))
            };
            let _ = tx.try_send(doc(&cur, pre.as_ref(), &entry.record().name));
            return Ok(rx);
        }
        let me = self.clone();
        tokio::spawn(async move {
            let mut pre: Option<Sample> = None;
            let mut cur = Some(first);
            while let Some(c) = cur.take() {
                if tx
                    .send(doc(&c, pre.as_ref(), &entry.record().name))
                    .await
                    .is_err()
                {
                    break;
                }
                pre = Some(c);
                tokio::time::sleep(Duration::from_secs(1)).await;
                if !entry.record().state.running {
                    break;
                }
                match me.stats_sample(&rec.id).await {
                    Ok(s) => cur = Some(s),
                    Err(e) => debug!("stats stream ended: {e}"),
                }
            }
        });
        Ok(rx)
    }
}

async fn wait_stopped(entry: &Arc<Entry>) -> bool {
    for _ in 0..300 {
        let r = entry.record();
        if !r.state.running && r.state.status != "removing" {
            // The monitor deletes the task right after recording the exit.
            let _g = entry.op.lock().await;
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// Filters `ps` output to `pids` the way dockerd does.
pub fn parse_ps(out: &str, pids: &HashSet<u32>) -> Result<Value> {
    let mut lines = out.lines();
    let header = lines.next().unwrap_or("");
    let titles: Vec<&str> = header.split_whitespace().collect();
    let pid_col = titles
        .iter()
        .position(|t| *t == "PID")
        .ok_or_else(|| EngineError::BadRequest("Couldn't find PID field in ps output".into()))?;
    let mut procs = Vec::new();
    for l in lines {
        if l.trim().is_empty() {
            continue;
        }
        let fields: Vec<&str> = l.split_whitespace().collect();
        let Some(pid) = fields.get(pid_col).and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if !pids.contains(&pid) {
            continue;
        }
        // The last column takes the rest of the line (commands have spaces).
        let n = titles.len();
        let mut row: Vec<String> = fields
            .iter()
            .take(n.saturating_sub(1))
            .map(|s| s.to_string())
            .collect();
        if fields.len() >= n {
            row.push(fields[n - 1..].join(" "));
        }
        procs.push(row);
    }
    Ok(json!({"Titles": titles, "Processes": procs}))
}

/// A metrics sample.
#[derive(Debug, Clone, Default)]
struct Sample {
    at: String,
    metrics: Metrics,
    system_cpu: u64,
}

/// The decoded metrics of either cgroup version.
#[derive(Debug, Clone)]
enum Metrics {
    V1(V1Metrics),
    V2(Box<V2Metrics>),
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::V1(V1Metrics::default())
    }
}

/// The parts of containerd's cgroup v1 `Metrics` message orcad reports.
#[derive(Debug, Clone, Default)]
pub struct V1Metrics {
    pub pids_current: u64,
    pub pids_limit: u64,
    pub cpu_total: u64,
    pub cpu_kernel: u64,
    pub cpu_user: u64,
    pub per_cpu: Vec<u64>,
    pub throttle: [u64; 3],
    /// MemoryStat fields 1–32 by number (cache, rss, …, total_unevictable).
    pub mem_stat: Vec<(u32, u64)>,
    pub mem_usage: u64,
    pub mem_max: u64,
    pub mem_limit: u64,
    pub mem_failcnt: u64,
}

enum Wire<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
}

fn varint(b: &[u8], i: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *b.get(*i)?;
        *i += 1;
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// A minimal protobuf wire-format reader (varints, length-delimited and
/// fixed fields), enough for the metrics message.
fn fields(b: &[u8]) -> Vec<(u32, Wire<'_>)> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let Some(key) = varint(b, &mut i) else { break };
        let (num, wt) = ((key >> 3) as u32, key & 7);
        match wt {
            0 => match varint(b, &mut i) {
                Some(v) => out.push((num, Wire::Varint(v))),
                None => break,
            },
            1 => i += 8,
            2 => {
                let Some(len) = varint(b, &mut i) else { break };
                let end = i.saturating_add(len as usize);
                if end > b.len() {
                    break;
                }
                out.push((num, Wire::Bytes(&b[i..end])));
                i = end;
            }
            5 => i += 4,
            _ => break,
        }
    }
    out
}

fn sub(b: &[u8], num: u32) -> &[u8] {
    fields(b)
        .into_iter()
        .find_map(|(n, w)| match (n == num, w) {
            (true, Wire::Bytes(s)) => Some(s),
            _ => None,
        })
        .unwrap_or(&[])
}

fn uint(b: &[u8], num: u32) -> u64 {
    fields(b)
        .into_iter()
        .find_map(|(n, w)| match (n == num, w) {
            (true, Wire::Varint(v)) => Some(v),
            _ => None,
        })
        .unwrap_or(0)
}

/// Decodes `io.containerd.cgroups.v1.Metrics` (containerd/cgroups
/// stats/v1/metrics.proto): pids = 2, cpu = 3 (usage = 1, throttling = 2),
/// memory = 4 (fields 1–32 counters, usage = 33 as MemoryEntry{limit = 1,
/// usage = 2, max = 3, failcnt = 4}).
pub fn decode_v1(b: &[u8]) -> V1Metrics {
    let pids = sub(b, 2);
    let cpu = sub(b, 3);
    let usage = sub(cpu, 1);
    let thr = sub(cpu, 2);
    let mem = sub(b, 4);
    let mem_usage = sub(mem, 33);
    let mut per_cpu = Vec::new();
    for (n, w) in fields(usage) {
        if n != 4 {
            continue;
        }
        match w {
            Wire::Varint(v) => per_cpu.push(v),
            Wire::Bytes(packed) => {
                let mut i = 0;
                while let Some(v) = varint(packed, &mut i) {
                    per_cpu.push(v);
                }
            }
        }
    }
    let mem_stat = fields(mem)
        .into_iter()
        .filter_map(|(n, w)| match w {
            Wire::Varint(v) if (1..=32).contains(&n) => Some((n, v)),
            _ => None,
        })
        .collect();
    V1Metrics {
        pids_current: uint(pids, 1),
        pids_limit: uint(pids, 2),
        cpu_total: uint(usage, 1),
        cpu_kernel: uint(usage, 2),
        cpu_user: uint(usage, 3),
        per_cpu,
        throttle: [uint(thr, 1), uint(thr, 2), uint(thr, 3)],
        mem_stat,
        mem_usage: uint(mem_usage, 2),
        mem_max: uint(mem_usage, 3),
        mem_limit: uint(mem_usage, 1),
        mem_failcnt: uint(mem_usage, 4),
    }
}

/// One device's line of io.stat (cgroup v2).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct IoEntry {
    pub major: u64,
    pub minor: u64,
    pub rbytes: u64,
    pub wbytes: u64,
}

/// The parts of containerd's cgroup v2 `Metrics` message orcad reports.
#[derive(Debug, Clone, Default)]
pub struct V2Metrics {
    pub pids_current: u64,
    pub pids_limit: u64,
    pub cpu_usage_usec: u64,
    pub cpu_user_usec: u64,
    pub cpu_system_usec: u64,
    pub nr_periods: u64,
    pub nr_throttled: u64,
    pub throttled_usec: u64,
    /// MemoryStat fields 1–31 (anon … thp_collapse_alloc), index = number - 1.
    pub mem_stat: [u64; 31],
    pub mem_usage: u64,
    pub mem_limit: u64,
    /// memory.events `oom` (dockerd reports it as failcnt).
    pub oom_events: u64,
    pub io: Vec<IoEntry>,
}

/// Decodes `io.containerd.cgroups.v2.Metrics` (containerd/cgroups
/// cgroup2/stats/metrics.proto): pids = 1 {current = 1, limit = 2}, cpu = 2
/// {usage_usec = 1, user_usec = 2, system_usec = 3, nr_periods = 4,
/// nr_throttled = 5, throttled_usec = 6}, memory = 4 (fields 1–31 counters,
/// usage = 32, usage_limit = 33), io = 6 {repeated usage = 1 IOEntry{major
/// = 1, minor = 2, rbytes = 3, wbytes = 4}}, memory_events = 8 {oom = 4}.
pub fn decode_v2(b: &[u8]) -> V2Metrics {
    let pids = sub(b, 1);
    let cpu = sub(b, 2);
    let mem = sub(b, 4);
    let io = sub(b, 6);
    let events = sub(b, 8);
    let mut mem_stat = [0u64; 31];
    for (n, w) in fields(mem) {
        if let (1..=31, Wire::Varint(v)) = (n, w) {
            mem_stat[n as usize - 1] = v;
        }
    }
    let io = fields(io)
        .into_iter()
        .filter_map(|(n, w)| match (n, w) {
            (1, Wire::Bytes(e)) => Some(IoEntry {
                major: uint(e, 1),
                minor: uint(e, 2),
                rbytes: uint(e, 3),
                wbytes: uint(e, 4),
            }),
            _ => None,
        })
        .collect();
    V2Metrics {
        pids_current: uint(pids, 1),
        pids_limit: uint(pids, 2),
        cpu_usage_usec: uint(cpu, 1),
        cpu_user_usec: uint(cpu, 2),
        cpu_system_usec: uint(cpu, 3),
        nr_periods: uint(cpu, 4),
        nr_throttled: uint(cpu, 5),
        throttled_usec: uint(cpu, 6),
        mem_stat,
        mem_usage: uint(mem, 32),
        mem_limit: uint(mem, 33),
        oom_events: uint(events, 4),
        io,
    }
}

/// The v2 memory.stat keys dockerd reports, by MemoryStat field number - 1.
const MEM_STAT_V2_NAMES: [&str; 31] = [
    "anon",
    "file",
    "kernel_stack",
    "slab",
    "sock",
    "shmem",
    "file_mapped",
    "file_dirty",
    "file_writeback",
    "anon_thp",
    "inactive_anon",
    "active_anon",
    "inactive_file",
    "active_file",
    "unevictable",
    "slab_reclaimable",
    "slab_unreclaimable",
    "pgfault",
    "pgmajfault",
    "workingset_refault",
    "workingset_activate",
    "workingset_nodereclaim",
    "pgrefill",
    "pgscan",
    "pgsteal",
    "pgactivate",
    "pgdeactivate",
    "pglazyfree",
    "pglazyfreed",
    "thp_fault_alloc",
    "thp_collapse_alloc",
];

const MEM_STAT_NAMES: &[&str] = &[
    "cache",
    "rss",
    "rss_huge",
    "mapped_file",
    "dirty",
    "writeback",
    "pgpgin",
    "pgpgout",
    "pgfault",
    "pgmajfault",
    "inactive_anon",
    "active_anon",
    "inactive_file",
    "active_file",
    "unevictable",
    "hierarchical_memory_limit",
    "hierarchical_memsw_limit",
    "total_cache",
    "total_rss",
    "total_rss_huge",
    "total_mapped_file",
    "total_dirty",
    "total_writeback",
    "total_pgpgin",
    "total_pgpgout",
    "total_pgfault",
    "total_pgmajfault",
    "total_inactive_anon",
    "total_active_anon",
    "total_inactive_file",
    "total_active_file",
    "total_unevictable",
];

/// Host CPU time in nanoseconds (the first line of /proc/stat).
fn system_cpu_ns() -> u64 {
    let s = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: u64 = s
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .take(7)
        .filter_map(|v| v.parse::<u64>().ok())
        .sum();
    // SAFETY: sysconf only reads a system constant.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let hz = if hz > 0 { hz as u64 } else { 100 };
    ticks * (1_000_000_000 / hz)
}

fn host_memory() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .unwrap_or(u64::MAX)
}

fn cpu_json(s: Option<&Sample>) -> Value {
    let online = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let Some(s) = s else {
        return json!({
            "cpu_usage": {"total_usage": 0, "usage_in_kernelmode": 0, "usage_in_usermode": 0},
            "throttling_data": {"periods": 0, "throttled_periods": 0, "throttled_time": 0},
        });
    };
    let (usage, throttling) = match &s.metrics {
        Metrics::V1(m) => (
            json!({
                "total_usage": m.cpu_total,
                "percpu_usage": m.per_cpu,
                "usage_in_kernelmode": m.cpu_kernel,
                "usage_in_usermode": m.cpu_user,
            }),
            json!({
                "periods": m.throttle[0],
                "throttled_periods": m.throttle[1],
                "throttled_time": m.throttle[2],
            }),
        ),
        // cgroup v2 counts microseconds and has no per-CPU figures (dockerd
        // leaves percpu_usage out).
        Metrics::V2(m) => (
            json!({
                "total_usage": m.cpu_usage_usec.saturating_mul(1000),
                "usage_in_kernelmode": m.cpu_system_usec.saturating_mul(1000),
                "usage_in_usermode": m.cpu_user_usec.saturating_mul(1000),
            }),
            json!({
                "periods": m.nr_periods,
                "throttled_periods": m.nr_throttled,
                "throttled_time": m.throttled_usec.saturating_mul(1000),
            }),
        ),
    };
    json!({
        "cpu_usage": usage,
        "system_cpu_usage": s.system_cpu,
        "online_cpus": online,
        "throttling_data": throttling,
    })
}

/// Docker's `memory_stats` for a running container (`limit` capped at the
/// host's memory, as dockerd does).
fn memory_json(m: &Metrics) -> Value {
    match m {
        Metrics::V1(m) => {
            let mut stats = serde_json::Map::new();
            for (n, v) in &m.mem_stat {
                if let Some(k) = MEM_STAT_NAMES.get(*n as usize - 1) {
                    stats.insert((*k).to_string(), json!(v));
                }
            }
            json!({
                "usage": m.mem_usage,
                "max_usage": m.mem_max,
                "stats": stats,
                "failcnt": m.mem_failcnt,
                "limit": m.mem_limit.min(host_memory()),
            })
        }
        // dockerd on v2: every memory.stat key it knows (0 when absent), no
        // max_usage; failcnt is memory.events' oom count (left out when 0).
        Metrics::V2(m) => {
            let mut stats = serde_json::Map::new();
            for (i, k) in MEM_STAT_V2_NAMES.iter().enumerate() {
                stats.insert((*k).to_string(), json!(m.mem_stat[i]));
            }
            let mut v = json!({
                "usage": m.mem_usage,
                "stats": stats,
                "limit": m.mem_limit.min(host_memory()),
            });
            if m.oom_events > 0 {
                v["failcnt"] = json!(m.oom_events);
            }
            v
        }
    }
}

/// Docker's `blkio_stats`: v1 has none here; v2 gives per-device read and
/// write bytes in io_service_bytes_recursive (the rest stays null, as with
/// dockerd).
fn blkio_json(m: Option<&Metrics>) -> Value {
    let service_bytes = match m {
        Some(Metrics::V2(m)) if !m.io.is_empty() => {
            let mut v = Vec::new();
            for e in &m.io {
                v.push(
                    json!({"major": e.major, "minor": e.minor, "op": "read", "value": e.rbytes}),
                );
                v.push(
                    json!({"major": e.major, "minor": e.minor, "op": "write", "value": e.wbytes}),
                );
            }
            Value::Array(v)
        }
        _ => Value::Null,
    };
    json!({
        "io_service_bytes_recursive": service_bytes, "io_serviced_recursive": null,
        "io_queue_recursive": null, "io_service_time_recursive": null,
        "io_wait_time_recursive": null, "io_merged_recursive": null,
        "io_time_recursive": null, "sectors_recursive": null,
    })
}

fn stats_json(id: &str, name: &str, cur: &Sample, pre: Option<&Sample>) -> Value {
    let running = !cur.at.is_empty();
    let (pids_current, pids_limit) = match &cur.metrics {
        Metrics::V1(m) => (m.pids_current, m.pids_limit),
        Metrics::V2(m) => (m.pids_current, m.pids_limit),
    };
    json!({
        "read": if running { cur.at.as_str() } else { util::ZERO_TIME },
        "preread": pre.map(|p| p.at.as_str()).unwrap_or(util::ZERO_TIME),
        "pids_stats": if running {
            json!({"current": pids_current, "limit": if pids_limit > 0 { json!(pids_limit) } else { Value::Null }})
        } else {
            json!({})
        },
        "blkio_stats": blkio_json(running.then_some(&cur.metrics)),
        "num_procs": 0,
        "storage_stats": {},
        "cpu_stats": cpu_json(running.then_some(cur)),
        "precpu_stats": cpu_json(pre),
        "memory_stats": if running { memory_json(&cur.metrics) } else { json!({}) },
        "name": name,
        "id": id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_metrics_and_ps() {
        // pids{current: 3, limit: 20}, memory{usage{limit: 64, usage: 5}}.
        let pids = [0x08, 3, 0x10, 20];
        let entry = [0x08, 64, 0x10, 5];
        let mut mem = vec![0x08, 7]; // cache = 7
        mem.extend_from_slice(&[0x8a, 0x02, entry.len() as u8]); // field 33, wt 2
        mem.extend_from_slice(&entry);
        let mut b = vec![0x12, pids.len() as u8];
        b.extend_from_slice(&pids);
        b.extend_from_slice(&[0x22, mem.len() as u8]);
        b.extend_from_slice(&mem);
        let m = decode_v1(&b);
        assert_eq!((m.pids_current, m.pids_limit), (3, 20));
        assert_eq!((m.mem_limit, m.mem_usage), (64, 5));
        assert_eq!(m.mem_stat, vec![(1, 7)]);

        let out = "UID PID PPID C STIME TTY TIME CMD\nroot 10 1 0 01:00 ? 00:00:00 sleep 100\nroot 11 1 0 01:00 ? 00:00:00 other\n";
        let v = parse_ps(out, &HashSet::from([10])).unwrap();
        assert_eq!(v["Processes"][0][7], "sleep 100");
        assert_eq!(v["Processes"].as_array().unwrap().len(), 1);
    }

    /// A v2 Metrics message as orca-shim and containerd encode it.
    fn v2_message() -> Vec<u8> {
        use containerd_shim_protos::cgroups_v2::metrics as v2;
        use containerd_shim_protos::protobuf::Message;
        let mut m = v2::Metrics::new();
        let mut p = v2::PidsStat::new();
        p.current = 4;
        p.limit = 100;
        m.pids = Some(p).into();
        let mut c = v2::CPUStat::new();
        c.usage_usec = 1_500_000;
        c.user_usec = 1_000_000;
        c.system_usec = 500_000;
        c.nr_periods = 30;
        c.nr_throttled = 7;
        c.throttled_usec = 2_000;
        m.cpu = Some(c).into();
        let mut ms = v2::MemoryStat::new();
        ms.anon = 3 << 20;
        ms.file = 5 << 20;
        ms.kernel_stack = 16384;
        ms.inactive_file = 4 << 20;
        ms.active_file = 1 << 20;
        ms.pgfault = 1234;
        ms.thp_collapse_alloc = 9;
        ms.usage = 10 << 20;
        ms.usage_limit = 64 << 20;
        ms.swap_usage = 77;
        ms.max_usage = 99 << 20;
        m.memory = Some(ms).into();
        let mut io = v2::IOStat::new();
        let mut e = v2::IOEntry::new();
        e.major = 8;
        e.minor = 16;
        e.rbytes = 4096;
        e.wbytes = 8192;
        e.rios = 1;
        e.wios = 2;
        io.usage.push(e);
        let mut e = v2::IOEntry::new();
        e.major = 253;
        e.minor = 0;
        e.rbytes = 1;
        io.usage.push(e);
        m.io = Some(io).into();
        let mut ev = v2::MemoryEvents::new();
        ev.oom = 2;
        ev.oom_kill = 1;
        ev.max = 5;
        m.memory_events = Some(ev).into();
        m.write_to_bytes().unwrap()
    }

    #[test]
    fn decodes_real_v2_metrics() {
        let m = decode_v2(&v2_message());
        assert_eq!((m.pids_current, m.pids_limit), (4, 100));
        assert_eq!(
            (m.cpu_usage_usec, m.cpu_user_usec, m.cpu_system_usec),
            (1_500_000, 1_000_000, 500_000)
        );
        assert_eq!(
            (m.nr_periods, m.nr_throttled, m.throttled_usec),
            (30, 7, 2_000)
        );
        assert_eq!((m.mem_usage, m.mem_limit), (10 << 20, 64 << 20));
        assert_eq!(m.mem_stat[0], 3 << 20); // anon
        assert_eq!(m.mem_stat[12], 4 << 20); // inactive_file
        assert_eq!(m.mem_stat[30], 9); // thp_collapse_alloc
        assert_eq!(m.oom_events, 2);
        assert_eq!(
            m.io,
            vec![
                IoEntry {
                    major: 8,
                    minor: 16,
                    rbytes: 4096,
                    wbytes: 8192
                },
                IoEntry {
                    major: 253,
                    minor: 0,
                    rbytes: 1,
                    wbytes: 0
                },
            ]
        );
        // An empty message (a task without cgroup files) decodes to zeros.
        let z = decode_v2(&[]);
        assert_eq!((z.mem_usage, z.pids_current, z.io.len()), (0, 0, 0));
    }

    #[test]
    fn v2_stats_json_like_dockerd() {
        let pre = Sample {
            at: "2026-01-01T00:00:00Z".into(),
            metrics: Metrics::V2(Box::new(V2Metrics {
                cpu_usage_usec: 500_000,
                ..Default::default()
            })),
            system_cpu: 10_000_000_000,
        };
        let cur = Sample {
            at: "2026-01-01T00:00:01Z".into(),
            metrics: Metrics::V2(Box::new(decode_v2(&v2_message()))),
            system_cpu: 12_000_000_000,
        };
        let v = stats_json("abc", "/c1", &cur, Some(&pre));
        let mem = &v["memory_stats"];
        assert_eq!(mem["usage"], 10 << 20);
        assert_eq!(mem["limit"], (64u64 << 20).min(host_memory()));
        assert_eq!(mem["failcnt"], 2);
        assert!(mem.get("max_usage").is_none(), "{mem}");
        let stats = mem["stats"].as_object().unwrap();
        assert_eq!(stats.len(), 31);
        assert_eq!(stats["anon"], 3 << 20);
        assert_eq!(stats["file"], 5 << 20);
        assert_eq!(stats["kernel_stack"], 16384);
        assert_eq!(stats["inactive_file"], 4 << 20);
        assert_eq!(stats["pgfault"], 1234);
        assert_eq!(stats["slab"], 0);
        // No v1 keys: the docker CLI picks its v2 formula by their absence.
        assert!(!stats.contains_key("total_inactive_file"));
        assert!(!stats.contains_key("cache"));
        // The docker CLI's memory usage on v2: usage - inactive_file.
        let usage = mem["usage"].as_u64().unwrap();
        let inactive = stats["inactive_file"].as_u64().unwrap();
        let shown = if inactive < usage {
            usage - inactive
        } else {
            usage
        };
        assert_eq!(shown, 6 << 20);
        let pct = shown as f64 / mem["limit"].as_f64().unwrap() * 100.0;
        assert!(pct > 0.0 && pct <= 100.0, "{pct}");

        let cpu = &v["cpu_stats"];
        assert_eq!(cpu["cpu_usage"]["total_usage"], 1_500_000_000u64);
        assert_eq!(cpu["cpu_usage"]["usage_in_kernelmode"], 500_000_000u64);
        assert_eq!(cpu["cpu_usage"]["usage_in_usermode"], 1_000_000_000u64);
        assert!(cpu["cpu_usage"].get("percpu_usage").is_none());
        assert_eq!(cpu["throttling_data"]["periods"], 30);
        assert_eq!(cpu["throttling_data"]["throttled_periods"], 7);
        assert_eq!(cpu["throttling_data"]["throttled_time"], 2_000_000);
        assert_eq!(cpu["system_cpu_usage"], 12_000_000_000u64);
        // The docker CLI's CPU %: container delta / system delta × CPUs.
        let online = cpu["online_cpus"].as_f64().unwrap();
        let d_cpu = 1_500_000_000f64
            - v["precpu_stats"]["cpu_usage"]["total_usage"]
                .as_f64()
                .unwrap();
        let d_sys = 12e9 - v["precpu_stats"]["system_cpu_usage"].as_f64().unwrap();
        let cpu_pct = d_cpu / d_sys * online * 100.0;
        assert!((cpu_pct - 50.0 * online).abs() < 1e-6, "{cpu_pct}");

        assert_eq!(v["pids_stats"], json!({"current": 4, "limit": 100}));
        let io = v["blkio_stats"]["io_service_bytes_recursive"]
            .as_array()
            .unwrap();
        assert_eq!(io.len(), 4);
        assert_eq!(
            io[0],
            json!({"major": 8, "minor": 16, "op": "read", "value": 4096})
        );
        assert_eq!(
            io[1],
            json!({"major": 8, "minor": 16, "op": "write", "value": 8192})
        );
        assert!(v["blkio_stats"]["io_serviced_recursive"].is_null());

        // No oom events: no failcnt (dockerd's omitempty).
        let mut m = decode_v2(&v2_message());
        m.oom_events = 0;
        let quiet = Sample {
            metrics: Metrics::V2(Box::new(m)),
            ..cur.clone()
        };
        assert!(stats_json("abc", "/c1", &quiet, None)["memory_stats"]
            .get("failcnt")
            .is_none());
    }

    #[test]
    fn v1_stats_json_unchanged() {
        let mut m = V1Metrics {
            mem_usage: 100,
            mem_max: 200,
            mem_limit: 1000,
            mem_failcnt: 3,
            per_cpu: vec![5, 6],
            cpu_total: 11,
            ..Default::default()
        };
        m.mem_stat = vec![(1, 7), (30, 40)];
        let s = Sample {
            at: "t".into(),
            metrics: Metrics::V1(m),
            system_cpu: 1,
        };
        let v = stats_json("abc", "/c1", &s, None);
        assert_eq!(v["memory_stats"]["max_usage"], 200);
        assert_eq!(v["memory_stats"]["failcnt"], 3);
        assert_eq!(v["memory_stats"]["stats"]["cache"], 7);
        assert_eq!(v["memory_stats"]["stats"]["total_inactive_file"], 40);
        assert_eq!(v["cpu_stats"]["cpu_usage"]["percpu_usage"], json!([5, 6]));
        assert!(v["blkio_stats"]["io_service_bytes_recursive"].is_null());
    }
}
