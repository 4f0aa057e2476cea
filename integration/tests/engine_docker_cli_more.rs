//! orcad's second slice, driven by the real docker CLI (28.x) on Debian's
//! containerd 1.6: exec, stdin and TTYs, resources/security/mounts in the
//! OCI spec, image tag/rmi/inspect/history, and restart/pause/rename/top/
//! stats.

use std::process::Output;
use std::time::Duration;

use orca_integration::engine_support::{orcad_with_busybox, stderr, stdout, Orcad, DOCKER_CLI};
use orca_integration::{assert_success, require_tool, unique_name, wait_until};
use serde_json::Value;

const T: Duration = Duration::from_secs(120);

/// `sh -c SCRIPT` with the docker CLI aimed at `o` (for pipes).
fn sh(o: &Orcad, script: &str) -> Output {
    o.docker_sh(script, T)
}

fn run_detached(o: &Orcad, image: &str, extra: &[&str]) -> String {
    let mut args = vec!["run", "-d"];
    args.extend_from_slice(extra);
    args.extend_from_slice(&[image, "sleep", "1000"]);
    let out = o.docker(&args, T);
    assert_success(&out, "docker run -d sleep");
    stdout(&out).trim().to_string()
}

fn json_of(o: &Orcad, method: &str, path: &str) -> (u16, Value) {
    let (code, body) = o.http(method, path, None).expect("http");
    let v = serde_json::from_slice(&body).unwrap_or(Value::Null);
    (code, v)
}

#[test]
fn docker_exec_env_workdir_user_and_exit_codes() {
    let (_c, o, _reg, image) = orcad_with_busybox(T);
    let id = run_detached(&o, &image, &[]);

    let out = o.docker(&["exec", &id, "echo", "hi"], T);
    assert_success(&out, "docker exec echo hi");
    assert_eq!(stdout(&out), "hi\n");

    let out = o.docker(&["exec", &id, "sh", "-c", "echo oops >&2; exit 5"], T);
    assert_eq!(out.status.code(), Some(5), "stderr: {}", stderr(&out));
    assert_eq!(stderr(&out), "oops\n");

    let out = o.docker(&["exec", "-e", "X=1", &id, "sh", "-c", "echo $X"], T);
    assert_success(&out, "docker exec -e");
    assert_eq!(stdout(&out), "1\n");

    let out = o.docker(&["exec", "-w", "/tmp", &id, "pwd"], T);
    assert_success(&out, "docker exec -w");
    assert_eq!(stdout(&out), "/tmp\n");

    let out = o.docker(&["exec", "-u", "1000", &id, "id", "-u"], T);
    assert_success(&out, "docker exec -u");
    assert_eq!(stdout(&out), "1000\n");

    // The container's environment is inherited.
    let out = o.docker(&["exec", &id, "sh", "-c", "echo $HOSTNAME"], T);
    assert_eq!(stdout(&out).trim(), &id[..12]);

    // A missing binary: 126/127 like dockerd, with the runtime's message.
    let out = o.docker(&["exec", &id, "/no/such/binary"], T);
    assert!(
        matches!(out.status.code(), Some(126) | Some(127)),
        "code {:?} stdout {} stderr {}",
        out.status.code(),
        stdout(&out),
        stderr(&out)
    );

    // stdin without a TTY.
    let out = o.docker_with_stdin(&["exec", "-i", &id, "cat"], b"abc\n", T);
    assert_success(&out, "docker exec -i cat");
    assert_eq!(stdout(&out), "abc\n");

    // Detached exec, then the exec inspect API.
    let out = o.docker(
        &["exec", "-d", &id, "sh", "-c", "echo x > /tmp/detached"],
        T,
    );
    assert_success(&out, "docker exec -d");
    let ok = wait_until(Duration::from_secs(10), || {
        stdout(&o.docker(&["exec", &id, "cat", "/tmp/detached"], T)) == "x\n"
    });
    assert!(ok, "detached exec ran");
    let (code, v) = json_of(&o, "POST", &format!("/v1.44/containers/{id}/exec"));
    assert_eq!(code, 400, "no Cmd: {v}");
    let (code, body) = o
        .http(
            "POST",
            &format!("/v1.44/containers/{id}/exec"),
            Some(br#"{"Cmd":["sh","-c","exit 3"],"AttachStdout":true}"#),
        )
        .unwrap();
    assert_eq!(code, 201, "{}", String::from_utf8_lossy(&body));
    let eid = serde_json::from_slice::<Value>(&body).unwrap()["Id"]
        .as_str()
        .unwrap()
        .to_string();
    let (code, v) = json_of(&o, "GET", &format!("/v1.44/exec/{eid}/json"));
    assert_eq!(code, 200);
    assert_eq!(v["Running"], false);
    assert_eq!(v["ExitCode"], Value::Null, "{v}");
    let (code, out) = o
        .http(
            "POST",
            &format!("/v1.44/exec/{eid}/start"),
            Some(br#"{"Detach":false}"#),
        )
        .unwrap();
    assert_eq!(code, 200);
    let (_, v) = json_of(&o, "GET", &format!("/v1.44/exec/{eid}/json"));
    assert_eq!(v["ExitCode"], 3, "{v} {}", String::from_utf8_lossy(&out));
    assert_eq!(v["Running"], false);
    assert!(v["Pid"].as_u64().unwrap_or(0) > 0, "{v}");
    assert_eq!(v["ContainerID"], id.as_str());
    // Started twice: 409. Unknown exec: 404.
    let (code, _) = o
        .http("POST", &format!("/v1.44/exec/{eid}/start"), Some(b"{}"))
        .unwrap();
    assert_eq!(code, 409);
    let (code, v) = json_of(&o, "GET", "/v1.44/exec/nope/json");
    assert_eq!(code, 404);
    assert_eq!(v["message"], "No such exec instance: nope");
    // Privileged exec is not implemented: 501.
    let (code, _) = o
        .http(
            "POST",
            &format!("/v1.44/containers/{id}/exec"),
            Some(br#"{"Cmd":["true"],"Privileged":true}"#),
        )
        .unwrap();
    assert_eq!(code, 501);

    let out = o.docker(&["inspect", "--format", "{{len .ExecIDs}}", &id], T);
    assert_success(&out, "docker inspect ExecIDs");
    assert_ne!(stdout(&out).trim(), "0");

    // An exec with a TTY takes a resize before it starts (applied at start).
    let (code, body) = o
        .http(
            "POST",
            &format!("/v1.44/containers/{id}/exec"),
            Some(br#"{"Cmd":["stty","size"],"Tty":true,"AttachStdout":true}"#),
        )
        .unwrap();
    assert_eq!(code, 201, "{}", String::from_utf8_lossy(&body));
    let tid = serde_json::from_slice::<Value>(&body).unwrap()["Id"]
        .as_str()
        .unwrap()
        .to_string();
    let (code, _) = o
        .http("POST", &format!("/v1.44/exec/{tid}/resize?h=21&w=77"), None)
        .unwrap();
    assert_eq!(code, 200);
    let (code, out) = o
        .http("POST", &format!("/v1.44/exec/{tid}/start"), Some(b"{}"))
        .unwrap();
    assert_eq!(code, 200);
    // Raw (TTY) stream: no stdcopy headers; the process sees the size.
    assert_eq!(String::from_utf8_lossy(&out), "21 77\r\n");
    // Resizing a non-TTY exec: 409.
    let (code, _) = o
        .http("POST", &format!("/v1.44/exec/{eid}/resize?h=1&w=1"), None)
        .unwrap();
    assert_eq!(code, 409);

    // Exec in a stopped container: 409.
    assert_success(&o.docker(&["kill", &id], T), "docker kill");
    assert_eq!(stdout(&o.docker(&["wait", &id], T)).trim(), "137");
    let out = o.docker(&["exec", &id, "true"], T);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("is not running"), "{}", stderr(&out));
    assert_success(&o.docker(&["rm", &id], T), "docker rm");
}

#[test]
fn docker_stdin_and_tty() {
    require_tool("script");
    let (_c, o, _reg, image) = orcad_with_busybox(T);

    // run -i: the client's stdin reaches the container; its end closes it.
    let out = sh(
        &o,
        &format!("echo hello | {DOCKER_CLI} run -i --rm {image} cat"),
    );
    assert_success(&out, "echo hello | docker run -i --rm cat");
    assert_eq!(stdout(&out), "hello\n", "stderr: {}", stderr(&out));
    let out = o.docker_with_stdin(
        &["run", "-i", "--rm", &image, "sh", "-c", "wc -l; exit 9"],
        b"a\nb\nc\n",
        T,
    );
    assert_eq!(out.status.code(), Some(9), "stderr: {}", stderr(&out));
    assert_eq!(stdout(&out).trim(), "3");

    // run -t under a pty: the process has a terminal.
    let out = sh(
        &o,
        &format!("script -qec '{DOCKER_CLI} run -t --rm {image} tty' /dev/null"),
    );
    assert_success(&out, "script docker run -t tty");
    assert!(
        stdout(&out).contains("/dev/pts/0"),
        "stdout: {:?} stderr: {}",
        stdout(&out),
        stderr(&out)
    );

    // run -it under a pty: terminal, stdin attached, exit code kept.
    let out = sh(
        &o,
        &format!("script -qec \"{DOCKER_CLI} run -it --rm {image} sh -c 'tty; exit 3'\" /dev/null"),
    );
    assert!(
        stdout(&out).contains("/dev/pts/0"),
        "stdout: {:?} stderr: {}",
        stdout(&out),
        stderr(&out)
    );
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));

    // exec -it under a pty.
    let id = run_detached(&o, &image, &[]);
    let out = sh(
        &o,
        &format!("script -qec \"{DOCKER_CLI} exec -it {id} sh -c 'tty; stty size'\" /dev/null"),
    );
    assert_success(&out, "script docker exec -it tty");
    assert!(
        stdout(&out).contains("/dev/pts/0"),
        "stdout: {:?} stderr: {}",
        stdout(&out),
        stderr(&out)
    );

    // A TTY container kept open with -dit: resize reaches the pty.
    let name = unique_name("orca-tty");
    let out = o.docker(&["run", "-dit", "--name", &name, &image, "sh"], T);
    assert_success(&out, "docker run -dit sh");
    let (code, body) = o
        .http(
            "POST",
            &format!("/v1.44/containers/{name}/resize?h=33&w=101"),
            None,
        )
        .unwrap();
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
    let out = o.docker(&["exec", &name, "sh", "-c", "stty size < /dev/pts/0"], T);
    assert_eq!(stdout(&out).trim(), "33 101", "stderr: {}", stderr(&out));
    let v: Value = serde_json::from_str(&stdout(&o.docker(&["inspect", &name], T))).unwrap();
    assert_eq!(v[0]["Config"]["Tty"], true);
    assert_eq!(v[0]["Config"]["OpenStdin"], true);
    // Resize of a non-TTY container: an error, not a fake success.
    let (code, _) = o
        .http(
            "POST",
            &format!("/v1.44/containers/{id}/resize?h=1&w=1"),
            None,
        )
        .unwrap();
    assert!(code >= 400, "{code}");
    assert_success(&o.docker(&["rm", "-f", &name, &id], T), "docker rm -f");
}

#[test]
fn docker_run_resources_security_and_mounts() {
    let (_c, o, _reg, image) = orcad_with_busybox(T);
    let run = |extra: &[&str], cmd: &str| -> Output {
        let mut args = vec!["run", "--rm"];
        args.extend_from_slice(extra);
        args.extend_from_slice(&[&image, "sh", "-c", cmd]);
        o.docker(&args, T)
    };
    let ok = |extra: &[&str], cmd: &str| -> String {
        let out = run(extra, cmd);
        assert_success(&out, &format!("docker run {extra:?} {cmd}"));
        stdout(&out).trim().to_string()
    };

    assert_eq!(
        ok(
            &["-m", "64m"],
            "cat /sys/fs/cgroup/memory/memory.limit_in_bytes"
        ),
        "67108864"
    );
    assert_eq!(
        ok(&["--pids-limit", "20"], "cat /sys/fs/cgroup/pids/pids.max"),
        "20"
    );
    assert_eq!(
        ok(
            &["--cpus", "0.5"],
            "cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us"
        ),
        "50000"
    );
    assert_eq!(
        ok(
            &["--cpu-shares", "512"],
            "cat /sys/fs/cgroup/cpu/cpu.shares"
        ),
        "512"
    );
    assert_eq!(
        ok(
            &["--cpu-quota", "20000", "--cpu-period", "40000"],
            "cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us /sys/fs/cgroup/cpu/cpu.cfs_period_us"
        )
        .split_whitespace()
        .collect::<Vec<_>>(),
        ["20000", "40000"]
    );
    assert_eq!(
        ok(
            &["--cpuset-cpus", "0"],
            "cat /sys/fs/cgroup/cpuset/cpuset.cpus"
        ),
        "0"
    );
    assert_eq!(
        ok(&["--ulimit", "nofile=123:456"], "ulimit -n; ulimit -Hn"),
        "123\n456"
    );

    // Capabilities.
    let cap_eff = |extra: &[&str]| ok(extra, "grep CapEff /proc/self/status");
    assert!(
        cap_eff(&["--cap-drop", "ALL"]).ends_with("0000000000000000"),
        "{}",
        cap_eff(&["--cap-drop", "ALL"])
    );
    assert!(
        cap_eff(&[]).ends_with("00000000a80425fb"),
        "docker's default set: {}",
        cap_eff(&[])
    );
    // CAP_NET_ADMIN is bit 12: a80425fb | 0x1000.
    assert!(
        cap_eff(&["--cap-add", "NET_ADMIN"]).ends_with("00000000a80435fb"),
        "{}",
        cap_eff(&["--cap-add", "NET_ADMIN"])
    );
    let out = run(&["--cap-drop", "ALL"], "chown 1 /tmp");
    assert!(!out.status.success(), "chown without CAP_CHOWN");
    let out = run(&["--cap-add", "NOPE"], "true");
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("unknown capability"),
        "{}",
        stderr(&out)
    );
    // Privileged: every capability (of orcad's bounding set), no masked
    // paths, all devices.
    let bnd = std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:").map(|v| v.trim().to_string()))
        .unwrap();
    let p = ok(&["--privileged"], "grep CapEff /proc/self/status");
    assert!(p.ends_with(&bnd), "{p} vs CapBnd {bnd}");
    assert_eq!(
        ok(&["--privileged"], "cat /sys/fs/cgroup/devices/devices.list"),
        "a *:* rwm"
    );
    let out = run(&[], "cat /proc/kcore | head -c1 | wc -c");
    assert_eq!(stdout(&out).trim(), "0", "kcore masked by default");
    // no-new-privileges.
    assert_eq!(
        ok(
            &["--security-opt", "no-new-privileges"],
            "grep NoNewPrivs /proc/self/status | tr -d ' \\t'"
        ),
        "NoNewPrivs:1"
    );

    // Read-only rootfs, tmpfs.
    let out = run(&["--read-only"], "touch /x");
    assert!(!out.status.success(), "touch / on --read-only succeeded");
    assert!(
        stderr(&out).contains("Read-only file system"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        ok(
            &["--read-only", "--tmpfs", "/scratch"],
            "touch /scratch/x && grep ' /scratch ' /proc/mounts | cut -d' ' -f3"
        ),
        "tmpfs"
    );
    assert_eq!(
        ok(
            &["--mount", "type=tmpfs,destination=/t2,tmpfs-size=1m"],
            "df -k /t2 | tail -1 | awk '{print $2}'"
        ),
        "1024"
    );

    // Binds: read-write and read-only; --mount type=bind.
    let dir = tempfile::tempdir().unwrap();
    let host = dir.path().display().to_string();
    std::fs::write(dir.path().join("in"), "from-host\n").unwrap();
    let bind = format!("{host}:/data");
    assert_eq!(
        ok(&["-v", &bind], "cat /data/in; echo back > /data/out"),
        "from-host"
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("out")).unwrap(),
        "back\n"
    );
    let bind_ro = format!("{host}:/data:ro");
    let out = run(&["-v", &bind_ro], "cat /data/in; touch /data/nope");
    assert!(!out.status.success(), "write to a :ro bind succeeded");
    assert_eq!(stdout(&out), "from-host\n");
    assert!(!dir.path().join("nope").exists());
    let m = format!("type=bind,source={host},target=/m,readonly");
    assert_eq!(ok(&["--mount", &m], "cat /m/in"), "from-host");
    let out = run(
        &["--mount", "type=bind,source=/no/such/dir,target=/m"],
        "true",
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("bind source path does not exist"),
        "{}",
        stderr(&out)
    );

    // --init: docker-init (tini) is PID 1 and runs the command as its child;
    // the command's exit code comes through.
    let ps = ok(
        &["--init"],
        "cat /proc/1/cmdline | tr '\\0' ' '; echo; echo $$",
    );
    let mut lines = ps.lines();
    assert!(
        lines
            .next()
            .unwrap_or("")
            .starts_with("/sbin/docker-init -- sh -c"),
        "{ps}"
    );
    assert_ne!(lines.next(), Some("1"), "{ps}");
    assert_eq!(run(&["--init"], "exit 7").status.code(), Some(7));
    // --sysctl: namespaced ones are set; others are refused like dockerd.
    assert_eq!(
        ok(
            &["--sysctl", "net.ipv4.ip_forward=1"],
            "cat /proc/sys/net/ipv4/ip_forward"
        ),
        "1"
    );
    assert_eq!(
        ok(
            &["--sysctl", "kernel.shmmni=1234"],
            "cat /proc/sys/kernel/shmmni"
        ),
        "1234"
    );
    let out = run(&["--sysctl", "kernel.hostname=x"], "true");
    assert!(!out.status.success());
    assert!(stderr(&out).contains("is not allowed"), "{}", stderr(&out));

    // --add-host and --dns*: /etc/hosts and /etc/resolv.conf.
    let files = ok(
        &[
            "--add-host",
            "db.example:10.1.2.3",
            "--add-host",
            "v6.example:fd00::5",
            "--dns",
            "192.0.2.53",
            "--dns-search",
            "corp.example",
            "--dns-option",
            "ndots:2",
        ],
        "cat /etc/hosts /etc/resolv.conf",
    );
    for line in [
        "10.1.2.3\tdb.example",
        "fd00::5\tv6.example",
        "nameserver 192.0.2.53",
        "search corp.example",
        "options ndots:2",
    ] {
        assert!(
            files.lines().any(|l| l == line),
            "{line:?} missing:\n{files}"
        );
    }
    assert_eq!(
        files
            .lines()
            .filter(|l| l.starts_with("nameserver"))
            .count(),
        1,
        "{files}"
    );
    let out = run(&["--add-host", "bad:not-an-ip"], "true");
    assert!(!out.status.success());
    // The CLI checks --dns itself; the API refuses a bad one too (400,
    // nothing created).
    let body = format!(r#"{{"Image":"{image}","HostConfig":{{"Dns":["nope"]}}}}"#);
    let (code, msg) = o
        .http("POST", "/containers/create", Some(body.as_bytes()))
        .unwrap();
    assert_eq!(code, 400, "{}", String::from_utf8_lossy(&msg));
    assert!(String::from_utf8_lossy(&msg).contains("is not an ip address"));

    // Not implemented yet: 501 errors, never a silent success.
    // (--device is implemented now: integration/tests/engine_devices.rs.)
    let extra = ["--security-opt", "apparmor=myprofile"];
    let out = run(&extra, "true");
    assert!(!out.status.success(), "{extra:?} succeeded");
    assert!(
        stderr(&out).contains("not implemented in orcad yet"),
        "{extra:?}: {}",
        stderr(&out)
    );
    // Bad values: 400 like dockerd.
    let out = run(&["-m", "1m"], "true");
    assert!(
        stderr(&out).contains("Minimum memory limit"),
        "{}",
        stderr(&out)
    );
    let out = run(&["--cpus", "64"], "true");
    assert!(stderr(&out).contains("Range of CPUs"), "{}", stderr(&out));

    // The container's HostConfig echoes what was asked.
    let out = o.docker(
        &[
            "create",
            "-m",
            "32m",
            "--pids-limit",
            "7",
            "-v",
            &bind_ro,
            &image,
            "true",
        ],
        T,
    );
    assert_success(&out, "docker create -m");
    let cid = stdout(&out).trim().to_string();
    let v: Value = serde_json::from_str(&stdout(&o.docker(&["inspect", &cid], T))).unwrap();
    assert_eq!(v[0]["HostConfig"]["Memory"], 33554432);
    assert_eq!(v[0]["HostConfig"]["PidsLimit"], 7);
    let m = &v[0]["Mounts"][0];
    assert_eq!(m["Type"], "bind", "{v}");
    assert_eq!(m["Source"], host.as_str());
    assert_eq!(m["Destination"], "/data");
    assert_eq!(m["RW"], false);
    assert_success(&o.docker(&["rm", &cid], T), "docker rm");
}

/// A container killed by the OOM killer: exit 137, `State.OOMKilled`, and
/// docker's `oom` event (from containerd's `/tasks/oom`); a later run of
/// the same container that exits normally clears the flag.
#[test]
fn docker_oom_kill_is_reported() {
    let (_c, o, _reg, image) = orcad_with_busybox(T);
    let name = unique_name("oom");
    let t0 = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    // `tail` keeps the whole newline-free input in memory; once /ok exists
    // the container exits 0 instead.
    let out = o.docker(
        &[
            "run",
            "--name",
            &name,
            "-m",
            "16m",
            &image,
            "sh",
            "-c",
            "[ -e /ok ] || head -c 200m /dev/zero | tail",
        ],
        T,
    );
    assert_eq!(out.status.code(), Some(137), "stderr: {}", stderr(&out));
    let inspect = |o: &Orcad| {
        let out = o.docker(
            &[
                "inspect",
                "-f",
                "{{.State.OOMKilled}} {{.State.ExitCode}}",
                &name,
            ],
            T,
        );
        assert_success(&out, "docker inspect");
        stdout(&out).trim().to_string()
    };
    assert_eq!(inspect(&o), "true 137");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let (since, until) = (t0.to_string(), (now + 1).to_string());
    let out = o.docker(
        &[
            "events",
            "--since",
            &since,
            "--until",
            &until,
            "--filter",
            "event=oom",
            "--format",
            "{{.Actor.Attributes.name}} {{.Action}}",
        ],
        T,
    );
    assert_success(&out, "docker events");
    assert!(
        stdout(&out).contains(&format!("{name} oom")),
        "{}",
        stdout(&out)
    );
    // The next run of the same container exits normally: the flag goes.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ok"), "").unwrap();
    let src = dir.path().join("ok").display().to_string();
    assert_success(
        &o.docker(&["cp", &src, &format!("{name}:/ok")], T),
        "docker cp",
    );
    let out = o.docker(&["start", "-a", &name], T);
    assert_success(&out, "docker start -a");
    assert_eq!(inspect(&o), "false 0");
}

#[test]
fn docker_image_tag_rmi_inspect_history() {
    let (_c, o, _reg, image) = orcad_with_busybox(T);
    let id = {
        let out = o.docker(&["image", "inspect", "--format", "{{.Id}}", &image], T);
        assert_success(&out, "docker image inspect --format");
        stdout(&out).trim().to_string()
    };
    assert!(id.starts_with("sha256:"), "{id}");

    // Inspect: RootFS and Config.
    let out = o.docker(&["image", "inspect", &image], T);
    let v: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(v[0]["RootFS"]["Type"], "layers", "{v}");
    assert!(!v[0]["RootFS"]["Layers"].as_array().unwrap().is_empty());
    assert!(v[0]["Config"]["Cmd"].is_array(), "{v}");
    assert_eq!(v[0]["RepoTags"][0], image.as_str());

    // Tag: a second name for the same image ID.
    assert_success(
        &o.docker(&["tag", &image, "orca-test/bb:v1"], T),
        "docker tag",
    );
    assert_success(
        &o.docker(&["tag", &id, "orca-test/bb2"], T),
        "docker tag by ID",
    );
    let out = o.docker(
        &["images", "--format", "{{.Repository}}:{{.Tag}} {{.ID}}"],
        T,
    );
    let s = stdout(&out);
    let short = &id["sha256:".len().."sha256:".len() + 12];
    assert!(s.contains(&format!("orca-test/bb:v1 {short}")), "{s}");
    assert!(s.contains(&format!("orca-test/bb2:latest {short}")), "{s}");
    let out = o.docker(
        &["image", "inspect", "--format", "{{.Id}}", "orca-test/bb:v1"],
        T,
    );
    assert_eq!(stdout(&out).trim(), id);
    let out = o.docker(&["tag", "no-such-image", "x/y"], T);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("No such image"), "{}", stderr(&out));

    // History: newest first, the top row is the image.
    let out = o.docker(
        &[
            "history",
            "--no-trunc",
            "--format",
            "{{.ID}}|{{.CreatedBy}}",
            &image,
        ],
        T,
    );
    assert_success(&out, "docker history");
    let first = stdout(&out).lines().next().unwrap_or("").to_string();
    assert!(first.starts_with(&id), "{}", stdout(&out));
    let (code, v) = json_of(&o, "GET", "/v1.44/images/orca-test/bb:v1/history");
    assert_eq!(code, 200);
    assert!(
        v[0]["Tags"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t == "orca-test/bb:v1"),
        "{v}"
    );

    // rmi of one of several names only untags.
    let out = o.docker(&["rmi", "orca-test/bb2"], T);
    assert_success(&out, "docker rmi (untag)");
    assert_eq!(stdout(&out).trim(), "Untagged: orca-test/bb2:latest");
    // By ID while several names exist: 409 unless forced.
    let out = o.docker(&["rmi", &id], T);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("image is referenced in multiple repositories"),
        "{}",
        stderr(&out)
    );
    assert_success(&o.docker(&["rmi", "orca-test/bb:v1"], T), "docker rmi");

    // A stopped container keeps the image: 409, then -f deletes it.
    let name = unique_name("orca-img-user");
    assert_success(
        &o.docker(&["run", "--name", &name, &image, "true"], T),
        "docker run",
    );
    let out = o.docker(&["rmi", &image], T);
    assert!(
        !out.status.success(),
        "rmi while a container uses the image"
    );
    assert!(stderr(&out).contains("conflict"), "{}", stderr(&out));
    assert!(stderr(&out).contains("must force"), "{}", stderr(&out));
    // A running one: not even with -f.
    let rid = run_detached(&o, &image, &[]);
    let out = o.docker(&["rmi", "-f", &image], T);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("running container"),
        "{}",
        stderr(&out)
    );
    assert_success(&o.docker(&["rm", "-f", &rid], T), "docker rm -f");
    let out = o.docker(&["rmi", "-f", &image], T);
    assert_success(&out, "docker rmi -f");
    let s = stdout(&out);
    assert!(s.contains(&format!("Untagged: {image}")), "{s}");
    assert!(s.contains(&format!("Deleted: {id}")), "{s}");
    let out = o.docker(&["images", "-q"], T);
    assert!(stdout(&out).trim().is_empty(), "{}", stdout(&out));
    let out = o.docker(&["rmi", &image], T);
    assert!(stderr(&out).contains("No such image"), "{}", stderr(&out));
    assert_success(&o.docker(&["rm", &name], T), "docker rm");
}

#[test]
fn docker_restart_pause_rename_top_stats() {
    let (_c, o, _reg, image) = orcad_with_busybox(T);
    let name = unique_name("orca-ops");
    let id = run_detached(
        &o,
        &image,
        &["--name", &name, "-m", "64m", "--pids-limit", "50"],
    );
    let pid_of = || {
        let out = o.docker(&["inspect", "--format", "{{.State.Pid}}", &id], T);
        stdout(&out).trim().parse::<u32>().unwrap_or(0)
    };

    // top: the container's processes, from the host's ps.
    let out = o.docker(&["top", &name], T);
    assert_success(&out, "docker top");
    let s = stdout(&out);
    assert!(s.contains("PID") && s.contains("sleep 1000"), "{s}");
    assert!(s.contains(&pid_of().to_string()), "{s}");
    let out = o.docker(&["top", &name, "-o", "pid,comm"], T);
    assert_success(&out, "docker top -o");
    assert!(stdout(&out).contains("sleep"), "{}", stdout(&out));

    // stats --no-stream, and the raw JSON document.
    let out = o.docker(
        &[
            "stats",
            "--no-stream",
            "--format",
            "{{.Name}} {{.MemUsage}} {{.PIDs}}",
            &name,
        ],
        T,
    );
    assert_success(&out, "docker stats --no-stream");
    let s = stdout(&out);
    assert!(s.starts_with(&format!("{name} ")), "{s}");
    assert!(s.contains("/ 64MiB"), "{s}");
    let (code, body) = o
        .http(
            "GET",
            &format!("/v1.44/containers/{id}/stats?stream=0"),
            None,
        )
        .unwrap();
    assert_eq!(code, 200);
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["memory_stats"]["limit"], 67108864, "{v}");
    assert!(v["memory_stats"]["usage"].as_u64().unwrap_or(0) > 0, "{v}");
    assert!(
        v["cpu_stats"]["cpu_usage"]["total_usage"]
            .as_u64()
            .unwrap_or(0)
            > 0,
        "{v}"
    );
    assert!(
        v["precpu_stats"]["cpu_usage"]["total_usage"]
            .as_u64()
            .unwrap_or(0)
            > 0,
        "{v}"
    );
    assert_eq!(v["pids_stats"]["current"], 1, "{v}");
    assert_eq!(v["pids_stats"]["limit"], 50, "{v}");
    assert_eq!(v["name"], format!("/{name}"));

    // pause/unpause.
    assert_success(&o.docker(&["pause", &name], T), "docker pause");
    let out = o.docker(
        &[
            "inspect",
            "--format",
            "{{.State.Status}} {{.State.Paused}}",
            &id,
        ],
        T,
    );
    assert_eq!(stdout(&out).trim(), "paused true");
    let out = o.docker(&["ps", "--format", "{{.Status}}"], T);
    assert!(stdout(&out).contains("(Paused)"), "{}", stdout(&out));
    let out = o.docker(&["exec", &name, "true"], T);
    assert!(stderr(&out).contains("is paused"), "{}", stderr(&out));
    let out = o.docker(&["pause", &name], T);
    assert!(stderr(&out).contains("already paused"), "{}", stderr(&out));
    assert_success(&o.docker(&["unpause", &name], T), "docker unpause");
    let out = o.docker(&["unpause", &name], T);
    assert!(stderr(&out).contains("is not paused"), "{}", stderr(&out));
    assert_success(&o.docker(&["exec", &name, "true"], T), "exec after unpause");

    // restart: a new process.
    let before = pid_of();
    let out = o.docker(&["restart", "-t", "1", &name], T);
    assert_success(&out, "docker restart");
    let after = pid_of();
    assert!(after > 0 && after != before, "{before} -> {after}");
    let out = o.docker(&["inspect", "--format", "{{.State.Status}}", &id], T);
    assert_eq!(stdout(&out).trim(), "running");

    // rename.
    let new = unique_name("orca-renamed");
    assert_success(&o.docker(&["rename", &name, &new], T), "docker rename");
    let out = o.docker(&["inspect", "--format", "{{.Name}}", &id], T);
    assert_eq!(stdout(&out).trim(), format!("/{new}"));
    let other = o.docker(&["create", "--name", &name, &image, "true"], T);
    assert_success(&other, "the old name is free again");
    let out = o.docker(&["rename", &new, &name], T);
    assert!(
        stderr(&out).contains("is already in use"),
        "{}",
        stderr(&out)
    );

    // A paused container still stops.
    assert_success(&o.docker(&["pause", &new], T), "docker pause");
    assert_success(
        &o.docker(&["stop", "-t", "1", &new], T),
        "docker stop (paused)",
    );
    let out = o.docker(&["top", &new], T);
    assert!(stderr(&out).contains("is not running"), "{}", stderr(&out));
    assert_success(&o.docker(&["rm", &new, &name], T), "docker rm");
}
