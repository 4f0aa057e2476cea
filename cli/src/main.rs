//! The `orca` binary: everything is in the `orca_cli` library.

fn main() {
    let code = orca_cli::run_cli(std::env::args_os().collect());
    std::process::exit(code);
}
