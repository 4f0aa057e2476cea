//! Parsing `/proc/<pid>/mountinfo` and `/proc/<pid>/cgroup`, and computing where a container's
//! cgroup directories go. Everything takes text so it can be tested with sample contents.

use super::{CgroupError, CgroupMode, CgroupPaths, CGROUP_ROOT, HYBRID_UNIFIED_ROOT, UNIFIED_KEY};
use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

/// One line of mountinfo, reduced to what cgroup code needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    /// The root of the mount within its filesystem (4th field), e.g. "/" or "/docker/abc".
    pub root: String,
    pub mount_point: PathBuf,
    pub fstype: String,
    pub super_options: String,
    /// Optional fields such as `shared:1` or `master:2` (propagation).
    pub optional: Vec<String>,
}

/// Undo the octal escapes (`\040` for a space, ...) the kernel uses in mountinfo.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = u32::from(b[i + 1] - b'0') * 64
                + u32::from(b[i + 2] - b'0') * 8
                + u32::from(b[i + 3] - b'0');
            out.push((v & 0xff) as u8);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parse mountinfo text; malformed lines are skipped.
pub fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    let mut out = Vec::new();
    for line in text.lines() {
        let Some((pre, post)) = line.split_once(" - ") else {
            continue;
        };
        let pre: Vec<&str> = pre.split_whitespace().collect();
        let post: Vec<&str> = post.split_whitespace().collect();
        if pre.len() < 6 || post.is_empty() {
            continue;
        }
        out.push(MountEntry {
            root: unescape(pre[3]),
            mount_point: PathBuf::from(unescape(pre[4])),
            fstype: post[0].to_string(),
            super_options: post.get(2).map(|s| s.to_string()).unwrap_or_default(),
            optional: pre[6..].iter().map(|s| s.to_string()).collect(),
        });
    }
    out
}

/// One line of /proc/<pid>/cgroup: `hierarchy-id:controllers:path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcCgroup {
    pub hierarchy_id: u32,
    /// e.g. ["cpu", "cpuacct"], ["name=systemd"], or [] for the cgroup2 line.
    pub controllers: Vec<String>,
    pub path: String,
}

pub fn parse_proc_cgroup(text: &str) -> Vec<ProcCgroup> {
    let mut out = Vec::new();
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(id), Some(ctrls), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        let Ok(hierarchy_id) = id.trim().parse::<u32>() else {
            continue;
        };
        let controllers = ctrls
            .split(',')
            .filter(|c| !c.is_empty())
            .map(str::to_string)
            .collect();
        out.push(ProcCgroup {
            hierarchy_id,
            controllers,
            path: path.to_string(),
        });
    }
    out
}

const KNOWN_V1_CONTROLLERS: &[&str] = &[
    "cpu",
    "cpuacct",
    "cpuset",
    "memory",
    "devices",
    "freezer",
    "net_cls",
    "net_prio",
    "blkio",
    "perf_event",
    "hugetlb",
    "pids",
    "rdma",
    "misc",
    "debug",
];

/// A mounted cgroup v1 hierarchy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct V1Hierarchy {
    /// Controllers bound to it, as in /proc/self/cgroup ("cpu", "cpuacct", "name=systemd").
    pub controllers: Vec<String>,
    pub mount_point: PathBuf,
    pub root: String,
}

/// Every v1 hierarchy in mountinfo (the first mount of each wins if it is mounted twice).
pub fn v1_hierarchies(mounts: &[MountEntry]) -> Vec<V1Hierarchy> {
    let mut out: Vec<V1Hierarchy> = Vec::new();
    for m in mounts.iter().filter(|m| m.fstype == "cgroup") {
        let mut controllers: Vec<String> = m
            .super_options
            .split(',')
            .filter(|o| KNOWN_V1_CONTROLLERS.contains(o) || o.starts_with("name="))
            .map(str::to_string)
            .collect();
        if controllers.is_empty() {
            continue;
        }
        controllers.sort();
        if out.iter().any(|h| h.controllers == controllers) {
            continue;
        }
        out.push(V1Hierarchy {
            controllers,
            mount_point: m.mount_point.clone(),
            root: m.root.clone(),
        });
    }
    out
}

/// The cgroup2 mount to use: the one at `preferred` if present, else the first one.
pub fn v2_mount<'a>(mounts: &'a [MountEntry], preferred: &Path) -> Option<&'a MountEntry> {
    let mut v2 = mounts.iter().filter(|m| m.fstype == "cgroup2");
    mounts
        .iter()
        .find(|m| m.fstype == "cgroup2" && m.mount_point == preferred)
        .or_else(|| v2.next())
}

/// The key a v1 controller is stored under in [`CgroupPaths`] ("name=systemd" -> "systemd").
pub fn controller_key(controller: &str) -> String {
    controller
        .strip_prefix("name=")
        .unwrap_or(controller)
        .to_string()
}

/// Normalise the container's cgroup path: whether it is absolute, and its components
/// (no `..`, no empty result).
fn inner_path(cgroups_path: Option<&Path>, id: &str) -> Result<(bool, PathBuf), CgroupError> {
    let raw: PathBuf = match cgroups_path {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from(id),
    };
    let invalid = |reason: &str| CgroupError::InvalidPath {
        path: raw.display().to_string(),
        reason: reason.to_string(),
    };
    let mut rel = PathBuf::new();
    let mut absolute = false;
    for c in raw.components() {
        match c {
            Component::RootDir => absolute = true,
            Component::CurDir => {}
            Component::Normal(n) => rel.push(n),
            Component::ParentDir => return Err(invalid("\"..\" components are not allowed")),
            Component::Prefix(_) => return Err(invalid("unexpected path prefix")),
        }
    }
    if rel.as_os_str().is_empty() {
        return Err(invalid(
            "the path must name a cgroup below the hierarchy root, not the root itself",
        ));
    }
    Ok((absolute, rel))
}

/// `own` (a path from /proc/self/cgroup) made relative to the mount's root, so it can be
/// appended to the mount point.
fn relative_to_root(own: &str, root: &str) -> PathBuf {
    let own_p = Path::new(own);
    match own_p.strip_prefix(root) {
        Ok(rest) => rest.to_path_buf(),
        Err(_) => {
            tracing::warn!(
                own,
                root,
                "own cgroup is not below the mount root; using it as is"
            );
            own_p.strip_prefix("/").unwrap_or(own_p).to_path_buf()
        }
    }
}

/// Compute the container's directories from mountinfo and /proc/self/cgroup contents.
pub fn compute_paths(
    mode: CgroupMode,
    mountinfo: &str,
    proc_cgroup: &str,
    cgroups_path: Option<&Path>,
    id: &str,
) -> Result<CgroupPaths, CgroupError> {
    let (absolute, inner) = inner_path(cgroups_path, id)?;
    let mounts = parse_mountinfo(mountinfo);
    let own = parse_proc_cgroup(proc_cgroup);
    let mut paths = BTreeMap::new();

    let place = |mount_point: &Path, root: &str, own_path: Option<&str>| -> PathBuf {
        if absolute {
            return mount_point.join(&inner);
        }
        let parent = match own_path {
            Some(p) => mount_point.join(relative_to_root(p, root)),
            None => mount_point.to_path_buf(),
        };
        parent.join(&inner)
    };

    if mode != CgroupMode::V2 {
        for h in v1_hierarchies(&mounts) {
            let own_path = own
                .iter()
                .find(|e| {
                    e.hierarchy_id != 0 && e.controllers.iter().any(|c| h.controllers.contains(c))
                })
                .map(|e| e.path.as_str());
            let dir = place(&h.mount_point, &h.root, own_path);
            for c in &h.controllers {
                paths.insert(controller_key(c), dir.clone());
            }
        }
        if paths.is_empty() {
            return Err(CgroupError::Unsupported(
                "no cgroup v1 hierarchies are mounted".into(),
            ));
        }
    }
    if mode != CgroupMode::V1 {
        let preferred = if mode == CgroupMode::V2 {
            CGROUP_ROOT
        } else {
            HYBRID_UNIFIED_ROOT
        };
        let m = v2_mount(&mounts, Path::new(preferred))
            .ok_or_else(|| CgroupError::Unsupported("no cgroup2 filesystem is mounted".into()))?;
        let own_path = own
            .iter()
            .find(|e| e.hierarchy_id == 0 && e.controllers.is_empty())
            .map(|e| e.path.as_str());
        paths.insert(
            UNIFIED_KEY.to_string(),
            place(&m.mount_point, &m.root, own_path),
        );
    }
    Ok(CgroupPaths { mode, paths })
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID_MOUNTINFO: &str = "\
22 1 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:5 - proc proc rw
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
36 31 0:33 / /sys/fs/cgroup/devices rw,relatime - cgroup cgroup rw,devices
37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
38 31 0:35 / /sys/fs/cgroup/blkio rw,relatime - cgroup cgroup rw,blkio
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    const HYBRID_SELF: &str = "\
9:name=systemd:/
8:pids:/
7:blkio:/
6:freezer:/
5:devices:/
4:memory:/process_api/cbfacf3ddc79da2b87e2c224ecae756b
3:cpuset:/
2:cpuacct:/
1:cpu:/
0::/
";

    #[test]
    fn parses_mountinfo() {
        let m = parse_mountinfo(HYBRID_MOUNTINFO);
        assert_eq!(m.len(), 12);
        assert_eq!(m[2].mount_point, PathBuf::from("/sys/fs/cgroup/cpu"));
        assert_eq!(m[2].fstype, "cgroup");
        assert_eq!(m[2].super_options, "rw,cpu");
        let h = v1_hierarchies(&m);
        assert_eq!(h.len(), 9);
        assert!(h
            .iter()
            .any(|h| h.controllers == vec!["name=systemd".to_string()]));
    }

    #[test]
    fn unescapes_mount_points() {
        let m =
            parse_mountinfo("50 31 0:40 / /mnt/my\\040cgroup rw - cgroup cgroup rw,cpu,cpuacct\n");
        assert_eq!(m[0].mount_point, PathBuf::from("/mnt/my cgroup"));
        let h = v1_hierarchies(&m);
        assert_eq!(h[0].controllers, vec!["cpu", "cpuacct"]);
    }

    #[test]
    fn parses_proc_cgroup() {
        let c = parse_proc_cgroup(HYBRID_SELF);
        assert_eq!(c.len(), 10);
        assert_eq!(c[0].controllers, vec!["name=systemd"]);
        assert_eq!(c[5].path, "/process_api/cbfacf3ddc79da2b87e2c224ecae756b");
        assert_eq!(c[9].hierarchy_id, 0);
        assert!(c[9].controllers.is_empty());
        // Paths may contain ':'.
        let c = parse_proc_cgroup("0::/a:b\n");
        assert_eq!(c[0].path, "/a:b");
    }

    #[test]
    fn hybrid_absolute_path() {
        let p = compute_paths(
            CgroupMode::Hybrid,
            HYBRID_MOUNTINFO,
            HYBRID_SELF,
            Some(Path::new("/orca/c1")),
            "c1",
        )
        .unwrap();
        assert_eq!(
            p.paths["memory"],
            PathBuf::from("/sys/fs/cgroup/memory/orca/c1")
        );
        assert_eq!(p.paths["cpu"], PathBuf::from("/sys/fs/cgroup/cpu/orca/c1"));
        assert_eq!(
            p.paths["cpuacct"],
            PathBuf::from("/sys/fs/cgroup/cpuacct/orca/c1")
        );
        assert_eq!(
            p.paths["systemd"],
            PathBuf::from("/sys/fs/cgroup/systemd/orca/c1")
        );
        assert_eq!(
            p.paths["unified"],
            PathBuf::from("/sys/fs/cgroup/unified/orca/c1")
        );
        assert_eq!(p.paths.len(), 10);
    }

    #[test]
    fn hybrid_relative_path_uses_own_cgroup() {
        let p = compute_paths(
            CgroupMode::Hybrid,
            HYBRID_MOUNTINFO,
            HYBRID_SELF,
            Some(Path::new("orca/c1")),
            "c1",
        )
        .unwrap();
        assert_eq!(
            p.paths["memory"],
            PathBuf::from(
                "/sys/fs/cgroup/memory/process_api/cbfacf3ddc79da2b87e2c224ecae756b/orca/c1"
            )
        );
        assert_eq!(
            p.paths["pids"],
            PathBuf::from("/sys/fs/cgroup/pids/orca/c1")
        );
        assert_eq!(
            p.paths["unified"],
            PathBuf::from("/sys/fs/cgroup/unified/orca/c1")
        );
    }

    #[test]
    fn none_means_container_id() {
        let p = compute_paths(CgroupMode::V1, HYBRID_MOUNTINFO, HYBRID_SELF, None, "abc").unwrap();
        assert_eq!(
            p.paths["memory"],
            PathBuf::from("/sys/fs/cgroup/memory/process_api/cbfacf3ddc79da2b87e2c224ecae756b/abc")
        );
        assert_eq!(
            p.paths["freezer"],
            PathBuf::from("/sys/fs/cgroup/freezer/abc")
        );
        assert!(!p.paths.contains_key("unified"));
    }

    #[test]
    fn comounted_and_mount_root() {
        // Inside a container: the hierarchy is mounted with root /docker/x, and
        // /proc/self/cgroup shows the full path.
        let mi = "\
30 25 0:26 /docker/x /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct
31 25 0:27 /docker/x /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
";
        let own = "3:cpu,cpuacct:/docker/x/sub\n2:memory:/docker/x\n";
        let p = compute_paths(CgroupMode::V1, mi, own, Some(Path::new("c")), "id").unwrap();
        assert_eq!(
            p.paths["cpu"],
            PathBuf::from("/sys/fs/cgroup/cpu,cpuacct/sub/c")
        );
        assert_eq!(p.paths["cpuacct"], p.paths["cpu"]);
        assert_eq!(p.paths["memory"], PathBuf::from("/sys/fs/cgroup/memory/c"));
    }

    #[test]
    fn v2_paths() {
        let mi = "30 25 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate\n";
        let own = "0::/user.slice/session-1.scope\n";
        let p = compute_paths(CgroupMode::V2, mi, own, Some(Path::new("/a/b")), "id").unwrap();
        assert_eq!(p.paths.len(), 1);
        assert_eq!(p.paths["unified"], PathBuf::from("/sys/fs/cgroup/a/b"));
        let p = compute_paths(CgroupMode::V2, mi, own, None, "id").unwrap();
        assert_eq!(
            p.paths["unified"],
            PathBuf::from("/sys/fs/cgroup/user.slice/session-1.scope/id")
        );
    }

    #[test]
    fn rejects_bad_paths() {
        for bad in ["/a/../b", "../x", "/", ""] {
            let r = compute_paths(
                CgroupMode::V1,
                HYBRID_MOUNTINFO,
                HYBRID_SELF,
                Some(Path::new(bad)),
                if bad.is_empty() { "" } else { "id" },
            );
            assert!(
                matches!(r, Err(CgroupError::InvalidPath { .. })),
                "{bad}: {r:?}"
            );
        }
        let r = compute_paths(CgroupMode::V1, HYBRID_MOUNTINFO, HYBRID_SELF, None, "..");
        assert!(r.is_err());
    }
}
