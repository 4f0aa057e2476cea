//! [`ShimClient`]: the supervisor's ttrpc client for `containerd.task.v2.Task`, on tokio.
//!
//! One connection per shim carries every call to it, multiplexed by stream id, so a
//! waiting `Wait` costs a map entry and a oneshot channel rather than a thread. The ttrpc
//! crate's synchronous client (used before) keeps two threads per connection, one of
//! them waking every 10 ms, which with hundreds of shims dominated the supervisor's CPU;
//! its async client needs the crate's `async` feature, which pulls `tokio-vsock` →
//! `vsock` → a third major version of `nix` into the workspace. The wire format is
//! ttrpc's (docs/ARCHITECTURE.md, "Hand-written substitutes"): a 10-byte header (payload
//! length u32 BE, stream id u32 BE, type, flags), then a `ttrpc.Request` or
//! `ttrpc.Response` message, using the message types of the ttrpc crate; a client's
//! stream ids are odd and increase by two.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use containerd_shim_protos::api as shim;
use containerd_shim_protos::protobuf::Message as PbMessage;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::oneshot;
use ttrpc::proto::{
    MESSAGE_HEADER_LENGTH as HEADER_LEN, MESSAGE_LENGTH_MAX, MESSAGE_TYPE_REQUEST,
    MESSAGE_TYPE_RESPONSE,
};

/// The shim task service's name on the wire.
const TASK_SERVICE: &str = "containerd.task.v2.Task";

type Reply = Result<Vec<u8>, ttrpc::Error>;

/// Calls in flight, by stream id; `None` once the connection is gone.
type Pending = Mutex<Option<HashMap<u32, oneshot::Sender<Reply>>>>;

/// An open ttrpc connection to one shim. Dropping it closes the connection.
pub struct ShimClient {
    writer: tokio::sync::Mutex<OwnedWriteHalf>,
    pending: Arc<Pending>,
    next_stream: AtomicU32,
    reader: tokio::task::AbortHandle,
}

impl Drop for ShimClient {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// Connects to a unix socket named as shims print it: `unix:///path`,
/// `unix://@name` (abstract) or a bare path.
async fn connect_unix(address: &str) -> std::io::Result<tokio::net::UnixStream> {
    let rest = address.strip_prefix("unix://").unwrap_or(address);
    if address.contains("://") && !address.starts_with("unix://") {
        return Err(std::io::Error::new(
            std::io::ErrorKind::Unsupported,
            format!("shim address {address:?}: only unix sockets are supported"),
        ));
    }
    if let Some(name) = rest.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
        // Connecting to a unix socket does not wait for the peer to accept.
        let s = std::os::unix::net::UnixStream::connect_addr(&addr)?;
        s.set_nonblocking(true)?;
        return tokio::net::UnixStream::from_std(s);
    }
    tokio::net::UnixStream::connect(rest).await
}

impl ShimClient {
    /// Connects to a shim's ttrpc address and starts the task reading its replies.
    pub async fn connect(address: &str) -> Result<ShimClient, ttrpc::Error> {
        let stream = connect_unix(address)
            .await
            .map_err(|e| ttrpc::Error::Socket(format!("connect to {address}: {e}")))?;
        let (read, write) = stream.into_split();
        let pending: Arc<Pending> = Arc::new(Mutex::new(Some(HashMap::new())));
        let reader = tokio::spawn(read_replies(read, pending.clone())).abort_handle();
        Ok(ShimClient {
            writer: tokio::sync::Mutex::new(write),
            pending,
            next_stream: AtomicU32::new(1),
            reader,
        })
    }

    /// One unary call: `method` of the task service with `req`; `timeout` is also sent
    /// to the shim (`timeout_nano`), `None` waits as long as the shim takes (`Wait`).
    pub async fn call<Req: PbMessage, Resp: PbMessage>(
        &self,
        method: &str,
        req: &Req,
        timeout: Option<Duration>,
    ) -> Result<Resp, ttrpc::Error> {
        let payload = req
            .write_to_bytes()
            .map_err(|e| ttrpc::Error::Others(format!("encode {method} request: {e}")))?;
        let mut r = ttrpc::Request::new();
        r.service = TASK_SERVICE.to_string();
        r.method = method.to_string();
        r.payload = payload;
        r.timeout_nano = timeout.map_or(0, |t| t.as_nanos() as i64);
        let body = r
            .write_to_bytes()
            .map_err(|e| ttrpc::Error::Others(format!("encode {method} request: {e}")))?;
        if body.len() > MESSAGE_LENGTH_MAX {
            return Err(ttrpc::Error::Others(format!(
                "{method} request of {} bytes is over ttrpc's limit of {MESSAGE_LENGTH_MAX}",
                body.len()
            )));
        }
        let stream = self.next_stream.fetch_add(2, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        match lock(&self.pending).as_mut() {
            Some(calls) => calls.insert(stream, tx),
            None => return Err(ttrpc::Error::RemoteClosed),
        };
        // Whatever happens below, the entry goes (a reply that arrives later is dropped).
        let _forget = Forget(&self.pending, stream);
        let mut frame = Vec::with_capacity(HEADER_LEN + body.len());
        frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
        frame.extend_from_slice(&stream.to_be_bytes());
        frame.extend_from_slice(&[MESSAGE_TYPE_REQUEST, 0]);
        frame.extend_from_slice(&body);
        self.writer
            .lock()
            .await
            .write_all(&frame)
            .await
            .map_err(|e| ttrpc::Error::Socket(format!("send {method}: {e}")))?;
        let reply = match timeout {
            None => rx.await,
            Some(t) => tokio::time::timeout(t, rx)
                .await
                .map_err(|_| ttrpc::Error::Others(format!("{method}: no reply within {t:?}")))?,
        };
        let body = reply.map_err(|_| ttrpc::Error::RemoteClosed)??;
        let res = ttrpc::Response::parse_from_bytes(&body)
            .map_err(|e| ttrpc::Error::Others(format!("decode {method} response: {e}")))?;
        if let Some(status) = res.status.as_ref() {
            if status.code() != ttrpc::Code::OK {
                return Err(ttrpc::Error::RpcStatus(status.clone()));
            }
        }
        Resp::parse_from_bytes(&res.payload)
            .map_err(|e| ttrpc::Error::Others(format!("decode {method} reply: {e}")))
    }

    pub async fn create(
        &self,
        req: &shim::CreateTaskRequest,
        t: Duration,
    ) -> Result<shim::CreateTaskResponse, ttrpc::Error> {
        self.call("Create", req, Some(t)).await
    }
    pub async fn start(
        &self,
        req: &shim::StartRequest,
        t: Duration,
    ) -> Result<shim::StartResponse, ttrpc::Error> {
        self.call("Start", req, Some(t)).await
    }
    pub async fn state(
        &self,
        req: &shim::StateRequest,
        t: Duration,
    ) -> Result<shim::StateResponse, ttrpc::Error> {
        self.call("State", req, Some(t)).await
    }
    pub async fn delete(
        &self,
        req: &shim::DeleteRequest,
        t: Duration,
    ) -> Result<shim::DeleteResponse, ttrpc::Error> {
        self.call("Delete", req, Some(t)).await
    }
    pub async fn connect_task(
        &self,
        req: &shim::ConnectRequest,
        t: Duration,
    ) -> Result<shim::ConnectResponse, ttrpc::Error> {
        self.call("Connect", req, Some(t)).await
    }
    pub async fn shutdown(
        &self,
        req: &shim::ShutdownRequest,
        t: Duration,
    ) -> Result<(), ttrpc::Error> {
        self.call::<_, shim::Empty>("Shutdown", req, Some(t))
            .await
            .map(drop)
    }
    /// Waits as long as the process runs.
    pub async fn wait(&self, req: &shim::WaitRequest) -> Result<shim::WaitResponse, ttrpc::Error> {
        self.call("Wait", req, None).await
    }
}

fn lock(p: &Pending) -> std::sync::MutexGuard<'_, Option<HashMap<u32, oneshot::Sender<Reply>>>> {
    p.lock().unwrap_or_else(|e| e.into_inner())
}

/// Removes a call's entry when the call ends, however it ends.
struct Forget<'a>(&'a Pending, u32);

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        if let Some(calls) = lock(self.0).as_mut() {
            calls.remove(&self.1);
        }
    }
}

/// Reads response frames and hands each to its call, until the connection ends; then
/// fails the calls still waiting (`RemoteClosed`) and refuses new ones.
async fn read_replies(mut read: OwnedReadHalf, pending: Arc<Pending>) {
    let end = loop {
        let mut h = [0u8; HEADER_LEN];
        if let Err(e) = read.read_exact(&mut h).await {
            break e.to_string();
        }
        let len = u32::from_be_bytes([h[0], h[1], h[2], h[3]]) as usize;
        let stream = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
        if len > MESSAGE_LENGTH_MAX {
            break format!("frame of {len} bytes (limit {MESSAGE_LENGTH_MAX})");
        }
        let mut body = vec![0u8; len];
        if let Err(e) = read.read_exact(&mut body).await {
            break e.to_string();
        }
        if h[8] != MESSAGE_TYPE_RESPONSE {
            tracing::debug!(
                stream,
                kind = h[8],
                "ignoring a ttrpc frame that is no response"
            );
            continue;
        }
        let waiter = lock(&pending).as_mut().and_then(|c| c.remove(&stream));
        if let Some(tx) = waiter {
            let _ = tx.send(Ok(body));
        }
    };
    tracing::debug!(reason = %end, "shim connection ended");
    if let Some(calls) = lock(&pending).take() {
        for (_, tx) in calls {
            let _ = tx.send(Err(ttrpc::Error::RemoteClosed));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake shim on `path`: answers `State` with the request's id as bundle,
    /// `Wait` only after `State` was called twice (answers in another order than asked),
    /// anything else with NOT_FOUND; hangs up after `hangup_after` requests.
    async fn fake_shim(path: std::path::PathBuf, hangup_after: usize) {
        let l = tokio::net::UnixListener::bind(&path).unwrap();
        let (mut conn, _) = l.accept().await.unwrap();
        let mut held_wait: Option<u32> = None;
        let mut states = 0;
        for _ in 0..hangup_after {
            let mut h = [0u8; HEADER_LEN];
            conn.read_exact(&mut h).await.unwrap();
            assert_eq!(h[8], MESSAGE_TYPE_REQUEST);
            let len = u32::from_be_bytes([h[0], h[1], h[2], h[3]]) as usize;
            let stream = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
            assert_eq!(stream % 2, 1, "client stream ids are odd");
            let mut b = vec![0u8; len];
            conn.read_exact(&mut b).await.unwrap();
            let req = ttrpc::Request::parse_from_bytes(&b).unwrap();
            assert_eq!(req.service, TASK_SERVICE);
            let mut res = ttrpc::Response::new();
            let mut replies = Vec::new();
            match req.method.as_str() {
                "State" => {
                    assert!(req.timeout_nano > 0);
                    let s = shim::StateRequest::parse_from_bytes(&req.payload).unwrap();
                    let out = shim::StateResponse {
                        bundle: s.id,
                        ..Default::default()
                    };
                    res.payload = out.write_to_bytes().unwrap();
                    replies.push((stream, res));
                    states += 1;
                }
                "Wait" => {
                    assert_eq!(req.timeout_nano, 0);
                    held_wait = Some(stream);
                }
                _ => {
                    res.status = Some(ttrpc::get_status(ttrpc::Code::NOT_FOUND, "no such")).into();
                    replies.push((stream, res));
                }
            }
            if states == 2 {
                if let Some(w) = held_wait.take() {
                    let mut res = ttrpc::Response::new();
                    res.payload = shim::WaitResponse {
                        exit_status: 7,
                        ..Default::default()
                    }
                    .write_to_bytes()
                    .unwrap();
                    replies.push((w, res));
                    states += 1; // later Waits are left unanswered
                }
            }
            for (stream, res) in replies {
                let p = res.write_to_bytes().unwrap();
                let mut f = (p.len() as u32).to_be_bytes().to_vec();
                f.extend_from_slice(&stream.to_be_bytes());
                f.extend_from_slice(&[MESSAGE_TYPE_RESPONSE, 0]);
                f.extend_from_slice(&p);
                conn.write_all(&f).await.unwrap();
            }
        }
    }

    #[tokio::test]
    async fn calls_are_multiplexed_and_a_hangup_fails_what_waits() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shim.sock");
        // Wait, State, State, Kill (NOT_FOUND), then a Wait left hanging at hangup.
        let server = tokio::spawn(fake_shim(path.clone(), 5));
        while !path.exists() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let c = Arc::new(
            ShimClient::connect(&format!("unix://{}", path.display()))
                .await
                .unwrap(),
        );
        let c2 = c.clone();
        let waiting = tokio::spawn(async move {
            c2.wait(&shim::WaitRequest {
                id: "a".into(),
                ..Default::default()
            })
            .await
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        let t = Duration::from_secs(5);
        for id in ["x", "y"] {
            let s = c
                .state(
                    &shim::StateRequest {
                        id: id.into(),
                        ..Default::default()
                    },
                    t,
                )
                .await
                .unwrap();
            assert_eq!(s.bundle, id);
        }
        assert_eq!(waiting.await.unwrap().unwrap().exit_status, 7);
        match c
            .call::<_, shim::Empty>("Kill", &shim::KillRequest::default(), Some(t))
            .await
        {
            Err(ttrpc::Error::RpcStatus(s)) => {
                assert_eq!(s.code(), ttrpc::Code::NOT_FOUND);
                assert_eq!(s.message(), "no such");
            }
            other => panic!("Kill: {other:?}"),
        }
        // The fifth request is read, then the fake shim hangs up without answering.
        let r = c.wait(&shim::WaitRequest::default()).await;
        assert!(matches!(r, Err(ttrpc::Error::RemoteClosed)), "{r:?}");
        server.await.unwrap();
        let r = c.state(&shim::StateRequest::default(), t).await;
        assert!(r.is_err(), "a call after the hangup must fail");
    }

    #[tokio::test]
    async fn connect_refuses_other_transports_and_missing_sockets() {
        assert!(ShimClient::connect("vsock://3:1024").await.is_err());
        assert!(ShimClient::connect("unix:///nonexistent/orca-shim.sock")
            .await
            .is_err());
    }
}
