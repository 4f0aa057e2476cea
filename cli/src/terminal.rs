//! The local terminal: raw mode for `-t`, its size, and whether the standard
//! streams are terminals.

use std::io::IsTerminal;
use std::os::fd::AsRawFd;

use nix::sys::termios::{self, SetArg, Termios};

/// True if stdin is a terminal.
pub fn stdin_is_tty() -> bool {
    std::io::stdin().is_terminal()
}

/// True if stdout is a terminal.
pub fn stdout_is_tty() -> bool {
    std::io::stdout().is_terminal()
}

/// True if stderr is a terminal.
pub fn stderr_is_tty() -> bool {
    std::io::stderr().is_terminal()
}

/// Puts stdin's terminal in raw mode; restores the saved settings on drop.
pub struct RawModeGuard {
    saved: Termios,
}

impl RawModeGuard {
    /// Enables raw mode on stdin (fails if stdin is not a terminal).
    pub fn enable() -> std::io::Result<RawModeGuard> {
        let stdin = std::io::stdin();
        let saved = termios::tcgetattr(&stdin)?;
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        termios::tcsetattr(&stdin, SetArg::TCSANOW, &raw)?;
        Ok(RawModeGuard { saved })
    }
}

impl Drop for RawModeGuard {
    fn drop(&mut self) {
        let _ = termios::tcsetattr(std::io::stdin(), SetArg::TCSANOW, &self.saved);
    }
}

/// (height, width) of the terminal on stdout (else stdin), if any.
pub fn terminal_size() -> Option<(u16, u16)> {
    for fd in [std::io::stdout().as_raw_fd(), std::io::stdin().as_raw_fd()] {
        let mut ws = libc::winsize {
            ws_row: 0,
            ws_col: 0,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCGWINSZ writes one `winsize` into the pointer we pass,
        // which points at a live, properly aligned local; `fd` is one of our
        // standard descriptors, open for the life of the process.
        let rc = unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws as *mut libc::winsize) };
        if rc == 0 && ws.ws_row > 0 && ws.ws_col > 0 {
            return Some((ws.ws_row, ws.ws_col));
        }
    }
    None
}
