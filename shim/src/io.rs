//! A process's stdio: containerd's FIFO paths (or `file://` URIs) copied
//! to/from pipes handed to the runtime, or a terminal whose master the
//! runtime sends over a console socket.
//!
//! Output FIFOs are opened by each stream's copier thread the way
//! containerd's runc shim opens them: write-only and blocking, which waits
//! until the client has opened its read side, then a read side of our own
//! beside it, so writes never fail with EPIPE while nobody reads (containerd
//! may be restarting) and copying resumes when a reader comes back. Setting
//! up a process's stdio waits until those opens are done (bounded), so the
//! client's reader exists before the process can write: a client whose
//! open(2) completed only after a short-lived process was already gone
//! would find the FIFO closed and lose all its output. Both are closed when
//! the process side reaches EOF, so the reader sees EOF once all output has
//! been delivered; [`ProcessIo::wait_output`] lets Delete wait for that
//! (bounded), like the runc shim's Delete.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

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

/// How long setting up a process's stdio waits for the client to open the
/// read side of its output FIFOs (containerd's runc shim waits without
/// bound); past it the shim holds the FIFO itself and the output waits
/// there for a reader, as it would for a client that went away.
const READER_WAIT: Duration = Duration::from_secs(10);

#[derive(Default)]
struct Counts {
    /// Copiers not finished yet (destination not closed).
    running: usize,
    /// Copiers still opening their FIFO (waiting for its reader).
    opening: usize,
    /// The latest drain request (see [`Outputs::drain`]).
    want: u64,
    /// Per stream: the latest drain request it has caught up with, or
    /// `u64::MAX` once it has ended.
    caught_up: Vec<u64>,
}

/// The progress of a process's output copiers.
#[derive(Default)]
struct Outputs {
    counts: Mutex<Counts>,
    cv: Condvar,
    /// Per stream: an eventfd that wakes its copier for a drain request.
    wakes: Mutex<Vec<OwnedFd>>,
}

impl Outputs {
    /// Registers a stream; its index and the eventfd its copier polls.
    fn add(&self, fifo: bool) -> Result<(usize, OwnedFd)> {
        // SAFETY: eventfd has no memory preconditions; the result is checked.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(Error::io("eventfd", std::io::Error::last_os_error()));
        }
        // SAFETY: a fresh descriptor we own.
        let wake = unsafe { OwnedFd::from_raw_fd(fd) };
        let mine = wake.try_clone().map_err(|e| Error::io("dup eventfd", e))?;
        self.wakes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(mine);
        let mut g = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        g.running += 1;
        if fifo {
            g.opening += 1;
        }
        g.caught_up.push(0);
        Ok((g.caught_up.len() - 1, wake))
    }

    fn update(&self, f: impl FnOnce(&mut Counts)) {
        let mut g = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut g);
        self.cv.notify_all();
    }

    fn opened(&self) {
        self.update(|c| c.opening = c.opening.saturating_sub(1));
    }

    fn want(&self) -> u64 {
        self.counts.lock().unwrap_or_else(|e| e.into_inner()).want
    }

    fn caught_up(&self, idx: usize, request: u64) {
        self.update(|c| {
            if let Some(x) = c.caught_up.get_mut(idx) {
                *x = (*x).max(request);
            }
        });
    }

    fn finished(&self, idx: usize) {
        self.update(|c| {
            c.running = c.running.saturating_sub(1);
            if let Some(x) = c.caught_up.get_mut(idx) {
                *x = u64::MAX;
            }
        });
    }

    /// Waits (at most `limit`) until `left` says nothing is left; true if so.
    fn wait_for(&self, limit: Duration, left: impl Fn(&Counts) -> usize) -> bool {
        let deadline = Instant::now() + limit;
        let mut g = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        while left(&g) > 0 {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            g = self
                .cv
                .wait_timeout(g, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        true
    }

    /// Waits (at most `limit`) until every stream has copied out all that
    /// its source held when this was called; true if so.
    fn drain(&self, limit: Duration) -> bool {
        let request = {
            let mut g = self.counts.lock().unwrap_or_else(|e| e.into_inner());
            g.want += 1;
            g.want
        };
        for w in self.wakes.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            let one = 1u64.to_ne_bytes();
            // SAFETY: writes 8 bytes from a valid buffer to our eventfd.
            unsafe { libc::write(w.as_raw_fd(), one.as_ptr().cast(), one.len()) };
        }
        self.wait_for(limit, |c| {
            c.caught_up.iter().filter(|&&x| x < request).count()
        })
    }

    /// Returns once every output FIFO has a reader (the client's, or after
    /// [`READER_WAIT`] one of our own), so that no output is written before
    /// the client can read it; a client whose open(2) completed only after
    /// a short-lived process was gone would find the FIFO closed and lose
    /// everything.
    fn wait_readers(&self, fifos: &[PathBuf]) {
        if fifos.is_empty() || self.wait_for(READER_WAIT, |c| c.opening) {
            return;
        }
        crate::warn!(
            "no reader on the output fifos {fifos:?} after {} s: holding them until one comes",
            READER_WAIT.as_secs()
        );
        for p in fifos {
            // A reader that comes and goes releases a writer blocked in
            // open(2) (it waits for the reader count to change).
            let _ = OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(p);
        }
        self.wait_for(Duration::from_secs(1), |c| c.opening);
    }
}

/// A handle that drains a process's output (see [`ProcessIo::drainer`]).
#[derive(Clone)]
pub struct OutputDrain(Arc<Outputs>);

impl OutputDrain {
    /// Waits (at most `limit`) until everything the process's output
    /// sources (pipes, pty) hold right now has been written to the
    /// destinations; false on timeout (a destination nobody reads).
    pub fn drain(&self, limit: Duration) -> bool {
        self.0.drain(limit)
    }
}

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
    /// The output copiers' progress.
    outputs: Arc<Outputs>,
}

impl ProcessIo {
    /// Waits (at most `limit`) until every output stream has been copied
    /// to EOF and its destination closed; false on timeout.
    pub fn wait_output(&self, limit: Duration) -> bool {
        self.outputs.wait_for(limit, |c| c.running)
    }

    /// A handle to wait, without holding the process, until its output
    /// written so far has been copied out.
    pub fn drainer(&self) -> OutputDrain {
        OutputDrain(self.outputs.clone())
    }

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

/// Where an output stream goes.
enum Output {
    /// An open file (a `file://` URI, or a path that is not a FIFO).
    File(File),
    /// A FIFO, opened by the copier (see the module doc).
    Fifo(PathBuf),
}

impl Output {
    fn fifo_path(&self) -> Option<PathBuf> {
        match self {
            Output::Fifo(p) => Some(p.clone()),
            Output::File(_) => None,
        }
    }

    /// The destination to write to, plus, for a FIFO, our own read side
    /// held beside it; None (after a warning) if the FIFO cannot be opened.
    fn open(self) -> Option<(File, Option<File>)> {
        match self {
            Output::File(f) => Some((f, None)),
            Output::Fifo(path) => {
                // Blocks until the client has opened the read side.
                let w = loop {
                    match OpenOptions::new().write(true).open(&path) {
                        Ok(f) => break f,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(e) => {
                            crate::warn!("cannot open output fifo {}: {e}", path.display());
                            return None;
                        }
                    }
                };
                // Never blocks (a writer, ours, exists); keeps writes from
                // failing with EPIPE if the client goes away for a while.
                let r = OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_NONBLOCK)
                    .open(&path);
                if let Err(e) = &r {
                    crate::warn!("cannot hold output fifo {} open: {e}", path.display());
                }
                Some((w, r.ok()))
            }
        }
    }
}

/// Checks an output destination: a FIFO (opened later by its copier) or a
/// `file://` URI (opened here). None for an empty path.
fn open_output(path: &str) -> Result<Option<Output>> {
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
            .map(|f| Some(Output::File(f)))
            .map_err(|e| Error::io(format!("opening {p}"), e));
    }
    if path.contains("://") {
        return Err(Error::InvalidArgument(format!(
            "unsupported stdio URI {path:?} (FIFO paths and file:// are)"
        )));
    }
    let meta = std::fs::metadata(path).map_err(|e| Error::io(format!("opening {path}"), e))?;
    if meta.file_type().is_fifo() {
        return Ok(Some(Output::Fifo(PathBuf::from(path))));
    }
    // Anything else (a plain file, /dev/null): written directly.
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
        .map(|f| Some(Output::File(f)))
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

/// True if `fd` can be read without blocking (data, EOF or an error).
fn readable_now(fd: &impl AsFd) -> bool {
    let mut p = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
    matches!(poll(&mut p, PollTimeout::ZERO), Ok(n) if n > 0)
}

/// Opens `dst`, copies `src` to it until EOF (or EIO from a pty master),
/// then closes both; tells `outs` about the open, each drain request it
/// has caught up with (`wake` fires for those) and the end. A destination
/// that fails to open or to take writes does not stop the draining of
/// `src`. We are `src`'s only reader, so reading it when poll says it is
/// readable never blocks.
fn copy_out(
    name: &'static str,
    idx: usize,
    src: OwnedFd,
    dst: Output,
    outs: Arc<Outputs>,
    wake: OwnedFd,
) {
    let mut src = File::from(src);
    let fifo = matches!(dst, Output::Fifo(_));
    let (dst, hold) = match dst.open() {
        Some((w, r)) => (Some(w), r),
        None => (None, None),
    };
    if fifo {
        outs.opened();
    }
    let mut dst = dst;
    let mut buf = [0u8; BUF];
    let (mut copied, mut lost) = (0usize, 0usize);
    let mut request = 0u64;
    let end = 'copy: loop {
        let mut fds = [
            PollFd::new(src.as_fd(), PollFlags::POLLIN),
            PollFd::new(wake.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => break Some(std::io::Error::from(e)),
        }
        if fds[1].any().unwrap_or(false) {
            let mut n = [0u8; 8];
            // SAFETY: reads 8 bytes into n from our eventfd (resets it).
            unsafe { libc::read(wake.as_raw_fd(), n.as_mut_ptr().cast(), n.len()) };
            request = outs.want();
        }
        // Copy all that is there now, then report having caught up.
        while readable_now(&src) {
            match src.read(&mut buf) {
                Ok(0) => break 'copy None,
                Ok(n) => match dst.as_mut().map(|d| d.write_all(&buf[..n])) {
                    Some(Ok(())) => copied += n,
                    Some(Err(e)) => {
                        crate::warn!("{name}: writing the output failed, discarding the rest: {e}");
                        dst = None;
                        lost += n;
                    }
                    None => lost += n,
                },
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                // EIO from a pty master once the slave side is closed.
                Err(e) => break 'copy Some(e),
            }
        }
        outs.caught_up(idx, request);
    };
    crate::debug!(
        "{name}: {copied} bytes copied, {lost} discarded, ended by {}",
        end.map_or_else(|| "EOF".to_string(), |e| e.to_string())
    );
    drop(dst);
    drop(hold);
    drop(src);
    outs.finished(idx);
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
    let outputs = Arc::new(Outputs::default());
    let mut fifos = Vec::new();
    let mut stop_w = None;
    // Check everything first so a bad path fails before any thread starts.
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
    for (dst, slot, name) in [(out, 1, "stdout"), (err, 2, "stderr")] {
        let fd = match dst {
            Some(f) => {
                let (r, w) = pipe()?;
                chown_fd(w.as_raw_fd(), io_uid, io_gid);
                let fifo = f.fifo_path();
                let (idx, wake) = outputs.add(fifo.is_some())?;
                let outs = outputs.clone();
                spawn_copier(name, move || copy_out(name, idx, r, f, outs, wake))?;
                fifos.extend(fifo);
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
    outputs.wait_readers(&fifos);
    Ok((
        rs,
        ProcessIo {
            stdin_target: target,
            stdin_stop: Mutex::new(stop_w),
            console: None,
            slave_hold: Mutex::new(None),
            outputs,
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
    let outputs = Arc::new(Outputs::default());
    let mut stop_w = None;
    if let Some(out) = open_output(&paths.stdout)? {
        let m = master
            .try_clone()
            .map_err(|e| Error::io("dup pty master", e))?;
        let fifo = out.fifo_path();
        let (idx, wake) = outputs.add(fifo.is_some())?;
        let outs = outputs.clone();
        spawn_copier("console-out", move || {
            copy_out("console-out", idx, m, out, outs, wake)
        })?;
        outputs.wait_readers(&Vec::from_iter(fifo));
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
        outputs,
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

    /// A client that opens its reader only after the process has written
    /// and exited still gets everything: setup waits for the reader before
    /// the process can write (here: a thread opens it 100 ms later), and
    /// `wait_output` reports the copy done only after EOF.
    #[test]
    fn output_waits_for_a_late_reader_and_is_delivered_whole() {
        let dir = tempfile_dir();
        let fifo = dir.join("out");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let paths = StdioPaths {
            stdout: fifo.to_string_lossy().into_owned(),
            ..Default::default()
        };
        let f2 = fifo.clone();
        let client = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            let mut r = File::open(&f2).unwrap();
            let mut s = String::new();
            r.read_to_string(&mut s).unwrap();
            s
        });
        let started = Instant::now();
        let (rs, io) = setup_pipes(&paths, 0, 0).unwrap();
        assert!(
            started.elapsed() >= Duration::from_millis(90),
            "stdio set up before the client opened its reader"
        );
        let mut w = File::from(rs.stdout.unwrap());
        w.write_all(b"one\n").unwrap();
        w.write_all(b"two\n").unwrap();
        drop(w);
        drop(rs.stderr);
        assert!(
            io.wait_output(Duration::from_secs(5)),
            "copy never finished"
        );
        assert_eq!(client.join().unwrap(), "one\ntwo\n");
        let _ = std::fs::remove_dir_all(dir);
    }

    /// Drain: what the process wrote is in the FIFO when `drain` returns,
    /// even while another holder of the pipe keeps it from reaching EOF.
    #[test]
    fn drain_copies_what_is_pending_without_waiting_for_eof() {
        let dir = tempfile_dir();
        let fifo = dir.join("out");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let mut reader = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&fifo)
            .unwrap();
        let paths = StdioPaths {
            stdout: fifo.to_string_lossy().into_owned(),
            ..Default::default()
        };
        let (rs, io) = setup_pipes(&paths, 0, 0).unwrap();
        let d = io.drainer();
        assert!(
            d.drain(Duration::from_secs(5)),
            "an idle stream drains at once"
        );
        let mut w = File::from(rs.stdout.unwrap());
        for i in 0..200 {
            w.write_all(format!("line {i}\n").as_bytes()).unwrap();
        }
        assert!(d.drain(Duration::from_secs(5)), "drain timed out");
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("{e}"),
            }
        }
        let want: String = (0..200).map(|i| format!("line {i}\n")).collect();
        assert_eq!(String::from_utf8_lossy(&got), want);
        assert!(!io.wait_output(Duration::from_millis(50)), "no EOF yet");
        drop(w);
        drop(rs.stderr);
        assert!(io.wait_output(Duration::from_secs(5)));
        let _ = std::fs::remove_dir_all(dir);
    }

    /// No reader ever: setup gives up waiting (READER_WAIT is long, so the
    /// fallback is driven directly) and the copier holds the FIFO itself.
    #[test]
    fn without_a_reader_the_copier_is_released_and_keeps_the_data() {
        let dir = tempfile_dir();
        let fifo = dir.join("out");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let (r, w) = pipe().unwrap();
        let outputs = Arc::new(Outputs::default());
        let (idx, wake) = outputs.add(true).unwrap();
        let outs = outputs.clone();
        let dst = Output::Fifo(fifo.clone());
        spawn_copier("t", move || copy_out("t", idx, r, dst, outs, wake)).unwrap();
        assert!(!outputs.wait_for(Duration::from_millis(50), |c| c.opening));
        // What wait_readers does after READER_WAIT.
        drop(
            OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(&fifo)
                .unwrap(),
        );
        assert!(outputs.wait_for(Duration::from_secs(5), |c| c.opening));
        // A late reader still gets what is written while the copier runs.
        let mut reader = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&fifo)
            .unwrap();
        let mut w = File::from(w);
        w.write_all(b"late\n").unwrap();
        let mut buf = [0u8; 16];
        let mut fds = [PollFd::new(reader.as_fd(), PollFlags::POLLIN)];
        poll(&mut fds, PollTimeout::from(5000u16)).unwrap();
        let n = reader.read(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"late\n");
        drop(w);
        assert!(outputs.wait_for(Duration::from_secs(5), |c| c.running));
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
