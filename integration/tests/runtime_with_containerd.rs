//! Debian's containerd 1.6 with its real `containerd-shim-runc-v2` driving orca-runtime as its
//! runc (`ctr run --runc-binary …`): run/exit codes, terminals, a detached task's whole life
//! (exec, ps, pause/resume, metrics, kill, delete) and the error path through
//! `--log-format json`. Runs as root.
//!
//! Set `ORCA_CTRD_RUNC_BINARY=/usr/sbin/runc` to run the same tests against runc itself (or
//! against an argv-logging wrapper script when debugging).

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use orca_integration::*;

/// The runtime binary handed to the shim with `--runc-binary`.
fn runc_binary() -> PathBuf {
    match std::env::var_os("ORCA_CTRD_RUNC_BINARY") {
        Some(p) => PathBuf::from(p),
        None => bin_path("orca-runtime"),
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A containerd with the busybox image pulled, running containers with our runtime as runc.
struct Env {
    base: CtrEnv,
    runc: PathBuf,
}

impl std::ops::Deref for Env {
    type Target = CtrEnv;
    fn deref(&self) -> &CtrEnv {
        &self.base
    }
}

impl Env {
    #[track_caller]
    fn start() -> Env {
        let runc = runc_binary();
        Env {
            base: CtrEnv::start(),
            runc,
        }
    }

    /// `ctr run --runc-binary RUNTIME [flags] IMAGE ID ARGS…`.
    #[track_caller]
    fn ctr_run(&self, flags: &[&str], id: &str, args: &[&str]) -> Output {
        let mut c = self.ctr_cmd();
        c.arg("run").arg("--runc-binary").arg(&self.runc);
        c.args(flags).arg(&self.image).arg(id).args(args);
        self.output(&mut c)
    }
}

/// Nothing of container `id` left in the shim's runc root, nor in any cgroup hierarchy.
#[track_caller]
fn assert_no_leftovers(env: &Env, id: &str) {
    let state = Path::new("/run/containerd/runc")
        .join(TEST_NAMESPACE)
        .join(id);
    assert!(
        !state.exists(),
        "runtime state {} left behind\n{}",
        state.display(),
        env.diagnostics()
    );
    let cg = format!("/{TEST_NAMESPACE}/{id}");
    let mut left = Vec::new();
    wait_until(Duration::from_secs(5), || {
        left = cgroup_leftovers(&cg);
        left.is_empty()
    });
    assert!(left.is_empty(), "cgroups left behind: {left:?}");
}

#[test]
fn ctr_run_prints_output_and_returns_the_exit_code() {
    let env = Env::start();
    let id = unique_name("ctrd-echo");
    let out = env.ctr_run(&["--rm"], &id, &["echo", "hi"]);
    env.check(&out, "ctr run --rm echo hi");
    assert_eq!(text(&out.stdout), "hi\n", "stderr: {}", text(&out.stderr));
    assert_no_leftovers(&env, &id);

    let id = unique_name("ctrd-exit");
    let out = env.ctr_run(
        &["--rm"],
        &id,
        &["sh", "-c", "echo out; echo err >&2; exit 3"],
    );
    assert_eq!(
        out.status.code(),
        Some(3),
        "ctr run sh -c 'exit 3': {}\nstdout: {}\nstderr: {}\n{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr),
        env.diagnostics()
    );
    assert_eq!(text(&out.stdout), "out\n");
    assert!(text(&out.stderr).contains("err\n"), "{}", text(&out.stderr));
    assert_no_leftovers(&env, &id);
}

#[test]
fn ctr_run_with_a_terminal_gets_a_pty() {
    let env = Env::start();
    let id = unique_name("ctrd-tty");
    let mut c = env.ctr_cmd();
    c.arg("run")
        .arg("--runc-binary")
        .arg(&env.runc)
        .args(["-t", "--rm"])
        .arg(&env.image)
        .arg(&id)
        .args([
            "sh",
            "-c",
            "tty; [ -t 0 ] && [ -t 1 ] && echo both-ttys; exit 5",
        ]);
    let (status, out) = run_in_pty(&mut c, Duration::from_secs(60));
    assert!(
        out.contains("/dev/pts/"),
        "ctr run -t: no /dev/pts/ in the output ({status}):\n{out}\n{}",
        env.diagnostics()
    );
    assert!(out.contains("both-ttys"), "stdin/stdout not a tty:\n{out}");
    assert_eq!(
        status.code(),
        Some(5),
        "ctr run -t exit code; output:\n{out}"
    );
    assert_no_leftovers(&env, &id);
}

#[test]
fn ctr_detached_task_lifecycle() {
    let env = Env::start();
    let id = unique_name("ctrd-life");
    let out = env.ctr_run(&["-d"], &id, &["sleep", "1000"]);
    env.check(&out, "ctr run -d sleep 1000");
    env.wait_status(&id, "RUNNING");
    // What the leak checks at the end look for exists while the task runs.
    let state_dir = Path::new("/run/containerd/runc")
        .join(TEST_NAMESPACE)
        .join(&id);
    assert!(
        state_dir.join("state.json").is_file(),
        "no {}",
        state_dir.display()
    );
    let cgroups = cgroup_leftovers(&format!("/{TEST_NAMESPACE}/{id}"));
    assert!(
        cgroups
            .iter()
            .any(|p| p.starts_with("/sys/fs/cgroup/memory")),
        "the task has no memory cgroup: {cgroups:?}"
    );

    // exec without a terminal
    let out = env.ctr(&["task", "exec", "--exec-id", "e1", &id, "echo", "from-exec"]);
    env.check(&out, "ctr task exec echo from-exec");
    assert_eq!(text(&out.stdout), "from-exec\n");

    // an exec's exit code comes back too
    let out = env.ctr(&["task", "exec", "--exec-id", "e2", &id, "sh", "-c", "exit 7"]);
    assert_eq!(
        out.status.code(),
        Some(7),
        "exec exit code: {}\n{}",
        text(&out.stderr),
        env.diagnostics()
    );

    // exec with a terminal
    let mut c = env.ctr_cmd();
    c.args(["task", "exec", "-t", "--exec-id", "e3", &id, "tty"]);
    let (status, out) = run_in_pty(&mut c, Duration::from_secs(60));
    assert!(
        status.success() && out.contains("/dev/pts/"),
        "ctr task exec -t tty ({status}):\n{out}\n{}",
        env.diagnostics()
    );

    // ps: the init (sleep) and nothing else once the execs are gone
    let out = env.ctr(&["task", "ps", &id]);
    env.check(&out, "ctr task ps");
    let pids: Vec<u32> = text(&out.stdout)
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .collect();
    assert!(
        !pids.is_empty(),
        "ctr task ps listed no pids:\n{}",
        text(&out.stdout)
    );
    let init_pid = {
        let out = env.ctr(&["task", "ls"]);
        text(&out.stdout)
            .lines()
            .find_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.first() == Some(&id.as_str())).then(|| f.get(1)?.parse::<u32>().ok())?
            })
            .expect("task ls shows the pid")
    };
    assert!(
        pids.contains(&init_pid),
        "ps {pids:?} lacks the init {init_pid}"
    );
    let comm = std::fs::read_to_string(format!("/proc/{init_pid}/comm")).unwrap_or_default();
    assert_eq!(comm.trim(), "sleep");

    // pause / resume
    let out = env.ctr(&["task", "pause", &id]);
    env.check(&out, "ctr task pause");
    env.wait_status(&id, "PAUSED");
    let out = env.ctr(&["task", "resume", &id]);
    env.check(&out, "ctr task resume");
    env.wait_status(&id, "RUNNING");

    // metrics (cgroup v1: the shim reads the container's cgroups)
    let out = env.ctr(&["task", "metrics", &id]);
    env.check(&out, "ctr task metrics");
    let m = text(&out.stdout);
    assert!(
        m.contains("memory.usage_in_bytes") && m.contains("pids.current"),
        "ctr task metrics:\n{m}"
    );

    // kill, delete
    let out = env.ctr(&["task", "kill", "-s", "SIGKILL", &id]);
    env.check(&out, "ctr task kill -s SIGKILL");
    env.wait_status(&id, "STOPPED");
    let out = env.ctr(&["task", "delete", &id]);
    env.check(&out, "ctr task delete");
    let out = env.ctr(&["container", "delete", &id]);
    env.check(&out, "ctr container delete");
    assert!(env.task_status(&id).is_none());
    assert_no_leftovers(&env, &id);
}

#[test]
fn ctr_run_reports_the_runtime_error() {
    let env = Env::start();
    let id = unique_name("ctrd-nobin");
    let out = env.ctr_run(&["--rm"], &id, &["no-such-binary"]);
    assert!(
        !out.status.success(),
        "ctr run no-such-binary succeeded:\n{}",
        text(&out.stdout)
    );
    let err = text(&out.stderr);
    assert!(
        err.contains("executable file not found"),
        "ctr's error does not carry the runtime's message:\n{err}\n{}",
        env.diagnostics()
    );
    // `--rm` removed the container; a failed create leaves nothing behind in the runtime.
    let out = env.ctr(&["container", "ls", "-q"]);
    assert!(!text(&out.stdout).contains(&id), "{}", text(&out.stdout));
    assert_no_leftovers(&env, &id);
}

#[test]
fn ctr_run_creates_a_missing_working_directory() {
    // As runc: a process cwd that does not exist in the image is created (docker's WORKDIR
    // and `ctr run --cwd` rely on it).
    let env = Env::start();
    let id = unique_name("ctrd-cwd");
    let out = env.ctr_run(
        &["--rm", "--read-only", "--cwd", "/new/work/dir"],
        &id,
        &["sh", "-c", "pwd; ls -ld . | cut -c1-10"],
    );
    env.check(&out, "ctr run --cwd /new/work/dir pwd");
    assert_eq!(text(&out.stdout), "/new/work/dir\ndrwxr-xr-x\n");
    assert_no_leftovers(&env, &id);
}
