//! OOM notifications.
//!
//! - v1: an eventfd registered through `cgroup.event_control` for `memory.oom_control`; the
//!   kernel signals it when the cgroup hits OOM (and also when the cgroup is removed, which we
//!   tell apart by checking whether the directory still exists).
//! - v2: the `oom_kill` counter of `memory.events`, polled every 250 ms.

use super::{files, CgroupError};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::eventfd::{EfdFlags, EventFd};
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Watches one container's memory cgroup for OOM kills.
pub struct OomNotifier {
    inner: Inner,
}

enum Inner {
    V1 {
        dir: PathBuf,
        event: File,
        /// Must stay open for the registration to stay valid.
        _oom_control: File,
    },
    V2 {
        dir: PathBuf,
        last: u64,
    },
}

fn oom_kill_count(dir: &Path) -> Result<u64, CgroupError> {
    match files::read_opt(dir, "memory.events")? {
        Some(t) => Ok(super::stats::parse_flat_keyed(&t)
            .get("oom_kill")
            .copied()
            .unwrap_or(0)),
        None => Err(CgroupError::Removed(dir.to_path_buf())),
    }
}

impl OomNotifier {
    pub(super) fn new_v1(dir: &Path) -> Result<Self, CgroupError> {
        let oom_path = dir.join("memory.oom_control");
        let oom_control = File::open(&oom_path).map_err(|source| CgroupError::Io {
            op: "opening",
            path: oom_path,
            source,
        })?;
        let efd = EventFd::from_value_and_flags(0, EfdFlags::EFD_CLOEXEC).map_err(|e| {
            CgroupError::Io {
                op: "creating an eventfd for",
                path: dir.to_path_buf(),
                source: e.into(),
            }
        })?;
        let event = File::from(OwnedFd::from(efd));
        files::write(
            dir,
            "cgroup.event_control",
            &format!("{} {}", event.as_raw_fd(), oom_control.as_raw_fd()),
        )?;
        Ok(OomNotifier {
            inner: Inner::V1 {
                dir: dir.to_path_buf(),
                event,
                _oom_control: oom_control,
            },
        })
    }

    pub(super) fn new_v2(dir: &Path) -> Result<Self, CgroupError> {
        let last = oom_kill_count(dir)?;
        Ok(OomNotifier {
            inner: Inner::V2 {
                dir: dir.to_path_buf(),
                last,
            },
        })
    }

    /// Wait up to `timeout` for an OOM event. `Ok(true)`: an OOM kill happened since the last
    /// call (or since creation); `Ok(false)`: timed out; `Err(CgroupError::Removed)`: the cgroup
    /// is gone, no further events will come.
    pub fn wait(&mut self, timeout: Duration) -> Result<bool, CgroupError> {
        let deadline = Instant::now() + timeout;
        match &mut self.inner {
            Inner::V1 { dir, event, .. } => loop {
                let left = deadline.saturating_duration_since(Instant::now());
                let ms = u16::try_from(left.as_millis()).unwrap_or(u16::MAX);
                let mut fds = [PollFd::new(event.as_fd(), PollFlags::POLLIN)];
                match poll(&mut fds, PollTimeout::from(ms)) {
                    Ok(0) => {
                        if Instant::now() >= deadline {
                            return Ok(false);
                        }
                    }
                    Ok(_) => {
                        let mut buf = [0u8; 8];
                        event
                            .read_exact(&mut buf)
                            .map_err(|source| CgroupError::Io {
                                op: "reading the OOM eventfd for",
                                path: dir.clone(),
                                source,
                            })?;
                        if !dir.join("cgroup.event_control").exists() {
                            return Err(CgroupError::Removed(dir.clone()));
                        }
                        return Ok(true);
                    }
                    Err(nix::errno::Errno::EINTR) => {}
                    Err(e) => {
                        return Err(CgroupError::Io {
                            op: "polling the OOM eventfd for",
                            path: dir.clone(),
                            source: e.into(),
                        })
                    }
                }
            },
            Inner::V2 { dir, last } => loop {
                let n = oom_kill_count(dir)?;
                if n > *last {
                    *last = n;
                    return Ok(true);
                }
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Ok(false);
                }
                std::thread::sleep(left.min(Duration::from_millis(250)));
            },
        }
    }
}
