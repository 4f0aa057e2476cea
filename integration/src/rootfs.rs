//! A minimal busybox root filesystem, made from Debian's busybox-static.

use std::fs;
use std::io;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;

/// Where busybox-static installs its binary.
pub const BUSYBOX: &str = "/bin/busybox";

/// Contents of the rootfs's /etc/passwd.
pub const PASSWD: &str =
    "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n";
/// Contents of the rootfs's /etc/group.
pub const GROUP: &str = "root:x:0:\nnogroup:x:65534:\n";

/// Whether an ELF file is statically linked (has no PT_INTERP program header).
fn elf_is_static(bytes: &[u8]) -> Result<bool, String> {
    if bytes.len() < 64 || &bytes[..4] != b"\x7fELF" {
        return Err("not an ELF file".into());
    }
    if bytes[4] != 2 || bytes[5] != 1 {
        return Err("not a 64-bit little-endian ELF file".into());
    }
    let u16_at = |o: usize| u16::from_le_bytes([bytes[o], bytes[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(bytes[0x20..0x28].try_into().expect("8 bytes")) as usize;
    let phentsize = u16_at(0x36);
    let phnum = u16_at(0x38);
    for i in 0..phnum {
        let o = phoff + i * phentsize;
        if o + 4 > bytes.len() {
            return Err("truncated program headers".into());
        }
        let p_type = u32::from_le_bytes(bytes[o..o + 4].try_into().expect("4 bytes"));
        if p_type == 3 {
            return Ok(false); // PT_INTERP: dynamically linked
        }
    }
    Ok(true)
}

/// The applets of the host's static busybox, checked and listed once per process.
fn applets() -> io::Result<&'static [String]> {
    static APPLETS: OnceLock<Result<Vec<String>, String>> = OnceLock::new();
    let r = APPLETS.get_or_init(|| {
        let bytes = fs::read(BUSYBOX).map_err(|e| {
            format!(
                "cannot read {BUSYBOX} ({e}): install it with \
                 `apt-get install -y --no-install-recommends busybox-static`"
            )
        })?;
        match elf_is_static(&bytes) {
            Ok(true) => {}
            Ok(false) => {
                return Err(format!(
                    "{BUSYBOX} is dynamically linked: install the static one with \
                     `apt-get install -y --no-install-recommends busybox-static`"
                ))
            }
            Err(e) => return Err(format!("{BUSYBOX}: {e}")),
        }
        let out = Command::new(BUSYBOX)
            .arg("--list")
            .output()
            .map_err(|e| format!("cannot run {BUSYBOX} --list: {e}"))?;
        if !out.status.success() {
            return Err(format!("{BUSYBOX} --list failed: {}", out.status));
        }
        let list: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::trim)
            .filter(|a| !a.is_empty() && *a != "busybox" && !a.contains('/'))
            .map(String::from)
            .collect();
        if list.is_empty() {
            return Err(format!("{BUSYBOX} --list printed no applets"));
        }
        Ok(list)
    });
    r.as_deref()
        .map_err(|e| io::Error::new(io::ErrorKind::NotFound, e.clone()))
}

fn mkdir_mode(p: &Path, mode: u32) -> io::Result<()> {
    fs::create_dir_all(p)?;
    fs::set_permissions(p, fs::Permissions::from_mode(mode))
}

/// Fills `dir` (created if needed) with a busybox root filesystem:
/// `bin/busybox` (a copy of the host's static busybox) and a relative
/// symlink `bin/<applet> -> busybox` for every applet, `etc/passwd`
/// (root, nobody), `etc/group` (root, nogroup), and empty `proc`, `sys`,
/// `dev`, `tmp` (mode 1777) and `root` directories. There is no
/// `etc/hostname`.
///
/// The check that busybox is static and its applet list are computed once
/// per process; each call then only copies one file and makes the links.
pub fn make_busybox_rootfs(dir: &Path) -> io::Result<()> {
    let applets = applets()?;
    mkdir_mode(dir, 0o755)?;
    let bin = dir.join("bin");
    mkdir_mode(&bin, 0o755)?;
    let bb = bin.join("busybox");
    fs::copy(BUSYBOX, &bb)?;
    fs::set_permissions(&bb, fs::Permissions::from_mode(0o755))?;
    for a in applets {
        let link = bin.join(a);
        match symlink("busybox", &link) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
    }
    let etc = dir.join("etc");
    mkdir_mode(&etc, 0o755)?;
    fs::write(etc.join("passwd"), PASSWD)?;
    fs::write(etc.join("group"), GROUP)?;
    for (d, mode) in [
        ("proc", 0o555),
        ("sys", 0o555),
        ("dev", 0o755),
        ("tmp", 0o1777),
        ("root", 0o700),
    ] {
        mkdir_mode(&dir.join(d), mode)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_static_and_dynamic_elves() {
        if let Ok(b) = fs::read("/bin/sh") {
            // dash/bash are dynamically linked on Debian.
            assert_eq!(elf_is_static(&b), Ok(false));
        }
        assert!(elf_is_static(b"#!/bin/sh\n").is_err());
    }
}
