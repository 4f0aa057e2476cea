//! The event bus: every event the supervisor publishes or receives (gRPC
//! `Publish`/`Forward`, shims' ttrpc `Forward`) goes to every subscriber
//! whose filters match (`topic`, `namespace`; containerd's filter syntax).

use std::sync::Arc;

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

/// The ttrpc `containerd.services.events.ttrpc.v1.Events` service shims
/// forward their events to (at `<address>.ttrpc`).
pub struct TtrpcEventsForwarder {
    pub bus: EventBus,
}

impl containerd_shim_protos::Events for TtrpcEventsForwarder {
    fn forward(
        &self,
        _ctx: &ttrpc::TtrpcContext,
        req: containerd_shim_protos::shim::events::ForwardRequest,
    ) -> ttrpc::Result<containerd_shim_protos::types::empty::Empty> {
        use containerd_shim_protos::protobuf::Message as _;
        use prost::Message as _;
        let bytes = req
            .envelope
            .as_ref()
            .map(|e| e.write_to_bytes())
            .transpose()
            .map_err(|e| ttrpc::Error::Others(format!("encode envelope: {e}")))?
            .unwrap_or_default();
        let env = Envelope::decode(bytes.as_slice())
            .map_err(|e| ttrpc::Error::Others(format!("decode envelope: {e}")))?;
        self.bus.forward(env);
        Ok(Default::default())
    }
}

/// Starts the ttrpc events server on `path` (a unix socket path).
pub fn serve_ttrpc_events(
    path: &std::path::Path,
    bus: EventBus,
) -> crate::error::Result<ttrpc::Server> {
    let _ = std::fs::remove_file(path);
    let addr = format!("unix://{}", path.display());
    let service = containerd_shim_protos::create_events(Arc::new(TtrpcEventsForwarder { bus }));
    let mut server = ttrpc::Server::new()
        .bind(&addr)
        .map_err(|e| crate::error::Error::Internal(format!("bind ttrpc {addr}: {e}")))?
        .register_service(service);
    server
        .start()
        .map_err(|e| crate::error::Error::Internal(format!("start ttrpc server on {addr}: {e}")))?;
    Ok(server)
}
