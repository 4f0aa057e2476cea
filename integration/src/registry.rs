//! A local Docker registry (Debian's `docker-registry`, distribution 2.x) on
//! 127.0.0.1, storing into a temp dir.

use std::fs;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tempfile::TempDir;

use crate::image::write_busybox_oci_layout;
use crate::util::{
    assert_success, free_port, http_get, output_of, require_tool, terminate, wait_until,
};

/// A running `docker-registry serve` on 127.0.0.1:<free port>; dropping it
/// kills it and removes its storage.
pub struct Registry {
    child: Child,
    addr: String,
    dir: TempDir,
}

impl Registry {
    /// Starts a registry with filesystem storage under a temp dir and waits
    /// until `GET /v2/` answers 200.
    #[track_caller]
    pub fn start() -> Registry {
        let bin = require_tool("docker-registry");
        let dir = tempfile::Builder::new()
            .prefix("orca-registry-")
            .tempdir()
            .unwrap_or_else(|e| panic!("cannot create a temp dir for the registry: {e}"));
        let storage = dir.path().join("reg");
        fs::create_dir_all(&storage)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", storage.display()));

        // A port picked free may be taken by someone else before the
        // registry binds it: retry a few times with a new one.
        let mut last_err = String::new();
        for _attempt in 0..5 {
            let port = free_port();
            let addr = format!("127.0.0.1:{port}");
            let config = dir.path().join("config.yml");
            let text = format!(
                "version: 0.1\n\
                 log:\n  level: info\n  accesslog:\n    disabled: true\n\
                 storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
                 http:\n  addr: {addr}\n",
                storage.display()
            );
            fs::write(&config, text)
                .unwrap_or_else(|e| panic!("cannot write {}: {e}", config.display()));
            let log_path = dir.path().join("registry.log");
            let log = fs::File::create(&log_path)
                .unwrap_or_else(|e| panic!("cannot create {}: {e}", log_path.display()));
            let log2 = log
                .try_clone()
                .unwrap_or_else(|e| panic!("cannot dup a file descriptor: {e}"));
            let mut child = Command::new(&bin)
                .arg("serve")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(log)
                .stderr(log2)
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
            let mut exited = false;
            let ready = wait_until(Duration::from_secs(20), || {
                if let Ok(Some(_)) = child.try_wait() {
                    exited = true;
                    return true;
                }
                matches!(http_get(&addr, "/v2/"), Ok((200, _)))
            });
            if ready && !exited {
                return Registry { child, addr, dir };
            }
            terminate(&mut child, Duration::from_secs(2));
            last_err = format!(
                "docker-registry on {addr} {}; its log:\n{}",
                if exited {
                    "exited"
                } else {
                    "did not answer GET /v2/ with 200 within 20 s"
                },
                fs::read_to_string(&log_path).unwrap_or_default()
            );
        }
        panic!("cannot start the registry: {last_err}");
    }

    /// Starts a registry and pushes the busybox image to it as
    /// `library/busybox:latest`; returns the registry and the image reference
    /// ("127.0.0.1:PORT/library/busybox:latest").
    #[track_caller]
    pub fn with_busybox() -> (Registry, String) {
        let reg = Registry::start();
        let layout = tempfile::Builder::new()
            .prefix("orca-oci-")
            .tempdir()
            .unwrap_or_else(|e| panic!("cannot create a temp dir for an OCI layout: {e}"));
        write_busybox_oci_layout(layout.path(), "latest")
            .unwrap_or_else(|e| panic!("cannot write the busybox OCI layout: {e}"));
        reg.push_oci_layout(layout.path(), "latest", "library/busybox:latest");
        let r = format!("{}/library/busybox:latest", reg.addr());
        (reg, r)
    }

    /// "127.0.0.1:PORT".
    pub fn addr(&self) -> String {
        self.addr.clone()
    }

    /// The registry's storage root.
    pub fn storage_dir(&self) -> std::path::PathBuf {
        self.dir.path().join("reg")
    }

    /// The registry's log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// Pushes `oci:LAYOUT:TAG` to `docker://ADDR/REPO_REF` with
    /// `skopeo copy --dest-tls-verify=false` (plain HTTP).
    #[track_caller]
    pub fn push_oci_layout(&self, layout: &Path, tag: &str, repo_ref: &str) {
        let skopeo = require_tool("skopeo");
        let src = format!("oci:{}:{tag}", layout.display());
        let dst = format!("docker://{}/{repo_ref}", self.addr);
        let out = output_of(
            Command::new(skopeo)
                .args(["--insecure-policy", "copy", "--dest-tls-verify=false"])
                .arg(&src)
                .arg(&dst)
                .stdin(Stdio::null()),
        );
        if !out.status.success() {
            panic!(
                "skopeo copy {src} {dst} failed: {}\n--- stdout ---\n{}\n--- stderr ---\n{}\n--- registry log ---\n{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                self.log()
            );
        }
        assert_success(&out, "skopeo copy");
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        terminate(&mut self.child, Duration::from_secs(3));
    }
}
