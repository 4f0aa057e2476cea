//! Rendering of the daemon's JSON progress stream (pull, load, import):
//! plain lines as docker prints them without a terminal, or one
//! `indicatif` progress bar per layer with one.

use std::collections::HashMap;
use std::io::Write;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::Value;

use crate::error::{CliError, Result};

/// Turns progress messages into output.
pub enum ProgressRenderer {
    /// Docker's non-terminal output: one line per status change, no
    /// byte-count updates.
    Plain(Box<dyn Write>),
    /// A bar per layer id on a terminal.
    Bars {
        multi: MultiProgress,
        bars: HashMap<String, ProgressBar>,
    },
}

/// True for messages that only update byte counts (shown as bars on a
/// terminal, dropped otherwise, as docker does).
pub fn is_byte_progress(msg: &Value) -> bool {
    let d = &msg["progressDetail"];
    d["current"].as_u64().is_some() || d["total"].as_u64().is_some()
}

/// One plain output line for a message (`None`: nothing to print).
pub fn plain_line(msg: &Value) -> Option<String> {
    if is_byte_progress(msg) {
        return None;
    }
    if let Some(s) = msg["stream"].as_str() {
        return Some(s.trim_end_matches('\n').to_string());
    }
    let status = msg["status"].as_str()?;
    Some(match msg["id"].as_str() {
        Some(id) if !id.is_empty() => format!("{id}: {status}"),
        _ => status.to_string(),
    })
}

impl ProgressRenderer {
    /// Plain lines to `out`.
    pub fn plain(out: Box<dyn Write>) -> ProgressRenderer {
        ProgressRenderer::Plain(out)
    }

    /// Progress bars on stderr or stdout.
    pub fn bars(to_stderr: bool) -> ProgressRenderer {
        let target = if to_stderr {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::stdout()
        };
        ProgressRenderer::Bars {
            multi: MultiProgress::with_draw_target(target),
            bars: HashMap::new(),
        }
    }

    /// Handles one message; a message with `error` ends the stream with it.
    pub fn handle(&mut self, msg: &Value) -> Result<()> {
        if let Some(e) = msg["error"]
            .as_str()
            .or_else(|| msg["errorDetail"]["message"].as_str())
        {
            return Err(CliError::Status {
                message: e.to_string(),
                code: 1,
            });
        }
        match self {
            ProgressRenderer::Plain(out) => {
                if let Some(line) = plain_line(msg) {
                    writeln!(out, "{line}")?;
                    out.flush()?;
                }
            }
            ProgressRenderer::Bars { multi, bars } => {
                let status = msg["status"].as_str().unwrap_or("");
                let Some(id) = msg["id"].as_str().filter(|i| !i.is_empty()) else {
                    if let Some(line) = plain_line(msg) {
                        multi.println(line)?;
                    }
                    return Ok(());
                };
                let bar = bars
                    .entry(id.to_string())
                    .or_insert_with(|| multi.add(ProgressBar::new(0).with_prefix(id.to_string())));
                let d = &msg["progressDetail"];
                match (d["current"].as_u64(), d["total"].as_u64()) {
                    (Some(cur), Some(total)) if total > 0 => {
                        bar.set_style(
                            ProgressStyle::with_template(
                                "{prefix}: {msg:<12} [{bar:40}] {bytes}/{total_bytes}",
                            )
                            .unwrap_or_else(|_| ProgressStyle::default_bar())
                            .progress_chars("=> "),
                        );
                        bar.set_length(total);
                        bar.set_position(cur);
                    }
                    _ => {
                        bar.set_style(
                            ProgressStyle::with_template("{prefix}: {msg}")
                                .unwrap_or_else(|_| ProgressStyle::default_bar()),
                        );
                    }
                }
                bar.set_message(status.to_string());
            }
        }
        Ok(())
    }

    /// Leaves the bars drawn in their final state.
    pub fn finish(&mut self) {
        if let ProgressRenderer::Bars { bars, .. } = self {
            for b in bars.values() {
                b.finish();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn plain_lines_like_docker_without_a_terminal() {
        assert_eq!(
            plain_line(&json!({"status": "Pulling from library/busybox", "id": "latest"})),
            Some("latest: Pulling from library/busybox".into())
        );
        assert_eq!(
            plain_line(
                &json!({"status": "Pull complete", "id": "a46fbb00284b", "progressDetail": {}})
            ),
            Some("a46fbb00284b: Pull complete".into())
        );
        assert_eq!(
            plain_line(&json!({"status": "Downloading", "id": "a46f",
                               "progressDetail": {"current": 10, "total": 100}})),
            None
        );
        assert_eq!(
            plain_line(&json!({"status": "Digest: sha256:abc"})),
            Some("Digest: sha256:abc".into())
        );
    }

    #[test]
    fn errors_end_the_stream() {
        let mut r = ProgressRenderer::plain(Box::new(Vec::new()));
        let e = r
            .handle(&json!({"error": "manifest unknown", "errorDetail": {"message": "manifest unknown"}}))
            .unwrap_err();
        assert_eq!(e.to_string(), "manifest unknown");
    }
}
