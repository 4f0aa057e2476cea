//! containerd's Streaming service (`containerd.services.streaming.v1`,
//! containerd 1.7+): a client opens a bidirectional stream of `Any`s, names
//! it with a first `StreamInit{id}` message (answered with an
//! `google.protobuf.Empty` acknowledgement once registered) and then passes
//! the id in a Transfer request (`TransferOptions.progress_stream`,
//! `RegistryResolver.auth_stream`). The transfer service takes the stream
//! out of the [`StreamManager`] by (namespace, id), writes to it (progress)
//! or asks on it (auth), and closes it by dropping it.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use orca_proto as api;
use orca_proto::tonic::{self, Request, Response, Status, Streaming};
use orca_proto::type_urls;
use prost::Message;
use prost_types::Any;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;

type Key = (String, String);

/// The namespace of a request (`containerd-namespace` header), required.
pub(crate) fn namespace_of<T>(req: &Request<T>) -> Result<String, Status> {
    let ns = req
        .metadata()
        .get(api::NAMESPACE_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if ns.is_empty() {
        return Err(Status::failed_precondition(
            "namespace is required: set the containerd-namespace header",
        ));
    }
    crate::util::validate_identifier("namespace", ns)?;
    Ok(ns.to_string())
}

/// Streams opened by clients and not yet taken by a transfer.
#[derive(Default)]
pub struct StreamManager {
    streams: Mutex<HashMap<Key, ClientStream>>,
    registered: tokio::sync::Notify,
}

/// One client stream: `send` writes to the client, `recv` reads what the
/// client sent after its `StreamInit`. Dropping it ends the client's stream.
pub struct ClientStream {
    id: String,
    out: mpsc::Sender<Result<Any, Status>>,
    inbound: mpsc::Receiver<Any>,
}

impl ClientStream {
    pub fn id(&self) -> &str {
        &self.id
    }

    /// A sender of messages to the client (the stream ends once this
    /// stream and every sender are dropped).
    pub fn sender(&self) -> mpsc::Sender<Result<Any, Status>> {
        self.out.clone()
    }

    /// Sends one message; false once the client has gone.
    pub async fn send(&self, any: Any) -> bool {
        self.out.send(Ok(any)).await.is_ok()
    }

    /// The next message from the client (None once it closed its side).
    pub async fn recv(&mut self) -> Option<Any> {
        self.inbound.recv().await
    }
}

impl StreamManager {
    pub fn new() -> Arc<StreamManager> {
        Arc::new(StreamManager::default())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, ClientStream>> {
        self.streams.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes the stream `id` of namespace `ns`, waiting up to `wait` for a
    /// client that is still registering it.
    pub async fn take(&self, ns: &str, id: &str, wait: Duration) -> Option<ClientStream> {
        let key = (ns.to_string(), id.to_string());
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let notified = self.registered.notified();
            if let Some(s) = self.lock().remove(&key) {
                if !s.out.is_closed() {
                    return Some(s);
                }
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return None;
            }
        }
    }

    /// How many streams are open and not taken (for tests and logs).
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The gRPC Streaming service.
pub struct StreamingService {
    pub streams: Arc<StreamManager>,
}

type AnyStream = Pin<Box<dyn Stream<Item = Result<Any, Status>> + Send>>;

#[tonic::async_trait]
impl api::streaming::streaming_server::Streaming for StreamingService {
    type StreamStream = AnyStream;

    async fn stream(
        &self,
        req: Request<Streaming<Any>>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        let ns = namespace_of(&req)?;
        let mut inbound = req.into_inner();
        let first = match tokio::time::timeout(Duration::from_secs(30), inbound.message()).await {
            Ok(Ok(Some(m))) => m,
            Ok(Ok(None)) => {
                return Err(Status::invalid_argument(
                    "stream closed before its StreamInit message",
                ))
            }
            Ok(Err(s)) => return Err(s),
            Err(_) => {
                return Err(Status::deadline_exceeded(
                    "no StreamInit message within 30 s",
                ))
            }
        };
        if type_urls::name(&first.type_url) != type_urls::STREAM_INIT {
            return Err(Status::invalid_argument(format!(
                "the first message of a stream must be a {} (got {:?})",
                type_urls::STREAM_INIT,
                first.type_url
            )));
        }
        let init = api::streaming::StreamInit::decode(first.value.as_slice())
            .map_err(|e| Status::invalid_argument(format!("bad StreamInit: {e}")))?;
        if init.id.is_empty() || init.id.len() > 256 || init.id.chars().any(char::is_control) {
            return Err(Status::invalid_argument(
                "stream id must be 1-256 characters without control characters",
            ));
        }
        let (out_tx, out_rx) = mpsc::channel::<Result<Any, Status>>(64);
        let (in_tx, in_rx) = mpsc::channel::<Any>(16);
        let key = (ns.clone(), init.id.clone());
        {
            let mut map = self.streams.lock();
            // Streams whose client went away without anyone taking them.
            map.retain(|_, s| !s.out.is_closed());
            if map.contains_key(&key) {
                return Err(Status::already_exists(format!(
                    "stream {:?} already exists",
                    init.id
                )));
            }
            // The acknowledgement goes first; the channel is empty.
            let _ = out_tx.try_send(Ok(Any {
                type_url: type_urls::EMPTY.into(),
                value: vec![],
            }));
            map.insert(
                key.clone(),
                ClientStream {
                    id: init.id.clone(),
                    out: out_tx,
                    inbound: in_rx,
                },
            );
        }
        self.streams.registered.notify_waiters();
        tracing::debug!(namespace = %ns, stream = %init.id, "stream registered");
        // Client → server messages. A client may close its sending side and
        // keep reading (progress), so only a broken stream drops an untaken
        // entry; entries whose reader went away are purged on the next
        // registration or take.
        let streams = self.streams.clone();
        tokio::spawn(async move {
            loop {
                match inbound.message().await {
                    Ok(Some(m)) => {
                        if in_tx.send(m).await.is_err() {
                            break;
                        }
                    }
                    Ok(None) => return,
                    Err(_) => break,
                }
            }
            drop(in_tx);
            if streams.lock().remove(&key).is_some() {
                tracing::debug!(namespace = %key.0, stream = %key.1, "unused stream broken by the client");
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(out_rx))))
    }
}
