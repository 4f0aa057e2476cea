//! Static, non-PIE linking of one binary of a crate against glibc, shared by the build scripts
//! of `orca-shim` and `orca-runtime` (included with `#[path]`; build scripts cannot depend on
//! a workspace crate without making it a build-dependency of everything).
//!
//! Rust's own switch, `-C target-feature=+crt-static`, can only be set for a whole build
//! (RUSTFLAGS / .cargo/config.toml), where it would also hit build scripts and the other
//! binaries. So only the named binary's link line is extended: `-static -no-pie`, plus a
//! directory of tiny linker scripts that make the `-lc`/`-lm`/`-lgcc_s` (and any extra
//! `-l<name>` listed, e.g. `seccomp`) that the link asks for with `-Bdynamic` resolve to the
//! static archives. Returns false (and the binary stays dynamic) when an archive is missing.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Full path of a file the C compiler would link (`cc -print-file-name`).
fn cc_file(name: &str) -> Option<PathBuf> {
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let out = Command::new(cc)
        .arg(format!("-print-file-name={name}"))
        .output()
        .ok()?;
    let p = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    (p.is_absolute() && p.exists()).then_some(p)
}

/// Links binary `bin` statically; `extra` names further libraries (`seccomp` for
/// `libseccomp.a`) that must resolve to their static archives too.
pub fn static_link(out: &Path, bin: &str, extra: &[&str]) -> bool {
    let target = std::env::var("TARGET").unwrap_or_default();
    if !target.ends_with("-linux-gnu") {
        return false;
    }
    let (Some(libc), Some(libgcc), Some(libgcc_eh)) = (
        cc_file("libc.a"),
        cc_file("libgcc.a"),
        cc_file("libgcc_eh.a"),
    ) else {
        println!(
            "cargo:warning=static glibc (libc.a, libgcc.a, libgcc_eh.a) not found: {bin} is linked dynamically"
        );
        return false;
    };
    let libm = cc_file("libm.a");
    let dir = out.join("static-libs");
    if std::fs::create_dir_all(&dir).is_err() {
        return false;
    }
    let group = |files: &[&Path]| {
        let list: Vec<String> = files.iter().map(|p| p.display().to_string()).collect();
        format!("GROUP ( {} )\n", list.join(" "))
    };
    let mut scripts = vec![
        ("libc.so".to_string(), group(&[&libc, &libgcc, &libgcc_eh])),
        ("libgcc_s.so".to_string(), group(&[&libgcc_eh, &libgcc])),
    ];
    if let Some(m) = &libm {
        scripts.push(("libm.so".to_string(), group(&[m])));
    }
    for name in extra {
        let Some(a) = cc_file(&format!("lib{name}.a")) else {
            println!("cargo:warning=lib{name}.a not found: {bin} is linked dynamically");
            return false;
        };
        scripts.push((format!("lib{name}.so"), group(&[&a])));
    }
    for (name, text) in scripts {
        if std::fs::write(dir.join(&name), text).is_err() {
            println!("cargo:warning=cannot write {name}: {bin} is linked dynamically");
            return false;
        }
    }
    for arg in ["-static", "-no-pie"] {
        println!("cargo:rustc-link-arg-bin={bin}={arg}");
    }
    println!("cargo:rustc-link-arg-bin={bin}=-L{}", dir.display());
    true
}
