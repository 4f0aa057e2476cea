//! Logging in runc's formats, as a `tracing` layer: `--log-format json` writes one object per
//! line with `level`, `msg` and `time` (containerd's runc shim reports the last `error` line of
//! that file when a command fails); `text` writes logrus-style `time=… level=… msg=…` lines.

use std::fmt::Write as _;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::Mutex;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::prelude::*;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

pub struct RuncLogLayer {
    out: Mutex<Box<dyn Write + Send>>,
    format: LogFormat,
    max_level: Level,
}

struct MsgVisitor {
    msg: String,
    extra: Vec<(String, String)>,
}

impl Visit for MsgVisitor {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.msg.push_str(value);
        } else {
            self.extra
                .push((field.name().to_string(), value.to_string()));
        }
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.msg, "{value:?}");
        } else {
            self.extra
                .push((field.name().to_string(), format!("{value:?}")));
        }
    }
}

fn level_name(l: &Level) -> &'static str {
    match *l {
        Level::ERROR => "error",
        Level::WARN => "warning",
        Level::INFO => "info",
        Level::DEBUG => "debug",
        Level::TRACE => "trace",
    }
}

impl<S: Subscriber> Layer<S> for RuncLogLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let level = *event.metadata().level();
        if level > self.max_level {
            return;
        }
        let mut v = MsgVisitor {
            msg: String::new(),
            extra: Vec::new(),
        };
        event.record(&mut v);
        let time = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
        let line = match self.format {
            LogFormat::Json => {
                let mut obj = serde_json::Map::new();
                obj.insert("level".into(), level_name(&level).into());
                obj.insert("msg".into(), v.msg.into());
                obj.insert("time".into(), time.into());
                for (k, val) in v.extra {
                    obj.insert(k, val.into());
                }
                serde_json::Value::Object(obj).to_string()
            }
            LogFormat::Text => {
                let mut s = format!(
                    "time=\"{time}\" level={} msg={:?}",
                    level_name(&level),
                    v.msg
                );
                for (k, val) in v.extra {
                    let _ = write!(s, " {k}={val:?}");
                }
                s
            }
        };
        if let Ok(mut out) = self.out.lock() {
            let _ = writeln!(out, "{line}");
            let _ = out.flush();
        }
    }
}

/// A log file created (or appended to) at its first line, so a command
/// that logs nothing creates no file (runc's shim reads the file only when
/// a command failed; a missing one reads as empty). The file is opened
/// relative to a descriptor of its directory taken at start, so a
/// container's init, which inherits it, can still open the file after
/// pivot_root (both descriptors are close-on-exec).
struct LogFileOnDemand {
    dir: std::os::fd::OwnedFd,
    name: std::ffi::CString,
    display: String,
    file: Option<std::fs::File>,
}

impl LogFileOnDemand {
    fn new(p: &std::path::Path) -> std::io::Result<LogFileOnDemand> {
        use std::os::unix::ffi::OsStrExt;
        let parent = match p.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => std::path::Path::new("."),
        };
        let name = p
            .file_name()
            .ok_or_else(|| std::io::Error::other("log path names no file"))?;
        let dir = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
            .open(parent)?;
        Ok(LogFileOnDemand {
            dir: dir.into(),
            name: std::ffi::CString::new(name.as_bytes()).map_err(std::io::Error::other)?,
            display: p.display().to_string(),
            file: None,
        })
    }

    fn open(&self) -> std::io::Result<std::fs::File> {
        use std::os::fd::{AsRawFd, FromRawFd};
        // SAFETY: openat on a directory descriptor we own with a
        // NUL-terminated name; the result is checked.
        let fd = unsafe {
            libc::openat(
                self.dir.as_raw_fd(),
                self.name.as_ptr(),
                libc::O_WRONLY | libc::O_APPEND | libc::O_CREAT | libc::O_CLOEXEC,
                0o644 as libc::c_uint,
            )
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: openat just returned this descriptor; nothing else owns it.
        Ok(unsafe { std::fs::File::from_raw_fd(fd) })
    }
}

impl Write for LogFileOnDemand {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.file.is_none() {
            match self.open() {
                Ok(f) => self.file = Some(f),
                Err(e) => {
                    eprintln!("orca-runtime: cannot open log file {}: {e}", self.display);
                    return std::io::stderr().write(buf);
                }
            }
        }
        self.file.as_mut().expect("opened above").write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.as_mut().map_or(Ok(()), |f| f.flush())
    }
}

/// Install the global subscriber. `log_path` None means stderr.
pub fn init(log_path: Option<&std::path::Path>, format: LogFormat, debug: bool) {
    let out: Box<dyn Write + Send> = match log_path {
        Some(p) => match LogFileOnDemand::new(p) {
            Ok(f) => Box::new(f),
            Err(e) => {
                eprintln!("orca-runtime: cannot open log file {}: {e}", p.display());
                Box::new(std::io::stderr())
            }
        },
        None => Box::new(std::io::stderr()),
    };
    let layer = RuncLogLayer {
        out: Mutex::new(out),
        format,
        max_level: if debug { Level::DEBUG } else { Level::WARN },
    };
    let _ = tracing_subscriber::registry().with(layer).try_init();
}

#[cfg(test)]
mod tests {
    use super::*;

    /// No file until the first line; lines are appended to what is there;
    /// the file is found through the directory descriptor even when the
    /// path no longer leads to it (as for an init after pivot_root).
    #[test]
    fn log_file_is_created_at_the_first_line() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("bundle");
        std::fs::create_dir(&dir).unwrap();
        let path = dir.join("log.json");
        let mut w = LogFileOnDemand::new(&path).unwrap();
        w.flush().unwrap();
        assert!(!path.exists(), "created before any line");
        let moved = d.path().join("moved");
        std::fs::rename(&dir, &moved).unwrap();
        writeln!(w, "one").unwrap();
        writeln!(w, "two").unwrap();
        assert_eq!(
            std::fs::read_to_string(moved.join("log.json")).unwrap(),
            "one\ntwo\n"
        );
        let mut again = LogFileOnDemand::new(&moved.join("log.json")).unwrap();
        writeln!(again, "three").unwrap();
        assert_eq!(
            std::fs::read_to_string(moved.join("log.json")).unwrap(),
            "one\ntwo\nthree\n"
        );
    }
}
