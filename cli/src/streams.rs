//! Copying container I/O: output of attach/exec/logs (demultiplexed when
//! there is no TTY, raw with one) and the local stdin into a hijacked
//! connection.

use std::io::{Read, Write};

use hyper::body::Incoming;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tracing::debug;

use crate::client::{next_chunk, AttachOutput};
use crate::error::{CliError, Result};
use crate::stdcopy::{StdcopyDemuxer, StreamKind};

/// Writes container output to our stdout/stderr.
pub struct OutputSink {
    demuxer: Option<StdcopyDemuxer>,
}

impl OutputSink {
    /// `raw`: the stream is not multiplexed (TTY, or old API).
    pub fn new(raw: bool) -> OutputSink {
        OutputSink {
            demuxer: (!raw).then(StdcopyDemuxer::default),
        }
    }

    /// Writes one chunk as it arrived from the daemon.
    pub fn write(&mut self, chunk: &[u8]) -> Result<()> {
        let Some(d) = self.demuxer.as_mut() else {
            let mut out = std::io::stdout().lock();
            out.write_all(chunk)?;
            out.flush()?;
            return Ok(());
        };
        let frames = d
            .push(chunk)
            .map_err(|e| CliError::Protocol(e.to_string()))?;
        for (kind, data) in frames {
            match kind {
                StreamKind::Stdout | StreamKind::Stdin => {
                    let mut out = std::io::stdout().lock();
                    out.write_all(&data)?;
                    out.flush()?;
                }
                StreamKind::Stderr => {
                    let mut err = std::io::stderr().lock();
                    err.write_all(&data)?;
                    err.flush()?;
                }
                StreamKind::SystemError => {
                    return Err(CliError::Status {
                        message: format!(
                            "error from daemon in stream: {}",
                            String::from_utf8_lossy(&data).trim_end()
                        ),
                        code: 1,
                    })
                }
            }
        }
        Ok(())
    }
}

/// Copies a streamed response body into `sink` until it ends.
pub async fn copy_body(mut body: Incoming, sink: &mut OutputSink) -> Result<()> {
    while let Some(chunk) = next_chunk(&mut body).await? {
        sink.write(&chunk)?;
    }
    Ok(())
}

/// Reads our stdin on a plain thread (a blocking read never holds up the
/// runtime) and hands chunks over; the channel closes at end of input.
pub fn spawn_stdin_reader() -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel::<Vec<u8>>(16);
    std::thread::Builder::new()
        .name("orca-stdin".into())
        .spawn(move || {
            let mut stdin = std::io::stdin();
            let mut buf = vec![0u8; 32 * 1024];
            loop {
                match stdin.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        if tx.blocking_send(buf[..n].to_vec()).is_err() {
                            break;
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        debug!("stdin: {e}");
                        break;
                    }
                }
            }
        })
        .ok();
    rx
}

/// Pumps an attach/exec stream: output to our stdout/stderr until the
/// daemon closes it; with `stdin`, our input into it (half-closing the
/// connection at end of input, which closes the container's stdin).
pub async fn pump_attach(
    output: AttachOutput,
    raw: bool,
    stdin: Option<mpsc::Receiver<Vec<u8>>>,
) -> Result<()> {
    let mut sink = OutputSink::new(raw);
    match output {
        AttachOutput::Body(body) => copy_body(body, &mut sink).await,
        AttachOutput::Hijacked(stream) => {
            let (mut rd, mut wr) = tokio::io::split(stream);
            let input = stdin.map(|mut rx| {
                tokio::spawn(async move {
                    while let Some(data) = rx.recv().await {
                        if let Err(e) = wr.write_all(&data).await {
                            debug!("writing stdin to the daemon: {e}");
                            return;
                        }
                        let _ = wr.flush().await;
                    }
                    let _ = wr.shutdown().await;
                })
            });
            let mut buf = vec![0u8; 32 * 1024];
            let result = loop {
                match rd.read(&mut buf).await {
                    Ok(0) => break Ok(()),
                    Ok(n) => {
                        if let Err(e) = sink.write(&buf[..n]) {
                            break Err(e);
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break Ok(()),
                    Err(e) => break Err(e.into()),
                }
            };
            if let Some(t) = input {
                t.abort();
            }
            result
        }
    }
}
