//! Links the `orca` binary (only it) as a non-PIE executable: every command is a fresh process,
//! and a PIE makes ld.so apply tens of thousands of R_X86_64_RELATIVE relocations (dirtying the
//! pages they patch) before `main` runs — most of the CLI's start-up time. `ORCA_PIE=1` keeps
//! the default PIE link. glibc stays dynamic (host name lookups for `-H tcp://…` use NSS).

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=ORCA_PIE");
    if std::env::var_os("ORCA_PIE").is_some_and(|v| !v.is_empty() && v != "0") {
        return;
    }
    if std::env::var("TARGET").is_ok_and(|t| t.contains("-linux-")) {
        println!("cargo:rustc-link-arg-bin=orca=-no-pie");
    }
}
