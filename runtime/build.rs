//! Links the `orca-runtime` binary (only it: not the library nor its tests) statically against
//! glibc and libseccomp, as a non-PIE executable. The runtime is started three times per
//! container (create, start, delete), so start-up cost multiplies: a PIE makes ld.so apply
//! ≈ 14 000 R_X86_64_RELATIVE relocations (and dirty the pages they patch) on every start, and
//! loading libseccomp.so, libgcc_s.so and libc.so costs ≈ 0.5 ms more; a static binary at a
//! fixed address has none of it. The runtime needs no NSS (`list` reads /etc/passwd itself,
//! as runc does). See docs/ARCHITECTURE.md, orca-runtime.
//!
//! `ORCA_RUNTIME_DYNAMIC=1` links against the shared libraries (still non-PIE); the build falls
//! back to that, with a warning, when a static archive is missing. `ORCA_PIE=1` keeps the
//! default dynamic PIE link.

#[path = "../build-support/static_glibc.rs"]
mod static_glibc;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=../build-support/static_glibc.rs");
    println!("cargo:rerun-if-env-changed=ORCA_PIE");
    println!("cargo:rerun-if-env-changed=ORCA_RUNTIME_DYNAMIC");
    if std::env::var_os("ORCA_PIE").is_some_and(|v| !v.is_empty() && v != "0") {
        return;
    }
    let target = std::env::var("TARGET").unwrap_or_default();
    if !target.contains("-linux-") {
        return;
    }
    let dynamic =
        std::env::var_os("ORCA_RUNTIME_DYNAMIC").is_some_and(|v| !v.is_empty() && v != "0");
    let linked_static = !dynamic
        && std::env::var_os("OUT_DIR").is_some_and(|out| {
            static_glibc::static_link(std::path::Path::new(&out), "orca-runtime", &["seccomp"])
        });
    if !linked_static {
        println!("cargo:rustc-link-arg-bin=orca-runtime=-no-pie");
    }
}
