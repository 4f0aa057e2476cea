//! orcad driven by the real docker CLI (28.x) on Debian's containerd 1.6:
//! version/info, pull from a loopback registry, images, run (--rm, exit
//! codes), detached run + ps/logs/stop/rm, inspect, and bad input.

use std::time::Duration;

use orca_integration::engine_support::{Orcad, DOCKER_CLI};
use orca_integration::{
    assert_success, cgroup_leftovers, require_root, require_tool, unique_name, wait_until,
    Containerd, Registry,
};
use serde_json::Value;

const T: Duration = Duration::from_secs(120);

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn setup() -> (Containerd, Orcad) {
    require_root();
    require_tool(DOCKER_CLI);
    let c = Containerd::start();
    let o = Orcad::start(&c);
    (c, o)
}

#[test]
fn docker_version_info_and_ping() {
    let (_c, o) = setup();
    let out = o.docker(&["version", "--format", "{{json .}}"], T);
    assert_success(&out, "docker version");
    let v: Value = serde_json::from_str(stdout(&out).trim()).expect("docker version prints JSON");
    assert_eq!(v["Server"]["ApiVersion"], "1.44", "{v}");
    assert_eq!(v["Server"]["Os"], "linux");
    let comps = v["Server"]["Components"].as_array().expect("components");
    assert!(
        comps.iter().any(|c| c["Name"] == "containerd"
            && c["Version"].as_str().is_some_and(|s| s.contains("1.6"))),
        "containerd component: {v}"
    );

    let out = o.docker(&["info", "--format", "{{json .}}"], T);
    assert_success(&out, "docker info");
    let i: Value = serde_json::from_str(stdout(&out).trim()).expect("docker info prints JSON");
    assert_eq!(i["Containers"], 0, "{i}");
    assert_eq!(i["OSType"], "linux");
    assert_eq!(i["LoggingDriver"], "json-file");
    assert!(i["NCPU"].as_u64().unwrap_or(0) >= 1);
    // Plain `docker info` renders without errors either.
    let out = o.docker(&["info"], T);
    assert_success(&out, "docker info");
    assert!(stdout(&out).contains("Server Version"), "{}", stdout(&out));

    // _ping headers the CLI negotiates with.
    let (code, body) = o.http("GET", "/_ping", None).unwrap();
    assert_eq!((code, body.as_slice()), (200, b"OK".as_slice()));
    let (code, _) = o.http("HEAD", "/_ping", None).unwrap();
    assert_eq!(code, 200);
}

#[test]
fn engine_rejects_bad_input_with_docker_errors() {
    let (_c, o) = setup();
    let msg = |b: &[u8]| -> String {
        let v: Value = serde_json::from_slice(b).unwrap_or_else(|e| {
            panic!(
                "error body is not JSON ({e}): {}",
                String::from_utf8_lossy(b)
            )
        });
        v["message"]
            .as_str()
            .unwrap_or_else(|| panic!("no message in {v}"))
            .to_string()
    };
    // Malformed JSON body.
    let (code, body) = o
        .http("POST", "/v1.44/containers/create", Some(b"{not json"))
        .unwrap();
    assert_eq!(code, 400, "{}", String::from_utf8_lossy(&body));
    assert!(msg(&body).contains("invalid JSON"), "{}", msg(&body));
    // Unknown container.
    let (code, body) = o
        .http("GET", "/v1.44/containers/nope-nope/json", None)
        .unwrap();
    assert_eq!(code, 404);
    assert_eq!(msg(&body), "No such container: nope-nope");
    let out = o.docker(&["inspect", "--type", "container", "nope-nope"], T);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("No such container: nope-nope"),
        "{}",
        stderr(&out)
    );
    // Invalid name.
    let (code, body) = o
        .http(
            "POST",
            "/v1.44/containers/create?name=bad%20name",
            Some(br#"{"Image":"busybox"}"#),
        )
        .unwrap();
    assert_eq!(code, 400);
    assert!(
        msg(&body).contains("Invalid container name (bad name)"),
        "{}",
        msg(&body)
    );
    // Unknown image: the 404 the CLI pulls on.
    let (code, body) = o
        .http(
            "POST",
            "/v1.44/containers/create",
            Some(br#"{"Image":"127.0.0.1:1/nothing:here","Cmd":["true"]}"#),
        )
        .unwrap();
    assert_eq!(code, 404);
    assert_eq!(msg(&body), "No such image: 127.0.0.1:1/nothing:here");
    // API versions.
    let (code, body) = o.http("GET", "/v1.99/version", None).unwrap();
    assert_eq!(code, 400);
    assert_eq!(
        msg(&body),
        "client version 1.99 is too new. Maximum supported API version is 1.44"
    );
    let (code, _) = o.http("GET", "/v1.24/version", None).unwrap();
    assert_eq!(code, 200);
    let (code, _) = o.http("GET", "/version", None).unwrap();
    assert_eq!(code, 200);
    // Not implemented yet: 501, never a fake success.
    let (code, body) = o.http("GET", "/v1.44/containers/x/changes", None).unwrap();
    assert_eq!(code, 501);
    assert!(
        msg(&body).contains("not implemented in orcad yet"),
        "{}",
        msg(&body)
    );
    let (code, body) = o
        .http(
            "POST",
            "/v1.44/containers/create",
            Some(br#"{"Image":"busybox","HostConfig":{"CgroupnsMode":"private"}}"#),
        )
        .unwrap();
    assert_eq!(code, 501, "{}", String::from_utf8_lossy(&body));
}

#[test]
fn docker_pull_images_and_run() {
    let (_c, o) = setup();
    let (_reg, image) = Registry::with_busybox();

    let out = o.docker(&["pull", &image], T);
    assert_success(&out, "docker pull");
    let s = stdout(&out);
    assert!(s.contains("Pull complete"), "{s}");
    assert!(s.contains("Digest: sha256:"), "{s}");
    assert!(
        s.contains(&format!("Status: Downloaded newer image for {image}")),
        "{s}"
    );
    // Again: up to date.
    let out = o.docker(&["pull", &image], T);
    assert_success(&out, "docker pull (again)");
    assert!(
        stdout(&out).contains("Image is up to date"),
        "{}",
        stdout(&out)
    );

    let out = o.docker(
        &[
            "images",
            "--format",
            "{{.Repository}}:{{.Tag}} {{.ID}} {{.Size}}",
        ],
        T,
    );
    assert_success(&out, "docker images");
    let repo = image.rsplit_once(':').unwrap().0;
    assert!(
        stdout(&out).contains(&format!("{repo}:latest ")),
        "{}",
        stdout(&out)
    );

    // Image inspect.
    let out = o.docker(&["image", "inspect", &image], T);
    assert_success(&out, "docker image inspect");
    let v: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert!(v[0]["Id"].as_str().unwrap().starts_with("sha256:"), "{v}");

    // run --rm: output, exit codes, container gone.
    let out = o.docker(&["run", "--rm", &image, "echo", "hi"], T);
    assert_success(&out, "docker run --rm echo hi");
    assert_eq!(stdout(&out), "hi\n", "stderr: {}", stderr(&out));
    let out = o.docker(
        &[
            "run",
            "--rm",
            &image,
            "sh",
            "-c",
            "echo out; echo err >&2; exit 3",
        ],
        T,
    );
    assert_eq!(
        out.status.code(),
        Some(3),
        "stdout: {} stderr: {}",
        stdout(&out),
        stderr(&out)
    );
    assert_eq!(stdout(&out), "out\n");
    assert!(stderr(&out).contains("err\n"), "{}", stderr(&out));
    let ok = wait_until(Duration::from_secs(10), || {
        let ps = o.docker(&["ps", "-aq"], T);
        ps.status.success() && stdout(&ps).trim().is_empty()
    });
    assert!(
        ok,
        "--rm containers are removed: {}",
        stdout(&o.docker(&["ps", "-a"], T))
    );

    // A missing executable: 127 as with dockerd, and --rm still removes it
    // (the CLI waits for the removal after a failed start).
    let out = o.docker(&["run", "--rm", &image, "/no/such/binary"], T);
    assert_eq!(
        out.status.code(),
        Some(127),
        "stdout: {} stderr: {}",
        stdout(&out),
        stderr(&out)
    );
    let out = o.docker(&["ps", "-aq"], T);
    assert!(stdout(&out).trim().is_empty(), "{}", stdout(&out));

    // run without --rm; the record stays with its exit code.
    let name = unique_name("orca-run");
    let out = o.docker(
        &[
            "run",
            "--name",
            &name,
            &image,
            "sh",
            "-c",
            "echo $HOSTNAME; exit 7",
        ],
        T,
    );
    assert_eq!(out.status.code(), Some(7), "stderr: {}", stderr(&out));
    let out = o.docker(&["inspect", &name], T);
    assert_success(&out, "docker inspect");
    let v: Value = serde_json::from_str(&stdout(&out)).unwrap();
    let c = &v[0];
    assert_eq!(c["Name"], format!("/{name}"));
    assert_eq!(c["State"]["Status"], "exited");
    assert_eq!(c["State"]["ExitCode"], 7);
    assert_eq!(c["State"]["Running"], false);
    let id = c["Id"].as_str().unwrap();
    assert_eq!(stdout(&o.docker(&["logs", &name], T)).trim(), &id[..12]);
    // Name conflict.
    let out = o.docker(&["create", "--name", &name, &image, "true"], T);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("is already in use"),
        "{}",
        stderr(&out)
    );
    assert_success(&o.docker(&["rm", &name], T), "docker rm");
    // No container uses the image any more: rmi deletes it.
    let out = o.docker(&["rmi", &image], T);
    assert_success(&out, "docker rmi");
    assert!(
        stdout(&out).contains(&format!("Untagged: {image}")),
        "{}",
        stdout(&out)
    );
    if std::env::var_os("ORCA_DEBUG_DUMP").is_some() {
        for args in [
            &["content", "ls"][..],
            &["snapshots", "ls"],
            &["images", "ls"],
            &["leases", "ls"],
            &["containers", "ls"],
        ] {
            eprintln!("ctr {args:?}:\n{}", stdout(&_c.ctr_ns("orca", args)));
        }
        eprintln!("{}", o.log());
    }
}

#[test]
fn docker_detached_ps_logs_stop_rm() {
    let (_c, o) = setup();
    let (_reg, image) = Registry::with_busybox();
    let name = unique_name("orca-d");
    // The CLI pulls on the create 404.
    let out = o.docker(
        &[
            "run",
            "-d",
            "--name",
            &name,
            &image,
            "sh",
            "-c",
            "echo started; echo warn >&2; exec sleep 100",
        ],
        T,
    );
    assert_success(&out, "docker run -d");
    assert!(
        stderr(&out).contains("Unable to find image"),
        "{}",
        stderr(&out)
    );
    let id = stdout(&out).lines().last().unwrap_or("").trim().to_string();
    assert_eq!(id.len(), 64, "{}", stdout(&out));

    let out = o.docker(&["ps", "--format", "{{.ID}} {{.Names}} {{.Status}}"], T);
    assert_success(&out, "docker ps");
    let s = stdout(&out);
    assert!(s.contains(&format!("{} {name} Up", &id[..12])), "{s}");

    let ok = wait_until(Duration::from_secs(10), || {
        stdout(&o.docker(&["logs", &name], T)) == "started\n"
    });
    assert!(ok, "logs: {:?}", stdout(&o.docker(&["logs", &name], T)));
    let out = o.docker(&["logs", &name], T);
    assert_eq!(stderr(&out), "warn\n");
    let out = o.docker(&["logs", "--tail", "1", "-t", &id[..8]], T);
    assert_success(&out, "docker logs --tail 1 -t");

    let out = o.docker(&["inspect", &name], T);
    let v: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(v[0]["State"]["Running"], true, "{v}");
    assert!(v[0]["State"]["Pid"].as_u64().unwrap_or(0) > 0);
    assert_eq!(v[0]["Config"]["Image"], image.as_str());

    // rm of a running container: 409.
    let out = o.docker(&["rm", &name], T);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("container is running"),
        "{}",
        stderr(&out)
    );

    // stop: sleep as pid 1 ignores SIGTERM, so -t 1 ends in SIGKILL.
    let out = o.docker(&["stop", "-t", "1", &name], T);
    assert_success(&out, "docker stop");
    let out = o.docker(
        &[
            "inspect",
            "--format",
            "{{.State.Status}} {{.State.ExitCode}}",
            &name,
        ],
        T,
    );
    assert_eq!(stdout(&out).trim(), "exited 137");
    let out = o.docker(
        &[
            "ps",
            "-a",
            "--filter",
            "status=exited",
            "--format",
            "{{.Names}} {{.Status}}",
        ],
        T,
    );
    assert!(
        stdout(&out).contains(&format!("{name} Exited (137)")),
        "{}",
        stdout(&out)
    );
    assert!(!stdout(&o.docker(&["ps", "-q"], T)).contains(&id[..12]));

    assert_success(&o.docker(&["rm", &name], T), "docker rm");
    let leftovers = cgroup_leftovers(&format!("{}/{id}", o.cgroup_parent()));
    assert!(leftovers.is_empty(), "cgroups left after rm: {leftovers:?}");
    let out = o.docker(&["ps", "-aq"], T);
    assert!(stdout(&out).trim().is_empty(), "{}", stdout(&out));

    // logs -f follows until the container exits; docker wait prints the code.
    let out = o.docker(
        &[
            "run",
            "-d",
            &image,
            "sh",
            "-c",
            "echo a; sleep 1; echo b; exit 4",
        ],
        T,
    );
    assert_success(&out, "docker run -d (follow)");
    let id3 = stdout(&out).trim().to_string();
    let out = o.docker(&["logs", "-f", &id3], T);
    assert_success(&out, "docker logs -f");
    assert_eq!(stdout(&out), "a\nb\n");
    let out = o.docker(&["wait", &id3], T);
    assert_eq!(stdout(&out).trim(), "4", "{}", stderr(&out));
    // kill of a stopped container: 409.
    let out = o.docker(&["kill", &id3], T);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("is not running"), "{}", stderr(&out));
    assert_success(&o.docker(&["rm", &id3], T), "docker rm");

    // rm -f of a running one.
    let out = o.docker(&["run", "-d", &image, "sleep", "100"], T);
    assert_success(&out, "docker run -d sleep");
    let id2 = stdout(&out).trim().to_string();
    assert_success(&o.docker(&["rm", "-f", &id2], T), "docker rm -f");
    let out = o.docker(&["inspect", &id2], T);
    assert!(!out.status.success());
}
