//! orca-supervisor surviving its own crash with Orca's product stack below
//! it: orca-shim (`io.containerd.orca.v2`) driving orca-runtime. The
//! runc-shim version of the same scenario is in `supervisor_more.rs`.
//!
//! kill -9 of the supervisor with three orca-shim tasks: one keeps running
//! (same pid, listed, serves exec after the restart), one exits while the
//! supervisor is down (its shim keeps the exit and forwards `/tasks/exit`
//! once the supervisor is back; the task is listed STOPPED and `tasks
//! delete` reports its code), and one whose shim is SIGKILLed too (the
//! restarted supervisor runs `orca-shim delete`, which removes the orphaned
//! container, publishes its exit and drops the task).

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use orca_integration::{require_root, unique_name, wait_until, Registry, Supervisor};

const NS: &str = "test";
const ORCA: &str = "io.containerd.orca.v2";

use orca_integration::util::tail_lines as tail;

#[track_caller]
fn ctr_ok(s: &Supervisor, args: &[&str]) -> String {
    s.ctr_ok_ns(NS, args)
}

/// `ctr tasks ls` as (id, pid, status) rows.
#[track_caller]
fn tasks(s: &Supervisor) -> Vec<(String, u32, String)> {
    s.tasks_ns(NS)
}

#[track_caller]
fn task(s: &Supervisor, id: &str) -> Option<(u32, String)> {
    s.task_ns(NS, id)
}

fn containers(s: &Supervisor) -> Vec<String> {
    ctr_ok(s, &["containers", "ls", "-q"])
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect()
}

fn ppid(pid: u32) -> Option<u32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) state ppid …"; comm may contain spaces.
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn exe(pid: u32) -> Option<PathBuf> {
    fs::read_link(format!("/proc/{pid}/exe")).ok()
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
}

/// The orca-shim serving a task: the parent of its init process.
#[track_caller]
fn orca_shim_of(task_pid: u32) -> u32 {
    let shim = ppid(task_pid).expect("task has a parent");
    let bin = exe(shim).expect("shim exe");
    assert!(
        bin.file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("orca-shim")),
        "task {task_pid} is served by {} (pid {shim}), not orca-shim",
        bin.display()
    );
    shim
}

fn count(hay: &str, needle: &str) -> usize {
    hay.matches(needle).count()
}

#[test]
fn restart_with_orca_shim_keeps_tasks_and_reports_exits_from_the_downtime() {
    require_root();
    let (_reg, image) = Registry::with_busybox();
    let mut s = Supervisor::start();
    ctr_ok(&s, &["images", "pull", "--plain-http", &image]);

    let running = unique_name("os-run");
    let exits = unique_name("os-exit");
    let dies = unique_name("os-dead");
    for (id, cmd) in [
        (&running, vec!["sleep", "300"]),
        // Exits (7) once /go exists in its rootfs: created from the host
        // while the supervisor is down.
        (
            &exits,
            vec!["sh", "-c", "while [ ! -e /go ]; do sleep 0.1; done; exit 7"],
        ),
        (&dies, vec!["sleep", "300"]),
    ] {
        let mut args = vec!["run", "-d", "--runtime", ORCA, &image, id];
        args.extend(cmd);
        ctr_ok(&s, &args);
    }
    let (run_pid, st) = task(&s, &running).expect("running task listed");
    assert_eq!(st, "RUNNING");
    let run_shim = orca_shim_of(run_pid);
    let (exit_pid, _) = task(&s, &exits).expect("task listed");
    let exit_shim = orca_shim_of(exit_pid);
    let (dead_pid, _) = task(&s, &dies).expect("task listed");
    let dead_shim = orca_shim_of(dead_pid);

    // Crash: the supervisor dies, its shims and containers do not.
    s.kill9();
    let log_before = s.log().len();
    // The `exits` task ends (exit 7) while nobody listens: its shim must
    // keep the exit (state and event) for the restarted supervisor.
    assert!(alive(exit_pid), "the exiting task ended too early");
    fs::write(format!("/proc/{exit_pid}/root/go"), b"").expect("create /go in its rootfs");
    assert!(
        wait_until(Duration::from_secs(10), || !alive(exit_pid)),
        "the exiting task did not exit"
    );
    assert!(
        alive(run_pid) && alive(run_shim) && alive(exit_shim),
        "a supervisor crash must not kill containers nor shims"
    );
    // One shim is killed too while the supervisor is down.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(dead_shim as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    assert!(wait_until(Duration::from_secs(5), || !alive(dead_shim)));

    s.restart();
    // Re-attached to the live shims: same pid, still running, and listed.
    assert_eq!(
        task(&s, &running),
        Some((run_pid, "RUNNING".to_string())),
        "{}",
        tail(&s.log()[log_before..], 40)
    );
    assert!(alive(run_pid));
    assert_eq!(
        task(&s, &exits),
        Some((exit_pid, "STOPPED".to_string())),
        "a task that exited while the supervisor was down is listed STOPPED"
    );
    // The dead shim's task is gone and `orca-shim delete` removed its
    // orphaned container process.
    assert_eq!(
        task(&s, &dies),
        None,
        "{}",
        tail(&s.log()[log_before..], 40)
    );
    assert!(
        wait_until(Duration::from_secs(5), || !alive(dead_pid)),
        "orca-shim delete must remove the orphaned container"
    );
    let mut cs = containers(&s);
    cs.sort();
    let mut want = vec![running.clone(), exits.clone(), dies.clone()];
    want.sort();
    assert_eq!(cs, want, "container records survive the crash");
    // Two /tasks/exit after the restart: the dead shim's (published by the
    // supervisor's recovery) and the one the live shim kept from the
    // downtime and forwards once the ttrpc socket is back.
    assert!(
        wait_until(Duration::from_secs(10), || count(
            &s.log()[log_before..],
            "topic=/tasks/exit"
        ) >= 2),
        "expected two /tasks/exit events after the restart: {}",
        tail(&s.log()[log_before..], 60)
    );

    // The re-attached orca-shims serve every verb.
    let exec = ctr_ok(
        &s,
        &[
            "tasks",
            "exec",
            "--exec-id",
            "e1",
            &running,
            "echo",
            "after-restart",
        ],
    );
    assert_eq!(exec.trim(), "after-restart");
    let del = s.ctr_ns(NS, &["tasks", "delete", &exits]);
    let err = String::from_utf8_lossy(&del.stderr);
    assert!(
        del.status.success() && err.contains("non-zero exit code 7"),
        "tasks delete reports the exit status from the downtime: {err}"
    );
    assert!(
        wait_until(Duration::from_secs(5), || !alive(exit_shim)),
        "the shim of a deleted task exits"
    );
    ctr_ok(&s, &["tasks", "kill", "-s", "SIGKILL", &running]);
    assert!(wait_until(Duration::from_secs(10), || task(&s, &running)
        .is_some_and(|t| t.1 == "STOPPED")));
    ctr_ok(&s, &["tasks", "delete", &running]);
    assert!(wait_until(Duration::from_secs(5), || !alive(run_shim)));
    for c in [&running, &exits, &dies] {
        ctr_ok(&s, &["containers", "delete", c]);
    }
    assert!(tasks(&s).is_empty());
    let bundles: Vec<_> = fs::read_dir(s.dir().join("state/tasks").join(NS))
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(bundles.is_empty(), "bundles left behind: {bundles:?}");
}

/// A task whose create fails in the runtime (no such executable) leaves no
/// shim process behind, with either shim: the supervisor tells the shim to
/// delete and shut down, as containerd does, before it answers the error.
#[test]
fn failed_create_leaves_no_shim_running() {
    require_root();
    let (_reg, image) = Registry::with_busybox();
    let s = Supervisor::start();
    ctr_ok(&s, &["images", "pull", "--plain-http", &image]);
    for runtime in [ORCA, "io.containerd.runc.v2"] {
        let id = unique_name("os-nocmd");
        let out = s.ctr_ns(
            NS,
            &[
                "run",
                "-d",
                "--runtime",
                runtime,
                &image,
                &id,
                "no-such-command",
            ],
        );
        assert!(
            !out.status.success(),
            "{runtime}: create of a missing executable must fail"
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("no-such-command"),
            "{runtime}: error names the executable: {err}"
        );
        let shims = || {
            orca_integration::util::pids_where_args(|a| {
                a.iter().any(|x| x == &id) && a.iter().any(|x| x == "-namespace")
            })
        };
        assert!(
            wait_until(Duration::from_secs(10), || shims().is_empty()),
            "{runtime}: shim processes left after a failed create: {:?}",
            shims()
        );
        assert!(task(&s, &id).is_none(), "{runtime}: no task is listed");
        // The container record stays (ctr run -d does not remove it), and can be removed.
        ctr_ok(&s, &["containers", "rm", &id]);
    }
}
