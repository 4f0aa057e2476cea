//! More container operations: restart, pause/unpause (`Tasks.Pause` /
//! `Resume`), rename, top (`Tasks.ListPids` + host `ps`), and stats
//! (`Tasks.Metrics`, cgroup v1 metrics, in Docker's JSON shape).

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
        if !m.type_url.ends_with(CGROUPS_V1_METRICS) {
            return Err(EngineError::NotImplemented(format!(
                "stats from {} metrics are not implemented in orcad yet",
                m.type_url
            )));
        }
        Ok(Sample {
            at: util::now(),
            metrics: decode_v1(&m.value),
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
    metrics: V1Metrics,
    system_cpu: u64,
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
    match s {
        None => json!({
            "cpu_usage": {"total_usage": 0, "usage_in_kernelmode": 0, "usage_in_usermode": 0},
            "throttling_data": {"periods": 0, "throttled_periods": 0, "throttled_time": 0},
        }),
        Some(s) => {
            let m = &s.metrics;
            json!({
                "cpu_usage": {
                    "total_usage": m.cpu_total,
                    "percpu_usage": m.per_cpu,
                    "usage_in_kernelmode": m.cpu_kernel,
                    "usage_in_usermode": m.cpu_user,
                },
                "system_cpu_usage": s.system_cpu,
                "online_cpus": online,
                "throttling_data": {
                    "periods": m.throttle[0],
                    "throttled_periods": m.throttle[1],
                    "throttled_time": m.throttle[2],
                },
            })
        }
    }
}

fn stats_json(id: &str, name: &str, cur: &Sample, pre: Option<&Sample>) -> Value {
    let m = &cur.metrics;
    let mut stats = serde_json::Map::new();
    for (n, v) in &m.mem_stat {
        if let Some(k) = MEM_STAT_NAMES.get(*n as usize - 1) {
            stats.insert((*k).to_string(), json!(v));
        }
    }
    let running = !cur.at.is_empty();
    json!({
        "read": if running { cur.at.as_str() } else { util::ZERO_TIME },
        "preread": pre.map(|p| p.at.as_str()).unwrap_or(util::ZERO_TIME),
        "pids_stats": if running {
            json!({"current": m.pids_current, "limit": if m.pids_limit > 0 { json!(m.pids_limit) } else { Value::Null }})
        } else {
            json!({})
        },
        "blkio_stats": {
            "io_service_bytes_recursive": null, "io_serviced_recursive": null,
            "io_queue_recursive": null, "io_service_time_recursive": null,
            "io_wait_time_recursive": null, "io_merged_recursive": null,
            "io_time_recursive": null, "sectors_recursive": null,
        },
        "num_procs": 0,
        "storage_stats": {},
        "cpu_stats": cpu_json(running.then_some(cur)),
        "precpu_stats": cpu_json(pre),
        "memory_stats": if running {
            json!({
                "usage": m.mem_usage,
                "max_usage": m.mem_max,
                "stats": stats,
                "failcnt": m.mem_failcnt,
                "limit": m.mem_limit.min(host_memory()),
            })
        } else {
            json!({})
        },
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
}
