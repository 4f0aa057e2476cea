//! Events back to containerd (or orca-supervisor): a FIFO queue drained by
//! one thread that calls `containerd.services.events.ttrpc.v1.Events/Forward`
//! on `$TTRPC_ADDRESS`, reconnecting and retrying with backoff while the
//! daemon is away. Events are never dropped and keep their order.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime};

use containerd_shim_protos::events::task as ev;
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim_protos::protobuf::Message;
use containerd_shim_protos::shim::event::Envelope;
use containerd_shim_protos::shim::events::ForwardRequest;
use containerd_shim_protos::topics;

/// One event to forward.
#[derive(Debug, Clone)]
pub struct Event {
    pub topic: &'static str,
    pub any: Any,
    pub at: SystemTime,
}

/// A message's full protobuf name, as a constant: asking protobuf's
/// reflection for it would build (and keep) every descriptor of the file.
pub trait TypeUrl: Message {
    const TYPE_URL: &'static str;
}

macro_rules! type_url {
    ($($t:ty => $u:expr),* $(,)?) => {
        $(impl TypeUrl for $t {
            const TYPE_URL: &'static str = $u;
        })*
    };
}
type_url! {
    ev::TaskCreate => "containerd.events.TaskCreate",
    ev::TaskStart => "containerd.events.TaskStart",
    ev::TaskExit => "containerd.events.TaskExit",
    ev::TaskOOM => "containerd.events.TaskOOM",
    ev::TaskExecAdded => "containerd.events.TaskExecAdded",
    ev::TaskExecStarted => "containerd.events.TaskExecStarted",
    ev::TaskPaused => "containerd.events.TaskPaused",
    ev::TaskResumed => "containerd.events.TaskResumed",
    ev::TaskDelete => "containerd.events.TaskDelete",
    containerd_shim_protos::cgroups::metrics::Metrics => "io.containerd.cgroups.v1.Metrics",
    containerd_shim_protos::cgroups_v2::metrics::Metrics => "io.containerd.cgroups.v2.Metrics",
    containerd_shim_protos::shim::oci::ProcessDetails => "containerd.runc.v1.ProcessDetails",
}

/// Packs a message the way containerd's typeurl expects: the type URL is the
/// message's full protobuf name (no `type.googleapis.com/` prefix).
pub fn to_any<M: TypeUrl>(m: &M) -> Any {
    let mut a = Any::new();
    a.type_url = M::TYPE_URL.to_string();
    a.value = m.write_to_bytes().unwrap_or_default();
    a
}

pub fn timestamp(t: SystemTime) -> Timestamp {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let mut ts = Timestamp::new();
    ts.seconds = d.as_secs() as i64;
    ts.nanos = d.subsec_nanos() as i32;
    ts
}

/// The topic of each task event type.
pub trait Topic: TypeUrl {
    const TOPIC: &'static str;
}
macro_rules! topic {
    ($t:ty, $c:expr) => {
        impl Topic for $t {
            const TOPIC: &'static str = $c;
        }
    };
}
topic!(ev::TaskCreate, topics::TASK_CREATE_EVENT_TOPIC);
topic!(ev::TaskStart, topics::TASK_START_EVENT_TOPIC);
topic!(ev::TaskExit, topics::TASK_EXIT_EVENT_TOPIC);
topic!(ev::TaskOOM, topics::TASK_OOM_EVENT_TOPIC);
topic!(ev::TaskExecAdded, topics::TASK_EXEC_ADDED_EVENT_TOPIC);
topic!(ev::TaskExecStarted, topics::TASK_EXEC_STARTED_EVENT_TOPIC);
topic!(ev::TaskPaused, topics::TASK_PAUSED_EVENT_TOPIC);
topic!(ev::TaskResumed, topics::TASK_RESUMED_EVENT_TOPIC);
topic!(ev::TaskDelete, topics::TASK_DELETE_EVENT_TOPIC);

#[derive(Default)]
struct Queue {
    events: VecDeque<Event>,
    /// An event is being sent (still counted as pending).
    in_flight: bool,
}

/// The event queue; cheap to clone.
#[derive(Clone)]
pub struct Publisher {
    inner: Arc<(Mutex<Queue>, Condvar)>,
}

impl Default for Publisher {
    fn default() -> Self {
        Publisher::new()
    }
}

impl Publisher {
    /// A queue with no sender thread (see [`Publisher::start`]).
    pub fn new() -> Publisher {
        Publisher {
            inner: Arc::new((Mutex::new(Queue::default()), Condvar::new())),
        }
    }

    /// Starts forwarding to the ttrpc address (a path or `unix://path`) in
    /// namespace `ns`.
    pub fn start(&self, address: String, ns: String) {
        if address.is_empty() {
            crate::warn!("no TTRPC_ADDRESS: events are queued but never forwarded");
            return;
        }
        let me = self.clone();
        let _ = std::thread::Builder::new()
            .name("events".into())
            .stack_size(128 * 1024)
            .spawn(move || me.run(address, ns));
    }

    /// Queues an event.
    pub fn publish<M: Topic>(&self, m: &M) {
        self.push(Event {
            topic: M::TOPIC,
            any: to_any(m),
            at: SystemTime::now(),
        });
    }

    pub fn push(&self, e: Event) {
        let (q, cv) = &*self.inner;
        q.lock()
            .unwrap_or_else(|e| e.into_inner())
            .events
            .push_back(e);
        cv.notify_all();
    }

    /// Takes the oldest event for sending (blocks while empty).
    fn next(&self) -> Event {
        let (q, cv) = &*self.inner;
        let mut g = q.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(e) = g.events.front().cloned() {
                g.in_flight = true;
                return e;
            }
            g = cv.wait(g).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// The oldest event was delivered.
    fn delivered(&self) {
        let (q, cv) = &*self.inner;
        let mut g = q.lock().unwrap_or_else(|e| e.into_inner());
        g.events.pop_front();
        g.in_flight = false;
        cv.notify_all();
    }

    /// Events not yet delivered.
    pub fn pending(&self) -> usize {
        self.inner
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .events
            .len()
    }

    /// Waits until every queued event is delivered or the timeout passes;
    /// true if the queue is empty.
    pub fn flush(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let (q, cv) = &*self.inner;
        let mut g = q.lock().unwrap_or_else(|e| e.into_inner());
        while !g.events.is_empty() {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            g = cv
                .wait_timeout(g, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        true
    }

    fn run(&self, address: String, ns: String) {
        let path = address
            .strip_prefix("unix://")
            .unwrap_or(&address)
            .to_string();
        let mut conn: Option<ForwardConn> = None;
        let mut backoff = Duration::from_millis(50);
        loop {
            let e = self.next();
            let mut env = Envelope::new();
            env.timestamp = Some(timestamp(e.at)).into();
            env.namespace = ns.clone();
            env.topic = e.topic.to_string();
            env.event = Some(e.any).into();
            let mut req = ForwardRequest::new();
            req.envelope = Some(env).into();
            let payload = req.write_to_bytes().unwrap_or_default();
            loop {
                if conn.is_none() {
                    match ForwardConn::connect(&path) {
                        Ok(c) => conn = Some(c),
                        Err(err) => crate::debug!("connecting to {path}: {err}"),
                    }
                }
                if let Some(c) = conn.as_mut() {
                    match c.forward(&payload) {
                        Ok(()) => {
                            backoff = Duration::from_millis(50);
                            break;
                        }
                        Err(err) => {
                            crate::debug!("forwarding {}: {err}", e.topic);
                            conn = None;
                        }
                    }
                }
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
            // The connection stays open for the next event: it costs this
            // thread nothing while idle (a blocking socket, no poller), and
            // a daemon that went away makes the next send fail and reconnect.
            self.delivered();
        }
    }
}

const EVENTS_SERVICE: &str = "containerd.services.events.ttrpc.v1.Events";
/// ttrpc's frame: header of length (u32 BE), stream id (u32 BE), type, flags.
use ttrpc::proto::{
    MESSAGE_HEADER_LENGTH as HEADER_LEN, MESSAGE_LENGTH_MAX, MESSAGE_TYPE_REQUEST,
    MESSAGE_TYPE_RESPONSE,
};
const FORWARD_TIMEOUT: Duration = Duration::from_secs(5);

/// A minimal synchronous ttrpc client for the one call the shim makes,
/// `Events/Forward`: one request at a time on a blocking socket, in the
/// sender thread itself (ttrpc's `sync::Client` adds two threads per
/// connection, one of which wakes every 10 ms).
struct ForwardConn {
    sock: UnixStream,
    next_stream: u32,
}

impl ForwardConn {
    fn connect(path: &str) -> std::io::Result<ForwardConn> {
        let sock = UnixStream::connect(path)?;
        sock.set_read_timeout(Some(FORWARD_TIMEOUT))?;
        sock.set_write_timeout(Some(FORWARD_TIMEOUT))?;
        Ok(ForwardConn {
            sock,
            next_stream: 1,
        })
    }

    /// Sends one `ForwardRequest` (encoded) and waits for its response.
    fn forward(&mut self, payload: &[u8]) -> std::result::Result<(), String> {
        let mut req = ttrpc::Request::new();
        req.service = EVENTS_SERVICE.to_string();
        req.method = "Forward".to_string();
        req.payload = payload.to_vec();
        req.timeout_nano = FORWARD_TIMEOUT.as_nanos() as i64;
        let body = req.write_to_bytes().map_err(|e| e.to_string())?;
        let stream = self.next_stream;
        // Client streams are odd.
        self.next_stream = self.next_stream.wrapping_add(2);
        let mut frame = Vec::with_capacity(HEADER_LEN + body.len());
        frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
        frame.extend_from_slice(&stream.to_be_bytes());
        frame.push(MESSAGE_TYPE_REQUEST);
        frame.push(0);
        frame.extend_from_slice(&body);
        self.sock.write_all(&frame).map_err(|e| e.to_string())?;
        loop {
            let mut h = [0u8; HEADER_LEN];
            self.sock.read_exact(&mut h).map_err(|e| e.to_string())?;
            let len = u32::from_be_bytes([h[0], h[1], h[2], h[3]]) as usize;
            let id = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
            if len > MESSAGE_LENGTH_MAX {
                return Err(format!("response of {len} bytes"));
            }
            let mut buf = vec![0u8; len];
            self.sock.read_exact(&mut buf).map_err(|e| e.to_string())?;
            if id != stream || h[8] != MESSAGE_TYPE_RESPONSE {
                continue;
            }
            let res = ttrpc::Response::parse_from_bytes(&buf).map_err(|e| e.to_string())?;
            return match res.status.as_ref() {
                Some(st) if st.code.value() != 0 => {
                    Err(format!("status {:?}: {}", st.code, st.message))
                }
                _ => Ok(()),
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_urls_match_descriptors() {
        use containerd_shim_protos::protobuf::MessageFull;
        fn check<M: TypeUrl + MessageFull>() {
            assert_eq!(M::TYPE_URL, M::descriptor().full_name());
        }
        check::<ev::TaskCreate>();
        check::<ev::TaskStart>();
        check::<ev::TaskExit>();
        check::<ev::TaskOOM>();
        check::<ev::TaskExecAdded>();
        check::<ev::TaskExecStarted>();
        check::<ev::TaskPaused>();
        check::<ev::TaskResumed>();
        check::<ev::TaskDelete>();
        check::<containerd_shim_protos::cgroups::metrics::Metrics>();
        check::<containerd_shim_protos::cgroups_v2::metrics::Metrics>();
        check::<containerd_shim_protos::shim::oci::ProcessDetails>();
    }

    #[test]
    fn queue_keeps_order_until_delivered() {
        let p = Publisher::new();
        let mut a = ev::TaskStart::new();
        a.container_id = "a".into();
        p.publish(&a);
        let mut b = ev::TaskExit::new();
        b.container_id = "a".into();
        b.exit_status = 3;
        p.publish(&b);
        assert_eq!(p.pending(), 2);
        let first = p.next();
        assert_eq!(first.topic, "/tasks/start");
        assert_eq!(first.any.type_url, "containerd.events.TaskStart");
        // Not delivered yet: the same event comes again (a retry).
        assert_eq!(p.next().topic, "/tasks/start");
        p.delivered();
        let second = p.next();
        assert_eq!(second.topic, "/tasks/exit");
        let exit = ev::TaskExit::parse_from_bytes(&second.any.value).unwrap();
        assert_eq!(exit.exit_status, 3);
        assert!(!p.flush(Duration::from_millis(10)));
        p.delivered();
        assert!(p.flush(Duration::from_millis(10)));
    }
}
