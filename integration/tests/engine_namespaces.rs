//! orcad's namespace modes, driven by the docker CLI 28 on Debian's
//! containerd 1.6: `--pid host` (the host's processes; `top` and `exec`
//! still work), `--uts host` (the host's hostname; dockerd's conflict with
//! `--hostname`), and the IPC modes — `private` (the default), `shareable`
//! (a host-side tmpfs at /dev/shm sized by `--shm-size`, mounted from start
//! to exit), `container:<x>` (the target's IPC namespace and /dev/shm;
//! dockerd's errors for a private or stopped target), `host` (the host's
//! IPC namespace and /dev/shm) and `none` (no /dev/shm) — with no mount left
//! behind after `rm -f`.

use std::path::PathBuf;
use std::time::Duration;

use orca_integration::engine_support::{orcad_with_busybox, Orcad};
use orca_integration::{unique_name, Containerd, Registry};
use serde_json::Value;

const T: Duration = Duration::from_secs(120);

use orca_integration::engine_support::{stderr as err, stdout as out};

struct Env {
    o: Orcad,
    _reg: Registry,
    _c: Containerd,
    image: String,
}

impl Drop for Env {
    fn drop(&mut self) {
        self.o.remove_all_containers(T);
        self.o.stop();
    }
}

fn setup() -> Env {
    let (c, o, reg, image) = orcad_with_busybox(T);
    Env {
        o,
        _reg: reg,
        _c: c,
        image,
    }
}

/// A file in the host's /dev/shm, removed on drop.
struct HostShmFile(PathBuf);

impl Drop for HostShmFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn mountinfo() -> String {
    std::fs::read_to_string("/proc/self/mountinfo").expect("read /proc/self/mountinfo")
}

fn inspect(o: &Orcad, name: &str) -> Value {
    let s = o.docker_ok(&["inspect", name], T);
    let v: Value = serde_json::from_str(&s).expect("inspect JSON");
    v[0].clone()
}

fn host_hostname() -> String {
    nix::unistd::gethostname()
        .expect("gethostname")
        .into_string()
        .expect("utf-8 hostname")
}

#[test]
fn pid_and_uts_host() {
    let e = setup();
    let (o, img) = (&e.o, e.image.as_str());

    // --pid host: the host's processes, pid 1 among them.
    let comm1 = std::fs::read_to_string("/proc/1/comm").expect("read /proc/1/comm");
    let ps = o.docker_ok(
        &["run", "--rm", "--pid", "host", img, "ps", "-o", "pid,comm"],
        T,
    );
    let pid1 = ps
        .lines()
        .find(|l| l.split_whitespace().next() == Some("1"))
        .unwrap_or_else(|| panic!("no pid 1 in {ps}"));
    assert!(
        pid1.contains(comm1.trim()),
        "pid 1 {comm1:?} not in {pid1:?}"
    );
    let host_ns = std::fs::read_link("/proc/self/ns/pid").unwrap();
    let ns = o.docker_ok(
        &[
            "run",
            "--rm",
            "--pid",
            "host",
            img,
            "readlink",
            "/proc/self/ns/pid",
        ],
        T,
    );
    assert_eq!(ns.trim(), host_ns.to_string_lossy());
    // Without it: a pid namespace of its own.
    let ns = o.docker_ok(&["run", "--rm", img, "readlink", "/proc/self/ns/pid"], T);
    assert_ne!(ns.trim(), host_ns.to_string_lossy());

    // top and exec keep working (pids seen from the host's namespace).
    let p = unique_name("p");
    o.docker_ok(
        &[
            "run", "-d", "--name", &p, "--pid", "host", img, "sleep", "300",
        ],
        T,
    );
    let v = inspect(o, &p);
    assert_eq!(v["HostConfig"]["PidMode"], "host");
    let pid = v["State"]["Pid"].as_u64().unwrap();
    let top = o.docker_ok(&["top", &p], T);
    assert!(top.contains("sleep 300"), "{top}");
    assert!(top.contains(&pid.to_string()), "{pid} not in {top}");
    let mine = o.docker_ok(&["exec", &p, "pidof", "sleep"], T);
    assert!(
        mine.split_whitespace().any(|x| x == pid.to_string()),
        "host pid {pid} not among {mine}"
    );
    o.docker_ok(&["rm", "-f", &p], T);

    // --uts host: the host's name, in `hostname` and /etc/hostname.
    let host = host_hostname();
    let hn = o.docker_ok(
        &[
            "run",
            "--rm",
            "--uts",
            "host",
            img,
            "sh",
            "-c",
            "hostname; cat /etc/hostname",
        ],
        T,
    );
    let lines: Vec<&str> = hn.lines().collect();
    assert_eq!(lines, vec![host.as_str(), host.as_str()], "{hn}");
    let host_uts = std::fs::read_link("/proc/self/ns/uts").unwrap();
    let ns = o.docker_ok(
        &[
            "run",
            "--rm",
            "--uts",
            "host",
            img,
            "readlink",
            "/proc/self/ns/uts",
        ],
        T,
    );
    assert_eq!(ns.trim(), host_uts.to_string_lossy());
    // dockerd's conflict with --hostname; nothing is created.
    let r = o.docker(
        &[
            "run",
            "--rm",
            "--uts",
            "host",
            "--hostname",
            "x",
            img,
            "true",
        ],
        T,
    );
    assert!(!r.status.success());
    assert!(
        err(&r).contains("conflicting options: hostname and the UTS mode"),
        "{}",
        err(&r)
    );
    assert_eq!(out(&o.docker(&["ps", "-aq"], T)).trim(), "");

    // Invalid modes (the CLI checks its flags; the API is checked too).
    for (hc, msg) in [
        (r#"{"PidMode":"bogus"}"#, "invalid PID mode: bogus"),
        (r#"{"UTSMode":"private"}"#, "invalid UTS mode: private"),
        (r#"{"IpcMode":"bogus"}"#, "invalid IPC mode: bogus"),
        (
            r#"{"IpcMode":"container:"}"#,
            "invalid IPC mode: container:",
        ),
    ] {
        let body = format!(r#"{{"Image":"{img}","HostConfig":{hc}}}"#);
        let (code, resp) = o
            .http("POST", "/v1.44/containers/create", Some(body.as_bytes()))
            .unwrap();
        let resp = String::from_utf8_lossy(&resp);
        assert_eq!(code, 400, "{hc}: {resp}");
        assert!(resp.contains(msg), "{hc}: {resp}");
    }
}

#[test]
fn ipc_modes() {
    let e = setup();
    let (o, img) = (&e.o, e.image.as_str());

    // The default is dockerd's default-ipc-mode, private: its own /dev/shm.
    let d = unique_name("d");
    o.docker_ok(&["create", "--name", &d, img, "true"], T);
    assert_eq!(inspect(o, &d)["HostConfig"]["IpcMode"], "private");
    o.docker_ok(&["rm", &d], T);

    // shareable: a host-side tmpfs of --shm-size while it runs.
    let a = unique_name("a");
    o.docker_ok(
        &[
            "run",
            "-d",
            "--name",
            &a,
            "--ipc",
            "shareable",
            "--shm-size",
            "8m",
            img,
            "sleep",
            "300",
        ],
        T,
    );
    let a_id = inspect(o, &a)["Id"].as_str().unwrap().to_string();
    let shm_dir = o.data_root().join("containers").join(&a_id).join("shm");
    let mi = mountinfo();
    let line = mi
        .lines()
        .find(|l| l.split_whitespace().nth(4) == Some(shm_dir.to_str().unwrap()))
        .unwrap_or_else(|| panic!("{} not mounted:\n{mi}", shm_dir.display()));
    assert!(line.contains(" - tmpfs "), "{line}");
    let df = o.docker_ok(&["exec", &a, "df", "-k", "/dev/shm"], T);
    assert!(
        df.lines()
            .nth(1)
            .is_some_and(|l| l.split_whitespace().nth(1) == Some("8192")),
        "{df}"
    );
    o.docker_ok(&["exec", &a, "sh", "-c", "echo from-a >/dev/shm/shared"], T);
    // container:<a>: a's IPC namespace and /dev/shm, both ways.
    let ns_a = o.docker_ok(&["exec", &a, "readlink", "/proc/self/ns/ipc"], T);
    let mode = format!("container:{a}");
    let b_out = o.docker_ok(
        &[
            "run",
            "--rm",
            "--ipc",
            &mode,
            img,
            "sh",
            "-c",
            "readlink /proc/self/ns/ipc; cat /dev/shm/shared; echo from-b >/dev/shm/back",
        ],
        T,
    );
    let lines: Vec<&str> = b_out.lines().collect();
    assert_eq!(lines, vec![ns_a.trim(), "from-a"], "{b_out}");
    assert_eq!(
        o.docker_ok(&["exec", &a, "cat", "/dev/shm/back"], T).trim(),
        "from-b"
    );
    // A private container has its own.
    let p_out = o.docker_ok(
        &[
            "run",
            "--rm",
            img,
            "sh",
            "-c",
            "readlink /proc/self/ns/ipc; ls /dev/shm",
        ],
        T,
    );
    assert!(
        !p_out.contains(ns_a.trim()) && !p_out.contains("shared"),
        "{p_out}"
    );

    // Errors: a private target, a stopped one; nothing is left running.
    let p = unique_name("p");
    o.docker_ok(&["run", "-d", "--name", &p, img, "sleep", "300"], T);
    let r = o.docker(
        &[
            "run",
            "--rm",
            "--ipc",
            &format!("container:{p}"),
            img,
            "true",
        ],
        T,
    );
    assert!(!r.status.success());
    assert!(err(&r).contains("non-shareable IPC"), "{}", err(&r));
    let s = unique_name("s");
    o.docker_ok(
        &["create", "--name", &s, "--ipc", "shareable", img, "true"],
        T,
    );
    let r = o.docker(
        &[
            "run",
            "--rm",
            "--ipc",
            &format!("container:{s}"),
            img,
            "true",
        ],
        T,
    );
    assert!(!r.status.success());
    assert!(
        err(&r).contains(&format!("cannot join IPC of a non running container: {s}")),
        "{}",
        err(&r)
    );

    // Exit unmounts the shareable tmpfs; a start mounts it again; rm -f
    // leaves no mount and no directory.
    o.docker_ok(&["stop", "-t", "1", &a], T);
    assert!(
        !mountinfo().contains(shm_dir.to_str().unwrap()),
        "shm still mounted after stop"
    );
    o.docker_ok(&["start", &a], T);
    assert!(mountinfo().contains(shm_dir.to_str().unwrap()));
    o.docker_ok(&["rm", "-f", &a, &p, &s], T);
    let mi = mountinfo();
    assert!(!mi.contains(&a_id), "a mount of {a_id} is left:\n{mi}");
    assert!(!shm_dir.exists());

    // host: the host's IPC namespace and /dev/shm.
    let name = format!("orca-ns-test-{}", unique_name("f"));
    let f = HostShmFile(PathBuf::from("/dev/shm").join(&name));
    std::fs::write(&f.0, "from-host\n").unwrap();
    let host_ipc = std::fs::read_link("/proc/self/ns/ipc").unwrap();
    let h_out = o.docker_ok(
        &[
            "run",
            "--rm",
            "--ipc",
            "host",
            img,
            "sh",
            "-c",
            &format!("readlink /proc/self/ns/ipc; cat /dev/shm/{name}"),
        ],
        T,
    );
    let lines: Vec<&str> = h_out.lines().collect();
    assert_eq!(
        lines,
        vec![host_ipc.to_str().unwrap(), "from-host"],
        "{h_out}"
    );
    drop(f);
    // IPC sysctls are refused in the host's IPC namespace.
    let r = o.docker(
        &[
            "run",
            "--rm",
            "--ipc",
            "host",
            "--sysctl",
            "kernel.shmmax=1000000",
            img,
            "true",
        ],
        T,
    );
    assert!(!r.status.success());
    assert!(
        err(&r).contains("not allowed in host IPC namespace"),
        "{}",
        err(&r)
    );

    // none: an IPC namespace of its own, no /dev/shm.
    let n_out = o.docker_ok(
        &[
            "run",
            "--rm",
            "--ipc",
            "none",
            img,
            "sh",
            "-c",
            "readlink /proc/self/ns/ipc; test -e /dev/shm && echo shm || echo no-shm",
        ],
        T,
    );
    let lines: Vec<&str> = n_out.lines().collect();
    assert_eq!(lines.len(), 2, "{n_out}");
    assert_ne!(lines[0], host_ipc.to_str().unwrap());
    assert_eq!(lines[1], "no-shm");
}
