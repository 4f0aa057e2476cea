//! containerd's gRPC API, compiled with tonic (server and client).
//!
//! The `.proto` files under `protos/` are containerd's own, copied unchanged
//! (licence headers kept) from the vendored API shipped in the
//! `containerd-client` crate. They are containerd's v1 services, which
//! containerd 1.6's `ctr` speaks; the copy is from the 2.x API tree, a
//! wire-compatible superset (same packages, services, field numbers).
//!
//! Module layout follows the protobuf packages, so generated cross-package
//! references (`super::super::…`) resolve.

#![allow(clippy::all, missing_docs, rustdoc::all)]

pub use prost;
pub use prost_types;
pub use tonic;

pub mod google {
    pub mod rpc {
        tonic::include_proto!("google.rpc");
    }
}

pub mod containerd {
    pub mod types {
        tonic::include_proto!("containerd.types");

        /// Transfer objects (`containerd.types.transfer`, containerd 1.7+):
        /// the `Any` payloads of `Transfer.Transfer` and its streams.
        pub mod transfer {
            tonic::include_proto!("containerd.types.transfer");
        }
    }

    pub mod v1 {
        pub mod types {
            tonic::include_proto!("containerd.v1.types");
        }
    }

    pub mod events {
        tonic::include_proto!("containerd.events");
    }

    pub mod services {
        pub mod containers {
            pub mod v1 {
                tonic::include_proto!("containerd.services.containers.v1");
            }
        }
        pub mod content {
            pub mod v1 {
                tonic::include_proto!("containerd.services.content.v1");
            }
        }
        pub mod diff {
            pub mod v1 {
                tonic::include_proto!("containerd.services.diff.v1");
            }
        }
        pub mod events {
            pub mod v1 {
                tonic::include_proto!("containerd.services.events.v1");
            }
        }
        pub mod images {
            pub mod v1 {
                tonic::include_proto!("containerd.services.images.v1");
            }
        }
        pub mod introspection {
            pub mod v1 {
                tonic::include_proto!("containerd.services.introspection.v1");
            }
        }
        pub mod leases {
            pub mod v1 {
                tonic::include_proto!("containerd.services.leases.v1");
            }
        }
        pub mod namespaces {
            pub mod v1 {
                tonic::include_proto!("containerd.services.namespaces.v1");
            }
        }
        pub mod snapshots {
            pub mod v1 {
                tonic::include_proto!("containerd.services.snapshots.v1");
            }
        }
        pub mod tasks {
            pub mod v1 {
                tonic::include_proto!("containerd.services.tasks.v1");
            }
        }
        pub mod version {
            pub mod v1 {
                tonic::include_proto!("containerd.services.version.v1");
            }
        }
        pub mod transfer {
            pub mod v1 {
                tonic::include_proto!("containerd.services.transfer.v1");
            }
        }
        pub mod streaming {
            pub mod v1 {
                tonic::include_proto!("containerd.services.streaming.v1");
            }
        }
    }
}

/// Short aliases used across Orca.
pub use containerd::services::{
    containers::v1 as containers, content::v1 as content, diff::v1 as diff, events::v1 as events,
    images::v1 as images, introspection::v1 as introspection, leases::v1 as leases,
    namespaces::v1 as namespaces, snapshots::v1 as snapshots, streaming::v1 as streaming,
    tasks::v1 as tasks, transfer::v1 as transfer, version::v1 as version,
};
pub use containerd::types;

/// The gRPC metadata header carrying the containerd namespace of a request.
pub const NAMESPACE_HEADER: &str = "containerd-namespace";

/// `Any` type URLs of the transfer API. containerd 1.7+ (typeurl v2) names a
/// protobuf message by its full name, without a `types.containerd.io/` prefix.
pub mod type_urls {
    pub const OCI_REGISTRY: &str = "containerd.types.transfer.OCIRegistry";
    pub const IMAGE_STORE: &str = "containerd.types.transfer.ImageStore";
    pub const PROGRESS: &str = "containerd.types.transfer.Progress";
    pub const AUTH_REQUEST: &str = "containerd.types.transfer.AuthRequest";
    pub const AUTH_RESPONSE: &str = "containerd.types.transfer.AuthResponse";
    pub const IMAGE_IMPORT_STREAM: &str = "containerd.types.transfer.ImageImportStream";
    pub const IMAGE_EXPORT_STREAM: &str = "containerd.types.transfer.ImageExportStream";
    pub const STREAM_INIT: &str = "containerd.services.streaming.v1.StreamInit";
    pub const EMPTY: &str = "google.protobuf.Empty";

    /// The message name of a type URL, accepting the older
    /// `types.containerd.io/` (typeurl v1) prefix too.
    pub fn name(type_url: &str) -> &str {
        type_url
            .strip_prefix("types.containerd.io/")
            .unwrap_or(type_url)
    }
}
