//! The `orca` CLI (cli/) against orcad on Debian's containerd 1.6: version,
//! info, pull with progress lines, images, run (output, exit codes, stdin,
//! pull on first use), detached run + ps/logs/exec/inspect/stats/stop/rm,
//! daemon selection (-H, ORCA_HOST, DOCKER_HOST), bad input, and commands
//! orcad does not implement (the daemon's error is shown, exit non-zero).

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use orca_integration::engine_support::{run_with_limit, Orcad};
use orca_integration::{assert_success, bin_path, require_root, unique_name, Containerd, Registry};
use serde_json::Value;

const T: Duration = Duration::from_secs(120);

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn setup() -> (Containerd, Orcad) {
    require_root();
    let c = Containerd::start();
    let o = Orcad::start(&c);
    (c, o)
}

/// `orca` with no daemon selected by the environment.
fn orca_cmd() -> Command {
    let mut c = Command::new(bin_path("orca"));
    c.env_remove("ORCA_HOST")
        .env_remove("DOCKER_HOST")
        .env_remove("DOCKER_API_VERSION")
        .env_remove("ORCA_API_VERSION")
        .stdin(Stdio::null());
    c
}

fn host_of(o: &Orcad) -> String {
    format!("unix://{}", o.socket().display())
}

/// `orca ARGS…` aimed at `o` through ORCA_HOST.
#[track_caller]
fn orca(o: &Orcad, args: &[&str]) -> Output {
    let mut c = orca_cmd();
    c.env("ORCA_HOST", host_of(o)).args(args);
    run_with_limit(&mut c, T)
        .unwrap_or_else(|e| panic!("orca {args:?}: {e}\n--- orcad log ---\n{}", o.log()))
}

/// `orca ARGS…` with `input` on stdin.
#[track_caller]
fn orca_with_stdin(o: &Orcad, args: &[&str], input: &[u8]) -> Output {
    let mut f = tempfile::tempfile().expect("temp file");
    f.write_all(input).unwrap();
    use std::io::Seek;
    f.seek(std::io::SeekFrom::Start(0)).unwrap();
    let mut c = orca_cmd();
    c.env("ORCA_HOST", host_of(o))
        .args(args)
        .stdin(Stdio::from(f));
    run_with_limit(&mut c, T)
        .unwrap_or_else(|e| panic!("orca {args:?}: {e}\n--- orcad log ---\n{}", o.log()))
}

fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

/// HTTP status orcad answers for a route (to tell implemented from 501).
fn route_status(o: &Orcad, method: &str, path: &str) -> u16 {
    o.http(method, path, None).map(|(c, _)| c).unwrap_or(0)
}

#[test]
fn orca_version_info_pull_and_images() {
    let (_c, o) = setup();
    let (_reg, image) = Registry::with_busybox();

    let out = orca(&o, &["version"]);
    assert_success(&out, "orca version");
    let s = stdout(&out);
    assert!(s.starts_with("Client:\n"), "{s}");
    assert!(s.contains("\nServer: "), "{s}");
    assert!(s.contains("API version:"), "{s}");
    let out = orca(&o, &["version", "--format", "{{.Server.ApiVersion}}"]);
    assert_success(&out, "orca version --format");
    assert_eq!(stdout(&out).trim(), "1.44");
    let out = orca(&o, &["version", "--format", "{{json .Client}}"]);
    let v: Value = serde_json::from_str(stdout(&out).trim()).expect("client JSON");
    assert_eq!(v["ApiVersion"], "1.44", "{v}");

    let out = orca(&o, &["info"]);
    assert_success(&out, "orca info");
    let s = stdout(&out);
    for want in [
        "Server:\n",
        " Containers: 0\n",
        "  Running: 0\n",
        " Server Version: ",
        " OSType: linux\n",
    ] {
        assert!(s.contains(want), "missing {want:?} in:\n{s}");
    }
    let out = orca(&o, &["info", "--format", "{{.OSType}} {{.Containers}}"]);
    assert_eq!(stdout(&out).trim(), "linux 0");

    // Pull without a tag: docker's non-TTY lines, per layer.
    let untagged = image
        .strip_suffix(":latest")
        .expect("fixture image is :latest");
    let out = orca(&o, &["pull", untagged]);
    assert_success(&out, "orca pull");
    let s = stdout(&out);
    let lines: Vec<&str> = s.lines().collect();
    assert_eq!(lines[0], "Using default tag: latest", "{s}");
    assert!(lines[1].starts_with("latest: Pulling from "), "{s}");
    assert!(
        lines
            .iter()
            .any(|l| l.ends_with(": Pull complete") && l.len() > 15),
        "per-layer lines: {s}"
    );
    assert!(
        !s.contains("Downloading"),
        "byte progress is not printed without a TTY: {s}"
    );
    assert!(
        lines.iter().any(|l| l.starts_with("Digest: sha256:")),
        "{s}"
    );
    assert!(
        s.contains(&format!("Status: Downloaded newer image for {image}")),
        "{s}"
    );
    assert_eq!(
        *lines.last().unwrap(),
        image,
        "last line is the reference: {s}"
    );
    // Again: up to date, as the real docker CLI reports too.
    let out = orca(&o, &["pull", &image]);
    assert_success(&out, "orca pull (again)");
    assert!(
        stdout(&out).contains("Image is up to date"),
        "{}",
        stdout(&out)
    );
    let docker_out = o.docker(&["pull", &image], T);
    assert!(stdout(&docker_out).contains("Image is up to date"));

    // Line for line what the real docker CLI prints for the same pull.
    assert_success(&orca(&o, &["rmi", &image]), "orca rmi");
    let docker_lines = stdout(&o.docker(&["pull", untagged], T));
    assert_success(&orca(&o, &["rmi", &image]), "orca rmi");
    let out = orca(&o, &["pull", untagged]);
    assert_eq!(
        stdout(&out),
        docker_lines,
        "orca pull vs docker pull output"
    );

    // images: docker's table, -q, --format.
    let repo = untagged;
    let out = orca(&o, &["images"]);
    assert_success(&out, "orca images");
    let s = stdout(&out);
    let lines: Vec<&str> = s.lines().collect();
    assert!(
        lines[0].starts_with("REPOSITORY")
            && lines[0].contains("   TAG ")
            && lines[0].contains("IMAGE ID")
            && lines[0].contains("CREATED")
            && lines[0].ends_with("SIZE"),
        "{s}"
    );
    let row = lines
        .iter()
        .find(|l| l.starts_with(repo))
        .unwrap_or_else(|| panic!("{s}"));
    let cols: Vec<&str> = row
        .split("   ")
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .collect();
    assert_eq!(cols[1], "latest", "{row}");
    assert_eq!(cols[2].len(), 12, "{row}");
    assert!(cols.last().unwrap().ends_with("B"), "size column: {row}");
    let out = orca(&o, &["images", "-q"]);
    let ids = stdout(&out);
    assert_eq!(ids.trim(), cols[2], "{ids}");
    let out = orca(&o, &["images", "--format", "{{.Repository}}:{{.Tag}}"]);
    assert_eq!(stdout(&out).trim(), image);
    // Same columns as the real docker CLI's table.
    let d = o.docker(&["images"], T);
    let dhead = stdout(&d).lines().next().unwrap_or("").to_string();
    assert_eq!(
        lines[0].split_whitespace().collect::<Vec<_>>(),
        dhead.split_whitespace().collect::<Vec<_>>()
    );

    // inspect on an image, tag and rmi.
    let out = orca(&o, &["inspect", "--format", "{{.Id}}", &image]);
    assert_success(&out, "orca inspect image");
    assert!(
        stdout(&out).trim().starts_with("sha256:"),
        "{}",
        stdout(&out)
    );
    let tagged = format!("{repo}:cli-tag");
    let out = orca(&o, &["tag", &image, &tagged]);
    assert_success(&out, "orca tag");
    let out = orca(&o, &["images", "--format", "{{.Tag}}"]);
    assert!(
        stdout(&out).lines().any(|l| l == "cli-tag"),
        "{}",
        stdout(&out)
    );
    let out = orca(&o, &["rmi", &tagged]);
    assert_success(&out, "orca rmi");
    assert_eq!(stdout(&out).trim(), format!("Untagged: {tagged}"));
}

#[test]
fn orca_run_output_exit_codes_and_stdin() {
    let (_c, o) = setup();
    let (_reg, image) = Registry::with_busybox();

    // First use pulls (progress on stderr), as docker run does.
    let out = orca(&o, &["run", "--rm", &image, "echo", "hi"]);
    assert_success(&out, "orca run --rm echo hi");
    assert_eq!(stdout(&out), "hi\n");
    let e = stderr(&out);
    assert!(
        e.contains(&format!("Unable to find image '{image}' locally")),
        "{e}"
    );
    assert!(e.contains("Pull complete"), "{e}");

    let out = orca(
        &o,
        &[
            "run",
            "--rm",
            &image,
            "sh",
            "-c",
            "echo out; echo err >&2; exit 3",
        ],
    );
    assert_eq!(code(&out), 3, "stderr: {}", stderr(&out));
    assert_eq!(stdout(&out), "out\n");
    assert_eq!(stderr(&out), "err\n");

    // --init, --sysctl, --add-host, --dns* reach the container.
    let out = orca(
        &o,
        &[
            "run",
            "--rm",
            "--init",
            "--sysctl",
            "kernel.shmmni=1234",
            "--add-host",
            "db.example:10.1.2.3",
            "--dns",
            "192.0.2.53",
            "--dns-search",
            "corp.example",
            &image,
            "sh",
            "-c",
            "tr '\\0' ' ' < /proc/1/cmdline; echo; cat /proc/sys/kernel/shmmni /etc/hosts /etc/resolv.conf",
        ],
    );
    assert_success(&out, "orca run --init --sysctl --add-host --dns");
    let got = stdout(&out);
    let mut lines = got.lines();
    assert!(
        lines
            .next()
            .unwrap_or("")
            .starts_with("/sbin/docker-init -- sh -c"),
        "{got}"
    );
    assert_eq!(lines.next(), Some("1234"), "{got}");
    for want in [
        "10.1.2.3\tdb.example",
        "nameserver 192.0.2.53",
        "search corp.example",
    ] {
        assert!(got.lines().any(|l| l == want), "{want:?} missing:\n{got}");
    }

    let out = orca(&o, &["run", "--rm", &image, "no-such-command-here"]);
    assert_eq!(code(&out), 127, "stderr: {}", stderr(&out));
    let e = stderr(&out);
    assert!(e.starts_with("orca: Error response from daemon: "), "{e}");
    assert!(
        e.contains("Run 'orca run --help' for more information"),
        "{e}"
    );

    // -e, -w, -u, --entrypoint.
    let out = orca(
        &o,
        &[
            "run",
            "--rm",
            "-e",
            "GREETING=hello",
            "-w",
            "/tmp",
            "-u",
            "1234",
            &image,
            "sh",
            "-c",
            "echo $GREETING $(pwd) $(id -u)",
        ],
    );
    assert_success(&out, "orca run -e -w -u");
    assert_eq!(stdout(&out), "hello /tmp 1234\n");
    let out = orca(
        &o,
        &[
            "run",
            "--rm",
            "--entrypoint",
            "echo",
            &image,
            "via",
            "entrypoint",
        ],
    );
    assert_success(&out, "orca run --entrypoint");
    assert_eq!(stdout(&out), "via entrypoint\n");

    // stdin: docker-style `echo hi | run -i`; orcad without stdin support
    // answers 501, which the CLI must show.
    let out = orca_with_stdin(
        &o,
        &["run", "-i", "--rm", &image, "cat"],
        b"hi from stdin\n",
    );
    if code(&out) == 0 {
        assert_eq!(stdout(&out), "hi from stdin\n");
    } else {
        assert!(
            stderr(&out).contains("Error response from daemon"),
            "{}",
            stderr(&out)
        );
    }

    // -t: the raw TTY stream (the container's pty turns \n into \r\n);
    // -it needs a terminal on stdin, as with docker.
    let out = orca(&o, &["run", "--rm", "-t", &image, "echo", "tty"]);
    assert_success(&out, "orca run -t");
    assert_eq!(stdout(&out), "tty\r\n");
    let out = orca(&o, &["run", "--rm", "-it", &image, "true"]);
    assert_eq!(code(&out), 1);
    assert_eq!(stderr(&out).trim(), "the input device is not a TTY");

    // --rm removed the containers.
    let out = orca(&o, &["ps", "-a", "-q"]);
    assert_success(&out, "orca ps -a -q");
    assert_eq!(stdout(&out).trim(), "", "containers left: {}", stdout(&out));

    // create + start -a.
    let name = unique_name("orca-cli-create");
    let out = orca(
        &o,
        &[
            "create",
            "--name",
            &name,
            &image,
            "sh",
            "-c",
            "echo created; exit 4",
        ],
    );
    assert_success(&out, "orca create");
    assert_eq!(stdout(&out).trim().len(), 64, "{}", stdout(&out));
    let out = orca(&o, &["start", "-a", &name]);
    assert_eq!(code(&out), 4, "{}", stderr(&out));
    assert_eq!(stdout(&out), "created\n");
    let out = orca(&o, &["wait", &name]);
    assert_eq!(stdout(&out).trim(), "4");
    let out = orca(&o, &["rm", &name]);
    assert_success(&out, "orca rm");
}

#[test]
fn orca_detached_ps_logs_exec_inspect_stop_rm() {
    let (_c, o) = setup();
    let (_reg, image) = Registry::with_busybox();
    let out = orca(&o, &["pull", "-q", &image]);
    assert_success(&out, "orca pull -q");
    assert_eq!(stdout(&out).trim(), image);

    let name = unique_name("orca-cli");
    let out = orca(
        &o,
        &[
            "run",
            "-d",
            "--name",
            &name,
            "-m",
            "64m",
            "--pids-limit",
            "50",
            &image,
            "sh",
            "-c",
            "echo started; sleep 300",
        ],
    );
    assert_success(&out, "orca run -d");
    let id = stdout(&out).trim().to_string();
    assert_eq!(id.len(), 64, "{id}");

    let out = orca(&o, &["ps", "-q"]);
    assert_eq!(stdout(&out).trim(), &id[..12]);
    let out = orca(&o, &["ps", "--format", "{{.Names}}|{{.Status}}|{{.Image}}"]);
    let s = stdout(&out);
    assert!(s.starts_with(&format!("{name}|Up ")), "{s}");
    assert!(s.trim_end().ends_with(&format!("|{image}")), "{s}");
    let out = orca(&o, &["ps"]);
    let s = stdout(&out);
    assert!(s.starts_with("CONTAINER ID   IMAGE"), "{s}");
    // The daemon's Command joins the arguments; 20 characters, quoted.
    assert!(s.contains("\"sh -c echo started;…\""), "{s}");
    let out = orca(&o, &["ps", "--format", "table {{.ID}}\\t{{.Names}}"]);
    let s = stdout(&out);
    assert_eq!(s, format!("CONTAINER ID   NAMES\n{}   {name}\n", &id[..12]));

    // logs (the line may take a moment to land).
    let mut logs = String::new();
    for _ in 0..50 {
        let out = orca(&o, &["logs", &name]);
        assert_success(&out, "orca logs");
        logs = stdout(&out);
        if logs.contains("started") {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(logs, "started\n");
    let out = orca(&o, &["logs", "--tail", "1", "-t", &name]);
    assert!(
        stdout(&out).trim_end().ends_with("Z started"),
        "{}",
        stdout(&out)
    );

    // inspect.
    let out = orca(
        &o,
        &[
            "inspect",
            "--format",
            "{{.State.Status}} {{.HostConfig.Memory}}",
            &name,
        ],
    );
    assert_success(&out, "orca inspect --format");
    assert_eq!(stdout(&out).trim(), format!("running {}", 64 << 20));
    let out = orca(&o, &["inspect", &name]);
    let v: Value = serde_json::from_str(&stdout(&out)).expect("inspect prints a JSON array");
    assert_eq!(v[0]["Id"], id.as_str());
    assert!(
        stdout(&out).starts_with("[\n    {\n"),
        "docker's 4-space indent"
    );

    // exec: orcad may or may not implement it yet.
    let out = orca(&o, &["exec", &name, "echo", "from-exec"]);
    if route_status(&o, "GET", "/v1.44/exec/nope/json") == 501 {
        assert_ne!(code(&out), 0);
        assert!(
            stderr(&out).contains("Error response from daemon"),
            "{}",
            stderr(&out)
        );
    } else {
        assert_success(&out, "orca exec");
        assert_eq!(stdout(&out), "from-exec\n");
        let out = orca(
            &o,
            &[
                "exec",
                "-e",
                "X=1",
                "-w",
                "/etc",
                &name,
                "sh",
                "-c",
                "echo $X $(pwd); exit 5",
            ],
        );
        assert_eq!(code(&out), 5, "{}", stderr(&out));
        assert_eq!(stdout(&out), "1 /etc\n");
        let out = orca_with_stdin(&o, &["exec", "-i", &name, "cat"], b"piped\n");
        assert_success(&out, "orca exec -i");
        assert_eq!(stdout(&out), "piped\n");
        let out = orca(&o, &["exec", "-d", &name, "touch", "/tmp/detached"]);
        assert_success(&out, "orca exec -d");
    }

    // stats --no-stream (orcad may not implement stats yet).
    let out = orca(&o, &["stats", "--no-stream", &name]);
    if out.status.success() {
        let s = stdout(&out);
        assert!(s.starts_with("CONTAINER ID   NAME"), "{s}");
        assert!(s.contains(&id[..12]), "{s}");
    } else {
        assert!(
            stderr(&out).contains("Error response from daemon"),
            "{}",
            stderr(&out)
        );
    }

    let out = orca(&o, &["stop", "-t", "1", &name]);
    assert_success(&out, "orca stop");
    assert_eq!(stdout(&out).trim(), name);
    let out = orca(
        &o,
        &[
            "inspect",
            "-f",
            "{{.State.Status}} {{.State.ExitCode}}",
            &name,
        ],
    );
    assert_eq!(
        stdout(&out).trim().split(' ').next(),
        Some("exited"),
        "{}",
        stdout(&out)
    );
    let out = orca(&o, &["ps", "-a", "--format", "{{.Names}} {{.State}}"]);
    assert!(
        stdout(&out).contains(&format!("{name} exited")),
        "{}",
        stdout(&out)
    );
    let out = orca(&o, &["rm", &name]);
    assert_success(&out, "orca rm");
    assert_eq!(stdout(&out).trim(), name);
    let out = orca(&o, &["ps", "-a", "-q"]);
    assert_eq!(stdout(&out).trim(), "");

    // rm -f of a running container.
    let out = orca(&o, &["run", "-d", &image, "sleep", "300"]);
    let id2 = stdout(&out).trim().to_string();
    let out = orca(&o, &["rm", "-f", &id2[..12]]);
    assert_success(&out, "orca rm -f");
}

#[test]
fn orca_daemon_selection() {
    let (_c, o) = setup();
    let good = host_of(&o);
    let bad = "unix:///nonexistent/orca-test.sock";
    let ping = |c: &mut Command| {
        run_with_limit(c.args(["version", "--format", "{{.Server.ApiVersion}}"]), T).unwrap()
    };

    let out = ping(orca_cmd().args(["-H", &good]));
    assert_success(&out, "-H");
    assert_eq!(stdout(&out).trim(), "1.44");
    let out = ping(orca_cmd().env("ORCA_HOST", &good).env("DOCKER_HOST", bad));
    assert_success(&out, "ORCA_HOST before DOCKER_HOST");
    let out = ping(orca_cmd().env("DOCKER_HOST", &good));
    assert_success(&out, "DOCKER_HOST");
    let out = ping(orca_cmd().args(["--host", bad]).env("ORCA_HOST", &good));
    assert_eq!(code(&out), 1, "-H wins over ORCA_HOST");
    assert!(
        stderr(&out).contains(&format!("Cannot connect to the Orca daemon at {bad}")),
        "{}",
        stderr(&out)
    );
    let out = run_with_limit(orca_cmd().args(["-H", "ssh://me@box", "ps"]), T).unwrap();
    assert_ne!(code(&out), 0);
    assert!(
        stderr(&out).contains("unsupported protocol scheme"),
        "{}",
        stderr(&out)
    );
    // The default socket is orcad's (not running here, or not this one).
    let out = run_with_limit(orca_cmd().args(["ps"]), T).unwrap();
    if !Path::new("/run/orca/orca.sock").exists() {
        assert!(
            stderr(&out).contains("unix:///run/orca/orca.sock"),
            "{}",
            stderr(&out)
        );
    }
}

#[test]
fn orca_bad_input_and_unimplemented_commands() {
    let (_c, o) = setup();

    let out = orca(&o, &["frobnicate"]);
    assert_eq!(code(&out), 1);
    assert!(
        stderr(&out).contains("orca: unknown command: orca frobnicate"),
        "{}",
        stderr(&out)
    );
    let out = orca(&o, &["ps", "--bogus"]);
    assert_eq!(code(&out), 125);
    assert!(
        stderr(&out).contains("unknown flag: --bogus"),
        "{}",
        stderr(&out)
    );
    let out = orca(&o, &["stop"]);
    assert_eq!(code(&out), 1, "missing argument: {}", stderr(&out));
    let out = orca(&o, &["--help"]);
    assert_success(&out, "orca --help");
    assert!(stdout(&out).contains("run"), "{}", stdout(&out));

    for args in [
        &["rm", "nope"][..],
        &["stop", "nope"],
        &["logs", "nope"],
        &["exec", "nope", "true"],
    ] {
        let out = orca(&o, args);
        assert_eq!(code(&out), 1, "{args:?}: {}", stderr(&out));
        assert_eq!(
            stderr(&out).trim(),
            "Error response from daemon: No such container: nope",
            "{args:?}"
        );
    }
    let out = orca(&o, &["inspect", "nope"]);
    assert_eq!(code(&out), 1);
    assert_eq!(stdout(&out).trim(), "[]");
    assert_eq!(stderr(&out).trim(), "Error: No such object: nope");
    let out = orca(&o, &["run", "--rm", "-m", "lots", "busybox"]);
    assert_eq!(code(&out), 125, "{}", stderr(&out));
    let out = orca(&o, &["run", "--rm", "127.0.0.1:1/none/such:latest"]);
    assert_eq!(code(&out), 125, "{}", stderr(&out));
    assert!(stderr(&out).contains("orca: "), "{}", stderr(&out));

    // Routes orcad may not implement: the CLI sends the request and shows
    // the daemon's answer; it never fakes a result.
    let checks: [(&[&str], &str, &str); 4] = [
        (&["system", "df"], "GET", "/v1.44/system/df"),
        (&["events", "--until", "1"], "GET", "/v1.44/events?until=1"),
        (
            &["system", "prune", "-f"],
            "POST",
            "/v1.44/containers/prune",
        ),
        (
            &["save", "-o", "/dev/null", "busybox"],
            "GET",
            "/v1.44/images/get?names=busybox",
        ),
    ];
    for (args, method, path) in checks {
        let status = route_status(&o, method, path);
        let out = orca(&o, args);
        if status == 501 {
            assert_ne!(code(&out), 0, "{args:?}");
            let e = stderr(&out);
            assert!(
                e.starts_with("Error response from daemon: "),
                "{args:?}: {e}"
            );
            assert!(e.contains("not implemented"), "{args:?}: {e}");
        } else if status < 300 {
            assert_success(&out, &format!("orca {args:?}"));
        } else {
            assert_ne!(code(&out), 0, "{args:?}");
            assert!(
                stderr(&out).starts_with("Error response from daemon: "),
                "{args:?}: {}",
                stderr(&out)
            );
        }
    }
    // On a missing container: "No such container" where implemented, the
    // daemon's 501 message where not.
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("f");
    std::fs::write(&local, b"x").unwrap();
    let local = local.display().to_string();
    let checks: [(&[&str], &str, &str); 3] = [
        (
            &["export", "-o", "/dev/null", "nope"],
            "GET",
            "/v1.44/containers/nope/export",
        ),
        (
            &["cp", "nope:/etc/hostname", &local],
            "GET",
            "/v1.44/containers/nope/archive?path=/etc/hostname",
        ),
        (
            &["cp", &local, "nope:/tmp/"],
            "PUT",
            "/v1.44/containers/nope/archive?path=/tmp/",
        ),
    ];
    for (args, method, path) in checks {
        let status = route_status(&o, method, path);
        let out = orca(&o, args);
        assert_ne!(code(&out), 0, "{args:?}");
        let e = stderr(&out);
        if status == 501 {
            assert!(
                e.starts_with("Error response from daemon: ") && e.contains("not implemented"),
                "{args:?}: {e}"
            );
        } else {
            assert_eq!(
                e.trim(),
                "Error response from daemon: No such container: nope",
                "{args:?} (route {status})"
            );
        }
    }
}

#[test]
fn orca_volume_commands() {
    let (_c, o) = setup();
    let (_reg, image) = Registry::with_busybox();
    assert_success(&orca(&o, &["pull", &image]), "orca pull");
    let v = unique_name("ov");
    let out = orca(&o, &["volume", "create", "--label", "a=b", &v]);
    assert_success(&out, "orca volume create");
    assert_eq!(stdout(&out).trim(), v);
    // ls: docker's table, -q, filters.
    let out = orca(&o, &["volume", "ls"]);
    assert_success(&out, "orca volume ls");
    let ls = stdout(&out);
    assert!(ls.starts_with("DRIVER    VOLUME NAME\n"), "{ls}");
    assert!(ls.contains(&format!("local     {v}")), "{ls}");
    let out = orca(&o, &["volume", "ls", "-q", "--filter", "label=a=b"]);
    assert_eq!(stdout(&out).trim(), v);
    let out = orca(&o, &["volume", "ls", "-q", "--filter", "label=a=c"]);
    assert_eq!(stdout(&out).trim(), "");
    // inspect (JSON and --format).
    let out = orca(&o, &["volume", "inspect", &v]);
    assert_success(&out, "orca volume inspect");
    let i: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(i[0]["Name"], v.as_str());
    assert_eq!(i[0]["Labels"]["a"], "b");
    let out = orca(
        &o,
        &["volume", "inspect", "-f", "{{.Driver}} {{.Scope}}", &v],
    );
    assert_eq!(stdout(&out).trim(), "local local");
    // -v name:/path through `orca run`, data kept between containers.
    let out = orca(
        &o,
        &[
            "run",
            "--rm",
            "-v",
            &format!("{v}:/d"),
            &image,
            "sh",
            "-c",
            "echo hi > /d/f",
        ],
    );
    assert_success(&out, "orca run -v");
    let holder = unique_name("holder");
    let out = orca(
        &o,
        &[
            "run",
            "--name",
            &holder,
            "-v",
            &format!("{v}:/d"),
            &image,
            "cat",
            "/d/f",
        ],
    );
    assert_eq!(stdout(&out).trim(), "hi");
    // --volumes-from (read-only).
    let out = orca(
        &o,
        &[
            "run",
            "--rm",
            "--volumes-from",
            &format!("{holder}:ro"),
            &image,
            "sh",
            "-c",
            "cat /d/f; touch /d/x 2>/dev/null && echo rw || echo ro",
        ],
    );
    assert_eq!(stdout(&out), "hi\nro\n", "{}", stderr(&out));
    // In use → the daemon's 409, exit 1.
    let out = orca(&o, &["volume", "rm", &v]);
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("volume is in use"),
        "{}",
        stderr(&out)
    );
    assert_success(&orca(&o, &["rm", &holder]), "orca rm");
    // Bad names and unknown volumes.
    let out = orca(&o, &["volume", "create", "no/slash"]);
    assert_ne!(code(&out), 0);
    assert!(
        stderr(&out).contains("includes invalid characters"),
        "{}",
        stderr(&out)
    );
    let out = orca(&o, &["volume", "inspect", "nope-nope"]);
    assert_eq!(code(&out), 1);
    assert!(stderr(&out).contains("no such volume"), "{}", stderr(&out));
    // prune: anonymous only, then --all.
    let anon = stdout(&orca(&o, &["volume", "create"])).trim().to_string();
    let out = orca(&o, &["volume", "prune", "-f"]);
    assert_success(&out, "orca volume prune");
    assert!(stdout(&out).contains(&anon), "{}", stdout(&out));
    assert!(!stdout(&out).contains(&v), "{}", stdout(&out));
    let out = orca(&o, &["volume", "prune", "-f", "--all"]);
    assert!(stdout(&out).contains(&v), "{}", stdout(&out));
    assert_eq!(stdout(&orca(&o, &["volume", "ls", "-q"])).trim(), "");
    let out = orca(&o, &["volume", "rm", &v]);
    assert_eq!(code(&out), 1);
    assert_success(&orca(&o, &["volume", "rm", "-f", &v]), "orca volume rm -f");
}
