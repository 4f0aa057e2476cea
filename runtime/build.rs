//! Links the `orca-runtime` binary (only it: not the library nor its tests) as a non-PIE
//! executable. The runtime is started three times per container (create, start, delete) plus
//! once more by its own re-exec (`exe_protection`), so start-up cost multiplies: a PIE makes
//! ld.so apply ≈ 14 000 R_X86_64_RELATIVE relocations (and dirty the pages they patch) on
//! every start; a fixed load address has none. glibc and libseccomp stay dynamic (NSS for
//! `list`'s owner lookup). See docs/ARCHITECTURE.md, orca-runtime.
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
    println!("cargo:rustc-link-arg-bin=orca-runtime=-no-pie");
}
