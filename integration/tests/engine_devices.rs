//! `--device`, `--device-cgroup-rule`, `--group-add` and `--add-host
//! NAME:host-gateway` against orcad on Debian's containerd 1.6 (runc), with
//! the real docker CLI 28 and with the `orca` CLI; devices and groups also on
//! the all-Orca stack (orca-supervisor, orca-shim, orca-runtime).

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use orca_integration::engine_support::{
    bridge_args, orcad_with_busybox, run_with_limit, stderr, stdout, Orcad,
};
use orca_integration::image::tar_dir;
use orca_integration::{
    assert_success, bin_path, make_busybox_rootfs, require_root, unique_name, Containerd, Registry,
};
use serde_json::Value;

const T: Duration = Duration::from_secs(120);

/// The container names of every container orcad knows (`ps -a`).
fn all_names(o: &Orcad) -> String {
    o.docker_ok(&["ps", "-a", "--format", "{{.Names}}"], T)
}

/// A busybox image imported into `o` whose /etc/group also has `audio` (29).
fn import_image_with_audio(o: &Orcad) -> String {
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path().join("rootfs");
    make_busybox_rootfs(&root).expect("busybox rootfs");
    let group = std::fs::read_to_string(root.join("etc/group")).expect("etc/group");
    std::fs::write(root.join("etc/group"), format!("{group}audio:x:29:\n")).unwrap();
    let tar = dir.path().join("rootfs.tar");
    std::fs::write(&tar, tar_dir(&root).expect("tar")).unwrap();
    let tag = format!("{}:v1", unique_name("orca-audio"));
    o.docker_ok(&["import", tar.to_str().unwrap(), &tag], T);
    tag
}

/// The `groups=` part of busybox `id` output.
fn groups_of(id_out: &str) -> String {
    id_out
        .split_whitespace()
        .find_map(|w| w.strip_prefix("groups="))
        .unwrap_or("")
        .to_string()
}

#[test]
fn docker_device_and_cgroup_rules() {
    let (_c, o, _reg, image) = orcad_with_busybox(T);

    // A host node under another name: written to, listed as char 1,3.
    let out = o.docker(
        &[
            "run",
            "--rm",
            "--device",
            "/dev/null:/dev/mynull",
            &image,
            "sh",
            "-c",
            "echo x > /dev/mynull && ls -l /dev/mynull",
        ],
        T,
    );
    assert_success(&out, "docker run --device /dev/null:/dev/mynull");
    let l = stdout(&out);
    assert!(l.starts_with('c'), "{l}");
    assert!(
        l.contains("1,   3") && l.trim_end().ends_with("/dev/mynull"),
        "{l}"
    );

    // Read-only cgroup permission on a node outside Docker's default rules
    // (block 7,0): opening it for reading works, for writing is refused.
    if Path::new("/dev/loop0").exists() {
        let out = o.docker(
            &[
                "run",
                "--rm",
                "--device",
                "/dev/loop0:/dev/l:r",
                &image,
                "sh",
                "-c",
                "ls -l /dev/l; exec 3</dev/l && echo read-open; exec 4>/dev/l && echo write-open",
            ],
            T,
        );
        let s = stdout(&out);
        assert!(
            s.starts_with('b') && s.contains("7,   0"),
            "stdout {s} stderr {}",
            stderr(&out)
        );
        assert!(
            s.contains("read-open\n") && !s.contains("write-open"),
            "{s}"
        );
        assert!(
            stderr(&out).contains("Operation not permitted"),
            "{}",
            stderr(&out)
        );
    }

    // A directory: every node below it (/dev/net/tun).
    if Path::new("/dev/net/tun").exists() {
        let out = o.docker(
            &[
                "run",
                "--rm",
                "--device",
                "/dev/net:/dev/hostnet",
                &image,
                "ls",
                "-l",
                "/dev/hostnet/tun",
            ],
            T,
        );
        assert_success(&out, "docker run --device DIR");
        assert!(stdout(&out).contains("10, 200"), "{}", stdout(&out));
    }

    // /dev/kmsg (1,11) is outside Docker's default device rules: a node
    // made for it cannot be opened, unless a cgroup rule allows it.
    let script = "mknod /dev/k c 1 11 && exec 3>/dev/k && echo opened";
    let out = o.docker(&["run", "--rm", &image, "sh", "-c", script], T);
    assert!(
        !out.status.success(),
        "opened without a rule: {}",
        stdout(&out)
    );
    assert!(
        stderr(&out).contains("Operation not permitted"),
        "{}",
        stderr(&out)
    );
    let out = o.docker(
        &[
            "run",
            "--rm",
            "--device-cgroup-rule",
            "c 1:11 rw",
            &image,
            "sh",
            "-c",
            script,
        ],
        T,
    );
    assert_success(&out, "docker run --device-cgroup-rule 'c 1:11 rw'");
    assert_eq!(stdout(&out), "opened\n");
    // A wildcard minor works too.
    let out = o.docker(
        &[
            "run",
            "--rm",
            "--device-cgroup-rule",
            "c 1:* w",
            &image,
            "sh",
            "-c",
            script,
        ],
        T,
    );
    assert_success(&out, "docker run --device-cgroup-rule 'c 1:* w'");

    // The spec orcad gave containerd: linux.devices and the allow rule.
    let name = unique_name("dev");
    o.docker_ok(
        &[
            "create",
            "--name",
            &name,
            "--device",
            "/dev/null:/dev/mynull:rw",
            &image,
            "true",
        ],
        T,
    );
    let v: Value = serde_json::from_str(&o.docker_ok(&["inspect", &name], T)).unwrap();
    assert_eq!(
        v[0]["HostConfig"]["Devices"][0]["PathInContainer"], "/dev/mynull",
        "{v}"
    );
    o.docker_ok(&["rm", &name], T);

    // A missing host path: dockerd's message and 500, nothing created.
    let before = all_names(&o);
    let name = unique_name("nodev");
    let out = o.docker(
        &[
            "run",
            "--rm",
            "--name",
            &name,
            "--device",
            "/dev/orca-no-such-dev",
            &image,
            "true",
        ],
        T,
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains(
            "error gathering device information while adding custom device \"/dev/orca-no-such-dev\": no such file or directory"
        ),
        "{}",
        stderr(&out)
    );
    // The CLI maps "no such file or directory" to 127 (as with dockerd).
    assert_eq!(out.status.code(), Some(127), "{}", stderr(&out));
    let body = format!(
        r#"{{"Image":"{image}","Cmd":["true"],"HostConfig":{{"Devices":[{{"PathOnHost":"/dev/orca-no-such-dev","PathInContainer":"/dev/x","CgroupPermissions":"rwm"}}]}}}}"#
    );
    let (code, resp) = o
        .http("POST", "/containers/create", Some(body.as_bytes()))
        .unwrap();
    assert_eq!(code, 500, "{}", String::from_utf8_lossy(&resp));
    assert_eq!(all_names(&o), before);
    // A bad cgroup rule through the API: 400, nothing created.
    let body = format!(
        r#"{{"Image":"{image}","Cmd":["true"],"HostConfig":{{"DeviceCgroupRules":["c 1:x rw"]}}}}"#
    );
    let (code, resp) = o
        .http("POST", "/containers/create", Some(body.as_bytes()))
        .unwrap();
    assert_eq!(code, 400, "{}", String::from_utf8_lossy(&resp));
    assert!(String::from_utf8_lossy(&resp).contains("invalid device cgroup rule format"));
    assert_eq!(all_names(&o), before);
}

#[test]
fn docker_group_add() {
    let (_c, o, _reg, image) = orcad_with_busybox(T);
    let audio = import_image_with_audio(&o);

    let out = o.docker(
        &[
            "run",
            "--rm",
            "--group-add",
            "1234",
            "--group-add",
            "audio",
            &audio,
            "id",
        ],
        T,
    );
    assert_success(&out, "docker run --group-add 1234 --group-add audio");
    let g = groups_of(&stdout(&out));
    assert!(
        g.contains("29(audio)") && g.contains("1234"),
        "{}",
        stdout(&out)
    );

    // exec processes get the container's groups too.
    let name = unique_name("groups");
    o.docker_ok(
        &[
            "run",
            "-d",
            "--name",
            &name,
            "--group-add",
            "audio",
            "--group-add",
            "1234",
            &audio,
            "sleep",
            "1000",
        ],
        T,
    );
    let out = o.docker_ok(&["exec", &name, "id"], T);
    assert!(groups_of(&out).contains("29(audio)"), "{out}");
    // `exec -u` changes the user but keeps the added groups (dockerd's
    // getUser adds HostConfig.GroupAdd).
    let out = o.docker_ok(&["exec", "-u", "1000", &name, "id"], T);
    assert!(out.starts_with("uid=1000 "), "{out}");
    let g = groups_of(&out);
    assert!(g.contains("29(audio)") && g.contains("1234"), "{out}");
    let out = o.docker_ok(&["exec", "-u", "1000:4321", &name, "id"], T);
    assert!(out.contains("gid=4321"), "{out}");
    assert!(groups_of(&out).contains("1234"), "{out}");
    o.docker_ok(&["rm", "-f", &name], T);

    // A name the image's /etc/group lacks: runc's message, nothing left.
    let before = all_names(&o);
    let name = unique_name("nogroup");
    let out = o.docker(
        &[
            "run",
            "--rm",
            "--name",
            &name,
            "--group-add",
            "video",
            &audio,
            "id",
        ],
        T,
    );
    assert!(!out.status.success(), "{}", stdout(&out));
    assert!(
        stderr(&out).contains("Unable to find group video: no matching entries in group file"),
        "{}",
        stderr(&out)
    );
    assert_eq!(all_names(&o), before);

    // Numbers only: no /etc/group needed; a known gid keeps its name.
    let out = o.docker(
        &[
            "run",
            "--rm",
            "--group-add",
            "65534",
            "--group-add",
            "4321",
            &image,
            "id",
        ],
        T,
    );
    assert_success(&out, "docker run --group-add numeric");
    let g = groups_of(&stdout(&out));
    assert!(
        g.contains("65534(nogroup)") && g.contains("4321"),
        "{}",
        stdout(&out)
    );
}

/// `ls /dev` of a fresh container, one name a line.
fn dev_listing(o: &Orcad, image: &str, extra: &[&str]) -> Vec<String> {
    let mut args = vec!["run", "--rm"];
    args.extend_from_slice(extra);
    args.extend_from_slice(&[image, "ls", "-1", "/dev"]);
    let out = o.docker(&args, T);
    assert_success(&out, &format!("docker run {extra:?} ls /dev"));
    stdout(&out).lines().map(str::to_string).collect()
}

/// The host's /dev char and block nodes (top level) a privileged container
/// must get, as containerd's HostDevices picks them.
fn host_top_level_nodes() -> Vec<String> {
    use std::os::unix::fs::FileTypeExt;
    let mut v: Vec<String> = std::fs::read_dir("/dev")
        .unwrap()
        .filter_map(|e| {
            let e = e.ok()?;
            let ft = e.file_type().ok()?;
            let name = e.file_name().to_string_lossy().into_owned();
            ((ft.is_char_device() || ft.is_block_device()) && name != "console").then_some(name)
        })
        .collect();
    v.sort();
    v
}

#[test]
fn docker_privileged_gets_every_host_device() {
    let (_c, o, _reg, image) = orcad_with_busybox(T);
    let host = host_top_level_nodes();
    let plain = dev_listing(&o, &image, &[]);
    let privileged = dev_listing(&o, &image, &["--privileged"]);
    for want in ["kmsg", "loop0", "loop-control"] {
        if host.iter().any(|h| h == want) {
            assert!(
                privileged.iter().any(|n| n == want),
                "{want} missing: {privileged:?}"
            );
            assert!(
                !plain.iter().any(|n| n == want),
                "{want} unprivileged: {plain:?}"
            );
        }
    }
    for h in &host {
        assert!(
            privileged.contains(h),
            "host /dev/{h} missing: {privileged:?}"
        );
    }
    // Subdirectories too (/dev/net/tun), with the host's numbers.
    if Path::new("/dev/net/tun").exists() {
        let out = o.docker(
            &[
                "run",
                "--rm",
                "--privileged",
                &image,
                "ls",
                "-l",
                "/dev/net/tun",
            ],
            T,
        );
        assert_success(&out, "ls -l /dev/net/tun");
        assert!(
            stdout(&out).starts_with('c') && stdout(&out).contains("10, 200"),
            "{}",
            stdout(&out)
        );
    }
    // Usable, not only present: every device is allowed in the cgroup.
    if Path::new("/dev/kmsg").exists() {
        let script = "exec 3</dev/kmsg && echo opened";
        let out = o.docker(
            &["run", "--rm", "--privileged", &image, "sh", "-c", script],
            T,
        );
        assert_success(&out, "open /dev/kmsg privileged");
        assert_eq!(stdout(&out), "opened\n");
    }
    // A --device mapping under another name is added on top; one at its
    // own path is already there (dockerd skips it).
    let out = o.docker(
        &[
            "run",
            "--rm",
            "--privileged",
            "--device",
            "/dev/null:/dev/mynull:r",
            "--device",
            "/dev/zero",
            &image,
            "sh",
            "-c",
            "echo x > /dev/mynull && ls -l /dev/mynull /dev/zero",
        ],
        T,
    );
    assert_success(&out, "privileged with --device");
    let s = stdout(&out);
    assert!(s.contains("1,   3") && s.contains("1,   5"), "{s}");
}

/// Containerd, an orcad with `extra` flags, and busybox pulled into it.
fn orcad_pulled(extra: &[&str]) -> (Containerd, Orcad, Registry, String) {
    require_root();
    let c = Containerd::start();
    let o = Orcad::start_with(&c.socket(), extra);
    let (reg, image) = Registry::with_busybox();
    o.docker_ok(&["pull", &image], T);
    (c, o, reg, image)
}

#[test]
fn docker_add_host_host_gateway() {
    // With a default bridge: its gateway.
    let args = bridge_args();
    let gw = args[3].split('/').next().unwrap().to_string();
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let (_c, o, _reg, image) = orcad_pulled(&a);
    let out = o.docker(
        &[
            "run",
            "--rm",
            "--add-host",
            "h:host-gateway",
            &image,
            "cat",
            "/etc/hosts",
        ],
        T,
    );
    assert_success(&out, "docker run --add-host h:host-gateway");
    assert!(
        stdout(&out).lines().any(|l| l == format!("{gw}\th")),
        "no {gw} h in:\n{}",
        stdout(&out)
    );
    // The gateway answers from inside (it is the host's side of the bridge).
    let out = o.docker(
        &[
            "run",
            "--rm",
            "--add-host",
            "h:host-gateway",
            &image,
            "ping",
            "-c",
            "1",
            "-W",
            "5",
            "h",
        ],
        T,
    );
    assert_success(&out, "ping host-gateway");
    drop(o);

    // `--host-gateway-ip` wins (and works without a bridge).
    let (_c2, o2, _reg2, image2) = orcad_pulled(&["--host-gateway-ip", "192.0.2.7"]);
    let out = o2.docker(
        &[
            "run",
            "--rm",
            "--add-host",
            "gw.example:host-gateway",
            &image2,
            "cat",
            "/etc/hosts",
        ],
        T,
    );
    assert_success(&out, "docker run with --host-gateway-ip");
    assert!(
        stdout(&out).lines().any(|l| l == "192.0.2.7\tgw.example"),
        "{}",
        stdout(&out)
    );
    drop(o2);

    // Neither: dockerd's error, nothing left.
    let (_c3, o3, _reg3, image3) = orcad_pulled(&[]);
    let out = o3.docker(
        &[
            "run",
            "--rm",
            "--add-host",
            "h:host-gateway",
            &image3,
            "true",
        ],
        T,
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("unable to derive the IP value for host-gateway"),
        "{}",
        stderr(&out)
    );
    assert_eq!(all_names(&o3), "");
}

/// `orca ARGS…` aimed at `o`.
fn orca(o: &Orcad, args: &[&str]) -> Output {
    let mut c = Command::new(bin_path("orca"));
    c.env_remove("DOCKER_HOST")
        .env_remove("DOCKER_API_VERSION")
        .env_remove("ORCA_API_VERSION")
        .env("ORCA_HOST", format!("unix://{}", o.socket().display()))
        .args(args)
        .stdin(Stdio::null());
    run_with_limit(&mut c, T)
        .unwrap_or_else(|e| panic!("orca {args:?}: {e}\n--- orcad log ---\n{}", o.log()))
}

/// `orca args` fails, saying `needle` on stderr.
#[track_caller]
fn orca_refused(o: &Orcad, args: &[&str], needle: &str) {
    let out = orca(o, args);
    assert!(!out.status.success(), "orca {args:?} succeeded");
    assert!(stderr(&out).contains(needle), "{}", stderr(&out));
}

#[test]
fn orca_cli_device_group_and_host_gateway_flags() {
    let (_c, o, _reg, image) = orcad_pulled(&["--host-gateway-ip", "192.0.2.9"]);
    let audio = import_image_with_audio(&o);
    let out = orca(
        &o,
        &[
            "run",
            "--rm",
            "--device",
            "/dev/null:/dev/mynull",
            "--device-cgroup-rule",
            "c 1:11 rw",
            "--group-add",
            "1234",
            "--group-add",
            "audio",
            "--add-host",
            "h:host-gateway",
            &audio,
            "sh",
            "-c",
            "echo x > /dev/mynull && ls -l /dev/mynull && mknod /dev/k c 1 11 && exec 3>/dev/k && echo opened && id && grep -w h /etc/hosts",
        ],
    );
    assert_success(&out, "orca run with device/group/host-gateway flags");
    let s = stdout(&out);
    assert!(s.contains("1,   3") && s.contains("/dev/mynull"), "{s}");
    assert!(s.contains("opened\n"), "{s}");
    let g = groups_of(&s);
    assert!(g.contains("29(audio)") && g.contains("1234"), "{s}");
    assert!(s.lines().any(|l| l == "192.0.2.9\th"), "{s}");

    // Bad flags are refused by the CLI before any request.
    orca_refused(
        &o,
        &[
            "run",
            "--rm",
            "--device",
            "/dev/null:/dev/x:rwx",
            &image,
            "true",
        ],
        "bad mode specified: rwx",
    );
    orca_refused(
        &o,
        &[
            "run",
            "--rm",
            "--device-cgroup-rule",
            "z 1:1 r",
            &image,
            "true",
        ],
        "invalid device cgroup format",
    );

    // The daemon's error for a missing device, nothing left behind.
    orca_refused(
        &o,
        &[
            "run",
            "--rm",
            "--device",
            "/dev/orca-no-such-dev",
            &image,
            "true",
        ],
        "error gathering device information while adding custom device",
    );
    assert_eq!(all_names(&o), "");
}

#[test]
fn devices_and_groups_on_the_all_orca_stack() {
    require_root();
    let (_reg, image) = Registry::with_busybox();
    let sup = orca_integration::Supervisor::start();
    let o = Orcad::start_with(
        &sup.socket(),
        &["--default-runtime", "io.containerd.orca.v2"],
    );
    o.docker_ok(&["pull", &image], T);
    let audio = import_image_with_audio(&o);
    // orca-supervisor's Containers.Update (the GroupAdd names), orca-runtime's
    // device nodes and cgroup rules.
    let out = o.docker(
        &[
            "run",
            "--rm",
            "--device",
            "/dev/null:/dev/mynull",
            "--device-cgroup-rule",
            "c 1:11 w",
            "--group-add",
            "audio",
            "--group-add",
            "1234",
            &audio,
            "sh",
            "-c",
            "echo x > /dev/mynull && ls -l /dev/mynull && mknod /dev/k c 1 11 && exec 3>/dev/k && echo opened && id",
        ],
        T,
    );
    assert_success(&out, "docker run on orca-supervisor/orca-shim/orca-runtime");
    let s = stdout(&out);
    assert!(s.contains("1,   3") && s.contains("opened\n"), "{s}");
    let g = groups_of(&s);
    assert!(g.contains("29(audio)") && g.contains("1234"), "{s}");
    let out = o.docker(
        &[
            "run",
            "--rm",
            &image,
            "sh",
            "-c",
            "mknod /dev/k c 1 11 && exec 3>/dev/k",
        ],
        T,
    );
    assert!(!out.status.success(), "opened without a rule");
    // --privileged: orca-runtime makes every host node and allows them all.
    if Path::new("/dev/kmsg").exists() {
        let out = o.docker(
            &[
                "run",
                "--rm",
                "--privileged",
                &image,
                "sh",
                "-c",
                "ls -l /dev/kmsg && exec 3</dev/kmsg && echo opened",
            ],
            T,
        );
        assert_success(&out, "docker run --privileged on the all-Orca stack");
        let s = stdout(&out);
        assert!(s.contains("1,  11") && s.ends_with("opened\n"), "{s}");
    }
}
