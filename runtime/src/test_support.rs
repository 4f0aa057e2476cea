//! Helpers for the crate's unit tests.

use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{fork, ForkResult};

/// Run `child` in a forked process and return its exit code (101 if it panicked).
pub(crate) fn in_child(child: impl FnOnce() -> i32) -> i32 {
    // SAFETY: the test harness is multi-threaded; the child only runs code that is safe after
    // fork with glibc (malloc is fork-safe there) and leaves through _exit.
    match unsafe { fork() }.expect("fork") {
        ForkResult::Child => {
            let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(child)).unwrap_or(101);
            // SAFETY: _exit skips the parent's atexit handlers and destructors.
            unsafe { libc::_exit(code) }
        }
        ForkResult::Parent { child } => match waitpid(child, None).expect("waitpid") {
            WaitStatus::Exited(_, code) => code,
            other => panic!("child did not exit normally: {other:?}"),
        },
    }
}
