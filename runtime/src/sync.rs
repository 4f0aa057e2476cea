//! The channel between the runtime and the container's init process during setup: a
//! SOCK_SEQPACKET socketpair carrying one JSON message per packet (and, for the seccomp
//! listener, a file descriptor as SCM_RIGHTS).

use crate::error::{Context, Result, RuntimeError};
use nix::sys::socket::{
    recvmsg, sendmsg, socketpair, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags,
    SockFlag, SockType,
};
use serde::{Deserialize, Serialize};
use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub enum Msg {
    /// runtime → child: the cgroup (and, with a single clone, the id maps) are in place.
    Go,
    /// child → runtime: write the uid/gid maps of the sending process (it just unshared a user
    /// namespace); the runtime answers `Mapped`.
    MapIds {
        pid: i32,
    },
    Mapped,
    /// child → runtime: the container's init has this pid in the runtime's namespace.
    InitPid {
        pid: i32,
    },
    /// runtime → init: the init's pid as the runtime sees it (for hook state).
    HostPid {
        pid: i32,
    },
    /// init → runtime: mounts are done; run prestart and createRuntime hooks now.
    RunCreateHooks,
    HooksDone,
    /// init → runtime: here is the seccomp notify fd (sent with the message).
    SeccompFd,
    /// init → runtime: setup finished; the init waits on the exec fifo (create) or executes the
    /// process now (exec).
    Ready,
    /// either way: setup failed.
    Error {
        msg: String,
    },
}

pub struct Channel {
    fd: OwnedFd,
}

/// A connected pair: (runtime end, child end).
pub fn pair() -> Result<(Channel, Channel)> {
    let (a, b) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .ctx(|| "socketpair for init sync")?;
    Ok((Channel { fd: a }, Channel { fd: b }))
}

impl Channel {
    pub fn raw(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    pub fn send(&self, msg: &Msg) -> Result<()> {
        self.send_with_fd(msg, None)
    }

    pub fn send_with_fd(&self, msg: &Msg, fd: Option<RawFd>) -> Result<()> {
        let data = serde_json::to_vec(msg).map_err(|e| RuntimeError::other(e.to_string()))?;
        let iov = [IoSlice::new(&data)];
        let fds;
        let cmsgs: Vec<ControlMessage> = match fd {
            Some(f) => {
                fds = [f];
                vec![ControlMessage::ScmRights(&fds)]
            }
            None => vec![],
        };
        sendmsg::<()>(
            self.fd.as_raw_fd(),
            &iov,
            &cmsgs,
            MsgFlags::MSG_NOSIGNAL,
            None,
        )
        .ctx(|| format!("send {msg:?} on init sync socket"))?;
        Ok(())
    }

    /// Receive one message; `Ok(None)` when the peer is gone.
    pub fn recv(&self) -> Result<Option<(Msg, Option<OwnedFd>)>> {
        let mut buf = vec![0u8; 64 * 1024];
        let mut cmsg = nix::cmsg_space!([RawFd; 1]);
        let (len, fd) = {
            let mut iov = [IoSliceMut::new(&mut buf)];
            let r = loop {
                match recvmsg::<()>(
                    self.fd.as_raw_fd(),
                    &mut iov,
                    Some(&mut cmsg),
                    MsgFlags::MSG_CMSG_CLOEXEC,
                ) {
                    Err(nix::Error::EINTR) => continue,
                    other => break other,
                }
            }
            .ctx(|| "receive on init sync socket")?;
            let mut fd = None;
            for c in r.cmsgs().ctx(|| "init sync control message")? {
                if let ControlMessageOwned::ScmRights(fds) = c {
                    for f in fds {
                        // SAFETY: the kernel just installed this descriptor for us; we own it.
                        let owned = unsafe { OwnedFd::from_raw_fd(f) };
                        if fd.is_none() {
                            fd = Some(owned);
                        }
                    }
                }
            }
            (r.bytes, fd)
        };
        if len == 0 {
            return Ok(None);
        }
        let msg = serde_json::from_slice(&buf[..len])
            .map_err(|e| RuntimeError::other(format!("bad init sync message: {e}")))?;
        Ok(Some((msg, fd)))
    }

    /// Receive and insist on one particular message; an `Error` from the peer becomes ours.
    pub fn expect(&self, want: &Msg) -> Result<()> {
        match self.recv()? {
            Some((ref m, _)) if m == want => Ok(()),
            Some((Msg::Error { msg }, _)) => Err(RuntimeError::Init(msg)),
            Some((other, _)) => Err(RuntimeError::other(format!(
                "init sync: expected {want:?}, got {other:?}"
            ))),
            None => Err(RuntimeError::other(format!(
                "init sync: peer exited while waiting for {want:?}"
            ))),
        }
    }
}
