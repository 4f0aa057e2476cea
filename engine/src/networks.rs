//! User-defined networks as **records only** (`<data-root>/networks/<id>.json`):
//! the minimum of Docker's network API docker-compose needs (create,
//! inspect, list with filters, remove, and joining at container create via
//! `NetworkingConfig`). No bridge, veth, address or DNS is set up: containers
//! keep their loopback-only network namespace, and inspect shows no
//! addresses, so nothing claims connectivity orcad does not provide.
//! Drivers other than `bridge`, IPAM subnets, IPv6, driver options and
//! connect/disconnect of existing containers answer 501.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tracing::info;

use crate::error::{EngineError, Result};
use crate::events::{parse_filters, EventBus};
use crate::util;

/// Names dockerd predefines (orcad does not create them, but refuses them).
pub const PREDEFINED: &[&str] = &["bridge", "host", "none", "default"];

/// One network record.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Network {
    pub id: String,
    pub name: String,
    pub created: String,
    pub driver: String,
    #[serde(default)]
    pub internal: bool,
    #[serde(default)]
    pub attachable: bool,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// The network store.
pub struct Networks {
    dir: PathBuf,
    map: Mutex<HashMap<String, Network>>,
    events: Arc<EventBus>,
}

impl Networks {
    /// Loads the records under `<data-root>/networks`.
    pub fn new(
        data_root: &std::path::Path,
        events: Arc<EventBus>,
    ) -> anyhow::Result<Arc<Networks>> {
        let dir = data_root.join("networks");
        fs::create_dir_all(&dir)?;
        let mut map = HashMap::new();
        for d in fs::read_dir(&dir)?.filter_map(|e| e.ok()) {
            let p = d.path();
            if p.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            match fs::read(&p)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice::<Network>(&b).map_err(|e| e.to_string()))
            {
                Ok(n) => {
                    map.insert(n.id.clone(), n);
                }
                Err(e) => {
                    tracing::warn!(path = %p.display(), "skipping unreadable network record: {e}")
                }
            }
        }
        Ok(Arc::new(Networks {
            dir,
            map: Mutex::new(map),
            events,
        }))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Network>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// By full ID, exact name, or unique ID prefix (dockerd's order).
    pub fn lookup(&self, key: &str) -> Result<Network> {
        let map = self.lock();
        if let Some(n) = map.get(key) {
            return Ok(n.clone());
        }
        if let Some(n) = map.values().find(|n| n.name == key) {
            return Ok(n.clone());
        }
        let found: Vec<&Network> = map
            .values()
            .filter(|n| !key.is_empty() && n.id.starts_with(key))
            .collect();
        match found.as_slice() {
            [one] => Ok((*one).clone()),
            [] => Err(EngineError::NotFound(format!("network {key} not found"))),
            _ => Err(EngineError::BadRequest(format!(
                "network {key} is ambiguous ({} matches found based on ID prefix)",
                found.len()
            ))),
        }
    }

    /// POST /networks/create: `{"Id", "Warning"}`.
    pub fn create(&self, body: &Value) -> Result<Value> {
        if !body.is_object() {
            return Err(EngineError::BadRequest("invalid network config".into()));
        }
        let name = body["Name"].as_str().unwrap_or("").to_string();
        if name.is_empty() {
            return Err(EngineError::BadRequest(
                "invalid name: name is empty".into(),
            ));
        }
        if PREDEFINED.contains(&name.as_str()) {
            return Err(EngineError::Forbidden(format!(
                "{name} is a pre-defined network and cannot be created"
            )));
        }
        let ni = |what: &str| {
            Err(EngineError::NotImplemented(format!(
                "{what} is not implemented in orcad yet (networks are records only)"
            )))
        };
        let driver = body["Driver"].as_str().unwrap_or("");
        if !(driver.is_empty() || driver == "bridge") {
            return ni(&format!("network driver {driver:?}"));
        }
        let nonempty = |v: &Value| match v {
            Value::Null => false,
            Value::Array(a) => !a.is_empty(),
            Value::Object(o) => !o.is_empty(),
            Value::Bool(b) => *b,
            Value::String(s) => !s.is_empty(),
            Value::Number(_) => true,
        };
        if nonempty(&body["IPAM"]["Config"]) || nonempty(&body["IPAM"]["Options"]) {
            return ni("IPAM configuration (subnets, ranges, gateways)");
        }
        match body["IPAM"]["Driver"].as_str().unwrap_or("") {
            "" | "default" => {}
            d => return ni(&format!("IPAM driver {d:?}")),
        }
        for (k, what) in [
            ("EnableIPv6", "IPv6 networks"),
            ("Ingress", "ingress networks"),
            ("ConfigOnly", "config-only networks"),
            ("Options", "network driver options"),
        ] {
            if nonempty(&body[k]) {
                return ni(what);
            }
        }
        if nonempty(&body["ConfigFrom"]["Network"]) {
            return ni("ConfigFrom networks");
        }
        match body["Scope"].as_str().unwrap_or("") {
            "" | "local" => {}
            s => return ni(&format!("network scope {s:?}")),
        }
        let labels: BTreeMap<String, String> = match &body["Labels"] {
            Value::Null => BTreeMap::new(),
            v => serde_json::from_value(v.clone())
                .map_err(|e| EngineError::BadRequest(format!("Labels: {e}")))?,
        };
        let net = {
            let mut map = self.lock();
            if map.values().any(|n| n.name == name) {
                return Err(EngineError::Conflict(format!(
                    "network with name {name} already exists"
                )));
            }
            let net = Network {
                id: util::random_hex(32),
                name: name.clone(),
                created: util::now(),
                driver: "bridge".into(),
                internal: body["Internal"].as_bool().unwrap_or(false),
                attachable: body["Attachable"].as_bool().unwrap_or(false),
                labels,
            };
            let data = serde_json::to_vec_pretty(&net).map_err(EngineError::internal)?;
            util::write_atomic(&self.dir.join(format!("{}.json", net.id)), &data)?;
            map.insert(net.id.clone(), net.clone());
            net
        };
        info!(id = %net.id, name = %net.name, "created network (record only)");
        self.events.network("create", &net.id, &net.name, &[]);
        Ok(json!({"Id": net.id, "Warning": ""}))
    }

    /// DELETE /networks/{id}; `in_use` names a running container attached.
    pub fn remove(&self, key: &str, in_use: impl Fn(&str) -> Option<String>) -> Result<()> {
        let net = self.lookup(key)?;
        if PREDEFINED.contains(&net.name.as_str()) {
            return Err(EngineError::Forbidden(format!(
                "{} is a pre-defined network and cannot be removed",
                net.name
            )));
        }
        if let Some(c) = in_use(&net.id) {
            return Err(EngineError::Forbidden(format!(
                "error while removing network: network {} id {} has active endpoints (container {c})",
                net.name, net.id
            )));
        }
        self.lock().remove(&net.id);
        match fs::remove_file(self.dir.join(format!("{}.json", net.id))) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
        info!(id = %net.id, name = %net.name, "removed network");
        self.events.network("destroy", &net.id, &net.name, &[]);
        Ok(())
    }

    /// All records, by name.
    pub fn all(&self) -> Vec<Network> {
        let mut v: Vec<Network> = self.lock().values().cloned().collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// Docker's network JSON; `containers` is the `Containers` map.
    pub fn to_json(n: &Network, containers: Value) -> Value {
        json!({
            "Name": n.name,
            "Id": n.id,
            "Created": n.created,
            "Scope": "local",
            "Driver": n.driver,
            "EnableIPv6": false,
            "IPAM": {"Driver": "default", "Options": null, "Config": []},
            "Internal": n.internal,
            "Attachable": n.attachable,
            "Ingress": false,
            "ConfigFrom": {"Network": ""},
            "ConfigOnly": false,
            "Containers": containers,
            "Options": {},
            "Labels": n.labels,
        })
    }

    /// GET /networks filters: `name`, `id`, `label`, `driver`, `type`,
    /// `scope`, `dangling` (`attached` says whether a container uses a
    /// network).
    pub fn list(
        &self,
        raw_filters: Option<&str>,
        attached: impl Fn(&str) -> bool,
    ) -> Result<Vec<Network>> {
        let f = parse_filters(raw_filters)?;
        for k in f.keys() {
            if !["name", "id", "label", "driver", "type", "scope", "dangling"].contains(&k.as_str())
            {
                return Err(EngineError::BadRequest(format!("invalid filter '{k}'")));
            }
        }
        let ok = |k: &str, pred: &dyn Fn(&str) -> bool| {
            f.get(k)
                .filter(|v| !v.is_empty())
                .is_none_or(|vals| vals.iter().any(|v| pred(v)))
        };
        Ok(self
            .all()
            .into_iter()
            .filter(|n| {
                ok("name", &|v| n.name.contains(v))
                    && ok("id", &|v| n.id.starts_with(v))
                    && ok("driver", &|v| v == n.driver)
                    && ok("type", &|v| v == "custom")
                    && ok("scope", &|v| v == "local")
                    && ok("dangling", &|v| {
                        (v == "true" || v == "1") != attached(&n.id)
                    })
                    && f.get("label").is_none_or(|vals| {
                        vals.iter().all(|l| match l.split_once('=') {
                            Some((k, v)) => n.labels.get(k).is_some_and(|x| x == v),
                            None => n.labels.contains_key(l.as_str()),
                        })
                    })
            })
            .collect())
    }
}

/// The containers attached to network `id`: (container ID, name, running).
fn attached(engine: &crate::Engine, id: &str) -> Vec<(String, String, bool)> {
    engine
        .containers
        .entries()
        .iter()
        .map(|e| e.record())
        .filter(|r| r.networks.values().any(|ep| ep.network_id == id))
        .map(|r| {
            (
                r.id,
                r.name.trim_start_matches('/').to_string(),
                r.state.running,
            )
        })
        .collect()
}

fn containers_json(engine: &crate::Engine, id: &str) -> Value {
    let mut m = serde_json::Map::new();
    for (cid, name, running) in attached(engine, id) {
        if running {
            m.insert(
                cid,
                json!({"Name": name, "EndpointID": "", "MacAddress": "", "IPv4Address": "", "IPv6Address": ""}),
            );
        }
    }
    Value::Object(m)
}

/// GET /networks/{id}.
pub fn inspect_json(engine: &crate::Engine, key: &str) -> Result<Value> {
    let n = engine.networks.lookup(key)?;
    Ok(Networks::to_json(&n, containers_json(engine, &n.id)))
}

/// GET /networks.
pub fn list_json(engine: &crate::Engine, q: &crate::util::Query) -> Result<Value> {
    let nets = engine
        .networks
        .list(q.get("filters"), |id| !attached(engine, id).is_empty())?;
    Ok(Value::Array(
        nets.iter()
            .map(|n| Networks::to_json(n, containers_json(engine, &n.id)))
            .collect(),
    ))
}

/// DELETE /networks/{id}: 403 while a running container uses it.
pub fn remove(engine: &crate::Engine, key: &str) -> Result<()> {
    engine.networks.remove(key, |id| {
        attached(engine, id)
            .into_iter()
            .find(|(_, _, running)| *running)
            .map(|(_, name, _)| name)
    })
}
