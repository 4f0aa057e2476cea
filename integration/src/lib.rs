//! Test fixtures shared by Orca's integration tests and benchmarks.
//!
//! Every fixture lives in its own temp dir, uses free 127.0.0.1 ports, and
//! cleans up on drop (kills and reaps its processes, unmounts what is left
//! under its temp dir, removes the dir). Most need root: call
//! [`require_root`] first.
//!
//! - [`bin_path`]: a workspace binary such as `orca-runtime`.
//! - [`make_busybox_rootfs`], [`Bundle`], [`default_spec`],
//!   [`cgroup_leftovers`], [`mounts_under`]: OCI bundles and leak checks.
//! - [`write_busybox_oci_layout`], [`OciImage`]: a busybox OCI image layout.
//! - [`Registry`]: Debian's docker-registry on 127.0.0.1.
//! - [`Containerd`]: Debian's containerd on a private socket.
//! - [`Runtime`]: orca-runtime / runc / crun with a private `--root`.

pub mod bundle;
pub mod containerd;
pub mod ctr_env;
pub mod engine_support;
pub mod image;
pub mod mounts;
pub mod process;
pub mod registry;
pub mod registry_auth;
pub mod rootfs;
pub mod runtime;
pub mod runtime_helpers;
pub mod shim_support;
pub mod supervisor_support;
pub mod util;

pub use bundle::{cgroup_leftovers, default_spec, Bundle, CGROUP_PARENT, DEFAULT_CAPS};
pub use containerd::{Containerd, TEST_NAMESPACE};
pub use ctr_env::CtrEnv;
pub use image::{
    busybox_rootfs_tar, sha256_digest, tar_dir, write_busybox_oci_layout, ImageInfo, OciImage,
};
pub use mounts::{mounts_under, unmount_all_under};
pub use process::{run_in_pty, run_with_limit};
pub use registry::Registry;
pub use rootfs::make_busybox_rootfs;
pub use runtime::{is_cgroup_hybrid, Runtime, RuntimeKind};
pub use runtime_helpers::*;
pub use shim_support::{
    kill_containerd, orca_shim_pids, restart_containerd, use_orca_shim, RestartedContainerd,
    ORCA_RUNTIME_NAME, ORCA_SHIM_LINK,
};
pub use supervisor_support::Supervisor;
pub use util::{
    assert_success, bin_dir, bin_path, free_port, have, http_get, output_via_files, require_root,
    require_tool, try_bin_path, unique_name, wait_until, which,
};
