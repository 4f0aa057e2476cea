//! orca-supervisor: containerd's role in Orca. It serves containerd's gRPC
//! API (v1 services, namespaced by the `containerd-namespace` header) on a
//! unix socket, keeps metadata in redb, blobs in a content store, layers in
//! overlayfs or native (copying) snapshotters, and runs tasks through shim v2 processes.
//!
//! | module | concept |
//! |---|---|
//! | [`config`] | flags + containerd-style TOML |
//! | [`metadata`] | the redb store: namespaced records, transactions |
//! | [`content`] | [`content::ContentStore`]: blobs, resumable ingests, digest checks |
//! | [`snapshots`] | [`snapshots::Snapshotters`]: `overlayfs` and `native` (copying) snapshotters over one record store |
//! | [`layer`] | applying a tar(.gz/.zst) layer safely (whiteouts, opaque dirs, no escapes) |
//! | [`diff`] | [`diff::LayerApplier`]: layer blob → snapshot mounts |
//! | [`diff_compare`] | Diff.Diff: two trees → OCI layer tar(.gz) in the content store |
//! | [`events`] | [`events::EventBus`], Subscribe filters, ttrpc Forward receiver |
//! | [`filters`] | containerd's filter syntax |
//! | [`gc`] | [`gc::Gc`]: garbage collection of content, snapshots, leases, ingests |
//! | [`tasks`] | [`tasks::ShimManager`]: shim start bootstrap, ttrpc task calls, re-attach after restart |
//! | [`shim_client`] | [`shim_client::ShimClient`]: async ttrpc client, one connection per shim |
//! | [`services`] | the gRPC services |
//! | [`streaming`] | containerd's Streaming service: client streams for progress and auth |
//! | [`transfer`] | containerd's Transfer service: server-side pull and push |
//! | [`server`] | sockets and wiring |

pub mod config;
pub mod content;
pub mod diff;
pub mod diff_compare;
pub mod error;
pub mod events;
pub mod filters;
pub mod gc;
pub mod layer;
pub mod metadata;
pub mod server;
pub mod services;
pub mod shim_client;
pub mod snapshots;
pub mod streaming;
pub mod tasks;
pub mod transfer;
pub mod transfer_registry;
pub mod transfer_remote;
pub mod trash;
pub mod util;

pub use error::{Error, Result};
