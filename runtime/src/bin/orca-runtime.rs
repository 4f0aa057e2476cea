//! `orca-runtime`: a runc-compatible OCI runtime. All logic lives in the `orca_runtime` library.

fn main() {
    std::process::exit(orca_runtime::cli::main());
}
