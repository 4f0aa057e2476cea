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
