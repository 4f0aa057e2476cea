//! orca-shim: a containerd shim v2 (ttrpc), one per container. It owns the
//! container's processes (as subreaper), their stdio and exit statuses, and
//! drives any runc-compatible runtime (orca-runtime by default).
//!
//! Modules, one concept each:
//! - [`bootstrap`]: the `start`/`delete` actions, socket address derivation, serving.
//! - [`task`]: the `containerd.task.v2.Task` (and v3) service.
//! - [`process`]: init/exec processes, exit status bookkeeping, Wait.
//! - [`reaper`]: the subreaper thread and exit subscriptions.
//! - [`io`]: FIFO/file/pty stdio copying.
//! - [`runtime_cli`]: invoking the runc-compatible binary like go-runc.
//! - [`events`]: the event queue and its `Events.Forward` publisher.
//! - [`mount`]: rootfs mounts.
//! - [`options`]: runtime options (runc Options, runtimeoptions TOML).
//! - [`metrics`]: cgroup v1/v2 metrics for Stats.
//! - [`log`]: the shim's log lines (a few macros, no `tracing`).

pub mod bootstrap;
pub mod error;
pub mod events;
pub mod io;
pub mod log;
pub mod metrics;
pub mod mount;
pub mod oom;
pub mod options;
pub mod process;
pub mod reaper;
pub mod runtime_cli;
pub mod task;

pub use error::{Error, Result};
