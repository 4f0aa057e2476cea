//! orca-runtime through its command line: the container lifecycle
//! (create/start/run/kill/delete/state/list/exec/ps/pause/resume/update/
//! events/spec/features) and what each part of config.json does inside the
//! container. Runs as root; every test uses its own runtime root, bundle,
//! container id and cgroup, and checks that nothing is left behind.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use orca_integration::*;
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(10);

fn orca() -> Runtime {
    require_root();
    Runtime::orca()
}

fn add_mount(b: &mut Bundle, m: Value) {
    b.config_mut()["mounts"]
        .as_array_mut()
        .expect("mounts is an array")
        .push(m);
}

/// A writable tmpfs on /tmp (the default root is read-only).
fn add_tmp(b: &mut Bundle) {
    add_mount(
        b,
        json!({"destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
               "options": ["nosuid", "nodev", "mode=1777"]}),
    );
}

fn run_fg(rt: &Runtime, b: &Bundle, id: &str) -> Output {
    rt.run(&["run", "-b", b.path_str(), id])
}

/// `run` in the foreground, asserting success; returns stdout.
#[track_caller]
fn run_ok(rt: &Runtime, b: &Bundle, id: &str) -> String {
    let o = run_fg(rt, b, id);
    assert_success(&o, &format!("orca-runtime run {id}"));
    out_str(&o)
}

/// `run -d`, waits for `running`; returns the init pid.
#[track_caller]
fn run_detached(rt: &Runtime, b: &Bundle, id: &str) -> i32 {
    let o = rt.run(&["run", "-d", "-b", b.path_str(), id]);
    assert_success(&o, &format!("orca-runtime run -d {id}"));
    assert!(
        wait_status(rt, id, "running", T),
        "{id} not running after run -d: {:?}",
        state_of(rt, id)
    );
    let pid = pid_of(rt, id);
    assert!(pid > 0, "state of {id} has no pid");
    pid
}

/// `delete -f` and the leak check.
#[track_caller]
fn force_delete_clean(rt: &Runtime, b: &Bundle, id: &str) {
    let o = rt.run(&["delete", "-f", id]);
    assert_success(&o, &format!("orca-runtime delete -f {id}"));
    assert_no_leftovers(rt, b, id);
}

fn host_dir(prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .expect("temp dir")
}

fn namespaces_without(b: &Bundle, typ: &str) -> Value {
    let ns: Vec<Value> = b.config()["linux"]["namespaces"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["type"] != typ)
        .cloned()
        .collect();
    Value::Array(ns)
}

// ---------------------------------------------------------------- run

#[test]
fn run_echo_prints_hello_and_leaves_nothing() {
    let rt = orca();
    let b = Bundle::busybox(&["echo", "hello"]);
    let id = unique_name("lc-echo");
    assert_eq!(run_ok(&rt, &b, &id), "hello\n");
    assert_no_leftovers(&rt, &b, &id);
    assert!(
        rt.container_ids().is_empty(),
        "run kept state: {:?}",
        rt.container_ids()
    );
}

#[test]
fn run_returns_the_container_exit_code() {
    let rt = orca();
    let mut b = Bundle::busybox(&["sh", "-c", "exit 7"]);
    let id = unique_name("lc-exit");
    let o = run_fg(&rt, &b, &id);
    assert_eq!(o.status.code(), Some(7), "{}", describe(&o));
    assert_no_leftovers(&rt, &b, &id);

    b.set_args(&["sh", "-c", "exit 0"]);
    let id = unique_name("lc-exit0");
    let o = run_fg(&rt, &b, &id);
    assert_eq!(o.status.code(), Some(0), "{}", describe(&o));
}

#[test]
fn run_of_a_killed_container_returns_128_plus_signal() {
    let rt = orca();
    let b = Bundle::busybox(&["sleep", "1000"]);
    let id = unique_name("lc-sig");
    let files = OutputFiles::new();
    let mut cmd = rt.cmd();
    cmd.args(["run", "-b", b.path_str(), &id]);
    files.attach(&mut cmd);
    let mut child = cmd.spawn().expect("spawn orca-runtime run");
    assert!(
        wait_status(&rt, &id, "running", T),
        "not running: {}",
        files.stderr()
    );
    let o = rt.run(&["kill", &id, "KILL"]);
    assert_success(&o, "kill KILL");
    let mut status = None;
    assert!(
        wait_until(T, || {
            status = child.try_wait().expect("try_wait");
            status.is_some()
        }),
        "run did not return after its container was killed"
    );
    assert_eq!(
        status.unwrap().code(),
        Some(128 + 9),
        "stderr: {}",
        files.stderr()
    );
    assert_no_leftovers(&rt, &b, &id);
}

// ---------------------------------------------------------------- create/start/kill/delete

#[test]
fn create_start_kill_delete_lifecycle() {
    let rt = orca();
    let shared = host_dir("orca-lc-host-");
    let pid_dir = host_dir("orca-lc-pid-");
    let mut b = Bundle::busybox(&["sh", "-c", "touch /host/started; exec sleep 1000"]);
    add_mount(
        &mut b,
        json!({"destination": "/host", "type": "bind",
               "source": shared.path(), "options": ["rbind", "rw"]}),
    );
    b.save();
    let id = unique_name("lc-life");
    let pid_file = pid_dir.path().join("init.pid");
    let files = OutputFiles::new();
    let st = run_with_files(
        &rt,
        &files,
        &[
            "create",
            "-b",
            b.path_str(),
            "--pid-file",
            pid_file.to_str().unwrap(),
            &id,
        ],
    );
    assert!(st.success(), "create failed: {st}: {}", files.stderr());

    // created: the state document, the pid file, the process waiting.
    let state = state_of(&rt, &id).expect("state after create");
    let mut keys: Vec<&str> = state
        .as_object()
        .unwrap()
        .keys()
        .map(|k| k.as_str())
        .collect();
    keys.sort();
    for k in [
        "ociVersion",
        "id",
        "pid",
        "status",
        "bundle",
        "rootfs",
        "created",
        "owner",
    ] {
        assert!(keys.contains(&k), "state lacks {k:?}: {state}");
    }
    assert_eq!(state["status"], "created", "{state}");
    assert_eq!(state["id"], id.as_str());
    let bundle_real = std::fs::canonicalize(b.path()).unwrap();
    assert_eq!(state["bundle"], bundle_real.to_str().unwrap());
    assert_eq!(
        state["rootfs"],
        bundle_real.join("rootfs").to_str().unwrap()
    );
    let created = state["created"].as_str().unwrap();
    assert!(
        created.len() >= 20 && created.contains('T') && created.ends_with('Z'),
        "created is not RFC 3339: {created}"
    );
    let pid = state["pid"].as_i64().unwrap() as i32;
    assert!(pid > 0 && process_alive(pid), "init {pid} not alive");
    assert_eq!(read_trim(&pid_file), pid.to_string(), "--pid-file content");
    assert!(rt.root().join(&id).is_dir(), "no state dir after create");
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !shared.path().join("started").exists(),
        "the container's command ran before start"
    );
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default();
    assert!(
        !exe.to_string_lossy().ends_with("busybox"),
        "init already executed busybox before start: {exe:?}"
    );

    // start → running, the command runs.
    let o = rt.run(&["start", &id]);
    assert_success(&o, "start");
    assert!(
        wait_until(T, || shared.path().join("started").exists()),
        "the command did not run after start; stderr: {}",
        files.stderr()
    );
    assert_eq!(status_of(&rt, &id).as_deref(), Some("running"));
    assert_eq!(pid_of(&rt, &id), pid, "pid changed after start");

    // kill by name → stopped, pid 0.
    let o = rt.run(&["kill", &id, "SIGKILL"]);
    assert_success(&o, "kill SIGKILL");
    assert!(
        wait_status(&rt, &id, "stopped", T),
        "not stopped after kill"
    );
    assert_eq!(state_of(&rt, &id).unwrap()["pid"], 0);
    assert!(!process_alive(pid), "init {pid} still alive");

    // delete removes everything.
    let cg = b.cgroups_path();
    assert!(
        !cgroup_leftovers(&cg).is_empty(),
        "the container had no cgroup directory at {cg}"
    );
    let o = rt.run(&["delete", &id]);
    assert_success(&o, "delete");
    assert!(!rt.root().join(&id).exists(), "state dir kept after delete");
    let o = rt.run(&["state", &id]);
    assert!(
        !o.status.success() && err_str(&o).contains("does not exist"),
        "state after delete: {}",
        describe(&o)
    );
    assert_no_leftovers(&rt, &b, &id);
}

#[test]
fn kill_by_number_stops_the_container() {
    let rt = orca();
    let b = Bundle::busybox(&["sleep", "1000"]);
    let id = unique_name("lc-kill9");
    let pid = run_detached(&rt, &b, &id);
    let o = rt.run(&["kill", &id, "9"]);
    assert_success(&o, "kill 9");
    assert!(wait_status(&rt, &id, "stopped", T));
    assert_eq!(state_of(&rt, &id).unwrap()["pid"], 0);
    assert!(!process_alive(pid));
    let o = rt.run(&["delete", &id]);
    assert_success(&o, "delete");
    assert_no_leftovers(&rt, &b, &id);
}

#[test]
fn kill_all_kills_every_process_of_a_container_without_pid_namespace() {
    let rt = orca();
    // Without a pid namespace, killing the init leaves its children alive:
    // only --all (the whole cgroup) reaches them.
    let mut b = Bundle::busybox(&["sh", "-c", "sleep 1001 & sleep 1002 & wait"]);
    b.config_mut()["linux"]["namespaces"] = namespaces_without(&b, "pid");
    b.save();
    let id = unique_name("lc-killall");
    run_detached(&rt, &b, &id);
    let mut pids: Vec<i32> = Vec::new();
    assert!(
        wait_until(T, || {
            let o = rt.run(&["ps", "--format", "json", &id]);
            pids = serde_json::from_slice(&o.stdout).unwrap_or_default();
            pids.len() >= 3
        }),
        "expected 3 processes, ps says {pids:?}"
    );
    let o = rt.run(&["kill", "--all", &id, "KILL"]);
    assert_success(&o, "kill --all");
    assert!(wait_status(&rt, &id, "stopped", T));
    assert_eq!(state_of(&rt, &id).unwrap()["pid"], 0);
    assert!(
        wait_until(T, || pids.iter().all(|p| !process_alive(*p))),
        "processes left after kill --all: {:?}",
        pids.iter()
            .filter(|p| process_alive(**p))
            .collect::<Vec<_>>()
    );
    let o = rt.run(&["delete", &id]);
    assert_success(&o, "delete");
    assert_no_leftovers(&rt, &b, &id);
}

#[test]
fn delete_kills_processes_the_init_left_behind() {
    let rt = orca();
    let mut b = Bundle::busybox(&["sh", "-c", "sleep 1003 & sleep 1000"]);
    b.config_mut()["linux"]["namespaces"] = namespaces_without(&b, "pid");
    b.save();
    let id = unique_name("lc-orphans");
    run_detached(&rt, &b, &id);
    let mut pids: Vec<i32> = Vec::new();
    assert!(wait_until(T, || {
        let o = rt.run(&["ps", "--format", "json", &id]);
        pids = serde_json::from_slice(&o.stdout).unwrap_or_default();
        pids.len() >= 2
    }));
    let o = rt.run(&["kill", &id, "KILL"]);
    assert_success(&o, "kill");
    assert!(wait_status(&rt, &id, "stopped", T));
    let o = rt.run(&["delete", &id]);
    assert_success(&o, "delete");
    assert!(
        wait_until(T, || pids.iter().all(|p| !process_alive(*p))),
        "delete left processes alive"
    );
    assert_no_leftovers(&rt, &b, &id);
}

#[test]
fn run_detached_then_force_delete() {
    let rt = orca();
    let b = Bundle::busybox(&["sleep", "1000"]);
    let id = unique_name("lc-rund");
    let pid = run_detached(&rt, &b, &id);
    assert!(process_alive(pid));
    force_delete_clean(&rt, &b, &id);
    assert!(!process_alive(pid), "init survived delete -f");
}

// ---------------------------------------------------------------- list / ps / exec

#[test]
fn list_table_json_and_quiet() {
    let rt = orca();
    let b = Bundle::busybox(&["sleep", "1000"]);
    let id = unique_name("lc-list");
    let o = rt.run(&["create", "-b", b.path_str(), &id]);
    assert_success(&o, "create");
    let pid = pid_of(&rt, &id);

    let o = rt.run(&["list"]);
    assert_success(&o, "list");
    let text = out_str(&o);
    let mut lines = text.lines();
    let header = lines.next().unwrap_or("");
    assert_eq!(
        header.split_whitespace().collect::<Vec<_>>(),
        ["ID", "PID", "STATUS", "BUNDLE", "CREATED", "OWNER"],
        "list header: {text}"
    );
    let row = lines
        .find(|l| l.starts_with(&format!("{id} ")))
        .unwrap_or_else(|| panic!("no row for {id}: {text}"));
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(cells.len(), 6, "row {row:?} should have 6 columns");
    assert_eq!(cells[1], pid.to_string());
    assert_eq!(cells[2], "created");
    assert_eq!(
        Path::new(cells[3]),
        std::fs::canonicalize(b.path()).unwrap()
    );
    // runc prints the state directory owner's user name.
    assert_eq!(cells[5], "root", "OWNER column of {row:?}");
    // The columns line up (tabwriter): each value starts under its header.
    for h in ["PID", "STATUS", "BUNDLE"] {
        let col = header.find(h).unwrap();
        assert!(
            row.len() > col && row.as_bytes()[col - 1] == b' ' && row.as_bytes()[col] != b' ',
            "column {h} misaligned:\n{header}\n{row}"
        );
    }

    let o = rt.run(&["list", "--format", "json"]);
    assert_success(&o, "list --format json");
    let v: Value = serde_json::from_slice(&o.stdout).expect("list JSON");
    let entry = v
        .as_array()
        .expect("a JSON array")
        .iter()
        .find(|e| e["id"] == id.as_str())
        .unwrap_or_else(|| panic!("{id} not in {v}"));
    assert_eq!(entry["status"], "created");
    assert_eq!(entry["pid"], pid);
    assert_eq!(entry["owner"], "root");
    for k in ["ociVersion", "bundle", "rootfs", "created"] {
        assert!(entry.get(k).is_some(), "list entry lacks {k}: {entry}");
    }

    let o = rt.run(&["list", "-q"]);
    assert_success(&o, "list -q");
    assert_eq!(out_str(&o), format!("{id}\n"));

    force_delete_clean(&rt, &b, &id);
    let o = rt.run(&["list", "-q"]);
    assert_eq!(out_str(&o), "", "list -q after delete");
}

#[test]
fn exec_args_form_output_exit_code_env_cwd_user() {
    let rt = orca();
    let b = Bundle::busybox(&["sleep", "1000"]);
    let id = unique_name("lc-exec");
    run_detached(&rt, &b, &id);

    let o = rt.run(&["exec", &id, "sh", "-c", "echo out; echo err >&2; exit 5"]);
    assert_eq!(o.status.code(), Some(5), "{}", describe(&o));
    assert_eq!(out_str(&o), "out\n");
    assert!(err_str(&o).contains("err"), "{}", describe(&o));

    let o = rt.run(&["exec", "-e", "FOO=bar", &id, "sh", "-c", "echo $FOO"]);
    assert_success(&o, "exec -e");
    assert_eq!(out_str(&o), "bar\n");

    let o = rt.run(&["exec", "--cwd", "/etc", &id, "pwd"]);
    assert_success(&o, "exec --cwd");
    assert_eq!(out_str(&o), "/etc\n");

    let o = rt.run(&["exec", "-u", "1000:1000", &id, "id"]);
    assert_success(&o, "exec -u");
    let text = out_str(&o);
    assert!(
        text.starts_with("uid=1000") && text.contains("gid=1000"),
        "id as 1000:1000 printed {text:?}"
    );

    let o = rt.run(&["exec", &id, "hostname"]);
    assert_success(&o, "exec hostname");
    assert_eq!(out_str(&o), "orca\n");

    force_delete_clean(&rt, &b, &id);
}

#[test]
fn exec_with_a_process_file() {
    let rt = orca();
    let b = Bundle::busybox(&["sleep", "1000"]);
    let id = unique_name("lc-execp");
    run_detached(&rt, &b, &id);
    let dir = host_dir("orca-lc-proc-");
    let pfile = dir.path().join("process.json");
    let process = json!({
        "terminal": false,
        "user": {"uid": 1000, "gid": 1000},
        "args": ["sh", "-c", "echo $A-$B; pwd; id -u; exit 3"],
        "env": ["PATH=/bin", "A=x", "B=y"],
        "cwd": "/etc",
        "noNewPrivileges": true
    });
    std::fs::write(&pfile, process.to_string()).unwrap();
    let o = rt.run(&["exec", "--process", pfile.to_str().unwrap(), &id]);
    assert_eq!(o.status.code(), Some(3), "{}", describe(&o));
    assert_eq!(out_str(&o), "x-y\n/etc\n1000\n");
    force_delete_clean(&rt, &b, &id);
}

#[test]
fn exec_detached_writes_pid_file_and_ps_lists_the_processes() {
    let rt = orca();
    let b = Bundle::busybox(&["sleep", "1000"]);
    let id = unique_name("lc-execd");
    let init = run_detached(&rt, &b, &id);

    let o = rt.run(&["ps", "--format", "json", &id]);
    assert_success(&o, "ps --format json");
    let pids: Vec<i32> = serde_json::from_slice(&o.stdout).expect("ps JSON: an array of pids");
    assert_eq!(pids, vec![init], "ps of a one-process container");

    let dir = host_dir("orca-lc-execd-");
    let pid_file = dir.path().join("exec.pid");
    let o = rt.run(&[
        "exec",
        "-d",
        "--pid-file",
        pid_file.to_str().unwrap(),
        &id,
        "sleep",
        "999",
    ]);
    assert_success(&o, "exec -d");
    let epid: i32 = read_trim(&pid_file)
        .parse()
        .unwrap_or_else(|_| panic!("exec --pid-file content {:?}", read_trim(&pid_file)));
    assert!(process_alive(epid), "exec -d process {epid} not alive");
    assert_ne!(epid, init);
    // The exec'd process is in the container's namespaces and cgroup.
    for ns in ["pid", "net", "mnt", "uts", "ipc"] {
        assert_eq!(
            std::fs::read_link(format!("/proc/{epid}/ns/{ns}")).unwrap(),
            std::fs::read_link(format!("/proc/{init}/ns/{ns}")).unwrap(),
            "{ns} namespace of the exec'd process"
        );
    }
    assert_eq!(v1_cgroup_dir(epid, "memory"), v1_cgroup_dir(init, "memory"));
    let o = rt.run(&["ps", "--format", "json", &id]);
    let mut pids: Vec<i32> = serde_json::from_slice(&o.stdout).unwrap();
    pids.sort();
    let mut want = vec![init, epid];
    want.sort();
    assert_eq!(pids, want, "ps after exec -d");

    let o = rt.run(&["ps", &id]);
    assert_success(&o, "ps (table)");
    let text = out_str(&o);
    assert!(text.lines().next().unwrap_or("").contains("PID"), "{text}");
    assert!(
        text.contains("sleep 999"),
        "ps table lacks the exec'd process: {text}"
    );

    force_delete_clean(&rt, &b, &id);
    assert!(!process_alive(epid), "exec'd process survived delete -f");
}

// ---------------------------------------------------------------- pause / update / events

#[test]
fn pause_freezes_and_resume_thaws() {
    let rt = orca();
    let mut b = Bundle::busybox(&[
        "sh",
        "-c",
        "i=0; while :; do i=$((i+1)); echo $i > /tmp/c.new; mv /tmp/c.new /tmp/count; usleep 10000; done",
    ]);
    add_tmp(&mut b);
    b.save();
    let id = unique_name("lc-pause");
    let pid = run_detached(&rt, &b, &id);
    let counter = PathBuf::from(format!("/proc/{pid}/root/tmp/count"));
    let read = || read_trim(&counter).parse::<u64>().unwrap_or(0);
    assert!(wait_until(T, || read() > 3), "the counter does not count");

    let o = rt.run(&["pause", &id]);
    assert_success(&o, "pause");
    assert_eq!(status_of(&rt, &id).as_deref(), Some("paused"));
    std::thread::sleep(Duration::from_millis(100));
    let frozen = read();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(read(), frozen, "the counter advanced while paused");
    let freezer = v1_cgroup_dir(pid, "freezer").expect("freezer cgroup");
    assert_eq!(read_trim(freezer.join("freezer.state")), "FROZEN");

    let o = rt.run(&["resume", &id]);
    assert_success(&o, "resume");
    assert_eq!(status_of(&rt, &id).as_deref(), Some("running"));
    assert!(
        wait_until(T, || read() > frozen + 3),
        "the counter does not advance after resume"
    );
    force_delete_clean(&rt, &b, &id);
}

#[test]
fn update_changes_the_cgroup_limits() {
    let rt = orca();
    let b = Bundle::busybox(&["sleep", "1000"]);
    let id = unique_name("lc-update");
    let pid = run_detached(&rt, &b, &id);
    let mem = v1_cgroup_dir(pid, "memory").expect("memory cgroup of the init");
    let pids = v1_cgroup_dir(pid, "pids").expect("pids cgroup of the init");
    assert!(
        mem.ends_with(b.cgroups_path().trim_start_matches('/')),
        "memory cgroup {mem:?} is not the configured {}",
        b.cgroups_path()
    );
    assert_ne!(read_trim(mem.join("memory.limit_in_bytes")), "67108864");
    assert_eq!(read_trim(pids.join("pids.max")), "max");

    let o = rt.run(&["update", "--memory", "64m", "--pids-limit", "20", &id]);
    assert_success(&o, "update");
    assert_eq!(read_trim(mem.join("memory.limit_in_bytes")), "67108864");
    assert_eq!(read_trim(pids.join("pids.max")), "20");

    // A resources document through -r.
    let dir = host_dir("orca-lc-res-");
    let res = dir.path().join("res.json");
    std::fs::write(
        &res,
        json!({"memory": {"limit": 33554432}, "pids": {"limit": 30}}).to_string(),
    )
    .unwrap();
    let o = rt.run(&["update", "-r", res.to_str().unwrap(), &id]);
    assert_success(&o, "update -r");
    assert_eq!(read_trim(mem.join("memory.limit_in_bytes")), "33554432");
    assert_eq!(read_trim(pids.join("pids.max")), "30");
    force_delete_clean(&rt, &b, &id);
}

#[test]
fn events_stats_prints_one_json_line() {
    let rt = orca();
    let b = Bundle::busybox(&["sleep", "1000"]);
    let id = unique_name("lc-events");
    run_detached(&rt, &b, &id);
    let o = rt.run(&["events", "--stats", &id]);
    assert_success(&o, "events --stats");
    let text = out_str(&o);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 1, "events --stats printed {text:?}");
    let v: Value = serde_json::from_str(lines[0]).expect("a JSON line");
    assert_eq!(v["type"], "stats", "{v}");
    assert_eq!(v["id"], id.as_str());
    assert!(
        v["data"]["memory"]["usage"]["usage"].as_u64().unwrap_or(0) > 0,
        "no memory usage in {v}"
    );
    assert!(
        v["data"]["pids"]["current"].as_u64().unwrap_or(0) >= 1,
        "no pids.current in {v}"
    );
    assert!(v["data"]["cpu"].is_object(), "no cpu stats in {v}");
    force_delete_clean(&rt, &b, &id);
}

// ---------------------------------------------------------------- spec / features

#[test]
fn spec_writes_config_json_and_refuses_to_overwrite() {
    let rt = orca();
    let dir = host_dir("orca-lc-spec-");
    let o = rt.run(&["spec", "-b", dir.path().to_str().unwrap()]);
    assert_success(&o, "spec");
    let path = dir.path().join("config.json");
    let first = std::fs::read(&path).expect("config.json written");
    let v: Value = serde_json::from_slice(&first).expect("config.json is JSON");
    assert!(v["ociVersion"].as_str().is_some_and(|s| !s.is_empty()));
    assert_eq!(v["process"]["args"], json!(["sh"]));
    assert_eq!(v["root"]["path"], "rootfs");
    assert!(v["linux"]["namespaces"]
        .as_array()
        .is_some_and(|a| !a.is_empty()));

    let o = rt.run(&["spec", "-b", dir.path().to_str().unwrap()]);
    assert_failure(&o, "spec over an existing config.json");
    assert!(err_str(&o).contains("exists"), "{}", describe(&o));
    assert_eq!(std::fs::read(&path).unwrap(), first, "config.json changed");
}

#[test]
fn features_is_json_with_namespaces() {
    let rt = orca();
    let o = rt.run(&["features"]);
    assert_success(&o, "features");
    let v: Value = serde_json::from_slice(&o.stdout).expect("features is JSON");
    let ns: Vec<&str> = v["linux"]["namespaces"]
        .as_array()
        .expect("linux.namespaces array")
        .iter()
        .filter_map(|n| n.as_str())
        .collect();
    for n in ["pid", "network", "mount", "ipc", "uts", "user", "cgroup"] {
        assert!(ns.contains(&n), "features lacks namespace {n}: {ns:?}");
    }
    assert!(v["ociVersionMin"].is_string() && v["ociVersionMax"].is_string());
}

// ---------------------------------------------------------------- config → container

#[test]
fn hostname_env_and_cwd_from_the_config() {
    let rt = orca();
    let mut b = Bundle::busybox(&[
        "sh",
        "-c",
        "hostname; echo $FOO; pwd; readlink /proc/self/cwd",
    ]);
    b.config_mut()["hostname"] = json!("box-one");
    b.config_mut()["process"]["env"]
        .as_array_mut()
        .unwrap()
        .push(json!("FOO=bar baz"));
    b.config_mut()["process"]["cwd"] = json!("/etc");
    b.save();
    let id = unique_name("lc-host");
    assert_eq!(run_ok(&rt, &b, &id), "box-one\nbar baz\n/etc\n/etc\n");
}

#[test]
fn readonly_root_rejects_writes() {
    let rt = orca();
    let mut b = Bundle::busybox(&["sh", "-c", "touch /x 2>&1 && echo WROTE || echo DENIED"]);
    let id = unique_name("lc-ro");
    let out = run_ok(&rt, &b, &id);
    assert!(
        out.contains("Read-only file system") && out.ends_with("DENIED\n"),
        "{out}"
    );
    assert!(!b.rootfs().join("x").exists());

    b.config_mut()["root"]["readonly"] = json!(false);
    b.save();
    let id = unique_name("lc-rw");
    assert_eq!(run_ok(&rt, &b, &id), "WROTE\n");
    assert!(b.rootfs().join("x").exists(), "write to a rw root was lost");
}

#[test]
fn rlimits_from_the_config() {
    let rt = orca();
    let mut b = Bundle::busybox(&["sh", "-c", "ulimit -n; ulimit -Hn"]);
    b.config_mut()["process"]["rlimits"] =
        json!([{"type": "RLIMIT_NOFILE", "soft": 123, "hard": 456}]);
    b.save();
    let id = unique_name("lc-rlim");
    assert_eq!(run_ok(&rt, &b, &id), "123\n456\n");
}

#[test]
fn user_namespace_with_id_mappings() {
    let rt = orca();
    let mut b = Bundle::busybox(&[
        "sh",
        "-c",
        "cat /proc/self/uid_map /proc/self/gid_map; id -u; id -g; ls -ln /bin/busybox",
    ]);
    const HOST: u32 = 100000;
    b.config_mut()["linux"]["namespaces"]
        .as_array_mut()
        .unwrap()
        .push(json!({"type": "user"}));
    b.config_mut()["linux"]["uidMappings"] =
        json!([{"containerID": 0, "hostID": HOST, "size": 65536}]);
    b.config_mut()["linux"]["gidMappings"] =
        json!([{"containerID": 0, "hostID": HOST, "size": 65536}]);
    b.save();
    // The rootfs belongs to the mapped root; the bundle dir must be traversable.
    chown_tree(&b.rootfs(), HOST, HOST).expect("chown the rootfs");
    std::fs::set_permissions(b.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let id = unique_name("lc-userns");
    let o = run_fg(&rt, &b, &id);
    assert_success(&o, "run with a user namespace");
    let text = out_str(&o);
    let lines: Vec<Vec<&str>> = text
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert!(lines.len() >= 5, "{text}");
    assert_eq!(lines[0], ["0", "100000", "65536"], "uid_map: {text}");
    assert_eq!(lines[1], ["0", "100000", "65536"], "gid_map: {text}");
    assert_eq!(lines[2], ["0"], "uid inside: {text}");
    assert_eq!(lines[3], ["0"], "gid inside: {text}");
    // Files owned by host uid 100000 appear owned by root inside.
    assert_eq!(lines[4].get(2), Some(&"0"), "owner of /bin/busybox: {text}");
    assert_no_leftovers(&rt, &b, &id);
}

#[test]
fn joining_a_network_namespace_by_path() {
    let rt = orca();
    let a = Bundle::busybox(&["sleep", "1000"]);
    let id_a = unique_name("lc-nsa");
    let pid_a = run_detached(&rt, &a, &id_a);
    let ns_a = std::fs::read_link(format!("/proc/{pid_a}/ns/net")).unwrap();
    assert_ne!(ns_a, std::fs::read_link("/proc/self/ns/net").unwrap());

    let mut b = Bundle::busybox(&["readlink", "/proc/self/ns/net"]);
    let mut ns = namespaces_without(&b, "network");
    ns.as_array_mut()
        .unwrap()
        .push(json!({"type": "network", "path": format!("/proc/{pid_a}/ns/net")}));
    b.config_mut()["linux"]["namespaces"] = ns;
    b.save();
    let id_b = unique_name("lc-nsb");
    let out = run_ok(&rt, &b, &id_b);
    assert_eq!(out.trim(), ns_a.to_str().unwrap(), "B's network namespace");
    let o = rt.run(&["exec", &id_a, "readlink", "/proc/self/ns/net"]);
    assert_success(&o, "exec readlink in A");
    assert_eq!(out_str(&o), out, "A and B see different network namespaces");
    assert_no_leftovers(&rt, &b, &id_b);
    force_delete_clean(&rt, &a, &id_a);
}

#[test]
fn cgroup_namespace_root_is_the_container_cgroup() {
    // Both ways of creating namespaces: one clone with every flag, and
    // (when a namespace is joined by path) fork + setns + unshare.
    let rt = orca();
    let a = Bundle::busybox(&["sleep", "1000"]);
    let id_a = unique_name("lc-cgns-a");
    let pid_a = run_detached(&rt, &a, &id_a);
    // (What /proc/<pid>/cgroup shows depends on the reader's cgroup
    // namespace: read it from inside.)
    let o = rt.run(&["exec", &id_a, "cat", "/proc/self/cgroup", "/proc/1/cgroup"]);
    assert_success(&o, "exec cat /proc/self/cgroup");
    let text = out_str(&o);
    assert!(
        !text.is_empty() && text.lines().all(|l| l.ends_with(":/")),
        "the container sees cgroup paths outside its namespace root:\n{text}"
    );

    let mut b = Bundle::busybox(&["cat", "/proc/self/cgroup"]);
    let mut ns = namespaces_without(&b, "network");
    ns.as_array_mut()
        .unwrap()
        .push(json!({"type": "network", "path": format!("/proc/{pid_a}/ns/net")}));
    b.config_mut()["linux"]["namespaces"] = ns;
    b.save();
    let id_b = unique_name("lc-cgns-b");
    let text = run_ok(&rt, &b, &id_b);
    assert!(
        text.lines().all(|l| l.ends_with(":/")),
        "joined-namespace container sees cgroup paths outside its root:\n{text}"
    );
    force_delete_clean(&rt, &a, &id_a);
}

#[test]
fn sysctl_is_applied_in_the_network_namespace() {
    let rt = orca();
    let mut b = Bundle::busybox(&["cat", "/proc/sys/net/ipv4/ip_forward"]);
    b.config_mut()["linux"]["sysctl"] = json!({"net.ipv4.ip_forward": "1"});
    b.save();
    let id = unique_name("lc-sysctl");
    assert_eq!(run_ok(&rt, &b, &id), "1\n");
    b.config_mut()["linux"]["sysctl"] = json!({"net.ipv4.ip_forward": "0"});
    b.save();
    let id = unique_name("lc-sysctl0");
    assert_eq!(run_ok(&rt, &b, &id), "0\n");
}

#[test]
fn hooks_run_in_order_with_the_state_on_stdin() {
    let rt = orca();
    let dir = host_dir("orca-lc-hooks-");
    let d = dir.path().to_str().unwrap().to_string();
    let host_hook = |name: &str| {
        json!({
            "path": "/bin/sh",
            "args": ["sh", "-c", format!("cat > {d}/{name}.json; echo {name} >> {d}/order")],
            "env": ["PATH=/usr/bin:/bin"],
            "timeout": 10
        })
    };
    let mut b = Bundle::busybox(&["true"]);
    add_mount(
        &mut b,
        json!({"destination": "/hooks", "type": "bind", "source": &d, "options": ["rbind", "rw"]}),
    );
    // startContainer runs inside the container (its /bin/sh, its /hooks). It
    // takes a while, so a runtime that ran poststart before the container
    // process is executed would be caught.
    b.config_mut()["hooks"] = json!({
        "prestart": [host_hook("prestart")],
        "createRuntime": [host_hook("createRuntime")],
        "createContainer": [host_hook("createContainer")],
        "startContainer": [{
            "path": "/bin/sh",
            "args": ["sh", "-c", "usleep 300000; cat > /hooks/startContainer.json; echo startContainer >> /hooks/order"],
            "env": ["PATH=/bin"]
        }],
        "poststart": [host_hook("poststart")],
        "poststop": [host_hook("poststop")]
    });
    b.save();
    let id = unique_name("lc-hooks");
    let order = || -> Vec<String> {
        std::fs::read_to_string(dir.path().join("order"))
            .unwrap_or_default()
            .lines()
            .map(String::from)
            .collect()
    };
    let o = rt.run(&["create", "-b", b.path_str(), &id]);
    assert_success(&o, "create with hooks");
    let pid = pid_of(&rt, &id);
    assert_eq!(order(), ["prestart", "createRuntime", "createContainer"]);
    let o = rt.run(&["start", &id]);
    assert_success(&o, "start with hooks");
    assert_eq!(
        order(),
        [
            "prestart",
            "createRuntime",
            "createContainer",
            "startContainer",
            "poststart"
        ],
        "after start returned"
    );
    assert!(wait_status(&rt, &id, "stopped", T));
    let o = rt.run(&["delete", &id]);
    assert_success(&o, "delete with hooks");
    assert_eq!(
        order(),
        [
            "prestart",
            "createRuntime",
            "createContainer",
            "startContainer",
            "poststart",
            "poststop"
        ]
    );
    for name in [
        "prestart",
        "createRuntime",
        "createContainer",
        "startContainer",
        "poststart",
        "poststop",
    ] {
        let p = dir.path().join(format!("{name}.json"));
        let v: Value = serde_json::from_slice(&std::fs::read(&p).unwrap())
            .unwrap_or_else(|e| panic!("{name} hook got no JSON state on stdin: {e}"));
        assert_eq!(v["id"], id.as_str(), "{name}: {v}");
        assert!(v.get("pid").is_some(), "{name}: no pid in {v}");
        assert!(v["ociVersion"].is_string(), "{name}: {v}");
        if name != "poststop" {
            assert_eq!(v["pid"], pid, "{name}: pid in {v}");
        }
    }
    assert_no_leftovers(&rt, &b, &id);
}

#[test]
fn terminal_through_the_console_socket() {
    let rt = orca();
    let mut b = Bundle::busybox(&["sh", "-c", "tty; echo tty-ok"]);
    b.config_mut()["process"]["terminal"] = json!(true);
    b.save();
    let id = unique_name("lc-tty");
    let mut sock = ConsoleSocket::bind();
    let o = rt.run(&[
        "create",
        "--console-socket",
        sock.path_str(),
        "-b",
        b.path_str(),
        &id,
    ]);
    assert_success(&o, "create --console-socket");
    let master = sock.master(T).expect("pty master on the console socket");
    let o = rt.run(&["start", &id]);
    assert_success(&o, "start");
    let text = read_pty(&master, "tty-ok", T);
    assert!(
        text.contains("/dev/pts/0") && text.contains("tty-ok"),
        "terminal output {text:?}"
    );
    assert!(wait_status(&rt, &id, "stopped", T));
    let o = rt.run(&["delete", &id]);
    assert_success(&o, "delete");
    assert_no_leftovers(&rt, &b, &id);
}

#[test]
fn preserve_fds_passes_fd_3_through() {
    let rt = orca();
    let dir = host_dir("orca-lc-fds-");
    let marker = dir.path().join("marker");
    std::fs::write(&marker, "preserved-fd-content\n").unwrap();
    // `ls /proc/$$/fd` lists the shell's descriptors (ls's own directory
    // descriptor is in another process).
    let b = Bundle::busybox(&["sh", "-c", "cat <&3 || echo NOFD; ls /proc/$$/fd; true"]);

    let id = unique_name("lc-fds1");
    let o = run_with_inherited_fds(
        &rt,
        1,
        &marker,
        &["run", "--preserve-fds", "1", "-b", b.path_str(), &id],
    );
    assert_success(&o, "run --preserve-fds 1");
    assert_eq!(out_str(&o), "preserved-fd-content\n0\n1\n2\n3\n");

    let id = unique_name("lc-fds0");
    let o = run_with_inherited_fds(&rt, 1, &marker, &["run", "-b", b.path_str(), &id]);
    assert_success(&o, "run without --preserve-fds");
    assert_eq!(out_str(&o), "NOFD\n0\n1\n2\n");
}

// ---------------------------------------------------------------- mounts

#[test]
fn readonly_bind_mount_reads_but_does_not_write() {
    let rt = orca();
    let dir = host_dir("orca-lc-robind-");
    std::fs::write(dir.path().join("data"), "ro-data\n").unwrap();
    let mut b = Bundle::busybox(&[
        "sh",
        "-c",
        "cat /ro/data; touch /ro/new 2>/dev/null && echo WROTE || echo DENIED",
    ]);
    add_mount(
        &mut b,
        json!({"destination": "/ro", "type": "bind", "source": dir.path(), "options": ["rbind", "ro"]}),
    );
    b.save();
    let id = unique_name("lc-robind");
    assert_eq!(run_ok(&rt, &b, &id), "ro-data\nDENIED\n");
    assert!(!dir.path().join("new").exists());
    assert!(
        mounts_under(dir.path()).is_empty(),
        "mount left on the host dir"
    );
    assert_no_leftovers(&rt, &b, &id);
}

#[test]
fn tmpfs_mount_with_options() {
    let rt = orca();
    let mut b = Bundle::busybox(&[
        "sh",
        "-c",
        "grep ' /scratch ' /proc/self/mounts; stat -c %a /scratch; echo x > /scratch/f && cat /scratch/f",
    ]);
    add_mount(
        &mut b,
        json!({"destination": "/scratch", "type": "tmpfs", "source": "tmpfs",
               "options": ["nosuid", "nodev", "noexec", "size=1m", "mode=750"]}),
    );
    b.save();
    let id = unique_name("lc-tmpfs");
    let out = run_ok(&rt, &b, &id);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    let f: Vec<&str> = lines[0].split(' ').collect();
    assert_eq!(f[2], "tmpfs", "{out}");
    let opts: Vec<&str> = f[3].split(',').collect();
    for o in ["rw", "nosuid", "nodev", "noexec", "size=1024k", "mode=750"] {
        assert!(opts.contains(&o), "tmpfs lacks {o}: {out}");
    }
    assert_eq!(lines[1], "750");
    assert_eq!(lines[2], "x");
}

#[test]
fn masked_paths_are_unreadable() {
    let rt = orca();
    let script = "wc -c < /proc/timer_list; cat /proc/kcore 2>/dev/null | wc -c; ls /sys/firmware | wc -l; cat /proc/keys | wc -c";
    let mut b = Bundle::busybox(&["sh", "-c", script]);
    let id = unique_name("lc-mask");
    let out = run_ok(&rt, &b, &id);
    let n: Vec<u64> = out.split_whitespace().map(|s| s.parse().unwrap()).collect();
    assert_eq!(n, [0, 0, 0, 0], "masked paths readable: {out}");

    // Control: without masking, the same paths have content.
    b.config_mut()["linux"]["maskedPaths"] = json!([]);
    b.save();
    let id = unique_name("lc-nomask");
    let out = run_ok(&rt, &b, &id);
    let n: Vec<u64> = out.split_whitespace().map(|s| s.parse().unwrap()).collect();
    assert!(n[0] > 0 && n[2] > 0, "control run: {out}");
}

#[test]
fn readonly_paths_are_unwritable() {
    let rt = orca();
    let script = "echo changed > /proc/sys/kernel/hostname; echo rc=$?; hostname";
    let mut b = Bundle::busybox(&["sh", "-c", script]);
    let id = unique_name("lc-rop");
    let o = run_fg(&rt, &b, &id);
    assert_success(&o, "run");
    assert_eq!(out_str(&o), "rc=1\norca\n", "{}", describe(&o));
    assert!(
        err_str(&o).contains("Read-only file system"),
        "{}",
        describe(&o)
    );

    // Control: without read-only paths the (UTS-namespaced) write works.
    b.config_mut()["linux"]["readonlyPaths"] = json!([]);
    b.save();
    let id = unique_name("lc-norop");
    assert_eq!(run_ok(&rt, &b, &id), "rc=0\nchanged\n");
}

#[test]
fn devices_from_the_config_and_the_cgroup_allow_list() {
    let rt = orca();
    let mut b = Bundle::busybox(&[
        "sh",
        "-c",
        "stat -c '%F %t:%T %a' /dev/fuse /dev/loop-control; \
         (exec 3<>/dev/fuse) 2>/dev/null && echo fuse-opened || echo fuse-denied; \
         (exec 3<>/dev/loop-control) 2>/dev/null && echo loop-opened || echo loop-denied",
    ]);
    b.config_mut()["linux"]["devices"] = json!([
        {"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229, "fileMode": 438, "uid": 0, "gid": 0},
        {"path": "/dev/loop-control", "type": "c", "major": 10, "minor": 237, "fileMode": 438, "uid": 0, "gid": 0}
    ]);
    b.config_mut()["linux"]["resources"]["devices"]
        .as_array_mut()
        .unwrap()
        .push(json!({"allow": true, "type": "c", "major": 10, "minor": 229, "access": "rwm"}));
    b.save();
    let id = unique_name("lc-dev");
    let out = run_ok(&rt, &b, &id);
    assert_eq!(
        out,
        "character special file a:e5 666\ncharacter special file a:ed 666\nfuse-opened\nloop-denied\n"
    );
}

// ---------------------------------------------------------------- privileges

#[test]
fn capabilities_drop_all_but_chown() {
    let rt = orca();
    let mut b = Bundle::busybox(&["grep", "-E", "^Cap(Eff|Prm|Bnd)", "/proc/self/status"]);
    b.config_mut()["process"]["capabilities"] = json!({
        "bounding": ["CAP_CHOWN"], "effective": ["CAP_CHOWN"], "permitted": ["CAP_CHOWN"]
    });
    b.save();
    let id = unique_name("lc-caps");
    let out = run_ok(&rt, &b, &id);
    assert_eq!(
        out,
        "CapPrm:\t0000000000000001\nCapEff:\t0000000000000001\nCapBnd:\t0000000000000001\n"
    );
}

#[test]
fn non_root_process_user_without_capabilities() {
    // The init waits for `start` after it switched to the process user: a
    // user without CAP_DAC_OVERRIDE must still be able to go on.
    let rt = orca();
    let mut b = Bundle::busybox(&["sh", "-c", "id; grep CapEff /proc/self/status"]);
    b.config_mut()["process"]["user"] = json!({"uid": 1000, "gid": 1000, "additionalGids": [20]});
    b.config_mut()["process"]["capabilities"] =
        json!({"bounding": [], "effective": [], "permitted": []});
    b.save();
    let id = unique_name("lc-nonroot");
    assert_eq!(
        run_ok(&rt, &b, &id),
        "uid=1000 gid=1000 groups=20\nCapEff:\t0000000000000000\n"
    );
    assert_no_leftovers(&rt, &b, &id);
}

#[test]
fn no_new_privileges() {
    let rt = orca();
    let mut b = Bundle::busybox(&["grep", "NoNewPrivs", "/proc/self/status"]);
    let id = unique_name("lc-nnp");
    assert_eq!(run_ok(&rt, &b, &id), "NoNewPrivs:\t1\n");
    b.config_mut()["process"]["noNewPrivileges"] = json!(false);
    b.save();
    let id = unique_name("lc-nnp0");
    assert_eq!(run_ok(&rt, &b, &id), "NoNewPrivs:\t0\n");
}

fn mkdir_errno_profile(errno: u32) -> Value {
    json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [
            {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno}
        ]
    })
}

#[test]
fn seccomp_errno_rules() {
    let rt = orca();
    let mut b = Bundle::busybox(&["sh", "-c", "mkdir /tmp/x && echo made"]);
    add_tmp(&mut b);
    b.save();
    let id = unique_name("lc-sc-none");
    assert_eq!(run_ok(&rt, &b, &id), "made\n", "control without seccomp");

    for (errno, msg) in [
        (1, "Operation not permitted"),
        (38, "Function not implemented"),
    ] {
        b.config_mut()["linux"]["seccomp"] = mkdir_errno_profile(errno);
        b.save();
        let id = unique_name("lc-sc");
        let o = run_fg(&rt, &b, &id);
        assert_eq!(o.status.code(), Some(1), "{}", describe(&o));
        assert_eq!(out_str(&o), "");
        assert!(err_str(&o).contains(msg), "errno {errno}: {}", describe(&o));
        assert_no_leftovers(&rt, &b, &id);
    }
}

#[test]
fn cgroup_limits_from_the_config() {
    let rt = orca();
    let mut b = Bundle::busybox(&["sleep", "1000"]);
    b.config_mut()["linux"]["resources"]["memory"] = json!({"limit": 33554432});
    b.config_mut()["linux"]["resources"]["pids"] = json!({"limit": 50});
    b.config_mut()["linux"]["resources"]["cpu"] = json!({"shares": 512});
    b.save();
    let id = unique_name("lc-cglim");
    let pid = run_detached(&rt, &b, &id);
    let mem = v1_cgroup_dir(pid, "memory").unwrap();
    assert_eq!(
        mem,
        Path::new("/sys/fs/cgroup/memory").join(b.cgroups_path().trim_start_matches('/'))
    );
    assert_eq!(read_trim(mem.join("memory.limit_in_bytes")), "33554432");
    assert_eq!(
        read_trim(v1_cgroup_dir(pid, "pids").unwrap().join("pids.max")),
        "50"
    );
    assert_eq!(
        read_trim(v1_cgroup_dir(pid, "cpu").unwrap().join("cpu.shares")),
        "512"
    );
    // And from inside, through the container's cgroup mount.
    let o = rt.run(&[
        "exec",
        &id,
        "cat",
        "/sys/fs/cgroup/memory/memory.limit_in_bytes",
    ]);
    assert_success(&o, "exec cat memory.limit_in_bytes");
    assert_eq!(out_str(&o), "33554432\n");
    force_delete_clean(&rt, &b, &id);
}

#[test]
fn domainname_and_oom_score_adj_are_applied() {
    let rt = orca();
    let mut b = Bundle::busybox(&[
        "sh",
        "-c",
        "cat /proc/sys/kernel/domainname; cat /proc/self/oom_score_adj",
    ]);
    b.config_mut()["domainname"] = json!("orca.example");
    b.config_mut()["process"]["oomScoreAdj"] = json!(321);
    b.save();
    let id = unique_name("dom");
    let out = run_ok(&rt, &b, &id);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines, vec!["orca.example", "321"], "output: {out:?}");
    assert_no_leftovers(&rt, &b, &id);
}

#[test]
fn rootfs_propagation_decides_whether_later_host_mounts_show_up() {
    // The rootfs is a shared mount on the host. A mount made under it after the container
    // started propagates into the container with "rslave" and must not with "rprivate".
    let rt = orca();
    let sh = |args: &[&str]| {
        let st = std::process::Command::new(args[0])
            .args(&args[1..])
            .status()
            .unwrap();
        assert!(st.success(), "{args:?}");
    };
    for (mode, expect_visible) in [("rprivate", false), ("rslave", true)] {
        let mut b = Bundle::busybox(&["sleep", "100"]);
        b.config_mut()["linux"]["rootfsPropagation"] = json!(mode);
        b.save();
        let rootfs = b.rootfs().to_str().unwrap().to_string();
        std::fs::create_dir_all(b.rootfs().join("mnt/late")).unwrap();
        sh(&["mount", "--bind", &rootfs, &rootfs]);
        sh(&["mount", "--make-shared", &rootfs]);
        let id = unique_name("prop");
        let pid = run_detached(&rt, &b, &id);
        let late = format!("{rootfs}/mnt/late");
        sh(&["mount", "-t", "tmpfs", "tmpfs", &late]);
        let mounts = std::fs::read_to_string(format!("/proc/{pid}/mounts")).unwrap_or_default();
        let visible = mounts
            .lines()
            .any(|l| l.split(' ').nth(1) == Some("/mnt/late"));
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&late)
            .status();
        let _ = rt.run(&["delete", "-f", &id]);
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&rootfs)
            .status();
        assert_no_leftovers(&rt, &b, &id);
        assert_eq!(
            visible, expect_visible,
            "rootfsPropagation {mode}: host mount visible inside = {visible}\n{mounts}"
        );
    }
}

#[test]
fn events_reports_an_oom_kill() {
    let rt = orca();
    let mut b = Bundle::busybox(&["sleep", "100"]);
    b.config_mut()["linux"]["resources"]["memory"] =
        json!({"limit": 16 * 1024 * 1024, "swap": 16 * 1024 * 1024});
    add_tmp(&mut b);
    b.save();
    let id = unique_name("oom");
    run_detached(&rt, &b, &id);
    let files = OutputFiles::new();
    let mut events = rt.cmd();
    events.args(["events", "--interval", "1s", &id]);
    files.attach(&mut events);
    let mut child = events.spawn().expect("spawn events");
    // Fill memory from an exec'd process until the kernel's OOM killer steps in.
    let _ = rt.run(&["exec", &id, "sh", "-c", "x=a; while true; do x=$x$x; done"]);
    let seen = files.wait_stdout("\"type\":\"oom\"", Duration::from_secs(15));
    let _ = child.kill();
    let _ = child.wait();
    force_delete_clean(&rt, &b, &id);
    assert!(seen, "no oom event from `events`: {}", files.stdout());
}

#[test]
fn foreground_run_with_a_terminal_proxies_the_pty() {
    // No --console-socket: `run` opens the pty itself and copies it to its own terminal, as
    // runc does.
    let rt = orca();
    let mut b = Bundle::busybox(&["sh", "-c", "tty; exit 6"]);
    b.config_mut()["process"]["terminal"] = json!(true);
    b.save();
    let id = unique_name("ptyrun");
    let mut cmd = rt.cmd();
    cmd.args(["run", "-b", b.path_str(), &id]);
    let (status, out) = run_in_pty(&mut cmd, Duration::from_secs(30));
    assert_eq!(status.code(), Some(6), "output: {out:?}");
    assert!(out.contains("/dev/pts/0"), "output: {out:?}");
    assert_no_leftovers(&rt, &b, &id);
}
