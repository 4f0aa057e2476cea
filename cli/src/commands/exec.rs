//! exec: create an exec instance, start it on a hijacked connection, exit
//! with its exit code.

use std::time::Duration;

use http::Method;
use serde_json::json;

use crate::args::ExecArgs;
use crate::client::EngineClient;
use crate::error::{CliError, Result};
use crate::streams::{pump_attach, spawn_stdin_reader};
use crate::terminal::{stdin_is_tty, stdout_is_tty, RawModeGuard};

use super::run::spawn_resize_watcher;

/// `orca exec`.
pub async fn exec(client: &EngineClient, a: ExecArgs) -> Result<i32> {
    if a.interactive && a.tty && !a.detach && !stdin_is_tty() {
        return Err(CliError::Status {
            message: "the input device is not a TTY".into(),
            code: 1,
        });
    }
    let attached = !a.detach;
    let mut cfg = json!({
        "User": a.user.clone().unwrap_or_default(),
        "Privileged": a.privileged,
        "Tty": a.tty,
        "AttachStdin": a.interactive && attached,
        "AttachStdout": attached,
        "AttachStderr": attached,
        "Detach": a.detach,
        "Cmd": a.command,
    });
    let env: Vec<String> = a
        .env
        .iter()
        .filter_map(|e| {
            if e.contains('=') {
                Some(e.clone())
            } else {
                std::env::var(e).ok().map(|v| format!("{e}={v}"))
            }
        })
        .collect();
    if !env.is_empty() {
        cfg["Env"] = json!(env);
    }
    if let Some(w) = &a.workdir {
        cfg["WorkingDir"] = json!(w);
    }
    let created = client
        .json(
            Method::POST,
            &format!("/containers/{}/exec", a.container),
            Some(&cfg),
        )
        .await?;
    let exec_id = created["Id"]
        .as_str()
        .ok_or_else(|| CliError::Protocol(format!("exec create returned no Id: {created}")))?
        .to_string();
    let start_body = json!({"Detach": a.detach, "Tty": a.tty});
    if a.detach {
        client
            .call(
                Method::POST,
                &format!("/exec/{exec_id}/start"),
                Some(&start_body),
            )
            .await?;
        return Ok(0);
    }
    let raw_mode = if a.tty && a.interactive && stdin_is_tty() {
        Some(RawModeGuard::enable()?)
    } else {
        None
    };
    let (output, raw) = client
        .hijack(
            Method::POST,
            &format!("/exec/{exec_id}/start"),
            Some(&start_body),
        )
        .await?;
    let resize = (a.tty && stdout_is_tty())
        .then(|| spawn_resize_watcher(client, format!("/exec/{exec_id}/resize")));
    let stdin = a.interactive.then(spawn_stdin_reader);
    let pumped = pump_attach(output, raw || a.tty, stdin).await;
    drop(raw_mode);
    if let Some(t) = resize {
        t.abort();
    }
    pumped?;
    // The stream ends when the process does; its code may land a moment later.
    for _ in 0..50 {
        let info = client
            .json(Method::GET, &format!("/exec/{exec_id}/json"), None)
            .await?;
        if info["Running"].as_bool() != Some(true) {
            if let Some(code) = info["ExitCode"].as_i64() {
                return Ok(code as i32);
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(CliError::Protocol(
        "exec did not report an exit code".into(),
    ))
}
