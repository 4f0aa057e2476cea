//! The whole Orca stack, every layer ours, judged by the real docker CLI:
//! docker ──Docker API──▶ orcad ──containerd gRPC──▶ orca-supervisor ──shim v2 ttrpc──▶
//! orca-shim ──runc CLI──▶ orca-runtime.

use std::time::Duration;

use orca_integration::engine_support::Orcad;
use orca_integration::*;

const T: Duration = Duration::from_secs(60);

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The command name of a process.
fn comm(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim()
        .to_string()
}

fn ppid(pid: i32) -> i32 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("PPid:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn docker_cli_runs_containers_on_the_all_orca_stack() {
    require_root();
    let (registry, image) = Registry::with_busybox();
    let supervisor = Supervisor::start();
    let orcad = Orcad::start_with(
        &supervisor.socket(),
        &["--default-runtime", "io.containerd.orca.v2"],
    );
    let diag = || {
        format!(
            "--- orcad log ---\n{}\n--- supervisor log ---\n{}",
            orcad.log(),
            supervisor.log()
        )
    };

    let out = orcad.docker(&["pull", &image], T);
    assert!(
        out.status.success(),
        "docker pull: {}\n{}",
        text(&out.stderr),
        diag()
    );
    assert!(
        text(&out.stdout).contains("Pull complete"),
        "{}",
        text(&out.stdout)
    );

    let out = orcad.docker(
        &["run", "--rm", &image, "sh", "-c", "echo hello; exit 3"],
        T,
    );
    assert_eq!(
        text(&out.stdout),
        "hello\n",
        "{}\n{}",
        text(&out.stderr),
        diag()
    );
    assert_eq!(out.status.code(), Some(3), "exit code through every layer");

    // --init on orca-runtime: docker-init bind-mounted onto a path the image
    // lacks (/sbin), PID 1, the command's exit code passed through.
    let out = orcad.docker(
        &[
            "run",
            "--rm",
            "--init",
            &image,
            "sh",
            "-c",
            "tr '\\0' ' ' < /proc/1/cmdline; exit 4",
        ],
        T,
    );
    assert!(
        text(&out.stdout).starts_with("/sbin/docker-init -- sh -c"),
        "{}\n{}\n{}",
        text(&out.stdout),
        text(&out.stderr),
        diag()
    );
    assert_eq!(out.status.code(), Some(4));

    let name = unique_name("stack");
    let out = orcad.docker(
        &[
            "run",
            "-d",
            "--name",
            &name,
            &image,
            "sh",
            "-c",
            "echo up; sleep 100",
        ],
        T,
    );
    assert!(
        out.status.success(),
        "docker run -d: {}\n{}",
        text(&out.stderr),
        diag()
    );
    let out = orcad.docker(&["inspect", "--format", "{{.State.Pid}}", &name], T);
    let pid: i32 = text(&out.stdout).trim().parse().unwrap_or(0);
    assert!(pid > 0, "no pid: {}", text(&out.stderr));
    // The container's process is a child of our shim, not of the runc shim.
    let parent = ppid(pid);
    let parent_comm = comm(parent);
    assert!(
        parent_comm.contains("orca-shim") || parent_comm.contains("containerd-shim-o"),
        "parent of the container ({parent}) is {parent_comm:?}, not orca-shim"
    );
    // ... and orca-runtime keeps its state where orca-shim tells it to.
    let out = orcad.docker(&["ps", "--format", "{{.Names}} {{.Status}}"], T);
    assert!(
        text(&out.stdout).contains(&format!("{name} Up")),
        "{}",
        text(&out.stdout)
    );
    let ok = wait_until(Duration::from_secs(10), || {
        text(&orcad.docker(&["logs", &name], T).stdout).contains("up")
    });
    assert!(ok, "logs of {name}\n{}", diag());
    let out = orcad.docker(&["stop", "-t", "1", &name], T);
    assert!(out.status.success(), "docker stop: {}", text(&out.stderr));
    let out = orcad.docker(&["rm", &name], T);
    assert!(out.status.success(), "docker rm: {}", text(&out.stderr));
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "container process {pid} outlived docker rm"
    );
    drop(orcad);
    drop(supervisor);
    drop(registry);
}
