//! The subreaper: one thread reaps every child (the runtime invocations, the
//! container's init and exec processes, and orphans re-parented to the shim).
//!
//! Runtime invocations must see their own exit status even though another
//! thread reaps them: a caller `subscribe`s *before* spawning, and while any
//! subscription is alive every exit is recorded, so an exit that happens
//! before the caller learns the pid is not lost (go-runc's Monitor does the
//! same). Every exit is also handed to the exit callback (the task service),
//! which matches it against container processes.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::Pid;

type ExitCallback = Box<dyn Fn(i32, u32) + Send + Sync>;

#[derive(Default)]
struct Inner {
    subscribers: usize,
    exits: HashMap<i32, u32>,
    spawned: u64,
}

/// The process-wide reaper.
pub struct Reaper {
    inner: Mutex<Inner>,
    cv: Condvar,
    callback: OnceLock<ExitCallback>,
}

static REAPER: OnceLock<Arc<Reaper>> = OnceLock::new();

/// The exit code containerd reports for a wait status: the code, or
/// 128 + signal for a process killed by a signal.
pub fn exit_code(ws: WaitStatus) -> Option<u32> {
    match ws {
        WaitStatus::Exited(_, code) => Some(code as u32),
        WaitStatus::Signaled(_, sig, _) => Some(128 + sig as u32),
        _ => None,
    }
}

impl Reaper {
    /// The reaper, with its thread started on first use.
    pub fn global() -> Arc<Reaper> {
        REAPER
            .get_or_init(|| {
                let r = Arc::new(Reaper::new());
                let r2 = r.clone();
                std::thread::Builder::new()
                    .name("reaper".into())
                    .stack_size(64 * 1024)
                    .spawn(move || r2.run())
                    .expect("cannot start the reaper thread");
                r
            })
            .clone()
    }

    fn new() -> Reaper {
        Reaper {
            inner: Mutex::new(Inner::default()),
            cv: Condvar::new(),
            callback: OnceLock::new(),
        }
    }

    /// Sets the function told about every exit (pid, exit code). Once.
    pub fn set_callback(&self, f: ExitCallback) {
        let _ = self.callback.set(f);
    }

    /// Starts recording exits; keep the subscription until the pid of
    /// interest has been waited for.
    pub fn subscribe(self: &Arc<Self>) -> Subscription {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        g.subscribers += 1;
        Subscription {
            reaper: self.clone(),
        }
    }

    /// Tells the reaper a child was just spawned (it may be idle on ECHILD).
    pub fn notify_spawned(&self) {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        g.spawned += 1;
        self.cv.notify_all();
    }

    /// Records an exit (also used by tests).
    pub fn record(&self, pid: i32, code: u32) {
        {
            let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            if g.subscribers > 0 {
                g.exits.insert(pid, code);
            }
            self.cv.notify_all();
        }
        if let Some(cb) = self.callback.get() {
            cb(pid, code);
        }
    }

    fn run(&self) {
        loop {
            match waitpid(Pid::from_raw(-1), None) {
                Ok(ws) => {
                    if let (Some(pid), Some(code)) = (ws.pid(), exit_code(ws)) {
                        self.record(pid.as_raw(), code);
                    }
                }
                Err(Errno::EINTR) => {}
                Err(_) => {
                    // ECHILD: nothing to reap until something is spawned.
                    let g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
                    let seen = g.spawned;
                    let _ = self
                        .cv
                        .wait_timeout_while(g, Duration::from_millis(200), |g| g.spawned == seen);
                }
            }
        }
    }
}

/// While alive, every exit is recorded for [`Subscription::wait`].
pub struct Subscription {
    reaper: Arc<Reaper>,
}

impl Subscription {
    /// Blocks until `pid` has exited; its exit code.
    pub fn wait(&self, pid: i32) -> u32 {
        let mut g = self.reaper.inner.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(code) = g.exits.remove(&pid) {
                return code;
            }
            g = self.reaper.cv.wait(g).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// The exit code of `pid` if it has exited since the subscription.
    pub fn try_take(&self, pid: i32) -> Option<u32> {
        let mut g = self.reaper.inner.lock().unwrap_or_else(|e| e.into_inner());
        g.exits.remove(&pid)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut g = self.reaper.inner.lock().unwrap_or_else(|e| e.into_inner());
        g.subscribers -= 1;
        if g.subscribers == 0 {
            g.exits.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exits_are_kept_only_while_subscribed() {
        let r = Arc::new(Reaper::new());
        r.record(10, 1);
        let s = r.subscribe();
        assert_eq!(s.try_take(10), None, "exit before subscribing is not kept");
        r.record(11, 137);
        assert_eq!(s.wait(11), 137);
        r.record(12, 0);
        drop(s);
        let s = r.subscribe();
        assert_eq!(
            s.try_take(12),
            None,
            "exits are cleared with the last subscriber"
        );
    }

    #[test]
    fn signal_exit_codes() {
        let pid = Pid::from_raw(5);
        assert_eq!(exit_code(WaitStatus::Exited(pid, 3)), Some(3));
        assert_eq!(
            exit_code(WaitStatus::Signaled(pid, nix::sys::signal::SIGKILL, false)),
            Some(137)
        );
    }
}
