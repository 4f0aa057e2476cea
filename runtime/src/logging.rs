//! Logging in runc's formats, as a `tracing` layer: `--log-format json` writes one object per
//! line with `level`, `msg` and `time` (containerd's runc shim reports the last `error` line of
//! that file when a command fails); `text` writes logrus-style `time=… level=… msg=…` lines.

use std::fmt::Write as _;
use std::io::Write;
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

/// Install the global subscriber. `log_path` None means stderr.
pub fn init(log_path: Option<&std::path::Path>, format: LogFormat, debug: bool) {
    let out: Box<dyn Write + Send> = match log_path {
        Some(p) => match std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
        {
            Ok(f) => {
                // The log stays open in the container's init during setup; never past exec.
                Box::new(f)
            }
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
