//! orca-runtime given bad input: malformed or inconsistent config.json,
//! missing rootfs/args/executable, invalid or duplicate ids, commands in the
//! wrong state. Every failure must exit 1 with a message naming the problem
//! (runc's wording where callers match on it), and every failed `create` must
//! leave NOTHING behind: no state dir, no cgroup, no mounts under the bundle,
//! no process. `--log FILE --log-format json` must end with an error line.

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use orca_integration::*;
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(10);

fn orca() -> Runtime {
    require_root();
    Runtime::orca()
}

/// Entries of the runtime's state root (its containers' directories).
fn root_entries(rt: &Runtime) -> Vec<String> {
    std::fs::read_dir(rt.root())
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Everything a failed create may have left: state entries other than
/// `keep`, cgroup dirs of the bundle, mounts under it, processes mentioning
/// the runtime root or the bundle.
#[track_caller]
fn assert_nothing_left(rt: &Runtime, b: &Bundle, keep: &[&str]) {
    let root = rt.root().to_str().unwrap().to_string();
    // The inits of the containers kept on purpose mention the root too.
    let kept_pids: Vec<i32> = keep.iter().map(|id| pid_of(rt, id)).collect();
    let mut left = Vec::new();
    let clean = wait_until(Duration::from_secs(5), || {
        left.clear();
        for e in root_entries(rt) {
            if !keep.contains(&e.as_str()) {
                left.push(format!("state entry {e}"));
            }
        }
        for c in b.cgroup_leftovers() {
            left.push(format!("cgroup {}", c.display()));
        }
        for m in mounts_under(b.path()) {
            left.push(format!("mount {}", m.display()));
        }
        for p in pids_with_cmdline(&root)
            .into_iter()
            .chain(pids_with_cmdline(b.path_str()))
            .filter(|p| !kept_pids.contains(p))
        {
            let cmd = std::fs::read(format!("/proc/{p}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
                .unwrap_or_default();
            left.push(format!("process {p}: {cmd}"));
        }
        left.is_empty()
    });
    assert!(clean, "a failed create left: {left:#?}");
}

/// Asserts `o` failed with exit code 1 and stderr containing every needle.
#[track_caller]
fn assert_fails_with(o: &Output, what: &str, needles: &[&str]) {
    assert_eq!(o.status.code(), Some(1), "{what}: {}", describe(o));
    let err = err_str(o);
    for n in needles {
        assert!(
            err.contains(n),
            "{what}: stderr lacks {n:?}: {}",
            describe(o)
        );
    }
}

/// `create` of `b` as `id` must fail naming `needles`, leaving nothing.
#[track_caller]
fn create_must_fail(rt: &Runtime, b: &Bundle, id: &str, needles: &[&str]) {
    let o = rt.run(&["create", "-b", b.path_str(), id]);
    assert_fails_with(&o, &format!("create {id:?}"), needles);
    assert_nothing_left(rt, b, &[]);
    // `run` fails the same way.
    let o = rt.run(&["run", "-b", b.path_str(), id]);
    assert_fails_with(&o, &format!("run {id:?}"), needles);
    assert_nothing_left(rt, b, &[]);
}

fn bundle_with(args: &[&str], f: impl FnOnce(&mut Value)) -> Bundle {
    let mut b = Bundle::busybox(args);
    f(b.config_mut());
    b.save();
    b
}

// ---------------------------------------------------------------- config.json

#[test]
fn invalid_json() {
    let rt = orca();
    let b = Bundle::busybox(&["true"]);
    std::fs::write(
        b.path().join("config.json"),
        "{ \"ociVersion\": \"1.0.2\", ",
    )
    .unwrap();
    create_must_fail(&rt, &b, &unique_name("bad-json"), &["config.json"]);
    std::fs::write(b.path().join("config.json"), "").unwrap();
    create_must_fail(&rt, &b, &unique_name("bad-empty"), &["config.json"]);
}

#[test]
fn missing_config_json() {
    let rt = orca();
    let b = Bundle::busybox(&["true"]);
    std::fs::remove_file(b.path().join("config.json")).unwrap();
    create_must_fail(&rt, &b, &unique_name("bad-nocfg"), &["config.json"]);
}

#[test]
fn wrong_type_names_the_field() {
    let rt = orca();
    let b = bundle_with(&["true"], |c| c["process"]["user"]["uid"] = json!("root"));
    create_must_fail(&rt, &b, &unique_name("bad-uid"), &["process.user.uid"]);
    let b = bundle_with(&["true"], |c| c["process"]["args"] = json!("echo hi"));
    create_must_fail(&rt, &b, &unique_name("bad-args"), &["process.args"]);
    let b = bundle_with(&["true"], |c| {
        c["linux"]["resources"]["memory"]["limit"] = json!("64m")
    });
    create_must_fail(
        &rt,
        &b,
        &unique_name("bad-mem"),
        &["linux.resources.memory.limit"],
    );
    let b = bundle_with(&["true"], |c| c["mounts"][1]["options"] = json!("nosuid"));
    create_must_fail(&rt, &b, &unique_name("bad-mopt"), &["mounts[1].options"]);
}

#[test]
fn missing_rootfs() {
    let rt = orca();
    let b = Bundle::busybox(&["true"]);
    std::fs::rename(b.rootfs(), b.path().join("elsewhere")).unwrap();
    create_must_fail(&rt, &b, &unique_name("bad-rootfs"), &["rootfs"]);
}

#[test]
fn missing_or_empty_process_args() {
    let rt = orca();
    let b = bundle_with(&["true"], |c| {
        c["process"].as_object_mut().unwrap().remove("args");
    });
    create_must_fail(&rt, &b, &unique_name("bad-noargs"), &["process.args"]);
    let b = bundle_with(&["true"], |c| c["process"]["args"] = json!([]));
    create_must_fail(&rt, &b, &unique_name("bad-emptyargs"), &["process.args"]);
    let b = bundle_with(&["true"], |c| {
        c.as_object_mut().unwrap().remove("process");
    });
    create_must_fail(&rt, &b, &unique_name("bad-noproc"), &["process"]);
}

#[test]
fn inconsistent_configs_name_the_field() {
    let rt = orca();
    let cases: Vec<(&str, Bundle, &str)> = vec![
        (
            "relative cwd",
            bundle_with(&["true"], |c| c["process"]["cwd"] = json!("tmp")),
            "process.cwd",
        ),
        (
            "relative mount destination",
            bundle_with(&["true"], |c| c["mounts"][0]["destination"] = json!("proc")),
            "mounts[0].destination",
        ),
        (
            "hostname without a UTS namespace",
            bundle_with(&["true"], |c| {
                let ns: Vec<Value> = c["linux"]["namespaces"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|n| n["type"] != "uts")
                    .cloned()
                    .collect();
                c["linux"]["namespaces"] = Value::Array(ns);
            }),
            "hostname",
        ),
        (
            "user namespace without mappings",
            bundle_with(&["true"], |c| {
                c["linux"]["namespaces"]
                    .as_array_mut()
                    .unwrap()
                    .push(json!({"type": "user"}));
            }),
            "uidMappings",
        ),
        (
            "duplicate namespace",
            bundle_with(&["true"], |c| {
                c["linux"]["namespaces"]
                    .as_array_mut()
                    .unwrap()
                    .push(json!({"type": "ipc"}));
            }),
            "linux.namespaces",
        ),
        (
            "unknown seccomp action",
            bundle_with(&["true"], |c| {
                c["linux"]["seccomp"] = json!({"defaultAction": "SCMP_ACT_BOGUS"});
            }),
            "linux.seccomp.defaultAction",
        ),
        (
            "unknown rlimit",
            bundle_with(&["true"], |c| {
                c["process"]["rlimits"] = json!([{"type": "RLIMIT_BOGUS", "soft": 1, "hard": 1}]);
            }),
            "process.rlimits",
        ),
    ];
    for (what, b, field) in &cases {
        let id = unique_name("bad-cfg");
        let o = rt.run(&["create", "-b", b.path_str(), &id]);
        assert_fails_with(&o, what, &[field]);
        assert_nothing_left(&rt, b, &[]);
    }
}

// ---------------------------------------------------------------- failures during setup

#[test]
fn executable_not_found() {
    let rt = orca();
    let b = Bundle::busybox(&["no-such-program-xyz"]);
    create_must_fail(
        &rt,
        &b,
        &unique_name("bad-exe"),
        &["executable file not found in $PATH", "no-such-program-xyz"],
    );
    let b = Bundle::busybox(&["/no/such/program"]);
    create_must_fail(
        &rt,
        &b,
        &unique_name("bad-abs"),
        &["/no/such/program", "no such file or directory"],
    );
    // A directory is not executable.
    let b = Bundle::busybox(&["/etc"]);
    create_must_fail(&rt, &b, &unique_name("bad-dir"), &["/etc"]);
}

#[test]
fn failures_inside_the_init_clean_up() {
    // Each fails after the cgroup, the namespaces and some mounts exist.
    let rt = orca();
    let cases: Vec<(&str, Bundle, &str)> = vec![
        (
            "bind mount of a missing source",
            bundle_with(&["true"], |c| {
                c["mounts"].as_array_mut().unwrap().push(json!({
                    "destination": "/data", "type": "bind",
                    "source": "/nonexistent/orca-test-source", "options": ["rbind"]
                }))
            }),
            "/nonexistent/orca-test-source",
        ),
        (
            "unknown filesystem type",
            bundle_with(&["true"], |c| {
                c["mounts"].as_array_mut().unwrap().push(json!({
                    "destination": "/x", "type": "no-such-fs", "source": "none"
                }))
            }),
            "no-such-fs",
        ),
        (
            "unknown sysctl",
            bundle_with(&["true"], |c| {
                c["linux"]["sysctl"] = json!({"net.ipv4.no_such_key": "1"})
            }),
            "net.ipv4.no_such_key",
        ),
        (
            "cwd that is a file",
            bundle_with(&["true"], |c| c["process"]["cwd"] = json!("/etc/passwd")),
            "/etc/passwd",
        ),
        (
            "failing prestart hook",
            bundle_with(&["true"], |c| {
                c["hooks"] = json!({"prestart": [{"path": "/bin/false", "args": ["false"]}]})
            }),
            "prestart",
        ),
        (
            "failing createContainer hook",
            bundle_with(
                &["true"],
                |c| c["hooks"] = json!({"createContainer": [{"path": "/bin/sh", "args": ["sh", "-c", "exit 3"]}]}),
            ),
            "createContainer",
        ),
        (
            "hook timeout",
            bundle_with(
                &["true"],
                |c| c["hooks"] = json!({"createRuntime": [{"path": "/bin/sleep", "args": ["sleep", "30"], "timeout": 1}]}),
            ),
            "timeout",
        ),
        (
            "invalid cpuset",
            bundle_with(&["true"], |c| {
                c["linux"]["resources"]["cpu"] = json!({"cpus": "99"})
            }),
            "cpuset",
        ),
        (
            "joining a namespace that does not exist",
            bundle_with(&["true"], |c| {
                let mut ns: Vec<Value> = c["linux"]["namespaces"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|n| n["type"] != "network")
                    .cloned()
                    .collect();
                ns.push(json!({"type": "network", "path": "/proc/999999999/ns/net"}));
                c["linux"]["namespaces"] = Value::Array(ns);
            }),
            "/proc/999999999/ns/net",
        ),
    ];
    for (what, b, needle) in &cases {
        let id = unique_name("bad-init");
        let o = rt.run(&["create", "-b", b.path_str(), &id]);
        assert_fails_with(&o, what, &[needle]);
        assert_nothing_left(&rt, b, &[]);
    }
}

// ---------------------------------------------------------------- ids

#[test]
fn invalid_ids_are_rejected() {
    let rt = orca();
    let b = Bundle::busybox(&["true"]);
    let outside = unique_name("escape");
    let long = "a".repeat(2000);
    let ids = [
        format!("../{outside}"),
        String::new(),
        long,
        "a/b".to_string(),
        format!("a/{outside}"),
        "..".to_string(),
        ".".to_string(),
        "with space".to_string(),
    ];
    for id in &ids {
        let o = rt.run(&["create", "-b", b.path_str(), id]);
        assert_fails_with(&o, &format!("create {id:?}"), &[]);
        assert_nothing_left(&rt, &b, &[]);
        assert!(
            !rt.root().parent().unwrap().join(&outside).exists(),
            "create {id:?} made a directory outside the root"
        );
        for cmd in ["state", "start", "delete", "kill"] {
            let o = rt.run(&[cmd, id]);
            assert_fails_with(&o, &format!("{cmd} {id:?}"), &[]);
        }
    }
}

#[test]
fn second_create_with_the_same_id_fails_and_keeps_the_first() {
    let rt = orca();
    let first = Bundle::busybox(&["sleep", "1000"]);
    let id = unique_name("bad-dup");
    let o = rt.run(&["create", "-b", first.path_str(), &id]);
    assert_success(&o, "first create");
    let pid = pid_of(&rt, &id);

    let second = Bundle::busybox(&["true"]);
    for cmd in ["create", "run"] {
        let o = rt.run(&[cmd, "-b", second.path_str(), &id]);
        assert_fails_with(&o, &format!("second {cmd}"), &["already exists"]);
        assert_nothing_left(&rt, &second, &[id.as_str()]);
        // The first container is untouched.
        let st = state_of(&rt, &id).expect("state of the first container");
        assert_eq!(st["status"], "created", "{st}");
        assert_eq!(st["pid"], pid);
        assert_eq!(
            Path::new(st["bundle"].as_str().unwrap()),
            std::fs::canonicalize(first.path()).unwrap()
        );
        assert!(process_alive(pid));
        assert!(rt.root().join(&id).join("exec.fifo").exists());
    }
    let o = rt.run(&["delete", &id]);
    assert_success(&o, "delete of the created container");
    assert_no_leftovers(&rt, &first, &id);
}

// ---------------------------------------------------------------- wrong state

#[test]
fn commands_in_the_wrong_state() {
    let rt = orca();
    let b = Bundle::busybox(&["sleep", "1000"]);
    let id = unique_name("bad-state");
    let o = rt.run(&["run", "-d", "-b", b.path_str(), &id]);
    assert_success(&o, "run -d");
    assert!(wait_status(&rt, &id, "running", T));
    let pid = pid_of(&rt, &id);

    let o = rt.run(&["start", &id]);
    assert_fails_with(&o, "start of a running container", &[]);
    assert_eq!(status_of(&rt, &id).as_deref(), Some("running"));

    let o = rt.run(&["delete", &id]);
    assert_fails_with(&o, "delete of a running container", &[]);
    assert_eq!(status_of(&rt, &id).as_deref(), Some("running"));
    assert!(process_alive(pid), "delete without -f killed the container");
    assert!(rt.root().join(&id).is_dir());

    let o = rt.run(&["resume", &id]);
    assert_fails_with(&o, "resume of a running container", &[]);

    let o = rt.run(&["kill", &id, "NOSUCHSIGNAL"]);
    assert_fails_with(&o, "kill with an unknown signal", &[]);
    assert!(process_alive(pid));

    let o = rt.run(&["pause", &id]);
    assert_success(&o, "pause");
    let o = rt.run(&["exec", &id, "true"]);
    assert_fails_with(&o, "exec in a paused container", &["paused"]);
    let o = rt.run(&["start", &id]);
    assert_fails_with(&o, "start of a paused container", &[]);
    let o = rt.run(&["resume", &id]);
    assert_success(&o, "resume");

    let o = rt.run(&["kill", &id, "KILL"]);
    assert_success(&o, "kill");
    assert!(wait_status(&rt, &id, "stopped", T));

    let o = rt.run(&["kill", &id, "KILL"]);
    assert_fails_with(
        &o,
        "kill of a stopped container",
        &["container not running"],
    );
    let o = rt.run(&["exec", &id, "true"]);
    assert_fails_with(&o, "exec in a stopped container", &["stopped"]);
    let o = rt.run(&["start", &id]);
    assert_fails_with(&o, "start of a stopped container", &[]);
    let o = rt.run(&["pause", &id]);
    assert_fails_with(&o, "pause of a stopped container", &[]);
    let o = rt.run(&["update", "--memory", "64m", &id]);
    assert_fails_with(&o, "update of a stopped container", &[]);

    let o = rt.run(&["delete", &id]);
    assert_success(&o, "delete of the stopped container");
    assert_no_leftovers(&rt, &b, &id);
}

#[test]
fn unknown_container_does_not_exist() {
    let rt = orca();
    let id = unique_name("bad-unknown");
    for args in [
        vec!["state", id.as_str()],
        vec!["start", id.as_str()],
        vec!["kill", id.as_str(), "KILL"],
        vec!["delete", id.as_str()],
        vec!["exec", id.as_str(), "true"],
        vec!["pause", id.as_str()],
        vec!["resume", id.as_str()],
        vec!["ps", id.as_str()],
        vec!["events", "--stats", id.as_str()],
        vec!["update", "--memory", "64m", id.as_str()],
    ] {
        let o = rt.run(&args);
        assert_fails_with(&o, &args.join(" "), &["container does not exist"]);
    }
    // As runc: delete -f of an unknown container succeeds.
    let o = rt.run(&["delete", "-f", &id]);
    assert_success(&o, "delete -f of an unknown container");
    assert!(root_entries(&rt).is_empty());
}

#[test]
fn exec_errors() {
    let rt = orca();
    let b = Bundle::busybox(&["sleep", "1000"]);
    let id = unique_name("bad-exec");
    let o = rt.run(&["run", "-d", "-b", b.path_str(), &id]);
    assert_success(&o, "run -d");
    let o = rt.run(&["exec", &id, "no-such-program-xyz"]);
    assert_fails_with(
        &o,
        "exec of a missing program",
        &["executable file not found in $PATH"],
    );
    let o = rt.run(&["exec", &id]);
    assert_fails_with(&o, "exec without a command", &[]);
    let o = rt.run(&["exec", "-u", "root", &id, "true"]);
    assert_fails_with(&o, "exec -u with a name", &[]);
    let o = rt.run(&["exec", "--cwd", "/no/such/dir", &id, "true"]);
    assert_fails_with(&o, "exec with a missing cwd", &["/no/such/dir"]);
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("process.json");
    std::fs::write(
        &p,
        json!({"args": ["true"], "cwd": "/", "user": {"uid": "x", "gid": 0}}).to_string(),
    )
    .unwrap();
    let o = rt.run(&["exec", "--process", p.to_str().unwrap(), &id]);
    assert_fails_with(&o, "exec with a bad process.json", &["user.uid"]);
    // Nothing of the failed execs is left in the container.
    let o = rt.run(&["ps", "--format", "json", &id]);
    let pids: Vec<i32> = serde_json::from_slice(&o.stdout).unwrap_or_default();
    assert_eq!(pids.len(), 1, "processes left by failed execs: {pids:?}");
    let o = rt.run(&["delete", "-f", &id]);
    assert_success(&o, "delete -f");
    assert_no_leftovers(&rt, &b, &id);
}

// ---------------------------------------------------------------- --log

fn last_json_line(p: &Path) -> Value {
    let text = std::fs::read_to_string(p).unwrap_or_default();
    let last = text
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or_else(|| panic!("log file {} is empty", p.display()));
    serde_json::from_str(last).unwrap_or_else(|e| panic!("last log line is not JSON ({e}): {last}"))
}

#[test]
fn json_log_ends_with_the_error() {
    let rt = orca();
    let dir = tempfile::tempdir().unwrap();
    let cases: Vec<(Bundle, &str)> = vec![
        (
            bundle_with(&["true"], |c| c["process"]["user"]["uid"] = json!("root")),
            "process.user.uid",
        ),
        (
            Bundle::busybox(&["no-such-program-xyz"]),
            "executable file not found in $PATH",
        ),
        (
            bundle_with(&["true"], |c| {
                c["hooks"] = json!({"prestart": [{"path": "/bin/false", "args": ["false"]}]})
            }),
            "prestart",
        ),
    ];
    for (i, (b, needle)) in cases.iter().enumerate() {
        let log = dir.path().join(format!("log-{i}.json"));
        let id = unique_name("bad-log");
        let o = rt.run(&[
            "--log",
            log.to_str().unwrap(),
            "--log-format",
            "json",
            "create",
            "-b",
            b.path_str(),
            &id,
        ]);
        assert_eq!(o.status.code(), Some(1), "{}", describe(&o));
        let v = last_json_line(&log);
        assert_eq!(v["level"], "error", "{v}");
        assert!(
            v["msg"].as_str().is_some_and(|m| m.contains(needle)),
            "msg lacks {needle:?}: {v}"
        );
        let time = v["time"]
            .as_str()
            .unwrap_or_else(|| panic!("no time in {v}"));
        assert!(time.contains('T') && time.len() >= 20, "time {time:?}");
        // Every line of the file is JSON.
        for l in std::fs::read_to_string(&log).unwrap().lines() {
            serde_json::from_str::<Value>(l)
                .unwrap_or_else(|e| panic!("log line not JSON ({e}): {l}"));
        }
        assert_nothing_left(&rt, b, &[]);
    }

    // Other commands too: the error of `state` of an unknown container.
    let log = dir.path().join("state.json");
    let o = rt.run(&[
        "--log",
        log.to_str().unwrap(),
        "--log-format",
        "json",
        "state",
        "no-such-container",
    ]);
    assert_eq!(o.status.code(), Some(1));
    let v = last_json_line(&log);
    assert_eq!(v["level"], "error");
    assert!(
        v["msg"]
            .as_str()
            .unwrap_or("")
            .contains("container does not exist"),
        "{v}"
    );
}

#[test]
fn text_log_ends_with_the_error() {
    let rt = orca();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log.txt");
    let b = Bundle::busybox(&["no-such-program-xyz"]);
    let id = unique_name("bad-tlog");
    let o = rt.run(&[
        "--log",
        log.to_str().unwrap(),
        "create",
        "-b",
        b.path_str(),
        &id,
    ]);
    assert_eq!(o.status.code(), Some(1));
    let text = std::fs::read_to_string(&log).unwrap();
    let last = text.lines().last().unwrap_or("");
    assert!(
        last.contains("level=error")
            && last.contains("executable file not found in $PATH")
            && last.starts_with("time="),
        "last text log line: {last:?}"
    );
    assert_nothing_left(&rt, &b, &[]);
}
