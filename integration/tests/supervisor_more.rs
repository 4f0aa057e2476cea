//! orca-supervisor, second slice: surviving its own crash (re-attaching to
//! running shims, cleaning up after dead ones, resumable pulls), garbage
//! collection, and Debian's dockerd 20.10 using it as its containerd.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use orca_integration::supervisor_support::registry_with_layered_busybox;
use orca_integration::{
    mounts::unmount_all_under, require_root, require_tool, sha256_digest, unique_name,
    util::std_path_env, wait_until, Registry, Supervisor,
};

const NS: &str = "test";
const RUNC: &str = "io.containerd.runc.v2";

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

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

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
}

/// Digests `ctr content ls` lists.
fn content_digests(s: &Supervisor) -> Vec<String> {
    ctr_ok(s, &["content", "ls", "-q"])
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect()
}

fn snapshot_names(s: &Supervisor) -> Vec<String> {
    ctr_ok(s, &["snapshots", "ls"])
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

fn dir_entries(p: &Path) -> Vec<PathBuf> {
    fs::read_dir(p)
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default()
}

/// Every blob listed is complete: its file exists and hashes to its digest.
#[track_caller]
fn assert_listed_blobs_complete(s: &Supervisor) {
    for d in content_digests(s) {
        let p = s
            .dir()
            .join("root/content/blobs/sha256")
            .join(d.trim_start_matches("sha256:"));
        let bytes =
            fs::read(&p).unwrap_or_else(|e| panic!("listed blob {d}: {}: {e}", p.display()));
        assert_eq!(sha256_digest(&bytes), d, "blob file of {d} is not complete");
    }
}

#[test]
fn restart_reattaches_running_tasks_and_cleans_up_dead_shims() {
    require_root();
    require_tool("containerd-shim-runc-v2");
    require_tool("runc");
    let (_reg, image) = Registry::with_busybox();
    let mut s = Supervisor::start();
    ctr_ok(&s, &["images", "pull", "--plain-http", &image]);

    let running = unique_name("rs-run");
    let exits = unique_name("rs-exit");
    let dies = unique_name("rs-dead");
    ctr_ok(
        &s,
        &[
            "run",
            "-d",
            "--runtime",
            RUNC,
            &image,
            &running,
            "sleep",
            "300",
        ],
    );
    ctr_ok(
        &s,
        &[
            "run",
            "-d",
            "--runtime",
            RUNC,
            &image,
            &exits,
            "sh",
            "-c",
            "sleep 2; exit 7",
        ],
    );
    ctr_ok(
        &s,
        &[
            "run",
            "-d",
            "--runtime",
            RUNC,
            &image,
            &dies,
            "sleep",
            "300",
        ],
    );
    let (run_pid, st) = task(&s, &running).expect("running task listed");
    assert_eq!(st, "RUNNING");
    let (dead_pid, _) = task(&s, &dies).expect("task listed");
    let dead_shim = ppid(dead_pid).expect("shim pid");

    // Crash: the supervisor dies, its shims and containers do not.
    s.kill9();
    let log_before = s.log().len();
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        alive(run_pid),
        "a supervisor crash must not kill containers"
    );
    // One shim dies too while the supervisor is down.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(dead_shim as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    assert!(wait_until(Duration::from_secs(5), || !alive(dead_shim)));

    s.restart();
    let after = s.log()[log_before..].to_string();
    assert_eq!(
        task(&s, &running),
        Some((run_pid, "RUNNING".to_string())),
        "{}",
        tail(&after, 40)
    );
    assert!(alive(run_pid));
    // Exited while we were down: its shim reports it STOPPED, with its status.
    assert_eq!(task(&s, &exits).map(|t| t.1), Some("STOPPED".to_string()));
    // The dead shim's task is cleaned up (`shim delete` force-deletes the
    // orphaned container) and its exit published.
    assert_eq!(task(&s, &dies), None, "{}", tail(&after, 40));
    assert!(
        wait_until(Duration::from_secs(5), || !alive(dead_pid)),
        "shim delete must remove the orphaned container"
    );
    assert!(
        after.contains("topic=/tasks/exit"),
        "no /tasks/exit published for the dead shim: {}",
        tail(&after, 40)
    );

    // The re-attached shims serve every verb.
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
        "tasks delete reports the exit status: {err}"
    );
    ctr_ok(&s, &["tasks", "kill", "-s", "SIGKILL", &running]);
    assert!(wait_until(Duration::from_secs(10), || task(&s, &running)
        .is_some_and(|t| t.1 == "STOPPED")));
    ctr_ok(&s, &["tasks", "delete", &running]);
    for c in [&running, &exits, &dies] {
        ctr_ok(&s, &["containers", "delete", c]);
    }
    assert!(tasks(&s).is_empty());
    assert!(
        dir_entries(&s.dir().join("state/tasks").join(NS)).is_empty(),
        "bundles left behind"
    );
}

/// A pull killed with the supervisor in the middle of a 32 MiB layer:
/// nothing half-written is visible as content, the retried pull completes,
/// and the blobs the crashed pull's lease holds survive `images rm --sync`
/// until that lease is deleted.
#[test]
fn crashed_pull_is_retried_and_leases_hold_content_until_deleted() {
    require_root();
    require_tool("containerd-shim-runc-v2");
    const BIG: usize = 32 << 20;
    let (_reg, image, info) = registry_with_layered_busybox("big", &[("big.bin", BIG)]);
    let big_layer = info.layer_digests.last().unwrap().clone();

    let mut s = Supervisor::start();
    let ingest_dir = s.dir().join("root/content/ingest");
    let mut pull = s.ctr_cmd_ns(NS);
    pull.args(["images", "pull", "--plain-http", &image])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut child = pull.spawn().unwrap();
    // Kill the supervisor once the big layer is partly ingested.
    let mut partial = 0u64;
    let caught = wait_until(Duration::from_secs(60), || {
        for d in dir_entries(&ingest_dir) {
            let n = fs::metadata(d.join("data")).map(|m| m.len()).unwrap_or(0);
            if n > (1 << 20) && n < BIG as u64 {
                partial = n;
                return true;
            }
        }
        matches!(child.try_wait(), Ok(Some(_)))
    });
    s.kill9();
    let pull_status = child.wait().unwrap();
    assert!(
        caught && partial > 0,
        "the pull finished before the supervisor could be killed mid-layer ({pull_status})"
    );
    assert!(
        !pull_status.success(),
        "the pull cannot succeed without its supervisor"
    );

    s.restart();
    // Only complete blobs are content; the partial layer is an ingest.
    let listed = content_digests(&s);
    assert!(!listed.contains(&big_layer), "{listed:?}");
    assert!(listed.contains(&info.manifest_digest), "{listed:?}");
    assert_listed_blobs_complete(&s);
    let active = ctr_ok(&s, &["content", "active"]);
    assert!(
        active.contains(big_layer.trim_start_matches("sha256:")),
        "{active}"
    );

    // Retry: resumes or restarts the ingest, completes, unpacks.
    ctr_ok(&s, &["images", "pull", "--plain-http", &image]);
    assert!(ctr_ok(&s, &["images", "check"]).contains("complete"));
    assert!(content_digests(&s).contains(&big_layer));
    assert_listed_blobs_complete(&s);
    assert!(
        dir_entries(&ingest_dir).is_empty(),
        "ingest left after a complete pull"
    );
    let id = unique_name("big");
    let size = ctr_ok(
        &s,
        &[
            "run",
            "--rm",
            "--runtime",
            RUNC,
            &image,
            &id,
            "stat",
            "-c",
            "%s",
            "/big.bin",
        ],
    );
    assert_eq!(size.trim(), BIG.to_string());

    // The crashed pull's lease (24 h expiry) still holds what it committed.
    let leases: Vec<String> = ctr_ok(&s, &["leases", "ls", "-q"])
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect();
    assert_eq!(leases.len(), 1, "the crashed pull's lease: {leases:?}");
    ctr_ok(&s, &["images", "rm", "--sync", &image]);
    // The lease holds the manifest, whose gc.ref labels (set by the retried
    // pull) keep the config, the layers and the unpacked snapshots.
    let left = content_digests(&s);
    assert!(
        left.contains(&info.manifest_digest)
            && left.contains(&info.config_digest)
            && left.contains(&big_layer),
        "the leased manifest and what it references stay: {left:?}"
    );
    assert_eq!(snapshot_names(&s).len(), 2, "{:?}", snapshot_names(&s));
    ctr_ok(&s, &["leases", "rm", "--sync", &leases[0]]);
    assert!(content_digests(&s).is_empty(), "{:?}", content_digests(&s));
    assert!(snapshot_names(&s).is_empty(), "{:?}", snapshot_names(&s));
    for sub in [
        "root/content/blobs/sha256",
        "root/content/ingest",
        "root/snapshots",
    ] {
        assert!(
            dir_entries(&s.dir().join(sub)).is_empty(),
            "{sub} not empty: {:?}",
            dir_entries(&s.dir().join(sub))
        );
    }
}

#[test]
fn images_rm_collects_content_and_snapshots_not_used_by_containers() {
    require_root();
    let (_reg, image) = Registry::with_busybox();
    let s = Supervisor::start();
    ctr_ok(&s, &["images", "pull", "--plain-http", &image]);
    assert!(content_digests(&s).len() >= 3);
    ctr_ok(&s, &["images", "rm", "--sync", &image]);
    assert!(content_digests(&s).is_empty(), "{:?}", content_digests(&s));
    assert!(snapshot_names(&s).is_empty(), "{:?}", snapshot_names(&s));

    // Asynchronous collection, and a container keeping its snapshot chain.
    ctr_ok(&s, &["images", "pull", "--plain-http", &image]);
    let id = unique_name("gc-keep");
    ctr_ok(
        &s,
        &[
            "containers",
            "create",
            "--runtime",
            RUNC,
            &image,
            &id,
            "true",
        ],
    );
    ctr_ok(&s, &["images", "rm", &image]);
    assert!(
        wait_until(Duration::from_secs(10), || content_digests(&s).is_empty()),
        "content not collected after images rm: {:?}",
        content_digests(&s)
    );
    let snaps = snapshot_names(&s);
    assert!(
        snaps.contains(&id) && snaps.len() == 2,
        "the container's snapshot and its parent stay: {snaps:?}"
    );
    ctr_ok(&s, &["containers", "delete", &id]);
    assert!(
        wait_until(Duration::from_secs(10), || snapshot_names(&s).is_empty()),
        "{:?}",
        snapshot_names(&s)
    );
    // Directories go right after their records.
    for sub in ["root/snapshots", "root/content/blobs/sha256"] {
        assert!(
            wait_until(Duration::from_secs(5), || dir_entries(&s.dir().join(sub))
                .is_empty()),
            "{sub}: {:?}",
            dir_entries(&s.dir().join(sub))
        );
    }
}

/// Debian's dockerd 20.10 with `--containerd` pointing at orca-supervisor.
struct Dockerd {
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl Dockerd {
    #[track_caller]
    fn start(containerd: &Path) -> Dockerd {
        let bin = require_tool("dockerd");
        require_tool("iptables");
        let dir = tempfile::Builder::new()
            .prefix("orca-dockerd-")
            .tempdir()
            .unwrap();
        let t = dir.path();
        let log = fs::File::create(t.join("dockerd.log")).unwrap();
        let child = Command::new(bin)
            .arg("--containerd")
            .arg(containerd)
            .arg("--data-root")
            .arg(t.join("d"))
            .arg("--exec-root")
            .arg(t.join("x"))
            .arg("-H")
            .arg(format!("unix://{}", t.join("d.sock").display()))
            .arg("--pidfile")
            .arg(t.join("d.pid"))
            // No docker0 bridge nor host firewall rules from a test daemon.
            .args(["--bridge=none", "--iptables=false", "--debug"])
            .env("PATH", std_path_env())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut d = Dockerd {
            child: Some(child),
            dir,
        };
        let ready = wait_until(Duration::from_secs(60), || {
            if let Some(Ok(Some(_))) = d.child.as_mut().map(|c| c.try_wait()) {
                return true;
            }
            d.docker(&["version"]).status.success()
        });
        assert!(
            ready && matches!(d.child.as_mut().map(|c| c.try_wait()), Some(Ok(None))),
            "dockerd did not start: {}",
            tail(&d.log(), 40)
        );
        d
    }

    fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("dockerd.log")).unwrap_or_default()
    }

    /// The real docker CLI 28 (/usr/local/bin/docker) against this daemon.
    fn docker(&self, args: &[&str]) -> std::process::Output {
        let mut c = Command::new("/usr/local/bin/docker");
        c.args(args)
            .env(
                "DOCKER_HOST",
                format!("unix://{}", self.dir.path().join("d.sock").display()),
            )
            .env("DOCKER_CONFIG", self.dir.path().join("cli"))
            .stdin(Stdio::null());
        orca_integration::output_via_files(&mut c).unwrap()
    }

    #[track_caller]
    fn docker_ok(&self, s: &Supervisor, args: &[&str]) -> String {
        let out = self.docker(args);
        if !out.status.success() {
            panic!(
                "docker {args:?} failed: {}\n--- stderr ---\n{}\n--- dockerd log ---\n{}\n--- supervisor log ---\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr),
                tail(&self.log(), 40),
                tail(&s.log(), 40)
            );
        }
        stdout(&out)
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            orca_integration::util::terminate(&mut c, Duration::from_secs(20));
        }
        let _ = unmount_all_under(self.dir.path());
    }
}

#[test]
fn dockerd_20_10_runs_containers_through_orca_supervisor() {
    require_root();
    require_tool("containerd-shim-runc-v2");
    assert!(
        Path::new("/usr/local/bin/docker").exists(),
        "the docker CLI 28 is expected at /usr/local/bin/docker"
    );
    let reg = Registry::start();
    let layout = tempfile::tempdir().unwrap();
    orca_integration::write_busybox_oci_layout(layout.path(), "latest").unwrap();
    reg.push_oci_layout(layout.path(), "latest", "library/busybox:latest");
    let image = format!("{}/library/busybox", reg.addr());

    let mut s = Supervisor::start();
    let d = Dockerd::start(&s.socket());
    d.docker_ok(&s, &["pull", &image]);
    let out = d.docker_ok(&s, &["run", "--rm", &image, "echo", "hi"]);
    assert_eq!(out.trim(), "hi");
    let code = d.docker(&["run", "--rm", &image, "sh", "-c", "exit 3"]);
    assert_eq!(code.status.code(), Some(3));

    let id = d.docker_ok(&s, &["run", "-d", &image, "sleep", "100"]);
    let id = id.trim().to_string();
    assert!(d.docker_ok(&s, &["ps", "-q", "--no-trunc"]).contains(&id));
    // The task lives in orca-supervisor, in dockerd's namespace.
    let ls = stdout(&s.ctr_ns("moby", &["tasks", "ls"]));
    assert!(ls.contains(&id) && ls.contains("RUNNING"), "{ls}");
    // dockerd's containerd crashes and comes back: the container keeps
    // running and dockerd drives it through the re-attached shim.
    s.restart();
    let ls = stdout(&s.ctr_ns("moby", &["tasks", "ls"]));
    assert!(ls.contains(&id) && ls.contains("RUNNING"), "{ls}");
    assert!(
        wait_until(Duration::from_secs(30), || d
            .docker(&["stop", "-t", "1", &id])
            .status
            .success()),
        "docker stop after a supervisor restart: {}",
        tail(&d.log(), 30)
    );
    let ps = d.docker_ok(&s, &["ps", "-a", "--filter", &format!("id={id}")]);
    assert!(ps.contains("Exited (137)"), "{ps}");
    d.docker_ok(&s, &["rm", &id]);
    assert!(stdout(&s.ctr_ns("moby", &["tasks", "ls", "-q"]))
        .trim()
        .is_empty());
    assert!(stdout(&s.ctr_ns("moby", &["containers", "ls", "-q"]))
        .trim()
        .is_empty());
    assert!(
        !d.log().contains("Unimplemented"),
        "dockerd hit an unimplemented RPC: {}",
        d.log()
            .lines()
            .filter(|l| l.contains("Unimplemented"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}
