//! How orca-runtime puts a container's init into its cgroup (issue #4 fast path): without a
//! new user namespace the clone lands in the cgroup2 directory (`clone3(CLONE_INTO_CGROUP)`)
//! and the child joins each v1 directory itself through `tasks`; with one, the runtime writes
//! the pid to every `cgroup.procs`. Either way, once `create` returns, the init must be in the
//! container's cgroup in every mounted hierarchy, and `delete` must leave no cgroup behind.

use std::path::{Path, PathBuf};

use orca_integration::*;

/// hierarchy-id:controllers:path lines of /proc/<pid>/cgroup, as (controllers, path).
fn cgroups_of(pid: i32) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .unwrap_or_else(|e| panic!("cannot read /proc/{pid}/cgroup: {e}"));
    text.lines()
        .filter_map(|l| {
            let mut it = l.splitn(3, ':');
            let _id = it.next()?;
            Some((it.next()?.to_string(), it.next()?.to_string()))
        })
        .collect()
}

/// The mount point of a hierarchy line's controllers ("" = cgroup2).
fn mount_dir(controllers: &str) -> Option<PathBuf> {
    if controllers.is_empty() {
        for p in ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"] {
            if Path::new(p).join("cgroup.controllers").exists() {
                return Some(PathBuf::from(p));
            }
        }
        return None;
    }
    let name = controllers.trim_start_matches("name=");
    let dir = Path::new("/sys/fs/cgroup").join(name);
    if dir.exists() {
        return Some(dir);
    }
    // Co-mounted controllers ("cpu,cpuacct") may only be reachable through one of them.
    controllers
        .split(',')
        .map(|c| Path::new("/sys/fs/cgroup").join(c))
        .find(|d| d.exists())
}

#[track_caller]
fn check_init_in_every_hierarchy(userns: bool) {
    require_root();
    let rt = Runtime::orca();
    let mut b = Bundle::busybox(&["sleep", "1000"]);
    if userns {
        let cfg = b.config_mut();
        cfg["linux"]["namespaces"]
            .as_array_mut()
            .expect("namespaces array")
            .push(serde_json::json!({"type": "user"}));
        cfg["linux"]["uidMappings"] =
            serde_json::json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
        cfg["linux"]["gidMappings"] =
            serde_json::json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
        b.save();
    }
    let id = unique_name(if userns { "cgj-userns" } else { "cgj" });
    let want = format!("/{}", b.cgroups_path().trim_start_matches('/'));
    let o = rt.run(&["create", "-b", b.path_str(), &id]);
    assert_success(&o, &format!("orca-runtime create {id}"));
    let pid = pid_of(&rt, &id);
    let lines = cgroups_of(pid);
    assert!(!lines.is_empty(), "no cgroup lines for {pid}");
    let mut checked = Vec::new();
    for (controllers, path) in &lines {
        let Some(mount) = mount_dir(controllers) else {
            continue;
        };
        // Hierarchies the runtime does not manage (e.g. misc, rdma) keep the runtime's cgroup.
        if !mount.join(want.trim_start_matches('/')).exists() {
            continue;
        }
        // Whatever parent the host gives (memory may be nested), the leaf is the container's.
        assert!(
            path.ends_with(&want),
            "init {pid} is in {path:?} for {controllers:?}, want …{want}; all: {lines:?}"
        );
        checked.push(controllers.clone());
    }
    for must in ["memory", "pids", "freezer", "devices"] {
        if Path::new("/sys/fs/cgroup").join(must).exists() {
            assert!(
                checked.iter().any(|c| c.split(',').any(|x| x == must)),
                "{must} not checked: {lines:?}"
            );
        }
    }
    if Path::new("/sys/fs/cgroup/unified/cgroup.controllers").exists() {
        assert!(
            checked.iter().any(|c| c.is_empty()),
            "cgroup2 (unified) hierarchy not checked: {lines:?}"
        );
    }
    let o = rt.run(&["delete", "-f", &id]);
    assert_success(&o, &format!("orca-runtime delete -f {id}"));
    for (controllers, _) in &lines {
        if let Some(mount) = mount_dir(controllers) {
            let dir = mount.join(want.trim_start_matches('/'));
            assert!(!dir.exists(), "{} left behind", dir.display());
        }
    }
}

#[test]
fn init_joins_every_hierarchy_without_cgroup_procs() {
    check_init_in_every_hierarchy(false);
}

#[test]
fn init_joins_every_hierarchy_with_a_user_namespace() {
    check_init_in_every_hierarchy(true);
}
