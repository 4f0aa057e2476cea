//! orcad's daemon-level lifecycle, judged by the real docker CLI (28.x) and
//! Debian's docker-compose 1.29: the event stream, restart policies,
//! json-file log rotation, daemon.json + flags with a managed
//! orca-supervisor, live restore, and compose's network records.

use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use orca_integration::engine_support::{http_unix, run_with_limit, text, Orcad, DOCKER_CLI};
use orca_integration::{
    bin_path, cgroup_leftovers, require_root, require_tool, unique_name, wait_until, Containerd,
    Registry,
};
use serde_json::Value;

const T: Duration = Duration::from_secs(120);

fn out(o: &Output) -> String {
    text(&o.stdout)
}

fn err(o: &Output) -> String {
    text(&o.stderr)
}

/// "SECONDS.NANOS" as the docker CLI sends it.
fn unix_now() -> String {
    let d = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    format!("{}.{:09}", d.as_secs(), d.subsec_nanos())
}

use orca_integration::util::tail_lines as tail;

/// `docker ARGS…` on `d` (time limit [`T`]).
#[track_caller]
fn docker(d: &Orcad, args: &[&str]) -> Output {
    d.docker(args, T)
}

/// `docker ARGS…` on `d` that must succeed; its stdout.
#[track_caller]
fn docker_ok(d: &Orcad, args: &[&str]) -> String {
    d.docker_ok(args, T)
}

/// `docker run FLAGS… IMAGE sh -c SCRIPT` on `d`.
#[track_caller]
fn run_sh(d: &Orcad, flags: &[&str], image: &str, script: &str) -> Output {
    let mut args = vec!["run"];
    args.extend_from_slice(flags);
    args.extend_from_slice(&[image, "sh", "-c", script]);
    docker(d, &args)
}

/// [`run_sh`] that must succeed; its stdout.
#[track_caller]
fn run_sh_ok(d: &Orcad, flags: &[&str], image: &str, script: &str) -> String {
    let o = run_sh(d, flags, image, script);
    orca_integration::assert_success(
        &o,
        &format!("docker run {flags:?} {image} sh -c {script:?}"),
    );
    out(&o)
}

/// `docker inspect NAME` on `d`.
#[track_caller]
fn inspect(d: &Orcad, name: &str) -> Value {
    serde_json::from_str::<Value>(&docker_ok(d, &["inspect", name])).unwrap()[0].clone()
}

/// Events printed by `docker events --format '{{json .}}'`.
fn parse_events(s: &str) -> Vec<Value> {
    s.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad event line {l:?}: {e}")))
        .collect()
}

#[test]
fn events_since_until_filters_and_streaming() {
    require_root();
    require_tool(DOCKER_CLI);
    let c = Containerd::start();
    let d = Orcad::start_with(&c.socket(), &[]);
    let (_reg, image) = Registry::with_busybox();
    let since = unix_now();
    docker_ok(&d, &["pull", &image]);
    let a = unique_name("ev-a");
    let o = run_sh(
        &d,
        &["--name", &a, "--label", "team=blue"],
        &image,
        "exit 3",
    );
    assert_eq!(o.status.code(), Some(3), "{}", err(&o));
    docker_ok(&d, &["tag", &image, "orca-ev-tag:v1"]);
    docker_ok(&d, &["rmi", "orca-ev-tag:v1"]);
    docker_ok(&d, &["rm", &a]);
    let until = unix_now();
    // `docker events --since SINCE --until UNTIL MORE…`.
    let window = |more: &[&str]| -> String {
        let mut args = vec!["events", "--since", &since, "--until", &until];
        args.extend_from_slice(more);
        docker_ok(&d, &args)
    };

    // The window, replayed from the buffer; the stream ends at `until`.
    let s = window(&["--format", "{{json .}}"]);
    let evs = parse_events(&s);
    let actions: Vec<(String, String)> = evs
        .iter()
        .map(|e| {
            (
                e["Type"].as_str().unwrap().to_string(),
                e["Action"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let seq = |typ: &str, want: &[&str]| {
        let got: Vec<&str> = actions
            .iter()
            .filter(|(t, _)| t == typ)
            .map(|(_, a)| a.as_str())
            .collect();
        let mut i = 0;
        for g in &got {
            if i < want.len() && *g == want[i] {
                i += 1;
            }
        }
        assert_eq!(
            i,
            want.len(),
            "{typ} events {got:?} lack the sequence {want:?}"
        );
    };
    seq("image", &["pull", "tag", "untag"]);
    seq(
        "container",
        &["create", "attach", "start", "die", "destroy"],
    );
    let die = evs
        .iter()
        .find(|e| e["Action"] == "die")
        .expect("a die event");
    assert_eq!(die["Actor"]["Attributes"]["exitCode"], "3", "{die}");
    assert_eq!(die["Actor"]["Attributes"]["name"], a.as_str());
    assert_eq!(die["Actor"]["Attributes"]["team"], "blue");
    assert_eq!(die["Actor"]["Attributes"]["image"], image.as_str());
    assert_eq!(die["status"], "die");
    assert_eq!(die["from"], image.as_str());
    assert_eq!(die["scope"], "local");
    assert_eq!(die["Type"], "container");
    assert!(die["timeNano"].as_i64().unwrap() / 1_000_000_000 == die["time"].as_i64().unwrap());
    let pull = evs.iter().find(|e| e["Action"] == "pull").unwrap();
    assert_eq!(pull["id"], image.as_str(), "{pull}");

    // Filters.
    let s = window(&[
        "--filter",
        "type=image",
        "--format",
        "{{.Type}} {{.Action}}",
    ]);
    assert!(s.lines().all(|l| l.starts_with("image ")), "{s}");
    assert!(s.contains("image pull"), "{s}");
    let s = window(&[
        "--filter",
        "event=die",
        "--filter",
        "label=team=blue",
        "--format",
        "{{.Action}} {{.Actor.Attributes.name}}",
    ]);
    assert_eq!(s.trim(), format!("die {a}"), "{s}");
    let s = window(&["--filter", "label=team=red"]);
    assert!(s.trim().is_empty(), "{s}");
    // since after until: 400 with dockerd's message.
    let (code, body) = http_unix(
        &d.socket(),
        "GET",
        &format!("/v1.44/events?since={until}&until={since}"),
        None,
    )
    .unwrap();
    assert_eq!(code, 400, "{}", text(&body));
    assert!(text(&body).contains("cannot be after"), "{}", text(&body));
    let (code, _) = http_unix(
        &d.socket(),
        "GET",
        "/v1.44/events?filters=%7B%22nope%22%3A%5B%22x%22%5D%7D&until=1",
        None,
    )
    .unwrap();
    assert_eq!(code, 400);

    // A live stream filtered on one container while it runs, stops, goes.
    let b = unique_name("ev-b");
    let mut child = d
        .docker_cmd()
        .args([
            "events",
            "--since",
            &unix_now(),
            "--filter",
            &format!("container={b}"),
            "--format",
            "{{.Type}} {{.Action}} {{.Actor.Attributes.name}} {{.Actor.Attributes.exitCode}}{{.Actor.Attributes.signal}}",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel::<String>();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for l in BufReader::new(stdout).lines().map_while(|l| l.ok()) {
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    // Another container's events must not show up.
    let other = unique_name("ev-other");
    docker_ok(&d, &["run", "--rm", "--name", &other, &image, "true"]);
    docker_ok(&d, &["run", "-d", "--name", &b, &image, "sleep", "100"]);
    docker_ok(&d, &["stop", "-t", "1", &b]);
    docker_ok(&d, &["rm", &b]);
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(l) => {
                let done = l.starts_with("container destroy");
                got.push(l);
                if done {
                    break;
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(_) => break,
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let acts: Vec<String> = got
        .iter()
        .map(|l| l.split_whitespace().take(2).collect::<Vec<_>>().join(" "))
        .collect();
    assert_eq!(
        acts,
        [
            "container create",
            "container start",
            "container kill",
            "container kill",
            "container die",
            "container stop",
            "container destroy"
        ],
        "streamed: {got:?}"
    );
    assert!(got.iter().all(|l| l.contains(&b)), "{got:?}");
    // sleep as pid 1 ignores SIGTERM: stop sent 15, then 9 (like dockerd).
    assert!(got[2].ends_with("<no value>15"), "{got:?}");
    assert!(got[3].ends_with("<no value>9"), "{got:?}");
    assert!(got[4].ends_with(" 137<no value>"), "{got:?}");
}

#[test]
fn restart_policies() {
    require_root();
    require_tool(DOCKER_CLI);
    let c = Containerd::start();
    let d = Orcad::start_with(&c.socket(), &[]);
    let (_reg, image) = Registry::with_busybox();
    docker_ok(&d, &["pull", &image]);

    // on-failure:2 with exit 1: two restarts, then exited.
    let f = unique_name("rp-fail");
    run_sh_ok(
        &d,
        &["-d", "--name", &f, "--restart", "on-failure:2"],
        &image,
        "echo run; exit 1",
    );
    let ok = wait_until(Duration::from_secs(30), || {
        let v = inspect(&d, &f);
        v["State"]["Status"] == "exited" && v["RestartCount"] == 2
    });
    let v = inspect(&d, &f);
    assert!(ok, "state: {} restarts: {}", v["State"], v["RestartCount"]);
    assert_eq!(v["State"]["ExitCode"], 1);
    assert_eq!(v["HostConfig"]["RestartPolicy"]["Name"], "on-failure");
    assert_eq!(v["HostConfig"]["RestartPolicy"]["MaximumRetryCount"], 2);
    // Stays exited.
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(inspect(&d, &f)["RestartCount"], 2);
    assert_eq!(docker_ok(&d, &["logs", &f]), "run\nrun\nrun\n");
    // A manual start resets the count (and the policy runs again).
    docker_ok(&d, &["start", &f]);
    let ok = wait_until(Duration::from_secs(30), || {
        let v = inspect(&d, &f);
        v["State"]["Status"] == "exited" && v["RestartCount"] == 2
    });
    assert!(ok, "{}", inspect(&d, &f)["State"]);
    assert_eq!(docker_ok(&d, &["logs", &f]).lines().count(), 6);

    // on-failure does not restart a success.
    let s = unique_name("rp-ok");
    docker_ok(
        &d,
        &[
            "run",
            "-d",
            "--name",
            &s,
            "--restart",
            "on-failure",
            &image,
            "true",
        ],
    );
    assert!(wait_until(Duration::from_secs(10), || inspect(&d, &s)
        ["State"]["Status"]
        == "exited"));
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(inspect(&d, &s)["RestartCount"], 0);

    // always: restarted after every exit, even a success; stop ends it.
    let a = unique_name("rp-always");
    run_sh_ok(
        &d,
        &["-d", "--name", &a, "--restart", "always"],
        &image,
        "echo up; sleep 0.3",
    );
    let ok = wait_until(Duration::from_secs(30), || {
        inspect(&d, &a)["RestartCount"].as_u64().unwrap_or(0) >= 2
    });
    assert!(ok, "always did not restart: {}", inspect(&d, &a));
    docker_ok(&d, &["stop", "-t", "2", &a]);
    let v = inspect(&d, &a);
    assert_eq!(v["State"]["Status"], "exited", "{}", v["State"]);
    assert_eq!(v["State"]["Running"], false);
    let count = v["RestartCount"].clone();
    std::thread::sleep(Duration::from_secs(2));
    let v = inspect(&d, &a);
    assert_eq!(
        v["State"]["Status"], "exited",
        "restarted after docker stop: {}",
        v["State"]
    );
    assert_eq!(v["RestartCount"], count);
    let l = docker_ok(&d, &["logs", &a]);
    // RestartCount counts scheduled restarts (dockerd's too): a stop during
    // the backoff cancels the last one.
    assert!(
        l.matches("up").count() >= 2,
        "{l:?} {}",
        inspect(&d, &a)["State"]
    );

    // unless-stopped: restarts, kill stops it for good.
    let u = unique_name("rp-unless");
    run_sh_ok(
        &d,
        &["-d", "--name", &u, "--restart", "unless-stopped"],
        &image,
        "sleep 0.2",
    );
    assert!(wait_until(Duration::from_secs(30), || {
        inspect(&d, &u)["RestartCount"].as_u64().unwrap_or(0) >= 1
    }));
    // Killed while running or while waiting for its restart: both end it.
    let _ = docker(&d, &["kill", &u]);
    assert!(wait_until(Duration::from_secs(10), || inspect(&d, &u)
        ["State"]["Status"]
        == "exited"));
    let count = inspect(&d, &u)["RestartCount"].clone();
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(inspect(&d, &u)["State"]["Status"], "exited");
    assert_eq!(inspect(&d, &u)["RestartCount"], count);

    // dockerd's validation.
    let body = create_rejected(&d, &image, r#"{"RestartPolicy":{"Name":"sometimes"}}"#);
    assert!(body.contains("invalid restart policy"), "{body}");
    let body = create_rejected(
        &d,
        &image,
        r#"{"RestartPolicy":{"Name":"always","MaximumRetryCount":3}}"#,
    );
    assert!(
        body.contains("can only be used with 'on-failure'"),
        "{body}"
    );
    create_rejected(
        &d,
        &image,
        r#"{"AutoRemove":true,"RestartPolicy":{"Name":"always"}}"#,
    );
    for n in [&f, &s, &a, &u] {
        docker_ok(&d, &["rm", "-f", n]);
    }
}

/// `POST /containers/create` of `image` running `true` with `host_config`
/// (JSON), which orcad must refuse with 400; returns the error body.
#[track_caller]
fn create_rejected(d: &Orcad, image: &str, host_config: &str) -> String {
    let req = format!(r#"{{"Image":"{image}","Cmd":["true"],"HostConfig":{host_config}}}"#);
    let (code, body) = d
        .http("POST", "/v1.44/containers/create", Some(req.as_bytes()))
        .unwrap();
    let body = text(&body);
    assert_eq!(code, 400, "{body}");
    body
}

/// The integers of `docker logs` output, in order.
fn numbers(s: &str) -> Vec<u64> {
    s.lines().filter_map(|l| l.trim().parse().ok()).collect()
}

fn assert_consecutive(nums: &[u64], what: &str) {
    for w in nums.windows(2) {
        assert_eq!(
            w[1],
            w[0] + 1,
            "{what}: gap or repeat at {} → {}",
            w[0],
            w[1]
        );
    }
}

#[test]
fn json_file_log_rotation() {
    require_root();
    require_tool(DOCKER_CLI);
    let c = Containerd::start();
    // The daemon's default log-opts come from daemon.json.
    let cfg_dir = tempfile::tempdir().unwrap();
    let cfg = cfg_dir.path().join("daemon.json");
    fs::write(
        &cfg,
        r#"{"log-driver": "json-file", "log-opts": {"max-size": "1k", "max-file": "3"}}"#,
    )
    .unwrap();
    let d = Orcad::start_with(&c.socket(), &["--config-file", cfg.to_str().unwrap()]);
    let (_reg, image) = Registry::with_busybox();
    docker_ok(&d, &["pull", &image]);

    // Inherits max-size=1k, max-file=3.
    let a = unique_name("lr-a");
    run_sh_ok(
        &d,
        &["--name", &a],
        &image,
        "i=0; while [ $i -lt 300 ]; do echo $i; i=$((i+1)); done",
    );
    let v = inspect(&d, &a);
    assert_eq!(v["HostConfig"]["LogConfig"]["Type"], "json-file");
    assert_eq!(
        v["HostConfig"]["LogConfig"]["Config"]["max-size"], "1k",
        "{}",
        v["HostConfig"]
    );
    assert_eq!(v["HostConfig"]["LogConfig"]["Config"]["max-file"], "3");
    let log = PathBuf::from(v["LogPath"].as_str().unwrap());
    let r1 = PathBuf::from(format!("{}.1", log.display()));
    let r2 = PathBuf::from(format!("{}.2", log.display()));
    let r3 = PathBuf::from(format!("{}.3", log.display()));
    assert!(r1.exists() && r2.exists(), "rotated files missing");
    assert!(!r3.exists(), "max-file=3 keeps 3 files");
    for p in [&r1, &r2] {
        let n = fs::metadata(p).unwrap().len();
        assert!(
            (1024..1024 + 200).contains(&n),
            "{}: {n} bytes",
            p.display()
        );
    }
    // docker logs reads the rotated files oldest first: the newest lines,
    // consecutive, ending with the last one.
    let s = docker_ok(&d, &["logs", &a]);
    let nums = numbers(&s);
    assert!(nums.len() > 20 && nums.len() < 300, "{} lines", nums.len());
    assert_eq!(*nums.last().unwrap(), 299);
    assert_consecutive(&nums, "logs across rotated files");
    // --tail across files.
    let s = docker_ok(&d, &["logs", "--tail", "30", &a]);
    assert_eq!(numbers(&s), (270..300).collect::<Vec<_>>());

    // Per-container options override the daemon's; max-file 1 truncates.
    let b = unique_name("lr-b");
    run_sh_ok(
        &d,
        &[
            "--name",
            &b,
            "--log-opt",
            "max-size=2k",
            "--log-opt",
            "max-file=1",
        ],
        &image,
        "i=0; while [ $i -lt 300 ]; do echo $i; i=$((i+1)); done",
    );
    let v = inspect(&d, &b);
    assert_eq!(v["HostConfig"]["LogConfig"]["Config"]["max-size"], "2k");
    let log_b = PathBuf::from(v["LogPath"].as_str().unwrap());
    assert!(fs::metadata(&log_b).unwrap().len() < 2048 + 200);
    assert!(!PathBuf::from(format!("{}.1", log_b.display())).exists());
    let nums = numbers(&docker_ok(&d, &["logs", &b]));
    assert_eq!(*nums.last().unwrap(), 299);
    assert_consecutive(&nums, "truncated log");

    // logs -f follows through rotations without gaps or repeats.
    let f = unique_name("lr-f");
    run_sh_ok(
        &d,
        &["-d", "--name", &f],
        &image,
        "i=0; while [ $i -lt 150 ]; do echo $i; i=$((i+1)); usleep 20000; done",
    );
    let s = docker_ok(&d, &["logs", "-f", &f]);
    let nums = numbers(&s);
    assert_eq!(*nums.last().unwrap(), 149, "{s}");
    assert_consecutive(&nums, "logs -f across rotations");
    assert!(nums.len() >= 100, "follow saw {} lines", nums.len());

    // Bad options: dockerd's messages; unimplemented ones 501.
    let o = docker(
        &d,
        &["create", "--log-opt", "max-size=lots", &image, "true"],
    );
    assert!(!o.status.success());
    assert!(err(&o).contains("max-size"), "{}", err(&o));
    let o = docker(&d, &["create", "--log-opt", "bogus=1", &image, "true"]);
    assert!(err(&o).contains("unknown log opt 'bogus'"), "{}", err(&o));
    let o = docker(&d, &["create", "--log-opt", "max-file=0", &image, "true"]);
    assert!(
        err(&o).contains("max-file cannot be less than 1"),
        "{}",
        err(&o)
    );
    let o = docker(&d, &["create", "--log-driver", "syslog", &image, "true"]);
    assert!(
        err(&o).contains("not implemented in orcad yet"),
        "{}",
        err(&o)
    );
}

/// Runs orcad expecting it to fail at startup; returns its stderr.
fn orcad_fails(args: &[&str]) -> String {
    let mut c = Command::new(bin_path("orcad"));
    c.args(args).stdin(Stdio::null());
    let o = run_with_limit(&mut c, Duration::from_secs(20)).expect("orcad exits");
    assert!(!o.status.success(), "orcad {args:?} started: {}", err(&o));
    err(&o)
}

#[test]
fn daemon_config_file_pidfile_group_and_managed_supervisor() {
    require_root();
    require_tool(DOCKER_CLI);
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let cfg = t.join("daemon.json");
    let base = |cfg: &Path| -> Vec<String> {
        vec![
            "--config-file".into(),
            cfg.display().to_string(),
            "--data-root".into(),
            t.join("bad-data").display().to_string(),
            "--exec-root".into(),
            t.join("bad-exec").display().to_string(),
            "-H".into(),
            format!("unix://{}", t.join("bad.sock").display()),
        ]
    };
    let run_bad = |json: &str| -> String {
        fs::write(&cfg, json).unwrap();
        let args = base(&cfg);
        let a: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
        orcad_fails(&a)
    };
    // Malformed JSON, wrong types, unknown keys, unsupported log driver.
    let e = run_bad(r#"{"live-restore": true,"#);
    assert!(
        e.contains("not valid JSON") && e.contains("daemon.json"),
        "{e}"
    );
    let e = run_bad(r#"{"live-restore": "yes"}"#);
    assert!(
        e.contains("\"live-restore\"") && e.contains("boolean"),
        "{e}"
    );
    let e = run_bad(r#"{"shutdown-timeout": "15"}"#);
    assert!(e.contains("\"shutdown-timeout\""), "{e}");
    let e = run_bad(r#"{"log-opts": {"max-file": 3}}"#);
    assert!(e.contains("log-opts") && e.contains("max-file"), "{e}");
    let e =
        run_bad(r#"{"default-ulimits": {"nofile": {"Name": "nofile", "Hard": "x", "Soft": 1}}}"#);
    assert!(e.contains("default-ulimits"), "{e}");
    let e = run_bad(r#"{"insecure-registries": "127.0.0.1:5000"}"#);
    assert!(e.contains("insecure-registries"), "{e}");
    let e = run_bad(r#"{"no-such-option": 1}"#);
    assert!(e.contains("no-such-option"), "{e}");
    let e = run_bad(r#"{"log-driver": "syslog"}"#);
    assert!(e.contains("syslog") && e.contains("json-file"), "{e}");
    let e = run_bad(r#"{"log-opts": {"max-size": "huge"}}"#);
    assert!(e.contains("max-size"), "{e}");
    let e = orcad_fails(&["--config-file", t.join("missing.json").to_str().unwrap()]);
    assert!(e.contains("missing.json"), "{e}");
    assert!(!t.join("bad.sock").exists());

    // A good file; flags override it (data-root); no --containerd: orcad
    // starts its own orca-supervisor under data-root/exec-root.
    let (_reg, image) = Registry::with_busybox();
    let d_tmp = tempfile::tempdir().unwrap();
    let dt = d_tmp.path();
    fs::write(
        &cfg,
        format!(
            r#"{{
  "data-root": "{file_data}",
  "exec-root": "{exec}",
  "hosts": ["unix://{sock}"],
  "group": "orca-no-such-group-xyz",
  "registry-mirrors": ["http://127.0.0.1:1"],
  "insecure-registries": [],
  "log-driver": "json-file",
  "log-opts": {{"max-size": "10m", "max-file": "2"}},
  "default-ulimits": {{"nofile": {{"Name": "nofile", "Hard": 4321, "Soft": 1234}}}},
  "live-restore": false,
  "shutdown-timeout": 5
}}"#,
            file_data = dt.join("file-data").display(),
            exec = dt.join("exec").display(),
            sock = dt.join("orca.sock").display(),
        ),
    )
    .unwrap();
    let pidfile = dt.join("orcad.pid");
    let cgroup_parent = format!("/orca-lc-cfg-{}", std::process::id());
    let log_path = dt.join("orcad.log");
    let log = fs::File::create(&log_path).unwrap();
    let mut child = Command::new(bin_path("orcad"))
        .args(["--config-file", cfg.to_str().unwrap()])
        .args(["--data-root", dt.join("data").to_str().unwrap()])
        .args(["--pidfile", pidfile.to_str().unwrap()])
        .args(["--cgroup-parent", &cgroup_parent])
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let sock = dt.join("orca.sock");
    let read_log = || fs::read_to_string(&log_path).unwrap_or_default();
    let up = wait_until(Duration::from_secs(40), || {
        matches!(http_unix(&sock, "GET", "/_ping", None), Ok((200, _)))
            || matches!(child.try_wait(), Ok(Some(_)))
    });
    assert!(
        up && matches!(child.try_wait(), Ok(None)),
        "orcad did not start:\n{}",
        read_log()
    );
    let docker = |args: &[&str]| -> Output {
        let mut c = Command::new(DOCKER_CLI);
        c.env("DOCKER_HOST", format!("unix://{}", sock.display()))
            .env("DOCKER_CONFIG", dt.join("docker-config"))
            .args(args)
            .stdin(Stdio::null());
        run_with_limit(&mut c, T).unwrap()
    };
    let sup_pidfile = dt.join("exec/supervisor/supervisor.pid");
    let sup_pid: i32 = fs::read_to_string(&sup_pidfile)
        .unwrap_or_else(|e| panic!("no supervisor pid file ({e}):\n{}", read_log()))
        .trim()
        .parse()
        .unwrap();
    let check = || -> Result<(), String> {
        // pid file, socket owner/mode, group fallback warning.
        let pid: u32 = fs::read_to_string(&pidfile)
            .map_err(|e| e.to_string())?
            .trim()
            .parse()
            .unwrap();
        if pid != child.id() {
            return Err(format!("pidfile has {pid}, orcad is {}", child.id()));
        }
        let m = fs::metadata(&sock).unwrap();
        if m.mode() & 0o777 != 0o660 || m.gid() != 0 {
            return Err(format!(
                "socket mode {:o} gid {}",
                m.mode() & 0o777,
                m.gid()
            ));
        }
        if !read_log().contains("group not found") {
            return Err("no warning about the missing group".into());
        }
        // The managed supervisor: a child of orcad, root under data-root
        // (the flag's, not the file's).
        let exe = fs::read_link(format!("/proc/{sup_pid}/exe")).map_err(|e| e.to_string())?;
        if !exe.to_string_lossy().contains("orca-supervisor") {
            return Err(format!("supervisor pid runs {}", exe.display()));
        }
        if !dt.join("data/supervisor").exists() || dt.join("file-data").exists() {
            return Err("supervisor root is not under the flag's data-root".into());
        }
        if !dt.join("exec/supervisor/supervisor.sock").exists() {
            return Err("no supervisor socket under exec-root".into());
        }
        let o = docker(&[
            "info",
            "--format",
            "{{json .RegistryConfig.Mirrors}} {{.DockerRootDir}}",
        ]);
        if !out(&o).contains("127.0.0.1:1")
            || !out(&o).contains(&dt.join("data").display().to_string())
        {
            return Err(format!("docker info: {} {}", out(&o), err(&o)));
        }
        let o = docker(&["pull", &image]);
        if !o.status.success() {
            return Err(format!("pull: {}", err(&o)));
        }
        // docker run --rm through the managed supervisor; default-ulimits
        // apply; log-opts defaults are in the container's LogConfig.
        let o = docker(&[
            "run",
            "--rm",
            &image,
            "sh",
            "-c",
            "ulimit -n; ulimit -Hn; echo hello",
        ]);
        if out(&o) != "1234\n4321\nhello\n" {
            return Err(format!(
                "run --rm: {:?} {} {:?}",
                out(&o),
                err(&o),
                o.status
            ));
        }
        let o = docker(&[
            "run",
            "--rm",
            "--ulimit",
            "nofile=99:100",
            &image,
            "sh",
            "-c",
            "ulimit -n",
        ]);
        if out(&o).trim() != "99" {
            return Err(format!("own ulimit: {:?} {}", out(&o), err(&o)));
        }
        let o = docker(&["create", "--name", "cfg-logs", &image, "true"]);
        if !o.status.success() {
            return Err(err(&o));
        }
        let o = docker(&[
            "inspect",
            "--format",
            "{{json .HostConfig.LogConfig}}",
            "cfg-logs",
        ]);
        let v: Value =
            serde_json::from_str(out(&o).trim()).map_err(|e| format!("{e}: {}", out(&o)))?;
        if v["Config"]["max-size"] != "10m" || v["Config"]["max-file"] != "2" {
            return Err(format!("LogConfig {v}"));
        }
        let o = docker(&["rm", "cfg-logs"]);
        if !o.status.success() {
            return Err(err(&o));
        }
        Ok(())
    };
    let res = check();
    // SIGTERM: orcad stops its supervisor (no live-restore) and removes the
    // pid file and socket.
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let exited = wait_until(Duration::from_secs(30), || {
        matches!(child.try_wait(), Ok(Some(_)))
    });
    if !exited {
        let _ = child.kill();
        let _ = child.wait();
    }
    let sup_gone = wait_until(Duration::from_secs(15), || {
        !Path::new(&format!("/proc/{sup_pid}")).exists()
    });
    if !sup_gone {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(sup_pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    for p in cgroup_leftovers(&cgroup_parent) {
        let _ = fs::remove_dir(p);
    }
    if let Err(e) = res {
        panic!("{e}\n--- orcad log ---\n{}", tail(&read_log(), 100));
    }
    assert!(exited, "orcad did not exit on SIGTERM:\n{}", read_log());
    assert!(sup_gone, "orca-supervisor outlived orcad (no live-restore)");
    assert!(!pidfile.exists(), "pid file left behind");
    assert!(!sock.exists(), "socket left behind");
}

#[test]
fn live_restore_keeps_containers_and_reattaches() {
    require_root();
    require_tool(DOCKER_CLI);
    let c = Containerd::start();
    let mut d = Orcad::start_with(&c.socket(), &["--live-restore"]);
    let (_reg, image) = Registry::with_busybox();
    docker_ok(&d, &["pull", &image]);
    let info = docker_ok(&d, &["info", "--format", "{{.LiveRestoreEnabled}}"]);
    assert_eq!(info.trim(), "true");
    const COUNT: usize = 20;
    let mut names = Vec::new();
    let counter = unique_name("lv-counter");
    run_sh_ok(
        &d,
        &["-d", "--name", &counter],
        &image,
        "i=0; while true; do echo $i; i=$((i+1)); usleep 10000; done",
    );
    names.push(counter.clone());
    // Exits (code 7) when /tmp/go appears, which the test creates while
    // orcad is down.
    let exiter = unique_name("lv-exit");
    run_sh_ok(
        &d,
        &["-d", "--name", &exiter],
        &image,
        "echo waiting; while [ ! -e /tmp/go ]; do usleep 20000; done; echo bye; exit 7",
    );
    names.push(exiter.clone());
    // Takes stdin (attach after the restart).
    let cat = unique_name("lv-cat");
    run_sh_ok(
        &d,
        &["-d", "-i", "--name", &cat],
        &image,
        "while read l; do echo got:$l; done",
    );
    names.push(cat.clone());
    while names.len() < COUNT {
        let n = unique_name("lv-sleep");
        docker_ok(&d, &["run", "-d", "--name", &n, &image, "sleep", "1000"]);
        names.push(n);
    }
    let pids: Vec<(String, i64)> = names
        .iter()
        .map(|n| (n.clone(), inspect(&d, n)["State"]["Pid"].as_i64().unwrap()))
        .collect();
    assert!(pids.iter().all(|(_, p)| *p > 0), "{pids:?}");
    std::thread::sleep(Duration::from_millis(300));
    let before = numbers(&docker_ok(&d, &["logs", &counter]));
    assert!(!before.is_empty());

    // Stop orcad: every container keeps running.
    let t0 = Instant::now();
    assert!(
        d.stop_within(Duration::from_secs(20)),
        "orcad did not exit on SIGTERM"
    );
    for (n, p) in &pids {
        assert!(
            Path::new(&format!("/proc/{p}")).exists(),
            "{n} (pid {p}) was killed with orcad"
        );
    }
    // While orcad is down: one container exits, the counter keeps writing.
    let exiter_pid = pids[1].1;
    fs::write(format!("/proc/{exiter_pid}/root/tmp/go"), "").unwrap();
    assert!(wait_until(Duration::from_secs(10), || {
        !Path::new(&format!("/proc/{exiter_pid}")).exists()
    }));
    std::thread::sleep(Duration::from_millis(500));
    d.start_again(&[]);
    let downtime = t0.elapsed();

    // State: 19 running (same pids), the exiter exited 7 with its output.
    for (n, p) in &pids[..] {
        let v = inspect(&d, n);
        if n == &exiter {
            assert_eq!(v["State"]["Status"], "exited", "{n}: {}", v["State"]);
            assert_eq!(v["State"]["ExitCode"], 7);
        } else {
            assert_eq!(v["State"]["Status"], "running", "{n}: {}", v["State"]);
            assert_eq!(v["State"]["Pid"].as_i64(), Some(*p), "{n}");
        }
    }
    assert_eq!(docker_ok(&d, &["wait", &exiter]).trim(), "7");
    // What it printed before orcad stopped is there; its last words, written
    // while no orcad read the FIFO, went with the shim's FIFO ends when it
    // exited (as with dockerd on the same shim).
    assert!(docker_ok(&d, &["logs", &exiter]).starts_with("waiting\n"));
    let ps = docker_ok(&d, &["ps", "-q"]);
    assert_eq!(ps.lines().count(), COUNT - 1, "{ps}");

    // Logs keep flowing with no gap across the restart.
    std::thread::sleep(Duration::from_secs(1));
    let after = numbers(&docker_ok(&d, &["logs", &counter]));
    assert_consecutive(&after, "counter across the orcad restart");
    assert_eq!(after[0], 0);
    let expect_min = *before.last().unwrap() + (downtime.as_millis() as u64 / 40);
    assert!(
        *after.last().unwrap() > expect_min,
        "counter at {} after the restart (was {} before, {downtime:?} down)",
        after.last().unwrap(),
        before.last().unwrap()
    );

    // exec, stats, attach with stdin, wait on the reattached containers.
    assert_eq!(docker_ok(&d, &["exec", &counter, "echo", "hi"]), "hi\n");
    let cg_v1 = Path::new("/sys/fs/cgroup/memory").exists();
    if cg_v1 {
        let s = docker_ok(
            &d,
            &["stats", "--no-stream", "--format", "{{.Name}}", &counter],
        );
        assert_eq!(s.trim(), counter);
    }
    let mut att = d
        .docker_cmd()
        .args(["attach", &cat])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        std::thread::sleep(Duration::from_millis(500));
        let mut sin = att.stdin.take().unwrap();
        writeln!(sin, "after-restart").unwrap();
        sin.flush().unwrap();
        std::thread::sleep(Duration::from_millis(500));
        drop(sin);
    }
    let ok = wait_until(Duration::from_secs(10), || {
        docker_ok(&d, &["logs", &cat]).contains("got:after-restart")
    });
    let _ = att.kill();
    let _ = att.wait();
    assert!(
        ok,
        "stdin after the restart: {:?}",
        docker_ok(&d, &["logs", &cat])
    );
    docker_ok(&d, &["kill", &counter]);
    assert_eq!(docker_ok(&d, &["wait", &counter]).trim(), "137");
    // Live-restore leaves containers running when orcad stops: removed
    // first, so that the fixture's cgroup parent is empty when it goes.
    d.remove_all_containers(T);
    drop(d);
    drop(c);
}

#[test]
fn docker_compose_up_ps_logs_down() {
    require_root();
    require_tool(DOCKER_CLI);
    let compose = require_tool("docker-compose");
    let c = Containerd::start();
    let d = Orcad::start_with(&c.socket(), &[]);
    let (_reg, image) = Registry::with_busybox();
    docker_ok(&d, &["pull", &image]);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("docker-compose.yml");
    fs::write(
        &file,
        format!(
            r#"version: "3.7"
services:
  web:
    image: {image}
    command: ["sh", "-c", "trap 'exit 0' TERM; echo web up; while true; do sleep 1; done"]
    labels:
      tier: front
  worker:
    image: {image}
    command: ["sh", "-c", "trap 'exit 0' TERM; echo worker up; while true; do sleep 1; done"]
"#
        ),
    )
    .unwrap();
    let project = format!("orcalc{}", std::process::id());
    let run = |args: &[&str]| -> Output {
        let mut cmd = d.client_cmd(&compose);
        cmd.current_dir(dir.path())
            .args(["-p", &project, "-f", file.to_str().unwrap()])
            .args(args);
        run_with_limit(&mut cmd, T).unwrap()
    };
    let ok = |args: &[&str]| -> String {
        let o = run(args);
        assert!(
            o.status.success(),
            "docker-compose {args:?}: {}\n{}\n--- orcad log ---\n{}",
            out(&o),
            err(&o),
            tail(&d.log(), 80)
        );
        out(&o) + &err(&o)
    };
    let s = ok(&["up", "-d"]);
    assert!(
        s.contains(&format!("Creating network \"{project}_default\"")),
        "{s}"
    );
    let web = format!("{project}_web_1");
    let worker = format!("{project}_worker_1");
    let s = ok(&["ps"]);
    assert!(s.contains(&web) && s.contains(&worker), "{s}");
    assert_eq!(s.matches(" Up").count(), 2, "{s}");
    assert!(wait_until(Duration::from_secs(10), || {
        let l = ok(&["logs", "--no-color"]);
        l.contains("web up") && l.contains("worker up")
    }));
    // Both containers are members with their service alias and an address
    // of the network (engine_network.rs checks connectivity).
    let nets = docker_ok(&d, &["network", "ls", "--format", "{{.Name}} {{.Driver}}"]);
    assert!(
        nets.contains(&format!("{project}_default bridge")),
        "{nets}"
    );
    let v = inspect(&d, &web);
    let ep = &v["NetworkSettings"]["Networks"][format!("{project}_default")];
    assert!(
        ep["Aliases"].as_array().unwrap().iter().any(|a| a == "web"),
        "{ep}"
    );
    assert!(
        ep["IPAddress"]
            .as_str()
            .is_some_and(|a| a.starts_with("10.")),
        "{ep}"
    );
    assert_eq!(
        v["Config"]["Labels"]["com.docker.compose.project"],
        project.as_str()
    );
    assert_eq!(v["Config"]["Labels"]["tier"], "front");
    let n: Value = serde_json::from_str(&docker_ok(
        &d,
        &["network", "inspect", &format!("{project}_default")],
    ))
    .unwrap();
    assert_eq!(n[0]["Containers"].as_object().unwrap().len(), 2, "{n}");
    assert_eq!(n[0]["Labels"]["com.docker.compose.network"], "default");
    // In use: 403.
    let o = docker(&d, &["network", "rm", &format!("{project}_default")]);
    assert!(!o.status.success());
    assert!(err(&o).contains("active endpoints"), "{}", err(&o));
    // Predefined names are refused; unsupported options are 501.
    let o = docker(&d, &["network", "create", "bridge"]);
    assert!(err(&o).contains("pre-defined"), "{}", err(&o));
    // IPv6 subnets are not implemented (IPv4 ones are: engine_network.rs).
    let o = docker(
        &d,
        &[
            "network",
            "create",
            "--subnet",
            "fd00:99::/64",
            "orca-lc-subnet",
        ],
    );
    assert!(
        err(&o).contains("not implemented in orcad yet"),
        "{}",
        err(&o)
    );
    let o = docker(
        &d,
        &["network", "create", "-d", "overlay", "orca-lc-overlay"],
    );
    assert!(
        err(&o).contains("not implemented in orcad yet"),
        "{}",
        err(&o)
    );

    let s = ok(&["down", "-t", "5"]);
    assert!(
        s.contains(&format!("Removing network {project}_default")),
        "{s}"
    );
    assert!(docker_ok(&d, &["ps", "-aq"]).trim().is_empty());
    let nets = docker_ok(&d, &["network", "ls", "-q"]);
    assert!(nets.trim().is_empty(), "{nets}");
    if std::env::var_os("ORCA_DEBUG_DUMP").is_some() {
        eprintln!("{}", d.log());
    }
}

#[test]
fn live_restore_with_the_managed_supervisor() {
    require_root();
    require_tool(DOCKER_CLI);
    // No --containerd: orcad runs its own orca-supervisor and, with
    // live-restore, leaves it (and the containers) running at shutdown; the
    // next orcad reuses it.
    let mut d = Orcad::start_managed(&["--live-restore"]);
    let (_reg, image) = Registry::with_busybox();
    docker_ok(&d, &["pull", &image]);
    let name = unique_name("lvs");
    run_sh_ok(
        &d,
        &["-d", "--name", &name],
        &image,
        "i=0; while true; do echo $i; i=$((i+1)); usleep 20000; done",
    );
    let pid = inspect(&d, &name)["State"]["Pid"].as_i64().unwrap();
    let sup_file = d.path("exec/supervisor/supervisor.pid");
    let sup_pid = || -> i32 {
        fs::read_to_string(&sup_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    let sup = sup_pid();
    assert!(d.stop_within(Duration::from_secs(20)));
    assert!(
        Path::new(&format!("/proc/{sup}")).exists(),
        "supervisor stopped despite live-restore"
    );
    assert!(
        Path::new(&format!("/proc/{pid}")).exists(),
        "container stopped despite live-restore"
    );
    std::thread::sleep(Duration::from_millis(300));
    d.start_again(&[]);
    assert_eq!(sup_pid(), sup, "a second supervisor was started");
    assert!(d.log().contains("reusing the running orca-supervisor"));
    let v = inspect(&d, &name);
    assert_eq!(v["State"]["Status"], "running");
    assert_eq!(v["State"]["Pid"].as_i64(), Some(pid));
    std::thread::sleep(Duration::from_millis(500));
    let nums = numbers(&docker_ok(&d, &["logs", &name]));
    assert_consecutive(&nums, "counter across the restart");
    docker_ok(&d, &["rm", "-f", &name]);
    assert!(!Path::new(&format!("/proc/{pid}")).exists());
}

/// A removal interrupted after the record went (orcad killed before its
/// background part: the containerd container, the rootfs snapshot and the
/// directories) is completed by the next orcad: the record directory
/// without `config.json` is the tombstone it finds.
#[test]
fn restarted_orcad_completes_an_interrupted_removal() {
    require_root();
    require_tool(DOCKER_CLI);
    let c = Containerd::start();
    let mut d = Orcad::start_with(&c.socket(), &[]);
    let (_reg, image) = Registry::with_busybox();
    docker_ok(&d, &["pull", &image]);
    let name = unique_name("tomb");
    let id = docker_ok(&d, &["create", "--name", &name, &image, "true"])
        .trim()
        .to_string();
    let listed = |what: &str| out(&c.ctr_ns("orca", &[what, "ls"])).contains(&id);
    assert!(listed("containers") && listed("snapshots"));
    // What a kill between the two parts of `rm` leaves: orcad gone, the
    // record unlinked, everything else still there.
    d.stop();
    let record_dir = d.data_root().join("containers").join(&id);
    fs::remove_file(record_dir.join("config.json")).unwrap();
    assert!(record_dir.join("hostname").exists());
    d.start_again(&[]);
    assert!(!listed("containers"), "containerd container left");
    assert!(!listed("snapshots"), "rootfs snapshot left");
    assert!(!record_dir.exists(), "record directory left");
    assert!(!d.path("exec").join("containers").join(&id).exists());
    let ps = docker_ok(&d, &["ps", "-aq"]);
    assert!(!ps.contains(&id[..12]), "{ps}");
    // The name is free again.
    docker_ok(&d, &["create", "--name", &name, &image, "true"]);
    d.remove_all_containers(T);
}
