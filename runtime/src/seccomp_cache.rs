//! Compiled seccomp filters, cached by profile.
//!
//! Compiling Docker's default profile with libseccomp costs about 10 ms per container on the
//! machines here (it was ≈ 40 % of `orca-runtime run`'s CPU time), and every container an engine
//! starts carries the same profile. So, as crun does, the compiled BPF program is kept in the
//! runtime's state root (`<root>/seccomp-cache/<key>`), keyed by a SHA-256 of
//! (cache format, libseccomp version, CPU architecture, the profile's canonical JSON). A container
//! whose profile was seen before loads the stored program directly with `seccomp(2)`; a first one
//! compiles with libseccomp, exports the program and stores it (atomically: temp file + rename).
//! Both paths load through [`BpfFilter::load`], so the raw loader is what every container uses.
//!
//! Profiles with `SCMP_ACT_NOTIFY` rules are not cached: their listener fd comes from libseccomp's
//! own load, so they keep the [`SeccompProgram`] path.
//!
//! A cache entry that cannot be read or is malformed (not a whole number of instructions, empty,
//! over the kernel's 4096-instruction limit) is ignored and rewritten; a cache directory that
//! cannot be written only costs the compile next time (logged).

use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxSeccomp, LinuxSeccompAction, LinuxSeccompFilterFlag};
use sha2::{Digest, Sha256};

use crate::seccomp::{SeccompError, SeccompProgram};

/// Bumped whenever the meaning of a cached file changes.
const CACHE_FORMAT: &str = "orca-seccomp-bpf-v2";
/// The kernel's BPF_MAXINSNS.
const MAX_INSNS: usize = 4096;
/// Entries kept before the directory is emptied (profiles are few; this only bounds a
/// pathological stream of distinct profiles).
const MAX_ENTRIES: usize = 256;
const INSN_SIZE: usize = std::mem::size_of::<libc::sock_filter>();

/// Kernel filter flags (linux/seccomp.h).
const SECCOMP_FILTER_FLAG_TSYNC: libc::c_ulong = 1;
const SECCOMP_FILTER_FLAG_LOG: libc::c_ulong = 2;
const SECCOMP_FILTER_FLAG_SPEC_ALLOW: libc::c_ulong = 4;

/// A classic BPF seccomp program and the `seccomp(2)` flags to load it with.
pub struct BpfFilter {
    insns: Vec<libc::sock_filter>,
    flags: libc::c_ulong,
}

impl BpfFilter {
    /// Number of BPF instructions.
    pub fn len(&self) -> usize {
        self.insns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.insns.is_empty()
    }

    /// Load the program into the calling thread (`seccomp(SECCOMP_SET_MODE_FILTER)`). Without
    /// no_new_privs set this needs CAP_SYS_ADMIN, as libseccomp's load with its NNP attribute off.
    pub fn load(&self) -> Result<(), SeccompError> {
        let prog = libc::sock_fprog {
            len: self.insns.len() as libc::c_ushort,
            filter: self.insns.as_ptr() as *mut libc::sock_filter,
        };
        // SAFETY: `prog` points at `insns`, which outlives the call; the kernel copies the
        // program and does not keep the pointer.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                self.flags,
                &prog as *const libc::sock_fprog,
            )
        };
        if rc != 0 {
            return Err(SeccompError::Other(format!(
                "loading filter into the kernel (seccomp(SECCOMP_SET_MODE_FILTER), {} instructions, flags {:#x}): {}",
                self.insns.len(),
                self.flags,
                std::io::Error::last_os_error()
            )));
        }
        tracing::debug!(instructions = self.insns.len(), "seccomp filter loaded");
        Ok(())
    }

    fn from_bytes(bytes: &[u8], flags: libc::c_ulong) -> Option<BpfFilter> {
        if bytes.is_empty()
            || !bytes.len().is_multiple_of(INSN_SIZE)
            || bytes.len() / INSN_SIZE > MAX_INSNS
        {
            return None;
        }
        let insns = bytes
            .chunks_exact(INSN_SIZE)
            .map(|c| libc::sock_filter {
                code: u16::from_ne_bytes([c[0], c[1]]),
                jt: c[2],
                jf: c[3],
                k: u32::from_ne_bytes([c[4], c[5], c[6], c[7]]),
            })
            .collect();
        Some(BpfFilter { insns, flags })
    }
}

fn kernel_flags(profile: &LinuxSeccomp) -> libc::c_ulong {
    let mut flags = 0;
    for f in profile.flags().as_deref().unwrap_or(&[]) {
        flags |= match f {
            LinuxSeccompFilterFlag::SeccompFilterFlagTsync => SECCOMP_FILTER_FLAG_TSYNC,
            LinuxSeccompFilterFlag::SeccompFilterFlagLog => SECCOMP_FILTER_FLAG_LOG,
            LinuxSeccompFilterFlag::SeccompFilterFlagSpecAllow => SECCOMP_FILTER_FLAG_SPEC_ALLOW,
        };
    }
    flags
}

/// The cache file name for a profile: hex SHA-256 of format, libseccomp version, arch and JSON.
pub fn cache_key(profile: &LinuxSeccomp) -> Result<String, SeccompError> {
    let json = serde_json::to_vec(profile)
        .map_err(|e| SeccompError::Other(format!("serializing the profile: {e}")))?;
    let v = libseccomp::ScmpVersion::current()
        .map_err(|e| SeccompError::Other(format!("libseccomp version: {e}")))?;
    let mut h = Sha256::new();
    h.update(CACHE_FORMAT.as_bytes());
    h.update(format!(
        "\0{}.{}.{}\0{}\0",
        v.major,
        v.minor,
        v.micro,
        std::env::consts::ARCH
    ));
    h.update(&json);
    Ok(hex::encode(h.finalize()))
}

/// The profile's filter as a BPF program, from `cache_dir` when it holds it (`None`: no cache).
/// `Ok(None)` for a profile with `SCMP_ACT_NOTIFY` rules, which must be loaded through
/// [`SeccompProgram`] to get its listener fd.
pub fn prepare(
    profile: &LinuxSeccomp,
    cache_dir: Option<&Path>,
) -> Result<Option<BpfFilter>, SeccompError> {
    let notify = profile
        .syscalls()
        .as_deref()
        .unwrap_or(&[])
        .iter()
        .any(|s| s.action() == LinuxSeccompAction::ScmpActNotify);
    if notify {
        return Ok(None);
    }
    let flags = kernel_flags(profile);
    let entry = match cache_dir {
        Some(dir) => Some(dir.join(cache_key(profile)?)),
        None => None,
    };
    if let Some(path) = &entry {
        match std::fs::read(path) {
            Ok(bytes) => match BpfFilter::from_bytes(&bytes, flags) {
                Some(f) => {
                    tracing::debug!(path = %path.display(), instructions = f.len(), "seccomp filter from cache");
                    return Ok(Some(f));
                }
                None => {
                    tracing::warn!(path = %path.display(), bytes = bytes.len(), "malformed seccomp cache entry: compiling again");
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot read seccomp cache entry")
            }
        }
    }
    let bytes = compile_to_bpf(profile)?;
    let filter = BpfFilter::from_bytes(&bytes, flags).ok_or_else(|| {
        SeccompError::Other(format!(
            "libseccomp exported a malformed program ({} bytes; at most {MAX_INSNS} instructions of {INSN_SIZE} bytes)",
            bytes.len()
        ))
    })?;
    if let Some(path) = &entry {
        if let Err(e) = store(path, &bytes) {
            tracing::warn!(path = %path.display(), error = %e, "cannot store seccomp cache entry");
        }
    }
    Ok(Some(filter))
}

/// Compile with libseccomp and export the raw BPF program.
fn compile_to_bpf(profile: &LinuxSeccomp) -> Result<Vec<u8>, SeccompError> {
    let prog = SeccompProgram::from_oci(profile)?;
    let fd = nix::sys::memfd::memfd_create(
        c"orca-seccomp-bpf",
        nix::sys::memfd::MemFdCreateFlag::MFD_CLOEXEC,
    )
    .map_err(|e| SeccompError::Other(format!("memfd_create for BPF export: {e}")))?;
    prog.export_bpf(&fd)?;
    let mut file = std::fs::File::from(fd);
    let mut out = Vec::new();
    file.seek(std::io::SeekFrom::Start(0))
        .and_then(|_| file.read_to_end(&mut out))
        .map_err(|e| SeccompError::Other(format!("reading BPF export: {e}")))?;
    Ok(out)
}

fn store(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    if std::fs::read_dir(dir)?.count() >= MAX_ENTRIES {
        for e in std::fs::read_dir(dir)?.flatten() {
            let _ = std::fs::remove_file(e.path());
        }
    }
    let tmp: PathBuf = dir.join(format!(
        ".tmp-{}-{}",
        std::process::id(),
        path.file_name().and_then(|n| n.to_str()).unwrap_or("entry")
    ));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)?;
        f.write_all(bytes)?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::in_child;

    fn profile(json: &str) -> LinuxSeccomp {
        crate::seccomp::profile_from_json(json.as_bytes()).unwrap()
    }

    const DENY_GETCWD: &str = r#"{
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "syscalls": [
            {"names": ["getcwd"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38},
            {"names": ["personality"], "action": "SCMP_ACT_ERRNO",
             "args": [{"index": 0, "value": 8, "op": "SCMP_CMP_EQ"}]}
        ]
    }"#;

    fn getcwd_errno() -> i32 {
        let mut buf = [0u8; 256];
        // SAFETY: buf is valid for its length.
        let r = unsafe { libc::getcwd(buf.as_mut_ptr() as *mut libc::c_char, buf.len()) };
        if r.is_null() {
            std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
        } else {
            0
        }
    }

    #[test]
    fn first_prepare_compiles_and_stores_second_reads_the_cache() {
        let dir = tempfile::tempdir().unwrap();
        let p = profile(DENY_GETCWD);
        let key = cache_key(&p).unwrap();
        let entry = dir.path().join(&key);
        assert!(!entry.exists());
        let first = prepare(&p, Some(dir.path()))
            .unwrap()
            .expect("a BPF filter");
        let stored = std::fs::read(&entry).unwrap();
        assert_eq!(stored.len(), first.len() * INSN_SIZE);
        let second = prepare(&p, Some(dir.path()))
            .unwrap()
            .expect("a BPF filter");
        assert_eq!(second.len(), first.len());
        // What a later prepare returns is the stored file, not a fresh compile: shorten the
        // entry by one instruction and the prepared program shortens with it.
        let truncated = &stored[..stored.len() - INSN_SIZE];
        std::fs::write(&entry, truncated).unwrap();
        let third = prepare(&p, Some(dir.path()))
            .unwrap()
            .expect("a BPF filter");
        assert_eq!(
            third.len(),
            first.len() - 1,
            "a well-formed cache entry is used as stored"
        );
    }

    #[test]
    fn malformed_entry_is_compiled_again_and_rewritten() {
        let dir = tempfile::tempdir().unwrap();
        let p = profile(DENY_GETCWD);
        let entry = dir.path().join(cache_key(&p).unwrap());
        std::fs::write(&entry, b"not bpf").unwrap();
        let f = prepare(&p, Some(dir.path()))
            .unwrap()
            .expect("a BPF filter");
        assert!(f.len() > 3);
        assert_eq!(std::fs::read(&entry).unwrap().len(), f.len() * INSN_SIZE);
    }

    #[test]
    fn different_profiles_have_different_keys() {
        let a = cache_key(&profile(DENY_GETCWD)).unwrap();
        let b = cache_key(&profile(&DENY_GETCWD.replace("38", "39"))).unwrap();
        assert_ne!(a, b);
        assert_eq!(a, cache_key(&profile(DENY_GETCWD)).unwrap());
    }

    #[test]
    fn cached_filter_is_enforced_in_a_child() {
        let dir = tempfile::tempdir().unwrap();
        let p = profile(DENY_GETCWD);
        // Compile + store, then load from the cache in a child.
        prepare(&p, Some(dir.path())).unwrap();
        let code = in_child(|| {
            let Ok(Some(f)) = prepare(&p, Some(dir.path())) else {
                return 100;
            };
            if f.load().is_err() {
                return 101;
            }
            getcwd_errno()
        });
        assert_eq!(code, libc::ENOSYS, "getcwd must fail with errnoRet 38");
        // Without the filter getcwd works.
        assert_eq!(in_child(getcwd_errno), 0);
    }

    #[test]
    fn notify_profiles_keep_libseccomp() {
        let p = profile(
            r#"{"defaultAction": "SCMP_ACT_ALLOW",
                "listenerPath": "/nonexistent",
                "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_NOTIFY"}]}"#,
        );
        let dir = tempfile::tempdir().unwrap();
        assert!(prepare(&p, Some(dir.path())).unwrap().is_none());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
