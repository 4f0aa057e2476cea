//! The shim's log: lines written to the `log` FIFO containerd gives each shim
//! in the bundle (containerd copies them into its own log). A few macros over
//! one global writer instead of `tracing` + `tracing-subscriber`: the shim logs
//! rarely, and their code (env-filter's regex engine, formatting layers) was
//! a large share of the pages every shim process mapped.
//!
//! Line format: `2024-05-01T12:00:00.123456Z  WARN orca_shim::io: message`.

use std::fmt;
use std::fs::File;
use std::io::Write;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Mutex;
use std::time::SystemTime;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum Level {
    Error = 1,
    Warn = 2,
    Info = 3,
    Debug = 4,
}

impl Level {
    fn label(self) -> &'static str {
        match self {
            Level::Error => "ERROR",
            Level::Warn => " WARN",
            Level::Info => " INFO",
            Level::Debug => "DEBUG",
        }
    }
}

/// 0 = logging off (no writer).
static MAX: AtomicU8 = AtomicU8::new(0);
static OUT: Mutex<Option<File>> = Mutex::new(None);

/// Sends log lines at `max` and above to `out`.
pub fn init(out: File, max: Level) {
    *OUT.lock().unwrap_or_else(|e| e.into_inner()) = Some(out);
    MAX.store(max as u8, Ordering::Relaxed);
}

pub fn enabled(level: Level) -> bool {
    level as u8 <= MAX.load(Ordering::Relaxed)
}

/// Writes one line (use the macros).
pub fn write(level: Level, target: &str, args: fmt::Arguments<'_>) {
    let mut line = Vec::with_capacity(128);
    let _ = writeln!(
        line,
        "{} {} {target}: {args}",
        Rfc3339(SystemTime::now()),
        level.label()
    );
    let mut g = OUT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(f) = g.as_mut() {
        // One write per line; a full FIFO (nobody reading) drops the line.
        let _ = f.write(&line);
    }
}

/// UTC `YYYY-MM-DDTHH:MM:SS.uuuuuuZ`.
struct Rfc3339(SystemTime);

impl fmt::Display for Rfc3339 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = self
            .0
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        let secs = d.as_secs();
        let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
        // Howard Hinnant's civil_from_days.
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = doy - (153 * mp + 2) / 5 + 1;
        let month = if mp < 10 { mp + 3 } else { mp - 9 };
        let year = yoe + era * 400 + i64::from(month <= 2);
        write!(
            f,
            "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
            rem / 3600,
            rem / 60 % 60,
            rem % 60,
            d.subsec_micros()
        )
    }
}

#[macro_export]
macro_rules! log_at {
    ($lvl:expr, $($arg:tt)+) => {
        if $crate::log::enabled($lvl) {
            $crate::log::write($lvl, module_path!(), format_args!($($arg)+));
        }
    };
}
#[macro_export]
macro_rules! error { ($($arg:tt)+) => { $crate::log_at!($crate::log::Level::Error, $($arg)+) }; }
#[macro_export]
macro_rules! warn { ($($arg:tt)+) => { $crate::log_at!($crate::log::Level::Warn, $($arg)+) }; }
#[macro_export]
macro_rules! info { ($($arg:tt)+) => { $crate::log_at!($crate::log::Level::Info, $($arg)+) }; }
#[macro_export]
macro_rules! debug { ($($arg:tt)+) => { $crate::log_at!($crate::log::Level::Debug, $($arg)+) }; }

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn timestamps_are_rfc3339_utc() {
        let t = SystemTime::UNIX_EPOCH + Duration::new(1_709_210_096, 7_000);
        assert_eq!(Rfc3339(t).to_string(), "2024-02-29T12:34:56.000007Z");
        assert_eq!(
            Rfc3339(SystemTime::UNIX_EPOCH).to_string(),
            "1970-01-01T00:00:00.000000Z"
        );
    }

    #[test]
    fn levels_filter() {
        assert!(Level::Error < Level::Debug);
        assert!(!enabled(Level::Debug) || MAX.load(Ordering::Relaxed) >= 4);
    }
}
