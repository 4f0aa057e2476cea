//! Container processes (the init and exec processes): their state, exit
//! status bookkeeping and `Wait`.

use std::sync::{Arc, Condvar, Mutex};
use std::time::SystemTime;

use crate::io::{ProcessIo, StdioPaths};

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitInfo {
    pub status: u32,
    pub at: SystemTime,
}

/// A process's exit status, set once, waited for by any number of `Wait`s
/// (including ones that arrive after the exit).
#[derive(Debug, Default)]
pub struct ExitCell {
    exit: Mutex<Option<ExitInfo>>,
    cv: Condvar,
}

impl ExitCell {
    pub fn new() -> Arc<ExitCell> {
        Arc::new(ExitCell::default())
    }

    /// Records the exit; false if one was already recorded (which is kept).
    pub fn set(&self, info: ExitInfo) -> bool {
        let mut g = self.exit.lock().unwrap_or_else(|e| e.into_inner());
        if g.is_some() {
            return false;
        }
        *g = Some(info);
        self.cv.notify_all();
        true
    }

    pub fn get(&self) -> Option<ExitInfo> {
        *self.exit.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Blocks until the exit is recorded.
    pub fn wait(&self) -> ExitInfo {
        let mut g = self.exit.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(i) = *g {
                return i;
            }
            g = self.cv.wait(g).unwrap_or_else(|e| e.into_inner());
        }
    }
}

/// The life of a process as the shim sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Created by the runtime (init) or registered by `Exec`, not started.
    Created,
    Running,
    Paused,
    Stopped,
}

/// An init or exec process.
pub struct Process {
    /// The exec id; empty for the init process.
    pub exec_id: String,
    pub pid: u32,
    pub status: Status,
    pub stdio: StdioPaths,
    pub exit: Arc<ExitCell>,
    pub io: Option<ProcessIo>,
    /// For exec processes: the OCI process JSON from the `Exec` request.
    pub spec: Vec<u8>,
}

impl Process {
    pub fn new(exec_id: &str, stdio: StdioPaths) -> Process {
        Process {
            exec_id: exec_id.to_string(),
            pid: 0,
            status: Status::Created,
            stdio,
            exit: ExitCell::new(),
            io: None,
            spec: Vec::new(),
        }
    }

    /// Records the exit if it is the first; false if already exited.
    pub fn set_exited(&mut self, status: u32) -> Option<ExitInfo> {
        let info = ExitInfo {
            status,
            at: SystemTime::now(),
        };
        self.status = Status::Stopped;
        if self.exit.set(info) {
            if let Some(io) = &self.io {
                io.process_exited();
            }
            Some(info)
        } else {
            None
        }
    }

    pub fn exited(&self) -> Option<ExitInfo> {
        self.exit.get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn wait_after_exit_returns_status() {
        let mut p = Process::new("", StdioPaths::default());
        assert!(p.exited().is_none());
        let first = p.set_exited(7).expect("first exit recorded");
        assert_eq!(p.set_exited(9), None, "a second exit is ignored");
        assert_eq!(p.exit.wait(), first);
        assert_eq!(p.exit.wait().status, 7);
        assert_eq!(p.status, Status::Stopped);
    }

    #[test]
    fn wait_before_exit_blocks_until_set() {
        let cell = ExitCell::new();
        let c2 = cell.clone();
        let h = std::thread::spawn(move || c2.wait().status);
        std::thread::sleep(Duration::from_millis(50));
        cell.set(ExitInfo {
            status: 137,
            at: SystemTime::now(),
        });
        assert_eq!(h.join().unwrap(), 137);
    }
}
