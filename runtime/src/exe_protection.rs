//! Protection against CVE-2019-5736: a container process must never be able to open the
//! runtime's binary on the host for writing through /proc/<pid>/exe. Before doing anything
//! that puts a process into a container, the runtime makes sure its own executable is
//! read-only, so /proc/self/exe of every process it forks cannot be written:
//!
//! 1. already on a read-only mount, or a sealed memfd: nothing to do;
//! 2. otherwise (the common case) it moves into a private mount namespace (a slave of the
//!    host's, so nothing propagates back), bind-mounts its binary read-only over itself and
//!    re-executes through that path — no copy of the binary, as runc 1.2 does;
//! 3. if mounting is not possible (no CAP_SYS_ADMIN), it re-executes from a sealed memfd copy.

use crate::error::{Context, Result, RuntimeError};
use std::ffi::CString;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const SEALS: libc::c_int =
    libc::F_SEAL_SEAL | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE;

/// True when /proc/self/exe is already a sealed memfd.
pub fn is_cloned() -> bool {
    let Ok(f) = std::fs::File::open("/proc/self/exe") else {
        return false;
    };
    // SAFETY: F_GET_SEALS on a descriptor we own; no memory is passed.
    let seals = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_GET_SEALS) };
    seals >= 0 && (seals & SEALS) == SEALS
}

/// True when /proc/self/exe lives on a read-only mount.
fn on_readonly_mount() -> bool {
    nix::sys::statvfs::statvfs("/proc/self/exe")
        .map(|s| s.flags().contains(nix::sys::statvfs::FsFlags::ST_RDONLY))
        .unwrap_or(false)
}

/// Make sure the running binary cannot be written through /proc/self/exe (see the module
/// doc). Returns when that holds; otherwise re-executes and never returns.
pub fn ensure_protected() -> Result<()> {
    if on_readonly_mount() || is_cloned() {
        return Ok(());
    }
    match reexec_from_readonly_bind() {
        Ok(never) => match never {},
        Err(e) => {
            tracing::debug!(error = %e, "read-only bind of the runtime binary failed; using a memfd copy");
            reexec_from_memfd()
        }
    }
}

enum Never {}

fn reexec_from_readonly_bind() -> Result<Never> {
    use nix::mount::{mount, MsFlags};
    let exe = std::fs::read_link("/proc/self/exe").ctx(|| "readlink /proc/self/exe")?;
    if !exe.is_absolute() || !exe.exists() {
        return Err(RuntimeError::other(format!(
            "runtime binary {exe:?} is not reachable"
        )));
    }
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).ctx(|| "unshare mount namespace")?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_SLAVE | MsFlags::MS_REC,
        None::<&str>,
    )
    .ctx(|| "make / a slave mount")?;
    mount(
        Some(&exe),
        &exe,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .ctx(|| format!("bind {exe:?} onto itself"))?;
    mount(
        None::<&str>,
        &exe,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
        None::<&str>,
    )
    .ctx(|| format!("remount {exe:?} read-only"))?;
    let path = CString::new(std::os::unix::ffi::OsStrExt::as_bytes(exe.as_os_str()))
        .map_err(|e| RuntimeError::other(e.to_string()))?;
    let (args, env) = args_and_env()?;
    let e = nix::unistd::execve(&path, &args, &env).unwrap_err();
    Err(RuntimeError::Sys {
        context: format!("re-exec {exe:?} from its read-only bind mount"),
        source: e,
    })
}

fn args_and_env() -> Result<(Vec<CString>, Vec<CString>)> {
    let args: Vec<CString> = std::env::args_os()
        .map(|a| CString::new(std::os::unix::ffi::OsStrExt::as_bytes(a.as_os_str())))
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| RuntimeError::other(e.to_string()))?;
    let env: Vec<CString> = std::env::vars_os()
        .filter_map(|(k, v)| {
            let mut kv = k.into_encoded_bytes();
            kv.push(b'=');
            kv.extend(v.into_encoded_bytes());
            CString::new(kv).ok()
        })
        .collect();
    Ok((args, env))
}

/// Re-exec from a sealed memfd copy of the binary. Never returns on success.
fn reexec_from_memfd() -> Result<()> {
    let mut exe = std::fs::File::open("/proc/self/exe").ctx(|| "open /proc/self/exe")?;
    let name = CString::new("orca-runtime").map_err(|e| RuntimeError::other(e.to_string()))?;
    // SAFETY: memfd_create with a valid C string; the returned fd is owned below.
    let raw =
        unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
    if raw < 0 {
        return Err(RuntimeError::Io {
            context: "memfd_create for the cloned runtime binary".into(),
            source: std::io::Error::last_os_error(),
        });
    }
    // SAFETY: `raw` is a fresh descriptor nobody else owns.
    let memfd = unsafe { OwnedFd::from_raw_fd(raw) };
    let len = exe.metadata().ctx(|| "stat /proc/self/exe")?.len();
    let mut copied = 0u64;
    while copied < len {
        // SAFETY: both descriptors are valid for the duration of the call; offsets are null.
        let n = unsafe {
            libc::sendfile(
                memfd.as_raw_fd(),
                exe.as_raw_fd(),
                std::ptr::null_mut(),
                (len - copied) as usize,
            )
        };
        if n < 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return Err(err).ctx(|| "copy the runtime binary into a memfd");
        }
        if n == 0 {
            break;
        }
        copied += n as u64;
    }
    if copied != len {
        // Fall back to read/write for filesystems without sendfile support.
        let mut buf = Vec::new();
        exe.read_to_end(&mut buf).ctx(|| "read /proc/self/exe")?;
        let mut f = std::fs::File::from(memfd.try_clone().ctx(|| "dup memfd")?);
        std::io::Write::write_all(&mut f, &buf).ctx(|| "write memfd")?;
    }
    // SAFETY: F_ADD_SEALS on our memfd; no memory is passed.
    if unsafe { libc::fcntl(memfd.as_raw_fd(), libc::F_ADD_SEALS, SEALS) } < 0 {
        return Err(std::io::Error::last_os_error()).ctx(|| "seal the cloned runtime binary");
    }
    let (args, env) = args_and_env()?;
    let e = nix::unistd::fexecve(memfd.as_raw_fd(), &args, &env).unwrap_err();
    Err(RuntimeError::Sys {
        context: "re-exec from the cloned runtime binary".into(),
        source: e,
    })
}
