//! orca-shim under Debian's containerd 1.6: `ctr run --runtime io.containerd.orca.v2` with
//! orca-runtime and with real runc (BinaryName), a detached task's whole life (exec with and
//! without a tty, ps, pause/resume, metrics, kill, delete), a containerd restart while a
//! container runs (and exits), and create/start/delete churn leaving nothing behind.
//! Runs as root.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use orca_integration::*;

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A containerd with the busybox image pulled that finds our shim in its PATH.
struct Env {
    base: CtrEnv,
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
        use_orca_shim();
        bin_path("orca-runtime");
        Env {
            base: CtrEnv::start(),
        }
    }

    /// `ctr run --runtime io.containerd.orca.v2 [flags] IMAGE ID ARGS…`.
    #[track_caller]
    fn ctr_run(&self, flags: &[&str], id: &str, args: &[&str]) -> Output {
        let mut c = self.ctr_cmd();
        c.args(["run", "--runtime", ORCA_RUNTIME_NAME]);
        c.args(flags).arg(&self.image).arg(id).args(args);
        self.output(&mut c)
    }

    /// No shim of ours left, nothing mounted under containerd's dirs.
    #[track_caller]
    fn assert_no_shims_or_mounts(&self) {
        let mut left = Vec::new();
        wait_until(Duration::from_secs(10), || {
            left = orca_shim_pids(&self.ctrd.socket());
            left.is_empty()
        });
        assert!(
            left.is_empty(),
            "orca shims left behind: {left:?}\n{}",
            self.diagnostics()
        );
        let m = mounts_under(self.ctrd.dir());
        assert!(m.is_empty(), "mounts left behind: {m:?}");
    }
}

fn as_refs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// Runs, terminal, a detached task's whole life. With `runc`, the shim is told
/// `BinaryName = runc` through `--runtime-config-path` (ctr 1.6 refuses `--runc-binary` for
/// any runtime but io.containerd.runc.v2; this sends `runtimeoptions.v1.Options` naming a
/// TOML file with runc's option keys, as CRI does).
fn whole_life(env: &Env, runc: Option<&Path>) {
    let mut flags: Vec<String> = Vec::new();
    if let Some(r) = runc {
        let cfg = env.ctrd.dir().join("orca-shim-runc.toml");
        std::fs::write(&cfg, format!("BinaryName = \"{}\"\n", r.display()))
            .expect("write runtime config");
        flags.push("--runtime-config-path".into());
        flags.push(cfg.display().to_string());
    }
    let fl = |extra: &[&str]| -> Vec<String> {
        let mut v = flags.clone();
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };

    // Output and exit code.
    let id = unique_name("shim-run");
    let f = fl(&["--rm"]);
    let out = env.ctr_run(
        &as_refs(&f),
        &id,
        &[
            "sh",
            "-c",
            "echo hello from orca-shim; echo err >&2; exit 3",
        ],
    );
    assert_eq!(
        out.status.code(),
        Some(3),
        "exit code; stdout {:?} stderr {:?}\n{}",
        text(&out.stdout),
        text(&out.stderr),
        env.diagnostics()
    );
    assert!(
        text(&out.stdout).contains("hello from orca-shim"),
        "stdout: {:?}",
        text(&out.stdout)
    );
    assert!(
        text(&out.stderr).contains("err"),
        "stderr: {:?}",
        text(&out.stderr)
    );

    // A terminal.
    let id = unique_name("shim-tty");
    let mut c = env.ctr_cmd();
    c.args(["run", "--runtime", ORCA_RUNTIME_NAME]);
    c.args(as_refs(&fl(&["-t", "--rm"])));
    c.arg(&env.image).arg(&id).args(["sh", "-c", "tty; exit 5"]);
    let (status, out) = run_in_pty(&mut c, Duration::from_secs(60));
    assert_eq!(
        status.code(),
        Some(5),
        "tty run: {out}\n{}",
        env.diagnostics()
    );
    assert!(out.contains("/dev/pts/"), "tty output: {out:?}");

    // Detached: exec, ps, pause/resume, metrics, kill, delete.
    let id = unique_name("shim-life");
    let out = env.ctr_run(&as_refs(&fl(&["-d"])), &id, &["sleep", "1000"]);
    env.check(&out, "ctr run -d");
    env.wait_status(&id, "RUNNING");
    if let Some(r) = runc {
        let name = r
            .file_name()
            .expect("runc file name")
            .to_string_lossy()
            .into_owned();
        let state = Path::new("/run/containerd/orca")
            .join(name)
            .join(TEST_NAMESPACE)
            .join(&id);
        assert!(
            state.exists(),
            "{} has no state for {id} at {}",
            r.display(),
            state.display()
        );
    }
    let out = env.ctr(&[
        "task",
        "exec",
        "--exec-id",
        "e1",
        &id,
        "sh",
        "-c",
        "echo exec-out; exit 4",
    ]);
    assert_eq!(
        out.status.code(),
        Some(4),
        "exec: {:?} {:?}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert!(text(&out.stdout).contains("exec-out"));
    let mut c = env.ctr_cmd();
    c.args(["task", "exec", "-t", "--exec-id", "e2", &id, "tty"]);
    let (status, out) = run_in_pty(&mut c, Duration::from_secs(60));
    assert!(status.success(), "exec -t: {out}\n{}", env.diagnostics());
    assert!(out.contains("/dev/pts/"), "exec -t output: {out:?}");
    let out = env.ctr(&["task", "ps", &id]);
    env.check(&out, "ctr task ps");
    let pid = env.task_pid(&id).expect("task pid");
    assert!(
        text(&out.stdout).contains(&pid.to_string()),
        "ps: {}",
        text(&out.stdout)
    );
    let out = env.ctr(&["task", "pause", &id]);
    env.check(&out, "ctr task pause");
    env.wait_status(&id, "PAUSED");
    let out = env.ctr(&["task", "resume", &id]);
    env.check(&out, "ctr task resume");
    env.wait_status(&id, "RUNNING");
    let out = env.ctr(&["task", "metrics", &id]);
    env.check(&out, "ctr task metrics");
    assert!(
        text(&out.stdout).contains("memory"),
        "metrics: {}",
        text(&out.stdout)
    );
    let out = env.ctr(&["task", "kill", "-s", "SIGKILL", &id]);
    env.check(&out, "ctr task kill");
    env.wait_status(&id, "STOPPED");
    let out = env.ctr(&["task", "delete", &id]);
    env.check(&out, "ctr task delete");
    assert!(
        text(&out.stderr).contains("exit code 137"),
        "task delete reports the exit code: {}",
        text(&out.stderr)
    );
    let out = env.ctr(&["container", "delete", &id]);
    env.check(&out, "ctr container delete");
    env.assert_no_shims_or_mounts();
}

#[test]
fn ctr_runs_busybox_with_orca_shim_and_orca_runtime() {
    let env = Env::start();
    whole_life(&env, None);
}

#[test]
fn ctr_runs_busybox_with_orca_shim_and_real_runc() {
    let runc = require_tool("runc");
    let env = Env::start();
    whole_life(&env, Some(&runc));
}

/// The rootfs of a task as containerd lays it out.
fn task_rootfs(env: &Env, id: &str) -> PathBuf {
    env.ctrd
        .dir()
        .join("state/io.containerd.runtime.v2.task")
        .join(TEST_NAMESPACE)
        .join(id)
        .join("rootfs")
}

#[test]
fn containers_survive_a_containerd_restart_and_exits_are_reported() {
    let env = Env::start();
    let a = unique_name("shim-keep");
    let b = unique_name("shim-exit");
    env.check(
        &env.ctr_run(&["-d"], &a, &["sleep", "1000"]),
        "ctr run -d a",
    );
    env.check(
        &env.ctr_run(
            &["-d"],
            &b,
            &[
                "sh",
                "-c",
                "while [ ! -e /tmp/go ]; do sleep 0.1; done; exit 7",
            ],
        ),
        "ctr run -d b",
    );
    env.wait_status(&a, "RUNNING");
    env.wait_status(&b, "RUNNING");
    let pid_a = env.task_pid(&a).expect("pid of a");
    kill_containerd(&env.ctrd);
    // While containerd is down: a keeps running, b exits with 7.
    std::fs::write(task_rootfs(&env, &b).join("tmp/go"), b"").expect("trigger b's exit");
    std::thread::sleep(Duration::from_millis(800));
    assert!(
        Path::new(&format!("/proc/{pid_a}")).exists(),
        "container a died with containerd"
    );
    let restarted = restart_containerd(&env.ctrd);
    env.wait_status(&a, "RUNNING");
    env.wait_status(&b, "STOPPED");
    let out = env.ctr(&["task", "delete", &b]);
    env.check(&out, "ctr task delete b");
    assert!(
        text(&out.stderr).contains("exit code 7"),
        "b's exit code (7) while containerd was down: {}\n{}",
        text(&out.stderr),
        env.diagnostics()
    );
    env.check(&env.ctr(&["task", "kill", "-s", "SIGKILL", &a]), "kill a");
    env.wait_status(&a, "STOPPED");
    let out = env.ctr(&["task", "delete", &a]);
    env.check(&out, "ctr task delete a");
    assert!(
        text(&out.stderr).contains("exit code 137"),
        "{}",
        text(&out.stderr)
    );
    for id in [&a, &b] {
        env.check(
            &env.ctr(&["container", "delete", id]),
            "ctr container delete",
        );
    }
    env.assert_no_shims_or_mounts();
    drop(restarted);
}

/// Cycles of `ctr run --rm … true`.
const CHURN_CYCLES: usize = 200;

#[test]
fn churn_leaves_no_shim_mount_cgroup_or_fifo_behind() {
    let env = Env::start();
    // ctr's own FIFO directory for these runs (the default one is shared with every other
    // test running at the same time).
    let fifo_tmp = tempfile::tempdir().expect("fifo dir");
    let fifo_dir = fifo_tmp.path();
    let fifo_arg = fifo_dir.to_str().expect("utf-8 path");
    let start = Instant::now();
    let mut ids = Vec::new();
    for i in 0..CHURN_CYCLES {
        let id = unique_name(&format!("churn{i}"));
        let out = env.ctr_run(&["--rm", "--fifo-dir", fifo_arg], &id, &["true"]);
        env.check(&out, &format!("churn cycle {i}"));
        ids.push(id);
    }
    eprintln!("{CHURN_CYCLES} cycles in {:?}", start.elapsed());
    env.assert_no_shims_or_mounts();
    for id in &ids {
        let cg = format!("/{TEST_NAMESPACE}/{id}");
        let left = cgroup_leftovers(&cg);
        assert!(left.is_empty(), "cgroups left behind: {left:?}");
        let state = Path::new("/run/containerd/orca/orca-runtime")
            .join(TEST_NAMESPACE)
            .join(id);
        assert!(
            !state.exists(),
            "runtime state {} left behind",
            state.display()
        );
    }
    let fifos_left: Vec<_> = std::fs::read_dir(fifo_dir)
        .expect("read fifo dir")
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(
        fifos_left.is_empty(),
        "FIFOs left in {}: {fifos_left:?}",
        fifo_dir.display()
    );
    let out = env.ctr(&["task", "ls", "-q"]);
    assert!(
        text(&out.stdout).trim().is_empty(),
        "tasks left: {}",
        text(&out.stdout)
    );
}
