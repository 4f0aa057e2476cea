//! orca-supervisor judged by Debian's `ctr` (containerd 1.6): the client
//! side of `ctr` drives content, images, leases, snapshots, diff, containers
//! and tasks exactly as it drives containerd.

use std::time::Duration;

use orca_integration::{
    assert_success, require_root, require_tool, unique_name, wait_until, Registry, Supervisor,
};

const NS: &str = "test";

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[track_caller]
fn ctr_ok(s: &Supervisor, args: &[&str]) -> String {
    s.ctr_ok_ns(NS, args)
}

#[test]
fn ctr_version_and_namespaces() {
    require_root();
    let s = Supervisor::start();
    let v = ctr_ok(&s, &["version"]);
    assert!(v.contains("orca-supervisor"), "server version missing: {v}");
    ctr_ok(&s, &["namespaces", "create", "other", "team=a"]);
    let ls = ctr_ok(&s, &["namespaces", "ls"]);
    assert!(ls.contains("other") && ls.contains("team=a"), "{ls}");
    let dup = s.ctr_ns(NS, &["namespaces", "create", "other"]);
    assert!(
        !dup.status.success(),
        "creating an existing namespace must fail"
    );
    ctr_ok(&s, &["namespaces", "remove", "other"]);
    assert!(!ctr_ok(&s, &["namespaces", "ls", "-q"]).contains("other"));
    let plugins = ctr_ok(&s, &["plugins", "ls"]);
    assert!(plugins.contains("overlayfs"), "{plugins}");
}

#[test]
fn ctr_pull_lists_and_runs_busybox() {
    require_root();
    require_tool("containerd-shim-runc-v2");
    require_tool("runc");
    let (_reg, image) = Registry::with_busybox();
    let s = Supervisor::start();

    let pull = ctr_ok(&s, &["images", "pull", "--plain-http", &image]);
    assert!(pull.contains("unpacking"), "{pull}");
    let images = ctr_ok(&s, &["images", "ls"]);
    assert!(
        images.contains(&image),
        "images ls does not show {image}: {images}"
    );
    let check = ctr_ok(&s, &["images", "check"]);
    assert!(check.contains("complete"), "{check}");
    let content = ctr_ok(&s, &["content", "ls"]);
    assert!(
        content.lines().count() >= 4,
        "manifest, config and layer expected: {content}"
    );
    let snaps = ctr_ok(&s, &["snapshots", "ls"]);
    assert!(snaps.contains("Committed"), "{snaps}");
    // Pull's temporary lease is gone; a lease we create is listed.
    ctr_ok(
        &s,
        &["leases", "create", "--id", "my-lease", "purpose=test"],
    );
    assert!(ctr_ok(&s, &["leases", "ls"]).contains("my-lease"));
    ctr_ok(&s, &["leases", "rm", "my-lease"]);
    // A second pull finds everything present.
    ctr_ok(&s, &["images", "pull", "--plain-http", &image]);

    // run --rm: output and exit code.
    let id = unique_name("sup-run");
    let out = ctr_ok(
        &s,
        &[
            "run",
            "--rm",
            "--runtime",
            "io.containerd.runc.v2",
            &image,
            &id,
            "echo",
            "hi",
        ],
    );
    assert_eq!(out.trim(), "hi");
    let fail = s.ctr_ns(
        NS,
        &[
            "run",
            "--rm",
            "--runtime",
            "io.containerd.runc.v2",
            &image,
            &id,
            "sh",
            "-c",
            "exit 3",
        ],
    );
    assert_eq!(
        fail.status.code(),
        Some(3),
        "exit code: {}",
        String::from_utf8_lossy(&fail.stderr)
    );
    assert!(ctr_ok(&s, &["containers", "ls", "-q"]).trim().is_empty());
    assert!(
        !ctr_ok(&s, &["snapshots", "ls"]).contains(&id),
        "--rm removes the container's snapshot"
    );

    // run -d, then the task verbs.
    let id = unique_name("sup-d");
    ctr_ok(
        &s,
        &[
            "run",
            "-d",
            "--runtime",
            "io.containerd.runc.v2",
            &image,
            &id,
            "sleep",
            "300",
        ],
    );
    let ls = ctr_ok(&s, &["tasks", "ls"]);
    assert!(ls.contains(&id) && ls.contains("RUNNING"), "{ls}");
    let exec = ctr_ok(
        &s,
        &["tasks", "exec", "--exec-id", "e1", &id, "echo", "from-exec"],
    );
    assert_eq!(exec.trim(), "from-exec");
    let ps = ctr_ok(&s, &["tasks", "ps", &id]);
    assert!(ps.lines().count() >= 2, "{ps}");
    ctr_ok(&s, &["tasks", "pause", &id]);
    assert!(ctr_ok(&s, &["tasks", "ls"]).contains("PAUSED"));
    ctr_ok(&s, &["tasks", "resume", &id]);
    assert!(ctr_ok(&s, &["tasks", "ls"]).contains("RUNNING"));
    let metrics = ctr_ok(&s, &["tasks", "metrics", &id]);
    assert!(
        metrics.contains("memory") || metrics.contains("pids"),
        "{metrics}"
    );
    ctr_ok(&s, &["tasks", "kill", "-s", "SIGKILL", &id]);
    assert!(
        wait_until(Duration::from_secs(10), || ctr_ok(&s, &["tasks", "ls"])
            .contains("STOPPED")),
        "task did not stop"
    );
    // The runc shim forwards its events over ttrpc to <address>.ttrpc.
    assert!(
        wait_until(Duration::from_secs(5), || s
            .log()
            .contains("topic=/tasks/exit")),
        "no /tasks/exit event forwarded by the shim"
    );
    ctr_ok(&s, &["tasks", "delete", &id]);
    ctr_ok(&s, &["containers", "delete", &id]);
    assert!(ctr_ok(&s, &["tasks", "ls", "-q"]).trim().is_empty());
}

#[test]
fn ctr_events_sees_supervisor_and_published_events() {
    require_root();
    let s = Supervisor::start();
    let mut events = s.ctr_cmd_ns(NS);
    events.args(["events"]);
    let out = tempfile::NamedTempFile::new().unwrap();
    events.stdout(out.reopen().unwrap());
    let mut child = events.spawn().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    ctr_ok(&s, &["namespaces", "create", "evns"]);
    // What shims started with -publish-binary run: the event Any on stdin.
    // google.protobuf.Any{type_url: "containerd.events.TaskOOM",
    // value: TaskOOM{container_id: "published-oom"}}, encoded by hand.
    let type_url = b"containerd.events.TaskOOM";
    let value: Vec<u8> = [0x0a, 13].into_iter().chain(*b"published-oom").collect();
    let mut any = vec![0x0a, type_url.len() as u8];
    any.extend_from_slice(type_url);
    any.extend_from_slice(&[0x12, value.len() as u8]);
    any.extend_from_slice(&value);
    let mut publish = std::process::Command::new(orca_integration::bin_path("orca-supervisor"))
        .arg("--address")
        .arg(s.socket())
        .args([
            "publish",
            "--topic",
            "/orca/test-published",
            "--namespace",
            NS,
        ])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut publish.stdin.take().unwrap(), &any).unwrap();
    assert!(
        publish.wait().unwrap().success(),
        "orca-supervisor publish failed: {}",
        s.log()
    );
    let seen = wait_until(Duration::from_secs(5), || {
        let text = std::fs::read_to_string(out.path()).unwrap_or_default();
        text.contains("/namespaces/create") && text.contains("published-oom")
    });
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        seen,
        "ctr events did not print /namespaces/create and the published event: {:?}",
        std::fs::read_to_string(out.path())
    );
}

#[test]
fn unknown_snapshotter_and_missing_namespace_are_errors() {
    require_root();
    let s = Supervisor::start();
    let out = s.ctr_ns(NS, &["snapshots", "--snapshotter", "btrfs", "ls"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("btrfs"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = s.ctr_ns(
        NS,
        &[
            "content",
            "get",
            "sha256:0000000000000000000000000000000000000000000000000000000000000000",
        ],
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not found"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = assert_success;
}

/// A docker-archive image whose only layer writes `../escape`: `ctr images
/// import` stores it (content Write) and unpacks it (diff Apply), which must
/// refuse the layer and write nothing outside the snapshot.
#[test]
fn ctr_import_of_a_traversal_layer_is_rejected() {
    use sha2::{Digest, Sha256};
    require_root();
    let s = Supervisor::start();
    let name = unique_name("escape");

    let mut layer = tar::Builder::new(Vec::new());
    for (path, data) in [
        ("ok.txt", &b"fine"[..]),
        ("../escape-from-layer", &b"pwned"[..]),
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1);
        h.set_size(data.len() as u64);
        // Raw name bytes: the tar crate's set_path refuses "..".
        h.as_old_mut().name[..path.len()].copy_from_slice(path.as_bytes());
        h.set_cksum();
        layer.append(&h, data).unwrap();
    }
    let layer = layer.into_inner().unwrap();
    let diff_id = format!("sha256:{}", hex::encode(Sha256::digest(&layer)));
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": ["/ok.txt"]},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    })
    .to_string();
    let config_hex = hex::encode(Sha256::digest(config.as_bytes()));
    let manifest = serde_json::json!([{
        "Config": format!("{config_hex}.json"),
        "RepoTags": [format!("{name}:latest")],
        "Layers": ["layer/layer.tar"],
    }])
    .to_string();
    let mut archive = tar::Builder::new(Vec::new());
    for (path, data) in [
        ("manifest.json".to_string(), manifest.as_bytes()),
        (format!("{config_hex}.json"), config.as_bytes()),
        ("layer/layer.tar".to_string(), layer.as_slice()),
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_path(&path).unwrap();
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        h.set_cksum();
        archive.append(&h, data).unwrap();
    }
    let archive_path = s.dir().join("evil.tar");
    std::fs::write(&archive_path, archive.into_inner().unwrap()).unwrap();

    let out = s.ctr_ns(NS, &["images", "import", archive_path.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "import of a traversal layer must fail: {}{stderr}",
        stdout(&out)
    );
    assert!(
        stderr.contains("\"../escape-from-layer\" rejected: path contains '..'"),
        "error should name the bad entry: {stderr}"
    );
    // Nothing landed next to the snapshot directories or anywhere above.
    let snapshots = s.dir().join("root/snapshots");
    for dir in [
        snapshots.clone(),
        s.dir().join("root"),
        s.dir().to_path_buf(),
    ] {
        assert!(
            !dir.join("escape-from-layer").exists(),
            "file written outside the snapshot in {}",
            dir.display()
        );
    }
    let leftovers: Vec<_> = walk(&s.dir().join("root"))
        .into_iter()
        .filter(|p| p.ends_with("escape-from-layer"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.symlink_metadata().map(|m| m.is_dir()).unwrap_or(false) {
                stack.push(p.clone());
            }
            out.push(p);
        }
    }
    out
}
