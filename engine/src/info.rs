//! GET /version and GET /info, with figures read from the host.

use serde_json::{json, Value};

use crate::api::{API_VERSION, MIN_API_VERSION};
use crate::Engine;

fn kernel_version() -> String {
    nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn host_name() -> String {
    nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn os_release(key: &str) -> String {
    std::fs::read_to_string("/etc/os-release")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix(&format!("{key}="))
                .map(|v| v.trim_matches('"').to_string())
        })
        .unwrap_or_default()
}

fn mem_total() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("MemTotal:")
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

fn cgroup_version() -> &'static str {
    // cgroup2 mounted at /sys/fs/cgroup means unified (v2); else v1/hybrid.
    match nix::sys::statfs::statfs("/sys/fs/cgroup") {
        Ok(s) if s.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC => "2",
        _ => "1",
    }
}

fn go_arch() -> &'static str {
    crate::images::platform_arch()
}

/// GET /version.
pub async fn version(e: &Engine) -> Value {
    let (cv, crev) = e
        .ctrd
        .server_version()
        .await
        .unwrap_or_else(|err| (format!("unavailable: {err}"), String::new()));
    let v = env!("CARGO_PKG_VERSION");
    json!({
        "Platform": {"Name": "Orca Engine"},
        "Components": [
            {"Name": "Engine", "Version": v, "Details": {
                "ApiVersion": API_VERSION, "Arch": go_arch(), "BuildTime": "",
                "Experimental": "false", "GitCommit": "", "GoVersion": "rust",
                "KernelVersion": kernel_version(), "MinAPIVersion": MIN_API_VERSION, "Os": "linux"}},
            {"Name": "containerd", "Version": cv, "Details": {"GitCommit": crev}},
        ],
        "Version": v,
        "ApiVersion": API_VERSION,
        "MinAPIVersion": MIN_API_VERSION,
        "GitCommit": "",
        "GoVersion": "rust",
        "Os": "linux",
        "Arch": go_arch(),
        "KernelVersion": kernel_version(),
        "BuildTime": "",
    })
}

/// GET /info.
pub async fn info(e: &Engine) -> Value {
    let (total, running, stopped) = e.containers.counts();
    let images = e.images.all().await.map(|v| {
        let mut ids: Vec<String> = v.into_iter().map(|i| i.config_digest).collect();
        ids.sort();
        ids.dedup();
        ids.len()
    });
    let (cv, crev) = e.ctrd.server_version().await.unwrap_or_default();
    let cg = cgroup_version();
    let runtime = e.cfg.runtime.clone();
    json!({
        "ID": e.id,
        "Containers": total,
        "ContainersRunning": running,
        "ContainersPaused": 0,
        "ContainersStopped": stopped,
        "Images": images.unwrap_or(0),
        "Driver": e.cfg.snapshotter,
        "DriverStatus": [["driver-type", "io.containerd.snapshotter.v1"]],
        "Plugins": {"Volume": [], "Network": [], "Authorization": null, "Log": ["json-file"]},
        "MemoryLimit": true,
        "SwapLimit": false,
        "CpuCfsPeriod": true,
        "CpuCfsQuota": true,
        "CPUShares": true,
        "CPUSet": true,
        "PidsLimit": true,
        "IPv4Forwarding": false,
        "BridgeNfIptables": false,
        "BridgeNfIp6tables": false,
        "Debug": false,
        "NFd": std::fs::read_dir("/proc/self/fd").map(|d| d.count()).unwrap_or(0),
        "OomKillDisable": false,
        "NGoroutines": 0,
        "SystemTime": crate::util::now(),
        "LoggingDriver": "json-file",
        "CgroupDriver": "cgroupfs",
        "CgroupVersion": cg,
        "NEventsListener": 0,
        "KernelVersion": kernel_version(),
        "OperatingSystem": os_release("PRETTY_NAME"),
        "OSVersion": os_release("VERSION_ID"),
        "OSType": "linux",
        "Architecture": std::env::consts::ARCH,
        "IndexServerAddress": "https://index.docker.io/v1/",
        "RegistryConfig": {
            "AllowNondistributableArtifactsCIDRs": null,
            "AllowNondistributableArtifactsHostnames": null,
            "InsecureRegistryCIDRs": ["127.0.0.0/8", "::1/128"],
            "IndexConfigs": {},
            "Mirrors": e.cfg.registry_mirrors,
        },
        "NCPU": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "MemTotal": mem_total(),
        "GenericResources": null,
        "DockerRootDir": e.cfg.data_root.display().to_string(),
        "HttpProxy": "",
        "HttpsProxy": "",
        "NoProxy": "",
        "Name": host_name(),
        "Labels": [],
        "ExperimentalBuild": false,
        "ServerVersion": env!("CARGO_PKG_VERSION"),
        "Runtimes": {runtime.clone(): {"path": runtime.clone()}},
        "DefaultRuntime": runtime,
        "Swarm": {"NodeID": "", "NodeAddr": "", "LocalNodeState": "inactive", "ControlAvailable": false, "Error": "", "RemoteManagers": null},
        "LiveRestoreEnabled": e.cfg.live_restore,
        "Isolation": "",
        "InitBinary": "",
        "ContainerdCommit": {"ID": crev, "Expected": crev},
        "RuncCommit": {"ID": "", "Expected": ""},
        "InitCommit": {"ID": "", "Expected": ""},
        // Every non-privileged container gets Docker's default profile.
        "SecurityOptions": ["name=seccomp,profile=builtin"],
        "Warnings": [
            format!(
                "orcad on containerd {cv} (namespace {:?}): containers get a loopback-only network namespace (no bridge networking yet)",
                e.ctrd.namespace()
            ),
        ],
    })
}
