//! A Debian containerd with the busybox image pulled from a local registry, driven by `ctr`:
//! the common ground of the tests that judge our runtime and shim by containerd.

use std::process::{Command, Output};
use std::time::Duration;

use crate::containerd::{Containerd, TEST_NAMESPACE};
use crate::process::run_with_limit;
use crate::registry::Registry;
use crate::util::{require_root, wait_until};

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

pub struct CtrEnv {
    pub ctrd: Containerd,
    pub registry: Registry,
    /// The pulled image reference (`127.0.0.1:PORT/library/busybox:latest`).
    pub image: String,
}

impl CtrEnv {
    /// Starts a registry and containerd and pulls the busybox image with `ctr`.
    #[track_caller]
    pub fn start() -> CtrEnv {
        require_root();
        let (registry, image) = Registry::with_busybox();
        let ctrd = Containerd::start();
        let env = CtrEnv {
            ctrd,
            registry,
            image,
        };
        let out = env.ctr(&["images", "pull", "--plain-http", &env.image]);
        env.check(&out, "ctr images pull --plain-http");
        env
    }

    /// `ctr -a SOCK -n orca-test` with proxies disabled (the registry is on 127.0.0.1).
    pub fn ctr_cmd(&self) -> Command {
        let mut c = self.ctrd.ctr_cmd_ns(TEST_NAMESPACE);
        for v in [
            "HTTP_PROXY",
            "HTTPS_PROXY",
            "ALL_PROXY",
            "http_proxy",
            "https_proxy",
            "all_proxy",
        ] {
            c.env_remove(v);
        }
        c
    }

    /// Runs `cmd` (killed and failing after 60 s).
    #[track_caller]
    pub fn output(&self, cmd: &mut Command) -> Output {
        run_with_limit(cmd, Duration::from_secs(60)).unwrap_or_else(|e| panic!("{cmd:?}: {e}"))
    }

    #[track_caller]
    pub fn ctr(&self, args: &[&str]) -> Output {
        let mut c = self.ctr_cmd();
        c.args(args);
        self.output(&mut c)
    }

    /// containerd's log tail and every bundle's log.json, for failure messages.
    pub fn diagnostics(&self) -> String {
        let log = self.ctrd.log();
        let tail: Vec<&str> = log.lines().rev().take(60).collect();
        let mut s = String::from("--- containerd log (tail) ---\n");
        for l in tail.into_iter().rev() {
            s.push_str(l);
            s.push('\n');
        }
        let tasks = self
            .ctrd
            .dir()
            .join("state/io.containerd.runtime.v2.task")
            .join(TEST_NAMESPACE);
        if let Ok(rd) = std::fs::read_dir(&tasks) {
            for e in rd.flatten() {
                let p = e.path().join("log.json");
                if let Ok(t) = std::fs::read_to_string(&p) {
                    s.push_str(&format!("--- {} ---\n{t}\n", p.display()));
                }
            }
        }
        s
    }

    #[track_caller]
    pub fn check(&self, out: &Output, what: &str) {
        if !out.status.success() {
            panic!(
                "{what} failed ({}):\n--- stdout ---\n{}\n--- stderr ---\n{}\n{}",
                out.status,
                text(&out.stdout),
                text(&out.stderr),
                self.diagnostics()
            );
        }
    }

    /// The fields of `id`'s line in `ctr task ls` (TASK PID STATUS), if listed.
    pub fn task_line(&self, id: &str) -> Option<Vec<String>> {
        let out = self.ctr(&["task", "ls"]);
        text(&out.stdout).lines().find_map(|l| {
            let f: Vec<String> = l.split_whitespace().map(str::to_string).collect();
            (f.first().map(String::as_str) == Some(id)).then_some(f)
        })
    }

    pub fn task_status(&self, id: &str) -> Option<String> {
        self.task_line(id).and_then(|f| f.last().cloned())
    }

    pub fn task_pid(&self, id: &str) -> Option<i32> {
        self.task_line(id)
            .and_then(|f| f.get(1).and_then(|p| p.parse().ok()))
    }

    #[track_caller]
    pub fn wait_status(&self, id: &str, want: &str) {
        let ok = wait_until(Duration::from_secs(15), || {
            self.task_status(id).as_deref() == Some(want)
        });
        if !ok {
            panic!(
                "task {id} did not become {want}: `ctr task ls` says {:?}\n{}",
                self.task_status(id),
                self.diagnostics()
            );
        }
    }
}
