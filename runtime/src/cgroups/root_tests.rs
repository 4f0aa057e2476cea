//! Tests against the real cgroupfs. They need root and a writable /sys/fs/cgroup and are
//! skipped (with a message) otherwise. Each uses a unique cgroup `orca-test-<pid>-<n>` and a
//! guard that kills its children and removes the cgroup even when an assertion fails.

use super::*;
use oci_spec::runtime::{
    LinuxCpuBuilder, LinuxDeviceCgroupBuilder, LinuxMemoryBuilder, LinuxPidsBuilder,
    LinuxResourcesBuilder,
};
use std::io::{Read, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

static COUNTER: AtomicU32 = AtomicU32::new(0);

fn unique_name() -> String {
    format!(
        "orca-test-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst)
    )
}

/// None (test skipped) unless we are root on a host with writable cgroupfs.
fn usable_mode() -> Option<CgroupMode> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipping: cgroup tests need root");
        return None;
    }
    match CgroupManager::detect_mode() {
        Ok(m) => Some(m),
        Err(e) => {
            eprintln!("skipping: {e}");
            None
        }
    }
}

struct Guard {
    mgr: CgroupManager,
    children: Vec<Child>,
    extra_dirs: Vec<PathBuf>,
}

impl Guard {
    fn new(mgr: CgroupManager) -> Self {
        Guard {
            mgr,
            children: Vec::new(),
            extra_dirs: Vec::new(),
        }
    }

    /// Spawn `sh -c 'read x; <script>'`; the script runs once [`release`] is called, so it can
    /// be moved into the cgroup first.
    fn spawn_waiting(&mut self, script: &str) -> (i32, ChildStdin) {
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(format!("read x; {script}"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn sh");
        let stdin = child.stdin.take().expect("stdin");
        let pid = child.id() as i32;
        self.children.push(child);
        (pid, stdin)
    }

    fn child(&mut self, pid: i32) -> &mut Child {
        self.children
            .iter_mut()
            .find(|c| c.id() as i32 == pid)
            .expect("child")
    }
}

fn release(mut stdin: ChildStdin) {
    stdin.write_all(b"go\n").expect("release child");
}

fn wait_exec(pid: i32, comm: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == comm) {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("pid {pid} did not exec {comm}");
}

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.mgr.thaw();
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Err(e) = self.mgr.destroy() {
            eprintln!("cleanup: {e}");
        }
        for d in &self.extra_dirs {
            let _ = files::remove_tree(d);
        }
    }
}

fn new_manager() -> Option<(Guard, String)> {
    usable_mode()?;
    let name = unique_name();
    let mgr = CgroupManager::new(Some(Path::new(&format!("/{name}"))), &name).expect("new");
    Some((Guard::new(mgr), name))
}

#[test]
fn lifecycle_limits_pids_freeze_stats_destroy() {
    let Some((mut g, name)) = new_manager() else {
        return;
    };
    let mode = g.mgr.mode();
    g.mgr.create().expect("create");
    for dir in g.mgr.paths().unique_dirs() {
        assert!(dir.is_dir(), "{} not created", dir.display());
        assert!(dir.ends_with(&name));
    }
    if mode == CgroupMode::Hybrid {
        assert!(g.mgr.paths().get("unified").is_some());
    }

    let res = LinuxResourcesBuilder::default()
        .memory(
            LinuxMemoryBuilder::default()
                .limit(64 * 1024 * 1024)
                .build()
                .unwrap(),
        )
        .pids(LinuxPidsBuilder::default().limit(20).build().unwrap())
        .cpu(
            LinuxCpuBuilder::default()
                .shares(512u64)
                .quota(50_000i64)
                .period(100_000u64)
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();
    g.mgr.apply(&res).expect("apply");

    match mode {
        CgroupMode::V2 => {
            let d = g.mgr.paths().get("unified").unwrap();
            assert_eq!(files::read(d, "memory.max").unwrap(), "67108864");
            assert_eq!(files::read(d, "pids.max").unwrap(), "20");
            assert_eq!(files::read(d, "cpu.max").unwrap(), "50000 100000");
        }
        _ => {
            let m = g.mgr.paths().get("memory").unwrap();
            assert_eq!(files::read(m, "memory.limit_in_bytes").unwrap(), "67108864");
            let p = g.mgr.paths().get("pids").unwrap();
            assert_eq!(files::read(p, "pids.max").unwrap(), "20");
            let c = g.mgr.paths().get("cpu").unwrap();
            assert_eq!(files::read(c, "cpu.shares").unwrap(), "512");
            assert_eq!(files::read(c, "cpu.cfs_quota_us").unwrap(), "50000");
            assert_eq!(files::read(c, "cpu.cfs_period_us").unwrap(), "100000");
            if let Some(cs) = g.mgr.paths().get("cpuset") {
                assert!(!files::read(cs, "cpuset.cpus").unwrap().is_empty());
                assert!(!files::read(cs, "cpuset.mems").unwrap().is_empty());
            }
        }
    }

    // A child that execs (and so allocates memory) after it joined the cgroup.
    let (pid, stdin) =
        g.spawn_waiting("i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; exec sleep 1000");
    g.mgr.add_task(pid).expect("add_task");
    release(stdin);
    wait_exec(pid, "sleep");

    let pids = g.mgr.pids().expect("pids");
    assert_eq!(pids, vec![pid]);
    let own = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    for line in own.lines() {
        if line.starts_with("0::") && mode == CgroupMode::V1 {
            continue;
        }
        assert!(line.ends_with(&format!("/{name}")), "{line} not in {name}");
    }

    g.mgr.freeze().expect("freeze");
    assert!(g.mgr.is_frozen().expect("is_frozen"));
    g.mgr.thaw().expect("thaw");
    assert!(!g.mgr.is_frozen().expect("is_frozen"));

    let st = g.mgr.stats().expect("stats");
    assert!(st.memory.usage.usage > 0, "{st:?}");
    assert_eq!(st.memory.usage.limit, 64 * 1024 * 1024);
    assert_eq!(st.pids.current, 1);
    assert_eq!(st.pids.limit, 20);
    assert!(st.cpu.usage.total > 0, "{st:?}");
    assert!(!st.memory.raw.is_empty());
    let json = serde_json::to_value(&st).unwrap();
    assert!(json["memory"]["usage"]["usage"].as_u64().unwrap() > 0);

    // Destroy while a process is inside fails (EBUSY after retries); after it exits it works.
    g.child(pid).kill().unwrap();
    g.child(pid).wait().unwrap();
    g.mgr.destroy().expect("destroy");
    for dir in g.mgr.paths().unique_dirs() {
        assert!(!dir.exists(), "{} still exists", dir.display());
    }
    // Idempotent.
    g.mgr.destroy().expect("second destroy");
}

#[test]
fn relative_path_goes_below_own_cgroup() {
    if usable_mode().is_none() {
        return;
    }
    let name = unique_name();
    let mgr = CgroupManager::new(Some(Path::new(&name)), "x").expect("new");
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap();
    let mem_own = paths::parse_proc_cgroup(&own)
        .into_iter()
        .find(|e| e.controllers.iter().any(|c| c == "memory"));
    if let (Some(dir), Some(e)) = (mgr.paths().get("memory"), mem_own) {
        assert!(
            dir.to_string_lossy()
                .ends_with(&format!("{}/{name}", e.path.trim_end_matches('/'))),
            "{} vs {}",
            dir.display(),
            e.path
        );
    }
}

#[test]
fn kill_all_signals_every_process() {
    let Some((mut g, _)) = new_manager() else {
        return;
    };
    g.mgr.create().expect("create");
    let mut pids = Vec::new();
    for _ in 0..2 {
        let (pid, stdin) = g.spawn_waiting("exec sleep 1000");
        g.mgr.add_task(pid).expect("add_task");
        release(stdin);
        wait_exec(pid, "sleep");
        pids.push(pid);
    }
    assert_eq!(g.mgr.pids().unwrap(), {
        let mut p = pids.clone();
        p.sort_unstable();
        p
    });
    g.mgr.kill_all(libc::SIGTERM).expect("kill_all");
    use std::os::unix::process::ExitStatusExt;
    for pid in pids {
        let status = g.child(pid).wait().unwrap();
        assert_eq!(status.signal(), Some(libc::SIGTERM));
    }
    assert!(!g.mgr.is_frozen().unwrap());
    assert!(g.mgr.pids().unwrap().is_empty());
}

#[test]
fn oom_kill_is_reported() {
    let Some((mut g, _)) = new_manager() else {
        return;
    };
    g.mgr.create().expect("create");
    let limit = 32 * 1024 * 1024;
    let res = LinuxResourcesBuilder::default()
        .memory(
            LinuxMemoryBuilder::default()
                .limit(limit)
                .swap(limit)
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();
    g.mgr.apply(&res).expect("apply");
    let mut notifier = g.mgr.oom_notifier().expect("oom_notifier");
    assert!(!notifier.wait(Duration::from_millis(100)).unwrap());

    let (pid, stdin) = g.spawn_waiting("exec dd if=/dev/zero of=/dev/null bs=256M count=1");
    g.mgr.add_task(pid).expect("add_task");
    release(stdin);
    assert!(notifier.wait(Duration::from_secs(20)).expect("wait"));
    use std::os::unix::process::ExitStatusExt;
    let status = g.child(pid).wait().unwrap();
    assert_eq!(status.signal(), Some(libc::SIGKILL));
}

#[test]
fn device_rules_are_enforced() {
    let Some((mut g, _)) = new_manager() else {
        return;
    };
    if g.mgr.mode() == CgroupMode::V2 {
        // Covered by bpf_device_filter_is_enforced on the cgroup2 hierarchy.
        return;
    }
    g.mgr.create().expect("create");
    let res = LinuxResourcesBuilder::default()
        .devices(vec![LinuxDeviceCgroupBuilder::default()
            .allow(false)
            .access("rwm")
            .build()
            .unwrap()])
        .build()
        .unwrap();
    g.mgr.apply(&res).expect("apply");
    let d = g.mgr.paths().get("devices").unwrap();
    let list = files::read(d, "devices.list").unwrap();
    assert!(!list.contains("a *:* rwm"), "{list}");
    assert!(list.contains("c 1:3 rwm"), "{list}");
    assert!(list.contains("c 136:* rwm"), "{list}");

    let out = run_device_probe(&mut g, |pid, g| g.mgr.add_task(pid).expect("add_task"));
    assert!(out.contains("null-ok"), "{out}");
    assert!(out.contains("kmsg-denied"), "{out}");
}

/// Start a shell that, once in the cgroup, opens /dev/null (allowed by default) and /dev/kmsg
/// (not allowed), and return what it printed.
fn run_device_probe(g: &mut Guard, join: impl FnOnce(i32, &mut Guard)) -> String {
    let (pid, stdin) = g.spawn_waiting(
        ": </dev/null && echo null-ok; if (: </dev/kmsg) 2>/dev/null; then echo kmsg-ok; else echo kmsg-denied; fi",
    );
    join(pid, g);
    release(stdin);
    let child = g.child(pid);
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    child.wait().unwrap();
    out
}

#[test]
fn bpf_device_filter_is_enforced() {
    let Some(mode) = usable_mode() else {
        return;
    };
    if mode == CgroupMode::V1 {
        eprintln!("skipping: no cgroup2 hierarchy");
        return;
    }
    // Use the cgroup2 hierarchy directly (on hybrid hosts the manager uses v1 devices).
    let root = if mode == CgroupMode::V2 {
        CGROUP_ROOT
    } else {
        HYBRID_UNIFIED_ROOT
    };
    let dir = Path::new(root).join(unique_name());
    let mut paths = BTreeMap::new();
    paths.insert(UNIFIED_KEY.to_string(), dir.clone());
    let mut g = Guard::new(CgroupManager::from_paths(CgroupPaths {
        mode: CgroupMode::V2,
        paths,
    }));
    files::mkdir_all(&dir).unwrap();
    g.extra_dirs.push(dir.clone());

    let rules = devices::full_rule_list(&[]).unwrap();
    devices::apply_v2(&dir, &rules).expect("attach device program");
    // Re-applying replaces the program instead of stacking another one.
    devices::apply_v2(&dir, &rules).expect("re-attach device program");

    let out = run_device_probe(&mut g, |pid, _| {
        files::write(&dir, "cgroup.procs", &pid.to_string()).expect("join cgroup2")
    });
    assert!(out.contains("null-ok"), "{out}");
    assert!(out.contains("kmsg-denied"), "{out}");
}

#[test]
fn unified_on_hybrid_requires_existing_file() {
    let Some((g, _)) = new_manager() else {
        return;
    };
    if g.mgr.mode() != CgroupMode::Hybrid {
        return;
    }
    g.mgr.create().expect("create");
    let mut u = std::collections::HashMap::new();
    u.insert("memory.max".to_string(), "1000000".to_string());
    let res = LinuxResourcesBuilder::default().unified(u).build().unwrap();
    let err = g.mgr.apply(&res).unwrap_err();
    assert!(matches!(err, CgroupError::NotAvailable { .. }), "{err}");
}

#[test]
fn blkio_weight_missing_is_reported() {
    let Some((g, _)) = new_manager() else {
        return;
    };
    if g.mgr.mode() == CgroupMode::V2 {
        return;
    }
    g.mgr.create().expect("create");
    let Some(bdir) = g.mgr.paths().get("blkio") else {
        return;
    };
    let res = LinuxResourcesBuilder::default()
        .block_io(
            oci_spec::runtime::LinuxBlockIoBuilder::default()
                .weight(0u16)
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();
    // Weight 0 never fails.
    g.mgr.apply(&res).expect("weight 0");
    let res = LinuxResourcesBuilder::default()
        .block_io(
            oci_spec::runtime::LinuxBlockIoBuilder::default()
                .weight(500u16)
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();
    let r = g.mgr.apply(&res);
    if files::exists(bdir, "blkio.weight") || files::exists(bdir, "blkio.bfq.weight") {
        r.expect("weight 500");
    } else {
        let e = r.unwrap_err();
        assert!(e.to_string().contains("blkio"), "{e}");
    }
}

/// The cgroup v2 code paths (create with ancestors, add_task, pids, cgroup.freeze,
/// cgroup.events, cpu.stat, cgroup.kill, destroy) exercised on the cgroup2 hierarchy, which
/// on a hybrid host has no controllers but all the core files.
#[test]
fn v2_core_files_on_cgroup2_hierarchy() {
    let Some(mode) = usable_mode() else {
        return;
    };
    if mode == CgroupMode::V1 {
        eprintln!("skipping: no cgroup2 hierarchy");
        return;
    }
    let root = if mode == CgroupMode::V2 {
        CGROUP_ROOT
    } else {
        HYBRID_UNIFIED_ROOT
    };
    let parent = Path::new(root).join(unique_name());
    let dir = parent.join("nested");
    let mut paths = BTreeMap::new();
    paths.insert(UNIFIED_KEY.to_string(), dir.clone());
    let mut g = Guard::new(CgroupManager::from_paths(CgroupPaths {
        mode: CgroupMode::V2,
        paths,
    }));
    g.extra_dirs.push(parent.clone());
    g.mgr.create().expect("create");
    assert!(dir.is_dir());

    let (pid, stdin) = g.spawn_waiting("exec sleep 1000");
    g.mgr.add_task(pid).expect("add_task");
    release(stdin);
    wait_exec(pid, "sleep");
    assert_eq!(g.mgr.pids().unwrap(), vec![pid]);

    g.mgr.freeze().expect("freeze");
    assert!(g.mgr.is_frozen().unwrap());
    g.mgr.thaw().expect("thaw");
    assert!(!g.mgr.is_frozen().unwrap());

    let st = g.mgr.stats().expect("stats");
    assert!(st.cpu.usage.total > 0, "{st:?}");

    g.mgr.kill_all(libc::SIGKILL).expect("kill_all");
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(g.child(pid).wait().unwrap().signal(), Some(libc::SIGKILL));
    g.mgr.destroy().expect("destroy");
    assert!(!dir.exists());
    // destroy never removes parents.
    assert!(parent.exists());
}
