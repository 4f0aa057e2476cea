//! The event bus: every event the supervisor publishes or receives (gRPC
//! `Publish`/`Forward`, shims' ttrpc `Forward`) goes to every subscriber
//! whose filters match (`topic`, `namespace`; containerd's filter syntax).

use prost::Message as _;

use orca_proto::types::Envelope;
use prost_types::Any;
use tokio::sync::broadcast;

use crate::filters::Filter;
use crate::util::now;

/// Broadcast of event envelopes to subscribers.
#[derive(Clone)]
pub struct EventBus {
    tx: broadcast::Sender<Envelope>,
}

impl Default for EventBus {
    fn default() -> Self {
        Self::new()
    }
}

impl EventBus {
    pub fn new() -> EventBus {
        let (tx, _) = broadcast::channel(1024);
        EventBus { tx }
    }

    /// Publishes an event of containerd type `containerd.events.<type_name>`.
    pub fn publish<M: prost::Message>(&self, ns: &str, topic: &str, type_name: &str, event: &M) {
        self.forward(Envelope {
            timestamp: Some(now()),
            namespace: ns.to_string(),
            topic: topic.to_string(),
            event: Some(Any {
                type_url: format!("containerd.events.{type_name}"),
                value: event.encode_to_vec(),
            }),
        });
    }

    /// Sends an envelope as is.
    pub fn forward(&self, env: Envelope) {
        tracing::debug!(topic = %env.topic, namespace = %env.namespace, "event");
        let _ = self.tx.send(env);
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Envelope> {
        self.tx.subscribe()
    }
}

/// Whether an envelope passes a Subscribe filter.
pub fn envelope_matches(f: &Filter, env: &Envelope) -> bool {
    f.matches(&|p: &[String]| match p.first().map(String::as_str) {
        Some("topic") if p.len() == 1 => Some(env.topic.clone()),
        Some("namespace") if p.len() == 1 => Some(env.namespace.clone()),
        _ => None,
    })
}

/// The ttrpc service shims forward their events to (at `<address>.ttrpc`).
const EVENTS_SERVICE: &str = "containerd.services.events.ttrpc.v1.Events";
/// ttrpc's frame layout and limits: a header of length (u32 BE), stream id (u32 BE), type, flags.
use ttrpc::proto::{
    MESSAGE_HEADER_LENGTH as HEADER_LEN, MESSAGE_LENGTH_MAX, MESSAGE_TYPE_REQUEST,
    MESSAGE_TYPE_RESPONSE,
};

/// Serves `containerd.services.events.ttrpc.v1.Events/Forward` on the unix socket `path`:
/// every forwarded envelope goes on the bus. A task per connection on the supervisor's tokio
/// runtime, each request answered in order — not ttrpc's synchronous server, which starts
/// about eight OS threads for every connection (shims connect for each burst of events).
/// The wire format is ttrpc's (frames, `ttrpc.Request`/`Response` from the ttrpc crate);
/// any other method is answered `UNIMPLEMENTED`.
pub fn serve_ttrpc_events(
    path: &std::path::Path,
    bus: EventBus,
) -> crate::error::Result<tokio::task::JoinHandle<()>> {
    let _ = std::fs::remove_file(path);
    let listener = tokio::net::UnixListener::bind(path).map_err(|e| {
        crate::error::Error::Internal(format!("bind ttrpc {}: {e}", path.display()))
    })?;
    Ok(tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((conn, _)) => {
                    let bus = bus.clone();
                    tokio::spawn(async move {
                        if let Err(e) = serve_events_conn(conn, &bus).await {
                            tracing::debug!(error = %e, "ttrpc events connection ended");
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a ttrpc events connection");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        }
    }))
}

/// One connection: requests in, responses out, until EOF or a framing error.
async fn serve_events_conn(
    mut conn: tokio::net::UnixStream,
    bus: &EventBus,
) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    loop {
        let mut h = [0u8; HEADER_LEN];
        match conn.read_exact(&mut h).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        }
        let len = u32::from_be_bytes([h[0], h[1], h[2], h[3]]) as usize;
        let stream = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
        if len > MESSAGE_LENGTH_MAX {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("message of {len} bytes (limit {MESSAGE_LENGTH_MAX})"),
            ));
        }
        let mut body = vec![0u8; len];
        conn.read_exact(&mut body).await?;
        if h[8] != MESSAGE_TYPE_REQUEST {
            continue;
        }
        let res = answer_events_request(&body, bus);
        let payload = {
            use containerd_shim_protos::protobuf::Message as _;
            res.write_to_bytes()
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?
        };
        let mut frame = Vec::with_capacity(HEADER_LEN + payload.len());
        frame.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        frame.extend_from_slice(&stream.to_be_bytes());
        frame.push(MESSAGE_TYPE_RESPONSE);
        frame.push(0);
        frame.extend_from_slice(&payload);
        conn.write_all(&frame).await?;
    }
}

/// The response to one ttrpc request (encoded `ttrpc.Request`).
fn answer_events_request(body: &[u8], bus: &EventBus) -> ttrpc::Response {
    use containerd_shim_protos::protobuf::Message as _;
    let fail = |code: ttrpc::Code, msg: String| {
        let mut r = ttrpc::Response::new();
        r.status = Some(ttrpc::get_status(code, msg)).into();
        r
    };
    let req = match ttrpc::Request::parse_from_bytes(body) {
        Ok(r) => r,
        Err(e) => return fail(ttrpc::Code::INVALID_ARGUMENT, format!("bad request: {e}")),
    };
    if req.service != EVENTS_SERVICE || req.method != "Forward" {
        return fail(
            ttrpc::Code::UNIMPLEMENTED,
            format!("{}/{} is not served here", req.service, req.method),
        );
    }
    match orca_proto::events::ForwardRequest::decode(req.payload.as_slice()) {
        Ok(f) => match f.envelope {
            Some(env) => {
                bus.forward(env);
                ttrpc::Response::new()
            }
            None => fail(ttrpc::Code::INVALID_ARGUMENT, "no envelope".into()),
        },
        Err(e) => fail(
            ttrpc::Code::INVALID_ARGUMENT,
            format!("bad ForwardRequest: {e}"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use containerd_shim_protos::protobuf::Message as _;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn call(
        conn: &mut tokio::net::UnixStream,
        stream: u32,
        service: &str,
        method: &str,
        payload: Vec<u8>,
    ) -> ttrpc::Response {
        let mut req = ttrpc::Request::new();
        req.service = service.into();
        req.method = method.into();
        req.payload = payload;
        let body = req.write_to_bytes().unwrap();
        let mut frame = (body.len() as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(&stream.to_be_bytes());
        frame.extend_from_slice(&[MESSAGE_TYPE_REQUEST, 0]);
        frame.extend_from_slice(&body);
        conn.write_all(&frame).await.unwrap();
        let mut h = [0u8; HEADER_LEN];
        conn.read_exact(&mut h).await.unwrap();
        assert_eq!(u32::from_be_bytes([h[4], h[5], h[6], h[7]]), stream);
        assert_eq!(h[8], MESSAGE_TYPE_RESPONSE);
        let mut b = vec![0u8; u32::from_be_bytes([h[0], h[1], h[2], h[3]]) as usize];
        conn.read_exact(&mut b).await.unwrap();
        ttrpc::Response::parse_from_bytes(&b).unwrap()
    }

    #[tokio::test]
    async fn forwarded_events_reach_the_bus_and_bad_requests_get_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.ttrpc");
        let bus = EventBus::new();
        let mut rx = bus.subscribe();
        let server = serve_ttrpc_events(&path, bus).unwrap();
        let mut conn = tokio::net::UnixStream::connect(&path).await.unwrap();
        let fwd = orca_proto::events::ForwardRequest {
            envelope: Some(Envelope {
                timestamp: Some(now()),
                namespace: "ns1".into(),
                topic: "/tasks/exit".into(),
                event: Some(Any {
                    type_url: "containerd.events.TaskExit".into(),
                    value: vec![],
                }),
            }),
        };
        // Two events on one connection, in order.
        for (stream, topic) in [(1, "/tasks/exit"), (3, "/tasks/delete")] {
            let mut f = fwd.clone();
            f.envelope.as_mut().unwrap().topic = topic.into();
            let res = call(
                &mut conn,
                stream,
                EVENTS_SERVICE,
                "Forward",
                f.encode_to_vec(),
            )
            .await;
            assert!(
                res.status.as_ref().is_none_or(|s| s.code.value() == 0),
                "{res:?}"
            );
            let env = rx.recv().await.unwrap();
            assert_eq!((env.namespace.as_str(), env.topic.as_str()), ("ns1", topic));
        }
        let res = call(&mut conn, 5, EVENTS_SERVICE, "Publish", vec![]).await;
        assert_eq!(res.status.code.value(), ttrpc::Code::UNIMPLEMENTED as i32);
        let res = call(&mut conn, 7, EVENTS_SERVICE, "Forward", vec![0xff, 0xff]).await;
        assert_eq!(
            res.status.code.value(),
            ttrpc::Code::INVALID_ARGUMENT as i32
        );
        // An oversized frame ends that connection, not the server.
        let mut bad = tokio::net::UnixStream::connect(&path).await.unwrap();
        bad.write_all(&[0xff, 0xff, 0xff, 0xff, 0, 0, 0, 1, 1, 0])
            .await
            .unwrap();
        let mut buf = [0u8; 1];
        assert_eq!(bad.read(&mut buf).await.unwrap(), 0);
        let res = call(&mut conn, 9, EVENTS_SERVICE, "Forward", fwd.encode_to_vec()).await;
        assert!(
            res.status.as_ref().is_none_or(|s| s.code.value() == 0),
            "{res:?}"
        );
        server.abort();
    }
}
