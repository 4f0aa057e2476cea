//! Compiles containerd's API protos (copied verbatim into `protos/`) with
//! tonic for both server and client, using the system `protoc`.

use std::path::PathBuf;

const PROTOS: &[&str] = &[
    "google/rpc/status.proto",
    "github.com/containerd/containerd/api/types/descriptor.proto",
    "github.com/containerd/containerd/api/types/event.proto",
    "github.com/containerd/containerd/api/types/introspection.proto",
    "github.com/containerd/containerd/api/types/metrics.proto",
    "github.com/containerd/containerd/api/types/mount.proto",
    "github.com/containerd/containerd/api/types/platform.proto",
    "github.com/containerd/containerd/api/types/task/task.proto",
    "github.com/containerd/containerd/api/services/containers/v1/containers.proto",
    "github.com/containerd/containerd/api/services/content/v1/content.proto",
    "github.com/containerd/containerd/api/services/diff/v1/diff.proto",
    "github.com/containerd/containerd/api/services/events/v1/events.proto",
    "github.com/containerd/containerd/api/services/images/v1/images.proto",
    "github.com/containerd/containerd/api/services/introspection/v1/introspection.proto",
    "github.com/containerd/containerd/api/services/leases/v1/leases.proto",
    "github.com/containerd/containerd/api/services/namespaces/v1/namespace.proto",
    "github.com/containerd/containerd/api/services/snapshots/v1/snapshots.proto",
    "github.com/containerd/containerd/api/services/tasks/v1/tasks.proto",
    "github.com/containerd/containerd/api/services/version/v1/version.proto",
    "github.com/containerd/containerd/api/services/transfer/v1/transfer.proto",
    "github.com/containerd/containerd/api/services/streaming/v1/streaming.proto",
    "github.com/containerd/containerd/api/types/transfer/registry.proto",
    "github.com/containerd/containerd/api/types/transfer/imagestore.proto",
    "github.com/containerd/containerd/api/types/transfer/progress.proto",
    "github.com/containerd/containerd/api/types/transfer/importexport.proto",
    "github.com/containerd/containerd/api/types/transfer/streaming.proto",
    "github.com/containerd/containerd/api/events/container.proto",
    "github.com/containerd/containerd/api/events/content.proto",
    "github.com/containerd/containerd/api/events/image.proto",
    "github.com/containerd/containerd/api/events/namespace.proto",
    "github.com/containerd/containerd/api/events/snapshot.proto",
    "github.com/containerd/containerd/api/events/task.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("protos");
    let files: Vec<PathBuf> = PROTOS.iter().map(|p| root.join(p)).collect();
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
    }
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_protos(&files, &[root])?;
    Ok(())
}
