//! The idle-memory levers of orca-supervisor and orcad (docs/ARCHITECTURE.md,
//! "Memory" of each): both run as non-PIE executables (no start-up
//! relocation of their read-only data) still linked against glibc's libc.so
//! (NSS), and orca-supervisor does not map libm.so (it defines the one libm
//! function it uses, `pow`; orcad gets libm.so anyway through NSS modules
//! such as libnss_systemd). The figures themselves are measured by
//! orca-bench (`supervisor.idle_rss_kib`, `engine.idle_rss_kib`).

use std::time::Duration;

use orca_integration::engine_support::Orcad;
use orca_integration::{require_root, Containerd, Supervisor};

/// `e_type` of the ELF file behind /proc/PID/exe: 2 = ET_EXEC (fixed
/// address), 3 = ET_DYN (PIE).
fn elf_type(pid: u32) -> u16 {
    let exe = std::fs::read(format!("/proc/{pid}/exe"))
        .unwrap_or_else(|e| panic!("cannot read /proc/{pid}/exe: {e}"));
    assert!(exe.len() > 18 && &exe[..4] == b"\x7fELF", "not an ELF file");
    u16::from_le_bytes([exe[16], exe[17]])
}

fn mapped_files(pid: u32) -> Vec<String> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .unwrap_or_else(|e| panic!("cannot read /proc/{pid}/maps: {e}"));
    let mut files: Vec<String> = maps
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .filter(|p| p.starts_with('/'))
        .map(str::to_string)
        .collect();
    files.dedup();
    files
}

#[track_caller]
fn check(pid: u32, what: &str, without_libm: bool) {
    assert_eq!(
        elf_type(pid),
        2,
        "{what} is not linked as a non-PIE executable"
    );
    let files = mapped_files(pid);
    assert!(
        !without_libm || !files.iter().any(|f| f.contains("/libm.so")),
        "{what} maps libm.so: {files:?}"
    );
    assert!(
        files.iter().any(|f| f.contains("/libc.so")),
        "{what} should stay dynamically linked against glibc (NSS): {files:?}"
    );
}

#[test]
fn supervisor_is_non_pie_without_libm() {
    require_root();
    let s = Supervisor::start();
    let pid = s.pid().expect("supervisor pid");
    // Serve a request first: the runtime's workers have run by then.
    let v = s.ctr_ok_ns("test", &["version"]);
    assert!(v.contains("orca-supervisor"), "{v}");
    check(pid, "orca-supervisor", true);
}

#[test]
fn orcad_is_non_pie() {
    require_root();
    let c = Containerd::start();
    let o = Orcad::start(&c);
    let out = o.docker_ok(
        &["version", "--format", "{{.Server.Version}}"],
        Duration::from_secs(30),
    );
    assert!(!out.trim().is_empty(), "no server version");
    let pidfile = o
        .data_root()
        .parent()
        .expect("orcad temp dir")
        .join("exec/orcad.pid");
    let pid: u32 = std::fs::read_to_string(&pidfile)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", pidfile.display()))
        .trim()
        .parse()
        .expect("pid in orcad's pid file");
    check(pid, "orcad", false);
}
