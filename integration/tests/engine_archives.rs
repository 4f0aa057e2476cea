//! orcad archives, driven by the real docker CLI 28 on Debian's containerd
//! 1.6: `docker export | docker import`, `docker save` / `docker load`
//! (checked with skopeo too), `docker cp` both ways (with `..` and symlink
//! escape attempts), and pruning (`container prune`, `image prune`,
//! `system df`, `system prune`).

use std::fs;
use std::io::Read;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use orca_integration::assert_success;
use orca_integration::engine_support::{orcad_with_busybox, stderr, stdout, Orcad};
use serde_json::Value;

const T: Duration = Duration::from_secs(120);

/// `sh -c SCRIPT` with the docker CLI aimed at `o` (for pipes).
fn sh(o: &Orcad, script: &str) -> Output {
    o.docker_sh(script, T)
}

fn ok(o: &Orcad, args: &[&str]) -> String {
    o.docker_ok(args, T)
}

fn image_ids(o: &Orcad) -> Vec<String> {
    ok(o, &["images", "-q", "--no-trunc"])
        .lines()
        .map(String::from)
        .collect()
}

#[test]
fn export_then_import_runs_the_files() {
    let (_c, o, _reg, image) = orcad_with_busybox(T);
    let name = "exported";
    ok(
        &o,
        &[
            "run",
            "--name",
            name,
            &image,
            "sh",
            "-c",
            "echo hello-export > /exported.txt && mkdir -p /d/e && ln -s ../../exported.txt /d/e/link",
        ],
    );
    let out = sh(
        &o,
        &format!("docker export {name} | docker import --change 'ENV FROM_IMPORT=yes' - orca-imported:v1"),
    );
    assert_success(&out, "docker export | docker import");
    let id = stdout(&out).trim().to_string();
    assert!(
        id.starts_with("sha256:"),
        "import prints the image ID: {id}"
    );

    let out = o.docker(
        &["run", "--rm", "orca-imported:v1", "cat", "/exported.txt"],
        T,
    );
    assert_success(&out, "run the imported image");
    assert_eq!(stdout(&out), "hello-export\n");
    let out = o.docker(
        &[
            "run",
            "--rm",
            "orca-imported:v1",
            "sh",
            "-c",
            "cat /d/e/link; echo $FROM_IMPORT",
        ],
        T,
    );
    assert_success(&out, "run the imported image (symlink, env)");
    assert_eq!(stdout(&out), "hello-export\nyes\n");

    // Docker's image metadata for an import.
    let v: Value = serde_json::from_str(&ok(&o, &["image", "inspect", "orca-imported:v1"]))
        .expect("inspect JSON");
    assert_eq!(v[0]["Id"], id.as_str());
    assert_eq!(v[0]["Comment"], "Imported from -");
    assert_eq!(
        v[0]["RootFS"]["Layers"].as_array().map(|l| l.len()),
        Some(1)
    );
    assert_eq!(v[0]["RepoTags"][0], "orca-imported:v1");

    // A running container exports too (its own mount is not disturbed).
    ok(
        &o,
        &[
            "run",
            "-d",
            "--name",
            "live",
            &image,
            "sh",
            "-c",
            "echo live > /live.txt; sleep 1000",
        ],
    );
    std::thread::sleep(Duration::from_millis(500));
    let out = sh(&o, "docker export live | tar -tf - | grep -x live.txt");
    assert_success(&out, "export a running container");
    let out = o.docker(&["exec", "live", "cat", "/live.txt"], T);
    assert_eq!(stdout(&out), "live\n");
    ok(&o, &["rm", "-f", "live"]);

    // Not a tar: a 400 with Docker's error shape, and bad names.
    let out = sh(&o, "echo garbage | docker import - orca-bad:v1");
    assert!(!out.status.success(), "garbage imported: {}", stdout(&out));
    let out = o.docker(&["export", "no-such-container"], T);
    assert!(
        stderr(&out).contains("No such container"),
        "{}",
        stderr(&out)
    );
    // No mounts left behind under the exec-root.
    assert!(
        !fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .contains("/archive/mnt-"),
        "an archive mount was left behind"
    );
}

/// Builds a legacy-layout docker-archive (`<id>/layer.tar` as a symlink to
/// `../blobs/sha256/<hex>`, as Docker 25+ also writes, and `<id>.json`
/// configs) from one of ours.
fn legacy_archive(src: &Path, dst: &Path) {
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    let mut ar = tar::Archive::new(fs::File::open(src).unwrap());
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let p = e.path().unwrap().to_string_lossy().into_owned();
        let mut b = Vec::new();
        e.read_to_end(&mut b).unwrap();
        files.push((p, b));
    }
    let get = |p: &str| files.iter().find(|(n, _)| n == p).map(|(_, b)| b.clone());
    let m: Value = serde_json::from_slice(&get("manifest.json").unwrap()).unwrap();
    let mut out = tar::Builder::new(fs::File::create(dst).unwrap());
    let mut new_manifest = Vec::new();
    for img in m.as_array().unwrap() {
        let cpath = img["Config"].as_str().unwrap();
        let chex = cpath.rsplit('/').next().unwrap();
        let config = get(cpath).unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_size(config.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        out.append_data(&mut h, format!("{chex}.json"), config.as_slice())
            .unwrap();
        let mut layers = Vec::new();
        for (i, l) in img["Layers"].as_array().unwrap().iter().enumerate() {
            let l = l.as_str().unwrap();
            let data = get(l).unwrap();
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            out.append_data(&mut h, l, data.as_slice()).unwrap();
            let dir = format!("{i:064}");
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_size(0);
            h.set_mode(0o777);
            out.append_link(&mut h, format!("{dir}/layer.tar"), format!("../{l}"))
                .unwrap();
            layers.push(format!("{dir}/layer.tar"));
        }
        new_manifest.push(serde_json::json!({
            "Config": format!("{chex}.json"), "RepoTags": img["RepoTags"], "Layers": layers,
        }));
    }
    let m = serde_json::to_vec(&new_manifest).unwrap();
    let mut h = tar::Header::new_gnu();
    h.set_size(m.len() as u64);
    h.set_mode(0o644);
    h.set_cksum();
    out.append_data(&mut h, "manifest.json", m.as_slice())
        .unwrap();
    out.finish().unwrap();
}

#[test]
fn save_rmi_load_and_run() {
    let (_c, o, _reg, image) = orcad_with_busybox(T);
    let dir = tempfile::tempdir().unwrap();
    let tarball = dir.path().join("img.tar");
    let tar_s = tarball.to_str().unwrap();
    ok(&o, &["tag", &image, "orca-saved:v1"]);
    let id_before = ok(&o, &["image", "inspect", "-f", "{{.Id}}", "orca-saved:v1"]);
    let out = sh(&o, &format!("docker save orca-saved:v1 > {tar_s}"));
    assert_success(&out, "docker save");

    // Docker 25+ layout, and valid for skopeo.
    let listing = Command::new("tar").args(["-tf", tar_s]).output().unwrap();
    let listing = stdout(&listing);
    for f in ["manifest.json", "index.json", "oci-layout", "blobs/sha256/"] {
        assert!(listing.lines().any(|l| l == f), "{f} missing: {listing}");
    }
    if Path::new("/usr/bin/skopeo").exists() {
        let out = Command::new("skopeo")
            .args(["inspect", &format!("docker-archive:{tar_s}")])
            .output()
            .unwrap();
        assert_success(&out, "skopeo inspect docker-archive");
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["Layers"].as_array().map(|l| l.len()), Some(1), "{v}");
        assert_eq!(v["Os"], "linux");
        let out = Command::new("skopeo")
            .args(["inspect", "--config", &format!("docker-archive:{tar_s}")])
            .output()
            .unwrap();
        assert_success(&out, "skopeo inspect --config");
    }

    ok(&o, &["rmi", "orca-saved:v1"]);
    let out = sh(&o, &format!("docker load < {tar_s}"));
    assert_success(&out, "docker load");
    assert!(
        stdout(&out).contains("Loaded image: orca-saved:v1"),
        "{}",
        stdout(&out)
    );
    let id_after = ok(&o, &["image", "inspect", "-f", "{{.Id}}", "orca-saved:v1"]);
    assert_eq!(id_before, id_after, "same image ID after the round trip");
    let out = o.docker(&["run", "--rm", "orca-saved:v1", "echo", "loaded"], T);
    assert_success(&out, "run the loaded image");
    assert_eq!(stdout(&out), "loaded\n");

    // Everything gone (containerd GC'd the content), then the legacy
    // layout (`<id>/layer.tar` links, `<id>.json`) loads into a clean store.
    let legacy = dir.path().join("legacy.tar");
    legacy_archive(&tarball, &legacy);
    ok(&o, &["rmi", "orca-saved:v1", &image]);
    let out = o.docker(&["load", "-i", legacy.to_str().unwrap()], T);
    assert_success(&out, "docker load (legacy layout)");
    assert!(stdout(&out).contains("Loaded image: orca-saved:v1"));
    let out = o.docker(&["run", "--rm", "orca-saved:v1", "true"], T);
    assert_success(&out, "run the image loaded from the legacy layout");

    // Save by ID and several names in one archive; a broken archive fails.
    ok(&o, &["tag", "orca-saved:v1", "orca-saved:v2"]);
    let out = sh(
        &o,
        "docker save orca-saved:v1 orca-saved:v2 | tar -xOf - manifest.json",
    );
    assert_success(&out, "docker save two names");
    let m: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(
        m[0]["RepoTags"],
        serde_json::json!(["orca-saved:v1", "orca-saved:v2"])
    );
    let out = sh(&o, "echo nope | docker load");
    assert!(!out.status.success(), "garbage loaded: {}", stdout(&out));
}

#[test]
fn cp_in_and_out_stays_inside_the_container() {
    let (_c, o, _reg, image) = orcad_with_busybox(T);
    let dir = tempfile::tempdir().unwrap();
    let host_in = dir.path().join("in.txt");
    fs::write(&host_in, "from-host\n").unwrap();
    let host_in = host_in.to_str().unwrap();
    let out_dir = dir.path().join("out");
    fs::create_dir(&out_dir).unwrap();
    let out_s = out_dir.to_str().unwrap();

    ok(&o, &["run", "-d", "--name", "cpc", &image, "sleep", "1000"]);
    // Host → container (running).
    ok(&o, &["cp", host_in, "cpc:/tmp/in.txt"]);
    assert_eq!(
        ok(&o, &["exec", "cpc", "cat", "/tmp/in.txt"]),
        "from-host\n"
    );
    // Into a directory keeps the name.
    ok(&o, &["cp", host_in, "cpc:/tmp/"]);
    assert_eq!(ok(&o, &["exec", "cpc", "ls", "/tmp"]), "in.txt\n");

    // Container → host: a file and a directory.
    ok(
        &o,
        &[
            "exec",
            "cpc",
            "sh",
            "-c",
            "mkdir -p /data/sub && echo out > /data/sub/f && echo top > /out.txt",
        ],
    );
    ok(&o, &["cp", "cpc:/out.txt", out_s]);
    assert_eq!(
        fs::read_to_string(out_dir.join("out.txt")).unwrap(),
        "top\n"
    );
    ok(&o, &["cp", "cpc:/data", out_s]);
    assert_eq!(
        fs::read_to_string(out_dir.join("data/sub/f")).unwrap(),
        "out\n"
    );
    // Missing source: Docker's not-found error.
    let out = o.docker(&["cp", "cpc:/no/such/file", out_s], T);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("Could not find the file"),
        "{}",
        stderr(&out)
    );

    // `..` escapes resolve inside the container's root.
    let marker = format!("orca-cp-escape-{}", std::process::id());
    ok(
        &o,
        &[
            "exec",
            "cpc",
            "sh",
            "-c",
            &format!("echo inside > /{marker}"),
        ],
    );
    let (code, _) = o
        .http(
            "GET",
            &format!("/containers/cpc/archive?path=/../../../../../{marker}"),
            None,
        )
        .unwrap();
    assert_eq!(code, 200, "../ from the root stays at the root");
    ok(
        &o,
        &["cp", &format!("cpc:/tmp/../../../../{marker}"), out_s],
    );
    assert_eq!(
        fs::read_to_string(out_dir.join(&marker)).unwrap(),
        "inside\n"
    );
    // A symlink pointing far above the root: writes land inside.
    ok(
        &o,
        &[
            "exec",
            "cpc",
            "ln",
            "-s",
            "../../../../../../../",
            "/tmp/up",
        ],
    );
    let escaped = format!("escaped-{}", std::process::id());
    let src = dir.path().join(&escaped);
    fs::write(&src, "x\n").unwrap();
    ok(&o, &["cp", src.to_str().unwrap(), "cpc:/tmp/up/"]);
    let host_hit = Path::new("/").join(&escaped);
    let leaked = host_hit.exists();
    let _ = fs::remove_file(&host_hit);
    assert!(
        !leaked,
        "docker cp wrote {} on the host",
        host_hit.display()
    );
    assert_eq!(
        ok(&o, &["exec", "cpc", "cat", &format!("/{escaped}")]),
        "x\n"
    );
    // A tar entry with `..` is refused (raw API).
    let (code, _) = o
        .http(
            "PUT",
            "/containers/cpc/archive?path=/tmp",
            Some(&evil_tar()),
        )
        .unwrap();
    assert_eq!(code, 400, "a tar entry climbing out is refused");

    // Stopped container: both directions through its snapshot.
    ok(&o, &["stop", "-t", "0", "cpc"]);
    ok(&o, &["cp", host_in, "cpc:/stopped.txt"]);
    ok(
        &o,
        &["cp", "cpc:/stopped.txt", &format!("{out_s}/stopped-copy")],
    );
    assert_eq!(
        fs::read_to_string(out_dir.join("stopped-copy")).unwrap(),
        "from-host\n"
    );
    ok(&o, &["start", "cpc"]);
    assert_eq!(
        ok(&o, &["exec", "cpc", "cat", "/stopped.txt"]),
        "from-host\n"
    );
    ok(&o, &["rm", "-f", "cpc"]);
}

/// A tar with one entry named `../evil`.
fn evil_tar() -> Vec<u8> {
    let mut h = tar::Header::new_gnu();
    h.set_size(2);
    h.set_mode(0o644);
    // set_path refuses `..`; write the name bytes directly.
    {
        let name = b"../evil";
        let raw = h.as_old_mut();
        raw.name[..name.len()].copy_from_slice(name);
    }
    h.set_cksum();
    let mut b = tar::Builder::new(Vec::new());
    b.append(&h, b"x\n".as_slice()).unwrap();
    b.into_inner().unwrap()
}

#[test]
fn container_prune_removes_only_stopped() {
    let (_c, o, _reg, image) = orcad_with_busybox(T);
    let a = ok(&o, &["create", &image, "true"]).trim().to_string();
    let b = ok(&o, &["run", "-d", &image, "true"]).trim().to_string();
    let live = ok(&o, &["run", "-d", &image, "sleep", "1000"])
        .trim()
        .to_string();
    ok(&o, &["wait", &b]);
    let out = ok(&o, &["container", "prune", "-f"]);
    assert!(out.contains(&a) && out.contains(&b), "{out}");
    assert!(!out.contains(&live), "{out}");
    assert!(out.contains("Total reclaimed space"), "{out}");
    let left = ok(&o, &["ps", "-aq", "--no-trunc"]);
    assert_eq!(left.trim(), live);
    ok(&o, &["rm", "-f", &live]);
}

#[test]
fn image_prune_system_df_and_system_prune() {
    let (_c, o, _reg, image) = orcad_with_busybox(T);
    // Importing the same tag twice leaves the first image dangling.
    let mk = |n: &str| {
        let out = sh(
            &o,
            &format!("mkdir -p /tmp/orca-prune-{n} && echo {n} > /tmp/orca-prune-{n}/f && tar -C /tmp/orca-prune-{n} -cf - f | docker import - orca-prune:v1; rm -rf /tmp/orca-prune-{n}"),
        );
        assert_success(&out, "docker import");
        stdout(&out).trim().to_string()
    };
    let first = mk("one");
    let second = mk("two");
    assert_ne!(first, second);
    let ids = image_ids(&o);
    assert!(ids.contains(&first) && ids.contains(&second), "{ids:?}");
    let listing = ok(
        &o,
        &["images", "--format", "{{.Repository}}:{{.Tag}} {{.ID}}"],
    );
    assert!(
        listing.contains(&format!("<none>:<none> {}", &first[7..19])),
        "the old image shows as dangling: {listing}"
    );

    // system df sees images and containers.
    ok(&o, &["create", "--name", "user", &image, "true"]);
    let df = ok(&o, &["system", "df", "--format", "{{json .}}"]);
    let rows: Vec<Value> = df
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let row = |t: &str| {
        rows.iter()
            .find(|r| r["Type"] == t)
            .unwrap_or_else(|| panic!("no {t} row in {df}"))
            .clone()
    };
    assert_eq!(row("Images")["TotalCount"], "3", "{df}");
    assert_eq!(row("Images")["Active"], "1", "{df}");
    assert_eq!(row("Containers")["TotalCount"], "1", "{df}");
    row("Local Volumes");
    row("Build Cache");
    let out = ok(&o, &["system", "df", "-v"]);
    assert!(out.contains("orca-prune"), "{out}");

    // Dangling only: the first import goes, the tagged ones stay.
    let out = ok(&o, &["image", "prune", "-f"]);
    assert!(out.contains(&first), "{out}");
    let ids = image_ids(&o);
    assert!(!ids.contains(&first), "{ids:?}");
    assert!(ids.contains(&second), "{ids:?}");

    // -a: every image no container uses (busybox is used by "user").
    let out = ok(&o, &["image", "prune", "-a", "-f"]);
    assert!(out.contains(&second), "{out}");
    let ids = image_ids(&o);
    assert_eq!(ids.len(), 1, "{ids:?}");

    // system prune: the stopped container and an unused network, then the
    // image with -a.
    ok(&o, &["network", "create", "orca-unused-net"]);
    let out = ok(&o, &["system", "prune", "-f"]);
    assert!(out.contains("Total reclaimed space"), "{out}");
    assert!(out.contains("orca-unused-net"), "{out}");
    assert!(!ok(&o, &["network", "ls"]).contains("orca-unused-net"));
    assert_eq!(ok(&o, &["ps", "-aq"]).trim(), "");
    let out = ok(&o, &["system", "prune", "-a", "-f"]);
    assert!(out.contains("Deleted Images"), "{out}");
    assert!(image_ids(&o).is_empty());
    // Unsupported prune filters answer 501, never a fake success.
    let out = o.docker(&["container", "prune", "-f", "--filter", "until=1h"], T);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("not implemented"), "{}", stderr(&out));
}
