//! Protection against CVE-2019-5736: a container process must never be able to open the
//! runtime's binary on the host for writing through /proc/<pid>/exe. Before doing anything
//! that puts a process into a container, the runtime re-executes itself from a sealed memfd
//! copy, so /proc/self/exe of every process it forks is that read-only copy.

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

/// Re-exec from a sealed memfd copy of the binary unless already running from one. Returns
/// only when already cloned; on success of the re-exec it never returns.
pub fn ensure_cloned() -> Result<()> {
    if is_cloned() {
        return Ok(());
    }
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
    let e = nix::unistd::fexecve(memfd.as_raw_fd(), &args, &env).unwrap_err();
    Err(RuntimeError::Sys {
        context: "re-exec from the cloned runtime binary".into(),
        source: e,
    })
}
