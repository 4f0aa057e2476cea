//! OOM notifications on the unified (cgroup v2) hierarchy.
//!
//! cgroup v2 has no `cgroup.event_control`: the kernel bumps counters in
//! `memory.events` (`oom`, `oom_kill`, …) and raises a file-modified
//! notification on it. A watcher thread waits for those with inotify and
//! calls back once for every increase of `oom_kill` (containerd's runc shim
//! reports an OOM on the same counter). The v1 watcher (eventfd on
//! `memory.oom_control`) stays in `task.rs`.

use std::fs;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

/// Where the unified hierarchy is mounted on a pure v2 host.
const UNIFIED_ROOT: &str = "/sys/fs/cgroup";

/// `memory.events` of `pid`'s cgroup when the host is pure cgroup v2 (one
/// `0::/path` line in `/proc/<pid>/cgroup`) and the memory controller is
/// enabled there; `None` otherwise (v1 and hybrid hosts use the v1 watcher).
pub fn memory_events_of(pid: u32) -> Option<PathBuf> {
    let text = fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let cg = crate::metrics::parse_proc_cgroup(&text);
    if cg.len() != 1 {
        return None;
    }
    let path = cg.get("")?;
    let file = Path::new(UNIFIED_ROOT)
        .join(path.trim_start_matches('/'))
        .join("memory.events");
    file.exists().then_some(file)
}

/// The `oom_kill` counter in a `memory.events` text.
pub fn oom_kill_count(text: &str) -> u64 {
    text.lines()
        .filter_map(|l| l.strip_prefix("oom_kill "))
        .find_map(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// Starts a thread that calls `on_oom` once per `oom_kill` increase in
/// `events_file` (a cgroup's `memory.events`), until the file goes away
/// (the cgroup was removed). Returns false when the watch could not be set.
pub fn watch_memory_events(
    events_file: PathBuf,
    mut on_oom: impl FnMut() + Send + 'static,
) -> bool {
    // SAFETY: inotify_init1 has no memory preconditions; the result is checked.
    let fd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC) };
    if fd < 0 {
        return false;
    }
    // SAFETY: fd is a fresh descriptor this function owns from here on.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let Ok(cpath) = std::ffi::CString::new(events_file.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: cpath is a valid NUL-terminated string for the duration of the call.
    let wd = unsafe {
        libc::inotify_add_watch(
            fd.as_raw_fd(),
            cpath.as_ptr(),
            libc::IN_MODIFY | libc::IN_DELETE_SELF,
        )
    };
    if wd < 0 {
        return false;
    }
    let mut seen = fs::read_to_string(&events_file)
        .map(|t| oom_kill_count(&t))
        .unwrap_or(0);
    std::thread::Builder::new()
        .name("oom".into())
        .stack_size(32 * 1024)
        .spawn(move || {
            let mut buf = [0u8; 512];
            loop {
                // SAFETY: reads at most buf.len() bytes into buf from the
                // inotify descriptor this thread owns.
                let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
                if n <= 0 {
                    return;
                }
                // Any event: read the counter again (IN_IGNORED / DELETE_SELF
                // come with the cgroup's removal, when the read fails).
                let Ok(text) = fs::read_to_string(&events_file) else {
                    return;
                };
                let now = oom_kill_count(&text);
                while seen < now {
                    seen += 1;
                    on_oom();
                }
            }
        })
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    #[test]
    fn counts_oom_kill_lines() {
        assert_eq!(
            oom_kill_count("low 0\nhigh 0\nmax 3\noom 2\noom_kill 2\n"),
            2
        );
        assert_eq!(oom_kill_count("oom 1\n"), 0);
        assert_eq!(oom_kill_count(""), 0);
    }

    #[test]
    fn one_callback_per_oom_kill_increase_and_stops_with_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("memory.events");
        fs::write(&f, "oom 0\noom_kill 1\n").unwrap();
        let (tx, rx) = mpsc::channel();
        assert!(watch_memory_events(f.clone(), move || {
            let _ = tx.send(());
        }));
        // A change that is not an oom_kill: no callback.
        fs::write(&f, "oom 1\noom_kill 1\n").unwrap();
        assert!(rx.recv_timeout(Duration::from_millis(300)).is_err());
        // Two kills at once: two callbacks (the one before the watch is not reported).
        fs::write(&f, "oom 3\noom_kill 3\n").unwrap();
        rx.recv_timeout(Duration::from_secs(5)).expect("first OOM");
        rx.recv_timeout(Duration::from_secs(5)).expect("second OOM");
        assert!(rx.recv_timeout(Duration::from_millis(300)).is_err());
        // The file goes (cgroup removed): the thread ends and drops the sender.
        fs::remove_file(&f).unwrap();
        assert_eq!(
            rx.recv_timeout(Duration::from_secs(5)),
            Err(mpsc::RecvTimeoutError::Disconnected)
        );
    }
}
