//! The container's filesystem view: mounts from the spec, /dev, pivot_root, read-only and
//! masked paths. Runs inside the container's new mount namespace, before the process is
//! executed.
//!
//! Every mount destination is resolved with [`secure_join`], which follows symlinks as if the
//! rootfs were `/`, so a symlink in an image can never point a mount outside the rootfs.

use crate::cgroups::paths::parse_mountinfo;
use crate::cgroups::{CgroupMode, CgroupPaths};
use crate::error::{Context, Result, RuntimeError};
use nix::fcntl::{open, OFlag};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::stat::{makedev, mknod, Mode, SFlag};
use nix::unistd::{chdir, chown, fchdir, pivot_root, Gid, Uid};
use oci_spec::runtime::{LinuxDevice, LinuxDeviceType, Mount, Spec};
use std::os::unix::fs::symlink;
use std::path::{Component, Path, PathBuf};

const MAX_SYMLINKS: usize = 255;

/// Join `unsafe_path` to `root`, resolving every symlink as if `root` were the filesystem root.
/// Components that do not exist yet are appended as they are. The result always lies inside
/// `root`.
pub fn secure_join(root: &Path, unsafe_path: &Path) -> Result<PathBuf> {
    let mut resolved = PathBuf::new(); // relative to root
    let mut pending: Vec<std::ffi::OsString> = unsafe_path
        .components()
        .rev()
        .filter_map(|c| match c {
            Component::Normal(s) => Some(s.to_os_string()),
            Component::ParentDir => Some("..".into()),
            _ => None,
        })
        .collect();
    let mut links = 0;
    while let Some(comp) = pending.pop() {
        if comp == ".." {
            resolved.pop();
            continue;
        }
        let candidate = resolved.join(&comp);
        let full = root.join(&candidate);
        match std::fs::symlink_metadata(&full) {
            Ok(md) if md.file_type().is_symlink() => {
                links += 1;
                if links > MAX_SYMLINKS {
                    return Err(RuntimeError::other(format!(
                        "too many symlinks resolving {unsafe_path:?} in {root:?}"
                    )));
                }
                let target = std::fs::read_link(&full).ctx(|| format!("readlink {full:?}"))?;
                if target.is_absolute() {
                    resolved = PathBuf::new();
                }
                for c in target.components().rev() {
                    match c {
                        Component::Normal(s) => pending.push(s.to_os_string()),
                        Component::ParentDir => pending.push("..".into()),
                        _ => {}
                    }
                }
            }
            _ => resolved = candidate,
        }
    }
    Ok(root.join(resolved))
}

/// Mount flags and data parsed from an OCI mount's `options`.
#[derive(Debug, PartialEq)]
pub struct MountOptions {
    pub flags: MsFlags,
    /// Flags that were explicitly cleared (`rw`, `suid`, ...), for bind remounts.
    pub cleared: MsFlags,
    pub propagation: Vec<MsFlags>,
    pub data: Vec<String>,
    pub recursive_bind: bool,
}

impl Default for MountOptions {
    fn default() -> Self {
        MountOptions {
            flags: MsFlags::empty(),
            cleared: MsFlags::empty(),
            propagation: Vec::new(),
            data: Vec::new(),
            recursive_bind: false,
        }
    }
}

pub fn parse_options(options: &[String]) -> Result<MountOptions> {
    let mut o = MountOptions::default();
    for opt in options {
        let (set, clear): (MsFlags, MsFlags) = match opt.as_str() {
            "defaults" => (MsFlags::empty(), MsFlags::empty()),
            "ro" => (MsFlags::MS_RDONLY, MsFlags::empty()),
            "rw" => (MsFlags::empty(), MsFlags::MS_RDONLY),
            "suid" => (MsFlags::empty(), MsFlags::MS_NOSUID),
            "nosuid" => (MsFlags::MS_NOSUID, MsFlags::empty()),
            "dev" => (MsFlags::empty(), MsFlags::MS_NODEV),
            "nodev" => (MsFlags::MS_NODEV, MsFlags::empty()),
            "exec" => (MsFlags::empty(), MsFlags::MS_NOEXEC),
            "noexec" => (MsFlags::MS_NOEXEC, MsFlags::empty()),
            "sync" => (MsFlags::MS_SYNCHRONOUS, MsFlags::empty()),
            "async" => (MsFlags::empty(), MsFlags::MS_SYNCHRONOUS),
            "dirsync" => (MsFlags::MS_DIRSYNC, MsFlags::empty()),
            "remount" => (MsFlags::MS_REMOUNT, MsFlags::empty()),
            "mand" => (MsFlags::MS_MANDLOCK, MsFlags::empty()),
            "nomand" => (MsFlags::empty(), MsFlags::MS_MANDLOCK),
            "atime" => (MsFlags::empty(), MsFlags::MS_NOATIME),
            "noatime" => (MsFlags::MS_NOATIME, MsFlags::empty()),
            "diratime" => (MsFlags::empty(), MsFlags::MS_NODIRATIME),
            "nodiratime" => (MsFlags::MS_NODIRATIME, MsFlags::empty()),
            "relatime" => (MsFlags::MS_RELATIME, MsFlags::empty()),
            "norelatime" => (MsFlags::empty(), MsFlags::MS_RELATIME),
            "strictatime" => (MsFlags::MS_STRICTATIME, MsFlags::empty()),
            "nostrictatime" => (MsFlags::empty(), MsFlags::MS_STRICTATIME),
            "bind" => (MsFlags::MS_BIND, MsFlags::empty()),
            "rbind" => {
                o.recursive_bind = true;
                (MsFlags::MS_BIND | MsFlags::MS_REC, MsFlags::empty())
            }
            "private" | "rprivate" | "shared" | "rshared" | "slave" | "rslave" | "unbindable"
            | "runbindable" => {
                o.propagation
                    .push(propagation_flag(opt).unwrap_or(MsFlags::MS_PRIVATE));
                continue;
            }
            "tmpcopyup" | "idmap" | "ridmap" => {
                return Err(RuntimeError::Config(format!(
                    "mount option {opt:?} is not supported by orca-runtime yet"
                )))
            }
            _ => {
                o.data.push(opt.clone());
                continue;
            }
        };
        o.flags |= set;
        o.flags &= !clear;
        o.cleared |= clear;
    }
    Ok(o)
}

pub fn propagation_flag(name: &str) -> Option<MsFlags> {
    Some(match name {
        "private" => MsFlags::MS_PRIVATE,
        "rprivate" => MsFlags::MS_PRIVATE | MsFlags::MS_REC,
        "shared" => MsFlags::MS_SHARED,
        "rshared" => MsFlags::MS_SHARED | MsFlags::MS_REC,
        "slave" => MsFlags::MS_SLAVE,
        "rslave" => MsFlags::MS_SLAVE | MsFlags::MS_REC,
        "unbindable" => MsFlags::MS_UNBINDABLE,
        "runbindable" => MsFlags::MS_UNBINDABLE | MsFlags::MS_REC,
        _ => return None,
    })
}

fn mkdir_all(p: &Path) -> Result<()> {
    std::fs::create_dir_all(p).ctx(|| format!("mkdir {p:?}"))
}

fn ensure_file(p: &Path) -> Result<()> {
    if let Some(parent) = p.parent() {
        mkdir_all(parent)?;
    }
    if std::fs::symlink_metadata(p).is_err() {
        std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(p)
            .ctx(|| format!("create mount target {p:?}"))?;
    }
    Ok(())
}

/// Everything `prepare` needs to know besides the spec.
pub struct RootfsContext<'a> {
    pub rootfs: &'a Path,
    pub cgroup: Option<&'a CgroupPaths>,
    pub in_user_ns: bool,
    pub cgroup_ns: bool,
}

/// Set root propagation, make the rootfs a mount point and do every spec mount plus /dev.
/// Runs in the container's mount namespace, before pivot_root.
pub fn prepare(spec: &Spec, ctx: &RootfsContext) -> Result<()> {
    let linux = spec.linux().as_ref();
    let prop = linux
        .and_then(|l| l.rootfs_propagation().as_deref())
        .filter(|s| !s.is_empty());
    let root_flag = match prop {
        Some(p) => propagation_flag(p).ok_or_else(|| {
            RuntimeError::Config(format!("field linux.rootfsPropagation: unknown mode {p:?}"))
        })?,
        None => MsFlags::MS_SLAVE | MsFlags::MS_REC,
    };
    mount(None::<&str>, "/", None::<&str>, root_flag, None::<&str>)
        .ctx(|| "set propagation of /")?;
    make_parent_mount_private(ctx.rootfs)?;
    mount(
        Some(ctx.rootfs),
        ctx.rootfs,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .ctx(|| format!("bind mount rootfs {:?}", ctx.rootfs))?;

    let mut dev_is_mounted = false;
    for m in spec.mounts().iter().flatten() {
        if m.destination() == Path::new("/dev") {
            dev_is_mounted = true;
        }
        mount_one(m, ctx)?;
    }
    if dev_is_mounted {
        create_default_devices(ctx.rootfs, ctx.in_user_ns)?;
    }
    for d in linux
        .and_then(|l| l.devices().as_ref())
        .into_iter()
        .flatten()
    {
        create_device(ctx.rootfs, d, ctx.in_user_ns)?;
    }
    if dev_is_mounted {
        dev_symlinks(ctx.rootfs)?;
    }
    Ok(())
}

/// pivot_root requires the rootfs's parent mount not to be shared.
fn make_parent_mount_private(rootfs: &Path) -> Result<()> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ctx(|| "read mountinfo")?;
    let parent = parse_mountinfo(&mountinfo)
        .into_iter()
        .filter(|m| rootfs.starts_with(&m.mount_point))
        .max_by_key(|m| m.mount_point.as_os_str().len());
    if let Some(m) = parent {
        if m.optional.iter().any(|o| o.starts_with("shared:")) {
            mount(
                None::<&str>,
                &m.mount_point,
                None::<&str>,
                MsFlags::MS_PRIVATE,
                None::<&str>,
            )
            .ctx(|| format!("make {:?} private", m.mount_point))?;
        }
    }
    Ok(())
}

fn mount_one(m: &Mount, ctx: &RootfsContext) -> Result<()> {
    let opts = parse_options(m.options().as_deref().unwrap_or(&[]))?;
    let typ = m.typ().as_deref().unwrap_or("");
    let dest = secure_join(ctx.rootfs, m.destination())?;
    let is_bind = typ == "bind" || opts.flags.contains(MsFlags::MS_BIND);
    let data = opts.data.join(",");
    let data_opt = if data.is_empty() {
        None
    } else {
        Some(data.as_str())
    };

    if is_bind {
        let src = m.source().as_ref().ok_or_else(|| {
            RuntimeError::Config(format!("bind mount to {:?} has no source", m.destination()))
        })?;
        let src_md = std::fs::metadata(src)
            .ctx(|| format!("bind mount source {src:?} for {:?}", m.destination()))?;
        if src_md.is_dir() {
            mkdir_all(&dest)?;
        } else {
            ensure_file(&dest)?;
        }
        let dest = secure_join(ctx.rootfs, m.destination())?;
        check_inside(ctx.rootfs, &dest)?;
        let bind_flags = MsFlags::MS_BIND | (opts.flags & MsFlags::MS_REC);
        mount(Some(src), &dest, None::<&str>, bind_flags, None::<&str>)
            .ctx(|| format!("bind mount {src:?} on {dest:?}"))?;
        let extra = opts.flags & !(MsFlags::MS_BIND | MsFlags::MS_REC | MsFlags::MS_REMOUNT);
        if !extra.is_empty() {
            remount_bind(&dest, extra, ctx.in_user_ns)?;
        }
    } else {
        match typ {
            "cgroup" => mount_cgroup(&dest, &opts, ctx)?,
            _ => {
                mkdir_all(&dest)?;
                check_inside(ctx.rootfs, &dest)?;
                let source = m
                    .source()
                    .as_ref()
                    .map(|p| p.as_os_str().to_os_string())
                    .unwrap_or_else(|| typ.into());
                let r = mount(
                    Some(source.as_os_str()),
                    &dest,
                    Some(typ),
                    opts.flags,
                    data_opt,
                );
                match r {
                    Err(nix::Error::EPERM) | Err(nix::Error::EBUSY)
                        if typ == "sysfs" && ctx.in_user_ns =>
                    {
                        // A user namespace without its own network namespace may not mount
                        // sysfs: fall back to a recursive read-only bind of the host's /sys.
                        mount(
                            Some("/sys"),
                            &dest,
                            None::<&str>,
                            MsFlags::MS_BIND | MsFlags::MS_REC,
                            None::<&str>,
                        )
                        .ctx(|| format!("bind /sys on {dest:?}"))?;
                        remount_bind(&dest, opts.flags, true)?;
                    }
                    Err(nix::Error::EINVAL) if typ == "mqueue" && ctx.in_user_ns => {
                        mount(
                            Some("/dev/mqueue"),
                            &dest,
                            None::<&str>,
                            MsFlags::MS_BIND,
                            None::<&str>,
                        )
                        .ctx(|| format!("bind /dev/mqueue on {dest:?}"))?;
                    }
                    other => other.ctx(|| {
                        format!(
                            "mount {typ} on {:?} (options {:?})",
                            m.destination(),
                            m.options()
                        )
                    })?,
                }
            }
        }
    }
    for p in &opts.propagation {
        mount(None::<&str>, &dest, None::<&str>, *p, None::<&str>)
            .ctx(|| format!("set propagation of {dest:?}"))?;
    }
    Ok(())
}

/// After mounting, check through /proc/self/fd that the path really is inside the rootfs (no
/// symlink swapped in between resolution and use).
fn check_inside(rootfs: &Path, dest: &Path) -> Result<()> {
    let fd = open(dest, OFlag::O_PATH | OFlag::O_CLOEXEC, Mode::empty())
        .ctx(|| format!("open {dest:?}"))?;
    let real = std::fs::read_link(format!("/proc/self/fd/{fd}"));
    let _ = nix::unistd::close(fd);
    let real = real.ctx(|| format!("resolve {dest:?}"))?;
    if !real.starts_with(rootfs) {
        return Err(RuntimeError::other(format!(
            "mount destination {dest:?} resolves to {real:?}, outside the rootfs"
        )));
    }
    Ok(())
}

/// Apply flags to a bind mount. Flags the kernel locks on mounts inherited from a more
/// privileged namespace (nosuid, nodev, noexec, ro, atime) are preserved.
fn remount_bind(dest: &Path, flags: MsFlags, in_user_ns: bool) -> Result<()> {
    let mut flags = flags;
    if in_user_ns {
        if let Ok(st) = nix::sys::statvfs::statvfs(dest) {
            use nix::sys::statvfs::FsFlags;
            let f = st.flags();
            for (vf, mf) in [
                (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
                (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
                (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
                (FsFlags::ST_RDONLY, MsFlags::MS_RDONLY),
            ] {
                if f.contains(vf) {
                    flags |= mf;
                }
            }
        }
    }
    mount(
        None::<&str>,
        dest,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | flags,
        None::<&str>,
    )
    .ctx(|| format!("remount {dest:?} with {flags:?}"))
}

/// A `cgroup` mount: on v1/hybrid a tmpfs with one bind mount per controller (the container's
/// own cgroup directory); on v2 a cgroup2 mount in a cgroup namespace, else a bind mount.
fn mount_cgroup(dest: &Path, opts: &MountOptions, ctx: &RootfsContext) -> Result<()> {
    mkdir_all(dest)?;
    let base = opts.flags & (MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC);
    let ro = opts.flags & MsFlags::MS_RDONLY;
    let Some(paths) = ctx.cgroup else {
        return Ok(());
    };
    if paths.mode == CgroupMode::V2 {
        if ctx.cgroup_ns {
            mount(
                Some("cgroup2"),
                dest,
                Some("cgroup2"),
                base | ro,
                None::<&str>,
            )
            .ctx(|| format!("mount cgroup2 on {dest:?}"))?;
        } else if let Some(p) = paths.paths.get("unified") {
            mount(Some(p), dest, None::<&str>, MsFlags::MS_BIND, None::<&str>)
                .ctx(|| format!("bind {p:?} on {dest:?}"))?;
            remount_bind(dest, base | ro, ctx.in_user_ns)?;
        }
        return Ok(());
    }
    mount(Some("tmpfs"), dest, Some("tmpfs"), base, Some("mode=755"))
        .ctx(|| format!("mount tmpfs for cgroups on {dest:?}"))?;
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    for (name, host_dir) in &paths.paths {
        if name == "unified" {
            // Hybrid host: as runc, the container sees the v1 hierarchies only (the cgroup2
            // hierarchy is still joined, just not mounted).
            continue;
        }
        // The directory name as the host mounts it ("cpu,cpuacct" for co-mounted controllers).
        let mount_name = hierarchy_dir_name(&mountinfo, host_dir).unwrap_or_else(|| name.clone());
        let target = dest.join(&mount_name);
        mkdir_all(&target)?;
        mount(
            Some(host_dir),
            &target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .ctx(|| format!("bind cgroup {host_dir:?} on {target:?}"))?;
        remount_bind(&target, base | ro, ctx.in_user_ns)?;
        if mount_name.contains(',') {
            for part in mount_name.split(',') {
                let link = dest.join(part);
                if std::fs::symlink_metadata(&link).is_err() {
                    symlink(&mount_name, &link).ctx(|| format!("symlink {link:?}"))?;
                }
            }
        }
    }
    if !ro.is_empty() {
        mount(
            None::<&str>,
            dest,
            None::<&str>,
            MsFlags::MS_REMOUNT | base | MsFlags::MS_RDONLY,
            Some("mode=755"),
        )
        .ctx(|| format!("remount {dest:?} read-only"))?;
    }
    Ok(())
}

/// For a cgroup directory on the host, the last component of its hierarchy's mount point
/// ("memory", "cpu,cpuacct", "unified", "systemd").
fn hierarchy_dir_name(mountinfo: &str, dir: &Path) -> Option<String> {
    parse_mountinfo(mountinfo)
        .into_iter()
        .filter(|m| {
            (m.fstype == "cgroup" || m.fstype == "cgroup2") && dir.starts_with(&m.mount_point)
        })
        .max_by_key(|m| m.mount_point.as_os_str().len())
        .and_then(|m| {
            m.mount_point
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
        })
}

struct DefaultDevice {
    path: &'static str,
    major: u64,
    minor: u64,
}

const DEFAULT_DEVICES: &[DefaultDevice] = &[
    DefaultDevice {
        path: "null",
        major: 1,
        minor: 3,
    },
    DefaultDevice {
        path: "zero",
        major: 1,
        minor: 5,
    },
    DefaultDevice {
        path: "full",
        major: 1,
        minor: 7,
    },
    DefaultDevice {
        path: "random",
        major: 1,
        minor: 8,
    },
    DefaultDevice {
        path: "urandom",
        major: 1,
        minor: 9,
    },
    DefaultDevice {
        path: "tty",
        major: 5,
        minor: 0,
    },
];

fn create_default_devices(rootfs: &Path, in_user_ns: bool) -> Result<()> {
    let dev = secure_join(rootfs, Path::new("/dev"))?;
    let old = nix::sys::stat::umask(Mode::empty());
    let r = (|| {
        for d in DEFAULT_DEVICES {
            let p = dev.join(d.path);
            make_node(&p, SFlag::S_IFCHR, 0o666, d.major, d.minor, in_user_ns)?;
        }
        Ok(())
    })();
    nix::sys::stat::umask(old);
    r
}

fn make_node(p: &Path, kind: SFlag, mode: u32, major: u64, minor: u64, bind: bool) -> Result<()> {
    if bind {
        // In a user namespace mknod is not allowed: bind-mount the host's node instead.
        ensure_file(p)?;
        let host = format!(
            "/dev/{}",
            p.file_name()
                .map(|n| n.to_string_lossy())
                .unwrap_or_default()
        );
        return mount(
            Some(host.as_str()),
            p,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .ctx(|| format!("bind {host} on {p:?}"));
    }
    let _ = std::fs::remove_file(p);
    mknod(
        p,
        kind,
        Mode::from_bits_truncate(mode),
        makedev(major, minor),
    )
    .ctx(|| format!("mknod {p:?}"))
}

fn create_device(rootfs: &Path, d: &LinuxDevice, in_user_ns: bool) -> Result<()> {
    let p = secure_join(rootfs, d.path())?;
    if let Some(parent) = p.parent() {
        mkdir_all(parent)?;
    }
    let kind = match d.typ() {
        LinuxDeviceType::C | LinuxDeviceType::U => SFlag::S_IFCHR,
        LinuxDeviceType::B => SFlag::S_IFBLK,
        LinuxDeviceType::P => SFlag::S_IFIFO,
        LinuxDeviceType::A => {
            return Err(RuntimeError::Config(format!(
                "device {:?}: type 'a' is only valid in cgroup rules",
                d.path()
            )))
        }
    };
    let old = nix::sys::stat::umask(Mode::empty());
    let r = make_node(
        &p,
        kind,
        d.file_mode().unwrap_or(0o666),
        d.major() as u64,
        d.minor() as u64,
        in_user_ns,
    );
    nix::sys::stat::umask(old);
    r?;
    if !in_user_ns {
        chown(
            &p,
            Some(Uid::from_raw(d.uid().unwrap_or(0))),
            Some(Gid::from_raw(d.gid().unwrap_or(0))),
        )
        .ctx(|| format!("chown {p:?}"))?;
    }
    Ok(())
}

fn dev_symlinks(rootfs: &Path) -> Result<()> {
    let dev = secure_join(rootfs, Path::new("/dev"))?;
    let mut links = vec![
        ("/proc/self/fd", "fd"),
        ("/proc/self/fd/0", "stdin"),
        ("/proc/self/fd/1", "stdout"),
        ("/proc/self/fd/2", "stderr"),
        ("pts/ptmx", "ptmx"),
    ];
    if Path::new("/proc/kcore").exists() {
        links.push(("/proc/kcore", "core"));
    }
    for (target, name) in links {
        let p = dev.join(name);
        if name == "ptmx" {
            let _ = std::fs::remove_file(&p);
        }
        match symlink(target, &p) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e).ctx(|| format!("symlink {p:?}")),
        }
    }
    Ok(())
}

/// Make the rootfs `/`: pivot_root(".", ".") and a lazy unmount of the old root (no directory
/// for the old root is ever created in the image), or, with `no_pivot`, MS_MOVE + chroot.
pub fn enter(rootfs: &Path, no_pivot: bool) -> Result<()> {
    if no_pivot {
        chdir(rootfs).ctx(|| format!("chdir {rootfs:?}"))?;
        mount(
            Some(rootfs),
            "/",
            None::<&str>,
            MsFlags::MS_MOVE,
            None::<&str>,
        )
        .ctx(|| "move rootfs to /")?;
        nix::unistd::chroot(".").ctx(|| "chroot")?;
        chdir("/").ctx(|| "chdir /")?;
        return Ok(());
    }
    let oldroot = open(
        "/",
        OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .ctx(|| "open /")?;
    let newroot = open(
        rootfs,
        OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .ctx(|| format!("open {rootfs:?}"))?;
    let r = (|| {
        fchdir(newroot).ctx(|| "fchdir rootfs")?;
        pivot_root(".", ".").ctx(|| format!("pivot_root into {rootfs:?}"))?;
        fchdir(oldroot).ctx(|| "fchdir old root")?;
        mount(
            None::<&str>,
            ".",
            None::<&str>,
            MsFlags::MS_SLAVE | MsFlags::MS_REC,
            None::<&str>,
        )
        .ctx(|| "make old root slave")?;
        umount2(".", MntFlags::MNT_DETACH).ctx(|| "unmount old root")?;
        chdir("/").ctx(|| "chdir /")
    })();
    let _ = nix::unistd::close(oldroot);
    let _ = nix::unistd::close(newroot);
    r
}

/// After pivot_root: read-only paths, masked paths, then (last) a read-only root.
pub fn finalize(spec: &Spec, in_user_ns: bool) -> Result<()> {
    let linux = spec.linux().as_ref();
    for p in linux
        .and_then(|l| l.readonly_paths().as_ref())
        .into_iter()
        .flatten()
    {
        readonly_path(Path::new(p), in_user_ns)?;
    }
    for p in linux
        .and_then(|l| l.masked_paths().as_ref())
        .into_iter()
        .flatten()
    {
        mask_path(Path::new(p))?;
    }
    if let Some(propagation) = linux
        .and_then(|l| l.rootfs_propagation().as_deref())
        .and_then(propagation_flag)
    {
        mount(None::<&str>, "/", None::<&str>, propagation, None::<&str>)
            .ctx(|| "set rootfs propagation")?;
    }
    if spec
        .root()
        .as_ref()
        .and_then(|r| r.readonly())
        .unwrap_or(false)
    {
        remount_bind(Path::new("/"), MsFlags::MS_RDONLY, in_user_ns).or_else(|_| {
            mount(
                None::<&str>,
                "/",
                None::<&str>,
                MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY | MsFlags::MS_REC,
                None::<&str>,
            )
            .ctx(|| "remount / read-only")
        })?;
    }
    Ok(())
}

fn readonly_path(p: &Path, in_user_ns: bool) -> Result<()> {
    match mount(
        Some(p),
        p,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    ) {
        Err(nix::Error::ENOENT) => return Ok(()),
        r => r.ctx(|| format!("bind readonly path {p:?}"))?,
    }
    remount_bind(p, MsFlags::MS_RDONLY | MsFlags::MS_REC, in_user_ns)
}

fn mask_path(p: &Path) -> Result<()> {
    match mount(
        Some("/dev/null"),
        p,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    ) {
        Ok(()) => Ok(()),
        Err(nix::Error::ENOENT) => Ok(()),
        Err(nix::Error::ENOTDIR) => {
            // A directory: hide it under an empty read-only tmpfs.
            mount(
                Some("tmpfs"),
                p,
                Some("tmpfs"),
                MsFlags::MS_RDONLY,
                None::<&str>,
            )
            .ctx(|| format!("mask {p:?}"))
        }
        Err(e) => Err(e).ctx(|| format!("mask {p:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secure_join_keeps_symlinks_inside() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        std::fs::create_dir_all(root.join("a/b")).unwrap();
        symlink("/etc", root.join("a/abs")).unwrap();
        symlink("../../../../..", root.join("a/up")).unwrap();
        symlink("b", root.join("a/rel")).unwrap();
        symlink("loop2", root.join("loop1")).unwrap();
        symlink("loop1", root.join("loop2")).unwrap();
        assert_eq!(
            secure_join(root, Path::new("/a/abs/x")).unwrap(),
            root.join("etc/x")
        );
        assert_eq!(
            secure_join(root, Path::new("/a/up/etc")).unwrap(),
            root.join("etc")
        );
        assert_eq!(
            secure_join(root, Path::new("/a/rel/c")).unwrap(),
            root.join("a/b/c")
        );
        assert_eq!(
            secure_join(root, Path::new("/../../x")).unwrap(),
            root.join("x")
        );
        assert!(secure_join(root, Path::new("/loop1")).is_err());
    }

    #[test]
    fn options() {
        let o = parse_options(&[
            "ro".into(),
            "nosuid".into(),
            "mode=755".into(),
            "rbind".into(),
            "rslave".into(),
        ])
        .unwrap();
        assert!(o.flags.contains(
            MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_BIND | MsFlags::MS_REC
        ));
        assert_eq!(o.data, vec!["mode=755".to_string()]);
        assert_eq!(o.propagation, vec![MsFlags::MS_SLAVE | MsFlags::MS_REC]);
        let o = parse_options(&["ro".into(), "rw".into()]).unwrap();
        assert!(!o.flags.contains(MsFlags::MS_RDONLY));
        assert!(parse_options(&["idmap".into()]).is_err());
    }

    #[test]
    fn hierarchy_names() {
        let mi =
            "35 25 0:30 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid - cgroup cgroup rw,cpu,cpuacct\n\
                  36 25 0:31 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n";
        assert_eq!(
            hierarchy_dir_name(mi, Path::new("/sys/fs/cgroup/cpu,cpuacct/x/y")).as_deref(),
            Some("cpu,cpuacct")
        );
        assert_eq!(
            hierarchy_dir_name(mi, Path::new("/sys/fs/cgroup/memory/x")).as_deref(),
            Some("memory")
        );
    }
}
