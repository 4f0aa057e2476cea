//! The orca-supervisor orcad manages when no `--containerd` socket is
//! given, as dockerd manages its containerd: the binary next to `orcad`,
//! `--root <data-root>/supervisor`, `--state <exec-root>/supervisor`,
//! socket `<exec-root>/supervisor/supervisor.sock`, pid in
//! `<exec-root>/supervisor/supervisor.pid`. Its output goes to orcad's
//! stderr. It runs in its own process group (a terminal's Ctrl-C reaches
//! orcad only). orcad stops it at shutdown unless live-restore is set; a
//! restarted orcad reuses a supervisor that is still running.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tracing::{info, warn};

/// A supervisor orcad started (or found running from a previous orcad).
#[derive(Debug)]
pub struct ManagedSupervisor {
    pid: u32,
    socket: PathBuf,
    pidfile: PathBuf,
    child: Option<std::process::Child>,
}

fn alive(pid: u32) -> bool {
    pid > 0 && kill(Pid::from_raw(pid as i32), None).is_ok() && !is_zombie(pid)
}

fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next().map(|st| st == "Z"))
        })
        .unwrap_or(false)
}

/// Whether `pid` runs an orca-supervisor binary.
fn is_supervisor(pid: u32) -> bool {
    std::fs::read_link(format!("/proc/{pid}/exe"))
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .is_some_and(|n| n.starts_with("orca-supervisor"))
}

async fn answers(socket: &Path) -> bool {
    match crate::containerd::Containerd::connect(socket, "orca").await {
        Ok(c) => c.server_version().await.is_ok(),
        Err(_) => false,
    }
}

impl ManagedSupervisor {
    /// The supervisor's gRPC socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The supervisor's pid.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Reuses a running supervisor recorded under `exec_root`, or starts
    /// one and waits (≤ 30 s) until its API answers.
    pub async fn ensure(data_root: &Path, exec_root: &Path) -> anyhow::Result<ManagedSupervisor> {
        let state = exec_root.join("supervisor");
        std::fs::create_dir_all(&state)
            .with_context(|| format!("cannot create {}", state.display()))?;
        let socket = state.join("supervisor.sock");
        let pidfile = state.join("supervisor.pid");
        if let Some(pid) = std::fs::read_to_string(&pidfile)
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok())
        {
            if alive(pid) && is_supervisor(pid) && answers(&socket).await {
                info!(pid, socket = %socket.display(), "reusing the running orca-supervisor");
                return Ok(ManagedSupervisor {
                    pid,
                    socket,
                    pidfile,
                    child: None,
                });
            }
        }
        let exe = std::env::current_exe().context("cannot find orcad's own path")?;
        let bin = exe
            .parent()
            .map(|d| d.join("orca-supervisor"))
            .filter(|p| p.exists())
            .with_context(|| {
                format!(
                    "orca-supervisor not found next to {} (give --containerd SOCKET to use a running containerd)",
                    exe.display()
                )
            })?;
        let root = data_root.join("supervisor");
        let mut cmd = Command::new(&bin);
        cmd.arg("--root")
            .arg(&root)
            .arg("--state")
            .arg(&state)
            .arg("--address")
            .arg(&socket)
            .stdin(Stdio::null())
            .stdout(Stdio::inherit())
            .stderr(Stdio::inherit());
        {
            use std::os::unix::process::CommandExt;
            cmd.process_group(0);
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        let pid = child.id();
        crate::util::write_atomic(&pidfile, pid.to_string().as_bytes())
            .with_context(|| format!("cannot write {}", pidfile.display()))?;
        info!(pid, bin = %bin.display(), socket = %socket.display(), "started orca-supervisor");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(st) = child.try_wait()? {
                let _ = std::fs::remove_file(&pidfile);
                anyhow::bail!("orca-supervisor exited during startup ({st})");
            }
            if socket.exists() && answers(&socket).await {
                break;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                let _ = std::fs::remove_file(&pidfile);
                anyhow::bail!(
                    "orca-supervisor did not answer on {} within 30 s",
                    socket.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(ManagedSupervisor {
            pid,
            socket,
            pidfile,
            child: Some(child),
        })
    }

    /// Stops the supervisor: SIGTERM, SIGKILL after 10 s.
    pub async fn stop(mut self) {
        let pid = self.pid;
        if alive(pid) && is_supervisor(pid) {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if let Some(c) = self.child.as_mut() {
                    if matches!(c.try_wait(), Ok(Some(_))) {
                        break;
                    }
                } else if !alive(pid) {
                    break;
                }
                if Instant::now() > deadline {
                    warn!(pid, "orca-supervisor did not stop within 10 s: killing it");
                    let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
                    if let Some(c) = self.child.as_mut() {
                        let _ = c.wait();
                    }
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            info!(pid, "stopped orca-supervisor");
        }
        let _ = std::fs::remove_file(&self.pidfile);
    }

    /// Leaves the supervisor running (live-restore).
    pub fn detach(self) {
        info!(pid = self.pid, "live-restore: orca-supervisor left running");
    }
}
