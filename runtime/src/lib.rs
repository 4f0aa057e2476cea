//! orca-runtime: a runc-compatible OCI runtime.
//!
//! The library holds all container logic; `src/bin/orca-runtime.rs` only calls [`cli::main`].
//! See `docs/ARCHITECTURE.md` for how a container is created (one clone, no self re-exec of the
//! setup code) and where state lives.

pub mod capabilities;
pub mod cgroups;
pub mod cli;
pub mod container;
pub mod error;
pub mod exe_protection;
pub mod features;
pub mod hooks;
pub mod init;
pub mod logging;
pub mod namespaces;
pub mod rootfs;
pub mod seccomp;
pub mod seccomp_cache;
pub mod spec;
pub mod state;
pub mod sync;
#[cfg(test)]
mod test_support;
pub mod tty;
