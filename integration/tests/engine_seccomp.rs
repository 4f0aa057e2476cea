//! Seccomp in orcad's containers, judged by the real docker CLI (28.x) on
//! Debian's containerd 1.6 + runc: Docker's default profile (computed from
//! the container's capabilities), `seccomp=unconfined`, `--privileged`, a
//! custom profile, and a malformed one.

use std::time::Duration;

use orca_integration::assert_success;
use orca_integration::engine_support::{orcad_with_busybox, text, Orcad};

const T: Duration = Duration::from_secs(120);

/// `docker run --rm EXTRA… IMAGE CMD…`: (exit code, stdout, stderr).
fn run(o: &Orcad, extra: &[&str], image: &str, cmd: &[&str]) -> (i32, String, String) {
    let mut args = vec!["run", "--rm"];
    args.extend_from_slice(extra);
    args.push(image);
    args.extend_from_slice(cmd);
    let out = o.docker(&args, T);
    (
        out.status.code().unwrap_or(-1),
        text(&out.stdout),
        text(&out.stderr),
    )
}

fn seccomp_mode(o: &Orcad, extra: &[&str], image: &str) -> String {
    let (code, out, err) = run(o, extra, image, &["grep", "Seccomp:", "/proc/self/status"]);
    assert_eq!(code, 0, "grep Seccomp with {extra:?}: {err}");
    out.split_whitespace().nth(1).unwrap_or("").to_string()
}

fn all_containers(o: &Orcad) -> String {
    o.docker_ok(&["ps", "-a", "-q", "--no-trunc"], T)
}

#[test]
fn default_profile_unconfined_and_privileged() {
    let (_c, o, _reg, image) = orcad_with_busybox(T);
    let info = o.docker_ok(&["info", "--format", "{{json .SecurityOptions}}"], T);
    assert!(info.contains("name=seccomp,profile=builtin"), "{info}");
    // Filter mode 2 (SECCOMP_MODE_FILTER) by default, none otherwise.
    assert_eq!(seccomp_mode(&o, &[], &image), "2");
    assert_eq!(
        seccomp_mode(&o, &["--security-opt", "seccomp=unconfined"], &image),
        "0"
    );
    assert_eq!(seccomp_mode(&o, &["--privileged"], &image), "0");
    assert_eq!(seccomp_mode(&o, &["--cap-add", "SYS_ADMIN"], &image), "2");

    // unshare(2) is allowed only with CAP_SYS_ADMIN: EPERM by default
    // (creating a user namespace needs no capability, so only the filter
    // refuses it), fine with the capability or without the filter.
    let (code, _, err) = run(&o, &[], &image, &["unshare", "-U", "true"]);
    assert_ne!(code, 0, "unshare -U must be blocked by the default profile");
    assert!(err.contains("Operation not permitted"), "{err}");
    let (code, _, err) = run(
        &o,
        &["--cap-add", "SYS_ADMIN"],
        &image,
        &["unshare", "-U", "true"],
    );
    assert_eq!(code, 0, "unshare -U with CAP_SYS_ADMIN: {err}");
    let (code, _, err) = run(
        &o,
        &["--security-opt", "seccomp=unconfined"],
        &image,
        &["unshare", "-U", "true"],
    );
    assert_eq!(code, 0, "unshare -U unconfined: {err}");

    // mount(2): refused without CAP_SYS_ADMIN, allowed with it.
    let (code, _, err) = run(
        &o,
        &[],
        &image,
        &["sh", "-c", "mkdir /tmp/m && mount -t tmpfs none /tmp/m"],
    );
    assert_ne!(code, 0);
    // busybox words EPERM from mount(2) as "permission denied (are you root?)".
    assert!(
        err.contains("permission denied") || err.contains("Operation not permitted"),
        "{err}"
    );
    let (code, _, err) = run(
        &o,
        &["--cap-add", "SYS_ADMIN"],
        &image,
        &[
            "sh",
            "-c",
            "mkdir /tmp/m && mount -t tmpfs none /tmp/m && grep -c ' /tmp/m tmpfs' /proc/mounts",
        ],
    );
    assert_eq!(code, 0, "mount with CAP_SYS_ADMIN: {err}");

    // Argument-conditional rules: personality(PER_LINUX32) is allowed,
    // chroot(2) follows CAP_SYS_CHROOT (a default capability).
    let (code, out, err) = run(&o, &[], &image, &["linux32", "uname", "-m"]);
    assert_eq!(code, 0, "linux32: {err}");
    assert_eq!(out.trim(), "i686");
    let (code, _, err) = run(&o, &[], &image, &["chroot", "/", "true"]);
    assert_eq!(code, 0, "chroot with CAP_SYS_CHROOT: {err}");
    let (code, _, err) = run(
        &o,
        &["--cap-drop", "SYS_CHROOT"],
        &image,
        &["chroot", "/", "true"],
    );
    assert_ne!(code, 0, "chroot without CAP_SYS_CHROOT");
    assert!(err.contains("Operation not permitted"), "{err}");
    // Ordinary work is unaffected.
    let (code, out, err) = run(
        &o,
        &[],
        &image,
        &[
            "sh",
            "-c",
            "mkdir /tmp/d && echo ok > /tmp/d/f && cat /tmp/d/f",
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "ok\n");
}

#[test]
fn custom_and_malformed_profiles() {
    let (_c, o, _reg, image) = orcad_with_busybox(T);
    let dir = tempfile::tempdir().unwrap();

    // A profile denying mkdir: the docker CLI reads the file, orcad
    // converts it; mkdir fails with EPERM, everything else works. A name
    // libseccomp does not know is skipped by the runtime, not fatal.
    let deny = dir.path().join("deny-mkdir.json");
    std::fs::write(
        &deny,
        r#"{
            "defaultAction": "SCMP_ACT_ALLOW",
            "archMap": [{"architecture": "SCMP_ARCH_X86_64", "subArchitectures": ["SCMP_ARCH_X86", "SCMP_ARCH_X32"]}],
            "syscalls": [
                {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO"},
                {"names": ["orca_no_such_syscall"], "action": "SCMP_ACT_KILL"},
                {"name": "getcwd", "action": "SCMP_ACT_ERRNO", "errnoRet": 13, "includes": {"caps": ["CAP_SYS_BOOT"]}}
            ]
        }"#,
    )
    .unwrap();
    let opt = format!("seccomp={}", deny.display());
    let (code, _, err) = run(&o, &["--security-opt", &opt], &image, &["mkdir", "/tmp/x"]);
    assert_ne!(code, 0, "mkdir must be denied");
    assert!(err.contains("Operation not permitted"), "{err}");
    let (code, out, err) = run(
        &o,
        &["--security-opt", &opt],
        &image,
        &[
            "sh",
            "-c",
            "grep Seccomp: /proc/self/status; cd /tmp && pwd; touch /tmp/f && echo touched",
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("Seccomp:\t2"), "{out}");
    // The getcwd rule applies only with CAP_SYS_BOOT (not held).
    assert!(out.contains("/tmp\n") && out.contains("touched"), "{out}");

    // Malformed profiles: 400 with the reason, nothing created.
    let before = all_containers(&o);
    for (name, body, needle) in [
        (
            "bad-action.json",
            r#"{"defaultAction": "SCMP_ACT_BOGUS"}"#,
            "SCMP_ACT_BOGUS",
        ),
        (
            "bad-type.json",
            r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": "mkdir", "action": "SCMP_ACT_ERRNO"}]}"#,
            "Decoding seccomp profile failed",
        ),
        (
            "bad-op.json",
            r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_ERRNO", "args": [{"index": 0, "value": 1, "op": "EQUALS"}]}]}"#,
            "EQUALS",
        ),
    ] {
        let p = dir.path().join(name);
        std::fs::write(&p, body).unwrap();
        let opt = format!("seccomp={}", p.display());
        let out = o.docker(&["run", "--rm", "--security-opt", &opt, &image, "true"], T);
        assert_eq!(
            out.status.code(),
            Some(125),
            "{name}: {}",
            text(&out.stderr)
        );
        let err = text(&out.stderr);
        assert!(err.contains("Error response from daemon"), "{name}: {err}");
        assert!(err.contains(needle), "{name}: expected {needle:?} in {err}");
        let out = o.docker(
            &[
                "create",
                "--name",
                "never",
                "--security-opt",
                &opt,
                &image,
                "true",
            ],
            T,
        );
        assert!(!out.status.success(), "{name}: create must fail");
    }
    assert_eq!(
        all_containers(&o),
        before,
        "a refused create left a container"
    );
    // The name was not reserved either.
    let out = o.docker(&["create", "--name", "never", &image, "true"], T);
    assert_success(&out, "create after refused creates");
    o.docker_ok(&["rm", "never"], T);
}

/// The same profiles on the all-Orca stack (orca-supervisor → orca-shim →
/// orca-runtime, which compiles `linux.seccomp` with libseccomp).
#[test]
fn profiles_on_the_all_orca_stack() {
    orca_integration::require_root();
    let (_reg, image) = orca_integration::Registry::with_busybox();
    let supervisor = orca_integration::Supervisor::start();
    let o = Orcad::start_with(
        &supervisor.socket(),
        &["--default-runtime", "io.containerd.orca.v2"],
    );
    assert_success(&o.docker(&["pull", &image], T), "docker pull");
    assert_eq!(seccomp_mode(&o, &[], &image), "2");
    assert_eq!(
        seccomp_mode(&o, &["--security-opt", "seccomp=unconfined"], &image),
        "0"
    );
    assert_eq!(seccomp_mode(&o, &["--privileged"], &image), "0");
    let (code, _, err) = run(&o, &[], &image, &["unshare", "-U", "true"]);
    assert_ne!(code, 0, "unshare -U must be blocked by the default profile");
    assert!(err.contains("Operation not permitted"), "{err}");
    let (code, _, err) = run(
        &o,
        &["--cap-add", "SYS_ADMIN"],
        &image,
        &["unshare", "-U", "true"],
    );
    assert_eq!(
        code,
        0,
        "unshare -U with CAP_SYS_ADMIN: {err}\n{}",
        supervisor.log()
    );
    let (code, out, err) = run(&o, &[], &image, &["linux32", "uname", "-m"]);
    assert_eq!((code, out.trim()), (0, "i686"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    let deny = dir.path().join("deny-mkdir.json");
    std::fs::write(
        &deny,
        r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["mkdir","mkdirat","orca_no_such_syscall"],"action":"SCMP_ACT_ERRNO"}]}"#,
    )
    .unwrap();
    let opt = format!("seccomp={}", deny.display());
    let (code, _, err) = run(&o, &["--security-opt", &opt], &image, &["mkdir", "/tmp/x"]);
    assert_ne!(code, 0, "mkdir must be denied");
    assert!(err.contains("Operation not permitted"), "{err}");
}
