//! A process's stdio: containerd's FIFO paths (or `file://` URIs) copied
//! to/from pipes handed to the runtime, or a terminal whose master the
//! runtime sends over a console socket.
//!
//! Output FIFOs are opened read-write, so writes never fail with EPIPE while
//! nobody reads (containerd may be restarting) and copying resumes when a
//! reader comes back; they are closed when the process side reaches EOF, so
//! the reader sees EOF once all output has been delivered.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use crate::error::{Error, Result};
use crate::runtime_cli::RuntimeStdio;

/// The stdio a Create or Exec asked for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StdioPaths {
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    pub terminal: bool,
}

const COPY_STACK: usize = 64 * 1024;
const BUF: usize = 8 * 1024;

/// Handles on a running process's stdio copiers.
pub struct ProcessIo {
    /// Where stdin data goes (pipe to the process, or the pty master).
    stdin_target: Arc<Mutex<Option<OwnedFd>>>,
    /// Dropping it wakes the stdin copier so it exits.
    stdin_stop: Mutex<Option<OwnedFd>>,
    /// The pty master, for resizes.
    console: Option<OwnedFd>,
    /// Our own descriptor of the pty's slave side, held while the process
    /// runs: without it the master can report EIO when the process's last
    /// slave descriptor closes before its final output has been read (the
    /// kernel may drop it), so a short `tty; exit` could lose its output.
    /// Dropped at the process's exit, after which the copier reads what is
    /// buffered and then sees EIO.
    slave_hold: Mutex<Option<OwnedFd>>,
}

impl ProcessIo {
    /// Stops forwarding stdin and closes the process's stdin.
    pub fn close_stdin(&self) {
        self.stdin_target
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        self.stdin_stop
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
    }

    /// The process is gone: stop the stdin copier and let the pty's output
    /// end once drained.
    pub fn process_exited(&self) {
        self.close_stdin();
        self.slave_hold
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
    }

    pub fn resize(&self, width: u32, height: u32) -> Result<()> {
        let Some(m) = &self.console else {
            return Err(Error::FailedPrecondition(
                "the process has no terminal".into(),
            ));
        };
        let ws = libc::winsize {
            ws_row: height as u16,
            ws_col: width as u16,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads a winsize from the pointer, which is valid
        // for the call; the fd is an open pty master.
        let r = unsafe { libc::ioctl(m.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
        if r < 0 {
            return Err(Error::io(
                "resizing the terminal",
                std::io::Error::last_os_error(),
            ));
        }
        Ok(())
    }
}

fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| Error::errno("pipe2", e))
}

fn spawn_copier(name: &str, f: impl FnOnce() + Send + 'static) -> Result<()> {
    std::thread::Builder::new()
        .name(name.into())
        .stack_size(COPY_STACK)
        .spawn(f)
        .map(drop)
        .map_err(|e| Error::io("spawning an io thread", e))
}

/// Opens an output destination: a FIFO (read-write, see the module doc) or
/// a `file://` URI. None for an empty path.
fn open_output(path: &str) -> Result<Option<File>> {
    if path.is_empty() {
        return Ok(None);
    }
    if let Some(p) = path.strip_prefix("file://") {
        if let Some(dir) = std::path::Path::new(p).parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        return OpenOptions::new()
            .append(true)
            .create(true)
            .open(p)
            .map(Some)
            .map_err(|e| Error::io(format!("opening {p}"), e));
    }
    if path.contains("://") {
        return Err(Error::InvalidArgument(format!(
            "unsupported stdio URI {path:?} (FIFO paths and file:// are)"
        )));
    }
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
        .map(Some)
        .map_err(|e| Error::io(format!("opening {path}"), e))
}

fn dev_null() -> Result<OwnedFd> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map(OwnedFd::from)
        .map_err(|e| Error::io("opening /dev/null", e))
}

/// Copies `src` to `dst` until EOF (or EIO from a pty master), then closes
/// both. A failing destination does not stop the draining of `src`.
fn copy_out(src: OwnedFd, dst: File) {
    let mut src = File::from(src);
    let mut dst = Some(dst);
    let mut buf = [0u8; BUF];
    loop {
        match src.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if let Some(d) = dst.as_mut() {
                    if d.write_all(&buf[..n]).is_err() {
                        dst = None;
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
}

/// Forwards a stdin FIFO to `target` until the writer closes it (EOF), the
/// target is closed (CloseIO) or `stop` is signalled.
fn copy_stdin(path: String, target: Arc<Mutex<Option<OwnedFd>>>, stop: OwnedFd) {
    let fifo = match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(&path)
    {
        Ok(f) => f,
        Err(e) => {
            crate::warn!("cannot open stdin {path}: {e}");
            target.lock().unwrap_or_else(|e| e.into_inner()).take();
            return;
        }
    };
    let mut buf = [0u8; BUF];
    loop {
        let mut fds = [
            PollFd::new(fifo.as_fd(), PollFlags::POLLIN),
            PollFd::new(stop.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, PollTimeout::NONE) {
            Err(Errno::EINTR) => continue,
            Err(_) => break,
            Ok(_) => {}
        }
        if fds[1].any().unwrap_or(false) {
            break;
        }
        // SAFETY: buf is valid for writes of its length; fifo is open.
        let n = unsafe { libc::read(fifo.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            let e = Errno::last();
            if e == Errno::EAGAIN || e == Errno::EINTR {
                // Spurious wakeup; a HUP without a writer yet never happens
                // on Linux (it is only reported after a writer left).
                std::thread::sleep(Duration::from_millis(5));
                continue;
            }
            break;
        }
        if n == 0 {
            break;
        }
        let g = target.lock().unwrap_or_else(|e| e.into_inner());
        let Some(t) = g.as_ref() else { break };
        let mut off = 0usize;
        while off < n as usize {
            // SAFETY: the slice is initialised up to n; t is open.
            let w =
                unsafe { libc::write(t.as_raw_fd(), buf[off..].as_ptr().cast(), n as usize - off) };
            if w < 0 {
                if Errno::last() == Errno::EINTR {
                    continue;
                }
                break;
            }
            off += w as usize;
        }
    }
    // EOF from the client or told to stop: the process sees EOF.
    target.lock().unwrap_or_else(|e| e.into_inner()).take();
}

fn chown_fd(fd: RawFd, uid: u32, gid: u32) {
    if uid == 0 && gid == 0 {
        return;
    }
    // SAFETY: fchown on an fd we own; failure is only logged.
    if unsafe { libc::fchown(fd, uid, gid) } != 0 {
        crate::warn!("fchown stdio pipe: {}", std::io::Error::last_os_error());
    }
}

/// Sets up pipe-based stdio: returns the ends for the runtime process and
/// the handles of the copiers (already running).
pub fn setup_pipes(
    paths: &StdioPaths,
    io_uid: u32,
    io_gid: u32,
) -> Result<(RuntimeStdio, ProcessIo)> {
    let mut rs = RuntimeStdio::default();
    let target = Arc::new(Mutex::new(None));
    let mut stop_w = None;
    // Open everything first so a bad path fails before any thread starts.
    let out = open_output(&paths.stdout)?;
    let err = open_output(&paths.stderr)?;
    if !paths.stdin.is_empty() {
        let (r, w) = pipe()?;
        chown_fd(r.as_raw_fd(), io_uid, io_gid);
        *target.lock().unwrap_or_else(|e| e.into_inner()) = Some(w);
        let (sr, sw) = pipe()?;
        stop_w = Some(sw);
        rs.stdin = Some(r);
        let t = target.clone();
        let path = paths.stdin.clone();
        spawn_copier("stdin", move || copy_stdin(path, t, sr))?;
    } else {
        rs.stdin = Some(dev_null()?);
    }
    for (dst, slot) in [(out, 1), (err, 2)] {
        let fd = match dst {
            Some(f) => {
                let (r, w) = pipe()?;
                chown_fd(w.as_raw_fd(), io_uid, io_gid);
                spawn_copier("stdout", move || copy_out(r, f))?;
                w
            }
            None => dev_null()?,
        };
        if slot == 1 {
            rs.stdout = Some(fd);
        } else {
            rs.stderr = Some(fd);
        }
    }
    Ok((
        rs,
        ProcessIo {
            stdin_target: target,
            stdin_stop: Mutex::new(stop_w),
            console: None,
            slave_hold: Mutex::new(None),
        },
    ))
}

/// Stdio for a runtime process that hands a terminal back over a console
/// socket: /dev/null.
pub fn null_stdio() -> Result<RuntimeStdio> {
    Ok(RuntimeStdio {
        stdin: Some(dev_null()?),
        stdout: Some(dev_null()?),
        stderr: Some(dev_null()?),
    })
}

static SOCK_SEQ: AtomicU64 = AtomicU64::new(0);

/// A unix socket the runtime connects to (`--console-socket`) to send the
/// pty master.
pub struct ConsoleSocket {
    pub path: PathBuf,
    listener: UnixListener,
}

impl ConsoleSocket {
    pub fn new() -> Result<ConsoleSocket> {
        let dir = PathBuf::from("/run/orca-shim");
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join(format!(
            "pty-{}-{}.sock",
            std::process::id(),
            SOCK_SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path)
            .map_err(|e| Error::io(format!("binding {}", path.display()), e))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| Error::io("console socket", e))?;
        Ok(ConsoleSocket { path, listener })
    }

    /// Waits for the runtime to send the master; gives up once the runtime
    /// has exited without sending one.
    pub fn receive(&self, runtime_exited: &dyn Fn() -> bool) -> Option<OwnedFd> {
        loop {
            match self.listener.accept() {
                Ok((conn, _)) => {
                    let _ = conn.set_nonblocking(false);
                    let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
                    return recv_fd(conn.as_raw_fd());
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if runtime_exited() {
                        // One more look: it may have connected just before exiting.
                        if let Ok((conn, _)) = self.listener.accept() {
                            let _ = conn.set_nonblocking(false);
                            return recv_fd(conn.as_raw_fd());
                        }
                        return None;
                    }
                    let mut fds = [PollFd::new(self.listener.as_fd(), PollFlags::POLLIN)];
                    let _ = poll(&mut fds, PollTimeout::from(20u16));
                }
                Err(_) => return None,
            }
        }
    }
}

impl Drop for ConsoleSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn recv_fd(sock: RawFd) -> Option<OwnedFd> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    let mut buf = [0u8; 4096];
    let mut iov = [std::io::IoSliceMut::new(&mut buf)];
    let mut cmsg = nix::cmsg_space!([RawFd; 1]);
    let msg = recvmsg::<()>(sock, &mut iov, Some(&mut cmsg), MsgFlags::MSG_CMSG_CLOEXEC).ok()?;
    for c in msg.cmsgs().ok()? {
        if let ControlMessageOwned::ScmRights(fds) = c {
            let mut it = fds.into_iter();
            let first = it.next()?;
            for extra in it {
                // SAFETY: fds received with SCM_RIGHTS are ours to close.
                drop(unsafe { OwnedFd::from_raw_fd(extra) });
            }
            // SAFETY: as above; we take ownership of the received fd.
            return Some(unsafe { OwnedFd::from_raw_fd(first) });
        }
    }
    None
}

/// A descriptor of the slave side of pty `master` (TIOCGPTPEER, Linux
/// 4.13+: no path lookup, so it works across the container's devpts
/// instance); None where the kernel lacks it.
fn open_pty_peer(master: &OwnedFd) -> Option<OwnedFd> {
    // SAFETY: TIOCGPTPEER takes open(2) flags by value and returns a new
    // descriptor (or -1); master is an open pty master.
    let fd = unsafe {
        libc::ioctl(
            master.as_raw_fd(),
            libc::TIOCGPTPEER,
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        )
    };
    // SAFETY: a non-negative result is a fresh descriptor we now own.
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Starts copying between a pty master and the stdio paths.
pub fn setup_console(master: OwnedFd, paths: &StdioPaths) -> Result<ProcessIo> {
    let slave_hold = Mutex::new(open_pty_peer(&master));
    let target = Arc::new(Mutex::new(None));
    let mut stop_w = None;
    if let Some(out) = open_output(&paths.stdout)? {
        let m = master
            .try_clone()
            .map_err(|e| Error::io("dup pty master", e))?;
        spawn_copier("console-out", move || copy_out(m, out))?;
    }
    if !paths.stdin.is_empty() {
        let m = master
            .try_clone()
            .map_err(|e| Error::io("dup pty master", e))?;
        *target.lock().unwrap_or_else(|e| e.into_inner()) = Some(m);
        let (sr, sw) = pipe()?;
        stop_w = Some(sw);
        let t = target.clone();
        let path = paths.stdin.clone();
        spawn_copier("console-in", move || copy_stdin(path, t, sr))?;
    }
    Ok(ProcessIo {
        stdin_target: target,
        stdin_stop: Mutex::new(stop_w),
        console: Some(master),
        slave_hold,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_fifo_is_copied_and_closed_at_eof() {
        let dir = tempfile_dir();
        let fifo = dir.join("out");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let reader = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&fifo)
            .unwrap();
        let paths = StdioPaths {
            stdout: fifo.to_string_lossy().into_owned(),
            ..Default::default()
        };
        let (rs, _io) = setup_pipes(&paths, 0, 0).unwrap();
        let mut w = File::from(rs.stdout.unwrap());
        w.write_all(b"hello\n").unwrap();
        drop(w);
        drop(rs.stderr);
        // Blocking reads until EOF: the copier closes its end after the pipe's EOF.
        nix::fcntl::fcntl(
            reader.as_raw_fd(),
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::empty()),
        )
        .unwrap();
        let mut s = String::new();
        let mut reader = reader;
        reader.read_to_string(&mut s).unwrap();
        assert_eq!(s, "hello\n");
        let _ = std::fs::remove_dir_all(dir);
    }

    fn tempfile_dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "orca-shim-io-test-{}-{}",
            std::process::id(),
            SOCK_SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}
