//! A tonic client of a containerd-API unix socket, for the tests that talk gRPC to
//! orca-supervisor directly (included with `#[path = "common/grpc.rs"] mod grpc;`: the gRPC
//! crates are dev-dependencies, so this cannot live in the fixture library).

#![allow(dead_code)] // each test file uses a subset

use std::path::Path;

use orca_proto::tonic::{self, transport::Channel, Request};

/// A small multi-threaded runtime for one test.
pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// A channel to the gRPC server on unix socket `sock`.
pub async fn connect(sock: &Path) -> Channel {
    let path = sock.to_path_buf();
    tonic::transport::Endpoint::try_from("http://[::]:50051")
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let path = path.clone();
            async move {
                let s = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(s))
            }
        }))
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {}: {e}", sock.display()))
}

/// `msg` as a request in containerd namespace `ns`.
pub fn req_in<T>(ns: &str, msg: T) -> Request<T> {
    let mut r = Request::new(msg);
    r.metadata_mut()
        .insert(orca_proto::NAMESPACE_HEADER, ns.parse().unwrap());
    r
}
