//! Checks that the fixtures work against the real peers (runs as root).

use std::process::Command;

use orca_integration::*;

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn busybox_rootfs_has_a_working_static_busybox() {
    require_root();
    require_tool("chroot");
    let dir = tempfile::tempdir().expect("temp dir");
    let rootfs = dir.path().join("rootfs");
    make_busybox_rootfs(&rootfs).expect("make_busybox_rootfs");
    // Twice into the same dir is fine (idempotent).
    make_busybox_rootfs(&rootfs).expect("make_busybox_rootfs again");
    for f in [
        "bin/busybox",
        "bin/sh",
        "bin/true",
        "bin/ls",
        "etc/passwd",
        "etc/group",
    ] {
        assert!(
            rootfs.join(f).symlink_metadata().is_ok(),
            "{f} missing in rootfs"
        );
    }
    assert!(!rootfs.join("etc/hostname").exists());
    for d in ["proc", "sys", "dev", "tmp", "root"] {
        assert!(rootfs.join(d).is_dir(), "{d}/ missing in rootfs");
    }
    use std::os::unix::fs::PermissionsExt;
    let tmp_mode = std::fs::metadata(rootfs.join("tmp"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(tmp_mode & 0o7777, 0o1777);

    let out = Command::new("chroot")
        .arg(&rootfs)
        .args(["/bin/sh", "-c", "echo ok; id -un; grep -c . /etc/group"])
        .output()
        .expect("run chroot");
    assert_success(&out, "chroot rootfs /bin/sh -c 'echo ok'");
    assert_eq!(stdout(&out), "ok\nroot\n2\n");
}

#[test]
fn default_spec_matches_runc_spec_shape() {
    let spec = default_spec(&["echo", "hello"]);
    assert_eq!(spec["process"]["terminal"], false);
    assert_eq!(
        spec["process"]["args"],
        serde_json::json!(["echo", "hello"])
    );
    assert_eq!(spec["root"]["path"], "rootfs");
    assert_eq!(spec["root"]["readonly"], true);
    assert_eq!(spec["hostname"], "orca");
    for set in ["bounding", "effective", "permitted"] {
        assert_eq!(
            spec["process"]["capabilities"][set]
                .as_array()
                .unwrap()
                .len(),
            14
        );
    }
    let ns: Vec<&str> = spec["linux"]["namespaces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["type"].as_str().unwrap())
        .collect();
    assert_eq!(ns, ["pid", "network", "ipc", "uts", "mount", "cgroup"]);
    assert_eq!(spec["mounts"].as_array().unwrap().len(), 7);

    // Every key runc's own `runc spec` writes is present in ours.
    if have("runc") {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new(which("runc").unwrap())
            .arg("spec")
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert_success(&out, "runc spec");
        let theirs: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.path().join("config.json")).unwrap())
                .unwrap();
        for (k, _) in theirs.as_object().unwrap() {
            assert!(spec.get(k).is_some(), "runc spec has {k:?}, ours does not");
        }
        assert_eq!(theirs["mounts"], spec["mounts"]);
        assert_eq!(theirs["linux"]["maskedPaths"], spec["linux"]["maskedPaths"]);
        assert_eq!(
            theirs["linux"]["readonlyPaths"],
            spec["linux"]["readonlyPaths"]
        );
    }
}

#[test]
fn bundle_runs_under_real_runc_and_leaves_nothing() {
    require_root();
    let bundle = Bundle::busybox(&["echo", "hello"]);
    let cg = bundle.cgroups_path();
    assert!(cg.starts_with("/orca-test/"), "cgroupsPath {cg:?}");
    assert_ne!(cg, Bundle::busybox(&["true"]).cgroups_path());
    {
        let runc = Runtime::runc();
        let id = unique_name("fx");
        let out = runc.run(&["run", "-b", bundle.path_str(), &id]);
        assert_success(&out, "runc run");
        assert_eq!(stdout(&out), "hello\n");
        assert!(runc.container_ids().is_empty(), "runc kept state after run");
    }
    assert_eq!(cgroup_leftovers(&cg), Vec::<std::path::PathBuf>::new());
    assert_eq!(
        mounts_under(bundle.path()),
        Vec::<std::path::PathBuf>::new()
    );
}

#[test]
fn config_mut_and_save_reach_the_container() {
    require_root();
    let mut bundle = Bundle::busybox(&["sh", "-c", "hostname; echo $FOO"]);
    bundle.config_mut()["hostname"] = "fixture".into();
    bundle.config_mut()["process"]["env"]
        .as_array_mut()
        .unwrap()
        .push("FOO=bar".into());
    bundle.save();
    let runc = Runtime::runc();
    let out = runc.run(&["run", "-b", bundle.path_str(), &unique_name("fx")]);
    assert_success(&out, "runc run");
    assert_eq!(stdout(&out), "fixture\nbar\n");
}

#[test]
fn runtime_drop_cleans_up_a_running_container() {
    require_root();
    let bundle = Bundle::busybox(&["sleep", "300"]);
    let cg = bundle.cgroups_path();
    let root;
    {
        let runc = Runtime::runc();
        root = runc.root().to_path_buf();
        let id = unique_name("fx");
        let out = runc.run(&["run", "-d", "-b", bundle.path_str(), &id]);
        assert_success(&out, "runc run -d");
        assert_eq!(runc.container_ids(), vec![id.clone()]);
        assert!(
            !cgroup_leftovers(&cg).is_empty(),
            "a running container has a cgroup"
        );
    }
    assert!(!root.exists(), "runtime root not removed");
    assert!(
        wait_until(std::time::Duration::from_secs(5), || cgroup_leftovers(&cg)
            .is_empty()),
        "cgroup left: {:?}",
        cgroup_leftovers(&cg)
    );
}

#[test]
fn crun_runs_the_bundle_through_its_wrapper() {
    require_root();
    let bundle = Bundle::busybox(&["echo", "hello"]);
    let crun = Runtime::crun();
    let out = crun.run(&["run", "-b", bundle.path_str(), &unique_name("fx")]);
    assert_success(&out, "crun run");
    assert_eq!(stdout(&out), "hello\n");
    assert_eq!(bundle.cgroup_leftovers(), Vec::<std::path::PathBuf>::new());
    if let Some(mut noop) = crun.wrapper_noop_cmd() {
        assert_success(&noop.output().unwrap(), "crun wrapper no-op");
    }
}

#[test]
fn oci_layout_passes_skopeo_and_umoci() {
    let img = OciImage::busybox("v1");
    let info = img.info().clone();
    assert_eq!(info.layer_digests.len(), 1);
    let layout = img.path();
    for f in ["oci-layout", "index.json"] {
        assert!(layout.join(f).is_file(), "{f} missing");
    }
    let blob = |d: &str| {
        layout
            .join("blobs/sha256")
            .join(d.strip_prefix("sha256:").unwrap())
    };
    let manifest = std::fs::read(blob(&info.manifest_digest)).unwrap();
    assert_eq!(sha256_digest(&manifest), info.manifest_digest);
    assert_eq!(manifest.len() as u64, info.manifest_size);
    let layer = std::fs::read(blob(&info.layer_digests[0])).unwrap();
    assert_eq!(sha256_digest(&layer), info.layer_digests[0]);
    // diff_id is the digest of the uncompressed tar.
    let mut tar = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&layer[..]), &mut tar).unwrap();
    assert_eq!(sha256_digest(&tar), info.diff_ids[0]);
    let names: Vec<String> = tar::Archive::new(&tar[..])
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().display().to_string())
        .collect();
    assert!(names.iter().any(|n| n == "bin/busybox"), "{names:?}");
    assert!(names.iter().any(|n| n == "etc/passwd"));

    // Deterministic: a second layout has the same digests.
    let dir2 = tempfile::tempdir().unwrap();
    let info2 = write_busybox_oci_layout(dir2.path(), "v1").unwrap();
    assert_eq!(info2, info);
    // A second tag in the same layout.
    write_busybox_oci_layout(layout, "v2").unwrap();

    let skopeo = require_tool("skopeo");
    for tag in ["v1", "v2"] {
        let out = Command::new(&skopeo)
            .args(["--insecure-policy", "inspect"])
            .arg(format!("oci:{}:{tag}", layout.display()))
            .output()
            .unwrap();
        assert_success(&out, "skopeo inspect oci:");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["Digest"], info.manifest_digest.as_str());
        assert_eq!(v["Architecture"], "amd64");
        assert_eq!(v["Os"], "linux");
        assert_eq!(v["Layers"], serde_json::json!(info.layer_digests));
    }
    let out = Command::new(&skopeo)
        .args(["--insecure-policy", "inspect", "--config"])
        .arg(img.skopeo_ref())
        .output()
        .unwrap();
    assert_success(&out, "skopeo inspect --config");
    let cfg: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(cfg["config"]["Cmd"], serde_json::json!(["sh"]));
    assert_eq!(cfg["rootfs"]["diff_ids"], serde_json::json!(info.diff_ids));

    let umoci = require_tool("umoci");
    let out = Command::new(umoci)
        .arg("stat")
        .arg("--image")
        .arg(format!("{}:v1", layout.display()))
        .output()
        .unwrap();
    assert_success(&out, "umoci stat");
}

#[test]
fn registry_serves_the_busybox_image() {
    let (reg, image) = Registry::with_busybox();
    assert!(image.starts_with(&reg.addr()), "{image}");
    let (code, _) = http_get(&reg.addr(), "/v2/").unwrap();
    assert_eq!(code, 200);
    let (code, body) = http_get(&reg.addr(), "/v2/library/busybox/tags/list").unwrap();
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
    let tags: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(tags["tags"], serde_json::json!(["latest"]));

    let out = Command::new(require_tool("skopeo"))
        .args(["--insecure-policy", "inspect", "--tls-verify=false"])
        .arg(format!("docker://{image}"))
        .output()
        .unwrap();
    assert_success(&out, "skopeo inspect docker://");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let info = write_busybox_oci_layout(dir.path(), "x").unwrap();
    assert_eq!(v["Digest"], info.manifest_digest.as_str());
    let addr = reg.addr();
    drop(reg);
    assert!(
        http_get(&addr, "/v2/").is_err(),
        "registry still answers after drop"
    );
}

#[test]
fn containerd_pulls_from_the_registry_and_runs() {
    require_root();
    let (reg, image) = Registry::with_busybox();
    let ctrd = Containerd::start();
    let sock = ctrd.socket();
    let dir = ctrd.dir().to_path_buf();
    let out = ctrd.ctr(&["version"]);
    assert_success(&out, "ctr version");
    assert!(stdout(&out).contains("Server:"), "{}", stdout(&out));

    let out = ctrd.ctr(&["images", "pull", "--plain-http", &image]);
    if !out.status.success() {
        panic!(
            "ctr images pull failed: {}\n{}\n--- registry log ---\n{}\n--- containerd log ---\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            reg.log(),
            ctrd.log()
        );
    }
    let id = unique_name("fx");
    let out = ctrd.ctr(&["run", "--rm", &image, &id, "echo", "hi"]);
    if !out.status.success() {
        panic!(
            "ctr run failed: {}\n{}\n--- containerd log (tail) ---\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            ctrd.log()
                .lines()
                .rev()
                .take(60)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    assert_eq!(stdout(&out), "hi\n");

    // A container left running is cleaned up by Drop.
    let id2 = unique_name("fx");
    let out = ctrd.ctr(&["run", "-d", &image, &id2, "sleep", "300"]);
    assert_success(&out, "ctr run -d");
    let tasks = stdout(&ctrd.ctr(&["tasks", "ls", "-q"]));
    assert!(tasks.contains(&id2), "{tasks}");
    assert!(
        !mounts_under(&dir).is_empty(),
        "a running container has a rootfs mount"
    );
    drop(ctrd);
    assert!(!sock.exists());
    assert!(!dir.exists(), "containerd temp dir not removed");
    assert_eq!(mounts_under(&dir), Vec::<std::path::PathBuf>::new());
}

#[test]
fn bin_path_points_next_to_the_test_binary() {
    let dir = bin_dir();
    assert!(dir.is_dir(), "{}", dir.display());
    assert_ne!(dir.file_name().unwrap(), "deps");
    assert!(try_bin_path("no-such-binary-here").is_none());
    let r = std::panic::catch_unwind(|| bin_path("no-such-binary-here"));
    let msg = *r.unwrap_err().downcast::<String>().unwrap();
    assert!(msg.contains("cargo build --workspace"), "{msg}");
}

#[test]
fn free_ports_and_names_are_unique() {
    let a = unique_name("x");
    let b = unique_name("x");
    assert_ne!(a, b);
    assert!(a.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'));
    assert_ne!(free_port(), 0);
}
