//! Security properties of orca-runtime, each a named test:
//!
//! - CVE-2019-5736: a container process running the runtime's own binary
//!   (the init before `start`, or an exec'd `#!/proc/self/exe` script) cannot
//!   write that binary through `/proc/<pid>/exe`: it is on a read-only mount
//!   (or a sealed memfd) and its bytes stay unchanged.
//! - No descriptor of the runtime's caller or of the runtime itself reaches
//!   the container, except `--preserve-fds`.
//! - CVE-2024-21626: the working directory is inside the container, even for
//!   a cwd of `/proc/self/fd/N` naming a leaked host directory.
//! - Masked paths unreadable, read-only paths unwritable, the default
//!   capability set exactly as configured, seccomp errno rules.
//! - A symlink in the image cannot point a mount outside the rootfs.

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use orca_integration::*;
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(10);

fn orca() -> Runtime {
    require_root();
    Runtime::orca()
}

fn add_mount(b: &mut Bundle, m: Value) {
    b.config_mut()["mounts"].as_array_mut().unwrap().push(m);
}

fn add_tmp(b: &mut Bundle) {
    add_mount(
        b,
        json!({"destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
               "options": ["nosuid", "nodev", "mode=1777"]}),
    );
}

#[track_caller]
fn run_ok(rt: &Runtime, b: &Bundle, id: &str) -> String {
    let o = rt.run(&["run", "-b", b.path_str(), id]);
    assert_success(&o, &format!("run {id}"));
    assert_no_leftovers(rt, b, id);
    out_str(&o)
}

/// Whether the file behind `/proc/<pid>/exe` cannot be written in place: it
/// is on a read-only mount, or it is a sealed memfd. Returns a description.
fn exe_protection(pid: i32) -> Result<String, String> {
    let link = format!("/proc/{pid}/exe");
    let target = std::fs::read_link(&link).map_err(|e| format!("readlink {link}: {e}"))?;
    if target.to_string_lossy().starts_with("/memfd:") {
        return Ok(format!("memfd {target:?}"));
    }
    let st =
        nix::sys::statvfs::statvfs(link.as_str()).map_err(|e| format!("statvfs {link}: {e}"))?;
    if st.flags().contains(nix::sys::statvfs::FsFlags::ST_RDONLY) {
        Ok(format!("{target:?} on a read-only mount"))
    } else {
        Err(format!("{target:?} is on a writable mount"))
    }
}

/// A pipe whose buffer is full: a process writing to the write end blocks.
fn full_pipe() -> (OwnedFd, OwnedFd) {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).expect("pipe");
    fcntl(w.as_raw_fd(), FcntlArg::F_SETFL(OFlag::O_NONBLOCK)).unwrap();
    let chunk = [b'#'; 4096];
    loop {
        match nix::unistd::write(&w, &chunk) {
            Ok(_) => continue,
            Err(nix::Error::EAGAIN) => break,
            Err(e) => panic!("filling the pipe: {e}"),
        }
    }
    // Blocking again: the flag is shared with whoever inherits the descriptor.
    fcntl(w.as_raw_fd(), FcntlArg::F_SETFL(OFlag::empty())).unwrap();
    (r, w)
}

/// Copies the ELF interpreter and shared libraries `ldd` lists for `binary`
/// into `rootfs` at the same paths.
fn copy_shared_libraries(binary: &Path, rootfs: &Path) {
    let out = std::process::Command::new("ldd")
        .arg(binary)
        .output()
        .expect("run ldd");
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let path = match line.split_once("=>") {
            Some((_, rhs)) => rhs.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        let Some(path) = path.filter(|p| p.starts_with('/')) else {
            continue;
        };
        let dest = rootfs.join(path.trim_start_matches('/'));
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        std::fs::copy(path, &dest).unwrap_or_else(|e| panic!("copy {path}: {e}"));
    }
}

// ---------------------------------------------------------------- (a) CVE-2019-5736

#[test]
fn cve_2019_5736_init_exe_is_not_writable() {
    let rt = orca();
    let binary = rt.binary().to_path_buf();
    let before = sha256_file(&binary);
    let b = Bundle::busybox(&["sleep", "1000"]);
    let id = unique_name("sec-exe");
    let o = rt.run(&["create", "-b", b.path_str(), &id]);
    assert_success(&o, "create");
    let init = pid_of(&rt, &id);
    assert_eq!(status_of(&rt, &id).as_deref(), Some("created"));

    // Host side: the init (still the runtime's binary) runs from a read-only
    // mount or a memfd.
    match exe_protection(init) {
        Ok(how) => eprintln!("init exe: {how}"),
        Err(e) => panic!("the waiting init's executable is writable: {e}"),
    }

    // Container side: a process in the container cannot open the init's exe
    // for writing, neither directly nor by reopening a read descriptor.
    let o = rt.run(&[
        "exec",
        &id,
        "sh",
        "-c",
        "echo x >> /proc/1/exe; echo direct=$?; \
         (exec 3</proc/1/exe && echo x >> /proc/self/fd/3); echo reopen=$?",
    ]);
    assert_success(&o, "exec attack on /proc/1/exe");
    let text = out_str(&o);
    assert!(
        text.contains("direct=")
            && text.contains("reopen=")
            && !text.contains("direct=0")
            && !text.contains("reopen=0"),
        "a container process wrote to the init's exe: {}",
        describe(&o)
    );

    let o = rt.run(&["delete", "-f", &id]);
    assert_success(&o, "delete -f");
    assert_eq!(sha256_file(&binary), before, "the runtime binary changed");
    assert_no_leftovers(&rt, &b, &id);
}

#[test]
fn cve_2019_5736_proc_self_exe_script_cannot_overwrite_the_runtime() {
    let rt = orca();
    let binary = rt.binary().to_path_buf();
    let before = sha256_file(&binary);
    let mut b = Bundle::busybox(&["sleep", "1000"]);
    add_tmp(&mut b);
    b.save();
    // The runtime binary is dynamically linked: give the image its loader and
    // libraries (as any glibc-based image has), so it can run inside.
    copy_shared_libraries(&binary, &b.rootfs());
    // The attack: a script whose interpreter is /proc/self/exe makes the
    // runtime's `exec` run the runtime binary itself inside the container.
    let evil = b.rootfs().join("evil");
    std::fs::write(&evil, "#!/proc/self/exe\n").unwrap();
    std::fs::set_permissions(&evil, std::fs::Permissions::from_mode(0o755)).unwrap();
    let id = unique_name("sec-evil");
    let o = rt.run(&["run", "-d", "-b", b.path_str(), &id]);
    assert_success(&o, "run -d");
    let init = pid_of(&rt, &id);

    // The runtime binary, started as `/proc/self/exe /evil`, fails to parse
    // its arguments and prints usage to stderr: a full pipe keeps it blocked
    // there, alive, running the runtime's binary inside the container.
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("evil.pid");
    let log = dir.path().join("log");
    let (pipe_r, pipe_w) = full_pipe();
    let mut cmd = rt.cmd();
    cmd.args([
        "--log",
        log.to_str().unwrap(),
        "exec",
        "-d",
        "--pid-file",
        pid_file.to_str().unwrap(),
        &id,
        "/evil",
    ])
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::from(pipe_w));
    let mut child = cmd.spawn().expect("spawn exec -d");
    let mut status = None;
    assert!(
        wait_until(T, || {
            status = child.try_wait().unwrap();
            status.is_some()
        }),
        "exec -d did not return"
    );
    assert!(
        status.unwrap().success(),
        "exec -d /evil failed: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let evil_pid: i32 = read_trim(&pid_file).parse().expect("exec pid file");
    let runs_runtime = wait_until(T, || {
        std::fs::read(format!("/proc/{evil_pid}/cmdline"))
            .map(|c| c.starts_with(b"/proc/self/exe\0/evil"))
            .unwrap_or(false)
    });
    assert!(
        runs_runtime,
        "the #!/proc/self/exe script did not run the runtime binary (cmdline {:?})",
        std::fs::read(format!("/proc/{evil_pid}/cmdline"))
            .map(|c| String::from_utf8_lossy(&c).into_owned())
    );
    assert_eq!(
        sha256_file(format!("/proc/{evil_pid}/exe")),
        before,
        "the evil process is not running the runtime binary"
    );

    // Host side: the file behind its exe is not writable in place.
    match exe_protection(evil_pid) {
        Ok(how) => eprintln!("evil exe: {how}"),
        Err(e) => panic!("a container process runs a writable runtime binary: {e}"),
    }

    // Container side: the attacker opens the exe while the process runs,
    // waits for it to exit, then tries to write through that descriptor.
    let ns_pid = proc_status_field(evil_pid, "NSpid")
        .and_then(|v| v.split_whitespace().last().map(String::from))
        .expect("NSpid of the evil process");
    let script = format!(
        "exec 3</proc/{ns_pid}/exe || {{ echo open-failed > /tmp/result; exit 0; }}; \
         echo held > /tmp/held; \
         while [ -e /proc/{ns_pid}/exe ]; do usleep 10000; done; \
         {{ echo x >> /proc/self/fd/3; }} 2>/tmp/err; echo rc=$? > /tmp/result"
    );
    let o = rt.run(&["exec", "-d", &id, "sh", "-c", &script]);
    assert_success(&o, "exec -d attacker");
    let root = PathBuf::from(format!("/proc/{init}/root/tmp"));
    assert!(
        wait_until(T, || root.join("held").exists()
            || root.join("result").exists()),
        "attacker did not start"
    );
    // The direct write while it runs.
    let o = rt.run(&[
        "exec",
        &id,
        "sh",
        "-c",
        &format!("echo x >> /proc/{ns_pid}/exe; echo rc=$?"),
    ]);
    assert!(
        out_str(&o).starts_with("rc=") && !out_str(&o).contains("rc=0"),
        "direct write to the running runtime binary: {}",
        describe(&o)
    );
    // Let the evil process go, then the attacker writes.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(evil_pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    drop(pipe_r);
    assert!(
        wait_until(T, || root.join("result").exists()),
        "attacker did not finish"
    );
    let result = read_trim(root.join("result"));
    let err = read_trim(root.join("err"));
    let refused = [
        "Read-only file system",
        "Text file busy",
        "Permission denied",
        "not permitted",
    ]
    .iter()
    .any(|m| err.contains(m));
    assert!(
        result == "open-failed" || (result.starts_with("rc=") && result != "rc=0" && refused),
        "the attacker wrote to the runtime binary: {result} ({err})"
    );
    eprintln!("attacker: {result} {}", read_trim(root.join("err")));

    let o = rt.run(&["delete", "-f", &id]);
    assert_success(&o, "delete -f");
    assert_eq!(sha256_file(&binary), before, "the runtime binary changed");
    assert_no_leftovers(&rt, &b, &id);
}

// ---------------------------------------------------------------- (b) descriptors

#[test]
fn no_descriptor_leaks_into_the_container() {
    let rt = orca();
    let b = Bundle::busybox(&["sh", "-c", "ls /proc/$$/fd; true"]);
    let file = Path::new("/etc/hostname");

    let id = unique_name("sec-fd");
    let o = run_with_inherited_fds(&rt, 4, file, &["run", "-b", b.path_str(), &id]);
    assert_success(&o, "run with fds 3-6 open");
    assert_eq!(out_str(&o), "0\n1\n2\n", "descriptors inside the container");
    assert_no_leftovers(&rt, &b, &id);

    let id = unique_name("sec-fd-p");
    let o = run_with_inherited_fds(
        &rt,
        4,
        file,
        &["run", "--preserve-fds", "1", "-b", b.path_str(), &id],
    );
    assert_success(&o, "run --preserve-fds 1 with fds 3-6 open");
    assert_eq!(out_str(&o), "0\n1\n2\n3\n", "only fd 3 is preserved");
    assert_no_leftovers(&rt, &b, &id);
}

#[test]
fn no_descriptor_leaks_into_exec_or_the_started_init() {
    let rt = orca();
    let b = Bundle::busybox(&["sleep", "1000"]);
    let id = unique_name("sec-fd-exec");
    let file = Path::new("/etc/hostname");
    let o = run_with_inherited_fds(&rt, 4, file, &["create", "-b", b.path_str(), &id]);
    assert_success(&o, "create with fds 3-6 open");
    let init = pid_of(&rt, &id);
    let o = rt.run(&["start", &id]);
    assert_success(&o, "start");
    let mut fds: Vec<String> = Vec::new();
    assert!(
        wait_until(T, || {
            fds = std::fs::read_dir(format!("/proc/{init}/fd"))
                .map(|rd| {
                    rd.filter_map(|e| e.ok())
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .collect()
                })
                .unwrap_or_default();
            fds.sort();
            fds == ["0", "1", "2"]
        }),
        "the started init holds descriptors {fds:?}"
    );

    let o = run_with_inherited_fds(
        &rt,
        4,
        file,
        &["exec", &id, "sh", "-c", "ls /proc/$$/fd; true"],
    );
    assert_success(&o, "exec with fds 3-6 open");
    assert_eq!(out_str(&o), "0\n1\n2\n");
    let o = run_with_inherited_fds(
        &rt,
        4,
        file,
        &[
            "exec",
            "--preserve-fds",
            "2",
            &id,
            "sh",
            "-c",
            "ls /proc/$$/fd; true",
        ],
    );
    assert_success(&o, "exec --preserve-fds 2");
    assert_eq!(out_str(&o), "0\n1\n2\n3\n4\n");
    let o = rt.run(&["delete", "-f", &id]);
    assert_success(&o, "delete -f");
    assert_no_leftovers(&rt, &b, &id);
}

// ---------------------------------------------------------------- (c) cwd

#[test]
fn cwd_is_the_configured_directory_inside_the_root() {
    let rt = orca();
    let mut b = Bundle::busybox(&["sh", "-c", "readlink /proc/self/cwd; pwd"]);
    b.config_mut()["process"]["cwd"] = json!("/etc");
    b.save();
    assert_eq!(run_ok(&rt, &b, &unique_name("sec-cwd")), "/etc\n/etc\n");
    // A cwd through a symlink in the image pointing outside stays inside.
    std::os::unix::fs::symlink("/../../../../etc", b.rootfs().join("up")).unwrap();
    b.config_mut()["process"]["cwd"] = json!("/up");
    b.save();
    assert_eq!(run_ok(&rt, &b, &unique_name("sec-cwd-up")), "/etc\n/etc\n");
}

#[test]
fn cve_2024_21626_cwd_through_a_leaked_descriptor_never_lands_on_the_host() {
    let rt = orca();
    // A host directory the runtime's caller has open (without close-on-exec)
    // as fds 3-6, plus whatever the runtime itself has open during setup.
    let host = tempfile::Builder::new()
        .prefix("orca-sec-host-")
        .tempdir()
        .unwrap();
    std::fs::write(host.path().join("HOST-MARKER"), "host").unwrap();
    let host_real = std::fs::canonicalize(host.path()).unwrap();
    let mut b = Bundle::busybox(&[
        "sh",
        "-c",
        "readlink /proc/self/cwd; ls; ls ..; cat ../../../HOST-MARKER 2>/dev/null",
    ]);
    let mut outcomes = Vec::new();
    for n in 3..=12 {
        b.config_mut()["process"]["cwd"] = json!(format!("/proc/self/fd/{n}"));
        b.save();
        let id = unique_name("sec-cwdfd");
        let o = run_with_inherited_fds(&rt, 4, host.path(), &["run", "-b", b.path_str(), &id]);
        let text = out_str(&o);
        assert!(
            !text.contains("HOST-MARKER") && !text.contains(host_real.to_str().unwrap()),
            "cwd /proc/self/fd/{n} reached the host directory: {}",
            describe(&o)
        );
        if o.status.success() {
            // It may only succeed when the descriptor is a directory inside the container.
            let cwd = text.lines().next().unwrap_or("");
            assert!(
                cwd.starts_with('/') && !cwd.contains("unreachable"),
                "cwd /proc/self/fd/{n}: {}",
                describe(&o)
            );
        }
        outcomes.push(format!("fd {n}: {}", o.status));
        assert_no_leftovers(&rt, &b, &id);
    }
    eprintln!("{outcomes:#?}");
    assert!(
        !host_real.join("proc").exists(),
        "something created directories in the host dir"
    );

    // The same through exec --cwd.
    let c = Bundle::busybox(&["sleep", "1000"]);
    let id = unique_name("sec-cwdfd-exec");
    let o = rt.run(&["run", "-d", "-b", c.path_str(), &id]);
    assert_success(&o, "run -d");
    for n in 3..=8 {
        let o = run_with_inherited_fds(
            &rt,
            4,
            host.path(),
            &[
                "exec",
                "--cwd",
                &format!("/proc/self/fd/{n}"),
                &id,
                "sh",
                "-c",
                "readlink /proc/self/cwd; ls",
            ],
        );
        assert!(
            !out_str(&o).contains("HOST-MARKER"),
            "exec --cwd /proc/self/fd/{n} reached the host directory: {}",
            describe(&o)
        );
    }
    let o = rt.run(&["delete", "-f", &id]);
    assert_success(&o, "delete -f");
    assert_no_leftovers(&rt, &c, &id);
}

// ---------------------------------------------------------------- (d) masks, caps, seccomp

#[test]
fn masked_paths_are_unreadable_and_cannot_be_unmasked() {
    let rt = orca();
    let b = Bundle::busybox(&[
        "sh",
        "-c",
        "umount /proc/timer_list 2>/dev/null; umount /sys/firmware 2>/dev/null; \
         wc -c < /proc/timer_list; cat /proc/kcore 2>/dev/null | wc -c; \
         cat /proc/keys | wc -c; ls -A /sys/firmware | wc -l; ls -A /proc/acpi | wc -l",
    ]);
    let out = run_ok(&rt, &b, &unique_name("sec-mask"));
    let nums: Vec<&str> = out.lines().collect();
    assert_eq!(
        nums,
        ["0", "0", "0", "0", "0"],
        "masked paths readable: {out}"
    );
}

#[test]
fn readonly_paths_are_unwritable_and_cannot_be_remounted() {
    let rt = orca();
    let b = Bundle::busybox(&[
        "sh",
        "-c",
        "echo 1 > /proc/sys/kernel/domainname; echo a=$?; \
         echo 1 > /proc/sys/vm/drop_caches; echo b=$?; \
         mount -o remount,rw /proc/sys 2>/dev/null; echo c=$?; \
         umount /proc/sys 2>/dev/null; echo d=$?; \
         echo 1 > /proc/sys/kernel/domainname; echo e=$?; \
         touch /proc/irq/x 2>/dev/null; echo f=$?",
    ]);
    let id = unique_name("sec-ro");
    let o = rt.run(&["run", "-b", b.path_str(), &id]);
    assert_success(&o, "run");
    let text = out_str(&o);
    for l in text.lines() {
        assert!(
            !l.ends_with("=0"),
            "{l}: a read-only path was written or remounted: {}",
            describe(&o)
        );
    }
    assert_eq!(text.lines().count(), 6, "{}", describe(&o));
    assert!(
        err_str(&o).contains("Read-only file system"),
        "{}",
        describe(&o)
    );
    assert_no_leftovers(&rt, &b, &id);
}

/// The mask of the capabilities in [`DEFAULT_CAPS`].
fn default_caps_mask() -> u64 {
    let bit = |c: &str| -> u32 {
        match c {
            "CAP_CHOWN" => 0,
            "CAP_DAC_OVERRIDE" => 1,
            "CAP_FOWNER" => 3,
            "CAP_FSETID" => 4,
            "CAP_KILL" => 5,
            "CAP_SETGID" => 6,
            "CAP_SETUID" => 7,
            "CAP_SETPCAP" => 8,
            "CAP_NET_BIND_SERVICE" => 10,
            "CAP_NET_RAW" => 13,
            "CAP_SYS_CHROOT" => 18,
            "CAP_MKNOD" => 27,
            "CAP_AUDIT_WRITE" => 29,
            "CAP_SETFCAP" => 31,
            other => panic!("unexpected default capability {other}"),
        }
    };
    DEFAULT_CAPS.iter().fold(0, |m, c| m | (1u64 << bit(c)))
}

#[test]
fn default_capability_set_is_exactly_as_configured() {
    let rt = orca();
    assert_eq!(default_caps_mask(), 0xa80425fb);
    let mut b = Bundle::busybox(&["grep", "^Cap", "/proc/self/status"]);
    let want = |inh: u64, prm: u64, eff: u64, bnd: u64, amb: u64| {
        format!(
            "CapInh:\t{inh:016x}\nCapPrm:\t{prm:016x}\nCapEff:\t{eff:016x}\nCapBnd:\t{bnd:016x}\nCapAmb:\t{amb:016x}\n"
        )
    };
    let m = default_caps_mask();
    assert_eq!(
        run_ok(&rt, &b, &unique_name("sec-caps")),
        want(0, m, m, m, 0)
    );

    // A non-root user keeps nothing but the bounding set.
    b.config_mut()["process"]["user"] = json!({"uid": 1000, "gid": 1000});
    b.save();
    assert_eq!(
        run_ok(&rt, &b, &unique_name("sec-caps-u")),
        want(0, 0, 0, m, 0)
    );

    // An exec gets the same sets.
    let s = Bundle::busybox(&["sleep", "1000"]);
    let id = unique_name("sec-caps-exec");
    let o = rt.run(&["run", "-d", "-b", s.path_str(), &id]);
    assert_success(&o, "run -d");
    let o = rt.run(&["exec", &id, "grep", "^Cap", "/proc/self/status"]);
    assert_success(&o, "exec");
    assert_eq!(out_str(&o), want(0, m, m, m, 0));
    // Operations the default set does not allow (CAP_SYS_ADMIN,
    // CAP_NET_ADMIN, CAP_SYS_NICE; a device node may be made but not opened).
    for cmd in [
        "mount -t tmpfs none /tmp",
        "umount /proc/timer_list",
        "ip link set lo mtu 1000",
        "hostname evil",
        "renice -n -5 -p $$",
        "mknod /dev/sda b 8 0 && head -c1 /dev/sda",
    ] {
        let o = rt.run(&["exec", &id, "sh", "-c", cmd]);
        assert!(!o.status.success(), "{cmd:?} succeeded: {}", describe(&o));
        let err = err_str(&o).to_lowercase();
        assert!(
            err.contains("permission denied") || err.contains("not permitted"),
            "{cmd:?} failed for another reason: {}",
            describe(&o)
        );
    }
    let o = rt.run(&["delete", "-f", &id]);
    assert_success(&o, "delete -f");
    assert_no_leftovers(&rt, &s, &id);
}

#[test]
fn seccomp_errno_is_returned_to_the_process() {
    let rt = orca();
    let mut b = Bundle::busybox(&[
        "sh",
        "-c",
        "mkdir /tmp/x; echo rc=$?; ls -d /tmp/x 2>/dev/null; true",
    ]);
    add_tmp(&mut b);
    for (errno, msg) in [
        (1u32, "Operation not permitted"),
        (38, "Function not implemented"),
    ] {
        b.config_mut()["linux"]["seccomp"] = json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno}]
        });
        b.save();
        let id = unique_name("sec-seccomp");
        let o = rt.run(&["run", "-b", b.path_str(), &id]);
        assert_success(&o, "run");
        assert_eq!(out_str(&o), "rc=1\n", "{}", describe(&o));
        assert!(err_str(&o).contains(msg), "errno {errno}: {}", describe(&o));
        assert_no_leftovers(&rt, &b, &id);

        // exec'd processes get the same filter.
        let s = Bundle::busybox(&["sleep", "1000"]);
        let mut s = s;
        add_tmp(&mut s);
        s.config_mut()["linux"]["seccomp"] = b.config()["linux"]["seccomp"].clone();
        s.save();
        let id = unique_name("sec-seccomp-exec");
        let o = rt.run(&["run", "-d", "-b", s.path_str(), &id]);
        assert_success(&o, "run -d");
        let o = rt.run(&["exec", &id, "mkdir", "/tmp/y"]);
        assert_eq!(o.status.code(), Some(1), "{}", describe(&o));
        assert!(
            err_str(&o).contains(msg),
            "exec, errno {errno}: {}",
            describe(&o)
        );
        let o = rt.run(&["exec", &id, "grep", "Seccomp:", "/proc/self/status"]);
        assert_eq!(out_str(&o), "Seccomp:\t2\n");
        let o = rt.run(&["delete", "-f", &id]);
        assert_success(&o, "delete -f");
        assert_no_leftovers(&rt, &s, &id);
    }
}

// ---------------------------------------------------------------- (e) symlinks and mounts

#[test]
fn symlinked_mount_destination_stays_inside_the_rootfs() {
    let rt = orca();
    let host = tempfile::Builder::new()
        .prefix("orca-sec-target-")
        .tempdir()
        .unwrap();
    let host_path = host.path().to_str().unwrap().to_string();
    let name = host
        .path()
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    let mut b = Bundle::busybox(&[
        "sh",
        "-c",
        "touch /evil/inside-marker && echo wrote; \
         touch /evil2/inside-marker2 && echo wrote2; \
         cut -d' ' -f2,3 /proc/self/mounts | grep -E ' (tmpfs|ext4|xfs|btrfs)$' | grep -v '^/dev\\|^/sys\\|^/proc\\|^/ '; \
         readlink /evil",
    ]);
    // rootfs/evil -> /tmp/<host dir> (absolute), rootfs/evil2 -> ../../..<host dir> (relative).
    std::os::unix::fs::symlink(&host_path, b.rootfs().join("evil")).unwrap();
    std::os::unix::fs::symlink(
        format!("../../../../../..{host_path}"),
        b.rootfs().join("evil2"),
    )
    .unwrap();
    add_mount(
        &mut b,
        json!({"destination": "/evil", "type": "tmpfs", "source": "tmpfs", "options": ["mode=777"]}),
    );
    let bind_src = tempfile::tempdir().unwrap();
    add_mount(
        &mut b,
        json!({"destination": "/evil2", "type": "bind", "source": bind_src.path(), "options": ["rbind", "rw"]}),
    );
    b.save();

    let id = unique_name("sec-symlink");
    let files = OutputFiles::new();
    let mut cmd = rt.cmd();
    cmd.args(["run", "-b", b.path_str(), &id]);
    let st = files.run(&mut cmd);
    assert!(
        st.success(),
        "run: {st}\n{}\n{}",
        files.stdout(),
        files.stderr()
    );
    let out = files.stdout();
    // Inside, the mounts landed on the symlinks' targets resolved in the rootfs.
    assert!(out.contains("wrote\n") && out.contains("wrote2\n"), "{out}");
    assert!(
        out.contains(&format!("{host_path} tmpfs")),
        "the tmpfs is not at {host_path} inside the container: {out}"
    );
    // Nothing reached the host directory, and it has no mount.
    let entries: Vec<_> = std::fs::read_dir(host.path()).unwrap().collect();
    assert!(
        entries.is_empty(),
        "the host dir {host_path} was written: {entries:?}"
    );
    assert!(mounts_under(host.path()).is_empty());
    // The bind source got the write through the in-rootfs path.
    assert!(
        bind_src.path().join("inside-marker2").exists(),
        "bind mount went elsewhere"
    );
    // The mount points were created inside the rootfs.
    assert!(
        b.rootfs().join("tmp").join(&name).is_dir(),
        "no mount point inside the rootfs at tmp/{name}"
    );
    assert_no_leftovers(&rt, &b, &id);
}

#[test]
fn symlinked_mount_destination_checked_while_the_container_runs() {
    // While the container runs, its mount namespace (seen through
    // /proc/<pid>/mountinfo) has nothing mounted outside its root and the host
    // dir is untouched.
    let rt = orca();
    let host = tempfile::Builder::new()
        .prefix("orca-sec-target-")
        .tempdir()
        .unwrap();
    let mut b = Bundle::busybox(&["sleep", "1000"]);
    std::os::unix::fs::symlink(host.path(), b.rootfs().join("evil")).unwrap();
    add_mount(
        &mut b,
        json!({"destination": "/evil", "type": "tmpfs", "source": "tmpfs"}),
    );
    b.save();
    let id = unique_name("sec-symlink-run");
    let o = rt.run(&["run", "-d", "-b", b.path_str(), &id]);
    assert_success(&o, "run -d");
    let pid = pid_of(&rt, &id);
    let mi = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
    let host_str = host.path().to_str().unwrap();
    let tmpfs_at_target = mi.lines().any(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        f.len() > 4 && f[4] == host_str && l.contains(" - tmpfs ")
    });
    assert!(
        tmpfs_at_target,
        "no tmpfs at {host_str} (inside the root): {mi}"
    );
    assert!(mounts_under(host.path()).is_empty());
    let o = rt.run(&["exec", &id, "sh", "-c", "touch /evil/x && ls /evil"]);
    assert_success(&o, "exec touch");
    assert_eq!(out_str(&o), "x\n");
    assert!(std::fs::read_dir(host.path()).unwrap().next().is_none());
    let o = rt.run(&["delete", "-f", &id]);
    assert_success(&o, "delete -f");
    assert_no_leftovers(&rt, &b, &id);
}
