//! Links the `orca-supervisor` binary (only it: not the library, its tests,
//! nor other crates) as a non-PIE executable. A PIE carries ~650 KiB of
//! R_X86_64_RELATIVE relocations that ld.so reads at every start, and the
//! ~460 KiB of `.data.rel.ro` they patch become private dirty pages; with a
//! fixed load address neither exists: −0.8 to −0.9 MiB of idle RSS (measured). glibc
//! stays dynamic (the supervisor resolves registry host names through NSS).
//! See docs/ARCHITECTURE.md, orca-supervisor → "Memory".
//!
//! `ORCA_PIE=1` keeps the default PIE link.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=ORCA_PIE");
    if std::env::var_os("ORCA_PIE").is_some_and(|v| !v.is_empty() && v != "0") {
        return;
    }
    let target = std::env::var("TARGET").unwrap_or_default();
    if !target.contains("-linux-") {
        return;
    }
    println!("cargo:rustc-link-arg-bin=orca-supervisor=-no-pie");
}
