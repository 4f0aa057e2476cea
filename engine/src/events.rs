//! Docker's event stream (`GET /events`): an in-memory log of the last
//! [`BUFFERED`] events plus a broadcast to live subscribers, Docker's filter
//! semantics (`type`, `container`, `image`, `event`, `label`, `network`,
//! `scope`) and `since`/`until` windows.
//!
//! Events are not persisted: after an orcad restart `--since` only sees
//! what happened since that start (dockerd behaves the same).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use tokio::sync::{broadcast, mpsc};
use tracing::debug;

use crate::error::{EngineError, Result};
use crate::util::Query;

/// How many past events `since` can replay (dockerd keeps 256).
pub const BUFFERED: usize = 1024;

/// One event (Docker's `events.Message`).
#[derive(Debug, Clone)]
pub struct Event {
    /// "container", "image", "network", "daemon".
    pub typ: String,
    pub action: String,
    pub actor_id: String,
    pub attributes: BTreeMap<String, String>,
    pub time_nano: i64,
}

impl Event {
    /// Docker's JSON: the deprecated `status`/`id`/`from` are filled for
    /// containers and images only, as dockerd does.
    pub fn to_json(&self) -> Value {
        let mut v = json!({
            "Type": self.typ,
            "Action": self.action,
            "Actor": {"ID": self.actor_id, "Attributes": self.attributes},
            "scope": "local",
            "time": self.time_nano.div_euclid(1_000_000_000),
            "timeNano": self.time_nano,
        });
        match self.typ.as_str() {
            "container" => {
                v["status"] = json!(self.action);
                v["id"] = json!(self.actor_id);
                v["from"] = json!(self.attributes.get("image").cloned().unwrap_or_default());
            }
            "image" => {
                v["status"] = json!(self.action);
                v["id"] = json!(self.actor_id);
            }
            _ => {}
        }
        v
    }
}

/// The event log and its live subscribers.
pub struct EventBus {
    inner: Mutex<VecDeque<Event>>,
    tx: broadcast::Sender<Event>,
}

impl Default for EventBus {
    fn default() -> Self {
        EventBus {
            inner: Mutex::new(VecDeque::with_capacity(BUFFERED)),
            tx: broadcast::channel(4096).0,
        }
    }
}

fn now_nanos() -> i64 {
    Utc::now().timestamp_nanos_opt().unwrap_or(0)
}

impl EventBus {
    /// Records and broadcasts an event (buffer and broadcast under one lock:
    /// a subscriber sees every event exactly once, replayed or live).
    pub fn publish(
        &self,
        typ: &str,
        action: &str,
        actor_id: &str,
        attrs: BTreeMap<String, String>,
    ) {
        let ev = Event {
            typ: typ.to_string(),
            action: action.to_string(),
            actor_id: actor_id.to_string(),
            attributes: attrs,
            time_nano: now_nanos(),
        };
        debug!(typ, action, actor = actor_id, "event");
        let mut q = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if q.len() >= BUFFERED {
            q.pop_front();
        }
        q.push_back(ev.clone());
        let _ = self.tx.send(ev);
    }

    /// A container event: attributes are the container's labels plus
    /// `image` and `name` (and `extra`).
    pub fn container(
        &self,
        action: &str,
        rec: &crate::containers::Record,
        extra: &[(&str, String)],
    ) {
        let mut attrs: BTreeMap<String, String> = rec.config.labels.clone();
        attrs.insert("image".into(), rec.config.image.clone());
        attrs.insert("name".into(), rec.name.trim_start_matches('/').to_string());
        for (k, v) in extra {
            attrs.insert((*k).to_string(), v.clone());
        }
        self.publish("container", action, &rec.id, attrs);
    }

    /// An image event: actor `id` with attribute `name` (dockerd's
    /// `LogImageEvent(imageID, refOrID, action)`).
    pub fn image(&self, action: &str, id: &str, name: &str) {
        let attrs = BTreeMap::from([("name".to_string(), name.to_string())]);
        self.publish("image", action, id, attrs);
    }

    /// The events of a `DELETE /images/…` answer: `untag` per untagged
    /// reference, `delete` for the deleted image.
    pub fn image_removed(&self, image_id: &str, answer: &Value) {
        for item in answer.as_array().into_iter().flatten() {
            if let Some(r) = item["Untagged"].as_str() {
                self.image("untag", image_id, r);
            }
            if let Some(d) = item["Deleted"].as_str() {
                self.image("delete", d, d);
            }
        }
    }

    /// A network event (attributes `name`, `type`, and `extra`).
    pub fn network(&self, action: &str, id: &str, name: &str, extra: &[(&str, String)]) {
        let mut attrs = BTreeMap::from([
            ("name".to_string(), name.to_string()),
            ("type".to_string(), "bridge".to_string()),
        ]);
        for (k, v) in extra {
            attrs.insert((*k).to_string(), v.clone());
        }
        self.publish("network", action, id, attrs);
    }

    /// GET /events: the matching buffered events of the since/until window,
    /// then live events until `until` (or the client goes away), as JSON
    /// lines.
    pub fn serve(&self, q: &Query) -> Result<mpsc::Receiver<Bytes>> {
        let since = parse_time(q.get("since"), "since")?;
        let until = parse_time(q.get("until"), "until")?;
        if let (Some(s), Some(u)) = (since, until) {
            if s > u {
                return Err(EngineError::BadRequest(format!(
                    "`since` time ({}) cannot be after `until` time ({})",
                    q.get("since").unwrap_or(""),
                    q.get("until").unwrap_or("")
                )));
            }
        }
        let filter = Filter::parse(q.get("filters"))?;
        let (buffered, mut rx) = {
            let q = self.inner.lock().unwrap_or_else(|p| p.into_inner());
            let replay: Vec<Event> = if since.is_none() && until.is_none() {
                Vec::new()
            } else {
                q.iter()
                    .filter(|e| since.is_none_or(|s| e.time_nano >= s))
                    .filter(|e| until.is_none_or(|u| e.time_nano <= u))
                    .cloned()
                    .collect()
            };
            (replay, self.tx.subscribe())
        };
        let (tx, out) = mpsc::channel(256);
        tokio::spawn(async move {
            let line = |e: &Event| Bytes::from(e.to_json().to_string() + "\n");
            for e in buffered.iter().filter(|e| filter.include(e)) {
                if tx.send(line(e)).await.is_err() {
                    return;
                }
            }
            let deadline = until.map(|u| {
                let wait = (u - now_nanos()).max(0) as u64;
                tokio::time::Instant::now() + std::time::Duration::from_nanos(wait)
            });
            loop {
                let next = async {
                    match deadline {
                        Some(d) => tokio::time::timeout_at(d, rx.recv()).await.ok(),
                        None => Some(rx.recv().await),
                    }
                };
                tokio::select! {
                    r = next => match r {
                        None => return, // until reached
                        Some(Ok(e)) => {
                            if until.is_some_and(|u| e.time_nano > u) {
                                return;
                            }
                            if filter.include(&e) && tx.send(line(&e)).await.is_err() {
                                return;
                            }
                        }
                        Some(Err(broadcast::error::RecvError::Lagged(n))) => {
                            debug!("events subscriber lagged: {n} events dropped");
                        }
                        Some(Err(broadcast::error::RecvError::Closed)) => return,
                    },
                    _ = tx.closed() => return,
                }
            }
        });
        Ok(out)
    }
}

/// The `tag` event of `POST /images/{name}/tag` (actor: the image ID,
/// name: the new reference).
pub async fn image_tagged(engine: &crate::Engine, repo: &str, tag: &str) {
    let full = if tag.is_empty() {
        repo.to_string()
    } else {
        format!("{repo}:{tag}")
    };
    if let Ok(img) = engine.images.resolve(&full).await {
        let name = crate::reference::Reference::parse(&full)
            .map(|r| crate::reference::familiar(&r.full()))
            .unwrap_or(full);
        engine.events.image("tag", &img.config_digest, &name);
    }
}

/// Docker's timestamps: "SECONDS[.NANOS]" (what the CLI sends), or RFC 3339.
/// Returns nanoseconds since the epoch; empty/absent is `None`.
pub fn parse_time(v: Option<&str>, what: &str) -> Result<Option<i64>> {
    let Some(v) = v.map(str::trim).filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    let bad = || EngineError::BadRequest(format!("invalid value for {what}: {v:?}"));
    if let Ok(t) = DateTime::parse_from_rfc3339(v) {
        return Ok(t.with_timezone(&Utc).timestamp_nanos_opt());
    }
    let (secs, frac) = v.split_once('.').unwrap_or((v, ""));
    let secs: i64 = secs.parse().map_err(|_| bad())?;
    let nanos: i64 = if frac.is_empty() {
        0
    } else {
        if frac.len() > 9 || !frac.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        format!("{frac:0<9}").parse().map_err(|_| bad())?
    };
    Ok(Some(
        secs.saturating_mul(1_000_000_000).saturating_add(nanos),
    ))
}

/// Parses Docker's `filters` query value: `{"key": ["v", …]}` or the
/// older `{"key": {"v": true}}`.
pub fn parse_filters(raw: Option<&str>) -> Result<HashMap<String, Vec<String>>> {
    let Some(f) = raw.filter(|f| !f.is_empty()) else {
        return Ok(HashMap::new());
    };
    let v: Value = serde_json::from_str(f)
        .map_err(|e| EngineError::BadRequest(format!("invalid filter: {e}")))?;
    let obj = v
        .as_object()
        .ok_or_else(|| EngineError::BadRequest("invalid filter".into()))?;
    let mut m = HashMap::new();
    for (k, vals) in obj {
        let list: Vec<String> = match vals {
            Value::Array(a) => a
                .iter()
                .filter_map(|x| x.as_str().map(String::from))
                .collect(),
            Value::Object(o) => o.keys().cloned().collect(),
            Value::String(s) => vec![s.clone()],
            _ => return Err(EngineError::BadRequest(format!("invalid filter '{k}'"))),
        };
        m.insert(k.clone(), list);
    }
    Ok(m)
}

/// The filters of GET /events (dockerd's `daemon/events.Filter`).
#[derive(Debug, Default)]
pub struct Filter(HashMap<String, Vec<String>>);

const EVENT_FILTERS: &[&str] = &[
    "container",
    "daemon",
    "event",
    "image",
    "label",
    "network",
    "type",
    "volume",
    "plugin",
    "scope",
    "node",
    "service",
    "secret",
    "config",
];

impl Filter {
    pub fn parse(raw: Option<&str>) -> Result<Filter> {
        let m = parse_filters(raw)?;
        for k in m.keys() {
            if !EVENT_FILTERS.contains(&k.as_str()) {
                return Err(EngineError::BadRequest(format!("invalid filter '{k}'")));
            }
        }
        Ok(Filter(m))
    }

    fn values(&self, k: &str) -> Option<&Vec<String>> {
        self.0.get(k).filter(|v| !v.is_empty())
    }

    /// True without values for `k`, else when `source` is one of them.
    fn exact(&self, k: &str, source: &str) -> bool {
        self.values(k)
            .is_none_or(|vals| vals.iter().any(|v| v == source))
    }

    /// Like [`Filter::exact`], or a value is a prefix of `source`.
    fn fuzzy(&self, k: &str, source: &str) -> bool {
        self.values(k)
            .is_none_or(|vals| vals.iter().any(|v| source.starts_with(v.as_str())))
    }

    fn fuzzy_name(&self, k: &str, e: &Event) -> bool {
        self.values(k).is_none()
            || self.fuzzy(k, &e.actor_id)
            || e.attributes.get("name").is_some_and(|n| self.fuzzy(k, n))
    }

    /// dockerd's `Filter.Include`.
    pub fn include(&self, e: &Event) -> bool {
        let event_ok = match self.values("event") {
            None => true,
            Some(vals) => {
                let fuzzy = vals
                    .iter()
                    .any(|v| ["health_status", "exec_create", "exec_start"].contains(&v.as_str()));
                if fuzzy {
                    self.fuzzy("event", &e.action)
                } else {
                    self.exact("event", &e.action)
                }
            }
        };
        let strip_tag = |s: &str| -> String {
            match s.rsplit_once(':') {
                Some((a, b)) if !b.contains('/') => a.to_string(),
                _ => s.to_string(),
            }
        };
        let image_ok = self.values("image").is_none() || {
            let name_attr = if e.typ == "image" { "name" } else { "image" };
            let name = e.attributes.get(name_attr).cloned().unwrap_or_default();
            self.exact("image", &e.actor_id)
                || self.exact("image", &name)
                || self.exact("image", &strip_tag(&e.actor_id))
                || self.exact("image", &strip_tag(&name))
        };
        let labels_ok = self.values("label").is_none_or(|vals| {
            vals.iter().all(|l| match l.split_once('=') {
                Some((k, v)) => e.attributes.get(k).is_some_and(|x| x == v),
                None => e.attributes.contains_key(l.as_str()),
            })
        });
        let only_type =
            |k: &str, t: &str| self.values(k).is_none() || (e.typ == t && self.fuzzy_name(k, e));
        event_ok
            && self.exact("type", &e.typ)
            && self.exact("scope", "local")
            && only_type("daemon", "daemon")
            && self.fuzzy_name("container", e)
            && only_type("plugin", "plugin")
            && only_type("volume", "volume")
            && only_type("network", "network")
            && image_ok
            && self.values("node").is_none()
            && self.values("service").is_none()
            && self.values("secret").is_none()
            && self.values("config").is_none()
            && labels_ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(typ: &str, action: &str, id: &str, attrs: &[(&str, &str)]) -> Event {
        Event {
            typ: typ.into(),
            action: action.into(),
            actor_id: id.into(),
            attributes: attrs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            time_nano: 1_700_000_000_123_456_789,
        }
    }

    #[test]
    fn times() {
        assert_eq!(parse_time(None, "since").unwrap(), None);
        assert_eq!(
            parse_time(Some("1700000000.5"), "since").unwrap(),
            Some(1_700_000_000_500_000_000)
        );
        assert_eq!(
            parse_time(Some("1700000000"), "since").unwrap(),
            Some(1_700_000_000_000_000_000)
        );
        assert!(parse_time(Some("soon"), "since").is_err());
        assert!(parse_time(Some("2023-11-14T22:13:20Z"), "until")
            .unwrap()
            .is_some());
    }

    #[test]
    fn filters_like_dockerd() {
        let c = ev(
            "container",
            "die",
            "abcdef0123",
            &[("name", "web"), ("image", "busybox:latest"), ("a", "b")],
        );
        let i = ev(
            "image",
            "pull",
            "busybox:latest",
            &[("name", "busybox:latest")],
        );
        let f = |s: &str| Filter::parse(Some(s)).unwrap();
        assert!(f("{}").include(&c));
        assert!(f(r#"{"container":{"web":true}}"#).include(&c));
        assert!(f(r#"{"container":["abcd"]}"#).include(&c));
        assert!(!f(r#"{"container":["other"]}"#).include(&c));
        assert!(!f(r#"{"container":["web"]}"#).include(&i));
        assert!(f(r#"{"type":["image"]}"#).include(&i));
        assert!(!f(r#"{"type":["image"]}"#).include(&c));
        assert!(f(r#"{"image":["busybox"]}"#).include(&c));
        assert!(f(r#"{"image":["busybox"]}"#).include(&i));
        assert!(f(r#"{"event":["die","stop"]}"#).include(&c));
        assert!(!f(r#"{"event":["start"]}"#).include(&c));
        assert!(f(r#"{"label":["a=b"]}"#).include(&c));
        assert!(f(r#"{"label":["a"]}"#).include(&c));
        assert!(!f(r#"{"label":["a=c"]}"#).include(&c));
        let x = ev(
            "container",
            "exec_start: sh -c true",
            "abc",
            &[("name", "w")],
        );
        assert!(f(r#"{"event":["exec_start"]}"#).include(&x));
        assert!(Filter::parse(Some(r#"{"bogus":["x"]}"#)).is_err());
        let j = c.to_json();
        assert_eq!(j["status"], "die");
        assert_eq!(j["from"], "busybox:latest");
        assert_eq!(j["time"], 1_700_000_000i64);
        assert_eq!(j["Actor"]["Attributes"]["name"], "web");
    }
}
