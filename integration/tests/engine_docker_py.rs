//! docker-py (PyPI `docker`) against orcad on Debian's containerd: the second client of the
//! Docker API besides the docker CLI.

use std::process::Command;
use std::time::Duration;

use orca_integration::engine_support::{run_with_limit, Orcad};
use orca_integration::*;

#[test]
fn docker_py_runs_lists_logs_execs_and_removes() {
    require_root();
    let py = Command::new("python3")
        .args(["-c", "import docker"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        py,
        "docker-py missing: `pip install docker` (scripts/deps.sh installs it)"
    );
    let (registry, image) = Registry::with_busybox();
    let containerd = Containerd::start();
    let orcad = Orcad::start(&containerd);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/py/docker_py_smoke.py");
    let mut cmd = Command::new("python3");
    cmd.arg(script).arg(orcad.socket()).arg(&image);
    let out = run_with_limit(&mut cmd, Duration::from_secs(180)).expect("run docker-py");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("all checks passed"),
        "docker-py:\n{stdout}\n{}\n--- orcad log ---\n{}",
        String::from_utf8_lossy(&out.stderr),
        orcad.log()
    );
    drop(orcad);
    drop(containerd);
    drop(registry);
}
