//! Terminals: the container's pty is opened inside the container (its own devpts) and the
//! master end is sent to `--console-socket` with SCM_RIGHTS, as runc does.

use crate::error::{Context, Result, RuntimeError};
use nix::fcntl::{open, OFlag};
use nix::mount::{mount, MsFlags};
use nix::pty::{grantpt, posix_openpt, ptsname_r, unlockpt};
use nix::sys::socket::{
    connect, sendmsg, socket, AddressFamily, ControlMessage, MsgFlags, SockFlag, SockType, UnixAddr,
};
use nix::sys::stat::Mode;
use std::io::IoSlice;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::Path;

/// Connect to the console socket (done before the container's namespaces hide the path).
pub fn connect_console_socket(path: &Path) -> Result<OwnedFd> {
    let sock = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .ctx(|| "console socket")?;
    let addr = UnixAddr::new(path).ctx(|| format!("console socket path {path:?}"))?;
    connect(sock.as_raw_fd(), &addr).ctx(|| format!("connect to console socket {path:?}"))?;
    Ok(sock)
}

/// Open a new pty in the current mount namespace's /dev/ptmx, send the master to the socket,
/// bind the slave on /dev/console (when `mount_console`), make it the controlling terminal
/// and stdio.
pub fn setup_console(socket: RawFd, mount_console: bool) -> Result<()> {
    let master = posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)
        .ctx(|| "open /dev/ptmx")?;
    grantpt(&master).ctx(|| "grantpt")?;
    unlockpt(&master).ctx(|| "unlockpt")?;
    let slave_name = ptsname_r(&master).ctx(|| "ptsname")?;
    let slave = open(
        Path::new(&slave_name),
        OFlag::O_RDWR | OFlag::O_NOCTTY,
        Mode::empty(),
    )
    .ctx(|| format!("open {slave_name}"))?;
    if mount_console {
        let console = Path::new("/dev/console");
        if std::fs::symlink_metadata(console).is_err() {
            let _ = std::fs::File::create(console);
        }
        let _ = mount(
            Some(Path::new(&slave_name)),
            console,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        );
    }
    let name = slave_name.as_bytes();
    let iov = [IoSlice::new(name)];
    let fds = [master.as_raw_fd()];
    sendmsg::<()>(
        socket,
        &iov,
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::empty(),
        None,
    )
    .ctx(|| "send pty master to console socket")?;
    drop(master);
    nix::unistd::setsid().ctx(|| "setsid")?;
    // SAFETY: TIOCSCTTY on a pty slave we own; no memory is passed.
    let r = unsafe { libc::ioctl(slave, libc::TIOCSCTTY, 0) };
    if r < 0 {
        return Err(RuntimeError::Sys {
            context: "make the pty the controlling terminal".into(),
            source: nix::Error::last(),
        });
    }
    for target in 0..3 {
        nix::unistd::dup2(slave, target).ctx(|| "dup2 pty slave onto stdio")?;
    }
    if slave > 2 {
        let _ = nix::unistd::close(slave);
    }
    Ok(())
}

/// A connected socket pair standing in for `--console-socket`: (our end, the init's end).
pub fn console_pair() -> Result<(OwnedFd, OwnedFd)> {
    nix::sys::socket::socketpair(
        AddressFamily::Unix,
        SockType::Stream,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .ctx(|| "socketpair for the console")
}

/// Receive the pty master the init sent over a console socket.
pub fn receive_master(sock: &OwnedFd) -> Result<OwnedFd> {
    use std::os::fd::FromRawFd;
    let mut buf = [0u8; 256];
    let mut iov = [std::io::IoSliceMut::new(&mut buf)];
    let mut cmsg = nix::cmsg_space!([RawFd; 1]);
    let msg = nix::sys::socket::recvmsg::<()>(
        sock.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .ctx(|| "receive the pty master")?;
    for c in msg.cmsgs().ctx(|| "console control message")? {
        if let nix::sys::socket::ControlMessageOwned::ScmRights(fds) = c {
            if let Some(fd) = fds.first() {
                // SAFETY: the kernel just installed this descriptor for us.
                return Ok(unsafe { OwnedFd::from_raw_fd(*fd) });
            }
        }
    }
    Err(RuntimeError::other(
        "console socket: no pty master received",
    ))
}

/// Copies between our stdio and a container's pty master (foreground `run`/`exec` with a
/// terminal and no `--console-socket`, as runc does). Our terminal is put in raw mode and
/// restored on drop.
pub struct PtyProxy {
    saved: Option<nix::sys::termios::Termios>,
    output: Option<std::thread::JoinHandle<()>>,
}

impl PtyProxy {
    pub fn start(master: OwnedFd) -> Result<PtyProxy> {
        use nix::sys::termios;
        let stdin = std::io::stdin();
        let saved = termios::tcgetattr(&stdin).ok();
        if let Some(t) = &saved {
            let mut raw = t.clone();
            termios::cfmakeraw(&mut raw);
            let _ = termios::tcsetattr(&stdin, termios::SetArg::TCSANOW, &raw);
            let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
            // SAFETY: TIOCGWINSZ/TIOCSWINSZ read and write a winsize struct we own.
            unsafe {
                if libc::ioctl(0, libc::TIOCGWINSZ, &mut ws) == 0 {
                    libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws);
                }
            }
        }
        let master = std::sync::Arc::new(std::fs::File::from(master));
        let m_in = master.clone();
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut std::io::stdin().lock(), &mut &*m_in);
        });
        let m_out = master;
        let output = std::thread::spawn(move || {
            let _ = std::io::copy(&mut &*m_out, &mut std::io::stdout().lock());
        });
        Ok(PtyProxy {
            saved,
            output: Some(output),
        })
    }
}

impl Drop for PtyProxy {
    fn drop(&mut self) {
        // The output copy ends with EIO once every slave descriptor is closed; give it a
        // moment to drain, then restore the terminal.
        if let Some(h) = self.output.take() {
            let deadline = std::time::Instant::now() + std::time::Duration::from_millis(500);
            while !h.is_finished() && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
        }
        if let Some(t) = &self.saved {
            let _ = nix::sys::termios::tcsetattr(
                std::io::stdin(),
                nix::sys::termios::SetArg::TCSANOW,
                t,
            );
        }
    }
}
