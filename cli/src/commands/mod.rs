//! One function per command. Each returns the process exit code, or an
//! error that `run_cli` prints (with its docker exit code).

mod containers;
mod exec;
mod images;
mod run;
mod system;
pub mod volume;

use std::collections::BTreeMap;

use serde_json::{json, Value};

use crate::args::{Command, SystemCommand};
use crate::client::EngineClient;
use crate::error::{CliError, Result};
use crate::host::select_host_from_env;

pub use containers::{container_headers, container_row};
pub use images::image_rows;

/// Runs one parsed command against the selected daemon.
pub async fn dispatch(host_flag: Option<&str>, command: Command) -> Result<i32> {
    let host = select_host_from_env(host_flag)?;
    if let Command::Version(a) = &command {
        return system::version(host, a.format.as_deref()).await;
    }
    let client = EngineClient::negotiate(host).await?;
    let c = &client;
    match command {
        Command::Version(_) => unreachable!("handled above"),
        Command::Info(a) | Command::System(SystemCommand::Info(a)) => {
            system::info(c, a.format.as_deref()).await
        }
        Command::Events(a) | Command::System(SystemCommand::Events(a)) => {
            system::events(c, a).await
        }
        Command::System(SystemCommand::Df(a)) => system::df(c, a.format.as_deref()).await,
        Command::System(SystemCommand::Prune(a)) => system::prune(c, a).await,
        Command::Pull(a) => images::pull(c, a).await,
        Command::Images(a) => images::images(c, a).await,
        Command::Rmi(a) => images::rmi(c, a).await,
        Command::Tag(a) => images::tag(c, a).await,
        Command::Save(a) => images::save(c, a).await,
        Command::Load(a) => images::load(c, a).await,
        Command::Import(a) => images::import(c, a).await,
        Command::Run(a) => run::run(c, a, false).await,
        Command::Create(a) => run::run(c, a, true).await,
        Command::Start(a) => run::start(c, a).await,
        Command::Exec(a) => exec::exec(c, a).await,
        Command::Ps(a) => containers::ps(c, a).await,
        Command::Logs(a) => containers::logs(c, a).await,
        Command::Stop(a) => containers::stop(c, a, false).await,
        Command::Restart(a) => containers::stop(c, a, true).await,
        Command::Kill(a) => containers::kill(c, a).await,
        Command::Rm(a) => containers::rm(c, a).await,
        Command::Wait(a) => containers::wait(c, a).await,
        Command::Pause(a) => containers::simple_post(c, &a.containers, "pause").await,
        Command::Unpause(a) => containers::simple_post(c, &a.containers, "unpause").await,
        Command::Rename(a) => containers::rename(c, a).await,
        Command::Top(a) => containers::top(c, a).await,
        Command::Inspect(a) => containers::inspect(c, a).await,
        Command::Stats(a) => containers::stats(c, a).await,
        Command::Cp(a) => containers::cp(c, a).await,
        Command::Export(a) => containers::export(c, a).await,
        Command::Volume(v) => volume::run(c, v).await,
    }
}

/// `-f key=value` flags as the API's `filters` JSON (`{"key":["value"]}`).
pub fn filters_json(flags: &[String]) -> Result<Option<String>> {
    if flags.is_empty() {
        return Ok(None);
    }
    let mut m: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for f in flags {
        let Some((k, v)) = f.split_once('=') else {
            return Err(CliError::Usage(format!(
                "invalid argument \"{f}\" for \"-f, --filter\" flag: bad format of filter (expected name=value)"
            )));
        };
        m.entry(k.trim().to_lowercase())
            .or_default()
            .push(v.to_string());
    }
    Ok(Some(json!(m).to_string()))
}

/// Docker's `TruncateID`: no `sha256:` prefix, 12 characters.
pub fn short_id(id: &str) -> String {
    let id = id.strip_prefix("sha256:").unwrap_or(id);
    id.chars().take(12).collect()
}

/// Docker's `Ellipsis`: at most `max` characters, the last one "…".
pub fn ellipsis(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut t: String = s.chars().take(max.saturating_sub(1)).collect();
    t.push('…');
    t
}

/// Unix time as Go's `time.Time.String()` in UTC.
pub fn go_time(unix: i64) -> String {
    chrono::DateTime::from_timestamp(unix, 0)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S +0000 UTC").to_string())
        .unwrap_or_default()
}

/// Seconds since the epoch, now.
pub fn now_unix() -> i64 {
    chrono::Utc::now().timestamp()
}

/// Docker's multi-target commands: print each error, then fail with exit 1.
pub fn finish_targets(errors: Vec<String>) -> Result<i32> {
    if errors.is_empty() {
        return Ok(0);
    }
    Err(CliError::Status {
        message: errors.join("\n"),
        code: 1,
    })
}

/// Value of a string field, "" if missing.
pub fn str_of<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key].as_str().unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn helpers() {
        assert_eq!(short_id("sha256:0123456789abcdef"), "0123456789ab");
        assert_eq!(short_id("0123456789abcdef"), "0123456789ab");
        assert_eq!(
            ellipsis("sh -c 'echo hello world'", 20),
            "sh -c 'echo hello w…"
        );
        assert_eq!(ellipsis("echo hi", 20), "echo hi");
        assert_eq!(go_time(0), "1970-01-01 00:00:00 +0000 UTC");
        assert_eq!(
            filters_json(&["status=exited".into(), "status=created".into()]).unwrap(),
            Some(r#"{"status":["exited","created"]}"#.into())
        );
        assert!(filters_json(&["bogus".into()]).is_err());
    }
}
