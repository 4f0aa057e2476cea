//! Running commands from tests: with a time limit, or on a fresh pty.

use std::io::Read;
use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Runs a command, killing it after `limit`; stdout/stderr via temp files.
pub fn run_with_limit(c: &mut Command, limit: Duration) -> Result<Output, String> {
    use std::io::{Seek, SeekFrom};
    let mut out = tempfile::tempfile().map_err(|e| e.to_string())?;
    let mut err = tempfile::tempfile().map_err(|e| e.to_string())?;
    let mut child = c
        .stdout(out.try_clone().map_err(|e| e.to_string())?)
        .stderr(err.try_clone().map_err(|e| e.to_string())?)
        .spawn()
        .map_err(|e| format!("cannot run {c:?}: {e}"))?;
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().map_err(|e| e.to_string())? {
            break s;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            let mut o = String::new();
            let mut e = String::new();
            let _ = out.seek(SeekFrom::Start(0));
            let _ = out.read_to_string(&mut o);
            let _ = err.seek(SeekFrom::Start(0));
            let _ = err.read_to_string(&mut e);
            return Err(format!(
                "timed out after {limit:?}\nstdout: {o}\nstderr: {e}"
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    out.seek(SeekFrom::Start(0)).map_err(|e| e.to_string())?;
    out.read_to_end(&mut stdout).map_err(|e| e.to_string())?;
    err.seek(SeekFrom::Start(0)).map_err(|e| e.to_string())?;
    err.read_to_end(&mut stderr).map_err(|e| e.to_string())?;
    Ok(Output {
        status,
        stdout,
        stderr,
    })
}

/// Runs `cmd` with a new pty as its controlling terminal and stdio; returns its exit status
/// and everything it wrote to the terminal.
#[track_caller]
pub fn run_in_pty(cmd: &mut Command, timeout: Duration) -> (std::process::ExitStatus, String) {
    let pty = nix::pty::openpty(None, None).expect("openpty");
    let master: OwnedFd = pty.master;
    let slave: OwnedFd = pty.slave;
    cmd.stdin(Stdio::from(slave.try_clone().expect("dup")))
        .stdout(Stdio::from(slave.try_clone().expect("dup")))
        .stderr(Stdio::from(slave.try_clone().expect("dup")));
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    drop(slave);
    // Drop the Stdio copies held by the Command as well.
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let reader = std::thread::spawn(move || {
        let mut f = std::fs::File::from(master);
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            match f.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                // EIO: every slave end is closed.
                Err(_) => break,
            }
        }
        buf
    });
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} (in a pty) did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    // The container's side of the terminal may stay open a little longer; give the reader
    // time, but don't hang on a leaked slave.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !reader.is_finished() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = if reader.is_finished() {
        reader.join().expect("reader thread")
    } else {
        panic!("{cmd:?}: the pty was still open 10 s after the command exited");
    };
    (status, String::from_utf8_lossy(&out).into_owned())
}
